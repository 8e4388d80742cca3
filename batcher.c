/* batcher.c -- dynamic batching through one inference thread, and the fan-out of one
 * request's images to helper threads.
 *
 * Batching: connection threads do all the CPU work a request needs before the forward
 * (base64, URLs, decoding, preprocessing, tokenizing) in parallel; only the forward pass
 * is serialised. Every request hands its prepared inputs to ONE inference thread as jobs,
 * and the thread stacks the jobs that arrive together (same context, same kind) into one
 * clip_encode_images / clip_encode_texts call.
 *
 * Fan-out: a request with several images would decode and preprocess them one after
 * another on its connection thread while the other cores sit idle. A few helper threads,
 * started once (CPUs - 1 of them), take items of a posted work; the posting thread takes
 * items too, so a work finishes even when every helper is busy elsewhere -- nobody waits
 * for a helper, and helpers never outnumber the cores whatever the number of requests.
 *
 * Lives here: the job queue, the inference thread, the stacking buffers, the helpers.
 * Must not touch: HTTP, JSON, models' names or files -- the engine is reached only through
 * clip_encode_* and the size helpers of clip.h, and a job's inputs through their type.
 */
#include "batcher.h"

#include <errno.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

/* =======================================================================================
 * Batching: one inference thread; requests that arrive together share a forward
 * ===================================================================================== */

struct clip_batcher {
    pthread_mutex_t mu;
    pthread_cond_t work;       /* the inference thread waits here for jobs               */
    pthread_cond_t done;       /* connection threads wait here for their jobs            */
    clip_job *head, *tail;
    int preparing;             /* requests decoding their inputs: jobs soon to come       */
    int stopping;
    int max_batch;
    double wait_s;
    /* The stacked inputs and outputs of one forward, one buffer per type. */
    float *pixels;
    size_t pixels_cap;         /* in floats                                              */
    int32_t *ids;
    size_t ids_cap;            /* in ids                                                 */
    float *out;
    size_t out_cap;            /* in floats                                              */
    uint64_t forwards, batched_inputs;
    pthread_t thread;
};

void clip_batcher_announce(clip_batcher *b, int delta)
{
    pthread_mutex_lock(&b->mu);
    b->preparing += delta;
    if (delta < 0) pthread_cond_signal(&b->work);
    pthread_mutex_unlock(&b->mu);
}

/* p grown to hold `need` elements of `size` bytes (*cap counts elements). NULL when out of
 * memory; p is then still valid and *cap unchanged. */
static void *reserve(void *p, size_t *cap, size_t need, size_t size)
{
    if (need <= *cap) return p;
    void *q = realloc(p, need * size);
    if (q) *cap = need;
    return q;
}

/* One forward of n inputs of `kind` on ctx. */
static clip_status forward(clip_ctx *ctx, clip_job_kind kind, clip_job_input in, int n,
                           float *out, clip_error *err)
{
    return kind == CLIP_JOB_IMAGES ? clip_encode_images(ctx, in.pixels, n, out, err)
                                   : clip_encode_texts(ctx, in.ids, n, out, err);
}

/* Copies the inputs of jobs[0..n) (same model and kind, `total` inputs in all) one after
 * another into the stacking buffer of their type, which *in then points to. */
static int stack_inputs(clip_batcher *b, clip_job **jobs, int n, int total, clip_job_input *in)
{
    const clip_model *model = jobs[0]->model;
    if (jobs[0]->kind == CLIP_JOB_IMAGES) {
        size_t per = clip_image_floats(model);
        float *p = reserve(b->pixels, &b->pixels_cap, per * (size_t)total, sizeof *p);
        if (!p) return -1;
        b->pixels = p;
        for (int i = 0; i < n; i++) {
            memcpy(p, jobs[i]->in.pixels, per * (size_t)jobs[i]->n * sizeof *p);
            p += per * (size_t)jobs[i]->n;
        }
        in->pixels = b->pixels;
    } else {
        size_t per = clip_text_ids(model);
        int32_t *p = reserve(b->ids, &b->ids_cap, per * (size_t)total, sizeof *p);
        if (!p) return -1;
        b->ids = p;
        for (int i = 0; i < n; i++) {
            memcpy(p, jobs[i]->in.ids, per * (size_t)jobs[i]->n * sizeof *p);
            p += per * (size_t)jobs[i]->n;
        }
        in->ids = b->ids;
    }
    return 0;
}

