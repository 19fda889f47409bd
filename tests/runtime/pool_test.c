/* The pool: every option and error on both backends, crashes on processes. */
#include <ferry.h>
#include <ferry/pool.h>

#include "util/util.h"

#include <criterion/criterion.h>
#include <errno.h>
#include <pthread.h>
#include <signal.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <sys/prctl.h>
#include <sys/resource.h>
#include <sys/wait.h>
#include <unistd.h>

#define SEC (1000LL * 1000 * 1000)
#define MS (1000LL * 1000)
#define RUNS 4096

/* What tasks and the test share: MAP_SHARED, so process workers (forked
 * after it was mapped) see it too. */
struct shared {
	uint32_t gate;          /* "block" tasks wait until it is nonzero */
	_Atomic int started;    /* "block", "spin_abort", "sleep" tasks that began */
	_Atomic int aborted;    /* tasks that saw their abort word */
	_Atomic int finished;   /* "sleep" tasks that ran to the end */
	_Atomic int runs[RUNS]; /* per task id: times it ran */
};
static struct shared *sh;
static struct tu_baseline base;

static void setup(void)
{
	sh = tu_shared_alloc(sizeof *sh);
	tu_baseline_take(&base);
}

static void teardown(void)
{
	tu_baseline_check(&base);
	tu_shared_free(sh, sizeof *sh);
}

TestSuite(pool, .init = setup, .fini = teardown, .timeout = 60);

static const char *bname(int backend)
{
	return backend == FERRY_PROCESS ? "process" : "thread";
}

/* ---- the task function: an int doubles; a map {op, x, ...} does op ---- */

enum op {
	OP_ECHO = 1,    /* returns a copy of "v" */
	OP_FAIL,        /* fails with -EDOM and a message */
	OP_SEGV,        /* raise(SIGSEGV) */
	OP_EXIT,        /* leaves the worker with code x */
	OP_BLOCK,       /* waits for the gate */
	OP_SPIN_ABORT,  /* loops until aborted, then -ECANCELED */
	OP_SLEEP,       /* sleeps x ms ignoring aborts */
	OP_BUF_SUM,     /* sums the bytes of buffer "b" */
	OP_BUF_MAKE,    /* returns {b: buffer of x bytes, i % 251}, transferred */
	OP_SHARED,      /* shared buffer "s": word1 = word0 + 1 */
	OP_BIG,         /* returns a string of x bytes */
	OP_INFO,        /* returns [worker, backend, data bytes, user pointer] */
	OP_BUF_CLONE,   /* returns {b: buffer of x bytes} cloned (not transferred) */
	OP_WDATA,       /* returns [n, sum of b, worker] of the pool's value, bumps word 0 of s */
	OP_LIMITS,      /* returns [thread stack, RLIMIT_STACK, RLIMIT_NOFILE, RLIMIT_AS, ppid] */
};

static ferry_value *mapv(int op, int64_t x)
{
	ferry_value *m = ferry_value_map();
	ferry_value_map_set(m, "op", ferry_value_int(op));
	ferry_value_map_set(m, "x", ferry_value_int(x));
	return m;
}

static int64_t geti(const ferry_value *m, const char *k)
{
	int64_t v = 0;
	ferry_value_get_int(ferry_value_map_get(m, k), &v);
	return v;
}

static int tfn(ferry_pool_ctx *ctx, const ferry_value *arg, ferry_value **res)
{
	if (ferry_value_kind(arg) == FERRY_VALUE_INT) {
		int64_t n;
		ferry_value_get_int(arg, &n);
		if (n >= 0 && n < RUNS)
			atomic_fetch_add(&sh->runs[n], 1);
		*res = ferry_value_int(n * 2);
		return 0;
	}
	if (ferry_value_kind(arg) != FERRY_VALUE_MAP)
		return 0; /* no value: no result */
	int64_t x = geti(arg, "x");
	switch (geti(arg, "op")) {
	case OP_ECHO: {
		const ferry_value *v = ferry_value_map_get(arg, "v");
		size_t len;
		if (ferry_value_kind(v) == FERRY_VALUE_STR) {
			const char *s = ferry_value_get_str(v, &len);
			*res = ferry_value_strn(s, len);
		} else {
			*res = ferry_value_null();
		}
		return 0;
	}
	case OP_FAIL:
		return ferry_pool_ctx_fail(ctx, -EDOM, "failing on purpose with %lld", (long long)x);
	case OP_SEGV:
		raise(SIGSEGV);
		return 0;
	case OP_EXIT:
		if (ferry_pool_ctx_backend(ctx) == FERRY_PROCESS)
			_exit((int)x);
		ferry_worker_exit((int)x);
		return 0;
	case OP_BLOCK:
		atomic_fetch_add(&sh->started, 1);
		while (!__atomic_load_n(&sh->gate, __ATOMIC_ACQUIRE))
			ferry_wait(&sh->gate, 0, 100 * MS);
		*res = ferry_value_int(x);
		return 0;
	case OP_SPIN_ABORT:
		atomic_fetch_add(&sh->started, 1);
		while (!ferry_pool_ctx_aborted(ctx))
			ferry_wait(ferry_pool_ctx_abort_word(ctx), 0, 10 * MS);
		atomic_fetch_add(&sh->aborted, 1);
		return -ECANCELED;
	case OP_SLEEP:
		atomic_fetch_add(&sh->started, 1);
		for (int64_t i = 0; i < x; i++)
			usleep(1000);
		atomic_fetch_add(&sh->finished, 1);
		return 0;
	case OP_BUF_SUM: {
		ferry_buf *b = ferry_value_get_handle(ferry_value_map_get(arg, "b"), NULL);
		const unsigned char *d = ferry_buf_data(b);
		int64_t sum = 0;
		for (size_t i = 0; i < ferry_buf_len(b); i++)
			sum += d[i];
		*res = ferry_value_int(sum);
		return 0;
	}
	case OP_BUF_MAKE:
	case OP_BUF_CLONE: {
		ferry_buf *b;
		if (ferry_buf_create(&b, (size_t)x, 0))
			return -ENOMEM;
		unsigned char *d = ferry_buf_data(b);
		for (int64_t i = 0; i < x; i++)
			d[i] = (unsigned char)(i % 251);
		ferry_value *m = ferry_value_map();
		ferry_value_map_set(m, "b", ferry_value_handle(FERRY_VALUE_BUF, b));
		if (geti(arg, "op") == OP_BUF_MAKE)
			ferry_pool_ctx_transfer(ctx, b);
		*res = m;
		return 0;
	}
	case OP_SHARED: {
		ferry_buf *b = ferry_value_get_handle(ferry_value_map_get(arg, "s"), NULL);
		uint32_t *w = ferry_buf_data(b);
		__atomic_store_n(&w[1], __atomic_load_n(&w[0], __ATOMIC_ACQUIRE) + 1, __ATOMIC_RELEASE);
		return 0;
	}
	case OP_BIG: {
		char *s = malloc((size_t)x + 1);
		memset(s, 'z', (size_t)x);
		s[x] = 0;
		*res = ferry_value_str(s);
		free(s);
		return 0;
	}
	case OP_WDATA: {
		const ferry_value *wd = ferry_pool_ctx_value(ctx);
		if (!wd) {
			*res = ferry_value_null();
			return 0;
		}
		ferry_buf *b = ferry_value_get_handle(ferry_value_map_get(wd, "b"), NULL);
		ferry_buf *sb = ferry_value_get_handle(ferry_value_map_get(wd, "s"), NULL);
		if (!b || !sb || ferry_buf_len(sb) < 4)
			return ferry_pool_ctx_fail(ctx, -EPROTO, "the value lacks its buffers");
		const unsigned char *d = ferry_buf_data(b);
		int64_t sum = 0;
		for (size_t i = 0; i < ferry_buf_len(b); i++)
			sum += d[i];
		__atomic_fetch_add((uint32_t *)ferry_buf_data(sb), 1, __ATOMIC_ACQ_REL);
		ferry_value *a = ferry_value_array();
		ferry_value_array_push(a, ferry_value_int(geti(wd, "n")));
		ferry_value_array_push(a, ferry_value_int(sum));
		ferry_value_array_push(a, ferry_value_int(ferry_pool_ctx_worker(ctx)));
		*res = a;
		return 0;
	}
	case OP_LIMITS: {
		pthread_attr_t at;
		size_t stack = 0;
		if (pthread_getattr_np(pthread_self(), &at) == 0) {
			pthread_attr_getstacksize(&at, &stack);
			pthread_attr_destroy(&at);
		}
		struct rlimit rs, rn, ra;
		getrlimit(RLIMIT_STACK, &rs);
		getrlimit(RLIMIT_NOFILE, &rn);
		getrlimit(RLIMIT_AS, &ra);
		ferry_value *a = ferry_value_array();
		ferry_value_array_push(a, ferry_value_int((int64_t)stack));
		ferry_value_array_push(a, ferry_value_int((int64_t)rs.rlim_cur));
		ferry_value_array_push(a, ferry_value_int((int64_t)rn.rlim_cur));
		ferry_value_array_push(a, ferry_value_int((int64_t)ra.rlim_cur));
		ferry_value_array_push(a, ferry_value_int(getppid()));
		*res = a;
		return 0;
	}
	case OP_INFO: {
		size_t len;
		const char *d = ferry_pool_ctx_data(ctx, &len);
		ferry_value *a = ferry_value_array();
		ferry_value_array_push(a, ferry_value_int(ferry_pool_ctx_worker(ctx)));
		ferry_value_array_push(a, ferry_value_int(ferry_pool_ctx_backend(ctx)));
		ferry_value_array_push(a, ferry_value_strn(d ? d : "", len));
		ferry_value_array_push(a, ferry_value_int((int64_t)(intptr_t)ferry_pool_ctx_user(ctx)));
		char name[16] = "";
		prctl(PR_GET_NAME, name); /* the thread's, or the process's */
		ferry_value_array_push(a, ferry_value_str(name));
		*res = a;
		return 0;
	}
	}
	return ferry_pool_ctx_fail(ctx, -ENOSYS, "unknown op");
}

