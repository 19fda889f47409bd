/*
 * The plots of ferry-bench --out DIR (see report.h). Each plot is a gnuplot
 * script DIR/plots/<name>.gp with its data DIR/plots/<name>*.dat (tab
 * separated, values in the unit of the axis), run from DIR:
 *     cd DIR && gnuplot plots/latency.gp      -> DIR/latency.svg
 * so that a plot can be restyled and redrawn without running the bench.
 *
 *   latency.svg   round trip p50 / p99 / p99.9 of the "round trip, 64 B"
 *                 rows (order 100..199), one panel per backend, log axis
 *   payloads.svg  p50 round trip of payload.{clone,transfer,shared}.<size>.
 *                 <backend> by size, log-log, one line per kind and backend,
 *                 with the payload.memcpy.<size> floor (one copy) dashed
 *   rings.svg     ring.<kind>.<variant>.<backend> p50 rates: ck_ring next to
 *                 ferry at each batch size, per ring kind and backend
 *   pool.svg      pool.rate.* p50 tasks/s (ferry thread, process; piscina
 *                 when it ran)
 *   scaling.svg   the scale.<backend>.<N> speedups with the fitted USL curves
 */
#include "plot/report.h"

#include <errno.h>
#include <math.h>
#include <stdarg.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <unistd.h>

#define TERMINAL "set terminal svg size %d,%d dynamic noenhanced font 'Helvetica,12' " \
		 "background rgb 'white'\n"

static const char *nz(const char *s)
{
	return s ? s : "";
}

/* Part @idx (0-based) of a dotted id into @buf; 0, or -1 when absent. */
static int id_part(const char *id, int idx, char *buf, size_t len)
{
	const char *p = id;
	for (int i = 0; i < idx; i++) {
		p = strchr(p, '.');
		if (!p)
			return -1;
		p++;
	}
	size_t n = strcspn(p, ".");
	if (n == 0 || n >= len)
		return -1;
	memcpy(buf, p, n);
	buf[n] = 0;
	return 0;
}

static int id_parts(const char *id)
{
	int n = 1;
	for (; *id; id++)
		n += *id == '.';
	return n;
}

/* "64", "1k", "64k", "1m", "16m", "1g" -> bytes; 0 when not a size. */
static double parse_size(const char *s)
{
	char *end;
	double v = strtod(s, &end);
	if (end == s || v <= 0)
		return 0;
	switch (*end) {
	case 0:
		return v;
	case 'k':
	case 'K':
		return end[1] ? 0 : v * 1024;
	case 'm':
	case 'M':
		return end[1] ? 0 : v * 1024 * 1024;
	case 'g':
	case 'G':
		return end[1] ? 0 : v * 1024 * 1024 * 1024;
	default:
		return 0;
	}
}

/* A gnuplot single-quoted string: '' stands for a quote. */
static void gp_str(FILE *f, const char *s)
{
	fputc('\'', f);
	for (; s && *s; s++) {
		if (*s == '\'')
			fputc('\'', f);
		fputc(*s == '\n' || *s == '\t' ? ' ' : *s, f);
	}
	fputc('\'', f);
}

/* A data-file label: tabs and newlines would split the record. */
static void dat_label(FILE *f, const char *s)
{
	for (; s && *s; s++)
		fputc(*s == '\t' || *s == '\n' ? ' ' : *s, f);
}

struct out {
	const char *dir;
	char path[4096];
	int err;
};

static FILE *open_in(struct out *o, const char *fmt, ...) __attribute__((format(printf, 2, 3)));
static FILE *open_in(struct out *o, const char *fmt, ...)
{
	char name[256];
	va_list ap;
	va_start(ap, fmt);
	vsnprintf(name, sizeof name, fmt, ap);
	va_end(ap);
	snprintf(o->path, sizeof o->path, "%s/plots/%s", o->dir, name);
	FILE *f = fopen(o->path, "w");
	if (!f && !o->err)
		o->err = -errno;
	return f;
}

