/*
 * Named endpoints: a unix SOCK_SEQPACKET listener that hands each client a
 * fresh channel.
 *
 * The listener never reads from a client and never waits on one: accept4 on
 * a nonblocking listening socket, SO_PEERCRED, one poll(0) to drop clients
 * that already hung up, then one ferry_fds_send (MSG_DONTWAIT; a fresh
 * connection's queue is empty, so it cannot be full) and close. Whatever a
 * client sends stays unread in its connection and is freed with it by the
 * kernel, fds included: none is ever installed here. So a hostile client
 * costs at most one channel, closed again when it goes.
 *
 * The client's port travels like a port in a message (msg.c): its segment fd
 * and its control socket go over SCM_RIGHTS, then the listener's copy is
 * detached, not closed, so the channel stays open and the client's control
 * socket end is held by the client alone (its death is then a hang-up seen
 * by the listener's port, and the other way round).
 *
 * Path mode and stale files: bind() never replaces a file, so a live name is
 * never stolen by bind itself. On EADDRINUSE we look at what is there: not a
 * socket -> -EEXIST; a socket that accepts a probe connect (or answers
 * anything but ECONNREFUSED) is live -> -EADDRINUSE; a refused probe means
 * nobody listens: the file is stale and is removed, then bind is retried.
 * Probe-and-remove is not atomic, so ferry listeners hold an exclusive
 * flock(2) on the directory across probe, unlink, bind, chmod and listen:
 * two of them replacing the same stale file cannot both succeed and leave
 * one listening on an unlinked inode. Without the lock (the directory cannot
 * be opened for reading) a stale file is not replaced.
 */
#include "ferry/endpoint.h"
#include "ferry/ring.h"
#include "ports/msg_int.h"
#include "ports/port_int.h"
#include "shm/err.h"

#include <assert.h>
#include <errno.h>
#include <fcntl.h>
#include <poll.h>
#include <stdatomic.h>
#include <stdlib.h>
#include <string.h>
#include <sys/file.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/time.h>
#include <sys/un.h>
#include <time.h>
#include <unistd.h>

#define EP_MAGIC 0x31504546u /* "FEP1" as little-endian bytes */
#define EP_VERSION 1u
#define ABSTRACT_PREFIX "ferry/"
/* The answer to a fresh connection cannot really block; bound it anyway. */
#define ANSWER_TIMEOUT_NS (100 * 1000 * 1000)
#define LOCK_WAIT_NS (1000LL * 1000 * 1000)
#define MSG_COPY 512

struct ep_hello {
	uint32_t magic;
	uint16_t version;
	uint16_t side;   /* the side of the channel the client's port is */
	int32_t status;  /* 0, or the negative errno of a refusal (no fds) */
	uint32_t pad;
	uint64_t max_message;
};
static_assert(sizeof(struct ep_hello) == 24, "the handshake header is 24 bytes on the wire");
static_assert(sizeof(((struct sockaddr_un *)0)->sun_path) == FERRY_ENDPOINT_PATH_MAX + 1,
	      "sun_path holds a path and its NUL");
static_assert(sizeof(ABSTRACT_PREFIX) - 1 + FERRY_ENDPOINT_NAME_MAX + 1 == FERRY_ENDPOINT_PATH_MAX + 1,
	      "an abstract name fills sun_path after its NUL and prefix");

struct ferry_listener {
	int fd;                 /* listening socket, nonblocking */
	atomic_int closed;      /* ferry_listener_close was called in this process */
	pid_t pid;              /* creator: only it shuts the socket down and unlinks */
	enum ferry_endpoint_ns ns;
	int dirfd;              /* path mode: the directory of the socket file, or -1 */
	char *base;             /* path mode: the file's name in dirfd */
	dev_t dev;              /* path mode: the file we bound */
	ino_t ino;
	uid_t euid;
	uid_t *allow;           /* NULL: euid only */
	size_t nallow;
	ferry_endpoint_check_fn check;
	void *check_arg;
	int has_chan;
	struct ferry_channel_opts chan;
	/* Statistics only: nothing is ordered by them, so relaxed. */
	_Atomic uint64_t accepted, refused, dropped;
	char name[FERRY_ENDPOINT_PATH_MAX + 1]; /* for messages */
};