static ferry_pool *mk(int backend, struct ferry_pool_opts *o)
{
	o->backend = backend;
	if (!o->fn)
		o->fn = tfn;
	ferry_pool *p = NULL;
	int rc = ferry_pool_create(&p, o);
	cr_assert_eq(rc, 0, "create %s: %s", bname(backend), ferry_errmsg());
	cr_assert_not_null(p);
	return p;
}

static ferry_pool_task *submit(ferry_pool *p, ferry_value *v)
{
	ferry_pool_task *t = NULL;
	int rc = ferry_pool_submit(p, v, NULL, &t);
	ferry_value_free(v);
	cr_assert_eq(rc, 0, "submit: %s", ferry_errmsg());
	return t;
}

static int64_t result_int(ferry_pool_task *t)
{
	int rc = ferry_pool_task_wait(t, 20 * SEC);
	cr_assert_eq(rc, 0, "task: %d %s", rc, ferry_errmsg());
	int64_t v = -1;
	cr_assert_eq(ferry_value_get_int(ferry_pool_task_value(t), &v), 0);
	return v;
}

static void until(_Atomic int *c, int want)
{
	int64_t end = tu_now_ns() + 20 * SEC;
	while (atomic_load(c) < want) {
		cr_assert_lt(tu_now_ns(), end, "waited 20 s for %d (at %d)", want, atomic_load(c));
		usleep(1000);
	}
}

static void open_gate(void)
{
	__atomic_store_n(&sh->gate, 1, __ATOMIC_RELEASE);
	ferry_notify(&sh->gate, FERRY_NOTIFY_ALL);
}

/* ---- create and argument errors ---- */

static void create_fails(struct ferry_pool_opts o, const char *needle)
{
	ferry_pool *p = (ferry_pool *)1;
	int rc = ferry_pool_create(&p, &o);
	cr_expect_eq(rc, -EINVAL, "%s: rc %d", needle, rc);
	cr_expect_null(p);
	cr_expect(strstr(ferry_errmsg(), needle) != NULL, "message \"%s\" lacks \"%s\"", ferry_errmsg(), needle);
}

static void create_errors(int backend)
{
	struct ferry_pool_opts ok = { .backend = backend, .fn = tfn };
	cr_expect_eq(ferry_pool_create(NULL, &ok), -EINVAL);
	cr_expect(strstr(ferry_errmsg(), "out") != NULL);
	ferry_pool *p = (ferry_pool *)1;
	cr_expect_eq(ferry_pool_create(&p, NULL), -EINVAL);
	cr_expect_null(p);
	cr_expect(strstr(ferry_errmsg(), "opts") != NULL);
	struct ferry_pool_opts o;
	o = ok; o.fn = NULL; create_fails(o, "opts.fn");
	o = ok; o.backend = 7; create_fails(o, "opts.backend");
	o = ok; o.max_workers = -1; create_fails(o, "opts.max_workers");
	o = ok; o.max_workers = FERRY_POOL_MAX_WORKERS + 1; create_fails(o, "opts.max_workers");
	o = ok; o.min_workers = -2; create_fails(o, "opts.min_workers");
	o = ok; o.min_workers = 3; o.max_workers = 2; create_fails(o, "opts.min_workers");
	o = ok; o.concurrency = -1; create_fails(o, "opts.concurrency");
	o = ok; o.concurrency = FERRY_POOL_MAX_CONCURRENCY + 1; create_fails(o, "opts.concurrency");
	o = ok; o.max_queue = FERRY_POOL_MAX_QUEUE + 1; create_fails(o, "opts.max_queue");
	o = ok; o.inline_bytes = FERRY_POOL_INLINE_MAX + 1; create_fails(o, "opts.inline_bytes");
	o = ok; o.data_len = 4; create_fails(o, "opts.data");
	o = ok; o.idle_timeout_ns = -5; create_fails(o, "opts.idle_timeout_ns");
	o = ok; o.queue_wait_ns = -5; create_fails(o, "opts.queue_wait_ns");
	o = ok; o.task_timeout_ns = -1; create_fails(o, "opts.task_timeout_ns");
	o = ok; o.kill_grace_ns = -5; create_fails(o, "opts.kill_grace_ns");
	o = ok; o.spin_ns = -1; create_fails(o, "opts.spin_ns");
	o = ok; o.spin_ns = 2 * SEC; create_fails(o, "opts.spin_ns");
}

Test(pool, create_errors_thread) { create_errors(FERRY_THREAD); }
Test(pool, create_errors_process) { create_errors(FERRY_PROCESS); }

static void call_errors(int backend)
{
	struct ferry_pool_opts o = { .min_workers = 1, .max_workers = 1 };
	ferry_pool *p = mk(backend, &o);
	ferry_pool_task *t = (ferry_pool_task *)1;
	cr_expect_eq(ferry_pool_submit(NULL, NULL, NULL, &t), -EINVAL);
	cr_expect_null(t);
	cr_expect(strstr(ferry_errmsg(), "pool") != NULL);
	struct ferry_xfer x = { 0 };
	cr_expect_eq(ferry_pool_submit(p, NULL, &x, &t), -EINVAL);
	cr_expect(strstr(ferry_errmsg(), "transfer") != NULL);
	struct ferry_pool_submit_opts so = { .timeout_ns = -3 };
	cr_expect_eq(ferry_pool_submit_ex(p, NULL, NULL, &so, &t), -EINVAL);
	cr_expect(strstr(ferry_errmsg(), "timeout_ns") != NULL);
	/* A bad transfer list fails, and nothing moved. */
	ferry_buf *b;
	cr_assert_eq(ferry_buf_create(&b, 16, 0), 0);
	ferry_buf *twice[2] = { b, b };
	struct ferry_xfer bad = { twice, 2, NULL, 0 };
	ferry_value *v = ferry_value_handle(FERRY_VALUE_BUF, b);
	cr_expect_eq(ferry_pool_submit(p, v, &bad, &t), -EINVAL);
	cr_expect_eq(ferry_buf_is_detached(b), 0);
	ferry_value_free(v);
	ferry_buf_free(b);
	cr_expect_eq(ferry_pool_task_wait(NULL, 0), -EINVAL);
	cr_expect_eq(ferry_pool_task_poll(NULL), -EINVAL);
	cr_expect_eq(ferry_pool_task_status(NULL), -EINVAL);
	cr_expect_eq(ferry_pool_task_cancel(NULL), -EINVAL);
	cr_expect_eq(ferry_pool_task_keep(NULL, b), -EINVAL);
	cr_expect_eq(ferry_pool_task_times(NULL, NULL, NULL), -EINVAL);
	cr_expect_null(ferry_pool_task_value(NULL));
	cr_expect_null(ferry_pool_task_take_value(NULL));
	cr_expect_str_eq(ferry_pool_task_errmsg(NULL), "");
	ferry_pool_task_free(NULL);
	struct ferry_pool_stats st;
	cr_expect_eq(ferry_pool_stats(NULL, &st), -EINVAL);
	cr_expect_eq(ferry_pool_stats(p, NULL), -EINVAL);
	cr_expect_eq(ferry_pool_drain(NULL, 0), -EINVAL);
	cr_expect_eq(ferry_pool_worker_pids(NULL, NULL, 0), -EINVAL);
	cr_expect_eq(ferry_pool_worker_pids(p, NULL, 1), -EINVAL);
	cr_expect_eq(ferry_pool_ctx_fail(NULL, -EDOM, "x"), -EINVAL);
	cr_expect_eq(ferry_pool_ctx_transfer(NULL, NULL), -EINVAL);
	cr_expect_eq(ferry_pool_ctx_transfer_port(NULL, NULL), -EINVAL);
	cr_expect_eq(ferry_pool_ctx_keep(NULL, NULL), -EINVAL);
	cr_expect_null(ferry_pool_ctx_take_arg(NULL));
	cr_expect_eq(ferry_pool_ctx_aborted(NULL), 0);
	ferry_pool_destroy(p, FERRY_FOREVER);
	ferry_pool_destroy(NULL, 0);
}

Test(pool, call_errors_thread) { call_errors(FERRY_THREAD); }
Test(pool, call_errors_process) { call_errors(FERRY_PROCESS); }

/* ---- values ---- */

