/* The value model: constructors, getters, containers, graph ownership, equal. */
#include <criterion/criterion.h>
#include <errno.h>
#include <math.h>
#include <stdio.h>
#include <string.h>

#include "ferry/value.h"

#define assert_msg(sub) \
	cr_assert(strstr(ferry_errmsg(), (sub)), "errmsg \"%s\" lacks \"%s\"", ferry_errmsg(), (sub))

Test(value, scalars_round_trip_through_getters)
{
	ferry_value *v;
	bool b;
	int64_t i;
	double d;

	v = ferry_value_null();
	cr_assert_eq(ferry_value_kind(v), FERRY_VALUE_NULL);
	ferry_value_free(v);
	v = ferry_value_undefined();
	cr_assert_eq(ferry_value_kind(v), FERRY_VALUE_UNDEFINED);
	ferry_value_free(v);

	v = ferry_value_bool(true);
	cr_assert_eq(ferry_value_get_bool(v, &b), 0);
	cr_assert(b);
	ferry_value_free(v);

	int64_t ints[] = {0, 1, -1, INT64_MAX, INT64_MIN, 23, 24, -24, -25};
	for (size_t k = 0; k < sizeof ints / sizeof ints[0]; k++) {
		v = ferry_value_int(ints[k]);
		cr_assert_eq(ferry_value_get_int(v, &i), 0);
		cr_assert_eq(i, ints[k]);
		ferry_value_free(v);
	}

	double dbl[] = {0.0, -0.0, 1.5, NAN, INFINITY, -INFINITY, 5e-324};
	for (size_t k = 0; k < sizeof dbl / sizeof dbl[0]; k++) {
		v = ferry_value_double(dbl[k]);
		cr_assert_eq(ferry_value_get_double(v, &d), 0);
		cr_assert_eq(memcmp(&d, &dbl[k], sizeof d), 0, "double %g changed", dbl[k]);
		ferry_value_free(v);
	}
}

Test(value, strings_are_copied_validated_and_terminated)
{
	char src[] = "héllo €";
	ferry_value *v = ferry_value_str(src);
	src[0] = 'X';
	size_t len;
	const char *s = ferry_value_get_str(v, &len);
	cr_assert_str_eq(s, "héllo €");
	cr_assert_eq(len, strlen("héllo €"));
	cr_assert_eq(ferry_value_len(v), len);
	ferry_value_free(v);

	v = ferry_value_strn("a\0b", 3); /* U+0000 is valid UTF-8 */
	s = ferry_value_get_str(v, &len);
	cr_assert_eq(len, 3);
	cr_assert_eq(memcmp(s, "a\0b", 4), 0);
	ferry_value_free(v);

	v = ferry_value_str("");
	cr_assert_str_eq(ferry_value_get_str(v, NULL), "");
	ferry_value_free(v);

	v = ferry_value_str("\xf0\x9f\x98\x80"); /* U+1F600 */
	cr_assert_not_null(v);
	ferry_value_free(v);
}

Test(value, invalid_utf8_is_refused)
{
	static const char *const bad[] = {
		"\x80",             /* lone continuation byte */
		"\xc0\x80",         /* overlong NUL */
		"\xe0\x80\xaf",     /* overlong '/' */
		"\xed\xa0\x80",     /* surrogate U+D800 */
		"\xf4\x90\x80\x80", /* past U+10FFFF */
		"\xe2\x82",         /* truncated sequence */
		"abc\xff",          /* 0xff never occurs */
		"0123456789abcdef\xc3(", /* after the ASCII fast path */
	};
	for (size_t k = 0; k < sizeof bad / sizeof bad[0]; k++) {
		cr_assert_null(ferry_value_str(bad[k]), "accepted case %zu", k);
		assert_msg("not valid UTF-8");
	}
}

