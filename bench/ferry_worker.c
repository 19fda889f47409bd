/*
 * ferry's own rows: a 64-byte round trip between the parent and an echo
 * worker on each backend and in each wait mode, worker start to first
 * message, and terminate to the exit event seen by a ferry_loop (with its
 * floors: a futex-woken pthread joined, a fork child killed and waited for),
 * all through the public API (ferry/worker.h, ferry/port.h, ferry/loop.h).
 */
#include "bench.h"

#include "ferry/loop.h"
#include "ferry/port.h"
#include "ferry/runtime.h"
#include "ferry/worker.h"

#include <linux/futex.h>
#include <pthread.h>
#include <signal.h>
#include <stdio.h>
#include <string.h>
#include <sys/syscall.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#define MSG_BYTES 64

struct rt_param {
	int backend;               /* enum ferry_backend */
	enum ferry_wait_mode mode; /* both sides */
};

/* What the echo worker needs; lives in static storage, so a thread worker
 * that outlives its row never reads freed memory (a process worker has its
 * own copy from the fork). */
struct echo_cfg {
	int cpu;
	enum ferry_wait_mode mode;
	int64_t timeout_ns;
};
static struct echo_cfg echo_cfg;

static void pin_to(int cpu)
{
	cpu_set_t set;
	CPU_ZERO(&set);
	CPU_SET(cpu, &set);
	(void)sched_setaffinity(0, sizeof set, &set); /* best effort: unpinned still measures */
}

/* Echo every message until a 0-length one or -EPIPE. Exit code 0 on a clean
 * end; 10 + the failing step otherwise (the row reports it). */
static int echo_entry(ferry_worker_ctx *wc)
{
	const struct echo_cfg *cfg = ferry_worker_ctx_arg(wc);
	ferry_port *p = ferry_worker_ctx_port(wc);
	pin_to(cfg->cpu);
	if (ferry_port_set_wait(p, cfg->mode, 0) != 0)
		return 10;
	for (;;) {
		ferry_msg *m;
		int r = ferry_port_recv(p, &m, cfg->timeout_ns);
		if (r == -EPIPE)
			return 0;
		if (r != 0)
			return 11;
		size_t len = ferry_msg_len(m);
		if (len == 0) {
			ferry_msg_free(m);
			return 0;
		}
		r = ferry_port_post_bytes(p, ferry_msg_data(m), len, cfg->timeout_ns);
		ferry_msg_free(m);
		if (r == -EPIPE)
			return 0;
		if (r != 0)
			return 12;
	}
}

static int rt_round(struct bench_ctx *ctx, ferry_port *p, const char *buf)
{
	int r = ferry_port_post_bytes(p, buf, MSG_BYTES, ctx->peer_timeout_ns);
	if (r)
		return bench_ferry_fail(ctx, r, "ferry_port_post_bytes");
	ferry_msg *m;
	r = ferry_port_recv(p, &m, ctx->peer_timeout_ns);
	if (r)
		return bench_ferry_fail(ctx, r, "ferry_port_recv");
	size_t len = ferry_msg_len(m);
	ferry_msg_free(m);
	if (len != MSG_BYTES)
		return bench_failx(ctx, -EBADMSG, "echo of %zu bytes instead of %d", len,
				   MSG_BYTES);
	return 0;
}

/* Join the worker and turn an abnormal end into the row's error. */
static int finish_worker(struct bench_ctx *ctx, ferry_worker *w, int r)
{
	struct ferry_worker_status st;
	memset(&st, 0, sizeof st);
	int jr = ferry_worker_join(w, &st, ctx->peer_timeout_ns);
	ferry_worker_destroy(w);
	if (r && jr == 0 && st.signal) /* the worker's death is the news */
		bench_failx(ctx, -ECHILD, "worker died by signal %d (%s)", st.signal,
			   strsignal(st.signal));
	if (r)
		return r;
	if (jr)
		return bench_ferry_fail(ctx, jr, "ferry_worker_join");
	if (st.signal)
		return bench_failx(ctx, -ECHILD, "worker died by signal %d (%s)", st.signal,
				  strsignal(st.signal));
	if (st.code)
		return bench_failx(ctx, -EPROTO, "worker exited with code %d", st.code);
	return 0;
}

