/* server.c -- `clip serve`: the listener, the connections, the options.
 *
 * Concurrency model: one thread per connection, capped (--max-connections). A connection
 * thread blocks only on its own socket (poll with deadlines), so a slow upload or a stalled
 * client ties up its own thread and nothing else; the cap and the header/body timeouts bound
 * what hostile clients can hold. The same threads decode base64, fetch URLs, decode and
 * preprocess images -- that CPU work runs in parallel on every core. Only the forward pass
 * is serialised: every request hands its preprocessed inputs to ONE inference thread, which
 * stacks requests that arrive together into one clip_encode_images / clip_encode_texts call
 * (dynamic batching). An epoll loop with a worker pool would save the idle threads' stacks
 * but needs every parser to be resumable and a second hand-off for the CPU work; with
 * small thread stacks the per-connection cost here is a few pages of resident memory.
 *
 * Lives here: options and CLIP_* variables, the listening socket, one thread per
 * connection reading requests (pipelined, bodies by Content-Length or chunked, with
 * deadlines) and writing answers, the access log, signals and shutdown, dropping root, and
 * the start-up that loads and warms the models and starts the helpers. Must not touch: the
 * routes and their JSON (api.c: a request goes in, a status and a body come out), the
 * protocol's parsing (http.c), URL fetching (fetch.c), and the tensors: the server sizes
 * nothing by a model's shape.
 *
 * Environment variables (each the default of the option of the same name; the option wins):
 *   CLIP_MODEL            -m PATH / --model NAME=PATH (comma-separated list; first is default)
 *   CLIP_HOST             --host ADDR              127.0.0.1
 *   CLIP_PORT             --port N                 9001 (0: any free port, printed)
 *   CLIP_THREADS          --threads N              inference threads, 0 = all CPUs
 *   CLIP_API_KEY          --api-key KEY            none (keys accepted and ignored)
 *   CLIP_MAX_BODY_MB      --max-body-mb N          32
 *   CLIP_MAX_BATCH        --max-batch N            8 (images/texts/prompts per request,
 *                                                   and per forward)
 *   CLIP_BATCH_WAIT_MS    --batch-wait-ms N        5 (longest wait for a batch to fill)
 *   CLIP_MAX_PIXELS       --max-pixels N           50000000
 *   CLIP_ALLOW_PRIVATE_URLS --allow-private-urls   off (set to 1 to allow)
 *   CLIP_ALLOWED_HOSTS    --allowed-hosts a,b      any public host
 *   CLIP_URL_TIMEOUT      --url-timeout S          10 (whole fetch, redirects included)
 *   CLIP_URL_MAX_MB       --url-max-mb N           20
 *   CLIP_CA_FILE          --ca-file PEM            system CAs (SSL_CERT_FILE also works)
 *   CLIP_CORS             --cors ORIGIN            off ("*" or one origin)
 *   CLIP_QUIET            --quiet                  access log on (set to 1 for off)
 *   CLIP_MAX_CONNECTIONS  --max-connections N      512 (beyond: 503 and close)
 *   CLIP_HEADER_TIMEOUT   --header-timeout S       10 (idle keep-alive + request head)
 *   CLIP_USER             --user NAME              none (started as root: become NAME once the
 *                                                   port is bound and the models are loaded)
 *   CLIP_BODY_TIMEOUT     --body-timeout S         30 (longest silence while a body uploads;
 *                                                   after it, bodies must average 1 KB/s)
 *   CLIP_TEXT_CACHE       --text-cache N           4096 text embeddings remembered, least
 *                                                   recently used evicted (0: off); an entry
 *                                                   is about 4 * (embed_dim + 77) + 64 bytes
 */
#include "server.h"

#include "api.h"
#include "batcher.h"
#include "clip.h"
#include "fetch.h"
#include "http.h"
#include "json.h"
#include "textcache.h"

#include <arpa/inet.h>
#include <errno.h>
#include <fcntl.h>
#include <grp.h>
#include <netdb.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <poll.h>
#include <pthread.h>
#include <pwd.h>
#include <signal.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/types.h>
#include <time.h>
#include <unistd.h>
#ifdef __GLIBC__
#include <malloc.h>
#endif

static double now_s(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + (double)ts.tv_nsec * 1e-9;
}

static int is_method(const clip_http_head *h, const char *method)
{
    return strlen(method) == h->method_len && memcmp(h->method, method, h->method_len) == 0;
}

/* =======================================================================================
 * Configuration
 * ===================================================================================== */

typedef struct config {
    clip_api_model_list models;
    clip_api_options api;        /* the API's limits, image URLs' policy among them */
    const char *host;
    int port;
    int threads;
    const char *matmul;          /* the matmul kernel (NULL: the best this CPU runs) */
    int batch_wait_ms;
    const char *cors;
    int quiet;
    int max_connections;
    double header_timeout;
    double body_timeout;
    int text_cache;
    const char *user;            /* drop root to this user after binding */
} config;

static void config_defaults(config *c)
{
    memset(c, 0, sizeof *c);
    clip_api_options_default(&c->api);
    c->host = "127.0.0.1";
    c->port = 9001;
    c->batch_wait_ms = 5;
    c->max_connections = 512;
    c->header_timeout = 10;
    c->body_timeout = 30;
    c->text_cache = 4096;
}

static int parse_long(const char *s, long lo, long hi, long *out)
{
    if (!s || !*s) return -1;
    char *end;
    errno = 0;
    long v = strtol(s, &end, 10);
    if (errno || *end || v < lo || v > hi) return -1;
    *out = v;
    return 0;
}

