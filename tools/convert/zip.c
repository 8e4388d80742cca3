/* zip.c -- zip archives as PyTorch writes them (torch.save checkpoints, and TorchScript
 * archives use the same container): the end record (zip64 too), the central directory,
 * local headers, and the bytes of an entry, stored (CRC checked) or deflated (inflated by
 * stb_image's zlib decoder, which vocab.c's gunzip also borrows, with the CRC).
 *
 * The archive is cv->map; its entries go to cv->ze. Every offset and size is checked
 * against the file before it is used. It must not know what the entries hold: torch.c
 * reads them as a PyTorch archive. Start from load_zip_directory, then entry_bytes.
 */
#include "convert.h"

#include <stb/stb_image.h>

#include <limits.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

/* CRC-32 as zip and gzip use it (reflected polynomial 0xedb88320). */
uint32_t crc32_update(uint32_t crc, const uint8_t *p, size_t n)
{
    static uint32_t table[256];   /* filled once; identical on every fill */
    if (!table[1]) {
        for (uint32_t i = 0; i < 256; i++) {
            uint32_t c = i;
            for (int k = 0; k < 8; k++) c = c & 1 ? 0xedb88320u ^ (c >> 1) : c >> 1;
            table[i] = c;
        }
    }
    crc = ~crc;
    for (size_t i = 0; i < n; i++) crc = table[(crc ^ p[i]) & 0xff] ^ (crc >> 8);
    return ~crc;
}

/* The zip64 extended-information extra field holds, in this order, only those of the
 * central record's size, compressed size and offset that were saturated to 0xFFFFFFFF. */
static int zip64_extra(const uint8_t *x, size_t n, uint64_t *size, uint64_t *csize,
                       uint64_t *off)
{
    while (n >= 4) {
        uint16_t id = rd16(x), len = rd16(x + 2);
        if ((size_t)len + 4 > n) return -1;
        if (id == 0x0001) {
            const uint8_t *p = x + 4, *end = p + len;
            uint64_t *fields[3] = {size, csize, off};
            for (int i = 0; i < 3; i++) {
                if (*fields[i] != 0xffffffffu) continue;
                if (end - p < 8) return -1;
                *fields[i] = rd64(p);
                p += 8;
            }
            return 0;
        }
        x += 4 + len;
        n -= 4 + (size_t)len;
    }
    return 0;
}

/* Reads the archive's directory into cv->ze, each entry's data located and bounds-checked
 * (its bytes are read only by entry_bytes). The start of every zip reader. */
int load_zip_directory(conv *cv)
{
    const char *path = cv->weights_path;
    const uint8_t *d = cv->map.data;
    size_t size = cv->map.size;
    if (size < 22) return fail(cv, "%s: not a zip archive (too short)", path);
    /* The end record is the last 22 bytes plus a comment of at most 65535 bytes. */
    size_t eocd = SIZE_MAX;
    size_t lo = size > 22 + 65535 ? size - 22 - 65535 : 0;
    for (size_t p = size - 22 + 1; p-- > lo;)
        if (rd32(d + p) == 0x06054b50u) { eocd = p; break; }
    if (eocd == SIZE_MAX) {
        if (d[0] == 0x80 && size > 1 && d[1] == 0x02)
            return fail(cv, "%s: legacy (pre-1.6) PyTorch checkpoint, not a zip: not supported; "
                        "re-save it with a current torch.save or use model.safetensors", path);
        return fail(cv, "%s: not a zip archive (no end of central directory; truncated?)", path);
    }
    uint64_t n = rd16(d + eocd + 10), cd_size = rd32(d + eocd + 12), cd_off = rd32(d + eocd + 16);
    if (n == 0xffff || cd_size == 0xffffffffu || cd_off == 0xffffffffu) {
        if (eocd < 20 || rd32(d + eocd - 20) != 0x07064b50u)
            return fail(cv, "%s: zip64 end locator missing", path);
        uint64_t z = rd64(d + eocd - 20 + 8);
        if (size < 56 || z > size - 56 || rd32(d + z) != 0x06064b50u)
            return fail(cv, "%s: bad zip64 end record", path);
        n = rd64(d + z + 32);
        cd_size = rd64(d + z + 40);
        cd_off = rd64(d + z + 48);
    }
    if (cd_off > size || cd_size > size - cd_off || n > cd_size / 46)
        return fail(cv, "%s: central directory outside the file (truncated or corrupt zip)", path);
    cv->ze = calloc(n ? n : 1, sizeof *cv->ze);
    if (!cv->ze) return fail(cv, "out of memory");
    const uint8_t *p = d + cd_off, *end = p + cd_size;
    for (uint64_t i = 0; i < n; i++) {
        if (end - p < 46 || rd32(p) != 0x02014b50u)
            return fail(cv, "%s: corrupt zip central directory (entry %llu)", path,
                        (unsigned long long)i);
        zentry *z = &cv->ze[cv->nze];
        uint16_t flags = rd16(p + 8), nlen = rd16(p + 28), xlen = rd16(p + 30), clen = rd16(p + 32);
        z->method = rd16(p + 10);
        z->crc = rd32(p + 16);
        z->comp_size = rd32(p + 20);
        z->size = rd32(p + 24);
        uint64_t local = rd32(p + 42);
        if ((size_t)(end - p) < 46u + nlen + xlen + clen)
            return fail(cv, "%s: corrupt zip central directory (entry %llu)", path,
                        (unsigned long long)i);
        if (zip64_extra(p + 46 + nlen, xlen, &z->size, &z->comp_size, &local) != 0)
            return fail(cv, "%s: corrupt zip64 extra field", path);
        z->name = strndup((const char *)p + 46, nlen);
        if (!z->name) return fail(cv, "out of memory");
        cv->nze++;
        if (flags & 1) return fail(cv, "%s: entry %s is encrypted", path, z->name);
        if (size < 30 || local > size - 30 || rd32(d + local) != 0x04034b50u)
            return fail(cv, "%s: entry %s: bad local header offset (corrupt zip)", path, z->name);
        uint64_t data = local + 30 + rd16(d + local + 26) + rd16(d + local + 28);
        if (data > size || z->comp_size > size - data)
            return fail(cv, "%s: entry %s: data outside the file (truncated zip)", path, z->name);
        if (z->method == 0 && z->comp_size != z->size)
            return fail(cv, "%s: entry %s: stored sizes disagree", path, z->name);
        z->data_off = data;
        p += 46 + nlen + xlen + clen;
    }
    return 0;
}

