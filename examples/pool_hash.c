/*
 * pool_hash - a CPU-bound service: requests carry a block of bytes (a buffer
 * moved to the worker, no copy), workers hash it (64-bit FNV-1a, a few
 * rounds) and answer with the digest. Process workers isolate the hashing:
 * a request that crashes its worker (the "poison" one here) fails alone,
 * with a message saying how, and the service goes on.
 *
 *   ./pool_hash [process|thread] [requests]
 */
#include <ferry.h>
#include <ferry/pool.h>

#include <errno.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#define BLOCK (128 * 1024) /* bytes per request: a segment of its own, so it moves */
#define ROUNDS 4

static uint64_t fnv1a(const unsigned char *p, size_t n, uint64_t h)
{
	for (size_t i = 0; i < n; i++) {
		h ^= p[i];
		h *= 0x100000001b3ull;
	}
	return h;
}

static uint64_t digest(const unsigned char *p, size_t n)
{
	uint64_t h = 0xcbf29ce484222325ull;
	for (int r = 0; r < ROUNDS; r++)
		h = fnv1a(p, n, h);
	return h;
}

/* The service: {"id": int, "data": buffer} -> {"id": int, "digest": int}. */
static int hash_request(ferry_pool_ctx *ctx, const ferry_value *req, ferry_value **res)
{
	int64_t id;
	ferry_buf *b = ferry_value_get_handle(ferry_value_map_get(req, "data"), NULL);
	if (ferry_value_get_int(ferry_value_map_get(req, "id"), &id) || !b)
		return ferry_pool_ctx_fail(ctx, -EINVAL, "a request is {id, data}");
	const unsigned char *p = ferry_buf_data(b);
	if (ferry_buf_len(b) >= 6 && memcmp(p, "poison", 6) == 0 &&
	    ferry_pool_ctx_backend(ctx) == FERRY_PROCESS)
		raise(SIGSEGV); /* a bug in the hashing library, say */
	if (ferry_pool_ctx_aborted(ctx))
		return -ECANCELED;
	ferry_value *m = ferry_value_map();
	ferry_value_map_set(m, "id", ferry_value_int(id));
	ferry_value_map_set(m, "digest", ferry_value_int((int64_t)digest(p, ferry_buf_len(b))));
	*res = m;
	return 0;
}

static void fill(unsigned char *p, size_t n, uint64_t seed)
{
	for (size_t i = 0; i < n; i++) {
		seed = seed * 6364136223846793005ull + 1442695040888963407ull;
		p[i] = (unsigned char)(seed >> 56);
	}
}

int main(int argc, char **argv)
{
	int backend = argc > 1 && strcmp(argv[1], "thread") == 0 ? FERRY_THREAD : FERRY_PROCESS;
	int n = argc > 2 ? atoi(argv[2]) : 200;
	struct ferry_pool_opts o = {
		.backend = backend,
		.fn = hash_request,
		.name = "hash",
		.max_queue = 64,
		.queue_wait_ns = FERRY_FOREVER,
		.task_timeout_ns = 10LL * 1000 * 1000 * 1000, /* a stuck request fails, the service lives */
	};
	ferry_pool *pool;
	if (ferry_pool_create(&pool, &o)) {
		fprintf(stderr, "pool: %s\n", ferry_errmsg());
		return 1;
	}
	ferry_pool_task **tasks = calloc((size_t)n, sizeof *tasks);
	uint64_t *want = calloc((size_t)n, sizeof *want);
	int poison = n / 2, bad = 0, ok = 0, crashed = 0;
	for (int i = 0; i < n; i++) {
		ferry_buf *b;
		if (ferry_buf_create(&b, BLOCK, 0)) {
			fprintf(stderr, "buffer: %s\n", ferry_errmsg());
			return 1;
		}
		unsigned char *p = ferry_buf_data(b);
		fill(p, BLOCK, (uint64_t)i);
		if (i == poison)
			memcpy(p, "poison", 6);
		want[i] = digest(p, BLOCK);
		ferry_value *req = ferry_value_map();
		ferry_value_map_set(req, "id", ferry_value_int(i));
		ferry_value_map_set(req, "data", ferry_value_handle(FERRY_VALUE_BUF, b));
		struct ferry_xfer x = { &b, 1, NULL, 0 }; /* moved, not copied */
		int rc = ferry_pool_submit(pool, req, &x, &tasks[i]);
		ferry_value_free(req);
		ferry_buf_free(b); /* detached by the submit */
		if (rc) {
			fprintf(stderr, "submit %d: %s\n", i, ferry_errmsg());
			return 1;
		}
	}
	for (int i = 0; i < n; i++) {
		int rc = ferry_pool_task_wait(tasks[i], FERRY_FOREVER);
		if (rc == 0) {
			int64_t id = -1, d = 0;
			const ferry_value *r = ferry_pool_task_value(tasks[i]);
			ferry_value_get_int(ferry_value_map_get(r, "id"), &id);
			ferry_value_get_int(ferry_value_map_get(r, "digest"), &d);
			if (id == i && (uint64_t)d == want[i])
				ok++;
			else
				bad++;
		} else if (rc == FERRY_EWORKER && i == poison) {
			printf("request %d failed as expected: %s\n", i, ferry_pool_task_errmsg(tasks[i]));
			crashed++;
		} else {
			printf("request %d: %s\n", i, ferry_pool_task_errmsg(tasks[i]));
			bad++;
		}
		ferry_pool_task_free(tasks[i]);
	}
	struct ferry_pool_stats st;
	ferry_pool_stats(pool, &st);
	ferry_pool_destroy(pool, FERRY_FOREVER);
	printf("pool_hash (%s): %d requests of %d KiB: %d hashed, %d crashed, %d wrong; "
	       "%llu worker crashes, %llu workers started; run p50 %.0f us, wait p99 %.0f us\n",
	       backend == FERRY_PROCESS ? "process" : "thread", n, BLOCK / 1024, ok, crashed, bad,
	       (unsigned long long)st.crashes, (unsigned long long)st.spawned, st.run_p50_ns / 1e3,
	       st.wait_p99_ns / 1e3);
	free(tasks);
	free(want);
	int expect_crash = backend == FERRY_PROCESS && n > 0;
	if (bad || ok + crashed != n || crashed != expect_crash) {
		printf("pool_hash failed\n");
		return 1;
	}
	printf("pool_hash ok\n");
	return 0;
}
