/*
 * The event loop's common part: sources and their ids, the timer heap, the
 * ready list, the cross-thread inbox, and the run loop. The kernel side
 * (waiting, fd polls, async futex waits) is a backend: loop_uring.c or
 * loop_epoll.c. Lifetime rules are in loop_int.h.
 *
 * One iteration:
 *   poll      the backend waits (not at all if anything is ready, a post or a
 *             stop is pending, or the mode is NOWAIT; else until the next
 *             timer) and dispatches completions: fd callbacks and wait_async
 *             results run right away, eventcount wake-ups go to the ready list;
 *   inbox     posts from other threads (at most FERRY_LOOP_BATCH), and
 *             completions of the epoll backend's helper threads;
 *   timers    those due when the phase began (never one added or re-armed
 *             during the phase);
 *   ready     each source that was on the ready list when the phase began:
 *             deferred wait results, and eventcount watches, whose callback
 *             runs at most once here; a watch still ready goes back on the
 *             list for the next iteration, one that is not arms a wait.
 */
#include "runtime/loop_int.h"
#include "shm/cancel.h"
#include "shm/err.h"

#include <errno.h>
#include <limits.h>
#include <poll.h>
#include <stdalign.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#define HEAP_NONE SIZE_MAX

/* ---- the ready list (circular, with the loop's sentinel) ---- */

static int ready_empty(const ferry_loop *loop)
{
	return loop->ready.next == &loop->ready;
}

static void list_unlink(struct src *s)
{
	s->prev->next = s->next;
	s->next->prev = s->prev;
	s->next = s->prev = s;
}

static void list_append(struct src *head, struct src *s)
{
	s->prev = head->prev;
	s->next = head;
	head->prev->next = s;
	head->prev = s;
}

static void queue(ferry_loop *loop, struct src *s)
{
	if (s->queued)
		return;
	s->queued = 1;
	list_append(&loop->ready, s);
}

static void unqueue(struct src *s)
{
	if (!s->queued)
		return;
	s->queued = 0;
	list_unlink(s);
}

/* ---- the timer heap: min by (deadline, seq) ---- */

static int timer_before(const struct src *a, const struct src *b)
{
	if (a->t.deadline != b->t.deadline)
		return a->t.deadline < b->t.deadline;
	return a->t.seq < b->t.seq;
}

static void heap_set(ferry_loop *loop, size_t i, struct src *s)
{
	loop->heap[i] = s;
	s->t.heap = i;
}

static void heap_up(ferry_loop *loop, size_t i)
{
	struct src *s = loop->heap[i];
	while (i > 0) {
		size_t p = (i - 1) / 2;
		if (!timer_before(s, loop->heap[p]))
			break;
		heap_set(loop, i, loop->heap[p]);
		i = p;
	}
	heap_set(loop, i, s);
}

static void heap_down(ferry_loop *loop, size_t i)
{
	struct src *s = loop->heap[i];
	size_t n = loop->nheap;
	for (;;) {
		size_t c = 2 * i + 1;
		if (c >= n)
			break;
		if (c + 1 < n && timer_before(loop->heap[c + 1], loop->heap[c]))
			c++;
		if (!timer_before(loop->heap[c], s))
			break;
		heap_set(loop, i, loop->heap[c]);
		i = c;
	}
	heap_set(loop, i, s);
}

static int heap_push(ferry_loop *loop, struct src *s)
{
	if (loop->nheap == loop->heapcap) {
		size_t cap = loop->heapcap ? loop->heapcap * 2 : 16;
		struct src **h = realloc(loop->heap, cap * sizeof *h);
		if (!h)
			return -ENOMEM;
		loop->heap = h;
		loop->heapcap = cap;
	}
	heap_set(loop, loop->nheap++, s);
	heap_up(loop, loop->nheap - 1);
	return 0;
}

static void heap_remove(ferry_loop *loop, struct src *s)
{
	size_t i = s->t.heap;
	if (i == HEAP_NONE)
		return;
	s->t.heap = HEAP_NONE;
	struct src *last = loop->heap[--loop->nheap];
	if (last == s)
		return;
	heap_set(loop, i, last);
	if (i > 0 && timer_before(last, loop->heap[(i - 1) / 2]))
		heap_up(loop, i);
	else
		heap_down(loop, i);
}

