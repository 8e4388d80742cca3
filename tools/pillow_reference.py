#!/usr/bin/python3
"""pillow_reference.py -- what Pillow 9.4 and OpenAI's clip.py _transform make of an image.

OpenAI's _transform is Resize(n, BICUBIC), CenterCrop(n), convert("RGB"), ToTensor,
Normalize. torchvision is not needed: its 0.14 PIL code paths are reproduced below
(openai_crop), so only Pillow and numpy are used. The fixtures this writes are what
tests/test_preprocess.c checks image.c against, byte for byte:

  /usr/bin/python3 tools/pillow_reference.py fixtures [--out tests/data]
      writes tests/data/preprocess_synthetic.txt (images generated from a hash that the C
      test generates the same way, so no pixels are stored) and tests/data/images/ (small
      files of every format and mode, with images/expected.txt).
  /usr/bin/python3 tools/pillow_reference.py crop IMAGE [--size 224] [--crop 224] [--raw F]
      prints the Pillow mode, size and FNV-1a hash of the RGB crop (and writes its bytes).

Line formats (space separated):
  preprocess_synthetic.txt: MODE WIDTH HEIGHT SEED RESIZE CROP FNV64
  images/expected.txt:      FILE PILLOW_MODE WIDTH HEIGHT RESIZE CROP FNV64 [CROP_HEX]
                            FILE error MESSAGE...   (Pillow refused the file)
CROP_HEX (the whole RGB crop) is written for JPEGs, where stb and libjpeg-turbo may differ
by a little and the test measures by how much.
"""
import argparse
import io
import os
import struct
import sys
import zlib

import numpy as np
from PIL import Image

# ---------------------------------------------------------------------------------------
# torchvision 0.14: Resize(int) and CenterCrop(int) on a PIL image, then convert("RGB")
# ---------------------------------------------------------------------------------------


def resized_size(w, h, size):
    """torchvision's _compute_resized_output_size for an int size."""
    short, long = (w, h) if w <= h else (h, w)
    new_short, new_long = size, int(size * long / short)
    return (new_short, new_long) if w <= h else (new_long, new_short)


def openai_crop(img, size, crop):
    """The RGB bytes (crop*crop*3) that ToTensor would see."""
    w, h = img.size
    nw, nh = resized_size(w, h, size)
    if (nw, nh) != (w, h):
        img = img.resize((nw, nh), Image.BICUBIC)
    # CenterCrop: pad with 0 in the image's mode when it is smaller than the crop
    iw, ih = img.size
    if crop > iw or crop > ih:
        left = (crop - iw) // 2 if crop > iw else 0
        top = (crop - ih) // 2 if crop > ih else 0
        right = (crop - iw + 1) // 2 if crop > iw else 0
        bottom = (crop - ih + 1) // 2 if crop > ih else 0
        fill = 0 if len(img.getbands()) == 1 else (0,) * len(img.getbands())
        padded = Image.new(img.mode, (iw + left + right, ih + top + bottom), fill)
        if img.mode == "P":
            padded.putpalette(img.getpalette())
        padded.paste(img, (left, top))
        img = padded
        iw, ih = img.size
    if (iw, ih) != (crop, crop):
        top = int(round((ih - crop) / 2.0))
        left = int(round((iw - crop) / 2.0))
        img = img.crop((left, top, left + crop, top + crop))
    return img.convert("RGB").tobytes()


def fnv64(data):
    h = 0xCBF29CE484222325
    for b in data:
        h ^= b
        h = (h * 0x100000001B3) & 0xFFFFFFFFFFFFFFFF
    return "%016x" % h


# ---------------------------------------------------------------------------------------
# Synthetic images: sample i of image `seed` is hash32(i + seed * 0x9E3779B9) mod 2^32,
# mapped per mode exactly as tests/test_preprocess.c does (see synth()).
# ---------------------------------------------------------------------------------------

