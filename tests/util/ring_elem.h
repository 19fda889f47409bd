/* tests/util/ring_elem.h - the 64-byte stamped element of the MPMC ring
 * tests: who, which, payload, and a checksum over all of it, so that a torn,
 * lost or duplicated element shows. */
#ifndef FERRY_TEST_RING_ELEM_H
#define FERRY_TEST_RING_ELEM_H

#include <stdbool.h>
#include <stdint.h>
#include <string.h>

struct elem {
	uint32_t producer;
	uint32_t pad;
	uint64_t seq;
	uint64_t payload[5];
	uint64_t check;
};
_Static_assert(sizeof(struct elem) == 64, "elem");

static inline uint64_t elem_mix(uint64_t x)
{
	x ^= x >> 33;
	x *= 0xff51afd7ed558ccdull;
	x ^= x >> 33;
	x *= 0xc4ceb9fe1a85ec53ull;
	return x ^ (x >> 33);
}

static inline struct elem mk_elem(uint32_t producer, uint64_t seq)
{
	struct elem e = { producer, 0, seq, { 0 }, 0 };
	uint64_t c = elem_mix(producer * 1000003ull + seq);
	for (int i = 0; i < 5; i++)
		e.payload[i] = elem_mix(c + (uint64_t)i);
	e.check = elem_mix(c ^ e.payload[4]) ^ seq;
	return e;
}

static inline bool elem_ok(const struct elem *e)
{
	struct elem x = mk_elem(e->producer, e->seq);
	return memcmp(&x, e, sizeof x) == 0;
}

#endif
