/* ferry_port_fd: embedding a port in a poll/epoll loop, on both backends. */
#include <ferry.h>

#include "util/util.h"

#include <criterion/criterion.h>
#include <errno.h>
#include <poll.h>
#include <string.h>
#include <sys/epoll.h>
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

TestSuite(port_fd, .init = setup, .fini = teardown, .timeout = 60);

#define T10S (10LL * 1000000000)

static int readable(int fd, int ms)
{
	struct pollfd p = { .fd = fd, .events = POLLIN };
	return poll(&p, 1, ms) > 0 ? p.revents : 0;
}

Test(port_fd, signalled_only_when_armed)
{
	ferry_port *a, *b;
	cr_assert_eq(ferry_channel(&a, &b, NULL), 0);
	int fd = ferry_port_fd(b);
	cr_assert_geq(fd, 0, "%s", ferry_errmsg());
	/* Not armed: posts make no syscall, the fd stays quiet. */
	for (int i = 0; i < 100; i++)
		cr_assert_eq(ferry_port_post_bytes(a, &i, sizeof i, 0), 0);
	cr_assert_eq(readable(fd, 0), 0, "a busy receiver was woken");
	ferry_msg *m;
	for (int i = 0; i < 100; i++) {
		cr_assert_eq(ferry_port_recv(b, &m, 0), 0);
		ferry_msg_free(m);
	}
	/* -EAGAIN arms it; the next post wakes it exactly once. */
	cr_assert_eq(ferry_port_recv(b, &m, 0), -EAGAIN);
	cr_assert_eq(readable(fd, 0), 0);
	cr_assert_eq(ferry_port_post_bytes(a, "x", 1, 0), 0);
	cr_assert(readable(fd, 1000) & POLLIN, "an armed receiver was not woken");
	cr_assert_eq(ferry_port_post_bytes(a, "y", 1, 0), 0);
	cr_assert_eq(ferry_port_recv(b, &m, 0), 0);
	ferry_msg_free(m);
	cr_assert_eq(ferry_port_recv(b, &m, 0), 0);
	ferry_msg_free(m);
	cr_assert_eq(ferry_port_recv(b, &m, 0), -EAGAIN); /* drains the wake, re-arms */
	cr_assert_eq(readable(fd, 0), 0, "the wake packet was not drained");
	ferry_port_destroy(a);
	ferry_port_destroy(b);
}

Test(port_fd, peer_close_makes_it_readable)
{
	ferry_port *a, *b;
	cr_assert_eq(ferry_channel(&a, &b, NULL), 0);
	int fd = ferry_port_fd(b);
	ferry_msg *m;
	cr_assert_eq(ferry_port_recv(b, &m, 0), -EAGAIN);
	ferry_port_post_bytes(a, "last", 4, 0);
	ferry_port_close(a);
	cr_assert(readable(fd, 1000));
	cr_assert_eq(ferry_port_recv(b, &m, 0), 0);
	ferry_msg_free(m);
	cr_assert_eq(ferry_port_recv(b, &m, 0), -EPIPE);
	ferry_port_destroy(a);
	ferry_port_destroy(b);
}

Test(port_fd, bad_arguments)
{
	cr_assert_eq(ferry_port_fd(NULL), -EINVAL);
	cr_assert(strstr(ferry_errmsg(), "port is NULL"));
}

/* A worker that posts N messages in bursts with pauses, then clone
 * messages carrying buffers (fds on the control socket, interleaved with
 * wake packets), then exits. */
#define N 2000

static int bursts(ferry_worker_ctx *ctx)
{
	ferry_port *p = ferry_worker_ctx_port(ctx);
	struct timespec pause = { 0, 200 * 1000 };
	for (int i = 0; i < N; i++) {
		if (ferry_port_post_bytes(p, &i, sizeof i, FERRY_FOREVER))
			return 1;
		if (i % 97 == 0)
			nanosleep(&pause, NULL);
	}
	for (int i = 0; i < 20; i++) {
		ferry_buf *b;
		if (ferry_buf_create(&b, 100000, 0))
			return 2;
		((int *)ferry_buf_data(b))[0] = i;
		ferry_value *v = ferry_value_handle(FERRY_VALUE_BUF, b);
		struct ferry_xfer x = { .bufs = &b, .nbufs = 1 };
		int rc = ferry_port_post(p, v, &x, FERRY_FOREVER);
		ferry_value_free(v);
		ferry_buf_free(b);
		if (rc)
			return 3;
		nanosleep(&pause, NULL);
	}
	return 0;
}

