#!/usr/bin/python3
"""test_server.py -- drives `clip serve` over real sockets on loopback.

Starts the server on a free port with a model converted from ../shared/reference/tiny-hf
(by $CLIP_CONVERT), or weights/default.clip, and checks: every request shape of the API doc
against the CLI's bodies (`clip embed-image`, `embed-text`, `compare`), the HTTP/1.1 layer
(keep-alive, pipelining, chunked, 100-continue, HEAD, 404/405/413/431/400/505), every error
path's status and body, the API key, CORS, the connection cap, concurrency (32 clients),
hostile clients (disconnect mid-upload, slow uploads, stalled heads), SIGTERM while busy,
and image URLs from a local HTTP server and a local TLS server (a test CA made here with the
openssl CLI), allowed with --allow-private-urls and refused without. Also: the text cache
(hits, exact bytes, token-id keys, LRU bound per model, off with CLIP_TEXT_CACHE=0), the
warm-up before listening, several images per request from several clients, GET /'s fields,
and every server's log read after it exits for sanitizer reports (leaks come at exit).

Imports only the stdlib and tests/clipserver.py (the server process, the one-shot and raw
clients, the PASS/FAIL/SKIP lines), never another test. Everything is bounded in time.
"""
import base64
import http.client
import http.server
import json
import os
import re
import shutil
import signal
import socket
import ssl
import subprocess
import sys
import tempfile
import threading
import time

sys.dont_write_bytecode = True   # importing the helper module leaves no __pycache__
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import clipserver  # noqa: E402
from clipserver import (CLIP, CLIP_CONVERT, ROOT, check, exit_status, post, raw,  # noqa: E402
                        request, sanitizer_report, skip, tiny_png_b64)

os.chdir(ROOT)   # REF and weights/default.clip are relative to the repository root
REF = os.environ.get("CLIP_REFERENCE_DIR", "../shared/reference")
IMAGES = os.path.join(REF, "images")


# ----------------------------------------------------------------------------------------
# Server processes and raw answers
# ----------------------------------------------------------------------------------------

class Server(clipserver.Server):
    """clipserver.Server with its access log on, whose stop() also checks that log for
    sanitizer reports (leaks are reported at exit, so the whole log is read after the process
    ended) and returns the exit status."""

    def __init__(self, model, *args, env=None):
        self.args = args
        super().__init__(model, *args, env=env, quiet=False)

    def stop(self, sig=signal.SIGTERM, timeout=30):
        rc, log = super().stop(sig, timeout)
        report = sanitizer_report(log)
        check(report is None, "server %s: no sanitizer report in its log" % " ".join(self.args[:4]),
              log[max(0, report.start() - 200):report.start() + 3000] if report else "")
        return rc


def statuses(data):
    return [int(m) for m in re.findall(rb"HTTP/1\.[01] (\d{3}) ", data)]


def read_response(sock):
    """Reads one Content-Length framed response from a socket: (status, headers, body)."""
    buf = b""
    while b"\r\n\r\n" not in buf:
        chunk = sock.recv(65536)
        if not chunk:
            raise ConnectionError("closed before the head")
        buf += chunk
    head, rest = buf.split(b"\r\n\r\n", 1)
    lines = head.decode("latin-1").split("\r\n")
    status = int(lines[0].split()[1])
    headers = {}
    for line in lines[1:]:
        k, v = line.split(":", 1)
        headers[k.strip().lower()] = v.strip()
    n = int(headers.get("content-length", "0"))
    while len(rest) < n:
        chunk = sock.recv(65536)
        if not chunk:
            raise ConnectionError("closed in the body")
        rest += chunk
    return status, headers, rest[:n], rest[n:]


def cli(*args, env=None):
    e = dict(os.environ)
    e.pop("CLIP_MODEL", None)
    e.update(env or {})
    p = subprocess.run([CLIP] + list(args), capture_output=True, timeout=120, env=e)
    if p.returncode != 0:
        raise RuntimeError("clip %s failed: %s" % (" ".join(args[:3]), p.stderr.decode()[-500:]))
    return json.loads(p.stdout)


def without_time(body):
    if isinstance(body, dict):
        return {k: v for k, v in body.items() if k != "time"}
    return body


def b64(path):
    with open(path, "rb") as f:
        return base64.b64encode(f.read()).decode()


def close_rows(a, b, tol=1e-5):
    """Embeddings equal within a relative tolerance (batching may regroup rows)."""
    if len(a) != len(b):
        return False
    for ra, rb in zip(a, b):
        if len(ra) != len(rb):
            return False
        scale = max(1e-6, max(abs(x) for x in rb))
        if max(abs(x - y) for x, y in zip(ra, rb)) > tol * scale:
            return False
    return True


def find_model(tmp):
    if os.environ.get("CLIP_TEST_MODEL"):   # a model of your choice, named from its file
        return os.environ["CLIP_TEST_MODEL"], None
    conv = CLIP_CONVERT
    src = os.path.join(REF, "tiny-hf")
    if os.path.exists(conv) and os.path.isdir(src):
        out = os.path.join(tmp, "tiny.clip")
        p = subprocess.run([conv, src, out, "--name", "tiny-B-32"], capture_output=True, timeout=300)
        if p.returncode == 0:
            return out, "tiny-B-32"
        skip("converting tiny-hf failed (%s); trying weights/default.clip" % p.stderr.decode()[-200:])
    if os.path.exists("weights/default.clip"):
        return "weights/default.clip", None
    return None, None


# ----------------------------------------------------------------------------------------
# Local image servers (HTTP and TLS) for URL inputs
# ----------------------------------------------------------------------------------------

class ImageHandler(http.server.SimpleHTTPRequestHandler):
    def __init__(self, *a, **kw):
        super().__init__(*a, directory=IMAGES, **kw)

    def log_message(self, *a):
        pass

    def do_GET(self):
        if self.path.startswith("/redirect-loop"):
            n = int(self.path.rsplit("/", 1)[1] or 0)
            self.send_response(302)
            self.send_header("Location", "/redirect-loop/%d" % (n + 1))
            self.send_header("Content-Length", "0")
            self.end_headers()
            return
        if self.path.startswith("/redirect/"):
            self.send_response(301)
            self.send_header("Location", "/" + self.path[len("/redirect/"):])
            self.send_header("Content-Length", "0")
            self.end_headers()
            return
        if self.path == "/endless":
            self.send_response(200)
            self.send_header("Content-Type", "image/png")
            self.end_headers()
            try:
                chunk = b"\0" * 65536
                for _ in range(2000):   # 128 MB at most, far over the cap
                    self.wfile.write(chunk)
            except OSError:
                pass
            return
        if self.path == "/chunked.png":
            with open(os.path.join(IMAGES, "coffee.png"), "rb") as f:
                data = f.read()
            self.send_response(200)
            self.send_header("Transfer-Encoding", "chunked")
            self.end_headers()
            for i in range(0, len(data), 7000):
                part = data[i:i + 7000]
                self.wfile.write(b"%x\r\n%s\r\n" % (len(part), part))
            self.wfile.write(b"0\r\n\r\n")
            return
        if self.path == "/silent":
            time.sleep(8)
            return
        super().do_GET()


