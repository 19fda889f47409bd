/**
 * @file
 * @brief Workers on two isolation backends behind one API.
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
 * holds for the messages it had fully posted, and a parent blocked on the
 * port learns it at once (the control socket hangs up).
 *
 * Fork rules: a direct fork of the calling process is safe from a
 * single-threaded parent. From a multithreaded one the child may only use
 * async-signal-safe calls plus ferry's port calls until it execs: a lock
 * another thread held (malloc's, stdio's, the program's) stays held in it.
 * The fork server (ferry_init, ferry/runtime.h) removes the problem: started
 * while the program is single-threaded, it forks the workers instead, and
 * FERRY_SPAWN_AUTO (the default) uses it whenever the caller has other
 * threads and opts.arg is NULL.
 *
 * A worker started by the fork server differs from a directly forked one:
 * - it starts from the program's state at ferry_init time: globals hold the
 *   values of then, and the entry function must have existed then (in the
 *   executable or a library loaded before ferry_init; not in one dlopen'ed
 *   later); the data, workerData and its port are what it gets of now;
 * - it gets no opts.arg (the pointer would dangle in that older memory);
 * - it holds only its own fds: 0, 1, 2 (as they were at ferry_init) and its
 *   port's two; nothing else the caller ever opened;
 * - it is the server's child: ferry_worker_pid() is its pid, but the caller
 *   cannot waitpid it; join, terminate and destroy work the same. If the
 *   server dies, a join of its worker reports FERRY_EWORKER once the worker
 *   has ended (its status is lost) instead of waiting forever.
 * It exits with code 127 if it cannot even open its port.
 */
#ifndef FERRY_WORKER_H
#define FERRY_WORKER_H

#include "ferry/common.h"
#include "ferry/port.h"

#include <sys/types.h>

