/* Workers: every behaviour on both backends, crashes on the process one. */
#include <ferry.h>

#include "util/util.h"

#include <criterion/criterion.h>
#include <errno.h>
#include <signal.h>
#include <stdatomic.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>
#include <pthread.h>
#include <sys/resource.h>
#include <sys/wait.h>

static struct tu_baseline base;

static void setup(void)
{
	tu_baseline_take(&base);
}

static void teardown(void)
{
	tu_baseline_check(&base);
}

TestSuite(worker, .init = setup, .fini = teardown, .timeout = 60);

static const char *bname(int backend)
{
	return backend == FERRY_PROCESS ? "process" : "thread";
}

static ferry_worker *spawn(int backend, ferry_worker_fn fn, const void *data, size_t len, void *arg)
{
	struct ferry_worker_opts o = {
		.backend = backend, .entry = fn, .data = data, .data_len = len, .arg = arg,
		.name = "test-worker",
	};
	ferry_worker *w = NULL;
	int rc = ferry_worker_spawn(&w, &o);
	cr_assert_eq(rc, 0, "spawn %s: %s", bname(backend), ferry_errmsg());
	cr_assert_not_null(w);
	cr_assert_eq(ferry_worker_backend(w), backend);
	return w;
}

static void join_expect(ferry_worker *w, int code, int sig)
{
	struct ferry_worker_status st = { -1, -1, -1 };
	int rc = ferry_worker_join(w, &st, 20LL * 1000000000);
	cr_assert_eq(rc, 0, "join: %s", ferry_errmsg());
	cr_assert_eq(st.signal, sig, "signal %d, expected %d", st.signal, sig);
	if (!sig)
		cr_assert_eq(st.code, code, "exit code %d, expected %d", st.code, code);
	/* A second join gives the same answer. */
	struct ferry_worker_status again;
	cr_assert_eq(ferry_worker_join(w, &again, 0), 0);
	cr_assert_eq(again.code, st.code);
	cr_assert_eq(again.signal, st.signal);
}

/* Echo until an empty message or the parent closes. */
static int echo(ferry_worker_ctx *ctx)
{
	ferry_port *p = ferry_worker_ctx_port(ctx);
	for (;;) {
		ferry_msg *m;
		int rc = ferry_port_recv(p, &m, FERRY_FOREVER);
		if (rc == -EPIPE)
			return 0;
		if (rc)
			return 10;
		size_t len = ferry_msg_len(m);
		if (len == 0) {
			ferry_msg_free(m);
			return 0;
		}
		rc = ferry_port_post_bytes(p, ferry_msg_data(m), len, FERRY_FOREVER);
		ferry_msg_free(m);
		if (rc)
			return 11;
	}
}

static void round_trips(int backend, int mode)
{
	ferry_worker *w = spawn(backend, echo, NULL, 0, NULL);
	ferry_port *p = ferry_worker_port(w);
	cr_assert_eq(ferry_port_set_wait(p, mode, 0), 0);
	char buf[64];
	for (int i = 0; i < 2000; i++) {
		memset(buf, i & 0xff, sizeof buf);
		cr_assert_eq(ferry_port_post_bytes(p, buf, sizeof buf, FERRY_FOREVER), 0);
		ferry_msg *m;
		cr_assert_eq(ferry_port_recv(p, &m, 10LL * 1000000000), 0, "%s", ferry_errmsg());
		cr_assert_eq(ferry_msg_len(m), sizeof buf);
		cr_assert_eq(memcmp(ferry_msg_data(m), buf, sizeof buf), 0);
		ferry_msg_free(m);
	}
	cr_assert_eq(ferry_port_post_bytes(p, NULL, 0, FERRY_FOREVER), 0);
	join_expect(w, 0, 0);
	ferry_worker_destroy(w);
}

Test(worker, echo_thread_adaptive) { round_trips(FERRY_THREAD, FERRY_WAIT_ADAPTIVE); }
Test(worker, echo_thread_block) { round_trips(FERRY_THREAD, FERRY_WAIT_BLOCK); }
Test(worker, echo_thread_spin) { round_trips(FERRY_THREAD, FERRY_WAIT_SPIN); }
Test(worker, echo_process_adaptive) { round_trips(FERRY_PROCESS, FERRY_WAIT_ADAPTIVE); }
Test(worker, echo_process_block) { round_trips(FERRY_PROCESS, FERRY_WAIT_BLOCK); }
Test(worker, echo_process_spin) { round_trips(FERRY_PROCESS, FERRY_WAIT_SPIN); }

