/* api.c -- the Roboflow Inference Server's CLIP API: routes, inputs, answers, models.
 *
 * A request arrives here already read (server.c) or built in memory (`clip compare`):
 * method, path, query, Authorization and body. clip_api_handle picks the route, parses the
 * JSON, checks the API key and the model, turns the body into inputs (images as base64 or
 * URLs, texts), prepares them (decode and preprocess, tokenize) on the calling thread and
 * the fan-out's helpers, takes the texts it can from the cache, hands the rest to the
 * batcher as typed jobs, and writes the answer with the status, body and error shapes the
 * Roboflow server and FastAPI give: {"message": ...} for our checks, {"detail": [...]} for
 * request validation (422), {"detail": "Not Found"} for unknown routes.
 *
 * The models live here too: which to load (NAME=PATH specs, the default model), loading
 * them with a context each, and the warm-up forward run before the server listens.
 *
 * Lives here: everything a route knows. Must not touch: sockets, threads' lifecycles and
 * the HTTP framing (server.c, http.c), URL fetching beyond calling it (fetch.c), and the
 * tensors: buffers are sized with clip_image_floats / clip_text_ids / clip_embed_floats
 * and images loaded with clip_image_load, never from the hyperparameters.
 */
#include "api.h"

#include "base64.h"

#include <limits.h>
#include <pthread.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

/* =======================================================================================
 * Utilities
 * ===================================================================================== */

static double now_s(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + (double)ts.tv_nsec * 1e-9;
}

static int eq_exact(const char *s, size_t n, const char *w)
{
    return strlen(w) == n && memcmp(s, w, n) == 0;
}

/* Equal-length inputs take the same time whatever they hold: an attacker timing 401s
 * learns nothing about the key's prefix. */
static int ct_equal(const char *a, size_t alen, const char *b, size_t blen)
{
    unsigned char diff = (unsigned char)(alen != blen);
    size_t n = alen < blen ? alen : blen;
    for (size_t i = 0; i < blen; i++) {
        unsigned char x = i < n ? (unsigned char)a[i] : 0;
        diff |= (unsigned char)(x ^ (unsigned char)b[i]);
    }
    return diff == 0;
}

/* How many bytes of s (at most max) can be shown without cutting a UTF-8 sequence, so
 * quoted client strings in messages stay valid UTF-8. */
static int utf8_cut(const char *s, size_t len, size_t max)
{
    if (len <= max) return (int)len;
    size_t n = max;
    while (n > 0 && ((unsigned char)s[n] & 0xC0) == 0x80) n--;
    return (int)n;
}

/* =======================================================================================
 * Models: the registry of loaded models, named as requests select them
 * ===================================================================================== */

static char default_model_buf[PATH_MAX];
static pthread_once_t default_model_once = PTHREAD_ONCE_INIT;

static void find_default_model(void)
{
    char exe[PATH_MAX];
    ssize_t n = readlink("/proc/self/exe", exe, sizeof exe - 1);
    struct stat st;
    if (n > 0) {
        exe[n] = '\0';
        char *slash = strrchr(exe, '/');
        if (slash) {
            *slash = '\0';
            snprintf(default_model_buf, sizeof default_model_buf, "%.*s/weights/default.clip",
                     (int)(sizeof default_model_buf - 32), exe);
            if (stat(default_model_buf, &st) == 0) return;
        }
    }
    snprintf(default_model_buf, sizeof default_model_buf, "weights/default.clip");
    if (stat(default_model_buf, &st) == 0) return;
    default_model_buf[0] = '\0';
}

const char *clip_default_model_path(void)
{
    const char *env = getenv("CLIP_MODEL");
    if (env && *env) return env;
    /* Computed once; afterwards only read, from any thread. */
    pthread_once(&default_model_once, find_default_model);
    return default_model_buf[0] ? default_model_buf : NULL;
}

/* "NAME=PATH" or "PATH": a path alone takes its name from the model file. */
int clip_api_model_add(clip_api_model_list *list, char *spec)
{
    if (list->n == CLIP_API_MAX_MODELS) {
        fprintf(stderr, "clip serve: at most %d models\n", CLIP_API_MAX_MODELS);
        return -1;
    }
    char *eq = strchr(spec, '=');
    struct stat st;
    int i = list->n++;
    if (eq && eq != spec && stat(spec, &st) != 0) {
        *eq = '\0';
        list->spec[i].name = spec;
        list->spec[i].path = eq + 1;
    } else {
        list->spec[i].name = NULL;
        list->spec[i].path = spec;
    }
    return 0;
}

int clip_api_model_add_list(clip_api_model_list *list, char *specs)
{
    char *save = NULL;
    for (char *s = strtok_r(specs, ",", &save); s; s = strtok_r(NULL, ",", &save))
        if (clip_api_model_add(list, s)) return -1;
    return 0;
}

void clip_api_models_free(clip_api_model *slots, int n)
{
    for (int i = 0; i < n; i++) {
        clip_ctx_free(slots[i].ctx);
        clip_model_free(slots[i].model);
    }
}

