/* Named endpoints: abstract and path names, authentication, many clients,
 * dying peers, timeouts, bad arguments, hostile clients and listeners.
 * Clients run as forked processes (the real use) and, where a scenario does
 * not need a separate process, as threads too. */
#include <ferry.h>
#include <ferry/endpoint.h>

#include "util/util.h"

#include <criterion/criterion.h>
#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <grp.h>
#include <poll.h>
#include <pthread.h>
#include <signal.h>
#include <stdatomic.h>
#include <stddef.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/un.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

static struct tu_baseline base;

static void setup(void)
{
	tu_baseline_take(&base);
}

static void teardown(void)
{
	tu_baseline_check(&base);
}

TestSuite(endpoint, .init = setup, .fini = teardown, .timeout = 60);

#define MS (1000LL * 1000)
#define T10S (10LL * 1000 * MS)

/* A name of this test process: concurrent runs (other builds) never meet. */
static const char *ep_name(const char *tag)
{
	static char buf[64];
	snprintf(buf, sizeof buf, "test-%d-%s", (int)getpid(), tag);
	return buf;
}

static void expect_exit0(pid_t pid, const char *what)
{
	int st = tu_wait(pid, 20000);
	cr_expect(st != -1 && WIFEXITED(st) && WEXITSTATUS(st) == 0,
		  "%s: status %#x (exit %d, signal %d)", what, st,
		  st != -1 && WIFEXITED(st) ? WEXITSTATUS(st) : -1,
		  st != -1 && WIFSIGNALED(st) ? WTERMSIG(st) : 0);
}

/* No ferry object ever lands in /dev/shm. */
static void expect_dev_shm_clean(void)
{
	DIR *d = opendir("/dev/shm");
	if (!d)
		return;
	struct dirent *e;
	while ((e = readdir(d)))
		cr_expect(strncmp(e->d_name, "ferry", 5) != 0, "/dev/shm/%s exists", e->d_name);
	closedir(d);
}

/* A private directory for path-mode sockets. */
static void make_dir(char *dir, size_t cap)
{
	snprintf(dir, cap, "/tmp/ferry-ep-XXXXXX");
	cr_assert_not_null(mkdtemp(dir), "mkdtemp: %s", strerror(errno));
}

/* ---- the client side, run in a child process or a thread ---- */

struct client {
	char name[128];
	enum ferry_endpoint_ns ns;
	int rc;       /* thread clients: the result */
	int index;    /* many_clients: which one */
};

/* Echo raw messages and values back until a null value or -EPIPE. */
static int echo_loop(ferry_port *p)
{
	for (;;) {
		ferry_msg *m;
		int rc = ferry_port_recv(p, &m, T10S);
		if (rc == -EPIPE)
			return 0;
		if (rc)
			return 11;
		const ferry_value *v = ferry_msg_value(m);
		if (!v) {
			rc = ferry_port_post_bytes(p, ferry_msg_data(m), ferry_msg_len(m), T10S);
		} else if (ferry_value_kind(v) == FERRY_VALUE_NULL) {
			ferry_msg_free(m);
			return 0;
		} else {
			rc = ferry_port_post(p, v, NULL, T10S);
		}
		ferry_msg_free(m);
		if (rc)
			return 12;
	}
}

static int client_echo(void *arg)
{
	struct client *c = arg;
	struct ferry_connect_opts o = { .ns = c->ns };
	ferry_port *p;
	if (ferry_connect(&p, c->name, &o, T10S))
		return 10;
	int rc = echo_loop(p);
	ferry_port_destroy(p);
	return rc;
}

static void *client_thread(void *arg)
{
	struct client *c = arg;
	c->rc = client_echo(c);
	return NULL;
}

static struct client client_for(const char *name, enum ferry_endpoint_ns ns)
{
	struct client c = { .ns = ns };
	snprintf(c.name, sizeof c.name, "%s", name);
	return c;
}

/* ---- the listener side ---- */

static ferry_msg *recv_ok(ferry_port *p)
{
	ferry_msg *m = NULL;
	int rc = ferry_port_recv(p, &m, T10S);
	cr_assert_eq(rc, 0, "recv: %d %s", rc, ferry_errmsg());
	return m;
}

/* One value and one raw message there and back, then a null to finish. */
static void check_echo(ferry_port *p, int tag)
{
	ferry_value *v = ferry_value_map();
	ferry_value_map_set(v, "tag", ferry_value_int(tag));
	ferry_value_map_set(v, "s", ferry_value_str("hello over a named endpoint"));
	ferry_value_map_set(v, "b", ferry_value_bytes("\0\1\2\3", 4));
	cr_assert_eq(ferry_port_post(p, v, NULL, T10S), 0, "%s", ferry_errmsg());
	ferry_msg *m = recv_ok(p);
	cr_assert_not_null(ferry_msg_value(m));
	cr_expect(ferry_value_equal(ferry_msg_value(m), v), "the echoed value differs");
	ferry_msg_free(m);
	ferry_value_free(v);

	char raw[300];
	for (size_t i = 0; i < sizeof raw; i++)
		raw[i] = (char)(i * 7 + (size_t)tag);
	cr_assert_eq(ferry_port_post_bytes(p, raw, sizeof raw, T10S), 0, "%s", ferry_errmsg());
	m = recv_ok(p);
	cr_assert_eq(ferry_msg_len(m), sizeof raw);
	cr_expect_arr_eq(ferry_msg_data(m), raw, sizeof raw);
	ferry_msg_free(m);

	ferry_value *nul = ferry_value_null();
	cr_assert_eq(ferry_port_post(p, nul, NULL, T10S), 0, "%s", ferry_errmsg());
	ferry_value_free(nul);
}

static ferry_port *accept_ok(ferry_listener *l)
{
	ferry_port *p = NULL;
	int rc = ferry_accept(l, &p, T10S);
	cr_assert_eq(rc, 0, "accept: %d %s", rc, ferry_errmsg());
	cr_assert_not_null(p);
	return p;
}

/* Serve one echo client on @l, as a process or a thread. */
static void echo_once(ferry_listener *l, const char *name, enum ferry_endpoint_ns ns, int process)
{
	struct client c = client_for(name, ns);
	pid_t pid = 0;
	pthread_t th;
	memset(&th, 0, sizeof th);
	if (process)
		pid = tu_fork(client_echo, &c);
	else
		cr_assert_eq(pthread_create(&th, NULL, client_thread, &c), 0);
	ferry_port *p = accept_ok(l);
	check_echo(p, 5);
	/* The client leaves after the null: its port closes, ours reads -EPIPE. */
	ferry_msg *m;
	cr_expect_eq(ferry_port_recv(p, &m, T10S), -EPIPE, "%s", ferry_errmsg());
	ferry_port_destroy(p);
	if (process) {
		expect_exit0(pid, "echo client");
	} else {
		pthread_join(th, NULL);
		cr_expect_eq(c.rc, 0, "thread client failed with %d", c.rc);
	}
}

/* ---- names ---- */

