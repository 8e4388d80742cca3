/* main.c -- the `clip` command line: one binary, a subcommand per job.
 *
 *   clip serve      [options]                  the HTTP server (http.c)
 *   clip embed-image -m MODEL IMAGE...         prints the body POST /clip/embed_image returns
 *   clip embed-text  -m MODEL TEXT...          prints the body POST /clip/embed_text returns
 *   clip compare     -m MODEL ...              prints the body POST /clip/compare returns
 *   clip tokenize    -m MODEL TEXT...          the 77 token ids of each text, as JSON
 *   clip info        -m MODEL                  the model's hyperparameters
 *
 * Errors are one line on stderr and a nonzero exit status. */

#include "api.h"
#include "clip.h"
#include "http.h"
#include "json.h"

#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

/* =======================================================================================
 * Small helpers
 * ===================================================================================== */

static double now_seconds(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + (double)ts.tv_nsec * 1e-9;
}

static int fail(const char *what, const clip_error *err)
{
    fprintf(stderr, "clip: %s: %s\n", what, err->msg);
    return 1;
}

/* Reads a whole file; images are capped well above any sane photo so a wrong argument
 * (a device, a huge file) fails clearly instead of exhausting memory. */
static int read_file(const char *path, uint8_t **data, size_t *len, char *why, size_t why_size)
{
    const size_t max_bytes = (size_t)1 << 30;
    FILE *f = fopen(path, "rb");
    if (!f) {
        snprintf(why, why_size, "%s", strerror(errno));
        return -1;
    }
    size_t cap = 1 << 16, n = 0;
    uint8_t *buf = malloc(cap);
    while (buf) {
        size_t got = fread(buf + n, 1, cap - n, f);
        n += got;
        if (got == 0) break;
        if (n == cap) {
            if (cap >= max_bytes) {
                snprintf(why, why_size, "larger than %zu bytes", max_bytes);
                free(buf);
                fclose(f);
                return -1;
            }
            uint8_t *grown = realloc(buf, cap * 2);
            if (!grown) { free(buf); buf = NULL; break; }
            buf = grown;
            cap *= 2;
        }
    }
    int read_error = ferror(f);
    fclose(f);
    if (!buf) {
        snprintf(why, why_size, "out of memory");
        return -1;
    }
    if (read_error) {
        snprintf(why, why_size, "read error");
        free(buf);
        return -1;
    }
    *data = buf;
    *len = n;
    return 0;
}

/* =======================================================================================
 * Options shared by the computing subcommands: -m MODEL, --threads N
 * ===================================================================================== */

typedef struct cli_options {
    const char *model_path;
    int threads;
    int first_arg;   /* index of the first positional argument */
} cli_options;

static int parse_options(int argc, char **argv, cli_options *o)
{
    o->model_path = NULL;
    o->threads = 0;
    int i = 2;
    for (; i < argc; i++) {
        const char *a = argv[i];
        if (strcmp(a, "--") == 0) { i++; break; }
        if ((strcmp(a, "-m") == 0 || strcmp(a, "--model") == 0) && i + 1 < argc) {
            o->model_path = argv[++i];
        } else if (strcmp(a, "--threads") == 0 && i + 1 < argc) {
            char *end;
            long t = strtol(argv[++i], &end, 10);
            if (*end || t < 0 || t > 1024) {
                fprintf(stderr, "clip: --threads wants a number from 0 to 1024\n");
                return -1;
            }
            o->threads = (int)t;
        } else if (a[0] == '-' && a[1] != '\0') {
            fprintf(stderr, "clip: unknown option %s (see clip --help)\n", a);
            return -1;
        } else {
            break;
        }
    }
    o->first_arg = i;
    if (!o->model_path) o->model_path = clip_default_model_path();
    if (!o->model_path) {
        fprintf(stderr, "clip: no model: pass -m MODEL.clip (or set CLIP_MODEL); "
                        "weights/README.md says how to get one\n");
        return -1;
    }
    return 0;
}

static int load_model(const cli_options *o, clip_model **model, clip_ctx **ctx)
{
    clip_error err = {0};
    if (clip_model_load(o->model_path, model, &err) != CLIP_OK) return fail("loading model", &err);
    /* The library reads no environment: the kernel choice is passed in. */
    clip_ctx_params params = {o->threads, getenv("CLIP_MATMUL")};
    if (ctx && clip_ctx_new(*model, &params, ctx, &err) != CLIP_OK) {
        clip_model_free(*model);
        return fail("creating context", &err);
    }
    return 0;
}

static void print_body(clip_buf *b)
{
    if (b->oom) {
        fprintf(stderr, "clip: out of memory writing the answer\n");
        return;
    }
    fwrite(b->data, 1, b->len, stdout);
    fputc('\n', stdout);
}

