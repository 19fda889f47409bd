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
#include "shm/ring_int.h"

#include <assert.h>
#include <errno.h>
#include <limits.h>
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
/* 1: tail was the commit; 3: the record's first word is (see publish()) */
#define SPSC_VERSION 3u

/*
 * Record header: one 64-bit word, the length in the low half, then the kind
 * (16 bits) and the lap of the word's position (16 bits: position /
 * capacity), so that a word a lap old never passes for a new one.
 */
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
	uint64_t adv;        /* release() step (low half); empty polls (high half) */
	/* Either side writes it, once. */
	alignas(64) _Atomic uint32_t closed;
	alignas(64) unsigned char data[];
};

static_assert(offsetof(struct ferry_ring_spsc, version) == 4, "magic and version share a word");
static_assert(__BYTE_ORDER__ == __ORDER_LITTLE_ENDIAN__, "snapshot() reads magic|version as one word");
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
 * self-consistency and, through a view, against the capacity this side
 * attached to (@want; 0: any). Returns the capacity, or 0 when corrupt.
 */
static inline uint64_t snapshot(const struct ferry_ring_spsc *r, uint64_t want)
{
	/* magic and version as one load: they are adjacent and immutable */
	uint64_t id = __atomic_load_n((const uint64_t *)(const void *)&r->magic, __ATOMIC_RELAXED);
	uint64_t cap = __atomic_load_n(&r->capacity, __ATOMIC_RELAXED);
	uint64_t mask = __atomic_load_n(&r->mask, __ATOMIC_RELAXED);
	/* a power of two in range, and the mask below it: one branch on the hot path */
	bool ok = (id == ((uint64_t)SPSC_VERSION << 32 | SPSC_MAGIC)) &
		  (cap - FERRY_RING_SPSC_MIN_CAP <= FERRY_RING_SPSC_MAX_CAP - FERRY_RING_SPSC_MIN_CAP) &
		  ((cap & mask) == 0) & (mask == cap - 1) & ((want == 0) | (cap == want));
	return FERRY_LIKELY(ok) ? cap : 0;
}

/*
 * The same check through a view: @want was validated when the view was set
 * up, so the header only has to match it (three loads, three compares).
 */
static inline uint64_t snapshot_view(const struct ferry_ring_spsc *r, uint64_t want)
{
	uint64_t id = __atomic_load_n((const uint64_t *)(const void *)&r->magic, __ATOMIC_RELAXED);
	uint64_t cap = __atomic_load_n(&r->capacity, __ATOMIC_RELAXED);
	uint64_t mask = __atomic_load_n(&r->mask, __ATOMIC_RELAXED);
	bool ok = (id == ((uint64_t)SPSC_VERSION << 32 | SPSC_MAGIC)) & (cap == want) &
		  (mask == want - 1);
	return FERRY_LIKELY(ok) ? want : 0;
}

/* The high half of a framing word at position @pos: its lap, and @kind. */
static inline uint32_t tag(uint64_t cap, uint64_t pos, uint32_t kind)
{
	return (uint32_t)((pos >> __builtin_ctzll(cap)) & 0xffff) << 16 | kind;
}

static inline uint64_t rec_word(uint64_t cap, uint64_t pos, uint32_t kind, uint64_t len)
{
	return (uint64_t)tag(cap, pos, kind) << 32 | len;
}

/* Mark the ring corrupt (and closed) and report it. */
__attribute__((cold, noinline)) static int corrupt(struct ferry_ring_spsc *r, const char *who,
						    const char *what)
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
	/* the first slot the consumer polls: nothing published there yet */
	*(uint64_t *)(void *)r->data = 0;
	/*
	 * The memory reaches the other side through whatever shares it (thread
	 * creation, fork, fd passing), which orders these plain stores; a fence
	 * here covers a side that merely polls the mapping.
	 */
	atomic_thread_fence(memory_order_release);
	return 0;
}

static int check_impl(const ferry_ring_spsc *r, size_t memsize, uint64_t *cap_out, const char *who)
{
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
	*cap_out = cap;
	return 0;
}

FERRY_API int ferry_ring_spsc_check(const ferry_ring_spsc *r, size_t memsize)
{
	uint64_t cap;
	return check_impl(r, memsize, &cap, "ferry_ring_spsc_check");
}

FERRY_API size_t ferry_ring_spsc_capacity(const ferry_ring_spsc *r)
{
	return r ? snapshot(r, 0) : 0;
}

FERRY_API size_t ferry_ring_spsc_max_record(const ferry_ring_spsc *r)
{
	uint64_t cap = r ? snapshot(r, 0) : 0;
	return cap ? max_rec(cap) : 0;
}

/*
 * Per-side state. The plain calls keep it in the shared header (a trusted
 * peer's side); a view keeps it in its own private memory, so nothing a peer
 * writes there is ever read. The producer caches head and reloads (and
 * validates) it only when the cache says full: the consumer's line crosses
 * over once per refill, not once per record, and a head the peer rewrote is
 * caught at the next refill. The consumer polls the commit word at its head
 * and leaves the tail's line alone as much as it can (see peek_impl).
 */
