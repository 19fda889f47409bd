/* The value model: graphs (arenas), constructors, containers, getters, equal. */
#include "ports/value_internal.h"

#include <stdatomic.h>

#include <errno.h>
#include <pthread.h>
#include <stdlib.h>
#include <sys/random.h>
#include <time.h>

static inline size_t round16(size_t n)
{
	return (n + 15) & ~(size_t)15;
}

/* Whether fv_alloc gives @size bytes a chunk of their own: such memory can be
 * realloc'd or released early (fv_grow, fv_release). */
static inline bool is_big(size_t size)
{
	return round16(size) >= FV_BIG;
}

static inline void ring_insert(struct fv_chunk *ring, struct fv_chunk *c)
{
	c->next = ring->next;
	c->prev = ring;
	ring->next->prev = c;
	ring->next = c;
}

/*
 * Spare home chunks, per thread. A thread that receives messages in a loop
 * frees each decoded graph before (or soon after) decoding the next: keeping
 * the last home chunk saves a malloc and a free per message, and glibc's
 * consolidation of its fast bins that a large malloc triggers (both were
 * visible in the 1 KiB object round trip). Two slots, small and large home
 * chunks apart, each the last one freed, so that a thread whose messages
 * alternate between a few fields and many keeps one of each, and a slot never
 * stays stuck with a size the thread stopped using. Only chunks of
 * FV_SPARE_MIN to FV_SPARE_MAX bytes are kept (the smallest is what the
 * decoder asks for a message of a few bytes: a clone of one small buffer
 * reused it for ~40 ns less a message; a constructor's own chunk is smaller),
 * and reused for a graph that fills at least half; a key's destructor frees
 * them when their thread ends.
 */
#define FV_SPARE_MIN (FV_CHUNK_HDR + 64 + 256)
#define FV_SPARE_MAX (FV_CHUNK_HDR + 64 + FV_CHUNK_MAX)
#define FV_SPARE_SPLIT 4096 /* the small slot holds chunks up to this size */

static __thread struct fv_chunk *fv_spare[2];
static __thread size_t fv_spare_size[2];
static __thread bool fv_spare_keyed;
static pthread_key_t fv_spare_key;
static pthread_once_t fv_spare_once = PTHREAD_ONCE_INIT;
static bool fv_spare_key_ok;

static void fv_spare_drop(void *unused)
{
	(void)unused;
	for (int k = 0; k < 2; k++) {
		free(fv_spare[k]);
		fv_spare[k] = NULL;
		fv_spare_size[k] = 0;
	}
	fv_spare_keyed = false; /* a later destructor's free may key it again */
}

static void fv_spare_key_init(void)
{
	fv_spare_key_ok = pthread_key_create(&fv_spare_key, fv_spare_drop) == 0;
}

/* Keep @c (@size bytes) as this thread's spare of its size if it may (the
 * one it replaces is freed); true if kept. */
static bool fv_spare_keep(struct fv_chunk *c, size_t size)
{
	if (size < FV_SPARE_MIN || size > FV_SPARE_MAX)
		return false;
	if (FERRY_UNLIKELY(!fv_spare_keyed)) {
		/* Register the thread for the destructor (any non-NULL value). */
		pthread_once(&fv_spare_once, fv_spare_key_init);
		if (!fv_spare_key_ok || pthread_setspecific(fv_spare_key, &fv_spare_keyed) != 0)
			return false;
		fv_spare_keyed = true;
	}
	int k = size > FV_SPARE_SPLIT;
	free(fv_spare[k]);
	fv_spare[k] = c;
	fv_spare_size[k] = size;
	return true;
}

/* A spare of @size bytes or more that @size fills at least half of, taken
 * out of its slot (*@got its size), or NULL. */
static struct fv_chunk *fv_spare_take(size_t size, size_t *got)
{
	for (int k = size > FV_SPARE_SPLIT; k < 2; k++) {
		size_t have = fv_spare_size[k];
		if (fv_spare[k] && have >= size && have - size <= size) {
			struct fv_chunk *c = fv_spare[k];
			fv_spare[k] = NULL;
			fv_spare_size[k] = 0;
			*got = have;
			return c;
		}
	}
	return NULL;
}

struct fv_graph *ferry__fv_graph_new(size_t first)
{
	size_t ghdr = round16(sizeof(struct fv_graph));
	first = round16(first);
	size_t size = FV_CHUNK_HDR + ghdr + first;
	size_t got;
	/* A spare, unless it would waste more than half of itself. */
	struct fv_chunk *home = fv_spare_take(size, &got);
	if (home) {
		size = got;
		first = size - FV_CHUNK_HDR - ghdr;
	} else {
		home = malloc(size);
		if (!home)
			return NULL;
	}
	struct fv_graph *g = (struct fv_graph *)((char *)home + FV_CHUNK_HDR);
	g->fwd = NULL;
	g->ring.next = g->ring.prev = &g->ring;
	ring_insert(&g->ring, home);
	g->cur = (char *)g + ghdr;
	g->end = g->cur + first;
	g->bytes = size;
	g->home = size;
	return g;
}

