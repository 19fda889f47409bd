/*
 * The fork server: process workers forked by a process that was forked while
 * the program was still single-threaded (include/ferry/runtime.h says what a
 * worker then gets).
 *
 * ferry_init forks the server. The server closes every fd but 0, 1, 2 and
 * its end of a SOCK_SEQPACKET request socket, blocks SIGCHLD into a
 * signalfd, ignores SIGINT, SIGQUIT and SIGPIPE (a Ctrl-C reaches the whole
 * foreground group; the server leaves with its caller, not before), and
 * loops on poll over the two. It leaves when the socket reaches end of file
 * (the caller exited or called ferry_fini) and, through PR_SET_PDEATHSIG,
 * when the thread that forked it ends.
 *
 * Messages are ferry_fds_send frames of fixed size, one per seqpacket:
 *   caller -> server  SPAWN {id, entry address, name, side, has_value,
 *                     max_message, data_len, limits} + fds: the worker port's
 *                     channel segment and control socket, and a sealed data
 *                     segment when data_len > 0
 *   server -> caller  READY {pid}  once, when it is set up
 *                     SPAWNED {id, pid or 0, 0 or -errno} + the worker's pidfd
 *                     EXITED {id, pid, raw wait status}  when it reaped one
 * The entry address is valid in the server: it runs the same image. The
 * server opens the pidfd before it can have reaped the child, so the pidfd
 * is the right process for sure; the caller polls it to see the exit and
 * signals through it (no pid reuse race), and waits for EXITED for the
 * status. The server forks with plain fork(): its child is an ordinary
 * process whose glibc thread block has its own tid (raise and abort work).
 *
 * Caller side: one mutex serializes each request with its reply and every
 * read of the socket. A reader keeps EXITED records it meets in a table of
 * the live server workers (id -> status) for the joins to find; a SPAWNED
 * nobody waits for any more (its request timed out) has its worker killed.
 * Ids carry the server's generation, so a handle that outlived its server
 * (ferry_fini, then ferry_init again) is never confused with a new one.
 * The mutex is held across fork (pthread_atfork); a child of the caller
 * forgets the server: it closes its copy of the socket and has none.
 *
 * Lock order: nothing else is taken under the mutex (the port registry's
 * lock is also held across fork: two locks taken in opposite orders by a
 * forking thread and another would deadlock).
 */
#include "ferry/runtime.h"
#include "ferry/seg.h"
#include "ports/port_int.h"
#include "runtime/forkserver_int.h"
#include "shm/err.h"

#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <limits.h>
#include <poll.h>
#include <pthread.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/prctl.h>
#include <sys/signalfd.h>
#include <sys/socket.h>
#include <sys/syscall.h>
#include <sys/wait.h>
#include <unistd.h>

#define FS_MAGIC 0x66727973u /* "fsrf": any other value is a protocol error */
#define FS_READY_NS (10LL * 1000000000)
/* A fork from the small server takes well under a millisecond; a reply
 * later than this means the server is stuck (stopped, say). */
#define FS_REPLY_NS (30LL * 1000000000)

enum fs_type {
	FS_SPAWN = 1,
	FS_READY = 2,
	FS_SPAWNED = 3,
	FS_EXITED = 4,
};

struct fs_req {
	uint32_t magic, type;
	uint64_t id;
	uint64_t entry;
	char name[64];
	uint32_t side, has_value;
	uint64_t max_message, data_len, stack_size, max_as, max_nofile;
};

struct fs_msg {
	uint32_t magic, type;
	uint64_t id;
	int32_t pid;
	int32_t value; /* SPAWNED: 0 or -errno; EXITED: the raw wait status */
};

#if defined(__SANITIZE_THREAD__)
#define FERRY_UNDER_TSAN 1
#elif defined(__has_feature)
#if __has_feature(thread_sanitizer)
#define FERRY_UNDER_TSAN 1
#endif
#endif
#ifndef FERRY_UNDER_TSAN
#define FERRY_UNDER_TSAN 0
#endif

static int pidfd_open_(pid_t pid)
{
	return (int)syscall(SYS_pidfd_open, pid, 0);
}

static int pidfd_signal(int pidfd, int sig)
{
	return (int)syscall(SYS_pidfd_send_signal, pidfd, sig, NULL, 0);
}

