/* Segments: create, seals, import checks, reference counting, sharing. */
#include "ferry/seg.h"
#include "util/util.h"

#include <criterion/criterion.h>
#include <errno.h>
#include <fcntl.h>
#include <mntent.h>
#include <pthread.h>
#include <signal.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <unistd.h>

TestSuite(seg, .timeout = 20);

/* Asserts @fd is no longer open (consumed by an import). */
static void expect_closed(int fd)
{
	errno = 0;
	cr_expect_eq(fcntl(fd, F_GETFD), -1, "fd %d is still open", fd);
	cr_expect_eq(errno, EBADF, "fd %d: %s", fd, strerror(errno));
}

static int child_status_ok(int st)
{
	return st != -1 && WIFEXITED(st) && WEXITSTATUS(st) == 0;
}

static void expect_child_ok(pid_t pid)
{
	int st = tu_wait(pid, 10000);
	cr_assert_neq(st, -1, "child timed out");
	cr_expect(WIFEXITED(st), "child died by signal %d", WIFSIGNALED(st) ? WTERMSIG(st) : 0);
	cr_expect(child_status_ok(st), "child failed at step %d", WEXITSTATUS(st));
}

Test(seg, create_gives_data_size_and_fd)
{
	struct tu_baseline b;
	tu_baseline_take(&b);
	ferry_seg *s = NULL;
	cr_assert_eq(ferry_seg_create(&s, 10000, "seg-test"), 0, "%s", ferry_errmsg());
	cr_assert_not_null(s);
	cr_expect_not_null(ferry_seg_data(s));
	cr_expect_eq(ferry_seg_size(s), 10000);
	int fd = ferry_seg_fd(s);
	cr_assert_geq(fd, 0);
	cr_expect(fcntl(fd, F_GETFD) & FD_CLOEXEC, "segment fd is not close-on-exec");
	struct stat st;
	cr_assert_eq(fstat(fd, &st), 0);
	cr_expect(S_ISREG(st.st_mode));
	cr_expect_eq(st.st_size, 10000);

	char link[64], target[256] = "";
	snprintf(link, sizeof(link), "/proc/self/fd/%d", fd);
	cr_assert_gt(readlink(link, target, sizeof(target) - 1), 0);
	cr_expect(strstr(target, "memfd:seg-test") != NULL, "fd points at %s", target);
	cr_expect_eq(tu_count_maps(), b.maps + 1, "one mapping per segment");

	ferry_seg_unref(s);
	tu_baseline_check(&b);
}

Test(seg, name_defaults_and_long_names_are_cut)
{
	struct tu_baseline b;
	tu_baseline_take(&b);
	ferry_seg *s;
	char link[64], target[512] = "";

	cr_assert_eq(ferry_seg_create(&s, 1, NULL), 0, "%s", ferry_errmsg());
	snprintf(link, sizeof(link), "/proc/self/fd/%d", ferry_seg_fd(s));
	cr_assert_gt(readlink(link, target, sizeof(target) - 1), 0);
	cr_expect(strstr(target, "memfd:ferry") != NULL, "fd points at %s", target);
	ferry_seg_unref(s);

	char name[400];
	memset(name, 'n', sizeof(name) - 1);
	name[sizeof(name) - 1] = '\0';
	cr_expect_eq(ferry_seg_create(&s, 1, name), 0, "%s", ferry_errmsg());
	ferry_seg_unref(s);
	tu_baseline_check(&b);
}

Test(seg, is_zero_filled)
{
	struct tu_baseline b;
	tu_baseline_take(&b);
	const size_t size = 3 * 4096 + 17; /* not a page multiple */
	ferry_seg *s;
	cr_assert_eq(ferry_seg_create(&s, size, "zero"), 0, "%s", ferry_errmsg());
	const unsigned char *p = ferry_seg_data(s);
	size_t nonzero = 0;
	for (size_t i = 0; i < size; i++)
		nonzero += p[i] != 0;
	cr_expect_eq(nonzero, 0, "%zu non-zero bytes", nonzero);
	ferry_seg_unref(s);
	tu_baseline_check(&b);
}

