/* Clone messages: values, cloned / transferred / shared buffers, ports in
 * messages, large messages, errors. Every scenario on both backends. */
#include <ferry.h>

#include "ports/port_int.h"
#include "ports/value_internal.h"
#include "shm/buf_int.h"
#include "util/util.h"

#include <criterion/criterion.h>
#include <errno.h>
#include <math.h>
#include <stdatomic.h>
#include <stdlib.h>
#include <string.h>
#include <pthread.h>
#include <stdio.h>
#include <sys/wait.h>
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

TestSuite(msg, .init = setup, .fini = teardown, .timeout = 60);

#define T10S (10LL * 1000000000)

static ferry_value *sample_object(void)
{
	ferry_value *m = ferry_value_map();
	ferry_value_map_set(m, "name", ferry_value_str("ferry"));
	ferry_value_map_set(m, "int", ferry_value_int(INT64_MIN));
	ferry_value_map_set(m, "max", ferry_value_int(INT64_MAX));
	ferry_value_map_set(m, "nan", ferry_value_double(NAN));
	ferry_value_map_set(m, "negzero", ferry_value_double(-0.0));
	ferry_value_map_set(m, "inf", ferry_value_double(INFINITY));
	ferry_value_map_set(m, "empty", ferry_value_str(""));
	ferry_value_map_set(m, "bytes", ferry_value_bytes("\0\1\2", 3));
	ferry_value *arr = ferry_value_array();
	for (int i = 0; i < 10; i++)
		ferry_value_array_push(arr, ferry_value_int(i));
	ferry_value_map_set(m, "list", arr);
	ferry_value_map_set(m, "again", arr);   /* shared reference */
	ferry_value_map_set(m, "self", m);      /* cycle */
	ferry_value_map_set(m, "t", ferry_value_bool(true));
	ferry_value_map_set(m, "nil", ferry_value_null());
	return m;
}

static ferry_msg *recv_ok(ferry_port *p)
{
	ferry_msg *m = NULL;
	int rc = ferry_port_recv(p, &m, T10S);
	cr_assert_eq(rc, 0, "recv: %d %s", rc, ferry_errmsg());
	return m;
}

/* ---- worker side: operations chosen by a small command protocol ---- */

/* Echo every message back as it came: the value with its buffers cloned,
 * transferred buffers transferred back, shared ones shared, ports echoed
 * back as ports (transferred). Stops at -EPIPE or a null value. */
static int echo_values(ferry_worker_ctx *ctx)
{
	ferry_port *p = ferry_worker_ctx_port(ctx);
	for (;;) {
		ferry_msg *m;
		int rc = ferry_port_recv(p, &m, FERRY_FOREVER);
		if (rc == -EPIPE)
			return 0;
		if (rc == -EBADMSG) {
			/* messageerror: say so and go on */
			ferry_port_post_bytes(p, "messageerror", 12, FERRY_FOREVER);
			continue;
		}
		if (rc)
			return 10;
		const ferry_value *v = ferry_msg_value(m);
		if (!v) { /* raw bytes: echo */
			ferry_port_post_bytes(p, ferry_msg_data(m), ferry_msg_len(m), FERRY_FOREVER);
			ferry_msg_free(m);
			continue;
		}
		if (ferry_value_kind(v) == FERRY_VALUE_NULL) {
			ferry_msg_free(m);
			return 0;
		}
		/* Transfer back every plain buffer and port that came with it. */
		ferry_buf *bufs[FERRY_MSG_MAX_HANDLES];
		ferry_port *ports[FERRY_MSG_MAX_HANDLES];
		size_t nb = 0, np = 0;
		for (size_t i = 0; i < m->nhandles; i++) {
			if (m->handles[i].kind == FERRY_VALUE_BUF)
				bufs[nb++] = m->handles[i].handle;
			else if (m->handles[i].kind == FERRY_VALUE_PORT)
				ports[np++] = m->handles[i].handle;
		}
		struct ferry_xfer x = { .bufs = bufs, .nbufs = nb, .ports = ports, .nports = np };
		rc = ferry_port_post(p, v, &x, FERRY_FOREVER);
		ferry_msg_free(m);
		if (rc)
			return 11;
	}
}

static ferry_worker *spawn(int backend, ferry_worker_fn fn)
{
	struct ferry_worker_opts o = { .backend = backend, .entry = fn };
	ferry_worker *w;
	cr_assert_eq(ferry_worker_spawn(&w, &o), 0, "%s", ferry_errmsg());
	return w;
}

static void finish(ferry_worker *w)
{
	ferry_value *nul = ferry_value_null();
	cr_assert_eq(ferry_port_post(ferry_worker_port(w), nul, NULL, T10S), 0, "%s", ferry_errmsg());
	ferry_value_free(nul);
	struct ferry_worker_status st;
	cr_assert_eq(ferry_worker_join(w, &st, T10S), 0);
	cr_assert_eq(st.code, 0, "worker exit %d signal %d", st.code, st.signal);
	ferry_worker_destroy(w);
}

/* ---- clone of plain values ---- */

static void clone_round_trip(int backend)
{
	ferry_worker *w = spawn(backend, echo_values);
	ferry_port *p = ferry_worker_port(w);
	ferry_value *v = sample_object();
	for (int i = 0; i < 100; i++) {
		cr_assert_eq(ferry_port_post(p, v, NULL, T10S), 0, "%s", ferry_errmsg());
		ferry_msg *m = recv_ok(p);
		const ferry_value *got = ferry_msg_value(m);
		cr_assert(ferry_value_equal(v, got), "the clone differs");
		cr_assert_eq(ferry_value_map_get(got, "self"), got, "the cycle did not survive");
		cr_assert_eq(ferry_value_map_get(got, "list"), ferry_value_map_get(got, "again"),
			     "the shared reference did not survive");
		cr_assert_null(ferry_msg_data(m));
		cr_assert_eq(ferry_msg_len(m), 0);
		ferry_msg_free(m);
	}
	ferry_value_free(v);
	finish(w);
}

Test(msg, clone_round_trip_thread) { clone_round_trip(FERRY_THREAD); }
Test(msg, clone_round_trip_process) { clone_round_trip(FERRY_PROCESS); }

Test(msg, take_value_outlives_message)
{
	ferry_port *a, *b;
	cr_assert_eq(ferry_channel(&a, &b, NULL), 0);
	ferry_value *v = sample_object();
	cr_assert_eq(ferry_port_post(a, v, NULL, 0), 0);
	ferry_msg *m = recv_ok(b);
	ferry_value *mine = ferry_msg_take_value(m);
	cr_assert_null(ferry_msg_value(m));
	ferry_msg_free(m);
	cr_assert(ferry_value_equal(v, mine));
	ferry_value_free(mine);
	ferry_value_free(v);
	ferry_port_destroy(a);
	ferry_port_destroy(b);
}

/* ---- buffers: clone, transfer, shared ---- */

static void fill(ferry_buf *b, unsigned seed)
{
	unsigned char *d = ferry_buf_data(b);
	for (size_t i = 0; i < ferry_buf_len(b); i++)
		d[i] = (unsigned char)(i * 31 + seed);
}

static int check(const ferry_buf *b, size_t len, unsigned seed)
{
	if (ferry_buf_len(b) != len)
		return 0;
	const unsigned char *d = ferry_buf_data(b);
	for (size_t i = 0; i < len; i++)
		if (d[i] != (unsigned char)(i * 31 + seed))
			return 0;
	return 1;
}

static ferry_buf *buf_of(const ferry_value *v)
{
	enum ferry_value_kind k;
	ferry_buf *b = ferry_value_get_handle(v, &k);
	cr_assert_not_null(b);
	return b;
}

