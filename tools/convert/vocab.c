/* vocab.c -- the tokenizer the .clip file carries (cv->tok): token strings by id, the
 * ranked merges as id triples, and the two special tokens. From Hugging Face's
 * vocab.json + merges.txt, or from OpenAI's bpe_simple_vocab_16e6.txt.gz rebuilt exactly
 * as OpenAI's simple_tokenizer does (the gzip member parsed here, its deflate body inflated
 * by zip.c's inflate_raw). Every merge must name tokens of the vocabulary.
 *
 * It knows nothing of the weights: convert() compares the token count with the model's
 * vocab_size, and write.c lays the section out. Start from load_tokenizer, at the end.
 */
#include "convert.h"

#include <limits.h>
#include <stdlib.h>
#include <string.h>

static const char *tok_key(const void *ctx, uint32_t i, size_t *len)
{
    const tokenizer *t = ctx;
    *len = t->len[i];
    return t->arena + t->off[i];
}

static long tok_find(const tokenizer *t, const char *s, size_t n)
{
    return strmap_find(&t->map, s, n, tok_key, t, -1);
}

void tok_free(tokenizer *t)
{
    free(t->arena);
    free(t->off);
    free(t->len);
    free(t->merges);
    strmap_free(&t->map);
}

/* Sets token strings (already in the arena at off/len) into the lookup map, refusing
 * duplicates, and finds the two special tokens. */
static int tok_index(conv *cv, tokenizer *t, const char *what)
{
    if (strmap_init(&t->map, t->n) != 0) return fail(cv, "out of memory");
    for (uint32_t i = 0; i < t->n; i++) {
        if (t->len[i] == 0 || t->len[i] > 0xffff)
            return fail(cv, "%s: token %u has length %zu", what, i, t->len[i]);
        if (strmap_find(&t->map, t->arena + t->off[i], t->len[i], tok_key, t, i) >= 0)
            return fail(cv, "%s: token %u (%.*s) appears twice", what, i, (int)t->len[i],
                        t->arena + t->off[i]);
    }
    long s = tok_find(t, "<|startoftext|>", 15), e = tok_find(t, "<|endoftext|>", 13);
    if (s < 0 || e < 0) return fail(cv, "%s: no <|startoftext|> / <|endoftext|> tokens", what);
    t->sot = (uint32_t)s;
    t->eot = (uint32_t)e;
    return 0;
}

/* One merge "a b": the ids of a, b and a+b, all of which must be tokens. */
static int tok_merge(conv *cv, tokenizer *t, const char *line, size_t n, const char *what,
                     size_t lineno)
{
    const char *sp = memchr(line, ' ', n);
    if (!sp || sp == line || sp + 1 == line + n || memchr(sp + 1, ' ', (size_t)(line + n - sp - 1)))
        return fail(cv, "%s line %zu: not a merge \"a b\"", what, lineno);
    size_t la = (size_t)(sp - line), lb = n - la - 1;
    char joined[1024];
    if (n >= sizeof joined) return fail(cv, "%s line %zu: merge too long", what, lineno);
    memcpy(joined, line, la);
    memcpy(joined + la, sp + 1, lb);
    long a = tok_find(t, line, la), b = tok_find(t, sp + 1, lb), m = tok_find(t, joined, la + lb);
    if (a < 0 || b < 0 || m < 0)
        return fail(cv, "%s line %zu: %s token \"%.*s\" is not in the vocabulary", what, lineno,
                    m < 0 && a >= 0 && b >= 0 ? "merged" : "merge",
                    (int)(a < 0 ? la : b < 0 ? lb : la + lb), a < 0 ? line : b < 0 ? sp + 1 : joined);
    uint32_t *r = t->merges + 3 * (size_t)t->n_merges++;
    r[0] = (uint32_t)a;
    r[1] = (uint32_t)b;
    r[2] = (uint32_t)m;
    return 0;
}

/* Splits text into lines (without '\n', without a trailing '\r'). */
static size_t count_lines(const char *s, size_t n)
{
    size_t c = 0;
    for (size_t i = 0; i < n; i++) c += s[i] == '\n';
    return c + (n && s[n - 1] != '\n');
}

