/*
 * Workers: one API, two backends.
 *
 * Start: the parent makes the channel, posts workerData (a clone) as the
 * channel's first message when there is one (an uncloneable value fails the
 * spawn before anything starts), then starts a thread or forks. The worker's
 * runtime takes workerData off its port, posts an ONLINE control record and
 * calls the entry. Control records (ONLINE, ERROR) share the ring with the
 * user's messages, so they keep their order; ferry_port_recv skips them after
 * handing them to this file (ctrl_fn), ferry_worker_next turns them into
 * events.
 *
 * End: the worker's port is closed before the exit is published, so the
 * parent receives everything, then -EPIPE, then the exit.
 *   Thread: the exit code is published through a futex word (release) so join
 *   waits with a monotonic deadline; the handle is shared by parent and
 *   thread (reference count 2). ferry_worker_exit and terminate end the
 *   thread with pthread_exit, and the same cleanup handler runs.
 *   Process: fork; each side drops the port that belongs to the other
 *   (ferry__port_forget: no close), the child also drops every other port's
 *   control socket (so peers' liveness is not held by this child), runs the
 *   entry and leaves with _exit, never returning into the caller's stack. The
 *   parent waits on a pidfd.
 *   Through the fork server (runtime/forkserver.c): the server forks; its
 *   child imports the worker's port from the fds it was sent, copies the
 *   data out of a sealed segment, and from there takes the same path as a
 *   directly forked child (process_run). The parent forgets its copy of the
 *   worker's port, waits on the pidfd the server sent, and gets the exit
 *   status from the server.
 *
 * Terminate: a process gets SIGTERM, then SIGKILL after the grace period. A
 * thread gets its stop flag set (shm/cancel.h) and its port's eventcounts
 * bumped; its next ferry wait or receive ends it.
 */
#include "ferry/buf.h"
#include "ferry/loop.h"
#include "ferry/runtime.h"
#include "ferry/value.h"
#include "ferry/worker.h"
#include "ports/port_int.h"
#include "runtime/forkserver_int.h"
#include "runtime/loop_int.h"
#include "shm/cancel.h"
#include "shm/err.h"

#include <errno.h>
#include <limits.h>
#include <poll.h>
#include <pthread.h>
#include <signal.h>
#include <stdarg.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/prctl.h>
#include <sys/resource.h>
#include <sys/socket.h>
#include <sys/syscall.h>
#include <sys/wait.h>
#include <unistd.h>

enum ctrl_type {
	CTRL_ONLINE = 1,
	CTRL_ERROR = 2,
};

struct ctrl_rec {
	uint32_t type;
	int32_t err;
	char text[256];
};

struct ferry_worker_ctx {
	ferry_port *port;
	void *data;
	size_t data_len;
	void *arg;
	char name[64];
	int backend;
	int has_value;
	ferry_msg *value_msg; /* holds workerData and the handles it brought */
	struct ferry_worker *w;
};

#define MAX_PENDING_ERRORS 8

struct ferry_worker {
	struct ferry_worker_ctx ctx; /* the worker's side */
	ferry_port *port;            /* the parent's side */
	int backend;
	atomic_int refs;             /* thread backend: parent + thread */
	size_t stack_size;
	uint64_t max_as, max_nofile;
	/* thread backend */
	pthread_t thread;
	uint32_t done;               /* 0 running, 1 exited (futex word) */
	struct ferry_ec exit_ec;     /* notified after done is set (loop watches) */
	int exit_code;
	int cancelled;               /* ended by a terminate */
	int joined;
	atomic_int stop;             /* terminate asked */
	unsigned fork_gen;           /* fork generation when its channel was made */
	/* process backend */
	pid_t pid;
	int pidfd;
	int reaped;
	int via_server;              /* started by the fork server */
	uint64_t fs_id;              /* its id there */
	int sent_term;
	struct ferry_worker_status status;
	/* parent-side view of the control records */
	int online, online_reported, exit_reported;
	struct ctrl_rec errors[MAX_PENDING_ERRORS];
	unsigned nerrors;
};

/* The worker this thread runs (thread backend), or this process runs
 * (process backend, in the child). */
static struct ferry_worker *proc_worker;
static _Thread_local struct ferry_worker *thread_worker;

static struct ferry_worker *current(void)
{
	return thread_worker ? thread_worker : proc_worker;
}

FERRY_API int ferry_is_main(void)
{
	return current() == NULL;
}

/* The kernel keeps 15 characters of a thread or process name. */
static void short_name(char out[16], const char *name)
{
	size_t n = strnlen(name, 15);
	memcpy(out, name, n);
	out[n] = 0;
}

static void worker_unref(struct ferry_worker *w)
{
	/* acq_rel: the last owner sees every write the other made. */
	if (atomic_fetch_sub_explicit(&w->refs, 1, memory_order_acq_rel) != 1)
		return;
	ferry_port_destroy(w->ctx.port);
	free(w->ctx.data);
	free(w);
}

/* ---- the parent's view of control records ---- */

static void on_ctrl(void *arg, const ferry_msg *m)
{
	struct ferry_worker *w = arg;
	struct ctrl_rec c;
	memset(&c, 0, sizeof c);
	memcpy(&c, ferry_msg_data(m), ferry_msg_len(m) < sizeof c ? ferry_msg_len(m) : sizeof c);
	c.text[sizeof c.text - 1] = 0;
	if (c.type == CTRL_ONLINE)
		w->online = 1;
	else if (c.type == CTRL_ERROR && w->nerrors < MAX_PENDING_ERRORS)
		w->errors[w->nerrors++] = c;
}

/* ---- the worker's side ---- */

static void post_ctrl(ferry_port *p, uint32_t type, int err, const char *text, int64_t timeout)
{
	struct ctrl_rec c = { .type = type, .err = err };
	if (text)
		snprintf(c.text, sizeof c.text, "%s", text);
	ferry__port_post_raw(p, WIRE_CTRL, &c, sizeof c, timeout);
}

