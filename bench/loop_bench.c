/*
 * The event loop against blocking waits, on both loop backends: a round trip
 * on 32-bit words where the main side waits either in the calling thread
 * (ferry_wait, or the eventcount protocol with ferry_ec_wait: the floors) or
 * through its ferry_loop (ferry_wait_async, or ferry_loop_watch_ec: what a
 * port inside a loop costs). The peer, a thread or a process, always waits
 * with ferry_wait and answers with ferry_notify or ferry_ec_notify.
 */
#include "bench.h"
#include "ferry/loop.h"

#include <stdalign.h>
#include <stdio.h>
#include <string.h>

#define LOOP_GROUP "event loop, word round trip"

enum lb_kind {
	LB_WAIT = 0,  /* ferry_wait (floor) */
	LB_ASYNC = 1, /* ferry_wait_async */
	LB_EC = 2,    /* ferry_ec_wait (floor) */
	LB_WATCH = 3, /* ferry_loop_watch_ec */
};

struct lb_param {
	enum lb_kind kind;
	enum bench_backend backend;
	int loop_backend; /* enum ferry_loop_backend_kind */
};

/* In one shared page; each side's words on their own line. */
struct lb_shared {
	alignas(64) uint32_t ping; /* main writes, peer waits */
	alignas(64) uint32_t pong; /* peer writes */
	struct ferry_ec ec;        /* main's eventcount (EC, WATCH) */
	alignas(64) uint32_t stop;
	uint32_t use_ec; /* set before the peer starts */
};
_Static_assert(sizeof(struct lb_shared) <= 4096, "one page");

static int lb_await(struct bench_ctx *ctx, uint32_t *w, uint32_t old)
{
	uint64_t start = bench_mono_ns();
	/* acquire: pairs with the other side's release store before its notify */
	while (__atomic_load_n(w, __ATOMIC_ACQUIRE) == old) {
		if (ferry_wait(w, old, 100 * 1000 * 1000) == -ETIMEDOUT &&
		    bench_mono_ns() - start > (uint64_t)ctx->peer_timeout_ns)
			return -ETIMEDOUT;
	}
	return 0;
}

static int lb_peer(struct bench_ctx *ctx, void *arg)
{
	struct lb_shared *sh = arg;
	uint32_t seen = 0;
	for (;;) {
		if (lb_await(ctx, &sh->ping, seen))
			return -ETIMEDOUT;
		/* relaxed: stop is stored before the last ping (acquired above) */
		if (__atomic_load_n(&sh->stop, __ATOMIC_RELAXED))
			return 0;
		seen = __atomic_load_n(&sh->ping, __ATOMIC_RELAXED);
		/* release: pairs with the main side's acquire of pong */
		__atomic_store_n(&sh->pong, seen, __ATOMIC_RELEASE);
		if (sh->use_ec)
			ferry_ec_notify(&sh->ec);
		else
			ferry_notify(&sh->pong, 1);
	}
}

static void lb_ping(struct lb_shared *sh, uint32_t v)
{
	/* release: pairs with the peer's acquire in lb_await */
	__atomic_store_n(&sh->ping, v, __ATOMIC_RELEASE);
	ferry_notify(&sh->ping, 1);
}

/* ---- the main side's ways to wait for pong == v ---- */

struct lb_state {
	struct bench_ctx *ctx;
	struct lb_shared *sh;
	ferry_loop *loop;
	int done;
	int res;
	uint32_t seen; /* WATCH: last pong consumed */
};

static int round_wait(struct lb_state *st, uint32_t v)
{
	lb_ping(st->sh, v);
	return lb_await(st->ctx, &st->sh->pong, v - 1);
}

static int round_ec(struct lb_state *st, uint32_t v)
{
	struct lb_shared *sh = st->sh;
	lb_ping(sh, v);
	uint64_t start = bench_mono_ns();
	for (;;) {
		/* acquire: pairs with the peer's release of pong */
		if (__atomic_load_n(&sh->pong, __ATOMIC_ACQUIRE) == v)
			return 0;
		uint32_t key = ferry_ec_prepare(&sh->ec);
		if (__atomic_load_n(&sh->pong, __ATOMIC_ACQUIRE) == v) {
			ferry_ec_cancel(&sh->ec);
			return 0;
		}
		if (ferry_ec_wait(&sh->ec, key, 100 * 1000 * 1000) == -ETIMEDOUT &&
		    bench_mono_ns() - start > (uint64_t)st->ctx->peer_timeout_ns)
			return -ETIMEDOUT;
	}
}

static void async_cb(ferry_loop *loop, uint64_t id, int res, void *arg)
{
	struct lb_state *st = arg;
	st->done = 1;
	st->res = res;
}

