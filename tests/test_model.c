/* tests/test_model.c -- the model loader and the transformer math.
 *
 * Builds small .clip files in C (tiny_model.h: random weights, a byte-level tokenizer
 * section), then: loads them in f32 and f16 (the widening must be exact); corrupts them
 * every way the loader must catch (magic, version, truncation at many points, tensors out
 * of the file, misaligned, overlapping, misshapen, duplicated, unknown, missing, absurd
 * hparams, random byte flips), each giving CLIP_ERR_FORMAT and a reason, never a crash;
 * checks both towers against a double-precision forward written here from PyTorch's
 * definitions (OpenAI's model.py), in batches, across thread counts and with padded text
 * groups, on the reference path (ref.c, CLIP_MATMUL=ref) and the fast one; and each
 * matmul kernel this CPU runs against double products and against ref.c.
 * End to end, when ../shared/reference and $CLIP_CONVERT exist: converts tiny-hf and
 * tinygelu-hf and compares every text and image embedding with OpenAI's reference, on the
 * fast path and on ref.c. */

#include "clip_internal.h"
#include "json.h"
#include "check.h"
#include "tiny_model.h"

#include <float.h>
#include <math.h>
#include <stdint.h>
#include <string.h>
#include <sys/wait.h>
#include <unistd.h>

/* =======================================================================================
 * Loading files
 * ===================================================================================== */

/* A context of `threads` threads on the matmul kernel `kernel` (NULL: the best). */
static clip_status new_ctx(const clip_model *m, int threads, const char *kernel, clip_ctx **out,
                           clip_error *err)
{
    clip_ctx_params params = {threads, kernel};
    return clip_ctx_new(m, &params, out, err);
}

static char tmpdir[256];

static const char *write_file(const char *name, const uint8_t *d, size_t size)
{
    static char path[512];
    snprintf(path, sizeof path, "%s/%s", tmpdir, name);
    FILE *f = fopen(path, "wb");
    if (!f) return path;
    if (size) fwrite(d, 1, size, f);
    fclose(f);
    return path;
}

/* Loads d[0..size) and expects CLIP_ERR_FORMAT with `want` in the message. */
static void expect_format_error(const char *what, const uint8_t *d, size_t size,
                                const char *want)
{
    const char *path = write_file("bad.clip", d, size);
    clip_model *m = NULL;
    clip_error err = {0};
    clip_status st = clip_model_load(path, &m, &err);
    CHECK(st == CLIP_ERR_FORMAT && m == NULL && strstr(err.msg, want) &&
              strstr(err.msg, path),
          "loader rejects %s (got %d: %s)", what, st, err.msg);
    clip_model_free(m);
}

static uint8_t *copy_of(const built *b)
{
    uint8_t *d = malloc(b->size);
    memcpy(d, b->data, b->size);
    return d;
}

static uint8_t *entry(uint8_t *d, const built *b, uint32_t i) { return d + b->tab_off + 96ull * i; }

static int find_entry(const built *b, const char *name)
{
    for (uint32_t i = 0; i < b->n_tensors; i++)
        if (!strcmp((const char *)b->data + b->tab_off + 96ull * i, name)) return (int)i;
    return -1;
}

static void test_corruptions(const built *b)
{
    uint8_t *d;
#define CASE(what, want, edit)                                                             \
    d = copy_of(b);                                                                        \
    edit;                                                                                  \
    expect_format_error(what, d, b->size, want);                                           \
    free(d);

    CASE("bad magic", "not a .clip file (bad magic)", d[3] ^= 1)
    CASE("format version 7", "format version 7 is not supported (this build reads version 2)",
         wr32(d + 8, 7))
    CASE("header size 128", "header size", wr32(d + 12, 128))
    CASE("reserved bytes set", "reserved", d[240] = 1)
    CASE("unterminated name", "name", memset(d + 16, 'x', 64))
    CASE("file_size smaller than the file", "header says", wr64(d + 208, b->size - 64))

    /* hyperparameters: out of range, or inconsistent with each other */
    CASE("vision width 0", "vision_width = 0", wr32(d + 88, 0))
    CASE("absurd width", "vision_width", wr32(d + 88, 1u << 30))
    CASE("width not a multiple of heads", "not a multiple of vision_heads", wr32(d + 96, 5))
    CASE("more heads than width", "vision_heads", wr32(d + 96, 64))
    CASE("image not a multiple of patch", "not a multiple of patch_size", wr32(d + 84, 7))
    CASE("patch bigger than image", "patch_size", wr32(d + 84, 64))
    CASE("absurd layer count", "text_layers", wr32(d + 112, 100000))
    CASE("zero layers", "vision_layers", wr32(d + 92, 0))
    CASE("context 0", "context_length", wr32(d + 128, 0))
    CASE("context 1e6", "context_length", wr32(d + 128, 1000000))
    CASE("vocab 2^31", "vocab_size", wr32(d + 132, 1u << 31))
    CASE("activation 9", "activation", wr32(d + 140, 9))
    CASE("eps NaN", "eps", wrf(d + 104, NAN))
    CASE("eps negative", "eps", wrf(d + 124, -1e-5f))
    CASE("std 0", "std", wrf(d + 168, 0.0f))
    CASE("mean infinite", "mean", wrf(d + 152, INFINITY))
    CASE("crop differs from image size", "crop_size", wr32(d + 148, 16))
    CASE("resize below crop", "resize_size", wr32(d + 144, 16))
    CASE("too many patches", "patches", (wr32(d + 80, 4096), wr32(d + 84, 1),
                                         wr32(d + 144, 4096), wr32(d + 148, 4096)))

    /* sections and tensor table */
    CASE("tokenizer outside the file", "tokenizer section", wr64(d + 176, b->size))
    CASE("tokenizer overlapping the table", "tensor table", wr64(d + 184, b->tab_off))
    CASE("tokenizer in the header", "tokenizer section", wr64(d + 176, 8))
    CASE("table outside the file", "tensor table", wr64(d + 192, b->size + 8))
    CASE("table misaligned", "tensor table", wr64(d + 192, b->tab_off + 4))
    CASE("absurd tensor count", "tensor table", wr32(d + 200, 0xffffffffu))
    CASE("a tensor missing", "is missing", wr32(d + 200, b->n_tensors - 1))
    CASE("corrupt tokenizer section", "tokenizer", wr32(d + b->tok_off, 7))

    int qkv = find_entry(b, "v.layers.1.attn.qkv.weight");
    int fc1 = find_entry(b, "t.layers.0.mlp.fc1.weight");
    CHECK(qkv >= 0 && fc1 >= 0, "test model has the tensors the corruptions edit");
    CASE("wrong shape",
         "tensor v.layers.1.attn.qkv.weight has shape [96, 16] but the hyperparameters need "
         "[96, 32]", wr32(entry(d, b, (uint32_t)qkv) + 68, 16))
    CASE("wrong dimension count", "has shape", wr32(entry(d, b, (uint32_t)qkv) + 60, 3))
    CASE("extra dimension not 1", "has shape", wr32(entry(d, b, (uint32_t)qkv) + 72, 2))
    CASE("size field disagrees", "data bytes", wr64(entry(d, b, (uint32_t)qkv) + 88, 4))
    CASE("unknown dtype", "dtype", wr32(entry(d, b, (uint32_t)qkv) + 56, 5))
    CASE("offset past the end", "outside", wr64(entry(d, b, (uint32_t)qkv) + 80, b->size))
    CASE("offset near 2^64", "outside",
         wr64(entry(d, b, (uint32_t)qkv) + 80, 0xffffffffffffffc0ull))
    CASE("offset misaligned", "misaligned",
         wr64(entry(d, b, (uint32_t)qkv) + 80, rd64(entry(d, b, (uint32_t)qkv) + 80) + 4))
    CASE("data over the table", "outside", wr64(entry(d, b, (uint32_t)qkv) + 80, b->tab_off / 64 * 64))
    CASE("data over the header", "outside", wr64(entry(d, b, (uint32_t)qkv) + 80, 0))
    CASE("overlapping tensors", "overlap",
         wr64(entry(d, b, (uint32_t)fc1) + 80, rd64(entry(d, b, (uint32_t)qkv) + 80)))
    CASE("duplicate tensor", "appears twice",
         memcpy(entry(d, b, (uint32_t)fc1), entry(d, b, (uint32_t)qkv), 56))
    CASE("unknown tensor", "unexpected tensor", memcpy(entry(d, b, (uint32_t)fc1), "t.bogus", 8))
    CASE("layer index past the last", "unexpected tensor",
         memcpy(entry(d, b, (uint32_t)fc1), "t.layers.2.mlp.fc1.weight", 26))
    CASE("layer index with a leading zero", "unexpected tensor",
         memcpy(entry(d, b, (uint32_t)fc1), "t.layers.00.mlp.fc1.weight", 27))
    CASE("unterminated tensor name", "NUL", memset(entry(d, b, (uint32_t)fc1), 'x', 56))
#undef CASE

    /* Truncated at many points, header to last byte: always "truncated", never a crash. */
    int all = 1;
    const size_t cuts[] = {8, 9, 100, 255, 256, 257, (size_t)b->tok_off + 10,
                           (size_t)b->tab_off, (size_t)b->tab_off + 50, b->size / 2,
                           b->size - 64, b->size - 1};
    for (size_t i = 0; i < sizeof cuts / sizeof *cuts; i++) {
        const char *path = write_file("cut.clip", b->data, cuts[i]);
        clip_model *m = NULL;
        clip_error err = {0};
        clip_status st = clip_model_load(path, &m, &err);
        if (st != CLIP_ERR_FORMAT || !strstr(err.msg, "truncated")) {
            all = 0;
            printf("  cut at %zu: %d %s\n", cuts[i], st, err.msg);
        }
        clip_model_free(m);
    }
    CHECK(all, "loader reports every truncation (12 cut points) as truncated");
    char want[128];
    snprintf(want, sizeof want, "truncated (expected %zu bytes, got %zu)", b->size,
             b->size - 1);
    expect_format_error("one byte short, with both sizes in the reason", b->data, b->size - 1,
                        want);
    expect_format_error("an empty file", b->data, 0, "bad magic");
    expect_format_error("a 3-byte file", b->data, 3, "bad magic");

    /* Random byte flips in the header, tokenizer and table: any status, never a crash. */
    rng_state = 99;
    int flips_ok = 1, loaded = 0;
    for (int it = 0; it < 300; it++) {
        d = copy_of(b);
        int n = 1 + (int)(rnd() % 4);
        for (int k = 0; k < n; k++) {
            size_t at = rnd() % (size_t)(b->tab_off + 96ull * b->n_tensors);
            d[at] ^= (uint8_t)(1u << (rnd() % 8));
        }
        const char *path = write_file("flip.clip", d, b->size);
        clip_model *m = NULL;
        clip_error err = {0};
        clip_status st = clip_model_load(path, &m, &err);
        if (st == CLIP_OK) loaded++;
        else if (!err.msg[0] || m) flips_ok = 0;
        clip_model_free(m);
        free(d);
    }
    CHECK(flips_ok, "300 files with random bit flips: each loads or fails with a reason "
                    "(%d loaded)", loaded);

    clip_model *m = NULL;
    clip_error err = {0};
    char missing[300];
    snprintf(missing, sizeof missing, "%s/no-such.clip", tmpdir);
    CHECK(clip_model_load(missing, &m, &err) == CLIP_ERR_IO && strstr(err.msg, "no-such.clip"),
          "a missing file is CLIP_ERR_IO naming it (%s)", err.msg);
    CHECK(clip_model_load(tmpdir, &m, &err) == CLIP_ERR_IO, "a directory is CLIP_ERR_IO (%s)",
          err.msg);
}

