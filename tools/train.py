#!/usr/bin/python3
"""tools/train.py -- trains the small default CLIP on tools/shapes.py pictures (PyTorch).

The model is OpenAI's CLIP architecture at a small size, written with Hugging Face's module
and tensor names so the exported folder is an ordinary HF CLIP checkpoint that
`clip-convert` reads like any other: ViT (patch 32, 224 px, pre-LN blocks, class token,
ln_post, projection without bias) and a causal text transformer (features at the EOT
position), QuickGELU, LayerNorm eps 1e-5, a learned logit scale. The vocabulary is our own
(tools/build_vocab.py), context 77.

Pictures are drawn fresh for every batch (seed --seed, consecutive indices), so nothing is
seen twice; each gets one caption from shapes.TEMPLATES. Every other batch holds only one or
two colours, and auxiliary shape/colour heads (training only, not exported) classify both
towers' embeddings, so shape has to be learnt rather than colour alone. Because many pictures in a batch
share a description, the contrastive targets are not just the diagonal: caption j counts as
a match for picture i whenever every attribute the caption states (colour, shape, size,
background) is true of picture i, and both directions' cross-entropies spread the target
evenly over the matches. Images are normalized with OpenAI's mean/std, exactly what the
engine's preprocessing feeds the deployed model (a 224 x 224 picture passes the resize and
crop unchanged).

    tools/train.py --out DIR [--steps N | --minutes M] [--batch B] [--seed S] [--eval-seed S]
        trains, logs progress, measures zero-shot top-1 on --eval-count fresh pictures
        of --eval-seed over the full colour x shape label set, and writes DIR/:
        config.json, preprocessor_config.json, vocab.json, merges.txt, model.safetensors,
        train_log.json (the recipe and the measurements)
    tools/train.py --check-reference ../shared/reference
        loads the reference tiny-hf checkpoint into this model and compares its text
        embeddings with expected.json (shows the architecture and naming are OpenAI's)
"""

import argparse
import ctypes
import json
import math
import os
import struct
import sys
import time

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import build_vocab  # noqa: E402
import ref_tokenizer  # noqa: E402
import shapes  # noqa: E402

MEAN = (0.48145466, 0.4578275, 0.40821073)
STD = (0.26862954, 0.26130258, 0.27577711)

# ----------------------------------------------------------------------------------------
# The model (Hugging Face CLIPModel's structure and names)
# ----------------------------------------------------------------------------------------


class QuickGELU(nn.Module):
    def forward(self, x):
        return x * torch.sigmoid(1.702 * x)


class Attention(nn.Module):
    def __init__(self, width, heads):
        super().__init__()
        self.heads = heads
        self.q_proj = nn.Linear(width, width)
        self.k_proj = nn.Linear(width, width)
        self.v_proj = nn.Linear(width, width)
        self.out_proj = nn.Linear(width, width)

    def forward(self, x, mask=None):
        b, t, w = x.shape
        d = w // self.heads

        def split(y):
            return y.view(b, t, self.heads, d).transpose(1, 2)

        q = split(self.q_proj(x)) * d ** -0.5
        k, v = split(self.k_proj(x)), split(self.v_proj(x))
        scores = q @ k.transpose(-1, -2)
        if mask is not None:
            scores = scores + mask
        y = scores.softmax(dim=-1) @ v
        return self.out_proj(y.transpose(1, 2).reshape(b, t, w))


class MLP(nn.Module):
    def __init__(self, width, hidden, act):
        super().__init__()
        self.fc1 = nn.Linear(width, hidden)
        self.fc2 = nn.Linear(hidden, width)
        self.act = act

    def forward(self, x):
        return self.fc2(self.act(self.fc1(x)))


class Layer(nn.Module):
    def __init__(self, width, heads, hidden, act, eps):
        super().__init__()
        self.self_attn = Attention(width, heads)
        self.layer_norm1 = nn.LayerNorm(width, eps=eps)
        self.mlp = MLP(width, hidden, act)
        self.layer_norm2 = nn.LayerNorm(width, eps=eps)

    def forward(self, x, mask=None):
        x = x + self.self_attn(self.layer_norm1(x), mask)
        return x + self.mlp(self.layer_norm2(x))


