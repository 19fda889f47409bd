/* Ports: posting, receiving, waiting, closing, and every bad argument. */
#include <ferry.h>

#include "util/util.h"

#include <criterion/criterion.h>
#include <errno.h>
#include <pthread.h>
#include <stdatomic.h>
#include <string.h>
#include <time.h>

static struct tu_baseline base;
static ferry_port *a, *b;

static void setup(void)
{
	tu_baseline_take(&base);
	cr_assert_eq(ferry_channel(&a, &b, NULL), 0, "%s", ferry_errmsg());
}

static void teardown(void)
{
	ferry_port_destroy(a);
	ferry_port_destroy(b);
	tu_baseline_check(&base);
}

TestSuite(port, .init = setup, .fini = teardown, .timeout = 30);

static void expect_msg(ferry_port *p, const void *data, size_t len)
{
	ferry_msg *m = NULL;
	int rc = ferry_port_recv(p, &m, 1000000000);
	cr_assert_eq(rc, 0, "recv: %d %s", rc, ferry_errmsg());
	cr_assert_eq(ferry_msg_len(m), len);
	if (len)
		cr_assert_eq(memcmp(ferry_msg_data(m), data, len), 0);
	ferry_msg_free(m);
}

Test(port, carries_bytes_both_ways_in_order)
{
	for (int i = 0; i < 100; i++) {
		cr_assert_eq(ferry_port_post_bytes(a, &i, sizeof i, 0), 0);
		int j = 1000 + i;
		cr_assert_eq(ferry_port_post_bytes(b, &j, sizeof j, 0), 0);
	}
	for (int i = 0; i < 100; i++) {
		expect_msg(b, &i, sizeof i);
		int j = 1000 + i;
		expect_msg(a, &j, sizeof j);
	}
}

Test(port, carries_empty_and_largest_messages)
{
	cr_assert_eq(ferry_port_post_bytes(a, NULL, 0, 0), 0);
	expect_msg(b, NULL, 0);
	size_t max = ferry_port_max_message(a);
	cr_assert_gt(max, 1000);
	char *big = malloc(max);
	for (size_t i = 0; i < max; i++)
		big[i] = (char)(i * 7);
	cr_assert_eq(ferry_port_post_bytes(a, big, max, 0), 0, "%s", ferry_errmsg());
	expect_msg(b, big, max);
	free(big);
}

Test(port, rejects_message_larger_than_ring)
{
	size_t max = ferry_port_max_message(a);
	char *big = calloc(1, max + 1);
	cr_assert_eq(ferry_port_post_bytes(a, big, max + 1, 0), -EMSGSIZE);
	cr_assert(strstr(ferry_errmsg(), "largest message"), "%s", ferry_errmsg());
	free(big);
}

Test(port, recv_on_empty_try_and_timeout)
{
	ferry_msg *m = (ferry_msg *)1;
	cr_assert_eq(ferry_port_recv(b, &m, 0), -EAGAIN);
	cr_assert_null(m);
	int64_t t0 = tu_now_ns();
	cr_assert_eq(ferry_port_recv(b, &m, 20 * 1000000), -ETIMEDOUT);
	cr_assert_geq(tu_now_ns() - t0, 20 * 1000000, "returned before the deadline");
	cr_assert(strlen(ferry_errmsg()) > 0);
}

Test(port, full_ring_try_and_timeout)
{
	ferry_port_destroy(a);
	ferry_port_destroy(b);
	struct ferry_channel_opts o = { .ring_bytes = 4096 };
	cr_assert_eq(ferry_channel(&a, &b, &o), 0);
	char buf[100] = { 0 };
	int n = 0;
	while (ferry_port_post_bytes(a, buf, sizeof buf, 0) == 0)
		n++;
	cr_assert_gt(n, 10);
	cr_assert_eq(ferry_port_post_bytes(a, buf, sizeof buf, 0), -EAGAIN);
	int64_t t0 = tu_now_ns();
	cr_assert_eq(ferry_port_post_bytes(a, buf, sizeof buf, 10 * 1000000), -ETIMEDOUT);
	cr_assert_geq(tu_now_ns() - t0, 10 * 1000000);
	/* Draining one makes room again. */
	expect_msg(b, buf, sizeof buf);
	cr_assert_eq(ferry_port_post_bytes(a, buf, sizeof buf, 0), 0);
}