static int close_out(struct out *o, FILE *f)
{
	if (!f)
		return -1;
	int bad = ferror(f);
	if (fclose(f) != 0 || bad) {
		if (!o->err)
			o->err = -EIO;
		return -1;
	}
	return 0;
}

/* Remove a data file of a plot that has no data. */
static void drop(struct out *o, const char *name)
{
	snprintf(o->path, sizeof o->path, "%s/plots/%s", o->dir, name);
	(void)unlink(o->path);
}

static void preamble(FILE *g, int w, int h, const char *name, const char *title,
		     const char *subtitle)
{
	fprintf(g, "# ferry-bench plot: run from the --out directory: gnuplot plots/%s.gp\n", name);
	fprintf(g, TERMINAL, w, h);
	fprintf(g, "set output '%s.svg'\n", name);
	fprintf(g, "set datafile separator '\\t'\n");
	fprintf(g, "TITLE = ");
	char t[1024];
	snprintf(t, sizeof t, "%s\n%s", title, nz(subtitle));
	/* a double-quoted string, for the line break */
	fputc('"', g);
	for (const char *p = t; *p; p++) {
		if (*p == '\n')
			fputs("\\n", g);
		else if (*p == '"' || *p == '\\')
			fprintf(g, "\\%c", *p);
		else
			fputc(*p, g);
	}
	fputs("\"\nset title TITLE\n", g);
	fputs("set grid ytics lc rgb '#dddddd'\nset border 3\nset tics nomirror\n", g);
}

/*
 * Close @dat, the data file <name>.dat of plot @name (NULL for a plot that
 * writes and drops its data files itself), then open the script <name>.gp
 * and write its preamble. NULL with *@ret = -1 when a file failed; NULL
 * with *@ret = 0 when @rows is 0 (no plot this run: <name>.dat is removed).
 */
static FILE *begin_script(struct out *o, FILE *dat, int rows, const char *name, int w, int h,
			  const char *title, const char *subtitle, int *ret)
{
	*ret = -1;
	if (dat && close_out(o, dat))
		return NULL;
	if (!rows) {
		if (dat) {
			char file[64];
			snprintf(file, sizeof file, "%s.dat", name);
			drop(o, file);
		}
		*ret = 0;
		return NULL;
	}
	FILE *g = open_in(o, "%s.gp", name);
	if (g)
		preamble(g, w, h, name, title, subtitle);
	return g;
}

/* Log-axis tics of a time axis in microseconds, labelled in their unit. */
static void time_tics(FILE *g, const char *axis)
{
	fprintf(g, "set %stics ('1 ns' 0.001, '10 ns' 0.01, '100 ns' 0.1, '1 us' 1, '10 us' 10, "
		"'100 us' 100, '1 ms' 1000, '10 ms' 1e4, '100 ms' 1e5, '1 s' 1e6, '10 s' 1e7, "
		"'100 s' 1e8)\n", axis);
}

/* ---- latency percentiles of the round trips, one panel per backend ---- */

