/* clip.c -- the model file and the machinery both towers share: loading and validating a
 * .clip file (docs/clip-format.md) into a weights struct, the context with its scratch
 * buffers and thread pool, and the layers (linear, LayerNorm, activations, attention, the
 * transformer block) that vision.c and text.c stack into their towers.
 *
 * Threads: OpenBLAS's thread count is process-global, and at the row counts CLIP runs
 * (50 rows for one image) its own threading leaves cores idle. So the engine keeps every
 * sgemm single-threaded (clip_ctx_new sets OpenBLAS to one thread for the whole process)
 * and splits each matmul's output columns across the context's own pool, which also runs
 * LayerNorm, activations and attention heads. One context computes one call at a time.
 * Linears over a few rows (short prompts) skip sgemm for a kernel of ours that streams the
 * weights once (see "Layers: the few-row linear kernel"). */

#include "clip_internal.h"

#include <cblas.h>
#include <errno.h>
#include <fcntl.h>
#include <math.h>
#include <pthread.h>
#include <sched.h>
#include <stdatomic.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <unistd.h>

/* The few-row kernel is written with x86-64 AVX2+FMA intrinsics, compiled for that target
 * alone and chosen at run time, so the default build stays baseline x86-64; on other
 * machines and compilers every linear is an sgemm. */
#if defined(__x86_64__) && (defined(__GNUC__) || defined(__clang__))
#define FEW_ROWS_KERNEL 1
#include <immintrin.h>
#else
#define FEW_ROWS_KERNEL 0
#endif

/* =======================================================================================
 * Errors
 * ===================================================================================== */

clip_status clip_fail(clip_error *err, clip_status code, const char *fmt, ...)
{
    if (err) {
        va_list ap;
        va_start(ap, fmt);
        vsnprintf(err->msg, sizeof err->msg, fmt, ap);
        va_end(ap);
        err->code = code;
    }
    return code;
}

/* =======================================================================================
 * Model file: limits, little-endian reads, f16
 * ===================================================================================== */

#define CLIP_MAGIC        "CLIPMODL"
#define CLIP_FORMAT       1u
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
const clip_tokenizer *clip_model_tokenizer(const clip_model *m) { return m->tok; }
const clip_weights *clip_model_weights(const clip_model *m) { return &m->w; }

/* =======================================================================================
 * Thread pool
 *
 * The caller and n-1 workers take tasks from a shared counter. Dispatches come a few
 * microseconds apart inside a forward, so workers spin briefly before sleeping on a
 * condition variable; the caller waits for every worker to acknowledge each dispatch, so
 * no worker can still be reading the previous job when the next one is posted.
 * ===================================================================================== */

typedef void (*task_fn)(void *arg, int task, int thread);

typedef struct worker {
    struct clip_ctx *ctx;
    int index;
} worker;

/* About 0.3 ms of pause instructions: longer than the gaps inside a forward, short
 * enough that an idle server's workers go to sleep at once. */
#define SPIN_ITERS 20000

static inline void cpu_relax(void)
{
#if defined(__x86_64__) || defined(__i386__)
    __builtin_ia32_pause();
#endif
}

struct clip_ctx {
    const clip_model *model;
    int n_threads;
    bool few_kernel;    /* the CPU runs the few-row kernel                                */
    float *buf[CLIP_SCRATCH_COUNT];
    size_t buf_size[CLIP_SCRATCH_COUNT];
    size_t scores_per_thread;
    /* pool */
    pthread_t *threads;
    worker *workers;
    int n_workers;
    pthread_mutex_t mu;
    pthread_cond_t cv;
    int sleepers;
    bool stop;
    atomic_uint gen;
    atomic_int next;
    atomic_int acks;
    task_fn fn;
    void *arg;
    int n_tasks;
};

static void run_tasks(clip_ctx *c, int thread)
{
    for (;;) {
        int t = atomic_fetch_add_explicit(&c->next, 1, memory_order_relaxed);
        if (t >= c->n_tasks) return;
        c->fn(c->arg, t, thread);
    }
}

