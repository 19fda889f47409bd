/*
 * ferry_loop: timers, fds, wait_async, eventcount watches, posts, stop,
 * cancellation and teardown. Every scenario runs twice, once per backend
 * (FERRY_LOOP=uring and FERRY_LOOP=epoll before the loop is created); the
 * io_uring run is skipped when the kernel refuses io_uring here.
 */
#include "ferry/loop.h"
#include "util/util.h"

#include <criterion/criterion.h>
#include <errno.h>
#include <fcntl.h>
#include <pthread.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <linux/audit.h>
#include <linux/filter.h>
#include <linux/seccomp.h>
#include <stddef.h>
#include <sys/prctl.h>
#include <sys/syscall.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#define MS 1000000LL

/* ---- both backends ---- */

static const char *g_backend;

static void use_backend(const char *b)
{
	setenv("FERRY_LOOP", b, 1);
	g_backend = b;
	if (strcmp(b, "uring") == 0) {
		ferry_loop *l = NULL;
		int r = ferry_loop_create(&l, NULL);
		if (r == -EOPNOTSUPP || r == -ENOSYS || r == -EPERM || r == -EACCES)
			cr_skip("io_uring unusable here: %s", ferry_errmsg());
		cr_assert_eq(r, 0, "ferry_loop_create(uring): %d %s", r, ferry_errmsg());
		ferry_loop_destroy(l);
	}
}

static ferry_loop *new_loop(void)
{
	ferry_loop *l = NULL;
	int r = ferry_loop_create(&l, NULL);
	cr_assert_eq(r, 0, "ferry_loop_create: %d %s", r, ferry_errmsg());
	cr_assert_str_eq(ferry_loop_backend(l), g_backend);
	return l;
}

