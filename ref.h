/* ref.h -- the reference path (ref.c): CLIP's layers as plain loops in float.
 *
 * clip.c runs these instead of its fast layers when the context's kernel is "ref"
 * (clip_ctx_params.matmul), with the same arguments and the same results to within float
 * rounding. Two of them, the activations and the softmax, are also the fast path's own
 * scalar code: it has nothing faster for them on most kernels. */
#ifndef CLIP_REF_H
#define CLIP_REF_H

#include "clip_internal.h"

/* clip_linear (clip_internal.h) one row at a time: y = x . w^T + b, the activation when
 * act >= 0, then residual += y when residual is not NULL. */
void clip_ref_linear(const float *x, int rows, int n_in, const float *w, const float *b,
                     int n_out, float *y, int act, float *residual);

/* clip_layernorm: LayerNorm of `rows` rows of `width` floats (x == y allowed). */
void clip_ref_layernorm(const float *x, size_t x_stride, float *y, size_t y_stride, int rows,
                        int width, const float *w, const float *b, float eps);

/* act (clip_activation) applied to n floats in place, as PyTorch computes it in float. */
void clip_ref_activate(float *x, int n, int act);

/* The first n of a row of len attention scores softmaxed; the masked rest set to 0. */
void clip_ref_softmax(float *row, int n, int len);

/* The buffers clip_ref_transformer works in, for `rows` = batch x tokens rows: h [rows, W],
 * qkv [rows, 3W], att [rows, W], mlp [rows, M], scores [tokens]. */
typedef struct clip_ref_scratch {
    float *h, *qkv, *att, *mlp, *scores;
} clip_ref_scratch;

/* Every block of `tower` on x = [batch * tokens, width], in place: x holds every
 * position's output after. causal: each position sees only itself and those before it. */
void clip_ref_transformer(const clip_tower *tower, float *x, int batch, int tokens,
                          int causal, const clip_ref_scratch *s);

#endif
