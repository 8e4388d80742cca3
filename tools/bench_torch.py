#!/usr/bin/python3
"""bench_torch.py -- the PyTorch peer of the benchmark: times tools/clip_torch.py (OpenAI's
CLIP structure, eager mode, float32) on a checkpoint folder and prints one JSON object.

  /usr/bin/python3 tools/bench_torch.py MODEL_DIR [--threads 2] [--runs 10]

OMP_WAIT_POLICY=PASSIVE is set before torch loads: with the default (spinning) policy, torch's
OpenMP threads and OpenBLAS's fight over the 2 cores and every number gets much worse.
Measurements (median of --runs after two warm-up runs; model only -- inputs are ready tensors,
no decode, resize or tokenizing): image batch 1 latency and batch 8 throughput; text batch 1
latency for "a photo of a cat" and for a 77-token prompt; text batch 8 throughput for both.
The text tower runs all 77 positions, as OpenAI's encode_text does.
"""
import os

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

import argparse  # noqa: E402
import json  # noqa: E402
import statistics  # noqa: E402
import sys  # noqa: E402
import time  # noqa: E402

import torch  # noqa: E402

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import clip_torch  # noqa: E402


def time_it(fn, runs):
    for _ in range(2):
        fn()
    ts = []
    for _ in range(runs):
        t0 = time.perf_counter()
        fn()
        ts.append((time.perf_counter() - t0) * 1000)
    return statistics.median(ts)


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("model_dir")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--runs", type=int, default=10)
    a = ap.parse_args()
    torch.set_num_threads(a.threads)
    torch.set_grad_enabled(False)
    t0 = time.perf_counter()
    model, hp, tok = clip_torch.load_model(a.model_dir)
    load_ms = (time.perf_counter() - t0) * 1000
    n, ctx = hp["crop_size"], hp["context_length"]
    g = torch.Generator().manual_seed(0)
    img1 = torch.randn(1, 3, n, n, generator=g)
    img8 = torch.randn(8, 3, n, n, generator=g)
    short = torch.tensor([tok.tokenize("a photo of a cat", ctx)])
    long = torch.tensor([tok.tokenize("long " * 200, ctx)])
    out = {"peer": "pytorch", "available": True, "version": torch.__version__,
           "threads": a.threads, "runs": a.runs, "omp_wait_policy": os.environ["OMP_WAIT_POLICY"],
           "load_ms": load_ms}
    with torch.inference_mode():
        out["image_b1_ms"] = time_it(lambda: model.encode_image(img1), a.runs)
        out["image_b8_ms"] = time_it(lambda: model.encode_image(img8), a.runs)
        out["image_b8_per_s"] = 8000 / out["image_b8_ms"]
        out["text_short_b1_ms"] = time_it(lambda: model.encode_text(short), a.runs)
        out["text_long_b1_ms"] = time_it(lambda: model.encode_text(long), a.runs)
        s8, l8 = short.repeat(8, 1), long.repeat(8, 1)
        out["text_short_b8_ms"] = time_it(lambda: model.encode_text(s8), a.runs)
        out["text_short_b8_per_s"] = 8000 / out["text_short_b8_ms"]
        out["text_long_b8_ms"] = time_it(lambda: model.encode_text(l8), a.runs)
        out["text_long_b8_per_s"] = 8000 / out["text_long_b8_ms"]
    print(json.dumps(out))


if __name__ == "__main__":
    main()
