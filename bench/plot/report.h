/*
 * bench/plot/report.h - the plots of ferry-bench --out DIR: gnuplot scripts
 * and their data, generated from the run's rows, drawn as SVG when gnuplot is
 * installed. main.c fills the results; report.c knows the row ids (see each
 * plot in report.c) and skips a plot whose rows were not run or failed.
 */
#ifndef FERRY_BENCH_REPORT_H
#define FERRY_BENCH_REPORT_H

#include "bench.h"

#include <stdio.h>

/* One row of the run, as measured. */
struct bench_result {
	const struct bench_scenario *s;
	int ok;               /* measured (no error, samples taken) */
	struct bench_stats st;
};

/* The scaling rows of one backend and the USL fit of their speedups. */
#define BENCH_USL_MAX_POINTS 64
struct bench_usl_result {
	const char *backend;
	size_t k;                         /* points */
	double n[BENCH_USL_MAX_POINTS];   /* workers */
	double s[BENCH_USL_MAX_POINTS];   /* measured speedup X(N) / X(1) */
	int ok;                           /* fit made (fit valid) */
	struct bench_usl fit;
};

/*
 * bench_plot_all - write DIR/plots/<name>.dat and <name>.gp for every plot
 * that has data, and draw DIR/<name>.svg with gnuplot when it is on PATH
 * (else say so on @log: the scripts stay, for later). @subtitle goes under
 * every plot title (machine and date). Writes the names of the SVGs drawn,
 * one a line, to @log. Returns the number of SVGs drawn (0 without gnuplot),
 * or -errno when a file could not be written.
 */
int bench_plot_all(const char *dir, const char *subtitle, const struct bench_result *res,
		   size_t nres, const struct bench_usl_result *usl, size_t nusl, FILE *log);

#endif /* FERRY_BENCH_REPORT_H */
