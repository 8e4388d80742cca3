#!/usr/bin/python3
"""tests/test_zeroshot.py -- the default model's zero-shot accuracy, end to end through the server.

Part of `make test`; `make zeroshot` runs it alone.

Draws fresh pictures with tools/shapes.py from a seed the training never used, starts
`$CLIP serve -m weights/default.clip` on a free port, and asks POST /clip/compare which
prompt "a {colour} {shape}" fits each picture best, over the full colour x shape label set.
/clip/compare takes at most 8 prompts, so the labels go in chunks of 8 and the best
similarity over all chunks wins. Top-1 accuracy must reach 90%.

Also checks the README's sample picture: weights/examples/red_circle.png is exactly what
`tools/shapes.py --one red circle` draws, and the server ranks "a red circle" first for it.

Needs python3 with numpy (tools/shapes.py draws with it); prints SKIP without it. Imports only
the stdlib, tests/clipserver.py (the server process, the keep-alive client, the verdict lines)
and tools/shapes.py, never another test.
"""

import base64
import http.client
import importlib.util
import os
import sys
import threading
import time

sys.dont_write_bytecode = True   # importing the helper module leaves no __pycache__
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from clipserver import CLIP, ROOT, Client, Server, check, exit_status, skip  # noqa: E402

MODEL = os.path.join(ROOT, "weights", "default.clip")
SAMPLE = os.path.join(ROOT, "weights", "examples", "red_circle.png")
SAMPLE_PROMPTS = ["a red circle", "a blue square", "a green triangle", "a yellow star"]

# Training drew seeds 1 and 2 and measured itself on seed 7 (weights/default.md): this seed is new.
TEST_SEED = 20240611
TEST_COUNT = 200
REQUIRED_TOP1 = 0.90
MAX_PROMPTS = 8
# Requests in flight at once: the server stacks concurrent requests into one forward.
CLIENTS = 4


def compare(client, png, prompts):
    """The similarities /clip/compare gives the picture against the prompts."""
    body = {"subject": {"type": "base64", "value": base64.b64encode(png).decode()},
            "prompt": prompts}
    for attempt in (0, 1):
        try:
            status, answer, _ = client.post("/clip/compare", body)
            break
        except (http.client.HTTPException, OSError):
            # A keep-alive connection the server closed meanwhile: one fresh retry.
            if attempt:
                raise
    if status != 200:
        raise RuntimeError(f"/clip/compare answered {status}: {str(answer)[:200]}")
    sim = answer.get("similarity") if isinstance(answer, dict) else None
    if not isinstance(sim, list) or len(sim) != len(prompts):
        raise RuntimeError(f"/clip/compare gave {sim!r} for {len(prompts)} prompts")
    return sim


def main():
    if importlib.util.find_spec("numpy") is None:
        skip("zero-shot accuracy: python3-numpy is not installed (tools/shapes.py needs it)")
        return 0
    sys.path.insert(0, os.path.join(ROOT, "tools"))
    import shapes

    sample_ok = os.path.exists(SAMPLE)
    if sample_ok:
        with open(SAMPLE, "rb") as f:
            sample = f.read()
        check(sample == shapes.png_bytes(shapes.render_one("red", "circle")),
               "weights/examples/red_circle.png is what tools/shapes.py --one red circle draws",
               "the file differs from the generator's output")
    else:
        check(False, "weights/examples/red_circle.png exists", "missing")

    if not os.path.exists(MODEL):
        check(False, "weights/default.clip exists", "missing")
        return 1
    if not os.access(CLIP, os.X_OK):
        check(False, "the clip binary", f"{CLIP} is not executable (build it with make)")
        return 1

    # The CLIP_* settings of the caller's environment apply, as for a user's `clip serve`.
    try:
        server, err = Server(MODEL, clip=CLIP, inherit_clip_env=True), ""
    except (RuntimeError, OSError) as e:
        server, err = None, str(e)[-300:]
    if not check(server is not None, "clip serve -m weights/default.clip comes up", err):
        return exit_status()
    try:
        run(server, shapes, sample if sample_ok else None)
    except (RuntimeError, OSError, http.client.HTTPException, ValueError) as e:
        check(False, "zero-shot through /clip/compare", f"{type(e).__name__}: {e}")
    finally:
        server.stop()
    return exit_status()


def run(server, shapes, sample):
    if sample is not None:
        c = Client(server.url, timeout=60)
        sim = compare(c, sample, SAMPLE_PROMPTS)
        c.close()
        best = SAMPLE_PROMPTS[max(range(len(sim)), key=sim.__getitem__)]
        check(best == "a red circle",
               "the README sample: red_circle.png ranks 'a red circle' first "
               f"({', '.join(f'{p}: {s:.4f}' for p, s in zip(SAMPLE_PROMPTS, sim))})",
               f"the best prompt was {best!r}")

    labels = [shapes.prompt(c, s) for c, s in shapes.LABELS]
    chunks = [labels[i:i + MAX_PROMPTS] for i in range(0, len(labels), MAX_PROMPTS)]
    guesses = [None] * TEST_COUNT
    errors = []

    def client(k):
        c = Client(server.url, timeout=60)   # one keep-alive connection per client thread
        try:
            for i in range(k, TEST_COUNT, CLIENTS):
                img, meta = shapes.render(TEST_SEED, i)
                png = shapes.png_bytes(img)
                sims = []
                for chunk in chunks:
                    sims.extend(compare(c, png, chunk))
                guess = labels[max(range(len(sims)), key=sims.__getitem__)]
                guesses[i] = (shapes.prompt(meta["colour"], meta["shape"]), guess)
        except (RuntimeError, OSError, http.client.HTTPException, ValueError) as e:
            errors.append(f"{type(e).__name__}: {e}")
        finally:
            c.close()

    start = time.time()
    threads = [threading.Thread(target=client, args=(k,)) for k in range(CLIENTS)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    if errors:
        raise RuntimeError(errors[0])
    correct, confusions = 0, {}
    for truth, guess in guesses:
        if guess == truth:
            correct += 1
        else:
            key = f"{truth} -> {guess}"
            confusions[key] = confusions.get(key, 0) + 1
    acc = correct / TEST_COUNT
    worst = sorted(confusions.items(), key=lambda kv: -kv[1])[:6]
    detail = (f"top-1 {100 * acc:.1f}% ({correct}/{TEST_COUNT}) over {len(labels)} labels, "
              f"seed {TEST_SEED}, {time.time() - start:.1f} s")
    check(acc >= REQUIRED_TOP1,
           f"zero-shot through /clip/compare: {detail}",
           f"below {100 * REQUIRED_TOP1:.0f}%; most frequent mistakes: "
           + "; ".join(f"{k} ({n})" for k, n in worst))


if __name__ == "__main__":
    sys.exit(main())
