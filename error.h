/* error.h -- how every file of the library reports a failure (error.c).
 *
 * A function that fails returns a clip_status and, when the caller passed a clip_error,
 * a one-line reason in it (clip.h). This file is the one thing every room of the engine
 * shares, so that none of them needs another to say what went wrong. */
#ifndef CLIP_ERROR_H
#define CLIP_ERROR_H

#include "clip.h"

/* Formats a one-line reason into err (when not NULL) and returns code. */
clip_status clip_fail(clip_error *err, clip_status code, const char *fmt, ...)
    __attribute__((format(printf, 3, 4)));

#endif
