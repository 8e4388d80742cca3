/* clip-convert.c -- turns a downloaded CLIP checkpoint folder into one `.clip` file.
 *
 *   clip-convert SRC OUT.clip [--dtype f32|f16] [--name NAME] [--act quick_gelu|gelu]
 *                [--bpe FILE]
 *
 * SRC is a Hugging Face CLIP folder (config.json, optional preprocessor_config.json,
 * vocab.json + merges.txt, model.safetensors or pytorch_model.bin) or a folder holding an
 * OpenAI/OpenCLIP state dict (`visual.conv1.weight`, ...) whose hyperparameters are read
 * off the tensor shapes and whose tokenizer comes from bpe_simple_vocab_16e6.txt.gz.
 *
 * Everything is read in C: safetensors (JSON header through json.c), PyTorch zip
 * checkpoints (the zip directory and the data.pkl pickle, run on a small stack machine),
 * gzip (inflated by stb_image's zlib decoder). The output layout is docs/clip-format.md;
 * tensors are streamed from the mapped source to OUT.tmp, renamed into place at the end.
 */
#include "clip_internal.h"   /* CLIP_PANEL: the format's panel width */
#include "json.h"

#include <stb/stb_image.h>

#include <errno.h>
#include <fcntl.h>
#include <limits.h>
#include <math.h>
#include <stdarg.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <unistd.h>

/* ---------------------------------------------------------------------------------------
 * Limits and errors
 * ------------------------------------------------------------------------------------- */

#define MAX_JSON_FILE   (256u << 20)   /* config/vocab files; a safetensors header is capped
                                          at 100 MB by the format itself                   */
#define MAX_TEXT_FILE   (64u << 20)    /* merges.txt, the inflated bpe vocabulary          */
#define MAX_SRC_DIMS    8
#define MAX_HYPER       (1u << 20)     /* any width, layer count, vocab ... above is bogus */
#define CHUNK_ELEMS     (1u << 16)

typedef struct conv conv;

/* Formats the one-line reason into cv->err and returns -1, so `return fail(...)` reads as
 * what it does. */
static int fail(conv *cv, const char *fmt, ...) __attribute__((format(printf, 2, 3)));

/* ---------------------------------------------------------------------------------------
 * Little helpers: files, paths, a string -> index hash map
 * ------------------------------------------------------------------------------------- */

typedef struct mapped {
    const uint8_t *data;
    size_t size;
} mapped;

static int file_exists(const char *path)
{
    struct stat st;
    return stat(path, &st) == 0 && S_ISREG(st.st_mode);
}

static int join(conv *cv, char *out, size_t cap, const char *dir, const char *name);

typedef struct strmap {
    uint32_t *slots;   /* index + 1, 0 = empty */
    size_t cap;        /* power of two          */
} strmap;

static uint64_t hash_bytes(const char *s, size_t n)
{
    uint64_t h = 1469598103934665603ull;   /* FNV-1a */
    for (size_t i = 0; i < n; i++) h = (h ^ (uint8_t)s[i]) * 1099511628211ull;
    return h;
}

static int strmap_init(strmap *m, size_t n)
{
    m->cap = 16;
    while (m->cap < n * 2) m->cap <<= 1;
    m->slots = calloc(m->cap, sizeof *m->slots);
    return m->slots ? 0 : -1;
}

static void strmap_free(strmap *m) { free(m->slots); m->slots = NULL; }

/* Keys live with the caller: key(i) returns the string of index i. Returns the index of
 * (s, n), or -1. With insert_index >= 0, inserts it when absent and returns -1 then. */
typedef const char *(*strmap_key_fn)(const void *ctx, uint32_t i, size_t *len);

static long strmap_find(const strmap *m, const char *s, size_t n, strmap_key_fn key,
                        const void *ctx, long insert_index)
{
    size_t mask = m->cap - 1, at = (size_t)hash_bytes(s, n) & mask;
    for (;;) {
        uint32_t v = m->slots[at];
        if (!v) {
            if (insert_index >= 0) m->slots[at] = (uint32_t)insert_index + 1;
            return -1;
        }
        size_t klen;
        const char *k = key(ctx, v - 1, &klen);
        if (klen == n && memcmp(k, s, n) == 0) return (long)(v - 1);
        at = (at + 1) & mask;
    }
}

/* ---------------------------------------------------------------------------------------
 * Half and bfloat16
 * ------------------------------------------------------------------------------------- */

static uint32_t f32_bits(float f) { uint32_t u; memcpy(&u, &f, 4); return u; }
static float bits_f32(uint32_t u) { float f; memcpy(&f, &u, 4); return f; }

/* f32 -> f16, round to nearest, ties to even; overflow goes to inf, NaN stays NaN (quiet,
 * top payload bits kept), results below the f16 normal range become subnormals. */
static uint16_t f32_to_f16(float f)
{
    uint32_t x = f32_bits(f);
    uint16_t sign = (uint16_t)((x >> 16) & 0x8000);
    uint32_t ax = x & 0x7fffffffu;
    if (ax >= 0x7f800000u)
        return sign | (ax > 0x7f800000u ? (uint16_t)(0x7e00 | ((ax >> 13) & 0x3ff)) : 0x7c00);
    if (ax >= 0x477ff000u) return sign | 0x7c00;   /* >= 65520 rounds past 65504 */
    if (ax >= 0x38800000u) {                       /* stays normal: rebias 127 -> 15 */
        uint32_t h = (ax - 0x38000000u) >> 13, rem = ax & 0x1fff;
        if (rem > 0x1000 || (rem == 0x1000 && (h & 1))) h++;
        return sign | (uint16_t)h;
    }
    /* Subnormal: value = m * 2^(e-150); in units of 2^-24 that is m >> (126 - e). An f32
     * subnormal (e = 0) is far below half the smallest f16 subnormal. */
    int e = (int)(ax >> 23);
    int shift = 126 - e;
    if (e == 0 || shift > 24) return sign;
    uint32_t m = (ax & 0x7fffff) | 0x800000;
    uint32_t h = m >> shift, rem = m & ((1u << shift) - 1), half = 1u << (shift - 1);
    if (rem > half || (rem == half && (h & 1))) h++;   /* may carry into the first normal */
    return sign | (uint16_t)h;
}

static float f16_to_f32(uint16_t h)
{
    uint32_t sign = (uint32_t)(h & 0x8000) << 16, e = (h >> 10) & 0x1f, m = h & 0x3ff;
    if (e == 0x1f) return bits_f32(sign | 0x7f800000u | (m << 13));
    if (e) return bits_f32(sign | ((e + 112) << 23) | (m << 13));
    if (!m) return bits_f32(sign);
    e = 113;                                  /* normalize the subnormal */
    while (!(m & 0x400)) { m <<= 1; e--; }
    return bits_f32(sign | (e << 23) | ((m & 0x3ff) << 13));
}

/* ---------------------------------------------------------------------------------------
 * Source tensors (from either weight file kind)
 * ------------------------------------------------------------------------------------- */

enum { DT_F32, DT_F16, DT_BF16, DT_OTHER };

typedef struct stensor {
    char *name;
    int dtype;
    char dtype_name[24];        /* as the file spells it, for errors                       */
    int ndim;
    int64_t shape[MAX_SRC_DIMS];
    uint64_t numel;
    const uint8_t *data;        /* safetensors: in the map; zip: NULL until the entry is read */
    int entry;                  /* zip entry index, -1 for safetensors                     */
    uint64_t entry_offset;      /* byte offset inside the zip entry                        */
    int used;
} stensor;

typedef struct zentry {
    char *name;
    uint64_t data_off, comp_size, size;
    int method;
    uint32_t crc;
    int checked;                /* the stored bytes matched the CRC                        */
    uint8_t *inflated;          /* deflated entries while a tensor of theirs is written    */
} zentry;

/* ---------------------------------------------------------------------------------------
 * Hyperparameters, tokenizer, the output plan
 * ------------------------------------------------------------------------------------- */

typedef struct hparams {
    char name[64];
    uint32_t image_size, patch, v_width, v_layers, v_heads, v_mlp;
    uint32_t t_width, t_layers, t_heads, t_mlp, context, vocab, embed;
    float v_eps, t_eps;
    uint32_t act;               /* 0 quick_gelu, 1 gelu */
    uint32_t resize, crop;
    float mean[3], std[3];
} hparams;

typedef struct tokenizer {
    uint32_t n;
    char *arena;                /* all token strings back to back                          */
    size_t *off, *len;
    uint32_t n_merges;
    uint32_t *merges;           /* n_merges x (left, right, merged)                        */
    uint32_t sot, eot;
    strmap map;
} tokenizer;

typedef struct otensor {
    char name[56];
    int ndim;
    uint32_t shape[4];
    stensor *parts[3];          /* concatenated in order (q, k, v) */
    int nparts;
    int transpose;              /* the single part is [R, C]; written as [C, R]            */
    int panels;                 /* a linear weight: written in 32-row panels               */
    uint32_t dtype;
    uint64_t numel, offset, size;
} otensor;

