/*
 * shm/ring_mpmc.c - MPMC ring of fixed-size slots in caller memory, with
 * owner-stamped slot claims so that a process dying in a push or pop never
 * wedges the ring. The design (states, close, recovery) is in
 * include/ferry/ring.h; this file says why each step is ordered as it is.
 */
#include "ferry/ring.h"
#include "shm/err.h"

#include <assert.h>
#include <errno.h>
#include <fcntl.h>
#include <limits.h>
#include <pthread.h>
#include <signal.h>
#include <stdalign.h>
#include <stdatomic.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <string.h>
#include <unistd.h>

static_assert(ATOMIC_LONG_LOCK_FREE == 2 && ATOMIC_LLONG_LOCK_FREE == 2,
	      "64-bit atomics in shared memory must be lock-free");
static_assert(ATOMIC_INT_LOCK_FREE == 2, "32-bit atomics in shared memory must be lock-free");

#define MPMC_MAGIC 0x434d5046u /* "FPMC" */
#define MPMC_VERSION 1u

/* The tail's top bit is the closed flag: close is ordered with every tail CAS. */
#define CLOSED_BIT (1ull << 63)
#define CNT_MASK (CLOSED_BIT - 1)

/*
 * Slot word: pos (40 bits, the position modulo 2^40: the lap) | pid (22 bits)
 * | state (2 bits). Positions are compared as signed 40-bit differences,
 * exact while the two sides are less than 2^39 apart (they are at most a few
 * laps of at most 2^24 slots apart).
 */
enum { ST_FREE = 0, ST_WRITING = 1, ST_FULL = 2, ST_READING = 3 };
#define PID_BITS 22
#define PID_MASK ((1u << PID_BITS) - 1)
#define POS_SHIFT (PID_BITS + 2)
#define POS_MASK ((1ull << (64 - POS_SHIFT)) - 1)
#define SKIP_PID PID_MASK /* FULL with this owner: a dead producer's slot, dropped by pop */

/*
 * flags: CORRUPT, and CLOSED_HINT, a copy of the tail's closed bit set just
 * after it, which lets a consumer polling an empty ring skip the tail's line
 * (written by every push) until a close makes it worth reading.
 */
#define CORRUPT 1u
#define CLOSED_HINT 2u
/* An empty poll still reads the tail (to validate head against it) every this many. */
#define EMPTY_CHECK_EVERY 64u

/* Consecutive sightings of one stuck owner word before we ask whether its owner lives. */
#define SUSPECT_AFTER 64
/* Retries of one operation before it gives up with -EAGAIN (only a hostile peer gets here). */
#define MAX_RETRIES (1u << 16)

struct ferry_ring_mpmc {
	/* Immutable after init; loaded once per call, never trusted on re-read. */
	alignas(64) uint32_t magic;
	uint32_t version;
	uint64_t slots;
	uint64_t mask;
	uint32_t elem_size;
	uint32_t stride;
	/* Producers' counter (CLOSED_BIT on top). */
	alignas(64) _Atomic uint64_t tail;
	/* Consumers' counter. */
	alignas(64) _Atomic uint64_t head;
	/* Rarely written. */
	alignas(64) _Atomic uint32_t flags;
	_Atomic uint64_t recovered;
	alignas(64) unsigned char mem[];
};

struct slot {
	_Atomic uint64_t word;
	unsigned char data[];
};

static_assert(offsetof(struct ferry_ring_mpmc, tail) == 64, "layout");
static_assert(offsetof(struct ferry_ring_mpmc, head) == 128, "layout");
static_assert(offsetof(struct ferry_ring_mpmc, mem) == FERRY_RING_MPMC_HDR_SIZE, "layout");

/* Test-only: called at each step of a push or pop when set (see the crash tests). */
void (*ferry__ring_mpmc_hook)(int step);
#define HOOK(step)                                      \
	do {                                            \
		if (FERRY_UNLIKELY(ferry__ring_mpmc_hook)) \
			ferry__ring_mpmc_hook(step);    \
	} while (0)

/* The validated geometry of one call. */
struct geo {
	uint64_t slots, mask, stride;
	size_t size;
};

static inline uint64_t W(uint64_t pos, uint32_t pid, unsigned st)
{
	return (pos & POS_MASK) << POS_SHIFT | (uint64_t)(pid & PID_MASK) << 2 | st;
}
static inline uint64_t wpos(uint64_t w) { return w >> POS_SHIFT; }
static inline uint32_t wpid(uint64_t w) { return (uint32_t)(w >> 2) & PID_MASK; }
static inline unsigned wst(uint64_t w) { return (unsigned)(w & 3); }

/* Signed distance from position @p to the word's position, modulo 2^40. */
static inline int64_t sdiff(uint64_t w, uint64_t p)
{
	return (int64_t)(((wpos(w) - p) & POS_MASK) << POS_SHIFT) >> POS_SHIFT;
}

static inline uint64_t stride_of(uint64_t elem)
{
	return (sizeof(uint64_t) + elem + 7) & ~(uint64_t)7;
}

static inline bool slots_ok(uint64_t n)
{
	return n >= FERRY_RING_MPMC_MIN_SLOTS && n <= FERRY_RING_MPMC_MAX_SLOTS && (n & (n - 1)) == 0;
}