struct prod {
	uint64_t *head_cache; /* last view of head */
	uint64_t *resv;       /* reserved length + 1; 0 = no reservation */
	bool view;            /* a view's (private state, pinned capacity) */
};
struct cons {
	uint64_t *tail_cache; /* the last tail loaded (records past it may be taken before tail moves) */
	uint64_t *adv;        /* low half: bytes release() moves head by, 0 = nothing
			       * peeked; high half: empty polls (peek_impl) */
	bool view;
};

static inline struct prod shared_prod(struct ferry_ring_spsc *r)
{
	return (struct prod){ &r->head_cache, &r->resv, false };
}
static inline struct cons shared_cons(struct ferry_ring_spsc *r)
{
	return (struct cons){ &r->tail_cache, &r->adv, false };
}
static inline struct prod view_prod(struct ferry_ring_spsc_view *v)
{
	return (struct prod){ &v->head_cache, &v->resv, true };
}
static inline struct cons view_cons(struct ferry_ring_spsc_view *v)
{
	return (struct cons){ &v->tail_cache, &v->adv, true };
}

/*
 * Room for @total bytes at @tail? Uses the cached head, reloading it only
 * when the cache says no. Returns 0, -EAGAIN, or -EPROTO (head out of range).
 */
static inline int room(struct ferry_ring_spsc *r, struct prod ps, uint64_t cap, uint64_t tail,
		       uint64_t total, const char *who)
{
	uint64_t head = *ps.head_cache;
	if (FERRY_LIKELY(tail - head <= cap && cap - (tail - head) >= total))
		return 0;
	/*
	 * acquire: pairs with the consumer's release store of head in
	 * release(), so its reads of the bytes we are about to reuse are done
	 * before we overwrite them.
	 */
	head = atomic_load_explicit(&r->head, memory_order_acquire);
	if (FERRY_UNLIKELY(tail - head > cap || (head & 7)))
		return corrupt(r, who, "head out of range (past tail or more than capacity behind)");
	*ps.head_cache = head;
	return cap - (tail - head) >= total ? 0 : -EAGAIN;
}

/* Bytes a record of @len takes at @off: its own, plus the pad to the end if it does not fit. */
static inline uint64_t span(uint64_t cap, uint64_t off, uint64_t len)
{
	uint64_t need = REC_HDR + align8(len);
	return off + need > cap ? cap - off + need : need;
}

/* The producer's checks shared by reserve and push_batch; returns the tail or sets *err. */
static inline int producer_start(struct ferry_ring_spsc *r, struct prod ps, uint64_t *tail,
				 const char *who)
{
	/* relaxed: a flag with no data behind it; a late view only delays -EPIPE by a call */
	if (FERRY_UNLIKELY(atomic_load_explicit(&r->closed, memory_order_relaxed)))
		return -EPIPE;
	if (FERRY_UNLIKELY(*ps.resv))
		return ferry__fail(-EBUSY, "%s: a reservation is already open", who);
	/* relaxed: only this side writes tail */
	*tail = atomic_load_explicit(&r->tail, memory_order_relaxed);
	if (FERRY_UNLIKELY(*tail & 7))
		return corrupt(r, who, "misaligned tail");
	return 0;
}

/*
 * A framing word (record header, pad marker, the zeroed slot after the last
 * record): an atomic store, since the consumer polls these words. Relaxed:
 * the commit word's release store in publish() orders them.
 */
static inline void put_word(struct ferry_ring_spsc *r, uint64_t off, uint64_t w)
{
	__atomic_store_n((uint64_t *)(void *)(r->data + off), w, __ATOMIC_RELAXED);
}

/*
 * Frames a record of @len bytes (reserved as @room_len) at @tail: its header,
 * and the pad marker before it when it does not fit before the end of the
 * buffer. The word at @tail itself - the header, or the pad marker - is the
 * commit word: it is not written here but returned in *@commit, for
 * publish() to store last. Returns the record's offset.
 */
static inline uint64_t frame(struct ferry_ring_spsc *r, uint64_t cap, uint64_t tail,
			     uint64_t room_len, uint64_t len, uint64_t *commit)
{
	uint64_t off = tail & (cap - 1);
	if (off + REC_HDR + align8(room_len) > cap) {
		*commit = rec_word(cap, tail, KIND_PAD, cap - off - REC_HDR);
		put_word(r, 0, rec_word(cap, tail + cap - off, KIND_DATA, len));
		return 0;
	}
	*commit = rec_word(cap, tail, KIND_DATA, len);
	return off;
}

/*
 * Publishes the records framed in [@tail, @end): zeroes the slot at @end,
 * stores the commit word at @tail with release, then tail.
 *
 * The consumer polls the word at its head; zero there, or a word of the lap
 * before, means nothing yet. A producer that dies before the commit word
 * leaves nothing visible. The zeroed slot is the one the consumer polls after
 * these records, so old record bytes there are never taken for a header;
 * when these records fill the ring that slot is the consumer's head, still
 * holding the oldest record's header, which its lap tells apart once it is
 * read and the consumer comes round to it again.
 *
 * Tail goes last. The consumer reads it (to check a record against it, and
 * an idle ring's tail for range), which leaves its line shared; stored
 * first, the store would wait for that line and hold the commit word back
 * by a transfer (stores become visible in order). Stored after, a consumer
 * may find a record before the tail that covers it: it takes the record
 * when tail is still exactly at the record's start (where the tail of the
 * commit before always is) and checks tail again on a later call.
 */
