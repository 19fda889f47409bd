/*
 * ports/value_internal.h - internal: the layout of values and graphs, shared
 * by the value model (value.c) and the clone codec (clone.c).
 *
 * A graph is an arena: a circular doubly linked ring of malloc'd chunks.
 * Small allocations are bumped out of the current chunk; big ones (item
 * arrays of big containers, long strings) get a chunk of their own, which a
 * growing array can realloc in place of copying. The graph header itself
 * lives in its "home" chunk. Joining two graphs (a value put into a
 * container of another graph) splices the smaller ring into the bigger one
 * and makes the smaller header forward to the bigger (union-find): values
 * keep their graph pointer and find the live root through the forwards.
 * Freeing a root frees every chunk of its ring, the home chunk last.
 */
#ifndef FERRY_PORTS_VALUE_INTERNAL_H
#define FERRY_PORTS_VALUE_INTERNAL_H

#include "ferry/value.h"
#include "shm/err.h"

#include <stdatomic.h>
#include <string.h>

struct fv_chunk {
	struct fv_chunk *next, *prev;
};

/* Chunk header size rounded so payloads stay 16-byte aligned. */
#define FV_CHUNK_HDR ((sizeof(struct fv_chunk) + 15) & ~(size_t)15)
/* Allocations at least this big get a chunk of their own. */
#define FV_BIG 2048
/* Bump chunks grow from FV_CHUNK_MIN to FV_CHUNK_MAX bytes. */
#define FV_CHUNK_MIN 512
#define FV_CHUNK_MAX (64 * 1024)

struct fv_graph {
	struct fv_graph *fwd;  /* union-find parent; NULL at a root */
	struct fv_chunk ring;  /* sentinel of the chunk ring (roots only) */
	char *cur, *end;       /* bump region in the current chunk */
	size_t bytes;          /* total allocated: picks the next chunk size and the union winner */
	size_t home;           /* bytes of the home chunk (it may be kept for the next graph) */
};

/*
 * Invariant used by the codec's word-at-a-time copies: the bytes of every
 * key and of every string or bytes value are followed by their NUL and then
 * readable up to round16(len + 1) bytes (they all come from fv_alloc, which
 * rounds to 16).
 */
struct fv_entry {
	const char *key; /* NUL-terminated copy in the graph */
	uint32_t klen;
	uint32_t hash;   /* valid while the map has an index */
	ferry_value *v;
};

/* Maps with a capacity above this keep a hash index: an array of
 * fv_idx_size(cap) slots (entry index + 1, 0 = empty) right after the cap
 * entries, in the same block. Smaller maps are searched linearly. */
#define FV_MAP_LINEAR 8

struct ferry_value { /* 32 bytes */
	uint8_t kind;    /* enum ferry_value_kind */
	uint8_t typed;   /* enum ferry_typed, for BYTES */
	uint16_t unused;
	uint32_t refs;   /* edges from arrays/maps to this value (saturating) */
	struct fv_graph *g;
	union {
		bool b;
		int64_t i;
		double d;
		void *h;
		struct {
			char *p; /* NUL-terminated for STR; never NULL */
			size_t len;
		} s;
		struct {
			ferry_value **items;
			uint32_t len, cap;
		} a;
		struct {
			struct fv_entry *e; /* followed by the index when cap > FV_MAP_LINEAR */
			uint32_t len, cap;
		} m;
	} u;
};

#if UINTPTR_MAX == UINT64_MAX
_Static_assert(sizeof(ferry_value) == 32, "ferry_value grew");
#endif

static inline size_t fv_idx_size(uint32_t cap)
{
	/* The power of two at or above 2 * cap, at least 32. */
	if (cap <= 16)
		return 32;
	return (size_t)1 << (64 - __builtin_clzll((uint64_t)cap * 2 - 1));
}

/* Bytes of a map's entry block for @cap entries, index included. */
static inline size_t fv_map_block(uint32_t cap)
{
	size_t n = (size_t)cap * sizeof(struct fv_entry);
	if (cap > FV_MAP_LINEAR)
		n += fv_idx_size(cap) * sizeof(uint32_t);
	return n;
}

static inline uint32_t *fv_map_idx(const ferry_value *m)
{
	return m->u.m.cap > FV_MAP_LINEAR ? (uint32_t *)(m->u.m.e + m->u.m.cap) : NULL;
}

