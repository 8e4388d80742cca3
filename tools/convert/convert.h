/* convert.h -- what the rooms of clip-convert share: the converter's state (conv), the
 * source tensors the weight readers fill, the hyperparameters, tokenizer and plan the writer
 * reads, and each room's entry points. Only tools/convert/ and the converter's fuzz harness
 * (tests/fuzz/fuzz_convert.c) include it.
 *
 * clip-convert turns a downloaded CLIP checkpoint folder into one `.clip` file
 * (docs/clip-format.md). Its rooms, in the order convert() in main.c runs them:
 *
 *   main.c         the command line, and convert(): the pipeline from folder to file
 *   weights.c      which weight file; the table of source tensors; reading their elements
 *   safetensors.c  model.safetensors: the JSON header and the data it points into
 *   zip.c          zip archives: central directory, zip64, stored and deflated entries
 *   pickle.c       the pickle machine: runs a data.pkl into values (dicts, storages, tensors)
 *   torch.c        PyTorch archives (<name>/data.pkl + <name>/data/<key>) to source tensors
 *   hparams.c      the hyperparameters: config.json, preprocessor_config.json,
 *                  open_clip_config.json, or inferred from OpenAI's tensor shapes
 *   vocab.c        the tokenizer: vocab.json + merges.txt, or bpe_simple_vocab_16e6.txt.gz
 *   plan.c         every output tensor: our name, its shape, the source tensors it comes from
 *   write.c        the .clip file: header, tokenizer section, table, tensors in f32 or f16
 *   util.c         errors, paths, whole files and mappings, a string -> index map, cleanup
 *
 * Every room reports a failure the same way: fail() puts one line into cv->err and returns
 * -1, and main() prints it as "clip-convert: error: ...". Only convert() and the writer's
 * progress print anything else.
 *
 * This header must not hold what a single room needs: that stays static in the room. From
 * the engine the converter takes only the format's panel width (CLIP_PANEL, in write.c);
 * from json.c, the JSON reader and the append buffer.
 */
#ifndef CLIP_CONVERT_H
#define CLIP_CONVERT_H

#include "json.h"

#include <limits.h>
#include <stddef.h>
#include <stdint.h>
#include <string.h>

/* ---------------------------------------------------------------------------------------
 * Limits and errors
 * ------------------------------------------------------------------------------------- */

#define MAX_JSON_FILE   (256u << 20)   /* config/vocab files; a safetensors header is capped
                                          at 100 MB by the format itself                   */
#define MAX_TEXT_FILE   (64u << 20)    /* merges.txt, the inflated bpe vocabulary          */
#define MAX_SRC_DIMS    8
#define MAX_HYPER       (1u << 20)     /* any width, layer count, vocab ... above is bogus */

typedef struct conv conv;

/* Formats the one-line reason into cv->err and returns -1, so `return fail(...)` reads as
 * what it does. */
int fail(conv *cv, const char *fmt, ...) __attribute__((format(printf, 2, 3)));

/* ---------------------------------------------------------------------------------------
 * Numbers as the files store them: little-endian integers, f16 and bfloat16. Inline: the
 * writer reads every element of the model through elem().
 * ------------------------------------------------------------------------------------- */

static inline uint16_t rd16(const uint8_t *p) { return (uint16_t)(p[0] | p[1] << 8); }
static inline uint32_t rd32(const uint8_t *p) { return (uint32_t)rd16(p) | (uint32_t)rd16(p + 2) << 16; }
static inline uint64_t rd64(const uint8_t *p) { return (uint64_t)rd32(p) | (uint64_t)rd32(p + 4) << 32; }

static inline uint32_t f32_bits(float f) { uint32_t u; memcpy(&u, &f, 4); return u; }
static inline float bits_f32(uint32_t u) { float f; memcpy(&f, &u, 4); return f; }

static inline float f16_to_f32(uint16_t h)
{
    uint32_t sign = (uint32_t)(h & 0x8000) << 16, e = (h >> 10) & 0x1f, m = h & 0x3ff;
    if (e == 0x1f) return bits_f32(sign | 0x7f800000u | (m << 13));
    if (e) return bits_f32(sign | ((e + 112) << 23) | (m << 13));
    if (!m) return bits_f32(sign);
    e = 113;                                  /* normalize the subnormal */
    while (!(m & 0x400)) { m <<= 1; e--; }
    return bits_f32(sign | (e << 23) | ((m & 0x3ff) << 13));
}

enum { DT_F32, DT_F16, DT_BF16, DT_OTHER };

