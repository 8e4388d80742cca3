/* text.c -- the text tower: token ids in (tokenizer.c), text features out.
 *
 * OpenAI's encode_text, in five steps; vision.c is its twin, with the same steps in the
 * same order, so the two read side by side:
 *   1. embed    each id's token embedding, plus the position embeddings;
 *   2. ln_pre   none: the text tower goes straight to the blocks;
 *   3. blocks   the transformer (clip_transformer), causal: each position sees only itself
 *               and the positions before it;
 *   4. pool     the end-of-text token's output (the position of the largest id);
 *   5. project  ln_final, then the projection to embed_dim.
 * The layers it calls (clip_linear, clip_layernorm, clip_transformer) are clip.c's: its
 * fast paths on the context's threads, or with the "ref" kernel the plain loops of ref.c,
 * the place to read what each layer computes.
 *
 * Then batching: texts sorted by length, in forwards of similar lengths each cut at its
 * longest end of text, split between the context's lanes (one per thread) when the batch
 * is large enough.
 *
 * This file knows no text (tokenizer.c makes the ids) and no kernel: it stacks layers. */

#include "clip_internal.h"

#include <stdlib.h>
#include <string.h>

/* =======================================================================================
 * The forward
 * ===================================================================================== */

/* A text of the batch as a forward sees it. */
typedef struct text_item {
    int index;   /* position in the caller's batch                                       */
    int len;     /* end-of-text position + 1                                             */
} text_item;

/* One forward: `count` texts padded to `len` positions, their features to
 * out[items[b].index]. */
static clip_status forward(clip_ctx *ctx, const int32_t *ids, const text_item *items,
                           int count, int len, float *out, clip_error *err)
{
    const clip_model *model = clip_ctx_model(ctx);
    const clip_hparams *hp = clip_model_hparams(model);
    const clip_weights *w = clip_model_weights(model);
    int W = (int)hp->text_width, E = (int)hp->embed_dim, C = (int)hp->context_length;
    clip_status st = clip_transformer_reserve(ctx, &w->text, count, len, err);
    if (st != CLIP_OK) return st;
    float *x = clip_ctx_scratch(ctx, CLIP_SCRATCH_X, (size_t)count * len * W);
    float *pool = clip_ctx_scratch(ctx, CLIP_SCRATCH_POOL, (size_t)count * W);
    float *proj = clip_ctx_scratch(ctx, CLIP_SCRATCH_IN, (size_t)count * E);
    if (!pool || !proj) return clip_fail(err, CLIP_ERR_NOMEM, "out of memory for %d texts", count);

    /* 1. embed: token, plus position */
    for (int b = 0; b < count; b++) {
        const int32_t *row = ids + (size_t)items[b].index * C;
        for (int t = 0; t < len; t++) {
            const float *tok = w->t_token_embed + (size_t)row[t] * W;
            const float *pos = w->t_pos_embed + (size_t)t * W;
            float *dst = x + ((size_t)b * len + t) * W;
            for (int i = 0; i < W; i++) dst[i] = tok[i] + pos[i];
        }
    }
    /* 2. no ln_pre */
    /* 3. blocks, causal; 4. pool: the features are the end-of-text token's */
    int *eot = malloc((size_t)count * sizeof *eot);
    if (!eot) return clip_fail(err, CLIP_ERR_NOMEM, "out of memory for %d texts", count);
    for (int b = 0; b < count; b++) eot[b] = items[b].len - 1;
    clip_transformer(ctx, &w->text, x, count, len, 1, eot, pool);
    free(eot);
    /* 5. project: ln_final, then the projection */
    clip_layernorm(ctx, pool, (size_t)W, pool, (size_t)W, count, W, w->t_ln_final_w,
                   w->t_ln_final_b, hp->text_ln_eps);
    clip_linear(ctx, pool, count, W, w->t_proj, NULL, E, proj, -1, NULL);
    for (int b = 0; b < count; b++)
        memcpy(out + (size_t)items[b].index * E, proj + (size_t)b * E, (size_t)E * sizeof *out);
    return CLIP_OK;
}

/* =======================================================================================
 * Batching
 *
 * The causal mask keeps every position from seeing later ones, so a text's features at
 * its end-of-text token depend only on the positions up to it: each text needs just
 * eot + 1 positions, and texts padded to a group's length are unchanged by the padding.
 * A forward reads every weight once whatever its row count, so a few padded rows cost
 * less than another forward: texts sorted by length join a group while the padding stays
 * under an eighth of its rows (or 16 rows). With enough texts, each lane
 * (clip_run_lanes) runs its share on its own thread.
 * ===================================================================================== */

