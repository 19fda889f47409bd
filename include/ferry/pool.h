/*
 * ferry/pool.h - a worker pool (piscina's model) on threads or processes.
 *
 *     static int square(ferry_pool_ctx *ctx, const ferry_value *arg, ferry_value **res) {
 *         int64_t x;
 *         if (ferry_value_get_int(arg, &x))
 *             return ferry_pool_ctx_fail(ctx, -EINVAL, "want an int");
 *         *res = ferry_value_int(x * x);   // the pool owns it now
 *         return 0;
 *     }
 *     struct ferry_pool_opts o = { .backend = FERRY_PROCESS, .fn = square };
 *     ferry_pool *p;
 *     ferry_pool_create(&p, &o);
 *     ferry_value *v = ferry_value_int(7);
 *     ferry_pool_task *t;
 *     ferry_pool_submit(p, v, NULL, &t);  // v is cloned: still yours
 *     ferry_value_free(v);
 *     if (ferry_pool_task_wait(t, FERRY_FOREVER) == 0)
 *         ... ferry_pool_task_value(t) is 49 ...
 *     else
 *         ... ferry_pool_task_errmsg(t) says why ...
 *     ferry_pool_task_free(t);
 *     ferry_pool_destroy(p, FERRY_FOREVER);
 *
 * The task function runs inside a worker (a thread, or a forked process: it
 * must not touch the caller's memory expecting the caller to see it). It gets
 * the task's value (a clone, or what was transferred) and returns 0 with a
 * result value, or a negative code to fail the task.
 *
 * Dispatch: tasks wait in a bounded queue in shared memory that every worker
 * pulls from (no worker sits idle while a task is queued); submitting,
 * starting and finishing a task costs no system call unless someone sleeps.
 * Values without buffers or ports that fit FERRY_POOL_INLINE_DEFAULT bytes
 * (opts.inline_bytes) travel in the task's shared slot; larger ones and ones
 * that carry buffers, shared buffers or ports go through the worker's port
 * (with clone, transfer and shared semantics exactly as ferry_port_post).
 *
 * Crash recovery (process workers): when a worker dies (signal, _exit), each
 * task it was running fails with FERRY_EWORKER and a message naming the
 * cause ("worker 3 killed by SIGSEGV"), the worker is replaced, and every
 * other task completes exactly once: a task the dead worker had taken but not
 * yet started goes back to the queue, never runs twice, and is never lost. A
 * thread worker's task that fails (returns an error) fails that task only; a
 * thread worker that ends (ferry_worker_exit inside a task) is handled as a
 * crash.
 *
 * Settling: every task settles exactly once: completed (0 and a result),
 * failed (its error), cancelled (-ECANCELED), timed out (-ETIME), or crashed
 * (FERRY_EWORKER). A settled task's handle keeps its outcome until freed.
 *
 * Threads: every call may be made from any thread. One handle's result
 * accessors (value, take, keep) are for one thread at a time; wait, poll,
 * status and cancel may run concurrently with anything.
 */
#ifndef FERRY_POOL_H
#define FERRY_POOL_H

#include "ferry/common.h"
#include "ferry/port.h"

#include <stddef.h>
#include <stdint.h>
#include <sys/types.h>

