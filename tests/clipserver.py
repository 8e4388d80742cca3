"""clipserver.py -- what the Python tests and tools share to drive `clip serve` from outside.

The one place for:
  paths        the repository root, $CLIP and $CLIP_CONVERT, our fixture model and images
  verdicts     the PASS/FAIL/SKIP lines every test prints, and the failure count
  Server       `clip serve` on a free loopback port (port 0, the printed port read back),
               its log, RSS and threads, stopped with a signal and a timeout
  clients      one-shot requests, a keep-alive Client, raw bytes on a socket
  load         N clients sending requests back to back (make loadtest, make bench)
  images       PNG and BMP files made here; the fixture's images as base64
  origins      loopback image-URL servers, well-behaved or hostile
  checks       a sanitizer report in a log, an ASan build, embeddings equal up to batching

Used by tests/test_*.py and by tools/loadtest.py and tools/bench.py, which import it; it
imports none of them (nor anything but the stdlib), checks nothing by itself, prints only the
lines its callers ask for, and changes no process state when imported (no chdir: its paths are
absolute, and servers run in the repository root). Not named test_*.py: tests/run.sh runs
every tests/test_*.py as a test.
"""
import base64
import http.client
import json
import math
import os
import random
import re
import resource
import signal
import socket
import struct
import subprocess
import sys
import tempfile
import threading
import time
import urllib.parse
import zlib

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
# Relative settings are relative to the repository root, where tests/run.sh runs.
CLIP = os.path.join(ROOT, os.environ.get("CLIP", "clip"))
CLIP_CONVERT = os.path.join(ROOT, os.environ.get("CLIP_CONVERT", "clip-convert"))
FIXTURE = os.path.join(ROOT, "tests", "data", "ref", "st-quickgelu")
FIXTURE_IMAGES = os.path.join(ROOT, "tests", "data", "ref", "images")


# ----------------------------------------------------------------------------------------
# Verdicts: one line per check, counted
# ----------------------------------------------------------------------------------------

failures = 0


def check(ok, name, why=""):
    """Prints "PASS name" or "FAIL name: why" (counted); returns whether it passed."""
    global failures
    if ok:
        print("PASS " + name)
    else:
        failures += 1
        print("FAIL %s%s" % (name, ": %s" % (why,) if why != "" else ""))
    sys.stdout.flush()
    return bool(ok)


def skip(what):
    print("SKIP " + what)
    sys.stdout.flush()


def exit_status():
    """What a test's main returns: 1 when any check failed."""
    return 1 if failures else 0


def built():
    """True when $CLIP and $CLIP_CONVERT are there to run."""
    return os.access(CLIP, os.X_OK) and os.access(CLIP_CONVERT, os.X_OK)


# ----------------------------------------------------------------------------------------
# The server process
# ----------------------------------------------------------------------------------------

