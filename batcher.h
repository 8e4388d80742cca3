/* batcher.h -- the two ways the server spreads work over threads: ONE inference thread
 * that stacks the jobs of requests arriving together into one forward (dynamic batching),
 * and helper threads that prepare the images of one request side by side (fan-out). */
#ifndef CLIP_BATCHER_H
#define CLIP_BATCHER_H

#include "clip.h"

#include <stdint.h>

/* ---------------------------------------------------------------------------------------
 * Batching
 * ------------------------------------------------------------------------------------- */

typedef enum clip_job_kind { CLIP_JOB_IMAGES, CLIP_JOB_TEXTS } clip_job_kind;

/* A job's inputs, typed by its kind. */
typedef union clip_job_input {
    const float *pixels;         /* CLIP_JOB_IMAGES: n * clip_image_floats(model) floats  */
    const int32_t *ids;          /* CLIP_JOB_TEXTS: n * clip_text_ids(model) token ids    */
} clip_job_input;

/* One forward's worth of a request: n images or n texts of one model. Jobs of the same
 * context and kind that wait together run as one forward. */
typedef struct clip_job {
    clip_ctx *ctx;               /* the model's context (the inference thread's own)      */
    const clip_model *model;     /* its model, for the sizes of inputs and outputs        */
    clip_job_kind kind;
    int n;
    clip_job_input in;
    float *out;                  /* n * clip_embed_floats(model) floats                   */
    clip_status status;          /* set when done; msg says why when not CLIP_OK          */
    char msg[256];
    int done;                    /* the batcher's own from here on                        */
    struct clip_job *next;
} clip_job;

typedef struct clip_batcher clip_batcher;

/* Starts the inference thread: forwards of at most max_batch inputs, waiting at most
 * wait_ms for announced requests to fill one. NULL when the thread cannot start. */
clip_batcher *clip_batcher_start(int max_batch, int wait_ms);
/* Runs the queued jobs, then stops the thread and frees the batcher. */
void clip_batcher_stop(clip_batcher *b);

/* A request that will bring jobs announces itself (+1) as soon as its head arrives, so the
 * inference thread waits a few ms for it instead of running a half-empty batch; -1 takes
 * the announcement back (the request failed before queueing anything). */
void clip_batcher_announce(clip_batcher *b, int delta);

/* Queues jobs[0..n), ends the request's announcement when *announced (then clears it),
 * and waits until every job is done. With b NULL (the command line) each job runs here, in
 * order, on its own context. */
void clip_batcher_run(clip_batcher *b, clip_job *jobs, int n, int *announced);

/* Forwards run and inputs they carried, so far (GET / and the shutdown line report them). */
void clip_batcher_stats(clip_batcher *b, uint64_t *forwards, uint64_t *inputs);

/* ---------------------------------------------------------------------------------------
 * Fan-out
 * ------------------------------------------------------------------------------------- */

typedef struct clip_fanout clip_fanout;

/* Starts CPUs - 1 helper threads (none on one CPU, at most 7). NULL when none would start. */
clip_fanout *clip_fanout_start(void);
void clip_fanout_stop(clip_fanout *f);   /* f may be NULL */

/* Runs fn(arg, i) for i in [0, n) on this thread and free helpers; returns when all are
 * done. Without helpers (f NULL, e.g. the CLI) or with one item: here, in order. */
void clip_fanout_run(clip_fanout *f, void (*fn)(void *arg, int i), void *arg, int n);

/* The helper threads running (the calling thread works too). */
int clip_fanout_helpers(const clip_fanout *f);

#endif /* CLIP_BATCHER_H */
