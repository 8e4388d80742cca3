#!/usr/bin/python3
"""export_onnx.py -- exports a checkpoint's vision and text towers to ONNX for the ONNX Runtime
peer in the benchmark (tools/bench_ort.mjs), with Debian's torch 1.13 (no `onnx` package needed).

  /usr/bin/python3 tools/export_onnx.py MODEL_DIR OUT_DIR [--opset 17]

Writes OUT_DIR/vision.onnx (input "pixel_values" float32 [batch, 3, size, size] -> "image_embeds"
[batch, embed]) and OUT_DIR/text.onnx (input "input_ids" int64 [batch, 77] -> "text_embeds"
[batch, embed]), batch a dynamic axis; both give the unnormalised encode_image/encode_text of
tools/clip_torch.py, the same graphs production CLIP servers run (all 77 text positions).

Also writes OUT_DIR/check.json: PyTorch's outputs for inputs tools/bench_ort.mjs rebuilds
(pixels sin(0.37 i) for element i, the ids of a short and of a 77-token prompt), so the runner
checks that ONNX Runtime computes the same features before it times anything. The ids are
stored too, so the runner needs no tokenizer.
"""
import json
import argparse
import os
import sys

import torch

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import clip_torch  # noqa: E402


class Vision(torch.nn.Module):
    def __init__(self, model):
        super().__init__()
        self.model = model

    def forward(self, pixel_values):
        return self.model.encode_image(pixel_values)


class Text(torch.nn.Module):
    def __init__(self, model):
        super().__init__()
        self.model = model

    def forward(self, input_ids):
        return self.model.encode_text(input_ids)


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("model_dir")
    ap.add_argument("out_dir")
    ap.add_argument("--opset", type=int, default=17)
    a = ap.parse_args()
    torch.set_num_threads(2)
    model, hp, tok = clip_torch.load_model(a.model_dir)
    os.makedirs(a.out_dir, exist_ok=True)
    n = hp["crop_size"]
    pix = torch.zeros(2, 3, n, n)
    ids = torch.tensor([tok.tokenize("a photo of a cat", hp["context_length"])] * 2, dtype=torch.long)
    with torch.no_grad():
        # torch warns that aten::index with negative indices exports wrongly: the indices here
        # are argmax positions and arange, never negative.
        torch.onnx.export(Vision(model), (pix,), os.path.join(a.out_dir, "vision.onnx"),
                          input_names=["pixel_values"], output_names=["image_embeds"],
                          dynamic_axes={"pixel_values": {0: "batch"}, "image_embeds": {0: "batch"}},
                          opset_version=a.opset, do_constant_folding=True)
        torch.onnx.export(Text(model), (ids,), os.path.join(a.out_dir, "text.onnx"),
                          input_names=["input_ids"], output_names=["text_embeds"],
                          dynamic_axes={"input_ids": {0: "batch"}, "text_embeds": {0: "batch"}},
                          opset_version=a.opset, do_constant_folding=True)
        probe = torch.sin(0.37 * torch.arange(3 * n * n, dtype=torch.float64)).float().view(1, 3, n, n)
        short = tok.tokenize("a photo of a cat", hp["context_length"])
        long = tok.tokenize("long " * 200, hp["context_length"])
        check = {
            "image_size": n, "context_length": hp["context_length"],
            "image_probe": "pixel i (C-order over [1, 3, size, size]) = float32(sin(0.37 * i))",
            "image_embed": model.encode_image(probe)[0].tolist(),
            "short_ids": short, "long_ids": long,
            "short_embed": model.encode_text(torch.tensor([short]))[0].tolist(),
            "long_embed": model.encode_text(torch.tensor([long]))[0].tolist(),
        }
    with open(os.path.join(a.out_dir, "check.json"), "w") as f:
        json.dump(check, f)
    for f in ("vision.onnx", "text.onnx"):
        print(f"{os.path.join(a.out_dir, f)}: {os.path.getsize(os.path.join(a.out_dir, f))} bytes")


if __name__ == "__main__":
    main()
