/* test_preprocess.c -- image decoding and Pillow-exact preprocessing (image.c) against
 * what Pillow 9.4 and OpenAI's _transform give.
 *
 * The fixtures come from tools/pillow_reference.py: tests/data/preprocess_synthetic.txt
 * (hash-generated images of every mode and many sizes, regenerated here, with the hash of
 * the RGB crop Pillow made) and tests/data/images/ (small files of every format and mode).
 * The crops are compared to the byte: preprocessing with mean 0 and std 1 gives x / 255,
 * from which the byte comes back exactly. Then the shared reference images are checked
 * against expected.json's first row of normalised channel 0, when it is there. */
#include "check.h"

#include "clip.h"
#include "json.h"

#include <math.h>
#include <stdint.h>
#include <string.h>
#include <time.h>

/* ---------------------------------------------------------------------------------------
 * Helpers
 * ------------------------------------------------------------------------------------- */

static uint8_t *read_file(const char *path, size_t *len)
{
    FILE *f = fopen(path, "rb");
    if (!f) return NULL;
    uint8_t *buf = NULL;
    size_t cap = 0, n = 0;
    for (;;) {
        if (n == cap) {
            cap = cap ? cap * 2 : 65536;
            uint8_t *nb = realloc(buf, cap);
            if (!nb) { free(buf); fclose(f); return NULL; }
            buf = nb;
        }
        size_t got = fread(buf + n, 1, cap - n, f);
        n += got;
        if (got == 0) break;
    }
    fclose(f);
    *len = n;
    return buf;
}

static uint64_t fnv64(const uint8_t *p, size_t n)
{
    uint64_t h = 0xCBF29CE484222325ull;
    for (size_t i = 0; i < n; i++) {
        h ^= p[i];
        h *= 0x100000001B3ull;
    }
    return h;
}

static double now_ms(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return ts.tv_sec * 1e3 + ts.tv_nsec / 1e6;
}

static clip_hparams plain_hparams(int size, int crop)
{
    clip_hparams hp;
    memset(&hp, 0, sizeof hp);
    hp.resize_size = (uint32_t)size;
    hp.crop_size = (uint32_t)crop;
    for (int c = 0; c < 3; c++) {
        hp.image_mean[c] = 0.0f;
        hp.image_std[c] = 1.0f;
    }
    return hp;
}

/* The RGB crop (interleaved, as Pillow's tobytes) from preprocessing with mean 0, std 1. */
static clip_status crop_bytes(const clip_image *img, int size, int crop, uint8_t *rgb,
                              double *ms, clip_error *err)
{
    clip_hparams hp = plain_hparams(size, crop);
    size_t plane = (size_t)crop * (size_t)crop;
    float *out = malloc(3 * plane * sizeof(float));
    if (!out) return CLIP_ERR_NOMEM;
    double t0 = now_ms();
    clip_status st = clip_image_preprocess(img, &hp, out, err);
    if (ms) *ms = now_ms() - t0;
    if (st == CLIP_OK) {
        for (size_t i = 0; i < plane; i++)
            for (int c = 0; c < 3; c++) {
                long v = lrintf(out[(size_t)c * plane + i] * 255.0f);
                rgb[3 * i + (size_t)c] = (uint8_t)(v < 0 ? 0 : v > 255 ? 255 : v);
            }
    }
    free(out);
    return st;
}

/* ---------------------------------------------------------------------------------------
 * Synthetic images, generated exactly as tools/pillow_reference.py synth() does
 * ------------------------------------------------------------------------------------- */

static uint32_t hash32(uint32_t x)
{
    x ^= x >> 16;
    x *= 0x7FEB352Du;
    x ^= x >> 15;
    x *= 0x846CA68Bu;
    x ^= x >> 16;
    return x;
}

static uint32_t sample(uint32_t seed, uint32_t i) { return hash32(i + seed * 0x9E3779B9u); }

static uint8_t alpha_of(uint32_t t) { return t < 48 ? 0 : t >= 176 ? 255 : (uint8_t)t; }