static void *worker_main(void *p)
{
    worker *w = p;
    clip_ctx *c = w->ctx;
    unsigned seen = 0;
    for (;;) {
        unsigned g = atomic_load_explicit(&c->gen, memory_order_acquire);
        for (int i = 0; g == seen && i < SPIN_ITERS; i++) {
            cpu_relax();
            g = atomic_load_explicit(&c->gen, memory_order_acquire);
        }
        if (g == seen) {
            pthread_mutex_lock(&c->mu);
            c->sleepers++;
            while ((g = atomic_load_explicit(&c->gen, memory_order_acquire)) == seen)
                pthread_cond_wait(&c->cv, &c->mu);
            c->sleepers--;
            pthread_mutex_unlock(&c->mu);
        }
        seen = g;
        if (c->stop) return NULL;
        run_tasks(c, w->index);
        atomic_fetch_add_explicit(&c->acks, 1, memory_order_release);
    }
}

static void parallel(clip_ctx *c, task_fn fn, void *arg, int n_tasks)
{
    if (c->n_workers == 0 || n_tasks <= 1) {
        for (int t = 0; t < n_tasks; t++) fn(arg, t, 0);
        return;
    }
    c->fn = fn;
    c->arg = arg;
    c->n_tasks = n_tasks;
    atomic_store_explicit(&c->next, 0, memory_order_relaxed);
    atomic_store_explicit(&c->acks, 0, memory_order_relaxed);
    pthread_mutex_lock(&c->mu);
    atomic_fetch_add_explicit(&c->gen, 1, memory_order_release);
    if (c->sleepers) pthread_cond_broadcast(&c->cv);
    pthread_mutex_unlock(&c->mu);
    run_tasks(c, 0);
    for (int i = 0; atomic_load_explicit(&c->acks, memory_order_acquire) < c->n_workers; i++) {
        cpu_relax();
        if (i > SPIN_ITERS) sched_yield();
    }
}

/* =======================================================================================
 * Context
 * ===================================================================================== */

static void pool_stop(clip_ctx *c)
{
    pthread_mutex_lock(&c->mu);
    c->stop = true;
    atomic_fetch_add_explicit(&c->gen, 1, memory_order_release);
    pthread_cond_broadcast(&c->cv);
    pthread_mutex_unlock(&c->mu);
    for (int i = 0; i < c->n_workers; i++) pthread_join(c->threads[i], NULL);
    c->n_workers = 0;
}

clip_status clip_ctx_new(const clip_model *model, int n_threads, clip_ctx **out,
                         clip_error *err)
{
    if (!model || !out) return clip_fail(err, CLIP_ERR_ARG, "clip_ctx_new: NULL argument");
    *out = NULL;
    if (n_threads <= 0) {
        long n = sysconf(_SC_NPROCESSORS_ONLN);
        n_threads = n > 0 ? (int)n : 1;
    }
    if (n_threads > 256) n_threads = 256;
    clip_ctx *c = calloc(1, sizeof *c);
    if (!c) return clip_fail(err, CLIP_ERR_NOMEM, "out of memory");
    c->model = model;
    c->n_threads = n_threads;
    pthread_mutex_init(&c->mu, NULL);
    pthread_cond_init(&c->cv, NULL);
    atomic_init(&c->gen, 0);
    atomic_init(&c->next, 0);
    atomic_init(&c->acks, 0);
    openblas_set_num_threads(1);
#if FEW_ROWS_KERNEL
    c->few_kernel = __builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma");
#endif
    if (n_threads > 1) {
        c->threads = calloc((size_t)n_threads - 1, sizeof *c->threads);
        c->workers = calloc((size_t)n_threads - 1, sizeof *c->workers);
        if (!c->threads || !c->workers) {
            clip_ctx_free(c);
            return clip_fail(err, CLIP_ERR_NOMEM, "out of memory");
        }
        for (int i = 0; i < n_threads - 1; i++) {
            c->workers[i] = (worker){c, i + 1};
            int e = pthread_create(&c->threads[i], NULL, worker_main, &c->workers[i]);
            if (e) {
                clip_ctx_free(c);
                return clip_fail(err, CLIP_ERR_NOMEM, "cannot start thread %d of %d: %s",
                                 i + 2, n_threads, strerror(e));
            }
            c->n_workers++;
        }
    }
    *out = c;
    return CLIP_OK;
}