/* ---- slots and ids ---- */

static int slot_alloc(ferry_loop *loop, struct src *s)
{
	uint32_t idx;
	if (loop->nfree) {
		idx = loop->freeidx[--loop->nfree];
	} else {
		if (loop->nslots == loop->slotcap) {
			if (loop->slotcap >= LOOP_MAX_SLOTS / 2)
				return -ENOMEM;
			uint32_t cap = loop->slotcap ? loop->slotcap * 2 : 64;
			struct slot *sl = realloc(loop->slots, cap * sizeof *sl);
			if (!sl)
				return -ENOMEM;
			loop->slots = sl;
			uint32_t *fi = realloc(loop->freeidx, cap * sizeof *fi);
			if (!fi)
				return -ENOMEM;
			loop->freeidx = fi;
			loop->slotcap = cap;
		}
		idx = loop->nslots++;
		loop->slots[idx] = (struct slot){ NULL, 1, 0 };
	}
	struct slot *sl = &loop->slots[idx];
	sl->s = s;
	s->idx = idx;
	s->id = (uint64_t)sl->gen << 32 | idx;
	return 0;
}

static void slot_release(ferry_loop *loop, uint32_t idx)
{
	struct slot *sl = &loop->slots[idx];
	sl->s = NULL;
	if (++sl->gen == 0) /* ids are never 0 */
		sl->gen = 1;
	sl->arm++; /* completions still in flight are stale from now on */
	loop->freeidx[loop->nfree++] = idx;
}

static struct src *by_id(const ferry_loop *loop, uint64_t id)
{
	uint32_t idx = (uint32_t)id;
	if (idx >= loop->nslots)
		return NULL;
	const struct slot *sl = &loop->slots[idx];
	if (!sl->s || sl->gen != (uint32_t)(id >> 32))
		return NULL;
	return sl->s;
}

uint64_t ferry__loop_new_ud(ferry_loop *loop, struct src *s)
{
	struct slot *sl = &loop->slots[s->idx];
	sl->arm++;
	s->ud = (uint64_t)sl->arm << 32 | s->idx;
	return s->ud;
}

struct src *ferry__loop_by_ud(ferry_loop *loop, uint64_t ud)
{
	uint32_t idx = (uint32_t)ud;
	if (idx >= loop->nslots)
		return NULL;
	struct slot *sl = &loop->slots[idx];
	if (!sl->s || sl->arm != (uint32_t)(ud >> 32))
		return NULL;
	return sl->s;
}

static struct src *src_new(ferry_loop *loop, int kind, ferry_loop_fn cb, void *arg)
{
	struct src *s = calloc(1, sizeof *s);
	if (!s)
		return NULL;
	if (slot_alloc(loop, s)) {
		free(s);
		return NULL;
	}
	s->kind = (uint8_t)kind;
	s->cb = cb;
	s->arg = arg;
	s->next = s->prev = s;
	s->ref = 1;
	loop->nref++;
	return s;
}

/* End @s: no callback of it runs after this. Freed now, or at the end of
 * the iteration when a callback may be looking at it. */
static void src_end(ferry_loop *loop, struct src *s)
{
	if (s->dead)
		return;
	s->dead = 1;
	unqueue(s);
	if (s->kind == SRC_TIMER)
		heap_remove(loop, s);
	if (s->armed) {
		loop->be->disarm(loop, s);
		s->armed = 0;
	}
	if (s->kind == SRC_FD && s->fd.fd < loop->fdcap && loop->fdmap[s->fd.fd] == s)
		loop->fdmap[s->fd.fd] = NULL;
	if (s->ref)
		loop->nref--;
	slot_release(loop, s->idx);
	if (loop->running) {
		s->zombie_next = loop->zombies;
		loop->zombies = s;
	} else {
		free(s);
	}
}

static void free_zombies(ferry_loop *loop)
{
	while (loop->zombies) {
		struct src *s = loop->zombies;
		loop->zombies = s->zombie_next;
		free(s);
	}
}

/* @s may end inside @cb: read nothing of it afterwards but its flags (it
 * stays allocated until the end of the iteration). */
static void call(ferry_loop *loop, struct src *s, int res)
{
	loop->ncalls++;
	s->cb(loop, s->id, res, s->arg);
}

