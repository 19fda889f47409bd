/*
 * The pool's worker side: what runs inside each worker (a thread, or a
 * forked process). It touches only the shared layout, its own port and its
 * own memory, never the parent's pool structures, so the same code serves
 * both backends (and a worker forked from a multithreaded parent takes no
 * lock another thread of the parent could have held).
 *
 * A worker runs `concurrency` runners (itself plus helper threads). A runner
 * pulls a slot from the queue, marks it RUNNING under its seat, releases the
 * queue cell, runs the task and publishes the outcome:
 *   inline: the result's clone in the slot's area, then DONE by one CAS;
 *   through the port: the value [slot, gen, result] posted to the parent,
 *     whose manager marks the slot DONE when it receives it.
 * A value too big for the area, or one carrying handles, arrives through the
 * port: the runner asks for it (FETCH) and the manager posts it.
 */
#include "ferry/buf.h"
#include "ferry/value.h"
#include "runtime/pool_int.h"
#include "shm/err.h"

#include <errno.h>
#include <pthread.h>
#include <sched.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

struct wk {
	struct pool_wcfg cfg;
	struct pool_geo g;
	struct pool_seat *seat;
	ferry_port *port;
	pthread_mutex_t port_mu; /* one runner at a time on the port */
	const void *udata;
	const ferry_value *uval; /* the pool's workerData value (the runtime's) */
	void *user;
	pid_t ppid;
	_Atomic int dying;  /* the worker's own thread is leaving (worker exit) */
	pthread_t th[FERRY_POOL_MAX_CONCURRENCY];
	unsigned nth;       /* helper runner threads started */
	struct ferry_pool_ctx *main_ctx; /* the worker thread's (freed on any exit) */
};

struct ferry_pool_ctx {
	struct wk *wk;
	struct pool_slot *slot;
	uint32_t slot_idx, gen;
	ferry_msg *arg_msg;   /* the value came through the port */
	ferry_value *arg;     /* decoded inline (owned), or from arg_msg */
	int arg_taken;
	ferry_buf **xbufs;
	size_t nxbufs, capxbufs;
	ferry_port **xports;
	size_t nxports, capxports;
	char text[POOL_TEXT];
	int has_text;
	int64_t t_end; /* when the task's outcome was published */
};

#define IDLE_SLICE_NS (100 * 1000 * 1000)

static int64_t now_ns(void)
{
	return ferry__now_ns();
}

/* Parent gone (a process worker whose parent died): stop. */
static int parent_gone(const struct wk *wk)
{
	return wk->cfg.backend == FERRY_PROCESS && getppid() != wk->ppid;
}

static int must_stop(const struct wk *wk)
{
	/* relaxed: a request to stop; nothing is published with it. */
	return atomic_load_explicit(&wk->seat->retire, memory_order_relaxed) ||
	       atomic_load_explicit(&wk->g.hdr->shutdown, memory_order_relaxed) ||
	       atomic_load_explicit(&wk->dying, memory_order_relaxed);
}

static _Atomic uint32_t *take_token(struct wk *wk)
{
	struct pool_hdr *h = wk->g.hdr;
	uint32_t n = h->nspin_tok;
	if (n > POOL_SPIN_TOKENS)
		n = POOL_SPIN_TOKENS;
	for (uint32_t i = 0; i < n; i++) {
		uint32_t z = 0;
		if (atomic_load_explicit(&h->spin_tok[i], memory_order_relaxed) == 0 &&
		    atomic_compare_exchange_strong_explicit(&h->spin_tok[i], &z, wk->cfg.seat + 1,
							    memory_order_seq_cst, memory_order_relaxed))
			return &h->spin_tok[i];
	}
	return NULL;
}

static void drop_token(_Atomic uint32_t *tok)
{
	/* seq_cst: ordered before our re-check of the queue, against the
	 * submitter's push then pool_spinning (one of us sees the other). */
	atomic_store_explicit(tok, 0, memory_order_seq_cst);
}

/*
 * Wait for a task. An idle runner spins (with a token: at most one per
 * spare core), then sleeps on not_empty. 0 with a claimed cell, or -1: stop.
 */
