/* json.h -- our JSON reader and writer, and the append buffer everything writes into.
 *
 * The reader (RFC 8259) parses a whole document into a tree that lives in one arena: one
 * clip_json_free releases it all. Strings are decoded (escapes, surrogate pairs) and
 * NUL-terminated, with their byte length kept, so embedded NULs survive. Input that is not
 * valid UTF-8, nested deeper than the limit, or with trailing garbage is refused with the
 * byte offset and a reason.
 *
 * The writer appends to a clip_buf (kilo's append buffer): strings escaped, floats written
 * so they read back to the same value.
 */
#ifndef CLIP_JSON_H
#define CLIP_JSON_H

#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>

/* ---------------------------------------------------------------------------------------
 * Append buffer
 * ------------------------------------------------------------------------------------- */

typedef struct clip_buf {
    char *data;     /* always NUL-terminated when len > 0 or after any append             */
    size_t len;
    size_t cap;
    int oom;        /* set once an allocation failed; further appends are ignored          */
} clip_buf;

void clip_buf_append(clip_buf *b, const void *data, size_t len);
void clip_buf_puts(clip_buf *b, const char *s);
void clip_buf_putc(clip_buf *b, char c);
void clip_buf_printf(clip_buf *b, const char *fmt, ...) __attribute__((format(printf, 2, 3)));
void clip_buf_reset(clip_buf *b);   /* len = 0, keeps the memory                        */
void clip_buf_free(clip_buf *b);

/* ---------------------------------------------------------------------------------------
 * Reader
 * ------------------------------------------------------------------------------------- */

typedef enum clip_json_type {
    CLIP_JSON_NULL = 0,
    CLIP_JSON_BOOL,
    CLIP_JSON_NUMBER,
    CLIP_JSON_STRING,
    CLIP_JSON_ARRAY,
    CLIP_JSON_OBJECT,
} clip_json_type;

typedef struct clip_json clip_json;

struct clip_json {
    clip_json_type type;
    int boolean;              /* CLIP_JSON_BOOL                                          */
    double number;            /* CLIP_JSON_NUMBER                                        */
    int is_integer;           /* number was written without fraction or exponent        */
    const char *str;          /* CLIP_JSON_STRING: decoded, NUL-terminated              */
    size_t str_len;           /*   its length in bytes                                   */
    clip_json *items;         /* CLIP_JSON_ARRAY: n values; CLIP_JSON_OBJECT: n values  */
    const char **keys;        /* CLIP_JSON_OBJECT: n keys, decoded, NUL-terminated      */
    size_t *key_lens;         /*   their byte lengths                                    */
    size_t n;
};

typedef struct clip_json_doc clip_json_doc;

#define CLIP_JSON_DEFAULT_MAX_DEPTH 64

/* Parses `len` bytes. max_depth <= 0 means CLIP_JSON_DEFAULT_MAX_DEPTH. On failure returns
 * NULL and writes a one-line reason (with the byte offset) into err. */
clip_json_doc *clip_json_parse(const char *text, size_t len, int max_depth, char *err,
                               size_t err_size);
const clip_json *clip_json_root(const clip_json_doc *doc);
void clip_json_free(clip_json_doc *doc);

/* Object member by key (the last one when a key repeats, as Python's json does), or NULL. */
const clip_json *clip_json_get(const clip_json *object, const char *key);

/* ---------------------------------------------------------------------------------------
 * Writer
 * ------------------------------------------------------------------------------------- */

/* A JSON string literal with quotes; control characters and `"` `\` escaped. The input
 * must be valid UTF-8 (it is copied through). */
void clip_json_write_string(clip_buf *b, const char *s, size_t len);
/* A float that reads back to the same float ("%.9g"); NaN and infinities as null. */
void clip_json_write_float(clip_buf *b, float v);
/* A double that reads back to the same double ("%.17g"); NaN and infinities as null. */
void clip_json_write_double(clip_buf *b, double v);
/* Re-serializes a parsed value compactly (used to echo `input` in 422 errors). */
void clip_json_write_value(clip_buf *b, const clip_json *v);

#endif /* CLIP_JSON_H */
