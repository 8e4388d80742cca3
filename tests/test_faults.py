#!/usr/bin/python3
"""test_faults.py -- hostile clients and faults against `clip serve` (issue 7), loopback only.

Starts `$CLIP serve` with a model converted by $CLIP_CONVERT from our own fixture
tests/data/ref/st-quickgelu (always present), short header/body/URL timeouts, and checks that
nothing a client or an image URL does can crash, stall or bloat it:

  clients that disconnect mid-head, mid-body, before reading the answer, or reset the
  connection; a request trickled byte by byte; pipelined requests (one half-written);
  200 slowloris connections while normal requests are still served promptly, and dropped by
  the header timeout; 1,000 connections opened at once (the connection cap answers 503);
  an oversized head and too many fields (431); a body declaring 10 GB (413 before reading);
  JSON nested 100,000 deep; 10,000 images and 10,000 texts in one request (the batch limit);
  invalid UTF-8; image URLs served by a local server that never answers, trickles, sends an
  endless body, or redirects forever (--allow-private-urls); corrupt model files at start-up.
  Afterwards the server still gives the same answer as at the start and its RSS is sane.

Stdlib only; prints PASS/FAIL/SKIP lines; bounded (about a minute). The checks only: the
server, the clients, the origins and the model come from tests/clipserver.py, the one module
it imports besides the stdlib; no other test imports this file.
"""
import errno
import http.client
import json
import os
import select
import socket
import struct
import subprocess
import sys
import tempfile
import threading
import time

sys.dont_write_bytecode = True   # importing the helper module leaves no __pycache__
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from clipserver import (CLIP, CLIP_CONVERT, BadOrigin, Server, built, check,  # noqa: E402
                        connect, convert_fixture, exit_status, http_post, image_b64,
                        noise_bmp_b64, parse_responses, post, raise_nofile, raw, read_all,
                        same_embedding, sanitized, sanitizer_report, skip)


# ----------------------------------------------------------------------------------------
# The checks
# ----------------------------------------------------------------------------------------

EMBED_TEXT = {"text": "a photo of a cat"}


def first_embedding(raw_body):
    try:
        return json.loads(raw_body)["embeddings"][0]
    except (ValueError, KeyError, IndexError, TypeError):
        return None


def reference_answer(port):
    st, body = post(port, "/clip/embed_text", EMBED_TEXT)
    return body["embeddings"][0] if st == 200 else None


def still_right(srv, expected, name):
    """The server is alive and answers the reference request exactly as at the start."""
    try:
        st, body = post(srv.port, "/clip/embed_text", EMBED_TEXT, timeout=10)
        got = body["embeddings"][0] if st == 200 else None
        ok = srv.alive() and st == 200 and same_embedding(got, expected)
        return check(ok, name, "alive=%s status=%s got %r want %r"
                     % (srv.alive(), st, got and got[:4], expected[:4]))
    except (OSError, ValueError, KeyError, http.client.HTTPException) as e:
        return check(False, name, "%s (server alive: %s)" % (e, srv.alive()))


