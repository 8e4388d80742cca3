#!/usr/bin/python3
"""reference.py -- reference CLIP features from our PyTorch implementation (tools/clip_torch.py).

Computes, for a checkpoint, what OpenAI's clip code gives: per image the unnormalised
encode_image output (or the error Pillow raised) and the first row of normalised channel 0 after
preprocessing; per text the 77 ids of clip.tokenize(text, truncate=True) and the unnormalised
encode_text output. The JSON has the structure of ../shared/reference/expected.json.

MODEL is a folder -- Hugging Face (config.json + model.safetensors or pytorch_model.bin),
OpenCLIP naming (open_clip_model.safetensors or open_clip_pytorch_model.bin with
open_clip_config.json), or one OpenAI TorchScript archive (*.pt beside
bpe_simple_vocab_16e6.txt.gz) -- or the .pt file itself. ViT or ModifiedResNet, as the tensors
say (clip_torch.py). Images are preprocessed as clip.py's _transform(n_px) at the model's own
input resolution (RN50x4 288 px, ...). Weights stored in fp16 (a .pt) are computed in fp32 from
their fp16-rounded values: the values a converter reads.

  /usr/bin/python3 tools/reference.py MODEL [--name NAME] [--images FILE...]
        [--text TEXT]... [--texts-from JSON] [--out FILE] [--compare EXPECTED.json]

--texts-from takes a JSON list of strings, or an expected.json-style file (its texts are reused).
--compare prints, per image and text, the cosine (and whether the ids are identical) against the
model NAME in EXPECTED.json, and exits non-zero if any image < 0.99999, text ids differ, or text
cosine < 0.99999.
"""
import argparse
import json
import os
import sys

import torch

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import clip_torch  # noqa: E402


def floats(t):
    return [float(x) for x in t.tolist()]


def run(model_dir, images, texts, name=None):
    model, hp, tok = clip_torch.load_model(model_dir)
    torch.set_grad_enabled(False)
    res = {"config": name or os.path.basename(os.path.normpath(model_dir)),
           "hidden_act": hp["act"], "hparams": hp, "images": {}, "texts": []}
    for path in images:
        key = os.path.basename(path)
        try:
            x = clip_torch.preprocess_file(path, hp)
        except Exception as e:  # the error Pillow raised is part of the reference
            # Pillow names the file in some messages: keep the output free of local paths.
            res["images"][key] = {"error": str(e).replace(path, key)}
            continue
        emb = model.encode_image(x.unsqueeze(0))[0]
        res["images"][key] = {"embedding": floats(emb),
                              "pixels_first_row_channel0": floats(x[0, 0])}
    for text in texts:
        ids = tok.tokenize(text, hp["context_length"])
        emb = model.encode_text(torch.tensor([ids], dtype=torch.long))[0]
        res["texts"].append({"text": text, "ids": ids, "embedding": floats(emb)})
    res["tokenizer_cleaning"] = "ref_tokenizer.fix_text"
    return res


def cosine(a, b):
    a, b = torch.tensor(a, dtype=torch.float64), torch.tensor(b, dtype=torch.float64)
    return float(a @ b / (a.norm() * b.norm()))


def compare(res, expected, name):
    exp = expected["models"][name]
    ok = True
    worst_img, worst_txt = 1.0, 1.0
    for key, e in exp["images"].items():
        r = res["images"].get(key)
        if r is None:
            print(f"image {key}: not computed")
            ok = False
            continue
        if "error" in e or "error" in r:
            same = e.get("error") == r.get("error")
            ok &= same
            print(f"image {key}: error expected {e.get('error')!r} got {r.get('error')!r}"
                  f" {'OK' if same else 'MISMATCH'}")
            continue
        c = cosine(r["embedding"], e["embedding"])
        worst_img = min(worst_img, c)
        line = f"image {key}: cosine {c:.9f}"
        if "pixels_first_row_channel0" in e:
            d = max(abs(x - y) for x, y in zip(r["pixels_first_row_channel0"],
                                                e["pixels_first_row_channel0"]))
            line += f" pixels max|diff| {d:.3g}"
            ok &= d == 0.0
        ok &= c >= 0.99999
        print(line)
    for r, e in zip(res["texts"], exp["texts"]):
        same = r["ids"] == e["ids"]
        c = cosine(r["embedding"], e["embedding"])
        worst_txt = min(worst_txt, c)
        ok &= same and c >= 0.99999
        print(f"text {e['text'][:40]!r}: ids {'identical' if same else 'DIFFER'} cosine {c:.9f}")
    print(f"{name}: worst image cosine {worst_img:.9f}, worst text cosine {worst_txt:.9f}, "
          f"{'all OK' if ok else 'MISMATCHES'}")
    return ok


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("model_dir", metavar="MODEL", help="checkpoint folder or .pt file")
    ap.add_argument("--name", help="model name in the output (default: the folder's or file's "
                    "name)")
    ap.add_argument("--images", nargs="*", default=[])
    ap.add_argument("--text", action="append", default=[])
    ap.add_argument("--texts-from")
    ap.add_argument("--out", help="write the JSON here (default: stdout unless --compare)")
    ap.add_argument("--compare", help="an expected.json to compare against")
    ap.add_argument("--threads", type=int, default=2)
    a = ap.parse_args()
    torch.set_num_threads(a.threads)
    name = a.name or os.path.basename(os.path.normpath(a.model_dir))
    if not a.name and os.path.isfile(a.model_dir):
        name = os.path.splitext(name)[0]
    texts = list(a.text)
    if a.texts_from:
        src = json.load(open(a.texts_from, encoding="utf-8"))
        if isinstance(src, dict):
            texts += [t["text"] for t in src["models"][name]["texts"]]
        else:
            texts += src
    res = run(a.model_dir, a.images, texts, name)
    doc = {"generated_by": "tools/reference.py (our PyTorch re-implementation of OpenAI's CLIP, "
                           "tools/clip_torch.py)",
           "preprocess": "Resize(size, BICUBIC) on the shorter side, CenterCrop(size), RGB, /255, "
                         "Normalize(mean, std), as in clip.py _transform",
           "models": {name: res}}
    if a.out:
        with open(a.out, "w", encoding="utf-8") as f:
            json.dump(doc, f, ensure_ascii=False, separators=(",", ":"))
            f.write("\n")
    elif not a.compare:
        json.dump(doc, sys.stdout, ensure_ascii=False)
        print()
    if a.compare:
        sys.exit(0 if compare(res, json.load(open(a.compare, encoding="utf-8")), name) else 1)


if __name__ == "__main__":
    main()