static int alive(const ferry_loop *loop)
{
	unsigned n = loop->nref + atomic_load_explicit(&loop->nposts, memory_order_relaxed);
	return n > INT_MAX ? INT_MAX : (int)n;
}

/* ---- poll bits ---- */

unsigned ferry__loop_from_poll(unsigned revents)
{
	unsigned r = 0;
	if (revents & (POLLIN | POLLPRI))
		r |= FERRY_LOOP_READABLE;
	if (revents & POLLOUT)
		r |= FERRY_LOOP_WRITABLE;
	if (revents & (POLLHUP | POLLRDHUP))
		r |= FERRY_LOOP_HUP;
	if (revents & (POLLERR | POLLNVAL))
		r |= FERRY_LOOP_ERROR;
	return r;
}

unsigned ferry__loop_to_poll(unsigned events)
{
	unsigned p = 0;
	if (events & FERRY_LOOP_READABLE)
		p |= POLLIN | POLLRDHUP;
	if (events & FERRY_LOOP_WRITABLE)
		p |= POLLOUT;
	return p;
}

/* ---- completions from the backends ---- */

void ferry__loop_fd_event(ferry_loop *loop, struct src *s, int res)
{
	if (res < 0)
		src_end(loop, s);
	call(loop, s, res);
}

void ferry__loop_futex_done(ferry_loop *loop, struct src *s, int res)
{
	s->armed = 0;
	if (s->kind == SRC_WAIT) {
		/* Equal at ferry_wait_async, different when the kernel looked:
		 * the word moved after the wait began (see loop.h). */
		if (res == -EAGAIN)
			res = 0;
		src_end(loop, s);
		call(loop, s, res);
		return;
	}
	/* SRC_EC: a wake-up of any kind means "re-check @ready". */
	if (res == 0 || res == -EAGAIN || res == -EINTR || res == -ETIMEDOUT) {
		queue(loop, s);
		return;
	}
	src_end(loop, s);
	call(loop, s, res);
}

void ferry__loop_signal(ferry_loop *loop)
{
	/* seq_cst exchange: pairs with the loop's reset in drain_inbox (the
	 * first signaller after a reset wakes the backend, later ones rely on
	 * the loop still having to look). */
	if (!atomic_exchange(&loop->signalled, 1))
		loop->be->wake(loop);
}

/* ---- the phases ---- */

static void drain_inbox(ferry_loop *loop)
{
	/* relaxed: a hint; a post that this load misses woke the backend, so
	 * the next poll returns and the next drain sees it. */
	if (!atomic_load_explicit(&loop->signalled, memory_order_relaxed))
		return;
	/* seq_cst: before looking at what was posted (see ferry__loop_signal). */
	atomic_store(&loop->signalled, 0);
	if (loop->be->drain)
		loop->be->drain(loop);

	struct post *head = NULL, *tail = NULL;
	unsigned n = 0;
	pthread_mutex_lock(&loop->mu);
	while (loop->post_head && n < FERRY_LOOP_BATCH) {
		struct post *p = loop->post_head;
		loop->post_head = p->next;
		p->next = NULL;
		if (tail)
			tail->next = p;
		else
			head = p;
		tail = p;
		n++;
	}
	if (!loop->post_head)
		loop->post_tail = NULL;
	int more = loop->post_head != NULL;
	pthread_mutex_unlock(&loop->mu);
	if (more) /* the rest next iteration, without blocking in between
		   (seq_cst like every store of this flag; loop thread only) */
		atomic_store(&loop->signalled, 1);

	while (head) {
		struct post *p = head;
		head = p->next;
		atomic_fetch_sub_explicit(&loop->nposts, 1, memory_order_relaxed);
		loop->ncalls++;
		p->cb(loop, 0, 0, p->arg);
		free(p);
	}
}

static void run_timers(ferry_loop *loop)
{
	if (!loop->nheap)
		return;
	int64_t now = ferry__now_ns();
	uint64_t limit = loop->timer_seq; /* nothing (re-)armed during this phase */
	while (loop->nheap) {
		struct src *s = loop->heap[0];
		if (s->t.deadline > now || s->t.seq >= limit)
			break;
		heap_remove(loop, s);
		if (s->t.repeat > 0) {
			int64_t d = s->t.deadline;
			d = d > INT64_MAX - s->t.repeat ? INT64_MAX : d + s->t.repeat;
			if (d <= now) /* fell behind: skip the missed periods */
				d = now > INT64_MAX - s->t.repeat ? INT64_MAX : now + s->t.repeat;
			s->t.deadline = d;
			s->t.seq = loop->timer_seq++;
			if (heap_push(loop, s)) {
				src_end(loop, s);
				call(loop, s, -ENOMEM);
				continue;
			}
		} else {
			src_end(loop, s);
		}
		call(loop, s, 0);
	}
}

