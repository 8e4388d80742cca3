/* fuzz_json.c -- libFuzzer harness for the JSON reader and writer (json.c).
 *
 *   clang-14 -g -O1 -fsanitize=fuzzer,address,undefined -I. tests/fuzz/fuzz_json.c json.c \
 *       -o /tmp/fuzz_json
 *   nice /tmp/fuzz_json -max_total_time=180 tests/fuzz/corpus/json
 *
 * Any input: parse it. When it parses, write it back with clip_json_write_value, which
 * must parse again to the same tree and write to the same bytes (the writer's output is a
 * fixed point). When it does not, the bytes as a string must still come out of
 * clip_json_write_string as valid JSON, and equal to the input when that is valid UTF-8. */
#include "json.h"

#include <stdlib.h>
#include <string.h>

/* Deep equality; numbers bitwise, so -0 and 0 differ. */
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
        return a->str_len == b->str_len && memcmp(a->str, b->str, a->str_len) == 0
            && a->str[a->str_len] == '\0';
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

/* Well-formed UTF-8 by the byte ranges of Unicode's Table 3-7: an independent statement
 * of what json.c decodes and checks. */
static int valid_utf8(const unsigned char *s, size_t n)
{
    for (size_t i = 0; i < n;) {
        unsigned c = s[i];
        size_t len;
        unsigned lo = 0x80, hi = 0xBF;
        if (c < 0x80) len = 1;
        else if (c >= 0xC2 && c <= 0xDF) len = 2;
        else if (c == 0xE0) len = 3, lo = 0xA0;
        else if (c == 0xED) len = 3, hi = 0x9F;
        else if (c >= 0xE1 && c <= 0xEF) len = 3;
        else if (c == 0xF0) len = 4, lo = 0x90;
        else if (c == 0xF4) len = 4, hi = 0x8F;
        else if (c >= 0xF1 && c <= 0xF3) len = 4;
        else return 0;
        if (n - i < len) return 0;
        for (size_t k = 1; k < len; k++) {
            if (s[i + k] < (k == 1 ? lo : 0x80) || s[i + k] > (k == 1 ? hi : 0xBF)) return 0;
        }
        i += len;
    }
    return 1;
}

int LLVMFuzzerTestOneInput(const unsigned char *data, size_t size)
{
    char err[256];
    clip_json_doc *doc = clip_json_parse((const char *)data, size, 0, err, sizeof err);
    clip_buf out = {0}, again_out = {0};
    if (doc) {
        clip_json_write_value(&out, clip_json_root(doc));
        if (out.oom) abort();
        clip_json_doc *again = clip_json_parse(out.data, out.len, 0, err, sizeof err);
        if (!again) abort();   /* the writer produced something the reader refuses */
        if (!same_value(clip_json_root(doc), clip_json_root(again))) abort();
        clip_json_write_value(&again_out, clip_json_root(again));
        if (again_out.len != out.len || memcmp(again_out.data, out.data, out.len) != 0) abort();
        clip_json_free(again);
        clip_json_free(doc);
    } else {
        if (strncmp(err, "invalid JSON at byte ", 21) != 0 || strchr(err, '\n')) abort();
        clip_json_write_string(&out, (const char *)data, size);
        clip_json_doc *str = clip_json_parse(out.data, out.len, 0, err, sizeof err);
        if (!str) abort();
        const clip_json *s = clip_json_root(str);
        if (s->type != CLIP_JSON_STRING) abort();
        int valid = valid_utf8(data, size);
        if (valid && (s->str_len != size || memcmp(s->str, data, size) != 0)) abort();
        if (!valid && s->str_len == size && memcmp(s->str, data, size) == 0) abort();
        clip_json_free(str);
    }
    clip_buf_free(&out);
    clip_buf_free(&again_out);
    return 0;
}
