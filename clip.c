/* clip.c -- the model file, the context, and the layers both towers stack.
 *
 *   Model file  loading and validating a .clip file (docs/clip-format.md) into a weights
 *               struct: every size checked before it is trusted, f16 widened once.
 *   Context     per-caller state: scratch buffers, a thread pool (pool.c), the matmul
 *               kernel, and lanes (a batch split between threads).
 *   Layers      LayerNorm, linear, attention and the transformer block, which vision.c and
 *               text.c stack into their towers. They split their work between the pool's
 *               threads and call the SIMD kernels (kernels.c) for the arithmetic; with the
 *               "ref" kernel they hand it all to ref.c, where the same layers are plain
 *               loops (read those first).
 *
 * Threads: a matmul hands out its weight panels to the pool, and LayerNorm, activations
 * and attention heads are split the same way. Our matmul kernels read the weights in the
 * panel order the file stores them in; OpenBLAS remains for attention and for CPUs without
 * AVX2, always single-threaded (clip_ctx_new sets it for the whole process: its thread
 * count is process-global, and its own threading at the row counts CLIP runs, 50 rows for
 * one image, left cores idle). One context computes one call at a time.
 *
 * This file knows no image or text: the towers hand it rows of floats. */

#include "clip_internal.h"
#include "kernels.h"
#include "pool.h"
#include "ref.h"

#include <cblas.h>
#include <errno.h>
#include <fcntl.h>
#include <math.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <unistd.h>

/* =======================================================================================
 * Model file: limits, little-endian reads, f16
 * ===================================================================================== */

#define CLIP_MAGIC        "CLIPMODL"
#define CLIP_FORMAT       2u
#define CLIP_HEADER_SIZE  256u
#define CLIP_ENTRY_SIZE   96u
#define CLIP_NAME_MAX     56u
#define CLIP_LAYER_SLOTS  12

/* Sanity bounds on hyperparameters: generous for every released CLIP (ViT-bigG is width
 * 1664, 48 layers, MLP 8192; ViT-L/14-336 has 577 tokens) and small enough that no size
 * computed from them can overflow or ask for absurd memory. */
#define MAX_IMAGE_SIZE    4096u
#define MAX_TOKENS        4097u   /* vision: grid^2 + 1                                  */
#define MAX_WIDTH         8192u
#define MAX_MLP           65536u
#define MAX_LAYERS        256u
#define MAX_CONTEXT       1024u
#define MAX_VOCAB         (1u << 20)

static uint32_t rd32(const uint8_t *p)
{
    return (uint32_t)p[0] | (uint32_t)p[1] << 8 | (uint32_t)p[2] << 16 | (uint32_t)p[3] << 24;
}

static uint64_t rd64(const uint8_t *p) { return rd32(p) | (uint64_t)rd32(p + 4) << 32; }

static float rdf32(const uint8_t *p)
{
    uint32_t u = rd32(p);
    float f;
    memcpy(&f, &u, sizeof f);
    return f;
}

/* IEEE half to single. Every half is exactly a float, so this is a pure widening, written
 * without branches so the loop over a tensor can vectorize:
 * - normal halves: exponent and mantissa shifted into a float's fields give the value
 *   scaled by 2^-112 (the bias difference), so one exact multiplication by 2^112 fixes it;
 * - subnormals and zero: the mantissa m under the exponent of 2^-14 is 2^-14 + m * 2^-24
 *   exactly, and subtracting 2^-14 leaves m * 2^-24;
 * - infinities and NaNs: exponent 255, the mantissa (NaN payload) kept. */
static inline uint32_t f32_bits(float f)
{
    uint32_t u;
    memcpy(&u, &f, sizeof u);
    return u;
}

static inline float bits_f32(uint32_t u)
{
    float f;
    memcpy(&f, &u, sizeof f);
    return f;
}

static inline float f16_to_f32(uint16_t h)
{
    uint32_t sign = (uint32_t)(h & 0x8000u) << 16;
    uint32_t body = h & 0x7fffu;
    uint32_t normal = f32_bits(bits_f32(body << 13) * 0x1p112f);
    uint32_t inf_nan = 0x7f800000u | (body & 0x3ffu) << 13;
    uint32_t sub = f32_bits(bits_f32(113u << 23 | body << 13) - 0x1p-14f);
    uint32_t is_special = 0u - (uint32_t)(body >= 0x7c00u);
    uint32_t is_normal = 0u - (uint32_t)(body >= 0x0400u);
    uint32_t bits = (inf_nan & is_special) | (normal & is_normal & ~is_special) | (sub & ~is_normal);
    return bits_f32(sign | bits);
}

/* Blocks of 16 with a fixed trip count: the shape -O2's vectorizer takes on. */
static void widen_f16(const uint16_t *h, float *out, size_t n)
{
    size_t i = 0;
    for (; i + 16 <= n; i += 16)
        for (int k = 0; k < 16; k++) out[i + k] = f16_to_f32(h[i + k]);
    for (; i < n; i++) out[i] = f16_to_f32(h[i]);
}

/* =======================================================================================
 * Model file: the expected tensors
 * ===================================================================================== */

struct clip_model {
    clip_hparams hp;
    clip_weights w;
    const uint8_t *map;
    size_t map_size;
    float *arena;             /* f16 tensors widened to f32 (an anonymous mapping)        */
    size_t arena_size;
    clip_tokenizer *tok;
    uint64_t n_params;
    bool any_f16;
    clip_layer layers[];      /* vision layers, then text layers                          */
};

/* One tensor the hyperparameters call for: its name, shape and where its pointer goes. */
typedef struct expect {
    char name[CLIP_NAME_MAX];
    uint32_t n_dims;
    uint32_t shape[4];
    const float **dst;
    uint64_t entry;           /* table index + 1 once seen, 0 before                     */
} expect;

static const char *const layer_suffix[CLIP_LAYER_SLOTS] = {
    "ln1.weight", "ln1.bias", "attn.qkv.weight", "attn.qkv.bias", "attn.out.weight",
    "attn.out.bias", "ln2.weight", "ln2.bias", "mlp.fc1.weight", "mlp.fc1.bias",
    "mlp.fc2.weight", "mlp.fc2.bias",
};

static void expect_set(expect *e, const char *name, const float **dst, uint32_t n_dims,
                       uint32_t d0, uint32_t d1)
{
    snprintf(e->name, sizeof e->name, "%s", name);
    e->n_dims = n_dims;
    e->shape[0] = d0;
    e->shape[1] = n_dims > 1 ? d1 : 1;
    e->shape[2] = e->shape[3] = 1;
    e->dst = dst;
    e->entry = 0;
}