static void buffer_clone_and_transfer(int backend, size_t len)
{
	ferry_worker *w = spawn(backend, echo_values);
	ferry_port *p = ferry_worker_port(w);

	/* Clone: the sender keeps its buffer; the copy comes back equal. */
	ferry_buf *b;
	cr_assert_eq(ferry_buf_create(&b, len, 0), 0);
	fill(b, 7);
	ferry_value *v = ferry_value_handle(FERRY_VALUE_BUF, b);
	cr_assert_eq(ferry_port_post(p, v, NULL, T10S), 0, "%s", ferry_errmsg());
	cr_assert_eq(ferry_buf_is_detached(b), 0);
	cr_assert(check(b, len, 7));
	ferry_msg *m = recv_ok(p);
	ferry_buf *back = buf_of(ferry_msg_value(m));
	cr_assert_neq(back, b);
	cr_assert(check(back, len, 7), "cloned bytes differ");
	fill(back, 9); /* the copy is independent */
	cr_assert(check(b, len, 7));
	ferry_msg_free(m);

	/* Transfer: the sender's handle is detached; the bytes come back. */
	ferry_buf *list[] = { b };
	struct ferry_xfer x = { .bufs = list, .nbufs = 1 };
	cr_assert_eq(ferry_port_post(p, v, &x, T10S), 0, "%s", ferry_errmsg());
	cr_assert_eq(ferry_buf_is_detached(b), 1);
	cr_assert_eq(ferry_buf_len(b), 0);
	cr_assert_null(ferry_buf_data(b));
	m = recv_ok(p);
	back = buf_of(ferry_msg_value(m));
	cr_assert(check(back, len, 7), "transferred bytes differ");
	cr_assert_eq(ferry_msg_keep(m, back), 0);
	ferry_msg_free(m);
	cr_assert(check(back, len, 7), "a kept buffer outlives its message");
	ferry_buf_free(back);

	/* A detached buffer cannot be posted again. */
	cr_assert_eq(ferry_port_post(p, v, NULL, T10S), FERRY_EDETACHED);
	cr_assert_eq(ferry_port_post(p, v, &x, T10S), FERRY_EDETACHED);
	ferry_value_free(v);
	ferry_buf_free(b);
	finish(w);
}

Test(msg, buffer_small_thread) { buffer_clone_and_transfer(FERRY_THREAD, 1000); }
Test(msg, buffer_small_process) { buffer_clone_and_transfer(FERRY_PROCESS, 1000); }
Test(msg, buffer_empty_thread) { buffer_clone_and_transfer(FERRY_THREAD, 0); }
Test(msg, buffer_empty_process) { buffer_clone_and_transfer(FERRY_PROCESS, 0); }
Test(msg, buffer_large_thread) { buffer_clone_and_transfer(FERRY_THREAD, 3 * FERRY_BUF_SEG_MIN + 5); }
Test(msg, buffer_large_process) { buffer_clone_and_transfer(FERRY_PROCESS, 3 * FERRY_BUF_SEG_MIN + 5); }
Test(msg, buffer_huge_process) { buffer_clone_and_transfer(FERRY_PROCESS, 16u << 20); }

/* The worker gets shared buffers, bumps a counter in each and notifies. */
static int shared_bumper(ferry_worker_ctx *ctx)
{
	ferry_port *p = ferry_worker_ctx_port(ctx);
	ferry_msg *m;
	if (ferry_port_recv(p, &m, FERRY_FOREVER))
		return 1;
	const ferry_value *arr = ferry_msg_value(m);
	for (size_t i = 0; i < ferry_value_len(arr); i++) {
		enum ferry_value_kind k;
		ferry_buf *b = ferry_value_get_handle(ferry_value_array_get(arr, i), &k);
		if (k != FERRY_VALUE_SHARED || !ferry_buf_is_shared(b))
			return 2;
		if (ferry_buf_len(b) >= 4) {
			atomic_fetch_add((_Atomic uint32_t *)ferry_buf_data(b), 1);
			ferry_notify(ferry_buf_data(b), FERRY_NOTIFY_ALL);
		}
	}
	ferry_msg_free(m);
	/* the memory outlives this worker */
	return 0;
}

static void shared_buffers(int backend)
{
	ferry_buf *s1, *s2, *empty;
	cr_assert_eq(ferry_buf_create(&s1, 4096, FERRY_BUF_SHARED), 0);
	cr_assert_eq(ferry_buf_create(&s2, 100, FERRY_BUF_SHARED), 0);
	cr_assert_eq(ferry_buf_create(&empty, 0, FERRY_BUF_SHARED), 0);
	cr_assert_eq(ferry_buf_len(empty), 0);
	cr_assert_not_null(ferry_buf_data(empty));
	ferry_value *arr = ferry_value_array();
	ferry_value_array_push(arr, ferry_value_handle(FERRY_VALUE_SHARED, s1));
	ferry_value_array_push(arr, ferry_value_handle(FERRY_VALUE_SHARED, s2));
	ferry_value_array_push(arr, ferry_value_handle(FERRY_VALUE_SHARED, empty));

	ferry_worker *w = spawn(backend, shared_bumper);
	cr_assert_eq(ferry_port_post(ferry_worker_port(w), arr, NULL, T10S), 0, "%s", ferry_errmsg());
	cr_assert_eq(ferry_buf_is_detached(s1), 0, "a shared buffer stays with the sender");
	uint32_t *w1 = ferry_buf_data(s1), *w2 = ferry_buf_data(s2);
	/* Atomics.wait on the shared word until the worker bumped it. */
	while (atomic_load((_Atomic uint32_t *)w1) == 0)
		ferry_wait(w1, 0, T10S);
	while (atomic_load((_Atomic uint32_t *)w2) == 0)
		ferry_wait(w2, 0, T10S);
	cr_assert_eq(*w1, 1);
	cr_assert_eq(*w2, 1);
	struct ferry_worker_status st;
	cr_assert_eq(ferry_worker_join(w, &st, T10S), 0);
	cr_assert_eq(st.code, 0, "worker said %d", st.code);
	ferry_worker_destroy(w);
	cr_assert_eq(*w1, 1, "the memory outlived the worker");
	ferry_value_free(arr);
	ferry_buf_free(s1);
	ferry_buf_free(s2);
	ferry_buf_free(empty);
}

Test(msg, shared_buffers_thread) { shared_buffers(FERRY_THREAD); }
Test(msg, shared_buffers_process) { shared_buffers(FERRY_PROCESS); }

Test(msg, buffer_bad_arguments)
{
	ferry_buf *b = (ferry_buf *)1;
	cr_assert_eq(ferry_buf_create(NULL, 1, 0), -EINVAL);
	cr_assert_eq(ferry_buf_create(&b, 1, 0x80), -EINVAL);
	cr_assert_null(b);
	cr_assert(strstr(ferry_errmsg(), "flags"), "%s", ferry_errmsg());
	cr_assert_eq(ferry_buf_create(&b, FERRY_BUF_MAX + 1, 0), -EINVAL);
	cr_assert_eq(ferry_buf_is_shared(NULL), -EINVAL);
	cr_assert_eq(ferry_buf_is_detached(NULL), -EINVAL);
	cr_assert_null(ferry_buf_data(NULL));
	cr_assert_eq(ferry_buf_len(NULL), 0);
	ferry_buf_free(NULL);
	cr_assert_eq(ferry_buf_create(&b, 10, 0), 0);
	ferry_buf *c;
	cr_assert_eq(ferry_buf_share(b, &c), -EINVAL, "a plain buffer is not shareable");
	ferry_buf_free(b);
	cr_assert_eq(ferry_buf_create(&b, 10, FERRY_BUF_SHARED), 0);
	cr_assert_eq(ferry_buf_share(b, &c), 0);
	((char *)ferry_buf_data(b))[3] = 42;
	cr_assert_eq(((char *)ferry_buf_data(c))[3], 42);
	ferry_buf_free(b);
	cr_assert_eq(((char *)ferry_buf_data(c))[3], 42, "memory lives with its last handle");
	ferry_buf_free(c);
}

/* ---- transfer list errors leave every handle as it was ---- */

