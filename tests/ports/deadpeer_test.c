/*
 * tests/ports/deadpeer_test.c - a dead peer process is detected exactly.
 *
 * A receiver blocked with no deadline (and a sender blocked on a full ring)
 * whose peer process is SIGKILLed gets every message the peer fully posted,
 * then -EPIPE; while the peer lives, the blocked thread does not wake at all
 * (no liveness slices: its voluntary context switches are counted from
 * /proc). The peer is a forked child holding one end, a process the port
 * travelled to in a message, or a client of a named endpoint; both sleeping
 * modes (block, adaptive). A stopped (SIGSTOP) peer is alive.
 *
 * Speed is never asserted: the kill-to--EPIPE time is only logged; a
 * regression that misses the death hangs, and the suite's timeout fails it.
 */
#include <ferry.h>

#include "ports/port_int.h"
#include "util/util.h"

#include <criterion/criterion.h>
#include <errno.h>
#include <pthread.h>
#include <signal.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/syscall.h>
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

TestSuite(deadpeer, .init = setup, .fini = teardown, .timeout = 60);

#define MS (1000LL * 1000)
#define SEC (1000LL * MS)
#define NMSG 40 /* raw messages the peer posts, then one clone */

struct shared {
	atomic_int posted; /* the peer posted everything it will */
	atomic_int go;     /* stopped_peer: post one more, then close */
};

/* Voluntary context switches of thread @tid: how often it went to sleep. */
static long ctxsw(pid_t tid)
{
	char path[64], line[256];
	snprintf(path, sizeof path, "/proc/self/task/%d/status", (int)tid);
	FILE *f = fopen(path, "r");
	if (!f)
		return -1;
	long v = -1;
	while (fgets(line, sizeof line, f))
		if (sscanf(line, "voluntary_ctxt_switches: %ld", &v) == 1)
			break;
	fclose(f);
	return v;
}

static void await_flag(atomic_int *f, int want)
{
	int64_t until = tu_now_ns() + 20 * SEC;
	while (atomic_load(f) < want) {
		cr_assert_lt(tu_now_ns(), until, "the peer never got ready");
		tu_sleep_ms(1);
	}
}

/* ---- the peer side, in a child ---- */

/* Post NMSG raw messages and a clone, then live until killed (or, with
 * @then_close, wait for go, post one more and close). */
static int post_all(ferry_port *p, struct shared *sh, int then_close)
{
	for (int i = 0; i < NMSG; i++)
		if (ferry_port_post_bytes(p, &i, sizeof i, 10 * SEC))
			return 10;
	ferry_value *v = ferry_value_str("last words");
	int rc = ferry_port_post(p, v, NULL, 10 * SEC);
	ferry_value_free(v);
	if (rc)
		return 11;
	atomic_store(&sh->posted, 1);
	while (!then_close)
		pause();
	while (!atomic_load(&sh->go))
		tu_sleep_ms(1);
	int extra = NMSG;
	if (ferry_port_post_bytes(p, &extra, sizeof extra, 10 * SEC))
		return 12;
	ferry_port_destroy(p);
	return 0;
}

/* ---- the receiving side ---- */

struct rx {
	ferry_port *p;
	atomic_int got;
	atomic_int tid;
	atomic_int rc; /* read while the thread may still run */
	int order_ok;
	int64_t t_end;
};

static void *rx_main(void *arg)
{
	struct rx *r = arg;
	atomic_store(&r->tid, (int)syscall(SYS_gettid));
	r->order_ok = 1;
	for (;;) {
		ferry_msg *m = NULL;
		int rc = ferry_port_recv(r->p, &m, FERRY_FOREVER);
		if (rc) {
			r->t_end = tu_now_ns();
			atomic_store(&r->rc, rc);
			return NULL;
		}
		int n = atomic_load(&r->got);
		if (n < NMSG) {
			if (ferry_msg_len(m) != sizeof n || memcmp(ferry_msg_data(m), &n, sizeof n) != 0)
				r->order_ok = 0;
		} else if (n == NMSG) {
			const ferry_value *v = ferry_msg_value(m);
			size_t len = 0;
			const char *s = v ? ferry_value_get_str(v, &len) : NULL;
			if (!s || len != 10 || memcmp(s, "last words", 10) != 0)
				r->order_ok = 0;
		}
		ferry_msg_free(m);
		atomic_fetch_add(&r->got, 1);
	}
}

/*
 * @p's peer (process @pid) posted everything; a thread receives it all and
 * blocks with no deadline. It must not wake while the peer lives, and must
 * read -EPIPE once the peer is SIGKILLed.
 */
