/* The structured clone codec: round trips, graphs, handles, limits, and
 * every class of malformed input. */
#include <criterion/criterion.h>
#include <errno.h>
#include <pthread.h>
#include <float.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "ferry/value.h"

#define assert_msg(sub) \
	cr_assert(strstr(ferry_errmsg(), (sub)), "errmsg \"%s\" lacks \"%s\"", ferry_errmsg(), (sub))

/* Encode @v (size query, then into an exact buffer). Caller frees *out. */
static uint8_t *encode(const ferry_value *v, size_t *n, struct ferry_clone_handles *h)
{
	size_t need = 0;
	int r = ferry_clone_encode(v, NULL, 0, &need, h, NULL);
	cr_assert_eq(r, -ENOBUFS, "size query: %d %s", r, ferry_errmsg());
	size_t sz = 0;
	cr_assert_eq(ferry_clone_size(v, &sz, NULL), 0);
	cr_assert_eq(sz, need);
	uint8_t *buf = malloc(need + 16);
	memset(buf, 0xa5, need + 16);
	r = ferry_clone_encode(v, buf, need, n, h, NULL);
	cr_assert_eq(r, 0, "encode: %d %s", r, ferry_errmsg());
	cr_assert_eq(*n, need);
	for (int i = 0; i < 16; i++)
		cr_assert_eq(buf[need + i], 0xa5, "wrote past the end");
	return buf;
}

/* Encode, decode, check deep equality; returns the decoded graph. */
static ferry_value *round_trip(const ferry_value *v)
{
	size_t n;
	struct ferry_clone_handles h;
	ferry_clone_handles_init(&h);
	uint8_t *buf = encode(v, &n, &h);
	struct ferry_clone_decode_opts o = {.handles = h.items, .nhandles = h.count};
	ferry_value *out = NULL;
	int r = ferry_clone_decode(buf, n, &o, &out);
	cr_assert_eq(r, 0, "decode: %d %s", r, ferry_errmsg());
	cr_assert(ferry_value_equal(v, out), "round trip changed the value");
	free(buf);
	ferry_clone_handles_fini(&h);
	return out;
}

static void round_trip_free(ferry_value *v)
{
	ferry_value_free(round_trip(v));
	ferry_value_free(v);
}

static int decode_bytes(const void *p, size_t n, ferry_value **out)
{
	return ferry_clone_decode(p, n, NULL, out);
}

#define DEC_OK(lit, out) cr_assert_eq(decode_bytes(lit, sizeof(lit) - 1, out), 0, "%s", ferry_errmsg())

Test(clone, scalars_round_trip)
{
	int64_t ints[] = {0,       1,          23,         24,        255,       256,
			  65535,   65536,      4294967295, 4294967296, INT64_MAX, -1,
			  -24,     -25,        -256,       -257,       -65537,    INT64_MIN,
			  INT64_MIN + 1};
	for (size_t i = 0; i < sizeof ints / sizeof ints[0]; i++)
		round_trip_free(ferry_value_int(ints[i]));
	double dbl[] = {0.0, -0.0, 1.5, -2.25, INFINITY, -INFINITY, NAN, DBL_MAX, DBL_MIN, 5e-324};
	for (size_t i = 0; i < sizeof dbl / sizeof dbl[0]; i++)
		round_trip_free(ferry_value_double(dbl[i]));
	/* a NaN payload survives bit for bit */
	uint64_t bits = 0x7ff8000000000123ull;
	double nan_payload;
	memcpy(&nan_payload, &bits, 8);
	round_trip_free(ferry_value_double(nan_payload));
	round_trip_free(ferry_value_null());
	round_trip_free(ferry_value_undefined());
	round_trip_free(ferry_value_bool(true));
	round_trip_free(ferry_value_bool(false));
	round_trip_free(ferry_value_str(""));
	round_trip_free(ferry_value_str("héllo wörld, a string longer than twenty-three bytes €"));
	round_trip_free(ferry_value_strn("nul\0inside", 10));
	round_trip_free(ferry_value_bytes(NULL, 0));
	round_trip_free(ferry_value_bytes("\x00\xff\x80", 3));
	round_trip_free(ferry_value_array());
	round_trip_free(ferry_value_map());
}

Test(clone, ints_and_doubles_keep_their_kind)
{
	ferry_value *v = ferry_value_array();
	ferry_value_array_push(v, ferry_value_int(1));
	ferry_value_array_push(v, ferry_value_double(1.0));
	ferry_value *out = round_trip(v);
	cr_assert_eq(ferry_value_kind(ferry_value_array_get(out, 0)), FERRY_VALUE_INT);
	cr_assert_eq(ferry_value_kind(ferry_value_array_get(out, 1)), FERRY_VALUE_DOUBLE);
	ferry_value_free(out);
	ferry_value_free(v);
}

Test(clone, long_strings_big_arrays_and_nested_containers)
{
	static char s[70000];
	memset(s, 'x', sizeof s - 1);
	ferry_value *root = ferry_value_map();
	ferry_value_map_set(root, "long", ferry_value_str(s));
	ferry_value_map_set(root, s + 60000, ferry_value_bytes(s, 5000)); /* a 2-byte-length key */
	ferry_value_map_set(root, s + 1000, ferry_value_int(1)); /* a 4-byte-length key */
	ferry_value *arr = ferry_value_array();
	for (int i = 0; i < 20000; i++)
		ferry_value_array_push(arr, i % 3 ? ferry_value_int(i * 7919) : ferry_value_str("s"));
	ferry_value_map_set(root, "arr", arr);
	ferry_value *big = ferry_value_map();
	char k[24];
	for (int i = 0; i < 3000; i++) {
		snprintf(k, sizeof k, "k%d", i);
		ferry_value_map_set(big, k, ferry_value_double(i / 3.0));
	}
	ferry_value_map_set(root, "big", big);
	ferry_value *out = round_trip(root);
	/* the decoded big map is indexed and can grow */
	cr_assert_not_null(ferry_value_map_get(ferry_value_map_get(out, "big"), "k2999"));
	cr_assert_eq(ferry_value_map_set(ferry_value_map_get(out, "big"), "new", ferry_value_null()), 0);
	cr_assert_eq(ferry_value_array_push(ferry_value_map_get(out, "arr"), ferry_value_null()), 0);
	cr_assert_eq(ferry_value_len(ferry_value_map_get(out, "arr")), 20001);
	ferry_value_free(out);
	ferry_value_free(root);
}

