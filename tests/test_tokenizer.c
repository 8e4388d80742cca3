/* tests/test_tokenizer.c -- the tokenizer against OpenAI's ids, our corpus, and bad input.
 *
 * With ../shared/reference present: its 438 tokenizer cases and expected.json's texts must
 * give OpenAI's ids exactly, with the real vocabulary (tiny-hf's vocab.json + merges.txt,
 * written into a tokenizer section here the way clip-convert does), and so must our
 * corpus's ids_clip. Always: our corpus (tests/data/tokenizer_corpus.json) with the small
 * vocabulary in tests/data/small-vocab, invalid UTF-8, empty and blank text, truncation,
 * random bytes, corrupt sections, two threads on one tokenizer, and the timings.
 */
#include "tokenizer.h"
#include "json.h"
#include "tests/check.h"

#include <pthread.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#define CTX 77

/* CPU time of this thread: the machine is shared, and wall time would measure the others. */
static double now_s(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_THREAD_CPUTIME_ID, &ts);
    return (double)ts.tv_sec + ts.tv_nsec * 1e-9;
}

/* Sanitizer builds run many times slower: their timings are printed, not checked. */
#if defined(__SANITIZE_ADDRESS__) || defined(__SANITIZE_UNDEFINED__)
#define TIMED 0
#elif defined(__has_feature)
#if __has_feature(address_sanitizer) || __has_feature(undefined_behavior_sanitizer)
#define TIMED 0
#endif
#endif
#ifndef TIMED
#define TIMED 1
#endif

/* A timing check: CHECK in a plain build, a SKIP line with the number in a sanitizer one. */
#define CHECK_TIME(cond, ...) \
    do { if (TIMED) CHECK(cond, __VA_ARGS__); else check_skip("timing (sanitizer build): " __VA_ARGS__); } while (0)

static char *read_file(const char *path, size_t *len)
{
    FILE *f = fopen(path, "rb");
    if (!f) return NULL;
    char *buf = NULL;
    size_t cap = 0, n = 0, got;
    do {
        if (n + 65536 > cap) {
            cap = (n + 65536) * 2;
            char *b = realloc(buf, cap);
            if (!b) { free(buf); fclose(f); return NULL; }
            buf = b;
        }
        got = fread(buf + n, 1, cap - n - 1, f);
        n += got;
    } while (got > 0);
    fclose(f);
    buf[n] = 0;
    *len = n;
    return buf;
}

static clip_json_doc *read_json(const char *path)
{
    size_t len;
    char *text = read_file(path, &len);
    if (!text) return NULL;
    char why[256];
    clip_json_doc *doc = clip_json_parse(text, len, 0, why, sizeof why);
    if (!doc) printf("# %s: %s\n", path, why);
    free(text);
    return doc;
}

/* ---------------------------------------------------------------------------------------
 * A tokenizer section from a Hugging Face vocab.json + merges.txt
 * ------------------------------------------------------------------------------------- */

typedef struct strmap {
    const char **key;
    size_t *len;
    uint32_t *id;
    size_t mask;
} strmap;

static uint64_t hash_bytes(const char *s, size_t n)
{
    uint64_t h = 0xcbf29ce484222325ull;
    for (size_t i = 0; i < n; i++) h = (h ^ (uint8_t)s[i]) * 0x100000001b3ull;
    return h;
}

static long strmap_get(const strmap *m, const char *s, size_t n)
{
    for (size_t h = hash_bytes(s, n) & m->mask;; h = (h + 1) & m->mask) {
        if (!m->key[h]) return -1;
        if (m->len[h] == n && memcmp(m->key[h], s, n) == 0) return m->id[h];
    }
}

static void put32(uint8_t *p, uint32_t v)
{
    p[0] = (uint8_t)v; p[1] = (uint8_t)(v >> 8); p[2] = (uint8_t)(v >> 16); p[3] = (uint8_t)(v >> 24);
}

