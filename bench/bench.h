/*
 * bench/bench.h - the scenario registry of ferry-bench, and the helpers that
 * every scenario shares (clock, samples, pinning, bounded spinning, peers).
 *
 * Adding scenarios: any bench/<topic>.c (every .c file of bench/ is linked into
 * the one ferry-bench program) defines a static table and registers it; main.c
 * never changes:
 *
 *     static int run_ring(struct bench_ctx *ctx, const struct bench_scenario *s,
 *                         struct bench_samples *out)
 *     {
 *         size_t n, warm;
 *         if (bench_prepare(ctx, out, BENCH_CHEAP, &n, &warm))
 *             return -ENOMEM;
 *         ... set up; on a failed setup call:
 *             return bench_fail(ctx, -errno, "mmap %zu bytes", len);
 *         for (size_t i = 0; i < warm && !bench_warm_stop(ctx, i); i++)
 *             ... an unmeasured round ...
 *         for (size_t i = 0; i < n && !bench_stop(ctx, i); i++)
 *             bench_samples_add(out, measured value);
 *         ... tear down ...
 *         return 0;
 *     }
 *     static const struct bench_scenario ring_scenarios[] = {
 *         { .id = "ring.spsc.64", .group = "ring, 64 B records", .order = 400,
 *           .name = "ferry spsc", .backend = "thread", .mode = "spin",
 *           .floor = "ring.ck.spsc.64", .unit = BENCH_RATE, .run = run_ring },
 *         ...
 *     };
 *     BENCH_REGISTER(ring_scenarios)
 *
 * A BENCH_NS sample is one operation's time (a round trip, a start); a
 * BENCH_RATE sample is one batch's rate (operations / seconds of the batch).
 *
 * Rows are printed sorted by (order, registration order) with a group header
 * each time the group changes; registration order across files is link
 * order, so give every row its own order and each group its own hundred:
 *   100 round trip 64 B     200 worker start    300 payloads (clone/transfer)
 *   400 rings               500 wait/notify     600 pool         700 scaling
 *   (ids "scale.<backend>.<N>" are the scaling rows: the USL fit and plot
 *   read them; see bench/scaling_bench.c)
 * A floor is an ordinary scenario that other rows name in .floor; it sits in
 * the same group as the rows it is the floor of, and runs in the same run
 * (with --scenario, floors of the selected rows run too).
 *
 * The run function is called once per pass, on the main thread, pinned to
 * the main core (see bench_pin). A full run makes ctx->passes (3) passes over
 * all the selected rows, so that the slow drift of a shared machine touches
 * floors and ferry alike; bench_count() gives one pass's share, and each call
 * appends to @out (the samples of all passes make the row's statistics).
 * Set up and tear down everything within the call. It returns 0, or a
 * negative errno after bench_fail() with a message: the row then shows the
 * error and the bench goes on with the next row (later passes skip it). A run function must never hang: every
 * wait on a peer is bounded by ctx->peer_timeout_ns (bench_spin, timeouts on
 * blocking calls) and a lost peer is an error for that row. It must not exit
 * or print to stdout (the table and JSON own stdout; stderr is for progress).
 */
#ifndef FERRY_BENCH_H
#define FERRY_BENCH_H

#include <errno.h>
#include <sched.h>
#include <stdatomic.h>
#include <stddef.h>
#include <stdint.h>
#include <sys/types.h>
#include <time.h>

#if defined(__x86_64__) || defined(__i386__)
#include <x86intrin.h>
#endif

/* ---- the registry ---- */

enum bench_unit {
	BENCH_NS = 0,   /* samples are nanoseconds per operation (lower is better) */
	BENCH_RATE = 1, /* samples are operations per second (higher is better) */
};

struct bench_ctx;
struct bench_samples;
struct bench_scenario;

typedef int (*bench_run_fn)(struct bench_ctx *ctx, const struct bench_scenario *s,
			    struct bench_samples *out);

struct bench_scenario {
	const char *id;      /* unique stable slug ("rt64.spin.thread"): .floor refs, JSON */
	const char *group;   /* table section, e.g. "round trip, 64 B" */
	const char *name;    /* the row, e.g. "atomic spin", "ferry port" */
	const char *backend; /* "thread", "process", or NULL (shown as "-") */
	const char *mode;    /* "spin", "block", "adaptive", or NULL (shown as "-") */
	const char *floor;   /* .id of this row's floor for the ratio column; NULL = none */
	int order;           /* sort key, see above */
	enum bench_unit unit;
	bench_run_fn run;
	const void *arg;     /* the scenario's own parameter, passed as is */
	/* The floor's p50 is multiplied by this before the ratio (0 = 1): a
	 * scaling row of N workers names the 1-worker row as its floor with
	 * .floor_scale = N, so that 1.00x means "N times the floor's rate". */
	double floor_scale;
};