#if FERRY_UNDER_TSAN
static long sanitizer_threads(void)
{
	DIR *d = opendir("/proc/self/task");
	if (!d)
		return 0;
	long n = 0;
	struct dirent *e;
	while ((e = readdir(d))) {
		if (e->d_name[0] == '.')
			continue;
		char path[64], line[256];
		snprintf(path, sizeof path, "/proc/self/task/%.20s/status", e->d_name);
		FILE *f = fopen(path, "re");
		if (!f)
			continue;
		while (fgets(line, sizeof line, f)) {
			if (strncmp(line, "SigBlk:", 7))
				continue;
			unsigned long long m = strtoull(line + 7, NULL, 16);
			/* All but SIGKILL, SIGSTOP and glibc's two internal signals. */
			m |= 1ull << (SIGKILL - 1) | 1ull << (SIGSTOP - 1) | 1ull << 31 | 1ull << 32;
			n += m == ~0ull;
			break;
		}
		fclose(f);
	}
	closedir(d);
	return n;
}
#endif

int ferry__thread_count(void)
{
	int fd = open("/proc/self/stat", O_RDONLY | O_CLOEXEC);
	if (fd < 0)
		return -errno;
	char buf[2048];
	ssize_t n = read(fd, buf, sizeof buf - 1);
	int e = errno;
	close(fd);
	if (n <= 0)
		return n < 0 ? -e : -EIO;
	buf[n] = 0;
	/* "pid (comm) state ppid ...": the comm may hold anything, so fields
	 * are counted from its closing parenthesis; num_threads is field 20. */
	const char *p = strrchr(buf, ')');
	if (!p)
		return -EIO;
	int field = 2;
	for (p++; *p && field < 20; p++)
		if (*p == ' ')
			field++;
	long v = strtol(p, NULL, 10);
	if (v <= 0 || v >= INT_MAX)
		return -EIO;
#if FERRY_UNDER_TSAN
	/* ThreadSanitizer's runtime starts background threads of its own (in
	 * every forked child, and with the first pthread_create) and takes its
	 * own locks around fork. They are not counted; they are the threads
	 * started with every blockable signal blocked. */
	if (v > 1)
		v -= sanitizer_threads();
	if (v < 1)
		v = 1;
#endif
	return (int)v;
}

/* ======================= the server ======================= */

/* What the caller had at ferry_init, given back to every worker. */
static const int srv_sigs[] = { SIGINT, SIGQUIT, SIGPIPE, SIGCHLD };
#define NSIGS (sizeof srv_sigs / sizeof srv_sigs[0])
static struct sigaction srv_orig_act[NSIGS];
static sigset_t srv_orig_mask;

struct kid {
	pid_t pid;
	uint64_t id;
};

static void close_all_but(int keep)
{
	/* 0, 1, 2 stay; so does @keep. */
	unsigned lo = 3;
	if (keep >= 3) {
		if ((unsigned)keep > lo && syscall(SYS_close_range, lo, (unsigned)keep - 1, 0) < 0)
			goto slow;
		lo = (unsigned)keep + 1;
	}
	if (syscall(SYS_close_range, lo, ~0u, 0) == 0)
		return;
slow:;
	long max = sysconf(_SC_OPEN_MAX);
	if (max < 0 || max > 1 << 20)
		max = 1 << 20;
	for (int fd = 3; fd < max; fd++)
		if (fd != keep)
			close(fd);
}

static int srv_send(int sock, uint32_t type, uint64_t id, pid_t pid, int value, int fd)
{
	struct fs_msg m = { .magic = FS_MAGIC, .type = type, .id = id, .pid = pid, .value = value };
	return ferry_fds_send(sock, &m, sizeof m, &fd, fd >= 0 ? 1 : 0, FERRY_FOREVER);
}

static _Noreturn void srv_child(int sock, int sfd, const struct fs_req *q, const int *fds,
				unsigned nfds)
{
	close(sock);
	close(sfd);
	for (size_t i = 0; i < NSIGS; i++)
		sigaction(srv_sigs[i], &srv_orig_act[i], NULL);
	sigprocmask(SIG_SETMASK, &srv_orig_mask, NULL);
	struct ferry__fs_worker r = {
		.entry = (ferry_worker_fn)(uintptr_t)q->entry,
		.side = q->side,
		.has_value = q->has_value != 0,
		.max_message = q->max_message,
		.data_len = q->data_len,
		.stack_size = q->stack_size,
		.max_as = q->max_as,
		.max_nofile = q->max_nofile,
		.seg_fd = fds[0],
		.sock_fd = fds[1],
		.data_fd = nfds > 2 ? fds[2] : -1,
	};
	memcpy(r.name, q->name, sizeof r.name);
	r.name[sizeof r.name - 1] = 0;
	ferry__worker_server_child(&r);
}

