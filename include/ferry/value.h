/**
 * @file
 * @brief Values (what a message carries) and the structured clone.
 *
 * A ferry_value is one node of a value graph: null, undefined, bool, int64,
 * double, UTF-8 string, bytes (optionally a typed-array view), array, map
 * with string keys in insertion order, or a reference to an out-of-band
 * handle (a buffer, a shared buffer or a port: an opaque void * that the
 * value model never touches). Arrays and maps may share children and form
 * cycles; ferry_clone_encode / ferry_clone_decode carry such a graph through
 * bytes with its shape intact, as structured clone does.
 *
 * Ownership: graphs, not nodes.
 *   Every value belongs to exactly one graph: an arena that owns the memory
 *   of all its values. A constructor (ferry_value_int(), ferry_value_map()
 *   ...) makes a new graph holding that one value. Putting a value into an
 *   array or map (push, set) joins its graph to the container's: from then on
 *   they are one graph. ferry_value_free(v) frees the whole graph v belongs
 *   to, at once, whichever of its values you pass: shared children and
 *   cycles need no special care, and nothing is freed twice or leaked.
 *   So: build a tree or graph, free its root once; never free a child you
 *   put into a container (that frees the container too). Beware that using
 *   one value in two separately built structures joins them: freeing either
 *   frees both. Memory of values overwritten by a set stays in the arena
 *   until the graph is freed.
 *   Why an arena: decoding allocates a whole message with a few bump
 *   allocations and frees it with a few free() calls (the clone's fast path),
 *   and cycles cost nothing; refcounts would need a malloc per node and a
 *   cycle collector.
 *   Handles are never owned: the graph stores the pointer and never frees
 *   it; the code that created the handle (e.g. a port's message) does.
 *
 * Threads: a graph is used by one thread at a time. Encoding only reads the
 *   graph, so several threads may encode the same (unchanging) graph at once.
 *
 * Errors: constructors return NULL on failure and other calls a negative
 *   code; ferry_errmsg() says why. Getters on the wrong kind fail with
 *   -EINVAL (or return NULL) and a message naming both kinds.
 *
 * The clone (CBOR, RFC 8949):
 *   null, undefined, bool: simple values 22, 23, 20/21. int: major 0/1.
 *   double: always a float64 (NaN payloads, -0 and the infinities survive);
 *   decode also takes float16 and float32. str: text string; bytes: byte
 *   string, under an RFC 8746 tag (64..86, host byte order) when it carries a
 *   typed view. array / map: definite-length arrays and maps; map keys are
 *   text strings. A value that may be reached more than once (held by more
 *   than one array or map slot, or the root when anything holds it: each
 *   value counts the slots that hold it, so a tree costs no lookups) is
 *   written once under tag 28 (shareable) and referred to by tag 29
 *   (sharedref: the index of the shareable in order of appearance)
 *   afterwards; shared children and cycles arrive with the same shape. A
 *   handle is written as a private tag (FERRY_CLONE_TAG_*) around an index
 *   into the message's handle table, which the encoder fills (first
 *   appearance order, each handle pointer once) and the decoder is given.
 *   Decoding is strict and bounded: at most FERRY_CLONE_MAX_DEPTH arrays and
 *   maps nested in one another; every count and length is checked against
 *   the bytes left before anything is allocated, so memory is linear in the
 *   message size (at worst ~64 bytes of graph per byte: a 1-byte item is a
 *   32-byte value, 16 bytes kept next to it for a short string's bytes and
 *   its 8-byte slot, rounded to 16 in a one-item array); strings and keys
 *   must be valid UTF-8 (no overlongs, surrogates or code points past
 *   U+10FFFF); tag 28 may wrap any value but a tag 28 or 29, tag 29 and
 *   the handle tags an unsigned index (of a shareable already seen; within
 *   the handle table and of the tag's kind), an RFC 8746 tag a byte string
 *   of whole elements (big-endian ones are swapped to host order;
 *   float16/float128 views are refused), and map keys no tag at all.
 *   Duplicate map keys, unknown tags, indefinite lengths (ferry never writes
 *   them), integers outside int64, simple values other than
 *   false/true/null/undefined and trailing bytes are rejected too:
 *   -EBADMSG, with the byte offset and the reason in ferry_errmsg(), e.g.
 *   "ferry_clone_decode: text string is not valid UTF-8 (byte 3 of it) at
 *   offset 37". Non-canonical (longer than needed) heads are accepted. Big
 *   decoded maps come with their hash index built (it also finds duplicates).
 */
