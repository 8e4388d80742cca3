/* json.c -- the JSON reader (RFC 8259, strict) and writer, and the append buffer.
 *
 * Reader: one pass over the bytes with an explicit stack instead of recursion, so the depth
 * of the input costs heap, not C stack, and the depth limit is checked before anything is
 * pushed. Values wait on a scratch stack until their container closes; then they are copied
 * into one array in the document's arena. Each value is copied once, so parsing is linear.
 * Everything the tree points to lives in the arena: clip_json_free is one walk over a
 * handful of chunks.
 *
 * Writer: appends to a clip_buf. Floats are printed with the fewest significant digits
 * that read back to the same value. printf/strtod are locale-dependent; nothing in the
 * program calls setlocale, so the "C" locale (decimal point '.') holds everywhere.
 */
#include "json.h"

#include <float.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

/* ---------------------------------------------------------------------------------------
 * Append buffer
 * ------------------------------------------------------------------------------------- */

/* Makes room for `extra` more bytes plus the NUL; returns 0 (and sets oom) on failure. */
static int buf_reserve(clip_buf *b, size_t extra)
{
    if (b->oom) return 0;
    if (extra > SIZE_MAX - 1 - b->len) {
        b->oom = 1;
        return 0;
    }
    size_t need = b->len + extra + 1;
    if (need <= b->cap) return 1;
    size_t cap = b->cap ? b->cap : 64;
    while (cap < need) cap = cap > SIZE_MAX / 2 ? need : cap * 2;
    char *p = realloc(b->data, cap);
    if (!p) {
        b->oom = 1;
        return 0;
    }
    b->data = p;
    b->cap = cap;
    return 1;
}

void clip_buf_append(clip_buf *b, const void *data, size_t len)
{
    if (!buf_reserve(b, len)) return;
    if (len) memcpy(b->data + b->len, data, len);
    b->len += len;
    b->data[b->len] = '\0';
}

void clip_buf_puts(clip_buf *b, const char *s) { clip_buf_append(b, s, strlen(s)); }

void clip_buf_putc(clip_buf *b, char c) { clip_buf_append(b, &c, 1); }

void clip_buf_printf(clip_buf *b, const char *fmt, ...)
{
    if (!buf_reserve(b, 0)) return;
    va_list ap, ap2;
    va_start(ap, fmt);
    va_copy(ap2, ap);
    size_t room = b->cap - b->len;
    int n = vsnprintf(b->data + b->len, room, fmt, ap);
    va_end(ap);
    if (n >= 0 && (size_t)n >= room && buf_reserve(b, (size_t)n))
        vsnprintf(b->data + b->len, (size_t)n + 1, fmt, ap2);
    va_end(ap2);
    if (n < 0 || b->oom) {
        b->data[b->len] = '\0';   /* vsnprintf may have written a partial result */
        return;
    }
    b->len += (size_t)n;
}

/* A reset buffer is empty and consistent again, so a failure in one response does not
 * poison the next one built in the same buffer. */
void clip_buf_reset(clip_buf *b)
{
    b->len = 0;
    b->oom = 0;
    if (b->data) b->data[0] = '\0';
}

void clip_buf_free(clip_buf *b)
{
    free(b->data);
    b->data = NULL;
    b->len = b->cap = 0;
    b->oom = 0;
}

/* ---------------------------------------------------------------------------------------
 * Arena
 * ------------------------------------------------------------------------------------- */

typedef struct chunk {
    struct chunk *next;
    size_t size, used;
    _Alignas(max_align_t) unsigned char mem[];
} chunk;

enum {
    CHUNK_MIN = 4096,
    CHUNK_MAX = 4 << 20,   /* bump chunks stop doubling here; bigger requests get their own */
};

typedef struct arena {
    chunk *head;           /* the chunk being bumped; dedicated chunks hang behind it     */
    size_t next_size;
} arena;

static chunk *chunk_new(size_t size)
{
    if (size > SIZE_MAX - sizeof(chunk)) return NULL;
    chunk *c = malloc(sizeof(chunk) + size);
    if (!c) return NULL;
    c->next = NULL;
    c->size = size;
    c->used = 0;
    return c;
}

static void *arena_alloc(arena *a, size_t size, size_t align)
{
    chunk *c = a->head;
    if (c) {
        size_t at = (c->used + align - 1) & ~(align - 1);
        if (at <= c->size && size <= c->size - at) {
            c->used = at + size;
            return c->mem + at;
        }
    }
    if (c && size > a->next_size / 4) {
        /* A big string or array: its own chunk, so the bump chunk keeps its free space. */
        chunk *d = chunk_new(size);
        if (!d) return NULL;
        d->used = size;
        d->next = c->next;
        c->next = d;
        return d->mem;
    }
    size_t want = a->next_size;
    if (want < size) want = size;
    chunk *n = chunk_new(want);
    if (!n) return NULL;
    n->next = c;
    a->head = n;
    if (a->next_size < CHUNK_MAX) a->next_size *= 2;
    n->used = size;
    return n->mem;
}

static void arena_free(arena *a)
{
    for (chunk *c = a->head, *next; c; c = next) {
        next = c->next;
        free(c);
    }
    a->head = NULL;
}