static void values(int backend)
{
	struct ferry_pool_opts o = { .min_workers = 2, .max_workers = 2, .inline_bytes = 256 };
	ferry_pool *p = mk(backend, &o);
	/* Ints, many, inline both ways. */
	ferry_pool_task *ts[200];
	for (int i = 0; i < 200; i++)
		ts[i] = submit(p, ferry_value_int(i));
	for (int i = 0; i < 200; i++) {
		cr_assert_eq(result_int(ts[i]), 2 * i);
		ferry_pool_task_free(ts[i]);
	}
	for (int i = 0; i < 200; i++)
		cr_expect_eq(atomic_load(&sh->runs[i]), 1, "task %d ran %d times", i, atomic_load(&sh->runs[i]));
	/* No value in, no value out. */
	ferry_pool_task *t = submit(p, NULL);
	cr_assert_eq(ferry_pool_task_wait(t, 20 * SEC), 0);
	cr_expect_null(ferry_pool_task_value(t));
	ferry_pool_task_free(t);
	/* Larger than the inline area both ways: through the port. */
	for (size_t n = 100; n <= 100000; n *= 10) {
		ferry_value *m = mapv(OP_ECHO, 0);
		char *s = malloc(n + 1);
		memset(s, 'a' + (int)(n % 26), n);
		s[n] = 0;
		ferry_value_map_set(m, "v", ferry_value_str(s));
		t = submit(p, m);
		cr_assert_eq(ferry_pool_task_wait(t, 20 * SEC), 0, "%s", ferry_errmsg());
		size_t len = 0;
		const char *got = ferry_value_get_str(ferry_pool_task_value(t), &len);
		cr_assert_not_null(got);
		cr_expect_eq(len, n);
		cr_expect_eq(memcmp(got, s, n), 0);
		/* take: the caller's graph now */
		ferry_value *mine = ferry_pool_task_take_value(t);
		cr_expect_not_null(mine);
		cr_expect_null(ferry_pool_task_value(t));
		cr_expect_null(ferry_pool_task_take_value(t));
		ferry_pool_task_free(t);
		cr_expect_eq(ferry_value_len(mine), n);
		ferry_value_free(mine);
		free(s);
	}
	/* A big result from a small request. */
	t = submit(p, mapv(OP_BIG, 5000));
	cr_assert_eq(ferry_pool_task_wait(t, 20 * SEC), 0);
	cr_expect_eq(ferry_value_len(ferry_pool_task_value(t)), 5000);
	ferry_pool_task_free(t);
	ferry_pool_destroy(p, FERRY_FOREVER);
}

Test(pool, values_thread) { values(FERRY_THREAD); }
Test(pool, values_process) { values(FERRY_PROCESS); }

static void buffers(int backend)
{
	struct ferry_pool_opts o = { .min_workers = 1, .max_workers = 1 };
	ferry_pool *p = mk(backend, &o);
	/* Transferred in: the caller's handle is detached; cloned in: kept. */
	for (int xf = 0; xf < 2; xf++) {
		size_t n = 100 * 1024;
		ferry_buf *b;
		cr_assert_eq(ferry_buf_create(&b, n, 0), 0);
		unsigned char *d = ferry_buf_data(b);
		int64_t want = 0;
		for (size_t i = 0; i < n; i++) {
			d[i] = (unsigned char)(i * 7);
			want += d[i];
		}
		ferry_value *m = mapv(OP_BUF_SUM, 0);
		ferry_value_map_set(m, "b", ferry_value_handle(FERRY_VALUE_BUF, b));
		struct ferry_xfer x = { &b, 1, NULL, 0 };
		ferry_pool_task *t;
		cr_assert_eq(ferry_pool_submit(p, m, xf ? &x : NULL, &t), 0, "%s", ferry_errmsg());
		ferry_value_free(m);
		cr_expect_eq(ferry_buf_is_detached(b), xf);
		cr_expect_eq(result_int(t), want);
		ferry_pool_task_free(t);
		ferry_buf_free(b);
	}
	/* Transferred and cloned out: the result's buffer is kept by the caller. */
	for (int op = OP_BUF_MAKE; op; op = op == OP_BUF_MAKE ? OP_BUF_CLONE : 0) {
		ferry_pool_task *t = submit(p, mapv(op, 70000));
		cr_assert_eq(ferry_pool_task_wait(t, 20 * SEC), 0, "%s", ferry_errmsg());
		ferry_buf *rb = ferry_value_get_handle(ferry_value_map_get(ferry_pool_task_value(t), "b"), NULL);
		cr_assert_not_null(rb);
		cr_assert_eq(ferry_pool_task_keep(t, rb), 0);
		cr_expect_eq(ferry_pool_task_keep(t, (void *)&o), -ENOENT);
		ferry_pool_task_free(t);
		cr_assert_eq(ferry_buf_len(rb), 70000);
		const unsigned char *d = ferry_buf_data(rb);
		for (size_t i = 0; i < 70000; i += 997)
			cr_assert_eq(d[i], (unsigned char)(i % 251));
		ferry_buf_free(rb);
	}
	/* Shared both ways: the task writes, the caller sees it. */
	ferry_buf *s;
	cr_assert_eq(ferry_buf_create(&s, 64, FERRY_BUF_SHARED), 0);
	uint32_t *w = ferry_buf_data(s);
	w[0] = 41;
	ferry_value *m = mapv(OP_SHARED, 0);
	ferry_value_map_set(m, "s", ferry_value_handle(FERRY_VALUE_SHARED, s));
	ferry_pool_task *t = submit(p, m);
	cr_assert_eq(ferry_pool_task_wait(t, 20 * SEC), 0, "%s", ferry_errmsg());
	cr_expect_eq(__atomic_load_n(&w[1], __ATOMIC_ACQUIRE), 42u);
	ferry_pool_task_free(t);
	ferry_buf_free(s);
	ferry_pool_destroy(p, FERRY_FOREVER);
}

Test(pool, buffers_thread) { buffers(FERRY_THREAD); }
Test(pool, buffers_process) { buffers(FERRY_PROCESS); }

static void data_and_arg(int backend)
{
	static const char data[] = "pool data";
	struct ferry_pool_opts o = { .min_workers = 1, .max_workers = 1, .data = data,
				     .data_len = sizeof data - 1, .arg = (void *)0x5678, .name = "crunch" };
	ferry_pool *p = mk(backend, &o);
	ferry_pool_task *t = submit(p, mapv(OP_INFO, 0));
	cr_assert_eq(ferry_pool_task_wait(t, 20 * SEC), 0, "%s", ferry_errmsg());
	const ferry_value *a = ferry_pool_task_value(t);
	int64_t no = 0, be = -1, user = 0;
	ferry_value_get_int(ferry_value_array_get(a, 0), &no);
	ferry_value_get_int(ferry_value_array_get(a, 1), &be);
	ferry_value_get_int(ferry_value_array_get(a, 3), &user);
	cr_expect_eq(no, 1);
	cr_expect_eq(be, backend);
	cr_expect_str_eq(ferry_value_get_str(ferry_value_array_get(a, 2), NULL), "pool data");
	cr_expect_eq(user, 0x5678);
	cr_expect_str_eq(ferry_value_get_str(ferry_value_array_get(a, 4), NULL), "crunch-1");
	ferry_pool_task_free(t);
	pid_t pids[4];
	cr_expect_eq(ferry_pool_worker_pids(p, pids, 4), 1);
	if (backend == FERRY_THREAD)
		cr_expect_eq(pids[0], getpid());
	else
		cr_expect_neq(pids[0], getpid());
	ferry_pool_destroy(p, FERRY_FOREVER);
}

Test(pool, data_and_arg_thread) { data_and_arg(FERRY_THREAD); }
Test(pool, data_and_arg_process) { data_and_arg(FERRY_PROCESS); }

/* ---- failures and crashes ---- */

static void task_error(int backend)
{
	struct ferry_pool_opts o = { .min_workers = 1, .max_workers = 1 };
	ferry_pool *p = mk(backend, &o);
	ferry_pool_task *t = submit(p, mapv(OP_FAIL, 5));
	cr_expect_eq(ferry_pool_task_wait(t, 20 * SEC), -EDOM);
	cr_expect_str_eq(ferry_errmsg(), "failing on purpose with 5");
	cr_expect_str_eq(ferry_pool_task_errmsg(t), "failing on purpose with 5");
	cr_expect_eq(ferry_pool_task_status(t), -EDOM);
	cr_expect_null(ferry_pool_task_value(t));
	ferry_pool_task_free(t);
	/* Only that task: the worker goes on. */
	t = submit(p, ferry_value_int(21));
	cr_expect_eq(result_int(t), 42);
	ferry_pool_task_free(t);
	struct ferry_pool_stats st;
	ferry_pool_stats(p, &st);
	cr_expect_eq(st.failed, 1);
	cr_expect_eq(st.completed, 1);
	cr_expect_eq(st.crashes, 0);
	cr_expect_eq(st.spawned, 1);
	ferry_pool_destroy(p, FERRY_FOREVER);
}

Test(pool, task_error_thread) { task_error(FERRY_THREAD); }
Test(pool, task_error_process) { task_error(FERRY_PROCESS); }

/* A worker that ends inside a task (exit, or a crash on processes): that
 * task fails naming the cause, the worker is replaced, the rest complete. */