static void abstract_echo(int process)
{
	const char *name = ep_name("abstract");
	ferry_listener *l;
	cr_assert_eq(ferry_listen(&l, name, NULL), 0, "%s", ferry_errmsg());
	echo_once(l, name, FERRY_ENDPOINT_ABSTRACT, process);
	struct ferry_listener_stats st;
	cr_assert_eq(ferry_listener_stats(l, &st), 0);
	cr_expect_eq(st.accepted, 1);
	cr_expect_eq(st.refused, 0);
	ferry_listener_destroy(l);
	expect_dev_shm_clean();
}

Test(endpoint, abstract_echo_process) { abstract_echo(1); }
Test(endpoint, abstract_echo_thread) { abstract_echo(0); }

static void path_echo(int process, unsigned mode)
{
	char dir[64], path[128];
	make_dir(dir, sizeof dir);
	snprintf(path, sizeof path, "%s/svc.sock", dir);
	struct ferry_listen_opts o = { .ns = FERRY_ENDPOINT_PATH, .mode = mode };
	ferry_listener *l;
	cr_assert_eq(ferry_listen(&l, path, &o), 0, "%s", ferry_errmsg());
	struct stat st;
	cr_assert_eq(lstat(path, &st), 0, "%s", strerror(errno));
	cr_expect(S_ISSOCK(st.st_mode));
	cr_expect_eq(st.st_mode & 0777, mode ? mode : 0600, "mode %o", st.st_mode & 0777);
	echo_once(l, path, FERRY_ENDPOINT_PATH, process);
	ferry_listener_destroy(l);
	cr_expect_eq(lstat(path, &st), -1, "the socket file outlived its listener");
	cr_expect_eq(rmdir(dir), 0, "the directory is not empty: %s", strerror(errno));
	expect_dev_shm_clean();
}

Test(endpoint, path_echo_process) { path_echo(1, 0); }
Test(endpoint, path_echo_thread) { path_echo(0, 0); }
Test(endpoint, path_mode_from_opts) { path_echo(0, 0640); }

Test(endpoint, abstract_name_leaves_no_file)
{
	/* The abstract namespace: the socket is nowhere in the filesystem, and
	 * the name is free again once the listener is destroyed. */
	const char *name = ep_name("again");
	ferry_listener *l;
	cr_assert_eq(ferry_listen(&l, name, NULL), 0, "%s", ferry_errmsg());
	struct stat st;
	cr_expect_eq(lstat(name, &st), -1);
	ferry_listener_destroy(l);
	cr_assert_eq(ferry_listen(&l, name, NULL), 0, "%s", ferry_errmsg());
	ferry_listener_destroy(l);
}

/* ---- many clients at once ---- */

#define NCLIENTS 20

static int client_many(void *arg)
{
	struct client *c = arg;
	ferry_port *p;
	if (ferry_connect(&p, c->name, NULL, T10S))
		return 10;
	int32_t idx = c->index;
	int rc = ferry_port_post_bytes(p, &idx, sizeof idx, T10S) ? 13 : echo_loop(p);
	ferry_port_destroy(p);
	return rc;
}

Test(endpoint, many_clients_process)
{
	const char *name = ep_name("many");
	struct ferry_channel_opts co = { .ring_bytes = 16 * 1024 };
	struct ferry_listen_opts o = { .channel = &co, .backlog = 4 };
	ferry_listener *l;
	cr_assert_eq(ferry_listen(&l, name, &o), 0, "%s", ferry_errmsg());
	/* All forked before any channel exists: no child holds another's port.
	 * The backlog is smaller than the crowd: the rest wait in connect. */
	pid_t pids[NCLIENTS];
	for (int i = 0; i < NCLIENTS; i++) {
		struct client c = client_for(name, FERRY_ENDPOINT_ABSTRACT);
		c.index = i;
		pids[i] = tu_fork(client_many, &c);
	}
	ferry_port *ports[NCLIENTS] = { 0 };
	for (int i = 0; i < NCLIENTS; i++) {
		ferry_port *p = accept_ok(l);
		ferry_msg *m = recv_ok(p);
		cr_assert_eq(ferry_msg_len(m), sizeof(int32_t));
		int32_t idx;
		memcpy(&idx, ferry_msg_data(m), sizeof idx);
		ferry_msg_free(m);
		cr_assert(idx >= 0 && idx < NCLIENTS && !ports[idx], "client index %d twice or out of range", idx);
		ports[idx] = p;
	}
	/* Every channel its own: post to all, then read all replies. */
	for (int i = 0; i < NCLIENTS; i++) {
		ferry_value *v = ferry_value_map();
		ferry_value_map_set(v, "i", ferry_value_int(i));
		char s[32];
		snprintf(s, sizeof s, "client %d", i);
		ferry_value_map_set(v, "s", ferry_value_str(s));
		cr_assert_eq(ferry_port_post(ports[i], v, NULL, T10S), 0, "%s", ferry_errmsg());
		ferry_value_free(v);
		unsigned char raw[512];
		memset(raw, i, sizeof raw);
		cr_assert_eq(ferry_port_post_bytes(ports[i], raw, sizeof raw, T10S), 0, "%s", ferry_errmsg());
	}
	for (int i = 0; i < NCLIENTS; i++) {
		ferry_msg *m = recv_ok(ports[i]);
		ferry_value *got = ferry_value_map_get(ferry_msg_value(m), "i");
		int64_t gi = -1;
		cr_assert_eq(ferry_value_get_int(got, &gi), 0);
		cr_expect_eq(gi, i);
		ferry_msg_free(m);
		m = recv_ok(ports[i]);
		cr_assert_eq(ferry_msg_len(m), 512);
		cr_expect_eq(((const unsigned char *)ferry_msg_data(m))[511], (unsigned char)i);
		ferry_msg_free(m);
		ferry_value *nul = ferry_value_null();
		cr_assert_eq(ferry_port_post(ports[i], nul, NULL, T10S), 0);
		ferry_value_free(nul);
	}
	for (int i = 0; i < NCLIENTS; i++)
		expect_exit0(pids[i], "many clients");
	for (int i = 0; i < NCLIENTS; i++)
		ferry_port_destroy(ports[i]);
	struct ferry_listener_stats st;
	ferry_listener_stats(l, &st);
	cr_expect_eq(st.accepted, NCLIENTS);
	ferry_listener_destroy(l);
}

/* ---- authentication ---- */

#define NOBODY 65534

struct auth_shared {
	_Atomic int first_done;
	_Atomic int result;
};

static int wait_flag(_Atomic int *flag)
{
	for (int i = 0; i < 10000 && !atomic_load(flag); i++)
		tu_sleep_ms(1);
	return atomic_load(flag);
}

static int become_nobody(void)
{
	return setgroups(0, NULL) == 0 && setgid(NOBODY) == 0 && setuid(NOBODY) == 0 ? 0 : -1;
}

/* Connect expecting @c->rc as the error; flag done. */
struct refused_arg {
	struct client c;
	struct auth_shared *sh;
	int as_nobody;
};

