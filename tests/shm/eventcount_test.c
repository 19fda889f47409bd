/* struct ferry_ec: the eventcount behind blocking queues. */
#include "ferry/atomic.h"
#include "util/util.h"

#include <criterion/criterion.h>
#include <errno.h>
#include <pthread.h>
#include <sched.h>
#include <signal.h>
#include <stdio.h>
#include <string.h>
#include <sys/prctl.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#define MS 1000000LL

enum backend { THREADS, PROCESSES };

/* Run @fn(@arg) on a thread or in a forked process; join with finish(). */
struct runner {
	enum backend be;
	pthread_t th;
	pid_t pid;
	int (*fn)(void *);
	void *arg;
	pid_t parent;
	int rc;
};

static void *runner_main(void *p)
{
	struct runner *r = p;
	r->rc = r->fn(r->arg);
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
	*r = (struct runner){ .be = be, .fn = fn, .arg = arg, .parent = getpid() };
	if (be == THREADS)
		cr_assert_eq(pthread_create(&r->th, NULL, runner_main, r), 0);
	else
		r->pid = tu_fork(child_main, r);
}

/* Returns the function's result (the exit status for a process). */
static int finish(struct runner *r)
{
	if (r->be == THREADS) {
		cr_assert_eq(pthread_join(r->th, NULL), 0);
		return r->rc;
	}
	/* Below the suite timeout, so a hung child is killed, not orphaned. */
	int st = tu_wait(r->pid, 45000);
	cr_assert_neq(st, -1, "child %d hung (lost wake-up?) and was killed", (int)r->pid);
	cr_assert(WIFEXITED(st), "child died: status %#x", st);
	return WEXITSTATUS(st);
}

TestSuite(eventcount, .timeout = 60);

/* ---- single thread ---- */

Test(eventcount, notify_without_sleepers_returns_zero)
{
	struct ferry_ec ec;
	ferry_ec_init(&ec);
	cr_expect_eq(ferry_ec_notify(&ec), 0);
	cr_expect_eq(ferry_ec_notify(&ec), 0);
	struct ferry_ec zero = { 0 }; /* zero-initialised is valid */
	cr_expect_eq(ferry_ec_notify(&zero), 0);
	/* No announce, so no syscall and no change of the word. */
	cr_expect_eq(ec.word, 0u);
}

Test(eventcount, prepare_notify_wait_returns_at_once)
{
	struct ferry_ec ec;
	ferry_ec_init(&ec);
	uint32_t key = ferry_ec_prepare(&ec);
	cr_expect_eq(ferry_ec_notify(&ec), 0, "nobody was asleep in the futex");
	/* Would sleep forever if the notify were lost; the suite timeout says so. */
	cr_expect_eq(ferry_ec_wait(&ec, key, FERRY_FOREVER), 0);
	cr_expect_eq(ferry_ec_wait(&ec, key, 0), 0);
}

Test(eventcount, wait_times_out_without_notify)
{
	struct ferry_ec ec;
	ferry_ec_init(&ec);
	uint32_t key = ferry_ec_prepare(&ec);
	cr_expect_eq(ferry_ec_wait(&ec, key, 0), -ETIMEDOUT);
	int64_t t0 = tu_now_ns();
	cr_expect_eq(ferry_ec_wait(&ec, key, 20 * MS), -ETIMEDOUT);
	cr_expect_geq(tu_now_ns() - t0, 20 * MS);
}

Test(eventcount, a_notify_makes_every_older_key_stale)
{
	struct ferry_ec ec;
	ferry_ec_init(&ec);
	uint32_t k1 = ferry_ec_prepare(&ec);
	uint32_t k2 = ferry_ec_prepare(&ec); /* a second sleeper, same epoch */
	cr_expect_eq(k1, k2);
	ferry_ec_notify(&ec);
	uint32_t k3 = ferry_ec_prepare(&ec);
	cr_expect_neq(k3, k1);
	cr_expect_eq(ferry_ec_wait(&ec, k1, FERRY_FOREVER), 0);
	cr_expect_eq(ferry_ec_wait(&ec, k3, 0), -ETIMEDOUT);
}

