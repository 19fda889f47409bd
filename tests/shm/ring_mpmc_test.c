/* tests/shm/ring_mpmc_test.c - the MPMC ring of fixed-size slots. */
#include "util/util.h"
#include "util/ring_elem.h"

#include <criterion/criterion.h>
#include <errno.h>
#include <pthread.h>
#include <sched.h>
#include <semaphore.h>
#include <signal.h>
#include <stdatomic.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#include "ferry/atomic.h"
#include "ferry/ring.h"

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

/* Test-only hook of shm/ring_mpmc.c: called at each step of a push or pop. */
extern void (*ferry__ring_mpmc_hook)(int step);
enum {
	PUSH_CLAIMED = 1,
	PUSH_COUNTED = 2,
	PUSH_HALF = 3,
	PUSH_WRITTEN = 4,
	PUSH_PUBLISHED = 5,
	POP_CLAIMED = 11,
	POP_COUNTED = 12,
	POP_HALF = 13,
	POP_READ = 14,
	POP_FREED = 15,
};

/* White-box layout, for the corruption cases. */
enum {
	OFF_MAGIC = 0,
	OFF_VERSION = 4,
	OFF_SLOTS = 8,
	OFF_MASK = 16,
	OFF_ELEM = 24,
	OFF_STRIDE = 28,
	OFF_TAIL = 64,
	OFF_HEAD = 128,
	OFF_SLOT0 = 256,
};
enum { ST_FREE = 0, ST_WRITING = 1, ST_FULL = 2, ST_READING = 3 };
static uint64_t word(uint64_t pos, uint32_t pid, unsigned st)
{
	return (pos & ((1ull << 40) - 1)) << 24 | (uint64_t)(pid & 0x3fffff) << 2 | st;
}

TestSuite(ring_mpmc, .timeout = 60);


static ferry_ring_mpmc *mk(size_t slots, size_t elem, size_t *memsize)
{
	size_t n = ferry_ring_mpmc_memsize(slots, elem);
	cr_assert_gt(n, 0);
	n = (n + 63) & ~(size_t)63;
	void *m = aligned_alloc(64, n);
	cr_assert_not_null(m);
	memset(m, 0xa5, n);
	cr_assert_eq(ferry_ring_mpmc_init(m, n, elem), 0, "%s", ferry_errmsg());
	cr_assert_eq(ferry_ring_mpmc_capacity(m), slots);
	if (memsize)
		*memsize = n;
	return m;
}

static uint64_t *w64(void *r, size_t off)
{
	return (uint64_t *)((char *)r + off);
}

static uint32_t *w32(void *r, size_t off)
{
	return (uint32_t *)((char *)r + off);
}

static uint64_t *slot_word(void *r, size_t elem, uint64_t idx)
{
	size_t stride = (8 + elem + 7) & ~(size_t)7;
	return w64(r, OFF_SLOT0 + idx * stride);
}

/* ---- sizing and arguments ---- */

Test(ring_mpmc, memsize_and_init_arguments)
{
	cr_expect_eq(ferry_ring_mpmc_memsize(8, 64), FERRY_RING_MPMC_HDR_SIZE + 8 * 72);
	cr_expect_eq(ferry_ring_mpmc_memsize(8, 1), FERRY_RING_MPMC_HDR_SIZE + 8 * 16);
	cr_expect_eq(ferry_ring_mpmc_memsize(8, 56), FERRY_RING_MPMC_HDR_SIZE + 8 * 64);
	cr_expect_eq(ferry_ring_mpmc_memsize(1, 8), 0);
	cr_expect_eq(ferry_ring_mpmc_memsize(12, 8), 0);
	cr_expect_eq(ferry_ring_mpmc_memsize(8, 0), 0);
	cr_expect_eq(ferry_ring_mpmc_memsize(8, FERRY_RING_MPMC_MAX_ELEM + 1), 0);
	cr_expect_eq(ferry_ring_mpmc_memsize((size_t)FERRY_RING_MPMC_MAX_SLOTS * 2, 8), 0);

	void *m = aligned_alloc(64, 4096);
	cr_expect_eq(ferry_ring_mpmc_init(NULL, 4096, 8), -EINVAL);
	cr_expect(strstr(ferry_errmsg(), "NULL"), "%s", ferry_errmsg());
	cr_expect_eq(ferry_ring_mpmc_init((ferry_ring_mpmc *)((char *)m + 8), 4000, 8), -EINVAL);
	cr_expect(strstr(ferry_errmsg(), "aligned"), "%s", ferry_errmsg());
	cr_expect_eq(ferry_ring_mpmc_init(m, 4096, 0), -EINVAL);
	cr_expect(strstr(ferry_errmsg(), "elem_size"), "%s", ferry_errmsg());
	cr_expect_eq(ferry_ring_mpmc_init(m, FERRY_RING_MPMC_HDR_SIZE + 16, 8), -EINVAL);
	cr_expect(strstr(ferry_errmsg(), "memsize"), "%s", ferry_errmsg());
	/* the largest power of two that fits: (4096 - 256) / 72 = 53 -> 32 */
	cr_assert_eq(ferry_ring_mpmc_init(m, 4096, 64), 0);
	cr_expect_eq(ferry_ring_mpmc_capacity(m), 32);
	cr_expect_eq(ferry_ring_mpmc_elem_size(m), 64);
	cr_expect_eq(ferry_ring_mpmc_check(m, 4096, 64), 0);
	cr_expect_eq(ferry_ring_mpmc_used(m), 0);
	cr_expect_not(ferry_ring_mpmc_is_closed(m));
	free(m);
}

Test(ring_mpmc, calls_reject_bad_arguments)
{
	ferry_ring_mpmc *r = mk(8, 64, NULL);
	struct elem e = mk_elem(1, 1);
	cr_expect_eq(ferry_ring_mpmc_push(NULL, &e, 64), -EINVAL);
	cr_expect_eq(ferry_ring_mpmc_push(r, NULL, 64), -EINVAL);
	cr_expect_eq(ferry_ring_mpmc_push(r, &e, 32), -EINVAL);
	cr_expect(strstr(ferry_errmsg(), "size 32"), "%s", ferry_errmsg());
	cr_expect_eq(ferry_ring_mpmc_pop(r, NULL, 64), -EINVAL);
	cr_expect_eq(ferry_ring_mpmc_pop(r, &e, 65), -EINVAL);
	cr_expect_eq(ferry_ring_mpmc_push_batch(r, &e, 64, 0), 0);
	cr_expect_eq(ferry_ring_mpmc_pop_batch(r, &e, 64, 0), 0);
	cr_expect_eq(ferry_ring_mpmc_check(NULL, 100, 64), -EINVAL);
	cr_expect_eq(ferry_ring_mpmc_capacity(NULL), 0);
	cr_expect_eq(ferry_ring_mpmc_used(NULL), 0);
	ferry_ring_mpmc_close(NULL);
	cr_expect_not(ferry_ring_mpmc_is_closed(r));
	free(r);
}