static int client_expect_refused(void *arg)
{
	struct refused_arg *a = arg;
	if (a->as_nobody && become_nobody())
		return 20;
	ferry_port *p = NULL;
	int rc = ferry_connect(&p, a->c.name, NULL, T10S);
	atomic_store(&a->sh->result, rc);
	atomic_store(&a->sh->first_done, 1);
	if (p)
		ferry_port_destroy(p);
	if (rc != a->c.rc)
		return 21;
	return strstr(ferry_errmsg(), "refused") ? 0 : 22;
}

/* After the refused one: connect, post our uid and pid, wait for the end. */
static int client_after(void *arg)
{
	struct refused_arg *a = arg;
	if (!wait_flag(&a->sh->first_done))
		return 30;
	if (a->as_nobody && become_nobody())
		return 31;
	ferry_port *p;
	if (ferry_connect(&p, a->c.name, NULL, T10S))
		return 32;
	int32_t id[2] = { (int32_t)geteuid(), (int32_t)getpid() };
	int rc = ferry_port_post_bytes(p, id, sizeof id, T10S) ? 33 : echo_loop(p);
	ferry_port_destroy(p);
	return rc;
}

static void read_id(ferry_port *p, int32_t id[2])
{
	ferry_msg *m = recv_ok(p);
	cr_assert_eq(ferry_msg_len(m), 2 * sizeof(int32_t));
	memcpy(id, ferry_msg_data(m), 2 * sizeof(int32_t));
	ferry_msg_free(m);
}

static void finish(ferry_port *p)
{
	ferry_value *nul = ferry_value_null();
	cr_expect_eq(ferry_port_post(p, nul, NULL, T10S), 0, "%s", ferry_errmsg());
	ferry_value_free(nul);
}

Test(endpoint, allow_list_refuses_then_admits)
{
	if (geteuid() != 0)
		cr_skip("needs root to run a client as another uid");
	const char *name = ep_name("allow");
	uid_t allow[] = { NOBODY };
	struct ferry_listen_opts o = { .allow_uids = allow, .nallow_uids = 1 };
	ferry_listener *l;
	cr_assert_eq(ferry_listen(&l, name, &o), 0, "%s", ferry_errmsg());
	struct auth_shared *sh = tu_shared_alloc(sizeof *sh);
	/* First root (our uid, not in the list), then nobody (in it). */
	struct refused_arg bad = { .c = client_for(name, 0), .sh = sh, .as_nobody = 0 };
	bad.c.rc = -EACCES;
	struct refused_arg good = { .c = client_for(name, 0), .sh = sh, .as_nobody = 1 };
	pid_t pb = tu_fork(client_expect_refused, &bad);
	pid_t pg = tu_fork(client_after, &good);
	/* One accept call: refuses the first client, goes on, admits the second. */
	ferry_port *p = accept_ok(l);
	int32_t id[2];
	read_id(p, id);
	cr_expect_eq(id[0], NOBODY, "admitted uid %d", id[0]);
	cr_expect_eq(id[1], pg);
	finish(p);
	expect_exit0(pb, "refused client");
	expect_exit0(pg, "admitted client");
	cr_expect_eq(atomic_load(&sh->result), -EACCES);
	ferry_port_destroy(p);
	struct ferry_listener_stats st;
	ferry_listener_stats(l, &st);
	cr_expect_eq(st.refused, 1);
	cr_expect_eq(st.accepted, 1);
	ferry_listener_destroy(l);
	tu_shared_free(sh, sizeof *sh);
}

Test(endpoint, default_refuses_other_uid)
{
	if (geteuid() != 0)
		cr_skip("needs root to run a client as another uid");
	const char *name = ep_name("sameuid");
	ferry_listener *l;
	cr_assert_eq(ferry_listen(&l, name, NULL), 0, "%s", ferry_errmsg());
	struct auth_shared *sh = tu_shared_alloc(sizeof *sh);
	struct refused_arg bad = { .c = client_for(name, 0), .sh = sh, .as_nobody = 1 };
	bad.c.rc = -EACCES;
	pid_t pb = tu_fork(client_expect_refused, &bad);
	ferry_port *p = NULL;
	/* Nobody admissible comes: the refusal is counted, accept times out,
	 * as often as it takes the child to come and go. */
	for (int i = 0; i < 400 && !atomic_load(&sh->first_done); i++) {
		int rc = ferry_accept(l, &p, 50 * MS);
		cr_assert_eq(rc, -ETIMEDOUT, "%d %s", rc, ferry_errmsg());
		cr_assert_null(p);
	}
	expect_exit0(pb, "refused client");
	struct ferry_listener_stats st;
	ferry_listener_stats(l, &st);
	cr_expect_eq(st.refused, 1);
	cr_expect_eq(st.accepted, 0);
	/* The same uid is admitted by default. */
	echo_once(l, name, 0, 1);
	ferry_listener_destroy(l);
	tu_shared_free(sh, sizeof *sh);
}

struct check_arg {
	pid_t refuse;
	int calls;
	uid_t uid;
	gid_t gid;
};

static int check_pid(pid_t pid, uid_t uid, gid_t gid, void *arg)
{
	struct check_arg *a = arg;
	a->calls++;
	a->uid = uid;
	a->gid = gid;
	return pid == a->refuse ? -EPERM : 0;
}

Test(endpoint, check_callback_refuses_by_pid)
{
	const char *name = ep_name("check");
	struct check_arg ca = { 0 };
	struct ferry_listen_opts o = { .check = check_pid, .check_arg = &ca };
	ferry_listener *l;
	cr_assert_eq(ferry_listen(&l, name, &o), 0, "%s", ferry_errmsg());
	struct auth_shared *sh = tu_shared_alloc(sizeof *sh);
	struct refused_arg bad = { .c = client_for(name, 0), .sh = sh };
	bad.c.rc = -EPERM; /* the callback's own code reaches the client */
	struct refused_arg good = { .c = client_for(name, 0), .sh = sh };
	pid_t pb = tu_fork(client_expect_refused, &bad);
	ca.refuse = pb; /* set before the first accept: the callback runs in it */
	pid_t pg = tu_fork(client_after, &good);
	ferry_port *p = accept_ok(l);
	int32_t id[2];
	read_id(p, id);
	cr_expect_eq(id[1], pg);
	finish(p);
	expect_exit0(pb, "refused client");
	expect_exit0(pg, "admitted client");
	cr_expect_eq(atomic_load(&sh->result), -EPERM);
	cr_expect_eq(ca.calls, 2);
	cr_expect_eq(ca.uid, geteuid());
	cr_expect_eq(ca.gid, getegid());
	ferry_port_destroy(p);
	ferry_listener_destroy(l);
	tu_shared_free(sh, sizeof *sh);
}

Test(endpoint, client_refuses_untrusted_listener)
{
	/* The client checks the listener's uid as well: an abstract name can be
	 * squatted by anyone. */
	const char *name = ep_name("squat");
	ferry_listener *l;
	cr_assert_eq(ferry_listen(&l, name, NULL), 0, "%s", ferry_errmsg());
	uid_t only[] = { 4242 };
	struct ferry_connect_opts co = { .allow_uids = only, .nallow_uids = 1 };
	ferry_port *p = NULL;
	cr_expect_eq(ferry_connect(&p, name, &co, T10S), -EACCES);
	cr_expect(strstr(ferry_errmsg(), "does not trust"), "%s", ferry_errmsg());
	cr_expect_null(p);
	/* The listener drops the connection that went away, and stays usable. */
	cr_expect_eq(ferry_accept(l, &p, 0), -EAGAIN, "%s", ferry_errmsg());
	struct ferry_listener_stats st;
	ferry_listener_stats(l, &st);
	cr_expect_eq(st.dropped, 1);
	echo_once(l, name, 0, 0);
	ferry_listener_destroy(l);
}

