/*
 * ferry-bench: runs every registered scenario (see bench.h) and prints one
 * table, grouped by scenario, of ferry next to the machine's own floors
 * measured in the same run.
 */
#include "bench.h"
#include "plot/report.h"

#include "ferry/common.h"

#include <ctype.h>
#include <getopt.h>
#include <math.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <sys/utsname.h>
#include <unistd.h>

static const char usage_text[] =
	"usage: ferry-bench [--quick] [--json] [--out DIR] [--scenario SUBSTR]...\n"
	"                   [--passes N] [--cpus A,B] [--list]\n"
	"\n"
	"Measures ferry's thread and process workers next to the machine's own floors,\n"
	"all in this one run, and prints one table grouped by scenario.\n"
	"\n"
	"options:\n"
	"  --quick            fewer samples, one pass: the whole run is planned to take\n"
	"                     40 s (each row gets an equal share of the time left, 0.1\n"
	"                     to 1 s), under a minute on 2 CPUs; a first look, its tails\n"
	"                     rest on few samples (default: stable medians in a few\n"
	"                     minutes)\n"
	"  --json             JSON lines on stdout instead of the table, one object per row\n"
	"                     (fields: id group name backend mode unit n p50 p99 p999 mean\n"
	"                     min max floor floor_p50 floor_scale ratio secs error quick)\n"
	"  --out DIR          also write the report to DIR (created if missing):\n"
	"                       results.json  one document: the machine (CPU model,\n"
	"                                     nproc, kernel), date, git describe, the\n"
	"                                     command line, every row (the --json\n"
	"                                     fields) and the USL fits\n"
	"                       results.csv   one line per row, a header line, the\n"
	"                                     same fields\n"
	"                       table.txt     the table as printed; table.md the same in\n"
	"                                     Markdown, one table per group\n"
	"                       *.svg         plots drawn by gnuplot (gnuplot-nox), when\n"
	"                                     it is installed: latency (round-trip\n"
	"                                     p50/p99/p99.9 by backend), payloads (clone\n"
	"                                     vs transfer vs shared by size, log-log),\n"
	"                                     rings (ck_ring vs ferry by batch size),\n"
	"                                     pool (tasks/s, piscina when present),\n"
	"                                     scaling (speedup and the USL fits)\n"
	"                       plots/        each plot's gnuplot script and data: redraw\n"
	"                                     with  cd DIR && gnuplot plots/NAME.gp\n"
	"                     The table still goes to stdout.\n"
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
	"            absolute figures, across runs and machines. A floor shown as\n"
	"            \"K x row\" is that row's p50 times K (the scaling rows: see below)\n"
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
	"  object CBOR walk  (group of the 1 KiB object) one thread finds where each\n"
	"                   item of the object's CBOR ends, building nothing: the\n"
	"                   least any decoder of it does (each item's head says\n"
	"                   where the next starts); \"object encode\" and \"object\n"
	"                   decode + free\" are ferry_clone_encode and\n"
	"                   ferry_clone_decode + ferry_value_free of the same\n"
	"                   object, one thread, hot; \"port 1014 B raw\" is its bytes\n"
	"                   as a ferry port round trip: the object's round trip is\n"
	"                   about the raw one plus two encodes and two decodes\n"
	"  map, N workers   (group \"scaling\") a CPU-bound map through a ferry pool of\n"
	"                   N workers, N = 1 .. 2x the CPUs allowed: each item is a\n"
	"                   fixed chain of integer hashing (~200 us on one core,\n"
	"                   calibrated once per run); a sample is one batch's\n"
	"                   items/s (500 items, 250 with --quick). Its floor is the\n"
	"                   backend's 1-worker row times min(N, CPUs): the ratio is\n"
	"                   the ideal speedup over the measured one, 1.00x when every\n"
	"                   core the N workers can use does a full share, 2.00x when\n"
	"                   half is lost to dispatch, contention or crosstalk.\n"
	"                   Under the table, per backend, the Universal Scalability\n"
	"                   Law fitted to the speedups S(N) = X(N) / X(1):\n"
	"                     S(N) = N / (1 + sigma (N-1) + kappa N (N-1))\n"
	"                   sigma: the serial fraction (contention; Amdahl's law is\n"
	"                   kappa = 0), kappa: the crosstalk (coherency: each worker\n"
	"                   pays for every other), N* = sqrt((1 - sigma) / kappa): the\n"
	"                   worker count of the highest throughput (\"no peak\" when\n"
	"                   kappa ~ 0), R^2: how well the curve fits. Other programs\n"
	"                   on the machine take CPU from the workers: on a busy\n"
	"                   machine the speedups (and the fit) are noise.\n"
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
	"the others are still measured, and the exit status is 1. A peer that is not\n"
	"installed (node, piscina, or Concurrency Kit when this program was built)\n"
	"makes its rows say \"skipped\" and is not a failure.\n";

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
	double scale = r->s->floor_scale > 0 ? r->s->floor_scale : 1;
	double fl = f->st.p50 * scale;
	*ratio = r->s->unit == BENCH_RATE ? fl / r->st.p50 : r->st.p50 / fl;
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
	if (r->floor && r->s->floor_scale > 0 && r->s->floor_scale != 1)
		snprintf(buf, len, "%g x %s/%s", r->s->floor_scale, dash(r->floor->s->name),
			 dash(r->floor->s->backend));
	else if (r->floor)
		snprintf(buf, len, "%s/%s", dash(r->floor->s->name), dash(r->floor->s->backend));
	else
		floor_label(r->s, buf, len);
}

