/*
 * epoll_server - a plain epoll loop that serves a timer and a ferry port
 * side by side: a process worker computes squares and posts them back; the
 * loop handles each reply as it comes, and a timer ticks meanwhile.
 */
#include <ferry.h>

#include <errno.h>
#include <stdint.h>
#include <stdio.h>
#include <sys/epoll.h>
#include <sys/timerfd.h>
#include <unistd.h>

static int squares(ferry_worker_ctx *ctx)
{
	ferry_port *p = ferry_worker_ctx_port(ctx);
	ferry_msg *m;
	while (ferry_port_recv(p, &m, FERRY_FOREVER) == 0) {
		int64_t x;
		ferry_value_get_int(ferry_msg_value(m), &x);
		ferry_msg_free(m);
		ferry_value *sq = ferry_value_int(x * x);
		ferry_port_post(p, sq, NULL, FERRY_FOREVER);
		ferry_value_free(sq);
	}
	return 0;
}

int main(void)
{
	struct ferry_worker_opts o = { .backend = FERRY_PROCESS, .entry = squares };
	ferry_worker *w;
	if (ferry_worker_spawn(&w, &o)) {
		fprintf(stderr, "spawn: %s\n", ferry_errmsg());
		return 1;
	}
	ferry_port *port = ferry_worker_port(w);

	int ep = epoll_create1(EPOLL_CLOEXEC);
	int tfd = timerfd_create(CLOCK_MONOTONIC, TFD_CLOEXEC);
	struct itimerspec its = { .it_interval = { 0, 1000000 }, .it_value = { 0, 1000000 } };
	timerfd_settime(tfd, 0, &its, NULL);
	struct epoll_event ev = { .events = EPOLLIN, .data.fd = tfd };
	epoll_ctl(ep, EPOLL_CTL_ADD, tfd, &ev);
	ev.data.fd = ferry_port_fd(port); /* readable when a reply waits */
	epoll_ctl(ep, EPOLL_CTL_ADD, ev.data.fd, &ev);

	enum { N = 1000 };
	for (int64_t i = 0; i < N; i++) {
		ferry_value *v = ferry_value_int(i);
		ferry_port_post(port, v, NULL, FERRY_FOREVER);
		ferry_value_free(v);
	}
	int64_t sum = 0, want = 0;
	for (int64_t i = 0; i < N; i++)
		want += i * i;
	int replies = 0, ticks = 0;
	/* The port's fd is edge-triggered: drain until -EAGAIN before each
	 * wait; that -EAGAIN is what arms it. */
	ferry_msg *first;
	while (ferry_port_recv(port, &first, 0) == 0) {
		int64_t sq;
		ferry_value_get_int(ferry_msg_value(first), &sq);
		sum += sq;
		replies++;
		ferry_msg_free(first);
	}
	while (replies < N) {
		struct epoll_event got[2];
		int n = epoll_wait(ep, got, 2, 5000);
		if (n <= 0) {
			fprintf(stderr, "epoll_wait: nothing for 5 s\n");
			return 1;
		}
		for (int k = 0; k < n; k++) {
			if (got[k].data.fd == tfd) {
				uint64_t x;
				if (read(tfd, &x, sizeof x) == sizeof x)
					ticks += (int)x;
				continue;
			}
			/* Drain the port until -EAGAIN: that arms its fd again. */
			ferry_msg *m;
			int rc;
			while ((rc = ferry_port_recv(port, &m, 0)) == 0) {
				int64_t sq;
				ferry_value_get_int(ferry_msg_value(m), &sq);
				sum += sq;
				replies++;
				ferry_msg_free(m);
			}
			if (rc != -EAGAIN) {
				fprintf(stderr, "recv: %s\n", ferry_errmsg());
				return 1;
			}
		}
	}
	ferry_port_close(port);
	struct ferry_worker_status st;
	ferry_worker_join(w, &st, FERRY_FOREVER);
	ferry_worker_destroy(w);
	close(tfd);
	close(ep);
	printf("epoll_server %s: %d replies, sum of squares %lld, %d timer ticks meanwhile\n",
	       sum == want ? "ok" : "WRONG", replies, (long long)sum, ticks);
	return sum == want ? 0 : 1;
}