/* ---- graphs ---- */

/* A new graph whose home chunk has room for @first bytes of bump space. */
struct fv_graph *ferry__fv_graph_new(size_t first);
/* Free a root graph and everything in it. */
void ferry__fv_graph_free(struct fv_graph *g);
/* Slow path of fv_alloc: a new chunk. */
void *ferry__fv_alloc_slow(struct fv_graph *g, size_t size);

static inline struct fv_graph *fv_root(struct fv_graph *g)
{
	while (g->fwd) {
		if (g->fwd->fwd)
			g->fwd = g->fwd->fwd; /* path halving */
		g = g->fwd;
	}
	return g;
}

/* @size bytes, 16-aligned, from root graph @g; NULL on ENOMEM. */
static inline void *fv_alloc(struct fv_graph *g, size_t size)
{
	size = (size + 15) & ~(size_t)15;
	/* Big blocks always get a chunk of their own (see value.c: is_big). */
	if (FERRY_LIKELY(size < FV_BIG && size <= (size_t)(g->end - g->cur))) {
		void *p = g->cur;
		g->cur += size;
		return p;
	}
	return ferry__fv_alloc_slow(g, size);
}

/* fv_alloc for memory that value.c never grows or releases (no container's
 * item or entry array of a big size: see is_big in value.c): bumped out of
 * the current chunk whenever it fits, however big. */
static inline void *fv_alloc_bump(struct fv_graph *g, size_t size)
{
	size = (size + 15) & ~(size_t)15;
	if (FERRY_LIKELY(size <= (size_t)(g->end - g->cur))) {
		void *p = g->cur;
		g->cur += size;
		return p;
	}
	return ferry__fv_alloc_slow(g, size);
}

/*
 * An upper bound on the bytes ferry_clone_encode writes for @v, in O(1):
 * the bytes in use in @v's graph (every chunk, less the unused end of the
 * current one). Every item the encoder writes has arena bytes of its own
 * at least as many: a node (32 bytes) against a head of at most 9 bytes
 * plus tags; a string's or a key's bytes against their copy in the graph;
 * a sharedref (at most 7 bytes) against the item slot or entry (8 or 24
 * bytes) that holds it. So an encoding never exceeds it; were it ever
 * to, the encoder would say -ENOBUFS with the exact size and the caller
 * would go the long way. Loose for a value that is a small part of a big
 * graph. Reads the graph only (no path halving): @v may be encoded by
 * several threads at once.
 */
size_t ferry__clone_bound(const ferry_value *v);

/* ---- map internals ---- */

/* The seed of the key hash (random per process), set up on first use. */
extern _Atomic uint64_t ferry__fv_seed;
uint64_t ferry__fv_seed_init(void);

static inline uint64_t fv_mum(uint64_t a, uint64_t b)
{
	__uint128_t r = (__uint128_t)a * b;
	return (uint64_t)r ^ (uint64_t)(r >> 64);
}

/* Little-endian 8-byte loads and stores, whatever the host. */
static inline uint64_t fv_ld64(const void *p)
{
	uint64_t x;
	memcpy(&x, p, 8);
#if __BYTE_ORDER__ == __ORDER_BIG_ENDIAN__
	x = __builtin_bswap64(x);
#endif
	return x;
}

static inline void fv_st64(void *p, uint64_t x)
{
#if __BYTE_ORDER__ == __ORDER_BIG_ENDIAN__
	x = __builtin_bswap64(x);
#endif
	memcpy(p, &x, 8);
}

/* Masks keeping the first @n (0..15) bytes of two little-endian words. */
extern const uint64_t ferry__fv_mask16[16][2];

#define FV_HIGH_BITS 0x8080808080808080ull

static inline uint64_t fv_seed(void)
{
	/* Relaxed: the seed guards no other memory (see ferry__fv_seed_init). */
	uint64_t s = atomic_load_explicit(&ferry__fv_seed, memory_order_relaxed);
	return FERRY_LIKELY(s) ? s : ferry__fv_seed_init();
}

/* Hash of a key of @len <= 15 bytes given as two zero-padded little-endian
 * words (bytes 0-7 and 8-15): one wide multiply. */