/* One step of an eventcount watch: the protocol of ferry/atomic.h, with the
 * sleep handed to the backend instead of taken. */
static void ec_step(ferry_loop *loop, struct src *s)
{
	struct ferry_ec *ec = s->ec.ec;
	if (!s->ec.ready(s->arg)) {
		uint32_t key = ferry_ec_prepare(ec);
		if (!s->ec.ready(s->arg)) {
			int r = loop->be->futex_arm(loop, s, &ec->word, key, -1);
			if (r == 0)
				return;
			src_end(loop, s);
			call(loop, s, r);
			return;
		}
		ferry_ec_cancel(ec);
	}
	/* Ready: one callback now, and a fresh look next iteration. Queued
	 * before the call so that the callback may cancel. */
	queue(loop, s);
	call(loop, s, 0);
}

static void run_ready(ferry_loop *loop)
{
	if (ready_empty(loop))
		return;
	/* Take the list as it is now; what gets queued meanwhile waits. */
	struct src batch;
	batch.next = loop->ready.next;
	batch.prev = loop->ready.prev;
	batch.next->prev = &batch;
	batch.prev->next = &batch;
	loop->ready.next = loop->ready.prev = &loop->ready;

	while (batch.next != &batch) {
		struct src *s = batch.next;
		list_unlink(s);
		s->queued = 0;
		if (s->kind == SRC_WAIT) {
			src_end(loop, s);
			call(loop, s, s->res);
		} else if (s->kind == SRC_EC) {
			ec_step(loop, s);
		}
	}
}

static int iterate(ferry_loop *loop, int block)
{
	int64_t timeout = 0;
	if (block && ready_empty(loop) && !atomic_load_explicit(&loop->signalled, memory_order_relaxed) &&
	    !atomic_load_explicit(&loop->stop, memory_order_relaxed)) {
		if (loop->nheap) {
			int64_t left = loop->heap[0]->t.deadline - ferry__now_ns();
			timeout = left > 0 ? left : 0;
		} else {
			timeout = -1;
		}
	}
	int r = loop->be->poll(loop, timeout);
	if (r < 0)
		return r;
	drain_inbox(loop);
	run_timers(loop);
	run_ready(loop);
	free_zombies(loop);
	return 0;
}

/* ---- the API ---- */

static int parse_env(int *kind)
{
	const char *e = getenv("FERRY_LOOP");
	if (!e || !*e || strcmp(e, "auto") == 0)
		*kind = FERRY_LOOP_AUTO;
	else if (strcmp(e, "uring") == 0 || strcmp(e, "io_uring") == 0)
		*kind = FERRY_LOOP_URING;
	else if (strcmp(e, "epoll") == 0)
		*kind = FERRY_LOOP_EPOLL;
	else
		return ferry__fail(-EINVAL,
				   "ferry_loop_create: FERRY_LOOP=%.64s: expected uring, epoll or auto", e);
	return 0;
}

