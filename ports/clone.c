/*
 * The structured clone codec: value graphs to CBOR and back (see
 * include/ferry/value.h for the wire format and the decoder's rules).
 * Hand-written rather than libcbor: one pass each way with no intermediate
 * item tree, encode straight into the caller's buffer, decode straight into
 * the graph's arena; measured 3-4x faster than libcbor's encoder and
 * streaming decoder (building the same graph) on a 1 KiB object.
 */
#include "ports/value_internal.h"

#include <errno.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdio.h>
#include <stdlib.h>

#define TAG_SHAREABLE 28
#define TAG_SHAREDREF 29

/* CBOR initial bytes used directly. */
#define IB_FALSE 0xf4
#define IB_TRUE 0xf5
#define IB_NULL 0xf6
#define IB_UNDEFINED 0xf7
#define IB_FLOAT64 0xfb

enum { MAJ_UINT, MAJ_NINT, MAJ_BYTES, MAJ_TEXT, MAJ_ARRAY, MAJ_MAP, MAJ_TAG, MAJ_SIMPLE };

#if __BYTE_ORDER__ == __ORDER_LITTLE_ENDIAN__
#define HOST_LE 1
#else
#define HOST_LE 0
#endif

/* RFC 8746 tag of each typed view, in host byte order. */
static const uint8_t typed_tag[] = {
	[FERRY_TYPED_NONE] = 0,
	[FERRY_TYPED_U8] = 64,
	[FERRY_TYPED_U8_CLAMPED] = 68,
	[FERRY_TYPED_I8] = 72,
	[FERRY_TYPED_U16] = HOST_LE ? 69 : 65,
	[FERRY_TYPED_I16] = HOST_LE ? 77 : 73,
	[FERRY_TYPED_U32] = HOST_LE ? 70 : 66,
	[FERRY_TYPED_I32] = HOST_LE ? 78 : 74,
	[FERRY_TYPED_U64] = HOST_LE ? 71 : 67,
	[FERRY_TYPED_I64] = HOST_LE ? 79 : 75,
	[FERRY_TYPED_F32] = HOST_LE ? 85 : 81,
	[FERRY_TYPED_F64] = HOST_LE ? 86 : 82,
};

static inline uint32_t handle_tag(unsigned kind)
{
	return kind == FERRY_VALUE_BUF      ? FERRY_CLONE_TAG_BUF
	       : kind == FERRY_VALUE_SHARED ? FERRY_CLONE_TAG_SHARED
					    : FERRY_CLONE_TAG_PORT;
}

/* ======================================================================
 * Encode
 * ====================================================================== */

struct enc {
	uint8_t *buf;
	size_t pos, cap; /* pos keeps counting past cap: the size needed */
	unsigned max_depth, deny;
	const ferry_value *root;
	struct fv_ptab shares; /* value -> its shareable index */
	uintptr_t nshares;
	struct ferry_clone_handles *h;
	struct fv_ptab htab;   /* handle -> table index, once the table is long */
};

/* Handle tables this short are searched linearly. */
#define HANDLES_LINEAR 8

static inline size_t head_len(uint64_t v)
{
	return v < 24 ? 1 : v <= 0xff ? 2 : v <= 0xffff ? 3 : v <= 0xffffffff ? 5 : 9;
}

static inline void write_head(uint8_t *p, unsigned major, uint64_t v, size_t n)
{
	uint8_t mt = (uint8_t)(major << 5);
	switch (n) {
	case 1:
		p[0] = mt | (uint8_t)v;
		break;
	case 2:
		p[0] = mt | 24;
		p[1] = (uint8_t)v;
		break;
	case 3: {
		uint16_t x = __builtin_bswap16((uint16_t)v);
		p[0] = mt | 25;
		memcpy(p + 1, &x, 2);
		break;
	}
	case 5: {
		uint32_t x = __builtin_bswap32((uint32_t)v);
		p[0] = mt | 26;
		memcpy(p + 1, &x, 4);
		break;
	}
	default: {
		uint64_t x = __builtin_bswap64(v);
		p[0] = mt | 27;
		memcpy(p + 1, &x, 8);
		break;
	}
	}
}

static inline void put_head(struct enc *e, unsigned major, uint64_t v)
{
	size_t n = head_len(v);
	if (FERRY_LIKELY(e->pos + n <= e->cap))
		write_head(e->buf + e->pos, major, v, n);
	e->pos += n;
}

static int enc_handle(struct enc *e, const ferry_value *v)
{
	const char *name = ferry_value_kind_name(v->kind);
	if (e->deny & (1u << v->kind))
		return ferry__fail(FERRY_ENOTCLONEABLE,
				   "ferry_clone_encode: a %s reference is not allowed in this message",
				   name);
	struct ferry_clone_handles *h = e->h;
	if (!h)
		return ferry__fail(FERRY_ENOTCLONEABLE,
				   "ferry_clone_encode: the value holds a %s reference but no handle "
				   "table was given",
				   name);
	size_t idx = SIZE_MAX;
	if (!e->htab.slots) {
		for (size_t i = 0; i < h->count; i++)
			if (h->items[i].handle == v->u.h) {
				idx = i;
				break;
			}
	} else {
		uintptr_t x;
		if (fv_ptab_get(&e->htab, v->u.h, &x))
			idx = x;
	}
	if (idx != SIZE_MAX) {
		if (h->items[idx].kind != v->kind)
			return ferry__fail(-EINVAL,
					   "ferry_clone_encode: handle %p is referenced both as a %s "
					   "and as a %s",
					   v->u.h, ferry_value_kind_name(h->items[idx].kind), name);
	} else {
		if (h->count == h->cap) {
			size_t ncap = h->cap ? h->cap * 2 : 8;
			struct ferry_clone_handle *n = realloc(h->items, ncap * sizeof *n);
			if (!n)
				return ferry__fail(-ENOMEM, "ferry_clone_encode: out of memory");
			h->items = n;
			h->cap = ncap;
		}
		idx = h->count++;
		h->items[idx].kind = (enum ferry_value_kind)v->kind;
		h->items[idx].handle = v->u.h;
		if (h->count > HANDLES_LINEAR) {
			size_t from = e->htab.slots ? idx : 0;
			for (size_t i = from; i < h->count; i++)
				if (ferry__fv_ptab_put(&e->htab, h->items[i].handle, i))
					return ferry__fail(-ENOMEM, "ferry_clone_encode: out of memory");
		}
	}
	put_head(e, MAJ_TAG, handle_tag(v->kind));
	put_head(e, MAJ_UINT, idx);
	return 0;
}

/* Write scalar @v (null .. bytes) at @pos if it fits in @cap; returns the
 * position after it either way. The hot loop of encoding: the cursor stays
 * in a register. */