/* The three value cells and the ratio of a measured row. */
static void row_cells(const struct row *r, char a[32], char b[32], char c[32], char rb[32])
{
	fmt_value(a, 32, r->st.p50, r->s->unit);
	fmt_value(b, 32, r->st.p99, r->s->unit);
	fmt_value(c, 32, r->st.p999, r->s->unit);
	double ratio;
	if (row_ratio(r, &ratio))
		snprintf(rb, 32, "%.2fx", ratio);
	else
		snprintf(rb, 32, "-");
}

/* A row whose peer is not installed (node, piscina, ck) says "skipped": a
 * note, not a failure; any other message is an error. */
static int row_skipped(const char *msg)
{
	return strncmp(msg, "skipped", 7) == 0;
}

/* What goes before a row's message in the table, Markdown and progress. */
static const char *msg_prefix(const char *msg)
{
	return row_skipped(msg) ? "" : "error: ";
}

/* Does @r start a group (the first row, or a group other than *@group)?
 * Then *@group becomes its group. */
static int new_group(const struct row *r, const char **group)
{
	if (*group && strcmp(*group, dash(r->s->group)) == 0)
		return 0;
	*group = dash(r->s->group);
	return 1;
}

static void print_table(FILE *out, const struct row *rows, size_t nrows)
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
		if (new_group(r, &group)) {
			fprintf(out, "\n%s\n", group);
			fprintf(out, "  %-*s  %-*s  %-*s  %*s  %*s  %*s  %8s  %-*s  %7s\n", wn, "name",
				wb, "backend", wm, "mode", wv, "p50", wv, "p99", wv, "p99.9", "n", wf,
				"floor", "ratio");
		}
		fprintf(out, "  %-*s  %-*s  %-*s  ", wn, dash(r->s->name), wb, dash(r->s->backend),
			wm, dash(r->s->mode));
		if (r->err) {
			fprintf(out, "%s%s\n", msg_prefix(r->msg), r->msg);
			continue;
		}
		char a[32], b[32], c[32], fb[256], rb[32];
		row_cells(r, a, b, c, rb);
		floor_name(r, fb, sizeof fb);
		fprintf(out, "%*s  %*s  %*s  %8zu  %-*s  %7s\n", wv, a, wv, b, wv, c, r->st.n, wf, fb,
			rb);
	}
}

/* A Markdown cell: '|' would end the cell. */
static void md_cell(FILE *out, const char *s)
{
	fputs("| ", out);
	for (; s && *s; s++) {
		if (*s == '|')
			fputs("\\|", out);
		else
			fputc(*s == '\n' ? ' ' : *s, out);
	}
	fputc(' ', out);
}

