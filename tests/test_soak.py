#!/usr/bin/python3
"""test_soak.py -- mixed traffic from 16 clients against `clip serve` for a bounded time (issue 7).

  SOAK_SECONDS=20 (default, the short run in `make test`); `make soak` runs 300.

Each client keeps one keep-alive connection and loops over embed_text, embed_image (base64),
compare (an image against three prompts) and embed_image from an image URL (a local origin;
--allow-private-urls), checking every answer against the one computed alone before the soak
(cosine >= 0.99999: batching may regroup the sums). Prints per-window latency p50/p99 and the
server's RSS at start and end, and checks: zero failed requests, the server never died and left
no sanitizer report, RSS flat (the end within 1.5x + 32 MB of the RSS after warm-up), latency
steady (last window's p50 at most 4x the first's + 0.2 s).

Imports only the stdlib and tests/clipserver.py (the server, the client, the origin, the
model), never another test; PASS/FAIL lines; bounded by SOAK_SECONDS plus a few seconds.
"""
import http.client
import os
import random
import signal
import sys
import tempfile
import threading
import time

sys.dont_write_bytecode = True   # importing the helper module leaves no __pycache__
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from clipserver import (CLIP, CLIP_CONVERT, Client, Origin, Server, built, check,  # noqa: E402
                        convert_fixture, exit_status, image_b64, png_answer, post,
                        same_embedding, sanitized, sanitizer_report, skip)

CLIENTS = 16
WINDOWS = 5
TEXTS = ["a photo of a cat", "two dogs playing in the snow", "naïve café", "🚀 to the moon",
         "", "the quick brown fox jumps over the lazy dog " * 6]
IMAGES = ["rgb_90x70.bmp", "tiny_3x2.png", "la_97x61.png", "baseline_200x150.jpg"]


def percentile(xs, p):
    if not xs:
        return float("nan")
    xs = sorted(xs)
    return xs[min(len(xs) - 1, int(p / 100.0 * len(xs)))]


def requests_and_answers(port, origin_url):
    """Every request the clients send, with the answer it gave alone: [(path, body, check)]."""
    out = []
    for t in TEXTS:
        body = {"text": t}
        st, ans = post(port, "/clip/embed_text", body)
        out.append(("/clip/embed_text", body, ("embeddings", ans["embeddings"][0])))
    for name in IMAGES:
        body = {"image": {"type": "base64", "value": image_b64(name)}}
        st, ans = post(port, "/clip/embed_image", body)
        out.append(("/clip/embed_image", body, ("embeddings", ans["embeddings"][0])))
        body = {"subject": body["image"], "prompt": TEXTS[:3]}
        st, ans = post(port, "/clip/compare", body)
        out.append(("/clip/compare", body, ("similarity", ans["similarity"])))
    body = {"image": [{"type": "url", "value": origin_url}, {"type": "base64", "value": image_b64()}]}
    st, ans = post(port, "/clip/embed_image", body)
    out.append(("/clip/embed_image", body, ("embeddings", ans["embeddings"][0])))
    return out


def answer_matches(ans, expected):
    """The answer has the expected similarities (within 1e-5) or first embedding (up to the
    rounding of batching)."""
    key, want = expected
    got = ans.get(key) if isinstance(ans, dict) else None
    if got is None:
        return False
    if key == "similarity":
        return len(got) == len(want) and all(abs(g - w) < 1e-5 for g, w in zip(got, want))
    return same_embedding(got[0], want)


