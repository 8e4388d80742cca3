#!/usr/bin/python3
"""check_clip.py CLIP SRC [KEY=VALUE...] -- checks a .clip file against its source folder.

Python stdlib only (make test must not need torch). An independent reading of
docs/clip-format.md: parses the header, the tokenizer section and the tensor table, checks the
layout (alignment, order, bounds, file_size), compares the tokenizer with vocab.json +
merges.txt when SRC has them, and every tensor with the source weights (model.safetensors,
open_clip_model.safetensors or pytorch_model.bin; Hugging Face or OpenAI naming), bit for bit:
f32 output must equal the source widened to f32, f16 output must equal Python's own f32 -> f16
rounding (struct 'e': round half to even; overflow is inf, NaN stays NaN).
KEY=VALUE arguments check header fields (e.g. act=1 name=ViT-B-32 vision_heads=2).
Prints one summary line; exits 1 with the reason on the first mismatch.
"""
import array
import collections
import json
import math
import os
import pickle
import re
import struct
import sys
import zipfile

HEADER = [("image_size", 80, "I"), ("patch_size", 84, "I"), ("vision_width", 88, "I"),
          ("vision_layers", 92, "I"), ("vision_heads", 96, "I"), ("vision_mlp", 100, "I"),
          ("vision_eps", 104, "f"), ("text_width", 108, "I"), ("text_layers", 112, "I"),
          ("text_heads", 116, "I"), ("text_mlp", 120, "I"), ("text_eps", 124, "f"),
          ("context_length", 128, "I"), ("vocab_size", 132, "I"), ("embed_dim", 136, "I"),
          ("act", 140, "I"), ("resize_size", 144, "I"), ("crop_size", 148, "I")]


def die(msg):
    print("check_clip: " + msg)
    sys.exit(1)


def parse(path):
    b = open(path, "rb").read()
    if len(b) < 256 or b[:8] != b"CLIPMODL":
        die("bad magic")
    h = {"version": struct.unpack_from("<I", b, 8)[0], "header_size": struct.unpack_from("<I", b, 12)[0],
         "name": b[16:80].split(b"\0")[0].decode()}
    for k, off, f in HEADER:
        h[k] = struct.unpack_from("<" + f, b, off)[0]
    h["mean"] = struct.unpack_from("<3f", b, 152)
    h["std"] = struct.unpack_from("<3f", b, 164)
    tok_off, tok_size, tab_off = struct.unpack_from("<QQQ", b, 176)
    nt, reserved = struct.unpack_from("<II", b, 200)
    file_size = struct.unpack_from("<Q", b, 208)[0]
    if h["version"] != 2 or h["header_size"] != 256 or reserved or any(b[216:256]):
        die("bad version, header size or reserved bytes")
    if file_size != len(b):
        die(f"file_size {file_size} != {len(b)}")
    if tok_off != 256 or tab_off % 8 or tab_off < tok_off + tok_size:
        die("bad section offsets")
    p = tok_off
    nv, nm, sot, eot = struct.unpack_from("<4I", b, p)
    p += 16
    toks = []
    for _ in range(nv):
        n = struct.unpack_from("<H", b, p)[0]
        toks.append(b[p + 2:p + 2 + n].decode("utf-8"))
        p += 2 + n
    merges = [struct.unpack_from("<3I", b, p + 12 * i) for i in range(nm)]
    p += 12 * nm
    if p != tok_off + tok_size or nv != h["vocab_size"]:
        die("tokenizer section size or vocab_size mismatch")
    if toks[sot] != "<|startoftext|>" or toks[eot] != "<|endoftext|>":
        die("sot/eot ids wrong")
    tensors = collections.OrderedDict()
    end = tab_off + 96 * nt
    for i in range(nt):
        e = b[tab_off + 96 * i:tab_off + 96 * (i + 1)]
        name = e[:56].split(b"\0")[0].decode()
        dt, nd = struct.unpack_from("<II", e, 56)
        shape = struct.unpack_from("<4I", e, 64)
        off, size = struct.unpack_from("<QQ", e, 80)
        n = 1
        for d in shape:
            n *= d
        if dt not in (0, 1) or not 1 <= nd <= 4 or any(d != 1 for d in shape[nd:]):
            die(f"{name}: bad dtype or dims")
        if off % 64 or off < end or off + size > len(b) or size != n * (4 if dt == 0 else 2):
            die(f"{name}: bad offset/size")
        end = off + size
        tensors[name] = (dt, shape[:nd], b[off:off + size])
    if end != len(b):
        die("trailing bytes after the last tensor")
    return h, toks, merges, tensors


# --- the source --------------------------------------------------------------------------

