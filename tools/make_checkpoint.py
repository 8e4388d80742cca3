#!/usr/bin/python3
"""make_checkpoint.py -- deterministic random-weight CLIP checkpoints, any size, on disk as users
download them.

  /usr/bin/python3 tools/make_checkpoint.py --preset vit-b-32 --out /tmp/vitb32
        [--format safetensors|bin|openai|openclip-bin|openai-pt] [--act quick_gelu|gelu]
        [--seed N] [--dtype f32|f16] [--vocab-from DIR] [--merges N] [--set key=value]...
        [--fp16-rounded] [--pt-name FILE.pt]

Presets (widths/layers/heads/patch/image size as the real models; weights random):
  tiny          like ../shared/reference/tiny-hf: ViT 128 wide, 2 layers, 2 heads, patch 32, 224;
                text 64/2/4; embed 48
  fixture       the committed test fixture size: ViT 16/2/2, patch 32, 224; text 32/2/2; embed 16
  vit-b-32      ViT-B/32: vision 768/12/12, patch 32, 224; text 512/12/8; embed 512
  vit-b-16      ViT-B/16: as B/32 with patch 16
  vit-l-14      ViT-L/14: vision 1024/24/16, patch 14, 224; text 768/12/12; embed 768
  vit-l-14-336  ViT-L/14 at 336 px
  OpenAI's ModifiedResNets (clip/model.py; OpenCLIP's RN*.json say the same), text 12 layers
  with width / 64 heads, attention pool width * 32 / 64 heads of 64:
  rn50          blocks (3,4,6,3),   width 64,  224 px, embed 1024, text 512
  rn101         blocks (3,4,23,3),  width 64,  224 px, embed 512,  text 512
  rn50x4        blocks (4,6,10,6),  width 80,  288 px, embed 640,  text 640
  rn50x16       blocks (6,8,18,8),  width 96,  384 px, embed 768,  text 768
  rn50x64       blocks (3,15,36,10), width 128, 448 px, embed 1024, text 1024
  rn-tiny       the committed fixture: blocks (1,2,1,1), width 4, 96 px (a 3 x 3 attention
                grid), 2 heads; text 64/1/1; embed 32
--set overrides any hyperparameter (e.g. --set vision_layers=3 --set image_size=64, or
--set 'vision_layers=[2,2,2,2]' for a ResNet).

Formats:
  safetensors   Hugging Face layout (ViT only): config.json, preprocessor_config.json,
                tokenizer_config.json, vocab.json + merges.txt, model.safetensors (written here;
                int64 position_ids buffers included, as older HF checkpoints have them)
  bin           the same with pytorch_model.bin (torch.save of the state dict, a zip checkpoint)
  openai        OpenAI/OpenCLIP tensor naming in open_clip_model.safetensors, with
                open_clip_config.json and bpe_simple_vocab_16e6.txt.gz (OpenAI's merges file:
                a version line, then one merge per line)
  openclip-bin  as OpenCLIP publishes OpenAI's models: open_clip_pytorch_model.bin (torch.save
                of the OpenAI-named state dict, BatchNorm num_batches_tracked included), with
                open_clip_config.json and bpe_simple_vocab_16e6.txt.gz. The tensors OpenAI's
                convert_weights casts hold fp16-rounded values, stored in fp32.
  openai-pt     a TorchScript archive like OpenAI's RN50.pt / ViT-B-32.pt (file name OpenAI's
                for the preset, else model.pt; --pt-name overrides) beside
                bpe_simple_vocab_16e6.txt.gz. Our CLIP module (model.py's classes and names)
                traced -- forward, encode_image, encode_text -- and saved with torch.jit.save;
                fp16 where convert_weights casts (conv and linear weights and biases, attention
                in_proj weight and bias, text_projection, visual.proj), fp32 for LayerNorm,
                BatchNorm, embeddings and logit_scale; 0-dim int64 buffers input_resolution,
                context_length and vocab_size in the state dict, as OpenAI's files have them.
                Heads must be width / 64 (build_model infers them), quick_gelu. The writer reads
                the archive back and checks every tensor. What the file holds (details, with
                the unzip -l listing and a pickletools disassembly: docs/torchscript-archive.md):
                  a zip with one folder named after the file (model/, RN50/): data/K, each
                  tensor's little-endian bytes (stored, 64-byte aligned); data.pkl, a
                  protocol-2 pickle of the module tree -- each module GLOBAL
                  '__torch__.<module> <Class>' (mangled, e.g. conv.___torch_mangle_4 Conv2d),
                  NEWOBJ, then BUILD with a dict of its parameters, buffers and submodules
                  plus training (False) and _is_full_backward_hook (None); each tensor
                  REDUCE torch._utils._rebuild_tensor_v2(BINPERSID ('storage',
                  torch.Float/Half/LongStorage, key K, 'cpu', numel), offset, size, stride,
                  requires_grad, OrderedDict()); memo (BINPUT/BINGET) used throughout;
                  constants.pkl with constants/K (tensors tracing captured, e.g. the causal
                  mask: keys resolve under constants/, not data/); code/ (TorchScript source
                  and .debug_pkl, mostly deflated, not needed for the weights); version ("4").
  openclip-bin and openai-pt of the same preset and seed hold the same values, so a converter
  must make identical tensors from both; --fp16-rounded gives the other formats those values
  too (a ViT's .pt and its Hugging Face folder of the same weights). The reference answer for either is OpenAI's model
  computed in fp32 from these fp16-rounded weights (tools/reference.py).

Weights follow OpenAI's initialize_parameters scales (attention std width^-0.5, residual
projections std width^-0.5 (2 layers)^-0.5, MLP in (2 width)^-0.5, embeddings 0.02/0.01,
projections width^-0.5, patch embedding fan_in^-0.5) so activations stay like a real model's.
Biases and LayerNorm parameters are random too (LN weight 1 +- 0.1, biases ~0.02-0.05), so a
bias or LayerNorm the engine forgot shows in the output. ResNet convolutions, BatchNorms and
the attention pool: see resnet_visual (every BatchNorm's statistics and affine random, so a
BatchNorm folded wrongly shows).

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


def _resnet(image_size, layers, width, embed_dim, text_width):
    """OpenAI's ModifiedResNet configurations (clip/model.py, OpenCLIP's RN*.json): attention-
    pool heads width * 32 / 64, text heads width / 64, 12 text layers."""
    return dict(image_size=image_size, patch_size=None, vision_width=width, vision_layers=layers,
                vision_heads=width * 32 // 64, text_width=text_width, text_layers=12,
                text_heads=text_width // 64, embed_dim=embed_dim)


PRESETS.update({
    "rn50": _resnet(224, [3, 4, 6, 3], 64, 1024, 512),
    "rn101": _resnet(224, [3, 4, 23, 3], 64, 512, 512),
    "rn50x4": _resnet(288, [4, 6, 10, 6], 80, 640, 640),
    "rn50x16": _resnet(384, [6, 8, 18, 8], 96, 768, 768),
    "rn50x64": _resnet(448, [3, 15, 36, 10], 128, 1024, 1024),
    # The committed fixture: a stride-1 block without a shortcut convolution (layer2.1) and the
    # downsampling shortcuts; 96 px so the attention pool sees a 3 x 3 grid (10 tokens, 2 heads of
    # 64). Text 64 wide, so a .pt's inferred head count (width / 64) is 1.
    "rn-tiny": dict(image_size=96, patch_size=None, vision_width=4, vision_layers=[1, 2, 1, 1],
                    vision_heads=2, text_width=64, text_layers=1, text_heads=1, embed_dim=32),
})

# OpenAI's file names, for --format openai-pt (clip.load's ~/.cache/clip/ names).
OPENAI_PT_NAMES = {
    "rn50": "RN50.pt", "rn101": "RN101.pt", "rn50x4": "RN50x4.pt", "rn50x16": "RN50x16.pt",
    "rn50x64": "RN50x64.pt", "vit-b-32": "ViT-B-32.pt", "vit-b-16": "ViT-B-16.pt",
    "vit-l-14": "ViT-L-14.pt", "vit-l-14-336": "ViT-L-14-336px.pt",
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

def make_hparams(preset, act, vocab_size, overrides, fmt=None):
    hp = dict(PRESETS[preset])
    resnet = clip_torch.is_resnet(hp)
    if not resnet:
        hp.update(vision_mlp=4 * hp["vision_width"])
    hp.update(text_mlp=4 * hp["text_width"])
    if not resnet:
        hp.update(vision_eps=1e-5)
    hp.update(text_eps=1e-5, context_length=77, vocab_size=vocab_size, act=act,
              mean=HF_DEFAULT_MEAN, std=HF_DEFAULT_STD, resize_size=0, crop_size=0)
    hp = clip_torch._in_order(hp)
    sets = dict(kv.split("=", 1) for kv in overrides)
    for k, v in sets.items():
        if k not in hp:
            raise SystemExit(f"--set: unknown hyperparameter {k!r} (known: {', '.join(sorted(hp))})")
        hp[k] = json.loads(v) if isinstance(hp[k], list) else type(hp[k])(v)
    for kind in ("vision", "text"):
        if f"{kind}_width" in sets and f"{kind}_mlp" not in sets and f"{kind}_mlp" in hp:
            hp[f"{kind}_mlp"] = 4 * hp[f"{kind}_width"]
    hp["resize_size"] = hp["resize_size"] or hp["image_size"]
    hp["crop_size"] = hp["crop_size"] or hp["image_size"]
    if resnet:
        # Nothing records a ResNet's head count: every reader infers width * 32 / 64.
        if "vision_width" in sets and "vision_heads" not in sets:
            hp["vision_heads"] = hp["vision_width"] * 32 // 64
        if hp["vision_heads"] != hp["vision_width"] * 32 // 64:
            raise SystemExit("a ResNet's attention pool has vision_width * 32 / 64 heads")
        if len(hp["vision_layers"]) != 4 or min(hp["vision_layers"]) < 1:
            raise SystemExit("vision_layers: four stages of at least one block")
        if hp["image_size"] % 32:
            raise SystemExit("a ResNet's image_size is 32 x its attention pool grid")
    elif hp["image_size"] % hp["patch_size"]:
        raise SystemExit("image_size is not a multiple of patch_size")
    for w, h in (("vision_width", "vision_heads"), ("text_width", "text_heads")):
        if hp[w] % hp[h]:
            raise SystemExit(f"{w} {hp[w]} is not a multiple of {h} {hp[h]}")
    if fmt == "openai-pt":
        # A .pt holds no configuration: readers infer heads as build_model does.
        want = [("text_heads", hp["text_width"] // 64)]
        if not resnet:
            want.append(("vision_heads", hp["vision_width"] // 64))
        for k, n in want:
            if hp[k] != n:
                raise SystemExit(f"--format openai-pt: {k} must be width / 64 = {n}, as "
                                 "build_model infers it")
        if hp["act"] != "quick_gelu" or hp["resize_size"] != hp["image_size"] or \
                hp["crop_size"] != hp["image_size"] or hp["mean"] != HF_DEFAULT_MEAN or \
                hp["std"] != HF_DEFAULT_STD:
            raise SystemExit("--format openai-pt: OpenAI's models use quick_gelu and "
                             "_transform(image_size) with OpenAI's mean and std")
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

    if clip_torch.is_resnet(hp):
        resnet_visual(sd, hp, randn, g)
    else:
        vit_visual(sd, hp, randn, tower)
    tw = hp["text_width"]
    sd["positional_embedding"] = randn(hp["context_length"], tw, std=0.01)
    sd["text_projection"] = randn(tw, hp["embed_dim"], std=tw ** -0.5)
    sd["logit_scale"] = torch.tensor(math.log(1 / 0.07), dtype=torch.float32)
    sd["token_embedding.weight"] = randn(hp["vocab_size"], tw, std=0.02)
    tower("", tw, hp["text_layers"], hp["text_mlp"])
    sd["ln_final.weight"] = randn(tw, std=0.1, mean=1.0)
    sd["ln_final.bias"] = randn(tw, std=0.05)
    return sd


def vit_visual(sd, hp, randn, tower):
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


def resnet_visual(sd, hp, randn, g):
    """ModifiedResNet weights in the module's state_dict order. Convolutions He-scaled for ReLU
    inputs (std (2 / fan_in)^0.5; the first stem convolution sees normalised pixels: fan_in^-0.5).
    Every BatchNorm random: weight U(0.5, 1.5), bias N(0, 0.1), running_mean N(0, 0.2),
    running_var U(0.5, 1.5), so that a BatchNorm folded wrongly (mean, variance, scale or shift
    forgotten or misplaced) changes the output far beyond rounding. The residual branch's last
    BatchNorm (bn3) scales by U(0.1, 0.4) x (4 / blocks in the stage)^0.5 when the stage has
    more than 4 blocks: eval-mode BatchNorm does not renormalise, so each block multiplies the
    residual stream by about (1 + bn3 scale^2)^0.5, and with full-size branches RN50x64's
    36-block stage would grow it ~2^18-fold; so the stream stays of order one at every depth
    and in every model, as in a trained network. Attention pool projections as OpenAI's
    initialize_parameters (std embed_dim^-0.5), biases N(0, 0.02); its positional embedding std
    0.5, not OpenAI's embed_dim^-0.5 (0.016 for RN50x64): that small beside features of order
    one, a reader that dropped it or transposed the grid would still reach cosine 0.99997."""
    def uniform(n, lo, hi):
        return torch.rand(n, generator=g, dtype=torch.float32) * (hi - lo) + lo

    def conv(name, cout, cin, k, gain=2.0):
        sd[name + ".weight"] = randn(cout, cin, k, k, std=(gain / (cin * k * k)) ** 0.5)

    def bn(name, n, scale=(0.5, 1.5)):
        sd[name + ".weight"] = uniform(n, *scale)
        sd[name + ".bias"] = randn(n, std=0.1)
        sd[name + ".running_mean"] = randn(n, std=0.2)
        sd[name + ".running_var"] = uniform(n, 0.5, 1.5)
        sd[name + ".num_batches_tracked"] = torch.tensor(0, dtype=torch.int64)

    w = hp["vision_width"]
    conv("visual.conv1", w // 2, 3, 3, gain=1.0)
    bn("visual.bn1", w // 2)
    conv("visual.conv2", w // 2, w // 2, 3)
    bn("visual.bn2", w // 2)
    conv("visual.conv3", w, w // 2, 3)
    bn("visual.bn3", w)
    inplanes = w
    for stage, blocks in enumerate(hp["vision_layers"]):
        planes = w * 2 ** stage
        for i in range(blocks):
            b = f"visual.layer{stage + 1}.{i}."
            conv(b + "conv1", planes, inplanes, 1)
            bn(b + "bn1", planes)
            conv(b + "conv2", planes, planes, 3)
            bn(b + "bn2", planes)
            conv(b + "conv3", 4 * planes, planes, 1)
            shrink = min(1.0, (4 / blocks) ** 0.5)
            bn(b + "bn3", 4 * planes, scale=(0.1 * shrink, 0.4 * shrink))
            if i == 0 and (stage > 0 or inplanes != 4 * planes):
                conv(b + "downsample.0", 4 * planes, inplanes, 1)
                bn(b + "downsample.1", 4 * planes)
            inplanes = 4 * planes
    e = 32 * w
    grid = hp["image_size"] // 32
    sd["visual.attnpool.positional_embedding"] = randn(grid * grid + 1, e, std=0.5)
    for proj in ("k_proj", "q_proj", "v_proj", "c_proj"):
        out = hp["embed_dim"] if proj == "c_proj" else e
        sd[f"visual.attnpool.{proj}.weight"] = randn(out, e, std=e ** -0.5)
        sd[f"visual.attnpool.{proj}.bias"] = randn(out, std=0.02)


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
    if fmt in ("openai", "openclip-bin", "openai-pt"):
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
    if clip_torch.is_resnet(hp):
        # OpenCLIP's RN*.json: block counts and width, no patch; heads follow from head_width 64.
        vision = OrderedDict(image_size=hp["image_size"], layers=list(hp["vision_layers"]),
                             width=hp["vision_width"], patch_size=None)
    else:
        head_width = hp["vision_width"] // hp["vision_heads"]
        vision = OrderedDict(image_size=hp["image_size"], layers=hp["vision_layers"],
                             width=hp["vision_width"], head_width=head_width,
                             mlp_ratio=hp["vision_mlp"] / hp["vision_width"],
                             patch_size=hp["patch_size"])
    return OrderedDict(model_cfg=OrderedDict(
        embed_dim=hp["embed_dim"], quick_gelu=hp["act"] == "quick_gelu",
        vision_cfg=vision,
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

def openai_release_state(sd, hp):
    """sd as OpenAI's released weights hold it: the tensors convert_weights casts (see
    clip_torch.openai_fp16_names) rounded to fp16 and back, so every reader of the same weights
    -- the .pt's fp16 tensors, or an OpenCLIP copy in fp32 -- gets the same values."""
    half = clip_torch.openai_fp16_names(clip_torch.CLIP(hp))
    return OrderedDict((k, v.half().float() if k in half else v) for k, v in sd.items())