Test(seg, writes_are_visible_through_a_second_mapping)
{
	struct tu_baseline b;
	tu_baseline_take(&b);
	const size_t size = 2 * 4096;
	ferry_seg *s;
	cr_assert_eq(ferry_seg_create(&s, size, "twice"), 0, "%s", ferry_errmsg());
	unsigned char *a = ferry_seg_data(s);
	unsigned char *m = mmap(NULL, size, PROT_READ | PROT_WRITE, MAP_SHARED, ferry_seg_fd(s), 0);
	cr_assert_neq(m, MAP_FAILED, "%s", strerror(errno));
	cr_assert_neq(m, a);

	a[0] = 0x11;
	a[size - 1] = 0x22;
	cr_expect_eq(m[0], 0x11);
	cr_expect_eq(m[size - 1], 0x22);
	m[4096] = 0x33;
	cr_expect_eq(a[4096], 0x33);

	munmap(m, size);
	ferry_seg_unref(s);
	tu_baseline_check(&b);
}

Test(seg, is_sealed_against_resize)
{
	struct tu_baseline b;
	tu_baseline_take(&b);
	ferry_seg *s;
	cr_assert_eq(ferry_seg_create(&s, 8192, "sealed"), 0, "%s", ferry_errmsg());
	int fd = ferry_seg_fd(s);
	int seals = fcntl(fd, F_GET_SEALS);
	cr_assert_geq(seals, 0, "F_GET_SEALS: %s", strerror(errno));
	cr_expect_eq(seals & (F_SEAL_SHRINK | F_SEAL_GROW | F_SEAL_SEAL),
		     F_SEAL_SHRINK | F_SEAL_GROW | F_SEAL_SEAL, "seals 0x%x", seals);
	cr_expect_eq(seals & (F_SEAL_WRITE | F_SEAL_FUTURE_WRITE), 0, "must stay writable");

	errno = 0;
	cr_expect_eq(ftruncate(fd, 16384), -1, "grow allowed");
	cr_expect_eq(errno, EPERM, "grow: %s", strerror(errno));
	errno = 0;
	cr_expect_eq(ftruncate(fd, 4096), -1, "shrink allowed");
	cr_expect_eq(errno, EPERM, "shrink: %s", strerror(errno));
	errno = 0;
	cr_expect_eq(ftruncate(fd, 0), -1, "truncate to 0 allowed");
	cr_expect_eq(errno, EPERM);
	errno = 0;
	cr_expect_eq(fcntl(fd, F_ADD_SEALS, F_SEAL_WRITE), -1, "seals not sealed");
	cr_expect_eq(errno, EPERM);
	cr_expect_eq(ferry_seg_size(s), 8192);

	ferry_seg_unref(s);
	tu_baseline_check(&b);
}

Test(seg, create_rejects_bad_arguments)
{
	struct tu_baseline b;
	tu_baseline_take(&b);
	ferry_seg *s = (ferry_seg *)&b; /* must come back NULL */

	cr_expect_eq(ferry_seg_create(NULL, 4096, "x"), -EINVAL);
	cr_expect(strstr(ferry_errmsg(), "out") != NULL, "message: %s", ferry_errmsg());

	cr_expect_eq(ferry_seg_create(&s, 0, "x"), -EINVAL);
	cr_expect_null(s);
	cr_expect(strstr(ferry_errmsg(), "size 0") != NULL, "message: %s", ferry_errmsg());

	s = (ferry_seg *)&b;
	cr_expect_eq(ferry_seg_create(&s, FERRY_SEG_MAX + 1, "x"), -EINVAL);
	cr_expect_null(s);
	cr_expect(strstr(ferry_errmsg(), "size") != NULL, "message: %s", ferry_errmsg());

	cr_expect_eq(ferry_seg_create(&s, SIZE_MAX, "x"), -EINVAL);
	cr_expect(strstr(ferry_errmsg(), "FERRY_SEG_MAX") != NULL, "message: %s", ferry_errmsg());

	/* NULL handles are harmless. */
	ferry_seg_unref(NULL);
	cr_expect_null(ferry_seg_ref(NULL));
	cr_expect_null(ferry_seg_data(NULL));
	cr_expect_eq(ferry_seg_size(NULL), 0);
	cr_expect_lt(ferry_seg_fd(NULL), 0);
	tu_baseline_check(&b);
}

