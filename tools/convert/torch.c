/* torch.c -- PyTorch archives: a zip (zip.c) holding <prefix>/data.pkl, the pickled object,
 * and <prefix>/data/<key>, one entry per storage, plus <prefix>/byteorder. torch.save
 * writes this for a state dict (pytorch_model.bin); TorchScript archives use the same
 * layout for a module tree. Here: opening such an archive up to its pickled value
 * (run_archive_pickle), a pickled tensor as a source tensor checked against its storage
 * entry (add_pickled_tensor), and the state dict walk that load_torch_zip uses.
 *
 * It must not know CLIP tensor names or read tensor values (the plan and the writer do),
 * nor the zip or pickle encodings (zip.c and pickle.c). Start from load_torch_zip.
 */
#include "convert.h"

#include <limits.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

/* A pickled tensor `key` as a source tensor: contiguous, its storage entry
 * <prefix>/data/<storage key> present, and its elements inside that storage. */
static int add_pickled_tensor(conv *cv, const char *key, size_t klen, const pval *v,
                              const char *prefix)
{
    stensor t = {0};
    t.name = strndup(key, klen);
    if (!t.name) return fail(cv, "out of memory");
    if (strlen(t.name) != klen) { free(t.name); return fail(cv, "data.pkl: bad key"); }
    t.dtype = v->dtype;
    snprintf(t.dtype_name, sizeof t.dtype_name, "%s", v->dtype_name);
    t.ndim = v->ndim;
    memcpy(t.shape, v->shape, sizeof t.shape);
    int bad = shape_numel(t.shape, t.ndim, &t.numel) != 0;
    /* Contiguous row-major: each stride is the product of the sizes after it (a dim of
     * size 1 may carry any stride). */
    int64_t expect = 1;
    for (int d = t.ndim - 1; d >= 0 && !bad; d--) {
        if (t.shape[d] != 1 && v->stride[d] != expect) bad = 2;
        expect *= t.shape[d];
    }
    char skey[64], ename[PATH_MAX + 80];
    snprintf(skey, sizeof skey, "%.*s", (int)(v->storage->slen < 60 ? v->storage->slen : 60),
             v->storage->s);
    snprintf(ename, sizeof ename, "%s/data/%s", prefix, skey);
    const zentry *z = find_entry(cv, ename);
    uint64_t es = (uint64_t)v->elsize;
    if (bad == 2) {
        free(t.name);
        return fail(cv, "%s: tensor %.*s is not contiguous", cv->weights_path, (int)klen, key);
    }
    if (bad || !z || v->storage->numel > z->size / es ||
        (uint64_t)v->i > v->storage->numel || t.numel > v->storage->numel - (uint64_t)v->i) {
        free(t.name);
        return fail(cv, "%s: tensor %.*s: %s", cv->weights_path, (int)klen, key,
                    !z ? "its storage entry is missing from the archive"
                       : "offset/size outside its storage (corrupt checkpoint)");
    }
    t.entry = (int)(z - cv->ze);
    t.entry_offset = (uint64_t)v->i * es;
    if (add_tensor(cv, &t) != 0) { free(t.name); return -1; }
    return 0;
}

/* The table of a state dict: every string key with a tensor value, in the dict's order. */
int collect_state_dict(conv *cv, const pval *dict, const char *prefix)
{
    if (dict->kind != PV_DICT) return fail(cv, "data.pkl: not a state dict");
    /* A training checkpoint wraps the weights as {"state_dict": {...}}. */
    for (size_t i = 0; i + 1 < dict->n; i += 2) {
        const pval *k = dict->items[i], *v = dict->items[i + 1];
        if (k->kind == PV_STR && k->slen == 10 && !memcmp(k->s, "state_dict", 10) &&
            v->kind == PV_DICT)
            dict = v;
    }
    cv->t = calloc(dict->n / 2 + 1, sizeof *cv->t);
    if (!cv->t || strmap_init(&cv->tmap, dict->n / 2 + 1) != 0) return fail(cv, "out of memory");
    for (size_t i = 0; i + 1 < dict->n; i += 2) {
        const pval *k = dict->items[i], *v = dict->items[i + 1];
        if (k->kind != PV_STR || v->kind != PV_TENSOR) continue;
        if (add_pickled_tensor(cv, k->s, k->slen, v, prefix) != 0) return -1;
    }
    return 0;
}

/* Opens the archive whose directory is in cv->ze: finds its <prefix>/data.pkl (prefix
 * is the record name torch.save chose, such as "archive"), refuses a big-endian one, and
 * runs the pickle. Returns the pickled value, which lives in pk until pickle_free. */
static pval *run_archive_pickle(conv *cv, pickle *pk, char *prefix, size_t cap)
{
    zentry *pkl = NULL;
    for (size_t i = 0; i < cv->nze && !pkl; i++) {
        size_t n = strlen(cv->ze[i].name);
        const char *slash = strchr(cv->ze[i].name, '/');
        if (n > 9 && !strcmp(cv->ze[i].name + n - 9, "/data.pkl") && slash == cv->ze[i].name + n - 9)
            pkl = &cv->ze[i];
    }
    if (!pkl) return fail(cv, "%s: zip archive without <name>/data.pkl: not a PyTorch checkpoint",
                          cv->weights_path), NULL;
    const zentry *bo = NULL;
    snprintf(prefix, cap, "%.*s", (int)(strlen(pkl->name) - 9), pkl->name);
    char boname[PATH_MAX + 16];
    snprintf(boname, sizeof boname, "%s/byteorder", prefix);
    if ((bo = find_entry(cv, boname)) != NULL) {
        const uint8_t *b = entry_bytes(cv, (zentry *)bo);
        if (!b) return NULL;
        if (bo->size != 6 || memcmp(b, "little", 6) != 0)
            return fail(cv, "%s: big-endian checkpoint not supported", cv->weights_path), NULL;
    }
    const uint8_t *code = entry_bytes(cv, pkl);
    if (!code) return NULL;
    *pk = (pickle){.cv = cv, .start = code, .p = code, .end = code + pkl->size,
                   .limit = (size_t)pkl->size + 16};
    return run_pickle(pk);
}

/* pytorch_model.bin and open_clip_pytorch_model.bin: a torch.save'd state dict. */
int load_torch_zip(conv *cv)
{
    if (load_zip_directory(cv) != 0) return -1;
    char prefix[PATH_MAX];
    pickle pk = {0};
    pval *top = run_archive_pickle(cv, &pk, prefix, sizeof prefix);
    int rc = top ? collect_state_dict(cv, top, prefix) : -1;
    pickle_free(&pk);
    release_entries(cv);
    return rc;
}