/* An array of n elements of `size` bytes, or NULL on overflow or exhaustion. */
static void *arena_array(arena *a, size_t n, size_t size, size_t align)
{
    if (n && size > SIZE_MAX / n) return NULL;
    return arena_alloc(a, n * size, align);
}

/* ---------------------------------------------------------------------------------------
 * Reader: state and errors
 * ------------------------------------------------------------------------------------- */

struct clip_json_doc {
    arena arena;           /* first: the document itself lives in the arena              */
    clip_json root;
};

/* A value waiting for its container to close, with its key when the container is an
 * object. */
typedef struct pending {
    clip_json value;
    const char *key;
    size_t key_len;
} pending;

typedef struct frame {
    clip_json_type type;   /* CLIP_JSON_ARRAY or CLIP_JSON_OBJECT                        */
    size_t first;          /* its first value's index in the pending stack               */
    const char *key;       /* object: the key whose value is being parsed                */
    size_t key_len;
} frame;

typedef struct parser {
    const unsigned char *s;
    size_t len, pos;
    arena *arena;
    pending *vals;
    size_t nvals, capvals;
    frame *frames;
    size_t nframes, capframes;
    int max_depth;
    char *err;
    size_t err_size;
} parser;

__attribute__((format(printf, 3, 4)))
static int fail_at(parser *p, size_t at, const char *fmt, ...)
{
    if (p->err && p->err_size) {
        int n = snprintf(p->err, p->err_size, "invalid JSON at byte %zu: ", at);
        if (n >= 0 && (size_t)n < p->err_size) {
            va_list ap;
            va_start(ap, fmt);
            vsnprintf(p->err + n, p->err_size - (size_t)n, fmt, ap);
            va_end(ap);
        }
    }
    return 0;
}

static int fail_oom(parser *p)
{
    if (p->err && p->err_size)
        snprintf(p->err, p->err_size, "out of memory parsing JSON (at byte %zu)", p->pos);
    return 0;
}

/* Names the byte at `at` for an error: a printable character, a hex byte, or the end. */
static int fail_unexpected(parser *p, size_t at, const char *expected)
{
    if (at >= p->len) return fail_at(p, at, "unexpected end of input, %s", expected);
    unsigned char c = p->s[at];
    if (c > 0x20 && c < 0x7f) return fail_at(p, at, "unexpected '%c', %s", c, expected);
    return fail_at(p, at, "unexpected byte 0x%02X, %s", c, expected);
}

static void skip_ws(parser *p)
{
    while (p->pos < p->len) {
        unsigned char c = p->s[p->pos];
        if (c != ' ' && c != '\t' && c != '\n' && c != '\r') break;
        p->pos++;
    }
}

/* Doubles a stack's capacity, guarding the byte count. */
static int grow(void **items, size_t *cap, size_t elem)
{
    size_t n = *cap ? *cap : 16;
    if (*cap) {
        if (n > SIZE_MAX / 2 / elem) return 0;
        n *= 2;
    }
    void *q = realloc(*items, n * elem);
    if (!q) return 0;
    *items = q;
    *cap = n;
    return 1;
}

/* ---------------------------------------------------------------------------------------
 * Reader: strings
 * ------------------------------------------------------------------------------------- */

static int hex4(const unsigned char *s, unsigned *out)
{
    unsigned v = 0;
    for (int i = 0; i < 4; i++) {
        unsigned c = s[i], d;
        if (c >= '0' && c <= '9') d = c - '0';
        else if (c >= 'a' && c <= 'f') d = c - 'a' + 10;
        else if (c >= 'A' && c <= 'F') d = c - 'A' + 10;
        else return 0;
        v = v << 4 | d;
    }
    *out = v;
    return 1;
}

/* Length of the valid UTF-8 sequence at s (at most n bytes), or 0 with *why set. */
static size_t utf8_seq(const unsigned char *s, size_t n, const char **why)
{
    unsigned c = s[0];
    size_t len;
    unsigned cp, min;
    if (c < 0x80) return 1;
    if (c >= 0xC2 && c <= 0xDF) len = 2, cp = c & 0x1F, min = 0x80;
    else if (c >= 0xE0 && c <= 0xEF) len = 3, cp = c & 0x0F, min = 0x800;
    else if (c >= 0xF0 && c <= 0xF4) len = 4, cp = c & 0x07, min = 0x10000;
    else {
        *why = c == 0xC0 || c == 0xC1 ? "overlong UTF-8 encoding"
             : c >= 0xF5              ? "UTF-8 code point above U+10FFFF"
                                      : "invalid UTF-8 byte";
        return 0;
    }
    for (size_t i = 1; i < len; i++) {
        if (i >= n || (s[i] & 0xC0) != 0x80) {
            *why = "truncated UTF-8 sequence";
            return 0;
        }
        cp = cp << 6 | (s[i] & 0x3F);
    }
    if (cp < min) *why = "overlong UTF-8 encoding";
    else if (cp >= 0xD800 && cp <= 0xDFFF) *why = "UTF-8 encoded surrogate";
    else if (cp > 0x10FFFF) *why = "UTF-8 code point above U+10FFFF";
    else return len;
    return 0;
}