Test(seg, import_maps_a_good_segment)
{
	struct tu_baseline b;
	tu_baseline_take(&b);
	ferry_seg *s, *t = NULL;
	cr_assert_eq(ferry_seg_create(&s, 12345, "good"), 0, "%s", ferry_errmsg());
	int fd = dup(ferry_seg_fd(s)); /* dup: no CLOEXEC, the import must add it */
	cr_assert_geq(fd, 0);
	cr_assert_eq(ferry_seg_import(&t, fd, 12345), 0, "%s", ferry_errmsg());
	cr_assert_not_null(t);
	cr_expect_eq(ferry_seg_size(t), 12345);
	cr_expect_eq(ferry_seg_fd(t), fd);
	cr_expect(fcntl(fd, F_GETFD) & FD_CLOEXEC, "imported fd is not close-on-exec");
	cr_expect_neq(ferry_seg_data(t), ferry_seg_data(s));

	((char *)ferry_seg_data(s))[12344] = 'x';
	cr_expect_eq(((char *)ferry_seg_data(t))[12344], 'x');
	((char *)ferry_seg_data(t))[0] = 'y';
	cr_expect_eq(((char *)ferry_seg_data(s))[0], 'y');

	/* min_size 0 takes any non-empty size. */
	ferry_seg *u;
	cr_assert_eq(ferry_seg_import(&u, dup(ferry_seg_fd(s)), 0), 0, "%s", ferry_errmsg());
	cr_expect_eq(ferry_seg_size(u), 12345);
	ferry_seg_unref(u);

	ferry_seg_unref(t);
	expect_closed(fd);
	ferry_seg_unref(s);
	tu_baseline_check(&b);
}

/* Imports @fd expecting -EBADMSG with @word in the message, and @fd closed. */
static void expect_import_rejected(int fd, size_t min_size, const char *word)
{
	ferry_seg *s = (ferry_seg *)&s;
	cr_assert_geq(fd, 0);
	int rc = ferry_seg_import(&s, fd, min_size);
	cr_expect_eq(rc, -EBADMSG, "import of a %s gave %d (%s)", word, rc, ferry_errmsg());
	cr_expect_null(s);
	cr_expect(strstr(ferry_errmsg(), word) != NULL, "message \"%s\" lacks \"%s\"",
		  ferry_errmsg(), word);
	char num[16];
	snprintf(num, sizeof(num), "fd %d", fd);
	cr_expect(strstr(ferry_errmsg(), num) != NULL, "message \"%s\" lacks \"%s\"",
		  ferry_errmsg(), num);
	expect_closed(fd);
	if (s)
		ferry_seg_unref(s);
}

Test(seg, import_rejects_a_pipe)
{
	struct tu_baseline b;
	tu_baseline_take(&b);
	int p[2];
	cr_assert_eq(pipe(p), 0);
	expect_import_rejected(p[0], 0, "pipe");
	close(p[1]);
	tu_baseline_check(&b);
}

Test(seg, import_rejects_a_directory)
{
	struct tu_baseline b;
	tu_baseline_take(&b);
	expect_import_rejected(open("/", O_RDONLY | O_DIRECTORY), 0, "directory");
	tu_baseline_check(&b);
}

Test(seg, import_rejects_a_socket)
{
	struct tu_baseline b;
	tu_baseline_take(&b);
	int sv[2];
	cr_assert_eq(socketpair(AF_UNIX, SOCK_STREAM, 0, sv), 0);
	expect_import_rejected(sv[0], 0, "socket");
	close(sv[1]);
	tu_baseline_check(&b);
}

Test(seg, import_rejects_dev_zero)
{
	struct tu_baseline b;
	tu_baseline_take(&b);
	int fd = open("/dev/zero", O_RDWR);
	expect_import_rejected(fd, 0, "character device");
	cr_expect(strstr(ferry_errmsg(), "/dev/zero") != NULL, "message: %s", ferry_errmsg());
	tu_baseline_check(&b);
}

Test(seg, import_rejects_an_unsealed_memfd)
{
	struct tu_baseline b;
	tu_baseline_take(&b);
	int fd = memfd_create("unsealed", MFD_CLOEXEC);
	cr_assert_geq(fd, 0);
	cr_assert_eq(ftruncate(fd, 4096), 0);
	expect_import_rejected(fd, 0, "not sealed");

	/* Sealed against growing only: a peer could still shrink it. */
	fd = memfd_create("half", MFD_CLOEXEC | MFD_ALLOW_SEALING);
	cr_assert_geq(fd, 0);
	cr_assert_eq(ftruncate(fd, 4096), 0);
	cr_assert_eq(fcntl(fd, F_ADD_SEALS, F_SEAL_GROW), 0);
	expect_import_rejected(fd, 0, "not sealed");
	tu_baseline_check(&b);
}

