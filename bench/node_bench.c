/*
 * Node peers (issues 3, 5, 8): Node's worker_threads and child_process
 * measured in the same run as ferry, each row in the group of the ferry rows
 * it compares with, its floor the ferry row (so the ratio column says how
 * many times ferry's time Node takes):
 *   round trip, 64 B           a Uint8Array(64) postMessage'd to a worker
 *                              that posts it back          (order 120)
 *   worker start               new Worker() until its 'online' event
 *                              (order 220); child_process.fork() until the
 *                              child's first message        (order 221)
 *   1 KiB structured object    the object of payload_bench.c's PK_OBJECT,
 *                              same fields, values and order, posted to a
 *                              worker that posts it back    (order 372)
 * Node times itself (process.hrtime.bigint around each operation) and prints
 * one sample per line; the row reads them. Each row writes its scripts into
 * a temporary directory and runs `node`; without node in PATH it is skipped
 * with a note. Node's threads may use every allowed CPU (its worker cannot
 * be pinned like ferry's), so these rows leave the main side unpinned.
 *
 * bench_node_run() also serves pool_bench.c's piscina row: piscina is found
 * in the install of bench/node/setup.sh (see bench_node_modules).
 */
#include "bench.h"

#include <limits.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <unistd.h>

/* Shared with pool_bench.c (declared there too). */
struct bench_node_file {
	const char *name; /* in the script directory; the first one runs */
	const char *text;
};
int bench_node_run(struct bench_ctx *ctx, const struct bench_node_file *files, size_t nfiles,
		   const char *args, struct bench_samples *out);

#define NODE_EXIT_NO_NODE 78
#define NODE_EXIT_NO_MODULE 77
#define NODE_MAX_FILES 4

/*
 * Where bench/node/setup.sh installed the npm peers: $FERRY_BENCH_NODE_DIR,
 * else <the build directory of this ferry-bench>/node (the program is
 * <build>/bench/ferry-bench: scripts/bench sets up build-release/node).
 * Returns its node_modules in @buf, or NULL when there is none.
 */
static const char *bench_node_modules(char *buf, size_t len)
{
	const char *env = getenv("FERRY_BENCH_NODE_DIR");
	int k;
	if (env && *env) {
		k = snprintf(buf, len, "%s/node_modules", env);
	} else {
		char exe[PATH_MAX];
		ssize_t n = readlink("/proc/self/exe", exe, sizeof exe - 1);
		if (n <= 0)
			return NULL;
		exe[n] = 0;
		for (int up = 0; up < 2; up++) { /* strip "/ferry-bench", then "/bench" */
			char *slash = strrchr(exe, '/');
			if (!slash)
				return NULL;
			*slash = 0;
		}
		k = snprintf(buf, len, "%s/node/node_modules", exe);
	}
	if (k < 0 || (size_t)k >= len)
		return NULL;
	struct stat st;
	return stat(buf, &st) == 0 && S_ISDIR(st.st_mode) ? buf : NULL;
}

static int write_file(const char *path, const char *text)
{
	FILE *f = fopen(path, "w");
	if (!f)
		return -errno;
	int r = fputs(text, f) < 0 ? -EIO : 0;
	if (fclose(f) && !r)
		r = -EIO;
	return r;
}

/* The first line of @path (Node's stderr), for an error message. */
static void first_line(const char *path, char *buf, size_t len)
{
	buf[0] = 0;
	FILE *f = fopen(path, "r");
	if (!f)
		return;
	while (fgets(buf, (int)len, f)) {
		buf[strcspn(buf, "\n")] = 0;
		if (buf[0] && !strstr(buf, "ExperimentalWarning") && strncmp(buf, "(Use `node", 10))
			break;
		buf[0] = 0;
	}
	fclose(f);
}

/*
 * Write @files into a fresh directory, run `node <first file> @args` there
 * (bounded by `timeout`), and add every number it prints (one per line) to
 * @out. Skipped rows (no node; an npm module missing: the script exits 77)
 * and failures come back as errors with bench_fail's message.
 */