void ferry__fv_graph_free(struct fv_graph *g)
{
	struct fv_chunk *home = (struct fv_chunk *)((char *)g - FV_CHUNK_HDR);
	/* The sentinel lives in the home chunk: free that one last. */
	for (struct fv_chunk *c = g->ring.next, *n; c != &g->ring; c = n) {
		n = c->next;
		if (c != home)
			free(c);
	}
	if (!fv_spare_keep(home, g->home))
		free(home);
}

void *ferry__fv_alloc_slow(struct fv_graph *g, size_t size)
{
	if (size >= FV_BIG) {
		struct fv_chunk *c = malloc(FV_CHUNK_HDR + size);
		if (!c)
			return NULL;
		ring_insert(&g->ring, c);
		g->bytes += FV_CHUNK_HDR + size;
		return (char *)c + FV_CHUNK_HDR;
	}
	/* Chunks grow with the graph, so n allocations cost O(log n) mallocs. */
	size_t csize = g->bytes;
	if (csize < FV_CHUNK_MIN)
		csize = FV_CHUNK_MIN;
	if (csize > FV_CHUNK_MAX)
		csize = FV_CHUNK_MAX;
	if (csize < size)
		csize = size;
	struct fv_chunk *c = malloc(FV_CHUNK_HDR + csize);
	if (!c)
		return NULL;
	ring_insert(&g->ring, c);
	g->bytes += FV_CHUNK_HDR + csize;
	char *p = (char *)c + FV_CHUNK_HDR;
	g->cur = p + size;
	g->end = p + csize;
	return p;
}

/* Make @old (@oldsize bytes, from fv_alloc) @newsize bytes, keeping its
 * content. A big block is realloc'd in place; a small one is copied and its
 * old bytes stay in the arena. NULL on ENOMEM (@old untouched). */
static void *fv_grow(struct fv_graph *g, void *old, size_t oldsize, size_t newsize)
{
	if (old && is_big(oldsize)) {
		struct fv_chunk *c = (struct fv_chunk *)((char *)old - FV_CHUNK_HDR);
		struct fv_chunk *prev = c->prev, *next = c->next;
		struct fv_chunk *n = realloc(c, FV_CHUNK_HDR + round16(newsize));
		if (!n)
			return NULL;
		prev->next = n;
		next->prev = n;
		g->bytes += round16(newsize) - round16(oldsize);
		return (char *)n + FV_CHUNK_HDR;
	}
	void *p = fv_alloc(g, newsize);
	if (p && oldsize)
		memcpy(p, old, oldsize);
	return p;
}

/* Give back @p (@size bytes, from fv_alloc) early if it has its own chunk. */
static void fv_release(struct fv_graph *g, void *p, size_t size)
{
	if (!p || !is_big(size))
		return;
	struct fv_chunk *c = (struct fv_chunk *)((char *)p - FV_CHUNK_HDR);
	c->prev->next = c->next;
	c->next->prev = c->prev;
	g->bytes -= FV_CHUNK_HDR + round16(size);
	free(c);
}

/* Join the graphs of @a and @b; returns the root of the joined graph. */
static struct fv_graph *fv_join(struct fv_graph *a, struct fv_graph *b)
{
	a = fv_root(a);
	b = fv_root(b);
	if (a == b)
		return a;
	if (a->bytes < b->bytes) {
		struct fv_graph *t = a;
		a = b;
		b = t;
	}
	/* Splice b's ring (never empty: it holds b's home) into a's. */
	struct fv_chunk *first = b->ring.next, *last = b->ring.prev;
	last->next = a->ring.next;
	a->ring.next->prev = last;
	a->ring.next = first;
	first->prev = &a->ring;
	b->ring.next = b->ring.prev = &b->ring;
	b->cur = b->end = NULL;
	b->fwd = a;
	a->bytes += b->bytes;
	return a;
}

/* ---- hashing, UTF-8, pointer tables ---- */

/* Masks keeping the first n (0..15) bytes of two little-endian words: the
 * decoder loads 16 bytes of a short key or string at once. */
