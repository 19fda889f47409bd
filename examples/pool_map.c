/*
 * pool_map - a parallel map: f(x) = the number of primes below x, over an
 * array of inputs, on a pool of workers (threads, or processes with
 * `pool_map process`). Results come back in input order however the tasks
 * were spread; the submitter waits when the queue is full (backpressure).
 *
 *   ./pool_map [thread|process] [count]
 */
#include <ferry.h>
#include <ferry/pool.h>

#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

static int64_t primes_below(int64_t n)
{
	int64_t count = 0;
	for (int64_t i = 2; i < n; i++) {
		int prime = 1;
		for (int64_t d = 2; d * d <= i; d++)
			if (i % d == 0) {
				prime = 0;
				break;
			}
		count += prime;
	}
	return count;
}

/* Runs inside a worker: the value is an int, the result an int. */
static int count_primes(ferry_pool_ctx *ctx, const ferry_value *arg, ferry_value **res)
{
	int64_t n;
	if (ferry_value_get_int(arg, &n) || n < 0)
		return ferry_pool_ctx_fail(ctx, -EINVAL, "want a non-negative int");
	*res = ferry_value_int(primes_below(n));
	return *res ? 0 : -ENOMEM;
}

/* map: out[i] = f(in[i]) on the pool. Returns 0 or the first task error. */
static int pool_map(ferry_pool *pool, const int64_t *in, int64_t *out, size_t n)
{
	ferry_pool_task **tasks = calloc(n, sizeof *tasks);
	if (!tasks)
		return -ENOMEM;
	int rc = 0;
	size_t submitted = 0;
	for (; submitted < n; submitted++) {
		ferry_value *v = ferry_value_int(in[submitted]);
		rc = v ? ferry_pool_submit(pool, v, NULL, &tasks[submitted]) : -ENOMEM;
		ferry_value_free(v); /* the pool took a clone */
		if (rc) {
			fprintf(stderr, "submit: %s\n", ferry_errmsg());
			break;
		}
	}
	for (size_t i = 0; i < submitted; i++) {
		int r = ferry_pool_task_wait(tasks[i], FERRY_FOREVER);
		if (r == 0)
			r = ferry_value_get_int(ferry_pool_task_value(tasks[i]), &out[i]);
		else
			fprintf(stderr, "task %zu: %s\n", i, ferry_pool_task_errmsg(tasks[i]));
		if (r && !rc)
			rc = r;
		ferry_pool_task_free(tasks[i]);
	}
	free(tasks);
	return rc;
}

int main(int argc, char **argv)
{
	int backend = argc > 1 && strcmp(argv[1], "process") == 0 ? FERRY_PROCESS : FERRY_THREAD;
	size_t n = argc > 2 ? strtoul(argv[2], NULL, 10) : 2000;
	struct ferry_pool_opts o = {
		.backend = backend,
		.fn = count_primes,
		.name = "map",
		.max_queue = 256,                /* bounded: the submitter waits ... */
		.queue_wait_ns = FERRY_FOREVER,  /* ... rather than fail */
	};
	ferry_pool *pool;
	if (ferry_pool_create(&pool, &o)) {
		fprintf(stderr, "pool: %s\n", ferry_errmsg());
		return 1;
	}
	int64_t *in = malloc(n * sizeof *in), *out = calloc(n, sizeof *out);
	if (!in || !out)
		return 1;
	for (size_t i = 0; i < n; i++)
		in[i] = (int64_t)(i % 500) * 20;
	int rc = pool_map(pool, in, out, n);
	struct ferry_pool_stats st;
	ferry_pool_stats(pool, &st);
	ferry_pool_destroy(pool, FERRY_FOREVER);
	size_t wrong = 0;
	for (size_t i = 0; i < n && !rc; i++)
		wrong += out[i] != primes_below(in[i]);
	printf("pool_map (%s): %zu inputs, %llu tasks on %llu workers, run p50 %.1f us, p99 %.1f us, "
	       "utilization %.0f%%\n",
	       backend == FERRY_PROCESS ? "process" : "thread", n, (unsigned long long)st.completed,
	       (unsigned long long)st.spawned, st.run_p50_ns / 1e3, st.run_p99_ns / 1e3,
	       st.utilization * 100);
	free(in);
	free(out);
	if (rc || wrong) {
		printf("pool_map failed: %d, %zu wrong\n", rc, wrong);
		return 1;
	}
	printf("pool_map ok\n");
	return 0;
}