struct conv {
    char err[1024];
    const char *src;
    /* options */
    int want_f16;
    const char *name_opt, *act_opt, *bpe_opt;
    /* weights */
    char weights_path[PATH_MAX];
    mapped map;
    stensor *t;
    size_t nt;
    strmap tmap;
    zentry *ze;
    size_t nze;
    int openai_naming;
    /* results */
    hparams hp;
    tokenizer tok;
    otensor *ot;
    size_t not, capot;
};

static int fail(conv *cv, const char *fmt, ...)
{
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(cv->err, sizeof cv->err, fmt, ap);
    va_end(ap);
    return -1;
}

static int join(conv *cv, char *out, size_t cap, const char *dir, const char *name)
{
    int n = snprintf(out, cap, "%s/%s", dir, name);
    if (n < 0 || (size_t)n >= cap) return fail(cv, "path too long: %s/%s", dir, name);
    return 0;
}

/* Reads a whole (small) file into a NUL-terminated heap buffer. */
static int read_file(conv *cv, const char *path, size_t limit, char **out, size_t *len)
{
    FILE *f = fopen(path, "rb");
    if (!f) return fail(cv, "cannot open %s: %s", path, strerror(errno));
    struct stat st;
    if (fstat(fileno(f), &st) != 0 || !S_ISREG(st.st_mode)) {
        fclose(f);
        return fail(cv, "%s: not a regular file", path);
    }
    if ((uint64_t)st.st_size > limit) {
        fclose(f);
        return fail(cv, "%s: too large (%lld bytes, limit %zu)", path, (long long)st.st_size,
                    (size_t)limit);
    }
    size_t n = (size_t)st.st_size;
    char *buf = malloc(n + 1);
    if (!buf) { fclose(f); return fail(cv, "out of memory reading %s", path); }
    if (fread(buf, 1, n, f) != n) {
        free(buf);
        fclose(f);
        return fail(cv, "%s: read error", path);
    }
    fclose(f);
    buf[n] = 0;
    *out = buf;
    *len = n;
    return 0;
}

static int map_file(conv *cv, const char *path, mapped *m)
{
    int fd = open(path, O_RDONLY);
    if (fd < 0) return fail(cv, "cannot open %s: %s", path, strerror(errno));
    struct stat st;
    if (fstat(fd, &st) != 0 || !S_ISREG(st.st_mode) || st.st_size <= 0) {
        close(fd);
        return fail(cv, "%s: empty or not a regular file", path);
    }
    void *p = mmap(NULL, (size_t)st.st_size, PROT_READ, MAP_PRIVATE, fd, 0);
    close(fd);
    if (p == MAP_FAILED) return fail(cv, "cannot map %s: %s", path, strerror(errno));
    m->data = p;
    m->size = (size_t)st.st_size;
    return 0;
}

static uint16_t rd16(const uint8_t *p) { return (uint16_t)(p[0] | p[1] << 8); }
static uint32_t rd32(const uint8_t *p) { return (uint32_t)rd16(p) | (uint32_t)rd16(p + 2) << 16; }
static uint64_t rd64(const uint8_t *p) { return (uint64_t)rd32(p) | (uint64_t)rd32(p + 4) << 32; }

static uint32_t crc32_update(uint32_t crc, const uint8_t *p, size_t n)
{
    static uint32_t table[256];   /* filled once; identical on every fill */
    if (!table[1]) {
        for (uint32_t i = 0; i < 256; i++) {
            uint32_t c = i;
            for (int k = 0; k < 8; k++) c = c & 1 ? 0xedb88320u ^ (c >> 1) : c >> 1;
            table[i] = c;
        }
    }
    crc = ~crc;
    for (size_t i = 0; i < n; i++) crc = table[(crc ^ p[i]) & 0xff] ^ (crc >> 8);
    return ~crc;
}

static const char *tensor_key(const void *ctx, uint32_t i, size_t *len)
{
    const conv *cv = ctx;
    *len = strlen(cv->t[i].name);
    return cv->t[i].name;
}

static stensor *find_tensor(conv *cv, const char *name)
{
    long i = strmap_find(&cv->tmap, name, strlen(name), tensor_key, cv, -1);
    return i < 0 ? NULL : &cv->t[i];
}

static int add_tensor(conv *cv, stensor *t)
{
    if (find_tensor(cv, t->name)) return fail(cv, "%s: tensor %s appears twice",
                                              cv->weights_path, t->name);
    cv->t[cv->nt] = *t;
    strmap_find(&cv->tmap, t->name, strlen(t->name), tensor_key, cv, (long)cv->nt);
    cv->nt++;
    return 0;
}

static int element_size(int dtype) { return dtype == DT_F32 ? 4 : 2; }

/* numel of a shape, refusing anything that overflows 2^62 bytes. */
static int shape_numel(const int64_t *shape, int ndim, uint64_t *numel)
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

/* ---------------------------------------------------------------------------------------
 * safetensors: u64 header length, JSON header {name: {dtype, shape, data_offsets}}, data
 * ------------------------------------------------------------------------------------- */

static int load_safetensors(conv *cv)
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

/* ---------------------------------------------------------------------------------------
 * Zip (PyTorch's torch.save format): end record, central directory, local headers
 * ------------------------------------------------------------------------------------- */

/* The zip64 extended-information extra field holds, in this order, only those of the
 * central record's size, compressed size and offset that were saturated to 0xFFFFFFFF. */
static int zip64_extra(const uint8_t *x, size_t n, uint64_t *size, uint64_t *csize,
                       uint64_t *off)
{
    while (n >= 4) {
        uint16_t id = rd16(x), len = rd16(x + 2);
        if ((size_t)len + 4 > n) return -1;
        if (id == 0x0001) {
            const uint8_t *p = x + 4, *end = p + len;
            uint64_t *fields[3] = {size, csize, off};
            for (int i = 0; i < 3; i++) {
                if (*fields[i] != 0xffffffffu) continue;
                if (end - p < 8) return -1;
                *fields[i] = rd64(p);
                p += 8;
            }
            return 0;
        }
        x += 4 + len;
        n -= 4 + (size_t)len;
    }
    return 0;
}

static int load_zip_directory(conv *cv)
{
    const char *path = cv->weights_path;
    const uint8_t *d = cv->map.data;
    size_t size = cv->map.size;
    if (size < 22) return fail(cv, "%s: not a zip archive (too short)", path);
    /* The end record is the last 22 bytes plus a comment of at most 65535 bytes. */
    size_t eocd = SIZE_MAX;
    size_t lo = size > 22 + 65535 ? size - 22 - 65535 : 0;
    for (size_t p = size - 22 + 1; p-- > lo;)
        if (rd32(d + p) == 0x06054b50u) { eocd = p; break; }
    if (eocd == SIZE_MAX) {
        if (d[0] == 0x80 && size > 1 && d[1] == 0x02)
            return fail(cv, "%s: legacy (pre-1.6) PyTorch checkpoint, not a zip: not supported; "
                        "re-save it with a current torch.save or use model.safetensors", path);
        return fail(cv, "%s: not a zip archive (no end of central directory; truncated?)", path);
    }
    uint64_t n = rd16(d + eocd + 10), cd_size = rd32(d + eocd + 12), cd_off = rd32(d + eocd + 16);
    if (n == 0xffff || cd_size == 0xffffffffu || cd_off == 0xffffffffu) {
        if (eocd < 20 || rd32(d + eocd - 20) != 0x07064b50u)
            return fail(cv, "%s: zip64 end locator missing", path);
        uint64_t z = rd64(d + eocd - 20 + 8);
        if (size < 56 || z > size - 56 || rd32(d + z) != 0x06064b50u)
            return fail(cv, "%s: bad zip64 end record", path);
        n = rd64(d + z + 32);
        cd_size = rd64(d + z + 40);
        cd_off = rd64(d + z + 48);
    }
    if (cd_off > size || cd_size > size - cd_off || n > cd_size / 46)
        return fail(cv, "%s: central directory outside the file (truncated or corrupt zip)", path);
    cv->ze = calloc(n ? n : 1, sizeof *cv->ze);
    if (!cv->ze) return fail(cv, "out of memory");
    const uint8_t *p = d + cd_off, *end = p + cd_size;
    for (uint64_t i = 0; i < n; i++) {
        if (end - p < 46 || rd32(p) != 0x02014b50u)
            return fail(cv, "%s: corrupt zip central directory (entry %llu)", path,
                        (unsigned long long)i);
        zentry *z = &cv->ze[cv->nze];
        uint16_t flags = rd16(p + 8), nlen = rd16(p + 28), xlen = rd16(p + 30), clen = rd16(p + 32);
        z->method = rd16(p + 10);
        z->crc = rd32(p + 16);
        z->comp_size = rd32(p + 20);
        z->size = rd32(p + 24);
        uint64_t local = rd32(p + 42);
        if ((size_t)(end - p) < 46u + nlen + xlen + clen)
            return fail(cv, "%s: corrupt zip central directory (entry %llu)", path,
                        (unsigned long long)i);
        if (zip64_extra(p + 46 + nlen, xlen, &z->size, &z->comp_size, &local) != 0)
            return fail(cv, "%s: corrupt zip64 extra field", path);
        z->name = strndup((const char *)p + 46, nlen);
        if (!z->name) return fail(cv, "out of memory");
        cv->nze++;
        if (flags & 1) return fail(cv, "%s: entry %s is encrypted", path, z->name);
        if (size < 30 || local > size - 30 || rd32(d + local) != 0x04034b50u)
            return fail(cv, "%s: entry %s: bad local header offset (corrupt zip)", path, z->name);
        uint64_t data = local + 30 + rd16(d + local + 26) + rd16(d + local + 28);
        if (data > size || z->comp_size > size - data)
            return fail(cv, "%s: entry %s: data outside the file (truncated zip)", path, z->name);
        if (z->method == 0 && z->comp_size != z->size)
            return fail(cv, "%s: entry %s: stored sizes disagree", path, z->name);
        z->data_off = data;
        p += 46 + nlen + xlen + clen;
    }
    return 0;
}