/* Everything a worker does before its entry; returns 0 or an exit code. */
static int worker_begin(struct ferry_worker *w)
{
	struct ferry_worker_ctx *ctx = &w->ctx;
	if (ctx->has_value) {
		int rc = ferry_port_recv(ctx->port, &ctx->value_msg, FERRY_FOREVER);
		if (rc) {
			post_ctrl(ctx->port, CTRL_ERROR, rc, "workerData did not arrive", 1000000000);
			return 1;
		}
	}
	post_ctrl(ctx->port, CTRL_ONLINE, 0, NULL, FERRY_FOREVER);
	return 0;
}

/* Close the worker's port (the parent then drains, then sees -EPIPE). */
static void worker_end(struct ferry_worker *w)
{
	ferry_port_close(w->ctx.port);
	ferry_msg_free(w->ctx.value_msg);
	w->ctx.value_msg = NULL;
}

static void thread_cleanup(void *arg)
{
	struct ferry_worker *w = arg;
	ferry__cancel_flag = NULL;
	ferry__loop_thread_end();
	worker_end(w);
	/* release: pairs with the acquire load in join_thread. */
	atomic_store_explicit((_Atomic uint32_t *)&w->done, 1, memory_order_release);
	ferry_notify_private(&w->done, FERRY_NOTIFY_ALL);
	ferry_ec_notify(&w->exit_ec); /* a syscall only while a loop sleeps on it */
	thread_worker = NULL;
	worker_unref(w);
}

static void cancel_exit(void)
{
	struct ferry_worker *w = thread_worker;
	if (!w)
		return;
	w->exit_code = 1;
	w->cancelled = 1;
	pthread_exit(NULL);
}

struct thread_start {
	struct ferry_worker *w;
	ferry_worker_fn entry;
};

static void *thread_trampoline(void *arg)
{
	struct thread_start st = *(struct thread_start *)arg;
	free(arg);
	struct ferry_worker *w = st.w;
	thread_worker = w;
	ferry__cancel_flag = &w->stop;
	char tname[16];
	short_name(tname, w->ctx.name);
	pthread_setname_np(pthread_self(), tname);

	pthread_cleanup_push(thread_cleanup, w);
	int code = worker_begin(w);
	if (code == 0)
		code = st.entry(&w->ctx);
	w->exit_code = code;
	pthread_cleanup_pop(1);
	return NULL;
}

static _Noreturn void process_exit(struct ferry_worker *w, int code)
{
	worker_end(w);
	fflush(NULL);
	_exit(code & 0xff);
}

static int set_limit(int resource, uint64_t value)
{
	struct rlimit rl = { .rlim_cur = value, .rlim_max = value };
	struct rlimit old;
	if (getrlimit(resource, &old) == 0 && old.rlim_max != RLIM_INFINITY && value > old.rlim_max)
		rl.rlim_max = old.rlim_max, rl.rlim_cur = old.rlim_max;
	return setrlimit(resource, &rl) < 0 ? -errno : 0;
}

/* A forked worker, directly or by the fork server, once its port is open. */
static _Noreturn void process_run(struct ferry_worker *w, ferry_worker_fn entry)
{
	/* Forked from a thread worker, the child inherits that thread's view;
	 * here the whole process is this worker. */
	thread_worker = NULL;
	ferry__cancel_flag = NULL;
	proc_worker = w;
	ferry__port_keep_only(w->ctx.port);
	char pname[16];
	short_name(pname, w->ctx.name);
	prctl(PR_SET_NAME, pname);
	const struct {
		int res;
		uint64_t value;
		const char *name;
	} limits[] = {
		{ RLIMIT_STACK, w->stack_size, "stack size" },
		{ RLIMIT_AS, w->max_as, "address space" },
		{ RLIMIT_NOFILE, w->max_nofile, "open files" },
	};
	for (size_t i = 0; i < sizeof limits / sizeof limits[0]; i++) {
		if (!limits[i].value)
			continue;
		int rc = set_limit(limits[i].res, limits[i].value);
		if (rc) {
			char text[128];
			snprintf(text, sizeof text, "setting the %s limit failed: %s", limits[i].name,
				 ferry_strerror(rc));
			post_ctrl(w->ctx.port, CTRL_ERROR, rc, text, 1000000000);
			process_exit(w, 1);
		}
	}
	int code = worker_begin(w);
	if (code == 0)
		code = entry(&w->ctx);
	process_exit(w, code);
}

/* The child of a direct fork: it drops the parent's port first. */
static _Noreturn void process_main(struct ferry_worker *w, ferry_worker_fn entry)
{
	ferry__port_forget(w->port);
	w->port = NULL;
	process_run(w, entry);
}

/* The child of the fork server: everything comes from the request. */
_Noreturn void ferry__worker_server_child(const struct ferry__fs_worker *r)
{
	struct ferry_worker *w = calloc(1, sizeof *w);
	if (!w)
		_exit(FERRY__FS_SETUP_EXIT);
	w->backend = FERRY_PROCESS;
	w->pidfd = -1;
	w->stack_size = r->stack_size;
	w->max_as = r->max_as;
	w->max_nofile = r->max_nofile;
	atomic_init(&w->refs, 1);
	w->ctx.w = w;
	w->ctx.backend = FERRY_PROCESS;
	w->ctx.has_value = r->has_value;
	snprintf(w->ctx.name, sizeof w->ctx.name, "%s", r->name);
	/* Without a port there is nobody to tell: the parent sees the exit
	 * code and its port's peer gone. */
	if (ferry__port_import(&w->ctx.port, r->seg_fd, r->sock_fd, r->side)) {
		if (r->data_fd >= 0)
			close(r->data_fd);
		_exit(FERRY__FS_SETUP_EXIT);
	}
	if (r->max_message)
		w->ctx.port->max_message = r->max_message;
	if (r->data_len) {
		ferry_seg *seg;
		int rc = ferry_seg_import(&seg, r->data_fd, r->data_len);
		if (rc == 0) {
			w->ctx.data = malloc(r->data_len);
			if (w->ctx.data) {
				memcpy(w->ctx.data, ferry_seg_data(seg), r->data_len);
				w->ctx.data_len = r->data_len;
			} else {
				rc = -ENOMEM;
			}
			ferry_seg_unref(seg);
		}
		if (rc) {
			char text[160];
			snprintf(text, sizeof text, "worker data (%llu bytes) did not arrive: %s",
				 (unsigned long long)r->data_len, ferry_strerror(rc));
			post_ctrl(w->ctx.port, CTRL_ERROR, rc, text, 1000000000);
			process_exit(w, 1);
		}
	}
	process_run(w, r->entry);
}

