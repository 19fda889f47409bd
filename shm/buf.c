/* Buffers: heap bytes for small plain ones, a memfd segment otherwise. */
#include "shm/buf_int.h"
#include "shm/err.h"

#include <errno.h>
#include <stdatomic.h>
#include <pthread.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

/*
 * Shared segments this process maps, by inode: a shared buffer posted again
 * (or back to where it came from) finds its mapping here and costs an fd
 * pass, not an mmap, its page faults and an munmap. An entry lives while a
 * handle uses it: each handle holds its own segment reference and counts in
 * the entry; the last one to go removes the entry (under the lock, so a
 * lookup never sees a segment without a reference behind it). The inode
 * cannot be reused while we map it, and its seals fix its size.
 */
struct shared_ent {
	struct shared_ent *next;
	uint64_t dev, ino;
	ferry_seg *seg;   /* borrowed from the handles counted below */
	size_t handles;
};

static pthread_mutex_t shared_lock = PTHREAD_MUTEX_INITIALIZER;
static struct shared_ent *shared_list;
static pthread_once_t shared_once = PTHREAD_ONCE_INIT;

/* A child forked while another thread held the lock must not inherit it held. */
static void shared_prefork(void)
{
	pthread_mutex_lock(&shared_lock);
}

static void shared_postfork(void)
{
	pthread_mutex_unlock(&shared_lock);
}

static void shared_init(void)
{
	pthread_atfork(shared_prefork, shared_postfork, shared_postfork);
}

struct ferry_buf {
	void *data;     /* NULL when detached */
	size_t len;
	ferry_seg *seg; /* NULL: data is malloc'd (or the static empty byte) */
	struct shared_ent *ent; /* a shared buffer's entry in the inode cache */
	_Atomic uint32_t *hold; /* a count in @seg its sender reads (zero-copy receive) */
	pid_t hold_pid;         /* the process that counted itself in @hold */
	int inline_bytes; /* data sits in this allocation, after the handle */
	int shared;
	int detached;
};

/* Count @b in the entry of its segment (a new one if none): best effort, a
 * buffer outside the cache only costs a later mapping. */
static void shared_enter(ferry_buf *b)
{
	struct stat st;
	if (fstat(ferry_seg_fd(b->seg), &st) < 0)
		return;
	pthread_once(&shared_once, shared_init);
	pthread_mutex_lock(&shared_lock);
	struct shared_ent *e = shared_list;
	while (e && !(e->dev == (uint64_t)st.st_dev && e->ino == (uint64_t)st.st_ino))
		e = e->next;
	if (!e && (e = calloc(1, sizeof *e)) != NULL) {
		e->dev = (uint64_t)st.st_dev;
		e->ino = (uint64_t)st.st_ino;
		e->seg = b->seg;
		e->next = shared_list;
		shared_list = e;
	}
	if (e)
		e->handles++;
	b->ent = e;
	pthread_mutex_unlock(&shared_lock);
}

static void shared_leave(ferry_buf *b)
{
	struct shared_ent *e = b->ent;
	if (!e)
		return;
	b->ent = NULL;
	pthread_mutex_lock(&shared_lock);
	if (--e->handles == 0) {
		struct shared_ent **pp = &shared_list;
		while (*pp != e)
			pp = &(*pp)->next;
		*pp = e->next;
		free(e);
	}
	pthread_mutex_unlock(&shared_lock);
}

/* Zero-length plain buffers point here, so data is never NULL while attached. */
static char empty_bytes[1];

/* Largest buffer received into its handle's own allocation. */
#define INLINE_BYTES_MAX ((size_t)4096)
/* Where its bytes start: as aligned as malloc's own (16). */
#define INLINE_HDR ((sizeof(struct ferry_buf) + 15) & ~(size_t)15)

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
		else if (shared)
			shared_enter(*out);
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

