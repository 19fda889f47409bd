/*
 * The machine's own floors, measured in the same run as ferry: what a round
 * trip costs with nothing but an atomic word (spin), a futex (block), a pipe
 * or a unix socket between two threads or two processes; and what the bare
 * pthread_create and fork cost until the new side signals.
 */
#include "bench.h"

#include <fcntl.h>
#include <linux/futex.h>
#include <pthread.h>
#include <stdalign.h>
#include <stdio.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/syscall.h>
#include <sys/time.h>
#include <sys/wait.h>
#include <unistd.h>

#define MSG_BYTES 64

/* The round-trip words: each side's word on its own cache line, as in the
 * rings, so that a store by one side never invalidates the line the other
 * side stores to. */
struct pingpong {
	alignas(64) _Atomic uint32_t ping; /* main writes, peer waits on it */
	alignas(64) _Atomic uint32_t pong; /* peer writes, main waits on it */
	alignas(64) _Atomic uint32_t stop; /* main writes once, at the end */
};
_Static_assert(sizeof(struct pingpong) <= 4096, "one page");
_Static_assert(ATOMIC_INT_LOCK_FREE == 2, "lock-free words in shared memory");

static int rt_backend(const struct bench_scenario *s)
{
	return (int)(intptr_t)s->arg;
}

/* ---- atomic spin ping-pong ---- */

static int spin_peer(struct bench_ctx *ctx, void *arg)
{
	struct pingpong *pp = arg;
	uint32_t seen = 0;
	for (;;) {
		struct bench_spin sp = bench_spin_start(ctx);
		uint32_t v;
		/* acquire: pairs with main's release store of ping (and of stop) */
		while ((v = atomic_load_explicit(&pp->ping, memory_order_acquire)) == seen)
			if (bench_spin(&sp))
				return -ETIMEDOUT;
		if (atomic_load_explicit(&pp->stop, memory_order_relaxed))
			return 0; /* stop is stored before the last ping: the acquire above covers it */
		seen = v;
		/* release: pairs with main's acquire load of pong */
		atomic_store_explicit(&pp->pong, v, memory_order_release);
	}
}

static int spin_round(struct bench_ctx *ctx, struct pingpong *pp, uint32_t v)
{
	/* release/acquire: pair with the peer's acquire of ping / release of pong */
	atomic_store_explicit(&pp->ping, v, memory_order_release);
	struct bench_spin sp = bench_spin_start(ctx);
	while (atomic_load_explicit(&pp->pong, memory_order_acquire) != v)
		if (bench_spin(&sp))
			return -ETIMEDOUT;
	return 0;
}

/* ---- futex wait/wake ping-pong ---- */

/* Shared futexes (no FUTEX_PRIVATE_FLAG): the same call serves threads and
 * processes, as ferry's cross-process ports do. */
static long futex_wait(_Atomic uint32_t *w, uint32_t expected, int64_t timeout_ns)
{
	struct timespec ts = { timeout_ns / 1000000000, timeout_ns % 1000000000 };
	return syscall(SYS_futex, w, FUTEX_WAIT, expected, &ts, NULL, 0);
}

static void futex_wake(_Atomic uint32_t *w)
{
	syscall(SYS_futex, w, FUTEX_WAKE, 1, NULL, NULL, 0);
}

/* Sleep until *@w != @old, bounded by the peer timeout. */
static int futex_await_change(struct bench_ctx *ctx, _Atomic uint32_t *w, uint32_t old)
{
	uint64_t deadline = 0;
	/* acquire: pairs with the other side's release store before its wake */
	while (atomic_load_explicit(w, memory_order_acquire) == old) {
		long r = futex_wait(w, old, 100 * 1000 * 1000);
		if (r != 0 && errno == ETIMEDOUT) {
			uint64_t now = bench_mono_ns();
			if (!deadline)
				deadline = now + (uint64_t)ctx->peer_timeout_ns;
			else if (now >= deadline)
				return -ETIMEDOUT;
		}
	}
	return 0;
}

static int futex_peer(struct bench_ctx *ctx, void *arg)
{
	struct pingpong *pp = arg;
	uint32_t seen = 0;
	for (;;) {
		if (futex_await_change(ctx, &pp->ping, seen))
			return -ETIMEDOUT;
		if (atomic_load_explicit(&pp->stop, memory_order_relaxed))
			return 0;
		seen = atomic_load_explicit(&pp->ping, memory_order_relaxed);
		atomic_store_explicit(&pp->pong, seen, memory_order_release);
		futex_wake(&pp->pong);
	}
}