FERRY_API int ferry_worker_exit(int code)
{
	struct ferry_worker *w = current();
	if (!w)
		return ferry__fail(-EINVAL, "ferry_worker_exit: not called inside a worker");
	if (w->backend == FERRY_PROCESS && w == proc_worker && !thread_worker)
		process_exit(w, code);
	w->exit_code = code;
	pthread_exit(NULL);
}

FERRY_API int ferry_worker_throw(int err, const char *fmt, ...)
{
	struct ferry_worker *w = current();
	if (!w)
		return ferry__fail(-EINVAL, "ferry_worker_throw: not called inside a worker");
	char text[256];
	va_list ap;
	va_start(ap, fmt);
	text[0] = 0;
	if (fmt)
		vsnprintf(text, sizeof text, fmt, ap);
	va_end(ap);
	/* Bounded: a parent that never reads must not keep the worker alive. */
	post_ctrl(w->ctx.port, CTRL_ERROR, err, text, 5LL * 1000000000);
	return ferry_worker_exit(1);
}

/* ---- recycled channel segments (thread workers) ----
 *
 * A thread worker's channel lives entirely in this process. When the worker
 * was joined and neither port travelled, its segment (the default size, its
 * pages already allocated and mapped) is kept for the next thread worker
 * instead of unmapped: the next start skips memfd_create, ftruncate,
 * fallocate, sealing, mmap and the first-touch page faults, and the destroy
 * skips the munmap. Only the segment's header and the two ring headers are
 * reset. A segment that existed at a fork is never reused (the child has it
 * mapped), and the cache is emptied in a forked child.
 */
#define SEG_CACHE 4

static pthread_mutex_t seg_mu = PTHREAD_MUTEX_INITIALIZER;
static ferry_seg *seg_cache[SEG_CACHE];
static unsigned seg_n;
static atomic_uint fork_gen;
static pthread_once_t seg_once = PTHREAD_ONCE_INIT;

static void seg_prepare(void)
{
	pthread_mutex_lock(&seg_mu);
}

static void seg_parent(void)
{
	atomic_fetch_add_explicit(&fork_gen, 1, memory_order_relaxed);
	pthread_mutex_unlock(&seg_mu);
}

static void seg_child(void)
{
	atomic_fetch_add_explicit(&fork_gen, 1, memory_order_relaxed);
	/* The parent goes on reusing them: the child only drops its mappings
	 * and fds (malloc is usable again in a child's fork handler). */
	while (seg_n)
		ferry_seg_unref(seg_cache[--seg_n]);
	pthread_mutex_unlock(&seg_mu);
}

static void seg_register(void)
{
	pthread_atfork(seg_prepare, seg_parent, seg_child);
}

static size_t default_seg_size(void)
{
	size_t rsz = ferry_ring_spsc_memsize(FERRY_CHANNEL_RING_DEFAULT);
	rsz = (rsz + 63) & ~(size_t)63;
	return 4096 + 2 * rsz;
}

/* The worker's channel for a thread worker: from the cache when one fits. */
static int thread_channel(struct ferry_worker *w, const struct ferry_channel_opts *o)
{
	pthread_once(&seg_once, seg_register);
	w->fork_gen = atomic_load_explicit(&fork_gen, memory_order_relaxed);
	ferry_seg *seg = NULL;
	if (!o->ring_bytes || o->ring_bytes == FERRY_CHANNEL_RING_DEFAULT) {
		pthread_mutex_lock(&seg_mu);
		if (seg_n)
			seg = seg_cache[--seg_n];
		pthread_mutex_unlock(&seg_mu);
	}
	if (!seg)
		return ferry_channel(&w->port, &w->ctx.port, o);
	struct chan_hdr *h = ferry_seg_data(seg);
	int rc = 0;
	for (int d = 0; d < 2 && rc == 0; d++) {
		memset(&h->dir[d], 0, sizeof h->dir[d]);
		rc = ferry_ring_spsc_init((ferry_ring_spsc *)((char *)h + h->ring_off[d]),
					  h->ring_size[d]);
	}
	int sv[2];
	if (rc == 0 && socketpair(AF_UNIX, SOCK_SEQPACKET | SOCK_CLOEXEC, 0, sv) < 0)
		rc = ferry__errno(-errno, "ferry_worker_spawn: socketpair");
	if (rc) {
		ferry_seg_unref(seg);
		return rc;
	}
	rc = ferry__port_open(&w->port, seg, 0, sv[0]);
	if (rc) {
		close(sv[0]);
		close(sv[1]);
		ferry_seg_unref(seg);
		return rc;
	}
	rc = ferry__port_open(&w->ctx.port, ferry_seg_ref(seg), 1, sv[1]);
	if (rc) {
		ferry_seg_unref(seg);
		close(sv[1]);
		ferry_port_destroy(w->port);
		w->port = NULL;
		return rc;
	}
	size_t max_message = o->max_message ? o->max_message : FERRY_MESSAGE_MAX_DEFAULT;
	w->port->max_message = max_message;
	w->ctx.port->max_message = max_message;
	return 0;
}

FERRY_API void ferry_trim(void)
{
	ferry_seg *drop[SEG_CACHE];
	pthread_mutex_lock(&seg_mu);
	unsigned n = seg_n;
	memcpy(drop, seg_cache, n * sizeof drop[0]);
	seg_n = 0;
	pthread_mutex_unlock(&seg_mu);
	for (unsigned i = 0; i < n; i++)
		ferry_seg_unref(drop[i]);
}

/* Before a joined thread worker's ports are destroyed: a reference to their
 * segment if it can be reused (else NULL). */
static ferry_seg *seg_keep(struct ferry_worker *w)
{
	ferry_port *a = w->port, *b = w->ctx.port;
	if (!a || !b || a->detached || b->detached || a->seg != b->seg ||
	    ferry_seg_size(a->seg) != default_seg_size() ||
	    atomic_load_explicit(&fork_gen, memory_order_relaxed) != w->fork_gen)
		return NULL;
	return ferry_seg_ref(a->seg);
}

