/* shm/buf_int.h - internal: what ports/ needs to move buffers. */
#ifndef FERRY_BUF_INT_H
#define FERRY_BUF_INT_H

#include "ferry/buf.h"
#include "ferry/seg.h"

#include <stdatomic.h>
#include <stdint.h>

/* The segment behind @buf, or NULL when its bytes live on the heap. */
ferry_seg *ferry__buf_seg(const ferry_buf *buf);

/* Detach @buf: its memory is released (the segment reference dropped), its
 * handle stays valid and reports FERRY_EDETACHED. */
void ferry__buf_detach(ferry_buf *buf);

/* A new handle over @seg (taking the caller's reference), @len bytes of it. */
int ferry__buf_from_seg(ferry_buf **out, ferry_seg *seg, size_t len, int shared);

/* A new handle to the shared segment behind @fd (consumed), of @len bytes:
 * the mapping this process already has of the same memfd (found by inode)
 * when there is one, else a new one (the fd checked as ferry_seg_import
 * does). */
int ferry__buf_import_shared(ferry_buf **out, int fd, size_t len);

/* A new plain buffer on the heap holding a copy of @len bytes at @data. */
int ferry__buf_from_bytes(ferry_buf **out, const void *data, size_t len);

/* A new plain handle over @len bytes at @data inside @seg (taking the
 * caller's reference); the bytes need not start the segment. @hold: NULL, or
 * a count in @seg the caller raised for this buffer: the buffer lowers it
 * (release) when it lets go of the bytes (freed, detached, moved on). */
int ferry__buf_from_seg_at(ferry_buf **out, ferry_seg *seg, void *data, size_t len,
			   _Atomic uint32_t *hold);

#endif