int clip_api_models_load(const clip_api_model_list *list, const clip_ctx_params *params,
                         clip_api_model *slots, int *n_out, const char *prog)
{
    clip_api_model_list fallback = {.n = 1};
    const clip_api_model_list *specs = list;
    int n = list->n;
    if (n == 0) {
        pthread_once(&default_model_once, find_default_model);
        fallback.spec[0].path = default_model_buf[0] ? default_model_buf : NULL;
        if (!fallback.spec[0].path) {
            fprintf(stderr, "%s: no model given and the default model weights/default.clip was "
                    "found neither next to the binary nor in the current directory; pass "
                    "-m MODEL.clip (make one with clip-convert) or see weights/README.md\n",
                    prog);
            return -1;
        }
        specs = &fallback;
        n = 1;
    }
    *n_out = 0;
    for (int i = 0; i < n; i++) {
        clip_api_model *s = &slots[i];
        const char *path = specs->spec[i].path, *name = specs->spec[i].name;
        memset(s, 0, sizeof *s);
        clip_error err = {0};
        if (clip_model_load(path, &s->model, &err) != CLIP_OK) {
            fprintf(stderr, "%s: loading %s: %s\n", prog, path, err.msg);
            clip_api_models_free(slots, i);
            return -1;
        }
        const char *stored = clip_model_hparams(s->model)->name;
        snprintf(s->name, sizeof s->name, "%s", name ? name : stored[0] ? stored : "default");
        for (int j = 0; j < i; j++) {
            if (strcmp(slots[j].name, s->name) == 0) {
                fprintf(stderr, "%s: two models are named %s; name them with "
                        "--model NAME=PATH\n", prog, s->name);
                clip_api_models_free(slots, i + 1);
                return -1;
            }
        }
        if (clip_ctx_new(s->model, params, &s->ctx, &err) != CLIP_OK) {
            fprintf(stderr, "%s: %s: %s\n", prog, path, err.msg);
            clip_api_models_free(slots, i + 1);
            return -1;
        }
        *n_out = i + 1;
    }
    return 0;
}

/* The page faults of freshly mapped weights cost about 0.4 s for ViT-B/32 here. The image
 * is all zeros (a mid-gray after normalisation does not matter: every weight is read
 * whatever the pixels) and the text empty. */
double clip_api_model_warm_up(clip_api_model *s, const char *prog)
{
    double t0 = now_s();
    float *pixels = calloc(clip_image_floats(s->model), sizeof *pixels);
    float *emb = malloc(clip_embed_floats(s->model) * sizeof *emb);
    int32_t *ids = malloc(clip_text_ids(s->model) * sizeof *ids);
    clip_error err = {0};
    int ok = pixels && emb && ids &&
             clip_encode_images(s->ctx, pixels, 1, emb, &err) == CLIP_OK &&
             clip_tokenize(s->model, "", 0, ids, &err) == CLIP_OK &&
             clip_encode_texts(s->ctx, ids, 1, emb, &err) == CLIP_OK;
    if (!ok)
        fprintf(stderr, "%s: model %s: warm-up forward failed: %s\n", prog, s->name,
                err.msg[0] ? err.msg : "out of memory");
    free(pixels);
    free(emb);
    free(ids);
    return ok ? now_s() - t0 : -1;
}

/* =======================================================================================
 * Answers: the bodies of the routes and FastAPI's error shapes
 * ===================================================================================== */

void clip_api_message(clip_http_response *r, int status, const char *fmt, ...)
{
    char msg[1024];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(msg, sizeof msg, fmt, ap);
    va_end(ap);
    r->status = status;
    clip_buf_reset(&r->body);
    clip_buf_puts(&r->body, "{\"message\":");
    clip_json_write_string(&r->body, msg, strlen(msg));
    clip_buf_putc(&r->body, '}');
}

static void respond_detail(clip_http_response *r, int status, const char *detail)
{
    r->status = status;
    clip_buf_reset(&r->body);
    clip_buf_puts(&r->body, "{\"detail\":");
    clip_json_write_string(&r->body, detail, strlen(detail));
    clip_buf_putc(&r->body, '}');
}

/* A location in the body for 422 errors: ["body", "prompt", 2, ...]. */
typedef struct loc {
    int n;
    const char *key[6];
    long idx[6];               /* used where key is NULL                                  */
} loc;

static loc loc_of(const char *k1, const char *k2)
{
    loc l = {0};
    l.key[l.n++] = "body";
    if (k1) l.key[l.n++] = k1;
    if (k2) l.key[l.n++] = k2;
    return l;
}

static loc loc_key(loc l, const char *k)
{
    if (l.n < 6) l.key[l.n++] = k;
    return l;
}

static loc loc_idx(loc l, long i)
{
    if (l.n < 6) {
        l.key[l.n] = NULL;
        l.idx[l.n++] = i;
    }
    return l;
}

/* FastAPI's 422: {"detail":[{"type":..,"loc":[..],"msg":..,"input":..}]} */
static void respond_422(clip_http_response *r, const char *type, loc l, const char *msg,
                        const clip_json *input)
{
    r->status = 422;
    clip_buf *b = &r->body;
    clip_buf_reset(b);
    clip_buf_puts(b, "{\"detail\":[{\"type\":");
    clip_json_write_string(b, type, strlen(type));
    clip_buf_puts(b, ",\"loc\":[");
    for (int i = 0; i < l.n; i++) {
        if (i) clip_buf_putc(b, ',');
        if (l.key[i]) clip_json_write_string(b, l.key[i], strlen(l.key[i]));
        else clip_buf_printf(b, "%ld", l.idx[i]);
    }
    clip_buf_puts(b, "],\"msg\":");
    clip_json_write_string(b, msg, strlen(msg));
    clip_buf_puts(b, ",\"input\":");
    if (input) clip_json_write_value(b, input);
    else clip_buf_puts(b, "null");
    clip_buf_puts(b, "}]}");
}