static int run_until_done(struct lb_state *st)
{
	while (!st->done) {
		int r = ferry_loop_run(st->loop, FERRY_RUN_ONCE);
		if (r < 0)
			return r;
	}
	return st->res == -ETIMEDOUT ? -ETIMEDOUT : 0;
}

static int round_async(struct lb_state *st, uint32_t v)
{
	st->done = 0;
	/* The waiter first, then the ping: Atomics.waitAsync, then the request. */
	int r = ferry_wait_async(st->loop, &st->sh->pong, v - 1, st->ctx->peer_timeout_ns, async_cb,
				 st, NULL);
	if (r)
		return r;
	lb_ping(st->sh, v);
	return run_until_done(st);
}

static int watch_ready(void *arg)
{
	struct lb_state *st = arg;
	return __atomic_load_n(&st->sh->pong, __ATOMIC_ACQUIRE) != st->seen;
}

static void watch_cb(ferry_loop *loop, uint64_t id, int res, void *arg)
{
	struct lb_state *st = arg;
	st->seen = __atomic_load_n(&st->sh->pong, __ATOMIC_ACQUIRE);
	st->done = 1;
	st->res = res;
}

static void guard_cb(ferry_loop *loop, uint64_t id, int res, void *arg)
{
	struct lb_state *st = arg;
	st->done = 1;
	st->res = -ETIMEDOUT;
}

static int round_watch(struct lb_state *st, uint32_t v)
{
	st->done = 0;
	uint64_t guard;
	int r = ferry_loop_timer(st->loop, st->ctx->peer_timeout_ns, 0, guard_cb, st, &guard);
	if (r)
		return r;
	lb_ping(st->sh, v);
	r = run_until_done(st);
	ferry_loop_cancel(st->loop, guard);
	return r;
}

static int run_loop_rt(struct bench_ctx *ctx, const struct bench_scenario *s,
		       struct bench_samples *out)
{
	const struct lb_param *p = s->arg;
	struct bench_loop lp = { .warm = bench_warmup_count(ctx, BENCH_WAKE),
				 .n = bench_count(ctx, BENCH_WAKE) };
	if (bench_samples_reserve(out, lp.n))
		return bench_fail(ctx, -ENOMEM, "samples");
	struct lb_state st = { .ctx = ctx };
	if (p->kind == LB_ASYNC || p->kind == LB_WATCH) {
		struct ferry_loop_opts o = { .backend = p->loop_backend };
		int r = ferry_loop_create(&st.loop, &o);
		if (r)
			return bench_failx(ctx, r, "%s", ferry_errmsg());
	}
	st.sh = bench_shared_alloc(4096);
	if (!st.sh) {
		ferry_loop_destroy(st.loop);
		return bench_fail(ctx, -errno, "mmap shared page");
	}
	st.sh->use_ec = p->kind == LB_EC || p->kind == LB_WATCH;
	int r = 0;
	if (p->kind == LB_WATCH) {
		r = ferry_loop_watch_ec(st.loop, &st.sh->ec, watch_ready, watch_cb, &st, NULL);
		if (r) {
			bench_failx(ctx, r, "%s", ferry_errmsg());
			goto out_free;
		}
	}
	struct bench_peer peer;
	r = bench_peer_start(ctx, &peer, p->backend, lb_peer, st.sh);
	if (r)
		goto out_free;

	int (*round)(struct lb_state *, uint32_t) = p->kind == LB_WAIT    ? round_wait
						    : p->kind == LB_EC     ? round_ec
						    : p->kind == LB_ASYNC  ? round_async
									   : round_watch;
	uint32_t v = 0;
	uint64_t t0 = bench_now();
	while (r == 0 && bench_loop_next(ctx, &lp)) {
		r = round(&st, ++v);
		uint64_t t1 = bench_now();
		if (lp.measuring)
			bench_samples_add(out, bench_ns(t1 - t0));
		t0 = t1;
	}
	__atomic_store_n(&st.sh->stop, 1, __ATOMIC_RELAXED);
	lb_ping(st.sh, ++v);
	int jr = bench_peer_join(ctx, &peer);
	if (r && (jr == 0 || jr == -ETIMEDOUT))
		bench_failx(ctx, r, "no reply within %.1f s (%s)", (double)ctx->peer_timeout_ns / 1e9,
			    r == -ETIMEDOUT ? "timed out" : ferry_errmsg());
	ferry_loop_destroy(st.loop);
	if (jr != -ETIMEDOUT || p->backend == BENCH_PROCESS)
		bench_shared_free(st.sh, 4096);
	return r ? r : jr;
out_free:
	ferry_loop_destroy(st.loop);
	bench_shared_free(st.sh, 4096);
	return r;
}

