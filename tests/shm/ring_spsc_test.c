/* tests/shm/ring_spsc_test.c - the SPSC ring of variable-length records. */
#include "util/util.h"

#include <criterion/criterion.h>
#include <errno.h>
#include <pthread.h>
#include <sched.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <stdatomic.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#include "ferry/atomic.h"
#include "ferry/ring.h"
#include "shm/ring_int.h"

#if defined(__SANITIZE_THREAD__)
#define SLOW_SANITIZER 1
#elif defined(__has_feature)
#if __has_feature(thread_sanitizer)
#define SLOW_SANITIZER 1
#endif
#endif
#ifndef SLOW_SANITIZER
#define SLOW_SANITIZER 0
#endif
#if defined(__SANITIZE_ADDRESS__)
#define ASAN 1
#else
#define ASAN 0
#endif

/* White-box layout (shm/ring_spsc.c), for the corruption cases. */
enum {
	OFF_MAGIC = 0,
	OFF_VERSION = 4,
	OFF_CAP = 8,
	OFF_MASK = 16,
	OFF_TAIL = 64,
	OFF_HEAD_CACHE = 72,
	OFF_RESV = 80,
	OFF_HEAD = 128,
	OFF_TAIL_CACHE = 136,
	OFF_ADV = 144,
	OFF_CLOSED = 192,
	OFF_DATA = 256,
};

TestSuite(ring_spsc, .timeout = 60);

/* A ring in a heap block of exactly memsize bytes, so ASan sees any overrun. */
static ferry_ring_spsc *mk(size_t cap, size_t *memsize)
{
	size_t n = ferry_ring_spsc_memsize(cap);
	cr_assert_gt(n, 0);
	void *m = aligned_alloc(64, n);
	cr_assert_not_null(m);
	memset(m, 0xa5, n);
	cr_assert_eq(ferry_ring_spsc_init(m, n), 0, "%s", ferry_errmsg());
	if (memsize)
		*memsize = n;
	return m;
}

static uint64_t *w64(ferry_ring_spsc *r, size_t off)
{
	return (uint64_t *)((char *)r + off);
}

static uint32_t *w32(ferry_ring_spsc *r, size_t off)
{
	return (uint32_t *)((char *)r + off);
}

static int push(ferry_ring_spsc *r, const void *buf, size_t len)
{
	void *p;
	int rc = ferry_ring_spsc_reserve(r, len, &p);
	if (rc)
		return rc;
	memcpy(p, buf, len);
	return ferry_ring_spsc_commit(r, len);
}

/* Pops into buf (which has room for max_record); returns the length or an error. */
static long pop(ferry_ring_spsc *r, void *buf)
{
	const void *p;
	size_t len;
	int rc = ferry_ring_spsc_peek(r, &p, &len);
	if (rc)
		return rc;
	memcpy(buf, p, len);
	ferry_ring_spsc_release(r);
	return (long)len;
}

static void fill_pattern(unsigned char *p, size_t len, uint64_t seed)
{
	for (size_t i = 0; i < len; i++)
		p[i] = (unsigned char)(seed * 131 + i * 7 + (seed >> 8));
}

static bool check_pattern(const unsigned char *p, size_t len, uint64_t seed)
{
	for (size_t i = 0; i < len; i++)
		if (p[i] != (unsigned char)(seed * 131 + i * 7 + (seed >> 8)))
			return false;
	return true;
}

static size_t stamp_len(uint64_t seq, size_t max);

/* ---- sizing and arguments ---- */

Test(ring_spsc, memsize_accepts_powers_of_two_in_range)
{
	cr_expect_eq(ferry_ring_spsc_memsize(256), FERRY_RING_SPSC_HDR_SIZE + 256);
	cr_expect_eq(ferry_ring_spsc_memsize(1u << 20), FERRY_RING_SPSC_HDR_SIZE + (1u << 20));
	cr_expect_eq(ferry_ring_spsc_memsize(FERRY_RING_SPSC_MAX_CAP),
		     FERRY_RING_SPSC_HDR_SIZE + (size_t)FERRY_RING_SPSC_MAX_CAP);
	cr_expect_eq(ferry_ring_spsc_memsize(0), 0);
	cr_expect_eq(ferry_ring_spsc_memsize(128), 0);
	cr_expect_eq(ferry_ring_spsc_memsize(1000), 0);
	cr_expect_eq(ferry_ring_spsc_memsize((size_t)FERRY_RING_SPSC_MAX_CAP * 2), 0);
}

Test(ring_spsc, init_rejects_bad_arguments_naming_them)
{
	cr_expect_eq(ferry_ring_spsc_init(NULL, 4096), -EINVAL);
	cr_expect(strstr(ferry_errmsg(), "NULL"), "%s", ferry_errmsg());
	void *m = aligned_alloc(64, 8192);
	cr_expect_eq(ferry_ring_spsc_init((ferry_ring_spsc *)((char *)m + 8), 4096), -EINVAL);
	cr_expect(strstr(ferry_errmsg(), "aligned"), "%s", ferry_errmsg());
	cr_expect_eq(ferry_ring_spsc_init(m, FERRY_RING_SPSC_HDR_SIZE + 255), -EINVAL);
	cr_expect(strstr(ferry_errmsg(), "memsize"), "%s", ferry_errmsg());
	cr_expect_eq(ferry_ring_spsc_init(m, 0), -EINVAL);
	free(m);
}

Test(ring_spsc, init_takes_the_largest_power_of_two_that_fits)
{
	void *m = aligned_alloc(64, 8192);
	cr_assert_eq(ferry_ring_spsc_init(m, FERRY_RING_SPSC_HDR_SIZE + 1000), 0);
	cr_expect_eq(ferry_ring_spsc_capacity(m), 512);
	cr_expect_eq(ferry_ring_spsc_max_record(m), 512 / 2 - 8);
	cr_expect_eq(ferry_ring_spsc_check(m, FERRY_RING_SPSC_HDR_SIZE + 1000), 0);
	cr_assert_eq(ferry_ring_spsc_init(m, 8192), 0);
	cr_expect_eq(ferry_ring_spsc_capacity(m), 4096);
	cr_expect_eq(ferry_ring_spsc_used(m), 0);
	cr_expect_not(ferry_ring_spsc_is_closed(m));
	free(m);
}

Test(ring_spsc, calls_reject_null_arguments)
{
	ferry_ring_spsc *r = mk(4096, NULL);
	void *p;
	const void *cp;
	size_t len;
	cr_expect_eq(ferry_ring_spsc_reserve(NULL, 1, &p), -EINVAL);
	cr_expect_eq(ferry_ring_spsc_reserve(r, 1, NULL), -EINVAL);
	cr_expect(strstr(ferry_errmsg(), "p is NULL"), "%s", ferry_errmsg());
	cr_expect_eq(ferry_ring_spsc_commit(NULL, 0), -EINVAL);
	cr_expect_eq(ferry_ring_spsc_peek(NULL, &cp, &len), -EINVAL);
	cr_expect_eq(ferry_ring_spsc_peek(r, NULL, &len), -EINVAL);
	cr_expect_eq(ferry_ring_spsc_peek(r, &cp, NULL), -EINVAL);
	cr_expect_eq(ferry_ring_spsc_check(NULL, 4096), -EINVAL);
	cr_expect_eq(ferry_ring_spsc_capacity(NULL), 0);
	cr_expect_eq(ferry_ring_spsc_max_record(NULL), 0);
	cr_expect_eq(ferry_ring_spsc_used(NULL), 0);
	ferry_ring_spsc_release(NULL);
	ferry_ring_spsc_close(NULL);
	free(r);
}

/* ---- records ---- */

Test(ring_spsc, empty_ring_peeks_eagain)
{
	ferry_ring_spsc *r = mk(4096, NULL);
	const void *p;
	size_t len;
	cr_expect_eq(ferry_ring_spsc_peek(r, &p, &len), -EAGAIN);
	ferry_ring_spsc_release(r); /* nothing peeked: no-op */
	cr_expect_eq(ferry_ring_spsc_used(r), 0);
	cr_expect_eq(ferry_ring_spsc_peek(r, &p, &len), -EAGAIN);
	free(r);
}