/* ---- a name in use ---- */

Test(endpoint, second_listener_abstract_addrinuse)
{
	const char *name = ep_name("busy");
	ferry_listener *l, *l2 = (ferry_listener *)1;
	cr_assert_eq(ferry_listen(&l, name, NULL), 0, "%s", ferry_errmsg());
	cr_expect_eq(ferry_listen(&l2, name, NULL), -EADDRINUSE);
	cr_expect_null(l2);
	cr_expect(strstr(ferry_errmsg(), "in use"), "%s", ferry_errmsg());
	echo_once(l, name, 0, 1);
	ferry_listener_destroy(l);
}

Test(endpoint, second_listener_path_addrinuse)
{
	char dir[64], path[128];
	make_dir(dir, sizeof dir);
	snprintf(path, sizeof path, "%s/busy", dir);
	struct ferry_listen_opts o = { .ns = FERRY_ENDPOINT_PATH };
	ferry_listener *l, *l2;
	cr_assert_eq(ferry_listen(&l, path, &o), 0, "%s", ferry_errmsg());
	struct stat before, after;
	cr_assert_eq(lstat(path, &before), 0);
	cr_expect_eq(ferry_listen(&l2, path, &o), -EADDRINUSE);
	cr_expect(strstr(ferry_errmsg(), "live listener"), "%s", ferry_errmsg());
	cr_assert_eq(lstat(path, &after), 0);
	cr_expect_eq(before.st_ino, after.st_ino, "the live socket file was replaced");
	/* The probe looked like a client that hung up: dropped, and the first
	 * listener serves the next client as before. */
	echo_once(l, path, FERRY_ENDPOINT_PATH, 1);
	ferry_listener_destroy(l);
	cr_expect_eq(rmdir(dir), 0, "%s", strerror(errno));
}

Test(endpoint, path_refuses_non_socket)
{
	char dir[64], path[128];
	make_dir(dir, sizeof dir);
	snprintf(path, sizeof path, "%s/file", dir);
	int fd = open(path, O_CREAT | O_WRONLY | O_CLOEXEC, 0644);
	cr_assert_geq(fd, 0);
	cr_assert_eq(write(fd, "keep", 4), 4);
	close(fd);
	struct ferry_listen_opts o = { .ns = FERRY_ENDPOINT_PATH };
	ferry_listener *l;
	cr_expect_eq(ferry_listen(&l, path, &o), -EEXIST);
	cr_expect(strstr(ferry_errmsg(), "not a socket"), "%s", ferry_errmsg());
	struct stat st;
	cr_expect_eq(lstat(path, &st), 0);
	cr_expect_eq(st.st_size, 4, "the file was touched");
	unlink(path);
	/* A directory is not replaced either. */
	cr_assert_eq(mkdir(path, 0700), 0);
	cr_expect_eq(ferry_listen(&l, path, &o), -EEXIST);
	rmdir(path);
	cr_expect_eq(rmdir(dir), 0, "%s", strerror(errno));
}

struct stale_arg {
	char path[128];
};

static int listen_and_crash(void *arg)
{
	struct stale_arg *a = arg;
	struct ferry_listen_opts o = { .ns = FERRY_ENDPOINT_PATH };
	ferry_listener *l;
	if (ferry_listen(&l, a->path, &o))
		return 40;
	raise(SIGKILL); /* a crash: nobody closes, the file stays */
	return 41;
}

Test(endpoint, path_replaces_stale_socket)
{
	char dir[64];
	struct stale_arg a;
	make_dir(dir, sizeof dir);
	snprintf(a.path, sizeof a.path, "%s/stale", dir);
	pid_t pid = tu_fork(listen_and_crash, &a);
	int st = tu_wait(pid, 20000);
	cr_assert(st != -1 && WIFSIGNALED(st), "the listener child did not crash: %#x", st);
	struct stat sb;
	cr_assert_eq(lstat(a.path, &sb), 0, "the crashed listener left no file");
	cr_assert(S_ISSOCK(sb.st_mode));
	/* Nobody accepts there: clients are refused... */
	struct ferry_connect_opts co = { .ns = FERRY_ENDPOINT_PATH };
	ferry_port *p;
	cr_expect_eq(ferry_connect(&p, a.path, &co, T10S), -ECONNREFUSED, "%s", ferry_errmsg());
	/* ...and a new listener takes the stale file over. */
	struct ferry_listen_opts o = { .ns = FERRY_ENDPOINT_PATH };
	ferry_listener *l;
	cr_assert_eq(ferry_listen(&l, a.path, &o), 0, "%s", ferry_errmsg());
	echo_once(l, a.path, FERRY_ENDPOINT_PATH, 1);
	ferry_listener_destroy(l);
	cr_expect_eq(lstat(a.path, &sb), -1);
	cr_expect_eq(rmdir(dir), 0, "%s", strerror(errno));
}

#define NRACERS 4

struct race {
	char path[128];
	_Atomic int go, done, ready;
	_Atomic int rc[NRACERS];
};

struct racer {
	struct race *r; /* shared */
	int me;         /* the child's own copy */
};

static int race_listen(void *arg)
{
	struct race *r = ((struct racer *)arg)->r;
	int me = ((struct racer *)arg)->me;
	while (!atomic_load(&r->go))
		;
	struct ferry_listen_opts o = { .ns = FERRY_ENDPOINT_PATH };
	ferry_listener *l = NULL;
	atomic_store(&r->rc[me], ferry_listen(&l, r->path, &o));
	atomic_fetch_add(&r->ready, 1);
	/* Hold the name until everyone has tried. */
	if (!wait_flag(&r->done))
		return 1;
	ferry_listener_destroy(l);
	return 0;
}

