/* tests/tiny_model.h -- small .clip files built in memory, for tests/test_model.c.
 *
 * build() writes a complete version-2 file for any hyperparameters (tiny_hparams gives the
 * test model: two layers per tower, widths 32 and 24): every tensor the loader expects,
 * with random weights drawn as halves so that the f32 and f16 files hold the same model,
 * and a byte-level tokenizer section. It also returns where the sections are, so that the
 * tests can corrupt them. The file layout is docs/clip-format.md's; the values are ours. */
#ifndef CLIP_TINY_MODEL_H
#define CLIP_TINY_MODEL_H

#include "clip.h"

#include <math.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

static void wr32(uint8_t *p, uint32_t v)
{
    for (int i = 0; i < 4; i++) p[i] = (uint8_t)(v >> (8 * i));
}
static void wr64(uint8_t *p, uint64_t v)
{
    wr32(p, (uint32_t)v);
    wr32(p + 4, (uint32_t)(v >> 32));
}
static void wrf(uint8_t *p, float f)
{
    uint32_t u;
    memcpy(&u, &f, 4);
    wr32(p, u);
}
static uint32_t rd32(const uint8_t *p)
{
    return (uint32_t)p[0] | (uint32_t)p[1] << 8 | (uint32_t)p[2] << 16 | (uint32_t)p[3] << 24;
}
static uint64_t rd64(const uint8_t *p) { return rd32(p) | (uint64_t)rd32(p + 4) << 32; }

static uint64_t rng_state;
static uint32_t rnd(void)
{
    rng_state = rng_state * 6364136223846793005ull + 1442695040888963407ull;
    return (uint32_t)(rng_state >> 33);
}

/* The value of an IEEE half, computed independently of the engine's bit twiddling. */
static float half_value(uint16_t h)
{
    int sign = h >> 15, exp = (h >> 10) & 31, man = h & 1023;
    float v;
    if (exp == 31) v = man ? NAN : INFINITY;
    else if (exp == 0) v = ldexpf((float)man, -24);
    else v = ldexpf((float)(1024 + man), exp - 25);
    return sign ? -v : v;
}

/* A random normal half with exponent in [lo, hi] (values 2^(lo-15) .. 2^(hi-14)). */
static uint16_t rnd_half(int lo, int hi)
{
    uint32_t r = rnd();
    int exp = lo + (int)(r % (uint32_t)(hi - lo + 1));
    return (uint16_t)((r >> 8 & 1) << 15 | exp << 10 | (r >> 12 & 1023));
}

typedef struct built {
    uint8_t *data;
    size_t size;
    uint64_t tok_off, tab_off;
    uint32_t n_tensors;
} built;

typedef struct tdesc {
    char name[56];
    uint32_t n_dims, d0, d1;
    int kind;   /* 0 weight, 1 LayerNorm gain, 2 special f16 patterns, 3 q/k/v weight     */
} tdesc;

static uint32_t add_t(tdesc *t, uint32_t n, const char *name, uint32_t n_dims, uint32_t d0,
                      uint32_t d1, int kind)
{
    size_t len = strlen(name) < sizeof t[n].name ? strlen(name) : sizeof t[n].name - 1;
    memcpy(t[n].name, name, len);
    t[n].name[len] = 0;
    t[n].n_dims = n_dims;
    t[n].d0 = d0;
    t[n].d1 = n_dims > 1 ? d1 : 1;
    t[n].kind = kind;
    return n + 1;
}

static uint32_t add_layers(tdesc *t, uint32_t n, char tw, uint32_t layers, uint32_t w,
                           uint32_t m)
{
    for (uint32_t l = 0; l < layers; l++) {
        char b[64];
#define L(suffix, nd, a, c, k)                                                             \
    snprintf(b, sizeof b, "%c.layers.%u." suffix, tw, l);                                  \
    n = add_t(t, n, b, nd, a, c, k);
        L("ln1.weight", 1, w, 1, 1) L("ln1.bias", 1, w, 1, 0)
        L("attn.qkv.weight", 2, 3 * w, w, 3) L("attn.qkv.bias", 1, 3 * w, 1, 0)
        L("attn.out.weight", 2, w, w, 0) L("attn.out.bias", 1, w, 1, 0)
        L("ln2.weight", 1, w, 1, 1) L("ln2.bias", 1, w, 1, 0)
        L("mlp.fc1.weight", 2, m, w, 0) L("mlp.fc1.bias", 1, m, 1, 0)
        L("mlp.fc2.weight", 2, w, m, 0) L("mlp.fc2.bias", 1, w, 1, 0)
#undef L
    }
    return n;
}

