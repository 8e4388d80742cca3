/* image.c -- encoded image files in, the vision tower's input out: decoding with stb_image,
 * then preprocessing exactly as OpenAI's clip.py does it with Pillow 9.4 (clip.h, "Images").
 *
 * This room ends where the tensors begin: it writes the planar floats clip_encode_images
 * takes (vision.c), and knows of the model only its hyperparameters (sizes, mean, std). It
 * never touches weights, contexts or the network: the server hands it bytes it has already
 * read. Start from clip_image_load: clip_image_decode, then clip_image_preprocess. */

#include "clip.h"
#include "error.h"

/* =======================================================================================
 * Decoding
 * ===================================================================================== */

/* stb_image decodes the pixels; we read each format's header first ourselves, to refuse
 * oversized images before any pixel memory exists and to know which Pillow mode the file
 * opens as (Image.open(f).mode in Pillow 9.4), because the preprocessing depends on it:
 *   PNG  gray 1-bit "1" (kept as P: resized nearest), gray 2/4/8-bit L, gray 16-bit I,
 *        RGB (16-bit: high byte), palette P, gray+alpha LA (16-bit: RGBA), RGBA (16-bit:
 *        high byte);
 *   JPEG 1 component L, 3 RGB; 4 (CMYK) is converted to RGB by stb before the resize,
 *        where Pillow resizes in CMYK and converts after (close, not bit-exact);
 *   GIF  first frame P, or L when the palette is the identity gray ramp (or absent);
 *   BMP  1/4/8-bit P, or "1"/L when the palette is the gray ramp; 16/24/32-bit RGB;
 *        32-bit with an alpha bitfield RGBA. */

#include <stb/stb_image.h>

#include <limits.h>
#include <math.h>
#include <stdlib.h>
#include <string.h>

/* Pillow keeps sizes in int and stb refuses sides above 2^24; either side beyond this is a
 * corrupt header, whatever the pixel limit says. */
#define MAX_IMAGE_SIDE (1 << 24)

enum image_format { FORMAT_PNG, FORMAT_JPEG, FORMAT_GIF, FORMAT_BMP };

typedef struct image_header {
    enum image_format format;
    int width, height;
    clip_image_mode mode;
    int channels;             /* what we ask stb for                                     */
    int sixteen;              /* PNG gray 16-bit: decode with stbi_load_16               */
    /* GIF: the first frame, which Pillow composes differently from stb (see gif_fixup) */
    int gif_x, gif_y, gif_w, gif_h;
    int gif_transparency;     /* index, or -1                                            */
    const uint8_t *gif_palette;
    int gif_palette_entries;  /* 0: no palette (L)                                       */
} image_header;

static uint32_t be32(const uint8_t *p)
{
    return (uint32_t)p[0] << 24 | (uint32_t)p[1] << 16 | (uint32_t)p[2] << 8 | p[3];
}
static uint32_t le16(const uint8_t *p) { return (uint32_t)p[0] | (uint32_t)p[1] << 8; }
static uint32_t le32(const uint8_t *p) { return le16(p) | le16(p + 2) << 16; }

static clip_status png_header(const uint8_t *d, size_t len, image_header *h, clip_error *err)
{
    if (len < 33 || memcmp(d + 12, "IHDR", 4) != 0 || be32(d + 8) != 13)
        return clip_fail(err, CLIP_ERR_IMAGE, "Could not decode image: PNG without IHDR");
    uint32_t w = be32(d + 16), hh = be32(d + 20);
    int depth = d[24], type = d[25];
    if (w > MAX_IMAGE_SIDE || hh > MAX_IMAGE_SIDE)
        return clip_fail(err, CLIP_ERR_IMAGE, "Could not decode image: PNG of %ux%u pixels",
                         (unsigned)w, (unsigned)hh);
    h->width = (int)w;
    h->height = (int)hh;
    switch (type) {
    case 0:
        /* "1" is resized nearest and converts to 0/255: exactly CLIP_MODE_P on the values
         * stb expands 1-bit gray to. 16-bit gray opens as "I" (32-bit integers). */
        if (depth == 1) { h->mode = CLIP_MODE_P; h->channels = 3; }
        else if (depth == 16) { h->mode = CLIP_MODE_I; h->channels = 1; h->sixteen = 1; }
        else { h->mode = CLIP_MODE_L; h->channels = 1; }
        break;
    case 2: h->mode = CLIP_MODE_RGB; h->channels = 3; break;
    case 3: h->mode = CLIP_MODE_P; h->channels = 3; break;
    case 4:   /* 16-bit gray+alpha opens as RGBA (rawmode "LA;16B"): the same values */
        if (depth == 16) { h->mode = CLIP_MODE_RGBA; h->channels = 4; }
        else { h->mode = CLIP_MODE_LA; h->channels = 2; }
        break;
    case 6: h->mode = CLIP_MODE_RGBA; h->channels = 4; break;
    default:
        return clip_fail(err, CLIP_ERR_IMAGE, "Could not decode image: PNG color type %d",
                         type);
    }
    return CLIP_OK;
}

/* Walks the markers to the frame header and on to EOI. Pillow refuses a JPEG whose data
 * ends before the decoder is done ("image file is truncated"), where stb would quietly pad
 * the missing scan data, so a file that never reaches EOI is refused here. */