static size_t utf8_put(unsigned char *out, unsigned cp)
{
    if (cp < 0x80) {
        out[0] = (unsigned char)cp;
        return 1;
    }
    if (cp < 0x800) {
        out[0] = (unsigned char)(0xC0 | cp >> 6);
        out[1] = (unsigned char)(0x80 | (cp & 0x3F));
        return 2;
    }
    if (cp < 0x10000) {
        out[0] = (unsigned char)(0xE0 | cp >> 12);
        out[1] = (unsigned char)(0x80 | (cp >> 6 & 0x3F));
        out[2] = (unsigned char)(0x80 | (cp & 0x3F));
        return 3;
    }
    out[0] = (unsigned char)(0xF0 | cp >> 18);
    out[1] = (unsigned char)(0x80 | (cp >> 12 & 0x3F));
    out[2] = (unsigned char)(0x80 | (cp >> 6 & 0x3F));
    out[3] = (unsigned char)(0x80 | (cp & 0x3F));
    return 4;
}

/* The code point of the \u escape at s[at] ('\\' 'u' XXXX, with its low surrogate when it
 * is a high one); sets *used to the bytes consumed. Returns 0 after reporting an error. */
static int read_u_escape(parser *p, size_t at, unsigned *cp, size_t *used)
{
    const unsigned char *s = p->s;
    unsigned hi, lo;
    if (p->len - at < 6 || !hex4(s + at + 2, &hi))
        return fail_at(p, at, "invalid \\u escape (expected 4 hex digits)");
    if (hi >= 0xDC00 && hi <= 0xDFFF)
        return fail_at(p, at, "lone low surrogate \\u%04X", hi);
    if (hi < 0xD800 || hi > 0xDBFF) {
        *cp = hi;
        *used = 6;
        return 1;
    }
    if (p->len - at < 12 || s[at + 6] != '\\' || s[at + 7] != 'u')
        return fail_at(p, at, "high surrogate \\u%04X not followed by a low surrogate", hi);
    if (!hex4(s + at + 8, &lo))
        return fail_at(p, at + 6, "invalid \\u escape (expected 4 hex digits)");
    if (lo < 0xDC00 || lo > 0xDFFF)
        return fail_at(p, at, "high surrogate \\u%04X followed by \\u%04X, not a low surrogate",
                       hi, lo);
    *cp = 0x10000 + ((hi - 0xD800) << 10) + (lo - 0xDC00);
    *used = 12;
    return 1;
}

/* The first byte at or after i that is not plain string text: not '"', '\\', a control
 * character or a byte of a UTF-8 sequence. A base64 image is megabytes of plain text, so
 * eight bytes are tested at a time: q and b have a zero byte where w has '"' or '\\',
 * which (x - ones) & ~x flags in its high bits; w - 0x20 sets the high bit of any byte below
 * 0x20, and w's own high bits flag UTF-8. Borrows can flag a plain byte above a special
 * one, never miss one, and the last loop finds the exact place. */
static size_t skip_plain(const unsigned char *s, size_t i, size_t n)
{
    const uint64_t ones = 0x0101010101010101u, highs = 0x8080808080808080u;
    while (n - i >= 8) {
        uint64_t w;
        memcpy(&w, s + i, sizeof w);
        uint64_t q = w ^ (ones * '"'), b = w ^ (ones * '\\');
        if ((((q - ones) & ~q) | ((b - ones) & ~b) | (w - ones * 0x20) | w) & highs) break;
        i += 8;
    }
    while (i < n && s[i] >= 0x20 && s[i] < 0x80 && s[i] != '"' && s[i] != '\\') i++;
    return i;
}

/* Parses the string whose opening quote is at p->pos into the arena. Two passes: the first
 * validates and finds the end (the decoded text is never longer than the raw one), the
 * second decodes without checks. */