static inline __attribute__((always_inline)) size_t put_scalar(uint8_t *buf, size_t pos, size_t cap, const ferry_value *v)
{
	uint64_t u;
	unsigned major;
	size_t n, len;
	switch (v->kind) {
	case FERRY_VALUE_NULL:
		if (FERRY_LIKELY(pos < cap))
			buf[pos] = IB_NULL;
		return pos + 1;
	case FERRY_VALUE_UNDEFINED:
		if (FERRY_LIKELY(pos < cap))
			buf[pos] = IB_UNDEFINED;
		return pos + 1;
	case FERRY_VALUE_BOOL:
		if (FERRY_LIKELY(pos < cap))
			buf[pos] = v->u.b ? IB_TRUE : IB_FALSE;
		return pos + 1;
	case FERRY_VALUE_INT:
		if (v->u.i >= 0) {
			u = (uint64_t)v->u.i;
			major = MAJ_UINT;
		} else { /* -1 - i */
			u = ~(uint64_t)v->u.i;
			major = MAJ_NINT;
		}
		n = head_len(u);
		if (FERRY_LIKELY(pos + n <= cap))
			write_head(buf + pos, major, u, n);
		return pos + n;
	case FERRY_VALUE_DOUBLE:
		if (FERRY_LIKELY(pos + 9 <= cap)) {
			memcpy(&u, &v->u.d, 8);
			u = __builtin_bswap64(u);
			buf[pos] = IB_FLOAT64;
			memcpy(buf + pos + 1, &u, 8);
		}
		return pos + 9;
	case FERRY_VALUE_STR:
		len = v->u.s.len;
		if (len <= 15 && pos + 17 <= cap) {
			/* One 16-byte copy: the string is readable (and zero
			 * padded) that far; what passes len is overwritten by
			 * the next item or lies past the end. */
			buf[pos] = (uint8_t)(MAJ_TEXT << 5 | len);
			memcpy(buf + pos + 1, v->u.s.p, 16);
			return pos + 1 + len;
		}
		n = head_len(len);
		if (FERRY_LIKELY(pos + n + len <= cap)) {
			write_head(buf + pos, MAJ_TEXT, len, n);
			fv_copy(buf + pos + n, v->u.s.p, len);
		}
		return pos + n + len;
	default: /* FERRY_VALUE_BYTES */
		if (v->typed) {
			u = typed_tag[v->typed];
			n = head_len(u);
			if (FERRY_LIKELY(pos + n <= cap))
				write_head(buf + pos, MAJ_TAG, u, n);
			pos += n;
		}
		len = v->u.s.len;
		n = head_len(len);
		if (FERRY_LIKELY(pos + n + len <= cap)) {
			write_head(buf + pos, MAJ_BYTES, len, n);
			fv_copy(buf + pos + n, v->u.s.p, len);
		}
		return pos + n + len;
	}
}

/* A child that put_scalar can write without enc_value: no identity to keep
 * (held by one container only) and no handle table to touch. */
static inline bool plain_scalar(const ferry_value *v)
{
	return v->kind <= FERRY_VALUE_BYTES && v->refs < 2;
}

static int too_deep(const struct enc *e)
{
	return ferry__fail(FERRY_ENOTCLONEABLE,
			   "ferry_clone_encode: arrays and maps nest deeper than %u", e->max_depth);
}

static int enc_value(struct enc *e, const ferry_value *v, unsigned depth)
{
	/* refs counts the arrays and maps holding v: a value reachable once from
	 * the root has at most one, plus none for the root itself. More means it
	 * may be reached again (over-counting only costs a tag 28). */
	if (FERRY_UNLIKELY(v->refs + (v == e->root) >= 2)) {
		uintptr_t idx;
		if (fv_ptab_get(&e->shares, v, &idx)) {
			put_head(e, MAJ_TAG, TAG_SHAREDREF);
			put_head(e, MAJ_UINT, idx);
			return 0;
		}
		if (ferry__fv_ptab_put(&e->shares, v, e->nshares++))
			return ferry__fail(-ENOMEM, "ferry_clone_encode: out of memory");
		put_head(e, MAJ_TAG, TAG_SHAREABLE);
	}
	uint8_t *buf = e->buf;
	size_t cap = e->cap;
	switch (v->kind) {
	case FERRY_VALUE_ARRAY: {
		if (depth > e->max_depth)
			return too_deep(e);
		uint32_t n = v->u.a.len;
		put_head(e, MAJ_ARRAY, n);
		size_t pos = e->pos;
		for (uint32_t i = 0; i < n; i++) {
			const ferry_value *c = v->u.a.items[i];
			if (FERRY_LIKELY(plain_scalar(c))) {
				pos = put_scalar(buf, pos, cap, c);
				continue;
			}
			e->pos = pos;
			int r = enc_value(e, c, depth + 1);
			if (r)
				return r;
			pos = e->pos;
		}
		e->pos = pos;
		return 0;
	}
	case FERRY_VALUE_MAP: {
		if (depth > e->max_depth)
			return too_deep(e);
		uint32_t n = v->u.m.len;
		put_head(e, MAJ_MAP, n);
		size_t pos = e->pos;
		const struct fv_entry *en = v->u.m.e;
		for (uint32_t i = 0; i < n; i++) {
			size_t kl = en[i].klen;
			if (FERRY_LIKELY(kl <= 15 && pos + 17 <= cap)) {
				/* as for short strings in put_scalar */
				buf[pos] = (uint8_t)(MAJ_TEXT << 5 | kl);
				memcpy(buf + pos + 1, en[i].key, 16);
				pos += 1 + kl;
			} else {
				size_t hn = head_len(kl);
				if (FERRY_LIKELY(pos + hn + kl <= cap)) {
					write_head(buf + pos, MAJ_TEXT, kl, hn);
					fv_copy(buf + pos + hn, en[i].key, kl);
				}
				pos += hn + kl;
			}
			const ferry_value *c = en[i].v;
			if (FERRY_LIKELY(plain_scalar(c))) {
				pos = put_scalar(buf, pos, cap, c);
				continue;
			}
			e->pos = pos;
			int r = enc_value(e, c, depth + 1);
			if (r)
				return r;
			pos = e->pos;
		}
		e->pos = pos;
		return 0;
	}
	case FERRY_VALUE_BUF:
	case FERRY_VALUE_SHARED:
	case FERRY_VALUE_PORT:
		return enc_handle(e, v);
	default:
		e->pos = put_scalar(buf, e->pos, cap, v);
		return 0;
	}
}

FERRY_API void ferry_clone_handles_init(struct ferry_clone_handles *h)
{
	if (h)
		memset(h, 0, sizeof *h);
}

FERRY_API void ferry_clone_handles_fini(struct ferry_clone_handles *h)
{
	if (!h)
		return;
	free(h->items);
	memset(h, 0, sizeof *h);
}

static int check_depth_opt(const char *who, unsigned max_depth, unsigned *out)
{
	if (max_depth > FERRY_CLONE_MAX_DEPTH)
		return ferry__fail(-EINVAL, "%s: max_depth %u is over the limit of %d", who,
				   max_depth, FERRY_CLONE_MAX_DEPTH);
	*out = max_depth ? max_depth : FERRY_CLONE_MAX_DEPTH;
	return 0;
}

