/* fuzz_http.c -- libFuzzer harness for the server's request parsing (http.c,
 * base64.c): the request head parser, the chunked body decoder, and the base64 decoder of
 * image values.
 *
 *   clang-14 -g -O1 -fsanitize=fuzzer,address,undefined -D_GNU_SOURCE -I. \
 *       tests/fuzz/fuzz_http.c http.c base64.c json.c \
 *       -o /tmp/fuzz_http -lopenblas -lstb -lm -pthread
 *   nice /tmp/fuzz_http -max_total_time=180 tests/fuzz/corpus/http
 *
 * The input is what a client sends on one connection: requests are parsed one after the
 * other as the server does (pipelining), bodies framed by Content-Length or chunked. The
 * invariants: every pointer the parser returns lies inside the head it parsed, no body
 * exceeds the limit, and the chunked decoder gives the same result (status, bytes, data)
 * whether its input arrives at once or split at an arbitrary point -- the server sees
 * arbitrary splits from the network. When the first byte is '#', the rest is a base64
 * image value instead: decoding must stay within the size it announced, and re-encoding
 * the output must decode back to the same bytes. */
#include "base64.h"
#include "http.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#define FUZZ_MAX_BODY 4096

static void require(int ok, const char *what)
{
    if (!ok) {
        fprintf(stderr, "invariant broken: %s\n", what);
        abort();
    }
}

static int inside(const char *p, size_t n, const char *buf, size_t len)
{
    return !p || (p >= buf && p + n <= buf + len);
}

/* Feeds the chunked decoder all at once, then split at `cut`, and compares. */
static long chunked_twice(const char *in, size_t len, size_t cut)
{
    clip_http_chunked a = {0}, b = {0};
    clip_buf out_a = {0}, out_b = {0};
    size_t used_a = 0, used_b1 = 0, used_b2 = 0;
    int st_a = 0, st_b = 0;
    const char *why_a = NULL, *why_b = NULL;
    int ra = clip_http_chunked_feed(&a, in, len, &used_a, &out_a, FUZZ_MAX_BODY, &st_a, &why_a);
    require(used_a <= len, "chunked consumed more than given");
    require(out_a.len <= FUZZ_MAX_BODY, "chunked body over the limit");
    if (cut > len) cut = len;
    int rb = clip_http_chunked_feed(&b, in, cut, &used_b1, &out_b, FUZZ_MAX_BODY, &st_b, &why_b);
    size_t used_b = used_b1;
    if (rb == 0) {
        require(used_b1 == cut, "chunked left input unconsumed while wanting more");
        rb = clip_http_chunked_feed(&b, in + cut, len - cut, &used_b2, &out_b, FUZZ_MAX_BODY,
                                    &st_b, &why_b);
        used_b += used_b2;
    }
    require(ra == rb, "chunked result depends on how the input was split");
    if (ra == 1) {
        require(used_a == used_b, "chunked end depends on the split");
        require(out_a.len == out_b.len && (out_a.len == 0 ||
                memcmp(out_a.data, out_b.data, out_a.len) == 0), "chunked data depends on the split");
    }
    if (ra < 0) require(st_a == st_b && (st_a == 400 || st_a == 413 || st_a == 431), "chunked error status");
    clip_buf_free(&out_a);
    clip_buf_free(&out_b);
    return ra == 1 ? (long)used_a : -1;
}

static void fuzz_base64(const char *in, size_t len)
{
    uint8_t *out = NULL;
    size_t n = 0;
    const char *why = NULL;
    if (clip_base64_decode(in, len, 1 << 20, &out, &n, &why) != 0) {
        require(out == NULL && why != NULL, "failed decode without a reason");
        return;
    }
    require(n > 0 && n <= len, "decoded size");
    static const char digits[] = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    char *enc = malloc((n + 2) / 3 * 4 + 1);
    size_t k = 0;
    for (size_t i = 0; i < n; i += 3) {
        uint32_t v = (uint32_t)out[i] << 16;
        if (i + 1 < n) v |= (uint32_t)out[i + 1] << 8;
        if (i + 2 < n) v |= out[i + 2];
        enc[k++] = digits[v >> 18];
        enc[k++] = digits[(v >> 12) & 63];
        enc[k++] = i + 1 < n ? digits[(v >> 6) & 63] : '=';
        enc[k++] = i + 2 < n ? digits[v & 63] : '=';
    }
    uint8_t *again = NULL;
    size_t m = 0;
    require(clip_base64_decode(enc, k, 1 << 20, &again, &m, &why) == 0, "re-encoded data refused");
    require(m == n && memcmp(again, out, n) == 0, "base64 round trip differs");
    free(again);
    free(enc);
    free(out);
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    const char *buf = (const char *)data;
    if (size > 0 && buf[0] == '#') {
        fuzz_base64(buf + 1, size - 1);
        return 0;
    }
    size_t pos = 0;
    for (int requests = 0; pos < size && requests < 64; requests++) {
        clip_http_head h;
        int status = 0;
        const char *why = NULL;
        const char *at = buf + pos;
        size_t avail = size - pos;
        long n = clip_http_parse_head(at, avail, &h, &status, &why);
        if (n < 0) {
            require(why != NULL && status >= 400 && status < 600, "error without status/reason");
            break;
        }
        if (n == 0) {
            require(avail < CLIP_HTTP_MAX_HEAD, "incomplete head over the limit not refused");
            break;
        }
        require((size_t)n <= avail && (size_t)n <= CLIP_HTTP_MAX_HEAD, "head length");
        require(h.method_len > 0 && inside(h.method, h.method_len, at, (size_t)n), "method");
        /* absolute-form without a path ("GET http://host HTTP/1.1") becomes the static "/" */
        require(h.target_len > 0 && (inside(h.target, h.target_len, at, (size_t)n) ||
                (h.target_len == 1 && h.target[0] == '/')), "target");
        require(inside(h.authorization, h.authorization_len, at, (size_t)n), "authorization");
        require(inside(h.origin, h.origin_len, at, (size_t)n), "origin");
        require(!(h.chunked && h.has_length), "both framings accepted");
        /* The same head parsed from an exact copy gives the same length (the server
         * re-parses a copy of the head before reading the body). */
        char *copy = malloc((size_t)n);
        memcpy(copy, at, (size_t)n);
        clip_http_head h2;
        require(clip_http_parse_head(copy, (size_t)n, &h2, &status, &why) == n, "re-parse of the head");
        free(copy);
        pos += (size_t)n;
        if (h.chunked) {
            size_t rest = size - pos;
            size_t cut = rest ? ((unsigned char)buf[pos] * 31u + size) % (rest + 1) : 0;
            long used = chunked_twice(buf + pos, rest, cut);
            if (used < 0) break;
            pos += (size_t)used;
        } else if (h.has_length) {
            if (h.length > size - pos) break;
            pos += (size_t)h.length;
        }
    }
    return 0;
}
