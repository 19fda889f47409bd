/* ferry_wait / ferry_notify: Atomics.wait/notify on futex words. */
#include "ferry/atomic.h"
#include "util/util.h"

#include <criterion/criterion.h>
#include <errno.h>
#include <pthread.h>
#include <signal.h>
#include <stdio.h>
#include <string.h>
#include <sys/prctl.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#define MS 1000000LL
#define NWAITERS 3

/* ---- waiters on threads or processes, all on one shared word ---- */

enum backend { THREADS, PROCESSES };

struct arena {
	uint32_t word;
	int priv;           /* use the _private variants */
	int64_t timeout_ns; /* for every waiter */
	int entered;        /* atomic: waiters about to wait */
	int done;           /* atomic: waiters whose wait returned */
	pid_t ids[NWAITERS];
	int results[NWAITERS];
	int64_t elapsed_ns[NWAITERS];
	struct slot {
		struct arena *a;
		int i;
		pid_t parent;
	} slots[NWAITERS];
};

struct crew {
	enum backend be;
	int n;
	struct arena *a;
	pthread_t th[NWAITERS];
	pid_t pid[NWAITERS];
};

static int waiter(void *arg)
{
	struct slot *s = arg;
	struct arena *a = s->a;
	__atomic_store_n(&a->ids[s->i], gettid(), __ATOMIC_RELAXED);
	/* release: pairs with the acquire load in crew_await_asleep (ids[]) */
	__atomic_fetch_add(&a->entered, 1, __ATOMIC_RELEASE);
	int64_t t0 = tu_now_ns();
	int r = a->priv ? ferry_wait_private(&a->word, 0, a->timeout_ns)
			: ferry_wait(&a->word, 0, a->timeout_ns);
	a->elapsed_ns[s->i] = tu_now_ns() - t0;
	a->results[s->i] = r;
	/* release: pairs with the acquire load in crew_done (results[]) */
	__atomic_fetch_add(&a->done, 1, __ATOMIC_RELEASE);
	return r == 0 ? 0 : 1;
}

/* A waiter process dies with its test, even when the test fails or times
 * out before it could reap it. */
static int waiter_process(void *arg)
{
	struct slot *s = arg;
	if (prctl(PR_SET_PDEATHSIG, SIGKILL) != 0 || getppid() != s->parent)
		return 99;
	return waiter(arg);
}

static void *waiter_thread(void *arg)
{
	waiter(arg);
	return NULL;
}

static void crew_start(struct crew *c, enum backend be, int n, int priv, int64_t timeout_ns)
{
	memset(c, 0, sizeof *c);
	c->be = be;
	c->n = n;
	c->a = tu_shared_alloc(sizeof *c->a);
	c->a->priv = priv;
	c->a->timeout_ns = timeout_ns;
	for (int i = 0; i < n; i++) {
		c->a->slots[i] = (struct slot){ c->a, i, getpid() };
		if (be == THREADS)
			cr_assert_eq(pthread_create(&c->th[i], NULL, waiter_thread, &c->a->slots[i]), 0);
		else
			c->pid[i] = tu_fork(waiter_process, &c->a->slots[i]);
	}
}

static int crew_done(struct crew *c)
{
	return __atomic_load_n(&c->a->done, __ATOMIC_ACQUIRE);
}

/* Until every waiter sleeps in the futex (the suite timeout bounds this). */
static void crew_await_asleep(struct crew *c)
{
	while (__atomic_load_n(&c->a->entered, __ATOMIC_ACQUIRE) < c->n)
		tu_sleep_ms(1);
	for (int i = 0; i < c->n; i++)
		while (!tu_asleep_in_futex(c->a->ids[i]))
			tu_sleep_ms(1);
}

static int crew_notify(struct crew *c, int32_t count)
{
	return c->a->priv ? ferry_notify_private(&c->a->word, count)
			  : ferry_notify(&c->a->word, count);
}

/* Notify until @want waiters in total were woken, or every waiter already
 * left (a failure the caller reports); returns the total woken. */
static int crew_release(struct crew *c, int want)
{
	int total = 0;
	while (total < want && crew_done(c) < c->n) {
		int r = crew_notify(c, FERRY_NOTIFY_ALL);
		cr_assert_geq(r, 0, "notify: %d", r);
		total += r;
		if (total < want)
			tu_sleep_ms(1);
	}
	return total;
}