def start_image_server(tls_ctx=None):
    srv = http.server.ThreadingHTTPServer(("127.0.0.1", 0), ImageHandler)
    srv.daemon_threads = True
    if tls_ctx:
        srv.socket = tls_ctx.wrap_socket(srv.socket, server_side=True)
    t = threading.Thread(target=srv.serve_forever, daemon=True)
    t.start()
    return srv


def make_test_ca(tmp):
    """A CA and a server certificate for 127.0.0.1/localhost, made with the openssl CLI."""
    if not shutil.which("openssl"):
        return None
    def run(*args):
        subprocess.run(["openssl"] + list(args), cwd=tmp, check=True, capture_output=True, timeout=60)
    try:
        run("req", "-x509", "-newkey", "rsa:2048", "-nodes", "-keyout", "ca.key", "-out", "ca.pem",
            "-days", "2", "-subj", "/CN=clip test CA")
        run("req", "-newkey", "rsa:2048", "-nodes", "-keyout", "srv.key", "-out", "srv.csr",
            "-subj", "/CN=localhost")
        with open(os.path.join(tmp, "ext.cnf"), "w") as f:
            f.write("subjectAltName=IP:127.0.0.1,DNS:localhost\n")
        run("x509", "-req", "-in", "srv.csr", "-CA", "ca.pem", "-CAkey", "ca.key",
            "-CAcreateserial", "-out", "srv.pem", "-days", "2", "-extfile", "ext.cnf")
    except (subprocess.CalledProcessError, subprocess.TimeoutExpired):
        return None
    return os.path.join(tmp, "ca.pem"), os.path.join(tmp, "srv.pem"), os.path.join(tmp, "srv.key")


# ----------------------------------------------------------------------------------------
# Checks
# ----------------------------------------------------------------------------------------

def http_layer(port):
    st, h, body = request(port, "GET", "/")
    info = json.loads(body) if st == 200 else {}
    check(st == 200 and info.get("name") == "clip" and info.get("models") and
          all("embed_dim" in m and "name" in m for m in info["models"]) and
          info.get("matmul") in ("avx512", "avx2", "blas"),
          "GET / names the server, its models and its matmul kernel", "%d %r" % (st, body[:200]))
    st, h, body = request(port, "GET", "/healthz")
    check(st == 200 and json.loads(body) == {"status": "ok"}, "GET /healthz", body)
    st, h, body = request(port, "HEAD", "/healthz")
    check(st == 200 and body == b"" and h.get("content-length") == "15", "HEAD /healthz: head only", h)
    st, h, body = request(port, "GET", "/nope")
    check(st == 404 and json.loads(body) == {"detail": "Not Found"}, "404 body", body)
    st, h, body = request(port, "GET", "/clip/embed_text")
    check(st == 405 and "POST" in h.get("allow", "") and json.loads(body) == {"detail": "Method Not Allowed"},
          "405 with Allow on GET /clip/embed_text", (st, h, body))
    st, h, body = request(port, "DELETE", "/healthz")
    check(st == 405 and "GET" in h.get("allow", ""), "405 with Allow on DELETE /healthz", (st, h))
    # 413 from the header, before the body is sent: the answer comes without a byte of body.
    s = socket.create_connection(("127.0.0.1", port), timeout=10)
    s.sendall(b"POST /clip/embed_text HTTP/1.1\r\nHost: x\r\nContent-Length: 10737418240\r\n\r\n")
    try:
        st, h, body, _ = read_response(s)
        check(st == 413 and "larger than" in json.loads(body)["message"], "413 from Content-Length (10 GB declared)", body)
    except (ConnectionError, socket.timeout) as e:
        check(False, "413 from Content-Length (10 GB declared)", e)
    s.close()
    # 413 when a chunked body grows over the limit (server runs with --max-body-mb 4).
    chunk = b"x" * 65536
    data = b"POST /clip/embed_text HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n"
    data += (b"10000\r\n" + chunk + b"\r\n") * 70
    out = raw(port, data)
    check(statuses(out) == [413], "413 when a chunked body grows over the limit", out[:200])
    out = raw(port, b"GET / HTTP/1.1\r\nHost: x\r\nX-Big: " + b"a" * 20000 + b"\r\n\r\n")
    check(statuses(out) == [431], "431 for a 20 KB header", out[:200])
    out = raw(port, b"GET / HTTP/1.1\r\nHost: x\r\n" + b"X-A: b\r\n" * 150 + b"\r\n")
    check(statuses(out) == [431], "431 for 150 header fields", out[:200])
    bad = {
        "bad request line": b"GET\r\n\r\n",
        "space in target": b"GET /a b HTTP/1.1\r\nHost: x\r\n\r\n",
        "bad header name": b"GET / HTTP/1.1\r\nHost: x\r\nBad Header: 1\r\n\r\n",
        "space before colon": b"GET / HTTP/1.1\r\nHost: x\r\nX-A : 1\r\n\r\n",
        "both Content-Length and Transfer-Encoding":
            b"POST /clip/embed_text HTTP/1.1\r\nHost: x\r\nContent-Length: 3\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n",
        "two different Content-Lengths":
            b"POST /clip/embed_text HTTP/1.1\r\nHost: x\r\nContent-Length: 3\r\nContent-Length: 4\r\n\r\nabcd",
        "bad Content-Length": b"POST /clip/embed_text HTTP/1.1\r\nHost: x\r\nContent-Length: -1\r\n\r\n",
        "bad chunk size": b"POST /clip/embed_text HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\n",
        "chunk without CRLF": b"POST /clip/embed_text HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n2\r\nabc\r\n0\r\n\r\n",
        "missing Host": b"GET / HTTP/1.1\r\n\r\n",
        "obsolete line folding": b"GET / HTTP/1.1\r\nHost: x\r\nX-A: 1\r\n continued\r\n\r\n",
        "NUL in a header": b"GET / HTTP/1.1\r\nHost: x\r\nX-A: a\0b\r\n\r\n",
        "bare CR": b"GET / HTTP/1.1\r\nHost: x\rX-A: 1\r\n\r\n",
    }
    for name, data in bad.items():
        out = raw(port, data)
        st = statuses(out)
        check(st == [400] and b'"message"' in out, "400 for " + name, out[:200])
    out = raw(port, b"GET / HTTP/2.0\r\nHost: x\r\n\r\n")
    check(statuses(out) == [505], "505 for HTTP/2.0 in a request line", out[:100])
    out = raw(port, b"POST /clip/embed_text HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: gzip, chunked\r\n\r\n")
    check(statuses(out) == [501], "501 for Transfer-Encoding: gzip, chunked", out[:100])
    # HTTP/1.0 closes by default; keep-alive when asked.
    out = raw(port, b"GET /healthz HTTP/1.0\r\n\r\n", shut=False)
    check(statuses(out) == [200] and b"Connection: close" in out, "HTTP/1.0 answered and closed", out[:200])