CHANNELS = {"L": 1, "LA": 2, "RGB": 3, "RGBA": 4, "P": 1, "I": 1}


def hash32(x):
    """lowbias32 on a uint32 numpy array."""
    x = x.astype(np.uint32)
    x ^= x >> np.uint32(16)
    x *= np.uint32(0x7FEB352D)
    x ^= x >> np.uint32(15)
    x *= np.uint32(0x846CA68B)
    x ^= x >> np.uint32(16)
    return x


def hashes(seed, n, offset=0):
    i = np.arange(offset, offset + n, dtype=np.uint64)
    return hash32((i + np.uint64(seed) * np.uint64(0x9E3779B9)) & np.uint64(0xFFFFFFFF))


def alpha_of(t):
    """Alpha from a byte: a quarter fully transparent, a quarter opaque, the rest partial."""
    return np.where(t < 48, 0, np.where(t >= 176, 255, t)).astype(np.uint8)


def synth(mode, w, h, seed):
    ch = CHANNELS[mode]
    v = hashes(seed, w * h * ch)
    if mode == "I":
        return Image.fromarray((v % 320).astype(np.int32).reshape(h, w), "I")
    b = (v & 0xFF).astype(np.uint8).reshape(h, w, ch)
    if mode in ("LA", "RGBA"):
        b[:, :, ch - 1] = alpha_of(b[:, :, ch - 1])
    if mode == "P":
        im = Image.frombytes("P", (w, h), b[:, :, 0].tobytes())
        pal = (hashes(seed ^ 0x5A5A5A5A, 768) & 0xFF).astype(np.uint8)
        im.putpalette(pal.tobytes())
        return im
    if ch == 1:
        return Image.fromarray(b[:, :, 0], "L")
    return Image.fromarray(b, mode)


SYNTH_SIZES = [
    (1, 1), (2, 3), (3, 2), (5, 5), (7, 500), (500, 7), (17, 13), (100, 100),
    (223, 224), (224, 223), (224, 224), (225, 224), (224, 225), (223, 223), (225, 225),
    (300, 200), (200, 300), (448, 448), (449, 300), (672, 224), (1000, 30), (30, 1000),
    (640, 427), (451, 300), (512, 512), (1411, 1411),
]
SYNTH_BIG = [(4000, 3000), (3000, 4000)]
# (resize, crop): CLIP's sizes, a resize larger than the crop, one smaller (padding), tiny
SYNTH_PARAMS = [(224, 224), (336, 336), (256, 224), (200, 224), (16, 16), (1, 1)]


def synthetic_cases():
    seed = 1
    for mode in ("L", "LA", "RGB", "RGBA", "P", "I"):
        for (w, h) in SYNTH_SIZES:
            yield mode, w, h, seed, 224, 224
            seed += 1
        for (w, h) in [(300, 200), (17, 13), (224, 224), (1, 1), (7, 500)]:
            for (size, crop) in SYNTH_PARAMS[1:]:
                yield mode, w, h, seed, size, crop
                seed += 1
    for mode in ("RGB", "RGBA", "L"):
        for (w, h) in SYNTH_BIG:
            yield mode, w, h, seed, 224, 224
            seed += 1


# ---------------------------------------------------------------------------------------
# Hand-made files (PNG 16-bit, GIF frames and palettes, BMP headers Pillow cannot write)
# ---------------------------------------------------------------------------------------


def png_chunk(kind, data):
    c = kind + data
    return struct.pack(">I", len(data)) + c + struct.pack(">I", zlib.crc32(c) & 0xFFFFFFFF)


def png_raw(w, h, depth, ctype, rows, extra=b""):
    """A PNG from already packed scanlines (filter type 0)."""
    raw = b"".join(b"\x00" + r for r in rows)
    return (b"\x89PNG\r\n\x1a\n" +
            png_chunk(b"IHDR", struct.pack(">IIBBBBB", w, h, depth, ctype, 0, 0, 0)) +
            extra + png_chunk(b"IDAT", zlib.compress(raw)) + png_chunk(b"IEND", b""))