Test(msg, transfer_errors_are_all_or_nothing)
{
	ferry_port *a, *b, *c, *d;
	cr_assert_eq(ferry_channel(&a, &b, NULL), 0);
	cr_assert_eq(ferry_channel(&c, &d, NULL), 0);
	ferry_buf *x, *y, *sh, *gone;
	cr_assert_eq(ferry_buf_create(&x, 100, 0), 0);
	cr_assert_eq(ferry_buf_create(&y, 1 << 20, 0), 0);
	cr_assert_eq(ferry_buf_create(&sh, 64, FERRY_BUF_SHARED), 0);
	cr_assert_eq(ferry_buf_create(&gone, 8, 0), 0);
	ferry_value *v = ferry_value_array();
	ferry_value_array_push(v, ferry_value_handle(FERRY_VALUE_BUF, x));
	ferry_value_array_push(v, ferry_value_handle(FERRY_VALUE_BUF, y));

	/* detach one buffer for real */
	ferry_buf *g1[] = { gone };
	struct ferry_xfer gx = { .bufs = g1, .nbufs = 1 };
	ferry_value *nul = ferry_value_null();
	cr_assert_eq(ferry_port_post(a, nul, &gx, 0), 0);
	ferry_msg *m = recv_ok(b);
	ferry_msg_free(m);

	struct {
		ferry_buf *bufs[3];
		size_t nb;
		ferry_port *ports[2];
		size_t np;
		int err;
		const char *msg;
	} cases[] = {
		{ { x, y, x }, 3, { 0 }, 0, -EINVAL, "same buffer twice" },
		{ { x, gone }, 2, { 0 }, 0, FERRY_EDETACHED, "already detached" },
		{ { x, sh }, 2, { 0 }, 0, -EINVAL, "shared buffer" },
		{ { x, NULL }, 2, { 0 }, 0, -EINVAL, "NULL" },
		{ { x }, 1, { a }, 1, -EINVAL, "sending port itself" },
		{ { x }, 1, { b }, 1, -EINVAL, "own peer" },
		{ { x }, 1, { c, c }, 2, -EINVAL, "same port twice" },
	};
	for (size_t i = 0; i < sizeof cases / sizeof cases[0]; i++) {
		struct ferry_xfer xf = { .bufs = cases[i].bufs, .nbufs = cases[i].nb,
					 .ports = cases[i].ports, .nports = cases[i].np };
		int rc = ferry_port_post(a, v, &xf, 0);
		cr_assert_eq(rc, cases[i].err, "case %zu: %d %s", i, rc, ferry_errmsg());
		cr_assert(strstr(ferry_errmsg(), cases[i].msg), "case %zu: %s", i, ferry_errmsg());
		cr_assert_eq(ferry_buf_is_detached(x), 0, "case %zu detached x", i);
		cr_assert_eq(ferry_buf_is_detached(y), 0, "case %zu detached y", i);
		cr_assert_eq(ferry_buf_len(y), 1u << 20);
		cr_assert_eq(c->detached, 0);
	}
	/* A port the value references but the list does not name. */
	ferry_value *pv = ferry_value_handle(FERRY_VALUE_PORT, c);
	cr_assert_eq(ferry_port_post(a, pv, NULL, 0), -EINVAL);
	cr_assert(strstr(ferry_errmsg(), "not in the transfer list"), "%s", ferry_errmsg());
	/* A buffer referenced with the wrong kind. */
	ferry_value *wrong = ferry_value_handle(FERRY_VALUE_BUF, sh);
	cr_assert_eq(ferry_port_post(a, wrong, NULL, 0), -EINVAL);
	ferry_value *wrong2 = ferry_value_handle(FERRY_VALUE_SHARED, x);
	cr_assert_eq(ferry_port_post(a, wrong2, NULL, 0), -EINVAL);
	/* A closed port in the list. */
	ferry_port_close(d);
	ferry_port *cl[] = { c };
	struct ferry_xfer cx = { .ports = cl, .nports = 1 };
	ferry_port_close(c);
	cr_assert_eq(ferry_port_post(a, pv, &cx, 0), -EPIPE);
	/* Bad arguments. */
	cr_assert_eq(ferry_port_post(NULL, v, NULL, 0), -EINVAL);
	cr_assert_eq(ferry_port_post(a, NULL, NULL, 0), -EINVAL);
	struct ferry_xfer bad = { .nbufs = 2 };
	cr_assert_eq(ferry_port_post(a, v, &bad, 0), -EINVAL);
	/* Nothing reached the receiver. */
	cr_assert_eq(ferry_port_recv(b, &m, 0), -EAGAIN);
	/* And the good post still works afterwards. */
	ferry_buf *ok[] = { x, y };
	struct ferry_xfer okx = { .bufs = ok, .nbufs = 2 };
	cr_assert_eq(ferry_port_post(a, v, &okx, 0), 0, "%s", ferry_errmsg());
	cr_assert_eq(ferry_buf_is_detached(x), 1);
	cr_assert_eq(ferry_buf_is_detached(y), 1);
	m = recv_ok(b);
	ferry_msg_free(m);

	ferry_value_free(v);
	ferry_value_free(nul);
	ferry_value_free(pv);
	ferry_value_free(wrong);
	ferry_value_free(wrong2);
	ferry_buf_free(x);
	ferry_buf_free(y);
	ferry_buf_free(sh);
	ferry_buf_free(gone);
	ferry_port_destroy(a);
	ferry_port_destroy(b);
	ferry_port_destroy(c);
	ferry_port_destroy(d);
}

/* ---- ports inside messages ---- */

/* Receives a port, reads the 3 messages queued on it, answers on it, and
 * passes it back to the parent. */
static int port_user(ferry_worker_ctx *ctx)
{
	ferry_port *p = ferry_worker_ctx_port(ctx);
	ferry_msg *m;
	if (ferry_port_recv(p, &m, FERRY_FOREVER))
		return 1;
	if (ferry_msg_nports(m) != 1)
		return 2;
	ferry_port *q = ferry_msg_port(m, 0);
	ferry_msg_keep(m, q);
	ferry_msg_free(m);
	for (int i = 0; i < 3; i++) {
		ferry_msg *r;
		if (ferry_port_recv(q, &r, FERRY_FOREVER) || ferry_msg_len(r) != sizeof i ||
		    memcmp(ferry_msg_data(r), &i, sizeof i))
			return 3;
		ferry_msg_free(r);
	}
	if (ferry_port_post_bytes(q, "from worker", 11, FERRY_FOREVER))
		return 4;
	/* Send it home, referenced by the value. */
	int rc = tu_post_port(p, q, FERRY_FOREVER);
	ferry_port_destroy(q);
	return rc ? 5 : 0;
}

static void port_travels(int backend)
{
	ferry_port *keep, *send;
	cr_assert_eq(ferry_channel(&keep, &send, NULL), 0);
	/* Messages queued for the port before it moves go with it. */
	for (int i = 0; i < 3; i++)
		cr_assert_eq(ferry_port_post_bytes(keep, &i, sizeof i, 0), 0);
	ferry_worker *w = spawn(backend, port_user);
	ferry_value *nul = ferry_value_null();
	struct ferry_xfer x = { .ports = &send, .nports = 1 };
	cr_assert_eq(ferry_port_post(ferry_worker_port(w), nul, &x, T10S), 0, "%s", ferry_errmsg());
	/* The sender's handle is detached. */
	cr_assert_eq(ferry_port_post_bytes(send, "x", 1, 0), FERRY_EDETACHED);
	ferry_msg *m;
	cr_assert_eq(ferry_port_recv(send, &m, 0), FERRY_EDETACHED);

	m = recv_ok(keep);
	cr_assert_eq(ferry_msg_len(m), 11);
	cr_assert_eq(memcmp(ferry_msg_data(m), "from worker", 11), 0);
	ferry_msg_free(m);

	m = recv_ok(ferry_worker_port(w));
	enum ferry_value_kind k;
	ferry_port *home = ferry_value_get_handle(ferry_msg_value(m), &k);
	cr_assert_eq(k, FERRY_VALUE_PORT);
	cr_assert_eq(ferry_msg_port(m, 0), home);
	cr_assert_eq(ferry_msg_keep(m, home), 0);
	ferry_msg_free(m);
	cr_assert_eq(ferry_port_post_bytes(home, "back", 4, 0), 0);
	m = recv_ok(keep);
	cr_assert_eq(ferry_msg_len(m), 4);
	ferry_msg_free(m);

	struct ferry_worker_status st;
	cr_assert_eq(ferry_worker_join(w, &st, T10S), 0);
	cr_assert_eq(st.code, 0, "worker said %d", st.code);
	ferry_worker_destroy(w);
	ferry_port_destroy(home);
	/* home's channel end was destroyed: keep sees the close. */
	cr_assert_eq(ferry_port_recv(keep, &m, T10S), -EPIPE);
	ferry_port_destroy(keep);
	ferry_port_destroy(send);
	ferry_value_free(nul);
}

Test(msg, port_travels_to_thread_and_back) { port_travels(FERRY_THREAD); }
Test(msg, port_travels_to_process_and_back) { port_travels(FERRY_PROCESS); }

/* A relay: takes a port from its parent and hands it to a worker of the
 * other backend, which uses it; messages are in flight all along. */
static int hop_leaf(ferry_worker_ctx *ctx)
{
	ferry_msg *m;
	if (ferry_port_recv(ferry_worker_ctx_port(ctx), &m, FERRY_FOREVER))
		return 1;
	ferry_port *q = ferry_msg_port(m, 0);
	if (!q)
		return 2;
	for (int i = 0; i < 100; i++) {
		ferry_msg *r;
		if (ferry_port_recv(q, &r, FERRY_FOREVER) || *(const int *)ferry_msg_data(r) != i)
			return 3;
		ferry_msg_free(r);
		if (ferry_port_post_bytes(q, &i, sizeof i, FERRY_FOREVER))
			return 4;
	}
	ferry_msg_free(m); /* frees q: the channel closes */
	return 0;
}

