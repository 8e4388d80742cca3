/* bench.c -- times our engine on one .clip model and prints one JSON object (tools/bench.py
 * runs it for `make bench` and sets it beside the peers).
 *
 *   tools/bench -m MODEL.clip [--threads 2] [--runs 7] [--load-runs 7] [--load-only]
 *               [--no-sgemm] [--check CHECK.json]
 *
 * Measured, each the median of --runs runs after two warm-up runs:
 *   load        clip_model_load + clip_model_free, --load-runs times after one untimed load
 *               (so the page cache is warm: the number is the mmap + validation + any f16
 *               widening, not the disk)
 *   image       batch 1 latency and batch 8 throughput on preprocessed pixels
 *   text        batch 1 latency for "a photo of a cat" and for a 77-token prompt, batch 8
 *               throughput for both (ids tokenized by the model's own tokenizer)
 *   rss         peak resident set (getrusage) after everything above
 *   sgemm       this machine's cblas_sgemm rate at the model's shapes (the four matmuls of one
 *               transformer block, rows = batch x tokens), both with OpenBLAS's own threads
 *               and with our split of the output columns over single-threaded sgemm calls;
 *               the better of the two is the sgemm-bound limit, and each forward is reported
 *               as a fraction of it: (its matmul + attention FLOPs / its time) / that rate.
 * The sgemm runs last: OpenBLAS's thread count is process-global and the engine wants it at 1.
 *
 * --check FILE reads tools/export_onnx.py's check.json (PyTorch's outputs for a fixed pixel
 * probe and two prompts, on the same weights) and reports how closely ours agree, so a
 * benchmark of wrong answers shows as one.
 */
#include "clip.h"
#include "json.h"

#include <cblas.h>
#include <errno.h>
#include <math.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/resource.h>
#include <time.h>

/* =======================================================================================
 * Timing
 * ===================================================================================== */

#define MAX_RUNS 101
#define WARMUP 2

static double now_ms(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec * 1e3 + (double)ts.tv_nsec * 1e-6;
}

static int cmp_double(const void *a, const void *b)
{
    double x = *(const double *)a, y = *(const double *)b;
    return (x > y) - (x < y);
}

static double median(double *v, int n)
{
    qsort(v, (size_t)n, sizeof *v, cmp_double);
    return n % 2 ? v[n / 2] : 0.5 * (v[n / 2 - 1] + v[n / 2]);
}

typedef struct timing {
    double median_ms, min_ms;
} timing;

typedef int (*bench_fn)(void *arg);

/* Runs fn WARMUP times untimed, then `runs` times timed. Returns -1 when fn fails. */
static int time_runs(bench_fn fn, void *arg, int runs, timing *t)
{
    double ms[MAX_RUNS];
    for (int i = 0; i < WARMUP; i++)
        if (fn(arg)) return -1;
    for (int i = 0; i < runs; i++) {
        double t0 = now_ms();
        if (fn(arg)) return -1;
        ms[i] = now_ms() - t0;
    }
    t->median_ms = median(ms, runs);
    t->min_ms = ms[0];
    return 0;
}

/* =======================================================================================
 * Engine workloads
 * ===================================================================================== */

typedef struct work {
    clip_ctx *ctx;
    const float *pixels;     /* 8 images                                                  */
    const int32_t *ids;      /* 8 rows of context_length ids                               */
    int n;
    float *out;
    clip_error err;
} work;

static int run_images(void *arg)
{
    work *w = arg;
    return clip_encode_images(w->ctx, w->pixels, w->n, w->out, &w->err) != CLIP_OK;
}

static int run_texts(void *arg)
{
    work *w = arg;
    return clip_encode_texts(w->ctx, w->ids, w->n, w->out, &w->err) != CLIP_OK;
}

/* The pixel probe tools/export_onnx.py and tools/bench_ort.mjs use: element i of the
 * [3, size, size] image is float32(sin(0.37 i)), the same for every image of a batch. */
