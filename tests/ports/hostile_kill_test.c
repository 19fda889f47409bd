/*
 * tests/ports/hostile_kill_test.c - a peer process SIGKILLed at random points
 * of posting, transferring and closing, round after round.
 *
 * Each round forks a poster that holds one end of a fresh channel and posts
 * as fast as it can: raw records, clones (some spilled to a segment), clones
 * moving a segment buffer, sharing a buffer, or moving a port with a message
 * queued on it; every message is stamped with its sequence number and a
 * checksum, and after each post that returned 0 the poster publishes its
 * count in shared memory. Some rounds the poster closes its port and exits by
 * itself. The survivor receives all along and kills the poster at a random
 * moment, then checks:
 *   - every message arrives at most once, in order, complete (checksum);
 *   - every message whose post returned arrived (the count; one more may
 *     arrive: killed between the commit and the count's store);
 *   - the end is -EPIPE, reached without waiting on the dead peer;
 *   - fds and memfd mappings are back where the round started.
 * Rounds: FERRY_HOSTILE_KILL_ROUNDS (default 1000; 300 under sanitizers).
 * A thread cannot be killed on its own, so this has no thread form; a thread
 * worker is trusted (docs/security.md).
 */
#include <ferry.h>

#include "ports/port_int.h"
#include "util/util.h"

#include <criterion/criterion.h>
#include <errno.h>
#include <poll.h>
#include <signal.h>
#include <stdatomic.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

static struct tu_baseline base;

static void setup(void)
{
	tu_baseline_take(&base);
}

static void teardown(void)
{
	tu_baseline_check(&base);
}

TestSuite(hostile_kill, .init = setup, .fini = teardown, .timeout = 300);

#define MS (1000LL * 1000)
#define SEC (1000LL * MS)

#if defined(__SANITIZE_ADDRESS__) || defined(__SANITIZE_THREAD__)
#define DEFAULT_ROUNDS 300
#else
#define DEFAULT_ROUNDS 1000
#endif

static uint64_t mix(uint64_t x)
{
	x ^= x >> 33;
	x *= 0xff51afd7ed558ccdull;
	x ^= x >> 33;
	x *= 0xc4ceb9fe1a85ec53ull;
	return x ^ (x >> 33);
}

/* Byte @i of the payload of message @seq of round @round. */
static unsigned char byte_at(uint64_t round, uint64_t seq, size_t i)
{
	return (unsigned char)((round * 31 + seq * 131 + i * 7 + 1) ^ (i >> 8));
}

static void fill(unsigned char *d, size_t n, uint64_t round, uint64_t seq)
{
	for (size_t i = 0; i < n; i++)
		d[i] = byte_at(round, seq, i);
}

static uint64_t checksum(const unsigned char *d, size_t n)
{
	uint64_t h = 1469598103934665603ull;
	for (size_t i = 0; i < n; i++)
		h = (h ^ d[i]) * 1099511628211ull;
	return h;
}

enum kind { K_RAW, K_CLONE, K_SPILL, K_MOVE, K_SHARED, K_PORT, K_NKINDS };
static const char *const kind_names[K_NKINDS] = { "raw", "clone", "spilled clone", "moved buffer",
						  "shared buffer", "moved port" };

/* The kind and payload size of message @seq. */
static enum kind kind_of(uint64_t round, uint64_t seq, size_t *len)
{
	uint64_t h = mix(round * 1000003 + seq);
	enum kind k;
	switch (h % 16) {
	case 0: k = K_SPILL; break;
	case 1: case 2: k = K_MOVE; break;
	case 3: k = K_SHARED; break;
	case 4: k = K_PORT; break;
	case 5: case 6: case 7: case 8: k = K_CLONE; break;
	default: k = K_RAW; break;
	}
	size_t n;
	switch (k) {
	case K_RAW: n = (h >> 8) % 2048; break;
	case K_CLONE: n = (h >> 8) % 8192; break;
	case K_SPILL: n = 200 * 1024 + (h >> 8) % 65536; break;
	case K_MOVE: n = FERRY_BUF_SEG_MIN + (h >> 8) % 65536; break;
	case K_SHARED: n = 4096 + (h >> 8) % 8192; break;
	default: n = 64 + (h >> 8) % 256; break;
	}
	*len = n;
	return k;
}

struct shared {
	_Atomic uint64_t posted;  /* posts that returned 0 */
	_Atomic uint32_t started;
};

struct poster_arg {
	struct shared *sh;
	uint64_t round;
	uint64_t close_after; /* 0: never close by itself */
};

