/*
 * crit-lite: the subset of Criterion's API that ferry's suites use, for the
 * ThreadSanitizer build only. Criterion's BoxFort arena cannot start under
 * TSan (Criterion issue #274, "Could not initialize inheritable arena"), so
 * the TSan build compiles the very same test files against this header and
 * tests/tsan/runner.c instead of libcriterion.
 *
 * Like Criterion, every test runs in its own forked child with the suite's
 * timeout; a fatal assertion ends the test (after its .fini); the runner
 * prints a Criterion-style synthesis and a plain "N passed, N failed" line.
 */
#ifndef FERRY_CRIT_LITE_H
#define FERRY_CRIT_LITE_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

/* An assertion without a message passes "" as its format. */
#pragma GCC diagnostic ignored "-Wformat-zero-length"

struct cl_opts {
	void (*init)(void);
	void (*fini)(void);
	double timeout;
	int disabled;
	const char *description;
	int signal;
	int exit_code;
};

void cl_register_suite(const char *suite, const struct cl_opts *o);
void cl_register_test(const char *suite, const char *name, void (*fn)(void),
		      const struct cl_opts *o);
void cl_check(int ok, int fatal, const char *expr, const char *file, int line,
	      const char *fmt, ...) __attribute__((format(printf, 6, 7)));
void cl_skip(const char *fmt, ...) __attribute__((format(printf, 1, 2)));
void cl_log(const char *fmt, ...) __attribute__((format(printf, 1, 2)));

#define TestSuite(s, ...)                                                        \
	static const struct cl_opts cl_suite_opts_##s = { __VA_ARGS__ };         \
	__attribute__((constructor)) static void cl_suite_reg_##s(void)          \
	{                                                                        \
		cl_register_suite(#s, &cl_suite_opts_##s);                       \
	}                                                                        \
	struct cl_dummy_##s

#define Test(s, n, ...)                                                          \
	static void cl_fn_##s##_##n(void);                                       \
	static const struct cl_opts cl_test_opts_##s##_##n = { __VA_ARGS__ };    \
	__attribute__((constructor)) static void cl_reg_##s##_##n(void)          \
	{                                                                        \
		cl_register_test(#s, #n, cl_fn_##s##_##n, &cl_test_opts_##s##_##n); \
	}                                                                        \
	static void cl_fn_##s##_##n(void)

#define CL_CHECK(cond, fatal, text, ...) \
	cl_check(!!(cond), fatal, text, __FILE__, __LINE__, "" __VA_ARGS__)

#define cr_assert(c, ...) CL_CHECK(c, 1, #c, __VA_ARGS__)
#define cr_expect(c, ...) CL_CHECK(c, 0, #c, __VA_ARGS__)
#define cr_assert_not(c, ...) CL_CHECK(!(c), 1, "!(" #c ")", __VA_ARGS__)
#define cr_expect_not(c, ...) CL_CHECK(!(c), 0, "!(" #c ")", __VA_ARGS__)
#define CL_OP(a, op, b, fatal, ...) CL_CHECK((a) op (b), fatal, #a " " #op " " #b, __VA_ARGS__)
#define cr_assert_eq(a, b, ...) CL_OP(a, ==, b, 1, __VA_ARGS__)
#define cr_expect_eq(a, b, ...) CL_OP(a, ==, b, 0, __VA_ARGS__)
#define cr_assert_neq(a, b, ...) CL_OP(a, !=, b, 1, __VA_ARGS__)
#define cr_expect_neq(a, b, ...) CL_OP(a, !=, b, 0, __VA_ARGS__)
#define cr_assert_lt(a, b, ...) CL_OP(a, <, b, 1, __VA_ARGS__)
#define cr_expect_lt(a, b, ...) CL_OP(a, <, b, 0, __VA_ARGS__)
#define cr_assert_leq(a, b, ...) CL_OP(a, <=, b, 1, __VA_ARGS__)
#define cr_expect_leq(a, b, ...) CL_OP(a, <=, b, 0, __VA_ARGS__)
#define cr_assert_gt(a, b, ...) CL_OP(a, >, b, 1, __VA_ARGS__)
#define cr_expect_gt(a, b, ...) CL_OP(a, >, b, 0, __VA_ARGS__)
#define cr_assert_geq(a, b, ...) CL_OP(a, >=, b, 1, __VA_ARGS__)
#define cr_expect_geq(a, b, ...) CL_OP(a, >=, b, 0, __VA_ARGS__)
#define cr_assert_null(p, ...) CL_CHECK((p) == NULL, 1, #p " == NULL", __VA_ARGS__)
#define cr_expect_null(p, ...) CL_CHECK((p) == NULL, 0, #p " == NULL", __VA_ARGS__)
#define cr_assert_not_null(p, ...) CL_CHECK((p) != NULL, 1, #p " != NULL", __VA_ARGS__)
#define cr_expect_not_null(p, ...) CL_CHECK((p) != NULL, 0, #p " != NULL", __VA_ARGS__)
#define cr_assert_str_eq(a, b, ...) CL_CHECK(strcmp(a, b) == 0, 1, #a " equals " #b, __VA_ARGS__)
#define cr_expect_str_eq(a, b, ...) CL_CHECK(strcmp(a, b) == 0, 0, #a " equals " #b, __VA_ARGS__)
#define cr_assert_str_neq(a, b, ...) CL_CHECK(strcmp(a, b) != 0, 1, #a " differs from " #b, __VA_ARGS__)
#define cr_expect_str_neq(a, b, ...) CL_CHECK(strcmp(a, b) != 0, 0, #a " differs from " #b, __VA_ARGS__)
#define cr_assert_arr_eq(a, b, n, ...) CL_CHECK(memcmp(a, b, n) == 0, 1, #a " == " #b, __VA_ARGS__)
#define cr_expect_arr_eq(a, b, n, ...) CL_CHECK(memcmp(a, b, n) == 0, 0, #a " == " #b, __VA_ARGS__)
#define cr_assert_fail(...) CL_CHECK(0, 1, "failure", __VA_ARGS__)
#define cr_expect_fail(...) CL_CHECK(0, 0, "failure", __VA_ARGS__)
#define cr_skip(...) cl_skip("" __VA_ARGS__)
#define cr_skip_test(...) cl_skip("" __VA_ARGS__)
#define cr_log_info(...) cl_log(__VA_ARGS__)
#define cr_log_warn(...) cl_log(__VA_ARGS__)
#define cr_log_error(...) cl_log(__VA_ARGS__)

#endif
