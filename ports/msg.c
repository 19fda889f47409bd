/*
 * Clone messages: a value graph with buffers and ports.
 *
 * Record (in the ring):
 *
 *   wire_hdr   { kind = WIRE_CLONE }
 *   clone_hdr  { nhandles, nfds, fd_seq, body_len, cbor_len, flags, nstash }
 *   desc[nhandles]  { type, len, off }
 *   desc[nstash]    H_STASH: fd batches a transferred port had stashed
 *   body       cbor_len bytes of CBOR, then the inline bytes of small buffers
 *              (absent when CLONE_SPILLED: then the body is the last fd's
 *              segment)
 *
 * Handles that need fds (a buffer's segment, a shared buffer's segment, a
 * port's channel segment and control socket, a spilled body) travel on the
 * channel's control socket in batches of at most FERRY_FDS_MAX, each batch
 * headed by { seq, index }. They are sent before the record is committed, so
 * a receiver that sees the record finds them already queued. A batch whose
 * seq is older than the record's belongs to a post that failed halfway and
 * is dropped (its fds closed); one of a newer seq is left queued for its
 * own record (recv_fds). A post that fails after sending batches commits a
 * WIRE_VOID record whose payload is that seq, so the receiver knows them
 * stale (ports/port.c ferry__port_drain_wakes).
 *
 * Post is all or nothing: everything that can fail (checks, encoding,
 * segments, ring space, fd sends) happens before the commit; handles are
 * detached only after it. A failure after the reservation commits a
 * WIRE_VOID record, which the receiver skips.
 */
#include "ferry/buf.h"
#include "ferry/value.h"
#include "ports/msg_int.h"
#include "ports/port_int.h"
#include "shm/buf_int.h"
#include "ports/value_internal.h"
#include "shm/err.h"
#include "shm/ring_int.h"
#include "shm/seg_int.h"

#include <errno.h>
#include <pthread.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <unistd.h>

enum handle_type {
	H_BUF_INLINE = 1, /* plain buffer, bytes in the body */
	H_BUF_SEG = 2,    /* plain buffer, its own segment (1 fd) */
	H_SHARED = 3,     /* shared buffer (1 fd) */
	H_PORT = 4,       /* port: channel segment + control socket (2 fds); len = side */
	/* A batch the port of handle `pad` had stashed (ports/port.c): it
	 * travels with the port. len = seq, off = index << 32 | count << 16 |
	 * nfds (its fds follow those of every handle). */
	H_STASH = 5,
};

#define CLONE_SPILLED 1u

struct clone_hdr {
	uint32_t nhandles;
	uint32_t nfds;     /* fds in all batches, the spilled body's included */
	uint64_t fd_seq;   /* seq of this record's batches (0: no fds) */
	uint64_t body_len;
	uint64_t cbor_len; /* the CBOR is body[0, cbor_len) */
	uint32_t flags;
	uint32_t nstash;   /* H_STASH descriptors after the handles' */
};

struct handle_desc {
	uint32_t type;
	uint32_t pad;
	uint64_t len; /* buffer bytes; the side for a port */
	uint64_t off; /* H_BUF_INLINE: offset of the bytes in the body */
};

#define MAX_FDS (2 * FERRY_MSG_MAX_HANDLES + 1)
#define SCRATCH_BYTES ((size_t)64 * 1024)

static void sock_sent(int sock);
static void close_fds(int *fds, unsigned n);

static unsigned fds_of(uint32_t type)
{
	return type == H_PORT ? 2 : type == H_BUF_INLINE ? 0 : 1;
}

/* ---- post ---- */

#define PLAN_FEW 8 /* handles a post plans for without a malloc */

struct plan {
	struct ferry_clone_handles table; /* from the encoder, then the xfer extras */
	unsigned char *transferred;        /* per handle: listed in xfer */
	struct handle_desc *descs;
	const unsigned char *cbor_data;    /* the encoding (in the port's scratch) */
	size_t cbor_len;
	ferry_seg *spill;                  /* borrowed from the port's cache */
	struct handle_desc *sdescs;        /* H_STASH descriptors */
	unsigned nstash;
	unsigned stash_fd0, stash_fds;     /* fds[] range of dups the plan owns */
	int fds[MAX_FDS];
	unsigned nfds;
	size_t inline_len;
	/* descs and transferred of a message with few handles (no mallocs) */
	struct handle_desc descs_in[PLAN_FEW];
	unsigned char transferred_in[PLAN_FEW];
};

/* Handle tables up to this many entries go back to their port for its next
 * post (one thread posts on a port at a time): a message with handles then
 * encodes without a malloc. A longer one is freed. */
#define POST_TABLE_KEEP 64

static void plan_fini(ferry_port *p, struct plan *pl)
{
	for (unsigned i = 0; i < pl->stash_fds; i++)
		close(pl->fds[pl->stash_fd0 + i]);
	free(pl->sdescs);
	if (pl->descs != pl->descs_in)
		free(pl->descs);
	if (pl->transferred != pl->transferred_in)
		free(pl->transferred);
	if (pl->table.cap <= POST_TABLE_KEEP && !p->post_table.items) {
		p->post_table = pl->table;
		p->post_table.count = 0;
	} else {
		ferry_clone_handles_fini(&pl->table);
	}
}

static int check_xfer(ferry_port *p, const struct ferry_xfer *x)
{
	if (!x)
		return 0;
	if ((x->nbufs && !x->bufs) || (x->nports && !x->ports))
		return ferry__fail(-EINVAL, "ferry_port_post: transfer list has a count but no array");
	if (x->nbufs + x->nports > FERRY_MSG_MAX_HANDLES)
		return ferry__fail(-EINVAL, "ferry_port_post: transfer list of %zu entries (most %d)",
				   x->nbufs + x->nports, FERRY_MSG_MAX_HANDLES);
	for (size_t i = 0; i < x->nbufs; i++) {
		ferry_buf *b = x->bufs[i];
		if (!b)
			return ferry__fail(-EINVAL, "ferry_port_post: transfer list bufs[%zu] is NULL", i);
		if (ferry_buf_is_detached(b))
			return ferry__fail(FERRY_EDETACHED,
					   "ferry_port_post: transfer list bufs[%zu] is already detached", i);
		if (ferry_buf_is_shared(b))
			return ferry__fail(-EINVAL,
					   "ferry_port_post: transfer list bufs[%zu] is a shared buffer (shared, not transferred)", i);
		for (size_t j = 0; j < i; j++)
			if (x->bufs[j] == b)
				return ferry__fail(-EINVAL,
						   "ferry_port_post: transfer list names the same buffer twice (bufs[%zu] and bufs[%zu])", j, i);
	}
	for (size_t i = 0; i < x->nports; i++) {
		ferry_port *q = x->ports[i];
		if (!q)
			return ferry__fail(-EINVAL, "ferry_port_post: transfer list ports[%zu] is NULL", i);
		if (q == p)
			return ferry__fail(-EINVAL, "ferry_port_post: transfer list ports[%zu] is the sending port itself", i);
		if (q->detached)
			return ferry__fail(FERRY_EDETACHED,
					   "ferry_port_post: transfer list ports[%zu] is already detached", i);
		if (ferry__port_closed(q))
			return ferry__fail(-EPIPE, "ferry_port_post: transfer list ports[%zu] is closed", i);
		if (ferry__port_same_channel(p, q))
			return ferry__fail(-EINVAL,
					   "ferry_port_post: transfer list ports[%zu] is the sending port's own peer", i);
		for (size_t j = 0; j < i; j++)
			if (x->ports[j] == q)
				return ferry__fail(-EINVAL,
						   "ferry_port_post: transfer list names the same port twice (ports[%zu] and ports[%zu])", j, i);
	}
	return 0;
}

