/*
 * ferry-bench: runs every registered scenario (see bench.h) and prints one
 * table, grouped by scenario, of ferry next to the machine's own floors
 * measured in the same run.
 */
#include "bench.h"

#include "ferry/common.h"

#include <ctype.h>
#include <getopt.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/utsname.h>
#include <unistd.h>

static const char usage_text[] =
	"usage: ferry-bench [--quick] [--json] [--scenario SUBSTR]... [--passes N]\n"
	"                   [--cpus A,B] [--list]\n"
	"\n"
	"Measures ferry's thread and process workers next to the machine's own floors,\n"
	"all in this one run, and prints one table grouped by scenario.\n"
	"\n"
	"options:\n"
	"  --quick            fewer samples: the whole run takes well under a minute\n"
	"                     (default: stable medians in a few minutes)\n"
	"  --json             JSON lines on stdout instead of the table, one object per row\n"
	"                     (fields: id group name backend mode unit n p50 p99 p999 mean\n"
	"                     min max floor floor_p50 ratio error quick)\n"
	"  --scenario SUBSTR  run only rows whose id or group/name/backend/mode contains\n"
	"                     SUBSTR (case-insensitive; repeatable; the floors of the\n"
	"                     chosen rows run too). --list shows the ids.\n"
	"  --passes N         split every row's samples over N passes over all the rows\n"
	"                     (default 3, --quick 1), so that a shared machine's slow\n"
	"                     drift touches floors and ferry alike\n"
	"  --cpus A,B         the main side on CPU A, the peer on CPU B (default: the\n"
	"                     first two CPUs this process may use)\n"
	"  --list             list the scenarios and exit\n"
	"  --help             this text\n"
	"\n"
	"columns:\n"
	"  name      what is measured: a ferry path (\"ferry port\", \"ferry worker\") or a\n"
	"            floor, the same work done with nothing but the kernel and the CPU\n"
	"            (\"atomic spin\", \"futex wait/wake\", \"pipe\", \"unix socket\",\n"
	"            \"pthread_create\", \"fork\")\n"
	"  backend   thread: both sides are threads of one process;\n"
	"            process: the peer is a forked child process\n"
	"  mode      how the waiting side waits: spin (busy-polls a shared word, never\n"
	"            sleeps), block (sleeps in the kernel at once and is woken),\n"
	"            adaptive (ferry's default: spins briefly, then sleeps)\n"
	"  p50       the median of the samples; p99 / p99.9: 99% / 99.9% of the samples\n"
	"            were at or below it (the tail). Latencies are in ns, us (microseconds),\n"
	"            ms; a round trip is one message there and one back, timed on the main\n"
	"            side; a start is from the spawn call until the first message or\n"
	"            signal of the new side is seen. Rows in ops/s (rates) show the slow\n"
	"            side as their tail: p99 is the rate 99% of the samples beat.\n"
	"  n         samples taken, all passes together (each pass after an unmeasured\n"
	"            warm-up); a row stops early when its time budget runs out, so n\n"
	"            can be below the planned count\n"
	"  floor     the row this one is compared with: the cheapest way the machine\n"
	"            does the same kind of work, measured in this run (\"-\": the row is\n"
	"            itself a floor)\n"
	"  ratio     p50 / the floor's p50 (for rates: the floor's p50 / p50), so 1.00x\n"
	"            is as fast as the floor and 2.00x twice its cost; compare ratios, not\n"
	"            absolute figures, across runs and machines\n"
	"\n"
	"rows:\n"
	"  atomic spin      each side stores a counter in its own cache line and\n"
	"                   busy-polls (with pause) for the other's: the floor of any\n"
	"                   shared-memory round trip (it carries no payload)\n"
	"  futex wait/wake  the same words, but each side sleeps in FUTEX_WAIT (shared\n"
	"                   futex) and is woken by FUTEX_WAKE: the floor of a blocking\n"
	"                   round trip; on a VM most of it is waking a halted vCPU\n"
	"  pipe, unix socket  64 bytes written and read back over two pipes / an\n"
	"                   AF_UNIX stream socketpair (compared with the futex)\n"
	"  pthread_create, fork  from the call until the parent, spinning, sees the\n"
	"                   flag the new thread / child sets; join and reap not counted\n"
	"  ferry port       ferry_port_post_bytes + ferry_port_recv of 64 bytes to an\n"
	"                   echo worker (ferry_worker_spawn), both sides in the row's\n"
	"                   wait mode; the worker pins itself to the peer core\n"
	"  ferry worker     ferry_worker_spawn until the parent's ferry_port_recv (in\n"
	"                   spin mode) returns the message the worker posts first;\n"
	"                   join and destroy not counted\n"
	"\n"
	"The header names the CPU, the cores used and the clock: the TSC when it is\n"
	"invariant (FERRY_BENCH_CLOCK=mono forces CLOCK_MONOTONIC), and what one read\n"
	"of it costs (included in every sample once).\n"
	"\n"
	"Both sides of a round trip are pinned, each to its own core (with one CPU they\n"
	"share it and spinners yield). Start rows leave the parent unpinned, so the new\n"
	"thread or process lands where the scheduler puts it. Progress goes to stderr.\n"
	"ferry-bench never fails on a slow result: it exits 0 unless a row could not be\n"
	"measured (a setup call failed or a peer was lost); that row shows the error,\n"
	"the others are still measured, and the exit status is 1.\n";

