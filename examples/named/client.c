/*
 * examples/named/client.c - find a service by name and talk to it.
 *
 *     ./client calc 1 2 3               connect to the abstract name "calc"
 *     ./client -p /tmp/calc.sock 1 2 3  connect to a socket file
 *
 * Sends the integers as one array value and prints the server's answer.
 * The server must run as our uid (or root), and admits us by our uid.
 */
#include <ferry.h>
#include <ferry/endpoint.h>
#include <ferry/value.h>

#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#define SECOND (1000LL * 1000 * 1000)

int main(int argc, char **argv)
{
	struct ferry_connect_opts opts = { .ns = FERRY_ENDPOINT_ABSTRACT };
	int a = 1;
	if (a < argc && strcmp(argv[a], "-p") == 0) {
		opts.ns = FERRY_ENDPOINT_PATH;
		a++;
	}
	if (a >= argc) {
		fprintf(stderr, "usage: %s [-p] NAME [INTEGER...]\n", argv[0]);
		return 2;
	}
	const char *name = argv[a++];

	ferry_port *p;
	int rc = ferry_connect(&p, name, &opts, 5 * SECOND);
	if (rc) {
		/* -ECONNREFUSED: no server; -EACCES: it refused us (or we it). */
		fprintf(stderr, "client: %s\n", ferry_errmsg());
		return 1;
	}

	ferry_value *nums = ferry_value_array();
	for (; a < argc; a++)
		ferry_value_array_push(nums, ferry_value_int(strtoll(argv[a], NULL, 0)));
	rc = ferry_port_post(p, nums, NULL, 5 * SECOND);
	ferry_value_free(nums);
	if (rc) {
		fprintf(stderr, "client: post: %s\n", ferry_errmsg());
		ferry_port_destroy(p);
		return 1;
	}

	ferry_msg *m;
	rc = ferry_port_recv(p, &m, 5 * SECOND);
	if (rc) {
		/* -EPIPE: the server went away before answering. */
		fprintf(stderr, "client: recv: %s\n", ferry_errmsg());
		ferry_port_destroy(p);
		return 1;
	}
	const ferry_value *r = ferry_msg_value(m);
	int64_t count, sum;
	if (ferry_value_get_int(ferry_value_map_get(r, "count"), &count) == 0 &&
	    ferry_value_get_int(ferry_value_map_get(r, "sum"), &sum) == 0)
		printf("%lld numbers, sum %lld\n", (long long)count, (long long)sum);
	else
		printf("server says: %s\n", ferry_value_get_str(r, NULL) ? ferry_value_get_str(r, NULL) : "?");
	ferry_msg_free(m);
	ferry_port_destroy(p); /* the server's thread sees -EPIPE and ends */
	return 0;
}
