/**
 * @file
 * @brief A worker pool (piscina's model) on threads or processes.
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
 * Results: wait for a task (with a timeout), poll it, or have a callback
 * run when it settles: on the pool's manager thread, or on the thread of a
 * ferry_loop of yours (ferry_pool_submit_opts.loop: Node's awaited
 * promise; the pending task keeps the loop alive).
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

/** A worker pool (opaque). */
typedef struct ferry_pool ferry_pool;
/** A submitted task's handle (opaque). */
typedef struct ferry_pool_task ferry_pool_task;
/** A running task's context, given to the task function (opaque). */
typedef struct ferry_pool_ctx ferry_pool_ctx;

struct ferry_value;
struct ferry_buf;
struct ferry_loop;

/**
 * The task function, run inside a worker.
 * @param arg the task's value (NULL when submitted without one), owned by the
 *   pool until the function returns (ferry_pool_ctx_take_arg and
 *   ferry_pool_ctx_keep make it or its handles yours).
 * @param result set it to the result (or leave it NULL: no value); the pool owns
 *   it from then on (even when the function fails: it is freed).
 * @return 0, or a negative code that fails the task (with the message of
 *   ferry_pool_ctx_fail, else the code's name).
 */
typedef int (*ferry_pool_fn)(ferry_pool_ctx *ctx, const struct ferry_value *arg,
			     struct ferry_value **result);

/** A task's completion callback: on the pool's manager thread (or on a loop:
 * ferry_pool_submit_opts.loop), once per task, after the task settled. The handle is valid during the call (free it there
 * or later if you kept it from submit). It must not block: while it runs the
 * manager answers no worker (no waiting for other tasks, no submit on a full
 * queue with a wait). */
typedef void (*ferry_pool_done_fn)(ferry_pool_task *task, void *arg);

/** The drain callback: on the manager thread, each time the queue empties. */
typedef void (*ferry_pool_drain_fn)(ferry_pool *pool, void *arg);

/** Limits. */
#define FERRY_POOL_MAX_WORKERS 256 /**< most workers (max_workers) */
#define FERRY_POOL_MAX_CONCURRENCY 64 /**< most tasks one worker runs at once (concurrency) */
#define FERRY_POOL_MAX_QUEUE ((size_t)1 << 18) /**< largest max_queue */
#define FERRY_POOL_INLINE_DEFAULT ((size_t)1024) /**< default inline_bytes */
#define FERRY_POOL_INLINE_MAX ((size_t)64 * 1024) /**< largest inline_bytes */
#define FERRY_POOL_QUEUE_DEFAULT ((size_t)1024) /**< default max_queue */
/** min_workers: keep no worker when idle. */
#define FERRY_POOL_MIN_NONE (-1)