static clip_status jpeg_header(const uint8_t *d, size_t len, image_header *h, clip_error *err)
{
    size_t i = 2;
    int have_frame = 0, have_scan = 0;
    for (;;) {
        while (i < len && d[i] != 0xFF) i++;          /* garbage between markers */
        while (i < len && d[i] == 0xFF) i++;          /* fill bytes */
        if (i >= len) break;
        int m = d[i++];
        if (m == 0xD9) {
            if (!have_frame || !have_scan) break;
            return CLIP_OK;
        }
        if (m == 0x01 || (m >= 0xD0 && m <= 0xD8)) continue;   /* no length */
        if (i + 2 > len) break;
        size_t seglen = (size_t)d[i] << 8 | d[i + 1];
        if (seglen < 2 || i + seglen > len) break;
        const uint8_t *s = d + i + 2;
        if (m >= 0xC0 && m <= 0xCF && m != 0xC4 && m != 0xC8 && m != 0xCC) {
            if (m > 0xC2)
                return clip_fail(err, CLIP_ERR_IMAGE, "Could not decode image: lossless or "
                                 "arithmetic-coded JPEG (SOF%d) is not supported", m - 0xC0);
            if (seglen < 8)
                break;
            h->height = (int)(s[1] << 8 | s[2]);
            h->width = (int)(s[3] << 8 | s[4]);
            int comps = s[5];
            if (comps == 1) { h->mode = CLIP_MODE_L; h->channels = 1; }
            else if (comps == 3 || comps == 4) { h->mode = CLIP_MODE_RGB; h->channels = 3; }
            else
                return clip_fail(err, CLIP_ERR_IMAGE, "Could not decode image: JPEG with %d "
                                 "components", comps);
            have_frame = 1;
        }
        i += seglen;
        if (m == 0xDA) {
            /* entropy-coded data runs to the next marker that is not a stuffed 0xFF00 or
             * a restart marker */
            have_scan = 1;
            while (i + 1 < len) {
                if (d[i] == 0xFF && d[i + 1] != 0x00 && !(d[i + 1] >= 0xD0 && d[i + 1] <= 0xD7)
                    && d[i + 1] != 0xFF)
                    break;
                i++;
            }
        }
    }
    return clip_fail(err, CLIP_ERR_IMAGE, "Could not decode image: truncated JPEG");
}

/* Pillow's GifImagePlugin._is_palette_needed: a palette whose entry i is (i, i, i) for
 * every i is no palette at all, and the frame opens as "L". */
static int gif_palette_needed(const uint8_t *p, int entries)
{
    for (int i = 0; i < entries; i++)
        if (p[3 * i] != i || p[3 * i + 1] != i || p[3 * i + 2] != i) return 1;
    return 0;
}

static clip_status gif_header(const uint8_t *d, size_t len, image_header *h, clip_error *err)
{
    if (len < 13)
        return clip_fail(err, CLIP_ERR_IMAGE, "Could not decode image: truncated GIF");
    h->width = (int)le16(d + 6);
    h->height = (int)le16(d + 8);
    size_t i = 13;
    const uint8_t *global = NULL;
    int global_entries = 0;
    if (d[10] & 0x80) {
        global_entries = 2 << (d[10] & 7);
        if (len - i < (size_t)global_entries * 3)
            return clip_fail(err, CLIP_ERR_IMAGE, "Could not decode image: truncated GIF");
        global = d + i;
        i += (size_t)global_entries * 3;
    }
    h->gif_transparency = -1;
    while (i < len) {
        int tag = d[i++];
        if (tag == 0x21) {                                  /* extension */
            if (i >= len) break;
            int label = d[i++];
            int first = 1;
            for (;;) {                                      /* its data sub-blocks */
                if (i >= len) goto truncated;
                size_t n = d[i++];
                if (n == 0) break;
                if (len - i < n) goto truncated;
                if (first && label == 0xF9 && n >= 4 && (d[i] & 1))
                    h->gif_transparency = d[i + 3];
                first = 0;
                i += n;
            }
        } else if (tag == 0x2C) {                           /* the first image */
            if (len - i < 9) break;
            h->gif_x = (int)le16(d + i);
            h->gif_y = (int)le16(d + i + 2);
            h->gif_w = (int)le16(d + i + 4);
            h->gif_h = (int)le16(d + i + 6);
            int flags = d[i + 8];
            i += 9;
            if (h->gif_x + h->gif_w > h->width || h->gif_y + h->gif_h > h->height)
                return clip_fail(err, CLIP_ERR_IMAGE, "Could not decode image: GIF frame "
                                 "extends beyond the screen");
            const uint8_t *pal = global;
            int entries = global_entries;
            if (flags & 0x80) {
                entries = 2 << (flags & 7);
                if (len - i < (size_t)entries * 3) break;
                pal = d + i;
            }
            if (!pal)
                return clip_fail(err, CLIP_ERR_IMAGE, "Could not decode image: GIF without "
                                 "a color table");
            if (gif_palette_needed(pal, entries)) {
                h->mode = CLIP_MODE_P;
                h->channels = 3;
                h->gif_palette = pal;
                h->gif_palette_entries = entries;
            } else {
                h->mode = CLIP_MODE_L;
                h->channels = 1;
            }
            return CLIP_OK;
        } else if (tag == 0x3B) {
            break;
        }
        /* Pillow skips any other byte */
    }
truncated:
    return clip_fail(err, CLIP_ERR_IMAGE, "Could not decode image: GIF without an image");
}