def widen(dtype, raw):
    """Source bytes -> array('f') of the exact f32 values."""
    if dtype == "F32":
        return array.array("f", raw)
    if dtype == "F16":
        return array.array("f", struct.unpack("<%de" % (len(raw) // 2), raw))
    if dtype == "BF16":
        hs = array.array("H", raw)
        return array.array("f", array.array("I", [x << 16 for x in hs]).tobytes())
    return None


def load_safetensors(path):
    b = open(path, "rb").read()
    n = struct.unpack_from("<Q", b, 0)[0]
    hdr = json.loads(b[8:8 + n])
    out = {}
    for k, v in hdr.items():
        if k == "__metadata__":
            continue
        s, e = v["data_offsets"]
        vals = widen(v["dtype"], b[8 + n + s:8 + n + e])
        if vals is not None:
            out[k] = (v["shape"], vals)
    return out


def load_torch_bin(path):
    zf = zipfile.ZipFile(path)
    pkl = [n for n in zf.namelist() if n.endswith("/data.pkl")][0]
    prefix = pkl[:-len("/data.pkl")]
    types = {"FloatStorage": "F32", "HalfStorage": "F16", "BFloat16Storage": "BF16"}

    def rebuild(storage, offset, size, stride, *rest):
        typ, key = storage
        es = 4 if typ == "F32" else 2 if typ in ("F16", "BF16") else 8
        raw = zf.read(f"{prefix}/data/{key}")
        n = 1
        for d in size:
            n *= d
        return (list(size), widen(typ, raw[offset * es:(offset + n) * es]))

    class Unpickler(pickle.Unpickler):
        def find_class(self, mod, name):
            if (mod, name) == ("torch._utils", "_rebuild_tensor_v2"):
                return rebuild
            if (mod, name) == ("collections", "OrderedDict"):
                return collections.OrderedDict
            if mod == "torch" and name.endswith("Storage"):
                return types.get(name, name)
            raise pickle.UnpicklingError(f"{mod}.{name}")

        def persistent_load(self, pid):
            return (pid[1], pid[2])

    sd = Unpickler(zf.open(pkl)).load()
    return {k: v for k, v in sd.items() if v[1] is not None}


def expected(S, h):
    """Our tensor name -> (shape, array('f')) from the source, per docs/clip-format.md."""
    exp = {}
    hf = "visual.conv1.weight" not in S

    def get(name):
        if name not in S:
            die(f"source lacks {name}")
        return S[name][1]

    def transpose(name):
        (r, c), v = S[name]
        return array.array("f", [v[i * c + j] for j in range(c) for i in range(r)])

    def ln(ours, src):
        exp[ours + ".weight"] = get(src + ".weight")
        exp[ours + ".bias"] = get(src + ".bias")

    if hf:
        exp["v.patch_embed.weight"] = get("vision_model.embeddings.patch_embedding.weight")
        exp["v.class_embed"] = get("vision_model.embeddings.class_embedding")
        exp["v.pos_embed"] = get("vision_model.embeddings.position_embedding.weight")
        ln("v.ln_pre", "vision_model.pre_layrnorm")
        ln("v.ln_post", "vision_model.post_layernorm")
        exp["v.proj"] = get("visual_projection.weight")
        exp["t.token_embed"] = get("text_model.embeddings.token_embedding.weight")
        exp["t.pos_embed"] = get("text_model.embeddings.position_embedding.weight")
        ln("t.ln_final", "text_model.final_layer_norm")
        exp["t.proj"] = get("text_projection.weight")
        towers = (("v", h["vision_layers"], "vision_model.encoder.layers."),
                  ("t", h["text_layers"], "text_model.encoder.layers."))
        for tw, n, pre in towers:
            for i in range(n):
                s, o = f"{pre}{i}.", f"{tw}.layers.{i}."
                ln(o + "ln1", s + "layer_norm1")
                ln(o + "ln2", s + "layer_norm2")
                for wb in ("weight", "bias"):
                    exp[o + "attn.qkv." + wb] = (get(s + "self_attn.q_proj." + wb) + get(s + "self_attn.k_proj." + wb)
                                                 + get(s + "self_attn.v_proj." + wb))
                    exp[o + "attn.out." + wb] = get(s + "self_attn.out_proj." + wb)
                    exp[o + "mlp.fc1." + wb] = get(s + "mlp.fc1." + wb)
                    exp[o + "mlp.fc2." + wb] = get(s + "mlp.fc2." + wb)
    else:
        exp["v.patch_embed.weight"] = get("visual.conv1.weight")
        exp["v.class_embed"] = get("visual.class_embedding")
        exp["v.pos_embed"] = get("visual.positional_embedding")
        ln("v.ln_pre", "visual.ln_pre")
        ln("v.ln_post", "visual.ln_post")
        exp["v.proj"] = transpose("visual.proj")
        exp["t.token_embed"] = get("token_embedding.weight")
        exp["t.pos_embed"] = get("positional_embedding")
        ln("t.ln_final", "ln_final")
        exp["t.proj"] = transpose("text_projection")
        towers = (("v", h["vision_layers"], "visual.transformer.resblocks."),
                  ("t", h["text_layers"], "transformer.resblocks."))
        for tw, n, pre in towers:
            for i in range(n):
                s, o = f"{pre}{i}.", f"{tw}.layers.{i}."
                ln(o + "ln1", s + "ln_1")
                ln(o + "ln2", s + "ln_2")
                exp[o + "attn.qkv.weight"] = get(s + "attn.in_proj_weight")
                exp[o + "attn.qkv.bias"] = get(s + "attn.in_proj_bias")
                for wb in ("weight", "bias"):
                    exp[o + "attn.out." + wb] = get(s + "attn.out_proj." + wb)
                    exp[o + "mlp.fc1." + wb] = get(s + "mlp.c_fc." + wb)
                    exp[o + "mlp.fc2." + wb] = get(s + "mlp.c_proj." + wb)
    exp["logit_scale"] = get("logit_scale")
    return exp


LINEAR = re.compile(r"(v\.patch_embed\.weight|v\.proj|t\.proj"
                    r"|[vt]\.layers\.\d+\.(attn\.qkv|attn\.out|mlp\.fc1|mlp\.fc2)\.weight)")


def panels(vals, shape):
    """Row-major [N, K] values in the file's order for linear weights: panels of 32 rows,
    each laid out [K][rows of the panel] (docs/clip-format.md)."""
    n, k = shape
    out = array.array("f")
    for n0 in range(0, n, 32):
        rows = range(n0, min(n0 + 32, n))
        for j in range(k):
            out.extend(vals[r * k + j] for r in rows)
    return out


def to_f16_bits(vals):
    try:
        return array.array("H", struct.pack("<%de" % len(vals), *vals))
    except OverflowError:
        out = array.array("H")
        for v in vals:
            try:
                out.append(struct.unpack("<H", struct.pack("<e", v))[0])
            except OverflowError:
                out.append(0xFC00 if v < 0 else 0x7C00)
        return out


def same_f16(got_raw, vals):
    got = array.array("H", got_raw)
    want = to_f16_bits(vals)
    if got == want:
        return True
    for g, w, v in zip(got, want, vals):
        if g != w and not (math.isnan(v) and (g & 0x7C00) == 0x7C00 and g & 0x3FF):
            print(f"check_clip: f16 of {v!r}: got {g:#06x}, want {w:#06x}")
            return False
    return True


def main():
    path, src = sys.argv[1], sys.argv[2]
    h, toks, merges, tensors = parse(path)
    for kv in sys.argv[3:]:
        k, v = kv.split("=", 1)
        got = h[k]
        if k in ("mean", "std"):
            ok = all(math.isclose(g, float(w), rel_tol=1e-6) for g, w in zip(got, v.strip("[]").split(",")))
        else:
            ok = str(got) == v or (isinstance(got, float) and math.isclose(got, float(v), rel_tol=1e-6))
        if not ok:
            die(f"header {k} = {got}, want {v}")
    vj, mt = os.path.join(src, "vocab.json"), os.path.join(src, "merges.txt")
    if os.path.exists(vj) and os.path.exists(mt):
        inv = {i: t for t, i in json.load(open(vj, encoding="utf-8")).items()}
        if [inv[i] for i in range(len(inv))] != toks:
            die("tokens differ from vocab.json")
        lines = open(mt, encoding="utf-8").read().split("\n")
        lines = [ln for i, ln in enumerate(lines) if ln and not (i == 0 and ln.startswith("#version"))]
        if len(lines) != len(merges):
            die("merge count differs from merges.txt")
        for (a, b, m), ln in zip(merges, lines):
            x, y = ln.split(" ")
            if (toks[a], toks[b], toks[m]) != (x, y, x + y):
                die(f"merge {ln!r} stored wrong")
    weights = [f for f in ("model.safetensors", "open_clip_model.safetensors", "pytorch_model.bin")
               if os.path.exists(os.path.join(src, f))]
    wpath = os.path.join(src, weights[0])
    S = load_torch_bin(wpath) if wpath.endswith(".bin") else load_safetensors(wpath)
    exp = expected(S, h)
    if set(exp) != set(tensors):
        die(f"tensor names differ: {sorted(set(exp) ^ set(tensors))[:5]}")
    n_f16 = 0
    for name, (dt, shape, raw) in tensors.items():
        vals = exp[name]
        if LINEAR.fullmatch(name):
            vals = panels(vals, shape)
        if dt == 0:
            if array.array("f", vals).tobytes() != raw:
                die(f"{name}: f32 values differ from the source")
        else:
            n_f16 += 1
            if not same_f16(raw, vals):
                die(f"{name}: f16 values differ from the source rounded to f16")
    print(f"check_clip: ok: {h['name']}, {len(tensors)} tensors ({n_f16} f16), {len(toks)} tokens, "
          f"{len(merges)} merges")


main()
