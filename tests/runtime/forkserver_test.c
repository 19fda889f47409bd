/*
 * The fork server: process workers forked by a server started while the
 * program was single-threaded.
 *
 * ferry_init refuses a multithreaded process, and a Criterion 2.4 test
 * process is not single-threaded (its runner connection has a thread of its
 * own). So every scenario runs in a child forked from the test (a fork
 * copies only the calling thread): the child checks with CHECK_* (which
 * record the failure in shared memory and _exit(1): Criterion's own asserts
 * need that thread), stops the server, checks its own fds and mappings came
 * back, and the test asserts that the child exited 0.
 */
#include <ferry.h>
#include <ferry/runtime.h>

#include "util/util.h"

#include <criterion/criterion.h>
#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <pthread.h>
#include <signal.h>
#include <stdarg.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/resource.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#define T10S (10LL * 1000000000)
#define MS (1000000LL)

#if defined(__SANITIZE_ADDRESS__) || defined(__SANITIZE_THREAD__)
#define UNDER_SANITIZER 1
#else
#define UNDER_SANITIZER 0
#endif

/* ---- checks inside the single-threaded child ---- */

#define FAIL_BYTES 4096
static char *fail_text; /* shared with the test process */

__attribute__((format(printf, 4, 5))) static _Noreturn void
check_failed(const char *file, int line, const char *expr, const char *fmt, ...)
{
	int n = snprintf(fail_text, FAIL_BYTES, "%s:%d: %s", file, line, expr);
	/* @fmt is " " followed by the caller's format, if any. */
	if (fmt[0] && fmt[1] && n > 0 && n < FAIL_BYTES) {
		n += snprintf(fail_text + n, FAIL_BYTES - (size_t)n, ":");
		va_list ap;
		va_start(ap, fmt);
		if (n > 0 && n < FAIL_BYTES)
			vsnprintf(fail_text + n, FAIL_BYTES - (size_t)n, fmt, ap);
		va_end(ap);
	}
	fflush(NULL);
	_exit(1);
}

