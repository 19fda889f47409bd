/*
 * The pool, parent side: submit, settle, the manager thread, crash recovery.
 * The shared layout and the state machines are described in pool_int.h; the
 * worker side is pool_worker.c.
 *
 * Who does what:
 *   submitters  take a free slot, write the value into its area (or stash it
 *               for the port), mark it QUEUED and push it on the queue;
 *   workers     claim, run, publish DONE (pool_worker.c);
 *   collectors  any parent thread that sees DONE (a waiter, a poller, a
 *               submitter short of slots, the manager) wins the slot with one
 *               CAS DONE -> COLLECTING, moves the outcome into the handle
 *               (settles it), and frees the slot;
 *   manager     a thread of the pool: answers FETCH requests and receives
 *               port results, collects tasks whose settling needs it (flags),
 *               runs callbacks, watches workers (crash sweep, replacement),
 *               enforces run-time limits and kill escalation, spawns and
 *               retires workers, reports the drain.
 * A task's handle settles exactly once: by its collector, or earlier by the
 * one CAS that orphans its running slot (cancel, timeout, destroy).
 *
 * Locks: pool->lock guards the free list of slots, the stash and result
 * messages of the parent's slot records, the callback queue and the worker
 * table's pids. It is never held across a wait or a call into user code.
 * The manager alone touches worker handles and ports (and destroy, once the
 * manager has stopped).
 */
#include "ferry/buf.h"
#include "ferry/loop.h"
#include "ferry/value.h"
#include "ports/port_int.h"
#include "runtime/pool_int.h"
#include "shm/err.h"

#include <errno.h>
#include <limits.h>
#include <stddef.h>
#include <pthread.h>
#include <sched.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#define DEFAULT_IDLE_NS (1000LL * 1000 * 1000)
#define DEFAULT_GRACE_NS (1000LL * 1000 * 1000)
#define DEFAULT_SPIN_NS (20LL * 1000)
#define BUSY_SLICE_NS (2LL * 1000 * 1000)   /* manager's sleep while tasks run */
#define IDLE_SLICE_NS (50LL * 1000 * 1000)  /* and while none runs */
#define WAIT_SLICE_NS (100LL * 1000 * 1000) /* parent waiters re-check */

/* ---- histograms: log-linear, 8 sub-buckets per power of two ---- */

#define HIST_BUCKETS 496

struct hist {
	_Atomic uint64_t b[HIST_BUCKETS];
};

static unsigned hist_index(uint64_t v)
{
	if (v < 8)
		return (unsigned)v;
	unsigned e = 63u - (unsigned)__builtin_clzll(v);
	return (e - 2) * 8 + (unsigned)((v >> (e - 3)) & 7);
}

static uint64_t hist_value(unsigned i)
{
	if (i < 8)
		return i;
	unsigned e = i / 8 + 2, sub = i % 8;
	uint64_t lo = (uint64_t)(8 + sub) << (e - 3);
	return lo + ((uint64_t)1 << (e - 3)) / 2;
}

static void hist_add(struct hist *h, int64_t v)
{
	/* relaxed: statistics, read as a snapshot. */
	atomic_fetch_add_explicit(&h->b[hist_index(v < 0 ? 0 : (uint64_t)v)], 1, memory_order_relaxed);
}

static int64_t hist_pct(struct hist *h, double p)
{
	uint64_t c[HIST_BUCKETS], total = 0;
	for (unsigned i = 0; i < HIST_BUCKETS; i++)
		total += c[i] = atomic_load_explicit(&h->b[i], memory_order_relaxed);
	if (!total)
		return 0;
	uint64_t rank = (uint64_t)(p * (double)total + 0.999999);
	if (rank < 1)
		rank = 1;
	uint64_t acc = 0;
	for (unsigned i = 0; i < HIST_BUCKETS; i++) {
		acc += c[i];
		if (acc >= rank)
			return (int64_t)hist_value(i);
	}
	return (int64_t)hist_value(HIST_BUCKETS - 1);
}

/* ---- parent structures ---- */

struct pslot {
	_Atomic(struct ferry_pool_task *) task; /* the handle, while linked */
	ferry_msg *stash;  /* a value that goes through the port (lock) */
	ferry_msg *res;    /* a result that came through the port (lock) */
	_Atomic int64_t kill_at; /* orphaned on a process worker: kill it after this */
	uint32_t next_free;
};

struct pworker {
	ferry_worker *w; /* NULL: the seat is free */
	unsigned no;
	pid_t pid;
	int killed;      /* the pool killed it to stop an orphaned task */
	char err[256];   /* its last ERROR event */
};

enum { T_PENDING = 0, T_SETTLING = 1, T_SETTLED = 2 };

struct ferry_pool_task {
	struct ferry_pool *pool;
	uint32_t slot, gen;
	_Atomic int state;
	_Atomic int refs;
	int err;
	ferry_value *val;        /* owned graph (inline result), or NULL */
	const ferry_value *view; /* the result value: val, or inside msg */
	ferry_msg *msg;          /* a result that came through the port */
	int taken;
	int64_t wait_ns, run_ns;
	ferry_pool_done_fn cb;
	void *cb_arg;
	struct ferry_pool_task *cb_next;
	ferry_loop *loop;        /* the callback runs there (NULL: the manager) */
	/* On the loop's thread only (ordered by its post queue): */
	uint64_t keep_id;        /* the timer that keeps the loop alive meanwhile */
	int lp_done;             /* the callback was delivered */
	char text[POOL_TEXT];    /* last: a reused handle clears up to here */
};

#define NO_SLOT UINT32_MAX

struct ferry_pool {
	_Atomic int refs; /* the pool's owner, plus every live handle */
	/* resolved options */
	int backend;
	ferry_pool_fn fn;
	char name[40];
	int min_w, max_w, conc;
	int64_t idle_ns, qwait_ns, task_timeout_ns, grace_ns, spin_ns;
	size_t max_queue;
	void *user;
	ferry_pool_drain_fn on_drain;
	void *drain_arg;
	unsigned char *wcfg; /* struct pool_wcfg + the pool's data */
	size_t wcfg_len;
	/* workerData as a value (opts.value): the pool's clone, as the
	 * message that owns its buffer handles and the graph taken from it,
	 * inside [shared layout handle, value] for process workers. */
	ferry_msg *wd_msg;
	ferry_value *wd_arr;
	size_t stack_size;
	uint64_t max_as, max_nofile;
	int spawn;
	/* shared */
	ferry_buf *shbuf;
	ferry_value *shval; /* workerData of process workers: the shared handle */
	struct pool_geo g;
	struct pslot *ps;
	/* lock-guarded */
	pthread_mutex_t lock;
	uint32_t free_head;
	_Atomic uint32_t nfree; /* written under lock; read without it as a hint */
	struct ferry_pool_task *cbq_head, *cbq_tail;
	struct ferry_pool_task *hcache; /* freed handles, reused by submit */
	unsigned nhcache;
	pid_t pids[FERRY_POOL_MAX_WORKERS];
	/* the loopback channel that stashes port-borne values (stash_mu) */
	pthread_mutex_t stash_mu;
	ferry_port *lb_tx, *lb_rx;
	/* manager */
	struct pworker wk[FERRY_POOL_MAX_WORKERS];
	_Atomic int live;
	_Atomic int closing;
	_Atomic int stop;
	_Atomic int timeouts_used;
	pthread_t mgr;
	int mgr_running;
	unsigned next_no;
	uint64_t drain_seen_tail;
	int64_t last_watch, last_times, next_times;
	int64_t respawn_after; /* workers that fail to start: back off */
	unsigned fast_fail;
	/* stats */
	_Atomic uint64_t submitted, completed, failed, cancelled, crashes, spawned;
	_Atomic uint64_t run_total_ns;
	int64_t t_create;
	struct hist hwait, hrun;
};

static _Thread_local struct ferry_pool *mgr_of_thread;

static int64_t now_ns(void)
{
	return ferry__now_ns();
}

/* ---- references ---- */

#define HCACHE_MAX 256

static void pool_free(struct ferry_pool *p)
{
	while (p->hcache) {
		struct ferry_pool_task *t = p->hcache;
		p->hcache = t->cb_next;
		free(t);
	}
	pthread_mutex_destroy(&p->lock);
	pthread_mutex_destroy(&p->stash_mu);
	free(p->ps);
	free(p->wcfg);
	free(p);
}

static void pool_unref(struct ferry_pool *p)
{
	/* acq_rel: the last one sees every other owner's writes. */
	if (atomic_fetch_sub_explicit(&p->refs, 1, memory_order_acq_rel) == 1)
		pool_free(p);
}

static void task_unref(struct ferry_pool_task *t)
{
	if (atomic_fetch_sub_explicit(&t->refs, 1, memory_order_acq_rel) != 1)
		return;
	struct ferry_pool *p = t->pool;
	if (t->msg)
		ferry_msg_free(t->msg);
	else if (!t->taken)
		ferry_value_free(t->val);
	/* Keep it for the next submit (the pool is alive: we hold a reference). */
	pthread_mutex_lock(&p->lock);
	if (p->nhcache < HCACHE_MAX) {
		t->cb_next = p->hcache;
		p->hcache = t;
		p->nhcache++;
		t = NULL;
	}
	pthread_mutex_unlock(&p->lock);
	free(t);
	pool_unref(p);
}

/* ---- slots ---- */

static void slot_free(struct ferry_pool *p, uint32_t idx, uint64_t w)
{
	struct pslot *ps = &p->ps[idx];
	atomic_store_explicit(&ps->task, NULL, memory_order_relaxed);
	atomic_store_explicit(&ps->kill_at, 0, memory_order_relaxed);
	pthread_mutex_lock(&p->lock);
	ferry_msg *stash = ps->stash, *res = ps->res;
	ps->stash = ps->res = NULL;
	/* release: everything read from the slot is done before it is reused
	 * (pairs with the acquire load in submit). */
	atomic_store_explicit(&p->g.slots[idx].word, sw_make(sw_gen(w) + 1, 0, 0, S_FREE),
			      memory_order_release);
	ps->next_free = p->free_head;
	p->free_head = idx;
	atomic_fetch_add_explicit(&p->nfree, 1, memory_order_relaxed);
	pthread_mutex_unlock(&p->lock);
	ferry_msg_free(stash);
	ferry_msg_free(res);
}

static uint32_t slot_alloc(struct ferry_pool *p)
{
	pthread_mutex_lock(&p->lock);
	uint32_t idx = p->free_head;
	if (idx != NO_SLOT) {
		p->free_head = p->ps[idx].next_free;
		atomic_fetch_sub_explicit(&p->nfree, 1, memory_order_relaxed);
	}
	pthread_mutex_unlock(&p->lock);
	return idx;
}

