/**
 * @file
 * @brief MessageChannel-style entangled ports.
 *
 * ferry_channel() makes two ports joined by one shared segment: an SPSC ring
 * and two eventcounts each way, the closed flags, and a control socket pair
 * (for fds, and so that a peer process that dies is seen as gone). The two
 * ports may live in two threads, or in two processes after a fork.
 *
 * Waiting: a receiver (or a sender facing a full ring) spins for a short
 * budget, then announces that it sleeps and sleeps on the channel's control
 * socket (or its eventcount); the other side makes a syscall only when
 * someone sleeps. The mode is per port:
 * FERRY_WAIT_ADAPTIVE (default), FERRY_WAIT_SPIN (never sleeps: lowest
 * latency, burns a core), FERRY_WAIT_BLOCK (sleeps at once).
 *
 * Closing: ferry_port_close() on one side delivers everything posted before
 * it; then the peer's recv returns -EPIPE, and posting to a closed channel
 * returns -EPIPE. A peer process that dies is reported the same way: a
 * sleeper wakes on the control socket's hang-up at once, after the messages
 * the peer fully posted. Only a peer that never used its end through ferry,
 * a spinner (FERRY_WAIT_SPIN) and a few fallbacks (docs/design.md,
 * "Liveness") look every FERRY_PORT_LIVENESS_NS instead; nobody waits forever.
 *
 * Threads: one thread posts on a port at a time, and one receives; a port may
 * be used by a different thread at a different time. Messages arrive in post
 * order.
 */
#ifndef FERRY_PORT_H
#define FERRY_PORT_H

#include "ferry/common.h"