static clip_status bmp_header(const uint8_t *d, size_t len, image_header *h, clip_error *err)
{
    if (len < 18)
        return clip_fail(err, CLIP_ERR_IMAGE, "Could not decode image: truncated BMP");
    uint32_t hsize = le32(d + 14);
    if (hsize != 12 && hsize != 40 && hsize != 108 && hsize != 124)
        return clip_fail(err, CLIP_ERR_IMAGE, "Could not decode image: BMP header of %u "
                         "bytes is not supported", (unsigned)hsize);
    if (len < 14 + (size_t)hsize)
        return clip_fail(err, CLIP_ERR_IMAGE, "Could not decode image: truncated BMP");
    const uint8_t *p = d + 18;
    int bits;
    uint32_t compression = 0, colors = 0;
    if (hsize == 12) {
        h->width = (int)le16(p);
        h->height = (int)le16(p + 2);
        bits = (int)le16(p + 6);
    } else {
        int32_t w = (int32_t)le32(p), hh = (int32_t)le32(p + 4);
        if (w <= 0 || hh == INT32_MIN || w > MAX_IMAGE_SIDE)
            return clip_fail(err, CLIP_ERR_IMAGE, "Could not decode image: BMP of width %d",
                             (int)w);
        h->width = w;
        h->height = hh < 0 ? -hh : hh;
        bits = (int)le16(p + 10);
        compression = le32(p + 12);
        colors = le32(p + 28);
    }
    if (compression != 0 && compression != 3)
        return clip_fail(err, CLIP_ERR_IMAGE, "Could not decode image: compressed (RLE) BMP "
                         "is not supported");
    if (bits == 16 || bits == 24) {
        h->mode = CLIP_MODE_RGB; h->channels = 3;
    } else if (bits == 32) {
        /* Pillow reads an alpha channel only from a BITFIELDS header that declares one */
        uint32_t amask = hsize >= 108 && compression == 3 ? le32(p + 48) : 0;
        int rgba = compression == 3 && hsize >= 108 &&
                   (amask != 0 || (le32(p + 36) | le32(p + 40) | le32(p + 44)) == 0);
        h->mode = rgba ? CLIP_MODE_RGBA : CLIP_MODE_RGB;
        h->channels = rgba ? 4 : 3;
    } else if (bits == 1 || bits == 4 || bits == 8) {
        size_t entries = colors ? colors : 1u << bits, pad = hsize == 12 ? 3 : 4;
        const uint8_t *pal = d + 14 + hsize;
        int gray = entries <= 256 && (size_t)(d + len - pal) >= entries * pad;
        for (size_t k = 0; gray && k < entries; k++) {
            int v = entries == 2 ? (int)k * 255 : (int)k;
            gray = pal[k * pad] == v && pal[k * pad + 1] == v && pal[k * pad + 2] == v;
        }
        /* a gray ramp opens as "L" (resized bicubic) or, with two colors, as "1" */
        h->mode = gray && entries != 2 ? CLIP_MODE_L : CLIP_MODE_P;
        h->channels = h->mode == CLIP_MODE_L ? 1 : 3;
    } else {
        return clip_fail(err, CLIP_ERR_IMAGE, "Could not decode image: BMP of %d bits per "
                         "pixel", bits);
    }
    return CLIP_OK;
}

/* Pillow's first GIF frame: the canvas starts as the transparency index (else index 0),
 * the frame's pixels are all written, transparent ones included, and the indices are then
 * looked up in the palette. stb instead leaves transparent pixels at (0,0,0,0) and paints
 * the background color outside the frame; from its RGBA output, the opaque pixels are
 * already the palette colors and the rest are re-filled here. */
static void gif_fixup(const image_header *h, const uint8_t *rgba, uint8_t *out)
{
    int fill = h->gif_transparency >= 0 ? h->gif_transparency : 0;
    uint8_t fill_rgb[3] = {(uint8_t)fill, (uint8_t)fill, (uint8_t)fill};
    uint8_t trans_rgb[3] = {0, 0, 0};
    if (h->mode == CLIP_MODE_P) {
        /* Pillow's palette has 256 entries, initialised to the gray ramp */
        if (fill < h->gif_palette_entries) memcpy(fill_rgb, h->gif_palette + 3 * fill, 3);
        memcpy(trans_rgb, fill_rgb, 3);
    } else {
        memset(trans_rgb, fill, 3);
    }
    int ch = h->channels;
    for (int y = 0; y < h->height; y++) {
        for (int x = 0; x < h->width; x++) {
            size_t i = (size_t)y * (size_t)h->width + (size_t)x;
            const uint8_t *src;
            int inside = x >= h->gif_x && x < h->gif_x + h->gif_w && y >= h->gif_y &&
                         y < h->gif_y + h->gif_h;
            if (!inside) src = fill_rgb;
            else if (rgba[4 * i + 3] == 0) src = trans_rgb;
            else src = rgba + 4 * i;
            memcpy(out + i * (size_t)ch, src, (size_t)ch);
        }
    }
}