static inline struct slot *slot_at(struct ferry_ring_mpmc *r, const struct geo *g, uint64_t pos)
{
	return (struct slot *)(r->mem + (pos & g->mask) * g->stride);
}

/* A word is well-formed for the slot at @idx: the right lap residue and a legal owner. */
static inline bool word_ok(uint64_t w, uint64_t idx, const struct geo *g)
{
	if ((wpos(w) & g->mask) != idx)
		return false;
	uint32_t pid = wpid(w);
	switch (wst(w)) {
	case ST_FREE:
		return pid == 0;
	case ST_FULL:
		return pid == 0 || pid == SKIP_PID;
	default:
		return pid != 0;
	}
}

static int corrupt(struct ferry_ring_mpmc *r, const char *who, const char *what)
{
	/* relaxed: flags carry no data; every side re-validates on its own */
	atomic_fetch_or_explicit(&r->tail, CLOSED_BIT, memory_order_relaxed);
	atomic_fetch_or_explicit(&r->flags, CORRUPT | CLOSED_HINT, memory_order_relaxed);
	return ferry__fail(-EPROTO, "%s: corrupt ring: %s", who, what);
}

/*
 * The header, loaded once and validated against the caller's element size
 * and, through a view, the slot count this side attached to (@want; 0: any).
 * Returns 0, -EPROTO (inconsistent header: the ring is marked) or -EINVAL
 * (a consistent ring of another element size).
 */
static inline int snapshot(struct ferry_ring_mpmc *r, uint64_t want, size_t size, struct geo *g,
			   const char *who)
{
	uint32_t magic = __atomic_load_n(&r->magic, __ATOMIC_RELAXED);
	uint32_t version = __atomic_load_n(&r->version, __ATOMIC_RELAXED);
	uint64_t slots = __atomic_load_n(&r->slots, __ATOMIC_RELAXED);
	uint64_t mask = __atomic_load_n(&r->mask, __ATOMIC_RELAXED);
	uint32_t elem = __atomic_load_n(&r->elem_size, __ATOMIC_RELAXED);
	uint32_t stride = __atomic_load_n(&r->stride, __ATOMIC_RELAXED);
	if (FERRY_UNLIKELY(magic != MPMC_MAGIC || version != MPMC_VERSION || !slots_ok(slots) ||
			   mask != slots - 1 || elem == 0 || elem > FERRY_RING_MPMC_MAX_ELEM ||
			   stride != stride_of(elem) || (want && slots != want)))
		return corrupt(r, who, "header (magic, version, slots, mask or element size)");
	if (FERRY_UNLIKELY(size != elem))
		return ferry__fail(-EINVAL, "%s: size %zu, but the ring holds %u-byte elements", who,
				   size, elem);
	g->slots = slots;
	g->mask = mask;
	g->stride = stride;
	g->size = size;
	return 0;
}

/* ---- who am I, and is that owner alive ---- */

static _Atomic uint32_t self_pid;
static pthread_once_t atfork_once = PTHREAD_ONCE_INIT;

static void forget_pid(void)
{
	atomic_store_explicit(&self_pid, 0, memory_order_relaxed);
}

static void register_atfork(void)
{
	pthread_atfork(NULL, NULL, forget_pid);
}

/* The owner stamp of this process (its pid, cached; refreshed in a forked child). */
static inline uint32_t me(void)
{
	/* relaxed: a per-process value; the atfork handler runs in the child before it returns */
	uint32_t p = atomic_load_explicit(&self_pid, memory_order_relaxed);
	if (FERRY_LIKELY(p))
		return p;
	pthread_once(&atfork_once, register_atfork);
	p = (uint32_t)getpid();
	atomic_store_explicit(&self_pid, p, memory_order_relaxed);
	return p;
}

/* Is process @pid gone (or a zombie)? Only asked about a word that stays stuck. */
static bool owner_dead(uint32_t pid)
{
	if (pid == me())
		return false;
	if (kill((pid_t)pid, 0) < 0 && errno == ESRCH)
		return true;
	char path[64], buf[512];
	snprintf(path, sizeof path, "/proc/%u/stat", pid);
	int fd = open(path, O_RDONLY | O_CLOEXEC);
	if (fd < 0)
		return errno == ENOENT;
	ssize_t n = read(fd, buf, sizeof buf - 1);
	close(fd);
	if (n <= 0)
		return false;
	buf[n] = 0;
	const char *rp = strrchr(buf, ')');
	return rp && rp[1] == ' ' && (rp[2] == 'Z' || rp[2] == 'X');
}

static _Thread_local uint32_t empty_polls;
/* This thread's last push found the ring full / last pop found it empty: poll with loads. */
static _Thread_local bool push_blocked, pop_blocked;
static _Thread_local uint64_t suspect_word;
static _Thread_local uint32_t suspect_count;

/* Count another sighting of stuck @w; true when it is time to check its owner. */
static bool suspect(uint64_t w)
{
	if (wpid(w) == me())
		return false;
	if (suspect_word != w) {
		suspect_word = w;
		suspect_count = 0;
	}
	if (++suspect_count < SUSPECT_AFTER)
		return false;
	suspect_count = 0;
	return owner_dead(wpid(w));
}

/* ---- counters ---- */

/*
 * Make sure the tail passed position @p, helping it if it stands at @p.
 * Returns 1 (passed: a claim at p counts), 0 (closed at p: a claim at p is
 * void), -EPROTO (the tail is behind p).
 */
