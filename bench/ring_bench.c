/*
 * Ring rows (group order 400-499, plus ping-pong rows in the round-trip
 * group): throughput of ferry's SPSC and MPMC rings with 64-byte elements at
 * 1P1C and 2P2C, batches of 1, 16 and 64, threads and processes, next to
 * Concurrency Kit's ck_ring on the same 64-byte slots in the same run; and a
 * ring-only ping-pong (64 B there, 64 B back through a second ring) next to
 * the bare atomic spin ping-pong.
 *
 * A throughput sample is one round: the producers push ROUND elements between
 * them, the consumers (main among them) pop them all; the sample is
 * ROUND / the round's time. Waiting sides spin (pause), and yield when more
 * sides than CPUs share the machine.
 *
 * ferry's SPSC rows go through ring views (ferry_ring_spsc_view_*), each side
 * with its own in its private memory, as ports use the ring: the plain calls
 * keep each side's state in the shared header (for peers that trust each
 * other), which costs an extra cache-line transfer per record.
 */
#include "bench.h"

#include "ferry/ring.h"

#include <stdalign.h>
#include <stdbool.h>
#include <stdio.h>
#include <string.h>

#ifdef FERRY_HAVE_CK
#include <ck_ring.h>
#endif

#define ELEM 64
#define ROUND 4096u                   /* elements per throughput sample */
#define SPSC_CAP (64u * 1024)         /* bytes: 910 records of 64 B (+8 B header each) */
#define MPMC_SLOTS 1024u              /* ck_ring holds 1023 in 1024 slots */
#define TP_GROUP "ring throughput, 64 B elements"
#define RT_GROUP "round trip, 64 B"

struct e64 {
	unsigned char b[ELEM];
};

#ifdef FERRY_HAVE_CK
CK_RING_PROTOTYPE(e64, e64)
#endif

enum kind { FERRY_SPSC, FERRY_MPMC, CK_SPSC, CK_MPMC };

struct param {
	enum kind kind;
	int nprod, ncons;
	unsigned batch;
	enum bench_backend backend;
};

/* Shared by every side: control words on their own lines, then the ring. */
struct tp {
	alignas(64) _Atomic uint64_t go;   /* main: the round to run */
	alignas(64) _Atomic uint32_t stop; /* main: leave */
	alignas(64) struct {
		alignas(64) _Atomic uint64_t n; /* elements this consumer took */
	} taken[4];
	const struct param *p;
	size_t ring_off, ring_size;
#ifdef FERRY_HAVE_CK
	alignas(64) struct ck_ring ck;
#endif
};

struct side {
	struct tp *tp;
	int idx; /* producer index, or consumer index (main is consumer 0) */
};

static bool crowded(const struct param *p)
{
	return p->nprod + p->ncons > 2;
}

static void *ring_of(struct tp *tp)
{
	return (char *)tp + tp->ring_off;
}

/* Wait a little; returns -ETIMEDOUT once the peer timeout passed. */
static inline int idle(struct bench_spin *sp, bool crowd, unsigned *n)
{
	if (crowd && (++*n & 15) == 0)
		sched_yield();
	return bench_spin(sp);
}

/* ---- one push / one pop of up to @batch elements, per ring kind ---- */

/* This side's SPSC view of the ring (set up after the ring's init). */
static int view_of(struct tp *tp, struct ferry_ring_spsc_view *v)
{
	if (tp->p->kind != FERRY_SPSC)
		return 0;
	return ferry_ring_spsc_view_init(v, ring_of(tp), tp->ring_size);
}

