/* plan.c -- the plan: every tensor of the .clip file, in file order (cv->ot), with our name
 * (v.layers.3.attn.qkv.weight ...), its shape, and the source tensors its values come from:
 * concatenated (Hugging Face's q, k, v projections into one qkv), transposed (OpenAI's
 * [in, out] projections), marked for 32-row panels (the linear weights). Both naming
 * schemes, Hugging Face's and OpenAI's, map here onto ours; every source tensor is
 * checked for presence, shape and a float dtype before anything is written.
 *
 * It reads no tensor values and writes nothing: write.c does, following the plan. Start
 * from build_plan, at the end.
 */
#include "convert.h"

#include <stdio.h>
#include <string.h>

/* The tensors clip_linear multiplies by, which the format stores in panels of 32 output
 * rows (docs/clip-format.md). */
static int is_linear_weight(const char *name)
{
    static const char *const suffixes[] = {".qkv.weight", ".out.weight", ".fc1.weight",
                                           ".fc2.weight"};
    if (!strcmp(name, "v.patch_embed.weight") || !strcmp(name, "v.proj") ||
        !strcmp(name, "t.proj"))
        return 1;
    size_t n = strlen(name);
    for (size_t i = 0; i < sizeof suffixes / sizeof *suffixes; i++) {
        size_t m = strlen(suffixes[i]);
        if (n > m && !strcmp(name + n - m, suffixes[i])) return 1;
    }
    return 0;
}

/* The source tensor `name`, which must exist with a float dtype and the given shape
 * (ndim -1: any shape with exactly one element, for logit_scale). */
static stensor *want(conv *cv, const char *name, int ndim, int64_t d0, int64_t d1, int64_t d2,
                     int64_t d3)
{
    stensor *t = find_tensor(cv, name);
    if (!t) {
        fail(cv, "missing tensor %s in %s", name, cv->weights_path);
        return NULL;
    }
    int64_t dims[4] = {d0, d1, d2, d3};
    int ok = ndim < 0 ? t->numel == 1 : t->ndim == ndim;
    for (int i = 0; ok && i < ndim; i++) ok = t->shape[i] == dims[i];
    if (!ok) {
        char e[96], g[96];
        if (ndim < 0) snprintf(e, sizeof e, "one element");
        else shape_str(e, sizeof e, dims, ndim);
        shape_str(g, sizeof g, t->shape, t->ndim);
        fail(cv, "shape mismatch: %s: expected %s, got %s", name, e, g);
        return NULL;
    }
    if (t->dtype == DT_OTHER) {
        fail(cv, "unsupported dtype %s for tensor %s (F32, F16, BF16 are)", t->dtype_name, name);
        return NULL;
    }
    t->used = 1;
    return t;
}

static int plan_add(conv *cv, const char *name, int ndim, uint32_t d0, uint32_t d1,
                    stensor *a, stensor *b, stensor *c, int transpose)
{
    if (!a) return -1;   /* want() has said why */
    if (grow((void **)&cv->ot, &cv->capot, cv->not + 1, sizeof *cv->ot) != 0)
        return fail(cv, "out of memory");
    otensor *o = &cv->ot[cv->not++];
    memset(o, 0, sizeof *o);
    snprintf(o->name, sizeof o->name, "%s", name);
    o->ndim = ndim;
    o->shape[0] = d0;
    o->shape[1] = ndim > 1 ? d1 : 1;
    o->shape[2] = o->shape[3] = 1;
    o->parts[0] = a;
    o->parts[1] = b;
    o->parts[2] = c;
    o->nparts = c ? 3 : 1;
    o->transpose = transpose;
    o->panels = ndim == 2 && is_linear_weight(name);
    o->numel = (uint64_t)o->shape[0] * o->shape[1];
    /* f16 throughout: measured (docs/clip-format.md), LayerNorm and biases in f16 keep the
     * embeddings well inside the 0.9999 cosine target. */
    o->dtype = cv->want_f16 ? 1 : 0;
    o->size = o->numel * (o->dtype ? 2 : 4);
    return 0;
}

