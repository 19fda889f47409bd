/* Buffers: heap bytes for small plain ones, a memfd segment otherwise. */
#include "shm/buf_int.h"
#include "shm/err.h"

#include <errno.h>
#include <stdlib.h>
#include <string.h>

struct ferry_buf {
	void *data;     /* NULL when detached */
	size_t len;
	ferry_seg *seg; /* NULL: data is malloc'd (or the static empty byte) */
	int shared;
	int detached;
};

/* Zero-length plain buffers point here, so data is never NULL while attached. */
static char empty_bytes[1];

static ferry_buf *handle_new(void)
{
	ferry_buf *b = calloc(1, sizeof *b);
	if (!b)
		ferry__fail(-ENOMEM, "ferry_buf: out of memory for a handle");
	return b;
}

FERRY_API int ferry_buf_create(ferry_buf **out, size_t len, unsigned flags)
{
	if (out)
		*out = NULL;
	if (!out)
		return ferry__fail(-EINVAL, "ferry_buf_create: out is NULL");
	if (flags & ~FERRY_BUF_SHARED)
		return ferry__fail(-EINVAL, "ferry_buf_create: unknown flags 0x%x", flags);
	if (len > FERRY_BUF_MAX)
		return ferry__fail(-EINVAL, "ferry_buf_create: len %zu above FERRY_BUF_MAX", len);
	int shared = !!(flags & FERRY_BUF_SHARED);
	if (shared || len >= FERRY_BUF_SEG_MIN) {
		ferry_seg *seg;
		/* A zero-length shared buffer still needs a segment to share. */
		int rc = ferry_seg_create(&seg, len ? len : 1, shared ? "ferry-shared" : "ferry-buf");
		if (rc)
			return rc;
		rc = ferry__buf_from_seg(out, seg, len, shared);
		if (rc)
			ferry_seg_unref(seg);
		return rc;
	}
	ferry_buf *b = handle_new();
	if (!b)
		return -ENOMEM;
	b->data = len ? calloc(1, len) : empty_bytes;
	if (!b->data) {
		free(b);
		return ferry__fail(-ENOMEM, "ferry_buf_create: out of memory for %zu bytes", len);
	}
	b->len = len;
	*out = b;
	return 0;
}

int ferry__buf_from_seg(ferry_buf **out, ferry_seg *seg, size_t len, int shared)
{
	ferry_buf *b = handle_new();
	if (!b)
		return -ENOMEM;
	b->seg = seg;
	b->data = ferry_seg_data(seg);
	b->len = len;
	b->shared = shared;
	*out = b;
	return 0;
}

int ferry__buf_from_bytes(ferry_buf **out, const void *data, size_t len)
{
	/* On the heap whatever the size: a clone arriving is copied once anyway,
	 * and heap memory the allocator reuses is warm, a fresh segment is not. */
	ferry_buf *b = handle_new();
	if (!b)
		return -ENOMEM;
	b->data = len ? malloc(len) : empty_bytes;
	if (!b->data) {
		free(b);
		return ferry__fail(-ENOMEM, "ferry_port_recv: out of memory for a %zu-byte buffer", len);
	}
	if (len)
		memcpy(b->data, data, len);
	b->len = len;
	*out = b;
	return 0;
}

FERRY_API void *ferry_buf_data(const ferry_buf *b)
{
	return b ? b->data : NULL;
}

FERRY_API size_t ferry_buf_len(const ferry_buf *b)
{
	return b ? b->len : 0;
}

FERRY_API int ferry_buf_is_shared(const ferry_buf *b)
{
	if (!b)
		return ferry__fail(-EINVAL, "ferry_buf_is_shared: buf is NULL");
	return b->shared;
}

FERRY_API int ferry_buf_is_detached(const ferry_buf *b)
{
	if (!b)
		return ferry__fail(-EINVAL, "ferry_buf_is_detached: buf is NULL");
	return b->detached;
}

FERRY_API int ferry_buf_share(ferry_buf *b, ferry_buf **out)
{
	if (out)
		*out = NULL;
	if (!b || !out)
		return ferry__fail(-EINVAL, "ferry_buf_share: %s is NULL", !b ? "buf" : "out");
	if (b->detached)
		return ferry__fail(FERRY_EDETACHED, "ferry_buf_share: the buffer is detached");
	if (!b->shared)
		return ferry__fail(-EINVAL, "ferry_buf_share: not a shared buffer");
	int rc = ferry__buf_from_seg(out, ferry_seg_ref(b->seg), b->len, 1);
	if (rc)
		ferry_seg_unref(b->seg);
	return rc;
}

ferry_seg *ferry__buf_seg(const ferry_buf *b)
{
	return b->seg;
}

void ferry__buf_detach(ferry_buf *b)
{
	if (b->detached)
		return;
	if (b->seg)
		ferry_seg_unref(b->seg);
	else if (b->data != empty_bytes)
		free(b->data);
	b->seg = NULL;
	b->data = NULL;
	b->len = 0;
	b->detached = 1;
}

FERRY_API void ferry_buf_free(ferry_buf *b)
{
	if (!b)
		return;
	ferry__buf_detach(b);
	free(b);
}
