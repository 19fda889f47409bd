/**
 * @file
 * @brief Named endpoints: a port between unrelated processes.
 *
 * A listener owns a name; every client that connects to the name and passes
 * authentication gets a fresh channel of its own: the listener keeps one port
 * (ferry_accept returns it) and the other port goes to the client (ferry_connect
 * returns it). After that the two ports are ordinary ports; the listener and
 * its name play no further part, and closing the listener leaves them open.
 *
 * @code
 *     server                                   client
 *     ferry_listen(&l, "calc", NULL);
 *     for (;;) {                               ferry_connect(&p, "calc", NULL, 5 s);
 *         ferry_accept(l, &p, FERRY_FOREVER);  ferry_port_post(p, ...);
 *         ... talk on p ...                    ferry_port_recv(p, ...);
 *     }                                        ferry_port_destroy(p);
 *     ferry_listener_destroy(l);
 * @endcode
 *
 * Names. By default a name lives in Linux's abstract socket namespace: the
 * address is `"\0ferry/<name>"` (no file, gone with the listener's socket,
 * nothing to clean up after a crash; visible within one network namespace).
 * With FERRY_ENDPOINT_PATH the name is a filesystem path instead: the socket
 * file is created with mode 0600 (or opts->mode), never replaces anything but
 * a stale socket file, and is removed by ferry_listener_close. Nothing is ever
 * created in /dev/shm.
 *
 * Name in use. A second listener on a live name fails with -EADDRINUSE; it
 * never steals the name. A path whose socket file was left by a listener that
 * crashed ("stale": connecting to it is refused, so nobody accepts on it) is
 * replaced. Listeners in the same directory serialise that check-and-replace
 * with flock(2) on the directory, so two of them can never both replace the
 * same stale file and orphan each other. A path holding anything but a
 * socket fails with -EEXIST; a socket of another type or one that cannot be
 * probed is treated as live.
 *
 * Authentication (the listener's side). Each client's credentials are read
 * with SO_PEERCRED (as of its connect): by default only clients running
 * with the listener's effective uid are admitted; opts->allow_uids replaces
 * that set. A client whose uid passes is then shown to opts->check, if any.
 * A refused client gets no fd and no segment: one small "refused" answer
 * carrying the error code, then its connection is closed, and ferry_accept
 * goes on waiting for the next client (a hostile client cannot make a
 * server's accept loop fail). ferry_listener_stats counts the refusals.
 * In path mode the file mode applies too: a uid that cannot write the socket
 * file cannot connect at all (-EACCES at the client).
 *
 * Authentication (the client's side). Abstract names carry no permissions:
 * any local process may bind a name first. So a client checks the listener
 * too: by default the listener must run as the client's effective uid or as
 * root; opts->allow_uids replaces that set.
 *
 * A hostile peer. The listener never reads from a client: accept takes the
 * connection, checks its credentials, and sends one message without waiting
 * (a client that never reads, sends garbage or fds, or hangs up at once
 * costs the listener one channel at most, which is closed with its
 * connection, and no fd). A client checks the listener's answer (exact size,
 * magic, version, exactly two fds) and the channel itself before using it.
 *
 * Handshake (for non-ferry peers): right after accepting, the listener sends
 * one ferry_fds_send message on the connection: a 24-byte header
 * { u32 magic "FEP1", u16 version 1, u16 side, i32 status, u32 0,
 * u64 max_message } in host order, with fds { channel segment, control
 * socket } when status is 0, and no fds when status is a negative errno
 * (refused); then it closes the connection. The client's port takes the
 * channel's max_message from the answer, so both ports agree on it.
 *
 * Liveness. Once connected, the two ports behave as the ports of one channel
 * between two processes: when either process dies, the survivor receives
 * every message the dead one fully posted, then -EPIPE. Like any port's
 * control socket, the listener's port must not be inherited by a forked
 * child that outlives the listener (the process worker backend takes care
 * of that for its own forks), or the client would not see the death.
 */
#ifndef FERRY_ENDPOINT_H
#define FERRY_ENDPOINT_H

