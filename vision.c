/* vision.c -- the vision tower: preprocessed pixels in (image.c), image features out.
 *
 * OpenAI's VisionTransformer.forward, in five steps; text.c is its twin, with the same
 * steps in the same order, so the two read side by side:
 *   1. embed    the image cut into P x P patches, each through the patch embedding (a
 *               stride-P convolution, done as one matmul over the patches as rows), the
 *               class embedding as token 0, plus the position embeddings;
 *   2. ln_pre   a LayerNorm before the blocks (the text tower has none);
 *   3. blocks   the transformer (clip_transformer), every token seeing every other;
 *   4. pool     the class token's output, position 0;
 *   5. project  ln_post, then the projection to embed_dim.
 * The layers it calls (clip_linear, clip_layernorm, clip_transformer) are clip.c's: its
 * fast paths on the context's threads, or with the "ref" kernel the plain loops of ref.c,
 * the place to read what each layer computes.
 *
 * Then batching: images in forwards of up to CLIP_MAX_ROWS rows, split between the
 * context's lanes (one per thread) when the batch is large enough.
 *
 * This file knows no image files (image.c decodes them) and no kernel: it stacks layers. */

#include "clip_internal.h"

#include <stdlib.h>
#include <string.h>

/* =======================================================================================
 * The forward
 * ===================================================================================== */

/* Patches as rows [image * G + patch, 3*P*P] in (c, y, x) order, the order of the conv
 * weight's flattening, so the patch embedding is one matmul. */
static void im2col(const float *pixels, int n_images, int size, int patch, float *out)
{
    int g = size / patch, k = 3 * patch * patch;
    for (int b = 0; b < n_images; b++)
        for (int py = 0; py < g; py++)
            for (int px = 0; px < g; px++) {
                float *row = out + ((size_t)(b * g + py) * g + px) * k;
                for (int c = 0; c < 3; c++)
                    for (int y = 0; y < patch; y++) {
                        const float *src = pixels + (((size_t)b * 3 + c) * size +
                                                     (size_t)py * patch + y) * size +
                                           (size_t)px * patch;
                        memcpy(row, src, sizeof(float) * (size_t)patch);
                        row += patch;
                    }
            }
}

/* One forward: B images of `pixels`, their features to out [B, E]. */
static clip_status forward(clip_ctx *ctx, const float *pixels, int B, float *out,
                           clip_error *err)
{
    const clip_model *model = clip_ctx_model(ctx);
    const clip_hparams *hp = clip_model_hparams(model);
    const clip_weights *w = clip_model_weights(model);
    int S = (int)hp->image_size, P = (int)hp->patch_size, W = (int)hp->vision_width;
    int E = (int)hp->embed_dim, g = S / P, G = g * g, T = G + 1, K = 3 * P * P;
    clip_status st = clip_transformer_reserve(ctx, &w->vision, B, T, err);
    if (st != CLIP_OK) return st;
    float *x = clip_ctx_scratch(ctx, CLIP_SCRATCH_X, (size_t)B * T * W);
    float *stage = clip_ctx_scratch(ctx, CLIP_SCRATCH_ATTN, (size_t)B * T * W);
    float *cols = clip_ctx_scratch(ctx, CLIP_SCRATCH_IN, (size_t)B * G * K);
    float *pool = clip_ctx_scratch(ctx, CLIP_SCRATCH_POOL, (size_t)B * W);
    if (!cols || !pool) return clip_fail(err, CLIP_ERR_NOMEM, "out of memory for %d images", B);

    /* 1. embed: the patches, then token 0 the class embedding; as OpenAI's model does,
     * the positions are added after */
    im2col(pixels, B, S, P, cols);
    clip_linear(ctx, cols, B * G, K, w->v_patch_embed, NULL, W, stage, -1, NULL);
    for (int b = 0; b < B; b++) {
        float *xb = x + (size_t)b * T * W;
        for (int i = 0; i < W; i++) xb[i] = w->v_class_embed[i] + w->v_pos_embed[i];
        for (int p = 0; p < G; p++) {
            const float *src = stage + ((size_t)b * G + p) * W;
            const float *pos = w->v_pos_embed + (size_t)(p + 1) * W;
            float *dst = xb + (size_t)(p + 1) * W;
            for (int i = 0; i < W; i++) dst[i] = src[i] + pos[i];
        }
    }
    /* 2. ln_pre */
    clip_layernorm(ctx, x, (size_t)W, x, (size_t)W, B * T, W, w->v_ln_pre_w, w->v_ln_pre_b,
                   hp->vision_ln_eps);
    /* 3. blocks, not causal; 4. pool: the features are the class token's (position 0) */
    int *cls = calloc((size_t)B, sizeof *cls);
    if (!cls) return clip_fail(err, CLIP_ERR_NOMEM, "out of memory for %d images", B);
    clip_transformer(ctx, &w->vision, x, B, T, 0, cls, pool);
    free(cls);
    /* 5. project: ln_post, then the projection */
    clip_layernorm(ctx, pool, (size_t)W, pool, (size_t)W, B, W, w->v_ln_post_w, w->v_ln_post_b,
                   hp->vision_ln_eps);
    clip_linear(ctx, pool, B, W, w->v_proj, NULL, E, out, -1, NULL);
    return CLIP_OK;
}

