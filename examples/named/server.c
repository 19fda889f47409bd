/*
 * examples/named/server.c - a service that unrelated processes find by name.
 *
 *     ./server calc               listen on the abstract name "calc"
 *     ./server -p /tmp/calc.sock  listen on a socket file (mode 0600)
 *
 * Each client that connects (same uid by default) gets a channel of its own
 * and a thread that serves it: for every array of integers it sends, the
 * reply is { "count": n, "sum": s }. A client that leaves or dies is seen
 * as -EPIPE on its port. Ctrl-C stops the server; in path mode the socket
 * file is removed.
 */
#include <ferry.h>
#include <ferry/endpoint.h>
#include <ferry/value.h>

#include <errno.h>
#include <pthread.h>
#include <signal.h>
#include <stdio.h>
#include <string.h>

#define SECOND (1000LL * 1000 * 1000)

static volatile sig_atomic_t stop;

static void on_signal(int sig)
{
	(void)sig;
	stop = 1;
}

/* { "count": n, "sum": s } for an array of integers; NULL for anything else. */
static ferry_value *answer(const ferry_value *v)
{
	if (ferry_value_kind(v) != FERRY_VALUE_ARRAY)
		return NULL;
	int64_t sum = 0;
	size_t n = ferry_value_len(v);
	for (size_t i = 0; i < n; i++) {
		int64_t x;
		if (ferry_value_get_int(ferry_value_array_get(v, i), &x))
			return NULL;
		sum += x;
	}
	ferry_value *r = ferry_value_map();
	ferry_value_map_set(r, "count", ferry_value_int((int64_t)n));
	ferry_value_map_set(r, "sum", ferry_value_int(sum));
	return r;
}

static void *serve(void *arg)
{
	ferry_port *p = arg;
	for (;;) {
		ferry_msg *m;
		int rc = ferry_port_recv(p, &m, FERRY_FOREVER);
		if (rc == -EPIPE)
			break; /* the client closed its port, or died */
		if (rc == -EBADMSG)
			continue; /* one message failed to decode; the next may not */
		if (rc) {
			fprintf(stderr, "server: recv: %s\n", ferry_errmsg());
			break;
		}
		ferry_value *r = answer(ferry_msg_value(m));
		ferry_msg_free(m);
		if (!r)
			r = ferry_value_str("send an array of integers");
		rc = ferry_port_post(p, r, NULL, 5 * SECOND);
		ferry_value_free(r);
		if (rc) {
			fprintf(stderr, "server: post: %s\n", ferry_errmsg());
			break;
		}
	}
	ferry_port_destroy(p);
	return NULL;
}

int main(int argc, char **argv)
{
	struct ferry_listen_opts opts = { .ns = FERRY_ENDPOINT_ABSTRACT };
	int a = 1;
	if (a < argc && strcmp(argv[a], "-p") == 0) {
		opts.ns = FERRY_ENDPOINT_PATH;
		a++;
	}
	if (a != argc - 1) {
		fprintf(stderr, "usage: %s [-p] NAME\n", argv[0]);
		return 2;
	}
	const char *name = argv[a];

	struct sigaction sa = { .sa_handler = on_signal };
	sigaction(SIGINT, &sa, NULL);
	sigaction(SIGTERM, &sa, NULL);

	ferry_listener *l;
	if (ferry_listen(&l, name, &opts)) {
		fprintf(stderr, "server: %s\n", ferry_errmsg());
		return 1;
	}
	printf("server: listening on %s%s\n", opts.ns == FERRY_ENDPOINT_PATH ? "" : "@", name);
	fflush(stdout);

	/* A short timeout so that the loop sees the stop flag. */
	while (!stop) {
		ferry_port *p;
		int rc = ferry_accept(l, &p, SECOND / 5);
		if (rc == -ETIMEDOUT)
			continue;
		if (rc) {
			fprintf(stderr, "server: accept: %s\n", ferry_errmsg());
			break;
		}
		pthread_t th;
		if (pthread_create(&th, NULL, serve, p)) {
			fprintf(stderr, "server: no thread for a client\n");
			ferry_port_destroy(p);
			continue;
		}
		pthread_detach(th);
	}
	struct ferry_listener_stats st;
	ferry_listener_stats(l, &st);
	printf("server: %llu clients served, %llu refused\n",
	       (unsigned long long)st.accepted, (unsigned long long)st.refused);
	ferry_listener_destroy(l);
	return 0;
}