int bench_node_run(struct bench_ctx *ctx, const struct bench_node_file *files, size_t nfiles,
		   const char *args, struct bench_samples *out)
{
	if (nfiles < 1 || nfiles > NODE_MAX_FILES)
		return bench_failx(ctx, -EINVAL, "bench_node_run: %zu files", nfiles);
	char dir[] = "/tmp/ferry-node-XXXXXX";
	if (!mkdtemp(dir))
		return bench_fail(ctx, -errno, "mkdtemp");
	char path[NODE_MAX_FILES][96], errp[96], cmd[PATH_MAX + 512], mods[PATH_MAX];
	int r = 0;
	for (size_t i = 0; i < nfiles; i++) {
		snprintf(path[i], sizeof path[i], "%s/%s", dir, files[i].name);
		if (r == 0)
			r = write_file(path[i], files[i].text);
	}
	snprintf(errp, sizeof errp, "%s/stderr", dir);
	const char *nm = bench_node_modules(mods, sizeof mods);
	/* Node's main thread and its workers go where the scheduler puts them. */
	if (r == 0)
		r = bench_pin(ctx, BENCH_ANY);
	int limit = (int)(ctx->row_budget_ns / 1000000000) * 2 + 30;
	snprintf(cmd, sizeof cmd,
		 "command -v node >/dev/null 2>&1 || exit %d; cd %s && "
		 "NODE_PATH=\"%s%s${NODE_PATH:-}\" timeout -s KILL %d node %s %s 2>%s",
		 NODE_EXIT_NO_NODE, dir, nm ? nm : "", nm ? ":" : "", limit, path[0], args, errp);
	FILE *f = r == 0 ? popen(cmd, "r") : NULL;
	if (r == 0 && !f)
		r = -errno;
	char line[64];
	size_t got = 0;
	while (f && fgets(line, sizeof line, f)) {
		char *end;
		double v = strtod(line, &end);
		if (end != line && v > 0) {
			bench_samples_add(out, v);
			got++;
		}
	}
	int st = f ? pclose(f) : 0;
	char err[160];
	first_line(errp, err, sizeof err);
	for (size_t i = 0; i < nfiles; i++)
		unlink(path[i]);
	unlink(errp);
	rmdir(dir);
	if (r)
		return bench_fail(ctx, r, "setting up the node script");
	int code = WIFEXITED(st) ? WEXITSTATUS(st) : -1;
	if (code == NODE_EXIT_NO_NODE)
		return bench_failx(ctx, -ENOENT, "skipped: node is not installed");
	if (code == NODE_EXIT_NO_MODULE)
		return bench_failx(ctx, -ENOENT,
				   "skipped: piscina is not installed (sh bench/node/setup.sh "
				   "build-release/node installs it; or set FERRY_BENCH_NODE_DIR)");
	if (code != 0 || got == 0)
		return bench_failx(ctx, -EPROTO, "the node script failed (%s %d)%s%s",
				   WIFEXITED(st) ? "exit" : "status", WIFEXITED(st) ? code : st,
				   err[0] ? ": " : "", err);
	return 0;
}

/* ---- the scripts ---- */

/* The object of payload_bench.c's obj_build(), field for field: int64
 * fields are Numbers (exact: all below 2^53) except INT64_MIN, a BigInt;
 * "hash" (bytes) a Uint8Array; "hist" (a u32 typed view) a Uint32Array. */
