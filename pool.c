/* pool.c -- the thread pool each context owns (pool.h).
 *
 * The caller and n-1 workers take tasks from a shared counter. Dispatches come a few
 * microseconds apart inside a forward, so workers spin briefly before sleeping on a
 * condition variable; the caller waits for every worker to acknowledge each dispatch, so
 * no worker can still be reading the previous job when the next one is posted.
 *
 * This file knows nothing of models or tensors: it runs numbered tasks. */

#include "pool.h"
#include "error.h"

#include <pthread.h>
#include <sched.h>
#include <stdatomic.h>
#include <stdbool.h>
#include <stdlib.h>
#include <string.h>

/* About 0.3 ms of pause instructions: longer than the gaps inside a forward, short
 * enough that an idle server's workers go to sleep at once. */
#define SPIN_ITERS 20000

typedef struct worker {
    struct clip_pool *pool;
    int index;
} worker;

struct clip_pool {
    pthread_t *threads;
    worker *workers;
    int n_workers;
    pthread_mutex_t mu;
    pthread_cond_t cv;
    int sleepers;
    bool stop;
    atomic_uint gen;      /* bumped once per dispatch                                  */
    atomic_int next;      /* the next task to take                                     */
    atomic_int acks;      /* workers done with the current dispatch                    */
    clip_task_fn fn;
    void *arg;
    int n_tasks;
};

static inline void cpu_relax(void)
{
#if defined(__x86_64__) || defined(__i386__)
    __builtin_ia32_pause();
#endif
}

static void run_tasks(clip_pool *p, int thread)
{
    for (;;) {
        int t = atomic_fetch_add_explicit(&p->next, 1, memory_order_relaxed);
        if (t >= p->n_tasks) return;
        p->fn(p->arg, t, thread);
    }
}

static void *worker_main(void *arg)
{
    worker *w = arg;
    clip_pool *p = w->pool;
    unsigned seen = 0;
    for (;;) {
        unsigned g = atomic_load_explicit(&p->gen, memory_order_acquire);
        for (int i = 0; g == seen && i < SPIN_ITERS; i++) {
            cpu_relax();
            g = atomic_load_explicit(&p->gen, memory_order_acquire);
        }
        if (g == seen) {
            pthread_mutex_lock(&p->mu);
            p->sleepers++;
            while ((g = atomic_load_explicit(&p->gen, memory_order_acquire)) == seen)
                pthread_cond_wait(&p->cv, &p->mu);
            p->sleepers--;
            pthread_mutex_unlock(&p->mu);
        }
        seen = g;
        if (p->stop) return NULL;
        run_tasks(p, w->index);
        atomic_fetch_add_explicit(&p->acks, 1, memory_order_release);
    }
}

void clip_pool_run(clip_pool *p, clip_task_fn fn, void *arg, int n_tasks)
{
    if (p->n_workers == 0 || n_tasks <= 1) {
        for (int t = 0; t < n_tasks; t++) fn(arg, t, 0);
        return;
    }
    p->fn = fn;
    p->arg = arg;
    p->n_tasks = n_tasks;
    atomic_store_explicit(&p->next, 0, memory_order_relaxed);
    atomic_store_explicit(&p->acks, 0, memory_order_relaxed);
    pthread_mutex_lock(&p->mu);
    atomic_fetch_add_explicit(&p->gen, 1, memory_order_release);
    if (p->sleepers) pthread_cond_broadcast(&p->cv);
    pthread_mutex_unlock(&p->mu);
    run_tasks(p, 0);
    for (int i = 0; atomic_load_explicit(&p->acks, memory_order_acquire) < p->n_workers; i++) {
        cpu_relax();
        if (i > SPIN_ITERS) sched_yield();
    }
}

clip_status clip_pool_new(int n_threads, clip_pool **out, clip_error *err)
{
    *out = NULL;
    clip_pool *p = calloc(1, sizeof *p);
    if (!p) return clip_fail(err, CLIP_ERR_NOMEM, "out of memory");
    pthread_mutex_init(&p->mu, NULL);
    pthread_cond_init(&p->cv, NULL);
    atomic_init(&p->gen, 0);
    atomic_init(&p->next, 0);
    atomic_init(&p->acks, 0);
    if (n_threads > 1) {
        p->threads = calloc((size_t)n_threads - 1, sizeof *p->threads);
        p->workers = calloc((size_t)n_threads - 1, sizeof *p->workers);
        if (!p->threads || !p->workers) {
            clip_pool_free(p);
            return clip_fail(err, CLIP_ERR_NOMEM, "out of memory");
        }
        for (int i = 0; i < n_threads - 1; i++) {
            p->workers[i] = (worker){p, i + 1};
            int e = pthread_create(&p->threads[i], NULL, worker_main, &p->workers[i]);
            if (e) {
                clip_pool_free(p);
                return clip_fail(err, CLIP_ERR_NOMEM, "cannot start thread %d of %d: %s",
                                 i + 2, n_threads, strerror(e));
            }
            p->n_workers++;
        }
    }
    *out = p;
    return CLIP_OK;
}

void clip_pool_free(clip_pool *p)
{
    if (!p) return;
    pthread_mutex_lock(&p->mu);
    p->stop = true;
    atomic_fetch_add_explicit(&p->gen, 1, memory_order_release);
    pthread_cond_broadcast(&p->cv);
    pthread_mutex_unlock(&p->mu);
    for (int i = 0; i < p->n_workers; i++) pthread_join(p->threads[i], NULL);
    pthread_mutex_destroy(&p->mu);
    pthread_cond_destroy(&p->cv);
    free(p->threads);
    free(p->workers);
    free(p);
}
