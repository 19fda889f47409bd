/* fd passing: counts, validation, timeouts, peers that go away, no leaks. */
#include "ferry/seg.h"
#include "util/util.h"

#include <criterion/criterion.h>
#include <errno.h>
#include <fcntl.h>
#include <pthread.h>
#include <stdio.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

TestSuite(fdpass, .timeout = 20);

#define SEC 1000000000LL
#define MS 1000000LL

/* The wire frame of shm/fdpass.c, for tests that play a foreign or broken peer. */
struct frame {
	uint32_t magic;
	uint16_t len;
	uint16_t nfds;
};
#define FRAME_MAGIC 0x31595246u

static const int types[] = { SOCK_STREAM, SOCK_SEQPACKET };
static const char *tname(int type)
{
	return type == SOCK_STREAM ? "stream" : "seqpacket";
}

static void make_pair(int type, int sv[2])
{
	cr_assert_eq(socketpair(AF_UNIX, type | SOCK_CLOEXEC, 0, sv), 0, "socketpair: %s",
		     strerror(errno));
}

static void close_pair(int sv[2])
{
	close(sv[0]);
	close(sv[1]);
}

/* A memfd whose size tags it: @tag bytes long. */
static int tagged_fd(int tag)
{
	int fd = memfd_create("tag", MFD_CLOEXEC);
	cr_assert_geq(fd, 0);
	cr_assert_eq(ftruncate(fd, tag), 0);
	return fd;
}

static off_t fd_tag(int fd)
{
	struct stat st;
	return fstat(fd, &st) == 0 ? st.st_size : -1;
}

static void expect_cloexec(int fd)
{
	int fl = fcntl(fd, F_GETFD);
	cr_expect(fl >= 0 && (fl & FD_CLOEXEC), "received fd %d is not close-on-exec", fd);
}

/* Sends @n tagged fds (tags 1..n) with a 24-byte header and receives them. */
static void round_trip(int type, unsigned n)
{
	int sv[2], out[FERRY_FDS_MAX], in[FERRY_FDS_MAX];
	make_pair(type, sv);
	for (unsigned i = 0; i < n; i++)
		out[i] = tagged_fd((int)i + 1);
	char hdr[24], got[24];
	for (unsigned i = 0; i < sizeof(hdr); i++)
		hdr[i] = (char)('a' + i + n);
	cr_assert_eq(ferry_fds_send(sv[0], hdr, sizeof(hdr), n ? out : NULL, n, SEC), 0,
		     "%s: %s", tname(type), ferry_errmsg());
	unsigned nin = 99;
	cr_assert_eq(ferry_fds_recv(sv[1], got, sizeof(got), in, FERRY_FDS_MAX, &nin, SEC), 0,
		     "%s: %s", tname(type), ferry_errmsg());
	cr_expect_eq(nin, n, "%s: %u fds arrived, %u sent", tname(type), nin, n);
	cr_expect_arr_eq(got, hdr, sizeof(hdr), "%s: header differs", tname(type));
	for (unsigned i = 0; i < nin && i < n; i++) {
		cr_expect_neq(in[i], out[i]);
		cr_expect_eq(fd_tag(in[i]), (off_t)i + 1, "%s: fd %u is not the one sent",
			     tname(type), i);
		expect_cloexec(in[i]);
		close(in[i]);
	}
	for (unsigned i = 0; i < n; i++)
		close(out[i]);
	close_pair(sv);
}

Test(fdpass, carries_a_header_without_fds)
{
	struct tu_baseline b;
	tu_baseline_take(&b);
	for (int t = 0; t < 2; t++)
		round_trip(types[t], 0);
	tu_baseline_check(&b);
}

