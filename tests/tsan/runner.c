/* crit-lite runner: see criterion/criterion.h. Used by the TSan build, and by
 * the ASan build so that a leaking test fails. */
#include "criterion/criterion.h"

#include <errno.h>
#include <signal.h>
#include <stdarg.h>
#include <stdint.h>
#include <stdlib.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#if defined(__SANITIZE_ADDRESS__)
#include <sanitizer/lsan_interface.h>
#define LEAK_CHECK() __lsan_do_recoverable_leak_check()
#else
#define LEAK_CHECK() 0
#endif

#define MAX_TESTS 1024
#define MAX_SUITES 128
#define SKIP_CODE 77
#define DEFAULT_TIMEOUT 600.0

struct test {
	const char *suite, *name;
	void (*fn)(void);
	const struct cl_opts *o;
};
struct suite {
	const char *name;
	const struct cl_opts *o;
};

static struct test tests[MAX_TESTS];
static struct suite suites[MAX_SUITES];
static int ntests, nsuites, failures;
static const struct cl_opts none;
static const struct cl_opts *cur_suite, *cur_test;

void cl_register_suite(const char *suite, const struct cl_opts *o)
{
	if (nsuites < MAX_SUITES)
		suites[nsuites++] = (struct suite){ suite, o };
}

void cl_register_test(const char *suite, const char *name, void (*fn)(void),
		      const struct cl_opts *o)
{
	if (ntests < MAX_TESTS)
		tests[ntests++] = (struct test){ suite, name, fn, o };
}

static void end_test(int code)
{
	if (cur_test->fini)
		cur_test->fini();
	if (cur_suite->fini)
		cur_suite->fini();
	/* Under ASan, a test that leaks fails (LeakSanitizer's own exit-time
	 * check never runs: the child leaves with _exit). */
	if (LEAK_CHECK()) {
		fprintf(stderr, "[----] LeakSanitizer: the test leaked memory (report above)\n");
		failures++;
	}
	fflush(NULL);
	_exit(code ? code : failures ? 1 : 0);
}

void cl_check(int ok, int fatal, const char *expr, const char *file, int line, const char *fmt, ...)
{
	if (ok)
		return;
	failures++;
	fprintf(stderr, "[----] %s:%d: Assertion Failed\n[----]   ", file, line);
	if (fmt && *fmt) {
		va_list ap;
		va_start(ap, fmt);
		vfprintf(stderr, fmt, ap);
		va_end(ap);
	} else {
		fprintf(stderr, "The expression %s is false.", expr);
	}
	fputc('\n', stderr);
	if (fatal)
		end_test(1);
}

void cl_skip(const char *fmt, ...)
{
	fprintf(stderr, "[SKIP] ");
	va_list ap;
	va_start(ap, fmt);
	vfprintf(stderr, fmt, ap);
	va_end(ap);
	fputc('\n', stderr);
	fflush(NULL);
	_exit(SKIP_CODE);
}

void cl_log(const char *fmt, ...)
{
	va_list ap;
	va_start(ap, fmt);
	fprintf(stderr, "[----] ");
	vfprintf(stderr, fmt, ap);
	fputc('\n', stderr);
	va_end(ap);
}

static const struct cl_opts *suite_opts(const char *name)
{
	for (int i = 0; i < nsuites; i++)
		if (strcmp(suites[i].name, name) == 0)
			return suites[i].o;
	return &none;
}

static double now_s(void)
{
	struct timespec ts;
	clock_gettime(CLOCK_MONOTONIC, &ts);
	return (double)ts.tv_sec + ts.tv_nsec / 1e9;
}

int main(int argc, char **argv)
{
	const char *filter = NULL;
	for (int i = 1; i < argc; i++)
		if (strncmp(argv[i], "--filter=", 9) == 0)
			filter = argv[i] + 9;
	int passed = 0, failed = 0, crashed = 0, skipped = 0;
	for (int i = 0; i < ntests; i++) {
		struct test *t = &tests[i];
		const struct cl_opts *so = suite_opts(t->suite);
		if (t->o->disabled || so->disabled)
			continue;
		if (filter && !strstr(t->name, filter) && !strstr(t->suite, filter))
			continue;
		double timeout = t->o->timeout > 0 ? t->o->timeout
			       : so->timeout > 0 ? so->timeout : DEFAULT_TIMEOUT;
		fflush(NULL);
		double t0 = now_s();
		pid_t pid = fork();
		if (pid < 0) {
			perror("fork");
			return 2;
		}
		if (pid == 0) {
			setpgid(0, 0);
			cur_suite = so;
			cur_test = t->o;
			if (so->init)
				so->init();
			if (t->o->init)
				t->o->init();
			t->fn();
			end_test(0);
		}
		int st = 0, done = 0;
		while (!done) {
			pid_t r = waitpid(pid, &st, WNOHANG);
			if (r == pid)
				break;
			if (now_s() - t0 > timeout) {
				kill(-pid, SIGKILL);
				kill(pid, SIGKILL);
				waitpid(pid, &st, 0);
				fprintf(stderr, "[FAIL] %s::%s: timed out after %.0f s\n", t->suite, t->name, timeout);
				failed++;
				done = 1;
				break;
			}
			usleep(2000);
		}
		if (done)
			continue;
		/* Reap grandchildren a test left behind in its group. */
		kill(-pid, SIGKILL);
		double dt = now_s() - t0;
		int want_sig = t->o->signal, want_code = t->o->exit_code;
		if (WIFSIGNALED(st) && WTERMSIG(st) != want_sig) {
			fprintf(stderr, "[FAIL] %s::%s: CRASH (signal %d) (%.2fs)\n", t->suite, t->name,
				WTERMSIG(st), dt);
			crashed++;
		} else if (WIFEXITED(st) && WEXITSTATUS(st) == SKIP_CODE) {
			skipped++;
		} else if ((WIFEXITED(st) && WEXITSTATUS(st) == want_code && !want_sig) ||
			   (WIFSIGNALED(st) && WTERMSIG(st) == want_sig)) {
			fprintf(stderr, "[PASS] %s::%s: (%.2fs)\n", t->suite, t->name, dt);
			passed++;
		} else {
			fprintf(stderr, "[FAIL] %s::%s: (%.2fs)\n", t->suite, t->name, dt);
			failed++;
		}
	}
	fprintf(stderr, "[====] Synthesis: Tested: %d | Passing: %d | Failing: %d | Crashing: %d\n",
		passed + failed + crashed, passed, failed, crashed);
	printf("%d passed, %d failed, %d skipped\n", passed, failed + crashed, skipped);
	return failed + crashed ? 1 : 0;
}
