/*
 * fd passing: SCM_RIGHTS over unix stream and seqpacket sockets.
 *
 * Wire format. Each message is an 8-byte frame, then the caller's header:
 *
 *	u32 magic "FRY1" | u16 header length | u16 fd count	(host order)
 *
 * sent with one sendmsg that carries the fds. The frame is what lets a
 * receiver on a stream socket, which has no message boundaries, tell a header
 * of the wrong length or a missing fd from a good message, and skip a
 * mismatched message whole so the stream stays in step. It costs 8 bytes on a
 * call that already moves file references.
 *
 * Streams and partial reads. The kernel attaches the fds to the first byte of
 * the message (its first skb) and hands them out with whichever recvmsg reads
 * that byte; a read never continues past the skb that carried fds, but it
 * may glue an fd-less message in front of one with fds. So on a stream we
 * never ask for more than the message still owes us: first exactly the frame
 * (its first read brings the fds), then exactly the header length the frame
 * announces. Any fds or control data that arrive on a later read mean the
 * framing is broken: -EBADMSG, and they are closed like the rest.
 * A message is normally queued whole by one sendmsg (it fits one skb unless
 * SO_SNDBUF is below ~9 KiB), so once its first byte is readable the rest is
 * too. If a timeout still cuts a stream message in the middle, on either
 * side, the stream has lost its place: the call returns -EPROTO and the
 * socket should be closed.
 *
 * Seqpacket keeps boundaries: one recvmsg with one spare byte past the
 * expected header tells a long message from a good one (MSG_TRUNC also says
 * so), and the kernel drops the rest of a long message for us.
 *
 * Neither call ever blocks inside sendmsg/recvmsg (MSG_DONTWAIT); waiting is
 * ppoll against one deadline taken at entry, so EINTR and spurious wakeups
 * cannot stretch the timeout.
 */
#include "ferry/seg.h"
#include "shm/err.h"

#include <assert.h>
#include <errno.h>
#include <poll.h>
#include <stdint.h>
#include <string.h>
#include <sys/socket.h>
#include <time.h>
#include <unistd.h>

#ifndef SCM_PIDFD
#define SCM_PIDFD 0x04 /* 6.5: a pidfd of the sender, when SO_PASSPIDFD is on */
#endif

#define HDR_MAX 4096
#define FRAME_MAGIC 0x31595246u /* "FRY1" as little-endian bytes */

struct frame {
	uint32_t magic;
	uint16_t len;  /* header bytes after the frame: 1..HDR_MAX */
	uint16_t nfds; /* fds attached: 0..FERRY_FDS_MAX */
};
static_assert(sizeof(struct frame) == 8, "frame is 8 bytes on the wire");
static_assert(HDR_MAX <= UINT16_MAX && FERRY_FDS_MAX <= UINT16_MAX, "frame fields fit");

/*
 * Room for our fds plus the control messages a socket option may add
 * (SCM_CREDENTIALS, SCM_PIDFD). A bigger buffer than strictly needed makes
 * the kernel hand us everything it has, so every fd can be counted and
 * closed; only what does not fit at all is MSG_CTRUNC (the kernel drops
 * those itself, they are never installed in our table).
 */
#define CTL_BYTES                                                  \
	(CMSG_SPACE(sizeof(int) * FERRY_FDS_MAX) +                 \
	 CMSG_SPACE(sizeof(struct ucred)) + CMSG_SPACE(sizeof(int)))
#define RX_MAX (CTL_BYTES / sizeof(int))

union ctl {
	struct cmsghdr align;
	char buf[CTL_BYTES];
};

/* Every fd that arrived with one message, good or not. */
struct rx {
	int fds[RX_MAX];
	unsigned n;
};

static void rx_close(struct rx *rx)
{
	for (unsigned i = 0; i < rx->n; i++)
		close(rx->fds[i]);
	rx->n = 0;
}

/* Deadline for a relative timeout; saturates to "none" instead of overflowing. */
static int64_t deadline_of(int64_t timeout_ns)
{
	if (timeout_ns < 0)
		return -1;
	int64_t now = ferry__now_ns();
	return timeout_ns > INT64_MAX - now ? -1 : now + timeout_ns;
}

/*
 * Wait until @sock has @events or the deadline passes. Returns 0 when the
 * caller should retry its call (ready, or hangup/error which that call will
 * report), -EAGAIN for timeout 0, -ETIMEDOUT, or -errno.
 */