Test(clone, dense_messages_outgrow_the_first_chunk)
{
	/* 40 one-byte keys and values: the map's block (entries and index) is
	 * larger than the arena's first chunk, sized from the message length
	 * (a bug found by the fuzzer) */
	ferry_value *m = ferry_value_map();
	for (int i = 0; i < 40; i++) {
		char k[2] = {(char)('A' + i), 0};
		ferry_value_map_set(m, k, ferry_value_int(i));
	}
	round_trip_free(m);
}

Test(clone, maps_keep_insertion_order)
{
	ferry_value *m = ferry_value_map();
	const char *keys[] = {"zz", "b", "a", "m", "", "é"};
	for (int i = 0; i < 6; i++)
		ferry_value_map_set(m, keys[i], ferry_value_int(i));
	ferry_value *out = round_trip(m);
	for (size_t i = 0; i < 6; i++)
		cr_assert_str_eq(ferry_value_map_key(out, i, NULL), keys[i]);
	/* a decoded small map grows into an indexed one */
	char k[16];
	for (int i = 0; i < 50; i++) {
		snprintf(k, sizeof k, "n%d", i);
		cr_assert_eq(ferry_value_map_set(out, k, ferry_value_int(i)), 0);
	}
	cr_assert_str_eq(ferry_value_map_key(out, 6, NULL), "n0");
	cr_assert_not_null(ferry_value_map_get(out, "é"));
	ferry_value_free(out);
	ferry_value_free(m);
}

Test(clone, typed_views_round_trip)
{
	static const enum ferry_typed kinds[] = {
		FERRY_TYPED_U8,  FERRY_TYPED_U8_CLAMPED, FERRY_TYPED_I8,  FERRY_TYPED_U16,
		FERRY_TYPED_I16, FERRY_TYPED_U32,        FERRY_TYPED_I32, FERRY_TYPED_U64,
		FERRY_TYPED_I64, FERRY_TYPED_F32,        FERRY_TYPED_F64,
	};
	uint8_t data[64];
	for (int i = 0; i < 64; i++)
		data[i] = (uint8_t)(i * 37);
	for (size_t i = 0; i < sizeof kinds / sizeof kinds[0]; i++) {
		ferry_value *v = ferry_value_typed(kinds[i], data, 64);
		ferry_value *out = round_trip(v);
		cr_assert_eq(ferry_value_get_typed(out), kinds[i]);
		ferry_value_free(out);
		ferry_value_free(v);
	}
	/* big-endian views from another writer arrive in host order */
	ferry_value *out;
	DEC_OK("\xd8\x41\x44\x01\x02\x03\x04", &out); /* tag 65: uint16 BE */
	uint16_t *u = ferry_value_get_bytes(out, NULL);
	cr_assert_eq(ferry_value_get_typed(out), FERRY_TYPED_U16);
	cr_assert_eq(u[0], 0x0102);
	cr_assert_eq(u[1], 0x0304);
	ferry_value_free(out);
	DEC_OK("\xd8\x52\x48\x3f\xf8\x00\x00\x00\x00\x00\x00", &out); /* tag 82: f64 BE */
	double *d = ferry_value_get_bytes(out, NULL);
	cr_assert_eq(d[0], 1.5);
	ferry_value_free(out);
}

Test(clone, float16_float32_and_long_heads_decode)
{
	struct {
		const char *in;
		size_t n;
		double want;
	} cases[] = {
		{"\xf9\x3c\x00", 3, 1.0},       {"\xf9\x7c\x00", 3, INFINITY},
		{"\xf9\xfc\x00", 3, -INFINITY}, {"\xf9\x00\x01", 3, 5.960464477539063e-8},
		{"\xf9\x80\x00", 3, -0.0},      {"\xf9\x7b\xff", 3, 65504.0},
		{"\xfa\x3f\xc0\x00\x00", 5, 1.5}, {"\xfa\x7f\x80\x00\x00", 5, INFINITY},
	};
	for (size_t i = 0; i < sizeof cases / sizeof cases[0]; i++) {
		ferry_value *out;
		cr_assert_eq(decode_bytes(cases[i].in, cases[i].n, &out), 0, "%s", ferry_errmsg());
		double d;
		cr_assert_eq(ferry_value_get_double(out, &d), 0);
		cr_assert_eq(memcmp(&d, &cases[i].want, 8), 0, "case %zu: %g", i, d);
		ferry_value_free(out);
	}
	ferry_value *out;
	DEC_OK("\xf9\x7e\x00", &out); /* half NaN */
	double d;
	ferry_value_get_double(out, &d);
	cr_assert(isnan(d));
	ferry_value_free(out);
	/* non-canonical heads are accepted */
	int64_t x;
	DEC_OK("\x1b\x00\x00\x00\x00\x00\x00\x00\x05", &out);
	cr_assert(ferry_value_get_int(out, &x) == 0 && x == 5);
	ferry_value_free(out);
	DEC_OK("\x3b\x7f\xff\xff\xff\xff\xff\xff\xff", &out);
	cr_assert(ferry_value_get_int(out, &x) == 0 && x == INT64_MIN);
	ferry_value_free(out);
	DEC_OK("\x79\x00\x02hi", &out);
	cr_assert_str_eq(ferry_value_get_str(out, NULL), "hi");
	ferry_value_free(out);
}

Test(clone, cycles_survive)
{
	/* a map containing itself */
	ferry_value *m = ferry_value_map();
	ferry_value_map_set(m, "name", ferry_value_str("loop"));
	ferry_value_map_set(m, "self", m);
	ferry_value *out = round_trip(m);
	cr_assert_eq(ferry_value_map_get(out, "self"), out);
	ferry_value_free(out);
	ferry_value_free(m);

	/* two arrays referencing each other */
	ferry_value *a = ferry_value_array(), *b = ferry_value_array();
	ferry_value_array_push(a, ferry_value_int(1));
	ferry_value_array_push(a, b);
	ferry_value_array_push(b, a);
	out = round_trip(a);
	ferry_value *ob = ferry_value_array_get(out, 1);
	cr_assert_eq(ferry_value_array_get(ob, 0), out);
	cr_assert_neq(ob, out);
	ferry_value_free(out);
	ferry_value_free(a);
}