static void crew_join(struct crew *c)
{
	for (int i = 0; i < c->n; i++) {
		if (c->be == THREADS) {
			cr_assert_eq(pthread_join(c->th[i], NULL), 0);
		} else {
			int st = tu_wait(c->pid[i], 20000);
			cr_assert_neq(st, -1, "waiter process %d did not finish", i);
			cr_assert(WIFEXITED(st), "waiter process %d died: status %#x", i, st);
		}
	}
}

static void crew_free(struct crew *c)
{
	tu_shared_free(c->a, sizeof *c->a);
}

/* ---- single-thread behaviour ---- */

TestSuite(atomic_wait, .timeout = 30);

Test(atomic_wait, returns_eagain_when_not_equal)
{
	uint32_t w = 5;
	cr_expect_eq(ferry_wait(&w, 4, FERRY_FOREVER), -EAGAIN);
	cr_expect_eq(ferry_wait(&w, 4, 0), -EAGAIN);
	cr_expect_eq(ferry_wait(&w, 4, 1000 * MS), -EAGAIN);
	cr_expect_eq(ferry_wait_private(&w, 6, FERRY_FOREVER), -EAGAIN);
	cr_expect_eq(ferry_wait_private(&w, 6, 1000 * MS), -EAGAIN);
}

Test(atomic_wait, times_out_after_at_least_the_timeout)
{
	uint32_t w = 7;
	int64_t t0 = tu_now_ns();
	cr_expect_eq(ferry_wait(&w, 7, 30 * MS), -ETIMEDOUT);
	int64_t el = tu_now_ns() - t0;
	cr_expect_geq(el, 30 * MS, "returned after %lld ns", (long long)el);

	t0 = tu_now_ns();
	cr_expect_eq(ferry_wait_private(&w, 7, 30 * MS), -ETIMEDOUT);
	el = tu_now_ns() - t0;
	cr_expect_geq(el, 30 * MS, "private: returned after %lld ns", (long long)el);
}

Test(atomic_wait, times_out_on_a_shared_word)
{
	uint32_t *w = tu_shared_alloc(sizeof *w);
	int64_t t0 = tu_now_ns();
	cr_expect_eq(ferry_wait(w, 0, 20 * MS), -ETIMEDOUT);
	cr_expect_geq(tu_now_ns() - t0, 20 * MS);
	tu_shared_free(w, sizeof *w);
}

Test(atomic_wait, timeout_zero_never_sleeps)
{
	uint32_t w = 1;
	cr_expect_eq(ferry_wait(&w, 1, 0), -ETIMEDOUT);
	cr_expect_eq(ferry_wait(&w, 2, 0), -EAGAIN);
	cr_expect_eq(ferry_wait_private(&w, 1, 0), -ETIMEDOUT);
	cr_expect_eq(ferry_wait_private(&w, 2, 0), -EAGAIN);
}

Test(atomic_wait, huge_timeout_behaves_as_a_timeout_not_an_error)
{
	uint32_t w = 3;
	/* Not equal, so no sleep; the deadline arithmetic must not overflow. */
	cr_expect_eq(ferry_wait(&w, 4, INT64_MAX), -EAGAIN);
}

Test(atomic_wait, notify_without_waiters_returns_zero)
{
	uint32_t w = 0;
	cr_expect_eq(ferry_notify(&w, 1), 0);
	cr_expect_eq(ferry_notify(&w, FERRY_NOTIFY_ALL), 0);
	cr_expect_eq(ferry_notify(&w, 0), 0);
	cr_expect_eq(ferry_notify_private(&w, 1), 0);
	cr_expect_eq(ferry_notify_private(&w, FERRY_NOTIFY_ALL), 0);
}

Test(atomic_wait, rejects_bad_arguments)
{
	uint32_t buf[2] = { 0, 0 };
	uint32_t *odd = (uint32_t *)(void *)((char *)buf + 1);

	cr_expect_eq(ferry_wait(NULL, 0, 0), -EINVAL);
	cr_expect(strstr(ferry_errmsg(), "word"), "message: '%s'", ferry_errmsg());
	cr_expect_eq(ferry_wait(odd, 0, FERRY_FOREVER), -EINVAL);
	cr_expect(strstr(ferry_errmsg(), "aligned"), "message: '%s'", ferry_errmsg());
	cr_expect_eq(ferry_wait_private(NULL, 0, 0), -EINVAL);
	cr_expect_eq(ferry_wait_private(odd, 0, 0), -EINVAL);
	cr_expect(strstr(ferry_errmsg(), "ferry_wait_private"), "message: '%s'", ferry_errmsg());

	cr_expect_eq(ferry_notify(NULL, 1), -EINVAL);
	cr_expect(strstr(ferry_errmsg(), "word"), "message: '%s'", ferry_errmsg());
	cr_expect_eq(ferry_notify(odd, 1), -EINVAL);
	cr_expect_eq(ferry_notify(&buf[0], -1), -EINVAL);
	cr_expect(strstr(ferry_errmsg(), "count"), "message: '%s'", ferry_errmsg());
	cr_expect_eq(ferry_notify_private(NULL, 1), -EINVAL);
	cr_expect_eq(ferry_notify_private(odd, 1), -EINVAL);
	cr_expect_eq(ferry_notify_private(&buf[0], INT32_MIN), -EINVAL);
	cr_expect(strstr(ferry_errmsg(), "ferry_notify_private: count"), "message: '%s'",
		  ferry_errmsg());
}

