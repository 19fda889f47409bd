/* shm/ring_int.h - internal: ring calls for ferry's own layers, not API. */
#ifndef FERRY_RING_INT_H
#define FERRY_RING_INT_H

#include "ferry/ring.h"

/*
 * Producer: drop the reservation open on @v without publishing anything.
 * A reserve writes nothing the consumer reads (the record header, and the
 * pad marker of a record that wraps, are written by the commit; tail moves
 * only then), so the ring is left exactly as before the reserve: bytes the
 * caller wrote into the reserved room lie past tail, unpublished, and the
 * next record overwrites them. Lets a producer write a record of unknown
 * length in place (ports/msg.c encodes a clone straight into the ring) and
 * still fail with the ring untouched. @return 0, -EINVAL (@v not set up,
 * or no reservation open).
 */
int ferry__ring_spsc_view_cancel(struct ferry_ring_spsc_view *v); /* shm/ring_int.c */

/*
 * Producer: where the next record of @len bytes would go, its framing
 * included (*@bytes long), if the room the view last saw holds it whole
 * there; NULL (and 0) if it may not (full as far as the view knows, a wrap,
 * too long, @v not set up). A hint for prefetching, not a reservation:
 * nothing is written or published. (shm/ring_spsc.c)
 */
void *ferry__ring_spsc_view_next(const struct ferry_ring_spsc_view *v, size_t len, size_t *bytes);

#endif