static inline void publish(struct ferry_ring_spsc *r, struct prod ps, uint64_t cap, uint64_t tail,
			   uint64_t end, uint64_t commit)
{
	uint64_t head = *ps.head_cache;
	if (FERRY_UNLIKELY(end - head >= cap)) {
		/*
		 * The cache says these records fill the ring (or is out of
		 * range): is the slot at @end free? acquire: as in room().
		 */
		head = atomic_load_explicit(&r->head, memory_order_acquire);
		if (end - head <= cap && !(head & 7))
			*ps.head_cache = head;
	}
	/* a head out of range leaves the slot alone: room() reports it next */
	if (FERRY_LIKELY(end - head < cap))
		put_word(r, end & (cap - 1), 0);
	/*
	 * release: pairs with the consumer's acquire load of the word at its
	 * head: the record bytes, the other framing words, the zeroed next slot
	 * and the tail of every earlier commit are visible before the word that
	 * says the records are there.
	 */
	__atomic_store_n((uint64_t *)(void *)(r->data + (tail & (cap - 1))), commit,
			 __ATOMIC_RELEASE);
	/* release: pairs with the consumer's acquire load of tail (peek_batch walks up to it) */
	atomic_store_explicit(&r->tail, end, memory_order_release);
}

/*
 * The calls below come in two halves: a fast path for the common case (no
 * pad, the caches say there is room or data, everything in range), which
 * falls back on any doubt to the full path, noinline so that the fast one
 * stays small. Both validate everything they use.
 */
__attribute__((noinline)) static int reserve_slow(ferry_ring_spsc *r, struct prod ps, uint64_t want,
						 size_t len, void **p)
{
	static const char who[] = "ferry_ring_spsc_reserve";
	if (FERRY_UNLIKELY(!r || !p))
		return ferry__fail(-EINVAL, "%s: %s is NULL", who, r ? "p" : "r");
	uint64_t cap = snapshot(r, want);
	if (FERRY_UNLIKELY(!cap))
		return corrupt(r, who, "header (magic, version, capacity, mask)");
	if (FERRY_UNLIKELY(len > max_rec(cap)))
		return ferry__fail(-EMSGSIZE, "%s: len %zu exceeds max_record %llu", who, len,
				   (unsigned long long)max_rec(cap));
	uint64_t tail = 0;
	int rc = producer_start(r, ps, &tail, who);
	if (FERRY_UNLIKELY(rc))
		return rc;
	uint64_t off = tail & (cap - 1), total = span(cap, off, len);
	rc = room(r, ps, cap, tail, total, who);
	if (rc)
		return rc;
	*ps.resv = (uint64_t)len + 1;
	*p = r->data + ((off + total - REC_HDR - align8(len)) & (cap - 1)) + REC_HDR;
	return 0;
}

__attribute__((noinline)) static int commit_slow(ferry_ring_spsc *r, struct prod ps, uint64_t want,
						size_t len)
{
	static const char who[] = "ferry_ring_spsc_commit";
	if (FERRY_UNLIKELY(!r))
		return ferry__fail(-EINVAL, "%s: r is NULL", who);
	uint64_t cap = snapshot(r, want);
	if (FERRY_UNLIKELY(!cap))
		return corrupt(r, who, "header (magic, version, capacity, mask)");
	uint64_t resv = *ps.resv;
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
	if (FERRY_UNLIKELY(tail & 7))
		return corrupt(r, who, "misaligned tail");
	uint64_t off = tail & (cap - 1);
	uint64_t pad = off + REC_HDR + align8(rlen) > cap ? cap - off : 0, commit;
	frame(r, cap, tail, rlen, len, &commit);
	*ps.resv = 0;
	publish(r, ps, cap, tail, tail + pad + REC_HDR + align8(len), commit);
	return 0;
}

static inline __attribute__((always_inline)) int reserve_impl(ferry_ring_spsc *r, struct prod ps,
							    uint64_t want, size_t len, void **p)
{
	if (FERRY_LIKELY(r && p)) {
		uint64_t cap = ps.view ? snapshot_view(r, want) : snapshot(r, want);
		/* relaxed: as in reserve_slow (closed is a flag; tail is ours) */
		if (FERRY_LIKELY(cap && len <= max_rec(cap) &&
				 !atomic_load_explicit(&r->closed, memory_order_relaxed) && !*ps.resv)) {
			uint64_t tail = atomic_load_explicit(&r->tail, memory_order_relaxed);
			uint64_t off = tail & (cap - 1), need = REC_HDR + align8(len);
			/*
			 * The cached head: validated when it was loaded (aligned, at most
			 * capacity behind the tail of then), so one compare checks it both
			 * for range and for room; head is reloaded (and validated) only
			 * when the cache says full, in reserve_slow. A tail the peer
			 * rewrote backwards fails the compare too (the difference wraps).
			 */
			uint64_t head = *ps.head_cache;
			if (FERRY_LIKELY(!((tail | head) & 7) && off + need <= cap &&
					 tail - head <= cap - need)) {
				*ps.resv = (uint64_t)len + 1;
				*p = r->data + off + REC_HDR;
				return 0;
			}
		}
	}
	return reserve_slow(r, ps, want, len, p);
}

