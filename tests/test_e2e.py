"""End to end through the command line, as a user runs it: convert a checkpoint folder with
clip-convert, embed its reference images and texts with `clip embed-image`/`embed-text`,
tokenize with `clip tokenize`, and compare with what OpenAI's code (or our PyTorch
re-implementation of it, tools/reference.py) computed.

Runs on our committed fixtures (tests/data/ref, always) and on ../shared/reference when it is
present (tiny-hf with safetensors, tinygelu-hf with pytorch_model.bin and exact gelu).
Lossless images and texts must reach cosine >= 0.99999, JPEGs >= 0.9999 (stb_image and
libjpeg-turbo may round an IDCT differently), token ids must be identical, and files Pillow
refuses must give one clear line on stderr and a nonzero exit."""

import json
import math
import os
import subprocess
import sys
import tempfile

CLIP = os.environ.get("CLIP", "./clip")
CONVERT = os.environ.get("CLIP_CONVERT", "./clip-convert")
REF = os.environ.get("CLIP_REFERENCE_DIR", "../shared/reference")
FIXTURES = "tests/data/ref"
EXACT, JPEG = 0.99999, 0.9999
failures = 0


def report(ok, name, why=""):
    global failures
    if ok:
        print("PASS " + name)
    else:
        failures += 1
        print("FAIL " + name + (": " + why if why else ""))
    sys.stdout.flush()
    return ok


def cosine(a, b):
    dot = sum(x * y for x, y in zip(a, b))
    na = math.sqrt(sum(x * x for x in a))
    nb = math.sqrt(sum(y * y for y in b))
    return dot / (na * nb) if na > 0 and nb > 0 else 0.0


def run(args, kernel=None):
    env = dict(os.environ)
    if kernel:
        env["CLIP_MATMUL"] = kernel
    return subprocess.run(args, capture_output=True, timeout=600, env=env)


def kernels(model):
    """The matmul kernels this CPU runs (clip.h: CLIP_MATMUL); each one is checked."""
    out = []
    for k in ("avx512", "avx2", "blas", "ref"):
        r = run([CLIP, "embed-text", "-m", model, "x"], k)
        if r.returncode == 0:
            out.append(k)
        elif b"cannot run" in r.stderr:
            print(f"SKIP {k} matmul kernel: this CPU cannot run it")
        else:
            report(False, f"CLIP_MATMUL={k} runs", r.stderr.decode(errors="replace").strip())
    return out


def convert(src, out, name):
    r = run([CONVERT, src, out])
    return report(r.returncode == 0 and os.path.getsize(out) > 0, f"{name}: clip-convert",
                  r.stderr.decode(errors="replace").strip()[-300:])


def check_model(name, folder, expected, image_dir):
    with tempfile.TemporaryDirectory() as tmp:
        model = os.path.join(tmp, "model.clip")
        if not convert(folder, model, name):
            return
        good = [f for f, v in sorted(expected["images"].items()) if "embedding" in v]
        bad = [f for f, v in sorted(expected["images"].items()) if "error" in v]

        runs_on = kernels(model)
        # All good images in one call: one batch, one row per image in order; with every
        # matmul kernel.
        for k in runs_on:
            r = run([CLIP, "embed-image", "-m", model] + [os.path.join(image_dir, f) for f in good], k)
            if not report(r.returncode == 0, f"{name} [{k}]: embed-image of {len(good)} images",
                          r.stderr.decode(errors="replace").strip()):
                continue
            body = json.loads(r.stdout)
            report(body.get("frame_id", 0) is None and body.get("inference_id", 0) is None
                   and isinstance(body.get("time"), float),
                   f"{name} [{k}]: embed-image body has the route's keys")
            rows = body["embeddings"]
            report(len(rows) == len(good), f"{name} [{k}]: one row per image")
            for f, row in zip(good, rows):
                want = expected["images"][f]["embedding"]
                limit = JPEG if f.lower().endswith((".jpg", ".jpeg")) else EXACT
                c = cosine(row, want)
                report(len(row) == len(want) and c >= limit,
                       f"{name} [{k}]: image {f} cosine {c:.7f} >= {limit}")
        for f in bad:
            r = run([CLIP, "embed-image", "-m", model, os.path.join(image_dir, f)])
            err = r.stderr.decode(errors="replace").strip()
            report(r.returncode != 0 and r.stdout == b"" and err.count("\n") == 0 and
                   "Sanitizer" not in err and len(err) > 0,
                   f"{name}: {f} refused with one line ({err})")

        texts = [t["text"] for t in expected["texts"]]
        r = run([CLIP, "tokenize", "-m", model] + texts)
        if report(r.returncode == 0, f"{name}: tokenize {len(texts)} texts",
                  r.stderr.decode(errors="replace").strip()):
            got = json.loads(r.stdout)
            for t, ids in zip(expected["texts"], got):
                report(ids == t["ids"], f"{name}: ids of {t['text']!r}")
        for k in runs_on:
            r = run([CLIP, "embed-text", "-m", model] + texts, k)
            if report(r.returncode == 0, f"{name} [{k}]: embed-text of {len(texts)} texts",
                      r.stderr.decode(errors="replace").strip()):
                rows = json.loads(r.stdout)["embeddings"]
                for t, row in zip(expected["texts"], rows):
                    c = cosine(row, t["embedding"])
                    report(c >= EXACT, f"{name} [{k}]: text {t['text']!r} cosine {c:.7f}")


def main():
    for folder in sorted(os.listdir(FIXTURES)):
        path = os.path.join(FIXTURES, folder)
        ref = os.path.join(path, "reference.json")
        if os.path.isfile(ref):
            with open(ref) as f:
                expected = json.load(f)["models"][folder]
            check_model(f"fixture {folder}", path, expected, os.path.join(FIXTURES, "images"))

    if not os.path.isdir(REF):
        print(f"SKIP OpenAI reference checks: {REF} is absent")
    else:
        with open(os.path.join(REF, "expected.json")) as f:
            expected = json.load(f)
        for name, exp in sorted(expected["models"].items()):
            check_model(f"reference {name}", os.path.join(REF, name), exp,
                        os.path.join(REF, "images"))
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