/* =======================================================================================
 * An oracle: the forward in double precision, from PyTorch's definitions
 *
 * The library's own readable forward is ref.c, in float; it is checked here like every
 * kernel. This one stays because it shares nothing with the library (no line of its code,
 * double sums, every text position computed), so a mistake made in all of the library's
 * paths alike, a wrong scale or mask say, still shows.
 * ===================================================================================== */

static void oracle_layernorm(double *x, int n, const float *w, const float *b, double eps)
{
    double mean = 0, var = 0;
    for (int i = 0; i < n; i++) mean += x[i];
    mean /= n;
    for (int i = 0; i < n; i++) var += (x[i] - mean) * (x[i] - mean);
    var /= n;
    for (int i = 0; i < n; i++) x[i] = (x[i] - mean) / sqrt(var + eps) * w[i] + b[i];
}

/* y[n_out] = W[n_out, n_in] x + b, W in the file's panel layout */
static void oracle_linear(const double *x, int n_in, const float *w, const float *b, int n_out,
                       double *y)
{
    for (int o = 0; o < n_out; o++) {
        double s = b ? b[o] : 0;
        for (int i = 0; i < n_in; i++) s += (double)w[clip_panel_index(o, i, n_out, n_in)] * x[i];
        y[o] = s;
    }
}

static void oracle_block(const clip_tower *tw, double *x, int T, int causal)
{
    int W = tw->width, H = tw->heads, d = W / H, M = tw->mlp;
    double *h = malloc(sizeof(double) * (size_t)T * W), *qkv = malloc(sizeof(double) * T * 3 * W);
    double *att = malloc(sizeof(double) * (size_t)T * W), *mlp = malloc(sizeof(double) * M);
    double *o = malloc(sizeof(double) * W), *s = malloc(sizeof(double) * T);
    for (int l = 0; l < tw->n_layers; l++) {
        const clip_layer *L = &tw->layers[l];
        for (int t = 0; t < T; t++) {
            memcpy(h + t * W, x + t * W, sizeof(double) * W);
            oracle_layernorm(h + t * W, W, L->ln1_w, L->ln1_b, tw->ln_eps);
            oracle_linear(h + t * W, W, L->qkv_w, L->qkv_b, 3 * W, qkv + t * 3 * W);
        }
        for (int hh = 0; hh < H; hh++)
            for (int i = 0; i < T; i++) {
                int n = causal ? i + 1 : T;
                double mx = -INFINITY, sum = 0;
                for (int j = 0; j < n; j++) {
                    double dot = 0;
                    for (int k = 0; k < d; k++)
                        dot += qkv[i * 3 * W + hh * d + k] * qkv[j * 3 * W + W + hh * d + k];
                    s[j] = dot / sqrt((double)d);
                    mx = s[j] > mx ? s[j] : mx;
                }
                for (int j = 0; j < n; j++) sum += s[j] = exp(s[j] - mx);
                for (int k = 0; k < d; k++) {
                    double a = 0;
                    for (int j = 0; j < n; j++) a += s[j] / sum * qkv[j * 3 * W + 2 * W + hh * d + k];
                    att[i * W + hh * d + k] = a;
                }
            }
        for (int t = 0; t < T; t++) {
            oracle_linear(att + t * W, W, L->out_w, L->out_b, W, o);
            for (int i = 0; i < W; i++) x[t * W + i] += o[i];
            memcpy(h, x + t * W, sizeof(double) * W);
            oracle_layernorm(h, W, L->ln2_w, L->ln2_b, tw->ln_eps);
            oracle_linear(h, W, L->fc1_w, L->fc1_b, M, mlp);
            for (int i = 0; i < M; i++)
                mlp[i] = tw->act == CLIP_ACT_GELU ? 0.5 * mlp[i] * (1 + erf(mlp[i] / sqrt(2.0)))
                                                  : mlp[i] / (1 + exp(-1.702 * mlp[i]));
            oracle_linear(mlp, M, L->fc2_w, L->fc2_b, W, o);
            for (int i = 0; i < W; i++) x[t * W + i] += o[i];
        }
    }
    free(h), free(qkv), free(att), free(mlp), free(o), free(s);
}

