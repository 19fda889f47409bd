/*
 * Scaling rows (group order 700), after Amdahl's law and the Universal
 * Scalability Law: a CPU-bound map (a fixed amount of integer hashing per
 * item) through a ferry pool of N workers, N = 1 .. 2x the CPUs this
 * process may use, on each backend. A sample is one batch's throughput
 * (items / s); X(N) is the p50 of the batches, the speedup S(N) = X(N) / X(1).
 *
 * Each row names its backend's 1-worker row as its floor, with .floor_scale
 * = min(N, CPUs): the ratio column is then the ideal speedup over the one
 * measured (1.00x: every core the N workers could use did a full share;
 * 2.00x: half of it lost to dispatch, contention or crosstalk).
 *
 * main.c fits S(N) = N / (1 + sigma (N-1) + kappa N (N-1)) per backend with
 * bench_usl_fit (below) and prints sigma, kappa and N* under the table.
 */
#include "bench.h"

#include "ferry/pool.h"
#include "ferry/value.h"
#include "ferry/worker.h"

#include <math.h>
#include <stdio.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#define SCALE_GROUP "scaling: CPU-bound map over N pool workers (speedup; USL fit under the table)"
#define SCALE_MAX_N 24          /* worker counts per backend, at most */
#define SCALE_ITEM_NS 200000.0  /* one item's hashing on one core: ~200 us */
#define SCALE_ITEMS 500         /* items per batch: ~100 ms with 1 worker */
#define SCALE_ITEMS_QUICK 250   /* with --quick: ~50 ms */

struct scale_param {
	int backend; /* enum ferry_backend */
	int workers;
};

static struct bench_scenario scale_rows[2 * SCALE_MAX_N];
static struct scale_param scale_params[2 * SCALE_MAX_N];
static char scale_ids[2 * SCALE_MAX_N][32];
static char scale_names[2 * SCALE_MAX_N][32];
static char scale_floors[2][32];

/* ---- the work ---- */

/* A chain of multiply-xorshift rounds: every round depends on the last, so
 * neither the compiler nor the CPU can skip or overlap them. */
static uint64_t scale_hash(uint64_t x, uint64_t rounds)
{
	for (uint64_t i = 0; i < rounds; i++) {
		x ^= x >> 31;
		x *= 0x9e3779b97f4a7c15ull;
		x ^= x >> 29;
	}
	return x;
}

static int scale_task(ferry_pool_ctx *c, const struct ferry_value *arg, struct ferry_value **res)
{
	size_t len = 0;
	const uint64_t *rounds = ferry_pool_ctx_data(c, &len);
	int64_t item = 0;
	if (!rounds || len != sizeof *rounds || ferry_value_get_int(arg, &item))
		return ferry_pool_ctx_fail(c, -EINVAL, "scaling task: bad argument");
	*res = ferry_value_int((int64_t)(scale_hash((uint64_t)item, *rounds) >> 1));
	return *res ? 0 : -ENOMEM;
}

/* Rounds per item, calibrated once per run on the main core (the same work
 * then goes to every row, thread and process alike). */
static uint64_t scale_rounds(void)
{
	static uint64_t rounds;
	if (rounds)
		return rounds;
	uint64_t r = 1 << 14, best = UINT64_MAX;
	volatile uint64_t sink = 0;
	for (int i = 0; i < 5; i++) {
		uint64_t t0 = bench_mono_ns();
		sink += scale_hash((uint64_t)i, r);
		uint64_t t = bench_mono_ns() - t0;
		if (t < best)
			best = t;
	}
	(void)sink;
	double per_round = (double)(best ? best : 1) / (double)r;
	rounds = (uint64_t)(SCALE_ITEM_NS / per_round);
	if (rounds < 1000)
		rounds = 1000;
	return rounds;
}

static int scale_fail(struct bench_ctx *ctx, int r, const char *what)
{
	const char *d = ferry_errmsg();
	return bench_failx(ctx, r, "%s: %s%s%s%s", what, ferry_strerror(r), d && *d ? " (" : "",
			   d ? d : "", d && *d ? ")" : "");
}