static int push_some(struct tp *tp, struct ferry_ring_spsc_view *v, const struct e64 *src,
		     unsigned batch)
{
	void *r = ring_of(tp);
	switch (tp->p->kind) {
	case FERRY_SPSC:
		if (batch == 1) {
			void *w;
			int rc = ferry_ring_spsc_view_reserve(v, ELEM, &w);
			if (rc)
				return rc;
			memcpy(w, src, ELEM);
			rc = ferry_ring_spsc_view_commit(v, ELEM);
			return rc ? rc : 1;
		} else {
			struct ferry_ring_rec recs[64];
			for (unsigned i = 0; i < batch; i++)
				recs[i] = (struct ferry_ring_rec){ &src[i], ELEM };
			return ferry_ring_spsc_view_push_batch(v, recs, batch);
		}
	case FERRY_MPMC:
		if (batch == 1) {
			int rc = ferry_ring_mpmc_push(r, src, ELEM);
			return rc ? rc : 1;
		}
		return ferry_ring_mpmc_push_batch(r, src, ELEM, batch);
#ifdef FERRY_HAVE_CK
	case CK_SPSC:
		return ck_ring_enqueue_spsc_e64(&tp->ck, r, (struct e64 *)src) ? 1 : -EAGAIN;
	case CK_MPMC:
		return ck_ring_enqueue_mpmc_e64(&tp->ck, r, (struct e64 *)src) ? 1 : -EAGAIN;
#endif
	default:
		return -ENOSYS;
	}
}

static int pop_some(struct tp *tp, struct ferry_ring_spsc_view *v, struct e64 *dst,
		    unsigned batch)
{
	void *r = ring_of(tp);
	switch (tp->p->kind) {
	case FERRY_SPSC: {
		if (batch == 1) {
			const void *q;
			size_t len;
			int rc = ferry_ring_spsc_view_peek(v, &q, &len);
			if (rc)
				return rc;
			memcpy(dst, q, ELEM);
			ferry_ring_spsc_view_release(v);
			return 1;
		}
		struct ferry_ring_rec recs[64];
		int k = ferry_ring_spsc_view_peek_batch(v, recs, batch);
		for (int i = 0; i < k; i++)
			memcpy(&dst[i], recs[i].p, ELEM);
		if (k > 0)
			ferry_ring_spsc_view_release(v);
		return k;
	}
	case FERRY_MPMC:
		if (batch == 1) {
			int rc = ferry_ring_mpmc_pop(r, dst, ELEM);
			return rc ? rc : 1;
		}
		return ferry_ring_mpmc_pop_batch(r, dst, ELEM, batch);
#ifdef FERRY_HAVE_CK
	case CK_SPSC:
		return ck_ring_dequeue_spsc_e64(&tp->ck, r, dst) ? 1 : -EAGAIN;
	case CK_MPMC:
		return ck_ring_dequeue_mpmc_e64(&tp->ck, r, dst) ? 1 : -EAGAIN;
#endif
	default:
		return -ENOSYS;
	}
}

/* ---- throughput ---- */

static int tp_producer(struct bench_ctx *ctx, void *arg)
{
	struct side *sd = arg;
	struct tp *tp = sd->tp;
	const struct param *p = tp->p;
	if (crowded(p))
		bench_pin(ctx, BENCH_ANY);
	struct e64 src[64];
	memset(src, sd->idx + 1, sizeof src);
	struct ferry_ring_spsc_view v;
	int vr = view_of(tp, &v);
	if (vr)
		return vr;
	uint64_t done = 0;
	unsigned share = ROUND / (unsigned)p->nprod;
	for (;;) {
		struct bench_spin sp = bench_spin_start(ctx);
		unsigned n = 0;
		/* acquire: pairs with main's release store of go (and of stop) */
		while (atomic_load_explicit(&tp->go, memory_order_acquire) == done) {
			if (atomic_load_explicit(&tp->stop, memory_order_relaxed))
				return 0;
			if (idle(&sp, crowded(p), &n))
				return -ETIMEDOUT;
		}
		done++;
		for (unsigned left = share; left;) {
			unsigned b = p->batch < left ? p->batch : left;
			int k = push_some(tp, &v, src, b);
			if (k == -EAGAIN) {
				sp = bench_spin_start(ctx);
				do {
					if (idle(&sp, crowded(p), &n))
						return -ETIMEDOUT;
				} while ((k = push_some(tp, &v, src, b)) == -EAGAIN);
			}
			if (k < 0)
				return k;
			left -= (unsigned)k;
		}
	}
}