static int hop_relay(ferry_worker_ctx *ctx)
{
	ferry_msg *m;
	if (ferry_port_recv(ferry_worker_ctx_port(ctx), &m, FERRY_FOREVER))
		return 1;
	ferry_port *q = ferry_msg_port(m, 0);
	int other = ferry_worker_ctx_backend(ctx) == FERRY_THREAD ? FERRY_PROCESS : FERRY_THREAD;
	struct ferry_worker_opts o = { .backend = other, .entry = hop_leaf };
	ferry_worker *leaf;
	if (ferry_worker_spawn(&leaf, &o))
		return 2;
	ferry_value *nul = ferry_value_null();
	struct ferry_xfer x = { .ports = &q, .nports = 1 };
	int rc = ferry_port_post(ferry_worker_port(leaf), nul, &x, FERRY_FOREVER);
	ferry_value_free(nul);
	ferry_msg_free(m);
	if (rc)
		return 3;
	struct ferry_worker_status st;
	if (ferry_worker_join(leaf, &st, FERRY_FOREVER) || st.code || st.signal)
		return 10 + st.code;
	ferry_worker_destroy(leaf);
	return 0;
}

static void hop(int backend)
{
	ferry_port *keep, *send;
	cr_assert_eq(ferry_channel(&keep, &send, NULL), 0);
	ferry_worker *w = spawn(backend, hop_relay);
	/* Half the messages before the port moves, half while it is moving. */
	for (int i = 0; i < 50; i++)
		cr_assert_eq(ferry_port_post_bytes(keep, &i, sizeof i, 0), 0);
	ferry_value *nul = ferry_value_null();
	struct ferry_xfer x = { .ports = &send, .nports = 1 };
	cr_assert_eq(ferry_port_post(ferry_worker_port(w), nul, &x, T10S), 0, "%s", ferry_errmsg());
	for (int i = 50; i < 100; i++)
		cr_assert_eq(ferry_port_post_bytes(keep, &i, sizeof i, T10S), 0);
	for (int i = 0; i < 100; i++) {
		ferry_msg *m = recv_ok(keep);
		cr_assert_eq(*(const int *)ferry_msg_data(m), i, "order broken at %d", i);
		ferry_msg_free(m);
	}
	ferry_msg *m;
	cr_assert_eq(ferry_port_recv(keep, &m, T10S), -EPIPE);
	struct ferry_worker_status st;
	cr_assert_eq(ferry_worker_join(w, &st, T10S), 0);
	cr_assert_eq(st.code, 0, "relay said %d", st.code);
	ferry_worker_destroy(w);
	ferry_value_free(nul);
	ferry_port_destroy(keep);
	ferry_port_destroy(send);
}

Test(msg, port_hops_thread_process_thread) { hop(FERRY_THREAD); }
Test(msg, port_hops_process_thread_process) { hop(FERRY_PROCESS); }

/* ---- large messages ---- */

static void large_clone(int backend)
{
	ferry_worker *w = spawn(backend, echo_values);
	ferry_port *p = ferry_worker_port(w);
	size_t n = 3u << 20; /* far above the ring's record limit */
	ferry_value *v = ferry_value_map();
	ferry_value *bytes = ferry_value_bytes(NULL, n);
	unsigned char *d = ferry_value_get_bytes(bytes, NULL);
	for (size_t i = 0; i < n; i++)
		d[i] = (unsigned char)(i * 13);
	ferry_value_map_set(v, "blob", bytes);
	ferry_value_map_set(v, "tag", ferry_value_str("large"));
	cr_assert_gt(n, ferry_port_max_message(p));
	cr_assert_eq(ferry_port_post(p, v, NULL, T10S), 0, "%s", ferry_errmsg());
	ferry_msg *m = recv_ok(p);
	cr_assert(ferry_value_equal(v, ferry_msg_value(m)), "the large clone differs");
	ferry_msg_free(m);
	ferry_value_free(v);
	finish(w);
}

Test(msg, large_clone_thread) { large_clone(FERRY_THREAD); }
Test(msg, large_clone_process) { large_clone(FERRY_PROCESS); }

Test(msg, max_message_limits_clones)
{
	ferry_port *a, *b;
	struct ferry_channel_opts o = { .max_message = 1000 };
	cr_assert_eq(ferry_channel(&a, &b, &o), 0);
	ferry_value *small = ferry_value_bytes(NULL, 100);
	ferry_value *big = ferry_value_bytes(NULL, 5000);
	cr_assert_eq(ferry_port_post(a, small, NULL, 0), 0);
	cr_assert_eq(ferry_port_post(a, big, NULL, 0), -EMSGSIZE);
	cr_assert(strstr(ferry_errmsg(), "max_message"), "%s", ferry_errmsg());
	ferry_msg *m = recv_ok(b);
	ferry_msg_free(m);
	cr_assert_eq(ferry_port_recv(b, &m, 0), -EAGAIN);
	ferry_value_free(small);
	ferry_value_free(big);
	ferry_port_destroy(a);
	ferry_port_destroy(b);
}

/* ---- a message that does not decode: messageerror, then the next ---- */

static void post_garbage(ferry_port *a, const void *body, size_t len)
{
	void *w;
	cr_assert_eq(ferry_ring_spsc_reserve(a->tx, sizeof(struct wire_hdr) + len, &w), 0);
	struct wire_hdr wh = { .kind = WIRE_CLONE };
	memcpy(w, &wh, sizeof wh);
	memcpy((char *)w + sizeof wh, body, len);
	ferry_ring_spsc_commit(a->tx, sizeof wh + len);
	ferry_ec_notify(&a->txd->data_ec);
}

Test(msg, malformed_clone_is_messageerror_then_next_arrives)
{
	ferry_port *a, *b;
	cr_assert_eq(ferry_channel(&a, &b, NULL), 0);
	unsigned char junk[200];
	for (size_t i = 0; i < sizeof junk; i++)
		junk[i] = (unsigned char)(i * 97 + 3);
	/* a header claiming absurd counts, a truncated header, random bytes,
	 * a valid header with broken CBOR, and announced fds that never came */
	uint32_t hdr[10] = { 0 };
	post_garbage(a, junk, 5);
	post_garbage(a, junk, sizeof junk);
	hdr[0] = 2000000; /* nhandles */
	post_garbage(a, hdr, sizeof hdr);
	memset(hdr, 0, sizeof hdr);
	hdr[6] = 4; /* cbor_len 4 of a body of 4 */
	hdr[4] = 4;
	unsigned char bad_cbor[sizeof hdr + 4];
	memcpy(bad_cbor, hdr, sizeof hdr);
	memcpy(bad_cbor + sizeof hdr, "\xff\xff\xff\xff", 4);
	post_garbage(a, bad_cbor, sizeof bad_cbor);
	memset(hdr, 0, sizeof hdr);
	hdr[1] = 3; /* nfds */
	hdr[2] = 1; /* fd_seq */
	post_garbage(a, hdr, sizeof hdr);

	ferry_value *ok = ferry_value_str("still fine");
	cr_assert_eq(ferry_port_post(a, ok, NULL, 0), 0);
	ferry_msg *m;
	for (int i = 0; i < 5; i++) {
		int rc = ferry_port_recv(b, &m, 0);
		cr_assert_eq(rc, -EBADMSG, "garbage %d: %d %s", i, rc, ferry_errmsg());
		cr_assert(strlen(ferry_errmsg()) > 0);
		cr_assert_null(m);
	}
	m = recv_ok(b);
	cr_assert(ferry_value_equal(ok, ferry_msg_value(m)));
	ferry_msg_free(m);
	ferry_value_free(ok);
	ferry_port_destroy(a);
	ferry_port_destroy(b);
}

Test(msg, raw_and_clone_interleave_in_order)
{
	ferry_port *a, *b;
	cr_assert_eq(ferry_channel(&a, &b, NULL), 0);
	for (int i = 0; i < 50; i++) {
		if (i % 2) {
			cr_assert_eq(ferry_port_post_bytes(a, &i, sizeof i, 0), 0);
		} else {
			ferry_value *v = ferry_value_int(i);
			cr_assert_eq(ferry_port_post(a, v, NULL, 0), 0);
			ferry_value_free(v);
		}
	}
	for (int i = 0; i < 50; i++) {
		ferry_msg *m = recv_ok(b);
		int64_t got;
		if (i % 2)
			got = *(const int *)ferry_msg_data(m);
		else
			cr_assert_eq(ferry_value_get_int(ferry_msg_value(m), &got), 0);
		cr_assert_eq(got, i);
		ferry_msg_free(m);
	}
	ferry_port_destroy(a);
	ferry_port_destroy(b);
}

/* Large clones spill into segments that are reused, not made per message:
 * the number of memfd mappings stays bounded however many go by. */