FERRY_API int ferry_clone_encode(const ferry_value *v, void *buf, size_t cap, size_t *len,
				 struct ferry_clone_handles *handles,
				 const struct ferry_clone_encode_opts *opts)
{
	static const char who[] = "ferry_clone_encode";
	if (!v)
		return ferry__fail(-EINVAL, "%s: NULL value", who);
	if (!len)
		return ferry__fail(-EINVAL, "%s: NULL len", who);
	if (!buf && cap)
		return ferry__fail(-EINVAL, "%s: NULL buffer of %zu bytes", who, cap);
	struct enc e; /* not = {0}: its inline tables are big and need no zeroing */
	e.buf = buf;
	e.pos = 0;
	e.cap = buf ? cap : 0;
	e.deny = 0;
	e.root = v;
	e.nshares = 0;
	e.h = handles;
	int r = check_depth_opt(who, opts ? opts->max_depth : 0, &e.max_depth);
	if (r)
		return r;
	if (opts) {
		const unsigned all = FERRY_CLONE_DENY_BUF | FERRY_CLONE_DENY_SHARED |
				     FERRY_CLONE_DENY_PORT;
		if (opts->deny & ~all)
			return ferry__fail(-EINVAL, "%s: unknown bits 0x%x in deny", who,
					   opts->deny & ~all);
		e.deny = opts->deny;
	}
	if (handles)
		handles->count = 0;
	fv_ptab_init(&e.shares);
	fv_ptab_init(&e.htab);
	r = enc_value(&e, v, 1);
	ferry__fv_ptab_fini(&e.shares);
	ferry__fv_ptab_fini(&e.htab);
	if (r)
		return r;
	*len = e.pos;
	if (e.pos > cap)
		return ferry__fail(-ENOBUFS, "%s: the clone needs %zu bytes, the buffer has %zu", who,
				   e.pos, cap);
	return 0;
}

size_t ferry__clone_bound(const ferry_value *v)
{
	const struct fv_graph *g = v->g;
	while (g->fwd)
		g = g->fwd;
	return g->bytes - (size_t)(g->end - g->cur);
}

FERRY_API int ferry_clone_size(const ferry_value *v, size_t *len,
			       const struct ferry_clone_encode_opts *opts)
{
	if (!len)
		return ferry__fail(-EINVAL, "ferry_clone_size: NULL len");
	struct ferry_clone_handles h;
	ferry_clone_handles_init(&h);
	int r = ferry_clone_encode(v, NULL, 0, len, &h, opts);
	ferry_clone_handles_fini(&h);
	return r == -ENOBUFS ? 0 : r;
}

/* ======================================================================
 * Decode
 *
 * Where a graph's memory goes: when a container's head has been read (and
 * its count checked against the bytes left), one bump allocation takes its
 * item or entry array and, for each child, a stride: the child's node, 16
 * bytes for the bytes of a short string, and in a map 16 for a short key.
 * Children decode into their stride: the common item (a number, a short
 * string or key) costs no allocation of its own and no bounds check, and a
 * map's entries sit next to their values. Longer strings take a bump
 * allocation each; a sharedref leaves its stride unused. A thread keeps the
 * home chunk of the last graph it freed for its next one (value.c), and the
 * message's lines are prefetched up front. On ferry-bench's 1 KiB object:
 * decode + free ~0.9 -> ~0.45 us (one thread, hot), the round trip
 * ~3.9 -> ~2.6 us.
 * ====================================================================== */

#define KID_STR 32    /* offset of a child's short-string bytes in its stride */
#define KID_KEY 48    /* offset of a map child's short key */
#define ARR_STRIDE 48 /* node + string bytes */
#define MAP_STRIDE 64 /* node + string bytes + key */

struct dec {
	const uint8_t *base, *p, *end;
	struct fv_graph *g;
	unsigned max_depth;
	const struct ferry_clone_handle *handles;
	size_t nhandles;
	ferry_value **shares; /* by shareable index; NULL while reserved */
	size_t nshares, capshares;
	int err; /* what dec_kid failed with */
	ferry_value *inl_shares[16];
};

static int __attribute__((format(printf, 3, 4), noinline, cold))
bad(const struct dec *d, const uint8_t *at, const char *fmt, ...)
{
	char msg[320];
	va_list ap;
	va_start(ap, fmt);
	vsnprintf(msg, sizeof msg, fmt, ap);
	va_end(ap);
	return ferry__fail(-EBADMSG, "ferry_clone_decode: %s at offset %zu", msg,
			   (size_t)(at - d->base));
}

static int __attribute__((noinline, cold)) oom(void)
{
	return ferry__fail(-ENOMEM, "ferry_clone_decode: out of memory");
}

static inline size_t left(const struct dec *d)
{
	return (size_t)(d->end - d->p);
}

/* Read the head of the item at d->p: initial byte and argument (for major 7,
 * the raw bits of a float). Indefinite lengths and reserved forms are left
 * to the caller (ai 31) or refused (ai 28..30). */
static inline int read_head(struct dec *d, uint8_t *ibp, uint64_t *arg)
{
	const uint8_t *at = d->p;
	/* Set on every path: the compiler cannot see that bad() returns non-zero. */
	*ibp = 0;
	*arg = 0;
	if (FERRY_UNLIKELY(at >= d->end))
		return bad(d, at, "truncated: an item is missing");
	uint8_t ib = *at;
	uint8_t ai = ib & 31;
	*ibp = ib;
	if (ai < 24) {
		*arg = ai;
		d->p = at + 1;
		return 0;
	}
	if (FERRY_UNLIKELY(ai > 27)) {
		if (ai == 31) {
			*arg = 0;
			d->p = at + 1;
			return 0;
		}
		return bad(d, at, "reserved additional information %u in initial byte 0x%02x",
			   ai, ib);
	}
	size_t n = (size_t)1 << (ai - 24);
	if (FERRY_UNLIKELY((size_t)(d->end - at) - 1 < n))
		return bad(d, at, "truncated: the head needs %zu more bytes, %zu remain", n,
			   (size_t)(d->end - at) - 1);
	const uint8_t *p = at + 1;
	switch (n) {
	case 1:
		*arg = p[0];
		break;
	case 2: {
		uint16_t x;
		memcpy(&x, p, 2);
		*arg = __builtin_bswap16(x);
		break;
	}
	case 4: {
		uint32_t x;
		memcpy(&x, p, 4);
		*arg = __builtin_bswap32(x);
		break;
	}
	default: {
		uint64_t x;
		memcpy(&x, p, 8);
		*arg = __builtin_bswap64(x);
		break;
	}
	}
	d->p = p + n;
	return 0;
}

/* Make @v (a node of a stride) a value of @kind held by one slot: every
 * decoded node goes into exactly one array or map slot, except the root
 * (ferry_clone_decode takes its count back) and shareables, which tag 29
 * counts on. */
static inline void node_init(ferry_value *v, struct fv_graph *g, unsigned kind)
{
	v->kind = (uint8_t)kind;
	v->typed = 0;
	v->unused = 0;
	v->refs = 1;
	v->g = g;
}

