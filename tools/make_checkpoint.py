#!/usr/bin/python3
"""make_checkpoint.py -- deterministic random-weight CLIP checkpoints, any size, on disk as users
download them.

  /usr/bin/python3 tools/make_checkpoint.py --preset vit-b-32 --out /tmp/vitb32
        [--format safetensors|bin|openai] [--act quick_gelu|gelu] [--seed N]
        [--dtype f32|f16] [--vocab-from DIR] [--merges N] [--set key=value]...

Presets (widths/layers/heads/patch/image size as the real models; weights random):
  tiny          like ../shared/reference/tiny-hf: ViT 128 wide, 2 layers, 2 heads, patch 32, 224;
                text 64/2/4; embed 48
  fixture       the committed test fixture size: ViT 16/2/2, patch 32, 224; text 32/2/2; embed 16
  vit-b-32      ViT-B/32: vision 768/12/12, patch 32, 224; text 512/12/8; embed 512
  vit-b-16      ViT-B/16: as B/32 with patch 16
  vit-l-14      ViT-L/14: vision 1024/24/16, patch 14, 224; text 768/12/12; embed 768
  vit-l-14-336  ViT-L/14 at 336 px
--set overrides any hyperparameter (e.g. --set vision_layers=3 --set image_size=64).

Formats:
  safetensors  Hugging Face layout: config.json, preprocessor_config.json, tokenizer_config.json,
               vocab.json + merges.txt, model.safetensors (written here; int64 position_ids
               buffers included, as older HF checkpoints have them)
  bin          the same with pytorch_model.bin (torch.save of the state dict, a zip checkpoint)
  openai       OpenAI/OpenCLIP tensor naming in open_clip_model.safetensors, with
               open_clip_config.json and bpe_simple_vocab_16e6.txt.gz (OpenAI's merges file:
               a version line, then one merge per line)

Weights follow OpenAI's initialize_parameters scales (attention std width^-0.5, residual
projections std width^-0.5 (2 layers)^-0.5, MLP in (2 width)^-0.5, embeddings 0.02/0.01,
projections width^-0.5, patch embedding fan_in^-0.5) so activations stay like a real model's.
Biases and LayerNorm parameters are random too (LN weight 1 +- 0.1, biases ~0.02-0.05), so a
bias or LayerNorm the engine forgot shows in the output.

Vocabulary: --vocab-from DIR copies vocab.json + merges.txt (or bpe_simple_vocab_16e6.txt.gz)
from DIR at run time (e.g. ../shared/reference/tiny-hf: never commit the result). Without it a
small byte-level BPE vocabulary in CLIP's layout is trained (tools/ref_tokenizer.py's trainer)
on a built-in caption list: ids 0-255 the byte stand-ins, 256-511 the same with </w>, then
--merges merges, then <|startoftext|>, <|endoftext|>.
"""
import argparse
import gzip
import io
import json
import math
import os
import sys
from collections import OrderedDict

import torch

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)
import clip_torch  # noqa: E402
import ref_tokenizer  # noqa: E402  (the team's BPE trainer and OpenAI's byte table)

PRESETS = {
    "tiny": dict(image_size=224, patch_size=32, vision_width=128, vision_layers=2, vision_heads=2,
                 text_width=64, text_layers=2, text_heads=4, embed_dim=48),
    "fixture": dict(image_size=224, patch_size=32, vision_width=16, vision_layers=2, vision_heads=2,
                    text_width=32, text_layers=2, text_heads=2, embed_dim=16),
    "vit-b-32": dict(image_size=224, patch_size=32, vision_width=768, vision_layers=12,
                     vision_heads=12, text_width=512, text_layers=12, text_heads=8, embed_dim=512),
    "vit-b-16": dict(image_size=224, patch_size=16, vision_width=768, vision_layers=12,
                     vision_heads=12, text_width=512, text_layers=12, text_heads=8, embed_dim=512),
    "vit-l-14": dict(image_size=224, patch_size=14, vision_width=1024, vision_layers=24,
                     vision_heads=16, text_width=768, text_layers=12, text_heads=12, embed_dim=768),
    "vit-l-14-336": dict(image_size=336, patch_size=14, vision_width=1024, vision_layers=24,
                         vision_heads=16, text_width=768, text_layers=12, text_heads=12,
                         embed_dim=768),
}

