/* ferry.h - the whole public API of ferry. */
#ifndef FERRY_H
#define FERRY_H

#include "ferry/common.h"
#include "ferry/seg.h"
#include "ferry/atomic.h"
#include "ferry/buf.h"
#include "ferry/ring.h"
#include "ferry/value.h"
#include "ferry/port.h"
#include "ferry/endpoint.h"
#include "ferry/worker.h"
#include "ferry/runtime.h"
#include "ferry/loop.h"
#include "ferry/pool.h"

#endif /* FERRY_H */