const uint64_t ferry__fv_mask16[16][2] = {
	{0x0000000000000000ull, 0x0000000000000000ull},
	{0x00000000000000ffull, 0x0000000000000000ull},
	{0x000000000000ffffull, 0x0000000000000000ull},
	{0x0000000000ffffffull, 0x0000000000000000ull},
	{0x00000000ffffffffull, 0x0000000000000000ull},
	{0x000000ffffffffffull, 0x0000000000000000ull},
	{0x0000ffffffffffffull, 0x0000000000000000ull},
	{0x00ffffffffffffffull, 0x0000000000000000ull},
	{0xffffffffffffffffull, 0x0000000000000000ull},
	{0xffffffffffffffffull, 0x00000000000000ffull},
	{0xffffffffffffffffull, 0x000000000000ffffull},
	{0xffffffffffffffffull, 0x0000000000ffffffull},
	{0xffffffffffffffffull, 0x00000000ffffffffull},
	{0xffffffffffffffffull, 0x000000ffffffffffull},
	{0xffffffffffffffffull, 0x0000ffffffffffffull},
	{0xffffffffffffffffull, 0x00ffffffffffffffull},
};

_Atomic uint64_t ferry__fv_seed;

uint64_t ferry__fv_seed_init(void)
{
	uint64_t n = 0;
	if (getrandom(&n, sizeof n, GRND_NONBLOCK) != (ssize_t)sizeof n) {
		struct timespec ts;
		clock_gettime(CLOCK_MONOTONIC, &ts);
		n = (uint64_t)ts.tv_nsec * 0x9E3779B97F4A7C15ull ^ (uint64_t)(uintptr_t)&n;
	}
	n |= 1;
	/* Every thread must hash with the same seed: the first one set wins.
	 * Relaxed is enough: the seed guards no other memory. */
	uint64_t expect = 0;
	if (!atomic_compare_exchange_strong_explicit(&ferry__fv_seed, &expect, n,
						     memory_order_relaxed,
						     memory_order_relaxed))
		n = expect;
	return n;
}

size_t ferry__utf8_check(const uint8_t *s, size_t n)
{
	size_t i = 0;
	while (i < n) {
		if (i + 8 <= n) {
			uint64_t w;
			memcpy(&w, s + i, 8);
			if (!(w & 0x8080808080808080ull)) {
				i += 8;
				continue;
			}
		}
		uint8_t c = s[i];
		if (c < 0x80) {
			i++;
			continue;
		}
		if (c < 0xC2) /* a continuation byte, or an overlong 2-byte form */
			return i;
		if (c < 0xE0) {
			if (i + 1 >= n || (s[i + 1] & 0xC0) != 0x80)
				return i;
			i += 2;
			continue;
		}
		if (c < 0xF0) {
			if (i + 2 >= n)
				return i;
			uint8_t c1 = s[i + 1];
			if ((c1 & 0xC0) != 0x80 || (s[i + 2] & 0xC0) != 0x80)
				return i;
			if (c == 0xE0 && c1 < 0xA0) /* overlong */
				return i;
			if (c == 0xED && c1 >= 0xA0) /* UTF-16 surrogate */
				return i;
			i += 3;
			continue;
		}
		if (c < 0xF5) {
			if (i + 3 >= n)
				return i;
			uint8_t c1 = s[i + 1];
			if ((c1 & 0xC0) != 0x80 || (s[i + 2] & 0xC0) != 0x80 ||
			    (s[i + 3] & 0xC0) != 0x80)
				return i;
			if (c == 0xF0 && c1 < 0x90) /* overlong */
				return i;
			if (c == 0xF4 && c1 >= 0x90) /* past U+10FFFF */
				return i;
			i += 4;
			continue;
		}
		return i;
	}
	return n;
}

int ferry__fv_ptab_put(struct fv_ptab *t, const void *k, uintptr_t v)
{
	if (!t->slots) {
		memset(t->inl, 0, sizeof t->inl);
		t->slots = t->inl;
		t->mask = sizeof t->inl / sizeof t->inl[0] - 1;
	}
	if ((t->count + 1) * 2 > t->mask + 1) {
		size_t nsize = (t->mask + 1) * 2;
		struct fv_pent *ns = calloc(nsize, sizeof *ns);
		if (!ns)
			return -ENOMEM;
		for (size_t i = 0; i <= t->mask; i++) {
			if (!t->slots[i].k)
				continue;
			size_t s = fv_ptab_slot(t->slots[i].k, nsize - 1);
			while (ns[s].k)
				s = (s + 1) & (nsize - 1);
			ns[s] = t->slots[i];
		}
		if (t->slots != t->inl)
			free(t->slots);
		t->slots = ns;
		t->mask = nsize - 1;
	}
	uintptr_t key = (uintptr_t)k;
	size_t s = fv_ptab_slot(key, t->mask);
	while (t->slots[s].k)
		s = (s + 1) & t->mask;
	t->slots[s].k = key;
	t->slots[s].v = v;
	t->count++;
	return 0;
}