Test(value, bytes_and_typed_views)
{
	uint8_t raw[5] = {1, 2, 3, 4, 5};
	ferry_value *v = ferry_value_bytes(raw, sizeof raw);
	size_t len;
	uint8_t *p = ferry_value_get_bytes(v, &len);
	cr_assert_eq(len, 5);
	cr_assert_eq(memcmp(p, raw, 5), 0);
	cr_assert_eq(ferry_value_get_typed(v), FERRY_TYPED_NONE);
	p[0] = 9; /* writable in place */
	cr_assert_eq(((uint8_t *)ferry_value_get_bytes(v, NULL))[0], 9);
	ferry_value_free(v);

	v = ferry_value_bytes(NULL, 0);
	cr_assert_not_null(ferry_value_get_bytes(v, &len), "empty bytes still have a pointer");
	cr_assert_eq(len, 0);
	ferry_value_free(v);

	v = ferry_value_bytes(NULL, 3);
	p = ferry_value_get_bytes(v, &len);
	cr_assert(len == 3 && !p[0] && !p[1] && !p[2]);
	ferry_value_free(v);

	uint32_t words[3] = {1, 2, 0xdeadbeef};
	v = ferry_value_typed(FERRY_TYPED_U32, words, sizeof words);
	cr_assert_eq(ferry_value_get_typed(v), FERRY_TYPED_U32);
	cr_assert_eq(ferry_value_len(v), 12);
	ferry_value_free(v);

	cr_assert_null(ferry_value_typed(FERRY_TYPED_U32, words, 7));
	assert_msg("whole number");
	cr_assert_null(ferry_value_typed((enum ferry_typed)99, words, 4));
	assert_msg("unknown typed view");
	cr_assert_eq(ferry_typed_elem_size(FERRY_TYPED_F64), 8);
	cr_assert_eq(ferry_typed_elem_size((enum ferry_typed)99), 0);
}

Test(value, handles_are_opaque_pointers)
{
	int a, b;
	ferry_value *v = ferry_value_handle(FERRY_VALUE_PORT, &a);
	enum ferry_value_kind k;
	cr_assert_eq(ferry_value_get_handle(v, &k), &a);
	cr_assert_eq(k, FERRY_VALUE_PORT);
	ferry_value_free(v);
	cr_assert_null(ferry_value_handle(FERRY_VALUE_INT, &b));
	assert_msg("not a handle kind");
	cr_assert_null(ferry_value_handle(FERRY_VALUE_BUF, NULL));
	assert_msg("NULL handle");
}

Test(value, getters_check_the_kind)
{
	ferry_value *v = ferry_value_str("x");
	int64_t i = 7;
	bool b;
	double d;
	cr_assert_eq(ferry_value_get_int(v, &i), -EINVAL);
	assert_msg("ferry_value_get_int: expected int, got string");
	cr_assert_eq(i, 7, "out untouched on error");
	cr_assert_eq(ferry_value_get_bool(v, &b), -EINVAL);
	cr_assert_eq(ferry_value_get_double(v, &d), -EINVAL);
	cr_assert_null(ferry_value_get_bytes(v, NULL));
	assert_msg("expected bytes, got string");
	cr_assert_null(ferry_value_get_handle(v, NULL));
	cr_assert_null(ferry_value_array_get(v, 0));
	cr_assert_null(ferry_value_map_get(v, "x"));
	ferry_value_free(v);

	v = ferry_value_int(1);
	cr_assert_null(ferry_value_get_str(v, NULL));
	assert_msg("expected string, got int");
	cr_assert_eq(ferry_value_len(v), 0);
	ferry_value_free(v);

	cr_assert_eq(ferry_value_get_int(NULL, &i), -EINVAL);
	assert_msg("NULL value");
	cr_assert_eq(ferry_value_kind(NULL), FERRY_VALUE_UNDEFINED);
	cr_assert_eq(ferry_value_len(NULL), 0);
	cr_assert_str_eq(ferry_value_kind_name(FERRY_VALUE_SHARED), "shared buffer");
	cr_assert_str_eq(ferry_value_kind_name((enum ferry_value_kind)42), "?");
	ferry_value_free(NULL);
}

Test(value, arrays_push_get_set)
{
	ferry_value *a = ferry_value_array();
	cr_assert_eq(ferry_value_len(a), 0);
	for (int i = 0; i < 1000; i++)
		cr_assert_eq(ferry_value_array_push(a, ferry_value_int(i)), 0);
	cr_assert_eq(ferry_value_len(a), 1000);
	for (int i = 0; i < 1000; i++) {
		int64_t x;
		cr_assert_eq(ferry_value_get_int(ferry_value_array_get(a, (size_t)i), &x), 0);
		cr_assert_eq(x, i);
	}
	cr_assert_null(ferry_value_array_get(a, 1000));
	cr_assert_eq(ferry_value_array_set(a, 5, ferry_value_str("five")), 0);
	cr_assert_str_eq(ferry_value_get_str(ferry_value_array_get(a, 5), NULL), "five");
	cr_assert_eq(ferry_value_array_set(a, 1000, ferry_value_null()), -EINVAL);
	assert_msg("out of range");
	ferry_value_free(a); /* the null of the failed set joined a: no leak */
}