/* Posts its data back, its name, whether it is main, then returns 7. */
static int report(ferry_worker_ctx *ctx)
{
	ferry_port *p = ferry_worker_ctx_port(ctx);
	size_t len;
	const void *d = ferry_worker_ctx_data(ctx, &len);
	ferry_port_post_bytes(p, d, len, FERRY_FOREVER);
	const char *name = ferry_worker_ctx_name(ctx);
	ferry_port_post_bytes(p, name, strlen(name), FERRY_FOREVER);
	int main_flag = ferry_is_main();
	ferry_port_post_bytes(p, &main_flag, sizeof main_flag, FERRY_FOREVER);
	int backend = ferry_worker_ctx_backend(ctx);
	ferry_port_post_bytes(p, &backend, sizeof backend, FERRY_FOREVER);
	return 7;
}

static void expect(ferry_port *p, const void *data, size_t len)
{
	ferry_msg *m;
	cr_assert_eq(ferry_port_recv(p, &m, 10LL * 1000000000), 0, "%s", ferry_errmsg());
	cr_assert_eq(ferry_msg_len(m), len);
	cr_assert_eq(memcmp(ferry_msg_data(m), data, len), 0);
	ferry_msg_free(m);
}

static void data_name_main_and_code(int backend)
{
	char data[300];
	for (size_t i = 0; i < sizeof data; i++)
		data[i] = (char)i;
	ferry_worker *w = spawn(backend, report, data, sizeof data, NULL);
	memset(data, 0, sizeof data); /* the worker has its own copy */
	char want[300];
	for (size_t i = 0; i < sizeof want; i++)
		want[i] = (char)i;
	ferry_port *p = ferry_worker_port(w);
	expect(p, want, sizeof want);
	expect(p, "test-worker", strlen("test-worker"));
	int zero = 0;
	expect(p, &zero, sizeof zero);
	expect(p, &backend, sizeof backend);
	/* Everything posted before the exit arrived; then the channel is closed. */
	ferry_msg *m;
	cr_assert_eq(ferry_port_recv(p, &m, 10LL * 1000000000), -EPIPE);
	join_expect(w, 7, 0);
	cr_assert_eq(ferry_is_main(), 1);
	ferry_worker_destroy(w);
}

Test(worker, data_name_main_and_code_thread) { data_name_main_and_code(FERRY_THREAD); }
Test(worker, data_name_main_and_code_process) { data_name_main_and_code(FERRY_PROCESS); }

static int no_data(ferry_worker_ctx *ctx)
{
	size_t len = 99;
	const void *d = ferry_worker_ctx_data(ctx, &len);
	return d == NULL && len == 0 && ferry_worker_ctx_arg(ctx) == (void *)0x1234 ? 0 : 1;
}

Test(worker, no_data_and_arg_thread)
{
	ferry_worker *w = spawn(FERRY_THREAD, no_data, NULL, 0, (void *)0x1234);
	join_expect(w, 0, 0);
	ferry_worker_destroy(w);
}

Test(worker, no_data_and_arg_process)
{
	ferry_worker *w = spawn(FERRY_PROCESS, no_data, NULL, 0, (void *)0x1234);
	join_expect(w, 0, 0);
	ferry_worker_destroy(w);
}

/* Posts two messages, then dies the way the parent asked in the data. */
static int die(ferry_worker_ctx *ctx)
{
	ferry_port *p = ferry_worker_ctx_port(ctx);
	const int *how = ferry_worker_ctx_data(ctx, NULL);
	ferry_port_post_bytes(p, "one", 3, FERRY_FOREVER);
	ferry_port_post_bytes(p, "two", 3, FERRY_FOREVER);
	switch (*how) {
	case 1:
		raise(SIGSEGV);
		break;
	case 2:
		abort();
	case 3:
		_exit(3);
	case 4:
		raise(SIGKILL);
		break;
	}
	return 99;
}

static void crash(int how, int code, int sig, int mode)
{
	ferry_worker *w = spawn(FERRY_PROCESS, die, &how, sizeof how, NULL);
	ferry_port *p = ferry_worker_port(w);
	ferry_port_set_wait(p, mode, 0);
	expect(p, "one", 3);
	expect(p, "two", 3);
	ferry_msg *m;
	/* Blocked forever: a dead peer must still be reported, not waited on. */
	int rc = ferry_port_recv(p, &m, FERRY_FOREVER);
	cr_assert_eq(rc, -EPIPE, "recv after the worker died: %d %s", rc, ferry_errmsg());
	cr_assert_eq(ferry_port_post_bytes(p, "x", 1, FERRY_FOREVER), -EPIPE);
	join_expect(w, code, sig);
	ferry_worker_destroy(w);
}

