/*
 * Atomics.wait/notify on raw futexes, and the eventcount built on them.
 *
 * The public words are plain uint32_t (the API takes uint32_t *), so every
 * access here goes through the GCC __atomic builtins, which are defined on
 * plain objects; casting to _Atomic uint32_t * would be an aliasing bet.
 *
 * What ferry_wait returns, and why (mirroring Atomics.wait as far as a futex
 * allows):
 *
 *  - 0 ("ok"): the kernel's FUTEX_WAIT returned 0, i.e. a FUTEX_WAKE on this
 *    address dequeued us and counted us in its return value. We cannot tell a
 *    ferry_notify from any other FUTEX_WAKE on the same address (e.g. a stale
 *    wake from an earlier user of the memory, the classic "spurious" futex
 *    wake), but we never absorb a 0: sleeping again would make the waker's
 *    count lie, and a notify(1) that reported one waiter woken would then
 *    have woken nobody. So the invariant is exact: the 0 returns equal the
 *    sum of what the notifies returned. As with Atomics.wait, a 0 says
 *    nothing about the word's value: callers re-check their condition.
 *  - EINTR (a signal handler ran): absorbed. We re-enter the wait with the
 *    same absolute CLOCK_MONOTONIC deadline (FUTEX_WAIT_BITSET), so signals
 *    never extend or shorten the timeout; past the deadline we return
 *    -ETIMEDOUT without re-entering. A notify that comes while the handler
 *    runs finds nobody and does not count us; if the word is unchanged we
 *    sleep on, as an Atomics.wait that began just after that notify would.
 *  - EAGAIN on re-entry after EINTR (the word changed while we were out of
 *    the kernel's queue running the handler): we return -EAGAIN. Re-entering
 *    is a fresh "check the word, then queue" step, and -EAGAIN means exactly
 *    "the word did not hold @expected when this call last checked it, so it
 *    is not waiting". We cannot sleep again (the futex refuses the old value,
 *    and waiting on the new value could sleep through a notify that already
 *    went by); returning 0 would claim a notify that may not exist and break
 *    the count invariant above. Callers treat -EAGAIN like 0: re-check.
 *  - ETIMEDOUT: -ETIMEDOUT. The kernel resolves a wake racing the timeout in
 *    favour of the wake (we return 0 and were counted), never both.
 *
 * Waiter and notifier must use the same variant: a private futex and a
 * shared one on the same word have different kernel keys and never meet.
 *
 * Memory ordering around the syscall: the kernel's futex paths are full
 * barriers (hash-bucket lock, smp_mb on both sides), so a waiter returning 0
 * sees what the notifier wrote before notifying. C11 does not model that;
 * code that needs a formal happens-before re-reads its atomic with acquire.
 */
#include "ferry/atomic.h"
#include "shm/cancel.h"
#include "shm/err.h"

#include <assert.h>
#include <errno.h>
#include <limits.h>
#include <linux/futex.h>
#include <stdalign.h>
#include <sys/syscall.h>
#include <time.h>
#include <unistd.h>

/* Words live in shared memory between processes: an atomic that fell back to
 * a lock would lock a lock that only one process knows about. */
static_assert(__atomic_always_lock_free(sizeof(uint32_t), 0),
	      "32-bit atomics must be lock-free for shared memory");
static_assert(sizeof(struct ferry_ec) == sizeof(uint32_t) &&
		      alignof(struct ferry_ec) == alignof(uint32_t),
	      "struct ferry_ec is exactly one futex word");

#define EC_SLEEPER 1u /* low bit of ferry_ec.word: someone announced a sleep */

static inline long sys_futex(uint32_t *uaddr, int op, uint32_t val, const struct timespec *ts,
			     uint32_t val3)
{
	return syscall(SYS_futex, uaddr, op, val, ts, NULL, val3);
}