int ferry__buf_import_shared(ferry_buf **out, int fd, size_t len)
{
	*out = NULL;
	size_t need = len ? len : 1;
	struct stat st;
	if (fd >= 0 && fstat(fd, &st) == 0) {
		pthread_once(&shared_once, shared_init);
		pthread_mutex_lock(&shared_lock);
		struct shared_ent *e = shared_list;
		while (e && !(e->dev == (uint64_t)st.st_dev && e->ino == (uint64_t)st.st_ino))
			e = e->next;
		if (e && ferry_seg_size(e->seg) >= need) {
			ferry_buf *b = handle_new();
			if (!b) {
				pthread_mutex_unlock(&shared_lock);
				close(fd);
				return -ENOMEM;
			}
			b->seg = ferry_seg_ref(e->seg);
			b->data = ferry_seg_data(e->seg);
			b->len = len;
			b->shared = 1;
			b->ent = e;
			e->handles++;
			pthread_mutex_unlock(&shared_lock);
			close(fd); /* the same memfd, mapped already */
			*out = b;
			return 0;
		}
		pthread_mutex_unlock(&shared_lock);
		/* Not mapped here, or too small for @len: the import checks and
		 * says what is wrong. */
	}
	ferry_seg *seg;
	int rc = ferry_seg_import(&seg, fd, need);
	if (rc)
		return rc;
	rc = ferry__buf_from_seg(out, seg, len, 1);
	if (rc) {
		ferry_seg_unref(seg);
		return rc;
	}
	shared_enter(*out);
	return 0;
}

int ferry__buf_from_bytes(ferry_buf **out, const void *data, size_t len)
{
	/* On the heap whatever the size: a clone arriving is copied once anyway,
	 * and heap memory the allocator reuses is warm, a fresh segment is not.
	 * A small one shares the handle's allocation (one malloc, not two). */
	if (len && len <= INLINE_BYTES_MAX) {
		ferry_buf *b = malloc(INLINE_HDR + len);
		if (!b)
			return ferry__fail(-ENOMEM, "ferry_port_recv: out of memory for a %zu-byte buffer",
					   len);
		memset(b, 0, sizeof *b);
		b->data = (unsigned char *)b + INLINE_HDR;
		b->inline_bytes = 1;
		memcpy(b->data, data, len);
		b->len = len;
		*out = b;
		return 0;
	}
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
	if (rc) {
		ferry_seg_unref(b->seg);
		return rc;
	}
	if (b->ent) {
		pthread_mutex_lock(&shared_lock);
		b->ent->handles++;
		(*out)->ent = b->ent;
		pthread_mutex_unlock(&shared_lock);
	}
	return 0;
}

ferry_seg *ferry__buf_seg(const ferry_buf *b)
{
	return b->seg;
}

void ferry__buf_detach(ferry_buf *b)
{
	if (b->detached)
		return;
	shared_leave(b);
	/* A child forked while the buffer lived has a copy of the handle, not
	 * a count of its own: only the process that counted takes it back (a
	 * child's free would otherwise let the sender reuse the pages under the
	 * parent's buffers). */
	if (b->hold && b->hold_pid == getpid())
		/* release: our reads of the bytes come before the sender's next
		 * writes (it acquires the count before it reuses the segment) */
		atomic_fetch_sub_explicit(b->hold, 1, memory_order_release);
	b->hold = NULL;
	if (b->seg)
		ferry_seg_unref(b->seg);
	else if (b->data != empty_bytes && !b->inline_bytes)
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

/* Added for ports/msg.c: a plain buffer of @len bytes at @data inside @seg
 * (taking the caller's reference), e.g. part of a spilled body handed over
 * in place. Its bytes need not start the segment, so a move of it must copy
 * (msg.c checks ferry_buf_data against ferry_seg_data). @hold: NULL, or a
 * count in @seg the caller has raised for this buffer, lowered when the
 * buffer lets go of the bytes. */
int ferry__buf_from_seg_at(ferry_buf **out, ferry_seg *seg, void *data, size_t len,
			   _Atomic uint32_t *hold)
{
	ferry_buf *b = handle_new();
	if (!b)
		return -ENOMEM;
	b->seg = seg;
	b->data = data;
	b->len = len;
	b->hold = hold;
	b->hold_pid = hold ? getpid() : 0;
	*out = b;
	return 0;
}
