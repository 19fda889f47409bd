/*
 * The epoll backend, for kernels or sandboxes without a usable io_uring.
 *
 * fds are level-triggered epoll registrations; the loop's own wake-up is an
 * eventfd; timers are the common heap, given to epoll_pwait2 as its timeout.
 *
 * epoll cannot watch a futex word, so helper threads do: each sleeps in
 * futex_waitv on its control word (index 0) plus the words it was
 * given, and when some of them fire it marks the entries done, sets the
 * backend's "done" flag and signals the loop (the eventfd). The loop
 * collects done entries in its inbox phase (e_drain). The control word is
 * bumped by the loop, under the mutex, whenever it changes a helper's set, so
 * the helper re-reads the set (futex_waitv returns 0 or -EAGAIN at once).
 *
 * Two kinds of helper, because futex_waitv reports only one woken index
 * (the last one) when several words were woken in the same sleep:
 *
 *  - MULTI: eventcount watches, up to 127 per thread (FUTEX_WAITV_MAX minus
 *    the control word). Exact wake attribution is not needed: a notify that
 *    found our sleeper bit always bumps the word, so after any return the
 *    helper compares every word with its key and reports those that moved.
 *    Nothing is lost while the helper is outside the kernel either: a moved
 *    word fails the next futex_waitv at once.
 *  - EXACT: one ferry_wait_async each, placed last in the vector (after the
 *    control word), so that "the last woken index" is always it when it was
 *    woken, with the deadline given to futex_waitv itself (absolute
 *    CLOCK_MONOTONIC, the kernel settles wake vs timeout as for ferry_wait).
 *    A notify that does not change the word must find the waiter queued,
 *    so an EXACT helper never leaves the kernel for another source's sake.
 *    Finished EXACT helpers park (up to HELPER_IDLE_MAX) for reuse.
 */
#include "runtime/loop_int.h"
#include "shm/err.h"

#include <errno.h>
#include <linux/futex.h>
#include <signal.h>
#include <stdlib.h>
#include <string.h>
#include <sys/epoll.h>
#include <sys/eventfd.h>
#include <sys/syscall.h>
#include <time.h>
#include <unistd.h>

#ifndef SYS_futex_waitv
#define SYS_futex_waitv 449
#endif
#ifndef FUTEX_32
#define FUTEX_32 2
#endif

#define HELPER_SLOTS 127
#define HELPER_IDLE_MAX 4
#define HELPER_STACK ((size_t)256 * 1024)

enum { H_MULTI = 0, H_EXACT = 1 };

/* Mirrors the kernel's struct futex_waitv (stable ABI). */
struct waitv {
	uint64_t val;
	uint64_t uaddr;
	uint32_t flags;
	uint32_t reserved;
};

struct hent {
	uint32_t *word;
	uint32_t val;
	int done; /* the loop collects it */
	int res;  /* 0 woken, -EAGAIN moved, -ETIMEDOUT, -EFAULT */
	uint64_t ud;
};

struct epoll_be;

struct helper {
	pthread_t th;
	ferry_loop *loop;
	struct epoll_be *e;
	uint32_t ctl;     /* atomic; changed by the loop under e->mu; a futex */
	int kind;         /* H_MULTI or H_EXACT */
	/* under e->mu: */
	int quit;
	int sleeping;     /* in (or about to enter) futex_waitv: needs a wake */
	int n;
	int64_t deadline; /* H_EXACT */
	struct hent ent[HELPER_SLOTS];
	struct helper *next;
};

struct epoll_be {
	int epfd, evfd;
	int no_pwait2;
	int no_waitv; /* -errno: futex_waitv unusable (Linux < 5.16, seccomp) */
	pthread_mutex_t mu;
	struct helper *helpers; /* under mu; changed only by the loop thread */
	atomic_uint done;       /* some entry is done */
	int maybe_idle;         /* loop thread: an EXACT helper may have become idle */
};

static long futex_waitv(struct waitv *w, unsigned n, const struct timespec *abs)
{
	return syscall(SYS_futex_waitv, w, n, 0, abs, CLOCK_MONOTONIC);
}