/* One request: fork the worker, answer SPAWNED. */
static void srv_spawn(int sock, int sfd, const struct fs_req *q, int *fds, unsigned nfds,
		      struct kid **kids, size_t *nk, size_t *capk)
{
	int err = 0;
	if (q->magic != FS_MAGIC || q->type != FS_SPAWN || !q->entry ||
	    nfds != (q->data_len ? 3u : 2u) || q->side > 1)
		err = -EBADMSG;
	if (!err && *nk == *capk) {
		size_t cap = *capk ? *capk * 2 : 64;
		struct kid *k = realloc(*kids, cap * sizeof *k);
		if (k) {
			*kids = k;
			*capk = cap;
		} else {
			err = -ENOMEM;
		}
	}
	pid_t pid = -1;
	if (!err) {
		pid = fork();
		if (pid == 0)
			srv_child(sock, sfd, q, fds, nfds);
		if (pid < 0)
			err = -errno;
	}
	for (unsigned i = 0; i < nfds; i++)
		close(fds[i]);
	int pidfd = -1;
	if (!err) {
		/* Not reaped yet (only this loop reaps): the pidfd is that child. */
		pidfd = pidfd_open_(pid);
		if (pidfd < 0) {
			err = -errno;
			kill(pid, SIGKILL); /* reaped later, reported to nobody */
		} else {
			(*kids)[(*nk)++] = (struct kid){ pid, q->id };
		}
	}
	int rc = srv_send(sock, FS_SPAWNED, q->id, err ? 0 : pid, err, pidfd);
	if (pidfd >= 0)
		close(pidfd);
	if (rc == -EPIPE)
		_exit(0);
}

static void srv_reap(int sock, struct kid *kids, size_t *nk)
{
	for (;;) {
		int st;
		pid_t pid = waitpid(-1, &st, WNOHANG);
		if (pid <= 0)
			return;
		for (size_t i = 0; i < *nk; i++) {
			if (kids[i].pid != pid)
				continue;
			uint64_t id = kids[i].id;
			kids[i] = kids[--*nk];
			if (srv_send(sock, FS_EXITED, id, pid, st, -1) == -EPIPE)
				_exit(0);
			break;
		}
	}
}

static _Noreturn void server_main(int sock, pid_t parent)
{
	/* The caller may be gone already (it died between fork and here). */
	prctl(PR_SET_PDEATHSIG, SIGKILL);
	if (getppid() != parent)
		_exit(0);
	prctl(PR_SET_NAME, "ferry-forksrv");
	/* Ports the program had: their control sockets are closed below with
	 * every other fd; forget the numbers before they are reused. */
	ferry__port_keep_only(NULL);
	close_all_but(sock);

	sigset_t chld;
	sigemptyset(&chld);
	sigaddset(&chld, SIGCHLD);
	sigprocmask(SIG_BLOCK, &chld, &srv_orig_mask);
	/* SIGCHLD must not be SIG_IGN (children would vanish without a
	 * status); the others must not end the server. */
	for (size_t i = 0; i < NSIGS; i++) {
		struct sigaction sa;
		memset(&sa, 0, sizeof sa);
		sa.sa_handler = srv_sigs[i] == SIGCHLD ? SIG_DFL : SIG_IGN;
		sigemptyset(&sa.sa_mask);
		sigaction(srv_sigs[i], &sa, &srv_orig_act[i]);
	}
	int sfd = signalfd(-1, &chld, SFD_CLOEXEC | SFD_NONBLOCK);
	if (sfd < 0)
		_exit(1);
	if (srv_send(sock, FS_READY, 0, getpid(), 0, -1))
		_exit(0);

	struct kid *kids = NULL;
	size_t nk = 0, capk = 0;
	for (;;) {
		struct pollfd p[2] = { { .fd = sock, .events = POLLIN }, { .fd = sfd, .events = POLLIN } };
		if (poll(p, 2, -1) < 0) {
			if (errno == EINTR)
				continue;
			_exit(1);
		}
		if (p[1].revents) {
			struct signalfd_siginfo si;
			while (read(sfd, &si, sizeof si) == (ssize_t)sizeof si)
				;
			srv_reap(sock, kids, &nk);
		}
		if (p[0].revents) {
			struct fs_req q;
			int fds[3];
			unsigned nfds = 0;
			int rc = ferry_fds_recv(sock, &q, sizeof q, fds, 3, &nfds, 0);
			if (rc == -EPIPE)
				_exit(0); /* the caller is gone or called ferry_fini */
			if (rc == 0)
				srv_spawn(sock, sfd, &q, fds, nfds, &kids, &nk, &capk);
			else if (rc != -EAGAIN && rc != -EBADMSG)
				_exit(1);
		}
	}
}