Test(port, close_delivers_posted_then_epipe)
{
	for (int i = 0; i < 3; i++)
		cr_assert_eq(ferry_port_post_bytes(a, &i, sizeof i, 0), 0);
	ferry_port_close(a);
	ferry_port_close(a); /* idempotent */
	for (int i = 0; i < 3; i++)
		expect_msg(b, &i, sizeof i);
	ferry_msg *m;
	cr_assert_eq(ferry_port_recv(b, &m, FERRY_FOREVER), -EPIPE);
	cr_assert_eq(ferry_port_post_bytes(b, "x", 1, 0), -EPIPE);
	cr_assert_eq(ferry_port_post_bytes(a, "x", 1, 0), -EPIPE);
	cr_assert_eq(ferry_port_recv(a, &m, 0), -EPIPE);
	cr_assert(strlen(ferry_errmsg()) > 0);
}

struct blocked {
	ferry_port *p;
	int mode;
	atomic_int rc;
	atomic_int entered;
};

static void *recv_forever(void *arg)
{
	struct blocked *bl = arg;
	ferry_msg *m = NULL;
	atomic_store(&bl->entered, 1);
	int rc = ferry_port_recv(bl->p, &m, FERRY_FOREVER);
	ferry_msg_free(m);
	atomic_store(&bl->rc, rc);
	return NULL;
}

static void close_wakes_receiver(int mode)
{
	struct blocked bl = { .p = b };
	atomic_init(&bl.rc, 1);
	cr_assert_eq(ferry_port_set_wait(b, mode, 0), 0);
	pthread_t t;
	pthread_create(&t, NULL, recv_forever, &bl);
	while (!atomic_load(&bl.entered))
		sched_yield();
	struct timespec ts = { 0, 30 * 1000000 }; /* let it reach its sleep */
	nanosleep(&ts, NULL);
	ferry_port_close(a);
	pthread_join(t, NULL);
	cr_assert_eq(atomic_load(&bl.rc), -EPIPE);
}

Test(port, close_wakes_blocked_receiver_block_mode)
{
	close_wakes_receiver(FERRY_WAIT_BLOCK);
}

Test(port, close_wakes_blocked_receiver_adaptive_mode)
{
	close_wakes_receiver(FERRY_WAIT_ADAPTIVE);
}

Test(port, close_wakes_blocked_receiver_spin_mode)
{
	close_wakes_receiver(FERRY_WAIT_SPIN);
}

struct stream {
	ferry_port *p;
	int n;
	int mode;
	atomic_int bad;
};

static void *consume(void *arg)
{
	struct stream *s = arg;
	ferry_port_set_wait(s->p, s->mode, 0);
	for (int i = 0; i < s->n; i++) {
		ferry_msg *m;
		int rc = ferry_port_recv(s->p, &m, 10LL * 1000000000);
		if (rc || ferry_msg_len(m) != sizeof(int) || *(const int *)ferry_msg_data(m) != i) {
			atomic_store(&s->bad, 1);
			ferry_msg_free(m);
			return NULL;
		}
		ferry_msg_free(m);
	}
	return NULL;
}

static void stream_between_threads(int mode, size_t ring)
{
	ferry_port_destroy(a);
	ferry_port_destroy(b);
	struct ferry_channel_opts o = { .ring_bytes = ring };
	cr_assert_eq(ferry_channel(&a, &b, &o), 0);
	struct stream s = { .p = b, .n = 50000, .mode = mode };
	pthread_t t;
	pthread_create(&t, NULL, consume, &s);
	cr_assert_eq(ferry_port_set_wait(a, mode, 0), 0);
	for (int i = 0; i < s.n; i++)
		cr_assert_eq(ferry_port_post_bytes(a, &i, sizeof i, 10LL * 1000000000), 0, "post %d: %s",
			     i, ferry_errmsg());
	pthread_join(t, NULL);
	cr_assert_eq(atomic_load(&s.bad), 0, "lost, reordered or corrupt message");
}

