/* write.c -- the .clip file (docs/clip-format.md): the 256-byte header of hyperparameters,
 * the tokenizer section, the tensor table, then every tensor of the plan streamed from the
 * source in chunks: concatenated, transposed and laid out in panels as the plan says, and
 * rounded to f16 (to nearest, ties to even) when asked. Written to OUT.tmp, renamed into
 * place only when complete; a failure leaves no file behind.
 *
 * The only room that knows the byte layout of the output, and the only one that includes
 * the engine's clip_internal.h, for CLIP_PANEL. It must not choose tensors or names (the
 * plan does) nor know the source formats (it reads elements through tensor_data and elem).
 * Start from write_all, at the end.
 */
#include "convert.h"
#include "clip_internal.h"   /* CLIP_PANEL: the format's panel width */

#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#define CHUNK_ELEMS     (1u << 16)

/* f32 -> f16, round to nearest, ties to even; overflow goes to inf, NaN stays NaN (quiet,
 * top payload bits kept), results below the f16 normal range become subnormals. */
static uint16_t f32_to_f16(float f)
{
    uint32_t x = f32_bits(f);
    uint16_t sign = (uint16_t)((x >> 16) & 0x8000);
    uint32_t ax = x & 0x7fffffffu;
    if (ax >= 0x7f800000u)
        return sign | (ax > 0x7f800000u ? (uint16_t)(0x7e00 | ((ax >> 13) & 0x3ff)) : 0x7c00);
    if (ax >= 0x477ff000u) return sign | 0x7c00;   /* >= 65520 rounds past 65504 */
    if (ax >= 0x38800000u) {                       /* stays normal: rebias 127 -> 15 */
        uint32_t h = (ax - 0x38000000u) >> 13, rem = ax & 0x1fff;
        if (rem > 0x1000 || (rem == 0x1000 && (h & 1))) h++;
        return sign | (uint16_t)h;
    }
    /* Subnormal: value = m * 2^(e-150); in units of 2^-24 that is m >> (126 - e). An f32
     * subnormal (e = 0) is far below half the smallest f16 subnormal. */
    int e = (int)(ax >> 23);
    int shift = 126 - e;
    if (e == 0 || shift > 24) return sign;
    uint32_t m = (ax & 0x7fffff) | 0x800000;
    uint32_t h = m >> shift, rem = m & ((1u << shift) - 1), half = 1u << (shift - 1);
    if (rem > half || (rem == half && (h & 1))) h++;   /* may carry into the first normal */
    return sign | (uint16_t)h;
}

/* The row-major [rows, cols] index of element j of a tensor written in panels of CLIP_PANEL
 * (32) rows: panel p holds rows 32p .. 32p + w - 1 (w = 32, or the rows left), laid out
 * [cols][w]; the inverse of clip_panel_index. */
static uint64_t unpanel(uint64_t j, uint64_t rows, uint64_t cols)
{
    uint64_t r0 = j / (CLIP_PANEL * cols) * CLIP_PANEL, in = j - r0 * cols;
    uint64_t w = rows - r0 < CLIP_PANEL ? rows - r0 : CLIP_PANEL;
    return (r0 + in % w) * cols + in / w;
}

static void put32(uint8_t *p, uint32_t v) { for (int i = 0; i < 4; i++) p[i] = (uint8_t)(v >> (8 * i)); }
static void put64(uint8_t *p, uint64_t v) { for (int i = 0; i < 8; i++) p[i] = (uint8_t)(v >> (8 * i)); }
static void putf(uint8_t *p, float f) { put32(p, f32_bits(f)); }

static void buf_u32(clip_buf *b, uint32_t v)
{
    uint8_t x[4];
    put32(x, v);
    clip_buf_append(b, x, 4);
}