static void futex_wake1(uint32_t *word)
{
	syscall(SYS_futex, word, FUTEX_WAKE, 1, NULL, NULL, 0);
}

static struct hent *find(struct helper *h, uint64_t ud)
{
	for (int i = 0; i < h->n; i++)
		if (h->ent[i].ud == ud)
			return &h->ent[i];
	return NULL;
}

static void *helper_main(void *p)
{
	struct helper *h = p;
	struct epoll_be *e = h->e;
	struct waitv wv[HELPER_SLOTS + 1];
	uint64_t uds[HELPER_SLOTS];

	pthread_mutex_lock(&e->mu);
	while (!h->quit) {
		/* relaxed: only changed under e->mu, which we hold. */
		uint32_t ctl = __atomic_load_n(&h->ctl, __ATOMIC_RELAXED);
		/* Shared like everything else (see loop_uring.c on private
		 * futexes and the per-process hash): costs nothing here. */
		wv[0] = (struct waitv){ .val = ctl, .uaddr = (uintptr_t)&h->ctl, .flags = FUTEX_32 };
		unsigned nw = 0;
		for (int i = 0; i < h->n; i++) {
			if (h->ent[i].done)
				continue;
			/* Shared futexes: the words may live in memory that other
			 * processes map and notify. */
			wv[1 + nw] = (struct waitv){ .val = h->ent[i].val,
						     .uaddr = (uintptr_t)h->ent[i].word,
						     .flags = FUTEX_32 };
			uds[nw++] = h->ent[i].ud;
		}
		struct timespec ts, *tsp = NULL;
		if (h->kind == H_EXACT && nw && h->deadline >= 0) {
			ts.tv_sec = (time_t)(h->deadline / 1000000000);
			ts.tv_nsec = (long)(h->deadline % 1000000000);
			tsp = &ts;
		}
		h->sleeping = 1;
		pthread_mutex_unlock(&e->mu);

		long r = futex_waitv(wv, nw + 1, tsp);
		int err = r < 0 ? errno : 0;

		pthread_mutex_lock(&e->mu);
		h->sleeping = 0;
		int moved_ctl = __atomic_load_n(&h->ctl, __ATOMIC_RELAXED) != ctl;
		int produced = 0;
		for (unsigned k = 0; k < nw; k++) {
			struct hent *en = find(h, uds[k]);
			if (!en || en->done)
				continue; /* cancelled meanwhile */
			int res;
			if (r == (long)k + 1)
				res = 0;
			else if (err == ETIMEDOUT && h->kind == H_EXACT)
				res = -ETIMEDOUT;
			else if (err == EFAULT)
				/* Some word is unmapped. If the set changed, it was
				 * probably a cancelled one: look again. */
				res = moved_ctl ? 1 : (h->kind == H_EXACT ? -EFAULT : 0);
			/* acquire: pairs with the notifier's release of the word
			 * (still ours to read: the entry is live, see loop.h). */
			else if (__atomic_load_n(en->word, __ATOMIC_ACQUIRE) != en->val)
				res = -EAGAIN;
			else
				continue;
			if (res == 1)
				continue;
			en->done = 1;
			en->res = res;
			produced = 1;
		}
		if (produced) {
			/* seq_cst: before the signal, so that the loop's drain,
			 * which resets the inbox flag first, sees it. */
			atomic_store(&e->done, 1);
			ferry__loop_signal(h->loop);
		}
	}
	pthread_mutex_unlock(&e->mu);
	return NULL;
}

static struct helper *helper_start(ferry_loop *loop, struct epoll_be *e, int kind, int *err)
{
	struct helper *h = calloc(1, sizeof *h);
	if (!h) {
		*err = ENOMEM;
		return NULL;
	}
	h->loop = loop;
	h->e = e;
	h->kind = kind;
	pthread_attr_t a;
	pthread_attr_init(&a);
	pthread_attr_setstacksize(&a, HELPER_STACK);
	/* Signals are for the program's own threads. */
	sigset_t all, old;
	sigfillset(&all);
	pthread_sigmask(SIG_SETMASK, &all, &old);
	int r = pthread_create(&h->th, &a, helper_main, h);
	pthread_sigmask(SIG_SETMASK, &old, NULL);
	pthread_attr_destroy(&a);
	if (r) {
		free(h);
		*err = r;
		return NULL;
	}
	pthread_setname_np(h->th, "ferry-loop");
	return h;
}

