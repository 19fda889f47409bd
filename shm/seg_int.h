/* shm/seg_int.h - internal: segment hooks for ports/. */
#ifndef FERRY_SEG_INT_H
#define FERRY_SEG_INT_H

#include "ferry/seg.h"

/* The number of references @seg has now (a snapshot: only meaningful when
 * the caller knows who may take new ones). */
unsigned ferry__seg_refs(const ferry_seg *seg);

#endif