#ifdef __cplusplus
extern "C" {
#endif

/** One end of a channel (MessagePort); opaque. */
typedef struct ferry_port ferry_port;
/** A received message (MessageEvent); opaque. */
typedef struct ferry_msg ferry_msg;

/** How a port waits (ferry_port_set_wait). */
enum ferry_wait_mode {
	FERRY_WAIT_ADAPTIVE = 0, /**< spin briefly, yield, then sleep */
	FERRY_WAIT_SPIN = 1,     /**< spin until the deadline */
	FERRY_WAIT_BLOCK = 2,    /**< sleep at once */
};

/** The longest a waiter that cannot sleep on the control socket (a spinner,
 * or a peer that never used its end) takes to notice its peer process died. */
#define FERRY_PORT_LIVENESS_NS (50 * 1000 * 1000)

/** Default ring size each way. */
#define FERRY_CHANNEL_RING_DEFAULT ((size_t)64 * 1024)

/** The default largest message (a clone, spilled to its own segment when it
 * is larger than the ring takes). */
#define FERRY_MESSAGE_MAX_DEFAULT ((size_t)1 << 30)

/** Options of ferry_channel; zero fields mean defaults. */
struct ferry_channel_opts {
	size_t ring_bytes;  /**< each direction; a power of two; 0 = default */
	size_t max_message; /**< largest clone either port accepts; 0 = default (1 GiB) */
};

/**
 * A new channel (MessageChannel) of two entangled ports.
 *
 * @param a receives one port.
 * @param b receives the other.
 * @param opts NULL for defaults.
 * @par Ownership
 *   on success the caller owns both ports (ferry_port_destroy each); on
 *   failure both are NULL.
 * @return 0, -EINVAL (NULL out pointer, ring_bytes not a power of two in
 *   range), -ENOMEM, -ENOSPC, -EMFILE.
 */
FERRY_API int ferry_channel(ferry_port **a, ferry_port **b,
			    const struct ferry_channel_opts *opts);

/**
 * Send raw bytes.
 *
 * @param port the sending port.
 * @param data the bytes (copied; the caller keeps @p data).
 * @param len their length.
 * @param timeout_ns how long to wait while the ring is full (0 = try once).
 * @return 0, -EINVAL (NULL port, NULL data with len > 0), -EAGAIN (full,
 *   timeout 0), -ETIMEDOUT, -EPIPE (either side closed, or peer dead),
 *   -EMSGSIZE (larger than the ring can ever hold).
 */
FERRY_API int ferry_port_post_bytes(ferry_port *port, const void *data, size_t len,
				    int64_t timeout_ns);

/**
 * The next message.
 *
 * @param port the receiving port.
 * @param msg receives the message.
 * @param timeout_ns 0 = try once, FERRY_FOREVER = no limit.
 * @par Ownership
 *   on success *msg is the caller's (ferry_msg_free); on failure *msg is NULL.
 * @return 0, -EINVAL, -EAGAIN (none now, timeout 0), -ETIMEDOUT, -EPIPE
 *   (peer closed or died and everything it posted was received), -EPROTO
 *   (the shared ring is corrupt; the channel is closed).
 */
FERRY_API int ferry_port_recv(ferry_port *port, ferry_msg **msg, int64_t timeout_ns);

/** What a message transfers (Node's transferList): buffers and ports that
 * move with it. Every port the value references must be listed; a listed
 * buffer or port the value does not reference still moves. */
struct ferry_xfer {
	struct ferry_buf *const *bufs; /**< buffers that move */
	size_t nbufs;                  /**< entries at bufs */
	ferry_port *const *ports;      /**< ports that move */
	size_t nports;                 /**< entries at ports */
};

/** Most buffers and ports (handles) one message carries. */
#define FERRY_MSG_MAX_HANDLES 1024

/**
 * @fn int ferry_port_post(ferry_port *port, const struct ferry_value *v, const struct ferry_xfer *xfer, int64_t timeout_ns)
 * Send the structured clone of a value (postMessage).
 *
 * Buffers the value references are cloned, unless listed in @p xfer: then they
 * move (detached here, the same pages there). Shared buffers are shared.
 * Ports must be listed in @p xfer and move, with the messages queued for them.
 * All or nothing: the transfer list is checked and the value serialised
 * before anything is detached; on any error every handle is as it was.
 * @param port the sending port.
 * @param v the value.
 * @param xfer the transfer list; NULL for none.
 * @param timeout_ns how long to wait while the ring is full.
 * @par Ownership
 *   @p v stays the caller's. On success the listed handles are detached
 *   (free them with ferry_buf_free / ferry_port_destroy as usual).
 * @return 0, -EINVAL (NULL port or value; a NULL, duplicate, shared or
 *   self/peer entry in @p xfer; a port the value references but @p xfer does not
 *   list; a buffer referenced with the wrong kind), FERRY_EDETACHED (this
 *   port, or a listed or referenced handle, was transferred away), -EPIPE
 *   (closed, or a listed port is closed), FERRY_ENOTCLONEABLE, -EMSGSIZE
 *   (above the channel's max_message), -EAGAIN, -ETIMEDOUT, -ENOMEM.
 */
struct ferry_value;
FERRY_API int ferry_port_post(ferry_port *port, const struct ferry_value *v,
			      const struct ferry_xfer *xfer, int64_t timeout_ns);

/**
 * A received clone's value (NULL for a message posted with
 * ferry_port_post_bytes), owned by the message.
 *
 * Buffer and port handles in it are owned by the message too, and freed with
 * it, unless the receiver keeps them (ferry_msg_keep, ferry_msg_take_value).
 * A clone that fails to decode is reported by ferry_port_recv as -EBADMSG
 * (messageerror) and consumed; the next recv gets the next message.
 */
FERRY_API const struct ferry_value *ferry_msg_value(const ferry_msg *msg);
/** Make the message's value graph the caller's (ferry_value_free).
 * @return the value; NULL for a raw message. */
FERRY_API struct ferry_value *ferry_msg_take_value(ferry_msg *msg);
/** Make one buffer or port handle of the message the caller's (to free with
 * ferry_buf_free / ferry_port_destroy) instead of the message's.
 * @return 0, -ENOENT (not in this message). */
FERRY_API int ferry_msg_keep(ferry_msg *msg, const void *handle);
/** How many ports the message transferred. */
FERRY_API size_t ferry_msg_nports(const ferry_msg *msg);
/** Port @p i (i < ferry_msg_nports(msg)) of those the message transferred, in
 * transfer order (MessageEvent.ports). */
FERRY_API ferry_port *ferry_msg_port(const ferry_msg *msg, size_t i);

/** The message's bytes (a raw message; NULL for a clone); valid until
 * ferry_msg_free. */
FERRY_API const void *ferry_msg_data(const ferry_msg *msg);
/** The message's length (a raw message; 0 for a clone). */
FERRY_API size_t ferry_msg_len(const ferry_msg *msg);
/** Free a received message. NULL ok. */
FERRY_API void ferry_msg_free(ferry_msg *msg);

/**
 * How this port waits in recv and in a blocked post.
 *
 * @param port the port.
 * @param mode a ferry_wait_mode.
 * @param spin_ns spin budget for FERRY_WAIT_ADAPTIVE (0 = the default, ~20 us).
 * @return 0, -EINVAL (NULL port, unknown mode, negative budget).
 */
FERRY_API int ferry_port_set_wait(ferry_port *port, enum ferry_wait_mode mode,
				  int64_t spin_ns);

/**
 * Let large clones arriving on @p port from another process be handed over
 * in place (zero-copy receive), trusting the peer with it.
 *
 * A clone too big for the ring travels in a spill segment that the sender
 * reuses. Between threads its big buffers are always handed over in place;
 * a receiver in another process copies them out by default, since the
 * sender keeps write access to those pages and a peer process may be hostile
 * (docs/security.md). With @p on, the buffers of 64 KiB and more that make
 * at least half of a spilled message arrive as buffers over the sender's
 * segment, so that the whole trip costs the sender's one copy, as between
 * threads. The sender does not reuse the segment while any of them lives:
 * each holds a count in the segment until it is freed or detached. A peer
 * that breaks that rule (a hostile one) can change the bytes of such a
 * buffer after it arrived, and nothing more: reads stay in bounds, the
 * message still decodes or fails as a whole, and every other promise holds.
 * A buffer handed over this way moves on (a transfer) as a copy. The setting
 * belongs to this end of the channel: a transferred port arrives with it off.
 *
 * @param port the receiving port.
 * @param on nonzero to hand over in place, 0 for copies (the default).
 * @return 0, -EINVAL (NULL port), FERRY_EDETACHED (the port was transferred).
 */
FERRY_API int ferry_port_set_zero_copy(ferry_port *port, int on);

/**
 * Close the channel from this side.
 *
 * The peer receives
 * what this side posted, then -EPIPE; waiters on both sides wake. The handle
 * stays valid (recv and post return -EPIPE) until ferry_port_destroy.
 * Idempotent; NULL ok.
 */
FERRY_API void ferry_port_close(ferry_port *port);

/** Close (if not yet) and free the handle. NULL ok. */
FERRY_API void ferry_port_destroy(ferry_port *port);

/**
 * A file descriptor to embed @p port in an epoll, poll, libuv or io_uring
 * loop.
 *
 * It becomes readable when a message waits or the peer is
 * gone (then also POLLHUP). Pattern (edge-triggered, like a non-blocking
 * socket): drain with ferry_port_recv(port, &m, 0) until -EAGAIN, then poll;
 * that -EAGAIN is what arms the fd, so a message posted after it always
 * wakes the poll. The fd is signalled only when the receiver armed it: a
 * sender to a busy receiver makes no syscall. Level-triggered loops work as
 * well: a wake that found no message is consumed by that -EAGAIN, and fds of a
 * message still on its way are taken off the fd (kept by the port) so that it
 * does not stay readable meanwhile. The fd stays the port's (do not close or
 * read it; it changes if the port is transferred).
 * @return the fd, -EINVAL, FERRY_EDETACHED.
 */
FERRY_API int ferry_port_fd(ferry_port *port);

/** Largest message ferry_port_post_bytes accepts on this port. */
FERRY_API size_t ferry_port_max_message(const ferry_port *port);

#ifdef __cplusplus
}
#endif
#endif /* FERRY_PORT_H */