static const zentry *find_entry(const conv *cv, const char *name)
{
    for (size_t i = 0; i < cv->nze; i++)
        if (strcmp(cv->ze[i].name, name) == 0) return &cv->ze[i];
    return NULL;
}

/* Raw deflate data through stb_image's inflater, into exactly `size` bytes. This stb
 * (Debian's 2022 snapshot) refills its bit buffer ahead of the symbols it decodes and
 * refuses a stream that ends exactly at the end of its input, so the input is handed over
 * with a few zero bytes of slack after it. Returns 0 when exactly `size` bytes came out. */
static int inflate_raw(const uint8_t *in, size_t n, uint8_t *out, size_t size)
{
    enum { SLACK = 8 };
    if (n > INT_MAX - SLACK || size > INT_MAX) return -1;
    char *padded = calloc(n + SLACK, 1);
    if (!padded) return -1;
    memcpy(padded, in, n);
    int got = stbi_zlib_decode_noheader_buffer((char *)out, (int)size, padded, (int)(n + SLACK));
    free(padded);
    return got >= 0 && (size_t)got == size ? 0 : -1;
}

/* The bytes of an entry: stored ones in place (CRC checked once), deflated ones inflated
 * with stb_image's zlib decoder into a buffer kept until release_entries(). */
static const uint8_t *entry_bytes(conv *cv, zentry *z)
{
    const uint8_t *src = cv->map.data + z->data_off;
    if (z->method == 0) {
        if (!z->checked) {
            if (crc32_update(0, src, (size_t)z->size) != z->crc) {
                fail(cv, "%s: entry %s: CRC mismatch (corrupt file)", cv->weights_path, z->name);
                return NULL;
            }
            z->checked = 1;
        }
        return src;
    }
    if (z->method != 8) {
        fail(cv, "%s: entry %s: unsupported zip compression method %d", cv->weights_path,
             z->name, z->method);
        return NULL;
    }
    if (z->inflated) return z->inflated;
    if (z->size > INT_MAX || z->comp_size > INT_MAX) {
        fail(cv, "%s: entry %s: deflated entry over 2 GB is not supported", cv->weights_path,
             z->name);
        return NULL;
    }
    /* Deflate cannot expand by more than 1032:1, so a header claiming more is corrupt;
     * checking it first keeps a forged size from costing a huge allocation. */
    if (z->size > z->comp_size * 1032 + 64) {
        fail(cv, "%s: entry %s: claims %llu bytes from %llu compressed (corrupt file)",
             cv->weights_path, z->name, (unsigned long long)z->size,
             (unsigned long long)z->comp_size);
        return NULL;
    }
    z->inflated = malloc(z->size ? (size_t)z->size : 1);
    if (!z->inflated) { fail(cv, "out of memory inflating %s", z->name); return NULL; }
    if (inflate_raw(src, (size_t)z->comp_size, z->inflated, (size_t)z->size) != 0 ||
        crc32_update(0, z->inflated, (size_t)z->size) != z->crc) {
        free(z->inflated);
        z->inflated = NULL;
        fail(cv, "%s: entry %s: corrupt deflate data", cv->weights_path, z->name);
        return NULL;
    }
    return z->inflated;
}

static void release_entries(conv *cv)
{
    for (size_t i = 0; i < cv->nze; i++) {
        free(cv->ze[i].inflated);
        cv->ze[i].inflated = NULL;
    }
}

/* ---------------------------------------------------------------------------------------
 * Pickle: the protocol-2 subset torch.save writes for a state dict
 * ------------------------------------------------------------------------------------- */

enum { PV_NONE, PV_BOOL, PV_INT, PV_STR, PV_TUPLE, PV_DICT, PV_GLOBAL, PV_STORAGE, PV_TENSOR };
enum { G_OTHER, G_ODICT, G_REBUILD_V2, G_REBUILD_PARAM, G_STORAGE };

typedef struct pval pval;
struct pval {
    int kind;
    int64_t i;                   /* INT, BOOL; TENSOR: storage offset (elements)          */
    const char *s;               /* STR; GLOBAL: "module.name" (owned by the pool)        */
    size_t slen;
    pval **items;                /* TUPLE items; DICT keys and values interleaved         */
    size_t n, cap;
    int global;                  /* GLOBAL kind; STORAGE/TENSOR: dtype                    */
    int dtype, elsize;           /* GLOBAL storage type, STORAGE, TENSOR                  */
    char dtype_name[24];
    pval *storage;               /* TENSOR                                                */
    int ndim;
    int64_t shape[MAX_SRC_DIMS], stride[MAX_SRC_DIMS];
    uint64_t numel;              /* STORAGE                                               */
};

typedef struct pickle {
    conv *cv;
    const uint8_t *start, *p, *end;
    pval **pool; size_t npool, cappool;
    pval **stack; size_t nstack, capstack;
    size_t *marks; size_t nmarks, capmarks;
    pval **memo; size_t capmemo;
    size_t limit;                /* bounds stack/memo growth by the pickle's own length    */
} pickle;

static int grow(void **arr, size_t *cap, size_t need, size_t elem)
{
    if (need <= *cap) return 0;
    size_t c = *cap ? *cap : 16;
    while (c < need) c *= 2;
    void *q = realloc(*arr, c * elem);
    if (!q) return -1;
    *arr = q;
    *cap = c;
    return 0;
}

static pval *pv_new(pickle *pk, int kind)
{
    if (grow((void **)&pk->pool, &pk->cappool, pk->npool + 1, sizeof *pk->pool) != 0) return NULL;
    pval *v = calloc(1, sizeof *v);
    if (!v) return NULL;
    v->kind = kind;
    pk->pool[pk->npool++] = v;
    return v;
}

static void pickle_free(pickle *pk)
{
    for (size_t i = 0; i < pk->npool; i++) {
        if (pk->pool[i]->kind == PV_GLOBAL) free((char *)pk->pool[i]->s);
        free(pk->pool[i]->items);
        free(pk->pool[i]);
    }
    free(pk->pool);
    free(pk->stack);
    free(pk->marks);
    free(pk->memo);
}

static int pv_append(pval *v, pval *item)
{
    if (grow((void **)&v->items, &v->cap, v->n + 1, sizeof *v->items) != 0) return -1;
    v->items[v->n++] = item;
    return 0;
}

static int push(pickle *pk, pval *v)
{
    if (!v) return fail(pk->cv, "out of memory in pickle");
    if (pk->nstack >= pk->limit) return fail(pk->cv, "data.pkl: stack too deep");
    if (grow((void **)&pk->stack, &pk->capstack, pk->nstack + 1, sizeof *pk->stack) != 0)
        return fail(pk->cv, "out of memory in pickle");
    pk->stack[pk->nstack++] = v;
    return 0;
}

static pval *pop(pickle *pk)
{
    if (pk->nstack == 0 || (pk->nmarks && pk->marks[pk->nmarks - 1] >= pk->nstack)) {
        fail(pk->cv, "data.pkl: stack underflow (corrupt pickle)");
        return NULL;
    }
    return pk->stack[--pk->nstack];
}

static int need(pickle *pk, size_t n)
{
    if ((size_t)(pk->end - pk->p) < n) return fail(pk->cv, "data.pkl: truncated pickle");
    return 0;
}

/* Storage type names as torch.save spells them; element sizes let us validate entries. */
static void storage_type(pval *g, const char *name)
{
    static const struct { const char *name; int dtype, elsize; } types[] = {
        {"FloatStorage", DT_F32, 4},   {"HalfStorage", DT_F16, 2},
        {"BFloat16Storage", DT_BF16, 2}, {"DoubleStorage", DT_OTHER, 8},
        {"LongStorage", DT_OTHER, 8},  {"IntStorage", DT_OTHER, 4},
        {"ShortStorage", DT_OTHER, 2}, {"CharStorage", DT_OTHER, 1},
        {"ByteStorage", DT_OTHER, 1},  {"BoolStorage", DT_OTHER, 1},
    };
    for (size_t i = 0; i < sizeof types / sizeof *types; i++)
        if (strcmp(name, types[i].name) == 0) {
            g->global = G_STORAGE;
            g->dtype = types[i].dtype;
            g->elsize = types[i].elsize;
            snprintf(g->dtype_name, sizeof g->dtype_name, "%s", name);
        }
}

