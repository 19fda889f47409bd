/*
 * ring_pipeline - a producer/consumer over a shared ring: the parent writes
 * variable-length records into an SPSC ring that lives in a shared buffer,
 * a process worker reads them in place, and both sides checksum what went
 * through. No message per record and no syscall per record: the two sides
 * only sleep on (and wake) the eventcounts beside the ring when it is empty
 * or full.
 *
 * Layout of the shared buffer (both processes map it, at different
 * addresses; the ring holds positions, never pointers):
 *
 *     [ not_empty eventcount | not_full eventcount | pad ][ ring ... ]
 *     0                                                   HDR
 *
 * For many producers or consumers, use an MPMC ring (ferry_ring_mpmc_*:
 * fixed-size slots) the same way. A side that does not trust the other
 * would use a view (ferry_ring_spsc_view_init) for its calls.
 */
#include <ferry.h>

#include <errno.h>
#include <stdint.h>
#include <stdio.h>
#include <string.h>

enum { RECORDS = 100000, MAX_PAYLOAD = 1000, RING_BYTES = 64 * 1024, HDR = 128 };

struct pipe_hdr {
	struct ferry_ec not_empty; /* the consumer sleeps here, the producer notifies */
	uint32_t pad0[15];
	struct ferry_ec not_full;  /* the producer sleeps here, the consumer notifies */
};

/* Record: a sequence number, then 0..MAX_PAYLOAD bytes. */
struct rec_head {
	uint64_t seq;
};

static uint64_t fnv1a(uint64_t h, const void *p, size_t n)
{
	const unsigned char *b = p;
	for (size_t i = 0; i < n; i++)
		h = (h ^ b[i]) * 1099511628211ull;
	return h;
}

static uint32_t next_rand(uint32_t *s)
{
	*s ^= *s << 13;
	*s ^= *s >> 17;
	*s ^= *s << 5;
	return *s;
}

/* The shared ring and how to wait on it, from a mapping of the buffer. */
static ferry_ring_spsc *ring_of(ferry_buf *buf, struct ferry_ring_wait *w)
{
	struct pipe_hdr *h = ferry_buf_data(buf);
	*w = (struct ferry_ring_wait){ .not_empty = &h->not_empty, .not_full = &h->not_full };
	return (ferry_ring_spsc *)((char *)ferry_buf_data(buf) + HDR);
}

/* The worker: consume until the producer closes the ring, then report. */
static int consumer(ferry_worker_ctx *ctx)
{
	ferry_buf *buf = ferry_value_get_handle(ferry_worker_ctx_value(ctx), NULL);
	struct ferry_ring_wait w;
	ferry_ring_spsc *r = ring_of(buf, &w);
	if (ferry_ring_spsc_check(r, ferry_buf_len(buf) - HDR))
		return ferry_worker_throw(-EPROTO, "ring: %s", ferry_errmsg());
	uint64_t sum = 14695981039346656037ull, n = 0;
	for (;;) {
		const void *p;
		size_t len;
		int rc = ferry_ring_spsc_peek_wait(r, &p, &len, &w, 10 * 1000000000ll);
		if (rc == -EPIPE)
			break; /* closed and drained: everything arrived */
		if (rc)
			return ferry_worker_throw(rc, "peek: %s", ferry_strerror(rc));
		struct rec_head hd;
		if (len < sizeof hd)
			return ferry_worker_throw(-EBADMSG, "short record (%zu bytes)", len);
		memcpy(&hd, p, sizeof hd);
		if (hd.seq != n)
			return ferry_worker_throw(-EBADMSG, "record %llu out of order",
						  (unsigned long long)hd.seq);
		sum = fnv1a(sum, p, len); /* read in place, no copy */
		ferry_ring_spsc_release_wait(r, &w);
		n++;
	}
	uint64_t report[2] = { n, sum };
	return ferry_port_post_bytes(ferry_worker_ctx_port(ctx), report, sizeof report,
				     FERRY_FOREVER) ? 1 : 0;
}

int main(void)
{
	ferry_buf *buf;
	size_t ring_size = ferry_ring_spsc_memsize(RING_BYTES);
	if (ferry_buf_create(&buf, HDR + ring_size, FERRY_BUF_SHARED)) {
		fprintf(stderr, "buffer: %s\n", ferry_errmsg());
		return 1;
	}
	struct ferry_ring_wait w;
	ferry_ring_spsc *r = ring_of(buf, &w);
	if (ferry_ring_spsc_init(r, ring_size)) { /* zeroed eventcounts are valid */
		fprintf(stderr, "ring: %s\n", ferry_errmsg());
		return 1;
	}

	ferry_value *data = ferry_value_handle(FERRY_VALUE_SHARED, buf);
	struct ferry_worker_opts o = { .backend = FERRY_PROCESS, .entry = consumer,
				       .value = data, .name = "consumer" };
	ferry_worker *worker;
	int rc = ferry_worker_spawn(&worker, &o);
	ferry_value_free(data);
	if (rc) {
		fprintf(stderr, "spawn: %s\n", ferry_errmsg());
		return 1;
	}

	/* Produce: reserve room in place, write, commit (which wakes a sleeping
	 * consumer; a busy one costs no syscall). */
	uint64_t sum = 14695981039346656037ull, bytes = 0;
	uint32_t seed = 12345;
	for (uint64_t i = 0; i < RECORDS && !rc; i++) {
		size_t payload = next_rand(&seed) % (MAX_PAYLOAD + 1);
		size_t len = sizeof(struct rec_head) + payload;
		void *p;
		rc = ferry_ring_spsc_reserve_wait(r, len, &p, &w, 10 * 1000000000ll);
		if (rc)
			break;
		struct rec_head hd = { .seq = i };
		memcpy(p, &hd, sizeof hd);
		unsigned char *body = (unsigned char *)p + sizeof hd;
		for (size_t k = 0; k < payload; k++)
			body[k] = (unsigned char)(i + k);
		sum = fnv1a(sum, p, len);
		bytes += len;
		rc = ferry_ring_spsc_commit_wait(r, len, &w);
	}
	if (rc)
		fprintf(stderr, "produce: %s\n", ferry_strerror(rc));
	ferry_ring_spsc_close(r); /* records committed before are still delivered */
	ferry_ring_wait_close(&w);

	uint64_t report[2] = { 0, 0 };
	ferry_msg *m = NULL;
	int rrc = ferry_port_recv(ferry_worker_port(worker), &m, 30 * 1000000000ll);
	if (!rrc && ferry_msg_len(m) == sizeof report)
		memcpy(report, ferry_msg_data(m), sizeof report);
	ferry_msg_free(m);
	struct ferry_worker_status st;
	int jrc = ferry_worker_join(worker, &st, 30 * 1000000000ll);
	ferry_worker_destroy(worker);
	ferry_buf_free(buf);

	int ok = !rc && !rrc && !jrc && !st.code && !st.signal && report[0] == RECORDS &&
		 report[1] == sum;
	printf("ring_pipeline %s: %llu records, %llu bytes through a shared SPSC ring to a process,"
	       " checksum %016llx\n", ok ? "ok" : "WRONG", (unsigned long long)report[0],
	       (unsigned long long)bytes, (unsigned long long)report[1]);
	return ok ? 0 : 1;
}