static struct ferry_pool_task *task_alloc(struct ferry_pool *p)
{
	pthread_mutex_lock(&p->lock);
	struct ferry_pool_task *t = p->hcache;
	if (t) {
		p->hcache = t->cb_next;
		p->nhcache--;
	}
	pthread_mutex_unlock(&p->lock);
	if (t)
		memset(t, 0, offsetof(struct ferry_pool_task, text) + 1);
	else
		t = calloc(1, sizeof *t);
	return t;
}

/* ---- settling ---- */

/* Completion callbacks on a loop (ferry_pool_submit_opts.loop). Two posts
 * per task, both run on the loop's thread in post order: loop_keep (posted
 * by submit) adds a timer that keeps the loop alive until loop_deliver
 * (posted when the task settles) cancels it and runs the callback. The post
 * queue is one FIFO, but the settle may beat submit's post of loop_keep:
 * lp_done tells loop_keep it came too late. */

#define KEEP_PERIOD_NS (3600LL * 1000 * 1000 * 1000)

static void keep_tick(ferry_loop *loop, uint64_t id, int res, void *arg)
{
	(void)loop, (void)id, (void)res, (void)arg; /* only keeps the loop alive */
}

static void loop_keep(ferry_loop *loop, uint64_t id, int res, void *arg)
{
	struct ferry_pool_task *t = arg;
	(void)id;
	/* res -ECANCELED: the loop is being destroyed; nothing to keep. */
	if (res == 0 && !t->lp_done &&
	    ferry_loop_timer(loop, KEEP_PERIOD_NS, KEEP_PERIOD_NS, keep_tick, NULL, &t->keep_id))
		t->keep_id = 0; /* out of memory: the callback still comes */
	task_unref(t); /* loop_keep's reference */
}

static void loop_deliver(ferry_loop *loop, uint64_t id, int res, void *arg)
{
	struct ferry_pool_task *t = arg;
	(void)id;
	t->lp_done = 1;
	if (t->keep_id && res == 0)
		ferry_loop_cancel(loop, t->keep_id);
	t->keep_id = 0;
	t->cb(t, t->cb_arg);
	task_unref(t); /* the callback's reference */
}

/* 0, or the post failed (out of memory): the manager retries. */
static int post_to_loop(struct ferry_pool_task *t)
{
	return ferry_loop_post(t->loop, loop_deliver, t);
}

static void queue_callback(struct ferry_pool *p, struct ferry_pool_task *t)
{
	pthread_mutex_lock(&p->lock);
	t->cb_next = NULL;
	if (p->cbq_tail)
		p->cbq_tail->cb_next = t;
	else
		p->cbq_head = t;
	p->cbq_tail = t;
	pthread_mutex_unlock(&p->lock);
	if (mgr_of_thread != p)
		pool_kick(p->g.hdr);
}

static void count_outcome(struct ferry_pool *p, int err)
{
	_Atomic uint64_t *c = err == 0 ? &p->completed : err == -ECANCELED ? &p->cancelled : &p->failed;
	atomic_fetch_add_explicit(c, 1, memory_order_relaxed);
}

/*
 * Settle @t with its outcome (taking @val or @msg). Exactly one caller per
 * task gets here (the collector, or the orphaning CAS); the state CAS is a
 * second line of defence. Wakes the handle's waiters and queues its callback.
 */
static void settle(struct ferry_pool *p, struct ferry_pool_task *t, uint32_t slot, int err,
		   const char *text, ferry_value *val, ferry_msg *msg, const ferry_value *view)
{
	int exp = T_PENDING;
	if (!atomic_compare_exchange_strong_explicit(&t->state, &exp, T_SETTLING, memory_order_acquire,
						     memory_order_relaxed)) {
		if (msg)
			ferry_msg_free(msg);
		else
			ferry_value_free(val);
		return;
	}
	t->err = err;
	if (err && text) {
		size_t n = strnlen(text, sizeof t->text - 1);
		memcpy(t->text, text, n);
		t->text[n] = 0;
	} else {
		t->text[0] = 0;
	}
	t->val = val;
	t->msg = msg;
	t->view = view;
	count_outcome(p, err);
	/* release: pairs with the acquire loads of the waiters. */
	atomic_store_explicit(&t->state, T_SETTLED, memory_order_release);
	ferry_ec_notify(&p->g.slots[slot].ec);
	ferry_ec_notify(&p->g.hdr->done_ec);
	if (t->cb && (!t->loop || post_to_loop(t)))
		queue_callback(p, t); /* the manager's, or a post to retry */
}

/* A message for a worker that ended; @pw->err holds its last ERROR event. */
static void death_text(struct ferry_pool *p, struct pworker *pw,
		       const struct ferry_worker_status *st, char *out, size_t n)
{
	if (st && st->signal) {
		const char *ab = sigabbrev_np(st->signal);
		int k = ab ? snprintf(out, n, "worker %u killed by SIG%s", pw->no, ab)
			   : snprintf(out, n, "worker %u killed by signal %d", pw->no, st->signal);
		if (pw->killed && k > 0 && (size_t)k < n)
			snprintf(out + k, n - (size_t)k,
				 " (the pool stopped it: a cancelled or timed-out task went on running)");
	} else if (st) {
		int k = snprintf(out, n, "worker %u exited with code %d", pw->no, st->code);
		if (pw->err[0] && k > 0 && (size_t)k < n)
			snprintf(out + k, n - (size_t)k, ": %s", pw->err);
	} else {
		snprintf(out, n, "worker %u ended", pw->no);
	}
	(void)p;
}

/*
 * Collect slot @idx whose word the caller moved DONE -> COLLECTING (@w is
 * the DONE word): settle its handle from the slot and free the slot.
 */
static void collect(struct ferry_pool *p, uint32_t idx, uint64_t w)
{
	struct pool_slot *s = &p->g.slots[idx];
	struct pslot *ps = &p->ps[idx];
	struct ferry_pool_task *t = atomic_load_explicit(&ps->task, memory_order_acquire);
	uint64_t fl = sw_flags(w);
	if (fl & SW_F_ORPHAN) { /* settled when orphaned; the result is dropped */
		slot_free(p, idx, w);
		return;
	}
	int64_t ts = atomic_load_explicit(&s->t_submit, memory_order_relaxed);
	int64_t t0 = atomic_load_explicit(&s->t_start, memory_order_relaxed);
	int64_t t1 = atomic_load_explicit(&s->t_end, memory_order_relaxed);
	int64_t wait = 0, run = 0;
	int err;
	char text[POOL_TEXT];
	ferry_value *val = NULL;
	ferry_msg *msg = NULL;
	const ferry_value *view = NULL;
	if (fl & (SW_F_CANCELLED | SW_F_DESTROY)) {
		err = -ECANCELED;
		snprintf(text, sizeof text, "%s", fl & SW_F_DESTROY ? "the pool was destroyed before the task started"
							      : "the task was cancelled before it started");
	} else {
		/* The worker may be buggy or hostile: read each field once, check it. */
		err = s->err;
		memcpy(text, s->text, sizeof text);
		text[sizeof text - 1] = 0;
		if (err > 0)
			err = FERRY_EWORKER;
		if (t0 > 0) {
			wait = t0 > ts ? t0 - ts : 0;
			run = t1 > t0 ? t1 - t0 : 0;
			hist_add(&p->hwait, wait);
			hist_add(&p->hrun, run);
			atomic_fetch_add_explicit(&p->run_total_ns, (uint64_t)run, memory_order_relaxed);
		}
		uint32_t kind = s->res_kind, len = s->res_len;
		if (err == 0 && !(fl & SW_F_ABANDON)) {
			if (kind == V_INLINE) {
				if (len > p->g.inline_bytes) {
					err = -EBADMSG;
					snprintf(text, sizeof text, "the result's length is corrupt");
				} else {
					int r = ferry_clone_decode(pool_area(&p->g, idx), len, NULL, &val);
					if (r) {
						err = r;
						snprintf(text, sizeof text, "the result did not decode: %s", ferry_errmsg());
					}
					view = val;
				}
			} else if (kind == V_OOL) {
				pthread_mutex_lock(&p->lock);
				msg = ps->res;
				ps->res = NULL;
				pthread_mutex_unlock(&p->lock);
				const ferry_value *root = ferry_msg_value(msg);
				view = ferry_value_array_get(root, 2);
				if (ferry_value_kind(view) == FERRY_VALUE_UNDEFINED)
					view = NULL;
			}
		}
	}
	slot_free(p, idx, w);
	if (!t)
		return;
	t->wait_ns = wait;
	t->run_ns = run;
	settle(p, t, idx, err, text, val, msg, view);
	task_unref(t); /* the slot's reference */
}

/* Collect @idx if it is DONE with generation @gen. */
static int try_collect(struct ferry_pool *p, uint32_t idx, uint32_t gen)
{
	_Atomic uint64_t *wp = &p->g.slots[idx].word;
	/* acquire: pairs with the release of DONE, so the outcome is visible. */
	uint64_t w = atomic_load_explicit(wp, memory_order_acquire);
	while (sw_state(w) == S_DONE && sw_gen(w) == gen) {
		uint64_t nw = (w & ~SW_STATE_MASK) | S_COLLECTING;
		if (atomic_compare_exchange_weak_explicit(wp, &w, nw, memory_order_acquire,
							  memory_order_acquire)) {
			collect(p, idx, w);
			return 1;
		}
	}
	return 0;
}

/* Collect every DONE slot (a submitter short of slots, the sweep). */
static void harvest(struct ferry_pool *p, uint64_t need_flags, int only_owner, unsigned owner)
{
	for (uint32_t i = 0; i < p->g.nslots; i++) {
		uint64_t w = atomic_load_explicit(&p->g.slots[i].word, memory_order_relaxed);
		if (sw_state(w) != S_DONE)
			continue;
		if (need_flags && !(w & need_flags))
			continue;
		if (only_owner && sw_owner(w) != owner)
			continue;
		try_collect(p, i, sw_gen(w));
	}
}

/*
 * Orphan the running slot @idx of generation @gen: its handle settles now
 * with @err; the worker's eventual result is dropped; a process worker is
 * killed if it is still at it after the grace period. Returns 0, or
 * -EALREADY when the slot is not running that task any more.
 */