static int tp_consumer(struct bench_ctx *ctx, void *arg)
{
	struct side *sd = arg;
	struct tp *tp = sd->tp;
	const struct param *p = tp->p;
	if (crowded(p))
		bench_pin(ctx, BENCH_ANY);
	struct e64 dst[64];
	struct ferry_ring_spsc_view v;
	int vr = view_of(tp, &v);
	if (vr)
		return vr;
	uint64_t mine = 0;
	struct bench_spin sp = bench_spin_start(ctx);
	unsigned n = 0;
	bool idling = false;
	for (;;) {
		int k = pop_some(tp, &v, dst, p->batch);
		if (k > 0) {
			mine += (unsigned)k;
			/* release: main sums these after the round; nothing is read through them */
			atomic_store_explicit(&tp->taken[sd->idx].n, mine, memory_order_release);
			idling = false;
			continue;
		}
		if (!idling) {
			sp = bench_spin_start(ctx);
			idling = true;
		}
		if (k != -EAGAIN)
			return k;
		if (atomic_load_explicit(&tp->stop, memory_order_relaxed))
			return 0;
		if (idle(&sp, crowded(p), &n))
			return -ETIMEDOUT;
	}
}

static size_t ring_bytes(const struct param *p)
{
	switch (p->kind) {
	case FERRY_SPSC:
		return ferry_ring_spsc_memsize(SPSC_CAP);
	case FERRY_MPMC:
		return ferry_ring_mpmc_memsize(MPMC_SLOTS, ELEM);
	default:
		return MPMC_SLOTS * sizeof(struct e64);
	}
}