Test(msg, spill_segments_are_reused)
{
	ferry_port *a, *b;
	cr_assert_eq(ferry_channel(&a, &b, NULL), 0);
	int before = tu_count_maps();
	for (int i = 0; i < 30; i++) {
		size_t n = (size_t)(1 + i % 3) << 20;
		ferry_value *v = ferry_value_bytes(NULL, n);
		unsigned char *d = ferry_value_get_bytes(v, NULL);
		memset(d, i, n);
		cr_assert_eq(ferry_port_post(a, v, NULL, T10S), 0, "%s", ferry_errmsg());
		ferry_msg *m = recv_ok(b);
		size_t len;
		const unsigned char *got = ferry_value_get_bytes(ferry_msg_value(m), &len);
		cr_assert_eq(len, n);
		cr_assert_eq(got[0], (unsigned char)i);
		cr_assert_eq(got[n - 1], (unsigned char)i);
		ferry_msg_free(m);
		ferry_value_free(v);
		/* sender cache + receiver cache, at most */
		cr_assert_leq(tu_count_maps(), before + 2 * FERRY_SPILL_CACHE,
			      "spill segments pile up: %d mappings", tu_count_maps());
	}
	ferry_port_destroy(a);
	ferry_port_destroy(b);
}

/* A clone bigger than the sender's scratch is encoded in a second pass where
 * it goes: straight into a spill segment, or (a big ring) into a grown
 * scratch. Both keep the handle table in the order of the first pass. */
static void big_cbor_with_handles(size_t ring_bytes, size_t n)
{
	ferry_port *a, *b;
	struct ferry_channel_opts o = { .ring_bytes = ring_bytes };
	cr_assert_eq(ferry_channel(&a, &b, &o), 0, "%s", ferry_errmsg());
	for (int round = 0; round < 3; round++) {
		ferry_buf *b1, *b2;
		cr_assert_eq(ferry_buf_create(&b1, 100, 0), 0);
		cr_assert_eq(ferry_buf_create(&b2, 3000, 0), 0);
		memset(ferry_buf_data(b1), 0x11, 100);
		memset(ferry_buf_data(b2), 0x22, 3000);
		ferry_value *v = ferry_value_array();
		ferry_value_array_push(v, ferry_value_handle(FERRY_VALUE_BUF, b2));
		ferry_value *bytes = ferry_value_bytes(NULL, n);
		unsigned char *d = ferry_value_get_bytes(bytes, NULL);
		for (size_t i = 0; i < n; i++)
			d[i] = (unsigned char)(i * 7 + (size_t)round);
		ferry_value_array_push(v, bytes);
		ferry_value_array_push(v, ferry_value_handle(FERRY_VALUE_BUF, b1));
		ferry_value_array_push(v, ferry_value_str("end"));
		cr_assert_eq(ferry_port_post(a, v, NULL, T10S), 0, "%s", ferry_errmsg());
		ferry_msg *m = recv_ok(b);
		const ferry_value *got = ferry_msg_value(m);
		cr_assert_eq(ferry_value_len(got), 4);
		size_t len;
		const unsigned char *gb = ferry_value_get_bytes(ferry_value_array_get(got, 1), &len);
		cr_assert_eq(len, n);
		cr_assert_eq(memcmp(gb, d, n), 0, "the big bytes differ");
		enum ferry_value_kind k;
		ferry_buf *h0 = ferry_value_get_handle(ferry_value_array_get(got, 0), &k);
		ferry_buf *h2 = ferry_value_get_handle(ferry_value_array_get(got, 2), &k);
		cr_assert_not_null(h0);
		cr_assert_not_null(h2);
		cr_assert_eq(ferry_buf_len(h0), 3000);
		cr_assert_eq(ferry_buf_len(h2), 100);
		cr_assert_eq(((unsigned char *)ferry_buf_data(h0))[2999], 0x22);
		cr_assert_eq(((unsigned char *)ferry_buf_data(h2))[99], 0x11);
		ferry_msg_free(m);
		ferry_value_free(v);
		ferry_buf_free(b1);
		ferry_buf_free(b2);
	}
	ferry_port_destroy(a);
	ferry_port_destroy(b);
}

Test(msg, big_clone_encoded_in_place_in_spill) { big_cbor_with_handles(0, 700u * 1024); }
Test(msg, big_clone_in_a_big_ring) { big_cbor_with_handles(1u << 20, 200u * 1024); }

/* A shared buffer that arrives twice is mapped once: the second message
 * finds the first one's mapping (same inode), both handles see the same
 * pages, and after both are freed no mapping or fd is left. The worker
 * checks its side and answers with a code in a raw message. */
static int shared_twice(ferry_worker_ctx *ctx)
{
	ferry_port *p = ferry_worker_ctx_port(ctx);
	int maps0 = tu_count_maps(), fds0 = tu_count_fds();
	ferry_msg *m1, *m2;
	if (ferry_port_recv(p, &m1, T10S) || ferry_port_recv(p, &m2, T10S))
		return 1;
	enum ferry_value_kind k1, k2;
	ferry_buf *h1 = ferry_value_get_handle(ferry_msg_value(m1), &k1);
	ferry_buf *h2 = ferry_value_get_handle(ferry_msg_value(m2), &k2);
	char code = 0;
	if (!h1 || !h2 || k1 != FERRY_VALUE_SHARED || k2 != FERRY_VALUE_SHARED || h1 == h2)
		code = 2;
	else if (ferry_buf_data(h1) != ferry_buf_data(h2))
		code = 3; /* mapped twice */
	else if (tu_count_maps() > maps0 + 1 || tu_count_fds() > fds0 + 1)
		code = 4; /* one mapping and its fd (none: a thread maps it already) */
	if (!code) {
		uint32_t *w = ferry_buf_data(h2);
		atomic_store((_Atomic uint32_t *)&w[1], 7u);
		if (atomic_load((_Atomic uint32_t *)ferry_buf_data(h1)) != 0x5eed)
			code = 5;
	}
	ferry_msg_free(m1);
	ferry_msg_free(m2);
	if (!code && (tu_count_maps() != maps0 || tu_count_fds() != fds0))
		code = 6; /* the mapping outlived both handles */
	ferry_port_post_bytes(p, &code, 1, T10S);
	/* the parent's null ends the loop */
	ferry_msg *m;
	if (ferry_port_recv(p, &m, T10S) == 0)
		ferry_msg_free(m);
	return 0;
}

static void shared_posted_twice(int backend)
{
	ferry_buf *s;
	cr_assert_eq(ferry_buf_create(&s, 8192, FERRY_BUF_SHARED), 0);
	uint32_t *w = ferry_buf_data(s);
	w[0] = 0x5eed;
	ferry_value *v = ferry_value_handle(FERRY_VALUE_SHARED, s);
	ferry_worker *wk = spawn(backend, shared_twice);
	ferry_port *p = ferry_worker_port(wk);
	cr_assert_eq(ferry_port_post(p, v, NULL, T10S), 0, "%s", ferry_errmsg());
	cr_assert_eq(ferry_port_post(p, v, NULL, T10S), 0, "%s", ferry_errmsg());
	ferry_msg *m = recv_ok(p);
	cr_assert_eq(ferry_msg_len(m), 1);
	cr_assert_eq(*(const char *)ferry_msg_data(m), 0, "worker check %d failed",
		     *(const char *)ferry_msg_data(m));
	ferry_msg_free(m);
	cr_assert_eq(atomic_load((_Atomic uint32_t *)&w[1]), 7u, "the worker's write is not visible");
	finish(wk);
	ferry_value_free(v);
	ferry_buf_free(s);
}

Test(msg, shared_posted_twice_mapped_once_thread) { shared_posted_twice(FERRY_THREAD); }
Test(msg, shared_posted_twice_mapped_once_process) { shared_posted_twice(FERRY_PROCESS); }

/* ---- spilled bodies handed over within one process ---- */

#define HAND_BYTES ((size_t)1 << 20)

static void hand_fill(ferry_buf *b, unsigned char seed)
{
	unsigned char *d = ferry_buf_data(b);
	for (size_t i = 0; i < ferry_buf_len(b); i++)
		d[i] = (unsigned char)(seed + i * 7);
}

static int hand_holds(const ferry_buf *b, unsigned char seed)
{
	const unsigned char *d = ferry_buf_data(b);
	if (!d || ferry_buf_len(b) != HAND_BYTES)
		return 0;
	for (size_t i = 0; i < HAND_BYTES; i++)
		if (d[i] != (unsigned char)(seed + i * 7))
			return 0;
	return 1;
}

static ferry_buf *hand_buf(const ferry_msg *m)
{
	enum ferry_value_kind k = FERRY_VALUE_UNDEFINED;
	ferry_buf *h = ferry_value_get_handle(ferry_msg_value(m), &k);
	cr_assert(h && k == FERRY_VALUE_BUF, "the message holds no buffer");
	return h;
}

/* A buffer received in place is a segment's (the sender's spill segment),
 * one copied out is the heap's. */
static int handed_over(const ferry_buf *h)
{
	return ferry__buf_seg(h) != NULL;
}

