/* clip.c -- the model file and the machinery both towers share: loading and validating a
 * .clip file (docs/clip-format.md) into a weights struct, the context with its scratch
 * buffers and thread pool, and the layers (linear, LayerNorm, activations, attention, the
 * transformer block) that vision.c and text.c stack into their towers.
 *
 * Threads: each context has its own pool; a matmul hands out its weight panels to it, and
 * LayerNorm, activations and attention heads are split the same way. Our matmul kernels
 * (see "Layers: matrix multiply") read the weights in the panel order the file stores them
 * in; OpenBLAS remains for attention and for CPUs without AVX2, always single-threaded
 * (clip_ctx_new sets it for the whole process: its thread count is process-global, and its
 * own threading at the row counts CLIP runs, 50 rows for one image, left cores idle). One
 * context computes one call at a time. */

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

/* The matmul kernels are x86-64 intrinsics (see "Layers: matrix multiply"); on other
 * machines and compilers every linear is an sgemm per weight panel. */
#if defined(__x86_64__) && (defined(__GNUC__) || defined(__clang__))
#define MM_X86 1
#include <immintrin.h>
#else
#define MM_X86 0
#endif

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

/* The matmul kernels ("Layers: matrix multiply"), and the rows of a kernel's tile. */
typedef enum mm_kind { MM_BLAS, MM_AVX2, MM_AVX512 } mm_kind;

static const char *const mm_names[] = {"blas", "avx2", "avx512"};
static const int mm_tile_rows[] = {0, 6, 12};