static int next_task(struct wk *wk, uint32_t *slot, uint64_t *pos)
{
	const struct pool_geo *g = &wk->g;
	struct pool_queue *q = g->q;
	int64_t spin = wk->cfg.spin_ns;
	/* relaxed: a count the manager reads as a hint. */
	atomic_fetch_add_explicit(&wk->seat->idle, 1, memory_order_relaxed);
	_Atomic uint32_t *tok = take_token(wk);
	int64_t spin_until = tok ? now_ns() + spin : 0;
	int rc = -1;
	for (unsigned i = 1;; i++) {
		if (must_stop(wk))
			break;
		if (ferry__pool_q_pop(g, wk->cfg.seat, slot, pos) == 0) {
			rc = 0;
			break;
		}
		if (tok) {
			if (i & 63) {
				ferry__cpu_relax();
				continue;
			}
			if (now_ns() < spin_until) {
				if ((i & 4095) == 0)
					sched_yield();
				continue;
			}
			drop_token(tok);
			tok = NULL;
			continue; /* one more look after giving the token back */
		}
		uint32_t key = ferry_ec_prepare(&q->not_empty);
		if (ferry__pool_q_len(g) || must_stop(wk)) {
			ferry_ec_cancel(&q->not_empty);
			continue;
		}
		ferry_ec_wait(&q->not_empty, key, IDLE_SLICE_NS);
		if (parent_gone(wk))
			break;
		/* Woken: the next task often follows; spin a little if we may. */
		tok = take_token(wk);
		spin_until = tok ? now_ns() + spin / 4 : 0;
	}
	if (tok) {
		drop_token(tok);
		/* More waiting than this runner takes: wake a sleeper for it
		 * (submitters did not, seeing our token). */
		if (rc == 0 && ferry__pool_q_len(g))
			ferry_ec_notify(&q->not_empty);
	}
	atomic_fetch_sub_explicit(&wk->seat->idle, 1, memory_order_relaxed);
	return rc;
}

static void ctx_reset(struct ferry_pool_ctx *c)
{
	if (c->arg_msg)
		ferry_msg_free(c->arg_msg);
	else if (!c->arg_taken)
		ferry_value_free(c->arg);
	c->arg_msg = NULL;
	c->arg = NULL;
	c->arg_taken = 0;
	c->nxbufs = c->nxports = 0;
	c->has_text = 0;
	c->text[0] = 0;
}

/* Ask the parent for a value that travels through the port. */
static int fetch_arg(struct ferry_pool_ctx *c)
{
	struct wk *wk = c->wk;
	struct pool_req req = { POOL_REQ_FETCH, c->slot_idx, c->gen, wk->cfg.seat };
	pthread_mutex_lock(&wk->port_mu);
	int rc = ferry_port_post_bytes(wk->port, &req, sizeof req, FERRY_FOREVER);
	if (rc == 0) {
		pool_kick(wk->g.hdr);
		rc = ferry_port_recv(wk->port, &c->arg_msg, FERRY_FOREVER);
	}
	pthread_mutex_unlock(&wk->port_mu);
	if (rc)
		return ferry_pool_ctx_fail(c, rc, "the task's value did not arrive: %s", ferry_strerror(rc));
	c->arg = (ferry_value *)ferry_msg_value(c->arg_msg);
	if (!c->arg) /* the parent answered that the value is gone: cancelled */
		return ferry_pool_ctx_fail(c, -ECANCELED, "the task was cancelled");
	if (ferry_value_kind(c->arg) == FERRY_VALUE_UNDEFINED)
		c->arg = NULL;
	return 0;
}

/* The buffers and ports @res references (its encoder's handle table). */
static int result_handles(ferry_value *res, struct ferry_clone_handles *tab)
{
	unsigned char small[256];
	size_t len = 0;
	int rc = ferry_clone_encode(res, small, sizeof small, &len, tab, NULL);
	if (rc != -ENOBUFS)
		return rc;
	unsigned char *big = malloc(len);
	if (!big)
		return -ENOMEM;
	rc = ferry_clone_encode(res, big, len, &len, tab, NULL);
	free(big);
	return rc;
}

