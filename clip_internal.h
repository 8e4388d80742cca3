/* clip_internal.h -- what clip.c offers the towers (vision.c, text.c) but not users: the
 * model's weights, the context's scratch and lanes, and the layers.
 *
 * The engine's other rooms have their own small headers: error.h (clip_fail, every file),
 * tokenizer.h (tokenizer.c), pool.h (pool.c, the context's threads), kernels.h (kernels.c,
 * the SIMD kernels clip.c's layers call), ref.h (ref.c, the same layers as plain loops). Nothing here is part of the public API (clip.h). */
#ifndef CLIP_INTERNAL_H
#define CLIP_INTERNAL_H

#include "clip.h"
#include "error.h"
#include "tokenizer.h"

/* ---------------------------------------------------------------------------------------
 * The model (clip.c)
 * ------------------------------------------------------------------------------------- */

const clip_tokenizer *clip_model_tokenizer(const clip_model *model);

/* ---------------------------------------------------------------------------------------
 * Weights (clip.c carves them out of the mapped file; every pointer is f32, in place or
 * widened from f16).
 *
 * Linear weights, [out, in] in PyTorch, are stored in panels of CLIP_PANEL output rows
 * (docs/clip-format.md): panel p holds rows p*32 .. p*32+w-1, where w is 32 or, for the
 * last panel, the rows left, laid out [in][w]. So the matmul kernels read each weight once
 * as one sequential stream, 32 outputs per input column, with no copy at run time.
 * ------------------------------------------------------------------------------------- */

#define CLIP_PANEL 32

/* Where element (o, i) of an [n_out, n_in] linear weight lives in the panel layout. */
static inline size_t clip_panel_index(size_t o, size_t i, size_t n_out, size_t n_in)
{
    size_t o0 = o / CLIP_PANEL * CLIP_PANEL;
    size_t w = n_out - o0 < CLIP_PANEL ? n_out - o0 : CLIP_PANEL;
    return o0 * n_in + i * w + (o - o0);
}

typedef struct clip_layer {
    const float *ln1_w, *ln1_b;
    const float *qkv_w, *qkv_b;   /* [3W, W], [3W]: q, k, v stacked                  */
    const float *out_w, *out_b;   /* [W, W], [W]                                      */
    const float *ln2_w, *ln2_b;
    const float *fc1_w, *fc1_b;   /* [M, W], [M]                                      */
    const float *fc2_w, *fc2_b;   /* [W, M], [W]                                      */
} clip_layer;

/* One transformer stack: what clip_transformer needs to run either tower. */
typedef struct clip_tower {
    int width, heads, mlp, n_layers;
    float ln_eps;
    clip_activation act;
    clip_layer *layers;           /* n_layers entries                                  */
} clip_tower;

typedef struct clip_weights {
    clip_tower vision, text;
    const float *v_patch_embed;   /* [W, 3*P*P], flattened c, y, x                     */
    const float *v_class_embed;   /* [W]                                               */
    const float *v_pos_embed;     /* [G+1, W]                                          */
    const float *v_ln_pre_w, *v_ln_pre_b, *v_ln_post_w, *v_ln_post_b;
    const float *v_proj;          /* [E, W]                                            */
    const float *t_token_embed;   /* [vocab, W]                                        */
    const float *t_pos_embed;     /* [context_length, W]                               */
    const float *t_ln_final_w, *t_ln_final_b;
    const float *t_proj;          /* [E, W]                                            */
    const float *logit_scale;     /* [1]                                               */
} clip_weights;

const clip_weights *clip_model_weights(const clip_model *model);

/* ---------------------------------------------------------------------------------------
 * Context (clip.c): scratch buffers and lanes
 * ------------------------------------------------------------------------------------- */

/* The most rows (batch x tokens) one forward stacks: bounds the scratch memory; larger
 * batches run as several forwards. */
#define CLIP_MAX_ROWS 2048