/* Add @s (which must stay valid: static storage) to the table. Called from
 * constructors, before main; more than BENCH_MAX_SCENARIOS is reported. */
#define BENCH_MAX_SCENARIOS 512
void bench_register(const struct bench_scenario *s);

/* Register every element of a static array of struct bench_scenario. */
#define BENCH_REGISTER(table)                                                       \
	__attribute__((constructor)) static void bench_register_##table(void)       \
	{                                                                           \
		for (size_t i_ = 0; i_ < sizeof(table) / sizeof((table)[0]); i_++) \
			bench_register(&(table)[i_]);                               \
	}

/* ---- the run context ---- */

struct bench_ctx {
	int quick;              /* --quick: fewer samples */
	int passes;             /* passes over all rows (1 with --quick) */
	int pass;               /* the current one, 0-based */
	int single_cpu;         /* only one CPU allowed: spinners yield, peers share it */
	int cpu_main;           /* the core of the main side */
	int cpu_peer;           /* the core of the peer side (== cpu_main when single_cpu) */
	cpu_set_t allowed;      /* the affinity the program started with */
	int64_t peer_timeout_ns; /* the longest one wait on a peer may take */
	int64_t row_budget_ns;  /* soft cap on one row's time in one pass (bench_stop) */
	uint64_t row_deadline;  /* bench_now() value at which bench_stop says stop */
	uint64_t warm_deadline; /* the same for bench_warm_stop */
	char err[256];          /* bench_fail's message for the current row */
};

/*
 * How many samples a row takes in one pass, by what one operation costs:
 * CHEAP (< 1 us, spins), WAKE (tens of us, sleeps and wakes), START (a thread
 * or a process, up to milliseconds). bench_warmup_count() gives the matching
 * number of unmeasured rounds to run first.
 */
enum bench_cost { BENCH_CHEAP = 0, BENCH_WAKE = 1, BENCH_START = 2 };
size_t bench_count(const struct bench_ctx *ctx, enum bench_cost cost);
size_t bench_warmup_count(const struct bench_ctx *ctx, enum bench_cost cost);

/*
 * bench_fail - record the row's error message (printf format) and return
 * @err (a negative errno) so that `return bench_fail(ctx, -errno, "...")`
 * reads well. ": <strerror>" is appended when @err is an errno.
 * bench_failx - the same without the suffix, for messages that say it all
 * ("no reply from the peer within 5.0 s").
 */
int bench_fail(struct bench_ctx *ctx, int err, const char *fmt, ...)
	__attribute__((format(printf, 3, 4)));
int bench_failx(struct bench_ctx *ctx, int err, const char *fmt, ...)
	__attribute__((format(printf, 3, 4)));

/*
 * bench_ferry_fail - bench_failx for a failed ferry call: "<what>: <code>
 * (<ferry_errmsg()>)", or "<what>: no answer within <t> s" for -ETIMEDOUT
 * (a peer timeout). Returns @r.
 */
int bench_ferry_fail(struct bench_ctx *ctx, int r, const char *what);

/*
 * bench_prepare - the prologue of a row: *@n samples and *@warm warm-up
 * rounds for @cost (bench_count, bench_warmup_count), and room for the
 * samples in @out. Returns 0 or -ENOMEM (bench_fail already called).
 */
int bench_prepare(struct bench_ctx *ctx, struct bench_samples *out, enum bench_cost cost,
		  size_t *n, size_t *warm);


/*
 * bench_fork_server_start - ferry_init with the fork server, for a row that
 * spawns its process workers through it (ferry_fini when the row ends).
 * Returns 0 or the row's error (bench_ferry_fail already called).
 */
int bench_fork_server_start(struct bench_ctx *ctx);

/* ---- the clock ----
 * bench_now() is the invariant TSC when the CPU has one (constant_tsc and
 * nonstop_tsc; calibrated against CLOCK_MONOTONIC at start-up), else
 * CLOCK_MONOTONIC in nanoseconds. On this machine kind rdtsc costs ~16 ns and
 * a vDSO clock_gettime ~40 ns, against a ~100 ns floor: the cheaper read
 * keeps the timer out of the spin round trips. Ticks only mean something as
 * differences; bench_ns() turns a difference into nanoseconds. */
struct bench_clock {
	int tsc;            /* 1: ticks are TSC cycles */
	double ns_per_tick; /* 1.0 when !tsc */
	double ghz;         /* TSC frequency, 0 when !tsc */
	double overhead_ns; /* cost of one bench_now() */
};
extern struct bench_clock bench_clock;

static inline uint64_t bench_mono_ns(void)
{
	struct timespec t;
	clock_gettime(CLOCK_MONOTONIC, &t);
	return (uint64_t)t.tv_sec * 1000000000u + (uint64_t)t.tv_nsec;
}

