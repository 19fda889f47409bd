/*
 * shm/ring_spsc.c - SPSC ring of variable-length records in caller memory.
 *
 * See include/ferry/ring.h for the contract. Everything the ring holds lives
 * in memory the peer can write, so every call snapshots the immutable header
 * once into locals, validates it, and from then on uses only the locals;
 * every index and record header loaded from the ring is loaded once and
 * bounds-checked before it is used to form an address.
 */
#include "ferry/ring.h"
#include "shm/err.h"

#include <assert.h>
#include <errno.h>
#include <stdalign.h>
#include <stdatomic.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <string.h>

static_assert(ATOMIC_LONG_LOCK_FREE == 2 && ATOMIC_LLONG_LOCK_FREE == 2,
	      "64-bit atomics in shared memory must be lock-free");
static_assert(ATOMIC_INT_LOCK_FREE == 2, "32-bit atomics in shared memory must be lock-free");

#define SPSC_MAGIC 0x43505346u /* "FSPC" */
#define SPSC_VERSION 1u

/* Record header: one 64-bit word, length in the low half, kind in the high. */
#define REC_HDR 8u
#define KIND_DATA 0x5245u /* a record follows */
#define KIND_PAD 0x5041u  /* skip to the start of the buffer */

/* closed word bits */
#define CLOSED 1u
#define CORRUPT 2u

struct ferry_ring_spsc {
	/* Immutable after init; read by both sides, never trusted on re-read. */
	alignas(64) uint32_t magic;
	uint32_t version;
	uint64_t capacity;
	uint64_t mask;
	/* Producer's line: only the producer writes it. */
	alignas(64) _Atomic uint64_t tail;
	uint64_t head_cache; /* producer's last view of head */
	uint64_t resv;       /* reserved length + 1; 0 = no reservation */
	/* Consumer's line: only the consumer writes it. */
	alignas(64) _Atomic uint64_t head;
	uint64_t tail_cache; /* consumer's last view of tail */
	uint64_t adv;        /* bytes release() moves head by; 0 = nothing peeked */
	/* Either side writes it, once. */
	alignas(64) _Atomic uint32_t closed;
	alignas(64) unsigned char data[];
};

static_assert(offsetof(struct ferry_ring_spsc, tail) == 64, "layout");
static_assert(offsetof(struct ferry_ring_spsc, head) == 128, "layout");
static_assert(offsetof(struct ferry_ring_spsc, closed) == 192, "layout");
static_assert(offsetof(struct ferry_ring_spsc, data) == FERRY_RING_SPSC_HDR_SIZE, "layout");

static inline uint64_t align8(uint64_t n)
{
	return (n + 7) & ~(uint64_t)7;
}

static inline uint64_t max_rec(uint64_t cap)
{
	return cap / 2 - REC_HDR;
}

static inline bool cap_ok(uint64_t cap)
{
	return cap >= FERRY_RING_SPSC_MIN_CAP && cap <= FERRY_RING_SPSC_MAX_CAP &&
	       (cap & (cap - 1)) == 0;
}

/*
 * The immutable header, loaded once (relaxed: it was published to this side
 * by whatever handed the memory over, not by the ring) and validated for
 * self-consistency. Returns the capacity, or 0 when the header is corrupt.
 */
static inline uint64_t snapshot(const struct ferry_ring_spsc *r)
{
	uint32_t magic = __atomic_load_n(&r->magic, __ATOMIC_RELAXED);
	uint32_t version = __atomic_load_n(&r->version, __ATOMIC_RELAXED);
	uint64_t cap = __atomic_load_n(&r->capacity, __ATOMIC_RELAXED);
	uint64_t mask = __atomic_load_n(&r->mask, __ATOMIC_RELAXED);
	if (FERRY_UNLIKELY(magic != SPSC_MAGIC || version != SPSC_VERSION || !cap_ok(cap) ||
			   mask != cap - 1))
		return 0;
	return cap;
}

static inline uint64_t rec_word(uint32_t kind, uint64_t len)
{
	return (uint64_t)kind << 32 | len;
}

/* Mark the ring corrupt (and closed) and report it. */
static int corrupt(struct ferry_ring_spsc *r, const char *who, const char *what)
{
	/* relaxed: the flag carries no data; peers re-validate on their own */
	atomic_fetch_or_explicit(&r->closed, CLOSED | CORRUPT, memory_order_relaxed);
	return ferry__fail(-EPROTO, "%s: corrupt ring: %s", who, what);
}

FERRY_API size_t ferry_ring_spsc_memsize(size_t capacity)
{
	if (!cap_ok(capacity))
		return 0;
	return FERRY_RING_SPSC_HDR_SIZE + capacity;
}