Test(clone, shared_references_arrive_once)
{
	ferry_value *root = ferry_value_array();
	ferry_value *x = ferry_value_map();
	ferry_value_map_set(x, "v", ferry_value_int(42));
	ferry_value *s = ferry_value_str("same string node");
	ferry_value *by = ferry_value_bytes("abc", 3);
	ferry_value_array_push(root, x);
	ferry_value_array_push(root, x);
	ferry_value_array_push(root, s);
	ferry_value_array_push(root, s);
	ferry_value_array_push(root, by);
	ferry_value_array_push(root, by);

	size_t n;
	uint8_t *buf = encode(root, &n, NULL);
	/* [28(x), 29(0), 28("..."), 29(1), 28(h'..'), 29(2)] */
	cr_assert_eq(buf[0], 0x86);
	cr_assert_eq(buf[1], 0xd8);
	cr_assert_eq(buf[2], 28);
	cr_assert(memmem(buf, n, "\xd8\x1d\x00", 3) && memmem(buf, n, "\xd8\x1d\x01", 3) &&
		  memmem(buf, n, "\xd8\x1d\x02", 3));
	free(buf);

	ferry_value *out = round_trip(root);
	cr_assert_eq(ferry_value_array_get(out, 0), ferry_value_array_get(out, 1));
	cr_assert_eq(ferry_value_array_get(out, 2), ferry_value_array_get(out, 3));
	cr_assert_eq(ferry_value_array_get(out, 4), ferry_value_array_get(out, 5));
	/* and a decoded graph re-encodes with its sharing */
	ferry_value *again = round_trip(out);
	cr_assert_eq(ferry_value_array_get(again, 0), ferry_value_array_get(again, 1));
	ferry_value_free(again);
	ferry_value_free(out);
	ferry_value_free(root);

	/* a tree has no tags at all */
	root = ferry_value_array();
	ferry_value_array_push(root, ferry_value_map());
	ferry_value_array_push(root, ferry_value_map());
	buf = encode(root, &n, NULL);
	cr_assert_eq(n, 3);
	cr_assert_eq(memcmp(buf, "\x82\xa0\xa0", 3), 0);
	free(buf);
	ferry_value_free(root);
}

Test(clone, handle_table_dedups_in_order_of_appearance)
{
	int h1, h2, h3;
	ferry_value *root = ferry_value_array();
	ferry_value_array_push(root, ferry_value_handle(FERRY_VALUE_BUF, &h1));
	ferry_value_array_push(root, ferry_value_handle(FERRY_VALUE_PORT, &h2));
	ferry_value_array_push(root, ferry_value_handle(FERRY_VALUE_BUF, &h1)); /* another node, same handle */
	ferry_value *inner = ferry_value_map();
	ferry_value_map_set(inner, "p", ferry_value_handle(FERRY_VALUE_PORT, &h2));
	ferry_value_map_set(inner, "s", ferry_value_handle(FERRY_VALUE_SHARED, &h3));
	ferry_value_array_push(root, inner);

	struct ferry_clone_handles h;
	ferry_clone_handles_init(&h);
	size_t n;
	uint8_t *buf = encode(root, &n, &h);
	cr_assert_eq(h.count, 3);
	cr_assert(h.items[0].kind == FERRY_VALUE_BUF && h.items[0].handle == &h1);
	cr_assert(h.items[1].kind == FERRY_VALUE_PORT && h.items[1].handle == &h2);
	cr_assert(h.items[2].kind == FERRY_VALUE_SHARED && h.items[2].handle == &h3);
	/* the third item is the buffer tag with index 0 */
	cr_assert(memmem(buf, n, "\xda\x66\x65\x72\x01\x00", 6));
	cr_assert(memmem(buf, n, "\xda\x66\x65\x72\x03\x01", 6));

	/* the receiver maps indices to its own handles */
	int r1, r2, r3;
	struct ferry_clone_handle table[3] = {
		{FERRY_VALUE_BUF, &r1}, {FERRY_VALUE_PORT, &r2}, {FERRY_VALUE_SHARED, &r3}};
	struct ferry_clone_decode_opts o = {.handles = table, .nhandles = 3};
	ferry_value *out;
	cr_assert_eq(ferry_clone_decode(buf, n, &o, &out), 0, "%s", ferry_errmsg());
	enum ferry_value_kind k;
	cr_assert_eq(ferry_value_get_handle(ferry_value_array_get(out, 2), &k), &r1);
	cr_assert_eq(k, FERRY_VALUE_BUF);
	cr_assert_eq(ferry_value_get_handle(ferry_value_map_get(ferry_value_array_get(out, 3), "s"), &k),
		     &r3);
	cr_assert_eq(k, FERRY_VALUE_SHARED);
	ferry_value_free(out);

	/* wrong kind in the table, index past the table, no table */
	table[1].kind = FERRY_VALUE_BUF;
	cr_assert_eq(ferry_clone_decode(buf, n, &o, &out), -EBADMSG);
	assert_msg("handle 1 is a port in the message but a buffer in the handle table");
	cr_assert_null(out);
	o.nhandles = 1;
	table[1].kind = FERRY_VALUE_PORT;
	cr_assert_eq(ferry_clone_decode(buf, n, &o, &out), -EBADMSG);
	assert_msg("port reference to handle 1, but the handle table has 1");
	cr_assert_eq(ferry_clone_decode(buf, n, NULL, &out), -EBADMSG);
	assert_msg("the handle table has 0");
	table[0].handle = NULL;
	o.nhandles = 3;
	cr_assert_eq(ferry_clone_decode(buf, n, &o, &out), -EBADMSG);
	assert_msg("NULL in the handle table");

	/* the table is reset by each encode */
	ferry_value *one = ferry_value_handle(FERRY_VALUE_SHARED, &h3);
	size_t n1;
	uint8_t tmp[16];
	cr_assert_eq(ferry_clone_encode(one, tmp, sizeof tmp, &n1, &h, NULL), 0);
	cr_assert_eq(h.count, 1);
	ferry_value_free(one);
	free(buf);
	ferry_clone_handles_fini(&h);
	ferry_value_free(root);
}

Test(clone, many_handles_use_the_hashed_table)
{
	static int hs[300];
	ferry_value *root = ferry_value_array();
	for (int pass = 0; pass < 2; pass++)
		for (int i = 0; i < 300; i++)
			ferry_value_array_push(root, ferry_value_handle(
						     i % 2 ? FERRY_VALUE_PORT : FERRY_VALUE_BUF, &hs[i]));
	struct ferry_clone_handles h;
	ferry_clone_handles_init(&h);
	size_t n;
	uint8_t *buf = encode(root, &n, &h);
	cr_assert_eq(h.count, 300);
	for (int i = 0; i < 300; i++)
		cr_assert_eq(h.items[i].handle, &hs[i]);
	ferry_value *out = round_trip(root);
	ferry_value_free(out);
	free(buf);
	ferry_clone_handles_fini(&h);
	ferry_value_free(root);
}