static int parse_string(parser *p, const char **out, size_t *out_len)
{
    const unsigned char *s = p->s;
    size_t start = p->pos + 1, i = start;
    int escaped = 0;
    for (;;) {
        i = skip_plain(s, i, p->len);
        if (i >= p->len) return fail_at(p, p->pos, "unterminated string");
        unsigned char c = s[i];
        if (c == '"') break;
        if (c < 0x20)
            return fail_at(p, i, "control character 0x%02X in string (must be escaped)", c);
        if (c == '\\') {
            escaped = 1;
            if (i + 1 >= p->len) return fail_at(p, p->pos, "unterminated string");
            unsigned char e = s[i + 1];
            if (e == 'u') {
                unsigned cp;
                size_t used;
                if (!read_u_escape(p, i, &cp, &used)) return 0;
                i += used;
            } else if (e && strchr("\"\\/bfnrt", e)) {
                i += 2;
            } else if (e > 0x20 && e < 0x7f) {
                return fail_at(p, i, "invalid escape '\\%c'", e);
            } else {
                return fail_at(p, i, "invalid escape (backslash before byte 0x%02X)", e);
            }
            continue;
        }
        const char *why = NULL;
        size_t n = utf8_seq(s + i, p->len - i, &why);
        if (!n) return fail_at(p, i, "%s in string", why);
        i += n;
    }
    size_t raw = i - start;
    if (raw == SIZE_MAX) return fail_oom(p);
    unsigned char *dst = arena_alloc(p->arena, raw + 1, 1);
    if (!dst) return fail_oom(p);
    size_t n = 0;
    if (!escaped) {
        memcpy(dst, s + start, raw);
        n = raw;
    } else {
        for (size_t j = start; j < i;) {
            if (s[j] != '\\') {
                dst[n++] = s[j++];
                continue;
            }
            unsigned char e = s[j + 1];
            if (e == 'u') {
                unsigned cp;
                size_t used;
                read_u_escape(p, j, &cp, &used);   /* validated by the first pass */
                n += utf8_put(dst + n, cp);
                j += used;
                continue;
            }
            dst[n++] = e == 'b' ? '\b' : e == 'f' ? '\f' : e == 'n' ? '\n'
                     : e == 'r' ? '\r' : e == 't' ? '\t' : e;
            j += 2;
        }
    }
    dst[n] = '\0';
    *out = (const char *)dst;
    *out_len = n;
    p->pos = i + 1;
    return 1;
}

/* ---------------------------------------------------------------------------------------
 * Reader: numbers and literals
 * ------------------------------------------------------------------------------------- */

static int is_digit(unsigned char c) { return c >= '0' && c <= '9'; }

/* Powers of ten that a double holds exactly. */
static const double exact_pow10[] = {
    1e0,  1e1,  1e2,  1e3,  1e4,  1e5,  1e6,  1e7,  1e8,  1e9,  1e10, 1e11,
    1e12, 1e13, 1e14, 1e15, 1e16, 1e17, 1e18, 1e19, 1e20, 1e21, 1e22,
};

/* The common short numbers without strtod (Clinger's fast path): with at most 15 digits
 * the digits form an exact double m, and with |e| <= 22 so is 10^e, so the single product
 * or quotient m*10^e is correctly rounded -- the same double strtod gives. Needs doubles
 * evaluated in double precision (not x87's extended), hence the FLT_EVAL_METHOD test.
 * Returns 0 when the number is not such a case. */
static int fast_decimal(const unsigned char *s, size_t n, double *out)
{
#if FLT_EVAL_METHOD == 0
    size_t i = s[0] == '-', digits = 0;
    double m = 0;
    long e = 0;
    for (; i < n && is_digit(s[i]); i++, digits++) m = m * 10 + (s[i] - '0');
    if (i < n && s[i] == '.')
        for (i++; i < n && is_digit(s[i]); i++, digits++, e--) m = m * 10 + (s[i] - '0');
    if (digits > 15) return 0;
    if (i < n) {   /* the exponent: short ones only (the grammar already checked it) */
        int neg = s[++i] == '-';
        if (s[i] == '+' || s[i] == '-') i++;
        if (n - i > 3) return 0;
        long x = 0;
        for (; i < n; i++) x = x * 10 + (s[i] - '0');
        e += neg ? -x : x;
    }
    if (e < -22 || e > 22) return 0;
    double d = e < 0 ? m / exact_pow10[-e] : m * exact_pow10[e];
    *out = s[0] == '-' ? -d : d;
    return 1;
#else
    (void)s, (void)n, (void)out;
    return 0;
#endif
}

static int parse_number(parser *p, clip_json *v)
{
    const unsigned char *s = p->s;
    size_t start = p->pos, i = start;
    if (s[i] == '-') i++;
    if (i >= p->len || !is_digit(s[i])) {
        if (i < p->len && s[i] == 'I') return fail_at(p, start, "Infinity is not JSON");
        return fail_unexpected(p, i, "expected a digit after '-'");
    }
    if (s[i] == '0' && i + 1 < p->len && is_digit(s[i + 1]))
        return fail_at(p, i, "leading zero in number");
    while (i < p->len && is_digit(s[i])) i++;
    int integer = 1;
    if (i < p->len && s[i] == '.') {
        integer = 0;
        i++;
        if (i >= p->len || !is_digit(s[i]))
            return fail_unexpected(p, i, "expected a digit after '.'");
        while (i < p->len && is_digit(s[i])) i++;
    }
    if (i < p->len && (s[i] == 'e' || s[i] == 'E')) {
        integer = 0;
        i++;
        if (i < p->len && (s[i] == '+' || s[i] == '-')) i++;
        if (i >= p->len || !is_digit(s[i]))
            return fail_unexpected(p, i, "expected a digit in the exponent");
        while (i < p->len && is_digit(s[i])) i++;
    }
    size_t n = i - start;
    double d;
    if (!fast_decimal(s + start, n, &d)) {
        /* strtod needs a NUL-terminated copy; the grammar above already vetted it, so
         * strtod reads exactly these n bytes. */
        char small[64], *tmp = small;
        if (n >= sizeof small && !(tmp = malloc(n + 1))) return fail_oom(p);
        memcpy(tmp, s + start, n);
        tmp[n] = '\0';
        d = strtod(tmp, NULL);
        if (tmp != small) free(tmp);
        /* Underflow to a subnormal or zero is kept (that is the nearest double); overflow
         * is refused rather than turned into an infinity that JSON cannot express. */
        if (isinf(d)) return fail_at(p, start, "number out of range (overflows a double)");
    }
    v->type = CLIP_JSON_NUMBER;
    v->number = d;
    v->is_integer = integer;
    p->pos = i;
    return 1;
}

