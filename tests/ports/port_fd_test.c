/* ferry_port_fd: embedding a port in a poll/epoll loop, on both backends. */
#include <ferry.h>

#include "ports/port_int.h"
#include "shm/buf_int.h"
#include "util/util.h"
#include "util/wire.h"

#include <criterion/criterion.h>
#include <errno.h>
#include <poll.h>
#include <stdatomic.h>
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

/*
 * A sender caught between sending a message's fd batch and committing its
 * record (preempted there, say), played by hand on the sender's port: the
 * batch goes on the control socket now, the record when the test says.
 * The record layout: util/wire.h.
 */

struct inflight {
	ferry_port *a;
	uint64_t seq;
	ferry_buf *buf;
};

/* The batch: one buffer segment filled with @tag. */
static void inflight_send(struct inflight *f, ferry_port *a, int tag)
{
	f->a = a;
	cr_assert_eq(ferry_buf_create(&f->buf, FERRY_BUF_SEG_MIN, 0), 0, "%s", ferry_errmsg());
	memset(ferry_buf_data(f->buf), tag, FERRY_BUF_SEG_MIN);
	f->seq = atomic_fetch_add_explicit(&a->txd->fd_seq, 1, memory_order_relaxed) + 1;
	struct fd_batch bh = { .seq = f->seq, .index = 0, .count = 1 };
	int fd = ferry_seg_fd(ferry__buf_seg(f->buf));
	cr_assert_eq(ferry_fds_send(a->sock, &bh, sizeof bh, &fd, 1, 0), 0, "%s", ferry_errmsg());
}

/* The record that claims it: a clone of the buffer, as ferry_port_post writes it. */
static void inflight_commit(struct inflight *f)
{
	unsigned char cbor[64];
	size_t cbor_len;
	struct ferry_clone_handles t;
	ferry_clone_handles_init(&t);
	ferry_value *v = ferry_value_handle(FERRY_VALUE_BUF, f->buf);
	cr_assert_eq(ferry_clone_encode(v, cbor, sizeof cbor, &cbor_len, &t, NULL), 0, "%s", ferry_errmsg());
	cr_assert_eq(t.count, 1);
	ferry_clone_handles_fini(&t);
	ferry_value_free(v);
	struct wire_hdr wh = { .kind = WIRE_CLONE };
	struct w_clone_hdr ch = { .nhandles = 1, .nfds = 1, .fd_seq = f->seq, .body_len = cbor_len,
				  .cbor_len = cbor_len };
	struct w_desc d = { .type = H_SEG, .len = FERRY_BUF_SEG_MIN };
	size_t len = sizeof wh + sizeof ch + sizeof d + cbor_len;
	void *where;
	cr_assert_eq(ferry_ring_spsc_view_reserve(&f->a->txv, len, &where), 0);
	unsigned char *w = where;
	memcpy(w, &wh, sizeof wh);
	memcpy(w + sizeof wh, &ch, sizeof ch);
	memcpy(w + sizeof wh + sizeof ch, &d, sizeof d);
	memcpy(w + sizeof wh + sizeof ch + sizeof d, cbor, cbor_len);
	ferry_ring_spsc_view_commit(&f->a->txv, len);
	ferry_ec_notify(&f->a->txd->data_ec);
	ferry__port_wake_fd(f->a);
	ferry_buf_free(f->buf);
	f->buf = NULL;
}

/* A channel (*@a, *@b), @b in fd mode, whose @b has stashed the in-flight
 * batch @f (filled with @tag): its poll found the batch and no record. */
static void stashed_channel(ferry_port **a, ferry_port **b, struct inflight *f, int tag)
{
	cr_assert_eq(ferry_channel(a, b, NULL), 0);
	ferry_port_fd(*b);
	inflight_send(f, *a, tag);
	ferry_msg *m;
	cr_assert_eq(ferry_port_recv(*b, &m, 0), -EAGAIN);
	cr_assert_eq(atomic_load(&(*b)->stash_n), 1, "the batch was not stashed");
}

/* The message of inflight_send(@tag) arrived whole. */
static int whole(const ferry_msg *m, int tag)
{
	enum ferry_value_kind k;
	ferry_buf *b = ferry_value_get_handle(ferry_msg_value(m), &k);
	if (!b || k != FERRY_VALUE_BUF || ferry_buf_len(b) != FERRY_BUF_SEG_MIN)
		return 0;
	const unsigned char *d = ferry_buf_data(b);
	for (size_t i = 0; i < FERRY_BUF_SEG_MIN; i++)
		if (d[i] != (unsigned char)tag)
			return 0;
	return 1;
}

/* Wakeups of a level-triggered epoll in @ms that ferry_port_recv answers
 * with -EAGAIN (a busy loop makes hundreds). */
