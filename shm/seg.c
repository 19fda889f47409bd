/*
 * Sealed memfd segments.
 *
 * A segment's life: memfd_create, ftruncate to its final size, fallocate the
 * whole range, seal shrink/grow/seal, map MAP_SHARED. Once sealed the size can
 * never change again, which is what lets an importer trust a size it reads
 * after checking the seals: nobody can truncate the file under a mapping and
 * turn a peer's load into a SIGBUS.
 */
#include "ferry/seg.h"
#include "shm/err.h"
#include "shm/seg_int.h"

#include <errno.h>
#include <fcntl.h>
#include <limits.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <unistd.h>

/* Newer than some libc headers; the values are the kernel ABI. */
#ifndef MFD_NOEXEC_SEAL
#define MFD_NOEXEC_SEAL 0x0008U
#endif
#ifndef F_SEAL_FUTURE_WRITE
#define F_SEAL_FUTURE_WRITE 0x0010
#endif
#ifndef MADV_POPULATE_WRITE
#define MADV_POPULATE_WRITE 23
#endif

/* memfd names are at most NAME_MAX minus the "memfd:" prefix. */
#define MEMFD_NAME_MAX (NAME_MAX - 6)

struct ferry_seg {
	atomic_uint refs;
	int fd;
	size_t size;
	void *data;
};

static int seg_wrap(ferry_seg **out, int fd, void *data, size_t size)
{
	ferry_seg *s = malloc(sizeof(*s));
	if (!s)
		return -ENOMEM;
	atomic_init(&s->refs, 1);
	s->fd = fd;
	s->size = size;
	s->data = data;
	*out = s;
	return 0;
}

/*
 * Make every page of the segment exist now, so a full memory cgroup (or a
 * system out of memory) fails the create instead of killing a later store
 * with SIGBUS. fallocate on a memfd (shmem) allocates and charges the pages;
 * when the cgroup cannot give them it fails with ENOMEM (or ENOSPC under
 * strict overcommit), which we report as -ENOSPC: "could not reserve".
 * Note: a cgroup whose OOM killer is enabled may instead kill a task right
 * away; that too happens here, at create time, never later.
 */
static int reserve(int fd, size_t size, const char *label)
{
	int r;
	do
		r = fallocate(fd, 0, 0, (off_t)size);
	while (r < 0 && errno == EINTR); /* idempotent over the range: retry */
	if (r == 0)
		return 0;
	int e = errno;
	if (e == EOPNOTSUPP || e == ENOSYS)
		return 1; /* caller falls back to populating the mapping */
	if (e == ENOMEM || e == ENOSPC)
		return ferry__fail(-ENOSPC, "ferry_seg_create: cannot reserve %zu bytes for \"%s\" "
				   "(fallocate: %s); the memory cgroup or the system is out of memory",
				   size, label, ferry_strerror(-e));
	return ferry__errno(-e, "ferry_seg_create: fallocate(%zu bytes) of \"%s\"", size, label);
}

/*
 * Fallback when memfds lack fallocate (EOPNOTSUPP: some sandboxed or
 * emulated kernels): prefault the mapping writable instead.
 * MADV_POPULATE_WRITE (5.14) reports an allocation failure as an error
 * instead of a signal. On kernels without it (EINVAL) the segment stays
 * unreserved: its pages are allocated on first touch and a store may then
 * meet SIGBUS if memory runs out. We accept that rather than refuse to work
 * at all.
 */
static int populate(void *data, size_t size, const char *label)
{
	int r;
	do
		r = madvise(data, size, MADV_POPULATE_WRITE);
	while (r < 0 && errno == EINTR);
	int e = errno;
	if (r == 0 || e == EINVAL)
		return 0;
	if (e == ENOMEM || e == EFAULT)
		return ferry__fail(-ENOSPC, "ferry_seg_create: cannot reserve %zu bytes for \"%s\" "
				   "(populate: %s)", size, label, ferry_strerror(-e));
	return ferry__errno(-e, "ferry_seg_create: madvise(MADV_POPULATE_WRITE) of \"%s\"", label);
}