/*
 * A thread worker that may be terminated sleeps on its word and on its stop
 * flag at once (futex_waitv, Linux 5.16): ferry_worker_terminate sets the
 * flag and wakes it, so the stop is seen at once, with no slices. Where
 * futex_waitv is missing or forbidden, the sliced sleep below is the
 * fallback. Returns like the futex syscall: 0 woken on @word, 1 woken on the
 * stop flag, -1 with errno.
 */
#ifndef SYS_futex_waitv
#define SYS_futex_waitv 449
#endif
struct cancel_waitv { /* the kernel's struct futex_waitv (stable ABI) */
	uint64_t val, uaddr;
	uint32_t flags, reserved;
};
#define CANCEL_FUTEX_U32 0x02u
static atomic_int cancel_waitv_off; /* futex_waitv refused once: slices */

static long cancel_futex(uint32_t *word, uint32_t expected, int flags, const struct timespec *abs)
{
	struct cancel_waitv wv[2] = {
		{ expected, (uintptr_t)word,
		  CANCEL_FUTEX_U32 | (uint32_t)(flags & FUTEX_PRIVATE_FLAG), 0 },
		{ 0, (uintptr_t)ferry__cancel_flag, CANCEL_FUTEX_U32 | FUTEX_PRIVATE_FLAG, 0 },
	};
	return syscall(SYS_futex_waitv, wv, 2u, 0u, abs, CLOCK_MONOTONIC);
}

static int check_word(const uint32_t *word, const char *fn)
{
	if (FERRY_UNLIKELY(!word))
		return ferry__fail(-EINVAL, "%s: word is NULL", fn);
	if (FERRY_UNLIKELY((uintptr_t)word & (alignof(uint32_t) - 1)))
		return ferry__fail(-EINVAL, "%s: word %p is not 4-byte aligned", fn,
				   (const void *)word);
	return 0;
}

/* @flags: 0 (shared futex) or FUTEX_PRIVATE_FLAG. Semantics: see the top. */
static int wait_word(uint32_t *word, uint32_t expected, int64_t timeout_ns, int flags,
		     const char *fn)
{
	int err = check_word(word, fn);
	if (err)
		return err;
	/* seq_cst like Atomics.wait's read; pairs with the store the notifier
	 * makes before it notifies. Also spares a syscall when not equal. */
	if (__atomic_load_n(word, __ATOMIC_SEQ_CST) != expected)
		return -EAGAIN;
	if (timeout_ns == 0)
		return -ETIMEDOUT;

	struct timespec abs, *absp = NULL;
	int64_t deadline = -1;
	if (timeout_ns > 0) {
		int64_t now = ferry__now_ns();
		if (timeout_ns <= INT64_MAX - now) { /* else: beyond any clock, no limit */
			deadline = now + timeout_ns;
			abs.tv_sec = (time_t)(deadline / 1000000000);
			abs.tv_nsec = (long)(deadline % 1000000000);
			absp = &abs;
		}
	}
	/* FUTEX_WAIT_BITSET takes an absolute CLOCK_MONOTONIC time (the clock of
	 * ferry__now_ns), so a retry after EINTR keeps the original deadline. */
	const int op = FUTEX_WAIT_BITSET | flags;
	for (;;) {
		/* A thread worker that may be terminated sleeps in slices and
		 * looks at its stop flag between them (shm/cancel.h). */
		struct timespec slice, *sp = absp;
		int sliced = 0;
		if (ferry__cancel_flag &&
		    !atomic_load_explicit(&cancel_waitv_off, memory_order_relaxed)) {
			ferry__cancel_point();
			long r = cancel_futex(word, expected, flags, absp);
			if (r == 0)
				return 0;
			if (r > 0)
				continue; /* the stop flag: the cancel point ends us */
			int e = errno;
			if (e == ENOSYS || e == EPERM || e == EINVAL) {
				atomic_store_explicit(&cancel_waitv_off, 1, memory_order_relaxed);
				continue;
			}
			if (e == EAGAIN) /* the word, or the stop flag, differed */
				ferry__cancel_point();
			if (e == EINTR) {
				if (deadline >= 0 && ferry__now_ns() >= deadline)
					return -ETIMEDOUT;
				continue;
			}
			if (e == EAGAIN || e == ETIMEDOUT)
				return -e;
			return ferry__errno(-e, "%s: futex_waitv on %p", fn, (void *)word);
		}
		if (ferry__cancel_flag) {
			ferry__cancel_point();
			int64_t until = ferry__now_ns() + FERRY_CANCEL_SLICE_NS;
			if (deadline < 0 || until < deadline) {
				slice.tv_sec = (time_t)(until / 1000000000);
				slice.tv_nsec = (long)(until % 1000000000);
				sp = &slice;
				sliced = 1;
			}
		}
		if (sys_futex(word, op, expected, sp, FUTEX_BITSET_MATCH_ANY) == 0)
			return 0;
		int e = errno;
		if (e == ETIMEDOUT && sliced)
			continue; /* the slice ended, not the wait */
		switch (e) {
		case EINTR: {
			/* Read the clock even without a deadline: under TSan, an
			 * intercepted call is where the deferred signal handler
			 * runs, and the handler may be what changes the word. */
			int64_t now = ferry__now_ns();
			if (deadline >= 0 && now >= deadline)
				return -ETIMEDOUT;
			continue;
		}
		case EAGAIN:
			return -EAGAIN;
		case ETIMEDOUT:
			return -ETIMEDOUT;
		default:
			return ferry__errno(-e, "%s: FUTEX_WAIT_BITSET on %p", fn, (void *)word);
		}
	}
}