static void oracle_image(const clip_model *m, const float *px, double *out)
{
    const clip_hparams *hp = clip_model_hparams(m);
    const clip_weights *w = clip_model_weights(m);
    int S = (int)hp->image_size, P = (int)hp->patch_size, g = S / P, T = g * g + 1;
    int W = (int)hp->vision_width;
    double *x = calloc((size_t)T * W, sizeof *x), *patch = malloc(sizeof(double) * 3 * P * P);
    for (int i = 0; i < W; i++) x[i] = w->v_class_embed[i];
    for (int py = 0; py < g; py++)
        for (int pxx = 0; pxx < g; pxx++) {
            for (int c = 0; c < 3; c++)
                for (int y = 0; y < P; y++)
                    for (int xx = 0; xx < P; xx++)
                        patch[(c * P + y) * P + xx] =
                            px[((size_t)c * S + py * P + y) * S + pxx * P + xx];
            oracle_linear(patch, 3 * P * P, w->v_patch_embed, NULL, W, x + (1 + py * g + pxx) * W);
        }
    for (int t = 0; t < T; t++) {
        for (int i = 0; i < W; i++) x[t * W + i] += w->v_pos_embed[t * W + i];
        oracle_layernorm(x + t * W, W, w->v_ln_pre_w, w->v_ln_pre_b, hp->vision_ln_eps);
    }
    oracle_block(&w->vision, x, T, 0);
    oracle_layernorm(x, W, w->v_ln_post_w, w->v_ln_post_b, hp->vision_ln_eps);
    oracle_linear(x, W, w->v_proj, NULL, (int)hp->embed_dim, out);
    free(x), free(patch);
}

static void oracle_text(const clip_model *m, const int32_t *ids, double *out)
{
    const clip_hparams *hp = clip_model_hparams(m);
    const clip_weights *w = clip_model_weights(m);
    int C = (int)hp->context_length, W = (int)hp->text_width, eot = 0;
    double *x = malloc(sizeof(double) * (size_t)C * W);
    for (int t = 0; t < C; t++) {
        if (ids[t] > ids[eot]) eot = t;
        for (int i = 0; i < W; i++)
            x[t * W + i] = (double)w->t_token_embed[(size_t)ids[t] * W + i] + w->t_pos_embed[t * W + i];
    }
    oracle_block(&w->text, x, C, 1);  /* all positions: the engine's cut at EOT must not matter */
    oracle_layernorm(x + eot * W, W, w->t_ln_final_w, w->t_ln_final_b, hp->text_ln_eps);
    oracle_linear(x + eot * W, W, w->t_proj, NULL, (int)hp->embed_dim, out);
    free(x);
}

static double cosine_fd(const float *a, const double *b, int n)
{
    double ab = 0, aa = 0, bb = 0;
    for (int i = 0; i < n; i++) ab += a[i] * b[i], aa += (double)a[i] * a[i], bb += b[i] * b[i];
    return ab / sqrt(aa * bb);
}

/* =======================================================================================
 * Engine against the oracle: ref.c's plain loops, then the fast path
 * ===================================================================================== */

#define N_IMG 5
#define N_TXT 7

static void test_math(const char *label, const clip_model *m, const clip_model *m16)
{
    const clip_hparams *hp = clip_model_hparams(m);
    int E = (int)hp->embed_dim, C = (int)hp->context_length;
    size_t ipx = 3 * (size_t)hp->image_size * hp->image_size;
    float *px = malloc(sizeof(float) * ipx * N_IMG);
    rng_state = 5;
    for (size_t i = 0; i < ipx * N_IMG; i++) px[i] = (float)(rnd() % 4096) / 1024.0f - 2.0f;
    int32_t ids[N_TXT * 16];
    memset(ids, 0, sizeof ids);
    /* EOT at assorted positions, one at the very end, one written twice (the first counts),
     * one text with no EOT at all (the largest id still marks the end, as argmax does) */
    const int eot_at[N_TXT] = {1, 4, 5, 15, 9, 2, 6};
    for (int b = 0; b < N_TXT; b++) {
        int32_t *r = ids + b * C;
        r[0] = 513;
        for (int t = 1; t < eot_at[b]; t++) r[t] = (int32_t)(rnd() % 513);
        r[eot_at[b]] = 514;
    }
    ids[4 * C + 12] = 514;
    ids[6 * C + 6] = 100;

    float img[N_IMG * 64], txt[N_TXT * 64], one[64], img16[N_IMG * 64], txt16[N_TXT * 64];
    float img_ref[N_IMG * 64] = {0}, txt_ref[N_TXT * 64] = {0};
    double want[64];
    /* ref.c first, at 1 to 3 threads, then the best kernel, also held to ref.c */
    static const char *const kernels[] = {"ref", NULL};
    for (int run = 0; run < 6; run++) {
        int k = run / 3, threads = run % 3 + 1;
        const char *kn = kernels[k] ? kernels[k] : "auto";
        clip_ctx *ctx = NULL;
        clip_error err = {0};
        if (!CHECK(new_ctx(m, threads, kernels[k], &ctx, &err) == CLIP_OK, "%s [%s]: context "
                   "with %d threads", label, kn, threads))
            continue;
        CHECK(clip_encode_images(ctx, px, N_IMG, img, &err) == CLIP_OK, "%s [%s]: encode %d "
              "images in one batch (%d threads)", label, kn, N_IMG, threads);
        CHECK(clip_encode_texts(ctx, ids, N_TXT, txt, &err) == CLIP_OK, "%s [%s]: encode %d texts "
              "of mixed lengths in one call (%d threads)", label, kn, N_TXT, threads);
        double worst_i = 1, worst_t = 1, worst_bi = 1, worst_bt = 1, worst_r = 1;
        for (int b = 0; b < N_IMG; b++) {
            oracle_image(m, px + b * ipx, want);
            double c = cosine_fd(img + b * E, want, E);
            worst_i = c < worst_i ? c : worst_i;
            clip_encode_images(ctx, px + b * ipx, 1, one, &err);
            c = clip_cosine(one, img + b * E, (size_t)E);
            worst_bi = c < worst_bi ? c : worst_bi;
            for (int i = 0; i < E; i++) want[i] = img_ref[b * E + i];
            c = cosine_fd(img + b * E, want, E);
            worst_r = c < worst_r ? c : worst_r;
        }
        for (int b = 0; b < N_TXT; b++) {
            oracle_text(m, ids + b * C, want);
            double c = cosine_fd(txt + b * E, want, E);
            worst_t = c < worst_t ? c : worst_t;
            clip_encode_texts(ctx, ids + b * C, 1, one, &err);
            c = clip_cosine(one, txt + b * E, (size_t)E);
            worst_bt = c < worst_bt ? c : worst_bt;
            for (int i = 0; i < E; i++) want[i] = txt_ref[b * E + i];
            c = cosine_fd(txt + b * E, want, E);
            worst_r = c < worst_r ? c : worst_r;
        }
        CHECK(1 - worst_i <= 1e-9, "%s [%s]: images match the double-precision forward (worst "
              "1 - cosine %.1e, %d threads)", label, kn, 1 - worst_i, threads);
        CHECK(1 - worst_t <= 1e-9, "%s [%s]: texts match the double-precision forward over all "
              "positions (worst 1 - cosine %.1e, %d threads)", label, kn, 1 - worst_t, threads);
        CHECK(worst_bi >= 0.9999999 && worst_bt >= 0.9999999, "%s [%s]: one at a time equals "
              "batched (1 - cosine: images %.1e, texts %.1e)", label, kn, 1 - worst_bi,
              1 - worst_bt);
        if (kernels[k] && threads == 1) {
            memcpy(img_ref, img, sizeof img_ref);
            memcpy(txt_ref, txt, sizeof txt_ref);
        } else if (kernels[k]) {
            /* one multiply-add at a time, row by row: no thread count can change a bit */
            CHECK(!memcmp(img_ref, img, sizeof(float) * E * N_IMG) &&
                      !memcmp(txt_ref, txt, sizeof(float) * E * N_TXT),
                  "%s [ref]: %d threads give the bits of 1", label, threads);
        } else {
            /* each within 1e-9 of the double forward: their angles to it at most
             * sqrt(2e-9), so to each other at most twice that, 1 - cosine <= 4e-9 */
            CHECK(1 - worst_r <= 4e-9, "%s [auto]: images and texts match the ref path "
                  "(worst 1 - cosine %.1e, %d threads)", label, 1 - worst_r, threads);
        }
        if (threads == 2 && m16) {
            clip_ctx *c16 = NULL;
            if (new_ctx(m16, 2, kernels[k], &c16, &err) == CLIP_OK) {
                clip_encode_images(c16, px, N_IMG, img16, &err);
                clip_encode_texts(c16, ids, N_TXT, txt16, &err);
                CHECK(!memcmp(img16, img, sizeof(float) * E * N_IMG) &&
                          !memcmp(txt16, txt, sizeof(float) * E * N_TXT),
                      "%s [%s]: the f16 file gives bit-identical embeddings (its halves widen "
                      "exactly)", label, kn);
            }
            clip_ctx_free(c16);
        }
        clip_ctx_free(ctx);
    }

    clip_ctx *ctx = NULL;
    clip_error err = {0};
    new_ctx(m, 0, NULL, &ctx, &err);
    int32_t bad[16];
    memcpy(bad, ids, sizeof bad);
    bad[3] = TEST_VOCAB;
    CHECK(clip_encode_texts(ctx, bad, 1, txt, &err) == CLIP_ERR_ARG && strstr(err.msg, "515"),
          "%s: a token id past the vocabulary is CLIP_ERR_ARG (%s)", label, err.msg);
    bad[3] = -1;
    CHECK(clip_encode_texts(ctx, bad, 1, txt, &err) == CLIP_ERR_ARG,
          "%s: a negative token id is CLIP_ERR_ARG", label);
    CHECK(clip_encode_texts(ctx, ids, 0, txt, &err) == CLIP_OK &&
              clip_encode_images(ctx, px, 0, img, &err) == CLIP_OK,
          "%s: empty batches are fine", label);
    CHECK(clip_encode_images(ctx, NULL, 1, img, &err) == CLIP_ERR_ARG &&
              clip_encode_texts(ctx, ids, -1, txt, &err) == CLIP_ERR_ARG,
          "%s: NULL pixels and negative counts are CLIP_ERR_ARG", label);
    clip_ctx_free(ctx);
    free(px);
}

