/*
 * tests/stress/soak_test.c - many channels between threads and processes,
 * carrying random-size clone, transfer and shared messages with checksums,
 * with random closes and kills, for a bounded time.
 *
 * A driver keeps SLOTS workers (thread or process, chosen at random at every
 * spawn) and, until FERRY_SOAK_SECONDS (default 60) have passed, picks a slot
 * and an action:
 *   echo    a burst of messages of random kinds and sizes (raw bytes, clones
 *           up to spilled size, buffers cloned or moved inline or as
 *           segments, shared buffers); the worker checks each (sequence,
 *           checksum) and echoes it back, moving the buffers back; the
 *           driver checks every echo;
 *           either end may take big clones in place (ferry_port_set_zero_copy,
 *           chosen at every spawn);
 *   shared  the worker writes a mark into a shared buffer; the driver sees it;
 *   relay   a fresh channel whose ends go to two workers (thread<->process,
 *           process<->process, ...): one posts a stream of stamped records,
 *           the other checks them in order and reports the count;
 *   kill    a burst, then SIGKILL at a random moment (process workers): the
 *           echoes that arrive must be an in-order, intact prefix, then -EPIPE;
 *   close   the driver ends the worker politely, closes its port abruptly
 *           in the middle of a burst, or the worker closes by itself;
 * and replaces every worker that ended. It fails on any lost, duplicated,
 * reordered or corrupted message, any unexpected error or exit, any wait
 * that runs out (10 s), and fds or memfd mappings not back at the end.
 *
 * The driver runs in a child of the test that starts a fork server first
 * (ferry_init needs a single-threaded process, and a Criterion test process
 * is not one), so process workers are forked safely while thread workers
 * run. It reports through shared memory; the test prints the counts.
 * FERRY_SOAK_SEED makes a run repeatable.
 */
#include <ferry.h>
#include <ferry/runtime.h>

#include "util/util.h"

#include <criterion/criterion.h>
#include <errno.h>
#include <signal.h>
#include <stdarg.h>
#include <stdatomic.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#if defined(__SANITIZE_ADDRESS__)
#include <sanitizer/lsan_interface.h>
#endif

TestSuite(soak, .timeout = 900);

#define MS (1000LL * 1000)
#define SEC (1000LL * MS)
#define WAIT (10 * SEC) /* every wait of the driver; running out is a failure */
#define SLOTS 6
#define BURST_MAX 8

static uint64_t rng_next(uint64_t *s)
{
	uint64_t x = *s;
	x ^= x << 13;
	x ^= x >> 7;
	x ^= x << 17;
	return *s = x;
}

static void fill(unsigned char *d, size_t n, uint64_t seed)
{
	uint64_t x = seed * 0x9e3779b97f4a7c15ull + 1;
	for (size_t i = 0; i < n; i++) {
		if ((i & 7) == 0)
			x = x * 6364136223846793005ull + 1442695040888963407ull;
		d[i] = (unsigned char)(x >> ((i & 7) * 8));
	}
}

static uint64_t checksum(const unsigned char *d, size_t n)
{
	uint64_t h = 1469598103934665603ull;
	for (size_t i = 0; i < n; i++)
		h = (h ^ d[i]) * 1099511628211ull;
	return h >> 1; /* fits an int64 value */
}

/* ---- the report, in memory shared with the test ---- */

enum kind { D_RAW, D_NONE, D_BYTES, D_SPILL, D_BUF_CLONE, D_BUF_MOVE_SMALL, D_BUF_MOVE_SEG, D_SHARED, D_NKINDS };
static const char *const kind_names[D_NKINDS] = {
	"raw", "clone", "bytes", "spilled", "buffer cloned", "buffer moved (inline)",
	"buffer moved (segment)", "shared buffer",
};

struct report {
	_Atomic int failed;
	char why[1024];
	uint64_t seed;
	double seconds;
	uint64_t posted, echoed, bytes, by_kind[D_NKINDS];
	uint64_t shared_marks, relays, relay_msgs, relay_cross;
	uint64_t kills, lost_in_kills, polite, abrupt, self_closed;
	uint64_t spawns_thread, spawns_process;
	int forkserver;
};

static struct report *rep;