struct row {
	const struct bench_scenario *s;
	int selected;
	int err;
	char msg[256];
	double secs;
	struct bench_samples samples; /* all passes */
	struct bench_stats st;
	const struct row *floor;
};

static struct bench_ctx ctx;

static int cmp_scenario(const void *a, const void *b)
{
	const struct bench_scenario *x = *(const struct bench_scenario *const *)a;
	const struct bench_scenario *y = *(const struct bench_scenario *const *)b;
	if (x->order != y->order)
		return (x->order > y->order) - (x->order < y->order);
	return 0;
}

static const char *dash(const char *s)
{
	return s && *s ? s : "-";
}

static void label(const struct bench_scenario *s, char *buf, size_t len)
{
	snprintf(buf, len, "%s/%s/%s/%s", dash(s->group), dash(s->name), dash(s->backend),
		 dash(s->mode));
}

static int matches(const struct bench_scenario *s, char **filters, int nfilters)
{
	char buf[512];
	label(s, buf, sizeof buf);
	for (int i = 0; i < nfilters; i++)
		if (strcasestr(s->id, filters[i]) || strcasestr(buf, filters[i]))
			return 1;
	return 0;
}

/* ---- formatting ---- */

static void fmt_scaled(char *buf, size_t len, double v, const char *const units[4], double step)
{
	int u = 0;
	while (u < 3 && v >= step * 0.9995) {
		v /= step;
		u++;
	}
	if (v < 9.995)
		snprintf(buf, len, "%.2f %s", v, units[u]);
	else if (v < 99.95)
		snprintf(buf, len, "%.1f %s", v, units[u]);
	else
		snprintf(buf, len, "%.0f %s", v, units[u]);
}

static void fmt_value(char *buf, size_t len, double v, enum bench_unit unit)
{
	static const char *const t[4] = { "ns", "us", "ms", "s" };
	static const char *const r[4] = { "/s", "k/s", "M/s", "G/s" };
	if (unit == BENCH_RATE)
		fmt_scaled(buf, len, v, r, 1000.0);
	else if (v >= 1e9)
		snprintf(buf, len, "%.2f s", v / 1e9);
	else
		fmt_scaled(buf, len, v, t, 1000.0);
}

static int row_ratio(const struct row *r, double *ratio)
{
	const struct row *f = r->floor;
	if (!f || r->err || f->err || !r->st.n || !f->st.n || r->st.p50 <= 0 || f->st.p50 <= 0)
		return 0;
	*ratio = r->s->unit == BENCH_RATE ? f->st.p50 / r->st.p50 : r->st.p50 / f->st.p50;
	return 1;
}

static void floor_label(const struct bench_scenario *s, char *buf, size_t len)
{
	if (!s->floor)
		snprintf(buf, len, "-");
	else
		snprintf(buf, len, "%s", s->floor);
}

static void floor_name(const struct row *r, char *buf, size_t len)
{
	if (r->floor)
		snprintf(buf, len, "%s/%s", dash(r->floor->s->name), dash(r->floor->s->backend));
	else
		floor_label(r->s, buf, len);
}