FERRY_API int ferry_loop_create(ferry_loop **out, const struct ferry_loop_opts *opts)
{
	if (!out)
		return ferry__fail(-EINVAL, "ferry_loop_create: out is NULL");
	*out = NULL;
	struct ferry_loop_opts o = { 0 };
	if (opts)
		o = *opts;
	int kind = o.backend;
	if (kind < FERRY_LOOP_AUTO || kind > FERRY_LOOP_EPOLL)
		return ferry__fail(-EINVAL, "ferry_loop_create: opts.backend %d is not a backend", kind);
	if (kind == FERRY_LOOP_AUTO) {
		int r = parse_env(&kind);
		if (r)
			return r;
	}

	ferry_loop *loop = calloc(1, sizeof *loop);
	if (!loop)
		return ferry__fail(-ENOMEM, "ferry_loop_create: out of memory");
	loop->pid = getpid();
	loop->creator = pthread_self();
	loop->ready.next = loop->ready.prev = &loop->ready;
	int r = pthread_mutex_init(&loop->mu, NULL);
	if (r) {
		free(loop);
		return ferry__fail(-r, "ferry_loop_create: pthread_mutex_init");
	}

	if (kind == FERRY_LOOP_URING) {
		loop->be = &ferry__loop_uring;
		r = loop->be->init(loop, &o);
	} else if (kind == FERRY_LOOP_EPOLL) {
		loop->be = &ferry__loop_epoll;
		r = loop->be->init(loop, &o);
	} else {
		/* io_uring if it works; its failure is no failure of ours, so the
		 * caller's last message is kept. */
		char saved[512];
		strncpy(saved, ferry_errmsg(), sizeof saved - 1);
		saved[sizeof saved - 1] = '\0';
		loop->be = &ferry__loop_uring;
		r = loop->be->init(loop, &o);
		if (r) {
			ferry__fail(0, "%s", saved);
			loop->be = &ferry__loop_epoll;
			r = loop->be->init(loop, &o);
		}
	}
	if (r) {
		pthread_mutex_destroy(&loop->mu);
		free(loop);
		return r;
	}
	*out = loop;
	return 0;
}

FERRY_API void ferry_loop_destroy(ferry_loop *loop)
{
	if (!loop)
		return;
	if (atomic_load(&loop->busy)) { /* seq_cst: see ferry_loop_run */
		ferry__fail(-EBUSY, "ferry_loop_destroy: the loop is running (leaked, not freed)");
		return;
	}
	int child = loop->pid != getpid();

	/* Posts that never ran: their callbacks learn it (the args are theirs
	 * to free). Not in a forked child: the parent still runs them. */
	pthread_mutex_t *mu = &loop->mu;
	struct post *p = loop->post_head;
	if (!child) {
		pthread_mutex_lock(mu);
		p = loop->post_head;
		loop->post_head = loop->post_tail = NULL;
		pthread_mutex_unlock(mu);
	}
	loop->running = 1;
	while (p) {
		struct post *next = p->next;
		if (!child)
			p->cb(loop, 0, -ECANCELED, p->arg);
		free(p);
		p = next;
	}

	loop->be->fini(loop);

	for (uint32_t i = 0; i < loop->nslots; i++)
		free(loop->slots[i].s);
	free_zombies(loop);
	free(loop->slots);
	free(loop->freeidx);
	free(loop->heap);
	free(loop->fdmap);
	if (!child)
		pthread_mutex_destroy(mu);
	free(loop);
}

FERRY_API const char *ferry_loop_backend(const ferry_loop *loop)
{
	return loop ? loop->be->name : "";
}

/* The stop flag of the thread worker running the loop was set (or the wait
 * failed: look anyway). The worker ends here, as at any ferry wait; the
 * loop is marked idle first so that the worker's cleanup may destroy it. */
static void arm_cancel(ferry_loop *loop);

/* The loop a terminated worker thread was running, when it created it. */
static _Thread_local ferry_loop *ended_loop;

void ferry__loop_thread_end(void)
{
	ferry_loop *loop = ended_loop;
	ended_loop = NULL;
	ferry_loop_destroy(loop);
}

static void on_cancel(ferry_loop *loop, uint64_t id, int res, void *arg)
{
	loop->cancel_id = 0;
	loop->cancel_flag = NULL;
	if (!ferry__cancel_flag || !atomic_load_explicit(ferry__cancel_flag, memory_order_acquire)) {
		if (res == 0 || res == -EAGAIN)
			arm_cancel(loop); /* spurious: wait again */
		return;
	}
	free_zombies(loop);
	loop->running = 0;
	atomic_store(&loop->busy, 0);
	/* Nothing of the worker can use it any more: it goes with the thread.
	 * One made by another thread stays its creator's to destroy. */
	if (pthread_equal(loop->creator, pthread_self()))
		ended_loop = loop;
	ferry__cancel_point();
	ended_loop = NULL; /* not ended after all */
}

/* On a thread worker (a cancellation flag is armed on this thread), keep an
 * unreferenced async wait on that flag: ferry_worker_terminate sets and
 * notifies it, and the loop's kernel wait returns. */