static int load_hf_tokenizer(conv *cv, const char *vpath, const char *mpath)
{
    tokenizer *t = &cv->tok;
    clip_json_doc *doc;
    if (load_json_file(cv, vpath, &doc) != 0) return -1;
    const clip_json *r = clip_json_root(doc);
    int rc = 0;
    size_t total = 0;
    t->n = (uint32_t)r->n;
    t->off = calloc(r->n + 1, sizeof *t->off);
    t->len = calloc(r->n + 1, sizeof *t->len);
    char *seen = calloc(r->n + 1, 1);
    if (!t->off || !t->len || !seen || r->n > MAX_HYPER) {
        rc = fail(cv, r->n > MAX_HYPER ? "%s: vocabulary too large" : "out of memory (%s)", vpath);
        goto out;
    }
    for (size_t i = 0; i < r->n; i++) {
        const clip_json *v = &r->items[i];
        if (v->type != CLIP_JSON_NUMBER || !v->is_integer || v->number < 0 || v->number >= (double)r->n ||
            seen[(size_t)v->number]) {
            rc = fail(cv, "%s: ids must be 0..%zu, each once (bad id for \"%s\")", vpath,
                      r->n - 1, r->keys[i]);
            goto out;
        }
        seen[(size_t)v->number] = 1;
        total += r->key_lens[i];
    }
    t->arena = malloc(total + 1);
    if (!t->arena) { rc = fail(cv, "out of memory"); goto out; }
    total = 0;
    for (size_t i = 0; i < r->n; i++) {
        size_t id = (size_t)r->items[i].number;
        t->off[id] = total;
        t->len[id] = r->key_lens[i];
        memcpy(t->arena + total, r->keys[i], r->key_lens[i]);
        total += r->key_lens[i];
    }
    if (tok_index(cv, t, vpath) != 0) { rc = -1; goto out; }
    char *text;
    size_t len;
    if (read_file(cv, mpath, MAX_TEXT_FILE, &text, &len) != 0) { rc = -1; goto out; }
    t->merges = malloc((count_lines(text, len) + 1) * 3 * sizeof *t->merges);
    if (!t->merges) { free(text); rc = fail(cv, "out of memory"); goto out; }
    size_t lineno = 0;
    for (char *p = text, *end = text + len; p < end && rc == 0;) {
        char *nl = memchr(p, '\n', (size_t)(end - p));
        size_t n = (size_t)((nl ? nl : end) - p);
        lineno++;
        if (n && p[n - 1] == '\r') n--;
        if (!(lineno == 1 && n >= 8 && !memcmp(p, "#version", 8)) && n)
            rc = tok_merge(cv, t, p, n, mpath, lineno);
        p = nl ? nl + 1 : end;
    }
    free(text);
out:
    free(seen);
    clip_json_free(doc);
    return rc;
}

/* The gzip member header (RFC 1952) is parsed here and its deflate body handed to
 * stb_image's inflater: stb already ships one (for PNG), so no zlib dependency is added
 * for the single gzip file we read. */
static int gunzip(conv *cv, const char *path, char **out, size_t *outlen)
{
    char *gz;
    size_t n;
    if (read_file(cv, path, MAX_TEXT_FILE, &gz, &n) != 0) return -1;
    const uint8_t *g = (const uint8_t *)gz;
    size_t p = 10;
    int rc = 0;
    if (n < 18 || g[0] != 0x1f || g[1] != 0x8b || g[2] != 8) {
        rc = fail(cv, "%s: not a gzip file", path);
        goto out;
    }
    uint8_t flg = g[3];
    if (flg & 4) { p = p + 2 <= n - 8 ? p + 2 + rd16(g + p) : n; }
    for (int f = 8; f <= 16; f <<= 1)
        if (flg & f) {
            while (p < n - 8 && g[p]) p++;
            p++;
        }
    if (flg & 2) p += 2;
    uint32_t crc = rd32(g + n - 8), isize = rd32(g + n - 4);
    if (p >= n - 8 || isize > MAX_TEXT_FILE || n - 8 - p > INT_MAX) {
        rc = fail(cv, "%s: corrupt or truncated gzip file", path);
        goto out;
    }
    char *buf = malloc((size_t)isize + 1);
    if (!buf) { rc = fail(cv, "out of memory"); goto out; }
    if (inflate_raw(g + p, n - 8 - p, (uint8_t *)buf, isize) != 0 || crc32_update(0, (uint8_t *)buf, isize) != crc) {
        free(buf);
        rc = fail(cv, "%s: corrupt gzip data", path);
        goto out;
    }
    buf[isize] = 0;
    *out = buf;
    *outlen = isize;
out:
    free(gz);
    return rc;
}

/* Exactly OpenAI's simple_tokenizer: the 256 byte stand-ins (bytes_to_unicode order), the
 * same with "</w>", then merges[1 : 49152-256-2+1] joined, then the two special tokens. */