/* =======================================================================================
 * Subcommands
 * ===================================================================================== */

static int cmd_info(int argc, char **argv)
{
    cli_options o;
    clip_model *model;
    if (parse_options(argc, argv, &o) || load_model(&o, &model, NULL)) return 1;
    const clip_hparams *hp = clip_model_hparams(model);
    printf("model           %s\n", hp->name);
    printf("file            %s (%s)\n", o.model_path, clip_model_file_dtype(model));
    printf("parameters      %llu\n", (unsigned long long)clip_model_param_count(model));
    printf("embed_dim       %u\n", hp->embed_dim);
    printf("activation      %s\n", hp->activation == CLIP_ACT_GELU ? "gelu" : "quick_gelu");
    printf("vision          image %u, patch %u, width %u, layers %u, heads %u, mlp %u, "
           "ln_eps %g\n", hp->image_size, hp->patch_size, hp->vision_width,
           hp->vision_layers, hp->vision_heads, hp->vision_mlp, (double)hp->vision_ln_eps);
    printf("text            context %u, vocab %u, width %u, layers %u, heads %u, mlp %u, "
           "ln_eps %g\n", hp->context_length, hp->vocab_size, hp->text_width,
           hp->text_layers, hp->text_heads, hp->text_mlp, (double)hp->text_ln_eps);
    printf("preprocessing   resize %u, crop %u, mean %.8g %.8g %.8g, std %.8g %.8g %.8g\n",
           hp->resize_size, hp->crop_size, (double)hp->image_mean[0],
           (double)hp->image_mean[1], (double)hp->image_mean[2], (double)hp->image_std[0],
           (double)hp->image_std[1], (double)hp->image_std[2]);
    clip_model_free(model);
    return 0;
}

static int cmd_tokenize(int argc, char **argv)
{
    cli_options o;
    clip_model *model;
    if (parse_options(argc, argv, &o) || load_model(&o, &model, NULL)) return 1;
    const uint32_t ctx_len = clip_model_hparams(model)->context_length;
    int32_t *ids = malloc(ctx_len * sizeof *ids);
    clip_buf out = {0};
    int rc = ids ? 0 : 1;
    clip_buf_putc(&out, '[');
    for (int i = o.first_arg; i < argc && rc == 0; i++) {
        clip_error err = {0};
        if (clip_tokenize(model, argv[i], strlen(argv[i]), ids, &err) != CLIP_OK) {
            rc = fail("tokenizing", &err);
            break;
        }
        if (i > o.first_arg) clip_buf_putc(&out, ',');
        clip_buf_putc(&out, '[');
        for (uint32_t j = 0; j < ctx_len; j++) clip_buf_printf(&out, j ? ",%d" : "%d", ids[j]);
        clip_buf_putc(&out, ']');
    }
    clip_buf_putc(&out, ']');
    if (rc == 0) print_body(&out);
    clip_buf_free(&out);
    free(ids);
    clip_model_free(model);
    return rc || out.oom;
}

/* Images and texts are encoded in batches of this many: one forward each. */
enum { CLI_BATCH = 8 };

/* Options, at least one input, the model and a context: what both embed commands start with.
 * Returns the number of inputs, or -1 after saying what went wrong. */
static int open_for_inputs(int argc, char **argv, const char *what, cli_options *o,
                           clip_model **model, clip_ctx **ctx)
{
    if (parse_options(argc, argv, o)) return -1;
    int n = argc - o->first_arg;
    if (n <= 0) {
        fprintf(stderr, "clip %s: no %s given\n", argv[1], what);
        return -1;
    }
    return load_model(o, model, ctx) ? -1 : n;
}

/* The route's body for n embeddings, timed from `start`. Returns nonzero on failure. */
static int print_embeddings(const float *emb, int n, int dim, double start)
{
    clip_buf out = {0};
    clip_api_write_embeddings(&out, emb, n, dim, now_seconds() - start);
    print_body(&out);
    int failed = out.oom;
    clip_buf_free(&out);
    return failed;
}