/* Batches big enough to be split into lanes (one per thread, CLIP_LANE_MIN_ROWS rows
 * each or more), with some left over for a shared forward: every image and text as it
 * comes out alone. Texts of mixed lengths, dealt out between lanes by length. */
static void test_lanes(const char *label, const clip_model *m)
{
    const clip_hparams *hp = clip_model_hparams(m);
    int E = (int)hp->embed_dim, C = (int)hp->context_length;
    int tokens = (int)((hp->image_size / hp->patch_size) * (hp->image_size / hp->patch_size)) + 1;
    size_t ipx = 3 * (size_t)hp->image_size * hp->image_size;
    int per_lane = (CLIP_LANE_MIN_ROWS + tokens - 1) / tokens;
    int n_img = 3 * per_lane + 2, n_txt = 3 * CLIP_LANE_MIN_ROWS / 2 + 1;
    float *px = malloc(sizeof(float) * ipx * (size_t)n_img);
    int32_t *ids = calloc((size_t)n_txt * C, sizeof *ids);
    float *img = malloc(sizeof(float) * E * (size_t)n_img), *txt = malloc(sizeof(float) * E * (size_t)n_txt);
    float *one = malloc(sizeof(float) * E);
    rng_state = 17;
    for (size_t i = 0; i < ipx * (size_t)n_img; i++) px[i] = (float)(rnd() % 4096) / 1024.0f - 2.0f;
    for (int b = 0; b < n_txt; b++) {
        int eot = 1 + (int)(rnd() % (uint32_t)(C - 1));
        ids[(size_t)b * C] = 513;
        for (int t = 1; t < eot; t++) ids[(size_t)b * C + t] = (int32_t)(rnd() % 513);
        ids[(size_t)b * C + eot] = 514;
    }
    clip_ctx *alone = NULL;
    clip_error err = {0};
    if (!CHECK(new_ctx(m, 1, NULL, &alone, &err) == CLIP_OK, "%s: lanes: one-thread context", label))
        goto out;
    for (int threads = 2; threads <= 3; threads++) {
        clip_ctx *ctx = NULL;
        if (new_ctx(m, threads, NULL, &ctx, &err) != CLIP_OK) continue;
        int n_i = threads * per_lane + 1;   /* a full share per lane, one left over */
        double worst_i = 1, worst_t = 1;
        int ok = clip_encode_images(ctx, px, n_i, img, &err) == CLIP_OK &&
                  clip_encode_texts(ctx, ids, n_txt, txt, &err) == CLIP_OK;
        for (int b = 0; ok && b < n_i; b++) {
            ok = clip_encode_images(alone, px + b * ipx, 1, one, &err) == CLIP_OK;
            double c = clip_cosine(one, img + (size_t)b * E, (size_t)E);
            worst_i = c < worst_i ? c : worst_i;
        }
        for (int b = 0; ok && b < n_txt; b++) {
            ok = clip_encode_texts(alone, ids + (size_t)b * C, 1, one, &err) == CLIP_OK;
            double c = clip_cosine(one, txt + (size_t)b * E, (size_t)E);
            worst_t = c < worst_t ? c : worst_t;
        }
        CHECK(ok && worst_i >= 0.9999999 && worst_t >= 0.9999999, "%s: %d images and %d texts "
              "split into %d lanes equal each one alone (1 - cosine: images %.1e, texts %.1e)",
              label, n_i, n_txt, threads, 1 - worst_i, 1 - worst_t);
        clip_ctx_free(ctx);
    }
    clip_ctx_free(alone);
out:
    free(px), free(ids), free(img), free(txt), free(one);
}

/* =======================================================================================
 * clip_linear at every shape its kernels split differently
 *
 * Each kernel this CPU runs (CLIP_MATMUL), on 1 to 77 rows around every tile edge (6 and
 * 12 rows; tiles are split evenly), outputs around every panel edge (32 columns; the AVX2
 * kernel does halves of 16 and masks the rest), inputs of any width up to 520, weights off
 * a vector boundary, bias and residual, 1 to 3 threads: each output against a
 * double-precision product within the worst-case float summation bound, and each fast
 * kernel against ref.c (the "ref" kernel) within twice that bound: both are within it of
 * the exact sum, so of each other within twice. The ref kernel takes the first tests too.
 * ===================================================================================== */

