/*
 * runtime/pool_int.h - internal: the pool's shared layout, between the
 * parent side (pool.c) and the worker side (pool_worker.c).
 *
 * One shared buffer (FERRY_BUF_SHARED: a sealed memfd) holds everything the
 * parent and its workers both touch; it lives at a different address in
 * each process, so it holds offsets and indices, never pointers:
 *
 *   pool_hdr     geometry, the manager's eventcount and kick counter, the
 *                done and space eventcounts, the shutdown word
 *   pool_queue   the task queue: head, tail, not_empty, then ncells words
 *   completion   a ferry MPMC ring of {slot, gen}: tasks whose settling
 *                needs the manager (callback, abandoned, orphaned)
 *   seats        one per worker place: retire flag, idle and running counts
 *   slots        one per task in flight: state word, eventcount, abort word,
 *                outcome, timestamps, message
 *   areas        inline_bytes per slot: the task's value, then its result
 *
 * ---- The slot word ----
 *
 *   bits 0-2 state, 3-10 flags, 16-31 owner seat, 32-63 generation
 *
 *   FREE(g) -submit-> QUEUED(g) -worker-> RUNNING(g, seat) -worker-> DONE(g)
 *   -collector-> COLLECTING(g) -collector-> FREE(g + 1)
 *
 * Each transition is one CAS on the word, so exactly one party makes it:
 * one worker starts a task, one collector settles it. Flags ride along:
 * NOTIFY (a callback: the manager must hear of DONE), ABANDON (the handle
 * was freed: same), ORPHAN (the handle already settled by cancel or timeout
 * while running: the result is dropped), CANCELLED (removed while queued),
 * DESTROY (removed by ferry_pool_destroy). A DONE word keeps its owner so
 * that the crash sweep can find the dead worker's finished tasks.
 *
 * ---- The queue: claims that name their owner ----
 *
 * A bounded MPMC queue of slot indices whose cells are single 64-bit words:
 *
 *   bits 32-63 position, 30-31 state (EMPTY, FULL, TAKEN), 20-29 owner seat,
 *   0-19 slot
 *
 * A producer claims the cell at tail with one CAS EMPTY(t) -> FULL(t, slot),
 * then advances tail (anyone who finds the cell at tail already filled helps
 * advance it). A consumer claims the cell at head with one CAS FULL(h, slot)
 * -> TAKEN(h, seat, slot), advances head (helped likewise), marks the slot
 * RUNNING, and only then releases the cell (EMPTY(h + ncells)). So at every
 * instant the queue word or the slot word says who holds the task: a worker
 * that dies between its claim and its release leaves TAKEN(seat, slot) in
 * the cell, and the crash sweep puts the task back in the queue when the
 * slot is still QUEUED (it never started) or fails it when it is RUNNING.
 * (The ferry MPMC ring cannot be used here: it drops an element whose reader
 * died mid-pop, and nobody learns which task that was.)
 */
#ifndef FERRY_POOL_INT_H
#define FERRY_POOL_INT_H

#include "ferry/atomic.h"
#include "ferry/pool.h"
#include "ferry/ring.h"
#include "ferry/worker.h"

#include <stdalign.h>
#include <stdatomic.h>
#include <stdint.h>

#define POOL_MAGIC 0x6c6f6f702d797266ull /* "fry-pool" */
#define POOL_VERSION 1u
#define POOL_WCFG_MAGIC 0x676663772d797266ull /* "fry-wcfg" */

#define POOL_TEXT 192
#define POOL_SPIN_TOKENS 8 /* a task's error message, bytes with the NUL */

/* ---- slot word ---- */
enum {
	S_FREE = 0,
	S_QUEUED = 1,
	S_RUNNING = 2,
	S_DONE = 3,
	S_COLLECTING = 4,
};
#define SW_STATE_MASK 0x7ull
#define SW_F_NOTIFY (1ull << 3)
#define SW_F_ABANDON (1ull << 4)
#define SW_F_ORPHAN (1ull << 5)
#define SW_F_CANCELLED (1ull << 6)
#define SW_F_DESTROY (1ull << 7)
#define SW_F_MGR (SW_F_NOTIFY | SW_F_ABANDON | SW_F_ORPHAN)
#define SW_OWNER_SHIFT 16
#define SW_OWNER_MASK (0xffffull << SW_OWNER_SHIFT)

