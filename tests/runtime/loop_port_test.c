/* Ports in a loop: both loop backends x both worker backends. */
#include <ferry.h>

#include "util/util.h"

#include <criterion/criterion.h>
#include <errno.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

static struct tu_baseline base;

static void setup(void)
{
	tu_baseline_take(&base);
}

static void teardown(void)
{
	tu_baseline_check(&base);
}

TestSuite(loop_port, .init = setup, .fini = teardown, .timeout = 60);

/* The four runs of scenario @fn(loop backend, worker backend), as tests
 * <suite>::<fn>_{uring,epoll}_{thread,process}. */
#define EACH_BACKEND(suite, fn)                                                      \
	Test(suite, fn##_uring_thread) { fn("uring", FERRY_THREAD); }               \
	Test(suite, fn##_uring_process) { fn("uring", FERRY_PROCESS); }             \
	Test(suite, fn##_epoll_thread) { fn("epoll", FERRY_THREAD); }               \
	Test(suite, fn##_epoll_process) { fn("epoll", FERRY_PROCESS); }

#define N 5000

static int stream(ferry_worker_ctx *ctx)
{
	ferry_port *p = ferry_worker_ctx_port(ctx);
	for (int i = 0; i < N; i++) {
		int rc;
		if (i % 10 == 0) {
			ferry_value *v = ferry_value_int(i);
			rc = ferry_port_post(p, v, NULL, FERRY_FOREVER);
			ferry_value_free(v);
		} else {
			rc = ferry_port_post_bytes(p, &i, sizeof i, FERRY_FOREVER);
		}
		if (rc)
			return 1;
	}
	return 0;
}

struct state {
	int got, in_order, ended, err, ticks;
	uint64_t timer;
};

static void on_msg(ferry_loop *loop, ferry_port *port, ferry_msg *m, int err, void *arg)
{
	struct state *s = arg;
	if (!m) {
		s->ended = 1;
		s->err = err;
		ferry_loop_cancel(loop, s->timer);
		return;
	}
	int64_t v;
	if (ferry_msg_value(m))
		ferry_value_get_int(ferry_msg_value(m), &v);
	else
		v = *(const int *)ferry_msg_data(m);
	if (v != s->got)
		s->in_order = 0;
	s->got++;
	ferry_msg_free(m);
}

static void on_tick(ferry_loop *loop, uint64_t id, int res, void *arg)
{
	((struct state *)arg)->ticks++;
}

static ferry_loop *make_loop(const char *backend)
{
	setenv("FERRY_LOOP", backend, 1);
	ferry_loop *loop;
	int rc = ferry_loop_create(&loop, NULL);
	if (rc == -EPERM || rc == -ENOSYS)
		cr_skip("no %s loop here: %s", backend, ferry_errmsg());
	cr_assert_eq(rc, 0, "%s", ferry_errmsg());
	cr_assert_str_eq(ferry_loop_backend(loop), backend);
	return loop;
}

static void streams_in_order(const char *lb, int wb)
{
	ferry_loop *loop = make_loop(lb);
	struct ferry_worker_opts o = { .backend = wb, .entry = stream };
	ferry_worker *w;
	cr_assert_eq(ferry_worker_spawn(&w, &o), 0, "%s", ferry_errmsg());
	struct state s = { .in_order = 1 };
	cr_assert_eq(ferry_loop_timer(loop, 1000000, 1000000, on_tick, &s, &s.timer), 0);
	struct ferry_loop_port_watch pw = { 0 };
	cr_assert_eq(ferry_loop_port_start(loop, &pw, ferry_worker_port(w), on_msg, &s), 0, "%s",
		     ferry_errmsg());
	cr_assert_geq(ferry_loop_run(loop, FERRY_RUN_DEFAULT), 0, "%s", ferry_errmsg());
	cr_assert_eq(s.ended, 1);
	cr_assert_eq(s.err, -EPIPE);
	cr_assert_eq(s.got, N, "got %d of %d", s.got, N);
	cr_assert(s.in_order);
	struct ferry_worker_status st;
	cr_assert_eq(ferry_worker_join(w, &st, 10LL * 1000000000), 0);
	cr_assert_eq(st.code, 0);
	ferry_worker_destroy(w);
	ferry_loop_destroy(loop);
}

Test(loop_port, uring_thread) { streams_in_order("uring", FERRY_THREAD); }
Test(loop_port, uring_process) { streams_in_order("uring", FERRY_PROCESS); }
Test(loop_port, epoll_thread) { streams_in_order("epoll", FERRY_THREAD); }
Test(loop_port, epoll_process) { streams_in_order("epoll", FERRY_PROCESS); }

static int post_then_hang(ferry_worker_ctx *ctx)
{
	for (int i = 0; i < 3; i++)
		ferry_port_post_bytes(ferry_worker_ctx_port(ctx), &i, sizeof i, FERRY_FOREVER);
	for (;;)
		pause();
	return 0;
}

static void on_msg_kill(ferry_loop *loop, ferry_port *port, ferry_msg *m, int err, void *arg)
{
	struct state *s = arg;
	if (!m) {
		s->ended = 1;
		s->err = err;
		return;
	}
	s->got++;
	ferry_msg_free(m);
	if (s->got == 3) /* all there: now the worker dies without closing */
		kill(s->ticks, SIGKILL);
}

static void dead_peer(const char *lb)
{
	ferry_loop *loop = make_loop(lb);
	struct ferry_worker_opts o = { .backend = FERRY_PROCESS, .entry = post_then_hang };
	ferry_worker *w;
	cr_assert_eq(ferry_worker_spawn(&w, &o), 0);
	struct state s = { .ticks = ferry_worker_pid(w) };
	struct ferry_loop_port_watch pw = { 0 };
	cr_assert_eq(ferry_loop_port_start(loop, &pw, ferry_worker_port(w), on_msg_kill, &s), 0);
	cr_assert_geq(ferry_loop_run(loop, FERRY_RUN_DEFAULT), 0);
	cr_assert_eq(s.got, 3);
	cr_assert_eq(s.err, -EPIPE, "a dead peer ends the watch with -EPIPE, got %d", s.err);
	struct ferry_worker_status st;
	cr_assert_eq(ferry_worker_join(w, &st, 10LL * 1000000000), 0);
	cr_assert_eq(st.signal, SIGKILL);
	ferry_worker_destroy(w);
	ferry_loop_destroy(loop);
}

Test(loop_port, dead_peer_uring) { dead_peer("uring"); }
Test(loop_port, dead_peer_epoll) { dead_peer("epoll"); }

static void on_msg_stop(ferry_loop *loop, ferry_port *port, ferry_msg *m, int err, void *arg)
{
	struct ferry_loop_port_watch *pw = arg;
	ferry_msg_free(m);
	ferry_loop_port_stop(loop, pw);
	ferry_loop_port_stop(loop, pw); /* idempotent */
}

Test(loop_port, stop_from_callback_and_bad_args)
{
	ferry_loop *loop = make_loop("uring");
	ferry_port *a, *b;
	cr_assert_eq(ferry_channel(&a, &b, NULL), 0);
	struct ferry_loop_port_watch pw = { 0 };
	cr_assert_eq(ferry_loop_port_start(loop, &pw, b, on_msg_stop, &pw), 0);
	cr_assert_eq(ferry_loop_port_start(loop, &pw, b, on_msg_stop, &pw), -EINVAL);
	cr_assert_eq(ferry_port_post_bytes(a, "1", 1, 0), 0);
	cr_assert_eq(ferry_port_post_bytes(a, "2", 1, 0), 0);
	cr_assert_geq(ferry_loop_run(loop, FERRY_RUN_DEFAULT), 0);
	ferry_msg *m;
	cr_assert_eq(ferry_port_recv(b, &m, 0), 0, "the second message stays for later");
	ferry_msg_free(m);
	cr_assert_eq(ferry_loop_port_start(NULL, &pw, b, on_msg_stop, NULL), -EINVAL);
	cr_assert_eq(ferry_loop_port_start(loop, NULL, b, on_msg_stop, NULL), -EINVAL);
	cr_assert_eq(ferry_loop_port_start(loop, &pw, NULL, on_msg_stop, NULL), -EINVAL);
	cr_assert_eq(ferry_loop_port_start(loop, &pw, b, NULL, NULL), -EINVAL);
	cr_assert_eq(ferry_loop_port_stop(loop, NULL), -EINVAL);
	ferry_port_destroy(a);
	ferry_port_destroy(b);
	ferry_loop_destroy(loop);
}

/* ---- worker events in a loop: both loops x both worker backends ---- */

#include "ports/port_int.h"

#include <time.h>
#include <unistd.h>

#define T10S (10LL * 1000000000)
#define NMSG 200

TestSuite(loop_worker, .init = setup, .fini = teardown, .timeout = 60);

/* ONLINE, NMSG messages, one that does not decode, an error, exit code 1. */
static int chatty(ferry_worker_ctx *ctx)
{
	ferry_port *p = ferry_worker_ctx_port(ctx);
	for (int i = 0; i < NMSG; i++)
		if (ferry_port_post_bytes(p, &i, sizeof i, FERRY_FOREVER))
			return 2;
	/* Above the parent's max_message: sent, but it cannot decode it. */
	p->max_message = 1 << 20;
	static char big[8192];
	ferry_value *v = ferry_value_bytes(big, sizeof big);
	int rc = ferry_port_post(p, v, NULL, FERRY_FOREVER);
	ferry_value_free(v);
	if (rc)
		return 3;
	int last = NMSG;
	if (ferry_port_post_bytes(p, &last, sizeof last, FERRY_FOREVER))
		return 4;
	ferry_worker_throw(-EDOM, "out of %s", "luck");
	return 5;
}

struct wstate {
	int types[NMSG + 16];
	int n;
	int in_order, next_msg;
	int err, msgerr;
	char text[256];
	struct ferry_worker_status st;
	int exit_err;
	int64_t t_exit;
	ferry_worker *w;
	int64_t term_grace;
	int terminate_rc;
};

static void on_wev(ferry_loop *loop, ferry_worker *w, struct ferry_worker_event *ev, void *arg)
{
	struct wstate *s = arg;
	if (s->n < (int)(sizeof s->types / sizeof s->types[0]))
		s->types[s->n++] = ev->type;
	switch (ev->type) {
	case FERRY_WORKER_ONLINE:
		if (s->term_grace >= 0)
			s->terminate_rc = ferry_worker_terminate(w, s->term_grace);
		break;
	case FERRY_WORKER_MESSAGE: {
		const ferry_msg *m = ev->msg;
		int v = ferry_msg_len(m) == sizeof(int) ? *(const int *)ferry_msg_data(m)
							 : *(const char *)ferry_msg_data(m);
		if (v != s->next_msg)
			s->in_order = 0;
		s->next_msg++;
		ferry_msg_free(ev->msg);
		break;
	}
	case FERRY_WORKER_MESSAGEERROR:
		s->msgerr = ev->err;
		break;
	case FERRY_WORKER_ERROR:
		s->err = ev->err;
		snprintf(s->text, sizeof s->text, "%s", ev->text);
		break;
	case FERRY_WORKER_EXIT:
		s->st = ev->status;
		s->exit_err = ev->err;
		break;
	}
}

static void run_watch(ferry_loop *loop, ferry_worker *w, struct wstate *s)
{
	struct ferry_loop_worker_watch ww = { 0 };
	cr_assert_eq(ferry_loop_worker_start(loop, &ww, w, on_wev, s), 0, "%s", ferry_errmsg());
	cr_assert_eq(ferry_loop_worker_start(loop, &ww, w, on_wev, s), -EINVAL, "already active");
	int rc = ferry_loop_run(loop, FERRY_RUN_DEFAULT);
	cr_assert_geq(rc, 0, "%s", ferry_errmsg());
	cr_assert_eq(ww.active, 0, "EXIT stopped the watch");
	cr_assert_gt(s->n, 0);
	cr_assert_eq(s->types[s->n - 1], FERRY_WORKER_EXIT, "the last event is EXIT");
	cr_assert_eq(ferry_loop_alive(loop), 0, "nothing of the watch is left in the loop");
}

static void all_events(const char *lb, int wb)
{
	ferry_loop *loop = make_loop(lb);
	struct ferry_worker_opts o = {
		.backend = wb,
		.entry = chatty,
		.channel = { .max_message = 4096 },
	};
	ferry_worker *w;
	cr_assert_eq(ferry_worker_spawn(&w, &o), 0, "%s", ferry_errmsg());
	struct wstate s = { .in_order = 1, .term_grace = -1 };
	run_watch(loop, w, &s);
	cr_assert_eq(s.n, 1 + NMSG + 1 + 1 + 1 + 1, "got %d events", s.n);
	cr_assert_eq(s.types[0], FERRY_WORKER_ONLINE);
	for (int i = 1; i <= NMSG; i++)
		cr_assert_eq(s.types[i], FERRY_WORKER_MESSAGE, "event %d", i);
	cr_assert_eq(s.types[NMSG + 1], FERRY_WORKER_MESSAGEERROR);
	cr_assert_eq(s.types[NMSG + 2], FERRY_WORKER_MESSAGE, "a message after the bad one");
	cr_assert_eq(s.types[NMSG + 3], FERRY_WORKER_ERROR);
	cr_assert(s.in_order);
	cr_assert_eq(s.next_msg, NMSG + 1);
	cr_assert_eq(s.msgerr, -EBADMSG);
	cr_assert_eq(s.err, -EDOM);
	cr_assert_str_eq(s.text, "out of luck");
	cr_assert_eq(s.st.code, 1);
	cr_assert_eq(s.st.signal, 0);
	cr_assert_eq(s.exit_err, 0);
	/* The handle agrees afterwards. */
	struct ferry_worker_event ev;
	cr_assert_eq(ferry_worker_next(w, &ev, 0), 0);
	cr_assert_eq(ev.type, FERRY_WORKER_EXIT);
	cr_assert_eq(ev.status.code, 1);
	struct ferry_worker_status st;
	cr_assert_eq(ferry_worker_join(w, &st, T10S), 0);
	cr_assert_eq(st.code, 1);
	ferry_worker_destroy(w);
	ferry_loop_destroy(loop);
}

EACH_BACKEND(loop_worker, all_events)

/* Ends with a code of its own after the parent read a while: exit is seen
 * when it happens (the loop sleeps until then). */
static int slow_exit(ferry_worker_ctx *ctx)
{
	usleep(30 * 1000);
	ferry_port_post_bytes(ferry_worker_ctx_port(ctx), "x", 1, FERRY_FOREVER);
	usleep(30 * 1000);
	return 7;
}

static void exit_code(const char *lb, int wb)
{
	ferry_loop *loop = make_loop(lb);
	struct ferry_worker_opts o = { .backend = wb, .entry = slow_exit };
	ferry_worker *w;
	cr_assert_eq(ferry_worker_spawn(&w, &o), 0, "%s", ferry_errmsg());
	struct wstate s = { .in_order = 1, .term_grace = -1, .next_msg = 'x' };
	run_watch(loop, w, &s);
	cr_assert_eq(s.n, 3);
	cr_assert_eq(s.types[0], FERRY_WORKER_ONLINE);
	cr_assert_eq(s.types[1], FERRY_WORKER_MESSAGE);
	cr_assert_eq(s.st.code, 7);
	cr_assert_eq(s.st.terminated, 0);
	ferry_worker_destroy(w);
	ferry_loop_destroy(loop);
}

EACH_BACKEND(loop_worker, exit_code)

/* Blocked forever in ferry_wait: terminated from the ONLINE callback. */
static int waits_forever(ferry_worker_ctx *ctx)
{
	static uint32_t word;
	ferry_wait(&word, 0, FERRY_FOREVER);
	return 0;
}

static void terminated(const char *lb, int wb)
{
	ferry_loop *loop = make_loop(lb);
	struct ferry_worker_opts o = { .backend = wb, .entry = waits_forever };
	ferry_worker *w;
	cr_assert_eq(ferry_worker_spawn(&w, &o), 0, "%s", ferry_errmsg());
	struct wstate s = { .in_order = 1, .term_grace = T10S };
	run_watch(loop, w, &s);
	cr_assert_eq(s.terminate_rc, 0, "%s", ferry_errmsg());
	cr_assert_eq(s.n, 2);
	cr_assert_eq(s.st.terminated, 1);
	if (wb == FERRY_PROCESS)
		cr_assert_eq(s.st.signal, SIGTERM);
	else
		cr_assert_eq(s.st.code, 1);
	ferry_worker_destroy(w);
	ferry_loop_destroy(loop);
}

EACH_BACKEND(loop_worker, terminated)

/* A process worker killed without closing its port: what it posted, then
 * EXIT with the signal (the pidfd, not the port, tells). */
static int posts_then_dies(ferry_worker_ctx *ctx)
{
	ferry_port *p = ferry_worker_ctx_port(ctx);
	for (int i = 0; i < NMSG; i++)
		ferry_port_post_bytes(p, &i, sizeof i, FERRY_FOREVER);
	raise(SIGKILL);
	return 0;
}

static void killed(const char *lb)
{
	ferry_loop *loop = make_loop(lb);
	struct ferry_worker_opts o = { .backend = FERRY_PROCESS, .entry = posts_then_dies };
	ferry_worker *w;
	cr_assert_eq(ferry_worker_spawn(&w, &o), 0, "%s", ferry_errmsg());
	struct wstate s = { .in_order = 1, .term_grace = -1 };
	run_watch(loop, w, &s);
	cr_assert_eq(s.n, NMSG + 2);
	cr_assert(s.in_order);
	cr_assert_eq(s.st.signal, SIGKILL);
	ferry_worker_destroy(w);
	ferry_loop_destroy(loop);
}

Test(loop_worker, killed_uring) { killed("uring"); }
Test(loop_worker, killed_epoll) { killed("epoll"); }

/* A watch started after the worker ended (and was joined) still delivers
 * everything, EXIT last; stop and restart in the middle loses nothing. */
static void stop_after_first(ferry_loop *loop, ferry_worker *w, struct ferry_worker_event *ev,
			     void *arg)
{
	struct ferry_loop_worker_watch *ww = arg;
	cr_assert_eq(ev->type, FERRY_WORKER_ONLINE);
	cr_assert_eq(ferry_loop_worker_stop(loop, ww), 0);
	cr_assert_eq(ferry_loop_worker_stop(loop, ww), 0, "idempotent");
}

static void late_and_restarted(const char *lb, int wb)
{
	ferry_loop *loop = make_loop(lb);
	struct ferry_worker_opts o = { .backend = wb, .entry = slow_exit };
	ferry_worker *w;
	cr_assert_eq(ferry_worker_spawn(&w, &o), 0, "%s", ferry_errmsg());
	struct ferry_worker_status st;
	cr_assert_eq(ferry_worker_join(w, &st, T10S), 0);
	struct ferry_loop_worker_watch ww = { 0 };
	cr_assert_eq(ferry_loop_worker_start(loop, &ww, w, stop_after_first, &ww), 0);
	cr_assert_geq(ferry_loop_run(loop, FERRY_RUN_DEFAULT), 0);
	cr_assert_eq(ww.active, 0);
	struct wstate s = { .in_order = 1, .term_grace = -1, .next_msg = 'x' };
	run_watch(loop, w, &s);
	cr_assert_eq(s.n, 2, "the message, then EXIT");
	cr_assert_eq(s.types[0], FERRY_WORKER_MESSAGE);
	cr_assert_eq(s.st.code, 7);
	ferry_worker_destroy(w);
	ferry_loop_destroy(loop);
}

EACH_BACKEND(loop_worker, late_and_restarted)

Test(loop_worker, bad_args)
{
	ferry_loop *loop = make_loop("epoll");
	struct ferry_worker_opts o = { .entry = slow_exit };
	ferry_worker *w;
	cr_assert_eq(ferry_worker_spawn(&w, &o), 0, "%s", ferry_errmsg());
	struct ferry_loop_worker_watch ww = { 0 };
	cr_assert_eq(ferry_loop_worker_start(NULL, &ww, w, on_wev, NULL), -EINVAL);
	cr_assert_eq(ferry_loop_worker_start(loop, NULL, w, on_wev, NULL), -EINVAL);
	cr_assert_eq(ferry_loop_worker_start(loop, &ww, NULL, on_wev, NULL), -EINVAL);
	cr_assert_eq(ferry_loop_worker_start(loop, &ww, w, NULL, NULL), -EINVAL);
	cr_assert_eq(ferry_loop_worker_stop(NULL, &ww), -EINVAL);
	cr_assert_eq(ferry_loop_worker_stop(loop, NULL), -EINVAL);
	cr_assert_eq(ferry_loop_worker_stop(loop, &ww), 0, "stopping an idle watch");
	cr_assert_eq(ferry_worker_join(w, NULL, T10S), 0);
	ferry_worker_destroy(w);
	ferry_loop_destroy(loop);
}

/* A thread worker blocked forever in its own loop is stopped by terminate
 * at once (the loop also waits on its stop flag), on both loops. */
static void never_cb(ferry_loop *loop, uint64_t id, int res, void *arg)
{
}

static int blocked_in_loop(ferry_worker_ctx *ctx)
{
	ferry_loop *loop;
	if (ferry_loop_create(&loop, NULL))
		return 2;
	if (ferry_loop_timer(loop, 3600LL * 1000000000, 0, never_cb, NULL, NULL))
		return 3;
	ferry_port_post_bytes(ferry_worker_ctx_port(ctx), "in", 2, FERRY_FOREVER);
	ferry_loop_run(loop, FERRY_RUN_DEFAULT);
	return 4; /* never: the timer keeps it for an hour */
}

static void terminate_in_loop(const char *lb, int wb)
{
	setenv("FERRY_LOOP", lb, 1);
	ferry_loop *probe = make_loop(lb); /* skips without io_uring */
	ferry_loop_destroy(probe);
	struct ferry_worker_opts o = { .backend = wb, .entry = blocked_in_loop };
	ferry_worker *w;
	cr_assert_eq(ferry_worker_spawn(&w, &o), 0, "%s", ferry_errmsg());
	ferry_msg *m;
	cr_assert_eq(ferry_port_recv(ferry_worker_port(w), &m, T10S), 0, "%s", ferry_errmsg());
	ferry_msg_free(m);
	usleep(20 * 1000); /* let it block in the loop */
	int64_t t0 = tu_now_ns();
	cr_assert_eq(ferry_worker_terminate(w, T10S), 0, "%s", ferry_errmsg());
	int64_t took = tu_now_ns() - t0;
	cr_expect_lt(took, 5LL * 1000000000, "terminate took %lld ns", (long long)took);
	struct ferry_worker_status st;
	cr_assert_eq(ferry_worker_join(w, &st, 0), 0);
	cr_assert_eq(st.terminated, 1);
	if (wb == FERRY_THREAD)
		cr_assert_eq(st.code, 1);
	ferry_worker_destroy(w);
}

EACH_BACKEND(loop_worker, terminate_in_loop)