def write_openai_pt(path, hp, sd):
    """A TorchScript archive like OpenAI's: our model.py-structured CLIP, traced (forward,
    encode_image, encode_text), with the convert_weights tensors cast to fp16 and the
    input_resolution / context_length / vocab_size buffers clip.load reads. See
    docs/torchscript-archive.md for what the file holds."""
    model = clip_torch.CLIP(hp)
    model.load_state_dict(sd, strict=True)
    model.eval()
    # 0-dim int64 buffers: in state_dict() (build_model deletes them), read with .item().
    for name in clip_torch.OPENAI_EXTRA_KEYS:
        key = "image_size" if name == "input_resolution" else name
        model.register_buffer(name, torch.tensor(hp[key], dtype=torch.int64))
    n = hp["image_size"]
    image = torch.zeros(1, 3, n, n)
    text = torch.zeros(1, hp["context_length"], dtype=torch.long)
    text[0, :2] = torch.tensor([hp["vocab_size"] - 2, hp["vocab_size"] - 1])  # SOT, EOT
    with torch.no_grad():
        traced = torch.jit.trace_module(
            model, {"forward": (image, text), "encode_image": image, "encode_text": text},
            check_trace=False)
    # Traced in fp32 (this CPU cannot run fp16 convolutions), then cast as convert_weights
    # does; like clip.load on a CPU, run the loaded archive after .float().
    half = clip_torch.openai_fp16_names(model)
    for name, p in traced.named_parameters():
        if name in half:
            p.data = p.data.half()
    torch.jit.save(traced, path)
    stored = torch.jit.load(path, map_location="cpu").state_dict()
    for name, v in sd.items():
        got = stored[name]
        if got.dtype != (torch.float16 if name in half else v.dtype) or \
                not torch.equal(got.to(v.dtype), v):
            raise SystemExit(f"{path}: {name} was not stored as intended")
    extra = [int(stored[k]) for k in clip_torch.OPENAI_EXTRA_KEYS]
    if extra != [hp["image_size"], hp["context_length"], hp["vocab_size"]] or \
            len(stored) != len(sd) + 3:
        raise SystemExit(f"{path}: unexpected entries in the archive's state dict")