Test(worker, process_segfault_is_reported) { crash(1, 0, SIGSEGV, FERRY_WAIT_ADAPTIVE); }
Test(worker, process_abort_is_reported) { crash(2, 0, SIGABRT, FERRY_WAIT_BLOCK); }
Test(worker, process_exit_midway_is_reported) { crash(3, 3, 0, FERRY_WAIT_SPIN); }
Test(worker, process_sigkill_is_reported) { crash(4, 0, SIGKILL, FERRY_WAIT_BLOCK); }

static int wait_for_go(ferry_worker_ctx *ctx)
{
	ferry_msg *m;
	int rc = ferry_port_recv(ferry_worker_ctx_port(ctx), &m, FERRY_FOREVER);
	ferry_msg_free(m);
	return rc == 0 ? 5 : 6;
}

static void join_times_out(int backend)
{
	ferry_worker *w = spawn(backend, wait_for_go, NULL, 0, NULL);
	struct ferry_worker_status st;
	cr_assert_eq(ferry_worker_join(w, &st, 0), -EAGAIN);
	struct timespec t0, t1;
	clock_gettime(CLOCK_MONOTONIC, &t0);
	cr_assert_eq(ferry_worker_join(w, &st, 20 * 1000000), -ETIMEDOUT);
	clock_gettime(CLOCK_MONOTONIC, &t1);
	int64_t ns = (t1.tv_sec - t0.tv_sec) * 1000000000LL + (t1.tv_nsec - t0.tv_nsec);
	cr_assert_geq(ns, 20 * 1000000, "join returned before its timeout");
	cr_assert(strstr(ferry_errmsg(), "still running"), "%s", ferry_errmsg());
	cr_assert_eq(ferry_port_post_bytes(ferry_worker_port(w), "go", 2, 0), 0);
	join_expect(w, 5, 0);
	ferry_worker_destroy(w);
}

Test(worker, join_times_out_thread) { join_times_out(FERRY_THREAD); }
Test(worker, join_times_out_process) { join_times_out(FERRY_PROCESS); }

static void destroy_running(int backend)
{
	ferry_worker *w = spawn(backend, wait_for_go, NULL, 0, NULL);
	/* The worker is blocked in recv; destroying the handle closes its port
	 * (thread: it returns 6 and ends) or kills it (process). */
	ferry_worker_destroy(w);
	/* Give a detached thread worker time to finish and release its port. */
	tu_baseline_settle(&base, 2000);
}

Test(worker, destroy_running_thread) { destroy_running(FERRY_THREAD); }
Test(worker, destroy_running_process) { destroy_running(FERRY_PROCESS); }

static int parent_closes(ferry_worker_ctx *ctx)
{
	ferry_msg *m;
	int rc = ferry_port_recv(ferry_worker_ctx_port(ctx), &m, FERRY_FOREVER);
	return rc == -EPIPE ? 42 : 1;
}

static void worker_sees_parent_close(int backend)
{
	ferry_worker *w = spawn(backend, parent_closes, NULL, 0, NULL);
	ferry_port_close(ferry_worker_port(w));
	join_expect(w, 42, 0);
	ferry_worker_destroy(w);
}

Test(worker, sees_parent_close_thread) { worker_sees_parent_close(FERRY_THREAD); }
Test(worker, sees_parent_close_process) { worker_sees_parent_close(FERRY_PROCESS); }

static int noop(ferry_worker_ctx *ctx)
{
	return 0;
}