/* Quit, wake and join @h, which is no longer on the list; loop thread. */
static void helper_stop(struct epoll_be *e, struct helper *h)
{
	pthread_mutex_lock(&e->mu);
	h->quit = 1;
	__atomic_add_fetch(&h->ctl, 1, __ATOMIC_RELAXED);
	pthread_mutex_unlock(&e->mu);
	futex_wake1(&h->ctl);
	pthread_join(h->th, NULL);
	free(h);
}

static int e_init(ferry_loop *loop, const struct ferry_loop_opts *o)
{
	(void)o;
	struct epoll_be *e = calloc(1, sizeof *e);
	if (!e)
		return ferry__fail(-ENOMEM, "ferry_loop_create: out of memory");
	e->evfd = -1;
	int r = pthread_mutex_init(&e->mu, NULL);
	if (r) {
		free(e);
		return ferry__fail(-r, "ferry_loop_create: pthread_mutex_init");
	}
	e->epfd = epoll_create1(EPOLL_CLOEXEC);
	if (e->epfd < 0) {
		r = ferry__errno(-errno, "ferry_loop_create: epoll_create1");
		goto fail;
	}
	e->evfd = eventfd(0, EFD_CLOEXEC | EFD_NONBLOCK);
	if (e->evfd < 0) {
		r = ferry__errno(-errno, "ferry_loop_create: eventfd");
		goto fail;
	}
	struct epoll_event ev = { .events = EPOLLIN, .data.u64 = LOOP_UD_WAKE };
	if (epoll_ctl(e->epfd, EPOLL_CTL_ADD, e->evfd, &ev)) {
		r = ferry__errno(-errno, "ferry_loop_create: epoll_ctl(eventfd)");
		goto fail;
	}
	/* futex_waitv on a word that does not hold the value must say -EAGAIN.
	 * Without it the loop still runs timers, fds and posts; only the futex
	 * sources fail (at their call, with this reason). */
	uint32_t probe_word = 1;
	struct waitv pw = { .val = 0, .uaddr = (uintptr_t)&probe_word, .flags = FUTEX_32 };
	long pr = futex_waitv(&pw, 1, NULL);
	if (pr != -1 || errno != EAGAIN)
		e->no_waitv = pr == -1 ? -errno : -EPROTO;
	loop->bdata = e;
	return 0;
fail:
	if (e->epfd >= 0)
		close(e->epfd);
	if (e->evfd >= 0)
		close(e->evfd);
	pthread_mutex_destroy(&e->mu);
	free(e);
	return r;
}

static void e_fini(ferry_loop *loop)
{
	struct epoll_be *e = loop->bdata;
	if (!e)
		return;
	/* In a forked child the helpers do not exist (and the mutex may be
	 * held by one of them): only release memory and fds. */
	int child = loop->pid != getpid();
	while (e->helpers) {
		struct helper *h = e->helpers;
		e->helpers = h->next;
		if (child)
			free(h);
		else
			helper_stop(e, h);
	}
	close(e->epfd);
	close(e->evfd);
	if (!child)
		pthread_mutex_destroy(&e->mu);
	free(e);
	loop->bdata = NULL;
}

static int e_fd_arm(ferry_loop *loop, struct src *s)
{
	struct epoll_be *e = loop->bdata;
	struct epoll_event ev = { .events = ferry__loop_to_poll(s->fd.events) };
	ev.data.u64 = ferry__loop_new_ud(loop, s);
	if (epoll_ctl(e->epfd, s->armed ? EPOLL_CTL_MOD : EPOLL_CTL_ADD, s->fd.fd, &ev)) {
		int err = errno;
		if (err == EPERM)
			return ferry__fail(-EPERM, "ferry_loop_fd: fd %d: epoll cannot watch it "
					   "(a regular file or directory is always ready)", s->fd.fd);
		return ferry__errno(-err, "ferry_loop_fd: epoll_ctl(fd %d)", s->fd.fd);
	}
	s->armed = 1;
	return 0;
}