static uint8_t *build_section(const char *dir, size_t *size, uint32_t *n_vocab_out)
{
    char path[1024];
    snprintf(path, sizeof path, "%s/vocab.json", dir);
    clip_json_doc *doc = read_json(path);
    if (!doc) return NULL;
    const clip_json *v = clip_json_root(doc);
    uint8_t *sec = NULL;
    size_t n = v->type == CLIP_JSON_OBJECT ? v->n : 0;
    const char **tok = calloc(n ? n : 1, sizeof *tok);
    size_t *tok_len = calloc(n ? n : 1, sizeof *tok_len);
    strmap m = {0};
    m.mask = 1;
    while (m.mask < 2 * n) m.mask = m.mask * 2 + 1;
    m.key = calloc(m.mask + 1, sizeof *m.key);
    m.len = calloc(m.mask + 1, sizeof *m.len);
    m.id = calloc(m.mask + 1, sizeof *m.id);
    char *merges = NULL;
    if (!n || !tok || !tok_len || !m.key || !m.len || !m.id) goto done;
    size_t total = 16;
    for (size_t i = 0; i < n; i++) {
        double d = v->items[i].number;
        if (v->items[i].type != CLIP_JSON_NUMBER || d < 0 || d >= (double)n || tok[(size_t)d]) goto done;
        tok[(size_t)d] = v->keys[i];
        tok_len[(size_t)d] = v->key_lens[i];
        total += 2 + v->key_lens[i];
        size_t h = hash_bytes(v->keys[i], v->key_lens[i]) & m.mask;
        while (m.key[h]) h = (h + 1) & m.mask;
        m.key[h] = v->keys[i];
        m.len[h] = v->key_lens[i];
        m.id[h] = (uint32_t)d;
    }
    snprintf(path, sizeof path, "%s/merges.txt", dir);
    size_t mlen;
    merges = read_file(path, &mlen);
    if (!merges) goto done;
    size_t n_merges = 0;
    for (char *line = merges; *line;) {
        char *end = strchr(line, '\n');
        if (!end) end = line + strlen(line);
        if (end > line && strncmp(line, "#version", 8) != 0) n_merges++;
        line = *end ? end + 1 : end;
    }
    sec = malloc(total + 12 * n_merges);
    if (!sec) goto done;
    long sot = strmap_get(&m, "<|startoftext|>", 15), eot = strmap_get(&m, "<|endoftext|>", 13);
    put32(sec, (uint32_t)n);
    put32(sec + 4, (uint32_t)n_merges);
    put32(sec + 8, (uint32_t)sot);
    put32(sec + 12, (uint32_t)eot);
    size_t p = 16;
    for (size_t i = 0; i < n; i++) {
        sec[p] = (uint8_t)tok_len[i];
        sec[p + 1] = (uint8_t)(tok_len[i] >> 8);
        memcpy(sec + p + 2, tok[i], tok_len[i]);
        p += 2 + tok_len[i];
    }
    char cat[1024];
    for (char *line = merges; *line;) {
        char *end = strchr(line, '\n');
        if (!end) end = line + strlen(line);
        if (end > line && strncmp(line, "#version", 8) != 0) {
            char *sp = memchr(line, ' ', (size_t)(end - line));
            size_t ln = sp ? (size_t)(sp - line) : 0, rn = sp ? (size_t)(end - sp - 1) : 0;
            long l = sp ? strmap_get(&m, line, ln) : -1, r = sp ? strmap_get(&m, sp + 1, rn) : -1;
            long mg = -1;
            if (l >= 0 && r >= 0 && ln + rn < sizeof cat) {
                memcpy(cat, line, ln);
                memcpy(cat + ln, sp + 1, rn);
                mg = strmap_get(&m, cat, ln + rn);
            }
            if (mg < 0) { free(sec); sec = NULL; goto done; }
            put32(sec + p, (uint32_t)l);
            put32(sec + p + 4, (uint32_t)r);
            put32(sec + p + 8, (uint32_t)mg);
            p += 12;
        }
        line = *end ? end + 1 : end;
    }
    *size = p;
    *n_vocab_out = (uint32_t)n;
done:
    free(merges);
    free(tok);
    free(tok_len);
    free(m.key);
    free(m.len);
    free(m.id);
    clip_json_free(doc);
    return sec;
}