static int build_tokenizer_section(conv *cv, clip_buf *b)
{
    const tokenizer *t = &cv->tok;
    buf_u32(b, t->n);
    buf_u32(b, t->n_merges);
    buf_u32(b, t->sot);
    buf_u32(b, t->eot);
    for (uint32_t i = 0; i < t->n; i++) {
        uint8_t l[2] = {(uint8_t)t->len[i], (uint8_t)(t->len[i] >> 8)};
        clip_buf_append(b, l, 2);
        clip_buf_append(b, t->arena + t->off[i], t->len[i]);
    }
    for (size_t i = 0; i < 3 * (size_t)t->n_merges; i++) buf_u32(b, t->merges[i]);
    return b->oom ? fail(cv, "out of memory building the tokenizer section") : 0;
}

static void write_header(const conv *cv, uint8_t h[256], uint64_t tok_off, uint64_t tok_size,
                         uint64_t tab_off, uint64_t file_size)
{
    const hparams *hp = &cv->hp;
    memset(h, 0, 256);
    memcpy(h, "CLIPMODL", 8);
    put32(h + 8, 2);
    put32(h + 12, 256);
    memcpy(h + 16, hp->name, strnlen(hp->name, 63));
    uint32_t u[] = {hp->image_size, hp->patch, hp->v_width, hp->v_layers, hp->v_heads, hp->v_mlp};
    for (int i = 0; i < 6; i++) put32(h + 80 + 4 * i, u[i]);
    putf(h + 104, hp->v_eps);
    uint32_t v[] = {hp->t_width, hp->t_layers, hp->t_heads, hp->t_mlp};
    for (int i = 0; i < 4; i++) put32(h + 108 + 4 * i, v[i]);
    putf(h + 124, hp->t_eps);
    uint32_t w[] = {hp->context, hp->vocab, hp->embed, hp->act, hp->resize, hp->crop};
    for (int i = 0; i < 6; i++) put32(h + 128 + 4 * i, w[i]);
    for (int i = 0; i < 3; i++) {
        putf(h + 152 + 4 * i, hp->mean[i]);
        putf(h + 164 + 4 * i, hp->std[i]);
    }
    put64(h + 176, tok_off);
    put64(h + 184, tok_size);
    put64(h + 192, tab_off);
    put32(h + 200, (uint32_t)cv->not);
    put64(h + 208, file_size);
}

/* Output values [start, start + n) of tensor o as f32. */
static int fill(conv *cv, otensor *o, uint64_t start, size_t n, float *out)
{
    const uint8_t *src[3];
    for (int k = 0; k < o->nparts; k++)
        if (!(src[k] = tensor_data(cv, o->parts[k]))) return -1;
    if (o->transpose) {
        /* source [R, C] -> ours [C, R]: our element j is source (j % R, j / R) */
        uint64_t R = (uint64_t)o->parts[0]->shape[0], C = (uint64_t)o->parts[0]->shape[1];
        for (size_t i = 0; i < n; i++) {
            uint64_t j = o->panels ? unpanel(start + i, C, R) : start + i;
            out[i] = elem(src[0], o->parts[0]->dtype, (j % R) * C + j / R);
        }
        return 0;
    }
    uint64_t part_n = o->parts[0]->numel;
    for (size_t i = 0; i < n; i++) {
        uint64_t j = o->panels ? unpanel(start + i, o->shape[0], o->shape[1]) : start + i;
        uint64_t k = j / part_n;
        out[i] = elem(src[k], o->parts[k]->dtype, j - k * part_n);
    }
    return 0;
}