/* ---- single-threaded behaviour ---- */

Test(ring_mpmc, fifo_full_and_empty)
{
	ferry_ring_mpmc *r = mk(8, 64, NULL);
	struct elem e;
	cr_expect_eq(ferry_ring_mpmc_pop(r, &e, sizeof e), -EAGAIN);
	for (int lap = 0; lap < 5; lap++) {
		for (uint64_t i = 0; i < 8; i++) {
			e = mk_elem(1, (uint64_t)lap * 8 + i);
			cr_assert_eq(ferry_ring_mpmc_push(r, &e, sizeof e), 0);
		}
		cr_expect_eq(ferry_ring_mpmc_used(r), 8);
		e = mk_elem(1, 99);
		cr_expect_eq(ferry_ring_mpmc_push(r, &e, sizeof e), -EAGAIN);
		for (uint64_t i = 0; i < 8; i++) {
			cr_assert_eq(ferry_ring_mpmc_pop(r, &e, sizeof e), 0);
			cr_assert(elem_ok(&e));
			cr_assert_eq(e.seq, (uint64_t)lap * 8 + i);
		}
		cr_expect_eq(ferry_ring_mpmc_pop(r, &e, sizeof e), -EAGAIN);
	}
	cr_expect_eq(ferry_ring_mpmc_check(r, ferry_ring_mpmc_memsize(8, 64), 64), 0);
	free(r);
}

Test(ring_mpmc, odd_element_sizes)
{
	size_t sizes[] = { 1, 3, 8, 13, 100, 4096 };
	for (size_t k = 0; k < sizeof sizes / sizeof sizes[0]; k++) {
		size_t sz = sizes[k];
		ferry_ring_mpmc *r = mk(4, sz, NULL);
		unsigned char in[4096], out[4096];
		for (int i = 0; i < 20; i++) {
			memset(in, i + 1, sz);
			cr_assert_eq(ferry_ring_mpmc_push(r, in, sz), 0);
			memset(out, 0, sz);
			cr_assert_eq(ferry_ring_mpmc_pop(r, out, sz), 0);
			cr_assert_eq(memcmp(in, out, sz), 0, "size %zu", sz);
		}
		free(r);
	}
}

Test(ring_mpmc, batches_move_up_to_n_in_order)
{
	ferry_ring_mpmc *r = mk(16, 64, NULL);
	struct elem in[64], out[64];
	for (uint64_t i = 0; i < 64; i++)
		in[i] = mk_elem(2, i);
	cr_expect_eq(ferry_ring_mpmc_push_batch(r, in, 64, 10), 10);
	cr_expect_eq(ferry_ring_mpmc_push_batch(r, in + 10, 64, 10), 6, "only 6 slots left");
	cr_expect_eq(ferry_ring_mpmc_push_batch(r, in + 16, 64, 10), -EAGAIN);
	cr_expect_eq(ferry_ring_mpmc_used(r), 16);
	cr_expect_eq(ferry_ring_mpmc_pop_batch(r, out, 64, 4), 4);
	cr_expect_eq(ferry_ring_mpmc_pop_batch(r, out + 4, 64, 64), 12);
	cr_expect_eq(ferry_ring_mpmc_pop_batch(r, out, 64, 64), -EAGAIN);
	for (uint64_t i = 0; i < 16; i++)
		cr_assert_eq(out[i].seq, i);
	/* wrap-around batches of every size */
	uint64_t next_in = 0, next_out = 0;
	for (int round = 0; round < 400; round++) {
		size_t n = (size_t)(round % 17) + 1;
		struct elem b[17];
		for (size_t i = 0; i < n; i++)
			b[i] = mk_elem(3, next_in + i);
		int k = ferry_ring_mpmc_push_batch(r, b, 64, n);
		cr_assert(k > 0 || k == -EAGAIN, "push_batch %d", k);
		if (k > 0)
			next_in += (uint64_t)k;
		k = ferry_ring_mpmc_pop_batch(r, out, 64, (size_t)(round % 13) + 1);
		cr_assert(k > 0 || k == -EAGAIN, "pop_batch %d", k);
		for (int i = 0; i < k; i++) {
			cr_assert(elem_ok(&out[i]));
			cr_assert_eq(out[i].seq, next_out++);
		}
	}
	free(r);
}

/* ---- close ---- */

Test(ring_mpmc, close_drains_then_epipe)
{
	ferry_ring_mpmc *r = mk(8, 64, NULL);
	struct elem e;
	for (uint64_t i = 0; i < 3; i++) {
		e = mk_elem(1, i);
		cr_assert_eq(ferry_ring_mpmc_push(r, &e, sizeof e), 0);
	}
	ferry_ring_mpmc_close(r);
	cr_expect(ferry_ring_mpmc_is_closed(r));
	cr_expect_eq(ferry_ring_mpmc_push(r, &e, sizeof e), -EPIPE);
	cr_expect_eq(ferry_ring_mpmc_push_batch(r, &e, sizeof e, 1), -EPIPE);
	for (uint64_t i = 0; i < 3; i++) {
		cr_assert_eq(ferry_ring_mpmc_pop(r, &e, sizeof e), 0);
		cr_expect_eq(e.seq, i);
	}
	cr_expect_eq(ferry_ring_mpmc_pop(r, &e, sizeof e), -EPIPE);
	cr_expect_eq(ferry_ring_mpmc_pop_batch(r, &e, sizeof e, 4), -EPIPE);
	ferry_ring_mpmc_close(r);
	cr_expect_eq(ferry_ring_mpmc_pop(r, &e, sizeof e), -EPIPE);
	cr_expect_eq(ferry_ring_mpmc_check(r, ferry_ring_mpmc_memsize(8, 64), 64), 0);
	free(r);
}

static ferry_ring_mpmc *hook_ring;
static int hook_at;
static void close_at_hook(int step)
{
	if (step == hook_at)
		ferry_ring_mpmc_close(hook_ring);
}