/* ---------------------------------------------------------------------------------------
 * Checks
 * ------------------------------------------------------------------------------------- */

static int same_ids(const int32_t *a, const clip_json *want)
{
    if (!want || want->type != CLIP_JSON_ARRAY || want->n != CTX) return 0;
    for (size_t i = 0; i < CTX; i++)
        if (want->items[i].type != CLIP_JSON_NUMBER || a[i] != (int32_t)want->items[i].number) return 0;
    return 1;
}

static void print_ids(const char *what, const int32_t *ids)
{
    printf("#   %s:", what);
    for (int i = 0; i < CTX && (i < 2 || ids[i - 1] != 0); i++) printf(" %d", ids[i]);
    putchar('\n');
}

/* Every case in `cases` (objects with "text" and an ids array named `field`) must match. */
static void check_cases(const clip_tokenizer *tok, const clip_json *cases, const char *field,
                        const char *label)
{
    size_t ok = 0, n = 0, shown = 0;
    for (size_t i = 0; cases && cases->type == CLIP_JSON_ARRAY && i < cases->n; i++) {
        const clip_json *text = clip_json_get(&cases->items[i], "text");
        const clip_json *want = clip_json_get(&cases->items[i], field);
        if (!text || !want) continue;
        n++;
        int32_t ids[CTX];
        clip_error err = {0};
        clip_status st = clip_tokenizer_encode(tok, text->str, text->str_len, ids, &err);
        if (st == CLIP_OK && same_ids(ids, want)) { ok++; continue; }
        if (shown++ < 10) {
            printf("# %s mismatch on %.*s (%s)\n", label, (int)text->str_len, text->str,
                   st == CLIP_OK ? "ids differ" : err.msg);
            if (st == CLIP_OK) {
                print_ids("got ", ids);
                int32_t w[CTX];
                for (int k = 0; k < CTX; k++) w[k] = (int32_t)want->items[k].number;
                print_ids("want", w);
            }
        }
    }
    CHECK(n > 0 && ok == n, "%s: %zu/%zu cases give identical ids", label, ok, n);
}

typedef struct vocab_info { uint32_t n_vocab, sot, eot; } vocab_info;

static clip_tokenizer *load_vocab(const char *dir, const char *label, vocab_info *vi)
{
    size_t size = 0;
    uint32_t n_vocab = 0;
    uint8_t *sec = build_section(dir, &size, &n_vocab);
    if (!CHECK(sec != NULL, "%s: tokenizer section built from %s", label, dir)) return NULL;
    clip_tokenizer *tok = NULL;
    clip_error err = {0};
    double t0 = now_s();
    clip_status st = clip_tokenizer_new(sec, size, n_vocab, CTX, &tok, &err);
    double ms = (now_s() - t0) * 1e3;
    CHECK(st == CLIP_OK, "%s: tokenizer loads %u tokens in %.2f ms CPU%s%s", label, n_vocab, ms,
          st == CLIP_OK ? "" : ": ", st == CLIP_OK ? "" : err.msg);
    if (st == CLIP_OK && n_vocab > 40000)
        CHECK_TIME(ms < 100, "%s: load time %.2f ms is under 100 ms", label, ms);
    vi->n_vocab = n_vocab;
    memcpy(&vi->sot, sec + 8, 4);
    memcpy(&vi->eot, sec + 12, 4);
    /* The section is only needed while loading. */
    memset(sec, 0xA5, size);
    free(sec);
    return tok;
}

