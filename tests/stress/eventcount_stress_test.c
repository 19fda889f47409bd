/*
 * Eventcount lost-wakeup hunt. Both sides block through eventcounts with
 * FERRY_FOREVER, with random jitter placed in the race windows (between
 * prepare and re-check, between making the condition true and notifying), so
 * notifies land before, between and after the sleeper's steps. A single lost
 * wake-up hangs a round: the suite timeout (or tu_wait for a child) reports
 * it. Each scenario runs for a fixed time, ~17 s in all.
 *
 * The Dekker litmus runs the two halves of the handshake head-on, round after
 * round, and checks the outcome the fences forbid directly, without relying
 * on a hang.
 */
#include "ferry/atomic.h"
#include "util/util.h"

#include <criterion/criterion.h>
#include <errno.h>
#include <pthread.h>
#include <sched.h>
#include <signal.h>
#include <string.h>
#include <sys/prctl.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#define RUN_NS (3500LL * 1000000) /* per scenario */
#define LITMUS_NS (3000LL * 1000000)
#define NCONSUMERS 3

static uint32_t rnd(uint32_t *s)
{
	uint32_t x = *s;
	x ^= x << 13;
	x ^= x >> 17;
	x ^= x << 5;
	return *s = x;
}

static void jitter_pause(void)
{
#if defined(__x86_64__) || defined(__i386__)
	__builtin_ia32_pause();
#else
	__asm__ __volatile__("" ::: "memory");
#endif
}

/* 0-15 pauses: lines the two sides of a litmus round up differently. */
static void short_delay(uint32_t *s)
{
	for (uint32_t i = rnd(s) & 15; i > 0; i--)
		jitter_pause();
}

/* Nothing, a few pauses, or (rarely) a yield: shifts where the peer lands. */
static void jitter(uint32_t *s)
{
	uint32_t r = rnd(s);
	if ((r & 0xff) == 0) {
		sched_yield();
		return;
	}
	for (uint32_t i = (r >> 8) & 63; i > 0; i--)
		jitter_pause();
}

/* Block until *@word == @want or *@stop, by the eventcount protocol. */
static void await_eq(struct ferry_ec *ec, uint32_t *word, uint32_t want, uint32_t *stop,
		     uint32_t *rng)
{
	for (;;) {
		/* acquire: pairs with the release stores that make it true */
		if (__atomic_load_n(word, __ATOMIC_ACQUIRE) == want ||
		    __atomic_load_n(stop, __ATOMIC_ACQUIRE))
			return;
		uint32_t key = ferry_ec_prepare(ec);
		jitter(rng);
		if (__atomic_load_n(word, __ATOMIC_ACQUIRE) == want ||
		    __atomic_load_n(stop, __ATOMIC_ACQUIRE)) {
			ferry_ec_cancel(ec);
			return;
		}
		ferry_ec_wait(ec, key, FERRY_FOREVER);
	}
}

enum backend { THREADS, PROCESSES };

struct runner {
	enum backend be;
	pthread_t th;
	pid_t pid;
	int (*fn)(void *);
	void *arg;
	pid_t parent;
};

static void *runner_main(void *p)
{
	struct runner *r = p;
	r->fn(r->arg);
	return NULL;
}

/* The child dies with its test, even when the test fails or times out
 * before it could reap it. */
static int child_main(void *p)
{
	struct runner *r = p;
	if (prctl(PR_SET_PDEATHSIG, SIGKILL) != 0 || getppid() != r->parent)
		return 99;
	return r->fn(r->arg);
}

static void start(struct runner *r, enum backend be, int (*fn)(void *), void *arg)
{
	r->be = be;
	r->parent = getpid();
	r->fn = fn;
	r->arg = arg;
	if (be == THREADS)
		cr_assert_eq(pthread_create(&r->th, NULL, runner_main, r), 0);
	else
		r->pid = tu_fork(child_main, r);
}

static void finish(struct runner *r)
{
	if (r->be == THREADS) {
		cr_assert_eq(pthread_join(r->th, NULL), 0);
		return;
	}
	int st = tu_wait(r->pid, 40000);
	cr_assert_neq(st, -1, "child %d hung (lost wake-up?) and was killed", (int)r->pid);
	cr_assert(WIFEXITED(st) && WEXITSTATUS(st) == 0, "child status %#x", st);
}

TestSuite(eventcount_stress, .timeout = 60);

/* ---- ping-pong through a one-slot mailbox, both sides blocking ---- */

struct pingpong {
	struct ferry_ec full, empty;
	uint32_t slot; /* atomic: 0 empty, 1 full */
	uint32_t stop; /* atomic */
	uint64_t rounds;
};