/* The table in Markdown: one heading and table per group, to paste. */
static void print_markdown(FILE *out, const struct row *rows, size_t nrows)
{
	const char *group = NULL;
	for (size_t i = 0; i < nrows; i++) {
		const struct row *r = &rows[i];
		if (!r->selected)
			continue;
		if (new_group(r, &group)) {
			fprintf(out, "\n**%s**\n\n", group);
			fputs("| name | backend | mode | p50 | p99 | p99.9 | n | floor | ratio |\n"
			      "|---|---|---|--:|--:|--:|--:|---|--:|\n", out);
		}
		md_cell(out, dash(r->s->name));
		md_cell(out, dash(r->s->backend));
		md_cell(out, dash(r->s->mode));
		if (r->err) {
			char e[300];
			snprintf(e, sizeof e, "%s%s", msg_prefix(r->msg), r->msg);
			md_cell(out, e);
			fputs("| | | | | |\n", out);
			continue;
		}
		char a[32], b[32], c[32], fb[256], rb[32], nb[32];
		row_cells(r, a, b, c, rb);
		floor_name(r, fb, sizeof fb);
		snprintf(nb, sizeof nb, "%zu", r->st.n);
		md_cell(out, a);
		md_cell(out, b);
		md_cell(out, c);
		md_cell(out, nb);
		md_cell(out, fb);
		md_cell(out, rb);
		fputs("|\n", out);
	}
}

static void json_str(FILE *out, const char *s)
{
	if (!s) {
		fputs("null", out);
		return;
	}
	fputc('"', out);
	for (; *s; s++) {
		unsigned char ch = (unsigned char)*s;
		if (ch == '"' || ch == '\\')
			fprintf(out, "\\%c", ch);
		else if (ch < 0x20)
			fprintf(out, "\\u%04x", ch);
		else
			fputc(ch, out);
	}
	fputc('"', out);
}

static void json_num(FILE *out, const char *key, double v, int present)
{
	fprintf(out, ",\"%s\":", key);
	if (present && isfinite(v))
		fprintf(out, "%.6g", v);
	else
		fputs("null", out);
}

/* One row as a JSON object (no newline). */
static void json_row(FILE *out, const struct row *r)
{
	int ok = !r->err && r->st.n;
	fputs("{\"id\":", out);
	json_str(out, r->s->id);
	fputs(",\"group\":", out);
	json_str(out, r->s->group);
	fputs(",\"name\":", out);
	json_str(out, r->s->name);
	fputs(",\"backend\":", out);
	json_str(out, r->s->backend);
	fputs(",\"mode\":", out);
	json_str(out, r->s->mode);
	fprintf(out, ",\"unit\":\"%s\",\"n\":%zu", r->s->unit == BENCH_RATE ? "ops/s" : "ns",
		ok ? r->st.n : 0);
	json_num(out, "p50", r->st.p50, ok);
	json_num(out, "p99", r->st.p99, ok);
	json_num(out, "p999", r->st.p999, ok);
	json_num(out, "mean", r->st.mean, ok);
	json_num(out, "min", r->st.min, ok);
	json_num(out, "max", r->st.max, ok);
	fputs(",\"floor\":", out);
	json_str(out, r->s->floor);
	double ratio = 0;
	int has_ratio = row_ratio(r, &ratio);
	json_num(out, "floor_p50", has_ratio ? r->floor->st.p50 : 0, has_ratio);
	json_num(out, "floor_scale", r->s->floor_scale > 0 ? r->s->floor_scale : 1, 1);
	json_num(out, "ratio", ratio, has_ratio);
	json_num(out, "secs", r->secs, 1);
	fputs(",\"error\":", out);
	json_str(out, r->err ? r->msg : NULL);
	fprintf(out, ",\"quick\":%s}", ctx.quick ? "true" : "false");
}

static void print_json(const struct row *rows, size_t nrows)
{
	for (size_t i = 0; i < nrows; i++) {
		if (!rows[i].selected)
			continue;
		json_row(stdout, &rows[i]);
		putchar('\n');
	}
}