/** Zero fields mean defaults (see each). */
struct ferry_pool_opts {
	int backend;             /**< enum ferry_backend: FERRY_THREAD (default) or FERRY_PROCESS */
	ferry_pool_fn fn;        /**< required */
	const char *name;        /**< workers are "<name>-<id>"; NULL = "pool" */
	int min_workers;         /**< kept even when idle; 0 = max(1, CPUs / 2) (at most
				    max_workers); FERRY_POOL_MIN_NONE = none */
	int max_workers;         /**< 0 = max(1, CPUs * 3 / 2), at least min_workers */
	int concurrency;         /**< tasks one worker runs at once (on that many
				    threads inside it); 0 = 1 */
	int64_t idle_timeout_ns; /**< a worker above min_workers idle this long retires;
				    0 = 1 s; FERRY_FOREVER = never */
	size_t max_queue;        /**< tasks waiting for a worker; 0 = FERRY_POOL_QUEUE_DEFAULT */
	int64_t queue_wait_ns;   /**< submit on a full queue waits this long, then
				    -ETIMEDOUT; 0 = -EAGAIN at once; FERRY_FOREVER */
	int64_t task_timeout_ns; /**< a task running longer fails with -ETIME; 0 = none */
	int64_t kill_grace_ns;   /**< a process worker whose task was cancelled or timed
				    out and goes on running is killed after this;
				    0 = 1 s; FERRY_FOREVER = never */
	int64_t spin_ns;         /**< idle workers and waiters spin this long before they
				    sleep; 0 = 20 us; FERRY_FOREVER is refused */
	size_t inline_bytes;     /**< shared space per task for small values; 0 =
				    FERRY_POOL_INLINE_DEFAULT; at most FERRY_POOL_INLINE_MAX */
	const void *data;        /**< bytes every worker gets a copy of (ferry_pool_ctx_data) */
	size_t data_len;         /**< bytes at data */
	void *arg;               /**< passed as is (ferry_pool_ctx_user): a process worker
				    sees its own copy of what it pointed to at fork */
	ferry_pool_drain_fn on_drain; /**< may be NULL */
	void *drain_arg;              /**< passed to on_drain */
	/**
	 * workerData as a value: cloned into every worker the pool starts
	 * (replacements included), read there with ferry_pool_ctx_value(). The
	 * pool clones it at create (the caller keeps @p value): buffers in it are
	 * copied (each worker gets its own; a transfer list cannot apply, as
	 * there are many workers), shared buffers are shared by every worker
	 * and the caller, and a port cannot be in it (-EINVAL: a port moves,
	 * it cannot be cloned into many workers).
	 * NULL: none. Independent of the bytes of @p data.
	 */
	const struct ferry_value *value;
	/**
	 * Spawn options of every worker, as in struct ferry_worker_opts (0 =
	 * inherit): @p stack_size for both backends (each runner thread's stack,
	 * or a process worker's RLIMIT_STACK); @p max_address_space (RLIMIT_AS)
	 * and @p max_open_files (RLIMIT_NOFILE) for process workers only; @p spawn
	 * (enum ferry_spawn) for process workers only: FERRY_SPAWN_SERVER
	 * starts them through the fork server (ferry_init; @p arg must then be
	 * NULL), FERRY_SPAWN_FORK forks the pool's manager thread, AUTO (0)
	 * uses the server when one runs and @p arg is NULL.
	 */
	size_t stack_size;
	uint64_t max_address_space; /**< process workers' RLIMIT_AS (see stack_size) */
	uint64_t max_open_files;    /**< process workers' RLIMIT_NOFILE (see stack_size) */
	int spawn;                  /**< enum ferry_spawn (see stack_size) */
};

/**
 * A new pool; its min_workers workers are started before
 * this returns.
 * @par Ownership
 *   on success *@p out is the caller's (ferry_pool_destroy); on
 *   failure *@p out is NULL and nothing was started.
 * @par Threads
 *   starts the pool's manager thread. Process workers are forked from
 *   the calling thread here and from the manager thread later (see the fork
 *   rules in ferry/worker.h).
 * @return 0, -EINVAL (NULL out or opts, no fn, unknown backend, a limit out
 *   of range, negative times other than FERRY_FOREVER where allowed, data
 *   NULL with data_len > 0, a port in value, spawn options that do not fit
 *   the backend: the message names the field), FERRY_ENOTCLONEABLE (value),
 *   -ENOMEM, -ENOSPC, -EMFILE, -EAGAIN, or what ferry_worker_spawn returned
 *   (-ECHILD: FERRY_SPAWN_SERVER without a fork server).
 */
FERRY_API int ferry_pool_create(ferry_pool **out, const struct ferry_pool_opts *opts);

/**
 * Reject every queued task (-ECANCELED), let running
 * ones finish for up to @p grace_ns (FERRY_FOREVER: as long as they take),
 * then fail those still running (-ECANCELED, their abort word set), stop
 * every worker (a process worker is killed; a thread worker stuck in its
 * task is left to end on its own), run the pending callbacks, and free the
 * pool. Handles the caller still holds stay valid (settled) until freed.
 * @par Blocking
 *   up to @p grace_ns plus the time workers take to stop. NULL ok.
 * @par Threads
 *   not concurrently with other calls on @p pool (handles excepted),
 *   not from a callback.
 */