static void test_linear_kernel(const clip_model *m, const char *kernel)
{
    static const int rows_of[] = {1, 2, 5, 6, 7, 11, 12, 13, 25, 50, 77};
    static const int in_of[] = {1, 5, 8, 9, 16, 23, 40, 256, 300, 520};
    static const int out_of[] = {1, 3, 8, 15, 16, 17, 31, 32, 33, 48, 70};
    enum { MAX_R = 77, MAX_I = 520, MAX_O = 70 };
    float *x = malloc(sizeof(float) * MAX_R * MAX_I), *wbuf = malloc(sizeof(float) * (MAX_O * MAX_I + 1));
    float *b = malloc(sizeof(float) * MAX_O), *y = malloc(sizeof(float) * MAX_R * MAX_O);
    float *res = malloc(sizeof(float) * MAX_R * MAX_O), *spare = malloc(sizeof(float) * MAX_R * MAX_O);
    float *y_ref = malloc(sizeof(float) * MAX_R * MAX_O), *res_ref = malloc(sizeof(float) * MAX_R * MAX_O);
    const float *w = wbuf + 1;
    clip_ctx *rctx = NULL;   /* ref.c, for a fast kernel */
    clip_error rerr = {0};
    if (strcmp(kernel, "ref"))
        CHECK(new_ctx(m, 1, "ref", &rctx, &rerr) == CLIP_OK, "linear: a ref context");
    rng_state = 11;
    for (int i = 0; i < MAX_R * MAX_I; i++) x[i] = (float)((int)(rnd() % 2001) - 1000) / 500.0f;
    for (int i = 0; i < MAX_O * MAX_I + 1; i++) wbuf[i] = (float)((int)(rnd() % 2001) - 1000) / 700.0f;
    for (int i = 0; i < MAX_O; i++) b[i] = (float)((int)(rnd() % 201) - 100) / 100.0f;
    for (int threads = 1; threads <= 3; threads++) {
        clip_ctx *ctx = NULL;
        clip_error err = {0};
        if (!CHECK(new_ctx(m, threads, kernel, &ctx, &err) == CLIP_OK, "linear: context with %d "
                   "threads", threads))
            continue;
        CHECK(!strcmp(clip_ctx_matmul(ctx), kernel), "linear: CLIP_MATMUL=%s gives %s", kernel,
              clip_ctx_matmul(ctx));
        double worst = 0, worst_ref = 0;   /* largest error as a fraction of its bound */
        int shapes = 0;
        for (size_t ri = 0; ri < sizeof rows_of / sizeof *rows_of; ri++)
            for (size_t ii = 0; ii < sizeof in_of / sizeof *in_of; ii++)
                for (size_t oi = 0; oi < sizeof out_of / sizeof *out_of; oi++) {
                    int R = rows_of[ri], I = in_of[ii], O = out_of[oi];
                    for (int i = 0; i < R * O; i++) res[i] = res_ref[i] = (float)(i % 7);
                    clip_linear(ctx, x, R, I, w, b, O, y, -1, NULL);
                    /* with a residual, y is only scratch */
                    clip_linear(ctx, x, R, I, w, b, O, spare, -1, res);
                    if (rctx) {
                        clip_linear(rctx, x, R, I, w, b, O, y_ref, -1, NULL);
                        clip_linear(rctx, x, R, I, w, b, O, spare, -1, res_ref);
                    }
                    for (int r = 0; r < R; r++)
                        for (int o = 0; o < O; o++) {
                            double dot = b[o], mag = fabs(b[o]);
                            for (int i = 0; i < I; i++) {
                                double t = (double)x[r * I + i] * w[clip_panel_index(o, i, O, I)];
                                dot += t;
                                mag += fabs(t);
                            }
                            /* n terms summed in float in any order: |error| <= n eps sum|t| */
                            double bound = (I + 2) * (double)FLT_EPSILON * mag + 1e-30;
                            double bound_res = bound + (double)FLT_EPSILON * (fabs(dot) + 7);
                            double e = fabs(y[r * O + o] - dot) / bound;
                            double er = fabs(res[r * O + o] - (dot + (r * O + o) % 7)) / bound_res;
                            worst = e > worst ? e : worst;
                            worst = er > worst ? er : worst;
                            e = fabs(y[r * O + o] - y_ref[r * O + o]) / (2 * bound);
                            er = fabs(res[r * O + o] - res_ref[r * O + o]) / (2 * bound_res);
                            worst_ref = rctx && e > worst_ref ? e : worst_ref;
                            worst_ref = rctx && er > worst_ref ? er : worst_ref;
                        }
                    shapes++;
                }
        CHECK(worst <= 1, "linear (%s): %d shapes (1-77 rows, 1-520 in, 1-70 out) match the double "
              "product (worst error %.2f of the float bound, %d threads)", kernel, shapes,
              worst, threads);
        if (rctx)
            CHECK(worst_ref <= 1, "linear (%s): the %d shapes, with and without residual, match "
                  "ref.c within twice the float bound (worst %.2f of it, %d threads)", kernel,
                  shapes, worst_ref, threads);
        clip_ctx_free(ctx);
    }
    clip_ctx_free(rctx);
    free(x), free(wbuf), free(b), free(y), free(res), free(spare), free(y_ref), free(res_ref);
}

/* The activations after a linear, as the kernel `kernel` applies them (the AVX-512 kernel
 * computes QuickGELU in its registers with its own exp): a 1-input linear with weight 1
 * passes x through exactly, so each output is the activation of a known float, compared
 * with the formula in double, over -120 .. 120 (exp overflows and underflows at the ends),
 * zeros and subnormals. The float formula's own steps are kept: QuickGELU's exponent is
 * the float product -1.702f x (its rounding alone moves e^66 by 17 ulp), and GELU's
 * 1 + erf(x / sqrt 2) cancels to 0 in float below x = -5.5, so there the bound is
 * absolute, eps |x|. A fast kernel's outputs also match ref.c's within twice the bound. */