Test(value, maps_keep_insertion_order_and_replace_in_place)
{
	ferry_value *m = ferry_value_map();
	const char *keys[] = {"zeta", "alpha", "mid", "", "b"};
	for (int i = 0; i < 5; i++)
		cr_assert_eq(ferry_value_map_set(m, keys[i], ferry_value_int(i)), 0);
	cr_assert_eq(ferry_value_map_set(m, "alpha", ferry_value_str("again")), 0);
	cr_assert_eq(ferry_value_len(m), 5);
	for (size_t i = 0; i < 5; i++) {
		size_t kl;
		cr_assert_str_eq(ferry_value_map_key(m, i, &kl), keys[i]);
		cr_assert_eq(kl, strlen(keys[i]));
	}
	cr_assert_str_eq(ferry_value_get_str(ferry_value_map_value(m, 1), NULL), "again");
	cr_assert_str_eq(ferry_value_get_str(ferry_value_map_get(m, "alpha"), NULL), "again");
	int64_t x;
	cr_assert_eq(ferry_value_get_int(ferry_value_map_get(m, ""), &x), 0);
	cr_assert_eq(x, 3);
	cr_assert_null(ferry_value_map_get(m, "nope"));
	cr_assert_eq(ferry_value_kind(ferry_value_map_get(m, "nope")), FERRY_VALUE_UNDEFINED);
	cr_assert_null(ferry_value_map_key(m, 5, NULL));
	cr_assert_null(ferry_value_map_value(m, 5));

	/* keys with NUL inside are distinct from their prefix */
	cr_assert_eq(ferry_value_map_setn(m, "b\0c", 3, ferry_value_int(7)), 0);
	cr_assert_eq(ferry_value_len(m), 6);
	cr_assert_eq(ferry_value_get_int(ferry_value_map_getn(m, "b\0c", 3), &x), 0);
	cr_assert_eq(x, 7);
	ferry_value_free(m);
}

Test(value, big_maps_stay_ordered_and_indexed)
{
	ferry_value *m = ferry_value_map();
	char k[32];
	for (int i = 0; i < 5000; i++) {
		snprintf(k, sizeof k, "key-%d", 4999 - i);
		cr_assert_eq(ferry_value_map_set(m, k, ferry_value_int(i)), 0);
	}
	for (int i = 0; i < 5000; i += 7) { /* replace some */
		snprintf(k, sizeof k, "key-%d", 4999 - i);
		cr_assert_eq(ferry_value_map_set(m, k, ferry_value_int(-i)), 0);
	}
	cr_assert_eq(ferry_value_len(m), 5000);
	for (int i = 0; i < 5000; i++) {
		snprintf(k, sizeof k, "key-%d", 4999 - i);
		cr_assert_str_eq(ferry_value_map_key(m, (size_t)i, NULL), k);
		int64_t x;
		cr_assert_eq(ferry_value_get_int(ferry_value_map_get(m, k), &x), 0);
		cr_assert_eq(x, i % 7 ? i : -i);
	}
	ferry_value_free(m);
}

Test(value, map_set_errors)
{
	ferry_value *m = ferry_value_map();
	cr_assert_eq(ferry_value_map_set(m, "\xff", ferry_value_int(1)), -EINVAL);
	assert_msg("key is not valid UTF-8");
	cr_assert_eq(ferry_value_map_set(m, NULL, ferry_value_int(1)), -EINVAL);
	assert_msg("NULL key");
	cr_assert_eq(ferry_value_map_set(m, "k", NULL), -EINVAL);
	assert_msg("constructor failed");
	cr_assert_eq(ferry_value_len(m), 0);
	ferry_value_free(m); /* the two ints joined m on failure: nothing leaks */

	/* not a map: nothing joins, the value stays the caller's */
	ferry_value *a = ferry_value_array(), *v = ferry_value_int(1);
	cr_assert_eq(ferry_value_map_set(a, "k", v), -EINVAL);
	assert_msg("expected map, got array");
	cr_assert_eq(ferry_value_array_push(NULL, v), -EINVAL);
	ferry_value_free(a);
	ferry_value_free(v);
}

Test(value, freeing_a_root_frees_shared_children_and_cycles)
{
	/* a map containing itself */
	ferry_value *m = ferry_value_map();
	cr_assert_eq(ferry_value_map_set(m, "self", m), 0);
	cr_assert_eq(ferry_value_map_get(m, "self"), m);
	ferry_value_free(m);

	/* two arrays referencing each other, from a third */
	ferry_value *root = ferry_value_array(), *a = ferry_value_array(), *b = ferry_value_array();
	ferry_value_array_push(a, b);
	ferry_value_array_push(b, a);
	ferry_value_array_push(root, a);
	ferry_value_array_push(root, b);
	ferry_value_array_push(root, root);
	ferry_value_free(root);

	/* one child in two containers built apart: they become one graph */
	ferry_value *x = ferry_value_str("shared"), *p = ferry_value_map(), *q = ferry_value_array();
	ferry_value_map_set(p, "x", x);
	ferry_value_array_push(q, x);
	ferry_value_array_push(q, p);
	ferry_value_free(q); /* frees p and x too (ASan would see a leak or a double free) */

	/* many standalone graphs joined one by one */
	ferry_value *big = ferry_value_array();
	for (int i = 0; i < 20000; i++) {
		ferry_value *c = ferry_value_map();
		ferry_value_map_set(c, "i", ferry_value_int(i));
		ferry_value_array_push(big, c);
	}
	ferry_value_free(ferry_value_array_get(big, 123)); /* any member frees the graph */
}

