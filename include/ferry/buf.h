/**
 * @file
 * @brief Buffers: the ArrayBuffer and SharedArrayBuffer of ferry.
 *
 * A plain buffer (ArrayBuffer) referenced by a posted value is cloned: the
 * receiver gets a copy. Listed in the message's transfer list it moves
 * instead: the sender's handle is detached (length 0, data NULL, every
 * operation FERRY_EDETACHED) and the receiver gets the very same pages. A
 * buffer created with FERRY_BUF_SEG_MIN bytes or more lives in a sealed
 * memfd segment of its own, so moving it to another process costs an fd and
 * a mapping, whatever its size; a smaller one is copied under the hood,
 * which a move cannot tell from zero-copy. A buffer that arrived as a clone
 * lives on the heap (it was copied once on the way already); moving it on
 * copies it once more.
 *
 * A shared buffer (FERRY_BUF_SHARED, SharedArrayBuffer) is never copied: every
 * message that references it gives the receiver a new handle to the same
 * pages, and the memory lives until the last handle in any process is freed.
 * ferry_wait/ferry_notify work on its 32-bit words across threads and
 * processes. A shared buffer cannot be transferred (it is already shared).
 *
 * Threads: a handle is used by one thread at a time; different handles to
 * one shared buffer may be used at once (the bytes are the program's to
 * synchronise, e.g. with atomics and ferry_wait/notify).
 */
#ifndef FERRY_BUF_H
#define FERRY_BUF_H

#include "ferry/common.h"

#ifdef __cplusplus
extern "C" {
#endif

/** A buffer handle (opaque): a plain buffer or a handle to a shared one. */
typedef struct ferry_buf ferry_buf;

#define FERRY_BUF_SHARED 1u /**< a SharedArrayBuffer: shared, never copied */

/** Plain buffers this large or larger get a memfd segment of their own. */
#define FERRY_BUF_SEG_MIN ((size_t)64 * 1024)
/** The largest buffer (1 TiB). */
#define FERRY_BUF_MAX ((size_t)1 << 40)

/**
 * A zero-filled buffer of @p len bytes (0 allowed).
 *
 * @param out receives the buffer.
 * @param len its length in bytes.
 * @param flags 0 or FERRY_BUF_SHARED.
 * @par Ownership
 *   on success *out is the caller's (ferry_buf_free); on failure NULL.
 * @return 0, -EINVAL (NULL out, unknown flags, len above FERRY_BUF_MAX),
 *   -ENOMEM, -ENOSPC, -EMFILE.
 */
FERRY_API int ferry_buf_create(ferry_buf **out, size_t len, unsigned flags);

/** The bytes (writable; never NULL unless detached). NULL @p buf gives NULL. */
FERRY_API void *ferry_buf_data(const ferry_buf *buf);
/** The length in bytes (0 when detached). NULL @p buf gives 0. */
FERRY_API size_t ferry_buf_len(const ferry_buf *buf);

/** Whether @p buf is shared.
 * @return 1 if shared, 0 if not, -EINVAL for NULL. */
FERRY_API int ferry_buf_is_shared(const ferry_buf *buf);
/** Whether @p buf is detached (transferred away).
 * @return 1 if detached, 0 if not, -EINVAL for NULL. */
FERRY_API int ferry_buf_is_detached(const ferry_buf *buf);

/**
 * Another handle to the same shared buffer (in this process).
 *
 * @param buf a shared buffer.
 * @param out receives the new handle (the caller's: ferry_buf_free).
 * @return 0, -EINVAL (NULL, not shared), FERRY_EDETACHED, -ENOMEM.
 */
FERRY_API int ferry_buf_share(ferry_buf *buf, ferry_buf **out);

/** Free the handle (a shared buffer's memory goes with its last handle).
 * NULL ok; a detached handle is freed too. */
FERRY_API void ferry_buf_free(ferry_buf *buf);

#ifdef __cplusplus
}
#endif
#endif /* FERRY_BUF_H */