static int run_rt(struct bench_ctx *ctx, const struct bench_scenario *s,
		  struct bench_samples *out)
{
	const struct rt_param *prm = s->arg;
	/* Spin rows cost ~100s of ns, blocking ones tens of us; adaptive ones
	 * are either, so they get the smaller count and the row budget. */
	enum bench_cost cost = prm->mode == FERRY_WAIT_SPIN ? BENCH_CHEAP : BENCH_WAKE;
	size_t n, warm;
	if (bench_prepare(ctx, out, cost, &n, &warm))
		return -ENOMEM;

	echo_cfg.cpu = ctx->cpu_peer;
	echo_cfg.mode = prm->mode;
	echo_cfg.timeout_ns = ctx->peer_timeout_ns;
	struct ferry_worker_opts o = {
		.backend = prm->backend,
		.entry = echo_entry,
		.name = "bench-echo",
		.arg = &echo_cfg,
	};
	ferry_worker *w;
	int r = ferry_worker_spawn(&w, &o);
	if (r)
		return bench_ferry_fail(ctx, r, "ferry_worker_spawn");
	ferry_port *p = ferry_worker_port(w);
	r = ferry_port_set_wait(p, prm->mode, 0);
	if (r) {
		bench_ferry_fail(ctx, r, "ferry_port_set_wait");
		return finish_worker(ctx, w, r);
	}
	char buf[MSG_BYTES];
	memset(buf, 0x5a, sizeof buf);
	for (size_t i = 0; i < warm && r == 0 && !bench_warm_stop(ctx, i); i++)
		r = rt_round(ctx, p, buf);
	uint64_t t0 = bench_now();
	for (size_t i = 0; i < n && r == 0 && !bench_stop(ctx, i); i++) {
		r = rt_round(ctx, p, buf);
		uint64_t t1 = bench_now();
		bench_samples_add(out, bench_ns(t1 - t0));
		t0 = t1;
	}
	/* The 0-length message ends the echo loop. */
	if (r == 0) {
		int er = ferry_port_post_bytes(p, buf, 0, ctx->peer_timeout_ns);
		if (er)
			r = bench_ferry_fail(ctx, er, "ferry_port_post_bytes of the end message");
	}
	return finish_worker(ctx, w, r);
}

/* Loop delivery: the same echo round trip, but the parent waits for each
 * reply in a ferry_loop (a port watch) instead of a blocking recv. Both
 * sides block (no spin), so the floor is the blocking row of the run. */
struct loop_param {
	int backend;      /* enum ferry_backend */
	int loop_backend; /* enum ferry_loop_backend_kind */
};

struct loop_reply {
	int got;
	int err;
};

static void on_reply(ferry_loop *loop, ferry_port *port, ferry_msg *m, int err, void *arg)
{
	struct loop_reply *lr = arg;
	if (m) {
		lr->got++;
		ferry_msg_free(m);
	} else {
		lr->err = err;
	}
}

static int run_loop_rt(struct bench_ctx *ctx, const struct bench_scenario *s,
		       struct bench_samples *out)
{
	const struct loop_param *prm = s->arg;
	size_t n, warm;
	if (bench_prepare(ctx, out, BENCH_WAKE, &n, &warm))
		return -ENOMEM;
	ferry_loop *loop;
	struct ferry_loop_opts lo = { .backend = prm->loop_backend };
	int r = ferry_loop_create(&loop, &lo);
	if (r)
		return bench_ferry_fail(ctx, r, "ferry_loop_create");
	echo_cfg.cpu = ctx->cpu_peer;
	echo_cfg.mode = FERRY_WAIT_BLOCK;
	echo_cfg.timeout_ns = ctx->peer_timeout_ns;
	struct ferry_worker_opts o = {
		.backend = prm->backend, .entry = echo_entry, .name = "bench-echo", .arg = &echo_cfg,
	};
	ferry_worker *w;
	r = ferry_worker_spawn(&w, &o);
	if (r) {
		ferry_loop_destroy(loop);
		return bench_ferry_fail(ctx, r, "ferry_worker_spawn");
	}
	ferry_port *p = ferry_worker_port(w);
	struct loop_reply lr = { 0, 0 };
	struct ferry_loop_port_watch pw = { 0 };
	r = ferry_loop_port_start(loop, &pw, p, on_reply, &lr);
	if (r) {
		bench_ferry_fail(ctx, r, "ferry_loop_port_start");
		ferry_loop_destroy(loop);
		return finish_worker(ctx, w, r);
	}
	char buf[MSG_BYTES];
	memset(buf, 0x5a, sizeof buf);
	for (size_t i = 0; r == 0 && i < warm + n && !(i >= warm && bench_stop(ctx, i - warm)); i++) {
		uint64_t t0 = bench_now();
		int want = lr.got + 1;
		r = ferry_port_post_bytes(p, buf, sizeof buf, ctx->peer_timeout_ns);
		if (r) {
			bench_ferry_fail(ctx, r, "ferry_port_post_bytes");
			break;
		}
		uint64_t give_up = t0 + bench_ticks(ctx->peer_timeout_ns);
		while (lr.got < want && !lr.err && bench_now() < give_up)
			ferry_loop_run(loop, FERRY_RUN_ONCE);
		if (lr.got < want) {
			r = bench_failx(ctx, lr.err ? lr.err : -ETIMEDOUT, "no reply through the loop");
			break;
		}
		if (i >= warm)
			bench_samples_add(out, bench_ns(bench_now() - t0));
	}
	ferry_loop_port_stop(loop, &pw);
	if (r == 0) {
		int er = ferry_port_post_bytes(p, buf, 0, ctx->peer_timeout_ns);
		if (er)
			r = bench_ferry_fail(ctx, er, "ferry_port_post_bytes of the end message");
	}
	r = finish_worker(ctx, w, r);
	ferry_loop_destroy(loop);
	return r;
}

