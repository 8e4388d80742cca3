/* util.c -- the converter's small tools: the error line (fail), paths, whole files and
 * read-only mappings, a string -> index hash map, and conv_free, which ends a conversion.
 *
 * Nothing here knows a file format or a tensor name; the rooms that do use these. Start
 * from fail, the one way every room reports a problem.
 */
#include "convert.h"

#include <errno.h>
#include <fcntl.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <unistd.h>

int fail(conv *cv, const char *fmt, ...)
{
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(cv->err, sizeof cv->err, fmt, ap);
    va_end(ap);
    return -1;
}

int join(conv *cv, char *out, size_t cap, const char *dir, const char *name)
{
    int n = snprintf(out, cap, "%s/%s", dir, name);
    if (n < 0 || (size_t)n >= cap) return fail(cv, "path too long: %s/%s", dir, name);
    return 0;
}

int file_exists(const char *path)
{
    struct stat st;
    return stat(path, &st) == 0 && S_ISREG(st.st_mode);
}

/* Reads a whole (small) file into a NUL-terminated heap buffer. */
int read_file(conv *cv, const char *path, size_t limit, char **out, size_t *len)
{
    FILE *f = fopen(path, "rb");
    if (!f) return fail(cv, "cannot open %s: %s", path, strerror(errno));
    struct stat st;
    if (fstat(fileno(f), &st) != 0 || !S_ISREG(st.st_mode)) {
        fclose(f);
        return fail(cv, "%s: not a regular file", path);
    }
    if ((uint64_t)st.st_size > limit) {
        fclose(f);
        return fail(cv, "%s: too large (%lld bytes, limit %zu)", path, (long long)st.st_size,
                    (size_t)limit);
    }
    size_t n = (size_t)st.st_size;
    char *buf = malloc(n + 1);
    if (!buf) { fclose(f); return fail(cv, "out of memory reading %s", path); }
    if (fread(buf, 1, n, f) != n) {
        free(buf);
        fclose(f);
        return fail(cv, "%s: read error", path);
    }
    fclose(f);
    buf[n] = 0;
    *out = buf;
    *len = n;
    return 0;
}

int map_file(conv *cv, const char *path, mapped *m)
{
    int fd = open(path, O_RDONLY);
    if (fd < 0) return fail(cv, "cannot open %s: %s", path, strerror(errno));
    struct stat st;
    if (fstat(fd, &st) != 0 || !S_ISREG(st.st_mode) || st.st_size <= 0) {
        close(fd);
        return fail(cv, "%s: empty or not a regular file", path);
    }
    void *p = mmap(NULL, (size_t)st.st_size, PROT_READ, MAP_PRIVATE, fd, 0);
    close(fd);
    if (p == MAP_FAILED) return fail(cv, "cannot map %s: %s", path, strerror(errno));
    m->data = p;
    m->size = (size_t)st.st_size;
    return 0;
}

/* A JSON file whose root must be an object. */
int load_json_file(conv *cv, const char *path, clip_json_doc **doc)
{
    char *text;
    size_t len;
    if (read_file(cv, path, MAX_JSON_FILE, &text, &len) != 0) return -1;
    char jerr[256];
    *doc = clip_json_parse(text, len, 0, jerr, sizeof jerr);
    free(text);
    if (!*doc) return fail(cv, "%s: %s", path, jerr);
    if (clip_json_root(*doc)->type != CLIP_JSON_OBJECT) {
        clip_json_free(*doc);
        *doc = NULL;
        return fail(cv, "%s: not a JSON object", path);
    }
    return 0;
}

int grow(void **arr, size_t *cap, size_t need, size_t elem)
{
    if (need <= *cap) return 0;
    size_t c = *cap ? *cap : 16;
    while (c < need) c *= 2;
    void *q = realloc(*arr, c * elem);
    if (!q) return -1;
    *arr = q;
    *cap = c;
    return 0;
}

/* ---------------------------------------------------------------------------------------
 * A string -> index hash map (open addressing, FNV-1a); the keys live with the caller
 * ------------------------------------------------------------------------------------- */

static uint64_t hash_bytes(const char *s, size_t n)
{
    uint64_t h = 1469598103934665603ull;   /* FNV-1a */
    for (size_t i = 0; i < n; i++) h = (h ^ (uint8_t)s[i]) * 1099511628211ull;
    return h;
}

int strmap_init(strmap *m, size_t n)
{
    m->cap = 16;
    while (m->cap < n * 2) m->cap <<= 1;
    m->slots = calloc(m->cap, sizeof *m->slots);
    return m->slots ? 0 : -1;
}

void strmap_free(strmap *m) { free(m->slots); m->slots = NULL; }

long strmap_find(const strmap *m, const char *s, size_t n, strmap_key_fn key,
                 const void *ctx, long insert_index)
{
    size_t mask = m->cap - 1, at = (size_t)hash_bytes(s, n) & mask;
    for (;;) {
        uint32_t v = m->slots[at];
        if (!v) {
            if (insert_index >= 0) m->slots[at] = (uint32_t)insert_index + 1;
            return -1;
        }
        size_t klen;
        const char *k = key(ctx, v - 1, &klen);
        if (klen == n && memcmp(k, s, n) == 0) return (long)(v - 1);
        at = (at + 1) & mask;
    }
}

void conv_free(conv *cv)
{
    for (size_t i = 0; i < cv->nt; i++) free(cv->t[i].name);
    free(cv->t);
    strmap_free(&cv->tmap);
    for (size_t i = 0; i < cv->nze; i++) {
        free(cv->ze[i].name);
        free(cv->ze[i].inflated);
    }
    free(cv->ze);
    tok_free(&cv->tok);
    free(cv->ot);
    if (cv->map.data) munmap((void *)cv->map.data, cv->map.size);
}