#define WANT1(n, a) want(cv, n, 1, a, 0, 0, 0)
#define WANT2(n, a, b) want(cv, n, 2, a, b, 0, 0)

/* One pre-LN residual block in our names, from either naming scheme. */
static int plan_block(conv *cv, char tower, uint32_t i, uint32_t W, uint32_t M, const char *pre)
{
    char o[64], s[3][200];
    int hf = !cv->openai_naming;
#define SRC(k, fmt) snprintf(s[k], sizeof s[k], "%s%u." fmt, pre, i)
#define OUT(fmt) snprintf(o, sizeof o, "%c.layers.%u." fmt, tower, i)
    static const char *ln_hf[2] = {"layer_norm1", "layer_norm2"}, *ln_oa[2] = {"ln_1", "ln_2"};
    for (int l = 0; l < 2; l++)
        for (int wb = 0; wb < 2; wb++) {
            snprintf(s[0], sizeof s[0], "%s%u.%s.%s", pre, i, hf ? ln_hf[l] : ln_oa[l],
                     wb ? "bias" : "weight");
            snprintf(o, sizeof o, "%c.layers.%u.ln%d.%s", tower, i, l + 1, wb ? "bias" : "weight");
            if (plan_add(cv, o, 1, W, 0, WANT1(s[0], W), NULL, NULL, 0) != 0) return -1;
        }
    if (hf) {
        stensor *w[3], *b[3];
        static const char *qkv = "qkv";
        for (int k = 0; k < 3; k++) {
            snprintf(s[k], sizeof s[k], "%s%u.self_attn.%c_proj.weight", pre, i, qkv[k]);
            if (!(w[k] = WANT2(s[k], W, W))) return -1;
            snprintf(s[k], sizeof s[k], "%s%u.self_attn.%c_proj.bias", pre, i, qkv[k]);
            if (!(b[k] = WANT1(s[k], W))) return -1;
        }
        OUT("attn.qkv.weight");
        if (plan_add(cv, o, 2, 3 * W, W, w[0], w[1], w[2], 0) != 0) return -1;
        OUT("attn.qkv.bias");
        if (plan_add(cv, o, 1, 3 * W, 0, b[0], b[1], b[2], 0) != 0) return -1;
    } else {
        SRC(0, "attn.in_proj_weight");
        OUT("attn.qkv.weight");
        if (plan_add(cv, o, 2, 3 * W, W, WANT2(s[0], 3 * W, W), NULL, NULL, 0) != 0) return -1;
        SRC(0, "attn.in_proj_bias");
        OUT("attn.qkv.bias");
        if (plan_add(cv, o, 1, 3 * W, 0, WANT1(s[0], 3 * W), NULL, NULL, 0) != 0) return -1;
    }
    static const struct { const char *hf, *oa, *ours; int out_is_w; } lin[] = {
        {"self_attn.out_proj", "attn.out_proj", "attn.out", 1},
        {"mlp.fc1", "mlp.c_fc", "mlp.fc1", 0},
        {"mlp.fc2", "mlp.c_proj", "mlp.fc2", 1},
    };
    for (size_t k = 0; k < 3; k++) {
        uint32_t rows = lin[k].out_is_w ? W : M, cols = k == 2 ? M : W;
        snprintf(s[0], sizeof s[0], "%s%u.%s.weight", pre, i, hf ? lin[k].hf : lin[k].oa);
        snprintf(o, sizeof o, "%c.layers.%u.%s.weight", tower, i, lin[k].ours);
        if (plan_add(cv, o, 2, rows, cols, WANT2(s[0], rows, cols), NULL, NULL, 0) != 0) return -1;
        snprintf(s[0], sizeof s[0], "%s%u.%s.bias", pre, i, hf ? lin[k].hf : lin[k].oa);
        snprintf(o, sizeof o, "%c.layers.%u.%s.bias", tower, i, lin[k].ours);
        if (plan_add(cv, o, 1, rows, 0, WANT1(s[0], rows), NULL, NULL, 0) != 0) return -1;
    }
#undef SRC
#undef OUT
    return 0;
}