/* Start: the worker posts one message at once and ends. */
static int hello_entry(ferry_worker_ctx *wc)
{
	const struct echo_cfg *cfg = ferry_worker_ctx_arg(wc);
	static const char hello[MSG_BYTES] = "up";
	int r = ferry_port_post_bytes(ferry_worker_ctx_port(wc), hello, sizeof hello,
				      cfg->timeout_ns);
	return r == 0 ? 0 : 10;
}

static int run_start(struct bench_ctx *ctx, const struct bench_scenario *s,
		     struct bench_samples *out)
{
	const struct rt_param *prm = s->arg;
	/* Like the pthread_create and fork floors: the new side goes where the
	 * scheduler puts it. */
	struct bench_loop lp;
	int r = bench_prepare_start(ctx, out, &lp, NULL);
	if (r)
		return r;
	echo_cfg.timeout_ns = ctx->peer_timeout_ns;
	struct ferry_worker_opts o = {
		.backend = prm->backend,
		.entry = hello_entry,
		.name = "bench-start",
		.arg = &echo_cfg,
	};
	while (bench_loop_next(ctx, &lp)) {
		ferry_worker *w;
		uint64_t t0 = bench_now();
		r = ferry_worker_spawn(&w, &o);
		if (r)
			return bench_ferry_fail(ctx, r, "ferry_worker_spawn");
		ferry_port *p = ferry_worker_port(w);
		/* Spin on the parent side: the figure is the start, not a wake. */
		r = ferry_port_set_wait(p, FERRY_WAIT_SPIN, 0);
		if (r) {
			bench_ferry_fail(ctx, r, "ferry_port_set_wait");
			return finish_worker(ctx, w, r);
		}
		ferry_msg *m;
		r = ferry_port_recv(p, &m, ctx->peer_timeout_ns);
		uint64_t t1 = bench_now();
		if (r) {
			bench_ferry_fail(ctx, r, "ferry_port_recv of the first message");
			return finish_worker(ctx, w, r);
		}
		ferry_msg_free(m);
		r = finish_worker(ctx, w, 0);
		if (r)
			return r;
		if (lp.measuring)
			bench_samples_add(out, bench_ns(t1 - t0));
	}
	return 0;
}

#define RT_GROUP "round trip, 64 B"
#define START_GROUP "worker start to first message"

static const struct rt_param p_spin_thr = { FERRY_THREAD, FERRY_WAIT_SPIN };
static const struct rt_param p_spin_prc = { FERRY_PROCESS, FERRY_WAIT_SPIN };
static const struct rt_param p_adap_thr = { FERRY_THREAD, FERRY_WAIT_ADAPTIVE };
static const struct rt_param p_adap_prc = { FERRY_PROCESS, FERRY_WAIT_ADAPTIVE };
static const struct rt_param p_block_thr = { FERRY_THREAD, FERRY_WAIT_BLOCK };
static const struct rt_param p_block_prc = { FERRY_PROCESS, FERRY_WAIT_BLOCK };

