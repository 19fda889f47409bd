/*
 * libuv_port - a ferry port inside a libuv loop: uv_poll_t watches
 * ferry_port_fd(); a thread worker streams 10000 messages; the loop counts
 * them next to a uv_timer_t, and stops when the worker's port closes.
 */
#include <ferry.h>
#include <uv.h>

#include <errno.h>
#include <stdio.h>

enum { N = 10000 };

static int stream(ferry_worker_ctx *ctx)
{
	for (int i = 0; i < N; i++)
		if (ferry_port_post_bytes(ferry_worker_ctx_port(ctx), &i, sizeof i, FERRY_FOREVER))
			return 1;
	return 0; /* the runtime closes the port: the loop sees -EPIPE */
}

struct state {
	ferry_port *port;
	uv_poll_t poll;
	uv_timer_t timer;
	int got, in_order, ticks, closed;
};

static void on_readable(uv_poll_t *h, int status, int events)
{
	struct state *s = h->data;
	ferry_msg *m;
	int rc;
	while ((rc = ferry_port_recv(s->port, &m, 0)) == 0) {
		if (*(const int *)ferry_msg_data(m) != s->got)
			s->in_order = 0;
		s->got++;
		ferry_msg_free(m);
	}
	if (rc == -EPIPE) { /* everything arrived, the worker is done */
		s->closed = 1;
		uv_poll_stop(&s->poll);
		uv_timer_stop(&s->timer);
	}
}

static void on_tick(uv_timer_t *t)
{
	((struct state *)t->data)->ticks++;
}

int main(void)
{
	struct ferry_worker_opts o = { .backend = FERRY_THREAD, .entry = stream };
	ferry_worker *w;
	if (ferry_worker_spawn(&w, &o)) {
		fprintf(stderr, "spawn: %s\n", ferry_errmsg());
		return 1;
	}
	struct state s = { .port = ferry_worker_port(w), .in_order = 1 };
	uv_loop_t *loop = uv_default_loop();
	uv_poll_init(loop, &s.poll, ferry_port_fd(s.port));
	s.poll.data = &s;
	uv_poll_start(&s.poll, UV_READABLE, on_readable);
	uv_timer_init(loop, &s.timer);
	s.timer.data = &s;
	uv_timer_start(&s.timer, on_tick, 1, 1);
	/* Drain once before the first poll: that -EAGAIN arms the fd. */
	on_readable(&s.poll, 0, UV_READABLE);
	uv_run(loop, UV_RUN_DEFAULT);
	struct ferry_worker_status st;
	ferry_worker_join(w, &st, FERRY_FOREVER);
	ferry_worker_destroy(w);
	int ok = s.closed && s.got == N && s.in_order && st.code == 0;
	printf("libuv_port %s: %d messages in order through uv_poll, %d timer ticks\n",
	       ok ? "ok" : "WRONG", s.got, s.ticks);
	uv_loop_close(loop);
	return ok ? 0 : 1;
}
