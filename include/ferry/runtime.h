/**
 * @file
 * @brief Process-wide set-up: the fork server.
 *
 * Forking a multithreaded process is unsafe: a lock another thread held at
 * that instant (malloc's, stdio's, the program's own) stays held forever in
 * the child. A fork server is a small process forked while the program is
 * still single-threaded; process workers are then forked by it, not by the
 * caller, so they never see another thread's lock. It also keeps process
 * worker start cheap however large the caller grows (fork costs grow with
 * the parent's memory: 18 ms from a 1 GiB parent on the reference machine,
 * near 0.1 ms from the server).
 *
 * @code
 *     int main(void) {
 *         struct ferry_init_opts io = { .fork_server = 1 };
 *         if (ferry_init(&io))            // first thing, before any thread
 *             fprintf(stderr, "%s\n", ferry_errmsg());
 *         ... start threads, spawn process workers ...
 *         ferry_fini();
 *     }
 * @endcode
 *
 * What a worker started by the server gets (see ferry_worker_opts.spawn):
 * - the program as it was at ferry_init time: globals hold their values of
 *   then, and its entry function must already have existed then (in the
 *   executable or a library loaded before; not in one dlopen'ed later);
 * - no opts.arg (a pointer into the caller's current memory would dangle);
 * - only its own fds: 0, 1 and 2 as they were at ferry_init, and its port's
 *   two (channel segment and control socket); nothing else the caller had
 *   open, before or after ferry_init;
 * - the signal mask and dispositions the caller had at ferry_init.
 * It is the server's child, not the caller's: the caller sees its exit
 * through a pidfd and learns its status from the server. If the server
 * dies, spawns through it fail with -ECHILD and a message saying so, and
 * joining a worker it started reports FERRY_EWORKER once the worker has
 * ended (its status is lost) instead of waiting forever.
 *
 * The server exits when the caller exits or calls ferry_fini (its request
 * socket reaches end of file) and when the thread that called ferry_init
 * ends (PR_SET_PDEATHSIG): call ferry_init from the main thread.
 */
#ifndef FERRY_RUNTIME_H
#define FERRY_RUNTIME_H

#include "ferry/common.h"

#include <sys/types.h>

#ifdef __cplusplus
extern "C" {
#endif

/** Options of ferry_init. Zero fields mean defaults. */
struct ferry_init_opts {
	int fork_server; /**< 1: start the fork server (default 0: none) */
};

/**
 * Process-wide set-up.
 *
 * @param opts NULL or zeroed: nothing to start, returns 0. With .fork_server,
 *   starts the fork server; it must be called while the process has a single
 *   thread (first thing in main), and returns 0 at once when a server already
 *   runs.
 * @par Threads
 *   not concurrently with ferry_fini or spawns.
 * @return 0, -EBUSY (the process already has other threads: the message
 *   says how many), -ENOSYS (no pidfd support: Linux < 5.3), -ENOENT (/proc
 *   not mounted: the thread count cannot be checked), -EAGAIN, -ENOMEM,
 *   -EMFILE, -ECHILD (the server did not come up).
 */
FERRY_API int ferry_init(const struct ferry_init_opts *opts);

/**
 * Stop the fork server (idempotent; nothing to do without one).
 *
 * Workers it started keep running and keep their handles; joining one
 * afterwards reports FERRY_EWORKER once it has ended, as its status is no
 * longer reported by anyone. Join them before ferry_fini to get their status.
 * @par Threads
 *   call it once no spawn is in progress.
 */
FERRY_API void ferry_fini(void);

/** The fork server's pid, or 0 when none was started in this process (it may
 * have died: spawns then say so). */
FERRY_API pid_t ferry_fork_server_pid(void);

/**
 * ferry_trim - release what ferry keeps for reuse: the channel segments of
 * thread workers that were joined and destroyed (at most 4, each 136 KiB of
 * shared memory and one fd), which make the next thread worker start
 * without creating and mapping a new one. ferry_fini does it too. Call it
 * before counting the process's fds or mappings. Any thread.
 */
FERRY_API void ferry_trim(void);

#ifdef __cplusplus
}
#endif
#endif /* FERRY_RUNTIME_H */
