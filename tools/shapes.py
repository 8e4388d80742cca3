#!/usr/bin/python3
"""tools/shapes.py -- the seeded generator of synthetic image-caption pairs.

Every picture is one coloured shape (COLOURS x SHAPES x SIZES) near the centre, at a random
angle and background, with a caption drawn from several templates. Sample `index` of seed `seed` is a
pure function of the two numbers (numpy's PCG64 seeded with SeedSequence([seed, index])), so
the training script, the zero-shot test and the CLI all see the same pictures for the same
(seed, index). NumPy keeps these streams stable in practice but does not promise it across
versions; the README sample (`--one`) uses no randomness at all.

Rendering is numpy only: the shape's coverage is computed on a SUPERSAMPLE x SUPERSAMPLE grid
per pixel (inside its bounding box) and averaged, which antialiases the edges. PNGs are
written with the standard library (zlib + struct), so nothing beyond python3-numpy is needed.

    tools/shapes.py --seed S --count N --out DIR     writes DIR/NNNNN.png + DIR/captions.json
    tools/shapes.py --one red circle --out FILE.png  one centred, plain-background picture

Importable: `render(seed, index)` returns (uint8 HxWx3 array, metadata dict);
`caption(meta, rng)` and `prompt(colour, shape)` give the texts; `LABELS` is the full
colour x shape label set the zero-shot test ranks.
"""

import argparse
import json
import math
import os
import struct
import sys
import zlib

import numpy as np

# ----------------------------------------------------------------------------------------
# The vocabulary of the pictures
# ----------------------------------------------------------------------------------------

IMAGE_SIZE = 224
SUPERSAMPLE = 4

# Nominal sRGB of each named colour. Chosen far apart from each other (and each sample is
# jittered only a little) so a name always means one visually distinct colour.
COLOURS = {
    "red":    (215, 30, 35),
    "green":  (35, 160, 55),
    "blue":   (35, 75, 215),
    "yellow": (245, 215, 30),
    "orange": (245, 135, 20),
    "purple": (135, 45, 175),
    "white":  (250, 250, 250),
    "black":  (15, 15, 15),
}
# Hues a whole background may take ("a red circle on a blue background").
BACKGROUND_COLOURS = ["red", "green", "blue", "yellow", "orange", "purple"]

SHAPES = ["circle", "square", "triangle", "star", "hexagon", "diamond", "cross", "heart"]

# Diameter of the shape's bounding circle, in pixels, per size word. Even "small" spans about
# three 32-pixel patches: a patch-32 ViT cannot tell outlines apart that fit in one or two.
SIZES = {"small": (90, 120), "medium": (120, 155), "large": (155, 200)}

LABELS = [(c, s) for c in COLOURS for s in SHAPES]

# How far (pixels, each axis) the shape's centre may move from the picture's centre.
POSITION_JITTER = 16.0

# The least RGB distance between a shape's colour and its background's mean colour.
MIN_CONTRAST = 110.0


def prompt(colour, shape):
    """The zero-shot prompt for one label."""
    return f"a {colour} {shape}"


# ----------------------------------------------------------------------------------------
# Shapes: inside tests on coordinates where the shape fits the unit circle (y up)
# ----------------------------------------------------------------------------------------

class _Frame:
    """Sample points: dx a row (1, W), dy a column (H, 1), in shape units (y up), and the
    rotation (cos, sin). Straight edges stay separable in dx and dy, so an edge test is one
    broadcast add and compare per sample instead of a full rotation of every point."""

    def __init__(self, dx, dy, angle):
        self.dx, self.dy = dx, dy
        self.c, self.s = math.cos(angle), math.sin(angle)

    def uv(self):
        """The rotated coordinates of every sample (only the curved shapes need them)."""
        return self.c * self.dx + self.s * self.dy, -self.s * self.dx + self.c * self.dy


def _inside_convex(f, verts):
    """Vertices counter-clockwise: inside is left of every edge."""
    inside = None
    for i in range(len(verts)):
        x0, y0 = verts[i]
        x1, y1 = verts[(i + 1) % len(verts)]
        ex, ey = x1 - x0, y1 - y0
        # ex * (v - y0) - ey * (u - x0) >= 0, with u, v written in terms of dx, dy.
        a = -ex * f.s - ey * f.c
        b = ex * f.c - ey * f.s
        edge = (a * f.dx) + (b * f.dy + (ey * x0 - ex * y0)) >= 0
        inside = edge if inside is None else inside & edge
    return inside


def _rect(hx, hy):
    return np.array([[-hx, -hy], [hx, -hy], [hx, hy], [-hx, hy]])