Test(seg, import_rejects_undersized_and_empty)
{
	struct tu_baseline b;
	tu_baseline_take(&b);
	ferry_seg *s;
	cr_assert_eq(ferry_seg_create(&s, 4096, "small"), 0, "%s", ferry_errmsg());
	expect_import_rejected(dup(ferry_seg_fd(s)), 4097, "fewer than");
	cr_expect(strstr(ferry_errmsg(), "4096") && strstr(ferry_errmsg(), "4097"),
		  "message names both sizes: %s", ferry_errmsg());
	ferry_seg_unref(s);

	/* Empty but properly sealed. */
	int fd = memfd_create("empty", MFD_CLOEXEC | MFD_ALLOW_SEALING);
	cr_assert_geq(fd, 0);
	cr_assert_eq(fcntl(fd, F_ADD_SEALS, F_SEAL_SHRINK | F_SEAL_GROW), 0);
	expect_import_rejected(fd, 0, "empty");
	tu_baseline_check(&b);
}

Test(seg, import_rejects_write_sealed_read_only_and_disk_files)
{
	struct tu_baseline b;
	tu_baseline_take(&b);

	int fd = memfd_create("ro", MFD_CLOEXEC | MFD_ALLOW_SEALING);
	cr_assert_geq(fd, 0);
	cr_assert_eq(ftruncate(fd, 4096), 0);
	cr_assert_eq(fcntl(fd, F_ADD_SEALS, F_SEAL_SHRINK | F_SEAL_GROW | F_SEAL_WRITE), 0);
	expect_import_rejected(fd, 0, "sealed against writes");

	ferry_seg *s;
	cr_assert_eq(ferry_seg_create(&s, 4096, "rdonly"), 0, "%s", ferry_errmsg());
	char path[64];
	snprintf(path, sizeof(path), "/proc/self/fd/%d", ferry_seg_fd(s));
	expect_import_rejected(open(path, O_RDONLY | O_CLOEXEC), 0, "read-write");
	ferry_seg_unref(s);

	fd = open("/tmp", O_TMPFILE | O_RDWR | O_CLOEXEC, 0600);
	if (fd >= 0) { /* O_TMPFILE needs filesystem support */
		cr_assert_eq(ftruncate(fd, 4096), 0);
		/* tmpfs files can carry seals but never get shrink/grow ones. */
		ferry_seg *t = NULL;
		cr_expect_eq(ferry_seg_import(&t, fd, 0), -EBADMSG, "%s", ferry_errmsg());
		cr_expect_null(t);
		expect_closed(fd);
	}
	tu_baseline_check(&b);
}

Test(seg, import_rejects_bad_fds_and_arguments)
{
	struct tu_baseline b;
	tu_baseline_take(&b);
	ferry_seg *s = (ferry_seg *)&b;
	cr_expect_eq(ferry_seg_import(&s, -1, 0), -EBADF);
	cr_expect_null(s);
	cr_expect(strstr(ferry_errmsg(), "fd -1") != NULL, "message: %s", ferry_errmsg());

	/* A number that is not open: -EBADF, and nothing else gets closed. */
	int fd = open("/dev/null", O_RDONLY | O_CLOEXEC);
	cr_assert_geq(fd, 0);
	close(fd);
	cr_expect_eq(ferry_seg_import(&s, fd, 0), -EBADF, "%s", ferry_errmsg());

	/* NULL out still consumes the fd. */
	ferry_seg *g;
	cr_assert_eq(ferry_seg_create(&g, 4096, "nullout"), 0, "%s", ferry_errmsg());
	fd = dup(ferry_seg_fd(g));
	cr_expect_eq(ferry_seg_import(NULL, fd, 0), -EINVAL);
	cr_expect(strstr(ferry_errmsg(), "out") != NULL, "message: %s", ferry_errmsg());
	expect_closed(fd);
	ferry_seg_unref(g);
	tu_baseline_check(&b);
}