static int plot_latency(struct out *o, const char *subtitle, const struct bench_result *res,
			size_t n)
{
	static const char *const backends[2] = { "thread", "process" };
	int have[2] = { 0, 0 };
	size_t maxrows = 0;
	for (int b = 0; b < 2; b++) {
		FILE *f = open_in(o, "latency_%s.dat", backends[b]);
		if (!f)
			return -1;
		fputs("row\tp50\tp99\tp99.9\n", f);
		for (size_t i = 0; i < n; i++) {
			const struct bench_result *r = &res[i];
			if (!r->ok || r->s->unit != BENCH_NS || r->s->order < 100 ||
			    r->s->order >= 200 || !r->s->backend ||
			    strcmp(r->s->backend, backends[b]) != 0)
				continue;
			dat_label(f, r->s->name);
			if (r->s->mode) {
				fputs(" (", f);
				dat_label(f, r->s->mode);
				fputc(')', f);
			}
			fprintf(f, "\t%.6g\t%.6g\t%.6g\n", r->st.p50 / 1e3, r->st.p99 / 1e3,
				r->st.p999 / 1e3);
			have[b]++;
		}
		if (close_out(o, f))
			return -1;
		if ((size_t)have[b] > maxrows)
			maxrows = (size_t)have[b];
	}
	for (int b = 0; b < 2; b++)
		if (!have[b]) {
			char name[64];
			snprintf(name, sizeof name, "latency_%s.dat", backends[b]);
			drop(o, name);
		}
	int panels = (have[0] > 0) + (have[1] > 0), ret;
	int w = maxrows > 12 ? 1200 : 1000;
	FILE *g = begin_script(o, NULL, panels, "latency", w, 430 * panels + 60,
			       "round trip of 64 B, by backend (lower is better)", subtitle, &ret);
	if (!g)
		return ret;
	fprintf(g, "set multiplot layout %d,1 title TITLE\n", panels);
	fputs("set style data histogram\n"
	      "set style histogram cluster gap 1\n"
	      "set style fill solid 0.85 border rgb '#444444'\n"
	      "set boxwidth 0.9\n"
	      "set logscale y\n"
	      "set ylabel 'round trip (log scale)'\n"
	      "set xtics rotate by -25 left scale 0 font ',10'\n"
	      "set key outside right top vertical\n"
	      "set lmargin 10\nset rmargin 16\nset bmargin 6\nset tmargin 3\n", g);
	time_tics(g, "y");
	for (int b = 0; b < 2; b++) {
		if (!have[b])
			continue;
		fprintf(g, "set title '%s workers' font ',12'\n", backends[b]);
		fprintf(g,
			"plot 'plots/latency_%s.dat' using 2:xtic(1) title columnheader(2) lc rgb '#3b75af', \\\n"
			"     '' using 3 title columnheader(3) lc rgb '#ef8636', \\\n"
			"     '' using 4 title columnheader(4) lc rgb '#c53a32'\n",
			backends[b]);
	}
	fputs("unset multiplot\n", g);
	return close_out(o, g) ? -1 : 1;
}

/* ---- payloads: clone vs transfer vs shared by size ---- */

static int plot_payloads(struct out *o, const char *subtitle, const struct bench_result *res,
			 size_t n)
{
	static const char *const kinds[4] = { "clone", "transfer", "shared", "memcpy" };
	static const char *const colors[4] = { "#c53a32", "#3b75af", "#519e3e", "#888888" };
	static const char *const backends[3] = { "thread", "process", NULL };
	FILE *f = open_in(o, "payloads.dat");
	if (!f)
		return -1;
	/* One block per (kind, backend), blocks separated by two blank lines
	 * (gnuplot's "index"); the series are listed in the script. */
	char titles[12][64];
	int index[12], nseries = 0, blk = 0;
	for (int k = 0; k < 4; k++) {
		for (int b = 0; b < 3; b++) {
			int count = 0;
			for (size_t i = 0; i < n; i++) {
				const struct bench_result *r = &res[i];
				char p0[32], kind[32], size[32], be[32];
				int parts = id_parts(r->s->id);
				if (!r->ok || r->s->unit != BENCH_NS || id_part(r->s->id, 0, p0, sizeof p0) ||
				    strcmp(p0, "payload") != 0 ||
				    id_part(r->s->id, 1, kind, sizeof kind) || strcmp(kind, kinds[k]) ||
				    id_part(r->s->id, 2, size, sizeof size))
					continue;
				double bytes = parse_size(size);
				if (bytes <= 0)
					continue;
				if (backends[b]) {
					if (parts != 4 || id_part(r->s->id, 3, be, sizeof be) ||
					    strcmp(be, backends[b]))
						continue;
				} else if (parts != 3) {
					continue;
				}
				if (!count)
					fprintf(f, "# %s %s\n", kinds[k], backends[b] ? backends[b] : "");
				fprintf(f, "%.0f\t%.6g\n", bytes, r->st.p50 / 1e3);
				count++;
			}
			if (!count)
				continue;
			fputs("\n\n", f);
			if (nseries < 12) {
				if (backends[b])
					snprintf(titles[nseries], sizeof titles[nseries], "%s, %s", kinds[k],
						 backends[b]);
				else
					snprintf(titles[nseries], sizeof titles[nseries],
						 "memcpy (one copy, the floor)");
				index[nseries] = k * 4 + b;
				nseries++;
			}
			blk++;
		}
	}
	int ret;
	FILE *g = begin_script(o, f, nseries, "payloads", 1000, 640,
			       "one message there and back by payload size: clone vs transfer vs "
			       "shared (p50)", subtitle, &ret);
	if (!g)
		return ret;
	time_tics(g, "y");
	fputs("set logscale xy\n"
	      "set xlabel 'payload size (log scale)'\n"
	      "set ylabel 'round trip p50 (log scale)'\n"
	      "set xtics ('64 B' 64, '1 KiB' 1024, '64 KiB' 65536, '1 MiB' 1048576, "
	      "'16 MiB' 16777216, '64 MiB' 67108864, '1 GiB' 1073741824)\n"
	      "set key top left box opaque\n"
	      "plot ", g);
	for (int i = 0; i < nseries; i++) {
		int k = index[i] / 4, b = index[i] % 4;
		fprintf(g, "%s'plots/payloads.dat' index %d using 1:2 with linespoints lw 2 "
			"lc rgb '%s' dt %d pt %d ps 0.9 title ", i ? ", \\\n     " : "", i, colors[k],
			b == 1 ? 2 : b == 2 ? 3 : 1, b == 1 ? 9 : b == 2 ? 1 : 7);
		gp_str(g, titles[i]);
	}
	fputc('\n', g);
	(void)blk;
	return close_out(o, g) ? -1 : 1;
}

