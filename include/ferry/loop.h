/**
 * @file
 * @brief The event loop: timers, fd readiness, Atomics.waitAsync on
 * futex words, eventcount watches for ports, and callbacks posted from other
 * threads.
 *
 *     ferry_loop *loop;
 *     ferry_loop_create(&loop, NULL);              // io_uring, else epoll
 *     ferry_loop_timer(loop, 5000000, 0, on_timer, NULL, NULL);
 *     ferry_wait_async(loop, &shared->word, 0, FERRY_FOREVER, on_wake, NULL, NULL);
 *     ferry_loop_run(loop, FERRY_RUN_DEFAULT);     // until nothing is left
 *     ferry_loop_destroy(loop);
 *
 * Threads: a loop belongs to the thread that runs it. Every call except
 * ferry_loop_stop and ferry_loop_post is made on that thread (from a
 * callback, or between runs; any one thread at a time when not running).
 * Callbacks run on that thread, inside ferry_loop_run, one at a time.
 * On a thread worker, ferry_loop_run also waits on the worker's stop flag:
 * ferry_worker_terminate ends a worker blocked in its loop at once, and
 * the loop it was running is destroyed with it when the worker created it
 * (a loop made by another thread is left idle, its creator's to destroy).
 *
 * Sources: every source (timer, fd, wait, eventcount watch) has a 64-bit id,
 * never 0, never reused for another source of the same loop while the loop
 * lives (a generation counter is part of it). An id of a source that ended
 * (one-shot fired, cancelled) makes ferry_loop_cancel return -ENOENT: there
 * is no use-after-free with a stale id. A callback may cancel its own source
 * or any other, and add new ones; a cancelled source's callback never runs
 * after ferry_loop_cancel returns.
 *
 * Callbacks get (loop, id, res, arg): @p res is 0 for timers and posts, the
 * readiness bits for fds, the wait result for ferry_wait_async, and a
 * negative errno when a source fails (the source is then over).
 *
 * Fairness: every loop iteration runs (1) the completions the kernel
 * reported (at most FERRY_LOOP_BATCH per iteration for fds and waits), (2)
 * up to FERRY_LOOP_BATCH callbacks posted from other threads, (3) the timers
 * due when the phase began, (4) each ready eventcount watch's callback at
 * most once. While any watch is ready the iteration does not block, so a
 * port with an endless stream of messages gets one callback per iteration,
 * and timers and other sources run between them; a watch callback handles a
 * bounded batch (FERRY_LOOP_BATCH messages is a good size) and returns.
 *
 * Backends: io_uring (IORING_OP_FUTEX_WAIT, poll, cancel; needs Linux 6.7)
 * or epoll (futex words watched by helper threads in futex_waitv). Chosen at
 * create: opts->backend if not AUTO, else the environment variable
 * FERRY_LOOP=uring|epoll|auto, else io_uring when it works (creates, and
 * supports the futex opcode), else epoll. Both behave the same except where
 * noted at ferry_wait_async.
 *
 * Fork: a loop does not cross fork(). In a forked child, destroy an
 * inherited loop (it then only releases its memory and fds) or forget it;
 * do not run it.
 */
#ifndef FERRY_LOOP_H
#define FERRY_LOOP_H

#include "ferry/atomic.h"
#include "ferry/common.h"

#include <stdint.h>