FERRY_API int ferry_ring_spsc_init(ferry_ring_spsc *r, size_t memsize)
{
	if (!r)
		return ferry__fail(-EINVAL, "ferry_ring_spsc_init: r (mem) is NULL");
	if ((uintptr_t)r % 64)
		return ferry__fail(-EINVAL, "ferry_ring_spsc_init: r (mem) %p is not 64-byte aligned",
				   (void *)r);
	if (memsize < FERRY_RING_SPSC_HDR_SIZE + FERRY_RING_SPSC_MIN_CAP)
		return ferry__fail(-EINVAL,
				   "ferry_ring_spsc_init: memsize %zu is below the %u bytes of the smallest ring",
				   memsize, FERRY_RING_SPSC_HDR_SIZE + FERRY_RING_SPSC_MIN_CAP);
	uint64_t room = memsize - FERRY_RING_SPSC_HDR_SIZE, cap = FERRY_RING_SPSC_MAX_CAP;
	while (cap > room)
		cap >>= 1;
	memset(r, 0, FERRY_RING_SPSC_HDR_SIZE);
	r->magic = SPSC_MAGIC;
	r->version = SPSC_VERSION;
	r->capacity = cap;
	r->mask = cap - 1;
	atomic_init(&r->tail, 0);
	atomic_init(&r->head, 0);
	atomic_init(&r->closed, 0);
	/*
	 * The memory reaches the other side through whatever shares it (thread
	 * creation, fork, fd passing), which orders these plain stores; a fence
	 * here covers a side that merely polls the mapping.
	 */
	atomic_thread_fence(memory_order_release);
	return 0;
}

FERRY_API int ferry_ring_spsc_check(const ferry_ring_spsc *r, size_t memsize)
{
	static const char who[] = "ferry_ring_spsc_check";
	if (!r)
		return ferry__fail(-EINVAL, "%s: r is NULL", who);
	if ((uintptr_t)r % 64)
		return ferry__fail(-EINVAL, "%s: r %p is not 64-byte aligned", who, (const void *)r);
	if (memsize < FERRY_RING_SPSC_HDR_SIZE)
		return ferry__fail(-EPROTO, "%s: memsize %zu cannot hold a ring header", who, memsize);
	uint32_t magic = __atomic_load_n(&r->magic, __ATOMIC_RELAXED);
	uint32_t version = __atomic_load_n(&r->version, __ATOMIC_RELAXED);
	uint64_t cap = __atomic_load_n(&r->capacity, __ATOMIC_RELAXED);
	uint64_t mask = __atomic_load_n(&r->mask, __ATOMIC_RELAXED);
	if (magic != SPSC_MAGIC)
		return ferry__fail(-EPROTO, "%s: bad magic 0x%08x", who, magic);
	if (version != SPSC_VERSION)
		return ferry__fail(FERRY_EVERSION, "%s: layout version %u, this library speaks %u",
				   who, version, SPSC_VERSION);
	if (!cap_ok(cap))
		return ferry__fail(-EPROTO, "%s: capacity %llu is not a power of two in range",
				   who, (unsigned long long)cap);
	if (cap > memsize - FERRY_RING_SPSC_HDR_SIZE)
		return ferry__fail(-EPROTO, "%s: capacity %llu does not fit in memsize %zu", who,
				   (unsigned long long)cap, memsize);
	if (mask != cap - 1)
		return ferry__fail(-EPROTO, "%s: mask 0x%llx does not match capacity %llu", who,
				   (unsigned long long)mask, (unsigned long long)cap);
	/* acquire on both: pairs with the sides' release stores, for a consistent-enough view */
	uint64_t head = atomic_load_explicit(&r->head, memory_order_acquire);
	uint64_t tail = atomic_load_explicit(&r->tail, memory_order_acquire);
	if ((head | tail) & 7)
		return ferry__fail(-EPROTO, "%s: misaligned index (head %llu, tail %llu)", who,
				   (unsigned long long)head, (unsigned long long)tail);
	if (tail - head > cap)
		return ferry__fail(-EPROTO, "%s: head %llu and tail %llu are more than capacity apart",
				   who, (unsigned long long)head, (unsigned long long)tail);
	uint32_t closed = atomic_load_explicit(&r->closed, memory_order_relaxed);
	if (closed & ~(CLOSED | CORRUPT))
		return ferry__fail(-EPROTO, "%s: bad closed word 0x%x", who, closed);
	if (closed & CORRUPT)
		return ferry__fail(-EPROTO, "%s: ring was marked corrupt", who);
	return 0;
}

FERRY_API size_t ferry_ring_spsc_capacity(const ferry_ring_spsc *r)
{
	return r ? snapshot(r) : 0;
}