static int tail_passed(struct ferry_ring_mpmc *r, uint64_t p)
{
	/* relaxed: the counter orders claims, not data (data goes through slot words) */
	uint64_t t = atomic_load_explicit(&r->tail, memory_order_relaxed);
	for (;;) {
		int64_t d = (int64_t)((t & CNT_MASK) - p);
		if (d > 0)
			return 1;
		if (d < 0)
			return -EPROTO;
		if (t & CLOSED_BIT)
			return 0;
		/* relaxed: as above; the CAS is the commit point of the claim at p */
		if (atomic_compare_exchange_weak_explicit(&r->tail, &t, p + 1, memory_order_relaxed,
							  memory_order_relaxed))
			return 1;
	}
}

/* Move head past @p if it stands at or before it (its reader may be gone). */
static void head_pass(struct ferry_ring_mpmc *r, uint64_t p)
{
	/* relaxed: the counter is a hint for consumers; slot words carry the data */
	uint64_t h = atomic_load_explicit(&r->head, memory_order_relaxed);
	while ((int64_t)(h - p) <= 0 &&
	       !atomic_compare_exchange_weak_explicit(&r->head, &h, p + 1, memory_order_relaxed,
						      memory_order_relaxed))
		;
}

/*
 * Take back a slot whose owner died in state @w. Returns 0 when the word
 * changed (by us or someone else) and the caller should look again,
 * -EPROTO on a tail behind the slot.
 */
static int recover(struct ferry_ring_mpmc *r, struct slot *s, uint64_t w, const struct geo *g,
		   const char *who)
{
	uint64_t p = wpos(w), nw;
	if (wst(w) == ST_WRITING) {
		/* The lap in the word is only 40 bits: rebuild the full position from the tail. */
		uint64_t t = atomic_load_explicit(&r->tail, memory_order_relaxed) & CNT_MASK;
		p = t - ((t - p) & POS_MASK);
		int passed = tail_passed(r, p);
		if (passed < 0)
			return corrupt(r, who, "tail behind a claimed slot");
		nw = passed ? W(p, SKIP_PID, ST_FULL) : W(p, 0, ST_FREE);
	} else {
		uint64_t h = atomic_load_explicit(&r->head, memory_order_relaxed) & CNT_MASK;
		p = h - ((h - p) & POS_MASK);
		head_pass(r, p);
		nw = W(p + g->slots, 0, ST_FREE);
	}
	/*
	 * release: pairs with the acquire loads of the slot word by whoever
	 * takes the slot next; nothing of the dead owner's data is handed on
	 * (a SKIP is never read), the ordering only keeps the counters' help
	 * above before the slot reopens.
	 */
	if (atomic_compare_exchange_strong_explicit(&s->word, &w, nw, memory_order_release,
						    memory_order_relaxed))
		atomic_fetch_add_explicit(&r->recovered, 1, memory_order_relaxed);
	return 0;
}

/* ---- init, check ---- */

FERRY_API size_t ferry_ring_mpmc_memsize(size_t slots, size_t elem_size)
{
	if (!slots_ok(slots) || elem_size == 0 || elem_size > FERRY_RING_MPMC_MAX_ELEM)
		return 0;
	return FERRY_RING_MPMC_HDR_SIZE + slots * stride_of(elem_size);
}

FERRY_API int ferry_ring_mpmc_init(ferry_ring_mpmc *r, size_t memsize, size_t elem_size)
{
	static const char who[] = "ferry_ring_mpmc_init";
	if (!r)
		return ferry__fail(-EINVAL, "%s: r (mem) is NULL", who);
	if ((uintptr_t)r % 64)
		return ferry__fail(-EINVAL, "%s: r (mem) %p is not 64-byte aligned", who, (void *)r);
	if (elem_size == 0 || elem_size > FERRY_RING_MPMC_MAX_ELEM)
		return ferry__fail(-EINVAL, "%s: elem_size %zu is outside [1, %u]", who, elem_size,
				   FERRY_RING_MPMC_MAX_ELEM);
	uint64_t stride = stride_of(elem_size);
	if (memsize < FERRY_RING_MPMC_HDR_SIZE + FERRY_RING_MPMC_MIN_SLOTS * stride)
		return ferry__fail(-EINVAL, "%s: memsize %zu cannot hold two %zu-byte slots", who,
				   memsize, elem_size);
	uint64_t room = (memsize - FERRY_RING_MPMC_HDR_SIZE) / stride, n = FERRY_RING_MPMC_MAX_SLOTS;
	while (n > room)
		n >>= 1;
	memset(r, 0, FERRY_RING_MPMC_HDR_SIZE);
	r->magic = MPMC_MAGIC;
	r->version = MPMC_VERSION;
	r->slots = n;
	r->mask = n - 1;
	r->elem_size = (uint32_t)elem_size;
	r->stride = (uint32_t)stride;
	atomic_init(&r->tail, 0);
	atomic_init(&r->head, 0);
	atomic_init(&r->flags, 0);
	atomic_init(&r->recovered, 0);
	for (uint64_t i = 0; i < n; i++)
		atomic_init(&((struct slot *)(r->mem + i * stride))->word, W(i, 0, ST_FREE));
	/* The memory reaches the other side through what shares it (thread start, fork, fd passing). */
	atomic_thread_fence(memory_order_release);
	return 0;
}