/* =======================================================================================
 * Batching
 *
 * Every image has the same number of tokens, so a batch is cut into forwards of as many
 * images as CLIP_MAX_ROWS rows hold. With enough images, each lane (clip_run_lanes) runs
 * an equal share on its own thread, and what is left over runs as one forward on all.
 * ===================================================================================== */

/* Images [first, first + n) of `pixels`, in forwards of up to CLIP_MAX_ROWS rows. */
static clip_status encode_range(clip_ctx *ctx, const float *pixels, int first, int n,
                                float *out, clip_error *err)
{
    const clip_hparams *hp = clip_model_hparams(clip_ctx_model(ctx));
    int S = (int)hp->image_size, g = S / (int)hp->patch_size, T = g * g + 1;
    int E = (int)hp->embed_dim, per = CLIP_MAX_ROWS / T > 0 ? CLIP_MAX_ROWS / T : 1;
    size_t image_floats = 3 * (size_t)S * S;
    for (int b0 = first; b0 < first + n; b0 += per) {
        int B = first + n - b0 < per ? first + n - b0 : per;
        clip_status st = forward(ctx, pixels + (size_t)b0 * image_floats, B,
                                 out + (size_t)b0 * E, err);
        if (st != CLIP_OK) return st;
    }
    return CLIP_OK;
}

typedef struct image_lanes {
    const float *pixels;
    float *out;
    int n, n_lanes;
} image_lanes;

static clip_status image_lane(clip_ctx *lane, void *arg, int index, clip_error *err)
{
    const image_lanes *j = arg;
    int first = (int)((int64_t)index * j->n / j->n_lanes);
    int last = (int)((int64_t)(index + 1) * j->n / j->n_lanes);
    return encode_range(lane, j->pixels, first, last - first, j->out, err);
}

clip_status clip_encode_images(clip_ctx *ctx, const float *pixels, int n, float *out,
                               clip_error *err)
{
    if (!ctx || n < 0 || (n > 0 && (!pixels || !out)))
        return clip_fail(err, CLIP_ERR_ARG, "clip_encode_images: bad arguments");
    const clip_hparams *hp = clip_model_hparams(clip_ctx_model(ctx));
    int g = (int)(hp->image_size / hp->patch_size), tokens = g * g + 1;
    int lanes = clip_ctx_lanes(ctx), in_lanes = n / lanes * lanes;
    if (lanes > 1 && (int64_t)(in_lanes / lanes) * tokens >= CLIP_LANE_MIN_ROWS) {
        image_lanes j = {pixels, out, in_lanes, lanes};
        clip_status st = clip_run_lanes(ctx, image_lane, &j, err);
        if (st != CLIP_OK) return st;
    } else {
        in_lanes = 0;
    }
    return encode_range(ctx, pixels, in_lanes, n - in_lanes, out, err);
}