#define BOTH(name)                                   \
	static void name(void);                      \
	Test(loop, name##_uring)                     \
	{                                            \
		use_backend("uring");                \
		name();                              \
	}                                            \
	Test(loop, name##_epoll)                     \
	{                                            \
		use_backend("epoll");                \
		name();                              \
	}                                            \
	static void name(void)

TestSuite(loop, .timeout = 60);

/* A run that must end by itself: a stuck loop fails the test through this
 * unreferenced guard timer instead of the suite timeout. */
static int g_guard_fired;

static void guard_cb(ferry_loop *loop, uint64_t id, int res, void *arg)
{
	g_guard_fired = 1;
	ferry_loop_stop(loop);
}

static void add_guard(ferry_loop *loop, int64_t ns)
{
	uint64_t id;
	cr_assert_eq(ferry_loop_timer(loop, ns, 0, guard_cb, NULL, &id), 0);
	cr_assert_eq(ferry_loop_ref(loop, id, 0), 0);
}

/* ---- timers ---- */

struct rec {
	int order[16];
	int64_t at[16];
	int n;
};

struct tagged {
	struct rec *r;
	int tag;
};

static void tagged_cb(ferry_loop *loop, uint64_t id, int res, void *arg)
{
	struct tagged *t = arg;
	t->r->at[t->r->n] = tu_now_ns();
	t->r->order[t->r->n++] = t->tag;
	cr_expect_eq(res, 0);
}

BOTH(timers_fire_in_deadline_order)
{
	ferry_loop *loop = new_loop();
	struct rec r = { 0 };
	struct tagged t[4] = { { &r, 30 }, { &r, 10 }, { &r, 20 }, { &r, 11 } };
	int64_t after[4] = { 30 * MS, 10 * MS, 20 * MS, 10 * MS };
	int64_t t0 = tu_now_ns();
	for (int i = 0; i < 4; i++)
		cr_assert_eq(ferry_loop_timer(loop, after[i], 0, tagged_cb, &t[i], NULL), 0);
	/* t[1] and t[3] share a deadline up to the clock: creation order breaks ties */
	cr_assert_eq(ferry_loop_alive(loop), 4);
	cr_assert_eq(ferry_loop_run(loop, FERRY_RUN_DEFAULT), 0);
	cr_assert_eq(r.n, 4);
	int want[4] = { 10, 11, 20, 30 };
	for (int i = 0; i < 4; i++) {
		cr_expect_eq(r.order[i], want[i], "fired #%d: tag %d, want %d", i, r.order[i], want[i]);
		cr_expect_geq(r.at[i] - t0, (int64_t)(want[i] / 10) * 10 * MS, "tag %d fired early", r.order[i]);
	}
	ferry_loop_destroy(loop);
}

struct rep {
	int n, stop_at;
	int64_t t0, last;
};

static void rep_cb(ferry_loop *loop, uint64_t id, int res, void *arg)
{
	struct rep *p = arg;
	p->n++;
	p->last = tu_now_ns();
	if (p->n == p->stop_at)
		cr_expect_eq(ferry_loop_cancel(loop, id), 0, "a repeating timer cancels itself");
}

BOTH(timer_repeats_until_cancelled)
{
	ferry_loop *loop = new_loop();
	struct rep p = { .stop_at = 5, .t0 = tu_now_ns() };
	uint64_t id;
	cr_assert_eq(ferry_loop_timer(loop, 2 * MS, 2 * MS, rep_cb, &p, &id), 0);
	cr_assert_neq(id, 0);
	cr_assert_eq(ferry_loop_run(loop, FERRY_RUN_DEFAULT), 0);
	cr_expect_eq(p.n, 5);
	cr_expect_geq(p.last - p.t0, 10 * MS, "5 periods of 2 ms took %lld ns",
		      (long long)(p.last - p.t0));
	cr_expect_eq(ferry_loop_cancel(loop, id), -ENOENT, "cancelled already");
	ferry_loop_destroy(loop);
}

/* ---- cancellation from callbacks ---- */

struct canc {
	uint64_t victims[4];
	int nvictims;
	int victim_calls;
	int self_cancel;
	int added_ran;
};

static void victim_cb(ferry_loop *loop, uint64_t id, int res, void *arg)
{
	struct canc *c = arg;
	c->victim_calls++;
}

static void added_cb(ferry_loop *loop, uint64_t id, int res, void *arg)
{
	struct canc *c = arg;
	c->added_ran++;
}

static void killer_cb(ferry_loop *loop, uint64_t id, int res, void *arg)
{
	struct canc *c = arg;
	/* One-shot: it ended before its callback, so cancelling itself is -ENOENT. */
	c->self_cancel = ferry_loop_cancel(loop, id);
	for (int i = 0; i < c->nvictims; i++)
		cr_expect_eq(ferry_loop_cancel(loop, c->victims[i]), 0, "victim %d", i);
	/* and sources may be added from a callback */
	cr_expect_eq(ferry_loop_timer(loop, 0, 0, added_cb, c, NULL), 0);
}

BOTH(callback_cancels_other_sources)
{
	ferry_loop *loop = new_loop();
	struct canc c = { 0 };
	static uint32_t word; /* never notified */
	int p[2];
	cr_assert_eq(pipe2(p, O_CLOEXEC), 0); /* never readable */

	cr_assert_eq(ferry_loop_timer(loop, 1 * MS, 0, killer_cb, &c, NULL), 0);
	/* created later with the same delay: due in the killer's timer phase, after it */
	cr_assert_eq(ferry_loop_timer(loop, 1 * MS, 0, victim_cb, &c, &c.victims[0]), 0);
	cr_assert_eq(ferry_wait_async(loop, &word, 0, FERRY_FOREVER, victim_cb, &c, &c.victims[1]), 0);
	cr_assert_eq(ferry_loop_timer(loop, 50 * MS, 0, victim_cb, &c, &c.victims[2]), 0);
	cr_assert_eq(ferry_loop_fd(loop, p[0], FERRY_LOOP_READABLE, victim_cb, &c, &c.victims[3]), 0);
	c.nvictims = 4;
	add_guard(loop, 10000 * MS);
	cr_assert_eq(ferry_loop_run(loop, FERRY_RUN_DEFAULT), 0);
	cr_expect_not(g_guard_fired);
	cr_expect_eq(c.self_cancel, -ENOENT);
	cr_expect_eq(c.added_ran, 1);
	cr_expect_eq(c.victim_calls, 0);
	for (int i = 0; i < c.nvictims; i++)
		cr_expect_eq(ferry_loop_cancel(loop, c.victims[i]), -ENOENT);
	ferry_loop_destroy(loop);
	close(p[0]);
	close(p[1]);
}

/* Two sources whose events arrive in the same batch, each cancelling the
 * other: exactly one callback runs. */
struct pair {
	uint64_t id[2];
	int calls;
	int fds[2];
};

static void pair_cb(ferry_loop *loop, uint64_t id, int res, void *arg)
{
	struct pair *p = arg;
	p->calls++;
	uint64_t other = id == p->id[0] ? p->id[1] : p->id[0];
	cr_expect_eq(ferry_loop_cancel(loop, other), 0);
	ferry_loop_cancel(loop, id); /* fds: stop the level-triggered repeats */
}

BOTH(callback_cancels_a_source_with_a_pending_event)
{
	ferry_loop *loop = new_loop();
	struct pair fp = { 0 }, wp = { 0 };
	int a[2], b[2];
	cr_assert_eq(pipe2(a, O_CLOEXEC), 0);
	cr_assert_eq(pipe2(b, O_CLOEXEC), 0);
	cr_assert_eq(write(a[1], "x", 1), 1);
	cr_assert_eq(write(b[1], "x", 1), 1);
	cr_assert_eq(ferry_loop_fd(loop, a[0], FERRY_LOOP_READABLE, pair_cb, &fp, &fp.id[0]), 0);
	cr_assert_eq(ferry_loop_fd(loop, b[0], FERRY_LOOP_READABLE, pair_cb, &fp, &fp.id[1]), 0);

	static uint32_t w[2];
	cr_assert_eq(ferry_wait_async(loop, &w[0], 0, FERRY_FOREVER, pair_cb, &wp, &wp.id[0]), 0);
	cr_assert_eq(ferry_wait_async(loop, &w[1], 0, FERRY_FOREVER, pair_cb, &wp, &wp.id[1]), 0);
	for (int i = 0; i < 2; i++) {
		__atomic_store_n(&w[i], 1, __ATOMIC_SEQ_CST);
		ferry_notify(&w[i], 1);
	}
	tu_sleep_ms(20); /* both completions are in (epoll: the helpers have reported) */
	add_guard(loop, 10000 * MS);
	cr_assert_eq(ferry_loop_run(loop, FERRY_RUN_DEFAULT), 0);
	cr_expect_not(g_guard_fired);
	cr_expect_eq(fp.calls, 1, "fd callbacks: %d", fp.calls);
	cr_expect_eq(wp.calls, 1, "wait callbacks: %d", wp.calls);
	ferry_loop_destroy(loop);
	for (int i = 0; i < 2; i++) {
		close(a[i]);
		close(b[i]);
	}
}

/* A wait cancelled while its kernel operation is in flight, its slot reused
 * at once: the stale completion must not reach the new source. */
struct slotreuse {
	int a_calls, b_calls, b_res;
};

static void reuse_a(ferry_loop *loop, uint64_t id, int res, void *arg)
{
	((struct slotreuse *)arg)->a_calls++;
}

static void reuse_b(ferry_loop *loop, uint64_t id, int res, void *arg)
{
	struct slotreuse *s = arg;
	s->b_calls++;
	s->b_res = res;
}

BOTH(stale_completion_after_cancel_is_dropped)
{
	ferry_loop *loop = new_loop();
	static uint32_t wa, wb;
	struct slotreuse s = { 0 };
	uint64_t a, b;
	cr_assert_eq(ferry_wait_async(loop, &wa, 0, FERRY_FOREVER, reuse_a, &s, &a), 0);
	cr_assert_eq(ferry_loop_run(loop, FERRY_RUN_NOWAIT), 1);
	cr_assert_eq(ferry_loop_cancel(loop, a), 0);
	cr_assert_eq(ferry_wait_async(loop, &wb, 0, 200 * MS, reuse_b, &s, &b), 0);
	cr_assert_neq(a, b, "ids are never reused");
	cr_assert_eq((uint32_t)a, (uint32_t)b, "the slot is (the test wants it reused)");
	/* a notify on the cancelled word: its completion (if any) is stale */
	__atomic_store_n(&wa, 1, __ATOMIC_SEQ_CST);
	ferry_notify(&wa, FERRY_NOTIFY_ALL);
	cr_assert_eq(ferry_loop_run(loop, FERRY_RUN_DEFAULT), 0);
	cr_expect_eq(s.a_calls, 0);
	cr_expect_eq(s.b_calls, 1);
	cr_expect_eq(s.b_res, -ETIMEDOUT, "b timed out (res %d)", s.b_res);
	ferry_loop_destroy(loop);
}

/* ---- fds ---- */

struct fdt {
	int rfd;
	int wfd;
	int reads;
	unsigned last;
	int hup;
	int writable;
	uint64_t rid;
};

static void fd_read_cb(ferry_loop *loop, uint64_t id, int res, void *arg)
{
	struct fdt *f = arg;
	cr_assert_geq(res, 0);
	f->last = (unsigned)res;
	if (res & FERRY_LOOP_READABLE) {
		char buf[16];
		ssize_t n = read(f->rfd, buf, sizeof buf);
		if (n > 0)
			f->reads += (int)n;
	}
	if (res & FERRY_LOOP_HUP) {
		f->hup = 1;
		ferry_loop_cancel(loop, id);
	}
}

static void fd_write_timer(ferry_loop *loop, uint64_t id, int res, void *arg)
{
	struct fdt *f = arg;
	cr_assert_eq(write(f->wfd, "ab", 2), 2);
}

static void fd_close_timer(ferry_loop *loop, uint64_t id, int res, void *arg)
{
	struct fdt *f = arg;
	close(f->wfd);
	f->wfd = -1;
}

static void fd_writable_cb(ferry_loop *loop, uint64_t id, int res, void *arg)
{
	struct fdt *f = arg;
	cr_expect(res & FERRY_LOOP_WRITABLE);
	f->writable++;
	ferry_loop_cancel(loop, id);
}

BOTH(fd_readiness_on_a_pipe)
{
	ferry_loop *loop = new_loop();
	int p[2];
	cr_assert_eq(pipe2(p, O_CLOEXEC | O_NONBLOCK), 0);
	struct fdt f = { .rfd = p[0], .wfd = p[1] };
	cr_assert_eq(ferry_loop_fd(loop, p[0], FERRY_LOOP_READABLE, fd_read_cb, &f, &f.rid), 0);
	cr_assert_eq(ferry_loop_timer(loop, 5 * MS, 0, fd_write_timer, &f, NULL), 0);
	cr_assert_eq(ferry_loop_timer(loop, 20 * MS, 0, fd_close_timer, &f, NULL), 0);
	add_guard(loop, 5000 * MS);
	cr_assert_eq(ferry_loop_run(loop, FERRY_RUN_DEFAULT), 0);
	cr_expect_not(g_guard_fired);
	cr_expect_eq(f.reads, 2);
	cr_expect_eq(f.hup, 1, "the writer's close is seen as HUP");

	/* writable at once; and fd_update switches what is waited for */
	int q[2];
	cr_assert_eq(pipe2(q, O_CLOEXEC | O_NONBLOCK), 0);
	uint64_t wid;
	cr_assert_eq(ferry_loop_fd(loop, q[1], FERRY_LOOP_READABLE, fd_writable_cb, &f, &wid), 0);
	cr_assert_eq(ferry_loop_run(loop, FERRY_RUN_NOWAIT), 1);
	cr_assert_eq(f.writable, 0, "a pipe's write end never becomes readable");
	cr_assert_eq(ferry_loop_fd_update(loop, wid, FERRY_LOOP_WRITABLE), 0);
	cr_assert_eq(ferry_loop_run(loop, FERRY_RUN_DEFAULT), 0);
	cr_expect_eq(f.writable, 1);
	ferry_loop_destroy(loop);
	close(p[0]);
	close(q[0]);
	close(q[1]);
}

/* ---- wait_async ---- */

struct wres {
	int calls;
	int res;
	int64_t at;
};

static void wres_cb(ferry_loop *loop, uint64_t id, int res, void *arg)
{
	struct wres *w = arg;
	w->calls++;
	w->res = res;
	w->at = tu_now_ns();
}

static void store_notify_timer(ferry_loop *loop, uint64_t id, int res, void *arg)
{
	uint32_t *word = arg;
	__atomic_store_n(word, 7, __ATOMIC_SEQ_CST);
	ferry_notify(word, FERRY_NOTIFY_ALL);
}

BOTH(wait_async_ok_not_equal_timed_out)
{
	ferry_loop *loop = new_loop();
	static uint32_t w1 = 5, w2, w3, w4;
	struct wres ne = { 0 }, zero = { 0 }, to = { 0 }, ok = { 0 };
	int64_t t0 = tu_now_ns();
	cr_assert_eq(ferry_wait_async(loop, &w1, 4, FERRY_FOREVER, wres_cb, &ne, NULL), 0);
	cr_assert_eq(ne.calls, 0, "never called from inside ferry_wait_async");
	cr_assert_eq(ferry_wait_async(loop, &w2, 0, 0, wres_cb, &zero, NULL), 0);
	cr_assert_eq(ferry_wait_async(loop, &w3, 0, 20 * MS, wres_cb, &to, NULL), 0);
	cr_assert_eq(ferry_wait_async(loop, &w4, 0, 5000 * MS, wres_cb, &ok, NULL), 0);
	cr_assert_eq(ferry_loop_timer(loop, 5 * MS, 0, store_notify_timer, &w4, NULL), 0);
	cr_assert_eq(ferry_loop_run(loop, FERRY_RUN_DEFAULT), 0);
	cr_expect_eq(ne.calls, 1);
	cr_expect_eq(ne.res, -EAGAIN, "not-equal: %d", ne.res);
	cr_expect_eq(zero.calls, 1);
	cr_expect_eq(zero.res, -ETIMEDOUT, "timeout 0: %d", zero.res);
	cr_expect_eq(to.calls, 1);
	cr_expect_eq(to.res, -ETIMEDOUT, "timed-out: %d", to.res);
	cr_expect_geq(to.at - t0, 20 * MS, "timed out after %lld ns", (long long)(to.at - t0));
	cr_expect_eq(ok.calls, 1);
	cr_expect_eq(ok.res, 0, "ok: %d", ok.res);
	cr_expect_geq(ok.at - t0, 5 * MS);
	ferry_loop_destroy(loop);
}

/* A notifier that does not change the word: it notifies until its notify
 * reports one waiter woken, so the count proves the waiter was queued. */
struct notifier {
	uint32_t *word;
	int store; /* store a new value before each notify */
	int woke;
};

static int notify_until_woken(uint32_t *word, int store)
{
	int64_t end = tu_now_ns() + 10000 * MS;
	tu_sleep_ms(5);
	while (tu_now_ns() < end) {
		if (store)
			__atomic_store_n(word, 1, __ATOMIC_SEQ_CST);
		int n = ferry_notify(word, 1);
		if (n != 0)
			return n;
		tu_sleep_ms(1);
	}
	return 0;
}

static void *notifier_main(void *arg)
{
	struct notifier *n = arg;
	n->woke = notify_until_woken(n->word, n->store);
	return NULL;
}

BOTH(wait_async_notified_by_thread)
{
	for (int store = 0; store <= 1; store++) {
		ferry_loop *loop = new_loop();
		static uint32_t word;
		__atomic_store_n(&word, 0, __ATOMIC_SEQ_CST);
		struct wres w = { 0 };
		cr_assert_eq(ferry_wait_async(loop, &word, 0, FERRY_FOREVER, wres_cb, &w, NULL), 0);
		struct notifier n = { &word, store, 0 };
		pthread_t th;
		cr_assert_eq(pthread_create(&th, NULL, notifier_main, &n), 0);
		add_guard(loop, 20000 * MS);
		int r = ferry_loop_run(loop, FERRY_RUN_DEFAULT);
		pthread_join(th, NULL);
		cr_expect_eq(r, 0);
		cr_expect_not(g_guard_fired);
		cr_expect_eq(w.calls, 1);
		cr_expect_eq(w.res, 0, "store=%d: res %d", store, w.res);
		if (!store)
			cr_expect_eq(n.woke, 1, "the notify counted the async waiter");
		ferry_loop_destroy(loop);
	}
}

static int child_notify(void *arg)
{
	return notify_until_woken(arg, 0) == 1 ? 0 : 1;
}

BOTH(wait_async_notified_by_process)
{
	ferry_loop *loop = new_loop();
	uint32_t *word = tu_shared_alloc(4096);
	struct wres w = { 0 };
	cr_assert_eq(ferry_wait_async(loop, word, 0, 20000 * MS, wres_cb, &w, NULL), 0);
	pid_t pid = tu_fork(child_notify, word);
	cr_assert_eq(ferry_loop_run(loop, FERRY_RUN_DEFAULT), 0);
	int st = tu_wait(pid, 20000);
	cr_expect(st != -1 && WIFEXITED(st) && WEXITSTATUS(st) == 0, "child: status %d", st);
	cr_expect_eq(w.calls, 1);
	cr_expect_eq(w.res, 0, "res %d", w.res);
	ferry_loop_destroy(loop);
	tu_shared_free(word, 4096);
}

/* ---- eventcount watches ---- */

#define EC_ITEMS 100000

struct ecq {
	struct ferry_ec ec;
	_Atomic uint32_t produced;
	uint32_t consumed; /* loop thread */
	uint32_t total;
	int calls;
	int max_batch;
	uint64_t id;
};

static int ecq_ready(void *arg)
{
	struct ecq *q = arg;
	/* acquire: pairs with the producer's release increment */
	return atomic_load_explicit(&q->produced, memory_order_acquire) != q->consumed;
}

static void ecq_cb(ferry_loop *loop, uint64_t id, int res, void *arg)
{
	struct ecq *q = arg;
	cr_assert_eq(res, 0);
	q->calls++;
	uint32_t avail = atomic_load_explicit(&q->produced, memory_order_acquire) - q->consumed;
	uint32_t take = avail < FERRY_LOOP_BATCH ? avail : FERRY_LOOP_BATCH;
	q->consumed += take;
	if ((int)take > q->max_batch)
		q->max_batch = (int)take;
	if (q->consumed == q->total)
		ferry_loop_cancel(loop, id);
}

static void *ec_producer(void *arg)
{
	struct ecq *q = arg;
	for (uint32_t i = 0; i < q->total; i++) {
		/* release: pairs with ecq_ready's acquire */
		atomic_fetch_add_explicit(&q->produced, 1, memory_order_release);
		ferry_ec_notify(&q->ec);
		if ((i & 1023) == 0)
			sched_yield(); /* let the loop catch up now and then: more sleeps */
	}
	return NULL;
}

BOTH(watch_ec_loses_no_wakeup)
{
	ferry_loop *loop = new_loop();
	struct ecq *q = calloc(1, sizeof *q);
	ferry_ec_init(&q->ec);
	q->total = EC_ITEMS;
	cr_assert_eq(ferry_loop_watch_ec(loop, &q->ec, ecq_ready, ecq_cb, q, &q->id), 0);
	pthread_t th;
	cr_assert_eq(pthread_create(&th, NULL, ec_producer, q), 0);
	add_guard(loop, 30000 * MS);
	int r = ferry_loop_run(loop, FERRY_RUN_DEFAULT);
	pthread_join(th, NULL);
	cr_expect_eq(r, 0);
	cr_expect_not(g_guard_fired, "stuck: consumed %u of %u", q->consumed, q->total);
	cr_expect_eq(q->consumed, q->total);
	cr_expect_leq(q->max_batch, FERRY_LOOP_BATCH);
	cr_log_info("%s: %d callbacks for %u items", g_backend, q->calls, q->total);
	ferry_loop_destroy(loop);
	free(q);
}

/* The same across processes: the eventcount and the counter in a shared
 * mapping, the producer a forked child. */
struct ecshared {
	struct ferry_ec ec;
	_Atomic uint32_t produced;
};

struct ecproc {
	struct ecshared *sh;
	uint32_t consumed, total;
};

static int ecp_ready(void *arg)
{
	struct ecproc *p = arg;
	return atomic_load_explicit(&p->sh->produced, memory_order_acquire) != p->consumed;
}

static void ecp_cb(ferry_loop *loop, uint64_t id, int res, void *arg)
{
	struct ecproc *p = arg;
	uint32_t avail = atomic_load_explicit(&p->sh->produced, memory_order_acquire) - p->consumed;
	p->consumed += avail < FERRY_LOOP_BATCH ? avail : FERRY_LOOP_BATCH;
	if (p->consumed == p->total)
		ferry_loop_cancel(loop, id);
}

static int ecp_child(void *arg)
{
	struct ecshared *sh = arg;
	for (int i = 0; i < 2000; i++) {
		atomic_fetch_add_explicit(&sh->produced, 1, memory_order_release);
		ferry_ec_notify(&sh->ec);
		if ((i & 63) == 0)
			tu_sleep_ms(1); /* so that the loop sleeps in between */
	}
	return 0;
}

BOTH(watch_ec_across_processes)
{
	ferry_loop *loop = new_loop();
	struct ecshared *sh = tu_shared_alloc(4096);
	struct ecproc p = { sh, 0, 2000 };
	cr_assert_eq(ferry_loop_watch_ec(loop, &sh->ec, ecp_ready, ecp_cb, &p, NULL), 0);
	pid_t pid = tu_fork(ecp_child, sh);
	add_guard(loop, 20000 * MS);
	cr_expect_eq(ferry_loop_run(loop, FERRY_RUN_DEFAULT), 0);
	int st = tu_wait(pid, 20000);
	cr_expect(st != -1 && WIFEXITED(st) && WEXITSTATUS(st) == 0, "child: status %d", st);
	cr_expect_not(g_guard_fired, "stuck at %u of %u", p.consumed, p.total);
	cr_expect_eq(p.consumed, p.total);
	ferry_loop_destroy(loop);
	tu_shared_free(sh, 4096);
}

/* ---- fairness ---- */

struct busy {
	int calls;
	int other_calls;
	int fired;         /* timer, fd, wait */
	int timer_fired, fd_fired, wait_fired;
	int wait_res;
	int rfd;
	uint64_t ids[2];
};

static int always_ready(void *arg)
{
	return 1;
}

static void busy_cb(ferry_loop *loop, uint64_t id, int res, void *arg)
{
	struct busy *b = arg;
	b->calls++;
}

static void other_cb(ferry_loop *loop, uint64_t id, int res, void *arg)
{
	struct busy *b = arg;
	b->other_calls++;
}

static void fair_done(ferry_loop *loop, struct busy *b)
{
	if (++b->fired == 3) {
		ferry_loop_cancel(loop, b->ids[0]);
		ferry_loop_cancel(loop, b->ids[1]);
	}
}

static void fair_timer(ferry_loop *loop, uint64_t id, int res, void *arg)
{
	struct busy *b = arg;
	b->timer_fired = 1;
	fair_done(loop, b);
}

static void fair_fd(ferry_loop *loop, uint64_t id, int res, void *arg)
{
	struct busy *b = arg;
	char c;
	cr_expect_eq(read(b->rfd, &c, 1), 1);
	b->fd_fired = 1;
	ferry_loop_cancel(loop, id);
	fair_done(loop, b);
}

static void fair_wait(ferry_loop *loop, uint64_t id, int res, void *arg)
{
	struct busy *b = arg;
	b->wait_fired = 1;
	b->wait_res = res;
	fair_done(loop, b);
}

struct delayed_write {
	int fd;
	uint32_t *word;
};

static void *delayed_main(void *arg)
{
	struct delayed_write *d = arg;
	tu_sleep_ms(2);
	if (write(d->fd, "x", 1) != 1)
		return NULL;
	__atomic_store_n(d->word, 1, __ATOMIC_SEQ_CST);
	ferry_notify(d->word, 1);
	return NULL;
}

BOTH(busy_watches_do_not_starve_other_sources)
{
	ferry_loop *loop = new_loop();
	struct busy b = { 0 };
	static struct ferry_ec ec1, ec2;
	static uint32_t word;
	int p[2];
	cr_assert_eq(pipe2(p, O_CLOEXEC), 0);
	b.rfd = p[0];
	cr_assert_eq(ferry_loop_watch_ec(loop, &ec1, always_ready, busy_cb, &b, &b.ids[0]), 0);
	cr_assert_eq(ferry_loop_watch_ec(loop, &ec2, always_ready, other_cb, &b, &b.ids[1]), 0);
	cr_assert_eq(ferry_loop_run(loop, FERRY_RUN_NOWAIT), 2);
	cr_assert_eq(b.calls, 1, "one callback per pass");
	cr_assert_eq(b.other_calls, 1);
	int64_t t0 = tu_now_ns();
	cr_assert_eq(ferry_loop_timer(loop, 1 * MS, 0, fair_timer, &b, NULL), 0);
	cr_assert_eq(ferry_loop_fd(loop, p[0], FERRY_LOOP_READABLE, fair_fd, &b, NULL), 0);
	cr_assert_eq(ferry_wait_async(loop, &word, 0, FERRY_FOREVER, fair_wait, &b, NULL), 0);
	struct delayed_write d = { p[1], &word };
	pthread_t th;
	cr_assert_eq(pthread_create(&th, NULL, delayed_main, &d), 0);
	add_guard(loop, 10000 * MS);
	cr_assert_eq(ferry_loop_run(loop, FERRY_RUN_DEFAULT), 0);
	pthread_join(th, NULL);
	cr_expect_not(g_guard_fired, "timer %d fd %d wait %d", b.timer_fired, b.fd_fired,
		      b.wait_fired);
	cr_expect(b.timer_fired && b.fd_fired && b.wait_fired);
	cr_expect_eq(b.wait_res, 0);
	cr_expect_geq(tu_now_ns() - t0, 2 * MS);
	/* one callback per iteration each: the two busy sources alternate */
	int diff = b.calls - b.other_calls;
	cr_expect(diff >= -1 && diff <= 1, "busy %d, other %d", b.calls, b.other_calls);
	ferry_loop_destroy(loop);
	close(p[0]);
	close(p[1]);
}

/* Many sources of each kind: more eventcount watches than one futex_waitv
 * holds (127), and more waits than the epoll backend parks helpers for. */
#define MANY_EC 300
#define MANY_WAIT 24

struct many {
	struct ferry_ec ec[MANY_EC];
	uint32_t flag[MANY_EC];
	uint32_t words[MANY_WAIT];
	int ec_calls, wait_calls, wait_ok;
};

static struct many *g_many;

static int many_ready(void *arg)
{
	uint32_t *flag = arg;
	return __atomic_load_n(flag, __ATOMIC_ACQUIRE) != 0;
}

static void many_ec_cb(ferry_loop *loop, uint64_t id, int res, void *arg)
{
	g_many->ec_calls++;
	ferry_loop_cancel(loop, id);
}

static void many_wait_cb(ferry_loop *loop, uint64_t id, int res, void *arg)
{
	g_many->wait_calls++;
	g_many->wait_ok += res == 0;
}

static void *many_producer(void *arg)
{
	struct many *m = arg;
	tu_sleep_ms(10);
	for (int i = 0; i < MANY_EC; i++) {
		__atomic_store_n(&m->flag[i], 1, __ATOMIC_RELEASE);
		ferry_ec_notify(&m->ec[i]);
	}
	for (int i = 0; i < MANY_WAIT; i++) {
		__atomic_store_n(&m->words[i], 1, __ATOMIC_SEQ_CST);
		ferry_notify(&m->words[i], 1);
	}
	return NULL;
}

BOTH(many_watches_and_waits)
{
	ferry_loop *loop = new_loop();
	struct many *m = calloc(1, sizeof *m);
	g_many = m;
	for (int i = 0; i < MANY_EC; i++)
		cr_assert_eq(ferry_loop_watch_ec(loop, &m->ec[i], many_ready, many_ec_cb, &m->flag[i],
						 NULL), 0);
	for (int i = 0; i < MANY_WAIT; i++)
		cr_assert_eq(ferry_wait_async(loop, &m->words[i], 0, FERRY_FOREVER, many_wait_cb, NULL,
					      NULL), 0);
	cr_assert_eq(ferry_loop_run(loop, FERRY_RUN_NOWAIT), MANY_EC + MANY_WAIT, "all armed");
	pthread_t th;
	cr_assert_eq(pthread_create(&th, NULL, many_producer, m), 0);
	add_guard(loop, 20000 * MS);
	cr_expect_eq(ferry_loop_run(loop, FERRY_RUN_DEFAULT), 0);
	pthread_join(th, NULL);
	cr_expect_not(g_guard_fired, "ec %d/%d, waits %d/%d", m->ec_calls, MANY_EC, m->wait_calls,
		      MANY_WAIT);
	cr_expect_eq(m->ec_calls, MANY_EC);
	cr_expect_eq(m->wait_calls, MANY_WAIT);
	cr_expect_eq(m->wait_ok, MANY_WAIT);
	/* and once more, reusing the parked helpers (epoll) */
	for (int i = 0; i < MANY_WAIT; i++) {
		m->words[i] = 0;
		cr_assert_eq(ferry_wait_async(loop, &m->words[i], 0, 1 * MS, many_wait_cb, NULL, NULL), 0);
	}
	cr_expect_eq(ferry_loop_run(loop, FERRY_RUN_DEFAULT), 0);
	cr_expect_eq(m->wait_calls, 2 * MANY_WAIT);
	cr_expect_eq(m->wait_ok, MANY_WAIT, "the second round timed out");
	ferry_loop_destroy(loop);
	free(m);
}

/* ---- posts and stop from other threads ---- */

#define POSTERS 4
#define POSTS 2000

struct postt {
	ferry_loop *loop;
	int next[POSTERS];
	int total;
	int out_of_order;
	uint64_t keep;
};

struct poster {
	struct postt *t;
	int who;
};

static struct postt *g_post;

static void post_cb2(ferry_loop *loop, uint64_t id, int res, void *arg)
{
	struct postt *t = g_post;
	int64_t v = (int64_t)(intptr_t)arg;
	int who = (int)(v / POSTS), seq = (int)(v % POSTS);
	if (t->next[who] != seq)
		t->out_of_order++;
	t->next[who] = seq + 1;
	if (++t->total == POSTERS * POSTS)
		ferry_loop_cancel(loop, t->keep);
}

static void *poster_main(void *arg)
{
	struct poster *ps = arg;
	for (int i = 0; i < POSTS; i++) {
		intptr_t v = (intptr_t)ps->who * POSTS + i;
		cr_assert_eq(ferry_loop_post(ps->t->loop, post_cb2, (void *)v), 0);
	}
	return NULL;
}

static void nop_cb(ferry_loop *loop, uint64_t id, int res, void *arg)
{
}

BOTH(posts_from_threads_run_in_order)
{
	ferry_loop *loop = new_loop();
	struct postt *t = calloc(1, sizeof *t);
	g_post = t;
	t->loop = loop;
	/* keeps the loop alive until every post ran */
	cr_assert_eq(ferry_loop_timer(loop, 60000 * MS, 0, nop_cb, NULL, &t->keep), 0);
	pthread_t th[POSTERS];
	struct poster ps[POSTERS];
	for (int i = 0; i < POSTERS; i++) {
		ps[i] = (struct poster){ t, i };
		cr_assert_eq(pthread_create(&th[i], NULL, poster_main, &ps[i]), 0);
	}
	add_guard(loop, 20000 * MS);
	cr_expect_eq(ferry_loop_run(loop, FERRY_RUN_DEFAULT), 0);
	for (int i = 0; i < POSTERS; i++)
		pthread_join(th[i], NULL);
	cr_expect_not(g_guard_fired);
	cr_expect_eq(t->total, POSTERS * POSTS);
	cr_expect_eq(t->out_of_order, 0);
	ferry_loop_destroy(loop);
	free(t);
}

struct stopper {
	ferry_loop *loop;
	int delay_ms;
};

static void *stopper_main(void *arg)
{
	struct stopper *s = arg;
	tu_sleep_ms(s->delay_ms);
	cr_assert_eq(ferry_loop_stop(s->loop), 0);
	return NULL;
}

BOTH(stop_from_another_thread)
{
	ferry_loop *loop = new_loop();
	static uint32_t word;
	uint64_t wid, tid;
	cr_assert_eq(ferry_wait_async(loop, &word, 0, FERRY_FOREVER, nop_cb, NULL, &wid), 0);
	cr_assert_eq(ferry_loop_timer(loop, 60000 * MS, 0, nop_cb, NULL, &tid), 0);
	struct stopper s = { loop, 20 };
	pthread_t th;
	int64_t t0 = tu_now_ns();
	cr_assert_eq(pthread_create(&th, NULL, stopper_main, &s), 0);
	int r = ferry_loop_run(loop, FERRY_RUN_DEFAULT);
	pthread_join(th, NULL);
	cr_expect_eq(r, 2, "stopped with both sources alive");
	cr_expect_geq(tu_now_ns() - t0, 20 * MS);
	/* a stop before run: the next run returns after one non-blocking pass */
	cr_assert_eq(ferry_loop_stop(loop), 0);
	cr_expect_eq(ferry_loop_run(loop, FERRY_RUN_DEFAULT), 2);
	cr_assert_eq(ferry_loop_cancel(loop, wid), 0);
	cr_assert_eq(ferry_loop_cancel(loop, tid), 0);
	cr_expect_eq(ferry_loop_run(loop, FERRY_RUN_DEFAULT), 0);
	ferry_loop_destroy(loop);
}

/* A loop created while the process is single-threaded arms its wake-up
 * before any other thread exists; a thread created later must still be
 * able to wake it (Linux 6.16+ moves a process to its own private-futex
 * hash at its first thread: a private io_uring futex wait queued before
 * that was never woken). Run in a fresh forked child, single-threaded. */
static int g_child_guard;

static void child_guard_cb(ferry_loop *loop, uint64_t id, int res, void *arg)
{
	g_child_guard = 1;
}

static int stop_in_fresh_process(void *arg)
{
	ferry_loop *loop;
	if (ferry_loop_create(&loop, NULL))
		return 2;
	static uint32_t word;
	uint64_t id;
	if (ferry_wait_async(loop, &word, 0, FERRY_FOREVER, nop_cb, NULL, NULL) ||
	    ferry_loop_timer(loop, 5000 * MS, 0, child_guard_cb, NULL, &id) ||
	    ferry_loop_ref(loop, id, 0))
		return 3;
	struct stopper s = { loop, 10 };
	pthread_t th;
	if (pthread_create(&th, NULL, stopper_main, &s))
		return 4;
	int r = ferry_loop_run(loop, FERRY_RUN_DEFAULT);
	pthread_join(th, NULL);
	ferry_loop_destroy(loop);
	return r == 1 && !g_child_guard ? 0 : 1;
}

BOTH(stop_wakes_a_loop_created_before_any_thread)
{
	pid_t pid = tu_fork(stop_in_fresh_process, NULL);
	int st = tu_wait(pid, 20000);
	cr_expect(st != -1 && WIFEXITED(st) && WEXITSTATUS(st) == 0, "child: status %d (exit %d)", st,
		  st != -1 && WIFEXITED(st) ? WEXITSTATUS(st) : -1);
}

/* ---- run modes, ref ---- */

struct modes {
	int calls;
	int nested;
};

static void mode_cb(ferry_loop *loop, uint64_t id, int res, void *arg)
{
	struct modes *m = arg;
	m->calls++;
	m->nested = ferry_loop_run(loop, FERRY_RUN_NOWAIT);
}

BOTH(run_modes_and_unref)
{
	ferry_loop *loop = new_loop();
	struct modes m = { 0 };
	uint64_t id;
	cr_expect_eq(ferry_loop_run(loop, FERRY_RUN_DEFAULT), 0, "empty loop returns at once");
	cr_expect_eq(ferry_loop_run(loop, FERRY_RUN_ONCE), 0);
	int64_t t0 = tu_now_ns();
	cr_assert_eq(ferry_loop_timer(loop, 10 * MS, 0, mode_cb, &m, &id), 0);
	cr_expect_eq(ferry_loop_run(loop, FERRY_RUN_NOWAIT), 1);
	cr_expect_eq(m.calls, 0);
	cr_expect_eq(ferry_loop_run(loop, FERRY_RUN_ONCE), 0);
	cr_expect_geq(tu_now_ns() - t0, 10 * MS);
	cr_expect_eq(m.calls, 1);
	cr_expect_eq(m.nested, -EBUSY, "run from a callback");

	/* an unreferenced timer does not keep the loop running... */
	cr_assert_eq(ferry_loop_timer(loop, 5 * MS, 0, mode_cb, &m, &id), 0);
	cr_assert_eq(ferry_loop_ref(loop, id, 0), 0);
	cr_expect_eq(ferry_loop_alive(loop), 0);
	cr_expect_eq(ferry_loop_run(loop, FERRY_RUN_DEFAULT), 0);
	cr_expect_eq(m.calls, 1);
	/* ...but fires while something else does */
	cr_assert_eq(ferry_loop_timer(loop, 20 * MS, 0, nop_cb, NULL, NULL), 0);
	cr_expect_eq(ferry_loop_run(loop, FERRY_RUN_DEFAULT), 0);
	cr_expect_eq(m.calls, 2);
	cr_assert_eq(ferry_loop_ref(loop, id, 1), -ENOENT);
	ferry_loop_destroy(loop);
}

/* ---- teardown ---- */

static int g_cancelled_posts;

static void post_count_cb(ferry_loop *loop, uint64_t id, int res, void *arg)
{
	if (res == -ECANCELED)
		g_cancelled_posts++;
}

static void *nop_thread(void *arg)
{
	return arg;
}

static int never_ready(void *arg)
{
	return 0;
}

BOTH(destroy_with_pending_sources_leaks_nothing)
{
	/* A first thread of our own: sanitizer runtimes start their background
	 * thread then, and it must not count as a leaked helper. */
	pthread_t warm;
	cr_assert_eq(pthread_create(&warm, NULL, nop_thread, NULL), 0);
	pthread_join(warm, NULL);
	struct tu_baseline b;
	tu_baseline_take(&b);
	/* Live threads only (see tu_count_threads): the warm-up thread, and
	 * the epoll helpers destroy joins, may stay listed in /proc/self/task
	 * for a while after pthread_join returns; a thread still running is
	 * counted, so a helper left running still fails the check. */
	int threads = tu_count_threads();
	for (int round = 0; round < 2; round++) {
		ferry_loop *loop = new_loop();
		static uint32_t words[8];
		static struct ferry_ec ec;
		int p[2];
		cr_assert_eq(pipe2(p, O_CLOEXEC), 0);
		cr_assert_eq(ferry_loop_timer(loop, 60000 * MS, 0, nop_cb, NULL, NULL), 0);
		cr_assert_eq(ferry_loop_timer(loop, 1 * MS, 1 * MS, nop_cb, NULL, NULL), 0);
		cr_assert_eq(ferry_loop_fd(loop, p[0], FERRY_LOOP_READABLE, nop_cb, NULL, NULL), 0);
		for (int i = 0; i < 8; i++)
			cr_assert_eq(ferry_wait_async(loop, &words[i], 0, i & 1 ? FERRY_FOREVER : 60000 * MS,
						      nop_cb, NULL, NULL), 0);
		cr_assert_eq(ferry_loop_watch_ec(loop, &ec, never_ready, nop_cb, NULL, NULL), 0);
		cr_assert_eq(ferry_loop_run(loop, FERRY_RUN_NOWAIT), 12);
		g_cancelled_posts = 0;
		cr_assert_eq(ferry_loop_post(loop, post_count_cb, NULL), 0);
		cr_assert_eq(ferry_loop_post(loop, post_count_cb, NULL), 0);
		ferry_loop_destroy(loop);
		cr_expect_eq(g_cancelled_posts, 2, "queued posts run with -ECANCELED");
		close(p[0]);
		close(p[1]);
	}
	tu_baseline_check(&b);
	int now = tu_count_threads();
	cr_expect_eq(now, threads, "helper threads joined: %d threads now, %d at the start (%s)",
		     now, threads, tu_thread_names());
}

struct forked {
	ferry_loop *loop;
};

static int destroy_in_child(void *arg)
{
	struct forked *f = arg;
	/* an inherited loop: destroying it releases memory and fds only */
	ferry_loop_destroy(f->loop);
	return 0;
}

BOTH(forked_child_can_destroy_an_inherited_loop)
{
	ferry_loop *loop = new_loop();
	static uint32_t word;
	static struct ferry_ec ec;
	cr_assert_eq(ferry_wait_async(loop, &word, 0, FERRY_FOREVER, nop_cb, NULL, NULL), 0);
	cr_assert_eq(ferry_loop_watch_ec(loop, &ec, never_ready, nop_cb, NULL, NULL), 0);
	cr_assert_eq(ferry_loop_post(loop, nop_cb, NULL), 0);
	cr_assert_eq(ferry_loop_run(loop, FERRY_RUN_NOWAIT), 2);
	cr_assert_eq(ferry_loop_post(loop, post_count_cb, NULL), 0);
	struct forked f = { loop };
	pid_t pid = tu_fork(destroy_in_child, &f);
	int st = tu_wait(pid, 10000);
	cr_expect(st != -1 && WIFEXITED(st) && WEXITSTATUS(st) == 0, "child: status %d", st);
	/* the parent's loop is untouched */
	g_cancelled_posts = 0;
	cr_expect_eq(ferry_loop_run(loop, FERRY_RUN_NOWAIT), 2);
	__atomic_store_n(&word, 1, __ATOMIC_SEQ_CST);
	ferry_notify(&word, 1);
	add_guard(loop, 10000 * MS);
	cr_expect_eq(ferry_loop_run(loop, FERRY_RUN_ONCE), 1);
	cr_expect_not(g_guard_fired);
	ferry_loop_destroy(loop);
	cr_expect_eq(g_cancelled_posts, 0);
}

/* ---- bad arguments, backend choice ---- */

BOTH(bad_arguments)
{
	ferry_loop *loop = new_loop();
	static uint32_t words[2];
	uint32_t *odd = (uint32_t *)((char *)words + 1);
	uint64_t id;
	cr_expect_eq(ferry_loop_create(NULL, NULL), -EINVAL);
	cr_expect_eq(ferry_loop_run(NULL, 0), -EINVAL);
	cr_expect_eq(ferry_loop_run(loop, 3), -EINVAL);
	cr_expect(strstr(ferry_errmsg(), "mode") != NULL, "%s", ferry_errmsg());
	cr_expect_eq(ferry_loop_stop(NULL), -EINVAL);
	cr_expect_eq(ferry_loop_post(NULL, nop_cb, NULL), -EINVAL);
	cr_expect_eq(ferry_loop_post(loop, NULL, NULL), -EINVAL);
	cr_expect(strstr(ferry_errmsg(), "cb") != NULL, "%s", ferry_errmsg());
	cr_expect_eq(ferry_loop_timer(NULL, 0, 0, nop_cb, NULL, &id), -EINVAL);
	cr_expect_eq(ferry_loop_timer(loop, 0, 0, NULL, NULL, &id), -EINVAL);
	cr_expect_eq(ferry_loop_timer(loop, -1, 0, nop_cb, NULL, &id), -EINVAL);
	cr_expect(strstr(ferry_errmsg(), "after_ns") != NULL, "%s", ferry_errmsg());
	cr_expect_eq(ferry_loop_timer(loop, 0, -5, nop_cb, NULL, &id), -EINVAL);
	cr_expect(strstr(ferry_errmsg(), "repeat_ns") != NULL, "%s", ferry_errmsg());
	cr_expect_eq(ferry_wait_async(NULL, words, 0, 0, nop_cb, NULL, &id), -EINVAL);
	cr_expect_eq(ferry_wait_async(loop, NULL, 0, 0, nop_cb, NULL, &id), -EINVAL);
	cr_expect_eq(ferry_wait_async(loop, odd, 0, 0, nop_cb, NULL, &id), -EINVAL);
	cr_expect(strstr(ferry_errmsg(), "aligned") != NULL, "%s", ferry_errmsg());
	cr_expect_eq(ferry_wait_async(loop, words, 0, 0, NULL, NULL, &id), -EINVAL);
	cr_expect_eq(ferry_loop_watch_ec(loop, NULL, always_ready, nop_cb, NULL, &id), -EINVAL);
	cr_expect_eq(ferry_loop_watch_ec(loop, (struct ferry_ec *)odd, always_ready, nop_cb, NULL, &id),
		     -EINVAL);
	cr_expect_eq(ferry_loop_watch_ec(loop, (struct ferry_ec *)words, NULL, nop_cb, NULL, &id),
		     -EINVAL);
	cr_expect(strstr(ferry_errmsg(), "ready") != NULL, "%s", ferry_errmsg());
	cr_expect_eq(ferry_loop_watch_ec(loop, (struct ferry_ec *)words, always_ready, NULL, NULL, &id),
		     -EINVAL);
	cr_expect_eq(ferry_loop_fd(loop, -1, FERRY_LOOP_READABLE, nop_cb, NULL, &id), -EINVAL);
	cr_expect_eq(ferry_loop_fd(loop, 0, 0, nop_cb, NULL, &id), -EINVAL);
	cr_expect_eq(ferry_loop_fd(loop, 0, 0x10, nop_cb, NULL, &id), -EINVAL);
	cr_expect_eq(ferry_loop_fd(loop, 0, FERRY_LOOP_READABLE, NULL, NULL, &id), -EINVAL);
	int p[2];
	cr_assert_eq(pipe2(p, O_CLOEXEC), 0);
	close(p[1]);
	cr_expect_eq(ferry_loop_fd(loop, p[1], FERRY_LOOP_READABLE, nop_cb, NULL, &id), -EBADF);
	cr_assert_eq(ferry_loop_fd(loop, p[0], FERRY_LOOP_READABLE, nop_cb, NULL, &id), 0);
	cr_expect_eq(ferry_loop_fd(loop, p[0], FERRY_LOOP_WRITABLE, nop_cb, NULL, NULL), -EEXIST);
	cr_expect_eq(ferry_loop_fd_update(loop, id, 0), -EINVAL);
	cr_expect_eq(ferry_loop_cancel(loop, id), 0);
	cr_expect_eq(ferry_loop_fd_update(loop, id, FERRY_LOOP_READABLE), -ENOENT);
	int f = open("/proc/self/exe", O_RDONLY | O_CLOEXEC);
	cr_assert_geq(f, 0);
	cr_expect_eq(ferry_loop_fd(loop, f, FERRY_LOOP_READABLE, nop_cb, NULL, &id), -EPERM);
	close(f);
	close(p[0]);
	cr_expect_eq(ferry_loop_cancel(NULL, 1), -EINVAL);
	cr_expect_eq(ferry_loop_cancel(loop, 0), -ENOENT);
	cr_expect_eq(ferry_loop_cancel(loop, 0x123456789abcdefULL), -ENOENT);
	cr_expect_eq(ferry_loop_ref(loop, 0, 1), -ENOENT);
	cr_expect_eq(ferry_loop_alive(NULL), -EINVAL);
	cr_expect_str_eq(ferry_loop_backend(NULL), "");
	ferry_loop_destroy(NULL);
	ferry_loop_destroy(loop);
}

Test(loop, backend_choice)
{
	ferry_loop *l = NULL;
	struct ferry_loop_opts o = { .backend = 7 };
	cr_expect_eq(ferry_loop_create(&l, &o), -EINVAL);
	cr_expect(strstr(ferry_errmsg(), "backend") != NULL, "%s", ferry_errmsg());
	cr_expect_null(l);

	setenv("FERRY_LOOP", "bogus", 1);
	cr_expect_eq(ferry_loop_create(&l, NULL), -EINVAL);
	cr_expect(strstr(ferry_errmsg(), "FERRY_LOOP") != NULL, "%s", ferry_errmsg());

	setenv("FERRY_LOOP", "epoll", 1);
	cr_assert_eq(ferry_loop_create(&l, NULL), 0);
	cr_expect_str_eq(ferry_loop_backend(l), "epoll");
	ferry_loop_destroy(l);

	/* an explicit opts.backend wins over the environment */
	o.backend = FERRY_LOOP_EPOLL;
	setenv("FERRY_LOOP", "uring", 1);
	cr_assert_eq(ferry_loop_create(&l, &o), 0);
	cr_expect_str_eq(ferry_loop_backend(l), "epoll");
	ferry_loop_destroy(l);

	/* auto: io_uring when it works, else epoll; forced io_uring: works or
	 * fails with a message, never silently falls back */
	unsetenv("FERRY_LOOP");
	o.backend = FERRY_LOOP_URING;
	int r = ferry_loop_create(&l, &o);
	int have_uring = r == 0;
	if (r == 0) {
		cr_expect_str_eq(ferry_loop_backend(l), "uring");
		ferry_loop_destroy(l);
	} else {
		cr_expect(r == -EOPNOTSUPP || r == -ENOSYS || r == -EPERM || r == -EACCES, "%d", r);
		cr_expect(strstr(ferry_errmsg(), "io_uring") != NULL, "%s", ferry_errmsg());
		cr_log_info("io_uring unavailable: %s", ferry_errmsg());
	}
	cr_assert_eq(ferry_loop_create(&l, NULL), 0);
	cr_expect_str_eq(ferry_loop_backend(l), have_uring ? "uring" : "epoll");
	ferry_loop_destroy(l);
	setenv("FERRY_LOOP", "auto", 1);
	cr_assert_eq(ferry_loop_create(&l, NULL), 0);
	cr_expect_str_eq(ferry_loop_backend(l), have_uring ? "uring" : "epoll");
	ferry_loop_destroy(l);
}

/* ---- denied by the sandbox: seccomp in a forked child ---- */

#if defined(__x86_64__)
#define TEST_AUDIT_ARCH AUDIT_ARCH_X86_64
#elif defined(__aarch64__)
#define TEST_AUDIT_ARCH AUDIT_ARCH_AARCH64
#endif

#ifdef TEST_AUDIT_ARCH
/* Make syscall @nr fail with @err in this process (and its threads). */
static int deny_syscall(long nr, int err)
{
	struct sock_filter f[] = {
		BPF_STMT(BPF_LD | BPF_W | BPF_ABS, offsetof(struct seccomp_data, arch)),
		BPF_JUMP(BPF_JMP | BPF_JEQ | BPF_K, TEST_AUDIT_ARCH, 1, 0),
		BPF_STMT(BPF_RET | BPF_K, SECCOMP_RET_ALLOW),
		BPF_STMT(BPF_LD | BPF_W | BPF_ABS, offsetof(struct seccomp_data, nr)),
		BPF_JUMP(BPF_JMP | BPF_JEQ | BPF_K, (uint32_t)nr, 0, 1),
		BPF_STMT(BPF_RET | BPF_K, SECCOMP_RET_ERRNO | ((uint32_t)err & SECCOMP_RET_DATA)),
		BPF_STMT(BPF_RET | BPF_K, SECCOMP_RET_ALLOW),
	};
	struct sock_fprog prog = { .len = sizeof f / sizeof f[0], .filter = f };
	if (prctl(PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0))
		return -1;
	return prctl(PR_SET_SECCOMP, SECCOMP_MODE_FILTER, &prog, 0, 0);
}

static int no_uring_child(void *arg)
{
	if (deny_syscall(SYS_io_uring_setup, EPERM))
		return 10;
	unsetenv("FERRY_LOOP");
	ferry_loop *l = NULL;
	struct ferry_loop_opts o = { .backend = FERRY_LOOP_URING };
	int r = ferry_loop_create(&l, &o);
	if (r != -EPERM || !strstr(ferry_errmsg(), "io_uring"))
		return 11; /* forced: a clear error, no silent fallback */
	if (ferry_loop_create(&l, NULL) || strcmp(ferry_loop_backend(l), "epoll") != 0)
		return 12; /* auto: epoll */
	static uint32_t word;
	struct wres w = { 0 };
	if (ferry_wait_async(l, &word, 0, 5 * MS, wres_cb, &w, NULL) ||
	    ferry_loop_run(l, FERRY_RUN_DEFAULT) != 0 || w.res != -ETIMEDOUT)
		return 13;
	ferry_loop_destroy(l);
	return 0;
}

Test(loop, seccomp_denied_io_uring_falls_back_to_epoll)
{
	pid_t pid = tu_fork(no_uring_child, NULL);
	int st = tu_wait(pid, 20000);
	cr_expect(st != -1 && WIFEXITED(st) && WEXITSTATUS(st) == 0, "child: status %d (exit %d)", st,
		  st != -1 && WIFEXITED(st) ? WEXITSTATUS(st) : -1);
}

static int no_waitv_child(void *arg)
{
	if (deny_syscall(SYS_futex_waitv, ENOSYS))
		return 10;
	struct ferry_loop_opts o = { .backend = FERRY_LOOP_EPOLL };
	ferry_loop *l = NULL;
	if (ferry_loop_create(&l, &o))
		return 11;
	static uint32_t word;
	if (ferry_wait_async(l, &word, 0, FERRY_FOREVER, nop_cb, NULL, NULL) != -ENOSYS ||
	    !strstr(ferry_errmsg(), "futex_waitv"))
		return 12;
	struct rep p = { .stop_at = 3, .t0 = tu_now_ns() };
	if (ferry_loop_timer(l, 1 * MS, 1 * MS, rep_cb, &p, NULL) ||
	    ferry_loop_run(l, FERRY_RUN_DEFAULT) != 0 || p.n != 3)
		return 13; /* timers (and fds, posts) still work */
	ferry_loop_destroy(l);
	return 0;
}

Test(loop, epoll_without_futex_waitv_keeps_timers)
{
	pid_t pid = tu_fork(no_waitv_child, NULL);
	int st = tu_wait(pid, 20000);
	cr_expect(st != -1 && WIFEXITED(st) && WEXITSTATUS(st) == 0, "child: status %d (exit %d)", st,
		  st != -1 && WIFEXITED(st) ? WEXITSTATUS(st) : -1);
}
#endif