static void worker_dies(int backend, int op, int64_t x, const char *cause)
{
	struct ferry_pool_opts o = { .min_workers = 2, .max_workers = 2 };
	ferry_pool *p = mk(backend, &o);
	ferry_pool_task *before[50], *after[50];
	for (int i = 0; i < 50; i++)
		before[i] = submit(p, ferry_value_int(i));
	ferry_pool_task *bad = submit(p, mapv(op, x));
	for (int i = 0; i < 50; i++)
		after[i] = submit(p, ferry_value_int(100 + i));
	cr_expect_eq(ferry_pool_task_wait(bad, 20 * SEC), FERRY_EWORKER);
	const char *msg = ferry_pool_task_errmsg(bad);
	cr_expect(strstr(msg, "worker ") == msg && strstr(msg, cause), "message: \"%s\"", msg);
	ferry_pool_task_free(bad);
	for (int i = 0; i < 50; i++) {
		cr_expect_eq(result_int(before[i]), 2 * i);
		cr_expect_eq(result_int(after[i]), 2 * (100 + i));
		ferry_pool_task_free(before[i]);
		ferry_pool_task_free(after[i]);
	}
	for (int i = 0; i < 50; i++) {
		cr_expect_eq(atomic_load(&sh->runs[i]), 1);
		cr_expect_eq(atomic_load(&sh->runs[100 + i]), 1);
	}
	struct ferry_pool_stats st;
	ferry_pool_stats(p, &st);
	cr_expect_eq(st.crashes, 1);
	cr_expect_eq(st.failed, 1);
	cr_expect_eq(st.completed, 100);
	/* Replaced: both workers serve again. */
	int64_t end = tu_now_ns() + 20 * SEC;
	while (ferry_pool_worker_pids(p, NULL, 0) < 2 && tu_now_ns() < end)
		usleep(1000);
	cr_expect_eq(ferry_pool_worker_pids(p, NULL, 0), 2);
	ferry_pool_stats(p, &st);
	cr_expect_eq(st.spawned, 3, "spawned %llu", (unsigned long long)st.spawned);
	ferry_pool_destroy(p, FERRY_FOREVER);
}

Test(pool, crash_segv_process) { worker_dies(FERRY_PROCESS, OP_SEGV, 0, "killed by SIGSEGV"); }
Test(pool, crash_exit_process) { worker_dies(FERRY_PROCESS, OP_EXIT, 3, "exited with code 3"); }
Test(pool, worker_exit_thread) { worker_dies(FERRY_THREAD, OP_EXIT, 4, "exited with code 4"); }

/* ---- queue bound ---- */

static void queue_full(int backend)
{
	struct ferry_pool_opts o = { .min_workers = 1, .max_workers = 1, .max_queue = 2 };
	ferry_pool *p = mk(backend, &o);
	ferry_pool_task *run = submit(p, mapv(OP_BLOCK, 1));
	until(&sh->started, 1);
	ferry_pool_task *q1 = submit(p, ferry_value_int(1));
	ferry_pool_task *q2 = submit(p, ferry_value_int(2));
	ferry_pool_task *t = (ferry_pool_task *)1;
	ferry_value *v = ferry_value_int(3);
	cr_expect_eq(ferry_pool_submit(p, v, NULL, &t), -EAGAIN);
	cr_expect_null(t);
	cr_expect(strstr(ferry_errmsg(), "queue is full") != NULL, "%s", ferry_errmsg());
	struct ferry_pool_stats st;
	ferry_pool_stats(p, &st);
	cr_expect_eq(st.queued, 2);
	cr_expect_eq(st.running, 1);
	open_gate();
	cr_expect_eq(result_int(run), 1);
	cr_expect_eq(result_int(q1), 2);
	cr_expect_eq(result_int(q2), 4);
	ferry_pool_task_free(run);
	ferry_pool_task_free(q1);
	ferry_pool_task_free(q2);
	ferry_value_free(v);
	ferry_pool_destroy(p, FERRY_FOREVER);
}

Test(pool, queue_full_thread) { queue_full(FERRY_THREAD); }
Test(pool, queue_full_process) { queue_full(FERRY_PROCESS); }

static void *opener(void *arg)
{
	usleep((useconds_t)(intptr_t)arg);
	open_gate();
	return NULL;
}

static void queue_wait(int backend)
{
	struct ferry_pool_opts o = { .min_workers = 1, .max_workers = 1, .max_queue = 1,
				     .queue_wait_ns = 50 * MS };
	ferry_pool *p = mk(backend, &o);
	ferry_pool_task *run = submit(p, mapv(OP_BLOCK, 1));
	until(&sh->started, 1);
	ferry_pool_task *q1 = submit(p, ferry_value_int(1));
	ferry_pool_task *t;
	ferry_value *v = ferry_value_int(2);
	int64_t t0 = tu_now_ns();
	cr_expect_eq(ferry_pool_submit(p, v, NULL, &t), -ETIMEDOUT);
	cr_expect_geq(tu_now_ns() - t0, 50 * MS);
	open_gate();
	cr_expect_eq(result_int(run), 1);
	cr_expect_eq(result_int(q1), 2);
	ferry_pool_task_free(q1);
	ferry_pool_task_free(run);
	ferry_pool_destroy(p, FERRY_FOREVER);
	/* With a forever wait, room appears when the running task ends. */
	__atomic_store_n(&sh->gate, 0, __ATOMIC_RELEASE);
	atomic_store(&sh->started, 0);
	o.queue_wait_ns = FERRY_FOREVER;
	p = mk(backend, &o);
	run = submit(p, mapv(OP_BLOCK, 1));
	until(&sh->started, 1);
	q1 = submit(p, ferry_value_int(1));
	pthread_t th;
	pthread_create(&th, NULL, opener, (void *)(intptr_t)50000);
	t0 = tu_now_ns();
	cr_expect_eq(ferry_pool_submit(p, v, NULL, &t), 0);
	cr_expect_geq(tu_now_ns() - t0, 10 * MS);
	pthread_join(th, NULL);
	cr_expect_eq(result_int(t), 4);
	cr_expect_eq(result_int(q1), 2);
	cr_expect_eq(result_int(run), 1);
	ferry_pool_task_free(t);
	ferry_pool_task_free(q1);
	ferry_pool_task_free(run);
	ferry_value_free(v);
	ferry_pool_destroy(p, FERRY_FOREVER);
}

Test(pool, queue_wait_thread) { queue_wait(FERRY_THREAD); }
Test(pool, queue_wait_process) { queue_wait(FERRY_PROCESS); }

/* ---- waiting ---- */

static void wait_poll(int backend)
{
	struct ferry_pool_opts o = { .min_workers = 1, .max_workers = 1 };
	ferry_pool *p = mk(backend, &o);
	ferry_pool_task *t = submit(p, mapv(OP_BLOCK, 9));
	until(&sh->started, 1);
	cr_expect_eq(ferry_pool_task_poll(t), 0);
	cr_expect_eq(ferry_pool_task_status(t), -EINPROGRESS);
	cr_expect_eq(ferry_pool_task_wait(t, 0), -EAGAIN);
	int64_t t0 = tu_now_ns();
	cr_expect_eq(ferry_pool_task_wait(t, 30 * MS), -ETIMEDOUT);
	cr_expect_geq(tu_now_ns() - t0, 30 * MS);
	cr_expect_null(ferry_pool_task_value(t));
	cr_expect_str_eq(ferry_pool_task_errmsg(t), "");
	open_gate();
	int64_t end = tu_now_ns() + 20 * SEC;
	while (!ferry_pool_task_poll(t) && tu_now_ns() < end)
		usleep(100);
	cr_expect_eq(ferry_pool_task_poll(t), 1);
	cr_expect_eq(ferry_pool_task_status(t), 0);
	cr_expect_eq(result_int(t), 9);
	int64_t wait_ns = -1, run_ns = -1;
	cr_expect_eq(ferry_pool_task_times(t, &wait_ns, &run_ns), 0);
	cr_expect_geq(wait_ns, 0);
	cr_expect_geq(run_ns, 30 * MS);
	ferry_pool_task_free(t);
	ferry_pool_destroy(p, FERRY_FOREVER);
}

Test(pool, wait_poll_thread) { wait_poll(FERRY_THREAD); }
Test(pool, wait_poll_process) { wait_poll(FERRY_PROCESS); }

/* ---- cancel ---- */

static void cancel_queued(int backend)
{
	struct ferry_pool_opts o = { .min_workers = 1, .max_workers = 1 };
	ferry_pool *p = mk(backend, &o);
	ferry_pool_task *run = submit(p, mapv(OP_BLOCK, 1));
	until(&sh->started, 1);
	ferry_pool_task *q = submit(p, ferry_value_int(7));
	cr_expect_eq(ferry_pool_task_cancel(q), 0);
	cr_expect_eq(ferry_pool_task_wait(q, 0), -ECANCELED);
	cr_expect(strstr(ferry_errmsg(), "cancelled before it started") != NULL, "%s", ferry_errmsg());
	cr_expect_eq(ferry_pool_task_cancel(q), -EALREADY);
	ferry_pool_task *after = submit(p, ferry_value_int(8));
	open_gate();
	cr_expect_eq(result_int(after), 16);
	cr_expect_eq(result_int(run), 1);
	cr_expect_eq(ferry_pool_task_cancel(run), -EALREADY);
	cr_expect_eq(atomic_load(&sh->runs[7]), 0, "a cancelled task ran");
	struct ferry_pool_stats st;
	ferry_pool_stats(p, &st);
	cr_expect_eq(st.cancelled, 1);
	cr_expect_eq(st.completed, 2);
	ferry_pool_task_free(q);
	ferry_pool_task_free(after);
	ferry_pool_task_free(run);
	ferry_pool_destroy(p, FERRY_FOREVER);
}

