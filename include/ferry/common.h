/**
 * @file
 * @brief Version, export macro, error convention.
 *
 * Every fallible call returns 0 (or a non-negative count) on success and a
 * negative code on failure: a negative errno (-EINVAL, -EAGAIN, -ETIMEDOUT,
 * -EPIPE, -EMSGSIZE, -ENOMEM, -EBADMSG, -EPROTO, ...) or one of the library
 * codes below, which sit under FERRY_EBASE so they never collide with errno.
 * No call prints, aborts or exits on bad input.
 *
 * ferry_strerror() names any code; ferry_errmsg() gives the calling thread's
 * detailed message of its most recent failed call ("size 0: a segment needs
 * at least one byte"). A successful call leaves the message as it was.
 */
#ifndef FERRY_COMMON_H
#define FERRY_COMMON_H

#include <stddef.h>
#include <stdint.h>

#ifdef __cplusplus
extern "C" {
#endif

#define FERRY_VERSION_MAJOR 0 /**< major version of these headers */
#define FERRY_VERSION_MINOR 1 /**< minor version of these headers */
#define FERRY_VERSION_PATCH 0 /**< patch level of these headers */
#define FERRY_VERSION_STRING "0.1.0" /**< the version of these headers as a string */
/** (major << 16) | (minor << 8) | patch, comparable with <, > */
#define FERRY_VERSION_NUMBER \
	((FERRY_VERSION_MAJOR << 16) | (FERRY_VERSION_MINOR << 8) | FERRY_VERSION_PATCH)

/** Marks an exported function (the library builds with -fvisibility=hidden). */
#if defined(FERRY_BUILDING) || defined(__GNUC__)
#define FERRY_API __attribute__((visibility("default")))
#else
#define FERRY_API
#endif

/** Library error codes are all below this (never an errno). */
#define FERRY_EBASE (-1000)
#define FERRY_ENOTCLONEABLE (-1001) /**< a value that cannot be cloned */
#define FERRY_EDETACHED (-1002)     /**< a buffer or port that was transferred away */
#define FERRY_EVERSION (-1003)      /**< shared layout of another version */
#define FERRY_EWORKER (-1004)       /**< a worker failed or ended abnormally */
#define FERRY_ELAST (-1004)         /**< the last (lowest) library error code */

/** No deadline. Timeouts are int64_t nanoseconds: 0 = try once, never
 * block; negative (FERRY_FOREVER) = no deadline. */
#define FERRY_FOREVER ((int64_t)-1)

/** The library's version string, e.g. "0.1.0". */
FERRY_API const char *ferry_version(void);

/** FERRY_VERSION_NUMBER of the library actually loaded. */
FERRY_API int ferry_version_number(void);

/**
 * A short, static description of an error code.
 *
 * @param err a negative errno or a FERRY_E* code; 0 gives "success".
 * @return the description; never NULL. Thread-safe.
 */
FERRY_API const char *ferry_strerror(int err);

/**
 * The calling thread's detailed message for its most recent failed ferry
 * call, or "" if none failed yet.
 *
 * @return the message, valid until the thread's next ferry call; copy it to
 *   keep it.
 */
FERRY_API const char *ferry_errmsg(void);

#ifdef __cplusplus
}
#endif
#endif /* FERRY_COMMON_H */