static int check_impl(const ferry_ring_mpmc *cr, size_t memsize, size_t elem_size,
		      uint64_t *slots_out, const char *who)
{
	/* check only reads; the cast lets it share the loaders with the operations */
	struct ferry_ring_mpmc *r = (struct ferry_ring_mpmc *)cr;
	if (!r)
		return ferry__fail(-EINVAL, "%s: r is NULL", who);
	if ((uintptr_t)r % 64)
		return ferry__fail(-EINVAL, "%s: r %p is not 64-byte aligned", who, (void *)r);
	if (memsize < FERRY_RING_MPMC_HDR_SIZE)
		return ferry__fail(-EPROTO, "%s: memsize %zu cannot hold a ring header", who, memsize);
	uint32_t magic = __atomic_load_n(&r->magic, __ATOMIC_RELAXED);
	uint32_t version = __atomic_load_n(&r->version, __ATOMIC_RELAXED);
	uint64_t slots = __atomic_load_n(&r->slots, __ATOMIC_RELAXED);
	uint64_t mask = __atomic_load_n(&r->mask, __ATOMIC_RELAXED);
	uint32_t elem = __atomic_load_n(&r->elem_size, __ATOMIC_RELAXED);
	uint32_t stride = __atomic_load_n(&r->stride, __ATOMIC_RELAXED);
	if (magic != MPMC_MAGIC)
		return ferry__fail(-EPROTO, "%s: bad magic 0x%08x", who, magic);
	if (version != MPMC_VERSION)
		return ferry__fail(FERRY_EVERSION, "%s: layout version %u, this library speaks %u",
				   who, version, MPMC_VERSION);
	if (!slots_ok(slots) || mask != slots - 1)
		return ferry__fail(-EPROTO, "%s: slot count %llu / mask 0x%llx invalid", who,
				   (unsigned long long)slots, (unsigned long long)mask);
	if (elem != elem_size || stride != stride_of(elem))
		return ferry__fail(-EPROTO, "%s: element size %u (stride %u), expected %zu", who, elem,
				   stride, elem_size);
	if (slots > (memsize - FERRY_RING_MPMC_HDR_SIZE) / stride)
		return ferry__fail(-EPROTO, "%s: %llu slots of %u bytes do not fit in memsize %zu",
				   who, (unsigned long long)slots, stride, memsize);
	/* relaxed: a snapshot; head is read first, so a live ring never shows head > tail */
	uint64_t head = atomic_load_explicit(&r->head, memory_order_relaxed);
	uint64_t tail = atomic_load_explicit(&r->tail, memory_order_relaxed) & CNT_MASK;
	if ((int64_t)(tail - head) < 0)
		return ferry__fail(-EPROTO, "%s: head %llu past tail %llu", who,
				   (unsigned long long)head, (unsigned long long)tail);
	if (tail - head > 2 * slots)
		return ferry__fail(-EPROTO, "%s: head %llu and tail %llu are more than the ring apart",
				   who, (unsigned long long)head, (unsigned long long)tail);
	if (atomic_load_explicit(&r->flags, memory_order_relaxed) & CORRUPT)
		return ferry__fail(-EPROTO, "%s: ring was marked corrupt", who);
	struct geo g = { slots, mask, stride, elem };
	for (uint64_t i = 0; i < slots; i++) {
		uint64_t w = atomic_load_explicit(&slot_at(r, &g, i)->word, memory_order_relaxed);
		if (!word_ok(w, i, &g))
			return ferry__fail(-EPROTO, "%s: slot %llu holds a malformed word 0x%llx", who,
					   (unsigned long long)i, (unsigned long long)w);
	}
	*slots_out = slots;
	return 0;
}

FERRY_API int ferry_ring_mpmc_check(const ferry_ring_mpmc *r, size_t memsize, size_t elem_size)
{
	uint64_t slots;
	return check_impl(r, memsize, elem_size, &slots, "ferry_ring_mpmc_check");
}

FERRY_API size_t ferry_ring_mpmc_capacity(const ferry_ring_mpmc *r)
{
	if (!r)
		return 0;
	uint64_t slots = __atomic_load_n(&r->slots, __ATOMIC_RELAXED);
	return slots_ok(slots) ? (size_t)slots : 0;
}

FERRY_API size_t ferry_ring_mpmc_elem_size(const ferry_ring_mpmc *r)
{
	if (!r)
		return 0;
	uint32_t elem = __atomic_load_n(&r->elem_size, __ATOMIC_RELAXED);
	return elem <= FERRY_RING_MPMC_MAX_ELEM ? elem : 0;
}

/* ---- push ---- */

static inline void write_elem(struct slot *s, const void *src, size_t size)
{
	if (FERRY_UNLIKELY(ferry__ring_mpmc_hook)) {
		memcpy(s->data, src, size / 2);
		HOOK(3); /* half-written */
		memcpy(s->data + size / 2, (const char *)src + size / 2, size - size / 2);
		return;
	}
	memcpy(s->data, src, size);
}

static inline void read_elem(void *dst, const struct slot *s, size_t size)
{
	if (FERRY_UNLIKELY(ferry__ring_mpmc_hook)) {
		memcpy(dst, s->data, size / 2);
		HOOK(13); /* half-read */
		memcpy((char *)dst + size / 2, s->data + size / 2, size - size / 2);
		return;
	}
	memcpy(dst, s->data, size);
}

