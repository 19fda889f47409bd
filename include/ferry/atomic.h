/**
 * @file
 * @brief Atomics.wait/notify on 32-bit words, and eventcounts.
 *
 * ferry_wait/ferry_notify are futexes on a 32-bit word anywhere: in private
 * memory between threads, or in a shared segment between processes (shared
 * futexes by default; the _private variants are for words that never leave
 * the process and are a little cheaper). The word must be 4-byte aligned and
 * only accessed atomically.
 *
 * The eventcount lets a blocking queue sleep without making its producer pay
 * a syscall per item. Usage by a consumer waiting for a condition C (e.g.
 * "ring not empty") that a producer makes true:
 *
 * @code
 *     for (;;) {
 *         if (C) break;
 *         uint32_t key = ferry_ec_prepare(ec);   // announce the sleep
 *         if (C) { ferry_ec_cancel(ec); break; } // re-check after announcing
 *         ferry_ec_wait(ec, key, timeout);       // sleeps unless notified since
 *     }
 * @endcode
 *
 * and by the producer: make C true (release store), then ferry_ec_notify(ec).
 * notify costs a fence and a load when nobody sleeps, a syscall only when
 * somebody announced a sleep. A notify after prepare and before wait is never
 * lost: the wait returns at once.
 */
#ifndef FERRY_ATOMIC_H
#define FERRY_ATOMIC_H

#include "ferry/common.h"

#ifdef __cplusplus
extern "C" {
#endif

/** Wake every waiter (a count for ferry_notify). */
#define FERRY_NOTIFY_ALL INT32_MAX

/**
 * Atomics.wait: if *word == expected, sleep until notified or until the
 * timeout passes.
 *
 * Signals (EINTR) and spurious futex returns are absorbed; the deadline holds.
 * @param word a 4-byte aligned word, private or in a shared segment.
 * @param expected the value *word must hold for the call to sleep.
 * @param timeout_ns FERRY_FOREVER: no limit; 0: do not sleep.
 * @return 0 woken by a notify ("ok"), -EAGAIN *word != expected
 *   ("not-equal"), -ETIMEDOUT ("timed-out"), -EINVAL (NULL or misaligned).
 */
FERRY_API int ferry_wait(uint32_t *word, uint32_t expected, int64_t timeout_ns);

/**
 * Atomics.notify: wake up to @p count waiters on @p word.
 *
 * @param word the word waited on (any process that maps it).
 * @param count how many to wake; FERRY_NOTIFY_ALL for all.
 * @return the number woken, or -EINVAL (NULL, misaligned, negative count).
 */
FERRY_API int ferry_notify(uint32_t *word, int32_t count);

/** ferry_wait on a word that is never shared with another process (a little
 * cheaper). Same parameters and returns as ferry_wait. */
FERRY_API int ferry_wait_private(uint32_t *word, uint32_t expected, int64_t timeout_ns);
/** ferry_notify on a word that is never shared with another process. Same
 * parameters and returns as ferry_notify. */
FERRY_API int ferry_notify_private(uint32_t *word, int32_t count);

/** An eventcount; lives in shared or private memory, zero-initialised is valid. */
struct ferry_ec {
	uint32_t word; /**< sequence << 1 | someone-sleeps bit */
};

/** Initialise @p ec (the same as zeroing it). */
FERRY_API void ferry_ec_init(struct ferry_ec *ec);

/** Announce an intent to sleep.
 * @return the key to pass to ferry_ec_wait. */
FERRY_API uint32_t ferry_ec_prepare(struct ferry_ec *ec);

/** Give up a prepared sleep (the condition became true on re-check). */
FERRY_API void ferry_ec_cancel(struct ferry_ec *ec);

/**
 * Sleep until a notify after the ferry_ec_prepare that gave @p key, or until
 * the timeout.
 *
 * May return 0 spuriously: callers re-check their condition.
 * @param ec the eventcount.
 * @param key what ferry_ec_prepare returned.
 * @param timeout_ns FERRY_FOREVER: no limit.
 * @return 0 (notified, or notified before the call), -ETIMEDOUT.
 */
FERRY_API int ferry_ec_wait(struct ferry_ec *ec, uint32_t key, int64_t timeout_ns);

/**
 * Wake every sleeper. Call after making the condition true.
 *
 * @return the number of sleepers woken (0 without a syscall when none
 *   announced a sleep).
 */
FERRY_API int ferry_ec_notify(struct ferry_ec *ec);

#ifdef __cplusplus
}
#endif
#endif /* FERRY_ATOMIC_H */