/* The block of a container of @n (> 0) children: @head bytes of items or
 * entries, then @n strides. value.c may realloc or free a big item or entry
 * array when the container grows (see is_big there), so such an array gets
 * its own allocation; a small one shares the block. 0 or -ENOMEM. */
static inline int alloc_block(struct dec *d, size_t head, size_t n, size_t stride, void **headp,
			      char **kids)
{
	size_t h16 = (head + 15) & ~(size_t)15;
	if (FERRY_LIKELY(h16 < FV_BIG)) {
		char *b = fv_alloc_bump(d->g, h16 + n * stride);
		if (FERRY_UNLIKELY(!b))
			return -ENOMEM;
		*headp = b;
		*kids = b + h16;
		return 0;
	}
	*headp = fv_alloc(d->g, head);
	*kids = *headp ? fv_alloc_bump(d->g, n * stride) : NULL;
	return *kids ? 0 : -ENOMEM;
}

/* Copy @len bytes from @src, readable for @len + 8 bytes, to @dst, which has
 * room for round16(@len + 1): a word at a time, the zero padding (the NUL
 * included) written too. Whether a copied byte has its high bit set (not
 * ASCII: the caller then checks the copy, never @src, as UTF-8). */
static inline bool copy_words(char *dst, const uint8_t *src, size_t len)
{
	uint64_t acc = 0, w;
	size_t k = 0;
	for (; k + 8 <= len; k += 8) {
		w = fv_ld64(src + k);
		acc |= w;
		fv_st64(dst + k, w);
	}
	w = fv_ld64(src + k) & ((UINT64_C(1) << (8 * (len - k))) - 1);
	acc |= w;
	fv_st64(dst + k, w);
	k += 8;
	if (k < ((len + 16) & ~(size_t)15))
		fv_st64(dst + k, 0);
	return (acc & FV_HIGH_BITS) != 0;
}

static double half_to_double(uint16_t h)
{
	uint64_t sign = (uint64_t)(h >> 15) << 63;
	unsigned exp = (h >> 10) & 0x1f, mant = h & 0x3ff;
	uint64_t bits;
	if (exp == 0) { /* zero or subnormal: mant * 2^-24, exact */
		double v = (double)mant / 16777216.0;
		memcpy(&bits, &v, 8);
		bits |= sign;
	} else if (exp == 31) { /* infinity or NaN, payload kept */
		bits = sign | (0x7ffull << 52) | ((uint64_t)mant << 42);
	} else {
		bits = sign | ((uint64_t)(exp - 15 + 1023) << 52) | ((uint64_t)mant << 42);
	}
	double v;
	memcpy(&v, &bits, 8);
	return v;
}

static int register_share(struct dec *d, size_t *slot)
{
	if (d->nshares == d->capshares) {
		size_t ncap = d->capshares * 2;
		ferry_value **n;
		if (d->shares == d->inl_shares) {
			n = malloc(ncap * sizeof *n);
			if (n)
				memcpy(n, d->shares, d->nshares * sizeof *n);
		} else {
			n = realloc(d->shares, ncap * sizeof *n);
		}
		if (!n)
			return oom();
		d->shares = n;
		d->capshares = ncap;
	}
	*slot = d->nshares;
	d->shares[d->nshares++] = NULL;
	return 0;
}

#define NO_SLOT SIZE_MAX

static int dec_slow(struct dec *d, unsigned depth, ferry_value *nd, ferry_value **out);
static int dec_array(struct dec *d, const uint8_t *at, uint64_t n, unsigned depth, size_t slot,
		     ferry_value *a, ferry_value **out);
static int dec_map(struct dec *d, const uint8_t *at, uint64_t n, unsigned depth, size_t slot,
		   ferry_value *m, ferry_value **out);

/* Byte or text string body of @len bytes into node @v; @at is the item's
 * head. */
static int dec_string(struct dec *d, const uint8_t *at, unsigned kind, uint64_t len,
		      enum ferry_typed typed, ferry_value *v)
{
	if (FERRY_UNLIKELY(len > left(d)))
		return bad(d, at, "truncated: %s string claims %llu bytes, %zu remain",
			   kind == FERRY_VALUE_STR ? "text" : "byte", (unsigned long long)len,
			   left(d));
	const uint8_t *src = d->p;
	/* A long string gets a chunk of its own (see fv_alloc). */
	char *p = fv_alloc(d->g, len + 1);
	if (!p)
		return oom();
	memcpy(p, src, len);
	fv_pad(p, len);
	if (kind == FERRY_VALUE_STR) {
		/* Checked in the private copy, never in @src: the peer may rewrite
		 * shared memory between a check there and the copy. */
		size_t b = ferry__utf8_check((const uint8_t *)p, len);
		if (FERRY_UNLIKELY(b != len))
			return bad(d, at, "text string is not valid UTF-8 (byte %zu of it)", b);
	}
	node_init(v, d->g, kind);
	v->typed = (uint8_t)typed;
	v->u.s.p = p;
	v->u.s.len = len;
	d->p = src + len;
	return 0;
}

static void swap_elems(char *p, size_t len, size_t es)
{
	for (size_t i = 0; i + es <= len; i += es) {
		for (size_t a = i, b = i + es - 1; a < b; a++, b--) {
			char t = p[a];
			p[a] = p[b];
			p[b] = t;
		}
	}
}

/* The byte string under RFC 8746 tag @tag (64..87), into node @v. */
static int dec_typed(struct dec *d, const uint8_t *at, uint64_t tag, ferry_value *v)
{
	static const struct {
		uint8_t t;
		uint8_t le; /* 1 little-endian, 0 big-endian, 2 single bytes */
	} map[24] = {
		[0] = {FERRY_TYPED_U8, 2},   [1] = {FERRY_TYPED_U16, 0},  [2] = {FERRY_TYPED_U32, 0},
		[3] = {FERRY_TYPED_U64, 0},  [4] = {FERRY_TYPED_U8_CLAMPED, 2},
		[5] = {FERRY_TYPED_U16, 1},  [6] = {FERRY_TYPED_U32, 1},  [7] = {FERRY_TYPED_U64, 1},
		[8] = {FERRY_TYPED_I8, 2},   [9] = {FERRY_TYPED_I16, 0},  [10] = {FERRY_TYPED_I32, 0},
		[11] = {FERRY_TYPED_I64, 0}, [13] = {FERRY_TYPED_I16, 1}, [14] = {FERRY_TYPED_I32, 1},
		[15] = {FERRY_TYPED_I64, 1}, [17] = {FERRY_TYPED_F32, 0}, [18] = {FERRY_TYPED_F64, 0},
		[21] = {FERRY_TYPED_F32, 1}, [22] = {FERRY_TYPED_F64, 1},
	};
	unsigned i = (unsigned)(tag - 64);
	enum ferry_typed t = (enum ferry_typed)map[i].t;
	if (t == FERRY_TYPED_NONE)
		return bad(d, at, "typed array tag %llu (%s) is not supported",
			   (unsigned long long)tag,
			   i == 12 ? "reserved" : (i & 3) == 0 ? "float16" : "float128");
	const uint8_t *sat = d->p;
	uint8_t ib;
	uint64_t len;
	int r = read_head(d, &ib, &len);
	if (r)
		return r;
	if ((ib >> 5) != MAJ_BYTES || (ib & 31) == 31)
		return bad(d, sat, "typed array tag %llu must hold a definite byte string",
			   (unsigned long long)tag);
	size_t es = ferry_typed_elem_size(t);
	if (len % es)
		return bad(d, sat, "typed array of %llu bytes is not a whole number of %zu-byte "
				   "elements",
			   (unsigned long long)len, es);
	r = dec_string(d, sat, FERRY_VALUE_BYTES, len, t, v);
	if (r)
		return r;
	if (map[i].le != 2 && map[i].le != HOST_LE)
		swap_elems(v->u.s.p, len, es);
	return 0;
}