# Deterministic training text for the small vocabulary (common caption words, so that typical
# prompts tokenize into a handful of merged tokens, plus a few other scripts).
VOCAB_TEXTS = [
    "a photo of a cat", "a photo of a dog", "a photo of an astronaut", "a cup of coffee",
    "a rocket launch", "a red motorcycle", "two dogs playing in the snow",
    "it's raining cats and dogs", "a picture of the moon", "the sky at night",
    "a close-up photo of a flower", "a black and white photo of a person",
    "a painting of a house by the sea", "a blurry photo of a car", "a bright photo of a bird",
    "a cropped photo of the horse", "there is a green tree in the park",
    "this is a small kitten on a sofa", "people walking on the street in the city",
    "a plate of food on the table", "an orange circle", "a blue square", "a yellow triangle",
    "naïve café crème brûlée", "кошка на диване", "北京的天安门", "ΣΊΣΥΦΟΣ",
    "hello world 1234567890", "we'll meet at 10:30 a.m.", "C++ and C# code",
]

HF_DEFAULT_MEAN = list(clip_torch.OPENAI_MEAN)
HF_DEFAULT_STD = list(clip_torch.OPENAI_STD)


# ---------------------------------------------------------------------------------------------
# Hyperparameters
# ---------------------------------------------------------------------------------------------

def make_hparams(preset, act, vocab_size, overrides):
    hp = dict(PRESETS[preset])
    hp.update(vision_mlp=4 * hp["vision_width"], text_mlp=4 * hp["text_width"],
              vision_eps=1e-5, text_eps=1e-5, context_length=77, vocab_size=vocab_size, act=act,
              mean=HF_DEFAULT_MEAN, std=HF_DEFAULT_STD, resize_size=0, crop_size=0)
    sets = dict(kv.split("=", 1) for kv in overrides)
    for k, v in sets.items():
        if k not in hp:
            raise SystemExit(f"--set: unknown hyperparameter {k!r} (known: {', '.join(sorted(hp))})")
        hp[k] = json.loads(v) if isinstance(hp[k], list) else type(hp[k])(v)
    for kind in ("vision", "text"):
        if f"{kind}_width" in sets and f"{kind}_mlp" not in sets:
            hp[f"{kind}_mlp"] = 4 * hp[f"{kind}_width"]
    hp["resize_size"] = hp["resize_size"] or hp["image_size"]
    hp["crop_size"] = hp["crop_size"] or hp["image_size"]
    for w, h in (("vision_width", "vision_heads"), ("text_width", "text_heads")):
        if hp[w] % hp[h]:
            raise SystemExit(f"{w} {hp[w]} is not a multiple of {h} {hp[h]}")
    if hp["image_size"] % hp["patch_size"]:
        raise SystemExit("image_size is not a multiple of patch_size")
    return hp


# ---------------------------------------------------------------------------------------------
# Random weights, OpenAI naming
# ---------------------------------------------------------------------------------------------