/* ======================= the caller side ======================= */

struct waiter {
	uint64_t id;
	int exited;
	int status;
};

static pthread_mutex_t fs_lock = PTHREAD_MUTEX_INITIALIZER;
static pthread_once_t fs_once = PTHREAD_ONCE_INIT;

/* All under fs_lock. */
static struct {
	int sock;      /* our end of the request socket; -1: no server */
	int pidfd;     /* the server's */
	pid_t pid;
	uint32_t gen;  /* the server's generation: the high half of its ids */
	uint32_t next; /* the low half */
	int dead;      /* it died: spawns fail with why */
	int reaped;
	char why[192];
	struct waiter *w; /* live server workers, exited or not */
	size_t n, cap;
} fs = { .sock = -1, .pidfd = -1 };

static void fs_prepare(void)
{
	pthread_mutex_lock(&fs_lock);
}

static void fs_parent(void)
{
	pthread_mutex_unlock(&fs_lock);
}

/* A child of the caller has no server: the socket is the parent's. */
static void fs_child(void)
{
	if (fs.sock >= 0)
		close(fs.sock);
	if (fs.pidfd >= 0)
		close(fs.pidfd);
	free(fs.w);
	uint32_t gen = fs.gen;
	memset(&fs, 0, sizeof fs);
	fs.sock = fs.pidfd = -1;
	fs.gen = gen;
	pthread_mutex_unlock(&fs_lock);
}

static void fs_register(void)
{
	pthread_atfork(fs_prepare, fs_parent, fs_child);
}

static void describe_status(char *out, size_t n, int st)
{
	if (WIFSIGNALED(st))
		snprintf(out, n, "was killed by signal %d (%s)", WTERMSIG(st), strsignal(WTERMSIG(st)));
	else if (WIFEXITED(st))
		snprintf(out, n, "exited with code %d", WEXITSTATUS(st));
	else
		snprintf(out, n, "ended (wait status %#x)", (unsigned)st);
}

/* The server is gone (end of file) or broken (@kill_it). Locked. */
static void mark_dead(int kill_it)
{
	if (fs.dead)
		return;
	fs.dead = 1;
	if (kill_it)
		pidfd_signal(fs.pidfd, SIGKILL);
	/* End of file comes as its fds close, just before it turns zombie. */
	struct pollfd p = { .fd = fs.pidfd, .events = POLLIN };
	poll(&p, 1, 2000);
	char how[96] = "is gone";
	int st;
	if (waitpid(fs.pid, &st, WNOHANG) == fs.pid) {
		fs.reaped = 1;
		describe_status(how, sizeof how, st);
	}
	snprintf(fs.why, sizeof fs.why, "the fork server (pid %d) %s%s", (int)fs.pid, how,
		 kill_it ? " after a protocol error" : "");
}

static struct waiter *find_waiter(uint64_t id)
{
	for (size_t i = 0; i < fs.n; i++)
		if (fs.w[i].id == id)
			return &fs.w[i];
	return NULL;
}

static void drop_waiter(uint64_t id)
{
	struct waiter *e = find_waiter(id);
	if (e)
		*e = fs.w[--fs.n];
}

/*
 * Read one server message within @timeout_ns. Locked. Returns 1 when it was
 * the SPAWNED of request @want (copied to *@reply, its pidfd to *@fd), 0
 * for any other message (taken care of), -EAGAIN / -ETIMEDOUT for none, and
 * -ECHILD once the server is dead.
 */
