/* tests/util/wire.h - mirrors of ports/msg.c's private wire layout (the
 * clone record header, its handle descriptors, fd batch headers, the spill
 * header), for the tests that write records by hand. The asserts keep them
 * the size msg.c's are. */
#ifndef FERRY_TEST_WIRE_H
#define FERRY_TEST_WIRE_H

#include <stdint.h>

struct w_clone_hdr {
	uint32_t nhandles;
	uint32_t nfds;
	uint64_t fd_seq;
	uint64_t body_len;
	uint64_t cbor_len;
	uint32_t flags;
	uint32_t nstash; /* stashed fd batches travelling with ports */
};
struct w_desc {
	uint32_t type;
	uint32_t pad;
	uint64_t len;
	uint64_t off;
};
struct w_batch {
	uint64_t seq;
	uint32_t index;
	uint32_t count;
};
_Static_assert(sizeof(struct w_clone_hdr) == 40, "clone_hdr mirror");
_Static_assert(sizeof(struct w_desc) == 24, "handle_desc mirror");
_Static_assert(sizeof(struct w_batch) == 16, "fd_batch mirror");
enum { H_INLINE = 1, H_SEG = 2, H_SHARED = 3, H_PORT = 4, H_STASH = 5 };
#define W_SPILLED 1u
#define W_SPILL_MAGIC 0x6c6c697079726566ull
#define W_SPILL_HDR 64

#endif