def _regular(n, radius, phase):
    a = phase + 2 * math.pi * np.arange(n) / n
    return np.stack([radius * np.cos(a), radius * np.sin(a)], axis=1)


_SQUARE = _rect(0.68, 0.68)
_TRIANGLE = _regular(3, 1.0, math.pi / 2)
_HEXAGON = _regular(6, 0.95, 0.0)
_DIAMOND = np.array([[0.0, -1.0], [0.62, 0.0], [0.0, 1.0], [-0.62, 0.0]])
_CROSS = (_rect(0.3, 0.92), _rect(0.92, 0.3))
_STAR_OUTER = _regular(5, 1.0, math.pi / 2)
_STAR_INNER = _regular(5, 0.42, math.pi / 2 + math.pi / 5)
# The inner pentagon plus one triangle per point, each of them convex. Counter-clockwise:
# the inner corner before the point, the tip, the one after.
_STAR = [_STAR_INNER] + [np.array([_STAR_INNER[(i - 1) % 5], _STAR_OUTER[i], _STAR_INNER[i]])
                         for i in range(5)]


def _inside_heart(f):
    # (X^2 + Y^2 - 1)^3 - X^2 Y^3 <= 0 spans X in [-1.14, 1.14], Y in [-1, 1.24]:
    # scaled and shifted so it sits centred in the unit circle.
    u, v = f.uv()
    X = u * 1.22
    Y = v * 1.22 + 0.14
    q = X * X + Y * Y - 1.0
    return q * q * q - X * X * Y * Y * Y <= 0


def _inside(shape, f):
    if shape == "circle":
        return (f.dx * f.dx) + (f.dy * f.dy) <= 0.9 * 0.9
    if shape == "square":
        return _inside_convex(f, _SQUARE)
    if shape == "triangle":
        return _inside_convex(f, _TRIANGLE)
    if shape == "star":
        out = _inside_convex(f, _STAR[0])
        for tri in _STAR[1:]:
            out |= _inside_convex(f, tri)
        return out
    if shape == "hexagon":
        return _inside_convex(f, _HEXAGON)
    if shape == "diamond":
        return _inside_convex(f, _DIAMOND)
    if shape == "cross":
        return _inside_convex(f, _CROSS[0]) | _inside_convex(f, _CROSS[1])
    if shape == "heart":
        return _inside_heart(f)
    raise ValueError(f"unknown shape {shape!r}")


def coverage(shape, cx, cy, radius, angle, size=IMAGE_SIZE, ss=SUPERSAMPLE):
    """Fraction of each pixel the shape covers: float32 (size, size), zero outside.

    The inside test runs first on the pixel corners; a pixel whose four corners agree (and
    whose neighbours' corners agree too, which catches a vertex poking into it) is wholly
    in or out. Only the rest, the pixels along the outline, are sampled ss x ss times."""
    cov = np.zeros((size, size), dtype=np.float32)
    x0 = max(int(math.floor(cx - radius)) - 1, 0)
    x1 = min(int(math.ceil(cx + radius)) + 1, size)
    y0 = max(int(math.floor(cy - radius)) - 1, 0)
    y1 = min(int(math.ceil(cy + radius)) + 1, size)
    if x1 <= x0 or y1 <= y0:
        return cov
    dx = ((np.arange(x0, x1 + 1, dtype=np.float32) - cx) / radius)[None, :]
    dy = ((cy - np.arange(y0, y1 + 1, dtype=np.float32)) / radius)[:, None]  # y grows up
    corner = _inside(shape, _Frame(dx, dy, angle))
    n_in = (corner[:-1, :-1].astype(np.uint8) + corner[1:, :-1] + corner[:-1, 1:] + corner[1:, 1:])
    mixed = (n_in > 0) & (n_in < 4)
    grown = mixed.copy()
    grown[1:, :] |= mixed[:-1, :]
    grown[:-1, :] |= mixed[1:, :]
    grown[:, 1:] |= grown[:, :-1].copy()
    grown[:, :-1] |= grown[:, 1:].copy()
    box = (n_in == 4).astype(np.float32)
    ys, xs = np.nonzero(grown)
    if len(ys):
        sub = (np.arange(ss, dtype=np.float32) + 0.5) / ss
        px = (xs + x0).astype(np.float32)[:, None, None] + sub[None, None, :]
        py = (ys + y0).astype(np.float32)[:, None, None] + sub[None, :, None]
        inside = _inside(shape, _Frame((px - cx) / radius, (cy - py) / radius, angle))
        box[ys, xs] = inside.reshape(len(ys), -1).mean(axis=1)
    cov[y0:y1, x0:x1] = box
    return cov


# ----------------------------------------------------------------------------------------
# Backgrounds
# ----------------------------------------------------------------------------------------