/* A CSV field (RFC 4180: quoted when it holds a comma, quote or newline). */
static void csv_str(FILE *out, const char *s, int first)
{
	if (!first)
		fputc(',', out);
	if (!s)
		return;
	if (!strpbrk(s, ",\"\n\r")) {
		fputs(s, out);
		return;
	}
	fputc('"', out);
	for (; *s; s++) {
		if (*s == '"')
			fputc('"', out);
		fputc(*s, out);
	}
	fputc('"', out);
}

static void csv_num(FILE *out, double v, int present)
{
	fputc(',', out);
	if (present && isfinite(v))
		fprintf(out, "%.6g", v);
}

static void print_csv(FILE *out, const struct row *rows, size_t nrows)
{
	fputs("id,group,name,backend,mode,unit,n,p50,p99,p999,mean,min,max,floor,floor_p50,"
	      "floor_scale,ratio,secs,error,quick\n", out);
	for (size_t i = 0; i < nrows; i++) {
		const struct row *r = &rows[i];
		if (!r->selected)
			continue;
		int ok = !r->err && r->st.n;
		csv_str(out, r->s->id, 1);
		csv_str(out, r->s->group, 0);
		csv_str(out, r->s->name, 0);
		csv_str(out, r->s->backend, 0);
		csv_str(out, r->s->mode, 0);
		csv_str(out, r->s->unit == BENCH_RATE ? "ops/s" : "ns", 0);
		fprintf(out, ",%zu", ok ? r->st.n : 0);
		csv_num(out, r->st.p50, ok);
		csv_num(out, r->st.p99, ok);
		csv_num(out, r->st.p999, ok);
		csv_num(out, r->st.mean, ok);
		csv_num(out, r->st.min, ok);
		csv_num(out, r->st.max, ok);
		csv_str(out, r->s->floor, 0);
		double ratio = 0;
		int has_ratio = row_ratio(r, &ratio);
		csv_num(out, has_ratio ? r->floor->st.p50 : 0, has_ratio);
		csv_num(out, r->s->floor_scale > 0 ? r->s->floor_scale : 1, 1);
		csv_num(out, ratio, has_ratio);
		csv_num(out, r->secs, 1);
		csv_str(out, r->err ? r->msg : NULL, 0);
		fprintf(out, ",%s\n", ctx.quick ? "true" : "false");
	}
}

/* ---- the machine and the run ---- */

static struct run_info {
	char model[128];
	int ncpu;        /* allowed */
	long nproc;      /* online */
	char kernel[256];
	char date[64];   /* local, for people */
	char utc[32];    /* ISO 8601 UTC */
	char day[16];    /* YYYY-MM-DD */
	char git[128];   /* git describe, or "" */
	char cmd[2048];  /* the command line */
	char clock[96];
	double load;
	double secs;     /* the whole run */
} info;

static void read_git(void)
{
	info.git[0] = 0;
#ifdef FERRY_SOURCE_DIR
	const char *dir = FERRY_SOURCE_DIR;
	if (strpbrk(dir, "'\\"))
		return;
	char cmd[4200];
	snprintf(cmd, sizeof cmd,
		 "git -C '%s' describe --always --dirty --tags 2>/dev/null", dir);
	fflush(NULL);
	FILE *p = popen(cmd, "r");
	if (!p)
		return;
	if (!fgets(info.git, sizeof info.git, p))
		info.git[0] = 0;
	info.git[strcspn(info.git, "\n")] = 0;
	pclose(p);
#endif
}

