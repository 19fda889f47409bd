/*
 * Ports: two entangled ends of a channel segment.
 *
 * Waiting follows PERF.md: a cross-core wake costs ~22 us here and a spin
 * ~0.1 us, so a waiter first spins on the ring (catching a quick reply at
 * spin cost), then announces its sleep on the eventcount and sleeps; the
 * other side pays the futex syscall only when it sees the announcement.
 *
 * A dead peer process cannot notify anyone, but its end of the control
 * socket pair hangs up when it dies: held only by the peer's process
 * (runtime/ drops the copies a fork leaves), so a hang-up means the peer is
 * gone, and nothing it posts will follow. So the sleep itself is on that
 * socket: the sleeper asks the other side for a 1-byte wake (the same word
 * protocol as the eventcount) and polls for it and for the hang-up at once;
 * the peer's death ends the sleep the moment the kernel closes its fds, with
 * no slices while it lives. A second thread of the same port (receiver and
 * blocked sender at once) sleeps on its eventcount, covered by the first.
 * A producer that has not posted through ferry_port_post* yet (one that
 * drives the ring itself and only notifies the eventcount never does), a
 * thread worker that may be terminated (terminate wakes futexes) and a
 * blocked sender on a port an outside poller watches sleep on the
 * eventcount for FERRY_PORT_LIVENESS_NS at most, with a look at the socket
 * between slices.
 */
#include "ports/port_int.h"
#include "shm/cancel.h"
#include "shm/err.h"
#include "shm/ring_int.h"

#include <errno.h>
#include <fcntl.h>
#include <poll.h>
#include <pthread.h>
#include <sched.h>
#include <stdatomic.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

#define DEFAULT_SPIN_NS (20 * 1000)
/* struct ferry_port.sock_sleeper: who sleeps on the control socket. */
#define SOCK_RX 1 /* a receiver, for a record */
#define SOCK_TX 2 /* a sender, for room in the ring */

static inline void announce_wakes(ferry_port *p);
#define HDR_BYTES 4096u


/*
 * Every live port of the process, so that a forked worker can drop the
 * control sockets of the ports that are not its own: a copy of another
 * worker's parent-side socket left open in a sibling would hide the parent's
 * death from that worker. The lock is held across fork (pthread_atfork), so
 * the child never inherits it locked.
 */
static pthread_mutex_t registry_lock = PTHREAD_MUTEX_INITIALIZER;
static struct ferry_port registry = { .next = &registry, .prev = &registry };
static pthread_once_t registry_once = PTHREAD_ONCE_INIT;

static void registry_lock_fn(void)
{
	pthread_mutex_lock(&registry_lock);
}

static void registry_unlock_fn(void)
{
	pthread_mutex_unlock(&registry_lock);
}

static void registry_init(void)
{
	pthread_atfork(registry_lock_fn, registry_unlock_fn, registry_unlock_fn);
}

static void registry_add(ferry_port *p)
{
	pthread_once(&registry_once, registry_init);
	pthread_mutex_lock(&registry_lock);
	p->next = registry.next;
	p->prev = &registry;
	registry.next->prev = p;
	registry.next = p;
	pthread_mutex_unlock(&registry_lock);
}

static void registry_del(ferry_port *p)
{
	pthread_mutex_lock(&registry_lock);
	p->prev->next = p->next;
	p->next->prev = p->prev;
	pthread_mutex_unlock(&registry_lock);
}

static void stash_close_all(ferry_port *p);

void ferry__port_keep_only(ferry_port *keep)
{
	pthread_mutex_lock(&registry_lock);
	for (ferry_port *p = registry.next; p != &registry; p = p->next) {
		/* The child is single-threaded: a stash lock that a thread of the
		 * parent held at the fork is reset, not waited for. */
		pthread_mutex_init(&p->stash_lock, NULL);
		if (p == keep)
			continue;
		if (p->sock >= 0) {
			close(p->sock);
			p->sock = -1;
		}
		/* A stashed batch may hold another channel's control socket (a
		 * port on its way in a message): its copy here would hide that
		 * channel's peer's death as well. */
		stash_close_all(p);
	}
	pthread_mutex_unlock(&registry_lock);
}

/* Open side @side of the channel in @seg, whose layout is @h: a private,
 * validated snapshot (never offsets re-read from shared memory). */
static int port_open(ferry_port **out, ferry_seg *seg, const struct chan_hdr *h, int side, int sock)
{
	ferry_port *p = calloc(1, sizeof *p);
	if (!p)
		return ferry__fail(-ENOMEM, "ferry_channel: out of memory for a port");
	struct stat st;
	if (fstat(ferry_seg_fd(seg), &st) == 0)
		p->chan_id = ((uint64_t)st.st_dev << 32) ^ (uint64_t)st.st_ino;
	p->seg = seg;
	p->hdr = ferry_seg_data(seg);
	char *base = (char *)p->hdr;
	p->tx = (ferry_ring_spsc *)(base + h->ring_off[side]);
	p->rx = (ferry_ring_spsc *)(base + h->ring_off[!side]);
	int rc = ferry_ring_spsc_view_init(&p->txv, p->tx, h->ring_size[side]);
	if (rc == 0)
		rc = ferry_ring_spsc_view_init(&p->rxv, p->rx, h->ring_size[!side]);
	if (rc) {
		free(p);
		return ferry__fail(rc, "ferry_channel: the channel's rings do not validate");
	}
	p->txd = &p->hdr->dir[side];
	p->rxd = &p->hdr->dir[!side];
	p->sock = sock;
	p->side = side;
	p->mode = FERRY_WAIT_ADAPTIVE;
	p->spin_ns = DEFAULT_SPIN_NS;
	p->max_msg = ferry_ring_spsc_max_record(p->tx) - sizeof(struct wire_hdr);
	p->max_message = FERRY_MESSAGE_MAX_DEFAULT;
	pthread_mutex_init(&p->stash_lock, NULL);
	/* This port's consume() answers the producer's space word. */
	atomic_fetch_or_explicit(&p->rxd->wakes, CHAN_WAKES_SPACE, memory_order_relaxed);
	registry_add(p);
	*out = p;
	return 0;
}

int ferry__port_open(ferry_port **out, ferry_seg *seg, int side, int sock)
{
	struct chan_hdr h;
	memcpy(&h, ferry_seg_data(seg), sizeof h);
	return port_open(out, seg, &h, side, sock);
}