int ferry__wait_fd(int sock, short events, int64_t timeout_ns, int64_t deadline)
{
	if (timeout_ns == 0)
		return -EAGAIN;
	for (;;) {
		struct timespec ts, *tsp = NULL;
		if (deadline >= 0) {
			int64_t left = ferry__remaining(deadline);
			if (left == 0)
				return -ETIMEDOUT;
			ts.tv_sec = (time_t)(left / 1000000000);
			ts.tv_nsec = (long)(left % 1000000000);
			tsp = &ts;
		}
		struct pollfd p = { .fd = sock, .events = events };
		int r = ppoll(&p, 1, tsp, NULL);
		if (r > 0)
			return 0;
		/* r == 0: loop to re-read the clock; the deadline, not ppoll, decides. */
		if (r < 0 && errno != EINTR)
			return -errno;
	}
}

/*
 * The socket's type if it can carry fds for us, else a negative error.
 * Two getsockopt calls per message: cheap next to passing file references,
 * and without them fds sent over a non-unix socket would vanish silently.
 */
static int check_sock(int sock, const char *fn)
{
	int v;
	socklen_t l = sizeof(v);
	if (getsockopt(sock, SOL_SOCKET, SO_DOMAIN, &v, &l) < 0) {
		if (errno == ENOTSOCK)
			return ferry__fail(-EINVAL, "%s: fd %d is not a socket", fn, sock);
		return ferry__errno(-errno, "%s: socket %d", fn, sock);
	}
	if (v != AF_UNIX)
		return ferry__fail(-EINVAL, "%s: socket %d is not a unix socket (family %d); "
				   "only unix sockets carry fds", fn, sock, v);
	l = sizeof(v);
	if (getsockopt(sock, SOL_SOCKET, SO_TYPE, &v, &l) < 0)
		return ferry__errno(-errno, "%s: SO_TYPE of socket %d", fn, sock);
	if (v != SOCK_STREAM && v != SOCK_SEQPACKET)
		return ferry__fail(-EINVAL, "%s: socket %d is neither SOCK_STREAM nor SOCK_SEQPACKET "
				   "(type %d)", fn, sock, v);
	return v;
}