/* A handle reference (the tag is read) into node @v. */
static int dec_handle(struct dec *d, unsigned kind, ferry_value *v)
{
	const uint8_t *iat = d->p;
	uint8_t ib;
	uint64_t idx;
	int r = read_head(d, &ib, &idx);
	if (r)
		return r;
	const char *name = ferry_value_kind_name(kind);
	if ((ib >> 5) != MAJ_UINT || (ib & 31) == 31)
		return bad(d, iat, "%s reference must hold an unsigned index", name);
	if (idx >= d->nhandles)
		return bad(d, iat, "%s reference to handle %llu, but the handle table has %zu",
			   name, (unsigned long long)idx, d->nhandles);
	const struct ferry_clone_handle *h = &d->handles[idx];
	if ((unsigned)h->kind != kind)
		return bad(d, iat, "handle %llu is a %s in the message but a %s in the handle table",
			   (unsigned long long)idx, name, ferry_value_kind_name(h->kind));
	if (!h->handle)
		return bad(d, iat, "handle %llu is NULL in the handle table",
			   (unsigned long long)idx);
	node_init(v, d->g, kind);
	v->u.h = h->handle;
	return 0;
}

/* Keep @a and @b (the words of a short key or string, already in
 * registers for the checks) where they are: otherwise GCC loads and masks
 * the 16 bytes a second time in a vector register just to store them. */
#define FV_IN_REGS(a, b) __asm__("" : "+r"(a), "+r"(b))

/* The header of a decoded node: @kind, no typed view, one slot holds it
 * (see node_init), in one store. */
_Static_assert(offsetof(ferry_value, typed) == 1 && offsetof(ferry_value, unused) == 2 &&
		       offsetof(ferry_value, refs) == 4,
	       "node_init_fast writes the header as one word");

static inline void node_init_fast(ferry_value *v, struct fv_graph *g, unsigned kind)
{
#if HOST_LE
	uint64_t h = (uint64_t)kind | (uint64_t)1 << 32; /* kind, typed, unused, refs */
	memcpy(v, &h, sizeof h);
	v->g = g;
#else
	node_init(v, g, kind);
#endif
}

/* One item at *@pp into @nd, a node with 16 bytes of string room after it
 * (a stride); *@out is @nd, or for a sharedref the node it refers to (its
 * count taken); *@pp moves past the item. The common small kinds are decoded
 * inline (the cursor in a register, no call); anything else, and every
 * error, goes to dec_slow, which decodes it or says precisely what is wrong. */
static inline __attribute__((always_inline)) ferry_value *dec_kid(struct dec *d,
								 const uint8_t **pp,
								 unsigned depth,
								 ferry_value *nd)
{
	const uint8_t *p = *pp;
	size_t room = (size_t)(d->end - p);
	if (FERRY_UNLIKELY(!room))
		goto slow;
	uint8_t ib = *p;
	unsigned ai = ib & 31;
	switch (ib >> 5) {
	case MAJ_UINT:
	case MAJ_NINT: {
		uint64_t u;
		if (ai < 24) {
			u = ai;
			p += 1;
		} else if (ai == 24 && room >= 2) {
			u = p[1];
			p += 2;
		} else if (ai == 25 && room >= 3) {
			u = (uint64_t)p[1] << 8 | p[2];
			p += 3;
		} else if (ai == 26 && room >= 5) {
			uint32_t x;
			memcpy(&x, p + 1, 4);
			u = __builtin_bswap32(x);
			p += 5;
		} else {
			break;
		}
		node_init_fast(nd, d->g, FERRY_VALUE_INT);
		/* major 1 holds -1 - n: the complement */
		nd->u.i = (int64_t)(u ^ (0 - (uint64_t)(ib >> 5)));
		*pp = p;
		return nd;
	}
	case MAJ_BYTES:
	case MAJ_TEXT: {
		bool text = (ib >> 5) == MAJ_TEXT;
		char *s = (char *)nd + KID_STR;
		size_t len, hn;
		if (ai <= 15 && room >= 17) {
			/* Short: two words in, masked and stored out whole (the
			 * zero padding is the NUL); not ASCII: the copy is
			 * checked as UTF-8. */
			uint64_t a = fv_ld64(p + 1) & ferry__fv_mask16[ai][0];
			uint64_t b = fv_ld64(p + 9) & ferry__fv_mask16[ai][1];
			FV_IN_REGS(a, b);
			fv_st64(s, a);
			fv_st64(s + 8, b);
			if (FERRY_UNLIKELY(text && ((a | b) & FV_HIGH_BITS)) &&
			    ferry__utf8_check((const uint8_t *)s, ai) != ai)
				break;
			len = ai;
			hn = 1;
		} else {
			if (ai < 24) {
				len = ai;
				hn = 1;
			} else if (ai == 24 && room >= 2) {
				len = p[1];
				hn = 2;
			} else {
				break;
			}
			/* The word copy reads up to 8 bytes past the string. */
			if (FERRY_UNLIKELY(len + 8 > room - hn))
				break;
			if (len > 15) {
				s = fv_alloc(d->g, len + 1);
				if (FERRY_UNLIKELY(!s)) {
					d->err = oom();
					return NULL;
				}
			}
			if (copy_words(s, p + hn, len) && text &&
			    ferry__utf8_check((const uint8_t *)s, len) != len)
				break;
		}
		node_init_fast(nd, d->g, text ? FERRY_VALUE_STR : FERRY_VALUE_BYTES);
		nd->u.s.p = s;
		nd->u.s.len = len;
		*pp = p + hn + len;
		return nd;
	}
	case MAJ_ARRAY:
	case MAJ_MAP:
		/* Straight to the container (not through dec_slow and dec_body). */
		if (ai < 24) {
			ferry_value *v;
			d->p = p + 1;
			int r = (ib >> 5) == MAJ_ARRAY ? dec_array(d, p, ai, depth, NO_SLOT, nd, &v)
						       : dec_map(d, p, ai, depth, NO_SLOT, nd, &v);
			*pp = d->p;
			if (FERRY_UNLIKELY(r)) {
				d->err = r;
				return NULL;
			}
			return v;
		}
		break;
	case MAJ_SIMPLE:
		if (ai >= 20 && ai <= 23) {
			/* false true null undefined, in a nibble each */
			node_init_fast(nd, d->g, (0x1022u >> (4 * (ai - 20))) & 15);
			nd->u.i = 0;
			nd->u.b = ai == 21;
			*pp = p + 1;
			return nd;
		}
		if (ai == 27 && room >= 9) {
			node_init_fast(nd, d->g, FERRY_VALUE_DOUBLE);
			uint64_t x;
			memcpy(&x, p + 1, 8);
			x = __builtin_bswap64(x);
			memcpy(&nd->u.d, &x, 8);
			*pp = p + 9;
			return nd;
		}
		break;
	default:
		break;
	}
slow:
	d->p = *pp;
	ferry_value *v;
	int r = dec_slow(d, depth, nd, &v);
	*pp = d->p;
	if (FERRY_UNLIKELY(r)) {
		d->err = r;
		return NULL;
	}
	return v;
}

