/* hparams.c -- the checkpoint's hyperparameters (cv->hp): widths, layers, heads, image and
 * patch size, activation, LayerNorm eps, preprocessing sizes and mean/std, and the model's
 * name. A Hugging Face folder states them in config.json and preprocessor_config.json; an
 * OpenAI/OpenCLIP state dict has them read off its tensor shapes as OpenAI's build_model
 * does, with open_clip_config.json for what shapes cannot tell. Every value is checked.
 *
 * It looks at tensor shapes only, never at tensor data, and does not decide the output
 * tensors (plan.c) or the file (write.c). Start from load_hparams, in the last section.
 */
#include "convert.h"

#include <math.h>
#include <stdio.h>
#include <string.h>

/* ---------------------------------------------------------------------------------------
 * Hugging Face: config.json and preprocessor_config.json
 * ------------------------------------------------------------------------------------- */

/* The first of the objects that has `key` as a positive integer, else `def`. */
static int cfg_uint(conv *cv, const char *file, const clip_json *a, const clip_json *b,
                    const char *key, uint32_t def, uint32_t *out)
{
    const clip_json *v = a ? clip_json_get(a, key) : NULL;
    if (!v && b) v = clip_json_get(b, key);
    if (!v || v->type == CLIP_JSON_NULL) { *out = def; return 0; }
    if (v->type != CLIP_JSON_NUMBER || !v->is_integer || v->number < 1 || v->number > MAX_HYPER)
        return fail(cv, "%s: %s must be a positive integer up to %u", file, key, MAX_HYPER);
    *out = (uint32_t)v->number;
    return 0;
}

static int cfg_eps(conv *cv, const char *file, const clip_json *o, float *out)
{
    const clip_json *v = o ? clip_json_get(o, "layer_norm_eps") : NULL;
    if (!v) { *out = 1e-5f; return 0; }
    if (v->type != CLIP_JSON_NUMBER || !(v->number > 0 && v->number < 1))
        return fail(cv, "%s: layer_norm_eps must be a number in (0, 1)", file);
    *out = (float)v->number;
    return 0;
}

static int cfg_act(conv *cv, const char *file, const clip_json *o, uint32_t *out)
{
    const clip_json *v = o ? clip_json_get(o, "hidden_act") : NULL;
    if (!v) { *out = 0; return 0; }
    if (v->type == CLIP_JSON_STRING && !strcmp(v->str, "quick_gelu")) *out = 0;
    else if (v->type == CLIP_JSON_STRING && !strcmp(v->str, "gelu")) *out = 1;
    else return fail(cv, "%s: unsupported hidden_act %s (quick_gelu or gelu)", file,
                     v->type == CLIP_JSON_STRING ? v->str : "(not a string)");
    return 0;
}

/* text_config_dict overrides text_config, as transformers' CLIPConfig does it. */
static const clip_json *sub(const clip_json *root, const char *key)
{
    const clip_json *v = clip_json_get(root, key);
    return v && v->type == CLIP_JSON_OBJECT ? v : NULL;
}