def png16(w, h, ctype, seed):
    ch = {0: 1, 2: 3, 4: 2, 6: 4}[ctype]
    v = (hashes(seed, w * h * ch) & 0xFFFF).astype(">u2").reshape(h, w * ch)
    if ctype == 0:
        v = (v % 400).astype(">u2")   # mostly below 256, so the bicubic values matter
    return png_raw(w, h, 16, ctype, [r.tobytes() for r in v])


def gif_lzw(indices, min_bits):
    """Uncompressed LZW: a clear code before every run short enough that the code width
    never grows; valid for any GIF decoder."""
    clear, end = 1 << min_bits, (1 << min_bits) + 1
    width = min_bits + 1
    per_clear = (1 << min_bits) - 2
    codes = []
    for i in range(0, len(indices), per_clear):
        codes.append(clear)
        codes.extend(indices[i:i + per_clear])
    codes.append(end)
    acc = nbits = 0
    out = bytearray()
    for c in codes:
        acc |= int(c) << nbits
        nbits += width
        while nbits >= 8:
            out.append(acc & 0xFF)
            acc >>= 8
            nbits -= 8
    if nbits:
        out.append(acc & 0xFF)
    blocks = bytearray([min_bits])
    for i in range(0, len(out), 255):
        part = out[i:i + 255]
        blocks += bytes([len(part)]) + part
    return bytes(blocks + b"\x00")