static int truthy(const char *s)
{
    return s && *s && strcmp(s, "0") != 0 && strcasecmp(s, "false") != 0 &&
           strcasecmp(s, "no") != 0 && strcasecmp(s, "off") != 0;
}

typedef struct option_def {
    const char *flag;      /* "--port" */
    const char *env;       /* "CLIP_PORT" */
    int kind;              /* OPT_* */
    long lo, hi;
} option_def;

enum { OPT_MODEL, OPT_HOST, OPT_PORT, OPT_THREADS, OPT_KEY, OPT_BODY, OPT_BATCH, OPT_WAIT,
       OPT_PIXELS, OPT_PRIVATE, OPT_HOSTS, OPT_URL_TIMEOUT, OPT_URL_MAX, OPT_CA, OPT_CORS,
       OPT_QUIET, OPT_CONNS, OPT_HEADER_TIMEOUT, OPT_BODY_TIMEOUT, OPT_TEXT_CACHE, OPT_USER,
       OPT_MATMUL, OPT_COUNT };

static const option_def option_defs[OPT_COUNT] = {
    [OPT_MODEL]          = {"--model", "CLIP_MODEL", OPT_MODEL, 0, 0},
    [OPT_HOST]           = {"--host", "CLIP_HOST", OPT_HOST, 0, 0},
    [OPT_PORT]           = {"--port", "CLIP_PORT", OPT_PORT, 0, 65535},
    [OPT_THREADS]        = {"--threads", "CLIP_THREADS", OPT_THREADS, 0, 1024},
    [OPT_KEY]            = {"--api-key", "CLIP_API_KEY", OPT_KEY, 0, 0},
    [OPT_BODY]           = {"--max-body-mb", "CLIP_MAX_BODY_MB", OPT_BODY, 1, 1024},
    [OPT_BATCH]          = {"--max-batch", "CLIP_MAX_BATCH", OPT_BATCH, 1, 256},
    [OPT_WAIT]           = {"--batch-wait-ms", "CLIP_BATCH_WAIT_MS", OPT_WAIT, 0, 1000},
    [OPT_PIXELS]         = {"--max-pixels", "CLIP_MAX_PIXELS", OPT_PIXELS, 1, 1000000000L},
    [OPT_PRIVATE]        = {"--allow-private-urls", "CLIP_ALLOW_PRIVATE_URLS", OPT_PRIVATE, 0, 0},
    [OPT_HOSTS]          = {"--allowed-hosts", "CLIP_ALLOWED_HOSTS", OPT_HOSTS, 0, 0},
    [OPT_URL_TIMEOUT]    = {"--url-timeout", "CLIP_URL_TIMEOUT", OPT_URL_TIMEOUT, 1, 3600},
    [OPT_URL_MAX]        = {"--url-max-mb", "CLIP_URL_MAX_MB", OPT_URL_MAX, 1, 1024},
    [OPT_CA]             = {"--ca-file", "CLIP_CA_FILE", OPT_CA, 0, 0},
    [OPT_CORS]           = {"--cors", "CLIP_CORS", OPT_CORS, 0, 0},
    [OPT_QUIET]          = {"--quiet", "CLIP_QUIET", OPT_QUIET, 0, 0},
    [OPT_CONNS]          = {"--max-connections", "CLIP_MAX_CONNECTIONS", OPT_CONNS, 1, 100000},
    [OPT_HEADER_TIMEOUT] = {"--header-timeout", "CLIP_HEADER_TIMEOUT", OPT_HEADER_TIMEOUT, 1, 3600},
    [OPT_BODY_TIMEOUT]   = {"--body-timeout", "CLIP_BODY_TIMEOUT", OPT_BODY_TIMEOUT, 1, 3600},
    [OPT_TEXT_CACHE]     = {"--text-cache", "CLIP_TEXT_CACHE", OPT_TEXT_CACHE, 0, 1000000},
    [OPT_USER]           = {"--user", "CLIP_USER", OPT_USER, 0, 0},
    [OPT_MATMUL]         = {"--matmul", "CLIP_MATMUL", OPT_MATMUL, 0, 0},
};

/* Applies one option's value (from argv or the environment). `from` names it in errors. */
static int apply_option(config *c, int kind, char *value, const char *from)
{
    const option_def *d = &option_defs[kind];
    long v = 0;
    int numeric = d->hi > d->lo;
    if (numeric && parse_long(value, d->lo, d->hi, &v)) {
        fprintf(stderr, "clip serve: %s wants a whole number from %ld to %ld (got '%s')\n",
                from, d->lo, d->hi, value ? value : "");
        return -1;
    }
    switch (kind) {
    case OPT_MODEL: return clip_api_model_add_list(&c->models, value);   /* CLIP_MODEL: a list */
    case OPT_HOST: c->host = value; return 0;
    case OPT_PORT: c->port = (int)v; return 0;
    case OPT_THREADS: c->threads = (int)v; return 0;
    case OPT_KEY: c->api.api_key = *value ? value : NULL; return 0;
    case OPT_BODY: c->api.max_body = (size_t)v << 20; return 0;
    case OPT_BATCH: c->api.max_batch = (int)v; return 0;
    case OPT_WAIT: c->batch_wait_ms = (int)v; return 0;
    case OPT_PIXELS: c->api.max_pixels = (uint64_t)v; return 0;
    case OPT_PRIVATE: c->api.fetch.allow_private = truthy(value); return 0;
    case OPT_HOSTS: c->api.fetch.allowed_hosts = *value ? value : NULL; return 0;
    case OPT_URL_TIMEOUT: c->api.fetch.timeout = (double)v; return 0;
    case OPT_URL_MAX: c->api.fetch.max_bytes = (size_t)v << 20; return 0;
    case OPT_CA: c->api.fetch.ca_file = *value ? value : NULL; return 0;
    case OPT_CORS: c->cors = *value ? value : NULL; return 0;
    case OPT_QUIET: c->quiet = truthy(value); return 0;
    case OPT_CONNS: c->max_connections = (int)v; return 0;
    case OPT_HEADER_TIMEOUT: c->header_timeout = (double)v; return 0;
    case OPT_BODY_TIMEOUT: c->body_timeout = (double)v; return 0;
    case OPT_TEXT_CACHE: c->text_cache = (int)v; return 0;
    case OPT_USER: c->user = *value ? value : NULL; return 0;
    case OPT_MATMUL: c->matmul = *value ? value : NULL; return 0;
    }
    return -1;
}