static void print_table(const struct row *rows, size_t nrows)
{
	int wn = 4, wb = 7, wm = 4, wf = 5, wv = 8;
	for (size_t i = 0; i < nrows; i++) {
		const struct row *r = &rows[i];
		if (!r->selected)
			continue;
		char fb[256];
		floor_name(r, fb, sizeof fb);
		int l;
		if ((l = (int)strlen(dash(r->s->name))) > wn)
			wn = l;
		if ((l = (int)strlen(dash(r->s->backend))) > wb)
			wb = l;
		if ((l = (int)strlen(dash(r->s->mode))) > wm)
			wm = l;
		if ((l = (int)strlen(fb)) > wf)
			wf = l;
	}
	const char *group = NULL;
	for (size_t i = 0; i < nrows; i++) {
		const struct row *r = &rows[i];
		if (!r->selected)
			continue;
		if (!group || strcmp(group, dash(r->s->group)) != 0) {
			group = dash(r->s->group);
			printf("\n%s\n", group);
			printf("  %-*s  %-*s  %-*s  %*s  %*s  %*s  %8s  %-*s  %7s\n", wn, "name", wb,
			       "backend", wm, "mode", wv, "p50", wv, "p99", wv, "p99.9", "n", wf,
			       "floor", "ratio");
		}
		printf("  %-*s  %-*s  %-*s  ", wn, dash(r->s->name), wb, dash(r->s->backend), wm,
		       dash(r->s->mode));
		if (r->err) {
			printf("error: %s\n", r->msg);
			continue;
		}
		char a[32], b[32], c[32], fb[256], rb[32];
		fmt_value(a, sizeof a, r->st.p50, r->s->unit);
		fmt_value(b, sizeof b, r->st.p99, r->s->unit);
		fmt_value(c, sizeof c, r->st.p999, r->s->unit);
		floor_name(r, fb, sizeof fb);
		double ratio;
		if (row_ratio(r, &ratio))
			snprintf(rb, sizeof rb, "%.2fx", ratio);
		else
			snprintf(rb, sizeof rb, "-");
		printf("%*s  %*s  %*s  %8zu  %-*s  %7s\n", wv, a, wv, b, wv, c, r->st.n, wf, fb, rb);
	}
}

static void json_str(const char *s)
{
	if (!s) {
		fputs("null", stdout);
		return;
	}
	putchar('"');
	for (; *s; s++) {
		unsigned char ch = (unsigned char)*s;
		if (ch == '"' || ch == '\\')
			printf("\\%c", ch);
		else if (ch < 0x20)
			printf("\\u%04x", ch);
		else
			putchar(ch);
	}
	putchar('"');
}

static void json_num(const char *key, double v, int present)
{
	printf(",\"%s\":", key);
	if (present)
		printf("%.6g", v);
	else
		fputs("null", stdout);
}

static void print_json(const struct row *rows, size_t nrows)
{
	for (size_t i = 0; i < nrows; i++) {
		const struct row *r = &rows[i];
		if (!r->selected)
			continue;
		int ok = !r->err && r->st.n;
		fputs("{\"id\":", stdout);
		json_str(r->s->id);
		fputs(",\"group\":", stdout);
		json_str(r->s->group);
		fputs(",\"name\":", stdout);
		json_str(r->s->name);
		fputs(",\"backend\":", stdout);
		json_str(r->s->backend);
		fputs(",\"mode\":", stdout);
		json_str(r->s->mode);
		printf(",\"unit\":\"%s\",\"n\":%zu", r->s->unit == BENCH_RATE ? "ops/s" : "ns",
		       ok ? r->st.n : 0);
		json_num("p50", r->st.p50, ok);
		json_num("p99", r->st.p99, ok);
		json_num("p999", r->st.p999, ok);
		json_num("mean", r->st.mean, ok);
		json_num("min", r->st.min, ok);
		json_num("max", r->st.max, ok);
		fputs(",\"floor\":", stdout);
		json_str(r->s->floor);
		double ratio = 0;
		int has_ratio = row_ratio(r, &ratio);
		json_num("floor_p50", has_ratio ? r->floor->st.p50 : 0, has_ratio);
		json_num("ratio", ratio, has_ratio);
		fputs(",\"error\":", stdout);
		json_str(r->err ? r->msg : NULL);
		printf(",\"quick\":%s}\n", ctx.quick ? "true" : "false");
	}
}