Test(ring_mpmc, close_racing_a_claim_rolls_it_back)
{
	/* closed after the slot claim, before the tail counted it: the push never happened */
	ferry_ring_mpmc *r = mk(8, 64, NULL);
	struct elem e = mk_elem(1, 1);
	cr_assert_eq(ferry_ring_mpmc_push(r, &e, sizeof e), 0);
	hook_ring = r;
	hook_at = PUSH_CLAIMED;
	ferry__ring_mpmc_hook = close_at_hook;
	cr_expect_eq(ferry_ring_mpmc_push(r, &e, sizeof e), -EPIPE);
	ferry__ring_mpmc_hook = NULL;
	cr_expect_eq(ferry_ring_mpmc_pop(r, &e, sizeof e), 0);
	cr_expect_eq(ferry_ring_mpmc_pop(r, &e, sizeof e), -EPIPE);
	cr_expect_eq(ferry_ring_mpmc_check(r, ferry_ring_mpmc_memsize(8, 64), 64), 0);
	free(r);

	/* closed after the tail counted it: the push stands and is delivered */
	r = mk(8, 64, NULL);
	hook_ring = r;
	hook_at = PUSH_COUNTED;
	ferry__ring_mpmc_hook = close_at_hook;
	e = mk_elem(1, 7);
	cr_expect_eq(ferry_ring_mpmc_push(r, &e, sizeof e), 0);
	ferry__ring_mpmc_hook = NULL;
	cr_expect_eq(ferry_ring_mpmc_pop(r, &e, sizeof e), 0);
	cr_expect_eq(e.seq, 7);
	cr_expect_eq(ferry_ring_mpmc_pop(r, &e, sizeof e), -EPIPE);
	free(r);
}

/* ---- hostile memory ---- */

static void expect_eproto(ferry_ring_mpmc *r)
{
	struct elem e = mk_elem(1, 1);
	int rc = ferry_ring_mpmc_pop(r, &e, sizeof e);
	cr_expect_eq(rc, -EPROTO, "pop gave %d: %s", rc, ferry_errmsg());
	cr_expect(strstr(ferry_errmsg(), "corrupt"), "%s", ferry_errmsg());
	cr_expect(ferry_ring_mpmc_is_closed(r));
	rc = ferry_ring_mpmc_push(r, &e, sizeof e);
	cr_expect(rc == -EPROTO || rc == -EPIPE, "push after corruption: %d", rc);
}

static ferry_ring_mpmc *mk_loaded(void)
{
	ferry_ring_mpmc *r = mk(8, 64, NULL);
	struct elem e;
	for (uint64_t i = 0; i < 11; i++) {
		e = mk_elem(1, i);
		cr_assert_eq(ferry_ring_mpmc_push(r, &e, sizeof e), 0);
		if (i < 6)
			cr_assert_eq(ferry_ring_mpmc_pop(r, &e, sizeof e), 0);
	}
	return r; /* head 6, tail 11 */
}

Test(ring_mpmc, corrupt_header_fields_give_eproto)
{
	struct {
		size_t off;
		int wide;
		uint64_t v;
	} cases[] = {
		{ OFF_MAGIC, 0, 0 },	 { OFF_VERSION, 0, 9 },	    { OFF_SLOTS, 1, 12 },
		{ OFF_SLOTS, 1, 1 << 30 }, { OFF_SLOTS, 1, 16 },	    { OFF_MASK, 1, 3 },
		{ OFF_ELEM, 0, 0 },	 { OFF_ELEM, 0, 1u << 20 }, { OFF_STRIDE, 0, 64 },
	};
	for (size_t i = 0; i < sizeof cases / sizeof cases[0]; i++) {
		ferry_ring_mpmc *r = mk_loaded();
		if (cases[i].wide)
			*w64(r, cases[i].off) = cases[i].v;
		else
			*w32(r, cases[i].off) = (uint32_t)cases[i].v;
		expect_eproto(r);
		free(r);
	}
}

Test(ring_mpmc, check_reports_each_problem)
{
	size_t n;
	ferry_ring_mpmc *r = mk(8, 64, &n);
	cr_expect_eq(ferry_ring_mpmc_check(r, n, 64), 0);
	cr_expect_eq(ferry_ring_mpmc_check(r, n, 32), -EPROTO, "element size");
	cr_expect_eq(ferry_ring_mpmc_check(r, n - 100, 64), -EPROTO, "memsize");
	cr_expect_eq(ferry_ring_mpmc_check(r, 10, 64), -EPROTO);
	cr_expect_eq(ferry_ring_mpmc_check((ferry_ring_mpmc *)((char *)r + 8), n, 64), -EINVAL);
	*w32(r, OFF_VERSION) = 2;
	cr_expect_eq(ferry_ring_mpmc_check(r, n, 64), FERRY_EVERSION);
	*w32(r, OFF_VERSION) = 1;
	*w64(r, OFF_HEAD) = 5;
	cr_expect_eq(ferry_ring_mpmc_check(r, n, 64), -EPROTO, "head past tail");
	cr_expect(strstr(ferry_errmsg(), "past"), "%s", ferry_errmsg());
	*w64(r, OFF_HEAD) = 0;
	*w64(r, OFF_TAIL) = 1000;
	cr_expect_eq(ferry_ring_mpmc_check(r, n, 64), -EPROTO, "indices too far apart");
	*w64(r, OFF_TAIL) = 0;
	*slot_word(r, 64, 3) = word(4, 0, ST_FREE);
	cr_expect_eq(ferry_ring_mpmc_check(r, n, 64), -EPROTO, "slot word of another slot");
	*slot_word(r, 64, 3) = word(3, 0, ST_WRITING);
	cr_expect_eq(ferry_ring_mpmc_check(r, n, 64), -EPROTO, "claim without owner");
	*slot_word(r, 64, 3) = word(3, 0, ST_FREE);
	cr_expect_eq(ferry_ring_mpmc_check(r, n, 64), 0);
	free(r);
}

Test(ring_mpmc, head_past_tail_gives_eproto)
{
	ferry_ring_mpmc *r = mk(8, 64, NULL);
	/* an empty ring whose head claims to be ahead of the tail, on a slot of its lap */
	*w64(r, OFF_HEAD) = 8;
	*slot_word(r, 64, 0) = word(8, 0, ST_FREE);
	/* an empty poll reads the tail only now and then: within a bounded number of polls */
	struct elem e;
	int rc = -EAGAIN;
	for (int i = 0; i < 1000 && rc == -EAGAIN; i++)
		rc = ferry_ring_mpmc_pop(r, &e, sizeof e);
	cr_expect_eq(rc, -EPROTO, "%s", ferry_errmsg());
	expect_eproto(r);
	free(r);
}

Test(ring_mpmc, malformed_slot_words_give_eproto)
{
	ferry_ring_mpmc *r = mk_loaded();
	*slot_word(r, 64, 6) = word(7, 0, ST_FULL); /* the lap of another slot */
	expect_eproto(r);
	free(r);
	r = mk_loaded();
	*slot_word(r, 64, 6) = word(6, 0, ST_READING); /* a claim with no owner */
	expect_eproto(r);
	free(r);
	r = mk_loaded();
	*slot_word(r, 64, 6) = word(6, 77, ST_FULL); /* an owner on a full slot */
	expect_eproto(r);
	free(r);
}