/* ---- rings: ck_ring vs ferry by batch size ---- */

#define RING_MAX 16

static void ring_variant_label(const char *v, char *buf, size_t len)
{
	if (strcmp(v, "ck") == 0)
		snprintf(buf, len, "ck_ring");
	else if (v[0] == 'b' && v[1] >= '0' && v[1] <= '9')
		snprintf(buf, len, "ferry, batch %.16s", v + 1);
	else
		snprintf(buf, len, "ferry %.16s", v);
}

/* "ck_ring spsc 1P1C" / "ferry mpmc 2P2C, batch 16" -> "spsc 1P1C" */
static void ring_cluster_label(const char *name, const char *backend, char *buf, size_t len)
{
	const char *p = strchr(nz(name), ' ');
	p = p ? p + 1 : nz(name);
	size_t k = strcspn(p, ",");
	snprintf(buf, len, "%.*s, %s", (int)k, p, nz(backend));
}

static int plot_rings(struct out *o, const char *subtitle, const struct bench_result *res,
		      size_t n)
{
	char clusters[RING_MAX][64], labels[RING_MAX][64], variants[RING_MAX][16];
	int nc = 0, nv = 0;
	double val[RING_MAX][RING_MAX];
	for (int i = 0; i < RING_MAX; i++)
		for (int j = 0; j < RING_MAX; j++)
			val[i][j] = NAN;
	for (size_t i = 0; i < n; i++) {
		const struct bench_result *r = &res[i];
		char p0[16], kind[32], var[16], be[16], key[64];
		if (!r->ok || r->s->unit != BENCH_RATE || id_parts(r->s->id) != 4 ||
		    id_part(r->s->id, 0, p0, sizeof p0) || strcmp(p0, "ring") ||
		    id_part(r->s->id, 1, kind, sizeof kind) || id_part(r->s->id, 2, var, sizeof var) ||
		    id_part(r->s->id, 3, be, sizeof be))
			continue;
		snprintf(key, sizeof key, "%s.%s", kind, be);
		int c, v;
		for (c = 0; c < nc && strcmp(clusters[c], key); c++)
			;
		if (c == nc) {
			if (nc == RING_MAX)
				continue;
			snprintf(clusters[nc], sizeof clusters[nc], "%s", key);
			ring_cluster_label(r->s->name, r->s->backend, labels[nc], sizeof labels[nc]);
			nc++;
		}
		for (v = 0; v < nv && strcmp(variants[v], var); v++)
			;
		if (v == nv) {
			if (nv == RING_MAX)
				continue;
			snprintf(variants[nv++], sizeof variants[0], "%s", var);
		}
		val[c][v] = r->st.p50 / 1e6;
	}
	if (!nc)
		return 0;
	FILE *f = open_in(o, "rings.dat");
	if (!f)
		return -1;
	fputs("ring", f);
	for (int v = 0; v < nv; v++) {
		char l[64];
		ring_variant_label(variants[v], l, sizeof l);
		fprintf(f, "\t%s", l);
	}
	fputc('\n', f);
	for (int c = 0; c < nc; c++) {
		dat_label(f, labels[c]);
		for (int v = 0; v < nv; v++) {
			if (isnan(val[c][v]))
				fputs("\tNaN", f);
			else
				fprintf(f, "\t%.6g", val[c][v]);
		}
		fputc('\n', f);
	}
	int ret;
	FILE *g = begin_script(o, f, nc, "rings", 1000, 600,
			       "ring throughput, 64 B elements, p50 (higher is better)", subtitle,
			       &ret);
	if (!g)
		return ret;
	static const char *const colors[] = { "#888888", "#9ecae1", "#4a90c8", "#1c4f88",
					      "#0b2a50", "#519e3e", "#c53a32", "#ef8636" };
	fputs("set style data histogram\n"
	      "set style histogram cluster gap 1\n"
	      "set style fill solid 0.9 border rgb '#444444'\n"
	      "set boxwidth 0.9\n"
	      "set yrange [0:*]\n"
	      "set offsets 0, 0, graph 0.15, 0\n"
	      "set rmargin 10\n"
	      "set ylabel 'million elements per second'\n"
	      "set xtics rotate by -20 left scale 0\n"
	      "set key top left horizontal\n"
	      "plot ", g);
	for (int v = 0; v < nv; v++)
		fprintf(g, "%s'plots/rings.dat' using %d%s title columnheader(%d) lc rgb '%s'",
			v ? ", \\\n     " : "", v + 2, v ? "" : ":xtic(1)", v + 2,
			colors[v % (int)(sizeof colors / sizeof colors[0])]);
	fputc('\n', g);
	return close_out(o, g) ? -1 : 1;
}