#ifdef __cplusplus
extern "C" {
#endif

/** An event loop (opaque); belongs to the thread that runs it. */
typedef struct ferry_loop ferry_loop;

/** Which kernel interface a loop uses (ferry_loop_opts.backend). */
enum ferry_loop_backend_kind {
	FERRY_LOOP_AUTO = 0,  /**< FERRY_LOOP env, then io_uring if it works, else epoll */
	FERRY_LOOP_URING = 1, /**< io_uring or fail */
	FERRY_LOOP_EPOLL = 2, /**< epoll */
};

/** Options of ferry_loop_create; zero fields mean defaults. */
struct ferry_loop_opts {
	int backend;      /**< enum ferry_loop_backend_kind; AUTO (0) = default */
	unsigned entries; /**< io_uring submission queue size; 0 = 256 */
};

/** How long ferry_loop_run runs. */
enum ferry_loop_mode {
	FERRY_RUN_DEFAULT = 0, /**< until no referenced source is left, or stopped */
	FERRY_RUN_ONCE = 1,    /**< block until at least one callback ran (or stopped) */
	FERRY_RUN_NOWAIT = 2,  /**< one pass over what is ready; never blocks */
};

/** fd readiness: asked with READABLE/WRITABLE; HUP and ERROR always reported. */
#define FERRY_LOOP_READABLE 0x1u /**< wait until the fd is readable */
#define FERRY_LOOP_WRITABLE 0x2u /**< wait until the fd is writable */
#define FERRY_LOOP_HUP 0x4u   /**< peer closed (POLLHUP/POLLRDHUP) */
#define FERRY_LOOP_ERROR 0x8u /**< POLLERR */

/** The per-iteration bound described above. */
#define FERRY_LOOP_BATCH 64

/** Callbacks: @p id is the source's id (0 for posts); @p res as described above. */
typedef void (*ferry_loop_fn)(ferry_loop *loop, uint64_t id, int res, void *arg);
/** An eventcount watch's condition: nonzero when there is work. Cheap, no side effects. */
typedef int (*ferry_loop_ready_fn)(void *arg);

/**
 * A new loop. @p opts may be NULL (all defaults).
 * @par Ownership
 *   on success *@p out is the caller's (ferry_loop_destroy); on
 *   failure *@p out is NULL.
 * @return 0, -EINVAL (NULL out, unknown backend, bad FERRY_LOOP value),
 *   -ENOSYS/-EPERM/-EOPNOTSUPP (io_uring forced but unusable: no futex
 *   opcode, disabled by kernel.io_uring_disabled or seccomp), -ENOMEM,
 *   -EMFILE, -EAGAIN.
 */
FERRY_API int ferry_loop_create(ferry_loop **out, const struct ferry_loop_opts *opts);

/**
 * Cancel every source (no callback runs for them),
 * run callbacks still queued by ferry_loop_post with res -ECANCELED (so their
 * args can be freed), stop the helper threads and release everything. Not
 * from a callback nor while the loop runs (then it fails with a message and
 * leaks rather than free what is in use). NULL ok.
 */
FERRY_API void ferry_loop_destroy(ferry_loop *loop);

/** "uring" or "epoll" (static string); "" for NULL. */
FERRY_API const char *ferry_loop_backend(const ferry_loop *loop);

/**
 * Run callbacks as sources become ready, per @p mode.
 * Unreferenced sources (ferry_loop_ref) do not keep FERRY_RUN_DEFAULT going.
 * @return the number of referenced sources left plus posts queued (>= 0;
 *   0 means nothing keeps the loop alive), or -EINVAL (NULL loop, bad mode),
 *   -EBUSY (already running: another thread, or called from a callback), or
 *   a negative errno from the kernel wait that the loop cannot go on from.
 */
FERRY_API int ferry_loop_run(ferry_loop *loop, int mode);

/**
 * Make the running (or the next) ferry_loop_run return
 * after its current callback; wakes a blocked run. Any thread. A stop while
 * no run is in progress makes the next run return after one pass that does
 * not block. @return 0, -EINVAL.
 */
FERRY_API int ferry_loop_stop(ferry_loop *loop);

/**
 * Run @p cb(loop, 0, 0, @p arg) on the loop's thread, soon.
 * Any thread. Posts from one thread run in post order. A post keeps the loop
 * alive until it ran. If the loop is destroyed first, @p cb runs during
 * ferry_loop_destroy with res -ECANCELED: @p cb always runs exactly once.
 * @return 0, -EINVAL (NULL loop/cb), -ENOMEM.
 */
FERRY_API int ferry_loop_post(ferry_loop *loop, ferry_loop_fn cb, void *arg);

/**
 * Call @p cb after @p after_ns (from now), then every
 * @p repeat_ns if @p repeat_ns > 0 (until cancelled). Timers due at once fire
 * in deadline order, ties in creation order; a timer never fires early. A
 * repeating timer that fell behind skips the missed periods.
 * @param id where to store the source id (may be NULL for a one-shot).
 * @return 0, -EINVAL (NULL loop/cb, negative after_ns or repeat_ns), -ENOMEM.
 */
FERRY_API int ferry_loop_timer(ferry_loop *loop, int64_t after_ns, int64_t repeat_ns,
			       ferry_loop_fn cb, void *arg, uint64_t *id);

/**
 * Call @p cb(loop, id, revents, arg) whenever @p fd is ready for
 * @p events (FERRY_LOOP_READABLE | FERRY_LOOP_WRITABLE), level-triggered: once
 * per iteration while it stays ready. revents may also hold FERRY_LOOP_HUP
 * and FERRY_LOOP_ERROR; a callback seeing HUP usually cancels. One source
 * per fd per loop. Cancel before closing @p fd (the fd stays the caller's).
 * If the kernel reports the fd unusable (say it was closed), @p cb gets a
 * negative errno and the source ends.
 * @return 0, -EINVAL (NULL loop/cb, fd < 0, no or unknown event bits),
 *   -EEXIST (the loop already watches @p fd), -EPERM (epoll: a regular file),
 *   -EBADF, -ENOMEM.
 */
FERRY_API int ferry_loop_fd(ferry_loop *loop, int fd, unsigned events, ferry_loop_fn cb,
			    void *arg, uint64_t *id);

/** Change what fd source @p id waits for (nonzero @p events).
 * @return 0, -EINVAL, -ENOENT (no such source, or not an fd source), or
 * the kernel's refusal (-EBADF...), after which the source is cancelled. */
FERRY_API int ferry_loop_fd_update(ferry_loop *loop, uint64_t id, unsigned events);

/**
 * Atomics.waitAsync: if *@p word == @p expected, wait for a
 * ferry_notify on @p word (from any thread or process) or @p timeout_ns
 * (FERRY_FOREVER: no limit; 0: do not wait), then call @p cb once with:
 *   0 ("ok": notified, or the word changed after this call, see below),
 *   -EAGAIN ("not-equal": *@p word != @p expected at this call),
 *   -ETIMEDOUT ("timed-out"; also at once for @p timeout_ns 0 if equal),
 *   or another negative errno if the kernel refused the wait (-EFAULT).
 * The callback always runs from the loop, never inside this call. The word
 * is waited on as a shared futex: notify it with ferry_notify (or
 * ferry_ec_notify), not ferry_notify_private. @p word must stay mapped until
 * the callback ran or the wait was cancelled.
 * Not-equal is decided here, synchronously, as Atomics.waitAsync does. If
 * the word changes between this call and the moment the kernel queues the
 * waiter, the callback gets 0, like a notify (re-check your condition after
 * any wake-up, as with ferry_wait). io_uring queues the waiter before this
 * call returns, so a notify after it is never missed. epoll: a helper thread
 * queues it shortly after; a store followed by a notify, the usual pattern,
 * is never missed, but a notify that leaves the word unchanged and lands in
 * that window (microseconds) may be, and the wait then ends by its timeout
 * or a later notify. Each pending wait holds one helper thread there.
 * @return 0, -EINVAL (NULL loop/word/cb, @p word not 4-byte aligned), -ENOMEM,
 *   -EAGAIN (epoll: no helper thread could be started), -ENOSYS/-EPERM
 *   (epoll: the kernel lacks or forbids futex_waitv, Linux < 5.16), -EBUSY
 *   (io_uring submission failed).
 */
FERRY_API int ferry_wait_async(ferry_loop *loop, uint32_t *word, uint32_t expected,
			       int64_t timeout_ns, ferry_loop_fn cb, void *arg, uint64_t *id);

/**
 * Watch a condition guarded by eventcount @p ec (a
 * port's "ring not empty"): whenever @p ready(@p arg) is nonzero the loop calls
 * @p cb(loop, id, 0, @p arg), at most once per iteration (see Fairness), until
 * cancelled. When @p ready is false the loop announces a sleep on @p ec
 * (ferry_ec_prepare), re-checks @p ready, and waits asynchronously on the
 * eventcount's futex word; the producer makes the condition true and calls
 * ferry_ec_notify, which costs it a syscall only while the loop sleeps.
 * No wake-up is lost. @p ready may be called spuriously; it must not call loop
 * functions. @p cb should consume a bounded batch; if @p ready stays true it is
 * called again next iteration. @p ec must stay mapped until cancelled.
 * @p cb gets a negative errno (and the watch ends) if the kernel refuses the
 * wait on @p ec. epoll: one helper thread sleeps for up to 127 watches.
 * @return 0, -EINVAL (NULL loop/ec/ready/cb, misaligned ec), -ENOMEM.
 *   (epoll without futex_waitv: the first arm fails, @p cb gets -ENOSYS/-EPERM.)
 */
FERRY_API int ferry_loop_watch_ec(ferry_loop *loop, struct ferry_ec *ec, ferry_loop_ready_fn ready,
				  ferry_loop_fn cb, void *arg, uint64_t *id);

/* ---- ports in a loop ---- */

struct ferry_port;
struct ferry_msg;

/**
 * A port's messages as loop callbacks: @p msg is the callee's (ferry_msg_free)
 * with @p err 0; a message that failed to decode comes as @p msg NULL with its
 * error (-EBADMSG: messageerror), and the last call has @p err -EPIPE (the
 * peer closed or died; everything it posted was delivered first), after
 * which the watch has stopped.
 */
typedef void (*ferry_loop_port_fn)(ferry_loop *loop, struct ferry_port *port,
				   struct ferry_msg *msg, int err, void *arg);

/** A port watch; the caller's memory, zeroed before its first start, valid
 * until stopped (like a libuv handle). Fields are private. */
struct ferry_loop_port_watch {
	struct ferry_port *port; /**< private: the watched port */
	ferry_loop_port_fn cb;   /**< private: the callback */
	void *arg;               /**< private: its argument */
	uint64_t ec_id, /**< private: the eventcount source */
		fd_id;  /**< private: the fd source */
	int active;              /**< private: nonzero while started */
};

/**
 * Deliver @p port's messages to @p cb on @p loop. Messages
 * are waited for on the port's eventcount (io_uring FUTEX_WAIT, or the epoll
 * backend's helper), and the peer's death on the port's control socket: a
 * sender to a busy loop makes no syscall. At most FERRY_LOOP_BATCH messages
 * per loop iteration, so a flood cannot starve other sources. Do not receive
 * from @p port elsewhere while it is watched.
 * @return 0, -EINVAL (NULL argument, already active), FERRY_EDETACHED,
 *   -ENOMEM.
 */
FERRY_API int ferry_loop_port_start(ferry_loop *loop, struct ferry_loop_port_watch *w,
				    struct ferry_port *port, ferry_loop_port_fn cb, void *arg);

/** Stop watching; safe from any callback, the
 * watch's own included. Idempotent. @return 0 or -EINVAL. */
FERRY_API int ferry_loop_port_stop(ferry_loop *loop, struct ferry_loop_port_watch *w);

/* ---- workers in a loop ---- */

struct ferry_worker;
struct ferry_worker_event;

/**
 * A worker's events as loop callbacks (ferry/worker.h): @p ev is valid during
 * the call only, but a MESSAGE's ev->msg is the callee's (ferry_msg_free).
 * EXIT is the last call: the watch has stopped before it is made, so the
 * callback may destroy the worker. An EXIT whose status could not be learnt
 * (the fork server that started the worker died first) has ev->err set to
 * FERRY_EWORKER and ev->text saying why.
 */
typedef void (*ferry_loop_worker_fn)(ferry_loop *loop, struct ferry_worker *worker,
				     struct ferry_worker_event *ev, void *arg);

/** A worker watch; the caller's memory, valid until stopped. Fields are private. */
struct ferry_loop_worker_watch {
	struct ferry_worker *worker; /**< private: the watched worker */
	ferry_loop_worker_fn cb;     /**< private: the callback */
	void *arg;                   /**< private: its argument */
	uint64_t msg_id, /**< private: the message source */
		exit_id, /**< private: the exit source */
		retry_id; /**< private: the retry timer */
	int64_t retry_ns;            /**< private: retry period */
	int state;                   /**< private: delivery state */
	int active;                  /**< private: nonzero while started */
};

/**
 * ferry_loop_worker_start - deliver @p worker's events (ONLINE, MESSAGE,
 * MESSAGEERROR, ERROR, EXIT) to @p cb on @p loop, in the order and with the
 * guarantees of ferry_worker_next: ONLINE first, messages and errors as the
 * worker produced them, EXIT after every message it fully posted. Messages
 * come through an eventcount watch on the worker's port (a worker posting to
 * a busy loop makes no syscall), at most FERRY_LOOP_BATCH events per loop
 * iteration. The exit is seen exactly: a process worker's pidfd (the fork
 * server's workers too, whose status then comes from the server), a thread
 * worker's exit word (an eventcount notified by the ending thread); no
 * polling. Works on both loop backends and both worker backends.
 *
 * While watched, receive nothing from the worker's port elsewhere (nor
 * ferry_worker_next), and call ferry_worker_join, _terminate and _destroy on
 * the loop's thread; stop the watch before ferry_worker_destroy unless EXIT
 * was delivered. ferry_worker_terminate from a callback is fine: its EXIT
 * follows. After EXIT, ferry_worker_next and _join give the same status.
 *
 * @param loop    the loop (its thread)
 * @param ww      the watch, caller's memory, zeroed or stopped
 * @param worker  the worker, from ferry_worker_spawn
 * @param cb      called once per event
 * @param arg     passed to @p cb
 * @return 0, -EINVAL (NULL argument, @p ww already active), FERRY_EDETACHED
 *   (the worker's port was transferred away), -ENOMEM, or a loop source's
 *   error. If the kernel later refuses a wait (an epoll loop without
 *   futex_waitv: -ENOSYS), @p cb gets an ERROR event with that code and the
 *   watch stops.
 */
FERRY_API int ferry_loop_worker_start(ferry_loop *loop, struct ferry_loop_worker_watch *ww,
				      struct ferry_worker *worker, ferry_loop_worker_fn cb,
				      void *arg);

/**
 * ferry_loop_worker_stop - stop delivering @p ww's events (the ones not yet
 * delivered stay for ferry_worker_next or a new watch). Safe from any
 * callback, the watch's own included. Idempotent.
 * @return 0, or -EINVAL (NULL argument).
 */
FERRY_API int ferry_loop_worker_stop(ferry_loop *loop, struct ferry_loop_worker_watch *ww);

/**
 * End source @p id now; its callback will not run again.
 * Safe from any callback, including the source's own, and while a kernel
 * operation for it is still in flight (its late completion is dropped).
 * A notify that races the cancel of a wait may still be counted by
 * ferry_notify as waking it (there is no Atomics equivalent to compare).
 * @return 0, -EINVAL (NULL loop), -ENOENT (ended already, or never existed).
 */
FERRY_API int ferry_loop_cancel(ferry_loop *loop, uint64_t id);

/**
 * @p ref nonzero (the default for every source): source @p id
 * keeps FERRY_RUN_DEFAULT running; 0: it does not (it still fires while the
 * loop runs for other reasons), like Node's unref(). @return 0, -EINVAL,
 * -ENOENT.
 */
FERRY_API int ferry_loop_ref(ferry_loop *loop, uint64_t id, int ref);

/** What ferry_loop_run would return now: referenced
 * sources plus queued posts (>= 0), or -EINVAL. Loop thread. */
FERRY_API int ferry_loop_alive(const ferry_loop *loop);

#ifdef __cplusplus
}
#endif
#endif /* FERRY_LOOP_H */