int ferry__port_import(ferry_port **out, int seg_fd, int sock, uint32_t side)
{
	*out = NULL;
	int type = 0, domain = 0;
	socklen_t tl = sizeof type, dl = sizeof domain;
	if (getsockopt(sock, SOL_SOCKET, SO_TYPE, &type, &tl) < 0 ||
	    getsockopt(sock, SOL_SOCKET, SO_DOMAIN, &domain, &dl) < 0 ||
	    type != SOCK_SEQPACKET || domain != AF_UNIX) {
		close(sock);
		close(seg_fd);
		return ferry__fail(-EBADMSG, "ferry_port_recv: a transferred port's control fd is not a unix seqpacket socket");
	}
	size_t min_ring = ferry_ring_spsc_memsize(FERRY_RING_SPSC_MIN_CAP);
	ferry_seg *seg;
	int rc = ferry_seg_import(&seg, seg_fd, HDR_BYTES + 2 * min_ring);
	if (rc) {
		close(sock);
		return rc;
	}
	struct chan_hdr h;
	memcpy(&h, ferry_seg_data(seg), sizeof h);
	size_t size = ferry_seg_size(seg);
	const char *why = NULL;
	if (h.magic != FERRY_CHAN_MAGIC)
		why = "bad magic";
	else if (h.version != FERRY_CHAN_VERSION)
		why = "another layout version";
	else if (h.seg_size != size)
		why = "size differs from the segment";
	for (int d = 0; d < 2 && !why; d++) {
		if (h.ring_off[d] < HDR_BYTES || (h.ring_off[d] & 63) || h.ring_size[d] < min_ring ||
		    h.ring_off[d] > size || h.ring_size[d] > size - h.ring_off[d])
			why = "ring offsets outside the segment";
		else if (ferry_ring_spsc_check((ferry_ring_spsc *)((char *)ferry_seg_data(seg) + h.ring_off[d]),
					      h.ring_size[d]))
			why = "corrupt ring";
	}
	if (!why && h.ring_off[0] < h.ring_off[1] + h.ring_size[1] &&
	    h.ring_off[1] < h.ring_off[0] + h.ring_size[0])
		why = "rings overlap";
	if (why) {
		ferry_seg_unref(seg);
		close(sock);
		return ferry__fail(h.magic == FERRY_CHAN_MAGIC && h.version != FERRY_CHAN_VERSION
				   ? FERRY_EVERSION : -EBADMSG,
				   "ferry_port_recv: a transferred port's channel is not valid: %s", why);
	}
	rc = port_open(out, seg, &h, (int)side, sock);
	if (rc) {
		ferry_seg_unref(seg);
		close(sock);
		return rc;
	}
	/* Imported by ferry: this end's posts will answer wakes. */
	announce_wakes(*out);
	return 0;
}

int ferry__port_same_channel(const ferry_port *a, const ferry_port *b)
{
	return a->seg == b->seg || (a->chan_id && a->chan_id == b->chan_id);
}

FERRY_API int ferry_channel(ferry_port **a, ferry_port **b, const struct ferry_channel_opts *opts)
{
	if (a)
		*a = NULL;
	if (b)
		*b = NULL;
	if (!a || !b)
		return ferry__fail(-EINVAL, "ferry_channel: %s is NULL", !a ? "a" : "b");
	size_t ring_bytes = opts && opts->ring_bytes ? opts->ring_bytes : FERRY_CHANNEL_RING_DEFAULT;
	size_t rsz = ferry_ring_spsc_memsize(ring_bytes);
	if (!rsz)
		return ferry__fail(-EINVAL,
				   "ferry_channel: ring_bytes %zu is not a power of two in [%u, %u]",
				   ring_bytes, FERRY_RING_SPSC_MIN_CAP, FERRY_RING_SPSC_MAX_CAP);
	rsz = (rsz + 63) & ~(size_t)63;

	ferry_seg *seg;
	int rc = ferry_seg_create(&seg, HDR_BYTES + 2 * rsz, "ferry-channel");
	if (rc)
		return rc;
	struct chan_hdr *h = ferry_seg_data(seg);
	h->magic = FERRY_CHAN_MAGIC;
	h->version = FERRY_CHAN_VERSION;
	h->seg_size = HDR_BYTES + 2 * rsz;
	for (int d = 0; d < 2; d++) {
		h->ring_off[d] = HDR_BYTES + (uint64_t)d * rsz;
		h->ring_size[d] = rsz;
		ferry_ec_init(&h->dir[d].data_ec);
		ferry_ec_init(&h->dir[d].space_ec);
		rc = ferry_ring_spsc_init((ferry_ring_spsc *)((char *)h + h->ring_off[d]), rsz);
		if (rc) {
			ferry_seg_unref(seg);
			return rc;
		}
	}

	int sv[2];
	if (socketpair(AF_UNIX, SOCK_SEQPACKET | SOCK_CLOEXEC, 0, sv) < 0) {
		rc = ferry__errno(-errno, "ferry_channel: socketpair");
		ferry_seg_unref(seg);
		return rc;
	}
	size_t max_message = opts && opts->max_message ? opts->max_message : FERRY_MESSAGE_MAX_DEFAULT;
	rc = ferry__port_open(a, seg, 0, sv[0]);
	if (rc == 0) {
		(*a)->max_message = max_message;
		rc = ferry__port_open(b, ferry_seg_ref(seg), 1, sv[1]);
		if (rc == 0)
			(*b)->max_message = max_message;
		if (rc) {
			ferry_seg_unref(seg);
			registry_del(*a);
			free(*a);
			*a = NULL;
		}
	}
	if (rc) {
		close(sv[0]);
		close(sv[1]);
		ferry_seg_unref(seg);
	}
	return rc;
}

static enum ctl_head ctl_peek_raw(ferry_port *p, struct fd_batch *bh);

/* Has the peer's end of the control socket hung up? Sticky once seen. */
static int peer_hung_up(ferry_port *p)
{
	if (atomic_load_explicit(&p->peer_gone, memory_order_relaxed))
		return 1;
	struct pollfd pfd = { .fd = p->sock, .events = POLLIN | POLLRDHUP };
	if (poll(&pfd, 1, 0) > 0 && (pfd.revents & (POLLHUP | POLLRDHUP | POLLERR))) {
		atomic_store_explicit(&p->peer_gone, 1, memory_order_relaxed);
		return 1;
	}
	return 0;
}