static int read_msg(int64_t timeout_ns, uint64_t want, struct fs_msg *reply, int *fd)
{
	if (fs.dead)
		return -ECHILD;
	struct fs_msg m;
	int fds[1];
	unsigned nfds = 0;
	int rc = ferry_fds_recv(fs.sock, &m, sizeof m, fds, 1, &nfds, timeout_ns);
	if (rc == -EAGAIN || rc == -ETIMEDOUT)
		return rc;
	if (rc) {
		mark_dead(rc != -EPIPE);
		return -ECHILD;
	}
	int pidfd = nfds ? fds[0] : -1;
	if (m.magic != FS_MAGIC || (m.type == FS_SPAWNED && m.pid > 0 && pidfd < 0) ||
	    (m.type != FS_SPAWNED && pidfd >= 0)) {
		if (pidfd >= 0)
			close(pidfd);
		mark_dead(1);
		return -ECHILD;
	}
	if (m.type == FS_SPAWNED) {
		if (want && m.id == want) {
			*reply = m;
			*fd = pidfd;
			return 1;
		}
		/* Its request gave up waiting: nobody owns the worker. */
		if (pidfd >= 0) {
			pidfd_signal(pidfd, SIGKILL);
			close(pidfd);
		}
	} else if (m.type == FS_EXITED) {
		struct waiter *e = find_waiter(m.id);
		if (e) {
			e->exited = 1;
			e->status = m.value;
		}
	}
	return 0;
}

int ferry__fs_present(void)
{
	pthread_mutex_lock(&fs_lock);
	int r = fs.sock >= 0;
	pthread_mutex_unlock(&fs_lock);
	return r;
}

FERRY_API pid_t ferry_fork_server_pid(void)
{
	pthread_mutex_lock(&fs_lock);
	pid_t r = fs.sock >= 0 ? fs.pid : 0;
	pthread_mutex_unlock(&fs_lock);
	return r;
}

int ferry__fs_spawn(struct ferry__fs_worker *r, const void *data, pid_t *pid, int *pidfd,
		    uint64_t *id)
{
	ferry_seg *dseg = NULL;
	r->data_fd = -1;
	if (r->data_len) {
		int rc = ferry_seg_create(&dseg, r->data_len, "ferry-worker-data");
		if (rc)
			return rc;
		memcpy(ferry_seg_data(dseg), data, r->data_len);
		r->data_fd = ferry_seg_fd(dseg);
	}
	struct fs_req q = {
		.magic = FS_MAGIC,
		.type = FS_SPAWN,
		.entry = (uint64_t)(uintptr_t)r->entry,
		.side = r->side,
		.has_value = r->has_value ? 1 : 0,
		.max_message = r->max_message,
		.data_len = r->data_len,
		.stack_size = r->stack_size,
		.max_as = r->max_as,
		.max_nofile = r->max_nofile,
	};
	snprintf(q.name, sizeof q.name, "%s", r->name);
	int fds[3] = { r->seg_fd, r->sock_fd, r->data_fd };

	int rc = 0;
	pthread_mutex_lock(&fs_lock);
	if (fs.sock < 0) {
		rc = ferry__fail(-ECHILD, "ferry_worker_spawn: no fork server runs in this process "
					  "(ferry_init with .fork_server = 1 starts one)");
		goto out;
	}
	if (fs.dead) {
		rc = ferry__fail(-ECHILD, "ferry_worker_spawn: %s; \"%s\" was not started (ferry_fini "
					  "then ferry_init while single-threaded starts a new one)",
				 fs.why, r->name);
		goto out;
	}
	if (fs.n == fs.cap) {
		size_t cap = fs.cap ? fs.cap * 2 : 16;
		struct waiter *w = realloc(fs.w, cap * sizeof *w);
		if (!w) {
			rc = ferry__fail(-ENOMEM, "ferry_worker_spawn: out of memory");
			goto out;
		}
		fs.w = w;
		fs.cap = cap;
	}
	q.id = (uint64_t)fs.gen << 32 | ++fs.next;
	rc = ferry_fds_send(fs.sock, &q, sizeof q, fds, r->data_len ? 3 : 2, FS_REPLY_NS);
	if (rc == -EPIPE) {
		mark_dead(0);
		rc = ferry__fail(-ECHILD, "ferry_worker_spawn: %s; \"%s\" was not started", fs.why,
				 r->name);
		goto out;
	}
	if (rc) {
		rc = ferry__fail(rc == -EAGAIN ? -ETIMEDOUT : rc,
				 "ferry_worker_spawn: sending the request for \"%s\" to the fork server: %s",
				 r->name, ferry_strerror(rc));
		goto out;
	}
	int64_t deadline = ferry__deadline(FS_REPLY_NS);
	struct fs_msg m;
	int fd = -1;
	for (;;) {
		int64_t left = ferry__remaining(deadline);
		int got = left ? read_msg(left, q.id, &m, &fd) : -ETIMEDOUT;
		if (got == 1)
			break;
		if (got == -ECHILD) {
			rc = ferry__fail(-ECHILD, "ferry_worker_spawn: %s before it started \"%s\"",
					 fs.why, r->name);
			goto out;
		}
		if (got == -ETIMEDOUT || got == -EAGAIN) {
			rc = ferry__fail(-ETIMEDOUT, "ferry_worker_spawn: the fork server (pid %d) did not "
						     "answer within %d s (stopped?)",
					 (int)fs.pid, (int)(FS_REPLY_NS / 1000000000));
			goto out;
		}
	}
	if (m.value < 0 || m.pid <= 0) {
		if (fd >= 0)
			close(fd);
		int e = m.value < 0 ? m.value : -EPROTO;
		rc = ferry__fail(e, "ferry_worker_spawn: the fork server could not start \"%s\": %s",
				 r->name, ferry_strerror(e));
		goto out;
	}
	fs.w[fs.n++] = (struct waiter){ .id = q.id };
	*pid = m.pid;
	*pidfd = fd;
	*id = q.id;
out:
	pthread_mutex_unlock(&fs_lock);
	ferry_seg_unref(dseg);
	return rc;
}