Test(worker, bad_arguments)
{
	ferry_worker *w = (ferry_worker *)1;
	struct ferry_worker_opts o = { .entry = noop };
	cr_assert_eq(ferry_worker_spawn(NULL, &o), -EINVAL);
	cr_assert(strstr(ferry_errmsg(), "out is NULL"), "%s", ferry_errmsg());
	cr_assert_eq(ferry_worker_spawn(&w, NULL), -EINVAL);
	cr_assert_null(w);
	cr_assert(strstr(ferry_errmsg(), "opts is NULL"), "%s", ferry_errmsg());
	o.entry = NULL;
	cr_assert_eq(ferry_worker_spawn(&w, &o), -EINVAL);
	cr_assert(strstr(ferry_errmsg(), "entry"), "%s", ferry_errmsg());
	o.entry = noop;
	o.backend = 5;
	cr_assert_eq(ferry_worker_spawn(&w, &o), -EINVAL);
	cr_assert(strstr(ferry_errmsg(), "backend"), "%s", ferry_errmsg());
	o.backend = -1;
	cr_assert_eq(ferry_worker_spawn(&w, &o), -EINVAL);
	o.backend = FERRY_PROCESS;
	o.data_len = 10;
	cr_assert_eq(ferry_worker_spawn(&w, &o), -EINVAL);
	cr_assert(strstr(ferry_errmsg(), "data is NULL"), "%s", ferry_errmsg());
	o.data = "x";
	o.data_len = (size_t)-1;
	cr_assert_eq(ferry_worker_spawn(&w, &o), -EINVAL);
	cr_assert(strstr(ferry_errmsg(), "data_len"), "%s", ferry_errmsg());
	o.data_len = 1;
	o.channel.ring_bytes = 3;
	cr_assert_eq(ferry_worker_spawn(&w, &o), -EINVAL);
	cr_assert(strstr(ferry_errmsg(), "ring_bytes"), "%s", ferry_errmsg());
	cr_assert_null(w);

	struct ferry_worker_status st;
	cr_assert_eq(ferry_worker_join(NULL, &st, 0), -EINVAL);
	cr_assert_null(ferry_worker_port(NULL));
	cr_assert_lt(ferry_worker_backend(NULL), 0);
	cr_assert_lt(ferry_worker_pid(NULL), 0);
	cr_assert_null(ferry_worker_ctx_port(NULL));
	ferry_worker_destroy(NULL);
}

static void many_workers(int backend)
{
	enum { N = 16 };
	ferry_worker *ws[N];
	for (int i = 0; i < N; i++)
		ws[i] = spawn(backend, echo, NULL, 0, NULL);
	for (int r = 0; r < 20; r++)
		for (int i = 0; i < N; i++)
			cr_assert_eq(ferry_port_post_bytes(ferry_worker_port(ws[i]), &r, sizeof r, FERRY_FOREVER), 0);
	for (int r = 0; r < 20; r++)
		for (int i = 0; i < N; i++)
			expect(ferry_worker_port(ws[i]), &r, sizeof r);
	for (int i = 0; i < N; i++) {
		ferry_port_close(ferry_worker_port(ws[i]));
		join_expect(ws[i], 0, 0);
		ferry_worker_destroy(ws[i]);
	}
}

Test(worker, many_at_once_thread) { many_workers(FERRY_THREAD); }
Test(worker, many_at_once_process) { many_workers(FERRY_PROCESS); }

/* ---- lifecycle: events, exit, throw, terminate, workerData, limits ---- */

#define T10S (10LL * 1000000000)

static int post_three(ferry_worker_ctx *ctx)
{
	ferry_port *p = ferry_worker_ctx_port(ctx);
	for (int i = 0; i < 3; i++)
		ferry_port_post_bytes(p, &i, sizeof i, FERRY_FOREVER);
	return 4;
}

static void next_ok(ferry_worker *w, struct ferry_worker_event *ev, int type)
{
	int rc = ferry_worker_next(w, ev, T10S);
	cr_assert_eq(rc, 0, "next: %s", ferry_errmsg());
	cr_assert_eq(ev->type, type, "event %d, expected %d", ev->type, type);
}

static void events_in_order(int backend)
{
	ferry_worker *w = spawn(backend, post_three, NULL, 0, NULL);
	struct ferry_worker_event ev;
	next_ok(w, &ev, FERRY_WORKER_ONLINE);
	cr_assert_eq(ferry_worker_online(w), 1);
	for (int i = 0; i < 3; i++) {
		next_ok(w, &ev, FERRY_WORKER_MESSAGE);
		cr_assert_eq(*(const int *)ferry_msg_data(ev.msg), i);
		ferry_msg_free(ev.msg);
	}
	next_ok(w, &ev, FERRY_WORKER_EXIT);
	cr_assert_eq(ev.status.code, 4);
	cr_assert_eq(ev.status.terminated, 0);
	next_ok(w, &ev, FERRY_WORKER_EXIT); /* and again */
	ferry_worker_destroy(w);
}

Test(worker, events_in_order_thread) { events_in_order(FERRY_THREAD); }
Test(worker, events_in_order_process) { events_in_order(FERRY_PROCESS); }

static void deep_exit(int depth)
{
	if (depth == 0) {
		ferry_worker_exit(5);
		return; /* only outside a worker */
	}
	deep_exit(depth - 1);
}

static int exits_midway(ferry_worker_ctx *ctx)
{
	ferry_port_post_bytes(ferry_worker_ctx_port(ctx), "before", 6, FERRY_FOREVER);
	deep_exit(10);
	ferry_port_post_bytes(ferry_worker_ctx_port(ctx), "after", 5, FERRY_FOREVER);
	return 0;
}

