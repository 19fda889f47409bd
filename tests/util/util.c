#include "util/util.h"

#include <ferry/port.h>
#include <ferry/value.h>
#include <ferry/runtime.h>
#include <ferry/worker.h>

#include <criterion/criterion.h>
#include <dirent.h>
#include <errno.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

int64_t tu_now_ns(void)
{
	struct timespec ts;
	clock_gettime(CLOCK_MONOTONIC, &ts);
	return (int64_t)ts.tv_sec * 1000000000 + ts.tv_nsec;
}

void tu_sleep_ms(int ms)
{
	struct timespec ts = { ms / 1000, (long)(ms % 1000) * 1000000 };
	while (nanosleep(&ts, &ts) != 0 && errno == EINTR)
		;
}

int tu_asleep_in_futex(pid_t id)
{
	char path[64], buf[512];
	snprintf(path, sizeof path, "/proc/%d/stat", (int)id);
	FILE *f = fopen(path, "r");
	if (!f)
		return 0;
	size_t n = fread(buf, 1, sizeof buf - 1, f);
	fclose(f);
	buf[n] = '\0';
	char *p = strrchr(buf, ')');
	if (!p || p[1] != ' ' || p[2] != 'S')
		return 0;
	snprintf(path, sizeof path, "/proc/%d/wchan", (int)id);
	f = fopen(path, "r");
	if (!f)
		return 1;
	n = fread(buf, 1, sizeof buf - 1, f);
	fclose(f);
	buf[n] = '\0';
	if (n == 0 || strcmp(buf, "0") == 0)
		return 1;
	return strstr(buf, "futex") != NULL;
}

/* Entries of directory @path (not "." nor ".."), those @keep says 1 for
 * when it is given; -1 when @path cannot be read. */
static int count_entries(const char *path, int (*keep)(const char *name))
{
	DIR *d = opendir(path);
	if (!d)
		return -1;
	int n = 0;
	struct dirent *e;
	while ((e = readdir(d)))
		if (e->d_name[0] != '.')
			n += keep ? keep(e->d_name) : 1;
	closedir(d);
	return n;
}

int tu_count_fds(void)
{
	int n = count_entries("/proc/self/fd", NULL);
	return n < 0 ? n : n - 1; /* the DIR's own fd */
}

int tu_count_maps(void)
{
	FILE *f = fopen("/proc/self/maps", "r");
	if (!f)
		return -1;
	int n = 0;
	char line[4096];
	while (fgets(line, sizeof line, f))
		if (strstr(line, "/memfd:"))
			n++;
	fclose(f);
	return n;
}

/* Task flags of include/linux/sched.h (field 9 of /proc/<tid>/stat). */
#define TU_PF_EXITING 0x4    /* in do_exit(): set before anything else there */
#define TU_PF_IO_WORKER 0x10 /* io_uring's own worker (iou-wrk, iou-sqp), Linux 5.12 */

/* Is task @tid of this process a live thread of the program: not yet in
 * do_exit(), and not one of io_uring's workers (the kernel starts those
 * for a ring's punted requests and ends them when it likes; no join of
 * ours could wait for them)? 0 for a task that is exiting, gone (also when
 * it goes between the open and the read of its stat) or an io_uring
 * worker; 1 when its stat cannot be parsed (a leak check must not lose a
 * thread to a parse error). */
static int task_live(const char *tid)
{
	char path[64], buf[1024];
	snprintf(path, sizeof path, "/proc/self/task/%.20s/stat", tid);
	FILE *f = fopen(path, "re");
	if (!f)
		return 0; /* released between readdir and here */
	size_t n = fread(buf, 1, sizeof buf - 1, f);
	fclose(f);
	if (n == 0)
		return 0; /* released between open and read (-ESRCH) */
	buf[n] = 0;
	/* "tid (comm) state ppid pgrp session tty_nr tpgid flags ...": the comm
	 * may hold anything, so fields are counted from its closing ')'. */
	const char *p = strrchr(buf, ')');
	if (!p)
		return 1;
	int field = 2;
	for (p++; *p && field < 9; p++)
		if (*p == ' ')
			field++;
	char *end;
	unsigned long flags = strtoul(p, &end, 10);
	if (end == p)
		return 1;
	return !(flags & (TU_PF_EXITING | TU_PF_IO_WORKER));
}