/* Scratch buffers owned by a clip_ctx, grown on demand and reused between calls. */
typedef enum clip_scratch {
    CLIP_SCRATCH_X,        /* the residual stream [rows, W]                              */
    CLIP_SCRATCH_H,        /* LayerNorm output / linear output [rows, W]                 */
    CLIP_SCRATCH_QKV,      /* [rows, 3W]                                                 */
    CLIP_SCRATCH_ATTN,     /* attention output [rows, W]; also a tower's input staging  */
    CLIP_SCRATCH_MLP,      /* [rows, M]                                                  */
    CLIP_SCRATCH_SCORES,   /* per-thread attention scores                                */
    CLIP_SCRATCH_IN,       /* a tower's own input (im2col patches, projections)          */
    CLIP_SCRATCH_POOL,     /* pooled rows [batch, W]                                     */
    CLIP_SCRATCH_PACK,     /* clip_linear's input re-laid in row tiles for its kernels  */
    CLIP_SCRATCH_COUNT
} clip_scratch;

const clip_model *clip_ctx_model(const clip_ctx *ctx);

/* Lanes: a batch split between the context's threads, each running whole forwards on its
 * share with a single-threaded context of its own. Worth it from about CLIP_LANE_MIN_ROWS
 * rows per lane; below that, one forward with its matmuls split between threads is as
 * fast. clip_run_lanes calls fn once per lane, all at once, and returns the first
 * failure; a context with one thread has one lane, itself. */
#define CLIP_LANE_MIN_ROWS 96
typedef clip_status (*clip_lane_fn)(clip_ctx *lane, void *arg, int index, clip_error *err);
int clip_ctx_lanes(const clip_ctx *ctx);
clip_status clip_run_lanes(clip_ctx *ctx, clip_lane_fn fn, void *arg, clip_error *err);

/* A buffer of at least n floats (contents not kept when it grows), or NULL. */
float *clip_ctx_scratch(clip_ctx *ctx, clip_scratch which, size_t n);

/* ---------------------------------------------------------------------------------------
 * Layers (clip.c), used by the vision (vision.c) and text (text.c) towers. They run on the
 * context's threads and matmul kernel (kernels.c), or with the "ref" kernel as ref.c's
 * plain loops, which say most simply what each one computes.
 * ------------------------------------------------------------------------------------- */

/* y[rows, n_out] = x[rows, n_in] . w^T + b (b may be NULL), then the activation when
 * `act` >= 0, then residual[rows, n_out] += y when `residual` is not NULL (the kernels may
 * then add into residual directly and leave y as it was). w is in the panel layout above. */
void clip_linear(clip_ctx *ctx, const float *x, int rows, int n_in, const float *w,
                 const float *b, int n_out, float *y, int act, float *residual);

/* clip_linear of LayerNorm(x) (x itself unchanged), normalizing while the input is re-laid
 * for the kernels: one pass over the rows instead of two. Needs the scratch that
 * clip_transformer_reserve makes for `rows`. */
typedef struct clip_norm {
    const float *w, *b;
    float eps;
} clip_norm;
void clip_linear_ln(clip_ctx *ctx, const float *x, int rows, int n_in, const clip_norm *ln,
                    const float *w, const float *b, int n_out, float *y, int act);

/* LayerNorm of `rows` rows of `width` floats, row i read at x + i*x_stride and written
 * at y + i*y_stride (x == y allowed). */
void clip_layernorm(clip_ctx *ctx, const float *x, size_t x_stride, float *y,
                    size_t y_stride, int rows, int width, const float *w, const float *b,
                    float eps);

/* Runs every block of `tower` on x = [batch * tokens, width]. Without pick, x holds
 * every position's output after. With pick, only position pick[b] of each sequence b is
 * wanted: its output goes to picked[b] ([batch, width]), the last block computes nothing
 * else (but keys and values), and x is left part way (a tower has at least one block).
 * The scratch buffers for `batch * tokens` rows must exist (clip_transformer_reserve). */
void clip_transformer(clip_ctx *ctx, const clip_tower *tower, float *x, int batch,
                      int tokens, int causal, const int *pick, float *picked);
clip_status clip_transformer_reserve(clip_ctx *ctx, const clip_tower *tower, int batch,
                                     int tokens, clip_error *err);

#endif
