/*
 * Ports in a loop: two sources per watched port. An eventcount watch on the
 * port's receive direction delivers messages (the producer's notify wakes
 * the loop's futex wait only while the loop sleeps); an fd watch on the
 * port's control socket sees the peer hang up, which no futex reports.
 */
#include "ferry/loop.h"
#include "ports/port_int.h"
#include "shm/err.h"

#include <errno.h>

static int port_ready(void *arg)
{
	struct ferry_loop_port_watch *w = arg;
	const void *rec;
	size_t len;
	/* A peek does not consume: any answer but "empty" means go and receive
	 * (a record, the close, a corrupt ring). */
	return ferry_ring_spsc_view_peek(&w->port->rxv, &rec, &len) != -EAGAIN ||
	       ferry__port_closed(w->port);
}

static void finish(ferry_loop *loop, struct ferry_loop_port_watch *w, int err)
{
	ferry_loop_port_stop(loop, w);
	w->cb(loop, w->port, NULL, err, w->arg);
}

/* Up to a batch of messages; then, if the peer is gone and nothing is left,
 * the final -EPIPE. */
static void drain(ferry_loop *loop, struct ferry_loop_port_watch *w, int peer_gone)
{
	for (int i = 0; i < FERRY_LOOP_BATCH && w->active; i++) {
		ferry_msg *m;
		int rc = ferry_port_recv(w->port, &m, 0);
		if (rc == 0) {
			w->cb(loop, w->port, m, 0, w->arg);
			continue;
		}
		if (rc == -EAGAIN) {
			if (peer_gone)
				finish(loop, w, -EPIPE);
			return;
		}
		if (rc == -EPIPE || rc == -EPROTO || rc == FERRY_EDETACHED) {
			finish(loop, w, rc);
			return;
		}
		w->cb(loop, w->port, NULL, rc, w->arg); /* messageerror: go on */
	}
}

static void on_ec(ferry_loop *loop, uint64_t id, int res, void *arg)
{
	struct ferry_loop_port_watch *w = arg;
	if (res < 0) {
		finish(loop, w, res);
		return;
	}
	drain(loop, w, 0);
}

static void on_fd(ferry_loop *loop, uint64_t id, int res, void *arg)
{
	struct ferry_loop_port_watch *w = arg;
	if (res < 0) {
		finish(loop, w, res);
		return;
	}
	/* Readable without a hang-up: an fd batch on its way with a record
	 * (the eventcount watch delivers it), or junk a peer left there: drop
	 * that, or this level-triggered watch would fire on every pass. */
	if (!(res & (FERRY_LOOP_HUP | FERRY_LOOP_ERROR))) {
		ferry__port_drain_wakes(w->port);
		return;
	}
	drain(loop, w, 1);
}

FERRY_API int ferry_loop_port_start(ferry_loop *loop, struct ferry_loop_port_watch *w,
				    struct ferry_port *port, ferry_loop_port_fn cb, void *arg)
{
	if (!loop || !w || !port || !cb)
		return ferry__fail(-EINVAL, "ferry_loop_port_start: %s is NULL",
				   !loop ? "loop" : !w ? "watch" : !port ? "port" : "cb");
	if (w->active)
		return ferry__fail(-EINVAL, "ferry_loop_port_start: the watch is already active");
	if (port->detached)
		return ferry__fail(FERRY_EDETACHED, "ferry_loop_port_start: the port was transferred away");
	w->port = port;
	w->cb = cb;
	w->arg = arg;
	w->active = 1;
	int rc = ferry_loop_watch_ec(loop, &port->rxd->data_ec, port_ready, on_ec, w, &w->ec_id);
	if (rc) {
		w->active = 0;
		return rc;
	}
	rc = ferry_loop_fd(loop, port->sock, FERRY_LOOP_READABLE, on_fd, w, &w->fd_id);
	if (rc) {
		ferry_loop_cancel(loop, w->ec_id);
		w->active = 0;
		return rc;
	}
	return 0;
}

FERRY_API int ferry_loop_port_stop(ferry_loop *loop, struct ferry_loop_port_watch *w)
{
	if (!loop || !w)
		return ferry__fail(-EINVAL, "ferry_loop_port_stop: %s is NULL", !loop ? "loop" : "watch");
	if (!w->active)
		return 0;
	w->active = 0;
	ferry_loop_cancel(loop, w->ec_id);
	ferry_loop_cancel(loop, w->fd_id);
	return 0;
}
