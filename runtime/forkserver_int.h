/* runtime/forkserver_int.h - internal: the fork server between worker.c and forkserver.c. */
#ifndef FERRY_FORKSERVER_INT_H
#define FERRY_FORKSERVER_INT_H

#include "ferry/worker.h"

#include <stddef.h>
#include <stdint.h>
#include <sys/types.h>

/* Exit code of a server-spawned worker that could not even open its port. */
#define FERRY__FS_SETUP_EXIT 127

/* What a worker started by the server is made of (both sides use it). */
struct ferry__fs_worker {
	ferry_worker_fn entry; /* an address in the image the server shares */
	char name[64];
	uint32_t side;         /* the worker's side of the channel */
	int has_value;         /* workerData waits on the channel */
	uint64_t max_message;
	uint64_t data_len;     /* bytes in the data segment (0: none) */
	uint64_t stack_size, max_as, max_nofile;
	/* caller side: fds to send (stay the caller's); server child: received */
	int seg_fd, sock_fd, data_fd;
};

/* Number of threads of this process (from /proc/self/stat), or -errno. */
int ferry__thread_count(void);

/* 1 when this process started a fork server that has not been stopped
 * (alive or dead), else 0. */
int ferry__fs_present(void);

/*
 * ferry__fs_spawn - ask the server to fork a worker from @r (with its fds;
 * the data segment is made here from @data).
 * On success: *@pid, *@pidfd (the caller's) and *@id (for ferry__fs_wait,
 * ferry__fs_forget). Thread-safe.
 * Returns: 0, -ECHILD (no server, or it died: the message says which),
 *   -ETIMEDOUT (no answer), or the fork's error in the server (-EAGAIN,
 *   -ENOMEM), -EMFILE.
 */
int ferry__fs_spawn(struct ferry__fs_worker *r, const void *data, pid_t *pid, int *pidfd,
		    uint64_t *id);

/*
 * ferry__fs_wait - wait up to @timeout_ns for the exit of server worker @id
 * (@pidfd shows its exit) and give its raw wait status. Thread-safe.
 * Returns: 0, -EAGAIN (timeout 0), -ETIMEDOUT, FERRY_EWORKER (it ended but
 *   the server that could tell how is gone: the message says why).
 */
int ferry__fs_wait(uint64_t id, int pidfd, int64_t timeout_ns, int *wstatus);

/* Drop what is kept for worker @id (its handle is going away). */
void ferry__fs_forget(uint64_t id);

/* In the server's child: become the worker described by @r (fds received);
 * never returns. Defined in worker.c. */
_Noreturn void ferry__worker_server_child(const struct ferry__fs_worker *r);

#endif