static void __attribute__((format(printf, 2, 3), noreturn)) die(int line, const char *fmt, ...)
{
	if (!atomic_exchange(&rep->failed, 1)) {
		int n = snprintf(rep->why, sizeof rep->why, "soak_test.c:%d: ", line);
		va_list ap;
		va_start(ap, fmt);
		vsnprintf(rep->why + n, sizeof rep->why - (size_t)n, fmt, ap);
		va_end(ap);
	}
	fflush(NULL);
	_exit(1);
}

#define CHECK(cond, ...)                          \
	do {                                      \
		if (!(cond))                      \
			die(__LINE__, __VA_ARGS__); \
	} while (0)

/* ---- messages ---- */

enum op { OP_ECHO = 1, OP_SHARED = 2, OP_RELAY_SEND = 3, OP_RELAY_RECV = 4, OP_SELF_CLOSE = 5 };

/* A raw message: seq, length, payload, checksum. */
static int post_raw(ferry_port *p, uint64_t seq, size_t n, uint64_t *sum, int64_t timeout)
{
	unsigned char *d = malloc(24 + n);
	if (!d)
		return -ENOMEM;
	memcpy(d, &seq, 8);
	uint64_t len = n;
	memcpy(d + 8, &len, 8);
	fill(d + 16, n, seq ^ 0x5eed);
	uint64_t c = checksum(d + 16, n);
	memcpy(d + 16 + n, &c, 8);
	int rc = ferry_port_post_bytes(p, d, 24 + n, timeout);
	free(d);
	if (sum)
		*sum = c;
	return rc;
}

/* A raw message's seq if it is intact, else UINT64_MAX. */
static uint64_t raw_check(const ferry_msg *m)
{
	size_t len = ferry_msg_len(m);
	const unsigned char *d = ferry_msg_data(m);
	if (!d || len < 24)
		return UINT64_MAX;
	uint64_t seq, n, c;
	memcpy(&seq, d, 8);
	memcpy(&n, d + 8, 8);
	if (n != len - 24)
		return UINT64_MAX;
	memcpy(&c, d + 16 + n, 8);
	return c == checksum(d + 16, n) ? seq : UINT64_MAX;
}

static int64_t get_int(const ferry_value *m, const char *key)
{
	int64_t v = -1;
	ferry_value_get_int(ferry_value_map_get(m, key), &v);
	return v;
}

/* The checksum of a clone message's "data", by kind; -1 if it is not what
 * the kind says. */
static int64_t data_sum(const ferry_value *m, enum kind k, size_t *len)
{
	const ferry_value *d = ferry_value_map_get(m, "data");
	*len = 0;
	if (k == D_NONE)
		return d ? -1 : 0;
	if (k == D_BYTES || k == D_SPILL) {
		const unsigned char *p = ferry_value_get_bytes(d, len);
		return p || !*len ? (int64_t)checksum(p, *len) : -1;
	}
	enum ferry_value_kind hk;
	ferry_buf *b = ferry_value_get_handle(d, &hk);
	if (!b || hk != (k == D_SHARED ? FERRY_VALUE_SHARED : FERRY_VALUE_BUF))
		return -1;
	*len = ferry_buf_len(b);
	return (int64_t)checksum(ferry_buf_data(b), *len);
}

/* ---- the worker ---- */

/* Receive a relay stream on @q: stamped records 0..n-1 in order, until n
 * or the sender's close. Returns the count, or -1 on a bad record. */
static int64_t relay_recv(ferry_port *q, int64_t n)
{
	for (int64_t i = 0; i < n; i++) {
		ferry_msg *r = NULL;
		int rc = ferry_port_recv(q, &r, 20 * SEC);
		if (rc == -EPIPE)
			return i;
		if (rc)
			return -1;
		uint64_t seq = raw_check(r);
		ferry_msg_free(r);
		if (seq != (uint64_t)i)
			return -1;
	}
	return n;
}

/* A worker given this as its argument takes big clones in place. */
static const int zero_copy_on = 1;