static int run_tp(struct bench_ctx *ctx, const struct bench_scenario *s, struct bench_samples *out)
{
	const struct param *p = s->arg;
#ifndef FERRY_HAVE_CK
	if (p->kind == CK_SPSC || p->kind == CK_MPMC)
		return bench_failx(ctx, -ENOSYS, "skipped: built without Concurrency Kit (libck-dev)");
#endif
	size_t n = bench_count(ctx, BENCH_CHEAP) / ROUND + 1;
	size_t warm = bench_warmup_count(ctx, BENCH_CHEAP) / ROUND + 1;
	if (bench_samples_reserve(out, n))
		return bench_fail(ctx, -ENOMEM, "samples");
	size_t off = (sizeof(struct tp) + 4095) & ~(size_t)4095;
	size_t total = off + ring_bytes(p);
	struct tp *tp = bench_shared_alloc(total);
	if (!tp)
		return bench_fail(ctx, -errno, "mmap %zu bytes", total);
	tp->p = p;
	tp->ring_off = off;
	tp->ring_size = total - off;
	int r = 0;
	switch (p->kind) {
	case FERRY_SPSC:
		r = ferry_ring_spsc_init(ring_of(tp), tp->ring_size);
		break;
	case FERRY_MPMC:
		r = ferry_ring_mpmc_init(ring_of(tp), tp->ring_size, ELEM);
		break;
	default:
#ifdef FERRY_HAVE_CK
		ck_ring_init(&tp->ck, MPMC_SLOTS);
#endif
		break;
	}
	struct ferry_ring_spsc_view v;
	if (r == 0)
		r = view_of(tp, &v);
	if (r) {
		bench_shared_free(tp, total);
		return bench_failx(ctx, r, "ring init: %s", ferry_errmsg());
	}
	struct side sides[8];
	struct bench_peer peers[8];
	int np = 0;
	for (int i = 0; i < p->nprod && r == 0; i++, np++) {
		sides[np] = (struct side){ tp, i };
		r = bench_peer_start(ctx, &peers[np], p->backend, tp_producer, &sides[np]);
	}
	for (int i = 1; i < p->ncons && r == 0; i++, np++) {
		sides[np] = (struct side){ tp, i };
		r = bench_peer_start(ctx, &peers[np], p->backend, tp_consumer, &sides[np]);
	}
	if (r)
		np--; /* the failed start */
	if (crowded(p))
		bench_pin(ctx, BENCH_ANY);
	struct e64 dst[64];
	uint64_t taken = 0, round = 0; /* main's own count; rounds run */
	size_t wi = 0, mi = 0;
	while (r == 0) {
		bool warming = wi < warm && !bench_warm_stop(ctx, wi);
		if (!warming && (mi >= n || bench_stop(ctx, mi)))
			break;
		uint64_t want = ++round * ROUND, sum;
		uint64_t t0 = bench_now();
		/* release: pairs with the producers' acquire load of go */
		atomic_store_explicit(&tp->go, round, memory_order_release);
		struct bench_spin sp = bench_spin_start(ctx);
		unsigned idl = 0;
		for (;;) {
			int k = pop_some(tp, &v, dst, p->batch);
			if (k > 0) {
				taken += (unsigned)k; /* the peer timeout bounds the whole round */
			} else if (k != -EAGAIN) {
				r = bench_failx(ctx, k, "pop: %s", ferry_strerror(k));
				break;
			}
			sum = taken;
			for (int c = 1; c < p->ncons; c++)
				/* acquire: pairs with the consumers' release stores */
				sum += atomic_load_explicit(&tp->taken[c].n, memory_order_acquire);
			if (sum >= want)
				break;
			if (k == -EAGAIN && idle(&sp, crowded(p), &idl)) {
				r = bench_failx(ctx, -ETIMEDOUT, "round %llu stalled at %llu of %llu",
						(unsigned long long)round, (unsigned long long)sum,
						(unsigned long long)want);
				break;
			}
		}
		uint64_t t1 = bench_now();
		if (warming)
			wi++;
		else if (r == 0)
			bench_samples_add(out, ROUND / (bench_ns(t1 - t0) * 1e-9)), mi++;
	}
	atomic_store_explicit(&tp->stop, 1, memory_order_release);
	bool leak = false;
	for (int i = 0; i < np; i++) {
		int jr = bench_peer_join(ctx, &peers[i]);
		if (jr && !r)
			r = jr;
		if (jr == -ETIMEDOUT && p->backend == BENCH_THREAD)
			leak = true;
	}
	if (crowded(p))
		bench_pin(ctx, BENCH_MAIN);
	if (!leak)
		bench_shared_free(tp, total);
	return r;
}

/* ---- ring-only ping-pong: 64 B through one ring, back through another ---- */

struct pp {
	alignas(64) _Atomic uint32_t stop;
	const struct param *p;
	size_t ring_size;
	size_t off[2]; /* main -> peer, peer -> main */
};

/* One direction of the ping-pong: the ring, and this side's SPSC view of it. */
struct pp_end {
	void *r;
	struct ferry_ring_spsc_view v;
};

static int pp_open(const struct param *p, struct pp_end *e, void *r, size_t size)
{
	e->r = r;
	return p->kind == FERRY_SPSC ? ferry_ring_spsc_view_init(&e->v, r, size) : 0;
}

static int pp_send(const struct param *p, struct pp_end *e, const struct e64 *m)
{
	if (p->kind == FERRY_SPSC) {
		void *w;
		int rc = ferry_ring_spsc_view_reserve(&e->v, ELEM, &w);
		if (rc)
			return rc;
		memcpy(w, m, ELEM);
		return ferry_ring_spsc_view_commit(&e->v, ELEM);
	}
	return ferry_ring_mpmc_push(e->r, m, ELEM);
}

static int pp_recv(const struct param *p, struct pp_end *e, struct e64 *m)
{
	if (p->kind == FERRY_SPSC) {
		const void *q;
		size_t len;
		int rc = ferry_ring_spsc_view_peek(&e->v, &q, &len);
		if (rc)
			return rc;
		memcpy(m, q, ELEM);
		ferry_ring_spsc_view_release(&e->v);
		return 0;
	}
	return ferry_ring_mpmc_pop(e->r, m, ELEM);
}