static int run_scale(struct bench_ctx *ctx, const struct bench_scenario *s,
		     struct bench_samples *out)
{
	const struct scale_param *prm = s->arg;
	size_t n = ctx->quick ? 3 : (size_t)(15 + ctx->passes - 1) / (size_t)ctx->passes;
	if (bench_samples_reserve(out, n))
		return bench_fail(ctx, -ENOMEM, "samples");
	uint64_t rounds = scale_rounds();
	int nitems = ctx->quick ? SCALE_ITEMS_QUICK : SCALE_ITEMS;
	/* The workers (and the submitter) go where the scheduler likes, on
	 * every allowed CPU: workers inherit the affinity of who starts them. */
	int r = bench_pin(ctx, BENCH_ANY);
	if (r)
		return bench_fail(ctx, r, "sched_setaffinity");
	struct ferry_pool_opts o = {
		.backend = prm->backend, .fn = scale_task, .name = "bench-scale",
		.min_workers = prm->workers, .max_workers = prm->workers,
		.idle_timeout_ns = FERRY_FOREVER, .max_queue = 2 * SCALE_ITEMS,
		.data = &rounds, .data_len = sizeof rounds,
	};
	ferry_pool *p;
	r = ferry_pool_create(&p, &o);
	if (r)
		return scale_fail(ctx, r, "ferry_pool_create");
	struct ferry_value *items[SCALE_ITEMS];
	memset(items, 0, sizeof items);
	for (int i = 0; i < SCALE_ITEMS && r == 0; i++)
		if (!(items[i] = ferry_value_int(i)))
			r = bench_fail(ctx, -ENOMEM, "ferry_value_int");
	struct ferry_pool_stats st0, st1;
	/* One unmeasured batch first: every worker has started and run. */
	struct bench_loop lp = { .warm = 1, .n = n };
	while (r == 0 && bench_loop_next(ctx, &lp)) {
		if ((r = ferry_pool_stats(p, &st0)) != 0) {
			scale_fail(ctx, r, "ferry_pool_stats");
			break;
		}
		uint64_t t0 = bench_now();
		for (int i = 0; i < nitems && r == 0; i++)
			if ((r = ferry_pool_submit(p, items[i], NULL, NULL)) != 0)
				scale_fail(ctx, r, "ferry_pool_submit");
		/* A batch takes ~100 ms x workers at worst: give it the peer timeout
		 * on top. */
		if (r == 0 && (r = ferry_pool_drain(p, ctx->peer_timeout_ns +
							 (int64_t)prm->workers * 1000000000LL)))
			scale_fail(ctx, r, "ferry_pool_drain");
		double secs = bench_ns(bench_now() - t0) / 1e9;
		/* The counters may trail the drain by a few tasks (the settling
		 * is the manager thread's): wait for them, boundedly. */
		uint64_t until = bench_mono_ns() + (uint64_t)ctx->peer_timeout_ns;
		while (r == 0) {
			if ((r = ferry_pool_stats(p, &st1)) != 0) {
				scale_fail(ctx, r, "ferry_pool_stats");
				break;
			}
			if (st1.completed + st1.failed - st0.completed - st0.failed >= (uint64_t)nitems ||
			    bench_mono_ns() >= until)
				break;
			struct timespec d = { 0, 100 * 1000 };
			nanosleep(&d, NULL);
		}
		if (r == 0 && st1.completed - st0.completed != (uint64_t)nitems)
			r = bench_failx(ctx, -EPROTO, "%llu of %d items completed (%llu failed)",
					(unsigned long long)(st1.completed - st0.completed),
					nitems, (unsigned long long)(st1.failed - st0.failed));
		if (r == 0 && lp.measuring && secs > 0)
			bench_samples_add(out, nitems / secs);
	}
	for (int i = 0; i < SCALE_ITEMS; i++)
		ferry_value_free(items[i]);
	ferry_pool_destroy(p, ctx->peer_timeout_ns);
	return r;
}

/* N = 1 .. 2x CPUs: every count up to 8, then steps of about a quarter. */
static int scale_counts(int *ns, int max)
{
	cpu_set_t set;
	int cpus = 1;
	if (sched_getaffinity(0, sizeof set, &set) == 0 && CPU_COUNT(&set) > 0)
		cpus = CPU_COUNT(&set);
	int top = 2 * cpus, k = 0;
	for (int n = 1; n <= top && k < max; ) {
		ns[k++] = n;
		int step = n < 8 ? 1 : n / 4;
		if (n + step > top && n < top)
			n = top;
		else
			n += step;
	}
	if (k == max)
		ns[max - 1] = top;
	return k;
}

__attribute__((constructor)) static void scale_register(void)
{
	int ns[SCALE_MAX_N];
	int k = scale_counts(ns, SCALE_MAX_N);
	int cpus = ns[k - 1] / 2 > 0 ? ns[k - 1] / 2 : 1;
	static const int backends[2] = { FERRY_THREAD, FERRY_PROCESS };
	size_t j = 0;
	for (int b = 0; b < 2; b++) {
		const char *bn = backends[b] == FERRY_PROCESS ? "process" : "thread";
		snprintf(scale_floors[b], sizeof scale_floors[b], "scale.%s.1", bn);
		for (int i = 0; i < k; i++, j++) {
			scale_params[j] = (struct scale_param){ backends[b], ns[i] };
			snprintf(scale_ids[j], sizeof scale_ids[j], "scale.%s.%d", bn, ns[i]);
			snprintf(scale_names[j], sizeof scale_names[j], "map, %d worker%s", ns[i],
				 ns[i] == 1 ? "" : "s");
			scale_rows[j] = (struct bench_scenario){
				.id = scale_ids[j], .group = SCALE_GROUP, .name = scale_names[j],
				.backend = bn, .mode = "adaptive",
				.floor = ns[i] == 1 ? NULL : scale_floors[b],
				.floor_scale = ns[i] < cpus ? ns[i] : cpus,
				.order = 700 + b * 50 + (i < 49 ? i : 49), .unit = BENCH_RATE,
				.run = run_scale, .arg = &scale_params[j],
			};
			bench_register(&scale_rows[j]);
		}
	}
}