static void expect_layers(expect *e, char tower, clip_layer *layers, uint32_t n_layers,
                          uint32_t w, uint32_t m)
{
    for (uint32_t l = 0; l < n_layers; l++) {
        clip_layer *L = &layers[l];
        const float **dst[CLIP_LAYER_SLOTS] = {
            &L->ln1_w, &L->ln1_b, &L->qkv_w, &L->qkv_b, &L->out_w, &L->out_b,
            &L->ln2_w, &L->ln2_b, &L->fc1_w, &L->fc1_b, &L->fc2_w, &L->fc2_b,
        };
        const uint32_t shape[CLIP_LAYER_SLOTS][3] = {
            {1, w, 1}, {1, w, 1}, {2, 3 * w, w}, {1, 3 * w, 1}, {2, w, w}, {1, w, 1},
            {1, w, 1}, {1, w, 1}, {2, m, w},     {1, m, 1},     {2, w, m}, {1, w, 1},
        };
        for (int s = 0; s < CLIP_LAYER_SLOTS; s++) {
            char name[CLIP_NAME_MAX];
            snprintf(name, sizeof name, "%c.layers.%u.%s", tower, l, layer_suffix[s]);
            expect_set(&e[l * CLIP_LAYER_SLOTS + s], name, dst[s], shape[s][0], shape[s][1],
                       shape[s][2]);
        }
    }
}

#define N_GLOBAL_TENSORS 14

/* Fills the table of every tensor the hyperparameters need; returns how many. The order:
 * the 14 globals, the vision layers, the text layers (find_expect relies on it). */
static size_t build_expect(clip_model *m, expect *e)
{
    const clip_hparams *hp = &m->hp;
    clip_weights *w = &m->w;
    uint32_t vw = hp->vision_width, tw = hp->text_width, E = hp->embed_dim;
    uint32_t g = hp->image_size / hp->patch_size;
    size_t n = 0;
    expect_set(&e[n++], "v.patch_embed.weight", &w->v_patch_embed, 2, vw,
               3 * hp->patch_size * hp->patch_size);
    expect_set(&e[n++], "v.class_embed", &w->v_class_embed, 1, vw, 1);
    expect_set(&e[n++], "v.pos_embed", &w->v_pos_embed, 2, g * g + 1, vw);
    expect_set(&e[n++], "v.ln_pre.weight", &w->v_ln_pre_w, 1, vw, 1);
    expect_set(&e[n++], "v.ln_pre.bias", &w->v_ln_pre_b, 1, vw, 1);
    expect_set(&e[n++], "v.ln_post.weight", &w->v_ln_post_w, 1, vw, 1);
    expect_set(&e[n++], "v.ln_post.bias", &w->v_ln_post_b, 1, vw, 1);
    expect_set(&e[n++], "v.proj", &w->v_proj, 2, E, vw);
    expect_set(&e[n++], "t.token_embed", &w->t_token_embed, 2, hp->vocab_size, tw);
    expect_set(&e[n++], "t.pos_embed", &w->t_pos_embed, 2, hp->context_length, tw);
    expect_set(&e[n++], "t.ln_final.weight", &w->t_ln_final_w, 1, tw, 1);
    expect_set(&e[n++], "t.ln_final.bias", &w->t_ln_final_b, 1, tw, 1);
    expect_set(&e[n++], "t.proj", &w->t_proj, 2, E, tw);
    expect_set(&e[n++], "logit_scale", &w->logit_scale, 1, 1, 1);
    expect_layers(&e[n], 'v', w->vision.layers, hp->vision_layers, vw, hp->vision_mlp);
    n += (size_t)hp->vision_layers * CLIP_LAYER_SLOTS;
    expect_layers(&e[n], 't', w->text.layers, hp->text_layers, tw, hp->text_mlp);
    n += (size_t)hp->text_layers * CLIP_LAYER_SLOTS;
    return n;
}

/* The expected tensor a table name stands for, found without a search over all names:
 * "v.layers.N.suffix" is parsed; the few globals are compared one by one. */
static expect *find_expect(const clip_model *m, expect *e, const char *name)
{
    for (int i = 0; i < N_GLOBAL_TENSORS; i++)
        if (!strcmp(e[i].name, name)) return &e[i];
    char tower = name[0];
    if ((tower != 'v' && tower != 't') || strncmp(name + 1, ".layers.", 8)) return NULL;
    const char *p = name + 9;
    if (*p < '0' || *p > '9' || (p[0] == '0' && p[1] != '.')) return NULL;
    uint32_t idx = 0;
    while (*p >= '0' && *p <= '9') {
        idx = idx * 10 + (uint32_t)(*p++ - '0');
        if (idx >= MAX_LAYERS) return NULL;
    }
    if (*p++ != '.') return NULL;
    uint32_t n_layers = tower == 'v' ? m->hp.vision_layers : m->hp.text_layers;
    if (idx >= n_layers) return NULL;
    size_t base = N_GLOBAL_TENSORS + (tower == 't' ? (size_t)m->hp.vision_layers : 0) *
                                         CLIP_LAYER_SLOTS;
    for (int s = 0; s < CLIP_LAYER_SLOTS; s++)
        if (!strcmp(p, layer_suffix[s])) return &e[base + idx * CLIP_LAYER_SLOTS + s];
    return NULL;
}

static int format_shape(char *buf, size_t size, uint32_t n_dims, const uint32_t *shape)
{
    int n = snprintf(buf, size, "[");
    for (uint32_t d = 0; d < n_dims && d < 4; d++)
        n += snprintf(buf + n, size - (size_t)n, d ? ", %u" : "%u", shape[d]);
    return n + snprintf(buf + n, size - (size_t)n, "]");
}

/* =======================================================================================
 * Model file: header and hyperparameters
 * ===================================================================================== */