class Server:
    """`clip serve` on a free loopback port (--port 0; the port is read from its "listening
    on" line), run in the repository root with its stderr in a temporary file. --quiet unless
    quiet=False. No -m when model is None (the default model), no --host when host is None.
    No CLIP_* setting is inherited from the environment unless inherit_clip_env (`env` adds
    some back). Raises RuntimeError, with the log's tail, when it does not start."""

    def __init__(self, model, *args, clip=None, env=None, quiet=True, host="127.0.0.1",
                 inherit_clip_env=False, start_timeout=30):
        self.log = tempfile.NamedTemporaryFile(prefix="clip-serve-", suffix=".log", delete=False)
        e = {k: v for k, v in os.environ.items()
             if inherit_clip_env or not k.startswith("CLIP_")}
        e.update(env or {})
        cmd = ([clip or CLIP, "serve"] + (["-m", model] if model is not None else [])
               + (["--host", host] if host is not None else []) + ["--port", "0"]
               + (["--quiet"] if quiet else []) + list(args))
        self.proc = subprocess.Popen(cmd, cwd=ROOT, stdout=subprocess.DEVNULL, stderr=self.log,
                                     env=e)
        self.port = None
        deadline = time.time() + start_timeout
        while time.time() < deadline and self.proc.poll() is None:
            m = re.search(r"listening on http://[^:]+:(\d+)", self.text())
            if m:
                self.port = int(m.group(1))
                break
            time.sleep(0.05)
        if self.port is None:
            self.stop()
            raise RuntimeError("server did not start: " + self.text()[-2000:])

    @property
    def url(self):
        return "http://127.0.0.1:%d" % self.port

    def text(self):
        """Its log (stderr) so far."""
        with open(self.log.name, "r", errors="replace") as f:
            return f.read()

    def alive(self):
        return self.proc.poll() is None

    def _status_kb(self, field):
        """A field of /proc/PID/status in KB (VmRSS, VmHWM), or None."""
        try:
            with open("/proc/%d/status" % self.proc.pid) as f:
                for line in f:
                    if line.startswith(field + ":"):
                        return int(line.split()[1])
        except OSError:
            pass
        return None

    def rss_kb(self):
        """Resident memory now, or -1 when the process is gone."""
        kb = self._status_kb("VmRSS")
        return -1 if kb is None else kb

    def memory_mb(self):
        """(resident memory now, its peak) in MB, None where unknown."""
        return tuple(None if kb is None else kb / 1024.0
                     for kb in (self._status_kb("VmRSS"), self._status_kb("VmHWM")))

    def threads(self):
        try:
            return len(os.listdir("/proc/%d/task" % self.proc.pid))
        except OSError:
            return -1

    def stop(self, sig=signal.SIGTERM, timeout=30):
        """Signals the server, waits (kills it after `timeout`): (exit status, its log)."""
        if self.proc.poll() is None:
            self.proc.send_signal(sig)
            try:
                self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        text = self.text()
        try:
            os.unlink(self.log.name)
        except OSError:
            pass
        return self.proc.returncode, text


def convert_fixture(tmpdir):
    """tests/data/ref/st-quickgelu (always present) as a .clip file in tmpdir; its path."""
    out = os.path.join(tmpdir, "st-quickgelu.clip")
    r = subprocess.run([CLIP_CONVERT, FIXTURE, out], stdout=subprocess.DEVNULL,
                       stderr=subprocess.PIPE, timeout=120)
    if r.returncode != 0:
        raise RuntimeError("clip-convert failed: " + r.stderr.decode(errors="replace")[-500:])
    return out


# A sanitizer's report, or a crash, in a server's log. Leaks are reported at exit, so a log
# is complete only once its server has stopped.
SANITIZER_REPORT = re.compile(r"AddressSanitizer|LeakSanitizer|runtime error|Segmentation")


def sanitizer_report(log):
    """The match of SANITIZER_REPORT in `log`, or None."""
    return SANITIZER_REPORT.search(log)


def sanitized(binary):
    """True for an ASan build: its quarantine holds freed memory (up to 256 MB), so RSS says
    nothing about leaks there; LeakSanitizer checks them when the server exits."""
    try:
        with open(binary, "rb") as f:
            return b"__asan_init" in f.read()
    except OSError:
        return False