static void collect_info(int argc, char **argv)
{
	snprintf(info.model, sizeof info.model, "unknown CPU");
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
				snprintf(info.model, sizeof info.model, "%s", c);
				break;
			}
		}
		fclose(f);
	}
	struct utsname u;
	if (uname(&u) == 0)
		snprintf(info.kernel, sizeof info.kernel, "%s %s %s", u.sysname, u.release,
			 u.machine);
	else
		snprintf(info.kernel, sizeof info.kernel, "?");
	info.ncpu = CPU_COUNT(&ctx.allowed);
	info.nproc = sysconf(_SC_NPROCESSORS_ONLN);
	time_t now = time(NULL);
	struct tm tm;
	strftime(info.date, sizeof info.date, "%Y-%m-%d %H:%M %Z", localtime_r(&now, &tm));
	strftime(info.utc, sizeof info.utc, "%Y-%m-%dT%H:%M:%SZ", gmtime_r(&now, &tm));
	strftime(info.day, sizeof info.day, "%Y-%m-%d", &tm);
	size_t k = 0;
	for (int i = 0; i < argc && k + 1 < sizeof info.cmd; i++) {
		/* quoted when it holds a space or a quote (as a shell would need) */
		int q = argv[i][0] == 0 || strpbrk(argv[i], " \t\"'$\\") != NULL;
		int n = snprintf(info.cmd + k, sizeof info.cmd - k, "%s%s%s%s", i ? " " : "",
				 q ? "'" : "", argv[i], q ? "'" : "");
		if (n < 0)
			break;
		k += (size_t)n;
	}
	if (k >= sizeof info.cmd)
		info.cmd[sizeof info.cmd - 1] = 0;
	read_git();
	if (bench_clock.tsc)
		snprintf(info.clock, sizeof info.clock, "TSC %.3f GHz, one read %.0f ns",
			 bench_clock.ghz, bench_clock.overhead_ns);
	else
		snprintf(info.clock, sizeof info.clock, "CLOCK_MONOTONIC, one read %.0f ns",
			 bench_clock.overhead_ns);
	info.load = -1;
	f = fopen("/proc/loadavg", "r");
	if (f) {
		if (fscanf(f, "%lf", &info.load) != 1)
			info.load = -1;
		fclose(f);
	}
}

static void print_header(FILE *out, size_t nsel)
{
	fprintf(out, "ferry-bench %s%s%s%s (%s run: %zu row%s, %d pass%s), %s\n", ferry_version(),
		info.git[0] ? " (" : "", info.git, info.git[0] ? ")" : "",
		ctx.quick ? "quick" : "full", nsel, nsel == 1 ? "" : "s", ctx.passes,
		ctx.passes == 1 ? "" : "es", info.date);
	fprintf(out, "machine: %s, %d CPU%s allowed, %s; ", info.model, info.ncpu,
		info.ncpu == 1 ? "" : "s", info.kernel);
	if (ctx.single_cpu)
		fprintf(out, "one CPU: both sides on cpu %d\n", ctx.cpu_main);
	else
		fprintf(out, "main on cpu %d, peer on cpu %d\n", ctx.cpu_main, ctx.cpu_peer);
	fprintf(out, "clock: %s; load average %.2f at start.\n", info.clock, info.load);
	fprintf(out, "ratio = p50 / the floor's p50, both measured in this run (--help explains "
		"all).\n");
}

/* ---- the USL fit of the scaling rows (ids scale.<backend>.<N>) ---- */

static size_t usl_collect(const struct row *rows, size_t nrows, struct bench_usl_result *u,
			  size_t max)
{
	size_t nu = 0;
	for (size_t i = 0; i < nrows; i++) {
		const struct row *r = &rows[i];
		if (!r->selected || r->err || !r->st.n || strncmp(r->s->id, "scale.", 6) != 0 ||
		    !r->s->backend)
			continue;
		const char *dot = strrchr(r->s->id, '.');
		char *end;
		long n = strtol(dot + 1, &end, 10);
		if (*end || n < 1)
			continue;
		/* X(1): this backend's 1-worker row (the row itself, or its floor) */
		const struct row *one = n == 1 ? r : r->floor;
		if (!one || one->err || !one->st.n || one->st.p50 <= 0)
			continue;
		size_t b;
		for (b = 0; b < nu && strcmp(u[b].backend, r->s->backend); b++)
			;
		if (b == nu) {
			if (nu == max)
				continue;
			memset(&u[nu], 0, sizeof u[nu]);
			u[nu].backend = r->s->backend;
			nu++;
		}
		if (u[b].k < BENCH_USL_MAX_POINTS) {
			u[b].n[u[b].k] = (double)n;
			u[b].s[u[b].k] = r->st.p50 / one->st.p50;
			u[b].k++;
		}
	}
	for (size_t b = 0; b < nu; b++)
		u[b].ok = bench_usl_fit(u[b].n, u[b].s, u[b].k, &u[b].fit) == 0;
	return nu;
}