Test(fdpass, carries_one_usable_fd)
{
	struct tu_baseline b;
	tu_baseline_take(&b);
	for (int t = 0; t < 2; t++) {
		round_trip(types[t], 1);

		/* The received fd is the same open file: a pipe's write end works. */
		int sv[2], p[2], w = -1;
		unsigned n = 0;
		make_pair(types[t], sv);
		cr_assert_eq(pipe2(p, O_CLOEXEC), 0);
		char h = 'h';
		cr_assert_eq(ferry_fds_send(sv[0], &h, 1, &p[1], 1, SEC), 0, "%s", ferry_errmsg());
		close(p[1]);
		cr_assert_eq(ferry_fds_recv(sv[1], &h, 1, &w, 1, &n, SEC), 0, "%s", ferry_errmsg());
		cr_assert_eq(n, 1);
		expect_cloexec(w);
		cr_expect_eq(write(w, "xyz", 3), 3);
		close(w);
		char buf[4] = "";
		cr_expect_eq(read(p[0], buf, sizeof(buf)), 3);
		cr_expect_str_eq(buf, "xyz");
		close(p[0]);
		close_pair(sv);
	}
	tu_baseline_check(&b);
}

Test(fdpass, carries_ferry_fds_max_fds)
{
	struct tu_baseline b;
	tu_baseline_take(&b);
	for (int t = 0; t < 2; t++)
		round_trip(types[t], FERRY_FDS_MAX);
	tu_baseline_check(&b);
}

Test(fdpass, carries_the_largest_header_in_order)
{
	struct tu_baseline b;
	tu_baseline_take(&b);
	static char big[4096], got[4096];
	for (int t = 0; t < 2; t++) {
		int sv[2], fd = tagged_fd(5), in[2];
		unsigned n;
		make_pair(types[t], sv);
		/* Several messages back to back: a stream must not glue them. */
		for (int m = 0; m < 3; m++) {
			memset(big, 'A' + m, sizeof(big));
			cr_assert_eq(ferry_fds_send(sv[0], big, sizeof(big), &fd, m == 1 ? 0 : 1, SEC),
				     0, "%s", ferry_errmsg());
		}
		for (int m = 0; m < 3; m++) {
			cr_assert_eq(ferry_fds_recv(sv[1], got, sizeof(got), in, 2, &n, SEC), 0,
				     "%s message %d: %s", tname(types[t]), m, ferry_errmsg());
			cr_expect_eq(n, m == 1 ? 0u : 1u);
			cr_expect(got[0] == 'A' + m && got[4095] == 'A' + m, "message %d out of order", m);
			if (n)
				close(in[0]);
		}
		close(fd);
		close_pair(sv);
	}
	tu_baseline_check(&b);
}

Test(fdpass, rejects_more_fds_than_max_fds_and_closes_them)
{
	struct tu_baseline b;
	tu_baseline_take(&b);
	for (int t = 0; t < 2; t++) {
		int sv[2], out[4], in[2] = { -1, -1 };
		make_pair(types[t], sv);
		for (int i = 0; i < 4; i++)
			out[i] = tagged_fd(i + 1);
		int h = 42;
		cr_assert_eq(ferry_fds_send(sv[0], &h, sizeof(h), out, 4, SEC), 0, "%s", ferry_errmsg());
		cr_assert_eq(ferry_fds_send(sv[0], &h, sizeof(h), out, 3, SEC), 0, "%s", ferry_errmsg());
		for (int i = 0; i < 4; i++)
			close(out[i]);
		struct tu_baseline mid;
		tu_baseline_take(&mid);

		unsigned n = 99;
		cr_expect_eq(ferry_fds_recv(sv[1], &h, sizeof(h), in, 2, &n, SEC), -EBADMSG,
			     "%s: %s", tname(types[t]), ferry_errmsg());
		cr_expect_eq(n, 0);
		cr_expect(strstr(ferry_errmsg(), "room for 2") != NULL, "message: %s", ferry_errmsg());
		/* max_fds 0 and no array: any fd is too many. */
		n = 99;
		cr_expect_eq(ferry_fds_recv(sv[1], &h, sizeof(h), NULL, 0, &n, SEC), -EBADMSG,
			     "%s: %s", tname(types[t]), ferry_errmsg());
		cr_expect_eq(n, 0);
		tu_baseline_check(&mid); /* none of the 7 fds that arrived is left open */
		close_pair(sv);
	}
	tu_baseline_check(&b);
}