/* A ring was corrupt once: the port says so for good (see struct ferry_port). */
static int corrupt_before(ferry_port *p)
{
	if (!atomic_load_explicit(&p->corrupt, memory_order_relaxed))
		return 0;
	return ferry__fail(-EPROTO, "ferry_port: the channel's shared ring was found corrupt; "
			   "the channel stays closed whatever the peer writes");
}

/* Every ring call of a port goes through here: -EPROTO is remembered. */
static int attempt_once(ferry_port *p, int (*attempt)(ferry_port *, void *), void *arg)
{
	int rc = attempt(p, arg);
	if (rc == -EPROTO)
		atomic_store_explicit(&p->corrupt, 1, memory_order_relaxed);
	return rc;
}

/* The peer is gone: one last attempt delivers what it fully committed. */
static int last_attempt(ferry_port *p, int (*attempt)(ferry_port *, void *), void *arg)
{
	int rc = attempt_once(p, attempt, arg);
	return rc == -EAGAIN ? -EPIPE : rc;
}

/* The eventcount the other role of this port sleeps on. */
static struct ferry_ec *other_ec(ferry_port *p, int role)
{
	return role == SOCK_RX ? &p->txd->space_ec : &p->rxd->data_ec;
}

/* The peer hung up, seen by the socket sleeper: wake the thread that may
 * sleep on the other eventcount (it relies on us to tell it). */
static void mark_gone(ferry_port *p)
{
	atomic_store_explicit(&p->peer_gone, 1, memory_order_relaxed);
	ferry_ec_notify(&p->rxd->data_ec);
	ferry_ec_notify(&p->txd->space_ec);
}

/*
 * May this thread sleep on the control socket in @role? Not without a
 * socket; not on a thread worker that may be terminated (terminate wakes
 * futexes: it sleeps with futex_waitv on its eventcount and stop flag, see
 * shm/atomic.c); and not as a blocked sender on a port whose fd an outside
 * poller drains (ferry_port_fd: the wakes there are the poller's to take).
 */
static int sock_allowed(ferry_port *p, int role)
{
	if (p->sock < 0 || ferry__cancel_flag)
		return 0;
	if (role == SOCK_RX)
		return atomic_load_explicit(&p->rxd->wakes, memory_order_relaxed) & CHAN_WAKES_DATA;
	return !p->fd_mode && (atomic_load_explicit(&p->txd->wakes, memory_order_relaxed) & CHAN_WAKES_SPACE);
}

/* The word that asks the other side for a wake on the control socket. */
static _Atomic uint32_t *wake_word(ferry_port *p, int role)
{
	return role == SOCK_RX ? &p->rxd->fd_waiting : &p->txd->space_waiting;
}

/*
 * Drop what heads the control socket and no message will claim; say what
 * is left at its head. Only the socket sleeper itself calls this directly
 * (the others go through ferry__port_ctl_peek, which leaves a blocked
 * sender's wakes to it).
 */
static enum ctl_head drain_head(ferry_port *p)
{
	for (int i = 0; i < FERRY_CTL_DROP_MAX; i++) {
		struct fd_batch bh;
		enum ctl_head h = ctl_peek_raw(p, &bh);
		if (h == CTL_NONE || h == CTL_EOF)
			return h;
		if (h == CTL_BATCH && !ferry__port_batch_stale(p, bh.seq))
			return h; /* a record may still claim it: it is on its way */
		ferry__port_ctl_drop(p);
		if (h == CTL_WAKE)
			return CTL_NONE; /* the usual case; anything behind it makes the poll return */
	}
	return CTL_JUNK;
}

/*
 * One sleep on the control socket, which carries both what can end it: the
 * 1-byte wake the other side sends after its commit (@role SOCK_RX: it
 * reads rxd->fd_waiting) or its release (SOCK_TX: txd->space_waiting), and
 * the hang-up of its end when its process dies. The wake word follows the
 * eventcount's protocol: announce (seq_cst), re-check, sleep; the other
 * side loads the word after its commit and its seq_cst fence (in
 * ferry_ec_notify), so one of the two sees the other. Returns the attempt's
 * result, -EPIPE after a last attempt when the peer is gone, -EAGAIN to go
 * round again, or 1 when this turn must sleep on the eventcount instead (a
 * batch or junk heads the socket and would keep it readable).
 */
static int sleep_on_sock(ferry_port *p, int role, int (*attempt)(ferry_port *, void *), void *arg,
			 int64_t now, int64_t deadline)
{
	enum ctl_head h = drain_head(p);
	if (h == CTL_EOF) {
		mark_gone(p);
		return last_attempt(p, attempt, arg);
	}
	if (h != CTL_NONE)
		return 1;
	_Atomic uint32_t *word = wake_word(p, role);
	atomic_store_explicit(word, 1, memory_order_seq_cst);
	ferry__full_fence();
	int rc = attempt_once(p, attempt, arg);
	if (rc != -EAGAIN) {
		atomic_store_explicit(word, 0, memory_order_relaxed);
		return rc;
	}
	struct pollfd pfd = { .fd = p->sock, .events = POLLIN | POLLRDHUP };
	struct timespec ts, *tsp = NULL;
	if (deadline != INT64_MAX) {
		int64_t left = deadline - now;
		ts.tv_sec = (time_t)(left / 1000000000);
		ts.tv_nsec = (long)(left % 1000000000);
		tsp = &ts;
	}
	int n = ppoll(&pfd, 1, tsp, NULL);
	/* Awake: a wake the other side still sends is wasted (dropped at the
	 * next sleep), so stop asking for one. */
	atomic_store_explicit(word, 0, memory_order_relaxed);
	if (n > 0 && (pfd.revents & (POLLHUP | POLLRDHUP | POLLERR | POLLNVAL))) {
		mark_gone(p);
		return last_attempt(p, attempt, arg);
	}
	return -EAGAIN;
}

/* Leave the socket to the other role: wake it if it sleeps on its
 * eventcount, so that it takes the socket over (seq_cst store, then the
 * fence in ferry_ec_notify; the other side prepares, then loads). */
static void sock_release(ferry_port *p, int role)
{
	atomic_store_explicit(&p->sock_sleeper, 0, memory_order_seq_cst);
	ferry_ec_notify(other_ec(p, role));
}