static int notify_word(uint32_t *word, int32_t count, int flags, const char *fn)
{
	int err = check_word(word, fn);
	if (err)
		return err;
	if (FERRY_UNLIKELY(count < 0))
		return ferry__fail(-EINVAL, "%s: count %d is negative", fn, (int)count);
	/* The kernel wakes one waiter for nr_wake 0; Atomics.notify(.., 0) wakes none. */
	if (count == 0)
		return 0;
	long r = sys_futex(word, FUTEX_WAKE | flags, (uint32_t)count, NULL, 0);
	if (r < 0)
		return ferry__errno(-errno, "%s: FUTEX_WAKE on %p", fn, (void *)word);
	return (int)r;
}

FERRY_API int ferry_wait(uint32_t *word, uint32_t expected, int64_t timeout_ns)
{
	return wait_word(word, expected, timeout_ns, 0, "ferry_wait");
}

FERRY_API int ferry_notify(uint32_t *word, int32_t count)
{
	return notify_word(word, count, 0, "ferry_notify");
}

FERRY_API int ferry_wait_private(uint32_t *word, uint32_t expected, int64_t timeout_ns)
{
	return wait_word(word, expected, timeout_ns, FUTEX_PRIVATE_FLAG, "ferry_wait_private");
}

FERRY_API int ferry_notify_private(uint32_t *word, int32_t count)
{
	return notify_word(word, count, FUTEX_PRIVATE_FLAG, "ferry_notify_private");
}

/*
 * The eventcount. One word: sequence << 1 | EC_SLEEPER.
 *
 *   sleeper:  key = fetch_or(word, EC_SLEEPER) | EC_SLEEPER   (seq_cst RMW)
 *             fence; re-check C; futex-wait while word == key
 *   producer: store C (release); fence (seq_cst); load word;
 *             if EC_SLEEPER: CAS word -> (seq + 1) << 1, FUTEX_WAKE all
 *
 * No lost wake-up (Dekker): the sleeper's RMW and the producer's fence are
 * both in the seq_cst total order. If the fence comes first, the sleeper's
 * re-check (after its own fence) sees C and cancels; if the RMW comes first,
 * the producer's load sees EC_SLEEPER (or a later bump that clears it, made
 * by a notifier that then wakes everybody), bumps the sequence, and either
 * the sleeper's futex-wait finds word != key and returns at once, or the
 * sleeper is already queued and the FUTEX_WAKE finds it.
 *
 * Several sleepers share the bit: it means "somebody may sleep" and only a
 * notify clears it (together with bumping the sequence, so every prepared key
 * goes stale at once). A cancel leaves it set: if two sleepers announced and
 * one cancels, clearing the bit would strand the other. The price of that is
 * one extra FUTEX_WAKE (waking nobody) at the next notify, no lost wake.
 *
 * The sequence wraps after 2^31 notifies that found a sleeper; a sleeper
 * would have to sit between prepare and wait across exactly that many to
 * miss one (ABA), which we accept as every futex-based eventcount does.
 */