static int e_futex_arm(ferry_loop *loop, struct src *s, uint32_t *word, uint32_t val,
		       int64_t deadline)
{
	struct epoll_be *e = loop->bdata;
	int kind = s->kind == SRC_WAIT ? H_EXACT : H_MULTI;
	const char *fn = kind == H_EXACT ? "ferry_wait_async" : "ferry_loop_watch_ec";
	if (e->no_waitv)
		return ferry__fail(e->no_waitv, "%s: the epoll backend needs futex_waitv "
				   "(Linux 5.16), which this kernel refused: %s", fn,
				   ferry_strerror(e->no_waitv));

	pthread_mutex_lock(&e->mu);
	struct helper *h;
	for (h = e->helpers; h; h = h->next)
		if (h->kind == kind && (kind == H_EXACT ? h->n == 0 : h->n < HELPER_SLOTS))
			break;
	pthread_mutex_unlock(&e->mu);
	if (!h) {
		int err;
		h = helper_start(loop, e, kind, &err);
		if (!h)
			return ferry__fail(-EAGAIN, "%s: cannot start a helper thread: %s", fn,
					   ferry_strerror(-err));
		pthread_mutex_lock(&e->mu);
		h->next = e->helpers;
		e->helpers = h;
		pthread_mutex_unlock(&e->mu);
	}

	pthread_mutex_lock(&e->mu);
	h->ent[h->n++] = (struct hent){ .word = word, .val = val, .ud = ferry__loop_new_ud(loop, s) };
	if (kind == H_EXACT)
		h->deadline = deadline;
	__atomic_add_fetch(&h->ctl, 1, __ATOMIC_RELAXED); /* the helper reads it under mu */
	int wake = h->sleeping;
	pthread_mutex_unlock(&e->mu);
	if (wake)
		futex_wake1(&h->ctl);
	s->armed = 1;
	return 0;
}

static void e_disarm(ferry_loop *loop, struct src *s)
{
	struct epoll_be *e = loop->bdata;
	if (s->kind == SRC_FD) {
		/* Fails with EBADF if the fd was closed first; closing removed
		 * the registration then (unless the file lives on in a dup). */
		epoll_ctl(e->epfd, EPOLL_CTL_DEL, s->fd.fd, NULL);
		return;
	}
	struct helper *woke = NULL;
	pthread_mutex_lock(&e->mu);
	for (struct helper *h = e->helpers; h && !woke; h = h->next) {
		struct hent *en = find(h, s->ud);
		if (!en)
			continue;
		*en = h->ent[--h->n];
		e->maybe_idle |= h->kind == H_EXACT;
		/* The helper must leave the futex queue of that word now: a
		 * cancelled wait that stays queued would swallow notifies. */
		__atomic_add_fetch(&h->ctl, 1, __ATOMIC_RELAXED);
		if (h->sleeping)
			woke = h;
		else
			break;
	}
	pthread_mutex_unlock(&e->mu);
	if (woke) /* helpers are freed only by this thread: still valid */
		futex_wake1(&woke->ctl);
}

static void e_wake(ferry_loop *loop)
{
	struct epoll_be *e = loop->bdata;
	uint64_t one = 1;
	/* EAGAIN: the counter is saturated, so the loop wakes anyway. */
	if (write(e->evfd, &one, sizeof one) < 0) {
	}
}