static void fill_probe(float *px, int n_images, size_t per_image)
{
    for (size_t i = 0; i < per_image; i++) px[i] = (float)sin(0.37 * (double)i);
    for (int b = 1; b < n_images; b++) memcpy(px + (size_t)b * per_image, px, per_image * sizeof *px);
}

/* Positions a text tower row computes: up to and including EOT (OpenAI's argmax). */
static int text_tokens(const int32_t *ids, int ctx_len)
{
    int eot = 0;
    for (int t = 1; t < ctx_len; t++)
        if (ids[t] > ids[eot]) eot = t;
    return eot + 1;
}

/* =======================================================================================
 * FLOPs of a forward: the matmuls (2 per multiply-add) and attention's two products
 * ===================================================================================== */

static double block_flops(double rows, double tokens, double width, double mlp)
{
    double linear = 2.0 * rows * width * (3.0 * width + width + 2.0 * mlp);
    double attention = 4.0 * rows * tokens * width;   /* q.k^T and p.v, every head     */
    return linear + attention;
}

static double image_flops(const clip_hparams *hp, int batch)
{
    double grid = hp->image_size / hp->patch_size, tokens = grid * grid + 1;
    double patch = 2.0 * grid * grid * 3.0 * hp->patch_size * hp->patch_size * hp->vision_width;
    double blocks = hp->vision_layers *
                    block_flops(tokens, tokens, hp->vision_width, hp->vision_mlp);
    return batch * (patch + blocks + 2.0 * hp->vision_width * hp->embed_dim);
}

static double text_flops(const clip_hparams *hp, int batch, int tokens)
{
    double blocks = hp->text_layers * block_flops(tokens, tokens, hp->text_width, hp->text_mlp);
    return batch * (blocks + 2.0 * hp->text_width * hp->embed_dim);
}

/* =======================================================================================
 * sgemm rate at the model's shapes
 * ===================================================================================== */

/* y[m, n] = x[m, k] . w[n, k]^T on PyTorch's [out, in] weights: the call an engine built
 * on sgemm makes. */
typedef struct gemm {
    int m, n, k;
    const float *x, *w;
    float *y;
} gemm;

static void gemm_cols(const gemm *g, int n0, int n1)
{
    if (n1 <= n0) return;
    cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasTrans, g->m, n1 - n0, g->k, 1.0f, g->x, g->k,
                g->w + (size_t)n0 * g->k, g->k, 0.0f, g->y + n0, g->n);
}

/* The "split" mode: n_threads workers (the caller is worker 0), each a single-threaded sgemm
 * on its share of the output columns, as clip.c runs its matmuls. */
typedef struct splitter splitter;

typedef struct split_worker {
    splitter *s;
    int id;
    pthread_t thread;
} split_worker;

struct splitter {
    int n_threads;
    split_worker *workers;     /* n_threads - 1 helpers                                  */
    pthread_barrier_t start, done;
    const gemm *job;           /* NULL tells the helpers to leave                         */
};

static void split_share(const splitter *s, int id)
{
    const gemm *g = s->job;
    int per = (g->n + s->n_threads - 1) / s->n_threads;
    per = (per + 15) / 16 * 16;   /* whole 16-column panels, as the sgemm kernels like    */
    int n0 = id * per, n1 = n0 + per < g->n ? n0 + per : g->n;
    gemm_cols(g, n0, n1);
}

static void *split_main(void *arg)
{
    split_worker *w = arg;
    for (;;) {
        pthread_barrier_wait(&w->s->start);
        if (!w->s->job) return NULL;
        split_share(w->s, w->id);
        pthread_barrier_wait(&w->s->done);
    }
}