static void check_invalid_utf8(const clip_tokenizer *tok)
{
    static const struct { const char *name, *bytes; size_t len; } bad[] = {
        {"truncated 2-byte", "ab\xC3", 3},
        {"truncated 3-byte", "\xE2\x82", 2},
        {"truncated 4-byte", "x\xF0\x9F\x98", 4},
        {"lone continuation", "a\x80z", 3},
        {"overlong slash", "\xC0\xAF", 2},
        {"overlong 3-byte", "\xE0\x80\xAF", 3},
        {"overlong 4-byte", "\xF0\x80\x80\xAF", 4},
        {"surrogate D800", "\xED\xA0\x80", 3},
        {"surrogate DFFF", "\xED\xBF\xBF", 3},
        {"above U+10FFFF", "\xF4\x90\x80\x80", 4},
        {"byte 0xFF", "cat\xFF", 4},
        {"byte 0xFE", "\xFE", 1},
        {"byte 0xF5", "\xF5\x80\x80\x80", 4},
        {"bad continuation", "\xE2\x28\xA1", 3},
    };
    for (size_t i = 0; i < sizeof bad / sizeof bad[0]; i++) {
        int32_t ids[CTX];
        clip_error err = {0};
        clip_status st = clip_tokenizer_encode(tok, bad[i].bytes, bad[i].len, ids, &err);
        CHECK(st == CLIP_ERR_TEXT && strstr(err.msg, "UTF-8"), "invalid UTF-8 (%s) -> CLIP_ERR_TEXT: %s",
              bad[i].name, err.msg);
    }
    /* Only `len` bytes are read: a valid text followed by garbage it must not look at. */
    int32_t ids[CTX];
    clip_error err = {0};
    CHECK(clip_tokenizer_encode(tok, "cat\xFF", 3, ids, &err) == CLIP_OK,
          "bytes past len are not read");
}

static void check_empty_and_blank(const clip_tokenizer *tok, uint32_t sot, uint32_t eot)
{
    static const char *const blanks[] = {"", " ", "\t\n  \r\n", "\xE3\x80\x80\xC2\xA0", "\x1B[0m", "&nbsp;"};
    for (size_t i = 0; i < sizeof blanks / sizeof blanks[0]; i++) {
        int32_t ids[CTX];
        clip_error err = {0};
        clip_status st = clip_tokenizer_encode(tok, blanks[i], strlen(blanks[i]), ids, &err);
        int ok = st == CLIP_OK && ids[0] == (int32_t)sot && ids[1] == (int32_t)eot;
        for (int k = 2; k < CTX; k++) ok &= ids[k] == 0;
        CHECK(ok, "blank text #%zu gives SOT, EOT, zeros", i);
    }
    int32_t ids[CTX];
    CHECK(clip_tokenizer_encode(tok, NULL, 0, ids, NULL) == CLIP_OK && ids[1] == (int32_t)eot,
          "NULL text of length 0 is the empty text");
    CHECK(clip_tokenizer_encode(tok, NULL, 3, ids, NULL) == CLIP_ERR_ARG, "NULL text of length 3 -> CLIP_ERR_ARG");
    CHECK(clip_tokenizer_encode(tok, "a", 1, NULL, NULL) == CLIP_ERR_ARG, "NULL ids -> CLIP_ERR_ARG");
    CHECK(clip_tokenizer_encode(NULL, "a", 1, ids, NULL) == CLIP_ERR_ARG, "NULL tokenizer -> CLIP_ERR_ARG");
}

static void check_truncation(const clip_tokenizer *tok, uint32_t sot, uint32_t eot)
{
    char text[4096] = "";
    for (int i = 0; i < 200; i++) strcat(text, i % 2 ? "cat " : "photo ");
    int32_t ids[CTX];
    clip_error err = {0};
    clip_status st = clip_tokenizer_encode(tok, text, strlen(text), ids, &err);
    int ok = st == CLIP_OK && ids[0] == (int32_t)sot && ids[CTX - 1] == (int32_t)eot;
    for (int k = 1; k < CTX - 1; k++) ok &= ids[k] != 0 && ids[k] != (int32_t)eot;
    CHECK(ok, "200 words truncate to 77 ids with EOT last");
    /* The ids before the cut are those of the shorter text. */
    int32_t short_ids[CTX];
    st = clip_tokenizer_encode(tok, text, 6 * 20, short_ids, &err);
    ok = st == CLIP_OK;
    for (int k = 1; ok && k < CTX && short_ids[k] != (int32_t)eot; k++) ok &= short_ids[k] == ids[k];
    CHECK(ok, "truncated ids start like the short text's");
}