static int listed(const struct ferry_pool_ctx *c, const void *h)
{
	for (size_t i = 0; i < c->nxbufs; i++)
		if ((const void *)c->xbufs[i] == h)
			return 1;
	for (size_t i = 0; i < c->nxports; i++)
		if ((const void *)c->xports[i] == h)
			return 1;
	return 0;
}

/*
 * Send the result through the port as [slot, gen, value]. Takes @res. The
 * handles the result references are the pool's from the task's return:
 * listed ones move, the others are cloned (shared ones shared); all are
 * freed here afterwards, sent or not, since the task cannot free them.
 */
static int post_result(struct ferry_pool_ctx *c, ferry_value *res)
{
	struct wk *wk = c->wk;
	struct ferry_clone_handles tab;
	ferry_clone_handles_init(&tab);
	int rc = res ? result_handles(res, &tab) : 0;
	ferry_value *arr = ferry_value_array();
	ferry_value *vs = ferry_value_int(c->slot_idx);
	ferry_value *vg = ferry_value_int(c->gen);
	if (!arr || !vs || !vg) {
		ferry_value_free(vs);
		ferry_value_free(vg);
		rc = -ENOMEM;
	} else {
		ferry_value_array_push(arr, vs);
		ferry_value_array_push(arr, vg);
		/* res joins arr's graph: freed with it below, whatever happens. */
		int r = ferry_value_array_push(arr, res ? res : ferry_value_undefined());
		res = NULL;
		if (rc == 0)
			rc = r;
	}
	ferry_value_free(res);
	struct ferry_xfer x = { (struct ferry_buf *const *)c->xbufs, c->nxbufs,
				(ferry_port *const *)c->xports, c->nxports };
	if (rc == 0) {
		c->t_end = now_ns();
		atomic_store_explicit(&c->slot->t_end, c->t_end, memory_order_relaxed);
		pthread_mutex_lock(&wk->port_mu);
		rc = ferry_port_post(wk->port, arr, &x, FERRY_FOREVER);
		pthread_mutex_unlock(&wk->port_mu);
	}
	ferry_value_free(arr);
	for (size_t i = 0; i < tab.count; i++) {
		void *h = tab.items[i].handle;
		if (listed(c, h))
			continue; /* freed with the transfer list */
		if (tab.items[i].kind == FERRY_VALUE_PORT)
			ferry_port_destroy(h);
		else
			ferry_buf_free(h);
	}
	ferry_clone_handles_fini(&tab);
	if (rc)
		return ferry_pool_ctx_fail(c, rc, "the result could not be sent: %s", ferry_strerror(rc));
	pool_kick(wk->g.hdr);
	return 0;
}

/* Free a result that is not sent, with the handles it references (the
 * task gave them to the pool with the result). */
static void drop_result(struct ferry_pool_ctx *c, ferry_value *res)
{
	if (!res)
		return;
	struct ferry_clone_handles tab;
	ferry_clone_handles_init(&tab);
	if (result_handles(res, &tab) == 0)
		for (size_t i = 0; i < tab.count; i++) {
			void *h = tab.items[i].handle;
			if (listed(c, h))
				continue;
			if (tab.items[i].kind == FERRY_VALUE_PORT)
				ferry_port_destroy(h);
			else
				ferry_buf_free(h);
		}
	ferry_clone_handles_fini(&tab);
	ferry_value_free(res);
}