Test(endpoint, stale_socket_replaced_by_one_listener)
{
	/* Several listeners find the same stale file at once: exactly one takes
	 * it over, the others see a live listener (the directory lock). */
	char dir[64];
	make_dir(dir, sizeof dir);
	struct race *r = tu_shared_alloc(sizeof *r);
	snprintf(r->path, sizeof r->path, "%s/raced", dir);
	struct stale_arg sa;
	snprintf(sa.path, sizeof sa.path, "%s", r->path);
	int st = tu_wait(tu_fork(listen_and_crash, &sa), 20000);
	cr_assert(st != -1 && WIFSIGNALED(st), "status %#x", st);
	pid_t pids[NRACERS];
	for (int i = 0; i < NRACERS; i++) {
		atomic_store(&r->rc[i], 1);
		struct racer me = { .r = r, .me = i };
		pids[i] = tu_fork(race_listen, &me);
	}
	atomic_store(&r->go, 1);
	for (int i = 0; i < 20000 && atomic_load(&r->ready) < NRACERS; i++)
		tu_sleep_ms(1);
	int won = 0;
	for (int i = 0; i < NRACERS; i++) {
		int rc = atomic_load(&r->rc[i]);
		cr_expect(rc == 0 || rc == -EADDRINUSE, "racer %d: %d", i, rc);
		won += rc == 0;
	}
	cr_expect_eq(won, 1, "%d listeners hold the name", won);
	/* The winner really serves the name. */
	struct ferry_connect_opts co = { .ns = FERRY_ENDPOINT_PATH };
	ferry_port *p = NULL;
	cr_expect_eq(ferry_connect(&p, r->path, &co, 100 * MS), -ETIMEDOUT, "%s", ferry_errmsg());
	atomic_store(&r->done, 1);
	for (int i = 0; i < NRACERS; i++)
		expect_exit0(pids[i], "racer");
	struct stat sb;
	cr_expect_eq(lstat(r->path, &sb), -1, "the winner left its file behind");
	cr_expect_eq(rmdir(dir), 0, "%s", strerror(errno));
	tu_shared_free(r, sizeof *r);
}

/* ---- closing the listener ---- */

struct acc_arg {
	ferry_listener *l;
	int rc;
};

static void *accept_forever(void *arg)
{
	struct acc_arg *a = arg;
	ferry_port *p = NULL;
	a->rc = ferry_accept(a->l, &p, FERRY_FOREVER);
	if (p)
		ferry_port_destroy(p);
	return NULL;
}

Test(endpoint, close_wakes_blocked_accept)
{
	const char *name = ep_name("wake");
	ferry_listener *l;
	cr_assert_eq(ferry_listen(&l, name, NULL), 0, "%s", ferry_errmsg());
	/* Two threads wait in accept on one listener. */
	struct acc_arg a[2] = { { .l = l, .rc = 1 }, { .l = l, .rc = 1 } };
	pthread_t th[2];
	for (int i = 0; i < 2; i++)
		cr_assert_eq(pthread_create(&th[i], NULL, accept_forever, &a[i]), 0);
	tu_sleep_ms(50);
	ferry_listener_close(l);
	for (int i = 0; i < 2; i++) {
		pthread_join(th[i], NULL);
		cr_expect_eq(a[i].rc, -EPIPE, "blocked accept %d returned %d", i, a[i].rc);
	}
	ferry_port *p;
	cr_expect_eq(ferry_accept(l, &p, 0), -EPIPE);
	struct pollfd pfd = { .fd = ferry_listener_fd(l), .events = POLLIN };
	cr_expect_eq(poll(&pfd, 1, 0), 1);
	cr_expect(pfd.revents & POLLHUP, "revents %#x", pfd.revents);
	/* New clients are refused at once. */
	cr_expect_eq(ferry_connect(&p, name, NULL, T10S), -ECONNREFUSED, "%s", ferry_errmsg());
	ferry_listener_close(l); /* idempotent */
	ferry_listener_destroy(l);
}

static int child_destroys_listener(void *arg)
{
	ferry_listener_destroy(arg);
	return 0;
}

Test(endpoint, forked_child_close_leaves_listener)
{
	/* A child that inherited the listener and closes its copy neither
	 * removes the file nor shuts the shared socket down. */
	char dir[64], path[128];
	make_dir(dir, sizeof dir);
	snprintf(path, sizeof path, "%s/inherited", dir);
	struct ferry_listen_opts o = { .ns = FERRY_ENDPOINT_PATH };
	ferry_listener *l;
	cr_assert_eq(ferry_listen(&l, path, &o), 0, "%s", ferry_errmsg());
	pid_t pid = tu_fork(child_destroys_listener, l);
	expect_exit0(pid, "child");
	struct stat st;
	cr_expect_eq(lstat(path, &st), 0, "the child removed the parent's socket file");
	echo_once(l, path, FERRY_ENDPOINT_PATH, 1);
	ferry_listener_destroy(l);
	cr_expect_eq(lstat(path, &st), -1);
	cr_expect_eq(rmdir(dir), 0, "%s", strerror(errno));
}

static int client_expect_connrefused(void *arg)
{
	struct client *c = arg;
	ferry_port *p = NULL;
	int rc = ferry_connect(&p, c->name, NULL, T10S);
	if (p)
		ferry_port_destroy(p);
	return rc == -ECONNREFUSED ? 0 : 50;
}

Test(endpoint, close_disconnects_queued_client_keeps_ports)
{
	const char *name = ep_name("queued");
	ferry_listener *l;
	cr_assert_eq(ferry_listen(&l, name, NULL), 0, "%s", ferry_errmsg());
	/* An accepted client first... */
	struct client ce = client_for(name, 0);
	pid_t pe = tu_fork(client_echo, &ce);
	ferry_port *p = accept_ok(l);
	/* ...then one left waiting in the backlog. */
	struct client cq = client_for(name, 0);
	pid_t pq = tu_fork(client_expect_connrefused, &cq);
	struct pollfd pfd = { .fd = ferry_listener_fd(l), .events = POLLIN };
	cr_assert_eq(poll(&pfd, 1, 10000), 1, "the second client never queued");
	int64_t t0 = tu_now_ns();
	ferry_listener_close(l);
	expect_exit0(pq, "queued client");
	cr_log_info("queued client saw the close after %lld us", (long long)(tu_now_ns() - t0) / 1000);
	/* The port accepted before goes on working. */
	check_echo(p, 9);
	ferry_msg *m;
	cr_expect_eq(ferry_port_recv(p, &m, T10S), -EPIPE);
	ferry_port_destroy(p);
	expect_exit0(pe, "echo client");
	ferry_listener_destroy(l);
}

/* ---- peers that die ---- */

#define NPOSTED 200

struct death_arg {
	char name[128];
	int kill;             /* SIGKILL ourselves rather than _exit */
	_Atomic int *ready;   /* dying listener: listening now */
};

/* Post NPOSTED messages (raw and clone alternately), then die without
 * closing the port. */
static int post_and_die(ferry_port *p, int kill_self)
{
	for (int i = 0; i < NPOSTED; i++) {
		int rc;
		if (i & 1) {
			ferry_value *v = ferry_value_int(i);
			rc = ferry_port_post(p, v, NULL, T10S);
			ferry_value_free(v);
		} else {
			int32_t x = i;
			rc = ferry_port_post_bytes(p, &x, sizeof x, T10S);
		}
		if (rc)
			return 60;
	}
	if (kill_self)
		raise(SIGKILL);
	_exit(0);
}

static void drain_then_epipe(ferry_port *p)
{
	for (int i = 0; i < NPOSTED; i++) {
		ferry_msg *m = recv_ok(p);
		if (i & 1) {
			int64_t v = -1;
			cr_assert_eq(ferry_value_get_int(ferry_msg_value(m), &v), 0);
			cr_assert_eq(v, i);
		} else {
			int32_t x = -1;
			cr_assert_eq(ferry_msg_len(m), sizeof x);
			memcpy(&x, ferry_msg_data(m), sizeof x);
			cr_assert_eq(x, i);
		}
		ferry_msg_free(m);
	}
	ferry_msg *m = NULL;
	int rc = ferry_port_recv(p, &m, T10S);
	cr_expect_eq(rc, -EPIPE, "after the last message: %d %s", rc, ferry_errmsg());
	cr_expect_eq(ferry_port_post_bytes(p, "x", 1, 0), -EPIPE);
}