static int soak_worker(ferry_worker_ctx *ctx)
{
	ferry_port *p = ferry_worker_ctx_port(ctx);
	if (ferry_worker_ctx_arg(ctx) && ferry_port_set_zero_copy(p, 1))
		return 29;
	uint64_t expect = 0;
	for (;;) {
		ferry_msg *m = NULL;
		int rc = ferry_port_recv(p, &m, FERRY_FOREVER);
		if (rc == -EPIPE)
			return 0;
		if (rc)
			return 30;
		const ferry_value *v = ferry_msg_value(m);
		if (!v) { /* raw: check, echo */
			uint64_t seq = raw_check(m);
			if (seq != expect)
				return 31;
			expect++;
			rc = ferry_port_post_bytes(p, ferry_msg_data(m), ferry_msg_len(m), FERRY_FOREVER);
			ferry_msg_free(m);
			if (rc == -EPIPE)
				return 0;
			if (rc)
				return 32;
			continue;
		}
		if (ferry_value_kind(v) == FERRY_VALUE_NULL) {
			ferry_msg_free(m);
			return 0;
		}
		int64_t seq = get_int(v, "seq"), op = get_int(v, "op"), kind = get_int(v, "kind");
		if (seq != (int64_t)expect || kind < 0 || kind >= D_NKINDS)
			return 33;
		expect++;
		size_t len;
		int64_t sum = get_int(v, "sum");
		if (op == OP_ECHO || op == OP_SHARED || op == OP_SELF_CLOSE) {
			if (data_sum(v, (enum kind)kind, &len) != sum)
				return 34;
		}
		if (op == OP_ECHO) {
			/* echo the value, moving every plain buffer back */
			ferry_buf *bufs[4];
			size_t nb = 0;
			enum ferry_value_kind hk;
			ferry_buf *b = ferry_value_get_handle(ferry_value_map_get(v, "data"), &hk);
			if (b && hk == FERRY_VALUE_BUF)
				bufs[nb++] = b;
			struct ferry_xfer x = { .bufs = bufs, .nbufs = nb };
			rc = ferry_port_post(p, v, &x, FERRY_FOREVER);
			ferry_msg_free(m);
		} else if (op == OP_SHARED) {
			enum ferry_value_kind hk;
			ferry_buf *b = ferry_value_get_handle(ferry_value_map_get(v, "data"), &hk);
			fill(ferry_buf_data(b), ferry_buf_len(b), (uint64_t)seq ^ 0x3a4b);
			ferry_value *r = ferry_value_map();
			ferry_value_map_set(r, "seq", ferry_value_int(seq));
			ferry_value_map_set(r, "op", ferry_value_int(op));
			rc = ferry_port_post(p, r, NULL, FERRY_FOREVER);
			ferry_value_free(r);
			ferry_msg_free(m);
		} else if (op == OP_RELAY_SEND || op == OP_RELAY_RECV) {
			enum ferry_value_kind hk;
			ferry_port *q = ferry_value_get_handle(ferry_value_map_get(v, "data"), &hk);
			int64_t n = get_int(v, "n"), done = 0;
			if (!q || hk != FERRY_VALUE_PORT)
				return 35;
			if (op == OP_RELAY_SEND) {
				for (; done < n; done++) {
					size_t sz = (size_t)((uint64_t)(done * 2654435761u) % 3000);
					if (post_raw(q, (uint64_t)done, sz, NULL, 20 * SEC))
						break;
				}
			} else {
				done = relay_recv(q, n);
			}
			ferry_msg_free(m); /* closes q: the other end sees -EPIPE after the stream */
			ferry_value *r = ferry_value_map();
			ferry_value_map_set(r, "seq", ferry_value_int(seq));
			ferry_value_map_set(r, "op", ferry_value_int(op));
			ferry_value_map_set(r, "n", ferry_value_int(done));
			rc = ferry_port_post(p, r, NULL, FERRY_FOREVER);
			ferry_value_free(r);
		} else if (op == OP_SELF_CLOSE) {
			ferry_value *r = ferry_value_map();
			ferry_value_map_set(r, "seq", ferry_value_int(seq));
			ferry_value_map_set(r, "op", ferry_value_int(op));
			rc = ferry_port_post(p, r, NULL, FERRY_FOREVER);
			ferry_value_free(r);
			ferry_msg_free(m);
			return rc && rc != -EPIPE ? 36 : 0;
		} else {
			return 37;
		}
		if (rc == -EPIPE)
			return 0;
		if (rc)
			return 38;
	}
}