def keepalive_pipelining(port):
    c = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
    ok = True
    for i in range(5):
        c.request("POST", "/clip/embed_text", body=json.dumps({"text": "t%d" % i}),
                  headers={"Content-Type": "application/json"})
        r = c.getresponse()
        ok = ok and r.status == 200 and len(json.loads(r.read())["embeddings"]) == 1
    sock_before = c.sock
    c.request("GET", "/healthz")
    r = c.getresponse()
    r.read()
    check(ok and c.sock is sock_before and r.status == 200, "keep-alive: 6 requests on one connection")
    c.close()
    # Pipelining: three requests in one write, answers in order.
    bodies = [json.dumps({"text": w}).encode() for w in ("one", "two words", "three small words")]
    data = b""
    for b in bodies:
        data += b"POST /clip/embed_text HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\nContent-Length: %d\r\n\r\n%s" % (len(b), b)
    data += b"GET /nope HTTP/1.1\r\nHost: x\r\n\r\n"
    s = socket.create_connection(("127.0.0.1", port), timeout=30)
    s.sendall(data)
    got = []
    rest = b""
    try:
        for _ in range(4):
            st, h, body, rest2 = read_response_buffered(s, rest)
            rest = rest2
            got.append((st, body))
    except (ConnectionError, socket.timeout) as e:
        got.append(("error", str(e)))
    s.close()
    expect = [post(port, "/clip/embed_text", json.loads(b))[1]["embeddings"] for b in bodies]
    ok = len(got) == 4 and all(g[0] == 200 for g in got[:3]) and got[3][0] == 404
    ok = ok and all(json.loads(g[1])["embeddings"] == e for g, e in zip(got[:3], expect))
    check(ok, "pipelining: 4 requests in one write, answered in order", got[:1])
    # Chunked request body, and Expect: 100-continue.
    body = json.dumps({"text": ["chunked", "body"]}).encode()
    data = b"POST /clip/embed_text HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n"
    for i in range(0, len(body), 5):
        part = body[i:i + 5]
        data += b"%x;ext=1\r\n%s\r\n" % (len(part), part)
    data += b"0\r\nX-Trailer: yes\r\n\r\n"
    out = raw(port, data, shut=False)
    m = out.split(b"\r\n\r\n", 1)
    ok = statuses(out) == [200] and len(m) == 2
    check(ok and json.loads(m[1])["embeddings"] == post(port, "/clip/embed_text", json.loads(body))[1]["embeddings"],
          "chunked request body (with extension and trailer)", out[:200])
    s = socket.create_connection(("127.0.0.1", port), timeout=10)
    body = json.dumps({"text": "continue"}).encode()
    s.sendall(b"POST /clip/embed_text HTTP/1.1\r\nHost: x\r\nExpect: 100-continue\r\nContent-Length: %d\r\n\r\n" % len(body))
    first = s.recv(100)
    s.sendall(body)
    st, h, rb, _ = read_response(s)
    s.close()
    check(first.startswith(b"HTTP/1.1 100 Continue\r\n\r\n") and st == 200, "Expect: 100-continue", first)


def read_response_buffered(sock, rest):
    buf = rest
    while b"\r\n\r\n" not in buf:
        chunk = sock.recv(65536)
        if not chunk:
            raise ConnectionError("closed")
        buf += chunk
    head, body = buf.split(b"\r\n\r\n", 1)
    lines = head.decode("latin-1").split("\r\n")
    headers = {k.strip().lower(): v.strip() for k, v in (l.split(":", 1) for l in lines[1:])}
    n = int(headers.get("content-length", "0"))
    while len(body) < n:
        chunk = sock.recv(65536)
        if not chunk:
            raise ConnectionError("closed")
        body += chunk
    return int(lines[0].split()[1]), headers, body[:n], body[n:]


def routes_vs_cli(port, model, name):
    img = os.path.join(IMAGES, "coffee.png")
    img2 = os.path.join(IMAGES, "astronaut.png")
    gif = os.path.join(IMAGES, "no_time_for_that_tiny.gif")
    jpg = os.path.join(IMAGES, "rocket.jpg")
    mv = ["-m", model]
    # embed_image: single, list, data: prefix, wrapped base64, type case, JPEG/GIF.
    want = cli("embed-image", *mv, img)
    st, got = post(port, "/clip/embed_image", {"image": {"type": "base64", "value": b64(img)}})
    check(st == 200 and list(got) == ["inference_id", "frame_id", "time", "embeddings"] and
          got["inference_id"] is None and got["frame_id"] is None and isinstance(got["time"], float),
          "embed_image answers the doc's keys in order", got if st != 200 else list(got))
    check(st == 200 and without_time(got) == without_time(want), "embed_image single == clip embed-image",
          str(got)[:200])
    want2 = cli("embed-image", *mv, img, img2, jpg, gif)
    st, got = post(port, "/clip/embed_image", {"image": [
        {"type": "BASE64", "value": "data:image/png;base64," + b64(img)},
        {"type": "Base64", "value": "\n".join(re.findall(".{1,76}", b64(img2)))},
        {"type": "base64", "value": b64(jpg).rstrip("=")},
        {"type": "base64", "value": b64(gif)}]})
    check(st == 200 and len(got["embeddings"]) == 4 and without_time(got) == without_time(want2),
          "embed_image list (data: prefix, line-wrapped, unpadded, any-case type, PNG/JPEG/GIF) == CLI",
          str(got)[:200])
    # embed_text: single, list, long text truncated like clip.tokenize(truncate=True).
    want = cli("embed-text", *mv, "a photo of a cat")
    st, got = post(port, "/clip/embed_text", {"text": "a photo of a cat"})
    check(st == 200 and list(got) == ["inference_id", "frame_id", "time", "embeddings"] and
          without_time(got) == without_time(want), "embed_text single == clip embed-text", str(got)[:200])
    texts = ["a dog", "two cats on a sofa", "", "日本語のテキスト 🐱"]
    want = cli("embed-text", *mv, *texts)
    st, got = post(port, "/clip/embed_text", {"text": texts})
    check(st == 200 and without_time(got) == without_time(want), "embed_text list (empty, non-ASCII) == CLI",
          str(got)[:200])
    long_text = " ".join(["word%d" % i for i in range(200)])
    want = cli("embed-text", *mv, long_text)
    st, got = post(port, "/clip/embed_text", {"text": long_text})
    check(st == 200 and without_time(got) == without_time(want), "embed_text over 77 tokens is truncated, not refused",
          str(got)[:200])
    # compare in every direction.
    cases = [
        ("image->text list", {"subject": {"type": "base64", "value": b64(img)}, "prompt": ["a cup", "a cat"]},
         ["--subject", img, "--prompt", "a cup", "--prompt", "a cat"]),
        ("image->text mapping", {"subject": {"type": "base64", "value": b64(img)}, "prompt": {"cup": "a cup", "cat": "a cat"}},
         ["--subject", img, "--named-prompt", "cup=a cup", "--named-prompt", "cat=a cat"]),
        ("string subject as base64, single prompt string", {"subject": b64(img), "prompt": "a cup"},
         ["--subject", img, "--prompt", "a cup"]),
        ("text->image single image object", {"subject": "a cup", "subject_type": "text",
                                             "prompt": {"type": "base64", "value": b64(img)}, "prompt_type": "image"},
         ["--subject", "a cup", "--subject-type", "text", "--prompt", img, "--prompt-type", "image"]),
        ("image->image list", {"subject": {"type": "base64", "value": b64(img)}, "prompt_type": "image",
                               "prompt": [{"type": "base64", "value": b64(img2)}, b64(img)]},
         ["--subject", img, "--prompt-type", "image", "--prompt", img2, "--prompt", img]),
        ("text->text mapping", {"subject": "a cup", "subject_type": "text", "prompt": {"x": "a cat", "y": "a cup"}},
         ["--subject", "a cup", "--subject-type", "text", "--named-prompt", "x=a cat", "--named-prompt", "y=a cup"]),
    ]
    for label, body, args in cases:
        want = cli("compare", *mv, *args)
        st, got = post(port, "/clip/compare", body)
        check(st == 200 and list(got) == ["inference_id", "frame_id", "time", "similarity", "parent_id"] and
              without_time(got) == without_time(want), "compare " + label + " == clip compare",
              "%s vs %s" % (str(got)[:200], str(want)[:200]))
    st, got = post(port, "/clip/compare", cases[1][1])
    check(st == 200 and isinstance(got["similarity"], dict) and list(got["similarity"]) == ["cup", "cat"],
          "compare with a mapping answers a mapping in the prompt order", got)
    st, got = post(port, "/clip/compare", {"subject": b64(img), "prompt": b64(img), "prompt_type": "image"})
    check(st == 200 and abs(got["similarity"][0] - 1.0) < 1e-5, "compare an image with itself: cosine 1", got)
    # clip_version_id, api_key null, unknown fields: the requests inference_sdk sends.
    if name:
        st, got = post(port, "/clip/embed_image", {"image": {"type": "base64", "value": b64(img)},
                                                   "api_key": None, "clip_version_id": name,
                                                   "disable_model_monitoring": False, "usage_billable": True})
        want = cli("embed-image", *mv, img)
        check(st == 200 and without_time(got) == without_time(want),
              "inference_sdk embed_image (base64 without prefix, api_key null, clip_version_id)", str(got)[:200])
    st, got = post(port, "/clip/embed_text", {"text": ["a", "b"], "api_key": None, "clip_version_id": None})
    check(st == 200 and len(got["embeddings"]) == 2, "inference_sdk embed_text (clip_version_id null)", got)
    st, got = post(port, "/clip/compare", {"subject": "a", "subject_type": "text", "api_key": None,
                                           "prompt": {"type": "base64", "value": b64(img)}, "prompt_type": "image"})
    check(st == 200 and len(got["similarity"]) == 1, "inference_sdk compare text->image object", got)