Test(ring_mpmc, slot_ahead_of_the_counter_gives_eproto)
{
	ferry_ring_mpmc *r = mk_loaded();
	*slot_word(r, 64, 6) = word(6 + 64, 0, ST_FULL); /* many laps ahead of head 6 */
	expect_eproto(r);
	free(r);
	r = mk(8, 64, NULL);
	*slot_word(r, 64, 0) = word(16, 0, ST_FREE); /* ahead of tail 0 */
	struct elem e = mk_elem(1, 1);
	cr_expect_eq(ferry_ring_mpmc_push(r, &e, sizeof e), -EPROTO);
	cr_expect(ferry_ring_mpmc_is_closed(r));
	free(r);
}

Test(ring_mpmc, random_scribbles_never_read_out_of_bounds)
{
	srand(7);
	for (int iter = 0; iter < 2000; iter++) {
		size_t n;
		ferry_ring_mpmc *r = mk(8, 24, &n);
		unsigned char b[24] = { 0 }, bb[24 * 8];
		int k = rand() % 14;
		for (int i = 0; i < k; i++) {
			ferry_ring_mpmc_push(r, b, 24);
			if (rand() % 3 == 0)
				ferry_ring_mpmc_pop(r, b, 24);
		}
		int hits = 1 + rand() % 4;
		for (int i = 0; i < hits; i++)
			((unsigned char *)r)[(size_t)rand() % n] = (unsigned char)rand();
		(void)ferry_ring_mpmc_check(r, n, 24);
		for (int i = 0; i < 12; i++) {
			int rc = ferry_ring_mpmc_pop_batch(r, bb, 24, (size_t)(rand() % 8) + 1);
			if (rc < 0 && rc != -EAGAIN)
				break;
			ferry_ring_mpmc_push_batch(r, bb, 24, (size_t)(rand() % 8) + 1);
		}
		free(r);
	}
}

/* ---- crash consistency: a stuck owner ---- */

Test(ring_mpmc, a_live_owner_is_never_robbed)
{
	/* a slot claimed by a live process (pid 1) stays its own, however long we look */
	ferry_ring_mpmc *r = mk(8, 64, NULL);
	*slot_word(r, 64, 0) = word(0, 1, ST_WRITING);
	*w64(r, OFF_TAIL) = 1;
	struct elem e;
	for (int i = 0; i < 1000; i++)
		cr_assert_eq(ferry_ring_mpmc_pop(r, &e, sizeof e), -EAGAIN);
	cr_expect_eq(ferry_ring_mpmc_recovered(r), 0);
	cr_expect_eq(*slot_word(r, 64, 0), word(0, 1, ST_WRITING));
	free(r);
}

static pid_t dead_pid(void)
{
	pid_t pid = fork();
	if (pid == 0)
		_exit(0);
	waitpid(pid, NULL, 0);
	return pid;
}

Test(ring_mpmc, a_dead_writer_is_skipped)
{
	ferry_ring_mpmc *r = mk(8, 64, NULL);
	pid_t dead = dead_pid();
	struct elem e = mk_elem(1, 1);
	cr_assert_eq(ferry_ring_mpmc_push(r, &e, sizeof e), 0);
	/* position 1 claimed by a process that is gone, half of it written */
	*slot_word(r, 64, 1) = word(1, (uint32_t)dead, ST_WRITING);
	*w64(r, OFF_TAIL) = 2;
	e = mk_elem(1, 2);
	cr_assert_eq(ferry_ring_mpmc_push(r, &e, sizeof e), 0);
	int got = 0, rc;
	for (int i = 0; i < 200 && got < 2; i++) {
		rc = ferry_ring_mpmc_pop(r, &e, sizeof e);
		if (rc == 0) {
			cr_assert(elem_ok(&e));
			cr_assert_eq(e.seq, (uint64_t)got + 1);
			got++;
		} else {
			cr_assert_eq(rc, -EAGAIN);
		}
	}
	cr_expect_eq(got, 2);
	cr_expect_eq(ferry_ring_mpmc_recovered(r), 1);
	cr_expect_eq(ferry_ring_mpmc_check(r, ferry_ring_mpmc_memsize(8, 64), 64), 0);
	free(r);
}

Test(ring_mpmc, a_dead_reader_gives_its_slot_back)
{
	ferry_ring_mpmc *r = mk(4, 64, NULL);
	pid_t dead = dead_pid();
	struct elem e;
	for (uint64_t i = 0; i < 4; i++) {
		e = mk_elem(1, i);
		cr_assert_eq(ferry_ring_mpmc_push(r, &e, sizeof e), 0);
	}
	/* position 0 taken by a reader that died before advancing head */
	*slot_word(r, 64, 0) = word(0, (uint32_t)dead, ST_READING);
	for (uint64_t i = 1; i < 4; i++) {
		cr_assert_eq(ferry_ring_mpmc_pop(r, &e, sizeof e), 0);
		cr_assert_eq(e.seq, i);
	}
	/* producers wrap onto the dead reader's slot and take it back */
	int pushed = 0;
	for (int i = 0; i < 500 && pushed < 4; i++) {
		e = mk_elem(1, 10 + (uint64_t)pushed);
		int rc = ferry_ring_mpmc_push(r, &e, sizeof e);
		cr_assert(rc == 0 || rc == -EAGAIN, "%d", rc);
		pushed += rc == 0;
	}
	cr_expect_eq(pushed, 4);
	cr_expect_eq(ferry_ring_mpmc_recovered(r), 1);
	for (uint64_t i = 0; i < 4; i++) {
		cr_assert_eq(ferry_ring_mpmc_pop(r, &e, sizeof e), 0);
		cr_assert_eq(e.seq, 10 + i);
	}
	free(r);
}

/* A child that kills itself at step @step of its @nth operation. */
struct crash {
	ferry_ring_mpmc *r;
	int step;
	int nth;
	int ops;
	bool batch;
	uint32_t producer;
};
static int crash_step, crash_countdown;
static void die_at(int step)
{
	if (step == crash_step && --crash_countdown <= 0)
		raise(SIGKILL);
}