/* ---- waking, threads and processes ---- */

static void wakes_one_waiter(enum backend be, int priv)
{
	struct crew c;
	crew_start(&c, be, 1, priv, FERRY_FOREVER);
	crew_await_asleep(&c);
	cr_expect_eq(crew_notify(&c, 1), 1);
	crew_join(&c);
	cr_expect_eq(c.a->results[0], 0, "wait returned %d", c.a->results[0]);
	crew_free(&c);
}

Test(atomic_wait, notify_wakes_a_waiting_thread)
{
	wakes_one_waiter(THREADS, 0);
}

Test(atomic_wait, notify_wakes_a_waiting_process)
{
	wakes_one_waiter(PROCESSES, 0);
}

Test(atomic_wait, private_notify_wakes_a_waiting_thread)
{
	wakes_one_waiter(THREADS, 1);
}

/* notify(1) with three asleep: exactly one returns, two stay asleep. */
static void notify_one_of_three(enum backend be, int priv)
{
	struct crew c;
	crew_start(&c, be, NWAITERS, priv, FERRY_FOREVER);
	crew_await_asleep(&c);
	/* Atomics.notify(.., 0) wakes nobody (FUTEX_WAKE with 0 would wake one). */
	cr_expect_eq(crew_notify(&c, 0), 0);
	cr_assert_eq(crew_notify(&c, 1), 1);
	while (crew_done(&c) < 1)
		tu_sleep_ms(1);
	tu_sleep_ms(20); /* room for a wrong second wake to show */
	cr_expect_eq(crew_done(&c), 1, "notify(1) let %d waiters go", crew_done(&c));
	int still = 0;
	for (int i = 0; i < NWAITERS; i++)
		still += tu_asleep_in_futex(c.a->ids[i]);
	cr_expect_eq(still, NWAITERS - 1, "%d waiters still asleep", still);
	/* The rest only leave with a notify of their own, each counted once. */
	cr_expect_eq(crew_release(&c, NWAITERS - 1), NWAITERS - 1);
	crew_join(&c);
	for (int i = 0; i < NWAITERS; i++)
		cr_expect_eq(c.a->results[i], 0, "waiter %d returned %d", i, c.a->results[i]);
	crew_free(&c);
}

Test(atomic_wait, notify_one_wakes_exactly_one_thread)
{
	notify_one_of_three(THREADS, 0);
}

Test(atomic_wait, notify_one_wakes_exactly_one_process)
{
	notify_one_of_three(PROCESSES, 0);
}

Test(atomic_wait, private_notify_one_wakes_exactly_one_thread)
{
	notify_one_of_three(THREADS, 1);
}

static void notify_all(enum backend be, int priv)
{
	struct crew c;
	crew_start(&c, be, NWAITERS, priv, FERRY_FOREVER);
	crew_await_asleep(&c);
	cr_expect_eq(crew_notify(&c, FERRY_NOTIFY_ALL), NWAITERS);
	crew_join(&c);
	for (int i = 0; i < NWAITERS; i++)
		cr_expect_eq(c.a->results[i], 0, "waiter %d returned %d", i, c.a->results[i]);
	crew_free(&c);
}

Test(atomic_wait, notify_all_wakes_every_thread)
{
	notify_all(THREADS, 0);
}

Test(atomic_wait, notify_all_wakes_every_process)
{
	notify_all(PROCESSES, 0);
}

Test(atomic_wait, private_notify_all_wakes_every_thread)
{
	notify_all(THREADS, 1);
}

/* A waiter that times out while nobody notifies: every backend. */
static void times_out_in_waiter(enum backend be)
{
	struct crew c;
	crew_start(&c, be, 1, 0, 40 * MS);
	crew_join(&c);
	cr_expect_eq(c.a->results[0], -ETIMEDOUT);
	cr_expect_geq(c.a->elapsed_ns[0], 40 * MS);
	crew_free(&c);
}