clip_status clip_image_decode(const uint8_t *data, size_t len, uint64_t max_pixels,
                              clip_image *out, clip_error *err)
{
    if (!out)
        return clip_fail(err, CLIP_ERR_ARG, "clip_image_decode: no output image");
    memset(out, 0, sizeof *out);
    if (!data || len == 0)
        return clip_fail(err, CLIP_ERR_IMAGE, "Could not decode image: empty data");
    if (len > INT_MAX)   /* stb takes an int length */
        return clip_fail(err, CLIP_ERR_IMAGE, "Could not decode image: %zu bytes is too "
                         "large", len);

    image_header h;
    memset(&h, 0, sizeof h);
    clip_status st;
    if (len >= 8 && memcmp(data, "\x89PNG\r\n\x1a\n", 8) == 0) {
        h.format = FORMAT_PNG;
        st = png_header(data, len, &h, err);
    } else if (len >= 3 && data[0] == 0xFF && data[1] == 0xD8 && data[2] == 0xFF) {
        h.format = FORMAT_JPEG;
        st = jpeg_header(data, len, &h, err);
    } else if (len >= 6 && (memcmp(data, "GIF87a", 6) == 0 || memcmp(data, "GIF89a", 6) == 0)) {
        h.format = FORMAT_GIF;
        st = gif_header(data, len, &h, err);
    } else if (len >= 2 && data[0] == 'B' && data[1] == 'M') {
        h.format = FORMAT_BMP;
        st = bmp_header(data, len, &h, err);
    } else {
        return clip_fail(err, CLIP_ERR_IMAGE, "Could not decode image: not a PNG, JPEG, GIF "
                         "or BMP file");
    }
    if (st != CLIP_OK) return st;

    if (h.width <= 0 || h.height <= 0 || h.width > MAX_IMAGE_SIDE || h.height > MAX_IMAGE_SIDE)
        return clip_fail(err, CLIP_ERR_IMAGE, "Could not decode image: invalid size %dx%d",
                         h.width, h.height);
    uint64_t pixels = (uint64_t)h.width * (uint64_t)h.height;
    if (pixels > max_pixels)
        return clip_fail(err, CLIP_ERR_IMAGE, "Image of %dx%d pixels is over the limit of "
                         "%llu pixels", h.width, h.height, (unsigned long long)max_pixels);

    /* the pixels must fit an allocation and stb's int arithmetic */
    size_t sample = h.mode == CLIP_MODE_I ? sizeof(int32_t) : 1;
    if (pixels > (uint64_t)(INT_MAX / 4) || pixels > SIZE_MAX / 4 / sample)
        return clip_fail(err, CLIP_ERR_IMAGE, "Image of %dx%d pixels is too large",
                         h.width, h.height);

    int w = 0, hh = 0, n = 0;
    void *px = NULL;
    int req = h.format == FORMAT_GIF ? 4 : h.channels;
    if (h.sixteen)
        px = stbi_load_16_from_memory(data, (int)len, &w, &hh, &n, req);
    else
        px = stbi_load_from_memory(data, (int)len, &w, &hh, &n, req);
    if (!px) {
        const char *why = stbi_failure_reason();
        return clip_fail(err, CLIP_ERR_IMAGE, "Could not decode image: %s",
                         why && *why ? why : "corrupt data");
    }
    if (w != h.width || hh != h.height) {
        stbi_image_free(px);
        return clip_fail(err, CLIP_ERR_IMAGE, "Could not decode image: inconsistent size");
    }

    size_t count = (size_t)pixels * (size_t)h.channels;
    uint8_t *pixels_out = malloc(count * sample);
    if (!pixels_out) {
        stbi_image_free(px);
        return clip_fail(err, CLIP_ERR_NOMEM, "Out of memory decoding a %dx%d image",
                         h.width, h.height);
    }
    if (h.format == FORMAT_GIF) {
        gif_fixup(&h, px, pixels_out);
    } else if (h.sixteen) {
        const uint16_t *s = px;
        int32_t *o = (int32_t *)(void *)pixels_out;
        for (size_t i = 0; i < count; i++) o[i] = s[i];
    } else {
        memcpy(pixels_out, px, count);
    }
    stbi_image_free(px);

    out->width = h.width;
    out->height = h.height;
    out->channels = h.channels;
    out->mode = h.mode;
    out->pixels = pixels_out;
    return CLIP_OK;
}

void clip_image_free(clip_image *img)
{
    if (!img) return;
    free(img->pixels);
    img->pixels = NULL;
}

/* =======================================================================================
 * Preprocessing (Pillow-exact)
 * ===================================================================================== */

/* OpenAI's _transform with torchvision 0.14 on Pillow 9.4, reproduced to the bit:
 *   Resize(size, BICUBIC): the shorter side becomes `size`, the longer int(size*long/short);
 *     nothing happens when the size is unchanged. Pillow resizes in the image's own mode:
 *     L, RGB: ImagingResample, 8-bit fixed point; RGBA, LA: the same on premultiplied
 *     "RGBa"/"La", un-premultiplied after; P and "1": nearest neighbour; I: the 32-bit path
 *     (double coefficients, rounded to int, no clamping until the RGB conversion).
 *   CenterCrop(crop): zero padding first when the image is smaller, then offsets
 *     int(round((h - crop) / 2.0)), Python rounding halves to even.
 *   convert("RGB"), ToTensor (x / 255 in float32), Normalize ((x - mean) / std, float32).
 * Only the part of the resized image that survives the crop is computed: every output
 * pixel of Pillow's separable passes depends only on its own coefficients, so this changes
 * no value. */

#if defined(__SSE2__)
#include <emmintrin.h>
#endif

/* Pillow's PRECISION_BITS for 8-bit images: 32 - 8 - 2 */
#define RESAMPLE_BITS 22
/* The 8-bit horizontal pass runs as 16-bit multiply-adds: each fixed-point coefficient k
 * is split as k = hi * 2^KSPLIT + lo (0 <= lo < 2^KSPLIT), and sum(p * k) is recombined
 * from sum(p * hi) and sum(p * lo) -- the same integer, so the same result as Pillow's. */
#define KSPLIT 11

/* Pillow's bicubic_filter with a = -0.5, with its operations in its order */
static double bicubic(double x)
{
    if (x < 0.0) x = -x;
    if (x < 1.0) return ((-0.5 + 2.0) * x - (-0.5 + 3.0)) * x * x + 1;
    if (x < 2.0) return (((x - 5) * x + 8) * x - 4) * -0.5;
    return 0.0;
}