static int pidfd_exited(int pidfd, int ms)
{
	struct pollfd p = { .fd = pidfd, .events = POLLIN };
	return poll(&p, 1, ms) > 0 && p.revents;
}

int ferry__fs_wait(uint64_t id, int pidfd, int64_t timeout_ns, int *wstatus)
{
	int64_t deadline = ferry__deadline(timeout_ns);
	int exited = 0; /* the pidfd said so */
	for (;;) {
		if (!exited)
			exited = pidfd_exited(pidfd, 0);
		char why[sizeof fs.why];
		pthread_mutex_lock(&fs_lock);
		struct waiter *e = NULL;
		int live = fs.sock >= 0 && (uint32_t)(id >> 32) == fs.gen && (e = find_waiter(id));
		if (live && !e->exited && !fs.dead) {
			/* Take what the server has said so far. */
			while (read_msg(0, 0, NULL, NULL) == 0)
				;
			e = find_waiter(id);
		}
		if (e && e->exited) {
			*wstatus = e->status;
			drop_waiter(id);
			pthread_mutex_unlock(&fs_lock);
			return 0;
		}
		live = live && !fs.dead;
		int sock = fs.sock;
		if (!live)
			snprintf(why, sizeof why, "%s",
				 fs.dead && (uint32_t)(id >> 32) == fs.gen ? fs.why
				 : "the fork server that started it was stopped (ferry_fini) first");
		pthread_mutex_unlock(&fs_lock);
		if (!live && exited)
			return ferry__fail(FERRY_EWORKER, "ferry_worker_join: the worker ended, but its "
							  "exit status is lost: %s", why);
		int64_t left = ferry__remaining(deadline);
		if (left == 0)
			return timeout_ns == 0 ? -EAGAIN : -ETIMEDOUT;
		/* Its exit shows on the pidfd; its status comes on the socket. */
		struct pollfd p[2];
		int np = 0;
		if (!exited)
			p[np++] = (struct pollfd){ .fd = pidfd, .events = POLLIN };
		if (live)
			p[np++] = (struct pollfd){ .fd = sock, .events = POLLIN };
		int ms = left < 0 ? -1 : (int)((left + 999999) / 1000000);
		if (left > 0 && left > (int64_t)INT_MAX * 1000000)
			ms = INT_MAX;
		poll(p, (nfds_t)np, ms);
	}
}

void ferry__fs_forget(uint64_t id)
{
	pthread_mutex_lock(&fs_lock);
	if ((uint32_t)(id >> 32) == fs.gen)
		drop_waiter(id);
	pthread_mutex_unlock(&fs_lock);
}

/* Stop and reap the server whose state was taken out of fs. */
static void stop_server(int sock, int pidfd, pid_t pid, int reaped)
{
	close(sock);
	if (!reaped) {
		/* It leaves on end of file; one that does not is killed. */
		if (!pidfd_exited(pidfd, 2000)) {
			pidfd_signal(pidfd, SIGKILL);
			pidfd_exited(pidfd, -1);
		}
		while (waitpid(pid, NULL, 0) < 0 && errno == EINTR)
			;
	}
	close(pidfd);
}