/* ---- the USL fit ---- */

static double usl_sse(const double *n, const double *s, size_t k, double sigma, double kappa)
{
	double sse = 0;
	for (size_t i = 0; i < k; i++) {
		double d = s[i] - n[i] / (1 + sigma * (n[i] - 1) + kappa * n[i] * (n[i] - 1));
		sse += d * d;
	}
	return sse;
}

/*
 * Start from the linear form N/S - 1 = sigma (N-1) + kappa N (N-1) (least
 * squares with both coefficients >= 0), then refine the fit of S itself by
 * damped Gauss-Newton (Levenberg-Marquardt), projected onto sigma, kappa >= 0.
 */
int bench_usl_fit(const double *n, const double *s, size_t k, struct bench_usl *out)
{
	memset(out, 0, sizeof *out);
	double nmin = INFINITY, nmax = -INFINITY;
	for (size_t i = 0; i < k; i++) {
		if (!(n[i] >= 1) || !(s[i] > 0) || !isfinite(s[i]))
			return -EINVAL;
		nmin = fmin(nmin, n[i]);
		nmax = fmax(nmax, n[i]);
	}
	if (k < 2 || nmax <= nmin)
		return -EINVAL;
	/* Linear start: y = a x1 + b x2, x1 = N-1, x2 = N(N-1), y = N/S - 1. */
	double a11 = 0, a12 = 0, a22 = 0, b1 = 0, b2 = 0;
	for (size_t i = 0; i < k; i++) {
		double x1 = n[i] - 1, x2 = n[i] * (n[i] - 1), y = n[i] / s[i] - 1;
		a11 += x1 * x1;
		a12 += x1 * x2;
		a22 += x2 * x2;
		b1 += x1 * y;
		b2 += x2 * y;
	}
	double sigma = 0, kappa = 0, det = a11 * a22 - a12 * a12;
	if (fabs(det) > 1e-12 * a11 * a22) {
		sigma = (b1 * a22 - b2 * a12) / det;
		kappa = (a11 * b2 - a12 * b1) / det;
	}
	if (!(sigma >= 0) || !(kappa >= 0)) {
		/* One coefficient at its bound: the best of the two one-term fits. */
		double s1 = a11 > 0 ? fmax(0, b1 / a11) : 0, k2 = a22 > 0 ? fmax(0, b2 / a22) : 0;
		if (usl_sse(n, s, k, s1, 0) <= usl_sse(n, s, k, 0, k2)) {
			sigma = s1;
			kappa = 0;
		} else {
			sigma = 0;
			kappa = k2;
		}
	}
	double sse = usl_sse(n, s, k, sigma, kappa), lambda = 1e-3;
	for (int it = 0; it < 200; it++) {
		double j11 = 0, j12 = 0, j22 = 0, g1 = 0, g2 = 0;
		for (size_t i = 0; i < k; i++) {
			double d = 1 + sigma * (n[i] - 1) + kappa * n[i] * (n[i] - 1);
			double f = n[i] / d, r = s[i] - f;
			double ds = -n[i] * (n[i] - 1) / (d * d);
			double dk = -n[i] * n[i] * (n[i] - 1) / (d * d);
			j11 += ds * ds;
			j12 += ds * dk;
			j22 += dk * dk;
			g1 += ds * r;
			g2 += dk * r;
		}
		int improved = 0;
		for (int tries = 0; tries < 30 && !improved; tries++) {
			double m11 = j11 * (1 + lambda), m22 = j22 * (1 + lambda);
			double dt = m11 * m22 - j12 * j12;
			if (!(fabs(dt) > 0))
				break;
			double ns_ = fmax(0, sigma + (g1 * m22 - g2 * j12) / dt);
			double nk = fmax(0, kappa + (m11 * g2 - j12 * g1) / dt);
			double e = usl_sse(n, s, k, ns_, nk);
			if (e < sse) {
				improved = 1;
				double change = fabs(ns_ - sigma) + fabs(nk - kappa);
				sigma = ns_;
				kappa = nk;
				int done = sse - e < 1e-14 * (1 + sse) || change < 1e-12;
				sse = e;
				lambda = fmax(lambda / 10, 1e-12);
				if (done)
					it = 1000;
			} else {
				lambda *= 10;
			}
		}
		if (!improved)
			break;
	}
	out->sigma = sigma;
	out->kappa = kappa;
	out->nstar = kappa > 1e-9 && sigma < 1 ? sqrt((1 - sigma) / kappa) : 0;
	double mean = 0, sst = 0;
	for (size_t i = 0; i < k; i++)
		mean += s[i] / (double)k;
	for (size_t i = 0; i < k; i++)
		sst += (s[i] - mean) * (s[i] - mean);
	out->r2 = sst > 0 ? 1 - sse / sst : 1;
	out->rmse = sqrt(sse / (double)k);
	return 0;
}
