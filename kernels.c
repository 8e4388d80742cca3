/* kernels.c -- the matmul kernels, the re-layout they read, and attention's SIMD softmax.
 *
 * New to the code? Read ref.c first. It computes the same layers as plain loops, one
 * multiply-add at a time; everything here is that arithmetic reorganised for speed (the
 * sums split into tiles held in vector registers), and the tests hold every kernel to it.
 *
 * Every linear is y = x . w^T over weights that are already in panels of 32 output columns
 * (clip_internal.h), so a kernel streams each weight once, in order, and keeps a tile of
 * outputs in registers: per input column it loads the panel's 32 weights and multiplies
 * them by each row of the tile. The input is re-laid once per call in tiles of rows
 * ([in][rows] per tile), so each step reads its row values from one pointer.
 *
 * Three kernels, chosen per context (clip_ctx_new): AVX-512 (tiles of up to 12 rows x 32
 * columns: 24 of the 32 vector registers hold sums), AVX2+FMA (up to 6 rows x 16 columns,
 * 12 of 16 registers), and elsewhere one cblas_sgemm per panel (clip.c). The two x86
 * kernels are compiled for their own targets only and picked at run time, so the build
 * stays baseline x86-64. Measured on ViT-B/32's shapes against OpenBLAS's own sgemm (its
 * Haswell kernels, one thread, same weights): the AVX-512 kernel 180-210 GFLOP/s from 7 to
 * 400 rows where sgemm reaches 28-100, most of the gain being the copy sgemm makes of the
 * weights on every call.
 *
 * clip.c drives these: it splits a linear's panels between threads, re-lays the input
 * (normalizing it on the way for clip_linear_ln) and calls one tile at a time. This file
 * knows no model, no threads and no memory of its own: every buffer is the caller's.
 */

#include "kernels.h"

#include <stdbool.h>

#if CLIP_KERNELS_X86
#include <immintrin.h>

/* Each kernel is compiled for its own target and picked at run time (clip_ctx_new). */
#define MM512_TARGET __attribute__((target("avx512f")))
#define MM512_INLINE static inline __attribute__((always_inline)) MM512_TARGET
#define MM256_TARGET __attribute__((target("avx2,fma")))
#define MM256_INLINE static inline __attribute__((always_inline)) MM256_TARGET

/* =======================================================================================
 * AVX-512: e^x, the 12 x 32 tile, softmax, the 16 x 16 transpose
 * ===================================================================================== */

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
                             const float *bias, clip_epilogue epi, float *y, int ldy,
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
        if (epi == CLIP_EPI_GELU) {
            y0 = mm512_quick_gelu(y0);
            y1 = mm512_quick_gelu(y1);
        } else if (epi == CLIP_EPI_ADD) {
            y0 = _mm512_add_ps(_mm512_maskz_loadu_ps(m0, y + (size_t)r * ldy), y0);
            y1 = _mm512_add_ps(_mm512_maskz_loadu_ps(m1, y + (size_t)r * ldy + 16), y1);
        }
        _mm512_mask_storeu_ps(y + (size_t)r * ldy, m0, y0);
        _mm512_mask_storeu_ps(y + (size_t)r * ldy + 16, m1, y1);
    }
}

/* A softmax row as clip.c's scalar softmax_row computes it, sixteen lanes at a time with
 * the exp above: attention's exps cost more than its two small matrix products when done
 * one by one. */
MM512_TARGET void clip_kernel_softmax_row(float *row, int n, int len)
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
                                     const float *bias, clip_epilogue epi, float *y, int ldy,
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

/* Rows 0 .. R-1 (R <= 16) of x (row stride ldx), each normalized as clip_kernel_pack's
 * scalar loop does when ln is given, transposed: column k of the rows goes to dst + k * ldd (ldd = R makes the
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

/* =======================================================================================
 * AVX2 + FMA: the 6 x 16 tile, twice per panel
 * ===================================================================================== */

/* Lanes [0, n) of a mask for _mm256_maskload_ps / _mm256_maskstore_ps. */
MM256_INLINE __m256i mm256_lanes(int n)
{
    return _mm256_cmpgt_epi32(_mm256_set1_epi32(n), _mm256_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7));
}

/* As mm512_tile for columns c0 .. c0 + 15 of the panel (c0 < w): AVX2 has 16 registers,
 * so a panel is done in two halves of 6 x 16. */