FERRY_API int ferry_fds_send(int sock, const void *hdr, size_t len,
			     const int *fds, unsigned nfds, int64_t timeout_ns)
{
	if (sock < 0)
		return ferry__fail(-EBADF, "ferry_fds_send: sock %d is not a file descriptor", sock);
	if (!hdr)
		return ferry__fail(-EINVAL, "ferry_fds_send: hdr is NULL");
	if (len == 0 || len > HDR_MAX)
		return ferry__fail(-EINVAL, "ferry_fds_send: len %zu is outside 1..%d", len, HDR_MAX);
	if (nfds > FERRY_FDS_MAX)
		return ferry__fail(-EINVAL, "ferry_fds_send: nfds %u is above FERRY_FDS_MAX (%d)",
				   nfds, FERRY_FDS_MAX);
	if (nfds && !fds)
		return ferry__fail(-EINVAL, "ferry_fds_send: fds is NULL with nfds %u", nfds);
	for (unsigned i = 0; i < nfds; i++)
		if (fds[i] < 0)
			return ferry__fail(-EINVAL, "ferry_fds_send: fds[%u] is %d", i, fds[i]);
	int rc = check_sock(sock, "ferry_fds_send");
	if (rc < 0)
		return rc;

	struct frame fr = { FRAME_MAGIC, (uint16_t)len, (uint16_t)nfds };
	struct iovec iov[2] = {
		{ .iov_base = &fr, .iov_len = sizeof(fr) },
		{ .iov_base = (void *)hdr, .iov_len = len },
	};
	union ctl ctl;
	struct msghdr mh = { .msg_iov = iov, .msg_iovlen = 2 };
	if (nfds) {
		memset(&ctl, 0, sizeof(ctl));
		mh.msg_control = ctl.buf;
		mh.msg_controllen = CMSG_SPACE(sizeof(int) * nfds);
		struct cmsghdr *c = CMSG_FIRSTHDR(&mh);
		c->cmsg_level = SOL_SOCKET;
		c->cmsg_type = SCM_RIGHTS;
		c->cmsg_len = CMSG_LEN(sizeof(int) * nfds);
		memcpy(CMSG_DATA(c), fds, sizeof(int) * nfds);
	}

	const int64_t deadline = deadline_of(timeout_ns);
	const size_t total = sizeof(fr) + len;
	size_t sent = 0;
	for (;;) {
		/* MSG_NOSIGNAL: a gone peer is -EPIPE, never a SIGPIPE that kills us. */
		ssize_t n = sendmsg(sock, &mh, MSG_DONTWAIT | MSG_NOSIGNAL);
		if (n > 0) {
			sent += (size_t)n;
			if (sent >= total)
				return 0;
			/*
			 * Only a stream takes part of a message. The fds went
			 * with its first byte: send the rest without them.
			 */
			mh.msg_control = NULL;
			mh.msg_controllen = 0;
			while (mh.msg_iovlen && (size_t)n >= mh.msg_iov->iov_len) {
				n -= (ssize_t)mh.msg_iov->iov_len;
				mh.msg_iov++;
				mh.msg_iovlen--;
			}
			mh.msg_iov->iov_base = (char *)mh.msg_iov->iov_base + n;
			mh.msg_iov->iov_len -= (size_t)n;
			continue;
		}
		int e = n < 0 ? errno : EAGAIN;
		if (e == EINTR)
			continue;
		if (e == EAGAIN || e == EWOULDBLOCK) {
			rc = ferry__wait_fd(sock, POLLOUT, timeout_ns, deadline);
			if (rc == 0)
				continue;
			if (sent && (rc == -EAGAIN || rc == -ETIMEDOUT))
				return ferry__fail(-EPROTO, "ferry_fds_send: timed out after %zu of %zu bytes "
						   "on stream socket %d; the stream is out of sync, close it",
						   sent, total, sock);
			if (rc == -EAGAIN)
				return ferry__fail(rc, "ferry_fds_send: socket %d is full (timeout 0)", sock);
			if (rc == -ETIMEDOUT)
				return ferry__fail(rc, "ferry_fds_send: socket %d stayed full for %lld ns",
						   sock, (long long)timeout_ns);
			return ferry__errno(rc, "ferry_fds_send: poll on socket %d", sock);
		}
		switch (e) {
		case EPIPE:
		case ECONNRESET:
		case ECONNREFUSED:
			return ferry__fail(-EPIPE, "ferry_fds_send: the peer of socket %d is gone", sock);
		case EBADF:
			/* sock passed getsockopt: the bad one is in fds. */
			return ferry__fail(-EBADF, "ferry_fds_send: one of the %u fds is not open", nfds);
		case ETOOMANYREFS:
			return ferry__errno(-e, "ferry_fds_send: too many fds in flight on socket %d "
					    "(RLIMIT_NOFILE)", sock);
		}
		return ferry__errno(-e, "ferry_fds_send: sendmsg on socket %d (%zu bytes, %u fds)",
				    sock, total, nfds);
	}
}

/*
 * One recvmsg, waiting for data until the deadline. Returns bytes read
 * (0 = end of stream / peer closed) or a negative error.
 */
static ssize_t recv_wait(int sock, struct msghdr *mh, int64_t timeout_ns, int64_t deadline)
{
	const size_t cap = mh->msg_controllen;
	for (;;) {
		mh->msg_controllen = cap;
		mh->msg_flags = 0;
		/* MSG_CMSG_CLOEXEC: fds must not leak into a program forked and exec'd meanwhile. */
		ssize_t n = recvmsg(sock, mh, MSG_DONTWAIT | MSG_CMSG_CLOEXEC);
		if (n >= 0)
			return n;
		if (errno == EINTR)
			continue;
		if (errno != EAGAIN && errno != EWOULDBLOCK)
			return errno == ECONNRESET ? -EPIPE : -errno;
		int rc = ferry__wait_fd(sock, POLLIN, timeout_ns, deadline);
		if (rc < 0)
			return rc;
	}
}

/* Message for a failed wait or recvmsg @err that did not begin a message. */
static int recv_error(int err, int sock, int64_t timeout_ns)
{
	switch (err) {
	case -EAGAIN:
		return ferry__fail(err, "ferry_fds_recv: no message waiting on socket %d (timeout 0)",
				   sock);
	case -ETIMEDOUT:
		return ferry__fail(err, "ferry_fds_recv: no message on socket %d within %lld ns",
				   sock, (long long)timeout_ns);
	case -EPIPE:
		return ferry__fail(err, "ferry_fds_recv: the peer of socket %d closed", sock);
	}
	return ferry__errno(err, "ferry_fds_recv: recvmsg on socket %d", sock);
}

/*
 * Move every fd in @mh's control data into @rx, whatever else is wrong, so
 * that all of them can be closed. Returns 0 or -EBADMSG (first reason wins).
 */