Test(ring_spsc, delivers_a_record_in_place)
{
	ferry_ring_spsc *r = mk(4096, NULL);
	void *w;
	cr_assert_eq(ferry_ring_spsc_reserve(r, 5, &w), 0);
	cr_expect_eq((uintptr_t)w % 8, 0, "records are 8-byte aligned");
	memcpy(w, "hello", 5);
	cr_assert_eq(ferry_ring_spsc_commit(r, 5), 0);
	cr_expect_eq(ferry_ring_spsc_used(r), 16);
	const void *p;
	size_t len;
	cr_assert_eq(ferry_ring_spsc_peek(r, &p, &len), 0);
	cr_expect_eq(len, 5);
	cr_expect_eq(p, w);
	cr_expect_eq(memcmp(p, "hello", 5), 0);
	/* peek again without release: the same record */
	const void *p2;
	size_t len2;
	cr_assert_eq(ferry_ring_spsc_peek(r, &p2, &len2), 0);
	cr_expect_eq(p2, p);
	cr_expect_eq(len2, 5);
	ferry_ring_spsc_release(r);
	cr_expect_eq(ferry_ring_spsc_used(r), 0);
	cr_expect_eq(ferry_ring_spsc_peek(r, &p, &len), -EAGAIN);
	free(r);
}

Test(ring_spsc, zero_byte_records)
{
	ferry_ring_spsc *r = mk(256, NULL);
	for (int round = 0; round < 100; round++) {
		void *w;
		cr_assert_eq(ferry_ring_spsc_reserve(r, 0, &w), 0);
		cr_assert_not_null(w);
		cr_assert_eq(ferry_ring_spsc_commit(r, 0), 0);
		const void *p;
		size_t len = 99;
		cr_assert_eq(ferry_ring_spsc_peek(r, &p, &len), 0);
		cr_assert_eq(len, 0);
		ferry_ring_spsc_release(r);
	}
	/* a ring of 256 holds 32 empty records */
	int n = 0;
	void *w;
	while (ferry_ring_spsc_reserve(r, 0, &w) == 0) {
		cr_assert_eq(ferry_ring_spsc_commit(r, 0), 0);
		n++;
	}
	cr_expect_eq(n, 256 / 8);
	free(r);
}

Test(ring_spsc, reserve_more_than_commit)
{
	ferry_ring_spsc *r = mk(4096, NULL);
	void *w;
	cr_assert_eq(ferry_ring_spsc_reserve(r, 1000, &w), 0);
	memset(w, 'x', 1000);
	cr_assert_eq(ferry_ring_spsc_commit(r, 10), 0);
	cr_expect_eq(ferry_ring_spsc_used(r), 8 + 16);
	cr_assert_eq(ferry_ring_spsc_reserve(r, 3, &w), 0);
	memcpy(w, "abc", 3);
	cr_assert_eq(ferry_ring_spsc_commit(r, 3), 0);
	const void *p;
	size_t len;
	cr_assert_eq(ferry_ring_spsc_peek(r, &p, &len), 0);
	cr_expect_eq(len, 10);
	ferry_ring_spsc_release(r);
	cr_assert_eq(ferry_ring_spsc_peek(r, &p, &len), 0);
	cr_expect_eq(len, 3);
	cr_expect_eq(memcmp(p, "abc", 3), 0);
	ferry_ring_spsc_release(r);
	free(r);
}

Test(ring_spsc, commit_needs_a_matching_reservation)
{
	ferry_ring_spsc *r = mk(4096, NULL);
	void *w;
	cr_expect_eq(ferry_ring_spsc_commit(r, 0), -EINVAL);
	cr_expect(strstr(ferry_errmsg(), "no reservation"), "%s", ferry_errmsg());
	cr_assert_eq(ferry_ring_spsc_reserve(r, 16, &w), 0);
	cr_expect_eq(ferry_ring_spsc_reserve(r, 16, &w), -EBUSY);
	cr_expect_eq(ferry_ring_spsc_commit(r, 17), -EINVAL);
	cr_expect(strstr(ferry_errmsg(), "len 17"), "%s", ferry_errmsg());
	cr_expect_eq(ferry_ring_spsc_commit(r, 16), 0);
	cr_expect_eq(ferry_ring_spsc_commit(r, 16), -EINVAL);
	free(r);
}

Test(ring_spsc, rejects_records_above_max_record)
{
	ferry_ring_spsc *r = mk(4096, NULL);
	size_t max = ferry_ring_spsc_max_record(r);
	cr_expect_eq(max, 4096 / 2 - 8);
	void *w;
	cr_expect_eq(ferry_ring_spsc_reserve(r, max + 1, &w), -EMSGSIZE);
	cr_expect(strstr(ferry_errmsg(), "len"), "%s", ferry_errmsg());
	cr_expect_eq(ferry_ring_spsc_reserve(r, SIZE_MAX, &w), -EMSGSIZE);
	cr_expect_eq(ferry_ring_spsc_reserve(r, max, &w), 0);
	cr_expect_eq(ferry_ring_spsc_commit(r, max), 0);
	free(r);
}

Test(ring_spsc, rejects_push_when_full)
{
	ferry_ring_spsc *r = mk(1024, NULL);
	unsigned char buf[64] = { 0 };
	int n = 0;
	while (push(r, buf, 56) == 0) /* 64 bytes each */
		n++;
	cr_expect_eq(n, 1024 / 64);
	cr_expect_eq(push(r, buf, 0), -EAGAIN);
	cr_expect_eq(ferry_ring_spsc_used(r), 1024);
	cr_expect_eq(pop(r, buf), 56);
	cr_expect_eq(push(r, buf, 57), -EAGAIN, "needs 72 bytes, 64 free");
	cr_expect_eq(push(r, buf, 56), 0);
	cr_expect_eq(push(r, buf, 0), -EAGAIN);
	free(r);
}

Test(ring_spsc, max_record_fits_an_empty_ring_at_every_offset)
{
	ferry_ring_spsc *r = mk(256, NULL);
	size_t max = ferry_ring_spsc_max_record(r);
	unsigned char in[256] = { 0 }, out[256];
	for (int off = 0; off < 2 * 256 / 8; off++) {
		fill_pattern(in, max, (uint64_t)off);
		cr_assert_eq(push(r, in, max), 0, "offset %d", off);
		cr_assert_eq(pop(r, out), (long)max);
		cr_assert(check_pattern(out, max, (uint64_t)off));
		cr_assert_eq(ferry_ring_spsc_used(r), 0);
		/* move the indices by 8 */
		cr_assert_eq(push(r, in, 0), 0);
		cr_assert_eq(pop(r, out), 0);
	}
	free(r);
}

/* A model-checked random walk: sizes 0..max_record, reserve bigger than commit. */
static void random_walk(size_t cap, unsigned seed, int steps)
{
	ferry_ring_spsc *r = mk(cap, NULL);
	size_t max = ferry_ring_spsc_max_record(r);
	enum { Q = 4096 };
	static size_t lens[Q];
	static uint64_t seeds[Q];
	size_t qh = 0, qt = 0, used = 0;
	uint64_t next = 0;
	unsigned char *buf = malloc(max + 1);
	srand(seed);
	for (int s = 0; s < steps; s++) {
		if (rand() % 2) {
			size_t len;
			switch (rand() % 4) {
			case 0: len = 0; break;
			case 1: len = max - (size_t)(rand() % 9); break;
			case 2: len = (size_t)rand() % 24; break;
			default: len = (size_t)rand() % (max + 1); break;
			}
			size_t ask = len + (size_t)rand() % (max - len + 1);
			void *w;
			int rc = ferry_ring_spsc_reserve(r, ask, &w);
			if (rc == -EAGAIN) {
				cr_assert(used > 0, "EAGAIN on an empty ring");
				continue;
			}
			cr_assert_eq(rc, 0, "%s", ferry_errmsg());
			cr_assert_eq((uintptr_t)w % 8, 0);
			cr_assert((unsigned char *)w >= (unsigned char *)r + OFF_DATA);
			cr_assert((unsigned char *)w + ask <= (unsigned char *)r + OFF_DATA + cap);
			fill_pattern(w, len, next);
			cr_assert_eq(ferry_ring_spsc_commit(r, len), 0);
			cr_assert_lt(qt - qh, (size_t)Q);
			lens[qt % Q] = len;
			seeds[qt % Q] = next++;
			qt++;
			used = ferry_ring_spsc_used(r);
		} else {
			const void *p;
			size_t len;
			int rc = ferry_ring_spsc_peek(r, &p, &len);
			if (qh == qt) {
				cr_assert_eq(rc, -EAGAIN);
				continue;
			}
			cr_assert_eq(rc, 0, "%s", ferry_errmsg());
			cr_assert_eq(len, lens[qh % Q]);
			cr_assert(check_pattern(p, len, seeds[qh % Q]), "record %zu", qh);
			ferry_ring_spsc_release(r);
			qh++;
			used = ferry_ring_spsc_used(r);
		}
	}
	free(buf);
	free(r);
}