/* ---- names and addresses ---- */

static int make_addr(struct sockaddr_un *a, socklen_t *alen, const char *name,
		     enum ferry_endpoint_ns ns, const char *fn)
{
	if (!name)
		return ferry__fail(-EINVAL, "%s: name is NULL", fn);
	if (ns != FERRY_ENDPOINT_ABSTRACT && ns != FERRY_ENDPOINT_PATH)
		return ferry__fail(-EINVAL, "%s: unknown namespace %d", fn, (int)ns);
	size_t max = ns == FERRY_ENDPOINT_PATH ? FERRY_ENDPOINT_PATH_MAX : FERRY_ENDPOINT_NAME_MAX;
	size_t len = strnlen(name, max + 1);
	if (len == 0)
		return ferry__fail(-EINVAL, "%s: the name is empty", fn);
	if (len > max)
		return ferry__fail(-EINVAL, "%s: the %s is longer than %zu bytes", fn,
				   ns == FERRY_ENDPOINT_PATH ? "path" : "abstract name", max);
	memset(a, 0, sizeof *a);
	a->sun_family = AF_UNIX;
	if (ns == FERRY_ENDPOINT_PATH) {
		memcpy(a->sun_path, name, len + 1);
		*alen = (socklen_t)(offsetof(struct sockaddr_un, sun_path) + len + 1);
	} else {
		/* An abstract address is its exact length: no NUL at the end. */
		memcpy(a->sun_path + 1, ABSTRACT_PREFIX, sizeof ABSTRACT_PREFIX - 1);
		memcpy(a->sun_path + sizeof ABSTRACT_PREFIX, name, len);
		*alen = (socklen_t)(offsetof(struct sockaddr_un, sun_path) + sizeof ABSTRACT_PREFIX + len);
	}
	return 0;
}

static int uid_in(const uid_t *list, size_t n, uid_t uid)
{
	for (size_t i = 0; i < n; i++)
		if (list[i] == uid)
			return 1;
	return 0;
}

/* The thread's message, kept across calls whose failure we absorb. */
static void msg_save(char *buf)
{
	strncpy(buf, ferry_errmsg(), MSG_COPY - 1);
	buf[MSG_COPY - 1] = '\0';
}

static void msg_restore(const char *buf)
{
	ferry__fail(0, "%s", buf);
}

/* ---- path mode ---- */

/* Try the lock for up to LOCK_WAIT_NS. 1: locked, 0: cannot lock this fd
 * (e.g. O_PATH), -EBUSY: someone holds it. */
static int lock_dir(int dirfd)
{
	int64_t until = ferry__now_ns() + LOCK_WAIT_NS;
	for (;;) {
		if (flock(dirfd, LOCK_EX | LOCK_NB) == 0)
			return 1;
		if (errno == EINTR)
			continue;
		if (errno != EWOULDBLOCK)
			return 0;
		if (ferry__now_ns() >= until)
			return -EBUSY;
		struct timespec ts = { 0, 2 * 1000 * 1000 };
		nanosleep(&ts, NULL);
	}
}

/* Does someone accept on the socket file at @a? 1: live (or cannot tell),
 * 0: stale (the kernel refused the connection: nobody listens). */
static int probe_live(const struct sockaddr_un *a, socklen_t alen)
{
	int s = socket(AF_UNIX, SOCK_SEQPACKET | SOCK_CLOEXEC | SOCK_NONBLOCK, 0);
	if (s < 0)
		return 1;
	int r = connect(s, (const struct sockaddr *)a, alen);
	int e = errno;
	/* A live ferry listener sees this probe as a client that hung up, and
	 * drops it. */
	close(s);
	return r == 0 ? 1 : e == ECONNREFUSED ? 0 : 1;
}