static clip_status parse_header(clip_hparams *hp, const char *path, const uint8_t *p,
                                size_t size, clip_error *err)
{
    if (size < 8 || memcmp(p, CLIP_MAGIC, 8))
        return clip_fail(err, CLIP_ERR_FORMAT, "model file %s: not a .clip file (bad magic)",
                         path);
    if (size < CLIP_HEADER_SIZE)
        return clip_fail(err, CLIP_ERR_FORMAT,
                         "model file %s: truncated (expected at least %u bytes, got %zu)", path,
                         CLIP_HEADER_SIZE, size);
    uint32_t version = rd32(p + 8);
    if (version != CLIP_FORMAT)
        return clip_fail(err, CLIP_ERR_FORMAT,
                         "model file %s: format version %u is not supported (this build reads "
                         "version %u)", path, version, CLIP_FORMAT);
    if (rd32(p + 12) != CLIP_HEADER_SIZE)
        return clip_fail(err, CLIP_ERR_FORMAT,
                         "model file %s: header size %u, expected %u", path, rd32(p + 12),
                         CLIP_HEADER_SIZE);
    uint64_t file_size = rd64(p + 208);
    if (file_size > size)
        return clip_fail(err, CLIP_ERR_FORMAT,
                         "model file %s: truncated (expected %llu bytes, got %zu)", path,
                         (unsigned long long)file_size, size);
    if (file_size < size)
        return clip_fail(err, CLIP_ERR_FORMAT,
                         "model file %s: %zu bytes but the header says %llu", path, size,
                         (unsigned long long)file_size);
    if (rd32(p + 204))
        return clip_fail(err, CLIP_ERR_FORMAT, "model file %s: reserved header field is not 0",
                         path);
    for (int i = 216; i < 256; i++)
        if (p[i])
            return clip_fail(err, CLIP_ERR_FORMAT,
                             "model file %s: reserved header bytes are not 0", path);
    if (!memchr(p + 16, 0, 64))
        return clip_fail(err, CLIP_ERR_FORMAT,
                         "model file %s: model name is not NUL-terminated", path);

    memcpy(hp->name, p + 16, 64);
    hp->image_size = rd32(p + 80);
    hp->patch_size = rd32(p + 84);
    hp->vision_width = rd32(p + 88);
    hp->vision_layers = rd32(p + 92);
    hp->vision_heads = rd32(p + 96);
    hp->vision_mlp = rd32(p + 100);
    hp->vision_ln_eps = rdf32(p + 104);
    hp->text_width = rd32(p + 108);
    hp->text_layers = rd32(p + 112);
    hp->text_heads = rd32(p + 116);
    hp->text_mlp = rd32(p + 120);
    hp->text_ln_eps = rdf32(p + 124);
    hp->context_length = rd32(p + 128);
    hp->vocab_size = rd32(p + 132);
    hp->embed_dim = rd32(p + 136);
    hp->activation = rd32(p + 140);
    hp->resize_size = rd32(p + 144);
    hp->crop_size = rd32(p + 148);
    for (int c = 0; c < 3; c++) {
        hp->image_mean[c] = rdf32(p + 152 + 4 * c);
        hp->image_std[c] = rdf32(p + 164 + 4 * c);
    }

#define BAD(...) clip_fail(err, CLIP_ERR_FORMAT, "model file %s: " __VA_ARGS__)
#define RANGE(field, lo, hi)                                                               \
    if (hp->field < (lo) || hp->field > (hi))                                              \
        return BAD(#field " = %u is out of range [%u, %u]", path, hp->field, (unsigned)(lo), \
                   (unsigned)(hi));
    RANGE(image_size, 1, MAX_IMAGE_SIZE)
    RANGE(patch_size, 1, hp->image_size)
    RANGE(vision_width, 1, MAX_WIDTH)
    RANGE(vision_layers, 1, MAX_LAYERS)
    RANGE(vision_heads, 1, hp->vision_width)
    RANGE(vision_mlp, 1, MAX_MLP)
    RANGE(text_width, 1, MAX_WIDTH)
    RANGE(text_layers, 1, MAX_LAYERS)
    RANGE(text_heads, 1, hp->text_width)
    RANGE(text_mlp, 1, MAX_MLP)
    RANGE(context_length, 2, MAX_CONTEXT)
    RANGE(vocab_size, 2, MAX_VOCAB)
    RANGE(embed_dim, 1, MAX_WIDTH)
    RANGE(crop_size, 1, MAX_IMAGE_SIZE)
    RANGE(resize_size, hp->crop_size, MAX_IMAGE_SIZE)
#undef RANGE
    if (hp->activation != CLIP_ACT_QUICK_GELU && hp->activation != CLIP_ACT_GELU)
        return BAD("unknown activation %u (0 = quick_gelu, 1 = gelu)", path, hp->activation);
    if (hp->image_size % hp->patch_size)
        return BAD("image_size %u is not a multiple of patch_size %u", path, hp->image_size,
                   hp->patch_size);
    uint32_t g = hp->image_size / hp->patch_size;
    if ((uint64_t)g * g + 1 > MAX_TOKENS)
        return BAD("%u x %u patches is more than the %u tokens allowed", path, g, g,
                   MAX_TOKENS - 1);
    if (hp->vision_width % hp->vision_heads)
        return BAD("vision_width %u is not a multiple of vision_heads %u", path,
                   hp->vision_width, hp->vision_heads);
    if (hp->text_width % hp->text_heads)
        return BAD("text_width %u is not a multiple of text_heads %u", path, hp->text_width,
                   hp->text_heads);
    if (hp->crop_size != hp->image_size)
        return BAD("crop_size %u differs from image_size %u", path, hp->crop_size,
                   hp->image_size);
    /* isfinite and a positive bound reject NaN too */
    if (!(hp->vision_ln_eps > 0 && hp->vision_ln_eps < 1) ||
        !(hp->text_ln_eps > 0 && hp->text_ln_eps < 1))
        return BAD("LayerNorm eps (%g, %g) is not in (0, 1)", path, hp->vision_ln_eps,
                   hp->text_ln_eps);
    for (int c = 0; c < 3; c++)
        if (!isfinite(hp->image_mean[c]) || !(hp->image_std[c] > 0) ||
            !isfinite(hp->image_std[c]))
            return BAD("image mean/std of channel %d (%g, %g) is not usable", path, c,
                       hp->image_mean[c], hp->image_std[c]);
#undef BAD
    return CLIP_OK;
}

/* =======================================================================================
 * Model file: sections and tensor table
 * ===================================================================================== */

typedef struct span {
    uint64_t off, size;
    uint32_t entry;
} span;

static int span_cmp(const void *a, const void *b)
{
    const span *x = a, *y = b;
    return x->off < y->off ? -1 : x->off > y->off;
}

