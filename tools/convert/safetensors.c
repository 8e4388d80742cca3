/* safetensors.c -- reads model.safetensors (and open_clip_model.safetensors): a u64 header
 * length, a JSON header {name: {dtype, shape, data_offsets}} (parsed by json.c), then the
 * data. Every tensor is checked against the file before it enters the table; its bytes stay
 * in the mapping.
 *
 * It must not know CLIP tensor names, nor convert any value: weights.c and the writer do.
 * Start from load_safetensors, its one function.
 */
#include "convert.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

int load_safetensors(conv *cv)
{
    const char *path = cv->weights_path;
    const uint8_t *d = cv->map.data;
    size_t size = cv->map.size;
    if (size < 8) return fail(cv, "%s: truncated (no header)", path);
    uint64_t hlen = rd64(d);
    if (hlen > 100000000u || hlen > size - 8)
        return fail(cv, "%s: header length %llu does not fit the %zu-byte file (truncated?)",
                    path, (unsigned long long)hlen, size);
    char jerr[256];
    clip_json_doc *doc = clip_json_parse((const char *)d + 8, (size_t)hlen, 8, jerr,
                                         sizeof jerr);
    if (!doc) return fail(cv, "%s: bad JSON header: %s", path, jerr);
    const clip_json *root = clip_json_root(doc);
    int rc = 0;
    if (root->type != CLIP_JSON_OBJECT) {
        rc = fail(cv, "%s: header is not a JSON object", path);
        goto out;
    }
    const uint8_t *base = d + 8 + hlen;
    uint64_t data_size = size - 8 - hlen;
    cv->t = calloc(root->n ? root->n : 1, sizeof *cv->t);
    if (!cv->t || strmap_init(&cv->tmap, root->n) != 0) {
        rc = fail(cv, "out of memory");
        goto out;
    }
    for (size_t i = 0; i < root->n && rc == 0; i++) {
        const char *key = root->keys[i];
        if (strcmp(key, "__metadata__") == 0) continue;
        const clip_json *v = &root->items[i];
        const clip_json *dt = clip_json_get(v, "dtype"), *sh = clip_json_get(v, "shape"),
                        *off = clip_json_get(v, "data_offsets");
        if (v->type != CLIP_JSON_OBJECT || !dt || dt->type != CLIP_JSON_STRING || !sh ||
            sh->type != CLIP_JSON_ARRAY || !off || off->type != CLIP_JSON_ARRAY || off->n != 2) {
            rc = fail(cv, "%s: tensor %s: malformed header entry", path, key);
            break;
        }
        stensor t = {0};
        t.entry = -1;
        if (strlen(key) != root->key_lens[i] || sh->n > MAX_SRC_DIMS) {
            rc = fail(cv, "%s: tensor %s: bad name or too many dimensions", path, key);
            break;
        }
        snprintf(t.dtype_name, sizeof t.dtype_name, "%s", dt->str);
        t.dtype = !strcmp(dt->str, "F32") ? DT_F32 : !strcmp(dt->str, "F16") ? DT_F16
                : !strcmp(dt->str, "BF16") ? DT_BF16 : DT_OTHER;
        t.ndim = (int)sh->n;
        for (size_t k = 0; k < sh->n; k++) {
            const clip_json *e = &sh->items[k];
            if (e->type != CLIP_JSON_NUMBER || !e->is_integer || e->number < 0 ||
                e->number > 4e15) {
                rc = fail(cv, "%s: tensor %s: bad shape", path, key);
                break;
            }
            t.shape[k] = (int64_t)e->number;
        }
        if (rc) break;
        double b = off->items[0].number, e = off->items[1].number;
        if (off->items[0].type != CLIP_JSON_NUMBER || off->items[1].type != CLIP_JSON_NUMBER ||
            !off->items[0].is_integer || !off->items[1].is_integer || b < 0 || e < b ||
            e > (double)data_size) {
            rc = fail(cv, "%s: tensor %s: data_offsets [%.0f, %.0f] outside the %llu data "
                      "bytes (truncated file?)", path, key, b, e,
                      (unsigned long long)data_size);
            break;
        }
        if (shape_numel(t.shape, t.ndim, &t.numel) != 0) {
            rc = fail(cv, "%s: tensor %s: shape too large", path, key);
            break;
        }
        if (t.dtype != DT_OTHER && (uint64_t)(e - b) != t.numel * (uint64_t)element_size(t.dtype)) {
            rc = fail(cv, "%s: tensor %s: %llu data bytes for %llu %s elements", path, key,
                      (unsigned long long)(e - b), (unsigned long long)t.numel, dt->str);
            break;
        }
        t.data = base + (uint64_t)b;
        t.name = strdup(key);
        if (!t.name) { rc = fail(cv, "out of memory"); break; }
        if (add_tensor(cv, &t) != 0) { free(t.name); rc = -1; }
    }
out:
    clip_json_free(doc);
    return rc;
}
