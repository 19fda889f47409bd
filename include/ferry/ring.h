/**
 * @file
 * @brief Lock-free rings placed in caller memory.
 *
 * Two rings, both laid out in memory the caller provides (size it with
 * _memsize(), lay it out once with _init(), validate someone else's with
 * _check()), both usable between threads of one process or between processes
 * that map the same memory at different addresses: the rings hold positions
 * and offsets, never pointers. Neither ever blocks; the _wait forms at the end
 * add waiting on an eventcount (ferry/atomic.h) the caller provides.
 *
 * ---- SPSC: variable-length records ----
 *
 * One producer and one consumer.
 *
 *     size_t n = ferry_ring_spsc_memsize(64 * 1024);
 *     ferry_ring_spsc *r = mem;                      // n bytes, 64-byte aligned
 *     ferry_ring_spsc_init(r, n);
 *
 *   producer:                          consumer:
 *     void *p;                           const void *p; size_t len;
 *     ferry_ring_spsc_reserve(r, 100, &p); ferry_ring_spsc_peek(r, &p, &len);
 *     ... write up to 100 bytes ...      ... read len bytes in place ...
 *     ferry_ring_spsc_commit(r, 80);     ferry_ring_spsc_release(r);
 *
 * A record is written and read in place; reserve may ask for more than it
 * commits. Records are 8-byte aligned behind an 8-byte header (length, kind,
 * lap);
 * a record never wraps (the producer writes a pad marker to the end of the
 * buffer and starts again at its beginning), so the largest record is a bit
 * under half the capacity (ferry_ring_spsc_max_record), which guarantees that
 * any record fits once the ring has drained. Batches (push_batch, peek_batch)
 * move many records with one publication.
 *
 * Layout: a header line (magic, version, capacity, mask: immutable after
 * init), the producer's line (tail; then its cached head and its
 * reservation, used by the plain calls only), the consumer's line (head;
 * then its cached tail and the size of what it peeked, plain calls only), a
 * line for the closed word, then the data. Invariants: head <= tail <= head +
 * capacity, as free-running 64-bit byte positions, both multiples of 8 (head
 * may run up to one commit past a tail still on its way, see below). The commit
 * word is the first word of what a commit adds - the record's header, or the
 * pad marker before it: the producer writes the record, zeroes the slot after
 * it (where the consumer looks next), stores the commit word with release,
 * then tail. The consumer polls the word at its head (acquire): zero, or a
 * word of the lap before, means empty; so a record's bytes and its header
 * come over together, and the consumer need not touch the producer's tail
 * line per record. It checks a record against tail when its cached tail
 * covers it, or loads tail - except for a small record whose next slot reads
 * zero (nothing committed after it), taken at once; tail is then looked at
 * on a later call, and every 64th empty poll in a row checks it for range.
 * The consumer alone writes head (release, pairs with the producer's acquire
 * load in reserve); the producer caches head and reloads (and validates) it
 * only when the cache says full, so a rewritten peer index is caught at the
 * next refill or poll check, not at every record. A view keeps its side's
 * state in the view, never in the shared header: what the
 * peer writes there is never read, and a side that never scribbles a shared
 * line saves a cache-line transfer per record (views are the faster path).
 *
 * Crash consistency (SPSC): a record becomes visible with the single store of
 * its commit word, after its bytes; a producer that dies before that store
 * leaves nothing half-written to read (one that dies between the commit word
 * and tail leaves a whole record). A dead side is a dead peer: the layer
 * above (ports) notices it and closes the ring.
 *
 * ---- MPMC: fixed-size slots ----
 *
 * Any number of producers and consumers, threads or processes.
 *
 *     size_t n = ferry_ring_mpmc_memsize(1024, sizeof(struct task));
 *     ferry_ring_mpmc_init(mem, n, sizeof(struct task));
 *     ferry_ring_mpmc_push(r, &t, sizeof t);   ferry_ring_mpmc_pop(r, &t, sizeof t);
 *
 * A sequence-number ring: every slot carries a 64-bit state word that holds
 * the slot's position (its lap: the generation), its state and, while a side
 * works in it, that side's owner (process id):
 *
 *     FREE(p)            empty, may be filled by the producer of position p
 *     WRITING(p, pid)    a producer of process pid claimed it and is writing
 *     FULL(p)            holds the record of position p (or a SKIP mark)
 *     READING(p, pid)    a consumer of process pid claimed it and is reading
 *     FREE(p + slots)    read; open for the next lap
 *
 * A push claims the slot at tail with one CAS on the slot's word (FREE(p) ->
 * WRITING(p, pid)), then advances the shared tail with one CAS (p -> p+1;
 * anyone who finds a claimed slot at tail helps advance it), writes the
 * record and publishes FULL(p) with a release store. A pop mirrors it on
 * head. So an operation makes one CAS on the shared counter and one on its own
 * slot, and the claim and its owner are one atomic word: there is no moment
 * when a slot is taken but nobody can tell by whom.
 *
 * Crash consistency (MPMC): a process killed in the middle of a push or pop
 * leaves a slot in WRITING(p, pid) or READING(p, pid). A survivor that keeps
 * finding the slot it needs in that state checks whether pid is still alive
 * (kill(pid, 0), and /proc for a zombie); if it is dead, the survivor takes
 * the slot back with a CAS on the same word, so it cannot race the owner:
 *   - WRITING(p, dead): if the tail already passed p, the slot becomes
 *     FULL(p) with a SKIP mark, which consumers drop; if the ring was closed
 *     before the tail passed p, the claim never counted and the slot goes
 *     back to FREE(p). The half-written bytes are never read.
 *   - READING(p, dead): the record is lost with its reader; the slot becomes
 *     FREE(p + slots) and producers go on.
 * ferry_ring_mpmc_recovered() counts these. The lap in the word is the
 * generation: a stale owner cannot be confused with a new claim of the same
 * slot. Why the owner goes in the claim itself: a stopped process (SIGSTOP,
 * a debugger) is alive, so no timeout can tell it from a dead one, and an
 * owner written after a claim (or an intent written before it) leaves a
 * window in which a death makes the slot anonymous; one word holding lap,
 * state and owner, changed only by CAS, has no such window. The owner is
 * the process, as death is: threads of a live process are never robbed, and
 * a slot whose owner lives is waited for however long it takes. All users of
 * one ring must share a pid namespace; a dead owner's pid reused by a new
 * process delays recovery until that process ends.
 *
 * Close: a bit in the tail word, set with one atomic OR, so it is ordered
 * with every producer's tail CAS: a claim whose tail CAS lost to the close is
 * rolled back, so once a consumer sees the closed tail and its own position
 * there, nothing more can ever arrive. Records committed before the close are
 * still delivered; then pop (and push at once) report -EPIPE.
 *
 * ---- Hostile memory (both rings) ----
 *
 * The other side may be buggy or hostile. Every call loads the immutable
 * header once into locals, validates it (magic, version, capacity a power of
 * two in range, mask, slot size against the caller's) and trusts only those
 * locals; every index, length and slot word is loaded once and validated
 * before it forms an address; positions and lengths are bounded so no read
 * or write leaves the ring. A corrupt ring gives -EPROTO and is marked closed.
 * The trust anchor is what this side knows on its own: the memory size and
 * (MPMC) the element size. The plain calls can only check the header for
 * consistency, since everything they are given lives in shared memory; a
 * peer that rewrote the capacity to a larger valid-looking value would send
 * them past the mapping. A side that does not trust its peer uses a view: a
 * small struct in its own private memory, set up once by _view_init (which
 * runs _check against the memory size and keeps the capacity it validated),
 * whose calls compare every snapshot against that private copy. Views cost
 * one compare per call; threads of one process that trust each other can
 * use the plain calls.
 */