class Encoder(nn.Module):
    def __init__(self, width, layers, heads, hidden, act, eps):
        super().__init__()
        self.layers = nn.ModuleList([Layer(width, heads, hidden, act, eps) for _ in range(layers)])

    def forward(self, x, mask=None):
        for layer in self.layers:
            x = layer(x, mask)
        return x


class VisionEmbeddings(nn.Module):
    def __init__(self, width, image_size, patch_size):
        super().__init__()
        self.class_embedding = nn.Parameter(torch.randn(width) * width ** -0.5)
        self.patch_embedding = nn.Conv2d(3, width, patch_size, stride=patch_size, bias=False)
        self.position_embedding = nn.Embedding((image_size // patch_size) ** 2 + 1, width)

    def forward(self, pixels):
        x = self.patch_embedding(pixels).flatten(2).transpose(1, 2)
        cls = self.class_embedding.expand(x.shape[0], 1, -1)
        return torch.cat([cls, x], dim=1) + self.position_embedding.weight


class VisionModel(nn.Module):
    def __init__(self, c, act):
        super().__init__()
        w, eps = c["hidden_size"], c["layer_norm_eps"]
        self.embeddings = VisionEmbeddings(w, c["image_size"], c["patch_size"])
        self.pre_layrnorm = nn.LayerNorm(w, eps=eps)
        self.encoder = Encoder(w, c["num_hidden_layers"], c["num_attention_heads"],
                               c["intermediate_size"], act, eps)
        self.post_layernorm = nn.LayerNorm(w, eps=eps)

    def forward(self, pixels):
        x = self.encoder(self.pre_layrnorm(self.embeddings(pixels)))
        return self.post_layernorm(x[:, 0])


class TextEmbeddings(nn.Module):
    def __init__(self, width, vocab, context):
        super().__init__()
        self.token_embedding = nn.Embedding(vocab, width)
        self.position_embedding = nn.Embedding(context, width)

    def forward(self, ids):
        return self.token_embedding(ids) + self.position_embedding.weight[: ids.shape[1]]


class TextModel(nn.Module):
    def __init__(self, c, act):
        super().__init__()
        w, eps = c["hidden_size"], c["layer_norm_eps"]
        self.embeddings = TextEmbeddings(w, c["vocab_size"], c["max_position_embeddings"])
        self.encoder = Encoder(w, c["num_hidden_layers"], c["num_attention_heads"],
                               c["intermediate_size"], act, eps)
        self.final_layer_norm = nn.LayerNorm(w, eps=eps)

    def forward(self, ids):
        # With the causal mask nothing after EOT reaches it, so the ids may be cut after
        # the longest text's EOT; the features are those at EOT (the largest id).
        t = ids.shape[1]
        mask = torch.full((t, t), float("-inf")).triu(1)
        x = self.final_layer_norm(self.encoder(self.embeddings(ids), mask))
        return x[torch.arange(ids.shape[0]), ids.argmax(dim=-1)]


class CLIP(nn.Module):
    def __init__(self, config):
        super().__init__()
        act = {"quick_gelu": QuickGELU(), "gelu": nn.GELU()}[config["vision_config"]["hidden_act"]]
        vc, tc, e = config["vision_config"], config["text_config"], config["projection_dim"]
        self.vision_model = VisionModel(vc, act)
        self.text_model = TextModel(tc, act)
        self.visual_projection = nn.Linear(vc["hidden_size"], e, bias=False)
        self.text_projection = nn.Linear(tc["hidden_size"], e, bias=False)
        self.logit_scale = nn.Parameter(torch.tensor([config["logit_scale_init_value"]]))
        # OpenAI's initialisation: linear layers keep PyTorch's default (uniform, about
        # 1/sqrt(3 fan_in)), which makes attention peaked enough to learn from the start;
        # embeddings and projections as in clip/model.py. (A uniform 0.02 everywhere left
        # the class token blind to the picture for hundreds of steps.)
        nn.init.normal_(self.text_model.embeddings.token_embedding.weight, std=0.02)
        nn.init.normal_(self.text_model.embeddings.position_embedding.weight, std=0.01)
        nn.init.normal_(self.vision_model.embeddings.position_embedding.weight,
                        std=vc["hidden_size"] ** -0.5)
        nn.init.normal_(self.visual_projection.weight, std=vc["hidden_size"] ** -0.5)
        nn.init.normal_(self.text_projection.weight, std=tc["hidden_size"] ** -0.5)

    def encode_image(self, pixels):
        return self.visual_projection(self.vision_model(pixels))

    def encode_text(self, ids):
        return self.text_projection(self.text_model(ids))


# ----------------------------------------------------------------------------------------
# Checkpoint files (safetensors written and read by hand)
# ----------------------------------------------------------------------------------------

def save_safetensors(path, tensors):
    header, blobs, offset = {}, [], 0
    for name in sorted(tensors):
        data = tensors[name].detach().to(torch.float32).contiguous().numpy().astype("<f4").tobytes()
        header[name] = {"dtype": "F32", "shape": list(tensors[name].shape),
                        "data_offsets": [offset, offset + len(data)]}
        blobs.append(data)
        offset += len(data)
    header["__metadata__"] = {"format": "pt"}
    head = json.dumps(header, separators=(",", ":")).encode()
    head += b" " * (-len(head) % 8)
    with open(path, "wb") as f:
        f.write(struct.pack("<Q", len(head)))
        f.write(head)
        for b in blobs:
            f.write(b)


def load_safetensors(path):
    with open(path, "rb") as f:
        data = f.read()
    (n,) = struct.unpack("<Q", data[:8])
    header = json.loads(data[8:8 + n])
    out = {}
    for name, info in header.items():
        if name == "__metadata__":
            continue
        assert info["dtype"] == "F32", f"{name}: {info['dtype']}"
        a, b = info["data_offsets"]
        arr = np.frombuffer(data, dtype="<f4", count=(b - a) // 4, offset=8 + n + a)
        out[name] = torch.from_numpy(arr.copy()).reshape(info["shape"])
    return out


def make_config(args, vocab_size, eot, sot):
    return {
        "architectures": ["CLIPModel"],
        "model_type": "clip",
        "projection_dim": args.embed,
        "logit_scale_init_value": math.log(1 / args.temperature),
        "torch_dtype": "float32",
        "text_config": {
            "hidden_size": args.text_width, "intermediate_size": 4 * args.text_width,
            "num_attention_heads": args.text_width // 64, "num_hidden_layers": args.text_layers,
            "max_position_embeddings": build_vocab.CONTEXT_LENGTH, "vocab_size": vocab_size,
            "hidden_act": "quick_gelu", "layer_norm_eps": 1e-05,
            "bos_token_id": sot, "eos_token_id": eot, "pad_token_id": 0,
            "projection_dim": args.embed,
        },
        "vision_config": {
            "hidden_size": args.vision_width, "intermediate_size": 4 * args.vision_width,
            "num_attention_heads": args.vision_width // 64,
            "num_hidden_layers": args.vision_layers,
            "image_size": shapes.IMAGE_SIZE, "patch_size": args.patch, "hidden_act": "quick_gelu",
            "layer_norm_eps": 1e-05, "num_channels": 3, "projection_dim": args.embed,
        },
    }


PREPROCESSOR = {
    "crop_size": shapes.IMAGE_SIZE, "do_center_crop": True, "do_normalize": True,
    "do_resize": True, "image_mean": list(MEAN), "image_std": list(STD), "resample": 3,
    "size": shapes.IMAGE_SIZE,
}

# ----------------------------------------------------------------------------------------
# Data
# ----------------------------------------------------------------------------------------

_MEAN = torch.tensor(MEAN).view(1, 3, 1, 1)
_STD = torch.tensor(STD).view(1, 3, 1, 1)


def to_pixels(images):
    """uint8 N x H x W x 3 -> OpenAI-normalized float N x 3 x H x W (torchvision's order of
    operations: /255, - mean, / std; done in place, these tensors are large)."""
    x = torch.as_tensor(images).permute(0, 3, 1, 2).contiguous().float()
    return x.div_(255.0).sub_(_MEAN).div_(_STD)


def batch_colours(seed, step):
    """Every other batch draws all its pictures from one or two colours (its own stream):
    there colour alone cannot tell the captions apart, so the loss has to look at shape."""
    if step % 2 == 0:
        return None
    rng = shapes._rng(seed, 2_000_000_000 + step)
    return list(rng.choice(shapes.COLOURS_LIST, size=int(rng.integers(1, 3)), replace=False))


def batch(seed, start, n, tok, colours=None):
    images, metas, ids, attrs = [], [], [], []
    for i in range(start, start + n):
        forced = colours[i % len(colours)] if colours else None
        img, meta = shapes.render(seed, i, colour=forced)
        # The caption's choice has its own stream so it never shifts the pictures.
        text, stated = shapes.caption(meta, shapes._rng(seed, 1_000_000_000 + i))
        images.append(img)
        metas.append(meta)
        ids.append(tok.tokenize(text))
        attrs.append(stated)
    # Caption j matches picture i when everything caption j states is true of picture i.
    match = np.array([[all(mi[a] == metas[j][a] for a in attrs[j]) for j in range(n)]
                      for mi in metas], dtype=np.float32)
    ids = torch.tensor(ids)
    ids = ids[:, : int((ids != 0).sum(dim=1).max())]
    # Class targets for the auxiliary heads: -100 (ignored) where a caption does not state it.
    img_cls = torch.tensor([[shapes.SHAPES.index(m["shape"]), shapes.COLOURS_LIST.index(m["colour"])]
                            for m in metas])
    txt_cls = torch.tensor([[img_cls[k, 0] if "shape" in attrs[k] else -100,
                             img_cls[k, 1] if "colour" in attrs[k] else -100] for k in range(n)])
    # uint8 crosses from the worker process: a quarter of the bytes of the floats.
    return torch.from_numpy(np.stack(images)), ids, torch.from_numpy(match), img_cls, txt_cls


class Stream(torch.utils.data.IterableDataset):
    """Batch after batch of fresh pictures, drawn in a worker process while the model trains."""

    def __init__(self, seed, size, tok):
        super().__init__()
        self.seed, self.size, self.tok = seed, size, tok

    def __iter__(self):
        step = 0
        while True:
            yield batch(self.seed, step * self.size, self.size, self.tok,
                        batch_colours(self.seed, step))
            step += 1


class AuxHeads(nn.Module):
    """Training only, never exported: linear shape and colour classifiers shared by both
    towers' normalized embeddings. They give each tower a direct signal to separate shapes
    (contrastive learning alone sat at chance on shape while colour was learnt), and being
    shared they pull a picture and a caption of the same shape towards the same direction."""

    def __init__(self, embed):
        super().__init__()
        self.shape = nn.Linear(embed, len(shapes.SHAPES))
        self.colour = nn.Linear(embed, len(shapes.COLOURS_LIST))

    def forward(self, emb, cls):
        # Normalized embeddings have norm 1: scaled so the heads' logits can be decisive.
        e = emb * 10.0
        return (F.cross_entropy(self.shape(e), cls[:, 0], ignore_index=-100)
                + F.cross_entropy(self.colour(e), cls[:, 1], ignore_index=-100))


def loss_fn(model, heads, pixels, ids, match, img_cls, txt_cls, aux_weight):
    img = F.normalize(model.encode_image(pixels), dim=-1)
    txt = F.normalize(model.encode_text(ids), dim=-1)
    logits = model.logit_scale.exp().clamp(max=100) * img @ txt.t()
    li = -(match / match.sum(1, keepdim=True) * logits.log_softmax(dim=1)).sum(1).mean()
    lt = -(match / match.sum(0, keepdim=True) * logits.log_softmax(dim=0)).sum(0).mean()
    contrastive = (li + lt) / 2
    aux = heads(img, img_cls) + heads(txt, txt_cls)
    return contrastive + aux_weight * aux, contrastive


# ----------------------------------------------------------------------------------------
# Zero-shot evaluation
# ----------------------------------------------------------------------------------------

def eval_set(seed, count):
    """The held-out pictures, drawn once (uint8) and reused at every evaluation."""
    imgs, metas = zip(*[shapes.render(seed, i) for i in range(count)])
    return np.stack(imgs), list(metas)


@torch.no_grad()
def zero_shot(model, tok, pictures, chunk=64):
    """(top-1, per label, per background, shape of the best label right, colour right)."""
    model.eval()
    prompts = [shapes.prompt(c, s) for c, s in shapes.LABELS]
    txt = F.normalize(model.encode_text(torch.tensor([tok.tokenize(p) for p in prompts])), dim=-1)
    per = {p: [0, 0] for p in prompts}
    by_bg, correct, shape_ok, colour_ok = {}, 0, 0, 0
    all_imgs, all_metas = pictures
    count = len(all_metas)
    for start in range(0, count, chunk):
        imgs, metas = all_imgs[start:start + chunk], all_metas[start:start + chunk]
        img = F.normalize(model.encode_image(to_pixels(imgs)), dim=-1)
        best = (img @ txt.t()).argmax(dim=1).tolist()
        for m, b in zip(metas, best):
            truth = shapes.prompt(m["colour"], m["shape"])
            ok = prompts[b] == truth
            colour_ok += shapes.LABELS[b][0] == m["colour"]
            shape_ok += shapes.LABELS[b][1] == m["shape"]
            correct += ok
            per[truth][0] += ok
            per[truth][1] += 1
            bg = m["background"] if m["background"] in ("light", "dark", "noisy") else "colour"
            by_bg.setdefault(bg, [0, 0])
            by_bg[bg][0] += ok
            by_bg[bg][1] += 1
    model.train()
    return correct / count, per, by_bg, shape_ok / count, colour_ok / count


# ----------------------------------------------------------------------------------------
# Reference check
# ----------------------------------------------------------------------------------------

def check_reference(ref_dir):
    folder = os.path.join(ref_dir, "tiny-hf")
    with open(os.path.join(folder, "config.json")) as f:
        config = json.load(f)
    model = CLIP(config)
    state = load_safetensors(os.path.join(folder, "model.safetensors"))
    state = {k: v for k, v in state.items() if not k.endswith("position_ids")}
    model.load_state_dict(state, strict=True)
    model.eval()
    with open(os.path.join(ref_dir, "expected.json")) as f:
        expected = json.load(f)["models"]["tiny-hf"]["texts"]
    worst = 1.0
    with torch.no_grad():
        for t in expected:
            got = model.encode_text(torch.tensor([t["ids"]]))[0]
            want = torch.tensor(t["embedding"])
            worst = min(worst, F.cosine_similarity(got, want, dim=0).item())
    print(f"tiny-hf: {len(expected)} texts, worst cosine {worst:.7f}")
    return 0 if worst > 0.99999 else 1


# ----------------------------------------------------------------------------------------
# Training
# ----------------------------------------------------------------------------------------

def write_model(out, config, state):
    """The exported checkpoint: the plain CLIP (the auxiliary heads are not part of it)."""
    with open(os.path.join(out, "config.json"), "w") as f:
        json.dump(config, f, indent=2)
    with open(os.path.join(out, "preprocessor_config.json"), "w") as f:
        json.dump(PREPROCESSOR, f, indent=2)
    save_safetensors(os.path.join(out, "model.safetensors"), state)


def main(argv):
    ap = argparse.ArgumentParser(description="Train the small default CLIP on shapes.")
    ap.add_argument("--out", help="output Hugging Face folder")
    ap.add_argument("--check-reference", metavar="DIR")
    ap.add_argument("--init", metavar="DIR",
                    help="start from this folder's model.safetensors (same config) instead of "
                         "random weights")
    ap.add_argument("--seed", type=int, default=1, help="picture stream and init seed")
    ap.add_argument("--steps", type=int, default=700)
    ap.add_argument("--minutes", type=float, default=0,
                    help="train for this long instead (the schedule then runs on the clock)")
    ap.add_argument("--batch", type=int, default=128)
    ap.add_argument("--lr", type=float, default=2e-3)
    ap.add_argument("--warmup", type=float, default=0.03, help="fraction of the run")
    ap.add_argument("--temperature", type=float, default=0.05,
                    help="initial temperature (the logit scale starts at its inverse, learned)")
    ap.add_argument("--clip-grad", type=float, default=1.0, help="gradient norm limit")
    ap.add_argument("--aux-weight", type=float, default=1.0,
                    help="weight of the auxiliary shape/colour classification loss")
    ap.add_argument("--weight-decay", type=float, default=0.05)
    ap.add_argument("--patch", type=int, default=32)
    ap.add_argument("--vision-width", type=int, default=128)
    ap.add_argument("--vision-layers", type=int, default=4)
    ap.add_argument("--text-width", type=int, default=128)
    ap.add_argument("--text-layers", type=int, default=3)
    ap.add_argument("--embed", type=int, default=128)
    ap.add_argument("--eval-seed", type=int, default=7)
    ap.add_argument("--eval-count", type=int, default=1024)
    ap.add_argument("--eval-every", type=int, default=100)
    ap.add_argument("--threads", type=int, default=1,
                    help="torch threads (1 beats 2 on a busy 2-core machine; pictures are drawn "
                         "in a second process)")
    ap.add_argument("--eval-during", type=int, default=256,
                    help="pictures of --eval-seed measured every --eval-every steps; the best "
                         "of these checkpoints is the one written")
    ap.add_argument("--bf16", action="store_true",
                    help="run the forward and backward in bfloat16 (torch.autocast; the weights "
                         "and the optimizer stay float32): 1.7x the steps per minute on a CPU "
                         "with AVX-512 BF16")
    ap.add_argument("--log", help="progress log file (default: stdout)")
    args = ap.parse_args(argv)

    if args.check_reference:
        return check_reference(args.check_reference)
    if not args.out:
        ap.error("--out is required")

    torch.set_num_threads(args.threads)
    torch.manual_seed(args.seed)
    # Tiny gradients in Adam's second moment go subnormal, which is very slow on x86.
    torch.set_flush_denormal(True)
    # Every activation here is a few MB: glibc would mmap and unmap each one, paying page
    # faults on every op. Keep freed memory in the heap instead (32 MB is mallopt's maximum).
    libc = ctypes.CDLL("libc.so.6")
    libc.mallopt(-3, 32 << 20)   # M_MMAP_THRESHOLD
    libc.mallopt(-1, 1 << 30)    # M_TRIM_THRESHOLD
    logf = open(args.log, "a", buffering=1) if args.log else sys.stdout

    def log(msg):
        logf.write(f"[{time.strftime('%H:%M:%S')}] {msg}\n")

    os.makedirs(args.out, exist_ok=True)
    merges = build_vocab.learn_merges(build_vocab.caption_corpus(), 1000)
    vocab = build_vocab.save(args.out, merges)
    tok = ref_tokenizer.Tokenizer.from_dir(args.out)
    config = make_config(args, len(vocab), tok.eot, tok.sot)
    model = CLIP(config)
    heads = AuxHeads(args.embed)
    if args.init:
        model.load_state_dict(load_safetensors(os.path.join(args.init, "model.safetensors")))
    n_params = sum(p.numel() for p in model.parameters())
    log(f"vocab {len(vocab)} ({len(merges)} merges), {n_params} parameters, {vars(args)}")

    decay = [p for n, p in model.named_parameters() if p.dim() >= 2 and "embedding" not in n]
    rest = [p for n, p in model.named_parameters() if not (p.dim() >= 2 and "embedding" not in n)]
    opt = torch.optim.AdamW([{"params": decay, "weight_decay": args.weight_decay},
                             {"params": rest + list(heads.parameters()), "weight_decay": 0.0}],
                            lr=args.lr, betas=(0.9, 0.98))

    def progress(step):
        if args.minutes:
            return (time.time() - t0) / (60 * args.minutes)
        return step / args.steps

    def lr_at(p):
        if p < args.warmup:
            return args.lr * max(p, 0.002) / args.warmup
        return args.lr * 0.5 * (1 + math.cos(math.pi * min(1.0, (p - args.warmup) / (1 - args.warmup))))

    stream = torch.utils.data.DataLoader(Stream(args.seed, args.batch, tok), batch_size=None,
                                         num_workers=1, prefetch_factor=4)
    probe = eval_set(args.eval_seed, args.eval_during)
    best = {"top1": -1.0, "step": 0, "state": None}
    t0 = time.time()
    t_data = 0.0
    history = []
    step = 0
    batches = iter(stream)
    while True:
        p = progress(step)
        if p >= 1:
            break
        td = time.time()
        images, ids, match, img_cls, txt_cls = next(batches)
        t_data += time.time() - td
        pixels = to_pixels(images)
        lr = lr_at(p)
        for g in opt.param_groups:
            g["lr"] = lr
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=args.bf16):
            loss, contrastive = loss_fn(model, heads, pixels, ids, match, img_cls, txt_cls,
                                        args.aux_weight)
        opt.zero_grad()
        loss.backward()
        torch.nn.utils.clip_grad_norm_(list(model.parameters()) + list(heads.parameters()),
                                       args.clip_grad)
        opt.step()
        step += 1
        if step % 25 == 0:
            log(f"step {step} loss {loss.item():.4f} contrastive {contrastive.item():.4f} scale {model.logit_scale.exp().item():.1f} "
                f"lr {lr:.2e} elapsed {time.time() - t0:.0f}s (waiting for data {t_data:.0f}s)")
        if step % args.eval_every == 0:
            acc, _, by_bg, shape_acc, colour_acc = zero_shot(model, tok, probe)
            history.append({"step": step, "seconds": round(time.time() - t0), "top1": acc,
                            "shape": shape_acc, "colour": colour_acc})
            log(f"step {step} zero-shot top-1 ({args.eval_during} pictures) {acc:.3f} "
                f"shape {shape_acc:.3f} colour {colour_acc:.3f} "
                + " ".join(f"{k} {v[0]}/{v[1]}" for k, v in sorted(by_bg.items())))
            if acc > best["top1"]:
                best = {"top1": acc, "step": step,
                        "state": {k: v.detach().clone() for k, v in model.state_dict().items()}}
                # Written at once, so a run cut short still leaves its best model behind.
                write_model(args.out, config, model.state_dict())
    train_time = time.time() - t0
    log(f"trained {step} steps ({step * args.batch} pictures) in {train_time:.0f}s")
    acc, _, _, _, _ = zero_shot(model, tok, probe)
    if acc < best["top1"]:
        log(f"the last step measures {acc:.3f}, step {best['step']} {best['top1']:.3f}: keeping that")
        model.load_state_dict(best["state"])
    else:
        best["step"] = step

    acc, per, by_bg, shape_acc, colour_acc = zero_shot(
        model, tok, eval_set(args.eval_seed, args.eval_count))
    log(f"final zero-shot top-1 on {args.eval_count} pictures of seed {args.eval_seed}: {acc:.4f} "
        f"(shape {shape_acc:.4f}, colour {colour_acc:.4f})")
    for k, v in sorted(by_bg.items()):
        log(f"  background {k}: {v[0]}/{v[1]}")
    for p, (c, n) in per.items():
        if c < n:
            log(f"  {p}: {c}/{n}")

    write_model(args.out, config, model.state_dict())
    with open(os.path.join(args.out, "train_log.json"), "w") as f:
        json.dump({"args": vars(args), "parameters": n_params, "steps": step,
                   "train_seconds": round(train_time, 1),
                   "data_seconds": round(t_data, 1), "history": history,
                   "kept_step": best["step"],
                   "zero_shot": {"seed": args.eval_seed, "count": args.eval_count, "top1": acc,
                                 "shape": shape_acc, "colour": colour_acc,
                                 "per_label": {p: v for p, v in per.items()},
                                 "per_background": by_bg}}, f, indent=1)
    log(f"wrote {args.out} (training {train_time:.0f}s)")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