Test(clone, handle_refusals)
{
	int h;
	ferry_value *root = ferry_value_array();
	ferry_value_array_push(root, ferry_value_handle(FERRY_VALUE_PORT, &h));
	uint8_t buf[64];
	size_t n;
	cr_assert_eq(ferry_clone_encode(root, buf, sizeof buf, &n, NULL, NULL), FERRY_ENOTCLONEABLE);
	assert_msg("no handle table");
	struct ferry_clone_handles t;
	ferry_clone_handles_init(&t);
	struct ferry_clone_encode_opts o = {.deny = FERRY_CLONE_DENY_PORT};
	cr_assert_eq(ferry_clone_encode(root, buf, sizeof buf, &n, &t, &o), FERRY_ENOTCLONEABLE);
	assert_msg("a port reference is not allowed");
	cr_assert_eq(ferry_clone_size(root, &n, &o), FERRY_ENOTCLONEABLE);
	o.deny = FERRY_CLONE_DENY_BUF;
	cr_assert_eq(ferry_clone_encode(root, buf, sizeof buf, &n, &t, &o), 0);
	/* one pointer as two kinds */
	ferry_value_array_push(root, ferry_value_handle(FERRY_VALUE_BUF, &h));
	cr_assert_eq(ferry_clone_encode(root, buf, sizeof buf, &n, &t, NULL), -EINVAL);
	assert_msg("both as a port and as a buffer");
	ferry_clone_handles_fini(&t);
	ferry_value_free(root);
}

static ferry_value *nest(int levels)
{
	ferry_value *root = ferry_value_array(), *cur = root;
	for (int i = 1; i < levels; i++) {
		ferry_value *n = i % 2 ? ferry_value_map() : ferry_value_array();
		if (ferry_value_kind(cur) == FERRY_VALUE_MAP)
			ferry_value_map_set(cur, "k", n);
		else
			ferry_value_array_push(cur, n);
		cur = n;
	}
	return root;
}

Test(clone, depth_at_and_past_the_limit)
{
	ferry_value *ok = nest(FERRY_CLONE_MAX_DEPTH);
	ferry_value_free(round_trip(ok));
	ferry_value_free(ok);

	ferry_value *deep = nest(FERRY_CLONE_MAX_DEPTH + 1);
	uint8_t *buf = malloc(4096);
	size_t n;
	cr_assert_eq(ferry_clone_encode(deep, buf, 4096, &n, NULL, NULL), FERRY_ENOTCLONEABLE);
	assert_msg("nest deeper than 128");
	ferry_value_free(deep);

	/* 128 arrays on the wire, then 129 */
	const int lim = FERRY_CLONE_MAX_DEPTH;
	memset(buf, 0x81, (size_t)lim - 1);
	buf[lim - 1] = 0x80;
	ferry_value *out;
	cr_assert_eq(decode_bytes(buf, (size_t)lim, &out), 0, "%s", ferry_errmsg());
	ferry_value_free(out);
	memset(buf, 0x81, (size_t)lim);
	buf[lim] = 0x80;
	cr_assert_eq(decode_bytes(buf, (size_t)lim + 1, &out), -EBADMSG);
	assert_msg("nest deeper than 128 at offset 128");

	/* a lower limit from the options: 4 arrays pass, 5 do not */
	struct ferry_clone_decode_opts dopt = {.max_depth = 4};
	cr_assert_eq(ferry_clone_decode(buf + lim - 3, 4, &dopt, &out), 0, "%s", ferry_errmsg());
	ferry_value_free(out);
	cr_assert_eq(ferry_clone_decode(buf + lim - 4, 5, &dopt, &out), -EBADMSG);
	assert_msg("nest deeper than 4 at offset 4");
	struct ferry_clone_encode_opts eopt = {.max_depth = 2};
	ferry_value *three = nest(3);
	cr_assert_eq(ferry_clone_encode(three, buf, 4096, &n, NULL, &eopt), FERRY_ENOTCLONEABLE);
	ferry_value_free(three);
	free(buf);
}

/* A value with every kind, sharing, a cycle and handles. */
static ferry_value *rich(int *h)
{
	ferry_value *m = ferry_value_map();
	ferry_value_map_set(m, "null", ferry_value_null());
	ferry_value_map_set(m, "undef", ferry_value_undefined());
	ferry_value_map_set(m, "t", ferry_value_bool(true));
	ferry_value_map_set(m, "i", ferry_value_int(-1234567890123LL));
	ferry_value_map_set(m, "small", ferry_value_int(7));
	ferry_value_map_set(m, "d", ferry_value_double(-0.0));
	ferry_value_map_set(m, "s", ferry_value_str("é€😀 text"));
	ferry_value_map_set(m, "b", ferry_value_bytes("\x01\x02\x03", 3));
	ferry_value_map_set(m, "f32", ferry_value_typed(FERRY_TYPED_F32, "\0\0\x80\x3f", 4));
	ferry_value *a = ferry_value_array();
	ferry_value_array_push(a, ferry_value_handle(FERRY_VALUE_BUF, &h[0]));
	ferry_value_array_push(a, ferry_value_handle(FERRY_VALUE_SHARED, &h[1]));
	ferry_value_array_push(a, ferry_value_handle(FERRY_VALUE_PORT, &h[2]));
	ferry_value_array_push(a, m);
	ferry_value_map_set(m, "arr", a);
	ferry_value_map_set(m, "again", a);
	return m;
}

Test(clone, every_truncation_is_refused)
{
	int h[3];
	ferry_value *v = rich(h);
	struct ferry_clone_handles t;
	ferry_clone_handles_init(&t);
	size_t n;
	uint8_t *buf = encode(v, &n, &t);
	struct ferry_clone_decode_opts o = {.handles = t.items, .nhandles = t.count};
	ferry_value *out;
	cr_assert_eq(ferry_clone_decode(buf, n, &o, &out), 0, "%s", ferry_errmsg());
	cr_assert(ferry_value_equal(v, out));
	ferry_value_free(out);
	for (size_t len = 0; len < n; len++) {
		/* a copy of exactly len bytes, so that ASan sees any read past it */
		uint8_t *cut = malloc(len ? len : 1);
		memcpy(cut, buf, len);
		out = (ferry_value *)1;
		int r = ferry_clone_decode(cut, len, &o, &out);
		cr_assert_eq(r, -EBADMSG, "prefix of %zu bytes: %d", len, r);
		cr_assert_null(out);
		cr_assert(strstr(ferry_errmsg(), len ? "truncated" : "empty"), "prefix %zu: %s", len,
			  ferry_errmsg());
		free(cut);
	}
	free(buf);
	ferry_clone_handles_fini(&t);
	ferry_value_free(v);
}

