/*
 * shm/ring_wait.c - waiting forms of the ring operations over the eventcount.
 *
 * The rings never block; this layer retries a try-operation under a wait
 * strategy: spin (pause) for a budget, yield for a budget, then sleep on the
 * eventcount the caller gave (announce, re-check, sleep), so that a side that
 * waits long uses no CPU and the other side's notify costs a fence and a load
 * while nobody sleeps. The other side notifies after every successful
 * operation through the _wait forms (or calls ferry_ec_notify itself).
 */
#include "ferry/atomic.h"
#include "ferry/ring.h"
#include "shm/err.h"

#include <errno.h>
#include <sched.h>
#include <stddef.h>
#include <time.h>

#define DEFAULT_SPIN 2000u
#define DEFAULT_YIELD 20u
/* Polling without an eventcount: the nap between looks once spinning is over. */
#define NAP_NS 50000

typedef int (*try_fn)(void *ctx);

static void nap(int64_t deadline)
{
	int64_t ns = NAP_NS, left = ferry__remaining(deadline);
	if (left >= 0 && left < ns)
		ns = left;
	struct timespec ts = { 0, (long)ns };
	nanosleep(&ts, NULL);
}

/*
 * Run @try until it stops saying -EAGAIN or @timeout_ns passes, waiting on
 * @ec (may be NULL) as @w says. Returns what @try returned, or -ETIMEDOUT.
 */
static int wait_for(try_fn try, void *ctx, struct ferry_ec *ec, const struct ferry_ring_wait *w,
		    int64_t timeout_ns)
{
	int rc = try(ctx);
	if (rc != -EAGAIN || timeout_ns == 0)
		return rc;
	int64_t deadline = ferry__deadline(timeout_ns);
	enum ferry_ring_strategy st = w ? w->strategy : FERRY_RING_ADAPTIVE;
	uint32_t spin = w && w->spin ? w->spin : DEFAULT_SPIN;
	uint32_t yield = w && w->yield ? w->yield : DEFAULT_YIELD;
	if (st == FERRY_RING_SLEEP)
		spin = yield = 0;

	for (uint32_t i = 0; st == FERRY_RING_SPIN || i < spin; i++) {
		ferry__cpu_relax();
		rc = try(ctx);
		if (rc != -EAGAIN)
			return rc;
		if ((i & 255) == 255 && ferry__remaining(deadline) == 0)
			return -ETIMEDOUT;
	}
	for (uint32_t i = 0; i < yield; i++) {
		sched_yield();
		rc = try(ctx);
		if (rc != -EAGAIN)
			return rc;
		if (ferry__remaining(deadline) == 0)
			return -ETIMEDOUT;
	}
	for (;;) {
		int64_t left = ferry__remaining(deadline);
		if (left == 0)
			return -ETIMEDOUT;
		if (!ec) {
			nap(deadline);
			rc = try(ctx);
		} else {
			uint32_t key = ferry_ec_prepare(ec);
			rc = try(ctx); /* the re-check after announcing */
			if (rc != -EAGAIN) {
				ferry_ec_cancel(ec);
				return rc;
			}
			int wr = ferry_ec_wait(ec, key, left);
			if (wr < 0 && wr != -ETIMEDOUT)
				return wr;
			rc = try(ctx);
		}
		if (rc != -EAGAIN)
			return rc;
	}
}

static inline void notify(struct ferry_ec *ec)
{
	if (ec)
		ferry_ec_notify(ec);
}

/* ---- SPSC ---- */

struct spsc_reserve {
	ferry_ring_spsc *r;
	size_t len;
	void **p;
};

static int try_reserve(void *c)
{
	struct spsc_reserve *a = c;
	return ferry_ring_spsc_reserve(a->r, a->len, a->p);
}

FERRY_API int ferry_ring_spsc_reserve_wait(ferry_ring_spsc *r, size_t len, void **p,
					   const struct ferry_ring_wait *w, int64_t timeout_ns)
{
	struct spsc_reserve a = { r, len, p };
	return wait_for(try_reserve, &a, w ? w->not_full : NULL, w, timeout_ns);
}

FERRY_API int ferry_ring_spsc_commit_wait(ferry_ring_spsc *r, size_t len,
					  const struct ferry_ring_wait *w)
{
	int rc = ferry_ring_spsc_commit(r, len);
	if (rc == 0 && w)
		notify(w->not_empty);
	return rc;
}

struct spsc_peek {
	ferry_ring_spsc *r;
	const void **p;
	size_t *len;
};

static int try_peek(void *c)
{
	struct spsc_peek *a = c;
	return ferry_ring_spsc_peek(a->r, a->p, a->len);
}

FERRY_API int ferry_ring_spsc_peek_wait(ferry_ring_spsc *r, const void **p, size_t *len,
					const struct ferry_ring_wait *w, int64_t timeout_ns)
{
	struct spsc_peek a = { r, p, len };
	return wait_for(try_peek, &a, w ? w->not_empty : NULL, w, timeout_ns);
}

FERRY_API void ferry_ring_spsc_release_wait(ferry_ring_spsc *r, const struct ferry_ring_wait *w)
{
	ferry_ring_spsc_release(r);
	if (w)
		notify(w->not_full);
}

/* ---- MPMC ---- */

struct mpmc_op {
	ferry_ring_mpmc *r;
	void *elem;
	size_t size;
};

static int try_push(void *c)
{
	struct mpmc_op *a = c;
	return ferry_ring_mpmc_push(a->r, a->elem, a->size);
}

static int try_pop(void *c)
{
	struct mpmc_op *a = c;
	return ferry_ring_mpmc_pop(a->r, a->elem, a->size);
}

FERRY_API int ferry_ring_mpmc_push_wait(ferry_ring_mpmc *r, const void *elem, size_t size,
					const struct ferry_ring_wait *w, int64_t timeout_ns)
{
	struct mpmc_op a = { r, (void *)elem, size };
	int rc = wait_for(try_push, &a, w ? w->not_full : NULL, w, timeout_ns);
	if (rc == 0 && w)
		notify(w->not_empty);
	return rc;
}

FERRY_API int ferry_ring_mpmc_pop_wait(ferry_ring_mpmc *r, void *elem, size_t size,
				       const struct ferry_ring_wait *w, int64_t timeout_ns)
{
	struct mpmc_op a = { r, elem, size };
	int rc = wait_for(try_pop, &a, w ? w->not_empty : NULL, w, timeout_ns);
	if (rc == 0 && w)
		notify(w->not_full);
	return rc;
}

FERRY_API void ferry_ring_wait_close(const struct ferry_ring_wait *w)
{
	if (!w)
		return;
	notify(w->not_empty);
	notify(w->not_full);
}