/* Coefficients of one axis for the output positions [first, first + n): Pillow's
 * precompute_coeffs (support widened by the scale when reducing, windows rounded, weights
 * normalized to sum 1), then normalize_coeffs_8bpc's fixed point for the 8-bit path. */
typedef struct axis_coeffs {
    int n, ksize;
    int *start, *count;       /* n each: the window of input positions                    */
    double *k;                /* n * ksize normalized weights                            */
    int32_t *kfix;            /* the same in fixed point                                 */
    int kpad;                 /* ksize rounded up to 8                                   */
    int16_t *khi, *klo;       /* n * kpad: kfix split in two 16-bit halves, zero padded  */
} axis_coeffs;

static void axis_free(axis_coeffs *a)
{
    free(a->start);
    free(a->k);
    free(a->kfix);
    free(a->khi);
    memset(a, 0, sizeof *a);
}

static int axis_init(axis_coeffs *a, int in_size, int out_size, int first, int n)
{
    memset(a, 0, sizeof *a);
    /* box = (0, 0, w, h) travels as floats: in1 - in0 is exact below 2^24 */
    double scale = (double)((float)in_size - 0.0f) / out_size;
    double filterscale = scale < 1.0 ? 1.0 : scale;
    double support = 2.0 * filterscale;
    int ksize = (int)ceil(support) * 2 + 1;
    a->n = n;
    a->ksize = ksize;
    a->start = malloc(sizeof(int) * 2 * (size_t)n);
    a->k = malloc(sizeof(double) * (size_t)n * (size_t)ksize);
    a->kfix = malloc(sizeof(int32_t) * (size_t)n * (size_t)ksize);
    a->kpad = (ksize + 7) & ~7;
    a->khi = calloc((size_t)n * 2 * (size_t)a->kpad, sizeof(int16_t));
    if (!a->start || !a->k || !a->kfix || !a->khi) {
        axis_free(a);
        return 0;
    }
    a->count = a->start + n;
    a->klo = a->khi + (size_t)n * (size_t)a->kpad;
    double ss = 1.0 / filterscale;
    for (int i = 0; i < n; i++) {
        int xx = first + i;
        double center = 0.0 + (xx + 0.5) * scale;
        int xmin = (int)(center - support + 0.5);
        if (xmin < 0) xmin = 0;
        int xmax = (int)(center + support + 0.5);
        if (xmax > in_size) xmax = in_size;
        xmax -= xmin;
        double *k = a->k + (size_t)i * (size_t)ksize;
        double ww = 0.0;
        for (int x = 0; x < xmax; x++) {
            double w = bicubic((x + xmin - center + 0.5) * ss);
            k[x] = w;
            ww += w;
        }
        for (int x = 0; x < xmax; x++)
            if (ww != 0.0) k[x] /= ww;
        for (int x = xmax; x < ksize; x++) k[x] = 0;
        int32_t *kf = a->kfix + (size_t)i * (size_t)ksize;
        int16_t *hi = a->khi + (size_t)i * (size_t)a->kpad;
        int16_t *lo = a->klo + (size_t)i * (size_t)a->kpad;
        for (int x = 0; x < ksize; x++) {
            kf[x] = k[x] < 0 ? (int32_t)(-0.5 + k[x] * (1 << RESAMPLE_BITS))
                             : (int32_t)(0.5 + k[x] * (1 << RESAMPLE_BITS));
            /* |weights| < 16, so hi fits 16 bits */
            int32_t l = (int32_t)((uint32_t)kf[x] & ((1u << KSPLIT) - 1));
            hi[x] = (int16_t)((kf[x] - l) / (1 << KSPLIT));
            lo[x] = (int16_t)l;
        }
        a->start[i] = xmin;
        a->count[i] = xmax;
    }
    return 1;
}

/* Pillow's clip8 on a fixed-point sum (its table spans exactly this clamp) */
static inline uint8_t clip8_fixed(int32_t v)
{
    if (v < 0) return 0;
    v >>= RESAMPLE_BITS;
    return v > 255 ? 255 : (uint8_t)v;
}

/* Pillow's ROUND_UP for the 32-bit path */
static inline int32_t round_up(double v)
{
    return (int32_t)(v >= 0.0 ? v + 0.5F : v - 0.5F);
}

/* Pillow's MULDIV255, used to premultiply alpha */
static inline uint8_t muldiv255(unsigned a, unsigned b)
{
    unsigned t = a * b + 128;
    return (uint8_t)(((t >> 8) + t) >> 8);
}

/* The resize + crop of one image, in its working format: 8-bit samples (`ch` per pixel:
 * L 1, LA 2, RGB 3, RGBa 4, premultiplied) or, for mode I, int32. */
typedef struct resize_job {
    const clip_image *img;
    int ch;                   /* working channels                                        */
    int premultiply;
    int is_int;
    int new_w, new_h;         /* the size after torchvision's Resize                     */
    int x0, y0, nx, ny;       /* the region of the resized image the crop keeps          */
} resize_job;