/* The byte-level stand-ins of OpenAI's bytes_to_unicode, as UTF-8. */
static size_t stand_in(unsigned b, char *out)
{
    unsigned cp = b;
    if (!((b >= 0x21 && b <= 0x7e) || (b >= 0xa1 && b <= 0xac) || (b >= 0xae))) {
        unsigned n = 0;
        for (unsigned x = 0; x < b; x++)
            if (!((x >= 0x21 && x <= 0x7e) || (x >= 0xa1 && x <= 0xac) || (x >= 0xae))) n++;
        cp = 256 + n;
    }
    if (cp < 0x80) {
        out[0] = (char)cp;
        return 1;
    }
    out[0] = (char)(0xc0 | cp >> 6);
    out[1] = (char)(0x80 | (cp & 63));
    return 2;
}

#define TEST_VOCAB 515

/* Tokenizer section: 256 byte tokens, 256 with "</w>", "ab</w>" (one merge), SOT, EOT. */
static size_t tokenizer_section(uint8_t *out)
{
    size_t p = 16;
    char s[16];
    for (int pass = 0; pass < 2; pass++)
        for (unsigned b = 0; b < 256; b++) {
            size_t n = stand_in(b, s);
            if (pass) memcpy(s + n, "</w>", 4), n += 4;
            out[p] = (uint8_t)n, out[p + 1] = 0;
            memcpy(out + p + 2, s, n);
            p += 2 + n;
        }
    const char *extra[3] = {"ab</w>", "<|startoftext|>", "<|endoftext|>"};
    for (int i = 0; i < 3; i++) {
        size_t n = strlen(extra[i]);
        out[p] = (uint8_t)n, out[p + 1] = 0;
        memcpy(out + p + 2, extra[i], n);
        p += 2 + n;
    }
    wr32(out, TEST_VOCAB);
    wr32(out + 4, 1);
    wr32(out + 8, 513);
    wr32(out + 12, 514);
    wr32(out + p, 'a'), wr32(out + p + 4, 256 + 'b'), wr32(out + p + 8, 512);
    return p + 12;
}

static clip_hparams tiny_hparams(clip_activation act)
{
    clip_hparams hp;
    memset(&hp, 0, sizeof hp);
    snprintf(hp.name, sizeof hp.name, "test-tiny");
    hp.image_size = 32, hp.patch_size = 8;
    hp.vision_width = 32, hp.vision_layers = 2, hp.vision_heads = 4, hp.vision_mlp = 64;
    hp.vision_ln_eps = 1e-5f;
    hp.text_width = 24, hp.text_layers = 2, hp.text_heads = 3, hp.text_mlp = 48;
    hp.text_ln_eps = 1e-5f;
    hp.context_length = 16, hp.vocab_size = TEST_VOCAB, hp.embed_dim = 16;
    hp.activation = act;
    hp.resize_size = 32, hp.crop_size = 32;
    for (int c = 0; c < 3; c++) hp.image_mean[c] = 0.5f, hp.image_std[c] = 0.25f;
    return hp;
}

/* Writes a complete file for hp: every tensor in f32 or f16 (the same half values either
 * way, so the two files hold the same model), or with `specials` the token embedding
 * holding every half bit pattern class (subnormals, zeros, infinities, NaNs). */