/* After both ports are gone: into the cache, or released. */
static void seg_put(ferry_seg *seg, unsigned gen)
{
	if (!seg)
		return;
	pthread_mutex_lock(&seg_mu);
	if (seg_n < SEG_CACHE && atomic_load_explicit(&fork_gen, memory_order_relaxed) == gen) {
		seg_cache[seg_n++] = seg;
		seg = NULL;
	}
	pthread_mutex_unlock(&seg_mu);
	ferry_seg_unref(seg);
}

/* ---- spawning ---- */

static int spawn_thread(struct ferry_worker *w, ferry_worker_fn entry)
{
	struct thread_start *st = malloc(sizeof *st);
	if (!st)
		return ferry__fail(-ENOMEM, "ferry_worker_spawn: out of memory");
	st->w = w;
	st->entry = entry;
	atomic_init(&w->refs, 2);
	pthread_attr_t attr;
	pthread_attr_init(&attr);
	if (w->stack_size) {
		int e = pthread_attr_setstacksize(&attr, w->stack_size);
		if (e) {
			pthread_attr_destroy(&attr);
			free(st);
			return ferry__fail(-EINVAL, "ferry_worker_spawn: stack_size %zu is not usable (at least %zu)",
					   w->stack_size, (size_t)PTHREAD_STACK_MIN);
		}
	}
	int err = pthread_create(&w->thread, &attr, thread_trampoline, st);
	pthread_attr_destroy(&attr);
	if (err) {
		free(st);
		return ferry__errno(-err, "ferry_worker_spawn: pthread_create for \"%s\"", w->ctx.name);
	}
	w->pid = getpid();
	return 0;
}

static int spawn_process(struct ferry_worker *w, ferry_worker_fn entry)
{
	/* Unflushed stdio would be written twice, once by each process. */
	fflush(NULL);
	pid_t pid = fork();
	if (pid < 0)
		return ferry__errno(-errno, "ferry_worker_spawn: fork for \"%s\"", w->ctx.name);
	if (pid == 0)
		process_main(w, entry);
	ferry__port_forget(w->ctx.port);
	w->ctx.port = NULL;
	w->pid = pid;
	/* Without pidfds (old kernels) join polls waitpid instead. */
	w->pidfd = (int)syscall(SYS_pidfd_open, pid, 0);
	atomic_init(&w->refs, 1);
	return 0;
}

static int spawn_server(struct ferry_worker *w, ferry_worker_fn entry)
{
	ferry_port *wp = w->ctx.port;
	struct ferry__fs_worker r = {
		.entry = entry,
		.side = (uint32_t)wp->side,
		.has_value = w->ctx.has_value,
		.max_message = wp->max_message,
		.data_len = w->ctx.data_len,
		.stack_size = w->stack_size,
		.max_as = w->max_as,
		.max_nofile = w->max_nofile,
		.seg_fd = ferry_seg_fd(wp->seg),
		.sock_fd = ferry__port_sock(wp),
	};
	snprintf(r.name, sizeof r.name, "%s", w->ctx.name);
	pid_t pid;
	int pidfd;
	uint64_t id;
	int rc = ferry__fs_spawn(&r, w->ctx.data, &pid, &pidfd, &id);
	if (rc)
		return rc;
	/* The worker has its own copies of the port's fds and of the data. */
	ferry__port_forget(wp);
	w->ctx.port = NULL;
	free(w->ctx.data);
	w->ctx.data = NULL;
	w->pid = pid;
	w->pidfd = pidfd;
	w->via_server = 1;
	w->fs_id = id;
	atomic_init(&w->refs, 1);
	return 0;
}

/* Through the fork server (1) or by a direct fork (0); or a negative error. */
static int use_server(const struct ferry_worker_opts *o)
{
	if (o->spawn == FERRY_SPAWN_FORK)
		return 0;
	if (o->spawn == FERRY_SPAWN_SERVER) {
		if (o->arg)
			return ferry__fail(-EINVAL,
					   "ferry_worker_spawn: opts.arg must be NULL with FERRY_SPAWN_SERVER: "
					   "a worker started by the fork server has the program's memory of "
					   "ferry_init time, where the pointer would dangle");
		if (!ferry__fs_present())
			return ferry__fail(-ECHILD,
					   "ferry_worker_spawn: FERRY_SPAWN_SERVER, but no fork server runs in "
					   "this process (ferry_init with .fork_server = 1 starts one)");
		return 1;
	}
	/* AUTO: the server only makes a difference once there are other
	 * threads, and cannot carry arg. An unreadable thread count counts as
	 * many: the server is the safe side. */
	return !o->arg && ferry__fs_present() && ferry__thread_count() != 1;
}

