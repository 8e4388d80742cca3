/* kernels.h -- the SIMD kernels (kernels.c) as clip.c's layers call them.
 *
 * A matmul kernel multiplies a tile of rows, re-laid so that each input column's row
 * values sit together, by one panel of up to 32 weight columns (clip_internal.h's panel
 * layout), keeping the tile's sums in vector registers. clip.c drives them: it re-lays the
 * input (clip_kernel_pack), hands panels to threads, and calls clip_kernel_panel per tile.
 * Nothing here allocates, threads, or knows a model. */
#ifndef CLIP_KERNELS_H
#define CLIP_KERNELS_H

#include "clip_internal.h"

#include <stddef.h>
#include <stdint.h>

/* The kernels are x86-64 intrinsics; on other machines and compilers every linear is an
 * sgemm per weight panel, and only the scalar re-layout below is built. */
#if defined(__x86_64__) && (defined(__GNUC__) || defined(__clang__))
#define CLIP_KERNELS_X86 1
#else
#define CLIP_KERNELS_X86 0
#endif

/* The matmul kernel a context runs (clip_ctx_params.matmul). */
typedef enum clip_kernel {
    CLIP_KERNEL_REF,      /* not a kernel of this file: every layer as ref.c's plain loops */
    CLIP_KERNEL_BLAS,     /* one cblas_sgemm per weight panel; any CPU                     */
    CLIP_KERNEL_AVX2,     /* AVX2 + FMA: tiles of up to 6 rows x 16 columns                */
    CLIP_KERNEL_AVX512,   /* AVX-512F: tiles of up to 12 rows x 32 columns                 */
} clip_kernel;

/* The most rows of one tile, which is also how many rows the input is re-laid by. */
static inline int clip_kernel_tile_rows(clip_kernel kind)
{
    return kind == CLIP_KERNEL_AVX512 ? 12 : kind == CLIP_KERNEL_AVX2 ? 6 : 0;
}

/* Rows are split into n_tiles tiles as evenly as can be: tile t covers rows
 * [t * rows / n_tiles, (t + 1) * rows / n_tiles), so sizes differ by at most one. */
static inline int clip_tile_start(int t, int n_tiles, int rows)
{
    return (int)((int64_t)t * rows / n_tiles);
}

/* Rows 0 .. R-1 (R <= 16) of x (row stride ldx), n columns each, transposed: column k of
 * the rows goes to dst + k * ldd (ldd = R makes the [n][R] tile the kernels read). With
 * ln, each row r is first normalized as LayerNorm does, (x - mean[r]) * rstd[r] * w + b,
 * with the statistics the caller computed. */
void clip_kernel_pack(clip_kernel kind, const float *x, size_t ldx, int n, int R,
                      const clip_norm *ln, const float *mean, const float *rstd, float *dst,
                      size_t ldd);

/* All `rows` rows of x (row stride ldx, n_in columns) in n_tiles row tiles, tile after
 * tile: the layout clip_kernel_panel and clip_kernel_matmul read. */
void clip_kernel_pack_rows(clip_kernel kind, const float *x, size_t ldx, int n_in, int rows,
                           int n_tiles, float *xp);

/* dst[i * rows + r] = x[r * ldx + i]: the first n columns of x's rows as a [n][rows]
 * matrix. */
void clip_kernel_transpose(clip_kernel kind, const float *x, size_t ldx, int rows, int n,
                           float *dst);

#if CLIP_KERNELS_X86
/* What a kernel does with a finished tile of sums plus bias: store it, store its
 * QuickGELU (AVX-512 only), or add it into y (a residual stream). */
typedef enum clip_epilogue { CLIP_EPI_STORE, CLIP_EPI_GELU, CLIP_EPI_ADD } clip_epilogue;

/* y[r * ldy + j] = bias[j] + sum over k of a[k * rows + r] * p[k * ldp + j], for
 * r < rows <= clip_kernel_tile_rows(kind) and j < w <= 32: one tile of re-laid rows `a`
 * against one panel of width w (ldp = w for weights), finished as `epi` says (bias may be
 * NULL). When pf is not NULL, each of the K steps also prefetches the cache lines at
 * pf + k * pf_step (the next stretch of weights to stream). AVX2 or AVX-512 only. */
void clip_kernel_panel(clip_kernel kind, const float *a, const float *p, int K, int w,
                       int ldp, const float *bias, clip_epilogue epi, float *y, int ldy,
                       const char *pf, int pf_step, int rows);

/* y[rows, n] (row stride ldy) = a . p for a [K][n] matrix p (row stride ldp), with a
 * already in row tiles (clip_kernel_pack_rows): the kernels called directly, for the small
 * products inside one attention task. */
void clip_kernel_matmul(clip_kernel kind, const float *a, int rows, int K, const float *p,
                        int ldp, int n, float *y, int ldy);

/* The first n of a row of len scores softmaxed, sixteen lanes at a time, with the values
 * of the scalar softmax to about 1 ulp; the masked rest set to 0. AVX-512 only. */
void clip_kernel_softmax_row(float *row, int n, int len);
#endif

#endif
