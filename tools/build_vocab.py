#!/usr/bin/python3
"""tools/build_vocab.py -- our own byte-level BPE vocabulary, in OpenAI CLIP's layout.

Learns merges from every caption tools/shapes.py can write and saves them the way Hugging
Face ships OpenAI's vocabulary, so the C tokenizer and the converter serve it unchanged:

  vocab.json   ids 0-255: the 256 byte stand-ins (bytes_to_unicode, in OpenAI's order);
               256-511: the same with "</w>"; then one token per merge in rank order;
               then "<|startoftext|>", "<|endoftext|>".
  merges.txt   "#version: 0.2", then one "left right" line per merge, rank 0 first.

Words are found as OpenAI's tokenizer finds them (lowercased text, CLIP's regex), each one
a sequence of byte stand-ins with "</w>" on its last symbol. A merge joins the most frequent
adjacent pair (ties broken by the pair's text, so the result is the same on every run).

    tools/build_vocab.py --out DIR [--merges N]

Encoding with the result is tools/ref_tokenizer.py's job: its
`Tokenizer.from_dir(dir).tokenize(text)` gives OpenAI's clip.tokenize ids for our vocabulary
(the training script tokenizes with it).
Learning the merges here cleans with html.unescape and whitespace folding only: ftfy's fixes
cannot change captions made of ASCII words.
"""

import argparse
import collections
import html
import json
import os
import sys


sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import shapes  # noqa: E402

import ref_tokenizer  # noqa: E402  (OpenAI's tokenizer, which encodes with our files too)
from ref_tokenizer import PAT as WORD_RE, BYTE_ENC as BYTE_STAND_IN  # noqa: E402  (OpenAI's)

CONTEXT_LENGTH = 77
SOT, EOT = "<|startoftext|>", "<|endoftext|>"


def clean(text):
    text = html.unescape(html.unescape(text))
    return " ".join(text.split()).lower()


def words_of(text):
    """Each word of a text as byte stand-ins, "</w>" on the last one."""
    out = []
    for w in WORD_RE.findall(clean(text)):
        sym = [BYTE_STAND_IN[b] for b in w.encode("utf-8")]
        sym[-1] += "</w>"
        out.append(tuple(sym))
    return out


# ----------------------------------------------------------------------------------------
# Learning the merges
# ----------------------------------------------------------------------------------------

def caption_corpus():
    """Every caption the templates can produce, once each."""
    values = {"colour": shapes.COLOURS_LIST, "shape": shapes.SHAPES, "size": shapes.SIZE_LIST,
              "background": ["light", "dark", "noisy"] + shapes.BACKGROUND_COLOURS}
    texts = []
    for template, _, _ in shapes.TEMPLATES:
        fields = [f for f in values if "{" + f + "}" in template]
        combos = [{}]
        for f in fields:
            combos = [dict(c, **{f: v}) for c in combos for v in values[f]]
        texts.extend(template.format(**c) for c in combos)
    return texts


def learn_merges(texts, max_merges):
    counts = collections.Counter()
    for t in texts:
        counts.update(words_of(t))
    words = dict(counts)
    known = set(BYTE_STAND_IN.values()) | {s + "</w>" for s in BYTE_STAND_IN.values()}
    merges = []
    banned = set()
    while len(merges) < max_merges:
        pairs = collections.Counter()
        for w, c in words.items():
            for a, b in zip(w, w[1:]):
                if (a, b) not in banned:
                    pairs[(a, b)] += c
        if not pairs:
            break
        best = min(pairs, key=lambda p: (-pairs[p], p))
        if best[0] + best[1] in known:
            # Two paths to one string would give one token two ids: never merge this pair.
            banned.add(best)
            continue
        merges.append(best)
        known.add(best[0] + best[1])
        new = {}
        for w, c in words.items():
            out, i = [], 0
            while i < len(w):
                if i + 1 < len(w) and (w[i], w[i + 1]) == best:
                    out.append(w[i] + w[i + 1])
                    i += 2
                else:
                    out.append(w[i])
                    i += 1
            new[tuple(out)] = new.get(tuple(out), 0) + c
        words = new
    return merges


def vocabulary(merges):
    base = list(BYTE_STAND_IN.values())
    tokens = base + [s + "</w>" for s in base] + [a + b for a, b in merges] + [SOT, EOT]
    return {t: i for i, t in enumerate(tokens)}


def save(out_dir, merges):
    os.makedirs(out_dir, exist_ok=True)
    vocab = vocabulary(merges)
    with open(os.path.join(out_dir, "vocab.json"), "w", encoding="utf-8") as f:
        json.dump(vocab, f, ensure_ascii=False)
    with open(os.path.join(out_dir, "merges.txt"), "w", encoding="utf-8") as f:
        f.write("#version: 0.2\n")
        for a, b in merges:
            f.write(f"{a} {b}\n")
    return vocab


def main(argv):
    ap = argparse.ArgumentParser(description="Learn our BPE vocabulary from the captions.")
    ap.add_argument("--out", required=True, help="directory for vocab.json and merges.txt")
    ap.add_argument("--merges", type=int, default=1000, help="at most this many merges")
    args = ap.parse_args(argv)
    merges = learn_merges(caption_corpus(), args.merges)
    vocab = save(args.out, merges)
    tok = ref_tokenizer.Tokenizer.from_dir(args.out)
    for text in ("a red circle", "a photo of a small purple hexagon on a noisy background"):
        print(f"{text!r} -> {[i for i in tok.tokenize(text) if i]}")
    print(f"{len(merges)} merges, {len(vocab)} tokens -> {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