static void arm_cancel(ferry_loop *loop)
{
	atomic_int *f = ferry__cancel_flag;
	if (loop->cancel_flag == f && (!f || loop->cancel_id))
		return;
	if (loop->cancel_id)
		ferry_loop_cancel(loop, loop->cancel_id);
	loop->cancel_id = 0;
	loop->cancel_flag = f;
	if (!f)
		return;
	uint64_t id;
	if (ferry_wait_async(loop, (uint32_t *)(void *)f, 0, FERRY_FOREVER, on_cancel, NULL, &id))
		return; /* the slices of other waits still apply */
	ferry_loop_ref(loop, id, 0);
	loop->cancel_id = id;
}

FERRY_API int ferry_loop_run(ferry_loop *loop, int mode)
{
	if (!loop)
		return ferry__fail(-EINVAL, "ferry_loop_run: loop is NULL");
	if (mode < FERRY_RUN_DEFAULT || mode > FERRY_RUN_NOWAIT)
		return ferry__fail(-EINVAL, "ferry_loop_run: mode %d is not a run mode", mode);
	/* seq_cst exchange: only a guard against two runs at once (another
	 * thread, or a callback); the loop's data is the running thread's. */
	if (atomic_exchange(&loop->busy, 1))
		return ferry__fail(-EBUSY, "ferry_loop_run: the loop is already running");
	loop->running = 1;
	arm_cancel(loop);
	uint64_t calls0 = loop->ncalls;
	int err = 0;
	for (;;) {
		if (mode != FERRY_RUN_NOWAIT && alive(loop) == 0)
			break;
		err = iterate(loop, mode != FERRY_RUN_NOWAIT);
		if (err)
			break;
		/* seq_cst: pairs with the store in ferry_loop_stop (a flag only) */
		if (atomic_exchange(&loop->stop, 0))
			break;
		if (mode == FERRY_RUN_NOWAIT || (mode == FERRY_RUN_ONCE && loop->ncalls != calls0))
			break;
	}
	loop->running = 0;
	free_zombies(loop);
	/* Re-arms made in the last pass reach the kernel now, not at the next
	 * run: a watch keeps its producer's notify meaningful meanwhile. */
	if (loop->be->flush)
		loop->be->flush(loop);
	atomic_store(&loop->busy, 0);
	return err ? err : alive(loop);
}

FERRY_API int ferry_loop_stop(ferry_loop *loop)
{
	if (!loop)
		return ferry__fail(-EINVAL, "ferry_loop_stop: loop is NULL");
	/* seq_cst: before the signal, so that the woken loop sees it */
	atomic_store(&loop->stop, 1);
	ferry__loop_signal(loop);
	return 0;
}

FERRY_API int ferry_loop_post(ferry_loop *loop, ferry_loop_fn cb, void *arg)
{
	if (!loop)
		return ferry__fail(-EINVAL, "ferry_loop_post: loop is NULL");
	if (!cb)
		return ferry__fail(-EINVAL, "ferry_loop_post: cb is NULL");
	struct post *p = malloc(sizeof *p);
	if (!p)
		return ferry__fail(-ENOMEM, "ferry_loop_post: out of memory");
	p->next = NULL;
	p->cb = cb;
	p->arg = arg;
	pthread_mutex_lock(&loop->mu);
	if (loop->post_tail)
		loop->post_tail->next = p;
	else
		loop->post_head = p;
	loop->post_tail = p;
	/* relaxed: a count for ferry_loop_alive only; the posts themselves
	 * travel under the mutex. */
	atomic_fetch_add_explicit(&loop->nposts, 1, memory_order_relaxed);
	pthread_mutex_unlock(&loop->mu);
	ferry__loop_signal(loop);
	return 0;
}

