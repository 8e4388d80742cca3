/* fetch.c -- the URL client: an image URL downloaded under a policy.
 *
 * Our own HTTP/1.1 GET (the protocol's parsing is http.c's), TLS through OpenSSL when
 * built with it, and the SSRF checks: every resolved address is checked BEFORE connecting
 * to exactly that address (a second lookup could answer differently), against private,
 * loopback, link-local, documentation and other non-public ranges -- IPv4, IPv6 and the
 * IPv6 forms that carry an IPv4 address. Redirects are followed (at most 5), each one
 * re-parsed and re-checked; one deadline covers the whole download, and the size limit is
 * enforced while the bytes arrive.
 *
 * Lives here: URL parsing, name resolution and connecting, TLS setup, streams with
 * deadlines, redirects. Must not touch: the server's state, JSON, models or images -- it
 * knows only the small clip_fetch_policy it is given, and returns bytes or a reason.
 */
#include "fetch.h"

#include "clip.h"   /* CLIP_VERSION, for the User-Agent */
#include "http.h"

#include <arpa/inet.h>
#include <ctype.h>
#include <errno.h>
#include <limits.h>
#include <netdb.h>
#include <netinet/in.h>
#include <poll.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <sys/socket.h>
#include <time.h>
#include <unistd.h>

#ifdef CLIP_HAVE_TLS
#include <openssl/err.h>
#include <openssl/ssl.h>
#include <openssl/x509v3.h>

struct clip_fetch_tls {
    SSL_CTX *ctx;
};
#endif

static double now_s(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + (double)ts.tv_nsec * 1e-9;
}

/* A port number from 1 to 65535, read as the options read numbers (strtol). */
static int parse_port(const char *s, long *out)
{
    if (!*s) return -1;
    char *end;
    errno = 0;
    long v = strtol(s, &end, 10);
    if (errno || *end || v < 1 || v > 65535) return -1;
    *out = v;
    return 0;
}

typedef struct stream {
    int fd;
    double deadline;
#ifdef CLIP_HAVE_TLS
    SSL *ssl;
#endif
} stream;

/* Waits for fd to become ready; 0 ready, -1 timeout or error. */
static int wait_fd(int fd, short events, double deadline)
{
    for (;;) {
        double left = deadline - now_s();
        if (left <= 0) return -1;
        struct pollfd p = {.fd = fd, .events = events};
        int r = poll(&p, 1, (int)(left * 1000) + 1);
        if (r > 0) return 0;
        if (r < 0 && errno != EINTR) return -1;
    }
}

/* > 0 bytes read, 0 end of stream, -1 error or timeout. */
static long stream_read(stream *s, void *buf, size_t n)
{
#ifdef CLIP_HAVE_TLS
    if (s->ssl) {
        for (;;) {
            int r = SSL_read(s->ssl, buf, n > INT_MAX ? INT_MAX : (int)n);
            if (r > 0) return r;
            int e = SSL_get_error(s->ssl, r);
            if (e == SSL_ERROR_ZERO_RETURN) return 0;
            if (e == SSL_ERROR_WANT_READ) { if (wait_fd(s->fd, POLLIN, s->deadline)) return -1; continue; }
            if (e == SSL_ERROR_WANT_WRITE) { if (wait_fd(s->fd, POLLOUT, s->deadline)) return -1; continue; }
            return -1;
        }
    }
#endif
    for (;;) {
        ssize_t r = recv(s->fd, buf, n, 0);
        if (r >= 0) return (long)r;
        if (errno == EINTR) continue;
        if (errno != EAGAIN && errno != EWOULDBLOCK) return -1;
        if (wait_fd(s->fd, POLLIN, s->deadline)) return -1;
    }
}

static int stream_write(stream *s, const char *buf, size_t n)
{
    while (n > 0) {
#ifdef CLIP_HAVE_TLS
        if (s->ssl) {
            int r = SSL_write(s->ssl, buf, n > INT_MAX ? INT_MAX : (int)n);
            if (r > 0) { buf += r; n -= (size_t)r; continue; }
            int e = SSL_get_error(s->ssl, r);
            if (e == SSL_ERROR_WANT_READ) { if (wait_fd(s->fd, POLLIN, s->deadline)) return -1; continue; }
            if (e == SSL_ERROR_WANT_WRITE) { if (wait_fd(s->fd, POLLOUT, s->deadline)) return -1; continue; }
            return -1;
        }
#endif
        ssize_t r = send(s->fd, buf, n, MSG_NOSIGNAL);
        if (r > 0) { buf += r; n -= (size_t)r; continue; }
        if (r < 0 && errno == EINTR) continue;
        if (r < 0 && (errno == EAGAIN || errno == EWOULDBLOCK)) {
            if (wait_fd(s->fd, POLLOUT, s->deadline)) return -1;
            continue;
        }
        return -1;
    }
    return 0;
}

