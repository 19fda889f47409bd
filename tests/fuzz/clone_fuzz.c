/*
 * libFuzzer target for the clone decoder. Every input must either decode or
 * fail with -EBADMSG (never crash, read out of bounds, leak or allocate out
 * of proportion); what decodes must re-encode, and decode again to an equal
 * graph (same content, same sharing and cycles, same handles).
 */
#include <errno.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>

#include "ferry/value.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

static int handles[6];

static void check(int cond, const char *what)
{
	if (!cond) {
		fprintf(stderr, "clone_fuzz: %s (%s)\n", what, ferry_errmsg());
		abort();
	}
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
	const struct ferry_clone_handle table[6] = {
		{FERRY_VALUE_BUF, &handles[0]},    {FERRY_VALUE_SHARED, &handles[1]},
		{FERRY_VALUE_PORT, &handles[2]},   {FERRY_VALUE_BUF, &handles[3]},
		{FERRY_VALUE_SHARED, &handles[4]}, {FERRY_VALUE_PORT, &handles[5]},
	};
	struct ferry_clone_decode_opts o = {.handles = table, .nhandles = 6};
	ferry_value *v = NULL;
	int r = ferry_clone_decode(data, size, &o, &v);
	if (r) {
		check(r == -EBADMSG || r == -ENOMEM, "unexpected error code");
		check(v == NULL, "output set on failure");
		return 0;
	}

	struct ferry_clone_handles t;
	ferry_clone_handles_init(&t);
	size_t need = 0, n = 0;
	check(ferry_clone_size(v, &need, NULL) == 0, "re-encode size failed");
	uint8_t *buf = malloc(need ? need : 1);
	check(buf != NULL, "malloc");
	check(ferry_clone_encode(v, buf, need, &n, &t, NULL) == 0, "re-encode failed");
	check(n == need, "size query and encode disagree");

	struct ferry_clone_decode_opts o2 = {.handles = t.items, .nhandles = t.count};
	ferry_value *w = NULL;
	check(ferry_clone_decode(buf, n, &o2, &w) == 0, "re-encoded clone does not decode");
	check(ferry_value_equal(v, w), "round trip changed the graph");

	ferry_value_free(w);
	free(buf);
	ferry_clone_handles_fini(&t);
	ferry_value_free(v);
	return 0;
}
