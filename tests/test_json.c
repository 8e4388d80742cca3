/* test_json.c -- the JSON reader, writer and append buffer (json.c).
 *
 * Every input is parsed from an exactly-sized heap copy without a terminating NUL, so the
 * sanitizer build catches any read past the end. Random cases use a fixed seed. */
#include "json.h"

#include "check.h"

#include <float.h>
#include <math.h>
#include <stdint.h>
#include <string.h>
#include <time.h>

/* ---------------------------------------------------------------------------------------
 * Helpers
 * ------------------------------------------------------------------------------------- */

static uint64_t rng_state = 0x9E3779B97F4A7C15u;

static uint64_t rng(void)
{
    uint64_t x = rng_state;
    x ^= x << 13;
    x ^= x >> 7;
    x ^= x << 17;
    return rng_state = x;
}

static double now_ms(void)
{
    struct timespec ts;
    timespec_get(&ts, TIME_UTC);
    return ts.tv_sec * 1e3 + ts.tv_nsec / 1e6;
}

/* The time limits are loose (some 30x the parser's few ms here) but fail on anything
 * quadratic, which takes many seconds at the sizes tested. Under ASan freed memory is
 * quarantined, so every run pays for fresh pages: the limit is wider there. */
#if defined(__SANITIZE_ADDRESS__)
#define TIME_LIMIT_MS 2000.0
#elif defined(__has_feature)
#if __has_feature(address_sanitizer)
#define TIME_LIMIT_MS 2000.0
#endif
#endif
#ifndef TIME_LIMIT_MS
#define TIME_LIMIT_MS 100.0
#endif

static char last_err[256];

/* Parses len bytes from an exact-size copy (no NUL after them). */
static clip_json_doc *parse_n(const char *text, size_t len, int max_depth)
{
    char *copy = malloc(len ? len : 1);
    if (len) memcpy(copy, text, len);
    clip_json_doc *doc = clip_json_parse(copy, len, max_depth, last_err, sizeof last_err);
    free(copy);   /* the tree must not point into the input */
    return doc;
}

static clip_json_doc *parse(const char *text) { return parse_n(text, strlen(text), 0); }

/* The first bytes of text with anything unprintable as \xNN, for a check's one-line name. */
static const char *printable(const char *text, size_t len)
{
    static char out[4 * 40 + 1];
    size_t n = 0;
    for (size_t i = 0; i < len && i < 40; i++) {
        unsigned char c = (unsigned char)text[i];
        if (c >= 0x20 && c < 0x7f) out[n++] = (char)c;
        else n += (size_t)snprintf(out + n, sizeof out - n, "\\x%02X", c);
    }
    out[n] = '\0';
    return out;
}

/* Expects text to be refused with exactly this message. */
static void expect_error_n(const char *text, size_t len, int max_depth, const char *message)
{
    clip_json_doc *doc = parse_n(text, len, max_depth);
    if (doc) {
        CHECK(0, "refuse %s: parsed (expected \"%s\")", printable(text, len), message);
        clip_json_free(doc);
        return;
    }
    CHECK(strcmp(last_err, message) == 0, "refuse %s: got \"%s\", expected \"%s\"",
          printable(text, len), last_err, message);
}

static void expect_error(const char *text, const char *message)
{
    expect_error_n(text, strlen(text), 0, message);
}

/* Deep equality of two parsed values (numbers bitwise, so -0 and 0 differ). */
static int same_value(const clip_json *a, const clip_json *b)
{
    if (a->type != b->type || a->n != b->n) return 0;
    switch (a->type) {
    case CLIP_JSON_NULL: return 1;
    case CLIP_JSON_BOOL: return a->boolean == b->boolean;
    case CLIP_JSON_NUMBER:
        return memcmp(&a->number, &b->number, sizeof(double)) == 0
            && a->is_integer == b->is_integer;
    case CLIP_JSON_STRING:
        return a->str_len == b->str_len && memcmp(a->str, b->str, a->str_len) == 0;
    case CLIP_JSON_ARRAY:
    case CLIP_JSON_OBJECT:
        for (size_t i = 0; i < a->n; i++) {
            if (a->type == CLIP_JSON_OBJECT
                && (a->key_lens[i] != b->key_lens[i]
                    || memcmp(a->keys[i], b->keys[i], a->key_lens[i]) != 0))
                return 0;
            if (!same_value(&a->items[i], &b->items[i])) return 0;
        }
        return 1;
    }
    return 0;
}