static int synth(const char *mode, int w, int h, uint32_t seed, clip_image *img)
{
    memset(img, 0, sizeof *img);
    img->width = w;
    img->height = h;
    size_t n = (size_t)w * (size_t)h;
    if (!strcmp(mode, "I")) {
        int32_t *p = malloc(n * sizeof(int32_t));
        if (!p) return 0;
        for (size_t i = 0; i < n; i++) p[i] = (int32_t)(sample(seed, (uint32_t)i) % 320);
        img->mode = CLIP_MODE_I;
        img->channels = 1;
        img->pixels = (uint8_t *)p;
        return 1;
    }
    if (!strcmp(mode, "P")) {
        uint8_t pal[768];
        for (uint32_t j = 0; j < 768; j++) pal[j] = (uint8_t)sample(seed ^ 0x5A5A5A5Au, j);
        uint8_t *p = malloc(n * 3);
        if (!p) return 0;
        for (size_t i = 0; i < n; i++)
            memcpy(p + 3 * i, pal + 3 * (sample(seed, (uint32_t)i) & 0xFF), 3);
        img->mode = CLIP_MODE_P;
        img->channels = 3;
        img->pixels = p;
        return 1;
    }
    int ch;
    if (!strcmp(mode, "L")) { ch = 1; img->mode = CLIP_MODE_L; }
    else if (!strcmp(mode, "LA")) { ch = 2; img->mode = CLIP_MODE_LA; }
    else if (!strcmp(mode, "RGB")) { ch = 3; img->mode = CLIP_MODE_RGB; }
    else if (!strcmp(mode, "RGBA")) { ch = 4; img->mode = CLIP_MODE_RGBA; }
    else return 0;
    uint8_t *p = malloc(n * (size_t)ch);
    if (!p) return 0;
    for (size_t i = 0; i < n * (size_t)ch; i++) {
        uint8_t v = (uint8_t)sample(seed, (uint32_t)i);
        p[i] = (ch == 2 || ch == 4) && i % (size_t)ch == (size_t)ch - 1 ? alpha_of(v) : v;
    }
    img->channels = ch;
    img->pixels = p;
    return 1;
}

static void test_synthetic(void)
{
    const char *path = "tests/data/preprocess_synthetic.txt";
    FILE *f = fopen(path, "r");
    if (!CHECK(f != NULL, "synthetic fixtures: open %s", path)) return;
    char line[512];
    const char *modes[] = {"L", "LA", "RGB", "RGBA", "P", "I"};
    int total[6] = {0}, bad[6] = {0};
    char first_bad[6][320] = {{0}};
    double big_ms = -1;
    int p_padded = 0;
    while (fgets(line, sizeof line, f)) {
        if (line[0] == '#') continue;
        char mode[8];
        int w, h, size, crop;
        unsigned seed;
        unsigned long long want;
        if (sscanf(line, "%7s %d %d %u %d %d %llx", mode, &w, &h, &seed, &size, &crop,
                   &want) != 7) {
            CHECK(0, "synthetic fixtures: malformed line %s", line);
            continue;
        }
        int m = 0;
        while (m < 6 && strcmp(modes[m], mode)) m++;
        if (m == 4 && size < crop) {
            /* Pillow pads a palette image with index 0, i.e. palette entry 0; clip_image
             * keeps the palette expanded, so we pad with black */
            p_padded++;
            continue;
        }
        clip_image img;
        if (m == 6 || !synth(mode, w, h, seed, &img)) {
            CHECK(0, "synthetic fixtures: cannot make %s %dx%d", mode, w, h);
            continue;
        }
        uint8_t *rgb = malloc((size_t)crop * (size_t)crop * 3);
        clip_error err = {0};
        double ms;
        clip_status st = rgb ? crop_bytes(&img, size, crop, rgb, &ms, &err) : CLIP_ERR_NOMEM;
        uint64_t got = st == CLIP_OK ? fnv64(rgb, (size_t)crop * (size_t)crop * 3) : 0;
        total[m]++;
        if (got != want) {
            if (!bad[m]++)
                snprintf(first_bad[m], sizeof first_bad[m], "%dx%d resize %d crop %d%s%s",
                         w, h, size, crop, st ? ": " : "", st ? err.msg : "");
        }
        if (m == 2 && w == 4000 && h == 3000) big_ms = ms;
        free(rgb);
        clip_image_free(&img);
    }
    fclose(f);
    for (int m = 0; m < 6; m++)
        CHECK(total[m] > 0 && bad[m] == 0, "mode %s: %d synthetic images bit-exact against "
              "Pillow (%d differ%s%s)", modes[m], total[m], bad[m], bad[m] ? ", first " : "",
              first_bad[m]);
    if (p_padded)
        check_skip("mode P with resize < crop (%d images): Pillow pads with palette entry 0, "
                   "we pad with black (no CLIP model resizes below its crop)", p_padded);
    if (big_ms >= 0)
        printf("     (preprocessing 4000x3000 RGB to 224x224: %.1f ms)\n", big_ms);
}