/*
 * Claim up to @n consecutive slots from the tail. Returns the count claimed
 * (>= 1) with *@first set, or -EAGAIN, -EPIPE, -EPROTO.
 */
/* After claiming position @t: claim up to @n - 1 more free slots right after it. */
static int push_more(struct ferry_ring_mpmc *r, const struct geo *g, size_t n, uint64_t t,
		     uint32_t pid, uint64_t *first)
{
	HOOK(1); /* claimed, tail not yet advanced */
	size_t k = 1;
	while (k < n) {
		struct slot *s2 = slot_at(r, g, t + k);
		/* acquire: as in claim_push */
		uint64_t w2 = atomic_load_explicit(&s2->word, memory_order_acquire);
		if (w2 != W(t + k, 0, ST_FREE) ||
		    !atomic_compare_exchange_strong_explicit(&s2->word, &w2, W(t + k, pid, ST_WRITING),
							     memory_order_acquire, memory_order_relaxed))
			break;
		k++;
	}
	*first = t;
	push_blocked = false;
	return (int)k;
}

static int claim_push(struct ferry_ring_mpmc *r, const struct geo *g, size_t n, uint64_t *first,
		      const char *who)
{
	uint32_t pid = me();
	/*
	 * Unless this thread last found a ring full, try the claim blind: the
	 * CAS fetches the line for writing in one step where a load and a CAS
	 * take two; when it fails it returns what is there, like the load.
	 */
	bool eager = !push_blocked;
	/* relaxed: the tail is where to look; the slot word says what is there */
	uint64_t t = atomic_load_explicit(&r->tail, memory_order_relaxed);
	for (unsigned tries = 0; tries < MAX_RETRIES; tries++) {
		if (FERRY_UNLIKELY(t & CLOSED_BIT))
			return -EPIPE;
		struct slot *s = slot_at(r, g, t);
		uint64_t w;
		if (eager) {
			eager = false;
			w = W(t, 0, ST_FREE);
			/*
			 * acquire on both outcomes: pairs with the consumer's release
			 * store of FREE in pop (its reads of the old element come
			 * before our writes) and with recover()'s release.
			 */
			if (atomic_compare_exchange_strong_explicit(&s->word, &w, W(t, pid, ST_WRITING),
								    memory_order_acquire,
								    memory_order_acquire))
				return push_more(r, g, n, t, pid, first);
		} else {
			/* acquire: as above */
			w = atomic_load_explicit(&s->word, memory_order_acquire);
		}
		if (FERRY_UNLIKELY(!word_ok(w, t & g->mask, g)))
			return corrupt(r, who, "malformed slot word");
		int64_t d = sdiff(w, t);
		if (d == 0 && wst(w) == ST_FREE) {
			/* acquire: as above, for the value the CAS saw */
			if (!atomic_compare_exchange_strong_explicit(&s->word, &w, W(t, pid, ST_WRITING),
								     memory_order_acquire,
								     memory_order_relaxed)) {
				t = atomic_load_explicit(&r->tail, memory_order_relaxed);
				continue;
			}
			return push_more(r, g, n, t, pid, first);
		}
		if (d == 0) {
			/* claimed by another producer: help the tail past it, look again */
			uint64_t exp = t;
			/* relaxed: the counter orders claims; data goes through slot words */
			atomic_compare_exchange_strong_explicit(&r->tail, &exp, t + 1,
								memory_order_relaxed,
								memory_order_relaxed);
			t = exp == t ? t + 1 : exp;
			continue;
		}
		if (d < 0) {
			/* The slot still holds an older lap: full, unless its owner died in it. */
			if ((wst(w) == ST_WRITING || wst(w) == ST_READING) && suspect(w)) {
				int rc = recover(r, s, w, g, who);
				if (rc)
					return rc;
				t = atomic_load_explicit(&r->tail, memory_order_relaxed);
				continue;
			}
			uint64_t t2 = atomic_load_explicit(&r->tail, memory_order_relaxed);
			if (t2 == t) {
				push_blocked = true;
				return -EAGAIN;
			}
			t = t2;
			continue;
		}
		/* d > 0: the slot moved on, so the tail must have too */
		uint64_t t2 = atomic_load_explicit(&r->tail, memory_order_relaxed);
		if (FERRY_UNLIKELY(t2 == t))
			return corrupt(r, who, "slot ahead of the tail");
		t = t2;
	}
	return -EAGAIN;
}

/*
 * Count the @k slots claimed from @first: move the tail to first + k.
 * Returns how many of them count (a close may have cut the batch), or -EPROTO.
 */
static int commit_push(struct ferry_ring_mpmc *r, uint64_t first, size_t k)
{
	uint64_t end = first + k;
	/* relaxed: the counter orders claims; data goes through slot words */
	uint64_t t = atomic_load_explicit(&r->tail, memory_order_relaxed);
	for (;;) {
		uint64_t c = t & CNT_MASK;
		if ((int64_t)(c - first) < 0)
			return -EPROTO;
		if ((int64_t)(c - end) >= 0)
			return (int)k; /* helpers moved it past us */
		if (t & CLOSED_BIT)
			return (int)(c - first); /* closed inside the batch */
		/* relaxed: the CAS is the commit point (ordered with close in the tail's order) */
		if (atomic_compare_exchange_weak_explicit(&r->tail, &t, end, memory_order_relaxed,
							  memory_order_relaxed))
			return (int)k;
	}
}