void clip_api_write_embeddings(clip_buf *out, const float *emb, int n, int dim,
                               double seconds)
{
    clip_buf_puts(out, "{\"inference_id\":null,\"frame_id\":null,\"time\":");
    clip_json_write_double(out, seconds);
    clip_buf_puts(out, ",\"embeddings\":[");
    for (int i = 0; i < n; i++) {
        clip_buf_putc(out, i ? ',' : '[');
        if (i) clip_buf_putc(out, '[');
        for (int k = 0; k < dim; k++) {
            if (k) clip_buf_putc(out, ',');
            clip_json_write_float(out, emb[(size_t)i * dim + k]);
        }
        clip_buf_putc(out, ']');
    }
    clip_buf_puts(out, "]}");
}

/* =======================================================================================
 * Inputs: images (base64 or URL) and texts, prepared in the connection's thread (the
 * images of a request shared with the fan-out's helpers), texts looked up in the cache
 * ===================================================================================== */

enum { IN_IMAGE = 0, IN_TEXT = 1 };

typedef struct input {
    int kind;
    const char *s;             /* text, base64 data or URL                                 */
    size_t len;
    int is_url;
} input;

typedef struct request {
    clip_api *a;
    int model;
    int announced;             /* counted in the batcher's announcements                  */
    double start;
} request;

/* Loads one image into pixels (clip_image_floats of the model). Fills r on failure. */
static int prepare_image(request *q, const input *in, float *pixels, clip_http_response *r)
{
    const clip_api *a = q->a;
    const clip_api_model *m = &a->models[q->model];
    uint8_t *data = NULL;
    size_t len = 0;
    clip_buf fetched = {0};
    char why[512];
    if (in->is_url) {
        if (clip_fetch_url(&a->opt.fetch, a->tls, in->s, in->len, &fetched, why, sizeof why)) {
            clip_buf_free(&fetched);
            clip_api_message(r, 400, "Could not load input image. Cause: %s", why);
            return -1;
        }
        data = (uint8_t *)fetched.data;
        len = fetched.len;
    } else {
        const char *bwhy;
        if (clip_base64_decode(in->s, in->len, a->opt.max_body, &data, &len, &bwhy)) {
            clip_api_message(r, 400, "Could not load input image. Cause: %s", bwhy);
            return -1;
        }
    }
    clip_error err = {0};
    int rc = 0;
    if (!data || len == 0) {
        clip_api_message(r, 400, "Could not load input image. Cause: the image is empty.");
        rc = -1;
    } else if (clip_image_load(m->model, data, len, a->opt.max_pixels, pixels, &err) != CLIP_OK) {
        if (err.code == CLIP_ERR_NOMEM)
            clip_api_message(r, 503, "Out of memory decoding the image; try again later.");
        else
            clip_api_message(r, 400, "Could not load input image. Cause: %s", err.msg);
        rc = -1;
    }
    if (in->is_url) clip_buf_free(&fetched);
    else free(data);
    return rc;
}

/* The images of one request, prepared by the fan-out: item i into its own pixels and its
 * own response (the first failure in input order is answered, as if one by one). */
typedef struct image_work {
    request *q;
    const input **ins;
    float *pixels;
    size_t per_img;
    clip_http_response *errs;
    int *failed;
} image_work;

static void prepare_image_item(void *arg, int i)
{
    image_work *w = arg;
    w->failed[i] = prepare_image(w->q, w->ins[i], w->pixels + (size_t)i * w->per_img,
                                 &w->errs[i]) != 0;
}

/* Decodes every image of the request into pixels. Returns 0, or -1 with r filled. */
static int prepare_images(request *q, const input *ins, int n, int n_img, float *pixels,
                          size_t per_img, clip_http_response *r)
{
    const input **imgs = malloc((size_t)n_img * sizeof *imgs);
    clip_http_response *errs = calloc((size_t)n_img, sizeof *errs);
    int *failed = calloc((size_t)n_img, sizeof *failed);
    int rc = -1;
    if (!imgs || !errs || !failed) {
        clip_api_message(r, 503, "Out of memory; try again later.");
        goto done;
    }
    for (int i = 0, k = 0; i < n; i++)
        if (ins[i].kind == IN_IMAGE) imgs[k++] = &ins[i];
    image_work w = {q, imgs, pixels, per_img, errs, failed};
    clip_fanout_run(q->a->fanout, prepare_image_item, &w, n_img);
    rc = 0;
    for (int i = 0; i < n_img && rc == 0; i++) {
        if (failed[i]) {
            clip_buf_free(&r->body);
            *r = errs[i];
            memset(&errs[i], 0, sizeof errs[i]);
            rc = -1;
        }
    }
done:
    for (int i = 0; errs && i < n_img; i++) clip_buf_free(&errs[i].body);
    free(imgs);
    free(errs);
    free(failed);
    return rc;
}

/* Prepares every input (decode, tokenize), takes the texts it can from the cache, runs
 * the forwards for the rest, fills emb (rows in input order). Returns 0, or -1 with r
 * filled. */