FERRY_API int ferry_worker_spawn(ferry_worker **out, const struct ferry_worker_opts *o)
{
	if (out)
		*out = NULL;
	if (!out)
		return ferry__fail(-EINVAL, "ferry_worker_spawn: out is NULL");
	if (!o)
		return ferry__fail(-EINVAL, "ferry_worker_spawn: opts is NULL");
	if (!o->entry)
		return ferry__fail(-EINVAL, "ferry_worker_spawn: opts.entry is NULL");
	if (o->backend != FERRY_THREAD && o->backend != FERRY_PROCESS)
		return ferry__fail(-EINVAL, "ferry_worker_spawn: unknown backend %d", o->backend);
	if (o->data_len > FERRY_WORKER_DATA_MAX)
		return ferry__fail(-EINVAL, "ferry_worker_spawn: data_len %zu above the maximum %zu",
				   o->data_len, FERRY_WORKER_DATA_MAX);
	if (!o->data && o->data_len)
		return ferry__fail(-EINVAL, "ferry_worker_spawn: data is NULL with data_len %zu",
				   o->data_len);
	if (o->xfer && !o->value)
		return ferry__fail(-EINVAL, "ferry_worker_spawn: opts.xfer without opts.value");
	if (o->stack_size && o->stack_size < (size_t)PTHREAD_STACK_MIN)
		return ferry__fail(-EINVAL, "ferry_worker_spawn: stack_size %zu below the minimum %zu",
				   o->stack_size, (size_t)PTHREAD_STACK_MIN);
	if (o->backend == FERRY_THREAD && (o->max_address_space || o->max_open_files))
		return ferry__fail(-EINVAL,
				   "ferry_worker_spawn: max_address_space and max_open_files apply to process workers only");
	if (o->spawn != FERRY_SPAWN_AUTO && o->spawn != FERRY_SPAWN_FORK && o->spawn != FERRY_SPAWN_SERVER)
		return ferry__fail(-EINVAL, "ferry_worker_spawn: unknown opts.spawn %d", o->spawn);
	if (o->backend == FERRY_THREAD && o->spawn != FERRY_SPAWN_AUTO)
		return ferry__fail(-EINVAL, "ferry_worker_spawn: opts.spawn applies to process workers only");
	int via_server = o->backend == FERRY_PROCESS ? use_server(o) : 0;
	if (via_server < 0)
		return via_server;

	struct ferry_worker *w = calloc(1, sizeof *w);
	if (!w)
		return ferry__fail(-ENOMEM, "ferry_worker_spawn: out of memory");
	w->backend = o->backend;
	w->pidfd = -1;
	w->stack_size = o->stack_size;
	w->max_as = o->max_address_space;
	w->max_nofile = o->max_open_files;
	w->ctx.w = w;
	snprintf(w->ctx.name, sizeof w->ctx.name, "%s", o->name ? o->name : "worker");
	w->ctx.arg = o->arg;
	w->ctx.backend = o->backend;
	w->ctx.has_value = o->value != NULL;
	if (o->data_len) {
		w->ctx.data = malloc(o->data_len);
		if (!w->ctx.data) {
			free(w);
			return ferry__fail(-ENOMEM, "ferry_worker_spawn: out of memory for %zu bytes of data",
					   o->data_len);
		}
		memcpy(w->ctx.data, o->data, o->data_len);
		w->ctx.data_len = o->data_len;
	}
	int rc = o->backend == FERRY_THREAD ? thread_channel(w, &o->channel)
					    : ferry_channel(&w->port, &w->ctx.port, &o->channel);
	if (rc == 0) {
		w->port->ctrl_fn = on_ctrl;
		w->port->ctrl_arg = w;
	}
	/* workerData goes first: an uncloneable value fails here, before any
	 * thread or process exists, and every handle stays where it was. */
	if (rc == 0 && o->value)
		rc = ferry_port_post(w->port, o->value, o->xfer, 0);
	if (rc == 0)
		rc = o->backend == FERRY_THREAD ? spawn_thread(w, o->entry)
		     : via_server		    ? spawn_server(w, o->entry)
						    : spawn_process(w, o->entry);
	if (rc) {
		ferry_port_destroy(w->port);
		ferry_port_destroy(w->ctx.port);
		free(w->ctx.data);
		free(w);
		return rc;
	}
	*out = w;
	return 0;
}

/* ---- join and terminate ---- */

/* Signal a process worker: through its pidfd when there is one (a server
 * worker is not our child: its pid alone could have been reused). */
static void proc_signal(struct ferry_worker *w, int sig)
{
	if (w->pidfd >= 0 && syscall(SYS_pidfd_send_signal, w->pidfd, sig, NULL, 0) == 0)
		return;
	if (!w->via_server)
		kill(w->pid, sig); /* our unreaped child: the pid is still its */
}

/* Wait up to @timeout_ns for the exit of a process worker and take its status. */
static int reap(struct ferry_worker *w, int64_t timeout_ns)
{
	int st;
	if (w->via_server) {
		int rc = ferry__fs_wait(w->fs_id, w->pidfd, timeout_ns, &st);
		if (rc)
			return rc;
	} else {
		pid_t r = waitpid(w->pid, &st, timeout_ns == 0 ? WNOHANG : 0);
		if (r == 0)
			return -EAGAIN;
		if (r < 0)
			return ferry__errno(-errno, "ferry_worker_join: waitpid %d", (int)w->pid);
	}
	w->reaped = 1;
	if (WIFSIGNALED(st)) {
		w->status.signal = WTERMSIG(st);
		w->status.code = 128 + w->status.signal;
	} else {
		w->status.code = WEXITSTATUS(st);
	}
	w->status.terminated = w->sent_term;
	/* The pidfd stays open until destroy: a loop may be watching it. */
	return 0;
}

static int join_process(struct ferry_worker *w, int64_t timeout_ns)
{
	if (w->reaped)
		return 0;
	if (w->via_server)
		return reap(w, timeout_ns);
	int64_t deadline = ferry__deadline(timeout_ns);
	for (;;) {
		int rc = reap(w, 0);
		if (rc != -EAGAIN)
			return rc;
		int64_t left = ferry__remaining(deadline);
		if (left == 0)
			return timeout_ns == 0 ? -EAGAIN : -ETIMEDOUT;
		int ms = left < 0 ? -1 : (int)((left + 999999) / 1000000);
		if (w->pidfd >= 0) {
			struct pollfd pfd = { .fd = w->pidfd, .events = POLLIN };
			poll(&pfd, 1, ms);
		} else {
			usleep(ms < 0 || ms > 1 ? 1000 : ms * 1000);
		}
	}
}

static int join_thread(struct ferry_worker *w, int64_t timeout_ns)
{
	if (!w->joined) {
		int64_t deadline = ferry__deadline(timeout_ns);
		/* acquire: pairs with the release store in thread_cleanup. */
		while (!atomic_load_explicit((_Atomic uint32_t *)&w->done, memory_order_acquire)) {
			int64_t left = ferry__remaining(deadline);
			if (left == 0)
				return timeout_ns == 0 ? -EAGAIN : -ETIMEDOUT;
			ferry_wait_private(&w->done, 0, left);
		}
		pthread_join(w->thread, NULL);
		w->joined = 1;
		w->status.code = w->exit_code;
		w->status.signal = 0;
		w->status.terminated = w->cancelled;
	}
	return 0;
}

static int join_any(struct ferry_worker *w, int64_t timeout_ns)
{
	return w->backend == FERRY_THREAD ? join_thread(w, timeout_ns) : join_process(w, timeout_ns);
}