static int push_n(struct ferry_ring_mpmc *r, uint64_t want, const void *elems, size_t size, size_t n,
		  const char *who)
{
	if (FERRY_UNLIKELY(!r || (!elems && n)))
		return ferry__fail(-EINVAL, "%s: %s is NULL", who, r ? "elem" : "r");
	struct geo g;
	int rc = snapshot(r, want, size, &g, who);
	if (FERRY_UNLIKELY(rc))
		return rc;
	if (!n)
		return 0;
	if (n > g.slots)
		n = g.slots;
	uint64_t first = 0;
	int k = claim_push(r, &g, n, &first, who);
	if (k < 0)
		return k;
	int ok = commit_push(r, first, (size_t)k);
	if (FERRY_UNLIKELY(ok < 0)) {
		for (int i = 0; i < k; i++)
			atomic_store_explicit(&slot_at(r, &g, first + (uint64_t)i)->word,
					      W(first + (uint64_t)i, 0, ST_FREE), memory_order_relaxed);
		return corrupt(r, who, "tail moved behind a claimed slot");
	}
	HOOK(2); /* counted, nothing written */
	const unsigned char *src = elems;
	for (int i = 0; i < k; i++) {
		struct slot *s = slot_at(r, &g, first + (uint64_t)i);
		if (i < ok) {
			write_elem(s, src + (size_t)i * size, size);
			HOOK(4); /* written, not published */
			/* release: pairs with the consumer's acquire load of the word in pop */
			atomic_store_explicit(&s->word, W(first + (uint64_t)i, 0, ST_FULL),
					      memory_order_release);
			HOOK(5);
		} else {
			/*
			 * The close won the tail before these counted: give them back.
			 * release: pairs with the acquire load of whoever looks next.
			 */
			atomic_store_explicit(&s->word, W(first + (uint64_t)i, 0, ST_FREE),
					      memory_order_release);
		}
	}
	return ok ? ok : -EPIPE;
}

FERRY_API int ferry_ring_mpmc_push(ferry_ring_mpmc *r, const void *elem, size_t size)
{
	int rc = push_n(r, 0, elem, size, 1, "ferry_ring_mpmc_push");
	return rc > 0 ? 0 : rc;
}

FERRY_API int ferry_ring_mpmc_push_batch(ferry_ring_mpmc *r, const void *elems, size_t size,
					 size_t n)
{
	return push_n(r, 0, elems, size, n > INT_MAX ? INT_MAX : n, "ferry_ring_mpmc_push_batch");
}

/* ---- pop ---- */

/*
 * Claim up to @n (<= 64) consecutive full slots from the head. Returns the
 * count (>= 1) with *@first set and bit i of *@skips set when slot i holds a
 * dead producer's SKIP, or -EAGAIN, -EPIPE, -EPROTO.
 */
/* After claiming position @h (its word was @w): claim up to @n - 1 more full slots after it. */
static int pop_more(struct ferry_ring_mpmc *r, const struct geo *g, size_t n, uint64_t h,
		    uint64_t w, uint32_t pid, uint64_t *first, uint64_t *skips)
{
	HOOK(11); /* claimed, head not yet advanced */
	*skips = wpid(w) == SKIP_PID;
	size_t k = 1;
	while (k < n) {
		struct slot *s2 = slot_at(r, g, h + k);
		/* acquire: as in claim_pop */
		uint64_t w2 = atomic_load_explicit(&s2->word, memory_order_acquire);
		if (wst(w2) != ST_FULL || sdiff(w2, h + k) != 0 || !word_ok(w2, (h + k) & g->mask, g) ||
		    !atomic_compare_exchange_strong_explicit(&s2->word, &w2, W(h + k, pid, ST_READING),
							     memory_order_acquire, memory_order_relaxed))
			break;
		if (wpid(w2) == SKIP_PID)
			*skips |= 1ull << k;
		k++;
	}
	*first = h;
	pop_blocked = false;
	return (int)k;
}