FERRY_API size_t ferry_ring_spsc_max_record(const ferry_ring_spsc *r)
{
	uint64_t cap = r ? snapshot(r) : 0;
	return cap ? max_rec(cap) : 0;
}

FERRY_API int ferry_ring_spsc_reserve(ferry_ring_spsc *r, size_t len, void **p)
{
	static const char who[] = "ferry_ring_spsc_reserve";
	if (FERRY_UNLIKELY(!r || !p))
		return ferry__fail(-EINVAL, "%s: %s is NULL", who, r ? "p" : "r");
	uint64_t cap = snapshot(r);
	if (FERRY_UNLIKELY(!cap))
		return corrupt(r, who, "header (magic, version, capacity or mask)");
	if (FERRY_UNLIKELY(len > max_rec(cap)))
		return ferry__fail(-EMSGSIZE, "%s: len %zu exceeds max_record %llu", who, len,
				   (unsigned long long)max_rec(cap));
	/* relaxed: a flag with no data behind it; a late view only delays -EPIPE by a call */
	if (FERRY_UNLIKELY(atomic_load_explicit(&r->closed, memory_order_relaxed)))
		return -EPIPE;
	if (FERRY_UNLIKELY(r->resv))
		return ferry__fail(-EBUSY, "%s: a reservation is already open", who);
	/* relaxed: only this side writes tail */
	uint64_t tail = atomic_load_explicit(&r->tail, memory_order_relaxed);
	if (FERRY_UNLIKELY(tail & 7))
		return corrupt(r, who, "misaligned tail");
	uint64_t need = REC_HDR + align8(len), off = tail & (cap - 1);
	uint64_t total = off + need > cap ? cap - off + need : need;
	uint64_t head = r->head_cache;
	if (tail - head > cap || cap - (tail - head) < total) {
		/*
		 * acquire: pairs with the consumer's release store of head in
		 * release(), so its reads of the bytes we are about to reuse are
		 * done before we overwrite them.
		 */
		head = atomic_load_explicit(&r->head, memory_order_acquire);
		if (FERRY_UNLIKELY(tail - head > cap || (head & 7)))
			return corrupt(r, who, "head out of range");
		r->head_cache = head;
		if (cap - (tail - head) < total)
			return -EAGAIN;
	}
	r->resv = (uint64_t)len + 1;
	*p = r->data + ((off + total - need) & (cap - 1)) + REC_HDR;
	return 0;
}

FERRY_API int ferry_ring_spsc_commit(ferry_ring_spsc *r, size_t len)
{
	static const char who[] = "ferry_ring_spsc_commit";
	if (FERRY_UNLIKELY(!r))
		return ferry__fail(-EINVAL, "%s: r is NULL", who);
	uint64_t cap = snapshot(r);
	if (FERRY_UNLIKELY(!cap))
		return corrupt(r, who, "header (magic, version, capacity or mask)");
	uint64_t resv = r->resv;
	if (FERRY_UNLIKELY(!resv))
		return ferry__fail(-EINVAL, "%s: no reservation is open", who);
	uint64_t rlen = resv - 1;
	if (FERRY_UNLIKELY(len > rlen))
		return ferry__fail(-EINVAL, "%s: len %zu exceeds the %llu bytes reserved", who, len,
				   (unsigned long long)rlen);
	if (FERRY_UNLIKELY(rlen > max_rec(cap)))
		return corrupt(r, who, "reservation length");
	/* relaxed: only this side writes tail */
	uint64_t tail = atomic_load_explicit(&r->tail, memory_order_relaxed);
	uint64_t off = tail & (cap - 1), pad = 0;
	if (off + REC_HDR + align8(rlen) > cap) {
		pad = cap - off;
		*(uint64_t *)(r->data + off) = rec_word(KIND_PAD, pad - REC_HDR);
		off = 0;
	}
	*(uint64_t *)(r->data + off) = rec_word(KIND_DATA, len);
	r->resv = 0;
	/*
	 * release: pairs with the consumer's acquire load of tail in peek(); the
	 * record (and any pad marker) is visible before the index that covers it.
	 */
	atomic_store_explicit(&r->tail, tail + pad + REC_HDR + align8(len), memory_order_release);
	return 0;
}