/* Runs one forward for jobs[0..n) (same context and kind), stacking their inputs. */
static void run_batch(clip_batcher *b, clip_job **jobs, int n)
{
    const clip_job *first = jobs[0];
    size_t dim = clip_embed_floats(first->model);
    int total = 0;
    for (int i = 0; i < n; i++) total += jobs[i]->n;
    clip_error err = {0};
    clip_status st = CLIP_OK;
    clip_job_input in = first->in;
    float *output = first->out;
    if (n > 1) {
        float *out = NULL;
        if (stack_inputs(b, jobs, n, total, &in) == 0)
            out = reserve(b->out, &b->out_cap, dim * (size_t)total, sizeof *out);
        if (out) {
            b->out = out;
        } else {
            st = CLIP_ERR_NOMEM;
            snprintf(err.msg, sizeof err.msg, "out of memory stacking a batch");
        }
        output = b->out;
    }
    if (st == CLIP_OK) st = forward(first->ctx, first->kind, in, total, output, &err);
    pthread_mutex_lock(&b->mu);
    size_t off = 0;
    for (int i = 0; i < n; i++) {
        clip_job *j = jobs[i];
        if (st == CLIP_OK && n > 1)
            memcpy(j->out, output + off, dim * (size_t)j->n * sizeof(float));
        off += dim * (size_t)j->n;
        j->status = st;
        snprintf(j->msg, sizeof j->msg, "%s", err.msg);
        j->done = 1;
    }
    b->forwards++;
    b->batched_inputs += (uint64_t)total;
    pthread_cond_broadcast(&b->done);
    pthread_mutex_unlock(&b->mu);
}

/* Takes from the queue, in arrival order, jobs of the first job's context and kind while
 * they fit in max_batch (the first always). Called with the lock held. */
static int take_jobs(clip_batcher *b, clip_job **taken, int *total)
{
    int n = 0;
    *total = 0;
    clip_job **link = &b->head, *prev = NULL;
    clip_ctx *ctx = b->head->ctx;
    clip_job_kind kind = b->head->kind;
    while (*link && n < b->max_batch) {
        clip_job *j = *link;
        if (j->ctx == ctx && j->kind == kind && (n == 0 || *total + j->n <= b->max_batch)) {
            *link = j->next;
            if (b->tail == j) b->tail = prev;
            taken[n++] = j;
            *total += j->n;
        } else {
            prev = j;
            link = &j->next;
        }
    }
    return n;
}