/* Why an IPv4 address (host byte order) is not a public one, or NULL when it is. */
static const char *ipv4_private(uint32_t a)
{
    struct { uint32_t net; int bits; const char *what; } nets[] = {
        {0x00000000, 8, "an unspecified (0.0.0.0/8) address"},
        {0x0A000000, 8, "a private (10.0.0.0/8) address"},
        {0x64400000, 10, "a carrier-grade NAT (100.64.0.0/10) address"},
        {0x7F000000, 8, "a loopback address"},
        {0xA9FE0000, 16, "a link-local (169.254.0.0/16) address"},
        {0xAC100000, 12, "a private (172.16.0.0/12) address"},
        {0xC0000000, 24, "an IETF protocol (192.0.0.0/24) address"},
        {0xC0000200, 24, "a documentation (192.0.2.0/24) address"},
        {0xC0A80000, 16, "a private (192.168.0.0/16) address"},
        {0xC6120000, 15, "a benchmarking (198.18.0.0/15) address"},
        {0xC6336400, 24, "a documentation (198.51.100.0/24) address"},
        {0xCB007100, 24, "a documentation (203.0.113.0/24) address"},
        {0xE0000000, 4, "a multicast address"},
        {0xF0000000, 4, "a reserved or broadcast (240.0.0.0/4) address"},
    };
    for (size_t i = 0; i < sizeof nets / sizeof nets[0]; i++) {
        uint32_t mask = nets[i].bits ? ~0u << (32 - nets[i].bits) : 0;
        if ((a & mask) == nets[i].net) return nets[i].what;
    }
    return NULL;
}

static uint32_t be32(const uint8_t *p)
{
    return (uint32_t)p[0] << 24 | (uint32_t)p[1] << 16 | (uint32_t)p[2] << 8 | p[3];
}

static const char *address_private(const struct sockaddr *sa)
{
    if (sa->sa_family == AF_INET)
        return ipv4_private(ntohl(((const struct sockaddr_in *)sa)->sin_addr.s_addr));
    if (sa->sa_family != AF_INET6) return "not an IP address";
    const uint8_t *a = ((const struct sockaddr_in6 *)sa)->sin6_addr.s6_addr;
    static const uint8_t zero[12] = {0};
    static const uint8_t mapped[12] = {0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0xff, 0xff};
    static const uint8_t nat64[12] = {0, 0x64, 0xff, 0x9b, 0, 0, 0, 0, 0, 0, 0, 0};
    if (memcmp(a, zero, 12) == 0) {
        /* ::, ::1 and the deprecated IPv4-compatible ::a.b.c.d: none is reachable
         * globally in a way we want to fetch from. */
        uint32_t v4 = be32(a + 12);
        if (v4 == 0) return "the unspecified address";
        if (v4 == 1) return "a loopback address";
        return "an IPv4-compatible IPv6 address";
    }
    if (memcmp(a, mapped, 12) == 0 || memcmp(a, nat64, 12) == 0) {
        const char *why = ipv4_private(be32(a + 12));
        return why ? why : NULL;
    }
    if (a[0] == 0x00 && a[1] == 0x64 && a[2] == 0xff && a[3] == 0x9b && a[4] == 0 && a[5] == 1)
        return "a local-use NAT64 (64:ff9b:1::/48) address";
    if (a[0] == 0x01 && a[1] == 0 && memcmp(a + 2, zero, 6) == 0) return "a discard (100::/64) address";
    if ((a[0] & 0xfe) == 0xfc) return "a unique-local (fc00::/7) address";
    if (a[0] == 0xfe && (a[1] & 0xc0) == 0x80) return "a link-local (fe80::/10) address";
    if (a[0] == 0xfe && (a[1] & 0xc0) == 0xc0) return "a site-local (fec0::/10) address";
    if (a[0] == 0xff) return "a multicast address";
    if (a[0] == 0x20 && a[1] == 0x01 && a[2] == 0x0d && a[3] == 0xb8) return "a documentation (2001:db8::/32) address";
    if (a[0] == 0x20 && a[1] == 0x01 && a[2] == 0 && a[3] == 0) return "a Teredo (2001::/32) address";
    if (a[0] == 0x20 && a[1] == 0x02) {   /* 6to4 carries an IPv4 address */
        const char *why = ipv4_private(be32(a + 2));
        if (why) return why;
    }
    return NULL;
}

