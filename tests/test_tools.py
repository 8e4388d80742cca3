#!/usr/bin/python3
"""tests/test_tools.py -- the Python reference tools still make what the tests rely on.

tests/data/ref's fixtures (random checkpoints from tools/make_checkpoint.py, and what
tools/reference.py -- OpenAI's CLIP code re-implemented -- computes for them) are committed, so
the C tests need no torch. This regenerates them with tests/data/ref/make_fixtures.py into a
temporary folder and compares: pictures and checkpoints byte for byte, the reference answers
with every token id identical and every embedding at cosine >= 0.9999999 (float summation may
round differently on another CPU). A tool that breaks, or drifts from the committed answers,
fails here rather than at the next `make bench` or fixture update.

TorchScript archives (openai-release/*/*.pt, written by torch.jit.save) are compared record by
record instead: the same records in the same order, every one byte-identical except the
code/*.debug_pkl records -- TorchScript's debug information, which holds the absolute path and
the text of the Python source the model was traced from, so it differs between checkouts.
The weights (data/), data.pkl, constants, code and version must all be identical. And the
ResNet written both as a .pt and as an OpenCLIP .bin must give identical reference answers.

Needs Debian's python3-torch for /usr/bin/python3; prints SKIP without it.
"""
import filecmp
import json
import math
import os
import subprocess
import sys
import tempfile
import zipfile

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
REF = os.path.join(ROOT, "tests", "data", "ref")
PY = os.environ.get("CLIP_PYTHON", "/usr/bin/python3")
failures = 0


def report(ok, name, why=""):
    global failures
    print(("PASS " if ok else "FAIL ") + name + ("" if ok or not why else ": " + why))
    failures += not ok
    return ok


def cosine(a, b):
    dot = sum(x * y for x, y in zip(a, b))
    na, nb = math.sqrt(sum(x * x for x in a)), math.sqrt(sum(y * y for y in b))
    return dot / (na * nb) if na and nb else 0.0


def compare_reference(name, got_path, want_path):
    got = json.load(open(got_path))["models"][name]
    want = json.load(open(want_path))["models"][name]
    worst, bad = 1.0, []
    for f, w in want["images"].items():
        g = got["images"].get(f, {})
        if "error" in w or "error" in g:
            if g.get("error") != w.get("error"):
                bad.append(f)
            continue
        worst = min(worst, cosine(g["embedding"], w["embedding"]))
    for g, w in zip(got["texts"], want["texts"]):
        if g["ids"] != w["ids"]:
            bad.append(w["text"])
        worst = min(worst, cosine(g["embedding"], w["embedding"]))
    report(not bad and worst >= 0.9999999 and len(got["texts"]) == len(want["texts"]),
           f"tools/reference.py on {name}: ids and errors identical, embeddings cosine "
           f">= 0.9999999 (worst {worst:.9f})", f"differ: {bad[:3]}")


def same_archive(got, want):
    """None if the two TorchScript archives agree in everything but debug information, else
    what differs."""
    try:
        g, w = zipfile.ZipFile(got), zipfile.ZipFile(want)
    except (OSError, zipfile.BadZipFile) as e:
        return str(e)
    if g.namelist() != w.namelist():
        return "the records differ: " + " ".join(sorted(set(g.namelist()) ^ set(w.namelist())))[:300]
    differ = [n for n in w.namelist() if not n.endswith(".debug_pkl") and g.read(n) != w.read(n)]
    return ("records differ: " + " ".join(differ[:5])) if differ else None


def same_answers(a_path, b_path):
    a = json.load(open(a_path))["models"]
    b = json.load(open(b_path))["models"]
    (a,), (b,) = a.values(), b.values()
    return a["images"] == b["images"] and a["texts"] == b["texts"] and a["hparams"] == b["hparams"]


def main():
    if subprocess.run([PY, "-c", "import torch, PIL, numpy"], capture_output=True).returncode:
        print(f"SKIP Python reference tools: {PY} cannot import torch (Debian: python3-torch)")
        return 0
    with tempfile.TemporaryDirectory() as tmp:
        r = subprocess.run([PY, os.path.join(REF, "make_fixtures.py"), "--out", tmp],
                           capture_output=True, text=True, timeout=900)
        if not report(r.returncode == 0, "tests/data/ref/make_fixtures.py runs (make_checkpoint.py, "
                      "reference.py)", r.stderr.strip()[-500:]):
            return 1
        for dirpath, _, files in os.walk(REF):
            rel = os.path.relpath(dirpath, REF)
            for f in sorted(files):
                if rel == "." and f in ("README.md", "make_fixtures.py"):
                    continue
                want, got = os.path.join(dirpath, f), os.path.join(tmp, rel, f)
                if f == "reference.json":
                    compare_reference(os.path.basename(dirpath), got, want)
                elif f.endswith(".pt"):
                    why = same_archive(got, want) if os.path.exists(got) else "not made"
                    report(why is None, f"regenerated {os.path.normpath(os.path.join(rel, f))} "
                           "is identical but for debug information", why)
                else:
                    report(os.path.exists(got) and filecmp.cmp(got, want, shallow=False),
                           f"regenerated {os.path.normpath(os.path.join(rel, f))} is identical")
        release = os.path.join(REF, "openai-release")
        report(same_answers(os.path.join(release, "rn-pt", "reference.json"),
                            os.path.join(release, "rn-openclip-bin", "reference.json")),
               "the ResNet as OpenAI's .pt and as OpenCLIP's .bin: identical reference answers")
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