static int __attribute__((noinline))
dec_array(struct dec *d, const uint8_t *at, uint64_t n, unsigned depth, size_t slot, ferry_value *a,
	  ferry_value **out)
{
	if (FERRY_UNLIKELY(depth > d->max_depth))
		return bad(d, at, "arrays and maps nest deeper than %u", d->max_depth);
	/* Every item takes at least one byte. */
	if (FERRY_UNLIKELY(n > left(d)))
		return bad(d, at, "truncated: array claims %llu items, %zu bytes remain",
			   (unsigned long long)n, left(d));
	if (FERRY_UNLIKELY(n > UINT32_MAX))
		return bad(d, at, "array of %llu items is too long", (unsigned long long)n);
	node_init(a, d->g, FERRY_VALUE_ARRAY);
	ferry_value **items = NULL;
	char *kids = NULL;
	if (n && alloc_block(d, n * sizeof *items, n, ARR_STRIDE, (void **)&items, &kids))
		return oom();
	a->u.a.items = items;
	a->u.a.len = 0;
	a->u.a.cap = (uint32_t)n;
	if (slot != NO_SLOT)
		d->shares[slot] = a; /* before the items: they may refer to it */
	const uint8_t *p = d->p;
	for (uint32_t i = 0; i < (uint32_t)n; i++) {
		ferry_value *v = dec_kid(d, &p, depth + 1,
					 (ferry_value *)(kids + (size_t)i * ARR_STRIDE));
		if (FERRY_UNLIKELY(!v))
			return d->err;
		items[i] = v;
	}
	d->p = p;
	a->u.a.len = (uint32_t)n;
	*out = a;
	return 0;
}

/* Key of a map entry: a definite text string. */
static int __attribute__((noinline, cold)) bad_key(struct dec *d)
{
	const uint8_t *kat = d->p;
	uint8_t ib;
	uint64_t klen;
	int r = read_head(d, &ib, &klen);
	if (r)
		return r;
	if ((ib >> 5) != MAJ_TEXT || (ib & 31) == 31)
		return bad(d, kat, "map key is not a definite-length text string (initial byte "
				   "0x%02x)",
			   ib);
	if (klen > left(d))
		return bad(d, kat, "truncated: map key claims %llu bytes, %zu remain",
			   (unsigned long long)klen, left(d));
	size_t b = ferry__utf8_check(d->p, klen);
	return bad(d, kat, "map key is not valid UTF-8 (byte %zu of it)", b);
}

/* A map key the inline path does not take (long, not ASCII, a longer head,
 * near the end) at d->p: into @slot (16 bytes) if it has at most 15 bytes,
 * else a bump allocation; *@k and *@klen say where and how long. */
struct key {
	char *k;     /* NULL on error (in d->err) */
	size_t klen;
};

static struct key __attribute__((noinline)) dec_key(struct dec *d, char *slot)
{
	struct key out = {NULL, 0};
	const uint8_t *p = d->p;
	uint8_t ib;
	uint64_t kl;
	if (read_head(d, &ib, &kl) || (ib >> 5) != MAJ_TEXT || (ib & 31) == 31 || kl > left(d)) {
		d->p = p;
		d->err = bad_key(d);
		return out;
	}
	const char *key = (const char *)d->p;
	char *dst = kl <= 15 ? slot : fv_alloc(d->g, kl + 1);
	if (FERRY_UNLIKELY(!dst)) {
		d->err = oom();
		return out;
	}
	memcpy(dst, key, kl);
	fv_pad(dst, kl);
	/* Checked in the private copy, as in dec_string. */
	if (!fv_utf8_ok((const uint8_t *)dst, kl)) {
		size_t bb = ferry__utf8_check((const uint8_t *)dst, kl);
		d->err = bad(d, p, "map key is not valid UTF-8 (byte %zu of it)", bb);
		return out;
	}
	d->p = (const uint8_t *)key + kl;
	out.k = dst;
	out.klen = kl;
	return out;
}

/*
 * A map key at *@pp into @kid: a short text key (0x60..0x6f, with 16 bytes
 * readable after its head) ASCII-checked and stored as two masked words
 * (the zero padding is the NUL), returned in @a and @b with *@fast set;
 * anything else through dec_key(), with @a and @b the stored words of a key
 * of up to 15 bytes (0 for a longer one). Returns false on a decode error
 * (in d->err).
 */
static inline __attribute__((always_inline)) bool
map_key(struct dec *d, const uint8_t **pp, char *kid, char **k, size_t *klen, uint64_t *a,
	uint64_t *b, bool *fast)
{
	const uint8_t *p = *pp;
	size_t n = (size_t)(d->end - p) >= 17 ? (size_t)*p - 0x60 : 16;
	uint64_t wa, wb;
	if (FERRY_LIKELY(n <= 15) &&
	    (wa = fv_ld64(p + 1) & ferry__fv_mask16[n][0],
	     wb = fv_ld64(p + 9) & ferry__fv_mask16[n][1],
	     FERRY_LIKELY(!((wa | wb) & FV_HIGH_BITS)))) {
		char *key = kid + KID_KEY;
		FV_IN_REGS(wa, wb);
		fv_st64(key, wa);
		fv_st64(key + 8, wb);
		*k = key;
		*klen = n;
		*a = wa;
		*b = wb;
		*fast = true;
		*pp = p + 1 + n;
		return true;
	}
	d->p = p;
	struct key sk = dec_key(d, kid + KID_KEY);
	if (!sk.k)
		return false;
	*k = sk.k;
	*klen = sk.klen;
	*a = sk.klen <= 15 ? fv_ld64(sk.k) : 0;
	*b = sk.klen <= 15 ? fv_ld64(sk.k + 8) : 0;
	*fast = false;
	*pp = d->p;
	return true;
}

static int __attribute__((noinline, cold))
dup_key(struct dec *d, const uint8_t *at, const char *k, size_t klen)
{
	return bad(d, at, "map has the key \"%.*s\" twice", klen > 40 ? 40 : (int)klen, k);
}