static int compute(request *q, const input *ins, int n, float *emb, clip_http_response *r)
{
    clip_api *a = q->a;
    clip_api_model *m = &a->models[q->model];
    size_t per_img = clip_image_floats(m->model), ctx_len = clip_text_ids(m->model);
    int dim = (int)clip_embed_floats(m->model);
    int n_img = 0, n_txt = 0;
    for (int i = 0; i < n; i++) {
        if (ins[i].kind == IN_IMAGE) n_img++;
        else n_txt++;
    }
    float *pixels = n_img ? malloc((size_t)n_img * per_img * sizeof *pixels) : NULL;
    int32_t *ids = n_txt ? malloc((size_t)n_txt * ctx_len * sizeof *ids) : NULL;
    float *img_emb = n_img ? malloc((size_t)n_img * dim * sizeof(float)) : NULL;
    float *txt_emb = n_txt ? malloc((size_t)n_txt * dim * sizeof(float)) : NULL;
    float *miss_emb = n_txt ? malloc((size_t)n_txt * dim * sizeof(float)) : NULL;
    int *miss_of = n_txt ? malloc((size_t)n_txt * sizeof(int)) : NULL;
    int rc = -1;
    if ((n_img && (!pixels || !img_emb)) || (n_txt && (!ids || !txt_emb || !miss_emb || !miss_of))) {
        clip_api_message(r, 503, "Out of memory; try again later.");
        goto done;
    }
    for (int i = 0, kt = 0; i < n; i++) {
        if (ins[i].kind != IN_TEXT) continue;
        clip_error err = {0};
        if (clip_tokenize(m->model, ins[i].s, ins[i].len, ids + (size_t)kt++ * ctx_len,
                          &err) != CLIP_OK) {
            clip_api_message(r, 400, "Could not tokenize the text: %s", err.msg);
            goto done;
        }
    }
    if (n_img && prepare_images(q, ins, n, n_img, pixels, per_img, r)) goto done;
    /* Cached texts are answered now; the misses move to the front of ids, in order. */
    int n_miss = 0;
    for (int k = 0; k < n_txt; k++) {
        const int32_t *row = ids + (size_t)k * ctx_len;
        if (clip_text_cache_get(a->cache, q->model, row, (int)ctx_len, txt_emb + (size_t)k * dim, dim))
            continue;
        if (n_miss != k) memcpy(ids + (size_t)n_miss * ctx_len, row, ctx_len * sizeof *ids);
        miss_of[n_miss++] = k;
    }
    clip_job jobs[2];
    int nj = 0;
    memset(jobs, 0, sizeof jobs);
    if (n_img) jobs[nj++] = (clip_job){.ctx = m->ctx, .model = m->model, .kind = CLIP_JOB_IMAGES,
                                       .n = n_img, .in.pixels = pixels, .out = img_emb};
    if (n_miss) jobs[nj++] = (clip_job){.ctx = m->ctx, .model = m->model, .kind = CLIP_JOB_TEXTS,
                                        .n = n_miss, .in.ids = ids, .out = miss_emb};
    /* Even with no job (every text cached) this ends the request's announcement. Without
     * a batcher (the CLI) the jobs run here. */
    clip_batcher_run(a->batcher, jobs, nj, &q->announced);
    for (int j = 0; j < nj; j++) {
        if (jobs[j].status != CLIP_OK) {
            /* Inputs were validated: a failing forward is our fault (or memory). */
            if (jobs[j].status == CLIP_ERR_NOMEM)
                clip_api_message(r, 503, "Out of memory; try again later.");
            else
                clip_api_message(r, 500, "Internal error: %s", jobs[j].msg);
            goto done;
        }
    }
    for (int j = 0; j < n_miss; j++) {
        float *row = miss_emb + (size_t)j * dim;
        clip_text_cache_put(a->cache, q->model, ids + (size_t)j * ctx_len, (int)ctx_len, row, dim);
        memcpy(txt_emb + (size_t)miss_of[j] * dim, row, (size_t)dim * sizeof(float));
    }
    for (int i = 0, ki = 0, kt = 0; i < n; i++) {
        const float *src = ins[i].kind == IN_IMAGE ? img_emb + (size_t)ki++ * dim
                                                   : txt_emb + (size_t)kt++ * dim;
        memcpy(emb + (size_t)i * dim, src, (size_t)dim * sizeof(float));
    }
    rc = 0;
done:
    free(pixels);
    free(ids);
    free(img_emb);
    free(txt_emb);
    free(miss_emb);
    free(miss_of);
    return rc;
}

/* =======================================================================================
 * Routes
 * ===================================================================================== */

