/* fuzz_model.c -- libFuzzer harness for the .clip loader (clip_model_load in clip.c) and,
 * when a mutated file still loads, the code that trusts what the loader accepted: the
 * tokenizer built from the file's section and one forward of each tower.
 *
 *   make fuzz FUZZ_SECONDS=180      (builds build/fuzz/fuzz_model; seeds tests/fuzz/corpus/model)
 *
 * clip.c only loads from a path (it mmaps the file), so the input is written to a memfd
 * made once per process and loaded through /proc/self/fd/N: no file system traffic, and the
 * loader's own open/fstat/mmap path is the one exercised.
 *
 * Invariants: a failure has a status other than CLIP_OK and a reason; a loaded model's
 * hyperparameters are inside the ranges docs/clip-format.md promises; tokenizing works and
 * gives SOT first, ids below vocab_size; a small model encodes one text and one image. */
#include "clip.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <unistd.h>

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

static void require(int ok, const char *what)
{
    if (!ok) {
        fprintf(stderr, "invariant broken: %s\n", what);
        abort();
    }
}

static int model_fd = -1;
static char model_path[64];

static int write_input(const uint8_t *data, size_t size)
{
    if (model_fd < 0) {
        model_fd = memfd_create("fuzz-model", MFD_CLOEXEC);
        if (model_fd < 0) return -1;
        snprintf(model_path, sizeof model_path, "/proc/self/fd/%d", model_fd);
    }
    if (ftruncate(model_fd, 0) != 0) return -1;
    size_t done = 0;
    while (done < size) {
        ssize_t n = pwrite(model_fd, data + done, size - done, (off_t)done);
        if (n <= 0) return -1;
        done += (size_t)n;
    }
    return 0;
}

static void check_hparams(const clip_hparams *hp)
{
    require(memchr(hp->name, 0, sizeof hp->name) != NULL, "name not NUL-terminated");
    require(hp->image_size >= 1 && hp->image_size <= 4096, "image_size range");
    require(hp->patch_size >= 1 && hp->image_size % hp->patch_size == 0, "patch_size");
    require(hp->vision_heads && hp->vision_width % hp->vision_heads == 0, "vision heads");
    require(hp->text_heads && hp->text_width % hp->text_heads == 0, "text heads");
    require(hp->context_length >= 2 && hp->context_length <= 1024, "context_length range");
    require(hp->vocab_size >= 2 && hp->vocab_size <= (1u << 20), "vocab_size range");
    require(hp->crop_size == hp->image_size && hp->resize_size >= hp->crop_size, "crop/resize");
    require(hp->activation <= 1, "activation");
    for (int c = 0; c < 3; c++) require(hp->image_std[c] > 0, "image_std > 0");
}

/* One text and one flat grey image through the towers, only for files small enough that
 * a forward costs microseconds (the fuzzer runs thousands per second). */
static void run_model(const clip_model *m, size_t file_size)
{
    const clip_hparams *hp = clip_model_hparams(m);
    clip_error err;
    int32_t *ids = malloc(hp->context_length * sizeof *ids);
    require(ids != NULL, "malloc");
    static const char *texts[] = {"a photo of a cat", "", "Crème brûlée 🚀 <|endoftext|> x"};
    for (size_t i = 0; i < sizeof texts / sizeof *texts; i++) {
        require(clip_tokenize(m, texts[i], strlen(texts[i]), ids, &err) == CLIP_OK,
                "tokenizing valid UTF-8 failed");
        for (uint32_t k = 0; k < hp->context_length; k++)
            require(ids[k] >= 0 && (uint32_t)ids[k] < hp->vocab_size, "token id out of range");
    }
    uint32_t grid = hp->image_size / hp->patch_size;
    if (file_size <= (1u << 20) && hp->image_size <= 128 && grid * grid <= 256) {
        clip_ctx *ctx = NULL;
        clip_ctx_params params = {1, NULL};
        if (clip_ctx_new(m, &params, &ctx, &err) == CLIP_OK) {
            size_t px = clip_image_floats(m);
            float *pixels = calloc(px, sizeof *pixels);
            float *emb = malloc(hp->embed_dim * sizeof *emb);
            require(pixels && emb, "malloc");
            require(clip_encode_texts(ctx, ids, 1, emb, &err) == CLIP_OK, "text forward failed");
            require(clip_encode_images(ctx, pixels, 1, emb, &err) == CLIP_OK,
                    "image forward failed");
            free(pixels);
            free(emb);
            clip_ctx_free(ctx);
        }
    }
    free(ids);
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    if (write_input(data, size) != 0) return 0;
    clip_model *m = NULL;
    clip_error err;
    memset(&err, 0, sizeof err);
    clip_status s = clip_model_load(model_path, &m, &err);
    if (s != CLIP_OK) {
        require(m == NULL, "a failed load returned a model");
        require(err.msg[0] != 0, "a failed load gave no reason");
        return 0;
    }
    check_hparams(clip_model_hparams(m));
    require(clip_model_param_count(m) > 0, "no parameters");
    run_model(m, size);
    clip_model_free(m);
    return 0;
}
