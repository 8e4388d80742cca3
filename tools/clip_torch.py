"""clip_torch.py -- our PyTorch re-implementation of OpenAI's CLIP, for reference outputs.

Shared by tools/reference.py, tools/make_checkpoint.py, tools/bench_torch.py and
tools/export_onnx.py. Run with /usr/bin/python3 (Debian: torch 1.13, Pillow 9.4, numpy, regex).
Nothing here is used by the product; `make test` reaches it only through tests/test_tools.py.

What lives here:
  - safetensors reading and writing (8-byte little-endian header length, JSON header, raw data)
  - checkpoint loading: a Hugging Face CLIP folder (config.json + model.safetensors or
    pytorch_model.bin), OpenAI/OpenCLIP naming in open_clip_model.safetensors or
    open_clip_pytorch_model.bin, or OpenAI's TorchScript .pt (its state dict, as clip.load with
    jit=False takes it), mapped to OpenAI's names; hyperparameters from the config, or inferred
    from the tensors' shapes exactly as model.py's build_model does
  - the model, with clip/model.py's structure and parameter names (so a state dict loads
    strictly: a missing or misshapen tensor is an error, never silently random): the
    VisionTransformer or the ModifiedResNet (Bottleneck blocks, AttentionPool2d; BatchNorm in
    eval mode, on its running statistics), chosen as build_model chooses
  - which tensors OpenAI's convert_weights casts to fp16 (openai_fp16_names)
  - preprocessing exactly as clip.py's _transform does it with Pillow, at the model's own size
  - OpenAI's simple_tokenizer and clip.tokenize(truncate=True): tools/ref_tokenizer.py's

Everything computes in fp32. OpenAI's released models hold fp16 weights (convert_weights); from
such a file the reference is OpenAI's model run in fp32 on those fp16-rounded values -- the
values a converter reads -- not the fp16 arithmetic clip.load would do on a GPU.
"""
import json
import os
import struct
import sys
from collections import OrderedDict

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F
from PIL import Image

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import ref_tokenizer  # noqa: E402  (OpenAI's tokenizer: cleaning, byte table, BPE)

OPENAI_MEAN = (0.48145466, 0.4578275, 0.40821073)
OPENAI_STD = (0.26862954, 0.26130258, 0.27577711)
SOT, EOT = "<|startoftext|>", "<|endoftext|>"

# ---------------------------------------------------------------------------------------------
# safetensors
# ---------------------------------------------------------------------------------------------

_ST_DTYPES = {
    "F64": np.float64, "F32": np.float32, "F16": np.float16, "I64": np.int64,
    "I32": np.int32, "I16": np.int16, "I8": np.int8, "U8": np.uint8, "BOOL": np.bool_,
}
_ST_NAMES = {np.dtype(v): k for k, v in _ST_DTYPES.items()}


