/*
 * echo - a worker that echoes messages, on the backend you name.
 *   echo [thread|process] [count]
 * Prints the round trips it made and their mean time.
 */
#include <ferry.h>

#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

static int echo(ferry_worker_ctx *ctx)
{
	ferry_port *p = ferry_worker_ctx_port(ctx);
	ferry_msg *m;
	while (ferry_port_recv(p, &m, FERRY_FOREVER) == 0) {
		int rc = ferry_port_post_bytes(p, ferry_msg_data(m), ferry_msg_len(m), FERRY_FOREVER);
		ferry_msg_free(m);
		if (rc)
			return 1;
	}
	return 0; /* -EPIPE: the parent closed the channel */
}

int main(int argc, char **argv)
{
	int backend = argc > 1 && strcmp(argv[1], "process") == 0 ? FERRY_PROCESS : FERRY_THREAD;
	int count = argc > 2 ? atoi(argv[2]) : 10000;
	struct ferry_worker_opts o = { .backend = backend, .entry = echo, .name = "echo" };
	ferry_worker *w;
	int rc = ferry_worker_spawn(&w, &o);
	if (rc) {
		fprintf(stderr, "spawn: %s (%s)\n", ferry_strerror(rc), ferry_errmsg());
		return 1;
	}
	ferry_port *p = ferry_worker_port(w);
	char msg[64] = "ping";
	struct timespec t0, t1;
	clock_gettime(CLOCK_MONOTONIC, &t0);
	for (int i = 0; i < count; i++) {
		ferry_msg *m;
		if (ferry_port_post_bytes(p, msg, sizeof msg, FERRY_FOREVER) ||
		    ferry_port_recv(p, &m, FERRY_FOREVER)) {
			fprintf(stderr, "round trip %d: %s\n", i, ferry_errmsg());
			return 1;
		}
		if (ferry_msg_len(m) != sizeof msg || memcmp(ferry_msg_data(m), msg, sizeof msg)) {
			fprintf(stderr, "round trip %d: the echo differs\n", i);
			return 1;
		}
		ferry_msg_free(m);
	}
	clock_gettime(CLOCK_MONOTONIC, &t1);
	double us = ((t1.tv_sec - t0.tv_sec) * 1e9 + (t1.tv_nsec - t0.tv_nsec)) / 1e3 / count;
	ferry_port_close(p);
	struct ferry_worker_status st;
	ferry_worker_join(w, &st, FERRY_FOREVER);
	ferry_worker_destroy(w);
	printf("echo ok: %d round trips of 64 B with a %s worker, %.2f us each\n", count,
	       backend == FERRY_PROCESS ? "process" : "thread", us);
	return st.code;
}