/*
 * Wait until @attempt(p, arg) stops returning -EAGAIN, following the port's
 * wait mode; @ec is the eventcount the other side notifies when the attempt
 * may succeed. Returns the attempt's result, -EAGAIN (timeout 0), -ETIMEDOUT,
 * or -EPIPE when the peer is gone and a last attempt still finds nothing;
 * -EPROTO, without an attempt, once a ring of the channel was found corrupt.
 *
 * After the spin, one thread of the port sleeps on the control socket (the
 * wake and the peer's death in one fd: no slices); a second one (the
 * receiver while the sender is blocked, or the reverse) sleeps on its
 * eventcount, and the socket sleeper wakes it when the peer hangs up or
 * when it leaves the socket. Only where no socket sleeper can be does a
 * sleep last FERRY_PORT_LIVENESS_NS at most, with a look at the socket
 * between slices.
 */
int ferry__port_wait(ferry_port *p, struct ferry_ec *ec, int (*attempt)(ferry_port *, void *),
		      void *arg, int64_t timeout_ns)
{
	int rc = corrupt_before(p);
	if (rc)
		return rc;
	/* A post (every post reserves through here): tell the consumer, before
	 * the commit it may wake for, that this end answers its wake word. */
	if (ec == &p->txd->space_ec)
		announce_wakes(p);
	rc = attempt_once(p, attempt, arg);
	if (rc != -EAGAIN || timeout_ns == 0)
		return rc;
	int64_t now = ferry__now_ns();
	int64_t deadline = timeout_ns < 0 || timeout_ns > INT64_MAX - now ? INT64_MAX : now + timeout_ns;
	int64_t spin_until = p->mode == FERRY_WAIT_BLOCK ? now
			   : p->mode == FERRY_WAIT_SPIN ? INT64_MAX
			   : now + p->spin_ns;
	int64_t next_liveness = now + FERRY_PORT_LIVENESS_NS;
	int role = ec == &p->rxd->data_ec ? SOCK_RX : SOCK_TX;

	for (unsigned i = 1;; i++) {
		rc = attempt_once(p, attempt, arg);
		if (rc != -EAGAIN)
			return rc;
		/* Reading the clock costs ~20 ns: while spinning, once every 16 turns.
		 * Every 1024 turns (~40 us) a spinner yields, so that a peer sharing
		 * its core (one CPU, or more spinners than cores) still runs. */
		if (now < spin_until && (i & 15)) {
			ferry__cpu_relax();
			continue;
		}
		if ((i & 1023) == 0) {
			ferry__cancel_point();
			sched_yield();
		}
		now = ferry__now_ns();
		if (now >= deadline)
			return -ETIMEDOUT;
		if (ferry__port_gone(p))
			return last_attempt(p, attempt, arg);
		if (now >= next_liveness) {
			/* A spinner (FERRY_WAIT_SPIN) never sleeps on the socket. */
			next_liveness = now + FERRY_PORT_LIVENESS_NS;
			if (peer_hung_up(p))
				return last_attempt(p, attempt, arg);
		}
		if (now < spin_until) {
			ferry__cpu_relax();
			continue;
		}
		ferry__cancel_point();
		int allowed = sock_allowed(p, role), fell_back = 0;
		if (allowed) {
			int expect = 0;
			if (atomic_compare_exchange_strong_explicit(&p->sock_sleeper, &expect, role,
								    memory_order_seq_cst,
								    memory_order_relaxed)) {
				rc = sleep_on_sock(p, role, attempt, arg, now, deadline);
				sock_release(p, role);
				if (rc <= 0) {
					if (rc != -EAGAIN)
						return rc;
					ferry__cancel_point();
					now = ferry__now_ns();
					if (p->mode == FERRY_WAIT_ADAPTIVE)
						spin_until = now + p->spin_ns / 4;
					continue;
				}
				/* 1: sleep on the eventcount this turn, one slice at most. */
				fell_back = 1;
			}
		}
		/* Announce the sleep, re-check, then sleep on the eventcount. */
		uint32_t key = ferry_ec_prepare(ec);
		rc = attempt_once(p, attempt, arg);
		if (rc != -EAGAIN) {
			ferry_ec_cancel(ec);
			return rc;
		}
		if (ferry__port_gone(p)) {
			ferry_ec_cancel(ec);
			return last_attempt(p, attempt, arg);
		}
		/* Covered: the other role sleeps on the socket and wakes us when
		 * the peer hangs up or when it leaves the socket to us. */
		int holder = atomic_load_explicit(&p->sock_sleeper, memory_order_seq_cst);
		if (allowed && holder == 0 && !fell_back) {
			ferry_ec_cancel(ec);
			continue; /* the socket is free again: take it */
		}
		int64_t until = deadline;
		if (holder == 0) { /* nobody on the socket: look now and then */
			if (next_liveness <= now)
				next_liveness = now + FERRY_PORT_LIVENESS_NS;
			if (next_liveness < until)
				until = next_liveness;
		}
		ferry_ec_wait(ec, key, until == INT64_MAX ? FERRY_FOREVER : until - now);
		ferry__cancel_point();
		now = ferry__now_ns();
		/* Woken by a notify: the next message often follows closely, so an
		 * adaptive waiter spins a little again before the next sleep. */
		if (p->mode == FERRY_WAIT_ADAPTIVE)
			spin_until = now + p->spin_ns / 4;
	}
}

struct post_arg {
	size_t len;
	void *where;
};

/* The lines of [@a, @a + @n), for writing. They were last held by the
 * receiver, which read the records there a lap ago: the stores into them
 * would each wait for the other core to give up its copy. */
#if defined(__x86_64__) || defined(__i386__)
__attribute__((target("prfchw")))
#endif
void ferry__prefetch_w(void *a, size_t n)
{
	for (uintptr_t c = (uintptr_t)a & ~(uintptr_t)63, e = (uintptr_t)a + n; c < e; c += 64)
		__builtin_prefetch((void *)c, 1, 3);
}

/*
 * Called after the commit of a record of @len bytes: the next record (guessed
 * as long as this one) goes right after it, in lines the consumer holds
 * shared since it read them a lap ago. Taken now, while this side waits for
 * the reply, the transfers are off the next post's path: the echo's post of
 * a 1 KiB clone ~0.48 -> ~0.34 us; a raw 1 KiB round trip ~1.2 -> ~0.95 us
 * (docs/PERF.md). Only room the ring says is free: never the lines a
 * consumer that lags behind is still reading.
 */
void ferry__port_prefetch_next(ferry_port *p, size_t len)
{
	size_t n;
	void *next = ferry__ring_spsc_view_next(&p->txv, len, &n);
	if (next && n <= p->txv.capacity / 2)
		ferry__prefetch_w(next, n);
}