static int parse_literal(parser *p, clip_json *v)
{
    static const struct { const char *word; clip_json_type type; int boolean; } lits[] = {
        {"true", CLIP_JSON_BOOL, 1}, {"false", CLIP_JSON_BOOL, 0}, {"null", CLIP_JSON_NULL, 0},
    };
    for (size_t k = 0; k < sizeof lits / sizeof lits[0]; k++) {
        size_t n = strlen(lits[k].word);
        if (lits[k].word[0] != (char)p->s[p->pos]) continue;
        if (p->len - p->pos < n || memcmp(p->s + p->pos, lits[k].word, n) != 0)
            return fail_at(p, p->pos, "invalid literal (expected '%s')", lits[k].word);
        v->type = lits[k].type;
        v->boolean = lits[k].boolean;
        p->pos += n;
        return 1;
    }
    return 0;
}

/* ---------------------------------------------------------------------------------------
 * Reader: structure
 * ------------------------------------------------------------------------------------- */

static int push_value(parser *p, const clip_json *v)
{
    if (p->nvals == p->capvals && !grow((void **)&p->vals, &p->capvals, sizeof(pending)))
        return fail_oom(p);
    pending *e = &p->vals[p->nvals++];
    e->value = *v;
    e->key = NULL;
    e->key_len = 0;
    if (p->nframes && p->frames[p->nframes - 1].type == CLIP_JSON_OBJECT) {
        e->key = p->frames[p->nframes - 1].key;
        e->key_len = p->frames[p->nframes - 1].key_len;
    }
    return 1;
}

static int open_container(parser *p, clip_json_type type)
{
    if (p->nframes >= (size_t)p->max_depth)
        return fail_at(p, p->pos, "nesting deeper than the limit of %d", p->max_depth);
    if (p->nframes == p->capframes && !grow((void **)&p->frames, &p->capframes, sizeof(frame)))
        return fail_oom(p);
    frame *f = &p->frames[p->nframes++];
    f->type = type;
    f->first = p->nvals;
    f->key = NULL;
    f->key_len = 0;
    p->pos++;
    return 1;
}

/* Moves the top container's values into the arena and leaves the container as the value
 * just parsed (in *v). */
static int close_container(parser *p, clip_json *v)
{
    frame *f = &p->frames[p->nframes - 1];
    size_t n = p->nvals - f->first;
    memset(v, 0, sizeof *v);
    v->type = f->type;
    v->n = n;
    if (n) {
        const pending *src = p->vals + f->first;
        clip_json *items = arena_array(p->arena, n, sizeof(clip_json), _Alignof(clip_json));
        if (!items) return fail_oom(p);
        for (size_t k = 0; k < n; k++) items[k] = src[k].value;
        v->items = items;
        if (f->type == CLIP_JSON_OBJECT) {
            const char **keys = arena_array(p->arena, n, sizeof(char *), _Alignof(char *));
            size_t *lens = arena_array(p->arena, n, sizeof(size_t), _Alignof(size_t));
            if (!keys || !lens) return fail_oom(p);
            for (size_t k = 0; k < n; k++) {
                keys[k] = src[k].key;
                lens[k] = src[k].key_len;
            }
            v->keys = keys;
            v->key_lens = lens;
        }
    }
    p->nvals = f->first;
    p->nframes--;
    p->pos++;
    return 1;
}

/* After '{' or ',' inside an object: the key and the ':'. */
static int parse_key(parser *p)
{
    skip_ws(p);
    if (p->pos >= p->len || p->s[p->pos] != '"')
        return fail_unexpected(p, p->pos, "expected a string key");
    frame *f = &p->frames[p->nframes - 1];
    if (!parse_string(p, &f->key, &f->key_len)) return 0;
    skip_ws(p);
    if (p->pos >= p->len || p->s[p->pos] != ':')
        return fail_at(p, p->pos, "expected ':' after object key");
    p->pos++;
    return 1;
}