/* Bind @l->fd at @path (address @a) under the directory lock, replacing a
 * stale socket file, then chmod and listen. */
static int bind_path(ferry_listener *l, const char *path, const struct sockaddr_un *a,
		     socklen_t alen, unsigned mode, int backlog)
{
	const char *fn = "ferry_listen";
	const char *slash = strrchr(path, '/');
	const char *base = slash ? slash + 1 : path;
	if (!*base)
		return ferry__fail(-EINVAL, "%s: path \"%s\" names a directory, not a file", fn, path);
	char dir[FERRY_ENDPOINT_PATH_MAX + 1];
	if (!slash) {
		strcpy(dir, ".");
	} else if (slash == path) {
		strcpy(dir, "/");
	} else {
		memcpy(dir, path, (size_t)(slash - path));
		dir[slash - path] = '\0';
	}
	l->base = strdup(base);
	if (!l->base)
		return ferry__fail(-ENOMEM, "%s: out of memory", fn);
	l->dirfd = open(dir, O_RDONLY | O_DIRECTORY | O_CLOEXEC);
	if (l->dirfd < 0 && errno == EACCES)
		l->dirfd = open(dir, O_PATH | O_DIRECTORY | O_CLOEXEC);
	if (l->dirfd < 0)
		return ferry__errno(-errno, "%s: directory \"%s\"", fn, dir);
	int locked = lock_dir(l->dirfd);
	if (locked < 0)
		return ferry__fail(-EBUSY, "%s: directory \"%s\" stayed locked by another listener "
				   "for %lld ms", fn, dir, LOCK_WAIT_NS / 1000000);

	int rc = 0;
	struct stat st;
	for (int tries = 0;; tries++) {
		if (bind(l->fd, (const struct sockaddr *)a, alen) == 0)
			break;
		if (errno != EADDRINUSE) {
			rc = ferry__errno(-errno, "%s: bind \"%s\"", fn, path);
			goto out;
		}
		if (tries == 3) {
			rc = ferry__fail(-EADDRINUSE, "%s: \"%s\" keeps reappearing", fn, path);
			goto out;
		}
		if (fstatat(l->dirfd, base, &st, AT_SYMLINK_NOFOLLOW) < 0) {
			if (errno == ENOENT)
				continue; /* gone meanwhile: bind again */
			rc = ferry__errno(-errno, "%s: stat \"%s\"", fn, path);
			goto out;
		}
		if (!S_ISSOCK(st.st_mode)) {
			rc = ferry__fail(-EEXIST, "%s: \"%s\" exists and is not a socket; refusing to "
					 "replace it", fn, path);
			goto out;
		}
		if (probe_live(a, alen)) {
			rc = ferry__fail(-EADDRINUSE, "%s: \"%s\" is in use by a live listener", fn, path);
			goto out;
		}
		if (!locked) {
			rc = ferry__fail(-EADDRINUSE, "%s: \"%s\" is a stale socket file, but directory "
					 "\"%s\" cannot be locked to replace it safely; remove it", fn,
					 path, dir);
			goto out;
		}
		struct stat again;
		if (fstatat(l->dirfd, base, &again, AT_SYMLINK_NOFOLLOW) == 0 &&
		    again.st_dev == st.st_dev && again.st_ino == st.st_ino &&
		    unlinkat(l->dirfd, base, 0) < 0 && errno != ENOENT) {
			rc = ferry__errno(-errno, "%s: removing the stale socket file \"%s\"", fn, path);
			goto out;
		}
	}
	/* Nobody can connect before listen(), so the umask's mode until this
	 * chmod exposes nothing. */
	if (fchmodat(l->dirfd, base, mode, AT_SYMLINK_NOFOLLOW) < 0 ||
	    fstatat(l->dirfd, base, &st, AT_SYMLINK_NOFOLLOW) < 0) {
		rc = ferry__errno(-errno, "%s: chmod \"%s\"", fn, path);
		unlinkat(l->dirfd, base, 0);
		goto out;
	}
	l->dev = st.st_dev;
	l->ino = st.st_ino;
	if (listen(l->fd, backlog) < 0) {
		rc = ferry__errno(-errno, "%s: listen on \"%s\"", fn, path);
		unlinkat(l->dirfd, base, 0);
	}
out:
	if (locked > 0)
		flock(l->dirfd, LOCK_UN);
	return rc;
}