def raise_nofile(want):
    """Raises this process's open-file limit towards `want`; the limit now."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft < want:
        try:
            resource.setrlimit(resource.RLIMIT_NOFILE, (min(want, hard), hard))
        except (ValueError, OSError):
            pass
    return resource.getrlimit(resource.RLIMIT_NOFILE)[0]


# ----------------------------------------------------------------------------------------
# Clients
# ----------------------------------------------------------------------------------------

def request(port, method, path, body=None, headers=None, timeout=60):
    """One request on a fresh connection: (status, headers lowercased, body bytes). A dict or
    list body is sent as JSON."""
    c = http.client.HTTPConnection("127.0.0.1", port, timeout=timeout)
    try:
        if isinstance(body, (dict, list)):
            body = json.dumps(body).encode()
        h = {"Content-Type": "application/json"} if body is not None else {}
        h.update(headers or {})
        c.request(method, path, body=body, headers=h)
        r = c.getresponse()
        data = r.read()
        return r.status, {k.lower(): v for k, v in r.getheaders()}, data
    finally:
        c.close()


def post(port, path, body, **kw):
    """(status, parsed JSON or the raw bytes when not JSON)."""
    status, _, data = request(port, "POST", path, body, **kw)
    try:
        return status, json.loads(data)
    except ValueError:
        return status, data


class Client:
    """One keep-alive connection to `url` (http://host:port); reconnects after an error."""

    def __init__(self, url, timeout=120):
        u = urllib.parse.urlsplit(url)
        self.host, self.port, self.timeout = u.hostname, u.port or 80, timeout
        self.conn = None

    def post(self, path, body):
        """(status, parsed JSON or None, seconds). A dict or list body is sent as JSON. Raises
        OSError/HTTPException on a broken connection (after dropping it, so the next call
        reconnects)."""
        if isinstance(body, (dict, list)):
            body = json.dumps(body).encode()
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
    """An embed_image body of n copies of the image, base64 in JSON, as the official client
    sends it."""
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


def connect(port, timeout=10):
    s = socket.create_connection(("127.0.0.1", port), timeout=timeout)
    s.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    return s


def read_all(s, timeout=10):
    """Everything until the peer closes or `timeout` passes."""
    s.settimeout(timeout)
    out = b""
    deadline = time.time() + timeout
    while time.time() < deadline:
        try:
            d = s.recv(65536)
        except socket.timeout:
            break
        except ConnectionResetError:
            break
        if not d:
            break
        out += d
    return out


def raw(port, data, timeout=10, shut=True):
    """Sends raw bytes on a fresh connection, half-closes it (unless not shut), and reads
    until the server closes or `timeout` passes: the bytes received."""
    s = connect(port, timeout)
    try:
        s.sendall(data)
        if shut:
            try:
                s.shutdown(socket.SHUT_WR)
            except OSError:
                pass
        return read_all(s, timeout)
    finally:
        s.close()


def parse_responses(data):
    """Responses framed by Content-Length in `data`: [(status, headers, body)]."""
    out = []
    while data:
        end = data.find(b"\r\n\r\n")
        if end < 0:
            break
        head = data[:end].decode("latin-1").split("\r\n")
        m = re.match(r"HTTP/1\.[01] (\d{3})", head[0])
        if not m:
            break
        headers = {}
        for line in head[1:]:
            k, _, v = line.partition(":")
            headers[k.strip().lower()] = v.strip()
        n = int(headers.get("content-length", "0"))
        out.append((int(m.group(1)), headers, data[end + 4:end + 4 + n]))
        data = data[end + 4 + n:]
    return out


def http_post(path, body, extra=b""):
    """The bytes of a POST with a JSON body (a dict or list is encoded); `extra` header lines
    go before Content-Length."""
    if isinstance(body, (dict, list)):
        body = json.dumps(body).encode()
    return (b"POST " + path.encode() + b" HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
            + extra + b"Content-Length: " + str(len(body)).encode() + b"\r\n\r\n" + body)


# ----------------------------------------------------------------------------------------
# Load: clients sending requests back to back
# ----------------------------------------------------------------------------------------

def percentile(xs, p):
    """Nearest-rank percentile of a list (p in 0..100)."""
    if not xs:
        return None
    s = sorted(xs)
    k = max(0, min(len(s) - 1, math.ceil(p / 100.0 * len(s)) - 1))
    return s[k]


def run_load(url, clients, duration, max_requests, kinds, png,
             text="a photo of a cat"):
    """`clients` threads, one keep-alive connection each, sending one-image or one-text
    requests (`kinds`: "image", "text", alternated per client) back to back for `duration`
    seconds or `max_requests` in all (0: no cap). Returns the summary dict: rates, p50/p99
    latency per kind, errors, the client's own CPU time."""
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


# ----------------------------------------------------------------------------------------
# Images made here, and the fixture's
# ----------------------------------------------------------------------------------------

def png_file(width, height, rows, level=6):
    """An 8-bit RGB PNG of rows (each 3 * width bytes), filter type 0 (none) on every
    scanline."""
    def chunk(kind, data):
        body = kind + data
        return struct.pack(">I", len(data)) + body + struct.pack(">I", zlib.crc32(body) & 0xFFFFFFFF)

    ihdr = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    scanlines = b"".join(b"\0" + bytes(row) for row in rows)
    return (b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) +
            chunk(b"IDAT", zlib.compress(scanlines, level)) + chunk(b"IEND", b""))