static void kill_blocked_receiver(ferry_port *p, pid_t pid, struct shared *sh, enum ferry_wait_mode mode)
{
	cr_assert_eq(ferry_port_set_wait(p, mode, 0), 0);
	await_flag(&sh->posted, 1);
	struct rx r = { .p = p };
	pthread_t th;
	cr_assert_eq(pthread_create(&th, NULL, rx_main, &r), 0);
	int64_t until = tu_now_ns() + 20 * SEC;
	while (atomic_load(&r.got) < NMSG + 1) {
		cr_assert_lt(tu_now_ns(), until, "only %d of %d messages arrived", atomic_load(&r.got), NMSG + 1);
		tu_sleep_ms(1);
	}
	tu_sleep_ms(100); /* asleep by now, whatever the spin budget */
	pid_t tid = (pid_t)atomic_load(&r.tid);
	long c0 = ctxsw(tid);
	tu_sleep_ms(400);
	long c1 = ctxsw(tid);
	cr_expect(c0 >= 0 && c1 >= 0, "no /proc status for the receiver");
	/* One sleep at most (the one it was about to start); a sliced sleep
	 * would wake every FERRY_PORT_LIVENESS_NS (8 times in 400 ms). */
	cr_expect_leq(c1 - c0, 2, "a receiver blocked on a live peer woke %ld times in 400 ms", c1 - c0);
	cr_expect_eq(atomic_load(&r.rc), 0, "the receiver returned %d while the peer lives",
		     atomic_load(&r.rc));
	int64_t t0 = tu_now_ns();
	cr_assert_eq(kill(pid, SIGKILL), 0);
	pthread_join(th, NULL);
	int rc = atomic_load(&r.rc);
	cr_assert_eq(rc, -EPIPE, "the receiver got %d (%s), not -EPIPE", rc, ferry_strerror(rc));
	cr_assert_eq(atomic_load(&r.got), NMSG + 1, "%d of %d messages before -EPIPE", atomic_load(&r.got),
		     NMSG + 1);
	cr_assert(r.order_ok, "the messages arrived wrong");
	cr_log_info("kill to -EPIPE (%s): %lld us", mode == FERRY_WAIT_BLOCK ? "block" : "adaptive",
		    (long long)(r.t_end - t0) / 1000);
	ferry_msg *m = NULL;
	cr_assert_eq(ferry_port_recv(p, &m, FERRY_FOREVER), -EPIPE, "-EPIPE is not final");
	int st;
	cr_assert_eq(waitpid(pid, &st, 0), pid);
	cr_assert(WIFSIGNALED(st) && WTERMSIG(st) == SIGKILL, "the peer ended on its own: 0x%x", st);
}

/* A channel whose other end lives in a forked child running @body (which
 * keeps only that end and leaves with _exit); *mine gets this end. */
typedef int (*peer_body)(ferry_port *, struct shared *, int);
static pid_t fork_peer(ferry_port **mine, const struct ferry_channel_opts *o, peer_body body,
		       struct shared *sh, int arg)
{
	ferry_port *theirs;
	cr_assert_eq(ferry_channel(mine, &theirs, o), 0, "%s", ferry_errmsg());
	fflush(NULL);
	pid_t pid = fork();
	cr_assert_geq(pid, 0);
	if (pid == 0) {
		ferry__port_keep_only(theirs);
		_exit(body(theirs, sh, arg));
	}
	ferry__port_forget(theirs);
	return pid;
}

/* ---- a forked child holds the other end ---- */

static void forked_peer(enum ferry_wait_mode mode)
{
	struct shared *sh = tu_shared_alloc(sizeof *sh);
	ferry_port *a;
	pid_t pid = fork_peer(&a, NULL, post_all, sh, 0);
	kill_blocked_receiver(a, pid, sh, mode);
	ferry_port_destroy(a);
	tu_shared_free(sh, sizeof *sh);
}

Test(deadpeer, forked_peer_killed_block) { forked_peer(FERRY_WAIT_BLOCK); }
Test(deadpeer, forked_peer_killed_adaptive) { forked_peer(FERRY_WAIT_ADAPTIVE); }

/* ---- the port travelled in a message to the process that dies ---- */

static int take_port_and_post(ferry_port *ctl, struct shared *sh, int unused)
{
	(void)unused;
	ferry_msg *m = NULL;
	if (ferry_port_recv(ctl, &m, 10 * SEC))
		return 20;
	enum ferry_value_kind k;
	ferry_port *p = ferry_value_get_handle(ferry_msg_value(m), &k);
	if (!p || k != FERRY_VALUE_PORT || ferry_msg_keep(m, p))
		return 21;
	ferry_msg_free(m);
	return post_all(p, sh, 0);
}