/* ---- the driver ---- */

struct slot {
	ferry_worker *w;
	int backend;
	uint64_t seq; /* next message to it; its echoes come back in this order */
};

struct pending {
	uint64_t seq;
	enum kind kind;
	int64_t sum;
	size_t len;
};

static uint64_t rng;

static void spawn(struct slot *s)
{
	/* one draw, as before: the backend from bit 0 (seeds keep their runs),
	 * zero-copy receive on the worker's and the driver's end from bits 8, 9 */
	uint64_t r = rng_next(&rng);
	s->backend = r % 2 ? FERRY_PROCESS : FERRY_THREAD;
	struct ferry_worker_opts o = { .backend = s->backend, .entry = soak_worker, .name = "soak",
				       .arg = (r >> 8 & 1) ? (void *)&zero_copy_on : NULL };
	int rc = ferry_worker_spawn(&s->w, &o);
	CHECK(rc == 0, "spawn (%s): %d %s", s->backend ? "process" : "thread", rc, ferry_errmsg());
	rc = ferry_port_set_zero_copy(ferry_worker_port(s->w), (int)(r >> 9 & 1));
	CHECK(rc == 0, "set_zero_copy: %d %s", rc, ferry_errmsg());
	s->seq = 0;
	if (s->backend == FERRY_PROCESS)
		rep->spawns_process++;
	else
		rep->spawns_thread++;
}

/* Join a worker that is ending and check how it ended. */
static void reap(struct slot *s, bool killed)
{
	struct ferry_worker_status st;
	int rc = ferry_worker_join(s->w, &st, WAIT);
	CHECK(rc == 0, "join: %d %s", rc, ferry_errmsg());
	if (killed)
		CHECK(st.signal == SIGKILL || (st.signal == 0 && st.code == 0),
		      "a killed worker ended with code %d signal %d", st.code, st.signal);
	else
		CHECK(st.signal == 0 && st.code == 0, "a %s worker ended with code %d signal %d",
		      s->backend ? "process" : "thread", st.code, st.signal);
	ferry_worker_destroy(s->w);
	s->w = NULL;
}

static enum kind pick_kind(void)
{
	uint64_t r = rng_next(&rng) % 100;
	return r < 25 ? D_RAW : r < 30 ? D_NONE : r < 50 ? D_BYTES : r < 53 ? D_SPILL
	       : r < 65 ? D_BUF_CLONE : r < 75 ? D_BUF_MOVE_SMALL : r < 85 ? D_BUF_MOVE_SEG : D_SHARED;
}

static size_t pick_len(enum kind k)
{
	uint64_t r = rng_next(&rng);
	switch (k) {
	case D_RAW: return r % 4096;
	case D_BYTES: return r % 16384;
	case D_SPILL: return 200 * 1024 + r % (800 * 1024);
	case D_BUF_CLONE: return r % 2 ? r % 4096 : FERRY_BUF_SEG_MIN + r % (256 * 1024);
	case D_BUF_MOVE_SMALL: return r % FERRY_BUF_SEG_MIN;
	case D_BUF_MOVE_SEG: return FERRY_BUF_SEG_MIN + r % (1024 * 1024);
	case D_SHARED: return 64 + r % 65536;
	default: return 0;
	}
}

/* Post one message of kind @k to slot @s with op @op; *@pd says what the
 * answer must be. Shared buffers are kept in *@keep (the driver's handle). */
