#!/usr/bin/python3
"""full_models.py -- full-size random-weight OpenAI CLIP checkpoints and their reference answers,
made once into a cache folder (build/models/) for tests that check our engine against OpenAI's
code at real sizes (issue #16). Too large to commit; cheap to keep.

  /usr/bin/python3 tools/full_models.py [--out build/models] [--seed 0] [--vocab-from DIR]
        [--small-vocab] [--force] MODEL...      (MODEL: RN50 RN101 RN50x4 RN50x16 RN50x64
                                                 ViT-B-32 ViT-B-16 ViT-L-14 ViT-L-14-336px)

For each MODEL (Roboflow's clip_version_id), into OUT/MODEL/:
  pt/MODEL.pt                      OpenAI's TorchScript archive layout (make_checkpoint.py
                                   --format openai-pt), with bpe_simple_vocab_16e6.txt.gz
  openclip-bin/                    the same weights as OpenCLIP publishes OpenAI's models
                                   (open_clip_pytorch_model.bin + open_clip_config.json)
  hf/                              ViTs only: the same weights as a Hugging Face folder
                                   (model.safetensors), to check a .pt converts like HF
  */reference.json                 tools/reference.py's answers (computed once, from the .pt:
                                   OpenAI's model in fp32 on the fp16-rounded weights; the
                                   other folders hold the same values, checked tensor by tensor)
  made-from, made.json             the fingerprint, and what making took (seconds, bytes)
OUT/images/ holds the pictures the answers are for: from tests/data/ref/images lossless PNGs
(RGB, gray, RGBA, palette, an exact 224x224, an extreme aspect) and one JPEG, and from
../shared/reference/images (photos, one JPEG) when that folder exists. Lossless images should
match within cosine 0.99999, JPEGs 0.9999 (stb_image and libjpeg-turbo round IDCTs apart).

A model is remade only when its fingerprint changes: the contents of the tools that make it
(this file, make_checkpoint.py, clip_torch.py, ref_tokenizer.py, reference.py), the vocabulary
and the pictures, and the arguments. Contents, not times (as tools/bench.py): a fresh checkout
does not remake an hour of work. Everything runs under nice, one model at a time.

The vocabulary is the real 49,408-token one from ../shared/reference when present (so the token
embedding and the parameter count are the real model's), else the small generated one
(--small-vocab forces it); made.json says which.
"""
import argparse
import hashlib
import json
import os
import shutil
import subprocess
import sys
import time

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)
PY = sys.executable
SHARED = os.path.join(ROOT, "..", "shared", "reference")
FIXTURE_IMAGES = os.path.join(ROOT, "tests", "data", "ref", "images")

# Roboflow's clip_version_id -> make_checkpoint.py preset.
MODELS = {
    "RN50": "rn50", "RN101": "rn101", "RN50x4": "rn50x4", "RN50x16": "rn50x16",
    "RN50x64": "rn50x64", "ViT-B-32": "vit-b-32", "ViT-B-16": "vit-b-16",
    "ViT-L-14": "vit-l-14", "ViT-L-14-336px": "vit-l-14-336",
}

FIXTURE_PICTURES = ["rgb_320x240.png", "gray_301x200.png", "rgba_150x190.png",
                    "palette_233x130.png", "rgb_224x224.png", "wide_500x60.png",
                    "baseline_200x150.jpg"]
SHARED_PICTURES = ["astronaut.png", "chelsea_alpha.png", "coffee_palette.png", "rocket.jpg"]

TEXTS = ["a photo of a cat", "A ROCKET LAUNCH", "naïve café", "北京的天安门", "",
         "the quick brown fox jumps over the lazy dog " * 6]

TOOLS = [os.path.join(HERE, f) for f in ("full_models.py", "make_checkpoint.py", "clip_torch.py",
                                         "ref_tokenizer.py", "reference.py")]


def say(msg):
    print(f"full_models: {msg}", file=sys.stderr, flush=True)


def fingerprint(files, args):
    h = hashlib.sha256(repr(args).encode())
    for f in files:
        with open(f, "rb") as fh:
            h.update(hashlib.sha256(fh.read()).digest())
    return h.hexdigest()


def is_current(stamp, digest):
    try:
        with open(stamp) as f:
            return f.read().strip() == digest
    except OSError:
        return False


def folder_bytes(path):
    return sum(os.path.getsize(os.path.join(d, f)) for d, _, fs in os.walk(path) for f in fs)


def run(cmd, log):
    """Runs cmd niced with its output appended to log; returns the seconds it took."""
    start = time.monotonic()
    with open(log, "a") as f:
        f.write("$ " + " ".join(cmd) + "\n")
        f.flush()
        rc = subprocess.call(["nice"] + cmd, stdout=f, stderr=subprocess.STDOUT, cwd=ROOT)
    if rc != 0:
        with open(log) as f:
            raise SystemExit(f"{' '.join(cmd)} failed ({rc}); {log}:\n{f.read()[-800:]}")
    return round(time.monotonic() - start, 1)


def prepare_images(out, use_shared):
    """Copies the pictures into OUT/images (one folder for every reference.json); their paths."""
    images = os.path.join(out, "images")
    os.makedirs(images, exist_ok=True)
    wanted = [os.path.join(FIXTURE_IMAGES, f) for f in FIXTURE_PICTURES]
    if use_shared:
        wanted += [os.path.join(SHARED, "images", f) for f in SHARED_PICTURES]
    paths = []
    for src in wanted:
        dst = os.path.join(images, os.path.basename(src))
        if not os.path.exists(dst) or open(src, "rb").read() != open(dst, "rb").read():
            shutil.copyfile(src, dst)
        paths.append(dst)
    return paths