Test(fdpass, rejects_a_header_of_another_length)
{
	struct tu_baseline b;
	tu_baseline_take(&b);
	for (int t = 0; t < 2; t++) {
		int sv[2], fds[2] = { tagged_fd(1), tagged_fd(2) }, in[2];
		char hdr[16] = "0123456789abcde", got[16];
		unsigned n = 99;
		make_pair(types[t], sv);

		/* Shorter than expected. */
		cr_assert_eq(ferry_fds_send(sv[0], hdr, 8, fds, 2, SEC), 0, "%s", ferry_errmsg());
		cr_expect_eq(ferry_fds_recv(sv[1], got, 16, in, 2, &n, SEC), -EBADMSG, "%s: %s",
			     tname(types[t]), ferry_errmsg());
		cr_expect_eq(n, 0);
		cr_expect(strstr(ferry_errmsg(), "8 bytes") != NULL, "message: %s", ferry_errmsg());
		/* Longer than expected. */
		cr_assert_eq(ferry_fds_send(sv[0], hdr, 16, fds, 2, SEC), 0, "%s", ferry_errmsg());
		cr_expect_eq(ferry_fds_recv(sv[1], got, 8, in, 2, &n, SEC), -EBADMSG, "%s: %s",
			     tname(types[t]), ferry_errmsg());
		cr_expect(strstr(ferry_errmsg(), "16 bytes") != NULL, "message: %s", ferry_errmsg());
		/* Each bad message cost only itself: the next good one arrives. */
		cr_assert_eq(ferry_fds_send(sv[0], hdr, 16, fds, 1, SEC), 0, "%s", ferry_errmsg());
		cr_assert_eq(ferry_fds_recv(sv[1], got, 16, in, 2, &n, SEC), 0, "%s: %s",
			     tname(types[t]), ferry_errmsg());
		cr_expect_eq(n, 1);
		cr_expect_arr_eq(got, hdr, 16);
		close(in[0]);
		close(fds[0]);
		close(fds[1]);
		close_pair(sv);
	}
	tu_baseline_check(&b);
}

Test(fdpass, timeout_zero_on_an_empty_socket_is_eagain)
{
	struct tu_baseline b;
	tu_baseline_take(&b);
	for (int t = 0; t < 2; t++) {
		int sv[2];
		char h[4];
		unsigned n = 99;
		make_pair(types[t], sv);
		cr_expect_eq(ferry_fds_recv(sv[1], h, sizeof(h), NULL, 0, &n, 0), -EAGAIN, "%s: %s",
			     tname(types[t]), ferry_errmsg());
		cr_expect_eq(n, 0);
		cr_expect_neq(ferry_errmsg()[0], '\0');
		close_pair(sv);
	}
	tu_baseline_check(&b);
}

Test(fdpass, recv_times_out_no_earlier_than_asked)
{
	struct tu_baseline b;
	tu_baseline_take(&b);
	for (int t = 0; t < 2; t++) {
		int sv[2];
		char h[4];
		unsigned n;
		make_pair(types[t], sv);
		int64_t t0 = tu_now_ns();
		cr_expect_eq(ferry_fds_recv(sv[1], h, sizeof(h), NULL, 0, &n, 50 * MS), -ETIMEDOUT,
			     "%s: %s", tname(types[t]), ferry_errmsg());
		int64_t took = tu_now_ns() - t0;
		cr_expect_geq(took, 50 * MS, "%s: returned after %lld ns", tname(types[t]),
			      (long long)took);
		close_pair(sv);
	}
	tu_baseline_check(&b);
}

/* Fills @sock's send buffer with messages until a try-once send says -EAGAIN. */
static void fill_socket(int sock)
{
	static char big[4096];
	int sz = 4608; /* the kernel's floor; keeps the fill short */
	setsockopt(sock, SOL_SOCKET, SO_SNDBUF, &sz, sizeof(sz));
	int rc = 0;
	for (int i = 0; i < 10000 && rc == 0; i++)
		rc = ferry_fds_send(sock, big, 1024, NULL, 0, 0);
	cr_assert_eq(rc, -EAGAIN, "the socket never filled: %d %s", rc, ferry_errmsg());
}

