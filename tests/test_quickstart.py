"""The README's quickstart, as a user runs it: `clip serve` with no model argument serves the
default model (weights/default.clip), and the README's compare example -- the red circle in
weights/examples against four prompts -- answers what the README shows, with "a red circle"
first. Keeps the README's first command and its example true.

Imports only the stdlib and tests/clipserver.py (the server process, the verdict lines), never
another test."""

import base64
import http.client
import json
import os
import re
import sys

sys.dont_write_bytecode = True   # importing the helper module leaves no __pycache__
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from clipserver import ROOT, Server, check, exit_status  # noqa: E402


def readme_example():
    """The prompts and the answer the README shows for its compare example."""
    with open(os.path.join(ROOT, "README.md")) as f:
        text = f.read()
    prompts = json.loads(re.search(r'"prompt": (\[[^\]]*\])', text).group(1))
    answer = json.loads(re.search(r"prints the whole answer[^\n]*\s*```json\s*(\{.*?\})\s*```", text, re.S).group(1))
    return prompts, answer["similarity"]


def main():
    prompts, shown = readme_example()
    with open(os.path.join(ROOT, "weights", "examples", "red_circle.png"), "rb") as f:
        image = base64.b64encode(f.read()).decode()
    # As the README runs it: no -m, no --host.
    try:
        srv, why = Server(None, host=None), ""
    except (RuntimeError, OSError) as e:
        srv, why = None, str(e)[-500:]
    if not check(srv is not None, "clip serve without -m starts on the default model", why):
        return 1
    try:
        started = srv.text()
        check("default.clip" in started or "shapes" in started,
              "the server says which model it loaded", started[-300:])
        c = http.client.HTTPConnection("127.0.0.1", srv.port, timeout=60)
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
        rc, _ = srv.stop()
    check(rc == 0, "the server stops cleanly on SIGTERM")
    return exit_status()


if __name__ == "__main__":
    sys.exit(main())