Test(ring_spsc, wraps_around_with_many_record_sizes)
{
	int steps = SLOW_SANITIZER ? 4000 : 20000;
	random_walk(256, 1, steps);
	random_walk(1024, 2, steps);
	random_walk(4096, 3, steps);
	random_walk(65536, 4, steps / 10); /* big records: fewer steps, as many bytes */
}

Test(ring_spsc, every_size_up_to_max_record_round_trips)
{
	ferry_ring_spsc *r = mk(1024, NULL);
	size_t max = ferry_ring_spsc_max_record(r);
	unsigned char in[1024] = { 0 }, out[1024];
	for (int pass = 0; pass < 3; pass++)
		for (size_t len = 0; len <= max; len++) {
			fill_pattern(in, len, len);
			int rc;
			while ((rc = push(r, in, len)) == -EAGAIN) {
				long got = pop(r, out);
				cr_assert_geq(got, 0);
				cr_assert(check_pattern(out, (size_t)got, (uint64_t)got));
			}
			cr_assert_eq(rc, 0, "len %zu", len);
		}
	free(r);
}

/* ---- batches ---- */

Test(ring_spsc, push_batch_publishes_many_at_once)
{
	ferry_ring_spsc *r = mk(1024, NULL);
	unsigned char data[8][100];
	struct ferry_ring_rec recs[8];
	for (int i = 0; i < 8; i++) {
		fill_pattern(data[i], 100, (uint64_t)i);
		recs[i] = (struct ferry_ring_rec){ data[i], (size_t)(i * 13) };
	}
	cr_expect_eq(ferry_ring_spsc_push_batch(r, recs, 0), 0);
	cr_assert_eq(ferry_ring_spsc_push_batch(r, recs, 8), 8);
	struct ferry_ring_rec out[16];
	cr_assert_eq(ferry_ring_spsc_peek_batch(r, out, 3), 3);
	cr_assert_eq(ferry_ring_spsc_peek_batch(r, out, 16), 8, "peek_batch again: same records");
	for (int i = 0; i < 8; i++) {
		cr_assert_eq(out[i].len, (size_t)(i * 13));
		cr_assert(check_pattern(out[i].p, out[i].len, (uint64_t)i));
	}
	ferry_ring_spsc_release(r);
	cr_expect_eq(ferry_ring_spsc_used(r), 0);
	cr_expect_eq(ferry_ring_spsc_peek_batch(r, out, 16), -EAGAIN);
	cr_expect_eq(ferry_ring_spsc_peek_batch(r, out, 0), 0);
	free(r);
}

Test(ring_spsc, push_batch_stops_where_the_ring_is_full)
{
	ferry_ring_spsc *r = mk(256, NULL);
	unsigned char d[120] = { 0 };
	struct ferry_ring_rec recs[4] = { { d, 56 }, { d, 56 }, { d, 56 }, { d, 56 } };
	cr_expect_eq(ferry_ring_spsc_push_batch(r, recs, 4), 4); /* 4 x 64 = 256 */
	cr_expect_eq(ferry_ring_spsc_push_batch(r, recs, 4), -EAGAIN);
	const void *p;
	size_t len;
	cr_assert_eq(ferry_ring_spsc_peek(r, &p, &len), 0);
	ferry_ring_spsc_release(r);
	cr_expect_eq(ferry_ring_spsc_push_batch(r, recs, 4), 1, "room for one more");
	free(r);
}

Test(ring_spsc, push_batch_rejects_what_cannot_fit)
{
	ferry_ring_spsc *r = mk(256, NULL);
	unsigned char d[256] = { 0 };
	struct ferry_ring_rec recs[3] = { { d, 200 }, { d, 8 }, { d, 8 } };
	cr_expect_eq(ferry_ring_spsc_push_batch(r, recs, 3), -EMSGSIZE);
	cr_expect(strstr(ferry_errmsg(), "recs[0]"), "%s", ferry_errmsg());
	recs[0].len = 8;
	recs[1].len = 121;
	cr_expect_eq(ferry_ring_spsc_push_batch(r, recs, 3), 1, "stops before the long one");
	recs[1] = (struct ferry_ring_rec){ NULL, 4 };
	cr_expect_eq(ferry_ring_spsc_push_batch(r, recs, 3), 1, "stops before a NULL");
	cr_expect_eq(ferry_ring_spsc_push_batch(r, recs + 1, 2), -EINVAL);
	cr_expect_eq(ferry_ring_spsc_push_batch(r, NULL, 2), -EINVAL);
	void *w;
	cr_assert_eq(ferry_ring_spsc_reserve(r, 8, &w), 0);
	cr_expect_eq(ferry_ring_spsc_push_batch(r, recs, 1), -EBUSY);
	cr_assert_eq(ferry_ring_spsc_commit(r, 0), 0);
	ferry_ring_spsc_close(r);
	cr_expect_eq(ferry_ring_spsc_push_batch(r, recs, 1), -EPIPE);
	struct ferry_ring_rec out[8];
	cr_expect_eq(ferry_ring_spsc_peek_batch(r, out, 8), 3);
	ferry_ring_spsc_release(r);
	cr_expect_eq(ferry_ring_spsc_peek_batch(r, out, 8), -EPIPE);
	free(r);
}

Test(ring_spsc, batches_wrap_around_with_model)
{
	ferry_ring_spsc *r = mk(1024, NULL);
	size_t max = ferry_ring_spsc_max_record(r);
	unsigned char *src = malloc(max * 16);
	uint64_t next_in = 0, next_out = 0;
	srand(11);
	for (int step = 0; step < 5000; step++) {
		struct ferry_ring_rec recs[16];
		size_t n = (size_t)rand() % 16 + 1;
		for (size_t i = 0; i < n; i++) {
			uint64_t seq = next_in + i;
			size_t len = stamp_len(seq, max);
			fill_pattern(src + i * max, len, seq);
			recs[i] = (struct ferry_ring_rec){ src + i * max, len };
		}
		int k = ferry_ring_spsc_push_batch(r, recs, n);
		cr_assert(k > 0 || k == -EAGAIN, "push_batch %d", k);
		if (k > 0)
			next_in += (uint64_t)k;
		struct ferry_ring_rec out[16];
		k = ferry_ring_spsc_peek_batch(r, out, (size_t)rand() % 16 + 1);
		cr_assert(k > 0 || k == -EAGAIN, "peek_batch %d", k);
		for (int i = 0; i < k; i++, next_out++) {
			cr_assert_eq(out[i].len, stamp_len(next_out, max));
			cr_assert(check_pattern(out[i].p, out[i].len, next_out), "record %llu",
				  (unsigned long long)next_out);
		}
		ferry_ring_spsc_release(r);
	}
	cr_expect_gt(next_out, 1000);
	free(src);
	free(r);
}

/* ---- close ---- */

Test(ring_spsc, close_delivers_committed_then_epipe)
{
	ferry_ring_spsc *r = mk(4096, NULL);
	unsigned char b[8] = { 0 };
	cr_assert_eq(push(r, "one", 3), 0);
	cr_assert_eq(push(r, "two", 3), 0);
	ferry_ring_spsc_close(r);
	cr_expect(ferry_ring_spsc_is_closed(r));
	void *w;
	cr_expect_eq(ferry_ring_spsc_reserve(r, 1, &w), -EPIPE);
	cr_expect_eq(pop(r, b), 3);
	cr_expect_eq(memcmp(b, "one", 3), 0);
	cr_expect_eq(pop(r, b), 3);
	cr_expect_eq(memcmp(b, "two", 3), 0);
	cr_expect_eq(pop(r, b), -EPIPE);
	cr_expect_eq(pop(r, b), -EPIPE);
	ferry_ring_spsc_close(r); /* idempotent */
	cr_expect(ferry_ring_spsc_is_closed(r));
	cr_expect_eq(pop(r, b), -EPIPE);
	cr_expect_eq(ferry_ring_spsc_check(r, ferry_ring_spsc_memsize(4096)), 0);
	free(r);
}

Test(ring_spsc, close_on_an_empty_ring)
{
	ferry_ring_spsc *r = mk(256, NULL);
	const void *p;
	size_t len;
	ferry_ring_spsc_close(r);
	cr_expect_eq(ferry_ring_spsc_peek(r, &p, &len), -EPIPE);
	void *w;
	cr_expect_eq(ferry_ring_spsc_reserve(r, 0, &w), -EPIPE);
	free(r);
}

Test(ring_spsc, commit_of_an_open_reservation_after_close_is_delivered)
{
	ferry_ring_spsc *r = mk(256, NULL);
	void *w;
	cr_assert_eq(ferry_ring_spsc_reserve(r, 4, &w), 0);
	memcpy(w, "late", 4);
	ferry_ring_spsc_close(r); /* e.g. the consumer closes */
	cr_expect_eq(ferry_ring_spsc_commit(r, 4), 0);
	unsigned char b[8] = { 0 };
	cr_expect_eq(pop(r, b), 4);
	cr_expect_eq(pop(r, b), -EPIPE);
	free(r);
}

