#!/usr/bin/python3
"""test_security.py -- the API key and the SSRF defaults of `clip serve` (issue 7), loopback only.

  API key: with --api-key every /clip/* route refuses (401, JSON message) a request with no
  key, a wrong one, a prefix or an extension of it, another case; accepts it from the query
  (percent-encoded too), an Authorization: Bearer header, or the body; /healthz needs none.

  SSRF, defaults (no --allow-private-urls): image URLs to loopback, RFC 1918, carrier-grade
  NAT, link-local (169.254.169.254 included), unspecified, unique-local, link-local IPv6,
  IPv4-mapped/compatible/NAT64/6to4 IPv6 forms and the odd IPv4 spellings (decimal, hex,
  octal, short), and names resolving to loopback (localhost) are all refused with 400 and a
  reason, and the local origin they point at never sees a request.

  Redirects: every hop is checked again (a redirect from an allowed host to another host is
  refused under --allowed-hosts), a redirect to file://, ftp://, gopher:// or a URL with
  credentials is refused. A redirect from a *public* origin to a private address cannot be
  staged on loopback alone: SKIP (every hop goes through the same resolved-address check).

  Files: no request reads a local file: image type "file" (any case), file:// URLs, paths
  given as base64 values or as clip_version_id are refused and nothing of the file comes back.

Imports only the stdlib and tests/clipserver.py (the server, the clients, the origins, the
model), never another test; PASS/FAIL/SKIP lines; bounded (a few seconds).
"""
import json
import os
import socket
import sys
import tempfile
import time
import urllib.parse

sys.dont_write_bytecode = True   # importing the helper module leaves no __pycache__
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from clipserver import (CLIP, CLIP_CONVERT, FIXTURE_IMAGES, Origin, Server, built,  # noqa: E402
                        check, convert_fixture, exit_status, image_b64, png_answer, post,
                        request, skip)

KEY = "s3cr3t-K3y/+=%"
ABSENT = object()   # no api_key field in the body


def redirect_answer(location):
    return lambda _path: ("HTTP/1.1 302 Found\r\nLocation: %s\r\nContent-Length: 0\r\n"
                          "Connection: close\r\n\r\n" % location).encode()


def embed_url(port, url, key=KEY):
    return post(port, "/clip/embed_image?api_key=" + urllib.parse.quote(key, safe=""),
                {"image": {"type": "url", "value": url}}, timeout=30)


def message(ans):
    return ans.get("message", "") if isinstance(ans, dict) else repr(ans)[:200]


# ----------------------------------------------------------------------------------------
# API key
# ----------------------------------------------------------------------------------------

def route_bodies():
    img = {"type": "base64", "value": image_b64("tiny_3x2.png")}
    return {"/clip/embed_image": {"image": img},
            "/clip/embed_text": {"text": "a cat"},
            "/clip/compare": {"subject": img, "prompt": ["a cat", "a dog"]}}


def test_api_key(port):
    q = urllib.parse.quote(KEY, safe="")
    wrong = [("none", "", {}, ABSENT), ("wrong query key", "?api_key=nope", {}, ABSENT),
             ("key prefix", "?api_key=" + urllib.parse.quote(KEY[:-1], safe=""), {}, ABSENT),
             ("key plus a byte", "?api_key=" + q + "x", {}, ABSENT),
             ("other case", "?api_key=" + urllib.parse.quote(KEY.upper(), safe=""), {}, ABSENT),
             ("empty query key", "?api_key=", {}, ABSENT),
             ("wrong bearer", "", {"Authorization": "Bearer nope"}, ABSENT),
             ("key without Bearer", "", {"Authorization": KEY}, ABSENT),
             ("Basic scheme", "", {"Authorization": "Basic " + KEY}, ABSENT),
             ("wrong body key", "", {}, "nope"),
             ("null body key", "", {}, None)]
    for route, body in route_bodies().items():
        bad = []
        for what, query, headers, body_key in wrong:
            b = dict(body)
            if body_key is not ABSENT:
                b["api_key"] = body_key
            st, ans = post(port, route + query, b, headers=headers)
            if st != 401 or not message(ans):
                bad.append("%s: %s %s" % (what, st, message(ans)[:80]))
        check(not bad, "%s: refused (401 with a message) without the right key" % route,
              "; ".join(bad))
        st, _, _ = request(port, "GET", route)
        check(st in (401, 405), "%s: GET without a key answers 401/405" % route, str(st))
        good = []
        for what, query, headers, body_key in (("query", "?api_key=" + q, {}, ABSENT),
                                               ("bearer", "", {"Authorization": "Bearer " + KEY}, ABSENT),
                                               ("body", "", {}, KEY)):
            b = dict(body)
            if body_key is not ABSENT:
                b["api_key"] = body_key
            st, ans = post(port, route + query, b, headers=headers)
            if st != 200:
                good.append("%s: %s %s" % (what, st, message(ans)[:80]))
        check(not good, "%s: accepted with the key in the query, a Bearer header, the body"
              % route, "; ".join(good))
    st, _, data = request(port, "GET", "/healthz")
    check(st == 200, "/healthz needs no key", "%s %r" % (st, data[:100]))


