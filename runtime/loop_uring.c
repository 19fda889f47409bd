/*
 * The io_uring backend: IORING_OP_FUTEX_WAIT (Linux 6.7) for wait_async and
 * eventcount watches, one-shot IORING_OP_POLL_ADD re-armed after each event
 * for fds (level-triggered, like the epoll backend), IORING_OP_LINK_TIMEOUT
 * with an absolute CLOCK_MONOTONIC deadline for wait_async timeouts (the
 * kernel settles a wake racing the timeout in favour of the wake, as
 * ferry_wait does), IORING_OP_ASYNC_CANCEL to cancel. Loop timers need no
 * SQE: the common timer heap gives the wait its timeout (IORING_ENTER_EXT_ARG).
 *
 * Cross-thread wake-up: a futex word with a FUTEX_WAIT always armed on it;
 * ferry__loop_signal bumps it and FUTEX_WAKEs it. The word is private
 * memory, yet the futex is a shared one, on purpose: Linux 6.16+ gives a
 * process its own private-futex hash when it creates its first thread, and
 * a private io_uring futex wait queued before that (a loop created while
 * single-threaded) stays in the global hash, where no FUTEX_WAKE_PRIVATE
 * finds it any more. Shared keys always live in the global hash. (Every
 * other futex wait here is shared anyway: the words may be in shared
 * memory.)
 *
 * The packaged liburing (2.3) predates the futex opcodes, so the SQE is
 * filled by hand under our own names.
 */
#include "runtime/loop_int.h"
#include "shm/err.h"

#include <errno.h>

#ifdef FERRY_HAVE_URING

#include <liburing.h>
#include <linux/futex.h>
#include <stdlib.h>
#include <string.h>
#include <sys/syscall.h>
#include <unistd.h>

/* After liburing.h, under our own names: a newer liburing defines the
 * kernel's as enum constants. */
#define LOOP_OP_FUTEX_WAIT 51 /* IORING_OP_FUTEX_WAIT, Linux 6.7 */
#ifndef FUTEX2_SIZE_U32
#define FUTEX2_SIZE_U32 0x02
#endif
#ifndef FUTEX2_PRIVATE
#define FUTEX2_PRIVATE 128
#endif
#ifndef FUTEX_BITSET_MATCH_ANY
#define FUTEX_BITSET_MATCH_ANY 0xffffffffu
#endif

struct uring_be {
	struct io_uring ring;
	struct __kernel_timespec *ts; /* one per SQ slot: link timeout deadlines */
	uint32_t wake_word;           /* atomic; a shared futex, see the top */
	int wake_armed;
};

/* The SQE of IORING_OP_FUTEX_WAIT: fd = futex2 flags, addr = the word,
 * addr2 = the expected value, addr3 = the wake bitset; futex_flags (the
 * rw_flags union), len and buf_index must be 0. */
static void prep_futex_wait(struct io_uring_sqe *sqe, uint32_t *word, uint32_t val,
			    uint32_t flags2)
{
	/* prep_rw zeroes every other field (flags, len, rw_flags, buf_index...) */
	io_uring_prep_rw(LOOP_OP_FUTEX_WAIT, sqe, (int)flags2, word, 0, val);
	sqe->addr3 = FUTEX_BITSET_MATCH_ANY;
}

static struct io_uring_sqe *get_sqe(struct uring_be *u)
{
	struct io_uring_sqe *sqe = io_uring_get_sqe(&u->ring);
	if (!sqe) {
		io_uring_submit(&u->ring);
		sqe = io_uring_get_sqe(&u->ring);
	}
	return sqe;
}

static void arm_wake(struct uring_be *u)
{
	if (u->wake_armed)
		return;
	struct io_uring_sqe *sqe = get_sqe(u);
	if (!sqe)
		return; /* next poll tries again; until then wakes come from elsewhere */
	/* acquire: pairs with the seq_cst bump in u_wake (the value we wait on
	 * is at least the one that made us look at the inbox). */
	prep_futex_wait(sqe, &u->wake_word, __atomic_load_n(&u->wake_word, __ATOMIC_ACQUIRE),
			FUTEX2_SIZE_U32);
	sqe->user_data = LOOP_UD_WAKE;
	u->wake_armed = 1;
}