static const struct bench_scenario ferry_scenarios[] = {
	{ .id = "rt64.ferry.spin.thread", .group = RT_GROUP, .order = 110, .name = "ferry port",
	  .backend = "thread", .mode = "spin", .floor = "rt64.spin.thread", .run = run_rt,
	  .arg = &p_spin_thr },
	{ .id = "rt64.ferry.spin.process", .group = RT_GROUP, .order = 111, .name = "ferry port",
	  .backend = "process", .mode = "spin", .floor = "rt64.spin.process", .run = run_rt,
	  .arg = &p_spin_prc },
	{ .id = "rt64.ferry.adaptive.thread", .group = RT_GROUP, .order = 112,
	  .name = "ferry port", .backend = "thread", .mode = "adaptive",
	  .floor = "rt64.spin.thread", .run = run_rt, .arg = &p_adap_thr },
	{ .id = "rt64.ferry.adaptive.process", .group = RT_GROUP, .order = 113,
	  .name = "ferry port", .backend = "process", .mode = "adaptive",
	  .floor = "rt64.spin.process", .run = run_rt, .arg = &p_adap_prc },
	{ .id = "rt64.ferry.block.thread", .group = RT_GROUP, .order = 114, .name = "ferry port",
	  .backend = "thread", .mode = "block", .floor = "rt64.futex.thread", .run = run_rt,
	  .arg = &p_block_thr },
	{ .id = "rt64.ferry.block.process", .group = RT_GROUP, .order = 115,
	  .name = "ferry port", .backend = "process", .mode = "block",
	  .floor = "rt64.futex.process", .run = run_rt, .arg = &p_block_prc },
	{ .id = "start.ferry.thread", .group = START_GROUP, .order = 210, .name = "ferry worker",
	  .backend = "thread", .mode = "spin", .floor = "start.pthread", .run = run_start,
	  .arg = &p_spin_thr },
	{ .id = "start.ferry.process", .group = START_GROUP, .order = 211,
	  .name = "ferry worker", .backend = "process", .mode = "spin", .floor = "start.fork",
	  .run = run_start, .arg = &p_spin_prc },
};
BENCH_REGISTER(ferry_scenarios)

#define LOOP_GROUP "event loop, port delivery of a 64 B reply (both sides block)"
static const struct loop_param lp_uring_thr = { FERRY_THREAD, FERRY_LOOP_URING };
static const struct loop_param lp_uring_prc = { FERRY_PROCESS, FERRY_LOOP_URING };
static const struct loop_param lp_epoll_thr = { FERRY_THREAD, FERRY_LOOP_EPOLL };
static const struct loop_param lp_epoll_prc = { FERRY_PROCESS, FERRY_LOOP_EPOLL };
static const struct bench_scenario loop_port_scenarios[] = {
	{ .id = "loop.port.uring.thread", .group = LOOP_GROUP, .order = 820, .name = "loop (io_uring)",
	  .backend = "thread", .mode = "block", .floor = "rt64.ferry.block.thread",
	  .run = run_loop_rt, .arg = &lp_uring_thr },
	{ .id = "loop.port.uring.process", .group = LOOP_GROUP, .order = 821, .name = "loop (io_uring)",
	  .backend = "process", .mode = "block", .floor = "rt64.ferry.block.process",
	  .run = run_loop_rt, .arg = &lp_uring_prc },
	{ .id = "loop.port.epoll.thread", .group = LOOP_GROUP, .order = 822, .name = "loop (epoll)",
	  .backend = "thread", .mode = "block", .floor = "rt64.ferry.block.thread",
	  .run = run_loop_rt, .arg = &lp_epoll_thr },
	{ .id = "loop.port.epoll.process", .group = LOOP_GROUP, .order = 823, .name = "loop (epoll)",
	  .backend = "process", .mode = "block", .floor = "rt64.ferry.block.process",
	  .run = run_loop_rt, .arg = &lp_epoll_prc },
};
BENCH_REGISTER(loop_port_scenarios)

/* ---- terminate to exit ---- */

struct term_param {
	int backend; /* enum ferry_backend */
	int spawn;   /* enum ferry_spawn */
	int server;  /* start the fork server for the row */
};