static int op_global(pickle *pk, const char *mod, size_t ml, const char *name, size_t nl)
{
    pval *g = pv_new(pk, PV_GLOBAL);
    if (!g) return fail(pk->cv, "out of memory in pickle");
    char *full = malloc(ml + nl + 2);
    if (!full) return fail(pk->cv, "out of memory in pickle");
    memcpy(full, mod, ml);
    full[ml] = '.';
    memcpy(full + ml + 1, name, nl);
    full[ml + nl + 1] = 0;
    g->s = full;
    g->slen = ml + nl + 1;
    if (!strcmp(full, "collections.OrderedDict")) g->global = G_ODICT;
    else if (!strcmp(full, "torch._utils._rebuild_tensor_v2")) g->global = G_REBUILD_V2;
    else if (!strcmp(full, "torch._utils._rebuild_parameter")) g->global = G_REBUILD_PARAM;
    else if (ml == 5 && !memcmp(mod, "torch", 5)) storage_type(g, full + 6);
    return push(pk, g);
}

static int as_int(const pval *v, int64_t *out)
{
    if (!v || (v->kind != PV_INT && v->kind != PV_BOOL)) return -1;
    *out = v->i;
    return 0;
}

static int op_reduce(pickle *pk)
{
    pval *args = pop(pk), *fn = args ? pop(pk) : NULL;
    if (!fn) return -1;
    if (fn->kind != PV_GLOBAL || args->kind != PV_TUPLE)
        return fail(pk->cv, "data.pkl: REDUCE on something not callable (corrupt pickle)");
    if (fn->global == G_ODICT) return push(pk, pv_new(pk, PV_DICT));
    if (fn->global == G_REBUILD_PARAM) {
        if (args->n < 1 || args->items[0]->kind != PV_TENSOR)
            return fail(pk->cv, "data.pkl: bad _rebuild_parameter arguments");
        return push(pk, args->items[0]);
    }
    if (fn->global != G_REBUILD_V2)
        return fail(pk->cv, "data.pkl: unsupported pickle callable %s", fn->s);
    /* _rebuild_tensor_v2(storage, storage_offset, size, stride, requires_grad, hooks, ...) */
    if (args->n < 4 || args->items[0]->kind != PV_STORAGE || args->items[2]->kind != PV_TUPLE ||
        args->items[3]->kind != PV_TUPLE || args->items[2]->n != args->items[3]->n ||
        args->items[2]->n > MAX_SRC_DIMS)
        return fail(pk->cv, "data.pkl: bad _rebuild_tensor_v2 arguments");
    pval *t = pv_new(pk, PV_TENSOR);
    if (!t) return fail(pk->cv, "out of memory in pickle");
    t->storage = args->items[0];
    t->dtype = t->storage->dtype;
    t->elsize = t->storage->elsize;
    memcpy(t->dtype_name, t->storage->dtype_name, sizeof t->dtype_name);
    t->ndim = (int)args->items[2]->n;
    if (as_int(args->items[1], &t->i) != 0 || t->i < 0)
        return fail(pk->cv, "data.pkl: bad tensor storage offset");
    for (int k = 0; k < t->ndim; k++)
        if (as_int(args->items[2]->items[k], &t->shape[k]) != 0 ||
            as_int(args->items[3]->items[k], &t->stride[k]) != 0 || t->shape[k] < 0)
            return fail(pk->cv, "data.pkl: bad tensor size or stride");
    return push(pk, t);
}

/* Runs the pickle to its STOP and returns the value left on the stack (or NULL with
 * cv->err set): for torch.save, the state dict. */
static pval *run_pickle(pickle *pk)
{
    conv *cv = pk->cv;
    for (;;) {
        if (need(pk, 1) != 0) return NULL;
        uint8_t op = *pk->p++;
        int rc = 0;
        switch (op) {
        case 0x80: rc = need(pk, 1); if (!rc) pk->p++; break;                    /* PROTO */
        case 0x95: rc = need(pk, 8); if (!rc) pk->p += 8; break;                 /* FRAME */
        case '}': rc = push(pk, pv_new(pk, PV_DICT)); break;                     /* EMPTY_DICT */
        case ')': case ']': rc = push(pk, pv_new(pk, PV_TUPLE)); break;          /* EMPTY_TUPLE/LIST */
        case 'N': rc = push(pk, pv_new(pk, PV_NONE)); break;
        case 0x88: case 0x89: {                                                  /* NEWTRUE/FALSE */
            pval *v = pv_new(pk, PV_BOOL);
            if (v) v->i = op == 0x88;
            rc = push(pk, v);
            break;
        }
        case '(':                                                                 /* MARK */
            if (grow((void **)&pk->marks, &pk->capmarks, pk->nmarks + 1, sizeof *pk->marks) != 0)
                return fail(cv, "out of memory in pickle"), NULL;
            pk->marks[pk->nmarks++] = pk->nstack;
            break;
        case 'K': case 'M': case 'J': {                                          /* BININT1/2/ */
            size_t n = op == 'K' ? 1 : op == 'M' ? 2 : 4;
            if (need(pk, n) != 0) return NULL;
            pval *v = pv_new(pk, PV_INT);
            if (v) v->i = n == 1 ? pk->p[0] : n == 2 ? rd16(pk->p) : (int32_t)rd32(pk->p);
            pk->p += n;
            rc = push(pk, v);
            break;
        }
        case 0x8a: {                                                              /* LONG1 */
            if (need(pk, 1) != 0) return NULL;
            size_t n = *pk->p++;
            if (n > 8 || need(pk, n) != 0) return fail(cv, "data.pkl: integer too large"), NULL;
            uint64_t u = 0;
            for (size_t k = 0; k < n; k++) u |= (uint64_t)pk->p[k] << (8 * k);
            if (n && n < 8 && (pk->p[n - 1] & 0x80)) u |= ~UINT64_C(0) << (8 * n);
            pk->p += n;
            pval *v = pv_new(pk, PV_INT);
            if (v) memcpy(&v->i, &u, 8);
            rc = push(pk, v);
            break;
        }
        case 'X': case 0x8c: case 0x8d: case 'U': case 'T': {                    /* strings */
            size_t hn = op == 0x8c || op == 'U' ? 1 : op == 0x8d ? 8 : 4;
            if (need(pk, hn) != 0) return NULL;
            uint64_t n = hn == 1 ? pk->p[0] : hn == 4 ? rd32(pk->p) : rd64(pk->p);
            pk->p += hn;
            if (n > (uint64_t)(pk->end - pk->p)) return need(pk, SIZE_MAX), NULL;
            pval *v = pv_new(pk, PV_STR);
            if (v) { v->s = (const char *)pk->p; v->slen = (size_t)n; }
            pk->p += n;
            rc = push(pk, v);
            break;
        }
        case 'c': {                                                               /* GLOBAL */
            const uint8_t *m = pk->p, *nl1 = memchr(m, '\n', (size_t)(pk->end - m));
            const uint8_t *nm = nl1 ? nl1 + 1 : NULL;
            const uint8_t *nl2 = nm ? memchr(nm, '\n', (size_t)(pk->end - nm)) : NULL;
            if (!nl2) return fail(cv, "data.pkl: truncated GLOBAL"), NULL;
            pk->p = nl2 + 1;
            rc = op_global(pk, (const char *)m, (size_t)(nl1 - m), (const char *)nm,
                           (size_t)(nl2 - nm));
            break;
        }
        case 0x93: {                                                              /* STACK_GLOBAL */
            pval *name = pop(pk), *mod = name ? pop(pk) : NULL;
            if (!mod) return NULL;
            if (mod->kind != PV_STR || name->kind != PV_STR)
                return fail(cv, "data.pkl: bad STACK_GLOBAL"), NULL;
            rc = op_global(pk, mod->s, mod->slen, name->s, name->slen);
            break;
        }
        case 'Q': {                                                               /* BINPERSID */
            /* ('storage', storage_type, key, location, numel) */
            pval *pid = pop(pk);
            if (!pid) return NULL;
            if (pid->kind != PV_TUPLE || pid->n != 5 || pid->items[0]->kind != PV_STR ||
                pid->items[0]->slen != 7 || memcmp(pid->items[0]->s, "storage", 7) != 0 ||
                pid->items[1]->kind != PV_GLOBAL || pid->items[2]->kind != PV_STR ||
                pid->items[4]->kind != PV_INT || pid->items[4]->i < 0)
                return fail(cv, "data.pkl: unsupported persistent id"), NULL;
            if (pid->items[1]->global != G_STORAGE)
                return fail(cv, "data.pkl: unsupported storage type %s", pid->items[1]->s), NULL;
            pval *s = pv_new(pk, PV_STORAGE);
            if (s) {
                s->dtype = pid->items[1]->dtype;
                s->elsize = pid->items[1]->elsize;
                memcpy(s->dtype_name, pid->items[1]->dtype_name, sizeof s->dtype_name);
                s->s = pid->items[2]->s;
                s->slen = pid->items[2]->slen;
                s->numel = (uint64_t)pid->items[4]->i;
            }
            rc = push(pk, s);
            break;
        }
        case 't': case 0x85: case 0x86: case 0x87: {                             /* TUPLE, TUPLE1-3 */
            size_t from;
            if (op == 't') {
                if (!pk->nmarks) return fail(cv, "data.pkl: TUPLE without MARK"), NULL;
                from = pk->marks[--pk->nmarks];
            } else {
                size_t k = (size_t)(op - 0x84);
                size_t floor_ = pk->nmarks ? pk->marks[pk->nmarks - 1] : 0;
                if (pk->nstack < floor_ + k) return fail(cv, "data.pkl: stack underflow"), NULL;
                from = pk->nstack - k;
            }
            pval *t = pv_new(pk, PV_TUPLE);
            if (!t) return fail(cv, "out of memory in pickle"), NULL;
            for (size_t k = from; k < pk->nstack; k++)
                if (pv_append(t, pk->stack[k]) != 0) return fail(cv, "out of memory"), NULL;
            pk->nstack = from;
            rc = push(pk, t);
            break;
        }
        case 'a': case 'e': case 's': case 'u': {                  /* APPEND(S), SETITEM(S) */
            size_t from;
            if (op == 'e' || op == 'u') {
                if (!pk->nmarks) return fail(cv, "data.pkl: missing MARK"), NULL;
                from = pk->marks[--pk->nmarks];
            } else {
                size_t k = op == 's' ? 2 : 1;
                size_t floor_ = pk->nmarks ? pk->marks[pk->nmarks - 1] : 0;
                if (pk->nstack < floor_ + k + 1) return fail(cv, "data.pkl: stack underflow"), NULL;
                from = pk->nstack - k;
            }
            if (from == 0) return fail(cv, "data.pkl: stack underflow"), NULL;
            pval *target = pk->stack[from - 1];
            int is_dict = op == 's' || op == 'u';
            if (target->kind != (is_dict ? PV_DICT : PV_TUPLE) || (is_dict && (pk->nstack - from) % 2))
                return fail(cv, "data.pkl: bad container operation (corrupt pickle)"), NULL;
            for (size_t k = from; k < pk->nstack; k++)
                if (pv_append(target, pk->stack[k]) != 0) return fail(cv, "out of memory"), NULL;
            pk->nstack = from;
            break;
        }
        case 'R': rc = op_reduce(pk); break;                                      /* REDUCE */
        case 'b': {                             /* BUILD: a state dict's _metadata; dropped */
            pval *state = pop(pk);
            if (!state) return NULL;
            if (!pk->nstack || pk->stack[pk->nstack - 1]->kind != PV_DICT)
                return fail(cv, "data.pkl: BUILD on an unsupported object"), NULL;
            break;
        }
        case 'q': case 'r': case 0x94: {                           /* BINPUT, LONG_BINPUT, MEMOIZE */
            size_t idx;
            if (op == 0x94) idx = (size_t)-1;
            else {
                size_t n = op == 'q' ? 1 : 4;
                if (need(pk, n) != 0) return NULL;
                idx = n == 1 ? pk->p[0] : rd32(pk->p);
                pk->p += n;
            }
            if (!pk->nstack) return fail(cv, "data.pkl: PUT on an empty stack"), NULL;
            if (op == 0x94) {
                for (idx = 0; idx < pk->capmemo && pk->memo[idx]; idx++) {}
            }
            if (idx >= pk->limit) return fail(cv, "data.pkl: memo index %zu too large", idx), NULL;
            size_t old = pk->capmemo;
            if (grow((void **)&pk->memo, &pk->capmemo, idx + 1, sizeof *pk->memo) != 0)
                return fail(cv, "out of memory in pickle"), NULL;
            memset(pk->memo + old, 0, (pk->capmemo - old) * sizeof *pk->memo);
            pk->memo[idx] = pk->stack[pk->nstack - 1];
            break;
        }
        case 'h': case 'j': {                                      /* BINGET, LONG_BINGET */
            size_t n = op == 'h' ? 1 : 4;
            if (need(pk, n) != 0) return NULL;
            size_t idx = n == 1 ? pk->p[0] : rd32(pk->p);
            pk->p += n;
            if (idx >= pk->capmemo || !pk->memo[idx])
                return fail(cv, "data.pkl: memo %zu not set (corrupt pickle)", idx), NULL;
            rc = push(pk, pk->memo[idx]);
            break;
        }
        case '.':                                                                 /* STOP */
            return pop(pk);
        default:
            return fail(cv, "data.pkl: unsupported pickle opcode 0x%02x at byte %zu", op,
                        (size_t)(pk->p - 1 - pk->start)), NULL;
        }
        if (rc) return NULL;
    }
}

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
static int collect_state_dict(conv *cv, const pval *dict, const char *prefix)
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
static int load_torch_zip(conv *cv)
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