static void exit_ends_only_the_worker(int backend)
{
	ferry_worker *w = spawn(backend, exits_midway, NULL, 0, NULL);
	struct ferry_worker_event ev;
	next_ok(w, &ev, FERRY_WORKER_ONLINE);
	next_ok(w, &ev, FERRY_WORKER_MESSAGE);
	cr_assert_eq(ferry_msg_len(ev.msg), 6);
	ferry_msg_free(ev.msg);
	next_ok(w, &ev, FERRY_WORKER_EXIT);
	cr_assert_eq(ev.status.code, 5);
	cr_assert_eq(ev.status.signal, 0);
	ferry_worker_destroy(w);
	cr_assert_eq(ferry_is_main(), 1, "the parent goes on");
}

Test(worker, exit_ends_only_the_worker_thread) { exit_ends_only_the_worker(FERRY_THREAD); }
Test(worker, exit_ends_only_the_worker_process) { exit_ends_only_the_worker(FERRY_PROCESS); }

static int throws(ferry_worker_ctx *ctx)
{
	ferry_port_post_bytes(ferry_worker_ctx_port(ctx), "hi", 2, FERRY_FOREVER);
	ferry_worker_throw(-EDOM, "bad input %d", 42);
	return 0;
}

static void throw_gives_error_then_exit(int backend)
{
	ferry_worker *w = spawn(backend, throws, NULL, 0, NULL);
	struct ferry_worker_event ev;
	next_ok(w, &ev, FERRY_WORKER_ONLINE);
	next_ok(w, &ev, FERRY_WORKER_MESSAGE);
	ferry_msg_free(ev.msg);
	next_ok(w, &ev, FERRY_WORKER_ERROR);
	cr_assert_eq(ev.err, -EDOM);
	cr_assert_str_eq(ev.text, "bad input 42");
	next_ok(w, &ev, FERRY_WORKER_EXIT);
	cr_assert_eq(ev.status.code, 1);
	ferry_worker_destroy(w);
}

Test(worker, throw_gives_error_then_exit_thread) { throw_gives_error_then_exit(FERRY_THREAD); }
Test(worker, throw_gives_error_then_exit_process) { throw_gives_error_then_exit(FERRY_PROCESS); }

Test(worker, exit_and_throw_outside_a_worker)
{
	cr_assert_eq(ferry_worker_exit(3), -EINVAL);
	cr_assert(strstr(ferry_errmsg(), "not called inside a worker"), "%s", ferry_errmsg());
	cr_assert_eq(ferry_worker_throw(-EIO, "x"), -EINVAL);
}

static int blocks_in_recv(ferry_worker_ctx *ctx)
{
	ferry_msg *m;
	ferry_port_post_bytes(ferry_worker_ctx_port(ctx), "ready", 5, FERRY_FOREVER);
	ferry_port_recv(ferry_worker_ctx_port(ctx), &m, FERRY_FOREVER);
	return 0;
}

static int blocks_in_wait(ferry_worker_ctx *ctx)
{
	uint32_t word = 0;
	ferry_port_post_bytes(ferry_worker_ctx_port(ctx), "ready", 5, FERRY_FOREVER);
	ferry_wait(&word, 0, FERRY_FOREVER); /* nobody will ever notify */
	return 0;
}

static int ignores_sigterm(ferry_worker_ctx *ctx)
{
	signal(SIGTERM, SIG_IGN);
	return blocks_in_recv(ctx);
}

static void terminate_blocked(int backend, ferry_worker_fn fn, int want_signal)
{
	ferry_worker *w = spawn(backend, fn, NULL, 0, NULL);
	expect(ferry_worker_port(w), "ready", 5);
	cr_assert_eq(ferry_worker_terminate(w, 200 * 1000000), 0, "%s", ferry_errmsg());
	struct ferry_worker_status st;
	cr_assert_eq(ferry_worker_join(w, &st, 0), 0);
	cr_assert_eq(st.terminated, 1);
	cr_assert_eq(st.signal, want_signal);
	if (!want_signal)
		cr_assert_eq(st.code, 1);
	/* Terminating again is harmless. */
	cr_assert_eq(ferry_worker_terminate(w, 0), 0);
	ferry_worker_destroy(w);
}

