/*
 * Pool storms. Processes: 100,000 tasks while a chaos thread SIGKILLs a
 * random worker every few milliseconds; every task completes or fails with
 * the crash error exactly once, no task runs twice, the counts add up, and
 * no worker, fd or mapping is left behind. Threads: the same tasks while a
 * chaos thread cancels random ones.
 */
#include <ferry.h>
#include <ferry/pool.h>

#include "util/util.h"

#include <criterion/criterion.h>
#include <errno.h>
#include <pthread.h>
#include <signal.h>
#include <stdatomic.h>
#include <stdlib.h>
#include <string.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#define SEC (1000LL * 1000 * 1000)
#define MS (1000LL * 1000)
#define NTASKS 100000

static _Atomic int *runs; /* per task: times it ran (MAP_SHARED) */
static struct tu_baseline base;

static void setup(void)
{
	runs = tu_shared_alloc(NTASKS * sizeof *runs);
	tu_baseline_take(&base);
}

static void teardown(void)
{
	tu_baseline_check(&base);
	tu_shared_free(runs, NTASKS * sizeof *runs);
}

TestSuite(pool_stress, .init = setup, .fini = teardown, .timeout = 300);

static int task(ferry_pool_ctx *ctx, const ferry_value *arg, ferry_value **res)
{
	int64_t n = -1;
	ferry_value_get_int(arg, &n);
	if (n < 0 || n >= NTASKS)
		return ferry_pool_ctx_fail(ctx, -EINVAL, "bad task %lld", (long long)n);
	atomic_fetch_add(&runs[n], 1);
	/* A little work now and then, so kills land inside tasks too. */
	if (n % 64 == 0) {
		volatile uint64_t x = (uint64_t)n;
		for (int i = 0; i < 20000; i++)
			x = x * 6364136223846793005ull + 1;
	}
	*res = ferry_value_int(2 * n);
	return 0;
}

/* Every 4th task also has a callback (the manager's path, through the
 * completion ring); every 8th + 1 is fire-and-forget (no handle). */
static _Atomic int cb_calls[NTASKS];
static _Atomic int cb_ok, cb_failed;

static void on_done(ferry_pool_task *t, void *arg)
{
	int i = (int)(intptr_t)arg;
	atomic_fetch_add(&cb_calls[i], 1);
	atomic_fetch_add(ferry_pool_task_status(t) == 0 ? &cb_ok : &cb_failed, 1);
}

struct chaos {
	ferry_pool *pool;
	_Atomic int stop;
	_Atomic int kills;
	_Atomic int cancels;
	ferry_pool_task **tasks;
	_Atomic int submitted;
	unsigned seed;
};

static void *killer(void *arg)
{
	struct chaos *c = arg;
	while (!atomic_load(&c->stop)) {
		/* every 2..6 ms */
		usleep(2000 + (unsigned)(rand_r(&c->seed) % 4000));
		pid_t pids[16];
		int n = ferry_pool_worker_pids(c->pool, pids, 16);
		if (n <= 0)
			continue;
		if (n > 16)
			n = 16;
		if (kill(pids[rand_r(&c->seed) % (unsigned)n], SIGKILL) == 0)
			atomic_fetch_add(&c->kills, 1);
	}
	return NULL;
}

