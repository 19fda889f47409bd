/* ports/port_int.h - internal: the channel layout and port hooks for runtime/. */
#ifndef FERRY_PORT_INT_H
#define FERRY_PORT_INT_H

#include "ferry/atomic.h"
#include "ferry/port.h"
#include "ferry/ring.h"
#include "ferry/seg.h"
#include "ferry/value.h"

#include <pthread.h>
#include <stdalign.h>
#include <stdatomic.h>
#include <stddef.h>
#include <stdint.h>

#define FERRY_CHAN_MAGIC 0x6672796368616e31ull /* "frychan1" */
#define FERRY_CHAN_VERSION 2u /* 2: space_waiting */

/*
 * The channel segment: this header on its own page, then ring[0] (side 0
 * posts, side 1 receives) and ring[1] (the other way). Offsets, never
 * pointers. Each direction's eventcounts share a line: the producer notifies
 * data_ec and waits on space_ec; the consumer the reverse.
 */
struct chan_dir {
	alignas(64) struct ferry_ec data_ec; /* "a record was committed" */
	struct ferry_ec space_ec;            /* "a record was released" */
	/* Sequence of the fd batches the producer sent on the control socket.
	 * Here, not in the port, so that a port that moves to another process
	 * goes on counting where its previous owner stopped. Producer-owned. */
	_Atomic uint64_t fd_seq;
	/* Set by the consumer when it waits on its pollable fd (ferry_port_fd)
	 * instead of the eventcount; the producer then sends a 1-byte wake on
	 * the control socket. Beside data_ec: the producer reads both. */
	_Atomic uint32_t fd_waiting;
	/* Set by the producer when it sleeps on its control socket for room
	 * in the ring (ports/port.c); the consumer then sends a 1-byte wake
	 * after its release. */
	_Atomic uint32_t space_waiting;
	/* The two ends answer the words above with socket wakes: bit 0 set by
	 * the producer's port once ferry drives it (its first post or receive,
	 * or its import), bit 1 by the consumer when its port is opened. A
	 * side that drives the ring by hand and only notifies the eventcount
	 * never sets its bit, and is slept on with liveness slices. */
	_Atomic uint32_t wakes;
};

#define CHAN_WAKES_DATA 1u  /* the producer sends wakes after a commit */
#define CHAN_WAKES_SPACE 2u /* the consumer sends wakes after a release */

struct chan_hdr {
	uint64_t magic;
	uint32_t version;
	uint32_t pad;
	uint64_t seg_size;
	uint64_t ring_off[2];
	uint64_t ring_size[2];
	struct chan_dir dir[2];
};

/* Every record starts with this; the payload follows. */
struct wire_hdr {
	uint32_t kind; /* enum wire_kind */
	uint32_t aux;
};

enum wire_kind {
	WIRE_RAW = 1,   /* plain bytes */
	WIRE_VOID = 2,  /* an abandoned post, skipped; payload: its fd seq (u64) */
	WIRE_CLONE = 3, /* a structured clone (see ports/msg.c) */
	WIRE_CTRL = 4,  /* a runtime control record (online, error): not for the user */
};

/* Spill segments each port keeps for reuse, on either side. */
#define FERRY_SPILL_CACHE 4

/*
 * Batches a receiving port took off its control socket ahead of their
 * records (ferry__port_drain_wakes): a batch whose record is still being
 * posted would otherwise keep the pollable fd readable, and a level-
 * triggered loop would spin on it until the commit. Bounded: past
 * FERRY_STASH_MAX batches the rest stays queued (a hostile peer can keep
 * its own channel readable, docs/security.md).
 */
#define FERRY_STASH_MAX 8

struct fd_stash {
	uint64_t seq;
	uint32_t index;
	uint32_t count;               /* as the batch header said */
	unsigned nfds;                /* as arrived (0: the batch did not read) */
	int fds[FERRY_FDS_MAX];
};