static int crash_producer(void *arg)
{
	struct crash *c = arg;
	crash_step = c->step;
	crash_countdown = c->nth;
	ferry__ring_mpmc_hook = die_at;
	for (int i = 0; i < c->ops; i++) {
		struct elem e[2] = { mk_elem(c->producer, (uint64_t)i * 2),
				     mk_elem(c->producer, (uint64_t)i * 2 + 1) };
		int rc = c->batch ? ferry_ring_mpmc_push_batch(c->r, e, sizeof e[0], 2)
				  : ferry_ring_mpmc_push(c->r, e, sizeof e[0]);
		if (rc < 0)
			return 3;
	}
	return 0;
}

static int crash_consumer(void *arg)
{
	struct crash *c = arg;
	crash_step = c->step;
	crash_countdown = c->nth;
	ferry__ring_mpmc_hook = die_at;
	for (int i = 0; i < c->ops; i++) {
		struct elem e[2];
		int rc = c->batch ? ferry_ring_mpmc_pop_batch(c->r, e, sizeof e[0], 2)
				  : ferry_ring_mpmc_pop(c->r, e, sizeof e[0]);
		if (rc < 0)
			return 3;
	}
	return 0;
}

/* Pop until empty; each element whole, seq increasing per producer; returns the count. */
static int drain(ferry_ring_mpmc *r, uint64_t *last_seq, int max_tries)
{
	int got = 0;
	struct elem e;
	for (int i = 0; i < max_tries; i++) {
		int rc = ferry_ring_mpmc_pop(r, &e, sizeof e);
		if (rc == -EAGAIN)
			continue;
		if (rc == -EPIPE)
			break;
		cr_assert_eq(rc, 0, "%s", ferry_errmsg());
		cr_assert(elem_ok(&e), "a torn element: producer %u seq %llu", e.producer,
			  (unsigned long long)e.seq);
		cr_assert(*last_seq == UINT64_MAX || e.seq > *last_seq, "reordered or duplicated");
		*last_seq = e.seq;
		got++;
		i = 0;
	}
	return got;
}

/* Afterwards the ring works at full capacity: nothing wedged. */
static void expect_unwedged(ferry_ring_mpmc *r)
{
	size_t slots = ferry_ring_mpmc_capacity(r);
	for (int lap = 0; lap < 3; lap++) {
		size_t pushed = 0;
		for (int i = 0; i < 1000 && pushed < slots; i++) {
			struct elem e = mk_elem(9, pushed);
			int rc = ferry_ring_mpmc_push(r, &e, sizeof e);
			cr_assert(rc == 0 || rc == -EAGAIN, "%d", rc);
			pushed += rc == 0;
		}
		cr_assert_eq(pushed, slots, "the ring stayed wedged (%zu of %zu)", pushed, slots);
		uint64_t last = UINT64_MAX;
		cr_assert_eq(drain(r, &last, 1000), (int)slots);
	}
}

/*
 * What a child that died at the @f-th firing of @step leaves, in ops of @per
 * slots each: steps 1, 2, 11, 12 fire once per op, the others once per slot.
 * *done: slots whose op completed for them (delivered for a producer,
 * consumed for a consumer); *held: slots the dead child still held.
 */
static void fate(int step, int f, int per, int *done, int *held)
{
	bool per_op = step == PUSH_CLAIMED || step == PUSH_COUNTED || step == POP_CLAIMED ||
		      step == POP_COUNTED;
	int o = per_op ? f - 1 : (f - 1) / per, j = per_op ? 0 : (f - 1) % per;
	bool last = step == PUSH_PUBLISHED || step == POP_FREED;
	*done = o * per + j + last;
	*held = step == PUSH_CLAIMED || step == POP_CLAIMED ? 1 : per - j - last;
}

static void producer_crashes(bool batch, int rounds)
{
	static const int steps[] = { PUSH_CLAIMED, PUSH_COUNTED, PUSH_HALF, PUSH_WRITTEN,
				     PUSH_PUBLISHED };
	size_t n = ferry_ring_mpmc_memsize(8, sizeof(struct elem));
	ferry_ring_mpmc *r = tu_shared_alloc(n);
	int per = batch ? 2 : 1;
	for (size_t si = 0; si < sizeof steps / sizeof steps[0]; si++) {
		for (int round = 0; round < rounds; round++) {
			cr_assert_eq(ferry_ring_mpmc_init(r, n, sizeof(struct elem)), 0);
			struct crash c = { r, steps[si], 1 + round % 3, 3, batch, 5 };
			pid_t pid = tu_fork(crash_producer, &c);
			int st = tu_wait(pid, 10000);
			cr_assert(st != -1 && WIFSIGNALED(st) && WTERMSIG(st) == SIGKILL,
				  "the child did not die at step %d (status 0x%x)", steps[si], st);
			int done, held;
			fate(steps[si], c.nth, per, &done, &held);
			/* everything published is delivered, whole and in order; nothing else */
			uint64_t last = UINT64_MAX;
			int got = drain(r, &last, 1000);
			cr_assert_eq(got, done, "step %d round %d: got %d, want %d", steps[si], round,
				     got, done);
			cr_assert_eq(ferry_ring_mpmc_recovered(r), (uint64_t)held,
				     "step %d: recovered %llu, want %d", steps[si],
				     (unsigned long long)ferry_ring_mpmc_recovered(r), held);
			expect_unwedged(r);
			cr_assert_eq(ferry_ring_mpmc_check(r, n, sizeof(struct elem)), 0, "%s",
				     ferry_errmsg());
		}
	}
	tu_shared_free(r, n);
}

Test(ring_mpmc, killed_producer_at_every_step_neither_wedges_nor_tears)
{
	producer_crashes(false, SLOW_SANITIZER ? 4 : 12);
}

Test(ring_mpmc, killed_batch_producer_at_every_step)
{
	producer_crashes(true, SLOW_SANITIZER ? 3 : 8);
}

