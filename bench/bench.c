/* The shared machinery of ferry-bench: registry, clock, samples, statistics,
 * pinning and peers. See bench.h for the contract. */
#include "bench.h"
#include "ferry/common.h"
#include "ferry/runtime.h"

#include <pthread.h>
#include <signal.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/wait.h>
#include <unistd.h>

/* ---- registry ---- */

const struct bench_scenario *bench__table[BENCH_MAX_SCENARIOS];
size_t bench__count;
size_t bench__dropped;

void bench_register(const struct bench_scenario *s)
{
	/* Runs from constructors: no allocation, nothing that needs main() first. */
	if (!s)
		return;
	if (bench__count < BENCH_MAX_SCENARIOS)
		bench__table[bench__count++] = s;
	else
		bench__dropped++;
}

/* ---- run sizes ---- */

/* Totals over all passes, chosen so that a default run keeps >= 10^5
 * samples of every round trip (p99.9 then rests on 100 samples) and stays
 * within a few minutes, and a --quick run of every row stays under a minute
 * on a 2-CPU machine even when wakes cost 50 us (its p99.9 rests on a few
 * samples only: quick figures are for a first look). Warm-ups are per pass. */
static const size_t counts[3][2] = {
	/* default, quick */
	[BENCH_CHEAP] = { 1000000, 30000 },
	[BENCH_WAKE] = { 100000, 3000 },
	[BENCH_START] = { 2000, 100 },
};
static const size_t warmups[3][2] = {
	[BENCH_CHEAP] = { 100000, 5000 },
	[BENCH_WAKE] = { 2000, 200 },
	[BENCH_START] = { 50, 10 },
};

size_t bench_count(const struct bench_ctx *ctx, enum bench_cost cost)
{
	if ((unsigned)cost > BENCH_START)
		cost = BENCH_WAKE;
	size_t passes = ctx->passes > 0 ? (size_t)ctx->passes : 1;
	return (counts[cost][ctx->quick ? 1 : 0] + passes - 1) / passes;
}

size_t bench_warmup_count(const struct bench_ctx *ctx, enum bench_cost cost)
{
	if ((unsigned)cost > BENCH_START)
		cost = BENCH_WAKE;
	return warmups[cost][ctx->quick ? 1 : 0];
}

__attribute__((format(printf, 4, 0))) static int vfail(struct bench_ctx *ctx, int err,
							 int with_strerror, const char *fmt,
							 va_list ap)
{
	int n = vsnprintf(ctx->err, sizeof ctx->err, fmt, ap);
	if (with_strerror && err < 0 && err > -4096 && n >= 0 && (size_t)n < sizeof ctx->err)
		snprintf(ctx->err + n, sizeof ctx->err - (size_t)n, ": %s", strerror(-err));
	return err < 0 ? err : -EINVAL;
}

int bench_fail(struct bench_ctx *ctx, int err, const char *fmt, ...)
{
	va_list ap;
	va_start(ap, fmt);
	int r = vfail(ctx, err, 1, fmt, ap);
	va_end(ap);
	return r;
}

int bench_failx(struct bench_ctx *ctx, int err, const char *fmt, ...)
{
	va_list ap;
	va_start(ap, fmt);
	int r = vfail(ctx, err, 0, fmt, ap);
	va_end(ap);
	return r;
}

/* ---- clock ---- */

struct bench_clock bench_clock = { .tsc = 0, .ns_per_tick = 1.0 };

static int cpu_has_invariant_tsc(void)
{
#if defined(__x86_64__) || defined(__i386__)
	FILE *f = fopen("/proc/cpuinfo", "r");
	if (!f)
		return 0;
	char line[4096];
	int found = 0;
	while (fgets(line, sizeof line, f)) {
		if (strncmp(line, "flags", 5) != 0)
			continue;
		found = strstr(line, " constant_tsc") && strstr(line, " nonstop_tsc");
		break;
	}
	fclose(f);
	return found;
#else
	return 0;
#endif
}

/* One (monotonic ns, tsc) pair read as close together as possible: the pair
 * whose bracketing tsc reads are nearest wins. */
static void clock_pair(uint64_t *ns, uint64_t *tsc)
{
	uint64_t best = UINT64_MAX;
	for (int i = 0; i < 16; i++) {
		uint64_t a = bench_now();
		uint64_t t = bench_mono_ns();
		uint64_t b = bench_now();
		if (b - a < best) {
			best = b - a;
			*ns = t;
			*tsc = a + (b - a) / 2;
		}
	}
}

