/*
 * bench/deadpeer_bench.c - from SIGKILL of a peer process to the return of
 * the call blocked on it.
 *
 * Floor: kill -9 + waitid, the parent's own view of the death (the kernel's
 * exit path, reaped). ferry: a thread blocked in ferry_port_recv with no
 * deadline (FERRY_WAIT_BLOCK) on a port whose other end the killed child
 * holds (it posted one message first, as a worker's ONLINE); the row is the
 * time from kill() to the -EPIPE. A heartbeat would show its period here
 * (a sliced sleep: up to FERRY_PORT_LIVENESS_NS, ~25 ms on average).
 */
#include "bench.h"

#include "ferry/port.h"
#include "ports/port_int.h"

#include <errno.h>
#include <pthread.h>
#include <signal.h>
#include <stdatomic.h>
#include <stdio.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

struct dp_rx {
	ferry_port *p;
	int rc;
	uint64_t t_end;
};

static void *dp_rx_main(void *arg)
{
	struct dp_rx *r = arg;
	ferry_msg *m = NULL;
	r->rc = ferry_port_recv(r->p, &m, FERRY_FOREVER); /* "up" */
	ferry_msg_free(m);
	m = NULL;
	if (r->rc == 0)
		r->rc = ferry_port_recv(r->p, &m, FERRY_FOREVER);
	r->t_end = bench_now();
	ferry_msg_free(m);
	return NULL;
}

static int run_deadpeer(struct bench_ctx *ctx, const struct bench_scenario *s,
			struct bench_samples *out)
{
	int ferry = s->arg != NULL;
	struct bench_loop lp;
	void *page;
	int r = bench_prepare_start(ctx, out, &lp, &page);
	if (r)
		return r;
	_Atomic uint32_t *up = page;
	while (bench_loop_next(ctx, &lp)) {
		atomic_store(up, 0);
		ferry_port *a = NULL, *b = NULL;
		if (ferry && (r = ferry_channel(&a, &b, NULL)) != 0) {
			r = bench_fail(ctx, r, "ferry_channel: %s", ferry_errmsg());
			break;
		}
		pid_t pid = fork();
		if (pid < 0) {
			r = bench_fail(ctx, -errno, "fork");
			ferry_port_destroy(a);
			ferry_port_destroy(b);
			break;
		}
		if (pid == 0) {
			/* As a worker does: it posts (ONLINE) before it idles. */
			if (ferry) {
				ferry__port_keep_only(b);
				ferry_port_post_bytes(b, "up", 2, FERRY_FOREVER);
			}
			atomic_store(up, 1);
			for (;;)
				pause();
		}
		struct dp_rx rx = { .p = a };
		pthread_t t;
		if (ferry) {
			ferry__port_forget(b);
			ferry_port_set_wait(a, FERRY_WAIT_BLOCK, 0);
			if ((r = pthread_create(&t, NULL, dp_rx_main, &rx)) != 0) {
				r = bench_fail(ctx, -r, "pthread_create");
				kill(pid, SIGKILL);
				waitpid(pid, NULL, 0);
				ferry_port_destroy(a);
				break;
			}
		}
		struct bench_spin sp = bench_spin_start(ctx);
		while (!atomic_load(up) && !bench_spin(&sp))
			;
		/* The receiver is asleep by now. */
		struct timespec pause_ts = { 0, 2000000 };
		nanosleep(&pause_ts, NULL);
		uint64_t t0 = bench_now(), t1;
		kill(pid, SIGKILL);
		if (ferry) {
			pthread_join(t, NULL);
			t1 = rx.t_end;
			while (waitpid(pid, NULL, 0) < 0 && errno == EINTR)
				;
			ferry_port_destroy(a);
			if (rx.rc != -EPIPE) {
				r = bench_fail(ctx, rx.rc, "ferry_port_recv gave %d, not -EPIPE", rx.rc);
				break;
			}
		} else {
			siginfo_t si;
			while (waitid(P_PID, (id_t)pid, &si, WEXITED) < 0 && errno == EINTR)
				;
			t1 = bench_now();
		}
		if (lp.measuring)
			bench_samples_add(out, bench_ns(t1 - t0));
	}
	bench_shared_free(up, 4096);
	return r;
}

#define DP_GROUP "dead peer: SIGKILL to the blocked call's return"

static const struct bench_scenario deadpeer_scenarios[] = {
	{ .id = "deadpeer.waitid", .group = DP_GROUP, .order = 260, .name = "kill -9 + waitid",
	  .backend = "process", .mode = "block", .run = run_deadpeer, .arg = NULL },
	{ .id = "deadpeer.ferry.recv", .group = DP_GROUP, .order = 261,
	  .name = "kill -9 to recv -EPIPE", .backend = "process", .mode = "block",
	  .floor = "deadpeer.waitid", .run = run_deadpeer, .arg = "ferry" },
};
BENCH_REGISTER(deadpeer_scenarios)
