/* tests/util/util.h - helpers shared by the Criterion suites. */
#ifndef FERRY_TEST_UTIL_H
#define FERRY_TEST_UTIL_H

#include <stddef.h>
#include <stdint.h>
#include <sys/types.h>

/* Open fds of this process (entries of /proc/self/fd, the directory's own excluded). */
int tu_count_fds(void);

/* memfd mappings of this process (lines of /proc/self/maps naming a memfd):
 * every ferry segment is one, so this counts leaked segments exactly. */
int tu_count_maps(void);

/* Resource baseline: take one at the start, check it at the end. */
struct tu_baseline {
	int fds;
	int maps;
};
void tu_baseline_take(struct tu_baseline *b);
/* Criterion-asserts that fds and maps are back where @b says. */
void tu_baseline_check(const struct tu_baseline *b);

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

/* A shared anonymous mapping (survives fork), @size bytes, zeroed. */
void *tu_shared_alloc(size_t size);
void tu_shared_free(void *p, size_t size);

#endif
