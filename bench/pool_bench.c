/*
 * Pool rows (group order 600): an empty task's round trip through a pool of
 * one worker on each backend, next to the 64 B port round trip of the same
 * run (its floor: a pool task is a port round trip plus the queue and the
 * task's slot); and tasks per second through a pool of two workers, with
 * Node's piscina beside it when node and the piscina package are installed.
 * All through the public API (ferry/pool.h), in the default wait mode.
 * piscina is the version bench/node/package-lock.json pins, installed by
 * `sh bench/node/setup.sh <build dir>/node` (found as node_bench.c says);
 * without it the row is skipped with a note.
 */
#include "bench.h"

#include "ferry/pool.h"
#include "ferry/port.h"
#include "ferry/value.h"
#include "ferry/worker.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#define POOL_GROUP "pool, empty task"
#define MSG_BYTES 64
#define RATE_BATCH 4096 /* tasks per rate sample */

enum pb_kind { PB_PORT = 0, PB_RT = 1, PB_RATE = 2, PB_PISCINA = 3 };

struct pb_param {
	enum pb_kind kind;
	int backend; /* enum ferry_backend */
};

/* Where the workers go; static storage: a thread worker never outlives it,
 * a process worker has its copy. */
static int pb_cpu = -1;

static void pin_self(int cpu)
{
	if (cpu < 0)
		return;
	cpu_set_t set;
	CPU_ZERO(&set);
	CPU_SET(cpu, &set);
	(void)sched_setaffinity(0, sizeof set, &set); /* best effort */
}

/* ---- the floor: a 64 B echo over a worker's port ---- */

static int echo_entry(ferry_worker_ctx *wc)
{
	ferry_port *p = ferry_worker_ctx_port(wc);
	const int64_t *tmo = ferry_worker_ctx_data(wc, NULL);
	pin_self(pb_cpu);
	for (;;) {
		ferry_msg *m;
		int r = ferry_port_recv(p, &m, *tmo);
		if (r == -EPIPE)
			return 0;
		if (r)
			return 11;
		size_t len = ferry_msg_len(m);
		if (len == 0) {
			ferry_msg_free(m);
			return 0;
		}
		r = ferry_port_post_bytes(p, ferry_msg_data(m), len, *tmo);
		ferry_msg_free(m);
		if (r)
			return r == -EPIPE ? 0 : 12;
	}
}

static int run_port(struct bench_ctx *ctx, const struct pb_param *prm, struct bench_samples *out)
{
	size_t n, warm;
	if (bench_prepare(ctx, out, BENCH_WAKE, &n, &warm))
		return -ENOMEM;
	pb_cpu = ctx->cpu_peer;
	int64_t tmo = ctx->peer_timeout_ns;
	struct ferry_worker_opts o = { .backend = prm->backend, .entry = echo_entry, .name = "bench-echo",
				       .data = &tmo, .data_len = sizeof tmo };
	ferry_worker *w;
	int r = ferry_worker_spawn(&w, &o);
	if (r)
		return bench_ferry_fail(ctx, r, "ferry_worker_spawn");
	ferry_port *p = ferry_worker_port(w);
	char buf[MSG_BYTES];
	memset(buf, 0x5a, sizeof buf);
	struct bench_loop lp = { .warm = warm, .n = n };
	uint64_t t0 = bench_now();
	while (r == 0 && bench_loop_next(ctx, &lp)) {
		r = ferry_port_post_bytes(p, buf, sizeof buf, tmo);
		ferry_msg *m = NULL;
		if (r == 0)
			r = ferry_port_recv(p, &m, tmo);
		ferry_msg_free(m);
		uint64_t t1 = bench_now();
		if (r)
			bench_ferry_fail(ctx, r, "port round trip");
		else if (lp.measuring)
			bench_samples_add(out, bench_ns(t1 - t0));
		t0 = t1;
	}
	if (r == 0)
		ferry_port_post_bytes(p, buf, 0, tmo);
	struct ferry_worker_status st;
	ferry_worker_join(w, &st, tmo);
	ferry_worker_destroy(w);
	return r;
}

/* ---- the pool ---- */

static int empty_task(ferry_pool_ctx *c, const struct ferry_value *arg, struct ferry_value **res)
{
	static _Thread_local int pinned;
	if (!pinned) { /* a process worker keeps its thread: pinned once */
		pin_self(pb_cpu);
		pinned = 1;
	}
	return 0;
}

