"""The README's quickstart, as a user runs it: `clip serve` with no model argument serves the
default model (weights/default.clip), and the README's compare example -- the red circle in
weights/examples against four prompts -- answers what the README shows, with "a red circle"
first. Keeps the README's first command and its example true."""

import base64
import http.client
import json
import os
import re
import subprocess
import sys
import tempfile
import time

CLIP = os.environ.get("CLIP", "./clip")
ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
failures = 0


def check(ok, name, why=""):
    global failures
    if not ok:
        failures += 1
    print(("PASS " if ok else "FAIL ") + name + ("" if ok or not why else ": " + why))
    sys.stdout.flush()
    return ok


def readme_example():
    """The prompts and the answer the README shows for its compare example."""
    with open(os.path.join(ROOT, "README.md")) as f:
        text = f.read()
    prompts = json.loads(re.search(r'"prompt": (\[[^\]]*\])', text).group(1))
    answer = json.loads(re.search(r"prints the whole answer[^\n]*\s*```json\s*(\{.*?\})\s*```", text, re.S).group(1))
    return prompts, answer["similarity"]


def start_default_server(log):
    env = {k: v for k, v in os.environ.items() if not k.startswith("CLIP_")}
    proc = subprocess.Popen([CLIP, "serve", "--port", "0", "--quiet"], cwd=ROOT,
                            stdout=subprocess.DEVNULL, stderr=log, env=env)
    deadline = time.time() + 30
    while time.time() < deadline and proc.poll() is None:
        with open(log.name, errors="replace") as f:
            m = re.search(r"listening on http://[^:]+:(\d+)", f.read())
        if m:
            return proc, int(m.group(1))
        time.sleep(0.05)
    return proc, None


def main():
    global CLIP
    CLIP = os.path.abspath(CLIP)
    prompts, shown = readme_example()
    with open(os.path.join(ROOT, "weights", "examples", "red_circle.png"), "rb") as f:
        image = base64.b64encode(f.read()).decode()
    with tempfile.NamedTemporaryFile(prefix="clip-quickstart-", suffix=".log") as log:
        proc, port = start_default_server(log)
        try:
            with open(log.name, errors="replace") as f:
                started = f.read()
            if not check(port is not None, "clip serve without -m starts on the default model",
                         started[-500:]):
                return 1
            check("default.clip" in started or "shapes" in started,
                  "the server says which model it loaded", started[-300:])
            c = http.client.HTTPConnection("127.0.0.1", port, timeout=60)
            c.request("GET", "/")
            info = json.loads(c.getresponse().read())
            check(len(info.get("models", [])) == 1, "GET / lists the one default model",
                  json.dumps(info)[:300])
            body = json.dumps({"subject": {"type": "base64", "value": image}, "prompt": prompts})
            c.request("POST", "/clip/compare", body=body,
                      headers={"Content-Type": "application/json"})
            r = c.getresponse()
            answer = json.loads(r.read())
            got = answer.get("similarity")
            check(r.status == 200 and isinstance(got, list) and len(got) == len(prompts),
                  "the README's compare example answers 200 with one similarity per prompt",
                  json.dumps(answer)[:300])
            if isinstance(got, list) and len(got) == len(shown):
                check(max(abs(a - b) for a, b in zip(got, shown)) < 1e-5,
                      "the answer is the one the README shows", "got %r, README %r" % (got, shown))
                check(got.index(max(got)) == prompts.index("a red circle"),
                      "'a red circle' ranks first for the red circle")
        finally:
            proc.terminate()
            proc.wait(30)
        check(proc.returncode == 0, "the server stops cleanly on SIGTERM")
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