static int dying_client(void *arg)
{
	struct death_arg *a = arg;
	ferry_port *p;
	if (ferry_connect(&p, a->name, NULL, T10S))
		return 61;
	return post_and_die(p, a->kill);
}

static void client_dies(int kill_self)
{
	struct death_arg a = { .kill = kill_self };
	snprintf(a.name, sizeof a.name, "%s", ep_name("dyingc"));
	ferry_listener *l;
	cr_assert_eq(ferry_listen(&l, a.name, NULL), 0, "%s", ferry_errmsg());
	pid_t pid = tu_fork(dying_client, &a);
	ferry_port *p = accept_ok(l);
	int st = tu_wait(pid, 20000);
	if (kill_self)
		cr_expect(st != -1 && WIFSIGNALED(st) && WTERMSIG(st) == SIGKILL, "status %#x", st);
	else
		cr_expect(st != -1 && WIFEXITED(st) && WEXITSTATUS(st) == 0, "status %#x", st);
	drain_then_epipe(p);
	ferry_port_destroy(p);
	ferry_listener_destroy(l);
	expect_dev_shm_clean();
}

Test(endpoint, client_exits_epipe_after_messages) { client_dies(0); }
Test(endpoint, client_killed_epipe_after_messages) { client_dies(1); }

static int dying_listener(void *arg)
{
	struct death_arg *a = arg;
	ferry_listener *l;
	if (ferry_listen(&l, a->name, NULL))
		return 70;
	atomic_store(a->ready, 1);
	ferry_port *p;
	if (ferry_accept(l, &p, T10S))
		return 71;
	return post_and_die(p, a->kill);
}

static void listener_dies(int kill_self)
{
	_Atomic int *ready = tu_shared_alloc(sizeof *ready);
	struct death_arg a = { .kill = kill_self, .ready = ready };
	snprintf(a.name, sizeof a.name, "%s", ep_name("dyingl"));
	pid_t pid = tu_fork(dying_listener, &a);
	cr_assert(wait_flag(ready), "the listener child never listened");
	ferry_port *p = NULL;
	int rc = ferry_connect(&p, a.name, NULL, T10S);
	cr_assert_eq(rc, 0, "%s", ferry_errmsg());
	int st = tu_wait(pid, 20000);
	cr_expect(st != -1 && (kill_self ? WIFSIGNALED(st) : WIFEXITED(st)), "status %#x", st);
	drain_then_epipe(p);
	ferry_port_destroy(p);
	/* Its name died with it. */
	cr_expect_eq(ferry_connect(&p, a.name, NULL, T10S), -ECONNREFUSED, "%s", ferry_errmsg());
	tu_shared_free(ready, sizeof *ready);
	expect_dev_shm_clean();
}

Test(endpoint, listener_exits_epipe_after_messages) { listener_dies(0); }
Test(endpoint, listener_killed_epipe_after_messages) { listener_dies(1); }

/* ---- timeouts ---- */

Test(endpoint, accept_timeouts)
{
	ferry_listener *l;
	cr_assert_eq(ferry_listen(&l, ep_name("idle"), NULL), 0, "%s", ferry_errmsg());
	ferry_port *p = (ferry_port *)1;
	cr_expect_eq(ferry_accept(l, &p, 0), -EAGAIN);
	cr_expect_null(p);
	int64_t t0 = tu_now_ns();
	cr_expect_eq(ferry_accept(l, &p, 30 * MS), -ETIMEDOUT);
	cr_expect_geq(tu_now_ns() - t0, 30 * MS, "returned early");
	cr_expect(strstr(ferry_errmsg(), "no client"), "%s", ferry_errmsg());
	struct pollfd pfd = { .fd = ferry_listener_fd(l), .events = POLLIN };
	cr_expect_eq(poll(&pfd, 1, 0), 0, "idle listener is readable");
	ferry_listener_destroy(l);
}

Test(endpoint, connect_timeouts)
{
	ferry_port *p = (ferry_port *)1;
	/* Nobody listens. */
	cr_expect_eq(ferry_connect(&p, ep_name("nobody"), NULL, T10S), -ECONNREFUSED);
	cr_expect_null(p);
	cr_expect(strstr(ferry_errmsg(), "nobody listens"), "%s", ferry_errmsg());
	struct ferry_connect_opts po = { .ns = FERRY_ENDPOINT_PATH };
	cr_expect_eq(ferry_connect(&p, "/tmp/ferry-no-such-dir/x", &po, T10S), -ENOENT);
	/* A listener that never accepts: the answer never comes. */
	const char *name = ep_name("deaf");
	ferry_listener *l;
	cr_assert_eq(ferry_listen(&l, name, NULL), 0, "%s", ferry_errmsg());
	int64_t t0 = tu_now_ns();
	cr_expect_eq(ferry_connect(&p, name, NULL, 30 * MS), -ETIMEDOUT, "%s", ferry_errmsg());
	cr_expect_geq(tu_now_ns() - t0, 30 * MS, "returned early");
	cr_expect_eq(ferry_connect(&p, name, NULL, 0), -EAGAIN, "%s", ferry_errmsg());
	/* Both gave up: the listener drops them and has nobody to accept. */
	cr_expect_eq(ferry_accept(l, &p, 0), -EAGAIN, "%s", ferry_errmsg());
	struct ferry_listener_stats st;
	ferry_listener_stats(l, &st);
	cr_expect_eq(st.dropped, 2);
	cr_expect_eq(st.accepted, 0);
	ferry_listener_destroy(l);
}

Test(endpoint, pollable_fd_thread)
{
	const char *name = ep_name("poll");
	ferry_listener *l;
	cr_assert_eq(ferry_listen(&l, name, NULL), 0, "%s", ferry_errmsg());
	int fd = ferry_listener_fd(l);
	cr_assert_geq(fd, 0);
	struct client c = client_for(name, 0);
	pthread_t th;
	cr_assert_eq(pthread_create(&th, NULL, client_thread, &c), 0);
	struct pollfd pfd = { .fd = fd, .events = POLLIN };
	cr_assert_eq(poll(&pfd, 1, 10000), 1, "no client showed up");
	cr_expect(pfd.revents & POLLIN);
	ferry_port *p = NULL;
	cr_assert_eq(ferry_accept(l, &p, 0), 0, "%s", ferry_errmsg());
	check_echo(p, 3);
	ferry_port_destroy(p);
	pthread_join(th, NULL);
	cr_expect_eq(c.rc, 0);
	ferry_listener_destroy(l);
}

/* ---- bad arguments ---- */

static void expect_einval(int rc, const char *what)
{
	cr_expect_eq(rc, -EINVAL, "%s: %d", what, rc);
	cr_expect_neq(ferry_errmsg()[0], '\0', "%s: no message", what);
}

