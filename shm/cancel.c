/* Cancellation points: see shm/cancel.h. */
#include "shm/cancel.h"

#include <stddef.h>

_Thread_local atomic_int *ferry__cancel_flag;
void (*ferry__cancel_handler)(void);