static int table_add(struct ferry_clone_handles *t, enum ferry_value_kind kind, void *h)
{
	if (t->count == t->cap) {
		size_t cap = t->cap ? 2 * t->cap : 8;
		void *n = realloc(t->items, cap * sizeof *t->items);
		if (!n)
			return ferry__fail(-ENOMEM, "ferry_port_post: out of memory");
		t->items = n;
		t->cap = cap;
	}
	t->items[t->count].kind = kind;
	t->items[t->count].handle = h;
	t->count++;
	return 0;
}

static int in_list(void *const *list, size_t n, const void *h)
{
	for (size_t i = 0; i < n; i++)
		if (list[i] == h)
			return 1;
	return 0;
}

static int in_table(const struct ferry_clone_handles *t, const void *h)
{
	for (size_t i = 0; i < t->count; i++)
		if (t->items[i].handle == h)
			return 1;
	return 0;
}

/* Encode @v into the port's scratch buffer (one sender per port at a time).
 * A clone too big for the scratch is only measured here (cbor_data stays
 * NULL, the handle table is complete): encode_into writes it later where it
 * goes, straight into a spill segment for a big message (one copy). */
static int encode(ferry_port *p, const ferry_value *v, struct plan *pl)
{
	if (!p->scratch) {
		p->scratch = malloc(SCRATCH_BYTES);
		if (!p->scratch)
			return ferry__fail(-ENOMEM, "ferry_port_post: out of memory");
		p->scratch_cap = SCRATCH_BYTES;
	}
	size_t len;
	int rc = ferry_clone_encode(v, p->scratch, p->scratch_cap, &len, &pl->table, NULL);
	if (rc == -ENOBUFS)
		rc = 0;
	else if (rc == 0)
		pl->cbor_data = p->scratch;
	if (rc)
		return rc;
	pl->cbor_len = len;
	return 0;
}

/* The second pass of a clone that did not fit the scratch: @v again, into
 * @dst of exactly pl->cbor_len bytes (the same value gives the same bytes
 * and the same handle order). */
static int encode_into(const ferry_value *v, struct plan *pl, unsigned char *dst)
{
	struct ferry_clone_handles t;
	ferry_clone_handles_init(&t);
	size_t len;
	int rc = ferry_clone_encode(v, dst, pl->cbor_len, &len, &t, NULL);
	ferry_clone_handles_fini(&t);
	if (rc == 0 && len != pl->cbor_len)
		rc = ferry__fail(-EINVAL, "ferry_port_post: the value changed while it was encoded");
	return rc;
}

/* A clone bigger than the scratch that stays in the ring: grow the scratch
 * (it stays, warm) and encode there. */
static int encode_scratch(ferry_port *p, const ferry_value *v, struct plan *pl)
{
	if (p->scratch_cap < pl->cbor_len) {
		unsigned char *n = realloc(p->scratch, pl->cbor_len);
		if (!n)
			return ferry__fail(-ENOMEM, "ferry_port_post: out of memory for a %zu-byte clone",
					   pl->cbor_len);
		p->scratch = n;
		p->scratch_cap = pl->cbor_len;
	}
	int rc = encode_into(v, pl, p->scratch);
	if (rc == 0)
		pl->cbor_data = p->scratch;
	return rc;
}

/*
 * Ports that travel with fd batches in their stash (ports/port.c: taken off
 * the socket ahead of their records) take copies of them along, after
 * every handle's fds: the importer puts them back in its stash, where the
 * records will look for them. Our copies stay until the commit (the port
 * is detached then), so a post that fails loses nothing.
 */
static int plan_stashes(struct plan *pl)
{
	pl->stash_fd0 = pl->nfds;
	for (size_t i = 0; i < pl->table.count; i++) {
		if (pl->table.items[i].kind != FERRY_VALUE_PORT)
			continue;
		ferry_port *q = pl->table.items[i].handle;
		if (!atomic_load_explicit(&q->stash_n, memory_order_relaxed))
			continue;
		struct fd_stash st[FERRY_STASH_MAX];
		int k = ferry__port_stash_copy(q, st, FERRY_STASH_MAX);
		if (k <= 0)
			return k;
		unsigned nf = 0;
		for (int j = 0; j < k; j++)
			nf += st[j].nfds;
		struct handle_desc *n = realloc(pl->sdescs, (pl->nstash + (size_t)k) * sizeof *n);
		/* One fd slot stays free for a spilled body. */
		if (!n || pl->nfds + nf + 1 > MAX_FDS) {
			if (n)
				pl->sdescs = n;
			for (int j = 0; j < k; j++)
				close_fds(st[j].fds, st[j].nfds);
			return !n ? ferry__fail(-ENOMEM, "ferry_port_post: out of memory")
				  : ferry__fail(-EMSGSIZE, "ferry_port_post: the transferred ports' fds and the "
						"fd batches they hold exceed %d fds", MAX_FDS);
		}
		pl->sdescs = n;
		for (int j = 0; j < k; j++) {
			uint32_t count = st[j].count < 0xffff ? st[j].count : 0xffff;
			pl->sdescs[pl->nstash++] = (struct handle_desc){
				.type = H_STASH,
				.pad = (uint32_t)i,
				.len = st[j].seq,
				.off = (uint64_t)st[j].index << 32 | (uint64_t)count << 16 | st[j].nfds,
			};
			memcpy(pl->fds + pl->nfds, st[j].fds, st[j].nfds * sizeof *st[j].fds);
			pl->nfds += st[j].nfds;
			pl->stash_fds += st[j].nfds;
		}
	}
	return 0;
}

static int plan_handles(const struct ferry_xfer *x, struct plan *pl)
{
	struct ferry_clone_handles *t = &pl->table;
	size_t nref = t->count;
	/* Check what the value references. */
	for (size_t i = 0; i < nref; i++) {
		struct ferry_clone_handle *h = &t->items[i];
		if (h->kind == FERRY_VALUE_PORT) {
			ferry_port *q = h->handle;
			if (!x || !in_list((void *const *)x->ports, x->nports, q))
				return ferry__fail(-EINVAL,
						   "ferry_port_post: the value references a port that is not in the transfer list");
			continue;
		}
		ferry_buf *b = h->handle;
		if (ferry_buf_is_detached(b))
			return ferry__fail(FERRY_EDETACHED, "ferry_port_post: the value references a detached buffer");
		if (h->kind == FERRY_VALUE_BUF && ferry_buf_is_shared(b))
			return ferry__fail(-EINVAL,
					   "ferry_port_post: a shared buffer is referenced as FERRY_VALUE_BUF (use FERRY_VALUE_SHARED)");
		if (h->kind == FERRY_VALUE_SHARED && !ferry_buf_is_shared(b))
			return ferry__fail(-EINVAL,
					   "ferry_port_post: a plain buffer is referenced as FERRY_VALUE_SHARED");
	}
	/* Listed but not referenced: they move all the same. */
	if (x) {
		for (size_t i = 0; i < x->nbufs; i++)
			if (!in_table(t, x->bufs[i]) && table_add(t, FERRY_VALUE_BUF, x->bufs[i]))
				return -ENOMEM;
		for (size_t i = 0; i < x->nports; i++)
			if (!in_table(t, x->ports[i]) && table_add(t, FERRY_VALUE_PORT, x->ports[i]))
				return -ENOMEM;
	}
	if (t->count > FERRY_MSG_MAX_HANDLES)
		return ferry__fail(-EINVAL, "ferry_port_post: %zu handles in one message (most %d)",
				   t->count, FERRY_MSG_MAX_HANDLES);
	size_t n = t->count;
	if (n == 0)
		return 0; /* the common case: no tables to make */
	if (n <= PLAN_FEW) {
		pl->descs = pl->descs_in;
		pl->transferred = pl->transferred_in;
		memset(pl->descs, 0, n * sizeof *pl->descs);
		memset(pl->transferred, 0, n);
	} else {
		pl->descs = calloc(n, sizeof *pl->descs);
		pl->transferred = calloc(n, 1);
		if (!pl->descs || !pl->transferred)
			return ferry__fail(-ENOMEM, "ferry_port_post: out of memory");
	}

	for (size_t i = 0; i < n; i++) {
		struct ferry_clone_handle *h = &t->items[i];
		struct handle_desc *d = &pl->descs[i];
		if (h->kind == FERRY_VALUE_PORT) {
			ferry_port *q = h->handle;
			pl->transferred[i] = 1;
			d->type = H_PORT;
			d->len = (uint64_t)q->side;
			pl->fds[pl->nfds++] = ferry_seg_fd(q->seg);
			pl->fds[pl->nfds++] = q->sock;
			sock_sent(q->sock);
			continue;
		}
		ferry_buf *b = h->handle;
		size_t len = ferry_buf_len(b);
		d->len = len;
		if (h->kind == FERRY_VALUE_SHARED) {
			d->type = H_SHARED;
			pl->fds[pl->nfds++] = ferry_seg_fd(ferry__buf_seg(b));
			continue;
		}
		pl->transferred[i] = x && in_list((void *const *)x->bufs, x->nbufs, b);
		ferry_seg *seg = ferry__buf_seg(b);
		/* A buffer handed over from a spilled body (spill_own) holds its
		 * bytes at an offset of a segment it shares with other data: it
		 * moves as a copy, never as that segment. */
		if (pl->transferred[i] && seg && ferry_buf_data(b) == ferry_seg_data(seg)) {
			/* A move: the pages go, one fd whatever the size. */
			d->type = H_BUF_SEG;
			pl->fds[pl->nfds++] = ferry_seg_fd(seg);
		} else {
			/* A clone (or a move of heap bytes): one copy into the body,
			 * which spills to a reused segment when the ring is too small. */
			d->type = H_BUF_INLINE;
			d->off = pl->cbor_len + pl->inline_len;
			pl->inline_len += len;
		}
	}
	return plan_stashes(pl);
}