/* ---------------------------------------------------------------------------------------
 * Files of every format and mode
 * ------------------------------------------------------------------------------------- */

static const char *mode_name(clip_image_mode m)
{
    switch (m) {
    case CLIP_MODE_L: return "L";
    case CLIP_MODE_LA: return "LA";
    case CLIP_MODE_RGB: return "RGB";
    case CLIP_MODE_RGBA: return "RGBA";
    case CLIP_MODE_P: return "P";
    case CLIP_MODE_I: return "I";
    }
    return "?";
}

/* Our mode for each mode Pillow opens: "1" is resized nearest and converts to 0/255 like a
 * palette image; CMYK JPEGs come out of stb as RGB. */
static const char *our_mode(const char *pillow)
{
    if (!strcmp(pillow, "1")) return "P";
    if (!strcmp(pillow, "CMYK")) return "RGB";
    return pillow;
}

/* stb's JPEG decoder is not libjpeg-turbo's: allowed difference per sample on our JPEG
 * fixtures (measured: see the PASS lines), and the one for CMYK, which Pillow resizes
 * before converting to RGB and stb converts first. */
#define JPEG_MAX_DIFF 6
#define CMYK_MAX_DIFF 8

static int hex_bytes(const char *hex, uint8_t *out, size_t n)
{
    for (size_t i = 0; i < n; i++) {
        unsigned v;
        if (sscanf(hex + 2 * i, "%2x", &v) != 1) return 0;
        out[i] = (uint8_t)v;
    }
    return 1;
}

static void test_files(void)
{
    const char *dir = "tests/data/images";
    char path[512];
    snprintf(path, sizeof path, "%s/expected.txt", dir);
    size_t len;
    char *text = (char *)read_file(path, &len);
    if (!CHECK(text != NULL, "image fixtures: read %s", path)) return;
    text = realloc(text, len + 1);
    text[len] = 0;
    for (char *line = strtok(text, "\n"); line; line = strtok(NULL, "\n")) {
        if (line[0] == '#') continue;
        char name[128], pmode[16];
        int w, h, size, crop, off = 0;
        unsigned long long want;
        if (sscanf(line, "%127s %15s%n", name, pmode, &off) != 2) continue;
        snprintf(path, sizeof path, "%s/%s", dir, name);
        size_t n;
        uint8_t *data = read_file(path, &n);
        if (!CHECK(data != NULL, "%s: read", name)) continue;
        clip_image img;
        clip_error err = {0};
        clip_status st = clip_image_decode(data, n, CLIP_DEFAULT_MAX_PIXELS, &img, &err);
        free(data);
        if (!strcmp(pmode, "error")) {
            CHECK(st == CLIP_ERR_IMAGE && !strncmp(err.msg, "Could not decode image", 22),
                  "%s: refused as Pillow refuses it (%s)", name, st ? err.msg : "decoded");
            if (st == CLIP_OK) clip_image_free(&img);
            continue;
        }
        if (sscanf(line + off, "%d %d %d %d %llx", &w, &h, &size, &crop, &want) != 5) {
            CHECK(0, "%s: malformed expected line", name);
            if (st == CLIP_OK) clip_image_free(&img);
            continue;
        }
        if (!CHECK(st == CLIP_OK, "%s: decodes (%s)", name, st ? err.msg : "ok")) continue;
        int same_mode = !strcmp(mode_name(img.mode), our_mode(pmode));
        size_t nb = (size_t)crop * (size_t)crop * 3;
        uint8_t *rgb = malloc(nb);
        st = crop_bytes(&img, size, crop, rgb, NULL, &err);
        if (strstr(name, ".jpg")) {
            const char *hex = strrchr(line, ' ') + 1;
            uint8_t *ref = malloc(nb);
            int maxd = -1;
            if (st == CLIP_OK && strlen(hex) == 2 * nb && hex_bytes(hex, ref, nb)) {
                maxd = 0;
                for (size_t i = 0; i < nb; i++) {
                    int d = abs((int)rgb[i] - (int)ref[i]);
                    if (d > maxd) maxd = d;
                }
            }
            int limit = !strcmp(pmode, "CMYK") ? CMYK_MAX_DIFF : JPEG_MAX_DIFF;
            CHECK(same_mode && img.width == w && img.height == h && maxd >= 0 && maxd <= limit,
                  "%s: mode %s as Pillow's %s, %dx%d, crop within %d of Pillow's (max diff %d)",
                  name, mode_name(img.mode), pmode, img.width, img.height, limit, maxd);
            free(ref);
        } else {
            uint64_t got = st == CLIP_OK ? fnv64(rgb, nb) : 0;
            CHECK(same_mode && img.width == w && img.height == h && got == want,
                  "%s: mode %s as Pillow's %s, %dx%d, crop bit-exact%s", name,
                  mode_name(img.mode), pmode, img.width, img.height,
                  got == want ? "" : " -- DIFFERS");
        }
        free(rgb);
        clip_image_free(&img);
    }
    free(text);
}

