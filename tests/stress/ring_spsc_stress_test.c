/*
 * tests/stress/ring_spsc_stress_test.c - the SPSC ring under a long random
 * load: one producer and one consumer (threads, then processes), random record
 * sizes from 0 to max_record, reservations bigger than commits, every record
 * stamped with its sequence number and a checksum. Bounded by time.
 */
#include "util/util.h"

#include <criterion/criterion.h>
#include <errno.h>
#include <pthread.h>
#include <sched.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#include "ferry/ring.h"

TestSuite(ring_spsc_stress, .timeout = 120);

#define PHASE_SEC 5 /* per ring size and mode; 2 sizes x 2 modes ~ 20 s */

static uint64_t mix(uint64_t x)
{
	x ^= x >> 33;
	x *= 0xff51afd7ed558ccdull;
	x ^= x >> 33;
	x *= 0xc4ceb9fe1a85ec53ull;
	return x ^ (x >> 33);
}

/* The length of record @seq: a random mix of tiny, medium, huge and empty. */
static size_t rec_len(uint64_t seq, size_t max)
{
	uint64_t h = mix(seq);
	switch (h & 15) {
	case 0: return 0;
	case 1: return max - (size_t)(h >> 32) % 16;
	case 2: return (size_t)(h >> 32) % (max + 1);
	default: return (size_t)(h >> 32) % 64;
	}
}

static unsigned char byte_at(uint64_t seq, size_t i)
{
	return (unsigned char)(seq * 131 + i * 7 + 1);
}

/* Stamp: seq (8 bytes) and checksum (4) when there is room; pattern bytes elsewhere. */
static uint32_t csum(const unsigned char *p, size_t n)
{
	uint32_t s = 2166136261u;
	for (size_t i = 0; i < n; i++)
		s = (s ^ p[i]) * 16777619u;
	return s;
}

static void stamp(unsigned char *p, size_t len, uint64_t seq)
{
	size_t from = len >= 12 ? 12 : 0;
	for (size_t i = from; i < len; i++)
		p[i] = byte_at(seq, i);
	if (from) {
		uint32_t c = csum(p + 12, len - 12);
		memcpy(p, &seq, 8);
		memcpy(p + 8, &c, 4);
	}
}

static bool verify(const unsigned char *p, size_t len, uint64_t seq, size_t max)
{
	if (len != rec_len(seq, max))
		return false;
	if (len < 12) {
		for (size_t i = 0; i < len; i++)
			if (p[i] != byte_at(seq, i))
				return false;
		return true;
	}
	uint64_t s;
	uint32_t c;
	memcpy(&s, p, 8);
	memcpy(&c, p + 8, 4);
	return s == seq && c == csum(p + 12, len - 12);
}

struct side {
	ferry_ring_spsc *r;
	int64_t until;    /* producer: stop producing at this time */
	int64_t deadline; /* either: give up waiting (a failure) */
	pid_t parent;     /* in a child: leave when the parent is gone */
	uint64_t count;   /* records moved */
	int err;
};

static bool wait_more(const struct side *s, unsigned *spins)
{
	if (++*spins < 128) {
#if defined(__x86_64__)
		__builtin_ia32_pause();
#endif
		return true;
	}
	sched_yield();
	if (*spins % 512)
		return true;
	if (tu_now_ns() > s->deadline)
		return false;
	return !s->parent || getppid() == s->parent;
}

static int fail_side(struct side *s, int err)
{
	ferry_ring_spsc_close(s->r);
	return s->err = err;
}

static int produce(void *arg)
{
	struct side *s = arg;
	size_t max = ferry_ring_spsc_max_record(s->r);
	uint64_t seq = 0;
	while ((seq & 255) || tu_now_ns() < s->until) {
		size_t len = rec_len(seq, max);
		uint64_t h = mix(seq ^ 0xabcdef);
		size_t ask = (h & 3) == 0 ? len + (size_t)(h >> 32) % (max - len + 1) : len;
		void *w;
		unsigned spins = 0;
		int rc;
		while ((rc = ferry_ring_spsc_reserve(s->r, ask, &w)) == -EAGAIN)
			if (!wait_more(s, &spins))
				return fail_side(s, 12);
		if (rc)
			return fail_side(s, 10);
		stamp(w, len, seq);
		if (ferry_ring_spsc_commit(s->r, len))
			return fail_side(s, 11);
		seq++;
	}
	s->count = seq;
	ferry_ring_spsc_close(s->r);
	return 0;
}

