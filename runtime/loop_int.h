/*
 * runtime/loop_int.h - internal: the loop's state, its sources, and the
 * interface between the common code (loop.c) and a backend (loop_uring.c,
 * loop_epoll.c).
 *
 * Source lifetime. A source is a heap object (struct src) named from outside
 * by an id = generation << 32 | slot index, and from the kernel by a
 * user_data ("ud") = arm << 32 | slot index. Each slot keeps both counters
 * and never resets them: the generation moves when the slot is released (so
 * a stale id finds nothing), the arm moves on every arm and every release
 * (so a completion of an operation that was cancelled, re-armed or whose
 * source ended finds nothing either, even if the slot now holds another
 * source). A source that ends while a callback may be on the stack (the
 * loop is running) is not freed at once: it goes to the zombie list, freed
 * at the end of the iteration, so the dispatcher can still read its flags
 * after a callback cancelled it.
 *
 * Cross-thread: posts and stop go through the inbox (a mutex-protected list
 * plus the "signalled" flag, which coalesces wake-ups: only the first
 * signaller after the loop drained calls the backend's wake()).
 */
#ifndef FERRY_RUNTIME_LOOP_INT_H
#define FERRY_RUNTIME_LOOP_INT_H

#include "ferry/loop.h"

#include <pthread.h>
#include <stdatomic.h>
#include <sys/types.h>

/* Reserved user_data values (slot index UINT32_MAX is never allocated). */
#define LOOP_UD_WAKE UINT64_MAX         /* the loop's own wake-up */
#define LOOP_UD_IGNORE (UINT64_MAX - 1) /* cancels, link timeouts, probes */
#define LOOP_MAX_SLOTS (UINT32_MAX - 2u)

enum src_kind { SRC_TIMER = 1, SRC_FD, SRC_WAIT, SRC_EC };

struct src {
	ferry_loop_fn cb;
	void *arg;
	uint64_t id;
	uint64_t ud;     /* user_data of the operation in flight, when armed */
	uint32_t idx;    /* slot */
	uint8_t kind;    /* enum src_kind */
	uint8_t ref;     /* counts in loop->nref */
	uint8_t armed;   /* a backend operation is in flight */
	uint8_t queued;  /* on the ready list */
	uint8_t dead;    /* ended; its slot is released */
	int res;         /* SRC_WAIT: the result to deliver from the ready list */
	struct src *next, *prev; /* ready list */
	struct src *zombie_next;
	union {
		struct {
			int64_t deadline, repeat;
			uint64_t seq;
			size_t heap; /* index in loop->heap */
		} t;
		struct {
			int fd;
			unsigned events; /* FERRY_LOOP_READABLE | FERRY_LOOP_WRITABLE */
		} fd;
		struct {
			uint32_t *word;
			uint32_t expected;
			int64_t deadline; /* absolute CLOCK_MONOTONIC ns, -1 none */
		} w;
		struct {
			struct ferry_ec *ec;
			ferry_loop_ready_fn ready;
		} ec;
	};
};

struct slot {
	struct src *s; /* NULL when free */
	uint32_t gen;  /* id generation, never 0 */
	uint32_t arm;  /* user_data generation */
};

struct post {
	struct post *next;
	ferry_loop_fn cb;
	void *arg;
};

struct loop_backend {
	const char *name;
	/* 0, or a negative errno after ferry__fail naming the cause. */
	int (*init)(ferry_loop *loop, const struct ferry_loop_opts *o);
	void (*fini)(ferry_loop *loop);
	/* Wait up to @timeout_ns (-1: no limit; 0: do not block) and dispatch
	 * the completions through the ferry__loop_* entry points below. */
	int (*poll)(ferry_loop *loop, int64_t timeout_ns);
	/* Start (or restart with new events) watching s->fd. */
	int (*fd_arm)(ferry_loop *loop, struct src *s);
	/* Start an async futex wait on @word for value @val, until @deadline
	 * (absolute ns, -1 none; only SRC_WAIT has one). */
	int (*futex_arm)(ferry_loop *loop, struct src *s, uint32_t *word, uint32_t val,
			 int64_t deadline);
	/* Stop what is armed for @s (fd or futex); no completion for it will be
	 * delivered after this (the caller bumps the slot's arm). */
	void (*disarm)(ferry_loop *loop, struct src *s);
	/* Any thread: make a blocked poll return. */
	void (*wake)(ferry_loop *loop);
	/* Optional, loop thread, after the inbox flag was reset: collect
	 * completions that helper threads produced. */
	void (*drain)(ferry_loop *loop);
	/* Optional: hand the kernel what is still queued (end of a run). */
	void (*flush)(ferry_loop *loop);
};

extern const struct loop_backend ferry__loop_uring;
extern const struct loop_backend ferry__loop_epoll;

struct ferry_loop {
	const struct loop_backend *be;
	void *bdata; /* the backend's state */
	pid_t pid;   /* creator: a forked child only releases */

	struct slot *slots;
	uint32_t nslots, slotcap;
	uint32_t *freeidx;
	uint32_t nfree;
	uint32_t nref; /* referenced live sources */

	struct src ready; /* sentinel of the ready list */
	struct src **heap;
	size_t nheap, heapcap;
	uint64_t timer_seq;

	struct src **fdmap; /* fd -> its source */
	int fdcap;

	struct src *zombies;
	int running;
	int in_run; /* a run is on this thread's stack */
	uint64_t ncalls;

	/* cross-thread */
	pthread_mutex_t mu;
	struct post *post_head, *post_tail;
	atomic_uint nposts;
	atomic_uint signalled;
	atomic_uint stop;
	atomic_int busy; /* ferry_loop_run entered */

	/* On a thread worker: a wait on its stop flag, so that a terminate
	 * ends a worker blocked in its loop (see ferry_loop_run). */
	atomic_int *cancel_flag;
	uint64_t cancel_id;
	pthread_t creator; /* the thread that created the loop */
};

/* Worker thread cleanup (runtime/worker.c): destroy the loop that this
 * thread created and was running when it was terminated, if any. */
void ferry__loop_thread_end(void);

/* ---- entry points for the backends (loop thread) ---- */

/* A new user_data for arming @s (stored in s->ud). */
uint64_t ferry__loop_new_ud(ferry_loop *loop, struct src *s);
/* The live source @ud was armed for, or NULL if stale. */
struct src *ferry__loop_by_ud(ferry_loop *loop, uint64_t ud);
/* fd readiness (FERRY_LOOP_* bits) or a negative errno (the source ends). */
void ferry__loop_fd_event(ferry_loop *loop, struct src *s, int res);
/* An async futex wait of @s completed: 0 woken, -EAGAIN value differed,
 * -ETIMEDOUT, or another negative errno. */
void ferry__loop_futex_done(ferry_loop *loop, struct src *s, int res);
/* Any thread: signal the loop (coalesced) so that it drains its inbox. */
void ferry__loop_signal(ferry_loop *loop);

/* poll(2) bits to FERRY_LOOP_* bits and back. */
unsigned ferry__loop_from_poll(unsigned revents);
unsigned ferry__loop_to_poll(unsigned events);

#endif