static inline uint64_t bench_now(void)
{
#if defined(__x86_64__) || defined(__i386__)
	if (bench_clock.tsc)
		return __rdtsc();
#endif
	return bench_mono_ns();
}

static inline double bench_ns(uint64_t ticks)
{
	return (double)ticks * bench_clock.ns_per_tick;
}

static inline uint64_t bench_ticks(int64_t ns)
{
	return (uint64_t)((double)ns / bench_clock.ns_per_tick);
}

/* ---- samples ---- */

struct bench_samples {
	double *v;  /* in the scenario's unit */
	size_t n;
	size_t cap;
};

/* Make room for @n more samples (do it before measuring); -ENOMEM. */
int bench_samples_reserve(struct bench_samples *s, size_t n);
/* Add one sample; grows if needed (outside a reserve: costs a realloc). */
int bench_samples_push(struct bench_samples *s, double v);

static inline void bench_samples_add(struct bench_samples *s, double v)
{
	if (s->n < s->cap)
		s->v[s->n++] = v;
	else
		(void)bench_samples_push(s, v);
}

/* bench_stop - 1 once the row's time budget is spent (the clock is read
 * every 16th call, by @i): measuring loops stop early rather than run for
 * minutes when one operation turns out slow (a loaded or one-CPU machine).
 * bench_warm_stop - the same for warm-up loops, whose share of the budget is
 * a fifth. */
static inline int bench_stop(const struct bench_ctx *ctx, size_t i)
{
	return (i & 15) == 15 && bench_now() >= ctx->row_deadline;
}

static inline int bench_warm_stop(const struct bench_ctx *ctx, size_t i)
{
	return (i & 15) == 15 && bench_now() >= ctx->warm_deadline;
}

/*
 * A loop whose warm-up and measured rounds share one body (starts, say):
 *     struct bench_loop lp = { .warm = bench_warmup_count(ctx, BENCH_START),
 *                              .n = bench_count(ctx, BENCH_START) };
 *     while (bench_loop_next(ctx, &lp)) {
 *         ... one round ...
 *         if (lp.measuring)
 *             bench_samples_add(out, ...);
 *     }
 * Warm-up ends after .warm rounds or its share of the budget; measuring ends
 * after .n rounds or the row's budget.
 */
struct bench_loop {
	size_t warm, n;  /* set these */
	size_t i, m;     /* rounds done: warm-up, measured */
	int measuring;   /* this round is measured */
};

static inline int bench_loop_next(const struct bench_ctx *ctx, struct bench_loop *lp)
{
	if (!lp->measuring) {
		if (lp->i < lp->warm && !bench_warm_stop(ctx, lp->i)) {
			lp->i++;
			return 1;
		}
		lp->measuring = 1;
	}
	if (lp->m >= lp->n || bench_stop(ctx, lp->m))
		return 0;
	lp->m++;
	return 1;
}

/*
 * bench_prepare_start - the prologue of a start or terminate row: a
 * BENCH_START bench_prepare into @lp (its warm-up and measured rounds), then
 * the main side unpinned (BENCH_ANY), so that the new thread or process goes
 * where the scheduler puts it, as a worker's does. With @shared, also one
 * zeroed page both sides of a fork see (bench_shared_alloc(4096);
 * bench_shared_free it at the end), and stdio flushed before the forks.
 * Returns 0 or a negative errno (bench_fail already called; nothing left to
 * free).
 */
int bench_prepare_start(struct bench_ctx *ctx, struct bench_samples *out, struct bench_loop *lp,
			void **shared);

struct bench_stats {
	size_t n;
	double p50, p99, p999, mean, min, max;
};
/* Sorts @s in place and fills @st (nearest-rank percentiles); n = 0 if empty.
 * For BENCH_RATE rows the tail is the slow side: p99 is the rate that 99% of
 * samples beat (the 1st percentile of the rates). */
void bench_stats_of(struct bench_samples *s, enum bench_unit unit, struct bench_stats *st);

/* ---- pinning ---- */

enum bench_side {
	BENCH_MAIN = 0, /* ctx->cpu_main */
	BENCH_PEER = 1, /* ctx->cpu_peer */
	BENCH_ANY = 2,  /* every allowed CPU (the start mask) */
};
/* Pin the calling thread to @side's core; returns 0 or -errno. */
int bench_pin(const struct bench_ctx *ctx, enum bench_side side);

/* ---- bounded spinning ----
 *     struct bench_spin sp = bench_spin_start(ctx);
 *     while (atomic_load_explicit(&w, memory_order_acquire) != want)
 *         if (bench_spin(&sp))
 *             return bench_failx(ctx, -ETIMEDOUT, "peer lost");
 * Each step is a cpu relax (pause); with one CPU it is a sched_yield, so a
 * spinner never holds the only core its peer needs. The clock is read every
 * 1024 steps only. */
