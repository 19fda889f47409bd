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
	struct ferry_worker_status st = { -1, -1 };
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
	for (int i = 0; i < 2000 && tu_count_fds() != base.fds; i++)
		usleep(1000);
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