/* HTML references nested n deep take ftfy n rounds: a few hundred levels decode exactly,
 * and far deeper nesting is refused instead of costing quadratic time. */
static void check_nesting(const clip_tokenizer *tok)
{
    size_t levels[] = {300, 200000};
    for (int k = 0; k < 2; k++) {
        size_t n = 1 + 4 * levels[k] + 3;
        char *text = malloc(n);
        if (!text) { CHECK(0, "memory for the nested text"); return; }
        text[0] = '&';
        for (size_t i = 0; i < levels[k]; i++) memcpy(text + 1 + 4 * i, "amp;", 4);
        memcpy(text + n - 3, "lt;", 3);
        int32_t ids[CTX], want[CTX];
        clip_error err = {0};
        double t0 = now_s();
        clip_status st = clip_tokenizer_encode(tok, text, n, ids, &err);
        double s = now_s() - t0;
        if (k == 0) {
            clip_tokenizer_encode(tok, "<", 1, want, NULL);
            CHECK(st == CLIP_OK && !memcmp(ids, want, sizeof ids),
                  "&amp; nested %zu deep decodes like \"<\" (%.3f s)", levels[k], s);
        } else {
            CHECK(st == CLIP_ERR_ARG && strstr(err.msg, "nested"),
                  "&amp; nested %zu deep is refused: %s", levels[k], err.msg);
            CHECK_TIME(s < 2, "refusing it takes %.3f s", s);
        }
        free(text);
    }
}

/* A deterministic stream of nasty inputs: random bytes, and random pieces of UTF-8, HTML
 * references, escapes and marks. Every output must be well formed or a clean error. */
static void check_random(const clip_tokenizer *tok, uint32_t n_vocab, uint32_t sot, uint32_t eot)
{
    static const char *const pieces[] = {
        "&", "#", ";", "x", "amp", "&#", "&#x", "1", "9", "F", "<", "|", ">", "'", "s", "\xC5\xBF",
        "\x1B[", "m", "\r", "\n", " ", "\xC2\xA0", "\xE2\x80\xA8", "\xCC\x81", "\xCD\x85", "\xCE\xA3",
        "\xC4\xB0", "\xEF\xAC\x83", "\xEF\xBC\xA1", "\xEF\xBE\x9E", "\xE2\x80\x9C", "\xF0\x9F\x91\x8D",
        "\xE1\x84\x80", "\xE1\x85\xA1", "\xE1\x86\xA8", "<|endoftext|>", "startoftext", "\xC2\x85",
        "\xE0\xA4\x95", "\xE0\xA5\x8D", "a", "\xE3\x80\x80",
    };
    uint64_t state = 0x9E3779B97F4A7C15ull;
    int ok = 1, errors = 0;
    size_t count = 0;
    char buf[512];
    for (int iter = 0; iter < 20000 && ok; iter++) {
        size_t n = 0;
        state = state * 6364136223846793005ull + 1442695040888963407ull;
        int mode = (int)(state >> 60) & 1, parts = 1 + (int)((state >> 40) % 40);
        for (int k = 0; k < parts; k++) {
            state = state * 6364136223846793005ull + 1442695040888963407ull;
            if (mode) {
                const char *p = pieces[(state >> 33) % (sizeof pieces / sizeof pieces[0])];
                size_t l = strlen(p);
                if (n + l > sizeof buf) break;
                memcpy(buf + n, p, l);
                n += l;
            } else if (n < sizeof buf) {
                buf[n++] = (char)(state >> 56);
            }
        }
        /* A heap copy of exactly n bytes, so reading past it shows under ASan. */
        char *text = malloc(n ? n : 1);
        if (!text) { ok = 0; break; }
        memcpy(text, buf, n);
        int32_t ids[CTX];
        clip_error err = {0};
        clip_status st = clip_tokenizer_encode(tok, text, n, ids, &err);
        free(text);
        count++;
        if (st == CLIP_ERR_TEXT) { errors++; continue; }
        if (st != CLIP_OK || ids[0] != (int32_t)sot) { ok = 0; break; }
        /* Id 0 is a real token ("!"), and the text may hold "<|endoftext|>": the ids end at
         * the last EOT, and only zeros follow it. */
        int last = CTX - 1;
        while (last > 0 && ids[last] != (int32_t)eot) ok &= ids[last--] == 0;
        ok &= last > 0;
        for (int k = 1; k < last; k++) ok &= ids[k] >= 0 && (uint32_t)ids[k] < n_vocab;
    }
    CHECK(ok && errors > 0 && (size_t)errors < count,
          "%zu random texts: well-formed ids or CLIP_ERR_TEXT (%d)", count, errors);
}