Test(seg, refcount_keeps_the_mapping_until_the_last_unref)
{
	struct tu_baseline b;
	tu_baseline_take(&b);
	ferry_seg *s;
	cr_assert_eq(ferry_seg_create(&s, 4096, "refs"), 0, "%s", ferry_errmsg());
	cr_expect_eq(ferry_seg_ref(s), s);
	cr_expect_eq(ferry_seg_ref(s), s);
	ferry_seg_unref(s);
	ferry_seg_unref(s);
	/* Still one reference: mapped and usable. */
	cr_expect_eq(tu_count_maps(), b.maps + 1);
	cr_expect_eq(tu_count_fds(), b.fds + 1);
	((char *)ferry_seg_data(s))[4095] = 1;
	ferry_seg_unref(s);
	tu_baseline_check(&b);
}

#define REF_THREADS 4
#define REF_ROUNDS 20000

static void *ref_worker(void *arg)
{
	ferry_seg *s = arg;
	for (int i = 0; i < REF_ROUNDS; i++) {
		ferry_seg_ref(s);
		__atomic_fetch_add((char *)ferry_seg_data(s) + i % 4096, 1, __ATOMIC_RELAXED);
		ferry_seg_unref(s);
	}
	ferry_seg_unref(s); /* the reference main took for us */
	return NULL;
}

Test(seg, refcount_is_thread_safe)
{
	struct tu_baseline b;
	tu_baseline_take(&b);
	ferry_seg *s;
	cr_assert_eq(ferry_seg_create(&s, 4096, "mt-refs"), 0, "%s", ferry_errmsg());
	pthread_t th[REF_THREADS];
	for (int i = 0; i < REF_THREADS; i++)
		cr_assert_eq(pthread_create(&th[i], NULL, ref_worker, ferry_seg_ref(s)), 0);
	for (int i = 0; i < REF_THREADS; i++)
		pthread_join(th[i], NULL);
	/* Every thread's references are gone; ours is the last. */
	cr_expect_eq(tu_count_maps(), b.maps + 1);
	ferry_seg_unref(s);
	tu_baseline_check(&b);
}

/* Writes a pattern derived from @seed through the segment. */
static void fill(ferry_seg *s, unsigned seed)
{
	unsigned char *p = ferry_seg_data(s);
	for (size_t i = 0; i < ferry_seg_size(s); i++)
		p[i] = (unsigned char)(i * 31 + seed);
}

static int has_fill(ferry_seg *s, unsigned seed)
{
	const unsigned char *p = ferry_seg_data(s);
	for (size_t i = 0; i < ferry_seg_size(s); i++)
		if (p[i] != (unsigned char)(i * 31 + seed))
			return 0;
	return 1;
}

static int fork_writer(void *arg)
{
	ferry_seg *s = arg;
	if (((unsigned char *)ferry_seg_data(s))[0] != 0xab)
		return 1; /* the parent's pre-fork write must be visible */
	fill(s, 7);
	return 0;
}

Test(seg, is_shared_with_a_forked_child)
{
	struct tu_baseline b;
	tu_baseline_take(&b);
	ferry_seg *s;
	cr_assert_eq(ferry_seg_create(&s, 64 * 1024, "fork"), 0, "%s", ferry_errmsg());
	((unsigned char *)ferry_seg_data(s))[0] = 0xab;
	expect_child_ok(tu_fork(fork_writer, s));
	cr_expect(has_fill(s, 7), "the child's writes are not visible");
	ferry_seg_unref(s);
	tu_baseline_check(&b);
}

static void *thread_writer(void *arg)
{
	return (void *)(intptr_t)fork_writer(arg);
}

Test(seg, is_shared_with_a_thread)
{
	struct tu_baseline b;
	tu_baseline_take(&b);
	ferry_seg *s;
	cr_assert_eq(ferry_seg_create(&s, 64 * 1024, "thread"), 0, "%s", ferry_errmsg());
	((unsigned char *)ferry_seg_data(s))[0] = 0xab;
	pthread_t th;
	void *ret;
	cr_assert_eq(pthread_create(&th, NULL, thread_writer, s), 0);
	pthread_join(th, &ret);
	cr_expect_null(ret);
	cr_expect(has_fill(s, 7), "the thread's writes are not visible");
	ferry_seg_unref(s);
	tu_baseline_check(&b);
}