FERRY_API int ferry_loop_timer(ferry_loop *loop, int64_t after_ns, int64_t repeat_ns,
			       ferry_loop_fn cb, void *arg, uint64_t *id)
{
	if (!loop)
		return ferry__fail(-EINVAL, "ferry_loop_timer: loop is NULL");
	if (!cb)
		return ferry__fail(-EINVAL, "ferry_loop_timer: cb is NULL");
	if (after_ns < 0)
		return ferry__fail(-EINVAL, "ferry_loop_timer: after_ns %lld is negative",
				   (long long)after_ns);
	if (repeat_ns < 0)
		return ferry__fail(-EINVAL, "ferry_loop_timer: repeat_ns %lld is negative",
				   (long long)repeat_ns);
	struct src *s = src_new(loop, SRC_TIMER, cb, arg);
	if (!s)
		return ferry__fail(-ENOMEM, "ferry_loop_timer: out of memory");
	int64_t now = ferry__now_ns();
	s->t.deadline = after_ns > INT64_MAX - now ? INT64_MAX : now + after_ns;
	s->t.repeat = repeat_ns;
	s->t.seq = loop->timer_seq++;
	s->t.heap = HEAP_NONE;
	if (heap_push(loop, s)) {
		src_end(loop, s);
		return ferry__fail(-ENOMEM, "ferry_loop_timer: out of memory");
	}
	if (id)
		*id = s->id;
	return 0;
}

#define FD_EVENTS (FERRY_LOOP_READABLE | FERRY_LOOP_WRITABLE)

FERRY_API int ferry_loop_fd(ferry_loop *loop, int fd, unsigned events, ferry_loop_fn cb,
			    void *arg, uint64_t *id)
{
	if (!loop)
		return ferry__fail(-EINVAL, "ferry_loop_fd: loop is NULL");
	if (!cb)
		return ferry__fail(-EINVAL, "ferry_loop_fd: cb is NULL");
	if (fd < 0)
		return ferry__fail(-EINVAL, "ferry_loop_fd: fd %d is negative", fd);
	if (!events || (events & ~FD_EVENTS))
		return ferry__fail(-EINVAL,
				   "ferry_loop_fd: events 0x%x: want FERRY_LOOP_READABLE and/or _WRITABLE",
				   events);
	if (fd < loop->fdcap && loop->fdmap[fd])
		return ferry__fail(-EEXIST, "ferry_loop_fd: fd %d is already watched by this loop", fd);
	/* The same answer from both backends: io_uring would accept these and
	 * report them ready forever (or fail later), epoll refuses them. */
	struct stat st;
	if (fstat(fd, &st))
		return ferry__errno(-errno, "ferry_loop_fd: fd %d", fd);
	if (S_ISREG(st.st_mode) || S_ISDIR(st.st_mode))
		return ferry__fail(-EPERM, "ferry_loop_fd: fd %d is a regular file or directory "
				   "(always ready; nothing to watch)", fd);
	if (fd >= loop->fdcap) {
		int cap = loop->fdcap ? loop->fdcap : 64;
		while (cap <= fd)
			cap = cap > INT_MAX / 2 ? INT_MAX : cap * 2;
		struct src **m = realloc(loop->fdmap, (size_t)cap * sizeof *m);
		if (!m)
			return ferry__fail(-ENOMEM, "ferry_loop_fd: out of memory");
		memset(m + loop->fdcap, 0, (size_t)(cap - loop->fdcap) * sizeof *m);
		loop->fdmap = m;
		loop->fdcap = cap;
	}
	struct src *s = src_new(loop, SRC_FD, cb, arg);
	if (!s)
		return ferry__fail(-ENOMEM, "ferry_loop_fd: out of memory");
	s->fd.fd = fd;
	s->fd.events = events;
	int r = loop->be->fd_arm(loop, s);
	if (r) {
		src_end(loop, s);
		return r;
	}
	loop->fdmap[fd] = s;
	if (id)
		*id = s->id;
	return 0;
}

FERRY_API int ferry_loop_fd_update(ferry_loop *loop, uint64_t id, unsigned events)
{
	if (!loop)
		return ferry__fail(-EINVAL, "ferry_loop_fd_update: loop is NULL");
	if (!events || (events & ~FD_EVENTS))
		return ferry__fail(-EINVAL, "ferry_loop_fd_update: events 0x%x: want "
				   "FERRY_LOOP_READABLE and/or _WRITABLE", events);
	struct src *s = by_id(loop, id);
	if (!s || s->kind != SRC_FD)
		return ferry__fail(-ENOENT, "ferry_loop_fd_update: no fd source with id %#llx",
				   (unsigned long long)id);
	if (s->fd.events == events)
		return 0;
	s->fd.events = events;
	int r = loop->be->fd_arm(loop, s);
	if (r)
		src_end(loop, s);
	return r;
}