static int make_pool(struct bench_ctx *ctx, int backend, int workers, ferry_pool **out)
{
	struct ferry_pool_opts o = { .backend = backend, .fn = empty_task, .name = "bench-pool",
				     .min_workers = workers, .max_workers = workers };
	int r = ferry_pool_create(out, &o);
	return r ? bench_ferry_fail(ctx, r, "ferry_pool_create") : 0;
}

static int run_rt(struct bench_ctx *ctx, const struct pb_param *prm, struct bench_samples *out)
{
	size_t n, warm;
	if (bench_prepare(ctx, out, BENCH_WAKE, &n, &warm))
		return -ENOMEM;
	pb_cpu = ctx->cpu_peer;
	ferry_pool *p;
	int r = make_pool(ctx, prm->backend, 1, &p);
	if (r)
		return r;
	struct bench_loop lp = { .warm = warm, .n = n };
	uint64_t t0 = bench_now();
	while (r == 0 && bench_loop_next(ctx, &lp)) {
		ferry_pool_task *t;
		r = ferry_pool_submit(p, NULL, NULL, &t);
		if (r) {
			bench_ferry_fail(ctx, r, "ferry_pool_submit");
			break;
		}
		r = ferry_pool_task_wait(t, ctx->peer_timeout_ns);
		ferry_pool_task_free(t);
		uint64_t t1 = bench_now();
		if (r)
			bench_ferry_fail(ctx, r, "ferry_pool_task_wait");
		else if (lp.measuring)
			bench_samples_add(out, bench_ns(t1 - t0));
		t0 = t1;
	}
	ferry_pool_destroy(p, ctx->peer_timeout_ns);
	return r;
}

/* Tasks per second: keep the queue full, collect in order. */
static int run_rate(struct bench_ctx *ctx, const struct pb_param *prm, struct bench_samples *out)
{
	size_t n = ctx->quick ? 5 : 20;
	if (bench_samples_reserve(out, n))
		return bench_fail(ctx, -ENOMEM, "samples");
	/* Two workers and the submitter share the cores as the scheduler likes. */
	int r = bench_pin(ctx, BENCH_ANY);
	if (r)
		return bench_fail(ctx, r, "sched_setaffinity");
	pb_cpu = -1;
	ferry_pool *p;
	r = make_pool(ctx, prm->backend, 2, &p);
	if (r)
		return r;
	ferry_pool_task **ring = calloc(RATE_BATCH, sizeof *ring);
	if (!ring) {
		ferry_pool_destroy(p, 0);
		return bench_fail(ctx, -ENOMEM, "task handles");
	}
	struct bench_loop lp = { .warm = 1, .n = n };
	while (r == 0 && bench_loop_next(ctx, &lp)) {
		uint64_t t0 = bench_now();
		size_t head = 0, tail = 0; /* handles [head, tail) are pending */
		while (r == 0 && head < RATE_BATCH) {
			if (tail < RATE_BATCH) {
				r = ferry_pool_submit(p, NULL, NULL, &ring[tail]);
				if (r == 0) {
					tail++;
					continue;
				}
				if (r != -EAGAIN) {
					bench_ferry_fail(ctx, r, "ferry_pool_submit");
					break;
				}
				r = 0;
			}
			/* Queue full (or all submitted): collect the oldest. */
			r = ferry_pool_task_wait(ring[head], ctx->peer_timeout_ns);
			ferry_pool_task_free(ring[head++]);
			if (r)
				bench_ferry_fail(ctx, r, "ferry_pool_task_wait");
		}
		for (; head < tail; head++)
			ferry_pool_task_free(ring[head]);
		double secs = bench_ns(bench_now() - t0) / 1e9;
		if (r == 0 && lp.measuring && secs > 0)
			bench_samples_add(out, RATE_BATCH / secs);
	}
	free(ring);
	ferry_pool_destroy(p, ctx->peer_timeout_ns);
	return r;
}

/* ---- piscina, when present ---- */

static const char piscina_main[] =
	"const path = require('path');\n"
	"let Piscina;\n"
	"try { Piscina = require('piscina'); } catch (e) { process.exit(77); }\n"
	"Piscina = Piscina.Piscina || Piscina;\n"
	"const pool = new Piscina({ filename: path.join(__dirname, 'task.js'),\n"
	"                           minThreads: 2, maxThreads: 2 });\n"
	"const batch = +process.argv[2], rounds = +process.argv[3];\n"
	"(async () => {\n"
	"  for (let r = 0; r <= rounds; r++) {\n"
	"    const t0 = process.hrtime.bigint();\n"
	"    const ps = [];\n"
	"    for (let i = 0; i < batch; i++) ps.push(pool.run(null));\n"
	"    await Promise.all(ps);\n"
	"    const ns = Number(process.hrtime.bigint() - t0);\n"
	"    if (r > 0) console.log((batch / (ns / 1e9)).toFixed(0));\n"
	"  }\n"
	"  await pool.destroy();\n"
	"})();\n";