FERRY_API void ferry_ec_init(struct ferry_ec *ec)
{
	/* relaxed: initialisation, published by whatever hands @ec to others. */
	__atomic_store_n(&ec->word, 0, __ATOMIC_RELAXED);
}

FERRY_API uint32_t ferry_ec_prepare(struct ferry_ec *ec)
{
	/* seq_cst RMW: the announce; pairs with the seq_cst fence in
	 * ferry_ec_notify (Dekker). Its acquire half pairs with the release CAS
	 * in ferry_ec_notify, so a sleeper that was woken and missed C on its
	 * first look sees it after re-preparing. */
	uint32_t old = __atomic_fetch_or(&ec->word, EC_SLEEPER, __ATOMIC_SEQ_CST);
	/* The caller re-checks C next, maybe with a plain acquire load; C11 only
	 * orders that load after the RMW against the producer's fence if a
	 * seq_cst fence sits between (pairs with the fence in ferry_ec_notify).
	 * On x86 the locked RMW already is one; this path is about to sleep. */
#if !defined(FERRY_TSAN)
	__atomic_thread_fence(__ATOMIC_SEQ_CST);
#endif
	return old | EC_SLEEPER;
}

FERRY_API void ferry_ec_cancel(struct ferry_ec *ec)
{
	/* Nothing to undo: the bit may belong to another sleeper too (see above). */
	(void)ec;
}

FERRY_API int ferry_ec_wait(struct ferry_ec *ec, uint32_t key, int64_t timeout_ns)
{
	/* -EAGAIN: a notify bumped the sequence since prepare. 0: woken. Both
	 * are "notified" to the caller, who re-checks C anyway. The wait is on
	 * a shared futex: an eventcount may sit in a segment shared by processes. */
	int r = wait_word(&ec->word, key, timeout_ns, 0, "ferry_ec_wait");
	if (r == -EAGAIN || r == 0)
		return 0;
	return r;
}

FERRY_API int ferry_ec_notify(struct ferry_ec *ec)
{
	/* seq_cst fence: pairs with the seq_cst RMW in ferry_ec_prepare; orders
	 * the caller's store making C true before the load of the word below. */
	ferry__full_fence();
	/* relaxed: the fence above does the ordering; this is the fast path. */
	uint32_t w = __atomic_load_n(&ec->word, __ATOMIC_RELAXED);
	if (FERRY_LIKELY(!(w & EC_SLEEPER)))
		return 0;
	/* (seq | 1) + 1 == (seq + 1) << 1: bump the sequence, clear the bit.
	 * release: pairs with the acquire half of the RMW in ferry_ec_prepare
	 * (and the seq_cst load in ferry_wait's entry), publishing C to a
	 * sleeper that re-prepares. Failure is relaxed: we only retry or leave. */
	while (!__atomic_compare_exchange_n(&ec->word, &w, (w | EC_SLEEPER) + 1, 1,
					    __ATOMIC_RELEASE, __ATOMIC_RELAXED)) {
		/* Another notifier bumped after every announce we could have seen;
		 * its FUTEX_WAKE covers those sleepers. */
		if (!(w & EC_SLEEPER))
			return 0;
	}
	return notify_word(&ec->word, FERRY_NOTIFY_ALL, 0, "ferry_ec_notify");
}