void ferry__fv_ptab_fini(struct fv_ptab *t)
{
	if (t->slots && t->slots != t->inl)
		free(t->slots);
	t->slots = NULL;
}

/* ---- maps ---- */

static void unref(ferry_value *v)
{
	if (v->refs != UINT32_MAX)
		v->refs--;
}

/* Give map @m room for @ncap entries (> len): a new block, entries copied,
 * the index rebuilt. */
static int map_resize(struct fv_graph *g, ferry_value *m, uint32_t ncap)
{
	size_t size = fv_map_block(ncap);
	struct fv_entry *e = fv_alloc(g, size);
	if (!e)
		return -ENOMEM;
	struct fv_entry *old = m->u.m.e;
	uint32_t oldcap = m->u.m.cap, len = m->u.m.len;
	if (len)
		memcpy(e, old, len * sizeof *e);
	m->u.m.e = e;
	m->u.m.cap = ncap;
	m->u.m.len = 0;
	uint32_t *idx = fv_map_idx(m);
	if (idx)
		memset(idx, 0, fv_idx_size(ncap) * sizeof *idx);
	for (uint32_t i = 0; i < len; i++) {
		uint32_t h = idx ? fv_hash(e[i].key, e[i].klen) : 0;
		ferry_value *v = e[i].v;
		fv_map_append(m, e[i].key, e[i].klen, h, v);
		unref(v); /* append took a second reference */
	}
	if (old)
		fv_release(g, old, fv_map_block(oldcap));
	return 0;
}

/* ---- constructors ---- */

static const char *const kind_names[] = {
	[FERRY_VALUE_NULL] = "null",     [FERRY_VALUE_UNDEFINED] = "undefined",
	[FERRY_VALUE_BOOL] = "bool",     [FERRY_VALUE_INT] = "int",
	[FERRY_VALUE_DOUBLE] = "double", [FERRY_VALUE_STR] = "string",
	[FERRY_VALUE_BYTES] = "bytes",   [FERRY_VALUE_ARRAY] = "array",
	[FERRY_VALUE_MAP] = "map",       [FERRY_VALUE_BUF] = "buffer",
	[FERRY_VALUE_SHARED] = "shared buffer", [FERRY_VALUE_PORT] = "port",
};

FERRY_API const char *ferry_value_kind_name(enum ferry_value_kind kind)
{
	if ((unsigned)kind < sizeof kind_names / sizeof kind_names[0])
		return kind_names[kind];
	return "?";
}

static const uint8_t typed_sizes[] = {
	[FERRY_TYPED_NONE] = 1, [FERRY_TYPED_U8] = 1,  [FERRY_TYPED_U8_CLAMPED] = 1,
	[FERRY_TYPED_I8] = 1,   [FERRY_TYPED_U16] = 2, [FERRY_TYPED_I16] = 2,
	[FERRY_TYPED_U32] = 4,  [FERRY_TYPED_I32] = 4, [FERRY_TYPED_U64] = 8,
	[FERRY_TYPED_I64] = 8,  [FERRY_TYPED_F32] = 4, [FERRY_TYPED_F64] = 8,
};

FERRY_API size_t ferry_typed_elem_size(enum ferry_typed t)
{
	if ((unsigned)t < sizeof typed_sizes)
		return typed_sizes[t];
	return 0;
}

/* A new value of @kind with @extra bytes after it, in a new graph sized
 * exactly for it. */
static ferry_value *fv_new(enum ferry_value_kind kind, size_t extra, const char *who)
{
	size_t node = round16(sizeof(ferry_value));
	if (extra > SIZE_MAX / 2) {
		ferry__fail(-ENOMEM, "%s: %zu bytes is too big", who, extra);
		return NULL;
	}
	struct fv_graph *g = ferry__fv_graph_new(node + extra);
	if (!g) {
		ferry__fail(-ENOMEM, "%s: out of memory", who);
		return NULL;
	}
	/* The home chunk was sized for exactly this: take it whole, even when
	 * big (a string never grows, so it needs no chunk of its own). */
	ferry_value *v = (ferry_value *)g->cur;
	g->cur = g->end;
	memset(v, 0, sizeof *v);
	v->kind = (uint8_t)kind;
	v->g = g;
	return v;
}

FERRY_API ferry_value *ferry_value_null(void)
{
	return fv_new(FERRY_VALUE_NULL, 0, "ferry_value_null");
}