/* ---------------------------------------------------------------------------------------
 * Tensor element access
 * ------------------------------------------------------------------------------------- */

static const uint8_t *tensor_data(conv *cv, stensor *t)
{
    if (t->entry < 0) return t->data;
    const uint8_t *base = entry_bytes(cv, &cv->ze[t->entry]);
    return base ? base + t->entry_offset : NULL;
}

static float elem(const uint8_t *p, int dtype, uint64_t i)
{
    if (dtype == DT_F32) { float f; memcpy(&f, p + 4 * i, 4); return f; }
    uint16_t h = rd16(p + 2 * i);
    return dtype == DT_F16 ? f16_to_f32(h) : bits_f32((uint32_t)h << 16);
}

/* ---------------------------------------------------------------------------------------
 * Configuration: config.json, preprocessor_config.json, open_clip_config.json
 * ------------------------------------------------------------------------------------- */

static int load_json_file(conv *cv, const char *path, clip_json_doc **doc)
{
    char *text;
    size_t len;
    if (read_file(cv, path, MAX_JSON_FILE, &text, &len) != 0) return -1;
    char jerr[256];
    *doc = clip_json_parse(text, len, 0, jerr, sizeof jerr);
    free(text);
    if (!*doc) return fail(cv, "%s: %s", path, jerr);
    if (clip_json_root(*doc)->type != CLIP_JSON_OBJECT) {
        clip_json_free(*doc);
        *doc = NULL;
        return fail(cv, "%s: not a JSON object", path);
    }
    return 0;
}

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

/* ---------------------------------------------------------------------------------------
 * Tokenizer: vocab.json + merges.txt, or OpenAI's bpe_simple_vocab_16e6.txt.gz
 * ------------------------------------------------------------------------------------- */

static const char *tok_key(const void *ctx, uint32_t i, size_t *len)
{
    const tokenizer *t = ctx;
    *len = t->len[i];
    return t->arena + t->off[i];
}

static long tok_find(const tokenizer *t, const char *s, size_t n)
{
    return strmap_find(&t->map, s, n, tok_key, t, -1);
}

static void tok_free(tokenizer *t)
{
    free(t->arena);
    free(t->off);
    free(t->len);
    free(t->merges);
    strmap_free(&t->map);
}

/* Sets token strings (already in the arena at off/len) into the lookup map, refusing
 * duplicates, and finds the two special tokens. */
static int tok_index(conv *cv, tokenizer *t, const char *what)
{
    if (strmap_init(&t->map, t->n) != 0) return fail(cv, "out of memory");
    for (uint32_t i = 0; i < t->n; i++) {
        if (t->len[i] == 0 || t->len[i] > 0xffff)
            return fail(cv, "%s: token %u has length %zu", what, i, t->len[i]);
        if (strmap_find(&t->map, t->arena + t->off[i], t->len[i], tok_key, t, i) >= 0)
            return fail(cv, "%s: token %u (%.*s) appears twice", what, i, (int)t->len[i],
                        t->arena + t->off[i]);
    }
    long s = tok_find(t, "<|startoftext|>", 15), e = tok_find(t, "<|endoftext|>", 13);
    if (s < 0 || e < 0) return fail(cv, "%s: no <|startoftext|> / <|endoftext|> tokens", what);
    t->sot = (uint32_t)s;
    t->eot = (uint32_t)e;
    return 0;
}

/* One merge "a b": the ids of a, b and a+b, all of which must be tokens. */
static int tok_merge(conv *cv, tokenizer *t, const char *line, size_t n, const char *what,
                     size_t lineno)
{
    const char *sp = memchr(line, ' ', n);
    if (!sp || sp == line || sp + 1 == line + n || memchr(sp + 1, ' ', (size_t)(line + n - sp - 1)))
        return fail(cv, "%s line %zu: not a merge \"a b\"", what, lineno);
    size_t la = (size_t)(sp - line), lb = n - la - 1;
    char joined[1024];
    if (n >= sizeof joined) return fail(cv, "%s line %zu: merge too long", what, lineno);
    memcpy(joined, line, la);
    memcpy(joined + la, sp + 1, lb);
    long a = tok_find(t, line, la), b = tok_find(t, sp + 1, lb), m = tok_find(t, joined, la + lb);
    if (a < 0 || b < 0 || m < 0)
        return fail(cv, "%s line %zu: %s token \"%.*s\" is not in the vocabulary", what, lineno,
                    m < 0 && a >= 0 && b >= 0 ? "merged" : "merge",
                    (int)(a < 0 ? la : b < 0 ? lb : la + lb), a < 0 ? line : b < 0 ? sp + 1 : joined);
    uint32_t *r = t->merges + 3 * (size_t)t->n_merges++;
    r[0] = (uint32_t)a;
    r[1] = (uint32_t)b;
    r[2] = (uint32_t)m;
    return 0;
}

