/* fuzz_tokenizer.c -- libFuzzer harness for the tokenizer (tokenizer.c).
 *
 *   clang-14 -g -O1 -fsanitize=fuzzer,address,undefined -I. tests/fuzz/fuzz_tokenizer.c \
 *       tokenizer.c error.c -o /tmp/fuzz_tokenizer
 *   nice /tmp/fuzz_tokenizer -max_total_time=180 tests/fuzz/corpus/tokenizer
 *
 * The vocabulary is made up here (the 512 byte tokens, every pair of ASCII letters and some
 * triples, the two specials), so the harness needs no files. Any input: encode it with a
 * 77-id and a 5-id context. Invalid UTF-8 (checked here independently) must fail with
 * CLIP_ERR_TEXT and nothing else may fail; the ids must be SOT, ids in range, EOT, zeros;
 * encoding twice gives the same ids; the 5-id result is the 77-id one cut short. */
#include "tokenizer.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

/* ---------------------------------------------------------------------------------------
 * A made-up vocabulary in the section layout
 * ------------------------------------------------------------------------------------- */

static uint8_t section[1 << 20];
static size_t section_len;
static uint32_t n_tokens, n_merges_written, sot_id, eot_id;
static clip_tokenizer *tok77, *tok5;

static void put32(uint8_t *p, uint32_t v)
{
    p[0] = (uint8_t)v; p[1] = (uint8_t)(v >> 8); p[2] = (uint8_t)(v >> 16); p[3] = (uint8_t)(v >> 24);
}

static uint32_t add_token(const char *s)
{
    size_t n = strlen(s);
    section[section_len] = (uint8_t)n;
    section[section_len + 1] = (uint8_t)(n >> 8);
    memcpy(section + section_len + 2, s, n);
    section_len += 2 + n;
    return n_tokens++;
}

static size_t stand_in(unsigned b, char *out)
{
    static unsigned map[256];
    if (!map['!']) {
        unsigned extra = 0;
        for (unsigned x = 0; x < 256; x++)
            map[x] = (x >= '!' && x <= '~') || (x >= 0xA1 && x <= 0xAC) || x >= 0xAE ? x : 256 + extra++;
    }
    unsigned c = map[b];
    if (c < 0x80) { out[0] = (char)c; return 1; }
    out[0] = (char)(0xC0 | (c >> 6));
    out[1] = (char)(0x80 | (c & 0x3F));
    return 2;
}

static void build_vocabulary(void)
{
    static uint8_t merges[1 << 16];
    size_t merges_len = 0;
    section_len = 16;
    char s[32];
    for (int end = 0; end < 2; end++)
        for (unsigned b = 0; b < 256; b++) {
            size_t n = stand_in(b, s);
            strcpy(s + n, end ? "</w>" : "");
            add_token(s);
        }
    /* Token ids: byte b is b, "b</w>" is 256 + b. "xy" = "x" + "y", "xy</w>" = "x" + "y</w>", and "xyz</w>" = "xy" + "z</w>" for
     * x < y < z, so that merges compete and chain. */
    uint32_t pair_id[26][26];
    for (int x = 0; x < 26; x++)
        for (int y = 0; y < 26; y++) {
            uint32_t l = (uint32_t)('a' + x), r = (uint32_t)('a' + y);
            snprintf(s, sizeof s, "%c%c", 'a' + x, 'a' + y);
            pair_id[x][y] = add_token(s);
            put32(merges + merges_len, l);
            put32(merges + merges_len + 4, r);
            put32(merges + merges_len + 8, pair_id[x][y]);
            merges_len += 12;
            snprintf(s, sizeof s, "%c%c</w>", 'a' + x, 'a' + y);
            uint32_t id = add_token(s);
            put32(merges + merges_len, l);
            put32(merges + merges_len + 4, r + 256);
            put32(merges + merges_len + 8, id);
            merges_len += 12;
        }
    for (int x = 0; x < 26; x += 3)
        for (int y = x + 1; y < 26; y += 2)
            for (int z = y + 1; z < 26; z += 5) {
                snprintf(s, sizeof s, "%c%c%c</w>", 'a' + x, 'a' + y, 'a' + z);
                uint32_t id = add_token(s);
                put32(merges + merges_len, pair_id[x][y]);
                put32(merges + merges_len + 4, (uint32_t)('a' + z) + 256);
                put32(merges + merges_len + 8, id);
                merges_len += 12;
            }
    sot_id = add_token("<|startoftext|>");
    eot_id = add_token("<|endoftext|>");
    n_merges_written = (uint32_t)(merges_len / 12);
    put32(section, n_tokens);
    put32(section + 4, n_merges_written);
    put32(section + 8, sot_id);
    put32(section + 12, eot_id);
    memcpy(section + section_len, merges, merges_len);
    section_len += merges_len;
}