/* The body: the CBOR (unless encoded in place: @cbor NULL), then the inline
 * bytes. */
static void write_body(unsigned char *dst, const struct plan *pl, const unsigned char *cbor)
{
	if (cbor)
		memcpy(dst, cbor, pl->cbor_len);
	for (size_t i = 0; i < pl->table.count; i++)
		if (pl->descs[i].type == H_BUF_INLINE && pl->descs[i].len)
			memcpy(dst + pl->descs[i].off, ferry_buf_data(pl->table.items[i].handle),
			       pl->descs[i].len);
}

static int send_fds(ferry_port *p, uint64_t seq, const int *fds, unsigned n, int64_t timeout_ns)
{
	for (unsigned i = 0, b = 0; i < n; b++) {
		unsigned k = n - i < FERRY_FDS_MAX ? n - i : FERRY_FDS_MAX;
		struct fd_batch bh = { .seq = seq, .index = b, .count = k };
		int rc = ferry_fds_send(p->sock, &bh, sizeof bh, fds + i, k, timeout_ns);
		if (rc)
			return rc;
		i += k;
	}
	return 0;
}

/*
 * Spill segments. A body too big for the ring goes into a segment that
 * starts with this header; the sender keeps a few and reuses one once the
 * receiver has cleared its busy word after decoding (so the memory is
 * allocated and faulted in once, not per message), and the receiver keeps
 * the mappings of the last few it saw, found again by inode.
 */
#define SPILL_MAGIC 0x6c6c697079726566ull /* "ferryspill" */
#define SPILL_HDR ((size_t)64)
/* Smallest inline buffer handed over in place rather than copied out. */
#define HAND_MIN ((size_t)64 * 1024)

struct spill_hdr {
	uint64_t magic;
	_Atomic uint32_t busy; /* sender sets, receiver clears when done */
	/* Buffers a receiver in another process was handed over in place
	 * (ferry_port_set_zero_copy) and still uses: each adds one, and takes
	 * it off when it lets go of the bytes. */
	_Atomic uint32_t holds;
};

/*
 * Handing a spilled body over within this process. A receiver in another
 * process must copy the bytes out (the sender keeps write access to a
 * reused segment); a receiver in this process may keep them where they are
 * (a thread peer is trusted), but a port cannot tell where its peer is: the
 * receiving end may have moved since the post. So the receiver decides, per
 * message, from the segment itself: the process keeps a list of the spill
 * segments its own senders own, and how often each one's fd was sent and how
 * often a receiver of this process took it. A segment whose every send so far
 * arrived here, through the control socket of the channel it was sent on
 * (the other side of it), a socket whose pair was made in this process and
 * never left it (no other process can have peeked the fd off it), and that
 * no fork copied into another process, has never had its fd or a mapping
 * anywhere else: nobody outside this process can write it, so its bytes are
 * a snapshot that may be handed out in place (one copy for the whole trip).
 * Anything else (another process's memfd, a segment that once went
 * elsewhere or was dropped as a stale batch, one alive at a fork, a port
 * that travelled) is copied out as before.
 *
 * The buffers handed out hold references to the sender's segment; the
 * sender takes a segment again only when its busy word is clear and no such
 * buffer is left (ferry__seg_refs == 1: its spill_tx reference alone).
 */
struct spill_own {
	struct spill_own *next;
	uint64_t id;    /* (dev, inode), as spill_map computes it */
	ferry_seg *seg; /* the sender's, borrowed from its spill_tx */
	uint64_t sent;  /* posts that sent (or tried to send) its fd */
	uint64_t seen;  /* of those, the ones a receiver of this process took */
	uint64_t chan;  /* the channel (chan_id) and side of the port that */
	int side;       /* sends it: only that channel's other side takes it */
	int forked;     /* a fork copied its fd and mapping into a child */
};

static pthread_mutex_t own_lock = PTHREAD_MUTEX_INITIALIZER;
static struct spill_own *own_list;
static pthread_once_t own_once = PTHREAD_ONCE_INIT;

/*
 * Control sockets (by inode) that left this process, or may have: a
 * receiving port whose socket is one of them may share it with another
 * process, which can then MSG_PEEK the spill fds queued on it (a peek
 * installs them too). Never shrinks (a closed socket's inode reused by a
 * new one is only refused a zero-copy receive); past SOCK_SENT_MAX entries
 * every socket counts as having left.
 */
#define SOCK_SENT_MAX 4096
static uint64_t sock_sent_ids[SOCK_SENT_MAX];
static size_t sock_sent_n;
static int sock_sent_full;

/* Held across fork so that the child does not inherit it held; both sides
 * mark every segment alive at the fork: each process now has a writable
 * copy of the other's. */
static void own_prefork(void)
{
	pthread_mutex_lock(&own_lock);
}

static void own_postfork(void)
{
	for (struct spill_own *e = own_list; e; e = e->next)
		e->forked = 1;
	pthread_mutex_unlock(&own_lock);
}

static void own_init(void)
{
	pthread_atfork(own_prefork, own_postfork, own_postfork);
}

static int fd_id(int fd, uint64_t *id)
{
	struct stat st;
	if (fstat(fd, &st) < 0)
		return -errno;
	*id = ((uint64_t)st.st_dev << 32) ^ (uint64_t)st.st_ino;
	return 0;
}

static void sock_sent(int sock)
{
	uint64_t id;
	int known = fd_id(sock, &id) == 0;
	pthread_once(&own_once, own_init);
	pthread_mutex_lock(&own_lock);
	if (!known || sock_sent_n == SOCK_SENT_MAX) {
		sock_sent_full = 1;
	} else {
		size_t i = 0;
		while (i < sock_sent_n && sock_sent_ids[i] != id)
			i++;
		if (i == sock_sent_n)
			sock_sent_ids[sock_sent_n++] = id;
	}
	pthread_mutex_unlock(&own_lock);
}