FERRY_API ferry_value *ferry_value_undefined(void)
{
	return fv_new(FERRY_VALUE_UNDEFINED, 0, "ferry_value_undefined");
}

FERRY_API ferry_value *ferry_value_bool(bool b)
{
	ferry_value *v = fv_new(FERRY_VALUE_BOOL, 0, "ferry_value_bool");
	if (v)
		v->u.b = b;
	return v;
}

FERRY_API ferry_value *ferry_value_int(int64_t i)
{
	ferry_value *v = fv_new(FERRY_VALUE_INT, 0, "ferry_value_int");
	if (v)
		v->u.i = i;
	return v;
}

FERRY_API ferry_value *ferry_value_double(double d)
{
	ferry_value *v = fv_new(FERRY_VALUE_DOUBLE, 0, "ferry_value_double");
	if (v)
		v->u.d = d;
	return v;
}

static ferry_value *make_string(enum ferry_value_kind kind, enum ferry_typed t,
				const void *data, size_t len, const char *who)
{
	if (!data && len && kind == FERRY_VALUE_STR) {
		ferry__fail(-EINVAL, "%s: NULL string of length %zu", who, len);
		return NULL;
	}
	if (kind == FERRY_VALUE_STR) {
		size_t bad = ferry__utf8_check(data, len);
		if (bad != len) {
			ferry__fail(-EINVAL, "%s: not valid UTF-8 (byte %zu)", who, bad);
			return NULL;
		}
	}
	ferry_value *v = fv_new(kind, len + 1, who);
	if (!v)
		return NULL;
	v->typed = (uint8_t)t;
	v->u.s.p = (char *)(v + 1);
	v->u.s.len = len;
	if (data && len)
		memcpy(v->u.s.p, data, len);
	else
		memset(v->u.s.p, 0, len);
	fv_pad(v->u.s.p, len);
	return v;
}

FERRY_API ferry_value *ferry_value_str(const char *s)
{
	if (!s) {
		ferry__fail(-EINVAL, "ferry_value_str: NULL string");
		return NULL;
	}
	return make_string(FERRY_VALUE_STR, FERRY_TYPED_NONE, s, strlen(s), "ferry_value_str");
}

FERRY_API ferry_value *ferry_value_strn(const char *s, size_t len)
{
	return make_string(FERRY_VALUE_STR, FERRY_TYPED_NONE, s, len, "ferry_value_strn");
}

FERRY_API ferry_value *ferry_value_bytes(const void *data, size_t len)
{
	return make_string(FERRY_VALUE_BYTES, FERRY_TYPED_NONE, data, len, "ferry_value_bytes");
}

FERRY_API ferry_value *ferry_value_typed(enum ferry_typed t, const void *data, size_t len)
{
	size_t es = ferry_typed_elem_size(t);
	if (!es) {
		ferry__fail(-EINVAL, "ferry_value_typed: unknown typed view %d", (int)t);
		return NULL;
	}
	if (len % es) {
		ferry__fail(-EINVAL,
			    "ferry_value_typed: %zu bytes is not a whole number of %zu-byte elements",
			    len, es);
		return NULL;
	}
	return make_string(FERRY_VALUE_BYTES, t, data, len, "ferry_value_typed");
}

FERRY_API ferry_value *ferry_value_array(void)
{
	return fv_new(FERRY_VALUE_ARRAY, 0, "ferry_value_array");
}

FERRY_API ferry_value *ferry_value_map(void)
{
	return fv_new(FERRY_VALUE_MAP, 0, "ferry_value_map");
}

static inline bool is_handle_kind(unsigned kind)
{
	return kind == FERRY_VALUE_BUF || kind == FERRY_VALUE_SHARED || kind == FERRY_VALUE_PORT;
}

FERRY_API ferry_value *ferry_value_handle(enum ferry_value_kind kind, void *handle)
{
	if (!is_handle_kind(kind)) {
		ferry__fail(-EINVAL, "ferry_value_handle: kind %s is not a handle kind",
			    ferry_value_kind_name(kind));
		return NULL;
	}
	if (!handle) {
		ferry__fail(-EINVAL, "ferry_value_handle: NULL handle");
		return NULL;
	}
	ferry_value *v = fv_new(kind, 0, "ferry_value_handle");
	if (v)
		v->u.h = handle;
	return v;
}

FERRY_API void ferry_value_free(ferry_value *v)
{
	if (v)
		ferry__fv_graph_free(fv_root(v->g));
}

/* ---- getters ---- */

FERRY_API enum ferry_value_kind ferry_value_kind(const ferry_value *v)
{
	return v ? (enum ferry_value_kind)v->kind : FERRY_VALUE_UNDEFINED;
}