FERRY_API int ferry_worker_join(ferry_worker *w, struct ferry_worker_status *st, int64_t timeout_ns)
{
	if (!w)
		return ferry__fail(-EINVAL, "ferry_worker_join: worker is NULL");
	int rc = join_any(w, timeout_ns);
	if (rc == -ETIMEDOUT || rc == -EAGAIN)
		return ferry__fail(rc, "ferry_worker_join: \"%s\" is still running", w->ctx.name);
	if (rc == 0 && st)
		*st = w->status;
	return rc;
}

FERRY_API int ferry_worker_terminate(ferry_worker *w, int64_t grace_ns)
{
	if (!w)
		return ferry__fail(-EINVAL, "ferry_worker_terminate: worker is NULL");
	if (grace_ns < 0)
		return ferry__fail(-EINVAL, "ferry_worker_terminate: negative grace period");
	if (w->backend == FERRY_PROCESS) {
		if (w->reaped)
			return 0;
		if (reap(w, 0) == 0)
			return 0;
		w->sent_term = 1;
		proc_signal(w, SIGTERM);
		if (join_process(w, grace_ns) == 0)
			return 0;
		proc_signal(w, SIGKILL);
		return join_process(w, FERRY_FOREVER);
	}
	if (w->joined)
		return 0;
	/* release: pairs with the acquire load in ferry__cancel_point. */
	atomic_store_explicit(&w->stop, 1, memory_order_release);
	/* Wake a worker asleep in any ferry wait (shm/atomic.c sleeps on the
	 * flag too), and one asleep in recv or a blocked post on its port. */
	ferry_notify_private((uint32_t *)(void *)&w->stop, FERRY_NOTIFY_ALL);
	ferry_notify((uint32_t *)(void *)&w->stop, FERRY_NOTIFY_ALL); /* its loop's wait */
	ferry_ec_notify(&w->port->txd->data_ec);
	ferry_ec_notify(&w->port->rxd->space_ec);
	int rc = join_thread(w, grace_ns);
	if (rc)
		return ferry__fail(-ETIMEDOUT,
				   "ferry_worker_terminate: thread worker \"%s\" did not reach a ferry call within the grace period",
				   w->ctx.name);
	return 0;
}

/* ---- events ---- */

static void event_text(struct ferry_worker_event *ev, int err, const char *text)
{
	ev->err = err;
	snprintf(ev->text, sizeof ev->text, "%s", text);
}

FERRY_API int ferry_worker_next(ferry_worker *w, struct ferry_worker_event *ev, int64_t timeout_ns)
{
	if (!w || !ev)
		return ferry__fail(-EINVAL, "ferry_worker_next: %s is NULL", !w ? "worker" : "ev");
	memset(ev, 0, sizeof *ev);
	int64_t deadline = timeout_ns > 0 ? ferry__now_ns() + timeout_ns : 0;
	for (;;) {
		if (w->exit_reported) {
			ev->type = FERRY_WORKER_EXIT;
			ev->status = w->status;
			return 0;
		}
		if (w->online && !w->online_reported) {
			w->online_reported = 1;
			ev->type = FERRY_WORKER_ONLINE;
			return 0;
		}
		if (w->nerrors) {
			ev->type = FERRY_WORKER_ERROR;
			event_text(ev, w->errors[0].err, w->errors[0].text);
			memmove(&w->errors[0], &w->errors[1], --w->nerrors * sizeof w->errors[0]);
			return 0;
		}
		int64_t left = timeout_ns;
		if (timeout_ns > 0) {
			left = deadline - ferry__now_ns();
			if (left < 1)
				left = 1;
		}
		ferry_msg *m;
		int rc = ferry__port_recv_any(w->port, &m, left);
		if (rc == 0 && m->ctrl) {
			on_ctrl(w, m);
			ferry_msg_free(m);
			continue;
		}
		if (rc == 0) {
			ev->type = FERRY_WORKER_MESSAGE;
			ev->msg = m;
			return 0;
		}
		if (rc == -EBADMSG || rc == -EMSGSIZE || rc == FERRY_EVERSION) {
			ev->type = FERRY_WORKER_MESSAGEERROR;
			event_text(ev, rc, ferry_errmsg());
			return 0;
		}
		if (rc != -EPIPE)
			return rc;
		/* Everything the worker posted was received: now its exit. */
		rc = join_any(w, left);
		if (rc == -ETIMEDOUT || rc == -EAGAIN)
			return ferry__fail(rc, "ferry_worker_next: \"%s\" closed its port and is still running",
					   w->ctx.name);
		if (rc)
			return rc;
		w->exit_reported = 1;
	}
}

/* ---- events in a loop ----
 *
 * Three sources at most: an eventcount watch on the port's receive direction
 * (messages and control records), the exit (a thread's exit_ec, or a
 * process's pidfd), and a short timer while a fork server worker's status is
 * still on its way (the pidfd shows the exit before the server reports it).
 * pump() is the ferry_worker_next of the loop: it delivers what is there and
 * returns when it would have to wait; the exit is delivered once the port
 * is drained (its -EPIPE; or, for a process that is gone, its last record).
 */

enum {
	WW_PORT_END = 1, /* the port gave -EPIPE (or can give nothing more) */
	WW_EXITED = 2,   /* the worker has ended */
};

#define WW_RETRY_MIN_NS (20 * 1000)
#define WW_RETRY_MAX_NS (5 * 1000 * 1000)

static void ww_cancel(ferry_loop *loop, uint64_t *id)
{
	if (*id)
		ferry_loop_cancel(loop, *id);
	*id = 0;
}

static void ww_deliver(ferry_loop *loop, struct ferry_loop_worker_watch *ww,
		       struct ferry_worker_event *ev)
{
	ww->cb(loop, ww->worker, ev, ww->arg);
}

static void ww_retry_cb(ferry_loop *loop, uint64_t id, int res, void *arg);

/* Its status, once WW_EXITED: 0, -EAGAIN (a server worker's status is not
 * in yet), or FERRY_EWORKER. */