static int split_start(splitter *s, int n_threads)
{
    memset(s, 0, sizeof *s);
    s->n_threads = n_threads;
    if (n_threads < 2) return 0;
    s->workers = calloc((size_t)n_threads - 1, sizeof *s->workers);
    if (!s->workers) return -1;
    pthread_barrier_init(&s->start, NULL, (unsigned)n_threads);
    pthread_barrier_init(&s->done, NULL, (unsigned)n_threads);
    for (int i = 0; i < n_threads - 1; i++) {
        s->workers[i] = (split_worker){s, i + 1, 0};
        if (pthread_create(&s->workers[i].thread, NULL, split_main, &s->workers[i])) {
            /* the barriers count n_threads: without every helper they would hang */
            fprintf(stderr, "bench: cannot start sgemm thread %d\n", i + 2);
            exit(1);
        }
    }
    return 0;
}

static void split_run(splitter *s, const gemm *g)
{
    s->job = g;
    if (s->n_threads < 2) {
        gemm_cols(g, 0, g->n);
        return;
    }
    pthread_barrier_wait(&s->start);
    split_share(s, 0);
    pthread_barrier_wait(&s->done);
}

static void split_stop(splitter *s)
{
    if (s->n_threads < 2) return;
    s->job = NULL;
    pthread_barrier_wait(&s->start);
    for (int i = 0; i < s->n_threads - 1; i++) pthread_join(s->workers[i].thread, NULL);
    pthread_barrier_destroy(&s->start);
    pthread_barrier_destroy(&s->done);
    free(s->workers);
}

/* The four matmuls of one transformer block at `rows` rows: qkv, out, fc1, fc2. */
typedef struct block_shapes {
    const char *tower;
    int rows, width, mlp;
} block_shapes;

typedef struct sgemm_result {
    block_shapes shape;
    double gflops_openblas[4], gflops_split[4];   /* per matmul                         */
    double block_openblas, block_split;           /* the whole block: GFLOP/s            */
} sgemm_result;

typedef struct sgemm_bench {
    const gemm *g;   /* 4 matmuls                                                        */
    int which;       /* -1: all four in order                                            */
    splitter *split; /* NULL: OpenBLAS's own threads                                     */
} sgemm_bench;

static int run_sgemm(void *arg)
{
    sgemm_bench *b = arg;
    for (int i = 0; i < 4; i++) {
        if (b->which >= 0 && i != b->which) continue;
        if (b->split) split_run(b->split, &b->g[i]);
        else gemm_cols(&b->g[i], 0, b->g[i].n);
    }
    return 0;
}

/* Random inputs and weights: sgemm's speed does not depend on the values, but denormals
 * or zeros could, so these are ordinary numbers. */
static void fill_random(float *p, size_t n, uint32_t seed)
{
    for (size_t i = 0; i < n; i++) {
        seed = seed * 1664525u + 1013904223u;
        p[i] = (float)((seed >> 8) & 0xffff) / 65536.0f - 0.5f;
    }
}

static int measure_sgemm(block_shapes sh, int n_threads, int runs, splitter *split,
                         sgemm_result *r)
{
    int w = sh.width, m = sh.mlp, rows = sh.rows;
    int ns[4] = {3 * w, w, m, w}, ks[4] = {w, w, w, m};
    size_t big = (size_t)(3 * w > m ? 3 * w : m);
    /* four distinct weight matrices, as in a real block: a block's weights (28 MB for
     * ViT-B) then stream through the caches the way the forward's do, instead of one small
     * matrix staying hot and flattering the limit */
    size_t w_off[5] = {0};
    for (int i = 0; i < 4; i++) w_off[i + 1] = w_off[i] + (size_t)ns[i] * (size_t)ks[i];
    float *x = malloc((size_t)rows * big * sizeof *x);
    float *wt = malloc(w_off[4] * sizeof *wt);
    float *y = malloc((size_t)rows * big * sizeof *y);
    if (!x || !wt || !y) {
        free(x);
        free(wt);
        free(y);
        return -1;
    }
    fill_random(x, (size_t)rows * big, 1);
    fill_random(wt, w_off[4], 2);
    gemm g[4];
    double flops[4], total = 0;
    for (int i = 0; i < 4; i++) {
        g[i] = (gemm){rows, ns[i], ks[i], x, wt + w_off[i], y};
        flops[i] = 2.0 * rows * ns[i] * ks[i];
        total += flops[i];
    }
    memset(r, 0, sizeof *r);
    r->shape = sh;
    for (int mode = 0; mode < 2; mode++) {
        openblas_set_num_threads(mode == 0 ? n_threads : 1);
        sgemm_bench b = {g, -1, mode == 0 ? NULL : split};
        timing t;
        for (int i = 0; i < 4; i++) {
            b.which = i;
            time_runs(run_sgemm, &b, runs, &t);
            (mode == 0 ? r->gflops_openblas : r->gflops_split)[i] = flops[i] / t.median_ms / 1e6;
        }
        b.which = -1;
        time_runs(run_sgemm, &b, runs, &t);
        *(mode == 0 ? &r->block_openblas : &r->block_split) = total / t.median_ms / 1e6;
    }
    openblas_set_num_threads(1);
    free(x);
    free(wt);
    free(y);
    return 0;
}