static int cmd_embed_image(int argc, char **argv)
{
    cli_options o;
    clip_model *model;
    clip_ctx *ctx;
    int n = open_for_inputs(argc, argv, "image", &o, &model, &ctx);
    if (n < 0) return 1;
    double start = now_seconds();
    const clip_hparams *hp = clip_model_hparams(model);
    size_t image_floats = clip_image_floats(model);
    float *pixels = malloc(CLI_BATCH * image_floats * sizeof *pixels);
    float *emb = malloc((size_t)n * hp->embed_dim * sizeof *emb);
    int rc = pixels && emb ? 0 : 1;
    for (int done = 0; done < n && rc == 0; done += CLI_BATCH) {
        int batch = n - done < CLI_BATCH ? n - done : CLI_BATCH;
        for (int i = 0; i < batch && rc == 0; i++) {
            const char *path = argv[o.first_arg + done + i];
            uint8_t *data;
            size_t len;
            char why[128];
            if (read_file(path, &data, &len, why, sizeof why)) {
                fprintf(stderr, "clip: %s: %s\n", path, why);
                rc = 1;
                break;
            }
            clip_error err = {0};
            if (clip_image_load(model, data, len, CLIP_DEFAULT_MAX_PIXELS,
                                pixels + (size_t)i * image_floats, &err) != CLIP_OK)
                rc = fail(path, &err);
            free(data);
        }
        clip_error err = {0};
        if (rc == 0 && clip_encode_images(ctx, pixels, batch,
                                          emb + (size_t)done * hp->embed_dim, &err) != CLIP_OK)
            rc = fail("encoding images", &err);
    }
    if (rc == 0) rc = print_embeddings(emb, n, (int)hp->embed_dim, start);
    free(pixels);
    free(emb);
    clip_ctx_free(ctx);
    clip_model_free(model);
    return rc;
}

static int cmd_embed_text(int argc, char **argv)
{
    cli_options o;
    clip_model *model;
    clip_ctx *ctx;
    int n = open_for_inputs(argc, argv, "text", &o, &model, &ctx);
    if (n < 0) return 1;
    double start = now_seconds();
    const clip_hparams *hp = clip_model_hparams(model);
    size_t ctx_len = clip_text_ids(model);
    int32_t *ids = malloc((size_t)n * ctx_len * sizeof *ids);
    float *emb = malloc((size_t)n * hp->embed_dim * sizeof *emb);
    int rc = ids && emb ? 0 : 1;
    for (int i = 0; i < n && rc == 0; i++) {
        const char *text = argv[o.first_arg + i];
        clip_error err = {0};
        if (clip_tokenize(model, text, strlen(text), ids + (size_t)i * ctx_len, &err) != CLIP_OK)
            rc = fail("tokenizing", &err);
    }
    clip_error err = {0};
    if (rc == 0 && clip_encode_texts(ctx, ids, n, emb, &err) != CLIP_OK)
        rc = fail("encoding texts", &err);
    if (rc == 0) rc = print_embeddings(emb, n, (int)hp->embed_dim, start);
    free(ids);
    free(emb);
    clip_ctx_free(ctx);
    clip_model_free(model);
    return rc;
}

/* =======================================================================================
 * Entry point
 * ===================================================================================== */

static void usage(FILE *f)
{
    fprintf(f,
        "clip %s -- CLIP embeddings: an HTTP server and a command line\n"
        "\n"
        "usage:\n"
        "  clip serve [-m MODEL | --model NAME=PATH ...] [--port 9001] [options]\n"
        "                                   serve the Roboflow-compatible CLIP API\n"
        "  clip embed-image [-m MODEL] [--threads N] IMAGE...\n"
        "  clip embed-text  [-m MODEL] [--threads N] TEXT...\n"
        "  clip compare     [-m MODEL] ...  (clip compare --help)\n"
        "  clip tokenize    [-m MODEL] TEXT...\n"
        "  clip info        [-m MODEL]\n"
        "\n"
        "MODEL is a .clip file (made by clip-convert); without -m, $CLIP_MODEL or the\n"
        "default model weights/default.clip. `clip serve --help` lists the server's options.\n",
        CLIP_VERSION);
}

int main(int argc, char **argv)
{
    if (argc < 2) {
        usage(stderr);
        return 2;
    }
    const char *cmd = argv[1];
    if (strcmp(cmd, "serve") == 0) return clip_serve_main(argc - 1, argv + 1);
    if (strcmp(cmd, "compare") == 0) return clip_compare_main(argc - 1, argv + 1);
    if (strcmp(cmd, "embed-image") == 0) return cmd_embed_image(argc, argv);
    if (strcmp(cmd, "embed-text") == 0) return cmd_embed_text(argc, argv);
    if (strcmp(cmd, "tokenize") == 0) return cmd_tokenize(argc, argv);
    if (strcmp(cmd, "info") == 0) return cmd_info(argc, argv);
    if (strcmp(cmd, "--version") == 0 || strcmp(cmd, "version") == 0) {
        printf("clip %s\n", CLIP_VERSION);
        return 0;
    }
    if (strcmp(cmd, "--help") == 0 || strcmp(cmd, "-h") == 0 || strcmp(cmd, "help") == 0) {
        usage(stdout);
        return 0;
    }
    fprintf(stderr, "clip: unknown command '%s'\n\n", cmd);
    usage(stderr);
    return 2;
}