static int claim_pop(struct ferry_ring_mpmc *r, const struct geo *g, size_t n, uint64_t *first,
		     uint64_t *skips, const char *who)
{
	uint32_t pid = me();
	bool eager = !pop_blocked; /* as in claim_push */
	/* relaxed: the head is where to look; the slot word says what is there */
	uint64_t h = atomic_load_explicit(&r->head, memory_order_relaxed);
	for (unsigned tries = 0; tries < MAX_RETRIES; tries++) {
		struct slot *s = slot_at(r, g, h);
		uint64_t w;
		if (eager) {
			eager = false;
			w = W(h, 0, ST_FULL);
			/* acquire on both outcomes: pairs with the producer's release store of FULL */
			if (atomic_compare_exchange_strong_explicit(&s->word, &w, W(h, pid, ST_READING),
								    memory_order_acquire,
								    memory_order_acquire))
				return pop_more(r, g, n, h, W(h, 0, ST_FULL), pid, first, skips);
		} else {
			/* acquire: pairs with the producer's release store of FULL in push */
			w = atomic_load_explicit(&s->word, memory_order_acquire);
		}
		if (FERRY_UNLIKELY(!word_ok(w, h & g->mask, g)))
			return corrupt(r, who, "malformed slot word");
		int64_t d = sdiff(w, h);
		if (d == 0) {
			switch (wst(w)) {
			case ST_FULL:
				/* acquire: as the load above, for the value the CAS saw */
				if (!atomic_compare_exchange_strong_explicit(
					    &s->word, &w, W(h, pid, ST_READING), memory_order_acquire,
					    memory_order_relaxed)) {
					h = atomic_load_explicit(&r->head, memory_order_relaxed);
					continue;
				}
				return pop_more(r, g, n, h, w, pid, first, skips);
			case ST_READING: {
				/* another consumer's: help the head past it */
				uint64_t exp = h;
				/* relaxed: the counter is a hint; data goes through slot words */
				atomic_compare_exchange_strong_explicit(&r->head, &exp, h + 1,
									memory_order_relaxed,
									memory_order_relaxed);
				h = exp == h ? h + 1 : exp;
				continue;
			}
			case ST_WRITING:
				if (suspect(w)) {
					int rc = recover(r, s, w, g, who);
					if (rc)
						return rc;
					continue;
				}
				pop_blocked = true;
				return -EAGAIN; /* a producer is filling it */
			default:
				break; /* FREE(h): nothing here yet; see below */
			}
		} else if (d > 0) {
			/* the slot moved on, so the head must have too */
			uint64_t h2 = atomic_load_explicit(&r->head, memory_order_relaxed);
			if (FERRY_UNLIKELY(h2 == h))
				return corrupt(r, who, "slot ahead of the head");
			h = h2;
			continue;
		}
		/*
		 * Empty at h (FREE(h), or an older lap still being read). Until a
		 * close, that is all a poll needs to know; the tail is read only
		 * now and then, to validate head against it. acquire: pairs with
		 * the release in close(), so the tail read below shows its bit.
		 */
		pop_blocked = true;
		if (!(atomic_load_explicit(&r->flags, memory_order_acquire) & CLOSED_HINT) &&
		    ++empty_polls % EMPTY_CHECK_EVERY)
			return -EAGAIN;
		/*
		 * relaxed: the acquire load of the word above keeps this load after
		 * it; the tail's modification order decides whether anything can
		 * still arrive at h.
		 */
		uint64_t t = atomic_load_explicit(&r->tail, memory_order_relaxed);
		int64_t ahead = (int64_t)((t & CNT_MASK) - h);
		if (ahead == 0)
			return (t & CLOSED_BIT) ? -EPIPE : -EAGAIN;
		if (FERRY_UNLIKELY(ahead < 0)) {
			/* head loaded before tail: a live ring never shows this */
			uint64_t h2 = atomic_load_explicit(&r->head, memory_order_relaxed);
			if (h2 == h)
				return corrupt(r, who, "head past tail");
			h = h2;
			continue;
		}
		if (FERRY_UNLIKELY((uint64_t)ahead > g->slots)) {
			/* a claim at h cannot be more than the ring behind the tail, unless h is stale */
			uint64_t h2 = atomic_load_explicit(&r->head, memory_order_relaxed);
			if (h2 == h && atomic_load_explicit(&s->word, memory_order_relaxed) == w)
				return corrupt(r, who, "tail more than the ring ahead of head");
			h = h2;
			continue;
		}
		/* a producer claimed h since we looked: it is being written */
		return -EAGAIN;
	}
	return -EAGAIN;
}

static int pop_n(struct ferry_ring_mpmc *r, uint64_t want, void *elems, size_t size, size_t n,
		 const char *who)
{
	if (FERRY_UNLIKELY(!r || (!elems && n)))
		return ferry__fail(-EINVAL, "%s: %s is NULL", who, r ? "elem" : "r");
	struct geo g;
	int rc = snapshot(r, want, size, &g, who);
	if (FERRY_UNLIKELY(rc))
		return rc;
	unsigned char *dst = elems;
	size_t got = 0;
	while (got < n) {
		uint64_t first = 0, skips = 0;
		size_t take = n - got < 64 ? n - got : 64;
		int k = claim_pop(r, &g, take, &first, &skips, who);
		if (k < 0)
			return got ? (int)got : k;
		head_pass(r, first + (uint64_t)k - 1);
		HOOK(12); /* head advanced, nothing read */
		for (int i = 0; i < k; i++) {
			uint64_t pos = first + (uint64_t)i;
			struct slot *s = slot_at(r, &g, pos);
			if (!(skips >> i & 1)) {
				read_elem(dst + got * size, s, size);
				got++;
			}
			HOOK(14); /* read, not freed */
			/*
			 * release: pairs with the producer's acquire load of the word
			 * in push: our reads of the element come before its reuse.
			 */
			atomic_store_explicit(&s->word, W(pos + g.slots, 0, ST_FREE), memory_order_release);
			HOOK(15);
		}
		if (n == 1 && got)
			break;
	}
	return (int)got;
}

FERRY_API int ferry_ring_mpmc_pop(ferry_ring_mpmc *r, void *elem, size_t size)
{
	int rc = pop_n(r, 0, elem, size, 1, "ferry_ring_mpmc_pop");
	return rc > 0 ? 0 : rc;
}