Test(clone, malformed_inputs_are_refused_precisely)
{
	static const struct {
		const char *in;
		size_t n;
		const char *msg;
	} cases[] = {
		{"\xf6\xf6", 2, "1 trailing bytes after the value at offset 1"},
		{"\x1c", 1, "reserved additional information 28"},
		{"\x9f\x01\xff", 3, "indefinite-length arrays are not supported"},
		{"\xbf\xff", 2, "indefinite-length maps"},
		{"\x7f\x61\x61\xff", 4, "indefinite-length text strings"},
		{"\x5f\xff", 2, "indefinite-length byte strings"},
		{"\x1f", 1, "malformed initial byte 0x1f"},
		{"\xff", 1, "break code outside"},
		{"\x1b\x80\x00\x00\x00\x00\x00\x00\x00", 9, "does not fit in int64"},
		{"\x3b\x80\x00\x00\x00\x00\x00\x00\x00", 9, "does not fit in int64"},
		{"\x82\x01\x62\xc3\x28", 5, "text string is not valid UTF-8 (byte 0 of it) at offset 2"},
		{"\x63\x61\xed\xa0", 4, "not valid UTF-8 (byte 1 of it) at offset 0"},
		{"\x64\x61\xed\xa0\x80", 5, "not valid UTF-8 (byte 1 of it) at offset 0"},
		{"\xa1\x61\xff\x00", 4, "map key is not valid UTF-8"},
		{"\xa1\x01\x02", 3, "map key is not a definite-length text string"},
		{"\xa1\x7a\x00\x00\x00\x05\x61", 7, "truncated: map key claims 5 bytes, 1 remain"},
		{"\xa1\x78\x11\x61\x61\x61\x61\x61\x61\x61\x61\x61\x61\x61\x61\x61\x61\x61\x61\xfe\x00", 21,
		 "map key is not valid UTF-8 (byte 16 of it)"},
		{"\xa1\xd8\x1c\x61\x61\x01", 6, "map key is not a definite-length text string"},
		{"\xa2\x61\x61\x01\x61\x61\x02", 7, "map has the key \"a\" twice at offset 4"},
		{"\xc1\x00", 2, "unknown tag 1 at offset 0"},
		{"\xf0", 1, "simple value 16 is not supported"},
		{"\xf8\x20", 2, "simple value 32 is not supported"},
		{"\xd8\x1d\x00", 3, "sharedref 0, but only 0 values were marked shareable"},
		{"\x82\xd8\x1c\x80\xd8\x1d\x01", 7, "sharedref 1, but only 1"},
		{"\xd8\x1d\x61\x61", 4, "tag 29 (sharedref) must hold an unsigned index"},
		{"\xd8\x1c\xd8\x1c\x80", 5, "tag 28 (shareable) directly inside tag 28"},
		{"\xd8\x1c\xd8\x1d\x00", 5, "tag 29 (sharedref) directly inside tag 28"},
		{"\xd8\x40\x01", 3, "must hold a definite byte string"},
		{"\xd8\x45\x43\x00\x00\x00", 6, "not a whole number of 2-byte elements"},
		{"\xd8\x54\x42\x00\x00", 5, "typed array tag 84 (float16) is not supported"},
		{"\xd8\x57\x50", 3, "(float128) is not supported"},
		{"\xd8\x4c\x40", 3, "(reserved) is not supported"},
		{"\xda\x66\x65\x72\x01\x00", 6, "buffer reference to handle 0, but the handle table has 0"},
		{"\xda\x66\x65\x72\x02\x61\x61", 7, "shared buffer reference must hold an unsigned index"},
		{"\x9a\x00\x01\x00\x00", 5, "truncated: array claims 65536 items, 0 bytes remain"},
		{"\xbb\xff\xff\xff\xff\xff\xff\xff\xff", 9, "truncated: map claims"},
		{"\x7b\x7f\xff\xff\xff\xff\xff\xff\xff", 9, "truncated: text string claims"},
		{"\x5a\xff\xff\xff\xff\x00", 6, "truncated: byte string claims 4294967295 bytes, 1 remain"},
		{"\x19\x01", 2, "truncated: the head needs 2 more bytes, 1 remain"},
		{"\x81", 1, "truncated: array claims 1 items, 0 bytes remain at offset 0"},
		{"\xa1\x61\x61", 3, "truncated: an item is missing at offset 3"},
	};
	for (size_t i = 0; i < sizeof cases / sizeof cases[0]; i++) {
		/* exactly n bytes on the heap: ASan catches any over-read */
		uint8_t *p = malloc(cases[i].n);
		memcpy(p, cases[i].in, cases[i].n);
		ferry_value *out = (ferry_value *)1;
		int r = ferry_clone_decode(p, cases[i].n, NULL, &out);
		cr_assert_eq(r, -EBADMSG, "case %zu accepted (%d)", i, r);
		cr_assert_null(out);
		cr_assert(strstr(ferry_errmsg(), cases[i].msg), "case %zu: \"%s\" lacks \"%s\"", i,
			  ferry_errmsg(), cases[i].msg);
		cr_assert(strncmp(ferry_errmsg(), "ferry_clone_decode: ", 20) == 0);
		free(p);
	}
	ferry_value *out;
	cr_assert_eq(decode_bytes("", 0, &out), -EBADMSG);
	assert_msg("empty message");
}

Test(clone, bad_arguments)
{
	ferry_value *v = ferry_value_int(1), *out;
	uint8_t buf[16];
	size_t n;
	cr_assert_eq(ferry_clone_encode(NULL, buf, sizeof buf, &n, NULL, NULL), -EINVAL);
	assert_msg("NULL value");
	cr_assert_eq(ferry_clone_encode(v, buf, sizeof buf, NULL, NULL, NULL), -EINVAL);
	assert_msg("NULL len");
	cr_assert_eq(ferry_clone_encode(v, NULL, 8, &n, NULL, NULL), -EINVAL);
	assert_msg("NULL buffer of 8 bytes");
	struct ferry_clone_encode_opts eo = {.max_depth = FERRY_CLONE_MAX_DEPTH + 1};
	cr_assert_eq(ferry_clone_encode(v, buf, sizeof buf, &n, NULL, &eo), -EINVAL);
	assert_msg("max_depth 129 is over the limit");
	eo = (struct ferry_clone_encode_opts){.deny = 1};
	cr_assert_eq(ferry_clone_encode(v, buf, sizeof buf, &n, NULL, &eo), -EINVAL);
	assert_msg("unknown bits 0x1 in deny");
	cr_assert_eq(ferry_clone_size(v, NULL, NULL), -EINVAL);
	cr_assert_eq(ferry_clone_size(NULL, &n, NULL), -EINVAL);

	cr_assert_eq(ferry_clone_decode(buf, 1, NULL, NULL), -EINVAL);
	assert_msg("NULL out");
	cr_assert_eq(ferry_clone_decode(NULL, 3, NULL, &out), -EINVAL);
	assert_msg("NULL buffer of 3 bytes");
	struct ferry_clone_decode_opts dopt = {.nhandles = 2};
	buf[0] = 0xf6;
	cr_assert_eq(ferry_clone_decode(buf, 1, &dopt, &out), -EINVAL);
	assert_msg("NULL handle table of 2 entries");
	dopt = (struct ferry_clone_decode_opts){.max_depth = 1000};
	cr_assert_eq(ferry_clone_decode(buf, 1, &dopt, &out), -EINVAL);
	ferry_value_free(v);
	ferry_clone_handles_init(NULL);
	ferry_clone_handles_fini(NULL);
}