# ----------------------------------------------------------------------------------------
# SSRF
# ----------------------------------------------------------------------------------------

def test_ssrf_defaults(port):
    origin = Origin(png_answer)
    try:
        origin6 = Origin(png_answer, socket.AF_INET6)
    except OSError:
        origin6 = None
    p = origin.port
    cases = [
        ("http://127.0.0.1:%d/a.png" % p, "loopback"),
        ("HTTP://127.0.0.1:%d/a.png" % p, "loopback"),
        ("http://127.1:%d/a.png" % p, "loopback"),
        ("http://2130706433:%d/a.png" % p, "loopback"),
        ("http://0x7f000001:%d/a.png" % p, "loopback"),
        ("http://0177.0.0.1:%d/a.png" % p, "loopback"),
        ("http://127.255.255.254:%d/a.png" % p, "loopback"),
        ("http://0.0.0.0:%d/a.png" % p, "unspecified"),
        ("http://localhost:%d/a.png" % p, "loopback"),
        ("http://LocalHost:%d/a.png" % p, "loopback"),
        ("http://10.0.0.1/a.png", "private"),
        ("http://10.255.255.255/a.png", "private"),
        ("http://172.16.0.1/a.png", "private"),
        ("http://172.31.255.1/a.png", "private"),
        ("http://192.168.0.1/a.png", "private"),
        ("http://100.64.0.1/a.png", "carrier-grade NAT"),
        ("http://169.254.169.254/latest/meta-data/", "link-local"),
        ("http://169.254.0.1/a.png", "link-local"),
        ("http://[::1]:%d/a.png" % (origin6.port if origin6 else p), "loopback"),
        ("http://[::]:%d/a.png" % p, "unspecified"),
        ("http://[::ffff:127.0.0.1]:%d/a.png" % p, "loopback"),
        ("http://[::ffff:7f00:1]:%d/a.png" % p, "loopback"),
        ("http://[::ffff:169.254.169.254]/a.png", "link-local"),
        ("http://[::ffff:10.0.0.1]/a.png", "private"),
        ("http://[::127.0.0.1]:%d/a.png" % p, "IPv4-compatible"),
        ("http://[64:ff9b::a9fe:a9fe]/a.png", "link-local"),
        ("http://[2002:7f00:1::1]/a.png", "loopback"),
        ("http://[2002:a9fe:a9fe::1]/a.png", "link-local"),
        ("http://[fc00::1]/a.png", "unique-local"),
        ("http://[fd00::2]/a.png", "unique-local"),
        ("http://[fe80::1]/a.png", "link-local"),
        ("http://[fe80::1%25lo]/a.png", None),
    ]
    for url, reason in cases:
        t0 = time.time()
        st, ans = embed_url(port, url)
        msg = message(ans)
        ok = st == 400 and "Could not load input image" in msg and time.time() - t0 < 5
        if reason:
            ok = ok and reason in msg
        check(ok, "SSRF default: %s refused (%s)" % (url, reason or "malformed"),
              "%s %r" % (st, msg[:200]))
    hits = origin.hits + (origin6.hits if origin6 else [])
    check(not hits, "SSRF default: the loopback origins saw no request", repr(hits[:5]))
    origin.close()
    if origin6:
        origin6.close()


def test_redirects(model):
    """Policies that apply on every hop, with private addresses allowed so that the test's
    loopback origins are reachable at all."""
    target = Origin(png_answer)
    hops = {
        "to another host (allow-list)": "http://localhost:%d/a.png" % target.port,
        "to file:///etc/passwd": "file:///etc/passwd",
        "to ftp://": "ftp://127.0.0.1:%d/a.png" % target.port,
        "to gopher://": "gopher://127.0.0.1:%d/_GET" % target.port,
        "to a URL with credentials": "http://user:pw@127.0.0.1:%d/a.png" % target.port,
    }
    srv = Server(model, "--threads", "1", "--allow-private-urls",
                 "--allowed-hosts", "127.0.0.1", "--url-timeout", "3")
    try:
        st, ans = post(srv.port, "/clip/embed_image",
                       {"image": {"type": "url", "value": "http://127.0.0.1:%d/a.png" % target.port}})
        check(st == 200, "allowed host fetched (the control case)", "%s %s" % (st, message(ans)))
        before = len(target.hits)
        for what, location in hops.items():
            o = Origin(redirect_answer(location))
            st, ans = post(srv.port, "/clip/embed_image",
                           {"image": {"type": "url", "value": "http://127.0.0.1:%d/r" % o.port}})
            msg = message(ans)
            check(st == 400 and "Could not load input image" in msg and "root:" not in msg,
                  "redirect %s: refused" % what, "%s %r" % (st, msg[:200]))
            o.close()
        check(len(target.hits) == before, "refused redirects never reached their target",
              repr(target.hits[before:]))
        st, ans = post(srv.port, "/clip/embed_image",
                       {"image": {"type": "url", "value": "http://localhost:%d/a.png" % target.port}})
        check(st == 400 and "allowed hosts" in message(ans),
              "a host outside --allowed-hosts: refused", "%s %r" % (st, message(ans)))
    finally:
        srv.stop()
        target.close()
    skip("redirect from a public origin to a private address: needs a public origin, and "
         "these tests stay on loopback (every hop is resolved and checked like the first)")