/* Whether keys @x and @y, both @klen bytes, are equal. Keys of up to 15
 * bytes are zero padded to 16 (see value_internal.h): two word compares. */
static inline bool same_key(const char *x, const char *y, size_t klen)
{
	if (klen <= 15)
		return fv_ld64(x) == fv_ld64(y) && fv_ld64(x + 8) == fv_ld64(y + 8);
	return memcmp(x, y, klen) == 0;
}

static int __attribute__((noinline))
dec_map(struct dec *d, const uint8_t *at, uint64_t n, unsigned depth, size_t slot, ferry_value *m,
	ferry_value **out)
{
	if (FERRY_UNLIKELY(depth > d->max_depth))
		return bad(d, at, "arrays and maps nest deeper than %u", d->max_depth);
	/* Every entry takes at least two bytes. */
	if (FERRY_UNLIKELY(n > left(d) / 2))
		return bad(d, at, "truncated: map claims %llu entries, %zu bytes remain",
			   (unsigned long long)n, left(d));
	if (FERRY_UNLIKELY(n > UINT32_MAX))
		return bad(d, at, "map of %llu entries is too long", (unsigned long long)n);
	uint32_t cap = (uint32_t)n;
	node_init(m, d->g, FERRY_VALUE_MAP);
	struct fv_entry *e = NULL;
	char *kids = NULL;
	if (n && alloc_block(d, fv_map_block(cap), n, MAP_STRIDE, (void **)&e, &kids))
		return oom();
	m->u.m.e = e;
	m->u.m.len = 0;
	m->u.m.cap = cap;
	uint32_t *idx = fv_map_idx(m), mask = fv_map_mask(m);
	if (slot != NO_SLOT)
		d->shares[slot] = m;
	const uint8_t *p = d->p;
	if (idx) {
		/* Big: hashed keys; the index, built as the keys come, finds
		 * duplicates. */
		memset(idx, 0, (size_t)mask * sizeof *idx + sizeof *idx);
		uint64_t seed = fv_seed();
		for (uint32_t i = 0; i < cap; i++) {
			char *kid = kids + (size_t)i * MAP_STRIDE;
			const uint8_t *kat = p;
			char *k;
			size_t klen;
			uint64_t a, b;
			bool fast;
			if (FERRY_UNLIKELY(!map_key(d, &p, kid, &k, &klen, &a, &b, &fast)))
				return d->err;
			/* A short key hashes from the two words it is held in. */
			uint32_t hash = fast ? fv_hash16(a, b, klen, seed) : fv_hash(k, klen);
			/* Duplicate check, then the entry and its index slot
			 * take the key before the value is decoded (fewer
			 * values to keep across it): the value cannot reach
			 * this map's entries, and m->u.m.len stays 0 until the
			 * map is whole. */
			uint32_t s = hash & mask, x;
			while ((x = idx[s]) != 0) {
				const struct fv_entry *c = &e[x - 1];
				if (FERRY_UNLIKELY(c->hash == hash && c->klen == klen &&
						   same_key(c->key, k, klen)))
					return dup_key(d, kat, k, klen);
				s = (s + 1) & mask;
			}
			struct fv_entry *en = &e[i];
			en->key = k;
			en->klen = (uint32_t)klen;
			en->hash = hash;
			idx[s] = i + 1;
			ferry_value *v = dec_kid(d, &p, depth + 1, (ferry_value *)kid);
			if (FERRY_UNLIKELY(!v))
				return d->err;
			en->v = v;
		}
	} else {
		/* Small: the keys so far, for the duplicate check, a key of up
		 * to 15 bytes as its two padded words with its length in the
		 * top byte of the second (always zero there), a longer one as
		 * ~0 (never equal). */
		uint64_t ka[FV_MAP_LINEAR], kb[FV_MAP_LINEAR];
		for (uint32_t i = 0; i < cap; i++) {
			char *kid = kids + (size_t)i * MAP_STRIDE;
			const uint8_t *kat = p;
			char *k;
			size_t klen;
			uint64_t a, b;
			bool fast;
			if (FERRY_UNLIKELY(!map_key(d, &p, kid, &k, &klen, &a, &b, &fast)))
				return d->err;
			if (klen <= 15) {
				uint64_t bk = b | (uint64_t)klen << 56;
				for (uint32_t j = 0; j < i; j++)
					if (FERRY_UNLIKELY(ka[j] == a && kb[j] == bk))
						return dup_key(d, kat, k, klen);
				ka[i] = a;
				kb[i] = bk;
			} else {
				for (uint32_t j = 0; j < i; j++)
					if (FERRY_UNLIKELY(e[j].klen == klen &&
							   memcmp(e[j].key, k, klen) == 0))
						return dup_key(d, kat, k, klen);
				ka[i] = 0;
				kb[i] = ~(uint64_t)0;
			}
			struct fv_entry *en = &e[i];
			en->key = k;
			en->klen = (uint32_t)klen;
			en->hash = 0;
			ferry_value *v = dec_kid(d, &p, depth + 1, (ferry_value *)kid);
			if (FERRY_UNLIKELY(!v))
				return d->err;
			en->v = v;
		}
	}
	d->p = p;
	m->u.m.len = cap;
	*out = m;
	return 0;
}

/* The item whose head (@ib, @arg) was read at @at, into node @nd; @slot is
 * the shareable slot to fill when the item sits under tag 28. */