static int pong(void *p)
{
	struct pingpong *pp = p;
	uint32_t rng = 0x9e3779b9u ^ (uint32_t)gettid();
	for (;;) {
		await_eq(&pp->full, &pp->slot, 1, &pp->stop, &rng);
		if (__atomic_load_n(&pp->stop, __ATOMIC_ACQUIRE))
			return 0;
		/* release: pairs with the acquire loads in await_eq of ping */
		__atomic_store_n(&pp->slot, 0, __ATOMIC_RELEASE);
		jitter(&rng);
		ferry_ec_notify(&pp->empty);
	}
}

static void pingpong(enum backend be)
{
	struct pingpong *pp = tu_shared_alloc(sizeof *pp);
	ferry_ec_init(&pp->full);
	ferry_ec_init(&pp->empty);
	struct runner r;
	start(&r, be, pong, pp);
	uint32_t rng = 0x2545f491u;
	uint32_t never = 0;
	int64_t end = tu_now_ns() + RUN_NS;
	uint64_t rounds = 0;
	while (tu_now_ns() < end) {
		await_eq(&pp->empty, &pp->slot, 0, &never, &rng);
		/* release: pairs with the acquire loads in await_eq of pong */
		__atomic_store_n(&pp->slot, 1, __ATOMIC_RELEASE);
		jitter(&rng);
		ferry_ec_notify(&pp->full);
		rounds++;
	}
	/* release: pairs with the acquire loads of stop in pong */
	__atomic_store_n(&pp->stop, 1, __ATOMIC_RELEASE);
	ferry_ec_notify(&pp->full);
	finish(&r);
	cr_expect_gt(rounds, 0);
	cr_log_info("pingpong (%s): %llu rounds", be == THREADS ? "threads" : "processes",
		    (unsigned long long)rounds);
	tu_shared_free(pp, sizeof *pp);
}

Test(eventcount_stress, pingpong_threads)
{
	pingpong(THREADS);
}

Test(eventcount_stress, pingpong_processes)
{
	pingpong(PROCESSES);
}

/* ---- broadcast: one producer, several sleepers on one eventcount ---- */

struct broadcast {
	struct ferry_ec epoch_ec, ack_ec;
	uint32_t epoch; /* atomic */
	uint32_t acks;  /* atomic: consumers that saw the current epoch */
	uint32_t stop;  /* atomic */
	uint32_t errors;
};

/* Blocks until epoch != @seen (not expressible as await_eq). */
static uint32_t await_new_epoch(struct broadcast *b, uint32_t seen, uint32_t *rng)
{
	for (;;) {
		/* acquire: pairs with the release store of epoch in broadcast() */
		uint32_t e = __atomic_load_n(&b->epoch, __ATOMIC_ACQUIRE);
		if (e != seen || __atomic_load_n(&b->stop, __ATOMIC_ACQUIRE))
			return e;
		uint32_t key = ferry_ec_prepare(&b->epoch_ec);
		jitter(rng);
		e = __atomic_load_n(&b->epoch, __ATOMIC_ACQUIRE);
		if (e != seen || __atomic_load_n(&b->stop, __ATOMIC_ACQUIRE)) {
			ferry_ec_cancel(&b->epoch_ec);
			return e;
		}
		ferry_ec_wait(&b->epoch_ec, key, FERRY_FOREVER);
	}
}

static int listener(void *p)
{
	struct broadcast *b = p;
	uint32_t rng = 0x85ebca6bu ^ (uint32_t)gettid();
	uint32_t seen = 0;
	for (;;) {
		uint32_t e = await_new_epoch(b, seen, &rng);
		if (__atomic_load_n(&b->stop, __ATOMIC_ACQUIRE))
			return 0;
		if (e != seen + 1)
			__atomic_fetch_add(&b->errors, 1, __ATOMIC_RELAXED);
		seen = e;
		/* release: pairs with the acquire load of acks in broadcast() */
		__atomic_fetch_add(&b->acks, 1, __ATOMIC_RELEASE);
		jitter(&rng);
		ferry_ec_notify(&b->ack_ec);
	}
}

static void broadcast(enum backend be)
{
	struct broadcast *b = tu_shared_alloc(sizeof *b);
	ferry_ec_init(&b->epoch_ec);
	ferry_ec_init(&b->ack_ec);
	struct runner r[NCONSUMERS];
	for (int i = 0; i < NCONSUMERS; i++)
		start(&r[i], be, listener, b);
	uint32_t rng = 0xc2b2ae35u;
	uint32_t never = 0;
	int64_t end = tu_now_ns() + RUN_NS;
	uint32_t epoch = 0;
	while (tu_now_ns() < end) {
		/* relaxed: nobody reads acks until the epoch store below releases it */
		__atomic_store_n(&b->acks, 0, __ATOMIC_RELAXED);
		/* release: pairs with the acquire loads in await_new_epoch */
		__atomic_store_n(&b->epoch, ++epoch, __ATOMIC_RELEASE);
		jitter(&rng);
		ferry_ec_notify(&b->epoch_ec);
		await_eq(&b->ack_ec, &b->acks, NCONSUMERS, &never, &rng);
	}
	/* release: pairs with the acquire loads of stop in the listeners */
	__atomic_store_n(&b->stop, 1, __ATOMIC_RELEASE);
	ferry_ec_notify(&b->epoch_ec);
	for (int i = 0; i < NCONSUMERS; i++)
		finish(&r[i]);
	cr_expect_eq(__atomic_load_n(&b->errors, __ATOMIC_RELAXED), 0,
		     "a listener skipped an epoch");
	cr_expect_gt(epoch, 0);
	cr_log_info("broadcast (%s): %u epochs to %d sleepers",
		    be == THREADS ? "threads" : "processes", epoch, NCONSUMERS);
	tu_shared_free(b, sizeof *b);
}

