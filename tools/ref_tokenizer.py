#!/usr/bin/python3
"""tools/ref_tokenizer.py -- our reference for the CLIP tokenizer, in Python.

OpenAI's clip.tokenize(text, truncate=True) (clip/simple_tokenizer.py) re-implemented with
Debian's python3-regex, and the part of ftfy.fix_text (6.x, default TextFixerConfig) that our
C tokenizer reproduces, written out here from ftfy's documented behaviour:

  per segment (the text is cut after every "\\n", and every 10^6 characters), repeated
  until nothing changes:
    unescape_html ("auto": off from the first segment holding a "<" on), [fix_encoding --
    mojibake repair is NOT reproduced, see below], fix_c1_controls, fix_latin_ligatures,
    fix_character_width, uncurl_quotes, fix_line_breaks, fix_surrogates (a no-op: our input
    is valid UTF-8), remove_terminal_escapes, remove_control_chars, NFC.

ftfy's fix_encoding only acts on a segment its badness heuristic (ftfy.badness.is_bad)
flags as mojibake; `check` reports the cases where that heuristic would fire, so a mismatch
there can be told from a bug.

Usage (run from the repository root with /usr/bin/python3):
  tools/ref_tokenizer.py check CASES.json VOCAB_DIR     compare with OpenAI+ftfy ids
        (CASES.json: ../shared/reference/tokenizer_cases.json or expected.json)
  tools/ref_tokenizer.py small-vocab OUT_DIR            train the small fallback vocabulary
        (byte-level BPE on our corpus, at most 600 merges; tests/data/small-vocab)
  tools/ref_tokenizer.py corpus [VOCAB_DIR]             write tests/data/tokenizer_corpus.json
        (ids_small with tests/data/small-vocab; ids_clip with VOCAB_DIR, OpenAI's vocabulary)
  tools/ref_tokenizer.py encode VOCAB_DIR TEXT...       print the 77 ids of each TEXT
VOCAB_DIR holds a Hugging Face vocab.json + merges.txt (../shared/reference/tiny-hf).
To regenerate the fixtures: small-vocab tests/data/small-vocab, then
corpus ../shared/reference/tiny-hf.
"""
import gzip
import html
import json
import os
import re as stdre
import sys
import unicodedata

import regex

# ---------------------------------------------------------------------------------------
# ftfy subset
# ---------------------------------------------------------------------------------------


def _html_entities():
    # ftfy.chardata._build_html_entities: the html5 names that end in ";", plus upper-cased
    # copies of the all-lowercase ones when html.unescape would not already decode them.
    out = {}
    for name, char in html.entities.html5.items():
        if name.endswith(";"):
            out["&" + name] = char
            if name == name.lower():
                up = "&" + name.upper()
                if html.unescape(up) == up:
                    out[up] = char.upper()
    return out


HTML_ENTITIES = _html_entities()
HTML_ENTITY_RE = stdre.compile(r"&#?[0-9A-Za-z]{1,24};")
ANSI_RE = stdre.compile("\033\\[((?:\\d|;)*)([a-zA-Z])")
LIGATURES = {
    0x0132: "IJ", 0x0133: "ij", 0x0149: "\u02bcn", 0x01F1: "DZ", 0x01F2: "Dz", 0x01F3: "dz",
    0x01C4: "D\u017d", 0x01C5: "D\u017e", 0x01C6: "d\u017e", 0x01C7: "LJ", 0x01C8: "Lj",
    0x01C9: "lj", 0x01CA: "NJ", 0x01CB: "Nj", 0x01CC: "nj", 0xFB00: "ff", 0xFB01: "fi",
    0xFB02: "fl", 0xFB03: "ffi", 0xFB04: "ffl", 0xFB05: "\u017ft", 0xFB06: "st",
}


def _width_map():
    m = {0x3000: " "}
    for i in range(0xFF01, 0xFFF0):
        alt = unicodedata.normalize("NFKC", chr(i))
        if alt != chr(i):
            m[i] = alt
    return m