/* One message; 0 on success. */
static int post_one(ferry_port *p, uint64_t round, uint64_t seq)
{
	size_t n;
	enum kind k = kind_of(round, seq, &n);
	if (k == K_RAW) {
		unsigned char *d = malloc(16 + n + 8);
		memcpy(d, &seq, 8);
		uint64_t len = n;
		memcpy(d + 8, &len, 8);
		fill(d + 16, n, round, seq);
		uint64_t c = checksum(d + 16, n);
		memcpy(d + 16 + n, &c, 8);
		int rc = ferry_port_post_bytes(p, d, 16 + n + 8, FERRY_FOREVER);
		free(d);
		return rc;
	}
	ferry_value *v = ferry_value_map();
	ferry_value_map_set(v, "seq", ferry_value_int((int64_t)seq));
	ferry_value_map_set(v, "kind", ferry_value_int(k));
	ferry_buf *b = NULL;
	ferry_port *x = NULL, *y = NULL;
	struct ferry_xfer xf = { 0 };
	uint64_t c = 0;
	if (k == K_CLONE || k == K_SPILL) {
		ferry_value *bytes = ferry_value_bytes(NULL, n);
		unsigned char *d = ferry_value_get_bytes(bytes, NULL);
		fill(d, n, round, seq);
		c = checksum(d, n);
		ferry_value_map_set(v, "data", bytes);
	} else if (k == K_MOVE || k == K_SHARED) {
		if (ferry_buf_create(&b, n, k == K_SHARED ? FERRY_BUF_SHARED : 0))
			return -ENOMEM;
		fill(ferry_buf_data(b), n, round, seq);
		c = checksum(ferry_buf_data(b), n);
		ferry_value_map_set(v, "data",
				    ferry_value_handle(k == K_SHARED ? FERRY_VALUE_SHARED : FERRY_VALUE_BUF, b));
		if (k == K_MOVE) {
			xf.bufs = &b;
			xf.nbufs = 1;
		}
	} else { /* a port with one message queued on it */
		if (ferry_channel(&x, &y, NULL))
			return -ENOMEM;
		unsigned char d[512];
		fill(d, n, round, seq);
		c = checksum(d, n);
		if (ferry_port_post_bytes(x, d, n, 0))
			return -EIO;
		ferry_value_map_set(v, "data", ferry_value_handle(FERRY_VALUE_PORT, y));
		xf.ports = &y;
		xf.nports = 1;
	}
	ferry_value_map_set(v, "sum", ferry_value_int((int64_t)(c >> 1)));
	int rc = ferry_port_post(p, v, &xf, FERRY_FOREVER);
	ferry_value_free(v);
	ferry_buf_free(b);
	ferry_port_destroy(y);
	/* x stays open (the port's peer, held by this process until it dies) */
	return rc;
}

static int poster(ferry_port *p, struct poster_arg *a)
{
	atomic_store(&a->sh->started, 1);
	for (uint64_t seq = 0;; seq++) {
		if (a->close_after && seq == a->close_after) {
			ferry_port_close(p);
			return 0;
		}
		int rc = post_one(p, a->round, seq);
		if (rc)
			return rc == -EPIPE ? 0 : 10;
		/* release: the count follows the post it counts */
		atomic_store_explicit(&a->sh->posted, seq + 1, memory_order_release);
		/* what the survivor posts to us: read it now and then */
		ferry_msg *m = NULL;
		if (ferry_port_recv(p, &m, 0) == 0)
			ferry_msg_free(m);
	}
}