static void consumer_crashes(bool batch, int rounds)
{
	static const int steps[] = { POP_CLAIMED, POP_COUNTED, POP_HALF, POP_READ, POP_FREED };
	size_t n = ferry_ring_mpmc_memsize(8, sizeof(struct elem));
	ferry_ring_mpmc *r = tu_shared_alloc(n);
	int per = batch ? 2 : 1;
	for (size_t si = 0; si < sizeof steps / sizeof steps[0]; si++) {
		for (int round = 0; round < rounds; round++) {
			cr_assert_eq(ferry_ring_mpmc_init(r, n, sizeof(struct elem)), 0);
			for (uint64_t i = 0; i < 8; i++) {
				struct elem e = mk_elem(6, i);
				cr_assert_eq(ferry_ring_mpmc_push(r, &e, sizeof e), 0);
			}
			struct crash c = { r, steps[si], 1 + round % 3, 3, batch, 0 };
			pid_t pid = tu_fork(crash_consumer, &c);
			int st = tu_wait(pid, 10000);
			cr_assert(st != -1 && WIFSIGNALED(st) && WTERMSIG(st) == SIGKILL,
				  "the child did not die at step %d (status 0x%x)", steps[si], st);
			int done, held;
			fate(steps[si], c.nth, per, &done, &held);
			/* claimed slots are gone with their reader; the survivor gets the rest in order */
			int claimed = steps[si] == POP_CLAIMED ? done + 1 : done + held;
			uint64_t last = UINT64_MAX;
			int got = drain(r, &last, 1000);
			cr_assert_eq(got, 8 - claimed, "step %d round %d: got %d, want %d", steps[si],
				     round, got, 8 - claimed);
			/* the held slots come back when producers wrap onto them */
			expect_unwedged(r);
			cr_assert_eq(ferry_ring_mpmc_recovered(r), (uint64_t)held,
				     "step %d: recovered %llu, want %d", steps[si],
				     (unsigned long long)ferry_ring_mpmc_recovered(r), held);
			cr_assert_eq(ferry_ring_mpmc_check(r, n, sizeof(struct elem)), 0, "%s",
				     ferry_errmsg());
		}
	}
	tu_shared_free(r, n);
}

Test(ring_mpmc, killed_consumer_at_every_step_does_not_wedge)
{
	consumer_crashes(false, SLOW_SANITIZER ? 4 : 12);
}

Test(ring_mpmc, killed_batch_consumer_at_every_step)
{
	consumer_crashes(true, SLOW_SANITIZER ? 3 : 8);
}

Test(ring_mpmc, a_dead_writer_left_as_a_zombie_is_skipped)
{
	/* the dead producer is not reaped yet: kill(pid, 0) still succeeds */
	ferry_ring_mpmc *r = mk(8, 64, NULL);
	pid_t zombie = fork();
	if (zombie == 0)
		_exit(0);
	siginfo_t si;
	cr_assert_eq(waitid(P_PID, (id_t)zombie, &si, WEXITED | WNOWAIT), 0);
	*slot_word(r, 64, 0) = word(0, (uint32_t)zombie, ST_WRITING);
	*w64(r, OFF_TAIL) = 1;
	struct elem e = mk_elem(1, 1);
	cr_assert_eq(ferry_ring_mpmc_push(r, &e, sizeof e), 0);
	int rc = -EAGAIN;
	for (int i = 0; i < 200 && rc == -EAGAIN; i++)
		rc = ferry_ring_mpmc_pop(r, &e, sizeof e);
	cr_expect_eq(rc, 0);
	cr_expect_eq(e.seq, 1);
	cr_expect_eq(ferry_ring_mpmc_recovered(r), 1);
	waitpid(zombie, NULL, 0);
	free(r);
}

Test(ring_mpmc, a_stopped_owner_in_this_process_is_waited_for)
{
	/* a thread of this process stuck between claim and publish: consumers wait, nothing torn */
	ferry_ring_mpmc *r = mk(8, 64, NULL);
	*slot_word(r, 64, 0) = word(0, (uint32_t)getpid(), ST_WRITING);
	*w64(r, OFF_TAIL) = 1;
	struct elem e;
	for (int i = 0; i < 500; i++)
		cr_assert_eq(ferry_ring_mpmc_pop(r, &e, sizeof e), -EAGAIN);
	cr_expect_eq(ferry_ring_mpmc_recovered(r), 0);
	/* the owner finishes: the element shows up */
	e = mk_elem(4, 4);
	memcpy((char *)slot_word(r, 64, 0) + 8, &e, sizeof e);
	*slot_word(r, 64, 0) = word(0, 0, ST_FULL);
	cr_expect_eq(ferry_ring_mpmc_pop(r, &e, sizeof e), 0);
	cr_expect(elem_ok(&e));
	free(r);
}

/* ---- many producers and consumers ---- */

#define MAXP 4
struct party {
	ferry_ring_mpmc *r;
	uint32_t id;        /* producer id (1-based) */
	uint64_t count;     /* per producer */
	int nprod;
	size_t batch;
	pid_t parent;       /* in a child: leave when the parent is gone */
	int64_t deadline;
	/* consumer results */
	uint64_t got;
	uint64_t sum;       /* sum of seq + 1 over what it took, per producer */
	uint64_t sums[MAXP + 1];
	int err;
};

static bool keep_waiting(const struct party *p, unsigned *spins)
{
	if (++*spins % 64)
		return true;
	sched_yield();
	if (*spins % 4096)
		return true;
	if (tu_now_ns() > p->deadline)
		return false;
	return !p->parent || getppid() == p->parent;
}

static int producer(void *arg)
{
	struct party *p = arg;
	struct elem b[64];
	uint64_t seq = 0;
	while (seq < p->count) {
		size_t n = p->batch;
		if (n > p->count - seq)
			n = p->count - seq;
		for (size_t i = 0; i < n; i++)
			b[i] = mk_elem(p->id, seq + i);
		unsigned spins = 0;
		int rc;
		while ((rc = n == 1 ? ferry_ring_mpmc_push(p->r, b, sizeof b[0])
				    : ferry_ring_mpmc_push_batch(p->r, b, sizeof b[0], n)) == -EAGAIN)
			if (!keep_waiting(p, &spins))
				return p->err = 12;
		if (rc < 0)
			return p->err = 10;
		seq += n == 1 ? 1 : (uint64_t)rc;
	}
	return 0;
}

static int consumer(void *arg)
{
	struct party *p = arg;
	uint64_t last[MAXP + 1];
	memset(last, 0xff, sizeof last);
	struct elem b[64];
	for (;;) {
		unsigned spins = 0;
		int rc;
		while ((rc = p->batch == 1 ? ferry_ring_mpmc_pop(p->r, b, sizeof b[0])
					   : ferry_ring_mpmc_pop_batch(p->r, b, sizeof b[0], p->batch)) ==
		       -EAGAIN)
			if (!keep_waiting(p, &spins))
				return p->err = 23;
		if (rc == -EPIPE)
			return 0;
		if (rc < 0)
			return p->err = 20;
		int k = p->batch == 1 ? 1 : rc;
		for (int i = 0; i < k; i++) {
			if (!elem_ok(&b[i]) || b[i].producer < 1 || b[i].producer > (uint32_t)p->nprod)
				return p->err = 21;
			uint32_t id = b[i].producer;
			if (last[id] != UINT64_MAX && b[i].seq <= last[id])
				return p->err = 22; /* reordered or duplicated within a producer */
			last[id] = b[i].seq;
			p->sums[id] += b[i].seq + 1;
			p->got++;
		}
	}
}