static void cancel_ud(struct uring_be *u, uint64_t ud)
{
	struct io_uring_sqe *sqe = get_sqe(u);
	if (!sqe)
		return; /* the operation completes some day and is dropped as stale */
	io_uring_prep_cancel64(sqe, ud, 0);
	sqe->user_data = LOOP_UD_IGNORE;
}

/* Does this kernel queue a futex wait through io_uring? A wait for 0 on a
 * word holding 1 must complete with -EAGAIN; an old kernel says -EINVAL. */
static int probe(struct uring_be *u)
{
	uint32_t word = 1;
	struct io_uring_sqe *sqe = io_uring_get_sqe(&u->ring);
	if (!sqe)
		return ferry__fail(-EBUSY, "ferry_loop_create: io_uring: no SQE for the probe");
	prep_futex_wait(sqe, &word, 0, FUTEX2_SIZE_U32 | FUTEX2_PRIVATE);
	sqe->user_data = LOOP_UD_IGNORE;
	int r = io_uring_submit_and_wait(&u->ring, 1);
	if (r < 0)
		return ferry__fail(r, "ferry_loop_create: io_uring_enter (futex probe): %s",
				   ferry_strerror(r));
	struct io_uring_cqe *cqe;
	r = io_uring_wait_cqe(&u->ring, &cqe);
	if (r < 0)
		return ferry__fail(r, "ferry_loop_create: io_uring futex probe: %s", ferry_strerror(r));
	int res = cqe->res;
	io_uring_cqe_seen(&u->ring, cqe);
	if (res == -EAGAIN)
		return 0;
	if (res == -EINVAL || res == -EOPNOTSUPP)
		return ferry__fail(-EOPNOTSUPP, "ferry_loop_create: io_uring has no "
				   "IORING_OP_FUTEX_WAIT (needs Linux 6.7)");
	return ferry__fail(res < 0 ? res : -EPROTO,
			   "ferry_loop_create: io_uring futex probe gave %d, not -EAGAIN", res);
}

static int u_init(ferry_loop *loop, const struct ferry_loop_opts *o)
{
	unsigned entries = o->entries ? o->entries : 256;
	if (entries < 8)
		entries = 8;
	if (entries > 4096)
		entries = 4096;
	struct uring_be *u = calloc(1, sizeof *u);
	if (!u)
		return ferry__fail(-ENOMEM, "ferry_loop_create: out of memory");
	int r = io_uring_queue_init(entries, &u->ring, 0);
	if (r < 0) {
		free(u);
		return ferry__fail(r, "ferry_loop_create: io_uring_queue_init(%u): %s%s", entries,
				   ferry_strerror(r),
				   r == -EPERM || r == -EACCES
					   ? " (kernel.io_uring_disabled, or a seccomp profile?)"
					   : "");
	}
	u->ts = calloc(u->ring.sq.ring_entries, sizeof *u->ts);
	if (!u->ts) {
		r = ferry__fail(-ENOMEM, "ferry_loop_create: out of memory");
		goto fail;
	}
	/* The kernel's answer does not change: probe once per process. */
	static int probed; /* atomic: 0 unknown, 1 supported */
	if (!__atomic_load_n(&probed, __ATOMIC_RELAXED)) { /* relaxed: a cache, no data */
		r = probe(u);
		if (r)
			goto fail;
		__atomic_store_n(&probed, 1, __ATOMIC_RELAXED);
	}
	loop->bdata = u;
	arm_wake(u);
	return 0;
fail:
	io_uring_queue_exit(&u->ring);
	free(u->ts);
	free(u);
	return r;
}

static void u_fini(ferry_loop *loop)
{
	struct uring_be *u = loop->bdata;
	if (!u)
		return;
	/* Cancels whatever is in flight (futex waits, polls) with the ring. */
	io_uring_queue_exit(&u->ring);
	free(u->ts);
	free(u);
	loop->bdata = NULL;
}