/* Remove the socket file if it is still the one we bound. */
static void unlink_ours(ferry_listener *l)
{
	struct stat st;
	if (l->dirfd >= 0 && l->base && fstatat(l->dirfd, l->base, &st, AT_SYMLINK_NOFOLLOW) == 0 &&
	    st.st_dev == l->dev && st.st_ino == l->ino)
		unlinkat(l->dirfd, l->base, 0);
}

/* ---- the listener ---- */

static void listener_free(ferry_listener *l)
{
	if (l->fd >= 0)
		close(l->fd);
	if (l->dirfd >= 0)
		close(l->dirfd);
	free(l->base);
	free(l->allow);
	free(l);
}

FERRY_API int ferry_listen(ferry_listener **out, const char *name, const struct ferry_listen_opts *opts)
{
	const char *fn = "ferry_listen";
	if (out)
		*out = NULL;
	if (!out)
		return ferry__fail(-EINVAL, "%s: out is NULL", fn);
	struct ferry_listen_opts o = { 0 };
	if (opts)
		o = *opts;
	struct sockaddr_un a;
	socklen_t alen;
	int rc = make_addr(&a, &alen, name, o.ns, fn);
	if (rc)
		return rc;
	if (o.mode & ~0777u)
		return ferry__fail(-EINVAL, "%s: mode %#o is not a permission mode (0..0777)", fn, o.mode);
	if (o.nallow_uids && !o.allow_uids)
		return ferry__fail(-EINVAL, "%s: allow_uids is NULL with nallow_uids %zu", fn, o.nallow_uids);
	if (o.nallow_uids > SIZE_MAX / sizeof(uid_t))
		return ferry__fail(-EINVAL, "%s: nallow_uids %zu is too large", fn, o.nallow_uids);
	if (o.backlog < 0)
		return ferry__fail(-EINVAL, "%s: negative backlog %d", fn, o.backlog);
	if (o.channel && o.channel->ring_bytes && !ferry_ring_spsc_memsize(o.channel->ring_bytes))
		return ferry__fail(-EINVAL, "%s: channel ring_bytes %zu is not a power of two in [%u, %u]",
				   fn, o.channel->ring_bytes, FERRY_RING_SPSC_MIN_CAP, FERRY_RING_SPSC_MAX_CAP);

	ferry_listener *l = calloc(1, sizeof *l);
	if (!l)
		return ferry__fail(-ENOMEM, "%s: out of memory", fn);
	l->fd = -1;
	l->dirfd = -1;
	l->ns = o.ns;
	l->pid = getpid();
	l->euid = geteuid();
	l->check = o.check;
	l->check_arg = o.check_arg;
	if (o.channel) {
		l->has_chan = 1;
		l->chan = *o.channel;
	}
	strncpy(l->name, name, sizeof l->name - 1);
	if (o.nallow_uids) {
		l->allow = malloc(o.nallow_uids * sizeof(uid_t));
		if (!l->allow) {
			listener_free(l);
			return ferry__fail(-ENOMEM, "%s: out of memory", fn);
		}
		memcpy(l->allow, o.allow_uids, o.nallow_uids * sizeof(uid_t));
		l->nallow = o.nallow_uids;
	}
	/* Nonblocking: accept4 must never block; waiting is our poll. */
	l->fd = socket(AF_UNIX, SOCK_SEQPACKET | SOCK_CLOEXEC | SOCK_NONBLOCK, 0);
	if (l->fd < 0) {
		rc = ferry__errno(-errno, "%s: socket", fn);
		listener_free(l);
		return rc;
	}
	int backlog = o.backlog ? o.backlog : SOMAXCONN;
	if (o.ns == FERRY_ENDPOINT_PATH) {
		rc = bind_path(l, name, &a, alen, o.mode ? o.mode : 0600, backlog);
	} else if (bind(l->fd, (struct sockaddr *)&a, alen) < 0) {
		rc = errno == EADDRINUSE
			? ferry__fail(-EADDRINUSE, "%s: the name \"%s\" is in use by another listener", fn, name)
			: ferry__errno(-errno, "%s: bind \"%s\"", fn, name);
	} else if (listen(l->fd, backlog) < 0) {
		rc = ferry__errno(-errno, "%s: listen on \"%s\"", fn, name);
	}
	if (rc) {
		listener_free(l);
		return rc;
	}
	*out = l;
	return 0;
}