const zentry *find_entry(const conv *cv, const char *name)
{
    for (size_t i = 0; i < cv->nze; i++)
        if (strcmp(cv->ze[i].name, name) == 0) return &cv->ze[i];
    return NULL;
}

/* Raw deflate data through stb_image's inflater, into exactly `size` bytes. This stb
 * (Debian's 2022 snapshot) refills its bit buffer ahead of the symbols it decodes and
 * refuses a stream that ends exactly at the end of its input, so the input is handed over
 * with a few zero bytes of slack after it. Returns 0 when exactly `size` bytes came out. */
int inflate_raw(const uint8_t *in, size_t n, uint8_t *out, size_t size)
{
    enum { SLACK = 8 };
    if (n > INT_MAX - SLACK || size > INT_MAX) return -1;
    char *padded = calloc(n + SLACK, 1);
    if (!padded) return -1;
    memcpy(padded, in, n);
    int got = stbi_zlib_decode_noheader_buffer((char *)out, (int)size, padded, (int)(n + SLACK));
    free(padded);
    return got >= 0 && (size_t)got == size ? 0 : -1;
}

/* The bytes of an entry: stored ones in place (CRC checked once), deflated ones inflated
 * with stb_image's zlib decoder into a buffer kept until release_entries(). */
const uint8_t *entry_bytes(conv *cv, zentry *z)
{
    const uint8_t *src = cv->map.data + z->data_off;
    if (z->method == 0) {
        if (!z->checked) {
            if (crc32_update(0, src, (size_t)z->size) != z->crc) {
                fail(cv, "%s: entry %s: CRC mismatch (corrupt file)", cv->weights_path, z->name);
                return NULL;
            }
            z->checked = 1;
        }
        return src;
    }
    if (z->method != 8) {
        fail(cv, "%s: entry %s: unsupported zip compression method %d", cv->weights_path,
             z->name, z->method);
        return NULL;
    }
    if (z->inflated) return z->inflated;
    if (z->size > INT_MAX || z->comp_size > INT_MAX) {
        fail(cv, "%s: entry %s: deflated entry over 2 GB is not supported", cv->weights_path,
             z->name);
        return NULL;
    }
    /* Deflate cannot expand by more than 1032:1, so a header claiming more is corrupt;
     * checking it first keeps a forged size from costing a huge allocation. */
    if (z->size > z->comp_size * 1032 + 64) {
        fail(cv, "%s: entry %s: claims %llu bytes from %llu compressed (corrupt file)",
             cv->weights_path, z->name, (unsigned long long)z->size,
             (unsigned long long)z->comp_size);
        return NULL;
    }
    z->inflated = malloc(z->size ? (size_t)z->size : 1);
    if (!z->inflated) { fail(cv, "out of memory inflating %s", z->name); return NULL; }
    if (inflate_raw(src, (size_t)z->comp_size, z->inflated, (size_t)z->size) != 0 ||
        crc32_update(0, z->inflated, (size_t)z->size) != z->crc) {
        free(z->inflated);
        z->inflated = NULL;
        fail(cv, "%s: entry %s: corrupt deflate data", cv->weights_path, z->name);
        return NULL;
    }
    return z->inflated;
}

/* Frees the inflated copies of deflated entries (read again if needed). */
void release_entries(conv *cv)
{
    for (size_t i = 0; i < cv->nze; i++) {
        free(cv->ze[i].inflated);
        cv->ze[i].inflated = NULL;
    }
}