static inline __attribute__((always_inline)) int commit_impl(ferry_ring_spsc *r, struct prod ps,
							   uint64_t want, size_t len)
{
	if (FERRY_LIKELY(r)) {
		/*
		 * A view needs no header check here: every address below comes from
		 * its private capacity, and its reserve checked the header already;
		 * nor a check of its private reservation against max_record, which
		 * its own reserve bounded.
		 */
		uint64_t cap = ps.view ? want : snapshot(r, want), resv = *ps.resv;
		if (FERRY_LIKELY(cap && len < resv && (ps.view || resv - 1 <= max_rec(cap)))) {
			/* relaxed: only this side writes tail */
			uint64_t tail = atomic_load_explicit(&r->tail, memory_order_relaxed);
			uint64_t off = tail & (cap - 1);
			if (FERRY_LIKELY(!(tail & 7) && off + REC_HDR + align8(resv - 1) <= cap)) {
				*ps.resv = 0;
				publish(r, ps, cap, tail, tail + REC_HDR + align8(len),
					rec_word(cap, tail, KIND_DATA, len));
				return 0;
			}
		}
	}
	return commit_slow(r, ps, want, len);
}

static int push_batch_impl(ferry_ring_spsc *r, struct prod ps, uint64_t want,
			   const struct ferry_ring_rec *recs, size_t n)
{
	static const char who[] = "ferry_ring_spsc_push_batch";
	if (FERRY_UNLIKELY(!r || (!recs && n)))
		return ferry__fail(-EINVAL, "%s: %s is NULL", who, r ? "recs" : "r");
	uint64_t cap = ps.view ? snapshot_view(r, want) : snapshot(r, want);
	if (FERRY_UNLIKELY(!cap))
		return corrupt(r, who, "header (magic, version, capacity, mask)");
	if (!n)
		return 0;
	if (n > INT_MAX)
		n = INT_MAX;
	uint64_t tail0 = 0, tail;
	int rc = producer_start(r, ps, &tail0, who);
	if (FERRY_UNLIKELY(rc))
		return rc;
	tail = tail0;
	const uint64_t mask = cap - 1, maxr = max_rec(cap);
	size_t i = 0;
	/*
	 * Fast stretch: records that fit before the end of the buffer within the
	 * room the cached head promises (one compare per record, no reload, no
	 * pad); the general loop below takes over at the first that does not.
	 */
	uint64_t head = *ps.head_cache, commit = 0;
	if (FERRY_LIKELY(tail - head <= cap)) {
		/* as differences, never as end positions: a tail the peer set near
		 * 2^64 must not wrap a bound into a larger one */
		uint64_t left = cap - (tail - head), to_end = cap - (tail & mask);
		if (to_end < left)
			left = to_end; /* no wrap in the fast stretch */
		for (; i < n; i++) {
			size_t len = recs[i].len;
			uint64_t step = REC_HDR + align8(len);
			if (FERRY_UNLIKELY(len > maxr || (len && !recs[i].p) || step > left))
				break;
			unsigned char *at = r->data + (tail & mask);
			if (i)
				put_word(r, tail & mask, rec_word(cap, tail, KIND_DATA, len));
			else
				commit = rec_word(cap, tail, KIND_DATA, len); /* published last */
			if (len)
				memcpy(at + REC_HDR, recs[i].p, len);
			tail += step;
			left -= step;
		}
	}
	for (; i < n; i++) {
		size_t len = recs[i].len;
		if (FERRY_UNLIKELY(len > maxr)) {
			if (i == 0)
				return ferry__fail(-EMSGSIZE, "%s: recs[0].len %zu exceeds max_record %llu",
						   who, len, (unsigned long long)maxr);
			break;
		}
		if (FERRY_UNLIKELY(len && !recs[i].p)) {
			if (i == 0)
				return ferry__fail(-EINVAL, "%s: recs[0].p is NULL", who);
			break;
		}
		uint64_t total = span(cap, tail & mask, len);
		rc = room(r, ps, cap, tail0, tail - tail0 + total, who);
		if (rc) {
			if (i == 0 || rc != -EAGAIN)
				return rc;
			break;
		}
		uint64_t w, off = frame(r, cap, tail, len, len, &w);
		if (i)
			put_word(r, tail & mask, w);
		else
			commit = w; /* published last */
		if (len)
			memcpy(r->data + off + REC_HDR, recs[i].p, len);
		tail += total;
	}
	/* one publication for the batch: the first record's commit word, last */
	publish(r, ps, cap, tail0, tail, commit);
	return (int)i;
}

/*
 * Records up to this size (header included) whose next slot reads zero are
 * taken without a look at tail when the cached tail does not cover them.
 */
#define SMALL_REC 128u
/*
 * Consecutive empty polls per look at tail (a power of two); see
 * peek_impl. They are counted in the high half of the consumer's adv word
 * (the low half: the bytes release moves head by), which a record taken
 * resets.
 */
#define TAIL_POLL 64u