#define JS_OBJECT                                                                              \
	"function makeObject() {\n"                                                             \
	"  const skus = ['A-100', 'B-200', 'C-300', 'D-400'];\n"                                \
	"  return {\n"                                                                          \
	"    id: 1234567890123, seq: 42, delta: -17, min: -9223372036854775808n,\n"            \
	"    created: 1700000000, updated: 1700003600, version: 3, retries: 0, priority: 5,\n"  \
	"    ttl: 3600, price: 19.99, ratio: 0.125, lat: 47.3769, lon: 8.5417, temp: -3.5,\n"  \
	"    score: 98.6, zero: -0, active: true, deleted: false, parent: null,\n"              \
	"    name: 'ferry structured clone bench', type: 'order', status: 'shipped',\n"        \
	"    currency: 'CHF', city: 'Z\\u00fcrich', email: 'alice@example.org',\n"              \
	"    agent: 'ferry-bench/1.0 (linux; x86_64)',\n"                                      \
	"    note: 'leave at the door if nobody answers; ring twice, then call',\n"            \
	"    tags: ['fast', 'small', 'mixed', 'clone', 'bench'], dims: [1.5, 2.25, 3.125],\n"  \
	"    address: { street: 'Bahnhofstrasse 1', zip: 8001, country: 'CH', floor: 4 },\n"  \
	"    items: skus.map((sku, i) => ({ sku, qty: i + 1, price: 4.5 * (i + 1) })),\n"      \
	"    hash: Uint8Array.from({ length: 32 }, (_, i) => (i * 37 + 11) & 255),\n"          \
	"    hist: new Uint32Array([1, 2, 3, 5, 8, 13, 21, 34]),\n"                            \
	"    locale: 'de-CH', session: '3f2a9c1e-7b44-4d0a-9e61-0c5d2b8f7a13', weight: 1.75,\n" \
	"    inf: Infinity, discount: 0.15, phone: '+41 44 555 01 23',\n"                      \
	"    referrer: 'https://example.org/shop/checkout?step=3',\n"                          \
	"    meta: { source: 'bench', region: 'eu-central-2', build: 20261121, debug: false },\n" \
	"  };\n"                                                                                \
	"}\n"

/* argv: kind (bytes|object), samples, warm-up rounds, budget in ms. */
static const char js_rt[] =
	"const { Worker } = require('worker_threads');\n" JS_OBJECT
	"const [kind, n, warm, budget] = [process.argv[2], +process.argv[3], +process.argv[4],\n"
	"                                 +process.argv[5]];\n"
	"const msg = kind === 'object' ? makeObject() : new Uint8Array(64).fill(0x5a);\n"
	"const w = new Worker(\"const { parentPort } = require('worker_threads');\\n\" +\n"
	"  \"parentPort.on('message', (m) => parentPort.postMessage(m));\", { eval: true });\n"
	"const out = [];\n"
	"let i = 0, t0 = 0n, deadline = 0n;\n"
	"w.on('message', () => {\n"
	"  const t1 = process.hrtime.bigint();\n"
	"  if (i === warm) deadline = t1 + BigInt(budget) * 1000000n;\n"
	"  if (i >= warm) out.push(Number(t1 - t0));\n"
	"  i++;\n"
	"  if (out.length >= n || (i > warm && out.length >= 3 && t1 > deadline)) {\n"
	"    process.stdout.write(out.join('\\n') + '\\n', () => w.terminate());\n"
	"    return;\n"
	"  }\n"
	"  t0 = process.hrtime.bigint();\n"
	"  w.postMessage(msg);\n"
	"});\n"
	"w.on('error', (e) => { console.error(String(e)); process.exit(3); });\n"
	"w.on('online', () => { t0 = process.hrtime.bigint(); w.postMessage(msg); });\n";