static const struct lb_param lb_wait_t = { LB_WAIT, BENCH_THREAD, 0 };
static const struct lb_param lb_wait_p = { LB_WAIT, BENCH_PROCESS, 0 };
static const struct lb_param lb_async_ut = { LB_ASYNC, BENCH_THREAD, FERRY_LOOP_URING };
static const struct lb_param lb_async_up = { LB_ASYNC, BENCH_PROCESS, FERRY_LOOP_URING };
static const struct lb_param lb_async_et = { LB_ASYNC, BENCH_THREAD, FERRY_LOOP_EPOLL };
static const struct lb_param lb_async_ep = { LB_ASYNC, BENCH_PROCESS, FERRY_LOOP_EPOLL };
static const struct lb_param lb_ec_t = { LB_EC, BENCH_THREAD, 0 };
static const struct lb_param lb_ec_p = { LB_EC, BENCH_PROCESS, 0 };
static const struct lb_param lb_watch_ut = { LB_WATCH, BENCH_THREAD, FERRY_LOOP_URING };
static const struct lb_param lb_watch_up = { LB_WATCH, BENCH_PROCESS, FERRY_LOOP_URING };
static const struct lb_param lb_watch_et = { LB_WATCH, BENCH_THREAD, FERRY_LOOP_EPOLL };
static const struct lb_param lb_watch_ep = { LB_WATCH, BENCH_PROCESS, FERRY_LOOP_EPOLL };

static const struct bench_scenario loop_scenarios[] = {
	{ .id = "loop.wait.thread", .group = LOOP_GROUP, .order = 800, .name = "ferry_wait",
	  .backend = "thread", .mode = "block", .run = run_loop_rt, .arg = &lb_wait_t },
	{ .id = "loop.wait.process", .group = LOOP_GROUP, .order = 801, .name = "ferry_wait",
	  .backend = "process", .mode = "block", .run = run_loop_rt, .arg = &lb_wait_p },
	{ .id = "loop.async.uring.thread", .group = LOOP_GROUP, .order = 802,
	  .name = "wait_async, io_uring", .backend = "thread", .mode = "block",
	  .floor = "loop.wait.thread", .run = run_loop_rt, .arg = &lb_async_ut },
	{ .id = "loop.async.uring.process", .group = LOOP_GROUP, .order = 803,
	  .name = "wait_async, io_uring", .backend = "process", .mode = "block",
	  .floor = "loop.wait.process", .run = run_loop_rt, .arg = &lb_async_up },
	{ .id = "loop.async.epoll.thread", .group = LOOP_GROUP, .order = 804,
	  .name = "wait_async, epoll", .backend = "thread", .mode = "block",
	  .floor = "loop.wait.thread", .run = run_loop_rt, .arg = &lb_async_et },
	{ .id = "loop.async.epoll.process", .group = LOOP_GROUP, .order = 805,
	  .name = "wait_async, epoll", .backend = "process", .mode = "block",
	  .floor = "loop.wait.process", .run = run_loop_rt, .arg = &lb_async_ep },
	{ .id = "loop.ec.thread", .group = LOOP_GROUP, .order = 806, .name = "ferry_ec_wait",
	  .backend = "thread", .mode = "block", .run = run_loop_rt, .arg = &lb_ec_t },
	{ .id = "loop.ec.process", .group = LOOP_GROUP, .order = 807, .name = "ferry_ec_wait",
	  .backend = "process", .mode = "block", .run = run_loop_rt, .arg = &lb_ec_p },
	{ .id = "loop.watch.uring.thread", .group = LOOP_GROUP, .order = 808,
	  .name = "watch_ec, io_uring", .backend = "thread", .mode = "block",
	  .floor = "loop.ec.thread", .run = run_loop_rt, .arg = &lb_watch_ut },
	{ .id = "loop.watch.uring.process", .group = LOOP_GROUP, .order = 809,
	  .name = "watch_ec, io_uring", .backend = "process", .mode = "block",
	  .floor = "loop.ec.process", .run = run_loop_rt, .arg = &lb_watch_up },
	{ .id = "loop.watch.epoll.thread", .group = LOOP_GROUP, .order = 810,
	  .name = "watch_ec, epoll", .backend = "thread", .mode = "block",
	  .floor = "loop.ec.thread", .run = run_loop_rt, .arg = &lb_watch_et },
	{ .id = "loop.watch.epoll.process", .group = LOOP_GROUP, .order = 811,
	  .name = "watch_ec, epoll", .backend = "process", .mode = "block",
	  .floor = "loop.ec.process", .run = run_loop_rt, .arg = &lb_watch_ep },
};
BENCH_REGISTER(loop_scenarios)
