/*
 * pool_loop - a pool's results as callbacks on an event loop (the way a
 * Node program awaits piscina's promises): a timer on the loop submits a
 * batch of requests every millisecond; each task hashes its request with a
 * key every worker got as workerData (ferry_pool_opts.value); each result
 * comes back as a callback on the loop's own thread, so the program's state
 * needs no lock. ferry_loop_run returns by itself once the last callback
 * ran: a pending task keeps the loop alive. Runs on threads, then on
 * processes.
 *
 *   ./pool_loop [requests]
 */
#include <ferry.h>
#include <ferry/loop.h>
#include <ferry/pool.h>

#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

/* FNV-1a of the key, then of the request number. */
static uint64_t fnv(const void *p, size_t n, uint64_t h)
{
	const unsigned char *b = p;
	for (size_t i = 0; i < n; i++)
		h = (h ^ b[i]) * 1099511628211ull;
	return h;
}

static uint64_t keyed_hash(const char *key, size_t klen, int64_t x)
{
	return fnv(&x, sizeof x, fnv(key, klen, 14695981039346656037ull));
}

/* Runs inside a worker: the key comes from the pool's workerData. */
static int hash_request(ferry_pool_ctx *ctx, const ferry_value *arg, ferry_value **res)
{
	size_t klen;
	const char *key = ferry_value_get_str(ferry_value_map_get(ferry_pool_ctx_value(ctx), "key"), &klen);
	int64_t x;
	if (!key || ferry_value_get_int(arg, &x))
		return ferry_pool_ctx_fail(ctx, -EINVAL, "want an int request and a key");
	*res = ferry_value_int((int64_t)(keyed_hash(key, klen, x) >> 1));
	return *res ? 0 : -ENOMEM;
}

/* The program's state: touched only on the loop's thread. */
struct app {
	ferry_pool *pool;
	ferry_loop *loop;
	uint64_t timer;
	int next, total, done, wrong, failed;
};

static const char key[] = "a per-service secret";

struct req {
	struct app *a;
	int64_t x;
};

static void on_reply(ferry_pool_task *t, void *arg)
{
	struct req *r = arg;
	struct app *a = r->a;
	int64_t got = -1;
	if (ferry_pool_task_status(t) != 0) {
		fprintf(stderr, "request %lld: %s\n", (long long)r->x, ferry_pool_task_errmsg(t));
		a->failed++;
	} else if (ferry_value_get_int(ferry_pool_task_value(t), &got) ||
		   got != (int64_t)(keyed_hash(key, sizeof key - 1, r->x) >> 1)) {
		a->wrong++;
	}
	a->done++;
	free(r);
}

/* Every millisecond: submit the next batch; stop the timer after the last. */
static void on_tick(ferry_loop *loop, uint64_t id, int res, void *arg)
{
	struct app *a = arg;
	for (int i = 0; i < 64 && a->next < a->total; i++, a->next++) {
		struct req *r = malloc(sizeof *r);
		ferry_value *v = ferry_value_int(a->next);
		struct ferry_pool_submit_opts so = { .done = on_reply, .done_arg = r, .loop = loop };
		int rc = r && v ? (r->a = a, r->x = a->next, ferry_pool_submit_ex(a->pool, v, NULL, &so, NULL))
				: -ENOMEM;
		ferry_value_free(v);
		if (rc) {
			fprintf(stderr, "submit: %s\n", ferry_errmsg());
			free(r);
			a->failed++;
			a->done++;
		}
	}
	if (a->next >= a->total)
		ferry_loop_cancel(loop, a->timer);
	(void)id, (void)res;
}

static int run(int backend, int total)
{
	ferry_value *wd = ferry_value_map();
	ferry_value_map_set(wd, "key", ferry_value_str(key));
	struct ferry_pool_opts o = { .backend = backend, .fn = hash_request, .name = "hash",
				     .max_queue = 4096, .queue_wait_ns = FERRY_FOREVER, .value = wd };
	struct app a = { .total = total };
	int rc = ferry_pool_create(&a.pool, &o);
	ferry_value_free(wd); /* the pool cloned it */
	if (rc) {
		fprintf(stderr, "pool: %s\n", ferry_errmsg());
		return 1;
	}
	if (ferry_loop_create(&a.loop, NULL) ||
	    ferry_loop_timer(a.loop, 0, 1000 * 1000, on_tick, &a, &a.timer)) {
		fprintf(stderr, "loop: %s\n", ferry_errmsg());
		return 1;
	}
	/* Returns when the timer is cancelled and every callback has run. */
	rc = ferry_loop_run(a.loop, FERRY_RUN_DEFAULT);
	ferry_pool_destroy(a.pool, FERRY_FOREVER);
	ferry_loop_destroy(a.loop);
	printf("pool_loop (%s): %d requests, %d replies on the loop's thread, %d wrong, %d failed\n",
	       backend == FERRY_PROCESS ? "process" : "thread", total, a.done, a.wrong, a.failed);
	return rc < 0 || a.done != total || a.wrong || a.failed;
}

int main(int argc, char **argv)
{
	int total = argc > 1 ? atoi(argv[1]) : 2000;
	if (total < 1)
		total = 1;
	int bad = run(FERRY_THREAD, total);
	bad |= run(FERRY_PROCESS, total);
	if (bad) {
		printf("pool_loop failed\n");
		return 1;
	}
	printf("pool_loop ok\n");
	return 0;
}