def random_state(hp, seed):
    g = torch.Generator().manual_seed(seed)

    def randn(*shape, std=1.0, mean=0.0):
        return torch.randn(*shape, generator=g, dtype=torch.float32) * std + mean

    sd = OrderedDict()

    def tower(prefix, width, layers, mlp):
        attn_std = width ** -0.5
        proj_std = width ** -0.5 * (2 * layers) ** -0.5
        fc_std = (2 * width) ** -0.5
        for i in range(layers):
            b = f"{prefix}transformer.resblocks.{i}."
            sd[b + "attn.in_proj_weight"] = randn(3 * width, width, std=attn_std)
            sd[b + "attn.in_proj_bias"] = randn(3 * width, std=0.02)
            sd[b + "attn.out_proj.weight"] = randn(width, width, std=proj_std)
            sd[b + "attn.out_proj.bias"] = randn(width, std=0.02)
            sd[b + "ln_1.weight"] = randn(width, std=0.1, mean=1.0)
            sd[b + "ln_1.bias"] = randn(width, std=0.05)
            sd[b + "mlp.c_fc.weight"] = randn(mlp, width, std=fc_std)
            sd[b + "mlp.c_fc.bias"] = randn(mlp, std=0.02)
            sd[b + "mlp.c_proj.weight"] = randn(width, mlp, std=proj_std)
            sd[b + "mlp.c_proj.bias"] = randn(width, std=0.02)
            sd[b + "ln_2.weight"] = randn(width, std=0.1, mean=1.0)
            sd[b + "ln_2.bias"] = randn(width, std=0.05)

    vw, p = hp["vision_width"], hp["patch_size"]
    grid = hp["image_size"] // p
    sd["visual.class_embedding"] = randn(vw, std=vw ** -0.5)
    sd["visual.positional_embedding"] = randn(grid * grid + 1, vw, std=vw ** -0.5)
    sd["visual.proj"] = randn(vw, hp["embed_dim"], std=vw ** -0.5)
    sd["visual.conv1.weight"] = randn(vw, 3, p, p, std=(3 * p * p) ** -0.5)
    sd["visual.ln_pre.weight"] = randn(vw, std=0.1, mean=1.0)
    sd["visual.ln_pre.bias"] = randn(vw, std=0.05)
    tower("visual.", vw, hp["vision_layers"], hp["vision_mlp"])
    sd["visual.ln_post.weight"] = randn(vw, std=0.1, mean=1.0)
    sd["visual.ln_post.bias"] = randn(vw, std=0.05)
    tw = hp["text_width"]
    sd["positional_embedding"] = randn(hp["context_length"], tw, std=0.01)
    sd["text_projection"] = randn(tw, hp["embed_dim"], std=tw ** -0.5)
    sd["logit_scale"] = torch.tensor(math.log(1 / 0.07), dtype=torch.float32)
    sd["token_embedding.weight"] = randn(hp["vocab_size"], tw, std=0.02)
    tower("", tw, hp["text_layers"], hp["text_mlp"])
    sd["ln_final.weight"] = randn(tw, std=0.1, mean=1.0)
    sd["ln_final.bias"] = randn(tw, std=0.05)
    return sd


def openai_to_hf(sd, hp):
    """OpenAI names -> Hugging Face CLIPModel names, in CLIPModel's module order (text, vision,
    projections), with the int64 position_ids buffers HF checkpoints carry."""
    out = OrderedDict()
    grid = hp["image_size"] // hp["patch_size"]

    def layers(src_prefix, dst_prefix, n):
        for i in range(n):
            s, d = f"{src_prefix}transformer.resblocks.{i}.", f"{dst_prefix}encoder.layers.{i}."
            for kind in ("weight", "bias"):
                q, k, v = sd[s + f"attn.in_proj_{kind}"].chunk(3, 0)
                out[d + f"self_attn.k_proj.{kind}"] = k.clone()
                out[d + f"self_attn.v_proj.{kind}"] = v.clone()
                out[d + f"self_attn.q_proj.{kind}"] = q.clone()
            for oa, hf in (("attn.out_proj", "self_attn.out_proj"), ("ln_1", "layer_norm1"),
                           ("mlp.c_fc", "mlp.fc1"), ("mlp.c_proj", "mlp.fc2"), ("ln_2", "layer_norm2")):
                for kind in ("weight", "bias"):
                    out[d + f"{hf}.{kind}"] = sd[s + f"{oa}.{kind}"]

    out["text_model.embeddings.token_embedding.weight"] = sd["token_embedding.weight"]
    out["text_model.embeddings.position_embedding.weight"] = sd["positional_embedding"]
    out["text_model.embeddings.position_ids"] = torch.arange(hp["context_length"]).unsqueeze(0)
    layers("", "text_model.", hp["text_layers"])
    out["text_model.final_layer_norm.weight"] = sd["ln_final.weight"]
    out["text_model.final_layer_norm.bias"] = sd["ln_final.bias"]
    out["vision_model.embeddings.class_embedding"] = sd["visual.class_embedding"]
    out["vision_model.embeddings.patch_embedding.weight"] = sd["visual.conv1.weight"]
    out["vision_model.embeddings.position_embedding.weight"] = sd["visual.positional_embedding"]
    out["vision_model.embeddings.position_ids"] = torch.arange(grid * grid + 1).unsqueeze(0)
    out["vision_model.pre_layrnorm.weight"] = sd["visual.ln_pre.weight"]
    out["vision_model.pre_layrnorm.bias"] = sd["visual.ln_pre.bias"]
    layers("visual.", "vision_model.", hp["vision_layers"])
    out["vision_model.post_layernorm.weight"] = sd["visual.ln_post.weight"]
    out["vision_model.post_layernorm.bias"] = sd["visual.ln_post.bias"]
    out["visual_projection.weight"] = sd["visual.proj"].t().contiguous()
    out["text_projection.weight"] = sd["text_projection"].t().contiguous()
    out["logit_scale"] = sd["logit_scale"]
    return out