static int plan_ln(conv *cv, const char *ours, const char *src, uint32_t W)
{
    char o[64], s[200];
    for (int wb = 0; wb < 2; wb++) {
        snprintf(o, sizeof o, "%s.%s", ours, wb ? "bias" : "weight");
        snprintf(s, sizeof s, "%s.%s", src, wb ? "bias" : "weight");
        if (plan_add(cv, o, 1, W, 0, WANT1(s, W), NULL, NULL, 0) != 0) return -1;
    }
    return 0;
}

int build_plan(conv *cv)
{
    const hparams *hp = &cv->hp;
    uint32_t W = hp->v_width, P = hp->patch, G = (hp->image_size / P) * (hp->image_size / P);
    uint32_t T = hp->t_width, E = hp->embed;
    int hf = !cv->openai_naming;
    /* patch conv weight [W, 3, P, P] is contiguous, so it is already [W, 3*P*P] */
    if (plan_add(cv, "v.patch_embed.weight", 2, W, 3 * P * P,
                 want(cv, hf ? "vision_model.embeddings.patch_embedding.weight" : "visual.conv1.weight",
                      4, W, 3, P, P), NULL, NULL, 0) ||
        plan_add(cv, "v.class_embed", 1, W, 0,
                 WANT1(hf ? "vision_model.embeddings.class_embedding" : "visual.class_embedding", W),
                 NULL, NULL, 0) ||
        plan_add(cv, "v.pos_embed", 2, G + 1, W,
                 WANT2(hf ? "vision_model.embeddings.position_embedding.weight"
                          : "visual.positional_embedding", G + 1, W), NULL, NULL, 0) ||
        plan_ln(cv, "v.ln_pre", hf ? "vision_model.pre_layrnorm" : "visual.ln_pre", W))
        return -1;
    for (uint32_t i = 0; i < hp->v_layers; i++)
        if (plan_block(cv, 'v', i, W, hp->v_mlp,
                       hf ? "vision_model.encoder.layers." : "visual.transformer.resblocks.") != 0)
            return -1;
    if (plan_ln(cv, "v.ln_post", hf ? "vision_model.post_layernorm" : "visual.ln_post", W) ||
        plan_add(cv, "v.proj", 2, E, W,
                 hf ? WANT2("visual_projection.weight", E, W) : WANT2("visual.proj", W, E),
                 NULL, NULL, !hf) ||
        plan_add(cv, "t.token_embed", 2, hp->vocab, T,
                 WANT2(hf ? "text_model.embeddings.token_embedding.weight" : "token_embedding.weight",
                       hp->vocab, T), NULL, NULL, 0) ||
        plan_add(cv, "t.pos_embed", 2, hp->context, T,
                 WANT2(hf ? "text_model.embeddings.position_embedding.weight" : "positional_embedding",
                       hp->context, T), NULL, NULL, 0))
        return -1;
    for (uint32_t i = 0; i < hp->t_layers; i++)
        if (plan_block(cv, 't', i, T, hp->t_mlp,
                       hf ? "text_model.encoder.layers." : "transformer.resblocks.") != 0)
            return -1;
    if (plan_ln(cv, "t.ln_final", hf ? "text_model.final_layer_norm" : "ln_final", T) ||
        plan_add(cv, "t.proj", 2, E, T,
                 hf ? WANT2("text_projection.weight", E, T) : WANT2("text_projection", T, E),
                 NULL, NULL, !hf) ||
        plan_add(cv, "logit_scale", 1, 1, 0, want(cv, "logit_scale", -1, 0, 0, 0, 0), NULL, NULL, 0))
        return -1;
    return 0;
}