/* Posts "up", then blocks forever in ferry_wait (a thread worker is stopped
 * there cooperatively; a process worker by SIGTERM). */
static int blocked_entry(ferry_worker_ctx *wc)
{
	static uint32_t never;
	static const char up[MSG_BYTES] = "up";
	if (ferry_port_post_bytes(ferry_worker_ctx_port(wc), up, sizeof up, 10LL * 1000000000))
		return 10;
	for (;;)
		ferry_wait(&never, 0, FERRY_FOREVER);
}

struct term_state {
	int up, exited;
	uint64_t t_exit;
	struct ferry_worker_status st;
};

static void term_event(ferry_loop *loop, ferry_worker *w, struct ferry_worker_event *ev, void *arg)
{
	struct term_state *ts = arg;
	if (ev->type == FERRY_WORKER_MESSAGE) {
		ferry_msg_free(ev->msg);
		ts->up = 1;
		ferry_loop_stop(loop);
	} else if (ev->type == FERRY_WORKER_EXIT) {
		ts->t_exit = bench_now();
		ts->exited = 1;
		ts->st = ev->status;
	}
}

/* A guard: no run of the row waits longer than the peer timeout. */
static void term_guard(ferry_loop *loop, uint64_t id, int res, void *arg)
{
	*(int *)arg = 1;
	ferry_loop_stop(loop);
}

static int term_run_until(struct bench_ctx *ctx, ferry_loop *loop, int *flag)
{
	int fired = 0;
	uint64_t gid;
	int r = ferry_loop_timer(loop, ctx->peer_timeout_ns, 0, term_guard, &fired, &gid);
	if (r)
		return bench_ferry_fail(ctx, r, "ferry_loop_timer");
	ferry_loop_ref(loop, gid, 0);
	while (!*flag && !fired) {
		r = ferry_loop_run(loop, FERRY_RUN_ONCE);
		if (r < 0)
			return bench_ferry_fail(ctx, r, "ferry_loop_run");
	}
	if (!fired)
		ferry_loop_cancel(loop, gid);
	return *flag ? 0 : bench_ferry_fail(ctx, -ETIMEDOUT, "the worker's event");
}

static int run_term(struct bench_ctx *ctx, const struct bench_scenario *s,
		    struct bench_samples *out)
{
	const struct term_param *prm = s->arg;
	struct bench_loop lp;
	int r = bench_prepare_start(ctx, out, &lp, NULL);
	if (r)
		return r;
	if (prm->server && (r = bench_fork_server_start(ctx)) != 0)
		return r;
	ferry_loop *loop;
	r = ferry_loop_create(&loop, NULL);
	if (r) {
		if (prm->server)
			ferry_fini();
		return bench_ferry_fail(ctx, r, "ferry_loop_create");
	}
	struct ferry_worker_opts o = {
		.backend = prm->backend,
		.entry = blocked_entry,
		.name = "bench-term",
		.spawn = prm->spawn,
	};
	while (bench_loop_next(ctx, &lp)) {
		ferry_worker *w;
		r = ferry_worker_spawn(&w, &o);
		if (r) {
			r = bench_ferry_fail(ctx, r, "ferry_worker_spawn");
			break;
		}
		struct term_state ts = { 0 };
		struct ferry_loop_worker_watch ww = { 0 };
		r = ferry_loop_worker_start(loop, &ww, w, term_event, &ts);
		if (r) {
			r = bench_ferry_fail(ctx, r, "ferry_loop_worker_start");
			ferry_worker_destroy(w);
			break;
		}
		r = term_run_until(ctx, loop, &ts.up);
		/* Let it reach its futex sleep. */
		struct timespec pause_ts = { 0, 2000000 };
		nanosleep(&pause_ts, NULL);
		uint64_t t0 = bench_now();
		if (r == 0) {
			r = ferry_worker_terminate(w, ctx->peer_timeout_ns);
			if (r)
				r = bench_ferry_fail(ctx, r, "ferry_worker_terminate");
		}
		if (r == 0)
			r = term_run_until(ctx, loop, &ts.exited);
		ferry_loop_worker_stop(loop, &ww);
		ferry_worker_destroy(w);
		if (r)
			break;
		if (!ts.st.terminated) {
			r = bench_failx(ctx, -EPROTO, "the exit does not say terminated");
			break;
		}
		if (lp.measuring)
			bench_samples_add(out, bench_ns(ts.t_exit - t0));
	}
	ferry_loop_destroy(loop);
	if (prm->server)
		ferry_fini();
	return r;
}