void ferry__msg_sock_sent(int sock)
{
	sock_sent(sock);
}

/* The control socket @sock_id never left this process (sock_sent); the
 * caller checks that its pair was made here. Called with own_lock held. */
static int sock_stayed(uint64_t sock_id)
{
	if (sock_sent_full)
		return 0;
	for (size_t i = 0; i < sock_sent_n; i++)
		if (sock_sent_ids[i] == sock_id)
			return 0;
	return 1;
}

/* Best effort: a segment left out is only ever copied. */
static void own_add(ferry_seg *s)
{
	uint64_t id = 0;
	if (fd_id(ferry_seg_fd(s), &id))
		return;
	struct spill_own *e = calloc(1, sizeof *e);
	if (!e)
		return;
	e->id = id;
	e->seg = s;
	pthread_once(&own_once, own_init);
	pthread_mutex_lock(&own_lock);
	e->next = own_list;
	own_list = e;
	pthread_mutex_unlock(&own_lock);
}

/* Before the sender drops its reference: a receiver finds it no more. */
static void own_del(ferry_seg *s)
{
	if (!s)
		return;
	pthread_mutex_lock(&own_lock);
	for (struct spill_own **pp = &own_list; *pp; pp = &(*pp)->next)
		if ((*pp)->seg == s) {
			struct spill_own *e = *pp;
			*pp = e->next;
			free(e);
			break;
		}
	pthread_mutex_unlock(&own_lock);
}

/* Port @p is about to send @s's fd. */
static void own_sent(const ferry_port *p, ferry_seg *s)
{
	pthread_mutex_lock(&own_lock);
	for (struct spill_own *e = own_list; e; e = e->next)
		if (e->seg == s) {
			e->sent++;
			e->chan = p->chan_id;
			e->side = p->side;
			break;
		}
	pthread_mutex_unlock(&own_lock);
}

/* Receiving port @p of this process got the spill fd whose memfd is @id:
 * a new reference to the sender's segment when it may be read in place (and
 * holds @need bytes), else NULL (copy it out). Read in place only if every
 * send of the segment so far was taken here, the last one by the other side
 * of the channel it was sent on, through a socket that never left this
 * process (so that no other process can have peeked the fd either), and no
 * fork happened while it was alive. */
static ferry_seg *own_take(const ferry_port *p, uint64_t id, size_t need)
{
	ferry_seg *out = NULL;
	pthread_mutex_lock(&own_lock);
	for (struct spill_own *e = own_list; e; e = e->next) {
		if (e->id != id)
			continue;
		if (!e->forked && e->sent == e->seen + 1 && e->chan == p->chan_id &&
		    e->side != p->side && ferry_seg_size(e->seg) >= need) {
			/* Only now the syscalls (under the lock: neither blocks):
			 * a segment of another process is not on the list at all. */
			uint64_t sock_id = 0;
			struct ucred cr;
			socklen_t crl = sizeof cr;
			if (fd_id(p->sock, &sock_id) == 0 &&
			    getsockopt(p->sock, SOL_SOCKET, SO_PEERCRED, &cr, &crl) == 0 &&
			    crl == sizeof cr && cr.pid == getpid() && sock_stayed(sock_id))
				out = ferry_seg_ref(e->seg);
		}
		e->seen++;
		break;
	}
	pthread_mutex_unlock(&own_lock);
	return out;
}

static int spill_take(ferry_port *p, size_t body_len, ferry_seg **out)
{
	size_t need = SPILL_HDR + body_len;
	int empty = -1, small = -1, held = -1;
	for (int i = 0; i < FERRY_SPILL_CACHE; i++) {
		ferry_seg *s = p->spill_tx[i];
		if (!s) {
			if (empty < 0)
				empty = i;
			continue;
		}
		struct spill_hdr *h = ferry_seg_data(s);
		/* acquire: pairs with the receiver's release once it has decoded. */
		if (atomic_load_explicit(&h->busy, memory_order_acquire))
			continue;
		/* Buffers handed out of it, in this process or (zero-copy) in the
		 * receiver's, still use it. acquire: pairs with the release as
		 * each lets go; their reads come before our writes. */
		if (ferry__seg_refs(s) > 1 || atomic_load_explicit(&h->holds, memory_order_acquire)) {
			held = i;
			continue;
		}
		if (ferry_seg_size(s) >= need) {
			atomic_store_explicit(&h->busy, 1, memory_order_relaxed);
			*out = s;
			return 0;
		}
		small = i; /* idle but small: replace it */
	}
	/* A free slot, else an idle segment too small, else one the receiver's
	 * buffers keep (they keep it alive without us), else all are busy (a
	 * receiver lagging or gone): let the oldest go. */
	int slot = empty >= 0 ? empty : small >= 0 ? small : held >= 0 ? held : 0;
	/* Round up so that messages of similar sizes share a segment. */
	size_t size = 1u << 16;
	while (size < need)
		size <<= 1;
	ferry_seg *s;
	int rc = ferry_seg_create(&s, size, "ferry-message");
	if (rc)
		return rc;
	struct spill_hdr *h = ferry_seg_data(s);
	h->magic = SPILL_MAGIC;
	atomic_store_explicit(&h->busy, 1, memory_order_relaxed);
	own_del(p->spill_tx[slot]);
	ferry_seg_unref(p->spill_tx[slot]);
	p->spill_tx[slot] = s;
	own_add(s);
	*out = s;
	return 0;
}

/* A post that took a spill segment and failed before the commit. */
static void spill_put_back(ferry_seg *s)
{
	if (s)
		atomic_store_explicit(&((struct spill_hdr *)ferry_seg_data(s))->busy, 0,
				      memory_order_release);
}

/* The receiver's mapping of the spill segment behind @fd (consumed), the
 * memfd @id. */
static int spill_map(ferry_port *p, int fd, uint64_t id, size_t body_len, ferry_seg **out)
{
	int victim = 0;
	for (int i = 0; i < FERRY_SPILL_CACHE; i++) {
		struct spill_rx *c = &p->spill_rx[i];
		if (c->seg && c->id == id && ferry_seg_size(c->seg) >= SPILL_HDR + body_len) {
			close(fd); /* the same memfd, mapped already (its seals fix the size) */
			c->used = ++p->spill_clock;
			*out = c->seg;
			return 0;
		}
		if (!c->seg || c->used < p->spill_rx[victim].used)
			victim = i;
	}
	ferry_seg *s;
	int rc = ferry_seg_import(&s, fd, SPILL_HDR + body_len);
	if (rc)
		return rc;
	if (((struct spill_hdr *)ferry_seg_data(s))->magic != SPILL_MAGIC) {
		ferry_seg_unref(s);
		return ferry__fail(-EBADMSG, "ferry_port_recv: a spilled message's segment has no spill header");
	}
	struct spill_rx *c = &p->spill_rx[victim];
	ferry_seg_unref(c->seg);
	c->seg = s;
	c->id = id;
	c->used = ++p->spill_clock;
	*out = s;
	return 0;
}

/* The receiver is done with a spill segment: the sender may reuse it. */
static void spill_release(ferry_seg *s)
{
	if (s)
		/* release: pairs with the acquire in spill_take; our reads of the
		 * body happen before the sender's next writes. */
		atomic_store_explicit(&((struct spill_hdr *)ferry_seg_data(s))->busy, 0,
				      memory_order_release);
}

void ferry__msg_port_fini(ferry_port *p)
{
	for (int i = 0; i < FERRY_SPILL_CACHE; i++) {
		own_del(p->spill_tx[i]);
		ferry_seg_unref(p->spill_tx[i]);
		p->spill_tx[i] = NULL;
		ferry_seg_unref(p->spill_rx[i].seg);
		p->spill_rx[i].seg = NULL;
	}
	free(p->scratch);
	p->scratch = NULL;
	p->scratch_cap = 0;
	ferry_clone_handles_fini(&p->post_table);
}