def main():
    if not built():
        skip("test_soak.py: %s or %s not built" % (CLIP, CLIP_CONVERT))
        return 0
    seconds = float(os.environ.get("SOAK_SECONDS", "20"))
    with tempfile.TemporaryDirectory(prefix="clip-soak-") as tmpdir:
        model = convert_fixture(tmpdir)
        origin = Origin(png_answer)
        srv = Server(model, "--threads", "2", "--allow-private-urls")
        try:
            plan = requests_and_answers(srv.port, "http://127.0.0.1:%d/a.png" % origin.port)
            check(len(plan) == len(TEXTS) + 2 * len(IMAGES) + 1, "soak: reference answers")
            rss_start = srv.rss_kb()
            t_start = time.time()
            t_end = t_start + seconds
            lock = threading.Lock()
            lat = [[] for _ in range(WINDOWS)]
            failures = []
            counts = {"requests": 0}
            rss = []

            def client(i):
                rng = random.Random(i)
                c = Client(srv.url, timeout=30)
                while time.time() < t_end:
                    path, body, want = plan[rng.randrange(len(plan))]
                    t0 = time.time()
                    try:
                        status, ans, _ = c.post(path, body)
                        ok = status == 200 and answer_matches(ans, want)
                        why = "%s %s %s" % (path, status, str(ans)[:120])
                    except (OSError, http.client.HTTPException) as e:
                        ok, why = False, "%s %s: %s" % (path, type(e).__name__, e)
                    dt = time.time() - t0
                    w = min(WINDOWS - 1, int((t0 - t_start) / seconds * WINDOWS))
                    with lock:
                        counts["requests"] += 1
                        lat[w].append(dt)
                        if not ok:
                            failures.append(why)
                c.close()

            threads = [threading.Thread(target=client, args=(i,)) for i in range(CLIENTS)]
            for t in threads:
                t.start()
            while time.time() < t_end and srv.alive():
                rss.append((time.time() - t_start, srv.rss_kb()))
                time.sleep(min(1.0, max(0.05, t_end - time.time())))
            for t in threads:
                t.join(60)
            rss_end = srv.rss_kb()
            n = counts["requests"]
            print("   soak: %d clients, %.0f s, %d requests (%.1f/s), %d failed"
                  % (CLIENTS, seconds, n, n / seconds, len(failures)))
            for w in range(WINDOWS):
                print("   soak window %d (%5.0f-%5.0f s): %5d requests, p50 %6.1f ms, p99 %6.1f ms"
                      % (w, w * seconds / WINDOWS, (w + 1) * seconds / WINDOWS, len(lat[w]),
                         1000 * percentile(lat[w], 50), 1000 * percentile(lat[w], 99)))
            warm = [kb for t, kb in rss if t >= seconds / WINDOWS] or [rss_start]
            print("   soak RSS: start %d KB, after warm-up %d KB, max %d KB, end %d KB"
                  % (rss_start, warm[0], max(kb for _, kb in rss) if rss else -1, rss_end))
            check(n > 0 and not failures, "soak: %d requests, zero failed" % n,
                  "%d failed, first: %s" % (len(failures), failures[:3]))
            check(srv.alive(), "soak: server alive throughout")
            if sanitized(CLIP):
                skip("soak: RSS flatness under ASan (its quarantine keeps freed memory; "
                     "LeakSanitizer checks leaks at exit)")
            else:
                check(0 < rss_end <= 1.5 * warm[0] + 32 * 1024,
                      "soak: RSS flat (%d KB after warm-up, %d KB at the end)" % (warm[0], rss_end))
            p50_first, p50_last = percentile(lat[0], 50), percentile(lat[-1], 50)
            check(p50_last <= 4 * p50_first + 0.2,
                  "soak: latency steady (p50 %.1f ms first window, %.1f ms last)"
                  % (1000 * p50_first, 1000 * p50_last))
        finally:
            rc, text = srv.stop()
            origin.close()
        # The exit status of SIGTERM itself is checked by test_faults.py; here only crashes.
        crashed = rc not in (0, -signal.SIGTERM)
        report = sanitizer_report(text)
        check(not crashed and not report, "soak: no crash and no sanitizer report",
              "exit %s: %s" % (rc, text[-600:]))
    return exit_status()


if __name__ == "__main__":
    sys.exit(main())