/* ---- check and corruption ---- */

Test(ring_spsc, check_accepts_a_fresh_ring_and_rejects_short_memory)
{
	size_t n;
	ferry_ring_spsc *r = mk(4096, &n);
	cr_expect_eq(ferry_ring_spsc_check(r, n), 0);
	cr_expect_eq(ferry_ring_spsc_check(r, n + 4096), 0);
	cr_expect_eq(ferry_ring_spsc_check(r, n - 1), -EPROTO);
	cr_expect(strstr(ferry_errmsg(), "memsize"), "%s", ferry_errmsg());
	cr_expect_eq(ferry_ring_spsc_check(r, 10), -EPROTO);
	cr_expect_eq(ferry_ring_spsc_check((ferry_ring_spsc *)((char *)r + 8), n), -EINVAL);
	free(r);
}

Test(ring_spsc, check_reports_version_and_magic)
{
	size_t n;
	ferry_ring_spsc *r = mk(4096, &n);
	*w32(r, OFF_VERSION) += 1;
	cr_expect_eq(ferry_ring_spsc_check(r, n), FERRY_EVERSION);
	*w32(r, OFF_VERSION) -= 1;
	*w32(r, OFF_MAGIC) ^= 1;
	cr_expect_eq(ferry_ring_spsc_check(r, n), -EPROTO);
	cr_expect(strstr(ferry_errmsg(), "magic"), "%s", ferry_errmsg());
	free(r);
}

Test(ring_spsc, check_reports_bad_fields)
{
	size_t n;
	ferry_ring_spsc *r = mk(4096, &n);
	*w64(r, OFF_CAP) = 3000;
	cr_expect_eq(ferry_ring_spsc_check(r, n), -EPROTO);
	*w64(r, OFF_CAP) = 8192;
	*w64(r, OFF_MASK) = 8191;
	cr_expect_eq(ferry_ring_spsc_check(r, n), -EPROTO, "capacity beyond memsize");
	*w64(r, OFF_CAP) = 4096;
	cr_expect_eq(ferry_ring_spsc_check(r, n), -EPROTO, "mask");
	*w64(r, OFF_MASK) = 4095;
	cr_expect_eq(ferry_ring_spsc_check(r, n), 0);
	*w64(r, OFF_TAIL) = 4104;
	cr_expect_eq(ferry_ring_spsc_check(r, n), -EPROTO, "tail beyond capacity");
	*w64(r, OFF_TAIL) = 0;
	*w64(r, OFF_HEAD) = 8;
	cr_expect_eq(ferry_ring_spsc_check(r, n), -EPROTO, "head past tail");
	*w64(r, OFF_HEAD) = 0;
	*w64(r, OFF_TAIL) = 4;
	cr_expect_eq(ferry_ring_spsc_check(r, n), -EPROTO, "misaligned");
	*w64(r, OFF_TAIL) = 0;
	*w32(r, OFF_CLOSED) = 77;
	cr_expect_eq(ferry_ring_spsc_check(r, n), -EPROTO, "closed word");
	free(r);
}

/* The consumer meets corruption: -EPROTO, the ring is closed, and stays so. */
static void expect_consumer_eproto(ferry_ring_spsc *r)
{
	const void *p = NULL;
	size_t len = 0;
	cr_expect_eq(ferry_ring_spsc_peek(r, &p, &len), -EPROTO, "%s", ferry_errmsg());
	cr_expect(strstr(ferry_errmsg(), "corrupt"), "%s", ferry_errmsg());
	cr_expect(ferry_ring_spsc_is_closed(r));
	cr_expect_eq(ferry_ring_spsc_peek(r, &p, &len), -EPROTO);
	void *w;
	int rc = ferry_ring_spsc_reserve(r, 1, &w);
	cr_expect(rc == -EPIPE || rc == -EPROTO, "reserve after corruption: %d", rc);
}

/* A ring holding a few records, the head moved off zero. */
static ferry_ring_spsc *mk_loaded(size_t *n)
{
	ferry_ring_spsc *r = mk(1024, n);
	unsigned char b[256] = { 0 };
	cr_assert_eq(push(r, b, 100), 0);
	cr_assert_eq(pop(r, b), 100);
	for (int i = 0; i < 3; i++)
		cr_assert_eq(push(r, "abcdefgh", 8), 0);
	return r;
}

Test(ring_spsc, corrupt_magic_gives_eproto)
{
	ferry_ring_spsc *r = mk_loaded(NULL);
	*w32(r, OFF_MAGIC) = 0;
	expect_consumer_eproto(r);
	free(r);
}

Test(ring_spsc, corrupt_version_gives_eproto)
{
	ferry_ring_spsc *r = mk_loaded(NULL);
	*w32(r, OFF_VERSION) = 2;
	expect_consumer_eproto(r);
	free(r);
}

Test(ring_spsc, corrupt_capacity_gives_eproto)
{
	uint64_t bad[] = { 0, 1, 3000, 1u << 31, UINT64_MAX, 2048 };
	for (size_t i = 0; i < sizeof bad / sizeof bad[0]; i++) {
		ferry_ring_spsc *r = mk_loaded(NULL);
		*w64(r, OFF_CAP) = bad[i]; /* the mask no longer matches */
		expect_consumer_eproto(r);
		free(r);
	}
}

Test(ring_spsc, corrupt_mask_gives_eproto)
{
	ferry_ring_spsc *r = mk_loaded(NULL);
	*w64(r, OFF_MASK) = UINT64_MAX;
	expect_consumer_eproto(r);
	free(r);
}

Test(ring_spsc, tail_beyond_capacity_gives_eproto)
{
	ferry_ring_spsc *r = mk_loaded(NULL);
	*w64(r, OFF_TAIL) = *w64(r, OFF_HEAD) + 1024 + 8;
	*w64(r, OFF_TAIL_CACHE) = *w64(r, OFF_HEAD); /* force a reload */
	expect_consumer_eproto(r);
	free(r);
}

Test(ring_spsc, head_past_tail_gives_eproto)
{
	ferry_ring_spsc *r = mk_loaded(NULL);
	*w64(r, OFF_HEAD) = *w64(r, OFF_TAIL) + 8;
	expect_consumer_eproto(r);
	free(r);
}

Test(ring_spsc, misaligned_indices_give_eproto)
{
	ferry_ring_spsc *r = mk_loaded(NULL);
	*w64(r, OFF_HEAD) += 3;
	expect_consumer_eproto(r);
	free(r);
	r = mk_loaded(NULL);
	*w64(r, OFF_TAIL) += 3;
	*w64(r, OFF_TAIL_CACHE) = *w64(r, OFF_HEAD);
	expect_consumer_eproto(r);
	free(r);
}

Test(ring_spsc, record_length_past_the_data_gives_eproto)
{
	size_t lens[] = { 41, 1000, 1u << 20, UINT32_MAX };
	for (size_t i = 0; i < sizeof lens / sizeof lens[0]; i++) {
		ferry_ring_spsc *r = mk_loaded(NULL);
		uint64_t head = *w64(r, OFF_HEAD);
		uint64_t *hdr = w64(r, OFF_DATA + (head & 1023));
		*hdr = (*hdr & 0xffffffff00000000ull) | lens[i];
		expect_consumer_eproto(r);
		free(r);
	}
}

Test(ring_spsc, record_reaching_past_the_buffer_end_gives_eproto)
{
	/* one record at offset 1008 claiming 64 bytes: within used, past the end */
	ferry_ring_spsc *r = mk(1024, NULL);
	unsigned char b[512] = { 0 };
	cr_assert_eq(push(r, b, 496), 0);
	cr_assert_eq(push(r, b, 496), 0);
	cr_assert_eq(pop(r, b), 496);
	cr_assert_eq(pop(r, b), 496);
	cr_assert_eq(push(r, b, 0), 0); /* at 1008, wraps nothing */
	cr_assert_eq(push(r, b, 200), 0);
	uint64_t *hdr = w64(r, OFF_DATA + 1008);
	*hdr = (*hdr & 0xffffffff00000000ull) | 64;
	expect_consumer_eproto(r);
	free(r);
}

Test(ring_spsc, bad_record_kind_gives_eproto)
{
	ferry_ring_spsc *r = mk_loaded(NULL);
	uint64_t head = *w64(r, OFF_HEAD);
	*w64(r, OFF_DATA + (head & 1023)) = 8; /* kind 0 */
	expect_consumer_eproto(r);
	free(r);
}

