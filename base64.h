/* base64.h -- the base64 decoder of image values ({"type": "base64"}), exported on its own
 * so the fuzzer (tests/fuzz/fuzz_http.c) drives exactly the code the API runs. */
#ifndef CLIP_BASE64_H
#define CLIP_BASE64_H

#include <stddef.h>
#include <stdint.h>

/* The lenient decoding Python's base64.b64decode does. Decodes `len` characters: an
 * optional "data:...;base64," prefix is stripped, whitespace skipped, padding optional.
 * The decoded size is computed (and checked against max_out) before anything is
 * allocated. Returns 0 with a malloc'd *out, or -1 with *why. */
int clip_base64_decode(const char *in, size_t len, size_t max_out, uint8_t **out,
                       size_t *out_len, const char **why);

#endif /* CLIP_BASE64_H */