static clip_status parse_tensors(clip_model *m, const char *path, clip_error *err)
{
    const uint8_t *p = m->map;
    uint64_t size = m->map_size;
    uint64_t tok_off = rd64(p + 176), tok_size = rd64(p + 184);
    uint64_t tab_off = rd64(p + 192);
    uint32_t n_tensors = rd32(p + 200);

#define BAD(...) clip_fail(err, CLIP_ERR_FORMAT, "model file %s: " __VA_ARGS__)
    if (tok_off < CLIP_HEADER_SIZE || tok_off > size || tok_size > size - tok_off)
        return BAD("tokenizer section (offset %llu, %llu bytes) is outside the file", path,
                   (unsigned long long)tok_off, (unsigned long long)tok_size);
    if (tab_off % 8 || tab_off < tok_off + tok_size || tab_off > size ||
        n_tensors > (size - tab_off) / CLIP_ENTRY_SIZE)
        return BAD("tensor table (offset %llu, %u entries) is misplaced or outside the file",
                   path, (unsigned long long)tab_off, n_tensors);
    uint64_t data_start = tab_off + (uint64_t)n_tensors * CLIP_ENTRY_SIZE;

    size_t n_expect = N_GLOBAL_TENSORS +
                      ((size_t)m->hp.vision_layers + m->hp.text_layers) * CLIP_LAYER_SLOTS;
    expect *ex = calloc(n_expect, sizeof *ex);
    span *spans = calloc(n_tensors ? n_tensors : 1, sizeof *spans);
    clip_status st = CLIP_OK;
    if (!ex || !spans) {
        st = clip_fail(err, CLIP_ERR_NOMEM, "model file %s: out of memory", path);
        goto done;
    }
    build_expect(m, ex);

    uint64_t f16_elems = 0;
    for (uint32_t i = 0; i < n_tensors; i++) {
        const uint8_t *t = p + tab_off + (uint64_t)i * CLIP_ENTRY_SIZE;
        char name[CLIP_NAME_MAX];
        if (!memchr(t, 0, CLIP_NAME_MAX)) {
            st = BAD("tensor table entry %u has no NUL-terminated name", path, i);
            goto done;
        }
        memcpy(name, t, CLIP_NAME_MAX);
        expect *e = find_expect(m, ex, name);
        if (!e) {
            st = BAD("unexpected tensor '%.55s' (entry %u)", path, name, i);
            goto done;
        }
        if (e->entry) {
            st = BAD("tensor %s appears twice", path, name);
            goto done;
        }
        e->entry = i + 1;
        uint32_t dtype = rd32(t + 56), n_dims = rd32(t + 60), shape[4];
        for (int d = 0; d < 4; d++) shape[d] = rd32(t + 64 + 4 * d);
        if (dtype > 1) {
            st = BAD("tensor %s has unknown dtype %u", path, name, dtype);
            goto done;
        }
        bool same = n_dims == e->n_dims;
        for (int d = 0; d < 4; d++) same = same && shape[d] == e->shape[d];
        if (!same) {
            char got[96], want[96];
            format_shape(got, sizeof got, n_dims, shape);
            format_shape(want, sizeof want, e->n_dims, e->shape);
            st = BAD("tensor %s has shape %s but the hyperparameters need %s", path, name,
                     n_dims >= 1 && n_dims <= 4 ? got : "(bad dimension count)", want);
            goto done;
        }
        uint64_t elems = (uint64_t)shape[0] * shape[1] * shape[2] * shape[3];
        uint64_t off = rd64(t + 80), bytes = rd64(t + 88);
        if (bytes != elems * (dtype ? 2 : 4)) {
            st = BAD("tensor %s: %llu data bytes, its shape and dtype need %llu", path, name,
                     (unsigned long long)bytes, (unsigned long long)(elems * (dtype ? 2 : 4)));
            goto done;
        }
        if (off % 64 || off < data_start || off > size || bytes > size - off) {
            st = BAD("tensor %s: data at offset %llu (%llu bytes) is misaligned or outside "
                     "the data area [%llu, %llu)", path, name, (unsigned long long)off,
                     (unsigned long long)bytes, (unsigned long long)data_start,
                     (unsigned long long)size);
            goto done;
        }
        spans[i] = (span){off, bytes, i};
        m->n_params += elems;
        if (dtype) f16_elems += elems;
    }
    for (size_t i = 0; i < n_expect; i++)
        if (!ex[i].entry) {
            st = BAD("tensor %s is missing", path, ex[i].name);
            goto done;
        }
    qsort(spans, n_tensors, sizeof *spans, span_cmp);
    for (uint32_t i = 1; i < n_tensors; i++)
        if (spans[i - 1].off + spans[i - 1].size > spans[i].off) {
            st = BAD("tensors at offsets %llu and %llu overlap", path,
                     (unsigned long long)spans[i - 1].off, (unsigned long long)spans[i].off);
            goto done;
        }

    /* Everything checked: carve the pointers, widening f16 into one arena. */
    if (f16_elems) {
        /* Its own mapping, so the kernel can back it with huge pages: filling 4 KiB pages
         * one fault at a time costs more than the widening itself. */
        m->arena_size = f16_elems * sizeof(float);
        void *a = mmap(NULL, m->arena_size, PROT_READ | PROT_WRITE,
                       MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
        m->arena = a == MAP_FAILED ? NULL : a;
        if (m->arena) madvise(a, m->arena_size, MADV_HUGEPAGE);
        if (!m->arena) {
            st = clip_fail(err, CLIP_ERR_NOMEM,
                           "model file %s: out of memory widening %llu f16 weights", path,
                           (unsigned long long)f16_elems);
            goto done;
        }
        m->any_f16 = true;
    }
    float *next = m->arena;
    for (size_t i = 0; i < n_expect; i++) {
        const uint8_t *t = p + tab_off + (ex[i].entry - 1) * CLIP_ENTRY_SIZE;
        const uint8_t *data = p + rd64(t + 80);
        uint64_t bytes = rd64(t + 88);
        if (rd32(t + 56) == 0) {
            *ex[i].dst = (const float *)(const void *)data;
        } else {
            const uint16_t *h = (const uint16_t *)(const void *)data;
            widen_f16(h, next, bytes / 2);
            *ex[i].dst = next;
            next += bytes / 2;
        }
    }
#undef BAD
done:
    free(ex);
    free(spans);
    return st;
}

/* =======================================================================================
 * Model: load, free, accessors
 * ===================================================================================== */

clip_status clip_model_load(const char *path, clip_model **out, clip_error *err)
{
    if (!path || !out) return clip_fail(err, CLIP_ERR_ARG, "clip_model_load: NULL argument");
    *out = NULL;
    int fd = open(path, O_RDONLY | O_CLOEXEC);
    if (fd < 0)
        return clip_fail(err, CLIP_ERR_IO, "model file %s: %s", path, strerror(errno));
    struct stat st;
    if (fstat(fd, &st) < 0) {
        int e = errno;
        close(fd);
        return clip_fail(err, CLIP_ERR_IO, "model file %s: %s", path, strerror(e));
    }
    if (!S_ISREG(st.st_mode)) {
        close(fd);
        return clip_fail(err, CLIP_ERR_IO, "model file %s: not a regular file", path);
    }
    size_t size = (size_t)st.st_size;
    if (size < 8) {
        close(fd);
        return clip_fail(err, CLIP_ERR_FORMAT, "model file %s: not a .clip file (bad magic)",
                         path);
    }
    void *map = mmap(NULL, size, PROT_READ, MAP_PRIVATE, fd, 0);
    int map_errno = errno;
    close(fd);
    if (map == MAP_FAILED)
        return clip_fail(err, CLIP_ERR_IO, "model file %s: mmap: %s", path,
                         strerror(map_errno));

    /* The hyperparameters size the layer array, so they are read before the model. */
    clip_hparams hpv;
    memset(&hpv, 0, sizeof hpv);
    clip_status s = parse_header(&hpv, path, map, size, err);
    if (s != CLIP_OK) {
        munmap(map, size);
        return s;
    }
    size_t n_layers = (size_t)hpv.vision_layers + hpv.text_layers;
    clip_model *m = calloc(1, sizeof *m + n_layers * sizeof(clip_layer));
    if (!m) {
        munmap(map, size);
        return clip_fail(err, CLIP_ERR_NOMEM, "model file %s: out of memory", path);
    }
    m->hp = hpv;
    m->map = map;
    m->map_size = size;
    const clip_hparams *hp = &m->hp;
    m->w.vision = (clip_tower){(int)hp->vision_width, (int)hp->vision_heads,
                               (int)hp->vision_mlp,   (int)hp->vision_layers,
                               hp->vision_ln_eps,     (clip_activation)hp->activation,
                               m->layers};
    m->w.text = (clip_tower){(int)hp->text_width, (int)hp->text_heads,
                             (int)hp->text_mlp,   (int)hp->text_layers,
                             hp->text_ln_eps,     (clip_activation)hp->activation,
                             m->layers + hp->vision_layers};
    s = parse_tensors(m, path, err);
    if (s == CLIP_OK) {
        const uint8_t *p = m->map;
        s = clip_tokenizer_new(p + rd64(p + 176), rd64(p + 184), hp->vocab_size,
                               hp->context_length, &m->tok, err);
        if (s != CLIP_OK && err) {
            /* name the file in the tokenizer's reason */
            char why[sizeof err->msg];
            memcpy(why, err->msg, sizeof why);
            clip_fail(err, s, "model file %s: %s", path, why);
        }
    }
    if (s != CLIP_OK) {
        clip_model_free(m);
        return s;
    }
    *out = m;
    return CLIP_OK;
}

void clip_model_free(clip_model *m)
{
    if (!m) return;
    clip_tokenizer_free(m->tok);
    if (m->arena) munmap(m->arena, m->arena_size);
    munmap((void *)m->map, m->map_size);
    free(m);
}

const clip_hparams *clip_model_hparams(const clip_model *m) { return &m->hp; }
uint64_t clip_model_param_count(const clip_model *m) { return m->n_params; }
const char *clip_model_file_dtype(const clip_model *m) { return m->any_f16 ? "f16" : "f32"; }
size_t clip_image_floats(const clip_model *m) { return 3u * (size_t)m->hp.crop_size * m->hp.crop_size; }
size_t clip_text_ids(const clip_model *m) { return m->hp.context_length; }
size_t clip_embed_floats(const clip_model *m) { return m->hp.embed_dim; }
const clip_tokenizer *clip_model_tokenizer(const clip_model *m) { return m->tok; }
const clip_weights *clip_model_weights(const clip_model *m) { return &m->w; }

clip_status clip_tokenize(const clip_model *m, const char *text, size_t len, int32_t *ids,
                          clip_error *err)
{
    if (!m) return clip_fail(err, CLIP_ERR_ARG, "tokenize: no model");
    return clip_tokenizer_encode(m->tok, text, len, ids, err);
}

/* =======================================================================================
 * Context
 * ===================================================================================== */

struct clip_ctx {
    const clip_model *model;
    int n_threads;
    clip_kernel kernel;
    clip_pool *pool;           /* n_threads threads, the caller's included                   */
    float *buf[CLIP_SCRATCH_COUNT];
    size_t buf_size[CLIP_SCRATCH_COUNT];
    size_t attn_per_thread;    /* attention scratch floats per thread (attn_scratch_floats) */
    /* one single-threaded context per thread, for batches split into lanes */
    struct clip_ctx **lanes;
    clip_status lane_status;   /* a lane's result, as clip_run_lanes collects it          */
    clip_error lane_err;
};

static const char *const kernel_names[] = {
    [CLIP_KERNEL_REF] = "ref",       [CLIP_KERNEL_BLAS] = "blas",
    [CLIP_KERNEL_AVX2] = "avx2",     [CLIP_KERNEL_AVX512] = "avx512",
};

/* The best kernel this CPU runs, or the one `want` names (for tests and benchmarks of the
 * others, and "ref" for learners: never the automatic choice). */
static clip_status pick_kernel(const char *want, clip_kernel *kind, clip_error *err)
{
    bool avx512 = false, avx2 = false;
#if CLIP_KERNELS_X86
    avx512 = __builtin_cpu_supports("avx512f");
    avx2 = __builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma");
#endif
    *kind = avx512 ? CLIP_KERNEL_AVX512 : avx2 ? CLIP_KERNEL_AVX2 : CLIP_KERNEL_BLAS;
    if (!want || !*want || !strcmp(want, "auto")) return CLIP_OK;
    for (int k = CLIP_KERNEL_REF; k <= CLIP_KERNEL_AVX512; k++) {
        if (strcmp(want, kernel_names[k])) continue;
        if ((k == CLIP_KERNEL_AVX512 && !avx512) || (k == CLIP_KERNEL_AVX2 && !avx2))
            return clip_fail(err, CLIP_ERR_ARG, "matmul kernel %s: this CPU cannot run it", want);
        *kind = (clip_kernel)k;
        return CLIP_OK;
    }
    return clip_fail(err, CLIP_ERR_ARG,
                     "matmul kernel %.40s: expected auto, avx512, avx2, blas or ref", want);
}

const char *clip_ctx_matmul(const clip_ctx *c) { return kernel_names[c->kernel]; }

clip_status clip_ctx_new(const clip_model *model, const clip_ctx_params *params,
                         clip_ctx **out, clip_error *err)
{
    if (!model || !out) return clip_fail(err, CLIP_ERR_ARG, "clip_ctx_new: NULL argument");
    *out = NULL;
    clip_ctx_params defaults = {0};
    if (!params) params = &defaults;
    int n_threads = params->n_threads;
    if (n_threads <= 0) {
        long n = sysconf(_SC_NPROCESSORS_ONLN);
        n_threads = n > 0 ? (int)n : 1;
    }
    if (n_threads > 256) n_threads = 256;
    clip_kernel kernel;
    clip_status st = pick_kernel(params->matmul, &kernel, err);
    if (st != CLIP_OK) return st;
    clip_ctx *c = calloc(1, sizeof *c);
    if (!c) return clip_fail(err, CLIP_ERR_NOMEM, "out of memory");
    c->model = model;
    c->n_threads = n_threads;
    c->kernel = kernel;
    openblas_set_num_threads(1);
    st = clip_pool_new(n_threads, &c->pool, err);
    if (st != CLIP_OK) {
        clip_ctx_free(c);
        return st;
    }
    if (n_threads > 1) {
        c->lanes = calloc((size_t)n_threads, sizeof *c->lanes);
        if (!c->lanes) {
            clip_ctx_free(c);
            return clip_fail(err, CLIP_ERR_NOMEM, "out of memory");
        }
        clip_ctx_params lane_params = {1, kernel_names[kernel]};
        for (int i = 0; i < n_threads; i++) {
            st = clip_ctx_new(model, &lane_params, &c->lanes[i], err);
            if (st != CLIP_OK) {
                clip_ctx_free(c);
                return st;
            }
        }
    }
    *out = c;
    return CLIP_OK;
}

void clip_ctx_free(clip_ctx *c)
{
    if (!c) return;
    clip_pool_free(c->pool);
    for (int i = 0; i < CLIP_SCRATCH_COUNT; i++) free(c->buf[i]);
    for (int i = 0; c->lanes && i < c->n_threads; i++) clip_ctx_free(c->lanes[i]);
    free(c->lanes);
    free(c);
}

const clip_model *clip_ctx_model(const clip_ctx *c) { return c->model; }

float *clip_ctx_scratch(clip_ctx *c, clip_scratch which, size_t n)
{
    if (n > c->buf_size[which]) {
        free(c->buf[which]);
        /* 64-byte aligned so sgemm and vector loops start on a cache line */
        size_t bytes = (n * sizeof(float) + 63) / 64 * 64;
        c->buf[which] = aligned_alloc(64, bytes);
        c->buf_size[which] = c->buf[which] ? n : 0;
    }
    return c->buf[which];
}

/* =======================================================================================
 * Lanes: a batch split between threads
 *
 * The pool splits each matmul's panels between the threads, which keeps one forward
 * short, but every layer's input is then read by every thread, half of it from the other
 * core's cache, and every step ends at a barrier. When a batch has enough rows, each
 * thread running a whole forward on its own share of it (its lane, with its own scratch
 * and no barriers) is faster: ViT-B/32 at batch 8 on 2 threads, 245 -> 225 ms, and 77-token
 * texts 182 -> 160 ms; at one 50-row image per lane it is no faster, since each lane then
 * streams every weight for few rows.
 * ===================================================================================== */

int clip_ctx_lanes(const clip_ctx *c) { return c->lanes ? c->n_threads : 1; }

typedef struct lanes_job {
    clip_ctx *ctx;
    clip_lane_fn fn;
    void *arg;
} lanes_job;

static void lane_task(void *arg, int task, int thread)
{
    (void)thread;
    const lanes_job *j = arg;
    clip_ctx *lane = j->ctx->lanes[task];
    lane->lane_status = j->fn(lane, j->arg, task, &lane->lane_err);
}

clip_status clip_run_lanes(clip_ctx *c, clip_lane_fn fn, void *arg, clip_error *err)
{
    int n = clip_ctx_lanes(c);
    if (n == 1) return fn(c, arg, 0, err);
    lanes_job j = {c, fn, arg};
    clip_pool_run(c->pool, lane_task, &j, n);
    for (int i = 0; i < n; i++)
        if (c->lanes[i]->lane_status != CLIP_OK) {
            if (err) *err = c->lanes[i]->lane_err;
            return c->lanes[i]->lane_status;
        }
    return CLIP_OK;
}

/* =======================================================================================
 * Layers: elementwise loops and LayerNorm
 *
 * The activations and the scalar softmax are ref.c's (clip_ref_activate, clip_ref_softmax):
 * the fast path has nothing quicker for them outside the AVX-512 kernel's registers.
 * ===================================================================================== */

/* y += a over n floats. Like every elementwise loop here, it runs in blocks of 16 with a
 * fixed trip count, the shape the -O2 vectorizer takes on, then a scalar tail. */
static void add_into(float *restrict y, const float *restrict a, int n)
{
    int i = 0;
    for (; i + 16 <= n; i += 16)
        for (int k = 0; k < 16; k++) y[i + k] += a[i + k];
    for (; i < n; i++) y[i] += a[i];
}

/* Mean and variance in two passes, as torch.nn.LayerNorm: (x - mean) / sqrt(var + eps) *
 * w + b with the biased variance. Sixteen partial sums let the compiler vectorize the
 * reductions without reassociating anything it was not told to. */
static void layernorm_stats(const float *x, int n, float eps, float *mean_out, float *rstd_out)
{
    float acc[16] = {0};
    int i = 0;
    for (; i + 16 <= n; i += 16)
        for (int k = 0; k < 16; k++) acc[k] += x[i + k];
    for (; i < n; i++) acc[0] += x[i];
    float sum = 0;
    for (int k = 0; k < 16; k++) sum += acc[k];
    float mean = sum / (float)n;
    float acc2[16] = {0};
    for (i = 0; i + 16 <= n; i += 16)
        for (int k = 0; k < 16; k++) {
            float d = x[i + k] - mean;
            acc2[k] += d * d;
        }
    for (; i < n; i++) acc2[0] += (x[i] - mean) * (x[i] - mean);
    float var = 0;
    for (int k = 0; k < 16; k++) var += acc2[k];
    var /= (float)n;
    *mean_out = mean;
    *rstd_out = 1.0f / sqrtf(var + eps);
}

static void layernorm_row(const float *x, float *y, int n, const float *w, const float *b,
                          float eps)
{
    float mean, rstd;
    layernorm_stats(x, n, eps, &mean, &rstd);
    int i;
    for (i = 0; i + 16 <= n; i += 16)
        for (int k = 0; k < 16; k++) y[i + k] = (x[i + k] - mean) * rstd * w[i + k] + b[i + k];
    for (; i < n; i++) y[i] = (x[i] - mean) * rstd * w[i] + b[i];
}

typedef struct ln_job {
    const float *x, *w, *b;
    float *y;
    size_t xs, ys;
    int rows, width, chunk;
    float eps;
} ln_job;

static void layernorm_task(void *arg, int task, int thread)
{
    (void)thread;
    const ln_job *j = arg;
    int r1 = (task + 1) * j->chunk < j->rows ? (task + 1) * j->chunk : j->rows;
    for (int r = task * j->chunk; r < r1; r++)
        layernorm_row(j->x + r * j->xs, j->y + r * j->ys, j->width, j->w, j->b, j->eps);
}

void clip_layernorm(clip_ctx *c, const float *x, size_t x_stride, float *y, size_t y_stride,
                    int rows, int width, const float *w, const float *b, float eps)
{
    if (c->kernel == CLIP_KERNEL_REF) {
        clip_ref_layernorm(x, x_stride, y, y_stride, rows, width, w, b, eps);
        return;
    }
    int chunk = (rows + c->n_threads - 1) / c->n_threads;
    if (chunk < 1) chunk = 1;
    ln_job j = {x, w, b, y, x_stride, y_stride, rows, width, chunk, eps};
    clip_pool_run(c->pool, layernorm_task, &j, (rows + chunk - 1) / chunk);
}

/* =======================================================================================
 * Layers: linear
 *
 * Each call splits the output's weight panels between the pool's threads, a few runs of
 * consecutive panels per thread, after re-laying the input in row tiles for the kernels
 * (kernels.c). On the BLAS kernel each panel is one cblas_sgemm instead.
 * ===================================================================================== */

typedef struct linear_job {
    const float *x, *w, *b;
    const float *xp;    /* x in row tiles (NULL for sgemm)                                */
    float *y, *residual;
    int rows, n_in, n_out, act, n_tiles;
    int ldy;            /* y's row stride                                                */
    int group;          /* panels per task                                               */
    clip_kernel kind;
    const clip_norm *ln;   /* LayerNorm to apply to x's rows as they are re-laid, or NULL */
} linear_job;

/* Tile `task` of x's rows re-laid for the kernels, as LayerNorm(x) when ln is given: the
 * values layernorm_row writes, without a pass through a row-major copy. */
static void pack_task(void *arg, int task, int thread)
{
    (void)thread;
    const linear_job *j = arg;
    int r0 = clip_tile_start(task, j->n_tiles, j->rows);
    int r1 = clip_tile_start(task + 1, j->n_tiles, j->rows);
    const float *x = j->x + (size_t)r0 * j->n_in;
    float mean[16], rstd[16];
    for (int r = 0; j->ln && r < r1 - r0; r++)
        layernorm_stats(x + (size_t)r * j->n_in, j->n_in, j->ln->eps, &mean[r], &rstd[r]);
    clip_kernel_pack(j->kind, x, (size_t)j->n_in, j->n_in, r1 - r0, j->ln, mean, rstd,
                     (float *)j->xp + (size_t)r0 * j->n_in, (size_t)(r1 - r0));
}

/* How far ahead of its reads a tile prefetches the weights it streams, in steps of one
 * input column: about 4 KB, enough to cover a trip to memory at the rate a tile of few
 * rows consumes them. */
#define PREFETCH_STEPS 32

/* One panel of 32 output columns for every row. The weights come from memory once, as
 * the first tile streams them (prefetching ahead in the panel, which runs on into the
 * next one); the other tiles find them in cache. While the second tile runs, it prefetches
 * the next panel, so with several tiles the memory traffic overlaps arithmetic. */
static void linear_panel(const linear_job *j, int panel, bool prefetch_next)
{
    int o0 = panel * CLIP_PANEL, K = j->n_in, N = j->n_out, ldy = j->ldy;
    int w = N - o0 < CLIP_PANEL ? N - o0 : CLIP_PANEL;
    const float *p = j->w + (size_t)o0 * K, *bias = j->b ? j->b + o0 : NULL;
    bool act = j->act >= 0, add = j->residual != NULL;
    if (j->kind == CLIP_KERNEL_BLAS) {
        cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasNoTrans, j->rows, w, K, 1.0f, j->x, K, p,
                    w, 0.0f, j->y + o0, ldy);
        if (bias)
            for (int r = 0; r < j->rows; r++) add_into(j->y + (size_t)r * ldy + o0, bias, w);
    }
#if CLIP_KERNELS_X86
    /* the AVX-512 kernel applies QuickGELU (CLIP's usual activation) to its registers; both
     * x86 kernels add into a residual stream themselves, leaving y alone */
    clip_epilogue epi = CLIP_EPI_STORE;
    float *out = j->y;
    if (j->kind == CLIP_KERNEL_AVX512 && j->act == CLIP_ACT_QUICK_GELU) {
        epi = CLIP_EPI_GELU;
        act = false;
    } else if (j->kind != CLIP_KERNEL_BLAS && j->residual && j->act < 0) {
        epi = CLIP_EPI_ADD;
        out = j->residual;
        add = false;
    }
    for (int t = 0; j->kind != CLIP_KERNEL_BLAS && t < j->n_tiles; t++) {
        int r0 = clip_tile_start(t, j->n_tiles, j->rows);
        int r1 = clip_tile_start(t + 1, j->n_tiles, j->rows);
        const char *pf = NULL;
        int pf_step = 0;
        if (t == 0) {
            pf = (const char *)(p + (size_t)PREFETCH_STEPS * w);
            pf_step = w * (int)sizeof(float);
        } else if (t == 1 && prefetch_next) {
            pf = (const char *)(p + (size_t)w * K);
            pf_step = CLIP_PANEL * (int)sizeof(float);
        }
        clip_kernel_panel(j->kind, j->xp + (size_t)r0 * K, p, K, w, w, bias, epi,
                          out + (size_t)r0 * ldy + o0, ldy, pf, pf_step, r1 - r0);
    }
#else
    (void)prefetch_next;
#endif
    for (int r = 0; (act || add) && r < j->rows; r++) {
        float *y = j->y + (size_t)r * ldy + o0;
        if (act) clip_ref_activate(y, w, j->act);
        if (add) add_into(j->residual + (size_t)r * ldy + o0, y, w);
    }
}