static void serve_usage(FILE *f)
{
    fprintf(f,
        "usage: clip serve [-m MODEL.clip | --model NAME=PATH ...] [options]\n"
        "\n"
        "  -m, --model PATH|NAME=PATH  a model to serve (repeatable; the first is the default\n"
        "                             for requests without clip_version_id)      CLIP_MODEL\n"
        "  --host ADDR                listen address (127.0.0.1)                  CLIP_HOST\n"
        "  --port N                   port (9001; 0 picks a free one, printed)    CLIP_PORT\n"
        "  --threads N                inference threads (0 = all CPUs)            CLIP_THREADS\n"
        "  --api-key KEY              require this key on /clip/* routes          CLIP_API_KEY\n"
        "  --max-body-mb N            request body limit (32)                     CLIP_MAX_BODY_MB\n"
        "  --max-batch N              inputs per request and per forward (8)      CLIP_MAX_BATCH\n"
        "  --batch-wait-ms N          longest wait for a batch to fill (5)        CLIP_BATCH_WAIT_MS\n"
        "  --max-pixels N             image pixel limit (50000000)                CLIP_MAX_PIXELS\n"
        "  --allow-private-urls       let image URLs reach private addresses      CLIP_ALLOW_PRIVATE_URLS\n"
        "  --allowed-hosts a,b        only fetch image URLs from these hosts      CLIP_ALLOWED_HOSTS\n"
        "  --url-timeout S            whole image download, redirects too (10)    CLIP_URL_TIMEOUT\n"
        "  --url-max-mb N             image download limit (20)                   CLIP_URL_MAX_MB\n"
        "  --ca-file PEM              CA certificates for https image URLs        CLIP_CA_FILE\n"
        "  --cors ORIGIN              allow browsers from ORIGIN (or *)           CLIP_CORS\n"
        "  --quiet                    no access log                               CLIP_QUIET\n"
        "  --max-connections N        open connections (512; more get 503)        CLIP_MAX_CONNECTIONS\n"
        "  --header-timeout S         idle keep-alive and request head (10)       CLIP_HEADER_TIMEOUT\n"
        "  --body-timeout S           upload silence limit, then >= 1 KB/s (30)   CLIP_BODY_TIMEOUT\n"
        "  --user NAME                started as root: become NAME after binding  CLIP_USER\n"
        "  --text-cache N             text embeddings remembered (4096; 0 = off)  CLIP_TEXT_CACHE\n"
        "  --matmul KERNEL            auto, avx512, avx2, blas, ref (auto)        CLIP_MATMUL\n");
}

/* Environment first, then the command line over it. Returns 1 for --help. */
static int parse_serve_args(config *c, int argc, char **argv)
{
    config_defaults(c);
    for (int k = 0; k < OPT_COUNT; k++) {
        char *v = getenv(option_defs[k].env);
        if (v && apply_option(c, k, v, option_defs[k].env)) return -1;
    }
    int cli_models = 0;
    for (int i = 1; i < argc; i++) {
        const char *a = argv[i];
        if (strcmp(a, "-h") == 0 || strcmp(a, "--help") == 0) return 1;
        int kind = -1;
        if (strcmp(a, "-m") == 0) kind = OPT_MODEL;
        for (int k = 0; k < OPT_COUNT && kind < 0; k++)
            if (strcmp(a, option_defs[k].flag) == 0) kind = k;
        if (kind < 0) {
            fprintf(stderr, "clip serve: unknown option %s (see clip serve --help)\n", a);
            return -1;
        }
        if (kind == OPT_PRIVATE || kind == OPT_QUIET) {
            apply_option(c, kind, (char *)"1", a);
            continue;
        }
        if (i + 1 >= argc) {
            fprintf(stderr, "clip serve: %s wants a value\n", a);
            return -1;
        }
        if (kind == OPT_MODEL) {
            if (!cli_models++) c->models.n = 0;   /* the command line replaces CLIP_MODEL */
            if (clip_api_model_add(&c->models, argv[++i])) return -1;
            continue;
        }
        if (apply_option(c, kind, argv[++i], a)) return -1;
    }
    return 0;
}

/* =======================================================================================
 * Connections: one thread each, reading requests (pipelined) and writing answers
 * ===================================================================================== */

