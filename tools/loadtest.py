#!/usr/bin/python3
"""loadtest.py -- a load test of `clip serve` on loopback (Python stdlib only).

  tools/loadtest.py [--url http://127.0.0.1:9001 | --clip ./clip -m MODEL.clip]
                    [--clients 8] [--duration 15] [--requests N] [--images-only | --texts-only]
                    [--image FILE] [--threads 2] [--json OUT.json]

Without --url it starts `CLIP serve -m MODEL --port 0 --quiet --threads N` itself (MODEL
defaults to build/bench/vitb32-f32.clip, the benchmark's random-weight ViT-B/32, made by
tools/bench.py when missing), waits for its "listening on" line, and stops it at the end.

N clients (threads, one keep-alive connection each) send requests back to back until
--duration seconds have passed or --requests requests were sent in all, whichever is first.
Each request is one image (POST /clip/embed_image, the image base64 in JSON, as the official
client sends it) or one text (POST /clip/embed_text); the default mix alternates them per
client. The image is --image FILE, or a 224x224 photo-like PNG made here (smooth colour fields,
edges and grain, so it compresses like a photo, about 150 KB). Prints requests/s, p50/p99
latency per kind, and errors (non-200 answers, bodies that are not embeddings, broken
connections). With --images-only, 8 clients send what `make bench`'s batch-8 engine throughput
is measured on: issue 5's dynamic-batching target is >= 85% of it.
"""
import argparse
import base64
import http.client
import json
import math
import os
import random
import re
import resource
import signal
import struct
import subprocess
import sys
import threading
import time
import urllib.parse
import zlib

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)
DEFAULT_MODEL = os.path.join(ROOT, "build", "bench", "vitb32-f32.clip")


# ---------------------------------------------------------------------------------------------
# A photo-like test image
# ---------------------------------------------------------------------------------------------

def make_png(size=224, seed=0):
    """A deterministic RGB PNG of size x size: smooth gradients and blobs, a few hard edges, and
    per-pixel grain, so it neither compresses to nothing (a flat image) nor is pure noise."""
    rnd = random.Random(seed)
    blobs = [(rnd.uniform(0, size), rnd.uniform(0, size), rnd.uniform(size / 8, size / 2),
              [rnd.uniform(-90, 90) for _ in range(3)]) for _ in range(6)]
    rows = []
    for y in range(size):
        row = bytearray([0])   # filter type 0 (none) for every scanline
        for x in range(size):
            r = 110 + 80 * math.sin(x / 37.0) * math.cos(y / 53.0)
            g = 100 + 60 * math.cos((x + y) / 41.0)
            b = 90 + 70 * math.sin((x - 2 * y) / 61.0)
            c = [r, g, b]
            for bx, by, br, col in blobs:
                d2 = ((x - bx) ** 2 + (y - by) ** 2) / (br * br)
                if d2 < 1.0:
                    w = 1.0 - d2
                    c = [c[i] + col[i] * w for i in range(3)]
            if (x // 28 + y // 28) % 5 == 0:   # hard edges, like object borders
                c = [v * 0.6 for v in c]
            for v in c:
                row.append(max(0, min(255, int(v + rnd.gauss(0, 6)))))
        rows.append(bytes(row))

    def chunk(kind, data):
        body = kind + data
        return struct.pack(">I", len(data)) + body + struct.pack(">I", zlib.crc32(body) & 0xFFFFFFFF)

    ihdr = struct.pack(">IIBBBBB", size, size, 8, 2, 0, 0, 0)
    return (b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) +
            chunk(b"IDAT", zlib.compress(b"".join(rows), 6)) + chunk(b"IEND", b""))


def image_bytes(path):
    """(bytes, description) for --image FILE or the generated image."""
    if path:
        with open(path, "rb") as f:
            data = f.read()
        return data, f"{path} ({len(data)} bytes)"
    data = make_png()
    return data, f"generated 224x224 RGB PNG, photo-like ({len(data)} bytes)"


# ---------------------------------------------------------------------------------------------
# The server
# ---------------------------------------------------------------------------------------------

class Server:
    """`clip serve` on a free loopback port, started here and stopped by stop()."""

    def __init__(self, clip, model, threads, extra=()):
        cmd = [clip, "serve", "-m", model, "--host", "127.0.0.1", "--port", "0", "--quiet",
               "--threads", str(threads), *extra]
        self.proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
                                     text=True)
        self.log = []
        self.url = None
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            line = self.proc.stderr.readline()
            if not line:
                break
            self.log.append(line.rstrip())
            m = re.search(r"listening on (http://\S+)", line)
            if m:
                self.url = m.group(1)
                break
        if not self.url:
            self.stop()
            raise RuntimeError("clip serve did not start: " + " | ".join(self.log[-5:]))
        # keep draining stderr so a chatty server never blocks on a full pipe
        self._drain = threading.Thread(target=self._read_rest, daemon=True)
        self._drain.start()

    def _read_rest(self):
        for line in self.proc.stderr:
            self.log.append(line.rstrip())

    def memory_mb(self):
        """(VmRSS, VmHWM) of the server process in MB, from /proc."""
        out = {}
        try:
            with open(f"/proc/{self.proc.pid}/status") as f:
                for line in f:
                    k, _, v = line.partition(":")
                    if k in ("VmRSS", "VmHWM"):
                        out[k] = int(v.split()[0]) / 1024.0
        except OSError:
            pass
        return out.get("VmRSS"), out.get("VmHWM")

    def stop(self):
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()


# ---------------------------------------------------------------------------------------------
# Requests
# ---------------------------------------------------------------------------------------------