Test(endpoint, bad_args)
{
	ferry_listener *l = (ferry_listener *)1;
	ferry_port *p = (ferry_port *)1;
	char longname[FERRY_ENDPOINT_NAME_MAX + 2];
	memset(longname, 'n', sizeof longname - 1);
	longname[sizeof longname - 1] = '\0';
	char longpath[FERRY_ENDPOINT_PATH_MAX + 2];
	memset(longpath, 'p', sizeof longpath - 1);
	longpath[0] = '/';
	longpath[sizeof longpath - 1] = '\0';
	struct ferry_listen_opts po = { .ns = FERRY_ENDPOINT_PATH };
	struct ferry_connect_opts cpo = { .ns = FERRY_ENDPOINT_PATH };

	expect_einval(ferry_listen(NULL, "x", NULL), "listen NULL out");
	expect_einval(ferry_listen(&l, NULL, NULL), "listen NULL name");
	cr_expect_null(l);
	expect_einval(ferry_listen(&l, "", NULL), "listen empty name");
	expect_einval(ferry_listen(&l, longname, NULL), "listen long name");
	cr_expect(strstr(ferry_errmsg(), "longer"), "%s", ferry_errmsg());
	expect_einval(ferry_listen(&l, longpath, &po), "listen long path");
	expect_einval(ferry_listen(&l, "/tmp/", &po), "listen path of a directory");
	struct ferry_listen_opts bad = { .ns = (enum ferry_endpoint_ns)7 };
	expect_einval(ferry_listen(&l, "x", &bad), "listen unknown ns");
	bad = (struct ferry_listen_opts){ .nallow_uids = 2 };
	expect_einval(ferry_listen(&l, "x", &bad), "listen NULL allow list");
	bad = (struct ferry_listen_opts){ .ns = FERRY_ENDPOINT_PATH, .mode = 04755 };
	expect_einval(ferry_listen(&l, "/tmp/x", &bad), "listen setuid mode");
	bad = (struct ferry_listen_opts){ .backlog = -1 };
	expect_einval(ferry_listen(&l, "x", &bad), "listen negative backlog");
	struct ferry_channel_opts co = { .ring_bytes = 1000 };
	bad = (struct ferry_listen_opts){ .channel = &co };
	expect_einval(ferry_listen(&l, "x", &bad), "listen bad ring");
	cr_expect_null(l);

	expect_einval(ferry_accept(NULL, &p, 0), "accept NULL listener");
	cr_expect_null(p);
	cr_assert_eq(ferry_listen(&l, ep_name("args"), NULL), 0, "%s", ferry_errmsg());
	expect_einval(ferry_accept(l, NULL, 0), "accept NULL port");
	expect_einval(ferry_listener_stats(l, NULL), "stats NULL");
	expect_einval(ferry_listener_stats(NULL, &(struct ferry_listener_stats){ 0 }), "stats NULL l");
	ferry_listener_destroy(l);
	expect_einval(ferry_listener_fd(NULL), "fd NULL");
	ferry_listener_close(NULL);
	ferry_listener_destroy(NULL);

	p = (ferry_port *)1;
	expect_einval(ferry_connect(NULL, "x", NULL, 0), "connect NULL port");
	expect_einval(ferry_connect(&p, NULL, NULL, 0), "connect NULL name");
	cr_expect_null(p);
	expect_einval(ferry_connect(&p, "", NULL, 0), "connect empty name");
	expect_einval(ferry_connect(&p, longname, NULL, 0), "connect long name");
	expect_einval(ferry_connect(&p, longpath, &cpo, 0), "connect long path");
	struct ferry_connect_opts cbad = { .nallow_uids = 1 };
	expect_einval(ferry_connect(&p, "x", &cbad, 0), "connect NULL allow list");
	/* The longest names that fit work (unique to this process). */
	longname[FERRY_ENDPOINT_NAME_MAX] = '\0';
	int n = snprintf(longname, sizeof longname, "%d-", (int)getpid());
	longname[n] = 'n';
	cr_expect_eq(ferry_listen(&l, longname, NULL), 0, "%s", ferry_errmsg());
	ferry_listener_destroy(l);
}

/* ---- hostile clients ---- */

static void abstract_addr(struct sockaddr_un *a, socklen_t *len, const char *name)
{
	memset(a, 0, sizeof *a);
	a->sun_family = AF_UNIX;
	int n = snprintf(a->sun_path + 1, sizeof a->sun_path - 1, "ferry/%s", name);
	*len = (socklen_t)(offsetof(struct sockaddr_un, sun_path) + 1 + (size_t)n);
}

static int raw_connect(const char *name)
{
	struct sockaddr_un a;
	socklen_t len;
	abstract_addr(&a, &len, name);
	int s = socket(AF_UNIX, SOCK_SEQPACKET | SOCK_CLOEXEC, 0);
	cr_assert_geq(s, 0);
	cr_assert_eq(connect(s, (struct sockaddr *)&a, len), 0, "%s", strerror(errno));
	return s;
}

/* Send @len bytes of garbage with @fd attached (if >= 0). */
static void send_garbage(int s, size_t len, int fd)
{
	char *buf = malloc(len);
	for (size_t i = 0; i < len; i++)
		buf[i] = (char)(i * 131 + 7);
	struct iovec iov = { buf, len };
	union {
		struct cmsghdr h;
		char b[CMSG_SPACE(sizeof(int))];
	} ctl;
	struct msghdr mh = { .msg_iov = &iov, .msg_iovlen = 1 };
	if (fd >= 0) {
		memset(&ctl, 0, sizeof ctl);
		mh.msg_control = ctl.b;
		mh.msg_controllen = sizeof ctl.b;
		struct cmsghdr *c = CMSG_FIRSTHDR(&mh);
		c->cmsg_level = SOL_SOCKET;
		c->cmsg_type = SCM_RIGHTS;
		c->cmsg_len = CMSG_LEN(sizeof(int));
		memcpy(CMSG_DATA(c), &fd, sizeof fd);
	}
	cr_assert_eq(sendmsg(s, &mh, MSG_NOSIGNAL), (ssize_t)len, "%s", strerror(errno));
	free(buf);
}