TINY_PNG = tiny_png_b64()   # 2x2: small enough to repeat in lists under any body limit


def error_paths(port):
    img = b64(os.path.join(IMAGES, "coffee.png"))
    text_png = base64.b64encode(b"this is not an image at all").decode()
    cases = [
        ("/clip/embed_text", {"txt": "a"}, 422, lambda b: b["detail"][0]["type"] == "missing" and
         b["detail"][0]["loc"] == ["body", "text"] and b["detail"][0]["msg"] == "Field required" and
         b["detail"][0]["input"] == {"txt": "a"}),
        ("/clip/embed_text", {"text": 5}, 422, lambda b: b["detail"][0]["type"] == "string_type"),
        ("/clip/embed_text", {"text": ["a", 3]}, 422, lambda b: b["detail"][0]["loc"] == ["body", "text", 1]),
        ("/clip/embed_text", {"text": []}, 400, lambda b: "empty" in b["message"]),
        ("/clip/embed_text", {"text": ["t"] * 9}, 400, lambda b: "at most 8" in b["message"]),
        ("/clip/embed_text", [1, 2], 422, lambda b: b["detail"][0]["type"] == "model_attributes_type"),
        ("/clip/embed_image", {}, 422, lambda b: b["detail"][0]["loc"] == ["body", "image"]),
        ("/clip/embed_image", {"image": {"value": img}}, 422,
         lambda b: b["detail"][0]["type"] == "missing" and b["detail"][0]["loc"] == ["body", "image", "type"]),
        ("/clip/embed_image", {"image": [{"type": "base64", "value": TINY_PNG}] * 9}, 400,
         lambda b: "at most 8" in b["message"]),
        ("/clip/embed_image", {"image": {"type": "numpy", "value": "x"}}, 400, lambda b: "numpy" in b["message"]),
        ("/clip/embed_image", {"image": {"type": "pil", "value": "x"}}, 400, lambda b: "not supported" in b["message"]),
        ("/clip/embed_image", {"image": {"type": "multipart", "value": "x"}}, 400, lambda b: "multipart" in b["message"]),
        ("/clip/embed_image", {"image": {"type": "file", "value": "/etc/passwd"}}, 400, lambda b: "file" in b["message"]),
        ("/clip/embed_image", {"image": {"type": "ftp", "value": "x"}}, 400, lambda b: "ftp" in b["message"]),
        ("/clip/embed_image", {"image": {"type": "base64", "value": "!!!!"}}, 400,
         lambda b: b["message"] == "Could not load input image. Cause: Malformed base64 input image."),
        ("/clip/embed_image", {"image": {"type": "base64", "value": text_png}}, 400,
         lambda b: b["message"].startswith("Could not load input image. Cause: ")),
        ("/clip/embed_image", {"image": {"type": "base64", "value": 5}}, 400,
         lambda b: b["message"].startswith("Could not load input image.")),
        ("/clip/embed_image", {"image": {"type": "url", "value": "ftp://example.com/a.png"}}, 400,
         lambda b: "http" in b["message"]),
        ("/clip/embed_image", {"image": {"type": "base64", "value": b64(os.path.join(IMAGES, "truncated.jpg"))}}, 400,
         lambda b: b["message"].startswith("Could not load input image. Cause: ")),
        ("/clip/compare", {"prompt": "a"}, 422, lambda b: b["detail"][0]["loc"] == ["body", "subject"]),
        ("/clip/compare", {"subject": "a", "subject_type": "text"}, 422, lambda b: b["detail"][0]["loc"] == ["body", "prompt"]),
        ("/clip/compare", {"subject": "a", "subject_type": "words", "prompt": "b"}, 400, lambda b: "subject_type" in b["message"]),
        ("/clip/compare", {"subject": "a", "subject_type": "text", "prompt": "b", "prompt_type": "audio"}, 400,
         lambda b: "prompt_type" in b["message"]),
        ("/clip/compare", {"subject": "a", "subject_type": "text", "prompt": ["p"] * 9}, 400, lambda b: "at most 8" in b["message"]),
        ("/clip/compare", {"subject": "a", "subject_type": "text", "prompt": {"k%d" % i: "p" for i in range(9)}}, 400,
         lambda b: "at most 8" in b["message"]),
        ("/clip/compare", {"subject": "a", "subject_type": "text", "prompt": {"type": "base64", "value": img}}, 400,
         lambda b: "prompt_type" in b["message"]),
        ("/clip/compare", {"subject": "a", "subject_type": "text", "prompt": "b", "clip_version_id": "ViT-H-14"}, 404,
         lambda b: "ViT-H-14" in b["message"] and "loaded models" in b["message"]),
        ("/clip/compare", {"subject": "a", "subject_type": "text", "prompt": "b", "clip_version_id": 7}, 422,
         lambda b: b["detail"][0]["type"] == "string_type"),
    ]
    for path, body, want_status, pred in cases:
        st, got = post(port, path, body)
        try:
            ok = st == want_status and pred(got)
        except (KeyError, TypeError, IndexError):
            ok = False
        check(ok, "%s %s -> %d" % (path, json.dumps(body)[:70], want_status), "%s %s" % (st, str(got)[:300]))
    # JSON syntax errors: FastAPI's json_invalid with the byte offset.
    st, _, data = request(port, "POST", "/clip/embed_text", b'{"text": "a",}')
    got = json.loads(data)
    check(st == 422 and got["detail"][0]["type"] == "json_invalid" and got["detail"][0]["loc"] == ["body", 13] and
          got["detail"][0]["msg"] == "JSON decode error" and "error" in got["detail"][0]["ctx"],
          "invalid JSON -> 422 json_invalid with the offset", got)
    st, _, data = request(port, "POST", "/clip/embed_text", b'{"text": "\xff"}')
    check(st == 422 and json.loads(data)["detail"][0]["type"] == "json_invalid", "invalid UTF-8 -> 422", data)
    st, _, data = request(port, "POST", "/clip/embed_text", b"[" * 100000)
    check(st == 422 and json.loads(data)["detail"][0]["type"] == "json_invalid", "JSON nested 100,000 deep -> 422", data[:200])
    st, _, data = request(port, "POST", "/clip/embed_text", b"")
    check(st == 422 and json.loads(data)["detail"][0]["loc"] == ["body"], "empty body -> 422 missing body", data)
    # 10,000 images are refused by the batch limit without decoding any.
    many = json.dumps({"image": [{"type": "base64", "value": TINY_PNG}] * 10000}).encode()
    t0 = time.time()
    st, _, data = request(port, "POST", "/clip/embed_image", many)
    check(st == 400 and "at most" in json.loads(data)["message"] and time.time() - t0 < 10,
          "a list of 10,000 images is refused cheaply by the batch limit", (st, data[:200]))


