/*
 * shm/cancel.h - internal: cancellation points for thread workers.
 *
 * The runtime (L3) stops a thread worker cooperatively: it sets the worker's
 * flag and wakes it; the worker ends at its next ferry wait or receive. The
 * waits live below the runtime (shm/, ports/), so the mechanism lives here:
 * a thread-local pointer to the flag, armed by the runtime on a worker
 * thread, and a handler the runtime installs to end the calling worker
 * (pthread_exit through its cleanup). A thread with no flag pays one TLS
 * load per wait. Waits on an armed thread sleep on the flag too
 * (futex_waitv: the stop wakes them at once); where futex_waitv is missing
 * they sleep in slices of at most FERRY_CANCEL_SLICE_NS so that even a wait
 * with no deadline notices.
 */
#ifndef FERRY_SHM_CANCEL_H
#define FERRY_SHM_CANCEL_H

#include <stdatomic.h>
#include <stdint.h>

#define FERRY_CANCEL_SLICE_NS (20 * 1000 * 1000)

extern _Thread_local atomic_int *ferry__cancel_flag;
extern void (*ferry__cancel_handler)(void);

/* Ends the calling thread if it is a worker asked to stop; else returns. */
static inline void ferry__cancel_point(void)
{
	atomic_int *f = ferry__cancel_flag;
	if (f && atomic_load_explicit(f, memory_order_acquire) && ferry__cancel_handler)
		ferry__cancel_handler();
}

/* Cap a sleep of @ns (negative: forever) to the cancellation slice when the
 * calling thread can be cancelled. */
static inline int64_t ferry__cancel_slice(int64_t ns)
{
	if (!ferry__cancel_flag)
		return ns;
	return ns < 0 || ns > FERRY_CANCEL_SLICE_NS ? FERRY_CANCEL_SLICE_NS : ns;
}

#endif