# ---------------------------------------------------------------------------------------------
# Vocabulary
# ---------------------------------------------------------------------------------------------

def vocab_from_dir(d):
    """(encoder, merges) from DIR's vocab.json + merges.txt or its bpe_simple_vocab_16e6.txt.gz."""
    tok = ref_tokenizer.Tokenizer.from_folder(d)
    merges = sorted(tok.ranks, key=tok.ranks.get)
    return tok.encoder, merges


def train_vocab(n_merges):
    return ref_tokenizer.train_small_vocab(VOCAB_TEXTS, n_merges)


def check_clip_layout(encoder, merges):
    """The converter and simple_tokenizer rebuild ids from the merges alone: verify they agree."""
    b2u = list(ref_tokenizer.bytes_to_unicode().values())
    order = b2u + [u + "</w>" for u in b2u] + ["".join(m) for m in merges] + \
        [clip_torch.SOT, clip_torch.EOT]
    if len(order) != len(encoder) or any(encoder.get(t) != i for i, t in enumerate(order)):
        raise SystemExit("vocabulary is not in CLIP's layout (bytes, bytes</w>, merges, specials)")


def write_vocab(out, fmt, encoder, merges):
    if fmt == "openai":
        raw = ("\"bpe_simple_vocab_16e6.txt#version: 0.2\n" +
               "".join(f"{a} {b}\n" for a, b in merges)).encode("utf-8")
        buf = io.BytesIO()
        with gzip.GzipFile(filename="bpe_simple_vocab_16e6.txt", mode="wb", fileobj=buf,
                           mtime=0) as gz:
            gz.write(raw)
        with open(os.path.join(out, "bpe_simple_vocab_16e6.txt.gz"), "wb") as f:
            f.write(buf.getvalue())
        return
    with open(os.path.join(out, "vocab.json"), "w", encoding="utf-8") as f:
        json.dump(encoder, f, ensure_ascii=False)
    with open(os.path.join(out, "merges.txt"), "w", encoding="utf-8") as f:
        f.write("#version: 0.2\n")
        f.writelines(f"{a} {b}\n" for a, b in merges)


# ---------------------------------------------------------------------------------------------
# Configs
# ---------------------------------------------------------------------------------------------

def hf_config(hp):
    def tower(kind):
        w = hp[f"{kind}_width"]
        c = OrderedDict(hidden_size=w, intermediate_size=hp[f"{kind}_mlp"],
                        num_attention_heads=hp[f"{kind}_heads"],
                        num_hidden_layers=hp[f"{kind}_layers"])
        if kind == "text":
            c.update(max_position_embeddings=hp["context_length"], vocab_size=hp["vocab_size"])
        else:
            c.update(image_size=hp["image_size"], patch_size=hp["patch_size"])
        c.update(hidden_act=hp["act"], layer_norm_eps=hp[f"{kind}_eps"])
        if kind == "text":
            c.update(bos_token_id=hp["vocab_size"] - 2, eos_token_id=hp["vocab_size"] - 1,
                     pad_token_id=1)
        else:
            c.update(num_channels=3)
        c["projection_dim"] = hp["embed_dim"]
        return c

    return OrderedDict(architectures=["CLIPModel"], model_type="clip",
                       projection_dim=hp["embed_dim"], logit_scale_init_value=2.6592,
                       torch_dtype="float32", text_config=tower("text"),
                       vision_config=tower("vision"))


def preprocessor_config(hp):
    return OrderedDict(crop_size=hp["crop_size"], do_center_crop=True, do_normalize=True,
                       do_resize=True, feature_extractor_type="CLIPFeatureExtractor",
                       image_mean=hp["mean"], image_std=hp["std"], resample=3,
                       size=hp["resize_size"])