WIDTH_MAP = _width_map()
CONTROL_CHARS = dict.fromkeys(
    list(range(0x00, 0x09)) + [0x0B] + list(range(0x0E, 0x20)) + [0x7F]
    + list(range(0x206A, 0x2070)) + [0xFEFF] + list(range(0xFFF9, 0xFFFD)))
SINGLE_QUOTE_RE = stdre.compile("[\u02bc\u2018-\u201b]")
DOUBLE_QUOTE_RE = stdre.compile("[\u201c-\u201f]")
C1_RE = stdre.compile("[\x80-\x9f]")


def _unescape_fixup(m):
    text = m.group(0)
    if text in HTML_ENTITIES:
        return HTML_ENTITIES[text]
    if text.startswith("&#"):
        un = html.unescape(text)
        return text if ";" in un else un
    return text


def _c1(m):
    b = m.group(0).encode("latin-1")
    try:
        return b.decode("windows-1252")
    except UnicodeDecodeError:      # ftfy's sloppy codec keeps the five unassigned bytes
        return m.group(0)


def fix_segment(text, unescape):
    while True:
        orig = text
        if unescape:
            text = HTML_ENTITY_RE.sub(_unescape_fixup, text)
        text = C1_RE.sub(_c1, text)
        text = text.translate(LIGATURES)
        text = text.translate(WIDTH_MAP)
        text = SINGLE_QUOTE_RE.sub("'", DOUBLE_QUOTE_RE.sub('"', text))
        text = (text.replace("\r\n", "\n").replace("\r", "\n").replace("\u2028", "\n")
                .replace("\u2029", "\n").replace("\u0085", "\n"))
        text = ANSI_RE.sub("", text)
        text = text.translate(CONTROL_CHARS)
        text = unicodedata.normalize("NFC", text)
        if text == orig:
            return text


def fix_text(text):
    out, pos, unescape = [], 0, True
    while pos < len(text):
        brk = text.find("\n", pos) + 1 or len(text)
        brk = min(brk, pos + 1000000)         # ftfy's max_decode_length
        seg = text[pos:brk]
        if "<" in seg:
            unescape = False
        out.append(fix_segment(seg, unescape))
        pos = brk
    return "".join(out)


# ---------------------------------------------------------------------------------------
# OpenAI's simple_tokenizer
# ---------------------------------------------------------------------------------------

PAT = regex.compile(r"""<\|startoftext\|>|<\|endoftext\|>|'s|'t|'re|'ve|'m|'ll|'d|[\p{L}]+|[\p{N}]|[^\s\p{L}\p{N}]+""",
                    regex.IGNORECASE)


def bytes_to_unicode():
    bs = (list(range(ord("!"), ord("~") + 1)) + list(range(ord("¡"), ord("¬") + 1))
          + list(range(ord("®"), ord("ÿ") + 1)))
    cs = bs[:]
    n = 0
    for b in range(256):
        if b not in bs:
            bs.append(b)
            cs.append(256 + n)
            n += 1
    return dict(zip(bs, map(chr, cs)))


BYTE_ENC = bytes_to_unicode()


def clean(text):
    text = fix_text(text)
    text = html.unescape(html.unescape(text)).strip()
    text = regex.sub(r"\s+", " ", text).strip()
    return text.lower()