#ifdef __cplusplus
extern "C" {
#endif

typedef struct ferry_pool ferry_pool;
typedef struct ferry_pool_task ferry_pool_task;
typedef struct ferry_pool_ctx ferry_pool_ctx;

struct ferry_value;
struct ferry_buf;

/*
 * The task function, run inside a worker.
 * @arg: the task's value (NULL when submitted without one), owned by the
 *   pool until the function returns (ferry_pool_ctx_take_arg and
 *   ferry_pool_ctx_keep make it or its handles yours).
 * @result: set it to the result (or leave it NULL: no value); the pool owns
 *   it from then on (even when the function fails: it is freed).
 * Returns: 0, or a negative code that fails the task (with the message of
 *   ferry_pool_ctx_fail, else the code's name).
 */
typedef int (*ferry_pool_fn)(ferry_pool_ctx *ctx, const struct ferry_value *arg,
			     struct ferry_value **result);

/* A task's completion callback: on the pool's manager thread, once per task,
 * after the task settled. The handle is valid during the call (free it there
 * or later if you kept it from submit). It must not block: while it runs the
 * manager answers no worker (no waiting for other tasks, no submit on a full
 * queue with a wait). */
typedef void (*ferry_pool_done_fn)(ferry_pool_task *task, void *arg);

/* The drain callback: on the manager thread, each time the queue empties. */
typedef void (*ferry_pool_drain_fn)(ferry_pool *pool, void *arg);

/* Limits. */
#define FERRY_POOL_MAX_WORKERS 256
#define FERRY_POOL_MAX_CONCURRENCY 64
#define FERRY_POOL_MAX_QUEUE ((size_t)1 << 18)
#define FERRY_POOL_INLINE_DEFAULT ((size_t)1024)
#define FERRY_POOL_INLINE_MAX ((size_t)64 * 1024)
#define FERRY_POOL_QUEUE_DEFAULT ((size_t)1024)
/* min_workers: keep no worker when idle. */
#define FERRY_POOL_MIN_NONE (-1)

/* Zero fields mean defaults (see each). */
struct ferry_pool_opts {
	int backend;             /* enum ferry_backend: FERRY_THREAD (default) or FERRY_PROCESS */
	ferry_pool_fn fn;        /* required */
	const char *name;        /* workers are "<name>-<id>"; NULL = "pool" */
	int min_workers;         /* kept even when idle; 0 = max(1, CPUs / 2) (at most
				    max_workers); FERRY_POOL_MIN_NONE = none */
	int max_workers;         /* 0 = max(1, CPUs * 3 / 2), at least min_workers */
	int concurrency;         /* tasks one worker runs at once (on that many
				    threads inside it); 0 = 1 */
	int64_t idle_timeout_ns; /* a worker above min_workers idle this long retires;
				    0 = 1 s; FERRY_FOREVER = never */
	size_t max_queue;        /* tasks waiting for a worker; 0 = FERRY_POOL_QUEUE_DEFAULT */
	int64_t queue_wait_ns;   /* submit on a full queue waits this long, then
				    -ETIMEDOUT; 0 = -EAGAIN at once; FERRY_FOREVER */
	int64_t task_timeout_ns; /* a task running longer fails with -ETIME; 0 = none */
	int64_t kill_grace_ns;   /* a process worker whose task was cancelled or timed
				    out and goes on running is killed after this;
				    0 = 1 s; FERRY_FOREVER = never */
	int64_t spin_ns;         /* idle workers and waiters spin this long before they
				    sleep; 0 = 20 us; FERRY_FOREVER is refused */
	size_t inline_bytes;     /* shared space per task for small values; 0 =
				    FERRY_POOL_INLINE_DEFAULT; at most FERRY_POOL_INLINE_MAX */
	const void *data;        /* bytes every worker gets a copy of (ferry_pool_ctx_data) */
	size_t data_len;
	void *arg;               /* passed as is (ferry_pool_ctx_user): a process worker
				    sees its own copy of what it pointed to at fork */
	ferry_pool_drain_fn on_drain; /* may be NULL */
	void *drain_arg;
};

/*
 * ferry_pool_create - a new pool; its min_workers workers are started before
 * this returns.
 * Ownership: on success *@out is the caller's (ferry_pool_destroy); on
 *   failure *@out is NULL and nothing was started.
 * Threads: starts the pool's manager thread. Process workers are forked from
 *   the calling thread here and from the manager thread later (see the fork
 *   rules in ferry/worker.h).
 * Returns: 0, -EINVAL (NULL out or opts, no fn, unknown backend, a limit out
 *   of range, negative times other than FERRY_FOREVER where allowed, data
 *   NULL with data_len > 0: the message names the field), -ENOMEM, -ENOSPC,
 *   -EMFILE, -EAGAIN, or what ferry_worker_spawn returned.
 */
FERRY_API int ferry_pool_create(ferry_pool **out, const struct ferry_pool_opts *opts);

/*
 * ferry_pool_destroy - reject every queued task (-ECANCELED), let running
 * ones finish for up to @grace_ns (FERRY_FOREVER: as long as they take),
 * then fail those still running (-ECANCELED, their abort word set), stop
 * every worker (a process worker is killed; a thread worker stuck in its
 * task is left to end on its own), run the pending callbacks, and free the
 * pool. Handles the caller still holds stay valid (settled) until freed.
 * Blocking: up to @grace_ns plus the time workers take to stop. NULL ok.
 * Threads: not concurrently with other calls on @pool (handles excepted),
 *   not from a callback.
 */
FERRY_API void ferry_pool_destroy(ferry_pool *pool, int64_t grace_ns);

/* Per-task options; zero fields mean the pool's. */
struct ferry_pool_submit_opts {
	int64_t timeout_ns;      /* this task's run-time limit; 0 = the pool's;
				    FERRY_FOREVER = none */
	ferry_pool_done_fn done; /* completion callback; may be NULL */
	void *done_arg;
};

/*
 * ferry_pool_submit - queue a task with value @v (NULL: none).
 * Ownership: @v stays the caller's (it is cloned). Buffers and ports listed
 *   in @xfer move with the task (as with ferry_port_post): on success they
 *   are detached here; on failure nothing moved. On success *@task is the
 *   caller's (ferry_pool_task_free); @task may be NULL to fire and forget.
 * Blocking: on a full queue, up to opts.queue_wait_ns.
 * Returns: 0, -EINVAL (NULL pool, @xfer without @v, a bad transfer list),
 *   -EAGAIN (queue full, no wait), -ETIMEDOUT (still full after the wait),
 *   -EPIPE (the pool is being destroyed), FERRY_ENOTCLONEABLE,
 *   FERRY_EDETACHED, -ENOMEM, or what ferry_port_post returns.
 */
FERRY_API int ferry_pool_submit(ferry_pool *pool, const struct ferry_value *v,
				const struct ferry_xfer *xfer, ferry_pool_task **task);

/* ferry_pool_submit with per-task options (@o may be NULL). */
FERRY_API int ferry_pool_submit_ex(ferry_pool *pool, const struct ferry_value *v,
				   const struct ferry_xfer *xfer,
				   const struct ferry_pool_submit_opts *o, ferry_pool_task **task);

/*
 * ferry_pool_drain - wait up to @timeout_ns until no task is queued or
 * running (the ones submitted so far have all finished).
 * Returns: 0, -EINVAL, -EAGAIN (timeout 0, not drained), -ETIMEDOUT.
 */
FERRY_API int ferry_pool_drain(ferry_pool *pool, int64_t timeout_ns);

struct ferry_pool_stats {
	uint64_t submitted;     /* accepted by submit */
	uint64_t completed;     /* settled with success */
	uint64_t failed;        /* settled with an error (task error, timeout, crash) */
	uint64_t cancelled;     /* settled with -ECANCELED */
	uint64_t crashes;       /* workers that ended abnormally (signal, exit, killed) */
	uint64_t spawned;       /* workers started, replacements included */
	uint64_t queued;        /* waiting now */
	uint64_t running;       /* running now */
	unsigned workers;       /* alive now */
	unsigned idle_workers;  /* alive and running nothing now */
	double utilization;     /* task run time / (time since create * max_workers
				   * concurrency), in [0, 1] */
	int64_t wait_p50_ns, wait_p99_ns; /* time queued, of tasks that started */
	int64_t run_p50_ns, run_p99_ns;   /* run time, of tasks that finished */
};

/* ferry_pool_stats - a snapshot (counters of settled tasks; percentiles from
 * log-linear histograms: within 1/16 of the true value). Returns 0, -EINVAL. */
FERRY_API int ferry_pool_stats(ferry_pool *pool, struct ferry_pool_stats *st);

/* ferry_pool_worker_pids - the process ids of the live workers (the caller's
 * own pid for thread workers), up to @n of them into @pids.
 * Returns the number of live workers (may exceed @n), or -EINVAL. */
FERRY_API int ferry_pool_worker_pids(ferry_pool *pool, pid_t *pids, size_t n);

/* ---- task handles ---- */

/*
 * ferry_pool_task_wait - wait up to @timeout_ns for the task to settle.
 * Returns: the task's outcome once settled: 0 (success), or its error
 *   (-ECANCELED, -ETIME for its run-time limit, FERRY_EWORKER when its worker
 *   died, or the error the task function returned); ferry_errmsg() then
 *   holds the task's message. Not settled in time: -EAGAIN (timeout 0) or
 *   -ETIMEDOUT. -EINVAL for NULL.
 */
FERRY_API int ferry_pool_task_wait(ferry_pool_task *task, int64_t timeout_ns);

/* 1 once the task settled, else 0 (never blocks); -EINVAL for NULL. */
FERRY_API int ferry_pool_task_poll(ferry_pool_task *task);

/* The outcome (as ferry_pool_task_wait) or -EINPROGRESS before it settled. */
FERRY_API int ferry_pool_task_status(const ferry_pool_task *task);

/* The task's error message ("" on success or before it settled); valid
 * until the handle is freed. */
FERRY_API const char *ferry_pool_task_errmsg(const ferry_pool_task *task);

/* The result value, owned by the handle (NULL: not settled, failed, or the
 * task returned no value). Handles in it are owned by the handle too unless
 * kept (ferry_pool_task_keep). */
FERRY_API const struct ferry_value *ferry_pool_task_value(const ferry_pool_task *task);

/* The result value graph made the caller's (ferry_value_free); NULL as above
 * or when taken already. Its buffer and port handles stay the handle's
 * unless kept. */
FERRY_API struct ferry_value *ferry_pool_task_take_value(ferry_pool_task *task);

/* Make a buffer or port of the result the caller's (ferry_buf_free /
 * ferry_port_destroy). Returns 0, -EINVAL, -ENOENT (not in the result). */
FERRY_API int ferry_pool_task_keep(ferry_pool_task *task, const void *handle);

/* How long the task waited in the queue and ran (0 when it did not). */
FERRY_API int ferry_pool_task_times(const ferry_pool_task *task, int64_t *wait_ns,
				    int64_t *run_ns);

/*
 * ferry_pool_task_cancel - abort the task. Queued: it is removed and never
 * runs. Running: its abort word is set (ferry_pool_ctx_aborted) and the task
 * settles now with -ECANCELED; its result, if it ever returns one, is
 * dropped; a process worker still running it after opts.kill_grace_ns is
 * killed and replaced (its other running tasks, with concurrency > 1, fail
 * with FERRY_EWORKER); a thread worker's task is only asked.
 * Returns: 0 (the task settled cancelled), -EALREADY (it had settled or
 *   finished already), -EINVAL.
 */
FERRY_API int ferry_pool_task_cancel(ferry_pool_task *task);

/* ferry_pool_task_free - release the handle. A task still pending goes on
 * (its result is dropped; cancel it first to stop it). NULL ok. */
FERRY_API void ferry_pool_task_free(ferry_pool_task *task);

/* ---- inside the task function ----
 * A ferry_pool_ctx is valid during the task function's call, on its thread. */

/* 1 once the task was cancelled or timed out (or the pool is going away): a
 * long task checks it and returns early; else 0. */
FERRY_API int ferry_pool_ctx_aborted(const ferry_pool_ctx *ctx);

/* The abort word (0 until aborted, then nonzero and notified): for
 * ferry_wait(word, 0, timeout) in a task that sleeps. Shared across processes. */
FERRY_API uint32_t *ferry_pool_ctx_abort_word(ferry_pool_ctx *ctx);

/* Record the failure message (printf format) and return @err, for
 * `return ferry_pool_ctx_fail(ctx, -EINVAL, "bad %s", what);`. */
FERRY_API int ferry_pool_ctx_fail(ferry_pool_ctx *ctx, int err, const char *fmt, ...)
	__attribute__((format(printf, 3, 4)));

/* List a buffer or port in the result's transfer list: it moves to the
 * caller. Ownership: every buffer and port the result references, listed or
 * not, is the pool's once the task function returns (listed ones move,
 * others are cloned, shared ones shared), and the pool frees the handles
 * after sending. Returns 0, -EINVAL, -ENOMEM. */
FERRY_API int ferry_pool_ctx_transfer(ferry_pool_ctx *ctx, struct ferry_buf *buf);
FERRY_API int ferry_pool_ctx_transfer_port(ferry_pool_ctx *ctx, ferry_port *port);

/* Make the argument's graph (ferry_value_free) or one of its buffers or
 * ports (ferry_buf_free / ferry_port_destroy) the task's own, beyond the
 * call. take_arg returns NULL when there is none or it was taken; keep
 * returns 0, -EINVAL, -ENOENT. */
FERRY_API struct ferry_value *ferry_pool_ctx_take_arg(ferry_pool_ctx *ctx);
FERRY_API int ferry_pool_ctx_keep(ferry_pool_ctx *ctx, const void *handle);

/* The worker's number (1, 2, ... in start order; replacements get new ones),
 * the backend, the pool's data (opts.data: a copy) and opts.arg. */
FERRY_API unsigned ferry_pool_ctx_worker(const ferry_pool_ctx *ctx);
FERRY_API int ferry_pool_ctx_backend(const ferry_pool_ctx *ctx);
FERRY_API const void *ferry_pool_ctx_data(const ferry_pool_ctx *ctx, size_t *len);
FERRY_API void *ferry_pool_ctx_user(const ferry_pool_ctx *ctx);

#ifdef __cplusplus
}
#endif
#endif /* FERRY_POOL_H */
