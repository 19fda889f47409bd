#include "util/util.h"

#include <ferry/runtime.h>

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

int tu_count_fds(void)
{
	DIR *d = opendir("/proc/self/fd");
	if (!d)
		return -1;
	int n = 0;
	struct dirent *e;
	while ((e = readdir(d)))
		if (e->d_name[0] != '.')
			n++;
	closedir(d);
	return n - 1; /* the DIR's own fd */
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