struct reserve_arg {
	size_t len;
	void *where;
};

static int try_reserve_rec(ferry_port *p, void *arg)
{
	struct reserve_arg *a = arg;
	if (ferry__port_closed(p) || ferry__port_gone(p))
		return -EPIPE;
	return ferry_ring_spsc_view_reserve(&p->txv, a->len, &a->where);
}

#define DIRECT_NONE 1 /* post_direct did nothing: the general path from the start */
#define DIRECT_CBOR 2 /* the encoding is in the scratch, the table in @pl */

/*
 * The common message, a clone without handles that fits the ring: encoded
 * straight into the reserved record, then committed at its real length (one
 * write of the bytes; the scratch and its copy are for the rest). The
 * reservation is ferry__clone_bound's upper bound on the encoding, taken
 * only if the ring has that room now: a full ring, a bound past the ring's
 * record limit or a closed channel go the general way, which waits and
 * reports. Returns 0 (posted), an error (nothing posted), DIRECT_NONE, or
 * DIRECT_CBOR: the value holds handles, which need descriptors ahead of the
 * body; its encoding was copied to the scratch and @pl has its table and
 * length. Every way but 0 cancels the reservation: the ring is as it was
 * (shm/ring_int.h) and no handle has been touched.
 */
static int post_direct(ferry_port *p, const ferry_value *v, const struct ferry_xfer *x,
		       struct plan *pl)
{
	if (x && (x->nbufs || x->nports))
		return DIRECT_NONE;
	const size_t head = sizeof(struct wire_hdr) + sizeof(struct clone_hdr);
	size_t bound = ferry__clone_bound(v);
	if (bound > p->max_msg - (head - sizeof(struct wire_hdr)))
		return DIRECT_NONE;
	struct reserve_arg ra = { .len = head + bound };
	if (ferry__port_wait(p, &p->txd->space_ec, try_reserve_rec, &ra, 0))
		return DIRECT_NONE;
	unsigned char *w = ra.where;
	/* The size of this port's last direct record is the best guess of this one's. */
	size_t pf = p->direct_len ? p->direct_len : head + 1024;
	ferry__prefetch_w(w, pf < head + bound ? pf : head + bound);
	size_t len = 0;
	int rc = ferry_clone_encode(v, w + head, bound, &len, &pl->table, NULL);
	if (rc == 0 && pl->table.count == 0 && len <= p->max_message) {
		struct clone_hdr ch = { .body_len = len, .cbor_len = len };
		struct wire_hdr wh = { .kind = WIRE_CLONE };
		memcpy(w, &wh, sizeof wh);
		memcpy(w + sizeof wh, &ch, sizeof ch);
		ferry_ring_spsc_view_commit(&p->txv, head + len);
		ferry_ec_notify(&p->txd->data_ec);
		ferry__port_wake_fd(p);
		p->direct_len = head + len;
		ferry__port_prefetch_next(p, head + len);
		return 0;
	}
	ferry__ring_spsc_view_cancel(&p->txv);
	if (rc == 0 && pl->table.count) {
		/* The general path takes it from here, with this encoding (one
		 * pass: copied back out of the reserved room, which only the
		 * peer it goes to could have rewritten; the handle table and
		 * the length the general path trusts are our own). */
		if (p->scratch_cap < len) {
			size_t cap = len > SCRATCH_BYTES ? len : SCRATCH_BYTES; /* as encode() */
			unsigned char *n = realloc(p->scratch, cap);
			if (!n)
				return ferry__fail(-ENOMEM, "ferry_port_post: out of memory for a %zu-byte clone", len);
			p->scratch = n;
			p->scratch_cap = cap;
		}
		memcpy(p->scratch, w + head, len);
		pl->cbor_data = p->scratch;
		pl->cbor_len = len;
		return DIRECT_CBOR;
	}
	if (rc == 0)
		return ferry__fail(-EMSGSIZE, "ferry_port_post: a %zu-byte message exceeds the channel's max_message %zu",
				   len, p->max_message);
	if (rc == -ENOBUFS) {
		/* The bound was short after all: encode again the general way. */
		ferry_clone_handles_fini(&pl->table);
		ferry_clone_handles_init(&pl->table);
		return DIRECT_NONE;
	}
	return rc;
}

