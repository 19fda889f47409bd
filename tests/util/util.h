/* tests/util/util.h - helpers shared by the Criterion suites. */
#ifndef FERRY_TEST_UTIL_H
#define FERRY_TEST_UTIL_H

#include <stddef.h>
#include <stdint.h>
#include <sys/types.h>

/* CLOCK_MONOTONIC in ns. */
int64_t tu_now_ns(void);

/* Sleep @ms milliseconds (restarted after a signal). */
void tu_sleep_ms(int ms);

/*
 * Is thread or process @id asleep in a futex? State S, and the kernel's wait
 * channel names a futex function when the kernel tells (it does here:
 * "futex_do_wait"); with no wchan, S alone.
 */
int tu_asleep_in_futex(pid_t id);

/* Open fds of this process (entries of /proc/self/fd, the directory's own excluded). */
int tu_count_fds(void);

/* memfd mappings of this process (lines of /proc/self/maps naming a memfd):
 * every ferry segment is one, so this counts leaked segments exactly. */
int tu_count_maps(void);

/*
 * Live threads of this process: entries of /proc/self/task, less the ones
 * already in the kernel's exit path (and io_uring's own workers). A raw
 * count sees a joined thread for a while: pthread_join returns when the
 * kernel clears the thread's tid, in exit_mm(), yet the task stays listed
 * until release_task() (exit_files(), exit_task_work()... run in between,
 * and a preempted thread can sit there for milliseconds). The kernel sets
 * PF_EXITING before anything else in do_exit(), so a task that has it can
 * never run user code again: it is no leak, and a thread that is still
 * running (a helper nobody joined) is always counted. Exact, no waiting.
 * Returns -1 when /proc is unreadable.
 */
int tu_count_threads(void);

/* The names (comm) of the live threads, for a failure message; a static
 * buffer, overwritten by the next call. */
const char *tu_thread_names(void);

/* Resource baseline: take one at the start, check it at the end. */
struct tu_baseline {
	int fds;
	int maps;
};
void tu_baseline_take(struct tu_baseline *b);
/* Criterion-asserts that fds and maps are back where @b says. */
void tu_baseline_check(const struct tu_baseline *b);
/*
 * tu_baseline_settle - wait up to @timeout_ms for the fds and memfd maps to
 * come back to @b, for what a thread that ends by itself releases (a thread
 * worker destroyed while running is detached, and frees its half of the
 * channel when it ends). Nothing is asserted: tu_baseline_check does that.
 */
void tu_baseline_settle(const struct tu_baseline *b, int timeout_ms);

/*
 * tu_fork - fork a child that runs @fn(@arg) and leaves with _exit(its return
 * value), never returning into Criterion. Returns the child's pid (> 0).
 */
pid_t tu_fork(int (*fn)(void *), void *arg);

/*
 * tu_wait - wait up to @timeout_ms for @pid; returns its raw wait status, or
 * -1 on timeout (the child is then killed and reaped).
 */
int tu_wait(pid_t pid, int timeout_ms);

/* Worker entries for the resource-limit tests; each posts one int to its
 * parent and returns 0. */
struct ferry_worker_ctx;
/* How many more fds dup(0) opens (up to 1000): the worker's RLIMIT_NOFILE. */
int tu_entry_count_open_files(struct ferry_worker_ctx *ctx);
/* Whether a 1 GiB malloc succeeds: the worker's RLIMIT_AS. */
int tu_entry_try_big_malloc(struct ferry_worker_ctx *ctx);

/* Post port @q alone (as the value, in the transfer list) on @via. */
struct ferry_port;
int tu_post_port(struct ferry_port *via, struct ferry_port *q, int64_t timeout_ns);

/* A shared anonymous mapping (survives fork), @size bytes, zeroed. */
void *tu_shared_alloc(size_t size);
void tu_shared_free(void *p, size_t size);

#endif