Test(clone, small_buffers_get_enobufs_and_the_size)
{
	ferry_value *m = ferry_value_map();
	ferry_value_map_set(m, "text", ferry_value_str("some text that takes room"));
	ferry_value_map_set(m, "n", ferry_value_double(1.25));
	size_t need;
	cr_assert_eq(ferry_clone_size(m, &need, NULL), 0);
	uint8_t buf[128];
	for (size_t cap = 0; cap < need; cap++) {
		memset(buf, 0x5a, sizeof buf);
		size_t n = 0;
		cr_assert_eq(ferry_clone_encode(m, buf, cap, &n, NULL, NULL), -ENOBUFS);
		cr_assert_eq(n, need);
		for (size_t i = cap; i < sizeof buf; i++)
			cr_assert_eq(buf[i], 0x5a, "cap %zu: byte %zu written", cap, i);
	}
	assert_msg("needs");
	size_t n;
	cr_assert_eq(ferry_clone_encode(m, buf, need, &n, NULL, NULL), 0);
	cr_assert_eq(n, need);
	ferry_value_free(m);
}

/* xorshift: reproducible random graphs */
static uint64_t rng = 88172645463325252ull;
static uint64_t rnd(void)
{
	rng ^= rng << 13;
	rng ^= rng >> 7;
	rng ^= rng << 17;
	return rng;
}

static ferry_value *random_value(ferry_value **pool, int *npool, int depth, int *h)
{
	int k = (int)(rnd() % (depth > 6 ? 8 : 12));
	if (*npool && rnd() % 8 == 0)
		return pool[rnd() % (uint64_t)*npool]; /* share (and maybe cycle) */
	char s[40];
	memset(s, 'z', sizeof s);
	switch (k) {
	case 0: return ferry_value_null();
	case 1: return ferry_value_bool(rnd() & 1);
	case 2: return ferry_value_int((int64_t)rnd() >> (rnd() % 64));
	case 3: {
		uint64_t b = rnd();
		double d;
		memcpy(&d, &b, 8);
		return ferry_value_double(d);
	}
	case 4:
		snprintf(s, sizeof s, "str%llu", (unsigned long long)(rnd() % 100000));
		return ferry_value_str(s);
	case 5: return ferry_value_bytes(s, rnd() % 30);
	case 6: { /* each pointer keeps one kind */
		int j = (int)(rnd() % 8);
		return ferry_value_handle((enum ferry_value_kind)(FERRY_VALUE_BUF + j % 3), &h[j]);
	}
	case 7: return ferry_value_typed(FERRY_TYPED_I32, s, 4 * (rnd() % 5));
	default: {
		bool map = k % 2;
		ferry_value *c = map ? ferry_value_map() : ferry_value_array();
		if (*npool < 64)
			pool[(*npool)++] = c;
		int n = (int)(rnd() % 6);
		for (int i = 0; i < n; i++) {
			ferry_value *x = random_value(pool, npool, depth + 1, h);
			if (map) {
				snprintf(s, sizeof s, "k%d", i);
				ferry_value_map_set(c, s, x);
			} else {
				ferry_value_array_push(c, x);
			}
		}
		return c;
	}
	}
}

Test(clone, random_graphs_round_trip)
{
	static int h[8];
	for (int iter = 0; iter < 300; iter++) {
		ferry_value *pool[64];
		int npool = 0;
		ferry_value *root = ferry_value_array();
		pool[npool++] = root;
		int n = (int)(rnd() % 8);
		for (int i = 0; i < n; i++)
			ferry_value_array_push(root, random_value(pool, &npool, 1, h));
		struct ferry_clone_handles t;
		ferry_clone_handles_init(&t);
		size_t need;
		int r = ferry_clone_encode(root, NULL, 0, &need, &t, NULL);
		cr_assert_eq(r, -ENOBUFS, "%s", ferry_errmsg());
		ferry_value_free(round_trip(root));
		ferry_clone_handles_fini(&t);
		ferry_value_free(root);
	}
}

struct enc_job {
	const ferry_value *v;
	const uint8_t *want;
	size_t n;
	int bad;
};

static void *encode_many(void *arg)
{
	struct enc_job *j = arg;
	struct ferry_clone_handles t;
	ferry_clone_handles_init(&t);
	uint8_t *buf = malloc(j->n);
	for (int i = 0; i < 500; i++) {
		size_t n;
		if (ferry_clone_encode(j->v, buf, j->n, &n, &t, NULL) || n != j->n ||
		    memcmp(buf, j->want, n) != 0)
			j->bad++;
	}
	free(buf);
	ferry_clone_handles_fini(&t);
	return NULL;
}

Test(clone, threads_may_encode_one_graph_at_once)
{
	int h[3];
	ferry_value *v = rich(h);
	struct ferry_clone_handles t;
	ferry_clone_handles_init(&t);
	size_t n;
	uint8_t *want = encode(v, &n, &t);
	struct enc_job jobs[2] = {{v, want, n, 0}, {v, want, n, 0}};
	pthread_t th[2];
	for (int i = 0; i < 2; i++)
		cr_assert_eq(pthread_create(&th[i], NULL, encode_many, &jobs[i]), 0);
	for (int i = 0; i < 2; i++)
		pthread_join(th[i], NULL);
	cr_assert_eq(jobs[0].bad + jobs[1].bad, 0);
	free(want);
	ferry_clone_handles_fini(&t);
	ferry_value_free(v);
}

/* ---- the decoder's inline paths: every one against its slow twin ---- */

/* @n bytes on the heap holding @p exactly: ASan catches a read past them. */
static int decode_exact(const void *p, size_t n, ferry_value **out)
{
	uint8_t *q = malloc(n ? n : 1);
	memcpy(q, p, n);
	int r = ferry_clone_decode(q, n, NULL, out);
	free(q);
	return r;
}