static int ww_status(struct ferry_worker *w)
{
	if (w->backend == FERRY_THREAD) {
		if (!w->joined) {
			/* done was read with acquire: exit_code and cancelled are
			 * final. pthread_join is left to join or destroy. */
			w->status.code = w->exit_code;
			w->status.signal = 0;
			w->status.terminated = w->cancelled;
		}
		return 0;
	}
	return w->reaped ? 0 : reap(w, 0);
}

static void pump(ferry_loop *loop, struct ferry_loop_worker_watch *ww)
{
	struct ferry_worker *w = ww->worker;
	struct ferry_worker_event ev;
	for (int i = 0; i < FERRY_LOOP_BATCH && ww->active; i++) {
		memset(&ev, 0, sizeof ev);
		if (w->online && !w->online_reported) {
			w->online_reported = 1;
			ev.type = FERRY_WORKER_ONLINE;
			ww_deliver(loop, ww, &ev);
			continue;
		}
		if (w->nerrors) {
			ev.type = FERRY_WORKER_ERROR;
			event_text(&ev, w->errors[0].err, w->errors[0].text);
			memmove(&w->errors[0], &w->errors[1], --w->nerrors * sizeof w->errors[0]);
			ww_deliver(loop, ww, &ev);
			continue;
		}
		if (!(ww->state & WW_PORT_END)) {
			ferry_msg *m;
			int rc = ferry__port_recv_any(w->port, &m, 0);
			if (rc == 0 && m->ctrl) {
				on_ctrl(w, m);
				ferry_msg_free(m);
				continue;
			}
			if (rc == 0) {
				ev.type = FERRY_WORKER_MESSAGE;
				ev.msg = m;
				ww_deliver(loop, ww, &ev);
				continue;
			}
			if (rc == -EBADMSG || rc == -EMSGSIZE || rc == FERRY_EVERSION) {
				ev.type = FERRY_WORKER_MESSAGEERROR;
				event_text(&ev, rc, ferry_errmsg());
				ww_deliver(loop, ww, &ev);
				continue;
			}
			/* A process that is gone posts nothing more: what was in
			 * the ring was all it fully posted. A thread closes its
			 * port before its exit shows: -EPIPE comes. */
			if (rc == -EAGAIN && !((ww->state & WW_EXITED) && w->backend == FERRY_PROCESS))
				return;
			ww->state |= WW_PORT_END;
			ww_cancel(loop, &ww->msg_id);
			if (rc != -EAGAIN && rc != -EPIPE) {
				/* A corrupt ring (-EPROTO): the channel is closed; say
				 * so, then wait for the exit. */
				ev.type = FERRY_WORKER_MESSAGEERROR;
				event_text(&ev, rc, ferry_errmsg());
				ww_deliver(loop, ww, &ev);
				continue;
			}
		}
		if (!(ww->state & WW_EXITED) || ww->retry_id)
			return;
		int rc = ww_status(w);
		if (rc == -EAGAIN) {
			/* The server reports within microseconds of the exit. */
			ww->retry_ns = ww->retry_ns ? ww->retry_ns * 2 : WW_RETRY_MIN_NS;
			if (ww->retry_ns > WW_RETRY_MAX_NS)
				ww->retry_ns = WW_RETRY_MAX_NS;
			if (ferry_loop_timer(loop, ww->retry_ns, 0, ww_retry_cb, ww, &ww->retry_id) == 0)
				return;
			rc = ferry__fail(-ENOMEM, "ferry_loop_worker: \"%s\": out of memory waiting for "
						  "its exit status", w->ctx.name);
		}
		ev.type = FERRY_WORKER_EXIT;
		if (rc)
			event_text(&ev, rc, ferry_errmsg());
		else
			w->exit_reported = 1;
		ev.status = w->status;
		ferry_loop_worker_stop(loop, ww);
		ww_deliver(loop, ww, &ev);
		return;
	}
}

static int ww_msg_ready(void *arg)
{
	struct ferry_loop_worker_watch *ww = arg;
	struct ferry_worker *w = ww->worker;
	const void *rec;
	size_t len;
	if ((w->online && !w->online_reported) || w->nerrors)
		return 1;
	/* Any answer but "empty" means go and receive (a record, the close, a
	 * corrupt ring). */
	return ferry_ring_spsc_view_peek(&w->port->rxv, &rec, &len) != -EAGAIN ||
	       ferry__port_closed(w->port);
}

static void ww_fail(ferry_loop *loop, struct ferry_loop_worker_watch *ww, int res)
{
	/* A source the kernel refused: no more events can be told. */
	struct ferry_worker_event ev;
	memset(&ev, 0, sizeof ev);
	ev.type = FERRY_WORKER_ERROR;
	event_text(&ev, res, ferry_errmsg());
	ferry_loop_worker_stop(loop, ww);
	ww_deliver(loop, ww, &ev);
}

static void ww_msg_cb(ferry_loop *loop, uint64_t id, int res, void *arg)
{
	struct ferry_loop_worker_watch *ww = arg;
	if (res < 0) {
		ww->msg_id = 0;
		ww_fail(loop, ww, res);
		return;
	}
	pump(loop, ww);
}

static int ww_thread_done(void *arg)
{
	struct ferry_loop_worker_watch *ww = arg;
	/* acquire: pairs with the release store in thread_cleanup. */
	return atomic_load_explicit((_Atomic uint32_t *)&ww->worker->done, memory_order_acquire) != 0;
}

static void ww_exit_cb(ferry_loop *loop, uint64_t id, int res, void *arg)
{
	struct ferry_loop_worker_watch *ww = arg;
	if (res < 0 && ww->worker->backend == FERRY_THREAD) {
		ww->exit_id = 0;
		ww_fail(loop, ww, res);
		return;
	}
	/* The thread's exit word is set, or the pidfd is readable (or failed:
	 * the process is gone either way; its status says how). Once only. */
	if (res >= 0)
		ww_cancel(loop, &ww->exit_id);
	ww->exit_id = 0;
	ww->state |= WW_EXITED;
	pump(loop, ww);
}

static void ww_retry_cb(ferry_loop *loop, uint64_t id, int res, void *arg)
{
	struct ferry_loop_worker_watch *ww = arg;
	ww->retry_id = 0;
	pump(loop, ww);
}