static size_t utf8_encode(unsigned char *out, uint32_t cp)
{
    if (cp < 0x80) return out[0] = (unsigned char)cp, 1;
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

/* ---------------------------------------------------------------------------------------
 * Reading valid documents
 * ------------------------------------------------------------------------------------- */

static void test_value_kinds(void)
{
    clip_json_doc *doc = parse(" \t\r\n{\"null\" :null, \"t\":true ,\"f\":false,\"int\":-42,"
                               "\"frac\":12.5e-1,\"s\":\"hi\",\"arr\":[1,[],{}, \"x\"],"
                               "\"obj\":{\"k\":{\"deep\":[null]}}}\n\r\t ");
    if (!CHECK(doc, "parse a document with every kind of value (%s)", doc ? "ok" : last_err)) return;
    const clip_json *r = clip_json_root(doc);
    CHECK(r->type == CLIP_JSON_OBJECT && r->n == 8, "root is an object with 8 members");
    const clip_json *v = clip_json_get(r, "null");
    CHECK(v && v->type == CLIP_JSON_NULL, "null");
    v = clip_json_get(r, "t");
    CHECK(v && v->type == CLIP_JSON_BOOL && v->boolean == 1, "true");
    v = clip_json_get(r, "f");
    CHECK(v && v->type == CLIP_JSON_BOOL && v->boolean == 0, "false");
    v = clip_json_get(r, "int");
    CHECK(v && v->type == CLIP_JSON_NUMBER && v->number == -42 && v->is_integer,
          "integer -42");
    v = clip_json_get(r, "frac");
    CHECK(v && v->type == CLIP_JSON_NUMBER && v->number == 1.25 && !v->is_integer,
          "12.5e-1 is 1.25 and not an integer");
    v = clip_json_get(r, "s");
    CHECK(v && v->type == CLIP_JSON_STRING && v->str_len == 2 && strcmp(v->str, "hi") == 0,
          "string");
    v = clip_json_get(r, "arr");
    CHECK(v && v->type == CLIP_JSON_ARRAY && v->n == 4 && v->items[0].number == 1
              && v->items[1].type == CLIP_JSON_ARRAY && v->items[1].n == 0
              && v->items[2].type == CLIP_JSON_OBJECT && v->items[2].n == 0
              && v->items[3].type == CLIP_JSON_STRING && v->keys == NULL,
          "array with number, empty array, empty object, string");
    v = clip_json_get(clip_json_get(clip_json_get(r, "obj"), "k"), "deep");
    CHECK(v && v->type == CLIP_JSON_ARRAY && v->n == 1 && v->items[0].type == CLIP_JSON_NULL,
          "nested objects");
    CHECK(clip_json_get(r, "missing") == NULL && clip_json_get(v, "x") == NULL
              && clip_json_get(NULL, "x") == NULL,
          "get: missing key, non-object and NULL give NULL");
    CHECK(r->keys[0] && strcmp(r->keys[0], "null") == 0 && r->key_lens[7] == 3,
          "keys in document order with lengths");
    clip_json_free(doc);

    const char *scalars[] = {"0", "\"\"", "true", "null", "[]", "{}", " 7 "};
    for (size_t i = 0; i < sizeof scalars / sizeof *scalars; i++) {
        doc = parse(scalars[i]);
        CHECK(doc != NULL, "a lone value is a document: '%s' (%s)", scalars[i], doc ? "ok" : last_err);
        clip_json_free(doc);
    }
    doc = parse_n("123456", 3, 0);
    CHECK(doc && clip_json_root(doc)->number == 123, "only len bytes are read");
    clip_json_free(doc);
    clip_json_free(NULL);
    CHECK(clip_json_root(NULL) == NULL, "root of NULL is NULL");
}

static void test_numbers(void)
{
    static const struct { const char *text; double value; int integer; } cases[] = {
        {"0", 0.0, 1},
        {"-0", -0.0, 1},
        {"-0.0", -0.0, 0},
        {"1", 1.0, 1},
        {"999999999999999", 999999999999999.0, 1},
        {"9007199254740993", 9007199254740992.0, 1},   /* 2^53 + 1 rounds to even */
        {"123456789012345678901234567890", 1.2345678901234568e29, 1},
        {"1.5", 1.5, 0},
        {"1E3", 1000.0, 0},
        {"1e+3", 1000.0, 0},
        {"25e-1", 2.5, 0},
        {"0.1", 0.1, 0},
        {"-2.5E-3", -0.0025, 0},
        {"1.7976931348623157e308", DBL_MAX, 0},
        {"2.2250738585072014e-308", DBL_MIN, 0},
        {"4.9406564584124654e-324", 4.9406564584124654e-324, 0},
        {"1e-400", 0.0, 0},                         /* underflow keeps the nearest double */
        {"0e99999999999999999999", 0.0, 0},
        {"0.00000000000000000000000000000000000000000000000000000000000000000000000000001e77",
         1.0, 0},
    };
    for (size_t i = 0; i < sizeof cases / sizeof *cases; i++) {
        clip_json_doc *doc = parse(cases[i].text);
        const clip_json *v = clip_json_root(doc);
        CHECK(v && v->type == CLIP_JSON_NUMBER
                  && memcmp(&v->number, &cases[i].value, sizeof(double)) == 0
                  && v->is_integer == cases[i].integer,
              "number %s = %.17g%s (%s)", cases[i].text, cases[i].value,
              cases[i].integer ? " integer" : "", doc ? "ok" : last_err);
        clip_json_free(doc);
    }

    /* property: random decimals (short ones take the reader's exact fast path, long ones
     * strtod) give bitwise the double strtod gives */
    int bad = 0, random_cases = 100000;
    char first_bad[64] = "";
    for (int c = 0; c < random_cases; c++) {
        char text[64];
        size_t n = 0;
        if (rng() % 2) text[n++] = '-';
        int digits = 1 + (int)(rng() % 19), dot = (int)(rng() % (uint64_t)(digits + 1));
        text[n++] = (char)('1' + rng() % 9);
        for (int i = 1; i < digits; i++) {
            if (i == dot) text[n++] = '.';
            text[n++] = (char)('0' + rng() % 10);
        }
        if (rng() % 2) n += (size_t)snprintf(text + n, sizeof text - n, "e%d", (int)(rng() % 61) - 30);
        text[n] = '\0';
        clip_json_doc *doc = parse_n(text, n, 0);
        const clip_json *v = clip_json_root(doc);
        double want = strtod(text, NULL);
        if (!v || memcmp(&v->number, &want, sizeof want) != 0) {
            if (!bad++) snprintf(first_bad, sizeof first_bad, "%s", text);
        }
        clip_json_free(doc);
    }
    CHECK(!bad, "%d random decimals read as strtod reads them (%d bad, first: %s)", random_cases, bad,
          first_bad);
}

/* Strings are scanned eight bytes at a time: a quote, an escape, a control character and
 * UTF-8 are each found at every position of a word, after plain bytes that lie next to
 * them in ASCII (' ' '!' '#' '[' ']' DEL), and at the end of an input with no room for a
 * whole word. */
static void test_string_scan(void)
{
    static const char plain[] = " !#[]\x7f/aZ09+=~";
    int bad = 0, n = 0;
    char why[320] = "";
    for (int k = 0; k <= 40; k++) {
        char text[64], want[64];
        for (int i = 0; i < k; i++) want[i] = plain[(i * 7 + k) % (sizeof plain - 1)];
        for (int kind = 0; kind < 6; kind++) {
            size_t len = 0;
            text[len++] = '"';
            memcpy(text + len, want, (size_t)k);
            len += (size_t)k;
            const char *tail[] = {"\"", "\\n!!!!!!!!!\"", "\x01!!!!!!!!\"", "\xC3\xA9!!!!!!!\"",
                                  "\x80!!!!!!!!\"", ""};
            memcpy(text + len, tail[kind], strlen(tail[kind]));
            len += strlen(tail[kind]);
            clip_json_doc *doc = parse_n(text, len, 0);
            const clip_json *v = clip_json_root(doc);
            char expect_err[96] = "";
            int ok;
            if (kind == 2)
                snprintf(expect_err, sizeof expect_err, "at byte %d: control character 0x01", 1 + k);
            else if (kind == 4)
                snprintf(expect_err, sizeof expect_err, "at byte %d: invalid UTF-8 byte", 1 + k);
            else if (kind == 5)
                snprintf(expect_err, sizeof expect_err, "at byte 0: unterminated string");
            if (expect_err[0]) {
                ok = !doc && strstr(last_err, expect_err) != NULL;
            } else {
                const char *add = kind == 1 ? "\n!!!!!!!!!" : kind == 3 ? "\xC3\xA9!!!!!!!" : "";
                size_t wl = (size_t)k + strlen(add);
                ok = v && v->type == CLIP_JSON_STRING && v->str_len == wl &&
                     memcmp(v->str, want, (size_t)k) == 0 && memcmp(v->str + k, add, strlen(add)) == 0 &&
                     v->str[wl] == '\0';
            }
            n++;
            if (!ok && !bad++)
                snprintf(why, sizeof why, "%d plain bytes, case %d: %s", k, kind,
                         doc ? "parsed" : last_err);
            clip_json_free(doc);
        }
    }
    CHECK(!bad, "%d strings with a quote, escape, control byte, UTF-8 or the end after 0-40 "
          "plain bytes (%d wrong, first: %s)", n, bad, why);
}

static void test_escapes(void)
{
    clip_json_doc *doc = parse("\"\\\"\\\\\\/\\b\\f\\n\\r\\t\\u0041\\u00e9\\u20AC\\uD83D\\uDE00"
                               "\\uDBFF\\uDFFF\xC3\xA9\xF0\x9F\x98\x80\"");
    const clip_json *v = clip_json_root(doc);
    static const char want[] = "\"\\/\b\f\n\r\tA\xC3\xA9\xE2\x82\xAC\xF0\x9F\x98\x80"
                               "\xF4\x8F\xBF\xBF\xC3\xA9\xF0\x9F\x98\x80";
    CHECK(v && v->type == CLIP_JSON_STRING && v->str_len == sizeof want - 1
              && memcmp(v->str, want, sizeof want) == 0,
          "escapes, surrogate pairs (U+1F600, U+10FFFF) and raw UTF-8 decode to the right "
          "bytes (%s)", doc ? "ok" : last_err);
    clip_json_free(doc);

    doc = parse("{\"a\\u0000b\":\"x\\u0000y\",\"a\":1}");
    const clip_json *r = clip_json_root(doc);
    CHECK(r && r->n == 2 && r->key_lens[0] == 3 && memcmp(r->keys[0], "a\0b", 4) == 0
              && r->items[0].str_len == 3 && memcmp(r->items[0].str, "x\0y", 4) == 0,
          "embedded \\u0000 keeps its length in keys and values");
    const clip_json *a = clip_json_get(r, "a");
    CHECK(a && a->type == CLIP_JSON_NUMBER, "get \"a\" does not match the key \"a\\0b\"");
    clip_json_free(doc);
}

static void test_duplicates(void)
{
    clip_json_doc *doc = parse("{\"k\":1,\"x\":true,\"k\":2,\"k\":3,\"y\":null}");
    const clip_json *r = clip_json_root(doc);
    const clip_json *k = clip_json_get(r, "k");
    CHECK(r && r->n == 5 && k && k->number == 3, "duplicate keys: get returns the last");
    clip_json_free(doc);
}

/* ---------------------------------------------------------------------------------------
 * Refusing invalid documents
 * ------------------------------------------------------------------------------------- */

static void test_errors(void)
{
    /* empty input and structure */
    expect_error_n("", 0, 0, "invalid JSON at byte 0: empty input");
    clip_json_doc *doc = clip_json_parse(NULL, 0, 0, last_err, sizeof last_err);
    CHECK(!doc && strstr(last_err, "empty input"), "NULL text is empty input");
    expect_error(" \n", "invalid JSON at byte 2: unexpected end of input, expected a value");
    expect_error("{\"model\": \"ViT\", \"text\" 1}",
                 "invalid JSON at byte 24: expected ':' after object key");
    expect_error("[1,]", "invalid JSON at byte 3: unexpected ']', expected a value");
    expect_error("[,1]", "invalid JSON at byte 1: unexpected ',', expected a value");
    expect_error("[1 2]",
                 "invalid JSON at byte 3: unexpected '2', expected ',' or ']' after array element");
    expect_error("[1",
                 "invalid JSON at byte 2: unexpected end of input, expected ',' or ']' after "
                 "array element");
    expect_error("{\"a\":1,}", "invalid JSON at byte 7: unexpected '}', expected a string key");
    expect_error("{1:2}", "invalid JSON at byte 1: unexpected '1', expected a string key");
    expect_error("{\"a\":1 \"b\":2}",
                 "invalid JSON at byte 7: unexpected '\"', expected ',' or '}' after object member");
    expect_error("{\"a\"}", "invalid JSON at byte 4: expected ':' after object key");
    expect_error("[1}",
                 "invalid JSON at byte 2: unexpected '}', expected ',' or ']' after array element");
    expect_error("1 2", "invalid JSON at byte 2: unexpected '2', trailing content after the value");
    expect_error("{}x", "invalid JSON at byte 2: unexpected 'x', trailing content after the value");
    expect_error("[]]", "invalid JSON at byte 2: unexpected ']', trailing content after the value");
    expect_error_n("1\0", 2, 0,
                   "invalid JSON at byte 1: unexpected byte 0x00, trailing content after the value");

    /* whitespace other than the four JSON ones */
    expect_error("\f1", "invalid JSON at byte 0: unexpected byte 0x0C, expected a value");
    expect_error("\v1", "invalid JSON at byte 0: unexpected byte 0x0B, expected a value");
    expect_error("\xC2\xA0" "1", "invalid JSON at byte 0: unexpected byte 0xC2, expected a value");
    expect_error("\xEF\xBB\xBF{}", "invalid JSON at byte 0: unexpected byte 0xEF, expected a value");

    /* literals */
    expect_error("tru", "invalid JSON at byte 0: invalid literal (expected 'true')");
    expect_error("[nul]", "invalid JSON at byte 1: invalid literal (expected 'null')");
    expect_error("fals", "invalid JSON at byte 0: invalid literal (expected 'false')");
    expect_error("True", "invalid JSON at byte 0: unexpected 'T', expected a value");
    expect_error("nulll", "invalid JSON at byte 4: unexpected 'l', trailing content after the value");

    /* numbers */
    expect_error("01", "invalid JSON at byte 0: leading zero in number");
    expect_error("[-012]", "invalid JSON at byte 2: leading zero in number");
    expect_error("+1", "invalid JSON at byte 0: unexpected '+', expected a value");
    expect_error("1.", "invalid JSON at byte 2: unexpected end of input, expected a digit after '.'");
    expect_error("1.e5", "invalid JSON at byte 2: unexpected 'e', expected a digit after '.'");
    expect_error(".5", "invalid JSON at byte 0: unexpected '.', expected a value");
    expect_error("1e", "invalid JSON at byte 2: unexpected end of input, expected a digit in the "
                       "exponent");
    expect_error("[1e+]", "invalid JSON at byte 4: unexpected ']', expected a digit in the exponent");
    expect_error("-", "invalid JSON at byte 1: unexpected end of input, expected a digit after '-'");
    expect_error("- 1", "invalid JSON at byte 1: unexpected byte 0x20, expected a digit after '-'");
    expect_error("0x10", "invalid JSON at byte 1: unexpected 'x', trailing content after the value");
    expect_error("NaN", "invalid JSON at byte 0: NaN and Infinity are not JSON");
    expect_error("Infinity", "invalid JSON at byte 0: NaN and Infinity are not JSON");
    expect_error("-Infinity", "invalid JSON at byte 0: Infinity is not JSON");
    expect_error("[1e400]", "invalid JSON at byte 1: number out of range (overflows a double)");
    expect_error("-1.8e308", "invalid JSON at byte 0: number out of range (overflows a double)");
    expect_error("1e99999999999999999999999",
                 "invalid JSON at byte 0: number out of range (overflows a double)");

    /* strings */
    expect_error("\"abc", "invalid JSON at byte 0: unterminated string");
    expect_error("[\"abc\\", "invalid JSON at byte 1: unterminated string");
    expect_error("\"a\nb\"",
                 "invalid JSON at byte 2: control character 0x0A in string (must be escaped)");
    expect_error("\"a\tb\"",
                 "invalid JSON at byte 2: control character 0x09 in string (must be escaped)");
    expect_error_n("\"a\0\"", 4, 0,
                   "invalid JSON at byte 2: control character 0x00 in string (must be escaped)");
    expect_error("\"\\x\"", "invalid JSON at byte 1: invalid escape '\\x'");
    expect_error("\"\\'\"", "invalid JSON at byte 1: invalid escape '\\''");
    expect_error("\"\\U0041\"", "invalid JSON at byte 1: invalid escape '\\U'");
    expect_error("\"\\u12\"", "invalid JSON at byte 1: invalid \\u escape (expected 4 hex digits)");
    expect_error("\"\\u12G4\"", "invalid JSON at byte 1: invalid \\u escape (expected 4 hex digits)");
    expect_error("\"\\u", "invalid JSON at byte 1: invalid \\u escape (expected 4 hex digits)");
    expect_error("\"\\uD800\"",
                 "invalid JSON at byte 1: high surrogate \\uD800 not followed by a low surrogate");
    expect_error("\"\\uD800x\\uDC00\"",
                 "invalid JSON at byte 1: high surrogate \\uD800 not followed by a low surrogate");
    expect_error("\"\\uD83D\\u0041\"",
                 "invalid JSON at byte 1: high surrogate \\uD83D followed by \\u0041, not a low "
                 "surrogate");
    expect_error("\"\\uD83D\\uD83D\"",
                 "invalid JSON at byte 1: high surrogate \\uD83D followed by \\uD83D, not a low "
                 "surrogate");
    expect_error("\"\\uD83D\\uZZZZ\"",
                 "invalid JSON at byte 7: invalid \\u escape (expected 4 hex digits)");
    expect_error("\"\\uDC00\"", "invalid JSON at byte 1: lone low surrogate \\uDC00");
    expect_error("\"\\uDE00\\uD83D\"", "invalid JSON at byte 1: lone low surrogate \\uDE00");

    /* UTF-8 */
    expect_error("\"\xC0\xAF\"", "invalid JSON at byte 1: overlong UTF-8 encoding in string");
    expect_error("\"\xC1\xBF\"", "invalid JSON at byte 1: overlong UTF-8 encoding in string");
    expect_error("\"\xE0\x80\xAF\"", "invalid JSON at byte 1: overlong UTF-8 encoding in string");
    expect_error("\"\xE0\x9F\xBF\"", "invalid JSON at byte 1: overlong UTF-8 encoding in string");
    expect_error("\"\xF0\x80\x80\xAF\"", "invalid JSON at byte 1: overlong UTF-8 encoding in string");
    expect_error("\"\xF0\x8F\xBF\xBF\"", "invalid JSON at byte 1: overlong UTF-8 encoding in string");
    expect_error("\"\xED\xA0\x80\"", "invalid JSON at byte 1: UTF-8 encoded surrogate in string");
    expect_error("\"ab\xED\xBF\xBF\"", "invalid JSON at byte 3: UTF-8 encoded surrogate in string");
    expect_error("\"\xF4\x90\x80\x80\"",
                 "invalid JSON at byte 1: UTF-8 code point above U+10FFFF in string");
    expect_error("\"\xF5\x80\x80\x80\"",
                 "invalid JSON at byte 1: UTF-8 code point above U+10FFFF in string");
    expect_error("\"\xFF\"", "invalid JSON at byte 1: UTF-8 code point above U+10FFFF in string");
    expect_error("\"\x80\"", "invalid JSON at byte 1: invalid UTF-8 byte in string");
    expect_error("\"\xBF\"", "invalid JSON at byte 1: invalid UTF-8 byte in string");
    expect_error("\"\xC3\"", "invalid JSON at byte 1: truncated UTF-8 sequence in string");
    expect_error("\"\xE2\x82\"", "invalid JSON at byte 1: truncated UTF-8 sequence in string");
    expect_error("\"\xF0\x9F\x98" "a\"", "invalid JSON at byte 1: truncated UTF-8 sequence in string");
    expect_error_n("\"\xF0\x9F\x98", 4, 0,
                   "invalid JSON at byte 1: truncated UTF-8 sequence in string");
    expect_error("{\"\xE9t\xE9\":1}", "invalid JSON at byte 2: truncated UTF-8 sequence in string");

    /* the message fits any buffer and is one line */
    char small[16];
    doc = clip_json_parse("[1,]", 4, 0, small, sizeof small);
    CHECK(!doc && strlen(small) == sizeof small - 1 && strncmp(small, "invalid JSON at", 15) == 0,
          "error message truncated to a small buffer: \"%s\"", small);
    doc = clip_json_parse("[1,]", 4, 0, NULL, 0);
    CHECK(!doc, "no error buffer: still refused");
    doc = clip_json_parse("\"a\nb\"", 5, 0, last_err, sizeof last_err);
    CHECK(!doc && !strchr(last_err, '\n'), "the message is one line: %s", last_err);
}

static void test_depth(void)
{
    enum { DEEP = 100000 };
    char *text = malloc(2 * DEEP);
    for (int limit = 1; limit <= CLIP_JSON_DEFAULT_MAX_DEPTH; limit += 63) {
        for (int extra = 0; extra <= 1; extra++) {
            int depth = limit + extra;
            /* arrays and objects alternate; objects need a key before the next level */
            size_t n = 0;
            char *t = malloc((size_t)depth * 8 + 8);
            for (int i = 0; i < depth; i++) {
                if (i % 2) {
                    memcpy(t + n, "{\"k\":", 5);
                    n += 5;
                } else {
                    t[n++] = '[';
                }
            }
            t[n++] = '0';
            for (int i = depth - 1; i >= 0; i--) t[n++] = i % 2 ? '}' : ']';
            clip_json_doc *doc = parse_n(t, n, limit == CLIP_JSON_DEFAULT_MAX_DEPTH ? 0 : limit);
            if (!extra) {
                CHECK(doc != NULL, "depth %d of arrays and objects within limit %d (%s)", depth,
                      limit, doc ? "ok" : last_err);
            } else {
                char want[128];
                snprintf(want, sizeof want, "nesting deeper than the limit of %d", limit);
                CHECK(!doc && strstr(last_err, want), "depth %d over limit %d refused: %s",
                      depth, limit, last_err);
            }
            clip_json_free(doc);
            free(t);
        }
    }
    expect_error_n("[{\"a\":[1]}]", 11, 2, "invalid JSON at byte 6: nesting deeper than the limit of 2");

    memset(text, '[', DEEP);
    memset(text + DEEP, ']', DEEP);
    double t0 = now_ms();
    clip_json_doc *doc = parse_n(text, 2 * DEEP, 0);
    double ms = now_ms() - t0;
    CHECK(!doc && strcmp(last_err, "invalid JSON at byte 64: nesting deeper than the limit of 64") == 0,
          "100,000 nested arrays refused at the limit: %s", last_err);
    CHECK(ms < TIME_LIMIT_MS, "deep input refused cheaply (%.3f ms)", ms);

    /* a caller that allows great depth: parsed and written without recursion */
    doc = parse_n(text, 2 * DEEP, DEEP);
    CHECK(doc != NULL, "100,000 nested arrays parse with max_depth 100000 (%s)",
          doc ? "ok" : last_err);
    clip_buf b = {0};
    clip_json_write_value(&b, clip_json_root(doc));
    CHECK(!b.oom && b.len == 2 * DEEP && memcmp(b.data, text, 2 * DEEP) == 0,
          "100,000 nested arrays written back unchanged");
    clip_buf_free(&b);
    clip_json_free(doc);
    free(text);
}

/* ---------------------------------------------------------------------------------------
 * Writing
 * ------------------------------------------------------------------------------------- */

static void test_buf(void)
{
    clip_buf b = {0};
    clip_buf_append(&b, "", 0);
    CHECK(b.data && b.len == 0 && b.data[0] == '\0', "empty append leaves a NUL-terminated buffer");
    for (int i = 0; i < 10000; i++) clip_buf_putc(&b, (char)('a' + i % 26));
    clip_buf_puts(&b, "|end");
    CHECK(b.len == 10004 && b.data[10004] == '\0' && memcmp(b.data + 10000, "|end", 4) == 0
              && b.data[25] == 'z' && !b.oom,
          "putc and puts grow the buffer");
    clip_buf_reset(&b);
    CHECK(b.len == 0 && b.data[0] == '\0' && b.cap >= 10005, "reset keeps the memory");
    char big[3000];
    memset(big, 'x', sizeof big - 1);
    big[sizeof big - 1] = '\0';
    clip_buf_printf(&b, "<%d>", 7);
    clip_buf_printf(&b, "%s|%s", big, big);
    CHECK(b.len == 3 + 2 * 2999 + 1 && strncmp(b.data, "<7>xx", 5) == 0
              && b.data[3 + 2999] == '|' && b.data[b.len] == '\0',
          "printf appends, growing past its first attempt");
    clip_buf_free(&b);
    CHECK(b.data == NULL && b.len == 0 && b.cap == 0, "free empties the buffer");

    b.oom = 1;
    clip_buf_puts(&b, "ignored");
    CHECK(b.data == NULL && b.len == 0, "appends after oom are ignored");
    clip_buf_free(&b);
}

static void test_write_string(void)
{
    clip_buf b = {0};
    static const char in[] = "a\"b\\c/\b\f\n\r\t\x01\x1f\x7f\0z\xC3\xA9\xE2\x80\xA8\xF0\x9F\x98\x80";
    clip_json_write_string(&b, in, sizeof in - 1);
    static const char want[] = "\"a\\\"b\\\\c/\\b\\f\\n\\r\\t\\u0001\\u001f\x7f\\u0000z"
                               "\xC3\xA9\xE2\x80\xA8\xF0\x9F\x98\x80\"";
    CHECK(b.len == sizeof want - 1 && memcmp(b.data, want, sizeof want) == 0,
          "write_string escapes quotes, backslash and controls, passes UTF-8 through: %s",
          b.data);
    clip_buf_reset(&b);
    clip_json_write_string(&b, "ok\xFF\xC3(\xED\xA0\x80!", 9);
    CHECK(strcmp(b.data, "\"ok\xEF\xBF\xBD\xEF\xBF\xBD(\xEF\xBF\xBD\xEF\xBF\xBD\xEF\xBF\xBD!\"")
              == 0,
          "invalid UTF-8 bytes become U+FFFD, so the output is still JSON: %s", b.data);
    clip_buf_reset(&b);
    clip_json_write_string(&b, "", 0);
    CHECK(strcmp(b.data, "\"\"") == 0, "empty string");
    clip_buf_free(&b);
}

/* The smallest %.Ng (N in lo..hi) that round-trips through `back`. */
static int shortest_precision_float(float v)
{
    char tmp[40];
    for (int p = 6; p < 9; p++) {
        snprintf(tmp, sizeof tmp, "%.*g", p, (double)v);
        if (strtof(tmp, NULL) == v) return p;
    }
    return 9;
}

static int shortest_precision_double(double v)
{
    char tmp[40];
    for (int p = 15; p < 17; p++) {
        snprintf(tmp, sizeof tmp, "%.*g", p, v);
        if (strtod(tmp, NULL) == v) return p;
    }
    return 17;
}

static void test_write_numbers(void)
{
    static const struct { float v; const char *want; } fcases[] = {
        {0.0f, "0"}, {-0.0f, "-0"}, {1.0f, "1"}, {0.1f, "0.1"}, {-2.5f, "-2.5"},
        {3.14159274f, "3.1415927"}, {16777216.0f, "16777216"}, {1e-5f, "1e-05"},
        {FLT_MAX, "3.4028235e+38"}, {FLT_MIN, "1.1754944e-38"}, {FLT_TRUE_MIN, "1.4013e-45"},
        {NAN, "null"}, {INFINITY, "null"}, {-INFINITY, "null"},
    };
    clip_buf b = {0};
    for (size_t i = 0; i < sizeof fcases / sizeof *fcases; i++) {
        clip_buf_reset(&b);
        clip_json_write_float(&b, fcases[i].v);
        CHECK(strcmp(b.data, fcases[i].want) == 0, "write_float %s: got %s", fcases[i].want,
              b.data);
    }
    static const struct { double v; const char *want; } dcases[] = {
        {0.1, "0.1"}, {1.0 / 3, "0.3333333333333333"}, {1e300, "1e+300"}, {-0.0, "-0"},
        {DBL_MAX, "1.7976931348623157e+308"}, {4.9406564584124654e-324, "4.94065645841247e-324"},
        {NAN, "null"}, {-INFINITY, "null"},
    };
    for (size_t i = 0; i < sizeof dcases / sizeof *dcases; i++) {
        clip_buf_reset(&b);
        clip_json_write_double(&b, dcases[i].v);
        CHECK(strcmp(b.data, dcases[i].want) == 0, "write_double %s: got %s", dcases[i].want,
              b.data);
    }

    /* property: random bit patterns read back bitwise-equal, at the shortest precision,
     * and as JSON numbers our reader accepts */
    int bad_float = 0, bad_double = 0, n_float = 0, n_double = 0;
    char first_bad[128] = "";
    for (int i = 0; i < 200000; i++) {
        uint32_t bits = (uint32_t)rng();
        float f;
        memcpy(&f, &bits, sizeof f);
        if (!isfinite(f)) continue;
        n_float++;
        clip_buf_reset(&b);
        clip_json_write_float(&b, f);
        float back = strtof(b.data, NULL);
        char want[40];
        snprintf(want, sizeof want, "%.*g", shortest_precision_float(f), (double)f);
        if (memcmp(&back, &f, sizeof f) != 0 || strcmp(b.data, want) != 0) {
            if (!bad_float++) snprintf(first_bad, sizeof first_bad, "float %s", b.data);
        }
        if (i % 16 == 0) {
            clip_json_doc *doc = parse_n(b.data, b.len, 0);
            const clip_json *v = clip_json_root(doc);
            if (!v || (float)v->number != f) {
                if (!bad_float++) snprintf(first_bad, sizeof first_bad, "reparse %s", b.data);
            }
            clip_json_free(doc);
        }
    }
    for (int i = 0; i < 100000; i++) {
        uint64_t bits = rng();
        double d;
        memcpy(&d, &bits, sizeof d);
        if (!isfinite(d)) continue;
        n_double++;
        clip_buf_reset(&b);
        clip_json_write_double(&b, d);
        double back = strtod(b.data, NULL);
        char want[40];
        snprintf(want, sizeof want, "%.*g", shortest_precision_double(d), d);
        if (memcmp(&back, &d, sizeof d) != 0 || strcmp(b.data, want) != 0) {
            if (!bad_double++) snprintf(first_bad, sizeof first_bad, "double %s", b.data);
        }
    }
    CHECK(!bad_float && n_float > 190000,
          "%d random floats read back exactly from the shortest form (%d bad, first: %s)",
          n_float, bad_float, first_bad);

    CHECK(!bad_double && n_double > 99000,
          "%d random doubles read back exactly from the shortest form (%d bad, first: %s)",
          n_double, bad_double, first_bad);
    clip_buf_free(&b);
}

/* Floats of the magnitudes a response carries are written without printf: the same text
 * as printf's shortest %.Ng, for random values across that range and past its ends, and
 * for the floats around every power of ten and of two in it (where the decimal exponent
 * and the rounding gap change). */
static void test_write_float_fast(void)
{
    enum { RANDOM = 400000, AROUND = 300, POWERS = 23 };
    size_t n = RANDOM + 2 * POWERS * (2 * AROUND + 1), k = 0;
    uint32_t *cases = malloc(n * sizeof *cases);
    if (!cases) {
        CHECK(0, "memory for %zu float cases", n);
        return;
    }
    for (int i = 0; i < RANDOM; i++) {
        uint32_t bits = (uint32_t)rng(), sign = bits & 0x80000000u;
        uint32_t biased = i < RANDOM / 2 && i % 2 ? 127 - 12 + (uint32_t)(i % 12)   /* 2^-12 .. 1 */
                                                 : 127 - 42 + (bits >> 8) % 78;     /* 2^-42 .. 2^35 */
        cases[k++] = sign | biased << 23 | (bits & 0x7FFFFF);
    }
    for (int e = -12; e < -12 + POWERS; e++) {
        float around[2] = {(float)pow(10, e), ldexpf(1.0f, 3 * e + 2)};
        for (int which = 0; which < 2; which++) {
            uint32_t base;
            memcpy(&base, &around[which], sizeof base);
            for (int d = -AROUND; d <= AROUND; d++) cases[k++] = base + (uint32_t)d;
        }
    }
    clip_buf b = {0};
    int bad = 0;
    char first[128] = "";
    for (size_t i = 0; i < n; i++) {
        float f;
        memcpy(&f, &cases[i], sizeof f);
        clip_buf_reset(&b);
        clip_json_write_float(&b, f);
        char want[40];
        snprintf(want, sizeof want, "%.*g", shortest_precision_float(f), (double)f);
        if (strcmp(b.data, want) != 0 && !bad++)
            snprintf(first, sizeof first, "%08x: %s, printf %s", (unsigned)cases[i], b.data, want);
    }
    CHECK(!bad, "%zu floats of response magnitudes written as printf's shortest %%.Ng "
          "(%d differ, first: %s)", n, bad, first);
    clip_buf_free(&b);
    free(cases);
}

static void test_write_value(void)
{
    const char *text = " { \"a\" : [1, 2.5, -0, -0.0, 1.0, 1e2, 12345678901234567890, "
                       "\"x\\u0000\\n\"], \"b\": {\"c\": null, \"d\": true, \"e\": false}, "
                       "\"\\u00e9\": {}, \"f\": [[]] } ";
    const char *want = "{\"a\":[1,2.5,-0,-0.0,1.0,100.0,12345678901234567168,\"x\\u0000\\n\"],"
                       "\"b\":{\"c\":null,\"d\":true,\"e\":false},\"\xC3\xA9\":{},\"f\":[[]]}";
    clip_json_doc *doc = parse(text);
    clip_buf b = {0};
    clip_json_write_value(&b, clip_json_root(doc));
    CHECK(doc && strcmp(b.data, want) == 0, "write_value is compact and keeps number kinds: %s",
          b.data);
    clip_json_doc *again = parse_n(b.data, b.len, 0);
    CHECK(again && same_value(clip_json_root(doc), clip_json_root(again)),
          "write_value output parses back to the same tree");
    clip_json_free(again);
    clip_json_free(doc);
    clip_buf_reset(&b);
    clip_json_write_value(&b, NULL);
    CHECK(strcmp(b.data, "null") == 0, "write_value(NULL) is null");
    clip_buf_free(&b);
}

/* Random valid UTF-8 (every code point class, NUL and controls included): written, then
 * parsed back to the same bytes. */
static void test_string_round_trip(void)
{
    int bad = 0, cases = 2000;
    char first_bad[128] = "";
    unsigned char s[4 * 64];
    clip_buf b = {0};
    for (int c = 0; c < cases; c++) {
        size_t len = 0, count = rng() % 64;
        for (size_t i = 0; i < count; i++) {
            uint32_t cp;
            switch (rng() % 5) {
            case 0: cp = (uint32_t)(rng() % 0x80); break;
            case 1: cp = (uint32_t)(rng() % 0x20); break;
            case 2: cp = 0x80 + (uint32_t)(rng() % (0x800 - 0x80)); break;
            case 3:
                cp = 0x800 + (uint32_t)(rng() % (0x10000 - 0x800 - 0x800));
                if (cp >= 0xD800) cp += 0x800;   /* skip the surrogates */
                break;
            default: cp = 0x10000 + (uint32_t)(rng() % 0x100000); break;
            }
            len += utf8_encode(s + len, cp);
        }
        clip_buf_reset(&b);
        clip_json_write_string(&b, (const char *)s, len);
        clip_json_doc *doc = parse_n(b.data, b.len, 0);
        const clip_json *v = clip_json_root(doc);
        if (!v || v->type != CLIP_JSON_STRING || v->str_len != len || memcmp(v->str, s, len) != 0
            || v->str[len] != '\0') {
            if (!bad++) snprintf(first_bad, sizeof first_bad, "%.60s (%.60s)", b.data, last_err);
        }
        clip_json_free(doc);
    }
    CHECK(!bad, "%d random UTF-8 strings survive write then parse (%d bad, first: %s)", cases, bad,
          first_bad);
    clip_buf_free(&b);
}

/* ---------------------------------------------------------------------------------------
 * Size and speed
 * ------------------------------------------------------------------------------------- */

/* Parses three times and keeps the best time: the first run in a fresh process mostly
 * measures the kernel handing out new pages, not the parser. Returns the last document. */
static clip_json_doc *timed_parse(const char *text, size_t len, int max_depth, double *best)
{
    clip_json_doc *doc = NULL;
    *best = 1e9;
    for (int rep = 0; rep < 3; rep++) {
        clip_json_free(doc);
        double t0 = now_ms();
        doc = parse_n(text, len, max_depth);
        double ms = now_ms() - t0;
        if (ms < *best) *best = ms;
    }
    return doc;
}

static void test_large(void)
{
    enum { N = 100000 };
    clip_buf b = {0};
    clip_buf_putc(&b, '[');
    for (int i = 0; i < N; i++) clip_buf_printf(&b, i ? ",%d.5" : "%d.5", i);
    clip_buf_putc(&b, ']');
    double ms;
    clip_json_doc *doc = timed_parse(b.data, b.len, 0, &ms);
    const clip_json *r = clip_json_root(doc);
    int ok = r && r->type == CLIP_JSON_ARRAY && r->n == N;
    for (int i = 0; ok && i < N; i++) ok = r->items[i].number == i + 0.5;
    CHECK(ok, "array of 100,000 numbers parsed with every value right");
    CHECK(ms < TIME_LIMIT_MS, "100,000-element array (%zu bytes) parsed in %.2f ms", b.len, ms);
    clip_json_free(doc);

    /* a vocab.json-shaped object: 49,408 keys */
    clip_buf_reset(&b);
    clip_buf_putc(&b, '{');
    for (int i = 0; i < 49408; i++)
        clip_buf_printf(&b, "%s\"tok\\u00e9%d</w>\": %d", i ? ", " : "", i, i);
    clip_buf_putc(&b, '}');
    doc = timed_parse(b.data, b.len, 0, &ms);
    r = clip_json_root(doc);
    const clip_json *last = clip_json_get(r, "tok\xC3\xA9" "49407</w>");
    CHECK(r && r->n == 49408 && last && last->number == 49407,
          "object of 49,408 keys parsed and looked up");
    CHECK(ms < TIME_LIMIT_MS, "49,408-key object (%zu bytes) parsed in %.2f ms", b.len, ms);
    clip_json_free(doc);

    /* one big string gets an arena chunk of its own */
    enum { BIG = 8 << 20 };
    clip_buf_reset(&b);
    clip_buf_puts(&b, "[\"");
    for (int i = 0; i < BIG; i++) clip_buf_putc(&b, (char)('A' + i % 26));
    clip_buf_puts(&b, "\",1]");
    doc = parse_n(b.data, b.len, 0);
    r = clip_json_root(doc);
    CHECK(r && r->n == 2 && r->items[0].str_len == BIG
              && r->items[0].str[BIG - 1] == 'A' + (BIG - 1) % 26 && r->items[1].number == 1,
          "an 8 MiB string parses");
    clip_json_free(doc);
    clip_buf_free(&b);
}

static char *read_file(const char *path, size_t *len)
{
    FILE *f = fopen(path, "rb");
    if (!f) return NULL;
    clip_buf b = {0};
    char chunk[65536];
    size_t n;
    while ((n = fread(chunk, 1, sizeof chunk, f)) > 0) clip_buf_append(&b, chunk, n);
    fclose(f);
    *len = b.len;
    return b.data;
}

/* The real vocab.json and config.json: every id 0..vocab_size-1 exactly once. */
static void test_reference(void)
{
    const char *dir = check_reference_dir();
    if (!dir) {
        check_skip("reference vocab.json/config.json: ../shared/reference is absent");
        return;
    }
    char path[1024];
    size_t len;
    snprintf(path, sizeof path, "%s/tiny-hf/config.json", dir);
    char *text = read_file(path, &len);
    clip_json_doc *config = text ? parse_n(text, len, 0) : NULL;
    free(text);
    const clip_json *vs = clip_json_get(clip_json_get(clip_json_root(config), "text_config"),
                                        "vocab_size");
    if (!CHECK(vs && vs->is_integer && vs->number > 0, "config.json: text_config.vocab_size (%s)",
               config ? "ok" : last_err)) {
        clip_json_free(config);
        return;
    }
    size_t vocab_size = (size_t)vs->number;
    clip_json_free(config);

    snprintf(path, sizeof path, "%s/tiny-hf/vocab.json", dir);
    text = read_file(path, &len);
    if (!CHECK(text, "read %s", path)) return;
    double best;
    clip_json_doc *doc = timed_parse(text, len, 0, &best);
    free(text);
    const clip_json *r = clip_json_root(doc);
    int ok = r && r->type == CLIP_JSON_OBJECT && r->n == vocab_size;
    unsigned char *seen = calloc(vocab_size, 1);
    for (size_t i = 0; ok && i < r->n; i++) {
        const clip_json *v = &r->items[i];
        ok = v->type == CLIP_JSON_NUMBER && v->is_integer && v->number >= 0
          && v->number < (double)vocab_size && !seen[(size_t)v->number]
          && strlen(r->keys[i]) == r->key_lens[i];
        if (ok) seen[(size_t)v->number] = 1;
    }
    free(seen);
    CHECK(ok, "vocab.json: %zu keys with every id below vocab_size exactly once (%s)", vocab_size,
          doc ? "ok" : last_err);
    CHECK(best < TIME_LIMIT_MS, "vocab.json (%zu bytes) parsed in %.2f ms", len, best);
    clip_json_free(doc);
}

int main(void)
{
    test_value_kinds();
    test_numbers();
    test_escapes();
    test_string_scan();
    test_duplicates();
    test_errors();
    test_depth();
    test_buf();
    test_write_string();
    test_write_numbers();
    test_write_float_fast();
    test_write_value();
    test_string_round_trip();
    test_large();
    test_reference();
    return check_exit();
}