class Tokenizer:
    def __init__(self, vocab, merges):
        self.encoder = vocab
        self.ranks = {m: i for i, m in enumerate(merges)}
        self.sot = vocab["<|startoftext|>"]
        self.eot = vocab["<|endoftext|>"]
        self.cache = {"<|startoftext|>": "<|startoftext|>", "<|endoftext|>": "<|endoftext|>"}

    @classmethod
    def from_dir(cls, d):
        with open(os.path.join(d, "vocab.json"), encoding="utf-8") as f:
            vocab = json.load(f)
        with open(os.path.join(d, "merges.txt"), encoding="utf-8") as f:
            lines = f.read().split("\n")
        merges = [tuple(l.split()) for l in lines if l and not l.startswith("#version")]
        return cls(vocab, merges)

    @classmethod
    def from_bpe_gz(cls, path, n_merges=None):
        """As simple_tokenizer: merges are lines 1 .. 49152-256-2 of the file (the first line is
        a version comment); the vocabulary is bytes, bytes+</w>, merges, then the two specials.
        n_merges: our own small files hold all their merges (the count the file has)."""
        lines = gzip.open(path).read().decode("utf-8").split("\n")
        if n_merges is None:
            n_merges = min(49152 - 256 - 2, len([l for l in lines[1:] if l.strip()]))
        merges = [tuple(m.split()) for m in lines[1:1 + n_merges]]
        vocab = list(BYTE_ENC.values())
        vocab = vocab + [v + "</w>" for v in vocab]
        vocab += ["".join(m) for m in merges] + ["<|startoftext|>", "<|endoftext|>"]
        return cls({v: i for i, v in enumerate(vocab)}, merges)

    @classmethod
    def from_folder(cls, folder):
        """A checkpoint folder's tokenizer: Hugging Face's vocab.json + merges.txt, or
        OpenAI's bpe_simple_vocab_16e6.txt.gz."""
        if all(os.path.exists(os.path.join(folder, f)) for f in ("vocab.json", "merges.txt")):
            return cls.from_dir(folder)
        gz = os.path.join(folder, "bpe_simple_vocab_16e6.txt.gz")
        if os.path.exists(gz):
            return cls.from_bpe_gz(gz)
        raise FileNotFoundError(f"{folder}: no vocab.json + merges.txt nor bpe_simple_vocab_16e6.txt.gz")

    def bpe(self, token):
        if token in self.cache:
            return self.cache[token]
        word = tuple(token[:-1]) + (token[-1] + "</w>",)
        while len(word) > 1:
            pairs = set(zip(word, word[1:]))
            best = min(pairs, key=lambda p: self.ranks.get(p, float("inf")))
            if best not in self.ranks:
                break
            first, second = best
            new, i = [], 0
            while i < len(word):
                if i < len(word) - 1 and word[i] == first and word[i + 1] == second:
                    new.append(first + second)
                    i += 2
                else:
                    new.append(word[i])
                    i += 1
            word = tuple(new)
        out = " ".join(word)
        self.cache[token] = out
        return out

    def encode(self, text):
        ids = []
        for tok in PAT.findall(clean(text)):
            tok = "".join(BYTE_ENC[b] for b in tok.encode("utf-8"))
            ids.extend(self.encoder[t] for t in self.bpe(tok).split(" "))
        return ids

    def tokenize(self, text, context=77):
        ids = [self.sot] + self.encode(text) + [self.eot]
        if len(ids) > context:
            ids = ids[:context]
            ids[-1] = self.eot
        return ids + [0] * (context - len(ids))


# ---------------------------------------------------------------------------------------
# ftfy's badness heuristic, only to label mismatches (ftfy.badness, 6.x)
# ---------------------------------------------------------------------------------------