Test(pool, cancel_queued_thread) { cancel_queued(FERRY_THREAD); }
Test(pool, cancel_queued_process) { cancel_queued(FERRY_PROCESS); }

static void cancel_running(int backend)
{
	struct ferry_pool_opts o = { .min_workers = 1, .max_workers = 1 };
	ferry_pool *p = mk(backend, &o);
	ferry_pool_task *t = submit(p, mapv(OP_SPIN_ABORT, 0));
	until(&sh->started, 1);
	cr_expect_eq(ferry_pool_task_cancel(t), 0);
	cr_expect_eq(ferry_pool_task_wait(t, 0), -ECANCELED);
	cr_expect(strstr(ferry_errmsg(), "cancelled while it ran") != NULL, "%s", ferry_errmsg());
	until(&sh->aborted, 1); /* the task saw its abort word */
	/* The worker serves on (no kill: the task returned). */
	ferry_pool_task *n = submit(p, ferry_value_int(5));
	cr_expect_eq(result_int(n), 10);
	struct ferry_pool_stats st;
	ferry_pool_stats(p, &st);
	cr_expect_eq(st.crashes, 0);
	cr_expect_eq(st.cancelled, 1);
	ferry_pool_task_free(n);
	ferry_pool_task_free(t);
	ferry_pool_destroy(p, FERRY_FOREVER);
}

Test(pool, cancel_running_thread) { cancel_running(FERRY_THREAD); }
Test(pool, cancel_running_process) { cancel_running(FERRY_PROCESS); }

/* A process worker whose cancelled task ignores the abort is killed after
 * the grace period; only that task fails, and the worker is replaced. */
Test(pool, cancel_escalates_process)
{
	struct ferry_pool_opts o = { .min_workers = 2, .max_workers = 2, .kill_grace_ns = 50 * MS };
	ferry_pool *p = mk(FERRY_PROCESS, &o);
	ferry_pool_task *t = submit(p, mapv(OP_SLEEP, 20000));
	until(&sh->started, 1);
	ferry_pool_task *others[20];
	for (int i = 0; i < 20; i++)
		others[i] = submit(p, ferry_value_int(i));
	int64_t t0 = tu_now_ns();
	cr_expect_eq(ferry_pool_task_cancel(t), 0);
	cr_expect_eq(ferry_pool_task_wait(t, 0), -ECANCELED);
	for (int i = 0; i < 20; i++) {
		cr_expect_eq(result_int(others[i]), 2 * i);
		ferry_pool_task_free(others[i]);
	}
	struct ferry_pool_stats st;
	int64_t end = tu_now_ns() + 20 * SEC;
	do {
		usleep(1000);
		ferry_pool_stats(p, &st);
	} while ((st.crashes < 1 || st.spawned < 3) && tu_now_ns() < end);
	cr_expect_geq(tu_now_ns() - t0, 50 * MS);
	cr_expect_eq(st.crashes, 1);
	cr_expect_eq(st.spawned, 3);
	cr_expect_eq(st.cancelled, 1);
	cr_expect_eq(st.completed, 20);
	cr_expect_eq(atomic_load(&sh->finished), 0);
	ferry_pool_task_free(t);
	ferry_pool_destroy(p, FERRY_FOREVER);
}

/* ---- run-time limit ---- */

static void timeout(int backend, int op, int64_t x)
{
	struct ferry_pool_opts o = { .min_workers = 1, .max_workers = 1, .task_timeout_ns = 50 * MS,
				     .kill_grace_ns = 20 * MS };
	ferry_pool *p = mk(backend, &o);
	int64_t t0 = tu_now_ns();
	ferry_pool_task *t = submit(p, mapv(op, x));
	cr_expect_eq(ferry_pool_task_wait(t, 20 * SEC), -ETIME);
	cr_expect_geq(tu_now_ns() - t0, 50 * MS);
	cr_expect(strstr(ferry_errmsg(), "longer than its limit") != NULL, "%s", ferry_errmsg());
	ferry_pool_task_free(t);
	/* Per task: none for this one (it finishes), and the others go on. */
	struct ferry_pool_submit_opts so = { .timeout_ns = FERRY_FOREVER };
	ferry_value *v = mapv(OP_SLEEP, 80);
	cr_assert_eq(ferry_pool_submit_ex(p, v, NULL, &so, &t), 0);
	ferry_value_free(v);
	cr_expect_eq(ferry_pool_task_wait(t, 20 * SEC), 0, "%s", ferry_errmsg());
	ferry_pool_task_free(t);
	ferry_pool_task *n = submit(p, ferry_value_int(3));
	cr_expect_eq(result_int(n), 6);
	ferry_pool_task_free(n);
	struct ferry_pool_stats st;
	ferry_pool_stats(p, &st);
	cr_expect_eq(st.failed, 1);
	cr_expect_eq(st.crashes, backend == FERRY_PROCESS ? 1u : 0u);
	ferry_pool_destroy(p, FERRY_FOREVER);
}

/* Threads are asked (the task returns); processes are killed (it sleeps on). */
Test(pool, timeout_thread) { timeout(FERRY_THREAD, OP_SPIN_ABORT, 0); }
Test(pool, timeout_process) { timeout(FERRY_PROCESS, OP_SLEEP, 20000); }

/* ---- callbacks and drain ---- */

struct cb_state {
	_Atomic int calls;
	_Atomic int ok;
	_Atomic int wrong_thread;
	pthread_t submitter;
	_Atomic int drains;
};

static void on_done(ferry_pool_task *t, void *arg)
{
	struct cb_state *cs = arg;
	int64_t v = -1;
	if (ferry_pool_task_status(t) == 0 && ferry_value_get_int(ferry_pool_task_value(t), &v) == 0 && v >= 0)
		atomic_fetch_add(&cs->ok, 1);
	if (pthread_equal(pthread_self(), cs->submitter))
		atomic_fetch_add(&cs->wrong_thread, 1);
	atomic_fetch_add(&cs->calls, 1);
}

static void on_drain(ferry_pool *p, void *arg)
{
	struct cb_state *cs = arg;
	atomic_fetch_add(&cs->drains, 1);
}

static void callbacks(int backend)
{
	struct cb_state cs = { .submitter = pthread_self() };
	struct ferry_pool_opts o = { .min_workers = 2, .max_workers = 2, .on_drain = on_drain,
				     .drain_arg = &cs };
	ferry_pool *p = mk(backend, &o);
	struct ferry_pool_submit_opts so = { .done = on_done, .done_arg = &cs };
	ferry_pool_task *kept[50];
	for (int i = 0; i < 100; i++) {
		ferry_value *v = ferry_value_int(i);
		/* Half fire-and-forget, half with a handle the test waits on. */
		cr_assert_eq(ferry_pool_submit_ex(p, v, NULL, &so, i % 2 ? NULL : &kept[i / 2]), 0);
		ferry_value_free(v);
	}
	for (int i = 0; i < 50; i++) {
		cr_expect_eq(result_int(kept[i]), 4 * i);
		ferry_pool_task_free(kept[i]);
	}
	cr_expect_eq(ferry_pool_drain(p, 20 * SEC), 0);
	until(&cs.calls, 100);
	until(&cs.drains, 1);
	cr_expect_eq(atomic_load(&cs.ok), 100);
	cr_expect_eq(atomic_load(&cs.wrong_thread), 0);
	/* Abandoned tasks (no handle, no callback) still run and are counted. */
	for (int i = 0; i < 20; i++) {
		ferry_value *v = ferry_value_int(1000 + i);
		cr_assert_eq(ferry_pool_submit(p, v, NULL, NULL), 0);
		ferry_value_free(v);
	}
	cr_expect_eq(ferry_pool_drain(p, 20 * SEC), 0);
	/* Drained means every outcome is in: the statistics add up at once. */
	struct ferry_pool_stats st;
	ferry_pool_stats(p, &st);
	cr_expect_eq(st.completed, 120);
	cr_expect_eq(st.submitted, 120);
	ferry_pool_destroy(p, FERRY_FOREVER);
	cr_expect_eq(atomic_load(&cs.calls), 100);
}

Test(pool, callbacks_thread) { callbacks(FERRY_THREAD); }
Test(pool, callbacks_process) { callbacks(FERRY_PROCESS); }

/* ---- workers: min, max, idle retirement, concurrency ---- */

static void min_max_idle(int backend)
{
	struct ferry_pool_opts o = { .min_workers = 1, .max_workers = 3, .idle_timeout_ns = 50 * MS };
	ferry_pool *p = mk(backend, &o);
	struct ferry_pool_stats st;
	ferry_pool_stats(p, &st);
	cr_expect_eq(st.workers, 1);
	ferry_pool_task *ts[6];
	for (int i = 0; i < 6; i++)
		ts[i] = submit(p, mapv(OP_BLOCK, i));
	until(&sh->started, 3); /* grown to the maximum, no further */
	usleep(20000);
	ferry_pool_stats(p, &st);
	cr_expect_eq(st.workers, 3);
	cr_expect_eq(atomic_load(&sh->started), 3);
	cr_expect_eq(st.queued, 3);
	cr_expect_eq(st.running, 3);
	open_gate();
	for (int i = 0; i < 6; i++) {
		cr_expect_eq(result_int(ts[i]), i);
		ferry_pool_task_free(ts[i]);
	}
	/* Idle ones above the minimum retire. */
	int64_t end = tu_now_ns() + 20 * SEC;
	do {
		usleep(5000);
		ferry_pool_stats(p, &st);
	} while (st.workers > 1 && tu_now_ns() < end);
	cr_expect_eq(st.workers, 1);
	cr_expect_eq(st.crashes, 0);
	ferry_pool_destroy(p, FERRY_FOREVER);
	/* None kept: started on demand, all retire. */
	o.min_workers = FERRY_POOL_MIN_NONE;
	p = mk(backend, &o);
	ferry_pool_stats(p, &st);
	cr_expect_eq(st.workers, 0);
	ferry_pool_task *t = submit(p, ferry_value_int(4));
	cr_expect_eq(result_int(t), 8);
	ferry_pool_task_free(t);
	end = tu_now_ns() + 20 * SEC;
	do {
		usleep(5000);
		ferry_pool_stats(p, &st);
	} while (st.workers > 0 && tu_now_ns() < end);
	cr_expect_eq(st.workers, 0);
	ferry_pool_destroy(p, FERRY_FOREVER);
}