static int item_cmp(const void *a, const void *b)
{
    const text_item *x = a, *y = b;
    if (x->len != y->len) return x->len < y->len ? -1 : 1;
    return x->index < y->index ? -1 : x->index > y->index;
}

/* How many items from `first` make the next group (items sorted by length). */
static int group_size(const text_item *items, int n, int first)
{
    int used = items[first].len, count = 1;
    long real = used;
    while (first + count < n) {
        int len = items[first + count].len;
        long rows = (long)(count + 1) * len;
        long pad = rows - (real + len);
        if (rows > CLIP_MAX_ROWS || pad > (rows / 8 > 16 ? rows / 8 : 16)) break;
        real += len;
        count++;
    }
    return count;
}

/* Texts sorted by length, in groups (group_size) of one forward each. */
static clip_status encode_items(clip_ctx *ctx, const int32_t *ids, const text_item *items,
                                int n, float *out, clip_error *err)
{
    clip_status st = CLIP_OK;
    for (int first = 0; first < n && st == CLIP_OK;) {
        int count = group_size(items, n, first);
        st = forward(ctx, ids, items + first, count, items[first + count - 1].len, out, err);
        first += count;
    }
    return st;
}

typedef struct text_lanes {
    const int32_t *ids;
    const text_item *dealt;   /* lane 0's texts, then lane 1's, ...                       */
    float *out;
    int n, n_lanes;
} text_lanes;

static clip_status text_lane(clip_ctx *lane, void *arg, int index, clip_error *err)
{
    const text_lanes *j = arg;
    int first = 0;
    for (int l = 0; l < index; l++) first += (j->n - l + j->n_lanes - 1) / j->n_lanes;
    int count = (j->n - index + j->n_lanes - 1) / j->n_lanes;
    return encode_items(lane, j->ids, j->dealt + first, count, j->out, err);
}

clip_status clip_encode_texts(clip_ctx *ctx, const int32_t *ids, int n, float *out,
                              clip_error *err)
{
    if (!ctx || n < 0 || (n > 0 && (!ids || !out)))
        return clip_fail(err, CLIP_ERR_ARG, "clip_encode_texts: bad arguments");
    if (n == 0) return CLIP_OK;
    const clip_hparams *hp = clip_model_hparams(clip_ctx_model(ctx));
    int C = (int)hp->context_length;
    text_item *items = malloc((size_t)n * sizeof *items);
    if (!items) return clip_fail(err, CLIP_ERR_NOMEM, "out of memory for %d texts", n);
    for (int b = 0; b < n; b++) {
        const int32_t *row = ids + (size_t)b * C;
        int eot = 0;
        for (int t = 0; t < C; t++) {
            if (row[t] < 0 || (uint32_t)row[t] >= hp->vocab_size) {
                free(items);
                return clip_fail(err, CLIP_ERR_ARG,
                                 "text %d: token id %d at position %d is outside the "
                                 "vocabulary (%u)", b, row[t], t, hp->vocab_size);
            }
            /* OpenAI's argmax: the first position holding the largest id */
            if (row[t] > row[eot]) eot = t;
        }
        items[b] = (text_item){b, eot + 1};
    }
    qsort(items, (size_t)n, sizeof *items, item_cmp);
    clip_status st;
    int lanes = clip_ctx_lanes(ctx);
    int64_t rows = 0;
    for (int b = 0; b < n; b++) rows += items[b].len;
    if (lanes > 1 && rows / lanes >= CLIP_LANE_MIN_ROWS) {
        /* dealt out in turn, so every lane gets texts of every length, still sorted */
        text_item *dealt = malloc((size_t)n * sizeof *dealt);
        if (!dealt) {
            free(items);
            return clip_fail(err, CLIP_ERR_NOMEM, "out of memory for %d texts", n);
        }
        int at = 0;
        for (int l = 0; l < lanes; l++)
            for (int b = l; b < n; b += lanes) dealt[at++] = items[b];
        text_lanes j = {ids, dealt, out, n, lanes};
        st = clip_run_lanes(ctx, text_lane, &j, err);
        free(dealt);
    } else {
        st = encode_items(ctx, ids, items, n, out, err);
    }
    free(items);
    return st;
}