/*
 * A word at @pos that holds no record yet: zero (the slot a commit zeroed
 * after its records), or a header or pad marker of the lap before (the slot
 * after a commit that filled the ring).
 */
static inline bool unpublished(uint64_t w, uint64_t cap, uint64_t pos)
{
	uint32_t hi = (uint32_t)(w >> 32);
	return w == 0 || hi == tag(cap, pos - cap, KIND_DATA) || hi == tag(cap, pos - cap, KIND_PAD);
}

/*
 * Tail, through the consumer's cache: the cached value when it covers @need
 * bytes past @pos, else a fresh load, checked for range - aligned, and at
 * most a capacity ahead of @pos or, when records were taken before tail
 * caught up with them (publish() stores tail last, once per batch), between
 * the tail loaded last and @pos, and less than a capacity behind it (tail
 * never moves back, and no batch is longer than the ring) - and cached.
 * Returns 0 or -EPROTO.
 */
static inline int load_tail(struct ferry_ring_spsc *r, struct cons cs, uint64_t cap, uint64_t pos,
			    uint64_t need, uint64_t *tail_out, const char *who)
{
	uint64_t tail = *cs.tail_cache;
	if (tail - pos < need || tail - pos > cap || (tail & 7)) {
		uint64_t seen = tail;
		/*
		 * acquire: pairs with publish()'s release store of tail; loaded
		 * after the commit word's acquire, so at least the tail of every
		 * commit before that word's.
		 */
		tail = atomic_load_explicit(&r->tail, memory_order_acquire);
		if (FERRY_UNLIKELY((tail & 7) ||
				   (tail - pos > cap && (pos - tail > cap || pos - tail > pos - seen))))
			return corrupt(r, who, "tail out of range (head past tail or beyond capacity)");
		*cs.tail_cache = tail;
	}
	*tail_out = tail;
	return 0;
}

/*
 * The record at @pos: validates it (and a pad marker before it) against the
 * capacity and against tail, and gives its offset, length and the bytes
 * release moves head by. Returns 0, -EAGAIN (nothing published at @pos; a
 * tail that moved on is a commit in flight, checked for range) or -EPROTO.
 */
static inline int next_rec(struct ferry_ring_spsc *r, struct cons cs, uint64_t cap, uint64_t pos,
			   uint64_t *off_out, uint64_t *len_out, uint64_t *adv_out, const char *who)
{
	uint64_t off = pos & (cap - 1), adv = 0, tail = 0;
	/*
	 * acquire: pairs with publish()'s release store of the commit word.
	 * One load: the word is read once and only the local is trusted.
	 */
	uint64_t w = __atomic_load_n((const uint64_t *)(const void *)(r->data + off), __ATOMIC_ACQUIRE);
	if (unpublished(w, cap, pos)) {
		int rc = load_tail(r, cs, cap, pos, REC_HDR, &tail, who);
		return rc ? rc : -EAGAIN;
	}
	if ((w >> 32) == tag(cap, pos, KIND_PAD)) {
		if (FERRY_UNLIKELY(off == 0 || (uint32_t)w != cap - off - REC_HDR))
			return corrupt(r, who, "pad marker where none can be");
		adv = cap - off;
		off = 0;
		/* relaxed: stored before the pad marker's release, which the acquire above saw */
		w = __atomic_load_n((const uint64_t *)(const void *)r->data, __ATOMIC_RELAXED);
		if (FERRY_UNLIKELY((w >> 32) != tag(cap, pos + adv, KIND_DATA)))
			return corrupt(r, who, "pad marker without a record after it");
	} else if (FERRY_UNLIKELY((w >> 32) != tag(cap, pos, KIND_DATA))) {
		return corrupt(r, who, "bad record kind (or lap)");
	}
	uint64_t n = (uint32_t)w, step = REC_HDR + align8(n);
	if (FERRY_UNLIKELY(n > max_rec(cap) || off + step > cap))
		return corrupt(r, who, "record length past the buffer or above max_record");
	int rc = load_tail(r, cs, cap, pos, adv + step, &tail, who);
	if (FERRY_UNLIKELY(rc))
		return rc;
	/*
	 * Tail covers the record, or has not reached it yet: stored after the
	 * commit word, it may still be at the start of the batch this record
	 * belongs to (load_tail() let it through only between the tail loaded
	 * last and pos, i.e. on its way). A tail inside the record is corrupt:
	 * a tail is always where a commit ended.
	 */
	if (FERRY_UNLIKELY(tail - pos <= cap && tail != pos && tail - pos < adv + step))
		return corrupt(r, who,
			       adv ? "pad marker without a record after it"
				   : "record length past the committed data");
	*off_out = off;
	*len_out = n;
	*adv_out = adv + step;
	return 0;
}

/* The consumer's head, checked. Returns 0, or -EPROTO. */
static inline int consumer_start(struct ferry_ring_spsc *r, uint64_t *head_out, const char *who)
{
	/* relaxed: CORRUPT is sticky and carries no data */
	if (FERRY_UNLIKELY(atomic_load_explicit(&r->closed, memory_order_relaxed) & CORRUPT))
		return ferry__fail(-EPROTO, "%s: ring was marked corrupt", who);
	/* relaxed: only this side writes head */
	uint64_t head = atomic_load_explicit(&r->head, memory_order_relaxed);
	if (FERRY_UNLIKELY(head & 7))
		return corrupt(r, who, "misaligned head");
	*head_out = head;
	return 0;
}