Test(pool, min_max_idle_thread) { min_max_idle(FERRY_THREAD); }
Test(pool, min_max_idle_process) { min_max_idle(FERRY_PROCESS); }

static void concurrency(int backend)
{
	struct ferry_pool_opts o = { .min_workers = 1, .max_workers = 1, .concurrency = 3 };
	ferry_pool *p = mk(backend, &o);
	ferry_pool_task *ts[4];
	for (int i = 0; i < 4; i++)
		ts[i] = submit(p, mapv(OP_BLOCK, i));
	until(&sh->started, 3); /* one worker runs three at once */
	usleep(20000);
	cr_expect_eq(atomic_load(&sh->started), 3);
	cr_expect_eq(ferry_pool_worker_pids(p, NULL, 0), 1);
	open_gate();
	for (int i = 0; i < 4; i++) {
		cr_expect_eq(result_int(ts[i]), i);
		ferry_pool_task_free(ts[i]);
	}
	ferry_pool_destroy(p, FERRY_FOREVER);
}

Test(pool, concurrency_thread) { concurrency(FERRY_THREAD); }
Test(pool, concurrency_process) { concurrency(FERRY_PROCESS); }

/* ---- statistics ---- */

static void stats(int backend)
{
	struct ferry_pool_opts o = { .min_workers = 2, .max_workers = 2 };
	ferry_pool *p = mk(backend, &o);
	ferry_pool_task *ts[300];
	for (int i = 0; i < 300; i++)
		ts[i] = submit(p, i % 100 == 99 ? mapv(OP_FAIL, i) : ferry_value_int(i));
	for (int i = 0; i < 300; i++) {
		ferry_pool_task_wait(ts[i], 20 * SEC);
		ferry_pool_task_free(ts[i]);
	}
	ferry_pool_task *slow = submit(p, mapv(OP_SLEEP, 20));
	cr_expect_eq(ferry_pool_task_wait(slow, 20 * SEC), 0);
	ferry_pool_task_free(slow);
	struct ferry_pool_stats st;
	cr_assert_eq(ferry_pool_stats(p, &st), 0);
	cr_expect_eq(st.submitted, 301);
	cr_expect_eq(st.completed, 298);
	cr_expect_eq(st.failed, 3);
	cr_expect_eq(st.cancelled, 0);
	cr_expect_eq(st.queued, 0);
	cr_expect_eq(st.running, 0);
	cr_expect_eq(st.workers, 2);
	cr_expect_eq(st.idle_workers, 2);
	cr_expect_gt(st.utilization, 0.0);
	cr_expect_leq(st.utilization, 1.0);
	cr_expect_gt(st.run_p99_ns, 0);
	cr_expect_geq(st.run_p99_ns, st.run_p50_ns);
	cr_expect_geq(st.wait_p99_ns, st.wait_p50_ns);
	/* The slow task is the top 1%: p99 sees at most its 20 ms. */
	cr_expect_lt(st.run_p50_ns, 20 * MS);
	ferry_pool_destroy(p, FERRY_FOREVER);
}

Test(pool, stats_thread) { stats(FERRY_THREAD); }
Test(pool, stats_process) { stats(FERRY_PROCESS); }

/* ---- destroy ---- */

static void destroy_waits(int backend)
{
	struct ferry_pool_opts o = { .min_workers = 1, .max_workers = 1 };
	ferry_pool *p = mk(backend, &o);
	ferry_pool_task *run = submit(p, mapv(OP_BLOCK, 5));
	until(&sh->started, 1);
	ferry_pool_task *q[3];
	for (int i = 0; i < 3; i++)
		q[i] = submit(p, ferry_value_int(i));
	pthread_t th;
	pthread_create(&th, NULL, opener, (void *)(intptr_t)50000);
	ferry_pool_destroy(p, FERRY_FOREVER); /* the running one finishes */
	pthread_join(th, NULL);
	cr_expect_eq(result_int(run), 5);
	for (int i = 0; i < 3; i++) {
		cr_expect_eq(ferry_pool_task_wait(q[i], 0), -ECANCELED);
		cr_expect(strstr(ferry_errmsg(), "destroyed before the task started") != NULL, "%s",
			  ferry_errmsg());
		ferry_pool_task_free(q[i]);
		cr_expect_eq(atomic_load(&sh->runs[i]), 0);
	}
	ferry_pool_task_free(run);
}

Test(pool, destroy_waits_thread) { destroy_waits(FERRY_THREAD); }
Test(pool, destroy_waits_process) { destroy_waits(FERRY_PROCESS); }

static void destroy_grace(int backend)
{
	struct ferry_pool_opts o = { .min_workers = 1, .max_workers = 1 };
	ferry_pool *p = mk(backend, &o);
	/* Threads: a task that checks its abort word; processes: one that does not. */
	ferry_pool_task *run = submit(p, backend == FERRY_THREAD ? mapv(OP_SPIN_ABORT, 0) : mapv(OP_SLEEP, 20000));
	until(&sh->started, 1);
	int64_t t0 = tu_now_ns();
	ferry_pool_destroy(p, 30 * MS);
	cr_expect_geq(tu_now_ns() - t0, 30 * MS);
	cr_expect_eq(ferry_pool_task_wait(run, 0), -ECANCELED);
	cr_expect(strstr(ferry_errmsg(), "destroyed while the task ran") != NULL, "%s", ferry_errmsg());
	ferry_pool_task_free(run);
	cr_expect_eq(atomic_load(&sh->finished), 0);
	if (backend == FERRY_THREAD)
		until(&sh->aborted, 1);
}

Test(pool, destroy_grace_thread) { destroy_grace(FERRY_THREAD); }
Test(pool, destroy_grace_process) { destroy_grace(FERRY_PROCESS); }

/* ---- completion callbacks on a loop ---- */

struct lrec {
	struct lstate *ls;
	int calls, status;
	char text[128];
};

struct lstate {
	pthread_t loop_thread;
	_Atomic int total, wrong_thread;
	int watchdog_fired;
	struct lrec rec[64];
};

static void on_loop_done(ferry_pool_task *t, void *arg)
{
	struct lrec *r = arg;
	if (!pthread_equal(pthread_self(), r->ls->loop_thread))
		atomic_fetch_add(&r->ls->wrong_thread, 1);
	r->calls++;
	r->status = ferry_pool_task_status(t);
	snprintf(r->text, sizeof r->text, "%s", ferry_pool_task_errmsg(t));
	if (r->status == 0) { /* an int task: its result is twice its value */
		int64_t v = -1;
		ferry_value_get_int(ferry_pool_task_value(t), &v);
		if (v < 0 && ferry_value_kind(ferry_pool_task_value(t)) == FERRY_VALUE_INT)
			r->status = -12345;
	}
	atomic_fetch_add(&r->ls->total, 1);
}

static void on_watchdog(ferry_loop *loop, uint64_t id, int res, void *arg)
{
	struct lstate *ls = arg;
	ls->watchdog_fired = 1;
	ferry_loop_stop(loop);
}

/* Run @loop until nothing keeps it alive (every pending task's callback
 * ran), bounded by an unreferenced 20 s watchdog. */
static void run_loop_bounded(ferry_loop *loop, struct lstate *ls)
{
	uint64_t wid;
	cr_assert_eq(ferry_loop_timer(loop, 20 * SEC, 0, on_watchdog, ls, &wid), 0);
	cr_assert_eq(ferry_loop_ref(loop, wid, 0), 0);
	int rc = ferry_loop_run(loop, FERRY_RUN_DEFAULT);
	cr_assert_geq(rc, 0, "ferry_loop_run: %s", ferry_errmsg());
	cr_assert_eq(ls->watchdog_fired, 0, "the loop ran 20 s: callbacks missing (%d ran)",
		     atomic_load(&ls->total));
	ferry_loop_cancel(loop, wid);
}

static void submit_on_loop(ferry_pool *p, ferry_loop *loop, struct lstate *ls, int i,
			   ferry_value *v, ferry_pool_task **out)
{
	ls->rec[i].ls = ls;
	struct ferry_pool_submit_opts so = { .done = on_loop_done, .done_arg = &ls->rec[i], .loop = loop };
	int rc = ferry_pool_submit_ex(p, v, NULL, &so, out);
	ferry_value_free(v);
	cr_assert_eq(rc, 0, "submit %d: %s", i, ferry_errmsg());
}

