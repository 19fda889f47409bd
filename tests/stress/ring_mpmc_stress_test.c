/*
 * tests/stress/ring_mpmc_stress_test.c - the MPMC ring under load: 1P1C,
 * 2P2C and 4P4C on two cores, threads and processes, single and batched
 * operations, every element stamped with its producer and sequence number.
 * Checks: no element torn, none lost or duplicated, none reordered within a
 * producer (per consumer), the count conserved. A last case kills producers
 * and consumers at random moments under load: the survivors still see whole
 * elements in order, each producer's delivered elements are exactly a prefix
 * of what it made, and the ring keeps working. Bounded by time.
 */
#include "util/util.h"
#include "util/ring_elem.h"

#include <criterion/criterion.h>
#include <errno.h>
#include <pthread.h>
#include <sched.h>
#include <signal.h>
#include <stdatomic.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#include "ferry/ring.h"

TestSuite(ring_mpmc_stress, .timeout = 300);

#define RUN_MS 1200 /* per configuration */
#define MAXP 4

/* Lives in shared memory, so it works for processes and threads alike. */
struct shared {
	_Atomic int stop;
	int nprod, ncons;
	size_t batch;
	int64_t deadline; /* a side waiting past this fails */
	struct {
		uint64_t made;  /* producer: elements pushed */
		int err;
	} prod[MAXP + 1];
	struct {
		uint64_t got;
		uint64_t count[MAXP + 1];
		uint64_t sum[MAXP + 1]; /* sum of seq + 1 */
		int err;
	} cons[MAXP];
};

struct arg {
	ferry_ring_mpmc *r;
	struct shared *sh;
	int idx;
	pid_t parent;
	bool linger; /* a victim-to-be: dawdle inside its operations, so a kill lands there */
};

/* Test-only hook of shm/ring_mpmc.c, called at each step of a push or pop. */
extern void (*ferry__ring_mpmc_hook)(int step);

static void linger(int step)
{
	if (step == 3 || step == 13) /* half-written / half-read */
		sched_yield();
}

static bool keep_waiting(const struct arg *a, unsigned *spins)
{
	if (++*spins % 32)
		return true;
	sched_yield();
	if (*spins % 2048)
		return true;
	if (tu_now_ns() > a->sh->deadline)
		return false;
	return !a->parent || getppid() == a->parent;
}

static int producer(void *p)
{
	struct arg *a = p;
	struct shared *sh = a->sh;
	uint32_t id = (uint32_t)a->idx;
	if (a->linger)
		ferry__ring_mpmc_hook = linger;
	struct elem b[64];
	uint64_t seq = 0;
	while (!atomic_load_explicit(&sh->stop, memory_order_relaxed)) {
		size_t n = sh->batch;
		for (size_t i = 0; i < n; i++)
			b[i] = mk_elem(id, seq + i);
		unsigned spins = 0;
		int rc;
		while ((rc = n == 1 ? ferry_ring_mpmc_push(a->r, b, sizeof b[0])
				    : ferry_ring_mpmc_push_batch(a->r, b, sizeof b[0], n)) == -EAGAIN) {
			if (atomic_load_explicit(&sh->stop, memory_order_relaxed))
				break;
			if (!keep_waiting(a, &spins))
				return sh->prod[id].err = 12;
		}
		if (rc == -EAGAIN)
			break;
		if (rc < 0)
			return sh->prod[id].err = 10;
		seq += n == 1 ? 1 : (uint64_t)rc;
		/* published before counted: a producer killed here has delivered at least made */
		__atomic_store_n(&sh->prod[id].made, seq, __ATOMIC_RELAXED);
	}
	return 0;
}