static void usl_nstar(const struct bench_usl_result *u, char *buf, size_t len)
{
	if (u->fit.nstar > 0)
		snprintf(buf, len, "%.1f workers", u->fit.nstar);
	else
		snprintf(buf, len, "no peak (kappa ~ 0: more workers never hurt)");
}

static void print_usl(FILE *out, const struct bench_usl_result *u, size_t nu, int md)
{
	if (!nu)
		return;
	fprintf(out, "\n%sUSL fit of the scaling rows%s: S(N) = N / (1 + sigma (N-1) + kappa N (N-1))\n",
		md ? "**" : "", md ? "**" : "");
	if (md)
		fputs("\n| backend | sigma (serial fraction) | kappa (crosstalk) | best N* | R² |\n"
		      "|---|--:|--:|--:|--:|\n", out);
	for (size_t b = 0; b < nu; b++) {
		char ns[96];
		usl_nstar(&u[b], ns, sizeof ns);
		if (!u[b].ok) {
			if (md)
				fprintf(out, "| %s | - | - | - | - |\n", u[b].backend);
			else
				fprintf(out, "  %-8s  no fit (%zu point%s)\n", u[b].backend, u[b].k,
					u[b].k == 1 ? "" : "s");
		} else if (md) {
			fprintf(out, "| %s | %.4f | %.5f | %s | %.3f |\n", u[b].backend, u[b].fit.sigma,
				u[b].fit.kappa, ns, u[b].fit.r2);
		} else {
			fprintf(out, "  %-8s  sigma %.4f (serial fraction), kappa %.5f (crosstalk), "
				"best N* = %s; R^2 %.3f over %zu points\n", u[b].backend,
				u[b].fit.sigma, u[b].fit.kappa, ns, u[b].fit.r2, u[b].k);
		}
	}
}

static void json_usl(FILE *out, const struct bench_usl_result *u, size_t nu)
{
	fputs("[", out);
	for (size_t b = 0; b < nu; b++) {
		fprintf(out, "%s\n    {\"backend\":", b ? "," : "");
		json_str(out, u[b].backend);
		fputs(",\"points\":[", out);
		for (size_t i = 0; i < u[b].k; i++)
			fprintf(out, "%s{\"workers\":%.0f,\"speedup\":%.6g}", i ? "," : "", u[b].n[i],
				u[b].s[i]);
		fputs("]", out);
		json_num(out, "sigma", u[b].fit.sigma, u[b].ok);
		json_num(out, "kappa", u[b].fit.kappa, u[b].ok);
		json_num(out, "nstar", u[b].fit.nstar, u[b].ok && u[b].fit.nstar > 0);
		json_num(out, "r2", u[b].fit.r2, u[b].ok);
		fputs("}", out);
	}
	fputs(nu ? "\n  ]" : "]", out);
}

/* ---- --out DIR ---- */

static int mkdir_p(const char *dir)
{
	char buf[4096];
	if (snprintf(buf, sizeof buf, "%s", dir) >= (int)sizeof buf)
		return -ENAMETOOLONG;
	for (char *p = buf + 1; *p; p++) {
		if (*p != '/')
			continue;
		*p = 0;
		if (mkdir(buf, 0777) != 0 && errno != EEXIST)
			return -errno;
		*p = '/';
	}
	if (mkdir(buf, 0777) != 0 && errno != EEXIST)
		return -errno;
	struct stat st;
	if (stat(buf, &st) != 0)
		return -errno;
	return S_ISDIR(st.st_mode) ? 0 : -ENOTDIR;
}

static FILE *out_open(const char *dir, const char *name, char *path, size_t len)
{
	snprintf(path, len, "%s/%s", dir, name);
	FILE *f = fopen(path, "w");
	if (!f)
		fprintf(stderr, "ferry-bench: %s: %s\n", path, strerror(errno));
	return f;
}

static int out_close(FILE *f, const char *path)
{
	int bad = ferror(f);
	if (fclose(f) != 0 || bad) {
		fprintf(stderr, "ferry-bench: writing %s failed\n", path);
		return -1;
	}
	fprintf(stderr, "  %s\n", path);
	return 0;
}