void bench__clock_init(void)
{
	if (getenv("FERRY_BENCH_CLOCK") && strcmp(getenv("FERRY_BENCH_CLOCK"), "mono") == 0)
		bench_clock.tsc = 0;
	else
		bench_clock.tsc = cpu_has_invariant_tsc();
	if (bench_clock.tsc) {
		uint64_t n0, c0, n1, c1;
		clock_pair(&n0, &c0);
		struct timespec d = { 0, 50 * 1000 * 1000 };
		nanosleep(&d, NULL);
		clock_pair(&n1, &c1);
		if (c1 > c0 && n1 > n0) {
			bench_clock.ns_per_tick = (double)(n1 - n0) / (double)(c1 - c0);
			bench_clock.ghz = 1.0 / bench_clock.ns_per_tick;
		} else {
			bench_clock.tsc = 0;
		}
	}
	if (!bench_clock.tsc) {
		bench_clock.ns_per_tick = 1.0;
		bench_clock.ghz = 0;
	}
	/* Cost of one read, as a chained loop sees it. */
	enum { N = 100000 };
	uint64_t t0 = bench_now(), sink = 0;
	for (int i = 0; i < N; i++)
		sink += bench_now();
	uint64_t t1 = bench_now();
	__asm__ __volatile__("" : : "r"(sink));
	bench_clock.overhead_ns = bench_ns(t1 - t0) / N;
}

int bench_ferry_fail(struct bench_ctx *ctx, int r, const char *what)
{
	const char *detail = ferry_errmsg();
	int has = detail && *detail;
	if (r == -ETIMEDOUT)
		return bench_failx(ctx, r, "%s: no answer within %.1f s", what,
				   (double)ctx->peer_timeout_ns / 1e9);
	return bench_failx(ctx, r, "%s: %s%s%s%s", what, ferry_strerror(r), has ? " (" : "",
			   has ? detail : "", has ? ")" : "");
}

int bench_prepare(struct bench_ctx *ctx, struct bench_samples *out, enum bench_cost cost,
		  size_t *n, size_t *warm)
{
	*n = bench_count(ctx, cost);
	*warm = bench_warmup_count(ctx, cost);
	if (bench_samples_reserve(out, *n))
		return bench_fail(ctx, -ENOMEM, "samples");
	return 0;
}

int bench_prepare_start(struct bench_ctx *ctx, struct bench_samples *out, struct bench_loop *lp,
			void **shared)
{
	*lp = (struct bench_loop){ 0 };
	int r = bench_prepare(ctx, out, BENCH_START, &lp->n, &lp->warm);
	if (r)
		return r;
	r = bench_pin(ctx, BENCH_ANY);
	if (r)
		return bench_fail(ctx, r, "sched_setaffinity");
	if (shared) {
		if (!(*shared = bench_shared_alloc(4096)))
			return bench_fail(ctx, -errno, "mmap shared page");
		fflush(NULL); /* the row forks: nothing buffered may be written twice */
	}
	return 0;
}

int bench_fork_server_start(struct bench_ctx *ctx)
{
	struct ferry_init_opts io = { .fork_server = 1 };
	int r = ferry_init(&io);
	return r ? bench_ferry_fail(ctx, r, "ferry_init") : 0;
}

/* ---- samples and statistics ---- */

int bench_samples_reserve(struct bench_samples *s, size_t more)
{
	size_t n = s->n + more;
	if (n <= s->cap)
		return 0;
	double *v = realloc(s->v, n * sizeof *v);
	if (!v)
		return -ENOMEM;
	/* Touch the pages now so that no page fault lands in a measured round. */
	memset(v + s->cap, 0, (n - s->cap) * sizeof *v);
	s->v = v;
	s->cap = n;
	return 0;
}

int bench_samples_push(struct bench_samples *s, double v)
{
	if (s->n == s->cap) {
		int r = bench_samples_reserve(s, s->cap ? s->cap : 1024);
		if (r)
			return r;
	}
	s->v[s->n++] = v;
	return 0;
}

static int cmp_double(const void *a, const void *b)
{
	double x = *(const double *)a, y = *(const double *)b;
	return (x > y) - (x < y);
}

/* Nearest rank: the smallest sample with at least q*n samples at or below it. */
static double rank(const double *v, size_t n, double q)
{
	double r = q * (double)n;
	size_t k = (size_t)r;
	if ((double)k < r)
		k++;
	if (k < 1)
		k = 1;
	if (k > n)
		k = n;
	return v[k - 1];
}

void bench_stats_of(struct bench_samples *s, enum bench_unit unit, struct bench_stats *st)
{
	memset(st, 0, sizeof *st);
	if (!s || s->n == 0)
		return;
	qsort(s->v, s->n, sizeof s->v[0], cmp_double);
	double sum = 0;
	for (size_t i = 0; i < s->n; i++)
		sum += s->v[i];
	st->n = s->n;
	st->mean = sum / (double)s->n;
	st->min = s->v[0];
	st->max = s->v[s->n - 1];
	st->p50 = rank(s->v, s->n, 0.5);
	if (unit == BENCH_RATE) {
		st->p99 = rank(s->v, s->n, 0.01);
		st->p999 = rank(s->v, s->n, 0.001);
	} else {
		st->p99 = rank(s->v, s->n, 0.99);
		st->p999 = rank(s->v, s->n, 0.999);
	}
}

/* ---- pinning ---- */