struct clip_ctx {
    const clip_model *model;
    int n_threads;
    mm_kind mm;
    float *buf[CLIP_SCRATCH_COUNT];
    size_t buf_size[CLIP_SCRATCH_COUNT];
    size_t attn_per_thread;    /* attention scratch floats per thread (attn_scratch_floats) */
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
    /* one single-threaded context per thread, for batches split into lanes */
    struct clip_ctx **lanes;
    clip_status lane_status;   /* a lane's result, as clip_run_lanes collects it          */
    clip_error lane_err;
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

/* The best kernel this CPU runs, or the one `want` names (for tests and benchmarks of the
 * others). */
static clip_status pick_kernel(const char *want, mm_kind *kind, clip_error *err)
{
    bool avx512 = false, avx2 = false;
#if MM_X86
    avx512 = __builtin_cpu_supports("avx512f");
    avx2 = __builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma");
#endif
    *kind = avx512 ? MM_AVX512 : avx2 ? MM_AVX2 : MM_BLAS;
    if (!want || !*want || !strcmp(want, "auto")) return CLIP_OK;
    for (int k = MM_BLAS; k <= MM_AVX512; k++) {
        if (strcmp(want, mm_names[k])) continue;
        if ((k == MM_AVX512 && !avx512) || (k == MM_AVX2 && !avx2))
            return clip_fail(err, CLIP_ERR_ARG, "matmul kernel %s: this CPU cannot run it", want);
        *kind = (mm_kind)k;
        return CLIP_OK;
    }
    return clip_fail(err, CLIP_ERR_ARG,
                     "matmul kernel %.40s: expected auto, avx512, avx2 or blas", want);
}

const char *clip_ctx_matmul(const clip_ctx *c) { return mm_names[c->mm]; }

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
    mm_kind mm;
    clip_status st = pick_kernel(params->matmul, &mm, err);
    if (st != CLIP_OK) return st;
    clip_ctx *c = calloc(1, sizeof *c);
    if (!c) return clip_fail(err, CLIP_ERR_NOMEM, "out of memory");
    c->model = model;
    c->n_threads = n_threads;
    c->mm = mm;
    pthread_mutex_init(&c->mu, NULL);
    pthread_cond_init(&c->cv, NULL);
    atomic_init(&c->gen, 0);
    atomic_init(&c->next, 0);
    atomic_init(&c->acks, 0);
    openblas_set_num_threads(1);
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
        c->lanes = calloc((size_t)n_threads, sizeof *c->lanes);
        if (!c->lanes) {
            clip_ctx_free(c);
            return clip_fail(err, CLIP_ERR_NOMEM, "out of memory");
        }
        clip_ctx_params lane_params = {1, mm_names[mm]};
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
    pool_stop(c);
    pthread_mutex_destroy(&c->mu);
    pthread_cond_destroy(&c->cv);
    for (int i = 0; i < CLIP_SCRATCH_COUNT; i++) free(c->buf[i]);
    for (int i = 0; c->lanes && i < c->n_threads; i++) clip_ctx_free(c->lanes[i]);
    free(c->lanes);
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

/* =======================================================================================
 * Lanes: a batch split between threads
 *
 * parallel() splits each matmul's panels between the threads, which keeps one forward
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
    parallel(c, lane_task, &j, n);
    for (int i = 0; i < n; i++)
        if (c->lanes[i]->lane_status != CLIP_OK) {
            if (err) *err = c->lanes[i]->lane_err;
            return c->lanes[i]->lane_status;
        }
    return CLIP_OK;
}

/* =======================================================================================
 * Layers: matrix multiply
 *
 * Every linear is y = x . w^T over weights that are already in panels of 32 output columns
 * (clip_internal.h), so a kernel streams each weight once, in order, and keeps a tile of
 * outputs in registers: per input column it loads the panel's 32 weights and multiplies
 * them by each row of the tile. The input is re-laid once per call in tiles of rows
 * ([in][rows] per tile), so each step reads its row values from one pointer.
 *
 * Three kernels, chosen per context (clip_ctx_new): AVX-512 (tiles of up to 12 rows x 32
 * columns: 24 of the 32 vector registers hold sums), AVX2+FMA (up to 6 rows x 16 columns,
 * 12 of 16 registers), and elsewhere one cblas_sgemm per panel. The two x86 kernels are
 * compiled for their own targets only and picked at run time, so the build stays baseline
 * x86-64. Measured on ViT-B/32's shapes against OpenBLAS's own sgemm (its Haswell kernels,
 * one thread, same weights): the AVX-512 kernel 180-210 GFLOP/s from 7 to 400 rows where
 * sgemm reaches 28-100, most of the gain being the copy sgemm makes of the weights on every
 * call. Threads take whole panels from the pool's counter, so a busy core slows only its
 * own share.
 * ===================================================================================== */

#if MM_X86
#define MM512_TARGET __attribute__((target("avx512f")))
#define MM512_INLINE static inline __attribute__((always_inline)) MM512_TARGET
#define MM256_TARGET __attribute__((target("avx2,fma")))
#define MM256_INLINE static inline __attribute__((always_inline)) MM256_TARGET

/* e^x in float to within about 1 ulp: x = n ln2 + r with |r| <= ln2 / 2 (ln2 in two parts,
 * so r is exact), e^r by its Taylor series to r^7 (the first term left out is below 6e-9
 * relative), then scaled by 2^n with vscalefps, which overflows to inf and underflows
 * through the subnormals to 0 as expf does. */
MM512_INLINE __m512 mm512_exp(__m512 x)
{
    __m512 n = _mm512_roundscale_ps(_mm512_mul_ps(x, _mm512_set1_ps(1.44269504f)),
                                    _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC);
    __m512 r = _mm512_fnmadd_ps(n, _mm512_set1_ps(0.693145752f), x);
    r = _mm512_fnmadd_ps(n, _mm512_set1_ps(1.42860677e-6f), r);
    __m512 e = _mm512_set1_ps(1.0f / 5040);
    e = _mm512_fmadd_ps(e, r, _mm512_set1_ps(1.0f / 720));
    e = _mm512_fmadd_ps(e, r, _mm512_set1_ps(1.0f / 120));
    e = _mm512_fmadd_ps(e, r, _mm512_set1_ps(1.0f / 24));
    e = _mm512_fmadd_ps(e, r, _mm512_set1_ps(1.0f / 6));
    e = _mm512_fmadd_ps(e, r, _mm512_set1_ps(0.5f));
    e = _mm512_fmadd_ps(e, r, _mm512_set1_ps(1.0f));
    e = _mm512_fmadd_ps(e, r, _mm512_set1_ps(1.0f));
    return _mm512_scalef_ps(e, n);
}

/* What a kernel does with a finished tile of sums plus bias: store it, store its
 * QuickGELU (AVX-512 only), or add it into y (a residual stream) as add_into would. */
typedef enum mm_epilogue { MM_STORE, MM_GELU, MM_ADD } mm_epilogue;

/* QuickGELU as activate() computes it, x * (1 / (1 + e^(-1.702 x))), with the exp above. */
MM512_INLINE __m512 mm512_quick_gelu(__m512 x)
{
    __m512 one = _mm512_set1_ps(1.0f);
    __m512 e = mm512_exp(_mm512_mul_ps(x, _mm512_set1_ps(-1.702f)));
    return _mm512_mul_ps(x, _mm512_div_ps(one, _mm512_add_ps(one, e)));
}

/* y[r * ldy + j] = bias[j] + sum over k of a[k * R + r] * p[k * ldp + j], for r < R and
 * j < w <= 32: R rows against one panel of width w (ldp = w for weights), finished as
 * `epi` says. R is a constant once inlined, and so is full (w == 32): full panels load
 * their weights plain, since GCC reloads the two masks from the stack every step. When pf
 * is not NULL, each step also prefetches the two cache lines at pf + k * pf_step. */
MM512_INLINE void mm512_tile(const float *a, const float *p, int K, int w, int ldp,
                             const float *bias, mm_epilogue epi, float *y, int ldy,
                             const char *pf, int pf_step, const int R, const bool full)
{
    __mmask16 m0 = w >= 16 ? 0xFFFF : (__mmask16)((1u << w) - 1);
    __mmask16 m1 = w >= 32 ? 0xFFFF : w <= 16 ? 0 : (__mmask16)((1u << (w - 16)) - 1);
    __m512 acc[12][2];
#pragma GCC unroll 12
    for (int r = 0; r < R; r++) acc[r][0] = acc[r][1] = _mm512_setzero_ps();
    for (int k = 0; k < K; k++, a += R, p += ldp) {
        __m512 p0 = full ? _mm512_loadu_ps(p) : _mm512_maskz_loadu_ps(m0, p);
        __m512 p1 = full ? _mm512_loadu_ps(p + 16) : _mm512_maskz_loadu_ps(m1, p + 16);
        if (pf) {
            _mm_prefetch(pf + (size_t)k * pf_step, _MM_HINT_T0);
            _mm_prefetch(pf + (size_t)k * pf_step + 64, _MM_HINT_T0);
        }
#pragma GCC unroll 12
        for (int r = 0; r < R; r++) {
            __m512 x = _mm512_set1_ps(a[r]);
            acc[r][0] = _mm512_fmadd_ps(x, p0, acc[r][0]);
            acc[r][1] = _mm512_fmadd_ps(x, p1, acc[r][1]);
        }
    }
    __m512 b0 = bias ? _mm512_maskz_loadu_ps(m0, bias) : _mm512_setzero_ps();
    __m512 b1 = bias ? _mm512_maskz_loadu_ps(m1, bias + 16) : _mm512_setzero_ps();
#pragma GCC unroll 12
    for (int r = 0; r < R; r++) {
        __m512 y0 = _mm512_add_ps(acc[r][0], b0), y1 = _mm512_add_ps(acc[r][1], b1);
        if (epi == MM_GELU) {
            y0 = mm512_quick_gelu(y0);
            y1 = mm512_quick_gelu(y1);
        } else if (epi == MM_ADD) {
            y0 = _mm512_add_ps(_mm512_maskz_loadu_ps(m0, y + (size_t)r * ldy), y0);
            y1 = _mm512_add_ps(_mm512_maskz_loadu_ps(m1, y + (size_t)r * ldy + 16), y1);
        }
        _mm512_mask_storeu_ps(y + (size_t)r * ldy, m0, y0);
        _mm512_mask_storeu_ps(y + (size_t)r * ldy + 16, m1, y1);
    }
}

/* A softmax row as softmax_row() computes it, sixteen lanes at a time with the exp above:
 * attention's exps cost more than its two small matrix products when done one by one. */
MM512_TARGET static void mm512_softmax_row(float *row, int n, int len)
{
    __m512 mx = _mm512_set1_ps(row[0]);
    int i = 0;
    for (; i + 16 <= n; i += 16) mx = _mm512_max_ps(mx, _mm512_loadu_ps(row + i));
    __mmask16 tail = (__mmask16)((1u << (n - i)) - 1);
    mx = _mm512_max_ps(mx, _mm512_mask_loadu_ps(mx, tail, row + i));
    __m512 m = _mm512_set1_ps(_mm512_reduce_max_ps(mx)), sum = _mm512_setzero_ps();
    for (i = 0; i + 16 <= n; i += 16) {
        __m512 e = mm512_exp(_mm512_sub_ps(_mm512_loadu_ps(row + i), m));
        _mm512_storeu_ps(row + i, e);
        sum = _mm512_add_ps(sum, e);
    }
    __m512 e = mm512_exp(_mm512_sub_ps(_mm512_maskz_loadu_ps(tail, row + i), m));
    e = _mm512_maskz_mov_ps(tail, e);
    _mm512_mask_storeu_ps(row + i, tail, e);
    __m512 inv = _mm512_set1_ps(1.0f / _mm512_reduce_add_ps(_mm512_add_ps(sum, e)));
    for (i = 0; i < n; i += 16) {
        __mmask16 k = n - i >= 16 ? 0xFFFF : (__mmask16)((1u << (n - i)) - 1);
        _mm512_mask_storeu_ps(row + i, k, _mm512_mul_ps(_mm512_maskz_loadu_ps(k, row + i), inv));
    }
    for (i = n; i < len; i++) row[i] = 0.0f;
}

MM512_TARGET static void mm512_panel(const float *a, const float *p, int K, int w, int ldp,
                                     const float *bias, mm_epilogue epi, float *y, int ldy,
                                     const char *pf, int pf_step, int rows)
{
    bool full = w == CLIP_PANEL;
    switch (rows) {
#define MM_CASE(R)                                                                          \
    case R:                                                                                 \
        if (full)                                                                           \
            mm512_tile(a, p, K, w, ldp, bias, epi, y, ldy, pf, pf_step, R, true);           \
        else                                                                                \
            mm512_tile(a, p, K, w, ldp, bias, epi, y, ldy, pf, pf_step, R, false);          \
        break;
    MM_CASE(1) MM_CASE(2) MM_CASE(3) MM_CASE(4) MM_CASE(5) MM_CASE(6)
    MM_CASE(7) MM_CASE(8) MM_CASE(9) MM_CASE(10) MM_CASE(11) MM_CASE(12)
#undef MM_CASE
    }
}

/* Rows 0 .. R-1 (R <= 16) of x (row stride ldx), each normalized as pack_tile does when
 * ln is given, transposed: column k of the rows goes to dst + k * ldd (ldd = R makes the
 * [n_in][R] tile the kernels read). Sixteen columns at a time, as a 16 x 16 block
 * transposed in registers: the scalar copy, one float per step, took 5% of a batch-8
 * forward, this 3%. The normalization uses the _round forms so that GCC cannot fuse a
 * multiply and an add into an FMA: the values stay those of the scalar code. */
MM512_TARGET static void mm512_pack_tile(const float *x, size_t ldx, int n_in, int R,
                                         const clip_norm *ln, const float *mean,
                                         const float *rstd, float *dst, size_t ldd)
{
    enum { rnd = _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC };   /* clang wants a constant */
    __mmask16 row_mask = (__mmask16)((1u << R) - 1);
    for (int k0 = 0; k0 < n_in; k0 += 16) {
        int n = n_in - k0 < 16 ? n_in - k0 : 16;
        __mmask16 m = n == 16 ? 0xFFFF : (__mmask16)((1u << n) - 1);
        __m512 v[16], t[16];
#pragma GCC unroll 16
        for (int r = 0; r < 16; r++)
            v[r] = r < R ? _mm512_maskz_loadu_ps(m, x + (size_t)r * ldx + k0)
                         : _mm512_setzero_ps();
        if (ln) {
            __m512 w = _mm512_maskz_loadu_ps(m, ln->w + k0), b = _mm512_maskz_loadu_ps(m, ln->b + k0);
#pragma GCC unroll 16
            for (int r = 0; r < R; r++) {
                __m512 y = _mm512_sub_round_ps(v[r], _mm512_set1_ps(mean[r]), rnd);
                y = _mm512_mul_round_ps(y, _mm512_set1_ps(rstd[r]), rnd);
                v[r] = _mm512_add_round_ps(_mm512_mul_round_ps(y, w, rnd), b, rnd);
            }
        }
        /* pairs of rows interleaved by floats, then fours by pairs of floats: t[4i + j]
         * holds, in each 128-bit lane L, column 4L + j of rows 4i .. 4i+3 */
#pragma GCC unroll 8
        for (int i = 0; i < 16; i += 2) {
            t[i] = _mm512_unpacklo_ps(v[i], v[i + 1]);
            t[i + 1] = _mm512_unpackhi_ps(v[i], v[i + 1]);
        }
#pragma GCC unroll 4
        for (int i = 0; i < 16; i += 4) {
            __m512d a = _mm512_castps_pd(t[i]), b = _mm512_castps_pd(t[i + 1]);
            __m512d c = _mm512_castps_pd(t[i + 2]), d = _mm512_castps_pd(t[i + 3]);
            v[i] = _mm512_castpd_ps(_mm512_unpacklo_pd(a, c));
            v[i + 1] = _mm512_castpd_ps(_mm512_unpackhi_pd(a, c));
            v[i + 2] = _mm512_castpd_ps(_mm512_unpacklo_pd(b, d));
            v[i + 3] = _mm512_castpd_ps(_mm512_unpackhi_pd(b, d));
        }
        /* then the four 128-bit lanes gathered: column 4L + j from lane L of v[j], v[4 + j],
         * v[8 + j], v[12 + j] */
#pragma GCC unroll 4
        for (int j = 0; j < 4; j++) {
            __m512 even01 = _mm512_shuffle_f32x4(v[j], v[4 + j], 0x88);
            __m512 odd01 = _mm512_shuffle_f32x4(v[j], v[4 + j], 0xDD);
            __m512 even23 = _mm512_shuffle_f32x4(v[8 + j], v[12 + j], 0x88);
            __m512 odd23 = _mm512_shuffle_f32x4(v[8 + j], v[12 + j], 0xDD);
            t[j] = _mm512_shuffle_f32x4(even01, even23, 0x88);
            t[8 + j] = _mm512_shuffle_f32x4(even01, even23, 0xDD);
            t[4 + j] = _mm512_shuffle_f32x4(odd01, odd23, 0x88);
            t[12 + j] = _mm512_shuffle_f32x4(odd01, odd23, 0xDD);
        }
#pragma GCC unroll 16
        for (int k = 0; k < n; k++) _mm512_mask_storeu_ps(dst + (size_t)(k0 + k) * ldd, row_mask, t[k]);
    }
}

/* Lanes [0, n) of a mask for _mm256_maskload_ps / _mm256_maskstore_ps. */
MM256_INLINE __m256i mm256_lanes(int n)
{
    return _mm256_cmpgt_epi32(_mm256_set1_epi32(n), _mm256_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7));
}