Test(atomic_wait, times_out_in_a_thread)
{
	times_out_in_waiter(THREADS);
}

Test(atomic_wait, times_out_in_a_process)
{
	times_out_in_waiter(PROCESSES);
}

/* ---- signals: EINTR is absorbed, the deadline holds ---- */

static int signals_seen;
static uint32_t *sig_word_to_change; /* the handler stores 1 here when set */

static void on_sigusr1(int sig)
{
	(void)sig;
	__atomic_fetch_add(&signals_seen, 1, __ATOMIC_RELAXED);
	uint32_t *w = __atomic_load_n(&sig_word_to_change, __ATOMIC_RELAXED);
	if (w)
		__atomic_store_n(w, 1, __ATOMIC_SEQ_CST);
}

static void install_handler(struct sigaction *old)
{
	struct sigaction sa;
	memset(&sa, 0, sizeof sa);
	sa.sa_handler = on_sigusr1;
	sigemptyset(&sa.sa_mask);
	sa.sa_flags = 0; /* no SA_RESTART: the futex sees EINTR */
	cr_assert_eq(sigaction(SIGUSR1, &sa, old), 0);
	__atomic_store_n(&signals_seen, 0, __ATOMIC_RELAXED);
}

/* Interrupt the sleeping waiter @k times, each time once it sleeps again. */
static void interrupt(struct crew *c, int k)
{
	for (int j = 0; j < k && crew_done(c) == 0; j++) {
		crew_await_asleep(c);
		if (crew_done(c))
			break;
		int before = __atomic_load_n(&signals_seen, __ATOMIC_RELAXED);
		/* The thread is not joined yet, so its handle is valid even if
		 * its wait just timed out. */
		pthread_kill(c->th[0], SIGUSR1);
		while (__atomic_load_n(&signals_seen, __ATOMIC_RELAXED) == before &&
		       crew_done(c) == 0)
			tu_sleep_ms(1);
	}
}

Test(atomic_wait, signal_does_not_end_a_timed_wait_early)
{
	struct sigaction old;
	install_handler(&old);
	struct crew c;
	crew_start(&c, THREADS, 1, 0, 300 * MS);
	interrupt(&c, 5);
	crew_join(&c);
	cr_expect_geq(__atomic_load_n(&signals_seen, __ATOMIC_RELAXED), 1);
	cr_expect_eq(c.a->results[0], -ETIMEDOUT, "wait returned %d", c.a->results[0]);
	cr_expect_geq(c.a->elapsed_ns[0], 300 * MS, "returned after %lld ns",
		      (long long)c.a->elapsed_ns[0]);
	crew_free(&c);
	sigaction(SIGUSR1, &old, NULL);
}

Test(atomic_wait, signal_does_not_end_an_untimed_wait)
{
	struct sigaction old;
	install_handler(&old);
	struct crew c;
	crew_start(&c, THREADS, 1, 0, FERRY_FOREVER);
	interrupt(&c, 5);
	cr_expect_eq(__atomic_load_n(&signals_seen, __ATOMIC_RELAXED), 5);
	cr_expect_eq(crew_done(&c), 0, "the wait ended on a signal");
	/* Still waiting, and a notify still reaches it. */
	cr_expect_eq(crew_release(&c, 1), 1);
	crew_join(&c);
	cr_expect_eq(c.a->results[0], 0, "wait returned %d", c.a->results[0]);
	crew_free(&c);
	sigaction(SIGUSR1, &old, NULL);
}

/* The chosen semantics: if the word changed while the waiter was out of the
 * kernel's queue running a handler, the re-check fails: -EAGAIN, never a
 * hang and never a 0 that no notify accounts for. */
Test(atomic_wait, word_changed_during_a_signal_gives_eagain)
{
	struct sigaction old;
	install_handler(&old);
	struct crew c;
	crew_start(&c, THREADS, 1, 0, FERRY_FOREVER);
	__atomic_store_n(&sig_word_to_change, &c.a->word, __ATOMIC_RELAXED);
	interrupt(&c, 1);
	crew_join(&c);
	__atomic_store_n(&sig_word_to_change, NULL, __ATOMIC_RELAXED);
	cr_expect_eq(c.a->results[0], -EAGAIN, "wait returned %d", c.a->results[0]);
	crew_free(&c);
	sigaction(SIGUSR1, &old, NULL);
}