static void print_header(size_t nsel)
{
	struct utsname u;
	char model[128] = "unknown CPU";
	FILE *f = fopen("/proc/cpuinfo", "r");
	if (f) {
		char line[512];
		while (fgets(line, sizeof line, f)) {
			char *c = strchr(line, ':');
			if (strncmp(line, "model name", 10) == 0 && c) {
				c++;
				while (*c == ' ')
					c++;
				c[strcspn(c, "\n")] = 0;
				snprintf(model, sizeof model, "%s", c);
				break;
			}
		}
		fclose(f);
	}
	if (uname(&u) != 0)
		strcpy(u.release, "?");
	time_t now = time(NULL);
	char date[64];
	strftime(date, sizeof date, "%Y-%m-%d %H:%M %Z", localtime(&now));
	char clk[96];
	if (bench_clock.tsc)
		snprintf(clk, sizeof clk, "TSC %.3f GHz, one read %.0f ns", bench_clock.ghz,
			 bench_clock.overhead_ns);
	else
		snprintf(clk, sizeof clk, "CLOCK_MONOTONIC, one read %.0f ns",
			 bench_clock.overhead_ns);
	printf("ferry-bench %s (%s run: %zu row%s, %d pass%s), %s\n", ferry_version(),
	       ctx.quick ? "quick" : "full", nsel, nsel == 1 ? "" : "s", ctx.passes,
	       ctx.passes == 1 ? "" : "es", date);
	int ncpu = CPU_COUNT(&ctx.allowed);
	printf("machine: %s, %d CPU%s allowed, Linux %s; ", model, ncpu, ncpu == 1 ? "" : "s",
	       u.release);
	if (ctx.single_cpu)
		printf("one CPU: both sides on cpu %d\n", ctx.cpu_main);
	else
		printf("main on cpu %d, peer on cpu %d\n", ctx.cpu_main, ctx.cpu_peer);
	double load = -1;
	f = fopen("/proc/loadavg", "r");
	if (f) {
		if (fscanf(f, "%lf", &load) != 1)
			load = -1;
		fclose(f);
	}
	printf("clock: %s; load average %.2f at start.\n", clk, load);
	printf("ratio = p50 / the floor's p50, both measured in this run (--help explains all).\n");
	if (load > 0.5 * ncpu)
		fprintf(stderr, "ferry-bench: the machine is busy (load %.2f on %d CPUs): "
			"expect noisy figures; compare ratios\n", load, ncpu);
}

static int parse_cpus(const char *s, int *a, int *b)
{
	char *end;
	long x = strtol(s, &end, 10);
	if (end == s || *end != ',')
		return -1;
	const char *s2 = end + 1;
	long y = strtol(s2, &end, 10);
	if (end == s2 || *end || x < 0 || y < 0 || x >= CPU_SETSIZE || y >= CPU_SETSIZE)
		return -1;
	*a = (int)x;
	*b = (int)y;
	return 0;
}

static int init_ctx(const char *cpus)
{
	if (sched_getaffinity(0, sizeof ctx.allowed, &ctx.allowed) != 0) {
		fprintf(stderr, "ferry-bench: sched_getaffinity: %s\n", strerror(errno));
		return -1;
	}
	int first = -1, second = -1;
	for (int c = 0; c < CPU_SETSIZE; c++) {
		if (!CPU_ISSET(c, &ctx.allowed))
			continue;
		if (first < 0)
			first = c;
		else if (second < 0)
			second = c;
	}
	if (cpus) {
		if (parse_cpus(cpus, &first, &second) != 0 || !CPU_ISSET(first, &ctx.allowed) ||
		    !CPU_ISSET(second, &ctx.allowed)) {
			fprintf(stderr, "ferry-bench: --cpus %s: two allowed CPUs, as A,B\n", cpus);
			return -2;
		}
	}
	ctx.cpu_main = first;
	ctx.cpu_peer = second >= 0 ? second : first;
	ctx.single_cpu = ctx.cpu_peer == ctx.cpu_main;
	ctx.peer_timeout_ns = 5LL * 1000 * 1000 * 1000;
	if (ctx.passes <= 0)
		ctx.passes = ctx.quick ? 1 : 3;
	/* A row's time budget, all passes together. */
	ctx.row_budget_ns = (ctx.quick ? 4LL : 30LL) * 1000 * 1000 * 1000 / ctx.passes;
	return 0;
}