def _badness_re():
    cat = {
        "common": "\xa0\xad\xb7\xb4\u2013\u2014\u2015\u2026\u2019",
        "c1": "\x80-\x9f",
        "bad": "\xa6\xa4\xa8\xac\xaf\xb8\u0192\u02c6\u02c7\u02d8\u02db\u02dc\u2020\u2021"
               "\u2030\u2310\u25ca\ufffd\xaa\xba",
        "law": "\xb6\xa7",
        "currency": "\xa2\xa3\xa5\u20a7\u20ac",
        "start_punctuation": "\xa1\xab\xbf\xa9\u0384\u0385\u2018\u201a\u201c\u201e\u2022"
                             "\u2039\uf8ff",
        "end_punctuation": "\xae\xbb\u02dd\u201d\u203a\u2122",
        "numeric": "\xb2\xb3\xb9\xb1\xbc\xbd\xbe\xd7\xb5\xf7\u2044\u2202\u2206\u220f"
                   "\u2211\u221a\u221e\u2229\u222b\u2248\u2260\u2261\u2264\u2265\u2116",
        "kaomoji": "\xd2-\xd6\xd9-\xdc\xf2-\xf6\xf8-\xfc\u0150\u014c\u016a\u0172\xb0",
        "upper_accented": "\xc0-\xd1\xd8\xdc\xdd\u0102\u0100\u0104\u0106\u010c\u010e\u0110"
                          "\u0118\u011a\u0112\u0116\u011e\u0122\u0130\u012a\u0136\u0139"
                          "\u013d\u0141\u013b\u0143\u0147\u0145\u0152\u0158\u015a\u015e"
                          "\u0160\u0162\u0164\u016e\u0170\u0178\u0179\u017b\u017d\u0490",
        "lower_accented": "\xdf\xe0-\xf1\u0103\u0105\u0101\u0107\u010d\u010f\u0111\u0119"
                          "\u011b\u0113\u0117\u011f\u0123\u012f\u012b\u0137\u013a\u013e"
                          "\u0142\u013c\u0153\u0155\u015b\u015f\u0161\u0165\xfc\u017a\u017c"
                          "\u017e\u0491\ufb01\ufb02",
        "upper_common": "\xde\u0391-\u03a9\u0386\u0388\u0389\u038a\u038c\u038e\u038f\u03aa"
                        "\u03ab\u0401-\u042f",
        "lower_common": "\u03b1-\u03c9\u03ac\u03ad\u03ae\u03af\u03b0\u0430-\u045f",
        "box": "\u2502\u250c\u2510\u2518\u251c\u2524\u252c\u253c\u2550-\u256c"
               "\u2580\u2584\u2588\u258c\u2590\u2591\u2592\u2593",
    }
    pat = r"""
    [{c1}]
    | [{bad}{lower_accented}{upper_accented}{box}{start_punctuation}{end_punctuation}{currency}{numeric}{law}] [{bad}]
    | [a-zA-Z] [{lower_common}{upper_common}] [{bad}]
    | [{bad}] [{lower_accented}{upper_accented}{box}{start_punctuation}{end_punctuation}{currency}{numeric}{law}]
    | [{lower_accented}{lower_common}{box}{end_punctuation}{currency}{numeric}] [{upper_accented}]
    | [{box}{end_punctuation}{currency}{numeric}] [{lower_accented}]
    | [{lower_accented}{box}{end_punctuation}] [{currency}]
    | \s [{upper_accented}] [{currency}]
    | [{upper_accented}{box}] [{numeric}{law}]
    | [{lower_accented}{upper_accented}{box}{currency}{end_punctuation}] [{start_punctuation}] [{numeric}]
    | [{lower_accented}{upper_accented}{currency}{numeric}{box}{law}] [{end_punctuation}] [{start_punctuation}]
    | [{currency}{numeric}{box}] [{start_punctuation}]
    | [a-z] [{upper_accented}] [{start_punctuation}{currency}]
    | [{box}] [{kaomoji}]
    | [{lower_accented}{upper_accented}{currency}{numeric}{start_punctuation}{end_punctuation}{law}] [{box}]
    | [{box}] [{end_punctuation}]
    | [{lower_accented}{upper_accented}] [{start_punctuation}{end_punctuation}] \w
    | [\u0152\u0153][^A-Za-z]
    | [{upper_accented}]\xb0
    | [\xc2\xc3\xce\xd0][\u20ac\u0153\u0160\u0161\xa2\xa3\u0178\u017e\xa0\xad\xae\xa9\xb0\xb7\xbb{start_punctuation}{end_punctuation}\u2013\u2014\xb4]
    | \xd7 [\xb2\xb3]
    | [\xd8\xd9] [{common}{currency}{bad}{numeric}{start_punctuation}\u0178\u0160\xae\xb0\xb5\xbb]
      [\xd8\xd9] [{common}{currency}{bad}{numeric}{start_punctuation}\u0178\u0160\xae\xb0\xb5\xbb]
    | \xe0[\xb2\xb5\xb9\xbc\xbd\xbe]
    | \u221a[\xb1\u2202\u2020\u2260\xae\u2122\xb4\u2264\u2265\xa5\xb5\xf8]
    | \u2248[\xb0\xa2]
    | \u201a\xc4[\xec\xee\xef\xf2\xf4\xfa\xf9\xfb\u2020\xb0\xa2\u03c0]
    | \u201a[\xe2\xf3][\xe0\xe4\xb0\xea]
    | \u0432\u0402
    | [\u0412\u0413\u0420\u0421][{c1}{bad}{start_punctuation}{end_punctuation}{currency}\xb0\xb5][\u0412\u0413\u0420\u0421]
    | \u0413\u045e\u0412\u0402\u0412.[A-Za-z ]
    | \xc3[\xa0\xa1]
    | [a-z]\s?[\xc3\xc2][ ]
    | ^[\xc3\xc2][ ]
    | [a-z.,?!{end_punctuation}] \xc2 [ {start_punctuation}{end_punctuation}]
    | \u03b2\u20ac[\u2122\xa0\u0386\xad\xae\xb0]
    | [\u0392\u0393\u039e\u039f][{c1}{bad}{start_punctuation}{end_punctuation}{currency}\xb0][\u0392\u0393\u039e\u039f]
    | \u0101\u20ac
    """.format(**cat)
    return stdre.compile(pat, stdre.VERBOSE)