typedef struct url {
    int https;
    char host[256];            /* lowercase; IPv6 without brackets                         */
    int ipv6_literal;
    char port[8];
    char path[4096];           /* path and query                                           */
} url;

/* Parses an absolute http(s) URL. Returns NULL or why it is refused. */
static const char *url_parse(const char *s, size_t n, url *u)
{
    memset(u, 0, sizeof *u);
    size_t i;
    if (n > 7 && clip_http_eq_nocase(s, 7, "http://")) i = 7;
    else if (n > 8 && clip_http_eq_nocase(s, 8, "https://")) i = 8, u->https = 1;
    else return "only http:// and https:// image URLs are supported";
    for (size_t k = 0; k < n; k++)
        if ((unsigned char)s[k] <= 0x20 || (unsigned char)s[k] >= 0x7f)
            return "the URL contains spaces, controls or non-ASCII characters";
    size_t a = i;
    while (i < n && s[i] != '/' && s[i] != '?' && s[i] != '#') i++;
    const char *auth = s + a;
    size_t alen = i - a;
    if (memchr(auth, '@', alen)) return "URLs with user names or passwords are not accepted";
    size_t hs = 0, he = alen, ps = alen;
    if (alen && auth[0] == '[') {
        const char *close = memchr(auth, ']', alen);
        if (!close) return "malformed IPv6 address in the URL";
        hs = 1;
        he = (size_t)(close - auth);
        ps = he + 1;
        u->ipv6_literal = 1;
        if (ps < alen && auth[ps] != ':') return "malformed URL authority";
    } else {
        const char *colon = memchr(auth, ':', alen);
        if (colon) he = ps = (size_t)(colon - auth);
    }
    if (he <= hs || he - hs >= sizeof u->host) return "the URL has no host or one too long";
    /* every byte is printable ASCII (checked above): tolower is the ASCII one */
    for (size_t k = hs; k < he; k++) u->host[k - hs] = (char)tolower((unsigned char)auth[k]);
    if (ps < alen) {
        size_t pl = alen - ps - 1;
        long port;
        char tmp[8];
        if (pl == 0 || pl >= sizeof tmp) return "bad port in the URL";
        memcpy(tmp, auth + ps + 1, pl);
        tmp[pl] = '\0';
        if (parse_port(tmp, &port)) return "bad port in the URL";
        snprintf(u->port, sizeof u->port, "%ld", port);
    } else {
        snprintf(u->port, sizeof u->port, "%s", u->https ? "443" : "80");
    }
    size_t pe = i;
    while (pe < n && s[pe] != '#') pe++;
    size_t plen = pe - i;
    if (plen + 2 >= sizeof u->path) return "the URL is too long";
    if (plen == 0 || s[i] != '/') {
        u->path[0] = '/';
        memcpy(u->path + 1, s + i, plen);
    } else {
        memcpy(u->path, s + i, plen);
    }
    return NULL;
}

static int host_allowed(const clip_fetch_policy *pol, const char *host)
{
    if (!pol->allowed_hosts) return 1;
    size_t hl = strlen(host);
    const char *p = pol->allowed_hosts;
    while (*p) {
        const char *e = strchr(p, ',');
        size_t n = e ? (size_t)(e - p) : strlen(p);
        while (n && *p == ' ') p++, n--;
        while (n && p[n - 1] == ' ') n--;
        if (n == hl && strncasecmp(p, host, n) == 0) return 1;
        if (!e) break;
        p = e + 1;
    }
    return 0;
}

/* Connects to the first allowed address of the host, checking each resolved address
 * before connecting to exactly that sockaddr (a second lookup could answer differently). */