int LLVMFuzzerInitialize(int *argc, char ***argv)
{
    (void)argc;
    (void)argv;
    build_vocabulary();
    clip_error err = {0};
    if (clip_tokenizer_new(section, section_len, n_tokens, 77, &tok77, &err) != CLIP_OK ||
        clip_tokenizer_new(section, section_len, n_tokens, 5, &tok5, &err) != CLIP_OK) {
        fprintf(stderr, "fuzz_tokenizer: vocabulary refused: %s\n", err.msg);
        abort();
    }
    return 0;
}

/* ---------------------------------------------------------------------------------------
 * The checks
 * ------------------------------------------------------------------------------------- */

/* UTF-8 as Unicode's table 3-7 lists the well-formed byte sequences. */
static int valid_utf8(const uint8_t *s, size_t n)
{
    static const struct { uint8_t lo0, hi0, lo1, hi1; int len; } rows[] = {
        {0x00, 0x7F, 0, 0, 1}, {0xC2, 0xDF, 0x80, 0xBF, 2}, {0xE0, 0xE0, 0xA0, 0xBF, 3},
        {0xE1, 0xEC, 0x80, 0xBF, 3}, {0xED, 0xED, 0x80, 0x9F, 3}, {0xEE, 0xEF, 0x80, 0xBF, 3},
        {0xF0, 0xF0, 0x90, 0xBF, 4}, {0xF1, 0xF3, 0x80, 0xBF, 4}, {0xF4, 0xF4, 0x80, 0x8F, 4},
    };
    for (size_t i = 0; i < n;) {
        size_t r = 0, nrows = sizeof rows / sizeof rows[0];
        while (r < nrows && !(s[i] >= rows[r].lo0 && s[i] <= rows[r].hi0)) r++;
        if (r == nrows || n - i < (size_t)rows[r].len) return 0;
        if (rows[r].len > 1 && !(s[i + 1] >= rows[r].lo1 && s[i + 1] <= rows[r].hi1)) return 0;
        for (int k = 2; k < rows[r].len; k++)
            if ((s[i + k] & 0xC0) != 0x80) return 0;
        i += (size_t)rows[r].len;
    }
    return 1;
}

/* SOT, ids in range, and the last EOT followed only by zeros (id 0 is a real token, and a
 * text may hold "<|endoftext|>" itself). Returns the index of that EOT. */
static int well_formed(const int32_t *ids, int ctx)
{
    if (ids[0] != (int32_t)sot_id) abort();
    int last = ctx - 1;
    while (last > 0 && ids[last] != (int32_t)eot_id) {
        if (ids[last] != 0) abort();
        last--;
    }
    if (last == 0) abort();
    for (int k = 1; k < last; k++)
        if (ids[k] < 0 || (uint32_t)ids[k] >= n_tokens) abort();
    return last;
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    /* An exact-size copy, so a read past `size` shows under ASan. */
    char *text = malloc(size ? size : 1);
    if (!text) return 0;
    memcpy(text, data, size);
    int32_t a[77], b[77], c[5];
    clip_error err = {0};
    clip_status st = clip_tokenizer_encode(tok77, text, size, a, &err);
    if (!valid_utf8(data, size)) {
        if (st != CLIP_ERR_TEXT) abort();
        free(text);
        return 0;
    }
    if (st != CLIP_OK) abort();
    int end = well_formed(a, 77);
    if (clip_tokenizer_encode(tok77, text, size, b, &err) != CLIP_OK || memcmp(a, b, sizeof a)) abort();
    if (clip_tokenizer_encode(tok5, text, size, c, &err) != CLIP_OK) abort();
    well_formed(c, 5);
    /* Up to three tokens, the short context holds the long one's first ids. */
    for (int k = 1; k < 4 && k < end; k++)
        if (c[k] != a[k]) abort();
    if (c[end < 4 ? end : 4] != (int32_t)eot_id) abort();
    free(text);
    return 0;
}