Test(endpoint, hostile_clients_do_not_hurt_listener)
{
	const char *name = ep_name("hostile");
	ferry_listener *l;
	cr_assert_eq(ferry_listen(&l, name, NULL), 0, "%s", ferry_errmsg());
	int pipefd[2];
	cr_assert_eq(pipe2(pipefd, O_CLOEXEC), 0);

	/* A: connects and hangs up at once. */
	int a = raw_connect(name);
	close(a);
	/* B: sends garbage with an fd attached, never reads. */
	int b = raw_connect(name);
	send_garbage(b, 64, pipefd[0]);
	/* C: sends a big garbage message, never reads. */
	int c = raw_connect(name);
	send_garbage(c, 60000, -1);
	/* D: sends a forged ferry frame with fds, never reads. */
	int d = raw_connect(name);
	int two[2] = { pipefd[0], pipefd[1] };
	cr_assert_eq(ferry_fds_send(d, "garbage!", 8, two, 2, 0), 0, "%s", ferry_errmsg());

	int fds_before = tu_count_fds();
	/* Nothing of theirs is ever read: B, C and D look like clients that
	 * have not read their channel yet, A is dropped; nothing blocks. */
	ferry_port *pb = NULL, *pc = NULL, *pd = NULL, *px = NULL;
	int64_t t0 = tu_now_ns();
	cr_assert_eq(ferry_accept(l, &pb, 0), 0, "%s", ferry_errmsg());
	cr_assert_eq(ferry_accept(l, &pc, 0), 0, "%s", ferry_errmsg());
	cr_assert_eq(ferry_accept(l, &pd, 0), 0, "%s", ferry_errmsg());
	cr_expect_eq(ferry_accept(l, &px, 0), -EAGAIN, "%s", ferry_errmsg());
	cr_log_info("three hostile accepts took %lld us", (long long)(tu_now_ns() - t0) / 1000);
	/* Each port holds a segment fd and its control socket, nothing more:
	 * no fd the clients sent was installed here. */
	cr_expect_eq(tu_count_fds(), fds_before + 3 * 2, "the listener holds fds it should not");
	struct ferry_listener_stats st;
	ferry_listener_stats(l, &st);
	cr_expect_eq(st.accepted, 3);
	cr_expect_eq(st.dropped, 1);

	/* They hang up: their channels die with their connections. */
	close(b);
	close(c);
	close(d);
	ferry_msg *m;
	cr_expect_eq(ferry_port_recv(pb, &m, T10S), -EPIPE);
	cr_expect_eq(ferry_port_recv(pc, &m, T10S), -EPIPE);
	cr_expect_eq(ferry_port_recv(pd, &m, T10S), -EPIPE);
	ferry_port_destroy(pb);
	ferry_port_destroy(pc);
	ferry_port_destroy(pd);
	close(pipefd[0]);
	close(pipefd[1]);
	/* And the next well-behaved client is served as usual. */
	echo_once(l, name, 0, 1);
	ferry_listener_destroy(l);
}

static int garbage_and_stay(void *arg)
{
	/* A hostile process: garbage, then it sits on the connection. (No
	 * Criterion asserts in a child.) */
	struct client *c = arg;
	struct sockaddr_un a;
	socklen_t len;
	abstract_addr(&a, &len, c->name);
	int s = socket(AF_UNIX, SOCK_SEQPACKET | SOCK_CLOEXEC, 0);
	if (s < 0 || connect(s, (struct sockaddr *)&a, len) < 0)
		return 90;
	char junk[100];
	memset(junk, 0xa5, sizeof junk);
	if (send(s, junk, sizeof junk, MSG_NOSIGNAL) != (ssize_t)sizeof junk)
		return 91;
	tu_sleep_ms(2000);
	_exit(0);
}

Test(endpoint, garbage_client_process_does_not_block_accept)
{
	const char *name = ep_name("garbage");
	ferry_listener *l;
	cr_assert_eq(ferry_listen(&l, name, NULL), 0, "%s", ferry_errmsg());
	struct client c = client_for(name, 0);
	pid_t pid = tu_fork(garbage_and_stay, &c);
	/* Its accept returns at once, and a real client comes next. */
	ferry_port *p = accept_ok(l);
	int64_t t0 = tu_now_ns();
	echo_once(l, name, 0, 1);
	cr_log_info("next client served in %lld us", (long long)(tu_now_ns() - t0) / 1000);
	kill(pid, SIGKILL);
	tu_wait(pid, 20000);
	ferry_msg *m;
	cr_expect_eq(ferry_port_recv(p, &m, T10S), -EPIPE);
	ferry_port_destroy(p);
	ferry_listener_destroy(l);
}

/* ---- hostile listeners ---- */

enum { H_RAW, H_BADMAGIC, H_THREEFDS, H_PIPEFDS, H_HANGUP, H_BUSY, H_VERSION, H_NCASES };

struct hello {
	uint32_t magic;
	uint16_t version;
	uint16_t side;
	int32_t status;
	uint32_t pad;
	uint64_t max_message;
};

struct hostile_arg {
	int lfd;
};

static int hostile_listener(void *arg)
{
	struct hostile_arg *a = arg;
	int pfd[2];
	if (pipe(pfd))
		return 80;
	for (int i = 0; i < H_NCASES; i++) {
		int c = accept(a->lfd, NULL, NULL);
		if (c < 0)
			return 81;
		struct hello h = { .magic = 0x31504546u, .version = 1, .side = 1 };
		int three[3] = { pfd[0], pfd[1], pfd[0] };
		switch (i) {
		case H_RAW:
			if (send(c, "not a frame at all, 24 b", 24, MSG_NOSIGNAL) != 24)
				return 82;
			break;
		case H_BADMAGIC:
			h.magic = 0xdeadbeef;
			ferry_fds_send(c, &h, sizeof h, pfd, 2, T10S);
			break;
		case H_THREEFDS:
			ferry_fds_send(c, &h, sizeof h, three, 3, T10S);
			break;
		case H_PIPEFDS:
			ferry_fds_send(c, &h, sizeof h, pfd, 2, T10S);
			break;
		case H_HANGUP:
			break;
		case H_BUSY:
			h.status = -EBUSY;
			ferry_fds_send(c, &h, sizeof h, NULL, 0, T10S);
			break;
		case H_VERSION:
			h.version = 9;
			ferry_fds_send(c, &h, sizeof h, pfd, 2, T10S);
			break;
		}
		close(c);
	}
	_exit(0);
}

Test(endpoint, hostile_listener_answers_rejected)
{
	const char *name = ep_name("evil");
	struct sockaddr_un sa;
	socklen_t len;
	abstract_addr(&sa, &len, name);
	int lfd = socket(AF_UNIX, SOCK_SEQPACKET | SOCK_CLOEXEC, 0);
	cr_assert_geq(lfd, 0);
	cr_assert_eq(bind(lfd, (struct sockaddr *)&sa, len), 0, "%s", strerror(errno));
	cr_assert_eq(listen(lfd, 8), 0);
	struct hostile_arg ha = { .lfd = lfd };
	pid_t pid = tu_fork(hostile_listener, &ha);
	close(lfd);
	static const int want[H_NCASES] = {
		[H_RAW] = -EBADMSG, [H_BADMAGIC] = -EBADMSG, [H_THREEFDS] = -EBADMSG,
		[H_PIPEFDS] = -EBADMSG, [H_HANGUP] = -ECONNREFUSED, [H_BUSY] = -EBUSY,
		[H_VERSION] = FERRY_EVERSION,
	};
	for (int i = 0; i < H_NCASES; i++) {
		ferry_port *p = NULL;
		int rc = ferry_connect(&p, name, NULL, T10S);
		cr_expect_eq(rc, want[i], "case %d: %d (%s)", i, rc, ferry_errmsg());
		cr_expect_null(p);
		cr_log_info("case %d: %s", i, ferry_errmsg());
	}
	expect_exit0(pid, "hostile listener");
	/* fds: the baseline check in .fini says none of theirs stayed here. */
}
