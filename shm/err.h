/* shm/err.h - internal: recording the thread's detailed error message. */
#ifndef FERRY_SHM_ERR_H
#define FERRY_SHM_ERR_H

#include "ferry/common.h"

/*
 * ferry__fail - record a detailed message for the calling thread and return
 * @err, so a failing path reads: return ferry__fail(-EINVAL, "size %zu ...", n);
 * The message is prefixed with the name of the public call when @fmt starts
 * with it by convention ("ferry_seg_create: ...").
 */
int ferry__fail(int err, const char *fmt, ...) __attribute__((format(printf, 2, 3)));

/* ferry__errno - ferry__fail(-errno, ...) with strerror appended. */
int ferry__errno(int err, const char *fmt, ...) __attribute__((format(printf, 2, 3)));

#define FERRY_LIKELY(x) __builtin_expect(!!(x), 1)
#define FERRY_UNLIKELY(x) __builtin_expect(!!(x), 0)

/*
 * ferry__wait_fd - wait until @fd has @events (poll bits) or the absolute
 * @deadline (ferry__deadline; negative: none) passes. Returns 0 when the
 * caller should retry its call (ready, or a hang-up or error that call will
 * report), -EAGAIN for @timeout_ns 0, -ETIMEDOUT, or -errno. EINTR absorbed.
 */
int ferry__wait_fd(int fd, short events, int64_t timeout_ns, int64_t deadline);

/* Monotonic clock in nanoseconds. */
int64_t ferry__now_ns(void);

/* Absolute deadline for a relative timeout (FERRY_FOREVER stays negative). */
static inline int64_t ferry__deadline(int64_t timeout_ns)
{
	return timeout_ns < 0 ? -1 : ferry__now_ns() + timeout_ns;
}

/* Nanoseconds left until @deadline (0 when passed; -1 for no deadline). */
static inline int64_t ferry__remaining(int64_t deadline)
{
	if (deadline < 0)
		return -1;
	int64_t left = deadline - ferry__now_ns();
	return left > 0 ? left : 0;
}

/*
 * A full (seq_cst) fence. Under TSan, GCC rejects atomic_thread_fence
 * (-Wtsan: TSan does not model fences), so the same instruction is issued
 * by hand there; TSan then sees no ordering from it, which only makes it
 * stricter about the accesses around it.
 */
#if defined(__SANITIZE_THREAD__)
#define FERRY_TSAN 1
#elif defined(__has_feature)
#if __has_feature(thread_sanitizer)
#define FERRY_TSAN 1
#endif
#endif
static inline void ferry__full_fence(void)
{
#if defined(FERRY_TSAN) && (defined(__x86_64__) || defined(__i386__))
	__asm__ __volatile__("mfence" ::: "memory");
#elif defined(FERRY_TSAN) && defined(__aarch64__)
	__asm__ __volatile__("dmb ish" ::: "memory");
#else
	__atomic_thread_fence(__ATOMIC_SEQ_CST);
#endif
}

static inline void ferry__cpu_relax(void)
{
#if defined(__x86_64__) || defined(__i386__)
	__builtin_ia32_pause();
#elif defined(__aarch64__)
	__asm__ __volatile__("yield" ::: "memory");
#endif
}

#endif