static int write_out(const char *dir, const struct row *rows, size_t nrows, size_t nsel,
		     const struct bench_usl_result *u, size_t nu)
{
	int r = mkdir_p(dir); /* made at the start; again, in case it went away */
	if (r) {
		fprintf(stderr, "ferry-bench: --out %s: %s\n", dir, strerror(-r));
		return -1;
	}
	fprintf(stderr, "ferry-bench: writing %s/\n", dir);
	char path[4200];
	int bad = 0;
	FILE *f = out_open(dir, "results.json", path, sizeof path);
	if (f) {
		fputs("{\n  \"tool\": \"ferry-bench\",\n  \"version\": ", f);
		json_str(f, ferry_version());
		fputs(",\n  \"git\": ", f);
		json_str(f, info.git[0] ? info.git : NULL);
		fputs(",\n  \"command\": ", f);
		json_str(f, info.cmd);
		fputs(",\n  \"date\": ", f);
		json_str(f, info.utc);
		fprintf(f, ",\n  \"quick\": %s,\n  \"passes\": %d,\n  \"seconds\": %.1f,\n",
			ctx.quick ? "true" : "false", ctx.passes, info.secs);
		fputs("  \"machine\": {\"cpu\":", f);
		json_str(f, info.model);
		fprintf(f, ",\"nproc\":%ld,\"cpus_allowed\":%d,\"kernel\":", info.nproc, info.ncpu);
		json_str(f, info.kernel);
		fprintf(f, ",\"cpu_main\":%d,\"cpu_peer\":%d,\"clock\":", ctx.cpu_main, ctx.cpu_peer);
		json_str(f, info.clock);
		json_num(f, "load_at_start", info.load, info.load >= 0);
		fputs("},\n  \"rows\": [", f);
		size_t k = 0;
		for (size_t i = 0; i < nrows; i++) {
			if (!rows[i].selected)
				continue;
			fputs(k++ ? ",\n    " : "\n    ", f);
			json_row(f, &rows[i]);
		}
		fputs(k ? "\n  ],\n  \"usl\": " : "],\n  \"usl\": ", f);
		json_usl(f, u, nu);
		fputs("\n}\n", f);
		bad |= out_close(f, path);
	} else {
		bad = 1;
	}
	if ((f = out_open(dir, "results.csv", path, sizeof path))) {
		print_csv(f, rows, nrows);
		bad |= out_close(f, path);
	} else {
		bad = 1;
	}
	if ((f = out_open(dir, "table.txt", path, sizeof path))) {
		print_header(f, nsel);
		print_table(f, rows, nrows);
		print_usl(f, u, nu, 0);
		bad |= out_close(f, path);
	} else {
		bad = 1;
	}
	if ((f = out_open(dir, "table.md", path, sizeof path))) {
		fprintf(f, "ferry-bench %s, %s run of %s on %s (%d CPU%s, %s).\n"
			"ratio = p50 / the floor's p50, both measured in the same run.\n",
			info.git[0] ? info.git : ferry_version(), ctx.quick ? "a quick" : "a full",
			info.day, info.model, info.ncpu, info.ncpu == 1 ? "" : "s", info.kernel);
		print_markdown(f, rows, nrows);
		print_usl(f, u, nu, 1);
		bad |= out_close(f, path);
	} else {
		bad = 1;
	}
	/* The plots: their own data and scripts, drawn by gnuplot. */
	struct bench_result *res = calloc(nrows ? nrows : 1, sizeof *res);
	if (!res)
		return -1;
	size_t nres = 0;
	for (size_t i = 0; i < nrows; i++) {
		if (!rows[i].selected)
			continue;
		res[nres].s = rows[i].s;
		res[nres].ok = !rows[i].err && rows[i].st.n;
		res[nres].st = rows[i].st;
		nres++;
	}
	char sub[512];
	snprintf(sub, sizeof sub, "ferry-bench %s%s, %s, %d CPU%s, %s", info.git[0] ? info.git :
		 ferry_version(), ctx.quick ? " --quick" : "", info.model, info.ncpu,
		 info.ncpu == 1 ? "" : "s", info.day);
	r = bench_plot_all(dir, sub, res, nres, u, nu, stderr);
	free(res);
	if (r < 0)
		bad = 1;
	return bad ? -1 : 0;
}