static int try_reserve(ferry_port *p, void *arg)
{
	struct post_arg *a = arg;
	/* A peer known to be gone will never read what we post. */
	if (ferry__port_closed(p) || ferry__port_gone(p))
		return -EPIPE;
	return ferry_ring_spsc_view_reserve(&p->txv, a->len, &a->where);
}

FERRY_API int ferry_port_post_bytes(ferry_port *p, const void *data, size_t len, int64_t timeout_ns)
{
	return ferry__port_post_raw(p, WIRE_RAW, data, len, timeout_ns);
}

int ferry__port_post_raw(ferry_port *p, uint32_t kind, const void *data, size_t len, int64_t timeout_ns)
{
	if (!p)
		return ferry__fail(-EINVAL, "ferry_port_post_bytes: port is NULL");
	if (!data && len)
		return ferry__fail(-EINVAL, "ferry_port_post_bytes: data is NULL with len %zu", len);
	if (p->detached)
		return ferry__fail(FERRY_EDETACHED, "ferry_port_post_bytes: the port was transferred away");
	if (len > p->max_msg)
		return ferry__fail(-EMSGSIZE,
				   "ferry_port_post_bytes: %zu bytes exceed this port's largest message (%zu)",
				   len, p->max_msg);
	struct post_arg a = { .len = sizeof(struct wire_hdr) + len };
	int rc = ferry__port_wait(p, &p->txd->space_ec, try_reserve, &a, timeout_ns);
	if (rc) {
		if (rc == -EPIPE)
			return ferry__fail(rc, "ferry_port_post_bytes: the channel is closed%s",
					   ferry__port_gone(p) ? " (peer process gone)" : "");
		if (rc == -EAGAIN || rc == -ETIMEDOUT)
			return ferry__fail(rc, "ferry_port_post_bytes: ring full%s",
					   rc == -ETIMEDOUT ? " until the timeout" : "");
		return rc;
	}
	struct wire_hdr wh = { .kind = kind, .aux = 0 };
	memcpy(a.where, &wh, sizeof wh);
	if (len)
		memcpy((char *)a.where + sizeof wh, data, len);
	ferry_ring_spsc_view_commit(&p->txv, a.len);
	ferry_ec_notify(&p->txd->data_ec);
	ferry__port_wake_fd(p);
	/* Not for a record of a few lines: the consumer polls the next one's
	 * first line anyway, and a 64 B round trip gains nothing (512 B:
	 * ~0.73 -> ~0.64 us). */
	if (a.len >= FERRY_PREFETCH_MIN)
		ferry__port_prefetch_next(p, a.len);
	return 0;
}

static int try_peek(ferry_port *p, void *arg)
{
	if (ferry__port_closed(p))
		return -EPIPE;
	const void **rec = arg;
	size_t len;
	int rc = ferry_ring_spsc_view_peek(&p->rxv, &rec[0], &len);
	if (rc == 0)
		rec[1] = (const void *)(uintptr_t)len;
	return rc;
}

/*
 * The pollable fd is the port's end of the control socket: readable when a
 * wake packet, an fd batch or the peer's hang-up is there. Arming drops
 * first what no record will claim (wakes, junk, stale or impossible
 * batches), so that only a batch whose record is on its way, the hang-up,
 * or a wake sent after the announce below can keep it readable. Arming it follows
 * the eventcount's protocol with the fd_waiting word: announce (seq_cst),
 * re-check the ring, and only then tell the caller to poll. The producer
 * loads fd_waiting after its commit and its seq_cst fence (in
 * ferry_ec_notify), so one of the two sees the other.
 */
static int arm_fd(ferry_port *p, const void **rec)
{
	ferry__port_drain_wakes(p);
	atomic_store_explicit(&p->rxd->fd_waiting, 1, memory_order_seq_cst);
	ferry__full_fence();
	int rc = attempt_once(p, try_peek, rec);
	if (rc == -EAGAIN && peer_hung_up(p)) {
		/* The hang-up keeps the fd readable: report it, after one last
		 * look for what the peer committed before it went. */
		rc = attempt_once(p, try_peek, rec);
		if (rc == -EAGAIN)
			rc = -EPIPE;
	}
	if (rc != -EAGAIN) /* no wake needed */
		atomic_store_explicit(&p->rxd->fd_waiting, 0, memory_order_relaxed);
	return rc;
}

/* This end is driven by ferry: its posts answer the consumer's wake word. */
static inline void announce_wakes(ferry_port *p)
{
	if (FERRY_UNLIKELY(!(atomic_load_explicit(&p->txd->wakes, memory_order_relaxed) & CHAN_WAKES_DATA)))
		atomic_fetch_or_explicit(&p->txd->wakes, CHAN_WAKES_DATA, memory_order_relaxed);
}

void ferry__port_wake_fd(ferry_port *p)
{
	/* Tell the consumer once that we answer its wake word (after this
	 * commit's notify woke it, it may sleep on the socket). */
	announce_wakes(p);
	/* Ordered after the commit by the seq_cst fence in ferry_ec_notify. */
	if (!atomic_load_explicit(&p->txd->fd_waiting, memory_order_relaxed))
		return;
	if (!atomic_exchange_explicit(&p->txd->fd_waiting, 0, memory_order_relaxed))
		return;
	/* A full socket buffer already makes the peer readable. */
	char w = 'w';
	send(p->sock, &w, 1, MSG_DONTWAIT | MSG_NOSIGNAL);
}

enum ctl_head ferry__port_ctl_peek(ferry_port *p, struct fd_batch *bh)
{
	for (;;) {
		enum ctl_head h = ctl_peek_raw(p, bh);
		/* A sender blocked on a full ring sleeps on the socket for a wake
		 * like this one: it takes wakes itself (its poll returns at once
		 * while one is queued), or it could sleep through the one meant
		 * for it. A receiver that finds one ahead of its fds lets it. */
		if (h != CTL_WAKE || atomic_load_explicit(&p->sock_sleeper, memory_order_seq_cst) != SOCK_TX)
			return h;
		sched_yield();
	}
}