def _smooth_noise(rng, size, cells, amplitude):
    """Low-frequency colour noise: a random cells x cells grid, bilinearly upsampled."""
    grid = rng.normal(0.0, amplitude, (3, cells, cells)).astype(np.float32)
    pos = (np.arange(size, dtype=np.float32) + 0.5) * (cells - 1) / size
    i0 = np.minimum(pos.astype(int), cells - 2)
    f = pos - i0
    up = np.zeros((size, cells), dtype=np.float32)
    up[np.arange(size), i0] = 1 - f
    up[np.arange(size), i0 + 1] = f
    return np.stack([up @ g @ up.T for g in grid], axis=2)


def _background(rng, kind, size):
    """Returns (float32 HxWx3 picture, its mean colour, the caption word)."""
    if kind == "light":
        base = rng.uniform(185, 245) + rng.uniform(-12, 12, 3)
        img = np.broadcast_to(base, (size, size, 3)).astype(np.float32)
        word = "light"
    elif kind == "dark":
        base = rng.uniform(20, 85) + rng.uniform(-12, 12, 3)
        img = np.broadcast_to(base, (size, size, 3)).astype(np.float32)
        word = "dark"
    elif kind == "noise":
        base = rng.uniform(40, 215) + rng.uniform(-15, 15, 3)
        img = base + _smooth_noise(rng, size, int(rng.integers(3, 9)), 24.0)
        img += rng.normal(0.0, 10.0, (size, size, 1)).astype(np.float32)
        word = "noisy"
    else:
        base = np.array(COLOURS[kind], dtype=np.float64)
        # Backgrounds are a little paler or darker than a shape of the same name would be.
        base = base * rng.uniform(0.75, 0.95) + rng.uniform(0, 40) + rng.uniform(-10, 10, 3)
        img = np.broadcast_to(base, (size, size, 3)).astype(np.float32)
        word = kind
    return img, img.reshape(-1, 3).mean(axis=0), word


# ----------------------------------------------------------------------------------------
# One sample
# ----------------------------------------------------------------------------------------

def _rng(seed, index):
    return np.random.Generator(np.random.PCG64(np.random.SeedSequence([seed, index])))


def _colour_of(rng, name):
    base = np.array(COLOURS[name], dtype=np.float64)
    return np.clip(base + rng.uniform(-14, 14, 3), 0, 255)


def render(seed, index, size=IMAGE_SIZE, colour=None, shape=None, scale=None):
    """Sample `index` of `seed`: (uint8 array size x size x 3, metadata dict).

    colour/shape/scale force those attributes (the rest stays random)."""
    rng = _rng(seed, index)
    colour = colour or COLOURS_LIST[rng.integers(len(COLOURS_LIST))]
    shape = shape or SHAPES[rng.integers(len(SHAPES))]
    scale = scale or SIZE_LIST[rng.integers(len(SIZE_LIST))]
    rgb = _colour_of(rng, colour)

    # A background far enough from the shape's colour that the shape stands out.
    kinds = ["light", "dark", "noise", "colour"]
    for _ in range(100):
        kind = kinds[rng.choice(4, p=[0.3, 0.25, 0.25, 0.2])]
        if kind == "colour":
            kind = BACKGROUND_COLOURS[rng.integers(len(BACKGROUND_COLOURS))]
            if kind == colour:
                continue
        bg, mean, word = _background(rng, kind, size)
        if np.linalg.norm(mean - rgb) >= MIN_CONTRAST:
            break
    else:
        raise RuntimeError("no background with enough contrast")  # cannot happen: see COLOURS

    lo, hi = SIZES[scale]
    diameter = rng.uniform(lo, hi) * size / IMAGE_SIZE
    radius = diameter / 2
    # Near the centre: a patch-32 ViT trained for minutes learns outlines it sees at roughly
    # the same patches; anywhere in the frame it stayed at chance on shape.
    jitter = max(0.0, min(POSITION_JITTER * size / IMAGE_SIZE, size / 2 - radius - 2))
    cx = size / 2 + rng.uniform(-jitter, jitter)
    cy = size / 2 + rng.uniform(-jitter, jitter)
    angle = math.radians(rng.uniform(-12, 12))

    cov = coverage(shape, cx, cy, radius, angle, size)[:, :, None]
    img = bg * (1 - cov) + rgb.astype(np.float32) * cov
    img = np.clip(np.rint(img), 0, 255).astype(np.uint8)
    meta = {"colour": colour, "shape": shape, "size": scale, "background": word}
    return img, meta


COLOURS_LIST = list(COLOURS)
SIZE_LIST = list(SIZES)

# ----------------------------------------------------------------------------------------
# Captions
# ----------------------------------------------------------------------------------------

