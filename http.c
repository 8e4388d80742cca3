/* http.c -- HTTP/1.1 (RFC 9112) as the server speaks it, on buffers only.
 *
 * Lives here: the request-head parser, the chunked body decoder, the query parameter
 * decoder, the response head writer (status line and headers of a JSON answer), and the
 * parser of a response head for the URL client. Everything works on bytes already in
 * memory and says how many it consumed or needs, so the fuzzer (tests/fuzz/fuzz_http.c)
 * drives exactly the code the server runs. Must not touch: sockets, time, threads, the
 * routes or the models -- reading from the network and deciding what to answer belong to
 * server.c and api.c.
 */
#include "http.h"

#include "json.h"

#include <ctype.h>
#include <stdint.h>
#include <string.h>

/* =======================================================================================
 * Tokens: compared without regard to ASCII case
 * ===================================================================================== */

static int lower(int c) { return c >= 'A' && c <= 'Z' ? c + 32 : c; }

int clip_http_eq_nocase(const char *s, size_t n, const char *w)
{
    size_t i = 0;
    for (; i < n && w[i]; i++)
        if (lower((unsigned char)s[i]) != w[i]) return 0;
    return i == n && w[i] == '\0';
}

/* =======================================================================================
 * HTTP/1.1 request parser (RFC 9112), buffer-driven so the fuzzer runs the same code
 * ===================================================================================== */