/* An image object {type, value}: validated into `in`. Returns 0, or -1 with r filled. */
static int image_object(const clip_json *v, loc l, input *in, clip_http_response *r)
{
    if (v->type != CLIP_JSON_OBJECT) {
        respond_422(r, "model_attributes_type", l,
                    "Input should be a valid dictionary or object to extract fields from", v);
        return -1;
    }
    const clip_json *type = clip_json_get(v, "type");
    const clip_json *value = clip_json_get(v, "value");
    if (!type) {
        respond_422(r, "missing", loc_key(l, "type"), "Field required", v);
        return -1;
    }
    if (type->type != CLIP_JSON_STRING) {
        respond_422(r, "string_type", loc_key(l, "type"), "Input should be a valid string", type);
        return -1;
    }
    const char *t = type->str;
    size_t tn = type->str_len;
    if (clip_http_eq_nocase(t, tn, "numpy") || clip_http_eq_nocase(t, tn, "pil") ||
        clip_http_eq_nocase(t, tn, "multipart") || clip_http_eq_nocase(t, tn, "file")) {
        clip_api_message(r, 400, "Image type '%.*s' is not supported by this server: send "
                         "images as {\"type\": \"base64\"} or {\"type\": \"url\"}",
                         utf8_cut(t, tn, 32), t);
        return -1;
    }
    int is_url = clip_http_eq_nocase(t, tn, "url");
    if (!is_url && !clip_http_eq_nocase(t, tn, "base64")) {
        clip_api_message(r, 400, "Unknown image type '%.*s': use \"base64\" or \"url\"",
                         utf8_cut(t, tn, 64), t);
        return -1;
    }
    if (!value || value->type != CLIP_JSON_STRING) {
        clip_api_message(r, 400, "Could not load input image. Cause: the image's \"value\" must "
                         "be a string (%s).", is_url ? "a URL" : "base64 data");
        return -1;
    }
    in->kind = IN_IMAGE;
    in->s = value->str;
    in->len = value->str_len;
    in->is_url = is_url;
    return 0;
}

/* A bare string standing for an image: a URL when it starts with http, else base64. */
static void image_string(const clip_json *v, input *in)
{
    in->kind = IN_IMAGE;
    in->s = v->str;
    in->len = v->str_len;
    in->is_url = v->str_len >= 4 && clip_http_eq_nocase(v->str, 4, "http");
}

static int is_image_object(const clip_json *v)
{
    return v->type == CLIP_JSON_OBJECT && clip_json_get(v, "type") && clip_json_get(v, "value");
}

static int too_many(const clip_api *a, clip_http_response *r, int n, const char *what)
{
    if (n == 0) {
        clip_api_message(r, 400, "No %s given: the list is empty.", what);
        return 1;
    }
    if (n > a->opt.max_batch) {
        clip_api_message(r, 400, "Too many %s: %d given, at most %d per request.", what, n,
                         a->opt.max_batch);
        return 1;
    }
    return 0;
}

static void write_head(clip_buf *b, const request *q)
{
    clip_buf_puts(b, "{\"inference_id\":null,\"frame_id\":null,\"time\":");
    clip_json_write_double(b, now_s() - q->start);
}

static void route_embed_image(request *q, const clip_json *body, clip_http_response *r)
{
    const clip_json *img = clip_json_get(body, "image");
    if (!img) {
        respond_422(r, "missing", loc_of("image", NULL), "Field required", body);
        return;
    }
    int n = img->type == CLIP_JSON_ARRAY ? (int)(img->n > INT_MAX ? INT_MAX : img->n) : 1;
    if (img->type == CLIP_JSON_ARRAY && too_many(q->a, r, n, "images")) return;
    input *ins = calloc((size_t)n, sizeof *ins);
    int dim = (int)clip_embed_floats(q->a->models[q->model].model);
    float *emb = malloc((size_t)n * dim * sizeof *emb);
    if (!ins || !emb) {
        clip_api_message(r, 503, "Out of memory; try again later.");
        goto done;
    }
    for (int i = 0; i < n; i++) {
        const clip_json *v = img->type == CLIP_JSON_ARRAY ? &img->items[i] : img;
        loc l = img->type == CLIP_JSON_ARRAY ? loc_idx(loc_of("image", NULL), i) : loc_of("image", NULL);
        if (image_object(v, l, &ins[i], r)) goto done;
    }
    if (compute(q, ins, n, emb, r)) goto done;
    r->status = 200;
    clip_buf_reset(&r->body);
    clip_api_write_embeddings(&r->body, emb, n, dim, now_s() - q->start);
done:
    free(ins);
    free(emb);
}

static void route_embed_text(request *q, const clip_json *body, clip_http_response *r)
{
    const clip_json *text = clip_json_get(body, "text");
    if (!text) {
        respond_422(r, "missing", loc_of("text", NULL), "Field required", body);
        return;
    }
    int n;
    if (text->type == CLIP_JSON_STRING) {
        n = 1;
    } else if (text->type == CLIP_JSON_ARRAY) {
        n = (int)(text->n > INT_MAX ? INT_MAX : text->n);
        if (too_many(q->a, r, n, "texts")) return;
        for (int i = 0; i < n; i++) {
            if (text->items[i].type != CLIP_JSON_STRING) {
                respond_422(r, "string_type", loc_idx(loc_of("text", NULL), i),
                            "Input should be a valid string", &text->items[i]);
                return;
            }
        }
    } else {
        respond_422(r, "string_type", loc_of("text", NULL), "Input should be a valid string", text);
        return;
    }
    input *ins = calloc((size_t)n, sizeof *ins);
    int dim = (int)clip_embed_floats(q->a->models[q->model].model);
    float *emb = malloc((size_t)n * dim * sizeof *emb);
    if (!ins || !emb) {
        clip_api_message(r, 503, "Out of memory; try again later.");
        goto done;
    }
    for (int i = 0; i < n; i++) {
        const clip_json *v = text->type == CLIP_JSON_ARRAY ? &text->items[i] : text;
        ins[i] = (input){.kind = IN_TEXT, .s = v->str, .len = v->str_len};
    }
    if (compute(q, ins, n, emb, r)) goto done;
    r->status = 200;
    clip_buf_reset(&r->body);
    clip_api_write_embeddings(&r->body, emb, n, dim, now_s() - q->start);
done:
    free(ins);
    free(emb);
}