/* A run of consecutive panels: long enough to prefetch within, short enough (a few runs
 * per thread) that a thread slowed by the rest of the machine does less of the work. */
static void linear_task(void *arg, int task, int thread)
{
    (void)thread;
    const linear_job *j = arg;
    int n_panels = (j->n_out + CLIP_PANEL - 1) / CLIP_PANEL;
    int first = task * j->group, last = first + j->group < n_panels ? first + j->group : n_panels;
    for (int p = first; p < last; p++) linear_panel(j, p, p + 1 < last);
}

/* The input goes to the pack buffer: re-laid in row tiles for the kernels (normalized on
 * the way when ln is given), or for sgemm and ref.c, normalized rows in their own layout.
 * Only the transformer passes ln, and it has reserved the buffer; without room for it
 * otherwise, sgemm reads x in place. */
static void linear(clip_ctx *c, const float *x, const clip_norm *ln, int rows, int n_in,
                   const float *w, const float *b, int n_out, float *y, int act,
                   float *residual)
{
    if (c->kernel == CLIP_KERNEL_REF) {
        if (ln) {
            float *h = clip_ctx_scratch(c, CLIP_SCRATCH_PACK, (size_t)rows * n_in);
            clip_ref_layernorm(x, (size_t)n_in, h, (size_t)n_in, rows, n_in, ln->w, ln->b,
                               ln->eps);
            x = h;
        }
        clip_ref_linear(x, rows, n_in, w, b, n_out, y, act, residual);
        return;
    }
    int n_panels = (n_out + CLIP_PANEL - 1) / CLIP_PANEL;
    int group = n_panels / (4 * c->n_threads);
    linear_job j = {x, w, b, NULL, y, residual, rows, n_in, n_out, act, 0, n_out,
                    group > 1 ? group : 1, c->kernel, ln};
    float *xp = ln || j.kind != CLIP_KERNEL_BLAS
                    ? clip_ctx_scratch(c, CLIP_SCRATCH_PACK, (size_t)rows * n_in) : NULL;
    if (!xp) {
        j.kind = CLIP_KERNEL_BLAS;
    } else if (j.kind == CLIP_KERNEL_BLAS) {
        clip_layernorm(c, x, (size_t)n_in, xp, (size_t)n_in, rows, n_in, ln->w, ln->b, ln->eps);
        j.x = xp;
        j.ln = NULL;
    } else {
        int R = clip_kernel_tile_rows(j.kind);
        j.xp = xp;
        j.n_tiles = (rows + R - 1) / R;
        /* below ~64K floats a dispatch costs more than the copy */
        if ((size_t)rows * n_in >= 65536)
            clip_pool_run(c->pool, pack_task, &j, j.n_tiles);
        else
            for (int t = 0; t < j.n_tiles; t++) pack_task(&j, t, 0);
    }
    clip_pool_run(c->pool, linear_task, &j, (n_panels + j.group - 1) / j.group);
}

