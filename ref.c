/* ref.c -- the reference path: CLIP's transformer as plain loops in float. Start here.
 *
 * Everything CLIP computes after the embeddings is in this file, one short function per
 * layer, in the order of OpenAI's model.py: a linear layer (matmul), LayerNorm, the
 * activations, softmax, multi-head attention, and clip_ref_transformer, which stacks them
 * into CLIP's residual blocks:
 *
 *     x = x + out_proj(attention(qkv(ln_1(x))))
 *     x = x + fc2(act(fc1(ln_2(x))))
 *
 * Single-threaded loops over floats: no intrinsics, no tiles, no re-layout. The towers
 * (vision.c, text.c) reach these through clip.c's layer functions, which call them when
 * the context's kernel is "ref" (clip_ctx_params.matmul; CLIP_MATMUL=ref for the
 * programs), so this path runs every model end to end and must match OpenAI's outputs as
 * the fast ones do (tests/test_model.c). The fast path (clip.c's layers, kernels.c's
 * tiles) computes the same sums in another order, split between threads and vector
 * lanes; the tests hold each of its kernels to this file.
 *
 * Read it with vision.c or text.c open: they are the towers, this is their arithmetic.
 * It allocates nothing (the buffers are the context's), starts no thread, and knows no
 * file format: weights arrive as a clip_tower (clip_internal.h). */

#include "ref.h"

#include <math.h>

/* y[o] = b[o] + sum over i of W[o][i] x[i], for one row x of n_in floats: a linear layer
 * (b may be NULL). W is PyTorch's [n_out, n_in] weight as the .clip file stores it, in
 * panels of 32 rows (clip_internal.h), so W[o][i] is w[clip_panel_index(o, i, ...)]. */
static void matmul(float *y, const float *x, const float *w, const float *b, int n_in,
                   int n_out)
{
    for (int o = 0; o < n_out; o++) {
        float sum = 0.0f;
        for (int i = 0; i < n_in; i++)
            sum += w[clip_panel_index((size_t)o, (size_t)i, (size_t)n_out, (size_t)n_in)] * x[i];
        y[o] = b ? sum + b[o] : sum;
    }
}

void clip_ref_linear(const float *x, int rows, int n_in, const float *w, const float *b,
                     int n_out, float *y, int act, float *residual)
{
    for (int r = 0; r < rows; r++) {
        float *yr = y + (size_t)r * n_out;
        matmul(yr, x + (size_t)r * n_in, w, b, n_in, n_out);
        if (act >= 0) clip_ref_activate(yr, n_out, act);
        if (residual)
            for (int o = 0; o < n_out; o++) residual[(size_t)r * n_out + o] += yr[o];
    }
}

/* torch.nn.LayerNorm of one row: (x - mean) / sqrt(var + eps) * w + b, with the mean and
 * the biased variance of the row. */
static void layernorm(float *y, const float *x, const float *w, const float *b, int n,
                      float eps)
{
    float mean = 0.0f;
    for (int i = 0; i < n; i++) mean += x[i];
    mean /= (float)n;
    float var = 0.0f;
    for (int i = 0; i < n; i++) var += (x[i] - mean) * (x[i] - mean);
    var /= (float)n;
    float rstd = 1.0f / sqrtf(var + eps);
    for (int i = 0; i < n; i++) y[i] = (x[i] - mean) * rstd * w[i] + b[i];
}

void clip_ref_layernorm(const float *x, size_t x_stride, float *y, size_t y_stride, int rows,
                        int width, const float *w, const float *b, float eps)
{
    for (int r = 0; r < rows; r++)
        layernorm(y + (size_t)r * y_stride, x + (size_t)r * x_stride, w, b, width, eps);
}

/* OpenAI's QuickGELU, x * sigmoid(1.702 x), and the exact GELU, 0.5 x (1 + erf(x / sqrt 2)),
 * each as PyTorch computes it in float. */