void clip_ctx_free(clip_ctx *c)
{
    if (!c) return;
    pool_stop(c);
    pthread_mutex_destroy(&c->mu);
    pthread_cond_destroy(&c->cv);
    for (int i = 0; i < CLIP_SCRATCH_COUNT; i++) free(c->buf[i]);
    free(c->threads);
    free(c->workers);
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

clip_status clip_transformer_reserve(clip_ctx *c, const clip_tower *t, int batch, int tokens,
                                     clip_error *err)
{
    size_t rows = (size_t)batch * (size_t)tokens, w = (size_t)t->width;
    size_t scores = (size_t)tokens * (size_t)tokens;
    if (!clip_ctx_scratch(c, CLIP_SCRATCH_X, rows * w) || !clip_ctx_scratch(c, CLIP_SCRATCH_H, rows * w) ||
        !clip_ctx_scratch(c, CLIP_SCRATCH_QKV, rows * 3 * w) ||
        !clip_ctx_scratch(c, CLIP_SCRATCH_ATTN, rows * w) ||
        !clip_ctx_scratch(c, CLIP_SCRATCH_MLP, rows * (size_t)t->mlp) ||
        !clip_ctx_scratch(c, CLIP_SCRATCH_SCORES, scores * (size_t)c->n_threads))
        return clip_fail(err, CLIP_ERR_NOMEM, "out of memory for a %zu-row forward", rows);
    c->scores_per_thread = scores;
    return CLIP_OK;
}

/* =======================================================================================
 * Layers: the few-row linear kernel
 *
 * At a few rows a linear layer is a stream over its weights, and sgemm handles it badly:
 * it copies the whole weight matrix into its panel layout on every call, then runs a tile
 * shaped for tall inputs, so a 7-token prompt cost 0.4 of a 77-token one. This kernel
 * reads the [out, in] weights once, in place, each row dotted with every input row: tiles
 * of 3 weight rows by 4 input rows keep 12 sums in registers (AVX2 has 16), and while a
 * tile computes it prefetches the next tile's weight rows, so the arithmetic hides under
 * the stream. The input is first re-laid in blocks of 8 columns by `rows` rows, so a tile
 * reads all its inputs from one pointer. On ViT-B/32 (one thread, CPU time) it beats
 * sgemm from 1 row (a 7-token text 10 ms instead of 27) through 64 (texts 67 ms instead of
 * 78, one image of 50 rows 118 instead of 135); at 77 rows the two are even with two
 * threads and from 100 rows up sgemm is ahead, so taller inputs stay with sgemm.
 * ===================================================================================== */

#if FEW_ROWS_KERNEL
#define FEW_ROWS 64
#define FEW_TARGET __attribute__((target("avx2,fma")))
#define FEW_INLINE static inline __attribute__((always_inline)) FEW_TARGET
enum { FEW_LANES = 8, FEW_OUT = 3, FEW_IN = 4 };

/* xp[(k / 8 * rows + r) * 8 + k % 8] = x[r * n_in + k], for the whole blocks of 8 of k. */
static void few_pack(const float *x, int rows, int n_in, float *xp)
{
    for (int k = 0; k + FEW_LANES <= n_in; k += FEW_LANES)
        for (int r = 0; r < rows; r++, xp += FEW_LANES)
            memcpy(xp, x + (size_t)r * n_in + k, FEW_LANES * sizeof *xp);
}

FEW_INLINE float few_hsum(__m256 v)
{
    __m128 s = _mm_add_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps(v, 1));
    s = _mm_add_ps(s, _mm_movehl_ps(s, s));
    return _mm_cvtss_f32(_mm_add_ss(s, _mm_movehdup_ps(s)));
}