static int futex_round(struct bench_ctx *ctx, struct pingpong *pp, uint32_t v)
{
	atomic_store_explicit(&pp->ping, v, memory_order_release);
	futex_wake(&pp->ping);
	return futex_await_change(ctx, &pp->pong, v - 1);
}

/* ---- the ping-pong floors, spin or futex ---- */

/* What tells the two ping-pong floors apart: the cost of a round, the
 * peer's loop, the main side's round trip, and whether the peer sleeps (the
 * final ping then wakes it). */
struct pp_kind {
	enum bench_cost cost;
	bench_peer_fn peer;
	int (*round)(struct bench_ctx *ctx, struct pingpong *pp, uint32_t v);
	int sleeps;
};

/* Inlined into each floor, so that the measured round is a direct call, as
 * before the two shared this body. */
static inline __attribute__((always_inline)) int
run_pingpong(struct bench_ctx *ctx, const struct bench_scenario *s, struct bench_samples *out,
	     const struct pp_kind *k)
{
	size_t n, warm;
	int r = bench_prepare(ctx, out, k->cost, &n, &warm);
	if (r)
		return r;
	struct pingpong *pp = bench_shared_alloc(4096);
	if (!pp)
		return bench_fail(ctx, -errno, "mmap shared page");
	struct bench_peer peer;
	r = bench_peer_start(ctx, &peer, rt_backend(s), k->peer, pp);
	if (r) {
		bench_shared_free(pp, 4096);
		return r;
	}
	uint32_t v = 0;
	for (size_t i = 0; i < warm && r == 0 && !bench_warm_stop(ctx, i); i++)
		r = k->round(ctx, pp, ++v);
	uint64_t t0 = bench_now();
	for (size_t i = 0; i < n && r == 0 && !bench_stop(ctx, i); i++) {
		r = k->round(ctx, pp, ++v);
		uint64_t t1 = bench_now();
		bench_samples_add(out, bench_ns(t1 - t0));
		t0 = t1;
	}
	atomic_store_explicit(&pp->stop, 1, memory_order_relaxed);
	atomic_store_explicit(&pp->ping, ++v, memory_order_release);
	if (k->sleeps)
		futex_wake(&pp->ping);
	int jr = bench_peer_join(ctx, &peer);
	if (r && (jr == 0 || jr == -ETIMEDOUT)) /* else join said why (peer died) */
		bench_failx(ctx, r, "no reply from the peer within %.1f s",
			   (double)ctx->peer_timeout_ns / 1e9);
	if (jr != -ETIMEDOUT || rt_backend(s) == BENCH_PROCESS)
		bench_shared_free(pp, 4096);
	return r ? r : jr;
}

static int run_spin(struct bench_ctx *ctx, const struct bench_scenario *s,
		    struct bench_samples *out)
{
	static const struct pp_kind spin = { BENCH_CHEAP, spin_peer, spin_round, 0 };
	return run_pingpong(ctx, s, out, &spin);
}

static int run_futex(struct bench_ctx *ctx, const struct bench_scenario *s,
		     struct bench_samples *out)
{
	static const struct pp_kind futex = { BENCH_WAKE, futex_peer, futex_round, 1 };
	return run_pingpong(ctx, s, out, &futex);
}

/* ---- pipe and unix socket ping-pong, 64 bytes ---- */

/* fds[0] main reads, fds[1] main writes, fds[2] peer reads, fds[3] peer
 * writes. For a pipe pair: p2c = {fds[2], fds[1]}, c2p = {fds[0], fds[3]}. A
 * socketpair gives one fd per side: fds[0] == fds[1], fds[2] == fds[3]. */
struct stream {
	int fds[4];
	int backend;
};

static int xfer_all(int fd, void *buf, size_t len, int writing)
{
	size_t done = 0;
	while (done < len) {
		ssize_t r = writing ? write(fd, (char *)buf + done, len - done)
				    : read(fd, (char *)buf + done, len - done);
		if (r > 0) {
			done += (size_t)r;
			continue;
		}
		if (r == 0)
			return -EPIPE;
		if (errno == EINTR)
			continue;
		return errno == EAGAIN ? -ETIMEDOUT : -errno;
	}
	return 0;
}

static void close_fds(int a, int b)
{
	close(a);
	if (b != a)
		close(b);
}

static int stream_peer(struct bench_ctx *ctx, void *arg)
{
	struct stream *st = arg;
	char buf[MSG_BYTES];
	if (st->backend == BENCH_PROCESS)
		close_fds(st->fds[0], st->fds[1]); /* so that EOF means "main is gone" */
	for (;;) {
		int r = xfer_all(st->fds[2], buf, sizeof buf, 0);
		if (r == -EPIPE)
			return 0; /* main closed: the end of the row */
		if (r)
			return r;
		r = xfer_all(st->fds[3], buf, sizeof buf, 1);
		if (r)
			return r == -EPIPE ? 0 : r;
	}
}

