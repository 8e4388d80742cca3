"""bench_prepare.py -- what `make bench` measures on, made once and cached under build/bench/.

  vitb32-hf/          full-size random-weight ViT-B/32, Hugging Face layout, safetensors
                      (tools/make_checkpoint.py; the real 49,408-token vocabulary from
                      ../shared/reference/tiny-hf when present, else a small generated one)
  vitb32-f32.clip     ./clip-convert of it, f32 and f16
  vitb32-f16.clip
  onnx/               vision.onnx, text.onnx, check.json (tools/export_onnx.py, Debian's torch)
  ort/                onnxruntime-node from npm (ONNXRUNTIME_NODE_INSTALL=skip: its post-install
                      downloads from a network we may not reach; the CPU library is in the package)

Each is made when it is missing; the checkpoint, the .clip files and the graphs again when
what they were made from changed (a digest of the maker's source and arguments; a converter or
checkpoint newer than the .clip file). Used by tools/bench.py (all of
it) and tools/loadtest.py (the f32 model, its default). Measures nothing and starts no server:
that is bench.py's and loadtest.py's job; imports neither of them.
"""
import hashlib
import os
import shutil
import subprocess
import sys

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)
PY = "/usr/bin/python3"
OUT = os.path.join(ROOT, "build", "bench")
HF = os.path.join(OUT, "vitb32-hf")
F32 = os.path.join(OUT, "vitb32-f32.clip")
F16 = os.path.join(OUT, "vitb32-f16.clip")
ONNX = os.path.join(OUT, "onnx")
ORT = os.path.join(OUT, "ort")
ORT_PKG = os.path.join(ORT, "node_modules", "onnxruntime-node")
ORT_VERSION = "1.30.0"
VOCAB = os.path.join(ROOT, "..", "shared", "reference", "tiny-hf")
CONVERT = os.path.join(ROOT, "clip-convert")


def say(msg, log=sys.stderr):
    print(f"bench: {msg}", file=log, flush=True)


def mtime(path):
    try:
        return os.path.getmtime(path)
    except OSError:
        return 0.0


def fingerprint(files, args):
    """A digest of the files' contents and the arguments: what a cached product was made from.
    Contents, not times: a fresh checkout or a teammate's save must not remake a minute's work
    when nothing changed."""
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


def write_stamp(stamp, digest):
    with open(stamp, "w") as f:
        f.write(digest + "\n")


def run_logged(cmd, log_name, env=None, log=sys.stderr):
    """Runs cmd with its output in build/bench/LOG_NAME; raises with the log's tail on failure."""
    path = os.path.join(OUT, log_name)
    with open(path, "w") as f:
        rc = subprocess.call(cmd, stdout=f, stderr=subprocess.STDOUT, env=env, cwd=ROOT)
    if rc != 0:
        with open(path) as f:
            tail = f.read()[-600:]
        raise RuntimeError(f"{' '.join(cmd)} failed ({rc}); {path}:\n{tail}")


# ---------------------------------------------------------------------------------------------
# Making the models (cached)
# ---------------------------------------------------------------------------------------------

def prepare_models(log=sys.stderr):
    """The checkpoint and the two .clip files; returns a note on the vocabulary used."""
    os.makedirs(OUT, exist_ok=True)
    maker = os.path.join(HERE, "make_checkpoint.py")
    have_vocab = os.path.exists(os.path.join(VOCAB, "vocab.json"))
    note = ("vocabulary: the real 49,408 tokens (from ../shared/reference/tiny-hf)" if have_vocab
            else "vocabulary: small generated one (../shared/reference absent): the token "
                 "embedding table is smaller than the real model's")
    args = ["--preset", "vit-b-32", "--format", "safetensors", "--seed", "0"]
    if have_vocab:
        args += ["--vocab-from", VOCAB]
    digest = fingerprint([maker, os.path.join(HERE, "clip_torch.py")], args)
    stamp = os.path.join(HF, "made-from")
    if not is_current(stamp, digest):
        say("making the random-weight ViT-B/32 checkpoint (once, about a minute)", log)
        tmp = HF + ".tmp"
        shutil.rmtree(tmp, ignore_errors=True)
        run_logged(["nice", PY, maker, *args, "--out", tmp], "make_checkpoint.log", log=log)
        shutil.rmtree(HF, ignore_errors=True)
        os.rename(tmp, HF)
        write_stamp(stamp, digest)
    for path, dtype in ((F32, "f32"), (F16, "f16")):
        if mtime(path) < max(mtime(CONVERT), mtime(os.path.join(HF, "model.safetensors"))):
            say(f"converting to {os.path.basename(path)}", log)
            run_logged([CONVERT, HF, path, "--dtype", dtype, "--name", "ViT-B-32"],
                       f"convert-{dtype}.log", log=log)
    return note


def prepare_onnx(log=sys.stderr):
    exporter = os.path.join(HERE, "export_onnx.py")
    digest = fingerprint([exporter, os.path.join(HERE, "clip_torch.py"),
                          os.path.join(HF, "made-from")], [])
    stamp = os.path.join(ONNX, "made-from")
    if not is_current(stamp, digest):
        say("exporting the ONNX graphs (once, a minute or two)", log)
        tmp = ONNX + ".tmp"
        shutil.rmtree(tmp, ignore_errors=True)
        run_logged(["nice", PY, exporter, HF, tmp], "export_onnx.log", log=log)
        shutil.rmtree(ONNX, ignore_errors=True)
        os.rename(tmp, ONNX)
        write_stamp(stamp, digest)


def prepare_ort(log=sys.stderr):
    if os.path.exists(os.path.join(ORT_PKG, "package.json")):
        return
    if not shutil.which("npm"):
        raise RuntimeError("npm is not installed")
    say(f"installing onnxruntime-node {ORT_VERSION} into build/bench/ort (once)", log)
    os.makedirs(ORT, exist_ok=True)
    env = dict(os.environ, ONNXRUNTIME_NODE_INSTALL="skip")
    run_logged(["npm", "install", "--prefix", ORT, "--prefer-offline", "--no-audit", "--no-fund",
                f"onnxruntime-node@{ORT_VERSION}"], "npm.log", env=env, log=log)