Test(fdpass, send_on_a_full_socket_waits_then_times_out)
{
	struct tu_baseline b;
	tu_baseline_take(&b);
	for (int t = 0; t < 2; t++) {
		int sv[2];
		make_pair(types[t], sv);
		fill_socket(sv[0]);
		char h = 1;
		cr_expect_eq(ferry_fds_send(sv[0], &h, 1, NULL, 0, 0), -EAGAIN, "%s", ferry_errmsg());
		int64_t t0 = tu_now_ns();
		cr_expect_eq(ferry_fds_send(sv[0], &h, 1, NULL, 0, 30 * MS), -ETIMEDOUT, "%s: %s",
			     tname(types[t]), ferry_errmsg());
		int64_t took = tu_now_ns() - t0;
		cr_expect_geq(took, 30 * MS, "%s: returned after %lld ns", tname(types[t]),
			      (long long)took);
		close_pair(sv);
	}
	tu_baseline_check(&b);
}

Test(fdpass, a_gone_peer_is_epipe_on_send_and_recv)
{
	struct tu_baseline b;
	tu_baseline_take(&b);
	for (int t = 0; t < 2; t++) {
		int sv[2], fd = tagged_fd(3), in[1];
		char h[8] = "message";
		unsigned n = 99;
		make_pair(types[t], sv);
		/* What was sent before the close still arrives first. */
		cr_assert_eq(ferry_fds_send(sv[0], h, sizeof(h), &fd, 1, SEC), 0, "%s", ferry_errmsg());
		close(sv[0]);
		cr_expect_eq(ferry_fds_recv(sv[1], h, sizeof(h), in, 1, &n, SEC), 0, "%s: %s",
			     tname(types[t]), ferry_errmsg());
		cr_expect_eq(n, 1);
		if (n == 1)
			close(in[0]);
		cr_expect_eq(ferry_fds_recv(sv[1], h, sizeof(h), in, 1, &n, SEC), -EPIPE, "%s: %s",
			     tname(types[t]), ferry_errmsg());
		cr_expect_eq(ferry_fds_recv(sv[1], h, sizeof(h), in, 1, &n, FERRY_FOREVER), -EPIPE);
		/* MSG_NOSIGNAL: a SIGPIPE here would kill the test. */
		cr_expect_eq(ferry_fds_send(sv[1], h, sizeof(h), &fd, 1, SEC), -EPIPE, "%s: %s",
			     tname(types[t]), ferry_errmsg());
		cr_expect_eq(ferry_fds_send(sv[1], h, sizeof(h), NULL, 0, FERRY_FOREVER), -EPIPE);
		close(sv[1]);
		close(fd);
	}
	tu_baseline_check(&b);
}