void clip_linear(clip_ctx *c, const float *x, int rows, int n_in, const float *w,
                 const float *b, int n_out, float *y, int act, float *residual)
{
    linear(c, x, NULL, rows, n_in, w, b, n_out, y, act, residual);
}

void clip_linear_ln(clip_ctx *c, const float *x, int rows, int n_in, const clip_norm *ln,
                    const float *w, const float *b, int n_out, float *y, int act)
{
    linear(c, x, ln, rows, n_in, w, b, n_out, y, act, NULL);
}

/* =======================================================================================
 * Layers: attention and the transformer block
 * ===================================================================================== */

typedef struct attn_job {
    const float *qkv;   /* [batch * tokens, 3W]; for sgemm, q is divided in place        */
    float *out;         /* [batch * tokens, W], or [batch, W] with pick                  */
    const int *pick;    /* NULL, or the one query position per sequence to compute       */
    float *scratch;     /* n_threads x attn_scratch_floats                               */
    size_t scratch_per_thread;
    int tokens, width, heads, causal;
    clip_kernel kind;
} attn_job;

/* Per thread: the scores and their re-laid copy (tokens x tokens each), and q and k of
 * one head re-laid for the matmul kernels (tokens x head width each). */
static size_t attn_scratch_floats(int tokens, int width, int heads)
{
    size_t T = (size_t)tokens, d = (size_t)(width / heads);
    return 2 * T * T + 2 * T * d;
}