FERRY_API int ferry_port_post(ferry_port *p, const ferry_value *v, const struct ferry_xfer *x,
			      int64_t timeout_ns)
{
	if (!p)
		return ferry__fail(-EINVAL, "ferry_port_post: port is NULL");
	if (!v)
		return ferry__fail(-EINVAL, "ferry_port_post: value is NULL");
	if (p->detached)
		return ferry__fail(FERRY_EDETACHED, "ferry_port_post: the port was transferred away");
	if (ferry__port_closed(p))
		return ferry__fail(-EPIPE, "ferry_port_post: the channel is closed");
	int rc = check_xfer(p, x);
	if (rc)
		return rc;

	struct plan pl;
	/* Not the whole struct: fds[] (8 KiB) is used only up to nfds. */
	memset(&pl, 0, offsetof(struct plan, fds));
	pl.nfds = 0;
	pl.inline_len = 0;
	pl.cbor_data = NULL;
	pl.cbor_len = 0;
	pl.spill = NULL;
	/* The port's table from its last post, if it kept one (plan_fini). */
	pl.table = p->post_table;
	ferry_clone_handles_init(&p->post_table);
	rc = post_direct(p, v, x, &pl);
	if (rc == 0 || rc < 0) {
		plan_fini(p, &pl);
		return rc;
	}
	/* Only now (the direct path never waits): the clock costs ~20 ns, and
	 * the deadline bounds the fd sends, after the ring wait below. */
	int64_t deadline = timeout_ns > 0 ? ferry__now_ns() + timeout_ns : 0;
	rc = rc == DIRECT_CBOR ? 0 : encode(p, v, &pl);
	if (rc == 0)
		rc = plan_handles(x, &pl);
	if (rc) {
		plan_fini(p, &pl);
		return rc;
	}
	size_t nh = pl.table.count;
	size_t body_len = pl.cbor_len + pl.inline_len;
	if (body_len > p->max_message) {
		plan_fini(p, &pl);
		return ferry__fail(-EMSGSIZE, "ferry_port_post: a %zu-byte message exceeds the channel's max_message %zu",
				   body_len, p->max_message);
	}
	size_t head = sizeof(struct wire_hdr) + sizeof(struct clone_hdr) +
		      (nh + pl.nstash) * sizeof(struct handle_desc);
	size_t rec_len = head + body_len;
	int spilled = 0;
	if (rec_len - sizeof(struct wire_hdr) > p->max_msg) {
		/* Too big for the ring: the body goes into a segment of its own. */
		if (head - sizeof(struct wire_hdr) > p->max_msg) {
			plan_fini(p, &pl);
			return ferry__fail(-EMSGSIZE, "ferry_port_post: %zu handles do not fit this port's ring", nh);
		}
		rc = spill_take(p, body_len, &pl.spill);
		if (rc) {
			plan_fini(p, &pl);
			return rc;
		}
		unsigned char *dst = (unsigned char *)ferry_seg_data(pl.spill) + SPILL_HDR;
		if (!pl.cbor_data && (rc = encode_into(v, &pl, dst)) != 0) {
			spill_put_back(pl.spill);
			plan_fini(p, &pl);
			return rc;
		}
		write_body(dst, &pl, pl.cbor_data);
		pl.fds[pl.nfds++] = ferry_seg_fd(pl.spill);
		rec_len = head;
		spilled = 1;
	} else if (!pl.cbor_data && (rc = encode_scratch(p, v, &pl)) != 0) {
		plan_fini(p, &pl);
		return rc;
	}
	const unsigned char *cbor = pl.cbor_data;

	struct reserve_arg ra = { .len = rec_len };
	rc = ferry__port_wait(p, &p->txd->space_ec, try_reserve_rec, &ra, timeout_ns);
	if (rc) {
		spill_put_back(pl.spill);
		plan_fini(p, &pl);
		if (rc == -EPIPE)
			return ferry__fail(rc, "ferry_port_post: the channel is closed%s",
					   ferry__port_gone(p) ? " (peer process gone)" : "");
		if (rc == -EAGAIN || rc == -ETIMEDOUT)
			return ferry__fail(rc, "ferry_port_post: ring full%s",
					   rc == -ETIMEDOUT ? " until the timeout" : "");
		return rc;
	}

	unsigned char *w = ra.where;
	struct clone_hdr ch = {
		.nhandles = (uint32_t)nh,
		.nfds = pl.nfds,
		.body_len = body_len,
		.cbor_len = pl.cbor_len,
		.flags = spilled ? CLONE_SPILLED : 0,
		.nstash = pl.nstash,
	};
	if (pl.nfds) {
		/* relaxed: only this side writes the counter; the record's commit
		 * (release) publishes it with the record. */
		ch.fd_seq = atomic_fetch_add_explicit(&p->txd->fd_seq, 1, memory_order_relaxed) + 1;
		int64_t left = timeout_ns;
		if (timeout_ns > 0) {
			left = deadline - ferry__now_ns();
			if (left < 0)
				left = 0;
		}
		if (spilled)
			own_sent(p, pl.spill);
		rc = send_fds(p, ch.fd_seq, pl.fds, pl.nfds, left);
		if (rc) {
			/* The void record names the abandoned sequence: the receiver
			 * then knows any batch of it left queued is stale. */
			struct wire_hdr vh = { .kind = WIRE_VOID };
			memcpy(w, &vh, sizeof vh);
			memcpy(w + sizeof vh, &ch.fd_seq, sizeof ch.fd_seq);
			ferry_ring_spsc_view_commit(&p->txv, sizeof vh + sizeof ch.fd_seq);
			ferry_ec_notify(&p->txd->data_ec);
			ferry__port_wake_fd(p);
			spill_put_back(pl.spill);
			plan_fini(p, &pl);
			return ferry__fail(rc, "ferry_port_post: passing %u fds failed: %s", ch.nfds,
					   ferry_strerror(rc));
		}
	}
	struct wire_hdr wh = { .kind = WIRE_CLONE };
	memcpy(w, &wh, sizeof wh);
	memcpy(w + sizeof wh, &ch, sizeof ch);
	if (nh)
		memcpy(w + sizeof wh + sizeof ch, pl.descs, nh * sizeof(struct handle_desc));
	if (pl.nstash)
		memcpy(w + sizeof wh + sizeof ch + nh * sizeof(struct handle_desc), pl.sdescs,
		       pl.nstash * sizeof(struct handle_desc));
	if (!spilled)
		write_body(w + head, &pl, cbor);
	ferry_ring_spsc_view_commit(&p->txv, rec_len);
	ferry_ec_notify(&p->txd->data_ec);
	ferry__port_wake_fd(p);
	if (rec_len >= FERRY_PREFETCH_MIN)
		ferry__port_prefetch_next(p, rec_len);

	/* Committed: now the moves take effect. */
	for (size_t i = 0; i < nh; i++) {
		if (!pl.transferred[i])
			continue;
		if (pl.table.items[i].kind == FERRY_VALUE_PORT)
			ferry__port_detach(pl.table.items[i].handle);
		else
			ferry__buf_detach(pl.table.items[i].handle);
	}
	plan_fini(p, &pl);
	return 0;
}

/* ---- receive ---- */

static void close_fds(int *fds, unsigned n)
{
	for (unsigned i = 0; i < n; i++)
		if (fds[i] >= 0) {
			close(fds[i]);
			fds[i] = -1;
		}
}

/*
 * Collect the @n fds of the record with sequence @seq from the control
 * socket; they were queued before the record was committed. Each batch is
 * looked at (MSG_PEEK) before it is taken: wakes, junk and stale or
 * impossible batches are dropped; a batch of a newer sequence is left
 * queued for its own record, so a record that lies about its fds fails
 * alone. On failure every fd taken so far is closed.
 */
static int recv_fds(ferry_port *p, uint64_t seq, int *fds, unsigned n)
{
	unsigned got = 0, index = 0, dropped = 0;
	int rc = 0;
	while (got < n) {
		unsigned want = n - got < FERRY_FDS_MAX ? n - got : FERRY_FDS_MAX;
		/* The stash first: what it holds came off the socket ahead of
		 * everything still queued there (ports/port.c stash_take). */
		struct fd_stash st;
		int s = ferry__port_stash_pop(p, seq, &st, &dropped);
		if (s < 0) {
			rc = ferry__fail(-EBADMSG, "ferry_port_recv: %u fds announced, %u arrived", n, got);
			break;
		}
		if (s > 0) {
			if (st.index != index || st.count != st.nfds || st.nfds != want) {
				close_fds(st.fds, st.nfds);
				rc = ferry__fail(-EBADMSG,
						 "ferry_port_recv: fd batch (seq %llu, index %u, %u fds) does not match the message (seq %llu, index %u, %u fds)",
						 (unsigned long long)st.seq, st.index, st.nfds, (unsigned long long)seq, index, want);
				break;
			}
			memcpy(fds + got, st.fds, st.nfds * sizeof *st.fds);
			got += st.nfds;
			index++;
			continue;
		}
		if (dropped > FERRY_CTL_DROP_MAX) {
			rc = ferry__fail(-EBADMSG, "ferry_port_recv: more than %d stray packets on the control socket",
					 FERRY_CTL_DROP_MAX);
			break;
		}
		struct fd_batch bh;
		enum ctl_head h = ferry__port_ctl_peek(p, &bh);
		if (h == CTL_WAKE || h == CTL_JUNK ||
		    (h == CTL_BATCH && bh.seq != seq &&
		     (bh.seq < seq || ferry__port_batch_stale(p, bh.seq)))) {
			if (++dropped > FERRY_CTL_DROP_MAX) {
				rc = ferry__fail(-EBADMSG, "ferry_port_recv: more than %d stray packets on the control socket",
						 FERRY_CTL_DROP_MAX);
				break;
			}
			ferry__port_ctl_drop(p);
			continue;
		}
		if (h != CTL_BATCH || bh.seq != seq) {
			/* Nothing more, or the next message's batch: leave it queued. */
			rc = ferry__fail(-EBADMSG, "ferry_port_recv: %u fds announced, %u arrived", n, got);
			break;
		}
		unsigned k = 0;
		/* Take the whole batch, whatever it holds, so that all of it is closed
		 * if it is not what the record needs. */
		int tmp[FERRY_FDS_MAX];
		rc = ferry_fds_recv(p->sock, &bh, sizeof bh, tmp, FERRY_FDS_MAX, &k, 0);
		if (rc) {
			rc = ferry__fail(rc == -EPIPE || rc == -EAGAIN ? -EBADMSG : rc,
					 "ferry_port_recv: receiving the message's fds: %s", ferry_strerror(rc));
			break;
		}
		if (bh.seq != seq || bh.index != index || bh.count != k || k != want) {
			close_fds(tmp, k);
			rc = ferry__fail(-EBADMSG,
					 "ferry_port_recv: fd batch (seq %llu, index %u, %u fds) does not match the message (seq %llu, index %u, %u fds)",
					 (unsigned long long)bh.seq, bh.index, k, (unsigned long long)seq, index, want);
			break;
		}
		memcpy(fds + got, tmp, k * sizeof *tmp);
		got += k;
		index++;
	}
	if (rc)
		close_fds(fds, got);
	return rc;
}