static int load_hf_config(conv *cv)
{
    char path[PATH_MAX];
    if (join(cv, path, sizeof path, cv->src, "config.json") != 0) return -1;
    if (!file_exists(path))
        return fail(cv, "missing file %s (a Hugging Face checkpoint needs its config.json)", path);
    clip_json_doc *doc;
    if (load_json_file(cv, path, &doc) != 0) return -1;
    const clip_json *root = clip_json_root(doc);
    const clip_json *mt = clip_json_get(root, "model_type");
    hparams *hp = &cv->hp;
    int rc = 0;
    if (mt && (mt->type != CLIP_JSON_STRING || strcmp(mt->str, "clip") != 0)) {
        rc = fail(cv, "%s: unknown architecture: model_type %s (only \"clip\" is supported)",
                  path, mt->type == CLIP_JSON_STRING ? mt->str : "(not a string)");
        goto out;
    }
    const clip_json *t1 = sub(root, "text_config_dict"), *t2 = sub(root, "text_config");
    const clip_json *v1 = sub(root, "vision_config_dict"), *v2 = sub(root, "vision_config");
    /* Defaults are transformers' CLIPTextConfig / CLIPVisionConfig / CLIPConfig ones. */
    uint32_t vact, tact;
    if (cfg_uint(cv, path, t1, t2, "hidden_size", 512, &hp->t_width) ||
        cfg_uint(cv, path, t1, t2, "intermediate_size", 2048, &hp->t_mlp) ||
        cfg_uint(cv, path, t1, t2, "num_attention_heads", 8, &hp->t_heads) ||
        cfg_uint(cv, path, t1, t2, "num_hidden_layers", 12, &hp->t_layers) ||
        cfg_uint(cv, path, t1, t2, "max_position_embeddings", 77, &hp->context) ||
        cfg_uint(cv, path, t1, t2, "vocab_size", 49408, &hp->vocab) ||
        cfg_uint(cv, path, v1, v2, "hidden_size", 768, &hp->v_width) ||
        cfg_uint(cv, path, v1, v2, "intermediate_size", 3072, &hp->v_mlp) ||
        cfg_uint(cv, path, v1, v2, "num_attention_heads", 12, &hp->v_heads) ||
        cfg_uint(cv, path, v1, v2, "num_hidden_layers", 12, &hp->v_layers) ||
        cfg_uint(cv, path, v1, v2, "image_size", 224, &hp->image_size) ||
        cfg_uint(cv, path, v1, v2, "patch_size", 32, &hp->patch) ||
        cfg_uint(cv, path, root, NULL, "projection_dim", 512, &hp->embed) ||
        cfg_eps(cv, path, t1 && clip_json_get(t1, "layer_norm_eps") ? t1 : t2, &hp->t_eps) ||
        cfg_eps(cv, path, v1 && clip_json_get(v1, "layer_norm_eps") ? v1 : v2, &hp->v_eps) ||
        cfg_act(cv, path, t1 && clip_json_get(t1, "hidden_act") ? t1 : t2, &tact) ||
        cfg_act(cv, path, v1 && clip_json_get(v1, "hidden_act") ? v1 : v2, &vact)) {
        rc = -1;
        goto out;
    }
    uint32_t nc;
    if (cfg_uint(cv, path, v1, v2, "num_channels", 3, &nc) != 0) { rc = -1; goto out; }
    if (nc != 3) { rc = fail(cv, "%s: num_channels %u (only 3 is supported)", path, nc); goto out; }
    if (tact != vact) {
        rc = fail(cv, "%s: text and vision hidden_act differ: not supported", path);
        goto out;
    }
    hp->act = vact;
    const clip_json *np = clip_json_get(root, "_name_or_path");
    if (np && np->type == CLIP_JSON_STRING && np->str_len) {
        const char *base = strrchr(np->str, '/');
        base = base ? base + 1 : np->str;
        if (*base) snprintf(hp->name, sizeof hp->name, "%s", base);
    }
out:
    clip_json_free(doc);
    return rc;
}

static int json_size(conv *cv, const char *file, const clip_json *v, const char *what,
                     uint32_t *out)
{
    if (!v) return 0;
    if (v->type == CLIP_JSON_OBJECT) {
        const clip_json *se = clip_json_get(v, "shortest_edge");
        const clip_json *h = clip_json_get(v, "height"), *w = clip_json_get(v, "width");
        if (se) v = se;
        else if (h && w && h->type == CLIP_JSON_NUMBER && w->type == CLIP_JSON_NUMBER &&
                 h->number == w->number && !strcmp(what, "crop_size"))
            v = h;
        else
            return fail(cv, "%s: unsupported %s (need an integer, {\"shortest_edge\"}%s)", file,
                        what, strcmp(what, "crop_size") ? "" : " or a square {height, width}");
    }
    if (v->type != CLIP_JSON_NUMBER || !v->is_integer || v->number < 1 || v->number > 65536)
        return fail(cv, "%s: %s must be a positive integer", file, what);
    *out = (uint32_t)v->number;
    return 0;
}

static int json_rgb(conv *cv, const char *file, const clip_json *v, const char *what, float *out)
{
    if (!v) return 0;
    if (v->type != CLIP_JSON_ARRAY || v->n != 3)
        return fail(cv, "%s: %s must be an array of 3 numbers", file, what);
    for (int i = 0; i < 3; i++) {
        if (v->items[i].type != CLIP_JSON_NUMBER || !isfinite(v->items[i].number) ||
            (!strcmp(what + strlen(what) - 3, "std") && !(v->items[i].number > 0)))
            return fail(cv, "%s: %s must be an array of 3 numbers (std > 0)", file, what);
        out[i] = (float)v->items[i].number;
    }
    return 0;
}