static int stream_round(struct stream *st, char *buf)
{
	int r = xfer_all(st->fds[1], buf, MSG_BYTES, 1);
	return r ? r : xfer_all(st->fds[0], buf, MSG_BYTES, 0);
}

static int run_stream(struct bench_ctx *ctx, const struct bench_scenario *s,
		      struct bench_samples *out, int unix_socket)
{
	size_t n, warm;
	int r = bench_prepare(ctx, out, BENCH_WAKE, &n, &warm);
	if (r)
		return r;
	struct stream st = { .backend = rt_backend(s) };
	if (unix_socket) {
		int sv[2];
		if (socketpair(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0, sv) != 0)
			return bench_fail(ctx, -errno, "socketpair");
		/* Receives time out rather than hang on a lost peer. */
		struct timeval tv = { ctx->peer_timeout_ns / 1000000000, 0 };
		setsockopt(sv[0], SOL_SOCKET, SO_RCVTIMEO, &tv, sizeof tv);
		setsockopt(sv[1], SOL_SOCKET, SO_RCVTIMEO, &tv, sizeof tv);
		st.fds[0] = st.fds[1] = sv[0];
		st.fds[2] = st.fds[3] = sv[1];
	} else {
		int p2c[2], c2p[2];
		if (pipe2(p2c, O_CLOEXEC) != 0)
			return bench_fail(ctx, -errno, "pipe2");
		if (pipe2(c2p, O_CLOEXEC) != 0) {
			int e = -errno;
			close_fds(p2c[0], p2c[1]);
			return bench_fail(ctx, e, "pipe2");
		}
		st.fds[0] = c2p[0];
		st.fds[1] = p2c[1];
		st.fds[2] = p2c[0];
		st.fds[3] = c2p[1];
	}
	struct bench_peer peer;
	r = bench_peer_start(ctx, &peer, st.backend, stream_peer, &st);
	if (r) {
		close_fds(st.fds[0], st.fds[1]);
		close_fds(st.fds[2], st.fds[3]);
		return r;
	}
	if (st.backend == BENCH_PROCESS)
		close_fds(st.fds[2], st.fds[3]); /* so that EOF means "peer is gone" */
	char buf[MSG_BYTES];
	memset(buf, 0x5a, sizeof buf);
	for (size_t i = 0; i < warm && r == 0 && !bench_warm_stop(ctx, i); i++)
		r = stream_round(&st, buf);
	uint64_t t0 = bench_now();
	for (size_t i = 0; i < n && r == 0 && !bench_stop(ctx, i); i++) {
		r = stream_round(&st, buf);
		uint64_t t1 = bench_now();
		bench_samples_add(out, bench_ns(t1 - t0));
		t0 = t1;
	}
	/* Closing main's ends is the stop signal (EOF at the peer). */
	if (unix_socket)
		shutdown(st.fds[1], SHUT_WR);
	else
		close(st.fds[1]);
	int jr = bench_peer_join(ctx, &peer);
	close(st.fds[0]);
	if (st.backend == BENCH_THREAD && jr != -ETIMEDOUT)
		close_fds(st.fds[2], st.fds[3]);
	if (r && (jr == 0 || jr == -ETIMEDOUT))
		bench_fail(ctx, r, "round trip with the peer");
	return r ? r : jr;
}

static int run_pipe(struct bench_ctx *ctx, const struct bench_scenario *s,
		    struct bench_samples *out)
{
	return run_stream(ctx, s, out, 0);
}

static int run_unix(struct bench_ctx *ctx, const struct bench_scenario *s,
		    struct bench_samples *out)
{
	return run_stream(ctx, s, out, 1);
}

/* ---- start: pthread_create / fork until the new side signals ---- */

struct start_flag {
	alignas(64) _Atomic uint32_t up;
};

static void *start_thread(void *arg)
{
	struct start_flag *f = arg;
	/* release: pairs with the creator's acquire spin */
	atomic_store_explicit(&f->up, 1, memory_order_release);
	return NULL;
}

static int await_up(struct bench_ctx *ctx, struct start_flag *f)
{
	struct bench_spin sp = bench_spin_start(ctx);
	while (!atomic_load_explicit(&f->up, memory_order_acquire))
		if (bench_spin(&sp))
			return -ETIMEDOUT;
	return 0;
}