Test(ring_spsc, pad_markers_only_where_legal)
{
	/* a pad marker with the wrong length */
	ferry_ring_spsc *r = mk_loaded(NULL);
	uint64_t head = *w64(r, OFF_HEAD);
	uint64_t *hdr = w64(r, OFF_DATA + (head & 1023));
	uint64_t kind_pad;
	{
		/* learn the pad kind from a real wrap */
		ferry_ring_spsc *q = mk(256, NULL);
		unsigned char b[256] = { 0 };
		cr_assert_eq(push(q, b, 100), 0);
		cr_assert_eq(pop(q, b), 100);
		cr_assert_eq(push(q, b, 100), 0);
		cr_assert_eq(push(q, b, 100), 0); /* 112 at 224 does not fit: pad 32 */
		kind_pad = *w64(q, OFF_DATA + 224) >> 32;
		cr_assert_eq(*w64(q, OFF_DATA + 224) & 0xffffffff, 32 - 8);
		cr_assert_eq(pop(q, b), 100);
		cr_assert_eq(pop(q, b), 100);
		free(q);
	}
	*hdr = kind_pad << 32 | 8;
	expect_consumer_eproto(r);
	free(r);

	/* a pad marker at offset 0 */
	r = mk(1024, NULL);
	unsigned char b[256] = { 0 };
	cr_assert_eq(push(r, b, 8), 0);
	*w64(r, OFF_DATA) = kind_pad << 32 | (1024 - 8);
	expect_consumer_eproto(r);
	free(r);

	/* a correct-looking pad with nothing committed after it */
	r = mk(1024, NULL);
	for (int i = 0; i < 3; i++) {
		cr_assert_eq(push(r, b, 248), 0);
		cr_assert_eq(pop(r, b), 248);
	}
	cr_assert_eq(push(r, b, 8), 0); /* at 768..784 */
	cr_assert_eq(pop(r, b), 8);
	cr_assert_eq(push(r, b, 0), 0); /* at 784 */
	*w64(r, OFF_DATA + 784) = kind_pad << 32 | (1024 - 784 - 8);
	expect_consumer_eproto(r);
	free(r);

	/* a pad followed by another pad */
	r = mk(256, NULL);
	cr_assert_eq(push(r, b, 100), 0);
	cr_assert_eq(pop(r, b), 100);
	cr_assert_eq(push(r, b, 100), 0);
	cr_assert_eq(push(r, b, 100), 0);
	cr_assert_eq(pop(r, b), 100);
	*w64(r, OFF_DATA) = kind_pad << 32 | (256 - 8);
	expect_consumer_eproto(r);
	free(r);
}

Test(ring_spsc, corrupt_release_state_is_caught)
{
	ferry_ring_spsc *r = mk_loaded(NULL);
	const void *p;
	size_t len;
	cr_assert_eq(ferry_ring_spsc_peek(r, &p, &len), 0);
	*w64(r, OFF_ADV) = 1ull << 31;
	ferry_ring_spsc_release(r);
	cr_expect(ferry_ring_spsc_is_closed(r));
	cr_expect_eq(ferry_ring_spsc_peek(r, &p, &len), -EPROTO);
	free(r);
}

Test(ring_spsc, producer_validates_head)
{
	ferry_ring_spsc *r = mk(1024, NULL);
	unsigned char b[512] = { 0 };
	while (push(r, b, 200) == 0)
		;
	*w64(r, OFF_HEAD) = *w64(r, OFF_TAIL) + 64; /* head past tail */
	void *w;
	cr_expect_eq(ferry_ring_spsc_reserve(r, 200, &w), -EPROTO);
	cr_expect(ferry_ring_spsc_is_closed(r));
	cr_expect_eq(ferry_ring_spsc_reserve(r, 200, &w), -EPIPE);
	free(r);

	r = mk(1024, NULL);
	while (push(r, b, 200) == 0)
		;
	*w64(r, OFF_HEAD) = *w64(r, OFF_TAIL) - 4096; /* far behind: over capacity */
	cr_expect_eq(ferry_ring_spsc_reserve(r, 200, &w), -EPROTO);
	free(r);
}

Test(ring_spsc, producer_survives_corrupt_private_words)
{
	/* the consumer side can scribble on the producer's line too */
	ferry_ring_spsc *r = mk(1024, NULL);
	void *w;
	*w64(r, OFF_HEAD_CACHE) = 1u << 20; /* nonsense: reloaded */
	cr_expect_eq(ferry_ring_spsc_reserve(r, 16, &w), 0);
	cr_expect_eq(ferry_ring_spsc_commit(r, 16), 0);
	*w64(r, OFF_RESV) = 1u << 30;
	cr_expect_eq(ferry_ring_spsc_commit(r, 100), -EPROTO);
	free(r);
	r = mk(1024, NULL);
	*w64(r, OFF_TAIL) = 5;
	cr_expect_eq(ferry_ring_spsc_reserve(r, 16, &w), -EPROTO);
	free(r);
}

Test(ring_spsc, random_scribbles_never_read_out_of_bounds)
{
	/* Random bytes over a loaded ring: any answer but a crash (ASan watches). */
	srand(42);
	for (int iter = 0; iter < 3000; iter++) {
		size_t n;
		ferry_ring_spsc *r = mk(256, &n);
		unsigned char b[256] = { 0 };
		int k = rand() % 12;
		for (int i = 0; i < k; i++) {
			if (push(r, b, (size_t)rand() % 100) != 0)
				break;
			if (rand() % 3 == 0)
				pop(r, b);
		}
		int hits = 1 + rand() % 4;
		for (int i = 0; i < hits; i++) {
			size_t off = (size_t)rand() % n;
			((unsigned char *)r)[off] = (unsigned char)rand();
		}
		(void)ferry_ring_spsc_check(r, n);
		for (int i = 0; i < 20; i++) {
			long got = pop(r, b);
			if (got < 0 && got != -EAGAIN)
				break;
			void *w;
			if (ferry_ring_spsc_reserve(r, (size_t)rand() % 120, &w) == 0) {
				cr_assert((unsigned char *)w >= (unsigned char *)r + OFF_DATA);
				cr_assert((unsigned char *)w <= (unsigned char *)r + n);
				ferry_ring_spsc_commit(r, 0);
			}
		}
		free(r);
	}
}

/* ---- two sides at once ---- */

/* Stamped records: length a function of the sequence number, bytes too. */
static size_t stamp_len(uint64_t seq, size_t max)
{
	uint64_t h = seq * 0x9e3779b97f4a7c15ull;
	h ^= h >> 29;
	if ((h & 255) == 0)
		return max - (size_t)(h >> 40) % 8; /* just under max_record */
	if ((h & 7) == 0)
		return 0;
	return (size_t)(h >> 40) % 120;
}

static uint32_t csum(const unsigned char *p, size_t n)
{
	uint32_t s = 2166136261u;
	for (size_t i = 0; i < n; i++)
		s = (s ^ p[i]) * 16777619u;
	return s;
}

/* Writes record @seq into @p (len bytes): seq, checksum, then pattern bytes. */
static void stamp(unsigned char *p, size_t len, uint64_t seq)
{
	if (len < 16) {
		fill_pattern(p, len, seq);
		return;
	}
	fill_pattern(p + 12, len - 12, seq);
	uint32_t c = csum(p + 12, len - 12);
	memcpy(p, &seq, 8);
	memcpy(p + 8, &c, 4);
}

static bool verify(const unsigned char *p, size_t len, uint64_t seq, size_t max)
{
	if (len != stamp_len(seq, max))
		return false;
	if (len < 16)
		return check_pattern(p, len, seq);
	uint64_t s;
	uint32_t c;
	memcpy(&s, p, 8);
	memcpy(&c, p + 8, 4);
	return s == seq && c == csum(p + 12, len - 12);
}

struct side {
	ferry_ring_spsc *r;
	uint64_t count;
	pid_t parent; /* in a child: exit when this parent is gone; 0 otherwise */
	int err;
};

/* Waits a little; false once the deadline passed or the parent died. */
static bool backoff(const struct side *s, unsigned *spins, int64_t deadline)
{
	if (++*spins < 64) {
#if defined(__x86_64__)
		__builtin_ia32_pause();
#endif
		return true;
	}
	sched_yield();
	if (*spins % 1024)
		return true;
	struct timespec ts;
	clock_gettime(CLOCK_MONOTONIC, &ts);
	if ((int64_t)ts.tv_sec * 1000000000 + ts.tv_nsec > deadline)
		return false;
	return !s->parent || getppid() == s->parent;
}

static int64_t deadline_in(int sec)
{
	struct timespec ts;
	clock_gettime(CLOCK_MONOTONIC, &ts);
	return ((int64_t)ts.tv_sec + sec) * 1000000000 + ts.tv_nsec;
}