Test(fdpass, rejects_bad_arguments)
{
	struct tu_baseline b;
	tu_baseline_take(&b);
	int sv[2], fds[FERRY_FDS_MAX + 1], bad[1] = { -1 };
	char h[8] = "x", big[4097];
	unsigned n;
	make_pair(SOCK_SEQPACKET, sv);
	for (int i = 0; i <= FERRY_FDS_MAX; i++)
		fds[i] = sv[1];

#define EXPECT_EINVAL(call, word)                                                          \
	do {                                                                               \
		cr_expect_eq(call, -EINVAL, #call);                                        \
		cr_expect(strstr(ferry_errmsg(), word) != NULL, "%s: message \"%s\"", #call, \
			  ferry_errmsg());                                                 \
	} while (0)

	EXPECT_EINVAL(ferry_fds_send(sv[0], NULL, 1, NULL, 0, 0), "hdr");
	EXPECT_EINVAL(ferry_fds_send(sv[0], h, 0, NULL, 0, 0), "len 0");
	EXPECT_EINVAL(ferry_fds_send(sv[0], big, sizeof(big), NULL, 0, 0), "len 4097");
	EXPECT_EINVAL(ferry_fds_send(sv[0], h, 1, fds, FERRY_FDS_MAX + 1, 0), "nfds");
	EXPECT_EINVAL(ferry_fds_send(sv[0], h, 1, NULL, 1, 0), "fds");
	EXPECT_EINVAL(ferry_fds_send(sv[0], h, 1, bad, 1, 0), "fds[0]");
	EXPECT_EINVAL(ferry_fds_recv(sv[1], NULL, 1, fds, 1, &n, 0), "hdr");
	EXPECT_EINVAL(ferry_fds_recv(sv[1], h, 0, fds, 1, &n, 0), "len 0");
	EXPECT_EINVAL(ferry_fds_recv(sv[1], h, 4097, fds, 1, &n, 0), "len 4097");
	EXPECT_EINVAL(ferry_fds_recv(sv[1], h, 1, NULL, 1, &n, 0), "fds");
	EXPECT_EINVAL(ferry_fds_recv(sv[1], h, 1, fds, 1, NULL, 0), "nfds");

	/* Not a socket, not a unix socket, not stream/seqpacket. */
	int p[2], inet = socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0), dg[2];
	cr_assert_eq(pipe2(p, O_CLOEXEC), 0);
	cr_assert_eq(socketpair(AF_UNIX, SOCK_DGRAM | SOCK_CLOEXEC, 0, dg), 0);
	EXPECT_EINVAL(ferry_fds_send(p[1], h, 1, NULL, 0, 0), "not a socket");
	EXPECT_EINVAL(ferry_fds_recv(p[0], h, 1, NULL, 0, &n, 0), "not a socket");
	if (inet >= 0) {
		EXPECT_EINVAL(ferry_fds_send(inet, h, 1, NULL, 0, 0), "not a unix socket");
		close(inet);
	}
	EXPECT_EINVAL(ferry_fds_send(dg[0], h, 1, NULL, 0, 0), "SOCK_SEQPACKET");
	EXPECT_EINVAL(ferry_fds_recv(dg[1], h, 1, NULL, 0, &n, 0), "SOCK_SEQPACKET");
	close_pair(p);
	close_pair(dg);

	/* Not file descriptors at all. */
	cr_expect_eq(ferry_fds_send(-1, h, 1, NULL, 0, 0), -EBADF);
	cr_expect_eq(ferry_fds_recv(-1, h, 1, NULL, 0, &n, 0), -EBADF);
	int closed = dup(sv[0]);
	close(closed);
	cr_expect_eq(ferry_fds_send(closed, h, 1, NULL, 0, 0), -EBADF, "%s", ferry_errmsg());
	/* An fd to pass that is not open. */
	cr_expect_eq(ferry_fds_send(sv[0], h, 1, &closed, 1, 0), -EBADF, "%s", ferry_errmsg());
	close_pair(sv);
	tu_baseline_check(&b);
}

/* Raw sendmsg of @len bytes with @nfds copies of @fd, as a foreign peer would. */
static ssize_t raw_send(int sock, const void *buf, size_t len, int fd, unsigned nfds)
{
	union {
		struct cmsghdr align;
		char buf[CMSG_SPACE(sizeof(int) * 64)];
	} ctl;
	struct iovec iov = { .iov_base = (void *)buf, .iov_len = len };
	struct msghdr mh = { .msg_iov = &iov, .msg_iovlen = 1 };
	if (nfds) {
		memset(&ctl, 0, sizeof(ctl));
		mh.msg_control = ctl.buf;
		mh.msg_controllen = CMSG_SPACE(sizeof(int) * nfds);
		struct cmsghdr *c = CMSG_FIRSTHDR(&mh);
		c->cmsg_level = SOL_SOCKET;
		c->cmsg_type = SCM_RIGHTS;
		c->cmsg_len = CMSG_LEN(sizeof(int) * nfds);
		for (unsigned i = 0; i < nfds; i++)
			memcpy(CMSG_DATA(c) + i * sizeof(int), &fd, sizeof(int));
	}
	return sendmsg(sock, &mh, MSG_NOSIGNAL);
}