static void *batcher_main(void *arg)
{
    clip_batcher *b = arg;
    clip_job **taken = malloc((size_t)b->max_batch * sizeof *taken);
    pthread_mutex_lock(&b->mu);
    for (;;) {
        while (!b->head && !b->stopping) pthread_cond_wait(&b->work, &b->mu);
        if (!b->head) break;
        /* Wait for announced requests while the batch could still grow, but never longer
         * than wait_s after the first job: a lone request does not wait at all. */
        if (b->preparing > 0 && b->wait_s > 0) {
            int queued = 0;
            for (clip_job *j = b->head; j; j = j->next) queued += j->n;
            struct timespec until;
            clock_gettime(CLOCK_REALTIME, &until);
            long ns = until.tv_nsec + (long)(b->wait_s * 1e9);
            until.tv_sec += ns / 1000000000L;
            until.tv_nsec = ns % 1000000000L;
            while (b->preparing > 0 && queued < b->max_batch && !b->stopping) {
                if (pthread_cond_timedwait(&b->work, &b->mu, &until) == ETIMEDOUT) break;
                queued = 0;
                for (clip_job *j = b->head; j; j = j->next) queued += j->n;
            }
        }
        int total;
        int n = taken ? take_jobs(b, taken, &total) : 0;
        if (n == 0) {   /* no memory for the list: fail the first job rather than hang */
            clip_job *j = b->head;
            b->head = j->next;
            if (!b->head) b->tail = NULL;
            j->status = CLIP_ERR_NOMEM;
            snprintf(j->msg, sizeof j->msg, "out of memory");
            j->done = 1;
            pthread_cond_broadcast(&b->done);
            continue;
        }
        pthread_mutex_unlock(&b->mu);
        run_batch(b, taken, n);
        pthread_mutex_lock(&b->mu);
    }
    pthread_mutex_unlock(&b->mu);
    free(taken);
    return NULL;
}

void clip_batcher_run(clip_batcher *b, clip_job *jobs, int n, int *announced)
{
    if (!b) {
        for (int i = 0; i < n; i++) {
            clip_error err = {0};
            jobs[i].status = forward(jobs[i].ctx, jobs[i].kind, jobs[i].in, jobs[i].n,
                                     jobs[i].out, &err);
            snprintf(jobs[i].msg, sizeof jobs[i].msg, "%s", err.msg);
        }
        return;
    }
    pthread_mutex_lock(&b->mu);
    for (int i = 0; i < n; i++) {
        jobs[i].done = 0;
        jobs[i].next = NULL;
        if (b->tail) b->tail->next = &jobs[i];
        else b->head = &jobs[i];
        b->tail = &jobs[i];
    }
    if (*announced) {
        b->preparing--;
        *announced = 0;
    }
    pthread_cond_signal(&b->work);
    for (int i = 0; i < n; i++)
        while (!jobs[i].done) pthread_cond_wait(&b->done, &b->mu);
    pthread_mutex_unlock(&b->mu);
}

clip_batcher *clip_batcher_start(int max_batch, int wait_ms)
{
    clip_batcher *b = calloc(1, sizeof *b);
    if (!b) return NULL;
    pthread_mutex_init(&b->mu, NULL);
    pthread_cond_init(&b->work, NULL);
    pthread_cond_init(&b->done, NULL);
    b->max_batch = max_batch;
    b->wait_s = wait_ms / 1000.0;
    if (pthread_create(&b->thread, NULL, batcher_main, b)) {
        pthread_cond_destroy(&b->work);
        pthread_cond_destroy(&b->done);
        pthread_mutex_destroy(&b->mu);
        free(b);
        return NULL;
    }
    return b;
}

void clip_batcher_stop(clip_batcher *b)
{
    pthread_mutex_lock(&b->mu);
    b->stopping = 1;
    pthread_cond_signal(&b->work);
    pthread_mutex_unlock(&b->mu);
    pthread_join(b->thread, NULL);
    free(b->pixels);
    free(b->ids);
    free(b->out);
    pthread_cond_destroy(&b->work);
    pthread_cond_destroy(&b->done);
    pthread_mutex_destroy(&b->mu);
    free(b);
}

void clip_batcher_stats(clip_batcher *b, uint64_t *forwards, uint64_t *inputs)
{
    pthread_mutex_lock(&b->mu);
    *forwards = b->forwards;
    *inputs = b->batched_inputs;
    pthread_mutex_unlock(&b->mu);
}

/* =======================================================================================
 * Fan-out: helper threads for the images of one request
 * ===================================================================================== */

typedef struct work {
    void (*fn)(void *arg, int i);
    void *arg;
    int n;
    int next;                  /* the next item nobody has taken                          */
    int finished;
    struct work *queued;       /* next work waiting for helpers                           */
} work;