static void travelled_port(enum ferry_wait_mode mode)
{
	struct shared *sh = tu_shared_alloc(sizeof *sh);
	ferry_port *c0;
	pid_t pid = fork_peer(&c0, NULL, take_port_and_post, sh, 0);
	/* The channel is made after the fork: only the message takes its
	 * other end to the child. */
	ferry_port *a, *b;
	cr_assert_eq(ferry_channel(&a, &b, NULL), 0, "%s", ferry_errmsg());
	ferry_value *v = ferry_value_handle(FERRY_VALUE_PORT, b);
	ferry_port *list[] = { b };
	struct ferry_xfer x = { .ports = list, .nports = 1 };
	cr_assert_eq(ferry_port_post(c0, v, &x, 10 * SEC), 0, "%s", ferry_errmsg());
	ferry_value_free(v);
	ferry_port_destroy(b); /* detached: only frees the handle */
	kill_blocked_receiver(a, pid, sh, mode);
	ferry_port_destroy(a);
	ferry_port_destroy(c0);
	tu_shared_free(sh, sizeof *sh);
}

Test(deadpeer, travelled_port_killed_block) { travelled_port(FERRY_WAIT_BLOCK); }
Test(deadpeer, travelled_port_killed_adaptive) { travelled_port(FERRY_WAIT_ADAPTIVE); }

/* ---- a client of a named endpoint dies ---- */

static const char *ep_name(void)
{
	static char buf[64];
	snprintf(buf, sizeof buf, "deadpeer-%d", (int)getpid());
	return buf;
}

struct client_arg {
	const char *name;
	struct shared *sh;
};

static int client(void *arg)
{
	struct client_arg *c = arg;
	ferry_port *p;
	if (ferry_connect(&p, c->name, NULL, 10 * SEC))
		return 30;
	return post_all(p, c->sh, 0);
}

static void endpoint_client(enum ferry_wait_mode mode)
{
	struct shared *sh = tu_shared_alloc(sizeof *sh);
	const char *name = ep_name();
	ferry_listener *l;
	cr_assert_eq(ferry_listen(&l, name, NULL), 0, "%s", ferry_errmsg());
	struct client_arg c = { name, sh };
	pid_t pid = tu_fork(client, &c);
	ferry_port *a = NULL;
	cr_assert_eq(ferry_accept(l, &a, 10 * SEC), 0, "%s", ferry_errmsg());
	kill_blocked_receiver(a, pid, sh, mode);
	ferry_port_destroy(a);
	ferry_listener_destroy(l);
	tu_shared_free(sh, sizeof *sh);
}

Test(deadpeer, endpoint_client_killed_block) { endpoint_client(FERRY_WAIT_BLOCK); }
Test(deadpeer, endpoint_client_killed_adaptive) { endpoint_client(FERRY_WAIT_ADAPTIVE); }

/* ---- a sender blocked on a full ring ---- */

static int never_reads(ferry_port *p, struct shared *sh, int unused)
{
	(void)p;
	(void)unused;
	atomic_store(&sh->posted, 1);
	for (;;)
		pause();
	return 0;
}

struct tx {
	ferry_port *p;
	atomic_int sent;
	atomic_int tid;
	atomic_int rc;
};

static void *tx_main(void *arg)
{
	struct tx *t = arg;
	atomic_store(&t->tid, (int)syscall(SYS_gettid));
	char buf[512] = { 0 };
	for (;;) {
		int rc = ferry_port_post_bytes(t->p, buf, sizeof buf, FERRY_FOREVER);
		if (rc) {
			atomic_store(&t->rc, rc);
			return NULL;
		}
		atomic_fetch_add(&t->sent, 1);
	}
}

static void blocked_sender(enum ferry_wait_mode mode)
{
	struct shared *sh = tu_shared_alloc(sizeof *sh);
	struct ferry_channel_opts o = { .ring_bytes = 4096 };
	ferry_port *a;
	pid_t pid = fork_peer(&a, &o, never_reads, sh, 0);
	cr_assert_eq(ferry_port_set_wait(a, mode, 0), 0);
	await_flag(&sh->posted, 1);
	struct tx t = { .p = a };
	pthread_t th;
	cr_assert_eq(pthread_create(&th, NULL, tx_main, &t), 0);
	/* The ring fills; the sender blocks. */
	int last = -1;
	int64_t until = tu_now_ns() + 20 * SEC;
	for (;;) {
		tu_sleep_ms(100);
		int n = atomic_load(&t.sent);
		if (n == last && n > 0)
			break;
		last = n;
		cr_assert_lt(tu_now_ns(), until, "the sender never blocked");
	}
	pid_t tid = (pid_t)atomic_load(&t.tid);
	long c0 = ctxsw(tid);
	tu_sleep_ms(400);
	long c1 = ctxsw(tid);
	cr_expect_leq(c1 - c0, 2, "a sender blocked on a live peer woke %ld times in 400 ms", c1 - c0);
	cr_expect_eq(atomic_load(&t.rc), 0, "the sender returned %d while the peer lives",
		     atomic_load(&t.rc));
	int64_t t0 = tu_now_ns();
	cr_assert_eq(kill(pid, SIGKILL), 0);
	pthread_join(th, NULL);
	int rc = atomic_load(&t.rc);
	cr_assert_eq(rc, -EPIPE, "the blocked sender got %d (%s), not -EPIPE", rc, ferry_strerror(rc));
	cr_log_info("kill to -EPIPE, blocked sender: %lld us", (long long)(tu_now_ns() - t0) / 1000);
	cr_assert_eq(ferry_port_post_bytes(a, "x", 1, FERRY_FOREVER), -EPIPE);
	waitpid(pid, NULL, 0);
	ferry_port_destroy(a);
	tu_shared_free(sh, sizeof *sh);
}