/* Parses the document into *root. Returns 0 after writing the error. */
static int parse_document(parser *p, clip_json *root)
{
    clip_json v;
    for (;;) {
        /* A value is expected at p->pos. */
        skip_ws(p);
        if (p->pos >= p->len)
            return fail_at(p, p->pos, "unexpected end of input, expected a value");
        memset(&v, 0, sizeof v);
        unsigned char c = p->s[p->pos];
        if (c == '[' || c == '{') {
            clip_json_type type = c == '[' ? CLIP_JSON_ARRAY : CLIP_JSON_OBJECT;
            if (!open_container(p, type)) return 0;
            skip_ws(p);
            if (p->pos < p->len && p->s[p->pos] == (c == '[' ? ']' : '}')) {
                if (!close_container(p, &v)) return 0;
            } else if (type == CLIP_JSON_OBJECT) {
                if (!parse_key(p)) return 0;
                continue;
            } else {
                continue;
            }
        } else if (c == '"') {
            v.type = CLIP_JSON_STRING;
            if (!parse_string(p, &v.str, &v.str_len)) return 0;
        } else if (c == '-' || is_digit(c)) {
            if (!parse_number(p, &v)) return 0;
        } else if (c == 't' || c == 'f' || c == 'n') {
            if (!parse_literal(p, &v)) return 0;
        } else if (c == 'N' || c == 'I') {
            return fail_at(p, p->pos, "NaN and Infinity are not JSON");
        } else {
            return fail_unexpected(p, p->pos, "expected a value");
        }

        /* v is complete: hand it to its container, closing every container that ends. */
        for (;;) {
            if (!p->nframes) {
                *root = v;
                skip_ws(p);
                if (p->pos != p->len)
                    return fail_unexpected(p, p->pos, "trailing content after the value");
                return 1;
            }
            if (!push_value(p, &v)) return 0;
            frame *f = &p->frames[p->nframes - 1];
            int object = f->type == CLIP_JSON_OBJECT;
            skip_ws(p);
            if (p->pos < p->len && p->s[p->pos] == ',') {
                p->pos++;
                if (object && !parse_key(p)) return 0;
                break;
            }
            if (p->pos < p->len && p->s[p->pos] == (object ? '}' : ']')) {
                if (!close_container(p, &v)) return 0;
                continue;
            }
            return fail_unexpected(p, p->pos, object ? "expected ',' or '}' after object member"
                                                     : "expected ',' or ']' after array element");
        }
    }
}

clip_json_doc *clip_json_parse(const char *text, size_t len, int max_depth, char *err,
                               size_t err_size)
{
    parser p = {
        .s = (const unsigned char *)text,
        .len = text ? len : 0,
        .max_depth = max_depth > 0 ? max_depth : CLIP_JSON_DEFAULT_MAX_DEPTH,
        .err = err,
        .err_size = err_size,
    };
    if (err && err_size) err[0] = '\0';
    if (p.len == 0) {
        fail_at(&p, 0, "empty input");
        return NULL;
    }
    /* The first chunk grows with the input (a tree takes a few times its text) but is
     * capped: a big document continues in doubling chunks. */
    size_t first = p.len < CHUNK_MAX / 4 ? p.len * 4 : CHUNK_MAX;
    if (first < CHUNK_MIN) first = CHUNK_MIN;
    arena a = {.head = NULL, .next_size = first};
    clip_json_doc *doc = arena_alloc(&a, sizeof *doc, _Alignof(clip_json_doc));
    if (!doc) {
        fail_oom(&p);
        return NULL;
    }
    p.arena = &a;
    clip_json root;
    int ok = parse_document(&p, &root);
    free(p.vals);
    free(p.frames);
    if (!ok) {
        arena_free(&a);
        return NULL;
    }
    doc->root = root;
    doc->arena = a;
    return doc;
}

const clip_json *clip_json_root(const clip_json_doc *doc) { return doc ? &doc->root : NULL; }

void clip_json_free(clip_json_doc *doc)
{
    if (!doc) return;
    arena a = doc->arena;   /* the document is inside its own arena */
    arena_free(&a);
}

const clip_json *clip_json_get(const clip_json *object, const char *key)
{
    if (!object || object->type != CLIP_JSON_OBJECT || !key) return NULL;
    size_t len = strlen(key);
    for (size_t k = object->n; k-- > 0;)
        if (object->key_lens[k] == len && memcmp(object->keys[k], key, len) == 0)
            return &object->items[k];
    return NULL;
}

/* ---------------------------------------------------------------------------------------
 * Writer
 * ------------------------------------------------------------------------------------- */

void clip_json_write_string(clip_buf *b, const char *s, size_t len)
{
    static const char hex[] = "0123456789abcdef";
    const unsigned char *u = (const unsigned char *)s;
    clip_buf_putc(b, '"');
    size_t run = 0;   /* start of the bytes copied through unchanged */
    for (size_t i = 0; i < len;) {
        unsigned char c = u[i];
        if (c >= 0x20 && c != '"' && c != '\\' && c < 0x80) {
            i++;
            continue;
        }
        size_t n = 1;
        const char *why;
        if (c >= 0x80 && (n = utf8_seq(u + i, len - i, &why)) != 0) {
            i += n;
            continue;
        }
        clip_buf_append(b, u + run, i - run);
        if (c >= 0x80) {
            /* The contract says valid UTF-8; should a caller break it, the output still
             * has to be valid JSON, so the bad byte becomes U+FFFD. */
            clip_buf_puts(b, "\xEF\xBF\xBD");
        } else {
            char esc[7] = {'\\', (char)c, 0};
            switch (c) {
            case '"': case '\\': break;
            case '\b': esc[1] = 'b'; break;
            case '\f': esc[1] = 'f'; break;
            case '\n': esc[1] = 'n'; break;
            case '\r': esc[1] = 'r'; break;
            case '\t': esc[1] = 't'; break;
            default:
                memcpy(esc + 1, "u00", 3);
                esc[4] = hex[c >> 4];
                esc[5] = hex[c & 15];
            }
            clip_buf_puts(b, esc);
        }
        i++;
        run = i;
    }
    clip_buf_append(b, u + run, len - run);
    clip_buf_putc(b, '"');
}