struct bench_spin {
	uint64_t deadline;
	unsigned steps;
	int yield;
};

static inline struct bench_spin bench_spin_start(const struct bench_ctx *ctx)
{
	struct bench_spin sp = { bench_now() + bench_ticks(ctx->peer_timeout_ns), 0,
				 ctx->single_cpu };
	return sp;
}

static inline void bench_relax(void)
{
#if defined(__x86_64__) || defined(__i386__)
	_mm_pause();
#elif defined(__aarch64__)
	__asm__ __volatile__("yield" ::: "memory");
#else
	atomic_signal_fence(memory_order_seq_cst);
#endif
}

/* 0 to go on spinning, -ETIMEDOUT once the peer timeout passed. */
static inline int bench_spin(struct bench_spin *sp)
{
	if (sp->yield)
		sched_yield();
	else
		bench_relax();
	if ((++sp->steps & 1023) == 0 && bench_now() >= sp->deadline)
		return -ETIMEDOUT;
	return 0;
}

/* ---- peers: the other side of a floor, as a thread or a process ---- */

enum bench_backend { BENCH_THREAD = 0, BENCH_PROCESS = 1 };
const char *bench_backend_name(enum bench_backend b); /* "thread", "process" */

/* Memory both sides see, in either backend (MAP_SHARED|MAP_ANONYMOUS,
 * zeroed, page aligned); NULL on failure. */
void *bench_shared_alloc(size_t size);
void bench_shared_free(void *p, size_t size);

typedef int (*bench_peer_fn)(struct bench_ctx *ctx, void *arg);

struct bench_peer {
	enum bench_backend backend;
	pid_t pid;          /* BENCH_PROCESS */
	unsigned long tid;  /* BENCH_THREAD (a pthread_t) */
	int started;
	void *thread_state; /* BENCH_THREAD: what the thread touches (leaked if it hangs) */
};

/*
 * bench_peer_start - run @fn(ctx, @arg) on a new thread or in a forked child,
 * pinned to the peer core before @fn runs. A process peer leaves with
 * _exit(-ret) (0 when @fn returned 0, the errno number otherwise); it shares
 * only what was mapped with bench_shared_alloc (or otherwise MAP_SHARED)
 * before the start.
 * @fn runs beside the main side: it must not call bench_fail (nor touch
 * ctx->err); it returns 0 or a negative errno, which bench_peer_join reports.
 * Returns 0 or a negative errno (bench_fail already called).
 */
int bench_peer_start(struct bench_ctx *ctx, struct bench_peer *p, enum bench_backend b,
		     bench_peer_fn fn, void *arg);

/*
 * bench_peer_join - wait up to ctx->peer_timeout_ns for the peer to end. A
 * process that does not end is killed (SIGKILL) and reaped; a thread that
 * does not end is reported and left (it may still touch its memory: leak it
 * rather than free it then). Returns 0 when the peer ended and its function
 * returned 0, else a negative errno with bench_fail's message: -ETIMEDOUT
 * (did not end), -ECHILD (a process peer died by a signal), or the negative
 * errno the peer function returned.
 */
int bench_peer_join(struct bench_ctx *ctx, struct bench_peer *p);

/* ---- the Universal Scalability Law (bench/scaling_bench.c) ----
 * S(N) = N / (1 + sigma (N - 1) + kappa N (N - 1)): sigma is the serial
 * fraction (contention, Amdahl's law), kappa the crosstalk (coherency). */
struct bench_usl {
	double sigma, kappa; /* >= 0 */
	double nstar;        /* best worker count sqrt((1 - sigma) / kappa); 0 = no peak */
	double r2;           /* coefficient of determination of the fit */
	double rmse;         /* root mean square error of the fit, in speedup units */
};
/* Least-squares fit of @k points (n[i] workers, speedup s[i]); 0, or -EINVAL
 * with fewer than two distinct worker counts or a non-positive value. */
int bench_usl_fit(const double *n, const double *s, size_t k, struct bench_usl *out);
static inline double bench_usl_speedup(const struct bench_usl *u, double n)
{
	return n / (1 + u->sigma * (n - 1) + u->kappa * n * (n - 1));
}

/* ---- for main.c only ---- */
extern const struct bench_scenario *bench__table[BENCH_MAX_SCENARIOS];
extern size_t bench__count;   /* registered */
extern size_t bench__dropped; /* beyond BENCH_MAX_SCENARIOS */
void bench__clock_init(void); /* fills bench_clock; before any bench_now() use */

#endif /* FERRY_BENCH_H */