BADNESS_RE = _badness_re()


def ftfy_would_fix_encoding(text):
    """True when ftfy's fix_encoding would look at some segment (non-ASCII and is_bad)."""
    pos = 0
    while pos < len(text):
        brk = text.find("\n", pos) + 1 or len(text)
        seg = text[pos:brk]
        if not seg.isascii() and BADNESS_RE.search(seg):
            return True
        pos = brk
    return False


# ---------------------------------------------------------------------------------------
# Small fallback vocabulary: byte-level BPE trained on our corpus, the layout of vocab.json
# ---------------------------------------------------------------------------------------

def train_small_vocab(texts, n_merges):
    units = [v for v in BYTE_ENC.values()]
    vocab = units + [u + "</w>" for u in units]
    words = {}
    for t in texts:
        for tok in PAT.findall(clean(t)):
            w = "".join(BYTE_ENC[b] for b in tok.encode("utf-8"))
            if tok in ("<|startoftext|>", "<|endoftext|>"):
                continue
            sym = tuple(w[:-1]) + (w[-1] + "</w>",)
            words[sym] = words.get(sym, 0) + 1
    merges = []
    for _ in range(n_merges):
        counts = {}
        for w, c in words.items():
            for p in zip(w, w[1:]):
                counts[p] = counts.get(p, 0) + c
        if not counts:
            break
        best = max(sorted(counts), key=lambda p: counts[p])
        if counts[best] < 2:
            break
        merges.append(best)
        vocab.append(best[0] + best[1])
        nw = {}
        for w, c in words.items():
            out, i = [], 0
            while i < len(w):
                if i < len(w) - 1 and (w[i], w[i + 1]) == best:
                    out.append(w[i] + w[i + 1])
                    i += 2
                else:
                    out.append(w[i])
                    i += 1
            nw[tuple(out)] = nw.get(tuple(out), 0) + c
        words = nw
    vocab += ["<|startoftext|>", "<|endoftext|>"]
    return {v: i for i, v in enumerate(vocab)}, merges


def write_hf_vocab(d, vocab, merges):
    os.makedirs(d, exist_ok=True)
    with open(os.path.join(d, "vocab.json"), "w", encoding="utf-8") as f:
        json.dump(vocab, f, ensure_ascii=False)
    with open(os.path.join(d, "merges.txt"), "w", encoding="utf-8") as f:
        f.write("#version: 0.2\n")
        for a, b in merges:
            f.write(f"{a} {b}\n")