static int is_closed(const ferry_listener *l)
{
	/* Relaxed: a hint only. The socket's shutdown is what wakes and stops
	 * a thread in accept (poll says POLLHUP, accept4 then fails). */
	return atomic_load_explicit(&((ferry_listener *)l)->closed, memory_order_relaxed);
}

static void count(_Atomic uint64_t *c)
{
	atomic_fetch_add_explicit(c, 1, memory_order_relaxed);
}

/* Tell a refused client why (no fds), without waiting. */
static void send_refusal(int c, int status)
{
	struct ep_hello h = { .magic = EP_MAGIC, .version = EP_VERSION, .status = status };
	ferry_fds_send(c, &h, sizeof h, NULL, 0, 0);
}

/* The uid check, then the callback. 0: admit; else the refusal's code. */
static int admit(ferry_listener *l, const struct ucred *cr)
{
	int ok = l->allow ? uid_in(l->allow, l->nallow, cr->uid) : cr->uid == l->euid;
	if (!ok)
		return -EACCES;
	if (!l->check)
		return 0;
	int v = l->check(cr->pid, cr->uid, cr->gid, l->check_arg);
	if (v == 0)
		return 0;
	return v < 0 && v > -4096 ? v : -EACCES;
}

/*
 * Serve one accepted connection @c (consumed). Returns 1 with *@out set,
 * 0 when the client was refused or dropped (wait for the next one), or a
 * negative error that ends the accept call.
 */
static int serve(ferry_listener *l, int c, ferry_port **out, int64_t send_timeout)
{
	struct ucred cr;
	socklen_t crl = sizeof cr;
	if (getsockopt(c, SOL_SOCKET, SO_PEERCRED, &cr, &crl) < 0 || crl != sizeof cr) {
		close(c);
		count(&l->dropped);
		return 0;
	}
	/* Gone already (a probe, or connect-and-close): no channel for it. */
	struct pollfd pfd = { .fd = c, .events = POLLRDHUP };
	if (poll(&pfd, 1, 0) > 0 && (pfd.revents & (POLLHUP | POLLRDHUP | POLLERR))) {
		close(c);
		count(&l->dropped);
		return 0;
	}
	int verdict = admit(l, &cr);
	if (verdict) {
		send_refusal(c, verdict);
		close(c);
		count(&l->refused);
		return 0;
	}
	ferry_port *mine, *theirs;
	int rc = ferry_channel(&mine, &theirs, l->has_chan ? &l->chan : NULL);
	if (rc) {
		char saved[MSG_COPY];
		msg_save(saved);
		send_refusal(c, rc > -4096 ? rc : -ENOMEM);
		close(c);
		count(&l->dropped);
		msg_restore(saved);
		return rc;
	}
	struct ep_hello h = {
		.magic = EP_MAGIC,
		.version = EP_VERSION,
		.side = (uint16_t)theirs->side,
		.status = 0,
		.max_message = mine->max_message,
	};
	int fds[2] = { ferry_seg_fd(theirs->seg), theirs->sock };
	ferry__msg_sock_sent(theirs->sock);
	rc = ferry_fds_send(c, &h, sizeof h, fds, 2, send_timeout);
	close(c);
	if (rc) {
		/* Nothing went out: the channel dies here, with both ports. */
		ferry_port_destroy(theirs);
		ferry_port_destroy(mine);
		count(&l->dropped);
		return 0;
	}
	/* The client holds its end now (in flight or received): drop our copy
	 * without closing the channel, as a transferred port is dropped. */
	ferry__port_detach(theirs);
	ferry_port_destroy(theirs);
	count(&l->accepted);
	*out = mine;
	return 1;
}