/* Splits text into lines (without '\n', without a trailing '\r'). */
static size_t count_lines(const char *s, size_t n)
{
    size_t c = 0;
    for (size_t i = 0; i < n; i++) c += s[i] == '\n';
    return c + (n && s[n - 1] != '\n');
}

static int load_hf_tokenizer(conv *cv, const char *vpath, const char *mpath)
{
    tokenizer *t = &cv->tok;
    clip_json_doc *doc;
    if (load_json_file(cv, vpath, &doc) != 0) return -1;
    const clip_json *r = clip_json_root(doc);
    int rc = 0;
    size_t total = 0;
    t->n = (uint32_t)r->n;
    t->off = calloc(r->n + 1, sizeof *t->off);
    t->len = calloc(r->n + 1, sizeof *t->len);
    char *seen = calloc(r->n + 1, 1);
    if (!t->off || !t->len || !seen || r->n > MAX_HYPER) {
        rc = fail(cv, r->n > MAX_HYPER ? "%s: vocabulary too large" : "out of memory (%s)", vpath);
        goto out;
    }
    for (size_t i = 0; i < r->n; i++) {
        const clip_json *v = &r->items[i];
        if (v->type != CLIP_JSON_NUMBER || !v->is_integer || v->number < 0 || v->number >= (double)r->n ||
            seen[(size_t)v->number]) {
            rc = fail(cv, "%s: ids must be 0..%zu, each once (bad id for \"%s\")", vpath,
                      r->n - 1, r->keys[i]);
            goto out;
        }
        seen[(size_t)v->number] = 1;
        total += r->key_lens[i];
    }
    t->arena = malloc(total + 1);
    if (!t->arena) { rc = fail(cv, "out of memory"); goto out; }
    total = 0;
    for (size_t i = 0; i < r->n; i++) {
        size_t id = (size_t)r->items[i].number;
        t->off[id] = total;
        t->len[id] = r->key_lens[i];
        memcpy(t->arena + total, r->keys[i], r->key_lens[i]);
        total += r->key_lens[i];
    }
    if (tok_index(cv, t, vpath) != 0) { rc = -1; goto out; }
    char *text;
    size_t len;
    if (read_file(cv, mpath, MAX_TEXT_FILE, &text, &len) != 0) { rc = -1; goto out; }
    t->merges = malloc((count_lines(text, len) + 1) * 3 * sizeof *t->merges);
    if (!t->merges) { free(text); rc = fail(cv, "out of memory"); goto out; }
    size_t lineno = 0;
    for (char *p = text, *end = text + len; p < end && rc == 0;) {
        char *nl = memchr(p, '\n', (size_t)(end - p));
        size_t n = (size_t)((nl ? nl : end) - p);
        lineno++;
        if (n && p[n - 1] == '\r') n--;
        if (!(lineno == 1 && n >= 8 && !memcmp(p, "#version", 8)) && n)
            rc = tok_merge(cv, t, p, n, mpath, lineno);
        p = nl ? nl + 1 : end;
    }
    free(text);
out:
    free(seen);
    clip_json_free(doc);
    return rc;
}

/* The gzip member header (RFC 1952) is parsed here and its deflate body handed to
 * stb_image's inflater: stb already ships one (for PNG), so no zlib dependency is added
 * for the single gzip file we read. */
static int gunzip(conv *cv, const char *path, char **out, size_t *outlen)
{
    char *gz;
    size_t n;
    if (read_file(cv, path, MAX_TEXT_FILE, &gz, &n) != 0) return -1;
    const uint8_t *g = (const uint8_t *)gz;
    size_t p = 10;
    int rc = 0;
    if (n < 18 || g[0] != 0x1f || g[1] != 0x8b || g[2] != 8) {
        rc = fail(cv, "%s: not a gzip file", path);
        goto out;
    }
    uint8_t flg = g[3];
    if (flg & 4) { p = p + 2 <= n - 8 ? p + 2 + rd16(g + p) : n; }
    for (int f = 8; f <= 16; f <<= 1)
        if (flg & f) {
            while (p < n - 8 && g[p]) p++;
            p++;
        }
    if (flg & 2) p += 2;
    uint32_t crc = rd32(g + n - 8), isize = rd32(g + n - 4);
    if (p >= n - 8 || isize > MAX_TEXT_FILE || n - 8 - p > INT_MAX) {
        rc = fail(cv, "%s: corrupt or truncated gzip file", path);
        goto out;
    }
    char *buf = malloc((size_t)isize + 1);
    if (!buf) { rc = fail(cv, "out of memory"); goto out; }
    if (inflate_raw(g + p, n - 8 - p, (uint8_t *)buf, isize) != 0 || crc32_update(0, (uint8_t *)buf, isize) != crc) {
        free(buf);
        rc = fail(cv, "%s: corrupt gzip data", path);
        goto out;
    }
    buf[isize] = 0;
    *out = buf;
    *outlen = isize;
out:
    free(gz);
    return rc;
}

/* Exactly OpenAI's simple_tokenizer: the 256 byte stand-ins (bytes_to_unicode order), the
 * same with "</w>", then merges[1 : 49152-256-2+1] joined, then the two special tokens. */
static int load_bpe_tokenizer(conv *cv, const char *path)
{
    enum { N_MERGES = 49152 - 256 - 2 };
    tokenizer *t = &cv->tok;
    char *text = NULL;
    size_t len = 0;
    if (gunzip(cv, path, &text, &len) != 0) return -1;
    const char **lines = malloc(N_MERGES * sizeof *lines);
    size_t *lens = malloc(N_MERGES * sizeof *lens), nl = 0, total = 0;
    int rc = 0;
    if (!lines || !lens) { rc = fail(cv, "out of memory"); goto out; }
    /* line 0 is the "#version" line */
    char *p = memchr(text, '\n', len);
    for (p = p ? p + 1 : text + len; p < text + len && nl < N_MERGES;) {
        char *e = memchr(p, '\n', (size_t)(text + len - p));
        lines[nl] = p;
        lens[nl] = (size_t)((e ? e : text + len) - p);
        total += lens[nl];
        nl++;
        p = e ? e + 1 : text + len;
    }
    /* A short file (a small test vocabulary) is taken whole, as Python's slice does (the
     * empty string Python's split leaves after the final newline is not taken as a merge). */
    if (nl == 0) {
        rc = fail(cv, "%s: no merges after the version line", path);
        goto out;
    }
    t->n = 512 + (uint32_t)nl + 2;
    t->arena = malloc(512 * 6 + total + 64);
    t->off = malloc(t->n * sizeof *t->off);
    t->len = malloc(t->n * sizeof *t->len);
    t->merges = malloc(nl * 3 * sizeof *t->merges);
    if (!t->arena || !t->off || !t->len || !t->merges) { rc = fail(cv, "out of memory"); goto out; }
    size_t at = 0;
    uint32_t id = 0;
    /* bytes_to_unicode: printable Latin-1 bytes map to themselves, the other 68 bytes to
     * U+0100 onwards, listed after them in byte order. */
    uint32_t cps[256];
    int k = 0, extra = 0;
    for (int b = 0; b < 256; b++)
        if ((b >= '!' && b <= '~') || (b >= 0xa1 && b <= 0xac) || (b >= 0xae && b <= 0xff))
            cps[k++] = (uint32_t)b;
    for (int b = 0; b < 256; b++)
        if (!((b >= '!' && b <= '~') || (b >= 0xa1 && b <= 0xac) || (b >= 0xae && b <= 0xff)))
            cps[k++] = 256u + (uint32_t)extra++;
    for (int pass = 0; pass < 2; pass++)
        for (int i = 0; i < 256; i++) {
            uint32_t c = cps[i];
            t->off[id] = at;
            if (c < 0x80) t->arena[at++] = (char)c;
            else {
                t->arena[at++] = (char)(0xc0 | (c >> 6));
                t->arena[at++] = (char)(0x80 | (c & 0x3f));
            }
            if (pass) { memcpy(t->arena + at, "</w>", 4); at += 4; }
            t->len[id] = at - t->off[id];
            id++;
        }
    for (size_t i = 0; i < nl; i++) {
        size_t n = lens[i];
        if (n && lines[i][n - 1] == '\r') n--;
        t->off[id] = at;
        for (size_t j = 0; j < n; j++)
            if (lines[i][j] != ' ') t->arena[at++] = lines[i][j];
        t->len[id] = at - t->off[id];
        id++;
    }
    memcpy(t->arena + at, "<|startoftext|><|endoftext|>", 28);
    t->off[id] = at; t->len[id++] = 15;
    t->off[id] = at + 15; t->len[id++] = 13;
    if (tok_index(cv, t, path) != 0) { rc = -1; goto out; }
    for (size_t i = 0; i < nl && rc == 0; i++) {
        size_t n = lens[i];
        if (n && lines[i][n - 1] == '\r') n--;
        rc = tok_merge(cv, t, lines[i], n, path, i + 2);
    }
out:
    free(lines);
    free(lens);
    free(text);
    return rc;
}