/* ---- pool rate ---- */

static int plot_pool(struct out *o, const char *subtitle, const struct bench_result *res, size_t n)
{
	FILE *f = open_in(o, "pool.dat");
	if (!f)
		return -1;
	fputs("# row\tp50\tp99 (thousand tasks per second)\n", f);
	int rows = 0;
	double lo = INFINITY, hi = 0;
	for (size_t i = 0; i < n; i++) {
		const struct bench_result *r = &res[i];
		if (!r->ok || r->s->unit != BENCH_RATE || strncmp(r->s->id, "pool.rate.", 10) != 0)
			continue;
		/* "pool tasks/s, 2 workers" -> "ferry, thread"; "piscina tasks/s,
		 * 2 threads" -> "piscina (node)" */
		if (strncmp(nz(r->s->name), "pool", 4) == 0) {
			fputs("ferry, ", f);
			dat_label(f, r->s->backend ? r->s->backend : "-");
		} else {
			fprintf(f, "%.*s (node)", (int)strcspn(nz(r->s->name), " ,"), nz(r->s->name));
		}
		fprintf(f, "\t%.6g\t%.6g\n", r->st.p50 / 1e3, r->st.p99 / 1e3);
		lo = fmin(lo, fmin(r->st.p50, r->st.p99) / 1e3);
		hi = fmax(hi, r->st.p50 / 1e3);
		rows++;
	}
	int ret;
	FILE *g = begin_script(o, f, rows, "pool", 800, 520,
			       "pool of 2 workers: empty tasks per second (higher is better)",
			       subtitle, &ret);
	if (!g)
		return ret;
	/* Rates far apart (a Node peer next to ferry, say): a log axis. */
	if (lo > 0 && hi / lo > 20)
		fprintf(g, "set logscale y\nset yrange [%g:%g]\n"
			"set ylabel 'thousand tasks per second (log scale)'\n",
			pow(10, floor(log10(lo))), pow(10, ceil(log10(hi * 3))));
	else
		fputs("set yrange [0:*]\nset offsets 0, 0, graph 0.2, 0\n"
		      "set ylabel 'thousand tasks per second'\n", g);
	fputs("set style data histogram\n"
	      "set style histogram cluster gap 1\n"
	      "set style fill solid 0.9 border rgb '#444444'\n"
	      "set boxwidth 0.9\n"
	      "set xtics scale 0 font ',10'\n"
	      "set key top right\n"
	      "plot 'plots/pool.dat' using 2:xtic(1) title 'p50' lc rgb '#3b75af', \\\n"
	      "     '' using 3 title 'p99 (the slow side: 99% of batches beat it)' lc rgb '#ef8636'\n",
	      g);
	return close_out(o, g) ? -1 : 1;
}