Test(pool_stress, sigkill_storm_process)
{
	struct ferry_pool_opts o = {
		.backend = FERRY_PROCESS, .fn = task, .min_workers = 2, .max_workers = 2,
		.max_queue = 512, .queue_wait_ns = FERRY_FOREVER,
	};
	ferry_pool *p;
	cr_assert_eq(ferry_pool_create(&p, &o), 0, "%s", ferry_errmsg());
	ferry_pool_task **ts = calloc(NTASKS, sizeof *ts);
	cr_assert_not_null(ts);
	struct chaos c = { .pool = p, .seed = (unsigned)tu_now_ns() };
	pthread_t th;
	pthread_create(&th, NULL, killer, &c);
	int64_t t0 = tu_now_ns();
	int forgotten = 0;
	for (int i = 0; i < NTASKS; i++) {
		ferry_value *v = ferry_value_int(i);
		struct ferry_pool_submit_opts so = { .done = on_done, .done_arg = (void *)(intptr_t)i };
		int forget = i % 8 == 1;
		int rc = ferry_pool_submit_ex(p, v, NULL, i % 4 == 0 ? &so : NULL, forget ? NULL : &ts[i]);
		forgotten += forget;
		ferry_value_free(v);
		cr_assert_eq(rc, 0, "submit %d: %s", i, ferry_errmsg());
	}
	int ok = 0, crashed = 0;
	for (int i = 0; i < NTASKS; i++) {
		if (!ts[i])
			continue;
		int rc = ferry_pool_task_wait(ts[i], 60 * SEC);
		if (rc == 0) {
			int64_t v = -1;
			ferry_value_get_int(ferry_pool_task_value(ts[i]), &v);
			cr_assert_eq(v, 2 * i, "task %d returned %lld", i, (long long)v);
			cr_assert_eq(atomic_load(&runs[i]), 1, "task %d completed but ran %d times", i,
				     atomic_load(&runs[i]));
			ok++;
		} else {
			cr_assert_eq(rc, FERRY_EWORKER, "task %d: %d %s", i, rc, ferry_pool_task_errmsg(ts[i]));
			cr_assert(strstr(ferry_pool_task_errmsg(ts[i]), "killed by SIGKILL") != NULL, "task %d: %s",
				  i, ferry_pool_task_errmsg(ts[i]));
			cr_assert_leq(atomic_load(&runs[i]), 1, "task %d ran %d times", i, atomic_load(&runs[i]));
			crashed++;
		}
		/* settled means settled: asking again gives the same answer */
		cr_assert_eq(ferry_pool_task_wait(ts[i], 0), rc);
		ferry_pool_task_free(ts[i]);
	}
	atomic_store(&c.stop, 1);
	pthread_join(th, NULL);
	int64_t secs = (tu_now_ns() - t0) / SEC;
	for (int i = 0; i < NTASKS; i++)
		cr_assert_leq(atomic_load(&runs[i]), 1, "task %d ran %d times", i, atomic_load(&runs[i]));
	/* Fire-and-forget tasks finish on their own; the last crash's
	 * replacement may still be starting; callbacks may still be queued. */
	cr_assert_eq(ferry_pool_drain(p, 60 * SEC), 0, "%s", ferry_errmsg());
	int64_t end = tu_now_ns() + 20 * SEC;
	struct ferry_pool_stats st;
	for (;;) {
		cr_assert_eq(ferry_pool_stats(p, &st), 0);
		int settled = st.completed + st.failed == (uint64_t)NTASKS;
		int cbs = atomic_load(&cb_ok) + atomic_load(&cb_failed) == NTASKS / 4;
		/* a kill sent just before the chaos stopped may still be in the
		 * middle of its recovery: wait for a quiet state */
		int replaced = st.spawned == 2 + st.crashes && ferry_pool_worker_pids(p, NULL, 0) == 2;
		if ((settled && cbs && replaced) || tu_now_ns() > end)
			break;
		usleep(1000);
	}
	for (int i = 0; i < NTASKS; i += 4)
		cr_assert_eq(atomic_load(&cb_calls[i]), 1, "task %d: %d callbacks", i, atomic_load(&cb_calls[i]));
	cr_log_info("%d tasks in %lld s: %llu completed, %llu failed by %d kills (%llu crashes seen, "
		    "%llu workers started); %d callbacks",
		    NTASKS, (long long)secs, (unsigned long long)st.completed, (unsigned long long)st.failed,
		    atomic_load(&c.kills), (unsigned long long)st.crashes, (unsigned long long)st.spawned,
		    atomic_load(&cb_ok) + atomic_load(&cb_failed));
	cr_expect_eq(ok + crashed + forgotten, NTASKS);
	cr_expect_eq(st.submitted, (uint64_t)NTASKS);
	cr_expect_eq(st.completed + st.failed, (uint64_t)NTASKS);
	cr_expect_geq(st.completed, (uint64_t)ok);
	cr_expect_geq(st.failed, (uint64_t)crashed);
	cr_expect_leq(st.failed, (uint64_t)(crashed + forgotten));
	cr_expect_eq(st.cancelled, 0);
	cr_expect_eq(st.queued, 0);
	cr_expect_eq(st.running, 0);
	cr_expect_gt(atomic_load(&c.kills), 0);
	cr_expect_gt(st.crashes, 0);
	cr_expect_leq(st.crashes, (uint64_t)atomic_load(&c.kills));
	/* One task at a time per worker: a crash fails at most one task. */
	cr_expect_leq(st.failed, st.crashes);
	cr_expect_eq(st.spawned, 2 + st.crashes);
	ferry_pool_destroy(p, FERRY_FOREVER);
	free(ts);
	/* No worker left behind: every child was reaped. */
	cr_expect_eq(waitpid(-1, NULL, WNOHANG), -1);
	cr_expect_eq(errno, ECHILD);
}