Test(worker, terminate_thread_blocked_in_recv) { terminate_blocked(FERRY_THREAD, blocks_in_recv, 0); }
Test(worker, terminate_thread_blocked_in_wait) { terminate_blocked(FERRY_THREAD, blocks_in_wait, 0); }
Test(worker, terminate_process_blocked_in_recv) { terminate_blocked(FERRY_PROCESS, blocks_in_recv, SIGTERM); }
Test(worker, terminate_process_blocked_in_wait) { terminate_blocked(FERRY_PROCESS, blocks_in_wait, SIGTERM); }
Test(worker, terminate_process_ignoring_sigterm_is_killed)
{
	terminate_blocked(FERRY_PROCESS, ignores_sigterm, SIGKILL);
}

static void terminate_exited(int backend)
{
	ferry_worker *w = spawn(backend, noop, NULL, 0, NULL);
	struct ferry_worker_status st;
	cr_assert_eq(ferry_worker_join(w, &st, T10S), 0);
	cr_assert_eq(ferry_worker_terminate(w, 0), 0);
	cr_assert_eq(ferry_worker_join(w, &st, 0), 0);
	cr_assert_eq(st.terminated, 0, "it had exited on its own");
	cr_assert_eq(ferry_worker_terminate(NULL, 0), -EINVAL);
	cr_assert_eq(ferry_worker_terminate(w, -1), -EINVAL);
	ferry_worker_destroy(w);
}

Test(worker, terminate_exited_thread_is_harmless) { terminate_exited(FERRY_THREAD); }
Test(worker, terminate_exited_process_is_harmless) { terminate_exited(FERRY_PROCESS); }

/* workerData: echoes its value back, with its buffer transferred home. */
static int data_echo(ferry_worker_ctx *ctx)
{
	const ferry_value *v = ferry_worker_ctx_value(ctx);
	if (!v)
		return 1;
	enum ferry_value_kind k;
	ferry_buf *b = ferry_value_get_handle(ferry_value_map_get(v, "buf"), &k);
	if (!b || k != FERRY_VALUE_BUF)
		return 2;
	struct ferry_xfer x = { .bufs = &b, .nbufs = 1 };
	return ferry_port_post(ferry_worker_ctx_port(ctx), v, &x, FERRY_FOREVER) ? 3 : 0;
}

static void worker_data_value(int backend)
{
	ferry_buf *b;
	cr_assert_eq(ferry_buf_create(&b, 100000, 0), 0);
	memset(ferry_buf_data(b), 0x5a, 100000);
	ferry_value *v = ferry_value_map();
	ferry_value_map_set(v, "name", ferry_value_str("data"));
	ferry_value_map_set(v, "buf", ferry_value_handle(FERRY_VALUE_BUF, b));
	struct ferry_xfer x = { .bufs = &b, .nbufs = 1 };
	struct ferry_worker_opts o = { .backend = backend, .entry = data_echo, .value = v, .xfer = &x };
	ferry_worker *w;
	cr_assert_eq(ferry_worker_spawn(&w, &o), 0, "%s", ferry_errmsg());
	cr_assert_eq(ferry_buf_is_detached(b), 1, "transferred into the worker");
	struct ferry_worker_event ev;
	next_ok(w, &ev, FERRY_WORKER_ONLINE);
	next_ok(w, &ev, FERRY_WORKER_MESSAGE);
	const ferry_value *got = ferry_msg_value(ev.msg);
	cr_assert_str_eq(ferry_value_get_str(ferry_value_map_get(got, "name"), NULL), "data");
	ferry_buf *back = ferry_value_get_handle(ferry_value_map_get(got, "buf"), NULL);
	cr_assert_eq(ferry_buf_len(back), 100000);
	cr_assert_eq(((unsigned char *)ferry_buf_data(back))[99999], 0x5a);
	ferry_msg_free(ev.msg);
	next_ok(w, &ev, FERRY_WORKER_EXIT);
	cr_assert_eq(ev.status.code, 0);
	ferry_worker_destroy(w);
	ferry_value_free(v);
	ferry_buf_free(b);
}

Test(worker, worker_data_value_thread) { worker_data_value(FERRY_THREAD); }
Test(worker, worker_data_value_process) { worker_data_value(FERRY_PROCESS); }

