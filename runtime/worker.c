/*
 * Workers: one API, two backends.
 *
 * Thread backend: the worker shares the handle with the parent, so the handle
 * is reference counted (parent + thread); the thread's exit code is published
 * through a futex word so join can wait with a monotonic deadline (glibc's
 * pthread_timedjoin_np takes CLOCK_REALTIME).
 *
 * Process backend: fork, then each side drops the port that belongs to the
 * other (ferry__port_forget: no close, so the channel stays open). The child
 * runs the entry and leaves with _exit, never returning into the caller's
 * stack. The parent waits on a pidfd so join can time out without polling.
 */
#include "ferry/worker.h"
#include "ports/port_int.h"
#include "shm/err.h"

#include <errno.h>
#include <poll.h>
#include <pthread.h>
#include <signal.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/prctl.h>
#include <sys/syscall.h>
#include <sys/wait.h>
#include <unistd.h>

struct ferry_worker_ctx {
	ferry_port *port;
	void *data;
	size_t data_len;
	void *arg;
	char name[64];
	int backend;
};

struct ferry_worker {
	struct ferry_worker_ctx ctx; /* the worker's side */
	ferry_port *port;            /* the parent's side */
	int backend;
	atomic_int refs;             /* thread backend: parent + thread */
	/* thread backend */
	pthread_t thread;
	uint32_t done;               /* 0 running, 1 exited (futex word) */
	int exit_code;
	int joined;
	/* process backend */
	pid_t pid;
	int pidfd;
	int reaped;
	struct ferry_worker_status status;
};

/* Set in a process worker's child (the whole process is a worker) and on a
 * thread worker's thread. */
static int proc_is_worker;
static _Thread_local int thread_is_worker;

FERRY_API int ferry_is_main(void)
{
	return !(proc_is_worker || thread_is_worker);
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
	if (atomic_fetch_sub_explicit(&w->refs, 1, memory_order_acq_rel) != 1)
		return; /* acq_rel: the last owner sees every write of the other */
	ferry_port_destroy(w->ctx.port);
	free(w->ctx.data);
	free(w);
}

static int spawn_thread(struct ferry_worker *w, ferry_worker_fn entry);
static int spawn_process(struct ferry_worker *w, ferry_worker_fn entry);

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

	struct ferry_worker *w = calloc(1, sizeof *w);
	if (!w)
		return ferry__fail(-ENOMEM, "ferry_worker_spawn: out of memory");
	w->backend = o->backend;
	w->pidfd = -1;
	snprintf(w->ctx.name, sizeof w->ctx.name, "%s", o->name ? o->name : "worker");
	w->ctx.arg = o->arg;
	w->ctx.backend = o->backend;
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
	int rc = ferry_channel(&w->port, &w->ctx.port, &o->channel);
	if (rc == 0)
		rc = o->backend == FERRY_THREAD ? spawn_thread(w, o->entry) : spawn_process(w, o->entry);
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

/* ---- thread backend ---- */

struct thread_start {
	struct ferry_worker *w;
	ferry_worker_fn entry;
};

static void *thread_trampoline(void *arg)
{
	struct thread_start st = *(struct thread_start *)arg;
	free(arg);
	struct ferry_worker *w = st.w;
	thread_is_worker = 1;
	char tname[16];
	short_name(tname, w->ctx.name);
	pthread_setname_np(pthread_self(), tname);

	int code = st.entry(&w->ctx);
	/* Close before publishing done: a parent that joined and then receives
	 * gets every message, then -EPIPE. */
	ferry_port_close(w->ctx.port);
	w->exit_code = code;
	/* release: pairs with the acquire load in ferry_worker_join. */
	atomic_store_explicit((_Atomic uint32_t *)&w->done, 1, memory_order_release);
	ferry_notify_private(&w->done, FERRY_NOTIFY_ALL);
	worker_unref(w);
	return NULL;
}

static int spawn_thread(struct ferry_worker *w, ferry_worker_fn entry)
{
	struct thread_start *st = malloc(sizeof *st);
	if (!st)
		return ferry__fail(-ENOMEM, "ferry_worker_spawn: out of memory");
	st->w = w;
	st->entry = entry;
	atomic_init(&w->refs, 2);
	int err = pthread_create(&w->thread, NULL, thread_trampoline, st);
	if (err) {
		free(st);
		return ferry__errno(-err, "ferry_worker_spawn: pthread_create for \"%s\"", w->ctx.name);
	}
	w->pid = getpid();
	return 0;
}

/* ---- process backend ---- */

static int spawn_process(struct ferry_worker *w, ferry_worker_fn entry)
{
	/* Unflushed stdio would be written twice, once by each process. */
	fflush(NULL);
	pid_t pid = fork();
	if (pid < 0)
		return ferry__errno(-errno, "ferry_worker_spawn: fork for \"%s\"", w->ctx.name);
	if (pid == 0) {
		proc_is_worker = 1;
		ferry__port_forget(w->port);
		w->port = NULL;
		ferry__port_keep_only(w->ctx.port);
		char pname[16];
		short_name(pname, w->ctx.name);
		prctl(PR_SET_NAME, pname);
		int code = entry(&w->ctx);
		ferry_port_close(w->ctx.port);
		fflush(NULL);
		_exit(code & 0xff);
	}
	ferry__port_forget(w->ctx.port);
	w->ctx.port = NULL;
	w->pid = pid;
	w->pidfd = (int)syscall(SYS_pidfd_open, pid, 0);
	/* Without pidfds (old kernels) join polls waitpid instead. */
	atomic_init(&w->refs, 1);
	return 0;
}

static int reap(struct ferry_worker *w, int flags)
{
	int st;
	pid_t r = waitpid(w->pid, &st, flags);
	if (r == 0)
		return -EAGAIN;
	if (r < 0)
		return ferry__errno(-errno, "ferry_worker_join: waitpid %d", (int)w->pid);
	w->reaped = 1;
	if (WIFSIGNALED(st)) {
		w->status.signal = WTERMSIG(st);
		w->status.code = 128 + w->status.signal;
	} else {
		w->status.code = WEXITSTATUS(st);
	}
	if (w->pidfd >= 0) {
		close(w->pidfd);
		w->pidfd = -1;
	}
	return 0;
}

static int join_process(struct ferry_worker *w, int64_t timeout_ns)
{
	if (w->reaped)
		return 0;
	int64_t deadline = ferry__deadline(timeout_ns);
	for (;;) {
		int rc = reap(w, WNOHANG);
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
		/* acquire: pairs with the release store in thread_trampoline. */
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
	}
	return 0;
}

FERRY_API int ferry_worker_join(ferry_worker *w, struct ferry_worker_status *st, int64_t timeout_ns)
{
	if (!w)
		return ferry__fail(-EINVAL, "ferry_worker_join: worker is NULL");
	int rc = w->backend == FERRY_THREAD ? join_thread(w, timeout_ns) : join_process(w, timeout_ns);
	if (rc == -ETIMEDOUT || rc == -EAGAIN)
		return ferry__fail(rc, "ferry_worker_join: \"%s\" is still running", w->ctx.name);
	if (rc == 0 && st)
		*st = w->status;
	return rc;
}

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
	ferry_port_destroy(w->port);
	w->port = NULL;
	if (w->backend == FERRY_PROCESS) {
		if (!w->reaped) {
			kill(w->pid, SIGKILL);
			reap(w, 0);
		}
		if (w->pidfd >= 0)
			close(w->pidfd);
		free(w->ctx.data);
		free(w);
		return;
	}
	if (!w->joined)
		pthread_detach(w->thread); /* it sees its port closed */
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