/* One prompt: a string (text, or an image for prompt_type image) or an image object. */
static int compare_prompt(const clip_json *v, int prompt_image, loc l, input *in,
                          clip_http_response *r)
{
    if (!prompt_image) {
        if (v->type != CLIP_JSON_STRING) {
            if (is_image_object(v))
                clip_api_message(r, 400, "prompt_type is \"text\" but a prompt is an image: "
                                 "send prompt_type \"image\" to compare with images.");
            else
                respond_422(r, "string_type", l, "Input should be a valid string", v);
            return -1;
        }
        *in = (input){.kind = IN_TEXT, .s = v->str, .len = v->str_len};
        return 0;
    }
    if (v->type == CLIP_JSON_STRING) {
        image_string(v, in);
        return 0;
    }
    return image_object(v, l, in, r);
}

static void route_compare(request *q, const clip_json *body, clip_http_response *r)
{
    const clip_api *a = q->a;
    const clip_json *subject = clip_json_get(body, "subject");
    const clip_json *prompt = clip_json_get(body, "prompt");
    const clip_json *st = clip_json_get(body, "subject_type");
    const clip_json *pt = clip_json_get(body, "prompt_type");
    if (!subject) {
        respond_422(r, "missing", loc_of("subject", NULL), "Field required", body);
        return;
    }
    if (!prompt) {
        respond_422(r, "missing", loc_of("prompt", NULL), "Field required", body);
        return;
    }
    int subject_image = 1, prompt_image = 0;
    if (st && st->type != CLIP_JSON_NULL) {
        if (st->type != CLIP_JSON_STRING) {
            respond_422(r, "string_type", loc_of("subject_type", NULL), "Input should be a valid string", st);
            return;
        }
        if (eq_exact(st->str, st->str_len, "text")) subject_image = 0;
        else if (!eq_exact(st->str, st->str_len, "image")) {
            clip_api_message(r, 400, "subject_type must be \"image\" or \"text\", not \"%.*s\".",
                             utf8_cut(st->str, st->str_len, 64), st->str);
            return;
        }
    }
    if (pt && pt->type != CLIP_JSON_NULL) {
        if (pt->type != CLIP_JSON_STRING) {
            respond_422(r, "string_type", loc_of("prompt_type", NULL), "Input should be a valid string", pt);
            return;
        }
        if (eq_exact(pt->str, pt->str_len, "image")) prompt_image = 1;
        else if (!eq_exact(pt->str, pt->str_len, "text")) {
            clip_api_message(r, 400, "prompt_type must be \"text\" or \"image\", not \"%.*s\".",
                             utf8_cut(pt->str, pt->str_len, 64), pt->str);
            return;
        }
    }
    /* The prompts: a list, one prompt, or a name -> prompt mapping. */
    int mapping = prompt->type == CLIP_JSON_OBJECT && !is_image_object(prompt);
    int n;
    if (prompt->type == CLIP_JSON_ARRAY || mapping) {
        n = (int)(prompt->n > INT_MAX ? INT_MAX : prompt->n);
        if (too_many(a, r, n, "prompts")) return;
    } else if (prompt->type == CLIP_JSON_STRING || prompt->type == CLIP_JSON_OBJECT) {
        n = 1;
    } else {
        respond_422(r, "string_type", loc_of("prompt", NULL), "Input should be a valid string", prompt);
        return;
    }
    input *ins = calloc((size_t)n + 1, sizeof *ins);
    int dim = (int)clip_embed_floats(a->models[q->model].model);
    float *emb = malloc(((size_t)n + 1) * dim * sizeof *emb);
    if (!ins || !emb) {
        clip_api_message(r, 503, "Out of memory; try again later.");
        goto done;
    }
    if (subject_image) {
        if (subject->type == CLIP_JSON_STRING) image_string(subject, &ins[0]);
        else if (image_object(subject, loc_of("subject", NULL), &ins[0], r)) goto done;
    } else {
        if (subject->type != CLIP_JSON_STRING) {
            if (is_image_object(subject))
                clip_api_message(r, 400, "subject_type is \"text\" but the subject is an image: "
                                 "send subject_type \"image\".");
            else
                respond_422(r, "string_type", loc_of("subject", NULL), "Input should be a valid string", subject);
            goto done;
        }
        ins[0] = (input){.kind = IN_TEXT, .s = subject->str, .len = subject->str_len};
    }
    for (int i = 0; i < n; i++) {
        const clip_json *v = prompt;
        loc l = loc_of("prompt", NULL);
        if (prompt->type == CLIP_JSON_ARRAY) {
            v = &prompt->items[i];
            l = loc_idx(l, i);
        } else if (mapping) {
            v = &prompt->items[i];
            l = loc_key(l, prompt->keys[i]);
        }
        if (compare_prompt(v, prompt_image, l, &ins[i + 1], r)) goto done;
    }
    if (compute(q, ins, n + 1, emb, r)) goto done;
    r->status = 200;
    clip_buf *b = &r->body;
    clip_buf_reset(b);
    write_head(b, q);
    clip_buf_puts(b, ",\"similarity\":");
    clip_buf_putc(b, mapping ? '{' : '[');
    for (int i = 0; i < n; i++) {
        if (i) clip_buf_putc(b, ',');
        if (mapping) {
            clip_json_write_string(b, prompt->keys[i], prompt->key_lens[i]);
            clip_buf_putc(b, ':');
        }
        clip_json_write_float(b, clip_cosine(emb, emb + (size_t)(i + 1) * dim, (size_t)dim));
    }
    clip_buf_putc(b, mapping ? '}' : ']');
    clip_buf_puts(b, ",\"parent_id\":null}");
done:
    free(ins);
    free(emb);
}