/* On any failure a side closes the ring, so the other side stops too. */
static int fail_side(struct side *s, int err)
{
	ferry_ring_spsc_close(s->r);
	return s->err = err;
}

static int produce(void *arg)
{
	struct side *s = arg;
	size_t max = ferry_ring_spsc_max_record(s->r);
	int64_t deadline = deadline_in(25);
	for (uint64_t seq = 0; seq < s->count; seq++) {
		size_t len = stamp_len(seq, max);
		size_t ask = len + (seq % 3 == 0 ? (max - len) / 2 : 0);
		void *w;
		unsigned spins = 0;
		int rc;
		while ((rc = ferry_ring_spsc_reserve(s->r, ask, &w)) == -EAGAIN)
			if (!backoff(s, &spins, deadline))
				return fail_side(s, 12);
		if (rc)
			return fail_side(s, 10);
		stamp(w, len, seq);
		if (ferry_ring_spsc_commit(s->r, len))
			return fail_side(s, 11);
	}
	ferry_ring_spsc_close(s->r);
	return 0;
}

static int consume(void *arg)
{
	struct side *s = arg;
	size_t max = ferry_ring_spsc_max_record(s->r);
	int64_t deadline = deadline_in(25);
	uint64_t seq = 0;
	for (;;) {
		const void *p;
		size_t len;
		unsigned spins = 0;
		int rc;
		while ((rc = ferry_ring_spsc_peek(s->r, &p, &len)) == -EAGAIN)
			if (!backoff(s, &spins, deadline))
				return fail_side(s, 23);
		if (rc == -EPIPE)
			break;
		if (rc)
			return fail_side(s, 20);
		if (!verify(p, len, seq, max))
			return fail_side(s, 21);
		ferry_ring_spsc_release(s->r);
		seq++;
	}
	if (seq != s->count)
		return fail_side(s, 22);
	return 0;
}

static void *produce_thread(void *arg)
{
	produce(arg);
	return NULL;
}

/* a million in the plain build; fewer under the sanitizers, which check every byte */
#define MILLION (SLOW_SANITIZER ? 50000u : ASAN ? 250000u : 1000000u)

Test(ring_spsc, threads_pass_a_million_stamped_records)
{
	ferry_ring_spsc *r = mk(16 * 1024, NULL);
	struct side prod = { r, MILLION, 0, 0 }, cons = { r, MILLION, 0, 0 };
	pthread_t t;
	cr_assert_eq(pthread_create(&t, NULL, produce_thread, &prod), 0);
	consume(&cons);
	pthread_join(t, NULL);
	cr_expect_eq(prod.err, 0);
	cr_expect_eq(cons.err, 0, "consumer error %d", cons.err);
	free(r);
}

Test(ring_spsc, processes_pass_a_million_stamped_records)
{
	size_t n = ferry_ring_spsc_memsize(16 * 1024);
	ferry_ring_spsc *r = tu_shared_alloc(n);
	cr_assert_eq(ferry_ring_spsc_init(r, n), 0);
	/* producer in the child, consumer here; the child's copy watches its parent */
	struct side prod = { r, MILLION, getpid(), 0 }, cons = { r, MILLION, 0, 0 };
	pid_t pid = tu_fork(produce, &prod);
	consume(&cons);
	int st = tu_wait(pid, 40000);
	cr_expect(st != -1 && WIFEXITED(st) && WEXITSTATUS(st) == 0, "producer status 0x%x", st);
	cr_expect_eq(cons.err, 0, "consumer error %d", cons.err);

	/* and the other way round, shorter */
	cr_assert_eq(ferry_ring_spsc_init(r, n), 0);
	cons = (struct side){ r, MILLION / 5, getpid(), 0 };
	prod = (struct side){ r, MILLION / 5, 0, 0 };
	pid = tu_fork(consume, &cons);
	produce(&prod);
	st = tu_wait(pid, 40000);
	cr_expect_eq(prod.err, 0);
	cr_expect(st != -1 && WIFEXITED(st) && WEXITSTATUS(st) == 0, "consumer status 0x%x", st);
	tu_shared_free(r, n);
}

/* ---- the waiting forms ---- */

struct spsc_waiter {
	ferry_ring_spsc *r;
	struct ferry_ring_wait *w;
	_Atomic int rc;
	size_t len;
};

static void *peek_forever(void *arg)
{
	struct spsc_waiter *a = arg;
	const void *p;
	size_t len = 0;
	int rc = ferry_ring_spsc_peek_wait(a->r, &p, &len, a->w, FERRY_FOREVER);
	a->len = len;
	if (rc == 0)
		ferry_ring_spsc_release_wait(a->r, a->w);
	atomic_store(&a->rc, rc);
	return NULL;
}

Test(ring_spsc, wait_forms)
{
	ferry_ring_spsc *r = mk(256, NULL);
	struct ferry_ec ne, nf;
	ferry_ec_init(&ne);
	ferry_ec_init(&nf);
	struct ferry_ring_wait w = { .not_empty = &ne, .not_full = &nf };
	const void *p;
	size_t len;
	cr_expect_eq(ferry_ring_spsc_peek_wait(r, &p, &len, &w, 0), -EAGAIN);
	struct timespec t0, t1;
	clock_gettime(CLOCK_MONOTONIC, &t0);
	cr_expect_eq(ferry_ring_spsc_peek_wait(r, &p, &len, &w, 10000000), -ETIMEDOUT);
	clock_gettime(CLOCK_MONOTONIC, &t1);
	cr_expect_geq((t1.tv_sec - t0.tv_sec) * 1000000000 + t1.tv_nsec - t0.tv_nsec, 10000000);

	/* a consumer thread waits; a commit_wait wakes it */
	struct spsc_waiter a = { r, &w, 1, 0 };
	pthread_t th;
	cr_assert_eq(pthread_create(&th, NULL, peek_forever, &a), 0);
	usleep(20000);
	void *wp;
	cr_assert_eq(ferry_ring_spsc_reserve_wait(r, 40, &wp, &w, FERRY_FOREVER), 0);
	cr_assert_eq(ferry_ring_spsc_commit_wait(r, 40, &w), 0);
	pthread_join(th, NULL);
	cr_expect_eq(atomic_load(&a.rc), 0);
	cr_expect_eq(a.len, 40);

	/* a full ring: reserve_wait times out, then succeeds once a consumer releases */
	unsigned char d[120] = { 0 };
	while (push(r, d, 120) == 0)
		;
	w.strategy = FERRY_RING_SLEEP;
	cr_expect_eq(ferry_ring_spsc_reserve_wait(r, 120, &wp, &w, 5000000), -ETIMEDOUT);
	a.rc = 1;
	cr_assert_eq(pthread_create(&th, NULL, peek_forever, &a), 0);
	cr_expect_eq(ferry_ring_spsc_reserve_wait(r, 120, &wp, &w, FERRY_FOREVER), 0);
	cr_expect_eq(ferry_ring_spsc_commit_wait(r, 0, &w), 0);
	pthread_join(th, NULL);

	/* close wakes a sleeping consumer once the ring is drained */
	while (ferry_ring_spsc_peek(r, &p, &len) == 0)
		ferry_ring_spsc_release(r);
	a.rc = 1;
	cr_assert_eq(pthread_create(&th, NULL, peek_forever, &a), 0);
	usleep(20000);
	ferry_ring_spsc_close(r);
	ferry_ring_wait_close(&w);
	pthread_join(th, NULL);
	cr_expect_eq(atomic_load(&a.rc), -EPIPE);
	cr_expect_eq(ferry_ring_spsc_reserve_wait(r, 1, &wp, &w, FERRY_FOREVER), -EPIPE);
	free(r);
}

/* ---- views: a side that pins the capacity it validated ---- */