FERRY_API int ferry_accept(ferry_listener *l, ferry_port **out, int64_t timeout_ns)
{
	const char *fn = "ferry_accept";
	if (out)
		*out = NULL;
	if (!l || !out)
		return ferry__fail(-EINVAL, "%s: %s is NULL", fn, !l ? "listener" : "port");
	const int64_t deadline = ferry__deadline(timeout_ns);
	/* Clients we drop make calls fail inside; a successful accept keeps the
	 * thread's message as it was. */
	char saved[MSG_COPY];
	msg_save(saved);
	for (;;) {
		if (is_closed(l))
			return ferry__fail(-EPIPE, "%s: the listener on \"%s\" is closed", fn, l->name);
		int c = accept4(l->fd, NULL, NULL, SOCK_CLOEXEC | SOCK_NONBLOCK);
		if (c < 0) {
			int e = errno;
			if (e == EINTR || e == ECONNABORTED || e == EPROTO)
				continue;
			if (e == EAGAIN || e == EWOULDBLOCK) {
				int rc = ferry__wait_fd(l->fd, POLLIN, timeout_ns, deadline);
				if (rc == 0)
					continue;
				if (rc == -EAGAIN)
					return ferry__fail(rc, "%s: no client waiting on \"%s\"", fn, l->name);
				if (rc == -ETIMEDOUT)
					return ferry__fail(rc, "%s: no client accepted on \"%s\" within %lld ns",
							   fn, l->name, (long long)timeout_ns);
				return ferry__errno(rc, "%s: poll", fn);
			}
			if (e == EINVAL) /* shut down and drained: closed, here or in another process */
				return ferry__fail(-EPIPE, "%s: the listener on \"%s\" is closed", fn, l->name);
			return ferry__errno(-e, "%s: accept on \"%s\"", fn, l->name);
		}
		if (is_closed(l)) {
			close(c);
			continue;
		}
		int64_t send_timeout = ANSWER_TIMEOUT_NS;
		if (timeout_ns == 0)
			send_timeout = 0;
		else if (deadline >= 0 && ferry__remaining(deadline) < send_timeout)
			send_timeout = ferry__remaining(deadline);
		int rc = serve(l, c, out, send_timeout);
		if (rc > 0) {
			msg_restore(saved);
			return 0;
		}
		if (rc < 0)
			return rc;
	}
}

FERRY_API int ferry_listener_fd(const ferry_listener *l)
{
	if (!l)
		return ferry__fail(-EINVAL, "ferry_listener_fd: listener is NULL");
	return l->fd;
}

FERRY_API int ferry_listener_stats(const ferry_listener *l, struct ferry_listener_stats *st)
{
	if (!l || !st)
		return ferry__fail(-EINVAL, "ferry_listener_stats: %s is NULL", !l ? "listener" : "st");
	ferry_listener *m = (ferry_listener *)l;
	st->accepted = atomic_load_explicit(&m->accepted, memory_order_relaxed);
	st->refused = atomic_load_explicit(&m->refused, memory_order_relaxed);
	st->dropped = atomic_load_explicit(&m->dropped, memory_order_relaxed);
	return 0;
}