static inline uint32_t fv_hash16(uint64_t a, uint64_t b, size_t len, uint64_t s)
{
	uint64_t h = fv_mum(a ^ s, b ^ (s >> 7) ^ ((uint64_t)len << 56) ^ 0xa0761d6478bd642full);
	return (uint32_t)(h ^ (h >> 32));
}

/* Hash of a map key, keyed with the per-process random seed so that a peer
 * cannot choose keys that all collide (it never sees the hashes). Keys of up
 * to 15 bytes (most) take fv_hash16; the decoder computes the same from the
 * words it has loaded anyway. */
static inline uint32_t fv_hash(const char *key, size_t len)
{
	uint64_t s = fv_seed();
	const uint8_t *p = (const uint8_t *)key;
	if (len <= 15) {
		uint8_t w[16] = {0};
		memcpy(w, p, len);
		return fv_hash16(fv_ld64(w), fv_ld64(w + 8), len, s);
	}
	const uint64_t k1 = 0xa0761d6478bd642full, k2 = 0xe7037ed1a0b428dbull;
	uint64_t h = s ^ ((uint64_t)len * 0x9E3779B97F4A7C15ull);
	for (; len > 8; p += 8, len -= 8)
		h = fv_mum(h ^ fv_ld64(p) ^ k1, s ^ k2);
	h = fv_mum(h ^ fv_ld64(p + len - 8) ^ k2, s ^ k1); /* the last 8 bytes */
	return (uint32_t)(h ^ (h >> 32));
}

/* Lookups and appends with the index already at hand (@idx NULL: a linear
 * map; @mask = fv_idx_size(cap) - 1). */
static inline int64_t fv_map_find_ix(const ferry_value *m, const uint32_t *idx, uint32_t mask,
				     const char *key, uint32_t klen, uint32_t hash)
{
	const struct fv_entry *e = m->u.m.e;
	if (!idx) {
		for (uint32_t i = 0; i < m->u.m.len; i++)
			if (e[i].klen == klen && memcmp(e[i].key, key, klen) == 0)
				return i;
		return -1;
	}
	for (uint32_t s = hash & mask;; s = (s + 1) & mask) {
		uint32_t x = idx[s];
		if (!x)
			return -1;
		const struct fv_entry *c = &e[x - 1];
		if (c->hash == hash && c->klen == klen && memcmp(c->key, key, klen) == 0)
			return x - 1;
	}
}

static inline void fv_map_append_ix(ferry_value *m, uint32_t *idx, uint32_t mask,
				    const char *key, uint32_t klen, uint32_t hash,
				    ferry_value *v)
{
	uint32_t i = m->u.m.len++;
	struct fv_entry *e = &m->u.m.e[i];
	e->key = key;
	e->klen = klen;
	e->hash = hash;
	e->v = v;
	if (v->refs != UINT32_MAX)
		v->refs++;
	if (idx) {
		uint32_t s = hash & mask;
		while (idx[s])
			s = (s + 1) & mask;
		idx[s] = i + 1;
	}
}

static inline uint32_t fv_map_mask(const ferry_value *m)
{
	return (uint32_t)fv_idx_size(m->u.m.cap) - 1;
}

/* Index of @key in map @m, or -1. @hash: fv_hash(key) when the map has an
 * index, anything otherwise. */
static inline int64_t fv_map_find(const ferry_value *m, const char *key, uint32_t klen,
				  uint32_t hash)
{
	return fv_map_find_ix(m, fv_map_idx(m), fv_map_mask(m), key, klen, hash);
}

/* Append an entry to @m, which has room and no @key yet; @hash as for
 * fv_map_find. Takes a reference on @v. */
static inline void fv_map_append(ferry_value *m, const char *key, uint32_t klen, uint32_t hash,
				 ferry_value *v)
{
	fv_map_append_ix(m, fv_map_idx(m), fv_map_mask(m), key, klen, hash, v);
}

static inline void fv_ref(ferry_value *v)
{
	if (v->refs != UINT32_MAX)
		v->refs++;
}

/* ---- UTF-8 ---- */

/* @n if the @n bytes at @s are well-formed UTF-8 (RFC 3629: no overlongs,
 * surrogates or code points past U+10FFFF), else the offset of the first bad
 * sequence. */