Test(port, stream_small_ring_blocking)
{
	stream_between_threads(FERRY_WAIT_BLOCK, 4096);
}

Test(port, stream_small_ring_adaptive)
{
	stream_between_threads(FERRY_WAIT_ADAPTIVE, 4096);
}

Test(port, stream_spin)
{
	stream_between_threads(FERRY_WAIT_SPIN, 65536);
}

Test(port, bad_arguments)
{
	ferry_port *x = (ferry_port *)1, *y = (ferry_port *)1;
	cr_assert_eq(ferry_channel(NULL, &y, NULL), -EINVAL);
	cr_assert_null(y);
	cr_assert(strstr(ferry_errmsg(), "a is NULL"), "%s", ferry_errmsg());
	cr_assert_eq(ferry_channel(&x, NULL, NULL), -EINVAL);
	cr_assert_null(x);
	struct ferry_channel_opts o = { .ring_bytes = 1000 };
	cr_assert_eq(ferry_channel(&x, &y, &o), -EINVAL);
	cr_assert(strstr(ferry_errmsg(), "ring_bytes"), "%s", ferry_errmsg());
	o.ring_bytes = (size_t)1 << 40;
	cr_assert_eq(ferry_channel(&x, &y, &o), -EINVAL);
	o.ring_bytes = 16;
	cr_assert_eq(ferry_channel(&x, &y, &o), -EINVAL);

	cr_assert_eq(ferry_port_post_bytes(NULL, "x", 1, 0), -EINVAL);
	cr_assert(strstr(ferry_errmsg(), "port is NULL"), "%s", ferry_errmsg());
	cr_assert_eq(ferry_port_post_bytes(a, NULL, 5, 0), -EINVAL);
	cr_assert(strstr(ferry_errmsg(), "data is NULL"), "%s", ferry_errmsg());
	ferry_msg *m;
	cr_assert_eq(ferry_port_recv(NULL, &m, 0), -EINVAL);
	cr_assert_eq(ferry_port_recv(a, NULL, 0), -EINVAL);
	cr_assert_eq(ferry_port_set_wait(NULL, FERRY_WAIT_SPIN, 0), -EINVAL);
	cr_assert_eq(ferry_port_set_wait(a, (enum ferry_wait_mode)7, 0), -EINVAL);
	cr_assert(strstr(ferry_errmsg(), "unknown mode"), "%s", ferry_errmsg());
	cr_assert_eq(ferry_port_set_wait(a, FERRY_WAIT_SPIN, -5), -EINVAL);
	/* NULL is harmless where documented. */
	ferry_port_close(NULL);
	ferry_port_destroy(NULL);
	ferry_msg_free(NULL);
	cr_assert_eq(ferry_msg_len(NULL), 0);
	cr_assert_eq(ferry_port_max_message(NULL), 0);
}

Test(port, errors_have_names)
{
	cr_assert_str_eq(ferry_strerror(0), "success");
	cr_assert(strstr(ferry_strerror(-EPIPE), "pipe") || strstr(ferry_strerror(-EPIPE), "Pipe"));
	cr_assert(strstr(ferry_strerror(FERRY_EDETACHED), "detached"));
	cr_assert(strstr(ferry_strerror(FERRY_ENOTCLONEABLE), "clone"));
	cr_assert(strlen(ferry_strerror(FERRY_EVERSION)) > 0);
	cr_assert(strlen(ferry_strerror(FERRY_EWORKER)) > 0);
	cr_assert_str_eq(ferry_strerror(-99999), "unknown error");
	cr_assert_str_eq(ferry_strerror(5), "unknown error");
	cr_assert_str_eq(ferry_version(), FERRY_VERSION_STRING);
	cr_assert_eq(ferry_version_number(), FERRY_VERSION_NUMBER);
}