/* Source row y in the working format (premultiplied when needed) into `row`. */
static const uint8_t *source_row(const resize_job *j, int y, uint8_t *row)
{
    const clip_image *img = j->img;
    size_t stride = (size_t)img->width * (size_t)img->channels * (j->is_int ? 4 : 1);
    const uint8_t *src = img->pixels + (size_t)y * stride;
    if (!j->premultiply) return src;
    int ch = j->ch, a = ch - 1;
    for (int x = 0; x < img->width; x++) {
        const uint8_t *s = src + (size_t)x * (size_t)ch;
        uint8_t *d = row + (size_t)x * (size_t)ch;
        for (int c = 0; c < a; c++) d[c] = muldiv255(s[c], s[a]);
        d[a] = s[a];
    }
    return row;
}

/* sum(p[x] * k[x]) for x < n (a multiple of 8) from the split coefficients */
static inline int64_t dot_split(const int16_t *p, const int16_t *hi, const int16_t *lo, int n)
{
#if defined(__SSE2__)
    __m128i sh = _mm_setzero_si128(), sl = _mm_setzero_si128();
    for (int x = 0; x < n; x += 8) {
        __m128i v = _mm_loadu_si128((const __m128i *)(const void *)(p + x));
        sh = _mm_add_epi32(sh, _mm_madd_epi16(v, _mm_loadu_si128((const __m128i *)(const void *)(hi + x))));
        sl = _mm_add_epi32(sl, _mm_madd_epi16(v, _mm_loadu_si128((const __m128i *)(const void *)(lo + x))));
    }
    int32_t h[4], l[4];
    _mm_storeu_si128((__m128i *)(void *)h, sh);
    _mm_storeu_si128((__m128i *)(void *)l, sl);
    return ((int64_t)h[0] + h[1] + h[2] + h[3]) * (1 << KSPLIT) + l[0] + l[1] + l[2] + l[3];
#else
    int32_t sh = 0, sl = 0;
    for (int x = 0; x < n; x++) {
        sh += p[x] * hi[x];
        sl += p[x] * lo[x];
    }
    return (int64_t)sh * (1 << KSPLIT) + sl;
#endif
}

static inline uint8_t clip8_sum(int64_t v)
{
    v += 1 << (RESAMPLE_BITS - 1);
    if (v < 0) return 0;
    v >>= RESAMPLE_BITS;
    return v > 255 ? 255 : (uint8_t)v;
}

/* Horizontal pass of one row, 8-bit, for the kept columns. `planes` is the row split in
 * `ch` planes of int16 samples, each `stride` long, zero beyond the row's width. */
static void resample_row_u8(const axis_coeffs *ax, const int16_t *planes, size_t stride,
                            int ch, uint8_t *out)
{
    for (int i = 0; i < ax->n; i++) {
        const int16_t *hi = ax->khi + (size_t)i * (size_t)ax->kpad;
        const int16_t *lo = ax->klo + (size_t)i * (size_t)ax->kpad;
        int n = (ax->count[i] + 7) & ~7;
        for (int c = 0; c < ch; c++)
            out[i * ch + c] = clip8_sum(dot_split(planes + (size_t)c * stride + ax->start[i],
                                                  hi, lo, n));
    }
}

/* Horizontal pass of one row of mode I (Pillow's 32-bit path). */
static void resample_row_i32(const axis_coeffs *ax, const int32_t *in, int32_t *out)
{
    for (int i = 0; i < ax->n; i++) {
        const double *k = ax->k + (size_t)i * (size_t)ax->ksize;
        const int32_t *p = in + ax->start[i];
        double s = 0.0;
        for (int x = 0; x < ax->count[i]; x++) s += p[x] * k[x];
        out[i] = round_up(s);
    }
}