# ---------------------------------------------------------------------------------------
# Our corpus: hand-picked edge cases, then seeded random mixes over many scripts
# ---------------------------------------------------------------------------------------

HAND = [
    # accents, composed and decomposed; canonical order; singletons; exclusions; Hangul
    "caf\u00e9", "cafe\u0301", "n\u0303and\u00fa", "\u00c5ngstr\u00f6m", "A\u030angstro\u0308m",
    "e\u0302\u0301 \u1ebf", "a\u0323\u0302 a\u0302\u0323 \u1ead", "\u01d6 u\u0308\u0304",
    "\u2126 \u212b \u212a", "\u0958\u0959 \u0915\u093c", "\u1100\u1161\u11a8 \uac01",
    "\u1112\u1161\u11ab\u1100\u1173\u11af", "o\u0308\u0308\u0308", "x\u0301\u0300\u0327\u0328",
    # CJK, kana, halfwidth kana with voiced marks
    "\u4e00\u53ea\u732b\u5728\u684c\u5b50\u4e0a", "\u732b\u304c\u597d\u304d\u3067\u3059",
    "\uff76\uff80\uff76\uff85 \uff76\uff9e\uff8a\uff9f", "\uc548\ub155\ud558\uc138\uc694 \uc138\uacc4",
    # Cyrillic, Greek and the final sigma
    "\u041f\u0440\u0438\u0432\u0435\u0442, \u043c\u0438\u0440!", "\u039f\u0394\u03a5\u03a3\u03a3\u0395\u03a5\u03a3",
    "\u03a3", "\u0391\u03a3.", "\u0391\u03a3\u0384 \u0391\u03a3\u0301b", "\u1f08\u03a3 \u03a3\u0391",
    "\u0391\u00ad\u03a3", "\u039a\u0391\u039b\u0397\u039c\u0395\u03a1\u0391 \u03a3\u0391\u03a3",
    # Arabic, Hebrew, Devanagari, Thai
    "\u0645\u0631\u062d\u0628\u0627 \u0628\u0627\u0644\u0639\u0627\u0644\u0645", "\u05e9\u05dc\u05d5\u05dd \u05e2\u05d5\u05dc\u05dd",
    "\u0928\u092e\u0938\u094d\u0924\u0947 \u0926\u0941\u0928\u093f\u092f\u093e", "\u0e2a\u0e27\u0e31\u0e2a\u0e14\u0e35",
    # emoji: skin tones, ZWJ, flags, keycaps, variation selectors
    "\U0001f44d\U0001f3fd thumbs", "\U0001f468\u200d\U0001f469\u200d\U0001f467\u200d\U0001f466 family",
    "\U0001f1ef\U0001f1f5\U0001f1eb\U0001f1f7", "1\ufe0f\u20e3 #\ufe0f\u20e3", "\u2764\ufe0f love", "\U0001f3f3\ufe0f\u200d\U0001f308",
    "\U0001f469\U0001f3ff\u200d\U0001f4bb coder",
    # digits and other numbers
    "12345", "\u0663\u0664\u0665", "\u00bd \u00b2 \u216b \u2460", "3.14159", "1,000,000", "\uff11\uff12\uff13",
    # contractions
    "don't", "I'LL GO", "it's mine", "'S", "'\u017f \u017ftop", "we've they're I'm he'd", "'ll've'd", "rock'n'roll",
    # punctuation runs and special-token look-alikes
    "!!!???...", "--==>>", "(a)[b]{c}", "<<|>>", "a<|endoftext|>b", "x<|startoftext|", "!<|endoftext|>",
    "<|startoftext|>", "<|endoftext|>", "<|ENDOFTEXT|>", "<|\u017ftartoftext|>", "<|startoftext|><|endoftext|>",
    "<|startoftext|> a photo <|endoftext|>", "...<|endoftext|>",
    # HTML references: named, numeric, invalid, missing semicolons, upper-cased, nested
    "&amp;", "&amp;amp;", "&amp;amp;amp;lt;", "&lt;b&gt;", "&#65;&#x41;&#X41;", "&#x1F600;", "&#0;",
    "&#128;&#150;&#159;", "&#xD800;", "&#1114112;", "&#99999999999;", "&notit;", "&notin;", "&ampx",
    "&AMP;", "&EACUTE;", "&Eacute", "&eacute", "&#12a;", "&;", "& amp;", "&#;", "&#x;", "AT&T",
    "&hellip;&nbsp;x", "&NotNestedGreaterGreater;", "&nbsp", "<b>&amp;</b>", "x\n<\n&amp;", "&amp;\n&lt;",
    "&SZLIG; &szlig;", "&#x27;s", "&#39;ll", "&#11;&#12;&#13;", "&#x85;", "&lt;|endoftext|&gt;",
    "&ThisIsAVeryLongNameThatIsNoEntityAtAll;",
    # curly quotes, ligatures, fullwidth
    "\u201cHello\u201d \u2018world\u2019 \u201b\u201f \u02bc", "don\u2019t", "\ufb01 \ufb02 \ufb00 \ufb03 \ufb04 \ufb05 \ufb06",
    "\u0132sselmeer \u01c6 \u0149", "\uff26\uff35\uff2c\uff2c\uff37\uff29\uff24\uff34\uff28\u3000\uff54\uff45\uff58\uff54\uff01",
    "\uffe0\uffe1\uffe5\uffe6 \uffe3",
    # whitespace of every kind, and characters that only look like it
    "a\tb\nc\x0bd\x0ce\rf", "a\x1cb\x1dc\x1ed\x1ff", "a\x85b\xa0c\u1680d", "a\u2000b\u2005c\u200ad",
    "a\u2028b\u2029c\u202fd\u205fe\u3000f", "a\u200bb\ufeffc\u180ed", " \t padded \n ",
    # controls and terminal escapes
    "a\x00b\x07c", "\x1b[31mred\x1b[0m", "\x1b[1;32;40mgreen", "\x1b[\u0663m", "\x1b[xmno", "a\x7fb\u206ac\ufffcd",
    "\x93quoted\x94 \x85 \x80 \x81", "a\r\nb\rc", "\u0085next",
    # empty and blank
    "", " ", "   \t\n  ", "\n\n", "\u3000", "\xa0\xa0",
    # letters that case-map oddly
    "\u0130stanbul \u0130", "a\u0345b \u1fbc \u1fb3", "\u1e9e STRASSE", "\u01c5 \u01c8", "\u2160\u2161 \u24b6",
    # far over 77 tokens
    " ".join(["photo"] * 120), "a" * 500, "ab" * 300, "\u732b" * 200,
    "\U0001f600" * 100, ", ".join(str(i) for i in range(200)),
    "a photo of a cat", "a diagram", "a dog", "A PHOTO OF A CAT.",
]

