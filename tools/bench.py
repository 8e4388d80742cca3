#!/usr/bin/python3
"""bench.py -- `make bench`: our engine, our server and the peers on the same ViT-B/32 weights,
one table of results and ratios, and build/bench/results.json.

  tools/bench.py [--runs 7] [--rounds 3] [--pause 10] [--threads 2] [--no-torch] [--no-ort]
                 [--no-server]
                 [--image FILE] [--out build/bench/results.json]

Made once and cached under build/bench/ by tools/bench_prepare.py (remade when what makes
them changes): a full-size random-weight ViT-B/32 checkpoint (Hugging Face layout, the real
vocabulary from ../shared/reference/tiny-hf when present), its f32 and f16 .clip files, its
ONNX graphs, and onnxruntime-node from npm.

Measured (every number a median of --runs runs after warm-up, 2 threads everywhere):
  ours     tools/bench on the f32 and f16 files (engine only: preprocessed pixels, token ids),
           plus the machine's sgemm rate at the model's shapes and our fraction of that limit
  server   ./clip serve -m vitb32-f32.clip on loopback: image batch 1 latency and batch 8
           throughput from a Python client (HTTP, base64 PNG, decode, preprocess, forward), and
           8 concurrent clients sending one image each (dynamic batching)
  pytorch  tools/bench_torch.py (OMP_WAIT_POLICY=PASSIVE)
  ort      tools/bench_ort.mjs under node
Our engine, ONNX Runtime and our server, the close races, are measured --rounds times, taking
turns, and each number is the median of the rounds' medians: on a shared machine the speed can
change by a fifth from one minute to the next, and measurements minutes apart would compare the
machine's moods as much as the engines. The rounds' own values are kept in results.json.
Each measured program also starts after --pause seconds of idle machine: on this machine two
threads kept busy for a few seconds get slower and slower (ViT-B/32 batch 8 from about 230 ms
to over 400 in 20 s; one busy thread does not), so whoever ran right after another would pay.
Peers' peak RSS is their process's (wait4), ours the engine's own getrusage. Ratios are "ours vs
peer" oriented so that > 1 means we are better (faster, or less memory).

Here: the measurements, the table and results.json. The server, its client, the load and the
test image come from tests/clipserver.py, the cached files from tools/bench_prepare.py;
nothing imports this file.
"""
import argparse
import json
import os
import platform
import shutil
import signal
import statistics
import subprocess
import sys
import threading
import time

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)
sys.dont_write_bytecode = True   # importing tests/clipserver.py leaves no __pycache__ there
sys.path.insert(0, HERE)
sys.path.insert(0, os.path.join(ROOT, "tests"))
from bench_prepare import (CONVERT, F16, F32, HF, ONNX, ORT_PKG, OUT, PY,  # noqa: E402
                           prepare_models, prepare_onnx, prepare_ort, say)
from clipserver import (Client, Server, embeddings_ok, image_body, run_load,  # noqa: E402
                        sample_image)

CLIP = os.path.join(ROOT, "clip")
BENCH = os.path.join(ROOT, "tools", "bench")


# ---------------------------------------------------------------------------------------------
# Running the measurements
# ---------------------------------------------------------------------------------------------

def run_json(cmd, log_name, env=None, timeout=600):
    """Runs cmd, returns (the last JSON line of its stdout, its peak RSS in MB via wait4).
    A step still running after `timeout` seconds is killed: the benchmark stays bounded."""
    with open(os.path.join(OUT, log_name), "w") as err:
        p = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=err, env=env, cwd=ROOT, text=True)
        killer = threading.Timer(timeout, p.kill)
        killer.start()
        try:
            out = p.stdout.read()
            _, status, ru = os.wait4(p.pid, 0)
        finally:
            killer.cancel()
        p.returncode = os.waitstatus_to_exitcode(status)
        if p.returncode == -signal.SIGKILL:
            raise RuntimeError(f"{' '.join(cmd[:3])} ran over {timeout} s and was stopped")
    lines = [ln for ln in out.splitlines() if ln.startswith("{")]
    if not lines:
        with open(os.path.join(OUT, log_name)) as f:
            tail = f.read()[-400:]
        raise RuntimeError(f"{os.path.basename(cmd[1] if cmd[0] in ('nice', 'node', PY) else cmd[0])}"
                           f" printed no result (exit {p.returncode}): {tail.strip()}")
    return json.loads(lines[-1]), ru.ru_maxrss / 1024.0