/* Resizes the kept region into `dst` (ny rows of nx pixels in the working format). */
static clip_status resize_region(const resize_job *j, uint8_t *dst, clip_error *err)
{
    const clip_image *img = j->img;
    int need_h = j->new_w != img->width, need_v = j->new_h != img->height;
    size_t sample = j->is_int ? 4 : 1;
    size_t px = (size_t)j->ch * sample;             /* bytes per working pixel */
    axis_coeffs ax = {0}, ay = {0};
    uint8_t *row = NULL, *tmp = NULL;
    int16_t *planes = NULL;
    size_t stride = (size_t)img->width + 8;
    clip_status st = CLIP_OK;

    /* rows of the source the kept output rows read, and their vertical coefficients */
    int row0 = j->y0, rows = j->ny;
    if (need_v) {
        if (!axis_init(&ay, img->height, j->new_h, j->y0, j->ny)) goto nomem;
        row0 = ay.start[0];
        rows = ay.start[j->ny - 1] + ay.count[j->ny - 1] - row0;
    }
    if (need_h && !axis_init(&ax, img->width, j->new_w, j->x0, j->nx)) goto nomem;
    if (need_h && !j->is_int) {
        planes = calloc(stride * (size_t)j->ch, sizeof(int16_t));
        if (!planes) goto nomem;
    }
    if (j->premultiply) {
        row = malloc((size_t)img->width * px);
        if (!row) goto nomem;
    }
    /* the horizontal pass (or the kept columns as they are) for every row needed */
    tmp = malloc((size_t)rows * (size_t)j->nx * px);
    if (!tmp) goto nomem;
    for (int r = 0; r < rows; r++) {
        const uint8_t *src = source_row(j, row0 + r, row);
        uint8_t *t = tmp + (size_t)r * (size_t)j->nx * px;
        if (!need_h)
            memcpy(t, src + (size_t)j->x0 * px, (size_t)j->nx * px);
        else if (j->is_int)
            resample_row_i32(&ax, (const int32_t *)(const void *)src, (int32_t *)(void *)t);
        else {
            for (int c = 0; c < j->ch; c++) {
                int16_t *pl = planes + (size_t)c * stride;
                for (int x = 0; x < img->width; x++) pl[x] = src[(size_t)x * (size_t)j->ch + (size_t)c];
            }
            resample_row_u8(&ax, planes, stride, j->ch, t);
        }
    }
    /* the vertical pass */
    size_t line = (size_t)j->nx * (size_t)j->ch;    /* samples per row */
    if (!need_v) {
        memcpy(dst, tmp, (size_t)j->ny * line * sample);
    } else if (j->is_int) {
        const int32_t *t = (const int32_t *)(const void *)tmp;
        int32_t *d = (int32_t *)(void *)dst;
        for (int y = 0; y < j->ny; y++) {
            const double *k = ay.k + (size_t)y * (size_t)ay.ksize;
            const int32_t *base = t + (size_t)(ay.start[y] - row0) * line;
            for (size_t x = 0; x < line; x++) {
                double s = 0.0;
                for (int r = 0; r < ay.count[y]; r++) s += base[(size_t)r * line + x] * k[r];
                d[(size_t)y * line + x] = round_up(s);
            }
        }
    } else {
        int32_t *acc = malloc(line * sizeof(int32_t));
        if (!acc) goto nomem;
        for (int y = 0; y < j->ny; y++) {
            const int32_t *k = ay.kfix + (size_t)y * (size_t)ay.ksize;
            const uint8_t *base = tmp + (size_t)(ay.start[y] - row0) * line;
            for (size_t x = 0; x < line; x++) acc[x] = 1 << (RESAMPLE_BITS - 1);
            /* row by row so the inner loop runs over contiguous samples */
            for (int r = 0; r < ay.count[y]; r++) {
                const uint8_t *s = base + (size_t)r * line;
                int32_t kr = k[r];
                for (size_t x = 0; x < line; x++) acc[x] += s[x] * kr;
            }
            uint8_t *d = dst + (size_t)y * line;
            for (size_t x = 0; x < line; x++) d[x] = clip8_fixed(acc[x]);
        }
        free(acc);
    }
    goto done;
nomem:
    st = clip_fail(err, CLIP_ERR_NOMEM, "Out of memory resizing a %dx%d image",
                   img->width, img->height);
done:
    axis_free(&ax);
    axis_free(&ay);
    free(row);
    free(tmp);
    free(planes);
    return st;
}

/* Nearest neighbour as Pillow's ImagingScaleAffine does it (mode P and "1"): the source
 * coordinate starts at half a step and accumulates the step in double. */
static void nearest_map(int in_size, int out_size, int first, int n, int *map)
{
    double step = (double)((float)in_size - 0.0f) / out_size;
    double pos = 0.0 + step * 0.5;
    for (int i = 0; i < first + n; i++) {
        int v = pos < 0.0 ? -1 : (int)pos;
        if (i >= first) map[i - first] = v < 0 ? 0 : v >= in_size ? in_size - 1 : v;
        pos += step;
    }
}

/* Python's round((d) / 2.0) for d >= 0: halves go to the even neighbour */
static int half_round_even(int d)
{
    int q = d / 2;
    return (d % 2 == 0 || q % 2 == 0) ? q : q + 1;
}