static int orphan(struct ferry_pool *p, uint32_t idx, uint32_t gen, int err, const char *text)
{
	struct pool_slot *s = &p->g.slots[idx];
	struct pslot *ps = &p->ps[idx];
	uint64_t w = atomic_load_explicit(&s->word, memory_order_acquire);
	struct ferry_pool_task *t;
	for (;;) {
		if (sw_gen(w) != gen || sw_state(w) != S_RUNNING || (w & SW_F_ORPHAN))
			return -EALREADY;
		/* Read before the CAS: while it is RUNNING in @gen the link is
		 * this task's (it is cleared only after DONE). */
		t = atomic_load_explicit(&ps->task, memory_order_acquire);
		/* acq_rel: the worker's DONE CAS after ours sees ORPHAN. */
		if (atomic_compare_exchange_weak_explicit(&s->word, &w, w | SW_F_ORPHAN, memory_order_acq_rel,
							  memory_order_acquire))
			break;
	}
	/* release: pairs with the task's acquire load (ferry_pool_ctx_aborted). */
	__atomic_store_n(&s->abort, 1, __ATOMIC_RELEASE);
	ferry_notify(&s->abort, FERRY_NOTIFY_ALL);
	if (p->backend == FERRY_PROCESS && p->grace_ns >= 0)
		atomic_store_explicit(&ps->kill_at, now_ns() + p->grace_ns, memory_order_relaxed);
	if (t && !(w & SW_F_ABANDON)) {
		int64_t ts = atomic_load_explicit(&s->t_submit, memory_order_relaxed);
		int64_t t0 = atomic_load_explicit(&s->t_start, memory_order_relaxed);
		t->wait_ns = t0 > ts ? t0 - ts : 0;
		t->run_ns = t0 > 0 ? now_ns() - t0 : 0;
		settle(p, t, idx, err, text, NULL, NULL, NULL);
		task_unref(t);
	} else if (t) { /* abandoned: nobody waits; count it and let it go */
		count_outcome(p, err);
		task_unref(t);
	}
	ferry_ec_notify(&p->g.hdr->done_ec);
	pool_kick(p->g.hdr); /* the manager keeps the kill deadline */
	return 0;
}

/* ---- workers ---- */

static int spawn_worker(struct ferry_pool *p, unsigned seat)
{
	struct pool_seat *st = &p->g.seats[seat];
	atomic_store_explicit(&st->retire, 0, memory_order_relaxed);
	atomic_store_explicit(&st->idle, 0, memory_order_relaxed);
	atomic_store_explicit(&st->running, 0, memory_order_relaxed);
	atomic_store_explicit(&st->last_active, now_ns(), memory_order_relaxed);
	struct pool_wcfg *cfg = (struct pool_wcfg *)p->wcfg;
	unsigned no = ++p->next_no;
	cfg->seat = seat;
	cfg->worker_no = no;
	cfg->shared = NULL;
	if (p->backend == FERRY_THREAD) {
		int rc = ferry_buf_share(p->shbuf, &cfg->shared);
		if (rc)
			return rc;
	}
	char name[64];
	snprintf(name, sizeof name, "%s-%u", p->name, no);
	/* workerData: a process worker gets the shared layout through it (with
	 * the pool's value beside it when there is one); a thread worker gets
	 * the layout in cfg and the pool's value alone. */
	const ferry_value *wd;
	if (p->backend == FERRY_PROCESS)
		wd = p->wd_arr ? p->wd_arr : p->shval;
	else
		wd = p->wd_arr ? ferry_value_array_get(p->wd_arr, 1) : NULL;
	struct ferry_worker_opts wo = {
		.backend = p->backend,
		.entry = ferry__pool_worker_main,
		.data = p->wcfg,
		.data_len = p->wcfg_len,
		.value = wd,
		.name = name,
		.arg = p->user,
		.stack_size = p->stack_size,
		.max_address_space = p->max_as,
		.max_open_files = p->max_nofile,
		.spawn = p->spawn,
	};
	ferry_worker *w;
	int rc = ferry_worker_spawn(&w, &wo);
	if (rc) {
		ferry_buf_free(cfg->shared); /* thread: the worker never got it */
		return rc;
	}
	struct pworker *pw = &p->wk[seat];
	memset(pw, 0, sizeof *pw);
	pw->w = w;
	pw->no = no;
	pw->pid = ferry_worker_pid(w);
	atomic_fetch_add_explicit(&p->live, 1, memory_order_relaxed);
	atomic_fetch_add_explicit(&p->spawned, 1, memory_order_relaxed);
	pthread_mutex_lock(&p->lock);
	p->pids[seat] = pw->pid;
	pthread_mutex_unlock(&p->lock);
	return 0;
}

static int free_seat(struct ferry_pool *p)
{
	for (int i = 0; i < p->max_w; i++)
		if (!p->wk[i].w)
			return i;
	return -1;
}

static unsigned idle_runners(struct ferry_pool *p)
{
	unsigned n = 0;
	for (int i = 0; i < p->max_w; i++)
		n += atomic_load_explicit(&p->g.seats[i].idle, memory_order_relaxed);
	return n;
}

/* Fetch: post the stashed value of @r's slot to the worker (or "none"). */
static void answer_fetch(struct ferry_pool *p, struct pworker *pw, unsigned seat,
			 const struct pool_req *r)
{
	ferry_msg *m = NULL;
	if (r->slot < p->g.nslots && r->seat == seat) {
		uint64_t w = atomic_load_explicit(&p->g.slots[r->slot].word, memory_order_acquire);
		if (sw_gen(w) == r->gen && sw_state(w) == S_RUNNING && sw_owner(w) == seat) {
			pthread_mutex_lock(&p->lock);
			m = p->ps[r->slot].stash;
			p->ps[r->slot].stash = NULL;
			pthread_mutex_unlock(&p->lock);
		}
	}
	ferry_port *port = ferry_worker_port(pw->w);
	int rc = -ENOENT;
	if (m) {
		/* Every buffer and port of the stashed message moves on (they were
		 * cloned or transferred into it already); shared ones are shared. */
		size_t nb = 0, np = 0;
		ferry_buf **bufs = calloc(m->nhandles + 1, sizeof *bufs);
		ferry_port **ports = calloc(m->nhandles + 1, sizeof *ports);
		if (bufs && ports) {
			for (size_t i = 0; i < m->nhandles; i++) {
				struct msg_handle *h = &m->handles[i];
				if (h->kind == FERRY_VALUE_BUF)
					bufs[nb++] = h->handle;
				else if (h->kind == FERRY_VALUE_PORT)
					ports[np++] = h->handle;
			}
			struct ferry_xfer x = { (struct ferry_buf *const *)bufs, nb,
						(ferry_port *const *)ports, np };
			const ferry_value *v = ferry_msg_value(m);
			ferry_value *undef = v ? NULL : ferry_value_undefined();
			rc = ferry_port_post(port, v ? v : undef, &x, 1000LL * 1000 * 1000);
			ferry_value_free(undef);
		}
		free(bufs);
		free(ports);
		ferry_msg_free(m); /* detached handles go with it */
	}
	if (rc) {
		uint32_t none = POOL_REP_NONE;
		ferry_port_post_bytes(port, &none, sizeof none, 1000LL * 1000 * 1000);
	}
}

/* A result through the port: [slot, gen, value]. Takes @m. */
static void take_result(struct ferry_pool *p, unsigned seat, ferry_msg *m)
{
	const ferry_value *root = ferry_msg_value(m);
	int64_t si = -1, gi = -1;
	if (ferry_value_get_int(ferry_value_array_get(root, 0), &si) ||
	    ferry_value_get_int(ferry_value_array_get(root, 1), &gi) || si < 0 ||
	    si >= (int64_t)p->g.nslots || gi < 0 || gi > UINT32_MAX) {
		ferry_msg_free(m);
		return;
	}
	uint32_t idx = (uint32_t)si, gen = (uint32_t)gi;
	struct pool_slot *s = &p->g.slots[idx];
	_Atomic uint64_t *wp = &s->word;
	uint64_t w = atomic_load_explicit(wp, memory_order_acquire);
	if (sw_gen(w) != gen || sw_state(w) != S_RUNNING || sw_owner(w) != seat) {
		ferry_msg_free(m);
		return;
	}
	pthread_mutex_lock(&p->lock);
	ferry_msg *old = p->ps[idx].res;
	p->ps[idx].res = m;
	pthread_mutex_unlock(&p->lock);
	ferry_msg_free(old);
	s->err = 0;
	s->res_kind = V_OOL;
	s->res_len = 0;
	while (sw_state(w) == S_RUNNING && sw_gen(w) == gen) {
		/* release: the stored result before DONE (collector's acquire). */
		if (atomic_compare_exchange_weak_explicit(wp, &w, (w & ~SW_STATE_MASK) | S_DONE,
							  memory_order_acq_rel, memory_order_acquire)) {
			w = (w & ~SW_STATE_MASK) | S_DONE;
			break;
		}
	}
	ferry_ec_notify(&s->ec);
	ferry_ec_notify(&p->g.hdr->done_ec);
	if (w & SW_F_MGR)
		try_collect(p, idx, gen);
}

/* Read what worker @seat posted (results, fetch requests, errors) without
 * waiting. @dead: it is gone; do not answer. Returns 1 when EXIT was seen. */
static int drain_worker(struct ferry_pool *p, unsigned seat, int dead)
{
	struct pworker *pw = &p->wk[seat];
	for (int i = 0; i < 4096; i++) {
		struct ferry_worker_event ev;
		int rc = ferry_worker_next(pw->w, &ev, 0);
		if (rc)
			return 0;
		switch (ev.type) {
		case FERRY_WORKER_MESSAGE: {
			const ferry_value *v = ferry_msg_value(ev.msg);
			if (v) {
				take_result(p, seat, ev.msg);
				break;
			}
			struct pool_req r;
			if (!dead && ferry_msg_len(ev.msg) == sizeof r) {
				memcpy(&r, ferry_msg_data(ev.msg), sizeof r);
				if (r.kind == POOL_REQ_FETCH)
					answer_fetch(p, pw, seat, &r);
			}
			ferry_msg_free(ev.msg);
			break;
		}
		case FERRY_WORKER_ERROR:
		case FERRY_WORKER_MESSAGEERROR:
			snprintf(pw->err, sizeof pw->err, "%s", ev.text);
			break;
		case FERRY_WORKER_EXIT:
			return 1;
		default:
			break;
		}
	}
	return 0;
}

/* Put back (never started) or fail (started) what worker @seat held, after
 * it ended; free the seat. @st NULL: it was retired normally. */
