/*
 * Payload rows (group orders 300-399): what a message that carries something
 * costs, next to what the machine charges for the same bytes.
 *
 *   floors     memcpy of 64 B .. 64 MiB (warm, one thread), ferry's own 64 B
 *              raw round trip, and memcpy(1 MiB) followed by that round trip
 *              (the floor of the 1 MiB one-way clone target: as in the clone,
 *              the worker waits out the copy, so in adaptive mode it has gone
 *              to sleep and the round trip includes its wake)
 *   clone      a value referencing a plain buffer (FERRY_VALUE_BUF), posted
 *              without a transfer list; the worker posts what it received
 *              back, cloned again
 *   transfer   the buffer in the transfer list both ways: one logical buffer
 *              ping-pongs (detached on the sending side each time)
 *   shared     a FERRY_BUF_SHARED buffer referenced as FERRY_VALUE_SHARED;
 *              the worker copies word 0 to word 1 and acks with 8 bytes
 *   object     a map of a few dozen mixed fields (~1 KiB of CBOR) echoed back
 *   one way    a 1 MiB clone until the worker has received and decoded it
 *              (acked with 8 bytes)
 * on both backends, all in ferry's default wait mode (adaptive), through the
 * public API only.
 */
#include "bench.h"

#include "ferry/buf.h"
#include "ferry/port.h"
#include "ferry/value.h"
#include "ferry/worker.h"

#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>

#define KIB ((size_t)1024)
#define MIB ((size_t)1024 * 1024)
#define RAW_BYTES 64 /* the raw round trip's message */
#define OBJ_BYTES 1014 /* the size of the 1 KiB object's CBOR today */
#define RAW_MAX 4096   /* the largest raw row */
#define ACK_BYTES 8  /* the worker's ack */

enum pay_kind {
	PK_MEMCPY,    /* memcpy of size bytes, no worker */
	PK_RAW,       /* ferry_port_post_bytes round trip of size bytes (at most RAW_MAX) */
	PK_MEMCPY_RT, /* memcpy(size) then the 64 B round trip */
	PK_CLONE,     /* buffer cloned both ways */
	PK_XFER,      /* buffer transferred both ways */
	PK_SHARED,    /* shared buffer there, 8 B ack back */
	PK_OBJECT,    /* ~1 KiB structured object cloned both ways */
	PK_ONEWAY,    /* buffer cloned there, 8 B ack back */
	PK_ONEWAY_ZC, /* the same to a port set to zero-copy receive */
	PK_WALK,      /* one thread: the object's CBOR walked item by item, nothing built */
	PK_ENCODE,    /* one thread: ferry_clone_encode of the object */
	PK_DECODE,    /* one thread: ferry_clone_decode of it, and ferry_value_free */
};

struct pay_param {
	enum pay_kind kind;
	size_t size;
	int backend;               /* enum ferry_backend */
	enum ferry_wait_mode mode; /* both sides */
};

/* ---- sample counts ----
 * Small payloads take the WAKE count of bench.c; large ones are bounded by
 * the bytes they move per pass, so that a 64 MiB row takes a handful of
 * samples (fewer with --quick) and the whole group stays within minutes. */

static size_t pay_clamp(size_t n, size_t lo, size_t hi)
{
	return n < lo ? lo : n > hi ? hi : n;
}

/* Bytes a row may move per pass: copies (memcpy, clone) are capped lower
 * than moves (transfer, shared), whose cost should not grow with size. */
static size_t pay_cap_bytes(const struct bench_ctx *ctx, enum pay_kind kind)
{
	size_t cap;
	switch (kind) {
	case PK_MEMCPY:
	case PK_XFER:
	case PK_SHARED:
		cap = 2048 * MIB;
		break;
	default:
		cap = 512 * MIB;
		break;
	}
	return ctx->quick ? cap / 4 : cap;
}

static size_t pay_count(const struct bench_ctx *ctx, enum pay_kind kind, size_t bytes)
{
	size_t base = bench_count(ctx, BENCH_WAKE);
	if (kind == PK_MEMCPY)
		base /= 10;
	if (!bytes)
		return base;
	return pay_clamp(pay_cap_bytes(ctx, kind) / bytes, 3, base);
}

static size_t pay_warm(const struct bench_ctx *ctx, size_t n)
{
	return pay_clamp(n / 10, 1, bench_warmup_count(ctx, BENCH_WAKE));
}

/* A round trip row's pass also ends after this long, once it has PAY_MIN
 * samples (its warm-up after a fifth of it, once it made one round): on this
 * machine kind a fresh page costs microseconds, so rows that allocate pages
 * per message can be 100x slower than their byte count suggests, and 50 rows
 * must still fit in a few minutes. bench_stop's row budget applies as well. */
#define PAY_MIN 3
static uint64_t pay_time_cap(const struct bench_ctx *ctx)
{
	return bench_ticks((ctx->quick ? 1000LL : 2000LL) * 1000 * 1000);
}

/* ---- the memcpy floor ---- */

