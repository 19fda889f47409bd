/* Error names and the per-thread detailed message. */
#include "shm/err.h"

#include <errno.h>
#include <stdarg.h>
#include <stdio.h>
#include <string.h>
#include <time.h>

#define MSG_CAP 512

static _Thread_local char last_msg[MSG_CAP];

FERRY_API const char *ferry_version(void)
{
	return FERRY_VERSION_STRING;
}

FERRY_API int ferry_version_number(void)
{
	return FERRY_VERSION_NUMBER;
}

FERRY_API const char *ferry_strerror(int err)
{
	switch (err) {
	case 0:
		return "success";
	case FERRY_ENOTCLONEABLE:
		return "value cannot be cloned";
	case FERRY_EDETACHED:
		return "buffer or port is detached (transferred away)";
	case FERRY_EVERSION:
		return "shared layout version mismatch";
	case FERRY_EWORKER:
		return "worker failed";
	}
	if (err < 0 && err > -4096) {
		/* strerrordesc_np is static and thread-safe (glibc >= 2.32). */
		const char *s = strerrordesc_np(-err);
		if (s)
			return s;
	}
	return "unknown error";
}

FERRY_API const char *ferry_errmsg(void)
{
	return last_msg;
}

static void vrecord(const char *fmt, va_list ap, int err, int with_errno)
{
	int n = vsnprintf(last_msg, MSG_CAP, fmt, ap);
	if (with_errno && n >= 0 && n < MSG_CAP)
		snprintf(last_msg + n, MSG_CAP - (size_t)n, ": %s", ferry_strerror(err));
}

int ferry__fail(int err, const char *fmt, ...)
{
	va_list ap;
	va_start(ap, fmt);
	vrecord(fmt, ap, err, 0);
	va_end(ap);
	return err;
}

int ferry__errno(int err, const char *fmt, ...)
{
	va_list ap;
	va_start(ap, fmt);
	vrecord(fmt, ap, err, 1);
	va_end(ap);
	return err;
}

int64_t ferry__now_ns(void)
{
	struct timespec ts;
	clock_gettime(CLOCK_MONOTONIC, &ts);
	return (int64_t)ts.tv_sec * 1000000000 + ts.tv_nsec;
}