Test(clone, strings_and_keys_of_every_length_round_trip)
{
	/* Short strings and keys are copied a word or two at a time; the last
	 * item of a message takes the slow path (fewer than 17 bytes after
	 * its head): every length, ASCII or not, in both places. */
	char s[301];
	for (size_t len = 0; len <= 300; len++) {
		for (int utf = 0; utf < 2; utf++) {
			for (size_t i = 0; i < len; i++)
				s[i] = (char)('a' + i % 26);
			if (utf && len >= 2) {
				s[len - 2] = (char)0xc3; /* U+00FC at the end */
				s[len - 1] = (char)0xbc;
			}
			ferry_value *m = ferry_value_map();
			ferry_value *a = ferry_value_array();
			cr_assert_eq(ferry_value_array_push(a, ferry_value_strn(s, len)), 0, "%zu", len);
			cr_assert_eq(ferry_value_array_push(a, ferry_value_bytes(s, len)), 0);
			cr_assert_eq(ferry_value_map_setn(m, s, len, ferry_value_strn(s, len)), 0);
			cr_assert_eq(ferry_value_map_set(m, "arr", a), 0);
			cr_assert_eq(ferry_value_map_set(m, "last", ferry_value_strn(s, len)), 0);
			ferry_value *out = round_trip(m);
			size_t n;
			const char *got = ferry_value_get_str(ferry_value_map_getn(out, s, len), &n);
			cr_assert(got && n == len && memcmp(got, s, len) == 0 && got[len] == 0,
				  "length %zu", len);
			got = ferry_value_get_str(ferry_value_map_get(out, "last"), &n);
			cr_assert(got && n == len && got[len] == 0);
			/* the zero padding of a copied string: no stale bytes */
			for (size_t i = len; i < ((len + 16) & ~(size_t)15); i++)
				cr_assert_eq(got[i], 0, "length %zu, byte %zu", len, i);
			ferry_value_free(out);
			ferry_value_free(m);
		}
	}
}

Test(clone, invalid_utf8_is_found_at_every_length)
{
	/* an array of one string of len bytes, its last byte a stray
	 * continuation byte; then a filler so the string is not last */
	uint8_t buf[400];
	for (size_t len = 1; len <= 300; len++) {
		for (int last = 0; last < 2; last++) {
			size_t n = 0;
			buf[n++] = last ? 0x81 : 0x82;
			if (len < 24) {
				buf[n++] = (uint8_t)(0x60 | len);
			} else if (len < 256) {
				buf[n++] = 0x78;
				buf[n++] = (uint8_t)len;
			} else {
				buf[n++] = 0x79;
				buf[n++] = (uint8_t)(len >> 8);
				buf[n++] = (uint8_t)len;
			}
			size_t at = n;
			memset(buf + n, 'x', len);
			buf[n + len - 1] = 0x80;
			n += len;
			if (!last)
				for (int i = 0; i < 20; i++)
					buf[n++] = i ? 0x00 : 0x93; /* [0 x 19] */
			ferry_value *out = (ferry_value *)1;
			int r = decode_exact(buf, n, &out);
			cr_assert_eq(r, -EBADMSG, "length %zu: %d", len, r);
			cr_assert_null(out);
			char want[96];
			snprintf(want, sizeof want, "not valid UTF-8 (byte %zu of it) at offset %zu",
				 len - 1, at - (len < 24 ? 1 : len < 256 ? 2 : 3));
			assert_msg(want);
		}
	}
}

/* A map of @n entries: key i is keys[i] (all @klen bytes), value i. */
static size_t map_bytes(uint8_t *buf, size_t n, const char *const *keys, size_t klen)
{
	size_t p = 0;
	buf[p++] = n < 24 ? (uint8_t)(0xa0 | n) : 0xb8;
	if (n >= 24)
		buf[p++] = (uint8_t)n;
	for (size_t i = 0; i < n; i++) {
		if (klen < 24) {
			buf[p++] = (uint8_t)(0x60 | klen);
		} else {
			buf[p++] = 0x78;
			buf[p++] = (uint8_t)klen;
		}
		memcpy(buf + p, keys[i], klen);
		p += klen;
		buf[p++] = (uint8_t)(i % 24);
	}
	return p;
}

Test(clone, duplicate_keys_are_found_on_every_path)
{
	/* small maps (compared pairwise) and big ones (hashed); short keys,
	 * long ones, not ASCII; the duplicate first, in the middle or last */
	static const char *const short_keys[] = {"k0", "k1", "k2", "k3", "k4", "k5", "k6", "k7", "k8",
						 "k9", "ka", "kb", "kc", "kd", "ke", "kf", "kg", "kh",
						 "ki", "kj"};
	static const char *const long_keys[] = {
		"a-key-longer-than-fifteen-0", "a-key-longer-than-fifteen-1",
		"a-key-longer-than-fifteen-2", "a-key-longer-than-fifteen-3",
		"a-key-longer-than-fifteen-4", "a-key-longer-than-fifteen-5",
		"a-key-longer-than-fifteen-6", "a-key-longer-than-fifteen-7",
		"a-key-longer-than-fifteen-8", "a-key-longer-than-fifteen-9",
		"a-key-longer-than-fifteen-a", "a-key-longer-than-fifteen-b",
		"a-key-longer-than-fifteen-c", "a-key-longer-than-fifteen-d",
		"a-key-longer-than-fifteen-e", "a-key-longer-than-fifteen-f",
		"a-key-longer-than-fifteen-g", "a-key-longer-than-fifteen-h",
		"a-key-longer-than-fifteen-i", "a-key-longer-than-fifteen-j"};
	static const char *const utf_keys[] = {"\xc3\xbc" "0", "\xc3\xbc" "1", "\xc3\xbc" "2", "\xc3\xbc" "3",
					       "\xc3\xbc" "4", "\xc3\xbc" "5", "\xc3\xbc" "6", "\xc3\xbc" "7",
					       "\xc3\xbc" "8", "\xc3\xbc" "9", "\xc3\xbc" "a", "\xc3\xbc" "b",
					       "\xc3\xbc" "c", "\xc3\xbc" "d", "\xc3\xbc" "e", "\xc3\xbc" "f",
					       "\xc3\xbc" "g", "\xc3\xbc" "h", "\xc3\xbc" "i", "\xc3\xbc" "j"};
	const struct {
		const char *const *keys;
		size_t klen;
	} sets[] = {{short_keys, 2}, {long_keys, 27}, {utf_keys, 3}};
	uint8_t buf[2048];
	for (size_t s = 0; s < 3; s++) {
		for (size_t n = 2; n <= 20; n += n < 9 ? 1 : 11) {
			const char *keys[20];
			memcpy(keys, sets[s].keys, n * sizeof keys[0]);
			size_t len = map_bytes(buf, n, keys, sets[s].klen);
			ferry_value *out = NULL;
			cr_assert_eq(decode_exact(buf, len, &out), 0, "%s", ferry_errmsg());
			cr_assert_eq(ferry_value_len(out), n);
			for (size_t i = 0; i < n; i++) {
				int64_t x;
				cr_assert_eq(ferry_value_get_int(ferry_value_map_getn(out, keys[i], sets[s].klen),
								 &x), 0);
				cr_assert_eq(x, (int64_t)(i % 24));
			}
			ferry_value_free(out);
			for (size_t dup = 1; dup < n; dup++) {
				for (size_t of = 0; of < dup; of += dup - of > 1 ? dup - of - 1 : 1) {
					memcpy(keys, sets[s].keys, n * sizeof keys[0]);
					keys[dup] = keys[of];
					len = map_bytes(buf, n, keys, sets[s].klen);
					out = (ferry_value *)1;
					cr_assert_eq(decode_exact(buf, len, &out), -EBADMSG,
						     "set %zu, %zu entries, key %zu = key %zu", s, n, dup, of);
					cr_assert_null(out);
					assert_msg("twice at offset");
				}
			}
		}
	}
}