def make(out, preset="tiny", fmt="safetensors", act="quick_gelu", seed=0, dtype="f32",
         vocab_from=None, merges=256, overrides=(), pt_name=None, fp16_rounded=False):
    if vocab_from:
        encoder, merge_list = vocab_from_dir(vocab_from)
    else:
        encoder, merge_list = train_vocab(merges)
    check_clip_layout(encoder, merge_list)
    hp = make_hparams(preset, act, len(encoder), overrides, fmt)
    if clip_torch.is_resnet(hp) and fmt in ("safetensors", "bin"):
        raise SystemExit(f"--format {fmt}: Hugging Face's CLIPModel has no ResNet tower; use "
                         "openai, openclip-bin or openai-pt")
    if fmt == "openai-pt" and dtype != "f32":
        raise SystemExit("--format openai-pt stores OpenAI's mix of fp16 and fp32; no --dtype")
    os.makedirs(out, exist_ok=True)
    sd = random_state(hp, seed)
    if fp16_rounded or fmt in ("openclip-bin", "openai-pt"):
        sd = openai_release_state(sd, hp)
    if dtype == "f16":
        sd = OrderedDict((k, v.half() if v.is_floating_point() else v) for k, v in sd.items())
    write_vocab(out, fmt, encoder, merge_list)
    if fmt == "openai-pt":
        write_openai_pt(os.path.join(out, pt_name or OPENAI_PT_NAMES.get(preset, "model.pt")),
                        hp, sd)
    elif fmt in ("openai", "openclip-bin"):
        dump_json(os.path.join(out, "open_clip_config.json"), open_clip_config(hp))
        if fmt == "openai":
            clip_torch.write_safetensors(os.path.join(out, "open_clip_model.safetensors"), sd,
                                         {"format": "pt"})
        else:
            torch.save(sd, os.path.join(out, "open_clip_pytorch_model.bin"))
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
    ap.add_argument("--format", choices=("safetensors", "bin", "openai", "openclip-bin", "openai-pt"),
                    default="safetensors")
    ap.add_argument("--act", choices=("quick_gelu", "gelu"), default="quick_gelu")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--dtype", choices=("f32", "f16"), default="f32",
                    help="dtype of the stored weights (f16 as some published checkpoints)")
    ap.add_argument("--vocab-from", help="copy the vocabulary from this folder")
    ap.add_argument("--merges", type=int, default=256, help="merges of the generated vocabulary")
    ap.add_argument("--set", action="append", default=[], metavar="KEY=VALUE")
    ap.add_argument("--fp16-rounded", action="store_true",
                    help="round the tensors OpenAI's convert_weights casts to fp16 values, as "
                    "openclip-bin and openai-pt always do (e.g. an HF folder of a .pt's weights)")
    ap.add_argument("--pt-name", help="the .pt file's name (default: OpenAI's for the preset, "
                    "else model.pt)")
    ap.add_argument("--out", required=True)
    a = ap.parse_args()
    hp = make(a.out, a.preset, a.format, a.act, a.seed, a.dtype, a.vocab_from, a.merges, a.set,
              a.pt_name, a.fp16_rounded)
    n = sum(1 for _ in os.scandir(a.out))
    size = sum(e.stat().st_size for e in os.scandir(a.out))
    print(f"{a.out}: {a.preset} {a.format} {a.act} seed {a.seed}, vocab {hp['vocab_size']}, "
          f"{n} files, {size} bytes", file=sys.stderr)


if __name__ == "__main__":
    main()