static void free_handles(struct msg_handle *hs, size_t n)
{
	for (size_t i = 0; i < n; i++) {
		if (hs[i].kept || !hs[i].handle)
			continue;
		if (hs[i].kind == FERRY_VALUE_PORT)
			ferry_port_destroy(hs[i].handle);
		else
			ferry_buf_free(hs[i].handle);
	}
}

/* Handles (and stashed batches) a receive keeps its tables for on the stack. */
#define RECV_FEW 8

int ferry__msg_decode(ferry_port *p, const unsigned char *rec, size_t len, ferry_msg **out)
{
	struct clone_hdr ch;
	if (len < sizeof ch)
		return ferry__fail(-EBADMSG, "ferry_port_recv: clone record of %zu bytes is truncated", len);
	/* Read every shared field once into private memory, then validate the copy. */
	memcpy(&ch, rec, sizeof ch);
	rec += sizeof ch;
	len -= sizeof ch;
	int fds[MAX_FDS];
	unsigned nfds = ch.nfds <= MAX_FDS ? ch.nfds : 0;
	/* Only the first nfds are ever used (8 KiB of -1 per message was a
	 * measurable part of a small message's cost). */
	for (unsigned i = 0; i < nfds; i++)
		fds[i] = -1;
	int rc = 0;
	struct handle_desc *descs = NULL;
	struct msg_handle *hs = NULL;
	struct ferry_clone_handle *table = NULL;
	ferry_seg *spill = NULL;
	ferry_seg *own = NULL; /* the sender's segment, read in place (spill_own) */
	ferry_seg *in_place = NULL; /* own, or a zero-copy port's mapping of the spill */
	int hand = 0;          /* hand its big inline buffers over */
	ferry_msg *m = NULL;

	/* Take the fds off the socket first, whatever follows, so that a bad
	 * record does not leave them queued ahead of the next message's. */
	if (ch.nfds > MAX_FDS)
		return ferry__fail(-EBADMSG, "ferry_port_recv: %u fds announced (most %d)", ch.nfds, MAX_FDS);
	if (nfds) {
		rc = recv_fds(p, ch.fd_seq, fds, nfds);
		/* This record's sequence is read, good or not: what is left of
		 * its batches, and anything older, is stale. */
		if (ch.fd_seq > p->fd_seq_rx)
			p->fd_seq_rx = ch.fd_seq;
		if (rc)
			return rc;
	}

	if (ch.nhandles > FERRY_MSG_MAX_HANDLES) {
		rc = ferry__fail(-EBADMSG, "ferry_port_recv: %u handles announced (most %d)", ch.nhandles,
				 FERRY_MSG_MAX_HANDLES);
		goto fail;
	}
	/* Each stashed batch that travels holds an fd at least. */
	if (ch.nstash > nfds || (ch.nstash && !ch.nhandles)) {
		rc = ferry__fail(-EBADMSG, "ferry_port_recv: %u stashed fd batches with %u fds and %u handles",
				 ch.nstash, nfds, ch.nhandles);
		goto fail;
	}
	size_t ndescs = (size_t)ch.nhandles + ch.nstash;
	size_t dlen = ndescs * sizeof *descs;
	if (dlen > len) {
		rc = ferry__fail(-EBADMSG, "ferry_port_recv: %zu handle descriptors overrun the record", ndescs);
		goto fail;
	}
	/* No tables for the common message without handles; for a few
	 * handles, the two that live only through this call are on the stack
	 * and the one the message keeps is part of the message (a clone of one
	 * small buffer took 5 mallocs here, a third of its cost). */
	struct handle_desc descs_st[RECV_FEW];
	struct ferry_clone_handle table_st[RECV_FEW];
	if (ch.nhandles) {
		descs = ndescs <= RECV_FEW ? descs_st : malloc(dlen);
		table = ch.nhandles <= RECV_FEW ? table_st : malloc(ch.nhandles * sizeof *table);
		m = calloc(1, sizeof *m + ch.nhandles * sizeof *hs);
		if (!descs || !table || !m) {
			rc = ferry__fail(-ENOMEM, "ferry_port_recv: out of memory");
			goto fail;
		}
		hs = (struct msg_handle *)(void *)m->data;
		memset(table, 0, ch.nhandles * sizeof *table);
		memcpy(descs, rec, dlen);
	}
	rec += dlen;
	len -= dlen;

	/* The fds the descriptors need, in order, must add up to what came. */
	unsigned need = 0;
	for (uint32_t i = 0; i < ch.nhandles; i++) {
		if (descs[i].type < H_BUF_INLINE || descs[i].type > H_PORT) {
			rc = ferry__fail(-EBADMSG, "ferry_port_recv: handle %u has unknown type %u", i, descs[i].type);
			goto fail;
		}
		need += fds_of(descs[i].type);
	}
	for (size_t i = ch.nhandles; i < ndescs; i++) {
		const struct handle_desc *d = &descs[i];
		unsigned k = (unsigned)(d->off & 0xffff);
		if (d->type != H_STASH || d->pad >= ch.nhandles || descs[d->pad].type != H_PORT ||
		    k > FERRY_FDS_MAX) {
			rc = ferry__fail(-EBADMSG, "ferry_port_recv: stashed fd batch %zu is malformed",
					 i - ch.nhandles);
			goto fail;
		}
		need += k;
	}
	int spilled = (ch.flags & CLONE_SPILLED) != 0;
	if (ch.flags & ~CLONE_SPILLED) {
		rc = ferry__fail(-EBADMSG, "ferry_port_recv: unknown clone flags 0x%x", ch.flags);
		goto fail;
	}
	if (need + (unsigned)spilled != nfds) {
		rc = ferry__fail(-EBADMSG, "ferry_port_recv: the handles need %u fds, the message has %u",
				 need + spilled, nfds);
		goto fail;
	}
	if (ch.body_len > p->max_message) {
		/* A message this port refuses is a messageerror like any other. */
		rc = ferry__fail(-EBADMSG, "ferry_port_recv: a %llu-byte message exceeds max_message %zu",
				 (unsigned long long)ch.body_len, p->max_message);
		goto fail;
	}

	const unsigned char *body;
	if (spilled) {
		if (len != 0) {
			rc = ferry__fail(-EBADMSG, "ferry_port_recv: spilled message with %zu stray bytes", len);
			goto fail;
		}
		int fd = fds[nfds - 1];
		fds[nfds - 1] = -1;
		if (ch.body_len > FERRY_BUF_MAX) {
			close(fd);
			rc = ferry__fail(-EBADMSG, "ferry_port_recv: spilled body of %llu bytes",
					 (unsigned long long)ch.body_len);
			goto fail;
		}
		uint64_t id = 0;
		rc = fd_id(fd, &id);
		if (rc) {
			close(fd);
			rc = ferry__errno(rc, "ferry_port_recv: fstat of a spilled message");
			goto fail;
		}
		own = own_take(p, id, SPILL_HDR + ch.body_len);
		if (own) {
			close(fd); /* the sender's own mapping serves */
			spill = own;
		} else if ((rc = spill_map(p, fd, id, ch.body_len, &spill)) != 0) {
			goto fail;
		}
		body = (const unsigned char *)ferry_seg_data(spill) + SPILL_HDR;
	} else {
		if (ch.body_len != len) {
			rc = ferry__fail(-EBADMSG, "ferry_port_recv: body of %llu bytes in a record with %zu",
					 (unsigned long long)ch.body_len, len);
			goto fail;
		}
		body = rec;
	}
	if (ch.cbor_len > ch.body_len) {
		rc = ferry__fail(-EBADMSG, "ferry_port_recv: CBOR length %llu past the body (%llu)",
				 (unsigned long long)ch.cbor_len, (unsigned long long)ch.body_len);
		goto fail;
	}

	/* A spill from another process is handed over in place only on a port
	 * that trusts its peer with it (ferry_port_set_zero_copy). */
	in_place = own ? own : spilled && p->zero_copy ? spill : NULL;
	if (in_place) {
		/* In place only when the big buffers are most of the body: each
		 * one handed out keeps the whole segment. */
		uint64_t big = 0;
		for (uint32_t i = 0; i < ch.nhandles; i++)
			if (descs[i].type == H_BUF_INLINE && descs[i].len >= HAND_MIN)
				big += descs[i].len;
		hand = big >= ch.body_len / 2;
	}

	unsigned fi = 0;
	for (uint32_t i = 0; i < ch.nhandles; i++) {
		struct handle_desc *d = &descs[i];
		ferry_seg *seg = NULL;
		ferry_buf *b = NULL;
		switch (d->type) {
		case H_BUF_INLINE:
			if (d->off < ch.cbor_len || d->off > ch.body_len || d->len > ch.body_len - d->off) {
				rc = ferry__fail(-EBADMSG, "ferry_port_recv: inline buffer %u at [%llu, +%llu) outside the body",
						 i, (unsigned long long)d->off, (unsigned long long)d->len);
				goto fail;
			}
			if (hand && d->len >= HAND_MIN) {
				/* Another process's segment: the sender must not
				 * reuse it while the buffer lives (spill_take). */
				_Atomic uint32_t *hold =
					own ? NULL : &((struct spill_hdr *)ferry_seg_data(spill))->holds;
				if (hold)
					/* relaxed: published by the release of busy below */
					atomic_fetch_add_explicit(hold, 1, memory_order_relaxed);
				rc = ferry__buf_from_seg_at(&b, ferry_seg_ref(in_place),
							    (unsigned char *)(uintptr_t)(body + d->off),
							    d->len, hold);
				if (rc) {
					ferry_seg_unref(in_place);
					if (hold)
						atomic_fetch_sub_explicit(hold, 1, memory_order_relaxed);
				}
			} else {
				rc = ferry__buf_from_bytes(&b, body + d->off, d->len);
			}
			hs[i].kind = FERRY_VALUE_BUF;
			hs[i].handle = b;
			break;
		case H_BUF_SEG:
		case H_SHARED:
			if (d->len > FERRY_BUF_MAX) {
				rc = ferry__fail(-EBADMSG, "ferry_port_recv: buffer %u of %llu bytes", i,
						 (unsigned long long)d->len);
				goto fail;
			}
			if (d->type == H_SHARED) {
				/* A mapping this process has already is reused. */
				rc = ferry__buf_import_shared(&b, fds[fi], d->len);
				fds[fi++] = -1;
				hs[i].kind = FERRY_VALUE_SHARED;
				hs[i].handle = b;
				break;
			}
			rc = ferry_seg_import(&seg, fds[fi], d->len ? d->len : 1);
			fds[fi++] = -1;
			if (rc == 0) {
				rc = ferry__buf_from_seg(&b, seg, d->len, d->type == H_SHARED);
				if (rc)
					ferry_seg_unref(seg);
			}
			hs[i].kind = d->type == H_SHARED ? FERRY_VALUE_SHARED : FERRY_VALUE_BUF;
			hs[i].handle = b;
			break;
		case H_PORT: {
			ferry_port *q = NULL;
			if (d->len > 1) {
				rc = ferry__fail(-EBADMSG, "ferry_port_recv: port %u names side %llu", i,
						 (unsigned long long)d->len);
				goto fail;
			}
			rc = ferry__port_import(&q, fds[fi], fds[fi + 1], (uint32_t)d->len);
			fds[fi] = fds[fi + 1] = -1;
			fi += 2;
			hs[i].kind = FERRY_VALUE_PORT;
			hs[i].handle = q;
			break;
		}
		}
		if (rc)
			goto fail;
		table[i].kind = hs[i].kind;
		table[i].handle = hs[i].handle;
	}
	/* The batches the ports had stashed go back into their stashes. */
	for (size_t i = ch.nhandles; i < ndescs; i++) {
		const struct handle_desc *d = &descs[i];
		struct fd_stash st = {
			.seq = d->len,
			.index = (uint32_t)(d->off >> 32),
			.count = (uint32_t)(d->off >> 16) & 0xffff,
			.nfds = (unsigned)(d->off & 0xffff),
		};
		memcpy(st.fds, fds + fi, st.nfds * sizeof *fds);
		if (ferry__port_stash_push(hs[d->pad].handle, &st)) {
			rc = ferry__fail(-EBADMSG, "ferry_port_recv: a transferred port brings more than %d stashed fd batches",
					 FERRY_STASH_MAX);
			goto fail;
		}
		for (unsigned k = 0; k < st.nfds; k++)
			fds[fi++] = -1;
	}

	if (!m && !(m = calloc(1, sizeof *m))) {
		rc = ferry__fail(-ENOMEM, "ferry_port_recv: out of memory");
		goto fail;
	}
	struct ferry_clone_decode_opts dopts = { .handles = table, .nhandles = ch.nhandles };
	rc = ferry_clone_decode(body, ch.cbor_len, &dopts, &m->value);
	if (rc) {
		/* messageerror: this message is consumed, the next one is fine. */
		rc = ferry__fail(rc, "ferry_port_recv: the message does not decode (consumed): %s",
				 ferry_errmsg());
		goto fail;
	}
	m->handles = hs;
	m->nhandles = ch.nhandles;
	spill_release(spill);
	ferry_seg_unref(own);
	if (descs != descs_st)
		free(descs);
	if (table != table_st)
		free(table);
	*out = m;
	return 0;

fail:
	if (hs)
		free_handles(hs, ch.nhandles <= FERRY_MSG_MAX_HANDLES ? ch.nhandles : 0);
	close_fds(fds, nfds);
	spill_release(spill);
	ferry_seg_unref(own);
	if (descs != descs_st)
		free(descs);
	if (table != table_st)
		free(table);
	free(m); /* hs with it */
	return rc;
}