static void sweep_worker(struct ferry_pool *p, unsigned seat, const struct ferry_worker_status *st)
{
	struct pworker *pw = &p->wk[seat];
	if (st) /* counted before anyone can see the failed tasks */
		atomic_fetch_add_explicit(&p->crashes, 1, memory_order_relaxed);
	pthread_mutex_lock(&p->lock);
	p->pids[seat] = 0; /* not a live worker any more */
	pthread_mutex_unlock(&p->lock);
	drain_worker(p, seat, 1);
	char text[POOL_TEXT];
	death_text(p, pw, st, text, sizeof text);
	const struct pool_geo *g = &p->g;
	/* 1. Queue cells it claimed: the task goes back if it never started. */
	for (uint32_t i = 0; i < g->ncells; i++) {
		_Atomic uint64_t *c = &g->q->cells[i];
		uint64_t w = atomic_load_explicit(c, memory_order_acquire);
		if (cw_state(w) != C_TAKEN || cw_owner(w) != seat)
			continue;
		uint32_t idx = cw_slot(w);
		int requeue = idx < g->nslots &&
			      sw_state(atomic_load_explicit(&g->slots[idx].word, memory_order_acquire)) == S_QUEUED;
		uint64_t e = cw_make(cw_pos(w) + g->ncells, C_EMPTY, 0, 0);
		if (atomic_compare_exchange_strong_explicit(c, &w, e, memory_order_acq_rel, memory_order_relaxed) &&
		    requeue && ferry__pool_q_push(g, idx) == 0)
			ferry_ec_notify(&g->q->not_empty);
	}
	/* 2. Tasks it was running fail with the cause. */
	for (uint32_t i = 0; i < g->nslots; i++) {
		struct pool_slot *s = &g->slots[i];
		uint64_t w = atomic_load_explicit(&s->word, memory_order_acquire);
		while (sw_state(w) == S_RUNNING && sw_owner(w) == seat) {
			if (!(w & SW_F_ORPHAN)) {
				s->err = FERRY_EWORKER;
				memcpy(s->text, text, sizeof s->text);
				s->res_kind = V_NONE;
				if (!atomic_load_explicit(&s->t_end, memory_order_relaxed))
					atomic_store_explicit(&s->t_end, now_ns(), memory_order_relaxed);
			}
			if (atomic_compare_exchange_weak_explicit(&s->word, &w, (w & ~SW_STATE_MASK) | S_DONE,
								  memory_order_acq_rel, memory_order_acquire)) {
				ferry_ec_notify(&s->ec);
				if (w & SW_F_MGR)
					try_collect(p, i, sw_gen(w));
				break;
			}
		}
	}
	/* 3. Spinner tokens it held. */
	for (uint32_t i = 0; i < g->hdr->nspin_tok && i < POOL_SPIN_TOKENS; i++) {
		uint32_t mine = seat + 1;
		atomic_compare_exchange_strong_explicit(&g->hdr->spin_tok[i], &mine, 0, memory_order_seq_cst,
							memory_order_relaxed);
	}
	/* 4. Finished tasks whose completion record it may not have pushed. */
	harvest(p, SW_F_MGR, 1, seat);
	ferry_ec_notify(&g->hdr->done_ec);
	struct pool_seat *ss = &g->seats[seat];
	atomic_store_explicit(&ss->idle, 0, memory_order_relaxed);
	atomic_store_explicit(&ss->running, 0, memory_order_relaxed);
	atomic_store_explicit(&ss->retire, 0, memory_order_relaxed);
	ferry_worker_destroy(pw->w);
	pw->w = NULL;
	atomic_fetch_sub_explicit(&p->live, 1, memory_order_relaxed);
}

/* Has worker @seat ended? Sweep it if so. */
static void watch_worker(struct ferry_pool *p, unsigned seat)
{
	struct pworker *pw = &p->wk[seat];
	struct ferry_worker_status st;
	if (ferry_worker_join(pw->w, &st, 0))
		return;
	int retired = atomic_load_explicit(&p->g.seats[seat].retire, memory_order_relaxed) &&
		      !st.signal && st.code == 0;
	/* A worker that could not even set up (its codes 70..72) would be
	 * replaced by one that fails the same way: back off, up to a second. */
	if (!st.signal && st.code >= 70 && st.code <= 72) {
		if (p->fast_fail < 7)
			p->fast_fail++;
		p->respawn_after = now_ns() + (10LL * 1000 * 1000 << p->fast_fail);
	} else if (!st.signal && st.code == 0) {
		p->fast_fail = 0;
	}
	sweep_worker(p, seat, retired ? NULL : &st);
}

/* Run-time limits and kill escalation; returns the next deadline (or 0). */
static int64_t watch_times(struct ferry_pool *p, int64_t now)
{
	int64_t next = 0;
	const struct pool_geo *g = &p->g;
	int timeouts = atomic_load_explicit(&p->timeouts_used, memory_order_relaxed);
	for (uint32_t i = 0; i < g->nslots; i++) {
		struct pool_slot *s = &g->slots[i];
		uint64_t w = atomic_load_explicit(&s->word, memory_order_acquire);
		if (sw_state(w) != S_RUNNING)
			continue;
		if (w & SW_F_ORPHAN) {
			int64_t k = atomic_load_explicit(&p->ps[i].kill_at, memory_order_relaxed);
			if (!k || p->backend != FERRY_PROCESS)
				continue;
			if (now >= k) {
				unsigned seat = sw_owner(w);
				if (seat < (unsigned)p->max_w && p->wk[seat].w && !p->wk[seat].killed) {
					p->wk[seat].killed = 1;
					kill(p->wk[seat].pid, SIGKILL);
				}
				atomic_store_explicit(&p->ps[i].kill_at, 0, memory_order_relaxed);
			} else if (!next || k < next) {
				next = k;
			}
			continue;
		}
		/* relaxed: a stale read is harmless, orphan() checks the generation. */
		int64_t limit = atomic_load_explicit(&s->timeout_ns, memory_order_relaxed);
		if (!timeouts || limit <= 0)
			continue;
		int64_t t0 = atomic_load_explicit(&s->t_start, memory_order_acquire);
		if (!t0)
			continue;
		int64_t due = t0 + limit;
		if (now >= due) {
			char text[POOL_TEXT];
			snprintf(text, sizeof text, "the task ran longer than its limit of %.3f s",
				 (double)limit / 1e9);
			orphan(p, i, sw_gen(w), -ETIME, text);
		} else if (!next || due < next) {
			next = due;
		}
	}
	return next;
}

/* Run the queued callbacks (and retry the posts of loop callbacks that
 * failed: @final, at destroy, runs those here if the post fails again). */
static void run_callbacks(struct ferry_pool *p, int final)
{
	struct ferry_pool_task *retry = NULL, **rtail = &retry;
	for (;;) {
		pthread_mutex_lock(&p->lock);
		struct ferry_pool_task *t = p->cbq_head;
		if (t) {
			p->cbq_head = t->cb_next;
			if (!p->cbq_head)
				p->cbq_tail = NULL;
		}
		pthread_mutex_unlock(&p->lock);
		if (!t)
			break;
		if (t->loop && post_to_loop(t) == 0)
			continue;
		if (t->loop && !final) {
			t->cb_next = NULL;
			*rtail = t;
			rtail = &t->cb_next;
			continue;
		}
		t->cb(t, t->cb_arg);
		task_unref(t); /* the callback's reference */
	}
	while (retry) { /* back in the queue for the next pass */
		struct ferry_pool_task *t = retry;
		retry = t->cb_next;
		queue_callback(p, t);
	}
}

/* Start workers up to the minimum, and more while tasks wait for one. */
static void balance(struct ferry_pool *p, int64_t now)
{
	if (atomic_load_explicit(&p->closing, memory_order_relaxed) || now < p->respawn_after)
		return;
	int live = atomic_load_explicit(&p->live, memory_order_relaxed);
	while (live < p->min_w) {
		int seat = free_seat(p);
		if (seat < 0 || spawn_worker(p, (unsigned)seat))
			return;
		live++;
	}
	uint64_t queued = ferry__pool_q_len(&p->g);
	unsigned idle = idle_runners(p);
	if (queued > idle) {
		uint64_t want = (queued - idle + (uint64_t)p->conc - 1) / (uint64_t)p->conc;
		while (want-- && live < p->max_w) {
			int seat = free_seat(p);
			if (seat < 0 || spawn_worker(p, (unsigned)seat))
				return;
			live++;
		}
		return;
	}
	/* Retire one idle worker above the minimum per pass. */
	if (p->idle_ns < 0 || live <= p->min_w || queued)
		return;
	for (int i = 0; i < p->max_w; i++) {
		struct pool_seat *s = &p->g.seats[i];
		if (!p->wk[i].w || atomic_load_explicit(&s->retire, memory_order_relaxed))
			continue;
		if (atomic_load_explicit(&s->running, memory_order_relaxed) ||
		    atomic_load_explicit(&s->idle, memory_order_relaxed) < (unsigned)p->conc)
			continue;
		if (now - atomic_load_explicit(&s->last_active, memory_order_relaxed) < p->idle_ns)
			continue;
		atomic_store_explicit(&s->retire, 1, memory_order_relaxed);
		/* Wake it (every sleeper re-checks; only this one leaves). */
		ferry_ec_notify(&p->g.q->not_empty);
		return;
	}
}

/* One pass of the manager's work; returns how long it may sleep. */
static int64_t mgr_pass(struct ferry_pool *p)
{
	const struct pool_geo *g = &p->g;
	/* Completion records. */
	struct pool_comp recs[64];
	for (int rounds = 0; rounds < 1024; rounds++) {
		int n = ferry_ring_mpmc_pop_batch(g->comp, recs, sizeof recs[0], 64);
		if (n <= 0) {
			/* A record stuck behind a producer that died mid-push is
			 * recovered by the ring after a few sightings. */
			if (n == -EAGAIN && ferry_ring_mpmc_used(g->comp) && rounds < 100)
				continue;
			break;
		}
		for (int i = 0; i < n; i++)
			if (recs[i].slot < g->nslots)
				try_collect(p, recs[i].slot, recs[i].gen);
	}
	/* Ports: fetch requests, results, errors. */
	for (int i = 0; i < p->max_w; i++)
		if (p->wk[i].w)
			drain_worker(p, (unsigned)i, 0);
	/* A safety net for wake-ups: tasks queued, runners asleep. */
	if (ferry__pool_q_len(g) && !pool_spinning(g->hdr))
		ferry_ec_notify(&g->q->not_empty);
	int64_t now = now_ns();
	/* Liveness, at most once a millisecond. */
	if (now - p->last_watch >= 1000000) {
		p->last_watch = now;
		for (int i = 0; i < p->max_w; i++)
			if (p->wk[i].w)
				watch_worker(p, (unsigned)i);
	}
	/* Run-time limits, also at most once a millisecond (a scan of the slots). */
	if (now - p->last_times >= 1000000 || (p->next_times && now >= p->next_times)) {
		p->last_times = now;
		p->next_times = watch_times(p, now);
	}
	int64_t next = p->next_times;
	if (next && next < now + 1000000)
		next = now + 1000000;
	run_callbacks(p, 0);
	balance(p, now);
	/* Drain notification. */
	uint64_t tail = atomic_load_explicit(&g->q->tail, memory_order_acquire);
	if (p->on_drain && ferry__pool_q_len(g) == 0 && tail != p->drain_seen_tail) {
		p->drain_seen_tail = tail;
		p->on_drain(p, p->drain_arg);
	}
	/* How long to sleep: short while tasks run (crash detection). */
	int busy = 0;
	for (int i = 0; i < p->max_w && !busy; i++)
		busy = p->wk[i].w && atomic_load_explicit(&g->seats[i].running, memory_order_relaxed);
	int64_t slice = busy || ferry__pool_q_len(g) ? BUSY_SLICE_NS : IDLE_SLICE_NS;
	if (next) {
		int64_t left = next - now_ns();
		if (left < slice)
			slice = left > 0 ? left : 0;
	}
	return slice;
}