static int u_fd_arm(ferry_loop *loop, struct src *s)
{
	struct uring_be *u = loop->bdata;
	if (s->armed) { /* new events: replace the poll in flight */
		cancel_ud(u, s->ud);
		s->armed = 0;
	}
	struct io_uring_sqe *sqe = get_sqe(u);
	if (!sqe)
		return ferry__fail(-EBUSY, "ferry_loop_fd: io_uring submission queue full");
	io_uring_prep_poll_add(sqe, s->fd.fd, ferry__loop_to_poll(s->fd.events));
	sqe->user_data = ferry__loop_new_ud(loop, s);
	s->armed = 1;
	if (!loop->running) /* else the loop submits right after the callbacks */
		io_uring_submit(&u->ring);
	return 0;
}

static int u_futex_arm(ferry_loop *loop, struct src *s, uint32_t *word, uint32_t val,
		       int64_t deadline)
{
	struct uring_be *u = loop->bdata;
	unsigned need = deadline >= 0 ? 2 : 1; /* a link must not straddle two submits */
	if (io_uring_sq_space_left(&u->ring) < need)
		io_uring_submit(&u->ring);
	if (io_uring_sq_space_left(&u->ring) < need)
		return ferry__fail(-EBUSY, "ferry_wait_async: io_uring submission queue full");
	struct io_uring_sqe *sqe = io_uring_get_sqe(&u->ring);
	/* A shared futex (no FUTEX2_PRIVATE): the word may be in memory that
	 * another process maps and notifies. */
	prep_futex_wait(sqe, word, val, FUTEX2_SIZE_U32);
	sqe->user_data = ferry__loop_new_ud(loop, s);
	if (deadline >= 0) {
		sqe->flags |= IOSQE_IO_LINK;
		struct io_uring_sqe *t = io_uring_get_sqe(&u->ring);
		struct __kernel_timespec *ts = &u->ts[t - u->ring.sq.sqes];
		ts->tv_sec = deadline / 1000000000;
		ts->tv_nsec = deadline % 1000000000;
		io_uring_prep_link_timeout(t, ts, IORING_TIMEOUT_ABS);
		t->user_data = LOOP_UD_IGNORE;
	}
	s->armed = 1;
	/* ferry_wait_async promises the waiter is queued when it returns: the
	 * kernel issues FUTEX_WAIT inline at submission. Watches re-arm from
	 * the loop, which submits right after. A failed submit leaves the SQEs
	 * for the next poll (the timeouts live in u->ts, not in @s). */
	if (s->kind == SRC_WAIT)
		io_uring_submit(&u->ring);
	return 0;
}

static void u_disarm(ferry_loop *loop, struct src *s)
{
	struct uring_be *u = loop->bdata;
	cancel_ud(u, s->ud);
	/* Outside a run nothing would submit soon; the kernel would keep an fd's
	 * file referenced until then. */
	if (!loop->running)
		io_uring_submit(&u->ring);
}

static void u_flush(ferry_loop *loop)
{
	struct uring_be *u = loop->bdata;
	if (io_uring_sq_ready(&u->ring))
		io_uring_submit(&u->ring);
}

static void u_wake(ferry_loop *loop)
{
	struct uring_be *u = loop->bdata;
	/* seq_cst: orders the inbox update (done by the caller) before the
	 * bump that the loop's armed FUTEX_WAIT compares against. */
	__atomic_add_fetch(&u->wake_word, 1, __ATOMIC_SEQ_CST);
	syscall(SYS_futex, &u->wake_word, FUTEX_WAKE, 1, NULL, NULL, 0);
}

static void rearm_wait(ferry_loop *loop, struct src *s)
{
	int r = u_futex_arm(loop, s, s->w.word, s->w.expected, s->w.deadline);
	if (r)
		ferry__loop_futex_done(loop, s, r);
}