FERRY_API size_t ferry_value_len(const ferry_value *v)
{
	if (!v)
		return 0;
	switch (v->kind) {
	case FERRY_VALUE_STR:
	case FERRY_VALUE_BYTES:
		return v->u.s.len;
	case FERRY_VALUE_ARRAY:
		return v->u.a.len;
	case FERRY_VALUE_MAP:
		return v->u.m.len;
	default:
		return 0;
	}
}

static int wrong_kind(const char *who, const ferry_value *v, enum ferry_value_kind want)
{
	if (!v)
		return ferry__fail(-EINVAL, "%s: NULL value", who);
	return ferry__fail(-EINVAL, "%s: expected %s, got %s", who, ferry_value_kind_name(want),
			   ferry_value_kind_name(v->kind));
}

FERRY_API int ferry_value_get_bool(const ferry_value *v, bool *out)
{
	if (!v || v->kind != FERRY_VALUE_BOOL)
		return wrong_kind("ferry_value_get_bool", v, FERRY_VALUE_BOOL);
	if (!out)
		return ferry__fail(-EINVAL, "ferry_value_get_bool: NULL out");
	*out = v->u.b;
	return 0;
}

FERRY_API int ferry_value_get_int(const ferry_value *v, int64_t *out)
{
	if (!v || v->kind != FERRY_VALUE_INT)
		return wrong_kind("ferry_value_get_int", v, FERRY_VALUE_INT);
	if (!out)
		return ferry__fail(-EINVAL, "ferry_value_get_int: NULL out");
	*out = v->u.i;
	return 0;
}

FERRY_API int ferry_value_get_double(const ferry_value *v, double *out)
{
	if (!v || v->kind != FERRY_VALUE_DOUBLE)
		return wrong_kind("ferry_value_get_double", v, FERRY_VALUE_DOUBLE);
	if (!out)
		return ferry__fail(-EINVAL, "ferry_value_get_double: NULL out");
	*out = v->u.d;
	return 0;
}

FERRY_API const char *ferry_value_get_str(const ferry_value *v, size_t *len)
{
	if (!v || v->kind != FERRY_VALUE_STR) {
		wrong_kind("ferry_value_get_str", v, FERRY_VALUE_STR);
		return NULL;
	}
	if (len)
		*len = v->u.s.len;
	return v->u.s.p;
}

FERRY_API void *ferry_value_get_bytes(const ferry_value *v, size_t *len)
{
	if (!v || v->kind != FERRY_VALUE_BYTES) {
		wrong_kind("ferry_value_get_bytes", v, FERRY_VALUE_BYTES);
		return NULL;
	}
	if (len)
		*len = v->u.s.len;
	return v->u.s.p;
}

FERRY_API enum ferry_typed ferry_value_get_typed(const ferry_value *v)
{
	if (!v || v->kind != FERRY_VALUE_BYTES)
		return FERRY_TYPED_NONE;
	return (enum ferry_typed)v->typed;
}

FERRY_API void *ferry_value_get_handle(const ferry_value *v, enum ferry_value_kind *kind)
{
	if (!v || !is_handle_kind(v->kind)) {
		if (!v)
			ferry__fail(-EINVAL, "ferry_value_get_handle: NULL value");
		else
			ferry__fail(-EINVAL, "ferry_value_get_handle: expected a handle, got %s",
				    ferry_value_kind_name(v->kind));
		return NULL;
	}
	if (kind)
		*kind = (enum ferry_value_kind)v->kind;
	return v->u.h;
}

/* ---- arrays ---- */

FERRY_API int ferry_value_array_push(ferry_value *a, ferry_value *v)
{
	if (!a || a->kind != FERRY_VALUE_ARRAY)
		return wrong_kind("ferry_value_array_push", a, FERRY_VALUE_ARRAY);
	if (!v)
		return ferry__fail(-EINVAL, "ferry_value_array_push: NULL value (a constructor failed?)");
	struct fv_graph *g = fv_join(a->g, v->g);
	if (a->u.a.len == a->u.a.cap) {
		if (a->u.a.cap == UINT32_MAX)
			return ferry__fail(-EOVERFLOW, "ferry_value_array_push: array is full");
		uint32_t ncap = a->u.a.cap ? a->u.a.cap * 2 : 4;
		if (ncap < a->u.a.cap)
			ncap = UINT32_MAX;
		ferry_value **n = fv_grow(g, a->u.a.items, (size_t)a->u.a.cap * sizeof *n,
					  (size_t)ncap * sizeof *n);
		if (!n)
			return ferry__fail(-ENOMEM, "ferry_value_array_push: out of memory");
		a->u.a.items = n;
		a->u.a.cap = ncap;
	}
	a->u.a.items[a->u.a.len++] = v;
	fv_ref(v);
	return 0;
}