/* =======================================================================================
 * Agreement with PyTorch (tools/export_onnx.py's check.json)
 * ===================================================================================== */

typedef struct agreement {
    int ok;
    char why[320];
    double image_cosine, short_cosine, long_cosine;
    double image_max_abs, short_max_abs, long_max_abs;
    int ids_match;
} agreement;

static char *read_file(const char *path, size_t *len)
{
    FILE *f = fopen(path, "rb");
    if (!f) return NULL;
    char *buf = NULL;
    size_t cap = 0, n = 0;
    for (;;) {
        if (n == cap) {
            /* check.json is two embeddings and some ids: 64 MB is far beyond any real one */
            if (cap >= (64u << 20)) break;
            cap = cap ? 2 * cap : 1 << 16;
            char *nb = realloc(buf, cap + 1);
            if (!nb) break;
            buf = nb;
        }
        size_t got = fread(buf + n, 1, cap - n, f);
        n += got;
        if (got == 0) {
            fclose(f);
            buf[n] = 0;
            *len = n;
            return buf;
        }
    }
    fclose(f);
    free(buf);
    return NULL;
}

/* Reads a JSON array of `n` numbers into out (float or int32). */
static int json_floats(const clip_json *a, size_t n, float *out)
{
    if (!a || a->type != CLIP_JSON_ARRAY || a->n != n) return -1;
    for (size_t i = 0; i < n; i++) {
        if (a->items[i].type != CLIP_JSON_NUMBER) return -1;
        out[i] = (float)a->items[i].number;
    }
    return 0;
}

static int json_ids(const clip_json *a, size_t n, int32_t *out)
{
    if (!a || a->type != CLIP_JSON_ARRAY || a->n != n) return -1;
    for (size_t i = 0; i < n; i++) {
        double v = a->items[i].number;
        if (a->items[i].type != CLIP_JSON_NUMBER || v < 0 || v > 1e9 || v != (int32_t)v) return -1;
        out[i] = (int32_t)v;
    }
    return 0;
}

static void compare(const float *ours, const float *ref, size_t n, double *cosine, double *max_abs)
{
    double ab = 0, aa = 0, bb = 0, m = 0;
    for (size_t i = 0; i < n; i++) {
        ab += (double)ours[i] * ref[i];
        aa += (double)ours[i] * ours[i];
        bb += (double)ref[i] * ref[i];
        double d = fabs((double)ours[i] - ref[i]);
        if (d > m) m = d;
    }
    *cosine = aa > 0 && bb > 0 ? ab / sqrt(aa * bb) : 0;
    *max_abs = m;
}