/* The importing side: receives an fd, imports it, writes a pattern. */
struct importer {
	int sock;  /* this side's end */
	int other; /* the far end, closed in a child */
};

static int import_over_socket(void *arg)
{
	struct importer *im = arg;
	if (im->other >= 0)
		close(im->other);
	int fd = -1;
	unsigned n = 0;
	uint64_t want = 0;
	if (ferry_fds_recv(im->sock, &want, sizeof(want), &fd, 1, &n, 5000000000LL) != 0)
		return 1;
	if (n != 1)
		return 2;
	ferry_seg *s;
	if (ferry_seg_import(&s, fd, (size_t)want) != 0)
		return 3;
	if (ferry_seg_size(s) != want)
		return 4;
	if (!has_fill(s, 1))
		return 5; /* the creator's contents */
	fill(s, 9);
	ferry_seg_unref(s);
	return 0;
}

static void *import_thread(void *arg)
{
	return (void *)(intptr_t)import_over_socket(arg);
}

/* Creates a segment after the importer started, so it can only arrive by fd. */
static void send_new_segment(int sock, ferry_seg **out)
{
	const uint64_t size = 3 * 4096;
	cr_assert_eq(ferry_seg_create(out, size, "passed"), 0, "%s", ferry_errmsg());
	fill(*out, 1);
	int fd = ferry_seg_fd(*out);
	cr_assert_eq(ferry_fds_send(sock, &size, sizeof(size), &fd, 1, 5000000000LL), 0, "%s",
		     ferry_errmsg());
}

Test(seg, is_imported_by_a_child_over_a_socketpair)
{
	struct tu_baseline b;
	tu_baseline_take(&b);
	int sv[2];
	cr_assert_eq(socketpair(AF_UNIX, SOCK_SEQPACKET | SOCK_CLOEXEC, 0, sv), 0);
	struct importer im = { .sock = sv[1], .other = sv[0] };
	pid_t pid = tu_fork(import_over_socket, &im);
	close(sv[1]);
	ferry_seg *s;
	send_new_segment(sv[0], &s);
	expect_child_ok(pid);
	cr_expect(has_fill(s, 9), "the child's writes through its import are not visible");
	close(sv[0]);
	ferry_seg_unref(s);
	tu_baseline_check(&b);
}

Test(seg, is_imported_by_a_thread_over_a_socketpair)
{
	struct tu_baseline b;
	tu_baseline_take(&b);
	int sv[2];
	cr_assert_eq(socketpair(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0, sv), 0);
	struct importer im = { .sock = sv[1], .other = -1 };
	pthread_t th;
	cr_assert_eq(pthread_create(&th, NULL, import_thread, &im), 0);
	ferry_seg *s;
	send_new_segment(sv[0], &s);
	void *ret;
	pthread_join(th, &ret);
	cr_expect_null(ret, "importer thread failed at step %d", (int)(intptr_t)ret);
	cr_expect(has_fill(s, 9), "the thread's writes through its import are not visible");
	close(sv[0]);
	close(sv[1]);
	ferry_seg_unref(s);
	tu_baseline_check(&b);
}

/* ---- -ENOSPC in a memory cgroup ---- */

#define CG_LIMIT (32u << 20)
#define CG_SEGMENT ((size_t)128 << 20)

struct memcg {
	char dir[768];   /* the group this test made */
	char procs[800]; /* its cgroup.procs */
	int v2;
};

static int write_file(const char *path, const char *val)
{
	int fd = open(path, O_WRONLY | O_CLOEXEC);
	if (fd < 0)
		return -errno;
	ssize_t n = write(fd, val, strlen(val));
	int e = errno;
	close(fd);
	return n == (ssize_t)strlen(val) ? 0 : -(n < 0 ? e : EIO);
}

static int read_file(const char *path, char *buf, size_t cap)
{
	int fd = open(path, O_RDONLY | O_CLOEXEC);
	if (fd < 0)
		return -errno;
	ssize_t n = read(fd, buf, cap - 1);
	close(fd);
	buf[n > 0 ? n : 0] = '\0';
	return n < 0 ? -EIO : 0;
}