#ifdef __SIZEOF_INT128__
typedef unsigned __int128 u128;

/* 10^n for 0 <= n <= 38 */
static u128 pow10_u128(int n)
{
    static const uint64_t p10[20] = {
        1u, 10u, 100u, 1000u, 10000u, 100000u, 1000000u, 10000000u, 100000000u,
        1000000000u, 10000000000u, 100000000000u, 1000000000000u, 10000000000000u,
        100000000000000u, 1000000000000000u, 10000000000000000u, 100000000000000000u,
        1000000000000000000u, 10000000000000000000u,
    };
    return n < 20 ? p10[n] : (u128)p10[19] * p10[n - 19];
}

/* floor(m * 2^e * 10^s) and twice the remainder against the divisor, all scaled to
 * integers. With s >= 0 and e <= 0 (|v| below about 10^8: the usual case) the divisor
 * is a power of two and a shift does. */
static u128 scaled_digits(uint32_t m, int e, int s, u128 *r2, u128 *den)
{
    u128 B = (u128)1 << (e < 0 ? -e : e);
    u128 num = (u128)m * (s >= 0 ? pow10_u128(s) : 1) * (e > 0 ? B : 1);
    *den = (s < 0 ? pow10_u128(-s) : 1) * (e < 0 ? B : 1);
    if (s >= 0 && e <= 0) {
        *r2 = 2 * (num & (B - 1));
        return num >> -e;
    }
    *r2 = 2 * (num % *den);
    return num / *den;
}

/* What the loop in clip_json_write_float writes, without printf and strtof: a response
 * carries thousands of floats, and printing each up to four times and reading it back
 * took 2.2 ms of a batch-8 request. |v| = m * 2^e exactly, so every rounding and
 * round-trip decision is made on integers: for 2^-37 <= |v| < 2^31 (embeddings live
 * there) none of them needs more than 94 bits. Returns 0 outside that range or on a
 * compiler without 128-bit integers, and the caller takes the printf route. */
static int format_float_fast(char *out, float v)
{
    uint32_t bits;
    memcpy(&bits, &v, sizeof bits);
    int biased = (int)(bits >> 23 & 0xFF);
    uint32_t m = (bits & 0x7FFFFF) | 0x800000;
    int e = biased - 150;
    if (biased == 0 || e < -60 || e > 7) return 0;
    /* |v|'s decimal exponent from its binary one (78913 / 2^18 is just above log10 2),
     * corrected below when off by one */
    int k = e + 23, E = k >= 0 ? (k * 78913) >> 18 : -((-k * 78913 + 262143) >> 18);
    u128 B = (u128)1 << (e < 0 ? -e : e), r2, den;
    for (;;) {   /* floor(|v| * 10^(8 - E)) must have 9 digits */
        u128 q = scaled_digits(m, e, 8 - E, &r2, &den);
        if (q >= 1000000000u) E++;
        else if (q < 100000000u) E--;
        else break;
    }
    uint64_t D = 0;
    int P = 6, X = E;
    for (; P <= 9; P++) {
        /* D: |v| to P significant digits, rounded half to even as printf does */
        u128 q = scaled_digits(m, e, P - 1 - E, &r2, &den);
        D = (uint64_t)q + (r2 > den || (r2 == den && (q & 1)));
        X = E;
        if (D == (uint64_t)pow10_u128(P)) {
            D /= 10;
            X = E + 1;
        }
        if (P == 9) break;
        /* D * 10^-t reads back as v iff it lies within half a gap of |v| (on the boundary,
         * ties go to even m). Scaled by 4 * 10^t * 2^-e, and then by whatever makes every
         * term an integer. */
        int t = P - 1 - X;
        u128 T = pow10_u128(t < 0 ? -t : t);
        u128 d = (u128)D * 4 * (t < 0 ? T : 1) * (e < 0 ? B : 1);
        u128 unit = (t >= 0 ? T : 1) * (e > 0 ? B : 1);
        u128 center = (u128)m * 4 * unit, hi = 2 * unit;
        u128 lo = m == 0x800000 && biased > 1 ? unit : hi;   /* the gap below halves */
        int even = !(m & 1);
        if (d > center ? (d < center + hi || (even && d == center + hi))
                       : (d > center - lo || (even && d == center - lo)))
            break;
    }
    char digits[10];
    int nd = P;
    for (int i = P - 1; i >= 0; i--, D /= 10) digits[i] = (char)('0' + D % 10);
    while (nd > 1 && digits[nd - 1] == '0') nd--;   /* %g drops trailing zeros */
    char *o = out;
    if (bits >> 31) *o++ = '-';
    if (X < -4 || X >= P) {
        *o++ = digits[0];
        if (nd > 1) {
            *o++ = '.';
            memcpy(o, digits + 1, (size_t)nd - 1);
            o += nd - 1;
        }
        int ax = X < 0 ? -X : X;
        *o++ = 'e';
        *o++ = X < 0 ? '-' : '+';
        *o++ = (char)('0' + ax / 10);
        *o++ = (char)('0' + ax % 10);
    } else if (X >= 0) {
        for (int i = 0; i <= X; i++) *o++ = i < nd ? digits[i] : '0';
        if (nd > X + 1) {
            *o++ = '.';
            memcpy(o, digits + X + 1, (size_t)(nd - X - 1));
            o += nd - X - 1;
        }
    } else {
        *o++ = '0';
        *o++ = '.';
        for (int i = 0; i < -X - 1; i++) *o++ = '0';
        memcpy(o, digits, (size_t)nd);
        o += nd;
    }
    *o = '\0';
    return 1;
}
#else
static int format_float_fast(char *out, float v)
{
    (void)out;
    (void)v;
    return 0;
}
#endif