/* A cancel leaves the sleeper bit for the next notify to clear: one extra
 * FUTEX_WAKE that wakes nobody, then back to the fast path. */
Test(eventcount, cancel_leaves_the_bit_for_one_notify)
{
	struct ferry_ec ec;
	ferry_ec_init(&ec);
	uint32_t key = ferry_ec_prepare(&ec);
	ferry_ec_cancel(&ec);
	cr_expect_eq(ec.word & 1u, 1u);
	cr_expect_eq(ferry_ec_notify(&ec), 0);
	cr_expect_eq(ec.word & 1u, 0u);
	cr_expect_neq(ec.word, key);
	uint32_t after = ec.word;
	cr_expect_eq(ferry_ec_notify(&ec), 0);
	cr_expect_eq(ec.word, after, "a notify without sleepers changed the word");
}

static void cpu_pause(void)
{
#if defined(__x86_64__) || defined(__i386__)
	__builtin_ia32_pause();
#else
	__asm__ __volatile__("" ::: "memory");
#endif
}

/* ---- handoff: a producer counts up, a consumer takes one at a time ---- */

#define HANDOFF_ITEMS 100000

struct handoff {
	struct ferry_ec ec;
	uint32_t produced; /* atomic */
	uint32_t consumed; /* atomic: the consumer's progress, for the report */
	uint32_t sleeps;   /* consumer's waits */
	pid_t consumer_id;
};

static int consumer(void *p)
{
	struct handoff *h = p;
	__atomic_store_n(&h->consumer_id, gettid(), __ATOMIC_RELAXED);
	uint32_t sleeps = 0;
	for (uint32_t got = 0; got < HANDOFF_ITEMS; got++) {
		for (;;) {
			/* acquire: pairs with the release fetch_add in producer() */
			if (__atomic_load_n(&h->produced, __ATOMIC_ACQUIRE) > got)
				break;
			uint32_t key = ferry_ec_prepare(&h->ec);
			if (__atomic_load_n(&h->produced, __ATOMIC_ACQUIRE) > got) {
				ferry_ec_cancel(&h->ec);
				break;
			}
			ferry_ec_wait(&h->ec, key, FERRY_FOREVER);
			sleeps++;
		}
		/* relaxed: progress report only */
		__atomic_store_n(&h->consumed, got + 1, __ATOMIC_RELAXED);
	}
	__atomic_store_n(&h->sleeps, sleeps, __ATOMIC_RELAXED);
	return 0;
}

static int producer(void *p)
{
	struct handoff *h = p;
	for (uint32_t i = 0; i < HANDOFF_ITEMS; i++) {
		/* release: pairs with the acquire loads in consumer() */
		__atomic_fetch_add(&h->produced, 1, __ATOMIC_RELEASE);
		ferry_ec_notify(&h->ec);
		if ((i & 31) == 0) { /* let the consumer catch up and sleep, now and then */
			for (uint32_t n = (i * 2654435761u) >> 22; n > 0; n--)
				cpu_pause();
		}
	}
	return 0;
}

static void handoff(enum backend be)
{
	struct handoff *h = tu_shared_alloc(sizeof *h);
	ferry_ec_init(&h->ec);
	struct runner r;
	start(&r, be, consumer, h);
	producer(h);
	cr_expect_eq(finish(&r), 0);
	cr_expect_eq(__atomic_load_n(&h->consumed, __ATOMIC_RELAXED), HANDOFF_ITEMS);
	cr_log_info("handoff (%s): %u items, consumer slept %u times",
		    be == THREADS ? "threads" : "processes", (unsigned)HANDOFF_ITEMS,
		    (unsigned)__atomic_load_n(&h->sleeps, __ATOMIC_RELAXED));
	tu_shared_free(h, sizeof *h);
}

Test(eventcount, handoff_never_loses_a_wakeup_threads)
{
	handoff(THREADS);
}