static enum ctl_head ctl_peek_raw(ferry_port *p, struct fd_batch *bh)
{
	unsigned char buf[sizeof(struct fd_frame) + sizeof(struct fd_batch) + 1];
	ssize_t n;
	/* MSG_PEEK without a control buffer installs none of the packet's fds;
	 * MSG_TRUNC gives its real length, so a long packet is seen as such. */
	/* ECONNRESET: the peer closed with packets of ours unread (wakes, say).
	 * It is reported once, ahead of what is queued here: look again, or
	 * a batch it sent before it died would read as missing. */
	do
		n = recv(p->sock, buf, sizeof buf, MSG_PEEK | MSG_DONTWAIT | MSG_TRUNC);
	while (n < 0 && (errno == EINTR || errno == ECONNRESET));
	if (n < 0)
		return errno == EAGAIN || errno == EWOULDBLOCK ? CTL_NONE : CTL_EOF;
	if (n == 0) {
		/* An empty packet, or the end: seqpacket says 0 for both. */
		struct pollfd pfd = { .fd = p->sock, .events = POLLIN | POLLRDHUP };
		if (poll(&pfd, 1, 0) > 0 && (pfd.revents & (POLLHUP | POLLRDHUP | POLLERR)))
			return CTL_EOF;
		return CTL_JUNK;
	}
	if (n == 1)
		return CTL_WAKE;
	struct fd_frame fr;
	memcpy(&fr, buf, sizeof fr);
	if ((size_t)n != sizeof fr + sizeof *bh || fr.magic != FERRY_FD_FRAME_MAGIC ||
	    fr.len != sizeof *bh || fr.nfds > FERRY_FDS_MAX)
		return CTL_JUNK;
	memcpy(bh, buf + sizeof fr, sizeof *bh);
	return CTL_BATCH;
}

void ferry__port_ctl_drop(ferry_port *p)
{
	char c;
	/* No control buffer: the kernel releases the fds, none is installed. */
	while (recv(p->sock, &c, 1, MSG_DONTWAIT) < 0 && errno == EINTR)
		;
}

int ferry__port_batch_stale(ferry_port *p, uint64_t seq)
{
	/* acquire: the producer counts (fetch_add) before it sends the batch
	 * this seq came from; the socket's queue orders the two for us. */
	return seq <= p->fd_seq_rx ||
	       seq > atomic_load_explicit(&p->rxd->fd_seq, memory_order_acquire);
}

/*
 * Take the batch heading the socket (a record may still claim it) into the
 * stash. Returns 0 when taken, -1 when it stays queued (the stash is full,
 * or the port was closed meanwhile). A batch that does not read whole is
 * stashed empty: its record then fails alone, as it would have from the
 * socket.
 */
static int stash_take(ferry_port *p, const struct fd_batch *peeked)
{
	if (atomic_load_explicit(&p->stash_n, memory_order_relaxed) >= FERRY_STASH_MAX)
		return -1;
	struct fd_stash e = { .seq = peeked->seq, .index = peeked->index, .count = peeked->count };
	struct fd_batch bh;
	int rc = ferry_fds_recv(p->sock, &bh, sizeof bh, e.fds, FERRY_FDS_MAX, &e.nfds, 0);
	if (rc == -EAGAIN)
		return -1; /* gone meanwhile (cannot happen: only we read) */
	if (rc)
		e.nfds = 0;
	else if (bh.seq != e.seq || bh.index != e.index || bh.count != e.count) {
		/* Not what the peek said (cannot happen either): keep it empty. */
		for (unsigned i = 0; i < e.nfds; i++)
			close(e.fds[i]);
		e.nfds = 0;
	}
	pthread_mutex_lock(&p->stash_lock);
	unsigned n = atomic_load_explicit(&p->stash_n, memory_order_relaxed);
	if (ferry__port_closed(p) || p->detached) {
		/* Closed by another thread meanwhile: nobody will claim it. */
		for (unsigned i = 0; i < e.nfds; i++)
			close(e.fds[i]);
	} else {
		p->stash[n] = e;
		atomic_store_explicit(&p->stash_n, n + 1, memory_order_relaxed);
	}
	pthread_mutex_unlock(&p->stash_lock);
	return 0;
}

/* Close the stashed batches no record will claim any more (a record of a
 * later sequence was read, or a void record named theirs). */
static void stash_purge(ferry_port *p)
{
	pthread_mutex_lock(&p->stash_lock);
	unsigned n = atomic_load_explicit(&p->stash_n, memory_order_relaxed), kept = 0;
	for (unsigned i = 0; i < n; i++) {
		if (ferry__port_batch_stale(p, p->stash[i].seq)) {
			for (unsigned k = 0; k < p->stash[i].nfds; k++)
				close(p->stash[i].fds[k]);
			continue;
		}
		if (kept != i)
			p->stash[kept] = p->stash[i];
		kept++;
	}
	atomic_store_explicit(&p->stash_n, kept, memory_order_relaxed);
	pthread_mutex_unlock(&p->stash_lock);
}

void ferry__port_drain_wakes(ferry_port *p)
{
	if (atomic_load_explicit(&p->stash_n, memory_order_relaxed))
		stash_purge(p);
	for (int i = 0; i < FERRY_CTL_DROP_MAX; i++) {
		struct fd_batch bh;
		enum ctl_head h = ferry__port_ctl_peek(p, &bh);
		if (h == CTL_NONE || h == CTL_EOF)
			return;
		if (h == CTL_BATCH && !ferry__port_batch_stale(p, bh.seq)) {
			/* A record may still claim it: it is on its way. Stash it,
			 * so that the socket stops being readable until the commit's
			 * wake (a level-triggered poller would spin till then). */
			if (stash_take(p, &bh))
				return;
			continue;
		}
		ferry__port_ctl_drop(p);
	}
}

static void stash_close_all(ferry_port *p)
{
	unsigned n = atomic_load_explicit(&p->stash_n, memory_order_relaxed);
	for (unsigned i = 0; i < n; i++)
		for (unsigned k = 0; k < p->stash[i].nfds; k++)
			close(p->stash[i].fds[k]);
	atomic_store_explicit(&p->stash_n, 0, memory_order_relaxed);
}

void ferry__port_stash_clear(ferry_port *p)
{
	if (!atomic_load_explicit(&p->stash_n, memory_order_relaxed))
		return;
	pthread_mutex_lock(&p->stash_lock);
	stash_close_all(p);
	pthread_mutex_unlock(&p->stash_lock);
}

/* Drop stash entry @i (its fds already closed or moved). Lock held. */
static void stash_remove_head(ferry_port *p)
{
	unsigned n = atomic_load_explicit(&p->stash_n, memory_order_relaxed);
	memmove(&p->stash[0], &p->stash[1], (n - 1) * sizeof p->stash[0]);
	atomic_store_explicit(&p->stash_n, n - 1, memory_order_relaxed);
}

