/* http.h -- HTTP/1.1 on buffers: the request-head parser, the chunked body decoder, the
 * query parameter decoder, the head of a JSON answer, and the head of a response received
 * (for the URL client). No sockets: the server (server.c) reads and writes, this only
 * parses and formats, so the fuzzer drives exactly the code the server runs. */
#ifndef CLIP_HTTP_H
#define CLIP_HTTP_H

#include "json.h"

#include <stddef.h>
#include <stdint.h>

/* ---------------------------------------------------------------------------------------
 * Requests
 * ------------------------------------------------------------------------------------- */

#define CLIP_HTTP_MAX_HEAD    16384   /* request line + headers; more is 431             */
#define CLIP_HTTP_MAX_HEADERS 100     /* header fields per request; more is 431          */

/* What the server needs from a request head. Pointers point into the parsed buffer. */
typedef struct clip_http_head {
    const char *method;  size_t method_len;
    const char *target;  size_t target_len;   /* origin-form: path and query          */
    int minor;                                 /* HTTP/1.minor                         */
    int has_length;      uint64_t length;      /* Content-Length (saturates)           */
    int chunked;                               /* Transfer-Encoding: chunked           */
    int keep_alive;                            /* after Connection and the version     */
    int expect_continue;                       /* Expect: 100-continue                 */
    const char *authorization; size_t authorization_len;
    const char *origin;  size_t origin_len;
} clip_http_head;

/* Parses one request head at the start of buf. Returns its length in bytes (> 0) when
 * complete, 0 when more bytes are needed, -1 when the request is malformed: then *status
 * is the answer (400, 431, 501, 505, 417) and *why a short reason. */
long clip_http_parse_head(const char *buf, size_t len, clip_http_head *head, int *status,
                          const char **why);

/* Incremental decoder of a chunked body (RFC 9112 section 7.1). Zero-initialise it. */
typedef struct clip_http_chunked {
    int state;
    uint64_t size;         /* bytes left in the current chunk                          */
    unsigned digits;       /* hex digits read of the current size                      */
    size_t line;           /* bytes of the current extension or trailer line           */
    size_t trailers;       /* bytes of trailer section so far                          */
} clip_http_chunked;

/* Consumes bytes of in[0, len), appending the decoded data to out (never more than
 * max_body bytes in all). *used is set to the bytes consumed. Returns 1 when the body is
 * complete, 0 when it needs more input, -1 on error (*status 400 or 413, *why). */
int clip_http_chunked_feed(clip_http_chunked *c, const char *in, size_t len, size_t *used,
                           clip_buf *out, size_t max_body, int *status, const char **why);

/* The value of the query parameter `name` in query[0, n) (after the '?'), decoded
 * (%XX and '+') into out, at most out_size bytes; 1 when present, with *out_len. */
int clip_http_query_param(const char *query, size_t n, const char *name, char *out,
                          size_t out_size, size_t *out_len);

/* ---------------------------------------------------------------------------------------
 * Responses
 * ------------------------------------------------------------------------------------- */

/* An answer to write: its status, its JSON body, and the methods an Allow header lists
 * (405, OPTIONS; NULL for none). */
typedef struct clip_http_response {
    int status;
    clip_buf body;
    const char *allow;
} clip_http_response;

const char *clip_http_status_text(int status);   /* "OK", "Not Found", ... */

/* Appends the status line and headers of the JSON answer r (HTTP/1.minor): its
 * Content-Length, Allow, Retry-After for 503, the CORS headers when cors is "*" or equals
 * the request's origin, and Connection as keep_alive and the version need; then the empty
 * line. The body is the caller's to send (or not, for HEAD). */
void clip_http_write_head(clip_buf *out, int minor, const clip_http_response *r,
                          int keep_alive, const char *cors, const char *origin,
                          size_t origin_len);

/* The head of a response received (the URL client's, fetch.c): what it needs of it. */
typedef struct clip_http_response_head {
    int status;
    int chunked;               /* Transfer-Encoding: chunked (anything else is refused)  */
    int has_length;      uint64_t length;
    char location[4096];       /* Location, NUL-terminated ("" when absent)               */
} clip_http_response_head;

/* Parses a complete response head buf[0, n) (status line to the empty line). Returns 0,
 * or -1 when it is malformed or a field is not understood. */
int clip_http_parse_response_head(const char *buf, size_t n, clip_http_response_head *h);

/* ---------------------------------------------------------------------------------------
 * Tokens
 * ------------------------------------------------------------------------------------- */

/* s[0, n) equals the NUL-terminated lowercase word w, ignoring ASCII case: how HTTP
 * compares field names, schemes and tokens. */
int clip_http_eq_nocase(const char *s, size_t n, const char *w);

#endif /* CLIP_HTTP_H */