/* argv: kind (worker|fork), samples, warm-up rounds, budget in ms. */
static const char js_start[] =
	"const { Worker } = require('worker_threads');\n"
	"const { fork } = require('child_process');\n"
	"const path = require('path');\n"
	"const [kind, n, warm, budget] = [process.argv[2], +process.argv[3], +process.argv[4],\n"
	"                                 +process.argv[5]];\n"
	"function one() {\n"
	"  return new Promise((resolve, reject) => {\n"
	"    const t0 = process.hrtime.bigint();\n"
	"    let ns = 0;\n"
	"    if (kind === 'worker') {\n"
	"      const w = new Worker('', { eval: true });\n"
	"      w.once('online', () => { ns = Number(process.hrtime.bigint() - t0); });\n"
	"      w.once('error', reject);\n"
	"      w.once('exit', () => (ns ? resolve(ns) : reject(new Error('no online event'))));\n"
	"    } else {\n"
	"      const c = fork(path.join(__dirname, 'child.js'), [], { stdio: ['ignore', 'ignore', 'inherit', 'ipc'] });\n"
	"      c.once('message', () => { ns = Number(process.hrtime.bigint() - t0); });\n"
	"      c.once('error', reject);\n"
	"      c.once('exit', () => (ns ? resolve(ns) : reject(new Error('no message from the child'))));\n"
	"    }\n"
	"  });\n"
	"}\n"
	"(async () => {\n"
	"  for (let i = 0; i < warm; i++) await one();\n"
	"  const out = [], end = process.hrtime.bigint() + BigInt(budget) * 1000000n;\n"
	"  while (out.length < n && (out.length < 3 || process.hrtime.bigint() < end))\n"
	"    out.push(await one());\n"
	"  process.stdout.write(out.join('\\n') + '\\n');\n"
	"})().catch((e) => { console.error(String(e)); process.exit(3); });\n";

static const char js_child[] = "process.send('up', () => process.disconnect());\n";

/* ---- rows ---- */

enum node_kind { NK_RT64, NK_OBJECT, NK_WORKER, NK_FORK };

static int run_node(struct bench_ctx *ctx, const struct bench_scenario *s, struct bench_samples *out)
{
	enum node_kind kind = (enum node_kind)(intptr_t)s->arg;
	int start = kind == NK_WORKER || kind == NK_FORK;
	size_t n = bench_count(ctx, start ? BENCH_START : BENCH_WAKE);
	size_t warm = start ? 2 : bench_warmup_count(ctx, BENCH_WAKE);
	if (bench_samples_reserve(out, n))
		return bench_fail(ctx, -ENOMEM, "samples");
	/* What is left of the row's budget (Node's own start-up comes out of it). */
	uint64_t now = bench_now();
	double left_ms = ctx->row_deadline > now ? bench_ns(ctx->row_deadline - now) / 1e6 : 0;
	static const char *const kinds[] = { "bytes", "object", "worker", "fork" };
	char args[128];
	snprintf(args, sizeof args, "%s %zu %zu %.0f", kinds[kind], n, warm, left_ms > 100 ? left_ms - 100 : 1);
	const struct bench_node_file rt[] = { { "main.js", js_rt } };
	const struct bench_node_file st[] = { { "main.js", js_start }, { "child.js", js_child } };
	return start ? bench_node_run(ctx, st, 2, args, out) : bench_node_run(ctx, rt, 1, args, out);
}

#define RT_GROUP "round trip, 64 B"
#define START_GROUP "worker start to first message"
#define G_OBJECT "payloads: 1 KiB structured object clone round trip (target < 1.7 us, 50x Node 20)"

static const struct bench_scenario node_scenarios[] = {
	{ .id = "rt64.node.thread", .group = RT_GROUP, .order = 120, .name = "Node postMessage",
	  .backend = "thread", .mode = "block", .floor = "rt64.ferry.adaptive.thread", .run = run_node,
	  .arg = (const void *)(intptr_t)NK_RT64 },
	{ .id = "start.node.worker", .group = START_GROUP, .order = 220, .name = "Node Worker, to 'online'",
	  .backend = "thread", .floor = "start.ferry.thread", .run = run_node,
	  .arg = (const void *)(intptr_t)NK_WORKER },
	{ .id = "start.node.fork", .group = START_GROUP, .order = 221,
	  .name = "Node child_process.fork, to 1st message", .backend = "process",
	  .floor = "start.ferry.process", .run = run_node, .arg = (const void *)(intptr_t)NK_FORK },
	{ .id = "payload.object1k.node", .group = G_OBJECT, .order = 372, .name = "Node postMessage, same object",
	  .backend = "thread", .mode = "block", .floor = "payload.object1k.thread", .run = run_node,
	  .arg = (const void *)(intptr_t)NK_OBJECT },
};
BENCH_REGISTER(node_scenarios)