/* --quick plans the whole run to take QUICK_PLAN_S: each row gets an equal
 * share of what is left (rows that end early leave more to the rest), within
 * [QUICK_ROW_MIN_S, QUICK_ROW_MAX_S]. Set-up that a row does before its
 * first measured round counts against its share; a row still takes its
 * minimum samples (a few 64 MiB copies, say) when its share is spent. */
#define QUICK_PLAN_S 40.0
#define QUICK_ROW_MIN_S 0.1
#define QUICK_ROW_MAX_S 1.0

static int64_t quick_budget(uint64_t elapsed_ns, size_t rows_left)
{
	double left = QUICK_PLAN_S - (double)elapsed_ns / 1e9;
	double share = rows_left ? left / (double)rows_left : left;
	if (share < QUICK_ROW_MIN_S)
		share = QUICK_ROW_MIN_S;
	if (share > QUICK_ROW_MAX_S)
		share = QUICK_ROW_MAX_S;
	return (int64_t)(share * 1e9);
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
	enum { OPT_SCENARIO = 256, OPT_CPUS, OPT_LIST, OPT_PASSES, OPT_OUT };
	static const struct option longopts[] = {
		{ "quick", no_argument, NULL, 'q' },
		{ "json", no_argument, NULL, 'j' },
		{ "scenario", required_argument, NULL, OPT_SCENARIO },
		{ "cpus", required_argument, NULL, OPT_CPUS },
		{ "list", no_argument, NULL, OPT_LIST },
		{ "passes", required_argument, NULL, OPT_PASSES },
		{ "out", required_argument, NULL, OPT_OUT },
		{ "help", no_argument, NULL, 'h' },
		{ NULL, 0, NULL, 0 },
	};
	char *filters[64];
	int nfilters = 0, json = 0, list = 0, c;
	const char *cpus = NULL, *outdir = NULL;
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
		case OPT_OUT:
			if (!*optarg) {
				fputs("ferry-bench: --out needs a directory\n", stderr);
				return 2;
			}
			outdir = optarg;
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

	/* The report's directory first: a run of minutes must not end in
	 * "cannot write". */
	if (outdir) {
		int e = mkdir_p(outdir);
		if (e) {
			fprintf(stderr, "ferry-bench: --out %s: %s\n", outdir, strerror(-e));
			return 2;
		}
	}
	int r = init_ctx(cpus);
	if (r)
		return r == -2 ? 2 : 1;
	/* A peer that dies must show as an error on its row, not kill us. */
	signal(SIGPIPE, SIG_IGN);
	bench__clock_init();
	collect_info(argc, argv);
	if (!json) {
		print_header(stdout, nsel);
		fflush(stdout);
	}
	if (info.load > 0.5 * info.ncpu)
		fprintf(stderr, "ferry-bench: the machine is busy (load %.2f on %d CPUs): "
			"expect noisy figures; compare ratios\n", info.load, info.ncpu);

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
				if (ctx.quick)
					ctx.row_budget_ns = quick_budget(bench_mono_ns() - run_t0,
									 (size_t)(ctx.passes - ctx.pass - 1) * nsel +
										 (nsel - done + 1));
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
				fprintf(stderr, "%s%s\n", msg_prefix(row->msg), row->msg);
				/* A peer that is not installed is a note, not a failure. */
				if (!row_skipped(row->msg))
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
	info.secs = (double)(bench_mono_ns() - run_t0) / 1e9;
	fprintf(stderr, "ferry-bench: %zu row%s, %d pass%s, in %.1f s\n", nsel, nsel == 1 ? "" : "s",
		ctx.passes, ctx.passes == 1 ? "" : "es", info.secs);

	struct bench_usl_result usl[4];
	size_t nusl = usl_collect(rows, nrows, usl, 4);
	if (json) {
		print_json(rows, nrows);
	} else {
		print_table(stdout, rows, nrows);
		print_usl(stdout, usl, nusl, 0);
	}
	fflush(stdout);
	if (outdir && write_out(outdir, rows, nrows, nsel, usl, nusl) != 0)
		failed = 1;
	free(rows);
	return failed;
}