def gif_file(screen, frame, indices, global_pal=None, local_pal=None, transparency=None,
             background=0):
    sw, sh = screen
    x, y, w, h = frame
    out = bytearray(b"GIF89a" + struct.pack("<HH", sw, sh))
    if global_pal is not None:
        bits = max(1, (len(global_pal) // 3 - 1).bit_length())
        out += bytes([0x80 | (bits - 1), background, 0])
        out += bytes(global_pal) + bytes(3 * (1 << bits) - len(global_pal))
    else:
        out += bytes([0, background, 0])
    if transparency is not None:
        out += b"\x21\xF9\x04" + bytes([1, 0, 0, transparency]) + b"\x00"
    out += b"\x2C" + struct.pack("<HHHH", x, y, w, h)
    if local_pal is not None:
        bits = max(1, (len(local_pal) // 3 - 1).bit_length())
        out += bytes([0x80 | (bits - 1)]) + bytes(local_pal)
        out += bytes(3 * (1 << bits) - len(local_pal))
    else:
        out += b"\x00"
    out += gif_lzw(list(indices), 8) + b"\x3B"
    return bytes(out)


def bmp_v4_bgra(w, h, seed):
    """32-bit BMP with a BITFIELDS V4 header declaring alpha: Pillow opens it as RGBA."""
    v = (hashes(seed, w * h * 4) & 0xFF).astype(np.uint8).reshape(h, w, 4)
    v[:, :, 3] = alpha_of(v[:, :, 3])
    pixels = v[::-1].tobytes()  # bottom-up, bytes B G R A
    header = struct.pack("<IiiHHIIiiII", 108, w, h, 1, 32, 3, len(pixels), 2835, 2835, 0, 0)
    header += struct.pack("<IIII", 0xFF0000, 0xFF00, 0xFF, 0xFF000000)
    header += b"BGRs" + bytes(36) + bytes(12)
    off = 14 + len(header)
    return b"BM" + struct.pack("<IHHI", off + len(pixels), 0, 0, off) + header + pixels


def saved(img, fmt, **kw):
    b = io.BytesIO()
    img.save(b, fmt, **kw)
    return b.getvalue()


def file_fixtures():
    """(name, bytes) of every file fixture."""
    out = []
    L = synth("L", 37, 23, 1001)
    rgb = synth("RGB", 37, 23, 1002)
    rgba = synth("RGBA", 23, 37, 1003)
    la = synth("LA", 31, 29, 1004)
    p = synth("P", 29, 31, 1005)
    out.append(("gray8.png", saved(L, "PNG")))
    out.append(("gray8_trns.png", saved(L, "PNG", transparency=7)))
    out.append(("gray1.png", saved(L.convert("1"), "PNG")))
    out.append(("gray2.png", saved(L, "PNG", bits=2)))
    out.append(("gray4.png", saved(L, "PNG", bits=4)))
    out.append(("gray16.png", png16(33, 21, 0, 1006)))
    out.append(("rgb8.png", saved(rgb, "PNG")))
    out.append(("rgb8_trns.png", saved(rgb, "PNG", transparency=(1, 2, 3))))
    out.append(("rgb16.png", png16(21, 33, 2, 1007)))
    out.append(("palette8.png", saved(p, "PNG")))
    out.append(("palette8_trns.png", saved(p, "PNG", transparency=5)))
    q = rgb.quantize(16)
    out.append(("palette4.png", saved(q, "PNG", bits=4)))
    out.append(("gray_alpha8.png", saved(la, "PNG")))
    out.append(("gray_alpha16.png", png16(27, 19, 4, 1009)))
    out.append(("rgba8.png", saved(rgba, "PNG")))
    out.append(("rgba16.png", png16(25, 26, 6, 1010)))
    out.append(("big_upscale.png", saved(synth("RGB", 3, 2, 1011), "PNG")))

    # GIF: palette, gray ramp (opens as L), transparency, a frame inside a larger screen
    idx = (hashes(1012, 40 * 30) % 200).astype(np.uint8)
    pal = list((hashes(1013, 600) & 0xFF).astype(np.uint8))
    ramp = [i for i in range(256) for _ in range(3)]
    out.append(("palette.gif", gif_file((40, 30), (0, 0, 40, 30), idx, global_pal=pal)))
    out.append(("gray_ramp.gif", gif_file((40, 30), (0, 0, 40, 30), idx, global_pal=ramp)))
    out.append(("transparent.gif", gif_file((40, 30), (0, 0, 40, 30), idx, global_pal=pal,
                                            transparency=3)))
    small = idx[:20 * 12]
    out.append(("offset_frame.gif", gif_file((40, 30), (7, 5, 20, 12), small, global_pal=pal,
                                             background=9)))
    out.append(("offset_frame_trns.gif", gif_file((40, 30), (7, 5, 20, 12), small,
                                                  global_pal=pal, transparency=4,
                                                  background=9)))
    out.append(("local_palette.gif", gif_file((40, 30), (0, 0, 40, 30), idx,
                                              global_pal=ramp, local_pal=pal)))

    # BMP: what Pillow writes (1-bit, gray ramp, palette, RGB, RGBA as 32-bit BI_RGB) and
    # a V4 header with an alpha bitfield
    out.append(("mono.bmp", saved(L.convert("1"), "BMP")))
    out.append(("gray.bmp", saved(L, "BMP")))
    out.append(("palette.bmp", saved(p, "BMP")))
    out.append(("rgb.bmp", saved(rgb, "BMP")))
    out.append(("rgba_bi_rgb.bmp", saved(rgba, "BMP")))
    out.append(("rgba_v4.bmp", bmp_v4_bgra(22, 17, 1014)))

    # JPEG: smooth content, as JPEG is meant for, plus noise
    yy, xx = np.mgrid[0:60, 0:80]
    smooth = np.stack([(xx * 3) % 256, (yy * 4) % 256, (xx + yy * 2) % 256], -1)
    noise = (hashes(1015, 60 * 80 * 3) % 24).astype(np.int64).reshape(60, 80, 3)
    photo = Image.fromarray(np.clip(smooth + noise, 0, 255).astype(np.uint8), "RGB")
    out.append(("baseline.jpg", saved(photo, "JPEG", quality=90)))
    out.append(("baseline444.jpg", saved(photo, "JPEG", quality=90, subsampling=0)))
    out.append(("progressive.jpg", saved(photo, "JPEG", quality=85, progressive=True)))
    out.append(("gray.jpg", saved(photo.convert("L"), "JPEG", quality=90)))
    out.append(("cmyk.jpg", saved(photo.convert("CMYK"), "JPEG", quality=95)))
    whole = saved(photo, "JPEG", quality=90)
    out.append(("cut_in_scan.jpg", whole[: len(whole) * 2 // 3]))
    out.append(("not_an_image.png", b"\x89PNG\r\n\x1a\n" + bytes(range(256)) * 2))
    out.append(("cut_png.png", saved(rgb, "PNG")[:300]))
    return out


def describe(name, data, size=224, crop=224):
    try:
        img = Image.open(io.BytesIO(data))
        img.load()
        mode, (w, h) = img.mode, img.size
        rgb = openai_crop(img, size, crop)
    except Exception as e:  # what Pillow refuses, we must refuse too
        return "%s error %s" % (name, type(e).__name__)
    line = "%s %s %d %d %d %d %s" % (name, mode, w, h, size, crop, fnv64(rgb))
    if name.endswith(".jpg"):
        line += " " + rgb.hex()
    return line


def write_fixtures(out_dir):
    os.makedirs(os.path.join(out_dir, "images"), exist_ok=True)
    lines = []
    for (mode, w, h, seed, size, crop) in synthetic_cases():
        rgb = openai_crop(synth(mode, w, h, seed), size, crop)
        lines.append("%s %d %d %d %d %d %s" % (mode, w, h, seed, size, crop, fnv64(rgb)))
    with open(os.path.join(out_dir, "preprocess_synthetic.txt"), "w") as f:
        f.write("# made by tools/pillow_reference.py fixtures (Pillow %s)\n" % Image.__version__)
        f.write("\n".join(lines) + "\n")
    lines = []
    for (name, data) in file_fixtures():
        with open(os.path.join(out_dir, "images", name), "wb") as f:
            f.write(data)
        crop = 16 if name.endswith(".jpg") else 224
        lines.append(describe(name, data, 224 if crop == 224 else 20, crop))
    with open(os.path.join(out_dir, "images", "expected.txt"), "w") as f:
        f.write("# made by tools/pillow_reference.py fixtures (Pillow %s)\n" % Image.__version__)
        f.write("\n".join(lines) + "\n")
    print("wrote %s/preprocess_synthetic.txt and %s/images/" % (out_dir, out_dir))


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    sub = ap.add_subparsers(dest="cmd", required=True)
    f = sub.add_parser("fixtures")
    f.add_argument("--out", default=os.path.join(os.path.dirname(__file__), "..", "tests", "data"))
    c = sub.add_parser("crop")
    c.add_argument("image")
    c.add_argument("--size", type=int, default=224)
    c.add_argument("--crop", type=int, default=224)
    c.add_argument("--raw")
    s = sub.add_parser("synth")
    s.add_argument("mode")
    s.add_argument("width", type=int)
    s.add_argument("height", type=int)
    s.add_argument("seed", type=int)
    s.add_argument("--size", type=int, default=224)
    s.add_argument("--crop", type=int, default=224)
    s.add_argument("--raw")
    a = ap.parse_args()
    if a.cmd == "fixtures":
        write_fixtures(a.out)
        return 0
    if a.cmd == "crop":
        img = Image.open(a.image)
    else:
        img = synth(a.mode, a.width, a.height, a.seed)
    rgb = openai_crop(img, a.size, a.crop)
    print(img.mode, img.size[0], img.size[1], fnv64(rgb))
    if a.raw:
        with open(a.raw, "wb") as fo:
            fo.write(rgb)
    return 0


if __name__ == "__main__":
    sys.exit(main())