FERRY_API void ferry_listener_close(ferry_listener *l)
{
	if (!l || atomic_exchange_explicit(&l->closed, 1, memory_order_relaxed))
		return;
	/* A forked child's copy: the socket and the file are its parent's. */
	if (getpid() != l->pid)
		return;
	if (l->ns == FERRY_ENDPOINT_PATH)
		unlink_ours(l);
	/* New connects are refused from here on, and pollers wake (POLLHUP). */
	shutdown(l->fd, SHUT_RDWR);
	/* Disconnect the clients still queued: their connect fails now rather
	 * than when the listener is destroyed. Ends at EINVAL once drained. */
	for (;;) {
		int c = accept4(l->fd, NULL, NULL, SOCK_CLOEXEC);
		if (c >= 0)
			close(c);
		else if (errno != EINTR && errno != ECONNABORTED)
			break;
	}
}

FERRY_API void ferry_listener_destroy(ferry_listener *l)
{
	if (!l)
		return;
	ferry_listener_close(l);
	listener_free(l);
}

/* ---- the client ---- */

static int connect_wait(int s, const struct sockaddr_un *a, socklen_t alen, const char *name,
			int64_t timeout_ns, int64_t deadline)
{
	const char *fn = "ferry_connect";
	for (;;) {
		if (timeout_ns != 0) {
			/* A blocking connect waits for backlog room up to SO_SNDTIMEO. */
			struct timeval tv = { 0, 0 };
			if (deadline >= 0) {
				int64_t left = ferry__remaining(deadline);
				if (left == 0)
					return ferry__fail(-ETIMEDOUT, "%s: the backlog of \"%s\" stayed full "
							   "until the timeout", fn, name);
				tv.tv_sec = (time_t)(left / 1000000000);
				tv.tv_usec = (suseconds_t)(left % 1000000000 / 1000);
				if (!tv.tv_sec && !tv.tv_usec)
					tv.tv_usec = 1;
			}
			if (setsockopt(s, SOL_SOCKET, SO_SNDTIMEO, &tv, sizeof tv) < 0)
				return ferry__errno(-errno, "%s: SO_SNDTIMEO", fn);
		}
		if (connect(s, (const struct sockaddr *)a, alen) == 0)
			return 0;
		int e = errno;
		switch (e) {
		case EINTR:
			continue;
		case EAGAIN:
			if (timeout_ns == 0)
				return ferry__fail(-EAGAIN, "%s: the backlog of \"%s\" is full (timeout 0)", fn, name);
			continue; /* the deadline check above decides */
		case ECONNREFUSED:
			return ferry__fail(-ECONNREFUSED, "%s: nobody listens on \"%s\"", fn, name);
		case ENOENT:
			return ferry__fail(-ENOENT, "%s: no socket file \"%s\"", fn, name);
		case EACCES:
		case EPERM:
			return ferry__fail(-EACCES, "%s: no permission to connect to \"%s\"", fn, name);
		case EPROTOTYPE:
			return ferry__fail(-ECONNREFUSED, "%s: \"%s\" is a socket of another type, not a "
					   "ferry endpoint", fn, name);
		}
		return ferry__errno(-e, "%s: connect to \"%s\"", fn, name);
	}
}