_SCRIPTS = {
    "latin": "abcdefghijklmnopqrstuvwxyz", "upper": "ABCDEFGHIJKLMNOPQRSTUVWXYZ",
    "accent": "\u00e0\u00e1\u00e2\u00e3\u00e4\u00e5\u00e7\u00e8\u00e9\u00ea\u00eb\u00f1\u00f6\u00fc\u00df\u0107\u0161\u017e\u0142",
    "greek": "\u03b1\u03b2\u03b3\u03b4\u03b5\u03b6\u03b7\u03b8\u039b\u03a3\u03a9\u03c2",
    "cyrillic": "\u0430\u0431\u0432\u0433\u0434\u0435\u0416\u0417\u0418\u042f",
    "arabic": "\u0627\u0628\u062a\u062b\u062c\u062d\u062e\u062f",
    "hebrew": "\u05d0\u05d1\u05d2\u05d3\u05d4\u05d5",
    "deva": "\u0915\u0916\u0917\u093e\u093f\u094d\u0902",
    "cjk": "\u732b\u72ac\u5c71\u5ddd\u65e5\u6708",
    "kana": "\u3042\u3044\u3046\u30ab\u30ad\u30af\uff76\uff9e",
    "hangul": "\uac00\ub098\ub2e4\u1100\u1161",
    "emoji": "\U0001f600\U0001f436\U0001f431\U0001f3fd\u200d\U0001f4bb\u2764\ufe0f",
    "digits": "0123456789\u0660\u0661\u0967\uff10",
    "punct": "!?.,;:-()[]{}'\"#@$%*+/<>=|~^`",
    "marks": "\u0300\u0301\u0302\u0308\u0323\u0327\u0345",
    "space": " \t\n\xa0\u2003\u3000\u2028",
    "special": ["&amp;", "&lt;", "&#39;", "&hellip;", "&nbsp;", "'s", "'ll", "<|endoftext|>",
                "\ufb01", "\u201c", "\u2019", "\uff21", "\x1b[0m", "\r\n", "&ampx"],
}