/* The next message on @p holds a big buffer filled with @seed. */
static void expect_back(ferry_port *p, unsigned char seed)
{
	ferry_msg *back = recv_ok(p);
	cr_assert(hand_holds(hand_buf(back), seed), "the moved buffer came back different");
	ferry_msg_free(back);
}

/* Both ends in this process: the big buffer is read in place, it is the
 * snapshot of the post (the sender's later writes do not reach it), and the
 * sender does not reuse its segment while the receiver holds the buffer. */
Test(msg, big_clone_handed_over_in_process)
{
	ferry_port *a, *b;
	cr_assert_eq(ferry_channel(&a, &b, NULL), 0);
	ferry_buf *src;
	cr_assert_eq(ferry_buf_create(&src, HAND_BYTES, 0), 0);
	ferry_value *v = ferry_value_handle(FERRY_VALUE_BUF, src);
	ferry_msg *held[6];
	for (int i = 0; i < 6; i++) {
		hand_fill(src, (unsigned char)i);
		cr_assert_eq(ferry_port_post(a, v, NULL, T10S), 0, "%s", ferry_errmsg());
		memset(ferry_buf_data(src), 0xee, HAND_BYTES); /* after the post: not sent */
		held[i] = recv_ok(b);
		ferry_buf *h = hand_buf(held[i]);
		cr_assert(handed_over(h), "message %d was copied out", i);
		cr_assert(ferry_buf_is_shared(h) == 0);
		/* every earlier one is intact: its segment was not reused */
		for (int j = 0; j <= i; j++)
			cr_assert(hand_holds(hand_buf(held[j]), (unsigned char)j),
				  "message %d changed after message %d", j, i);
	}
	/* the receiver may write its buffer like any other */
	memset(ferry_buf_data(hand_buf(held[0])), 1, HAND_BYTES);
	cr_assert(hand_holds(hand_buf(held[1]), 1));
	for (int i = 0; i < 6; i++)
		ferry_msg_free(held[i]);
	/* and once they are freed, the segments are reused: no pile-up */
	int maps = tu_count_maps();
	for (int i = 0; i < 20; i++) {
		hand_fill(src, (unsigned char)(i + 9));
		cr_assert_eq(ferry_port_post(a, v, NULL, T10S), 0, "%s", ferry_errmsg());
		ferry_msg *m = recv_ok(b);
		cr_assert(hand_holds(hand_buf(m), (unsigned char)(i + 9)));
		ferry_msg_free(m);
	}
	cr_assert_leq(tu_count_maps(), maps, "spill segments pile up: %d mappings, %d before",
		      tu_count_maps(), maps);
	ferry_value_free(v);
	ferry_buf_free(src);
	ferry_port_destroy(a);
	ferry_port_destroy(b);
}

/* A buffer received in place lives inside a spill segment: moved on, it
 * travels as a copy (never as that segment), to a thread or a process. */
static void handed_over_moves(int backend)
{
	ferry_port *a, *b;
	cr_assert_eq(ferry_channel(&a, &b, NULL), 0);
	ferry_buf *src;
	cr_assert_eq(ferry_buf_create(&src, HAND_BYTES, 0), 0);
	hand_fill(src, 3);
	ferry_value *v = ferry_value_handle(FERRY_VALUE_BUF, src);
	cr_assert_eq(ferry_port_post(a, v, NULL, T10S), 0, "%s", ferry_errmsg());
	ferry_msg *m = recv_ok(b);
	ferry_buf *h = hand_buf(m);
	cr_assert(handed_over(h));
	cr_assert_eq(ferry_msg_keep(m, h), 0);
	ferry_msg_free(m);

	ferry_worker *w = spawn(backend, echo_values);
	ferry_port *p = ferry_worker_port(w);
	ferry_value *hv = ferry_value_handle(FERRY_VALUE_BUF, h);
	ferry_buf *const list[1] = { h };
	struct ferry_xfer x = { .bufs = list, .nbufs = 1 };
	cr_assert_eq(ferry_port_post(p, hv, &x, T10S), 0, "%s", ferry_errmsg());
	cr_assert(ferry_buf_is_detached(h));
	expect_back(p, 3);
	finish(w);
	ferry_value_free(hv);
	ferry_buf_free(h);
	ferry_value_free(v);
	ferry_buf_free(src);
	ferry_port_destroy(a);
	ferry_port_destroy(b);
}

Test(msg, handed_over_buffer_moves_as_a_copy_thread) { handed_over_moves(FERRY_THREAD); }
Test(msg, handed_over_buffer_moves_as_a_copy_process) { handed_over_moves(FERRY_PROCESS); }

/* The worker takes port b1 (from the first message), receives one big clone
 * on it, and sends b1 back. */
static int take_big_return_port(ferry_worker_ctx *ctx)
{
	ferry_port *p = ferry_worker_ctx_port(ctx);
	ferry_msg *m, *big;
	if (ferry_port_recv(p, &m, T10S))
		return 1;
	ferry_port *q = ferry_msg_port(m, 0);
	if (!q || ferry_msg_keep(m, q))
		return 2;
	ferry_msg_free(m);
	if (ferry_port_recv(q, &big, T10S))
		return 3;
	ferry_msg_free(big);
	int rc = tu_post_port(p, q, T10S);
	ferry_port_destroy(q);
	if (rc)
		return 4;
	/* the parent's null ends it */
	if (ferry_port_recv(p, &m, T10S) == 0)
		ferry_msg_free(m);
	return 0;
}

/* A port that travelled in a message may have left a dup of its control
 * socket behind (a peek at the socket installs the spill fds queued on it),
 * and a spill segment whose fd once reached another process may still be
 * mapped writable there: either way the receiver copies out, also once the
 * port is back in the sender's process, on both backends. */
static void spill_seen_elsewhere(int backend)
{
	ferry_worker *w = spawn(backend, take_big_return_port);
	ferry_port *p = ferry_worker_port(w);
	ferry_port *a, *b;
	cr_assert_eq(ferry_channel(&a, &b, NULL), 0);
	cr_assert_eq(tu_post_port(p, b, T10S), 0, "%s", ferry_errmsg());
	ferry_port_destroy(b);

	ferry_buf *src;
	cr_assert_eq(ferry_buf_create(&src, HAND_BYTES, 0), 0);
	ferry_value *v = ferry_value_handle(FERRY_VALUE_BUF, src);
	hand_fill(src, 5);
	cr_assert_eq(ferry_port_post(a, v, NULL, T10S), 0, "%s", ferry_errmsg());
	ferry_msg *m = recv_ok(p); /* b, back from the worker */
	ferry_port *q = ferry_msg_port(m, 0);
	cr_assert_not_null(q);
	cr_assert_eq(ferry_msg_keep(m, q), 0);
	ferry_msg_free(m);

	hand_fill(src, 6);
	cr_assert_eq(ferry_port_post(a, v, NULL, T10S), 0, "%s", ferry_errmsg());
	m = recv_ok(q);
	ferry_buf *h = hand_buf(m);
	cr_assert(hand_holds(h, 6), "the second clone is different");
	cr_assert(!handed_over(h), "%s backend: the buffer was read in place",
		  backend == FERRY_THREAD ? "thread" : "process");
	ferry_msg_free(m);
	finish(w);
	ferry_value_free(v);
	ferry_buf_free(src);
	ferry_port_destroy(a);
	ferry_port_destroy(q);
}

Test(msg, spill_to_a_port_back_from_a_thread_is_copied) { spill_seen_elsewhere(FERRY_THREAD); }
Test(msg, spill_to_a_port_back_from_a_process_is_copied) { spill_seen_elsewhere(FERRY_PROCESS); }

/* The worker receives big clones on its own port and answers, per message,
 * 'h' (read in place) or 'c' (copied out), or 'x' (content wrong). */
static int report_hand(ferry_worker_ctx *ctx)
{
	ferry_port *p = ferry_worker_ctx_port(ctx);
	for (;;) {
		ferry_msg *m;
		if (ferry_port_recv(p, &m, T10S))
			return 1;
		enum ferry_value_kind k = FERRY_VALUE_UNDEFINED;
		ferry_buf *h = ferry_value_get_handle(ferry_msg_value(m), &k);
		if (!h) { /* the parent's null */
			ferry_msg_free(m);
			return 0;
		}
		char code = k != FERRY_VALUE_BUF || !hand_holds(h, 8) ? 'x' : handed_over(h) ? 'h' : 'c';
		ferry_msg_free(m);
		if (ferry_port_post_bytes(p, &code, 1, T10S))
			return 2;
	}
}

/* Post @v on @p; the worker's one-byte answer ('?' if it is not one byte).
 * The source buffer is scribbled on right after the post, which must not
 * reach what was sent. */