static built build(const clip_hparams *hp, int f16, int specials, uint64_t seed)
{
    static tdesc t[256];
    uint32_t n = 0, g = hp->image_size / hp->patch_size;
    uint32_t vw = hp->vision_width, tw = hp->text_width, E = hp->embed_dim;
    n = add_t(t, n, "v.patch_embed.weight", 2, vw, 3 * hp->patch_size * hp->patch_size, 0);
    n = add_t(t, n, "v.class_embed", 1, vw, 1, 0);
    n = add_t(t, n, "v.pos_embed", 2, g * g + 1, vw, 0);
    n = add_t(t, n, "v.ln_pre.weight", 1, vw, 1, 1);
    n = add_t(t, n, "v.ln_pre.bias", 1, vw, 1, 0);
    n = add_layers(t, n, 'v', hp->vision_layers, vw, hp->vision_mlp);
    n = add_t(t, n, "v.ln_post.weight", 1, vw, 1, 1);
    n = add_t(t, n, "v.ln_post.bias", 1, vw, 1, 0);
    n = add_t(t, n, "v.proj", 2, E, vw, 0);
    n = add_t(t, n, "t.token_embed", 2, hp->vocab_size, tw, specials ? 2 : 0);
    n = add_t(t, n, "t.pos_embed", 2, hp->context_length, tw, 0);
    n = add_layers(t, n, 't', hp->text_layers, tw, hp->text_mlp);
    n = add_t(t, n, "t.ln_final.weight", 1, tw, 1, 1);
    n = add_t(t, n, "t.ln_final.bias", 1, tw, 1, 0);
    n = add_t(t, n, "t.proj", 2, E, tw, 0);
    n = add_t(t, n, "logit_scale", 1, 1, 1, 0);

    size_t es = f16 ? 2 : 4;
    uint64_t tok_off = 256;
    static uint8_t tok[8192];
    size_t tok_size = tokenizer_section(tok);
    uint64_t tab_off = (tok_off + tok_size + 7) / 8 * 8;
    uint64_t pos = (tab_off + 96ull * n + 63) / 64 * 64;
    uint64_t offs[256];
    for (uint32_t i = 0; i < n; i++) {
        offs[i] = pos;
        pos = (pos + (uint64_t)t[i].d0 * t[i].d1 * es + 63) / 64 * 64;
    }
    uint64_t last = n - 1;
    size_t size = offs[last] + (size_t)t[last].d0 * t[last].d1 * es;
    uint8_t *d = calloc(1, size);

    memcpy(d, "CLIPMODL", 8);
    wr32(d + 8, 2);
    wr32(d + 12, 256);
    memcpy(d + 16, hp->name, strlen(hp->name));
    const uint32_t u[] = {hp->image_size, hp->patch_size, hp->vision_width, hp->vision_layers,
                          hp->vision_heads, hp->vision_mlp};
    for (int i = 0; i < 6; i++) wr32(d + 80 + 4 * i, u[i]);
    wrf(d + 104, hp->vision_ln_eps);
    const uint32_t v[] = {hp->text_width, hp->text_layers, hp->text_heads, hp->text_mlp};
    for (int i = 0; i < 4; i++) wr32(d + 108 + 4 * i, v[i]);
    wrf(d + 124, hp->text_ln_eps);
    const uint32_t x[] = {hp->context_length, hp->vocab_size, hp->embed_dim, hp->activation,
                          hp->resize_size, hp->crop_size};
    for (int i = 0; i < 6; i++) wr32(d + 128 + 4 * i, x[i]);
    for (int c = 0; c < 3; c++) wrf(d + 152 + 4 * c, hp->image_mean[c]);
    for (int c = 0; c < 3; c++) wrf(d + 164 + 4 * c, hp->image_std[c]);
    wr64(d + 176, tok_off);
    wr64(d + 184, tok_size);
    wr64(d + 192, tab_off);
    wr32(d + 200, n);
    wr64(d + 208, size);
    memcpy(d + tok_off, tok, tok_size);

    rng_state = seed;
    for (uint32_t i = 0; i < n; i++) {
        uint8_t *e = d + tab_off + 96ull * i;
        memcpy(e, t[i].name, strlen(t[i].name));
        wr32(e + 56, f16 ? 1 : 0);
        wr32(e + 60, t[i].n_dims);
        wr32(e + 64, t[i].d0);
        wr32(e + 68, t[i].d1);
        wr32(e + 72, 1);
        wr32(e + 76, 1);
        uint64_t count = (uint64_t)t[i].d0 * t[i].d1;
        wr64(e + 80, offs[i]);
        wr64(e + 88, count * es);
        for (uint64_t k = 0; k < count; k++) {
            uint16_t h;
            if (t[i].kind == 2)  /* every subnormal and zero, then a spread of all bits */
                h = k < 2048 ? (uint16_t)((k & 1023) | (k >> 10) << 15)
                             : (uint16_t)(k * 40503u);
            else if (t[i].kind == 1)
                h = rnd_half(14, 15);   /* LayerNorm gains around 1                       */
            else if (t[i].kind == 3)
                h = rnd_half(11, 14);   /* large enough that attention is far from uniform */
            else
                h = rnd_half(8, 12);    /* weights and biases about 0.01 .. 0.25          */
            uint8_t *dst = d + offs[i] + k * es;
            if (f16) dst[0] = (uint8_t)h, dst[1] = (uint8_t)(h >> 8);
            else wrf(dst, half_value(h));
        }
    }
    return (built){d, size, tok_off, tab_off, n};
}

#endif