/* Whether @word is one of the space/comma separated words of @list. */
static int has_word(const char *list, const char *word)
{
	size_t wl = strlen(word);
	for (const char *p = list; (p = strstr(p, word)); p += wl)
		if ((p == list || p[-1] == ' ' || p[-1] == ',' || p[-1] == ':') &&
		    (p[wl] == '\0' || p[wl] == ' ' || p[wl] == ',' || p[wl] == '\n'))
			return 1;
	return 0;
}

/*
 * Mount point of the cgroup2 hierarchy (@v2) or of the v1 hierarchy holding
 * the memory controller, and this process's group in it.
 */
static int find_cgroup(int v2, char *mnt, size_t mcap, char *grp, size_t gcap)
{
	FILE *f = setmntent("/proc/self/mounts", "r");
	if (!f)
		return -1;
	struct mntent *m;
	int found = 0;
	while (!found && (m = getmntent(f))) {
		if (v2 ? strcmp(m->mnt_type, "cgroup2") == 0
		       : strcmp(m->mnt_type, "cgroup") == 0 && hasmntopt(m, "memory")) {
			snprintf(mnt, mcap, "%s", m->mnt_dir);
			found = 1;
		}
	}
	endmntent(f);
	if (!found)
		return -1;
	f = fopen("/proc/self/cgroup", "re");
	if (!f)
		return -1;
	char line[1024];
	found = 0;
	while (!found && fgets(line, sizeof(line), f)) {
		char *c1 = strchr(line, ':'), *c2 = c1 ? strchr(c1 + 1, ':') : NULL;
		if (!c2)
			continue;
		*c2 = '\0';
		int match = v2 ? strcmp(line, "0") == 0 && c2 == c1 + 1 : has_word(c1 + 1, "memory");
		if (match) {
			c2[1 + strcspn(c2 + 1, "\n")] = '\0';
			snprintf(grp, gcap, "%s", c2 + 1);
			found = 1;
		}
	}
	fclose(f);
	return found ? 0 : -1;
}

/* Writes the reason a setup step failed into @buf. */
static __attribute__((format(printf, 3, 4))) void say(char *buf, size_t cap, const char *fmt, ...)
{
	va_list ap;
	va_start(ap, fmt);
	vsnprintf(buf, cap, fmt, ap);
	va_end(ap);
}

/* Makes a child memory cgroup limited to CG_LIMIT; on failure says why. */
static int memcg_make(struct memcg *cg, int v2, char *why, size_t wcap)
{
	char mnt[256], grp[400], parent[700], path[900], buf[512];
	cg->v2 = v2;
	if (find_cgroup(v2, mnt, sizeof(mnt), grp, sizeof(grp)) < 0) {
		say(why, wcap, "no cgroup %s memory hierarchy", v2 ? "v2" : "v1");
		return -1;
	}
	snprintf(parent, sizeof(parent), "%s%s", mnt, strcmp(grp, "/") ? grp : "");
	if (v2) {
		snprintf(path, sizeof(path), "%s/cgroup.controllers", parent);
		if (read_file(path, buf, sizeof(buf)) < 0 || !has_word(buf, "memory")) {
			say(why, wcap, "cgroup v2 at %s offers no memory controller", parent);
			return -1;
		}
		/*
		 * Children get a memory controller only if the parent hands it
		 * down. This is left enabled afterwards: others may rely on it
		 * by then. (It fails with EBUSY where the parent holds
		 * processes, the usual case outside a cgroup root: we skip.)
		 */
		snprintf(path, sizeof(path), "%s/cgroup.subtree_control", parent);
		int rc = 0;
		if (read_file(path, buf, sizeof(buf)) < 0 || !has_word(buf, "memory"))
			rc = write_file(path, "+memory");
		if (rc < 0) {
			say(why, wcap, "cannot enable memory for children of %s: %s", parent,
				 strerror(-rc));
			return -1;
		}
	}
	snprintf(cg->dir, sizeof(cg->dir), "%s/ferry-seg-test-%d", parent, (int)getpid());
	if (mkdir(cg->dir, 0755) < 0) {
		say(why, wcap, "cannot create %s: %s", cg->dir, strerror(errno));
		return -1;
	}
	snprintf(cg->procs, sizeof(cg->procs), "%s/cgroup.procs", cg->dir);
	char lim[32];
	snprintf(lim, sizeof(lim), "%u", CG_LIMIT);
	snprintf(path, sizeof(path), "%s/%s", cg->dir, v2 ? "memory.max" : "memory.limit_in_bytes");
	int rc = write_file(path, lim);
	if (rc < 0) {
		say(why, wcap, "cannot write %s: %s", path, strerror(-rc));
		rmdir(cg->dir);
		return -1;
	}
	/* Swap would let the charge succeed by paging out; keep it out. */
	snprintf(path, sizeof(path), "%s/%s", cg->dir,
		 v2 ? "memory.swap.max" : "memory.memsw.limit_in_bytes");
	write_file(path, v2 ? "0" : lim);
	if (!v2) {
		/*
		 * With its OOM killer off, a v1 group fails the charge (ENOMEM)
		 * instead of killing the child. v2 has no such switch.
		 */
		snprintf(path, sizeof(path), "%s/memory.oom_control", cg->dir);
		write_file(path, "1");
	}
	return 0;
}