def photo_png(size=224, seed=0):
    """A deterministic RGB PNG of size x size: smooth gradients and blobs, a few hard edges, and
    per-pixel grain, so it neither compresses to nothing (a flat image) nor is pure noise
    (about 150 KB at 224, as a photo would)."""
    rnd = random.Random(seed)
    blobs = [(rnd.uniform(0, size), rnd.uniform(0, size), rnd.uniform(size / 8, size / 2),
              [rnd.uniform(-90, 90) for _ in range(3)]) for _ in range(6)]
    rows = []
    for y in range(size):
        row = bytearray()
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
        rows.append(row)
    return png_file(size, size, rows)


def sample_image(path=None):
    """(bytes, description) of the tools' test image: `path`, or photo_png()."""
    if path:
        with open(path, "rb") as f:
            data = f.read()
        return data, f"{path} ({len(data)} bytes)"
    data = photo_png()
    return data, f"generated 224x224 RGB PNG, photo-like ({len(data)} bytes)"


def tiny_png_b64():
    """A 2x2 RGB PNG, base64: small enough to repeat in lists under any body limit."""
    rows = [bytes([i * 60, 100, 200 - i * 50] * 2) for i in range(2)]
    return base64.b64encode(png_file(2, 2, rows)).decode()


def noise_bmp_b64(width, height, seed):
    """A 24-bit BMP of noise, base64: an image that is big on the wire and in memory."""
    row = (3 * width + 3) & ~3
    pixels = bytes((i * 2654435761 + seed) >> 13 & 0xFF for i in range(row * height))
    head = (b"BM" + struct.pack("<IHHI", 54 + len(pixels), 0, 0, 54)
            + struct.pack("<IiiHHIIiiII", 40, width, height, 1, 24, 0, len(pixels), 2835, 2835,
                          0, 0))
    return base64.b64encode(head + pixels).decode()


def image_b64(name="rgb_90x70.bmp"):
    """One of tests/data/ref/images, base64."""
    with open(os.path.join(FIXTURE_IMAGES, name), "rb") as f:
        return base64.b64encode(f.read()).decode()


# ----------------------------------------------------------------------------------------
# Embeddings
# ----------------------------------------------------------------------------------------

def cosine(a, b):
    dot = sum(x * y for x, y in zip(a, b))
    na = math.sqrt(sum(x * x for x in a))
    nb = math.sqrt(sum(y * y for y in b))
    return dot / (na * nb) if na and nb else 0.0


def same_embedding(got, want):
    """Equal up to the rounding of batching: the server may stack a request with others in
    one forward, which regroups the sums (cosine >= 0.99999, as the engine's targets)."""
    if not isinstance(got, list) or not want or len(got) != len(want):
        return False
    return cosine(got, want) >= 0.99999


# ----------------------------------------------------------------------------------------
# Image-URL origins on loopback
# ----------------------------------------------------------------------------------------