static int check_word(const void *word, const char *fn, const char *what)
{
	if (!word)
		return ferry__fail(-EINVAL, "%s: %s is NULL", fn, what);
	if ((uintptr_t)word & (alignof(uint32_t) - 1))
		return ferry__fail(-EINVAL, "%s: %s %p is not 4-byte aligned", fn, what, word);
	return 0;
}

FERRY_API int ferry_wait_async(ferry_loop *loop, uint32_t *word, uint32_t expected,
			       int64_t timeout_ns, ferry_loop_fn cb, void *arg, uint64_t *id)
{
	if (!loop)
		return ferry__fail(-EINVAL, "ferry_wait_async: loop is NULL");
	int r = check_word(word, "ferry_wait_async", "word");
	if (r)
		return r;
	if (!cb)
		return ferry__fail(-EINVAL, "ferry_wait_async: cb is NULL");
	struct src *s = src_new(loop, SRC_WAIT, cb, arg);
	if (!s)
		return ferry__fail(-ENOMEM, "ferry_wait_async: out of memory");
	s->w.word = word;
	s->w.expected = expected;
	s->w.deadline = -1;
	/* seq_cst like Atomics.waitAsync's read (and ferry_wait's); pairs with
	 * the store a notifier makes before notifying. */
	if (__atomic_load_n(word, __ATOMIC_SEQ_CST) != expected) {
		s->res = -EAGAIN;
		queue(loop, s);
	} else if (timeout_ns == 0) {
		s->res = -ETIMEDOUT;
		queue(loop, s);
	} else {
		if (timeout_ns > 0) {
			int64_t now = ferry__now_ns();
			if (timeout_ns <= INT64_MAX - now) /* else beyond any clock: no limit */
				s->w.deadline = now + timeout_ns;
		}
		r = loop->be->futex_arm(loop, s, word, expected, s->w.deadline);
		if (r) {
			src_end(loop, s);
			return r;
		}
	}
	if (id)
		*id = s->id;
	return 0;
}

FERRY_API int ferry_loop_watch_ec(ferry_loop *loop, struct ferry_ec *ec, ferry_loop_ready_fn ready,
				  ferry_loop_fn cb, void *arg, uint64_t *id)
{
	if (!loop)
		return ferry__fail(-EINVAL, "ferry_loop_watch_ec: loop is NULL");
	int r = check_word(ec, "ferry_loop_watch_ec", "ec");
	if (r)
		return r;
	if (!ready)
		return ferry__fail(-EINVAL, "ferry_loop_watch_ec: ready is NULL");
	if (!cb)
		return ferry__fail(-EINVAL, "ferry_loop_watch_ec: cb is NULL");
	struct src *s = src_new(loop, SRC_EC, cb, arg);
	if (!s)
		return ferry__fail(-ENOMEM, "ferry_loop_watch_ec: out of memory");
	s->ec.ec = ec;
	s->ec.ready = ready;
	queue(loop, s); /* first look in the next iteration */
	if (id)
		*id = s->id;
	return 0;
}

FERRY_API int ferry_loop_cancel(ferry_loop *loop, uint64_t id)
{
	if (!loop)
		return ferry__fail(-EINVAL, "ferry_loop_cancel: loop is NULL");
	struct src *s = by_id(loop, id);
	if (!s)
		return ferry__fail(-ENOENT, "ferry_loop_cancel: no source with id %#llx (ended?)",
				   (unsigned long long)id);
	src_end(loop, s);
	return 0;
}

FERRY_API int ferry_loop_ref(ferry_loop *loop, uint64_t id, int ref)
{
	if (!loop)
		return ferry__fail(-EINVAL, "ferry_loop_ref: loop is NULL");
	struct src *s = by_id(loop, id);
	if (!s)
		return ferry__fail(-ENOENT, "ferry_loop_ref: no source with id %#llx (ended?)",
				   (unsigned long long)id);
	uint8_t want = ref != 0;
	if (s->ref != want) {
		s->ref = want;
		if (want)
			loop->nref++;
		else
			loop->nref--;
	}
	return 0;
}

FERRY_API int ferry_loop_alive(const ferry_loop *loop)
{
	if (!loop)
		return ferry__fail(-EINVAL, "ferry_loop_alive: loop is NULL");
	return alive(loop);
}