static void *mgr_main(void *arg)
{
	struct ferry_pool *p = arg;
	mgr_of_thread = p;
	struct pool_hdr *h = p->g.hdr;
	while (!atomic_load_explicit(&p->stop, memory_order_acquire)) {
		/* acquire: pairs with pool_kick's release. */
		uint32_t seen = atomic_load_explicit(&h->mgr_kick, memory_order_acquire);
		int64_t slice = mgr_pass(p);
		if (slice <= 0)
			continue;
		uint32_t key = ferry_ec_prepare(&h->mgr_ec);
		if (atomic_load_explicit(&h->mgr_kick, memory_order_acquire) != seen ||
		    atomic_load_explicit(&p->stop, memory_order_acquire)) {
			ferry_ec_cancel(&h->mgr_ec);
			continue;
		}
		ferry_ec_wait(&h->mgr_ec, key, slice);
	}
	mgr_of_thread = NULL;
	return NULL;
}

/* ---- create ---- */

static int ncpus(void)
{
	long n = sysconf(_SC_NPROCESSORS_ONLN);
	return n > 0 ? (int)n : 1;
}

static size_t up64(size_t n)
{
	return (n + 63) & ~(size_t)63;
}

static int check_time(const char *field, int64_t v, int forever_ok)
{
	if (v < 0 && !(forever_ok && v == FERRY_FOREVER))
		return ferry__fail(-EINVAL, "ferry_pool_create: opts.%s %lld is negative%s", field,
				   (long long)v, forever_ok ? " (only FERRY_FOREVER may be)" : "");
	return 0;
}

static int resolve(struct ferry_pool *p, const struct ferry_pool_opts *o)
{
	if (o->backend != FERRY_THREAD && o->backend != FERRY_PROCESS)
		return ferry__fail(-EINVAL, "ferry_pool_create: opts.backend %d is not FERRY_THREAD or FERRY_PROCESS",
				   o->backend);
	if (!o->fn)
		return ferry__fail(-EINVAL, "ferry_pool_create: opts.fn is NULL");
	if (o->max_workers < 0 || o->max_workers > FERRY_POOL_MAX_WORKERS)
		return ferry__fail(-EINVAL, "ferry_pool_create: opts.max_workers %d is not in [0, %d]",
				   o->max_workers, FERRY_POOL_MAX_WORKERS);
	if (o->min_workers < FERRY_POOL_MIN_NONE || o->min_workers > FERRY_POOL_MAX_WORKERS)
		return ferry__fail(-EINVAL, "ferry_pool_create: opts.min_workers %d is not in [%d, %d]",
				   o->min_workers, FERRY_POOL_MIN_NONE, FERRY_POOL_MAX_WORKERS);
	if (o->max_workers && o->min_workers > o->max_workers)
		return ferry__fail(-EINVAL, "ferry_pool_create: opts.min_workers %d is above opts.max_workers %d",
				   o->min_workers, o->max_workers);
	if (o->concurrency < 0 || o->concurrency > FERRY_POOL_MAX_CONCURRENCY)
		return ferry__fail(-EINVAL, "ferry_pool_create: opts.concurrency %d is not in [0, %d]",
				   o->concurrency, FERRY_POOL_MAX_CONCURRENCY);
	if (o->max_queue > FERRY_POOL_MAX_QUEUE)
		return ferry__fail(-EINVAL, "ferry_pool_create: opts.max_queue %zu is above %zu", o->max_queue,
				   FERRY_POOL_MAX_QUEUE);
	if (o->inline_bytes > FERRY_POOL_INLINE_MAX)
		return ferry__fail(-EINVAL, "ferry_pool_create: opts.inline_bytes %zu is above %zu",
				   o->inline_bytes, FERRY_POOL_INLINE_MAX);
	if (!o->data && o->data_len)
		return ferry__fail(-EINVAL, "ferry_pool_create: opts.data is NULL with opts.data_len %zu",
				   o->data_len);
	if (o->data_len > FERRY_WORKER_DATA_MAX - sizeof(struct pool_wcfg))
		return ferry__fail(-EINVAL, "ferry_pool_create: opts.data_len %zu is above %zu", o->data_len,
				   FERRY_WORKER_DATA_MAX - sizeof(struct pool_wcfg));
	if (o->stack_size && o->stack_size < (size_t)PTHREAD_STACK_MIN)
		return ferry__fail(-EINVAL, "ferry_pool_create: opts.stack_size %zu is below the minimum %zu",
				   o->stack_size, (size_t)PTHREAD_STACK_MIN);
	if (o->backend == FERRY_THREAD && (o->max_address_space || o->max_open_files))
		return ferry__fail(-EINVAL, "ferry_pool_create: opts.%s applies to process workers only",
				   o->max_address_space ? "max_address_space" : "max_open_files");
	if (o->spawn != FERRY_SPAWN_AUTO && o->spawn != FERRY_SPAWN_FORK && o->spawn != FERRY_SPAWN_SERVER)
		return ferry__fail(-EINVAL, "ferry_pool_create: opts.spawn %d is not a ferry_spawn", o->spawn);
	if (o->backend == FERRY_THREAD && o->spawn != FERRY_SPAWN_AUTO)
		return ferry__fail(-EINVAL, "ferry_pool_create: opts.spawn applies to process workers only");
	if (o->spawn == FERRY_SPAWN_SERVER && o->arg)
		return ferry__fail(-EINVAL, "ferry_pool_create: opts.arg must be NULL with FERRY_SPAWN_SERVER "
					    "(a worker started by the fork server cannot see the caller's memory)");
	int rc;
	if ((rc = check_time("idle_timeout_ns", o->idle_timeout_ns, 1)) ||
	    (rc = check_time("queue_wait_ns", o->queue_wait_ns, 1)) ||
	    (rc = check_time("task_timeout_ns", o->task_timeout_ns, 0)) ||
	    (rc = check_time("kill_grace_ns", o->kill_grace_ns, 1)) ||
	    (rc = check_time("spin_ns", o->spin_ns, 0)))
		return rc;
	int cpus = ncpus();
	p->backend = o->backend;
	p->fn = o->fn;
	snprintf(p->name, sizeof p->name, "%s", o->name ? o->name : "pool");
	p->max_w = o->max_workers ? o->max_workers : (cpus * 3 + 1) / 2;
	if (p->max_w < 1)
		p->max_w = 1;
	if (o->min_workers == FERRY_POOL_MIN_NONE)
		p->min_w = 0;
	else if (o->min_workers)
		p->min_w = o->min_workers;
	else
		p->min_w = cpus / 2 > 1 ? cpus / 2 : 1;
	if (p->max_w < p->min_w) {
		if (o->max_workers)
			p->min_w = p->max_w;
		else
			p->max_w = p->min_w;
	}
	if (p->max_w > FERRY_POOL_MAX_WORKERS)
		p->max_w = FERRY_POOL_MAX_WORKERS;
	p->conc = o->concurrency ? o->concurrency : 1;
	p->idle_ns = o->idle_timeout_ns ? o->idle_timeout_ns : DEFAULT_IDLE_NS;
	p->qwait_ns = o->queue_wait_ns;
	p->task_timeout_ns = o->task_timeout_ns;
	p->grace_ns = o->kill_grace_ns ? o->kill_grace_ns : DEFAULT_GRACE_NS;
	p->spin_ns = o->spin_ns ? o->spin_ns : DEFAULT_SPIN_NS;
	if (p->spin_ns > 1000LL * 1000 * 1000)
		return ferry__fail(-EINVAL, "ferry_pool_create: opts.spin_ns %lld is above one second",
				   (long long)p->spin_ns);
	p->max_queue = o->max_queue ? o->max_queue : FERRY_POOL_QUEUE_DEFAULT;
	p->user = o->arg;
	p->on_drain = o->on_drain;
	p->drain_arg = o->drain_arg;
	p->stack_size = o->stack_size;
	p->max_as = o->max_address_space;
	p->max_nofile = o->max_open_files;
	p->spawn = o->spawn;
	if (p->task_timeout_ns)
		atomic_store_explicit(&p->timeouts_used, 1, memory_order_relaxed);
	return 0;
}