/* Preprocessing defaults: the model's own image size and OpenAI's mean/std. */
static int load_preprocessor(conv *cv)
{
    static const float mean[3] = {0.48145466f, 0.4578275f, 0.40821073f};
    static const float std[3] = {0.26862954f, 0.26130258f, 0.27577711f};
    hparams *hp = &cv->hp;
    memcpy(hp->mean, mean, sizeof mean);
    memcpy(hp->std, std, sizeof std);
    hp->resize = hp->crop = hp->image_size;
    char path[PATH_MAX];
    if (join(cv, path, sizeof path, cv->src, "preprocessor_config.json") != 0) return -1;
    if (!file_exists(path)) return 0;
    clip_json_doc *doc;
    if (load_json_file(cv, path, &doc) != 0) return -1;
    const clip_json *r = clip_json_root(doc);
    int rc = json_size(cv, path, clip_json_get(r, "size"), "size", &hp->resize) ||
             json_size(cv, path, clip_json_get(r, "crop_size"), "crop_size", &hp->crop) ||
             json_rgb(cv, path, clip_json_get(r, "image_mean"), "image_mean", hp->mean) ||
             json_rgb(cv, path, clip_json_get(r, "image_std"), "image_std", hp->std) ? -1 : 0;
    clip_json_free(doc);
    if (rc == 0 && hp->crop > hp->resize)
        rc = fail(cv, "%s: crop_size %u larger than size %u", path, hp->crop, hp->resize);
    return rc;
}

/* ---------------------------------------------------------------------------------------
 * OpenAI naming: the tensor shapes, and OpenCLIP's open_clip_config.json
 * ------------------------------------------------------------------------------------- */

/* OpenCLIP's open_clip_config.json knows what the shapes cannot tell: the activation and
 * the head counts of models whose heads are not 64 wide (ViT-H, ViT-g, ViT-bigG). */
static int load_open_clip_config(conv *cv, uint32_t *v_head_width, uint32_t *t_heads)
{
    char path[PATH_MAX];
    if (join(cv, path, sizeof path, cv->src, "open_clip_config.json") != 0) return -1;
    if (!file_exists(path)) return 0;
    clip_json_doc *doc;
    if (load_json_file(cv, path, &doc) != 0) return -1;
    const clip_json *r = clip_json_root(doc), *mc = sub(r, "model_cfg"), *pc = sub(r, "preprocess_cfg");
    const clip_json *vc = mc ? sub(mc, "vision_cfg") : NULL, *tc = mc ? sub(mc, "text_cfg") : NULL;
    int rc = 0;
    if (mc) {
        const clip_json *q = clip_json_get(mc, "quick_gelu");
        cv->hp.act = q && q->type == CLIP_JSON_BOOL && q->boolean ? 0 : 1;
    }
    if (cfg_uint(cv, path, vc, NULL, "head_width", 64, v_head_width) ||
        (tc && clip_json_get(tc, "heads") && cfg_uint(cv, path, tc, NULL, "heads", 8, t_heads)) ||
        (pc && (json_rgb(cv, path, clip_json_get(pc, "mean"), "mean", cv->hp.mean) ||
                json_rgb(cv, path, clip_json_get(pc, "std"), "std", cv->hp.std))))
        rc = -1;
    clip_json_free(doc);
    return rc;
}


static uint32_t count_blocks(conv *cv, const char *fmt)
{
    char name[200];
    uint32_t n = 0;
    for (;; n++) {
        snprintf(name, sizeof name, fmt, n);
        if (!find_tensor(cv, name) || n >= MAX_HYPER) return n;
    }
}

static int dim_of(conv *cv, const char *name, int ndim, int axis, uint32_t *out)
{
    stensor *t = find_tensor(cv, name);
    if (!t) return fail(cv, "missing tensor %s in %s", name, cv->weights_path);
    if (t->ndim != ndim || t->shape[axis] < 1 || t->shape[axis] > MAX_HYPER) {
        char g[96];
        shape_str(g, sizeof g, t->shape, t->ndim);
        return fail(cv, "shape mismatch: %s: expected %d dimensions, got %s", name, ndim, g);
    }
    *out = (uint32_t)t->shape[axis];
    return 0;
}

/* As OpenAI's build_model: widths from conv1 and the embeddings, patch from the kernel,
 * layers by counting resblocks, heads = width / 64, image size from the positions. */