static void check_bad_sections(const char *dir)
{
    size_t size = 0;
    uint32_t n_vocab = 0;
    uint8_t *sec = build_section(dir, &size, &n_vocab);
    if (!sec) { CHECK(0, "small vocabulary section built"); return; }
    clip_tokenizer *tok = NULL;
    clip_error err = {0};
    int all = 1;
    for (size_t cut = 0; cut < size; cut += cut < 64 || size - cut < 64 ? 1 : 97) {
        uint8_t *copy = malloc(cut ? cut : 1);
        memcpy(copy, sec, cut);
        clip_status st = clip_tokenizer_new(copy, cut, n_vocab, CTX, &tok, &err);
        all &= st == CLIP_ERR_FORMAT && tok == NULL;
        free(copy);
    }
    CHECK(all, "every truncated section -> CLIP_ERR_FORMAT");
    CHECK(clip_tokenizer_new(sec, size, n_vocab + 1, CTX, &tok, &err) == CLIP_ERR_FORMAT,
          "vocabulary size unlike the header's -> CLIP_ERR_FORMAT: %s", err.msg);
    CHECK(clip_tokenizer_new(sec, size, n_vocab, 1, &tok, &err) == CLIP_ERR_FORMAT,
          "context length 1 -> CLIP_ERR_FORMAT");
    uint8_t *bad = malloc(size);
    struct { const char *what; size_t off; uint32_t value; } edits[] = {
        {"sot id out of range", 8, n_vocab},
        {"eot equal to sot", 12, 0},
        {"sot not <|startoftext|>", 8, 5},
        {"merge id out of range", size - 12, n_vocab},
        {"merge result not the concatenation", size - 4, 3},
        {"more merges than the section holds", 4, 0},
    };
    uint32_t sot;
    memcpy(&sot, sec + 8, 4);
    edits[1].value = sot;
    uint32_t n_merges;
    memcpy(&n_merges, sec + 4, 4);
    edits[5].value = n_merges + 1;
    for (size_t i = 0; i < sizeof edits / sizeof edits[0]; i++) {
        memcpy(bad, sec, size);
        put32(bad + edits[i].off, edits[i].value);
        clip_status st = clip_tokenizer_new(bad, size, n_vocab, CTX, &tok, &err);
        CHECK(st == CLIP_ERR_FORMAT, "%s -> CLIP_ERR_FORMAT: %s", edits[i].what, err.msg);
    }
    /* A byte token missing: rename the token "!" (id 0 in OpenAI's layout). */
    memcpy(bad, sec, size);
    if (bad[16] == 1 && bad[17] == 0 && bad[18] == '!') {
        bad[18] = '"';
        CHECK(clip_tokenizer_new(bad, size, n_vocab, CTX, &tok, &err) == CLIP_ERR_FORMAT,
              "missing byte token -> CLIP_ERR_FORMAT: %s", err.msg);
    }
    free(bad);
    free(sec);
}

typedef struct thread_job {
    const clip_tokenizer *tok;
    const clip_json *cases;
    int32_t *out;
} thread_job;

static void *thread_run(void *arg)
{
    thread_job *j = arg;
    for (int rep = 0; rep < 3; rep++)
        for (size_t i = 0; i < j->cases->n; i++) {
            const clip_json *text = clip_json_get(&j->cases->items[i], "text");
            clip_tokenizer_encode(j->tok, text->str, text->str_len, j->out + i * CTX, NULL);
        }
    return NULL;
}