static int consume(void *arg)
{
	struct side *s = arg;
	size_t max = ferry_ring_spsc_max_record(s->r);
	uint64_t seq = 0;
	for (;;) {
		const void *p;
		size_t len;
		unsigned spins = 0;
		int rc;
		while ((rc = ferry_ring_spsc_peek(s->r, &p, &len)) == -EAGAIN)
			if (!wait_more(s, &spins))
				return fail_side(s, 23);
		if (rc == -EPIPE)
			break;
		if (rc)
			return fail_side(s, 20);
		if (!verify(p, len, seq, max)) {
			fprintf(stderr, "record %llu: bad (len %zu)\n", (unsigned long long)seq, len);
			return fail_side(s, 21);
		}
		ferry_ring_spsc_release(s->r);
		seq++;
	}
	s->count = seq;
	return 0;
}

static void *produce_thread(void *arg)
{
	produce(arg);
	return NULL;
}

static void run_threads(size_t cap)
{
	size_t n = ferry_ring_spsc_memsize(cap);
	ferry_ring_spsc *r = aligned_alloc(64, n);
	cr_assert_eq(ferry_ring_spsc_init(r, n), 0);
	int64_t t0 = tu_now_ns();
	struct side prod = { r, t0 + PHASE_SEC * 1000000000ll, t0 + 60000000000ll, 0, 0, 0 };
	struct side cons = prod;
	pthread_t t;
	cr_assert_eq(pthread_create(&t, NULL, produce_thread, &prod), 0);
	consume(&cons);
	pthread_join(t, NULL);
	cr_expect_eq(prod.err, 0, "producer error %d", prod.err);
	cr_expect_eq(cons.err, 0, "consumer error %d", cons.err);
	cr_expect_eq(cons.count, prod.count, "sent %llu, received %llu",
		     (unsigned long long)prod.count, (unsigned long long)cons.count);
	cr_log_info("threads, capacity %zu: %llu records", cap, (unsigned long long)cons.count);
	free(r);
}

/* The child produces; the count it reached travels back through the ring's last page. */
struct shared_count {
	uint64_t produced;
};

static int produce_child(void *arg)
{
	struct side *s = arg;
	int rc = produce(s);
	((struct shared_count *)((char *)s->r + ferry_ring_spsc_memsize(
					 ferry_ring_spsc_capacity(s->r))))->produced = s->count;
	return rc;
}

static void run_processes(size_t cap)
{
	size_t n = ferry_ring_spsc_memsize(cap);
	void *mem = tu_shared_alloc(n + 64);
	ferry_ring_spsc *r = mem;
	cr_assert_eq(ferry_ring_spsc_init(r, n), 0);
	struct shared_count *sc = (struct shared_count *)((char *)mem + n);
	int64_t t0 = tu_now_ns();
	struct side prod = { r, t0 + PHASE_SEC * 1000000000ll, t0 + 60000000000ll, getpid(), 0, 0 };
	struct side cons = prod;
	cons.parent = 0;
	pid_t pid = tu_fork(produce_child, &prod);
	consume(&cons);
	int st = tu_wait(pid, 90000);
	cr_expect(st != -1 && WIFEXITED(st) && WEXITSTATUS(st) == 0, "producer status 0x%x", st);
	cr_expect_eq(cons.err, 0, "consumer error %d", cons.err);
	cr_expect_eq(cons.count, sc->produced, "sent %llu, received %llu",
		     (unsigned long long)sc->produced, (unsigned long long)cons.count);
	cr_log_info("processes, capacity %zu: %llu records", cap, (unsigned long long)cons.count);
	tu_shared_free(mem, n + 64);
}

Test(ring_spsc_stress, threads_random_records)
{
	run_threads(256);
	run_threads(64 * 1024);
}

Test(ring_spsc_stress, processes_random_records)
{
	run_processes(1024);
	run_processes(64 * 1024);
}