static int post_msg(struct slot *s, enum kind k, int op, struct pending *pd, ferry_buf **keep)
{
	ferry_port *p = ferry_worker_port(s->w);
	size_t n = pick_len(k);
	pd->seq = s->seq++;
	pd->kind = k;
	pd->len = n;
	if (keep)
		*keep = NULL;
	if (k == D_RAW) {
		uint64_t c;
		int rc = post_raw(p, pd->seq, n, &c, WAIT);
		pd->sum = (int64_t)c;
		rep->posted++;
		rep->bytes += n;
		rep->by_kind[k]++;
		return rc;
	}
	ferry_value *v = ferry_value_map();
	ferry_value_map_set(v, "seq", ferry_value_int((int64_t)pd->seq));
	ferry_value_map_set(v, "op", ferry_value_int(op));
	ferry_value_map_set(v, "kind", ferry_value_int(k));
	ferry_buf *b = NULL;
	struct ferry_xfer x = { 0 };
	int64_t sum = 0;
	if (k == D_BYTES || k == D_SPILL) {
		ferry_value *bytes = ferry_value_bytes(NULL, n);
		unsigned char *d = ferry_value_get_bytes(bytes, NULL);
		fill(d, n, pd->seq);
		sum = (int64_t)checksum(d, n);
		ferry_value_map_set(v, "data", bytes);
	} else if (k != D_NONE) {
		CHECK(ferry_buf_create(&b, n, k == D_SHARED ? FERRY_BUF_SHARED : 0) == 0, "buf_create %zu", n);
		fill(ferry_buf_data(b), n, pd->seq);
		sum = (int64_t)checksum(ferry_buf_data(b), n);
		ferry_value_map_set(v, "data",
				    ferry_value_handle(k == D_SHARED ? FERRY_VALUE_SHARED : FERRY_VALUE_BUF, b));
		if (k == D_BUF_MOVE_SMALL || k == D_BUF_MOVE_SEG) {
			x.bufs = &b;
			x.nbufs = 1;
		}
	}
	ferry_value_map_set(v, "sum", ferry_value_int(sum));
	pd->sum = sum;
	int rc = ferry_port_post(p, v, &x, WAIT);
	ferry_value_free(v);
	if (rc == 0 && x.nbufs)
		CHECK(ferry_buf_is_detached(b) == 1, "a moved buffer is still attached");
	if (keep && k == D_SHARED)
		*keep = b;
	else
		ferry_buf_free(b);
	rep->posted++;
	rep->bytes += n;
	rep->by_kind[k]++;
	return rc;
}

/* Is @m the echo @pd promised? */
static bool echo_ok(const ferry_msg *m, const struct pending *pd)
{
	if (pd->kind == D_RAW)
		return !ferry_msg_value(m) && raw_check(m) == pd->seq && ferry_msg_len(m) == 24 + pd->len;
	const ferry_value *v = ferry_msg_value(m);
	if (!v || get_int(v, "seq") != (int64_t)pd->seq || get_int(v, "kind") != pd->kind ||
	    get_int(v, "sum") != pd->sum)
		return false;
	size_t len;
	return data_sum(v, pd->kind, &len) == pd->sum && len == pd->len;
}

static void recv_echo(struct slot *s, const struct pending *pd, ferry_buf *keep, int i, int n)
{
	ferry_msg *m = NULL;
	int rc = ferry_port_recv(ferry_worker_port(s->w), &m, WAIT);
	CHECK(rc == 0, "echo %d of %d from a %s worker: %d %s", i, n, s->backend ? "process" : "thread",
	      rc, ferry_errmsg());
	CHECK(echo_ok(m, pd), "echo of message %llu (%s, %zu bytes) from a %s worker is lost, "
	      "duplicated, reordered or corrupt", (unsigned long long)pd->seq, kind_names[pd->kind],
	      pd->len, s->backend ? "process" : "thread");
	ferry_msg_free(m);
	ferry_buf_free(keep);
	rep->echoed++;
}

/*
 * Ring bytes a burst may hold unanswered: the worker answers each message
 * before it takes the next, so once its answers fill the ring back, a
 * driver that still posts and has not read waits on a worker that waits on
 * it. A message's ring share is at most its inline body (a big one spills
 * or moves by fd): counted as min(len, 16 KiB), against half the 64 KiB ring.
 */
#define BURST_RING_BUDGET ((size_t)32 * 1024)

static void act_echo(struct slot *s)
{
	struct pending pd[BURST_MAX];
	ferry_buf *keep[BURST_MAX];
	int n = 1 + (int)(rng_next(&rng) % BURST_MAX), done = 0;
	size_t held = 0;
	for (int i = 0; i < n; i++) {
		int rc = post_msg(s, pick_kind(), OP_ECHO, &pd[i], &keep[i]);
		CHECK(rc == 0, "post to a %s worker: %d %s", s->backend ? "process" : "thread", rc, ferry_errmsg());
		held += pd[i].len < 16384 ? pd[i].len : 16384;
		for (; held > BURST_RING_BUDGET && done < i; done++) {
			recv_echo(s, &pd[done], keep[done], done, n);
			held -= pd[done].len < 16384 ? pd[done].len : 16384;
		}
	}
	for (; done < n; done++)
		recv_echo(s, &pd[done], keep[done], done, n);
}