def api_key_checks(model):
    srv = Server(model, "--api-key", "s3cr3t", "--quiet")
    port = srv.port
    body = {"text": "a"}
    try:
        st, got = post(port, "/clip/embed_text", body)
        check(st == 401 and "message" in got, "API key: missing -> 401 {message}", got)
        st, got = post(port, "/clip/embed_text", dict(body, api_key="wrong"))
        check(st == 401, "API key: wrong body key -> 401", got)
        st, got = post(port, "/clip/embed_text", dict(body, api_key="s3cr3"))
        check(st == 401, "API key: a prefix of the key -> 401", got)
        st, got = post(port, "/clip/embed_text?api_key=s3cr3t", body)
        check(st == 200, "API key in the query", got)
        st, got = post(port, "/clip/embed_text", body, headers={"Authorization": "Bearer s3cr3t"})
        check(st == 200, "API key as Authorization: Bearer", got)
        st, got = post(port, "/clip/embed_text", dict(body, api_key="s3cr3t"))
        check(st == 200, "API key in the body", got)
        st, got = post(port, "/clip/compare", {"subject": "a", "subject_type": "text", "prompt": "b"})
        check(st == 401, "API key required on /clip/compare", got)
        st, got = post(port, "/clip/embed_image", {"image": {"type": "base64", "value": "x"}})
        check(st == 401, "API key required on /clip/embed_image", got)
        check(request(port, "GET", "/")[0] == 200 and request(port, "GET", "/healthz")[0] == 200,
              "API key not required on / and /healthz")
    finally:
        srv.stop()