/* One end of a channel, private to the process that holds it. */
struct ferry_port {
	struct ferry_port *next, *prev; /* the process's registry of live ports */
	ferry_seg *seg;
	struct chan_hdr *hdr;
	ferry_ring_spsc *tx, *rx;
	/* Private copies of each ring's validated layout: every ring call goes
	 * through them, so a peer that rewrites a ring header gets -EPROTO,
	 * never an access past the mapping. */
	struct ferry_ring_spsc_view txv, rxv;
	struct chan_dir *txd, *rxd; /* eventcounts of the tx and rx directions */
	int sock;                   /* our end of the control socket pair */
	int side;
	/* Both may be read by the posting and the receiving thread at once and
	 * set by either (or by a closing thread): relaxed atomics suffice, as
	 * the rings' own closed words carry the ordering. */
	atomic_int closed;          /* ferry_port_close was called here */
	atomic_int peer_gone;       /* the peer process hung up */
	/* A ring of this channel was found corrupt (-EPROTO). Kept here, not
	 * in shared memory, so that a peer that repairs the ring and clears its
	 * closed words cannot reopen the channel: every later call is -EPROTO. */
	atomic_int corrupt;
	/* Which thread of this process sleeps on the control socket (SOCK_RX,
	 * SOCK_TX), 0 for none: at most one at a time, the other sleeps on its
	 * eventcount and relies on this one to see the peer hang up. */
	atomic_int sock_sleeper;
	enum ferry_wait_mode mode;
	int64_t spin_ns;
	size_t max_msg;             /* largest raw record payload the ring takes */
	size_t max_message;         /* largest message, spilled or not */
	uint64_t chan_id;           /* the segment's inode: same channel across processes */
	unsigned char *scratch;     /* clone encoding space of the sender (msg.c) */
	size_t scratch_cap;
	struct ferry_clone_handles post_table; /* the last post's handle table, emptied (msg.c) */
	size_t direct_len;          /* the last record encoded in place (msg.c post_direct) */
	/* Spill segments this sender reuses once the receiver has let go of
	 * them, and the ones this receiver keeps mapped (msg.c). */
	ferry_seg *spill_tx[FERRY_SPILL_CACHE];
	struct spill_rx {
		uint64_t id;        /* (dev, inode) of the memfd */
		ferry_seg *seg;
		uint64_t used;      /* last use, for eviction */
	} spill_rx[FERRY_SPILL_CACHE];
	uint64_t spill_clock;
	int fd_mode;                /* ferry_port_fd was asked for: arm it on -EAGAIN */
	int zero_copy;              /* ferry_port_set_zero_copy: spills from a peer read in place */
	/* Control records reaching ferry_port_recv go here (runtime/worker.c). */
	void (*ctrl_fn)(void *arg, const struct ferry_msg *msg);
	void *ctrl_arg;
	int detached;               /* transferred away: only destroy is valid */
	uint64_t fd_seq;            /* sequence of fd batches sent (sender side) */
	/* Receiver side: the newest sequence whose record was read (or whose
	 * post was abandoned): a batch at or below it is stale. Receiving
	 * thread only. */
	uint64_t fd_seq_rx;
	/* The stash (FIFO, oldest first; all older than what the socket
	 * holds). Filled by the receiving thread only; emptied by it, or by
	 * whatever ends the port (close may come from another thread): the
	 * lock covers the entries, stash_n is read unlocked as a hint. */
	pthread_mutex_t stash_lock;
	atomic_uint stash_n;
	struct fd_stash stash[FERRY_STASH_MAX];
};

/*
 * The fds of a message travel on the control socket in batches: the frame
 * of shm/fdpass.c (mirrored here, to recognise a batch without taking it),
 * then this header.
 */
struct fd_batch {
	uint64_t seq;
	uint32_t index;
	uint32_t count;
};

struct fd_frame {
	uint32_t magic; /* FERRY_FD_FRAME_MAGIC */
	uint16_t len;   /* header bytes after the frame */
	uint16_t nfds;  /* fds attached */
};

#define FERRY_FD_FRAME_MAGIC 0x31595246u /* shm/fdpass.c FRAME_MAGIC */

/* What heads a port's control socket (ferry__port_ctl_peek). */
enum ctl_head {
	CTL_NONE,  /* nothing queued */
	CTL_EOF,   /* the peer hung up and nothing is queued */
	CTL_WAKE,  /* a 1-byte wake packet */
	CTL_BATCH, /* a well-framed fd batch: its header is returned */
	CTL_JUNK,  /* anything else: not ours to read */
};

/* A received message: raw bytes, or a decoded value with its handles. */
struct msg_handle {
	int kind;     /* FERRY_VALUE_BUF, _SHARED or _PORT */
	void *handle; /* ferry_buf * or ferry_port * */
	int kept;     /* taken by the receiver: not freed with the message */
};

struct ferry_msg {
	int ctrl;                   /* a WIRE_CTRL record (raw bytes in data) */
	size_t len;
	struct ferry_value *value;  /* NULL for raw bytes */
	struct msg_handle *handles; /* a clone's, in data[] (one allocation) */
	size_t nhandles;
	alignas(16) unsigned char data[];
};

static inline int ferry__port_closed(ferry_port *p)
{
	return atomic_load_explicit(&p->closed, memory_order_relaxed);
}

static inline int ferry__port_gone(ferry_port *p)
{
	return atomic_load_explicit(&p->peer_gone, memory_order_relaxed);
}

/*
 * Wait until @attempt(p, arg) stops returning -EAGAIN, following the port's
 * wait mode; @ec is the eventcount the other side notifies when the attempt
 * may succeed. Returns the attempt's result, -EAGAIN (timeout 0), -ETIMEDOUT,
 * or -EPIPE when the peer is gone and a last attempt still finds nothing.
 */