def open_clip_config(hp):
    head_width = hp["vision_width"] // hp["vision_heads"]
    return OrderedDict(model_cfg=OrderedDict(
        embed_dim=hp["embed_dim"], quick_gelu=hp["act"] == "quick_gelu",
        vision_cfg=OrderedDict(image_size=hp["image_size"], layers=hp["vision_layers"],
                               width=hp["vision_width"], head_width=head_width,
                               mlp_ratio=hp["vision_mlp"] / hp["vision_width"],
                               patch_size=hp["patch_size"]),
        text_cfg=OrderedDict(context_length=hp["context_length"], vocab_size=hp["vocab_size"],
                             width=hp["text_width"], heads=hp["text_heads"],
                             layers=hp["text_layers"], mlp_ratio=hp["text_mlp"] / hp["text_width"])),
        preprocess_cfg=OrderedDict(mean=hp["mean"], std=hp["std"]))


def dump_json(path, obj):
    with open(path, "w", encoding="utf-8") as f:
        json.dump(obj, f, indent=2)
        f.write("\n")


# ---------------------------------------------------------------------------------------------
# Main
# ---------------------------------------------------------------------------------------------

def make(out, preset="tiny", fmt="safetensors", act="quick_gelu", seed=0, dtype="f32",
         vocab_from=None, merges=256, overrides=()):
    if vocab_from:
        encoder, merge_list = vocab_from_dir(vocab_from)
    else:
        encoder, merge_list = train_vocab(merges)
    check_clip_layout(encoder, merge_list)
    hp = make_hparams(preset, act, len(encoder), overrides)
    os.makedirs(out, exist_ok=True)
    sd = random_state(hp, seed)
    if dtype == "f16":
        sd = OrderedDict((k, v.half()) for k, v in sd.items())
    write_vocab(out, fmt, encoder, merge_list)
    if fmt == "openai":
        dump_json(os.path.join(out, "open_clip_config.json"), open_clip_config(hp))
        clip_torch.write_safetensors(os.path.join(out, "open_clip_model.safetensors"), sd,
                                     {"format": "pt"})
    else:
        hf = openai_to_hf(sd, hp)
        dump_json(os.path.join(out, "config.json"), hf_config(hp))
        dump_json(os.path.join(out, "preprocessor_config.json"), preprocessor_config(hp))
        dump_json(os.path.join(out, "tokenizer_config.json"), OrderedDict(
            bos_token=clip_torch.SOT, eos_token=clip_torch.EOT, unk_token=clip_torch.EOT,
            pad_token=clip_torch.EOT, model_max_length=hp["context_length"], do_lower_case=True,
            tokenizer_class="CLIPTokenizer"))
        if fmt == "safetensors":
            clip_torch.write_safetensors(os.path.join(out, "model.safetensors"), hf, {"format": "pt"})
        else:
            torch.save(hf, os.path.join(out, "pytorch_model.bin"))
    return hp


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--preset", choices=sorted(PRESETS), default="tiny")
    ap.add_argument("--format", choices=("safetensors", "bin", "openai"), default="safetensors")
    ap.add_argument("--act", choices=("quick_gelu", "gelu"), default="quick_gelu")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--dtype", choices=("f32", "f16"), default="f32",
                    help="dtype of the stored weights (f16 as some published checkpoints)")
    ap.add_argument("--vocab-from", help="copy the vocabulary from this folder")
    ap.add_argument("--merges", type=int, default=256, help="merges of the generated vocabulary")
    ap.add_argument("--set", action="append", default=[], metavar="KEY=VALUE")
    ap.add_argument("--out", required=True)
    a = ap.parse_args()
    hp = make(a.out, a.preset, a.format, a.act, a.seed, a.dtype, a.vocab_from, a.merges, a.set)
    n = sum(1 for _ in os.scandir(a.out))
    size = sum(e.stat().st_size for e in os.scandir(a.out))
    print(f"{a.out}: {a.preset} {a.format} {a.act} seed {a.seed}, vocab {hp['vocab_size']}, "
          f"{n} files, {size} bytes", file=sys.stderr)


if __name__ == "__main__":
    main()