static void *canceller(void *arg)
{
	struct chaos *c = arg;
	while (!atomic_load(&c->stop)) {
		usleep(20 + (unsigned)(rand_r(&c->seed) % 200));
		int n = atomic_load(&c->submitted);
		if (n <= 0)
			continue;
		/* Mostly the newest tasks (queued or running), some older ones
		 * (settled: -EALREADY). The handles stay valid until the test
		 * frees them, after the join. */
		unsigned back = rand_r(&c->seed) % (rand_r(&c->seed) % 8 ? 1024u : (unsigned)n);
		int i = n - 1 - (int)(back % (unsigned)n);
		int r = ferry_pool_task_cancel(c->tasks[i]);
		if (r == 0)
			atomic_fetch_add(&c->cancels, 1);
	}
	return NULL;
}

Test(pool_stress, cancel_storm_thread)
{
	struct ferry_pool_opts o = {
		.backend = FERRY_THREAD, .fn = task, .min_workers = 2, .max_workers = 2,
		.max_queue = 512, .queue_wait_ns = FERRY_FOREVER,
	};
	ferry_pool *p;
	cr_assert_eq(ferry_pool_create(&p, &o), 0, "%s", ferry_errmsg());
	ferry_pool_task **ts = calloc(NTASKS, sizeof *ts);
	cr_assert_not_null(ts);
	struct chaos c = { .pool = p, .tasks = ts, .seed = (unsigned)tu_now_ns() };
	pthread_t th;
	pthread_create(&th, NULL, canceller, &c);
	for (int i = 0; i < NTASKS; i++) {
		ferry_value *v = ferry_value_int(i);
		int rc = ferry_pool_submit(p, v, NULL, &ts[i]);
		ferry_value_free(v);
		cr_assert_eq(rc, 0, "submit %d: %s", i, ferry_errmsg());
		atomic_store(&c.submitted, i + 1);
	}
	int ok = 0, cancelled = 0;
	for (int i = 0; i < NTASKS; i++) {
		int rc = ferry_pool_task_wait(ts[i], 60 * SEC);
		if (rc == 0) {
			int64_t v = -1;
			ferry_value_get_int(ferry_pool_task_value(ts[i]), &v);
			cr_assert_eq(v, 2 * i);
			cr_assert_eq(atomic_load(&runs[i]), 1);
			ok++;
		} else {
			cr_assert_eq(rc, -ECANCELED, "task %d: %d %s", i, rc, ferry_pool_task_errmsg(ts[i]));
			cr_assert_leq(atomic_load(&runs[i]), 1);
			cancelled++;
		}
	}
	atomic_store(&c.stop, 1);
	pthread_join(th, NULL);
	for (int i = 0; i < NTASKS; i++)
		ferry_pool_task_free(ts[i]);
	struct ferry_pool_stats st;
	cr_assert_eq(ferry_pool_stats(p, &st), 0);
	cr_log_info("%d tasks: %d completed, %d cancelled", NTASKS, ok, cancelled);
	cr_expect_eq(ok + cancelled, NTASKS);
	cr_expect_eq(cancelled, atomic_load(&c.cancels));
	cr_expect_eq(st.completed, (uint64_t)ok);
	cr_expect_eq(st.cancelled, (uint64_t)cancelled);
	cr_expect_eq(st.failed, 0);
	cr_expect_eq(st.crashes, 0);
	ferry_pool_destroy(p, FERRY_FOREVER);
	free(ts);
}

/* ---- callbacks on a loop under chaos ----
 * Every task has a completion callback on a loop that this thread runs
 * while another thread submits: each callback runs exactly once, on this
 * thread, whatever the outcome (completed, crashed, cancelled), and when
 * all have run no keep-alive of the loop is left behind. */

#define NLOOP 20000

struct lstorm {
	pthread_t loop_thread;
	_Atomic int calls[NLOOP];
	_Atomic int total, wrong_thread, bad_status;
	int backend;
};

struct lsub {
	struct chaos *c;
	struct lstorm *ls;
	ferry_loop *loop;
	ferry_pool_task **ts;
	int rc;
};

static struct lstorm *the_storm;

static void on_storm_done(ferry_pool_task *t, void *arg)
{
	struct lstorm *ls = the_storm;
	int i = (int)(intptr_t)arg;
	if (!pthread_equal(pthread_self(), ls->loop_thread))
		atomic_fetch_add(&ls->wrong_thread, 1);
	int st = ferry_pool_task_status(t);
	int want_fail = ls->backend == FERRY_PROCESS ? FERRY_EWORKER : -ECANCELED;
	if (st != 0 && st != want_fail)
		atomic_fetch_add(&ls->bad_status, 1);
	if (i >= 0 && i < NLOOP)
		atomic_fetch_add(&ls->calls[i], 1);
	atomic_fetch_add(&ls->total, 1);
}