def test_disconnects(srv, expected):
    img = image_b64()
    full_image = http_post("/clip/embed_image", {"image": {"type": "base64", "value": img}})
    full_text = http_post("/clip/embed_text", EMBED_TEXT)
    stages = {
        "mid-request-line": b"POST /clip/embed_te",
        "mid-headers": full_text[:full_text.index(b"Content-Length") + 9],
        "after-head-no-body": full_text[:full_text.index(b"\r\n\r\n") + 4],
        "mid-body": full_image[:len(full_image) // 2],
        "mid-chunked-body": (b"POST /clip/embed_text HTTP/1.1\r\nHost: x\r\n"
                             b"Transfer-Encoding: chunked\r\n\r\n10\r\n{\"text\": \"a"),
        "before-reading-answer(image)": full_image,
        "before-reading-answer(text)": full_text,
    }
    for stage, data in stages.items():
        for _ in range(5):
            s = connect(srv.port)
            s.sendall(data)
            s.close()
        # A reset instead of a FIN: the server's next write meets ECONNRESET/EPIPE.
        for _ in range(5):
            s = connect(srv.port)
            s.sendall(data)
            s.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
            s.close()
    time.sleep(0.5)
    still_right(srv, expected, "disconnects at every stage (close and reset): server answers")


def test_trickled_and_pipelined(srv, expected):
    # A whole request one byte at a time (well inside the 2 s head timeout).
    req = http_post("/clip/embed_text", EMBED_TEXT)
    s = connect(srv.port)
    for i in range(len(req)):
        s.sendall(req[i:i + 1])
        time.sleep(0.002)
    s.shutdown(socket.SHUT_WR)
    rs = parse_responses(read_all(s, 10))
    s.close()
    check(len(rs) == 1 and rs[0][0] == 200 and same_embedding(first_embedding(rs[0][2]), expected),
          "request trickled byte by byte is answered correctly", repr(rs)[:200])

    # Three pipelined requests in one write; then pipelined with the last one half-written
    # and completed after a pause.
    pipe = (b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n" + req
            + b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")
    rs = parse_responses(raw(srv.port, pipe))
    check([r[0] for r in rs] == [200, 200, 200]
          and same_embedding(first_embedding(rs[1][2]), expected)
          and b"models" in rs[2][2],
          "three pipelined requests answered in order", repr([r[0] for r in rs]))
    s = connect(srv.port)
    s.sendall(req + req[:len(req) - 7])
    time.sleep(0.3)
    s.sendall(req[len(req) - 7:])
    s.shutdown(socket.SHUT_WR)
    rs = parse_responses(read_all(s, 10))
    s.close()
    check([r[0] for r in rs] == [200, 200]
          and all(same_embedding(first_embedding(r[2]), expected) for r in rs),
          "pipelined request split mid-body is completed and answered", repr([r[0] for r in rs]))
    rs = parse_responses(raw(srv.port, req + b"GARBAGE / HTTP/9.9\r\n\r\n"))
    check(len(rs) == 2 and rs[0][0] == 200 and rs[1][0] in (400, 501, 505),
          "a malformed request after a good one in a pipeline: good answered, bad refused",
          repr([r[0] for r in rs]))


def test_slowloris(srv, expected, header_timeout):
    slow = []
    try:
        for _ in range(200):
            s = connect(srv.port)
            s.sendall(b"POST /clip/embed_text HTTP/1.1\r\nHost: x\r\n")
            slow.append(s)
    except OSError as e:
        check(False, "200 slowloris connections opened", str(e))
    stop = threading.Event()

    def dribble():
        while not stop.wait(0.25):
            for s in slow:
                try:
                    s.send(b"X")
                except OSError:
                    pass
    t = threading.Thread(target=dribble, daemon=True)
    t.start()
    worst, bad = 0.0, []
    t_open = time.time()
    for i in range(10):
        t0 = time.time()
        try:
            st, body = post(srv.port, "/clip/embed_text", EMBED_TEXT, timeout=10)
            if st != 200 or not same_embedding(body["embeddings"][0], expected):
                bad.append(st)
        except (OSError, ValueError, KeyError, http.client.HTTPException) as e:
            bad.append(str(e))
        worst = max(worst, time.time() - t0)
    check(not bad and worst < 1.5,
          "10 normal requests served promptly beside 200 slowloris connections",
          "worst %.2f s, bad %r" % (worst, bad[:3]))
    # The head deadline is fixed when the head starts: trickling bytes does not extend it.
    closed = 0
    deadline = t_open + header_timeout + 4
    pending = list(slow)
    while pending and time.time() < deadline:
        r, _, _ = select.select(pending, [], [], 0.2)
        for s in r:
            try:
                d = s.recv(65536)
            except OSError:
                d = b""
            if not d or b"408" in d:
                pending.remove(s)
                closed += 1
    stop.set()
    t.join()
    for s in slow:
        s.close()
    check(closed == len(slow),
          "slowloris connections dropped by the %d s head timeout" % header_timeout,
          "%d of %d dropped within %d s" % (closed, len(slow), header_timeout + 4))
    time.sleep(0.3)
    still_right(srv, expected, "after slowloris: server answers")


def test_slow_body(srv, expected, body_timeout):
    """A body trickled one byte at a time is never silent for body_timeout, yet at that rate a
    few hundred such uploads would hold every connection slot for days: the upload as a whole
    must have a deadline (or a minimum rate)."""
    s = connect(srv.port)
    s.sendall(b"POST /clip/embed_text HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
              b"Content-Length: 100000\r\n\r\n{")
    s.setblocking(False)
    limit = 5 * body_timeout
    t0 = time.time()
    dropped = None
    while time.time() - t0 < limit and dropped is None:
        try:
            d = s.recv(4096)
            dropped = time.time() - t0 if not d or d.startswith(b"HTTP/1.1 4") else None
        except BlockingIOError:
            pass
        except OSError:
            dropped = time.time() - t0
        if dropped is None:
            try:
                s.send(b" ")
            except OSError:
                dropped = time.time() - t0
            time.sleep(0.5)
    s.close()
    check(dropped is not None,
          "a body trickled at 2 bytes/s (100 KB declared) is dropped within %d s" % limit,
          "still open after %d s: one such client per connection slot locks the server out "
          "(--body-timeout only bounds silence)" % limit)
    still_right(srv, expected, "after a trickled body: server answers")


def test_thousand_connections(srv, expected, cap):
    limit = raise_nofile(4096)
    if limit < 1100:
        skip("1,000 connections at once: RLIMIT_NOFILE is only %d" % limit)
        return
    socks, refused = [], 0
    for _ in range(1000):
        s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        s.setblocking(False)
        err = s.connect_ex(("127.0.0.1", srv.port))
        if err not in (0, errno.EINPROGRESS):
            refused += 1
            s.close()
            continue
        socks.append(s)
    # Every connection must come to an end: over the cap a 503 and a close at once, under it
    # a close by the head timeout (they never send a request). Meanwhile the server's thread
    # count (one per held connection) must stay within the cap.
    deadline = time.time() + 20
    pending = list(socks)
    got_503, closed, max_threads = 0, 0, 0
    by_fd = {s.fileno(): s for s in socks}
    poller = select.poll()   # select() stops at descriptor 1023
    for fd in by_fd:
        poller.register(fd, select.POLLIN)
    while pending and time.time() < deadline:
        max_threads = max(max_threads, srv.threads())
        for fd, _ in poller.poll(200):
            s = by_fd[fd]
            try:
                d = s.recv(4096)
            except BlockingIOError:
                continue
            except OSError:
                d = b""
            if d.startswith(b"HTTP/1.1 503"):
                got_503 += 1
            else:
                closed += 1
            pending.remove(s)
            poller.unregister(fd)
    check(not pending and refused == 0 and got_503 > 0 and max_threads <= cap + 16,
          "1,000 connections at once: at most --max-connections (%d) held, the rest 503" % cap,
          "connected %d, unresolved %d, refused %d, 503s %d, closed idle %d, max threads %d"
          % (len(socks), len(pending), refused, got_503, closed, max_threads))
    print("   1,000 connections: %d answered 503, %d held then closed idle, server threads <= %d"
          % (got_503, closed, max_threads))
    for s in socks:
        s.close()
    time.sleep(0.5)
    t0 = time.time()
    still_right(srv, expected, "after 1,000 connections: server answers")
    check(time.time() - t0 < 2.0, "after 1,000 connections: answered promptly",
          "%.2f s" % (time.time() - t0))


def test_limits(srv):
    t0 = time.time()
    rs = parse_responses(raw(srv.port, b"GET /healthz HTTP/1.1\r\nHost: x\r\nX-Big: " + b"a" * 20000 + b"\r\n\r\n"))
    check(rs and rs[0][0] == 431, "a 20 KB header: 431", repr(rs)[:200])
    many = b"".join(b"X-H%d: v\r\n" % i for i in range(200))
    rs = parse_responses(raw(srv.port, b"GET /healthz HTTP/1.1\r\nHost: x\r\n" + many + b"\r\n"))
    check(rs and rs[0][0] == 431, "200 header fields: 431", repr(rs)[:200])
    # 10 GB declared, nothing sent: refused from the header without waiting for a byte.
    s = connect(srv.port)
    t0 = time.time()
    s.sendall(b"POST /clip/embed_image HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
              b"Content-Length: 10737418240\r\n\r\n")
    rs = parse_responses(read_all(s, 5))
    s.close()
    dt = time.time() - t0
    check(rs and rs[0][0] == 413 and dt < 1.5, "a body declaring 10 GB: 413 before reading it",
          "%r in %.2f s" % (rs[:1], dt))
    s = connect(srv.port)
    t0 = time.time()
    s.sendall(b"POST /clip/embed_image HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n"
              b"280000000\r\n")
    rs = parse_responses(read_all(s, 5))
    s.close()
    check(rs and rs[0][0] == 413 and time.time() - t0 < 1.5,
          "a chunk declaring 10 GB: 413 before reading it", repr(rs[:1]))
    s = connect(srv.port)
    s.sendall(b"POST /clip/embed_image HTTP/1.1\r\nHost: x\r\n"
              b"Content-Length: 99999999999999999999999999\r\n\r\n")
    rs = parse_responses(read_all(s, 5))
    s.close()
    check(rs and rs[0][0] in (400, 413), "a Content-Length over 2^64: 400/413", repr(rs[:1]))

    for depth, what in ((100000, "array"), (100000, "object")):
        if what == "array":
            doc = b'{"text": ' + b"[" * depth + b"]" * depth + b"}"
        else:
            doc = b'{"text": ' + b'{"a":' * depth + b"1" + b"}" * depth + b"}"
        t0 = time.time()
        rs = parse_responses(raw(srv.port, http_post("/clip/embed_text", doc)))
        dt = time.time() - t0
        check(rs and rs[0][0] in (400, 422) and dt < 2.0,
              "JSON %s nested 100,000 deep: refused fast" % what,
              "%r in %.2f s" % (rs[:1], dt))
    doc = b'{"text": ' + b"[" * 100000
    rs = parse_responses(raw(srv.port, http_post("/clip/embed_text", doc)))
    check(rs and rs[0][0] in (400, 422), "unterminated JSON nested 100,000 deep: refused",
          repr(rs[:1]))

    img = {"type": "base64", "value": image_b64("tiny_3x2.png")}
    for route, key, items, what in (
            ("/clip/embed_image", "image", [img] * 10000, "10,000 images"),
            ("/clip/embed_text", "text", ["a cat"] * 10000, "10,000 texts"),
            ("/clip/compare", "prompt", ["a cat"] * 10000, "10,000 prompts")):
        body = {key: items}
        if route == "/clip/compare":
            body["subject"] = img
        t0 = time.time()
        st, ans = post(srv.port, route, body)
        dt = time.time() - t0
        msg = ans.get("message", "") if isinstance(ans, dict) else ""
        check(st == 400 and "at most" in msg and dt < 2.0,
              "%s in one request: 400 from the batch limit, fast" % what,
              "%s %r in %.2f s" % (st, ans if not isinstance(ans, bytes) else ans[:100], dt))

    for raw_body, what in ((b'{"text": "\xff\xfe cat"}', "bytes ff fe"),
                           (b'{"text": "\xc0\xaf"}', "an overlong encoding"),
                           (b'{"text": "\xed\xa0\x80"}', "an encoded surrogate"),
                           (b'{"text": "caf\xc3"}', "a truncated sequence"),
                           (b'{"te\xffxt": "cat"}', "a bad key")):
        st, ans = post(srv.port, "/clip/embed_text", raw_body)
        check(st in (400, 422), "invalid UTF-8 in the body (%s): 400/422" % what,
              "%s %r" % (st, ans))
    st, ans = post(srv.port, "/clip/embed_text", {"text": "\ud800 lone surrogate escape"})
    check(st in (400, 422), "a lone surrogate \\ud800 escape: 400/422", "%s %r" % (st, ans))
    st, ans = post(srv.port, "/clip/embed_image",
                   {"image": {"type": "base64", "value": "!!!" + "A" * 100}})
    check(st == 400, "an invalid base64 image: 400", "%s %r" % (st, ans))


def test_url_faults(srv, url_timeout):
    # One origin per misbehaviour, all fetched at once: each must come back 400 within the
    # whole-fetch timeout (plus slack), none may take the others down.
    origins = {m: BadOrigin(m) for m in ("silent", "trickle", "endless", "redirect")}
    results = {}

    def fetch(mode):
        t0 = time.time()
        try:
            st, ans = post(srv.port, "/clip/embed_image",
                           {"image": {"type": "url", "value": origins[mode].url()}},
                           timeout=url_timeout + 15)
        except (OSError, http.client.HTTPException) as e:
            st, ans = None, str(e)
        results[mode] = (st, ans, time.time() - t0)
    ts = [threading.Thread(target=fetch, args=(m,)) for m in origins]
    for t in ts:
        t.start()
    for t in ts:
        t.join(url_timeout + 20)
    for mode, what in (("silent", "never answers"), ("trickle", "trickles"),
                       ("endless", "sends an endless body"), ("redirect", "redirects forever")):
        st, ans, dt = results.get(mode, (None, "no answer", 0))
        msg = ans.get("message", "") if isinstance(ans, dict) else str(ans)
        limit = url_timeout + 3
        ok = st == 400 and msg.startswith("Could not load input image") and dt < limit
        if mode == "redirect":
            ok = ok and origins[mode].requests <= 6
        check(ok, "image URL that %s: 400 within %d s" % (what, limit),
              "%s %r after %.1f s (requests %d)" % (st, msg[:160], dt, origins[mode].requests))
    for o in origins.values():
        o.close()


def test_corrupt_models(tmpdir, model):
    with open(model, "rb") as f:
        good = f.read()
    cases = {
        "truncated": good[:len(good) // 2],
        "empty": b"",
        "garbage": os.urandom(4096),
        "bad magic": b"NOTACLIP" + good[8:],
        "future version": good[:8] + struct.pack("<I", 7) + good[12:],
        "flipped tensor table": good[:300] + bytes(b ^ 0xFF for b in good[300:400]) + good[400:],
    }
    for what, data in cases.items():
        path = os.path.join(tmpdir, "bad.clip")
        with open(path, "wb") as f:
            f.write(data)
        env = {k: v for k, v in os.environ.items() if not k.startswith("CLIP_")}
        try:
            r = subprocess.run([CLIP, "serve", "-m", path, "--port", "0", "--host", "127.0.0.1"],
                               stdout=subprocess.PIPE, stderr=subprocess.PIPE, timeout=15, env=env)
            err = r.stderr.decode(errors="replace").strip()
            ok = (r.returncode not in (0, None) and r.returncode > 0 and "bad.clip" in err
                  and "listening" not in err and len(err.splitlines()) <= 3)
            check(ok, "corrupt model at start-up (%s): clear error, nonzero exit" % what,
                  "exit %s, stderr %r" % (r.returncode, err[-300:]))
        except subprocess.TimeoutExpired:
            check(False, "corrupt model at start-up (%s): clear error, nonzero exit" % what,
                  "still running after 15 s")


def test_idle_memory_returned(srv):
    """A burst of big requests from many connections must not leave the server holding
    the memory once they have all gone (the request buffers stay in the heap while it is
    busy: see keep_request_memory in server.c)."""
    img = {"type": "base64", "value": noise_bmp_b64(640, 480, 7)}
    body = json.dumps({"image": [img] * 8}).encode()
    st, _ = post(srv.port, "/clip/embed_image", body)
    check(st == 200, "idle memory: a request of 8 images of 640x480", "status %s" % st)
    time.sleep(2.5)
    before = srv.rss_kb()
    results = []

    def client():
        try:
            c = http.client.HTTPConnection("127.0.0.1", srv.port, timeout=120)
            for _ in range(2):
                c.request("POST", "/clip/embed_image", body, {"Content-Type": "application/json"})
                r = c.getresponse()
                r.read()
                results.append(r.status)
            c.close()
        except (OSError, http.client.HTTPException) as e:
            results.append(repr(e))

    threads = [threading.Thread(target=client) for _ in range(12)]
    for t in threads:
        t.start()
    busy = before
    while any(t.is_alive() for t in threads):
        busy = max(busy, srv.rss_kb())
        time.sleep(0.05)
    check(results == [200] * 24, "idle memory: 12 connections x 2 requests of 8 images answered",
          str(results[:4]))
    time.sleep(2.5)
    after = srv.rss_kb()
    if sanitized(CLIP):
        skip("idle memory (before %d KB, busy %d KB, idle again %d KB): an ASan build's "
             "quarantine keeps freed memory" % (before, busy, after))
        return
    check(after <= before + 24 * 1024,
          "idle memory: given back once the connections are gone (before %d KB, busy up to "
          "%d KB, 2.5 s after %d KB)" % (before, busy, after), "")


def main():
    if not built():
        skip("test_faults.py: %s or %s not built" % (CLIP, CLIP_CONVERT))
        return 0
    t_start = time.time()
    header_timeout, url_timeout, cap = 2, 2, 512
    with tempfile.TemporaryDirectory(prefix="clip-faults-") as tmpdir:
        model = convert_fixture(tmpdir)
        raise_nofile(4096)
        srv = Server(model, "--threads", "1", "--header-timeout", str(header_timeout),
                     "--body-timeout", "2", "--url-timeout", str(url_timeout),
                     "--url-max-mb", "1", "--allow-private-urls",
                     "--max-connections", str(cap))
        try:
            expected = reference_answer(srv.port)
            check(expected is not None, "reference answer at start")
            rss0 = srv.rss_kb()
            steps = [lambda: test_disconnects(srv, expected),
                     lambda: test_trickled_and_pipelined(srv, expected),
                     lambda: test_limits(srv),
                     lambda: test_url_faults(srv, url_timeout),
                     lambda: test_slowloris(srv, expected, header_timeout),
                     lambda: test_slow_body(srv, expected, 2),
                     lambda: test_thousand_connections(srv, expected, cap),
                     lambda: test_idle_memory_returned(srv)]
            for step in steps:
                if not srv.alive():
                    break
                try:
                    step()
                except (OSError, ValueError, KeyError, http.client.HTTPException) as e:
                    check(False, "fault step raised", "%s: %s" % (type(e).__name__, e))
            time.sleep(0.5)
            still_right(srv, expected, "after every fault: same answer as at the start")
            rss1 = srv.rss_kb()
            if sanitized(CLIP):
                skip("RSS after the faults (start %d KB, end %d KB): an ASan build's quarantine "
                     "keeps freed memory; LeakSanitizer checks leaks at exit" % (rss0, rss1))
            else:
                check(srv.alive() and 0 < rss1 < max(4 * rss0, rss0 + 200 * 1024),
                      "RSS sane after the faults (start %d KB, end %d KB, %d threads)"
                      % (rss0, rss1, srv.threads()), "start %d KB, end %d KB" % (rss0, rss1))
        finally:
            rc, text = srv.stop()
            crashed = rc not in (0,) or sanitizer_report(text)
            check(not crashed, "server exits cleanly on SIGTERM after the faults",
                  "exit %s: %s" % (rc, text[-800:]))
        test_corrupt_models(tmpdir, model)
    print("   (test_faults.py: %.1f s)" % (time.time() - t_start))
    return exit_status()


if __name__ == "__main__":
    sys.exit(main())