/* Element i of source data p in its dtype, as f32 (bfloat16 widens exactly). */
static inline float elem(const uint8_t *p, int dtype, uint64_t i)
{
    if (dtype == DT_F32) { float f; memcpy(&f, p + 4 * i, 4); return f; }
    uint16_t h = rd16(p + 2 * i);
    return dtype == DT_F16 ? f16_to_f32(h) : bits_f32((uint32_t)h << 16);
}

/* ---------------------------------------------------------------------------------------
 * util.c: files, paths, a string -> index hash map
 * ------------------------------------------------------------------------------------- */

typedef struct mapped {
    const uint8_t *data;
    size_t size;
} mapped;

int file_exists(const char *path);
int join(conv *cv, char *out, size_t cap, const char *dir, const char *name);
/* Reads a whole (small) file into a NUL-terminated heap buffer. */
int read_file(conv *cv, const char *path, size_t limit, char **out, size_t *len);
int map_file(conv *cv, const char *path, mapped *m);
/* A JSON file whose root must be an object (limit MAX_JSON_FILE). */
int load_json_file(conv *cv, const char *path, clip_json_doc **doc);
/* Grows *arr to hold `need` elements of `elem` bytes (doubling from 16). */
int grow(void **arr, size_t *cap, size_t need, size_t elem);

typedef struct strmap {
    uint32_t *slots;   /* index + 1, 0 = empty */
    size_t cap;        /* power of two          */
} strmap;

/* Keys live with the caller: key(i) returns the string of index i. strmap_find returns the
 * index of (s, n), or -1. With insert_index >= 0, inserts it when absent and returns -1 then. */
typedef const char *(*strmap_key_fn)(const void *ctx, uint32_t i, size_t *len);
int strmap_init(strmap *m, size_t n);
void strmap_free(strmap *m);
long strmap_find(const strmap *m, const char *s, size_t n, strmap_key_fn key,
                 const void *ctx, long insert_index);

/* ---------------------------------------------------------------------------------------
 * The converter's state
 * ------------------------------------------------------------------------------------- */

/* A source tensor, from either weight file kind. */
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

/* An output tensor of the plan. */
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

/* Frees everything conv holds and unmaps the weight file (util.c). */
void conv_free(conv *cv);

/* ---------------------------------------------------------------------------------------
 * weights.c: the weight file and the source tensor table
 * ------------------------------------------------------------------------------------- */

/* Finds the folder's weight file, maps it, and runs its reader. */
int open_weights(conv *cv);
stensor *find_tensor(conv *cv, const char *name);
int add_tensor(conv *cv, stensor *t);
int element_size(int dtype);
int shape_numel(const int64_t *shape, int ndim, uint64_t *numel);
void shape_str(char *out, size_t cap, const int64_t *s, int n);
/* The first byte of a tensor's data (a zip entry is read, and inflated, on first use). */
const uint8_t *tensor_data(conv *cv, stensor *t);

/* ---------------------------------------------------------------------------------------
 * The weight readers: each fills cv->t from cv->map
 * ------------------------------------------------------------------------------------- */

int load_safetensors(conv *cv);                     /* safetensors.c */
int load_torch_zip(conv *cv);                       /* torch.c */

/* zip.c */
int load_zip_directory(conv *cv);
const zentry *find_entry(const conv *cv, const char *name);
const uint8_t *entry_bytes(conv *cv, zentry *z);
void release_entries(conv *cv);
uint32_t crc32_update(uint32_t crc, const uint8_t *p, size_t n);
int inflate_raw(const uint8_t *in, size_t n, uint8_t *out, size_t size);

/* pickle.c: the values a pickle builds, and the machine that runs it */
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

/* Runs the pickle from pk->p to pk->end; returns the value STOP leaves (or NULL with
 * cv->err set). Every value lives in pk's pool until pickle_free. */
pval *run_pickle(pickle *pk);
void pickle_free(pickle *pk);

/* torch.c: a state dict's tensors as source tensors, each checked against its storage entry
 * <prefix>/data/<key> (already in cv->ze). */
int collect_state_dict(conv *cv, const pval *dict, const char *prefix);

/* ---------------------------------------------------------------------------------------
 * What is made of the weights
 * ------------------------------------------------------------------------------------- */

/* hparams.c: cv->hp from the configs or the shapes, checked, and the model's name. */
int load_hparams(conv *cv);
int check_hparams(conv *cv);
void derive_name(conv *cv);

/* vocab.c: cv->tok; *from names the source for the summary line. */
int load_tokenizer(conv *cv, const char **from);
void tok_free(tokenizer *t);

/* plan.c: cv->ot, every output tensor in file order. */
int build_plan(conv *cv);

/* write.c: the .clip file at out_path (through out_path.tmp and a rename). */
int write_all(conv *cv, const char *out_path, uint64_t *bytes, uint64_t *params);

#endif