FERRY_API int ferry_seg_create(ferry_seg **out, size_t size, const char *name)
{
	if (!out)
		return ferry__fail(-EINVAL, "ferry_seg_create: out is NULL");
	*out = NULL;
	if (size == 0)
		return ferry__fail(-EINVAL, "ferry_seg_create: size 0: a segment needs at least one byte");
	if (size > FERRY_SEG_MAX)
		return ferry__fail(-EINVAL, "ferry_seg_create: size %zu is above FERRY_SEG_MAX (%zu)",
				   size, FERRY_SEG_MAX);

	/* The name is only a label in /proc: cut it rather than fail on it. */
	char label[MEMFD_NAME_MAX + 1];
	snprintf(label, sizeof(label), "%s", name ? name : "ferry");

	/*
	 * MFD_NOEXEC_SEAL (6.3) makes the segment non-executable for good: shared
	 * data must never become a program a peer can execveat. Older kernels
	 * reject the flag with EINVAL; they also have no exec bits to worry about
	 * beyond the usual, so retry without it.
	 */
	int fd = memfd_create(label, MFD_CLOEXEC | MFD_ALLOW_SEALING | MFD_NOEXEC_SEAL);
	if (fd < 0 && errno == EINVAL)
		fd = memfd_create(label, MFD_CLOEXEC | MFD_ALLOW_SEALING);
	if (fd < 0)
		return ferry__errno(-errno, "ferry_seg_create: memfd_create(\"%s\")", label);

	int rc, prefault = 0;
	void *data = MAP_FAILED;
	if (ftruncate(fd, (off_t)size) < 0) {
		rc = ferry__errno(-errno, "ferry_seg_create: ftruncate(\"%s\", %zu)", label, size);
		goto fail;
	}
	rc = reserve(fd, size, label);
	if (rc < 0)
		goto fail;
	prefault = rc;
	if (fcntl(fd, F_ADD_SEALS, F_SEAL_SHRINK | F_SEAL_GROW | F_SEAL_SEAL) < 0) {
		rc = ferry__errno(-errno, "ferry_seg_create: F_ADD_SEALS on \"%s\"", label);
		goto fail;
	}
	data = mmap(NULL, size, PROT_READ | PROT_WRITE, MAP_SHARED, fd, 0);
	if (data == MAP_FAILED) {
		rc = ferry__errno(-errno, "ferry_seg_create: mmap(%zu bytes) of \"%s\"", size, label);
		goto fail;
	}
	if (prefault) {
		rc = populate(data, size, label);
		if (rc < 0)
			goto fail;
	}
	rc = seg_wrap(out, fd, data, size);
	if (rc < 0) {
		ferry__fail(rc, "ferry_seg_create: out of memory for the segment handle");
		goto fail;
	}
	return 0;
fail:
	if (data != MAP_FAILED)
		munmap(data, size);
	close(fd);
	return rc;
}

/* What an fd is, for a message, from its stat mode. */
static const char *kind_of(mode_t mode)
{
	switch (mode & S_IFMT) {
	case S_IFIFO:
		return "pipe";
	case S_IFSOCK:
		return "socket";
	case S_IFDIR:
		return "directory";
	case S_IFCHR:
		return "character device";
	case S_IFBLK:
		return "block device";
	case S_IFLNK:
		return "symbolic link";
	case S_IFREG:
		return "regular file";
	}
	return "special file";
}

/* The fd's target as /proc shows it ("/dev/zero", "pipe:[123]"); "" if unknown. */
static void fd_path(int fd, char *buf, size_t cap)
{
	char link[32];
	snprintf(link, sizeof(link), "/proc/self/fd/%d", fd);
	ssize_t n = readlink(link, buf, cap - 1);
	buf[n > 0 ? (size_t)n : 0] = '\0';
}

/* Checks an imported fd; on failure the message names fd and reason. */
static int check_import(int fd, size_t min_size, size_t *size)
{
	char path[128];
	struct stat st;
	if (fstat(fd, &st) < 0)
		return ferry__errno(-errno, "ferry_seg_import: fstat(fd %d)", fd);
	if (!S_ISREG(st.st_mode)) {
		fd_path(fd, path, sizeof(path));
		return ferry__fail(-EBADMSG, "ferry_seg_import: fd %d is a %s%s%s%s, not a memfd", fd,
				   kind_of(st.st_mode), path[0] ? " (" : "", path, path[0] ? ")" : "");
	}
	int seals = fcntl(fd, F_GET_SEALS);
	if (seals < 0) {
		int e = errno;
		fd_path(fd, path, sizeof(path));
		if (e == EINVAL)
			return ferry__fail(-EBADMSG, "ferry_seg_import: fd %d (%s) is a regular file "
					   "that cannot be sealed, not a memfd", fd, path);
		return ferry__errno(-e, "ferry_seg_import: F_GET_SEALS on fd %d (%s)", fd, path);
	}
	if ((seals & (F_SEAL_SHRINK | F_SEAL_GROW)) != (F_SEAL_SHRINK | F_SEAL_GROW))
		return ferry__fail(-EBADMSG, "ferry_seg_import: fd %d is not sealed against shrink "
				   "and grow (seals 0x%x): a peer could truncate it under the mapping",
				   fd, (unsigned)seals);
	if (seals & (F_SEAL_WRITE | F_SEAL_FUTURE_WRITE))
		return ferry__fail(-EBADMSG, "ferry_seg_import: fd %d is sealed against writes "
				   "(seals 0x%x); segments are mapped read-write", fd, (unsigned)seals);
	int fl = fcntl(fd, F_GETFL);
	if (fl < 0)
		return ferry__errno(-errno, "ferry_seg_import: F_GETFL on fd %d", fd);
	if ((fl & O_ACCMODE) != O_RDWR)
		return ferry__fail(-EBADMSG, "ferry_seg_import: fd %d is not open read-write; "
				   "segments are mapped read-write", fd);
	/*
	 * Read the size only now that shrink and grow are known sealed: a size
	 * read before the seal check could be changed by the peer in between.
	 */
	if (fstat(fd, &st) < 0)
		return ferry__errno(-errno, "ferry_seg_import: fstat(fd %d)", fd);
	if (st.st_size <= 0)
		return ferry__fail(-EBADMSG, "ferry_seg_import: fd %d is empty", fd);
	if ((uint64_t)st.st_size > FERRY_SEG_MAX)
		return ferry__fail(-EBADMSG, "ferry_seg_import: fd %d holds %lld bytes, above "
				   "FERRY_SEG_MAX", fd, (long long)st.st_size);
	if ((uint64_t)st.st_size < min_size)
		return ferry__fail(-EBADMSG, "ferry_seg_import: fd %d holds %lld bytes, fewer than "
				   "the %zu expected", fd, (long long)st.st_size, min_size);
	*size = (size_t)st.st_size;
	return 0;
}

