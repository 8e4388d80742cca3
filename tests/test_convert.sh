#!/usr/bin/env bash
# tests/test_convert.sh -- the converter (tools/convert/) end to end.
#
# Converts the committed fixtures in tests/data/convert (HF safetensors, HF pytorch_model.bin
# with f16 storage and gelu, OpenAI naming with open_clip_config.json and a gzip BPE file) and
# variants made from them by tests/data/convert/mutate.py (deflated and zip64 archives, bf16
# storage, f16 edge values, config variations), and checks every output with
# tests/data/convert/check_clip.py (stdlib). Then the error cases: each must exit 1 with one
# "clip-convert: error:" line naming the problem, and leave no output file behind.
# With ../shared/reference present, also tiny-hf, tinygelu-hf and the real BPE vocabulary.
set -u
cd "$(dirname "$0")/.." || exit 2
CONV=${CLIP_CONVERT:-./clip-convert}
PY=${CLIP_PYTHON:-/usr/bin/python3}
DATA=tests/data/convert
REF=${CLIP_REFERENCE_DIR:-../shared/reference}
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT

if [ ! -x "$CONV" ]; then
    echo "FAIL test_convert: $CONV not built"
    exit 1
fi

# ok NAME SRC OUT [converter options...] [-- check_clip KEY=VALUE...]
ok() {
    local name=$1 src=$2 out=$3
    shift 3
    local opts=() checks=()
    while [ $# -gt 0 ] && [ "$1" != "--" ]; do opts+=("$1"); shift; done
    [ $# -gt 0 ] && shift
    checks=("$@")
    if ! "$CONV" "$src" "$out" "${opts[@]}" 2> "$tmp/err"; then
        echo "FAIL $name: conversion failed: $(tail -1 "$tmp/err")"
        return 1
    fi
    if ! grep -q "^clip-convert: wrote $out: model .*, [0-9]* parameters, f[13][62], [0-9]* bytes$" "$tmp/err"; then
        echo "FAIL $name: no summary line"
        return 1
    fi
    local msg
    if msg=$("$PY" "$DATA/check_clip.py" "$out" "$src" "${checks[@]}" 2>&1); then
        echo "PASS $name (${msg#check_clip: ok: })"
    else
        echo "FAIL $name: $msg"
        return 1
    fi
}

# bad NAME PATTERN SRC [converter options...]: exit 1, the last stderr line is the one error line
# and contains PATTERN, nothing else on stderr looks like an error, no output left behind.
bad() {
    local name=$1 pattern=$2 src=$3
    shift 3
    local out="$tmp/bad.clip"
    rm -f "$out" "$out.tmp"
    "$CONV" "$src" "$out" "$@" 2> "$tmp/err" > /dev/null
    local rc=$? last
    last=$(tail -1 "$tmp/err")
    if [ "$rc" -ne 1 ]; then
        echo "FAIL $name: exit status $rc, want 1 ($(head -c 300 "$tmp/err"))"
    elif [ "$(grep -c -i 'error' "$tmp/err")" -ne 1 ] || [[ "$last" != "clip-convert: error: "* ]]; then
        echo "FAIL $name: want one error line, got: $(head -c 300 "$tmp/err")"
    elif [[ "$last" != *"$pattern"* ]]; then
        echo "FAIL $name: error does not say '$pattern': $last"
    elif [ -e "$out" ] || [ -e "$out.tmp" ]; then
        echo "FAIL $name: output file left behind"
    else
        echo "PASS $name (${last#clip-convert: error: })"
    fi
}

# copy NAME FROM: a writable copy of a fixture folder in $tmp/NAME
copy() { rm -rf "${tmp:?}/$1"; cp -r "$2" "$tmp/$1"; }
# jsonedit FILE PYTHON-EXPR-ON-d: rewrites a JSON file in place
jsonedit() { "$PY" -c "import json,sys; p=sys.argv[1]; d=json.load(open(p)); $2; json.dump(d, open(p,'w'))" "$1"; }
mutate() { "$PY" "$DATA/mutate.py" "$@"; }
size() { stat -c %s "$1"; }

ST=$DATA/hf-st
BIN=$DATA/hf-bin-f16
OA=$DATA/openai-st

# --- conversions -------------------------------------------------------------------------

ok "convert hf safetensors f32" "$ST" "$tmp/st.clip" -- name=ViT-W8-P8-32 act=0 vision_layers=2 \
    vision_heads=2 text_layers=1 patch_size=8 image_size=32 resize_size=32 crop_size=32 embed_dim=4
ok "convert hf safetensors f16" "$ST" "$tmp/st16.clip" --dtype f16
# half NAME F32 F16 MAXRATIO: the f16 file's tensor data is exactly half of the f32 file's, the
# whole file at most MAXRATIO of it (the tokenizer section and the table do not shrink).
half() {
    [ -f "$2" ] && [ -f "$3" ] || return
    local r
    r=$("$PY" -c "
import os, struct, sys
def data(p):
    b = open(p, 'rb').read(); t, n = struct.unpack_from('<Q', b, 192)[0], struct.unpack_from('<I', b, 200)[0]
    return sum(struct.unpack_from('<Q', b, t + 96 * i + 88)[0] for i in range(n))
d, f = data(sys.argv[2]) / data(sys.argv[1]), os.path.getsize(sys.argv[2]) / os.path.getsize(sys.argv[1])
print('%s %.3f %.3f' % ('ok' if d == 0.5 and f <= float(sys.argv[3]) else 'bad', d, f))" "$2" "$3" "$4")
    if [ "${r%% *}" = ok ]; then
        echo "PASS $1: tensor data exactly half, file ${r##* } of f32"
    else
        echo "FAIL $1: f16/f32 tensor data and file ratios ${r#* }"
    fi
}
half "hf safetensors f16 size" "$tmp/st.clip" "$tmp/st16.clip" 0.65
ok "convert hf pytorch_model.bin (f16 storage, gelu)" "$BIN" "$tmp/bin.clip" -- act=1 vision_layers=2
ok "convert hf pytorch_model.bin to f16" "$BIN" "$tmp/bin16.clip" --dtype f16 -- act=1
ok "convert openai naming (shapes, open_clip_config, gzip bpe)" "$OA" "$tmp/oa.clip" -- \
    name=ViT-W8-P16-48 act=0 image_size=48 patch_size=16 vision_heads=2 vision_layers=1 \
    text_layers=2 text_heads=2 context_length=16 embed_dim=6 vocab_size=554
ok "convert openai naming with --act gelu --name" "$OA" "$tmp/oa2.clip" --act gelu --name my-model -- \
    act=1 name=my-model
copy oa-noconf "$OA"
rm "$tmp/oa-noconf/open_clip_config.json"
bad "error: openai naming, head count not inferable without open_clip_config.json" \
    "cannot infer the head count" "$tmp/oa-noconf"

copy deflate "$BIN"
mutate deflate "$BIN/pytorch_model.bin" "$tmp/deflate/pytorch_model.bin"
if "$CONV" "$tmp/deflate" "$tmp/deflate.clip" 2>/dev/null && cmp -s "$tmp/deflate.clip" "$tmp/bin.clip"; then
    echo "PASS deflated zip entries convert to the same file"
else
    echo "FAIL deflated zip entries: conversion failed or differs"
fi
copy zip64 "$BIN"
mutate zip64 "$BIN/pytorch_model.bin" "$tmp/zip64/pytorch_model.bin"
if "$CONV" "$tmp/zip64" "$tmp/zip64.clip" 2>/dev/null && cmp -s "$tmp/zip64.clip" "$tmp/bin.clip"; then
    echo "PASS zip64 archive converts to the same file"
else
    echo "FAIL zip64 archive: conversion failed or differs"
fi
copy bf16 "$ST"
mutate bf16 "$ST/model.safetensors" "$tmp/bf16/model.safetensors"
ok "convert bf16 safetensors (exact widening)" "$tmp/bf16" "$tmp/bf16.clip"
copy special "$ST"
mutate special "$ST/model.safetensors" "$tmp/special/model.safetensors" \
    text_model.embeddings.token_embedding.weight
ok "f16 rounding of edge values (ties, subnormals, overflow, inf, nan)" "$tmp/special" \
    "$tmp/special.clip" --dtype f16

copy cfg "$ST"
jsonedit "$tmp/cfg/config.json" "d['text_config_dict']=d.pop('text_config'); d['_name_or_path']='someone/clip-test-model'; [d[k].pop('hidden_act') for k in ('text_config_dict','vision_config')]; [d[k].pop('layer_norm_eps') for k in ('text_config_dict','vision_config')]"
jsonedit "$tmp/cfg/preprocessor_config.json" "d['size']={'shortest_edge': 40}; d['crop_size']={'height': 32, 'width': 32}; d['image_mean']=[0.5,0.25,0.125]"
ok "config variants (text_config_dict, defaults, _name_or_path, size dicts)" "$tmp/cfg" \
    "$tmp/cfg.clip" -- name=clip-test-model act=0 vision_eps=1e-05 resize_size=40 crop_size=32 \
    "mean=[0.5, 0.25, 0.125]"
copy nopre "$ST"
rm "$tmp/nopre/preprocessor_config.json"
ok "no preprocessor_config.json: OpenAI's constants, model image size" "$tmp/nopre" \
    "$tmp/nopre.clip" -- resize_size=32 crop_size=32 "std=[0.26862954, 0.26130258, 0.27577711]"

# --- errors ------------------------------------------------------------------------------

bad "error: missing folder" "missing folder" "$tmp/does-not-exist"
copy noconf "$ST"; rm "$tmp/noconf/config.json"
bad "error: missing config.json" "config.json" "$tmp/noconf"
copy badconf "$ST"; echo '{"text_config": {' > "$tmp/badconf/config.json"
bad "error: malformed config.json" "config.json" "$tmp/badconf"
copy novocab "$ST"; rm "$tmp/novocab/vocab.json"
bad "error: missing vocab.json" "vocab.json" "$tmp/novocab"
copy noweights "$ST"; rm "$tmp/noweights/model.safetensors"
bad "error: missing weights" "model.safetensors" "$tmp/noweights"
copy droptensor "$ST"
mutate drop "$ST/model.safetensors" "$tmp/droptensor/model.safetensors" vision_model.encoder.layers.1.mlp.fc2.bias
bad "error: safetensors missing a tensor" "missing tensor vision_model.encoder.layers.1.mlp.fc2.bias" "$tmp/droptensor"
copy dropbin "$BIN"
mutate drop "$BIN/pytorch_model.bin" "$tmp/dropbin/pytorch_model.bin" text_model.final_layer_norm.bias
bad "error: pytorch_model.bin missing a tensor" "missing tensor text_model.final_layer_norm.bias" "$tmp/dropbin"
copy dropoa "$OA"
mutate drop "$OA/open_clip_model.safetensors" "$tmp/dropoa/open_clip_model.safetensors" transformer.resblocks.1.attn.in_proj_bias
bad "error: openai naming missing a tensor" "missing tensor transformer.resblocks.1.attn.in_proj_bias" "$tmp/dropoa"
copy reshape "$ST"
mutate reshape "$ST/model.safetensors" "$tmp/reshape/model.safetensors" vision_model.encoder.layers.0.mlp.fc1.weight 8,32
bad "error: shape mismatch" "shape mismatch: vision_model.encoder.layers.0.mlp.fc1.weight: expected [32, 8], got [8, 32]" "$tmp/reshape"
copy i32 "$ST"
mutate dtype "$ST/model.safetensors" "$tmp/i32/model.safetensors" vision_model.post_layernorm.weight I32
bad "error: unsupported dtype" "unsupported dtype I32 for tensor vision_model.post_layernorm.weight" "$tmp/i32"
copy siglip "$ST"; jsonedit "$tmp/siglip/config.json" "d['model_type']='siglip'"
bad "error: unknown architecture (model_type)" "unknown architecture" "$tmp/siglip"
copy notclip "$OA"
mutate drop "$OA/open_clip_model.safetensors" "$tmp/notclip/open_clip_model.safetensors" visual.conv1.weight
bad "error: unknown architecture (tensor names)" "unknown architecture" "$tmp/notclip"
copy trunc "$ST"; head -c $(( $(size "$ST/model.safetensors") / 2 )) "$ST/model.safetensors" > "$tmp/trunc/model.safetensors"
bad "error: truncated safetensors" "truncated" "$tmp/trunc"
head -c 5 "$ST/model.safetensors" > "$tmp/trunc/model.safetensors"
bad "error: safetensors shorter than its header length" "truncated" "$tmp/trunc"
head -c 12 "$ST/model.safetensors" > "$tmp/trunc/model.safetensors"
bad "error: safetensors header cut" "truncated" "$tmp/trunc"
copy zipcut "$BIN"; head -c $(( $(size "$BIN/pytorch_model.bin") - 30 )) "$BIN/pytorch_model.bin" > "$tmp/zipcut/pytorch_model.bin"
bad "error: truncated zip" "not a zip archive" "$tmp/zipcut"
copy zipflip "$BIN"
cp "$BIN/pytorch_model.bin" "$tmp/zipflip/pytorch_model.bin"
"$PY" -c "
import sys, zipfile
p = sys.argv[1]; z = zipfile.ZipFile(p); i = [x for x in z.infolist() if '/data/' in x.filename][0]
b = bytearray(open(p, 'rb').read()); h = i.header_offset
off = h + 30 + int.from_bytes(b[h+26:h+28], 'little') + int.from_bytes(b[h+28:h+30], 'little')
b[off] ^= 0x40; open(p, 'wb').write(b)" "$tmp/zipflip/pytorch_model.bin"
bad "error: corrupt zip data (CRC)" "CRC mismatch" "$tmp/zipflip"
head -c 4000 /dev/urandom > "$tmp/zipflip/pytorch_model.bin"
bad "error: garbage pytorch_model.bin" "not a zip archive" "$tmp/zipflip"
# Found by fuzz_convert: a 45-byte file whose zip64 locator points into a file shorter than a
# zip64 end record (an unsigned size - 56 wrapped and the read went past the end).
printf '\000\000\000\120\113\006\007\000\000\000\000\037\146\000\002\150\000\051\164\161\037\000\000\120\113\005\006\000\000\000\000\070\377\377\377\377\377\377\377\012\131\000\000\000\000' \
    > "$tmp/zipflip/pytorch_model.bin"
bad "error: zip64 locator in a file too short for its record" "zip64" "$tmp/zipflip"
copy cutpkl "$BIN"
mutate cutpickle "$BIN/pytorch_model.bin" "$tmp/cutpkl/pytorch_model.bin"
bad "error: truncated data.pkl" "data.pkl" "$tmp/cutpkl"
copy badmerge "$ST"; printf '#version: 0.2\nq z\n' > "$tmp/badmerge/merges.txt"
bad "error: merge not in the vocabulary" "not in the vocabulary" "$tmp/badmerge"
copy badgz "$OA"; printf 'not gzip at all, not at all' > "$tmp/badgz/bpe_simple_vocab_16e6.txt.gz"
bad "error: corrupt bpe gzip" "gzip" "$tmp/badgz"
copy cutgz "$OA"; head -c 100 "$OA/bpe_simple_vocab_16e6.txt.gz" > "$tmp/cutgz/bpe_simple_vocab_16e6.txt.gz"
bad "error: truncated bpe gzip" "gzip" "$tmp/cutgz"
copy vocabsize "$ST"; jsonedit "$tmp/vocabsize/config.json" "d['text_config']['vocab_size']=600"
bad "error: config vocab_size disagrees with the tokenizer" "vocab_size" "$tmp/vocabsize"
if "$CONV" "$ST" "$tmp/no/such/dir/out.clip" 2> "$tmp/err"; then
    echo "FAIL error: unwritable output path accepted"
else
    grep -q "^clip-convert: error: cannot create" "$tmp/err" && echo "PASS error: unwritable output path" \
        || echo "FAIL error: unwritable output path: $(tail -1 "$tmp/err")"
fi

# --- the shared reference checkpoints ----------------------------------------------------

if [ -d "$REF/tiny-hf" ] && [ -d "$REF/tinygelu-hf" ]; then
    ok "reference tiny-hf (safetensors)" "$REF/tiny-hf" "$tmp/tiny.clip" -- act=0 vision_width=128 \
        vision_heads=2 text_heads=4 embed_dim=48 vocab_size=49408
    ok "reference tiny-hf to f16" "$REF/tiny-hf" "$tmp/tiny16.clip" --dtype f16
    half "reference tiny-hf f16 size" "$tmp/tiny.clip" "$tmp/tiny16.clip" 0.55
    ok "reference tinygelu-hf (pytorch_model.bin, gelu)" "$REF/tinygelu-hf" "$tmp/tinygelu.clip" -- \
        act=1 vision_width=192 vision_heads=3 vision_layers=3 patch_size=16 embed_dim=32
    if [ -f "$REF/bpe_simple_vocab_16e6.txt.gz" ]; then
        if "$CONV" "$REF/tiny-hf" "$tmp/tiny-bpe.clip" --bpe "$REF/bpe_simple_vocab_16e6.txt.gz" 2>/dev/null \
            && cmp -s "$tmp/tiny.clip" "$tmp/tiny-bpe.clip"; then
            echo "PASS vocabulary built from bpe_simple_vocab_16e6.txt.gz equals vocab.json + merges.txt"
        else
            echo "FAIL vocabulary from bpe_simple_vocab_16e6.txt.gz differs from vocab.json + merges.txt"
        fi
    else
        echo "SKIP bpe vocabulary check: $REF/bpe_simple_vocab_16e6.txt.gz absent"
    fi
else
    echo "SKIP reference conversions: $REF/tiny-hf and tinygelu-hf absent"
fi