static void uncloneable_data_starts_nothing(int backend)
{
	ferry_port *a, *b;
	cr_assert_eq(ferry_channel(&a, &b, NULL), 0);
	ferry_buf *buf;
	cr_assert_eq(ferry_buf_create(&buf, 10, 0), 0);
	ferry_value *v = ferry_value_array();
	ferry_value_array_push(v, ferry_value_handle(FERRY_VALUE_PORT, a)); /* not in xfer */
	ferry_value_array_push(v, ferry_value_handle(FERRY_VALUE_BUF, buf));
	ferry_buf *list[] = { buf };
	struct ferry_xfer x = { .bufs = list, .nbufs = 1 };
	struct ferry_worker_opts o = { .backend = backend, .entry = noop, .value = v, .xfer = &x };
	ferry_worker *w = (ferry_worker *)1;
	int fds = tu_count_fds();
	cr_assert_eq(ferry_worker_spawn(&w, &o), -EINVAL);
	cr_assert(strstr(ferry_errmsg(), "not in the transfer list"), "%s", ferry_errmsg());
	cr_assert_null(w);
	cr_assert_eq(tu_count_fds(), fds, "nothing was left behind");
	cr_assert_eq(ferry_buf_is_detached(buf), 0, "nothing moved");
	o.xfer = NULL;
	o.value = NULL;
	o.xfer = &x;
	cr_assert_eq(ferry_worker_spawn(&w, &o), -EINVAL, "xfer without value");
	ferry_value_free(v);
	ferry_buf_free(buf);
	ferry_port_destroy(a);
	ferry_port_destroy(b);
}

Test(worker, uncloneable_data_starts_nothing_thread) { uncloneable_data_starts_nothing(FERRY_THREAD); }
Test(worker, uncloneable_data_starts_nothing_process) { uncloneable_data_starts_nothing(FERRY_PROCESS); }

static int limit_result(const struct ferry_worker_opts *o)
{
	ferry_worker *w;
	cr_assert_eq(ferry_worker_spawn(&w, o), 0, "%s", ferry_errmsg());
	ferry_msg *m;
	cr_assert_eq(ferry_port_recv(ferry_worker_port(w), &m, T10S), 0, "%s", ferry_errmsg());
	int r = *(const int *)ferry_msg_data(m);
	ferry_msg_free(m);
	join_expect(w, 0, 0);
	ferry_worker_destroy(w);
	return r;
}

Test(worker, process_open_files_limit_applies)
{
	struct ferry_worker_opts o = { .backend = FERRY_PROCESS, .entry = tu_entry_count_open_files,
				       .max_open_files = 32 };
	int opened = limit_result(&o);
	cr_assert_lt(opened, 32, "RLIMIT_NOFILE not applied: %d dups", opened);
	struct rlimit rl;
	getrlimit(RLIMIT_NOFILE, &rl);
	cr_assert_gt(rl.rlim_cur, 32, "the parent's limit is untouched");
}

#if defined(__SANITIZE_ADDRESS__) || defined(__SANITIZE_THREAD__)
#define UNDER_SANITIZER 1
#else
#define UNDER_SANITIZER 0
#endif

Test(worker, process_address_space_limit_applies)
{
	if (UNDER_SANITIZER)
		cr_skip("sanitizers reserve terabytes of shadow memory: no RLIMIT_AS under them");
	struct ferry_worker_opts o = { .backend = FERRY_PROCESS, .entry = tu_entry_try_big_malloc,
				       .max_address_space = (uint64_t)512 << 20 };
	cr_assert_eq(limit_result(&o), 0, "RLIMIT_AS not applied: a 1 GiB malloc worked");
	o.max_address_space = 0;
	cr_assert_eq(limit_result(&o), 1, "without the limit the malloc works");
}

static int report_stack(ferry_worker_ctx *ctx)
{
	pthread_attr_t a;
	size_t size = 0;
	if (pthread_getattr_np(pthread_self(), &a) == 0) {
		pthread_attr_getstacksize(&a, &size);
		pthread_attr_destroy(&a);
	}
	ferry_port_post_bytes(ferry_worker_ctx_port(ctx), &size, sizeof size, FERRY_FOREVER);
	return 0;
}

Test(worker, thread_stack_size_applies)
{
	struct ferry_worker_opts o = { .backend = FERRY_THREAD, .entry = report_stack,
				       .stack_size = 4u << 20 };
	ferry_worker *w;
	cr_assert_eq(ferry_worker_spawn(&w, &o), 0, "%s", ferry_errmsg());
	ferry_msg *m;
	cr_assert_eq(ferry_port_recv(ferry_worker_port(w), &m, T10S), 0);
	size_t size = *(const size_t *)ferry_msg_data(m);
	ferry_msg_free(m);
	cr_assert_geq(size, 4u << 20);
	cr_assert_lt(size, 5u << 20);
	join_expect(w, 0, 0);
	ferry_worker_destroy(w);
	o.stack_size = 100;
	cr_assert_eq(ferry_worker_spawn(&w, &o), -EINVAL);
	cr_assert(strstr(ferry_errmsg(), "stack_size"), "%s", ferry_errmsg());
	o.stack_size = 0;
	o.max_open_files = 10;
	cr_assert_eq(ferry_worker_spawn(&w, &o), -EINVAL, "process-only limits on a thread");
}