FERRY_API void ferry_fini(void)
{
	ferry_trim();
	pthread_mutex_lock(&fs_lock);
	if (fs.sock < 0) {
		pthread_mutex_unlock(&fs_lock);
		return;
	}
	int sock = fs.sock, pidfd = fs.pidfd, reaped = fs.reaped;
	pid_t pid = fs.pid;
	free(fs.w);
	fs.w = NULL;
	fs.n = fs.cap = 0;
	fs.sock = fs.pidfd = -1;
	fs.pid = 0;
	fs.dead = fs.reaped = 0;
	pthread_mutex_unlock(&fs_lock);
	stop_server(sock, pidfd, pid, reaped);
}

FERRY_API int ferry_init(const struct ferry_init_opts *o)
{
	if (!o || !o->fork_server)
		return 0;
	pthread_once(&fs_once, fs_register);
	pthread_mutex_lock(&fs_lock);
	int present = fs.sock >= 0, dead = fs.dead;
	pthread_mutex_unlock(&fs_lock);
	if (present && !dead)
		return 0;
	int n = ferry__thread_count();
	/* A thread just joined leaves the count a moment after pthread_join
	 * returns (its task is released after it wakes the joiner). */
	for (int i = 0; i < 10 && n > 1; i++) {
		usleep(1000);
		n = ferry__thread_count();
	}
	if (n < 0)
		return ferry__fail(n == -EACCES ? n : -ENOENT,
				   "ferry_init: cannot tell whether the process is single-threaded "
				   "(/proc/self/stat: %s); the fork server is not started", ferry_strerror(n));
	if (n > 1)
		return ferry__fail(-EBUSY,
				   "ferry_init: the fork server must be started while the process is "
				   "single-threaded, and it has %d threads; call ferry_init first thing "
				   "in main, before any thread or thread worker starts", n);
	if (present) /* a dead one: replace it */
		ferry_fini();
	int self = pidfd_open_(getpid());
	if (self < 0)
		return ferry__errno(errno == ENOSYS ? -ENOSYS : -errno,
				    "ferry_init: pidfd_open (the fork server needs pidfds, Linux 5.3)");
	close(self);
	int sv[2];
	if (socketpair(AF_UNIX, SOCK_SEQPACKET | SOCK_CLOEXEC, 0, sv) < 0)
		return ferry__errno(-errno, "ferry_init: socketpair for the fork server");
	pid_t parent = getpid();
	fflush(NULL);
	pid_t pid = fork();
	if (pid < 0) {
		int rc = ferry__errno(-errno, "ferry_init: fork of the fork server");
		close(sv[0]);
		close(sv[1]);
		return rc;
	}
	if (pid == 0)
		server_main(sv[1], parent);
	close(sv[1]);
	int pidfd = pidfd_open_(pid);
	if (pidfd < 0) {
		int rc = ferry__errno(-errno, "ferry_init: pidfd_open of the fork server");
		close(sv[0]);
		kill(pid, SIGKILL);
		waitpid(pid, NULL, 0);
		return rc;
	}
	struct fs_msg m;
	int fds[1];
	unsigned nfds = 0;
	int rc = ferry_fds_recv(sv[0], &m, sizeof m, fds, 1, &nfds, FS_READY_NS);
	if (rc == 0 && (nfds || m.magic != FS_MAGIC || m.type != FS_READY || m.pid != pid)) {
		for (unsigned i = 0; i < nfds; i++)
			close(fds[i]);
		rc = -EPROTO;
	}
	if (rc) {
		int st = 0;
		pidfd_signal(pidfd, SIGKILL);
		waitpid(pid, &st, 0);
		char how[96];
		describe_status(how, sizeof how, st);
		close(sv[0]);
		close(pidfd);
		return ferry__fail(-ECHILD, "ferry_init: the fork server did not come up (%s; it %s)",
				   ferry_strerror(rc), how);
	}
	pthread_mutex_lock(&fs_lock);
	fs.sock = sv[0];
	fs.pidfd = pidfd;
	fs.pid = pid;
	fs.gen++;
	fs.next = 0;
	fs.dead = fs.reaped = 0;
	fs.why[0] = 0;
	pthread_mutex_unlock(&fs_lock);
	return 0;
}