/* ---- scaling: speedup and the USL fits ---- */

static int plot_scaling(struct out *o, const char *subtitle, const struct bench_usl_result *u,
			size_t nu)
{
	static const char *const colors[4] = { "#3b75af", "#c53a32", "#519e3e", "#ef8636" };
	int nseries = 0;
	double nmax = 1;
	FILE *f = open_in(o, "scaling.dat");
	if (!f)
		return -1;
	for (size_t b = 0; b < nu; b++) {
		if (!u[b].k)
			continue;
		fprintf(f, "# %s: workers, speedup\n", nz(u[b].backend));
		for (size_t i = 0; i < u[b].k; i++) {
			fprintf(f, "%.0f\t%.6g\n", u[b].n[i], u[b].s[i]);
			nmax = fmax(nmax, u[b].n[i]);
		}
		fputs("\n\n", f);
		nseries++;
	}
	int ret;
	FILE *g = begin_script(o, f, nseries, "scaling", 900, 600,
			       "CPU-bound map through the pool: speedup X(N)/X(1) and the USL fit",
			       subtitle, &ret);
	if (!g)
		return ret;
	fprintf(g, "set xrange [0.8:%g]\nset yrange [0:*]\n", nmax + 0.2);
	if (nmax <= 16)
		fprintf(g, "set xtics 1\n");
	/* N runs to twice the CPUs: mark the CPU count */
	if (nmax >= 2)
		fprintf(g, "set arrow from %g, graph 0 to %g, graph 1 nohead dt 2 lc rgb '#999999'\n"
		"set label 'CPUs' at %g, graph 0.03 left offset 0.5,0 textcolor rgb '#777777'\n",
		floor(nmax / 2), floor(nmax / 2), floor(nmax / 2));
	fputs("set xlabel 'workers N'\n"
	      "set ylabel 'speedup S(N) = X(N) / X(1)'\n"
	      "set key top left reverse Left box opaque\n"
	      "set samples 400\n", g);
	int idx = 0;
	for (size_t b = 0; b < nu; b++) {
		if (!u[b].k || !u[b].ok)
			continue;
		fprintf(g, "usl%zu(x) = x < 1 ? NaN : x / (1 + %.9g * (x - 1) + %.9g * x * (x - 1))\n", b,
			u[b].fit.sigma, u[b].fit.kappa);
	}
	fputs("plot x with lines lc rgb '#bbbbbb' dt 3 title 'linear (ideal)'", g);
	for (size_t b = 0; b < nu; b++) {
		if (!u[b].k)
			continue;
		const char *c = colors[b % 4];
		char t[256];
		snprintf(t, sizeof t, "%s: measured", nz(u[b].backend));
		fprintf(g, ", \\\n     'plots/scaling.dat' index %d using 1:2 with points pt 7 ps 1.2 "
			"lc rgb '%s' title ", idx, c);
		gp_str(g, t);
		if (u[b].ok) {
			char ns[48];
			if (u[b].fit.nstar > 0)
				snprintf(ns, sizeof ns, "N* = %.1f", u[b].fit.nstar);
			else
				snprintf(ns, sizeof ns, "no peak");
			snprintf(t, sizeof t, "%s: USL sigma = %.4f, kappa = %.5f, %s", nz(u[b].backend),
				 u[b].fit.sigma, u[b].fit.kappa, ns);
			fprintf(g, ", \\\n     usl%zu(x) with lines lw 2 lc rgb '%s' title ", b, c);
			gp_str(g, t);
		}
		idx++;
	}
	fputc('\n', g);
	return close_out(o, g) ? -1 : 1;
}