static int make_layout(struct ferry_pool *p, const struct ferry_pool_opts *o)
{
	size_t capacity = (size_t)p->max_w * (size_t)p->conc;
	/* Slots: the queue, the running tasks, and as many orphans still running. */
	size_t nslots = p->max_queue + 2 * capacity + 1;
	if (nslots > POOL_MAX_SLOTS)
		nslots = POOL_MAX_SLOTS;
	size_t ncells = 2;
	while (ncells < 2 * nslots)
		ncells <<= 1;
	size_t ncomp = 2;
	while (ncomp < 2 * nslots)
		ncomp <<= 1;
	size_t ib = up64(o->inline_bytes ? o->inline_bytes : FERRY_POOL_INLINE_DEFAULT);
	size_t comp_size = ferry_ring_mpmc_memsize(ncomp, sizeof(struct pool_comp));
	if (!comp_size)
		return ferry__fail(-EINVAL, "ferry_pool_create: the completion ring cannot hold %zu records", ncomp);
	size_t off = up64(sizeof(struct pool_hdr));
	size_t qo = off;
	off = up64(qo + sizeof(struct pool_queue) + ncells * 8);
	size_t co = off;
	off = up64(co + comp_size);
	size_t so = off;
	off = up64(so + (size_t)p->max_w * sizeof(struct pool_seat));
	size_t lo = off;
	off = up64(lo + nslots * sizeof(struct pool_slot));
	size_t ao = off;
	size_t total = ao + nslots * ib;
	int rc = ferry_buf_create(&p->shbuf, total, FERRY_BUF_SHARED);
	if (rc)
		return rc;
	unsigned char *base = ferry_buf_data(p->shbuf);
	struct pool_hdr *h = (struct pool_hdr *)base;
	h->magic = POOL_MAGIC;
	h->version = POOL_VERSION;
	h->inline_bytes = (uint32_t)ib;
	h->total = total;
	h->nslots = (uint32_t)nslots;
	h->ncells = (uint32_t)ncells;
	h->nseats = (uint32_t)p->max_w;
	h->ncomp = (uint32_t)ncomp;
	h->queue_off = qo;
	h->comp_off = co;
	h->comp_size = comp_size;
	h->seats_off = so;
	h->slots_off = lo;
	h->areas_off = ao;
	int spare = ncpus() - 1;
	h->nspin_tok = (uint32_t)(spare < 1 ? 1 : spare > POOL_SPIN_TOKENS ? POOL_SPIN_TOKENS : spare);
	struct pool_queue *q = (struct pool_queue *)(base + qo);
	for (size_t i = 0; i < ncells; i++)
		atomic_init(&q->cells[i], cw_make((uint32_t)i, C_EMPTY, 0, 0));
	rc = ferry_ring_mpmc_init((ferry_ring_mpmc *)(base + co), comp_size, sizeof(struct pool_comp));
	if (rc == 0)
		rc = ferry__pool_geo(&p->g, base, total) ? -EPROTO : 0;
	if (rc)
		return ferry__fail(rc, "ferry_pool_create: laying out the shared memory failed");
	if (p->on_drain)
		atomic_store_explicit(&h->want_drain, 1, memory_order_relaxed);
	p->shval = ferry_value_handle(FERRY_VALUE_SHARED, p->shbuf);
	p->ps = calloc(nslots, sizeof *p->ps);
	if (!p->shval || !p->ps)
		return ferry__fail(-ENOMEM, "ferry_pool_create: out of memory");
	p->free_head = NO_SLOT;
	for (uint32_t i = (uint32_t)nslots; i-- > 0;) {
		p->ps[i].next_free = p->free_head;
		p->free_head = i;
	}
	atomic_store_explicit(&p->nfree, (uint32_t)nslots, memory_order_relaxed);
	/* The workers' configuration, the pool's data after it. */
	p->wcfg_len = sizeof(struct pool_wcfg) + o->data_len;
	p->wcfg = calloc(1, p->wcfg_len);
	if (!p->wcfg)
		return ferry__fail(-ENOMEM, "ferry_pool_create: out of memory");
	struct pool_wcfg *cfg = (struct pool_wcfg *)p->wcfg;
	cfg->magic = POOL_WCFG_MAGIC;
	cfg->fn = p->fn;
	cfg->concurrency = (uint32_t)p->conc;
	cfg->backend = (uint32_t)p->backend;
	cfg->spin_ns = p->spin_ns;
	cfg->stack_size = p->stack_size;
	cfg->data_len = o->data_len;
	if (o->data_len)
		memcpy(p->wcfg + sizeof *cfg, o->data, o->data_len);
	return 0;
}

static int stash_value(struct ferry_pool *p, const ferry_value *v, const struct ferry_xfer *x,
		       ferry_msg **out);

/* The pool's clone of opts.value, wrapped as [layout handle, value]. */
static int make_worker_value(struct ferry_pool *p, const ferry_value *v)
{
	int rc = stash_value(p, v, NULL, &p->wd_msg);
	if (rc)
		return ferry__fail(rc, "ferry_pool_create: opts.value cannot be cloned: %s", ferry_errmsg());
	/* The graph is ours now; its handles stay the message's (freed last). */
	ferry_value *g = ferry_msg_take_value(p->wd_msg);
	p->wd_arr = ferry_value_array();
	if (!p->wd_arr) {
		ferry_value_free(g);
		return ferry__fail(-ENOMEM, "ferry_pool_create: out of memory");
	}
	/* A push adds to the array's graph even when it fails: no leak. */
	rc = ferry_value_array_push(p->wd_arr, ferry_value_handle(FERRY_VALUE_SHARED, p->shbuf));
	if (ferry_value_array_push(p->wd_arr, g) || rc || !g)
		return ferry__fail(-ENOMEM, "ferry_pool_create: out of memory");
	return 0;
}

static void release_shared(struct ferry_pool *p)
{
	ferry_value_free(p->wd_arr); /* before the message that owns its handles */
	p->wd_arr = NULL;
	ferry_msg_free(p->wd_msg);
	p->wd_msg = NULL;
	if (p->ps)
		for (uint32_t i = 0; i < p->g.nslots; i++) {
			ferry_msg_free(p->ps[i].stash);
			ferry_msg_free(p->ps[i].res);
			p->ps[i].stash = p->ps[i].res = NULL;
		}
	ferry_port_destroy(p->lb_tx);
	ferry_port_destroy(p->lb_rx);
	p->lb_tx = p->lb_rx = NULL;
	ferry_value_free(p->shval);
	p->shval = NULL;
	ferry_buf_free(p->shbuf);
	p->shbuf = NULL;
}

static void stop_workers(struct ferry_pool *p);

FERRY_API int ferry_pool_create(ferry_pool **out, const struct ferry_pool_opts *o)
{
	if (out)
		*out = NULL;
	if (!out)
		return ferry__fail(-EINVAL, "ferry_pool_create: out is NULL");
	if (!o)
		return ferry__fail(-EINVAL, "ferry_pool_create: opts is NULL");
	struct ferry_pool *p = calloc(1, sizeof *p);
	if (!p)
		return ferry__fail(-ENOMEM, "ferry_pool_create: out of memory");
	atomic_init(&p->refs, 1);
	pthread_mutex_init(&p->lock, NULL);
	pthread_mutex_init(&p->stash_mu, NULL);
	p->t_create = now_ns();
	int rc = resolve(p, o);
	if (rc == 0)
		rc = make_layout(p, o);
	if (rc == 0 && o->value)
		rc = make_worker_value(p, o->value);
	/* The first workers start here, from the caller's thread (a process
	 * worker forked before the manager thread exists forks a parent with
	 * one thread less). */
	for (int i = 0; rc == 0 && i < p->min_w; i++)
		rc = spawn_worker(p, (unsigned)i);
	if (rc == 0) {
		int e = pthread_create(&p->mgr, NULL, mgr_main, p);
		if (e)
			rc = ferry__errno(-e, "ferry_pool_create: starting the manager thread");
		else
			p->mgr_running = 1;
	}
	if (rc) {
		atomic_store_explicit(&p->closing, 1, memory_order_relaxed);
		if (p->g.hdr)
			stop_workers(p);
		release_shared(p);
		pool_unref(p);
		return rc;
	}
	*out = p;
	return 0;
}

/* ---- submit ---- */

/* Move a value that needs the port into a message of our own (clone and
 * transfer happen now, as the caller expects). */
static int stash_value(struct ferry_pool *p, const ferry_value *v, const struct ferry_xfer *x,
		       ferry_msg **out)
{
	pthread_mutex_lock(&p->stash_mu);
	int rc = 0;
	if (!p->lb_tx)
		rc = ferry_channel(&p->lb_tx, &p->lb_rx, NULL);
	if (rc == 0)
		rc = ferry_port_post(p->lb_tx, v, x, 0);
	if (rc == 0)
		rc = ferry_port_recv(p->lb_rx, out, 0);
	pthread_mutex_unlock(&p->stash_mu);
	return rc;
}

static int queue_full(struct ferry_pool *p)
{
	return ferry__pool_q_len(&p->g) >= p->max_queue;
}

/* Wait for queue room and a slot; returns the slot or a negative code. */
static int64_t get_slot(struct ferry_pool *p)
{
	int64_t deadline = p->qwait_ns > 0 ? now_ns() + p->qwait_ns : 0;
	struct pool_hdr *h = p->g.hdr;
	for (int harvested = 0;;) {
		if (atomic_load_explicit(&p->closing, memory_order_relaxed))
			return ferry__fail(-EPIPE, "ferry_pool_submit: the pool is being destroyed");
		if (!queue_full(p)) {
			uint32_t idx = slot_alloc(p);
			if (idx != NO_SLOT)
				return idx;
			if (!harvested) { /* finished tasks nobody collected yet */
				harvest(p, 0, 0, 0);
				harvested = 1;
				continue;
			}
		}
		if (p->qwait_ns == 0) /* a constant message: this is a hot path for producers */
			return ferry__fail(-EAGAIN, "ferry_pool_submit: the queue is full");
		int64_t left = deadline ? deadline - now_ns() : -1;
		if (deadline && left <= 0)
			return ferry__fail(-ETIMEDOUT, "ferry_pool_submit: the queue stayed full (%zu tasks waiting)",
					   p->max_queue);
		/* Room appears when a worker takes a task (space_ec) or a slot is
		 * freed after a task ends (done_ec): sleep on one, briefly. */
		uint32_t key = ferry_ec_prepare(&h->space_ec);
		if (!queue_full(p) && atomic_load_explicit(&p->nfree, memory_order_relaxed)) {
			ferry_ec_cancel(&h->space_ec);
		} else {
			int64_t nap = left < 0 || left > 1000000 ? 1000000 : left;
			ferry_ec_wait(&h->space_ec, key, nap);
		}
		harvested = 0;
	}
}