/* Check message @m against what message @seq must be. */
static void verify(const ferry_msg *m, uint64_t round, uint64_t seq, unsigned *kinds)
{
	size_t n;
	enum kind k = kind_of(round, seq, &n);
	kinds[k]++;
	if (k == K_RAW) {
		cr_assert_eq(ferry_msg_value(m), NULL, "round %llu seq %llu: a clone where raw bytes were posted",
			     (unsigned long long)round, (unsigned long long)seq);
		const unsigned char *d = ferry_msg_data(m);
		cr_assert_eq(ferry_msg_len(m), 16 + n + 8, "round %llu seq %llu: raw length",
			     (unsigned long long)round, (unsigned long long)seq);
		uint64_t got, len, c;
		memcpy(&got, d, 8);
		memcpy(&len, d + 8, 8);
		memcpy(&c, d + 16 + n, 8);
		cr_assert_eq(got, seq, "round %llu: raw message %llu where %llu was due (lost, duplicated "
			     "or reordered)", (unsigned long long)round, (unsigned long long)got,
			     (unsigned long long)seq);
		cr_assert_eq(len, n);
		cr_assert_eq(c, checksum(d + 16, n), "round %llu seq %llu: raw payload corrupt",
			     (unsigned long long)round, (unsigned long long)seq);
		return;
	}
	const ferry_value *v = ferry_msg_value(m);
	cr_assert_not_null(v, "round %llu seq %llu: raw bytes where a %s was posted",
			   (unsigned long long)round, (unsigned long long)seq, kind_names[k]);
	int64_t got = -1, kind = -1, sum = -1;
	ferry_value_get_int(ferry_value_map_get(v, "seq"), &got);
	ferry_value_get_int(ferry_value_map_get(v, "kind"), &kind);
	ferry_value_get_int(ferry_value_map_get(v, "sum"), &sum);
	cr_assert_eq(got, (int64_t)seq, "round %llu: message %lld where %llu was due (lost, duplicated "
		     "or reordered)", (unsigned long long)round, (long long)got, (unsigned long long)seq);
	cr_assert_eq(kind, k);
	const ferry_value *data = ferry_value_map_get(v, "data");
	uint64_t c = 0;
	if (k == K_CLONE || k == K_SPILL) {
		size_t len;
		const unsigned char *d = ferry_value_get_bytes(data, &len);
		cr_assert_eq(len, n);
		c = checksum(d, len);
	} else if (k == K_MOVE || k == K_SHARED) {
		enum ferry_value_kind hk;
		ferry_buf *b = ferry_value_get_handle(data, &hk);
		cr_assert_not_null(b);
		cr_assert_eq(hk, k == K_SHARED ? FERRY_VALUE_SHARED : FERRY_VALUE_BUF);
		cr_assert_eq(ferry_buf_len(b), n);
		c = checksum(ferry_buf_data(b), n);
	} else {
		enum ferry_value_kind hk;
		ferry_port *q = ferry_value_get_handle(data, &hk);
		cr_assert_not_null(q);
		cr_assert_eq(hk, FERRY_VALUE_PORT);
		/* the message queued on it moved with it, whole */
		ferry_msg *qm = NULL;
		int rc = ferry_port_recv(q, &qm, 5 * SEC);
		cr_assert_eq(rc, 0, "round %llu seq %llu: the moved port's queued message: %d %s",
			     (unsigned long long)round, (unsigned long long)seq, rc, ferry_errmsg());
		cr_assert_eq(ferry_msg_len(qm), n);
		c = checksum(ferry_msg_data(qm), n);
		ferry_msg_free(qm);
	}
	cr_assert_eq((int64_t)(c >> 1), sum, "round %llu seq %llu: %s payload corrupt",
		     (unsigned long long)round, (unsigned long long)seq, kind_names[k]);
}

/* The bystander: a live process at the other end of another channel, which
 * echoes what it gets. Every round talks to it while posters die around it. */
static int echo_peer(ferry_port *p)
{
	for (;;) {
		ferry_msg *m = NULL;
		int rc = ferry_port_recv(p, &m, 60 * SEC);
		if (rc == -EPIPE)
			return 0;
		if (rc)
			return 10;
		rc = ferry_port_post(p, ferry_msg_value(m), NULL, 10 * SEC);
		ferry_msg_free(m);
		if (rc)
			return 11;
	}
}

static void echo_check(ferry_port *e, int round)
{
	ferry_value *v = ferry_value_int(round);
	cr_assert_eq(ferry_port_post(e, v, NULL, 10 * SEC), 0, "round %d: the bystander: %s", round,
		     ferry_errmsg());
	ferry_msg *m = NULL;
	cr_assert_eq(ferry_port_recv(e, &m, 10 * SEC), 0, "round %d: the bystander: %s", round, ferry_errmsg());
	cr_assert(ferry_value_equal(v, ferry_msg_value(m)), "round %d: the bystander's echo is wrong", round);
	ferry_msg_free(m);
	ferry_value_free(v);
}

static int rounds_from_env(void)
{
	const char *e = getenv("FERRY_HOSTILE_KILL_ROUNDS");
	int n = e ? atoi(e) : 0;
	return n > 0 ? n : DEFAULT_ROUNDS;
}