/* ---------------------------------------------------------------------------------------
 * Bad input: never a crash, always a clear CLIP_ERR_IMAGE
 * ------------------------------------------------------------------------------------- */

static void test_bad_input(void)
{
    clip_image img;
    clip_error err = {0};
    size_t n;
    uint8_t *png = read_file("tests/data/images/rgb8.png", &n);
    if (!CHECK(png != NULL, "bad input: read rgb8.png")) return;

    clip_status st = clip_image_decode(png, n, 37 * 23 - 1, &img, &err);
    CHECK(st == CLIP_ERR_IMAGE && strstr(err.msg, "over the limit"),
          "an image over the pixel limit is refused from its header (%s)", err.msg);
    st = clip_image_decode(png, n, 37 * 23, &img, &err);
    CHECK(st == CLIP_OK, "an image exactly at the pixel limit decodes");
    if (st == CLIP_OK) clip_image_free(&img);

    st = clip_image_decode(png, (size_t)INT32_MAX + 1, CLIP_DEFAULT_MAX_PIXELS, &img, &err);
    CHECK(st == CLIP_ERR_IMAGE, "more than INT_MAX bytes is refused before reading (%s)",
          err.msg);
    st = clip_image_decode(png, 0, CLIP_DEFAULT_MAX_PIXELS, &img, &err);
    CHECK(st == CLIP_ERR_IMAGE, "empty data is refused (%s)", err.msg);
    st = clip_image_decode((const uint8_t *)"hello, world", 12, CLIP_DEFAULT_MAX_PIXELS, &img,
                           &err);
    CHECK(st == CLIP_ERR_IMAGE && strstr(err.msg, "not a PNG, JPEG, GIF or BMP"),
          "text is refused (%s)", err.msg);

    /* a header announcing 100000 x 100000 pixels */
    uint8_t *big = malloc(n);
    memcpy(big, png, n);
    big[16] = 0; big[17] = 1; big[18] = 0x86; big[19] = 0xA0;
    big[20] = 0; big[21] = 1; big[22] = 0x86; big[23] = 0xA0;
    st = clip_image_decode(big, n, CLIP_DEFAULT_MAX_PIXELS, &img, &err);
    CHECK(st == CLIP_ERR_IMAGE, "a 100000x100000 header is refused (%s)", err.msg);
    free(big);

    /* every prefix of every fixture file: decoded or refused, never a crash */
    const char *files[] = {"rgb8.png", "palette.gif", "offset_frame_trns.gif", "rgb.bmp",
                           "rgba_v4.bmp", "baseline.jpg", "progressive.jpg", "gray16.png"};
    int crashes_none = 1, bad_status = 0;
    for (size_t f = 0; f < sizeof files / sizeof *files; f++) {
        char path[256];
        snprintf(path, sizeof path, "tests/data/images/%s", files[f]);
        size_t fl;
        uint8_t *d = read_file(path, &fl);
        if (!d) { crashes_none = 0; continue; }
        for (size_t cut = 1; cut < fl; cut += 1 + cut / 64) {
            uint8_t *copy = malloc(cut);   /* exact size, so ASan sees any over-read */
            memcpy(copy, d, cut);
            st = clip_image_decode(copy, cut, CLIP_DEFAULT_MAX_PIXELS, &img, &err);
            if (st == CLIP_OK) {
                clip_hparams hp = plain_hparams(32, 32);
                float *out = malloc(3 * 32 * 32 * sizeof(float));
                if (clip_image_preprocess(&img, &hp, out, &err) != CLIP_OK) bad_status++;
                free(out);
                clip_image_free(&img);
            } else if (st != CLIP_ERR_IMAGE || !err.msg[0]) {
                bad_status++;
            }
            free(copy);
        }
        free(d);
    }
    CHECK(crashes_none && bad_status == 0, "every prefix of 8 fixture files decodes or is "
          "refused with CLIP_ERR_IMAGE and a message (%d wrong)", bad_status);
    free(png);
}