/* The first n of a row of len scores, softmaxed as torch does in float (ref.c); the
 * masked rest set to 0. */
static void softmax_row(float *row, int n, int len, clip_kernel kind)
{
#if CLIP_KERNELS_X86
    if (kind == CLIP_KERNEL_AVX512) {
        clip_kernel_softmax_row(row, n, len);
        return;
    }
#else
    (void)kind;
#endif
    clip_ref_softmax(row, n, len);
}

/* One (image or text, head) pair: softmax(q k^T / sqrt(d) + mask) v, with q divided by
 * sqrt(d) first as torch's multi_head_attention_forward does. Every query position, or
 * with pick just one: its row comes out as it would among all the others. */
static void attn_task(void *arg, int task, int thread)
{
    const attn_job *j = arg;
    int T = j->tokens, W = j->width, d = W / j->heads;
    int bi = task / j->heads, h = task % j->heads;
    int q0 = j->pick ? j->pick[bi] : 0, nq = j->pick ? 1 : T;   /* query rows [q0, q0 + nq) */
    size_t ld = 3 * (size_t)W;
    const float *seq = j->qkv + (size_t)bi * T * ld + (size_t)h * d;
    float *q = (float *)seq + (size_t)q0 * ld;
    const float *k = seq + W, *v = seq + 2 * W;
    float *s = j->scratch + (size_t)thread * j->scratch_per_thread;
    float *out = j->out + ((size_t)bi * (j->pick ? 1 : T)) * W + (size_t)h * d;
    float scale = (float)sqrt((double)d);
    if (j->kind == CLIP_KERNEL_BLAS) {
        for (int t = 0; t < nq; t++)
            for (int i = 0; i < d; i++) q[t * ld + i] /= scale;
        cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasTrans, nq, T, d, 1.0f, q, (int)ld, k,
                    (int)ld, 0.0f, s, T);
        for (int t = 0; t < nq; t++)
            softmax_row(s + (size_t)t * T, j->causal ? q0 + t + 1 : T, T, j->kind);
        cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasNoTrans, nq, d, T, 1.0f, s, T, v, (int)ld,
                    0.0f, out, W);
        return;
    }