static int load_tokenizer(conv *cv, const char **from)
{
    char vpath[PATH_MAX], mpath[PATH_MAX], bpath[PATH_MAX];
    if (join(cv, vpath, sizeof vpath, cv->src, "vocab.json") ||
        join(cv, mpath, sizeof mpath, cv->src, "merges.txt") ||
        join(cv, bpath, sizeof bpath, cv->src, "bpe_simple_vocab_16e6.txt.gz"))
        return -1;
    if (cv->bpe_opt) {
        *from = cv->bpe_opt;
        if (!file_exists(cv->bpe_opt)) return fail(cv, "missing file %s (--bpe)", cv->bpe_opt);
        return load_bpe_tokenizer(cv, cv->bpe_opt);
    }
    if (file_exists(vpath) && file_exists(mpath)) {
        *from = "vocab.json + merges.txt";
        return load_hf_tokenizer(cv, vpath, mpath);
    }
    if (file_exists(bpath)) {
        *from = "bpe_simple_vocab_16e6.txt.gz";
        return load_bpe_tokenizer(cv, bpath);
    }
    return fail(cv, "missing file %s (the tokenizer: vocab.json + merges.txt, or "
                "bpe_simple_vocab_16e6.txt.gz, or --bpe FILE)",
                file_exists(vpath) ? mpath : cv->openai_naming ? bpath : vpath);
}

/* ---------------------------------------------------------------------------------------
 * The plan: every output tensor, its shape, and where its values come from
 * ------------------------------------------------------------------------------------- */

static void shape_str(char *out, size_t cap, const int64_t *s, int n)
{
    size_t at = (size_t)snprintf(out, cap, "[");
    for (int i = 0; i < n && at < cap; i++)
        at += (size_t)snprintf(out + at, cap - at, "%s%lld", i ? ", " : "", (long long)s[i]);
    if (at < cap) snprintf(out + at, cap - at, "]");
}

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

/* The row-major [rows, cols] index of element j of a tensor written in panels of CLIP_PANEL
 * (32) rows: panel p holds rows 32p .. 32p + w - 1 (w = 32, or the rows left), laid out
 * [cols][w]; the inverse of clip_panel_index. */