static int empty_wakeups(int ep, ferry_port *p, int ms)
{
	int n = 0;
	struct timespec t0, t;
	clock_gettime(CLOCK_MONOTONIC, &t0);
	for (;;) {
		clock_gettime(CLOCK_MONOTONIC, &t);
		int left = ms - (int)((t.tv_sec - t0.tv_sec) * 1000 + (t.tv_nsec - t0.tv_nsec) / 1000000);
		struct epoll_event ev;
		if (left <= 0 || epoll_wait(ep, &ev, 1, left) <= 0)
			return n;
		ferry_msg *m;
		int rc = ferry_port_recv(p, &m, 0);
		cr_assert_eq(rc, -EAGAIN, "a message before its commit: %d", rc);
		if (++n > 100)
			return n;
	}
}

Test(port_fd, inflight_batch_does_not_spin)
{
	ferry_port *a, *b;
	cr_assert_eq(ferry_channel(&a, &b, NULL), 0);
	int fd = ferry_port_fd(b);
	int ep = epoll_create1(EPOLL_CLOEXEC);
	struct epoll_event ev = { .events = EPOLLIN };
	cr_assert_eq(epoll_ctl(ep, EPOLL_CTL_ADD, fd, &ev), 0);
	ferry_msg *m;
	cr_assert_eq(ferry_port_recv(b, &m, 0), -EAGAIN);
	for (int round = 0; round < 3; round++) {
		struct inflight f;
		inflight_send(&f, a, 0x40 + round);
		/* The batch makes the fd readable once; the receiver finds no
		 * record, stashes the batch, and the fd goes quiet. */
		int n = empty_wakeups(ep, b, 100);
		cr_assert_leq(n, 1, "%d empty wakeups while a batch waited for its record", n);
		cr_assert_eq(readable(fd, 0), 0, "the in-flight batch keeps the fd readable");
		inflight_commit(&f);
		cr_assert_eq(epoll_wait(ep, &ev, 1, 1000), 1, "the commit did not wake the poller");
		cr_assert_eq(ferry_port_recv(b, &m, 0), 0, "%s", ferry_errmsg());
		cr_assert(whole(m, 0x40 + round), "the message lost its fds");
		ferry_msg_free(m);
		cr_assert_eq(ferry_port_recv(b, &m, 0), -EAGAIN);
		cr_assert_eq(readable(fd, 0), 0, "the wake packet was not drained");
	}
	close(ep);
	ferry_port_destroy(a);
	ferry_port_destroy(b);
}

/* Stashed batches of a port that is closed or destroyed are closed (the
 * suite's fd baseline checks). */
Test(port_fd, stash_closed_with_the_port)
{
	for (int how = 0; how < 2; how++) {
		ferry_port *a, *b;
		struct inflight f;
		stashed_channel(&a, &b, &f, 1);
		ferry_buf_free(f.buf);
		if (how == 0) {
			ferry_port_close(b);
			cr_assert_eq(atomic_load(&b->stash_n), 0);
		}
		ferry_port_destroy(a);
		ferry_port_destroy(b);
	}
}

/* The worker receives a port whose stash holds a batch, then the message
 * that batch belongs to. */
static int takes_port(ferry_worker_ctx *ctx)
{
	ferry_port *p = ferry_worker_ctx_port(ctx);
	ferry_msg *m;
	if (ferry_port_recv(p, &m, T10S))
		return 1;
	ferry_port *q = ferry_msg_port(m, 0);
	if (!q || ferry_msg_keep(m, q))
		return 2;
	ferry_msg_free(m);
	if (ferry_port_post_bytes(p, "go", 2, T10S))
		return 3;
	int rc = ferry_port_recv(q, &m, T10S);
	if (rc)
		return 4;
	int ok = whole(m, 0x33);
	ferry_msg_free(m);
	ferry_port_destroy(q);
	return ok ? 0 : 5;
}

static void stash_travels(int backend)
{
	ferry_port *a, *b;
	struct inflight f;
	stashed_channel(&a, &b, &f, 0x33);
	ferry_msg *m;

	struct ferry_worker_opts o = { .backend = backend, .entry = takes_port };
	ferry_worker *w;
	cr_assert_eq(ferry_worker_spawn(&w, &o), 0, "%s", ferry_errmsg());
	ferry_port *wp = ferry_worker_port(w);
	cr_assert_eq(tu_post_port(wp, b, T10S), 0, "%s", ferry_errmsg());
	/* The record follows once the port has arrived. */
	cr_assert_eq(ferry_port_recv(wp, &m, T10S), 0, "%s", ferry_errmsg());
	ferry_msg_free(m);
	inflight_commit(&f);
	struct ferry_worker_status st;
	cr_assert_eq(ferry_worker_join(w, &st, T10S), 0);
	cr_assert_eq(st.code, 0, "worker said %d", st.code);
	ferry_worker_destroy(w);
	ferry_port_destroy(a);
	ferry_port_destroy(b);
}