/* No pidfd (Linux < 5.3): the exit is polled, every millisecond. */
static void ww_poll_cb(ferry_loop *loop, uint64_t id, int res, void *arg)
{
	struct ferry_loop_worker_watch *ww = arg;
	struct ferry_worker *w = ww->worker;
	if (!w->reaped && reap(w, 0) == -EAGAIN)
		return;
	ww_cancel(loop, &ww->exit_id);
	ww->state |= WW_EXITED;
	pump(loop, ww);
}

FERRY_API int ferry_loop_worker_start(ferry_loop *loop, struct ferry_loop_worker_watch *ww,
				      struct ferry_worker *w, ferry_loop_worker_fn cb, void *arg)
{
	if (!loop || !ww || !w || !cb)
		return ferry__fail(-EINVAL, "ferry_loop_worker_start: %s is NULL",
				   !loop ? "loop" : !ww ? "watch" : !w ? "worker" : "cb");
	if (ww->active)
		return ferry__fail(-EINVAL, "ferry_loop_worker_start: the watch is already active");
	if (!w->port || w->port->detached)
		return ferry__fail(FERRY_EDETACHED,
				   "ferry_loop_worker_start: the worker's port was transferred away");
	memset(ww, 0, sizeof *ww);
	ww->worker = w;
	ww->cb = cb;
	ww->arg = arg;
	ww->active = 1;
	int rc = ferry_loop_watch_ec(loop, &w->port->rxd->data_ec, ww_msg_ready, ww_msg_cb, ww,
				     &ww->msg_id);
	if (rc == 0) {
		if (w->backend == FERRY_THREAD)
			rc = ferry_loop_watch_ec(loop, &w->exit_ec, ww_thread_done, ww_exit_cb, ww,
						 &ww->exit_id);
		else if (w->reaped) { /* a first look now: nothing else may fire */
			ww->state |= WW_EXITED;
			rc = ferry_loop_timer(loop, 0, 0, ww_retry_cb, ww, &ww->retry_id);
		} else if (w->pidfd >= 0)
			rc = ferry_loop_fd(loop, w->pidfd, FERRY_LOOP_READABLE, ww_exit_cb, ww,
					   &ww->exit_id);
		else
			rc = ferry_loop_timer(loop, 1000000, 1000000, ww_poll_cb, ww, &ww->exit_id);
	}
	if (rc) {
		ww_cancel(loop, &ww->msg_id);
		ww->active = 0;
		return rc;
	}
	return 0;
}

FERRY_API int ferry_loop_worker_stop(ferry_loop *loop, struct ferry_loop_worker_watch *ww)
{
	if (!loop || !ww)
		return ferry__fail(-EINVAL, "ferry_loop_worker_stop: %s is NULL", !loop ? "loop" : "watch");
	if (!ww->active)
		return 0;
	ww->active = 0;
	ww_cancel(loop, &ww->msg_id);
	ww_cancel(loop, &ww->exit_id);
	ww_cancel(loop, &ww->retry_id);
	return 0;
}

FERRY_API int ferry_worker_online(const ferry_worker *w)
{
	return w ? w->online : 0;
}

/* ---- handles and accessors ---- */

FERRY_API ferry_port *ferry_worker_port(ferry_worker *w)
{
	return w ? w->port : NULL;
}

FERRY_API int ferry_worker_backend(const ferry_worker *w)
{
	return w ? w->backend : -EINVAL;
}

FERRY_API pid_t ferry_worker_pid(const ferry_worker *w)
{
	return w ? w->pid : -EINVAL;
}

FERRY_API void ferry_worker_destroy(ferry_worker *w)
{
	if (!w)
		return;
	if (w->backend == FERRY_PROCESS) {
		ferry_port_destroy(w->port);
		if (!w->reaped) {
			proc_signal(w, SIGKILL);
			reap(w, FERRY_FOREVER);
		}
		if (w->via_server)
			ferry__fs_forget(w->fs_id);
		if (w->pidfd >= 0)
			close(w->pidfd);
		free(w->ctx.data);
		free(w);
		return;
	}
	/* A thread that has ended (its exit word set) is joined at once: its
	 * channel may then be reused. */
	if (!w->joined && atomic_load_explicit((_Atomic uint32_t *)&w->done, memory_order_acquire))
		join_thread(w, FERRY_FOREVER);
	if (w->joined) {
		ferry_seg *seg = seg_keep(w);
		unsigned gen = w->fork_gen;
		ferry_port_destroy(w->port);
		w->port = NULL;
		worker_unref(w); /* the last reference: destroys the worker's port */
		seg_put(seg, gen);
		return;
	}
	/* A running thread sees its port closed; it is detached and frees its
	 * half of the handle when it ends. */
	ferry_port_destroy(w->port);
	w->port = NULL;
	pthread_detach(w->thread);
	worker_unref(w);
}

FERRY_API ferry_port *ferry_worker_ctx_port(ferry_worker_ctx *ctx)
{
	return ctx ? ctx->port : NULL;
}

FERRY_API const void *ferry_worker_ctx_data(ferry_worker_ctx *ctx, size_t *len)
{
	if (len)
		*len = ctx ? ctx->data_len : 0;
	return ctx ? ctx->data : NULL;
}

FERRY_API const struct ferry_value *ferry_worker_ctx_value(ferry_worker_ctx *ctx)
{
	return ctx ? ferry_msg_value(ctx->value_msg) : NULL;
}

FERRY_API void *ferry_worker_ctx_arg(ferry_worker_ctx *ctx)
{
	return ctx ? ctx->arg : NULL;
}

FERRY_API const char *ferry_worker_ctx_name(ferry_worker_ctx *ctx)
{
	return ctx ? ctx->name : NULL;
}

FERRY_API int ferry_worker_ctx_backend(ferry_worker_ctx *ctx)
{
	return ctx ? ctx->backend : -EINVAL;
}

/* The cancellation handler is installed once, with the first use of this
 * file's code (a constructor: before any worker thread can exist). */
__attribute__((constructor)) static void install_cancel_handler(void)
{
	ferry__cancel_handler = cancel_exit;
}