static int collect(struct rx *rx, const struct msghdr *mh, int sock)
{
	int rc = 0;
	if (mh->msg_flags & MSG_CTRUNC)
		rc = ferry__fail(-EBADMSG, "ferry_fds_recv: control data on socket %d was truncated: "
				 "more than %d fds were sent, or this process is out of fds",
				 sock, FERRY_FDS_MAX);
	for (struct cmsghdr *c = CMSG_FIRSTHDR(mh); c; c = CMSG_NXTHDR((struct msghdr *)mh, c)) {
		if (c->cmsg_len < CMSG_LEN(0))
			break;
		size_t data = c->cmsg_len - CMSG_LEN(0);
		if (c->cmsg_level == SOL_SOCKET &&
		    (c->cmsg_type == SCM_RIGHTS || c->cmsg_type == SCM_PIDFD)) {
			const unsigned char *p = CMSG_DATA(c);
			for (size_t i = 0; i + sizeof(int) <= data; i += sizeof(int)) {
				int fd;
				memcpy(&fd, p + i, sizeof(fd));
				if (rx->n < RX_MAX)
					rx->fds[rx->n++] = fd;
				else
					close(fd); /* cannot happen: RX_MAX covers the buffer */
			}
			if (c->cmsg_type == SCM_RIGHTS)
				continue;
		}
		if (!rc)
			rc = ferry__fail(-EBADMSG, "ferry_fds_recv: unexpected control message (level %d, "
					 "type %d) on socket %d%s", c->cmsg_level, c->cmsg_type, sock,
					 c->cmsg_level == SOL_SOCKET && c->cmsg_type == SCM_CREDENTIALS ?
					 " (SO_PASSCRED is on)" : "");
	}
	return rc;
}

/* Checks a complete frame against what the caller expects. */
static int check_counts(const struct frame *fr, const struct rx *rx, size_t len,
			unsigned max_fds, int sock)
{
	if (fr->len != len)
		return ferry__fail(-EBADMSG, "ferry_fds_recv: header of %u bytes on socket %d, "
				   "expected %zu", fr->len, sock, len);
	if (rx->n > max_fds)
		return ferry__fail(-EBADMSG, "ferry_fds_recv: %u fds arrived on socket %d, room for %u",
				   rx->n, sock, max_fds);
	if (rx->n != fr->nfds)
		return ferry__fail(-EBADMSG, "ferry_fds_recv: message on socket %d announced %u fds, "
				   "%u arrived", sock, fr->nfds, rx->n);
	return 0;
}

static int bad_frame(const struct frame *fr, int sock, const char *tail)
{
	if (fr->magic != FRAME_MAGIC)
		return ferry__fail(-EBADMSG, "ferry_fds_recv: not a ferry fd message on socket %d "
				   "(magic 0x%08x)%s", sock, fr->magic, tail);
	if (fr->len == 0 || fr->len > HDR_MAX || fr->nfds > FERRY_FDS_MAX)
		return ferry__fail(-EBADMSG, "ferry_fds_recv: malformed frame on socket %d "
				   "(%u header bytes, %u fds)%s", sock, fr->len, fr->nfds, tail);
	return 0;
}

static int recv_seqpacket(int sock, void *hdr, size_t len, struct rx *rx,
			  unsigned max_fds, int64_t timeout_ns, int64_t deadline)
{
	struct frame fr;
	char spare;
	struct iovec iov[3] = {
		{ .iov_base = &fr, .iov_len = sizeof(fr) },
		{ .iov_base = hdr, .iov_len = len },
		{ .iov_base = &spare, .iov_len = 1 },
	};
	union ctl ctl;
	struct msghdr mh = {
		.msg_iov = iov, .msg_iovlen = 3, .msg_control = ctl.buf, .msg_controllen = sizeof(ctl.buf),
	};
	ssize_t n = recv_wait(sock, &mh, timeout_ns, deadline);
	if (n < 0)
		return recv_error((int)n, sock, timeout_ns);
	int rc = collect(rx, &mh, sock);
	if (rc < 0)
		return rc;
	if (n == 0 && rx->n == 0)
		return recv_error(-EPIPE, sock, timeout_ns);
	if ((size_t)n < sizeof(fr))
		return ferry__fail(-EBADMSG, "ferry_fds_recv: message of %zd bytes on socket %d is too "
				   "short for a frame (not a ferry fd message)", n, sock);
	rc = bad_frame(&fr, sock, "");
	if (rc < 0)
		return rc;
	rc = check_counts(&fr, rx, len, max_fds, sock);
	if (rc < 0)
		return rc;
	if ((mh.msg_flags & MSG_TRUNC) || (size_t)n != sizeof(fr) + len)
		return ferry__fail(-EBADMSG, "ferry_fds_recv: message of %zd bytes on socket %d does "
				   "not match its frame (%u header bytes)", n, sock, fr.len);
	return 0;
}