static int consumer(void *p)
{
	struct arg *a = p;
	struct shared *sh = a->sh;
	int c = a->idx;
	if (a->linger)
		ferry__ring_mpmc_hook = linger;
	uint64_t last[MAXP + 1];
	memset(last, 0xff, sizeof last);
	struct elem b[64];
	for (;;) {
		unsigned spins = 0;
		int rc;
		while ((rc = sh->batch == 1 ? ferry_ring_mpmc_pop(a->r, b, sizeof b[0])
					    : ferry_ring_mpmc_pop_batch(a->r, b, sizeof b[0],
									sh->batch)) == -EAGAIN)
			if (!keep_waiting(a, &spins))
				return sh->cons[c].err = 23;
		if (rc == -EPIPE)
			return 0;
		if (rc < 0)
			return sh->cons[c].err = 20;
		int k = sh->batch == 1 ? 1 : rc;
		for (int i = 0; i < k; i++) {
			if (!elem_ok(&b[i]) || b[i].producer < 1 || b[i].producer > (uint32_t)sh->nprod)
				return sh->cons[c].err = 21;
			uint32_t id = b[i].producer;
			if (last[id] != UINT64_MAX && b[i].seq <= last[id])
				return sh->cons[c].err = 22;
			last[id] = b[i].seq;
			sh->cons[c].count[id]++;
			sh->cons[c].sum[id] += b[i].seq + 1;
			sh->cons[c].got++;
		}
	}
}

struct targ {
	struct arg a;
	bool prod;
};

static void *thread_run(void *p)
{
	struct targ *t = p;
	if (t->prod)
		producer(&t->a);
	else
		consumer(&t->a);
	return NULL;
}

enum kill { KILL_NONE, KILL_PRODUCER, KILL_CONSUMER };

/*
 * One configuration. With @kill (processes only), one producer or one
 * consumer is SIGKILLed at a random moment while the others run on.
 */