FERRY_API int ferry_ring_mpmc_pop_batch(ferry_ring_mpmc *r, void *elems, size_t size, size_t n)
{
	return pop_n(r, 0, elems, size, n > INT_MAX ? INT_MAX : n, "ferry_ring_mpmc_pop_batch");
}

/* ---- views: the same calls against a geometry this side trusts ---- */

FERRY_API int ferry_ring_mpmc_view_init(struct ferry_ring_mpmc_view *v, ferry_ring_mpmc *r,
					size_t memsize, size_t elem_size)
{
	if (!v)
		return ferry__fail(-EINVAL, "ferry_ring_mpmc_view_init: v is NULL");
	uint64_t slots = 0;
	int rc = check_impl(r, memsize, elem_size, &slots, "ferry_ring_mpmc_view_init");
	if (rc)
		return rc;
	v->ring = r;
	v->slots = (size_t)slots;
	v->elem_size = elem_size;
	return 0;
}

/* A view never set up is the caller's mistake: report it, and leave the ring alone. */
static int bad_view(const char *who)
{
	return ferry__fail(-EINVAL, "%s: v is NULL or not set up by ferry_ring_mpmc_view_init", who);
}
#define VIEW_OK(v) FERRY_LIKELY((v) && (v)->ring && (v)->slots)

/* The caller's size must be the pinned one too. */
static inline int view_size(const struct ferry_ring_mpmc_view *v, size_t size, const char *who)
{
	if (FERRY_LIKELY(size == v->elem_size))
		return 0;
	return ferry__fail(-EINVAL, "%s: size %zu, but the view holds %zu-byte elements", who, size,
			   v->elem_size);
}

FERRY_API int ferry_ring_mpmc_view_push(const struct ferry_ring_mpmc_view *v, const void *elem,
					size_t size)
{
	static const char who[] = "ferry_ring_mpmc_view_push";
	if (!VIEW_OK(v))
		return bad_view(who);
	int rc = view_size(v, size, who);
	if (!rc)
		rc = push_n(v->ring, v->slots, elem, size, 1, who);
	return rc > 0 ? 0 : rc;
}

FERRY_API int ferry_ring_mpmc_view_pop(const struct ferry_ring_mpmc_view *v, void *elem, size_t size)
{
	static const char who[] = "ferry_ring_mpmc_view_pop";
	if (!VIEW_OK(v))
		return bad_view(who);
	int rc = view_size(v, size, who);
	if (!rc)
		rc = pop_n(v->ring, v->slots, elem, size, 1, who);
	return rc > 0 ? 0 : rc;
}

FERRY_API int ferry_ring_mpmc_view_push_batch(const struct ferry_ring_mpmc_view *v,
					      const void *elems, size_t size, size_t n)
{
	static const char who[] = "ferry_ring_mpmc_view_push_batch";
	if (!VIEW_OK(v))
		return bad_view(who);
	int rc = view_size(v, size, who);
	return rc ? rc : push_n(v->ring, v->slots, elems, size, n > INT_MAX ? INT_MAX : n, who);
}

FERRY_API int ferry_ring_mpmc_view_pop_batch(const struct ferry_ring_mpmc_view *v, void *elems,
					     size_t size, size_t n)
{
	static const char who[] = "ferry_ring_mpmc_view_pop_batch";
	if (!VIEW_OK(v))
		return bad_view(who);
	int rc = view_size(v, size, who);
	return rc ? rc : pop_n(v->ring, v->slots, elems, size, n > INT_MAX ? INT_MAX : n, who);
}

/* ---- close, stats ---- */

FERRY_API void ferry_ring_mpmc_close(ferry_ring_mpmc *r)
{
	if (!r)
		return;
	/*
	 * relaxed: what matters is the place of this OR in the tail's
	 * modification order, before or after each producer's commit CAS;
	 * record data is ordered by the slot words.
	 */
	atomic_fetch_or_explicit(&r->tail, CLOSED_BIT, memory_order_relaxed);
	/* release: pairs with the acquire load of flags in claim_pop (the bit above first) */
	atomic_fetch_or_explicit(&r->flags, CLOSED_HINT, memory_order_release);
}

FERRY_API int ferry_ring_mpmc_is_closed(const ferry_ring_mpmc *r)
{
	if (!r)
		return 1;
	/* relaxed: a snapshot answer */
	return (atomic_load_explicit(&r->tail, memory_order_relaxed) & CLOSED_BIT) != 0;
}

FERRY_API size_t ferry_ring_mpmc_used(const ferry_ring_mpmc *r)
{
	if (!r)
		return 0;
	/* relaxed: a statistic; head first so that a live ring never shows a negative count */
	uint64_t h = atomic_load_explicit(&r->head, memory_order_relaxed);
	uint64_t t = atomic_load_explicit(&r->tail, memory_order_relaxed) & CNT_MASK;
	uint64_t slots = __atomic_load_n(&r->slots, __ATOMIC_RELAXED);
	int64_t d = (int64_t)(t - h);
	if (d < 0)
		return 0;
	return (uint64_t)d > slots ? (size_t)slots : (size_t)d;
}

FERRY_API uint64_t ferry_ring_mpmc_recovered(const ferry_ring_mpmc *r)
{
	/* relaxed: a statistic */
	return r ? atomic_load_explicit(&r->recovered, memory_order_relaxed) : 0;
}