static void act_shared(struct slot *s)
{
	struct pending pd;
	ferry_buf *b;
	int rc = post_msg(s, D_SHARED, OP_SHARED, &pd, &b);
	CHECK(rc == 0, "post shared: %d %s", rc, ferry_errmsg());
	ferry_msg *m = NULL;
	rc = ferry_port_recv(ferry_worker_port(s->w), &m, WAIT);
	CHECK(rc == 0, "shared answer: %d %s", rc, ferry_errmsg());
	CHECK(get_int(ferry_msg_value(m), "seq") == (int64_t)pd.seq, "shared answer out of order");
	ferry_msg_free(m);
	unsigned char *want = malloc(pd.len);
	fill(want, pd.len, pd.seq ^ 0x3a4b);
	CHECK(memcmp(ferry_buf_data(b), want, pd.len) == 0,
	      "the worker's writes to a shared buffer are not visible here");
	free(want);
	ferry_buf_free(b);
	rep->shared_marks++;
}

static void act_relay(struct slot *a, struct slot *b)
{
	ferry_port *x, *y;
	CHECK(ferry_channel(&x, &y, NULL) == 0, "channel: %s", ferry_errmsg());
	int64_t n = 1 + (int64_t)(rng_next(&rng) % 400);
	struct slot *ends[2] = { a, b };
	ferry_port *ports[2] = { x, y };
	uint64_t seqs[2];
	for (int i = 0; i < 2; i++) {
		ferry_value *v = ferry_value_map();
		seqs[i] = ends[i]->seq++;
		ferry_value_map_set(v, "seq", ferry_value_int((int64_t)seqs[i]));
		ferry_value_map_set(v, "op", ferry_value_int(i ? OP_RELAY_RECV : OP_RELAY_SEND));
		ferry_value_map_set(v, "kind", ferry_value_int(D_NONE));
		ferry_value_map_set(v, "n", ferry_value_int(n));
		ferry_value_map_set(v, "data", ferry_value_handle(FERRY_VALUE_PORT, ports[i]));
		struct ferry_xfer xf = { .ports = &ports[i], .nports = 1 };
		int rc = ferry_port_post(ferry_worker_port(ends[i]->w), v, &xf, WAIT);
		ferry_value_free(v);
		CHECK(rc == 0, "post a relay end: %d %s", rc, ferry_errmsg());
		rep->posted++;
	}
	for (int i = 0; i < 2; i++) {
		ferry_msg *m = NULL;
		int rc = ferry_port_recv(ferry_worker_port(ends[i]->w), &m, 4 * WAIT);
		CHECK(rc == 0, "relay answer from the %s: %d %s", i ? "receiver" : "sender", rc, ferry_errmsg());
		const ferry_value *v = ferry_msg_value(m);
		CHECK(get_int(v, "seq") == (int64_t)seqs[i], "relay answer out of order");
		CHECK(get_int(v, "n") == n, "relay %s (%s -> %s) counted %lld of %lld records",
		      i ? "receiver" : "sender", a->backend ? "process" : "thread",
		      b->backend ? "process" : "thread", (long long)get_int(v, "n"), (long long)n);
		ferry_msg_free(m);
	}
	ferry_port_destroy(x);
	ferry_port_destroy(y);
	rep->relays++;
	rep->relay_msgs += (uint64_t)n;
	rep->relay_cross += a->backend != b->backend;
}