static void check_threads(const clip_tokenizer *tok, const clip_json *cases)
{
    size_t n = cases->n;
    int32_t *a = calloc(n * CTX, sizeof *a), *b = calloc(n * CTX, sizeof *b), *c = calloc(n * CTX, sizeof *c);
    thread_job ja = {tok, cases, a}, jb = {tok, cases, b};
    pthread_t ta, tb;
    int started = a && b && c && pthread_create(&ta, NULL, thread_run, &ja) == 0;
    if (started && pthread_create(&tb, NULL, thread_run, &jb) != 0) { pthread_join(ta, NULL); started = 0; }
    if (started) { pthread_join(ta, NULL); pthread_join(tb, NULL); }
    thread_job jc = {tok, cases, c};
    if (c) thread_run(&jc);
    CHECK(started && !memcmp(a, c, n * CTX * sizeof *a) && !memcmp(b, c, n * CTX * sizeof *b),
          "two threads sharing one tokenizer give the single-thread ids");
    free(a); free(b); free(c);
}

static void check_speed(const clip_tokenizer *tok)
{
    const char *prompt = "a photo of a cat";
    int32_t ids[CTX];
    int n_ids = 0;
    clip_tokenizer_encode(tok, prompt, strlen(prompt), ids, NULL);
    while (n_ids < CTX && ids[n_ids]) n_ids++;
    int reps = TIMED ? 20000 : 200;
    double t0 = now_s();
    for (int i = 0; i < reps; i++) clip_tokenizer_encode(tok, prompt, strlen(prompt), ids, NULL);
    double us = (now_s() - t0) / reps * 1e6;
    CHECK_TIME(us < 50, "%d-id prompt tokenizes in %.2f us", n_ids, us);

    char *longtext = malloc(64 * 1024);
    if (!longtext) { CHECK(0, "memory for the long text"); return; }
    size_t n = 0;
    static const char *const words[] = {"photo ", "of ", "a ", "cat ", "\xE7\x8C\xAB ", "&amp; ", "caf\xC3\xA9 "};
    for (int i = 0; n < 60 * 1024; i++) {
        size_t l = strlen(words[i % 7]);
        memcpy(longtext + n, words[i % 7], l);
        n += l;
    }
    reps = TIMED ? 50 : 2;
    t0 = now_s();
    for (int i = 0; i < reps; i++) clip_tokenizer_encode(tok, longtext, n, ids, NULL);
    double ms = (now_s() - t0) / reps * 1e3;
    CHECK_TIME(ms < 50, "%zu-byte text tokenizes in %.3f ms", n, ms);
    for (n = 400; longtext[n - 1] != ' '; n--) {}
    CHECK(clip_tokenizer_encode(tok, longtext, n, ids, NULL) == CLIP_OK && ids[CTX - 1] != 0,
          "%zu bytes of the long text fill the 77 ids", n);
    t0 = now_s();
    reps = TIMED ? 2000 : 20;
    for (int i = 0; i < reps; i++) clip_tokenizer_encode(tok, longtext, n, ids, NULL);
    us = (now_s() - t0) / reps * 1e6;
    CHECK_TIME(us < 500, "%zu-byte text (77 ids, truncated) tokenizes in %.2f us", n, us);
    free(longtext);
}