Test(ring_spsc, a_view_catches_a_capacity_grown_under_it)
{
	size_t n;
	ferry_ring_spsc *r = mk(1024, &n);
	struct ferry_ring_spsc_view v;
	cr_expect_eq(ferry_ring_spsc_view_init(&v, r, n - 8), -EPROTO, "memsize too small");
	cr_expect_eq(ferry_ring_spsc_view_init(NULL, r, n), -EINVAL);
	cr_assert_eq(ferry_ring_spsc_view_init(&v, r, n), 0, "%s", ferry_errmsg());
	cr_expect_eq(v.capacity, 1024);
	void *w;
	cr_assert_eq(ferry_ring_spsc_view_reserve(&v, 5, &w), 0);
	memcpy(w, "hello", 5);
	cr_assert_eq(ferry_ring_spsc_view_commit(&v, 5), 0);
	struct ferry_ring_rec recs[2] = { { "ab", 2 }, { "cd", 2 } };
	cr_assert_eq(ferry_ring_spsc_view_push_batch(&v, recs, 2), 2);
	const void *p;
	size_t len;
	cr_assert_eq(ferry_ring_spsc_view_peek(&v, &p, &len), 0);
	cr_expect_eq(len, 5);
	ferry_ring_spsc_view_release(&v);
	struct ferry_ring_rec out[4];
	cr_assert_eq(ferry_ring_spsc_view_peek_batch(&v, out, 4), 2);
	ferry_ring_spsc_view_release(&v);
	/* the peer grows the capacity to a consistent, larger value: past our memory */
	cr_assert_eq(push(r, "x", 1), 0);
	*w64(r, OFF_CAP) = 1u << 20;
	*w64(r, OFF_MASK) = (1u << 20) - 1;
	cr_expect_eq(ferry_ring_spsc_view_peek(&v, &p, &len), -EPROTO);
	cr_expect(ferry_ring_spsc_is_closed(r));
	cr_expect_eq(ferry_ring_spsc_view_peek_batch(&v, out, 4), -EPROTO);
	cr_expect_eq(ferry_ring_spsc_view_reserve(&v, 1, &w), -EPROTO);
	cr_expect_eq(ferry_ring_spsc_view_commit(&v, 0), -EPROTO);
	cr_expect_eq(ferry_ring_spsc_view_push_batch(&v, recs, 1), -EPROTO);
	free(r);

	/* a view never set up is refused, and the ring is left alone */
	r = mk(1024, &n);
	struct ferry_ring_spsc_view z = { .ring = r, .capacity = 0 };
	cr_expect_eq(ferry_ring_spsc_view_peek(&z, &p, &len), -EINVAL);
	cr_expect(strstr(ferry_errmsg(), "view_init"), "%s", ferry_errmsg());
	cr_expect_eq(ferry_ring_spsc_view_reserve(&z, 1, &w), -EINVAL);
	cr_expect_eq(ferry_ring_spsc_view_peek(NULL, &p, &len), -EINVAL);
	cr_expect_not(ferry_ring_spsc_is_closed(r));
	free(r);
}

/*
 * A view keeps its side's own state (reservation, cached indices, peeked
 * size) privately: a peer that scribbles the shared copies the plain calls
 * use changes nothing for it, and a head the peer rewrites is caught at the
 * view's next reserve, not only when the ring next looks full.
 */
Test(ring_spsc, a_view_ignores_the_shared_per_side_words)
{
	size_t n;
	ferry_ring_spsc *r = mk(1024, &n);
	struct ferry_ring_spsc_view pv, cv;
	cr_assert_eq(ferry_ring_spsc_view_init(&pv, r, n), 0, "%s", ferry_errmsg());
	cr_assert_eq(ferry_ring_spsc_view_init(&cv, r, n), 0, "%s", ferry_errmsg());
	void *w;
	const void *p;
	size_t len;
	for (int round = 0; round < 40; round++) {
		/* the peer's garbage in every per-side word of the shared header */
		*w64(r, OFF_RESV) = 5 + (uint64_t)round;
		*w64(r, OFF_HEAD_CACHE) = 0xfffffffffffffff8ull;
		*w64(r, OFF_TAIL_CACHE) = 0x123456789abcdef0ull;
		*w64(r, OFF_ADV) = 24;
		cr_assert_eq(ferry_ring_spsc_view_reserve(&pv, 40, &w), 0, "round %d: %s", round,
			     ferry_errmsg());
		memset(w, round, 40);
		*w64(r, OFF_RESV) = 0;
		cr_assert_eq(ferry_ring_spsc_view_commit(&pv, 40), 0, "round %d: %s", round,
			     ferry_errmsg());
		cr_assert_eq(ferry_ring_spsc_view_peek(&cv, &p, &len), 0, "round %d: %s", round,
			     ferry_errmsg());
		cr_expect_eq(len, 40);
		cr_expect_eq(((const unsigned char *)p)[39], (unsigned char)round);
		*w64(r, OFF_ADV) = 0;
		ferry_ring_spsc_view_release(&cv);
		cr_expect_eq(ferry_ring_spsc_used(r), 0, "round %d", round);
	}
	cr_expect_not(ferry_ring_spsc_is_closed(r));
	/*
	 * the peer moves head past tail: the producer caches head and reloads
	 * (and validates) it when the cache says full, so it sees the rewrite
	 * within a ring's worth of records, never writing outside the ring (a
	 * head only a little ahead would look, once the tail passed it, like a
	 * consumer that read on: harmless, and not what this checks)
	 */
	*w64(r, OFF_HEAD) = *w64(r, OFF_TAIL) + 4 * ferry_ring_spsc_capacity(r) + 64;
	int rc = 0;
	for (size_t k = 0; rc == 0 && k <= ferry_ring_spsc_capacity(r) / 16; k++) {
		rc = ferry_ring_spsc_view_reserve(&pv, 8, &w);
		if (rc == 0)
			cr_assert_eq(ferry_ring_spsc_view_commit(&pv, 8), 0);
	}
	cr_expect_eq(rc, -EPROTO);
	cr_expect(ferry_ring_spsc_is_closed(r));
	free(r);
}

/*
 * The producer's hint of where its next record goes (the ports prefetch
 * it): the very place the next reserve takes, its framing included, and
 * only room the view knows is free: never past a full ring, across the
 * wrap, for a record too long, or on a view not set up.
 */
Test(ring_spsc, a_view_names_the_next_room_only_when_it_is_free)
{
	size_t n, bytes = 99;
	ferry_ring_spsc *r = mk(1024, &n);
	struct ferry_ring_spsc_view pv, cv, zero;
	memset(&zero, 0, sizeof zero);
	cr_assert_eq(ferry_ring_spsc_view_init(&pv, r, n), 0, "%s", ferry_errmsg());
	cr_assert_eq(ferry_ring_spsc_view_init(&cv, r, n), 0, "%s", ferry_errmsg());
	cr_expect_null(ferry__ring_spsc_view_next(&zero, 8, &bytes));
	cr_expect_eq(bytes, 0);
	cr_expect_null(ferry__ring_spsc_view_next(&pv, ferry_ring_spsc_max_record(r) + 1, &bytes));
	void *w;
	const void *p;
	size_t len;
	/* records of 100 bytes: 112 with framing, 9 fit in 1024 (the 10th
	 * would wrap: 10 x 112 = 1120) */
	for (int i = 0; i < 9; i++) {
		unsigned char *next = ferry__ring_spsc_view_next(&pv, 100, &bytes);
		cr_assert_not_null(next, "record %d", i);
		cr_expect_eq(bytes, 112);
		cr_assert_eq(ferry_ring_spsc_view_reserve(&pv, 100, &w), 0, "%s", ferry_errmsg());
		cr_expect_eq((unsigned char *)w, next + 8, "record %d: the reserve's room", i);
		memset(w, i, 100);
		cr_assert_eq(ferry_ring_spsc_view_commit(&pv, 100), 0, "%s", ferry_errmsg());
	}
	/* 1008 bytes used: room for 8 (16 with framing) at the top, and for
	 * nothing more */
	cr_expect_not_null(ferry__ring_spsc_view_next(&pv, 8, &bytes));
	cr_expect_eq(bytes, 16);
	cr_expect_null(ferry__ring_spsc_view_next(&pv, 100, &bytes));
	cr_expect_eq(bytes, 0);
	cr_expect_null(ferry__ring_spsc_view_next(&pv, 16, &bytes), "16 more bytes would wrap");
	/* The consumer takes them all: 16 bytes still would wrap, and 8 fit
	 * at the top as before (what the view knows of head only says less) */
	for (int i = 0; i < 9; i++) {
		cr_assert_eq(ferry_ring_spsc_view_peek(&cv, &p, &len), 0, "%s", ferry_errmsg());
		ferry_ring_spsc_view_release(&cv);
	}
	cr_expect_null(ferry__ring_spsc_view_next(&pv, 16, &bytes));
	cr_expect_not_null(ferry__ring_spsc_view_next(&pv, 8, &bytes));
	/* After a reserve that wrapped (its room at the bottom), the next room
	 * is right after the wrapped record. */
	cr_assert_eq(ferry_ring_spsc_view_reserve(&pv, 40, &w), 0, "%s", ferry_errmsg());
	cr_assert_eq(ferry_ring_spsc_view_commit(&pv, 40), 0, "%s", ferry_errmsg());
	unsigned char *next = ferry__ring_spsc_view_next(&pv, 40, &bytes);
	cr_assert_not_null(next);
	cr_expect_eq(bytes, 48);
	cr_assert_eq(ferry_ring_spsc_view_reserve(&pv, 40, &w), 0, "%s", ferry_errmsg());
	cr_expect_eq((unsigned char *)w, next + 8);
	cr_expect_eq(ferry__ring_spsc_view_cancel(&pv), 0);
	free(r);

	/* Below a record not read yet: the room up to it and no more. Four of
	 * 200 (208 framed) from 0, two read (head 416), a fifth wraps to the
	 * bottom (tail 1232, at 208): [208, 416) is free, one byte more is not. */
	r = mk(1024, &n);
	cr_assert_eq(ferry_ring_spsc_view_init(&pv, r, n), 0, "%s", ferry_errmsg());
	cr_assert_eq(ferry_ring_spsc_view_init(&cv, r, n), 0, "%s", ferry_errmsg());
	for (int i = 0; i < 4; i++) {
		cr_assert_eq(ferry_ring_spsc_view_reserve(&pv, 200, &w), 0, "%s", ferry_errmsg());
		cr_assert_eq(ferry_ring_spsc_view_commit(&pv, 200), 0, "%s", ferry_errmsg());
	}
	for (int i = 0; i < 2; i++) {
		cr_assert_eq(ferry_ring_spsc_view_peek(&cv, &p, &len), 0, "%s", ferry_errmsg());
		ferry_ring_spsc_view_release(&cv);
	}
	cr_assert_eq(ferry_ring_spsc_view_reserve(&pv, 200, &w), 0, "%s", ferry_errmsg());
	cr_assert_eq(ferry_ring_spsc_view_commit(&pv, 200), 0, "%s", ferry_errmsg());
	next = ferry__ring_spsc_view_next(&pv, 200, &bytes);
	cr_assert_not_null(next, "the room below the unread record");
	cr_expect_eq(bytes, 208);
	cr_expect_null(ferry__ring_spsc_view_next(&pv, 201, &bytes), "it would reach the unread record");
	free(r);
}

