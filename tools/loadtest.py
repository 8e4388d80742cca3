#!/usr/bin/python3
"""loadtest.py -- a load test of `clip serve` on loopback (Python stdlib only).

  tools/loadtest.py [--url http://127.0.0.1:9001 | --clip ./clip -m MODEL.clip]
                    [--clients 8] [--duration 15] [--requests N] [--images-only | --texts-only]
                    [--image FILE] [--threads 2] [--json OUT.json]

Without --url it starts `CLIP serve -m MODEL --port 0 --quiet --threads N` itself (MODEL
defaults to build/bench/vitb32-f32.clip, the benchmark's random-weight ViT-B/32, made by
tools/bench_prepare.py when missing), waits for its "listening on" line, and stops it at the end.

N clients (threads, one keep-alive connection each) send requests back to back until
--duration seconds have passed or --requests requests were sent in all, whichever is first.
Each request is one image (POST /clip/embed_image, the image base64 in JSON, as the official
client sends it) or one text (POST /clip/embed_text); the default mix alternates them per
client. The image is --image FILE, or a 224x224 photo-like PNG made here (smooth colour fields,
edges and grain, so it compresses like a photo, about 150 KB). Prints requests/s, p50/p99
latency per kind, and errors (non-200 answers, bodies that are not embeddings, broken
connections). With --images-only, 8 clients send what `make bench`'s batch-8 engine throughput
is measured on: issue 5's dynamic-batching target is >= 85% of it.

Here: the command line and the summary. The server, the client, the load and the image come
from tests/clipserver.py (make bench measures with the same ones), the default model from
tools/bench_prepare.py; nothing imports this file.
"""
import argparse
import json
import os
import sys

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)
sys.dont_write_bytecode = True   # importing tests/clipserver.py leaves no __pycache__ there
sys.path.insert(0, HERE)
sys.path.insert(0, os.path.join(ROOT, "tests"))
import bench_prepare  # noqa: E402  (the benchmark's models: the default one)
from clipserver import (Client, Server, embeddings_ok, image_body, run_load,  # noqa: E402
                        sample_image, text_body)

DEFAULT_MODEL = bench_prepare.F32


def print_summary(s, file=sys.stdout):
    e = s["errors"]
    print(f"{s['clients']} clients, {s['duration_s']:.1f} s: {s['ok']} ok of {s['requests']} sent, "
          f"{s['requests_per_s']:.2f} requests/s; errors: {e['http']} HTTP, {e['body']} bad body, "
          f"{e['connection']} connection", file=file)
    for kind in ("image", "text"):
        k = s.get(kind)
        if k and k["count"]:
            print(f"  {kind:5}: {k['count']:5d} ok, {k['per_s']:7.2f}/s, p50 {k['p50_ms']:8.1f} ms, "
                  f"p99 {k['p99_ms']:8.1f} ms", file=file)
    print(f"  client CPU: {s['client_cpu_s']:.2f} s over {s['duration_s']:.1f} s "
          f"(taken from the same cores the server computes on)", file=file)
    for line in s.get("first_errors", []):
        print(f"  error: {line}", file=file)


def engine_share(s, results_path):
    """The image rate as a share of the engine's batch-8 throughput in `make bench`'s last
    results, or None when there are none."""
    try:
        with open(results_path) as f:
            r = json.load(f)
        eng = r["ours_f32"]["image_b8_per_s"]
        return s["image"]["per_s"] / eng, eng, r.get("when", "?")
    except (OSError, ValueError, KeyError, TypeError, ZeroDivisionError):
        return None


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--url", help="target a running server instead of starting one")
    ap.add_argument("--clip", default=os.path.join(ROOT, "clip"), help="the clip binary (./clip)")
    ap.add_argument("-m", "--model", default=None, help=f"model to serve ({DEFAULT_MODEL})")
    ap.add_argument("--threads", type=int, default=2, help="server inference threads (2)")
    ap.add_argument("--clients", type=int, default=8)
    ap.add_argument("--duration", type=float, default=15.0, help="seconds (15)")
    ap.add_argument("--requests", type=int, default=0, help="stop after this many in all (0: no cap)")
    g = ap.add_mutually_exclusive_group()
    g.add_argument("--images-only", action="store_true")
    g.add_argument("--texts-only", action="store_true")
    ap.add_argument("--image", help="send this file instead of the generated PNG")
    ap.add_argument("--json", help="also write the summary here")
    a = ap.parse_args()
    if a.clients < 1 or a.duration <= 0 or a.requests < 0:
        ap.error("--clients >= 1, --duration > 0, --requests >= 0")
    kinds = ["image"] if a.images_only else ["text"] if a.texts_only else ["image", "text"]
    png, desc = sample_image(a.image)

    server = None
    url = a.url
    if not url:
        model = a.model or DEFAULT_MODEL
        if not os.path.exists(model):
            if a.model:
                sys.exit(f"loadtest: {model}: no such model")
            bench_prepare.prepare_models(log=sys.stderr)
        # the caller's CLIP_* settings (CLIP_MATMUL, say) apply to the server it measures
        server = Server(os.path.abspath(model), "--threads", str(a.threads),
                        clip=os.path.abspath(a.clip), inherit_clip_env=True, start_timeout=60)
        url = server.url
        print(f"server: {a.clip} serve -m {model} --threads {a.threads} at {url}")
    print(f"image: {desc}; text: \"a photo of a cat\"; kinds: {'+'.join(kinds)}")
    try:
        # one request of each kind first: the server's first forward maps the weights in, and
        # a server that answers nothing useful should say so before the clock runs
        c = Client(url)
        for kind in kinds:
            path, body = (("/clip/embed_image", image_body(png)) if kind == "image" else
                          ("/clip/embed_text", text_body("a photo of a cat")))
            status, parsed, _ = c.post(path, body)
            if status != 200 or not embeddings_ok(parsed, 1):
                sys.exit(f"loadtest: warm-up {kind} request failed: HTTP {status} {str(parsed)[:200]}")
        c.close()
        s = run_load(url, a.clients, a.duration, a.requests, kinds, png)
        s["image_source"] = desc
        if server:
            rss, hwm = server.memory_mb()
            s["server_rss_mb"], s["server_peak_rss_mb"] = rss, hwm
    finally:
        if server:
            server.stop()
    print_summary(s)
    if server and s.get("server_peak_rss_mb"):
        print(f"  server resident memory: {s['server_rss_mb']:.0f} MB now, "
              f"{s['server_peak_rss_mb']:.0f} MB peak")
    share = engine_share(s, os.path.join(ROOT, "build", "bench", "results.json"))
    if a.images_only and s["image"]["count"] and share:
        print(f"  = {100 * share[0]:.0f}% of the engine's batch-8 throughput ({share[1]:.2f} img/s "
              f"in build/bench/results.json of {share[2]}; issue 5's target: >= 85% with 8 clients)")
    if a.json:
        with open(a.json, "w") as f:
            json.dump(s, f, indent=2)
    total_errors = sum(s["errors"].values())
    sys.exit(1 if total_errors or not s["ok"] else 0)


if __name__ == "__main__":
    main()