static void *thread_main(void *arg)
{
	struct party *p = arg;
	if (p->id)
		producer(p);
	else
		consumer(p);
	return NULL;
}

/* Runs nprod producers and ncons consumers as threads or processes; checks conservation. */
static void run_parties(int nprod, int ncons, uint64_t count, size_t batch, bool processes,
			size_t slots)
{
	size_t n = ferry_ring_mpmc_memsize(slots, sizeof(struct elem));
	ferry_ring_mpmc *r = tu_shared_alloc(n);
	cr_assert_eq(ferry_ring_mpmc_init(r, n, sizeof(struct elem)), 0);
	struct party *ps = tu_shared_alloc(sizeof(struct party) * (size_t)(nprod + ncons));
	int64_t deadline = tu_now_ns() + 40000000000ll;
	for (int i = 0; i < nprod + ncons; i++)
		ps[i] = (struct party){ .r = r, .id = i < nprod ? (uint32_t)i + 1 : 0, .count = count,
					.nprod = nprod, .batch = batch,
					.parent = processes ? getpid() : 0, .deadline = deadline };
	pthread_t th[2 * MAXP];
	pid_t pid[2 * MAXP];
	for (int i = 0; i < nprod + ncons; i++) {
		if (processes)
			pid[i] = tu_fork(i < nprod ? producer : consumer, &ps[i]);
		else
			cr_assert_eq(pthread_create(&th[i], NULL, thread_main, &ps[i]), 0);
	}
	for (int i = 0; i < nprod; i++) {
		if (processes) {
			int st = tu_wait(pid[i], 60000);
			cr_expect(st != -1 && WIFEXITED(st) && WEXITSTATUS(st) == 0,
				  "producer %d: 0x%x", i, st);
		} else {
			pthread_join(th[i], NULL);
			cr_expect_eq(ps[i].err, 0, "producer %d: error %d", i, ps[i].err);
		}
	}
	ferry_ring_mpmc_close(r);
	uint64_t total = 0, sums[MAXP + 1] = { 0 };
	for (int i = nprod; i < nprod + ncons; i++) {
		if (processes) {
			int st = tu_wait(pid[i], 60000);
			cr_expect(st != -1 && WIFEXITED(st) && WEXITSTATUS(st) == 0,
				  "consumer %d: 0x%x", i, st);
		} else {
			pthread_join(th[i], NULL);
		}
		cr_expect_eq(ps[i].err, 0, "consumer %d: error %d", i, ps[i].err);
		total += ps[i].got;
		for (int j = 1; j <= nprod; j++)
			sums[j] += ps[i].sums[j];
	}
	cr_expect_eq(total, count * (uint64_t)nprod, "taken %llu of %llu",
		     (unsigned long long)total, (unsigned long long)(count * (uint64_t)nprod));
	for (int j = 1; j <= nprod; j++)
		cr_expect_eq(sums[j], count * (count + 1) / 2, "producer %d: lost or duplicated", j);
	cr_expect_eq(ferry_ring_mpmc_recovered(r), 0);
	tu_shared_free(ps, sizeof(struct party) * (size_t)(nprod + ncons));
	tu_shared_free(r, n);
}

#define COUNT (SLOW_SANITIZER ? 20000u : 100000u)

Test(ring_mpmc, threads_2p2c_stamped)
{
	run_parties(2, 2, COUNT, 1, false, 64);
}

Test(ring_mpmc, threads_2p2c_batches)
{
	run_parties(2, 2, COUNT, 16, false, 64);
}

Test(ring_mpmc, processes_2p2c_stamped)
{
	run_parties(2, 2, COUNT, 1, true, 64);
}

Test(ring_mpmc, processes_2p2c_batches)
{
	run_parties(2, 2, COUNT, 16, true, 64);
}

/* ---- the waiting forms ---- */

Test(ring_mpmc, wait_forms_time_out_and_try)
{
	ferry_ring_mpmc *r = mk(2, 64, NULL);
	struct ferry_ec ne, nf;
	ferry_ec_init(&ne);
	ferry_ec_init(&nf);
	struct ferry_ring_wait w = { .not_empty = &ne, .not_full = &nf };
	struct elem e = mk_elem(1, 1);
	cr_expect_eq(ferry_ring_mpmc_pop_wait(r, &e, sizeof e, &w, 0), -EAGAIN);
	int64_t t0 = tu_now_ns();
	cr_expect_eq(ferry_ring_mpmc_pop_wait(r, &e, sizeof e, &w, 20000000), -ETIMEDOUT);
	cr_expect_geq(tu_now_ns() - t0, 20000000, "returned before the timeout");
	cr_expect_eq(ferry_ring_mpmc_push_wait(r, &e, sizeof e, &w, 0), 0);
	cr_expect_eq(ferry_ring_mpmc_push_wait(r, &e, sizeof e, &w, 0), 0);
	w.strategy = FERRY_RING_SLEEP;
	cr_expect_eq(ferry_ring_mpmc_push_wait(r, &e, sizeof e, &w, 5000000), -ETIMEDOUT);
	w.strategy = FERRY_RING_SPIN;
	cr_expect_eq(ferry_ring_mpmc_push_wait(r, &e, sizeof e, &w, 5000000), -ETIMEDOUT);
	cr_expect_eq(ferry_ring_mpmc_pop_wait(r, &e, sizeof e, NULL, FERRY_FOREVER), 0);
	free(r);
}

struct waiter {
	ferry_ring_mpmc *r;
	struct ferry_ring_wait *w;
	_Atomic int tid;
	_Atomic int rc;
	struct elem e;
};

static void *pop_forever(void *arg)
{
	struct waiter *wt = arg;
	atomic_store(&wt->tid, (int)gettid());
	atomic_store(&wt->rc, ferry_ring_mpmc_pop_wait(wt->r, &wt->e, sizeof wt->e, wt->w,
						       FERRY_FOREVER));
	return NULL;
}

/* The thread's scheduler state from /proc ('S' sleeping, 'R' running). */
static char thread_state(int tid)
{
	char path[64], buf[512];
	snprintf(path, sizeof path, "/proc/self/task/%d/stat", tid);
	FILE *f = fopen(path, "r");
	if (!f)
		return '?';
	size_t n = fread(buf, 1, sizeof buf - 1, f);
	fclose(f);
	buf[n] = 0;
	char *rp = strrchr(buf, ')');
	return rp && rp[1] == ' ' ? rp[2] : '?';
}

static bool wait_until_sleeping(int tid)
{
	/* sleeping in the kernel, and still so a little later (not between two polls) */
	for (int i = 0; i < 5000; i++) {
		if (thread_state(tid) == 'S') {
			usleep(2000);
			if (thread_state(tid) == 'S')
				return true;
		}
		usleep(1000);
	}
	return false;
}