typedef struct server {
    config cfg;
    clip_api api;
    clip_api_model models[CLIP_API_MAX_MODELS];
    clip_batcher *batcher;
    clip_text_cache *cache;
    clip_fanout *fanout;
    int listen_fd;
    int stop_pipe[2];          /* readable once shutdown began                           */
    atomic_int stopping;
    pthread_mutex_t conn_mu;
    pthread_cond_t conn_cv;
    int n_conns;
    int trim_pending;          /* a connection closed since memory was last given back    */
    double last_close;         /* now_s() when the last connection closed                 */
    pthread_attr_t thread_attr;
} server;

typedef struct conn {
    server *srv;
    int fd;
    char peer[64];
    char *in;                  /* received bytes not yet consumed                         */
    size_t len, cap;
} conn;

/* A body must keep arriving at this average rate once its first --body-timeout seconds are
 * over. --body-timeout alone bounds only silence: a client sending one byte a second is
 * never silent, and a few hundred of them would hold every connection slot for days. */
#define MIN_BODY_RATE 1024.0   /* bytes per second */

/* The deadline for the next bytes of a body that started arriving at `started` and has
 * delivered `received` bytes: the sooner of the silence limit and the pace limit. */
static double body_deadline(const config *cfg, double started, size_t received)
{
    double paced = started + cfg->body_timeout + (double)received / MIN_BODY_RATE;
    double silence = now_s() + cfg->body_timeout;
    return paced < silence ? paced : silence;
}

/* Appends received bytes; 1 read, 0 peer closed, -1 timeout/error/shutdown (idle only). */
static int conn_fill(conn *c, double deadline, int idle)
{
    if (c->cap - c->len < 4096) {
        size_t ncap = c->cap ? c->cap * 2 : 16384;
        char *p = realloc(c->in, ncap);
        if (!p) return -1;
        c->in = p;
        c->cap = ncap;
    }
    for (;;) {
        double left = deadline - now_s();
        if (left <= 0) return -1;
        struct pollfd p[2] = {{.fd = c->fd, .events = POLLIN},
                              {.fd = c->srv->stop_pipe[0], .events = POLLIN}};
        int r = poll(p, idle ? 2 : 1, (int)(left * 1000) + 1);
        if (r < 0 && errno == EINTR) continue;
        if (r < 0) return -1;
        if (r == 0) continue;
        if (idle && (p[1].revents & POLLIN) && !(p[0].revents & POLLIN)) return -1;
        ssize_t n = recv(c->fd, c->in + c->len, c->cap - c->len, 0);
        if (n > 0) {
            c->len += (size_t)n;
            return 1;
        }
        if (n == 0) return 0;
        if (errno == EINTR || errno == EAGAIN) continue;
        return -1;
    }
}

static void conn_consume(conn *c, size_t n)
{
    memmove(c->in, c->in + n, c->len - n);
    c->len -= n;
    /* Give back a big upload's buffer instead of holding it while idle. */
    if (c->cap > (1u << 20) && c->len < 16384) {
        char *p = realloc(c->in, 65536);
        if (p) {
            c->in = p;
            c->cap = 65536;
        }
    }
}

static int send_all(int fd, const char *p, size_t n, int more)
{
    while (n > 0) {
        ssize_t w = send(fd, p, n, MSG_NOSIGNAL | (more ? MSG_MORE : 0));
        if (w > 0) { p += w; n -= (size_t)w; continue; }
        if (w < 0 && errno == EINTR) continue;
        return -1;   /* SO_SNDTIMEO expired or the peer went away */
    }
    return 0;
}

static void access_log(const server *s, const conn *c, const char *method, size_t ml,
                       const char *target, size_t tl, int status, size_t bytes, double start)
{
    if (s->cfg.quiet) return;
    char when[32];
    time_t t = time(NULL);
    struct tm tm;
    gmtime_r(&t, &tm);
    strftime(when, sizeof when, "%Y-%m-%dT%H:%M:%SZ", &tm);
    if (!method) method = "-", ml = 1;
    if (!target) target = "-", tl = 1;
    fprintf(stderr, "%s %s \"%.*s %.*s\" %d %zu %.1fms\n", when, c->peer,
            (int)(ml > 16 ? 16 : ml), method, (int)(tl > 200 ? 200 : tl), target, status,
            bytes, (now_s() - start) * 1000.0);
}

/* Writes one answer. Returns 0 when the connection may stay open. */
static int send_response(conn *c, int minor, int keep, int head_only, clip_http_response *r,
                         const char *origin, size_t origin_len)
{
    clip_buf h = {0};
    clip_http_write_head(&h, minor, r, keep, c->srv->cfg.cors, origin, origin_len);
    int rc = h.oom ? -1 : send_all(c->fd, h.data, h.len, !head_only && r->body.len);
    if (rc == 0 && !head_only && r->body.len) rc = send_all(c->fd, r->body.data, r->body.len, 0);
    clip_buf_free(&h);
    return rc;
}

/* Answers a request that cannot be read further (malformed, too large): then closes. */
static void fail_and_close(conn *c, int status, const char *why, const char *m, size_t ml,
                           const char *t, size_t tl, double start)
{
    clip_http_response r = {0};
    if (status == 413)
        clip_api_message(&r, 413, "Request body is larger than the limit of %zu MB "
                         "(--max-body-mb).", c->srv->cfg.api.max_body >> 20);
    else if (status == 431)
        clip_api_message(&r, 431, "Request header fields too large: %s.", why);
    else
        clip_api_message(&r, status, "%s: %s.", clip_http_status_text(status), why);
    send_response(c, 1, 0, 0, &r, NULL, 0);
    access_log(c->srv, c, m, ml, t, tl, status, r.body.len, start);
    clip_buf_free(&r.body);
}