/* ---- the message ---- */

FERRY_API const ferry_value *ferry_msg_value(const ferry_msg *m)
{
	return m ? m->value : NULL;
}

FERRY_API ferry_value *ferry_msg_take_value(ferry_msg *m)
{
	if (!m)
		return NULL;
	ferry_value *v = m->value;
	m->value = NULL;
	return v;
}

FERRY_API int ferry_msg_keep(ferry_msg *m, const void *handle)
{
	if (!m || !handle)
		return ferry__fail(-EINVAL, "ferry_msg_keep: %s is NULL", !m ? "msg" : "handle");
	for (size_t i = 0; i < m->nhandles; i++)
		if (m->handles[i].handle == handle) {
			m->handles[i].kept = 1;
			return 0;
		}
	return ferry__fail(-ENOENT, "ferry_msg_keep: the handle did not come with this message");
}

FERRY_API size_t ferry_msg_nports(const ferry_msg *m)
{
	size_t n = 0;
	for (size_t i = 0; m && i < m->nhandles; i++)
		n += m->handles[i].kind == FERRY_VALUE_PORT;
	return n;
}

FERRY_API ferry_port *ferry_msg_port(const ferry_msg *m, size_t i)
{
	for (size_t k = 0; m && k < m->nhandles; k++)
		if (m->handles[k].kind == FERRY_VALUE_PORT && i-- == 0)
			return m->handles[k].handle;
	return NULL;
}

FERRY_API void ferry_msg_free(ferry_msg *m)
{
	if (!m)
		return;
	if (m->handles) {
		free_handles(m->handles, m->nhandles); /* the array is part of m */
	}
	ferry_value_free(m->value);
	free(m);
}