#include "ferry/common.h"
#include "ferry/port.h"

#include <sys/types.h>

#ifdef __cplusplus
extern "C" {
#endif

/** A listening endpoint (opaque). */
typedef struct ferry_listener ferry_listener;

/** Where a name lives. */
enum ferry_endpoint_ns {
	FERRY_ENDPOINT_ABSTRACT = 0, /**< default: the abstract address `"\0ferry/<name>"` */
	FERRY_ENDPOINT_PATH = 1,     /**< the name is a filesystem path */
};

/** Longest abstract name (bytes). */
#define FERRY_ENDPOINT_NAME_MAX 101
/** Longest path (bytes, without the NUL). */
#define FERRY_ENDPOINT_PATH_MAX 107

/**
 * A listener's extra check, after the uid check passed: the client's pid, uid
 * and gid from SO_PEERCRED (as of its connect; the pid is 0 when the client
 * lives in a pid namespace this process cannot see, and a client that died
 * since may have had its pid reused). Return 0 to admit the client, or a
 * negative errno to refuse it: the client's ferry_connect returns that code
 * (any other non-zero value is sent as -EACCES). It runs in the thread that
 * called ferry_accept, before any channel exists; it may count clients and
 * refuse above a limit (e.g. with -EBUSY).
 */
typedef int (*ferry_endpoint_check_fn)(pid_t pid, uid_t uid, gid_t gid, void *arg);

/** Options of ferry_listen; zero fields mean defaults. */
struct ferry_listen_opts {
	enum ferry_endpoint_ns ns;      /**< 0 = abstract */
	unsigned mode;                  /**< path mode: the socket file's permissions; 0 = 0600 */
	const uid_t *allow_uids;        /**< uids admitted (copied); NULL = the listener's euid */
	size_t nallow_uids;             /**< entries at allow_uids */
	ferry_endpoint_check_fn check;  /**< NULL = none */
	void *check_arg;                /**< passed to check */
	const struct ferry_channel_opts *channel; /**< each client's channel (copied); NULL = defaults */
	int backlog;                    /**< connections queued before accept; 0 = SOMAXCONN */
};

/** Options of ferry_connect; zero fields mean defaults. */
struct ferry_connect_opts {
	enum ferry_endpoint_ns ns;      /**< must match the listener's; 0 = abstract */
	const uid_t *allow_uids;        /**< listener uids trusted; NULL = own euid and root */
	size_t nallow_uids;             /**< entries at allow_uids */
};

/**
 * Start listening on a name.
 *
 * @param out receives the listener.
 * @param name the name (abstract) or the socket file's path.
 * @param opts NULL = defaults: abstract namespace, same-uid clients, default
 *   channels.
 * @par Ownership
 *   on success *out is the caller's (ferry_listener_destroy); on failure
 *   *out is NULL and nothing was created or removed.
 * @return 0, -EINVAL (NULL out or name, empty or too long name, unknown ns,
 *   mode outside 0777, NULL allow_uids with nallow_uids, negative backlog,
 *   bad channel opts), -EADDRINUSE (a live listener has the name), -EEXIST
 *   (path mode: something other than a socket is there), -EBUSY (path mode:
 *   the directory stayed locked by another listener for a second), -EACCES,
 *   -ENOENT (path mode: no such directory), -ENOMEM, -EMFILE.
 */
FERRY_API int ferry_listen(ferry_listener **out, const char *name,
			   const struct ferry_listen_opts *opts);

/**
 * Wait for a client, authenticate it and give it a channel.
 *
 * Refused clients and clients that hang up before their channel is sent are
 * dropped, and the wait goes on within the same timeout. Never waits on a
 * client (sends do not block).
 * @param l the listener.
 * @param port receives this side's port of the client's channel.
 * @param timeout_ns 0 = only the clients queued now, FERRY_FOREVER = no limit.
 * @par Ownership
 *   on success *port is the caller's (ferry_port_destroy); on failure it is
 *   NULL.
 * @par Threads
 *   several threads may accept on one listener at once, and
 *   ferry_listener_close from another thread wakes them all (-EPIPE).
 * @return 0, -EINVAL (NULL argument), -EAGAIN (no admissible client queued,
 *   timeout 0), -ETIMEDOUT, -EPIPE (the listener was closed), -EMFILE,
 *   -ENFILE, -ENOMEM, -ENOSPC (a channel could not be made; the client was
 *   told so and dropped).
 */
FERRY_API int ferry_accept(ferry_listener *l, ferry_port **port, int64_t timeout_ns);

/**
 * An fd to poll for POLLIN in the caller's own loop.
 *
 * Readable while a client waits to be accepted (then ferry_accept with
 * timeout 0; it may still return -EAGAIN if that client is refused), and
 * POLLHUP once the listener is closed. Owned by the listener; valid until
 * ferry_listener_destroy.
 * @return the fd or -EINVAL (NULL).
 */
FERRY_API int ferry_listener_fd(const ferry_listener *l);

/** A listener's counts (ferry_listener_stats). */
struct ferry_listener_stats {
	uint64_t accepted; /**< clients given a channel */
	uint64_t refused;  /**< clients refused by the uid check or the check callback */
	uint64_t dropped;  /**< clients that hung up, or could not be sent their channel */
};

/** The counts so far. Thread-safe.
 * @return 0, -EINVAL (NULL). */
FERRY_API int ferry_listener_stats(const ferry_listener *l, struct ferry_listener_stats *st);

/**
 * Stop listening.
 *
 * New clients are refused by the
 * kernel (-ECONNREFUSED at ferry_connect), clients queued and not yet
 * accepted are disconnected (their ferry_connect returns -ECONNREFUSED),
 * threads in ferry_accept wake with -EPIPE, and in path mode the socket file
 * is removed (only if it is still the one this listener created). Ports
 * already accepted stay open. An abstract name is free again once the
 * listener is destroyed.
 * In a forked child that inherited the listener, close neither shuts the
 * shared socket down nor removes the file: it only stops this copy.
 * Idempotent; NULL ok.
 * @par Threads
 *   may be called from any thread, also while others accept.
 */
FERRY_API void ferry_listener_close(ferry_listener *l);

/** Close (if not yet) and free the listener and its socket. No other thread
 * may be using it. NULL ok. */
FERRY_API void ferry_listener_destroy(ferry_listener *l);

/**
 * Connect to the listener on a name and receive a channel of our own.
 *
 * @param port receives our port of the channel.
 * @param name the name the listener listens on.
 * @param opts NULL = abstract namespace, listener must run as our euid or
 *   root.
 * @param timeout_ns the wait in all (a full backlog, then the answer);
 *   0 = only if the listener has already answered, which it cannot have:
 *   pass a real timeout.
 * @par Ownership
 *   on success *port is the caller's (ferry_port_destroy); on failure it is
 *   NULL and every fd received was closed.
 * @par Threads
 *   any thread; calls share no state.
 * @return 0; -EINVAL (NULL port or name, empty or too long name, unknown
 *   ns, NULL allow_uids with nallow_uids); -ECONNREFUSED (nobody listens on
 *   the name: no listener, a stale socket file, or the listener closed
 *   before answering); -ENOENT (path mode: no such file); -EACCES (the
 *   listener refused this process, or path mode: no permission on the file,
 *   or the listener runs as an untrusted uid; ferry_errmsg says which), or
 *   another negative errno the listener's check callback chose; -ETIMEDOUT
 *   (the backlog stayed full, or no answer in time); -EAGAIN (timeout 0);
 *   -EBADMSG (not a ferry endpoint answer, or its channel is not valid);
 *   FERRY_EVERSION (a listener of another handshake or layout version);
 *   -EMFILE, -ENOMEM.
 */
FERRY_API int ferry_connect(ferry_port **port, const char *name,
			    const struct ferry_connect_opts *opts, int64_t timeout_ns);

#ifdef __cplusplus
}
#endif
#endif /* FERRY_ENDPOINT_H */