/* Reads, routes and answers requests until the connection closes. */
static void conn_serve(conn *c)
{
    server *s = c->srv;
    const config *cfg = &s->cfg;
    clip_buf chunked = {0}, head_copy = {0};
    for (;;) {
        /* The head: idle keep-alive time and the head itself share one deadline, so a
         * client dribbling header bytes is dropped as surely as a silent one. */
        double head_deadline = now_s() + cfg->header_timeout;
        clip_http_head h;
        long head_len;
        int status = 0;
        const char *why = NULL;
        for (;;) {
            head_len = c->len ? clip_http_parse_head(c->in, c->len, &h, &status, &why) : 0;
            if (head_len != 0) break;
            int idle = c->len == 0;
            if (idle && atomic_load(&s->stopping)) goto out;
            int r = conn_fill(c, head_deadline, idle);
            if (r <= 0) {
                if (r < 0 && c->len > 0 && !atomic_load(&s->stopping))
                    fail_and_close(c, 408, "the request head was not received in time", NULL, 0, NULL, 0, now_s());
                goto out;
            }
        }
        double start = now_s();
        if (head_len < 0) {
            fail_and_close(c, status, why, NULL, 0, NULL, 0, start);
            goto out;
        }
        /* The body may move the input buffer: keep the head's fields in a copy of it. */
        clip_buf_reset(&head_copy);
        clip_buf_append(&head_copy, c->in, (size_t)head_len);
        if (head_copy.oom || clip_http_parse_head(head_copy.data, head_copy.len, &h, &status,
                                                  &why) != head_len) {
            fail_and_close(c, 503, "out of memory", NULL, 0, NULL, 0, start);
            goto out;
        }
        int keep = h.keep_alive && !atomic_load(&s->stopping);
        const char *path = h.target;
        size_t plen = h.target_len;
        const char *qmark = memchr(path, '?', plen);
        const char *query = qmark ? qmark + 1 : "";
        size_t qlen = qmark ? plen - (size_t)(qmark - path) - 1 : 0;
        if (qmark) plen = (size_t)(qmark - path);
        /* Announce an inference request as early as its head, so the batcher can wait
         * for it while it uploads and decodes (bounded by --batch-wait-ms). */
        int announced = 0;
        if (s->api.batcher && clip_api_is_inference(h.method, h.method_len, path, plen)) {
            clip_batcher_announce(s->api.batcher, +1);
            announced = 1;
        }
        /* The body: refused from the header when too large, before reading a byte. */
        if (h.has_length && h.length > cfg->api.max_body) {
            if (announced) clip_batcher_announce(s->api.batcher, -1);
            fail_and_close(c, 413, NULL, h.method, h.method_len, h.target, h.target_len, start);
            goto out;
        }
        if (h.expect_continue && h.minor >= 1 && (h.chunked || h.length > 0) &&
            c->len == (size_t)head_len) {
            static const char cont[] = "HTTP/1.1 100 Continue\r\n\r\n";
            send_all(c->fd, cont, sizeof cont - 1, 0);
        }
        const char *body = NULL;
        size_t body_len = 0, consumed = (size_t)head_len;
        int body_status = 0;
        const char *body_why = NULL;
        if (h.chunked) {
            clip_http_chunked ch = {0};
            clip_buf_reset(&chunked);
            size_t pos = (size_t)head_len;
            size_t received = c->len - pos;
            double body_started = now_s();
            for (;;) {
                size_t used;
                int r = clip_http_chunked_feed(&ch, c->in + pos, c->len - pos, &used, &chunked,
                                               cfg->api.max_body, &body_status, &body_why);
                pos += used;
                if (r < 0) break;
                if (r == 1) break;
                /* Drop decoded framing so a long trickle of chunks uses bounded memory. */
                conn_consume(c, pos);
                pos = 0;
                size_t before = c->len;
                int f = conn_fill(c, body_deadline(cfg, body_started, received), 0);
                if (f <= 0) {
                    body_status = -1;
                    break;
                }
                received += c->len - before;
            }
            consumed = pos;
            body = chunked.data;
            body_len = chunked.len;
        } else if (h.has_length && h.length > 0) {
            size_t need = (size_t)head_len + (size_t)h.length;
            if (c->cap < need) {
                char *p = realloc(c->in, need);
                if (!p) {
                    if (announced) clip_batcher_announce(s->api.batcher, -1);
                    clip_http_response r = {0};
                    clip_api_message(&r, 503, "Out of memory for the request body; try again later.");
                    send_response(c, h.minor, 0, 0, &r, h.origin, h.origin_len);
                    clip_buf_free(&r.body);
                    goto out;
                }
                c->in = p;
                c->cap = need;
            }
            double body_started = now_s();
            while (c->len < need) {
                int f = conn_fill(c, body_deadline(cfg, body_started, c->len - (size_t)head_len), 0);
                if (f <= 0) {
                    body_status = -1;
                    break;
                }
            }
            body = c->in + head_len;
            body_len = (size_t)h.length;
            consumed = need;
        }
        if (body_status != 0) {
            if (announced) clip_batcher_announce(s->api.batcher, -1);
            if (body_status > 0)
                fail_and_close(c, body_status, body_why, h.method, h.method_len, h.target,
                               h.target_len, start);
            else   /* the client vanished or stalled mid-body: nobody to answer */
                access_log(s, c, h.method, h.method_len, h.target, h.target_len, 408, 0, start);
            goto out;
        }
        clip_http_response r = {0};
        int head_only = is_method(&h, "HEAD");
        clip_api_request req = {h.method, h.method_len, path, plen, query, qlen,
                                h.authorization, h.authorization_len, body, body_len,
                                start, announced};
        clip_api_handle(&s->api, &req, &r);
        announced = req.announced;
        if (announced) clip_batcher_announce(s->api.batcher, -1);
        if (r.body.oom) {
            clip_buf_free(&r.body);
            memset(&r, 0, sizeof r);
            clip_api_message(&r, 503, "Out of memory writing the answer; try again later.");
        }
        keep = keep && !atomic_load(&s->stopping);
        int sent = send_response(c, h.minor, keep, head_only, &r, h.origin, h.origin_len);
        access_log(s, c, h.method, h.method_len, h.target, h.target_len, r.status,
                   head_only ? 0 : r.body.len, start);
        clip_buf_free(&r.body);
        if (sent || !keep) goto out;
        conn_consume(c, consumed);
    }
out:
    clip_buf_free(&chunked);
    clip_buf_free(&head_copy);
}

