/* shm/ring_int.c - ring calls for ferry's own layers (see shm/ring_int.h). */
#include "shm/ring_int.h"
#include "shm/err.h"

#include <errno.h>

int ferry__ring_spsc_view_cancel(struct ferry_ring_spsc_view *v)
{
	if (!v || !v->ring || !v->capacity)
		return ferry__fail(-EINVAL, "ferry__ring_spsc_view_cancel: v is NULL or not set up by ferry_ring_spsc_view_init");
	if (!v->resv)
		return ferry__fail(-EINVAL, "ferry__ring_spsc_view_cancel: no reservation is open");
	/* The producer's reservation lives in the view alone (ferry/ring.h):
	 * a reserve publishes nothing, so there is nothing shared to undo. */
	v->resv = 0;
	return 0;
}