static char post_for_code(ferry_port *p, const ferry_value *v)
{
	cr_assert_eq(ferry_port_post(p, v, NULL, T10S), 0, "%s", ferry_errmsg());
	enum ferry_value_kind k;
	ferry_buf *src = ferry_value_get_handle(v, &k);
	memset(ferry_buf_data(src), 0xee, ferry_buf_len(src));
	ferry_msg *m = recv_ok(p);
	char code = ferry_msg_len(m) == 1 ? *(const char *)ferry_msg_data(m) : '?';
	ferry_msg_free(m);
	return code;
}

/* A worker thread's port never left the process: it reads big clones in
 * place. A worker process always copies them out. */
static void worker_big_clones(int backend)
{
	ferry_worker *w = spawn(backend, report_hand);
	ferry_port *p = ferry_worker_port(w);
	ferry_buf *src;
	cr_assert_eq(ferry_buf_create(&src, HAND_BYTES, 0), 0);
	ferry_value *v = ferry_value_handle(FERRY_VALUE_BUF, src);
	for (int i = 0; i < 5; i++) {
		hand_fill(src, 8);
		char code = post_for_code(p, v);
		cr_assert_eq(code, backend == FERRY_THREAD ? 'h' : 'c', "message %d: worker says %c", i,
			     code);
	}
	finish(w);
	ferry_value_free(v);
	ferry_buf_free(src);
}

Test(msg, worker_thread_reads_big_clones_in_place) { worker_big_clones(FERRY_THREAD); }
Test(msg, worker_process_copies_big_clones_out) { worker_big_clones(FERRY_PROCESS); }

/* ---- zero-copy receive (ferry_port_set_zero_copy) ---- */

#define ZC_KEPT 6

/* The worker turns zero-copy on, then: keeps ZC_KEPT big clones (seeds 0..),
 * answering per message 'h' (in place, it and every kept one intact), 'c'
 * (copied out, all intact) or 'x'; frees them; answers 20 more (seeds 20..)
 * the same way; moves the buffer of one last clone (seed 50) back to the
 * parent; ends at the parent's null. */
static int zc_worker(ferry_worker_ctx *ctx)
{
	ferry_port *p = ferry_worker_ctx_port(ctx);
	if (ferry_port_set_zero_copy(p, 1))
		return 1;
	ferry_msg *kept[ZC_KEPT];
	for (int i = 0; i < ZC_KEPT + 21; i++) {
		ferry_msg *m;
		if (ferry_port_recv(p, &m, T10S))
			return 2;
		enum ferry_value_kind k = FERRY_VALUE_UNDEFINED;
		ferry_buf *h = ferry_value_get_handle(ferry_msg_value(m), &k);
		if (!h || k != FERRY_VALUE_BUF)
			return 3;
		if (i == ZC_KEPT + 20) {
			/* moved on: it travels as a copy, and lets go of the segment */
			ferry_value *v = ferry_value_handle(FERRY_VALUE_BUF, h);
			ferry_buf *const list[1] = { h };
			struct ferry_xfer x = { .bufs = list, .nbufs = 1 };
			int rc = v ? ferry_port_post(p, v, &x, T10S) : -ENOMEM;
			ferry_value_free(v);
			int detached = ferry_buf_is_detached(h) == 1;
			ferry_msg_free(m);
			if (rc || !detached)
				return 4;
			break;
		}
		unsigned char seed = (unsigned char)(i < ZC_KEPT ? i : i - ZC_KEPT + 20);
		int ok = hand_holds(h, seed);
		if (i < ZC_KEPT) {
			kept[i] = m;
			for (int j = 0; j < i; j++)
				ok = ok && hand_holds(hand_buf(kept[j]), (unsigned char)j);
		}
		char code = !ok ? 'x' : handed_over(h) ? 'h' : 'c';
		if (i >= ZC_KEPT)
			ferry_msg_free(m);
		if (i == ZC_KEPT - 1)
			for (int j = 0; j < ZC_KEPT; j++)
				ferry_msg_free(kept[j]);
		if (ferry_port_post_bytes(p, &code, 1, T10S))
			return 5;
	}
	ferry_msg *m;
	if (ferry_port_recv(p, &m, T10S) == 0) /* the parent's null */
		ferry_msg_free(m);
	return 0;
}

/* A port set to zero-copy reads big clones in place on both backends: each
 * one is the snapshot of its post (the sender's later writes do not reach it,
 * nor do its later messages while the receiver keeps it), the segments are
 * reused once let go of (no pile-up at the sender), and a buffer moved on
 * arrives whole. */
static void zero_copy_worker(int backend)
{
	ferry_worker *w = spawn(backend, zc_worker);
	ferry_port *p = ferry_worker_port(w);
	ferry_buf *src;
	cr_assert_eq(ferry_buf_create(&src, HAND_BYTES, 0), 0);
	ferry_value *v = ferry_value_handle(FERRY_VALUE_BUF, src);
	int maps = 0;
	for (int i = 0; i < ZC_KEPT + 20; i++) {
		hand_fill(src, (unsigned char)(i < ZC_KEPT ? i : i - ZC_KEPT + 20));
		char code = post_for_code(p, v);
		cr_assert_eq(code, 'h', "message %d: the worker says %c", i, code);
		if (i == ZC_KEPT + 4)
			maps = tu_count_maps();
	}
	cr_assert_leq(tu_count_maps(), maps, "spill segments pile up: %d mappings, %d before",
		      tu_count_maps(), maps);
	hand_fill(src, 50);
	cr_assert_eq(ferry_port_post(p, v, NULL, T10S), 0, "%s", ferry_errmsg());
	expect_back(p, 50);
	finish(w);
	ferry_value_free(v);
	ferry_buf_free(src);
}

Test(msg, zero_copy_reads_big_clones_in_place_thread) { zero_copy_worker(FERRY_THREAD); }
Test(msg, zero_copy_reads_big_clones_in_place_process) { zero_copy_worker(FERRY_PROCESS); }

/* A child forked while the parent holds buffers taken in place has copies
 * of their handles: its frees do not give the pages back to the sender,
 * which goes on leaving them alone while the parent holds them. */
Test(msg, zero_copy_holds_survive_a_fork)
{
	ferry_worker *w = spawn(FERRY_PROCESS, echo_values);
	ferry_port *p = ferry_worker_port(w);
	cr_assert_eq(ferry_port_set_zero_copy(p, 1), 0);
	ferry_buf *src;
	cr_assert_eq(ferry_buf_create(&src, HAND_BYTES, 0), 0);
	ferry_value *v = ferry_value_handle(FERRY_VALUE_BUF, src);
	ferry_msg *kept[2];
	for (int i = 0; i < 2; i++) {
		hand_fill(src, (unsigned char)(60 + i));
		cr_assert_eq(ferry_port_post(p, v, NULL, T10S), 0, "%s", ferry_errmsg());
		kept[i] = recv_ok(p);
		cr_assert(handed_over(hand_buf(kept[i])), "echo %d was copied out", i);
	}
	pid_t pid = fork();
	cr_assert_geq(pid, 0);
	if (pid == 0) {
		ferry_msg_free(kept[0]);
		ferry_msg_free(kept[1]);
		_exit(0);
	}
	cr_assert_eq(tu_wait(pid, 10000), 0);
	for (int i = 0; i < 2 * FERRY_SPILL_CACHE; i++) {
		hand_fill(src, (unsigned char)(70 + i));
		cr_assert_eq(ferry_port_post(p, v, NULL, T10S), 0, "%s", ferry_errmsg());
		ferry_msg *m = recv_ok(p);
		cr_assert(hand_holds(hand_buf(m), (unsigned char)(70 + i)));
		ferry_msg_free(m);
		for (int j = 0; j < 2; j++)
			cr_assert(hand_holds(hand_buf(kept[j]), (unsigned char)(60 + j)),
				  "held echo %d changed after message %d", j, i);
	}
	ferry_msg_free(kept[0]);
	ferry_msg_free(kept[1]);
	finish(w);
	ferry_value_free(v);
	ferry_buf_free(src);
}

Test(msg, set_zero_copy_arguments)
{
	cr_expect_eq(ferry_port_set_zero_copy(NULL, 1), -EINVAL);
	cr_expect(strstr(ferry_errmsg(), "NULL") != NULL, "%s", ferry_errmsg());
	ferry_port *a, *b, *c, *d;
	cr_assert_eq(ferry_channel(&a, &b, NULL), 0);
	cr_assert_eq(ferry_channel(&c, &d, NULL), 0);
	cr_expect_eq(ferry_port_set_zero_copy(b, 1), 0);
	cr_expect_eq(ferry_port_set_zero_copy(b, 0), 0);
	/* d travels to b's side: the old handle is detached */
	cr_assert_eq(tu_post_port(a, d, T10S), 0, "%s", ferry_errmsg());
	cr_expect_eq(ferry_port_set_zero_copy(d, 1), FERRY_EDETACHED);
	ferry_msg *m = recv_ok(b);
	ferry_msg_free(m);
	ferry_port_destroy(a);
	ferry_port_destroy(b);
	ferry_port_destroy(c);
	ferry_port_destroy(d);
}