int tu_count_threads(void)
{
	return count_entries("/proc/self/task", task_live);
}

const char *tu_thread_names(void)
{
	static char out[1024];
	size_t len = 0;
	out[0] = 0;
	DIR *d = opendir("/proc/self/task");
	if (!d)
		return out;
	struct dirent *e;
	while ((e = readdir(d))) {
		if (e->d_name[0] == '.' || !task_live(e->d_name))
			continue;
		char path[64], comm[32] = "?";
		snprintf(path, sizeof path, "/proc/self/task/%.20s/comm", e->d_name);
		FILE *f = fopen(path, "re");
		if (f) {
			if (fgets(comm, sizeof comm, f))
				comm[strcspn(comm, "\n")] = 0;
			fclose(f);
		}
		int w = snprintf(out + len, sizeof out - len, "%s%s", len ? " " : "", comm);
		if (w < 0 || (size_t)w >= sizeof out - len)
			break;
		len += (size_t)w;
	}
	closedir(d);
	return out;
}

void tu_baseline_take(struct tu_baseline *b)
{
	b->fds = tu_count_fds();
	b->maps = tu_count_maps();
}

void tu_baseline_check(const struct tu_baseline *b)
{
	ferry_trim(); /* the recycled thread-worker channels are no leak */
	int fds = tu_count_fds(), maps = tu_count_maps();
	cr_expect_eq(fds, b->fds, "fd leak: %d open now, %d at the start", fds, b->fds);
	cr_expect_eq(maps, b->maps, "memfd mapping leak: %d now, %d at the start", maps, b->maps);
}

void tu_baseline_settle(const struct tu_baseline *b, int timeout_ms)
{
	struct timespec ts = { 0, 1000000 };
	for (int i = 0; i < timeout_ms; i++) {
		ferry_trim();
		if (tu_count_fds() == b->fds && tu_count_maps() == b->maps)
			return;
		nanosleep(&ts, NULL);
	}
}

pid_t tu_fork(int (*fn)(void *), void *arg)
{
	fflush(NULL);
	pid_t pid = fork();
	if (pid == 0)
		_exit(fn(arg));
	cr_assert_gt(pid, 0, "fork failed: %s", strerror(errno));
	return pid;
}

int tu_wait(pid_t pid, int timeout_ms)
{
	struct timespec ts = { 0, 1000000 };
	for (int i = 0; i < timeout_ms; i++) {
		int st;
		pid_t r = waitpid(pid, &st, WNOHANG);
		if (r == pid)
			return st;
		nanosleep(&ts, NULL);
	}
	kill(pid, SIGKILL);
	waitpid(pid, NULL, 0);
	return -1;
}

int tu_entry_count_open_files(ferry_worker_ctx *ctx)
{
	int n = 0;
	while (n < 1000 && dup(0) >= 0)
		n++;
	ferry_port_post_bytes(ferry_worker_ctx_port(ctx), &n, sizeof n, FERRY_FOREVER);
	return 0;
}

int tu_entry_try_big_malloc(ferry_worker_ctx *ctx)
{
	void *big = malloc((size_t)1 << 30);
	int got_big = big != NULL;
	free(big);
	ferry_port_post_bytes(ferry_worker_ctx_port(ctx), &got_big, sizeof got_big, FERRY_FOREVER);
	return 0;
}

int tu_post_port(ferry_port *via, ferry_port *q, int64_t timeout_ns)
{
	ferry_value *v = ferry_value_handle(FERRY_VALUE_PORT, q);
	if (!v)
		return -ENOMEM;
	struct ferry_xfer x = { .ports = &q, .nports = 1 };
	int rc = ferry_port_post(via, v, &x, timeout_ns);
	ferry_value_free(v);
	return rc;
}

void *tu_shared_alloc(size_t size)
{
	void *p = mmap(NULL, size, PROT_READ | PROT_WRITE, MAP_SHARED | MAP_ANONYMOUS, -1, 0);
	cr_assert_neq(p, MAP_FAILED, "mmap: %s", strerror(errno));
	return p;
}

void tu_shared_free(void *p, size_t size)
{
	munmap(p, size);
}
