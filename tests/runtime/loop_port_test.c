/* Ports in a loop: both loop backends x both worker backends. */
#include <ferry.h>

#include "util/util.h"

#include <criterion/criterion.h>
#include <errno.h>
#include <signal.h>
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