#ifndef FERRY_VALUE_H
#define FERRY_VALUE_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "ferry/common.h"

#ifdef __cplusplus
extern "C" {
#endif

/** One node of a value graph (opaque). */
typedef struct ferry_value ferry_value;

/** What a value is. */
enum ferry_value_kind {
	FERRY_VALUE_NULL = 0,      /**< null */
	FERRY_VALUE_UNDEFINED = 1, /**< undefined; also what ferry_value_kind(NULL) says */
	FERRY_VALUE_BOOL = 2,      /**< bool */
	FERRY_VALUE_INT = 3,       /**< int64_t */
	FERRY_VALUE_DOUBLE = 4,    /**< double */
	FERRY_VALUE_STR = 5,       /**< UTF-8, validated; may hold U+0000 */
	FERRY_VALUE_BYTES = 6,     /**< bytes, optionally with a typed view */
	FERRY_VALUE_ARRAY = 7,     /**< array */
	FERRY_VALUE_MAP = 8,       /**< string keys, insertion order */
	FERRY_VALUE_BUF = 9,       /**< handle: a buffer (cloned or transferred) */
	FERRY_VALUE_SHARED = 10,   /**< handle: a shared buffer */
	FERRY_VALUE_PORT = 11,     /**< handle: a port */
};

/** Typed views of bytes (JS typed arrays), carried as RFC 8746 tags. */
enum ferry_typed {
	FERRY_TYPED_NONE = 0, /**< plain bytes (an ArrayBuffer) */
	FERRY_TYPED_U8,       /**< Uint8Array */
	FERRY_TYPED_U8_CLAMPED, /**< Uint8ClampedArray */
	FERRY_TYPED_I8,       /**< Int8Array */
	FERRY_TYPED_U16,      /**< Uint16Array */
	FERRY_TYPED_I16,      /**< Int16Array */
	FERRY_TYPED_U32,      /**< Uint32Array */
	FERRY_TYPED_I32,      /**< Int32Array */
	FERRY_TYPED_U64,      /**< BigUint64Array */
	FERRY_TYPED_I64,      /**< BigInt64Array */
	FERRY_TYPED_F32,      /**< Float32Array */
	FERRY_TYPED_F64,      /**< Float64Array */
};

/** The name of a kind: "null", "map", "port", ...; "?" if unknown. */
FERRY_API const char *ferry_value_kind_name(enum ferry_value_kind kind);

/** Bytes per element of @p t (1 for NONE), 0 if unknown. */
FERRY_API size_t ferry_typed_elem_size(enum ferry_typed t);

/*
 * Constructors. Each returns a new value in a new graph of its own (free it
 * with ferry_value_free, or put it into a container, which then owns it), or
 * NULL on failure (-ENOMEM; -EINVAL for a NULL pointer with a non-zero
 * length, a string that is not valid UTF-8, a bad kind) with ferry_errmsg().
 * Data is copied; the caller keeps its pointers.
 */
/** A new null value in a graph of its own; NULL on failure (-ENOMEM). */
FERRY_API ferry_value *ferry_value_null(void);
/** A new undefined value in a graph of its own; NULL on failure (-ENOMEM). */
FERRY_API ferry_value *ferry_value_undefined(void);
/** A new bool value in a graph of its own; NULL on failure (-ENOMEM). */
FERRY_API ferry_value *ferry_value_bool(bool b);
/** A new int value in a graph of its own; NULL on failure (-ENOMEM). */
FERRY_API ferry_value *ferry_value_int(int64_t i);
/** A new double value in a graph of its own; NULL on failure (-ENOMEM). */
FERRY_API ferry_value *ferry_value_double(double d);
/** A new string value (a copy of @p s: NUL-terminated, UTF-8); NULL on
 * failure (-ENOMEM, -EINVAL: NULL or not valid UTF-8; ferry_errmsg() says). */
FERRY_API ferry_value *ferry_value_str(const char *s);
/** A new string value from @p len bytes of UTF-8 at @p s (may contain NULs).
 * The stored copy is NUL-terminated. NULL on failure (-ENOMEM; -EINVAL: NULL
 * @p s with a non-zero length, not valid UTF-8). */
FERRY_API ferry_value *ferry_value_strn(const char *s, size_t len);
/** A new bytes value: a copy of @p len bytes at @p data; @p data NULL gives
 * @p len zero bytes to fill in place. NULL on failure (-ENOMEM). */
FERRY_API ferry_value *ferry_value_bytes(const void *data, size_t len);
/** Bytes with a typed view; @p len (bytes) must be a multiple of the element
 * size. @p data NULL gives zeroes. NULL on failure (-ENOMEM; -EINVAL: a bad
 * view or length). */
FERRY_API ferry_value *ferry_value_typed(enum ferry_typed t, const void *data, size_t len);
/** A new empty array in a graph of its own; NULL on failure (-ENOMEM). */
FERRY_API ferry_value *ferry_value_array(void);
/** A new empty map in a graph of its own; NULL on failure (-ENOMEM). */
FERRY_API ferry_value *ferry_value_map(void);
/** A reference to @p handle (not NULL); @p kind is FERRY_VALUE_BUF, _SHARED
 * or _PORT. The value never owns or touches @p handle. NULL on failure
 * (-ENOMEM; -EINVAL: NULL handle, a bad kind). */
FERRY_API ferry_value *ferry_value_handle(enum ferry_value_kind kind, void *handle);

/**
 * Free the whole graph @p v belongs to (see the overview):
 * every value ever joined to it, cycles included. NULL ok. Every value of
 * the graph is invalid afterwards.
 */
FERRY_API void ferry_value_free(ferry_value *v);

/** The kind of @p v; FERRY_VALUE_UNDEFINED for NULL (like a missing property
 * in JS). */
FERRY_API enum ferry_value_kind ferry_value_kind(const ferry_value *v);

/** Items of an array, entries of a map, bytes of a string or bytes value; 0
 * for anything else (and NULL). */
FERRY_API size_t ferry_value_len(const ferry_value *v);

/*
 * Getters. The scalar ones store into *out and return 0, or return -EINVAL
 * (NULL argument, other kind: *out untouched). No conversions: an int is not
 * a double. Pointers returned point into the graph: valid until it is freed.
 */
/** The bool in *@p out. No conversions.
 * @return 0, -EINVAL (NULL argument, other kind: *out untouched). */
FERRY_API int ferry_value_get_bool(const ferry_value *v, bool *out);
/** The int in *@p out. No conversions: an int is not a double.
 * @return 0, -EINVAL (NULL argument, other kind: *out untouched). */
FERRY_API int ferry_value_get_int(const ferry_value *v, int64_t *out);
/** The double in *@p out. No conversions: an int is not a double.
 * @return 0, -EINVAL (NULL argument, other kind: *out untouched). */
FERRY_API int ferry_value_get_double(const ferry_value *v, double *out);
/** The string (NUL-terminated; points into the graph) and its length in
 * bytes (@p len may be NULL); NULL if @p v is not a string. */
FERRY_API const char *ferry_value_get_str(const ferry_value *v, size_t *len);
/** The bytes (writable in place; never NULL for a bytes value, even empty)
 * and their length (@p len may be NULL); NULL if @p v is not bytes. */
FERRY_API void *ferry_value_get_bytes(const ferry_value *v, size_t *len);
/** The typed view of a bytes value; FERRY_TYPED_NONE for plain bytes and for
 * anything that is not bytes. */
FERRY_API enum ferry_typed ferry_value_get_typed(const ferry_value *v);
/** The handle of a BUF / SHARED / PORT value and its kind (@p kind may be
 * NULL); NULL if @p v is not a handle reference. */
FERRY_API void *ferry_value_get_handle(const ferry_value *v, enum ferry_value_kind *kind);

/**
 * Append @p v to array @p a.
 *
 * @par Ownership
 *   @p v (and its whole graph) joins @p a's graph whether or not the call
 *   succeeds, so an inline ferry_value_array_push(a, ferry_value_int(1))
 *   never leaks; free @p a's graph to release it. If @p a is NULL or not an
 *   array, nothing happens and @p v stays the caller's. @p v may be @p a
 *   itself or any value already in the graph (shared references, cycles).
 * @return 0, -EINVAL (NULL @p a or @p v, @p a not an array), -ENOMEM,
 *   -EOVERFLOW (more than UINT32_MAX items).
 */
FERRY_API int ferry_value_array_push(ferry_value *a, ferry_value *v);
/**
 * Replace item @p i (< len) of array @p a with @p v.
 *
 * @par Ownership
 *   as for ferry_value_array_push: @p v joins @p a's graph whether or not
 *   the call succeeds (unless @p a is NULL or not an array).
 * @return 0, -EINVAL (NULL @p a or @p v, @p a not an array, @p i out of
 *   range), -ENOMEM.
 */
FERRY_API int ferry_value_array_set(ferry_value *a, size_t i, ferry_value *v);
/** Item @p i of @p a, or NULL (not an array, out of range). */
FERRY_API ferry_value *ferry_value_array_get(const ferry_value *a, size_t i);

/**
 * Set @p key (NUL-terminated) of map @p m to @p v.
 *
 * Maps: string keys in insertion order; setting an existing key replaces its
 * value in place (the key keeps its position). The key is copied; it must be
 * valid UTF-8.
 * @par Ownership
 *   as for ferry_value_array_push: @p v joins @p m's graph whether or not the
 *   call succeeds (unless @p m is NULL or not a map).
 * @return 0, -EINVAL (NULL argument, @p m not a map, key not UTF-8), -ENOMEM,
 *   -EOVERFLOW.
 */
FERRY_API int ferry_value_map_set(ferry_value *m, const char *key, ferry_value *v);
/** ferry_value_map_set with a key of @p klen bytes at @p key. Same ownership
 * and returns. */
FERRY_API int ferry_value_map_setn(ferry_value *m, const char *key, size_t klen,
				   ferry_value *v);
/** The value under @p key, or NULL (absent, @p m not a map). Maps of more
 * than a few entries keep a hash index: lookups are O(1). */
FERRY_API ferry_value *ferry_value_map_get(const ferry_value *m, const char *key);
/** ferry_value_map_get with a key of @p klen bytes at @p key. */
FERRY_API ferry_value *ferry_value_map_getn(const ferry_value *m, const char *key,
					    size_t klen);
/** Key @p i (NUL-terminated) of @p m in insertion order, i from 0 to
 * ferry_value_len(m) - 1, and its length (@p klen may be NULL). NULL if @p m
 * is not a map or @p i is out of range. */
FERRY_API const char *ferry_value_map_key(const ferry_value *m, size_t i, size_t *klen);
/** Value @p i of @p m in insertion order; NULL if @p m is not a map or @p i
 * is out of range. */
FERRY_API ferry_value *ferry_value_map_value(const ferry_value *m, size_t i);

/**
 * Deep equality of two graphs, for tests.
 *
 * Same kinds,
 * same scalars (doubles bit for bit: NaN equals the same NaN, -0 is not 0),
 * same strings and bytes and typed views, same keys in the same order, same
 * handle pointers, and the same shape: where @a reaches one array, map or
 * bytes value twice (a shared reference or a cycle), @b reaches one value
 * there twice too, and the other way round. Handles cycles; uses no
 * recursion. false also on allocation failure (ferry_errmsg() says so).
 */
FERRY_API bool ferry_value_equal(const ferry_value *a, const ferry_value *b);

/* ---- the clone codec ---- */

/** Most arrays and maps nested in one another that encode and decode accept
 * (the root container is level 1). */
#define FERRY_CLONE_MAX_DEPTH 128

/* The private CBOR tags of handle references (first-come-first-served range;
 * "fer" then 1..3), each around an unsigned index into the handle table. */
#define FERRY_CLONE_TAG_BUF 0x66657201u    /**< CBOR tag of a buffer reference */
#define FERRY_CLONE_TAG_SHARED 0x66657202u /**< CBOR tag of a shared buffer reference */
#define FERRY_CLONE_TAG_PORT 0x66657203u   /**< CBOR tag of a port reference */

/** One entry of a message's handle table. */
struct ferry_clone_handle {
	enum ferry_value_kind kind; /**< FERRY_VALUE_BUF, _SHARED or _PORT */
	void *handle;               /**< the handle pointer */
};

/**
 * The handle table an encode fills: items[0..count) in order of first
 * appearance in the value, each handle (pointer) once. Caller's memory:
 * ferry_clone_handles_init() it (or zero it), reuse it for any number of
 * encodes (each one starts over from count 0), ferry_clone_handles_fini() to
 * free what it holds.
 */
struct ferry_clone_handles {
	struct ferry_clone_handle *items; /**< malloc'd; may be realloc'd to add entries */
	size_t count;                     /**< entries in use */
	size_t cap;                       /**< entries allocated at items */
};
/** Make @p h an empty table (the same as zeroing it). */
FERRY_API void ferry_clone_handles_init(struct ferry_clone_handles *h);
/** Free what @p h holds; it is empty (and reusable) afterwards. */
FERRY_API void ferry_clone_handles_fini(struct ferry_clone_handles *h);

/* Bits of ferry_clone_encode_opts.deny. */
#define FERRY_CLONE_DENY_BUF (1u << FERRY_VALUE_BUF)       /**< refuse buffer references */
#define FERRY_CLONE_DENY_SHARED (1u << FERRY_VALUE_SHARED) /**< refuse shared buffer references */
#define FERRY_CLONE_DENY_PORT (1u << FERRY_VALUE_PORT)     /**< refuse port references */

/** Encode options; all zero (or a NULL pointer) means the defaults. */
struct ferry_clone_encode_opts {
	unsigned deny;      /**< FERRY_CLONE_DENY_*: handle kinds this message refuses */
	unsigned max_depth; /**< 0 = FERRY_CLONE_MAX_DEPTH; at most that */
};

/**
 * Write the clone of the graph reachable from @p v into @p buf, in one pass.
 *
 * @param v the root of the graph; only read. The caller keeps everything.
 * @param buf where to write; may be NULL when @p cap is 0 (a size query:
 *   -ENOBUFS and the size). Bytes of @p buf past *len (and, on -ENOBUFS, any
 *   of its @p cap bytes) may have been written: short strings are copied 16
 *   bytes at a time. Nothing past @p cap is ever written.
 * @param cap bytes at @p buf.
 * @param len set to the bytes written on success; with -ENOBUFS, to the size
 *   the clone needs (call again with at least that much).
 * @param handles filled with the handle table (may be NULL when @p v holds no
 *   handle reference). Its content is unspecified after a failure.
 * @param opts NULL for defaults.
 * @return 0, -EINVAL (NULL @p v or @p len, NULL @p buf with @p cap > 0, bad
 *   options, one handle referenced with two different kinds), -ENOBUFS,
 *   -ENOMEM, FERRY_ENOTCLONEABLE (a handle kind @p opts denies, a handle with
 *   no @p handles to put it in, nesting deeper than the depth limit).
 */
FERRY_API int ferry_clone_encode(const ferry_value *v, void *buf, size_t cap, size_t *len,
				 struct ferry_clone_handles *handles,
				 const struct ferry_clone_encode_opts *opts);

/**
 * The exact size ferry_clone_encode will need for @p v with @p opts, in
 * *@p len. Costs about as much as an encode.
 *
 * @return 0, or what ferry_clone_encode returns (never -ENOBUFS).
 */
FERRY_API int ferry_clone_size(const ferry_value *v, size_t *len,
			       const struct ferry_clone_encode_opts *opts);

/** Decode options; all zero (or a NULL pointer) means the defaults. */
struct ferry_clone_decode_opts {
	/** The handle table: a handle tag with index i becomes a value of
	 * handles[i].handle, after checking i < nhandles and that the tag's
	 * kind is handles[i].kind. No table: any handle tag is an error. */
	const struct ferry_clone_handle *handles;
	size_t nhandles;    /**< entries at handles */
	unsigned max_depth; /**< 0 = FERRY_CLONE_MAX_DEPTH; at most that */
};

/**
 * Rebuild the value graph cloned into the @p len bytes at @p buf (exactly one
 * CBOR data item, nothing after it).
 *
 * @par Ownership
 *   on success *out is the root of a new graph, the caller's
 *   (ferry_value_free); it does not point into @p buf. On failure *out is
 *   NULL and nothing is left allocated.
 * @return 0, -EINVAL (NULL @p out, NULL @p buf with @p len > 0, bad options),
 *   -EBADMSG (malformed or refused input: ferry_errmsg() gives the byte
 *   offset and the reason), -ENOMEM.
 */
FERRY_API int ferry_clone_decode(const void *buf, size_t len,
				 const struct ferry_clone_decode_opts *opts, ferry_value **out);

#ifdef __cplusplus
}
#endif
#endif /* FERRY_VALUE_H */