/* ---------------------------------------------------------------------------------------
 * The shared reference: expected.json's first row of normalised channel 0 (tiny-hf)
 * ------------------------------------------------------------------------------------- */

static void test_reference(void)
{
    const char *ref = check_reference_dir();
    if (!ref) {
        check_skip("reference images: ../shared/reference is absent");
        return;
    }
    char path[512];
    snprintf(path, sizeof path, "%s/expected.json", ref);
    size_t len;
    char *text = (char *)read_file(path, &len);
    if (!CHECK(text != NULL, "reference: read %s", path)) return;
    char jerr[256];
    clip_json_doc *doc = clip_json_parse(text, len, 0, jerr, sizeof jerr);
    free(text);
    if (!CHECK(doc != NULL, "reference: parse expected.json (%s)", doc ? "" : jerr)) return;

    /* tiny-hf's preprocessing: OpenAI's 224 / 224 and mean/std */
    snprintf(path, sizeof path, "%s/tiny-hf/preprocessor_config.json", ref);
    char *pc = (char *)read_file(path, &len);
    clip_json_doc *pdoc = pc ? clip_json_parse(pc, len, 0, jerr, sizeof jerr) : NULL;
    free(pc);
    const clip_json *mean = pdoc ? clip_json_get(clip_json_root(pdoc), "image_mean") : NULL;
    const clip_json *sd = pdoc ? clip_json_get(clip_json_root(pdoc), "image_std") : NULL;
    const clip_json *cs = pdoc ? clip_json_get(clip_json_root(pdoc), "crop_size") : NULL;
    const clip_json *rs = pdoc ? clip_json_get(clip_json_root(pdoc), "size") : NULL;
    if (!CHECK(mean && sd && cs && rs && mean->n == 3 && sd->n == 3,
               "reference: tiny-hf preprocessor_config.json")) {
        clip_json_free(doc);
        clip_json_free(pdoc);
        return;
    }
    clip_hparams hp = plain_hparams((int)rs->number, (int)cs->number);
    for (int c = 0; c < 3; c++) {
        hp.image_mean[c] = (float)mean->items[c].number;
        hp.image_std[c] = (float)sd->items[c].number;
    }
    clip_json_free(pdoc);

    const clip_json *models = clip_json_get(clip_json_root(doc), "models");
    const clip_json *tiny = models ? clip_json_get(models, "tiny-hf") : NULL;
    const clip_json *images = tiny ? clip_json_get(tiny, "images") : NULL;
    if (!CHECK(images && images->type == CLIP_JSON_OBJECT, "reference: tiny-hf images")) {
        clip_json_free(doc);
        return;
    }
    size_t crop = hp.crop_size, plane = crop * crop;
    float *out = malloc(3 * plane * sizeof(float));
    for (size_t i = 0; i < images->n; i++) {
        const char *name = images->keys[i];
        const clip_json *e = &images->items[i];
        const clip_json *row = clip_json_get(e, "pixels_first_row_channel0");
        const clip_json *error = clip_json_get(e, "error");
        snprintf(path, sizeof path, "%s/images/%s", ref, name);
        uint8_t *data = read_file(path, &len);
        if (!CHECK(data != NULL, "reference %s: read", name)) continue;
        clip_image img;
        clip_error err = {0};
        clip_status st = clip_image_decode(data, len, CLIP_DEFAULT_MAX_PIXELS, &img, &err);
        free(data);
        if (error) {
            CHECK(st == CLIP_ERR_IMAGE && !strncmp(err.msg, "Could not decode image", 22),
                  "reference %s: refused as Pillow refused it (\"%s\"; ours: %s)", name,
                  error->str, st ? err.msg : "decoded");
            if (st == CLIP_OK) clip_image_free(&img);
            continue;
        }
        if (!row) {
            check_skip("reference %s: no pixels_first_row_channel0", name);
            if (st == CLIP_OK) clip_image_free(&img);
            continue;
        }
        if (!CHECK(st == CLIP_OK, "reference %s: decodes (%s)", name, st ? err.msg : ""))
            continue;
        double ms;
        double t0 = now_ms();
        st = clip_image_preprocess(&img, &hp, out, &err);
        ms = now_ms() - t0;
        clip_image_free(&img);
        if (!CHECK(st == CLIP_OK && row->n == crop, "reference %s: preprocesses (%s)", name,
                   st ? err.msg : "row length"))
            continue;
        int exact = 1;
        double maxd = 0;
        for (size_t x = 0; x < crop; x++) {
            float want = (float)row->items[x].number;
            if (out[x] != want) exact = 0;
            double d = fabs((double)out[x] - (double)want);
            if (d > maxd) maxd = d;
        }
        if (strstr(name, ".jpg")) {
            /* one step of 1/255 in normalised units is about 0.0146 (std 0.269) */
            CHECK(maxd <= JPEG_MAX_DIFF / 255.0 / 0.26862954 + 1e-6,
                  "reference %s: first row within %d steps of Pillow's (max |diff| %.5f = %.1f "
                  "steps, %.1f ms)", name, JPEG_MAX_DIFF, maxd, maxd * 255.0 * 0.26862954, ms);
        } else {
            CHECK(exact, "reference %s: first row of channel 0 identical to Pillow's "
                  "(max |diff| %g, %.1f ms)", name, maxd, ms);
        }
    }
    free(out);
    clip_json_free(doc);
}

