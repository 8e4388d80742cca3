#!/usr/bin/python3
"""tests/data/ref/make_fixtures.py -- regenerates the committed end-to-end fixtures in this folder.

  /usr/bin/python3 tests/data/ref/make_fixtures.py [--out DIR]    (needs torch)

Writes images/ (small seeded pictures in many modes and odd sizes) and one folder per random
checkpoint (tools/make_checkpoint.py, our own small vocabulary: nothing from ../shared), each with
reference.json from tools/reference.py -- the structure of ../shared/reference/expected.json.
Everything is deterministic: running it again gives the same bytes (tests/test_tools.py
regenerates them into a temporary --out folder and compares).
"""
import json
import os
import shutil
import struct
import subprocess
import sys
import zlib

import numpy as np
from PIL import Image

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.normpath(os.path.join(HERE, "..", "..", ".."))
TOOLS = os.path.join(ROOT, "tools")

# name -> (format, act, seed, --set overrides)
MODELS = {
    # ViT-B/32 geometry (224 px, patch 32) at toy widths, quick_gelu, HF safetensors.
    "st-quickgelu": ("safetensors", "quick_gelu", 101, []),
    # pytorch_model.bin, exact gelu, another geometry: 64 px input, patch 16, 3 heads of 8, 3 layers.
    "bin-gelu": ("bin", "gelu", 202, ["image_size=64", "patch_size=16", "vision_width=24",
                                     "vision_heads=3", "vision_layers=3", "text_heads=4",
                                     "embed_dim=24"]),
    # OpenAI/OpenCLIP naming with bpe_simple_vocab_16e6.txt.gz, 96 px input, patch 16.
    "openai-quickgelu": ("openai", "quick_gelu", 303, ["image_size=96", "patch_size=16",
                                                       "text_layers=1", "embed_dim=20"]),
}

# Checkpoints as OpenAI released them (TorchScript .pt, fp16 where convert_weights casts) and as
# OpenCLIP copies them (open_clip_pytorch_model.bin: the same fp16-rounded values, in fp32). They
# live one folder down, in openai-release/, so tests/test_e2e.py (which converts every
# tests/data/ref/<name>/reference.json) leaves them alone until clip-convert reads .pt files and
# ResNets. name -> (preset, format, seed, --set overrides)
OPENAI_RELEASE = {
    # ModifiedResNet at 96 px (3 x 3 attention grid); the same weights in both files.
    "rn-pt": ("rn-tiny", "openai-pt", 404, []),
    "rn-openclip-bin": ("rn-tiny", "openclip-bin", 404, []),
    # ViT, patch 14 at 56 px; heads are inferred as width / 64: 2 in vision, 1 in text.
    "vit-pt": ("fixture", "openai-pt", 505, ["image_size=56", "patch_size=14",
                                             "vision_width=128", "vision_heads=2",
                                             "vision_layers=1", "text_width=64", "text_heads=1",
                                             "text_layers=1", "embed_dim=32"]),
}

TEXTS = [
    "a photo of a cat", "A ROCKET LAUNCH", "two dogs playing in the snow",
    "It's raining cats and dogs!", "we'll meet at 10:30 a.m.", "naïve café", "Crème brûlée",
    "北京的天安门", "кошка на диване", "🚀 to the moon 👍🏽", "&quot;quoted&quot; &amp; escaped",
    "multiple    spaces\tand\ttabs\nnewline", "", "   ", "’curly apostrophe’s", "ﬀ ligature",
    "ＡＢＣ fullwidth", "ΣΊΣΥΦΟΣ", "<|endoftext|> inside <|startoftext|>",
    "the quick brown fox jumps over the lazy dog " * 6, "x" * 300,
]


# ---------------------------------------------------------------------------------------------
# Images
# ---------------------------------------------------------------------------------------------

def scene(w, h, seed, channels=3):
    """A smooth seeded picture with some texture: compresses well, still exercises the filter."""
    rng = np.random.default_rng(seed)
    y, x = np.mgrid[0:h, 0:w].astype(np.float64)
    out = []
    for c in range(channels):
        fx, fy, ph = rng.uniform(0.02, 0.25), rng.uniform(0.02, 0.25), rng.uniform(0, 6.3)
        v = 128 + 90 * np.sin(fx * x + ph) * np.cos(fy * y) + 30 * (x / w - y / h)
        v += rng.normal(0, 3, size=v.shape)
        out.append(np.clip(np.rint(v), 0, 255))
    return np.stack(out, -1).astype(np.uint8)


