/*
 * Writes the seed corpus of clone_fuzz: clones of values covering every
 * kind, sharing, cycles, handles, typed views and nesting, plus a few
 * hand-made inputs the encoder never writes (float16/32, big-endian typed
 * arrays, long heads). Usage: gen_corpus DIR
 */
#include <errno.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "ferry/value.h"

static const char *dir;
static int count;
static int handles[6];

static void put(const char *name, const void *p, size_t n)
{
	char path[4096];
	snprintf(path, sizeof path, "%s/%02d-%s", dir, count++, name);
	FILE *f = fopen(path, "wb");
	if (!f || fwrite(p, 1, n, f) != n || fclose(f)) {
		perror(path);
		exit(1);
	}
}

/* Handles must map to the fuzzer's table: buf 0/3, shared 1/4, port 2/5. */
static void clone(const char *name, ferry_value *v)
{
	struct ferry_clone_handles t;
	ferry_clone_handles_init(&t);
	size_t n;
	if (ferry_clone_size(v, &n, NULL)) {
		fprintf(stderr, "%s: %s\n", name, ferry_errmsg());
		exit(1);
	}
	unsigned char *buf = malloc(n);
	if (ferry_clone_encode(v, buf, n, &n, &t, NULL)) {
		fprintf(stderr, "%s: %s\n", name, ferry_errmsg());
		exit(1);
	}
	put(name, buf, n);
	free(buf);
	ferry_clone_handles_fini(&t);
	ferry_value_free(v);
}

static ferry_value *obj(void)
{
	ferry_value *m = ferry_value_map();
	char k[32], s[64];
	for (int i = 0; i < 32; i++) {
		snprintf(k, sizeof k, "field_%d", i);
		switch (i % 6) {
		case 0: ferry_value_map_set(m, k, ferry_value_int(1000000007LL * i - 5)); break;
		case 1: ferry_value_map_set(m, k, ferry_value_double(i / 7.0)); break;
		case 2:
			snprintf(s, sizeof s, "string value %d é€", i);
			ferry_value_map_set(m, k, ferry_value_str(s));
			break;
		case 3: ferry_value_map_set(m, k, ferry_value_bool(i & 1)); break;
		case 4: {
			ferry_value *a = ferry_value_array();
			for (int j = 0; j < 3; j++)
				ferry_value_array_push(a, ferry_value_int(-j * 300));
			ferry_value_map_set(m, k, a);
			break;
		}
		default: ferry_value_map_set(m, k, ferry_value_null()); break;
		}
	}
	return m;
}

int main(int argc, char **argv)
{
	if (argc != 2) {
		fprintf(stderr, "usage: %s DIR\n", argv[0]);
		return 2;
	}
	dir = argv[1];

	clone("null", ferry_value_null());
	clone("undefined", ferry_value_undefined());
	clone("true", ferry_value_bool(true));
	clone("int-min", ferry_value_int(INT64_MIN));
	clone("int-max", ferry_value_int(INT64_MAX));
	clone("int-small", ferry_value_int(-24));
	clone("nan", ferry_value_double(NAN));
	clone("neg-zero", ferry_value_double(-0.0));
	clone("inf", ferry_value_double(-INFINITY));
	clone("str-empty", ferry_value_str(""));
	clone("str-utf8", ferry_value_str("héllo wörld € 😀, longer than twenty-three bytes"));
	clone("bytes", ferry_value_bytes("\x00\x01\xfe\xff", 4));
	clone("typed-f64", ferry_value_typed(FERRY_TYPED_F64, "\0\0\0\0\0\0\xf8\x3f", 8));
	clone("typed-i16", ferry_value_typed(FERRY_TYPED_I16, "\x01\x80\xff\x7f", 4));
	clone("array-empty", ferry_value_array());
	clone("map-empty", ferry_value_map());
	clone("object", obj());

	ferry_value *m = ferry_value_map();
	ferry_value_map_set(m, "self", m);
	clone("cycle-self", m);

	ferry_value *a = ferry_value_array(), *b = ferry_value_array();
	ferry_value_array_push(a, b);
	ferry_value_array_push(b, a);
	ferry_value_array_push(a, ferry_value_str("x"));
	clone("cycle-pair", a);

	ferry_value *r = ferry_value_array(), *x = ferry_value_map(), *s = ferry_value_str("shared");
	ferry_value_map_set(x, "k", ferry_value_int(1));
	for (int i = 0; i < 3; i++) {
		ferry_value_array_push(r, x);
		ferry_value_array_push(r, s);
	}
	clone("shared", r);

	r = ferry_value_array();
	ferry_value *port = ferry_value_handle(FERRY_VALUE_PORT, &handles[2]);
	ferry_value_array_push(r, ferry_value_handle(FERRY_VALUE_BUF, &handles[0]));
	ferry_value_array_push(r, port);
	ferry_value_array_push(r, port);
	ferry_value_array_push(r, ferry_value_handle(FERRY_VALUE_SHARED, &handles[1]));
	ferry_value_array_push(r, ferry_value_handle(FERRY_VALUE_BUF, &handles[0]));
	clone("handles", r);

	ferry_value *deep = ferry_value_array(), *cur = deep;
	for (int i = 1; i < FERRY_CLONE_MAX_DEPTH; i++) {
		ferry_value *n = ferry_value_array();
		ferry_value_array_push(cur, n);
		cur = n;
	}
	clone("deep-128", deep);

	ferry_value *big = ferry_value_map();
	char k[16];
	for (int i = 0; i < 40; i++) {
		snprintf(k, sizeof k, "k%d", i);
		ferry_value_map_set(big, k, ferry_value_int(i));
	}
	clone("map-40", big);

	/* inputs only other writers produce */
	put("float16", "\x83\xf9\x3c\x00\xf9\x7e\x00\xf9\x80\x01", 10);
	put("float32", "\xfa\x3f\xc0\x00\x00", 5);
	put("typed-u16-be", "\xd8\x41\x44\x01\x02\x03\x04", 7);
	put("long-heads", "\x9b\x00\x00\x00\x00\x00\x00\x00\x01\x1b\x00\x00\x00\x00\x00\x00\x00\x05",
	    18);
	put("shared-scalar", "\x82\xd8\x1c\x01\xd8\x1d\x00", 7);
	return 0;
}