Test(value, equal_compares_content_and_shape)
{
	ferry_value *a = ferry_value_map(), *b = ferry_value_map();
	ferry_value_map_set(a, "n", ferry_value_double(NAN));
	ferry_value_map_set(b, "n", ferry_value_double(NAN));
	cr_assert(ferry_value_equal(a, b), "NaN equals the same NaN");
	ferry_value_map_set(a, "z", ferry_value_double(0.0));
	ferry_value_map_set(b, "z", ferry_value_double(-0.0));
	cr_assert_not(ferry_value_equal(a, b), "0 is not -0");
	ferry_value_free(a);
	ferry_value_free(b);

	/* key order matters */
	a = ferry_value_map();
	b = ferry_value_map();
	ferry_value_map_set(a, "x", ferry_value_int(1));
	ferry_value_map_set(a, "y", ferry_value_int(2));
	ferry_value_map_set(b, "y", ferry_value_int(2));
	ferry_value_map_set(b, "x", ferry_value_int(1));
	cr_assert_not(ferry_value_equal(a, b));
	ferry_value_free(a);
	ferry_value_free(b);

	/* [x, x] is not [x, x'] even when x and x' are alike */
	a = ferry_value_array();
	b = ferry_value_array();
	ferry_value *x = ferry_value_array();
	ferry_value_array_push(a, x);
	ferry_value_array_push(a, x);
	ferry_value_array_push(b, ferry_value_array());
	ferry_value_array_push(b, ferry_value_array());
	cr_assert_not(ferry_value_equal(a, b));
	cr_assert_not(ferry_value_equal(b, a));
	cr_assert(ferry_value_equal(a, a));
	ferry_value_free(a);
	ferry_value_free(b);

	/* cycles: {self: itself} equals another {self: itself}, not a 2-cycle */
	a = ferry_value_map();
	ferry_value_map_set(a, "self", a);
	b = ferry_value_map();
	ferry_value_map_set(b, "self", b);
	cr_assert(ferry_value_equal(a, b));
	ferry_value *c1 = ferry_value_map(), *c2 = ferry_value_map();
	ferry_value_map_set(c1, "self", c2);
	ferry_value_map_set(c2, "self", c1);
	cr_assert_not(ferry_value_equal(a, c1));
	ferry_value_free(a);
	ferry_value_free(b);
	ferry_value_free(c1);

	/* handles compare by kind and pointer; typed views count */
	int h;
	a = ferry_value_handle(FERRY_VALUE_BUF, &h);
	b = ferry_value_handle(FERRY_VALUE_SHARED, &h);
	cr_assert_not(ferry_value_equal(a, b));
	ferry_value_free(a);
	ferry_value_free(b);
	a = ferry_value_typed(FERRY_TYPED_U8, "ab", 2);
	b = ferry_value_bytes("ab", 2);
	cr_assert_not(ferry_value_equal(a, b));
	ferry_value_free(a);
	ferry_value_free(b);

	/* deep chains do not recurse */
	a = ferry_value_array();
	b = ferry_value_array();
	ferry_value *ta = a, *tb = b;
	for (int i = 0; i < 100000; i++) {
		ferry_value *na = ferry_value_array(), *nb = ferry_value_array();
		ferry_value_array_push(ta, na);
		ferry_value_array_push(tb, nb);
		ta = na;
		tb = nb;
	}
	cr_assert(ferry_value_equal(a, b));
	ferry_value_free(a);
	ferry_value_free(b);
	cr_assert(ferry_value_equal(NULL, NULL));
}

Test(value, long_strings_and_large_bytes)
{
	static char s[100001];
	memset(s, 'a', sizeof s - 1);
	ferry_value *m = ferry_value_map();
	cr_assert_eq(ferry_value_map_set(m, s, ferry_value_str(s)), 0);
	ferry_value *b = ferry_value_bytes(NULL, 8u << 20);
	cr_assert_eq(ferry_value_map_set(m, "big", b), 0);
	cr_assert_eq(ferry_value_len(ferry_value_map_get(m, s)), 100000);
	cr_assert_eq(ferry_value_len(ferry_value_map_get(m, "big")), 8u << 20);
	ferry_value_free(m);
}