FERRY_API int ferry_value_array_set(ferry_value *a, size_t i, ferry_value *v)
{
	if (!a || a->kind != FERRY_VALUE_ARRAY)
		return wrong_kind("ferry_value_array_set", a, FERRY_VALUE_ARRAY);
	if (!v)
		return ferry__fail(-EINVAL, "ferry_value_array_set: NULL value (a constructor failed?)");
	fv_join(a->g, v->g);
	if (i >= a->u.a.len)
		return ferry__fail(-EINVAL, "ferry_value_array_set: index %zu out of range (length %u)",
				   i, a->u.a.len);
	fv_ref(v);
	unref(a->u.a.items[i]);
	a->u.a.items[i] = v;
	return 0;
}

FERRY_API ferry_value *ferry_value_array_get(const ferry_value *a, size_t i)
{
	if (!a || a->kind != FERRY_VALUE_ARRAY || i >= a->u.a.len)
		return NULL;
	return a->u.a.items[i];
}

/* ---- maps ---- */

FERRY_API int ferry_value_map_setn(ferry_value *m, const char *key, size_t klen, ferry_value *v)
{
	static const char who[] = "ferry_value_map_set";
	if (!m || m->kind != FERRY_VALUE_MAP)
		return wrong_kind(who, m, FERRY_VALUE_MAP);
	if (!v)
		return ferry__fail(-EINVAL, "%s: NULL value (a constructor failed?)", who);
	struct fv_graph *g = fv_join(m->g, v->g);
	if (!key && klen)
		return ferry__fail(-EINVAL, "%s: NULL key", who);
	if (klen > UINT32_MAX)
		return ferry__fail(-EOVERFLOW, "%s: key of %zu bytes is too long", who, klen);
	size_t bad = ferry__utf8_check((const uint8_t *)key, klen);
	if (bad != klen)
		return ferry__fail(-EINVAL, "%s: key is not valid UTF-8 (byte %zu)", who, bad);

	uint32_t hash = fv_map_idx(m) ? fv_hash(key, klen) : 0;
	int64_t at = fv_map_find(m, key, (uint32_t)klen, hash);
	if (at >= 0) {
		struct fv_entry *e = &m->u.m.e[at];
		fv_ref(v);
		unref(e->v);
		e->v = v;
		return 0;
	}
	if (m->u.m.len == m->u.m.cap) {
		if (m->u.m.cap == UINT32_MAX)
			return ferry__fail(-EOVERFLOW, "%s: map is full", who);
		uint32_t ncap = m->u.m.cap ? m->u.m.cap * 2 : 4;
		if (ncap < m->u.m.cap)
			ncap = UINT32_MAX;
		if (map_resize(g, m, ncap))
			return ferry__fail(-ENOMEM, "%s: out of memory", who);
		hash = fv_map_idx(m) ? fv_hash(key, klen) : 0;
	}
	char *k = fv_alloc(g, klen + 1);
	if (!k)
		return ferry__fail(-ENOMEM, "%s: out of memory", who);
	if (klen)
		memcpy(k, key, klen);
	fv_pad(k, klen);
	fv_map_append(m, k, (uint32_t)klen, hash, v);
	return 0;
}

FERRY_API int ferry_value_map_set(ferry_value *m, const char *key, ferry_value *v)
{
	if (!key) {
		if (!m || m->kind != FERRY_VALUE_MAP)
			return wrong_kind("ferry_value_map_set", m, FERRY_VALUE_MAP);
		if (v)
			fv_join(m->g, v->g);
		return ferry__fail(-EINVAL, "ferry_value_map_set: NULL key");
	}
	return ferry_value_map_setn(m, key, strlen(key), v);
}

FERRY_API ferry_value *ferry_value_map_getn(const ferry_value *m, const char *key, size_t klen)
{
	if (!m || m->kind != FERRY_VALUE_MAP || (!key && klen) || klen > UINT32_MAX)
		return NULL;
	uint32_t hash = fv_map_idx(m) ? fv_hash(key, klen) : 0;
	int64_t at = fv_map_find(m, key, (uint32_t)klen, hash);
	return at < 0 ? NULL : m->u.m.e[at].v;
}

FERRY_API ferry_value *ferry_value_map_get(const ferry_value *m, const char *key)
{
	if (!key)
		return NULL;
	return ferry_value_map_getn(m, key, strlen(key));
}

FERRY_API const char *ferry_value_map_key(const ferry_value *m, size_t i, size_t *klen)
{
	if (!m || m->kind != FERRY_VALUE_MAP || i >= m->u.m.len)
		return NULL;
	if (klen)
		*klen = m->u.m.e[i].klen;
	return m->u.m.e[i].key;
}