static void memcg_remove(struct memcg *cg)
{
	/* The group empties a moment after the child is reaped. */
	for (int i = 0; i < 200 && rmdir(cg->dir) < 0 && errno == EBUSY; i++)
		usleep(5000);
}

static int oom_kills(const struct memcg *cg)
{
	char path[900], buf[1024];
	snprintf(path, sizeof(path), "%s/memory.events", cg->dir);
	if (read_file(path, buf, sizeof(buf)) < 0)
		return 0;
	const char *p = strstr(buf, "oom_kill ");
	return p ? atoi(p + 9) : 0;
}

enum { NOSPC_OK, NOSPC_JOIN = 10, NOSPC_CREATED, NOSPC_WRONG, NOSPC_MSG, NOSPC_SMALL };

static int nospc_child(void *arg)
{
	const struct memcg *cg = arg;
	/* Best effort: out of the OOM killer's choice, so the charge must fail. */
	write_file("/proc/self/oom_score_adj", "-1000");
	char pid[32];
	snprintf(pid, sizeof(pid), "%d", (int)getpid());
	if (write_file(cg->procs, pid) < 0)
		return NOSPC_JOIN;
	ferry_seg *s = NULL;
	int rc = ferry_seg_create(&s, CG_SEGMENT, "nospc");
	if (rc == 0) {
		ferry_seg_unref(s);
		return NOSPC_CREATED;
	}
	if (rc != -ENOSPC)
		return NOSPC_WRONG;
	if (!strstr(ferry_errmsg(), "reserve"))
		return NOSPC_MSG;
	/* The failed reserve gave its pages back: a small segment still fits. */
	if (ferry_seg_create(&s, 1 << 20, "fits") != 0)
		return NOSPC_SMALL;
	ferry_seg_unref(s);
	return NOSPC_OK;
}

Test(seg, create_fails_with_enospc_in_a_full_memory_cgroup)
{
	struct tu_baseline b;
	tu_baseline_take(&b);
	struct memcg cg;
	char why2[512], why1[512];
	if (memcg_make(&cg, 1, why2, sizeof(why2)) < 0 && memcg_make(&cg, 0, why1, sizeof(why1)) < 0)
		cr_skip("no writable memory cgroup: %s; %s", why2, why1);

	int st = tu_wait(tu_fork(nospc_child, &cg), 15000);
	int kills = cg.v2 ? oom_kills(&cg) : 0;
	memcg_remove(&cg);
	cr_assert_neq(st, -1, "child timed out");
	if (WIFEXITED(st) && WEXITSTATUS(st) == NOSPC_JOIN)
		cr_skip("cannot move a process into %s", cg.dir);
	if (cg.v2 && WIFSIGNALED(st) && WTERMSIG(st) == SIGKILL && kills > 0) {
		/* v2 cannot turn the OOM killer off: it ended the child at create time. */
		cr_log_info("the OOM killer ended the child during the create (no SIGBUS later)");
	} else {
		cr_expect(WIFEXITED(st), "child died by signal %d", WIFSIGNALED(st) ? WTERMSIG(st) : 0);
		cr_expect_eq(WEXITSTATUS(st), NOSPC_OK, "child failed: %d (%d created, %d wrong "
			     "error, %d message, %d no small segment)", WEXITSTATUS(st), NOSPC_CREATED,
			     NOSPC_WRONG, NOSPC_MSG, NOSPC_SMALL);
	}
	tu_baseline_check(&b);
}