static const char piscina_task[] = "module.exports = () => 0;\n";

/* In node_bench.c: run a Node script, one sample per line it prints. */
struct bench_node_file {
	const char *name;
	const char *text;
};
int bench_node_run(struct bench_ctx *ctx, const struct bench_node_file *files, size_t nfiles,
		   const char *args, struct bench_samples *out);

static int run_piscina(struct bench_ctx *ctx, const struct pb_param *prm, struct bench_samples *out)
{
	(void)prm;
	/* piscina comes from bench/node/setup.sh's install (bench_node_run sets
	 * NODE_PATH to it), else from NODE_PATH as the caller set it. */
	const struct bench_node_file files[] = { { "main.js", piscina_main }, { "task.js", piscina_task } };
	char args[64];
	snprintf(args, sizeof args, "%d %d", RATE_BATCH, ctx->quick ? 5 : 20);
	return bench_node_run(ctx, files, 2, args, out);
}

static int run_pool(struct bench_ctx *ctx, const struct bench_scenario *s, struct bench_samples *out)
{
	const struct pb_param *prm = s->arg;
	switch (prm->kind) {
	case PB_PORT:
		return run_port(ctx, prm, out);
	case PB_RT:
		return run_rt(ctx, prm, out);
	case PB_RATE:
		return run_rate(ctx, prm, out);
	default:
		return run_piscina(ctx, prm, out);
	}
}

static const struct pb_param pb_port_thr = { PB_PORT, FERRY_THREAD };
static const struct pb_param pb_port_prc = { PB_PORT, FERRY_PROCESS };
static const struct pb_param pb_rt_thr = { PB_RT, FERRY_THREAD };
static const struct pb_param pb_rt_prc = { PB_RT, FERRY_PROCESS };
static const struct pb_param pb_rate_thr = { PB_RATE, FERRY_THREAD };
static const struct pb_param pb_rate_prc = { PB_RATE, FERRY_PROCESS };
static const struct pb_param pb_piscina = { PB_PISCINA, FERRY_THREAD };

static const struct bench_scenario pool_scenarios[] = {
	{ .id = "pool.port64.thread", .group = POOL_GROUP, .order = 600, .name = "port round trip 64 B",
	  .backend = "thread", .mode = "adaptive", .run = run_pool, .arg = &pb_port_thr },
	{ .id = "pool.port64.process", .group = POOL_GROUP, .order = 601, .name = "port round trip 64 B",
	  .backend = "process", .mode = "adaptive", .run = run_pool, .arg = &pb_port_prc },
	{ .id = "pool.rt.thread", .group = POOL_GROUP, .order = 610, .name = "pool round trip, 1 worker",
	  .backend = "thread", .mode = "adaptive", .floor = "pool.port64.thread", .run = run_pool,
	  .arg = &pb_rt_thr },
	{ .id = "pool.rt.process", .group = POOL_GROUP, .order = 611, .name = "pool round trip, 1 worker",
	  .backend = "process", .mode = "adaptive", .floor = "pool.port64.process", .run = run_pool,
	  .arg = &pb_rt_prc },
	{ .id = "pool.rate.thread", .group = POOL_GROUP, .order = 620, .name = "pool tasks/s, 2 workers",
	  .backend = "thread", .mode = "adaptive", .unit = BENCH_RATE, .run = run_pool, .arg = &pb_rate_thr },
	{ .id = "pool.rate.process", .group = POOL_GROUP, .order = 621, .name = "pool tasks/s, 2 workers",
	  .backend = "process", .mode = "adaptive", .unit = BENCH_RATE, .run = run_pool, .arg = &pb_rate_prc },
	{ .id = "pool.rate.piscina", .group = POOL_GROUP, .order = 630, .name = "piscina tasks/s, 2 threads",
	  .backend = "thread", .unit = BENCH_RATE, .floor = "pool.rate.thread", .run = run_pool,
	  .arg = &pb_piscina },
};
BENCH_REGISTER(pool_scenarios)