/* Publish an inline outcome: DONE by one CAS (the owner keeps its seat). */
static void finish_inline(struct ferry_pool_ctx *c, int err, uint32_t res_kind, uint32_t res_len)
{
	struct wk *wk = c->wk;
	struct pool_slot *s = c->slot;
	s->err = err;
	s->res_kind = res_kind;
	s->res_len = res_len;
	if (err) {
		const char *t = c->has_text ? c->text : ferry_strerror(err);
		snprintf(s->text, sizeof s->text, "%s", t);
	} else {
		s->text[0] = 0;
	}
	c->t_end = now_ns();
	atomic_store_explicit(&s->t_end, c->t_end, memory_order_relaxed);
	/* acquire: flags set by the parent (ORPHAN, ABANDON) are read fresh. */
	uint64_t w = atomic_load_explicit(&s->word, memory_order_acquire);
	for (;;) {
		if (sw_state(w) != S_RUNNING || sw_gen(w) != c->gen)
			return; /* not ours any more (never happens with a live worker) */
		uint64_t nw = (w & ~SW_STATE_MASK) | S_DONE;
		/* acq_rel: release publishes the outcome to the collector (its
		 * acquire CAS DONE -> COLLECTING); acquire keeps the flags read. */
		if (atomic_compare_exchange_weak_explicit(&s->word, &w, nw, memory_order_acq_rel,
							  memory_order_acquire))
			break;
	}
	ferry_ec_notify(&s->ec);
	ferry_ec_notify(&wk->g.hdr->done_ec);
	if (w & SW_F_MGR) {
		struct pool_comp rec = { c->slot_idx, c->gen };
		/* The ring has room for every slot twice; it only fills while the
		 * manager is slow, and then waits for it. A lost record (this
		 * process killed mid-push) is made up by the crash sweep. */
		for (unsigned i = 0; ferry_ring_mpmc_push(wk->g.comp, &rec, sizeof rec) == -EAGAIN; i++) {
			pool_kick(wk->g.hdr);
			if (must_stop(wk) && i > 1000)
				break;
			sched_yield();
		}
		pool_kick(wk->g.hdr);
	}
}

static void run_one(struct wk *wk, struct ferry_pool_ctx *c, uint32_t idx, uint64_t pos)
{
	const struct pool_geo *g = &wk->g;
	struct pool_slot *s = &g->slots[idx];
	/* acquire: pairs with the submitter's release of QUEUED. */
	uint64_t w = atomic_load_explicit(&s->word, memory_order_acquire);
	for (;;) {
		if (sw_state(w) != S_QUEUED) { /* cancelled, or a stale cell */
			ferry__pool_q_release(g, pos);
			ferry_ec_notify(&g->hdr->space_ec);
			return;
		}
		uint64_t nw = (w & ~(SW_STATE_MASK | SW_OWNER_MASK)) |
			      ((uint64_t)wk->cfg.seat << SW_OWNER_SHIFT) | S_RUNNING;
		/* acq_rel: the start is ordered before the release of the cell
		 * (so the crash sweep sees RUNNING or a TAKEN cell, never neither). */
		if (atomic_compare_exchange_weak_explicit(&s->word, &w, nw, memory_order_acq_rel,
							  memory_order_acquire))
			break;
	}
	int64_t start = now_ns();
	atomic_store_explicit(&s->worker_no, wk->cfg.worker_no, memory_order_relaxed);
	/* release: the manager's timeout scan reads the start with acquire. */
	atomic_store_explicit(&s->t_start, start, memory_order_release);
	/* relaxed: a gauge; reset by the manager if this worker dies. */
	atomic_fetch_add_explicit(&wk->seat->running, 1, memory_order_relaxed);
	ferry__pool_q_release(g, pos);
	ferry_ec_notify(&g->hdr->space_ec);
	if (ferry__pool_q_len(g) == 0 &&
	    atomic_load_explicit(&g->hdr->want_drain, memory_order_relaxed))
		pool_kick(g->hdr);

	c->slot = s;
	c->slot_idx = idx;
	c->gen = sw_gen(w);
	int err = 0;
	switch (s->arg_kind) {
	case V_NONE:
		break;
	case V_INLINE:
		if (s->arg_len > g->inline_bytes) {
			err = ferry_pool_ctx_fail(c, -EBADMSG, "the task's value length is corrupt");
			break;
		}
		err = ferry_clone_decode(pool_area(g, idx), s->arg_len, NULL, &c->arg);
		if (err)
			ferry_pool_ctx_fail(c, err, "the task's value did not decode: %s", ferry_errmsg());
		break;
	default:
		err = fetch_arg(c);
		break;
	}
	ferry_value *res = NULL;
	if (err == 0) {
		err = wk->cfg.fn(c, c->arg, &res);
		if (err > 0) /* a positive return is a programming error: report it */
			err = ferry_pool_ctx_fail(c, -EINVAL, "the task function returned %d (not 0 or a negative code)", err);
	}
	uint32_t res_kind = V_NONE, res_len = 0;
	int ool = 0;
	/* acquire: see an ORPHAN or ABANDON flag set meanwhile. */
	int drop = (atomic_load_explicit(&s->word, memory_order_acquire) & (SW_F_ORPHAN | SW_F_ABANDON)) != 0;
	if (err == 0 && res && !drop) {
		if (c->nxbufs || c->nxports) {
			ool = 1;
		} else {
			size_t len = 0;
			int r = ferry_clone_encode(res, pool_area(g, idx), g->inline_bytes, &len, NULL, NULL);
			if (r == 0) {
				res_kind = V_INLINE;
				res_len = (uint32_t)len;
			} else if (r == -ENOBUFS || r == FERRY_ENOTCLONEABLE) {
				ool = 1; /* too big for the area, or it carries handles */
			} else {
				err = ferry_pool_ctx_fail(c, r, "the result could not be cloned: %s", ferry_errmsg());
			}
		}
	}
	if (ool) {
		err = post_result(c, res);
		res = NULL; /* consumed by post_result */
	}
	if (res && res_kind == V_INLINE)
		ferry_value_free(res); /* encoded: it references no handle */
	else
		drop_result(c, res);
	if (!ool || err)
		finish_inline(c, err, res_kind, res_len);
	for (size_t i = 0; i < c->nxbufs; i++) /* listed but never sent: still ours */
		ferry_buf_free(c->xbufs[i]);
	for (size_t i = 0; i < c->nxports; i++)
		ferry_port_destroy(c->xports[i]);
	ctx_reset(c);
	atomic_fetch_sub_explicit(&wk->seat->running, 1, memory_order_relaxed);
	atomic_store_explicit(&wk->seat->last_active, c->t_end ? c->t_end : now_ns(), memory_order_relaxed);
	c->t_end = 0;
}