FERRY_API void ferry_pool_destroy(ferry_pool *pool, int64_t grace_ns);

/** Per-task options; zero fields mean the pool's. */
struct ferry_pool_submit_opts {
	int64_t timeout_ns;      /**< this task's run-time limit; 0 = the pool's;
				    FERRY_FOREVER = none */
	ferry_pool_done_fn done; /**< completion callback; may be NULL */
	void *done_arg;          /**< passed to done */
	/**
	 * Where @p done runs: NULL = on the pool's manager thread (see
	 * ferry_pool_done_fn); a loop = on the thread that runs @p loop, through
	 * ferry_loop_post, exactly once per task whatever its outcome
	 * (completed, failed, timed out, crashed, cancelled, or rejected by
	 * ferry_pool_destroy). A callback on a loop does not hold up the pool's
	 * manager: it may call the pool (submit, wait, free), though blocking
	 * there stalls the loop's other sources. Requires @p done (else -EINVAL).
	 *
	 * A task pending with a loop callback keeps @p loop alive: a
	 * ferry_loop_run(FERRY_RUN_DEFAULT) on it returns only after the
	 * callbacks of the tasks submitted before it ran (as Node keeps its
	 * event loop alive while a piscina task is pending).
	 *
	 * Lifetime: @p loop must outlive the callback: destroy the pool (which
	 * settles every task and posts their callbacks) before the loop; a
	 * loop destroyed with callbacks posted runs them in ferry_loop_destroy
	 * (ferry_loop_post's rule), so each still runs once.
	 */
	struct ferry_loop *loop;
};

/**
 * Queue a task with value @p v (NULL: none).
 * @par Ownership
 *   @p v stays the caller's (it is cloned). Buffers and ports listed
 *   in @p xfer move with the task (as with ferry_port_post): on success they
 *   are detached here; on failure nothing moved. On success *@p task is the
 *   caller's (ferry_pool_task_free); @p task may be NULL to fire and forget.
 * @par Blocking
 *   on a full queue, up to opts.queue_wait_ns.
 * @return 0, -EINVAL (NULL pool, @p xfer without @p v, a bad transfer list),
 *   -EAGAIN (queue full, no wait), -ETIMEDOUT (still full after the wait),
 *   -EPIPE (the pool is being destroyed), FERRY_ENOTCLONEABLE,
 *   FERRY_EDETACHED, -ENOMEM, or what ferry_port_post returns.
 */
FERRY_API int ferry_pool_submit(ferry_pool *pool, const struct ferry_value *v,
				const struct ferry_xfer *xfer, ferry_pool_task **task);

/** ferry_pool_submit with per-task options (@p o may be NULL). */
FERRY_API int ferry_pool_submit_ex(ferry_pool *pool, const struct ferry_value *v,
				   const struct ferry_xfer *xfer,
				   const struct ferry_pool_submit_opts *o, ferry_pool_task **task);

/**
 * Wait up to @p timeout_ns until no task is queued or
 * running (the ones submitted so far have all finished).
 * @return 0, -EINVAL, -EAGAIN (timeout 0, not drained), -ETIMEDOUT.
 */
FERRY_API int ferry_pool_drain(ferry_pool *pool, int64_t timeout_ns);