static void check_against(const char *path, const clip_model *model, clip_ctx *ctx,
                          const int32_t *short_ids, const int32_t *long_ids, agreement *a)
{
    const clip_hparams *hp = clip_model_hparams(model);
    size_t e = clip_embed_floats(model), ctx_len = clip_text_ids(model);
    size_t per_image = clip_image_floats(model);
    memset(a, 0, sizeof *a);
    size_t len;
    char *text = read_file(path, &len);
    if (!text) {
        snprintf(a->why, sizeof a->why, "cannot read %s", path);
        return;
    }
    char perr[128];
    clip_json_doc *doc = clip_json_parse(text, len, 0, perr, sizeof perr);
    free(text);
    if (!doc) {
        snprintf(a->why, sizeof a->why, "%s: %s", path, perr);
        return;
    }
    const clip_json *root = clip_json_root(doc);
    float *ref = malloc(3 * e * sizeof *ref), *ours = malloc(3 * e * sizeof *ours);
    float *px = malloc(per_image * sizeof *px);
    int32_t *ids = malloc(2 * ctx_len * sizeof *ids);
    clip_error err;
    if (!ref || !ours || !px || !ids) {
        snprintf(a->why, sizeof a->why, "out of memory");
    } else if (json_floats(clip_json_get(root, "image_embed"), e, ref) ||
               json_floats(clip_json_get(root, "short_embed"), e, ref + e) ||
               json_floats(clip_json_get(root, "long_embed"), e, ref + 2 * e) ||
               json_ids(clip_json_get(root, "short_ids"), ctx_len, ids) ||
               json_ids(clip_json_get(root, "long_ids"), ctx_len, ids + ctx_len)) {
        snprintf(a->why, sizeof a->why, "%s: not a check file for this model's sizes", path);
    } else {
        a->ids_match = !memcmp(ids, short_ids, ctx_len * sizeof *ids) &&
                       !memcmp(ids + ctx_len, long_ids, ctx_len * sizeof *ids);
        fill_probe(px, 1, per_image);
        if (clip_encode_images(ctx, px, 1, ours, &err) != CLIP_OK ||
            clip_encode_texts(ctx, ids, 1, ours + e, &err) != CLIP_OK ||
            clip_encode_texts(ctx, ids + ctx_len, 1, ours + 2 * e, &err) != CLIP_OK) {
            snprintf(a->why, sizeof a->why, "encode failed: %s", err.msg);
        } else {
            compare(ours, ref, e, &a->image_cosine, &a->image_max_abs);
            compare(ours + e, ref + e, e, &a->short_cosine, &a->short_max_abs);
            compare(ours + 2 * e, ref + 2 * e, e, &a->long_cosine, &a->long_max_abs);
            a->ok = 1;
        }
    }
    free(ref);
    free(ours);
    free(px);
    free(ids);
    clip_json_free(doc);
}

/* =======================================================================================
 * Main
 * ===================================================================================== */

static long peak_rss_kb(void)
{
    struct rusage ru;
    return getrusage(RUSAGE_SELF, &ru) == 0 ? ru.ru_maxrss : -1;
}

static void usage(void)
{
    fprintf(stderr, "usage: tools/bench -m MODEL.clip [--threads N] [--runs N] [--load-runs N]\n"
                    "                   [--load-only] [--no-sgemm] [--check CHECK.json]\n");
    exit(2);
}

static int int_arg(const char *flag, const char *v, int lo, int hi)
{
    char *end;
    errno = 0;
    long n = strtol(v, &end, 10);
    if (errno || *end || end == v || n < lo || n > hi) {
        fprintf(stderr, "bench: %s wants a number from %d to %d\n", flag, lo, hi);
        exit(2);
    }
    return (int)n;
}

static void put_timing(clip_buf *b, const char *name, timing t)
{
    clip_buf_printf(b, ",\"%s_ms\":%.3f,\"%s_min_ms\":%.3f", name, t.median_ms, name, t.min_ms);
}

static void fail_encode(const char *what, const clip_error *err)
{
    fprintf(stderr, "bench: %s: %s\n", what, err->msg);
    exit(1);
}