/* y[r * ldy + o] = x[r] . w[o] for o < NO, r < NR (both constant once inlined). xp points
 * at this tile's first row in the packed input of `rows` rows; the columns past the last
 * whole block come from x. pf is the next tile's weights, fetched while this one runs. */
FEW_INLINE void few_tile(const float *xp, int rows, const float *x, int n_in,
                         const float *w, const float *pf, float *y, int ldy, const int NO,
                         const int NR)
{
    __m256 acc[FEW_OUT][FEW_IN];
#pragma GCC unroll 4
    for (int o = 0; o < NO; o++)
#pragma GCC unroll 4
        for (int r = 0; r < NR; r++) acc[o][r] = _mm256_setzero_ps();
    int k = 0;
    for (; k + FEW_LANES <= n_in; k += FEW_LANES, xp += (size_t)FEW_LANES * rows) {
        __m256 wv[FEW_OUT];
#pragma GCC unroll 4
        for (int o = 0; o < NO; o++) wv[o] = _mm256_loadu_ps(w + (size_t)o * n_in + k);
        /* a cache line per weight row every other step: the rate the rows are read */
        if (k % (2 * FEW_LANES) == 0)
#pragma GCC unroll 4
            for (int o = 0; o < NO; o++)
                _mm_prefetch((const char *)(pf + (size_t)o * n_in + k), _MM_HINT_T0);
#pragma GCC unroll 4
        for (int r = 0; r < NR; r++) {
            __m256 xv = _mm256_load_ps(xp + r * FEW_LANES);
#pragma GCC unroll 4
            for (int o = 0; o < NO; o++) acc[o][r] = _mm256_fmadd_ps(wv[o], xv, acc[o][r]);
        }
    }
#pragma GCC unroll 4
    for (int o = 0; o < NO; o++)
#pragma GCC unroll 4
        for (int r = 0; r < NR; r++) {
            const float *wo = w + (size_t)o * n_in, *xr = x + (size_t)r * n_in;
            float s = few_hsum(acc[o][r]);
            for (int i = k; i < n_in; i++) s += wo[i] * xr[i];
            y[(size_t)r * ldy + o] = s;
        }
}

/* y[r * ldy + o] = x[r] . w[o] for every row r < rows and o0 <= o < o1. */
FEW_TARGET static void few_linear(const float *xp, const float *x, int rows, int n_in,
                                  const float *w, int o0, int o1, float *y, int ldy)
{
    for (int o = o0; o < o1;) {
        int no = o1 - o >= FEW_OUT ? FEW_OUT : 1;
        const float *wo = w + (size_t)o * n_in;
        /* the last tiles prefetch themselves rather than rows past o1 (or the matrix) */
        const float *pf = o + no + FEW_OUT <= o1 ? wo + (size_t)no * n_in : wo;
        for (int r = 0; r < rows; r += FEW_IN) {
            int nr = rows - r < FEW_IN ? rows - r : FEW_IN;
            const float *xpr = xp + (size_t)r * FEW_LANES, *xr = x + (size_t)r * n_in;
            float *yr = y + (size_t)r * ldy + o;
            switch (no * 8 + nr) {
#define FEW_TILE(NO, NR)                                                                   \
    case NO * 8 + NR: few_tile(xpr, rows, xr, n_in, wo, pf, yr, ldy, NO, NR); break;
            FEW_TILE(3, 4) FEW_TILE(3, 3) FEW_TILE(3, 2) FEW_TILE(3, 1)
            FEW_TILE(1, 4) FEW_TILE(1, 3) FEW_TILE(1, 2) FEW_TILE(1, 1)
#undef FEW_TILE
            }
        }
        o += no;
    }
}
#endif

/* =======================================================================================
 * Layers: activations, linear, LayerNorm
 * ===================================================================================== */