static int dec_body(struct dec *d, const uint8_t *at, uint8_t ib, uint64_t arg, unsigned depth,
		    size_t slot, ferry_value *nd, ferry_value **out)
{
	unsigned major = ib >> 5, ai = ib & 31;
	int r;
	if (FERRY_UNLIKELY(ai == 31 && major != MAJ_SIMPLE)) {
		if (major >= MAJ_BYTES && major <= MAJ_MAP)
			return bad(d, at, "indefinite-length %s are not supported (ferry writes "
					  "definite lengths)",
				   major == MAJ_BYTES   ? "byte strings"
				   : major == MAJ_TEXT  ? "text strings"
				   : major == MAJ_ARRAY ? "arrays"
							: "maps");
		return bad(d, at, "malformed initial byte 0x%02x", ib);
	}
	switch (major) {
	case MAJ_UINT:
	case MAJ_NINT:
		if (FERRY_UNLIKELY(arg > INT64_MAX))
			return bad(d, at, "integer %s%llu does not fit in int64",
				   major == MAJ_NINT ? "-1-" : "", (unsigned long long)arg);
		node_init(nd, d->g, FERRY_VALUE_INT);
		nd->u.i = major == MAJ_UINT ? (int64_t)arg : -1 - (int64_t)arg;
		break;
	case MAJ_BYTES:
	case MAJ_TEXT:
		r = dec_string(d, at, major == MAJ_TEXT ? FERRY_VALUE_STR : FERRY_VALUE_BYTES, arg,
			       FERRY_TYPED_NONE, nd);
		if (r)
			return r;
		break;
	case MAJ_ARRAY:
		return dec_array(d, at, arg, depth, slot, nd, out);
	case MAJ_MAP:
		return dec_map(d, at, arg, depth, slot, nd, out);
	case MAJ_TAG:
		if (arg == TAG_SHAREABLE) {
			if (slot != NO_SLOT)
				return bad(d, at, "tag 28 (shareable) directly inside tag 28");
			size_t s = 0;
			if ((r = register_share(d, &s)))
				return r;
			const uint8_t *iat = d->p;
			if ((r = read_head(d, &ib, &arg)))
				return r;
			if ((ib >> 5) == MAJ_TAG && arg == TAG_SHAREDREF)
				return bad(d, iat, "tag 29 (sharedref) directly inside tag 28");
			return dec_body(d, iat, ib, arg, depth, s, nd, out);
		}
		if (arg == TAG_SHAREDREF) {
			const uint8_t *iat = d->p;
			if ((r = read_head(d, &ib, &arg)))
				return r;
			if ((ib >> 5) != MAJ_UINT || (ib & 31) == 31)
				return bad(d, iat, "tag 29 (sharedref) must hold an unsigned index");
			if (arg >= d->nshares)
				return bad(d, at, "sharedref %llu, but only %zu values were marked "
						  "shareable before it",
					   (unsigned long long)arg, d->nshares);
			if (!d->shares[arg])
				return bad(d, at, "sharedref %llu refers to a value still being "
						  "decoded",
					   (unsigned long long)arg);
			/* One more slot holds it; @nd stays unused. */
			fv_ref(d->shares[arg]);
			*out = d->shares[arg];
			return 0;
		}
		if (arg >= 64 && arg <= 87) {
			r = dec_typed(d, at, arg, nd);
		} else if (arg == FERRY_CLONE_TAG_BUF) {
			r = dec_handle(d, FERRY_VALUE_BUF, nd);
		} else if (arg == FERRY_CLONE_TAG_SHARED) {
			r = dec_handle(d, FERRY_VALUE_SHARED, nd);
		} else if (arg == FERRY_CLONE_TAG_PORT) {
			r = dec_handle(d, FERRY_VALUE_PORT, nd);
		} else {
			return bad(d, at, "unknown tag %llu", (unsigned long long)arg);
		}
		if (r)
			return r;
		break;
	default: /* MAJ_SIMPLE */
		node_init(nd, d->g, FERRY_VALUE_NULL);
		nd->u.i = 0;
		switch (ai) {
		case 20:
		case 21:
			nd->kind = FERRY_VALUE_BOOL;
			nd->u.b = ai == 21;
			break;
		case 22:
			nd->kind = FERRY_VALUE_NULL;
			break;
		case 23:
			nd->kind = FERRY_VALUE_UNDEFINED;
			break;
		case 25:
			nd->kind = FERRY_VALUE_DOUBLE;
			nd->u.d = half_to_double((uint16_t)arg);
			break;
		case 26: {
			uint32_t b32 = (uint32_t)arg;
			float f;
			memcpy(&f, &b32, 4);
			nd->kind = FERRY_VALUE_DOUBLE;
			nd->u.d = (double)f;
			break;
		}
		case 27:
			nd->kind = FERRY_VALUE_DOUBLE;
			memcpy(&nd->u.d, &arg, 8);
			break;
		case 31:
			return bad(d, at, "break code outside an indefinite-length item");
		case 24:
			return bad(d, at, "simple value %llu is not supported",
				   (unsigned long long)arg);
		default:
			return bad(d, at, "simple value %u is not supported", ai);
		}
		break;
	}
	if (slot != NO_SLOT)
		d->shares[slot] = nd;
	*out = nd;
	return 0;
}

static int __attribute__((noinline)) dec_slow(struct dec *d, unsigned depth, ferry_value *nd,
					      ferry_value **out)
{
	const uint8_t *at = d->p;
	uint8_t ib;
	uint64_t arg;
	int r = read_head(d, &ib, &arg);
	if (r)
		return r;
	return dec_body(d, at, ib, arg, depth, NO_SLOT, nd, out);
}

FERRY_API int ferry_clone_decode(const void *buf, size_t len,
				 const struct ferry_clone_decode_opts *opts, ferry_value **out)
{
	static const char who[] = "ferry_clone_decode";
	if (!out)
		return ferry__fail(-EINVAL, "%s: NULL out", who);
	*out = NULL;
	if (!buf && len)
		return ferry__fail(-EINVAL, "%s: NULL buffer of %zu bytes", who, len);
	/* The message was usually just written by another core: ask for its
	 * lines (the first 4 KiB; the hardware streams the rest) all at once
	 * rather than one miss at a time as the decoder reaches them; first
	 * thing, so that the setup below overlaps the fetches. Worth about
	 * 1 us of the 1 KiB object's round trip (3.9 -> 2.9 us). */
	for (uintptr_t a = (uintptr_t)buf & ~(uintptr_t)63, e = (uintptr_t)buf + (len < 4096 ? len : 4096);
	     a < e; a += 64)
		__builtin_prefetch((const void *)a);
	struct dec d; /* not = {0}: inl_shares needs no zeroing */
	d.base = d.p = buf;
	d.end = (const uint8_t *)buf + len;
	d.handles = NULL;
	d.nhandles = 0;
	d.nshares = 0;
	int r = check_depth_opt(who, opts ? opts->max_depth : 0, &d.max_depth);
	if (r)
		return r;
	if (opts) {
		if (!opts->handles && opts->nhandles)
			return ferry__fail(-EINVAL, "%s: NULL handle table of %zu entries", who,
					   opts->nhandles);
		d.handles = opts->handles;
		d.nhandles = opts->nhandles;
	}
	if (!len)
		return ferry__fail(-EBADMSG, "%s: empty message", who);
	/* First chunk: about what a message of small fields needs (a 1-byte
	 * item costs its stride and its slot, see above), so that one malloc
	 * usually does; capped below malloc's mmap threshold, later chunks
	 * grow. */
	size_t first = len * 16 + 256;
	if (first > FV_CHUNK_MAX)
		first = FV_CHUNK_MAX;
	d.g = ferry__fv_graph_new(first);
	if (!d.g)
		return oom();
	d.shares = d.inl_shares;
	d.capshares = sizeof d.inl_shares / sizeof d.inl_shares[0];
	ferry_value *root = NULL, *rn = fv_alloc(d.g, ARR_STRIDE);
	const uint8_t *p = d.p;
	if (!rn)
		r = oom();
	else if (!(root = dec_kid(&d, &p, 1, rn)))
		r = d.err;
	d.p = p;
	if (!r && d.p != d.end)
		r = bad(&d, d.p, "%zu trailing bytes after the value", left(&d));
	if (d.shares != d.inl_shares)
		free(d.shares);
	if (r) {
		ferry__fv_graph_free(d.g);
		return r;
	}
	/* No slot holds the root (see node_init). */
	if (root->refs != UINT32_MAX)
		root->refs--;
	*out = root;
	return 0;
}