Test(fdpass, rejects_foreign_messages_and_closes_their_fds)
{
	struct tu_baseline b;
	tu_baseline_take(&b);
	int fd = tagged_fd(1);
	struct tu_baseline mid;
	tu_baseline_take(&mid);
	for (int t = 0; t < 2; t++) {
		int sv[2], in[FERRY_FDS_MAX];
		unsigned n;
		char h[8];
		struct {
			struct frame fr;
			char hdr[8];
		} msg = { { FRAME_MAGIC, 8, FERRY_FDS_MAX }, "abcdefg" };

		/* Not our frame at all. */
		make_pair(types[t], sv);
		cr_assert_eq(raw_send(sv[0], "hello, world!!!!", 16, fd, 2), 16);
		cr_expect_eq(ferry_fds_recv(sv[1], h, 8, in, FERRY_FDS_MAX, &n, SEC), -EBADMSG,
			     "%s: %s", tname(types[t]), ferry_errmsg());
		cr_expect(strstr(ferry_errmsg(), "not a ferry") != NULL, "message: %s", ferry_errmsg());
		close_pair(sv);

		/* More fds than a frame may announce (fits our control buffer). */
		make_pair(types[t], sv);
		cr_assert_eq(raw_send(sv[0], &msg, sizeof(msg), fd, 20), (ssize_t)sizeof(msg));
		cr_expect_eq(ferry_fds_recv(sv[1], h, 8, in, FERRY_FDS_MAX, &n, SEC), -EBADMSG,
			     "%s: %s", tname(types[t]), ferry_errmsg());
		cr_expect_eq(n, 0);
		close_pair(sv);

		/* Far more: the kernel truncates the control data (MSG_CTRUNC). */
		make_pair(types[t], sv);
		cr_assert_eq(raw_send(sv[0], &msg, sizeof(msg), fd, 64), (ssize_t)sizeof(msg));
		cr_expect_eq(ferry_fds_recv(sv[1], h, 8, in, FERRY_FDS_MAX, &n, SEC), -EBADMSG,
			     "%s: %s", tname(types[t]), ferry_errmsg());
		cr_expect(strstr(ferry_errmsg(), "truncated") != NULL, "message: %s", ferry_errmsg());
		close_pair(sv);

		/* A frame that announces fds that never came. */
		make_pair(types[t], sv);
		msg.fr.nfds = 2;
		cr_assert_eq(raw_send(sv[0], &msg, sizeof(msg), fd, 1), (ssize_t)sizeof(msg));
		cr_expect_eq(ferry_fds_recv(sv[1], h, 8, in, FERRY_FDS_MAX, &n, SEC), -EBADMSG,
			     "%s: %s", tname(types[t]), ferry_errmsg());
		cr_expect(strstr(ferry_errmsg(), "announced 2") != NULL, "message: %s", ferry_errmsg());
		close_pair(sv);
		tu_baseline_check(&mid);
	}
	close(fd);
	tu_baseline_check(&b);
}

Test(fdpass, rejects_unexpected_control_messages)
{
	struct tu_baseline b;
	tu_baseline_take(&b);
	for (int t = 0; t < 2; t++) {
		int sv[2], fds[2] = { tagged_fd(1), tagged_fd(2) }, in[2];
		unsigned n = 99;
		char h[4] = "abc";
		make_pair(types[t], sv);
		int on = 1;
		cr_assert_eq(setsockopt(sv[1], SOL_SOCKET, SO_PASSCRED, &on, sizeof(on)), 0);
		cr_assert_eq(ferry_fds_send(sv[0], h, 4, fds, 2, SEC), 0, "%s", ferry_errmsg());
		close(fds[0]);
		close(fds[1]);
		struct tu_baseline mid;
		tu_baseline_take(&mid);
		cr_expect_eq(ferry_fds_recv(sv[1], h, 4, in, 2, &n, SEC), -EBADMSG, "%s: %s",
			     tname(types[t]), ferry_errmsg());
		cr_expect_eq(n, 0);
		cr_expect(strstr(ferry_errmsg(), "unexpected control message") != NULL, "message: %s",
			  ferry_errmsg());
		tu_baseline_check(&mid);
		close_pair(sv);
	}
	tu_baseline_check(&b);
}