static void act_kill(struct slot *s)
{
	struct pending pd[BURST_MAX];
	ferry_buf *keep[BURST_MAX];
	int n = 1 + (int)(rng_next(&rng) % BURST_MAX);
	for (int i = 0; i < n; i++) {
		enum kind k = pick_kind();
		if (k == D_SPILL)
			k = D_BYTES;
		int rc = post_msg(s, k, OP_ECHO, &pd[i], &keep[i]);
		CHECK(rc == 0, "post before a kill: %d %s", rc, ferry_errmsg());
	}
	int64_t kill_at = tu_now_ns() + (int64_t)(rng_next(&rng) % 3000) * 1000;
	bool killed = false;
	int got = 0;
	ferry_port *p = ferry_worker_port(s->w);
	for (;;) {
		ferry_msg *m = NULL;
		int rc = ferry_port_recv(p, &m, killed ? WAIT : MS / 2);
		if (rc == -ETIMEDOUT && !killed) {
			if (tu_now_ns() >= kill_at) {
				kill(ferry_worker_pid(s->w), SIGKILL);
				killed = true;
			}
			continue;
		}
		if (rc == -EPIPE)
			break;
		CHECK(rc == 0, "recv around a kill: %d %s", rc, ferry_errmsg());
		CHECK(got < n, "more echoes than messages around a kill");
		CHECK(echo_ok(m, &pd[got]), "echo %d around a kill is lost, duplicated, reordered or corrupt", got);
		ferry_msg_free(m);
		got++;
		rep->echoed++;
		if (got == n && !killed) {
			kill(ferry_worker_pid(s->w), SIGKILL);
			killed = true;
		}
	}
	CHECK(killed, "-EPIPE from a worker nobody killed");
	for (int i = 0; i < n; i++)
		ferry_buf_free(keep[i]);
	rep->kills++;
	rep->lost_in_kills += (uint64_t)(n - got);
	reap(s, true);
}

static void act_close(struct slot *s)
{
	ferry_port *p = ferry_worker_port(s->w);
	ferry_msg *m = NULL;
	switch (rng_next(&rng) % 3) {
	case 0: { /* politely */
		ferry_value *nul = ferry_value_null();
		int rc = ferry_port_post(p, nul, NULL, WAIT);
		ferry_value_free(nul);
		CHECK(rc == 0, "post null: %d %s", rc, ferry_errmsg());
		rc = ferry_port_recv(p, &m, WAIT);
		CHECK(rc == -EPIPE, "after a polite close: %d %s", rc, ferry_errmsg());
		rep->polite++;
		break;
	}
	case 1: { /* abruptly, in the middle of a burst */
		struct pending pd;
		ferry_buf *keep;
		int rc = post_msg(s, pick_kind(), OP_ECHO, &pd, &keep);
		CHECK(rc == 0, "post before an abrupt close: %d %s", rc, ferry_errmsg());
		ferry_buf_free(keep);
		ferry_port_close(p);
		rep->abrupt++;
		break;
	}
	default: { /* by the worker itself */
		struct pending pd;
		ferry_buf *keep;
		int rc = post_msg(s, D_BYTES, OP_SELF_CLOSE, &pd, &keep);
		CHECK(rc == 0, "post self-close: %d %s", rc, ferry_errmsg());
		rc = ferry_port_recv(p, &m, WAIT);
		CHECK(rc == 0 && get_int(ferry_msg_value(m), "seq") == (int64_t)pd.seq,
		      "self-close answer: %d %s", rc, ferry_errmsg());
		ferry_msg_free(m);
		m = NULL;
		rc = ferry_port_recv(p, &m, WAIT);
		CHECK(rc == -EPIPE, "after the worker closed: %d %s", rc, ferry_errmsg());
		rep->self_closed++;
		break;
	}
	}
	reap(s, false);
}