def bench_ours(path, runs, threads, check, sgemm=True):
    cmd = ["nice", BENCH, "-m", path, "--threads", str(threads), "--runs", str(runs),
           "--load-runs", str(runs)]
    if check:
        cmd += ["--check", check]
    if not sgemm:
        cmd.append("--no-sgemm")
    res, _ = run_json(cmd, f"ours-{os.path.basename(path)}.log")
    return res


def combine_rounds(rounds):
    """One result from several rounds of the same measurements: each timing the median of the
    rounds' values (peak memory the largest), everything else as the first round has it."""
    out = dict(rounds[0])
    for key, value in rounds[0].items():
        values = [r.get(key) for r in rounds]
        if not all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in values):
            continue
        if key.endswith("_ms") or key.endswith("_per_s"):
            out[key] = statistics.median(values)
        elif "rss" in key:
            out[key] = max(values)
    return out


def bench_ort(threads, runs):
    ort, rss = run_json(["nice", "node", os.path.join(HERE, "bench_ort.mjs"), ONNX, "--ort",
                         ORT_PKG, "--threads", str(threads), "--runs", str(runs)], "ort.log")
    if ort.get("available"):
        ort["peak_rss_mb"] = rss
        ort["load_ms"] = ort["vision_load_ms"] + ort["text_load_ms"]
    return ort


def bench_server(runs, threads, png, desc):
    """Image batch 1 latency, batch 8 throughput (one request of 8 images), and 8 concurrent
    one-image clients, through ./clip serve on loopback."""
    server = Server(F32, "--threads", str(threads), clip=CLIP, inherit_clip_env=True,
                    start_timeout=60)
    try:
        c = Client(server.url)
        out = {"image_source": desc, "threads": threads, "runs": runs}
        for name, n in (("image_b1", 1), ("image_b8", 8)):
            body = image_body(png, n)
            ts = []
            for i in range(2 + runs):
                status, parsed, dt = c.post("/clip/embed_image", body)
                if status != 200 or not embeddings_ok(parsed, n):
                    raise RuntimeError(f"server answered {status}: {str(parsed)[:200]}")
                if i >= 2:
                    ts.append(dt * 1000)
            out[f"{name}_ms"] = statistics.median(ts)
        out["image_b8_per_s"] = 8000.0 / out["image_b8_ms"]
        c.close()
        dur = max(4.0, min(12.0, out["image_b8_ms"] / 1000.0 * 4 * runs / 7))
        s = run_load(server.url, 8, dur, 0, ["image"], png)
        errors = sum(s["errors"].values())
        out["clients8"] = s
        out["clients8_per_s"] = s["image"]["per_s"] if not errors else None
        out["rss_mb"], out["peak_rss_mb"] = server.memory_mb()
    finally:
        server.stop()
    return out


# ---------------------------------------------------------------------------------------------
# The table
# ---------------------------------------------------------------------------------------------

# (label, key in ours/peers, unit, higher is better)
LINES = [
    ("image b1 latency", "image_b1_ms", "ms", False),
    ("image b8 throughput", "image_b8_per_s", "img/s", True),
    ("text short b1 latency", "text_short_b1_ms", "ms", False),
    ("text 77 b1 latency", "text_long_b1_ms", "ms", False),
    ("text short b8 throughput", "text_short_b8_per_s", "txt/s", True),
    ("text 77 b8 throughput", "text_long_b8_per_s", "txt/s", True),
    ("load (f32)", "load_ms", "ms", False),
    ("peak RSS (f32)", "peak_rss_mb", "MB", False),
]


def ratio(ours, peer, higher_better):
    if ours is None or peer is None or ours <= 0 or peer <= 0:
        return None
    return ours / peer if higher_better else peer / ours


def fmt(v, unit=""):
    if v is None:
        return "-"
    if unit in ("ms", "MB") and v >= 100:
        return f"{v:.0f}"
    return f"{v:.1f}" if v >= 10 else f"{v:.2f}"