FERRY_API ferry_value *ferry_value_map_value(const ferry_value *m, size_t i)
{
	if (!m || m->kind != FERRY_VALUE_MAP || i >= m->u.m.len)
		return NULL;
	return m->u.m.e[i].v;
}

/* ---- equal ---- */

struct pair {
	const ferry_value *a, *b;
};

struct pairstack {
	struct pair *p;
	size_t n, cap;
};

static bool push_pair(struct pairstack *s, const ferry_value *a, const ferry_value *b)
{
	if (s->n == s->cap) {
		size_t ncap = s->cap ? s->cap * 2 : 64;
		struct pair *n = realloc(s->p, ncap * sizeof *n);
		if (!n)
			return false;
		s->p = n;
		s->cap = ncap;
	}
	s->p[s->n++] = (struct pair){a, b};
	return true;
}

/* Values with identity: reaching one twice must match reaching one twice. */
static inline bool has_identity(unsigned kind)
{
	return kind == FERRY_VALUE_ARRAY || kind == FERRY_VALUE_MAP || kind == FERRY_VALUE_BYTES;
}

/* 1 equal, 0 not, -ENOMEM. Iterative: the pairing is forced by the
 * structure (root to root, item i to item i), so any visit order finds the
 * same conflicts. */
static int equal_graphs(const ferry_value *a, const ferry_value *b, struct pairstack *st,
			struct fv_ptab *ab, struct fv_ptab *ba)
{
	if (!push_pair(st, a, b))
		return -ENOMEM;
	while (st->n) {
		struct pair pr = st->p[--st->n];
		const ferry_value *x = pr.a, *y = pr.b;
		if (!x || !y) {
			if (x != y)
				return 0;
			continue;
		}
		if (x->kind != y->kind)
			return 0;
		if (has_identity(x->kind)) {
			uintptr_t m;
			if (fv_ptab_get(ab, x, &m)) {
				if ((const ferry_value *)m != y)
					return 0;
				continue;
			}
			if (fv_ptab_get(ba, y, &m))
				return 0;
			if (ferry__fv_ptab_put(ab, x, (uintptr_t)y) ||
			    ferry__fv_ptab_put(ba, y, (uintptr_t)x))
				return -ENOMEM;
		}
		switch (x->kind) {
		case FERRY_VALUE_NULL:
		case FERRY_VALUE_UNDEFINED:
			break;
		case FERRY_VALUE_BOOL:
			if (x->u.b != y->u.b)
				return 0;
			break;
		case FERRY_VALUE_INT:
			if (x->u.i != y->u.i)
				return 0;
			break;
		case FERRY_VALUE_DOUBLE:
			if (memcmp(&x->u.d, &y->u.d, sizeof(double)) != 0)
				return 0;
			break;
		case FERRY_VALUE_STR:
		case FERRY_VALUE_BYTES:
			if (x->typed != y->typed || x->u.s.len != y->u.s.len ||
			    memcmp(x->u.s.p, y->u.s.p, x->u.s.len) != 0)
				return 0;
			break;
		case FERRY_VALUE_ARRAY:
			if (x->u.a.len != y->u.a.len)
				return 0;
			for (uint32_t i = 0; i < x->u.a.len; i++)
				if (!push_pair(st, x->u.a.items[i], y->u.a.items[i]))
					return -ENOMEM;
			break;
		case FERRY_VALUE_MAP:
			if (x->u.m.len != y->u.m.len)
				return 0;
			for (uint32_t i = 0; i < x->u.m.len; i++) {
				const struct fv_entry *ex = &x->u.m.e[i], *ey = &y->u.m.e[i];
				if (ex->klen != ey->klen || memcmp(ex->key, ey->key, ex->klen) != 0)
					return 0;
				if (!push_pair(st, ex->v, ey->v))
					return -ENOMEM;
			}
			break;
		default: /* handles */
			if (x->u.h != y->u.h)
				return 0;
			break;
		}
	}
	return 1;
}

FERRY_API bool ferry_value_equal(const ferry_value *a, const ferry_value *b)
{
	struct pairstack st = {0};
	struct fv_ptab ab, ba;
	fv_ptab_init(&ab);
	fv_ptab_init(&ba);
	int r = equal_graphs(a, b, &st, &ab, &ba);
	free(st.p);
	ferry__fv_ptab_fini(&ab);
	ferry__fv_ptab_fini(&ba);
	if (r < 0)
		ferry__fail(-ENOMEM, "ferry_value_equal: out of memory");
	return r == 1;
}
