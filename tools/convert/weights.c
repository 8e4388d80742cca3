/* weights.c -- the source weights: which file in the folder holds them, the table of
 * source tensors the readers fill (names -> shape, dtype, where the bytes are), and the
 * way to their bytes.
 *
 * The readers themselves live in safetensors.c and torch.c (with zip.c and pickle.c);
 * this room knows neither format's insides, nor any CLIP tensor name. Start from
 * open_weights.
 */
#include "convert.h"

#include <stdio.h>
#include <string.h>

/* The first weight file found, in this order; the two safetensors names go to
 * load_safetensors, the two PyTorch ones to load_torch_zip. */
int open_weights(conv *cv)
{
    static const char *names[] = {"model.safetensors", "open_clip_model.safetensors",
                                  "pytorch_model.bin", "open_clip_pytorch_model.bin"};
    for (size_t i = 0; i < sizeof names / sizeof *names; i++) {
        if (join(cv, cv->weights_path, sizeof cv->weights_path, cv->src, names[i]) != 0) return -1;
        if (!file_exists(cv->weights_path)) continue;
        if (map_file(cv, cv->weights_path, &cv->map) != 0) return -1;
        return i < 2 ? load_safetensors(cv) : load_torch_zip(cv);
    }
    return fail(cv, "missing file %s/model.safetensors (or pytorch_model.bin): no weights in %s",
                cv->src, cv->src);
}

/* The table's names are its strmap keys. */
static const char *tensor_key(const void *ctx, uint32_t i, size_t *len)
{
    const conv *cv = ctx;
    *len = strlen(cv->t[i].name);
    return cv->t[i].name;
}

stensor *find_tensor(conv *cv, const char *name)
{
    long i = strmap_find(&cv->tmap, name, strlen(name), tensor_key, cv, -1);
    return i < 0 ? NULL : &cv->t[i];
}

int add_tensor(conv *cv, stensor *t)
{
    if (find_tensor(cv, t->name)) return fail(cv, "%s: tensor %s appears twice",
                                              cv->weights_path, t->name);
    cv->t[cv->nt] = *t;
    strmap_find(&cv->tmap, t->name, strlen(t->name), tensor_key, cv, (long)cv->nt);
    cv->nt++;
    return 0;
}

int element_size(int dtype) { return dtype == DT_F32 ? 4 : 2; }

/* numel of a shape, refusing anything that overflows 2^62 bytes. */
int shape_numel(const int64_t *shape, int ndim, uint64_t *numel)
{
    uint64_t n = 1;
    for (int i = 0; i < ndim; i++) {
        if (shape[i] < 0) return -1;
        if (shape[i] && n > (UINT64_C(1) << 59) / (uint64_t)shape[i]) return -1;
        n *= (uint64_t)shape[i];
    }
    *numel = n;
    return 0;
}

/* "[3, 4]", for errors. */
void shape_str(char *out, size_t cap, const int64_t *s, int n)
{
    size_t at = (size_t)snprintf(out, cap, "[");
    for (int i = 0; i < n && at < cap; i++)
        at += (size_t)snprintf(out + at, cap - at, "%s%lld", i ? ", " : "", (long long)s[i]);
    if (at < cap) snprintf(out + at, cap - at, "]");
}

const uint8_t *tensor_data(conv *cv, stensor *t)
{
    if (t->entry < 0) return t->data;
    const uint8_t *base = entry_bytes(cv, &cv->ze[t->entry]);
    return base ? base + t->entry_offset : NULL;
}