def fmt_ratio(r):
    return "-" if r is None else f"{r:.2f}x"


def build_rows(ours, ours16, server, torch, ort):
    rows = []
    for label, key, unit, hib in LINES:
        o = ours.get(key) if ours else None
        t = torch.get(key) if torch else None
        x = ort.get(key) if ort else None
        rows.append((f"{label} ({unit})", o, t, x, ratio(o, t, hib), ratio(o, x, hib), unit))
    if ours16:
        rows.append(("load (f16 file) (ms)", ours16.get("load_ms"), None, None, None, None, "ms"))
        rows.append(("peak RSS (f16 file) (MB)", ours16.get("peak_rss_mb"), None, None, None, None,
                     "MB"))
    if server:
        for label, key, unit, hib in (("server image b1 latency", "image_b1_ms", "ms", False),
                                      ("server image b8 throughput", "image_b8_per_s", "img/s", True)):
            o = server.get(key)
            t = torch.get(key) if torch else None
            x = ort.get(key) if ort else None
            rows.append((f"{label} ({unit})", o, t, x, ratio(o, t, hib), ratio(o, x, hib), unit))
        rows.append(("server 8 clients x 1 image (img/s)", server.get("clients8_per_s"), None, None,
                     None, None, "img/s"))
        rows.append(("server RSS peak (MB)", server.get("peak_rss_mb"), None, None, None, None, "MB"))
    return rows


def print_table(rows, f=sys.stdout):
    w = max(len(r[0]) for r in rows)
    print(f"{'':{w}}  {'ours':>9} {'PyTorch':>9} {'ORT':>9}  {'vs PyTorch':>10} {'vs ORT':>8}", file=f)
    for label, o, t, x, rt, rx, unit in rows:
        print(f"{label:{w}}  {fmt(o, unit):>9} {fmt(t, unit):>9} {fmt(x, unit):>9}  "
              f"{fmt_ratio(rt):>10} {fmt_ratio(rx):>8}", file=f)


def machine_info():
    cpu = platform.processor() or "?"
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    cpu = line.split(":", 1)[1].strip()
                    break
    except OSError:
        pass
    return {"cpu": cpu, "cpus_online": os.cpu_count(), "kernel": platform.release(),
            "loadavg_start": os.getloadavg()}


# ---------------------------------------------------------------------------------------------
# Main
# ---------------------------------------------------------------------------------------------