static int infer_openai(conv *cv)
{
    hparams *hp = &cv->hp;
    uint32_t npos, v_head_width = 64, t_heads = 0;
    if (dim_of(cv, "visual.conv1.weight", 4, 0, &hp->v_width) ||
        dim_of(cv, "visual.conv1.weight", 4, 2, &hp->patch) ||
        dim_of(cv, "visual.positional_embedding", 2, 0, &npos) ||
        dim_of(cv, "visual.transformer.resblocks.0.mlp.c_fc.weight", 2, 0, &hp->v_mlp) ||
        dim_of(cv, "token_embedding.weight", 2, 0, &hp->vocab) ||
        dim_of(cv, "token_embedding.weight", 2, 1, &hp->t_width) ||
        dim_of(cv, "positional_embedding", 2, 0, &hp->context) ||
        dim_of(cv, "transformer.resblocks.0.mlp.c_fc.weight", 2, 0, &hp->t_mlp) ||
        dim_of(cv, "text_projection", 2, 1, &hp->embed))
        return -1;
    uint32_t grid = (uint32_t)lround(sqrt((double)(npos - 1)));
    if (npos < 2 || grid * grid != npos - 1)
        return fail(cv, "visual.positional_embedding: %u positions is not 1 + a square grid", npos);
    hp->image_size = grid * hp->patch;
    hp->v_layers = count_blocks(cv, "visual.transformer.resblocks.%u.ln_1.weight");
    hp->t_layers = count_blocks(cv, "transformer.resblocks.%u.ln_1.weight");
    hp->v_eps = hp->t_eps = 1e-5f;
    hp->act = 0;
    hp->resize = hp->crop = hp->image_size;
    if (load_preprocessor(cv) != 0 || load_open_clip_config(cv, &v_head_width, &t_heads) != 0)
        return -1;
    if (hp->v_width % v_head_width)
        return fail(cv, "vision width %u is not a multiple of the head width %u: cannot infer "
                    "the head count (open_clip_config.json with vision_cfg.head_width tells it)",
                    hp->v_width, v_head_width);
    if (!t_heads && hp->t_width % 64)
        return fail(cv, "text width %u is not a multiple of 64: cannot infer the head count "
                    "(open_clip_config.json with text_cfg.heads tells it)", hp->t_width);
    hp->v_heads = hp->v_width / v_head_width;
    hp->t_heads = t_heads ? t_heads : hp->t_width / 64;
    return 0;
}

/* ---------------------------------------------------------------------------------------
 * Every checkpoint: where its hyperparameters come from, their checks, the model's name
 * ------------------------------------------------------------------------------------- */

/* Hugging Face checkpoints state their hyperparameters in config.json (with
 * preprocessor_config.json); OpenAI-named ones are inferred from the tensor shapes. */
int load_hparams(conv *cv)
{
    if (cv->openai_naming) return infer_openai(cv);
    return load_hf_config(cv) || load_preprocessor(cv) ? -1 : 0;
}

/* What the engine relies on: heads divide the widths, patches tile the image, the crop
 * is the model's input size. */
int check_hparams(conv *cv)
{
    const hparams *hp = &cv->hp;
    if (!hp->v_layers || !hp->t_layers)
        return fail(cv, "no %s transformer blocks found", hp->v_layers ? "text" : "vision");
    if (hp->v_width % hp->v_heads || hp->t_width % hp->t_heads)
        return fail(cv, "width not divisible by heads (vision %u/%u, text %u/%u)", hp->v_width,
                    hp->v_heads, hp->t_width, hp->t_heads);
    if (hp->image_size % hp->patch)
        return fail(cv, "image_size %u is not a multiple of patch_size %u", hp->image_size, hp->patch);
    if (hp->crop != hp->image_size)
        return fail(cv, "crop_size %u differs from the model's image_size %u", hp->crop,
                    hp->image_size);
    if ((uint64_t)3 * hp->patch * hp->patch > UINT32_MAX ||
        (uint64_t)(hp->image_size / hp->patch) * (hp->image_size / hp->patch) + 1 > MAX_HYPER)
        return fail(cv, "image_size/patch_size out of range");
    return 0;
}

/* --name, else the config's _name_or_path, else ViT-<size>-<patch>[-<image size>] from the
 * widths OpenAI's models use (ViT-W<width>-P<patch> for others). */
void derive_name(conv *cv)
{
    hparams *hp = &cv->hp;
    if (cv->name_opt) { snprintf(hp->name, sizeof hp->name, "%s", cv->name_opt); return; }
    if (hp->name[0]) return;
    static const struct { uint32_t w; const char *s; } sizes[] = {
        {768, "B"}, {1024, "L"}, {1280, "H"}, {1408, "g"}, {1664, "bigG"}};
    const char *s = NULL;
    for (size_t i = 0; i < sizeof sizes / sizeof *sizes; i++)
        if (sizes[i].w == hp->v_width) s = sizes[i].s;
    int n = s ? snprintf(hp->name, sizeof hp->name, "ViT-%s-%u", s, hp->patch)
              : snprintf(hp->name, sizeof hp->name, "ViT-W%u-P%u", hp->v_width, hp->patch);
    if (hp->image_size != 224 && n > 0 && (size_t)n < sizeof hp->name)
        snprintf(hp->name + n, sizeof hp->name - (size_t)n, "-%u", hp->image_size);
}