Test(port_fd, stash_travels_thread) { stash_travels(FERRY_THREAD); }
Test(port_fd, stash_travels_process) { stash_travels(FERRY_PROCESS); }

/* A transfer that fails (ring full) leaves the port and its stash as they
 * were: the record still finds its fds. */
Test(port_fd, stash_kept_when_the_transfer_fails)
{
	ferry_port *a, *b, *c, *d;
	struct inflight f;
	stashed_channel(&a, &b, &f, 0x21);
	cr_assert_eq(ferry_channel(&c, &d, NULL), 0);
	ferry_msg *m;
	char fill[1024] = { 0 };
	while (ferry_port_post_bytes(c, fill, sizeof fill, 0) == 0)
		;
	cr_assert_eq(tu_post_port(c, b, 0), -EAGAIN, "%s", ferry_errmsg());
	cr_assert_eq(atomic_load(&b->stash_n), 1, "a failed transfer took the stash");
	inflight_commit(&f);
	cr_assert_eq(ferry_port_recv(b, &m, T10S), 0, "%s", ferry_errmsg());
	cr_assert(whole(m, 0x21));
	ferry_msg_free(m);
	ferry_port_destroy(a);
	ferry_port_destroy(b);
	ferry_port_destroy(c);
	ferry_port_destroy(d);
}

/* Forged stash descriptors (ports/msg.c H_STASH): a batch said to belong
 * to a handle that is not a port, more of them than fds, a bad type. Each
 * message fails alone (-EBADMSG), its fds are closed (the suite's baseline
 * checks), and the channel goes on. */
Test(port_fd, forged_stash_descriptors_fail_one_message)
{
	ferry_port *a, *b;
	cr_assert_eq(ferry_channel(&a, &b, NULL), 0);
	for (int how = 0; how < 3; how++) {
		ferry_buf *buf;
		cr_assert_eq(ferry_buf_create(&buf, FERRY_BUF_SEG_MIN, 0), 0);
		uint64_t seq = atomic_fetch_add_explicit(&a->txd->fd_seq, 1, memory_order_relaxed) + 1;
		int fds[2] = { ferry_seg_fd(ferry__buf_seg(buf)), ferry_seg_fd(ferry__buf_seg(buf)) };
		struct fd_batch bh = { .seq = seq, .index = 0, .count = 2 };
		cr_assert_eq(ferry_fds_send(a->sock, &bh, sizeof bh, fds, 2, 0), 0);
		unsigned char cbor[64];
		size_t cbor_len;
		struct ferry_clone_handles t;
		ferry_clone_handles_init(&t);
		ferry_value *v = ferry_value_handle(FERRY_VALUE_BUF, buf);
		cr_assert_eq(ferry_clone_encode(v, cbor, sizeof cbor, &cbor_len, &t, NULL), 0);
		ferry_clone_handles_fini(&t);
		ferry_value_free(v);
		struct wire_hdr wh = { .kind = WIRE_CLONE };
		struct w_clone_hdr ch = { .nhandles = 1, .nfds = 2, .fd_seq = seq, .body_len = cbor_len,
					  .cbor_len = cbor_len, .nstash = how == 1 ? 3 : 1 };
		struct w_desc d[2] = {
			{ .type = H_SEG, .len = FERRY_BUF_SEG_MIN },
			{ .type = how == 2 ? H_PORT : H_STASH, .pad = 0, .len = seq, .off = (1u << 16) | 1 },
		};
		size_t len = sizeof wh + sizeof ch + sizeof d + cbor_len;
		void *where;
		cr_assert_eq(ferry_ring_spsc_view_reserve(&a->txv, len, &where), 0);
		unsigned char *w = where;
		memcpy(w, &wh, sizeof wh);
		memcpy(w + sizeof wh, &ch, sizeof ch);
		memcpy(w + sizeof wh + sizeof ch, d, sizeof d);
		memcpy(w + sizeof wh + sizeof ch + sizeof d, cbor, cbor_len);
		ferry_ring_spsc_view_commit(&a->txv, len);
		ferry_ec_notify(&a->txd->data_ec);
		ferry_buf_free(buf);
		ferry_msg *m;
		cr_assert_eq(ferry_port_recv(b, &m, T10S), -EBADMSG, "case %d", how);
		/* The channel still carries messages with fds. */
		struct inflight f;
		inflight_send(&f, a, 0x60 + how);
		inflight_commit(&f);
		cr_assert_eq(ferry_port_recv(b, &m, T10S), 0, "%s", ferry_errmsg());
		cr_assert(whole(m, 0x60 + how));
		ferry_msg_free(m);
	}
	ferry_port_destroy(a);
	ferry_port_destroy(b);
}