/* A fork copies every spill segment alive at that moment (fd and mapping)
 * into the child: from then on they are copied out, also in the parent. */
Test(msg, spill_alive_at_fork_is_copied_ever_after)
{
	ferry_port *a, *b;
	cr_assert_eq(ferry_channel(&a, &b, NULL), 0);
	ferry_buf *src;
	cr_assert_eq(ferry_buf_create(&src, HAND_BYTES, 0), 0);
	ferry_value *v = ferry_value_handle(FERRY_VALUE_BUF, src);
	hand_fill(src, 1);
	cr_assert_eq(ferry_port_post(a, v, NULL, T10S), 0, "%s", ferry_errmsg());
	ferry_msg *m = recv_ok(b);
	cr_assert(handed_over(hand_buf(m)));
	ferry_msg_free(m);
	pid_t pid = fork();
	cr_assert_geq(pid, 0);
	if (pid == 0)
		_exit(0);
	int st;
	cr_assert_eq(waitpid(pid, &st, 0), pid);
	hand_fill(src, 2);
	cr_assert_eq(ferry_port_post(a, v, NULL, T10S), 0, "%s", ferry_errmsg());
	m = recv_ok(b);
	cr_assert(hand_holds(hand_buf(m), 2));
	cr_assert(!handed_over(hand_buf(m)), "a segment alive at the fork was read in place");
	ferry_msg_free(m);
	ferry_value_free(v);
	ferry_buf_free(src);
	ferry_port_destroy(a);
	ferry_port_destroy(b);
}

/* A ferry_connect client's end left the listener through a socket: spills
 * to it are copied out even when client and listener are one process; the
 * listener's own end never left, so spills to it are read in place. */
struct hand_client {
	char name[64];
	ferry_port *port;
	int rc;
};

static void *hand_connect(void *arg)
{
	struct hand_client *c = arg;
	c->rc = ferry_connect(&c->port, c->name, NULL, T10S);
	return NULL;
}

Test(msg, spill_to_an_end_handed_out_by_a_listener_is_copied)
{
	struct hand_client c = { .port = NULL };
	snprintf(c.name, sizeof c.name, "ferry-msg-hand-%d", (int)getpid());
	ferry_listener *l;
	cr_assert_eq(ferry_listen(&l, c.name, NULL), 0, "%s", ferry_errmsg());
	pthread_t t;
	cr_assert_eq(pthread_create(&t, NULL, hand_connect, &c), 0);
	ferry_port *mine;
	cr_assert_eq(ferry_accept(l, &mine, T10S), 0, "%s", ferry_errmsg());
	pthread_join(t, NULL);
	cr_assert_eq(c.rc, 0, "connect: %d", c.rc);

	ferry_buf *src;
	cr_assert_eq(ferry_buf_create(&src, HAND_BYTES, 0), 0);
	hand_fill(src, 8);
	ferry_value *v = ferry_value_handle(FERRY_VALUE_BUF, src);
	for (int i = 0; i < 2; i++) {
		cr_assert_eq(ferry_port_post(mine, v, NULL, T10S), 0, "%s", ferry_errmsg());
		ferry_msg *m = recv_ok(c.port);
		cr_assert(hand_holds(hand_buf(m), 8));
		cr_assert(!handed_over(hand_buf(m)), "the client's end read a spill in place");
		ferry_msg_free(m);
		cr_assert_eq(ferry_port_post(c.port, v, NULL, T10S), 0, "%s", ferry_errmsg());
		m = recv_ok(mine);
		cr_assert(hand_holds(hand_buf(m), 8));
		cr_assert(handed_over(hand_buf(m)), "the listener's end copied a spill out");
		ferry_msg_free(m);
	}
	ferry_value_free(v);
	ferry_buf_free(src);
	ferry_port_destroy(c.port);
	ferry_port_destroy(mine);
	ferry_listener_destroy(l);
}

/* ---- small clones encoded straight into the ring (msg.c post_direct) ---- */

/* The reservation a small clone is encoded into is ferry__clone_bound:
 * check that it covers the encoding of values built, shared, decoded. */
Test(msg, clone_bound_covers_the_encoding)
{
	ferry_value *vals[8];
	size_t nv = 0;
	vals[nv++] = sample_object();
	vals[nv++] = ferry_value_int(INT64_MIN);
	vals[nv++] = ferry_value_str("");
	ferry_value *refs = ferry_value_array(); /* one node, many references */
	ferry_value *s = ferry_value_str("x");
	ferry_value_array_push(refs, s);
	for (int i = 0; i < 2000; i++)
		ferry_value_array_push(refs, s);
	vals[nv++] = refs;
	ferry_value *keys = ferry_value_map(); /* long keys, tiny values */
	for (int i = 0; i < 300; i++) {
		char k[80];
		snprintf(k, sizeof k, "%070d", i);
		ferry_value_map_set(keys, k, ferry_value_null());
	}
	vals[nv++] = keys;
	ferry_value *deep = ferry_value_array();
	for (int i = 0; i < 100; i++) {
		ferry_value *a = ferry_value_array();
		ferry_value_array_push(a, deep);
		deep = a;
	}
	vals[nv++] = deep;
	for (size_t i = 0; i < nv; i++) {
		size_t len = 0;
		cr_assert_eq(ferry_clone_size(vals[i], &len, NULL), 0, "%s", ferry_errmsg());
		cr_assert_leq(len, ferry__clone_bound(vals[i]), "value %zu: %zu-byte clone", i, len);
		/* and once decoded (the graph a receiver echoes) */
		unsigned char *buf = malloc(len);
		cr_assert_eq(ferry_clone_encode(vals[i], buf, len, &len, NULL, NULL), 0);
		ferry_value *d = NULL;
		cr_assert_eq(ferry_clone_decode(buf, len, NULL, &d), 0, "%s", ferry_errmsg());
		size_t dl = 0;
		cr_assert_eq(ferry_clone_size(d, &dl, NULL), 0);
		cr_assert_leq(dl, ferry__clone_bound(d), "decoded value %zu", i);
		free(buf);
		ferry_value_free(d);
		ferry_value_free(vals[i]);
	}
}

/* A post whose clone fails to encode, or finds the ring full, leaves the
 * ring as it was (no record, not even a void one); the next one arrives. */
Test(msg, failed_direct_post_leaves_the_ring_untouched)
{
	ferry_port *a, *b;
	cr_assert_eq(ferry_channel(&a, &b, NULL), 0);
	ferry_value *deep = ferry_value_array();
	for (int i = 0; i < FERRY_CLONE_MAX_DEPTH + 5; i++) {
		ferry_value *x = ferry_value_array();
		ferry_value_array_push(x, deep);
		deep = x;
	}
	/* small enough to be encoded in the ring */
	cr_assert_lt(ferry__clone_bound(deep) + 64, ferry_port_max_message(a));
	cr_assert_eq(ferry_port_post(a, deep, NULL, 0), FERRY_ENOTCLONEABLE);
	cr_assert_eq(ferry_ring_spsc_used(a->tx), 0);
	cr_assert_eq(a->txv.resv, 0, "the reservation stayed open");
	ferry_msg *m;
	cr_assert_eq(ferry_port_recv(b, &m, 0), -EAGAIN);

	/* Fill the ring with raw records, then a clone finds no room. */
	char raw[200] = "raw";
	int n = 0;
	while (ferry_port_post_bytes(a, raw, sizeof raw, 0) == 0)
		n++;
	cr_assert_gt(n, 0);
	size_t used = ferry_ring_spsc_used(a->tx);
	ferry_value *v = sample_object();
	cr_assert_eq(ferry_port_post(a, v, NULL, 0), -EAGAIN);
	cr_assert_eq(ferry_ring_spsc_used(a->tx), used);
	for (int i = 0; i < n; i++) {
		m = recv_ok(b);
		cr_assert_eq(ferry_msg_len(m), sizeof raw);
		ferry_msg_free(m);
	}
	cr_assert_eq(ferry_port_recv(b, &m, 0), -EAGAIN);
	/* Room again: the clone goes, whole. */
	cr_assert_eq(ferry_port_post(a, v, NULL, 0), 0, "%s", ferry_errmsg());
	m = recv_ok(b);
	cr_assert(ferry_value_equal(v, ferry_msg_value(m)));
	ferry_msg_free(m);
	ferry_value_free(v);
	ferry_value_free(deep);
	ferry_port_destroy(a);
	ferry_port_destroy(b);
}