int main(int argc, char **argv)
{
    const char *path = NULL, *check_path = NULL;
    int threads = 2, runs = 7, load_runs = 7, load_only = 0, sgemm = 1;
    for (int i = 1; i < argc; i++) {
        const char *a = argv[i];
        int has = i + 1 < argc;
        if (!strcmp(a, "-m") && has) path = argv[++i];
        else if (!strcmp(a, "--threads") && has) threads = int_arg(a, argv[++i], 1, 256);
        else if (!strcmp(a, "--runs") && has) runs = int_arg(a, argv[++i], 1, MAX_RUNS);
        else if (!strcmp(a, "--load-runs") && has) load_runs = int_arg(a, argv[++i], 1, MAX_RUNS);
        else if (!strcmp(a, "--check") && has) check_path = argv[++i];
        else if (!strcmp(a, "--load-only")) load_only = 1;
        else if (!strcmp(a, "--no-sgemm")) sgemm = 0;
        else usage();
    }
    if (!path) usage();

    clip_error err;
    clip_model *model;
    /* ---- load: one untimed load warms the page cache, then the timed ones */
    double load_ms[MAX_RUNS];
    for (int i = -1; i < load_runs; i++) {
        double t0 = now_ms();
        if (clip_model_load(path, &model, &err) != CLIP_OK) {
            fprintf(stderr, "bench: %s: %s\n", path, err.msg);
            return 1;
        }
        double dt = now_ms() - t0;
        if (i >= 0) load_ms[i] = dt;
        if (i + 1 < load_runs) clip_model_free(model);
    }
    double load_min = load_ms[0];
    for (int i = 1; i < load_runs; i++)
        if (load_ms[i] < load_min) load_min = load_ms[i];
    double load_med = median(load_ms, load_runs);
    long rss_after_load = peak_rss_kb();

    const clip_hparams *hp = clip_model_hparams(model);
    clip_buf out = {0};
    clip_buf_puts(&out, "{\"engine\":\"clip\",\"version\":");
    clip_json_write_string(&out, CLIP_VERSION, strlen(CLIP_VERSION));
    clip_buf_puts(&out, ",\"model\":");
    clip_json_write_string(&out, path, strlen(path));
    clip_buf_puts(&out, ",\"name\":");
    clip_json_write_string(&out, hp->name, strnlen(hp->name, sizeof hp->name));
    clip_buf_puts(&out, ",\"openblas\":");
    const char *blas = openblas_get_config();
    clip_json_write_string(&out, blas, strlen(blas));
    clip_buf_printf(&out, ",\"dtype\":\"%s\",\"params\":%llu,\"threads\":%d,\"runs\":%d,"
                    "\"load_runs\":%d,\"load_ms\":%.3f,\"load_min_ms\":%.3f,"
                    "\"peak_rss_after_load_mb\":%.1f",
                    clip_model_file_dtype(model),
                    (unsigned long long)clip_model_param_count(model), threads, runs, load_runs,
                    load_med, load_min, rss_after_load / 1024.0);

    if (!load_only) {
        clip_ctx *ctx;
        clip_ctx_params params = {threads, getenv("CLIP_MATMUL")};
        if (clip_ctx_new(model, &params, &ctx, &err) != CLIP_OK) fail_encode("context", &err);
        clip_buf_printf(&out, ",\"matmul\":\"%s\"", clip_ctx_matmul(ctx));
        size_t per_image = clip_image_floats(model);
        size_t ctx_len = clip_text_ids(model);
        float *px = malloc(8 * per_image * sizeof *px);
        float *emb = malloc(8 * (size_t)hp->embed_dim * sizeof *emb);
        int32_t *short8 = malloc(8 * ctx_len * sizeof *short8);
        int32_t *long8 = malloc(8 * ctx_len * sizeof *long8);
        char long_text[1001];
        for (int i = 0; i < 200; i++) memcpy(long_text + 5 * i, "long ", 5);
        long_text[1000] = 0;
        if (!px || !emb || !short8 || !long8) {
            fprintf(stderr, "bench: out of memory\n");
            return 1;
        }
        fill_probe(px, 8, per_image);
        const char *short_text = "a photo of a cat";
        if (clip_tokenize(model, short_text, strlen(short_text), short8, &err) != CLIP_OK ||
            clip_tokenize(model, long_text, 1000, long8, &err) != CLIP_OK)
            fail_encode("tokenize", &err);
        for (int b = 1; b < 8; b++) {
            memcpy(short8 + b * ctx_len, short8, ctx_len * sizeof *short8);
            memcpy(long8 + b * ctx_len, long8, ctx_len * sizeof *long8);
        }
        int short_tokens = text_tokens(short8, (int)ctx_len);
        int long_tokens = text_tokens(long8, (int)ctx_len);

        work w = {ctx, px, NULL, 1, emb, {0}};
        timing img1, img8, s1, l1, s8, l8;
        if (time_runs(run_images, &w, runs, &img1)) fail_encode("image batch 1", &w.err);
        w.n = 8;
        if (time_runs(run_images, &w, runs, &img8)) fail_encode("image batch 8", &w.err);
        w.n = 1;
        w.ids = short8;
        if (time_runs(run_texts, &w, runs, &s1)) fail_encode("text batch 1", &w.err);
        w.ids = long8;
        if (time_runs(run_texts, &w, runs, &l1)) fail_encode("text batch 1", &w.err);
        w.n = 8;
        w.ids = short8;
        if (time_runs(run_texts, &w, runs, &s8)) fail_encode("text batch 8", &w.err);
        w.ids = long8;
        if (time_runs(run_texts, &w, runs, &l8)) fail_encode("text batch 8", &w.err);

        put_timing(&out, "image_b1", img1);
        put_timing(&out, "image_b8", img8);
        clip_buf_printf(&out, ",\"image_b8_per_s\":%.3f", 8000.0 / img8.median_ms);
        clip_buf_printf(&out, ",\"text_short_tokens\":%d,\"text_long_tokens\":%d",
                        short_tokens, long_tokens);
        put_timing(&out, "text_short_b1", s1);
        put_timing(&out, "text_long_b1", l1);
        put_timing(&out, "text_short_b8", s8);
        put_timing(&out, "text_long_b8", l8);
        clip_buf_printf(&out, ",\"text_short_b8_per_s\":%.3f,\"text_long_b8_per_s\":%.3f",
                        8000.0 / s8.median_ms, 8000.0 / l8.median_ms);

        double f_img1 = image_flops(hp, 1), f_img8 = image_flops(hp, 8);
        double f_l1 = text_flops(hp, 1, long_tokens), f_l8 = text_flops(hp, 8, long_tokens);
        double f_s1 = text_flops(hp, 1, short_tokens), f_s8 = text_flops(hp, 8, short_tokens);
        clip_buf_printf(&out, ",\"gflop\":{\"image_b1\":%.4f,\"image_b8\":%.4f,"
                        "\"text_short_b1\":%.4f,\"text_short_b8\":%.4f,"
                        "\"text_long_b1\":%.4f,\"text_long_b8\":%.4f}",
                        f_img1 / 1e9, f_img8 / 1e9, f_s1 / 1e9, f_s8 / 1e9, f_l1 / 1e9,
                        f_l8 / 1e9);

        if (check_path) {
            agreement ag;
            check_against(check_path, model, ctx, short8, long8, &ag);
            if (!ag.ok) {
                clip_buf_puts(&out, ",\"check\":{\"ok\":false,\"why\":");
                clip_json_write_string(&out, ag.why, strlen(ag.why));
                clip_buf_puts(&out, "}");
            } else {
                clip_buf_printf(&out, ",\"check\":{\"ok\":true,\"ids_match\":%s,"
                                "\"image_cosine\":%.9f,\"image_max_abs\":%.3g,"
                                "\"short_text_cosine\":%.9f,\"short_text_max_abs\":%.3g,"
                                "\"long_text_cosine\":%.9f,\"long_text_max_abs\":%.3g}",
                                ag.ids_match ? "true" : "false", ag.image_cosine,
                                ag.image_max_abs, ag.short_cosine, ag.short_max_abs,
                                ag.long_cosine, ag.long_max_abs);
            }
        }
        clip_ctx_free(ctx);

        if (sgemm) {
            /* the vision block at one image and at 8, the text block at one 77-token
             * prompt and at 8: the row counts the forwards above run */
            int grid = (int)(hp->image_size / hp->patch_size);
            int vt = grid * grid + 1;
            block_shapes shapes[4] = {
                {"vision", vt, (int)hp->vision_width, (int)hp->vision_mlp},
                {"vision", 8 * vt, (int)hp->vision_width, (int)hp->vision_mlp},
                {"text", long_tokens, (int)hp->text_width, (int)hp->text_mlp},
                {"text", 8 * long_tokens, (int)hp->text_width, (int)hp->text_mlp},
            };
            double fwd_gflops[4] = {f_img1 / img1.median_ms / 1e6, f_img8 / img8.median_ms / 1e6,
                                    f_l1 / l1.median_ms / 1e6, f_l8 / l8.median_ms / 1e6};
            const char *fwd_name[4] = {"image_b1", "image_b8", "text_long_b1", "text_long_b8"};
            splitter split;
            if (split_start(&split, threads)) {
                fprintf(stderr, "bench: out of memory\n");
                return 1;
            }
            clip_buf_puts(&out, ",\"sgemm\":[");
            for (int i = 0; i < 4; i++) {
                sgemm_result r;
                if (measure_sgemm(shapes[i], threads, runs, &split, &r)) {
                    fprintf(stderr, "bench: out of memory\n");
                    return 1;
                }
                double best = r.block_openblas > r.block_split ? r.block_openblas : r.block_split;
                clip_buf_printf(&out, "%s{\"forward\":\"%s\",\"tower\":\"%s\",\"rows\":%d,"
                                "\"width\":%d,\"mlp\":%d,\"shapes_mnk\":[[%d,%d,%d],[%d,%d,%d],"
                                "[%d,%d,%d],[%d,%d,%d]],"
                                "\"openblas_gflops\":[%.1f,%.1f,%.1f,%.1f],"
                                "\"split_gflops\":[%.1f,%.1f,%.1f,%.1f],"
                                "\"block_openblas_gflops\":%.1f,\"block_split_gflops\":%.1f,"
                                "\"limit_gflops\":%.1f,\"ours_gflops\":%.1f,"
                                "\"fraction_of_limit\":%.3f}",
                                i ? "," : "", fwd_name[i], r.shape.tower, r.shape.rows,
                                r.shape.width, r.shape.mlp,
                                r.shape.rows, 3 * r.shape.width, r.shape.width,
                                r.shape.rows, r.shape.width, r.shape.width,
                                r.shape.rows, r.shape.mlp, r.shape.width,
                                r.shape.rows, r.shape.width, r.shape.mlp,
                                r.gflops_openblas[0], r.gflops_openblas[1], r.gflops_openblas[2],
                                r.gflops_openblas[3], r.gflops_split[0], r.gflops_split[1],
                                r.gflops_split[2], r.gflops_split[3], r.block_openblas,
                                r.block_split, best, fwd_gflops[i], fwd_gflops[i] / best);
            }
            clip_buf_puts(&out, "]");
            split_stop(&split);
        }
        free(px);
        free(emb);
        free(short8);
        free(long8);
    }
    clip_buf_printf(&out, ",\"peak_rss_mb\":%.1f}\n", peak_rss_kb() / 1024.0);
    clip_model_free(model);
    if (out.oom) {
        fprintf(stderr, "bench: out of memory\n");
        return 1;
    }
    fputs(out.data, stdout);
    clip_buf_free(&out);
    return 0;
}