int ferry__port_wait(ferry_port *p, struct ferry_ec *ec, int (*attempt)(ferry_port *, void *),
		     void *arg, int64_t timeout_ns);

/* ferry_port_recv that also returns control records (msg->ctrl set). */
int ferry__port_recv_any(ferry_port *p, ferry_msg **msg, int64_t timeout_ns);

/* ferry_port_post_bytes with a record kind (WIRE_RAW or WIRE_CTRL). */
int ferry__port_post_raw(ferry_port *p, uint32_t kind, const void *data, size_t len,
			 int64_t timeout_ns);

/* Ask for the lines of [@a, @a + @n) for writing (a hint: a NOP on a CPU
 * without PREFETCHW; never faults, changes nothing another side can see). */
void ferry__prefetch_w(void *a, size_t n);

/* After a commit of a @len-byte record to @p's tx ring, take the lines
 * where the next record will go (guessed as long) for writing, if the ring
 * has them free. Raw and general clone records call it from
 * FERRY_PREFETCH_MIN bytes on. */
#define FERRY_PREFETCH_MIN 256
void ferry__port_prefetch_next(ferry_port *p, size_t len);

/* Producer side, after a commit and its eventcount notify: wake a consumer
 * that waits on its pollable fd. */
void ferry__port_wake_fd(ferry_port *p);

/* Drop what heads the control socket and no message will claim: wake
 * packets, junk (with its fds) and stale or impossible fd batches. Stops at
 * a batch a record may still claim, at a hang-up, or when nothing is left. */
void ferry__port_drain_wakes(ferry_port *p);

/* Look at the packet heading @p's control socket without taking it; for
 * CTL_BATCH, *@bh gets the batch header. */
enum ctl_head ferry__port_ctl_peek(ferry_port *p, struct fd_batch *bh);

/* Take the packet heading @p's control socket and drop it: its fds are
 * never installed in our table (the kernel releases them). */
void ferry__port_ctl_drop(ferry_port *p);

/* A batch with sequence @seq cannot belong to any record the peer posted:
 * at or below what this port has read already, or past the producer's
 * counter (read after the batch was seen: the producer counts before it
 * sends). */
int ferry__port_batch_stale(ferry_port *p, uint64_t seq);

/* Most packets one call drops before it gives up (a peer that floods the
 * control socket costs a bounded amount of work per call). */
#define FERRY_CTL_DROP_MAX 1024

/* recv_fds (msg.c): take the stashed batch of sequence @seq heading @p's
 * stash into *@out (its fds now the caller's), dropping stale or older
 * batches ahead of it (counted in *@dropped). Returns 1 when taken, 0 when
 * the stash is empty (read the socket), -1 when a newer batch heads it. */
int ferry__port_stash_pop(ferry_port *p, uint64_t seq, struct fd_stash *out, unsigned *dropped);

/* Close every stashed fd of @p (whatever ends the port). */
void ferry__port_stash_clear(ferry_port *p);

/* A port about to travel (msg.c): dup its stashed batches into @out (at
 * most @max), so that they go along with it. Returns how many, or a
 * negative errno (nothing left open). */
int ferry__port_stash_copy(ferry_port *p, struct fd_stash *out, unsigned max);

/* An imported port (msg.c): append a batch that travelled with it (its fds
 * now the port's). -ENOSPC when the stash is full (nothing taken). */
int ferry__port_stash_push(ferry_port *p, const struct fd_stash *in);

/* Release the spill segments @p keeps (msg.c). */
void ferry__msg_port_fini(ferry_port *p);

/* Open a port on side @side of the channel in @seg (taking the reference)
 * with control socket @sock. */
int ferry__port_open(ferry_port **out, ferry_seg *seg, int side, int sock);

/* Detach @p: it was transferred; drop this process's copy (no close). */
void ferry__port_detach(ferry_port *p);

/* Open the port a peer transferred: side @side of the channel whose segment
 * is @seg_fd, with control socket @sock. Validates the layout before use.
 * Consumes both fds either way. */
int ferry__port_import(ferry_port **out, int seg_fd, int sock, uint32_t side);

/* Two ports are ends of the same channel (works across processes). */
int ferry__port_same_channel(const ferry_port *a, const ferry_port *b);

/* Build *@msg from the body of a WIRE_CLONE record (@len bytes at @body,
 * still in the ring: read it once, validate everything). */
int ferry__msg_decode(ferry_port *p, const unsigned char *body, size_t len, ferry_msg **msg);

/* Drop this process's copy of @port without closing the channel: used after
 * fork on the port that belongs to the other process. */
void ferry__port_forget(ferry_port *port);

/* In a freshly forked child: close the control sockets of every port of the
 * process but @keep (NULL: all), so that only the ports the child was given
 * keep their peers' liveness tied to this process. */
void ferry__port_keep_only(ferry_port *keep);

/* The control socket of @port (for liveness and fd passing). */
int ferry__port_sock(const ferry_port *port);

#endif