static int pp_peer(struct bench_ctx *ctx, void *arg)
{
	struct pp *pp = arg;
	struct pp_end in, out;
	int r = pp_open(pp->p, &in, (char *)pp + pp->off[0], pp->ring_size);
	if (r == 0)
		r = pp_open(pp->p, &out, (char *)pp + pp->off[1], pp->ring_size);
	if (r)
		return r;
	struct e64 m;
	for (;;) {
		struct bench_spin sp = bench_spin_start(ctx);
		int rc;
		while ((rc = pp_recv(pp->p, &in, &m)) == -EAGAIN) {
			if (atomic_load_explicit(&pp->stop, memory_order_relaxed))
				return 0;
			if (bench_spin(&sp))
				return -ETIMEDOUT;
		}
		if (rc)
			return rc == -EPIPE ? 0 : rc;
		while ((rc = pp_send(pp->p, &out, &m)) == -EAGAIN)
			if (bench_spin(&sp))
				return -ETIMEDOUT;
		if (rc)
			return rc;
	}
}

static int run_pp(struct bench_ctx *ctx, const struct bench_scenario *s, struct bench_samples *out)
{
	const struct param *p = s->arg;
	size_t n = bench_count(ctx, BENCH_CHEAP), warm = bench_warmup_count(ctx, BENCH_CHEAP);
	if (bench_samples_reserve(out, n))
		return bench_fail(ctx, -ENOMEM, "samples");
	size_t rs = p->kind == FERRY_SPSC ? ferry_ring_spsc_memsize(4096)
					  : ferry_ring_mpmc_memsize(64, ELEM);
	rs = (rs + 4095) & ~(size_t)4095;
	size_t total = 4096 + 2 * rs;
	struct pp *pp = bench_shared_alloc(total);
	if (!pp)
		return bench_fail(ctx, -errno, "mmap %zu bytes", total);
	pp->p = p;
	pp->ring_size = rs;
	pp->off[0] = 4096;
	pp->off[1] = 4096 + rs;
	struct pp_end to, from;
	int r = 0;
	for (int i = 0; i < 2 && r == 0; i++)
		r = p->kind == FERRY_SPSC ? ferry_ring_spsc_init((void *)((char *)pp + pp->off[i]), rs)
					  : ferry_ring_mpmc_init((void *)((char *)pp + pp->off[i]), rs,
								 ELEM);
	if (r == 0)
		r = pp_open(p, &to, (char *)pp + pp->off[0], rs);
	if (r == 0)
		r = pp_open(p, &from, (char *)pp + pp->off[1], rs);
	if (r) {
		bench_shared_free(pp, total);
		return bench_failx(ctx, r, "ring init: %s", ferry_errmsg());
	}
	struct bench_peer peer;
	r = bench_peer_start(ctx, &peer, p->backend, pp_peer, pp);
	if (r) {
		bench_shared_free(pp, total);
		return r;
	}
	struct e64 m, back;
	memset(&m, 7, sizeof m);
	size_t wi = 0, mi = 0;
	while (r == 0) {
		bool warming = wi < warm && !bench_warm_stop(ctx, wi);
		if (!warming && (mi >= n || bench_stop(ctx, mi)))
			break;
		uint64_t t0 = bench_now();
		struct bench_spin sp = bench_spin_start(ctx);
		int rc;
		while ((rc = pp_send(p, &to, &m)) == -EAGAIN)
			if (bench_spin(&sp)) {
				rc = -ETIMEDOUT;
				break;
			}
		if (rc == 0)
			while ((rc = pp_recv(p, &from, &back)) == -EAGAIN)
				if (bench_spin(&sp)) {
					rc = -ETIMEDOUT;
					break;
				}
		uint64_t t1 = bench_now();
		if (rc) {
			r = bench_failx(ctx, rc, "round trip: %s", ferry_strerror(rc));
			break;
		}
		if (warming)
			wi++;
		else
			bench_samples_add(out, bench_ns(t1 - t0)), mi++;
	}
	atomic_store_explicit(&pp->stop, 1, memory_order_relaxed);
	int jr = bench_peer_join(ctx, &peer);
	if (jr != -ETIMEDOUT || p->backend == BENCH_PROCESS)
		bench_shared_free(pp, total);
	return r ? r : jr;
}

