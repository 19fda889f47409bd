/*
 * ferry/worker.h - workers on two isolation backends behind one API.
 *
 * A worker runs an entry function either on a new thread (FERRY_THREAD: shares
 * the address space; cheapest) or in a forked child process (FERRY_PROCESS:
 * isolated; a crash takes nothing with it). The parent and the worker each
 * hold one port of a fresh channel; the worker also gets a copy of the
 * worker data.
 *
 *     static int entry(ferry_worker_ctx *ctx) {
 *         ferry_port *p = ferry_worker_ctx_port(ctx);
 *         ... recv / post ...
 *         return 0;                       // the exit code
 *     }
 *     struct ferry_worker_opts o = { .backend = FERRY_PROCESS, .entry = entry };
 *     ferry_worker *w;
 *     ferry_worker_spawn(&w, &o);
 *     ... talk on ferry_worker_port(w) ...
 *     struct ferry_worker_status st;
 *     ferry_worker_join(w, &st, FERRY_FOREVER);
 *     ferry_worker_destroy(w);
 *
 * A process worker leaves with _exit(code) once its entry returns: it never
 * returns into the caller's stack. Its port is closed on the way out, so the
 * parent receives what it posted, then -EPIPE; if it crashes, the same
 * holds for the messages it had fully posted, within FERRY_PORT_LIVENESS_NS.
 *
 * Fork rules: the process backend forks the calling process directly, which is
 * safe from a single-threaded parent. From a multithreaded one the child may
 * only use async-signal-safe calls plus ferry's port calls until it execs.
 */
#ifndef FERRY_WORKER_H
#define FERRY_WORKER_H

#include "ferry/common.h"
#include "ferry/port.h"

#include <sys/types.h>

#ifdef __cplusplus
extern "C" {
#endif

typedef struct ferry_worker ferry_worker;
typedef struct ferry_worker_ctx ferry_worker_ctx;
typedef int (*ferry_worker_fn)(ferry_worker_ctx *ctx);

enum ferry_backend {
	FERRY_THREAD = 0,  /* default */
	FERRY_PROCESS = 1,
};

/* Most bytes of worker data. */
#define FERRY_WORKER_DATA_MAX ((size_t)64 * 1024 * 1024)

struct ferry_worker_opts {
	int backend;                 /* enum ferry_backend */
	ferry_worker_fn entry;       /* required */
	const void *data;            /* worker data, copied; may be NULL */
	size_t data_len;
	const char *name;            /* for errors and the thread/process name; NULL = "worker" */
	void *arg;                   /* passed as is (a process worker sees its copy) */
	struct ferry_channel_opts channel; /* the parent<->worker channel */
};

struct ferry_worker_status {
	int code;   /* exit code when signal == 0 */
	int signal; /* the signal that ended a process worker, else 0 */
};

/*
 * ferry_worker_spawn - start a worker.
 * Ownership: on success *@out is the caller's (ferry_worker_destroy); the
 *   data was copied. On failure nothing was started and *@out is NULL.
 * Returns: 0, -EINVAL (NULL out/opts, no entry, unknown backend, data_len
 *   above FERRY_WORKER_DATA_MAX or data NULL with data_len > 0), -EAGAIN,
 *   -ENOMEM, -EMFILE.
 */
FERRY_API int ferry_worker_spawn(ferry_worker **out, const struct ferry_worker_opts *opts);

/* The parent's port to the worker (owned by the worker handle). */
FERRY_API ferry_port *ferry_worker_port(ferry_worker *w);

/* The backend, and the process id (the parent's own pid for a thread worker). */
FERRY_API int ferry_worker_backend(const ferry_worker *w);
FERRY_API pid_t ferry_worker_pid(const ferry_worker *w);

/*
 * ferry_worker_join - wait up to @timeout_ns for the worker to end and report
 * how. May be called again after success (same answer).
 * Returns: 0, -EINVAL, -ETIMEDOUT (still running), -EAGAIN (timeout 0).
 */
FERRY_API int ferry_worker_join(ferry_worker *w, struct ferry_worker_status *st,
				int64_t timeout_ns);

/*
 * ferry_worker_destroy - release the handle and its port. A process worker
 * still running is killed (SIGKILL) and reaped; a thread worker still running
 * sees its port closed and is detached. NULL ok.
 */
FERRY_API void ferry_worker_destroy(ferry_worker *w);

/* ---- inside the worker ---- */

/* The worker's port to its parent (owned by the runtime). */
FERRY_API ferry_port *ferry_worker_ctx_port(ferry_worker_ctx *ctx);
/* The worker's copy of the data (NULL when none), its length in *@len. */
FERRY_API const void *ferry_worker_ctx_data(ferry_worker_ctx *ctx, size_t *len);
FERRY_API void *ferry_worker_ctx_arg(ferry_worker_ctx *ctx);
FERRY_API const char *ferry_worker_ctx_name(ferry_worker_ctx *ctx);
FERRY_API int ferry_worker_ctx_backend(ferry_worker_ctx *ctx);

/* ferry_is_main - 1 outside any worker (worker_threads.isMainThread), else 0. */
FERRY_API int ferry_is_main(void);

#ifdef __cplusplus
}
#endif
#endif /* FERRY_WORKER_H */