static void loop_callbacks(int backend, int loop_backend, int destroy_loop_first)
{
	struct lstate *ls = calloc(1, sizeof *ls);
	ls->loop_thread = pthread_self();
	struct ferry_pool_opts o = { .min_workers = 2, .max_workers = 2 };
	ferry_pool *p = mk(backend, &o);
	ferry_loop *loop;
	struct ferry_loop_opts lo = { .backend = loop_backend };
	cr_assert_eq(ferry_loop_create(&loop, &lo), 0, "%s", ferry_errmsg());
	/* 1. Completed, failed (and on processes crashed) tasks: a default run
	 * returns once every callback ran, all on this thread. */
	int n = 0;
	for (; n < 40; n++)
		submit_on_loop(p, loop, ls, n, ferry_value_int(n), NULL);
	int fail_i = n++;
	submit_on_loop(p, loop, ls, fail_i, mapv(OP_FAIL, 7), NULL);
	int crash_i = -1;
	if (backend == FERRY_PROCESS) {
		crash_i = n++;
		submit_on_loop(p, loop, ls, crash_i, mapv(OP_SEGV, 0), NULL);
	}
	run_loop_bounded(loop, ls);
	cr_expect_eq(atomic_load(&ls->total), n);
	cr_expect_eq(atomic_load(&ls->wrong_thread), 0);
	for (int i = 0; i < 40; i++) {
		cr_expect_eq(ls->rec[i].calls, 1, "task %d: %d calls", i, ls->rec[i].calls);
		cr_expect_eq(ls->rec[i].status, 0, "task %d: %d %s", i, ls->rec[i].status, ls->rec[i].text);
	}
	cr_expect_eq(ls->rec[fail_i].calls, 1);
	cr_expect_eq(ls->rec[fail_i].status, -EDOM);
	cr_expect(strstr(ls->rec[fail_i].text, "failing on purpose with 7") != NULL, "%s", ls->rec[fail_i].text);
	if (crash_i >= 0) {
		cr_expect_eq(ls->rec[crash_i].calls, 1);
		cr_expect_eq(ls->rec[crash_i].status, FERRY_EWORKER);
		cr_expect(strstr(ls->rec[crash_i].text, "killed by SIGSEGV") != NULL, "%s", ls->rec[crash_i].text);
	}
	/* 2. Cancelled while running, cancelled while queued, rejected by the
	 * destroy: each callback still runs once, on this thread. */
	int base_i = n;
	submit_on_loop(p, loop, ls, n++, mapv(OP_SPIN_ABORT, 0), NULL);
	submit_on_loop(p, loop, ls, n++, mapv(OP_SPIN_ABORT, 0), NULL);
	until(&sh->started, 2);
	ferry_pool_task *t;
	int cancel_i = n++;
	submit_on_loop(p, loop, ls, cancel_i, ferry_value_int(1), &t);
	cr_expect_eq(ferry_pool_task_cancel(t), 0);
	ferry_pool_task_free(t); /* the callback still comes */
	int rej_i = n;
	for (int i = 0; i < 3; i++)
		submit_on_loop(p, loop, ls, n++, ferry_value_int(2 + i), NULL);
	ferry_pool_destroy(p, 0);
	if (destroy_loop_first) {
		/* Callbacks posted to a loop that is destroyed run in the destroy. */
		ferry_loop_destroy(loop);
		loop = NULL;
	} else {
		run_loop_bounded(loop, ls);
	}
	cr_expect_eq(atomic_load(&ls->total), n);
	cr_expect_eq(atomic_load(&ls->wrong_thread), 0);
	for (int i = base_i; i < n; i++) {
		cr_expect_eq(ls->rec[i].calls, 1, "task %d: %d calls", i, ls->rec[i].calls);
		cr_expect_eq(ls->rec[i].status, -ECANCELED, "task %d: %d %s", i, ls->rec[i].status, ls->rec[i].text);
	}
	cr_expect(strstr(ls->rec[cancel_i].text, "cancelled before it started") != NULL, "%s", ls->rec[cancel_i].text);
	for (int i = rej_i; i < n; i++)
		cr_expect(strstr(ls->rec[i].text, "destroyed before the task started") != NULL, "%s", ls->rec[i].text);
	ferry_loop_destroy(loop);
	free(ls);
}

Test(pool, loop_callbacks_thread) { loop_callbacks(FERRY_THREAD, FERRY_LOOP_AUTO, 0); }
Test(pool, loop_callbacks_process) { loop_callbacks(FERRY_PROCESS, FERRY_LOOP_AUTO, 0); }
Test(pool, loop_callbacks_epoll_thread) { loop_callbacks(FERRY_THREAD, FERRY_LOOP_EPOLL, 1); }
Test(pool, loop_callbacks_epoll_process) { loop_callbacks(FERRY_PROCESS, FERRY_LOOP_EPOLL, 1); }

static void on_loop_resubmit(ferry_pool_task *t, void *arg);

struct chain {
	ferry_pool *p;
	ferry_loop *loop;
	int left, calls, bad;
};

/* A callback on a loop may call the pool: each one submits the next task. */
static void on_loop_resubmit(ferry_pool_task *t, void *arg)
{
	struct chain *c = arg;
	c->calls++;
	int64_t v = -1;
	if (ferry_pool_task_status(t) || ferry_value_get_int(ferry_pool_task_value(t), &v) || v != 2 * c->left)
		c->bad++;
	if (--c->left < 0)
		return;
	struct ferry_pool_submit_opts so = { .done = on_loop_resubmit, .done_arg = c, .loop = c->loop };
	ferry_value *nv = ferry_value_int(c->left);
	if (ferry_pool_submit_ex(c->p, nv, NULL, &so, NULL))
		c->bad++;
	ferry_value_free(nv);
}

static void loop_chain(int backend)
{
	struct ferry_pool_opts o = { .min_workers = 1, .max_workers = 1 };
	struct chain c = { .p = mk(backend, &o), .left = 20 };
	cr_assert_eq(ferry_loop_create(&c.loop, NULL), 0);
	struct ferry_pool_submit_opts so = { .done = on_loop_resubmit, .done_arg = &c, .loop = c.loop };
	ferry_value *v = ferry_value_int(c.left);
	cr_assert_eq(ferry_pool_submit_ex(c.p, v, NULL, &so, NULL), 0);
	ferry_value_free(v);
	struct lstate ls = { .loop_thread = pthread_self() };
	run_loop_bounded(c.loop, &ls);
	cr_expect_eq(c.calls, 21);
	cr_expect_eq(c.bad, 0);
	/* Without a callback a loop is refused. */
	struct ferry_pool_submit_opts bad = { .loop = c.loop };
	v = ferry_value_int(1);
	cr_expect_eq(ferry_pool_submit_ex(c.p, v, NULL, &bad, NULL), -EINVAL);
	cr_expect(strstr(ferry_errmsg(), "opts.loop") != NULL, "%s", ferry_errmsg());
	ferry_value_free(v);
	ferry_pool_destroy(c.p, FERRY_FOREVER);
	ferry_loop_destroy(c.loop);
}

Test(pool, loop_callback_submits_thread) { loop_chain(FERRY_THREAD); }
Test(pool, loop_callback_submits_process) { loop_chain(FERRY_PROCESS); }

/* ---- workerData as a value, spawn options ---- */

/* TSan cannot start threads in a child forked from a threaded parent: no
 * helper runners (concurrency > 1) in process workers under it. */
#if defined(__SANITIZE_THREAD__)
#define PROC_CONC 1
#else
#define PROC_CONC 2
#endif

static ferry_value *wdata_value(ferry_buf **b, ferry_buf **sb)
{
	cr_assert_eq(ferry_buf_create(b, 16, 0), 0);
	cr_assert_eq(ferry_buf_create(sb, 64, FERRY_BUF_SHARED), 0);
	unsigned char *d = ferry_buf_data(*b);
	for (int i = 0; i < 16; i++)
		d[i] = (unsigned char)(i + 1);
	ferry_value *v = mapv(0, 0);
	ferry_value_map_set(v, "n", ferry_value_int(42));
	ferry_value_map_set(v, "b", ferry_value_handle(FERRY_VALUE_BUF, *b));
	ferry_value_map_set(v, "s", ferry_value_handle(FERRY_VALUE_SHARED, *sb));
	return v;
}

static void check_wdata(ferry_pool_task *t, int64_t *worker)
{
	cr_assert_eq(ferry_pool_task_wait(t, 20 * SEC), 0, "%s", ferry_errmsg());
	const ferry_value *a = ferry_pool_task_value(t);
	int64_t n = 0, sum = 0;
	ferry_value_get_int(ferry_value_array_get(a, 0), &n);
	ferry_value_get_int(ferry_value_array_get(a, 1), &sum);
	ferry_value_get_int(ferry_value_array_get(a, 2), worker);
	cr_expect_eq(n, 42);
	cr_expect_eq(sum, 136);
	ferry_pool_task_free(t);
}