def png16(path, arr):
    """16-bit PNG (Pillow cannot write 16-bit RGB): IHDR, one IDAT, IEND; filter 0 rows."""
    h, w = arr.shape[:2]
    ctype = 2 if arr.ndim == 3 else 0
    rows = b"".join(b"\0" + arr[r].astype(">u2").tobytes() for r in range(h))

    def chunk(kind, data):
        return struct.pack(">I", len(data)) + kind + data + \
            struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF)

    with open(path, "wb") as f:
        f.write(b"\x89PNG\r\n\x1a\n")
        f.write(chunk(b"IHDR", struct.pack(">IIBBBBB", w, h, 16, ctype, 0, 0, 0)))
        f.write(chunk(b"IDAT", zlib.compress(rows, 9)))
        f.write(chunk(b"IEND", b""))


def make_images(images_dir):
    if os.path.isdir(images_dir):
        shutil.rmtree(images_dir)
    os.makedirs(images_dir)

    def p(name):
        return os.path.join(images_dir, name)

    # RGB, downscaled, crop offset 37.
    Image.fromarray(scene(320, 240, 1)).save(p("rgb_320x240.png"), optimize=True)
    # Gray, downscaled; the crop offset (337-224)/2 = 56.5 rounds half to even.
    Image.fromarray(scene(301, 200, 2, 1)[..., 0], "L").save(p("gray_301x200.png"), optimize=True)
    # RGBA with a radial alpha reaching 0 (premultiplied resize), upscaled.
    rgb = scene(150, 190, 3)
    y, x = np.mgrid[0:190, 0:150]
    r = np.hypot(x - 75, y - 95) / 95
    alpha = np.clip(np.rint(255 * (1.2 - r)), 0, 255).astype(np.uint8)
    Image.fromarray(np.dstack([rgb, alpha]), "RGBA").save(p("rgba_150x190.png"), optimize=True)
    # Gray + alpha, upscaled from a small odd size.
    g = scene(97, 61, 4, 1)[..., 0]
    a = np.clip(np.rint(np.linspace(0, 255, 97))[None, :].repeat(61, 0), 0, 255).astype(np.uint8)
    Image.fromarray(np.dstack([g, a]), "LA").save(p("la_97x61.png"))
    # Palette (resized nearest on the indices), 16 colours.
    Image.fromarray(scene(233, 130, 5)).quantize(16, method=Image.Quantize.MEDIANCUT,
                                                 dither=Image.Dither.NONE).save(p("palette_233x130.png"))
    # Palette with a transparent index (tRNS); convert("RGB") ignores it.
    pal = Image.fromarray(scene(64, 64, 6)).quantize(8, method=Image.Quantize.MEDIANCUT,
                                                     dither=Image.Dither.NONE)
    pal.save(p("palette_trns_64x64.png"), transparency=0)
    # 16-bit gray (Pillow mode "I": resized in 32-bit, clamped to 0..255 by convert) and
    # 16-bit RGB (Pillow keeps the high byte).
    g16 = (scene(120, 90, 7, 1)[..., 0].astype(np.uint32) * 3).astype(np.uint16)
    png16(p("gray16_120x90.png"), g16)
    rgb16 = scene(80, 100, 8).astype(np.uint16) * 257 + np.uint16(77)
    png16(p("rgb16_80x100.png"), rgb16)
    # Bilevel (mode "1", resized nearest).
    Image.fromarray(scene(50, 70, 9, 1)[..., 0] > 128).convert("1").save(p("bilevel_50x70.png"))
    # GIF, two frames: the first is used.
    f1 = Image.fromarray(scene(60, 40, 10)).quantize(32, dither=Image.Dither.NONE)
    f2 = Image.fromarray(scene(60, 40, 11)).quantize(32, dither=Image.Dither.NONE)
    f1.save(p("anim_60x40.gif"), save_all=True, append_images=[f2], duration=100, loop=0)
    # Already 224x224: no resize at all for the 224 px model.
    Image.fromarray(scene(224, 224, 12)).save(p("rgb_224x224.png"), optimize=True)
    Image.fromarray(scene(90, 70, 17)).save(p("rgb_90x70.bmp"))
    # Extreme aspect ratios and a tiny picture.
    Image.fromarray(scene(500, 60, 13)).save(p("wide_500x60.png"), optimize=True)
    Image.fromarray(scene(3, 2, 14)).save(p("tiny_3x2.png"))
    # JPEG, baseline and progressive (stb_image and libjpeg-turbo may differ by a little).
    Image.fromarray(scene(200, 150, 15)).save(p("baseline_200x150.jpg"), quality=90)
    Image.fromarray(scene(160, 120, 16)).save(p("progressive_160x120.jpg"), quality=90,
                                              progressive=True)
    # Broken files: a truncated PNG and something that is not an image.
    with open(p("la_97x61.png"), "rb") as f:
        data = f.read()
    with open(p("truncated.png"), "wb") as f:
        f.write(data[:len(data) // 3])
    with open(p("not_an_image.txt"), "w") as f:
        f.write("this is not an image\n")


# ---------------------------------------------------------------------------------------------
# Checkpoints and references
# ---------------------------------------------------------------------------------------------

def make_model(py, out, name, preset, fmt, act, seed, sets, images, texts_path):
    if os.path.isdir(out):
        shutil.rmtree(out)
    cmd = [py, os.path.join(TOOLS, "make_checkpoint.py"), "--preset", preset,
           "--format", fmt, "--act", act, "--seed", str(seed), "--out", out]
    for s in sets:
        cmd += ["--set", s]
    subprocess.run(cmd, check=True)
    subprocess.run([py, os.path.join(TOOLS, "reference.py"), out, "--name", name,
                    "--images", *images, "--texts-from", texts_path,
                    "--out", os.path.join(out, "reference.json")], check=True)


def check_archive_code(folder, name, images):
    """The .pt's own TorchScript code (torch.jit.load, .float() as clip.load does on a CPU) must
    give what tools/reference.py computed from its state dict: the archive is a working OpenAI-
    style model, not just a bag of tensors."""
    import torch
    sys.path.insert(0, TOOLS)
    import clip_torch

    torch.set_grad_enabled(False)
    want = json.load(open(os.path.join(folder, "reference.json")))["models"][name]
    pt = clip_torch.torchscript_in(folder)
    model = torch.jit.load(pt, map_location="cpu").float().eval()
    hp = want["hparams"]
    if model.input_resolution.item() != hp["image_size"]:
        raise SystemExit(f"{pt}: input_resolution {model.input_resolution.item()}")
    worst = 1.0
    for path in images:
        w = want["images"][os.path.basename(path)]
        if "embedding" in w:
            x = clip_torch.preprocess_file(path, hp).unsqueeze(0)
            got = torch.nn.functional.cosine_similarity(
                model.encode_image(x)[0].double(), torch.tensor(w["embedding"], dtype=torch.float64), 0)
            worst = min(worst, float(got))
    for t in want["texts"]:
        got = torch.nn.functional.cosine_similarity(
            model.encode_text(torch.tensor([t["ids"]]))[0].double(),
            torch.tensor(t["embedding"], dtype=torch.float64), 0)
        worst = min(worst, float(got))
    if worst < 0.9999999:
        raise SystemExit(f"{pt}: the archive's own code disagrees with reference.json "
                         f"(worst cosine {worst:.9f})")


def main():
    out_dir = os.path.abspath(sys.argv[sys.argv.index("--out") + 1]) if "--out" in sys.argv else HERE
    os.makedirs(out_dir, exist_ok=True)
    os.chdir(ROOT)
    images_dir = os.path.join(out_dir, "images")
    make_images(images_dir)
    images = sorted(os.path.join(images_dir, n) for n in os.listdir(images_dir))
    texts_path = os.path.join(out_dir, "texts.json")
    with open(texts_path, "w", encoding="utf-8") as f:
        json.dump(TEXTS, f, ensure_ascii=False, indent=1)
        f.write("\n")
    py = sys.executable
    for name, (fmt, act, seed, sets) in MODELS.items():
        make_model(py, os.path.join(out_dir, name), name, "fixture", fmt, act, seed, sets, images,
                   texts_path)
    release_dir = os.path.join(out_dir, "openai-release")
    for name, (preset, fmt, seed, sets) in OPENAI_RELEASE.items():
        folder = os.path.join(release_dir, name)
        make_model(py, folder, name, preset, fmt, "quick_gelu", seed, sets, images, texts_path)
        if fmt == "openai-pt":
            check_archive_code(folder, name, images)
    total = sum(os.path.getsize(os.path.join(d, f)) for d, _, fs in os.walk(out_dir) for f in fs)
    print(f"fixtures: {total} bytes")


if __name__ == "__main__":
    main()