static int push_one_later(void *arg)
{
	ferry_ring_mpmc *r = ((struct waiter *)arg)->r;
	struct ferry_ring_wait *w = ((struct waiter *)arg)->w;
	struct elem e = mk_elem(3, 33);
	return ferry_ring_mpmc_push_wait(r, &e, sizeof e, w, FERRY_FOREVER) ? 1 : 0;
}

static int stop_self(void *arg)
{
	raise(SIGSTOP);
	return push_one_later(arg);
}

Test(ring_mpmc, a_waiting_consumer_sleeps_while_its_producer_is_stopped)
{
	size_t n = ferry_ring_mpmc_memsize(8, sizeof(struct elem));
	ferry_ring_mpmc *r = tu_shared_alloc(n + 64);
	cr_assert_eq(ferry_ring_mpmc_init(r, n, sizeof(struct elem)), 0);
	struct ferry_ec *ecs = (struct ferry_ec *)((char *)r + n);
	ferry_ec_init(&ecs[0]);
	ferry_ec_init(&ecs[1]);
	struct ferry_ring_wait w = { .not_empty = &ecs[0], .not_full = &ecs[1] };
	struct waiter wt = { .r = r, .w = &w, .rc = 1 };
	/* the producer: a process, stopped before it pushes */
	pid_t pid = tu_fork(stop_self, &wt);
	siginfo_t si;
	cr_assert_eq(waitid(P_PID, (id_t)pid, &si, WSTOPPED), 0);
	pthread_t th;
	cr_assert_eq(pthread_create(&th, NULL, pop_forever, &wt), 0);
	while (!atomic_load(&wt.tid))
		sched_yield();
	cr_expect(wait_until_sleeping(atomic_load(&wt.tid)), "the waiting consumer never slept");
	cr_expect_eq(atomic_load(&wt.rc), 1, "returned while nothing was pushed");
	kill(pid, SIGCONT);
	pthread_join(th, NULL);
	cr_expect_eq(atomic_load(&wt.rc), 0);
	cr_expect(elem_ok(&wt.e));
	cr_expect_eq(wt.e.seq, 33);
	int st = tu_wait(pid, 10000);
	cr_expect(st != -1 && WIFEXITED(st) && WEXITSTATUS(st) == 0, "producer 0x%x", st);
	tu_shared_free(r, n + 64);
}

Test(ring_mpmc, a_sleeping_consumer_wakes_on_close_and_on_push_from_a_thread)
{
	ferry_ring_mpmc *r = mk(8, 64, NULL);
	struct ferry_ec ne, nf;
	ferry_ec_init(&ne);
	ferry_ec_init(&nf);
	struct ferry_ring_wait w = { .not_empty = &ne, .not_full = &nf };
	struct waiter wt = { .r = r, .w = &w, .rc = 1 };
	pthread_t th;
	cr_assert_eq(pthread_create(&th, NULL, pop_forever, &wt), 0);
	while (!atomic_load(&wt.tid))
		sched_yield();
	cr_expect(wait_until_sleeping(atomic_load(&wt.tid)));
	cr_assert_eq(push_one_later(&wt), 0);
	pthread_join(th, NULL);
	cr_expect_eq(atomic_load(&wt.rc), 0);
	cr_expect_eq(wt.e.seq, 33);

	struct waiter wt2 = { .r = r, .w = &w, .rc = 1 };
	cr_assert_eq(pthread_create(&th, NULL, pop_forever, &wt2), 0);
	while (!atomic_load(&wt2.tid))
		sched_yield();
	cr_expect(wait_until_sleeping(atomic_load(&wt2.tid)));
	ferry_ring_mpmc_close(r);
	ferry_ring_wait_close(&w);
	pthread_join(th, NULL);
	cr_expect_eq(atomic_load(&wt2.rc), -EPIPE);
	free(r);
}

/* ---- views ---- */

Test(ring_mpmc, a_view_pins_slots_and_element_size)
{
	size_t n;
	ferry_ring_mpmc *r = mk(8, 64, &n);
	struct ferry_ring_mpmc_view v;
	cr_expect_eq(ferry_ring_mpmc_view_init(&v, r, n, 32), -EPROTO, "element size");
	cr_expect_eq(ferry_ring_mpmc_view_init(NULL, r, n, 64), -EINVAL);
	cr_assert_eq(ferry_ring_mpmc_view_init(&v, r, n, 64), 0, "%s", ferry_errmsg());
	cr_expect_eq(v.slots, 8);
	struct elem e[3] = { mk_elem(1, 0), mk_elem(1, 1), mk_elem(1, 2) }, o[3];
	cr_assert_eq(ferry_ring_mpmc_view_push(&v, &e[0], sizeof e[0]), 0);
	cr_assert_eq(ferry_ring_mpmc_view_push_batch(&v, &e[1], sizeof e[0], 2), 2);
	cr_expect_eq(ferry_ring_mpmc_view_push(&v, &e[0], 32), -EINVAL);
	cr_assert_eq(ferry_ring_mpmc_view_pop(&v, &o[0], sizeof o[0]), 0);
	cr_assert_eq(ferry_ring_mpmc_view_pop_batch(&v, &o[1], sizeof o[0], 2), 2);
	for (int i = 0; i < 3; i++)
		cr_expect_eq(o[i].seq, (uint64_t)i);
	/* the peer doubles the slot count, consistently: past our memory */
	cr_assert_eq(ferry_ring_mpmc_push(r, &e[0], sizeof e[0]), 0);
	*w64(r, OFF_SLOTS) = 1024;
	*w64(r, OFF_MASK) = 1023;
	cr_expect_eq(ferry_ring_mpmc_view_pop(&v, &o[0], sizeof o[0]), -EPROTO);
	cr_expect(ferry_ring_mpmc_is_closed(r));
	cr_expect_eq(ferry_ring_mpmc_view_push_batch(&v, e, sizeof e[0], 2), -EPROTO);
	cr_expect_eq(ferry_ring_mpmc_view_pop_batch(&v, o, sizeof o[0], 2), -EPROTO);
	free(r);

	/* a view never set up is refused, and the ring is left alone */
	r = mk(8, 64, &n);
	struct ferry_ring_mpmc_view z = { r, 0, 64 };
	cr_expect_eq(ferry_ring_mpmc_view_push(&z, &e[0], sizeof e[0]), -EINVAL);
	cr_expect_eq(ferry_ring_mpmc_view_pop(NULL, &o[0], sizeof o[0]), -EINVAL);
	cr_expect_not(ferry_ring_mpmc_is_closed(r));
	free(r);
}