int ferry__port_stash_pop(ferry_port *p, uint64_t seq, struct fd_stash *out, unsigned *dropped)
{
	if (!atomic_load_explicit(&p->stash_n, memory_order_relaxed))
		return 0;
	int rc = 0;
	pthread_mutex_lock(&p->stash_lock);
	while (atomic_load_explicit(&p->stash_n, memory_order_relaxed)) {
		struct fd_stash *e = &p->stash[0];
		if (e->seq == seq) {
			*out = *e;
			stash_remove_head(p);
			rc = 1;
			break;
		}
		if (e->seq > seq && !ferry__port_batch_stale(p, e->seq)) {
			rc = -1; /* the next record's: it stays */
			break;
		}
		/* Older, or stale: no record will claim it. */
		for (unsigned k = 0; k < e->nfds; k++)
			close(e->fds[k]);
		stash_remove_head(p);
		++*dropped;
	}
	pthread_mutex_unlock(&p->stash_lock);
	return rc;
}

int ferry__port_stash_copy(ferry_port *p, struct fd_stash *out, unsigned max)
{
	if (!atomic_load_explicit(&p->stash_n, memory_order_relaxed))
		return 0;
	int rc = 0;
	pthread_mutex_lock(&p->stash_lock);
	unsigned n = atomic_load_explicit(&p->stash_n, memory_order_relaxed);
	if (n > max) {
		rc = ferry__fail(-EMSGSIZE, "ferry_port_post: no room for the fd batches a transferred port holds");
		goto out;
	}
	for (unsigned i = 0; i < n; i++) {
		out[i] = p->stash[i];
		for (unsigned k = 0; k < out[i].nfds; k++) {
			out[i].fds[k] = fcntl(p->stash[i].fds[k], F_DUPFD_CLOEXEC, 0);
			if (out[i].fds[k] < 0) {
				rc = ferry__errno(-errno, "ferry_port_post: dup of a transferred port's stashed fd");
				for (unsigned j = 0; j < k; j++)
					close(out[i].fds[j]);
				for (unsigned j = 0; j < i; j++)
					for (unsigned m = 0; m < out[j].nfds; m++)
						close(out[j].fds[m]);
				goto out;
			}
		}
	}
	rc = (int)n;
out:
	pthread_mutex_unlock(&p->stash_lock);
	return rc;
}

int ferry__port_stash_push(ferry_port *p, const struct fd_stash *in)
{
	pthread_mutex_lock(&p->stash_lock);
	unsigned n = atomic_load_explicit(&p->stash_n, memory_order_relaxed);
	int rc = -ENOSPC;
	if (n < FERRY_STASH_MAX) {
		p->stash[n] = *in;
		atomic_store_explicit(&p->stash_n, n + 1, memory_order_relaxed);
		rc = 0;
	}
	pthread_mutex_unlock(&p->stash_lock);
	return rc;
}

FERRY_API int ferry_port_fd(ferry_port *p)
{
	if (!p)
		return ferry__fail(-EINVAL, "ferry_port_fd: port is NULL");
	if (p->detached)
		return ferry__fail(FERRY_EDETACHED, "ferry_port_fd: the port was transferred away");
	p->fd_mode = 1;
	return p->sock;
}

static void consume(ferry_port *p)
{
	ferry_ring_spsc_view_release(&p->rxv);
	ferry_ec_notify(&p->rxd->space_ec);
	/* A sender blocked on the full ring may sleep on its control socket:
	 * ordered after the release by the seq_cst fence in ferry_ec_notify. */
	if (atomic_load_explicit(&p->rxd->space_waiting, memory_order_relaxed) &&
	    atomic_exchange_explicit(&p->rxd->space_waiting, 0, memory_order_relaxed)) {
		char w = 's';
		send(p->sock, &w, 1, MSG_DONTWAIT | MSG_NOSIGNAL);
	}
}

FERRY_API int ferry_port_recv(ferry_port *p, ferry_msg **msg, int64_t timeout_ns)
{
	if (msg)
		*msg = NULL;
	if (!p || !msg)
		return ferry__fail(-EINVAL, "ferry_port_recv: %s is NULL", !p ? "port" : "msg");
	int64_t deadline = timeout_ns > 0 ? ferry__now_ns() + timeout_ns : 0;
	for (;;) {
		/* A positive timeout stays positive (1 ns: one last try, then
		 * -ETIMEDOUT); a negative one would mean forever. */
		int64_t left = timeout_ns;
		if (timeout_ns > 0) {
			left = deadline - ferry__now_ns();
			if (left < 1)
				left = 1;
		}
		int rc = ferry__port_recv_any(p, msg, left);
		if (rc || !(*msg)->ctrl)
			return rc;
		/* A runtime control record: the runtime takes note, the user never sees it. */
		if (p->ctrl_fn)
			p->ctrl_fn(p->ctrl_arg, *msg);
		ferry_msg_free(*msg);
		*msg = NULL;
	}
}