#ifndef FERRY_RING_H
#define FERRY_RING_H

#include "ferry/common.h"

#ifdef __cplusplus
extern "C" {
#endif

struct ferry_ec;

/* ======================================================================
 * SPSC ring of variable-length records
 * ====================================================================== */

/** An SPSC ring in caller memory (opaque layout; size it with
 * ferry_ring_spsc_memsize). */
typedef struct ferry_ring_spsc ferry_ring_spsc;

/** Capacity bounds in bytes (a power of two in between). */
#define FERRY_RING_SPSC_MIN_CAP 256u /**< smallest capacity in bytes */
#define FERRY_RING_SPSC_MAX_CAP (1u << 30) /**< largest capacity in bytes */
/** Bytes of header before the data: memsize(cap) == FERRY_RING_SPSC_HDR_SIZE + cap. */
#define FERRY_RING_SPSC_HDR_SIZE 256u

/**
 * Bytes of memory a ring with @p capacity data bytes
 * needs (header included). @return 0 if @p capacity is not a power of two
 * within [FERRY_RING_SPSC_MIN_CAP, FERRY_RING_SPSC_MAX_CAP].
 */
FERRY_API size_t ferry_ring_spsc_memsize(size_t capacity);

/**
 * Lay out an empty ring in @p mem, which has @p memsize
 * bytes (the capacity is the largest power of two that fits) and is 64-byte
 * aligned. @return 0, -EINVAL (NULL, misaligned, too small).
 */
FERRY_API int ferry_ring_spsc_init(ferry_ring_spsc *r, size_t memsize);

/**
 * Validate a ring someone else laid out in @p memsize
 * bytes at @p r (magic, version, capacity against @p memsize, indices).
 * @return 0, -EPROTO (corrupt), FERRY_EVERSION (another layout version).
 */
FERRY_API int ferry_ring_spsc_check(const ferry_ring_spsc *r, size_t memsize);

/** Data capacity in bytes, and the largest record that can ever fit. */
FERRY_API size_t ferry_ring_spsc_capacity(const ferry_ring_spsc *r);
/** The largest record that can ever fit (a bit under half the capacity). */
FERRY_API size_t ferry_ring_spsc_max_record(const ferry_ring_spsc *r);

/**
 * Producer: room for a record of up to @p len bytes
 * (0 allowed). *p points to it until commit. At most one reservation at a
 * time. @return 0, -EAGAIN (full now), -EMSGSIZE (@p len above max_record),
 *   -EPIPE (closed), -EPROTO (corrupt), -EBUSY (already reserved).
 */
FERRY_API int ferry_ring_spsc_reserve(ferry_ring_spsc *r, size_t len, void **p);

/**
 * Producer: publish the reserved record with its
 * final length @p len (<= the reserved length). @return 0, -EINVAL (no
 * reservation, @p len too long).
 */
FERRY_API int ferry_ring_spsc_commit(ferry_ring_spsc *r, size_t len);

/**
 * Consumer: the oldest record, in place, valid until
 * release. @return 0, -EAGAIN (empty), -EPIPE (empty and closed),
 *   -EPROTO (corrupt header or record: the ring is closed).
 */
FERRY_API int ferry_ring_spsc_peek(ferry_ring_spsc *r, const void **p, size_t *len);

/** Consumer: drop the record(s) peek or peek_batch returned. */
FERRY_API void ferry_ring_spsc_release(ferry_ring_spsc *r);

/** One record of a batch: @p p and @p len bytes. */
struct ferry_ring_rec {
	const void *p; /**< the record's bytes */
	size_t len;    /**< their length */
};

/**
 * Producer: copy up to @p n records (@p recs[i].len
 * bytes from @p recs[i].p each) into the ring, in order, and publish them all
 * with one store of tail. Stops at the first record that does not fit now
 * or is longer than max_record.
 * @par Ownership
 *   the bytes are copied; @p recs stays the caller's.
 * @return the number of records pushed (1..n, or 0 when @p n is 0), -EAGAIN
 *   (not even the first fits now), -EMSGSIZE (the first is above
 *   max_record), -EPIPE, -EPROTO, -EBUSY (a reservation is open), -EINVAL.
 */
FERRY_API int ferry_ring_spsc_push_batch(ferry_ring_spsc *r, const struct ferry_ring_rec *recs,
					 size_t n);

/**
 * Consumer: up to @p n of the oldest records, in
 * place, into @p out[0..]. They stay valid until ferry_ring_spsc_release,
 * which drops them all with one store of head.
 * @return the number of records (1..n; 0 when @p n is 0), -EAGAIN, -EPIPE,
 *   -EPROTO, -EINVAL.
 */
FERRY_API int ferry_ring_spsc_peek_batch(ferry_ring_spsc *r, struct ferry_ring_rec *out, size_t n);

/**
 * A view of a ring from one side that does not trust the other: lives in
 * this side's private memory (never in the shared mapping) and pins the
 * capacity validated by ferry_ring_spsc_view_init. The _view_ calls behave as
 * the plain ones, plus -EPROTO when the ring's header no longer matches.
 * A view also holds its side's own state (the producer's open reservation,
 * the consumer's cached tail and the size of what it peeked), which the
 * plain calls keep in the shared header, where the peer could rewrite it:
 * reserve/commit and peek/release pairs must go through the same view.
 */
struct ferry_ring_spsc_view {
	ferry_ring_spsc *ring; /**< the ring viewed */
	size_t capacity;       /**< the capacity validated at init */
	/** private per-side state; zeroed by ferry_ring_spsc_view_init */
	uint64_t head_cache; /**< producer: its last view of head */
	uint64_t resv;       /**< producer: reserved length + 1; 0 = none */
	uint64_t tail_cache; /**< consumer: its last view of tail */
	uint64_t adv; /**< consumer: bytes release moves head by (low half); empty polls (high) */
};

/**
 * Validate the ring at @p r in @p memsize bytes (as
 * ferry_ring_spsc_check) and set up @p v on it. @return 0, -EINVAL, -EPROTO,
 * FERRY_EVERSION.
 */
FERRY_API int ferry_ring_spsc_view_init(struct ferry_ring_spsc_view *v, ferry_ring_spsc *r,
					size_t memsize);
/** ferry_ring_spsc_reserve through a view (also -EPROTO on a changed header). */
FERRY_API int ferry_ring_spsc_view_reserve(struct ferry_ring_spsc_view *v, size_t len,
					   void **p);
/** ferry_ring_spsc_commit through a view. */
FERRY_API int ferry_ring_spsc_view_commit(struct ferry_ring_spsc_view *v, size_t len);
/** ferry_ring_spsc_peek through a view (also -EPROTO on a changed header). */
FERRY_API int ferry_ring_spsc_view_peek(struct ferry_ring_spsc_view *v, const void **p,
					size_t *len);
/** ferry_ring_spsc_release through a view. */
FERRY_API void ferry_ring_spsc_view_release(struct ferry_ring_spsc_view *v);
/** ferry_ring_spsc_push_batch through a view. */
FERRY_API int ferry_ring_spsc_view_push_batch(struct ferry_ring_spsc_view *v,
					      const struct ferry_ring_rec *recs, size_t n);
/** ferry_ring_spsc_peek_batch through a view. */
FERRY_API int ferry_ring_spsc_view_peek_batch(struct ferry_ring_spsc_view *v,
					      struct ferry_ring_rec *out, size_t n);

/**
 * Either side: no more records. Records already
 * committed are still delivered; then peek reports -EPIPE. Reserve reports
 * -EPIPE at once. Idempotent.
 */
FERRY_API void ferry_ring_spsc_close(ferry_ring_spsc *r);
/** 1 if the ring was closed (or marked corrupt), else 0; 1 for NULL. A snapshot. */
FERRY_API int ferry_ring_spsc_is_closed(const ferry_ring_spsc *r);

/** Bytes committed and not yet released (a snapshot). */
FERRY_API size_t ferry_ring_spsc_used(const ferry_ring_spsc *r);

/* ======================================================================
 * MPMC ring of fixed-size slots
 * ====================================================================== */

/** An MPMC ring in caller memory (opaque layout; size it with
 * ferry_ring_mpmc_memsize). */
typedef struct ferry_ring_mpmc ferry_ring_mpmc;

/** Slot count bounds (a power of two in between) and element size bounds. */
#define FERRY_RING_MPMC_MIN_SLOTS 2u /**< fewest slots */
#define FERRY_RING_MPMC_MAX_SLOTS (1u << 24) /**< most slots */
#define FERRY_RING_MPMC_MAX_ELEM 65536u /**< largest element size in bytes */
/** Bytes of header before the slots. */
#define FERRY_RING_MPMC_HDR_SIZE 256u

/**
 * Bytes a ring of @p slots elements of @p elem_size
 * bytes needs. @return 0 if @p slots is not a power of two within
 * [FERRY_RING_MPMC_MIN_SLOTS, FERRY_RING_MPMC_MAX_SLOTS] or @p elem_size is
 * not within [1, FERRY_RING_MPMC_MAX_ELEM].
 */
FERRY_API size_t ferry_ring_mpmc_memsize(size_t slots, size_t elem_size);

/**
 * Lay out an empty ring of @p elem_size-byte elements in
 * @p r, which has @p memsize bytes and is 64-byte aligned; the slot count is the
 * largest power of two that fits. @return 0, -EINVAL (NULL, misaligned,
 * @p elem_size out of range, @p memsize too small for two slots).
 */
FERRY_API int ferry_ring_mpmc_init(ferry_ring_mpmc *r, size_t memsize, size_t elem_size);

/**
 * Validate a ring someone else laid out in @p memsize
 * bytes at @p r for elements of @p elem_size bytes (magic, version, geometry
 * against @p memsize and @p elem_size, counters, every slot word). Meant for a
 * ring at rest (when it is imported); on a live ring the counters are read
 * one after the other.
 * @return 0, -EPROTO, FERRY_EVERSION, -EINVAL (NULL, misaligned).
 */
FERRY_API int ferry_ring_mpmc_check(const ferry_ring_mpmc *r, size_t memsize, size_t elem_size);

/** Slot count and element size (0 when the header is corrupt). */
FERRY_API size_t ferry_ring_mpmc_capacity(const ferry_ring_mpmc *r);
/** Element size in bytes (0 when the header is corrupt). */
FERRY_API size_t ferry_ring_mpmc_elem_size(const ferry_ring_mpmc *r);

/**
 * Any producer: copy one element of @p size bytes
 * (@p size must be the ring's element size) from @p elem.
 * @return 0, -EAGAIN (full now), -EPIPE (closed), -EPROTO (corrupt: the
 *   ring is closed), -EINVAL (NULL, @p size wrong).
 */
FERRY_API int ferry_ring_mpmc_push(ferry_ring_mpmc *r, const void *elem, size_t size);

/**
 * Any consumer: copy the oldest element into @p elem
 * (@p size bytes, the ring's element size).
 * @return 0, -EAGAIN (empty now), -EPIPE (empty and closed), -EPROTO,
 *   -EINVAL.
 */
FERRY_API int ferry_ring_mpmc_pop(ferry_ring_mpmc *r, void *elem, size_t size);

/**
 * ferry_ring_mpmc_push_batch / _pop_batch - up to @p n elements of @p size bytes
 * each, contiguous at @p elems, in order: consecutive positions of the ring
 * (no other producer's element falls between two of one batch), claimed
 * slot by slot and counted with one CAS of the shared counter when nobody
 * interferes. Return the number moved (1..n; 0 when @p n is 0) or the error
 * the single form would give for the first element.
 */
FERRY_API int ferry_ring_mpmc_push_batch(ferry_ring_mpmc *r, const void *elems, size_t size,
					 size_t n);
/** The batch form of ferry_ring_mpmc_pop (see ferry_ring_mpmc_push_batch). */
FERRY_API int ferry_ring_mpmc_pop_batch(ferry_ring_mpmc *r, void *elems, size_t size, size_t n);

/** A view of an MPMC ring from a side that does not trust the others (see above). */
struct ferry_ring_mpmc_view {
	ferry_ring_mpmc *ring; /**< the ring viewed */
	size_t slots;          /**< the slot count validated at init */
	size_t elem_size;      /**< the element size validated at init */
};

/** Ferry_ring_mpmc_check, then pin slots and element size in @p v. */
FERRY_API int ferry_ring_mpmc_view_init(struct ferry_ring_mpmc_view *v, ferry_ring_mpmc *r,
					size_t memsize, size_t elem_size);
/** ferry_ring_mpmc_push through a view (also -EPROTO on a changed header). */
FERRY_API int ferry_ring_mpmc_view_push(const struct ferry_ring_mpmc_view *v, const void *elem,
					size_t size);
/** ferry_ring_mpmc_pop through a view (also -EPROTO on a changed header). */
FERRY_API int ferry_ring_mpmc_view_pop(const struct ferry_ring_mpmc_view *v, void *elem,
				       size_t size);
/** ferry_ring_mpmc_push_batch through a view. */
FERRY_API int ferry_ring_mpmc_view_push_batch(const struct ferry_ring_mpmc_view *v,
					      const void *elems, size_t size, size_t n);
/** ferry_ring_mpmc_pop_batch through a view. */
FERRY_API int ferry_ring_mpmc_view_pop_batch(const struct ferry_ring_mpmc_view *v, void *elems,
					     size_t size, size_t n);

/**
 * Anyone: no more pushes (-EPIPE at once); elements
 * pushed before are still popped, then pop reports -EPIPE. Idempotent.
 */
FERRY_API void ferry_ring_mpmc_close(ferry_ring_mpmc *r);
/** 1 if the ring was closed (or marked corrupt), else 0. A snapshot. */
FERRY_API int ferry_ring_mpmc_is_closed(const ferry_ring_mpmc *r);

/** Elements pushed and not yet popped (a snapshot). */
FERRY_API size_t ferry_ring_mpmc_used(const ferry_ring_mpmc *r);

/** Slots taken back from processes that died in a push or pop. */
FERRY_API uint64_t ferry_ring_mpmc_recovered(const ferry_ring_mpmc *r);

/* ======================================================================
 * Waiting (shm/ring_wait.c): a thin layer over the eventcount
 * ====================================================================== */

/** How a _wait call waits while the ring is full or empty. */
enum ferry_ring_strategy {
	FERRY_RING_ADAPTIVE = 0, /**< spin a little, then yield, then sleep (default) */
	FERRY_RING_SPIN = 1,     /**< busy-poll (with pause); never sleeps */
	FERRY_RING_SLEEP = 2,    /**< sleep on the eventcount at once */
};

/**
 * What a _wait call waits with. Zero-initialised fields mean defaults (NULL
 * for the whole struct too: adaptive, and no sleeping without eventcounts).
 * The eventcounts live where both sides see them (in shared memory beside the
 * ring, for processes): @p not_empty is where consumers sleep and producers
 * notify, @p not_full the other way. A NULL eventcount makes the side that
 * would sleep on it yield-poll instead.
 */
struct ferry_ring_wait {
	struct ferry_ec *not_empty;        /**< consumers sleep here, producers notify */
	struct ferry_ec *not_full;         /**< producers sleep here, consumers notify */
	enum ferry_ring_strategy strategy; /**< how to wait; 0 = adaptive */
	uint32_t spin;  /**< polls before yielding (0: 2000) */
	uint32_t yield; /**< sched_yield polls before sleeping (0: 20) */
};

/**
 * The _wait forms wait up to @p timeout_ns (0: try once; FERRY_FOREVER: no
 * limit) while the ring is full (producers) or empty (consumers), and after
 * success notify the other side's eventcount (a fence and a load when nobody
 * sleeps). Returns: as the try form, except -ETIMEDOUT when the time ran out
 * (a zero @p timeout_ns gives the try form's -EAGAIN). ferry_ring_spsc_commit_wait
 * and _release_wait are commit and release plus the notify. A sleeper wakes
 * on close when the closer calls ferry_ring_wait_close.
 * @par Threads
 *   as the try forms.
 */
FERRY_API int ferry_ring_spsc_reserve_wait(ferry_ring_spsc *r, size_t len, void **p,
					   const struct ferry_ring_wait *w, int64_t timeout_ns);
/** ferry_ring_spsc_commit, then notify the consumers (see above). */
FERRY_API int ferry_ring_spsc_commit_wait(ferry_ring_spsc *r, size_t len,
					  const struct ferry_ring_wait *w);
/** ferry_ring_spsc_peek, waiting up to @p timeout_ns while empty (see above). */
FERRY_API int ferry_ring_spsc_peek_wait(ferry_ring_spsc *r, const void **p, size_t *len,
					const struct ferry_ring_wait *w, int64_t timeout_ns);
/** ferry_ring_spsc_release, then notify the producer (see above). */
FERRY_API void ferry_ring_spsc_release_wait(ferry_ring_spsc *r, const struct ferry_ring_wait *w);
/** ferry_ring_mpmc_push, waiting up to @p timeout_ns while full (see above). */
FERRY_API int ferry_ring_mpmc_push_wait(ferry_ring_mpmc *r, const void *elem, size_t size,
					const struct ferry_ring_wait *w, int64_t timeout_ns);
/** ferry_ring_mpmc_pop, waiting up to @p timeout_ns while empty (see above). */
FERRY_API int ferry_ring_mpmc_pop_wait(ferry_ring_mpmc *r, void *elem, size_t size,
				       const struct ferry_ring_wait *w, int64_t timeout_ns);

/** Wake every sleeper of @p w (call after a close). */
FERRY_API void ferry_ring_wait_close(const struct ferry_ring_wait *w);

#ifdef __cplusplus
}
#endif
#endif /* FERRY_RING_H */