/* next_rec at head, and on an empty ring the close check: -EAGAIN becomes -EPIPE once closed. */
static inline int first_rec(struct ferry_ring_spsc *r, struct cons cs, uint64_t cap, uint64_t head,
			    uint64_t *off, uint64_t *len, uint64_t *adv, const char *who)
{
	int rc = next_rec(r, cs, cap, head, off, len, adv, who);
	if (rc != -EAGAIN)
		return rc;
	/* acquire: pairs with the release in close(), which follows the closer's last commit */
	if (!atomic_load_explicit(&r->closed, memory_order_acquire))
		return -EAGAIN;
	rc = next_rec(r, cs, cap, head, off, len, adv, who);
	return rc == -EAGAIN ? -EPIPE : rc;
}

__attribute__((noinline)) static int peek_slow(ferry_ring_spsc *r, struct cons cs, uint64_t want,
					      const void **p, size_t *len)
{
	static const char who[] = "ferry_ring_spsc_peek";
	if (FERRY_UNLIKELY(!r || !p || !len))
		return ferry__fail(-EINVAL, "%s: %s is NULL", who, !r ? "r" : !p ? "p" : "len");
	uint64_t cap = snapshot(r, want);
	if (FERRY_UNLIKELY(!cap))
		return corrupt(r, who, "header (magic, version, capacity, mask)");
	uint64_t head = 0, off = 0, n = 0, adv = 0;
	int rc = consumer_start(r, &head, who);
	if (FERRY_UNLIKELY(rc))
		return rc;
	rc = first_rec(r, cs, cap, head, &off, &n, &adv, who);
	if (rc)
		return rc;
	*cs.adv = adv;
	*p = r->data + off + REC_HDR;
	*len = (size_t)n;
	return 0;
}

static inline __attribute__((always_inline)) int peek_impl(ferry_ring_spsc *r, struct cons cs,
							 uint64_t want, const void **p, size_t *len)
{
	if (FERRY_LIKELY(r && p && len)) {
		uint64_t cap = cs.view ? snapshot_view(r, want) : snapshot(r, want);
		/* relaxed: CORRUPT is sticky and carries no data; head is ours */
		if (FERRY_LIKELY(cap &&
				 !(atomic_load_explicit(&r->closed, memory_order_relaxed) & CORRUPT))) {
			uint64_t head = atomic_load_explicit(&r->head, memory_order_relaxed);
			/* & (cap - 8): in the ring even for a misaligned head (sent to the slow path) */
			uint64_t off = head & (cap - 8), seen = *cs.tail_cache;
			/* acquire: pairs with publish()'s release store of the commit word */
			uint64_t w = __atomic_load_n((const uint64_t *)(const void *)(r->data + off),
						     __ATOMIC_ACQUIRE);
			uint64_t n = (uint32_t)w, step = REC_HDR + align8(n);
			if (FERRY_LIKELY(!(head & 7))) {
				if (FERRY_LIKELY((w >> 32) == tag(cap, head, KIND_DATA) &&
						 n <= max_rec(cap) && off + step <= cap)) {
					/*
					 * The record is out. Checked against tail when the cache
					 * covers it (no load); a small one whose next slot reads
					 * zero - the slot its commit zeroed: nothing committed
					 * after it - is taken without loading tail, whose line
					 * a poll should leave alone: the producer stores tail
					 * after every commit word, and a consumer that keeps the
					 * line shared makes that store wait for it, and its own
					 * next poll too. The cache then says "at head", so that
					 * the next call after the release checks tail. Anything
					 * else: the slow path loads tail and checks the record.
					 */
					uint64_t nw = 1;
					bool covered = seen - head - step <= cap - step && !(seen & 7);
					if (!covered && step <= SMALL_REC)
						/* relaxed: stored before the commit word's release */
						nw = __atomic_load_n((const uint64_t *)(const void *)(r->data +
								((off + step) & (cap - 1))),
								     __ATOMIC_RELAXED);
					if (FERRY_LIKELY(covered || nw == 0)) {
						*cs.adv = step; /* and no empty polls since */
						*p = r->data + off + REC_HDR;
						*len = (size_t)n;
						return 0;
					}
				} else if (unpublished(w, cap, head)) {
					uint64_t a = *cs.adv;
					if ((a >> 32 & (TAIL_POLL - 1)) == TAIL_POLL - 1) {
						/*
						 * Every TAIL_POLL-th empty poll in a row also looks
						 * at tail, for range: a tail the peer moved out of
						 * range shows while this side waits. Not every poll,
						 * nor every so many polls of a busy ring: a look
						 * leaves the line shared, and the producer's next
						 * store of tail (after its commit word) waits for
						 * the line, and its later stores behind it (a ring
						 * in ping-pong waits far fewer polls than that).
						 * acquire: after the commit word's, as in load_tail().
						 */
						uint64_t tail = atomic_load_explicit(&r->tail, memory_order_acquire);
						if ((tail & 7) || (tail - head > cap &&
								   (head - tail > cap || head - tail > head - seen)))
							goto slow;
						*cs.tail_cache = tail;
					}
					*cs.adv = a + ((uint64_t)1 << 32); /* counts empty polls in a row */
					/* relaxed: closed goes to the slow path, which rereads it with acquire */
					if (!atomic_load_explicit(&r->closed, memory_order_relaxed)) {
						/*
						 * Empty and open (or a commit in flight): the common
						 * answer of a poll. Prefetch the line after the
						 * commit word's: a record's bytes run on into it,
						 * and fetched while polling it comes over with the
						 * commit word rather than after it.
						 */
						__builtin_prefetch(r->data + (((off | 63) + 1) & (cap - 1)));
						return -EAGAIN;
					}
				}
			}
		}
	}
slow:
	return peek_slow(r, cs, want, p, len);
}