static void test_activation_kernel(const clip_model *m, const char *kernel)
{
    enum { N = 4001 };
    float *x = malloc(sizeof(float) * N), *y = malloc(sizeof(float) * N);
    float *y_ref = malloc(sizeof(float) * N);
    float one[CLIP_PANEL];
    for (int i = 0; i < CLIP_PANEL; i++) one[i] = 1.0f;
    for (int i = 0; i < N - 5; i++) x[i] = -120.0f + 240.0f * (float)i / (N - 6);
    x[N - 5] = 0.0f, x[N - 4] = -0.0f, x[N - 3] = 1e-40f, x[N - 2] = -1e-40f, x[N - 1] = 88.7f;
    clip_ctx *ctx = NULL, *rctx = NULL;
    clip_error err = {0};
    if (strcmp(kernel, "ref"))
        CHECK(new_ctx(m, 1, "ref", &rctx, &err) == CLIP_OK, "activation: a ref context");
    if (CHECK(new_ctx(m, 2, kernel, &ctx, &err) == CLIP_OK, "activation: context (%s)", kernel)) {
        for (int act = CLIP_ACT_QUICK_GELU; act <= CLIP_ACT_GELU; act++) {
            clip_linear(ctx, x, N, 1, one, NULL, 1, y, act, NULL);
            if (rctx) clip_linear(rctx, x, N, 1, one, NULL, 1, y_ref, act, NULL);
            double worst = 0, worst_ref = 0;
            int bad = -1;
            for (int i = 0; i < N; i++) {
                double v = x[i];
                double want, bound;
                if (act == CLIP_ACT_QUICK_GELU) {
                    want = v / (1 + exp((double)(-1.702f * x[i])));
                    /* below x = -52 e^-1.702x overflows: 0 where the value is under 1e-36 */
                    bound = 4 * FLT_EPSILON * fabs(want) + 1e-36;
                } else {
                    want = 0.5 * v * (1 + erf(v / sqrt(2)));
                    bound = 4 * FLT_EPSILON * fabs(want) + FLT_EPSILON * fabs(v) + 1e-37;
                }
                double e = fabs(y[i] - want) / bound;
                if (e > worst) worst = e, bad = i;
                e = fabs(y[i] - y_ref[i]) / (2 * bound);
                if (rctx && e > worst_ref) worst_ref = e;
            }
            CHECK(worst <= 1, "activation %s (%s): %d inputs -120..120 within 4 ulp of the "
                  "formula in double (worst %.2f of the bound%s%g)", act == CLIP_ACT_QUICK_GELU ?
                  "quick_gelu" : "gelu", kernel, N, worst, bad >= 0 ? ", at x=" : "",
                  bad >= 0 ? x[bad] : 0.0);
            if (rctx)
                CHECK(worst_ref <= 1, "activation %s (%s): within twice the bound of ref.c's "
                      "(worst %.2f of it)", act == CLIP_ACT_QUICK_GELU ? "quick_gelu" : "gelu",
                      kernel, worst_ref);
        }
    }
    clip_ctx_free(ctx);
    clip_ctx_free(rctx);
    free(x), free(y), free(y_ref);
}

/* How far output o of linear(LayerNorm(x)) computed in float, in any summation order,
 * can be from the exact value, for one row x of n floats. LayerNorm: the mean is off by
 * at most dm = (n + 2) eps mean|x|; the variance's first-order error from dm cancels (the
 * deviations sum to 0), leaving a relative (n + 6) eps, so rstd's is under (n + 12) eps / 2;
 * each output h_i is then within |w_i| rstd (2 dm + (n + 12) eps |x_i - mean|) + 2 eps
 * (|h_i| + |b_i|) of its value: taken doubled here. The linear adds its summation bound
 * over those h, and an activation multiplies the error by at most 1.2 (the largest slope of
 * GELU and QuickGELU) and adds 4 ulp of its own. */
static double ln_linear_bound(const float *x, const clip_norm *ln, const float *w,
                              const float *b, int n, int n_out, int o, int act)
{
    double mean = 0, var = 0, absx = 0, eps = FLT_EPSILON, sum = b[o], err = 0, mag = fabs(b[o]);
    for (int i = 0; i < n; i++) mean += x[i], absx += fabs(x[i]);
    mean /= n;
    for (int i = 0; i < n; i++) var += (x[i] - mean) * (x[i] - mean);
    double rstd = 1 / sqrt(var / n + ln->eps), dm = (n + 2) * eps * absx / n;
    for (int i = 0; i < n; i++) {
        double d = x[i] - mean, h = d * rstd * ln->w[i] + ln->b[i];
        double dh = 2 * (fabs(ln->w[i]) * rstd * (2 * dm + (n + 12) * eps * fabs(d)) +
                         2 * eps * (fabs(h) + fabs(ln->b[i])));
        double wi = w[clip_panel_index(o, i, n_out, n)];
        sum += wi * h, err += fabs(wi) * dh, mag += fabs(wi) * (fabs(h) + dh);
    }
    double bound = err + (n + 2) * eps * mag;
    return act < 0 ? bound : 1.2 * bound + 4 * eps * (fabs(sum) + bound) + 1e-37;
}

/* clip_linear_ln, which normalizes while it re-lays the input, gives exactly what
 * clip_layernorm then clip_linear give, with either activation, and leaves x alone; a
 * fast kernel's result is also within twice ln_linear_bound of ref.c's. */
static void test_linear_ln_kernel(const clip_model *m, const char *kernel)
{
    static const int rows_of[] = {1, 7, 12, 13, 50, 77, 200};
    enum { MAX_R = 200, I = 40, O = 70 };
    float *x = malloc(sizeof(float) * MAX_R * I), *x0 = malloc(sizeof(float) * MAX_R * I);
    float *h = malloc(sizeof(float) * MAX_R * I), *w = malloc(sizeof(float) * O * I);
    float *lw = malloc(sizeof(float) * I), *lb = malloc(sizeof(float) * I), *b = malloc(sizeof(float) * O);
    float *y1 = malloc(sizeof(float) * MAX_R * O), *y2 = malloc(sizeof(float) * MAX_R * O);
    float *y_ref = malloc(sizeof(float) * MAX_R * O);
    clip_ctx *rctx = NULL;
    clip_error rerr = {0};
    if (strcmp(kernel, "ref"))
        CHECK(new_ctx(m, 1, "ref", &rctx, &rerr) == CLIP_OK, "linear_ln: a ref context");
    double worst_ref = 0;
    rng_state = 5;
    for (int i = 0; i < MAX_R * I; i++) x[i] = (float)((int)(rnd() % 2001) - 1000) / 300.0f;
    for (int i = 0; i < O * I; i++) w[i] = (float)((int)(rnd() % 2001) - 1000) / 900.0f;
    for (int i = 0; i < I; i++) lw[i] = (float)((int)(rnd() % 201)) / 100.0f;
    for (int i = 0; i < I; i++) lb[i] = (float)((int)(rnd() % 201) - 100) / 100.0f;
    for (int i = 0; i < O; i++) b[i] = (float)((int)(rnd() % 201) - 100) / 100.0f;
    memcpy(x0, x, sizeof(float) * MAX_R * I);
    int cases = 0, same = 0;
    for (int threads = 1; threads <= 2; threads++) {
        clip_ctx *ctx = NULL;
        clip_error err = {0};
        if (new_ctx(m, threads, kernel, &ctx, &err) != CLIP_OK) continue;
        clip_norm ln = {lw, lb, 1e-5f};
        for (size_t ri = 0; ri < sizeof rows_of / sizeof *rows_of; ri++)
            for (int act = -1; act <= 1; act++) {
                int R = rows_of[ri];
                clip_layernorm(ctx, x, I, h, I, R, I, lw, lb, 1e-5f);
                clip_linear(ctx, h, R, I, w, b, O, y1, act, NULL);
                clip_linear_ln(ctx, x, R, I, &ln, w, b, O, y2, act);
                cases++;
                same += !memcmp(y1, y2, sizeof(float) * R * O);
                if (!rctx) continue;
                clip_linear_ln(rctx, x, R, I, &ln, w, b, O, y_ref, act);
                for (int r = 0; r < R; r++)
                    for (int o = 0; o < O; o++) {
                        double e = fabs(y2[r * O + o] - y_ref[r * O + o]) /
                                   (2 * ln_linear_bound(x + r * I, &ln, w, b, I, O, o, act));
                        worst_ref = e > worst_ref ? e : worst_ref;
                    }
            }
        clip_ctx_free(ctx);
    }
    if (rctx)
        CHECK(cases == 42 && worst_ref <= 1, "linear (%s): LayerNorm then linear matches ref.c "
              "within twice the float bound (worst %.2f of it, %d cases)", kernel, worst_ref,
              cases);
    clip_ctx_free(rctx);
    free(y_ref);
    CHECK(cases == 42 && same == cases && !memcmp(x, x0, sizeof(float) * MAX_R * I),
          "linear (%s): LayerNorm fused into the re-layout is bit-identical to LayerNorm then "
          "linear (%d of %d cases, 1-200 rows, 1-2 threads)", kernel, same, cases);
    free(x), free(x0), free(h), free(w), free(lw), free(lb), free(b), free(y1), free(y2);
}

