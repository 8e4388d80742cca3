/* error.c -- clip_fail, the one way the library reports a failure (error.h).
 *
 * It formats the reason into the caller's clip_error and returns the status, so that a
 * failure reads `return clip_fail(err, CLIP_ERR_ARG, "...", ...);`. It touches nothing but
 * the clip_error it is given: no printing, no global state. */

#include "error.h"

#include <stdarg.h>
#include <stdio.h>

clip_status clip_fail(clip_error *err, clip_status code, const char *fmt, ...)
{
    if (err) {
        va_list ap;
        va_start(ap, fmt);
        vsnprintf(err->msg, sizeof err->msg, fmt, ap);
        va_end(ap);
        err->code = code;
    }
    return code;
}