static int load_bpe_tokenizer(conv *cv, const char *path)
{
    enum { N_MERGES = 49152 - 256 - 2 };
    tokenizer *t = &cv->tok;
    char *text = NULL;
    size_t len = 0;
    if (gunzip(cv, path, &text, &len) != 0) return -1;
    const char **lines = malloc(N_MERGES * sizeof *lines);
    size_t *lens = malloc(N_MERGES * sizeof *lens), nl = 0, total = 0;
    int rc = 0;
    if (!lines || !lens) { rc = fail(cv, "out of memory"); goto out; }
    /* line 0 is the "#version" line */
    char *p = memchr(text, '\n', len);
    for (p = p ? p + 1 : text + len; p < text + len && nl < N_MERGES;) {
        char *e = memchr(p, '\n', (size_t)(text + len - p));
        lines[nl] = p;
        lens[nl] = (size_t)((e ? e : text + len) - p);
        total += lens[nl];
        nl++;
        p = e ? e + 1 : text + len;
    }
    /* A short file (a small test vocabulary) is taken whole, as Python's slice does (the
     * empty string Python's split leaves after the final newline is not taken as a merge). */
    if (nl == 0) {
        rc = fail(cv, "%s: no merges after the version line", path);
        goto out;
    }
    t->n = 512 + (uint32_t)nl + 2;
    t->arena = malloc(512 * 6 + total + 64);
    t->off = malloc(t->n * sizeof *t->off);
    t->len = malloc(t->n * sizeof *t->len);
    t->merges = malloc(nl * 3 * sizeof *t->merges);
    if (!t->arena || !t->off || !t->len || !t->merges) { rc = fail(cv, "out of memory"); goto out; }
    size_t at = 0;
    uint32_t id = 0;
    /* bytes_to_unicode: printable Latin-1 bytes map to themselves, the other 68 bytes to
     * U+0100 onwards, listed after them in byte order. */
    uint32_t cps[256];
    int k = 0, extra = 0;
    for (int b = 0; b < 256; b++)
        if ((b >= '!' && b <= '~') || (b >= 0xa1 && b <= 0xac) || (b >= 0xae && b <= 0xff))
            cps[k++] = (uint32_t)b;
    for (int b = 0; b < 256; b++)
        if (!((b >= '!' && b <= '~') || (b >= 0xa1 && b <= 0xac) || (b >= 0xae && b <= 0xff)))
            cps[k++] = 256u + (uint32_t)extra++;
    for (int pass = 0; pass < 2; pass++)
        for (int i = 0; i < 256; i++) {
            uint32_t c = cps[i];
            t->off[id] = at;
            if (c < 0x80) t->arena[at++] = (char)c;
            else {
                t->arena[at++] = (char)(0xc0 | (c >> 6));
                t->arena[at++] = (char)(0x80 | (c & 0x3f));
            }
            if (pass) { memcpy(t->arena + at, "</w>", 4); at += 4; }
            t->len[id] = at - t->off[id];
            id++;
        }
    for (size_t i = 0; i < nl; i++) {
        size_t n = lens[i];
        if (n && lines[i][n - 1] == '\r') n--;
        t->off[id] = at;
        for (size_t j = 0; j < n; j++)
            if (lines[i][j] != ' ') t->arena[at++] = lines[i][j];
        t->len[id] = at - t->off[id];
        id++;
    }
    memcpy(t->arena + at, "<|startoftext|><|endoftext|>", 28);
    t->off[id] = at; t->len[id++] = 15;
    t->off[id] = at + 15; t->len[id++] = 13;
    if (tok_index(cv, t, path) != 0) { rc = -1; goto out; }
    for (size_t i = 0; i < nl && rc == 0; i++) {
        size_t n = lens[i];
        if (n && lines[i][n - 1] == '\r') n--;
        rc = tok_merge(cv, t, lines[i], n, path, i + 2);
    }
out:
    free(lines);
    free(lens);
    free(text);
    return rc;
}

int load_tokenizer(conv *cv, const char **from)
{
    char vpath[PATH_MAX], mpath[PATH_MAX], bpath[PATH_MAX];
    if (join(cv, vpath, sizeof vpath, cv->src, "vocab.json") ||
        join(cv, mpath, sizeof mpath, cv->src, "merges.txt") ||
        join(cv, bpath, sizeof bpath, cv->src, "bpe_simple_vocab_16e6.txt.gz"))
        return -1;
    if (cv->bpe_opt) {
        *from = cv->bpe_opt;
        if (!file_exists(cv->bpe_opt)) return fail(cv, "missing file %s (--bpe)", cv->bpe_opt);
        return load_bpe_tokenizer(cv, cv->bpe_opt);
    }
    if (file_exists(vpath) && file_exists(mpath)) {
        *from = "vocab.json + merges.txt";
        return load_hf_tokenizer(cv, vpath, mpath);
    }
    if (file_exists(bpath)) {
        *from = "bpe_simple_vocab_16e6.txt.gz";
        return load_bpe_tokenizer(cv, bpath);
    }
    return fail(cv, "missing file %s (the tokenizer: vocab.json + merges.txt, or "
                "bpe_simple_vocab_16e6.txt.gz, or --bpe FILE)",
                file_exists(vpath) ? mpath : cv->openai_naming ? bpath : vpath);
}