static int url_connect(const clip_fetch_policy *pol, const url *u, double deadline, char *why, size_t wn)
{
    struct addrinfo hints = {0}, *res = NULL;
    hints.ai_family = AF_UNSPEC;
    hints.ai_socktype = SOCK_STREAM;
    hints.ai_flags = AI_ADDRCONFIG;
    int gai = getaddrinfo(u->host, u->port, &hints, &res);
    if (gai) {
        snprintf(why, wn, "cannot resolve %.200s: %s", u->host, gai_strerror(gai));
        return -1;
    }
    int fd = -1;
    snprintf(why, wn, "cannot connect to %.200s", u->host);
    for (struct addrinfo *ai = res; ai && fd < 0; ai = ai->ai_next) {
        char ip[INET6_ADDRSTRLEN] = "?";
        if (ai->ai_family == AF_INET)
            inet_ntop(AF_INET, &((struct sockaddr_in *)ai->ai_addr)->sin_addr, ip, sizeof ip);
        else if (ai->ai_family == AF_INET6)
            inet_ntop(AF_INET6, &((struct sockaddr_in6 *)ai->ai_addr)->sin6_addr, ip, sizeof ip);
        const char *priv = address_private(ai->ai_addr);
        if (priv && !pol->allow_private) {
            snprintf(why, wn, "URL refused: %.200s resolves to %s, %s (pass "
                     "--allow-private-urls to allow)", u->host, ip, priv);
            continue;
        }
        int s = socket(ai->ai_family, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
        if (s < 0) continue;
        int r = connect(s, ai->ai_addr, ai->ai_addrlen);
        if (r < 0 && errno == EINPROGRESS) {
            int soerr = 0;
            socklen_t sl = sizeof soerr;
            if (wait_fd(s, POLLOUT, deadline) == 0 &&
                getsockopt(s, SOL_SOCKET, SO_ERROR, &soerr, &sl) == 0 && soerr == 0) {
                r = 0;
            } else {
                snprintf(why, wn, "cannot connect to %.200s (%s): %s", u->host, ip,
                         soerr ? strerror(soerr) : "timed out");
            }
        } else if (r < 0) {
            snprintf(why, wn, "cannot connect to %.200s (%s): %s", u->host, ip, strerror(errno));
        }
        if (r == 0) fd = s;
        else close(s);
    }
    freeaddrinfo(res);
    return fd;
}

#ifdef CLIP_HAVE_TLS
static int tls_start(const clip_fetch_tls *tls, stream *s, const url *u, char *why, size_t wn)
{
    s->ssl = SSL_new(tls->ctx);
    if (!s->ssl || !SSL_set_fd(s->ssl, s->fd)) {
        snprintf(why, wn, "TLS setup failed");
        return -1;
    }
    if (u->ipv6_literal || inet_pton(AF_INET, u->host, &(struct in_addr){0}) == 1) {
        X509_VERIFY_PARAM_set1_ip_asc(SSL_get0_param(s->ssl), u->host);
    } else {
        SSL_set_tlsext_host_name(s->ssl, u->host);
        SSL_set1_host(s->ssl, u->host);
    }
    for (;;) {
        int r = SSL_connect(s->ssl);
        if (r == 1) return 0;
        int e = SSL_get_error(s->ssl, r);
        if (e == SSL_ERROR_WANT_READ && wait_fd(s->fd, POLLIN, s->deadline) == 0) continue;
        if (e == SSL_ERROR_WANT_WRITE && wait_fd(s->fd, POLLOUT, s->deadline) == 0) continue;
        long vr = SSL_get_verify_result(s->ssl);
        if (vr != X509_V_OK)
            snprintf(why, wn, "TLS certificate of %.200s not accepted: %s", u->host,
                     X509_verify_cert_error_string(vr));
        else
            snprintf(why, wn, "TLS handshake with %.200s failed", u->host);
        ERR_clear_error();
        return -1;
    }
}
#endif

static void stream_close(stream *s)
{
#ifdef CLIP_HAVE_TLS
    if (s->ssl) SSL_free(s->ssl);
    s->ssl = NULL;
#endif
    if (s->fd >= 0) close(s->fd);
    s->fd = -1;
}

/* One GET of u; the answer's head into f and (for 2xx) its body into out. */
static int fetch_once(const clip_fetch_policy *pol, const clip_fetch_tls *tls, const url *u,
                      double deadline, clip_http_response_head *f, clip_buf *out, char *why,
                      size_t wn)
{
    stream s = {.fd = -1, .deadline = deadline};
    if (u->https) {
#ifndef CLIP_HAVE_TLS
        (void)tls;
        snprintf(why, wn, "https image URLs need a build with TLS");
        return -1;
#else
        if (!tls) {
            snprintf(why, wn, "https image URLs need a build with TLS");
            return -1;
        }
#endif
    }
    s.fd = url_connect(pol, u, deadline, why, wn);
    if (s.fd < 0) return -1;
#ifdef CLIP_HAVE_TLS
    if (u->https && tls_start(tls, &s, u, why, wn)) {
        stream_close(&s);
        return -1;
    }
#endif
    clip_buf req = {0};
    int default_port = strcmp(u->port, u->https ? "443" : "80") == 0;
    clip_buf_printf(&req, "GET %s HTTP/1.1\r\nHost: %s%s%s%s%s\r\n"
                    "User-Agent: clip/%s\r\nAccept: image/*\r\nAccept-Encoding: identity\r\n"
                    "Connection: close\r\n\r\n",
                    u->path, u->ipv6_literal ? "[" : "", u->host, u->ipv6_literal ? "]" : "",
                    default_port ? "" : ":", default_port ? "" : u->port, CLIP_VERSION);
    int rc = -1;
    char *head = NULL;
    if (req.oom || stream_write(&s, req.data, req.len)) {
        snprintf(why, wn, "sending the request to %.200s failed or timed out", u->host);
        goto done;
    }
    /* Read the head; leftover body bytes stay in `head` after it. */
    size_t cap = CLIP_HTTP_MAX_HEAD + 4096, len = 0, head_end = 0;
    head = malloc(cap);
    if (!head) {
        snprintf(why, wn, "out of memory");
        goto done;
    }
    while (!head_end) {
        if (len == cap) {
            snprintf(why, wn, "the answer's head from %.200s is too large", u->host);
            goto done;
        }
        long r = stream_read(&s, head + len, cap - len);
        if (r <= 0) {
            snprintf(why, wn, "%s reading the answer from %.200s",
                     r == 0 ? "connection closed" : "timed out or failed", u->host);
            goto done;
        }
        len += (size_t)r;
        for (size_t i = 3; i < len; i++)
            if (memcmp(head + i - 3, "\r\n\r\n", 4) == 0) { head_end = i + 1; break; }
    }
    if (clip_http_parse_response_head(head, head_end, f)) {
        snprintf(why, wn, "malformed HTTP answer from %.200s", u->host);
        goto done;
    }
    if (f->status / 100 != 2) {   /* redirects and errors: the head is all we need */
        rc = 0;
        goto done;
    }
    if (f->has_length && f->length > pol->max_bytes) {
        snprintf(why, wn, "the image at the URL is larger than %zu MB", pol->max_bytes >> 20);
        goto done;
    }
    clip_http_chunked ch = {0};
    char *data = head + head_end;
    size_t avail = len - head_end;
    for (;;) {
        if (f->chunked) {
            size_t used;
            int status;
            const char *cwhy;
            int r = clip_http_chunked_feed(&ch, data, avail, &used, out, pol->max_bytes, &status, &cwhy);
            if (r < 0) {
                if (status == 413) snprintf(why, wn, "the image at the URL is larger than %zu MB", pol->max_bytes >> 20);
                else snprintf(why, wn, "malformed chunked answer from %.200s: %s", u->host, cwhy);
                goto done;
            }
            if (r == 1) break;
        } else {
            size_t take = avail;
            if (f->has_length && out->len + take > f->length) take = (size_t)(f->length - out->len);
            if (out->len + take > pol->max_bytes) {
                snprintf(why, wn, "the image at the URL is larger than %zu MB", pol->max_bytes >> 20);
                goto done;
            }
            clip_buf_append(out, data, take);
            if (out->oom) {
                snprintf(why, wn, "out of memory");
                goto done;
            }
            if (f->has_length && out->len == f->length) break;
        }
        long r = stream_read(&s, head, cap);
        if (r < 0) {
            snprintf(why, wn, "timed out or failed reading the image from %.200s", u->host);
            goto done;
        }
        if (r == 0) {
            if (f->chunked || f->has_length) {
                snprintf(why, wn, "the image from %.200s was cut short", u->host);
                goto done;
            }
            break;
        }
        data = head;
        avail = (size_t)r;
    }
    rc = 0;
done:
    free(head);
    clip_buf_free(&req);
    stream_close(&s);
    return rc;
}

/* Resolves a redirect's Location against the current URL into next[]. */
static int resolve_location(const url *cur, const char *loc, char *next, size_t nn)
{
    const char *scheme = cur->https ? "https" : "http";
    char hostport[300];
    snprintf(hostport, sizeof hostport, "%s%s%s:%s", cur->ipv6_literal ? "[" : "", cur->host,
             cur->ipv6_literal ? "]" : "", cur->port);
    int w;
    if (clip_http_eq_nocase(loc, strlen(loc) < 7 ? strlen(loc) : 7, "http://") ||
        (strlen(loc) >= 8 && clip_http_eq_nocase(loc, 8, "https://")))
        w = snprintf(next, nn, "%s", loc);
    else if (loc[0] == '/' && loc[1] == '/')
        w = snprintf(next, nn, "%s:%s", scheme, loc);
    else if (loc[0] == '/')
        w = snprintf(next, nn, "%s://%s%s", scheme, hostport, loc);
    else {
        const char *slash = strrchr(cur->path, '/');
        int dir = slash ? (int)(slash - cur->path) + 1 : 1;
        w = snprintf(next, nn, "%s://%s%.*s%s", scheme, hostport, dir, cur->path, loc);
    }
    return w < 0 || (size_t)w >= nn ? -1 : 0;
}

/* At most 5 redirects, each re-checked like the first URL. */
int clip_fetch_url(const clip_fetch_policy *pol, const clip_fetch_tls *tls, const char *s,
                   size_t n, clip_buf *out, char *why, size_t wn)
{
    double deadline = now_s() + pol->timeout;
    char cur_s[4096];
    if (n >= sizeof cur_s) {
        snprintf(why, wn, "the URL is too long");
        return -1;
    }
    memcpy(cur_s, s, n);
    cur_s[n] = '\0';
    url *u = malloc(sizeof *u);
    clip_http_response_head *f = malloc(sizeof *f);
    int rc = -1;
    if (!u || !f) {
        snprintf(why, wn, "out of memory");
        goto done;
    }
    for (int hop = 0;; hop++) {
        const char *bad = url_parse(cur_s, strlen(cur_s), u);
        if (bad) {
            snprintf(why, wn, "%s", bad);
            goto done;
        }
        if (!host_allowed(pol, u->host)) {
            snprintf(why, wn, "URL refused: host %.200s is not in the allowed hosts", u->host);
            goto done;
        }
        clip_buf_reset(out);
        if (fetch_once(pol, tls, u, deadline, f, out, why, wn)) goto done;
        if (f->status / 100 == 2) break;
        if (f->status == 301 || f->status == 302 || f->status == 303 || f->status == 307 ||
            f->status == 308) {
            if (!f->location[0]) {
                snprintf(why, wn, "redirect without a Location from %.200s", u->host);
                goto done;
            }
            if (hop == 5) {
                snprintf(why, wn, "more than 5 redirects");
                goto done;
            }
            char next[4096];
            if (resolve_location(u, f->location, next, sizeof next)) {
                snprintf(why, wn, "redirect to a URL too long");
                goto done;
            }
            memcpy(cur_s, next, sizeof cur_s);
            continue;
        }
        snprintf(why, wn, "the URL answered HTTP %d", f->status);
        goto done;
    }
    rc = 0;
done:
    free(u);
    free(f);
    return rc;
}

/* =======================================================================================
 * The TLS client context
 * ===================================================================================== */

#ifdef CLIP_HAVE_TLS
int clip_fetch_tls_new(const clip_fetch_policy *pol, const char *prog, clip_fetch_tls **out)
{
    *out = NULL;
    clip_fetch_tls *tls = malloc(sizeof *tls);
    SSL_CTX *ctx = tls ? SSL_CTX_new(TLS_client_method()) : NULL;
    if (!ctx) {
        free(tls);
        return -1;
    }
    SSL_CTX_set_min_proto_version(ctx, TLS1_2_VERSION);
    SSL_CTX_set_verify(ctx, SSL_VERIFY_PEER, NULL);
    SSL_CTX_set_default_verify_paths(ctx);
    if (pol->ca_file && SSL_CTX_load_verify_locations(ctx, pol->ca_file, NULL) != 1) {
        fprintf(stderr, "%s: cannot load CA certificates from %s\n", prog, pol->ca_file);
        SSL_CTX_free(ctx);
        free(tls);
        return -1;
    }
    tls->ctx = ctx;
    *out = tls;
    return 0;
}

void clip_fetch_tls_free(clip_fetch_tls *tls)
{
    if (!tls) return;
    SSL_CTX_free(tls->ctx);
    free(tls);
}
#else
int clip_fetch_tls_new(const clip_fetch_policy *pol, const char *prog, clip_fetch_tls **out)
{
    if (pol->ca_file) fprintf(stderr, "%s: --ca-file ignored: built without TLS\n", prog);
    *out = NULL;
    return 0;
}

void clip_fetch_tls_free(clip_fetch_tls *tls) { (void)tls; }
#endif