def same_weights(a, b, log):
    """Checks that two checkpoint folders hold the same values under the same names."""
    code = ("import sys, torch; sys.path.insert(0, %r); import clip_torch as c;"
            "a = c.load_checkpoint(%r)[1]; b = c.load_checkpoint(%r)[1];"
            "a = {k: v for k, v in a.items() if not k.endswith('num_batches_tracked')};"
            "b = {k: v for k, v in b.items() if not k.endswith('num_batches_tracked')};"
            "bad = sorted(set(a) ^ set(b)) + [k for k in a if k in b and not torch.equal(a[k], b[k])];"
            "sys.exit('differ: ' + ' '.join(bad[:5]) if bad else 0)") % (HERE, a, b)
    return run([PY, "-c", code], log)


def make_model(name, out, seed, vocab_from, images, texts_path):
    preset = MODELS[name]
    vit = preset.startswith("vit")
    tmp = os.path.join(out, name + ".tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    os.makedirs(tmp)
    log = os.path.join(tmp, "make.log")
    maker = [PY, os.path.join(HERE, "make_checkpoint.py"), "--preset", preset,
             "--seed", str(seed)] + (["--vocab-from", vocab_from] if vocab_from else [])
    made = {"preset": preset, "seed": seed, "seconds": {}, "bytes": {},
            "vocabulary": "real (49,408 tokens)" if vocab_from else "small generated"}
    formats = [("pt", ["--format", "openai-pt", "--pt-name", name + ".pt"]),
               ("openclip-bin", ["--format", "openclip-bin"])]
    if vit:
        formats.append(("hf", ["--format", "safetensors", "--fp16-rounded"]))
    for folder, args in formats:
        say(f"{name}: making {folder}")
        made["seconds"]["make " + folder] = run(maker + args + ["--out", os.path.join(tmp, folder)],
                                                log)
        made["bytes"][folder] = folder_bytes(os.path.join(tmp, folder))
    say(f"{name}: reference answers for {len(images)} images and {len(TEXTS)} texts")
    ref = os.path.join(tmp, "pt", "reference.json")
    made["seconds"]["reference"] = run(
        [PY, os.path.join(HERE, "reference.py"), os.path.join(tmp, "pt"), "--name", name,
         "--images", *images, "--texts-from", texts_path, "--out", ref], log)
    for folder, _ in formats[1:]:
        say(f"{name}: checking that {folder} holds the .pt's values")
        made["seconds"]["check " + folder] = same_weights(os.path.join(tmp, "pt"),
                                                          os.path.join(tmp, folder), log)
        shutil.copyfile(ref, os.path.join(tmp, folder, "reference.json"))
    return tmp, made


def main():
    ap = argparse.ArgumentParser(description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("models", nargs="+", metavar="MODEL", choices=sorted(MODELS))
    ap.add_argument("--out", default=os.path.join(ROOT, "build", "models"))
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--vocab-from", help="vocabulary folder (default: ../shared/reference when "
                    "it exists)")
    ap.add_argument("--small-vocab", action="store_true", help="use the small generated vocabulary")
    ap.add_argument("--force", action="store_true", help="remake even when current")
    a = ap.parse_args()
    os.makedirs(a.out, exist_ok=True)
    vocab_from = a.vocab_from
    if not vocab_from and not a.small_vocab and \
            os.path.exists(os.path.join(SHARED, "bpe_simple_vocab_16e6.txt.gz")):
        vocab_from = os.path.normpath(SHARED)
    if a.small_vocab:
        vocab_from = None
    images = prepare_images(a.out, os.path.isdir(os.path.join(SHARED, "images")))
    texts_path = os.path.join(a.out, "texts.json")
    with open(texts_path, "w", encoding="utf-8") as f:
        json.dump(TEXTS, f, ensure_ascii=False, indent=1)
        f.write("\n")
    inputs = TOOLS + images + [texts_path]
    if vocab_from:
        inputs.append(os.path.join(vocab_from, "bpe_simple_vocab_16e6.txt.gz")
                      if os.path.exists(os.path.join(vocab_from, "bpe_simple_vocab_16e6.txt.gz"))
                      else os.path.join(vocab_from, "merges.txt"))
    for name in a.models:
        final = os.path.join(a.out, name)
        stamp = os.path.join(final, "made-from")
        digest = fingerprint(inputs, [name, a.seed, vocab_from is not None,
                                      [os.path.basename(p) for p in images]])
        if is_current(stamp, digest) and not a.force:
            say(f"{name}: current ({final})")
            continue
        tmp, made = make_model(name, a.out, a.seed, vocab_from, images, texts_path)
        with open(os.path.join(tmp, "made.json"), "w") as f:
            json.dump(made, f, indent=1)
            f.write("\n")
        with open(os.path.join(tmp, "made-from"), "w") as f:
            f.write(digest + "\n")
        shutil.rmtree(final, ignore_errors=True)
        os.rename(tmp, final)
        say(f"{name}: made in {sum(made['seconds'].values()):.0f} s: " +
            ", ".join(f"{k} {v} s" for k, v in made["seconds"].items()) + "; " +
            ", ".join(f"{k} {v / 1e6:.0f} MB" for k, v in made["bytes"].items()))


if __name__ == "__main__":
    main()