int bench_pin(const struct bench_ctx *ctx, enum bench_side side)
{
	cpu_set_t set;
	if (side == BENCH_ANY) {
		set = ctx->allowed;
	} else {
		CPU_ZERO(&set);
		CPU_SET(side == BENCH_PEER ? ctx->cpu_peer : ctx->cpu_main, &set);
	}
	/* pid 0: the calling thread only. */
	if (sched_setaffinity(0, sizeof set, &set) != 0)
		return -errno;
	return 0;
}

/* ---- shared memory and peers ---- */

void *bench_shared_alloc(size_t size)
{
	void *p = mmap(NULL, size, PROT_READ | PROT_WRITE, MAP_SHARED | MAP_ANONYMOUS, -1, 0);
	if (p == MAP_FAILED)
		return NULL;
	memset(p, 0, size); /* fault the pages in before anything is measured */
	return p;
}

void bench_shared_free(void *p, size_t size)
{
	if (p)
		munmap(p, size);
}

const char *bench_backend_name(enum bench_backend b)
{
	return b == BENCH_PROCESS ? "process" : "thread";
}

/* What a thread peer touches lives on the heap, not in the caller's frame:
 * a thread that never ends is left running with it (leaked, never freed). */
struct thread_state {
	struct bench_ctx *ctx;
	bench_peer_fn fn;
	void *arg;
	int result;
};

static void *peer_thread(void *arg)
{
	struct thread_state *t = arg;
	int r = bench_pin(t->ctx, BENCH_PEER);
	if (r == 0)
		r = t->fn(t->ctx, t->arg);
	t->result = r;
	return NULL;
}

int bench_peer_start(struct bench_ctx *ctx, struct bench_peer *p, enum bench_backend b,
		     bench_peer_fn fn, void *arg)
{
	memset(p, 0, sizeof *p);
	p->backend = b;
	if (b == BENCH_THREAD) {
		struct thread_state *t = calloc(1, sizeof *t);
		if (!t)
			return bench_fail(ctx, -ENOMEM, "peer thread state");
		*t = (struct thread_state){ ctx, fn, arg, 0 };
		pthread_t tid;
		int r = pthread_create(&tid, NULL, peer_thread, t);
		if (r != 0) {
			free(t);
			return bench_fail(ctx, -r, "pthread_create");
		}
		p->tid = (unsigned long)tid;
		p->thread_state = t;
		p->started = 1;
		return 0;
	}
	fflush(NULL); /* nothing buffered may be written twice */
	pid_t pid = fork();
	if (pid < 0)
		return bench_fail(ctx, -errno, "fork");
	if (pid == 0) {
		int r = bench_pin(ctx, BENCH_PEER);
		if (r == 0)
			r = fn(ctx, arg);
		_exit(r < 0 ? (-r & 0xff) : (r ? 1 : 0));
	}
	p->pid = pid;
	p->started = 1;
	return 0;
}

int bench_peer_join(struct bench_ctx *ctx, struct bench_peer *p)
{
	if (!p->started)
		return 0;
	p->started = 0;
	if (p->backend == BENCH_THREAD) {
		struct timespec ts;
		clock_gettime(CLOCK_REALTIME, &ts);
		int64_t ns = ts.tv_nsec + ctx->peer_timeout_ns;
		ts.tv_sec += ns / 1000000000;
		ts.tv_nsec = ns % 1000000000;
		int r = pthread_timedjoin_np((pthread_t)p->tid, NULL, &ts);
		if (r != 0) {
			pthread_detach((pthread_t)p->tid);
			return bench_failx(ctx, -ETIMEDOUT, "peer thread did not end (left running)");
		}
		struct thread_state *t = p->thread_state;
		int result = t->result;
		free(t);
		p->thread_state = NULL;
		if (result < 0)
			return bench_fail(ctx, result, "peer thread failed");
		return 0;
	}
	uint64_t deadline = bench_mono_ns() + (uint64_t)ctx->peer_timeout_ns;
	int status = 0;
	for (;;) {
		pid_t r = waitpid(p->pid, &status, WNOHANG);
		if (r == p->pid)
			break;
		if (r < 0 && errno != EINTR)
			return bench_fail(ctx, -errno, "waitpid");
		if (bench_mono_ns() >= deadline) {
			kill(p->pid, SIGKILL);
			waitpid(p->pid, &status, 0);
			return bench_failx(ctx, -ETIMEDOUT, "peer process %d did not end (killed)",
					  (int)p->pid);
		}
		struct timespec d = { 0, 200 * 1000 };
		nanosleep(&d, NULL);
	}
	if (WIFSIGNALED(status))
		return bench_failx(ctx, -ECHILD, "peer process died by signal %d (%s)",
				  WTERMSIG(status), strsignal(WTERMSIG(status)));
	if (WIFEXITED(status) && WEXITSTATUS(status) != 0)
		return bench_fail(ctx, -WEXITSTATUS(status), "peer process failed");
	return 0;
}