static void e_drain(ferry_loop *loop)
{
	struct epoll_be *e = loop->bdata;
	/* seq_cst: pairs with the helper's store before it signals; runs
	 * after the inbox flag was reset (see drain_inbox), so a helper whose
	 * signal was coalesced into this drain has its entries seen here. */
	if (!atomic_exchange(&e->done, 0))
		return;
	struct {
		uint64_t ud;
		int res;
	} c[FERRY_LOOP_BATCH];
	for (;;) {
		unsigned n = 0;
		int more = 0;
		pthread_mutex_lock(&e->mu);
		for (struct helper *h = e->helpers; h && !more; h = h->next) {
			for (int i = 0; i < h->n; i++) {
				if (!h->ent[i].done)
					continue;
				if (n == FERRY_LOOP_BATCH) {
					more = 1;
					break;
				}
				c[n].ud = h->ent[i].ud;
				c[n].res = h->ent[i].res;
				n++;
				h->ent[i--] = h->ent[--h->n];
				e->maybe_idle |= h->kind == H_EXACT;
			}
		}
		pthread_mutex_unlock(&e->mu);
		for (unsigned i = 0; i < n; i++) {
			struct src *s = ferry__loop_by_ud(loop, c[i].ud);
			if (s && s->armed)
				ferry__loop_futex_done(loop, s, c[i].res);
		}
		if (!more)
			return;
	}
}

/* Park at most HELPER_IDLE_MAX finished EXACT helpers; stop the others. */
static void trim(struct epoll_be *e)
{
	if (!e->maybe_idle)
		return;
	e->maybe_idle = 0;
	struct helper *extra = NULL;
	int idle = 0;
	pthread_mutex_lock(&e->mu);
	for (struct helper **pp = &e->helpers; *pp;) {
		struct helper *h = *pp;
		if (h->kind == H_EXACT && h->n == 0 && ++idle > HELPER_IDLE_MAX) {
			*pp = h->next;
			h->next = extra;
			extra = h;
			continue;
		}
		pp = &h->next;
	}
	pthread_mutex_unlock(&e->mu);
	while (extra) {
		struct helper *h = extra;
		extra = h->next;
		helper_stop(e, h);
	}
}

static int wait_events(struct epoll_be *e, struct epoll_event *ev, int max, int64_t timeout_ns)
{
	struct timespec ts, *tsp = NULL;
	if (timeout_ns >= 0) {
		ts.tv_sec = (time_t)(timeout_ns / 1000000000);
		ts.tv_nsec = (long)(timeout_ns % 1000000000);
		tsp = &ts;
	}
	if (!e->no_pwait2) {
		int n = epoll_pwait2(e->epfd, ev, max, tsp, NULL);
		if (n >= 0 || errno != ENOSYS)
			return n;
		e->no_pwait2 = 1; /* Linux < 5.11 */
	}
	int ms = -1;
	if (timeout_ns >= 0) /* round up: never wake before the timer is due */
		ms = timeout_ns / 1000000 >= INT32_MAX ? INT32_MAX : (int)((timeout_ns + 999999) / 1000000);
	return epoll_wait(e->epfd, ev, max, ms);
}

static int e_poll(ferry_loop *loop, int64_t timeout_ns)
{
	struct epoll_be *e = loop->bdata;
	struct epoll_event ev[FERRY_LOOP_BATCH];
	int n = wait_events(e, ev, FERRY_LOOP_BATCH, timeout_ns);
	if (n < 0) {
		if (errno != EINTR)
			return ferry__errno(-errno, "ferry_loop_run: epoll_wait");
		n = 0;
	}
	for (int i = 0; i < n; i++) {
		uint64_t ud = ev[i].data.u64;
		if (ud == LOOP_UD_WAKE) {
			uint64_t v;
			if (read(e->evfd, &v, sizeof v) < 0) {
			}
			continue;
		}
		struct src *s = ferry__loop_by_ud(loop, ud);
		if (!s || !s->armed)
			continue; /* cancelled by an earlier callback of this batch */
		ferry__loop_fd_event(loop, s, (int)ferry__loop_from_poll(ev[i].events));
	}
	trim(e);
	return 0;
}

const struct loop_backend ferry__loop_epoll = {
	.name = "epoll",
	.init = e_init,
	.fini = e_fini,
	.poll = e_poll,
	.fd_arm = e_fd_arm,
	.futex_arm = e_futex_arm,
	.disarm = e_disarm,
	.wake = e_wake,
	.drain = e_drain,
};