Test(fdpass, stream_reassembles_a_message_split_across_reads)
{
	struct tu_baseline b;
	tu_baseline_take(&b);
	int sv[2], fd = tagged_fd(7), in[2];
	unsigned n = 0;
	struct {
		struct frame fr;
		char hdr[8];
	} msg = { { FRAME_MAGIC, 8, 1 }, "splitme" };
	char h[8];
	make_pair(SOCK_STREAM, sv);

	/* The fds ride on the first of three pieces. */
	cr_assert_eq(raw_send(sv[0], &msg, 3, fd, 1), 3);
	cr_assert_eq(raw_send(sv[0], (char *)&msg + 3, 7, fd, 0), 7);
	cr_assert_eq(raw_send(sv[0], (char *)&msg + 10, sizeof(msg) - 10, fd, 0),
		     (ssize_t)sizeof(msg) - 10);
	cr_assert_eq(ferry_fds_recv(sv[1], h, 8, in, 2, &n, SEC), 0, "%s", ferry_errmsg());
	cr_expect_eq(n, 1);
	cr_expect_str_eq(h, "splitme");
	cr_expect_eq(fd_tag(in[0]), 7);
	close(in[0]);

	/* A 4096-byte header through the smallest send buffer arrives in pieces. */
	int sz = 1;
	cr_assert_eq(setsockopt(sv[0], SOL_SOCKET, SO_SNDBUF, &sz, sizeof(sz)), 0);
	static char big[4096], got[4096];
	memset(big, 'z', sizeof(big));
	cr_assert_eq(ferry_fds_send(sv[0], big, sizeof(big), &fd, 1, SEC), 0, "%s", ferry_errmsg());
	cr_assert_eq(ferry_fds_recv(sv[1], got, sizeof(got), in, 2, &n, SEC), 0, "%s",
		     ferry_errmsg());
	cr_expect_eq(n, 1);
	cr_expect_arr_eq(got, big, sizeof(big));
	close(in[0]);

	/*
	 * fds in the middle of a message mean the framing is broken. (fds in
	 * the middle of the frame would be glued by the kernel onto the read
	 * that starts the message, so put them in the header's part.)
	 */
	struct tu_baseline mid;
	tu_baseline_take(&mid);
	cr_assert_eq(raw_send(sv[0], &msg, 10, fd, 0), 10);
	cr_assert_eq(raw_send(sv[0], (char *)&msg + 10, sizeof(msg) - 10, fd, 2),
		     (ssize_t)sizeof(msg) - 10);
	cr_expect_eq(ferry_fds_recv(sv[1], h, 8, in, 2, &n, SEC), -EBADMSG, "%s", ferry_errmsg());
	cr_expect(strstr(ferry_errmsg(), "middle") != NULL, "message: %s", ferry_errmsg());
	tu_baseline_check(&mid);
	close(fd);
	close_pair(sv);
	tu_baseline_check(&b);
}

Test(fdpass, stream_message_cut_by_the_timeout_is_eproto)
{
	struct tu_baseline b;
	tu_baseline_take(&b);
	int sv[2], fd = tagged_fd(1), in[1];
	unsigned n;
	struct frame fr = { FRAME_MAGIC, 8, 1 };
	char h[8];
	make_pair(SOCK_STREAM, sv);
	cr_assert_eq(raw_send(sv[0], &fr, sizeof(fr), fd, 1), (ssize_t)sizeof(fr));
	close(fd);
	int64_t t0 = tu_now_ns();
	cr_expect_eq(ferry_fds_recv(sv[1], h, 8, in, 1, &n, 20 * MS), -EPROTO, "%s", ferry_errmsg());
	cr_expect_geq(tu_now_ns() - t0, 20 * MS);
	cr_expect(strstr(ferry_errmsg(), "out of sync") != NULL, "message: %s", ferry_errmsg());
	/* A peer that closes mid-message: -EPIPE. */
	cr_assert_eq(raw_send(sv[0], &fr, sizeof(fr), -1, 0), (ssize_t)sizeof(fr));
	close(sv[0]);
	cr_expect_eq(ferry_fds_recv(sv[1], h, 8, in, 1, &n, SEC), -EPIPE, "%s", ferry_errmsg());
	close(sv[1]);
	tu_baseline_check(&b);
}

/* ---- between processes and threads ---- */

struct peer {
	int sock, other;
	int type;
};