clip_status clip_image_preprocess(const clip_image *img, const clip_hparams *hp,
                                  float *out, clip_error *err)
{
    if (!img || !hp || !out || !img->pixels)
        return clip_fail(err, CLIP_ERR_ARG, "clip_image_preprocess: missing argument");
    int w = img->width, h = img->height;
    int expect_ch;
    switch (img->mode) {
    case CLIP_MODE_L: expect_ch = 1; break;
    case CLIP_MODE_LA: expect_ch = 2; break;
    case CLIP_MODE_RGB: expect_ch = 3; break;
    case CLIP_MODE_RGBA: expect_ch = 4; break;
    case CLIP_MODE_P: expect_ch = img->channels == 4 ? 4 : 3; break;
    case CLIP_MODE_I: expect_ch = 1; break;
    default: return clip_fail(err, CLIP_ERR_ARG, "clip_image_preprocess: unknown mode");
    }
    if (img->channels != expect_ch || w <= 0 || h <= 0 || w > MAX_IMAGE_SIDE ||
        h > MAX_IMAGE_SIDE)
        return clip_fail(err, CLIP_ERR_ARG, "clip_image_preprocess: invalid image");
    if (hp->resize_size < 1 || hp->resize_size > 16384 || hp->crop_size < 1 ||
        hp->crop_size > 16384)
        return clip_fail(err, CLIP_ERR_ARG, "clip_image_preprocess: invalid preprocessing "
                         "sizes %u/%u", (unsigned)hp->resize_size, (unsigned)hp->crop_size);
    int size = (int)hp->resize_size, crop = (int)hp->crop_size;

    /* torchvision's Resize(int) */
    int short_side = w <= h ? w : h, long_side = w <= h ? h : w;
    double long_new = (double)((int64_t)size * long_side) / short_side;
    if (long_new >= 2147483648.0)
        return clip_fail(err, CLIP_ERR_IMAGE, "Image of %dx%d pixels is too elongated to "
                         "resize", w, h);
    int nw = w <= h ? size : (int)long_new, nh = w <= h ? (int)long_new : size;
    if (short_side == size) { nw = w; nh = h; }

    /* CenterCrop: pad to at least crop x crop, then crop the middle */
    int pad_l = crop > nw ? (crop - nw) / 2 : 0, pad_t = crop > nh ? (crop - nh) / 2 : 0;
    int pw = crop > nw ? crop : nw, ph = crop > nh ? crop : nh;
    int left = half_round_even(pw - crop) - pad_l, top = half_round_even(ph - crop) - pad_t;
    /* the part of the resized image inside the crop window */
    int x0 = left < 0 ? 0 : left, y0 = top < 0 ? 0 : top;
    int x1 = left + crop < nw ? left + crop : nw, y1 = top + crop < nh ? top + crop : nh;
    int nx = x1 - x0, ny = y1 - y0;

    int is_int = img->mode == CLIP_MODE_I;
    int ch = img->channels;
    size_t sample = is_int ? 4 : 1;
    uint8_t *region = malloc((size_t)nx * (size_t)ny * (size_t)ch * sample);
    if (!region)
        return clip_fail(err, CLIP_ERR_NOMEM, "Out of memory preprocessing an image");

    size_t bpp = (size_t)ch * sample;
    if (nw == w && nh == h) {
        /* no resize: the kept region as it is, a row at a time */
        for (int y = 0; y < ny; y++)
            memcpy(region + (size_t)y * (size_t)nx * bpp,
                   img->pixels + ((size_t)(y0 + y) * (size_t)w + (size_t)x0) * bpp,
                   (size_t)nx * bpp);
    } else if (img->mode == CLIP_MODE_P) {
        /* nearest neighbour */
        int *mx = malloc(sizeof(int) * ((size_t)nx + (size_t)ny));
        if (!mx) {
            free(region);
            return clip_fail(err, CLIP_ERR_NOMEM, "Out of memory preprocessing an image");
        }
        int *my = mx + nx;
        nearest_map(w, nw, x0, nx, mx);
        nearest_map(h, nh, y0, ny, my);
        for (int y = 0; y < ny; y++) {
            const uint8_t *srow = img->pixels + (size_t)my[y] * (size_t)w * bpp;
            uint8_t *d = region + (size_t)y * (size_t)nx * bpp;
            for (int x = 0; x < nx; x++) memcpy(d + (size_t)x * bpp, srow + (size_t)mx[x] * bpp, bpp);
        }
        free(mx);
    } else {
        resize_job j = {img, ch, img->mode == CLIP_MODE_LA || img->mode == CLIP_MODE_RGBA,
                        is_int, nw, nh, x0, y0, nx, ny};
        clip_status st = resize_region(&j, region, err);
        if (st != CLIP_OK) {
            free(region);
            return st;
        }
        if (j.premultiply) {
            /* back to straight alpha ("RGBa" -> "RGBA"): alpha 0 and 255 leave the color */
            int a = ch - 1;
            for (size_t i = 0; i < (size_t)nx * (size_t)ny; i++) {
                uint8_t *p = region + i * (size_t)ch;
                unsigned al = p[a];
                if (al == 0 || al == 255) continue;
                for (int c = 0; c < a; c++) {
                    unsigned v = 255u * p[c] / al;
                    p[c] = v > 255 ? 255 : (uint8_t)v;
                }
            }
        }
    }

    /* convert("RGB"), ToTensor, Normalize; padding is 0 in every mode. Each channel's 256
     * possible values are normalized once, with the same float steps, instead of two
     * divisions per sample. */
    size_t plane = (size_t)crop * (size_t)crop;
    float normalized[3][256];
    for (int c = 0; c < 3; c++) {
        float mean = hp->image_mean[c], std = hp->image_std[c];
        for (int v = 0; v < 256; v++) normalized[c][v] = ((float)v / 255.0f - mean) / std;
    }
    /* crop columns [xa, xb) come from the region; the rest, and rows outside it, are padding */
    int xa = x0 - left, xb = x0 - left + nx;
    for (int y = 0; y < crop; y++) {
        int sy = y + top - y0;
        float *o[3] = {out + (size_t)y * crop, out + plane + (size_t)y * crop,
                       out + 2 * plane + (size_t)y * crop};
        int inside = sy >= 0 && sy < ny;
        for (int c = 0; c < 3; c++)
            for (int x = 0; x < crop; x++)
                if (!inside || x < xa || x >= xb) o[c][x] = normalized[c][0];
        if (!inside) continue;
        size_t row = (size_t)sy * (size_t)nx;
        if (is_int) {
            const int32_t *src = (const int32_t *)(const void *)region + row;
            for (int x = xa; x < xb; x++) {
                int32_t v = src[x - xa];
                uint8_t g = (uint8_t)(v < 0 ? 0 : v > 255 ? 255 : v);
                o[0][x] = normalized[0][g], o[1][x] = normalized[1][g], o[2][x] = normalized[2][g];
            }
        } else if (ch <= 2) {
            const uint8_t *src = region + row * (size_t)ch;
            for (int x = xa; x < xb; x++, src += ch)
                o[0][x] = normalized[0][*src], o[1][x] = normalized[1][*src],
                o[2][x] = normalized[2][*src];
        } else {
            const uint8_t *src = region + row * (size_t)ch;
            for (int x = xa; x < xb; x++, src += ch)
                o[0][x] = normalized[0][src[0]], o[1][x] = normalized[1][src[1]],
                o[2][x] = normalized[2][src[2]];
        }
    }
    free(region);
    return CLIP_OK;
}

clip_status clip_image_load(const clip_model *model, const uint8_t *data, size_t len,
                            uint64_t max_pixels, float *pixels, clip_error *err)
{
    clip_image img = {0};
    clip_status st = clip_image_decode(data, len, max_pixels, &img, err);
    if (st == CLIP_OK) st = clip_image_preprocess(&img, clip_model_hparams(model), pixels, err);
    clip_image_free(&img);
    return st;
}