/** A pool's counts and timings (ferry_pool_stats). */
struct ferry_pool_stats {
	uint64_t submitted;     /**< accepted by submit */
	uint64_t completed;     /**< settled with success */
	uint64_t failed;        /**< settled with an error (task error, timeout, crash) */
	uint64_t cancelled;     /**< settled with -ECANCELED */
	uint64_t crashes;       /**< workers that ended abnormally (signal, exit, killed) */
	uint64_t spawned;       /**< workers started, replacements included */
	uint64_t queued;        /**< waiting now */
	uint64_t running;       /**< running now */
	unsigned workers;       /**< alive now */
	unsigned idle_workers;  /**< alive and running nothing now */
	double utilization;     /**< task run time / (time since create * max_workers
				   * concurrency), in [0, 1] */
	int64_t wait_p50_ns, /**< time queued, of tasks that started: median */
		wait_p99_ns; /**< the same, 99th percentile */
	int64_t run_p50_ns, /**< run time, of tasks that finished: median */
		run_p99_ns;   /**< the same, 99th percentile */
};

/** A snapshot (counters of settled tasks; percentiles from
 * log-linear histograms: within 1/16 of the true value). @return 0, -EINVAL. */
FERRY_API int ferry_pool_stats(ferry_pool *pool, struct ferry_pool_stats *st);

/** The process ids of the live workers (the caller's
 * own pid for thread workers), up to @p n of them into @p pids.
 * @return the number of live workers (may exceed @p n), or -EINVAL. */
FERRY_API int ferry_pool_worker_pids(ferry_pool *pool, pid_t *pids, size_t n);

/* ---- task handles ---- */

/**
 * Wait up to @p timeout_ns for the task to settle.
 * @return the task's outcome once settled: 0 (success), or its error
 *   (-ECANCELED, -ETIME for its run-time limit, FERRY_EWORKER when its worker
 *   died, or the error the task function returned); ferry_errmsg() then
 *   holds the task's message. Not settled in time: -EAGAIN (timeout 0) or
 *   -ETIMEDOUT. -EINVAL for NULL.
 */
FERRY_API int ferry_pool_task_wait(ferry_pool_task *task, int64_t timeout_ns);

/** 1 once the task settled, else 0 (never blocks); -EINVAL for NULL. */
FERRY_API int ferry_pool_task_poll(ferry_pool_task *task);

/** The outcome (as ferry_pool_task_wait) or -EINPROGRESS before it settled. */
FERRY_API int ferry_pool_task_status(const ferry_pool_task *task);

/** The task's error message ("" on success or before it settled); valid
 * until the handle is freed. */
FERRY_API const char *ferry_pool_task_errmsg(const ferry_pool_task *task);

/** The result value, owned by the handle (NULL: not settled, failed, or the
 * task returned no value). Handles in it are owned by the handle too unless
 * kept (ferry_pool_task_keep). */
FERRY_API const struct ferry_value *ferry_pool_task_value(const ferry_pool_task *task);

/** The result value graph made the caller's (ferry_value_free); NULL as above
 * or when taken already. Its buffer and port handles stay the handle's
 * unless kept. */
FERRY_API struct ferry_value *ferry_pool_task_take_value(ferry_pool_task *task);

/** Make a buffer or port of the result the caller's (ferry_buf_free /
 * ferry_port_destroy). @return 0, -EINVAL, -ENOENT (not in the result). */
FERRY_API int ferry_pool_task_keep(ferry_pool_task *task, const void *handle);

/** How long the task waited in the queue and ran (0 when it did not). */
FERRY_API int ferry_pool_task_times(const ferry_pool_task *task, int64_t *wait_ns,
				    int64_t *run_ns);

/**
 * Abort the task. Queued: it is removed and never
 * runs. Running: its abort word is set (ferry_pool_ctx_aborted) and the task
 * settles now with -ECANCELED; its result, if it ever returns one, is
 * dropped; a process worker still running it after opts.kill_grace_ns is
 * killed and replaced (its other running tasks, with concurrency > 1, fail
 * with FERRY_EWORKER); a thread worker's task is only asked.
 * @return 0 (the task settled cancelled), -EALREADY (it had settled or
 *   finished already), -EINVAL.
 */
FERRY_API int ferry_pool_task_cancel(ferry_pool_task *task);