/* ---- the rows ---- */

#define T BENCH_THREAD
#define P BENCH_PROCESS
static const struct param
	ck_spsc_t = { CK_SPSC, 1, 1, 1, T }, ck_spsc_p = { CK_SPSC, 1, 1, 1, P },
	fs1_t = { FERRY_SPSC, 1, 1, 1, T }, fs16_t = { FERRY_SPSC, 1, 1, 16, T },
	fs64_t = { FERRY_SPSC, 1, 1, 64, T }, fs1_p = { FERRY_SPSC, 1, 1, 1, P },
	fs16_p = { FERRY_SPSC, 1, 1, 16, P }, fs64_p = { FERRY_SPSC, 1, 1, 64, P },
	ck_m11_t = { CK_MPMC, 1, 1, 1, T }, ck_m11_p = { CK_MPMC, 1, 1, 1, P },
	fm11_1t = { FERRY_MPMC, 1, 1, 1, T }, fm11_16t = { FERRY_MPMC, 1, 1, 16, T },
	fm11_64t = { FERRY_MPMC, 1, 1, 64, T }, fm11_1p = { FERRY_MPMC, 1, 1, 1, P },
	fm11_16p = { FERRY_MPMC, 1, 1, 16, P }, fm11_64p = { FERRY_MPMC, 1, 1, 64, P },
	ck_m22_t = { CK_MPMC, 2, 2, 1, T }, ck_m22_p = { CK_MPMC, 2, 2, 1, P },
	fm22_1t = { FERRY_MPMC, 2, 2, 1, T }, fm22_16t = { FERRY_MPMC, 2, 2, 16, T },
	fm22_64t = { FERRY_MPMC, 2, 2, 64, T }, fm22_1p = { FERRY_MPMC, 2, 2, 1, P },
	fm22_16p = { FERRY_MPMC, 2, 2, 16, P }, fm22_64p = { FERRY_MPMC, 2, 2, 64, P },
	pp_s_t = { FERRY_SPSC, 1, 1, 1, T }, pp_s_p = { FERRY_SPSC, 1, 1, 1, P },
	pp_m_t = { FERRY_MPMC, 1, 1, 1, T }, pp_m_p = { FERRY_MPMC, 1, 1, 1, P };

#define ROW(id_, ord, nm, be, fl, par)                                                          \
	{ .id = id_, .group = TP_GROUP, .order = ord, .name = nm, .backend = be, .mode = "spin", \
	  .floor = fl, .unit = BENCH_RATE, .run = run_tp, .arg = &par }

