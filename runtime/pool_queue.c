/*
 * The pool's task queue: a bounded MPMC queue of slot indices whose claims
 * name their owner (see runtime/pool_int.h for the cell word and why), and
 * the validation of the shared layout both sides use.
 *
 * Positions are free-running 64-bit counters; a cell stores the low 32 bits
 * of the position it is meant for, compared as a signed 32-bit difference
 * (a thread would have to stall for 2^31 queue operations to be fooled).
 */
#include "runtime/pool_int.h"
#include "shm/err.h"

#include <errno.h>
#include <sched.h>
#include <string.h>

_Static_assert(ATOMIC_LLONG_LOCK_FREE == 2, "64-bit atomics in shared memory must be lock-free");
_Static_assert(ATOMIC_INT_LOCK_FREE == 2, "32-bit atomics in shared memory must be lock-free");

int ferry__pool_geo(struct pool_geo *g, void *base, size_t len)
{
	struct pool_hdr *h = base;
	memset(g, 0, sizeof *g);
	if (len < sizeof *h || h->magic != POOL_MAGIC || h->version != POOL_VERSION)
		return -EPROTO;
	/* One read of each field: the header is immutable after create. */
	uint64_t total = h->total;
	uint32_t nslots = h->nslots, ncells = h->ncells, nseats = h->nseats, ib = h->inline_bytes;
	uint64_t qo = h->queue_off, co = h->comp_off, cs = h->comp_size, so = h->seats_off,
		 lo = h->slots_off, ao = h->areas_off;
	if (total > len || !nslots || nslots > POOL_MAX_SLOTS || !ncells || (ncells & (ncells - 1)) ||
	    ncells < nslots || !nseats || nseats > FERRY_POOL_MAX_WORKERS || !ib ||
	    ib > FERRY_POOL_INLINE_MAX)
		return -EPROTO;
	uint64_t qend = qo + sizeof(struct pool_queue) + (uint64_t)ncells * 8;
	uint64_t send = so + (uint64_t)nseats * sizeof(struct pool_seat);
	uint64_t lend = lo + (uint64_t)nslots * sizeof(struct pool_slot);
	uint64_t aend = ao + (uint64_t)nslots * ib;
	if (qo < sizeof *h || (qo & 63) || qend > total || (co & 63) || co < qend || co + cs > total ||
	    (so & 63) || so < co + cs || send > total || (lo & 63) || lo < send || lend > total ||
	    ao < lend || aend > total)
		return -EPROTO;
	if (ferry_ring_mpmc_check((ferry_ring_mpmc *)((unsigned char *)base + co), cs,
				  sizeof(struct pool_comp)))
		return -EPROTO;
	g->base = base;
	g->hdr = h;
	g->q = (struct pool_queue *)((unsigned char *)base + qo);
	g->comp = (ferry_ring_mpmc *)((unsigned char *)base + co);
	g->seats = (struct pool_seat *)((unsigned char *)base + so);
	g->slots = (struct pool_slot *)((unsigned char *)base + lo);
	g->areas = (unsigned char *)base + ao;
	g->nslots = nslots;
	g->ncells = ncells;
	g->nseats = nseats;
	g->inline_bytes = ib;
	return 0;
}

static inline int32_t pos_diff(uint32_t a, uint64_t b)
{
	return (int32_t)(a - (uint32_t)b);
}

int ferry__pool_q_push(const struct pool_geo *g, uint32_t slot)
{
	struct pool_queue *q = g->q;
	uint32_t mask = g->ncells - 1;
	for (unsigned spins = 0;; spins++) {
		/* acquire: pairs with the CAS that advanced tail, so the cell
		 * read below is at least as new as that position. */
		uint64_t t = atomic_load_explicit(&q->tail, memory_order_acquire);
		_Atomic uint64_t *c = &q->cells[t & mask];
		uint64_t w = atomic_load_explicit(c, memory_order_acquire);
		int32_t d = pos_diff(cw_pos(w), t);
		if (d == 0 && cw_state(w) == C_EMPTY) {
			/* release: the slot (state, value, times) written before is
			 * seen by the consumer whose claim CAS reads this word. */
			if (atomic_compare_exchange_strong_explicit(c, &w, cw_make((uint32_t)t, C_FULL, 0, slot),
								    memory_order_release, memory_order_relaxed)) {
				uint64_t e = t;
				/* relaxed on failure: someone helped already. */
				atomic_compare_exchange_strong_explicit(&q->tail, &e, t + 1, memory_order_release,
									memory_order_relaxed);
				return 0;
			}
			continue;
		}
		if (d == 0) { /* filled by another producer: help tail along */
			uint64_t e = t;
			atomic_compare_exchange_strong_explicit(&q->tail, &e, t + 1, memory_order_release,
								memory_order_relaxed);
			continue;
		}
		if (d > 0) /* our tail is stale */
			continue;
		/* The cell still holds the previous lap: full, or a consumer has
		 * not released it yet (a dead one is recovered by the manager). */
		if (cw_state(w) == C_FULL)
			return -EAGAIN;
		if ((spins & 63) == 63)
			sched_yield();
		else
			ferry__cpu_relax();
	}
}

int ferry__pool_q_pop(const struct pool_geo *g, unsigned seat, uint32_t *slot, uint64_t *pos)
{
	struct pool_queue *q = g->q;
	uint32_t mask = g->ncells - 1;
	for (;;) {
		/* acquire: pairs with the CAS that advanced head. */
		uint64_t h = atomic_load_explicit(&q->head, memory_order_acquire);
		_Atomic uint64_t *c = &q->cells[h & mask];
		/* acquire: pairs with the producer's release CAS (FULL). */
		uint64_t w = atomic_load_explicit(c, memory_order_acquire);
		int32_t d = pos_diff(cw_pos(w), h);
		if (d == 0 && cw_state(w) == C_FULL) {
			uint64_t taken = cw_make((uint32_t)h, C_TAKEN, seat, cw_slot(w));
			/* acq_rel: acquire the producer's slot writes; release is
			 * for the manager's crash sweep reading the claim. */
			if (!atomic_compare_exchange_strong_explicit(c, &w, taken, memory_order_acq_rel,
								     memory_order_relaxed))
				continue;
			uint64_t e = h;
			atomic_compare_exchange_strong_explicit(&q->head, &e, h + 1, memory_order_release,
								memory_order_relaxed);
			*slot = cw_slot(w);
			*pos = h;
			return 0;
		}
		if (d == 0 && cw_state(w) == C_EMPTY)
			return -EAGAIN; /* nothing published at head yet */
		if (d == 0 || d > 0) {
			/* Taken (d == 0) or taken and released (d > 0) at h: head
			 * must move past it; help. */
			uint64_t e = h;
			atomic_compare_exchange_strong_explicit(&q->head, &e, h + 1, memory_order_release,
								memory_order_relaxed);
			continue;
		}
		/* d < 0: the cell is a lap behind head; only a stale head read
		 * gets here. An empty queue looks the same from outside. */
		if (atomic_load_explicit(&q->head, memory_order_acquire) == h)
			return -EAGAIN;
	}
}

void ferry__pool_q_release(const struct pool_geo *g, uint64_t pos)
{
	_Atomic uint64_t *c = &g->q->cells[pos & (g->ncells - 1)];
	/* release: our reads of the slot are done before producers reuse the
	 * cell (pairs with their acquire load of it). */
	atomic_store_explicit(c, cw_make((uint32_t)(pos + g->ncells), C_EMPTY, 0, 0), memory_order_release);
}