/*
 * Read exactly @want bytes of a stream message into @dst. @first says this
 * read starts the message: only it may wait the caller's timeout and bring
 * fds; later reads finish a message already begun.
 */
static int stream_read(int sock, void *dst, size_t want, struct rx *rx, int first,
		       int64_t timeout_ns, int64_t deadline)
{
	size_t got = 0;
	while (got < want) {
		struct iovec iov = { .iov_base = (char *)dst + got, .iov_len = want - got };
		union ctl ctl;
		struct msghdr mh = {
			.msg_iov = &iov, .msg_iovlen = 1,
			.msg_control = ctl.buf, .msg_controllen = sizeof(ctl.buf),
		};
		ssize_t n = recv_wait(sock, &mh, timeout_ns, deadline);
		int begun = !first || got > 0;
		if (n < 0) {
			if (begun && (n == -EAGAIN || n == -ETIMEDOUT))
				return ferry__fail(-EPROTO, "ferry_fds_recv: timed out in the middle of a "
						   "message on stream socket %d; the stream is out of "
						   "sync, close it", sock);
			if (begun)
				return ferry__errno((int)n, "ferry_fds_recv: recvmsg on socket %d in the "
						    "middle of a message", sock);
			return recv_error((int)n, sock, timeout_ns);
		}
		unsigned before = rx->n;
		int rc = collect(rx, &mh, sock);
		if (rc < 0)
			return rc;
		if (begun && rx->n != before)
			return ferry__fail(-EBADMSG, "ferry_fds_recv: fds arrived in the middle of a "
					   "message on stream socket %d; the stream is out of sync", sock);
		if (n == 0) {
			if (!begun && rx->n == 0)
				return recv_error(-EPIPE, sock, timeout_ns);
			return ferry__fail(-EPIPE, "ferry_fds_recv: the peer of socket %d closed in "
					   "the middle of a message", sock);
		}
		got += (size_t)n;
	}
	return 0;
}

static int recv_stream(int sock, void *hdr, size_t len, struct rx *rx,
		       unsigned max_fds, int64_t timeout_ns, int64_t deadline)
{
	struct frame fr;
	int rc = stream_read(sock, &fr, sizeof(fr), rx, 1, timeout_ns, deadline);
	if (rc < 0)
		return rc;
	rc = bad_frame(&fr, sock, "; the stream is out of sync");
	if (rc < 0)
		return rc;
	/*
	 * A header of another length is still read to its end, so the next
	 * call starts on a frame: the error costs one message, not the stream.
	 */
	char skip[HDR_MAX];
	rc = stream_read(sock, fr.len == len ? hdr : skip, fr.len, rx, 0, timeout_ns, deadline);
	if (rc < 0)
		return rc;
	return check_counts(&fr, rx, len, max_fds, sock);
}

FERRY_API int ferry_fds_recv(int sock, void *hdr, size_t len, int *fds,
			     unsigned max_fds, unsigned *nfds, int64_t timeout_ns)
{
	if (!nfds)
		return ferry__fail(-EINVAL, "ferry_fds_recv: nfds is NULL");
	*nfds = 0;
	if (sock < 0)
		return ferry__fail(-EBADF, "ferry_fds_recv: sock %d is not a file descriptor", sock);
	if (!hdr)
		return ferry__fail(-EINVAL, "ferry_fds_recv: hdr is NULL");
	if (len == 0 || len > HDR_MAX)
		return ferry__fail(-EINVAL, "ferry_fds_recv: len %zu is outside 1..%d", len, HDR_MAX);
	if (max_fds && !fds)
		return ferry__fail(-EINVAL, "ferry_fds_recv: fds is NULL with max_fds %u", max_fds);
	int type = check_sock(sock, "ferry_fds_recv");
	if (type < 0)
		return type;

	const int64_t deadline = deadline_of(timeout_ns);
	struct rx rx = { .n = 0 };
	int rc = type == SOCK_SEQPACKET
		? recv_seqpacket(sock, hdr, len, &rx, max_fds, timeout_ns, deadline)
		: recv_stream(sock, hdr, len, &rx, max_fds, timeout_ns, deadline);
	if (rc == 0) {
		if (rx.n)
			memcpy(fds, rx.fds, sizeof(int) * rx.n);
		*nfds = rx.n;
		return 0;
	}
	rx_close(&rx);
	return rc;
}