static void epoll_loop(int backend)
{
	struct ferry_worker_opts o = { .backend = backend, .entry = bursts };
	ferry_worker *w;
	cr_assert_eq(ferry_worker_spawn(&w, &o), 0, "%s", ferry_errmsg());
	ferry_port *p = ferry_worker_port(w);
	int ep = epoll_create1(EPOLL_CLOEXEC);
	struct epoll_event ev = { .events = EPOLLIN, .data.ptr = p };
	cr_assert_eq(epoll_ctl(ep, EPOLL_CTL_ADD, ferry_port_fd(p), &ev), 0);
	int raw = 0, bufs = 0, wakeups = 0, done = 0;
	while (!done) {
		struct epoll_event got;
		int n = epoll_wait(ep, &got, 1, 10000);
		cr_assert_eq(n, 1, "epoll timed out: the port was never signalled");
		wakeups++;
		for (;;) {
			ferry_msg *m;
			int rc = ferry_port_recv(p, &m, 0);
			if (rc == -EAGAIN)
				break;
			if (rc == -EPIPE) {
				done = 1;
				break;
			}
			cr_assert_eq(rc, 0, "%s", ferry_errmsg());
			if (ferry_msg_value(m)) {
				ferry_buf *b = ferry_value_get_handle(ferry_msg_value(m), NULL);
				cr_assert_eq(((int *)ferry_buf_data(b))[0], bufs, "buffer order");
				bufs++;
			} else {
				cr_assert_eq(*(const int *)ferry_msg_data(m), raw, "message order");
				raw++;
			}
			ferry_msg_free(m);
		}
	}
	cr_assert_eq(raw, N);
	cr_assert_eq(bufs, 20);
	cr_assert_lt(wakeups, N + 30, "woken more often than messages arrived");
	close(ep);
	struct ferry_worker_status st;
	cr_assert_eq(ferry_worker_join(w, &st, T10S), 0);
	cr_assert_eq(st.code, 0, "worker said %d", st.code);
	ferry_worker_destroy(w);
}

Test(port_fd, epoll_loop_thread) { epoll_loop(FERRY_THREAD); }
Test(port_fd, epoll_loop_process) { epoll_loop(FERRY_PROCESS); }

static int dies(ferry_worker_ctx *ctx)
{
	ferry_port_post_bytes(ferry_worker_ctx_port(ctx), "bye", 3, FERRY_FOREVER);
	_exit(9);
}

Test(port_fd, dead_process_peer_wakes_the_poll)
{
	struct ferry_worker_opts o = { .backend = FERRY_PROCESS, .entry = dies };
	ferry_worker *w;
	cr_assert_eq(ferry_worker_spawn(&w, &o), 0);
	ferry_port *p = ferry_worker_port(w);
	int fd = ferry_port_fd(p);
	int got = 0;
	for (;;) {
		ferry_msg *m;
		int rc = ferry_port_recv(p, &m, 0);
		if (rc == -EAGAIN) {
			cr_assert(readable(fd, 10000), "a dead peer must wake the poll");
			continue;
		}
		if (rc == -EPIPE)
			break;
		cr_assert_eq(rc, 0, "%s", ferry_errmsg());
		got++;
		ferry_msg_free(m);
	}
	cr_assert_eq(got, 1, "the message posted before dying arrived");
	struct ferry_worker_status st;
	cr_assert_eq(ferry_worker_join(w, &st, T10S), 0);
	cr_assert_eq(st.code, 9);
	ferry_worker_destroy(w);
}