static inline unsigned sw_state(uint64_t w) { return (unsigned)(w & SW_STATE_MASK); }
static inline uint32_t sw_gen(uint64_t w) { return (uint32_t)(w >> 32); }
static inline unsigned sw_owner(uint64_t w) { return (unsigned)((w & SW_OWNER_MASK) >> SW_OWNER_SHIFT); }
static inline uint64_t sw_make(uint32_t gen, uint64_t flags, unsigned owner, unsigned state)
{
	return (uint64_t)gen << 32 | ((uint64_t)owner << SW_OWNER_SHIFT) | flags | state;
}
static inline uint64_t sw_flags(uint64_t w) { return w & 0xff8ull; }

/* ---- queue cell word ---- */
enum { C_EMPTY = 0, C_FULL = 1, C_TAKEN = 2 };
#define CW_SLOT_MASK 0xfffffu
#define CW_OWNER_SHIFT 20
#define CW_OWNER_MASK 0x3ffu
#define CW_STATE_SHIFT 30

static inline uint32_t cw_pos(uint64_t w) { return (uint32_t)(w >> 32); }
static inline unsigned cw_state(uint64_t w) { return (unsigned)((w >> CW_STATE_SHIFT) & 3u); }
static inline unsigned cw_owner(uint64_t w) { return (unsigned)((w >> CW_OWNER_SHIFT) & CW_OWNER_MASK); }
static inline uint32_t cw_slot(uint64_t w) { return (uint32_t)(w & CW_SLOT_MASK); }
static inline uint64_t cw_make(uint32_t pos, unsigned state, unsigned owner, uint32_t slot)
{
	return (uint64_t)pos << 32 | (uint64_t)state << CW_STATE_SHIFT |
	       (uint64_t)(owner & CW_OWNER_MASK) << CW_OWNER_SHIFT | (slot & CW_SLOT_MASK);
}

/* Slot and seat bounds the encodings allow. */
#define POOL_MAX_SLOTS (CW_SLOT_MASK + 1u)
_Static_assert(FERRY_POOL_MAX_WORKERS <= CW_OWNER_MASK, "seat fits a cell word");

/* ---- shared structures ---- */

struct pool_hdr {
	uint64_t magic;
	uint32_t version;
	uint32_t inline_bytes;
	uint64_t total;     /* bytes of the whole layout */
	uint32_t nslots, ncells, nseats, ncomp;
	uint64_t queue_off, comp_off, comp_size, seats_off, slots_off, areas_off;
	alignas(64) struct ferry_ec mgr_ec; /* the manager sleeps here */
	_Atomic uint32_t mgr_kick;          /* bumped before every mgr_ec notify */
	_Atomic uint32_t want_drain;        /* someone waits for the queue to empty */
	alignas(64) struct ferry_ec done_ec;  /* a task reached DONE or settled */
	alignas(64) struct ferry_ec space_ec; /* a queued task was taken */
	alignas(64) _Atomic uint32_t shutdown; /* every worker stops */
	/* Spinner tokens: an idle runner spins only while it holds one (seat + 1
	 * in the word), so idle spinners never outnumber the spare cores; a
	 * submitter that sees a token held skips the wake-up. A token names its
	 * holder, so the crash sweep can take back a dead worker's. */
	alignas(64) _Atomic uint32_t spin_tok[POOL_SPIN_TOKENS];
	uint32_t nspin_tok; /* immutable: tokens in use, 1..POOL_SPIN_TOKENS */
};

struct pool_queue {
	alignas(64) _Atomic uint64_t tail;
	alignas(64) _Atomic uint64_t head;
	alignas(64) struct ferry_ec not_empty;
	alignas(64) _Atomic uint64_t cells[];
};

struct pool_seat {
	alignas(64) _Atomic uint32_t retire;  /* the manager asks the worker to end */
	_Atomic uint32_t idle;                /* runners waiting for a task */
	_Atomic uint32_t running;             /* tasks running now */
	_Atomic int64_t last_active;          /* when a task last ended (or the start) */
};