/* ---------------------------------------------------------------------------------------
 * Normalize: each channel's own mean and std, in every mode
 *
 * The fixtures above use mean 0 and std 1, which cannot tell the channels' constants
 * apart. Here each output value must be exactly ((float)v / 255 - mean[c]) / std[c] in
 * float, v being the byte the mean-0 run gives at the same place: gray and 16-bit images
 * spread one sample over three channels, padding is v = 0.
 * ------------------------------------------------------------------------------------- */

static void test_normalize(void)
{
    static const char *modes[] = {"L", "LA", "RGB", "RGBA", "P", "I"};
    static const float mean[3] = {0.48145466f, 0.4578275f, 0.40821073f};
    static const float std[3] = {0.26862954f, 0.26130258f, 0.27577711f};
    /* no resize with crop inside, padding on both axes, and a real resize */
    static const int shapes[][4] = {{24, 24, 24, 20}, {10, 14, 14, 20}, {40, 30, 20, 16}};
    for (size_t m = 0; m < sizeof modes / sizeof *modes; m++) {
        int checked = 0, wrong = 0;
        for (size_t k = 0; k < sizeof shapes / sizeof *shapes; k++) {
            int w = shapes[k][0], h = shapes[k][1], size = shapes[k][2], crop = shapes[k][3];
            if (!strcmp(modes[m], "P") && size < crop) continue;   /* pads with black: above */
            clip_image img;
            if (!synth(modes[m], w, h, (uint32_t)(7 + k), &img)) continue;
            size_t plane = (size_t)crop * (size_t)crop;
            uint8_t *rgb = malloc(3 * plane);
            float *out = malloc(3 * plane * sizeof(float));
            clip_hparams hp = plain_hparams(size, crop);
            memcpy(hp.image_mean, mean, sizeof mean);
            memcpy(hp.image_std, std, sizeof std);
            clip_error err = {0};
            if (rgb && out && crop_bytes(&img, size, crop, rgb, NULL, &err) == CLIP_OK &&
                clip_image_preprocess(&img, &hp, out, &err) == CLIP_OK) {
                for (size_t i = 0; i < plane; i++)
                    for (int c = 0; c < 3; c++) {
                        float want = ((float)rgb[3 * i + (size_t)c] / 255.0f - mean[c]) / std[c];
                        wrong += memcmp(&want, &out[(size_t)c * plane + i], sizeof want) != 0;
                        checked++;
                    }
            } else {
                wrong++;
            }
            free(rgb);
            free(out);
            clip_image_free(&img);
        }
        CHECK(checked > 0 && wrong == 0, "mode %s: Normalize uses each channel's mean and std "
              "(%d values, %d wrong)", modes[m], checked, wrong);
    }
}

int main(void)
{
    test_synthetic();
    test_normalize();
    test_files();
    test_bad_input();
    test_reference();
    return check_exit();
}
