/*
 * bench/forkserver_bench.c - process worker start through the fork server.
 *
 * Rows of "worker start to first message" (from ferry_worker_spawn until the
 * parent, spinning, has the worker's first 64 B message; join not counted):
 *   - a process worker started by the fork server (ferry_init, then
 *     FERRY_SPAWN_SERVER), next to the bare fork floor;
 *   - the same from a parent holding 1 GiB of touched heap (4 KiB pages:
 *     MADV_NOHUGEPAGE, as a heap of small allocations is), by a direct fork
 *     and through a server started before the heap grew. A fork copies the
 *     parent's page tables (18 ms for 1 GiB on the reference machine); the
 *     server stays small, so its start does not grow with the caller.
 * The server rows need a single-threaded bench process when they start
 * (ferry_init refuses otherwise; the row then shows that error).
 */
#include "bench.h"

#include <ferry.h>
#include <ferry/runtime.h>

#include <errno.h>
#include <stdint.h>
#include <string.h>
#include <sys/mman.h>

#ifdef MADV_POPULATE_WRITE
#define BENCH_MADV_POPULATE_WRITE MADV_POPULATE_WRITE
#else
#define BENCH_MADV_POPULATE_WRITE 23 /* Linux 5.14; older kernels: EINVAL */
#endif

#define MSG_BYTES 64
#define HEAP_BYTES ((size_t)1 << 30)
/* The worker's post: no arg through the server, so a fixed bound. */
#define HELLO_TIMEOUT_NS (10LL * 1000000000)

struct fs_param {
	int spawn;     /* enum ferry_spawn */
	int big_heap;  /* 1 GiB touched before the spawns */
	int server;    /* start the fork server for the row */
};

static int fs_hello(ferry_worker_ctx *wc)
{
	static const char hello[MSG_BYTES] = "up";
	return ferry_port_post_bytes(ferry_worker_ctx_port(wc), hello, sizeof hello,
				     HELLO_TIMEOUT_NS) ? 10 : 0;
}

/* Join and destroy; an abnormal end is the row's error (unless @r already is). */
static int fs_finish(struct bench_ctx *ctx, ferry_worker *w, int r)
{
	struct ferry_worker_status st;
	memset(&st, 0, sizeof st);
	int jr = ferry_worker_join(w, &st, ctx->peer_timeout_ns);
	if (jr && !r)
		r = bench_ferry_fail(ctx, jr, "ferry_worker_join");
	ferry_worker_destroy(w);
	if (r)
		return r;
	if (st.signal)
		return bench_failx(ctx, -ECHILD, "worker died by signal %d (%s)", st.signal,
				   strsignal(st.signal));
	if (st.code)
		return bench_failx(ctx, -EPROTO, "worker exited with code %d", st.code);
	return 0;
}

/* 1 GiB of private anonymous memory, every 4 KiB page written. */
static void *touch_heap(struct bench_ctx *ctx, int *r)
{
	void *heap = mmap(NULL, HEAP_BYTES, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS,
			  -1, 0);
	if (heap == MAP_FAILED) {
		*r = bench_fail(ctx, -errno, "mmap of 1 GiB");
		return NULL;
	}
	madvise(heap, HEAP_BYTES, MADV_NOHUGEPAGE);
	/* Faulted in by the kernel in one call where it can (Linux 5.14), a
	 * second or two faster than a page-by-page touch from here. */
	if (madvise(heap, HEAP_BYTES, BENCH_MADV_POPULATE_WRITE) != 0)
		for (size_t off = 0; off < HEAP_BYTES; off += 4096)
			((volatile char *)heap)[off] = 1;
	*r = 0;
	return heap;
}

static int run_fs_start(struct bench_ctx *ctx, const struct bench_scenario *s,
			struct bench_samples *out)
{
	const struct fs_param *prm = s->arg;
	struct bench_loop lp;
	int r = bench_prepare_start(ctx, out, &lp, NULL);
	if (r)
		return r;
	if (prm->big_heap) {
		/* Tens of ms each from a big parent: fewer rounds. */
		lp.n = ctx->quick ? lp.n / 10 + 1 : lp.n / 5 + 1;
		lp.warm = lp.warm / 10 + 1;
	}
	if (prm->server && (r = bench_fork_server_start(ctx)) != 0)
		return r;
	void *heap = NULL;
	if (prm->big_heap && !(heap = touch_heap(ctx, &r))) {
		ferry_fini();
		return r;
	}
	struct ferry_worker_opts o = {
		.backend = FERRY_PROCESS,
		.entry = fs_hello,
		.name = "bench-fs",
		.spawn = prm->spawn,
	};
	while (bench_loop_next(ctx, &lp)) {
		ferry_worker *w;
		uint64_t t0 = bench_now();
		r = ferry_worker_spawn(&w, &o);
		if (r) {
			r = bench_ferry_fail(ctx, r, "ferry_worker_spawn");
			break;
		}
		ferry_port *p = ferry_worker_port(w);
		/* Spin on the parent side: the figure is the start, not a wake. */
		r = ferry_port_set_wait(p, FERRY_WAIT_SPIN, 0);
		if (r) {
			r = fs_finish(ctx, w, bench_ferry_fail(ctx, r, "ferry_port_set_wait"));
			break;
		}
		ferry_msg *m;
		r = ferry_port_recv(p, &m, ctx->peer_timeout_ns);
		uint64_t t1 = bench_now();
		if (r) {
			r = bench_ferry_fail(ctx, r, "ferry_port_recv of the first message");
			r = fs_finish(ctx, w, r);
			break;
		}
		ferry_msg_free(m);
		r = fs_finish(ctx, w, 0);
		if (r)
			break;
		if (lp.measuring)
			bench_samples_add(out, bench_ns(t1 - t0));
	}
	if (heap)
		munmap(heap, HEAP_BYTES);
	if (prm->server)
		ferry_fini();
	return r;
}

#define START_GROUP "worker start to first message"

static const struct fs_param p_server = { FERRY_SPAWN_SERVER, 0, 1 };
static const struct fs_param p_fork_big = { FERRY_SPAWN_FORK, 1, 0 };
static const struct fs_param p_server_big = { FERRY_SPAWN_SERVER, 1, 1 };

static const struct bench_scenario forkserver_scenarios[] = {
	{ .id = "start.ferry.process.server", .group = START_GROUP, .order = 212,
	  .name = "ferry worker, fork server", .backend = "process", .mode = "spin",
	  .floor = "start.fork", .run = run_fs_start, .arg = &p_server },
	{ .id = "start.ferry.process.fork.1g", .group = START_GROUP, .order = 213,
	  .name = "ferry worker, 1 GiB parent, fork", .backend = "process", .mode = "spin",
	  .floor = "start.fork", .run = run_fs_start, .arg = &p_fork_big },
	{ .id = "start.ferry.process.server.1g", .group = START_GROUP, .order = 214,
	  .name = "ferry worker, 1 GiB parent, server", .backend = "process", .mode = "spin",
	  .floor = "start.fork", .run = run_fs_start, .arg = &p_server_big },
};
BENCH_REGISTER(forkserver_scenarios)