/* As PyTorch computes them in float: x * sigmoid(1.702 x), and 0.5 x (1 + erf(x / sqrt 2)). */
static void activate(float *x, int n, int act)
{
    if (act == CLIP_ACT_QUICK_GELU) {
        for (int i = 0; i < n; i++) x[i] = x[i] * (1.0f / (1.0f + expf(-1.702f * x[i])));
    } else {
        for (int i = 0; i < n; i++)
            x[i] = x[i] * 0.5f * (1.0f + erff(x[i] * (float)M_SQRT1_2));
    }
}

/* y += a over n floats. Like every elementwise loop here, it runs in blocks of 16 with a
 * fixed trip count, the shape the -O2 vectorizer takes on, then a scalar tail. */
static void add_into(float *restrict y, const float *restrict a, int n)
{
    int i = 0;
    for (; i + 16 <= n; i += 16)
        for (int k = 0; k < 16; k++) y[i + k] += a[i + k];
    for (; i < n; i++) y[i] += a[i];
}

typedef struct linear_job {
    const float *x, *w, *b;
    const float *xp;   /* x packed for the few-row kernel, or NULL for sgemm              */
    float *y, *residual;
    int rows, n_in, n_out, act, chunk;
} linear_job;

static void linear_task(void *arg, int task, int thread)
{
    (void)thread;
    const linear_job *j = arg;
    int n0 = task * j->chunk, n1 = n0 + j->chunk < j->n_out ? n0 + j->chunk : j->n_out;
    if (n0 >= n1) return;
    int nc = n1 - n0;
#if FEW_ROWS_KERNEL
    if (j->xp)
        few_linear(j->xp, j->x, j->rows, j->n_in, j->w, n0, n1, j->y, j->n_out);
    else
#endif
        cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasTrans, j->rows, nc, j->n_in, 1.0f,
                    j->x, j->n_in, j->w + (size_t)n0 * j->n_in, j->n_in, 0.0f, j->y + n0,
                    j->n_out);
    for (int r = 0; r < j->rows; r++) {
        float *y = j->y + (size_t)r * j->n_out + n0;
        if (j->b) add_into(y, j->b + n0, nc);
        if (j->act >= 0) activate(y, nc, j->act);
        if (j->residual) add_into(j->residual + (size_t)r * j->n_out + n0, y, nc);
    }
}

void clip_linear(clip_ctx *c, const float *x, int rows, int n_in, const float *w,
                 const float *b, int n_out, float *y, int act, float *residual)
{
    /* Column chunks of 16 keep each thread's sgemm on whole vector tiles. */
    int per = (n_out + c->n_threads - 1) / c->n_threads;
    per = (per + 15) / 16 * 16;
    linear_job j = {x, w, b, NULL, y, residual, rows, n_in, n_out, act, per};
#if FEW_ROWS_KERNEL
    /* without room for the packed copy, sgemm does it */
    if (c->few_kernel && rows <= FEW_ROWS) {
        float *xp = clip_ctx_scratch(c, CLIP_SCRATCH_PACK, (size_t)rows * n_in);
        if (xp) few_pack(x, rows, n_in, xp);
        j.xp = xp;
    }
#endif
    parallel(c, linear_task, &j, (n_out + per - 1) / per);
}

typedef struct ln_job {
    const float *x, *w, *b;
    float *y;
    size_t xs, ys;
    int rows, width, chunk;
    float eps;
} ln_job;

/* Mean and variance in two passes, as torch.nn.LayerNorm: (x - mean) / sqrt(var + eps) *
 * w + b with the biased variance. Sixteen partial sums let the compiler vectorize the
 * reductions without reassociating anything it was not told to. */
static void layernorm_row(const float *x, float *y, int n, const float *w, const float *b,
                          float eps)
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
    float rstd = 1.0f / sqrtf(var + eps);
    for (i = 0; i + 16 <= n; i += 16)
        for (int k = 0; k < 16; k++) y[i + k] = (x[i + k] - mean) * rstd * w[i + k] + b[i + k];
    for (; i < n; i++) y[i] = (x[i] - mean) * rstd * w[i] + b[i];
}

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
    int chunk = (rows + c->n_threads - 1) / c->n_threads;
    if (chunk < 1) chunk = 1;
    ln_job j = {x, w, b, y, x_stride, y_stride, rows, width, chunk, eps};
    parallel(c, layernorm_task, &j, (rows + chunk - 1) / chunk);
}