FERRY_API int ferry_connect(ferry_port **out, const char *name, const struct ferry_connect_opts *opts,
			    int64_t timeout_ns)
{
	const char *fn = "ferry_connect";
	if (out)
		*out = NULL;
	if (!out)
		return ferry__fail(-EINVAL, "%s: port is NULL", fn);
	struct ferry_connect_opts o = { 0 };
	if (opts)
		o = *opts;
	struct sockaddr_un a;
	socklen_t alen;
	int rc = make_addr(&a, &alen, name, o.ns, fn);
	if (rc)
		return rc;
	if (o.nallow_uids && !o.allow_uids)
		return ferry__fail(-EINVAL, "%s: allow_uids is NULL with nallow_uids %zu", fn, o.nallow_uids);

	const int64_t deadline = ferry__deadline(timeout_ns);
	int s = socket(AF_UNIX, SOCK_SEQPACKET | SOCK_CLOEXEC | (timeout_ns == 0 ? SOCK_NONBLOCK : 0), 0);
	if (s < 0)
		return ferry__errno(-errno, "%s: socket", fn);
	rc = connect_wait(s, &a, alen, name, timeout_ns, deadline);
	if (rc)
		goto out;

	/* Anyone may have bound an abstract name first: check who answers. */
	struct ucred cr;
	socklen_t crl = sizeof cr;
	if (getsockopt(s, SOL_SOCKET, SO_PEERCRED, &cr, &crl) < 0) {
		rc = ferry__errno(-errno, "%s: SO_PEERCRED", fn);
		goto out;
	}
	uid_t me = geteuid();
	int trusted = o.nallow_uids ? uid_in(o.allow_uids, o.nallow_uids, cr.uid)
				    : cr.uid == me || cr.uid == 0;
	if (!trusted) {
		rc = ferry__fail(-EACCES, "%s: the listener on \"%s\" runs as uid %u, which this "
				 "client does not trust", fn, name, (unsigned)cr.uid);
		goto out;
	}

	struct ep_hello h;
	int fds[2] = { -1, -1 };
	unsigned nfds = 0;
	int64_t left = timeout_ns < 0 ? FERRY_FOREVER : ferry__remaining(deadline);
	rc = ferry_fds_recv(s, &h, sizeof h, fds, 2, &nfds, left);
	if (rc) {
		char why[MSG_COPY];
		msg_save(why);
		switch (rc) {
		case -EPIPE:
			rc = ferry__fail(-ECONNREFUSED, "%s: the listener on \"%s\" closed the connection "
					 "without answering (it was closed, or it dropped us)", fn, name);
			break;
		case -EAGAIN:
			if (timeout_ns == 0) {
				rc = ferry__fail(-EAGAIN, "%s: no answer from \"%s\" yet (timeout 0)", fn, name);
				break;
			}
			/* fall through */
		case -ETIMEDOUT:
			rc = ferry__fail(-ETIMEDOUT, "%s: no answer from the listener on \"%s\" within "
					 "%lld ns", fn, name, (long long)timeout_ns);
			break;
		case -EBADMSG:
		case -EPROTO:
			rc = ferry__fail(-EBADMSG, "%s: the answer from \"%s\" is not a ferry endpoint "
					 "handshake (%s)", fn, name, why);
			break;
		}
		goto out;
	}
	const char *bad = NULL;
	if (h.magic != EP_MAGIC)
		bad = "bad magic";
	else if (h.version != EP_VERSION)
		bad = "version";
	else if (h.status > 0)
		bad = "positive status";
	else if (h.status == 0 && (nfds != 2 || h.side > 1))
		bad = nfds != 2 ? "a channel needs exactly 2 fds" : "side out of range";
	if (bad || h.status < 0) {
		for (unsigned i = 0; i < nfds; i++)
			close(fds[i]);
		if (bad && h.magic == EP_MAGIC && h.version != EP_VERSION)
			rc = ferry__fail(FERRY_EVERSION, "%s: the listener on \"%s\" speaks handshake "
					 "version %u, this library %u", fn, name, h.version, EP_VERSION);
		else if (bad)
			rc = ferry__fail(-EBADMSG, "%s: the answer from \"%s\" is not a ferry endpoint "
					 "handshake (%s)", fn, name, bad);
		else {
			rc = h.status > -4096 ? h.status : -EACCES;
			rc = ferry__fail(rc, "%s: the listener on \"%s\" refused this process (uid %u, "
					 "pid %d): %s", fn, name, (unsigned)me, (int)getpid(),
					 ferry_strerror(rc));
		}
		goto out;
	}
	rc = ferry__port_import(out, fds[0], fds[1], h.side);
	if (rc) {
		char why[MSG_COPY];
		msg_save(why);
		rc = ferry__fail(rc, "%s: the channel from \"%s\" is not valid (%s)", fn, name, why);
		goto out;
	}
	if (h.max_message)
		(*out)->max_message = h.max_message > SIZE_MAX ? SIZE_MAX : (size_t)h.max_message;
out:
	close(s);
	return rc;
}