static void *runner(void *arg);

/* The worker's end, normal or not: stop the helpers (they finish the task
 * they run), then release what the worker holds. */
static void worker_leave(void *arg)
{
	struct wk *wk = arg;
	atomic_store_explicit(&wk->dying, 1, memory_order_relaxed);
	ferry_ec_notify(&wk->g.q->not_empty);
	for (unsigned i = 0; i < wk->nth; i++)
		pthread_join(wk->th[i], NULL);
	if (wk->main_ctx) { /* what a task that ended the thread left */
		ctx_reset(wk->main_ctx);
		free(wk->main_ctx->xbufs);
		free(wk->main_ctx->xports);
		free(wk->main_ctx);
	}
	pthread_mutex_destroy(&wk->port_mu);
	if (wk->cfg.backend == FERRY_THREAD)
		ferry_buf_free(wk->cfg.shared);
	free(wk);
}

static void run_loop(struct wk *wk, struct ferry_pool_ctx *c)
{
	c->wk = wk;
	uint32_t idx;
	uint64_t pos;
	while (next_task(wk, &idx, &pos) == 0)
		run_one(wk, c, idx, pos);
}

static void *runner(void *arg)
{
	struct ferry_pool_ctx c;
	memset(&c, 0, sizeof c);
	run_loop(arg, &c);
	free(c.xbufs);
	free(c.xports);
	return NULL;
}