static uint64_t unpanel(uint64_t j, uint64_t rows, uint64_t cols)
{
    uint64_t r0 = j / (CLIP_PANEL * cols) * CLIP_PANEL, in = j - r0 * cols;
    uint64_t w = rows - r0 < CLIP_PANEL ? rows - r0 : CLIP_PANEL;
    return (r0 + in % w) * cols + in / w;
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

static int build_plan(conv *cv)
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

/* ---------------------------------------------------------------------------------------
 * Hyperparameters: checks and, for OpenAI naming, inference from the shapes
 * ------------------------------------------------------------------------------------- */

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

static int check_hparams(conv *cv)
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

static void derive_name(conv *cv)
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

/* Hugging Face checkpoints state their hyperparameters in config.json (with
 * preprocessor_config.json); OpenAI-named ones are inferred from the tensor shapes. */
static int load_hparams(conv *cv)
{
    if (cv->openai_naming) return infer_openai(cv);
    return load_hf_config(cv) || load_preprocessor(cv) ? -1 : 0;
}

/* ---------------------------------------------------------------------------------------
 * Writing: header, tokenizer, table, then every tensor streamed from the source
 * ------------------------------------------------------------------------------------- */

static void put32(uint8_t *p, uint32_t v) { for (int i = 0; i < 4; i++) p[i] = (uint8_t)(v >> (8 * i)); }
static void put64(uint8_t *p, uint64_t v) { for (int i = 0; i < 8; i++) p[i] = (uint8_t)(v >> (8 * i)); }
static void putf(uint8_t *p, float f) { put32(p, f32_bits(f)); }

static void buf_u32(clip_buf *b, uint32_t v)
{
    uint8_t x[4];
    put32(x, v);
    clip_buf_append(b, x, 4);
}

static int build_tokenizer_section(conv *cv, clip_buf *b)
{
    const tokenizer *t = &cv->tok;
    buf_u32(b, t->n);
    buf_u32(b, t->n_merges);
    buf_u32(b, t->sot);
    buf_u32(b, t->eot);
    for (uint32_t i = 0; i < t->n; i++) {
        uint8_t l[2] = {(uint8_t)t->len[i], (uint8_t)(t->len[i] >> 8)};
        clip_buf_append(b, l, 2);
        clip_buf_append(b, t->arena + t->off[i], t->len[i]);
    }
    for (size_t i = 0; i < 3 * (size_t)t->n_merges; i++) buf_u32(b, t->merges[i]);
    return b->oom ? fail(cv, "out of memory building the tokenizer section") : 0;
}

static void write_header(const conv *cv, uint8_t h[256], uint64_t tok_off, uint64_t tok_size,
                         uint64_t tab_off, uint64_t file_size)
{
    const hparams *hp = &cv->hp;
    memset(h, 0, 256);
    memcpy(h, "CLIPMODL", 8);
    put32(h + 8, 2);
    put32(h + 12, 256);
    memcpy(h + 16, hp->name, strnlen(hp->name, 63));
    uint32_t u[] = {hp->image_size, hp->patch, hp->v_width, hp->v_layers, hp->v_heads, hp->v_mlp};
    for (int i = 0; i < 6; i++) put32(h + 80 + 4 * i, u[i]);
    putf(h + 104, hp->v_eps);
    uint32_t v[] = {hp->t_width, hp->t_layers, hp->t_heads, hp->t_mlp};
    for (int i = 0; i < 4; i++) put32(h + 108 + 4 * i, v[i]);
    putf(h + 124, hp->t_eps);
    uint32_t w[] = {hp->context, hp->vocab, hp->embed, hp->act, hp->resize, hp->crop};
    for (int i = 0; i < 6; i++) put32(h + 128 + 4 * i, w[i]);
    for (int i = 0; i < 3; i++) {
        putf(h + 152 + 4 * i, hp->mean[i]);
        putf(h + 164 + 4 * i, hp->std[i]);
    }
    put64(h + 176, tok_off);
    put64(h + 184, tok_size);
    put64(h + 192, tab_off);
    put32(h + 200, (uint32_t)cv->not);
    put64(h + 208, file_size);
}

/* Output values [start, start + n) of tensor o as f32. */
static int fill(conv *cv, otensor *o, uint64_t start, size_t n, float *out)
{
    const uint8_t *src[3];
    for (int k = 0; k < o->nparts; k++)
        if (!(src[k] = tensor_data(cv, o->parts[k]))) return -1;
    if (o->transpose) {
        /* source [R, C] -> ours [C, R]: our element j is source (j % R, j / R) */
        uint64_t R = (uint64_t)o->parts[0]->shape[0], C = (uint64_t)o->parts[0]->shape[1];
        for (size_t i = 0; i < n; i++) {
            uint64_t j = o->panels ? unpanel(start + i, C, R) : start + i;
            out[i] = elem(src[0], o->parts[0]->dtype, (j % R) * C + j / R);
        }
        return 0;
    }
    uint64_t part_n = o->parts[0]->numel;
    for (size_t i = 0; i < n; i++) {
        uint64_t j = o->panels ? unpanel(start + i, o->shape[0], o->shape[1]) : start + i;
        uint64_t k = j / part_n;
        out[i] = elem(src[k], o->parts[k]->dtype, j - k * part_n);
    }
    return 0;
}

static int write_all(conv *cv, const char *out_path, uint64_t *bytes, uint64_t *params)
{
    clip_buf tokb = {0};
    if (build_tokenizer_section(cv, &tokb) != 0) { clip_buf_free(&tokb); return -1; }
    uint64_t tok_off = 256, tok_size = tokb.len;
    uint64_t tab_off = (tok_off + tok_size + 7) & ~UINT64_C(7);
    uint64_t at = (tab_off + 96 * (uint64_t)cv->not + 63) & ~UINT64_C(63);
    *params = 0;
    for (size_t i = 0; i < cv->not; i++) {
        cv->ot[i].offset = at;
        at = (at + cv->ot[i].size + 63) & ~UINT64_C(63);
        *params += cv->ot[i].numel;
    }
    /* The last tensor ends the file; no trailing padding. */
    uint64_t file_size = cv->ot[cv->not - 1].offset + cv->ot[cv->not - 1].size;

    char tmp[PATH_MAX];
    if (snprintf(tmp, sizeof tmp, "%s.tmp", out_path) >= (int)sizeof tmp) {
        clip_buf_free(&tokb);
        return fail(cv, "output path too long");
    }
    FILE *f = fopen(tmp, "wb");
    if (!f) {
        clip_buf_free(&tokb);
        return fail(cv, "cannot create %s: %s", tmp, strerror(errno));
    }
    char *iobuf = malloc(1 << 20);
    if (iobuf) setvbuf(f, iobuf, _IOFBF, 1 << 20);
    uint8_t h[256];
    write_header(cv, h, tok_off, tok_size, tab_off, file_size);
    uint64_t pos = 0;
    int rc = 0;
    float *chunk = NULL;
    uint16_t *half = NULL;
    static const uint8_t zeros[64];
#define EMIT(p, n) do { if (fwrite((p), 1, (n), f) != (size_t)(n)) { rc = -1; goto io; } pos += (n); } while (0)
    EMIT(h, 256);
    EMIT(tokb.data, tokb.len);
    EMIT(zeros, tab_off - pos);
    for (size_t i = 0; i < cv->not; i++) {
        const otensor *o = &cv->ot[i];
        uint8_t e[96] = {0};
        memcpy(e, o->name, strnlen(o->name, 55));
        put32(e + 56, o->dtype);
        put32(e + 60, (uint32_t)o->ndim);
        for (int k = 0; k < 4; k++) put32(e + 64 + 4 * k, o->shape[k]);
        put64(e + 80, o->offset);
        put64(e + 88, o->size);
        EMIT(e, 96);
    }
    chunk = malloc(CHUNK_ELEMS * sizeof *chunk);
    half = malloc(CHUNK_ELEMS * sizeof *half);
    if (!chunk || !half) { rc = fail(cv, "out of memory"); goto done; }
    int last_pct = -1;
    for (size_t i = 0; i < cv->not; i++) {
        otensor *o = &cv->ot[i];
        EMIT(zeros, o->offset - pos);
        for (uint64_t s = 0; s < o->numel; s += CHUNK_ELEMS) {
            size_t n = o->numel - s < CHUNK_ELEMS ? (size_t)(o->numel - s) : CHUNK_ELEMS;
            if (fill(cv, o, s, n, chunk) != 0) { rc = -1; goto done; }
            if (o->dtype) {
                uint8_t *b = (uint8_t *)half;
                for (size_t k = 0; k < n; k++) {
                    uint16_t v = f32_to_f16(chunk[k]);
                    b[2 * k] = (uint8_t)v;
                    b[2 * k + 1] = (uint8_t)(v >> 8);
                }
                EMIT(b, 2 * n);
            } else {
                uint8_t *b = (uint8_t *)chunk;   /* in place: byte k*4 is read before written */
                for (size_t k = 0; k < n; k++) put32(b + 4 * k, f32_bits(chunk[k]));
                EMIT(b, 4 * n);
            }
        }
        release_entries(cv);
        int pct = (int)(100 * pos / file_size);
        if (pct / 10 != last_pct / 10 || i + 1 == cv->not) {
            fprintf(stderr, "clip-convert: writing %3d%% (%s, %.1f MB)\n", pct, o->name, pos / 1e6);
            last_pct = pct;
        }
    }
io:
    if (rc) fail(cv, "cannot write %s: %s", tmp, strerror(errno));
done:
#undef EMIT
    free(chunk);
    free(half);
    clip_buf_free(&tokb);
    if (fclose(f) != 0 && rc == 0) rc = fail(cv, "cannot write %s: %s", tmp, strerror(errno));
    free(iobuf);
    if (rc == 0 && pos != file_size) rc = fail(cv, "internal error: wrote %llu of %llu bytes",
                                               (unsigned long long)pos, (unsigned long long)file_size);
    if (rc == 0 && rename(tmp, out_path) != 0)
        rc = fail(cv, "cannot rename %s to %s: %s", tmp, out_path, strerror(errno));
    if (rc) unlink(tmp);
    *bytes = pos;
    return rc;
}

/* ---------------------------------------------------------------------------------------
 * Driver
 * ------------------------------------------------------------------------------------- */

static const char *usage =
    "usage: clip-convert SRC OUT.clip [--dtype f32|f16] [--name NAME] [--act quick_gelu|gelu]\n"
    "                    [--bpe bpe_simple_vocab_16e6.txt.gz]\n"
    "  SRC: a Hugging Face CLIP folder (config.json, vocab.json, merges.txt,\n"
    "       model.safetensors or pytorch_model.bin) or an OpenAI/OpenCLIP state dict folder.\n";

static int open_weights(conv *cv)
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

static int convert(conv *cv, const char *out_path)
{
    struct stat st;
    if (stat(cv->src, &st) != 0 || !S_ISDIR(st.st_mode))
        return fail(cv, "missing folder %s", cv->src);
    if (open_weights(cv) != 0) return -1;
    fprintf(stderr, "clip-convert: read %s (%zu tensors)\n", cv->weights_path, cv->nt);
    if (find_tensor(cv, "vision_model.embeddings.patch_embedding.weight")) cv->openai_naming = 0;
    else if (find_tensor(cv, "visual.conv1.weight")) cv->openai_naming = 1;
    else if (find_tensor(cv, "visual.layer1.0.conv1.weight"))
        return fail(cv, "unknown architecture: ResNet image tower (visual.layer1...) is not supported");
    else
        return fail(cv, "unknown architecture: neither vision_model.embeddings.patch_embedding.weight "
                    "(Hugging Face) nor visual.conv1.weight (OpenAI) in %s", cv->weights_path);
    if (load_hparams(cv) != 0) return -1;
    if (cv->act_opt) cv->hp.act = strcmp(cv->act_opt, "gelu") == 0;
    if (check_hparams(cv) != 0) return -1;
    const char *from;
    if (load_tokenizer(cv, &from) != 0) return -1;
    if (cv->tok.n != cv->hp.vocab)
        return fail(cv, "tokenizer has %u tokens but the model's vocab_size is %u", cv->tok.n,
                    cv->hp.vocab);
    fprintf(stderr, "clip-convert: tokenizer from %s: %u tokens, %u merges\n", from, cv->tok.n,
            cv->tok.n_merges);
    derive_name(cv);
    const hparams *hp = &cv->hp;
    fprintf(stderr, "clip-convert: %s (%s naming): vision %u px / patch %u, width %u, %u layers, "
            "%u heads, mlp %u; text width %u, %u layers, %u heads, mlp %u, context %u; embed %u; %s\n",
            hp->name, cv->openai_naming ? "OpenAI" : "Hugging Face", hp->image_size, hp->patch,
            hp->v_width, hp->v_layers, hp->v_heads, hp->v_mlp, hp->t_width, hp->t_layers,
            hp->t_heads, hp->t_mlp, hp->context, hp->embed, hp->act ? "gelu" : "quick_gelu");
    if (build_plan(cv) != 0) return -1;
    size_t unused = 0;
    const char *first = NULL;
    for (size_t i = 0; i < cv->nt; i++)
        if (!cv->t[i].used && !strstr(cv->t[i].name, "position_ids")) {
            if (!unused++) first = cv->t[i].name;
        }
    if (unused)
        fprintf(stderr, "clip-convert: note: %zu source tensors not used (first: %s)\n", unused, first);
    uint64_t bytes, params;
    if (write_all(cv, out_path, &bytes, &params) != 0) return -1;
    fprintf(stderr, "clip-convert: wrote %s: model %s, %llu parameters, %s, %llu bytes\n",
            out_path, hp->name, (unsigned long long)params, cv->want_f16 ? "f16" : "f32",
            (unsigned long long)bytes);
    return 0;
}

static void conv_free(conv *cv)
{
    for (size_t i = 0; i < cv->nt; i++) free(cv->t[i].name);
    free(cv->t);
    strmap_free(&cv->tmap);
    for (size_t i = 0; i < cv->nze; i++) {
        free(cv->ze[i].name);
        free(cv->ze[i].inflated);
    }
    free(cv->ze);
    tok_free(&cv->tok);
    free(cv->ot);
    if (cv->map.data) munmap((void *)cv->map.data, cv->map.size);
}

int main(int argc, char **argv)
{
    static conv cv;
    const char *pos[2] = {NULL, NULL};
    int npos = 0;
    for (int i = 1; i < argc; i++) {
        const char *a = argv[i];
        const char *val = i + 1 < argc ? argv[i + 1] : NULL;
        if (!strcmp(a, "-h") || !strcmp(a, "--help")) { fputs(usage, stdout); return 0; }
        if (!strcmp(a, "--dtype") || !strcmp(a, "--name") || !strcmp(a, "--act") ||
            !strcmp(a, "--bpe")) {
            if (!val) { fprintf(stderr, "clip-convert: error: %s needs a value\n%s", a, usage); return 2; }
            i++;
            if (!strcmp(a, "--dtype")) {
                if (strcmp(val, "f32") && strcmp(val, "f16")) {
                    fprintf(stderr, "clip-convert: error: --dtype must be f32 or f16\n");
                    return 2;
                }
                cv.want_f16 = !strcmp(val, "f16");
            } else if (!strcmp(a, "--name")) {
                if (!*val || strlen(val) > 63) {
                    fprintf(stderr, "clip-convert: error: --name must be 1..63 bytes\n");
                    return 2;
                }
                cv.name_opt = val;
            } else if (!strcmp(a, "--act")) {
                if (strcmp(val, "quick_gelu") && strcmp(val, "gelu")) {
                    fprintf(stderr, "clip-convert: error: --act must be quick_gelu or gelu\n");
                    return 2;
                }
                cv.act_opt = val;
            } else {
                cv.bpe_opt = val;
            }
        } else if (a[0] == '-' && a[1]) {
            fprintf(stderr, "clip-convert: error: unknown option %s\n%s", a, usage);
            return 2;
        } else if (npos < 2) {
            pos[npos++] = a;
        } else {
            fprintf(stderr, "clip-convert: error: too many arguments\n%s", usage);
            return 2;
        }
    }
    if (npos != 2) { fputs(usage, stderr); return 2; }
    cv.src = pos[0];
    int rc = convert(&cv, pos[1]);
    if (rc) fprintf(stderr, "clip-convert: error: %s\n", cv.err);
    conv_free(&cv);
    return rc ? 1 : 0;
}