static void complete(ferry_loop *loop, struct uring_be *u, uint64_t ud, int res)
{
	if (ud == LOOP_UD_IGNORE)
		return;
	if (ud == LOOP_UD_WAKE) {
		u->wake_armed = 0;
		arm_wake(u);
		return;
	}
	struct src *s = ferry__loop_by_ud(loop, ud);
	if (!s || !s->armed)
		return; /* cancelled, re-armed or ended: stale */
	s->armed = 0;
	if (s->kind == SRC_FD) {
		if (res == -ECANCELED) {
			/* Not ours (ours make the ud stale): the submitting thread
			 * exited, and io_uring cancels a task's requests then. */
			int r = u_fd_arm(loop, s);
			if (r)
				ferry__loop_fd_event(loop, s, r);
			return;
		}
		ferry__loop_fd_event(loop, s, res < 0 ? res : (int)ferry__loop_from_poll((unsigned)res));
		if (!s->dead && !s->armed) {
			int r = u_fd_arm(loop, s);
			if (r)
				ferry__loop_fd_event(loop, s, r);
		}
		return;
	}
	if (res == -ECANCELED) {
		if (s->kind == SRC_EC) { /* see below: just look again */
			ferry__loop_futex_done(loop, s, -EAGAIN);
			return;
		}
		/* The link timeout fired; or, before the deadline (or with none),
		 * the thread that submitted exited and io_uring cancelled its
		 * requests: wait on. */
		if (s->w.deadline >= 0 && ferry__now_ns() >= s->w.deadline)
			ferry__loop_futex_done(loop, s, -ETIMEDOUT);
		else
			rearm_wait(loop, s);
		return;
	}
	ferry__loop_futex_done(loop, s, res);
}

static int u_poll(ferry_loop *loop, int64_t timeout_ns)
{
	struct uring_be *u = loop->bdata;
	arm_wake(u);
	int r;
	if (timeout_ns == 0) {
		r = io_uring_submit(&u->ring);
	} else if (timeout_ns < 0) {
		r = io_uring_submit_and_wait(&u->ring, 1);
	} else {
		struct __kernel_timespec ts = { .tv_sec = timeout_ns / 1000000000,
						.tv_nsec = timeout_ns % 1000000000 };
		struct io_uring_cqe *cqe;
		r = io_uring_submit_and_wait_timeout(&u->ring, &cqe, 1, &ts, NULL);
	}
	if (r < 0 && r != -ETIME && r != -EINTR && r != -EAGAIN && r != -EBUSY)
		return ferry__fail(r, "ferry_loop_run: io_uring_enter: %s", ferry_strerror(r));

	/* Copy a bounded batch out first: callbacks submit, and inline
	 * completions must wait for the next iteration (fairness). */
	struct io_uring_cqe *cqes[FERRY_LOOP_BATCH];
	struct {
		uint64_t ud;
		int res;
	} c[FERRY_LOOP_BATCH];
	unsigned n = io_uring_peek_batch_cqe(&u->ring, cqes, FERRY_LOOP_BATCH);
	for (unsigned i = 0; i < n; i++) {
		c[i].ud = cqes[i]->user_data;
		c[i].res = cqes[i]->res;
	}
	io_uring_cq_advance(&u->ring, n);
	for (unsigned i = 0; i < n; i++)
		complete(loop, u, c[i].ud, c[i].res);
	return 0;
}

const struct loop_backend ferry__loop_uring = {
	.name = "uring",
	.init = u_init,
	.fini = u_fini,
	.poll = u_poll,
	.fd_arm = u_fd_arm,
	.futex_arm = u_futex_arm,
	.disarm = u_disarm,
	.wake = u_wake,
	.drain = NULL,
	.flush = u_flush,
};

#else /* !FERRY_HAVE_URING */

static int u_init(ferry_loop *loop, const struct ferry_loop_opts *o)
{
	(void)loop;
	(void)o;
	return ferry__fail(-ENOSYS, "ferry_loop_create: built without liburing: no io_uring backend");
}

const struct loop_backend ferry__loop_uring = {
	.name = "uring",
	.init = u_init,
};

#endif