/* =======================================================================================
 * Layers: attention and the transformer block
 * ===================================================================================== */

typedef struct attn_job {
    const float *qkv;   /* [batch * tokens, 3W]; q is scaled in place before use         */
    float *out;         /* [batch * tokens, W]                                           */
    float *scores;      /* n_threads x tokens x tokens                                   */
    size_t scores_per_thread;
    int tokens, width, heads, causal;
} attn_job;

/* One (image or text, head) pair: softmax(q k^T / sqrt(d) + mask) v, with q divided by
 * sqrt(d) first as torch's multi_head_attention_forward does. */
static void attn_task(void *arg, int task, int thread)
{
    const attn_job *j = arg;
    int T = j->tokens, W = j->width, d = W / j->heads;
    int bi = task / j->heads, h = task % j->heads;
    size_t ld = 3 * (size_t)W;
    float *q = (float *)j->qkv + (size_t)bi * T * ld + (size_t)h * d;
    const float *k = q + W, *v = q + 2 * W;
    float *s = j->scores + (size_t)thread * j->scores_per_thread;
    float scale = (float)sqrt((double)d);
    for (int t = 0; t < T; t++)
        for (int i = 0; i < d; i++) q[t * ld + i] /= scale;
    cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasTrans, T, T, d, 1.0f, q, (int)ld, k, (int)ld,
                0.0f, s, T);
    for (int t = 0; t < T; t++) {
        float *row = s + (size_t)t * T;
        int n = j->causal ? t + 1 : T;
        float mx = row[0];
        for (int i = 1; i < n; i++) mx = row[i] > mx ? row[i] : mx;
        float sum = 0;
        for (int i = 0; i < n; i++) {
            row[i] = expf(row[i] - mx);
            sum += row[i];
        }
        float inv = 1.0f / sum;
        for (int i = 0; i < n; i++) row[i] *= inv;
        for (int i = n; i < T; i++) row[i] = 0.0f;
    }
    cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasNoTrans, T, d, T, 1.0f, s, T, v, (int)ld,
                0.0f, j->out + (size_t)bi * T * W + (size_t)h * d, W);
}

void clip_transformer(clip_ctx *c, const clip_tower *t, float *x, int batch, int tokens,
                      int causal)
{
    int rows = batch * tokens, W = t->width;
    float *h = c->buf[CLIP_SCRATCH_H], *qkv = c->buf[CLIP_SCRATCH_QKV];
    float *att = c->buf[CLIP_SCRATCH_ATTN], *mlp = c->buf[CLIP_SCRATCH_MLP];
    for (int l = 0; l < t->n_layers; l++) {
        const clip_layer *L = &t->layers[l];
        clip_layernorm(c, x, (size_t)W, h, (size_t)W, rows, W, L->ln1_w, L->ln1_b, t->ln_eps);
        clip_linear(c, h, rows, W, L->qkv_w, L->qkv_b, 3 * W, qkv, -1, NULL);
        attn_job aj = {qkv, att, c->buf[CLIP_SCRATCH_SCORES], c->scores_per_thread, tokens, W,
                       t->heads, causal};
        parallel(c, attn_task, &aj, batch * t->heads);
        clip_linear(c, att, rows, W, L->out_w, L->out_b, W, h, -1, x);
        clip_layernorm(c, x, (size_t)W, h, (size_t)W, rows, W, L->ln2_w, L->ln2_b, t->ln_eps);
        clip_linear(c, h, rows, W, L->fc1_w, L->fc1_b, t->mlp, mlp, (int)t->act, NULL);
        clip_linear(c, mlp, rows, t->mlp, L->fc2_w, L->fc2_b, W, h, -1, x);
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