static void *storm_submitter(void *arg)
{
	struct lsub *s = arg;
	for (int i = 0; i < NLOOP; i++) {
		ferry_value *v = ferry_value_int(i);
		struct ferry_pool_submit_opts so = { .done = on_storm_done, .done_arg = (void *)(intptr_t)i,
						     .loop = s->loop };
		/* Threads: every 2nd task keeps a handle for the canceller. */
		int keep = s->ls->backend == FERRY_THREAD && i % 2 == 0;
		int rc = ferry_pool_submit_ex(s->c->pool, v, NULL, &so, keep ? &s->ts[i] : NULL);
		ferry_value_free(v);
		if (rc) {
			s->rc = rc;
			break;
		}
		atomic_store(&s->c->submitted, i + 1);
	}
	return NULL;
}

static void *storm_canceller(void *arg)
{
	struct chaos *c = arg;
	while (!atomic_load(&c->stop)) {
		usleep(20 + (unsigned)(rand_r(&c->seed) % 200));
		int n = atomic_load(&c->submitted);
		if (n <= 0)
			continue;
		int i = (n - 1 - (int)(rand_r(&c->seed) % 256u)) & ~1;
		if (i >= 0 && ferry_pool_task_cancel(c->tasks[i]) == 0)
			atomic_fetch_add(&c->cancels, 1);
	}
	return NULL;
}

static void loop_storm(int backend)
{
	struct lstorm *ls = calloc(1, sizeof *ls);
	cr_assert_not_null(ls);
	ls->loop_thread = pthread_self();
	ls->backend = backend;
	the_storm = ls;
	struct ferry_pool_opts o = {
		.backend = backend, .fn = task, .min_workers = 2, .max_workers = 2,
		.max_queue = 512, .queue_wait_ns = FERRY_FOREVER,
	};
	ferry_pool *p;
	cr_assert_eq(ferry_pool_create(&p, &o), 0, "%s", ferry_errmsg());
	ferry_loop *loop;
	cr_assert_eq(ferry_loop_create(&loop, NULL), 0, "%s", ferry_errmsg());
	ferry_pool_task **ts = calloc(NLOOP, sizeof *ts);
	cr_assert_not_null(ts);
	struct chaos c = { .pool = p, .tasks = ts, .seed = (unsigned)tu_now_ns() };
	struct lsub s = { .c = &c, .ls = ls, .loop = loop, .ts = ts };
	pthread_t chaos_th, sub_th;
	pthread_create(&sub_th, NULL, storm_submitter, &s);
	pthread_create(&chaos_th, NULL, backend == FERRY_PROCESS ? killer : storm_canceller, &c);
	int64_t end = tu_now_ns() + 120 * SEC;
	while (atomic_load(&ls->total) < NLOOP && tu_now_ns() < end && !s.rc)
		ferry_loop_run(loop, FERRY_RUN_ONCE);
	atomic_store(&c.stop, 1);
	pthread_join(chaos_th, NULL);
	pthread_join(sub_th, NULL);
	cr_assert_eq(s.rc, 0, "submit: %d", s.rc);
	cr_assert_eq(atomic_load(&ls->total), NLOOP, "%d callbacks in 120 s", atomic_load(&ls->total));
	for (int i = 0; i < NLOOP; i++)
		cr_assert_eq(atomic_load(&ls->calls[i]), 1, "task %d: %d callbacks", i, atomic_load(&ls->calls[i]));
	cr_expect_eq(atomic_load(&ls->wrong_thread), 0);
	cr_expect_eq(atomic_load(&ls->bad_status), 0);
	/* Every keep-alive was cancelled with its callback (a pass to run the
	 * loop_keep posts that may have come after their callbacks). */
	ferry_loop_run(loop, FERRY_RUN_NOWAIT);
	cr_expect_eq(ferry_loop_alive(loop), 0);
	struct ferry_pool_stats st;
	cr_assert_eq(ferry_pool_stats(p, &st), 0);
	cr_log_info("%d loop callbacks; %d kills, %d cancels; %llu completed, %llu failed, %llu cancelled",
		    NLOOP, atomic_load(&c.kills), atomic_load(&c.cancels), (unsigned long long)st.completed,
		    (unsigned long long)st.failed, (unsigned long long)st.cancelled);
	cr_expect_eq(st.completed + st.failed + st.cancelled, (uint64_t)NLOOP);
	for (int i = 0; i < NLOOP; i++)
		ferry_pool_task_free(ts[i]);
	ferry_pool_destroy(p, FERRY_FOREVER);
	ferry_loop_destroy(loop);
	free(ts);
	free(ls);
}

Test(pool_stress, loop_callbacks_sigkill_storm_process) { loop_storm(FERRY_PROCESS); }
Test(pool_stress, loop_callbacks_cancel_storm_thread) { loop_storm(FERRY_THREAD); }