/* FastAPI's answer to a body that is not JSON: the offset and the reason. */
static void respond_json_invalid(clip_http_response *r, const char *err)
{
    long offset = 0;
    const char *at = strstr(err, " at byte ");
    const char *reason = err;
    if (at) {
        offset = strtol(at + 9, NULL, 10);
        const char *colon = strstr(at, ": ");
        if (colon) reason = colon + 2;
    }
    r->status = 422;
    clip_buf *b = &r->body;
    clip_buf_reset(b);
    clip_buf_printf(b, "{\"detail\":[{\"type\":\"json_invalid\",\"loc\":[\"body\",%ld],"
                       "\"msg\":\"JSON decode error\",\"input\":{},\"ctx\":{\"error\":", offset);
    clip_json_write_string(b, reason, strlen(reason));
    clip_buf_puts(b, "}}]}");
}

enum { R_NONE, R_ROOT, R_HEALTH, R_EMBED_IMAGE, R_EMBED_TEXT, R_COMPARE };

static int route_of(const char *path, size_t n)
{
    if (eq_exact(path, n, "/")) return R_ROOT;
    if (eq_exact(path, n, "/healthz")) return R_HEALTH;
    if (eq_exact(path, n, "/clip/embed_image")) return R_EMBED_IMAGE;
    if (eq_exact(path, n, "/clip/embed_text")) return R_EMBED_TEXT;
    if (eq_exact(path, n, "/clip/compare")) return R_COMPARE;
    return R_NONE;
}

static void route_root(clip_api *a, clip_http_response *r)
{
    clip_buf *b = &r->body;
    r->status = 200;
    clip_buf_reset(b);
    clip_buf_puts(b, "{\"name\":\"clip\",\"version\":\"" CLIP_VERSION "\",\"models\":[");
    for (int i = 0; i < a->n_models; i++) {
        const clip_api_model *m = &a->models[i];
        const clip_hparams *hp = clip_model_hparams(m->model);
        if (i) clip_buf_putc(b, ',');
        clip_buf_puts(b, "{\"name\":");
        clip_json_write_string(b, m->name, strlen(m->name));
        clip_buf_printf(b, ",\"embed_dim\":%u,\"image_size\":%u,\"context_length\":%u,"
                           "\"default\":%s}", hp->embed_dim, hp->crop_size,
                        hp->context_length, i == 0 ? "true" : "false");
    }
    clip_buf_printf(b, "],\"max_batch\":%d,\"max_body_mb\":%zu,\"matmul\":\"%s\",\"routes\":["
                       "\"/clip/embed_image\",\"/clip/embed_text\",\"/clip/compare\"]",
                    a->opt.max_batch, a->opt.max_body >> 20, clip_ctx_matmul(a->models[0].ctx));
    clip_buf_puts(b, ",\"uptime_s\":");
    clip_json_write_double(b, now_s() - a->started);
    clip_buf_printf(b, ",\"requests\":%llu", (unsigned long long)atomic_load(&a->requests));
    if (a->batcher) {
        uint64_t forwards, inputs;
        clip_batcher_stats(a->batcher, &forwards, &inputs);
        clip_buf_printf(b, ",\"forwards\":%llu,\"batched_inputs\":%llu",
                        (unsigned long long)forwards, (unsigned long long)inputs);
    }
    /* the helpers, and the request's own thread that works beside them */
    if (a->fanout)
        clip_buf_printf(b, ",\"decode_threads\":%d", clip_fanout_helpers(a->fanout) + 1);
    if (a->cache) {
        clip_text_cache_counts tc;
        clip_text_cache_stats(a->cache, &tc);
        clip_buf_printf(b, ",\"text_cache\":{\"entries\":%zu,\"capacity\":%zu,\"hits\":%llu,"
                           "\"misses\":%llu}", tc.entries, tc.capacity,
                        (unsigned long long)tc.hits, (unsigned long long)tc.misses);
    }
    clip_buf_putc(b, '}');
}