FERRY_API int ferry_seg_import(ferry_seg **out, int fd, size_t min_size)
{
	if (out)
		*out = NULL;
	if (fd < 0)
		return ferry__fail(-EBADF, "ferry_seg_import: fd %d is not a file descriptor", fd);
	if (!out) {
		close(fd);
		return ferry__fail(-EINVAL, "ferry_seg_import: out is NULL (fd %d closed)", fd);
	}

	size_t size = 0;
	int rc = check_import(fd, min_size, &size);
	if (rc < 0) {
		/* A closed number must not be closed again: it may be reused by now. */
		if (rc != -EBADF)
			close(fd);
		return rc;
	}
	/*
	 * The segment owns the fd from here on; like the fds we create, it must
	 * not leak into programs this process execs. (fds from ferry_fds_recv
	 * already are close-on-exec; inherited ones may not be.)
	 */
	int fdfl = fcntl(fd, F_GETFD);
	if (fdfl >= 0 && !(fdfl & FD_CLOEXEC))
		fcntl(fd, F_SETFD, fdfl | FD_CLOEXEC);

	void *data = mmap(NULL, size, PROT_READ | PROT_WRITE, MAP_SHARED, fd, 0);
	if (data == MAP_FAILED) {
		rc = ferry__errno(-errno, "ferry_seg_import: mmap(%zu bytes) of fd %d", size, fd);
		close(fd);
		return rc;
	}
	rc = seg_wrap(out, fd, data, size);
	if (rc < 0) {
		munmap(data, size);
		close(fd);
		return ferry__fail(rc, "ferry_seg_import: out of memory for the segment handle");
	}
	return 0;
}

FERRY_API void *ferry_seg_data(const ferry_seg *seg)
{
	return seg ? seg->data : NULL;
}

FERRY_API size_t ferry_seg_size(const ferry_seg *seg)
{
	return seg ? seg->size : 0;
}

FERRY_API int ferry_seg_fd(const ferry_seg *seg)
{
	return seg ? seg->fd : ferry__fail(-EINVAL, "ferry_seg_fd: seg is NULL");
}

FERRY_API ferry_seg *ferry_seg_ref(ferry_seg *seg)
{
	/*
	 * Relaxed: the caller already holds a reference, so the count cannot
	 * reach zero concurrently, and taking a reference publishes nothing.
	 */
	if (seg)
		atomic_fetch_add_explicit(&seg->refs, 1, memory_order_relaxed);
	return seg;
}

FERRY_API void ferry_seg_unref(ferry_seg *seg)
{
	if (!seg)
		return;
	/*
	 * acq_rel: the release half orders this thread's stores to the segment
	 * (and its handle) before the decrement; the acquire half, which only
	 * matters for the thread that drops the last reference, pairs with every
	 * other holder's release so the unmap and free come after they are done.
	 * (An acquire fence after a release decrement is equivalent, but
	 * ThreadSanitizer does not model standalone fences.)
	 */
	if (atomic_fetch_sub_explicit(&seg->refs, 1, memory_order_acq_rel) != 1)
		return;
	munmap(seg->data, seg->size);
	close(seg->fd);
	free(seg);
}

/* Added for ports/msg.c (spill segments handed to a receiver in this
 * process): how many references @seg has. acquire: pairs with the acq_rel
 * decrement of ferry_seg_unref, so a holder's writes to the segment come
 * before whatever the caller does once it sees the count drop. */
unsigned ferry__seg_refs(const ferry_seg *seg)
{
	return atomic_load_explicit(&((ferry_seg *)seg)->refs, memory_order_acquire);
}