/* Floors: a thread asleep in FUTEX_WAIT, woken by a flag and a wake, then
 * joined; a forked child asleep in pause(), SIGTERM, then waitid. */
static _Atomic uint32_t term_word;
static _Atomic uint32_t term_up;

static void *term_floor_thread(void *arg)
{
	atomic_store_explicit(&term_up, 1, memory_order_release);
	while (!atomic_load_explicit(&term_word, memory_order_acquire))
		syscall(SYS_futex, &term_word, FUTEX_WAIT_PRIVATE, 0, NULL, NULL, 0);
	return arg;
}

static int run_term_floor(struct bench_ctx *ctx, const struct bench_scenario *s,
			  struct bench_samples *out)
{
	int process = s->arg != NULL;
	struct bench_loop lp;
	void *page;
	int r = bench_prepare_start(ctx, out, &lp, &page);
	if (r)
		return r;
	_Atomic uint32_t *up = page;
	while (bench_loop_next(ctx, &lp)) {
		atomic_store(up, 0);
		atomic_store(&term_up, 0);
		atomic_store(&term_word, 0);
		pthread_t t;
		pid_t pid = -1;
		if (process) {
			pid = fork();
			if (pid < 0) {
				r = bench_fail(ctx, -errno, "fork");
				break;
			}
			if (pid == 0) {
				atomic_store(up, 1);
				for (;;)
					pause();
			}
		} else if ((r = pthread_create(&t, NULL, term_floor_thread, NULL)) != 0) {
			r = bench_fail(ctx, -r, "pthread_create");
			break;
		}
		struct bench_spin sp = bench_spin_start(ctx);
		while (!atomic_load(process ? up : &term_up) && !bench_spin(&sp))
			;
		struct timespec pause_ts = { 0, 2000000 };
		nanosleep(&pause_ts, NULL);
		uint64_t t0 = bench_now();
		if (process) {
			kill(pid, SIGTERM);
			siginfo_t si;
			while (waitid(P_PID, (id_t)pid, &si, WEXITED) < 0 && errno == EINTR)
				;
		} else {
			atomic_store_explicit(&term_word, 1, memory_order_release);
			syscall(SYS_futex, &term_word, FUTEX_WAKE_PRIVATE, 1, NULL, NULL, 0);
			pthread_join(t, NULL);
		}
		uint64_t t1 = bench_now();
		if (lp.measuring)
			bench_samples_add(out, bench_ns(t1 - t0));
	}
	bench_shared_free(up, 4096);
	return r;
}

#define TERM_GROUP "worker terminate to exit event (blocked in a wait)"

static const struct term_param tp_thr = { FERRY_THREAD, 0, 0 };
static const struct term_param tp_prc = { FERRY_PROCESS, FERRY_SPAWN_FORK, 0 };
static const struct term_param tp_srv = { FERRY_PROCESS, FERRY_SPAWN_SERVER, 1 };

static const struct bench_scenario term_scenarios[] = {
	{ .id = "term.pthread", .group = TERM_GROUP, .order = 250, .name = "futex wake + pthread_join",
	  .backend = "thread", .mode = "block", .run = run_term_floor, .arg = NULL },
	{ .id = "term.fork", .group = TERM_GROUP, .order = 251, .name = "kill + waitid",
	  .backend = "process", .mode = "block", .run = run_term_floor, .arg = "process" },
	{ .id = "term.ferry.thread", .group = TERM_GROUP, .order = 252,
	  .name = "ferry terminate, loop exit", .backend = "thread", .mode = "block",
	  .floor = "term.pthread", .run = run_term, .arg = &tp_thr },
	{ .id = "term.ferry.process", .group = TERM_GROUP, .order = 253,
	  .name = "ferry terminate, loop exit", .backend = "process", .mode = "block",
	  .floor = "term.fork", .run = run_term, .arg = &tp_prc },
	{ .id = "term.ferry.process.server", .group = TERM_GROUP, .order = 254,
	  .name = "ferry terminate, fork server", .backend = "process", .mode = "block",
	  .floor = "term.fork", .run = run_term, .arg = &tp_srv },
};
BENCH_REGISTER(term_scenarios)