struct pool_slot {
	_Atomic uint64_t word;
	struct ferry_ec ec;        /* waiters of this task */
	uint32_t abort;            /* the task's abort word (futex; __atomic access) */
	int32_t err;               /* outcome, written before DONE */
	uint32_t arg_kind, arg_len;
	uint32_t res_kind, res_len;
	_Atomic uint32_t worker_no;
	uint32_t pad;
	_Atomic int64_t t_submit, t_start, t_end;
	_Atomic int64_t timeout_ns; /* run-time limit (0: none) */
	char text[POOL_TEXT];
};

enum { V_NONE = 0, V_INLINE = 1, V_OOL = 2 };

/* A completion record. */
struct pool_comp {
	uint32_t slot, gen;
};

/* A worker's raw request on its port. */
#define POOL_REQ_FETCH 0x68637466u /* "ftch" */
#define POOL_REP_NONE 0x656e6f6eu  /* "none": the value is gone */
struct pool_req {
	uint32_t kind, slot, gen, seat;
};

/* What a worker is told at spawn (its data, followed by the pool's data). */
struct pool_wcfg {
	uint64_t magic;
	ferry_pool_fn fn;
	struct ferry_buf *shared; /* thread backend: its own handle of the parent's buffer */
	uint32_t seat, worker_no, concurrency, backend;
	int64_t spin_ns;
	uint64_t stack_size; /* of the helper runner threads; 0 = default */
	uint64_t data_len;
};

/* Geometry resolved from a header (validated). */
struct pool_geo {
	unsigned char *base;
	struct pool_hdr *hdr;
	struct pool_queue *q;
	ferry_ring_mpmc *comp;
	struct pool_seat *seats;
	struct pool_slot *slots;
	unsigned char *areas;
	uint32_t nslots, ncells, nseats, inline_bytes;
};

/* Lay out a validated geometry from @base of @len bytes: 0 or -EPROTO. */
int ferry__pool_geo(struct pool_geo *g, void *base, size_t len);

/* Queue operations (pool_queue.c). */
/* Producer: -EAGAIN when the queue is full (never, with the pool's sizing). */
int ferry__pool_q_push(const struct pool_geo *g, uint32_t slot);
/* Consumer: claim the oldest; *slot and *pos tell what to release. -EAGAIN: empty. */
int ferry__pool_q_pop(const struct pool_geo *g, unsigned seat, uint32_t *slot, uint64_t *pos);
/* Consumer: release the claimed cell at @pos. */
void ferry__pool_q_release(const struct pool_geo *g, uint64_t pos);
static inline uint64_t ferry__pool_q_len(const struct pool_geo *g)
{
	/* acquire: pairs with the CAS that advanced each index. */
	uint64_t h = atomic_load_explicit(&g->q->head, memory_order_acquire);
	uint64_t t = atomic_load_explicit(&g->q->tail, memory_order_acquire);
	return t > h ? t - h : 0;
}

/* The worker entry (pool_worker.c). */
int ferry__pool_worker_main(ferry_worker_ctx *wctx);

static inline void *pool_area(const struct pool_geo *g, uint32_t slot)
{
	return g->areas + (size_t)slot * g->inline_bytes;
}

/* Is any idle runner spinning? (seq_cst: pairs with the runner's release
 * of its token before it re-checks the queue and sleeps.) */
static inline int pool_spinning(struct pool_hdr *h)
{
	uint32_t n = h->nspin_tok;
	if (n > POOL_SPIN_TOKENS)
		n = POOL_SPIN_TOKENS;
	for (uint32_t i = 0; i < n; i++)
		if (atomic_load_explicit(&h->spin_tok[i], memory_order_seq_cst))
			return 1;
	return 0;
}

/* Tell the manager there is something for it. */
static inline void pool_kick(struct pool_hdr *h)
{
	/* release: what the caller published before is seen by the manager,
	 * which loads mgr_kick (acquire) before and after its pass. */
	atomic_fetch_add_explicit(&h->mgr_kick, 1, memory_order_release);
	ferry_ec_notify(&h->mgr_ec);
}

#endif