FERRY_API int ferry_pool_submit_ex(ferry_pool *p, const ferry_value *v, const struct ferry_xfer *x,
				   const struct ferry_pool_submit_opts *so, ferry_pool_task **out)
{
	if (out)
		*out = NULL;
	if (!p)
		return ferry__fail(-EINVAL, "ferry_pool_submit: pool is NULL");
	if (x && !v)
		return ferry__fail(-EINVAL, "ferry_pool_submit: a transfer list without a value");
	if (so && so->timeout_ns < 0 && so->timeout_ns != FERRY_FOREVER)
		return ferry__fail(-EINVAL, "ferry_pool_submit: opts.timeout_ns %lld is negative",
				   (long long)so->timeout_ns);
	if (so && so->loop && !so->done)
		return ferry__fail(-EINVAL, "ferry_pool_submit: opts.loop without opts.done");
	int xhandles = x && (x->nbufs || x->nports);
	struct ferry_pool_task *t = task_alloc(p);
	if (!t)
		return ferry__fail(-ENOMEM, "ferry_pool_submit: out of memory");
	int64_t r = get_slot(p);
	if (r < 0) {
		free(t);
		return (int)r;
	}
	/* (a cached handle's tail fields are set below before use) */
	uint32_t idx = (uint32_t)r;
	struct pool_slot *s = &p->g.slots[idx];
	/* acquire: pairs with slot_free's release; the slot is ours. */
	uint64_t w = atomic_load_explicit(&s->word, memory_order_acquire);
	uint32_t gen = sw_gen(w);
	uint32_t kind = V_NONE, len = 0;
	ferry_msg *stash = NULL;
	int rc = 0;
	if (v && !xhandles) {
		size_t n = 0;
		rc = ferry_clone_encode(v, pool_area(&p->g, idx), p->g.inline_bytes, &n, NULL, NULL);
		if (rc == 0) {
			kind = V_INLINE;
			len = (uint32_t)n;
		} else if (rc == -ENOBUFS || rc == FERRY_ENOTCLONEABLE) {
			rc = 0;
			kind = V_OOL;
		}
	} else if (v) {
		kind = V_OOL;
	}
	if (rc == 0 && kind == V_OOL)
		rc = stash_value(p, v, x, &stash);
	if (rc) {
		/* Nothing moved: post is all or nothing. */
		slot_free(p, idx, sw_make(gen - 1, 0, 0, S_FREE));
		free(t);
		return rc;
	}
	t->pool = p;
	t->slot = idx;
	t->gen = gen;
	t->cb = so ? so->done : NULL;
	t->cb_arg = so ? so->done_arg : NULL;
	t->loop = t->cb ? so->loop : NULL;
	t->keep_id = 0;
	t->lp_done = 0;
	atomic_init(&t->state, T_PENDING);
	/* the slot, the caller's handle, the callback, loop_keep's post */
	atomic_init(&t->refs, 1 + (out != NULL) + (t->cb != NULL) + (t->loop != NULL));
	atomic_fetch_add_explicit(&p->refs, 1, memory_order_relaxed);
	int64_t tmo = so && so->timeout_ns ? (so->timeout_ns < 0 ? 0 : so->timeout_ns) : p->task_timeout_ns;
	if (tmo)
		atomic_store_explicit(&p->timeouts_used, 1, memory_order_relaxed);
	s->arg_kind = kind;
	s->arg_len = len;
	s->err = 0;
	s->res_kind = V_NONE;
	s->res_len = 0;
	atomic_store_explicit(&s->timeout_ns, tmo, memory_order_relaxed);
	s->text[0] = 0;
	__atomic_store_n(&s->abort, 0, __ATOMIC_RELAXED);
	atomic_store_explicit(&s->worker_no, 0, memory_order_relaxed);
	atomic_store_explicit(&s->t_start, 0, memory_order_relaxed);
	atomic_store_explicit(&s->t_end, 0, memory_order_relaxed);
	atomic_store_explicit(&s->t_submit, now_ns(), memory_order_relaxed);
	if (stash) {
		pthread_mutex_lock(&p->lock);
		p->ps[idx].stash = stash;
		pthread_mutex_unlock(&p->lock);
	}
	atomic_store_explicit(&p->ps[idx].task, t, memory_order_relaxed);
	uint64_t flags = (t->cb ? SW_F_NOTIFY : 0) | (out ? 0 : (t->cb ? 0 : SW_F_ABANDON));
	/* release: the slot's fields before its state (workers acquire it). */
	atomic_store_explicit(&s->word, sw_make(gen, flags, 0, S_QUEUED), memory_order_release);
	atomic_fetch_add_explicit(&p->submitted, 1, memory_order_relaxed);
	rc = ferry__pool_q_push(&p->g, idx);
	if (rc) {
		/* Cannot happen with the sizing (the queue holds every slot twice).
		 * Take the task back, unless a worker found it through a stale cell
		 * of an earlier task of this slot: then it runs, and that is fine. */
		uint64_t qw = sw_make(gen, flags, 0, S_QUEUED);
		if (atomic_compare_exchange_strong_explicit(&s->word, &qw, sw_make(gen, 0, 0, S_COLLECTING),
							    memory_order_acq_rel, memory_order_relaxed)) {
			slot_free(p, idx, sw_make(gen, 0, 0, S_COLLECTING));
			atomic_fetch_sub_explicit(&p->submitted, 1, memory_order_relaxed);
			atomic_store_explicit(&t->refs, 1, memory_order_relaxed);
			task_unref(t);
			return ferry__fail(-EAGAIN, "ferry_pool_submit: the queue is full");
		}
	}
	/* Keep the loop alive until the callback ran. Posted now that the task
	 * cannot be taken back; if the post fails the callback still comes,
	 * only a FERRY_RUN_DEFAULT run may end before it. */
	if (t->loop && ferry_loop_post(t->loop, loop_keep, t))
		task_unref(t);
	/* seq_cst in pool_spinning: against a spinner giving up (see there). */
	if (!pool_spinning(p->g.hdr))
		ferry_ec_notify(&p->g.q->not_empty);
	/* No runner free and room for another worker: the manager starts one. */
	if (atomic_load_explicit(&p->live, memory_order_relaxed) < p->max_w && idle_runners(p) == 0)
		pool_kick(p->g.hdr);
	if (out)
		*out = t;
	return 0;
}

FERRY_API int ferry_pool_submit(ferry_pool *p, const ferry_value *v, const struct ferry_xfer *x,
				ferry_pool_task **out)
{
	return ferry_pool_submit_ex(p, v, x, NULL, out);
}

/* ---- task handles ---- */

static int outcome(const struct ferry_pool_task *t)
{
	if (t->err)
		return ferry__fail(t->err, "%s", t->text[0] ? t->text : ferry_strerror(t->err));
	return 0;
}

static int settled(const struct ferry_pool_task *t)
{
	/* acquire: pairs with settle's release. */
	return atomic_load_explicit(&((struct ferry_pool_task *)t)->state, memory_order_acquire) == T_SETTLED;
}

FERRY_API int ferry_pool_task_wait(ferry_pool_task *t, int64_t timeout_ns)
{
	if (!t)
		return ferry__fail(-EINVAL, "ferry_pool_task_wait: task is NULL");
	struct ferry_pool *p = t->pool;
	if (settled(t))
		return outcome(t);
	if (try_collect(p, t->slot, t->gen) && settled(t))
		return outcome(t);
	if (timeout_ns == 0)
		return ferry__fail(-EAGAIN, "ferry_pool_task_wait: the task has not settled");
	int64_t now = now_ns();
	int64_t deadline = timeout_ns < 0 ? INT64_MAX : now + timeout_ns;
	int64_t spin_until = now + p->spin_ns;
	struct pool_slot *s = &p->g.slots[t->slot];
	for (unsigned i = 1;; i++) {
		if (settled(t))
			return outcome(t);
		if (try_collect(p, t->slot, t->gen) && settled(t))
			return outcome(t);
		if (i & 31) {
			ferry__cpu_relax();
			continue;
		}
		now = now_ns();
		if (now >= deadline)
			return ferry__fail(-ETIMEDOUT, "ferry_pool_task_wait: the task has not settled in time");
		if (now < spin_until) {
			if ((i & 1023) == 0)
				sched_yield();
			continue;
		}
		uint32_t key = ferry_ec_prepare(&s->ec);
		uint64_t w = atomic_load_explicit(&s->word, memory_order_acquire);
		if (settled(t) || (sw_state(w) == S_DONE && sw_gen(w) == t->gen)) {
			ferry_ec_cancel(&s->ec);
			continue;
		}
		int64_t nap = deadline - now;
		ferry_ec_wait(&s->ec, key, nap > WAIT_SLICE_NS ? WAIT_SLICE_NS : nap);
		spin_until = now_ns() + p->spin_ns / 4;
	}
}

FERRY_API int ferry_pool_task_poll(ferry_pool_task *t)
{
	if (!t)
		return ferry__fail(-EINVAL, "ferry_pool_task_poll: task is NULL");
	if (settled(t))
		return 1;
	try_collect(t->pool, t->slot, t->gen);
	return settled(t);
}

FERRY_API int ferry_pool_task_status(const ferry_pool_task *t)
{
	if (!t)
		return ferry__fail(-EINVAL, "ferry_pool_task_status: task is NULL");
	return settled(t) ? t->err : -EINPROGRESS;
}

FERRY_API const char *ferry_pool_task_errmsg(const ferry_pool_task *t)
{
	return t && settled(t) ? t->text : "";
}

FERRY_API const ferry_value *ferry_pool_task_value(const ferry_pool_task *t)
{
	return t && settled(t) && !t->taken ? t->view : NULL;
}

FERRY_API ferry_value *ferry_pool_task_take_value(ferry_pool_task *t)
{
	if (!t || !settled(t) || t->taken || !t->view)
		return NULL;
	ferry_value *v = (ferry_value *)t->view;
	if (t->msg && !ferry_msg_take_value(t->msg))
		return NULL;
	t->taken = 1;
	return v; /* freeing it frees its whole graph (the wrapper too) */
}

FERRY_API int ferry_pool_task_keep(ferry_pool_task *t, const void *handle)
{
	if (!t || !handle)
		return ferry__fail(-EINVAL, "ferry_pool_task_keep: %s is NULL", !t ? "task" : "handle");
	if (!settled(t) || !t->msg)
		return ferry__fail(-ENOENT, "ferry_pool_task_keep: the result carries no handles");
	return ferry_msg_keep(t->msg, handle);
}

FERRY_API int ferry_pool_task_times(const ferry_pool_task *t, int64_t *wait_ns, int64_t *run_ns)
{
	if (!t)
		return ferry__fail(-EINVAL, "ferry_pool_task_times: task is NULL");
	int s = settled(t);
	if (wait_ns)
		*wait_ns = s ? t->wait_ns : 0;
	if (run_ns)
		*run_ns = s ? t->run_ns : 0;
	return 0;
}