static void *conn_main(void *arg)
{
    conn *c = arg;
    server *s = c->srv;
    conn_serve(c);
    /* Half-close and drain briefly so an answer sent just before closing is not lost to
     * a TCP reset caused by unread request bytes. */
    shutdown(c->fd, SHUT_WR);
    char sink[4096];
    double until = now_s() + 0.5;
    struct pollfd p = {.fd = c->fd, .events = POLLIN};
    while (now_s() < until && poll(&p, 1, 100) > 0 && recv(c->fd, sink, sizeof sink, 0) > 0) {}
    close(c->fd);
    free(c->in);
    free(c);
    pthread_mutex_lock(&s->conn_mu);
    s->n_conns--;
    s->trim_pending = 1;
    s->last_close = now_s();
    pthread_cond_broadcast(&s->conn_cv);
    pthread_mutex_unlock(&s->conn_mu);
    return NULL;
}

/* Request buffers stay in the heap between requests (keep_request_memory), and a burst
 * leaves them there: 12 connections sending 8 images of 640 x 480 twice left the server
 * 95 MB bigger after they had gone (tests/test_faults.py). Once no connection is open and
 * the last one closed a second ago, the free memory goes back to the system. Not sooner:
 * clients that connect once per request would page-fault their buffers in every time. */
static void give_back_idle_memory(server *s)
{
    pthread_mutex_lock(&s->conn_mu);
    int idle = s->trim_pending && s->n_conns == 0 && now_s() - s->last_close >= 1.0;
    if (idle) s->trim_pending = 0;
    pthread_mutex_unlock(&s->conn_mu);
#ifdef __GLIBC__
    if (idle) malloc_trim(0);
#endif
}

/* =======================================================================================
 * Server: listen, accept, signals, shutdown
 * ===================================================================================== */

/* Binding a low port may need root; serving never does. A server started as root takes on
 * --user once its socket is bound and its models, CA file and threads are set up, before it
 * reads a single request; glibc applies setuid to every thread. Started as root without
 * --user, it says so rather than guessing an account. */
static int drop_privileges(const char *user)
{
    if (geteuid() != 0) {
        if (user) {
            struct passwd *pw = getpwnam(user);
            if (!pw || pw->pw_uid != geteuid()) {
                fprintf(stderr, "clip serve: --user %s needs the server to start as root\n", user);
                return -1;
            }
        }
        return 0;
    }
    if (!user) {
        fprintf(stderr, "clip serve: warning: running as root; --user NAME would drop it\n");
        return 0;
    }
    struct passwd *pw = getpwnam(user);
    if (!pw) {
        fprintf(stderr, "clip serve: --user %s: no such user\n", user);
        return -1;
    }
    if (setgroups(0, NULL) || setgid(pw->pw_gid) || setuid(pw->pw_uid)) {
        fprintf(stderr, "clip serve: --user %s: %s\n", user, strerror(errno));
        return -1;
    }
    if (pw->pw_uid != 0 && (setuid(0) == 0 || geteuid() == 0)) {
        fprintf(stderr, "clip serve: --user %s: root could not be given up\n", user);
        return -1;
    }
    fprintf(stderr, "clip serve: running as %s (uid %u)\n", user, (unsigned)pw->pw_uid);
    return 0;
}

static int listen_on(server *s)
{
    struct addrinfo hints = {0}, *res = NULL;
    hints.ai_family = AF_UNSPEC;
    hints.ai_socktype = SOCK_STREAM;
    hints.ai_flags = AI_PASSIVE | AI_NUMERICSERV;
    char port[8];
    snprintf(port, sizeof port, "%d", s->cfg.port);
    int gai = getaddrinfo(s->cfg.host, port, &hints, &res);
    if (gai) {
        fprintf(stderr, "clip serve: cannot resolve --host %s: %s\n", s->cfg.host, gai_strerror(gai));
        return -1;
    }
    int fd = -1, saved = 0;
    for (struct addrinfo *ai = res; ai && fd < 0; ai = ai->ai_next) {
        fd = socket(ai->ai_family, SOCK_STREAM | SOCK_CLOEXEC, 0);
        if (fd < 0) { saved = errno; continue; }
        int one = 1;
        setsockopt(fd, SOL_SOCKET, SO_REUSEADDR, &one, sizeof one);
        if (bind(fd, ai->ai_addr, ai->ai_addrlen) || listen(fd, SOMAXCONN)) {
            saved = errno;
            close(fd);
            fd = -1;
        }
    }
    freeaddrinfo(res);
    if (fd < 0) {
        fprintf(stderr, "clip serve: cannot listen on %s:%d: %s\n", s->cfg.host, s->cfg.port,
                strerror(saved));
        return -1;
    }
    s->listen_fd = fd;
    return 0;
}