/* As mm512_tile for columns c0 .. c0 + 15 of the panel (c0 < w): AVX2 has 16 registers,
 * so a panel is done in two halves of 6 x 16. */
MM256_INLINE void mm256_tile(const float *a, const float *p, int K, int w, int ldp, int c0,
                             const float *bias, mm_epilogue epi, float *y, int ldy,
                             const char *pf, int pf_step, const int R)
{
    __m256i m0 = mm256_lanes(w - c0), m1 = mm256_lanes(w - c0 - 8);
    __m256 acc[6][2];
#pragma GCC unroll 6
    for (int r = 0; r < R; r++) acc[r][0] = acc[r][1] = _mm256_setzero_ps();
    p += c0;
    for (int k = 0; k < K; k++, a += R, p += ldp) {
        __m256 p0 = _mm256_maskload_ps(p, m0), p1 = _mm256_maskload_ps(p + 8, m1);
        if (pf) _mm_prefetch(pf + (size_t)k * pf_step, _MM_HINT_T0);
#pragma GCC unroll 6
        for (int r = 0; r < R; r++) {
            __m256 x = _mm256_broadcast_ss(a + r);
            acc[r][0] = _mm256_fmadd_ps(x, p0, acc[r][0]);
            acc[r][1] = _mm256_fmadd_ps(x, p1, acc[r][1]);
        }
    }
    __m256 b0 = bias ? _mm256_maskload_ps(bias + c0, m0) : _mm256_setzero_ps();
    __m256 b1 = bias ? _mm256_maskload_ps(bias + c0 + 8, m1) : _mm256_setzero_ps();
#pragma GCC unroll 6
    for (int r = 0; r < R; r++) {
        float *yr = y + (size_t)r * ldy + c0;
        __m256 y0 = _mm256_add_ps(acc[r][0], b0), y1 = _mm256_add_ps(acc[r][1], b1);
        if (epi == MM_ADD) {
            y0 = _mm256_add_ps(_mm256_maskload_ps(yr, m0), y0);
            y1 = _mm256_add_ps(_mm256_maskload_ps(yr + 8, m1), y1);
        }
        _mm256_maskstore_ps(yr, m0, y0);
        _mm256_maskstore_ps(yr + 8, m1, y1);
    }
}