/** Release the handle. A task still pending goes on
 * (its result is dropped; cancel it first to stop it). NULL ok. */
FERRY_API void ferry_pool_task_free(ferry_pool_task *task);

/* ---- inside the task function ----
 * A ferry_pool_ctx is valid during the task function's call, on its thread. */

/** 1 once the task was cancelled or timed out (or the pool is going away): a
 * long task checks it and returns early; else 0. */
FERRY_API int ferry_pool_ctx_aborted(const ferry_pool_ctx *ctx);

/** The abort word (0 until aborted, then nonzero and notified): for
 * ferry_wait(word, 0, timeout) in a task that sleeps. Shared across processes. */
FERRY_API uint32_t *ferry_pool_ctx_abort_word(ferry_pool_ctx *ctx);

/** Record the failure message (printf format) and return @p err, for
 * `return ferry_pool_ctx_fail(ctx, -EINVAL, "bad %s", what);`. */
FERRY_API int ferry_pool_ctx_fail(ferry_pool_ctx *ctx, int err, const char *fmt, ...)
	__attribute__((format(printf, 3, 4)));

/** List a buffer or port in the result's transfer list: it moves to the
 * caller. Ownership: every buffer and port the result references, listed or
 * not, is the pool's once the task function returns (listed ones move,
 * others are cloned, shared ones shared), and the pool frees the handles
 * after sending. @return 0, -EINVAL, -ENOMEM. */
FERRY_API int ferry_pool_ctx_transfer(ferry_pool_ctx *ctx, struct ferry_buf *buf);
/** ferry_pool_ctx_transfer for a port: it moves to the caller with the result.
 * @return 0, -EINVAL, -ENOMEM. */
FERRY_API int ferry_pool_ctx_transfer_port(ferry_pool_ctx *ctx, ferry_port *port);

/** Make the argument's graph (ferry_value_free) or one of its buffers or
 * ports (ferry_buf_free / ferry_port_destroy) the task's own, beyond the
 * call. take_arg returns NULL when there is none or it was taken; keep
 * returns 0, -EINVAL, -ENOENT. */
FERRY_API struct ferry_value *ferry_pool_ctx_take_arg(ferry_pool_ctx *ctx);
/** Make one buffer or port of the argument the task's own (ferry_buf_free /
 * ferry_port_destroy), beyond the call.
 * @return 0, -EINVAL, -ENOENT (not in the argument). */
FERRY_API int ferry_pool_ctx_keep(ferry_pool_ctx *ctx, const void *handle);

/** The worker's number (1, 2, ... in start order; replacements get new ones),
 * the backend, the pool's data (opts.data: a copy) and opts.arg. */
FERRY_API unsigned ferry_pool_ctx_worker(const ferry_pool_ctx *ctx);
/** The backend the task runs on: FERRY_THREAD or FERRY_PROCESS. */
FERRY_API int ferry_pool_ctx_backend(const ferry_pool_ctx *ctx);
/** The worker's copy of the pool's data (opts.data), its length in *@p len. */
FERRY_API const void *ferry_pool_ctx_data(const ferry_pool_ctx *ctx, size_t *len);
/** opts.arg as given (a process worker sees its own copy of what it pointed
 * to at fork). */
FERRY_API void *ferry_pool_ctx_user(const ferry_pool_ctx *ctx);

/**
 * ferry_pool_ctx_value - the worker's clone of the pool's workerData
 * (ferry_pool_opts.value).
 * @param ctx the task's context.
 * @return the value, owned by the worker and valid while it lives (it is
 *   shared by the tasks that worker runs, concurrency > 1 included: read
 *   it, do not change it); NULL when the pool has none or @p ctx is NULL.
 */
FERRY_API const struct ferry_value *ferry_pool_ctx_value(const ferry_pool_ctx *ctx);

#ifdef __cplusplus
}
#endif
#endif /* FERRY_POOL_H */