static void *pay_map(size_t len)
{
	void *p = mmap(NULL, len, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
	return p == MAP_FAILED ? NULL : p;
}

/* One copy the compiler can neither drop nor merge with the next. */
static inline void pay_copy(void *dst, const void *src, size_t len)
{
	memcpy(dst, src, len);
	__asm__ __volatile__("" : : "r"(dst), "r"(src) : "memory");
}

static int run_memcpy(struct bench_ctx *ctx, const struct pay_param *prm,
		      struct bench_samples *out)
{
	size_t size = prm->size;
	/* Small copies are timed in batches of ~256 KiB: one 64 B copy is far
	 * below one clock read. A sample is the batch's time per copy. */
	size_t batch = size >= 256 * KIB ? 1 : 256 * KIB / size;
	size_t n = pay_count(ctx, PK_MEMCPY, size * batch);
	size_t warm = pay_clamp(n / 10, 2, 100);
	if (bench_samples_reserve(out, n))
		return bench_fail(ctx, -ENOMEM, "samples");
	unsigned char *src = pay_map(size), *dst = pay_map(size);
	if (!src || !dst) {
		int e = -errno;
		if (src)
			munmap(src, size);
		if (dst)
			munmap(dst, size);
		return bench_fail(ctx, e, "mmap 2 x %zu bytes", size);
	}
	memset(src, 0x5a, size); /* warm: every page faulted in, both sides */
	memset(dst, 0xa5, size);
	for (size_t i = 0; i < warm && !bench_warm_stop(ctx, i); i++)
		for (size_t j = 0; j < batch; j++)
			pay_copy(dst, src, size);
	for (size_t i = 0; i < n && !bench_stop(ctx, i); i++) {
		uint64_t t0 = bench_now();
		for (size_t j = 0; j < batch; j++)
			pay_copy(dst, src, size);
		uint64_t t1 = bench_now();
		bench_samples_add(out, bench_ns(t1 - t0) / (double)batch);
	}
	int bad = dst[0] != 0x5a || dst[size - 1] != 0x5a;
	munmap(src, size);
	munmap(dst, size);
	if (bad)
		return bench_failx(ctx, -EIO, "memcpy of %zu bytes did not copy", size);
	return 0;
}

/* ---- the worker ---- */

enum pw_how {
	PW_ECHO_CLONE = 0, /* post the received value back as is (cloned) */
	PW_ECHO_XFER = 1,  /* keep the received buffer, transfer it back, free it */
	PW_ACK = 2,        /* ack with ACK_BYTES (a shared buffer: copy word 0 to 1 first) */
};

/* What the worker needs; static storage, so that a thread worker that
 * outlives its row never reads freed memory (a process worker has its own
 * copy from the fork). */
struct pw_cfg {
	int cpu;
	int zero_copy; /* ferry_port_set_zero_copy on the worker's port */
	enum ferry_wait_mode mode;
	enum pw_how how;
	int64_t timeout_ns;
};
static struct pw_cfg pw_cfg;

/* The worker's exit codes: 0 on a clean end, else the failing step. */
enum { PW_ESETWAIT = 10, PW_ERECV = 11, PW_EPOST = 12, PW_EUNEXPECTED = 13, PW_EKEEP = 14 };

static void pw_pin(int cpu)
{
	cpu_set_t set;
	CPU_ZERO(&set);
	CPU_SET(cpu, &set);
	(void)sched_setaffinity(0, sizeof set, &set); /* best effort: unpinned still measures */
}

/* Answer one clone message @m (value @v); frees @m. 0, -EPIPE, or an exit code. */
static int pw_reply(ferry_port *p, ferry_msg *m, const ferry_value *v, const struct pw_cfg *cfg)
{
	int r;
	if (cfg->how == PW_ECHO_CLONE) {
		r = ferry_port_post(p, v, NULL, cfg->timeout_ns);
		ferry_msg_free(m);
	} else if (cfg->how == PW_ECHO_XFER) {
		enum ferry_value_kind kind;
		ferry_buf *h = ferry_value_get_handle(v, &kind);
		if (!h || kind != FERRY_VALUE_BUF) {
			ferry_msg_free(m);
			return PW_EUNEXPECTED;
		}
		if (ferry_msg_keep(m, h) != 0) {
			ferry_msg_free(m);
			return PW_EKEEP;
		}
		ferry_buf *const list[1] = { h };
		struct ferry_xfer x = { .bufs = list, .nbufs = 1 };
		r = ferry_port_post(p, v, &x, cfg->timeout_ns);
		ferry_msg_free(m); /* the value goes; h is ours (kept) */
		ferry_buf_free(h); /* detached when the post succeeded */
	} else {
		enum ferry_value_kind kind;
		ferry_buf *h = ferry_value_get_handle(v, &kind);
		if (h && kind == FERRY_VALUE_SHARED && ferry_buf_len(h) >= 2 * sizeof(uint64_t)) {
			unsigned char *d = ferry_buf_data(h);
			memcpy(d + sizeof(uint64_t), d, sizeof(uint64_t));
		}
		static const char ack[ACK_BYTES] = "ack";
		r = ferry_port_post_bytes(p, ack, sizeof ack, cfg->timeout_ns);
		ferry_msg_free(m);
	}
	return r;
}

/* Raw messages are echoed (a 0-length one ends the loop); clone messages are
 * answered as cfg->how says. */
static int pw_entry(ferry_worker_ctx *wc)
{
	const struct pw_cfg *cfg = ferry_worker_ctx_arg(wc);
	ferry_port *p = ferry_worker_ctx_port(wc);
	pw_pin(cfg->cpu);
	if (ferry_port_set_wait(p, cfg->mode, 0) != 0 ||
	    (cfg->zero_copy && ferry_port_set_zero_copy(p, 1) != 0))
		return PW_ESETWAIT;
	for (;;) {
		ferry_msg *m;
		int r = ferry_port_recv(p, &m, cfg->timeout_ns);
		if (r == -EPIPE)
			return 0;
		if (r != 0)
			return PW_ERECV;
		const ferry_value *v = ferry_msg_value(m);
		if (v) {
			r = pw_reply(p, m, v, cfg);
		} else {
			size_t len = ferry_msg_len(m);
			if (len == 0) {
				ferry_msg_free(m);
				return 0;
			}
			r = ferry_port_post_bytes(p, ferry_msg_data(m), len, cfg->timeout_ns);
			ferry_msg_free(m);
		}
		if (r == -EPIPE)
			return 0;
		if (r > 0)
			return r;
		if (r != 0)
			return PW_EPOST;
	}
}

static const char *pw_code_name(int code)
{
	switch (code) {
	case PW_ESETWAIT:
		return " (ferry_port_set_wait or _set_zero_copy failed)";
	case PW_ERECV:
		return " (ferry_port_recv failed)";
	case PW_EPOST:
		return " (its reply post failed)";
	case PW_EUNEXPECTED:
		return " (a message it did not expect)";
	case PW_EKEEP:
		return " (ferry_msg_keep failed)";
	default:
		return "";
	}
}

static int pw_start(struct bench_ctx *ctx, const struct pay_param *prm, ferry_worker **w)
{
	pw_cfg.cpu = ctx->cpu_peer;
	pw_cfg.mode = prm->mode;
	pw_cfg.timeout_ns = ctx->peer_timeout_ns;
	pw_cfg.zero_copy = prm->kind == PK_ONEWAY_ZC;
	switch (prm->kind) {
	case PK_XFER:
		pw_cfg.how = PW_ECHO_XFER;
		break;
	case PK_SHARED:
	case PK_ONEWAY:
	case PK_ONEWAY_ZC:
		pw_cfg.how = PW_ACK;
		break;
	default:
		pw_cfg.how = PW_ECHO_CLONE;
		break;
	}
	struct ferry_worker_opts o = {
		.backend = prm->backend,
		.entry = pw_entry,
		.name = "bench-payload",
		.arg = &pw_cfg,
	};
	int r = ferry_worker_spawn(w, &o);
	if (r)
		return bench_ferry_fail(ctx, r, "ferry_worker_spawn");
	r = ferry_port_set_wait(ferry_worker_port(*w), prm->mode, 0);
	if (r)
		return bench_ferry_fail(ctx, r, "ferry_port_set_wait");
	return 0;
}

/* End the worker (a 0-length message, then close), join it, destroy it; an
 * abnormal end becomes the row's error. @r: the row's result so far. */
static int pw_finish(struct bench_ctx *ctx, ferry_worker *w, int r)
{
	ferry_port *p = ferry_worker_port(w);
	if (r == 0) {
		char end = 0;
		int er = ferry_port_post_bytes(p, &end, 0, ctx->peer_timeout_ns);
		if (er)
			r = bench_ferry_fail(ctx, er, "ferry_port_post_bytes of the end message");
	}
	ferry_port_close(p); /* a worker still waiting sees -EPIPE at once */
	struct ferry_worker_status st;
	memset(&st, 0, sizeof st);
	int jr = ferry_worker_join(w, &st, ctx->peer_timeout_ns);
	ferry_worker_destroy(w);
	if (jr == 0 && st.signal) /* the worker's death is the news */
		return bench_failx(ctx, r ? r : -ECHILD, "worker died by signal %d (%s)",
				   st.signal, strsignal(st.signal));
	if (r)
		return r;
	if (jr)
		return bench_ferry_fail(ctx, jr, "ferry_worker_join");
	if (st.code)
		return bench_failx(ctx, -EPROTO, "worker exited with code %d%s", st.code,
				   pw_code_name(st.code));
	return 0;
}

/* ---- the 1 KiB structured object ---- */

static int obj_set(ferry_value *m, const char *key, ferry_value *v)
{
	/* A NULL @v (a failed constructor) fails the set: one check covers both. */
	return ferry_value_map_set(m, key, v) != 0;
}

/* A record as an application would post it: 42 fields of ints, doubles,
 * bools, null, short strings, nested maps, small arrays (one of maps), a few
 * bytes and a typed array; about 1 KiB of CBOR (the row checks 900-1200). */
static ferry_value *obj_build(void)
{
	ferry_value *o = ferry_value_map();
	if (!o)
		return NULL;
	int bad = 0;
	bad |= obj_set(o, "id", ferry_value_int(1234567890123LL));
	bad |= obj_set(o, "seq", ferry_value_int(42));
	bad |= obj_set(o, "delta", ferry_value_int(-17));
	bad |= obj_set(o, "min", ferry_value_int(INT64_MIN));
	bad |= obj_set(o, "created", ferry_value_int(1700000000));
	bad |= obj_set(o, "updated", ferry_value_int(1700003600));
	bad |= obj_set(o, "version", ferry_value_int(3));
	bad |= obj_set(o, "retries", ferry_value_int(0));
	bad |= obj_set(o, "priority", ferry_value_int(5));
	bad |= obj_set(o, "ttl", ferry_value_int(3600));
	bad |= obj_set(o, "price", ferry_value_double(19.99));
	bad |= obj_set(o, "ratio", ferry_value_double(0.125));
	bad |= obj_set(o, "lat", ferry_value_double(47.3769));
	bad |= obj_set(o, "lon", ferry_value_double(8.5417));
	bad |= obj_set(o, "temp", ferry_value_double(-3.5));
	bad |= obj_set(o, "score", ferry_value_double(98.6));
	bad |= obj_set(o, "zero", ferry_value_double(-0.0));
	bad |= obj_set(o, "active", ferry_value_bool(true));
	bad |= obj_set(o, "deleted", ferry_value_bool(false));
	bad |= obj_set(o, "parent", ferry_value_null());
	bad |= obj_set(o, "name", ferry_value_str("ferry structured clone bench"));
	bad |= obj_set(o, "type", ferry_value_str("order"));
	bad |= obj_set(o, "status", ferry_value_str("shipped"));
	bad |= obj_set(o, "currency", ferry_value_str("CHF"));
	bad |= obj_set(o, "city", ferry_value_str("Z\xc3\xbcrich"));
	bad |= obj_set(o, "email", ferry_value_str("alice@example.org"));
	bad |= obj_set(o, "agent", ferry_value_str("ferry-bench/1.0 (linux; x86_64)"));
	bad |= obj_set(o, "note",
		       ferry_value_str("leave at the door if nobody answers; ring twice, then call"));
	ferry_value *tags = ferry_value_array();
	static const char *const tag_names[] = { "fast", "small", "mixed", "clone", "bench" };
	for (size_t i = 0; tags && i < sizeof tag_names / sizeof tag_names[0]; i++)
		bad |= ferry_value_array_push(tags, ferry_value_str(tag_names[i])) != 0;
	bad |= obj_set(o, "tags", tags);
	ferry_value *dims = ferry_value_array();
	bad |= !dims || ferry_value_array_push(dims, ferry_value_double(1.5)) != 0 ||
	       ferry_value_array_push(dims, ferry_value_double(2.25)) != 0 ||
	       ferry_value_array_push(dims, ferry_value_double(3.125)) != 0;
	bad |= obj_set(o, "dims", dims);
	ferry_value *addr = ferry_value_map();
	bad |= !addr || obj_set(addr, "street", ferry_value_str("Bahnhofstrasse 1")) ||
	       obj_set(addr, "zip", ferry_value_int(8001)) ||
	       obj_set(addr, "country", ferry_value_str("CH")) ||
	       obj_set(addr, "floor", ferry_value_int(4));
	bad |= obj_set(o, "address", addr);
	ferry_value *items = ferry_value_array();
	static const char *const skus[] = { "A-100", "B-200", "C-300", "D-400" };
	for (size_t i = 0; items && i < sizeof skus / sizeof skus[0]; i++) {
		ferry_value *it = ferry_value_map();
		bad |= !it || obj_set(it, "sku", ferry_value_str(skus[i])) ||
		       obj_set(it, "qty", ferry_value_int((int64_t)i + 1)) ||
		       obj_set(it, "price", ferry_value_double(4.5 * (double)(i + 1)));
		bad |= ferry_value_array_push(items, it) != 0;
	}
	bad |= obj_set(o, "items", items);
	unsigned char hash[32];
	for (size_t i = 0; i < sizeof hash; i++)
		hash[i] = (unsigned char)(i * 37 + 11);
	bad |= obj_set(o, "hash", ferry_value_bytes(hash, sizeof hash));
	uint32_t hist[8] = { 1, 2, 3, 5, 8, 13, 21, 34 };
	bad |= obj_set(o, "hist", ferry_value_typed(FERRY_TYPED_U32, hist, sizeof hist));
	bad |= obj_set(o, "locale", ferry_value_str("de-CH"));
	bad |= obj_set(o, "session", ferry_value_str("3f2a9c1e-7b44-4d0a-9e61-0c5d2b8f7a13"));
	bad |= obj_set(o, "weight", ferry_value_double(1.75));
	bad |= obj_set(o, "inf", ferry_value_double(INFINITY));
	bad |= obj_set(o, "discount", ferry_value_double(0.15));
	bad |= obj_set(o, "phone", ferry_value_str("+41 44 555 01 23"));
	bad |= obj_set(o, "referrer", ferry_value_str("https://example.org/shop/checkout?step=3"));
	ferry_value *meta = ferry_value_map();
	bad |= !meta || obj_set(meta, "source", ferry_value_str("bench")) ||
	       obj_set(meta, "region", ferry_value_str("eu-central-2")) ||
	       obj_set(meta, "build", ferry_value_int(20261121)) ||
	       obj_set(meta, "debug", ferry_value_bool(false));
	bad |= obj_set(o, "meta", meta);
	if (bad) {
		ferry_value_free(o);
		return NULL;
	}
	return o;
}

/* ---- the object's codec, one thread ---- */

/*
 * The least any decoder of this CBOR must do: find where each item ends. An
 * item's head says how long it is (or, for an array, map or tag, how many
 * items follow), so each step waits for the byte the last one pointed at:
 * one chain of dependent loads. Nothing is checked but the bounds and the
 * forms ferry never writes. Returns the end of the data item at @p, or NULL.
 */
static const uint8_t *cbor_walk(const uint8_t *p, const uint8_t *end)
{
	uint64_t pending = 1; /* items still to walk, at every level */
	while (pending) {
		if (p >= end)
			return NULL;
		uint8_t ib = *p++;
		unsigned ai = ib & 31, major = ib >> 5;
		uint64_t arg = ai;
		if (ai >= 24) {
			if (ai > 27)
				return NULL;
			size_t n = (size_t)1 << (ai - 24);
			if ((size_t)(end - p) < n)
				return NULL;
			arg = 0;
			for (size_t k = 0; k < n; k++)
				arg = arg << 8 | p[k];
			p += n;
		}
		pending--;
		if (major == 2 || major == 3) {
			if (arg > (uint64_t)(end - p))
				return NULL;
			p += arg;
		} else if (major == 4 || major == 5) {
			pending += major == 5 ? 2 * arg : arg;
		} else if (major == 6) {
			pending++;
		}
	}
	return p;
}

#define CODEC_BATCH 16 /* operations per sample: one is ~0.2-0.4 us */

/* CODEC_BATCH operations of @kind on the object @o and its @len bytes of
 * CBOR at @cbor; 0 or a ferry error. */
static int codec_batch(enum pay_kind kind, const ferry_value *o, const unsigned char *cbor,
		       size_t len)
{
	static unsigned char dst[4096];
	for (int k = 0; k < CODEC_BATCH; k++) {
		if (kind == PK_WALK) {
			const uint8_t *e = cbor_walk(cbor, cbor + len);
			__asm__ volatile("" : : "r"(e) : "memory");
		} else if (kind == PK_ENCODE) {
			size_t l;
			int r = ferry_clone_encode(o, dst, sizeof dst, &l, NULL, NULL);
			if (r)
				return r;
		} else {
			ferry_value *d;
			int r = ferry_clone_decode(cbor, len, NULL, &d);
			if (r)
				return r;
			ferry_value_free(d);
		}
	}
	return 0;
}

static int run_codec(struct bench_ctx *ctx, const struct pay_param *prm, struct bench_samples *out)
{
	size_t n, warm;
	if (bench_prepare(ctx, out, BENCH_CHEAP, &n, &warm))
		return bench_fail(ctx, -ENOMEM, "samples");
	n = n / CODEC_BATCH + 1; /* as many operations as a row of one per sample */
	static unsigned char cbor[4096];
	ferry_value *o = obj_build(), *d = NULL;
	if (!o)
		return bench_ferry_fail(ctx, -ENOMEM, "building the object");
	/* The first round checks what the rows time: a decode gives the
	 * object back, and the walk ends where the encoding does. */
	size_t len = 0;
	int r = ferry_clone_encode(o, cbor, sizeof cbor, &len, NULL, NULL);
	if (r == 0)
		r = ferry_clone_decode(cbor, len, NULL, &d);
	if (r) {
		ferry_value_free(o);
		return bench_ferry_fail(ctx, r, "the object's clone");
	}
	int same = ferry_value_equal(d, o);
	ferry_value_free(d);
	if (!same || cbor_walk(cbor, cbor + len) != cbor + len) {
		ferry_value_free(o);
		return bench_failx(ctx, -EBADMSG, "%s", !same ? "the object decoded to a different value"
							   : "the walk does not end where the CBOR does");
	}
	for (size_t i = 0; i < warm && r == 0 && !bench_warm_stop(ctx, i); i++)
		r = codec_batch(prm->kind, o, cbor, len);
	for (size_t i = 0; i < n && r == 0 && !bench_stop(ctx, i); i++) {
		uint64_t t0 = bench_now();
		r = codec_batch(prm->kind, o, cbor, len);
		uint64_t t1 = bench_now();
		bench_samples_add(out, bench_ns(t1 - t0) / CODEC_BATCH);
	}
	ferry_value_free(o);
	return r ? bench_ferry_fail(ctx, r, "the codec") : 0;
}

/* ---- the round trips ---- */

struct pay_state {
	const struct pay_param *prm;
	ferry_port *p;
	ferry_buf *buf;     /* clone, transfer, shared, one way */
	ferry_value *val;   /* the handle value, or the object */
	unsigned char *src; /* PK_MEMCPY_RT */
	unsigned char *dst;
	uint64_t round;
};

/* Fill a buffer so that a copy or a move can be checked: 0x5a, with marks at
 * the ends and in the middle. */
static void pay_fill(unsigned char *d, size_t len)
{
	memset(d, 0x5a, len);
	d[0] = 0x11;
	d[len / 2] = 0x33;
	d[len - 1] = 0x22;
}

static int pay_marked(const unsigned char *d, size_t len)
{
	return d && d[0] == 0x11 && d[len / 2] == 0x33 && d[len - 1] == 0x22;
}

/* The buffer a reply carries, checked for kind and size (and, with
 * @verify, content); NULL after bench_fail. */
static ferry_buf *pay_reply_buf(struct bench_ctx *ctx, const struct pay_state *st,
				const ferry_msg *m, int verify)
{
	const ferry_value *v = ferry_msg_value(m);
	enum ferry_value_kind kind = FERRY_VALUE_UNDEFINED;
	ferry_buf *h = v ? ferry_value_get_handle(v, &kind) : NULL;
	size_t size = st->prm->size;
	if (!h || kind != FERRY_VALUE_BUF) {
		bench_failx(ctx, -EBADMSG, "reply is not a buffer reference (%s)",
			    v ? ferry_value_kind_name(ferry_value_kind(v)) : "raw bytes");
		return NULL;
	}
	if (ferry_buf_len(h) != size) {
		bench_failx(ctx, -EBADMSG, "reply buffer of %zu bytes instead of %zu",
			    ferry_buf_len(h), size);
		return NULL;
	}
	if (verify && !pay_marked(ferry_buf_data(h), size)) {
		bench_failx(ctx, -EBADMSG, "reply buffer of %zu bytes has other content", size);
		return NULL;
	}
	return h;
}

static int pay_recv(struct bench_ctx *ctx, ferry_port *p, ferry_msg **m)
{
	int r = ferry_port_recv(p, m, ctx->peer_timeout_ns);
	return r ? bench_ferry_fail(ctx, r, "ferry_port_recv") : 0;
}

/* A raw reply of @len bytes, freed. */
static int pay_recv_raw(struct bench_ctx *ctx, ferry_port *p, size_t len)
{
	ferry_msg *m;
	int r = pay_recv(ctx, p, &m);
	if (r)
		return r;
	int clone = ferry_msg_value(m) != NULL;
	size_t got = ferry_msg_len(m);
	ferry_msg_free(m);
	if (clone || got != len)
		return bench_failx(ctx, -EBADMSG, "reply: %s of %zu bytes instead of %zu raw bytes",
				   clone ? "a clone" : "raw", got, len);
	return 0;
}

static int pay_round(struct bench_ctx *ctx, struct pay_state *st, int verify)
{
	const struct pay_param *prm = st->prm;
	ferry_port *p = st->p;
	ferry_msg *m;
	int r;
	switch (prm->kind) {
	case PK_MEMCPY_RT:
		pay_copy(st->dst, st->src, prm->size);
		/* fall through */
	case PK_RAW: {
		/* PK_MEMCPY_RT's size is its copy's: its round trip is 64 B */
		static const char msg[RAW_MAX] = "payload";
		size_t len = prm->kind == PK_RAW ? prm->size : RAW_BYTES;
		r = ferry_port_post_bytes(p, msg, len, ctx->peer_timeout_ns);
		if (r)
			return bench_ferry_fail(ctx, r, "ferry_port_post_bytes");
		return pay_recv_raw(ctx, p, len);
	}
	case PK_CLONE:
	case PK_OBJECT:
		r = ferry_port_post(p, st->val, NULL, ctx->peer_timeout_ns);
		if (r)
			return bench_ferry_fail(ctx, r, "ferry_port_post");
		if ((r = pay_recv(ctx, p, &m)))
			return r;
		if (prm->kind == PK_CLONE) {
			if (!pay_reply_buf(ctx, st, m, verify))
				r = -EBADMSG;
		} else if (verify && !ferry_value_equal(st->val, ferry_msg_value(m))) {
			r = bench_failx(ctx, -EBADMSG, "the object came back different");
		}
		ferry_msg_free(m);
		return r;
	case PK_XFER: {
		/* One logical buffer: this handle goes, the reply's comes back. */
		ferry_value *v = ferry_value_handle(FERRY_VALUE_BUF, st->buf);
		if (!v)
			return bench_ferry_fail(ctx, -ENOMEM, "ferry_value_handle");
		ferry_buf *const list[1] = { st->buf };
		struct ferry_xfer x = { .bufs = list, .nbufs = 1 };
		r = ferry_port_post(p, v, &x, ctx->peer_timeout_ns);
		ferry_value_free(v);
		if (r)
			return bench_ferry_fail(ctx, r, "ferry_port_post with a transfer list");
		ferry_buf_free(st->buf); /* the detached handle */
		st->buf = NULL;
		if ((r = pay_recv(ctx, p, &m)))
			return r;
		ferry_buf *h = pay_reply_buf(ctx, st, m, verify);
		if (!h) {
			r = -EBADMSG;
		} else if ((r = ferry_msg_keep(m, h)) != 0) {
			r = bench_ferry_fail(ctx, r, "ferry_msg_keep");
		} else {
			st->buf = h;
		}
		ferry_msg_free(m);
		return r;
	}
	case PK_SHARED: {
		unsigned char *d = ferry_buf_data(st->buf);
		uint64_t want = ++st->round, got;
		memcpy(d, &want, sizeof want);
		r = ferry_port_post(p, st->val, NULL, ctx->peer_timeout_ns);
		if (r)
			return bench_ferry_fail(ctx, r, "ferry_port_post of a shared buffer");
		if ((r = pay_recv_raw(ctx, p, ACK_BYTES)))
			return r;
		memcpy(&got, d + sizeof got, sizeof got);
		if (got != want)
			return bench_failx(ctx, -EBADMSG,
					   "the worker's write to the shared buffer is not seen (%llu, not %llu)",
					   (unsigned long long)got, (unsigned long long)want);
		return 0;
	}
	case PK_ONEWAY:
	case PK_ONEWAY_ZC:
		r = ferry_port_post(p, st->val, NULL, ctx->peer_timeout_ns);
		if (r)
			return bench_ferry_fail(ctx, r, "ferry_port_post");
		return pay_recv_raw(ctx, p, ACK_BYTES);
	case PK_MEMCPY:
	case PK_WALK:
	case PK_ENCODE:
	case PK_DECODE:
		break;
	}
	return bench_failx(ctx, -EINVAL, "unknown payload kind %d", (int)prm->kind);
}

/* What the parent holds for the row; made after the worker started, so that
 * a process worker's fork copies none of it. */
static int pay_setup(struct bench_ctx *ctx, struct pay_state *st)
{
	const struct pay_param *prm = st->prm;
	size_t size = prm->size;
	int r;
	switch (prm->kind) {
	case PK_MEMCPY_RT:
		st->src = pay_map(size);
		st->dst = pay_map(size);
		if (!st->src || !st->dst)
			return bench_fail(ctx, -errno, "mmap 2 x %zu bytes", size);
		memset(st->src, 0x5a, size);
		memset(st->dst, 0xa5, size);
		return 0;
	case PK_CLONE:
	case PK_XFER:
	case PK_SHARED:
	case PK_ONEWAY:
	case PK_ONEWAY_ZC:
		r = ferry_buf_create(&st->buf, size, prm->kind == PK_SHARED ? FERRY_BUF_SHARED : 0);
		if (r)
			return bench_ferry_fail(ctx, r, "ferry_buf_create");
		pay_fill(ferry_buf_data(st->buf), size);
		if (prm->kind == PK_XFER)
			return 0; /* a value per round: the handle changes each time */
		st->val = ferry_value_handle(
			prm->kind == PK_SHARED ? FERRY_VALUE_SHARED : FERRY_VALUE_BUF, st->buf);
		if (!st->val)
			return bench_ferry_fail(ctx, -ENOMEM, "ferry_value_handle");
		return 0;
	case PK_RAW:
		if (size > RAW_MAX)
			return bench_failx(ctx, -EINVAL, "a raw row of %zu bytes (most %d)", size, RAW_MAX);
		return 0;
	case PK_OBJECT: {
		st->val = obj_build();
		if (!st->val)
			return bench_ferry_fail(ctx, -ENOMEM, "building the object");
		size_t len = 0;
		r = ferry_clone_size(st->val, &len, NULL);
		if (r)
			return bench_ferry_fail(ctx, r, "ferry_clone_size of the object");
		if (len < 900 || len > 1200)
			return bench_failx(ctx, -EINVAL, "the object is %zu bytes of CBOR, not ~1 KiB",
					   len);
		return 0;
	}
	default:
		return 0;
	}
}

static void pay_teardown(struct pay_state *st)
{
	ferry_value_free(st->val);
	ferry_buf_free(st->buf);
	if (st->src)
		munmap(st->src, st->prm->size);
	if (st->dst)
		munmap(st->dst, st->prm->size);
	st->val = NULL;
	st->buf = NULL;
	st->src = st->dst = NULL;
}

static int run_payload(struct bench_ctx *ctx, const struct bench_scenario *s,
		       struct bench_samples *out)
{
	const struct pay_param *prm = s->arg;
	if (prm->kind == PK_MEMCPY)
		return run_memcpy(ctx, prm, out);
	if (prm->kind == PK_WALK || prm->kind == PK_ENCODE || prm->kind == PK_DECODE)
		return run_codec(ctx, prm, out);
	size_t bytes = prm->kind == PK_RAW || prm->kind == PK_OBJECT ? 0 : prm->size;
	size_t n = pay_count(ctx, prm->kind, bytes), warm = pay_warm(ctx, n);
	if (bench_samples_reserve(out, n))
		return bench_fail(ctx, -ENOMEM, "samples");
	ferry_worker *w = NULL;
	int r = pw_start(ctx, prm, &w);
	if (r)
		return w ? pw_finish(ctx, w, r) : r;
	struct pay_state st = { .prm = prm, .p = ferry_worker_port(w) };
	r = pay_setup(ctx, &st);
	/* Warm-up; its first round checks what comes back. */
	uint64_t cap = pay_time_cap(ctx), end = bench_now() + cap / 5;
	for (size_t i = 0; i < warm && r == 0 && !bench_warm_stop(ctx, i); i++) {
		if (i > 0 && bench_now() >= end)
			break;
		r = pay_round(ctx, &st, i == 0);
	}
	end = bench_now() + cap;
	for (size_t i = 0; i < n && r == 0 && !bench_stop(ctx, i); i++) {
		uint64_t t0 = bench_now();
		r = pay_round(ctx, &st, 0);
		uint64_t t1 = bench_now();
		if (r)
			break;
		bench_samples_add(out, bench_ns(t1 - t0));
		if (i + 1 >= PAY_MIN && t1 >= end)
			break;
	}
	r = pw_finish(ctx, w, r);
	pay_teardown(&st);
	return r;
}

/* ---- the rows ---- */

#define G_FLOOR "payloads: floors (memcpy warm, one thread: GB/s = bytes / p50 ns)"
#define G_CLONE "payloads: clone round trip (a buffer, cloned there and back)"
#define G_XFER "payloads: transfer round trip (one buffer moved there and back; target: 64 MiB <= 2x 64 KiB)"
#define G_SHARED "payloads: shared buffer round trip (worker writes a word, acks 8 B)"
#define G_OBJECT "payloads: 1 KiB structured object clone round trip (target < 1.7 us, 50x Node 20)"
#define G_ONEWAY "payloads: 1 MiB clone one way, until received and decoded (8 B ack; target <= 1.3x floor)"

#define THR "thread"
#define PRC "process"
#define ADAP "adaptive"

#define PARAM(kind_, size_, be_) (&(const struct pay_param){ kind_, size_, be_, FERRY_WAIT_ADAPTIVE })

#define MEMCPY_ROW(id_, ord, nm, size_)                                                      \
	{ .id = "payload.memcpy." id_, .group = G_FLOOR, .order = ord, .name = nm,          \
	  .unit = BENCH_NS, .run = run_payload, .arg = PARAM(PK_MEMCPY, size_, FERRY_THREAD) }

#define CODEC_ROW(id_, ord, nm, fl, kind_)                                                     \
	{ .id = "payload.codec." id_, .group = G_OBJECT, .order = ord, .name = nm, .floor = fl, \
	  .unit = BENCH_NS, .run = run_payload, .arg = PARAM(kind_, 0, FERRY_THREAD) }

#define ROW(id_, grp, ord, nm, be, fl, kind_, size_, backend_)                                 \
	{ .id = id_, .group = grp, .order = ord, .name = nm, .backend = be, .mode = ADAP,     \
	  .floor = fl, .unit = BENCH_NS, .run = run_payload, .arg = PARAM(kind_, size_, backend_) }

/* A row per backend: thread at @ord, process at @ord + 1. */
#define ROW2(id_, grp, ord, nm, fl, kind_, size_)                                              \
	ROW(id_ ".thread", grp, ord, nm, THR, fl ".thread", kind_, size_, FERRY_THREAD),     \
	ROW(id_ ".process", grp, (ord) + 1, nm, PRC, fl ".process", kind_, size_, FERRY_PROCESS)

/* The same floor for both backends (a memcpy). */
#define ROW2M(id_, grp, ord, nm, fl, kind_, size_)                                             \
	ROW(id_ ".thread", grp, ord, nm, THR, fl, kind_, size_, FERRY_THREAD),               \
	ROW(id_ ".process", grp, (ord) + 1, nm, PRC, fl, kind_, size_, FERRY_PROCESS)

#define RAW "payload.raw64"
#define MEMRT "payload.memcpy1m_rt"
#define X64K "payload.transfer.64k"

static const struct bench_scenario payload_scenarios[] = {
	MEMCPY_ROW("64", 300, "memcpy 64 B", 64),
	MEMCPY_ROW("1k", 301, "memcpy 1 KiB", KIB),
	MEMCPY_ROW("64k", 302, "memcpy 64 KiB", 64 * KIB),
	MEMCPY_ROW("1m", 303, "memcpy 1 MiB", MIB),
	MEMCPY_ROW("16m", 304, "memcpy 16 MiB", 16 * MIB),
	MEMCPY_ROW("64m", 305, "memcpy 64 MiB", 64 * MIB),
	ROW(RAW ".thread", G_FLOOR, 306, "port 64 B raw", THR, NULL, PK_RAW, RAW_BYTES,
	    FERRY_THREAD),
	ROW(RAW ".process", G_FLOOR, 307, "port 64 B raw", PRC, NULL, PK_RAW, RAW_BYTES,
	    FERRY_PROCESS),
	ROW(MEMRT ".thread", G_FLOOR, 308, "memcpy 1 MiB + 64 B RT", THR, NULL, PK_MEMCPY_RT, MIB,
	    FERRY_THREAD),
	ROW(MEMRT ".process", G_FLOOR, 309, "memcpy 1 MiB + 64 B RT", PRC, NULL, PK_MEMCPY_RT,
	    MIB, FERRY_PROCESS),

	/* clone: tiny buffers against the raw round trip, the rest against a
	 * memcpy of the same size (a round trip makes at least two) */
	ROW2("payload.clone.64", G_CLONE, 310, "clone 64 B", RAW, PK_CLONE, 64),
	ROW2("payload.clone.1k", G_CLONE, 312, "clone 1 KiB", RAW, PK_CLONE, KIB),
	ROW2M("payload.clone.64k", G_CLONE, 314, "clone 64 KiB", "payload.memcpy.64k",
	     PK_CLONE, 64 * KIB),
	ROW2M("payload.clone.1m", G_CLONE, 316, "clone 1 MiB", "payload.memcpy.1m", PK_CLONE,
	     MIB),
	ROW2M("payload.clone.16m", G_CLONE, 318, "clone 16 MiB", "payload.memcpy.16m",
	     PK_CLONE, 16 * MIB),
	ROW2M("payload.clone.64m", G_CLONE, 320, "clone 64 MiB", "payload.memcpy.64m",
	     PK_CLONE, 64 * MIB),

	/* transfer: up to 64 KiB against the raw round trip, beyond against
	 * the 64 KiB transfer (the target: 64 MiB within 2x of it) */
	ROW2("payload.transfer.64", G_XFER, 330, "transfer 64 B", RAW, PK_XFER, 64),
	ROW2("payload.transfer.1k", G_XFER, 332, "transfer 1 KiB", RAW, PK_XFER, KIB),
	ROW2(X64K, G_XFER, 334, "transfer 64 KiB", RAW, PK_XFER, 64 * KIB),
	ROW2("payload.transfer.1m", G_XFER, 336, "transfer 1 MiB", X64K, PK_XFER, MIB),
	ROW2("payload.transfer.16m", G_XFER, 338, "transfer 16 MiB", X64K, PK_XFER, 16 * MIB),
	ROW2("payload.transfer.64m", G_XFER, 340, "transfer 64 MiB", X64K, PK_XFER, 64 * MIB),

	/* shared: every size against the raw round trip (nothing is copied) */
	ROW2("payload.shared.64", G_SHARED, 350, "shared 64 B", RAW, PK_SHARED, 64),
	ROW2("payload.shared.1k", G_SHARED, 352, "shared 1 KiB", RAW, PK_SHARED, KIB),
	ROW2("payload.shared.64k", G_SHARED, 354, "shared 64 KiB", RAW, PK_SHARED, 64 * KIB),
	ROW2("payload.shared.1m", G_SHARED, 356, "shared 1 MiB", RAW, PK_SHARED, MIB),
	ROW2("payload.shared.16m", G_SHARED, 358, "shared 16 MiB", RAW, PK_SHARED, 16 * MIB),
	ROW2("payload.shared.64m", G_SHARED, 360, "shared 64 MiB", RAW, PK_SHARED, 64 * MIB),

	/* its codec alone, one thread, hot: against the least a decoder does */
	CODEC_ROW("walk", 362, "object CBOR walk (item ends only, nothing built)", NULL, PK_WALK),
	CODEC_ROW("encode", 363, "object encode (one thread, hot)", "payload.codec.walk",
		  PK_ENCODE),
	CODEC_ROW("decode", 364, "object decode + free (one thread, hot)", "payload.codec.walk",
		  PK_DECODE),
	/* the object's bytes as raw bytes: the transport's share of its round trip */
	ROW2("payload.raw1k", G_OBJECT, 368, "port 1014 B raw (the object's size, no codec)", RAW,
	     PK_RAW, OBJ_BYTES),
	ROW2("payload.object1k", G_OBJECT, 370, "1 KiB object (Node: 84-88 us)", RAW, PK_OBJECT,
	     0),
	ROW2("payload.oneway1m", G_ONEWAY, 380, "clone 1 MiB one way", MEMRT, PK_ONEWAY, MIB),
	/* the receiver trusts its peer with the spill (ferry_port_set_zero_copy):
	 * a process worker then reads it in place, as a thread does anyway */
	ROW2("payload.oneway1m_zc", G_ONEWAY, 382, "clone 1 MiB one way, zero-copy receive", MEMRT,
	     PK_ONEWAY_ZC, MIB),
};
BENCH_REGISTER(payload_scenarios)