void clip_json_write_float(clip_buf *b, float v)
{
    if (!isfinite(v)) {
        clip_buf_puts(b, "null");
        return;
    }
    char tmp[32];
    if (!format_float_fast(tmp, v)) {
        /* the shortest of %.6g..%.9g that reads back as v (9 digits always do) */
        for (int prec = 6; prec <= 9; prec++) {
            snprintf(tmp, sizeof tmp, "%.*g", prec, (double)v);
            if (prec == 9 || strtof(tmp, NULL) == v) break;
        }
    }
    clip_buf_puts(b, tmp);
}

/* The shortest of %.15g..%.17g that reads back as v (17 digits always do). */
static void format_double(char *tmp, size_t size, double v)
{
    for (int prec = 15; prec <= 17; prec++) {
        snprintf(tmp, size, "%.*g", prec, v);
        if (prec == 17 || strtod(tmp, NULL) == v) break;
    }
}

void clip_json_write_double(clip_buf *b, double v)
{
    if (!isfinite(v)) {
        clip_buf_puts(b, "null");
        return;
    }
    char tmp[40];
    format_double(tmp, sizeof tmp, v);
    clip_buf_puts(b, tmp);
}

/* A parsed number, written so it reads back as the same double and keeps its kind: an
 * integer stays in integer form (%.0f prints a double's exact decimal value), a fraction
 * keeps a '.' or an exponent (as Python writes 1.0). */
static void write_number(clip_buf *b, const clip_json *v)
{
    if (!isfinite(v->number)) {
        clip_buf_puts(b, "null");
        return;
    }
    if (v->is_integer) {
        clip_buf_printf(b, "%.0f", v->number);
        return;
    }
    char tmp[40];
    format_double(tmp, sizeof tmp, v->number);
    clip_buf_puts(b, tmp);
    if (!strpbrk(tmp, ".e")) clip_buf_puts(b, ".0");
}

static void write_scalar(clip_buf *b, const clip_json *v)
{
    switch (v->type) {
    case CLIP_JSON_BOOL: clip_buf_puts(b, v->boolean ? "true" : "false"); break;
    case CLIP_JSON_NUMBER: write_number(b, v); break;
    case CLIP_JSON_STRING: clip_json_write_string(b, v->str, v->str_len); break;
    default: clip_buf_puts(b, "null"); break;
    }
}

/* Iterative like the reader: the depth of a tree costs a heap stack, never the C stack. */
void clip_json_write_value(clip_buf *b, const clip_json *v)
{
    typedef struct { const clip_json *v; size_t next; } wframe;
    wframe local[CLIP_JSON_DEFAULT_MAX_DEPTH], *st = local;
    size_t cap = sizeof local / sizeof local[0], top = 0;
    if (!v) {
        clip_buf_puts(b, "null");
        return;
    }
    for (;;) {
        /* Write v: a scalar, or open a container and descend into it. */
        if (v->type == CLIP_JSON_ARRAY || v->type == CLIP_JSON_OBJECT) {
            clip_buf_putc(b, v->type == CLIP_JSON_ARRAY ? '[' : '{');
            if (top == cap) {
                size_t ncap = cap * 2;
                wframe *q = st == local ? malloc(ncap * sizeof *q)
                                        : realloc(st, ncap * sizeof *q);
                if (!q) {
                    b->oom = 1;
                    break;
                }
                if (st == local) memcpy(q, local, sizeof local);
                st = q;
                cap = ncap;
            }
            st[top].v = v;
            st[top].next = 0;
            top++;
        } else {
            write_scalar(b, v);
        }
        /* Find the next value to write, closing containers that are done. */
        v = NULL;
        while (top && !v) {
            wframe *f = &st[top - 1];
            if (f->next == f->v->n) {
                clip_buf_putc(b, f->v->type == CLIP_JSON_ARRAY ? ']' : '}');
                top--;
                continue;
            }
            if (f->next) clip_buf_putc(b, ',');
            if (f->v->type == CLIP_JSON_OBJECT) {
                clip_json_write_string(b, f->v->keys[f->next], f->v->key_lens[f->next]);
                clip_buf_putc(b, ':');
            }
            v = &f->v->items[f->next++];
        }
        if (!v) break;
    }
    if (st != local) free(st);
}