/* ---- drawing ---- */

static int have_gnuplot(void)
{
	const char *path = getenv("PATH");
	if (!path || !*path)
		path = "/usr/local/bin:/usr/bin:/bin";
	char buf[4096];
	while (*path) {
		size_t k = strcspn(path, ":");
		snprintf(buf, sizeof buf, "%.*s/gnuplot", (int)k, path);
		if (k && access(buf, X_OK) == 0)
			return 1;
		path += k;
		if (*path == ':')
			path++;
	}
	return 0;
}

/* Run gnuplot plots/<name>.gp in @dir; 0 when it exited with 0. */
static int draw(const char *dir, const char *name, FILE *log)
{
	char script[300];
	snprintf(script, sizeof script, "plots/%s.gp", name);
	fflush(NULL);
	pid_t pid = fork();
	if (pid < 0)
		return -errno;
	if (pid == 0) {
		if (chdir(dir) != 0)
			_exit(127);
		execlp("gnuplot", "gnuplot", script, (char *)NULL);
		_exit(127);
	}
	int st;
	while (waitpid(pid, &st, 0) < 0)
		if (errno != EINTR)
			return -errno;
	if (!WIFEXITED(st) || WEXITSTATUS(st) != 0) {
		fprintf(log, "ferry-bench: gnuplot failed on %s/%s\n", dir, script);
		return -EIO;
	}
	return 0;
}

int bench_plot_all(const char *dir, const char *subtitle, const struct bench_result *res,
		   size_t nres, const struct bench_usl_result *usl, size_t nusl, FILE *log)
{
	struct out o = { .dir = dir };
	snprintf(o.path, sizeof o.path, "%s/plots", dir);
	if (mkdir(o.path, 0777) != 0 && errno != EEXIST)
		return -errno;
	static const char *const names[5] = { "latency", "payloads", "rings", "pool", "scaling" };
	int made[5];
	made[0] = plot_latency(&o, subtitle, res, nres);
	made[1] = plot_payloads(&o, subtitle, res, nres);
	made[2] = plot_rings(&o, subtitle, res, nres);
	made[3] = plot_pool(&o, subtitle, res, nres);
	made[4] = plot_scaling(&o, subtitle, usl, nusl);
	if (o.err) {
		fprintf(log, "ferry-bench: %s: %s\n", o.path, strerror(-o.err));
		return o.err;
	}
	int gp = have_gnuplot(), drawn = 0;
	for (int i = 0; i < 5; i++) {
		if (made[i] == 0) { /* no data this run: no stale plot of an earlier one */
			char name[64];
			snprintf(name, sizeof name, "%s.gp", names[i]);
			drop(&o, name);
			snprintf(o.path, sizeof o.path, "%s/%s.svg", dir, names[i]);
			(void)unlink(o.path);
		}
		if (made[i] <= 0)
			continue;
		if (!gp)
			continue;
		if (draw(dir, names[i], log) == 0) {
			fprintf(log, "  %s/%s.svg\n", dir, names[i]);
			drawn++;
		}
	}
	if (!gp)
		fprintf(log, "ferry-bench: gnuplot not found: no SVG plots (apt-get install "
			"gnuplot-nox; then cd %s && gnuplot plots/<name>.gp)\n", dir);
	return drawn;
}