static int is_tchar(unsigned char c)
{
    return (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || (c >= '0' && c <= '9') ||
           (c && strchr("!#$%&'*+-.^_`|~", c) != NULL);
}

/* Field values: visible ASCII, space, tab and obs-text; any other control is refused. */
static int is_field_char(unsigned char c) { return c == '\t' || (c >= 0x20 && c != 0x7f); }

static long head_fail(int *status, const char **why, int code, const char *reason)
{
    *status = code;
    *why = reason;
    return -1;
}

/* The comma-separated list value[0, n) contains token `word` (lowercase). */
static int list_has(const char *v, size_t n, const char *word)
{
    size_t i = 0;
    while (i < n) {
        while (i < n && (v[i] == ' ' || v[i] == '\t' || v[i] == ',')) i++;
        size_t start = i;
        while (i < n && v[i] != ',') i++;
        size_t end = i;
        while (end > start && (v[end - 1] == ' ' || v[end - 1] == '\t')) end--;
        if (end > start && clip_http_eq_nocase(v + start, end - start, word)) return 1;
    }
    return 0;
}

/* Parses Content-Length: digits, or a list of identical values ("5, 5") as some proxies
 * send. Lengths beyond 2^63 saturate: they are over any limit and answered 413. */
static int parse_length(const char *v, size_t n, uint64_t *out)
{
    int have = 0;
    uint64_t first = 0;
    size_t i = 0;
    while (i <= n) {
        while (i < n && (v[i] == ' ' || v[i] == '\t')) i++;
        if (i == n || v[i] < '0' || v[i] > '9') return 0;
        uint64_t x = 0;
        while (i < n && v[i] >= '0' && v[i] <= '9') {
            unsigned d = (unsigned)(v[i++] - '0');
            x = x > (UINT64_MAX >> 1) / 10 ? UINT64_MAX >> 1 : x * 10 + d;
        }
        while (i < n && (v[i] == ' ' || v[i] == '\t')) i++;
        if (have && x != first) return 0;
        first = x;
        have = 1;
        if (i == n) break;
        if (v[i] != ',') return 0;
        i++;
    }
    *out = first;
    return have;
}

long clip_http_parse_head(const char *buf, size_t len, clip_http_head *h, int *status,
                          const char **why)
{
    memset(h, 0, sizeof *h);
    size_t limit = len < CLIP_HTTP_MAX_HEAD ? len : CLIP_HTTP_MAX_HEAD;
    size_t p = 0;
    /* RFC 9112 2.2: empty lines before a request line are ignored (some clients send a
     * CRLF after a POST body). They count against the head limit. */
    while (p < limit && (buf[p] == '\r' || buf[p] == '\n')) p++;
    /* Find the end of the head first: nothing is interpreted until it is all here. */
    size_t end = 0;
    for (size_t i = p; i < limit; i++) {
        if (buf[i] != '\n') continue;
        if (i + 1 < limit && buf[i + 1] == '\n') { end = i + 2; break; }
        if (i + 2 < limit && buf[i + 1] == '\r' && buf[i + 2] == '\n') { end = i + 3; break; }
    }
    if (end == 0) {
        if (len >= CLIP_HTTP_MAX_HEAD)
            return head_fail(status, why, 431, "request head larger than 16 KB");
        return 0;
    }
    int line_no = 0, have_host = 0, te_seen = 0, n_headers = 0, close = 0, keep = 0;
    size_t cl_count = 0;
    while (p < end) {
        size_t eol = p;
        while (buf[eol] != '\n') eol++;
        size_t le = eol;
        if (le > p && buf[le - 1] == '\r') le--;
        for (size_t i = p; i < le; i++) {
            if (buf[i] == '\r') return head_fail(status, why, 400, "bare CR in request head");
            if (buf[i] == '\0') return head_fail(status, why, 400, "NUL in request head");
        }
        const char *line = buf + p;
        size_t n = le - p;
        p = eol + 1;
        if (line_no++ == 0) {
            /* method SP request-target SP HTTP-version */
            size_t i = 0;
            while (i < n && is_tchar((unsigned char)line[i])) i++;
            if (i == 0 || i > 32 || i >= n || line[i] != ' ')
                return head_fail(status, why, 400, "malformed request line");
            h->method = line;
            h->method_len = i;
            size_t t = ++i;
            while (i < n && line[i] > 0x20 && line[i] < 0x7f) i++;
            if (i == t || i >= n || line[i] != ' ')
                return head_fail(status, why, 400, "malformed request target");
            h->target = line + t;
            h->target_len = i - t;
            i++;
            if (n - i != 8 || memcmp(line + i, "HTTP/", 5) != 0 || line[i + 6] != '.' ||
                !isdigit((unsigned char)line[i + 5]) || !isdigit((unsigned char)line[i + 7]))
                return head_fail(status, why, 400, "malformed HTTP version");
            if (line[i + 5] != '1') return head_fail(status, why, 505, "HTTP version not supported");
            h->minor = line[i + 7] - '0';
            /* absolute-form (a request meant for a proxy): keep the path and query. */
            if (h->target_len > 7 && clip_http_eq_nocase(h->target, 7, "http://")) {
                const char *s = memchr(h->target + 7, '/', h->target_len - 7);
                size_t off = s ? (size_t)(s - h->target) : h->target_len;
                h->target += off;
                h->target_len -= off;
                if (h->target_len == 0) h->target = "/", h->target_len = 1;
            } else if (h->target[0] != '/' && !(h->target_len == 1 && h->target[0] == '*')) {
                return head_fail(status, why, 400, "request target must be a path");
            }
            continue;
        }
        if (n == 0) break;   /* the empty line ending the head */
        if (line[0] == ' ' || line[0] == '\t')
            return head_fail(status, why, 400, "obsolete header line folding");
        if (++n_headers > CLIP_HTTP_MAX_HEADERS)
            return head_fail(status, why, 431, "too many header fields");
        size_t c = 0;
        while (c < n && is_tchar((unsigned char)line[c])) c++;
        if (c == 0 || c >= n || line[c] != ':')
            return head_fail(status, why, 400, "malformed header field");
        const char *name = line;
        size_t name_len = c;
        size_t vs = c + 1, ve = n;
        while (vs < ve && (line[vs] == ' ' || line[vs] == '\t')) vs++;
        while (ve > vs && (line[ve - 1] == ' ' || line[ve - 1] == '\t')) ve--;
        for (size_t i = vs; i < ve; i++)
            if (!is_field_char((unsigned char)line[i]))
                return head_fail(status, why, 400, "control character in a header value");
        const char *v = line + vs;
        size_t vn = ve - vs;
        if (clip_http_eq_nocase(name, name_len, "content-length")) {
            uint64_t x;
            if (!parse_length(v, vn, &x)) return head_fail(status, why, 400, "bad Content-Length");
            if (cl_count++ && x != h->length)
                return head_fail(status, why, 400, "conflicting Content-Length headers");
            h->has_length = 1;
            h->length = x;
        } else if (clip_http_eq_nocase(name, name_len, "transfer-encoding")) {
            /* Only "chunked", once, is understood: anything else could frame the body
             * differently from a proxy in front of us (request smuggling). */
            if (te_seen++ || !clip_http_eq_nocase(v, vn, "chunked")) {
                if (list_has(v, vn, "chunked") || te_seen > 1)
                    return head_fail(status, why, 501, "only Transfer-Encoding: chunked is supported");
                return head_fail(status, why, 400, "unsupported Transfer-Encoding");
            }
            h->chunked = 1;
        } else if (clip_http_eq_nocase(name, name_len, "host")) {
            if (have_host++) return head_fail(status, why, 400, "more than one Host header");
        } else if (clip_http_eq_nocase(name, name_len, "connection")) {
            close |= list_has(v, vn, "close");
            keep |= list_has(v, vn, "keep-alive");
        } else if (clip_http_eq_nocase(name, name_len, "expect")) {
            if (!clip_http_eq_nocase(v, vn, "100-continue"))
                return head_fail(status, why, 417, "only Expect: 100-continue is supported");
            h->expect_continue = 1;
        } else if (clip_http_eq_nocase(name, name_len, "authorization")) {
            h->authorization = v;
            h->authorization_len = vn;
        } else if (clip_http_eq_nocase(name, name_len, "origin")) {
            h->origin = v;
            h->origin_len = vn;
        }
    }
    if (h->has_length && h->chunked)
        return head_fail(status, why, 400, "both Content-Length and Transfer-Encoding");
    if (h->minor >= 1 && !have_host) return head_fail(status, why, 400, "missing Host header");
    h->keep_alive = h->minor >= 1 ? !close : keep && !close;
    if (h->minor == 0 && h->chunked)
        return head_fail(status, why, 400, "chunked body in an HTTP/1.0 request");
    return (long)end;
}

enum { CH_SIZE, CH_SIZE_WS, CH_EXT, CH_SIZE_LF, CH_DATA, CH_DATA_CR, CH_DATA_LF,
       CH_TRAILER_START, CH_TRAILER, CH_TRAILER_LF, CH_END_LF, CH_DONE };

#define CHUNK_MAX_LINE     4096   /* one chunk extension or trailer line                */
#define CHUNK_MAX_TRAILERS 16384  /* the whole trailer section, like the head limit     */

static int chunk_fail(int *status, const char **why, int code, const char *reason)
{
    *status = code;
    *why = reason;
    return -1;
}

static int hexval(unsigned char c)
{
    if (c >= '0' && c <= '9') return c - '0';
    c = (unsigned char)lower(c);
    if (c >= 'a' && c <= 'f') return c - 'a' + 10;
    return -1;
}

int clip_http_chunked_feed(clip_http_chunked *c, const char *in, size_t len, size_t *used,
                           clip_buf *out, size_t max_body, int *status, const char **why)
{
    size_t i = 0;
    *used = 0;
    while (i < len) {
        unsigned char ch = (unsigned char)in[i];
        switch (c->state) {
        case CH_SIZE: {
            int v = hexval(ch);
            if (v >= 0) {
                if (c->digits >= 15) return chunk_fail(status, why, 413, "chunk size too large");
                c->size = c->size * 16 + (uint64_t)v;
                c->digits++;
                i++;
                break;
            }
            if (c->digits == 0) return chunk_fail(status, why, 400, "bad chunk size");
            if (c->size > max_body || out->len + c->size > max_body)
                return chunk_fail(status, why, 413, "chunked body larger than the limit");
            c->state = CH_SIZE_WS;
            break;
        }
        case CH_SIZE_WS:
            if (ch == ' ' || ch == '\t') { i++; break; }
            if (ch == ';') { c->state = CH_EXT; c->line = 0; i++; break; }
            if (ch == '\r') { c->state = CH_SIZE_LF; i++; break; }
            return chunk_fail(status, why, 400, "bad chunk size line");
        case CH_EXT:
            if (ch == '\r') { c->state = CH_SIZE_LF; i++; break; }
            if (!is_field_char(ch)) return chunk_fail(status, why, 400, "bad chunk extension");
            if (++c->line > CHUNK_MAX_LINE) return chunk_fail(status, why, 400, "chunk extension too long");
            i++;
            break;
        case CH_SIZE_LF:
            if (ch != '\n') return chunk_fail(status, why, 400, "chunk size line without CRLF");
            i++;
            c->digits = 0;
            if (c->size == 0) {
                c->state = CH_TRAILER_START;
            } else {
                c->state = CH_DATA;
            }
            break;
        case CH_DATA: {
            size_t take = len - i;
            if (take > c->size) take = (size_t)c->size;
            clip_buf_append(out, in + i, take);
            if (out->oom) return chunk_fail(status, why, 413, "out of memory for the body");
            c->size -= take;
            i += take;
            if (c->size == 0) c->state = CH_DATA_CR;
            break;
        }
        case CH_DATA_CR:
            if (ch != '\r') return chunk_fail(status, why, 400, "chunk data without CRLF");
            c->state = CH_DATA_LF;
            i++;
            break;
        case CH_DATA_LF:
            if (ch != '\n') return chunk_fail(status, why, 400, "chunk data without CRLF");
            c->state = CH_SIZE;
            c->size = 0;
            i++;
            break;
        case CH_TRAILER_START:
            if (ch == '\r') { c->state = CH_END_LF; i++; break; }
            c->state = CH_TRAILER;
            c->line = 0;
            break;
        case CH_TRAILER:
            if (ch == '\r') { c->state = CH_TRAILER_LF; i++; break; }
            if (!is_field_char(ch)) return chunk_fail(status, why, 400, "bad trailer field");
            if (++c->trailers > CHUNK_MAX_TRAILERS) return chunk_fail(status, why, 431, "trailers too large");
            i++;
            break;
        case CH_TRAILER_LF:
            if (ch != '\n') return chunk_fail(status, why, 400, "trailer line without CRLF");
            c->state = CH_TRAILER_START;
            i++;
            break;
        case CH_END_LF:
            if (ch != '\n') return chunk_fail(status, why, 400, "chunked body without final CRLF");
            c->state = CH_DONE;
            i++;
            *used = i;
            return 1;
        default:
            *used = i;
            return 1;
        }
    }
    *used = i;
    return c->state == CH_DONE;
}

/* =======================================================================================
 * The query string
 * ===================================================================================== */

int clip_http_query_param(const char *q, size_t n, const char *name, char *out, size_t on,
                          size_t *olen)
{
    size_t nl = strlen(name);
    size_t i = 0;
    while (i < n) {
        size_t e = i;
        while (e < n && q[e] != '&') e++;
        if (e - i >= nl + 1 && memcmp(q + i, name, nl) == 0 && q[i + nl] == '=') {
            size_t k = 0;
            for (size_t j = i + nl + 1; j < e && k < on; j++) {
                if (q[j] == '%' && j + 2 < e && hexval((unsigned char)q[j + 1]) >= 0 &&
                    hexval((unsigned char)q[j + 2]) >= 0) {
                    out[k++] = (char)(hexval((unsigned char)q[j + 1]) * 16 + hexval((unsigned char)q[j + 2]));
                    j += 2;
                } else {
                    out[k++] = q[j] == '+' ? ' ' : q[j];
                }
            }
            *olen = k;
            return 1;
        }
        i = e + 1;
    }
    return 0;
}

/* =======================================================================================
 * Responses: the head of one we write, and of one we receive (the URL client's)
 * ===================================================================================== */

const char *clip_http_status_text(int status)
{
    switch (status) {
    case 100: return "Continue";
    case 200: return "OK";
    case 204: return "No Content";
    case 400: return "Bad Request";
    case 401: return "Unauthorized";
    case 404: return "Not Found";
    case 405: return "Method Not Allowed";
    case 408: return "Request Timeout";
    case 413: return "Payload Too Large";
    case 417: return "Expectation Failed";
    case 422: return "Unprocessable Entity";
    case 431: return "Request Header Fields Too Large";
    case 500: return "Internal Server Error";
    case 501: return "Not Implemented";
    case 503: return "Service Unavailable";
    case 505: return "HTTP Version Not Supported";
    default: return "Unknown";
    }
}

void clip_http_write_head(clip_buf *h, int minor, const clip_http_response *r, int keep_alive,
                          const char *cors, const char *origin, size_t origin_len)
{
    clip_buf_printf(h, "HTTP/1.%d %d %s\r\nContent-Type: application/json\r\n"
                       "Content-Length: %zu\r\n", minor ? 1 : 0, r->status,
                    clip_http_status_text(r->status), r->body.len);
    if (r->allow) clip_buf_printf(h, "Allow: %s\r\n", r->allow);
    if (r->status == 503) clip_buf_puts(h, "Retry-After: 1\r\n");
    if (cors) {
        if (strcmp(cors, "*") == 0) {
            clip_buf_puts(h, "Access-Control-Allow-Origin: *\r\n");
        } else if (origin && strlen(cors) == origin_len && memcmp(cors, origin, origin_len) == 0) {
            clip_buf_printf(h, "Access-Control-Allow-Origin: %s\r\nVary: Origin\r\n", cors);
        }
        if (r->status == 204)
            clip_buf_puts(h, "Access-Control-Allow-Methods: GET, POST, OPTIONS\r\n"
                             "Access-Control-Allow-Headers: Authorization, Content-Type\r\n"
                             "Access-Control-Max-Age: 600\r\n");
    }
    if (!keep_alive) clip_buf_puts(h, "Connection: close\r\n");
    else if (minor == 0) clip_buf_puts(h, "Connection: keep-alive\r\n");
    clip_buf_puts(h, "\r\n");
}

int clip_http_parse_response_head(const char *buf, size_t n, clip_http_response_head *f)
{
    memset(f, 0, sizeof *f);
    if (n < 12 || memcmp(buf, "HTTP/1.", 7) != 0 || buf[8] != ' ') return -1;
    if (!isdigit((unsigned char)buf[9]) || !isdigit((unsigned char)buf[10]) ||
        !isdigit((unsigned char)buf[11]))
        return -1;
    f->status = (buf[9] - '0') * 100 + (buf[10] - '0') * 10 + (buf[11] - '0');
    size_t p = 0;
    while (p < n && buf[p] != '\n') p++;
    p++;
    while (p < n) {
        size_t e = p;
        while (e < n && buf[e] != '\n') e++;
        size_t le = e > p && buf[e - 1] == '\r' ? e - 1 : e;
        const char *line = buf + p;
        size_t ln = le - p;
        p = e + 1;
        if (ln == 0) break;
        const char *colon = memchr(line, ':', ln);
        if (!colon) return -1;
        size_t nl = (size_t)(colon - line);
        const char *v = colon + 1;
        size_t vn = ln - nl - 1;
        while (vn && (*v == ' ' || *v == '\t')) v++, vn--;
        while (vn && (v[vn - 1] == ' ' || v[vn - 1] == '\t')) vn--;
        if (clip_http_eq_nocase(line, nl, "content-length")) {
            if (!parse_length(v, vn, &f->length)) return -1;
            f->has_length = 1;
        } else if (clip_http_eq_nocase(line, nl, "transfer-encoding")) {
            if (!clip_http_eq_nocase(v, vn, "chunked")) return -1;
            f->chunked = 1;
        } else if (clip_http_eq_nocase(line, nl, "location")) {
            if (vn >= sizeof f->location) return -1;
            memcpy(f->location, v, vn);
            f->location[vn] = '\0';
        }
    }
    return 0;
}