void clip_ref_activate(float *x, int n, int act)
{
    if (act == CLIP_ACT_QUICK_GELU) {
        for (int i = 0; i < n; i++) x[i] = x[i] * (1.0f / (1.0f + expf(-1.702f * x[i])));
    } else {
        for (int i = 0; i < n; i++)
            x[i] = x[i] * 0.5f * (1.0f + erff(x[i] * (float)M_SQRT1_2));
    }
}

/* As torch's softmax in float: the largest score subtracted (so no exp overflows), the
 * exps summed, each multiplied by the sum's inverse. Scores past n are masked: 0. */
void clip_ref_softmax(float *row, int n, int len)
{
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

/* Multi-head self-attention over one sequence of T tokens. qkv holds each token's query,
 * key and value side by side, [T, 3W]; head h owns columns h*d .. h*d + d-1 of each
 * (d = W / heads). For every head and token: its query against every key it may see
 * (all of them, or with `causal` the tokens up to itself), scaled by 1 / sqrt(d), softmaxed,
 * and the values summed with those weights into out [T, W]. As torch does, q is divided by
 * sqrt(d) before the product. scores: room for T floats. */
static void attention(float *out, const float *qkv, int T, int W, int heads, int causal,
                      float *scores)
{
    int d = W / heads;
    float scale = sqrtf((float)d);
    for (int h = 0; h < heads; h++)
        for (int i = 0; i < T; i++) {
            const float *q = qkv + (size_t)i * 3 * W + (size_t)h * d;
            int n = causal ? i + 1 : T;   /* the tokens token i sees: 0 .. n-1 */
            for (int j = 0; j < n; j++) {
                const float *k = qkv + (size_t)j * 3 * W + W + (size_t)h * d;
                float dot = 0.0f;
                for (int c = 0; c < d; c++) dot += (q[c] / scale) * k[c];
                scores[j] = dot;
            }
            clip_ref_softmax(scores, n, n);
            float *o = out + (size_t)i * W + (size_t)h * d;
            for (int c = 0; c < d; c++) o[c] = 0.0f;
            for (int j = 0; j < n; j++) {
                const float *v = qkv + (size_t)j * 3 * W + 2 * W + (size_t)h * d;
                for (int c = 0; c < d; c++) o[c] += scores[j] * v[c];
            }
        }
}

void clip_ref_transformer(const clip_tower *t, float *x, int batch, int tokens, int causal,
                          const clip_ref_scratch *s)
{
    int W = t->width, M = t->mlp, rows = batch * tokens;
    for (int l = 0; l < t->n_layers; l++) {
        const clip_layer *L = &t->layers[l];
        /* x = x + out_proj(attention(qkv(ln_1(x)))), each sequence attending to itself */
        clip_ref_layernorm(x, (size_t)W, s->h, (size_t)W, rows, W, L->ln1_w, L->ln1_b,
                           t->ln_eps);
        clip_ref_linear(s->h, rows, W, L->qkv_w, L->qkv_b, 3 * W, s->qkv, -1, NULL);
        for (int b = 0; b < batch; b++)
            attention(s->att + (size_t)b * tokens * W, s->qkv + (size_t)b * tokens * 3 * W,
                      tokens, W, t->heads, causal, s->scores);
        clip_ref_linear(s->att, rows, W, L->out_w, L->out_b, W, s->h, -1, x);
        /* x = x + fc2(act(fc1(ln_2(x)))) */
        clip_ref_layernorm(x, (size_t)W, s->h, (size_t)W, rows, W, L->ln2_w, L->ln2_b,
                           t->ln_eps);
        clip_ref_linear(s->h, rows, W, L->fc1_w, L->fc1_b, M, s->mlp, (int)t->act, NULL);
        clip_ref_linear(s->mlp, rows, M, L->fc2_w, L->fc2_b, W, s->h, -1, x);
    }
}
