/**
 * @file
 * @brief Shared memory segments and fd passing.
 *
 * A segment is an anonymous memfd, reserved up front with fallocate (a full
 * memory cgroup fails the create with -ENOSPC instead of a SIGBUS later) and
 * sealed against shrink and grow, so no peer can truncate it under another's
 * mapping. Nothing is ever created in /dev/shm: when the last fd and mapping
 * go away, the memory goes with them, crash or not.
 *
 * Threads share one mapping; a forked child inherits it; an unrelated process
 * gets the fd over a unix socket (ferry_fds_send) and maps it with
 * ferry_seg_import, which checks the fd's type, seals and size first.
 *
 * Segments are reference counted: ferry_seg_ref/unref are thread-safe; the
 * mapping and fd are released with the last reference.
 */
#ifndef FERRY_SEG_H
#define FERRY_SEG_H

#include "ferry/common.h"

#ifdef __cplusplus
extern "C" {
#endif

/** A mapped shared memory segment (opaque, reference counted). */
typedef struct ferry_seg ferry_seg;

/** Largest segment ferry_seg_create accepts (1 TiB). */
#define FERRY_SEG_MAX ((size_t)1 << 40)

/**
 * A new sealed memfd segment, zero-filled, mapped read-write.
 *
 * @param out receives the segment.
 * @param size its size in bytes.
 * @param name labels the memfd in /proc (NULL = "ferry").
 * @par Ownership
 *   on success *out holds one reference; on failure *out is NULL.
 * @return 0, -EINVAL (NULL out, size 0 or above FERRY_SEG_MAX), -ENOSPC
 *   (memory could not be reserved), -EMFILE, -ENOMEM.
 */
FERRY_API int ferry_seg_create(ferry_seg **out, size_t size, const char *name);

/**
 * Map a segment received from a peer.
 *
 * Checks before mapping: @p fd is a regular memfd, sealed against shrink and
 * grow, of at least @p min_size bytes.
 * @param out receives the segment.
 * @param fd the segment's fd.
 * @param min_size the least size accepted (0 = any non-empty size).
 * @par Ownership
 *   @p fd is consumed either way: on success the segment owns it; on
 *   failure it is closed. On failure *out is NULL.
 * @return 0, -EINVAL (bad arguments), -EBADF, -EBADMSG (not a memfd, not
 *   sealed, sealed against writes, not open read-write, empty or too small:
 *   the message says which), -ENOMEM.
 */
FERRY_API int ferry_seg_import(ferry_seg **out, int fd, size_t min_size);

/** The segment's mapping. */
FERRY_API void *ferry_seg_data(const ferry_seg *seg);
/** The segment's size in bytes. */
FERRY_API size_t ferry_seg_size(const ferry_seg *seg);
/** The segment's fd (owned by the segment; dup it to keep it). */
FERRY_API int ferry_seg_fd(const ferry_seg *seg);

/** One more reference.
 * @return @p seg. */
FERRY_API ferry_seg *ferry_seg_ref(ferry_seg *seg);
/** Drop a reference; the last one unmaps and closes. NULL ok. */
FERRY_API void ferry_seg_unref(ferry_seg *seg);

/*
 * fd passing over a unix stream or seqpacket socket.
 *
 * Both ends must use these calls: each message goes out as an 8-byte frame
 * (magic, header length, fd count) followed by the header, so a receiver can
 * check length and fd count on a stream too and skip a mismatched message
 * whole. If a timeout cuts a stream message in the middle, either call
 * returns -EPROTO: the stream has lost its place and should be closed.
 */

/** Most fds one ferry_fds_send carries. */
#define FERRY_FDS_MAX 16

/**
 * Send a header with fds attached as one SCM_RIGHTS message.
 *
 * Both ends must use ferry_fds_send / ferry_fds_recv: each message goes out
 * as an 8-byte frame (magic, header length, fd count) followed by the header,
 * so a receiver can check length and fd count on a stream too and skip a
 * mismatched message whole. If a timeout cuts a stream message in the
 * middle, either call returns -EPROTO: the stream has lost its place and
 * should be closed.
 * @param sock a unix stream or seqpacket socket.
 * @param hdr the header bytes.
 * @param len header length, 1..4096.
 * @param fds the fds to send; they stay the caller's.
 * @param nfds how many (0..FERRY_FDS_MAX).
 * @param timeout_ns how long to wait for socket space.
 * @return 0, -EINVAL, -EBADF (@p sock or one of @p fds not open), -EPIPE (peer
 *   gone), -ETIMEDOUT, -EAGAIN (timeout 0), -EPROTO (stream cut mid-message).
 */
FERRY_API int ferry_fds_send(int sock, const void *hdr, size_t len,
			     const int *fds, unsigned nfds, int64_t timeout_ns);

/**
 * Receive one message sent by ferry_fds_send.
 *
 * @param sock a unix stream or seqpacket socket.
 * @param hdr receives exactly @p len header bytes.
 * @param len the header length expected.
 * @param fds receives up to @p max_fds fds (O_CLOEXEC).
 * @param max_fds room at @p fds.
 * @param nfds receives the number of fds.
 * @param timeout_ns how long to wait.
 * @par Ownership
 *   on success the caller owns the received fds. On any failure every fd
 *   that arrived is closed and *nfds is 0.
 * @return 0, -EINVAL, -EBADF, -EPIPE (peer closed), -ETIMEDOUT, -EAGAIN
 *   (timeout 0), -EBADMSG (short or long header, more fds than @p max_fds,
 *   truncated or unexpected control data, not a ferry message), -EPROTO
 *   (stream cut mid-message).
 */
FERRY_API int ferry_fds_recv(int sock, void *hdr, size_t len, int *fds,
			     unsigned max_fds, unsigned *nfds, int64_t timeout_ns);

#ifdef __cplusplus
}
#endif
#endif /* FERRY_SEG_H */