class Origin:
    """A loopback HTTP server, one connection at a time, that records each request's path in
    `hits` and answers it with `answer(path)` (raw bytes); IPv4 or IPv6."""

    def __init__(self, answer, family=socket.AF_INET):
        self.answer = answer
        self.hits = []
        host = "127.0.0.1" if family == socket.AF_INET else "::1"
        self.sock = socket.socket(family, socket.SOCK_STREAM)
        self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self.sock.bind((host, 0))
        self.sock.listen(16)
        self.sock.settimeout(0.2)
        self.port = self.sock.getsockname()[1]
        self.stopping = threading.Event()
        self.thread = threading.Thread(target=self.loop, daemon=True)
        self.thread.start()

    def loop(self):
        while not self.stopping.is_set():
            try:
                c, _ = self.sock.accept()
            except socket.timeout:
                continue
            except OSError:
                return
            try:
                c.settimeout(2)
                head = b""
                while b"\r\n\r\n" not in head:
                    d = c.recv(4096)
                    if not d:
                        break
                    head += d
                path = head.split(b" ")[1].decode() if head.count(b" ") >= 2 else "?"
                self.hits.append(path)
                c.sendall(self.answer(path))
            except OSError:
                pass
            finally:
                c.close()

    def close(self):
        self.stopping.set()
        self.sock.close()


def png_answer(_path):
    """An Origin answer: tests/data/ref/images/tiny_3x2.png, whatever the path."""
    with open(os.path.join(FIXTURE_IMAGES, "tiny_3x2.png"), "rb") as f:
        data = f.read()
    return (b"HTTP/1.1 200 OK\r\nContent-Type: image/png\r\nContent-Length: %d\r\n"
            b"Connection: close\r\n\r\n" % len(data)) + data


class BadOrigin:
    """A loopback HTTP server, one thread per connection, behaving as `mode` says:
    silent (accepts, never answers), trickle (a head, then a byte every 0.3 s), endless
    (a 200 without length, then data as fast as it is read), redirect (302 to itself,
    forever). Counts requests; stops on close()."""

    def __init__(self, mode):
        self.mode = mode
        self.requests = 0
        self.stopping = threading.Event()
        self.sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self.sock.bind(("127.0.0.1", 0))
        self.sock.listen(64)
        self.sock.settimeout(0.2)
        self.port = self.sock.getsockname()[1]
        self.conns = []
        self.thread = threading.Thread(target=self.loop, daemon=True)
        self.thread.start()

    def url(self, path="/img.png"):
        return "http://127.0.0.1:%d%s" % (self.port, path)

    def loop(self):
        while not self.stopping.is_set():
            try:
                c, _ = self.sock.accept()
            except socket.timeout:
                continue
            except OSError:
                return
            self.conns.append(c)
            threading.Thread(target=self.serve, args=(c,), daemon=True).start()

    def serve(self, c):
        try:
            c.settimeout(0.5)
            head = b""
            while b"\r\n\r\n" not in head and not self.stopping.is_set():
                try:
                    d = c.recv(4096)
                except socket.timeout:
                    continue
                if not d:
                    return
                head += d
            self.requests += 1
            if self.mode == "silent":
                self.stopping.wait(30)
            elif self.mode == "trickle":
                c.sendall(b"HTTP/1.1 200 OK\r\nContent-Type: image/png\r\nContent-Length: 100000\r\n\r\n")
                while not self.stopping.wait(0.3):
                    c.sendall(b"\x89")
            elif self.mode == "endless":
                c.sendall(b"HTTP/1.1 200 OK\r\nContent-Type: image/png\r\nConnection: close\r\n\r\n")
                chunk = b"\x89PNG\r\n\x1a\n" + b"\0" * 65528
                c.settimeout(5)
                while not self.stopping.is_set():
                    c.sendall(chunk)
            elif self.mode == "redirect":
                n = self.requests
                c.sendall(("HTTP/1.1 302 Found\r\nLocation: %s\r\nContent-Length: 0\r\n"
                           "Connection: close\r\n\r\n" % self.url("/hop%d" % n)).encode())
        except OSError:
            pass
        finally:
            try:
                c.close()
            except OSError:
                pass

    def close(self):
        self.stopping.set()
        self.sock.close()
        for c in self.conns:
            try:
                c.close()
            except OSError:
                pass