int ferry__port_recv_any(ferry_port *p, ferry_msg **msg, int64_t timeout_ns)
{
	*msg = NULL;
	if (p->detached)
		return ferry__fail(FERRY_EDETACHED, "ferry_port_recv: the port was transferred away");
	announce_wakes(p);
	int64_t deadline = timeout_ns > 0 ? ferry__now_ns() + timeout_ns : 0;
	for (;;) {
		int64_t left = timeout_ns;
		if (timeout_ns > 0) {
			left = deadline - ferry__now_ns();
			if (left <= 0)
				left = 0;
		}
		const void *rec[2];
		int rc = ferry__port_wait(p, &p->rxd->data_ec, try_peek, rec, left);
		if (rc == -EAGAIN && timeout_ns == 0 && p->fd_mode)
			rc = arm_fd(p, rec);
		if (rc == -EAGAIN && timeout_ns > 0)
			rc = -ETIMEDOUT;
		switch (rc) {
		case 0:
			break;
		case -EPIPE:
			/* Every record was read: nothing will claim the stash. */
			ferry__port_stash_clear(p);
			return ferry__fail(rc, "ferry_port_recv: %s", ferry__port_closed(p) ? "this port is closed"
					   : ferry__port_gone(p) ? "the peer process is gone"
					   : "the peer closed the channel");
		case -EAGAIN:
			return ferry__fail(rc, "ferry_port_recv: no message waiting");
		case -ETIMEDOUT:
			return ferry__fail(rc, "ferry_port_recv: no message before the timeout");
		case -EPROTO:
			ferry__port_stash_clear(p);
			ferry_ring_spsc_close(p->tx);
			ferry_ec_notify(&p->txd->data_ec);
			return ferry__fail(rc, "ferry_port_recv: the channel's shared ring is corrupt; channel closed");
		default:
			return rc;
		}
		size_t len = (size_t)(uintptr_t)rec[1];
		/* The producer has just written the record on another core: ask
		 * for all its lines (the first 4 KiB) at once, before the headers
		 * are read, so that their misses overlap rather than follow one
		 * another (the clone header may straddle a line; the decoder
		 * asks again, harmlessly). Prefetches: nothing loaded, nothing
		 * ordered, inside the record the ring validated. */
		for (uintptr_t a = (uintptr_t)rec[0] & ~(uintptr_t)63,
			       e = (uintptr_t)rec[0] + (len < 4096 ? len : 4096);
		     a < e; a += 64)
			__builtin_prefetch((const void *)a);
		struct wire_hdr wh;
		if (len < sizeof wh) {
			consume(p);
			return ferry__fail(-EBADMSG, "ferry_port_recv: record of %zu bytes is shorter than its header", len);
		}
		/* One read of the header: the peer may rewrite shared memory at will. */
		memcpy(&wh, rec[0], sizeof wh);
		const unsigned char *body = (const unsigned char *)rec[0] + sizeof wh;
		len -= sizeof wh;
		switch (wh.kind) {
		case WIRE_VOID:
			/* An abandoned post names the sequence of the fd batches it
			 * may have left queued: they are stale from now on. */
			if (len >= sizeof(uint64_t)) {
				uint64_t seq;
				memcpy(&seq, body, sizeof seq);
				if (seq > p->fd_seq_rx && !ferry__port_batch_stale(p, seq))
					p->fd_seq_rx = seq;
			}
			consume(p);
			continue;
		case WIRE_CLONE:
			rc = ferry__msg_decode(p, body, len, msg);
			consume(p);
			return rc;
		case WIRE_RAW:
		case WIRE_CTRL:
			break;
		default:
			consume(p);
			return ferry__fail(-EBADMSG, "ferry_port_recv: unknown record kind %u", wh.kind);
		}
		ferry_msg *m = malloc(sizeof *m + len);
		if (!m)
			return ferry__fail(-ENOMEM, "ferry_port_recv: out of memory for a %zu-byte message", len);
		memset(m, 0, sizeof *m);
		m->ctrl = wh.kind == WIRE_CTRL;
		m->len = len;
		memcpy(m->data, body, len);
		consume(p);
		*msg = m;
		return 0;
	}
}

FERRY_API const void *ferry_msg_data(const ferry_msg *m)
{
	return m && !m->value ? m->data : NULL;
}

FERRY_API size_t ferry_msg_len(const ferry_msg *m)
{
	return m && !m->value ? m->len : 0;
}

FERRY_API int ferry_port_set_wait(ferry_port *p, enum ferry_wait_mode mode, int64_t spin_ns)
{
	if (!p)
		return ferry__fail(-EINVAL, "ferry_port_set_wait: port is NULL");
	if (mode != FERRY_WAIT_ADAPTIVE && mode != FERRY_WAIT_SPIN && mode != FERRY_WAIT_BLOCK)
		return ferry__fail(-EINVAL, "ferry_port_set_wait: unknown mode %d", (int)mode);
	if (spin_ns < 0)
		return ferry__fail(-EINVAL, "ferry_port_set_wait: negative spin budget %lld",
				   (long long)spin_ns);
	p->mode = mode;
	p->spin_ns = spin_ns ? spin_ns : DEFAULT_SPIN_NS;
	return 0;
}

FERRY_API int ferry_port_set_zero_copy(ferry_port *p, int on)
{
	if (!p)
		return ferry__fail(-EINVAL, "ferry_port_set_zero_copy: port is NULL");
	if (p->detached)
		return ferry__fail(FERRY_EDETACHED, "ferry_port_set_zero_copy: the port was transferred away");
	p->zero_copy = on != 0;
	return 0;
}

FERRY_API void ferry_port_close(ferry_port *p)
{
	if (!p || p->detached || atomic_exchange_explicit(&p->closed, 1, memory_order_relaxed))
		return;
	/* Nothing will claim what the stash holds (and nothing is stashed
	 * from now on: stash_take looks at closed under the lock). */
	ferry__port_stash_clear(p);
	/* Our tx ring: the peer drains it, then reads -EPIPE. Our rx ring: the
	 * peer's next reserve fails at once. Wake whoever sleeps on either. */
	ferry_ring_spsc_close(p->tx);
	ferry_ring_spsc_close(p->rx);
	ferry_ec_notify(&p->txd->data_ec);
	ferry_ec_notify(&p->txd->space_ec);
	ferry_ec_notify(&p->rxd->data_ec);
	ferry_ec_notify(&p->rxd->space_ec);
	/* The peer's socket sleeper (and a loop watching its fd) sees the
	 * hang-up; a peer in a sliced sleep notices at its next look. */
	if (p->sock >= 0)
		shutdown(p->sock, SHUT_RDWR);
}

FERRY_API void ferry_port_destroy(ferry_port *p)
{
	if (!p)
		return;
	if (!p->detached) {
		ferry_port_close(p);
		ferry__port_detach(p);
	}
	free(p);
}

FERRY_API size_t ferry_port_max_message(const ferry_port *p)
{
	return p && !p->detached ? p->max_msg : 0;
}

void ferry__port_detach(ferry_port *p)
{
	if (p->detached)
		return;
	registry_del(p);
	if (p->sock >= 0)
		close(p->sock);
	p->sock = -1;
	/* A port that travelled took copies of its stash along (msg.c). */
	ferry__port_stash_clear(p);
	ferry_seg_unref(p->seg);
	p->seg = NULL;
	ferry__msg_port_fini(p);
	p->detached = 1;
}

void ferry__port_forget(ferry_port *p)
{
	if (!p)
		return;
	registry_del(p);
	if (p->sock >= 0)
		close(p->sock);
	/* No lock: the port is ours alone here (and after a fork, a parent's
	 * thread may have held it). */
	stash_close_all(p);
	ferry_seg_unref(p->seg);
	ferry__msg_port_fini(p);
	free(p);
}

int ferry__port_sock(const ferry_port *p)
{
	return p->sock;
}
