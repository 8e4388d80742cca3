/* pool.h -- a context's worker threads (pool.c): a task list run by every thread at once.
 *
 * clip.c's layers split their work into tasks (weight panels, rows, attention heads) and
 * hand them to the context's pool; clip_pool_run returns when every task is done. */
#ifndef CLIP_POOL_H
#define CLIP_POOL_H

#include "clip.h"

typedef struct clip_pool clip_pool;

/* One task: `task` in [0, n_tasks), run on thread `thread` in [0, n_threads) (0 is the
 * caller), so a task can pick its own slice of per-thread scratch. */
typedef void (*clip_task_fn)(void *arg, int task, int thread);

/* A pool of n_threads threads: the caller and n_threads - 1 workers, started here and
 * living until clip_pool_free. */
clip_status clip_pool_new(int n_threads, clip_pool **out, clip_error *err);
void clip_pool_free(clip_pool *pool);

/* Runs fn for every task in [0, n_tasks) on the pool's threads, the caller's included,
 * and returns when all are done. One call at a time per pool. */
void clip_pool_run(clip_pool *pool, clip_task_fn fn, void *arg, int n_tasks);

#endif