MM256_INLINE void mm256_tile(const float *a, const float *p, int K, int w, int ldp, int c0,
                             const float *bias, clip_epilogue epi, float *y, int ldy,
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
        if (epi == CLIP_EPI_ADD) {
            y0 = _mm256_add_ps(_mm256_maskload_ps(yr, m0), y0);
            y1 = _mm256_add_ps(_mm256_maskload_ps(yr + 8, m1), y1);
        }
        _mm256_maskstore_ps(yr, m0, y0);
        _mm256_maskstore_ps(yr + 8, m1, y1);
    }
}

MM256_TARGET static void mm256_panel(const float *a, const float *p, int K, int w, int ldp,
                                     const float *bias, clip_epilogue epi, float *y, int ldy,
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

/* =======================================================================================
 * The kernels as clip.c calls them
 * ===================================================================================== */

void clip_kernel_panel(clip_kernel kind, const float *a, const float *p, int K, int w,
                       int ldp, const float *bias, clip_epilogue epi, float *y, int ldy,
                       const char *pf, int pf_step, int rows)
{
    if (kind == CLIP_KERNEL_AVX512)
        mm512_panel(a, p, K, w, ldp, bias, epi, y, ldy, pf, pf_step, rows);
    else
        mm256_panel(a, p, K, w, ldp, bias, epi, y, ldy, pf, pf_step, rows);
}

void clip_kernel_matmul(clip_kernel kind, const float *a, int rows, int K, const float *p,
                        int ldp, int n, float *y, int ldy)
{
    int R = clip_kernel_tile_rows(kind), n_tiles = (rows + R - 1) / R;
    for (int c0 = 0; c0 < n; c0 += CLIP_PANEL) {
        int w = n - c0 < CLIP_PANEL ? n - c0 : CLIP_PANEL;
        for (int t = 0; t < n_tiles; t++) {
            int r0 = clip_tile_start(t, n_tiles, rows), r1 = clip_tile_start(t + 1, n_tiles, rows);
            clip_kernel_panel(kind, a + (size_t)r0 * K, p + c0, K, w, ldp, NULL, CLIP_EPI_STORE,
                              y + (size_t)r0 * ldy + c0, ldy, NULL, 0, r1 - r0);
        }
    }
}
#endif /* CLIP_KERNELS_X86 */

/* =======================================================================================
 * Re-layout, on every machine (the scalar loops serve the AVX2 kernel)
 * ===================================================================================== */

void clip_kernel_pack(clip_kernel kind, const float *x, size_t ldx, int n, int R,
                      const clip_norm *ln, const float *mean, const float *rstd, float *dst,
                      size_t ldd)
{
#if CLIP_KERNELS_X86
    if (kind == CLIP_KERNEL_AVX512) {
        mm512_pack_tile(x, ldx, n, R, ln, mean, rstd, dst, ldd);
        return;
    }
#else
    (void)kind;
#endif
    for (int r = 0; r < R; r++) {
        const float *src = x + (size_t)r * ldx;
        if (ln) {
            for (int k = 0; k < n; k++)
                dst[(size_t)k * ldd + r] = (src[k] - mean[r]) * rstd[r] * ln->w[k] + ln->b[k];
        } else {
            for (int k = 0; k < n; k++) dst[(size_t)k * ldd + r] = src[k];
        }
    }
}

void clip_kernel_pack_rows(clip_kernel kind, const float *x, size_t ldx, int n_in, int rows,
                           int n_tiles, float *xp)
{
    for (int t = 0; t < n_tiles; t++) {
        int r0 = clip_tile_start(t, n_tiles, rows), r1 = clip_tile_start(t + 1, n_tiles, rows);
        clip_kernel_pack(kind, x + (size_t)r0 * ldx, ldx, n_in, r1 - r0, NULL, NULL, NULL,
                         xp + (size_t)r0 * n_in, (size_t)(r1 - r0));
    }
}

/* In blocks of 16 rows, each one clip_kernel_pack into its columns of dst. */
void clip_kernel_transpose(clip_kernel kind, const float *x, size_t ldx, int rows, int n,
                           float *dst)
{
    for (int r0 = 0; r0 < rows; r0 += 16)
        clip_kernel_pack(kind, x + (size_t)r0 * ldx, ldx, n, rows - r0 < 16 ? rows - r0 : 16,
                         NULL, NULL, NULL, dst + r0, (size_t)rows);
}