static int soak_main(double seconds)
{
	struct tu_baseline start;
	tu_baseline_take(&start);
	struct ferry_init_opts io = { .fork_server = 1 };
	rep->forkserver = ferry_init(&io) == 0;
	struct slot slots[SLOTS] = { { 0 } };
	for (int i = 0; i < SLOTS; i++)
		spawn(&slots[i]);
	int64_t t0 = tu_now_ns(), end = t0 + (int64_t)(seconds * SEC);
	while (tu_now_ns() < end) {
		struct slot *s = &slots[rng_next(&rng) % SLOTS];
		uint64_t r = rng_next(&rng) % 100;
		if (r < 62) {
			act_echo(s);
		} else if (r < 70) {
			act_shared(s);
		} else if (r < 80) {
			struct slot *t = &slots[rng_next(&rng) % SLOTS];
			if (t != s)
				act_relay(s, t);
		} else if (r < 90) {
			if (s->backend == FERRY_PROCESS)
				act_kill(s);
			else
				act_close(s);
		} else {
			act_close(s);
		}
		for (int i = 0; i < SLOTS; i++)
			if (!slots[i].w)
				spawn(&slots[i]);
	}
	for (int i = 0; i < SLOTS; i++) {
		ferry_value *nul = ferry_value_null();
		CHECK(ferry_port_post(ferry_worker_port(slots[i].w), nul, NULL, WAIT) == 0, "final close");
		ferry_value_free(nul);
		reap(&slots[i], false);
	}
	rep->seconds = (double)(tu_now_ns() - t0) / SEC;
	ferry_fini();
	int fds = tu_count_fds(), maps = tu_count_maps();
	CHECK(fds == start.fds, "fd leak: %d open at the end, %d at the start", fds, start.fds);
	CHECK(maps == start.maps, "memfd mapping leak: %d at the end, %d at the start", maps, start.maps);
#if defined(__SANITIZE_ADDRESS__)
	CHECK(__lsan_do_recoverable_leak_check() == 0, "LeakSanitizer: the soak leaked memory (report above)");
#endif
	return 0;
}

Test(soak, channels_between_threads_and_processes)
{
	const char *e = getenv("FERRY_SOAK_SECONDS");
	double seconds = e && atof(e) > 0 ? atof(e) : 60;
	e = getenv("FERRY_SOAK_SEED");
	uint64_t seed = e ? strtoull(e, NULL, 0) : (uint64_t)tu_now_ns() ^ (uint64_t)getpid() << 32;
	if (!seed)
		seed = 1;
	rep = tu_shared_alloc(sizeof *rep);
	rep->seed = seed;
	rng = seed;
	fflush(NULL);
	pid_t pid = fork();
	cr_assert_geq(pid, 0);
	if (pid == 0)
		_exit(soak_main(seconds));
	int st = tu_wait(pid, (int)(seconds * 1000) + 300000);
	fprintf(stderr,
		"soak (seed %llu, %.1f s, fork server %s): %llu messages posted, %llu echoes checked, "
		"%.1f MiB; by kind: raw %llu, clone %llu, bytes %llu, spilled %llu, buffer cloned %llu, "
		"moved inline %llu, moved segment %llu, shared %llu; shared marks %llu; relays %llu "
		"(%llu records, %llu between a thread and a process); kills %llu (%llu messages lost "
		"with them); closes: polite %llu, abrupt %llu, by the worker %llu; spawns: thread %llu, "
		"process %llu\n",
		(unsigned long long)rep->seed, rep->seconds, rep->forkserver ? "on" : "off",
		(unsigned long long)rep->posted, (unsigned long long)rep->echoed,
		(double)rep->bytes / (1 << 20), (unsigned long long)rep->by_kind[D_RAW],
		(unsigned long long)rep->by_kind[D_NONE], (unsigned long long)rep->by_kind[D_BYTES],
		(unsigned long long)rep->by_kind[D_SPILL], (unsigned long long)rep->by_kind[D_BUF_CLONE],
		(unsigned long long)rep->by_kind[D_BUF_MOVE_SMALL],
		(unsigned long long)rep->by_kind[D_BUF_MOVE_SEG], (unsigned long long)rep->by_kind[D_SHARED],
		(unsigned long long)rep->shared_marks, (unsigned long long)rep->relays,
		(unsigned long long)rep->relay_msgs, (unsigned long long)rep->relay_cross,
		(unsigned long long)rep->kills, (unsigned long long)rep->lost_in_kills,
		(unsigned long long)rep->polite, (unsigned long long)rep->abrupt,
		(unsigned long long)rep->self_closed, (unsigned long long)rep->spawns_thread,
		(unsigned long long)rep->spawns_process);
	cr_assert_neq(st, -1, "the soak did not end in time (seed %llu)", (unsigned long long)rep->seed);
	cr_assert(!atomic_load(&rep->failed), "%s (seed %llu)", rep->why, (unsigned long long)rep->seed);
	cr_assert(WIFEXITED(st) && WEXITSTATUS(st) == 0, "the soak driver died: status 0x%x (seed %llu)", st,
		  (unsigned long long)rep->seed);
	tu_shared_free(rep, sizeof *rep);
}