class Client:
    """One keep-alive connection; reconnects after an error."""

    def __init__(self, url, timeout=120):
        u = urllib.parse.urlsplit(url)
        self.host, self.port, self.timeout = u.hostname, u.port or 80, timeout
        self.conn = None

    def post(self, path, body):
        """(status, parsed JSON or None, seconds). Raises OSError/HTTPException on a broken
        connection (after dropping it, so the next call reconnects)."""
        if self.conn is None:
            self.conn = http.client.HTTPConnection(self.host, self.port, timeout=self.timeout)
        t0 = time.perf_counter()
        try:
            self.conn.request("POST", path, body, {"Content-Type": "application/json"})
            resp = self.conn.getresponse()
            data = resp.read()
        except (OSError, http.client.HTTPException):
            self.close()
            raise
        dt = time.perf_counter() - t0
        try:
            parsed = json.loads(data)
        except ValueError:
            parsed = None
        if resp.getheader("Connection", "").lower() == "close":
            self.close()
        return resp.status, parsed, dt

    def close(self):
        if self.conn is not None:
            self.conn.close()
            self.conn = None


def image_body(png, n=1):
    b64 = base64.b64encode(png).decode("ascii")
    img = {"type": "base64", "value": b64}
    return json.dumps({"image": img if n == 1 else [img] * n, "api_key": None}).encode()


def text_body(text, n=1):
    return json.dumps({"text": text if n == 1 else [text] * n, "api_key": None}).encode()


def embeddings_ok(parsed, n):
    """The body is an embed response with n rows of finite numbers."""
    if not isinstance(parsed, dict):
        return False
    rows = parsed.get("embeddings")
    return (isinstance(rows, list) and len(rows) == n and
            all(isinstance(r, list) and r and all(isinstance(v, (int, float)) for v in r)
                for r in rows))


def percentile(xs, p):
    """Nearest-rank percentile of a list (p in 0..100)."""
    if not xs:
        return None
    s = sorted(xs)
    k = max(0, min(len(s) - 1, math.ceil(p / 100.0 * len(s)) - 1))
    return s[k]


# ---------------------------------------------------------------------------------------------
# The load
# ---------------------------------------------------------------------------------------------

def run_load(url, clients, duration, max_requests, kinds, png,
             text="a photo of a cat"):
    """N threads sending requests back to back. Returns the summary dict."""
    bodies = {"image": ("/clip/embed_image", image_body(png)),
              "text": ("/clip/embed_text", text_body(text))}
    lock = threading.Lock()
    sent = [0]
    lat = {k: [] for k in kinds}
    errors = {"http": 0, "body": 0, "connection": 0}
    first_errors = []
    start = threading.Event()
    t_end = [0.0]

    def take():
        with lock:
            if max_requests and sent[0] >= max_requests:
                return False
            sent[0] += 1
            return True

    def worker(i):
        c = Client(url)
        k = i % len(kinds)
        start.wait()
        while time.perf_counter() < t_end[0] and take():
            kind = kinds[k % len(kinds)]
            k += 1
            path, body = bodies[kind]
            try:
                status, parsed, dt = c.post(path, body)
            except (OSError, http.client.HTTPException) as e:
                with lock:
                    errors["connection"] += 1
                    if len(first_errors) < 3:
                        first_errors.append(f"{kind}: {e!r}")
                continue
            with lock:
                if status != 200:
                    errors["http"] += 1
                    if len(first_errors) < 3:
                        first_errors.append(f"{kind}: HTTP {status} {str(parsed)[:120]}")
                elif not embeddings_ok(parsed, 1):
                    errors["body"] += 1
                    if len(first_errors) < 3:
                        first_errors.append(f"{kind}: not an embedding: {str(parsed)[:120]}")
                else:
                    lat[kind].append(dt)
        c.close()

    threads = [threading.Thread(target=worker, args=(i,)) for i in range(clients)]
    for t in threads:
        t.start()
    cpu0 = resource.getrusage(resource.RUSAGE_SELF)
    t0 = time.perf_counter()
    t_end[0] = t0 + duration
    start.set()
    for t in threads:
        t.join()
    wall = time.perf_counter() - t0
    cpu1 = resource.getrusage(resource.RUSAGE_SELF)
    # the client shares the 2 cores with the server: its own CPU time says how much it took
    client_cpu = (cpu1.ru_utime - cpu0.ru_utime) + (cpu1.ru_stime - cpu0.ru_stime)
    ok = sum(len(v) for v in lat.values())
    out = {"clients": clients, "duration_s": round(wall, 3), "requests": sent[0], "ok": ok,
           "client_cpu_s": round(client_cpu, 3),
           "errors": errors, "requests_per_s": round(ok / wall, 3) if wall > 0 else None}
    for kind, xs in lat.items():
        out[kind] = {"count": len(xs), "per_s": round(len(xs) / wall, 3) if wall > 0 else None,
                     "p50_ms": round(percentile(xs, 50) * 1000, 2) if xs else None,
                     "p99_ms": round(percentile(xs, 99) * 1000, 2) if xs else None}
    if first_errors:
        out["first_errors"] = first_errors
    return out


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
    png, desc = image_bytes(a.image)

    server = None
    url = a.url
    if not url:
        model = a.model or DEFAULT_MODEL
        if not os.path.exists(model):
            if a.model:
                sys.exit(f"loadtest: {model}: no such model")
            sys.path.insert(0, HERE)
            import bench   # noqa: E402  (tools/bench.py makes the benchmark's models)
            bench.prepare_models(log=sys.stderr)
        server = Server(a.clip, model, a.threads)
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
