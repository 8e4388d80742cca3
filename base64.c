/* base64.c -- base64 decoding of image values, one table lookup per character.
 *
 * Lives here: clip_base64_decode, the only function, and its table. It must not touch
 * anything else: no HTTP, no JSON, no images -- bytes in, bytes out, under a size limit
 * checked before the output is allocated. The API (api.c) calls it on the image values of
 * a request; the fuzzer calls it directly. */
#include "base64.h"

#include <stdlib.h>
#include <strings.h>

/* Each byte's meaning in base64, in one table lookup: 1 + the digit's value, B64_SPACE for
 * whitespace (skipped, as line-wrapped base64 has it), B64_PAD for '=', 0 for anything else.
 * A request's image is 200 KB to 30 MB of base64, so the decoder is one pass over it. */
enum { B64_SPACE = 65, B64_PAD = 66 };

#define B64_DIGITS(c0, v0) [c0] = v0 + 1, [c0 + 1] = v0 + 2, [c0 + 2] = v0 + 3, [c0 + 3] = v0 + 4
static const unsigned char b64_table[256] = {
    B64_DIGITS('A', 0), B64_DIGITS('E', 4), B64_DIGITS('I', 8), B64_DIGITS('M', 12),
    B64_DIGITS('Q', 16), B64_DIGITS('U', 20), ['Y'] = 25, ['Z'] = 26,
    B64_DIGITS('a', 26), B64_DIGITS('e', 30), B64_DIGITS('i', 34), B64_DIGITS('m', 38),
    B64_DIGITS('q', 42), B64_DIGITS('u', 46), ['y'] = 51, ['z'] = 52,
    B64_DIGITS('0', 52), B64_DIGITS('4', 56), ['8'] = 61, ['9'] = 62, ['+'] = 63, ['/'] = 64,
    [' '] = B64_SPACE, ['\t'] = B64_SPACE, ['\n'] = B64_SPACE, ['\r'] = B64_SPACE,
    ['\f'] = B64_SPACE, ['\v'] = B64_SPACE, ['='] = B64_PAD,
};
#undef B64_DIGITS

int clip_base64_decode(const char *in, size_t len, size_t max_out, uint8_t **out,
                       size_t *out_len, const char **why)
{
    const unsigned char *s = (const unsigned char *)in;
    *out = NULL;
    *out_len = 0;
    if (len >= 5 && strncasecmp(in, "data:", 5) == 0) {
        /* data:[<mediatype>][;params];base64,<data> -- the media type is bounded so a
         * missing comma cannot make us scan a 30 MB string twice for nothing. */
        size_t limit = len < 256 ? len : 256, comma = 5;
        while (comma < limit && s[comma] != ',') comma++;
        if (comma == limit || comma < 12 || strncasecmp(in + comma - 7, ";base64", 7) != 0) {
            *why = "Malformed base64 input image.";
            return -1;
        }
        s += comma + 1;
        len -= comma + 1;
    }
    /* At most 3 bytes per 4 digits; the input is inside a request body, so this bound is
     * too (max_out is checked on the real size at the end). */
    size_t bound = len / 4 * 3 + 2;
    uint8_t *o = malloc(bound);
    if (!o) {
        *why = "Out of memory decoding base64 input image.";
        return -1;
    }
    uint32_t acc = 0;
    size_t digits = 0, pads = 0, k = 0;
    for (size_t i = 0; i < len; i++) {
        unsigned v = b64_table[s[i]];
        if (v - 1 < 64 && !pads) {
            acc = acc << 6 | (v - 1);
            if (++digits % 4 == 0) {
                o[k++] = (uint8_t)(acc >> 16);
                o[k++] = (uint8_t)(acc >> 8);
                o[k++] = (uint8_t)acc;
            }
        } else if (v == B64_PAD) {
            pads++;
        } else if (v != B64_SPACE) {   /* not base64, or data after the padding */
            free(o);
            *why = "Malformed base64 input image.";
            return -1;
        }
    }
    /* a last group of 2 or 3 digits holds 1 or 2 bytes; padding, when present, fills it */
    if (digits % 4 == 2) o[k++] = (uint8_t)(acc >> 4);
    if (digits % 4 == 3) {
        o[k++] = (uint8_t)(acc >> 10);
        o[k++] = (uint8_t)(acc >> 2);
    }
    if (digits % 4 == 1 || pads > 2 || (pads && (digits + pads) % 4 != 0 && digits % 4 == 0)) {
        free(o);
        *why = "Malformed base64 input image.";
        return -1;
    }
    if (k == 0) {
        free(o);
        *why = "Empty base64 input image.";
        return -1;
    }
    if (k > max_out) {
        free(o);
        *why = "Decoded base64 input image is larger than the body limit.";
        return -1;
    }
    *out = o;
    *out_len = k;
    return 0;
}