/* Every kernel this CPU runs, and a clear refusal of one it cannot or of a misspelling. */
static void test_linear(const clip_model *m)
{
    static const char *const kernels[] = {"ref", "blas", "avx2", "avx512"};
    for (size_t k = 0; k < sizeof kernels / sizeof *kernels; k++) {
        clip_ctx *ctx = NULL;
        clip_error err = {0};
        clip_status st = new_ctx(m, 1, kernels[k], &ctx, &err);
        clip_ctx_free(ctx);
        if (st == CLIP_OK) {
            test_linear_kernel(m, kernels[k]);
            test_linear_ln_kernel(m, kernels[k]);
            test_activation_kernel(m, kernels[k]);
        } else if (CHECK(st == CLIP_ERR_ARG && strstr(err.msg, "cannot run"),
                       "CLIP_MATMUL=%s refused on this CPU: %s", kernels[k], err.msg))
            check_skip("linear (%s): this CPU cannot run it", kernels[k]);
    }
    clip_ctx *ctx = NULL;
    clip_error err = {0};
    CHECK(new_ctx(m, 1, "avx1024", &ctx, &err) == CLIP_ERR_ARG && !ctx &&
              strstr(err.msg, "expected auto, avx512, avx2, blas or ref"),
          "CLIP_MATMUL=avx1024 is refused: %s", err.msg);
}

/* =======================================================================================
 * End to end against OpenAI's reference (../shared/reference/expected.json)
 * ===================================================================================== */

static uint8_t *read_all(const char *path, size_t *size)
{
    FILE *f = fopen(path, "rb");
    if (!f) return NULL;
    size_t cap = 1 << 16, n = 0;
    uint8_t *d = malloc(cap);
    for (size_t got; d && (got = fread(d + n, 1, cap - n, f)) > 0;) {
        n += got;
        if (n == cap) {
            uint8_t *bigger = realloc(d, cap *= 2);
            if (!bigger) free(d);
            d = bigger;
        }
    }
    fclose(f);
    *size = n;
    return d;
}

/* Runs the converter without a shell (paths may hold any character). */
static int run_convert(const char *conv, const char *src, const char *out)
{
    pid_t pid = fork();
    if (pid < 0) return -1;
    if (pid == 0) {
        /* its progress lines are not test output */
        if (!freopen("/dev/null", "w", stdout) || !freopen("/dev/null", "w", stderr)) _exit(126);
        execl(conv, conv, src, out, (char *)NULL);
        _exit(127);
    }
    int status;
    if (waitpid(pid, &status, 0) < 0) return -1;
    return WIFEXITED(status) ? WEXITSTATUS(status) : -1;
}

static int floats_of(const clip_json *a, float *out, int max)
{
    if (!a || a->type != CLIP_JSON_ARRAY || (int)a->n > max) return -1;
    for (size_t i = 0; i < a->n; i++) {
        if (a->items[i].type != CLIP_JSON_NUMBER) return -1;
        out[i] = (float)a->items[i].number;
    }
    return (int)a->n;
}

/* OpenAI's embeddings for `name` (expected.json's entry `exp`) against ours, from the
 * reference's own ids and image files, on the best kernel and on ref.c. */
static void reference_model(const char *ref, const char *conv, const char *name,
                            const clip_json *exp)
{
    char src[600], out[600];
    snprintf(src, sizeof src, "%s/%s", ref, name);
    snprintf(out, sizeof out, "%s/%s.clip", tmpdir, name);
    if (!CHECK(run_convert(conv, src, out) == 0, "%s: clip-convert succeeds", name)) return;
    clip_model *m = NULL;
    clip_error err = {0};
    clip_status st = clip_model_load(out, &m, &err);
    if (!CHECK(st == CLIP_OK, "%s: converted model loads (%s)", name,
               st == CLIP_OK ? "ok" : err.msg)) {
        unlink(out);
        return;
    }
    const clip_hparams *hp = clip_model_hparams(m);
    int E = (int)hp->embed_dim, C = (int)hp->context_length;

    /* texts: by the reference's own ids, all in one call (so several length groups) */
    const clip_json *texts = clip_json_get(exp, "texts");
    size_t nt = texts && texts->type == CLIP_JSON_ARRAY ? texts->n : 0;
    int32_t *ids = calloc(nt ? nt : 1, sizeof(int32_t) * (size_t)C);
    float *want_t = calloc(nt ? nt : 1, sizeof(float) * (size_t)E);
    int ok_t = nt > 0;
    for (size_t i = 0; ok_t && i < nt; i++) {
        const clip_json *idv = clip_json_get(&texts->items[i], "ids");
        ok_t = idv && idv->type == CLIP_JSON_ARRAY && (int)idv->n == C &&
               floats_of(clip_json_get(&texts->items[i], "embedding"), want_t + i * E, E) == E;
        for (int t = 0; ok_t && t < C; t++) ids[i * C + t] = (int32_t)idv->items[t].number;
    }
    CHECK(ok_t, "%s: expected.json holds %zu texts with ids and embeddings", name, nt);

    /* images: decoded and preprocessed by image.c, encoded in one batch */
    const clip_json *images = clip_json_get(exp, "images");
    size_t ni = images && images->type == CLIP_JSON_OBJECT ? images->n : 0;
    size_t ipx = 3 * (size_t)hp->crop_size * hp->crop_size;
    float *px = malloc(sizeof(float) * ipx * (ni ? ni : 1));
    float *want_i = malloc(sizeof(float) * (size_t)E * (ni ? ni : 1));
    int *is_jpeg = calloc(ni ? ni : 1, sizeof(int));
    const char **img_name = calloc(ni ? ni : 1, sizeof(char *));
    int n = 0;
    for (size_t i = 0; i < ni; i++) {
        const char *file = images->keys[i];
        char path[700];
        snprintf(path, sizeof path, "%s/images/%s", ref, file);
        size_t len = 0;
        uint8_t *data = read_all(path, &len);
        clip_image img = {0};
        st = data ? clip_image_decode(data, len, CLIP_DEFAULT_MAX_PIXELS, &img, &err)
                   : CLIP_ERR_IO;
        if (st == CLIP_OK) st = clip_image_preprocess(&img, hp, px + (size_t)n * ipx, &err);
        clip_image_free(&img);
        free(data);
        if (clip_json_get(&images->items[i], "error")) {
            CHECK(st != CLIP_OK, "%s: %s is refused as Pillow refused it (%s)", name, file,
                  st != CLIP_OK ? err.msg : "decoded");
            continue;
        }
        if (!CHECK(st == CLIP_OK, "%s: %s decodes and preprocesses (%s)", name, file,
                   st == CLIP_OK ? "ok" : err.msg) ||
            floats_of(clip_json_get(&images->items[i], "embedding"), want_i + n * E, E) != E)
            continue;
        size_t fl = strlen(file);
        is_jpeg[n] = fl > 4 && !strcmp(file + fl - 4, ".jpg");
        img_name[n++] = file;
    }

    size_t most = nt > (size_t)n ? nt : (size_t)n;
    float *got = calloc(most ? most : 1, sizeof(float) * (size_t)E);
    static const char *const kernels[] = {NULL, "ref"};
    for (int k = 0; k < 2; k++) {
        const char *kn = kernels[k] ? kernels[k] : "auto";
        clip_ctx *ctx = NULL;
        if (!CHECK(new_ctx(m, 0, kernels[k], &ctx, &err) == CLIP_OK, "%s [%s]: context", name, kn))
            continue;
        if (ok_t && CHECK(clip_encode_texts(ctx, ids, (int)nt, got, &err) == CLIP_OK,
                          "%s [%s]: encode texts", name, kn)) {
            double worst = 1;
            size_t at = 0;
            for (size_t i = 0; i < nt; i++) {
                double c = clip_cosine(got + i * E, want_t + i * E, (size_t)E);
                if (c < worst) worst = c, at = i;
            }
            CHECK(worst >= 0.99999, "%s [%s]: %zu text embeddings match OpenAI's (worst cosine "
                  "%.8f, text %zu)", name, kn, nt, worst, at);
        }
        if (CHECK(n > 0 && clip_encode_images(ctx, px, n, got, &err) == CLIP_OK,
                  "%s [%s]: encode %d images in one batch", name, kn, n))
            for (int i = 0; i < n; i++) {
                double c = clip_cosine(got + i * E, want_i + i * E, (size_t)E);
                double need = is_jpeg[i] ? 0.9999 : 0.99999;
                CHECK(c >= need, "%s [%s]: %s embedding matches OpenAI's (cosine %.8f >= %g)",
                      name, kn, img_name[i], c, need);
            }
        clip_ctx_free(ctx);
    }
    free(ids), free(want_t), free(px), free(want_i), free(got), free(is_jpeg), free(img_name);
    clip_model_free(m);
    unlink(out);
}