static void run(int nprod, int ncons, size_t batch, bool processes, enum kill kill_one,
		size_t slots)
{
	size_t n = ferry_ring_mpmc_memsize(slots, sizeof(struct elem));
	ferry_ring_mpmc *r = tu_shared_alloc(n);
	cr_assert_eq(ferry_ring_mpmc_init(r, n, sizeof(struct elem)), 0);
	struct shared *sh = tu_shared_alloc(sizeof *sh);
	sh->nprod = nprod;
	sh->ncons = ncons;
	sh->batch = batch;
	sh->deadline = tu_now_ns() + 120000000000ll;
	struct targ t[2 * MAXP];
	pthread_t th[2 * MAXP];
	pid_t pid[2 * MAXP];
	for (int i = 0; i < nprod + ncons; i++) {
		bool prod = i < nprod;
		t[i] = (struct targ){ { r, sh, prod ? i + 1 : i - nprod, processes ? getpid() : 0,
					kill_one != KILL_NONE },
				      prod };
		if (processes)
			pid[i] = tu_fork(prod ? producer : consumer, &t[i].a);
		else
			cr_assert_eq(pthread_create(&th[i], NULL, thread_run, &t[i]), 0);
	}
	int victim = -1;
	if (kill_one != KILL_NONE) {
		unsigned seed = (unsigned)tu_now_ns();
		usleep(100000 + (useconds_t)(rand_r(&seed) % (RUN_MS * 1000 / 2)));
		victim = kill_one == KILL_PRODUCER ? rand_r(&seed) % nprod
						   : nprod + rand_r(&seed) % ncons;
		kill(pid[victim], SIGKILL);
		usleep(RUN_MS * 1000 / 2);
	} else {
		usleep(RUN_MS * 1000);
	}
	atomic_store(&sh->stop, 1);
	for (int i = 0; i < nprod + ncons; i++) {
		if (i == nprod)
			ferry_ring_mpmc_close(r); /* producers done: consumers drain, then -EPIPE */
		if (processes) {
			int st = tu_wait(pid[i], 60000);
			if (i == victim)
				cr_expect(st != -1 && WIFSIGNALED(st), "victim %d: 0x%x", i, st);
			else
				cr_expect(st != -1 && WIFEXITED(st) && WEXITSTATUS(st) == 0,
					  "%s %d: 0x%x", i < nprod ? "producer" : "consumer", i, st);
		} else {
			pthread_join(th[i], NULL);
		}
	}
	uint64_t total = 0, made = 0;
	for (int c = 0; c < ncons; c++) {
		if (c + nprod != victim)
			cr_expect_eq(sh->cons[c].err, 0, "consumer %d: error %d", c, sh->cons[c].err);
		total += sh->cons[c].got;
	}
	for (int p = 1; p <= nprod; p++) {
		cr_expect_eq(sh->prod[p].err, 0, "producer %d: error %d", p, sh->prod[p].err);
		uint64_t cnt = 0, sum = 0, mk = sh->prod[p].made;
		for (int c = 0; c < ncons; c++) {
			cnt += sh->cons[c].count[p];
			sum += sh->cons[c].sum[p];
		}
		made += mk;
		if (kill_one == KILL_CONSUMER) {
			/* what the dead reader held is lost; nothing is delivered twice */
			cr_expect_leq(cnt, mk, "producer %d: made %llu, delivered %llu (duplicates)", p,
				      (unsigned long long)mk, (unsigned long long)cnt);
			cr_expect_geq(cnt + batch + 1, mk, "producer %d: made %llu, delivered %llu", p,
				      (unsigned long long)mk, (unsigned long long)cnt);
			continue;
		}
		if (p - 1 == victim) {
			/* a dead producer delivered exactly a prefix of what it made, at least what it counted */
			cr_expect_geq(cnt, mk, "dead producer %d: counted %llu, delivered %llu", p,
				      (unsigned long long)mk, (unsigned long long)cnt);
			cr_expect_leq(cnt, mk + batch, "dead producer %d", p);
		} else {
			cr_expect_eq(cnt, mk, "producer %d: made %llu, delivered %llu", p,
				     (unsigned long long)mk, (unsigned long long)cnt);
		}
		cr_expect_eq(sum, cnt * (cnt + 1) / 2, "producer %d: not exactly a prefix", p);
	}
	if (kill_one == KILL_NONE)
		cr_expect_eq(total, made);
	cr_log_info("%dP%dC batch %zu %s%s: %llu elements, %llu slots recovered", nprod, ncons,
		    batch, processes ? "processes" : "threads",
		    kill_one == KILL_PRODUCER ? ", a producer killed" :
		    kill_one == KILL_CONSUMER ? ", a consumer killed" : "",
		    (unsigned long long)total, (unsigned long long)ferry_ring_mpmc_recovered(r));
	/* the ring is still well-formed, whatever died in it */
	cr_expect_eq(ferry_ring_mpmc_check(r, n, sizeof(struct elem)), 0, "%s", ferry_errmsg());
	tu_shared_free(sh, sizeof *sh);
	tu_shared_free(r, n);
}

Test(ring_mpmc_stress, threads_1p1c_2p2c_4p4c)
{
	run(1, 1, 1, false, KILL_NONE, 256);
	run(2, 2, 1, false, KILL_NONE, 256);
	run(4, 4, 1, false, KILL_NONE, 256);
}

Test(ring_mpmc_stress, threads_batched)
{
	run(1, 1, 16, false, KILL_NONE, 256);
	run(2, 2, 16, false, KILL_NONE, 256);
	run(4, 4, 64, false, KILL_NONE, 256);
}

Test(ring_mpmc_stress, processes_1p1c_2p2c_4p4c)
{
	run(1, 1, 1, true, KILL_NONE, 256);
	run(2, 2, 1, true, KILL_NONE, 256);
	run(4, 4, 1, true, KILL_NONE, 256);
}

Test(ring_mpmc_stress, processes_batched)
{
	run(1, 1, 16, true, KILL_NONE, 256);
	run(2, 2, 16, true, KILL_NONE, 256);
	run(4, 4, 64, true, KILL_NONE, 256);
}

Test(ring_mpmc_stress, processes_killed_at_random_moments)
{
	for (int i = 0; i < 2; i++) {
		run(2, 2, 1, true, KILL_PRODUCER, 64);
		run(3, 2, 8, true, KILL_PRODUCER, 64);
		run(2, 2, 1, true, KILL_CONSUMER, 64);
		run(2, 3, 8, true, KILL_CONSUMER, 64);
	}
}