Test(eventcount_stress, broadcast_threads)
{
	broadcast(THREADS);
}

Test(eventcount_stress, broadcast_processes)
{
	broadcast(PROCESSES);
}

/* ---- Dekker litmus: prepare + re-check against store + notify ---- */

struct litmus {
	struct ferry_ec ec;
	uint32_t cond;  /* atomic: the producer's condition */
	uint32_t start; /* atomic: round the consumer may run */
	uint32_t done;  /* atomic: round the consumer finished */
	uint32_t seen;  /* the consumer's re-check result in that round */
	uint32_t stop;  /* atomic */
};

static void spin_until(uint32_t *word, uint32_t want, uint32_t *stop)
{
	for (uint32_t n = 0;; n++) {
		/* acquire: pairs with the release stores of the round counters */
		if (__atomic_load_n(word, __ATOMIC_ACQUIRE) == want ||
		    (stop && __atomic_load_n(stop, __ATOMIC_ACQUIRE)))
			return;
		if ((n & 1023) == 1023)
			sched_yield(); /* 2 cores shared with others: do not starve the peer */
		else
			jitter_pause();
	}
}

static void *litmus_consumer(void *p)
{
	struct litmus *l = p;
	uint32_t rng = 0x27d4eb2fu;
	for (uint32_t round = 1;; round++) {
		spin_until(&l->start, round, &l->stop);
		if (__atomic_load_n(&l->stop, __ATOMIC_ACQUIRE))
			return NULL;
		short_delay(&rng);
		ferry_ec_prepare(&l->ec);
		/* acquire: pairs with the release store of cond in dekker_litmus */
		l->seen = __atomic_load_n(&l->cond, __ATOMIC_ACQUIRE);
		/* release: publishes seen; pairs with spin_until(done) */
		__atomic_store_n(&l->done, round, __ATOMIC_RELEASE);
	}
}

Test(eventcount_stress, dekker_litmus_never_loses_both_sides)
{
	struct litmus *l = tu_shared_alloc(sizeof *l);
	pthread_t th;
	cr_assert_eq(pthread_create(&th, NULL, litmus_consumer, l), 0);
	uint32_t rng = 0x165667b1u;
	uint32_t lost = 0, rounds = 0, sleeper_seen = 0;
	int64_t end = tu_now_ns() + LITMUS_NS;
	while (tu_now_ns() < end) {
		uint32_t round = ++rounds;
		/* relaxed: the consumer is parked until the release store of start */
		__atomic_store_n(&l->ec.word, 0, __ATOMIC_RELAXED);
		__atomic_store_n(&l->cond, 0, __ATOMIC_RELAXED);
		/* release: pairs with spin_until(start) in the consumer */
		__atomic_store_n(&l->start, round, __ATOMIC_RELEASE);
		short_delay(&rng);
		/* release: pairs with the consumer's acquire re-check */
		__atomic_store_n(&l->cond, 1, __ATOMIC_RELEASE);
		ferry_ec_notify(&l->ec);
		spin_until(&l->done, round, NULL);
		/* A notify that saw the announce bumped the word to 2; a word still
		 * at 1 means it missed the announce, and then the consumer's
		 * re-check must have seen cond: both missing is a lost wake-up. */
		uint32_t w = __atomic_load_n(&l->ec.word, __ATOMIC_RELAXED);
		if (w == 1 && l->seen == 0)
			lost++;
		if (w != 1)
			sleeper_seen++;
	}
	/* release: pairs with the acquire loads of stop in the consumer */
	__atomic_store_n(&l->stop, 1, __ATOMIC_RELEASE);
	cr_assert_eq(pthread_join(th, NULL), 0);
	cr_expect_eq(lost, 0, "%u of %u rounds lost the wake-up", lost, rounds);
	cr_log_info("dekker litmus: %u rounds, notify saw the sleeper in %u", rounds,
		    sleeper_seen);
	tu_shared_free(l, sizeof *l);
}
