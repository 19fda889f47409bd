/*
 * shared_counter - Atomics.wait/notify between processes: two process
 * workers take turns incrementing a counter in a SharedArrayBuffer-like
 * shared buffer, each waiting (ferry_wait) for its turn and notifying the
 * other (ferry_notify).
 */
#include <ferry.h>

#include <stdatomic.h>
#include <stdint.h>
#include <stdio.h>

enum { ROUNDS = 10000 };

struct shared {
	uint32_t turn;    /* whose turn: 0 or 1 */
	uint32_t counter;
};

static int player(ferry_worker_ctx *ctx)
{
	const ferry_value *data = ferry_worker_ctx_value(ctx);
	ferry_buf *buf = ferry_value_get_handle(ferry_value_map_get(data, "shared"), NULL);
	int64_t me;
	ferry_value_get_int(ferry_value_map_get(data, "me"), &me);
	struct shared *s = ferry_buf_data(buf);
	for (int i = 0; i < ROUNDS; i++) {
		while (atomic_load((_Atomic uint32_t *)&s->turn) != (uint32_t)me)
			ferry_wait(&s->turn, (uint32_t)!me, FERRY_FOREVER);
		s->counter++;
		atomic_store((_Atomic uint32_t *)&s->turn, (uint32_t)!me);
		ferry_notify(&s->turn, 1);
	}
	return 0;
}

int main(void)
{
	ferry_buf *buf;
	if (ferry_buf_create(&buf, sizeof(struct shared), FERRY_BUF_SHARED)) {
		fprintf(stderr, "buffer: %s\n", ferry_errmsg());
		return 1;
	}
	ferry_worker *w[2];
	for (int i = 0; i < 2; i++) {
		ferry_value *v = ferry_value_map();
		ferry_value_map_set(v, "shared", ferry_value_handle(FERRY_VALUE_SHARED, buf));
		ferry_value_map_set(v, "me", ferry_value_int(i));
		struct ferry_worker_opts o = { .backend = FERRY_PROCESS, .entry = player, .value = v };
		int rc = ferry_worker_spawn(&w[i], &o);
		ferry_value_free(v);
		if (rc) {
			fprintf(stderr, "spawn: %s\n", ferry_errmsg());
			return 1;
		}
	}
	int bad = 0;
	for (int i = 0; i < 2; i++) {
		struct ferry_worker_status st;
		ferry_worker_join(w[i], &st, FERRY_FOREVER);
		bad |= st.code | st.signal;
		ferry_worker_destroy(w[i]);
	}
	struct shared *s = ferry_buf_data(buf);
	int ok = !bad && s->counter == 2 * ROUNDS;
	printf("shared_counter %s: two processes took %u turns on one shared word\n",
	       ok ? "ok" : "WRONG", s->counter);
	ferry_buf_free(buf);
	return ok ? 0 : 1;
}
