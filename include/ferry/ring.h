/*
 * ferry/ring.h - lock-free rings placed in caller memory.
 *
 * SPSC ring of variable-length records. One producer and one consumer, which
 * may be threads of one process or two processes mapping the same memory at
 * different addresses (the ring holds offsets, never pointers).
 *
 *     size_t n = ferry_ring_spsc_memsize(64 * 1024);
 *     ferry_ring_spsc *r = mem;                      // n bytes, 64-byte aligned
 *     ferry_ring_spsc_init(r, n);
 *
 *   producer:                          consumer:
 *     void *p;                           const void *p; size_t len;
 *     ferry_ring_spsc_reserve(r, 100, &p); ferry_ring_spsc_peek(r, &p, &len);
 *     ... write up to 100 bytes ...      ... read len bytes in place ...
 *     ferry_ring_spsc_commit(r, 80);     ferry_ring_spsc_release(r);
 *
 * A record is written and read in place; reserve may ask for more than it
 * commits. Records are 8-byte aligned; a record never wraps (the producer
 * pads to the end of the buffer instead), so the largest record is a bit
 * under half the capacity (ferry_ring_spsc_max_record).
 *
 * Invariants: head <= tail <= head + capacity, as free-running 64-bit byte
 * positions. The producer alone writes tail (release, pairs with the
 * consumer's acquire load in peek) and the consumer alone writes head
 * (release, pairs with the producer's acquire load in reserve). Each side
 * caches the other's index and reloads it only when the cache says full or
 * empty. Hot words sit on separate cache lines.
 *
 * The consumer treats the memory as hostile: every length and index it reads
 * is validated, and a corrupt header or record gives -EPROTO (and closes the
 * ring), never an out-of-bounds read.
 */
#ifndef FERRY_RING_H
#define FERRY_RING_H

#include "ferry/common.h"

#ifdef __cplusplus
extern "C" {
#endif

typedef struct ferry_ring_spsc ferry_ring_spsc;

/* Capacity bounds in bytes (a power of two in between). */
#define FERRY_RING_SPSC_MIN_CAP 256u
#define FERRY_RING_SPSC_MAX_CAP (1u << 30)
/* Bytes of header before the data: memsize(cap) == FERRY_RING_SPSC_HDR_SIZE + cap. */
#define FERRY_RING_SPSC_HDR_SIZE 256u

/*
 * ferry_ring_spsc_memsize - bytes of memory a ring with @capacity data bytes
 * needs (header included). Returns 0 if @capacity is not a power of two
 * within [FERRY_RING_SPSC_MIN_CAP, FERRY_RING_SPSC_MAX_CAP].
 */
FERRY_API size_t ferry_ring_spsc_memsize(size_t capacity);

/*
 * ferry_ring_spsc_init - lay out an empty ring in @mem, which has @memsize
 * bytes (the capacity is the largest power of two that fits) and is 64-byte
 * aligned. Returns: 0, -EINVAL (NULL, misaligned, too small).
 */
FERRY_API int ferry_ring_spsc_init(ferry_ring_spsc *r, size_t memsize);

/*
 * ferry_ring_spsc_check - validate a ring someone else laid out in @memsize
 * bytes at @r (magic, version, capacity against @memsize, indices).
 * Returns: 0, -EPROTO (corrupt), FERRY_EVERSION (another layout version).
 */
FERRY_API int ferry_ring_spsc_check(const ferry_ring_spsc *r, size_t memsize);

/* Data capacity in bytes, and the largest record that can ever fit. */
FERRY_API size_t ferry_ring_spsc_capacity(const ferry_ring_spsc *r);
FERRY_API size_t ferry_ring_spsc_max_record(const ferry_ring_spsc *r);

/*
 * ferry_ring_spsc_reserve - producer: room for a record of up to @len bytes
 * (0 allowed). *@p points to it until commit. At most one reservation at a
 * time. Returns: 0, -EAGAIN (full now), -EMSGSIZE (@len above max_record),
 *   -EPIPE (closed), -EPROTO (corrupt), -EBUSY (already reserved).
 */
FERRY_API int ferry_ring_spsc_reserve(ferry_ring_spsc *r, size_t len, void **p);

/*
 * ferry_ring_spsc_commit - producer: publish the reserved record with its
 * final length @len (<= the reserved length). Returns 0, -EINVAL (no
 * reservation, @len too long).
 */
FERRY_API int ferry_ring_spsc_commit(ferry_ring_spsc *r, size_t len);

/*
 * ferry_ring_spsc_peek - consumer: the oldest record, in place, valid until
 * release. Returns: 0, -EAGAIN (empty), -EPIPE (empty and closed),
 *   -EPROTO (corrupt header or record: the ring is closed).
 */
FERRY_API int ferry_ring_spsc_peek(ferry_ring_spsc *r, const void **p, size_t *len);

/* ferry_ring_spsc_release - consumer: drop the record peek returned. */
FERRY_API void ferry_ring_spsc_release(ferry_ring_spsc *r);

/*
 * ferry_ring_spsc_close - either side: no more records. Records already
 * committed are still delivered; then peek reports -EPIPE. Reserve reports
 * -EPIPE at once. Idempotent.
 */
FERRY_API void ferry_ring_spsc_close(ferry_ring_spsc *r);
FERRY_API int ferry_ring_spsc_is_closed(const ferry_ring_spsc *r);

/* Bytes committed and not yet released (a snapshot). */
FERRY_API size_t ferry_ring_spsc_used(const ferry_ring_spsc *r);

#ifdef __cplusplus
}
#endif
#endif /* FERRY_RING_H */