MM256_TARGET static void mm256_panel(const float *a, const float *p, int K, int w, int ldp,
                                     const float *bias, mm_epilogue epi, float *y, int ldy,
                                     const char *pf, int pf_step, int rows)
{
    /* each half prefetches one of the two lines of a step */
    for (int c0 = 0; c0 < w; c0 += 16, pf = pf ? pf + 64 : NULL) {
        switch (rows) {
#define MM_CASE(R) case R: mm256_tile(a, p, K, w, ldp, c0, bias, epi, y, ldy, pf, pf_step, R); break;
        MM_CASE(1) MM_CASE(2) MM_CASE(3) MM_CASE(4) MM_CASE(5) MM_CASE(6)
#undef MM_CASE
        }
    }
}

/* One tile of `rows` rows against one panel, on the AVX-512 or the AVX2 kernel. */
static void mm_panel(mm_kind kind, const float *a, const float *p, int K, int w, int ldp,
                     const float *bias, mm_epilogue epi, float *y, int ldy, const char *pf,
                     int pf_step, int rows)
{
    if (kind == MM_AVX512)
        mm512_panel(a, p, K, w, ldp, bias, epi, y, ldy, pf, pf_step, rows);
    else
        mm256_panel(a, p, K, w, ldp, bias, epi, y, ldy, pf, pf_step, rows);
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

typedef struct linear_job {
    const float *x, *w, *b;
    const float *xp;    /* x in row tiles (NULL for sgemm)                                */
    float *y, *residual;
    int rows, n_in, n_out, act, n_tiles;
    int ldy;            /* y's row stride                                                */
    int group;          /* panels per task                                               */
    mm_kind kind;
    const clip_norm *ln;   /* LayerNorm to apply to x's rows as they are re-laid, or NULL */
} linear_job;

/* Tile t of n covers rows [t * rows / n, (t + 1) * rows / n): sizes differ by at most one. */
static int tile_start(int t, int n_tiles, int rows)
{
    return (int)((int64_t)t * rows / n_tiles);
}

/* Rows [r0, r1) of x (row stride ldx) re-laid as [n_in][r1 - r0] at xp + r0 * n_in, as
 * LayerNorm(x) when ln is given: the values layernorm_row writes, without a pass through
 * a row-major copy. */
static void pack_tile(mm_kind kind, const float *x, size_t ldx, int n_in, int r0, int r1,
                      const clip_norm *ln, float *xp)
{
    int R = r1 - r0;
    float *dst = xp + (size_t)r0 * n_in;
    float mean[16], rstd[16];
    x += (size_t)r0 * ldx;
#if MM_X86
    if (kind == MM_AVX512 && R <= 16) {
        for (int r = 0; ln && r < R; r++)
            layernorm_stats(x + (size_t)r * ldx, n_in, ln->eps, &mean[r], &rstd[r]);
        mm512_pack_tile(x, ldx, n_in, R, ln, mean, rstd, dst, (size_t)R);
        return;
    }
#else
    (void)kind;
#endif
    for (int r = 0; r < R; r++) {
        const float *src = x + (size_t)r * ldx;
        if (ln) {
            layernorm_stats(src, n_in, ln->eps, &mean[0], &rstd[0]);
            for (int k = 0; k < n_in; k++)
                dst[(size_t)k * R + r] = (src[k] - mean[0]) * rstd[0] * ln->w[k] + ln->b[k];
        } else {
            for (int k = 0; k < n_in; k++) dst[(size_t)k * R + r] = src[k];
        }
    }
}

/* All `rows` rows of x in n_tiles row tiles, on this thread. */
static void pack_rows(mm_kind kind, const float *x, size_t ldx, int n_in, int rows,
                      int n_tiles, float *xp)
{
    for (int t = 0; t < n_tiles; t++)
        pack_tile(kind, x, ldx, n_in, tile_start(t, n_tiles, rows),
                  tile_start(t + 1, n_tiles, rows), NULL, xp);
}

static void pack_task(void *arg, int task, int thread)
{
    (void)thread;
    const linear_job *j = arg;
    int r0 = tile_start(task, j->n_tiles, j->rows), r1 = tile_start(task + 1, j->n_tiles, j->rows);
    pack_tile(j->kind, j->x, (size_t)j->n_in, j->n_in, r0, r1, j->ln, (float *)j->xp);
}

/* How far ahead of its reads a tile prefetches the weights it streams, in steps of one
 * input column: about 4 KB, enough to cover a trip to memory at the rate a tile of few
 * rows consumes them. */
#define MM_PREFETCH_STEPS 32

/* One panel of 32 output columns for every row. The weights come from memory once, as
 * the first tile streams them (prefetching ahead in the panel, which runs on into the
 * next one); the other tiles find them in cache. While the second tile runs, it prefetches
 * the next panel, so with several tiles the memory traffic overlaps arithmetic. */
static void linear_panel(const linear_job *j, int panel, bool prefetch_next)
{
    int o0 = panel * CLIP_PANEL, K = j->n_in, N = j->n_out, ldy = j->ldy;
    int w = N - o0 < CLIP_PANEL ? N - o0 : CLIP_PANEL;
    const float *p = j->w + (size_t)o0 * K, *bias = j->b ? j->b + o0 : NULL;
    /* the AVX-512 kernel applies QuickGELU (CLIP's usual activation) to its registers; both
     * x86 kernels add into a residual stream themselves, leaving y alone */
    mm_epilogue epi = MM_STORE;
    float *out = j->y;
    if (j->kind == MM_AVX512 && j->act == CLIP_ACT_QUICK_GELU) {
        epi = MM_GELU;
    } else if (j->kind != MM_BLAS && j->residual && j->act < 0) {
        epi = MM_ADD;
        out = j->residual;
    }
    if (j->kind == MM_BLAS) {
        cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasNoTrans, j->rows, w, K, 1.0f, j->x, K, p,
                    w, 0.0f, j->y + o0, ldy);
        if (bias)
            for (int r = 0; r < j->rows; r++) add_into(j->y + (size_t)r * ldy + o0, bias, w);
    }
#if MM_X86
    for (int t = 0; j->kind != MM_BLAS && t < j->n_tiles; t++) {
        int r0 = tile_start(t, j->n_tiles, j->rows), r1 = tile_start(t + 1, j->n_tiles, j->rows);
        const float *a = j->xp + (size_t)r0 * K;
        float *y = out + (size_t)r0 * ldy + o0;
        const char *pf = NULL;
        int pf_step = 0;
        if (t == 0) {
            pf = (const char *)(p + (size_t)MM_PREFETCH_STEPS * w);
            pf_step = w * (int)sizeof(float);
        } else if (t == 1 && prefetch_next) {
            pf = (const char *)(p + (size_t)w * K);
            pf_step = CLIP_PANEL * (int)sizeof(float);
        }
        mm_panel(j->kind, a, p, K, w, w, bias, epi, y, ldy, pf, pf_step, r1 - r0);
    }
#else
    (void)prefetch_next;
#endif
    bool act = epi == MM_STORE && j->act >= 0, add = epi != MM_ADD && j->residual;
    for (int r = 0; (act || add) && r < j->rows; r++) {
        float *y = j->y + (size_t)r * ldy + o0;
        if (act) activate(y, w, j->act);
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
 * the way when ln is given), or for sgemm, normalized rows in their own layout. Only the
 * transformer passes ln, and it has reserved the buffer; without room for it otherwise,
 * sgemm reads x in place. */
static void linear(clip_ctx *c, const float *x, const clip_norm *ln, int rows, int n_in,
                   const float *w, const float *b, int n_out, float *y, int act,
                   float *residual)
{
    int n_panels = (n_out + CLIP_PANEL - 1) / CLIP_PANEL;
    int group = n_panels / (4 * c->n_threads);
    linear_job j = {x, w, b, NULL, y, residual, rows, n_in, n_out, act, 0, n_out,
                    group > 1 ? group : 1, c->mm, ln};
    float *xp = ln || j.kind != MM_BLAS
                    ? clip_ctx_scratch(c, CLIP_SCRATCH_PACK, (size_t)rows * n_in) : NULL;
    if (!xp) {
        j.kind = MM_BLAS;
    } else if (j.kind == MM_BLAS) {
        clip_layernorm(c, x, (size_t)n_in, xp, (size_t)n_in, rows, n_in, ln->w, ln->b, ln->eps);
        j.x = xp;
        j.ln = NULL;
    } else {
        int R = mm_tile_rows[j.kind];
        j.xp = xp;
        j.n_tiles = (rows + R - 1) / R;
        /* below ~64K floats a dispatch costs more than the copy */
        if ((size_t)rows * n_in >= 65536)
            parallel(c, pack_task, &j, j.n_tiles);
        else
            for (int t = 0; t < j.n_tiles; t++) pack_task(&j, t, 0);
    }
    parallel(c, linear_task, &j, (n_panels + j.group - 1) / j.group);
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
    int chunk = (rows + c->n_threads - 1) / c->n_threads;
    if (chunk < 1) chunk = 1;
    ln_job j = {x, w, b, y, x_stride, y_stride, rows, width, chunk, eps};
    parallel(c, layernorm_task, &j, (rows + chunk - 1) / chunk);
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
    mm_kind kind;
} attn_job;

/* Per thread: the scores and their re-laid copy (tokens x tokens each), and q and k of
 * one head re-laid for the matmul kernels (tokens x head width each). */
static size_t attn_scratch_floats(int tokens, int width, int heads)
{
    size_t T = (size_t)tokens, d = (size_t)(width / heads);
    return 2 * T * T + 2 * T * d;
}

/* The first n of a row of len scores, softmaxed as torch does in float (max subtracted,
 * sum of the exps, multiplied by its inverse); the masked rest set to 0. */
static void softmax_row(float *row, int n, int len, mm_kind kind)
{
#if MM_X86
    if (kind == MM_AVX512) {
        mm512_softmax_row(row, n, len);
        return;
    }
#else
    (void)kind;
#endif
    float mx = row[0];
    for (int i = 1; i < n; i++) mx = row[i] > mx ? row[i] : mx;
    float sum = 0;
    for (int i = 0; i < n; i++) {
        row[i] = expf(row[i] - mx);
        sum += row[i];
    }
    float inv = 1.0f / sum;
    for (int i = 0; i < n; i++) row[i] *= inv;
    for (int i = n; i < len; i++) row[i] = 0.0f;
}

/* dst[i * rows + r] = x[r * ldx + i]: the first n columns of x's rows as a [n][rows] matrix. */
static void transpose(mm_kind kind, const float *x, size_t ldx, int rows, int n, float *dst)
{
#if MM_X86
    if (kind == MM_AVX512) {
        for (int r0 = 0; r0 < rows; r0 += 16)
            mm512_pack_tile(x + (size_t)r0 * ldx, ldx, n, rows - r0 < 16 ? rows - r0 : 16, NULL,
                            NULL, NULL, dst + r0, (size_t)rows);
        return;
    }
#else
    (void)kind;
#endif
    for (int r = 0; r < rows; r++)
        for (int i = 0; i < n; i++) dst[(size_t)i * rows + r] = x[r * ldx + i];
}

/* y[rows, n] (row stride ldy) = a . p for a [K][n] matrix p (row stride ldp), with a
 * already in row tiles: the kernels called directly, for the small products inside one
 * attention task. */
static void small_matmul(mm_kind kind, const float *a, int rows, int K, const float *p,
                         int ldp, int n, float *y, int ldy)
{
#if MM_X86
    int R = mm_tile_rows[kind], n_tiles = (rows + R - 1) / R;
    for (int c0 = 0; c0 < n; c0 += CLIP_PANEL) {
        int w = n - c0 < CLIP_PANEL ? n - c0 : CLIP_PANEL;
        for (int t = 0; t < n_tiles; t++) {
            int r0 = tile_start(t, n_tiles, rows), r1 = tile_start(t + 1, n_tiles, rows);
            mm_panel(kind, a + (size_t)r0 * K, p + c0, K, w, ldp, NULL, MM_STORE,
                     y + (size_t)r0 * ldy + c0, ldy, NULL, 0, r1 - r0);
        }
    }
#else
    (void)kind, (void)a, (void)rows, (void)K, (void)p, (void)ldp, (void)n, (void)y, (void)ldy;
#endif
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
    if (j->kind == MM_BLAS) {
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
    /* for the kernels: q (divided) and the scores in row tiles, k^T as a [d][T] matrix;
     * v is read in place */
    float *sp = s + (size_t)T * T, *qp = sp + (size_t)T * T, *kt = qp + (size_t)T * d;
    int R = mm_tile_rows[j->kind], n_tiles = (nq + R - 1) / R;
    pack_rows(j->kind, q, ld, d, nq, n_tiles, qp);
    for (size_t i = 0; i < (size_t)nq * d; i++) qp[i] /= scale;
    transpose(j->kind, k, ld, T, d, kt);
    small_matmul(j->kind, qp, nq, d, kt, T, T, s, T);
    for (int t = 0; t < nq; t++)
        softmax_row(s + (size_t)t * T, j->causal ? q0 + t + 1 : T, T, j->kind);
    pack_rows(j->kind, s, (size_t)T, T, nq, n_tiles, sp);
    small_matmul(j->kind, sp, nq, T, v, (int)ld, d, out, W);
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
    for (int l = 0; l < t->n_layers; l++) {
        const clip_layer *L = &t->layers[l];
        clip_norm ln1 = {L->ln1_w, L->ln1_b, t->ln_eps}, ln2 = {L->ln2_w, L->ln2_b, t->ln_eps};
        /* the last block needs keys and values everywhere, everything else only where the
         * caller reads the result */
        bool last = pick && l == t->n_layers - 1;
        clip_linear_ln(c, x, rows, W, &ln1, L->qkv_w, L->qkv_b, 3 * W, qkv, -1);
        attn_job aj = {qkv, att, last ? pick : NULL, c->buf[CLIP_SCRATCH_SCORES],
                       c->attn_per_thread, tokens, W, t->heads, causal, c->mm};
        parallel(c, attn_task, &aj, batch * t->heads);
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