FERRY_API int ferry_pool_task_cancel(ferry_pool_task *t)
{
	if (!t)
		return ferry__fail(-EINVAL, "ferry_pool_task_cancel: task is NULL");
	struct ferry_pool *p = t->pool;
	if (settled(t))
		return ferry__fail(-EALREADY, "ferry_pool_task_cancel: the task has settled");
	struct pool_slot *s = &p->g.slots[t->slot];
	uint64_t w = atomic_load_explicit(&s->word, memory_order_acquire);
	while (sw_gen(w) == t->gen) {
		if (sw_state(w) == S_QUEUED) {
			uint64_t nw = (w & ~SW_STATE_MASK) | SW_F_CANCELLED | S_COLLECTING;
			/* acq_rel: wins the task from the workers (their start CAS). */
			if (atomic_compare_exchange_weak_explicit(&s->word, &w, nw, memory_order_acq_rel,
								  memory_order_acquire)) {
				collect(p, t->slot, nw);
				ferry_ec_notify(&p->g.hdr->done_ec);
				return 0;
			}
			continue;
		}
		if (sw_state(w) == S_RUNNING) {
			if (orphan(p, t->slot, t->gen, -ECANCELED, "the task was cancelled while it ran") == 0)
				return 0;
			w = atomic_load_explicit(&s->word, memory_order_acquire);
			continue;
		}
		break;
	}
	return ferry__fail(-EALREADY, "ferry_pool_task_cancel: the task has finished");
}

FERRY_API void ferry_pool_task_free(ferry_pool_task *t)
{
	if (!t)
		return;
	struct ferry_pool *p = t->pool;
	if (!settled(t) && !t->cb) {
		/* Tell the worker to hand it to the manager when done, or collect it
		 * now if it is done. */
		struct pool_slot *s = &p->g.slots[t->slot];
		uint64_t w = atomic_load_explicit(&s->word, memory_order_acquire);
		while (sw_gen(w) == t->gen) {
			unsigned st = sw_state(w);
			if (st == S_DONE) {
				try_collect(p, t->slot, t->gen);
				break;
			}
			if (st != S_QUEUED && st != S_RUNNING)
				break;
			if (atomic_compare_exchange_weak_explicit(&s->word, &w, w | SW_F_ABANDON,
								  memory_order_acq_rel, memory_order_acquire))
				break;
		}
	}
	task_unref(t);
}

/* ---- the pool ---- */

static int drained(struct ferry_pool *p, int outcomes)
{
	if (ferry__pool_q_len(&p->g))
		return 0;
	/* A slot a worker finished is free again before the collector settles
	 * its task: for ferry_pool_drain, drained means every task submitted so
	 * far has its outcome (and is in the statistics), so count them too.
	 * (Destroy only waits for the running ones: it settles the rest.) */
	uint64_t out = atomic_load_explicit(&p->completed, memory_order_acquire) +
		       atomic_load_explicit(&p->failed, memory_order_acquire) +
		       atomic_load_explicit(&p->cancelled, memory_order_acquire);
	if (outcomes && out < atomic_load_explicit(&p->submitted, memory_order_acquire))
		return 0;
	for (uint32_t i = 0; i < p->g.nslots; i++) {
		uint64_t w = atomic_load_explicit(&p->g.slots[i].word, memory_order_acquire);
		unsigned st = sw_state(w);
		if (st == S_QUEUED || (st == S_RUNNING && !(w & SW_F_ORPHAN)))
			return 0;
	}
	return 1;
}

static int wait_drained(struct ferry_pool *p, int64_t timeout_ns, int outcomes)
{
	struct pool_hdr *h = p->g.hdr;
	int64_t deadline = timeout_ns < 0 ? INT64_MAX : now_ns() + timeout_ns;
	for (;;) {
		if (drained(p, outcomes))
			return 0;
		int64_t left = deadline - now_ns();
		if (timeout_ns == 0)
			return -EAGAIN;
		if (left <= 0)
			return -ETIMEDOUT;
		uint32_t key = ferry_ec_prepare(&h->done_ec);
		if (drained(p, outcomes)) {
			ferry_ec_cancel(&h->done_ec);
			return 0;
		}
		ferry_ec_wait(&h->done_ec, key, left > WAIT_SLICE_NS ? WAIT_SLICE_NS : left);
	}
}

FERRY_API int ferry_pool_drain(ferry_pool *p, int64_t timeout_ns)
{
	if (!p)
		return ferry__fail(-EINVAL, "ferry_pool_drain: pool is NULL");
	int rc = wait_drained(p, timeout_ns, 1);
	if (rc)
		return ferry__fail(rc, "ferry_pool_drain: tasks are still %s", ferry__pool_q_len(&p->g) ? "queued" : "running");
	return 0;
}

FERRY_API int ferry_pool_stats(ferry_pool *p, struct ferry_pool_stats *st)
{
	if (!p || !st)
		return ferry__fail(-EINVAL, "ferry_pool_stats: %s is NULL", !p ? "pool" : "st");
	memset(st, 0, sizeof *st);
	st->submitted = atomic_load_explicit(&p->submitted, memory_order_relaxed);
	st->completed = atomic_load_explicit(&p->completed, memory_order_relaxed);
	st->failed = atomic_load_explicit(&p->failed, memory_order_relaxed);
	st->cancelled = atomic_load_explicit(&p->cancelled, memory_order_relaxed);
	st->crashes = atomic_load_explicit(&p->crashes, memory_order_relaxed);
	st->spawned = atomic_load_explicit(&p->spawned, memory_order_relaxed);
	unsigned char busy[FERRY_POOL_MAX_WORKERS] = { 0 };
	for (uint32_t i = 0; i < p->g.nslots; i++) {
		uint64_t w = atomic_load_explicit(&p->g.slots[i].word, memory_order_relaxed);
		st->queued += sw_state(w) == S_QUEUED;
		if (sw_state(w) == S_RUNNING) {
			st->running++;
			if (sw_owner(w) < FERRY_POOL_MAX_WORKERS)
				busy[sw_owner(w)] = 1;
		}
	}
	pthread_mutex_lock(&p->lock);
	for (int i = 0; i < p->max_w; i++) {
		if (!p->pids[i])
			continue;
		st->workers++;
		st->idle_workers += !busy[i];
	}
	pthread_mutex_unlock(&p->lock);
	double span = (double)(now_ns() - p->t_create) * p->max_w * p->conc;
	double run = (double)atomic_load_explicit(&p->run_total_ns, memory_order_relaxed);
	st->utilization = span > 0 ? run / span : 0;
	if (st->utilization > 1)
		st->utilization = 1;
	st->wait_p50_ns = hist_pct(&p->hwait, 0.50);
	st->wait_p99_ns = hist_pct(&p->hwait, 0.99);
	st->run_p50_ns = hist_pct(&p->hrun, 0.50);
	st->run_p99_ns = hist_pct(&p->hrun, 0.99);
	return 0;
}

FERRY_API int ferry_pool_worker_pids(ferry_pool *p, pid_t *pids, size_t n)
{
	if (!p || (!pids && n))
		return ferry__fail(-EINVAL, "ferry_pool_worker_pids: %s is NULL", !p ? "pool" : "pids");
	int count = 0;
	pthread_mutex_lock(&p->lock);
	for (int i = 0; i < p->max_w; i++)
		if (p->pids[i]) {
			if ((size_t)count < n)
				pids[count] = p->pids[i];
			count++;
		}
	pthread_mutex_unlock(&p->lock);
	return count;
}

/* Stop every worker (destroy, or a failed create); the manager is stopped. */
static void stop_workers(struct ferry_pool *p)
{
	struct pool_hdr *h = p->g.hdr;
	atomic_store_explicit(&h->shutdown, 1, memory_order_relaxed);
	ferry_ec_notify(&p->g.q->not_empty);
	/* Idle workers leave within microseconds; a process still busy (its task
	 * orphaned by now) is killed soon, a thread gets longer. */
	int64_t deadline = now_ns() + (p->backend == FERRY_PROCESS ? 200LL : 2000LL) * 1000 * 1000;
	for (int i = 0; i < p->max_w; i++) {
		struct pworker *pw = &p->wk[i];
		if (!pw->w)
			continue;
		struct ferry_worker_status st;
		for (;;) {
			drain_worker(p, (unsigned)i, 0); /* it may wait for a value */
			int64_t left = deadline - now_ns();
			if (ferry_worker_join(pw->w, &st, left > 0 ? (left > 5000000 ? 5000000 : left) : 0) == 0)
				break;
			if (left <= 0) {
				if (p->backend == FERRY_PROCESS) {
					pw->killed = 1;
					ferry_worker_terminate(pw->w, 0);
				}
				break;
			}
		}
		if (p->backend == FERRY_PROCESS || ferry_worker_join(pw->w, &st, 0) == 0) {
			sweep_worker(p, (unsigned)i, NULL);
		} else {
			/* A thread stuck in its task: its slot stays orphaned; detach. */
			ferry_worker_destroy(pw->w);
			pw->w = NULL;
			pthread_mutex_lock(&p->lock);
			p->pids[i] = 0;
			pthread_mutex_unlock(&p->lock);
			atomic_fetch_sub_explicit(&p->live, 1, memory_order_relaxed);
		}
	}
}

FERRY_API void ferry_pool_destroy(ferry_pool *p, int64_t grace_ns)
{
	if (!p)
		return;
	atomic_store_explicit(&p->closing, 1, memory_order_relaxed);
	const struct pool_geo *g = &p->g;
	/* 1. Queued tasks are rejected. */
	for (uint32_t i = 0; i < g->nslots; i++) {
		struct pool_slot *s = &g->slots[i];
		uint64_t w = atomic_load_explicit(&s->word, memory_order_acquire);
		while (sw_state(w) == S_QUEUED) {
			uint64_t nw = (w & ~SW_STATE_MASK) | SW_F_DESTROY | S_COLLECTING;
			if (atomic_compare_exchange_weak_explicit(&s->word, &w, nw, memory_order_acq_rel,
								  memory_order_acquire)) {
				collect(p, i, nw);
				break;
			}
		}
	}
	/* 2. Running ones get the grace period (the manager keeps serving). */
	wait_drained(p, grace_ns, 0);
	/* 3. The rest are failed and asked to stop. */
	for (uint32_t i = 0; i < g->nslots; i++) {
		uint64_t w = atomic_load_explicit(&g->slots[i].word, memory_order_acquire);
		if (sw_state(w) == S_RUNNING && !(w & SW_F_ORPHAN))
			orphan(p, i, sw_gen(w), -ECANCELED, "the pool was destroyed while the task ran");
	}
	/* 4. The manager stops; this thread finishes its work. */
	if (p->mgr_running) {
		atomic_store_explicit(&p->stop, 1, memory_order_release);
		pool_kick(g->hdr);
		pthread_join(p->mgr, NULL);
		p->mgr_running = 0;
	}
	mgr_of_thread = p;
	stop_workers(p);
	harvest(p, 0, 0, 0);
	run_callbacks(p, 1);
	mgr_of_thread = NULL;
	release_shared(p);
	pool_unref(p);
}
