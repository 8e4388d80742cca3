/* textcache.c -- embeddings of texts seen before, keyed by model and token ids.
 *
 * Zero-shot classification sends the same prompts again and again. The key is the model
 * and the token ids, not the text: every spelling the tokenizer cleans to the same ids
 * (case, spacing, HTML entities) shares one entry, and tokenizing costs microseconds. An
 * entry holds the row a forward wrote, so a hit answers the very bits the miss did. One
 * mutex guards it all: a lookup or an insert is a hash and a short memcmp, far below the
 * forward it saves, and nothing slow ever runs under it.
 *
 * Lives here: a hash table of entries chained per bucket, threaded on one LRU list. Must
 * not touch: the model, the tokenizer or the batcher (the API looks up, computes the
 * misses and remembers them), nor JSON (GET / writes the counts it is given).
 */
#include "textcache.h"

#include <pthread.h>
#include <stdlib.h>
#include <string.h>


typedef struct cache_entry {
    struct cache_entry *chain;            /* next in the same hash bucket                */
    struct cache_entry *newer, *older;    /* the LRU list                                */
    uint64_t hash;
    int model;
    int n_ids;                 /* up to the last nonzero id (EOT): the rest are padding   */
    float *emb;                /* the model's embed_dim floats, in the same allocation    */
    int32_t ids[];
} cache_entry;

struct clip_text_cache {
    pthread_mutex_t mu;
    size_t capacity, count;
    size_t mask;               /* buckets - 1; buckets a power of two >= capacity         */
    cache_entry **buckets;
    cache_entry *newest, *oldest;
    uint64_t hits, misses;
};

/* Trailing zeros are padding after EOT (itself nonzero), so dropping them keeps the key
 * unique while short prompts hash and compare a handful of ids instead of 77. */
static int key_len(const int32_t *ids, int ctx_len)
{
    int n = ctx_len;
    while (n > 0 && ids[n - 1] == 0) n--;
    return n;
}

static uint64_t key_hash(int model, const int32_t *ids, int n)
{
    uint64_t h = 1469598103934665603ull ^ (uint64_t)(unsigned)model;
    const unsigned char *p = (const unsigned char *)ids;
    for (size_t i = 0; i < (size_t)n * sizeof *ids; i++) h = (h ^ p[i]) * 1099511628211ull;
    return h;
}

clip_text_cache *clip_text_cache_new(size_t capacity)
{
    clip_text_cache *c = calloc(1, sizeof *c);
    if (!c) return NULL;
    pthread_mutex_init(&c->mu, NULL);
    c->capacity = capacity;
    if (capacity == 0) return c;
    size_t buckets = 16;
    while (buckets < capacity) buckets *= 2;
    c->buckets = calloc(buckets, sizeof *c->buckets);
    c->mask = buckets - 1;
    if (!c->buckets) {
        clip_text_cache_free(c);
        return NULL;
    }
    return c;
}

void clip_text_cache_free(clip_text_cache *c)
{
    if (!c) return;
    for (cache_entry *e = c->newest, *next; e; e = next) {
        next = e->older;
        free(e);
    }
    free(c->buckets);
    pthread_mutex_destroy(&c->mu);
    free(c);
}

static cache_entry *cache_find(clip_text_cache *c, uint64_t h, int model, const int32_t *ids, int n)
{
    for (cache_entry *e = c->buckets[h & c->mask]; e; e = e->chain)
        if (e->hash == h && e->model == model && e->n_ids == n &&
            memcmp(e->ids, ids, (size_t)n * sizeof *ids) == 0)
            return e;
    return NULL;
}

static void lru_unlink(clip_text_cache *c, cache_entry *e)
{
    if (e->newer) e->newer->older = e->older;
    else c->newest = e->older;
    if (e->older) e->older->newer = e->newer;
    else c->oldest = e->newer;
}

static void lru_push(clip_text_cache *c, cache_entry *e)
{
    e->newer = NULL;
    e->older = c->newest;
    if (c->newest) c->newest->newer = e;
    c->newest = e;
    if (!c->oldest) c->oldest = e;
}

int clip_text_cache_get(clip_text_cache *c, int model, const int32_t *ids, int ctx_len,
                        float *out, int dim)
{
    if (!c || c->capacity == 0) return 0;
    int n = key_len(ids, ctx_len);
    uint64_t h = key_hash(model, ids, n);
    pthread_mutex_lock(&c->mu);
    cache_entry *e = cache_find(c, h, model, ids, n);
    if (e) {
        memcpy(out, e->emb, (size_t)dim * sizeof *out);
        lru_unlink(c, e);
        lru_push(c, e);
        c->hits++;
    } else {
        c->misses++;
    }
    pthread_mutex_unlock(&c->mu);
    return e != NULL;
}

/* Remembers emb for ids, evicting the least recently used entry when full. Without
 * memory it simply does not remember. When the text is there already (another request
 * computed it meanwhile) emb is replaced by the stored row: a forward's last bits depend
 * on the batch it ran in, and every answer for a text should be the same bits. */
void clip_text_cache_put(clip_text_cache *c, int model, const int32_t *ids, int ctx_len,
                         float *emb, int dim)
{
    if (!c || c->capacity == 0) return;
    int n = key_len(ids, ctx_len);
    uint64_t h = key_hash(model, ids, n);
    cache_entry *fresh = malloc(sizeof *fresh + (size_t)n * sizeof(int32_t) +
                                (size_t)dim * sizeof(float));
    if (!fresh) return;
    fresh->hash = h;
    fresh->model = model;
    fresh->n_ids = n;
    memcpy(fresh->ids, ids, (size_t)n * sizeof *ids);
    /* The floats follow the ids; an int32 array ends 4-byte aligned, enough for floats. */
    fresh->emb = (float *)(void *)(fresh->ids + n);
    memcpy(fresh->emb, emb, (size_t)dim * sizeof *emb);
    cache_entry *evicted = NULL;
    pthread_mutex_lock(&c->mu);
    cache_entry *old = cache_find(c, h, model, ids, n);
    if (old) {
        memcpy(emb, old->emb, (size_t)dim * sizeof *emb);
        lru_unlink(c, old);
        lru_push(c, old);
    } else {
        if (c->count == c->capacity) {
            evicted = c->oldest;
            lru_unlink(c, evicted);
            cache_entry **link = &c->buckets[evicted->hash & c->mask];
            while (*link != evicted) link = &(*link)->chain;
            *link = evicted->chain;
            c->count--;
        }
        cache_entry **bucket = &c->buckets[h & c->mask];
        fresh->chain = *bucket;
        *bucket = fresh;
        lru_push(c, fresh);
        c->count++;
        fresh = NULL;
    }
    pthread_mutex_unlock(&c->mu);
    free(fresh);
    free(evicted);
}

void clip_text_cache_stats(clip_text_cache *c, clip_text_cache_counts *out)
{
    pthread_mutex_lock(&c->mu);
    out->entries = c->count;
    out->capacity = c->capacity;
    out->hits = c->hits;
    out->misses = c->misses;
    pthread_mutex_unlock(&c->mu);
}
