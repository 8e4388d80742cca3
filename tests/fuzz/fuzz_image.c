/* fuzz_image.c -- libFuzzer target: decode any bytes as an image under a 4-megapixel limit
 * and, when that works, preprocess it at a small and at CLIP's size.
 *
 *   clang-14 -g -O1 -fsanitize=fuzzer,address,undefined -I. tests/fuzz/fuzz_image.c \
 *       image.c error.c clip.c ... -lstb -lm
 *   ./fuzz_image -max_total_time=180 tests/fuzz/corpus/image
 *
 * Any crash, sanitizer report, leak, or a decode that succeeds with an inconsistent image
 * is a bug. */
#include "clip.h"

#include <stdlib.h>
#include <string.h>

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    clip_image img;
    clip_error err;
    if (clip_image_decode(data, size, 4u * 1000u * 1000u, &img, &err) != CLIP_OK) {
        if (err.msg[0] == 0) abort();   /* every failure says why */
        return 0;
    }
    if (img.width <= 0 || img.height <= 0 || !img.pixels) abort();
    static const uint32_t sizes[][2] = {{16, 16}, {224, 224}, {12, 16}};
    float *out = malloc(3 * 224 * 224 * sizeof(float));
    for (size_t i = 0; out && i < sizeof sizes / sizeof *sizes; i++) {
        clip_hparams hp;
        memset(&hp, 0, sizeof hp);
        hp.resize_size = sizes[i][0];
        hp.crop_size = sizes[i][1];
        for (int c = 0; c < 3; c++) {
            hp.image_mean[c] = 0.5f;
            hp.image_std[c] = 0.25f;
        }
        if (clip_image_preprocess(&img, &hp, out, &err) != CLIP_OK) abort();
    }
    free(out);
    clip_image_free(&img);
    return 0;
}