int main(int argc, char **argv)
{
	enum { OPT_SCENARIO = 256, OPT_CPUS, OPT_LIST, OPT_PASSES };
	static const struct option longopts[] = {
		{ "quick", no_argument, NULL, 'q' },
		{ "json", no_argument, NULL, 'j' },
		{ "scenario", required_argument, NULL, OPT_SCENARIO },
		{ "cpus", required_argument, NULL, OPT_CPUS },
		{ "list", no_argument, NULL, OPT_LIST },
		{ "passes", required_argument, NULL, OPT_PASSES },
		{ "help", no_argument, NULL, 'h' },
		{ NULL, 0, NULL, 0 },
	};
	char *filters[64];
	int nfilters = 0, json = 0, list = 0, c;
	const char *cpus = NULL;
	while ((c = getopt_long(argc, argv, "qjh", longopts, NULL)) != -1) {
		switch (c) {
		case 'q':
			ctx.quick = 1;
			break;
		case 'j':
			json = 1;
			break;
		case OPT_SCENARIO:
			if (nfilters < 64)
				filters[nfilters++] = optarg;
			break;
		case OPT_CPUS:
			cpus = optarg;
			break;
		case OPT_LIST:
			list = 1;
			break;
		case OPT_PASSES: {
			char *end;
			long v = strtol(optarg, &end, 10);
			if (end == optarg || *end || v < 1 || v > 100) {
				fprintf(stderr, "ferry-bench: --passes %s: a count from 1 to 100\n",
					optarg);
				return 2;
			}
			ctx.passes = (int)v;
			break;
		}
		case 'h':
			fputs(usage_text, stdout);
			return 0;
		default:
			fputs("try: ferry-bench --help\n", stderr);
			return 2;
		}
	}
	if (optind < argc) {
		fprintf(stderr, "ferry-bench: unexpected argument '%s' (try --help)\n", argv[optind]);
		return 2;
	}
	if (bench__dropped)
		fprintf(stderr, "ferry-bench: %zu scenarios beyond BENCH_MAX_SCENARIOS left out\n",
			bench__dropped);

	/* Scenarios in (order, registration) order; qsort is not stable, so sort
	 * a copy with the registration index as the tie-break. */
	size_t nrows = bench__count;
	struct row *rows = calloc(nrows ? nrows : 1, sizeof *rows);
	if (!rows)
		return 1;
	for (size_t i = 0; i < nrows; i++)
		rows[i].s = bench__table[i];
	for (size_t i = 1; i < nrows; i++) /* insertion sort: stable, and n is small */
		for (size_t j = i; j > 0 && cmp_scenario(&rows[j - 1].s, &rows[j].s) > 0; j--) {
			struct row t = rows[j];
			rows[j] = rows[j - 1];
			rows[j - 1] = t;
		}

	if (list) {
		for (size_t i = 0; i < nrows; i++) {
			char buf[512];
			label(rows[i].s, buf, sizeof buf);
			printf("%-28s %s\n", rows[i].s->id, buf);
		}
		return 0;
	}

	/* Resolve floors; a floor that names no row is reported, not fatal. */
	for (size_t i = 0; i < nrows; i++) {
		for (size_t j = 0; j < i; j++)
			if (strcmp(rows[i].s->id, rows[j].s->id) == 0)
				fprintf(stderr, "ferry-bench: scenario id '%s' registered twice\n",
					rows[i].s->id);
		if (!rows[i].s->floor)
			continue;
		for (size_t j = 0; j < nrows; j++)
			if (strcmp(rows[j].s->id, rows[i].s->floor) == 0)
				rows[i].floor = &rows[j];
		if (!rows[i].floor)
			fprintf(stderr, "ferry-bench: scenario '%s' names unknown floor '%s'\n",
				rows[i].s->id, rows[i].s->floor);
	}
	size_t nsel = 0;
	for (size_t i = 0; i < nrows; i++)
		rows[i].selected = nfilters == 0 || matches(rows[i].s, filters, nfilters);
	for (int changed = 1; changed;) {
		changed = 0;
		for (size_t i = 0; i < nrows; i++)
			if (rows[i].selected && rows[i].floor && !rows[i].floor->selected) {
				((struct row *)rows[i].floor)->selected = 1;
				changed = 1;
			}
	}
	for (size_t i = 0; i < nrows; i++)
		nsel += rows[i].selected != 0;
	if (nsel == 0) {
		fprintf(stderr, "ferry-bench: no scenario matches (try --list)\n");
		return 2;
	}

	int r = init_ctx(cpus);
	if (r)
		return r == -2 ? 2 : 1;
	/* A peer that dies must show as an error on its row, not kill us. */
	signal(SIGPIPE, SIG_IGN);
	bench__clock_init();
	if (!json) {
		print_header(nsel);
		fflush(stdout);
	}

	size_t done = 0;
	int failed = 0;
	uint64_t run_t0 = bench_mono_ns();
	for (ctx.pass = 0; ctx.pass < ctx.passes; ctx.pass++) {
		done = 0;
		for (size_t i = 0; i < nrows; i++) {
			struct row *row = &rows[i];
			if (!row->selected)
				continue;
			done++;
			if (row->err)
				continue; /* failed in an earlier pass */
			const struct bench_scenario *s = row->s;
			if (ctx.passes > 1)
				fprintf(stderr, "[%d/%d %2zu/%zu] ", ctx.pass + 1, ctx.passes, done, nsel);
			else
				fprintf(stderr, "[%2zu/%zu] ", done, nsel);
			fprintf(stderr, "%s: %s, %s, %s ... ", dash(s->group), dash(s->name),
				dash(s->backend), dash(s->mode));
			fflush(stderr);
			ctx.err[0] = 0;
			size_t before = row->samples.n;
			double secs = 0;
			r = bench_pin(&ctx, BENCH_MAIN);
			if (r) {
				bench_fail(&ctx, r, "sched_setaffinity(cpu %d)", ctx.cpu_main);
			} else {
				uint64_t t0 = bench_now();
				ctx.row_deadline = t0 + bench_ticks(ctx.row_budget_ns);
				ctx.warm_deadline = t0 + bench_ticks(ctx.row_budget_ns / 5);
				fflush(NULL);
				r = s->run ? s->run(&ctx, s, &row->samples) : -ENOSYS;
				secs = bench_ns(bench_now() - t0) / 1e9;
				row->secs += secs;
				if (r == 0 && row->samples.n == before)
					r = bench_fail(&ctx, -ENODATA, "no samples");
			}
			if (r) {
				row->err = r;
				snprintf(row->msg, sizeof row->msg, "%s",
					 ctx.err[0] ? ctx.err : strerror(-r));
				fprintf(stderr, "error: %s\n", row->msg);
				failed = 1;
				continue;
			}
			/* This pass's median, for the progress line only. */
			struct bench_samples part = { row->samples.v + before,
						      row->samples.n - before,
						      row->samples.n - before };
			struct bench_stats st;
			bench_stats_of(&part, s->unit, &st);
			char a[32];
			fmt_value(a, sizeof a, st.p50, s->unit);
			fprintf(stderr, "p50 %s (n=%zu, %.1f s)\n", a, st.n, secs);
		}
	}
	for (size_t i = 0; i < nrows; i++) {
		if (rows[i].selected && !rows[i].err)
			bench_stats_of(&rows[i].samples, rows[i].s->unit, &rows[i].st);
		free(rows[i].samples.v);
		rows[i].samples.v = NULL;
	}
	bench_pin(&ctx, BENCH_ANY);
	fprintf(stderr, "ferry-bench: %zu row%s, %d pass%s, in %.1f s\n", nsel, nsel == 1 ? "" : "s",
		ctx.passes, ctx.passes == 1 ? "" : "es", (double)(bench_mono_ns() - run_t0) / 1e9);

	if (json)
		print_json(rows, nrows);
	else
		print_table(rows, nrows);
	fflush(stdout);
	free(rows);
	return failed;
}