/* Nested: a worker of each backend spawns one of each backend. */
static int spawns_both(ferry_worker_ctx *ctx)
{
	for (int b = FERRY_THREAD; b <= FERRY_PROCESS; b++) {
		struct ferry_worker_opts o = { .backend = b, .entry = post_three };
		ferry_worker *w;
		if (ferry_worker_spawn(&w, &o))
			return 1;
		struct ferry_worker_event ev;
		int msgs = 0;
		for (;;) {
			if (ferry_worker_next(w, &ev, T10S))
				return 2;
			if (ev.type == FERRY_WORKER_MESSAGE) {
				msgs++;
				ferry_msg_free(ev.msg);
			}
			if (ev.type == FERRY_WORKER_EXIT)
				break;
		}
		ferry_worker_destroy(w);
		if (msgs != 3 || ev.status.code != 4 || ferry_is_main())
			return 3;
	}
	return 0;
}

Test(worker, nested_from_thread) {
	ferry_worker *w = spawn(FERRY_THREAD, spawns_both, NULL, 0, NULL);
	join_expect(w, 0, 0);
	ferry_worker_destroy(w);
}

Test(worker, nested_from_process) {
	ferry_worker *w = spawn(FERRY_PROCESS, spawns_both, NULL, 0, NULL);
	join_expect(w, 0, 0);
	ferry_worker_destroy(w);
}

/* ---- a thread worker's channel is recycled: it starts clean ---- */

static int floods_and_leaves(ferry_worker_ctx *ctx)
{
	ferry_port *p = ferry_worker_ctx_port(ctx);
	for (int i = 0; i < 500; i++)
		if (ferry_port_post_bytes(p, "stale", 5, 0))
			break; /* full: good enough */
	return 3;
}

static int says_fresh(ferry_worker_ctx *ctx)
{
	ferry_msg *m;
	if (ferry_port_recv(ferry_worker_ctx_port(ctx), &m, T10S))
		return 1;
	int ok = ferry_msg_len(m) == 4 && memcmp(ferry_msg_data(m), "ping", 4) == 0;
	ferry_msg_free(m);
	if (!ok)
		return 2;
	return ferry_port_post_bytes(ferry_worker_ctx_port(ctx), "fresh", 5, T10S) ? 3 : 0;
}

Test(worker, recycled_thread_channels_start_clean)
{
	for (int round = 0; round < 20; round++) {
		/* Leave messages unread in both directions, then destroy. */
		struct ferry_worker_opts o = { .entry = floods_and_leaves };
		ferry_worker *w;
		cr_assert_eq(ferry_worker_spawn(&w, &o), 0, "%s", ferry_errmsg());
		ferry_port_post_bytes(ferry_worker_port(w), "junk", 4, 0);
		struct ferry_worker_status st;
		cr_assert_eq(ferry_worker_join(w, &st, T10S), 0);
		cr_assert_eq(st.code, 3);
		ferry_worker_destroy(w);
		if (round == 10) { /* a fork in between: nothing shared is reused */
			pid_t pid = fork();
			if (pid == 0)
				_exit(0);
			cr_assert_gt(pid, 0);
			waitpid(pid, NULL, 0);
		}

		o.entry = says_fresh;
		cr_assert_eq(ferry_worker_spawn(&w, &o), 0, "%s", ferry_errmsg());
		cr_assert_eq(ferry_port_post_bytes(ferry_worker_port(w), "ping", 4, T10S), 0);
		struct ferry_worker_event ev;
		cr_assert_eq(ferry_worker_next(w, &ev, T10S), 0);
		cr_assert_eq(ev.type, FERRY_WORKER_ONLINE);
		cr_assert_eq(ferry_worker_next(w, &ev, T10S), 0);
		cr_assert_eq(ev.type, FERRY_WORKER_MESSAGE, "round %d: got event %d", round, ev.type);
		cr_assert_eq(ferry_msg_len(ev.msg), 5);
		cr_assert_eq(memcmp(ferry_msg_data(ev.msg), "fresh", 5), 0);
		ferry_msg_free(ev.msg);
		cr_assert_eq(ferry_worker_next(w, &ev, T10S), 0);
		cr_assert_eq(ev.type, FERRY_WORKER_EXIT);
		cr_assert_eq(ev.status.code, 0);
		ferry_worker_destroy(w);
	}
}
