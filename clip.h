/* clip.h -- the public C API of the clip inference engine.
 *
 * A clip_model is the read-only model (mmap'd .clip file, tokenizer tables): load it once
 * and share it between any number of threads. A clip_ctx is per-caller working state
 * (scratch buffers, thread count): one per thread that computes.
 *
 * Every function that can fail returns a clip_status and, when `err` is not NULL, writes a
 * one-line reason into it. The library never prints, never exits and never reads the
 * environment: the programs read their options (CLIP_MATMUL, ...) and pass them in.
 *
 * Process-wide effects, the only ones: clip_ctx_new sets OpenBLAS's thread count to 1
 * (openblas_set_num_threads is global to the process; the library runs its own threads and
 * calls BLAS from them one panel at a time), and each context starts its n_threads - 1
 * worker threads, which live until clip_ctx_free.
 */
#ifndef CLIP_H
#define CLIP_H

#include <stddef.h>
#include <stdint.h>

#ifdef __cplusplus
extern "C" {
#endif

#define CLIP_VERSION "0.1.0"

typedef enum clip_status {
    CLIP_OK = 0,
    CLIP_ERR_ARG,      /* a bad argument from the caller                                  */
    CLIP_ERR_IO,       /* a file could not be opened, read or mapped                      */
    CLIP_ERR_FORMAT,   /* a model file is corrupt, truncated or of an unknown version     */
    CLIP_ERR_IMAGE,    /* an image could not be decoded, or is over the pixel limit        */
    CLIP_ERR_TEXT,     /* a text is not valid UTF-8                                        */
    CLIP_ERR_NOMEM,    /* an allocation failed                                             */
} clip_status;

typedef struct clip_error {
    clip_status code;
    char msg[256];
} clip_error;

/* ---------------------------------------------------------------------------------------
 * Model
 * ------------------------------------------------------------------------------------- */

typedef enum clip_activation { CLIP_ACT_QUICK_GELU = 0, CLIP_ACT_GELU = 1 } clip_activation;

typedef struct clip_hparams {
    char name[64];            /* e.g. "ViT-B-32"; set by the converter                    */
    /* vision tower */
    uint32_t image_size;      /* input side in pixels, e.g. 224                           */
    uint32_t patch_size;      /* e.g. 32                                                  */
    uint32_t vision_width;
    uint32_t vision_layers;
    uint32_t vision_heads;
    uint32_t vision_mlp;      /* MLP hidden width                                         */
    float    vision_ln_eps;
    /* text tower */
    uint32_t text_width;
    uint32_t text_layers;
    uint32_t text_heads;
    uint32_t text_mlp;
    float    text_ln_eps;
    uint32_t context_length;  /* 77                                                       */
    uint32_t vocab_size;      /* 49408 for OpenAI's vocabulary                            */
    /* shared */
    uint32_t embed_dim;       /* projection width: length of every embedding              */
    uint32_t activation;      /* clip_activation                                          */
    /* preprocessing */
    uint32_t resize_size;     /* shorter side resized to this                             */
    uint32_t crop_size;       /* then center-cropped to crop_size x crop_size             */
    float    image_mean[3];
    float    image_std[3];
} clip_hparams;

typedef struct clip_model clip_model;

/* Maps and validates a .clip file. f32 tensors are used in place; f16 ones are widened. */
clip_status clip_model_load(const char *path, clip_model **out, clip_error *err);
void clip_model_free(clip_model *model);
const clip_hparams *clip_model_hparams(const clip_model *model);
/* Total parameter count and the dtype the file stored ("f32" or "f16"). */
uint64_t clip_model_param_count(const clip_model *model);
const char *clip_model_file_dtype(const clip_model *model);

/* Buffer sizes, so that callers need not know the tensors' shapes: the floats of one
 * preprocessed image (3 x crop x crop), the ids of one tokenized text (the context
 * length), and the floats of one embedding (embed_dim). */
size_t clip_image_floats(const clip_model *model);
size_t clip_text_ids(const clip_model *model);
size_t clip_embed_floats(const clip_model *model);

/* ---------------------------------------------------------------------------------------
 * Tokenizer (tokenizer.c): OpenAI's clip.tokenize(text, truncate=True), ftfy included.
 * ------------------------------------------------------------------------------------- */

/* Writes exactly hparams.context_length ids: SOT, tokens, EOT, zeros. Text longer than the
 * context is truncated with EOT last. `len` is the byte length of `text` (need not be
 * NUL-terminated). Fails with CLIP_ERR_TEXT on invalid UTF-8. */
clip_status clip_tokenize(const clip_model *model, const char *text, size_t len,
                          int32_t *ids, clip_error *err);

/* ---------------------------------------------------------------------------------------
 * Images (image.c): decoding and Pillow-exact preprocessing.
 * ------------------------------------------------------------------------------------- */

/* The Pillow mode an image decodes to; preprocessing follows that mode's rules. */
typedef enum clip_image_mode {
    CLIP_MODE_L = 0,     /* 8-bit gray, 1 channel                                         */
    CLIP_MODE_LA,        /* gray + alpha, 2 channels (resized premultiplied)              */
    CLIP_MODE_RGB,       /* 3 channels                                                    */
    CLIP_MODE_RGBA,      /* 4 channels (resized premultiplied)                            */
    CLIP_MODE_P,         /* palette: stored expanded to RGB/RGBA, resized nearest         */
    CLIP_MODE_I,         /* 16/32-bit gray ("I"/"I;16"): 1 channel, stored as int32      */
} clip_image_mode;

typedef struct clip_image {
    int width, height;
    int channels;        /* channels stored in `pixels` (P: 3 or 4)                       */
    clip_image_mode mode;
    uint8_t *pixels;     /* row-major, interleaved; for CLIP_MODE_I an int32_t array      */
} clip_image;

#define CLIP_DEFAULT_MAX_PIXELS (50u * 1000u * 1000u)

/* Decodes PNG, JPEG, GIF (first frame), BMP from memory. The pixel count is checked against
 * `max_pixels` from the header before any pixel is decoded. */
clip_status clip_image_decode(const uint8_t *data, size_t len, uint64_t max_pixels,
                              clip_image *out, clip_error *err);
void clip_image_free(clip_image *img);

/* OpenAI's _transform: Resize(resize_size, BICUBIC) on the shorter side, CenterCrop,
 * convert("RGB"), /255, Normalize. Writes 3 * crop * crop floats, planar (C, H, W). */
clip_status clip_image_preprocess(const clip_image *img, const clip_hparams *hp,
                                  float *out, clip_error *err);

/* clip_image_decode then clip_image_preprocess for `model`: an encoded file's bytes to the
 * clip_image_floats(model) floats clip_encode_images takes. */
clip_status clip_image_load(const clip_model *model, const uint8_t *data, size_t len,
                            uint64_t max_pixels, float *pixels, clip_error *err);

/* ---------------------------------------------------------------------------------------
 * Inference (vision.c, text.c; their layers in clip.c, kernels.c and ref.c)
 * ------------------------------------------------------------------------------------- */

typedef struct clip_ctx clip_ctx;

/* How a context computes. A zero-initialised struct (or NULL) is the default. */
typedef struct clip_ctx_params {
    int n_threads;        /* <= 0: the number of online CPUs                                */
    const char *matmul;   /* NULL, "" or "auto": the fastest kernel this CPU runs; or
                           * "avx512", "avx2", "blas" (an error when the CPU cannot run it);
                           * or "ref": the plain loops of ref.c, one multiply-add at a time
                           * (slow; for reading and for checking the others)               */
} clip_ctx_params;

/* A context for `model`, which must outlive it. Thread-safety: a context computes one call
 * at a time; use one per calling thread (they share the model). */
clip_status clip_ctx_new(const clip_model *model, const clip_ctx_params *params,
                         clip_ctx **out, clip_error *err);
void clip_ctx_free(clip_ctx *ctx);

/* The context's matmul kernel: "avx512", "avx2", "blas" (one cblas_sgemm per panel) or
 * "ref". */
const char *clip_ctx_matmul(const clip_ctx *ctx);

/* `pixels`: n preprocessed images, each 3 * crop * crop floats. `out`: n * embed_dim floats,
 * raw projected features (not normalized). One forward for the whole batch. */
clip_status clip_encode_images(clip_ctx *ctx, const float *pixels, int n, float *out,
                               clip_error *err);

/* `ids`: n rows of context_length token ids. `out`: n * embed_dim raw features. */
clip_status clip_encode_texts(clip_ctx *ctx, const int32_t *ids, int n, float *out,
                              clip_error *err);

/* Cosine similarity of two raw embeddings of length n. */
float clip_cosine(const float *a, const float *b, size_t n);

#ifdef __cplusplus
}
#endif
#endif /* CLIP_H */