struct clip_fanout {
    pthread_mutex_t mu;
    pthread_cond_t more;       /* helpers wait here for works                             */
    pthread_cond_t done;       /* posters wait here for their items                       */
    work *head;
    int stopping;
    int n_threads;
    pthread_t threads[7];
};

/* Called with the lock held once the work's last item is taken: helpers must not find
 * it any more (its poster may return and free it as soon as its items are finished). */
static void work_unqueue(clip_fanout *f, work *w)
{
    work **link = &f->head;
    while (*link && *link != w) link = &(*link)->queued;
    if (*link) *link = w->queued;
}

/* Takes and runs items of w until none is left. Called and returns with the lock held. */
static void work_items(clip_fanout *f, work *w)
{
    while (w->next < w->n) {
        int i = w->next++;
        if (w->next == w->n) work_unqueue(f, w);
        pthread_mutex_unlock(&f->mu);
        w->fn(w->arg, i);
        pthread_mutex_lock(&f->mu);
        if (++w->finished == w->n) pthread_cond_broadcast(&f->done);
    }
}

static void *fanout_main(void *arg)
{
    clip_fanout *f = arg;
    pthread_mutex_lock(&f->mu);
    for (;;) {
        while (!f->head && !f->stopping) pthread_cond_wait(&f->more, &f->mu);
        if (!f->head) break;
        work_items(f, f->head);
    }
    pthread_mutex_unlock(&f->mu);
    return NULL;
}

void clip_fanout_run(clip_fanout *f, void (*fn)(void *, int), void *arg, int n)
{
    if (!f || f->n_threads == 0 || n < 2) {
        for (int i = 0; i < n; i++) fn(arg, i);
        return;
    }
    work w = {.fn = fn, .arg = arg, .n = n};
    pthread_mutex_lock(&f->mu);
    work **link = &f->head;
    while (*link) link = &(*link)->queued;
    *link = &w;
    if (n - 1 < f->n_threads) {
        for (int i = 0; i < n - 1; i++) pthread_cond_signal(&f->more);
    } else {
        pthread_cond_broadcast(&f->more);
    }
    work_items(f, &w);
    while (w.finished < n) pthread_cond_wait(&f->done, &f->mu);
    pthread_mutex_unlock(&f->mu);
}

clip_fanout *clip_fanout_start(void)
{
    clip_fanout *f = calloc(1, sizeof *f);
    if (!f) return NULL;
    pthread_mutex_init(&f->mu, NULL);
    pthread_cond_init(&f->more, NULL);
    pthread_cond_init(&f->done, NULL);
    long cpus = sysconf(_SC_NPROCESSORS_ONLN);
    int want = cpus > 1 ? (int)(cpus - 1 < 7 ? cpus - 1 : 7) : 0;
    pthread_attr_t attr;
    pthread_attr_init(&attr);
    pthread_attr_setstacksize(&attr, 512 * 1024);   /* as connection threads: same work */
    while (f->n_threads < want &&
           pthread_create(&f->threads[f->n_threads], &attr, fanout_main, f) == 0)
        f->n_threads++;
    pthread_attr_destroy(&attr);
    if (want > 0 && f->n_threads == 0) {
        clip_fanout_stop(f);
        return NULL;
    }
    return f;
}

void clip_fanout_stop(clip_fanout *f)
{
    if (!f) return;
    pthread_mutex_lock(&f->mu);
    f->stopping = 1;
    pthread_cond_broadcast(&f->more);
    pthread_mutex_unlock(&f->mu);
    for (int i = 0; i < f->n_threads; i++) pthread_join(f->threads[i], NULL);
    pthread_cond_destroy(&f->more);
    pthread_cond_destroy(&f->done);
    pthread_mutex_destroy(&f->mu);
    free(f);
}

int clip_fanout_helpers(const clip_fanout *f)
{
    return f->n_threads;
}