static void busy_close(int fd)
{
    static const char busy[] =
        "HTTP/1.1 503 Service Unavailable\r\nContent-Type: application/json\r\n"
        "Content-Length: 59\r\nRetry-After: 1\r\nConnection: close\r\n\r\n"
        "{\"message\":\"Server busy: too many open connections; retry\"}";
    send(fd, busy, sizeof busy - 1, MSG_NOSIGNAL | MSG_DONTWAIT);
    close(fd);
}

static void accept_loop(server *s)
{
    struct timeval tv = {.tv_sec = (long)s->cfg.body_timeout, .tv_usec = 0};
    for (;;) {
        struct pollfd p[2] = {{.fd = s->listen_fd, .events = POLLIN},
                              {.fd = s->stop_pipe[0], .events = POLLIN}};
        int r = poll(p, 2, 1000);   /* once a second: memory to give back? */
        if (r == 0) give_back_idle_memory(s);
        if (r == 0 || (r < 0 && errno == EINTR)) continue;
        if (r < 0 || (p[1].revents & POLLIN)) {
            atomic_store(&s->stopping, 1);
            return;
        }
        struct sockaddr_storage sa;
        socklen_t sl = sizeof sa;
        int fd = accept4(s->listen_fd, (struct sockaddr *)&sa, &sl, SOCK_CLOEXEC);
        if (fd < 0) {
            if (errno == EMFILE || errno == ENFILE || errno == ENOBUFS || errno == ENOMEM)
                usleep(10000);   /* out of descriptors: let connections finish */
            continue;
        }
        pthread_mutex_lock(&s->conn_mu);
        int full = s->n_conns >= s->cfg.max_connections;
        if (!full) s->n_conns++;
        pthread_mutex_unlock(&s->conn_mu);
        if (full) {
            busy_close(fd);
            continue;
        }
        /* Writes to a client that stops reading give up after the body timeout. */
        setsockopt(fd, SOL_SOCKET, SO_SNDTIMEO, &tv, sizeof tv);
        int one = 1;
        setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof one);
        conn *c = calloc(1, sizeof *c);
        pthread_t t;
        if (c) {
            c->srv = s;
            c->fd = fd;
            char ip[INET6_ADDRSTRLEN] = "?";
            if (sa.ss_family == AF_INET)
                inet_ntop(AF_INET, &((struct sockaddr_in *)&sa)->sin_addr, ip, sizeof ip);
            else if (sa.ss_family == AF_INET6)
                inet_ntop(AF_INET6, &((struct sockaddr_in6 *)&sa)->sin6_addr, ip, sizeof ip);
            snprintf(c->peer, sizeof c->peer, "%s", ip);
        }
        if (!c || pthread_create(&t, &s->thread_attr, conn_main, c)) {
            free(c);
            busy_close(fd);
            pthread_mutex_lock(&s->conn_mu);
            s->n_conns--;
            pthread_mutex_unlock(&s->conn_mu);
        }
    }
}

/* The write end of the running server's stop pipe, for the signal handler: a handler can
 * reach nothing else. Set once before the handler is installed. */
static volatile sig_atomic_t stop_fd = -1;

/* OpenBLAS starts its threads before main, with signals unblocked, so a signal may land on
 * any thread: a handler (not sigwait in one thread) is the only reliable catch. */
static void on_stop_signal(int sig)
{
    (void)sig;
    int saved = errno;
    char one = 1;
    if (stop_fd >= 0 && write(stop_fd, &one, 1) < 0) { /* the pipe is already readable */ }
    errno = saved;
}

/* Every image request allocates a few buffers of 100 KB to a few MB (the body, the
 * decoded bytes and pixels, stb's inflate output) and frees them when answered. glibc
 * serves blocks over 128 KB with fresh mmaps, so each request page-faulted its buffers in
 * again (and the kernel zeroed them): a 224 x 224 PNG took 7 ms to prepare instead of
 * 1.3. Blocks up to 32 MB (glibc's ceiling) now come from the heap and stay there for the
 * next request; up to 16 MB free at the top of a heap is kept rather than returned. 32, not
 * 4: a batch of 8 images has 4.8 MB of pixels, and faulting that in each time cost a
 * batch-8 request 20 ms of its 250 (decode 19 -> 7 ms, JSON parse 10 -> 2). Bigger blocks
 * (a body at the 32 MB limit) still come and go with mmap. One arena for every thread, so
 * that an idle server can give all of it back (give_back_idle_memory): malloc_trim returns
 * only the main arena's top, and with an arena per connection thread up to 16 tops of up
 * to 16 MB stayed. The few big allocations a request makes do not contend for its lock. */
static void keep_request_memory(void)
{
#ifdef __GLIBC__
    mallopt(M_MMAP_THRESHOLD, 32 << 20);
    mallopt(M_TRIM_THRESHOLD, 16 << 20);
    mallopt(M_ARENA_MAX, 1);
#endif
}