def concurrency(port, model):
    img_paths = [os.path.join(IMAGES, n) for n in ("coffee.png", "astronaut.png", "camera.png", "horse.png")]
    texts = ["text number %d about %s" % (i, w) for i, w in enumerate(["cats", "dogs", "cars", "boats"] * 7)]
    expect_t = {t: cli("embed-text", "-m", model, t)["embeddings"][0] for t in texts}
    expect_i = {p: cli("embed-image", "-m", model, p)["embeddings"][0] for p in img_paths}
    results = [None] * 32
    def worker(k):
        try:
            if k < 28:
                st, got = post(port, "/clip/embed_text", {"text": texts[k]})
                results[k] = st == 200 and close_rows(got["embeddings"], [expect_t[texts[k]]])
            else:
                p = img_paths[k - 28]
                st, got = post(port, "/clip/embed_image", {"image": {"type": "base64", "value": b64(p)}})
                results[k] = st == 200 and close_rows(got["embeddings"], [expect_i[p]])
        except Exception as e:
            results[k] = e
    threads = [threading.Thread(target=worker, args=(k,)) for k in range(32)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(120)
    check(all(r is True for r in results), "32 concurrent clients each get their own answer",
          [r for r in results if r is not True][:3])


def hostile_clients(model):
    srv = Server(model, "--header-timeout", "2", "--body-timeout", "2", "--max-connections", "8", "--quiet")
    port = srv.port
    try:
        # Disconnect mid-upload, mid-head, and before reading the answer.
        for name, data in [("mid-upload", b"POST /clip/embed_text HTTP/1.1\r\nHost: x\r\nContent-Length: 100000\r\n\r\n{\"text\":"),
                           ("mid-head", b"POST /clip/embed_text HTTP/1.1\r\nHost: x\r\nContent-Le"),
                           ("before the answer", b"POST /clip/embed_text HTTP/1.1\r\nHost: x\r\nContent-Length: 12\r\n\r\n{\"text\":\"a\"}")]:
            s = socket.create_connection(("127.0.0.1", port))
            s.sendall(data)
            s.close()
            st, got = post(port, "/clip/embed_text", {"text": "still alive"})
            check(st == 200, "client disconnecting %s: server still serves" % name, got)
        # A slow upload does not delay anyone else.
        slow = socket.create_connection(("127.0.0.1", port))
        slow.sendall(b"POST /clip/embed_text HTTP/1.1\r\nHost: x\r\nContent-Length: 1000\r\n\r\n{\"te")
        t0 = time.time()
        ok = all(post(port, "/clip/embed_text", {"text": "fast %d" % i})[0] == 200 for i in range(5))
        check(ok and time.time() - t0 < 1.5, "a slow upload does not stall other clients (%.2f s for 5)" % (time.time() - t0))
        # The stalled upload is dropped after the body timeout.
        slow.settimeout(6)
        t0 = time.time()
        try:
            data = slow.recv(100)
        except (socket.timeout, ConnectionResetError):
            data = b"timeout"
        check(data != b"timeout" and time.time() - t0 < 5, "a stalled upload is dropped after --body-timeout", data)
        slow.close()
        # A stalled head (slowloris) gets 408 and is closed after --header-timeout.
        s = socket.create_connection(("127.0.0.1", port))
        s.sendall(b"GET / HTTP/1.1\r\nHost: x\r\n")
        s.settimeout(6)
        t0 = time.time()
        out = b""
        try:
            while True:
                d = s.recv(1000)
                if not d:
                    break
                out += d
        except (socket.timeout, ConnectionResetError):
            pass
        s.close()
        check(statuses(out) == [408] and time.time() - t0 < 5, "a stalled head gets 408 after --header-timeout", out[:100])
        # The connection cap: 8 open, the 9th gets 503.
        held = [socket.create_connection(("127.0.0.1", port)) for _ in range(8)]
        time.sleep(0.2)
        # The answer comes at accept, before any request: read without sending.
        out = raw(port, b"", timeout=5, shut=False)
        check(statuses(out) == [503] and b"Retry-After" in out, "over --max-connections: 503", out[:120])
        for s in held:
            s.close()
        time.sleep(0.3)
        check(request(port, "GET", "/healthz")[0] == 200, "served again once connections close")
    finally:
        srv.stop()


def cors_checks(model):
    srv = Server(model, "--cors", "https://app.example", "--quiet")
    try:
        st, h, _ = request(srv.port, "OPTIONS", "/clip/embed_text",
                           headers={"Origin": "https://app.example", "Access-Control-Request-Method": "POST"})
        check(st == 204 and h.get("access-control-allow-origin") == "https://app.example" and
              "POST" in h.get("access-control-allow-methods", ""), "CORS preflight answered", (st, h))
        st, h, _ = request(srv.port, "POST", "/clip/embed_text", {"text": "a"}, headers={"Origin": "https://app.example"})
        check(st == 200 and h.get("access-control-allow-origin") == "https://app.example", "CORS header on answers", h)
        st, h, _ = request(srv.port, "POST", "/clip/embed_text", {"text": "a"}, headers={"Origin": "https://evil.example"})
        check(st == 200 and "access-control-allow-origin" not in h, "no CORS header for other origins", h)
    finally:
        srv.stop()


def sigterm_while_busy(model):
    srv = Server(model, "--quiet")
    port = srv.port
    img = b64(os.path.join(IMAGES, "astronaut.png"))
    results = []
    def worker(i):
        try:
            st, got = post(port, "/clip/embed_image", {"image": [{"type": "base64", "value": img}] * 4}, timeout=60)
            results.append(st)
        except Exception as e:
            results.append(repr(e))
    threads = [threading.Thread(target=worker, args=(i,)) for i in range(6)]
    for t in threads:
        t.start()
    time.sleep(0.15)
    srv.proc.send_signal(signal.SIGTERM)
    for t in threads:
        t.join(60)
    try:
        rc = srv.proc.wait(30)
    except subprocess.TimeoutExpired:
        rc = "hung"
    check(rc == 0, "SIGTERM while busy: exit status 0", rc)
    check(results.count(200) == len(results) == 6 or
          all(r == 200 or "Refused" in str(r) for r in results) and results.count(200) >= 1,
          "SIGTERM while busy: in-flight requests answered (%d of %d)" % (results.count(200), len(results)), results)
    try:
        socket.create_connection(("127.0.0.1", port), timeout=1).close()
        check(False, "SIGTERM: the port is closed afterwards")
    except OSError:
        check(True, "SIGTERM: the port is closed afterwards")
    srv.stop()   # already exited: reads its log for sanitizer reports


def url_inputs(port_strict, model, tmp):
    if not os.path.isdir(IMAGES):
        skip("URL inputs: no reference images")
        return
    plain = start_image_server()
    pport = plain.server_address[1]
    base = "http://127.0.0.1:%d" % pport
    want = cli("embed-image", "-m", model, os.path.join(IMAGES, "coffee.png"))
    srv = Server(model, "--allow-private-urls", "--quiet", "--url-timeout", "3", "--url-max-mb", "2")
    try:
        port = srv.port
        def url_img(u, p=port):
            return post(p, "/clip/embed_image", {"image": {"type": "url", "value": u}})
        st, got = url_img(base + "/coffee.png")
        check(st == 200 and without_time(got) == without_time(want), "URL image (http) == base64 of the same file",
              str(got)[:200])
        st, got = post(port, "/clip/compare", {"subject": base + "/coffee.png", "prompt": ["a cup"]})
        check(st == 200, "compare: a string subject starting with http is a URL", got)
        st, got = url_img(base + "/redirect/coffee.png")
        check(st == 200 and without_time(got) == without_time(want), "URL redirect followed", str(got)[:200])
        st, got = url_img(base + "/chunked.png")
        check(st == 200 and without_time(got) == without_time(want), "URL with a chunked answer", str(got)[:200])
        st, got = url_img(base + "/redirect-loop/0")
        check(st == 400 and "redirect" in got["message"], "endless redirects refused", got)
        st, got = url_img(base + "/missing.png")
        check(st == 400 and "404" in got["message"], "URL answering 404 -> 400", got)
        st, got = url_img(base + "/endless")
        check(st == 400 and "larger than" in got["message"], "endless URL body cut at --url-max-mb", got)
        t0 = time.time()
        st, got = url_img(base + "/silent")
        check(st == 400 and time.time() - t0 < 6, "silent URL server: timed out (%.1f s)" % (time.time() - t0), got)
        st, got = url_img("http://127.0.0.1:1/x.png")
        check(st == 400 and "connect" in got["message"], "URL to a closed port -> 400", got)
        # The default server refuses private addresses, checked on the resolved address.
        for u in (base + "/coffee.png", "http://localhost:%d/coffee.png" % pport, "http://[::1]:%d/a.png" % pport,
                  "http://169.254.169.254/latest/meta-data/", "http://10.1.2.3/a.png", "http://192.168.0.1/a.png",
                  "http://172.16.0.1/a.png", "http://100.64.0.1/a.png", "http://0.0.0.0/a.png",
                  "http://[::ffff:127.0.0.1]/a.png", "http://[fd00::1]/a.png", "http://[fe80::1]/a.png",
                  "http://[64:ff9b::a9fe:a9fe]/a.png", "http://224.0.0.1/a.png", "http://2130706433/a.png"):
            st, got = url_img(u, port_strict)
            check(st == 400 and "refused" in got.get("message", ""), "SSRF: %s refused by default" % u, got)
        st, got = url_img(base + "/redirect/coffee.png", port_strict)
        check(st == 400 and "refused" in got["message"], "SSRF: refused without --allow-private-urls (redirect too)", got)
    finally:
        srv.stop()
    # A redirect from an allowed host to a private one is re-checked: run a server that
    # allows only "localhost" by name and redirect to 127.0.0.1 (a different host).
    srv = Server(model, "--allow-private-urls", "--allowed-hosts", "localhost", "--quiet")
    try:
        st, got = post(srv.port, "/clip/embed_image", {"image": {"type": "url", "value": "http://localhost:%d/coffee.png" % pport}})
        check(st == 200, "--allowed-hosts: a listed host is fetched", got)
        st, got = post(srv.port, "/clip/embed_image", {"image": {"type": "url", "value": base + "/coffee.png"}})
        check(st == 400 and "allowed hosts" in got["message"], "--allowed-hosts: other hosts refused", got)
    finally:
        srv.stop()
    plain.shutdown()
    # TLS: a local https server with a certificate from a CA made here.
    ca = make_test_ca(tmp)
    if not ca:
        skip("TLS URL input: the openssl CLI could not make a test CA")
        return
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    ctx.load_cert_chain(ca[1], ca[2])
    tls = start_image_server(ctx)
    tport = tls.server_address[1]
    srv = Server(model, "--allow-private-urls", "--ca-file", ca[0], "--quiet")
    try:
        st, got = post(srv.port, "/clip/embed_image", {"image": {"type": "url", "value": "https://127.0.0.1:%d/coffee.png" % tport}})
        if st == 400 and "need a build with TLS" in got.get("message", ""):
            skip("TLS URL input: this build has no TLS (%s)" % got["message"])
        else:
            check(st == 200 and without_time(got) == without_time(want), "URL image over https (test CA)", str(got)[:200])
            st, got = post(srv.port, "/clip/embed_image", {"image": {"type": "url", "value": "https://localhost:%d/coffee.png" % tport}})
            check(st == 200, "https by host name (certificate name checked)", str(got)[:200])
    finally:
        srv.stop()
    srv = Server(model, "--allow-private-urls", "--quiet")
    try:
        st, got = post(srv.port, "/clip/embed_image", {"image": {"type": "url", "value": "https://127.0.0.1:%d/coffee.png" % tport}})
        check(st == 400 and ("certificate" in got["message"] or "TLS" in got["message"]),
              "https with an unknown CA refused", got)
    finally:
        srv.stop()
    st, got = post(port_strict, "/clip/embed_image", {"image": {"type": "url", "value": "https://127.0.0.1:%d/coffee.png" % tport}})
    check(st == 400 and ("refused" in got["message"] or "TLS" in got["message"]), "https to loopback refused by default", got)
    tls.shutdown()


# ----------------------------------------------------------------------------------------
# Text cache, warm-up, parallel image preparation, GET /
# ----------------------------------------------------------------------------------------

def root_info(port):
    st, h, body = request(port, "GET", "/")
    return json.loads(body) if st == 200 else {}


def cache_stats(port):
    return root_info(port).get("text_cache", {})


def raw_embeddings(port, body):
    """The embeddings of an embed route's answer as the exact bytes the server wrote."""
    st, h, data = request(port, "POST", "/clip/embed_text", body)
    m = re.search(rb'"embeddings":(\[.*\])\}$', data)
    return st, m.group(1) if m else data


def root_fields(port, log):
    info = root_info(port)
    models = info.get("models") or []
    check(models and all(isinstance(m.get("name"), str) and isinstance(m.get("embed_dim"), int) and
                         isinstance(m.get("image_size"), int) and m.get("context_length") == 77
                         for m in models),
          "GET / lists each model's name, embed_dim, image_size, context_length", models)
    tc = info.get("text_cache", {})
    check(sorted(tc) == ["capacity", "entries", "hits", "misses"] and tc["capacity"] == 4096 and
          all(isinstance(v, int) and v >= 0 for v in tc.values()) and tc["entries"] <= tc["capacity"],
          "GET / reports the text cache (default capacity 4096)", tc)
    before = info.get("requests")
    time.sleep(0.05)
    request(port, "GET", "/healthz")
    after = root_info(port)
    check(isinstance(before, int) and after.get("requests", 0) >= before + 2 and
          isinstance(after.get("uptime_s"), float) and after["uptime_s"] > info.get("uptime_s", 1e9),
          "GET / counts requests served and the uptime", (before, after.get("requests"), after.get("uptime_s")))
    cpus = os.cpu_count() or 1
    check(info.get("decode_threads") == min(cpus, 8),
          "GET / reports %d threads preparing a request's images (the CPUs)" % min(cpus, 8),
          info.get("decode_threads"))
    # Warm-up: one forward per tower before "listening", not through the batcher.
    warm = re.search(r"model \S+ \(embed dim \d+, warmed up in (\d+) ms\)", log)
    check(warm is not None and log.find("warmed up") < log.find("listening on"),
          "start-up: each model warmed up before the server listens", log[:300])


def text_cache_checks(port, model):
    """The main server (default cache): hits, exact values, token-id keys, all routes."""
    s0 = cache_stats(port)
    probe = "cache probe: a photo of a lighthouse at dusk"
    st1, first = raw_embeddings(port, {"text": probe})
    s1 = cache_stats(port)
    st2, second = raw_embeddings(port, {"text": probe})
    s2 = cache_stats(port)
    check(st1 == st2 == 200 and s1["misses"] == s0["misses"] + 1 and s1["entries"] == s0["entries"] + 1 and
          s2["hits"] == s1["hits"] + 1 and s2["misses"] == s1["misses"] and s2["entries"] == s1["entries"],
          "text cache: a new text misses and is stored, the same text then hits", (s0, s1, s2))
    check(st2 == 200 and first == second, "text cache: a hit answers the bytes the miss answered",
          (first[:80], second[:80]))
    want = cli("embed-text", "-m", model, probe)["embeddings"]
    check(json.loads(second) == want, "text cache: a hit equals clip embed-text", second[:80])
    # Keyed by token ids: spellings the tokenizer cleans alike share the entry.
    variant = "  CACHE  probe:\ta Photo of a LIGHTHOUSE   at dusk \n"
    st, third = raw_embeddings(port, {"text": variant})
    s3 = cache_stats(port)
    check(st == 200 and third == first and s3["hits"] == s2["hits"] + 1 and s3["entries"] == s2["entries"],
          "text cache: keyed by token ids (case and spacing variants hit)", (s2, s3))
    # A list mixing cached and new texts: the hits are the cached rows, the misses one
    # forward of their own (the engine's last bits depend on a batch's make-up, so the
    # misses are compared with the CLI given exactly them).
    fresh = ["fresh text one for the list", "fresh text two for the list"]
    texts = [fresh[0], probe, fresh[1], probe]
    st, got = post(port, "/clip/embed_text", {"text": texts})
    s4 = cache_stats(port)
    want = cli("embed-text", "-m", model, *fresh)["embeddings"]
    cached = json.loads(first)[0]
    check(st == 200 and got["embeddings"] == [want[0], cached, want[1], cached] and
          s4["hits"] == s3["hits"] + 2 and s4["misses"] == s3["misses"] + 2,
          "text cache: a list mixing hits and misses: cached rows and one forward of the misses, in order",
          (s3, s4))
    # Compare's text prompts and subject come from the same cache.
    body = {"subject": probe, "subject_type": "text", "prompt": {"a": texts[0], "b": "never seen before"}}
    st, got = post(port, "/clip/compare", body)
    s5 = cache_stats(port)
    want = cli("compare", "-m", model, "--subject", probe, "--subject-type", "text",
               "--named-prompt", "a=" + texts[0], "--named-prompt", "b=never seen before")
    close = st == 200 and sorted(got["similarity"]) == ["a", "b"] and all(
        abs(got["similarity"][k] - want["similarity"][k]) < 1e-5 for k in ("a", "b"))
    check(close and s5["hits"] == s4["hits"] + 2 and s5["misses"] == s4["misses"] + 1,
          "text cache: /clip/compare uses it too (== CLI within 1e-5)", (s4, s5, got, want))
    # The same new text from 8 clients at once: one entry, 8 identical answers.
    racer = "eight clients ask for this text at the same moment"
    answers = [None] * 8
    def worker(k):
        try:
            answers[k] = raw_embeddings(port, {"text": racer})
        except Exception as e:
            answers[k] = (0, repr(e))
    threads = [threading.Thread(target=worker, args=(k,)) for k in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    s6 = cache_stats(port)
    check(all(a and a[0] == 200 and a[1] == answers[0][1] for a in answers) and
          s6["entries"] == s5["entries"] + 1 and s6["hits"] + s6["misses"] == s5["hits"] + s5["misses"] + 8,
          "text cache: 8 concurrent requests for one new text: one entry, identical answers", (s5, s6))


def text_cache_bounds(model):
    """--text-cache 3 with a second model: LRU eviction, the bound, keys per model."""
    srv = Server(model, "--model", "twin=" + model, "--text-cache", "3", "--quiet")
    port = srv.port
    try:
        seq = [("alpha", None), ("beta", None), ("gamma", None), ("alpha", None), ("delta", None),
               ("alpha", "twin"), ("alpha", None), ("beta", None), ("gamma", None), ("delta", "twin"),
               ("gamma", None)]
        lru, hits, misses = [], 0, 0   # the model: most recent last
        values, same = {}, True
        for text, ver in seq:
            key = (text, ver)
            if key in lru:
                hits += 1
                lru.remove(key)
            else:
                misses += 1
                if len(lru) == 3:
                    lru.pop(0)
            lru.append(key)
            body = {"text": text}
            if ver:
                body["clip_version_id"] = ver
            st, emb = raw_embeddings(port, body)
            same = same and st == 200 and values.setdefault(key, emb) == emb
        s = cache_stats(port)
        check(s == {"entries": 3, "capacity": 3, "hits": hits, "misses": misses},
              "--text-cache 3: least recently used evicted, per model (%d hits, %d misses)" % (hits, misses), s)
        check(same and values[("alpha", None)] == values[("alpha", "twin")],
              "--text-cache 3: every answer for a text the same, hit or miss", values.keys())
        st, got = post(port, "/clip/embed_text", {"text": ["one", "two", "three", "four", "five"]})
        s2 = cache_stats(port)
        check(st == 200 and s2["entries"] == 3 and s2["misses"] == s["misses"] + 5,
              "--text-cache 3: a 5-text request leaves 3 entries", s2)
    finally:
        srv.stop()
    srv = Server(model, "--quiet", env={"CLIP_TEXT_CACHE": "0"})
    port = srv.port
    try:
        answers = [raw_embeddings(port, {"text": "a photo of a cat"}) for _ in range(3)]
        s = cache_stats(port)
        want = cli("embed-text", "-m", model, "a photo of a cat")["embeddings"]
        check(s == {"entries": 0, "capacity": 0, "hits": 0, "misses": 0} and
              all(a[0] == 200 and json.loads(a[1]) == want for a in answers),
              "CLIP_TEXT_CACHE=0: no cache, answers still == CLI", s)
    finally:
        srv.stop()
    p = subprocess.run([CLIP, "serve", "-m", model, "--port", "0", "--text-cache", "-1"],
                       capture_output=True, timeout=30)
    check(p.returncode == 2 and b"--text-cache" in p.stderr, "--text-cache -1 refused", p.stderr[-200:])


def parallel_images(port, model):
    """Several images per request, prepared side by side, from several clients at once."""
    names = ["coffee.png", "astronaut.png", "rocket.jpg", "no_time_for_that_tiny.gif", "camera.png", "horse.png"]
    paths = [os.path.join(IMAGES, n) for n in names]
    rows = cli("embed-image", "-m", model, *paths)["embeddings"]
    want = dict(zip(names, rows))
    data = {n: b64(p) for n, p in zip(names, paths)}
    orders = [names, names[::-1], names[2:] + names[:2], [names[0]] * 3 + [names[3]] * 3]
    results = [None] * len(orders)
    def worker(k):
        try:
            st, got = post(port, "/clip/embed_image",
                           {"image": [{"type": "base64", "value": data[n]} for n in orders[k]]})
            results[k] = st == 200 and close_rows(got["embeddings"], [want[n] for n in orders[k]])
        except Exception as e:
            results[k] = repr(e)
    threads = [threading.Thread(target=worker, args=(k,)) for k in range(len(orders))]
    for t in threads:
        t.start()
    for t in threads:
        t.join(120)
    check(all(r is True for r in results), "4 clients x 6 images at once: every row right, in order", results)
    # Failures: the first bad image in input order is the one answered.
    bad_b64 = {"type": "base64", "value": "!!!!"}
    not_img = {"type": "base64", "value": base64.b64encode(b"this is not an image at all").decode()}
    good = {"type": "base64", "value": data["coffee.png"]}
    st, got = post(port, "/clip/embed_image", {"image": [good, not_img, good, bad_b64, good]})
    st2, got2 = post(port, "/clip/embed_image", {"image": [good, bad_b64, good, not_img, good]})
    check(st == 400 and st2 == 400 and "Malformed base64" not in got["message"] and
          got2["message"] == "Could not load input image. Cause: Malformed base64 input image.",
          "several bad images: the first in input order is answered", (got, got2))


def main():
    if not os.path.exists(CLIP):
        skip("server tests: %s not built" % CLIP)
        return 0
    tmp = tempfile.mkdtemp(prefix="clip-test-server-")
    try:
        model, name = find_model(tmp)
        if not model:
            skip("server tests: no model (../shared/reference/tiny-hf with clip-convert, or weights/default.clip)")
            return 0
        if not os.path.isdir(IMAGES):
            skip("server route tests with images: ../shared/reference/images absent")
        srv = Server(model, "--max-body-mb", "4")
        try:
            port = srv.port
            http_layer(port)
            keepalive_pipelining(port)
            if os.path.isdir(IMAGES):
                routes_vs_cli(port, model, name)
                error_paths(port)
                concurrency(port, model)
                parallel_images(port, model)
                url_inputs(port, model, tmp)
            root_fields(port, srv.text())
            text_cache_checks(port, model)
            log = srv.text()
            check(re.search(r'"POST /clip/embed_text" 200 \d+ [\d.]+ms', log) is not None,
                  "access log line per request (method, path, status, bytes, ms)", log[-300:])
            check(sanitizer_report(log) is None,
                  "no sanitizer report in the server's log", log[-2000:])
        finally:
            rc = srv.stop()
            check(rc == 0, "server exits 0 on SIGTERM", rc)
        text_cache_bounds(model)
        api_key_checks(model)
        cors_checks(model)
        hostile_clients(model)
        if os.path.isdir(IMAGES):
            sigterm_while_busy(model)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return exit_status()


if __name__ == "__main__":
    sys.exit(main())