int write_all(conv *cv, const char *out_path, uint64_t *bytes, uint64_t *params)
{
    clip_buf tokb = {0};
    if (build_tokenizer_section(cv, &tokb) != 0) { clip_buf_free(&tokb); return -1; }
    uint64_t tok_off = 256, tok_size = tokb.len;
    uint64_t tab_off = (tok_off + tok_size + 7) & ~UINT64_C(7);
    uint64_t at = (tab_off + 96 * (uint64_t)cv->not + 63) & ~UINT64_C(63);
    *params = 0;
    for (size_t i = 0; i < cv->not; i++) {
        cv->ot[i].offset = at;
        at = (at + cv->ot[i].size + 63) & ~UINT64_C(63);
        *params += cv->ot[i].numel;
    }
    /* The last tensor ends the file; no trailing padding. */
    uint64_t file_size = cv->ot[cv->not - 1].offset + cv->ot[cv->not - 1].size;

    char tmp[PATH_MAX];
    if (snprintf(tmp, sizeof tmp, "%s.tmp", out_path) >= (int)sizeof tmp) {
        clip_buf_free(&tokb);
        return fail(cv, "output path too long");
    }
    FILE *f = fopen(tmp, "wb");
    if (!f) {
        clip_buf_free(&tokb);
        return fail(cv, "cannot create %s: %s", tmp, strerror(errno));
    }
    char *iobuf = malloc(1 << 20);
    if (iobuf) setvbuf(f, iobuf, _IOFBF, 1 << 20);
    uint8_t h[256];
    write_header(cv, h, tok_off, tok_size, tab_off, file_size);
    uint64_t pos = 0;
    int rc = 0;
    float *chunk = NULL;
    uint16_t *half = NULL;
    static const uint8_t zeros[64];
#define EMIT(p, n) do { if (fwrite((p), 1, (n), f) != (size_t)(n)) { rc = -1; goto io; } pos += (n); } while (0)
    EMIT(h, 256);
    EMIT(tokb.data, tokb.len);
    EMIT(zeros, tab_off - pos);
    for (size_t i = 0; i < cv->not; i++) {
        const otensor *o = &cv->ot[i];
        uint8_t e[96] = {0};
        memcpy(e, o->name, strnlen(o->name, 55));
        put32(e + 56, o->dtype);
        put32(e + 60, (uint32_t)o->ndim);
        for (int k = 0; k < 4; k++) put32(e + 64 + 4 * k, o->shape[k]);
        put64(e + 80, o->offset);
        put64(e + 88, o->size);
        EMIT(e, 96);
    }
    chunk = malloc(CHUNK_ELEMS * sizeof *chunk);
    half = malloc(CHUNK_ELEMS * sizeof *half);
    if (!chunk || !half) { rc = fail(cv, "out of memory"); goto done; }
    int last_pct = -1;
    for (size_t i = 0; i < cv->not; i++) {
        otensor *o = &cv->ot[i];
        EMIT(zeros, o->offset - pos);
        for (uint64_t s = 0; s < o->numel; s += CHUNK_ELEMS) {
            size_t n = o->numel - s < CHUNK_ELEMS ? (size_t)(o->numel - s) : CHUNK_ELEMS;
            if (fill(cv, o, s, n, chunk) != 0) { rc = -1; goto done; }
            if (o->dtype) {
                uint8_t *b = (uint8_t *)half;
                for (size_t k = 0; k < n; k++) {
                    uint16_t v = f32_to_f16(chunk[k]);
                    b[2 * k] = (uint8_t)v;
                    b[2 * k + 1] = (uint8_t)(v >> 8);
                }
                EMIT(b, 2 * n);
            } else {
                uint8_t *b = (uint8_t *)chunk;   /* in place: byte k*4 is read before written */
                for (size_t k = 0; k < n; k++) put32(b + 4 * k, f32_bits(chunk[k]));
                EMIT(b, 4 * n);
            }
        }
        release_entries(cv);
        int pct = (int)(100 * pos / file_size);
        if (pct / 10 != last_pct / 10 || i + 1 == cv->not) {
            fprintf(stderr, "clip-convert: writing %3d%% (%s, %.1f MB)\n", pct, o->name, pos / 1e6);
            last_pct = pct;
        }
    }
io:
    if (rc) fail(cv, "cannot write %s: %s", tmp, strerror(errno));
done:
#undef EMIT
    free(chunk);
    free(half);
    clip_buf_free(&tokb);
    if (fclose(f) != 0 && rc == 0) rc = fail(cv, "cannot write %s: %s", tmp, strerror(errno));
    free(iobuf);
    if (rc == 0 && pos != file_size) rc = fail(cv, "internal error: wrote %llu of %llu bytes",
                                               (unsigned long long)pos, (unsigned long long)file_size);
    if (rc == 0 && rename(tmp, out_path) != 0)
        rc = fail(cv, "cannot rename %s to %s: %s", tmp, out_path, strerror(errno));
    if (rc) unlink(tmp);
    *bytes = pos;
    return rc;
}