static int peek_batch_impl(ferry_ring_spsc *r, struct cons cs, uint64_t want,
			   struct ferry_ring_rec *out, size_t n)
{
	static const char who[] = "ferry_ring_spsc_peek_batch";
	if (FERRY_UNLIKELY(!r || (!out && n)))
		return ferry__fail(-EINVAL, "%s: %s is NULL", who, r ? "out" : "r");
	uint64_t cap = cs.view ? snapshot_view(r, want) : snapshot(r, want);
	if (FERRY_UNLIKELY(!cap))
		return corrupt(r, who, "header (magic, version, capacity, mask)");
	if (!n)
		return 0;
	if (n > INT_MAX)
		n = INT_MAX;
	uint64_t head = 0, off = 0, len = 0, adv = 0, pos;
	int rc = consumer_start(r, &head, who);
	if (FERRY_UNLIKELY(rc))
		return rc;
	rc = first_rec(r, cs, cap, head, &off, &len, &adv, who);
	if (rc)
		return rc;
	out[0].p = r->data + off + REC_HDR;
	out[0].len = (size_t)len;
	/* checked by next_rec: covers the first record (or is still at its start:
	 * then the batch is that record), at most a capacity ahead */
	uint64_t tail = *cs.tail_cache;
	if (tail - head < adv)
		tail = head + adv;
	/*
	 * Each record's position comes from the previous one's header, so a
	 * walk over lines the producer just wrote would wait for one line
	 * transfer after another. The span [head, tail) is known: keep hints
	 * for its lines running PF_AHEAD bytes ahead of the walk (prefetches:
	 * inside the ring, nothing loaded, nothing ordered).
	 */
	enum { PF_AHEAD = 1024 };
	uint64_t pf = head & ~(uint64_t)63;
	uint64_t pf_stop = tail - head < PF_AHEAD ? tail : head + PF_AHEAD;
	for (; pf < pf_stop; pf += 64)
		__builtin_prefetch(r->data + (pf & (cap - 1)));
	size_t i = 1;
	for (pos = head + adv; i < n && pos != tail; i++) {
		rc = next_rec(r, cs, cap, pos, &off, &len, &adv, who);
		if (rc == -EAGAIN)
			break; /* the next batch's commit word is not out yet */
		if (FERRY_UNLIKELY(rc))
			return rc;
		out[i].p = r->data + off + REC_HDR;
		out[i].len = (size_t)len;
		pos += adv;
		pf_stop = tail - pos < PF_AHEAD ? tail : pos + PF_AHEAD;
		for (; pf < pf_stop; pf += 64)
			__builtin_prefetch(r->data + (pf & (cap - 1)));
	}
	*cs.adv = pos - head;
	return (int)i;
}

static inline __attribute__((always_inline)) void release_impl(ferry_ring_spsc *r, struct cons cs)
{
	uint64_t a = *cs.adv, adv = (uint32_t)a;
	if (!adv)
		return;
	/*
	 * No header snapshot needed: head is only a position, never an address
	 * here; a wrong one is caught by the next peek (tail - head <= capacity).
	 */
	if (FERRY_UNLIKELY(adv > FERRY_RING_SPSC_MAX_CAP || (adv & 7))) {
		corrupt(r, "ferry_ring_spsc_release", "peeked record size");
		return;
	}
	*cs.adv = a - adv;
	/* relaxed: only this side writes head */
	uint64_t head = atomic_load_explicit(&r->head, memory_order_relaxed);
	/*
	 * release: pairs with the producer's acquire load of head in reserve();
	 * our reads of the record happen before the producer may reuse its bytes.
	 */
	atomic_store_explicit(&r->head, head + adv, memory_order_release);
}

FERRY_API int ferry_ring_spsc_reserve(ferry_ring_spsc *r, size_t len, void **p)
{
	return reserve_impl(r, r ? shared_prod(r) : (struct prod){ 0 }, 0, len, p);
}

FERRY_API int ferry_ring_spsc_commit(ferry_ring_spsc *r, size_t len)
{
	return commit_impl(r, r ? shared_prod(r) : (struct prod){ 0 }, 0, len);
}

FERRY_API int ferry_ring_spsc_peek(ferry_ring_spsc *r, const void **p, size_t *len)
{
	return peek_impl(r, r ? shared_cons(r) : (struct cons){ 0 }, 0, p, len);
}