/* The public clip_tokenize through a model clip-convert wrote from tiny-hf. */
static void check_public_api(const char *ref, const clip_json *texts)
{
    const char *conv = getenv("CLIP_CONVERT");
    if (!conv || access(conv, X_OK) != 0) {
        check_skip("clip_tokenize through a converted model: $CLIP_CONVERT is not an executable");
        return;
    }
    char out[] = "/tmp/test_tokenizer_XXXXXX";
    int fd = mkstemp(out);
    if (fd < 0) { CHECK(0, "temporary file for the converted model"); return; }
    close(fd);
    char cmd[2048];
    snprintf(cmd, sizeof cmd, "'%s' '%s/tiny-hf' '%s' > /dev/null 2>&1", conv, ref, out);
    int rc = system(cmd);
    clip_model *model = NULL;
    clip_error err = {0};
    int loaded = rc == 0 && clip_model_load(out, &model, &err) == CLIP_OK;
    if (CHECK(loaded, "tiny-hf converted by $CLIP_CONVERT and loaded%s%s", loaded ? "" : ": ",
              loaded ? "" : (rc ? "clip-convert failed" : err.msg))) {
        size_t ok = 0, n = 0;
        for (size_t i = 0; texts && i < texts->n; i++) {
            const clip_json *text = clip_json_get(&texts->items[i], "text");
            const clip_json *want = clip_json_get(&texts->items[i], "ids");
            int32_t ids[CTX];
            n++;
            ok += clip_tokenize(model, text->str, text->str_len, ids, &err) == CLIP_OK && same_ids(ids, want);
        }
        CHECK(n > 0 && ok == n, "clip_tokenize on the converted tiny-hf: %zu/%zu texts identical", ok, n);
        int32_t ids[CTX];
        CHECK(clip_tokenize(model, "\xC3", 1, ids, &err) == CLIP_ERR_TEXT, "clip_tokenize: invalid UTF-8 -> CLIP_ERR_TEXT");
        clip_model_free(model);
    }
    unlink(out);
}

int main(void)
{
    const char *ref = check_reference_dir();
    clip_json_doc *corpus = read_json("tests/data/tokenizer_corpus.json");
    const clip_json *cases = corpus ? clip_json_get(clip_json_root(corpus), "cases") : NULL;
    CHECK(cases && cases->type == CLIP_JSON_ARRAY && cases->n >= 300,
          "tests/data/tokenizer_corpus.json holds >= 300 cases");

    printf("# vocabulary: tests/data/small-vocab (ours)\n");
    vocab_info sv = {0}, ov = {0};
    clip_tokenizer *small = load_vocab("tests/data/small-vocab", "small vocabulary", &sv);
    if (small && cases) {
        check_cases(small, cases, "ids_small", "our corpus, small vocabulary");
        check_invalid_utf8(small);
        check_empty_and_blank(small, sv.sot, sv.eot);
        check_truncation(small, sv.sot, sv.eot);
        check_threads(small, cases);
    }
    check_bad_sections("tests/data/small-vocab");

    if (!ref) {
        check_skip("OpenAI's vocabulary and ids: ../shared/reference is absent");
    } else {
        char dir[1024], path[1024];
        snprintf(dir, sizeof dir, "%s/tiny-hf", ref);
        printf("# vocabulary: %s (OpenAI's 49,408 tokens)\n", dir);
        clip_tokenizer *tok = load_vocab(dir, "OpenAI vocabulary", &ov);
        snprintf(path, sizeof path, "%s/tokenizer_cases.json", ref);
        clip_json_doc *tc = read_json(path);
        snprintf(path, sizeof path, "%s/expected.json", ref);
        clip_json_doc *ex = read_json(path);
        if (tok) {
            check_cases(tok, tc ? clip_json_get(clip_json_root(tc), "cases") : NULL, "ids",
                        "shared tokenizer_cases.json (OpenAI + ftfy)");
            const clip_json *models = ex ? clip_json_get(clip_json_root(ex), "models") : NULL;
            for (size_t i = 0; models && i < models->n; i++) {
                char label[128];
                snprintf(label, sizeof label, "expected.json %s texts", models->keys[i]);
                check_cases(tok, clip_json_get(&models->items[i], "texts"), "ids", label);
            }
            if (cases) check_cases(tok, cases, "ids_clip", "our corpus, OpenAI vocabulary");
            check_random(tok, ov.n_vocab, ov.sot, ov.eot);
            check_nesting(tok);
            check_speed(tok);
            const clip_json *m0 = models && models->n ? clip_json_get(&models->items[0], "texts") : NULL;
            check_public_api(ref, m0);
        }
        clip_tokenizer_free(tok);
        clip_json_free(tc);
        clip_json_free(ex);
    }
    if (!ref && small) {
        check_random(small, sv.n_vocab, sv.sot, sv.eot);
        check_nesting(small);
        check_speed(small);
    }
    clip_tokenizer_free(small);
    clip_json_free(corpus);
    return check_exit();
}