int ferry__pool_worker_main(ferry_worker_ctx *wctx)
{
	size_t len = 0;
	const unsigned char *data = ferry_worker_ctx_data(wctx, &len);
	struct wk *wk = calloc(1, sizeof *wk);
	if (!wk)
		return 70;
	if (!data || len < sizeof wk->cfg) {
		free(wk);
		return 71;
	}
	memcpy(&wk->cfg, data, sizeof wk->cfg);
	if (wk->cfg.magic != POOL_WCFG_MAGIC || wk->cfg.data_len != len - sizeof wk->cfg ||
	    wk->cfg.concurrency < 1 || wk->cfg.concurrency > FERRY_POOL_MAX_CONCURRENCY) {
		free(wk);
		return 71;
	}
	wk->udata = wk->cfg.data_len ? data + sizeof wk->cfg : NULL;
	wk->user = ferry_worker_ctx_arg(wctx);
	wk->port = ferry_worker_ctx_port(wctx);
	wk->ppid = getppid();
	/* The shared layout: a thread worker was given its own handle of the
	 * parent's buffer (one mapping, and it keeps the memory alive if the
	 * worker outlives the pool); a process worker got it as workerData. */
	ferry_buf *shared = wk->cfg.shared;
	const ferry_value *wd = ferry_worker_ctx_value(wctx);
	if (wk->cfg.backend == FERRY_PROCESS) {
		/* [layout, value] when the pool has a value, else the layout. */
		if (ferry_value_kind(wd) == FERRY_VALUE_ARRAY) {
			wk->uval = ferry_value_array_get(wd, 1);
			wd = ferry_value_array_get(wd, 0);
		}
		shared = ferry_value_get_handle(wd, NULL);
	} else {
		wk->uval = wd;
	}
	if (!shared || ferry__pool_geo(&wk->g, ferry_buf_data(shared), ferry_buf_len(shared)) ||
	    wk->cfg.seat >= wk->g.nseats) {
		if (wk->cfg.backend == FERRY_THREAD)
			ferry_buf_free(wk->cfg.shared);
		free(wk);
		return 72;
	}
	wk->seat = &wk->g.seats[wk->cfg.seat];
	pthread_mutex_init(&wk->port_mu, NULL);
	unsigned extra = wk->cfg.concurrency - 1;
	pthread_attr_t attr, *ap = NULL;
	if (extra && wk->cfg.stack_size && pthread_attr_init(&attr) == 0) {
		ap = &attr;
		if (pthread_attr_setstacksize(ap, (size_t)wk->cfg.stack_size)) {
			pthread_attr_destroy(ap); /* checked at create; else the default */
			ap = NULL;
		}
	}
	for (; wk->nth < extra; wk->nth++)
		if (pthread_create(&wk->th[wk->nth], ap, runner, wk))
			break; /* fewer runners: still correct, only slower */
	if (ap)
		pthread_attr_destroy(ap);
	/* A task that ends this thread (ferry_worker_exit on a thread worker)
	 * unwinds through worker_leave too. */
	wk->main_ctx = calloc(1, sizeof *wk->main_ctx);
	pthread_cleanup_push(worker_leave, wk);
	if (wk->main_ctx)
		run_loop(wk, wk->main_ctx);
	pthread_cleanup_pop(1);
	return 0;
}

/* ---- the task's view ---- */

FERRY_API int ferry_pool_ctx_aborted(const ferry_pool_ctx *ctx)
{
	if (!ctx || !ctx->slot)
		return 0;
	/* acquire: pairs with the release store of the canceller. */
	return __atomic_load_n(&ctx->slot->abort, __ATOMIC_ACQUIRE) != 0 ||
	       atomic_load_explicit(&ctx->wk->g.hdr->shutdown, memory_order_relaxed) != 0;
}

FERRY_API uint32_t *ferry_pool_ctx_abort_word(ferry_pool_ctx *ctx)
{
	return ctx && ctx->slot ? &ctx->slot->abort : NULL;
}

FERRY_API int ferry_pool_ctx_fail(ferry_pool_ctx *ctx, int err, const char *fmt, ...)
{
	if (!ctx)
		return ferry__fail(-EINVAL, "ferry_pool_ctx_fail: ctx is NULL");
	if (fmt) {
		va_list ap;
		va_start(ap, fmt);
		vsnprintf(ctx->text, sizeof ctx->text, fmt, ap);
		va_end(ap);
		ctx->has_text = 1;
	}
	return err;
}