Test(eventcount, handoff_never_loses_a_wakeup_processes)
{
	handoff(PROCESSES);
}

/* ---- several sleepers ---- */

struct sleepers {
	struct ferry_ec ec;
	uint32_t go;      /* atomic: the condition */
	int entered;      /* atomic */
	pid_t ids[2];
	int wakes[2];     /* waits each sleeper made */
	int slot_next;    /* atomic: hands out slots */
};

static int sleeper(void *p)
{
	struct sleepers *s = p;
	int i = __atomic_fetch_add(&s->slot_next, 1, __ATOMIC_RELAXED);
	__atomic_store_n(&s->ids[i], gettid(), __ATOMIC_RELAXED);
	/* release: pairs with the acquire load in await_sleepers (ids[]) */
	__atomic_fetch_add(&s->entered, 1, __ATOMIC_RELEASE);
	int waits = 0;
	for (;;) {
		/* acquire: pairs with the release store of go in the tests */
		if (__atomic_load_n(&s->go, __ATOMIC_ACQUIRE))
			break;
		uint32_t key = ferry_ec_prepare(&s->ec);
		if (__atomic_load_n(&s->go, __ATOMIC_ACQUIRE)) {
			ferry_ec_cancel(&s->ec);
			break;
		}
		ferry_ec_wait(&s->ec, key, FERRY_FOREVER);
		waits++;
	}
	s->wakes[i] = waits;
	return 0;
}

static void await_sleepers(struct sleepers *s, int n)
{
	while (__atomic_load_n(&s->entered, __ATOMIC_ACQUIRE) < n)
		tu_sleep_ms(1);
	for (int i = 0; i < n; i++)
		while (!tu_asleep_in_futex(__atomic_load_n(&s->ids[i], __ATOMIC_RELAXED)))
			tu_sleep_ms(1);
}

static void two_sleepers(enum backend be)
{
	struct sleepers *s = tu_shared_alloc(sizeof *s);
	ferry_ec_init(&s->ec);
	struct runner r[2];
	start(&r[0], be, sleeper, s);
	start(&r[1], be, sleeper, s);
	await_sleepers(s, 2);
	/* release: pairs with the acquire loads in sleeper() */
	__atomic_store_n(&s->go, 1, __ATOMIC_RELEASE);
	cr_expect_eq(ferry_ec_notify(&s->ec), 2, "one notify must wake both sleepers");
	cr_expect_eq(finish(&r[0]), 0);
	cr_expect_eq(finish(&r[1]), 0);
	cr_expect_eq(s->wakes[0], 1);
	cr_expect_eq(s->wakes[1], 1);
	tu_shared_free(s, sizeof *s);
}

Test(eventcount, one_notify_wakes_two_sleeping_threads)
{
	two_sleepers(THREADS);
}

Test(eventcount, one_notify_wakes_two_sleeping_processes)
{
	two_sleepers(PROCESSES);
}

/* Two announced, one cancels: the other must still be woken. */
static void cancel_keeps_other_sleeper(enum backend be)
{
	struct sleepers *s = tu_shared_alloc(sizeof *s);
	ferry_ec_init(&s->ec);
	struct runner r;
	start(&r, be, sleeper, s);
	await_sleepers(s, 1);
	uint32_t key = ferry_ec_prepare(&s->ec); /* this thread: the second sleeper */
	(void)key;
	ferry_ec_cancel(&s->ec); /* ...which finds its condition true and leaves */
	/* release: pairs with the acquire loads in sleeper() */
	__atomic_store_n(&s->go, 1, __ATOMIC_RELEASE);
	cr_expect_eq(ferry_ec_notify(&s->ec), 1);
	cr_expect_eq(finish(&r), 0);
	tu_shared_free(s, sizeof *s);
}

Test(eventcount, cancel_by_one_sleeper_keeps_the_other_wakeable_threads)
{
	cancel_keeps_other_sleeper(THREADS);
}

Test(eventcount, cancel_by_one_sleeper_keeps_the_other_wakeable_processes)
{
	cancel_keeps_other_sleeper(PROCESSES);
}