FERRY_API int ferry_ring_spsc_push_batch(ferry_ring_spsc *r, const struct ferry_ring_rec *recs,
					 size_t n)
{
	return push_batch_impl(r, r ? shared_prod(r) : (struct prod){ 0 }, 0, recs, n);
}

FERRY_API int ferry_ring_spsc_peek_batch(ferry_ring_spsc *r, struct ferry_ring_rec *out, size_t n)
{
	return peek_batch_impl(r, r ? shared_cons(r) : (struct cons){ 0 }, 0, out, n);
}

FERRY_API void ferry_ring_spsc_release(ferry_ring_spsc *r)
{
	if (FERRY_LIKELY(r))
		release_impl(r, shared_cons(r));
}

/* ---- views: the same calls against a capacity and a side state this side keeps ---- */

/* A view never set up is the caller's mistake: report it, and leave the ring alone. */
static int bad_view(const char *who)
{
	return ferry__fail(-EINVAL, "%s: v is NULL or not set up by ferry_ring_spsc_view_init", who);
}
#define VIEW_OK(v) FERRY_LIKELY((v) && (v)->ring && (v)->capacity)

FERRY_API int ferry_ring_spsc_view_init(struct ferry_ring_spsc_view *v, ferry_ring_spsc *r,
					size_t memsize)
{
	if (!v)
		return ferry__fail(-EINVAL, "ferry_ring_spsc_view_init: v is NULL");
	uint64_t cap = 0;
	int rc = check_impl(r, memsize, &cap, "ferry_ring_spsc_view_init");
	if (rc)
		return rc;
	memset(v, 0, sizeof *v);
	v->ring = r;
	v->capacity = (size_t)cap;
	/*
	 * The caches start where the ring is now (check_impl validated both
	 * indices): stale caches are only ever conservative, since head and
	 * tail only move forward.
	 */
	/* acquire: as in check_impl; head alone gives a valid cache of both */
	uint64_t head = atomic_load_explicit(&r->head, memory_order_acquire);
	v->head_cache = head & ~(uint64_t)7;
	v->tail_cache = head & ~(uint64_t)7;
	return 0;
}

void *ferry__ring_spsc_view_next(const struct ferry_ring_spsc_view *v, size_t len, size_t *bytes)
{
	*bytes = 0;
	if (!VIEW_OK(v) || len > max_rec(v->capacity))
		return NULL;
	ferry_ring_spsc *r = v->ring;
	/* relaxed: only this side writes tail */
	uint64_t tail = atomic_load_explicit(&r->tail, memory_order_relaxed), cap = v->capacity;
	uint64_t off = tail & (cap - 1), need = REC_HDR + align8(len);
	/* As reserve_impl's fast path: room the cached head vouches for (a
	 * stale cache only says less), and no wrap. */
	if ((tail | v->head_cache) & 7 || off + need > cap || tail - v->head_cache > cap - need)
		return NULL;
	*bytes = (size_t)need;
	return r->data + off;
}

FERRY_API int ferry_ring_spsc_view_reserve(struct ferry_ring_spsc_view *v, size_t len, void **p)
{
	if (!VIEW_OK(v))
		return bad_view("ferry_ring_spsc_view_reserve");
	return reserve_impl(v->ring, view_prod(v), v->capacity, len, p);
}

FERRY_API int ferry_ring_spsc_view_commit(struct ferry_ring_spsc_view *v, size_t len)
{
	if (!VIEW_OK(v))
		return bad_view("ferry_ring_spsc_view_commit");
	return commit_impl(v->ring, view_prod(v), v->capacity, len);
}

FERRY_API int ferry_ring_spsc_view_peek(struct ferry_ring_spsc_view *v, const void **p,
					size_t *len)
{
	if (!VIEW_OK(v))
		return bad_view("ferry_ring_spsc_view_peek");
	return peek_impl(v->ring, view_cons(v), v->capacity, p, len);
}

FERRY_API void ferry_ring_spsc_view_release(struct ferry_ring_spsc_view *v)
{
	if (VIEW_OK(v))
		release_impl(v->ring, view_cons(v));
}

FERRY_API int ferry_ring_spsc_view_push_batch(struct ferry_ring_spsc_view *v,
					      const struct ferry_ring_rec *recs, size_t n)
{
	if (!VIEW_OK(v))
		return bad_view("ferry_ring_spsc_view_push_batch");
	return push_batch_impl(v->ring, view_prod(v), v->capacity, recs, n);
}

FERRY_API int ferry_ring_spsc_view_peek_batch(struct ferry_ring_spsc_view *v,
					      struct ferry_ring_rec *out, size_t n)
{
	if (!VIEW_OK(v))
		return bad_view("ferry_ring_spsc_view_peek_batch");
	return peek_batch_impl(v->ring, view_cons(v), v->capacity, out, n);
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
	uint64_t cap = snapshot(r, 0);
	/* relaxed: a snapshot for statistics; no data is read through it */
	uint64_t head = atomic_load_explicit(&r->head, memory_order_relaxed);
	uint64_t tail = atomic_load_explicit(&r->tail, memory_order_relaxed);
	uint64_t used = tail - head;
	/* head runs a record past tail while tail, stored after the commit word, is on its way */
	if ((int64_t)used < 0)
		return 0;
	return used > cap ? cap : (size_t)used;
}