Test(hostile_kill, killed_poster_loses_nothing_it_posted)
{
	int rounds = rounds_from_env();
	struct shared *sh = tu_shared_alloc(sizeof *sh);
	unsigned kinds[K_NKINDS] = { 0 };
	uint64_t total = 0, extra = 0, self_closed = 0, before_first = 0;
	int64_t t0 = tu_now_ns();
	ferry_port *ea, *eb;
	cr_assert_eq(ferry_channel(&ea, &eb, NULL), 0);
	fflush(NULL);
	pid_t echo = fork();
	cr_assert_geq(echo, 0);
	if (echo == 0) {
		ferry__port_keep_only(eb);
		_exit(echo_peer(eb));
	}
	ferry__port_forget(eb);
	for (int round = 0; round < rounds; round++) {
		struct tu_baseline rb;
		tu_baseline_take(&rb);
		uint64_t h = mix((uint64_t)round ^ 0xabcdefull);
		atomic_store(&sh->posted, 0);
		atomic_store(&sh->started, 0);
		ferry_port *a, *b;
		cr_assert_eq(ferry_channel(&a, &b, NULL), 0);
		struct poster_arg arg = { sh, (uint64_t)round, h % 5 == 0 ? 1 + (h >> 8) % 40 : 0 };
		fflush(NULL);
		pid_t pid = fork();
		cr_assert_geq(pid, 0);
		if (pid == 0) {
			ferry__port_keep_only(b);
			_exit(poster(b, &arg));
		}
		ferry__port_forget(b);
		int fd = ferry_port_fd(a);
		/* kill at a random moment: 0 to ~4 ms after the fork */
		int64_t kill_at = tu_now_ns() + (int64_t)((h >> 16) % 4000) * 1000;
		bool killed = false;
		uint64_t seq = 0;
		int64_t give_up = tu_now_ns() + 30 * SEC;
		for (;;) {
			ferry_msg *m = NULL;
			int rc = ferry_port_recv(a, &m, 0);
			if (rc == 0) {
				verify(m, (uint64_t)round, seq, kinds);
				ferry_msg_free(m);
				seq++;
				continue;
			}
			cr_assert(rc == -EAGAIN || rc == -EPIPE, "round %d: recv gave %d (%s) %s", round, rc,
				  ferry_strerror(rc), ferry_errmsg());
			if (rc == -EPIPE)
				break;
			cr_assert_lt(tu_now_ns(), give_up, "round %d: no -EPIPE 30 s after the kill", round);
			if (!killed && tu_now_ns() >= kill_at) {
				kill(pid, SIGKILL);
				killed = true;
			}
			/* and post to it now and then: never blocks on a dying peer */
			if (seq % 8 == 1) {
				rc = ferry_port_post_bytes(a, &seq, sizeof seq, 0);
				cr_assert(rc == 0 || rc == -EAGAIN || rc == -EPIPE, "round %d: post gave %d",
					  round, rc);
			}
			struct pollfd pfd = { .fd = fd, .events = POLLIN };
			poll(&pfd, 1, 1);
		}
		if (!killed)
			kill(pid, SIGKILL);
		int st = tu_wait(pid, 10000);
		cr_assert_neq(st, -1, "round %d: the poster did not end", round);
		cr_assert(WIFSIGNALED(st) || (WIFEXITED(st) && WEXITSTATUS(st) == 0),
			  "round %d: the poster failed on its own: status 0x%x", round, st);
		if (WIFEXITED(st))
			self_closed++;
		uint64_t posted = atomic_load_explicit(&sh->posted, memory_order_acquire);
		cr_assert_geq(seq, posted, "round %d: %llu messages posted, %llu arrived", round,
			      (unsigned long long)posted, (unsigned long long)seq);
		cr_assert_leq(seq, posted + 1, "round %d: %llu arrived, only %llu posted", round,
			      (unsigned long long)seq, (unsigned long long)posted);
		extra += seq - posted;
		before_first += seq == 0;
		total += seq;
		ferry_msg *m = NULL;
		cr_assert_eq(ferry_port_recv(a, &m, 0), -EPIPE, "round %d: -EPIPE is not final", round);
		ferry_port_destroy(a);
		echo_check(ea, round);
		cr_assert_eq(tu_count_fds(), rb.fds, "round %d: %d fds, %d at its start", round,
			     tu_count_fds(), rb.fds);
		cr_assert_eq(tu_count_maps(), rb.maps, "round %d: %d memfd mappings, %d at its start", round,
			     tu_count_maps(), rb.maps);
	}
	ferry_port_destroy(ea);
	int st = tu_wait(echo, 10000);
	cr_expect(st != -1 && WIFEXITED(st) && WEXITSTATUS(st) == 0, "the bystander: status 0x%x", st);
	tu_shared_free(sh, sizeof *sh);
	/* here, not only in the fini: Criterion does not fail a test whose fini does */
	cr_expect_eq(tu_count_fds(), base.fds, "fd leak: %d open now, %d at the start", tu_count_fds(), base.fds);
	cr_expect_eq(tu_count_maps(), base.maps, "mapping leak: %d now, %d at the start", tu_count_maps(),
		     base.maps);
	cr_log_info("%d rounds in %.1f s: %llu messages (raw %u, clone %u, spilled %u, moved buffer %u, "
		    "shared %u, moved port %u); %llu committed but uncounted at the kill; %llu rounds "
		    "closed by the poster itself; %llu rounds killed before the first message",
		    rounds, (double)(tu_now_ns() - t0) / SEC, (unsigned long long)total, kinds[K_RAW],
		    kinds[K_CLONE], kinds[K_SPILL], kinds[K_MOVE], kinds[K_SHARED], kinds[K_PORT],
		    (unsigned long long)extra, (unsigned long long)self_closed,
		    (unsigned long long)before_first);
}