# Each template, its weight, and the attributes it states (a caption is true of a picture
# exactly when those attributes match: the training loss uses that).
TEMPLATES = [
    ("a {colour} {shape}", 4, ("colour", "shape")),
    ("a photo of a {colour} {shape}", 2, ("colour", "shape")),
    ("a picture of a {colour} {shape}", 1, ("colour", "shape")),
    ("a drawing of a {colour} {shape}", 1, ("colour", "shape")),
    ("a {size} {colour} {shape}", 2, ("colour", "shape", "size")),
    ("a {colour} {shape} on a {background} background", 2, ("colour", "shape", "background")),
    ("a {size} {colour} {shape} on a {background} background", 2,
     ("colour", "shape", "size", "background")),
    ("a photo of a {size} {colour} {shape}", 1, ("colour", "shape", "size")),
    ("a {shape}", 1, ("shape",)),
    ("something {colour}", 1, ("colour",)),
]
_WEIGHTS = np.array([t[1] for t in TEMPLATES], dtype=np.float64)
_WEIGHTS /= _WEIGHTS.sum()


def caption(meta, rng):
    """(caption text, the attributes it states) for a picture's metadata."""
    text, _, attrs = TEMPLATES[rng.choice(len(TEMPLATES), p=_WEIGHTS)]
    return text.format(**meta), attrs


def all_caption_words():
    """Every word the captions can use (for building the vocabulary)."""
    words = set()
    values = {"colour": COLOURS_LIST, "shape": SHAPES, "size": SIZE_LIST,
              "background": ["light", "dark", "noisy"] + BACKGROUND_COLOURS}
    for text, _, _ in TEMPLATES:
        for w in text.split():
            if w.startswith("{"):
                words.update(values[w.strip("{}")])
            else:
                words.add(w)
    return sorted(words)


# ----------------------------------------------------------------------------------------
# PNG (stdlib only)
# ----------------------------------------------------------------------------------------

def _chunk(kind, data):
    body = kind + data
    return struct.pack(">I", len(data)) + body + struct.pack(">I", zlib.crc32(body) & 0xFFFFFFFF)


def png_bytes(img):
    """An 8-bit RGB PNG of a uint8 HxWx3 array."""
    h, w, _ = img.shape
    raw = np.concatenate([np.zeros((h, 1), dtype=np.uint8), img.reshape(h, w * 3)], axis=1)
    return (b"\x89PNG\r\n\x1a\n"
            + _chunk(b"IHDR", struct.pack(">IIBBBBB", w, h, 8, 2, 0, 0, 0))
            + _chunk(b"IDAT", zlib.compress(raw.tobytes(), 9))
            + _chunk(b"IEND", b""))


def write_png(path, img):
    with open(path, "wb") as f:
        f.write(png_bytes(img))


# ----------------------------------------------------------------------------------------
# CLI
# ----------------------------------------------------------------------------------------

def main(argv):
    ap = argparse.ArgumentParser(description="Seeded synthetic shape pictures with captions.")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--count", type=int, default=16)
    ap.add_argument("--out", required=True, help="a directory (or a .png file with --one)")
    ap.add_argument("--one", nargs=2, metavar=("COLOUR", "SHAPE"),
                    help="one picture of that colour and shape, large, on a light background")
    args = ap.parse_args(argv)

    if args.one:
        colour, shape = args.one
        if colour not in COLOURS or shape not in SHAPES:
            ap.error(f"colour must be one of {COLOURS_LIST}, shape one of {SHAPES}")
        write_png(args.out, render_one(colour, shape))
        return 0

    os.makedirs(args.out, exist_ok=True)
    records = []
    for i in range(args.count):
        img, meta = render(args.seed, i)
        name = f"{i:05d}.png"
        write_png(os.path.join(args.out, name), img)
        text, _ = caption(meta, _rng(args.seed, 1_000_000_000 + i))
        records.append({"file": name, "caption": text, "label": prompt(meta["colour"], meta["shape"]),
                        **meta})
    with open(os.path.join(args.out, "captions.json"), "w") as f:
        json.dump({"seed": args.seed, "count": args.count, "images": records}, f, indent=1)
        f.write("\n")
    return 0


def render_one(colour, shape, size=IMAGE_SIZE):
    """A centred, large shape on a plain light grey background (the README's sample)."""
    bg = np.full((size, size, 3), 236.0, dtype=np.float32)
    cov = coverage(shape, size / 2, size / 2, 0.32 * size, 0.0, size)[:, :, None]
    rgb = np.array(COLOURS[colour], dtype=np.float32)
    return np.clip(np.rint(bg * (1 - cov) + rgb * cov), 0, 255).astype(np.uint8)


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