def read_safetensors(path):
    """Returns an OrderedDict name -> torch.Tensor (copies, so the file can close)."""
    with open(path, "rb") as f:
        raw = f.read()
    if len(raw) < 8:
        raise ValueError(f"{path}: too short for a safetensors file")
    (n,) = struct.unpack("<Q", raw[:8])
    if 8 + n > len(raw):
        raise ValueError(f"{path}: header length {n} runs past the end of the file")
    header = json.loads(raw[8:8 + n].decode("utf-8"))
    base = 8 + n
    out = OrderedDict()
    for name, info in header.items():
        if name == "__metadata__":
            continue
        dt = info["dtype"]
        b, e = info["data_offsets"]
        shape = tuple(info["shape"])
        if dt == "BF16":
            u16 = np.frombuffer(raw, dtype="<u2", count=(e - b) // 2, offset=base + b)
            arr = (u16.astype(np.uint32) << 16).view(np.float32).reshape(shape)
        else:
            npdt = np.dtype(_ST_DTYPES[dt]).newbyteorder("<")
            arr = np.frombuffer(raw, dtype=npdt, count=(e - b) // npdt.itemsize,
                                offset=base + b).reshape(shape)
        out[name] = torch.from_numpy(arr.astype(arr.dtype.newbyteorder("="), copy=True))
    return out


def write_safetensors(path, tensors, metadata=None):
    """tensors: ordered name -> torch.Tensor. Data laid out in the given order, header padded
    with spaces to a multiple of 8 as the reference writer does."""
    header, blobs, off = {}, [], 0
    if metadata:
        header["__metadata__"] = {str(k): str(v) for k, v in metadata.items()}
    for name, t in tensors.items():
        a = t.detach().cpu().contiguous().numpy()
        a = a.astype(a.dtype.newbyteorder("<"), copy=False)
        data = a.tobytes()
        header[name] = {"dtype": _ST_NAMES[np.dtype(a.dtype).newbyteorder("=")],
                        "shape": list(a.shape), "data_offsets": [off, off + len(data)]}
        blobs.append(data)
        off += len(data)
    hj = json.dumps(header, separators=(",", ":")).encode("utf-8")
    hj += b" " * ((8 - len(hj) % 8) % 8)
    with open(path, "wb") as f:
        f.write(struct.pack("<Q", len(hj)))
        f.write(hj)
        for d in blobs:
            f.write(d)


# ---------------------------------------------------------------------------------------------
# Hyperparameters and checkpoint loading
# ---------------------------------------------------------------------------------------------

def _size_from(v, key_order=("shortest_edge", "height", "width")):
    if isinstance(v, dict):
        for k in key_order:
            if k in v:
                return int(v[k])
        raise ValueError(f"cannot read a size from {v}")
    return int(v)


def hparams_from_hf_config(cfg, pre=None):
    v, t = cfg["vision_config"], cfg["text_config"]
    act = v.get("hidden_act", "quick_gelu")
    if t.get("hidden_act", act) != act:
        raise ValueError("vision and text activations differ")
    hp = dict(
        image_size=int(v["image_size"]), patch_size=int(v["patch_size"]),
        vision_width=int(v["hidden_size"]), vision_layers=int(v["num_hidden_layers"]),
        vision_heads=int(v["num_attention_heads"]),
        vision_mlp=int(v.get("intermediate_size", 4 * v["hidden_size"])),
        vision_eps=float(v.get("layer_norm_eps", 1e-5)),
        text_width=int(t["hidden_size"]), text_layers=int(t["num_hidden_layers"]),
        text_heads=int(t["num_attention_heads"]),
        text_mlp=int(t.get("intermediate_size", 4 * t["hidden_size"])),
        text_eps=float(t.get("layer_norm_eps", 1e-5)),
        context_length=int(t.get("max_position_embeddings", 77)),
        vocab_size=int(t.get("vocab_size", 49408)),
        embed_dim=int(cfg.get("projection_dim", 512)), act=act,
        resize_size=int(v["image_size"]), crop_size=int(v["image_size"]),
        mean=list(OPENAI_MEAN), std=list(OPENAI_STD),
    )
    if pre:
        if "size" in pre:
            hp["resize_size"] = _size_from(pre["size"])
        if "crop_size" in pre:
            hp["crop_size"] = _size_from(pre["crop_size"], ("height", "width", "shortest_edge"))
        hp["mean"] = [float(x) for x in pre.get("image_mean", hp["mean"])]
        hp["std"] = [float(x) for x in pre.get("image_std", hp["std"])]
    return hp


# The order hparams are listed in (reference.json records them): a ResNet has no vision_mlp or
# vision_eps (BatchNorm's eps is fixed at 1e-5) and no patch size (None).
HPARAM_ORDER = ("image_size", "patch_size", "vision_width", "vision_layers", "vision_heads",
                "vision_mlp", "vision_eps", "text_width", "text_layers", "text_heads", "text_mlp",
                "text_eps", "context_length", "vocab_size", "embed_dim", "act", "resize_size",
                "crop_size", "mean", "std")


def _in_order(hp):
    return {k: hp[k] for k in HPARAM_ORDER if k in hp}


def hparams_from_open_clip_config(cfg):
    m = cfg["model_cfg"]
    v, t = m["vision_cfg"], m["text_cfg"]
    vw, tw = int(v["width"]), int(t["width"])
    pre = cfg.get("preprocess_cfg", {})
    size = int(v["image_size"])
    text = dict(
        text_width=tw, text_layers=int(t["layers"]), text_heads=int(t.get("heads", 8)),
        text_mlp=int(round(tw * float(t.get("mlp_ratio", 4.0)))), text_eps=1e-5,
        context_length=int(t.get("context_length", 77)), vocab_size=int(t.get("vocab_size", 49408)),
        embed_dim=int(m["embed_dim"]), act="quick_gelu" if m.get("quick_gelu") else "gelu",
        resize_size=size, crop_size=size,
        mean=[float(x) for x in pre.get("mean", OPENAI_MEAN)],
        std=[float(x) for x in pre.get("std", OPENAI_STD)],
    )
    if isinstance(v["layers"], (list, tuple)):
        # OpenCLIP's ModifiedResNet: heads = the attention pool's width (32 x width) / head_width.
        return _in_order(dict(image_size=size, patch_size=None, vision_width=vw,
                               vision_layers=[int(n) for n in v["layers"]],
                               vision_heads=vw * 32 // int(v.get("head_width", 64)), **text))
    return _in_order(dict(
        image_size=size, patch_size=int(v["patch_size"]), vision_width=vw,
        vision_layers=int(v["layers"]), vision_heads=vw // int(v.get("head_width", 64)),
        vision_mlp=int(round(vw * float(v.get("mlp_ratio", 4.0)))), vision_eps=1e-5, **text))


# Entries OpenAI's released state dicts carry besides the weights; build_model deletes them.
OPENAI_EXTRA_KEYS = ("input_resolution", "context_length", "vocab_size")


def hparams_from_openai_state(sd, act="quick_gelu"):
    """As clip/model.py's build_model infers them: a ViT when visual.proj exists (heads =
    width // 64), else a ModifiedResNet (blocks per stage = distinct indices under
    visual.layerN, width from layer1.0.conv1, image size 32 x the attention pool's grid, heads =
    width * 32 // 64); the text tower's heads = width // 64."""
    tw = sd["ln_final.weight"].shape[0]
    tl = len({k.split(".")[2] for k in sd if k.startswith("transformer.resblocks.")})
    text = dict(
        text_width=tw, text_layers=tl, text_heads=tw // 64,
        text_mlp=sd["transformer.resblocks.0.mlp.c_fc.weight"].shape[0], text_eps=1e-5,
        context_length=sd["positional_embedding"].shape[0],
        vocab_size=sd["token_embedding.weight"].shape[0],
        embed_dim=sd["text_projection"].shape[1], act=act,
        mean=list(OPENAI_MEAN), std=list(OPENAI_STD),
    )
    if "visual.proj" not in sd:
        layers = [len({k.split(".")[2] for k in sd if k.startswith(f"visual.layer{b}.")})
                  for b in (1, 2, 3, 4)]
        width = sd["visual.layer1.0.conv1.weight"].shape[0]
        tokens = sd["visual.attnpool.positional_embedding"].shape[0]
        grid = round((tokens - 1) ** 0.5)
        if grid * grid + 1 != tokens:
            raise ValueError(f"visual.attnpool.positional_embedding has {tokens} rows: not a "
                             "square grid plus one")
        size = 32 * grid
        return _in_order(dict(image_size=size, patch_size=None, vision_width=width,
                              vision_layers=layers, vision_heads=width * 32 // 64,
                              resize_size=size, crop_size=size, **text))
    vw = sd["visual.conv1.weight"].shape[0]
    patch = sd["visual.conv1.weight"].shape[-1]
    grid = round((sd["visual.positional_embedding"].shape[0] - 1) ** 0.5)
    vl = len({k.split(".")[3] for k in sd if k.startswith("visual.transformer.resblocks.")})
    return _in_order(dict(
        image_size=patch * grid, patch_size=patch, vision_width=vw, vision_layers=vl,
        vision_heads=vw // 64, vision_mlp=sd["visual.transformer.resblocks.0.mlp.c_fc.weight"].shape[0],
        vision_eps=1e-5, resize_size=patch * grid, crop_size=patch * grid, **text))


_HF_LAYER = {
    "layer_norm1": "ln_1", "layer_norm2": "ln_2", "mlp.fc1": "mlp.c_fc", "mlp.fc2": "mlp.c_proj",
    "self_attn.out_proj": "attn.out_proj",
}


def hf_to_openai(sd):
    """Maps Hugging Face CLIPModel names to clip/model.py names; drops position_ids buffers."""
    out, qkv = OrderedDict(), {}
    for name, t in sd.items():
        if name.endswith("position_ids"):
            continue
        for tower, prefix in (("vision_model.", "visual."), ("text_model.", "")):
            if not name.startswith(tower):
                continue
            rest = name[len(tower):]
            if rest.startswith("encoder.layers."):
                n, sub = rest[len("encoder.layers."):].split(".", 1)
                base = f"{prefix}transformer.resblocks.{n}."
                if sub.startswith("self_attn.") and sub.split(".")[1] in ("q_proj", "k_proj", "v_proj"):
                    _, which, kind = sub.split(".")
                    qkv.setdefault((base, kind), {})[which[0]] = t
                    break
                for hf, oa in _HF_LAYER.items():
                    if sub.startswith(hf + "."):
                        out[base + oa + sub[len(hf):]] = t
                        break
                else:
                    raise KeyError(f"unknown tensor {name}")
                break
            simple = {
                "embeddings.class_embedding": "visual.class_embedding",
                "embeddings.patch_embedding.weight": "visual.conv1.weight",
                "embeddings.position_embedding.weight": f"{prefix}positional_embedding",
                "pre_layrnorm.weight": "visual.ln_pre.weight", "pre_layrnorm.bias": "visual.ln_pre.bias",
                "post_layernorm.weight": "visual.ln_post.weight",
                "post_layernorm.bias": "visual.ln_post.bias",
                "embeddings.token_embedding.weight": "token_embedding.weight",
                "final_layer_norm.weight": "ln_final.weight", "final_layer_norm.bias": "ln_final.bias",
            }
            if rest not in simple:
                raise KeyError(f"unknown tensor {name}")
            out[simple[rest]] = t
            break
        else:
            if name == "visual_projection.weight":
                out["visual.proj"] = t.t().contiguous()
            elif name == "text_projection.weight":
                out["text_projection"] = t.t().contiguous()
            elif name == "logit_scale":
                out["logit_scale"] = t
            else:
                raise KeyError(f"unknown tensor {name}")
    for (base, kind), parts in qkv.items():
        if set(parts) != {"q", "k", "v"}:
            raise KeyError(f"incomplete q/k/v projections in {base}")
        out[f"{base}attn.in_proj_{kind}"] = torch.cat([parts["q"], parts["k"], parts["v"]], 0)
    return out


def read_torchscript_state(path):
    """The state dict of an OpenAI TorchScript archive (ViT-B-32.pt, RN50.pt, ...), as clip.load
    (jit=False) takes it: torch.jit.load(...).state_dict(), without the input_resolution,
    context_length and vocab_size entries build_model deletes. Tensors keep their stored dtypes
    (fp16 where convert_weights cast them)."""
    sd = torch.jit.load(path, map_location="cpu").state_dict()
    return OrderedDict((k, v) for k, v in sd.items() if k not in OPENAI_EXTRA_KEYS)


def torchscript_in(folder):
    """The one *.pt archive in folder, or None."""
    found = sorted(f for f in os.listdir(folder) if f.endswith(".pt"))
    if len(found) > 1:
        raise ValueError(f"{folder}: several TorchScript archives ({', '.join(found)})")
    return os.path.join(folder, found[0]) if found else None


def load_checkpoint(folder):
    """Returns (hparams, OpenAI-named state dict, tokenizer) for a checkpoint folder (or an
    OpenAI .pt file, whose tokenizer is the bpe_simple_vocab_16e6.txt.gz beside it). Weights
    are returned in fp32: a checkpoint stored in fp16 is computed from its fp16-rounded values."""
    pt = None
    if os.path.isfile(folder):
        pt, folder = folder, os.path.dirname(os.path.abspath(folder))

    def path(n):
        return os.path.join(folder, n)

    if pt:
        sd = read_torchscript_state(pt)
    elif os.path.exists(path("model.safetensors")):
        sd = read_safetensors(path("model.safetensors"))
    elif os.path.exists(path("open_clip_model.safetensors")):
        sd = read_safetensors(path("open_clip_model.safetensors"))
    elif os.path.exists(path("pytorch_model.bin")):
        sd = torch.load(path("pytorch_model.bin"), map_location="cpu")
    elif os.path.exists(path("open_clip_pytorch_model.bin")):
        sd = torch.load(path("open_clip_pytorch_model.bin"), map_location="cpu")
    elif torchscript_in(folder):
        pt = torchscript_in(folder)
        sd = read_torchscript_state(pt)
    else:
        raise FileNotFoundError(f"{folder}: no model.safetensors, open_clip_model.safetensors, "
                                "pytorch_model.bin, open_clip_pytorch_model.bin or *.pt")
    sd = OrderedDict((k, v.float() if v.is_floating_point() else v) for k, v in sd.items())
    openai = "visual.conv1.weight" in sd
    if not openai:
        sd = hf_to_openai(sd)
    if os.path.exists(path("config.json")) and not openai:
        pre = None
        if os.path.exists(path("preprocessor_config.json")):
            pre = json.load(open(path("preprocessor_config.json")))
        hp = hparams_from_hf_config(json.load(open(path("config.json"))), pre)
    elif os.path.exists(path("open_clip_config.json")) and not pt:
        hp = hparams_from_open_clip_config(json.load(open(path("open_clip_config.json"))))
    else:
        hp = hparams_from_openai_state(sd)
    if "logit_scale" not in sd:
        sd["logit_scale"] = torch.tensor(np.log(1 / 0.07), dtype=torch.float32)
    tok = Tokenizer.from_folder(folder)
    return hp, sd, tok


# ---------------------------------------------------------------------------------------------
# Model (clip/model.py structure and names)
# ---------------------------------------------------------------------------------------------

class QuickGELU(nn.Module):
    def forward(self, x):
        return x * torch.sigmoid(1.702 * x)


class ResidualAttentionBlock(nn.Module):
    def __init__(self, width, heads, mlp, act, eps, attn_mask=None):
        super().__init__()
        self.attn = nn.MultiheadAttention(width, heads)
        self.ln_1 = nn.LayerNorm(width, eps=eps)
        self.mlp = nn.Sequential(OrderedDict([
            ("c_fc", nn.Linear(width, mlp)),
            ("gelu", QuickGELU() if act == "quick_gelu" else nn.GELU()),
            ("c_proj", nn.Linear(mlp, width)),
        ]))
        self.ln_2 = nn.LayerNorm(width, eps=eps)
        self.attn_mask = attn_mask

    def forward(self, x):
        h = self.ln_1(x)
        x = x + self.attn(h, h, h, need_weights=False, attn_mask=self.attn_mask)[0]
        return x + self.mlp(self.ln_2(x))


class Transformer(nn.Module):
    def __init__(self, width, layers, heads, mlp, act, eps, attn_mask=None):
        super().__init__()
        self.resblocks = nn.Sequential(*[
            ResidualAttentionBlock(width, heads, mlp, act, eps, attn_mask) for _ in range(layers)])

    def forward(self, x):
        return self.resblocks(x)


class VisionTransformer(nn.Module):
    def __init__(self, hp):
        super().__init__()
        w, p = hp["vision_width"], hp["patch_size"]
        grid = hp["image_size"] // p
        self.conv1 = nn.Conv2d(3, w, kernel_size=p, stride=p, bias=False)
        self.class_embedding = nn.Parameter(torch.zeros(w))
        self.positional_embedding = nn.Parameter(torch.zeros(grid * grid + 1, w))
        self.ln_pre = nn.LayerNorm(w, eps=hp["vision_eps"])
        self.transformer = Transformer(w, hp["vision_layers"], hp["vision_heads"],
                                       hp["vision_mlp"], hp["act"], hp["vision_eps"])
        self.ln_post = nn.LayerNorm(w, eps=hp["vision_eps"])
        self.proj = nn.Parameter(torch.zeros(w, hp["embed_dim"]))

    def forward(self, x):
        x = self.conv1(x)
        x = x.reshape(x.shape[0], x.shape[1], -1).permute(0, 2, 1)
        cls = self.class_embedding + torch.zeros(x.shape[0], 1, x.shape[-1], dtype=x.dtype)
        x = torch.cat([cls, x], dim=1)
        x = x + self.positional_embedding
        x = self.ln_pre(x)
        x = self.transformer(x.permute(1, 0, 2)).permute(1, 0, 2)
        x = self.ln_post(x[:, 0, :])
        return x @ self.proj


# OpenAI's ModifiedResNet: a ResNet-50-like tower with a three-convolution stem, average pools
# instead of strided convolutions (anti-aliasing), and attention pooling instead of the global
# average pool. Module and parameter names are model.py's, so released state dicts load strictly.

class Bottleneck(nn.Module):
    expansion = 4

    def __init__(self, inplanes, planes, stride=1):
        super().__init__()
        # Every convolution has stride 1: a stride-s block shrinks the map with an s x s average
        # pool between conv2 and conv3, and its shortcut pools likewise before its 1x1 conv.
        self.conv1 = nn.Conv2d(inplanes, planes, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(planes)
        self.relu1 = nn.ReLU(inplace=True)
        self.conv2 = nn.Conv2d(planes, planes, 3, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(planes)
        self.relu2 = nn.ReLU(inplace=True)
        self.avgpool = nn.AvgPool2d(stride) if stride > 1 else nn.Identity()
        self.conv3 = nn.Conv2d(planes, planes * self.expansion, 1, bias=False)
        self.bn3 = nn.BatchNorm2d(planes * self.expansion)
        self.relu3 = nn.ReLU(inplace=True)
        self.downsample = None
        if stride > 1 or inplanes != planes * self.expansion:
            # model.py names the pool "-1", so the weights are downsample.0 (conv) and
            # downsample.1 (BatchNorm) in every released state dict.
            self.downsample = nn.Sequential(OrderedDict([
                ("-1", nn.AvgPool2d(stride)),
                ("0", nn.Conv2d(inplanes, planes * self.expansion, 1, bias=False)),
                ("1", nn.BatchNorm2d(planes * self.expansion)),
            ]))

    def forward(self, x):
        out = self.relu1(self.bn1(self.conv1(x)))
        out = self.relu2(self.bn2(self.conv2(out)))
        out = self.bn3(self.conv3(self.avgpool(out)))
        shortcut = x if self.downsample is None else self.downsample(x)
        return self.relu3(out + shortcut)


class AttentionPool2d(nn.Module):
    """The mean of the final feature map, prepended to its HW positions, attends to all HW + 1
    tokens (positional embedding added, separate q/k/v projections); row 0 of the output,
    through c_proj, is the image embedding."""

    def __init__(self, grid, embed_dim, heads, output_dim):
        super().__init__()
        self.positional_embedding = nn.Parameter(torch.zeros(grid * grid + 1, embed_dim))
        self.k_proj = nn.Linear(embed_dim, embed_dim)
        self.q_proj = nn.Linear(embed_dim, embed_dim)
        self.v_proj = nn.Linear(embed_dim, embed_dim)
        self.c_proj = nn.Linear(embed_dim, output_dim)
        self.num_heads = heads

    def forward(self, x):
        x = x.flatten(2).permute(2, 0, 1)  # NCHW -> (HW)NC
        x = torch.cat([x.mean(dim=0, keepdim=True), x], dim=0)
        x = x + self.positional_embedding[:, None, :]
        out, _ = F.multi_head_attention_forward(
            query=x, key=x, value=x, embed_dim_to_check=x.shape[-1], num_heads=self.num_heads,
            q_proj_weight=self.q_proj.weight, k_proj_weight=self.k_proj.weight,
            v_proj_weight=self.v_proj.weight, in_proj_weight=None,
            in_proj_bias=torch.cat([self.q_proj.bias, self.k_proj.bias, self.v_proj.bias]),
            bias_k=None, bias_v=None, add_zero_attn=False, dropout_p=0.0,
            out_proj_weight=self.c_proj.weight, out_proj_bias=self.c_proj.bias,
            use_separate_proj_weight=True, training=False, need_weights=False)
        return out[0]


class ModifiedResNet(nn.Module):
    def __init__(self, hp):
        super().__init__()
        width, layers = hp["vision_width"], hp["vision_layers"]
        self.input_resolution = hp["image_size"]
        self.conv1 = nn.Conv2d(3, width // 2, kernel_size=3, stride=2, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(width // 2)
        self.conv2 = nn.Conv2d(width // 2, width // 2, kernel_size=3, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(width // 2)
        self.conv3 = nn.Conv2d(width // 2, width, kernel_size=3, padding=1, bias=False)
        self.bn3 = nn.BatchNorm2d(width)
        self.avgpool = nn.AvgPool2d(2)
        self.relu = nn.ReLU(inplace=True)
        inplanes = width
        for stage, blocks in enumerate(layers):
            planes = width * 2 ** stage
            stride = 1 if stage == 0 else 2
            seq = [Bottleneck(inplanes, planes, stride)]
            inplanes = planes * Bottleneck.expansion
            seq += [Bottleneck(inplanes, planes) for _ in range(1, blocks)]
            setattr(self, f"layer{stage + 1}", nn.Sequential(*seq))
        # The stem halves the size twice and stages 2-4 once each: the grid is image_size / 32.
        self.attnpool = AttentionPool2d(hp["image_size"] // 32, width * 32, hp["vision_heads"],
                                        hp["embed_dim"])

    def forward(self, x):
        for conv, bn in ((self.conv1, self.bn1), (self.conv2, self.bn2), (self.conv3, self.bn3)):
            x = self.relu(bn(conv(x)))
        x = self.avgpool(x)
        x = self.layer4(self.layer3(self.layer2(self.layer1(x))))
        return self.attnpool(x)


def is_resnet(hp):
    """build_model's rule: a tuple of four block counts means ModifiedResNet, an int a ViT."""
    return isinstance(hp["vision_layers"], (list, tuple))


class CLIP(nn.Module):
    def __init__(self, hp):
        super().__init__()
        self.hp = hp
        ctx = hp["context_length"]
        self.visual = ModifiedResNet(hp) if is_resnet(hp) else VisionTransformer(hp)
        mask = torch.empty(ctx, ctx).fill_(float("-inf")).triu_(1)
        self.transformer = Transformer(hp["text_width"], hp["text_layers"], hp["text_heads"],
                                       hp["text_mlp"], hp["act"], hp["text_eps"], mask)
        self.token_embedding = nn.Embedding(hp["vocab_size"], hp["text_width"])
        self.positional_embedding = nn.Parameter(torch.zeros(ctx, hp["text_width"]))
        self.ln_final = nn.LayerNorm(hp["text_width"], eps=hp["text_eps"])
        self.text_projection = nn.Parameter(torch.zeros(hp["text_width"], hp["embed_dim"]))
        self.logit_scale = nn.Parameter(torch.zeros(()))

    def encode_image(self, image):
        return self.visual(image)

    def encode_text(self, text):
        x = self.token_embedding(text) + self.positional_embedding
        x = self.transformer(x.permute(1, 0, 2)).permute(1, 0, 2)
        x = self.ln_final(x)
        return x[torch.arange(x.shape[0]), text.argmax(dim=-1)] @ self.text_projection

    def forward(self, image, text):
        """model.py's forward: the two logit matrices (a TorchScript archive traces it)."""
        img = self.encode_image(image)
        txt = self.encode_text(text)
        img = img / img.norm(dim=-1, keepdim=True)
        txt = txt / txt.norm(dim=-1, keepdim=True)
        logits_per_image = self.logit_scale.exp() * img @ txt.t()
        return logits_per_image, logits_per_image.t()


def openai_fp16_names(model):
    """The state-dict names OpenAI's convert_weights casts to fp16 in the models it released:
    Conv1d/Conv2d/Linear weights and biases (attention out_proj and the attention pool's q/k/v/c
    projections are Linears), MultiheadAttention's in_proj/q/k/v weights, in_proj_bias, bias_k
    and bias_v, and any attribute named text_projection or proj. Everything else -- LayerNorm,
    BatchNorm (and its running statistics), embeddings, logit_scale -- stays fp32."""
    names = set()
    for prefix, mod in model.named_modules():
        pre = prefix + "." if prefix else ""
        if isinstance(mod, (nn.Conv1d, nn.Conv2d, nn.Linear)):
            names.update(pre + n for n in ("weight", "bias") if getattr(mod, n) is not None)
        if isinstance(mod, nn.MultiheadAttention):
            names.update(pre + n for n in ("in_proj_weight", "q_proj_weight", "k_proj_weight",
                                           "v_proj_weight", "in_proj_bias", "bias_k", "bias_v")
                         if getattr(mod, n, None) is not None)
        names.update(pre + n for n in ("text_projection", "proj")
                     if isinstance(getattr(mod, n, None), torch.Tensor))
    return names


def load_model(folder):
    """(model in eval mode, hparams, tokenizer) for a checkpoint folder or .pt file; strict
    load. eval() makes BatchNorm use its running statistics."""
    hp, sd, tok = load_checkpoint(folder)
    model = CLIP(hp)
    missing, unexpected = model.load_state_dict(sd, strict=False)
    if missing or unexpected:
        raise KeyError(f"{folder}: missing tensors {missing}, unexpected tensors {unexpected}")
    model.eval()
    return model, hp, tok


# ---------------------------------------------------------------------------------------------
# Preprocessing: clip.py's _transform (torchvision 0.14 semantics, re-implemented on Pillow)
# ---------------------------------------------------------------------------------------------

def resize_shorter(img, size):
    """torchvision Resize(size, BICUBIC) on a PIL image: the shorter side becomes `size`, the
    longer int(size * long / short), truncated; an image already that size is left alone."""
    w, h = img.size
    short, long = (w, h) if w <= h else (h, w)
    new_short, new_long = size, int(size * long / short)
    nw, nh = (new_short, new_long) if w <= h else (new_long, new_short)
    if (nw, nh) == (w, h):
        return img
    return img.resize((nw, nh), Image.BICUBIC)


def center_crop(img, size):
    w, h = img.size
    if w < size or h < size:
        raise ValueError("image smaller than the crop after resize")
    top = int(round((h - size) / 2.0))
    left = int(round((w - size) / 2.0))
    return img.crop((left, top, left + size, top + size))


def preprocess_pil(img, hp):
    """PIL image -> float32 tensor [3, crop, crop], exactly as _transform (ToTensor divides a
    float32 tensor by 255, Normalize subtracts and divides float32 mean/std in place)."""
    img = resize_shorter(img, hp["resize_size"])
    img = center_crop(img, hp["crop_size"])
    img = img.convert("RGB")
    a = np.asarray(img, dtype=np.uint8)
    t = torch.from_numpy(a.copy()).permute(2, 0, 1).contiguous().to(torch.float32).div(255)
    mean = torch.as_tensor(hp["mean"], dtype=torch.float32).view(-1, 1, 1)
    std = torch.as_tensor(hp["std"], dtype=torch.float32).view(-1, 1, 1)
    return t.sub_(mean).div_(std)


def preprocess_file(path, hp):
    with Image.open(path) as img:
        img.load()
        return preprocess_pil(img, hp)


# One tokenizer, checked against OpenAI's own tokenizations: tools/ref_tokenizer.py's.
Tokenizer = ref_tokenizer.Tokenizer