int clip_serve_main(int argc, char **argv)
{
    server *s = calloc(1, sizeof *s);
    if (!s) return 1;
    int rc = parse_serve_args(&s->cfg, argc, argv);
    if (rc) {
        if (rc > 0) serve_usage(stdout);
        free(s);
        return rc > 0 ? 0 : 2;
    }
    /* SIGPIPE (a client gone while OpenSSL writes) is ignored: the write's error is
     * enough. SIGINT/SIGTERM are caught once the stop pipe exists (below). */
    signal(SIGPIPE, SIG_IGN);
    keep_request_memory();
    int n_models = 0;
    rc = 1;
    clip_ctx_params params = {s->cfg.threads, s->cfg.matmul};
    if (clip_api_models_load(&s->cfg.models, &params, s->models, &n_models, "clip serve"))
        goto free_s;
    double warm[CLIP_API_MAX_MODELS];
    for (int i = 0; i < n_models; i++)
        if ((warm[i] = clip_api_model_warm_up(&s->models[i], "clip serve")) < 0) goto free_models;
    clip_api_init(&s->api, &s->cfg.api, s->models, n_models);
    s->cache = clip_text_cache_new((size_t)s->cfg.text_cache);
    if (!s->cache) {
        fprintf(stderr, "clip serve: no memory for a text cache of %d entries\n", s->cfg.text_cache);
        goto free_cache;
    }
    s->api.cache = s->cache;
    s->fanout = clip_fanout_start();
    if (!s->fanout) {
        fprintf(stderr, "clip serve: cannot start the image helper threads\n");
        goto stop_fanout;
    }
    s->api.fanout = s->fanout;
    if (clip_fetch_tls_new(&s->api.opt.fetch, "clip serve", &s->api.tls)) goto stop_fanout;
    if (pipe2(s->stop_pipe, O_CLOEXEC)) goto free_tls;
    if (listen_on(s)) goto close_pipe;
    if (drop_privileges(s->cfg.user)) goto close_listen;
    s->batcher = clip_batcher_start(s->cfg.api.max_batch, s->cfg.batch_wait_ms);
    if (!s->batcher) {
        fprintf(stderr, "clip serve: cannot start the inference thread\n");
        goto close_listen;
    }
    s->api.batcher = s->batcher;
    pthread_mutex_init(&s->conn_mu, NULL);
    pthread_cond_init(&s->conn_cv, NULL);
    pthread_attr_init(&s->thread_attr);
    pthread_attr_setdetachstate(&s->thread_attr, PTHREAD_CREATE_DETACHED);
    pthread_attr_setstacksize(&s->thread_attr, 512 * 1024);
    stop_fd = s->stop_pipe[1];
    struct sigaction sa_stop;
    memset(&sa_stop, 0, sizeof sa_stop);
    sa_stop.sa_handler = on_stop_signal;
    sa_stop.sa_flags = SA_RESTART;
    sigemptyset(&sa_stop.sa_mask);
    sigaction(SIGINT, &sa_stop, NULL);
    sigaction(SIGTERM, &sa_stop, NULL);

    struct sockaddr_storage sa;
    socklen_t sl = sizeof sa;
    int port = s->cfg.port;
    if (getsockname(s->listen_fd, (struct sockaddr *)&sa, &sl) == 0)
        port = ntohs(sa.ss_family == AF_INET6 ? ((struct sockaddr_in6 *)&sa)->sin6_port
                                              : ((struct sockaddr_in *)&sa)->sin_port);
    for (int i = 0; i < n_models; i++)
        fprintf(stderr, "clip serve: model %s (embed dim %zu, warmed up in %.0f ms)%s\n",
                s->models[i].name, clip_embed_floats(s->models[i].model), warm[i] * 1000.0,
                i == 0 ? " [default]" : "");
    fprintf(stderr, "clip serve: listening on http://%s:%d\n", s->cfg.host, port);

    accept_loop(s);

    /* Shutdown: no new connections; idle ones close at once, busy ones finish. */
    close(s->listen_fd);
    s->listen_fd = -1;
    pthread_mutex_lock(&s->conn_mu);
    while (s->n_conns > 0) pthread_cond_wait(&s->conn_cv, &s->conn_mu);
    pthread_mutex_unlock(&s->conn_mu);
    uint64_t forwards, inputs;
    clip_batcher_stats(s->batcher, &forwards, &inputs);
    clip_text_cache_counts tc;
    clip_text_cache_stats(s->cache, &tc);
    fprintf(stderr, "clip serve: stopped (%llu forwards, %llu inputs, %llu text cache hits)\n",
            (unsigned long long)forwards, (unsigned long long)inputs, (unsigned long long)tc.hits);
    clip_batcher_stop(s->batcher);
    pthread_attr_destroy(&s->thread_attr);
    pthread_cond_destroy(&s->conn_cv);
    pthread_mutex_destroy(&s->conn_mu);
    rc = 0;
close_listen:
    if (s->listen_fd >= 0) close(s->listen_fd);
close_pipe:
    stop_fd = -1;
    close(s->stop_pipe[0]);
    close(s->stop_pipe[1]);
free_tls:
    clip_fetch_tls_free(s->api.tls);
stop_fanout:
    clip_fanout_stop(s->fanout);
free_cache:
    clip_text_cache_free(s->cache);
free_models:
    clip_api_models_free(s->models, n_models);
free_s:
    free(s);
    return rc;
}