#define CHECK(cond, ...)                                                         \
	do {                                                                     \
		if (!(cond))                                                     \
			check_failed(__FILE__, __LINE__, #cond, " " __VA_ARGS__); \
	} while (0)

#define CHECK_CMP(a, op, b, ...)                                                      \
	do {                                                                          \
		long long a_ = (long long)(a), b_ = (long long)(b);                   \
		if (!(a_ op b_)) {                                                    \
			char e_[256];                                                 \
			snprintf(e_, sizeof e_, "%s %s %s (%lld vs %lld)", #a, #op, #b, a_, b_); \
			check_failed(__FILE__, __LINE__, e_, " " __VA_ARGS__);         \
		}                                                                     \
	} while (0)

#define CHECK_EQ(a, b, ...) CHECK_CMP(a, ==, b, __VA_ARGS__)
#define CHECK_NE(a, b, ...) CHECK_CMP(a, !=, b, __VA_ARGS__)
#define CHECK_GT(a, b, ...) CHECK_CMP(a, >, b, __VA_ARGS__)
#define CHECK_GE(a, b, ...) CHECK_CMP(a, >=, b, __VA_ARGS__)
#define CHECK_LT(a, b, ...) CHECK_CMP(a, <, b, __VA_ARGS__)
#define CHECK_LE(a, b, ...) CHECK_CMP(a, <=, b, __VA_ARGS__)
#define CHECK_NULL(p, ...) CHECK((const void *)(p) == NULL, __VA_ARGS__)
#define CHECK_NOT_NULL(p, ...) CHECK((const void *)(p) != NULL, __VA_ARGS__)
#define CHECK_STR_EQ(a, b, ...) CHECK(strcmp((a), (b)) == 0, __VA_ARGS__)
#define INFO(...) (fprintf(stderr, __VA_ARGS__), fputc('\n', stderr))

static void (*scenario)(void);

static int alone_main(void *arg)
{
	int fds = tu_count_fds(), maps = tu_count_maps();
	scenario();
	ferry_fini();
	int fds2 = tu_count_fds(), maps2 = tu_count_maps();
	CHECK_EQ(fds2, fds, "fd leak");
	CHECK_EQ(maps2, maps, "memfd mapping leak");
	return 0;
}

/* Run @fn in a single-threaded child and assert that it passed. */
static void run_alone(void (*fn)(void))
{
	fail_text = tu_shared_alloc(FAIL_BYTES);
	scenario = fn;
	pid_t pid = tu_fork(alone_main, NULL);
	int st = tu_wait(pid, 170 * 1000);
	char text[FAIL_BYTES];
	memcpy(text, fail_text, sizeof text);
	text[sizeof text - 1] = 0;
	tu_shared_free(fail_text, FAIL_BYTES);
	cr_assert_neq(st, -1, "the scenario did not end within 170 s (killed)");
	cr_assert(!WIFSIGNALED(st), "the scenario died by signal %d (%s)", WTERMSIG(st),
		  strsignal(WTERMSIG(st)));
	cr_assert_eq(WEXITSTATUS(st), 0, "%s", text[0] ? text : "failed");
}

static struct tu_baseline base;

static void setup(void)
{
	tu_baseline_take(&base);
}

static void teardown(void)
{
	tu_baseline_check(&base);
}

TestSuite(forkserver, .init = setup, .fini = teardown, .timeout = 180);

/* Threads of this process, from /proc/self/stat (field 20). */
static int thread_count(void)
{
	FILE *f = fopen("/proc/self/stat", "r");
	CHECK_NOT_NULL(f);
	char buf[2048];
	size_t n = fread(buf, 1, sizeof buf - 1, f);
	fclose(f);
	buf[n] = 0;
	const char *p = strrchr(buf, ')');
	CHECK_NOT_NULL(p);
	int field = 2;
	for (p++; *p && field < 20; p++)
		if (*p == ' ')
			field++;
	int threads = atoi(p);
#if defined(__SANITIZE_THREAD__)
	/* TSan's background threads (started with every signal blocked, in
	 * every forked child) do not count, as for ferry_init. */
	DIR *d = opendir("/proc/self/task");
	struct dirent *e;
	while (d && (e = readdir(d))) {
		char path[300], line[256];
		snprintf(path, sizeof path, "/proc/self/task/%s/status", e->d_name);
		FILE *s = e->d_name[0] == '.' ? NULL : fopen(path, "r");
		while (s && fgets(line, sizeof line, s))
			if (!strncmp(line, "SigBlk:", 7))
				threads -= (strtoull(line + 7, NULL, 16) | 1ull << 8 | 1ull << 18 |
					    1ull << 31 | 1ull << 32) == ~0ull;
		if (s)
			fclose(s);
	}
	if (d)
		closedir(d);
#endif
	return threads;
}

/* A joined thread leaves the count a moment after pthread_join returns. */
static void wait_single_threaded(void)
{
	for (int i = 0; i < 2000 && thread_count() != 1; i++)
		usleep(1000);
	CHECK_EQ(thread_count(), 1);
}

static pid_t start_server(void)
{
	CHECK_EQ(thread_count(), 1, "the process must be single-threaded here");
	struct ferry_init_opts io = { .fork_server = 1 };
	int rc = ferry_init(&io);
	CHECK_EQ(rc, 0, "ferry_init: %s", ferry_errmsg());
	pid_t pid = ferry_fork_server_pid();
	CHECK_GT(pid, 0);
	return pid;
}

/* ---- what a worker reports about itself ---- */

static int global_value = 1;
static pthread_mutex_t busy_lock = PTHREAD_MUTEX_INITIALIZER;

struct report {
	int pid, ppid;
	int is_main;
	int global;
	int has_server;  /* ferry_fork_server_pid() inside the worker */
	int low;         /* open fds among 0, 1, 2 */
	int channel;     /* fds above 2: memfds of a ferry channel */
	int sockets;     /* fds above 2: sockets */
	int other;       /* fds above 2: anything else */
	char other_what[160];
	size_t data_len;
	unsigned data_sum;
	char name[32];
};

static void list_fds(struct report *r)
{
	DIR *d = opendir("/proc/self/fd");
	if (!d)
		return;
	struct dirent *e;
	while ((e = readdir(d))) {
		if (e->d_name[0] == '.')
			continue;
		int fd = atoi(e->d_name);
		if (fd == dirfd(d))
			continue;
		if (fd <= 2) {
			r->low++;
			continue;
		}
		char path[64], what[128];
		snprintf(path, sizeof path, "/proc/self/fd/%d", fd);
		ssize_t n = readlink(path, what, sizeof what - 1);
		what[n > 0 ? n : 0] = 0;
		if (strstr(what, "memfd:ferry-channel"))
			r->channel++;
		else if (!strncmp(what, "socket:", 7))
			r->sockets++;
		else if (r->other++ == 0)
			snprintf(r->other_what, sizeof r->other_what, "fd %d: %s", fd, what);
	}
	closedir(d);
}

static void fill_report(ferry_worker_ctx *ctx, struct report *r)
{
	memset(r, 0, sizeof *r);
	r->pid = getpid();
	r->ppid = getppid();
	r->is_main = ferry_is_main();
	r->global = global_value;
	r->has_server = ferry_fork_server_pid();
	list_fds(r);
	const unsigned char *d = ferry_worker_ctx_data(ctx, &r->data_len);
	for (size_t i = 0; i < r->data_len; i++)
		r->data_sum = r->data_sum * 31 + d[i];
	snprintf(r->name, sizeof r->name, "%s", ferry_worker_ctx_name(ctx));
}

/* Posts its report; the data's first int, when there is one, is the exit code. */
static int report_entry(ferry_worker_ctx *ctx)
{
	struct report r;
	fill_report(ctx, &r);
	ferry_port_post_bytes(ferry_worker_ctx_port(ctx), &r, sizeof r, FERRY_FOREVER);
	size_t len;
	const int *d = ferry_worker_ctx_data(ctx, &len);
	return len >= sizeof(int) ? d[0] : 0;
}

/* The same after taking the lock the busy threads of the parent take and
 * using malloc: a child forked while either was held would hang here. */
static int locking_report_entry(ferry_worker_ctx *ctx)
{
	pthread_mutex_lock(&busy_lock);
	void *p = malloc(100000);
	memset(p, 1, 100000);
	free(p);
	pthread_mutex_unlock(&busy_lock);
	return report_entry(ctx);
}

static ferry_worker *spawn_with(int spawn, ferry_worker_fn fn, const void *data, size_t len,
				void *arg)
{
	struct ferry_worker_opts o = {
		.backend = FERRY_PROCESS, .entry = fn, .data = data, .data_len = len, .arg = arg,
		.name = "fs-worker", .spawn = spawn,
	};
	ferry_worker *w = NULL;
	int rc = ferry_worker_spawn(&w, &o);
	CHECK_EQ(rc, 0, "spawn (%d): %d %s", spawn, rc, ferry_errmsg());
	CHECK_NOT_NULL(w);
	return w;
}

static void get_report(ferry_worker *w, struct report *r)
{
	ferry_msg *m;
	int rc = ferry_port_recv(ferry_worker_port(w), &m, T10S);
	CHECK_EQ(rc, 0, "recv of the report: %d %s", rc, ferry_errmsg());
	CHECK_EQ(ferry_msg_len(m), sizeof *r);
	memcpy(r, ferry_msg_data(m), sizeof *r);
	ferry_msg_free(m);
}

static void join_expect(ferry_worker *w, int code, int sig)
{
	struct ferry_worker_status st = { -1, -1, -1 };
	int rc = ferry_worker_join(w, &st, 20LL * 1000000000);
	CHECK_EQ(rc, 0, "join: %d %s", rc, ferry_errmsg());
	CHECK_EQ(st.signal, sig, "signal %d, expected %d", st.signal, sig);
	if (!sig)
		CHECK_EQ(st.code, code, "exit code %d, expected %d", st.code, code);
	struct ferry_worker_status again;
	CHECK_EQ(ferry_worker_join(w, &again, 0), 0);
	CHECK_EQ(again.code, st.code);
	CHECK_EQ(again.signal, st.signal);
}

/* A server worker's fd table: 0, 1, 2 at most, and exactly its port's two. */
static void expect_own_fds_only(const struct report *r)
{
	CHECK_LE(r->low, 3);
	CHECK_EQ(r->channel, 1, "channel memfds: %d", r->channel);
	CHECK_EQ(r->sockets, 1, "sockets: %d", r->sockets);
	CHECK_EQ(r->other, 0, "%d other fds, first %s", r->other, r->other_what);
}

/* ---- set-up ---- */

static void init_and_fini(void)
{
	CHECK_EQ(ferry_init(NULL), 0);
	CHECK_EQ(ferry_fork_server_pid(), 0, "NULL options start nothing");
	struct ferry_init_opts none = { 0 };
	CHECK_EQ(ferry_init(&none), 0);
	CHECK_EQ(ferry_fork_server_pid(), 0);

	pid_t pid = start_server();
	char path[64], comm[32] = "";
	snprintf(path, sizeof path, "/proc/%d/comm", (int)pid);
	FILE *f = fopen(path, "r");
	CHECK_NOT_NULL(f);
	CHECK_NOT_NULL(fgets(comm, sizeof comm, f));
	fclose(f);
	CHECK_STR_EQ(comm, "ferry-forksrv\n");
	struct ferry_init_opts io = { .fork_server = 1 };
	CHECK_EQ(ferry_init(&io), 0, "a second init is harmless");
	CHECK_EQ(ferry_fork_server_pid(), pid, "and starts nothing new");

	ferry_fini();
	CHECK_EQ(ferry_fork_server_pid(), 0);
	CHECK_EQ(kill(pid, 0), -1, "the server was reaped");
	CHECK_EQ(errno, ESRCH);
	ferry_fini(); /* idempotent */

	pid_t again = start_server();
	CHECK_NE(again, pid);
	ferry_worker *w = spawn_with(FERRY_SPAWN_SERVER, report_entry, NULL, 0, NULL);
	struct report r;
	get_report(w, &r);
	CHECK_EQ(r.ppid, again);
	join_expect(w, 0, 0);
	ferry_worker_destroy(w);
	ferry_fini();
}


/* A thread that only sleeps: makes the process multithreaded. */
struct idler {
	pthread_t t;
	atomic_int stop;
};

static void *idle_fn(void *a)
{
	struct idler *i = a;
	while (!atomic_load(&i->stop))
		usleep(1000);
	return NULL;
}

static void idler_start(struct idler *i)
{
	atomic_init(&i->stop, 0);
	CHECK_EQ(pthread_create(&i->t, NULL, idle_fn, i), 0);
}

static void idler_stop(struct idler *i)
{
	atomic_store(&i->stop, 1);
	pthread_join(i->t, NULL);
	wait_single_threaded();
}

static void init_refuses_a_multithreaded_process(void)
{
	struct idler i;
	idler_start(&i);
	struct ferry_init_opts io = { .fork_server = 1 };
	CHECK_EQ(ferry_init(&io), -EBUSY);
	CHECK(strstr(ferry_errmsg(), "single-threaded"), "%s", ferry_errmsg());
	CHECK(strstr(ferry_errmsg(), "2 threads"), "%s", ferry_errmsg());
	CHECK_EQ(ferry_fork_server_pid(), 0);
	struct ferry_worker_opts o = { .backend = FERRY_PROCESS, .entry = report_entry,
				       .spawn = FERRY_SPAWN_SERVER };
	ferry_worker *w = (ferry_worker *)1;
	CHECK_EQ(ferry_worker_spawn(&w, &o), -ECHILD);
	CHECK_NULL(w);
	idler_stop(&i);
	start_server(); /* single-threaded again: fine */
}

/* ---- spawning ---- */

static void spawns_through_the_server(void)
{
	pid_t server = start_server();
	unsigned char data[300];
	unsigned sum = 0;
	for (size_t i = 0; i < sizeof data; i++) {
		data[i] = (unsigned char)(i * 7);
		sum = sum * 31 + data[i];
	}
	int code = 7;
	memcpy(data, &code, sizeof code);
	sum = 0;
	for (size_t i = 0; i < sizeof data; i++)
		sum = sum * 31 + data[i];
	ferry_worker *w = spawn_with(FERRY_SPAWN_SERVER, report_entry, data, sizeof data, NULL);
	memset(data, 0, sizeof data); /* the worker has its own copy */
	CHECK_GT(ferry_worker_pid(w), 0);
	CHECK_EQ(ferry_worker_backend(w), FERRY_PROCESS);
	struct ferry_worker_event ev;
	CHECK_EQ(ferry_worker_next(w, &ev, T10S), 0, "%s", ferry_errmsg());
	CHECK_EQ(ev.type, FERRY_WORKER_ONLINE);
	CHECK_EQ(ferry_worker_next(w, &ev, T10S), 0, "%s", ferry_errmsg());
	CHECK_EQ(ev.type, FERRY_WORKER_MESSAGE);
	struct report r;
	CHECK_EQ(ferry_msg_len(ev.msg), sizeof r);
	memcpy(&r, ferry_msg_data(ev.msg), sizeof r);
	ferry_msg_free(ev.msg);
	CHECK_EQ(r.pid, ferry_worker_pid(w));
	CHECK_EQ(r.ppid, server, "the server's child, not ours");
	CHECK_EQ(r.is_main, 0);
	CHECK_EQ(r.has_server, 0, "a worker has no fork server of its own");
	CHECK_EQ(r.data_len, sizeof data);
	CHECK_EQ(r.data_sum, sum);
	CHECK_STR_EQ(r.name, "fs-worker");
	expect_own_fds_only(&r);
	CHECK_EQ(ferry_worker_next(w, &ev, T10S), 0, "%s", ferry_errmsg());
	CHECK_EQ(ev.type, FERRY_WORKER_EXIT);
	CHECK_EQ(ev.status.code, 7);
	CHECK_EQ(ev.status.signal, 0);
	join_expect(w, 7, 0);
	ferry_worker_destroy(w);
}

static void worker_holds_only_its_own_fds(void)
{
	/* Inheritable fds from before and after ferry_init, another channel,
	 * another worker: a server worker sees none of them. */
	int before[2], after[2];
	CHECK_EQ(pipe(before), 0);
	int devnull = open("/dev/null", O_RDONLY);
	CHECK_GE(devnull, 0);
	start_server();
	CHECK_EQ(pipe(after), 0);
	ferry_port *a, *b;
	CHECK_EQ(ferry_channel(&a, &b, NULL), 0);
	ferry_worker *other = spawn_with(FERRY_SPAWN_SERVER, report_entry, NULL, 0, NULL);

	const char data[] = "abc";
	ferry_worker *w = spawn_with(FERRY_SPAWN_SERVER, report_entry, data, 3, NULL);
	struct report r;
	get_report(w, &r);
	expect_own_fds_only(&r);
	join_expect(w, 0, 0);
	ferry_worker_destroy(w);

	/* A direct fork, for contrast, inherits every one of them. */
	w = spawn_with(FERRY_SPAWN_FORK, report_entry, NULL, 0, NULL);
	get_report(w, &r);
	INFO("direct fork: %d fds above 2 besides its port's (%s)", r.other, r.other_what);
	CHECK_GE(r.other, 5, "the pipes and /dev/null");
	CHECK_EQ(r.has_server, 0, "a forked child forgets the parent's server");
	join_expect(w, 0, 0);
	ferry_worker_destroy(w);

	get_report(other, &r);
	join_expect(other, 0, 0);
	ferry_worker_destroy(other);
	ferry_port_destroy(a);
	ferry_port_destroy(b);
	close(before[0]);
	close(before[1]);
	close(after[0]);
	close(after[1]);
	close(devnull);
}

static void globals_are_those_of_init_time(void)
{
	global_value = 1;
	start_server();
	global_value = 2;
	ferry_worker *w = spawn_with(FERRY_SPAWN_SERVER, report_entry, NULL, 0, NULL);
	struct report r;
	get_report(w, &r);
	CHECK_EQ(r.global, 1, "the server's image is of ferry_init time");
	join_expect(w, 0, 0);
	ferry_worker_destroy(w);
	w = spawn_with(FERRY_SPAWN_FORK, report_entry, NULL, 0, NULL);
	get_report(w, &r);
	CHECK_EQ(r.global, 2, "a direct fork copies the caller as it is now");
	join_expect(w, 0, 0);
	ferry_worker_destroy(w);
}

/* ---- the test the issue asks for ---- */

struct busy {
	pthread_t t;
	atomic_int *stop;
	unsigned seed;
	atomic_long rounds;
};

static void *busy_fn(void *a)
{
	struct busy *b = a;
	void *keep[32] = { 0 };
	while (!atomic_load_explicit(b->stop, memory_order_relaxed)) {
		unsigned r = (unsigned)rand_r(&b->seed);
		size_t sz = 16 + r % 65536;
		pthread_mutex_lock(&busy_lock);
		void *p = malloc(sz);
		if (p)
			memset(p, (int)(r & 0xff), sz);
		free(keep[r % 32]);
		keep[r % 32] = p;
		pthread_mutex_unlock(&busy_lock);
		free(malloc(sz / 2 + 1));
		atomic_fetch_add_explicit(&b->rounds, 1, memory_order_relaxed);
	}
	for (int i = 0; i < 32; i++)
		free(keep[i]);
	return NULL;
}

static void two_hundred_workers_while_threads_allocate_and_lock(void)
{
	pid_t server = start_server();
	enum { NBUSY = 3, N = 200, BATCH = 10 };
	atomic_int stop = 0;
	struct busy b[NBUSY];
	for (int i = 0; i < NBUSY; i++) {
		b[i].stop = &stop;
		b[i].seed = (unsigned)i + 1;
		atomic_init(&b[i].rounds, 0);
		CHECK_EQ(pthread_create(&b[i].t, NULL, busy_fn, &b[i]), 0);
	}
	for (int i = 0; i < NBUSY; i++)
		while (atomic_load(&b[i].rounds) == 0)
			usleep(100);
	for (int done = 0; done < N; done += BATCH) {
		ferry_worker *ws[BATCH];
		int codes[BATCH];
		for (int i = 0; i < BATCH; i++) {
			codes[i] = (done + i) % 100;
			/* AUTO: other threads and no arg, so through the server. */
			ws[i] = spawn_with(FERRY_SPAWN_AUTO, locking_report_entry, &codes[i],
					   sizeof codes[i], NULL);
		}
		for (int i = 0; i < BATCH; i++) {
			struct report r;
			get_report(ws[i], &r);
			CHECK_EQ(r.ppid, server, "worker %d was not started by the server", done + i);
			expect_own_fds_only(&r);
			join_expect(ws[i], codes[i], 0);
			ferry_worker_destroy(ws[i]);
		}
	}
	atomic_store(&stop, 1);
	long rounds = 0;
	for (int i = 0; i < NBUSY; i++) {
		pthread_join(b[i].t, NULL);
		rounds += atomic_load(&b[i].rounds);
	}
	INFO("%d workers while %d threads made %ld lock+malloc rounds", N, NBUSY, rounds);
}

/* Spawning from many threads at once: three through the server, one by fork. */
struct spawner {
	pthread_t t;
	int idx, spawn;
	pid_t server;
	int failed;
	char msg[256];
};

static void *spawner_fn(void *a)
{
	struct spawner *s = a;
	for (int i = 0; i < 25 && !s->failed; i++) {
		int code = (s->idx * 25 + i) & 0x7f;
		struct ferry_worker_opts o = { .backend = FERRY_PROCESS, .entry = report_entry,
					       .data = &code, .data_len = sizeof code,
					       .spawn = s->spawn, .name = "fs-many" };
		ferry_worker *w;
		int rc = ferry_worker_spawn(&w, &o);
		if (rc) {
			snprintf(s->msg, sizeof s->msg, "spawn %d: %d %s", i, rc, ferry_errmsg());
			s->failed = 1;
			break;
		}
		ferry_msg *m;
		rc = ferry_port_recv(ferry_worker_port(w), &m, T10S);
		struct report r;
		memset(&r, 0, sizeof r);
		if (rc == 0 && ferry_msg_len(m) == sizeof r)
			memcpy(&r, ferry_msg_data(m), sizeof r);
		ferry_msg_free(m);
		pid_t want = s->spawn == FERRY_SPAWN_SERVER ? s->server : getpid();
		struct ferry_worker_status st = { -1, -1, -1 };
		int jr = ferry_worker_join(w, &st, 20LL * 1000000000);
		if (rc || r.ppid != want || jr || st.code != code || st.signal) {
			snprintf(s->msg, sizeof s->msg,
				 "worker %d: recv %d, ppid %d (want %d), join %d (%s), code %d (want %d), signal %d",
				 i, rc, r.ppid, (int)want, jr, jr ? ferry_errmsg() : "", st.code, code,
				 st.signal);
			s->failed = 1;
		}
		ferry_worker_destroy(w);
	}
	return NULL;
}

static void spawns_from_many_threads_at_once(void)
{
	pid_t server = start_server();
	enum { NT = 4 };
	struct spawner s[NT];
	memset(s, 0, sizeof s);
	for (int i = 0; i < NT; i++) {
		s[i].idx = i;
		s[i].spawn = i == NT - 1 ? FERRY_SPAWN_FORK : FERRY_SPAWN_SERVER;
		s[i].server = server;
		CHECK_EQ(pthread_create(&s[i].t, NULL, spawner_fn, &s[i]), 0);
	}
	for (int i = 0; i < NT; i++)
		pthread_join(s[i].t, NULL);
	for (int i = 0; i < NT; i++)
		CHECK_EQ(s[i].failed, 0, "thread %d: %s", i, s[i].msg);
}

/* ---- exits, crashes, terminate ---- */

static int dies(ferry_worker_ctx *ctx)
{
	ferry_port *p = ferry_worker_ctx_port(ctx);
	const int *how = ferry_worker_ctx_data(ctx, NULL);
	ferry_port_post_bytes(p, "one", 3, FERRY_FOREVER);
	switch (*how) {
	case 0:
		return 7;
	case 1:
		ferry_worker_exit(5);
		break;
	case 2:
		_exit(3);
	case 3:
		raise(SIGSEGV);
		break;
	case 4:
		abort();
	case 5:
		raise(SIGKILL);
		break;
	case 6:
		ferry_worker_throw(-EDOM, "bad input %d", 42);
		break;
	}
	return 99;
}

static void crash(int how, int code, int sig)
{
	ferry_worker *w = spawn_with(FERRY_SPAWN_SERVER, dies, &how, sizeof how, NULL);
	ferry_port *p = ferry_worker_port(w);
	ferry_msg *m;
	CHECK_EQ(ferry_port_recv(p, &m, T10S), 0, "%s", ferry_errmsg());
	CHECK_EQ(ferry_msg_len(m), 3);
	ferry_msg_free(m);
	/* Blocked forever: a dead peer must still be reported. */
	int rc = ferry_port_recv(p, &m, FERRY_FOREVER);
	CHECK_EQ(rc, -EPIPE, "recv after the worker ended: %d %s", rc, ferry_errmsg());
	join_expect(w, code, sig);
	ferry_worker_destroy(w);
}

static void exit_codes_and_crash_signals_come_through_the_server(void)
{
	start_server();
	crash(0, 7, 0);
	crash(1, 5, 0);
	crash(2, 3, 0);
	crash(3, 0, SIGSEGV);
	crash(4, 0, SIGABRT);
	crash(5, 0, SIGKILL);
	crash(6, 1, 0);

	int how = 6;
	ferry_worker *w = spawn_with(FERRY_SPAWN_SERVER, dies, &how, sizeof how, NULL);
	struct ferry_worker_event ev;
	int want[] = { FERRY_WORKER_ONLINE, FERRY_WORKER_MESSAGE, FERRY_WORKER_ERROR, FERRY_WORKER_EXIT };
	for (size_t i = 0; i < sizeof want / sizeof want[0]; i++) {
		CHECK_EQ(ferry_worker_next(w, &ev, T10S), 0, "%s", ferry_errmsg());
		CHECK_EQ(ev.type, want[i], "event %d, expected %d", ev.type, want[i]);
		if (ev.type == FERRY_WORKER_MESSAGE)
			ferry_msg_free(ev.msg);
	}
	CHECK_EQ(ev.status.code, 1);
	ferry_worker_destroy(w);
}

static int blocks_in_recv(ferry_worker_ctx *ctx)
{
	ferry_msg *m;
	ferry_port_post_bytes(ferry_worker_ctx_port(ctx), "ready", 5, FERRY_FOREVER);
	ferry_port_recv(ferry_worker_ctx_port(ctx), &m, FERRY_FOREVER);
	ferry_msg_free(m);
	return 0;
}

static int ignores_sigterm(ferry_worker_ctx *ctx)
{
	signal(SIGTERM, SIG_IGN);
	return blocks_in_recv(ctx);
}

static int waits_for_go(ferry_worker_ctx *ctx)
{
	ferry_msg *m;
	ferry_port_post_bytes(ferry_worker_ctx_port(ctx), "ready", 5, FERRY_FOREVER);
	int rc = ferry_port_recv(ferry_worker_ctx_port(ctx), &m, FERRY_FOREVER);
	ferry_msg_free(m);
	return rc == 0 ? 4 : 6;
}

static void expect_ready(ferry_worker *w)
{
	ferry_msg *m;
	CHECK_EQ(ferry_port_recv(ferry_worker_port(w), &m, T10S), 0, "%s", ferry_errmsg());
	CHECK_EQ(ferry_msg_len(m), 5);
	ferry_msg_free(m);
}

static void terminate_blocked(ferry_worker_fn fn, int want_signal)
{
	ferry_worker *w = spawn_with(FERRY_SPAWN_SERVER, fn, NULL, 0, NULL);
	expect_ready(w);
	struct ferry_worker_status st;
	CHECK_EQ(ferry_worker_join(w, &st, 0), -EAGAIN);
	CHECK_EQ(ferry_worker_join(w, &st, 20 * MS), -ETIMEDOUT);
	CHECK_EQ(ferry_worker_terminate(w, 200 * MS), 0, "%s", ferry_errmsg());
	CHECK_EQ(ferry_worker_join(w, &st, 0), 0);
	CHECK_EQ(st.terminated, 1);
	CHECK_EQ(st.signal, want_signal);
	CHECK_EQ(ferry_worker_terminate(w, 0), 0, "again: harmless");
	ferry_worker_destroy(w);
}

static void terminate_through_the_server(void)
{
	start_server();
	terminate_blocked(blocks_in_recv, SIGTERM);
	terminate_blocked(ignores_sigterm, SIGKILL);

	/* One that already exited. */
	ferry_worker *w = spawn_with(FERRY_SPAWN_SERVER, report_entry, NULL, 0, NULL);
	struct report r;
	get_report(w, &r);
	struct ferry_worker_status st;
	CHECK_EQ(ferry_worker_join(w, &st, T10S), 0);
	CHECK_EQ(ferry_worker_terminate(w, 0), 0);
	CHECK_EQ(ferry_worker_join(w, &st, 0), 0);
	CHECK_EQ(st.terminated, 0, "it had exited on its own");
	ferry_worker_destroy(w);

	/* Destroying a running one kills it. */
	w = spawn_with(FERRY_SPAWN_SERVER, blocks_in_recv, NULL, 0, NULL);
	expect_ready(w);
	pid_t pid = ferry_worker_pid(w);
	ferry_worker_destroy(w);
	for (int i = 0; i < 5000 && kill(pid, 0) == 0; i++)
		usleep(1000);
	CHECK_EQ(kill(pid, 0), -1, "destroy killed it and the server reaped it");
}

/* ---- events in a loop ---- */

static int posts_three_then_nine(ferry_worker_ctx *ctx)
{
	for (int i = 0; i < 3; i++)
		ferry_port_post_bytes(ferry_worker_ctx_port(ctx), &i, sizeof i, FERRY_FOREVER);
	return 9;
}

static int posts_then_killed(ferry_worker_ctx *ctx)
{
	posts_three_then_nine(ctx);
	raise(SIGKILL);
	return 0;
}

struct lw {
	int types[16], n;
	int terminate;
	struct ferry_worker_status st;
	int err;
};

static void lw_cb(ferry_loop *loop, ferry_worker *w, struct ferry_worker_event *ev, void *arg)
{
	struct lw *s = arg;
	if (s->n < 16)
		s->types[s->n++] = ev->type;
	if (ev->type == FERRY_WORKER_MESSAGE) {
		ferry_msg_free(ev->msg);
		if (s->terminate)
			CHECK_EQ(ferry_worker_terminate(w, T10S), 0, "%s", ferry_errmsg());
	}
	if (ev->type == FERRY_WORKER_EXIT) {
		s->st = ev->status;
		s->err = ev->err;
	}
}

static void loop_watch(const char *lb, ferry_worker_fn fn, int terminate, struct lw *s)
{
	setenv("FERRY_LOOP", lb, 1);
	ferry_loop *loop;
	CHECK_EQ(ferry_loop_create(&loop, NULL), 0, "%s", ferry_errmsg());
	ferry_worker *w = spawn_with(FERRY_SPAWN_SERVER, fn, NULL, 0, NULL);
	memset(s, 0, sizeof *s);
	s->terminate = terminate;
	struct ferry_loop_worker_watch ww = { 0 };
	CHECK_EQ(ferry_loop_worker_start(loop, &ww, w, lw_cb, s), 0, "%s", ferry_errmsg());
	CHECK_GE(ferry_loop_run(loop, FERRY_RUN_DEFAULT), 0, "%s", ferry_errmsg());
	CHECK_EQ(s->err, 0);
	CHECK_GE(s->n, 2);
	CHECK_EQ(s->types[0], FERRY_WORKER_ONLINE);
	CHECK_EQ(s->types[s->n - 1], FERRY_WORKER_EXIT);
	ferry_worker_destroy(w);
	ferry_loop_destroy(loop);
}

static void loop_events_through_the_server(void)
{
	start_server();
	const char *loops[] = { "uring", "epoll" };
	for (int i = 0; i < 2; i++) {
		setenv("FERRY_LOOP", loops[i], 1);
		ferry_loop *probe;
		if (ferry_loop_create(&probe, NULL))
			continue; /* no io_uring here */
		ferry_loop_destroy(probe);
		struct lw s;
		loop_watch(loops[i], posts_three_then_nine, 0, &s);
		CHECK_EQ(s.n, 5, "%s: ONLINE, 3 messages, EXIT", loops[i]);
		CHECK_EQ(s.st.code, 9);
		loop_watch(loops[i], posts_then_killed, 0, &s);
		CHECK_EQ(s.n, 5, "%s: the messages of a killed worker, then EXIT", loops[i]);
		CHECK_EQ(s.st.signal, SIGKILL);
		loop_watch(loops[i], blocks_in_recv, 1, &s);
		CHECK_EQ(s.n, 3, "%s: ONLINE, ready, EXIT", loops[i]);
		CHECK_EQ(s.st.signal, SIGTERM);
		CHECK_EQ(s.st.terminated, 1);
	}
	unsetenv("FERRY_LOOP");
}

/* ---- choosing the path ---- */

static pid_t parent_of(int spawn, void *arg)
{
	ferry_worker *w = spawn_with(spawn, report_entry, NULL, 0, arg);
	struct report r;
	get_report(w, &r);
	join_expect(w, 0, 0);
	ferry_worker_destroy(w);
	return r.ppid;
}

static void auto_uses_the_server_only_when_multithreaded_without_arg(void)
{
	pid_t server = start_server(), me = getpid();
	CHECK_EQ(parent_of(FERRY_SPAWN_AUTO, NULL), me, "single-threaded: a direct fork");
	CHECK_EQ(parent_of(FERRY_SPAWN_SERVER, NULL), server);
	struct idler i;
	idler_start(&i);
	CHECK_EQ(parent_of(FERRY_SPAWN_AUTO, NULL), server, "multithreaded: the server");
	CHECK_EQ(parent_of(FERRY_SPAWN_AUTO, (void *)&i), me, "arg: a direct fork");
	CHECK_EQ(parent_of(FERRY_SPAWN_FORK, NULL), me);
	CHECK_EQ(parent_of(FERRY_SPAWN_SERVER, NULL), server);
	idler_stop(&i);
	ferry_fini();
	idler_start(&i);
	CHECK_EQ(parent_of(FERRY_SPAWN_AUTO, NULL), me, "no server: a direct fork");
	idler_stop(&i);
}

static void bad_spawn_options(void)
{
	ferry_worker *w = (ferry_worker *)1;
	struct ferry_worker_opts o = { .backend = FERRY_PROCESS, .entry = report_entry,
				       .spawn = FERRY_SPAWN_SERVER };
	CHECK_EQ(ferry_worker_spawn(&w, &o), -ECHILD);
	CHECK_NULL(w);
	CHECK(strstr(ferry_errmsg(), "no fork server"), "%s", ferry_errmsg());
	start_server();
	o.arg = &o;
	CHECK_EQ(ferry_worker_spawn(&w, &o), -EINVAL);
	CHECK(strstr(ferry_errmsg(), "arg"), "%s", ferry_errmsg());
	o.arg = NULL;
	o.backend = FERRY_THREAD;
	CHECK_EQ(ferry_worker_spawn(&w, &o), -EINVAL);
	CHECK(strstr(ferry_errmsg(), "process workers only"), "%s", ferry_errmsg());
	o.backend = FERRY_PROCESS;
	o.spawn = 7;
	CHECK_EQ(ferry_worker_spawn(&w, &o), -EINVAL);
	CHECK(strstr(ferry_errmsg(), "spawn"), "%s", ferry_errmsg());
	o.spawn = -1;
	CHECK_EQ(ferry_worker_spawn(&w, &o), -EINVAL);
	CHECK_NULL(w);
}

/* ---- the server's end ---- */

static void server_death_is_reported_not_waited_on(void)
{
	pid_t server = start_server();
	ferry_worker *a = spawn_with(FERRY_SPAWN_SERVER, blocks_in_recv, NULL, 0, NULL);
	ferry_worker *b = spawn_with(FERRY_SPAWN_SERVER, waits_for_go, NULL, 0, NULL);
	expect_ready(a);
	expect_ready(b);
	CHECK_EQ(kill(server, SIGKILL), 0);

	struct ferry_worker_opts o = { .backend = FERRY_PROCESS, .entry = report_entry,
				       .spawn = FERRY_SPAWN_SERVER };
	ferry_worker *w = (ferry_worker *)1;
	CHECK_EQ(ferry_worker_spawn(&w, &o), -ECHILD);
	CHECK_NULL(w);
	CHECK(strstr(ferry_errmsg(), "fork server"), "%s", ferry_errmsg());
	CHECK(strstr(ferry_errmsg(), "signal 9"), "%s", ferry_errmsg());
	/* AUTO would need it too: the same error, not a silent unsafe fork. */
	struct idler i;
	idler_start(&i);
	o.spawn = FERRY_SPAWN_AUTO;
	CHECK_EQ(ferry_worker_spawn(&w, &o), -ECHILD);
	CHECK(strstr(ferry_errmsg(), "signal 9"), "%s", ferry_errmsg());
	idler_stop(&i);
	CHECK_EQ(parent_of(FERRY_SPAWN_AUTO, NULL), getpid(), "single-threaded: direct");

	/* b ends: its status is lost with the server, and join says so. */
	CHECK_EQ(ferry_port_post_bytes(ferry_worker_port(b), "go", 2, 0), 0);
	struct ferry_worker_status st;
	CHECK_EQ(ferry_worker_join(b, &st, T10S), FERRY_EWORKER);
	CHECK(strstr(ferry_errmsg(), "exit status is lost"), "%s", ferry_errmsg());
	CHECK(strstr(ferry_errmsg(), "signal 9"), "%s", ferry_errmsg());
	CHECK_EQ(ferry_worker_join(b, &st, 0), FERRY_EWORKER, "the same answer again");
	/* a still runs: join times out; terminate ends it and reports the loss. */
	CHECK_EQ(ferry_worker_join(a, &st, 50 * MS), -ETIMEDOUT);
	CHECK_EQ(ferry_worker_terminate(a, 100 * MS), FERRY_EWORKER);
	ferry_worker_destroy(a);
	ferry_worker_destroy(b);

	ferry_fini();
	pid_t again = start_server();
	CHECK_EQ(parent_of(FERRY_SPAWN_SERVER, NULL), again, "a new server works");
}

static void fini_leaves_running_workers_joinable(void)
{
	start_server();
	ferry_worker *w = spawn_with(FERRY_SPAWN_SERVER, waits_for_go, NULL, 0, NULL);
	ferry_worker *k = spawn_with(FERRY_SPAWN_SERVER, blocks_in_recv, NULL, 0, NULL);
	expect_ready(w);
	expect_ready(k);
	ferry_fini();
	CHECK_EQ(ferry_port_post_bytes(ferry_worker_port(w), "go", 2, 0), 0);
	struct ferry_worker_status st;
	CHECK_EQ(ferry_worker_join(w, &st, T10S), FERRY_EWORKER);
	CHECK(strstr(ferry_errmsg(), "ferry_fini"), "%s", ferry_errmsg());
	ferry_worker_destroy(w);
	ferry_worker_destroy(k); /* killed through its pidfd; no hang */
}

/* ---- what a server worker can do ---- */

static int nested_entry(ferry_worker_ctx *ctx)
{
	if (ferry_fork_server_pid() != 0)
		return 20;
	for (int b = FERRY_THREAD; b <= FERRY_PROCESS; b++) {
		struct ferry_worker_opts o = { .backend = b, .entry = report_entry };
		ferry_worker *w;
		if (ferry_worker_spawn(&w, &o))
			return 21;
		ferry_msg *m;
		if (ferry_port_recv(ferry_worker_port(w), &m, T10S))
			return 22;
		struct report r;
		memcpy(&r, ferry_msg_data(m), sizeof r);
		ferry_msg_free(m);
		struct ferry_worker_status st;
		if (ferry_worker_join(w, &st, T10S) || st.code != 0)
			return 23;
		ferry_worker_destroy(w);
		if (b == FERRY_PROCESS && r.ppid != getpid())
			return 24;
	}
	struct ferry_worker_opts o = { .backend = FERRY_PROCESS, .entry = report_entry,
				       .spawn = FERRY_SPAWN_SERVER };
	ferry_worker *w;
	return ferry_worker_spawn(&w, &o) == -ECHILD ? 0 : 25;
}

static void server_worker_spawns_workers_of_its_own(void)
{
	start_server();
	ferry_worker *w = spawn_with(FERRY_SPAWN_SERVER, nested_entry, NULL, 0, NULL);
	join_expect(w, 0, 0);
	ferry_worker_destroy(w);
}

/* workerData through the server, with a buffer transferred in and back. */
static int data_echo(ferry_worker_ctx *ctx)
{
	const ferry_value *v = ferry_worker_ctx_value(ctx);
	if (!v)
		return 1;
	enum ferry_value_kind k;
	ferry_buf *b = ferry_value_get_handle(ferry_value_map_get(v, "buf"), &k);
	if (!b || k != FERRY_VALUE_BUF)
		return 2;
	struct ferry_xfer x = { .bufs = &b, .nbufs = 1 };
	return ferry_port_post(ferry_worker_ctx_port(ctx), v, &x, FERRY_FOREVER) ? 3 : 0;
}

static void worker_data_value_through_the_server(void)
{
	start_server();
	ferry_buf *b;
	CHECK_EQ(ferry_buf_create(&b, 100000, 0), 0);
	memset(ferry_buf_data(b), 0x5a, 100000);
	ferry_value *v = ferry_value_map();
	ferry_value_map_set(v, "name", ferry_value_str("data"));
	ferry_value_map_set(v, "buf", ferry_value_handle(FERRY_VALUE_BUF, b));
	struct ferry_xfer x = { .bufs = &b, .nbufs = 1 };
	struct ferry_worker_opts o = { .backend = FERRY_PROCESS, .entry = data_echo, .value = v,
				       .xfer = &x, .spawn = FERRY_SPAWN_SERVER,
				       .channel = { .ring_bytes = 64 * 1024, .max_message = 1 << 20 } };
	ferry_worker *w;
	CHECK_EQ(ferry_worker_spawn(&w, &o), 0, "%s", ferry_errmsg());
	CHECK_EQ(ferry_buf_is_detached(b), 1, "transferred into the worker");
	ferry_msg *m;
	CHECK_EQ(ferry_port_recv(ferry_worker_port(w), &m, T10S), 0, "%s", ferry_errmsg());
	const ferry_value *got = ferry_msg_value(m);
	CHECK_STR_EQ(ferry_value_get_str(ferry_value_map_get(got, "name"), NULL), "data");
	ferry_buf *back = ferry_value_get_handle(ferry_value_map_get(got, "buf"), NULL);
	CHECK_EQ(ferry_buf_len(back), 100000);
	CHECK_EQ(((unsigned char *)ferry_buf_data(back))[99999], 0x5a);
	ferry_msg_free(m);
	join_expect(w, 0, 0);
	ferry_worker_destroy(w);
	ferry_value_free(v);
	ferry_buf_free(b);
}

static int limit_result(const struct ferry_worker_opts *o)
{
	ferry_worker *w;
	CHECK_EQ(ferry_worker_spawn(&w, o), 0, "%s", ferry_errmsg());
	ferry_msg *m;
	CHECK_EQ(ferry_port_recv(ferry_worker_port(w), &m, T10S), 0, "%s", ferry_errmsg());
	int r = *(const int *)ferry_msg_data(m);
	ferry_msg_free(m);
	join_expect(w, 0, 0);
	ferry_worker_destroy(w);
	return r;
}

static void limits_apply_through_the_server(void)
{
	start_server();
	struct ferry_worker_opts o = { .backend = FERRY_PROCESS, .entry = tu_entry_count_open_files,
				       .max_open_files = 32, .spawn = FERRY_SPAWN_SERVER };
	int opened = limit_result(&o);
	CHECK_LT(opened, 32, "RLIMIT_NOFILE not applied: %d dups", opened);
	CHECK_GT(opened, 20, "the worker holds only a few fds: %d dups", opened);
	if (UNDER_SANITIZER)
		return; /* shadow memory: no RLIMIT_AS under sanitizers */
	o.entry = tu_entry_try_big_malloc;
	o.max_open_files = 0;
	o.max_address_space = (uint64_t)512 << 20;
	CHECK_EQ(limit_result(&o), 0, "RLIMIT_AS not applied: a 1 GiB malloc worked");
	o.max_address_space = 0;
	CHECK_EQ(limit_result(&o), 1, "without the limit the malloc works");
}

/* ---- the tests: each scenario in its own single-threaded child ---- */

Test(forkserver, init_and_fini) { run_alone(init_and_fini); }
Test(forkserver, init_refuses_a_multithreaded_process) { run_alone(init_refuses_a_multithreaded_process); }
Test(forkserver, spawns_through_the_server) { run_alone(spawns_through_the_server); }
Test(forkserver, worker_holds_only_its_own_fds) { run_alone(worker_holds_only_its_own_fds); }
Test(forkserver, globals_are_those_of_init_time) { run_alone(globals_are_those_of_init_time); }
Test(forkserver, two_hundred_workers_while_threads_allocate_and_lock) { run_alone(two_hundred_workers_while_threads_allocate_and_lock); }
Test(forkserver, spawns_from_many_threads_at_once) { run_alone(spawns_from_many_threads_at_once); }
Test(forkserver, exit_codes_and_crash_signals_come_through_the_server) { run_alone(exit_codes_and_crash_signals_come_through_the_server); }
Test(forkserver, terminate_through_the_server) { run_alone(terminate_through_the_server); }
Test(forkserver, loop_events_through_the_server) { run_alone(loop_events_through_the_server); }
Test(forkserver, auto_uses_the_server_only_when_multithreaded_without_arg) { run_alone(auto_uses_the_server_only_when_multithreaded_without_arg); }
Test(forkserver, bad_spawn_options) { run_alone(bad_spawn_options); }
Test(forkserver, server_death_is_reported_not_waited_on) { run_alone(server_death_is_reported_not_waited_on); }
Test(forkserver, fini_leaves_running_workers_joinable) { run_alone(fini_leaves_running_workers_joinable); }
Test(forkserver, server_worker_spawns_workers_of_its_own) { run_alone(server_worker_spawns_workers_of_its_own); }
Test(forkserver, worker_data_value_through_the_server) { run_alone(worker_data_value_through_the_server); }
Test(forkserver, limits_apply_through_the_server) { run_alone(limits_apply_through_the_server); }