def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--runs", type=int, default=7)
    ap.add_argument("--rounds", type=int, default=3,
                    help="turns of our engine, ONNX Runtime and our server (3)")
    ap.add_argument("--pause", type=float, default=10.0,
                    help="idle seconds before each measured program (10)")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--no-torch", action="store_true")
    ap.add_argument("--no-ort", action="store_true")
    ap.add_argument("--no-server", action="store_true")
    ap.add_argument("--image", help="the server's test image (default: a generated 224x224 PNG)")
    ap.add_argument("--out", default=os.path.join(OUT, "results.json"))
    a = ap.parse_args()
    if not 1 <= a.runs <= 101 or not 1 <= a.rounds <= 21 or not 0 <= a.pause <= 300 or a.threads < 1:
        ap.error("--runs 1..101, --rounds 1..21, --pause 0..300, --threads >= 1")
    t_start = time.monotonic()
    for exe in (BENCH, CONVERT) + (() if a.no_server else (CLIP,)):
        if not os.access(exe, os.X_OK):
            sys.exit(f"bench: {exe} is missing: run make first")
    results = {"machine": machine_info(), "threads": a.threads, "runs": a.runs,
               "rounds": a.rounds,
               "when": time.strftime("%Y-%m-%d %H:%M:%S %Z")}
    results["vocab_note"] = prepare_models()
    missing = {}

    check = None
    onnx_ok = False
    if not (a.no_torch and a.no_ort):
        try:
            prepare_onnx()
            check = os.path.join(ONNX, "check.json")
            onnx_ok = True
        except RuntimeError as e:
            missing["onnx export"] = str(e).splitlines()[0]

    ort_ok = False
    if a.no_ort:
        missing["onnxruntime"] = "skipped (--no-ort)"
    elif not onnx_ok:
        missing["onnxruntime"] = "no ONNX graphs (see onnx export)"
    elif not shutil.which("node"):
        missing["onnxruntime"] = "node is not installed"
    else:
        try:
            prepare_ort()
            ort_ok = True
        except RuntimeError as e:
            missing["onnxruntime"] = str(e)

    server_ok = not a.no_server
    if server_ok:
        png, desc = sample_image(a.image)
    ours_rounds, ort_rounds, server_rounds = [], [], []
    for r in range(a.rounds):
        time.sleep(a.pause)
        say(f"round {r + 1} of {a.rounds}: ours, tools/bench on {os.path.basename(F32)} "
            f"({a.threads} threads, {a.runs} runs)")
        # the answers and the sgemm rates do not change between rounds: once is enough
        ours_rounds.append(bench_ours(F32, a.runs, a.threads, check if r == 0 else None,
                                      sgemm=r == 0))
        if ort_ok:
            time.sleep(a.pause)
            say(f"round {r + 1} of {a.rounds}: peer: ONNX Runtime (tools/bench_ort.mjs)")
            try:
                o = bench_ort(a.threads, a.runs)
            except RuntimeError as e:
                o = {"available": False, "reason": str(e)}
            if o.get("available"):
                ort_rounds.append(o)
            else:   # the server still takes this round's turn
                missing["onnxruntime"] = o.get("reason", "unavailable")
                ort_ok = False
        if server_ok:
            time.sleep(a.pause)
            say(f"round {r + 1} of {a.rounds}: server, ./clip serve, {desc}")
            try:
                server_rounds.append(bench_server(a.runs, a.threads, png, desc))
            except (RuntimeError, OSError) as e:
                missing["server"] = str(e)
                server_ok = False
    server = None
    if server_ok and server_rounds:
        server = combine_rounds(server_rounds)
        # the latencies printed with the 8-client rate: from the round whose rate is the median
        by_rate = sorted(server_rounds, key=lambda x: x.get("clients8_per_s") or 0)
        server["clients8"] = by_rate[len(by_rate) // 2]["clients8"]
    results["rounds_server"] = server_rounds
    ours = combine_rounds(ours_rounds)
    ort = combine_rounds(ort_rounds) if ort_ok and ort_rounds else None
    results["rounds_ours_f32"], results["rounds_onnxruntime"] = ours_rounds, ort_rounds
    say(f"ours: tools/bench on {os.path.basename(F16)}")
    ours16 = bench_ours(F16, max(3, a.runs // 2), a.threads, None, sgemm=False)
    results["ours_f32"], results["ours_f16"] = ours, ours16

    results["server"] = server

    torch = None
    if a.no_torch:
        missing["pytorch"] = "skipped (--no-torch)"
    else:
        time.sleep(a.pause)
        say("peer: PyTorch (tools/bench_torch.py)")
        env = dict(os.environ, OMP_WAIT_POLICY="PASSIVE", OMP_NUM_THREADS=str(a.threads))
        try:
            torch, rss = run_json(["nice", PY, os.path.join(HERE, "bench_torch.py"), HF,
                                   "--threads", str(a.threads), "--runs", str(a.runs)],
                                  "pytorch.log", env=env)
            torch["peak_rss_mb"] = rss
        except RuntimeError as e:
            missing["pytorch"] = str(e)
    results["pytorch"] = torch

    results["onnxruntime"] = ort
    results["missing"] = missing
    results["machine"]["loadavg_end"] = os.getloadavg()
    results["seconds"] = round(time.monotonic() - t_start, 1)

    rows = build_rows(ours, ours16, server, torch, ort)
    results["table"] = [dict(zip(("line", "ours", "pytorch", "onnxruntime", "ours_vs_pytorch",
                                  "ours_vs_onnxruntime"), r[:6])) for r in rows]
    with open(a.out, "w") as f:
        json.dump(results, f, indent=2)

    m = results["machine"]
    print(f"\nclip bench -- ViT-B/32 random weights ({ours['params']} parameters), {a.threads} threads, "
          f"median of {a.runs} runs (ours, ONNX Runtime and our server: the median of {a.rounds} rounds, taking "
          f"turns, each after {a.pause:g} s idle); {results['vocab_note']}")
    print(f"machine: {m['cpu']}, {m['cpus_online']} CPUs, load average "
          f"{m['loadavg_start'][0]:.1f} at start, {m['loadavg_end'][0]:.1f} at end")
    print(f"ours: engine only (pixels and token ids ready), f32 file, {ours.get('matmul', '?')} matmul kernel; text short = \"a photo of a cat\" "
          f"({ours['text_short_tokens']} tokens), text 77 = {ours['text_long_tokens']} tokens")
    if torch:
        print(f"PyTorch {torch['version']} eager, OMP_WAIT_POLICY={torch['omp_wait_policy']}; "
              f"ONNX Runtime: " + (f"onnxruntime-node {ort['version']}" if ort else "missing"))
    if server:
        print(f"server: ./clip serve on loopback, Python client, {server['image_source']} base64 in JSON")
    print("ratios: ours vs peer, > 1 means ours is better (faster, or smaller)\n")
    print_table(rows)
    if len(ours_rounds) > 1:
        def per_round(rs, key):
            return ", ".join(f"{r[key]:.1f}" for r in rs if isinstance(r.get(key), (int, float)))
        for key, what in (("image_b8_per_s", "image b8 img/s"), ("text_long_b8_per_s", "text 77 b8 txt/s")):
            line = f"\nrounds, {what}: ours {per_round(ours_rounds, key)}"
            if ort_rounds:
                line += f"; ORT {per_round(ort_rounds, key)}"
            print(line, end="")
        if server_rounds:
            print(f"\nrounds, server: image b8 img/s {per_round(server_rounds, 'image_b8_per_s')}; "
                  f"8 clients img/s {per_round(server_rounds, 'clients8_per_s')}", end="")
        print()
    if "check" in ours:
        c = ours["check"]
        if c.get("ok"):
            print(f"\nsame weights, same answers: cosine vs PyTorch image {c['image_cosine']:.7f}, "
                  f"short text {c['short_text_cosine']:.7f}, 77-token text {c['long_text_cosine']:.7f}"
                  f" (max abs diff {max(c['image_max_abs'], c['short_text_max_abs'], c['long_text_max_abs']):.2g})"
                  + ("" if c["ids_match"] else "; TOKEN IDS DIFFER from PyTorch's"))
        else:
            print(f"\ncheck against PyTorch failed: {c.get('why')}")
    if ours.get("sgemm"):
        print("\nsgemm-bound limit (the forward's FLOPs at this machine's best sgemm rate for its "
              "shapes: OpenBLAS threads, or a column split over single-threaded calls; our own "
              "kernels are not bound by it, so over 100% is how far ahead of sgemm they are; "
              "ours from the first round):")
        for s in ours["sgemm"]:
            print(f"  {s['forward']:13} {s['tower']:6} rows {s['rows']:4d}: sgemm "
                  f"{s['block_openblas_gflops']:6.1f} (OpenBLAS) / {s['block_split_gflops']:6.1f} (split) "
                  f"GFLOP/s; ours {s['ours_gflops']:6.1f} GFLOP/s = {100 * s['fraction_of_limit']:.0f}% of the limit")
    if server and server.get("clients8"):
        c8 = server["clients8"]
        eng = ours.get("image_b8_per_s")
        share = (f" = {100 * server['clients8_per_s'] / eng:.0f}% of the engine's batch-8 throughput"
                 if server.get("clients8_per_s") and eng else "")
        print(f"\nserver, 8 clients x 1 image for {c8['duration_s']:.0f} s: "
              f"{fmt(server.get('clients8_per_s'))} img/s{share}; p50 {c8['image']['p50_ms']} ms, "
              f"p99 {c8['image']['p99_ms']} ms, errors {sum(c8['errors'].values())}")
    for k, v in missing.items():
        print(f"\nmissing: {k}: {v}")
    if m["loadavg_start"][0] > 1.0 or m["loadavg_end"][0] > 1.0:
        print(f"\nwarning: the machine was busy (load average above 1 on {m['cpus_online']} CPUs): "
              f"these numbers are noisy; rerun on a quiet machine")
    print(f"\n{a.out} written; {results['seconds']:.0f} s in all")


if __name__ == "__main__":
    main()