def corpus_texts():
    import random
    rng = random.Random(20240611)
    out = list(HAND)
    words = ["photo", "cat", "dog", "of", "a", "the", "mountain", "city", "painting", "red"]
    keys = sorted(_SCRIPTS)
    while len(out) < 340:
        parts = []
        for _ in range(rng.randint(1, 8)):
            k = rng.choice(keys + ["words", "words"])
            if k == "words":
                parts.append(rng.choice(words))
            elif k == "special":
                parts.append(rng.choice(_SCRIPTS[k]))
            else:
                parts.append("".join(rng.choice(_SCRIPTS[k]) for _ in range(rng.randint(1, 7))))
        out.append(rng.choice(["", " ", " ", "  "]).join(parts))
    return out


# ---------------------------------------------------------------------------------------
# Commands
# ---------------------------------------------------------------------------------------

def cmd_check(cases_path, vocab_dir):
    tok = Tokenizer.from_dir(vocab_dir)
    with open(cases_path, encoding="utf-8") as f:
        doc = json.load(f)
    cases = doc["cases"] if "cases" in doc else [
        t for m in doc["models"].values() for t in m["texts"]]
    bad = 0
    for c in cases:
        got = tok.tokenize(c["text"])
        if got != c["ids"]:
            bad += 1
            tag = " (ftfy fix_encoding would act)" if ftfy_would_fix_encoding(c["text"]) else ""
            print(f"MISMATCH{tag}: {c['text']!r}\n  want {c['ids'][:30]}\n  got  {got[:30]}")
    print(f"{len(cases) - bad}/{len(cases)} match")
    return 1 if bad else 0


def main(argv):
    if len(argv) >= 3 and argv[0] == "check":
        return cmd_check(argv[1], argv[2])
    if len(argv) >= 3 and argv[0] == "encode":
        tok = Tokenizer.from_dir(argv[1])
        for t in argv[2:]:
            print(json.dumps(tok.tokenize(t)))
        return 0
    if len(argv) == 2 and argv[0] == "small-vocab":
        vocab, merges = train_small_vocab(corpus_texts(), 600)
        write_hf_vocab(argv[1], vocab, merges)
        return 0
    if argv and argv[0] == "corpus":
        small = Tokenizer.from_dir("tests/data/small-vocab")
        real = Tokenizer.from_dir(argv[1]) if len(argv) > 1 else None
        out = []
        for t in corpus_texts():
            e = {"text": t, "ids_small": small.tokenize(t)}
            if real:
                e["ids_clip"] = real.tokenize(t)
            out.append(e)
        with open("tests/data/tokenizer_corpus.json", "w", encoding="utf-8") as f:
            f.write('{"generated_by": "tools/ref_tokenizer.py corpus: ids_small with '
                    'tests/data/small-vocab, ids_clip with OpenAI\'s vocabulary",\n"cases": [\n')
            f.write(",\n".join(json.dumps(e, ensure_ascii=True) for e in out))
            f.write("\n]}\n")
        return 0
    print(__doc__, file=sys.stderr)
    return 2


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