static int run_pthread_start(struct bench_ctx *ctx, const struct bench_scenario *s,
			     struct bench_samples *out)
{
	/* The new thread goes where the scheduler puts it, as a worker does. */
	struct bench_loop lp;
	int r = bench_prepare_start(ctx, out, &lp, NULL);
	if (r)
		return r;
	static struct start_flag flag;
	while (bench_loop_next(ctx, &lp)) {
		atomic_store_explicit(&flag.up, 0, memory_order_relaxed);
		pthread_t t;
		uint64_t t0 = bench_now();
		r = pthread_create(&t, NULL, start_thread, &flag);
		if (r)
			return bench_fail(ctx, -r, "pthread_create");
		r = await_up(ctx, &flag);
		uint64_t t1 = bench_now();
		pthread_join(t, NULL);
		if (r)
			return bench_failx(ctx, r, "the new thread never signalled within %.1f s",
					   (double)ctx->peer_timeout_ns / 1e9);
		if (lp.measuring)
			bench_samples_add(out, bench_ns(t1 - t0));
	}
	return 0;
}

static int run_fork_start(struct bench_ctx *ctx, const struct bench_scenario *s,
			  struct bench_samples *out)
{
	struct bench_loop lp;
	void *page;
	int r = bench_prepare_start(ctx, out, &lp, &page);
	if (r)
		return r;
	struct start_flag *flag = page;
	while (bench_loop_next(ctx, &lp)) {
		atomic_store_explicit(&flag->up, 0, memory_order_relaxed);
		uint64_t t0 = bench_now();
		pid_t pid = fork();
		if (pid < 0) {
			r = bench_fail(ctx, -errno, "fork");
			break;
		}
		if (pid == 0) {
			atomic_store_explicit(&flag->up, 1, memory_order_release);
			_exit(0);
		}
		r = await_up(ctx, flag);
		uint64_t t1 = bench_now();
		int status;
		while (waitpid(pid, &status, 0) < 0 && errno == EINTR)
			;
		if (r) {
			r = bench_failx(ctx, r, "the child never signalled within %.1f s",
					(double)ctx->peer_timeout_ns / 1e9);
			break;
		}
		if (lp.measuring)
			bench_samples_add(out, bench_ns(t1 - t0));
	}
	bench_shared_free(flag, 4096);
	return r;
}

#define RT_GROUP "round trip, 64 B"
#define START_GROUP "worker start to first message"
#define THR ((const void *)(intptr_t)BENCH_THREAD)
#define PRC ((const void *)(intptr_t)BENCH_PROCESS)

static const struct bench_scenario floor_scenarios[] = {
	{ .id = "rt64.spin.thread", .group = RT_GROUP, .order = 100, .name = "atomic spin",
	  .backend = "thread", .mode = "spin", .run = run_spin, .arg = THR },
	{ .id = "rt64.spin.process", .group = RT_GROUP, .order = 101, .name = "atomic spin",
	  .backend = "process", .mode = "spin", .run = run_spin, .arg = PRC },
	{ .id = "rt64.futex.thread", .group = RT_GROUP, .order = 102, .name = "futex wait/wake",
	  .backend = "thread", .mode = "block", .run = run_futex, .arg = THR },
	{ .id = "rt64.futex.process", .group = RT_GROUP, .order = 103, .name = "futex wait/wake",
	  .backend = "process", .mode = "block", .run = run_futex, .arg = PRC },
	{ .id = "rt64.pipe.thread", .group = RT_GROUP, .order = 104, .name = "pipe",
	  .backend = "thread", .mode = "block", .floor = "rt64.futex.thread", .run = run_pipe,
	  .arg = THR },
	{ .id = "rt64.pipe.process", .group = RT_GROUP, .order = 105, .name = "pipe",
	  .backend = "process", .mode = "block", .floor = "rt64.futex.process", .run = run_pipe,
	  .arg = PRC },
	{ .id = "rt64.unix.thread", .group = RT_GROUP, .order = 106, .name = "unix socket",
	  .backend = "thread", .mode = "block", .floor = "rt64.futex.thread", .run = run_unix,
	  .arg = THR },
	{ .id = "rt64.unix.process", .group = RT_GROUP, .order = 107, .name = "unix socket",
	  .backend = "process", .mode = "block", .floor = "rt64.futex.process", .run = run_unix,
	  .arg = PRC },
	{ .id = "start.pthread", .group = START_GROUP, .order = 200, .name = "pthread_create",
	  .backend = "thread", .mode = "spin", .run = run_pthread_start },
	{ .id = "start.fork", .group = START_GROUP, .order = 201, .name = "fork",
	  .backend = "process", .mode = "spin", .run = run_fork_start },
};
BENCH_REGISTER(floor_scenarios)