/* Receives a memfd and a pipe end, checks the memfd, writes through both. */
static int receiver(void *arg)
{
	struct peer *p = arg;
	if (p->other >= 0)
		close(p->other);
	int in[FERRY_FDS_MAX];
	unsigned n = 0;
	uint32_t h = 0;
	if (ferry_fds_recv(p->sock, &h, sizeof(h), in, FERRY_FDS_MAX, &n, 5 * SEC) != 0)
		return 1;
	if (h != 0xfe77 || n != 2)
		return 2;
	char buf[6] = "";
	if (pread(in[0], buf, 5, 0) != 5 || strcmp(buf, "hello") != 0)
		return 3;
	if (pwrite(in[0], "HELLO", 5, 0) != 5)
		return 4;
	if (write(in[1], "!", 1) != 1)
		return 5;
	/* And back: an fd this side made. */
	int mine = memfd_create("back", MFD_CLOEXEC);
	if (mine < 0 || ftruncate(mine, 77) < 0)
		return 6;
	h = 0xbac;
	if (ferry_fds_send(p->sock, &h, sizeof(h), &mine, 1, 5 * SEC) != 0)
		return 7;
	close(mine);
	close(in[0]);
	close(in[1]);
	return 0;
}

static void *receiver_thread(void *arg)
{
	return (void *)(intptr_t)receiver(arg);
}

/* The sending side of receiver(); @wait_peer joins it and returns its result. */
static void sender(int sock, int type, int (*wait_peer)(void *), void *arg)
{
	int mfd = memfd_create("there", MFD_CLOEXEC), p[2];
	cr_assert_geq(mfd, 0);
	cr_assert_eq(pwrite(mfd, "hello", 5, 0), 5);
	cr_assert_eq(pipe2(p, O_CLOEXEC), 0);
	int out[2] = { mfd, p[1] };
	uint32_t h = 0xfe77;
	cr_assert_eq(ferry_fds_send(sock, &h, sizeof(h), out, 2, 5 * SEC), 0, "%s: %s",
		     tname(type), ferry_errmsg());
	close(p[1]);
	int back = -1;
	unsigned n = 0;
	cr_expect_eq(ferry_fds_recv(sock, &h, sizeof(h), &back, 1, &n, 5 * SEC), 0, "%s: %s",
		     tname(type), ferry_errmsg());
	cr_expect_eq(h, 0xbac);
	cr_expect_eq(n, 1);
	cr_expect_eq(wait_peer(arg), 0, "%s: the peer failed", tname(type));
	char buf[6] = "";
	cr_expect_eq(pread(mfd, buf, 5, 0), 5);
	cr_expect_str_eq(buf, "HELLO");
	cr_expect_eq(read(p[0], buf, 1), 1);
	cr_expect_eq(buf[0], '!');
	if (n == 1) {
		cr_expect_eq(fd_tag(back), 77);
		expect_cloexec(back);
		close(back);
	}
	close(mfd);
	close(p[0]);
}

static int join_child(void *arg)
{
	int st = tu_wait(*(pid_t *)arg, 10000);
	return st != -1 && WIFEXITED(st) ? WEXITSTATUS(st) : 100;
}

static int join_thread(void *arg)
{
	void *ret;
	pthread_join(*(pthread_t *)arg, &ret);
	return (int)(intptr_t)ret;
}

Test(fdpass, passes_fds_between_processes)
{
	struct tu_baseline b;
	tu_baseline_take(&b);
	for (int t = 0; t < 2; t++) {
		int sv[2];
		make_pair(types[t], sv);
		struct peer p = { .sock = sv[1], .other = sv[0], .type = types[t] };
		pid_t pid = tu_fork(receiver, &p);
		close(sv[1]);
		sender(sv[0], types[t], join_child, &pid);
		close(sv[0]);
	}
	tu_baseline_check(&b);
}

Test(fdpass, passes_fds_between_threads)
{
	struct tu_baseline b;
	tu_baseline_take(&b);
	for (int t = 0; t < 2; t++) {
		int sv[2];
		make_pair(types[t], sv);
		struct peer p = { .sock = sv[1], .other = -1, .type = types[t] };
		pthread_t th;
		cr_assert_eq(pthread_create(&th, NULL, receiver_thread, &p), 0);
		sender(sv[0], types[t], join_thread, &th);
		close_pair(sv);
	}
	tu_baseline_check(&b);
}