/*
 * Positions are free-running 64-bit counters: a batch that crosses 2^64
 * (or a peer that put tail and head there) stays inside the ring, and what
 * goes in comes out in order. The batch's fast stretch bounds itself by
 * differences, so no bound wraps into a larger one (ASan checks the bytes).
 */
Test(ring_spsc, batches_across_the_top_of_the_position_space)
{
	for (int use_view = 0; use_view < 2; use_view++) {
		size_t n;
		ferry_ring_spsc *r = mk(1024, &n);
		uint64_t top = UINT64_MAX - 7 - 4096; /* aligned, four laps below 2^64 */
		*w64(r, OFF_TAIL) = top;
		*w64(r, OFF_HEAD) = top;
		*w64(r, OFF_HEAD_CACHE) = top;
		*w64(r, OFF_TAIL_CACHE) = top;
		struct ferry_ring_spsc_view pv, cv;
		cr_assert_eq(ferry_ring_spsc_view_init(&pv, r, n), 0, "%s", ferry_errmsg());
		cr_assert_eq(ferry_ring_spsc_view_init(&cv, r, n), 0, "%s", ferry_errmsg());
		unsigned char src[8][64];
		struct ferry_ring_rec in[8], out[8];
		unsigned next_in = 0, next_out = 0;
		for (int round = 0; round < 200; round++) {
			for (int k = 0; k < 8; k++) {
				memset(src[k], (int)(next_in + (unsigned)k), sizeof src[k]);
				in[k] = (struct ferry_ring_rec){ src[k], sizeof src[k] };
			}
			int got = use_view ? ferry_ring_spsc_view_push_batch(&pv, in, 8)
					   : ferry_ring_spsc_push_batch(r, in, 8);
			cr_assert(got > 0 || got == -EAGAIN, "round %d: %d %s", round, got,
				  ferry_errmsg());
			if (got > 0)
				next_in += (unsigned)got;
			/* the consumer lags (5 a round for 8 offered): the ring stays
			 * part full while the positions cross 2^64 */
			int took = use_view ? ferry_ring_spsc_view_peek_batch(&cv, out, 5)
					    : ferry_ring_spsc_peek_batch(r, out, 5);
			cr_assert_gt(took, 0, "round %d: %d %s", round, took, ferry_errmsg());
			for (int k = 0; k < took; k++, next_out++) {
				cr_assert_eq(out[k].len, 64);
				cr_assert_eq(((const unsigned char *)out[k].p)[63], (unsigned char)next_out);
			}
			if (use_view)
				ferry_ring_spsc_view_release(&cv);
			else
				ferry_ring_spsc_release(r);
		}
		cr_expect_not(ferry_ring_spsc_is_closed(r));
		cr_expect_lt(*w64(r, OFF_TAIL), top, "the positions wrapped");
		free(r);
	}
}

/*
 * A batch producer in another process against a consumer through its view,
 * taking records one at a time or in batches. The consumer may take a record
 * before the producer has stored tail (the commit word is the record's
 * header): a consumer that then compared head with a stale tail reported a
 * false "head past tail". Records vary in length so that batches wrap with
 * padding at every offset.
 */
#define VB_RECORDS 400000L

static size_t vb_len(long seq)
{
	return 9 + (size_t)(seq * 37 % 193);
}

static void views_batch_vs_lazy_consumer(unsigned batch, bool single)
{
	size_t cap = 16 * 1024, n = ferry_ring_spsc_memsize(cap);
	void *m = tu_shared_alloc(n);
	cr_assert_eq(ferry_ring_spsc_init(m, n), 0, "%s", ferry_errmsg());
	fflush(NULL);
	pid_t pid = fork();
	cr_assert_geq(pid, 0);
	if (pid == 0) {
		struct ferry_ring_spsc_view v;
		if (ferry_ring_spsc_view_init(&v, m, n))
			_exit(10);
		static unsigned char src[64][256];
		struct ferry_ring_rec recs[64];
		int64_t deadline = deadline_in(20);
		for (long seq = 0; seq < VB_RECORDS;) {
			unsigned k = 0;
			for (; k < batch && seq + k < VB_RECORDS; k++) {
				long s = seq + (long)k;
				memset(src[k], (int)(s & 0xff), vb_len(s));
				memcpy(src[k], &s, sizeof s);
				recs[k] = (struct ferry_ring_rec){ src[k], vb_len(s) };
			}
			int got = ferry_ring_spsc_view_push_batch(&v, recs, k);
			if (got == -EAGAIN) {
				if (tu_now_ns() > deadline)
					_exit(11);
				continue;
			}
			if (got <= 0)
				_exit(12);
			seq += got;
		}
		_exit(0);
	}
	struct ferry_ring_spsc_view v;
	cr_assert_eq(ferry_ring_spsc_view_init(&v, m, n), 0, "%s", ferry_errmsg());
	int64_t deadline = deadline_in(20);
	long seq = 0;
	while (seq < VB_RECORDS) {
		struct ferry_ring_rec recs[64];
		int k;
		if (single) {
			k = ferry_ring_spsc_view_peek(&v, &recs[0].p, &recs[0].len);
			if (k == 0)
				k = 1;
		} else {
			k = ferry_ring_spsc_view_peek_batch(&v, recs, batch);
		}
		if (k == -EAGAIN) {
			cr_assert_lt(tu_now_ns(), deadline, "stuck at record %ld", seq);
			continue;
		}
		cr_assert_gt(k, 0, "record %ld: %d (%s)", seq, k, ferry_errmsg());
		for (int i = 0; i < k; i++, seq++) {
			long s;
			memcpy(&s, recs[i].p, sizeof s);
			cr_assert_eq(s, seq, "record %ld arrived as %ld", seq, s);
			cr_assert_eq(recs[i].len, vb_len(seq), "record %ld: length %zu", seq, recs[i].len);
			const unsigned char *b = recs[i].p;
			cr_assert_eq(b[recs[i].len - 1], (unsigned char)(seq & 0xff), "record %ld: last byte", seq);
		}
		ferry_ring_spsc_view_release(&v);
	}
	int st;
	cr_assert_eq(waitpid(pid, &st, 0), pid);
	cr_assert(WIFEXITED(st) && WEXITSTATUS(st) == 0, "producer status 0x%x", st);
	tu_shared_free(m, n);
}

Test(ring_spsc, view_batches_across_processes_single_consumer) { views_batch_vs_lazy_consumer(16, true); }
Test(ring_spsc, view_batches_across_processes_batch_consumer) { views_batch_vs_lazy_consumer(16, false); }
Test(ring_spsc, view_odd_batches_across_processes) { views_batch_vs_lazy_consumer(5, false); }
Test(ring_spsc, view_single_pushes_across_processes) { views_batch_vs_lazy_consumer(1, false); }