size_t ferry__utf8_check(const uint8_t *s, size_t n);

/* Whether the @n (<= 16) bytes at @s are all ASCII: the common case of keys
 * and short strings, checked without a call. */
static inline bool fv_ascii16(const uint8_t *s, size_t n)
{
	uint64_t a, b;
	if (n >= 8) {
		memcpy(&a, s, 8);
		memcpy(&b, s + n - 8, 8);
	} else if (n >= 4) {
		uint32_t x, y;
		memcpy(&x, s, 4);
		memcpy(&y, s + n - 4, 4);
		a = x;
		b = y;
	} else {
		a = n ? (uint64_t)s[0] | (uint64_t)s[n / 2] << 8 | (uint64_t)s[n - 1] << 16 : 0;
		b = 0;
	}
	return !((a | b) & 0x8080808080808080ull);
}

/* Whether the @n bytes at @s are all ASCII, a word at a time (@n >= 8). */
static inline bool fv_ascii_words(const uint8_t *s, size_t n)
{
	uint64_t acc = fv_ld64(s + n - 8);
	for (size_t i = 0; i + 8 < n; i += 8)
		acc |= fv_ld64(s + i);
	return !(acc & FV_HIGH_BITS);
}

static inline bool fv_utf8_ok(const uint8_t *s, size_t n)
{
	if (n <= 16 ? fv_ascii16(s, n) : n <= 128 && fv_ascii_words(s, n))
		return true;
	return ferry__utf8_check(s, n) == n;
}

/* Zero the bytes of a key or string after its @len bytes, NUL included, up
 * to round16(len + 1): word-at-a-time copies of it then never carry stale
 * heap bytes anywhere (say, into a ring another process reads). */
static inline void fv_pad(char *p, size_t len)
{
	memset(p + len, 0, ((len + 16) & ~(size_t)15) - len);
}

/* memcpy for the short keys and strings of typical messages, without the
 * cost of a library call. */
static inline void fv_copy(void *dst, const void *src, size_t n)
{
	uint8_t *d = dst;
	const uint8_t *s = src;
	if (n > 16) {
		memcpy(d, s, n);
	} else if (n >= 8) {
		uint64_t a, b;
		memcpy(&a, s, 8);
		memcpy(&b, s + n - 8, 8);
		memcpy(d, &a, 8);
		memcpy(d + n - 8, &b, 8);
	} else if (n >= 4) {
		uint32_t a, b;
		memcpy(&a, s, 4);
		memcpy(&b, s + n - 4, 4);
		memcpy(d, &a, 4);
		memcpy(d + n - 4, &b, 4);
	} else if (n) {
		d[0] = s[0];
		d[n / 2] = s[n / 2];
		d[n - 1] = s[n - 1];
	}
}

/* ---- pointer hash table (encode's shares and handles, equal's pairing) ---- */

struct fv_pent {
	uintptr_t k; /* 0 = empty */
	uintptr_t v;
};

struct fv_ptab {
	struct fv_pent *slots; /* NULL until the first put */
	size_t mask, count;
	struct fv_pent inl[16];
};

static inline void fv_ptab_init(struct fv_ptab *t)
{
	t->slots = NULL;
	t->mask = 0;
	t->count = 0;
}

static inline size_t fv_ptab_slot(uintptr_t k, size_t mask)
{
	uint64_t h = (uint64_t)k * 0x9E3779B97F4A7C15ull;
	return (size_t)(h >> 32) & mask;
}

/* true and *@v if @k is in @t. */
static inline bool fv_ptab_get(const struct fv_ptab *t, const void *k, uintptr_t *v)
{
	if (!t->slots)
		return false;
	uintptr_t key = (uintptr_t)k;
	for (size_t s = fv_ptab_slot(key, t->mask);; s = (s + 1) & t->mask) {
		if (t->slots[s].k == key) {
			*v = t->slots[s].v;
			return true;
		}
		if (!t->slots[s].k)
			return false;
	}
}

/* Insert @k (absent) -> @v. 0 or -ENOMEM. */
int ferry__fv_ptab_put(struct fv_ptab *t, const void *k, uintptr_t v);
void ferry__fv_ptab_fini(struct fv_ptab *t);

#endif