static void test_reference(void)
{
    const char *ref = check_reference_dir();
    const char *conv = getenv("CLIP_CONVERT");
    if (!ref) {
        check_skip("end-to-end against OpenAI's reference: ../shared/reference is absent");
        return;
    }
    if (!conv || access(conv, X_OK)) {
        check_skip("end-to-end against OpenAI's reference: $CLIP_CONVERT (%s) is not an "
                   "executable", conv ? conv : "unset");
        return;
    }
    char path[600];
    snprintf(path, sizeof path, "%s/expected.json", ref);
    size_t len = 0;
    uint8_t *text = read_all(path, &len);
    char why[256] = "";
    clip_json_doc *doc = text ? clip_json_parse((const char *)text, len, 0, why, sizeof why) : NULL;
    const clip_json *models = doc ? clip_json_get(clip_json_root(doc), "models") : NULL;
    if (CHECK(models != NULL, "expected.json parses (%s)", doc ? "ok" : why)) {
        const char *names[] = {"tiny-hf", "tinygelu-hf"};
        for (int i = 0; i < 2; i++) {
            const clip_json *exp = clip_json_get(models, names[i]);
            if (CHECK(exp != NULL, "expected.json has %s", names[i]))
                reference_model(ref, conv, names[i], exp);
        }
    }
    clip_json_free(doc);
    free(text);
}

/* =======================================================================================
 * Main
 * ===================================================================================== */

static clip_model *load_built(const char *name, const built *b, clip_error *err)
{
    clip_model *m = NULL;
    if (clip_model_load(write_file(name, b->data, b->size), &m, err) != CLIP_OK) return NULL;
    return m;
}

int main(void)
{
    const char *t = getenv("TMPDIR");
    snprintf(tmpdir, sizeof tmpdir, "%s/clip-test-model-XXXXXX", t ? t : "/tmp");
    if (!mkdtemp(tmpdir)) {
        CHECK(0, "cannot make a temporary directory");
        return check_exit();
    }

    for (int act = CLIP_ACT_QUICK_GELU; act <= CLIP_ACT_GELU; act++) {
        const char *label = act ? "gelu model" : "quick_gelu model";
        clip_hparams hp = tiny_hparams((clip_activation)act);
        built b32 = build(&hp, 0, 0, 1234 + act), b16 = build(&hp, 1, 0, 1234 + act);
        clip_error err = {0};
        clip_model *m = load_built(act ? "g32.clip" : "q32.clip", &b32, &err);
        CHECK(m != NULL, "%s: a valid f32 file loads (%s)", label, m ? "ok" : err.msg);
        clip_model *m16 = load_built(act ? "g16.clip" : "q16.clip", &b16, &err);
        CHECK(m16 != NULL, "%s: a valid f16 file loads (%s)", label, m16 ? "ok" : err.msg);
        if (m && m16) {
            const clip_hparams *h = clip_model_hparams(m);
            CHECK(!strcmp(h->name, "test-tiny") && h->vision_width == 32 && h->text_heads == 3 &&
                      h->context_length == 16 && h->activation == (uint32_t)act &&
                      h->image_std[2] == 0.25f && h->vision_ln_eps == 1e-5f,
                  "%s: hyperparameters read back", label);
            uint64_t want = 0;
            for (uint32_t i = 0; i < b32.n_tensors; i++) {
                const uint8_t *e = b32.data + b32.tab_off + 96ull * i;
                want += (uint64_t)rd32(e + 64) * rd32(e + 68);
            }
            CHECK(clip_model_param_count(m) == want && clip_model_param_count(m16) == want,
                  "%s: parameter count %llu", label, (unsigned long long)want);
            CHECK(!strcmp(clip_model_file_dtype(m), "f32") &&
                      !strcmp(clip_model_file_dtype(m16), "f16"), "%s: file dtypes", label);
            CHECK(clip_model_tokenizer(m) != NULL, "%s: tokenizer built from the section", label);
            const float *w32 = clip_model_weights(m)->v_patch_embed;
            CHECK((uintptr_t)w32 % 64 == 0 && clip_model_weights(m16)->v_patch_embed != w32,
                  "%s: f32 weights used in place, 64-byte aligned", label);
            test_math(label, m, m16);
            test_lanes(label, m);
            if (act == CLIP_ACT_QUICK_GELU) test_linear(m);
        }
        clip_model_free(m);
        clip_model_free(m16);
        if (act == CLIP_ACT_QUICK_GELU) test_corruptions(&b32);
        free(b32.data);
        free(b16.data);
    }

    /* Every class of half widens exactly: zeros, all subnormals, infinities, NaNs. */
    clip_hparams hp = tiny_hparams(CLIP_ACT_QUICK_GELU);
    built sp = build(&hp, 1, 1, 7);
    clip_error err = {0};
    clip_model *m = load_built("special.clip", &sp, &err);
    if (CHECK(m != NULL, "f16 file with special values loads (%s)", m ? "ok" : err.msg)) {
        const float *emb = clip_model_weights(m)->t_token_embed;
        size_t n = (size_t)hp.vocab_size * hp.text_width, bad = 0;
        for (size_t k = 0; k < n; k++) {
            uint16_t h = k < 2048 ? (uint16_t)((k & 1023) | (k >> 10) << 15) : (uint16_t)(k * 40503u);
            float want = half_value(h);
            int same = isnan(want) ? isnan(emb[k]) && !signbit(emb[k]) == !(h >> 15)
                                   : !memcmp(&want, &emb[k], sizeof want);
            if (!same && bad++ < 3) printf("  half 0x%04x: got %a want %a\n", h, emb[k], want);
        }
        CHECK(bad == 0, "f16 widening exact on %zu values incl. every subnormal (%zu wrong)", n,
              bad);
    }
    clip_model_free(m);
    free(sp.data);

    test_reference();

    /* leave nothing behind */
    const char *names[] = {"q32.clip", "q16.clip", "g32.clip", "g16.clip", "bad.clip",
                           "cut.clip", "flip.clip", "special.clip"};
    for (size_t i = 0; i < sizeof names / sizeof *names; i++) {
        char p[600];
        snprintf(p, sizeof p, "%s/%s", tmpdir, names[i]);
        unlink(p);
    }
    rmdir(tmpdir);
    return check_exit();
}