Test(clone, keys_that_differ_only_in_length_are_distinct)
{
	/* "a" and "a\0" pad to the same 16 bytes: the length tells them apart */
	for (int big = 0; big < 2; big++) {
		ferry_value *m = ferry_value_map();
		cr_assert_eq(ferry_value_map_setn(m, "a", 1, ferry_value_int(1)), 0);
		cr_assert_eq(ferry_value_map_setn(m, "a\0", 2, ferry_value_int(2)), 0);
		cr_assert_eq(ferry_value_map_setn(m, "a\0\0", 3, ferry_value_int(3)), 0);
		for (int i = 0; big && i < 20; i++) {
			char k[8];
			snprintf(k, sizeof k, "f%d", i);
			cr_assert_eq(ferry_value_map_set(m, k, ferry_value_null()), 0);
		}
		ferry_value *out = round_trip(m);
		int64_t x;
		cr_assert_eq(ferry_value_get_int(ferry_value_map_getn(out, "a\0", 2), &x), 0);
		cr_assert_eq(x, 2);
		ferry_value_free(out);
		ferry_value_free(m);
	}
}

Test(clone, decoded_graphs_stay_mutable)
{
	/* Decoded children live in their container's block: growing,
	 * replacing and joining them must work as for built values. */
	ferry_value *m = ferry_value_map();
	ferry_value *a = ferry_value_array();
	ferry_value_array_push(a, ferry_value_str("one"));
	ferry_value_array_push(a, ferry_value_int(2));
	ferry_value_map_set(m, "a", a);
	ferry_value_map_set(m, "s", ferry_value_str("short"));
	ferry_value_map_set(m, "n", ferry_value_double(1.5));
	ferry_value *out = round_trip(m);
	ferry_value *oa = ferry_value_map_get(out, "a");
	for (int i = 0; i < 100; i++) {
		char k[16];
		snprintf(k, sizeof k, "key%d", i);
		cr_assert_eq(ferry_value_map_set(out, k, ferry_value_int(i)), 0);
		cr_assert_eq(ferry_value_array_push(oa, ferry_value_int(i)), 0);
		cr_assert_eq(ferry_value_map_set(m, k, ferry_value_int(i)), 0);
		cr_assert_eq(ferry_value_array_push(a, ferry_value_int(i)), 0);
	}
	/* replace in place, move a decoded child elsewhere, share it */
	cr_assert_eq(ferry_value_map_set(out, "s", ferry_value_str("replaced")), 0);
	cr_assert_eq(ferry_value_map_set(m, "s", ferry_value_str("replaced")), 0);
	ferry_value *one = ferry_value_array_get(oa, 0);
	cr_assert_eq(ferry_value_map_set(out, "again", one), 0);
	cr_assert_eq(ferry_value_map_set(m, "again", ferry_value_array_get(a, 0)), 0);
	cr_assert(ferry_value_equal(m, out));
	/* the changed graph round-trips too (the shared string included) */
	ferry_value *again = round_trip(out);
	cr_assert(ferry_value_map_get(again, "again") ==
		  ferry_value_array_get(ferry_value_map_get(again, "a"), 0));
	ferry_value_free(again);
	/* joined to another graph: one free for both */
	ferry_value *other = ferry_value_array();
	cr_assert_eq(ferry_value_array_push(other, out), 0);
	ferry_value_free(other);
	ferry_value_free(m);
}

struct dec_job {
	const uint8_t *buf;
	size_t n;
	ferry_value *got[64];
};

static void *decode_many(void *arg)
{
	struct dec_job *j = arg;
	for (int i = 0; i < 64; i++)
		if (ferry_clone_decode(j->buf, j->n, NULL, &j->got[i]))
			j->got[i] = NULL;
	return NULL;
}

static void *free_many(void *arg)
{
	struct dec_job *j = arg;
	for (int i = 0; i < 64; i++)
		ferry_value_free(j->got[i]);
	return NULL;
}

Test(clone, graphs_decoded_on_one_thread_are_freed_on_another)
{
	/* A thread keeps the home chunk of the last graph it freed for its next
	 * decode: graphs move between threads, threads end, nothing leaks. */
	ferry_value *m = ferry_value_map();
	for (int i = 0; i < 40; i++) {
		char k[16];
		snprintf(k, sizeof k, "field%d", i);
		ferry_value_map_set(m, k, ferry_value_str("some text"));
	}
	size_t n;
	uint8_t *buf = encode(m, &n, NULL);
	for (int round = 0; round < 4; round++) {
		struct dec_job j = {buf, n, {0}};
		pthread_t t;
		cr_assert_eq(pthread_create(&t, NULL, decode_many, &j), 0);
		pthread_join(t, NULL);
		for (int i = 0; i < 64; i++)
			cr_assert(j.got[i] && ferry_value_equal(m, j.got[i]));
		cr_assert_eq(pthread_create(&t, NULL, free_many, &j), 0);
		pthread_join(t, NULL);
		/* and on this thread, which keeps one */
		ferry_value *v;
		cr_assert_eq(ferry_clone_decode(buf, n, NULL, &v), 0);
		ferry_value_free(v);
	}
	free(buf);
	ferry_value_free(m);
}