static int grow(void **arr, size_t *cap, size_t n, size_t elem)
{
	if (n < *cap)
		return 0;
	size_t nc = *cap ? *cap * 2 : 8;
	void *p = realloc(*arr, nc * elem);
	if (!p)
		return -ENOMEM;
	*arr = p;
	*cap = nc;
	return 0;
}

FERRY_API int ferry_pool_ctx_transfer(ferry_pool_ctx *ctx, ferry_buf *buf)
{
	if (!ctx || !buf)
		return ferry__fail(-EINVAL, "ferry_pool_ctx_transfer: %s is NULL", !ctx ? "ctx" : "buf");
	if (ctx->nxbufs + ctx->nxports >= FERRY_MSG_MAX_HANDLES)
		return ferry__fail(-EINVAL, "ferry_pool_ctx_transfer: more than %d handles", FERRY_MSG_MAX_HANDLES);
	if (grow((void **)&ctx->xbufs, &ctx->capxbufs, ctx->nxbufs, sizeof *ctx->xbufs))
		return ferry__fail(-ENOMEM, "ferry_pool_ctx_transfer: out of memory");
	ctx->xbufs[ctx->nxbufs++] = buf;
	return 0;
}

FERRY_API int ferry_pool_ctx_transfer_port(ferry_pool_ctx *ctx, ferry_port *port)
{
	if (!ctx || !port)
		return ferry__fail(-EINVAL, "ferry_pool_ctx_transfer_port: %s is NULL", !ctx ? "ctx" : "port");
	if (ctx->nxbufs + ctx->nxports >= FERRY_MSG_MAX_HANDLES)
		return ferry__fail(-EINVAL, "ferry_pool_ctx_transfer_port: more than %d handles",
				   FERRY_MSG_MAX_HANDLES);
	if (grow((void **)&ctx->xports, &ctx->capxports, ctx->nxports, sizeof *ctx->xports))
		return ferry__fail(-ENOMEM, "ferry_pool_ctx_transfer_port: out of memory");
	ctx->xports[ctx->nxports++] = port;
	return 0;
}

FERRY_API ferry_value *ferry_pool_ctx_take_arg(ferry_pool_ctx *ctx)
{
	if (!ctx || !ctx->arg || ctx->arg_taken)
		return NULL;
	ferry_value *v = ctx->arg;
	if (ctx->arg_msg) {
		/* The message's root may be undefined-wrapped; take the graph. */
		ferry_value *root = ferry_msg_take_value(ctx->arg_msg);
		if (!root)
			return NULL;
	}
	ctx->arg_taken = 1;
	return v;
}

FERRY_API int ferry_pool_ctx_keep(ferry_pool_ctx *ctx, const void *handle)
{
	if (!ctx || !handle)
		return ferry__fail(-EINVAL, "ferry_pool_ctx_keep: %s is NULL", !ctx ? "ctx" : "handle");
	if (!ctx->arg_msg)
		return ferry__fail(-ENOENT, "ferry_pool_ctx_keep: the task's value carries no handles");
	return ferry_msg_keep(ctx->arg_msg, handle);
}

FERRY_API unsigned ferry_pool_ctx_worker(const ferry_pool_ctx *ctx)
{
	return ctx ? ctx->wk->cfg.worker_no : 0;
}

FERRY_API int ferry_pool_ctx_backend(const ferry_pool_ctx *ctx)
{
	return ctx ? (int)ctx->wk->cfg.backend : -EINVAL;
}

FERRY_API const void *ferry_pool_ctx_data(const ferry_pool_ctx *ctx, size_t *len)
{
	if (len)
		*len = ctx ? ctx->wk->cfg.data_len : 0;
	return ctx ? ctx->wk->udata : NULL;
}

FERRY_API void *ferry_pool_ctx_user(const ferry_pool_ctx *ctx)
{
	return ctx ? ctx->wk->user : NULL;
}

FERRY_API const ferry_value *ferry_pool_ctx_value(const ferry_pool_ctx *ctx)
{
	return ctx ? ctx->wk->uval : NULL;
}
