/* ports/port_int.h - internal: the channel layout and port hooks for runtime/. */
#ifndef FERRY_PORT_INT_H
#define FERRY_PORT_INT_H

#include "ferry/atomic.h"
#include "ferry/port.h"
#include "ferry/ring.h"
#include "ferry/seg.h"

#include <stdalign.h>
#include <stdint.h>

#define FERRY_CHAN_MAGIC 0x6672796368616e31ull /* "frychan1" */
#define FERRY_CHAN_VERSION 1u

/*
 * The channel segment: this header on its own page, then ring[0] (side 0
 * posts, side 1 receives) and ring[1] (the other way). Offsets, never
 * pointers. Each direction's eventcounts share a line: the producer notifies
 * data_ec and waits on space_ec; the consumer the reverse.
 */
struct chan_dir {
	alignas(64) struct ferry_ec data_ec; /* "a record was committed" */
	struct ferry_ec space_ec;            /* "a record was released" */
};

struct chan_hdr {
	uint64_t magic;
	uint32_t version;
	uint32_t pad;
	uint64_t seg_size;
	uint64_t ring_off[2];
	uint64_t ring_size[2];
	struct chan_dir dir[2];
};

/* Every record starts with this; the payload follows. */
struct wire_hdr {
	uint32_t kind; /* enum wire_kind */
	uint32_t aux;
};

enum wire_kind {
	WIRE_RAW = 1, /* plain bytes */
};

/* Drop this process's copy of @port without closing the channel: used after
 * fork on the port that belongs to the other process. */
void ferry__port_forget(ferry_port *port);

/* In a freshly forked child: close the control sockets of every port of the
 * process but @keep (NULL: all), so that only the ports the child was given
 * keep their peers' liveness tied to this process. */
void ferry__port_keep_only(ferry_port *keep);

/* The control socket of @port (for liveness and fd passing). */
int ferry__port_sock(const ferry_port *port);

#endif
