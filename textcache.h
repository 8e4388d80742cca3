/* textcache.h -- text embeddings remembered by model and token ids (an LRU cache), so
 * repeated zero-shot prompts skip the forward. Thread-safe: every call may come from any
 * connection thread. */
#ifndef CLIP_TEXTCACHE_H
#define CLIP_TEXTCACHE_H

#include <stddef.h>
#include <stdint.h>

typedef struct clip_text_cache clip_text_cache;

/* A cache of at most `capacity` embeddings; capacity 0 is a cache that remembers nothing
 * (lookups always miss and are not counted). NULL when out of memory. */
clip_text_cache *clip_text_cache_new(size_t capacity);
void clip_text_cache_free(clip_text_cache *c);

/* Copies the remembered embedding (dim floats) of the token ids `ids` (ctx_len of them)
 * of model number `model` into out; 1 on a hit, 0 on a miss. c may be NULL (a miss). */
int clip_text_cache_get(clip_text_cache *c, int model, const int32_t *ids, int ctx_len,
                        float *out, int dim);

/* Remembers emb for ids, evicting the least recently used entry when full. When the text
 * is there already (another request computed it meanwhile), emb is overwritten with the
 * remembered row, so every answer for one text is the same bits. c may be NULL. */
void clip_text_cache_put(clip_text_cache *c, int model, const int32_t *ids, int ctx_len,
                         float *emb, int dim);

/* What GET / reports. */
typedef struct clip_text_cache_counts {
    size_t entries, capacity;
    uint64_t hits, misses;
} clip_text_cache_counts;

void clip_text_cache_stats(clip_text_cache *c, clip_text_cache_counts *out);

#endif /* CLIP_TEXTCACHE_H */