static void worker_value(int backend)
{
	ferry_buf *b, *sb;
	ferry_value *v = wdata_value(&b, &sb);
	/* (One runner on threads: ferry_worker_exit ends only the worker's own
	 * thread, not a helper runner.) */
	struct ferry_pool_opts o = { .min_workers = 1, .max_workers = 1, .value = v,
				     .concurrency = backend == FERRY_PROCESS ? PROC_CONC : 1 };
	ferry_pool *p = mk(backend, &o);
	/* The pool cloned it: the caller's value and plain buffer are free to go. */
	ferry_value_free(v);
	ferry_buf_free(b);
	int64_t w = 0;
	for (int i = 0; i < 10; i++)
		check_wdata(submit(p, mapv(OP_WDATA, 0)), &w);
	cr_expect_eq(w, 1);
	/* The shared buffer is shared by the workers and the caller. */
	cr_expect_eq(__atomic_load_n((uint32_t *)ferry_buf_data(sb), __ATOMIC_ACQUIRE), 10);
	/* A replacement worker gets the value too. */
	ferry_pool_task *t = submit(p, mapv(OP_EXIT, 3));
	cr_expect_eq(ferry_pool_task_wait(t, 20 * SEC), FERRY_EWORKER);
	ferry_pool_task_free(t);
	check_wdata(submit(p, mapv(OP_WDATA, 0)), &w);
	cr_expect_eq(w, 2);
	cr_expect_eq(__atomic_load_n((uint32_t *)ferry_buf_data(sb), __ATOMIC_ACQUIRE), 11);
	ferry_pool_destroy(p, FERRY_FOREVER);
	ferry_buf_free(sb);
	/* No value: NULL in the task. */
	struct ferry_pool_opts o2 = { .min_workers = 1, .max_workers = 1 };
	p = mk(backend, &o2);
	t = submit(p, mapv(OP_WDATA, 0));
	cr_assert_eq(ferry_pool_task_wait(t, 20 * SEC), 0, "%s", ferry_errmsg());
	cr_expect_eq(ferry_value_kind(ferry_pool_task_value(t)), FERRY_VALUE_NULL);
	ferry_pool_task_free(t);
	ferry_pool_destroy(p, FERRY_FOREVER);
	/* A port cannot be cloned into many workers: create fails, starts nothing. */
	ferry_port *a, *c;
	cr_assert_eq(ferry_channel(&a, &c, NULL), 0);
	v = ferry_value_handle(FERRY_VALUE_PORT, a);
	struct ferry_pool_opts o3 = { .backend = backend, .fn = tfn, .min_workers = 1, .value = v };
	p = (ferry_pool *)1;
	int rc = ferry_pool_create(&p, &o3);
	cr_expect_eq(rc, -EINVAL);
	cr_expect_null(p);
	cr_expect(strstr(ferry_errmsg(), "opts.value") != NULL, "%s", ferry_errmsg());
	ferry_value_free(v);
	ferry_port_destroy(a);
	ferry_port_destroy(c);
}

Test(pool, worker_value_thread) { worker_value(FERRY_THREAD); }
Test(pool, worker_value_process) { worker_value(FERRY_PROCESS); }

#if defined(__SANITIZE_ADDRESS__) || defined(__SANITIZE_THREAD__)
#define UNDER_SANITIZER 1
#else
#define UNDER_SANITIZER 0
#endif

static int64_t limit_of(ferry_pool_task *t, int i)
{
	cr_assert_eq(ferry_pool_task_wait(t, 20 * SEC), 0, "%s", ferry_errmsg());
	int64_t v = -1;
	ferry_value_get_int(ferry_value_array_get(ferry_pool_task_value(t), (size_t)i), &v);
	return v;
}

static void spawn_options(int backend)
{
	const size_t stack = 1024 * 1024;
	const uint64_t as = UNDER_SANITIZER ? 0 : (uint64_t)64 << 30;
	struct ferry_pool_opts o = { .min_workers = 1, .max_workers = 1, .stack_size = stack,
				     .concurrency = backend == FERRY_PROCESS ? PROC_CONC : 2 };
	if (backend == FERRY_PROCESS) {
		o.max_open_files = 200;
		o.max_address_space = as;
	}
	ferry_pool *p = mk(backend, &o);
	/* Both runners (the worker's thread and its helper) answer. */
	ferry_pool_task *t[8];
	for (int i = 0; i < 8; i++)
		t[i] = submit(p, mapv(OP_LIMITS, 0));
	for (int i = 0; i < 8; i++) {
		if (backend == FERRY_THREAD) {
			int64_t got = limit_of(t[i], 0);
			cr_expect(got >= (int64_t)stack && got < (int64_t)stack + 256 * 1024,
				  "thread stack %lld, want %zu", (long long)got, stack);
		} else {
			cr_expect_eq(limit_of(t[i], 1), (int64_t)stack);
			cr_expect_eq(limit_of(t[i], 2), 200);
			if (as)
				cr_expect_eq(limit_of(t[i], 3), (int64_t)as);
			cr_expect_eq(limit_of(t[i], 4), getpid());
		}
		ferry_pool_task_free(t[i]);
	}
	ferry_pool_destroy(p, FERRY_FOREVER);
	/* The options are checked at create, workers or not. */
	struct ferry_pool_opts ok = { .backend = backend, .fn = tfn, .min_workers = FERRY_POOL_MIN_NONE };
	struct ferry_pool_opts e;
	e = ok; e.stack_size = 100; create_fails(e, "opts.stack_size");
	e = ok; e.spawn = 9; create_fails(e, "opts.spawn");
	if (backend == FERRY_THREAD) {
		e = ok; e.max_open_files = 64; create_fails(e, "opts.max_open_files");
		e = ok; e.max_address_space = 1 << 30; create_fails(e, "opts.max_address_space");
		e = ok; e.spawn = FERRY_SPAWN_FORK; create_fails(e, "opts.spawn");
	} else {
		e = ok; e.spawn = FERRY_SPAWN_SERVER; e.arg = &e; create_fails(e, "opts.arg");
		/* No fork server in this process: the first worker cannot start. */
		e = ok; e.min_workers = 1; e.spawn = FERRY_SPAWN_SERVER;
		p = (ferry_pool *)1;
		cr_expect_eq(ferry_pool_create(&p, &e), -ECHILD, "%s", ferry_errmsg());
		cr_expect_null(p);
	}
}

Test(pool, spawn_options_thread) { spawn_options(FERRY_THREAD); }
Test(pool, spawn_options_process) { spawn_options(FERRY_PROCESS); }

/* In a single-threaded child: a fork server, and a pool whose process
 * workers it starts (with the pool's value). Exit codes say what failed. */
static int via_server_main(void *arg)
{
	(void)arg;
	struct ferry_init_opts io = { .fork_server = 1 };
	if (ferry_init(&io))
		return 77;
	pid_t server = ferry_fork_server_pid();
	ferry_buf *b, *sb;
	ferry_buf_create(&b, 16, 0);
	ferry_buf_create(&sb, 64, FERRY_BUF_SHARED);
	unsigned char *d = ferry_buf_data(b);
	for (int i = 0; i < 16; i++)
		d[i] = (unsigned char)(i + 1);
	ferry_value *v = mapv(0, 0);
	ferry_value_map_set(v, "n", ferry_value_int(42));
	ferry_value_map_set(v, "b", ferry_value_handle(FERRY_VALUE_BUF, b));
	ferry_value_map_set(v, "s", ferry_value_handle(FERRY_VALUE_SHARED, sb));
	struct ferry_pool_opts o = { .backend = FERRY_PROCESS, .fn = tfn, .min_workers = 1, .max_workers = 1,
				     .spawn = FERRY_SPAWN_SERVER, .value = v, .max_open_files = 100 };
	ferry_pool *p;
	int code = 0;
	if (ferry_pool_create(&p, &o)) {
		fprintf(stderr, "create: %s\n", ferry_errmsg());
		code = 10;
	}
	ferry_value_free(v);
	ferry_buf_free(b);
	for (int i = 0; code == 0 && i < 2; i++) {
		ferry_value *a = mapv(i ? OP_WDATA : OP_LIMITS, 0);
		ferry_pool_task *t = NULL;
		if (ferry_pool_submit(p, a, NULL, &t) || ferry_pool_task_wait(t, 20 * SEC)) {
			fprintf(stderr, "task %d: %s\n", i, ferry_errmsg());
			code = 11;
		} else {
			const ferry_value *r = ferry_pool_task_value(t);
			int64_t x = -1, y = -1;
			ferry_value_get_int(ferry_value_array_get(r, i ? 0 : 4), &x);
			ferry_value_get_int(ferry_value_array_get(r, i ? 1 : 2), &y);
			if (i == 0 && (x != server || y != 100))
				code = 12; /* not the server's child, or no limit */
			if (i == 1 && (x != 42 || y != 136))
				code = 13;
		}
		ferry_value_free(a);
		ferry_pool_task_free(t);
	}
	if (code == 0)
		ferry_pool_destroy(p, FERRY_FOREVER);
	if (code == 0 && __atomic_load_n((uint32_t *)ferry_buf_data(sb), __ATOMIC_ACQUIRE) != 1)
		code = 14;
	ferry_buf_free(sb);
	ferry_fini();
	return code;
}

Test(pool, process_workers_through_the_fork_server)
{
	pid_t pid = tu_fork(via_server_main, NULL);
	int st = tu_wait(pid, 60 * 1000);
	cr_assert_neq(st, -1, "the scenario did not end within 60 s (killed)");
	cr_assert(WIFEXITED(st), "the scenario died by signal %d", WTERMSIG(st));
	if (WEXITSTATUS(st) == 77)
		cr_skip("no fork server here: %s", "ferry_init failed");
	cr_assert_eq(WEXITSTATUS(st), 0, "scenario failed with code %d", WEXITSTATUS(st));
}