#ifdef __cplusplus
extern "C" {
#endif

/** A worker, as its parent holds it (opaque). */
typedef struct ferry_worker ferry_worker;
/** The worker's own view of itself, given to its entry function (opaque). */
typedef struct ferry_worker_ctx ferry_worker_ctx;
/** A worker's entry function; its return value is the worker's exit code. */
typedef int (*ferry_worker_fn)(ferry_worker_ctx *ctx);

/** Where a worker runs. */
enum ferry_backend {
	FERRY_THREAD = 0,  /**< a thread of this process (default) */
	FERRY_PROCESS = 1, /**< a forked child process */
};

/** How a process worker is started (ferry_worker_opts.spawn). */
enum ferry_spawn {
	/** Default: through the fork server when one runs, the caller has other
	 * threads and opts.arg is NULL; else a direct fork. */
	FERRY_SPAWN_AUTO = 0,
	FERRY_SPAWN_FORK = 1,   /**< always fork the caller */
	FERRY_SPAWN_SERVER = 2, /**< always through the fork server (arg must be NULL) */
};

/** Most bytes of worker data. */
#define FERRY_WORKER_DATA_MAX ((size_t)64 * 1024 * 1024)

struct ferry_value;
struct ferry_xfer;

/** Options of ferry_worker_spawn; zero fields mean defaults. */
struct ferry_worker_opts {
	int backend;                 /**< enum ferry_backend */
	ferry_worker_fn entry;       /**< required */
	const void *data;            /**< worker data as bytes, copied; may be NULL */
	size_t data_len;             /**< bytes at data */
	const struct ferry_value *value; /**< workerData: cloned into the worker; may be NULL */
	const struct ferry_xfer *xfer;   /**< what @p value transfers (buffers, ports); may be NULL */
	const char *name;            /**< for errors and the thread/process name; NULL = "worker" */
	void *arg;                   /**< passed as is (a process worker sees its copy);
				      * never through the fork server */
	struct ferry_channel_opts channel; /**< the parent<->worker channel */
	/** Limits; 0 = inherit. stack_size applies to both backends (a thread's
	 * stack; a process's RLIMIT_STACK); the others to process workers only. */
	size_t stack_size;
	uint64_t max_address_space;  /**< RLIMIT_AS, bytes */
	uint64_t max_open_files;     /**< RLIMIT_NOFILE */
	int spawn;                   /**< enum ferry_spawn; process workers only */
};

/** How a worker ended (ferry_worker_join, the EXIT event). */
struct ferry_worker_status {
	int code;       /**< exit code when signal == 0 (1 after a terminate) */
	int signal;     /**< the signal that ended a process worker, else 0 */
	int terminated; /**< ended by ferry_worker_terminate */
};

/**
 * Start a worker.
 * @par Ownership
 *   on success *@p out is the caller's (ferry_worker_destroy); the
 *   data was copied. On failure nothing was started and *@p out is NULL.
 * @return 0, -EINVAL (NULL out/opts, no entry, unknown backend, data_len
 *   above FERRY_WORKER_DATA_MAX or data NULL with data_len > 0, unknown
 *   spawn, spawn set on a thread worker, FERRY_SPAWN_SERVER with arg),
 *   -ECHILD (FERRY_SPAWN_SERVER without a fork server; or the server is
 *   needed and died: the message says so), -ETIMEDOUT (the server did not
 *   answer), -EAGAIN, -ENOMEM, -EMFILE.
 */
FERRY_API int ferry_worker_spawn(ferry_worker **out, const struct ferry_worker_opts *opts);

/** The parent's port to the worker (owned by the worker handle). */
FERRY_API ferry_port *ferry_worker_port(ferry_worker *w);

/** The backend, and the process id (the parent's own pid for a thread worker). */
FERRY_API int ferry_worker_backend(const ferry_worker *w);
/** The worker's process id (the parent's own pid for a thread worker). */
FERRY_API pid_t ferry_worker_pid(const ferry_worker *w);

/**
 * Wait up to @p timeout_ns for the worker to end and report
 * how. May be called again after success (same answer).
 * @return 0, -EINVAL, -ETIMEDOUT (still running), -EAGAIN (timeout 0),
 *   FERRY_EWORKER (a fork server worker ended, but its server died or was
 *   stopped before reporting how).
 */
FERRY_API int ferry_worker_join(ferry_worker *w, struct ferry_worker_status *st,
				int64_t timeout_ns);

/* ---- events (the parent side of Node's Worker) ---- */

/** What a worker event reports (ferry_worker_event.type). */
enum ferry_worker_event_type {
	FERRY_WORKER_ONLINE = 1,       /**< the worker started running its entry */
	FERRY_WORKER_MESSAGE = 2,      /**< ev.msg: a message it posted (the caller's) */
	FERRY_WORKER_MESSAGEERROR = 3, /**< a message that did not decode: ev.err, ev.text */
	FERRY_WORKER_ERROR = 4,        /**< it failed (ferry_worker_throw): ev.err, ev.text */
	FERRY_WORKER_EXIT = 5,         /**< it ended: ev.status; the last event */
};

/** One event of a worker (ferry_worker_next): Node's Worker events. */
struct ferry_worker_event {
	int type;                          /**< enum ferry_worker_event_type */
	ferry_msg *msg;                    /**< MESSAGE: the caller's (ferry_msg_free) */
	int err;                           /**< MESSAGEERROR, ERROR: a negative code */
	char text[256];                    /**< MESSAGEERROR, ERROR: what happened */
	struct ferry_worker_status status; /**< EXIT */
};

/**
 * The worker's next event, waiting up to @p timeout_ns.
 * Order: ONLINE first, then messages and errors as the worker produced them,
 * then EXIT after every message the worker fully posted. After EXIT, every
 * call returns EXIT again. Use this or ferry_port_recv on the worker's port,
 * not both at once (recv skips ONLINE and ERROR, which are then kept for
 * ferry_worker_online / the status). In an event loop, the same events come
 * as callbacks: ferry_loop_worker_start (ferry/loop.h).
 * @return 0, -EINVAL, -EAGAIN (nothing now, timeout 0), -ETIMEDOUT.
 */
FERRY_API int ferry_worker_next(ferry_worker *w, struct ferry_worker_event *ev,
				int64_t timeout_ns);

/** 1 once the worker's ONLINE record was seen by the parent, else 0. */
FERRY_API int ferry_worker_online(const ferry_worker *w);

/**
 * Stop the worker (Node's worker.terminate()).
 * Process: SIGTERM, then SIGKILL once @p grace_ns has passed without an exit.
 * Thread: asked to stop, and stopped at its next ferry wait or receive
 *   (including one blocked forever in ferry_wait or ferry_port_recv); a
 *   thread spinning in its own code cannot be stopped, and this returns
 *   -ETIMEDOUT after @p grace_ns (it will stop at its next ferry call).
 * The worker's exit status then says terminated (code 1, or the signal).
 * Terminating a worker that already exited does nothing and returns 0.
 * @return 0 (it has ended), -EINVAL, -ETIMEDOUT (a thread still running),
 *   FERRY_EWORKER (a fork server worker ended unreported, see join).
 */
FERRY_API int ferry_worker_terminate(ferry_worker *w, int64_t grace_ns);

/**
 * Release the handle and its port. A process worker
 * still running is killed (SIGKILL) and reaped; a thread worker still running
 * sees its port closed and is detached. NULL ok.
 */
FERRY_API void ferry_worker_destroy(ferry_worker *w);

/* ---- inside the worker ---- */

/** The worker's port to its parent (owned by the runtime). */
FERRY_API ferry_port *ferry_worker_ctx_port(ferry_worker_ctx *ctx);
/** The worker's copy of the data (NULL when none), its length in *@p len. */
FERRY_API const void *ferry_worker_ctx_data(ferry_worker_ctx *ctx, size_t *len);
/** opts.arg as given (a process worker sees its own copy of what it pointed
 * to; NULL for a worker started by the fork server). */
FERRY_API void *ferry_worker_ctx_arg(ferry_worker_ctx *ctx);
/** The worker's name (opts.name, or "worker"). */
FERRY_API const char *ferry_worker_ctx_name(ferry_worker_ctx *ctx);
/** The worker's backend: FERRY_THREAD or FERRY_PROCESS. */
FERRY_API int ferry_worker_ctx_backend(ferry_worker_ctx *ctx);

/** workerData: the worker's clone of opts.value (NULL when none); owned by
 * the runtime, valid until the worker ends. */
FERRY_API const struct ferry_value *ferry_worker_ctx_value(ferry_worker_ctx *ctx);

/**
 * End the calling worker with @p code, on either backend
 * (process.exit inside a worker: the worker only, never the parent). Its
 * port is closed first, so everything it posted is delivered. Outside a
 * worker it returns -EINVAL and does nothing.
 */
FERRY_API int ferry_worker_exit(int code);

/**
 * Report a failure to the parent (its ERROR event, with
 * @p err and the formatted text) and end the calling worker with exit code 1:
 * an uncaught exception. Outside a worker it returns -EINVAL.
 */
FERRY_API int ferry_worker_throw(int err, const char *fmt, ...)
	__attribute__((format(printf, 2, 3)));

/** 1 outside any worker (worker_threads.isMainThread), else 0. */
FERRY_API int ferry_is_main(void);

#ifdef __cplusplus
}
#endif
#endif /* FERRY_WORKER_H */