#if CLIP_KERNELS_X86
    /* for the kernels: q (divided) and the scores in row tiles, k^T as a [d][T] matrix;
     * v is read in place */
    float *sp = s + (size_t)T * T, *qp = sp + (size_t)T * T, *kt = qp + (size_t)T * d;
    int R = clip_kernel_tile_rows(j->kind), n_tiles = (nq + R - 1) / R;
    clip_kernel_pack_rows(j->kind, q, ld, d, nq, n_tiles, qp);
    for (size_t i = 0; i < (size_t)nq * d; i++) qp[i] /= scale;
    clip_kernel_transpose(j->kind, k, ld, T, d, kt);
    clip_kernel_matmul(j->kind, qp, nq, d, kt, T, T, s, T);
    for (int t = 0; t < nq; t++)
        softmax_row(s + (size_t)t * T, j->causal ? q0 + t + 1 : T, T, j->kind);
    clip_kernel_pack_rows(j->kind, s, (size_t)T, T, nq, n_tiles, sp);
    clip_kernel_matmul(j->kind, sp, nq, T, v, (int)ld, d, out, W);
#endif
}

clip_status clip_transformer_reserve(clip_ctx *c, const clip_tower *t, int batch, int tokens,
                                     clip_error *err)
{
    size_t rows = (size_t)batch * (size_t)tokens, w = (size_t)t->width, mlp = (size_t)t->mlp;
    size_t attn = attn_scratch_floats(tokens, t->width, t->heads);
    if (!clip_ctx_scratch(c, CLIP_SCRATCH_X, rows * w) || !clip_ctx_scratch(c, CLIP_SCRATCH_H, rows * w) ||
        !clip_ctx_scratch(c, CLIP_SCRATCH_QKV, rows * 3 * w) ||
        !clip_ctx_scratch(c, CLIP_SCRATCH_ATTN, rows * w) ||
        !clip_ctx_scratch(c, CLIP_SCRATCH_MLP, rows * mlp) ||
        !clip_ctx_scratch(c, CLIP_SCRATCH_PACK, rows * (mlp > w ? mlp : w)) ||
        !clip_ctx_scratch(c, CLIP_SCRATCH_SCORES, attn * (size_t)c->n_threads))
        return clip_fail(err, CLIP_ERR_NOMEM, "out of memory for a %zu-row forward", rows);
    c->attn_per_thread = attn;
    return CLIP_OK;
}

void clip_transformer(clip_ctx *c, const clip_tower *t, float *x, int batch, int tokens,
                      int causal, const int *pick, float *picked)
{
    int rows = batch * tokens, W = t->width;
    float *h = c->buf[CLIP_SCRATCH_H], *qkv = c->buf[CLIP_SCRATCH_QKV];
    float *att = c->buf[CLIP_SCRATCH_ATTN], *mlp = c->buf[CLIP_SCRATCH_MLP];
    if (c->kernel == CLIP_KERNEL_REF) {
        /* every position of every block, then the rows the caller picked */
        clip_ref_scratch s = {h, qkv, att, mlp, c->buf[CLIP_SCRATCH_SCORES]};
        clip_ref_transformer(t, x, batch, tokens, causal, &s);
        for (int b = 0; pick && b < batch; b++)
            memcpy(picked + (size_t)b * W, x + ((size_t)b * tokens + pick[b]) * W,
                   (size_t)W * sizeof *x);
        return;
    }
    for (int l = 0; l < t->n_layers; l++) {
        const clip_layer *L = &t->layers[l];
        clip_norm ln1 = {L->ln1_w, L->ln1_b, t->ln_eps}, ln2 = {L->ln2_w, L->ln2_b, t->ln_eps};
        /* the last block needs keys and values everywhere, everything else only where the
         * caller reads the result */
        bool last = pick && l == t->n_layers - 1;
        clip_linear_ln(c, x, rows, W, &ln1, L->qkv_w, L->qkv_b, 3 * W, qkv, -1);
        attn_job aj = {qkv, att, last ? pick : NULL, c->buf[CLIP_SCRATCH_SCORES],
                       c->attn_per_thread, tokens, W, t->heads, causal, c->kernel};
        clip_pool_run(c->pool, attn_task, &aj, batch * t->heads);
        float *res = x;
        int n = rows;
        if (last) {
            for (int b = 0; b < batch; b++)
                memcpy(picked + (size_t)b * W, x + ((size_t)b * tokens + pick[b]) * W,
                       (size_t)W * sizeof *x);
            res = picked;
            n = batch;
        }
        clip_linear(c, att, n, W, L->out_w, L->out_b, W, h, -1, res);
        clip_linear_ln(c, res, n, W, &ln2, L->fc1_w, L->fc1_b, t->mlp, mlp, (int)t->act);
        clip_linear(c, mlp, n, t->mlp, L->fc2_w, L->fc2_b, W, h, -1, res);
    }
}

/* =======================================================================================
 * Similarity
 * ===================================================================================== */

float clip_cosine(const float *a, const float *b, size_t n)
{
    double ab = 0, aa = 0, bb = 0;
    for (size_t i = 0; i < n; i++) {
        ab += (double)a[i] * b[i];
        aa += (double)a[i] * a[i];
        bb += (double)b[i] * b[i];
    }
    return aa > 0 && bb > 0 ? (float)(ab / sqrt(aa * bb)) : 0.0f;
}