Test(deadpeer, blocked_sender_block) { blocked_sender(FERRY_WAIT_BLOCK); }
Test(deadpeer, blocked_sender_adaptive) { blocked_sender(FERRY_WAIT_ADAPTIVE); }

/* ---- a stopped peer is alive ---- */

static void stopped_peer(enum ferry_wait_mode mode)
{
	struct shared *sh = tu_shared_alloc(sizeof *sh);
	ferry_port *a;
	pid_t pid = fork_peer(&a, NULL, post_all, sh, 1);
	cr_assert_eq(ferry_port_set_wait(a, mode, 0), 0);
	await_flag(&sh->posted, 1);
	cr_assert_eq(kill(pid, SIGSTOP), 0);
	int st;
	cr_assert_eq(waitpid(pid, &st, WUNTRACED), pid);
	cr_assert(WIFSTOPPED(st));
	for (int i = 0; i < NMSG + 1; i++) {
		ferry_msg *m = NULL;
		cr_assert_eq(ferry_port_recv(a, &m, 10 * SEC), 0, "message %d: %s", i, ferry_errmsg());
		ferry_msg_free(m);
	}
	ferry_msg *m = NULL;
	int rc = ferry_port_recv(a, &m, 300 * MS);
	cr_assert_eq(rc, -ETIMEDOUT, "a stopped peer read as %d (%s)", rc, ferry_strerror(rc));
	cr_assert_eq(ferry_port_post_bytes(a, "still there", 11, 0), 0, "%s", ferry_errmsg());
	cr_assert_eq(kill(pid, SIGCONT), 0);
	atomic_store(&sh->go, 1);
	cr_assert_eq(ferry_port_recv(a, &m, 10 * SEC), 0, "%s", ferry_errmsg());
	int n = -1;
	cr_assert_eq(ferry_msg_len(m), sizeof n);
	memcpy(&n, ferry_msg_data(m), sizeof n);
	cr_assert_eq(n, NMSG);
	ferry_msg_free(m);
	cr_assert_eq(ferry_port_recv(a, &m, FERRY_FOREVER), -EPIPE, "%s", ferry_errmsg());
	cr_assert_eq(waitpid(pid, &st, 0), pid);
	cr_assert(WIFEXITED(st) && WEXITSTATUS(st) == 0, "the peer: 0x%x", st);
	ferry_port_destroy(a);
	tu_shared_free(sh, sizeof *sh);
}

Test(deadpeer, stopped_peer_is_alive_block) { stopped_peer(FERRY_WAIT_BLOCK); }
Test(deadpeer, stopped_peer_is_alive_adaptive) { stopped_peer(FERRY_WAIT_ADAPTIVE); }

/* ---- a peer thread of the same process: close reaches a blocked receiver ---- */

static void *closer(void *arg)
{
	tu_sleep_ms(200);
	ferry_port_close(arg);
	return NULL;
}

Test(deadpeer, thread_peer_close_wakes_forever_receiver)
{
	ferry_port *a, *b;
	cr_assert_eq(ferry_channel(&a, &b, NULL), 0, "%s", ferry_errmsg());
	cr_assert_eq(ferry_port_post_bytes(b, "bye", 3, 0), 0);
	pthread_t th;
	cr_assert_eq(pthread_create(&th, NULL, closer, b), 0);
	ferry_msg *m = NULL;
	cr_assert_eq(ferry_port_recv(a, &m, FERRY_FOREVER), 0);
	ferry_msg_free(m);
	cr_assert_eq(ferry_port_recv(a, &m, FERRY_FOREVER), -EPIPE, "%s", ferry_errmsg());
	pthread_join(th, NULL);
	ferry_port_destroy(a);
	ferry_port_destroy(b);
}