FERRY_API int ferry_ring_spsc_peek(ferry_ring_spsc *r, const void **p, size_t *len)
{
	static const char who[] = "ferry_ring_spsc_peek";
	if (FERRY_UNLIKELY(!r || !p || !len))
		return ferry__fail(-EINVAL, "%s: %s is NULL", who, !r ? "r" : !p ? "p" : "len");
	uint64_t cap = snapshot(r);
	if (FERRY_UNLIKELY(!cap))
		return corrupt(r, who, "header (magic, version, capacity or mask)");
	/* relaxed: CORRUPT is sticky and carries no data */
	if (FERRY_UNLIKELY(atomic_load_explicit(&r->closed, memory_order_relaxed) & CORRUPT))
		return ferry__fail(-EPROTO, "%s: ring was marked corrupt", who);
	/* relaxed: only this side writes head */
	uint64_t head = atomic_load_explicit(&r->head, memory_order_relaxed);
	if (FERRY_UNLIKELY(head & 7))
		return corrupt(r, who, "misaligned head");
	uint64_t tail = r->tail_cache;
	if (tail == head || tail - head > cap) {
		/* acquire: pairs with the producer's release store of tail in commit() */
		tail = atomic_load_explicit(&r->tail, memory_order_acquire);
		if (FERRY_UNLIKELY(tail - head > cap || (tail & 7)))
			return corrupt(r, who, "tail out of range (head past tail or beyond capacity)");
		if (tail == head) {
			/* acquire: pairs with the release in close(), which follows the last commit */
			if (!atomic_load_explicit(&r->closed, memory_order_acquire)) {
				r->tail_cache = tail;
				return -EAGAIN;
			}
			/* acquire: as above; closed was set after that side's last commit */
			tail = atomic_load_explicit(&r->tail, memory_order_acquire);
			if (FERRY_UNLIKELY(tail - head > cap || (tail & 7)))
				return corrupt(r, who, "tail out of range");
			if (tail == head) {
				r->tail_cache = tail;
				return -EPIPE;
			}
		}
		r->tail_cache = tail;
	}
	uint64_t avail = tail - head, off = head & (cap - 1), adv = 0;
	/* one relaxed load: the header is read once and only the local is trusted */
	uint64_t w = __atomic_load_n((const uint64_t *)(r->data + off), __ATOMIC_RELAXED);
	if ((w >> 32) == KIND_PAD) {
		if (FERRY_UNLIKELY(off == 0 || (uint32_t)w != cap - off - REC_HDR))
			return corrupt(r, who, "pad marker where none can be");
		adv = cap - off;
		if (FERRY_UNLIKELY(avail < adv + REC_HDR))
			return corrupt(r, who, "pad marker without a record after it");
		avail -= adv;
		off = 0;
		w = __atomic_load_n((const uint64_t *)r->data, __ATOMIC_RELAXED);
	}
	if (FERRY_UNLIKELY((w >> 32) != KIND_DATA))
		return corrupt(r, who, "bad record kind");
	uint64_t n = (uint32_t)w, step = REC_HDR + align8(n);
	if (FERRY_UNLIKELY(n > max_rec(cap) || step > avail || off + step > cap))
		return corrupt(r, who, "record length past the committed data");
	r->adv = adv + step;
	*p = r->data + off + REC_HDR;
	*len = (size_t)n;
	return 0;
}

FERRY_API void ferry_ring_spsc_release(ferry_ring_spsc *r)
{
	static const char who[] = "ferry_ring_spsc_release";
	if (FERRY_UNLIKELY(!r))
		return;
	uint64_t adv = r->adv;
	if (!adv)
		return;
	uint64_t cap = snapshot(r);
	if (FERRY_UNLIKELY(!cap || adv > cap || (adv & 7))) {
		corrupt(r, who, "peeked record size");
		return;
	}
	r->adv = 0;
	/* relaxed: only this side writes head */
	uint64_t head = atomic_load_explicit(&r->head, memory_order_relaxed);
	/*
	 * release: pairs with the producer's acquire load of head in reserve();
	 * our reads of the record happen before the producer may reuse its bytes.
	 */
	atomic_store_explicit(&r->head, head + adv, memory_order_release);
}

FERRY_API void ferry_ring_spsc_close(ferry_ring_spsc *r)
{
	if (!r)
		return;
	/* release: pairs with the acquire load in peek(); commits before close stay visible */
	atomic_fetch_or_explicit(&r->closed, CLOSED, memory_order_release);
}

FERRY_API int ferry_ring_spsc_is_closed(const ferry_ring_spsc *r)
{
	/* relaxed: a snapshot answer */
	return r ? atomic_load_explicit(&r->closed, memory_order_relaxed) != 0 : 1;
}

FERRY_API size_t ferry_ring_spsc_used(const ferry_ring_spsc *r)
{
	if (!r)
		return 0;
	uint64_t cap = snapshot(r);
	/* relaxed: a snapshot for statistics; no data is read through it */
	uint64_t head = atomic_load_explicit(&r->head, memory_order_relaxed);
	uint64_t tail = atomic_load_explicit(&r->tail, memory_order_relaxed);
	uint64_t used = tail - head;
	return used > cap ? cap : (size_t)used;
}