# ----------------------------------------------------------------------------------------
# Local files
# ----------------------------------------------------------------------------------------

def test_no_files(port):
    secret = os.path.join(FIXTURE_IMAGES, "tiny_3x2.png")
    attempts = [
        ("image type file", {"image": {"type": "file", "value": "/etc/passwd"}}),
        ("image type FILE", {"image": {"type": "FILE", "value": secret}}),
        ("image type numpy", {"image": {"type": "numpy", "value": "/etc/passwd"}}),
        ("image type pil", {"image": {"type": "pil", "value": "/etc/passwd"}}),
        ("image type multipart", {"image": {"type": "multipart", "value": "/etc/passwd"}}),
        ("a file:// URL", {"image": {"type": "url", "value": "file:///etc/passwd"}}),
        ("a FILE:// URL", {"image": {"type": "url", "value": "FILE://" + secret}}),
        ("a path as the URL", {"image": {"type": "url", "value": secret}}),
        ("a path as base64", {"image": {"type": "base64", "value": secret}}),
        ("a bare path as the image", {"image": secret}),
    ]
    for what, body in attempts:
        st, ans = post(port, "/clip/embed_image?api_key=" + urllib.parse.quote(KEY, safe=""), body)
        text = json.dumps(ans) if isinstance(ans, dict) else repr(ans)
        check(st in (400, 422) and "root:" not in text,
              "no local file through %s: %s" % (what, st), text[:200])
    for version in ("../../../etc/passwd", secret, "/etc/passwd"):
        st, ans = post(port, "/clip/embed_text?api_key=" + urllib.parse.quote(KEY, safe=""),
                       {"text": "a", "clip_version_id": version})
        text = json.dumps(ans) if isinstance(ans, dict) else repr(ans)
        check(st == 404 and "root:" not in text,
              "clip_version_id %r is a name, never a path: 404" % version, "%s %s" % (st, text[:200]))


def test_unprivileged(model):
    """Started as root with --user, the server gives root up before serving anything."""
    if os.geteuid() != 0:
        skip("--user: this test runs as uid %d, not root" % os.geteuid())
        return
    import pwd
    nobody = pwd.getpwnam("nobody").pw_uid
    # LeakSanitizer stops the world with ptrace, which a process that changed its uid no
    # longer allows: leaks are checked by every other server in the suite.
    saved = os.environ.get("ASAN_OPTIONS")
    os.environ["ASAN_OPTIONS"] = (saved + ":" if saved else "") + "detect_leaks=0"
    try:
        srv = Server(model, "--threads", "1", "--user", "nobody")
    finally:
        if saved is None:
            del os.environ["ASAN_OPTIONS"]
        else:
            os.environ["ASAN_OPTIONS"] = saved
    try:
        with open("/proc/%d/status" % srv.proc.pid) as f:
            uids = [line.split()[1:] for line in f if line.startswith(("Uid:", "Gid:"))]
        check(uids and all(int(u) == nobody for u in uids[0]),
              "--user nobody: every uid of the server is nobody's", repr(uids))
        st, _, body = request(srv.port, "POST", "/clip/embed_text", {"text": "a cat"})
        check(st == 200 and b"embeddings" in body, "--user nobody: the server still answers",
              "%s %s" % (st, body[:200]))
    finally:
        rc, text = srv.stop()
    check(rc == 0, "--user nobody: stops cleanly on SIGTERM", text[-500:])


def main():
    if not built():
        skip("test_security.py: %s or %s not built" % (CLIP, CLIP_CONVERT))
        return 0
    t0 = time.time()
    with tempfile.TemporaryDirectory(prefix="clip-security-") as tmpdir:
        model = convert_fixture(tmpdir)
        srv = Server(model, "--threads", "1", "--api-key", KEY, "--url-timeout", "3")
        try:
            test_api_key(srv.port)
            test_ssrf_defaults(srv.port)
            test_no_files(srv.port)
            check(srv.alive(), "server alive after the security checks")
        finally:
            srv.stop()
        test_redirects(model)
        test_unprivileged(model)
    print("   (test_security.py: %.1f s)" % (time.time() - t0))
    return exit_status()


if __name__ == "__main__":
    sys.exit(main())