static const struct bench_scenario ring_scenarios[] = {
	ROW("ring.spsc.ck.thread", 400, "ck_ring spsc 1P1C", "thread", NULL, ck_spsc_t),
	ROW("ring.spsc.b1.thread", 401, "ferry spsc 1P1C", "thread", "ring.spsc.ck.thread", fs1_t),
	ROW("ring.spsc.b16.thread", 402, "ferry spsc 1P1C, batch 16", "thread",
	    "ring.spsc.ck.thread", fs16_t),
	ROW("ring.spsc.b64.thread", 403, "ferry spsc 1P1C, batch 64", "thread",
	    "ring.spsc.ck.thread", fs64_t),
	ROW("ring.spsc.ck.process", 404, "ck_ring spsc 1P1C", "process", NULL, ck_spsc_p),
	ROW("ring.spsc.b1.process", 405, "ferry spsc 1P1C", "process", "ring.spsc.ck.process",
	    fs1_p),
	ROW("ring.spsc.b16.process", 406, "ferry spsc 1P1C, batch 16", "process",
	    "ring.spsc.ck.process", fs16_p),
	ROW("ring.spsc.b64.process", 407, "ferry spsc 1P1C, batch 64", "process",
	    "ring.spsc.ck.process", fs64_p),
	ROW("ring.mpmc11.ck.thread", 410, "ck_ring mpmc 1P1C", "thread", NULL, ck_m11_t),
	ROW("ring.mpmc11.b1.thread", 411, "ferry mpmc 1P1C", "thread", "ring.mpmc11.ck.thread",
	    fm11_1t),
	ROW("ring.mpmc11.b16.thread", 412, "ferry mpmc 1P1C, batch 16", "thread",
	    "ring.mpmc11.ck.thread", fm11_16t),
	ROW("ring.mpmc11.b64.thread", 413, "ferry mpmc 1P1C, batch 64", "thread",
	    "ring.mpmc11.ck.thread", fm11_64t),
	ROW("ring.mpmc11.ck.process", 414, "ck_ring mpmc 1P1C", "process", NULL, ck_m11_p),
	ROW("ring.mpmc11.b1.process", 415, "ferry mpmc 1P1C", "process", "ring.mpmc11.ck.process",
	    fm11_1p),
	ROW("ring.mpmc11.b16.process", 416, "ferry mpmc 1P1C, batch 16", "process",
	    "ring.mpmc11.ck.process", fm11_16p),
	ROW("ring.mpmc11.b64.process", 417, "ferry mpmc 1P1C, batch 64", "process",
	    "ring.mpmc11.ck.process", fm11_64p),
	ROW("ring.mpmc22.ck.thread", 420, "ck_ring mpmc 2P2C", "thread", NULL, ck_m22_t),
	ROW("ring.mpmc22.b1.thread", 421, "ferry mpmc 2P2C", "thread", "ring.mpmc22.ck.thread",
	    fm22_1t),
	ROW("ring.mpmc22.b16.thread", 422, "ferry mpmc 2P2C, batch 16", "thread",
	    "ring.mpmc22.ck.thread", fm22_16t),
	ROW("ring.mpmc22.b64.thread", 423, "ferry mpmc 2P2C, batch 64", "thread",
	    "ring.mpmc22.ck.thread", fm22_64t),
	ROW("ring.mpmc22.ck.process", 424, "ck_ring mpmc 2P2C", "process", NULL, ck_m22_p),
	ROW("ring.mpmc22.b1.process", 425, "ferry mpmc 2P2C", "process", "ring.mpmc22.ck.process",
	    fm22_1p),
	ROW("ring.mpmc22.b16.process", 426, "ferry mpmc 2P2C, batch 16", "process",
	    "ring.mpmc22.ck.process", fm22_16p),
	ROW("ring.mpmc22.b64.process", 427, "ferry mpmc 2P2C, batch 64", "process",
	    "ring.mpmc22.ck.process", fm22_64p),
	{ .id = "rt64.ring.spsc.thread", .group = RT_GROUP, .order = 130, .name = "ferry ring spsc",
	  .backend = "thread", .mode = "spin", .floor = "rt64.spin.thread", .unit = BENCH_NS,
	  .run = run_pp, .arg = &pp_s_t },
	{ .id = "rt64.ring.spsc.process", .group = RT_GROUP, .order = 131,
	  .name = "ferry ring spsc", .backend = "process", .mode = "spin",
	  .floor = "rt64.spin.process", .unit = BENCH_NS, .run = run_pp, .arg = &pp_s_p },
	{ .id = "rt64.ring.mpmc.thread", .group = RT_GROUP, .order = 132, .name = "ferry ring mpmc",
	  .backend = "thread", .mode = "spin", .floor = "rt64.spin.thread", .unit = BENCH_NS,
	  .run = run_pp, .arg = &pp_m_t },
	{ .id = "rt64.ring.mpmc.process", .group = RT_GROUP, .order = 133,
	  .name = "ferry ring mpmc", .backend = "process", .mode = "spin",
	  .floor = "rt64.spin.process", .unit = BENCH_NS, .run = run_pp, .arg = &pp_m_p },
};
BENCH_REGISTER(ring_scenarios)
