/* api.h -- the Roboflow Inference Server's CLIP API, callable in-process: its routes
 * (GET /, GET /healthz, POST /clip/embed_image, /clip/embed_text, /clip/compare), the
 * request JSON turned into inputs, the answers and error shapes, and the models it serves.
 * The server (server.c) hands it each request it has read; `clip compare` (main.c) hands
 * it one body, without a socket. */
#ifndef CLIP_API_H
#define CLIP_API_H

#include "batcher.h"
#include "clip.h"
#include "fetch.h"
#include "http.h"
#include "json.h"
#include "textcache.h"

#include <stdatomic.h>
#include <stddef.h>
#include <stdint.h>

/* ---------------------------------------------------------------------------------------
 * Models: which to load, and the loaded ones under the names requests use
 * ------------------------------------------------------------------------------------- */

enum { CLIP_API_MAX_MODELS = 16 };

/* The models asked for, in order; the first is the default of requests without
 * clip_version_id. An empty list means the default model (clip_default_model_path). */
typedef struct clip_api_model_list {
    int n;
    struct {
        const char *name;        /* NULL: the name stored in the model file               */
        const char *path;
    } spec[CLIP_API_MAX_MODELS];
} clip_api_model_list;

/* Adds "NAME=PATH", or a PATH alone (also when PATH itself holds a '=' and exists). The
 * string is kept and cut at the '='. Returns -1 after saying so when the list is full. */
int clip_api_model_add(clip_api_model_list *list, char *spec);
/* Adds each of a comma-separated list of specs (as CLIP_MODEL holds them). */
int clip_api_model_add_list(clip_api_model_list *list, char *specs);

/* The model used without -m: $CLIP_MODEL, else weights/default.clip next to the binary, else
 * weights/default.clip in the current directory; NULL when none of these exists. The string
 * stays valid for the life of the process. */
const char *clip_default_model_path(void);

typedef struct clip_api_model {
    char name[64];               /* what clip_version_id selects it by                   */
    clip_model *model;
    clip_ctx *ctx;               /* used by the inference thread only (or the CLI)       */
} clip_api_model;

/* Loads every model of the list (or the default one) with a context each, into
 * models[0, *n_out). Returns 0, or -1 after printing why (prefixed "prog: "). */
int clip_api_models_load(const clip_api_model_list *list, const clip_ctx_params *params,
                         clip_api_model *models, int *n_out, const char *prog);
void clip_api_models_free(clip_api_model *models, int n);

/* One image and one text forward, so the first client does not pay the page faults of the
 * freshly mapped weights. Returns the seconds spent, or -1 after printing why. */
double clip_api_model_warm_up(clip_api_model *m, const char *prog);

/* ---------------------------------------------------------------------------------------
 * The API
 * ------------------------------------------------------------------------------------- */

/* Limits and policies: the server's options, the defaults for the command line. */
typedef struct clip_api_options {
    const char *api_key;         /* NULL: no key asked for                               */
    size_t max_body;             /* bytes of a body, and of a decoded base64 image       */
    int max_batch;               /* images, texts or prompts per request                 */
    uint64_t max_pixels;         /* of one image, checked before it is decoded           */
    clip_fetch_policy fetch;     /* image URLs                                           */
} clip_api_options;

void clip_api_options_default(clip_api_options *o);

/* The API's state. The helpers are optional: without them (the command line) every input
 * is prepared and computed on the calling thread. */
typedef struct clip_api {
    clip_api_options opt;
    clip_api_model *models;
    int n_models;
    clip_fetch_tls *tls;         /* NULL: https image URLs refused                       */
    clip_batcher *batcher;       /* NULL: forwards run on the calling thread             */
    clip_text_cache *cache;      /* NULL: every text computed                            */
    clip_fanout *fanout;         /* NULL: a request's images prepared one by one         */
    double started;              /* clip_api_init's time, for GET /'s uptime             */
    atomic_ullong requests;      /* answered so far, for GET /                           */
} clip_api;

/* The options are copied (their strings are not); models must outlive the API. */
void clip_api_init(clip_api *a, const clip_api_options *o, clip_api_model *models,
                   int n_models);

/* One request, as the protocol delivered it. Times are CLOCK_MONOTONIC seconds. */
typedef struct clip_api_request {
    const char *method;        size_t method_len;
    const char *path;          size_t path_len;         /* without the query         */
    const char *query;         size_t query_len;        /* after '?', still encoded  */
    const char *authorization; size_t authorization_len;
    const char *body;          size_t body_len;
    double start;                /* when it began: the answers' "time" counts from it    */
    int announced;               /* counted in a->batcher's announcements: set by the
                                  * caller, cleared once the batcher has taken it back   */
} clip_api_request;

/* A POST to one of the /clip/ routes: a request the batcher should wait for. */
int clip_api_is_inference(const char *method, size_t method_len, const char *path,
                          size_t path_len);

/* Routes the request and fills r (status, JSON body, Allow), whatever happens. HEAD is
 * answered as GET: leaving the body out is the caller's part. */
void clip_api_handle(clip_api *a, clip_api_request *req, clip_http_response *r);

/* The API's error shape {"message": "..."} with the given status. */
void clip_api_message(clip_http_response *r, int status, const char *fmt, ...)
    __attribute__((format(printf, 3, 4)));

/* The body of an embed route: {"inference_id":null,"frame_id":null,"time":seconds,
 * "embeddings":[[...],...]} with n rows of dim floats. */
void clip_api_write_embeddings(clip_buf *out, const float *emb, int n, int dim,
                               double seconds);

#endif /* CLIP_API_H */