/* Runs one of the /clip/ routes on a body: JSON, key, model, then the route itself. */
static void route_clip(request *q, int route, const clip_api_request *in,
                       clip_http_response *r)
{
    clip_api *a = q->a;
    char err[256] = "";
    clip_json_doc *doc = NULL;
    if (in->body_len > 0)
        doc = clip_json_parse(in->body, in->body_len, CLIP_JSON_DEFAULT_MAX_DEPTH, err, sizeof err);
    const clip_json *body = doc ? clip_json_root(doc) : NULL;
    if (a->opt.api_key) {
        size_t kl = strlen(a->opt.api_key);
        int ok = 0;
        char qk[512];
        size_t qkl;
        if (clip_http_query_param(in->query, in->query_len, "api_key", qk, sizeof qk, &qkl))
            ok |= ct_equal(qk, qkl, a->opt.api_key, kl);
        if (in->authorization_len > 7 && clip_http_eq_nocase(in->authorization, 7, "bearer "))
            ok |= ct_equal(in->authorization + 7, in->authorization_len - 7, a->opt.api_key, kl);
        const clip_json *bk = body && body->type == CLIP_JSON_OBJECT ? clip_json_get(body, "api_key") : NULL;
        if (bk && bk->type == CLIP_JSON_STRING)
            ok |= ct_equal(bk->str, bk->str_len, a->opt.api_key, kl);
        if (!ok) {
            clip_api_message(r, 401, "Unauthorized: a valid API key is required (query "
                             "api_key, Authorization: Bearer, or \"api_key\" in the body).");
            goto done;
        }
    }
    if (in->body_len == 0) {
        r->status = 422;
        clip_buf_reset(&r->body);
        clip_buf_puts(&r->body, "{\"detail\":[{\"type\":\"missing\",\"loc\":[\"body\"],"
                                "\"msg\":\"Field required\",\"input\":null}]}");
        goto done;
    }
    if (!doc) {
        if (strstr(err, "out of memory")) clip_api_message(r, 503, "Out of memory; try again later.");
        else respond_json_invalid(r, err);
        goto done;
    }
    if (body->type != CLIP_JSON_OBJECT) {
        respond_422(r, "model_attributes_type", loc_of(NULL, NULL),
                    "Input should be a valid dictionary or object to extract fields from", body);
        goto done;
    }
    const clip_json *ver = clip_json_get(body, "clip_version_id");
    q->model = 0;
    if (ver && ver->type != CLIP_JSON_NULL) {
        if (ver->type != CLIP_JSON_STRING) {
            respond_422(r, "string_type", loc_of("clip_version_id", NULL),
                        "Input should be a valid string", ver);
            goto done;
        }
        int found = -1;
        for (int i = 0; i < a->n_models && found < 0; i++)
            if (eq_exact(ver->str, ver->str_len, a->models[i].name)) found = i;
        if (found < 0) {
            char names[512] = "";
            size_t w = 0;
            for (int i = 0; i < a->n_models && w < sizeof names; i++)
                w += (size_t)snprintf(names + w, sizeof names - w, "%s%s", i ? ", " : "",
                                      a->models[i].name);
            clip_api_message(r, 404, "Model '%.*s' is not loaded; loaded models: %s",
                             utf8_cut(ver->str, ver->str_len, 100), ver->str, names);
            goto done;
        }
        q->model = found;
    }
    if (route == R_EMBED_IMAGE) route_embed_image(q, body, r);
    else if (route == R_EMBED_TEXT) route_embed_text(q, body, r);
    else route_compare(q, body, r);
done:
    clip_json_free(doc);
}

/* =======================================================================================
 * The API: options, state, and one request routed
 * ===================================================================================== */

void clip_api_options_default(clip_api_options *o)
{
    memset(o, 0, sizeof *o);
    o->max_body = (size_t)32 << 20;
    o->max_batch = 8;
    o->max_pixels = CLIP_DEFAULT_MAX_PIXELS;
    o->fetch.timeout = 10;
    o->fetch.max_bytes = (size_t)20 << 20;
}

void clip_api_init(clip_api *a, const clip_api_options *o, clip_api_model *models,
                   int n_models)
{
    memset(a, 0, sizeof *a);
    a->opt = *o;
    a->models = models;
    a->n_models = n_models;
    a->started = now_s();
    atomic_init(&a->requests, 0);
}

int clip_api_is_inference(const char *method, size_t method_len, const char *path,
                          size_t path_len)
{
    return eq_exact(method, method_len, "POST") && route_of(path, path_len) >= R_EMBED_IMAGE;
}

void clip_api_handle(clip_api *a, clip_api_request *req, clip_http_response *r)
{
    const char *m = req->method;
    size_t ml = req->method_len;
    int route = route_of(req->path, req->path_len);
    int is_get = eq_exact(m, ml, "GET") || eq_exact(m, ml, "HEAD");
    if (route == R_NONE) {
        respond_detail(r, 404, "Not Found");
    } else if (eq_exact(m, ml, "OPTIONS")) {
        r->status = 204;
        r->allow = route <= R_HEALTH ? "GET, HEAD, OPTIONS" : "POST, OPTIONS";
    } else if (route <= R_HEALTH) {
        if (!is_get) {
            respond_detail(r, 405, "Method Not Allowed");
            r->allow = "GET, HEAD, OPTIONS";
        } else if (route == R_ROOT) {
            route_root(a, r);
        } else {
            r->status = 200;
            clip_buf_puts(&r->body, "{\"status\":\"ok\"}");
        }
    } else if (!eq_exact(m, ml, "POST")) {
        respond_detail(r, 405, "Method Not Allowed");
        r->allow = "POST, OPTIONS";
    } else {
        request q = {.a = a, .announced = req->announced, .start = req->start};
        route_clip(&q, route, req, r);
        req->announced = q.announced;
    }
    atomic_fetch_add(&a->requests, 1);
}
