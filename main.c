/* main.c -- the `clip` command line: one binary, a subcommand per job.
 *
 *   clip serve      [options]                  the HTTP server (server.c)
 *   clip embed-image -m MODEL IMAGE...         prints the body POST /clip/embed_image returns
 *   clip embed-text  -m MODEL TEXT...          prints the body POST /clip/embed_text returns
 *   clip compare     -m MODEL ...              prints the body POST /clip/compare returns
 *   clip tokenize    -m MODEL TEXT...          the 77 token ids of each text, as JSON
 *   clip info        -m MODEL                  the model's hyperparameters
 *
 * The embed commands and `clip compare` print the very bodies the routes answer: compare
 * goes through the API itself (api.h), in-process, without a socket.
 *
 * Errors are one line on stderr and a nonzero exit status. */

#include "api.h"
#include "clip.h"
#include "json.h"
#include "server.h"   /* clip_serve_main, its one name */

#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
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

/* A whole number from lo to hi, all of s. */
static int parse_long(const char *s, long lo, long hi, long *out)
{
    if (!s || !*s) return -1;
    char *end;
    errno = 0;
    long v = strtol(s, &end, 10);
    if (errno || *end || v < lo || v > hi) return -1;
    *out = v;
    return 0;
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
    const size_t ctx_len = clip_text_ids(model);
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
        for (size_t j = 0; j < ctx_len; j++) clip_buf_printf(&out, j ? ",%d" : "%d", ids[j]);
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
    size_t image_floats = clip_image_floats(model), dim = clip_embed_floats(model);
    float *pixels = malloc(CLI_BATCH * image_floats * sizeof *pixels);
    float *emb = malloc((size_t)n * dim * sizeof *emb);
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
                                          emb + (size_t)done * dim, &err) != CLIP_OK)
            rc = fail("encoding images", &err);
    }
    if (rc == 0) rc = print_embeddings(emb, n, (int)dim, start);
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
    size_t ctx_len = clip_text_ids(model), dim = clip_embed_floats(model);
    int32_t *ids = malloc((size_t)n * ctx_len * sizeof *ids);
    float *emb = malloc((size_t)n * dim * sizeof *emb);
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
    if (rc == 0) rc = print_embeddings(emb, n, (int)dim, start);
    free(ids);
    free(emb);
    clip_ctx_free(ctx);
    clip_model_free(model);
    return rc;
}

/* =======================================================================================
 * clip compare: the body POST /clip/compare takes, answered by the same route in-process
 * ===================================================================================== */

static void compare_usage(FILE *f)
{
    fprintf(f,
        "usage: clip compare [-m MODEL.clip | --model NAME=PATH ...] [--threads N]\n"
        "                    --subject S [--subject-type image|text]\n"
        "                    (--prompt P ... | --named-prompt NAME=P ...) [--prompt-type text|image]\n"
        "                    [--clip-version-id NAME] [--allow-private-urls] [--ca-file PEM]\n"
        "       clip compare [-m MODEL.clip] --request FILE|-   (a POST /clip/compare body)\n"
        "\n"
        "An image S or P is a file (sent as base64) or an http(s) URL. Prints the body the\n"
        "server's /clip/compare answers.\n");
}

/* Appends an image argument as an image object: URLs as they are, files as base64. */
static int append_image_arg(clip_buf *b, const char *arg)
{
    static const char digits[] = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    if (strncasecmp(arg, "http://", 7) == 0 || strncasecmp(arg, "https://", 8) == 0) {
        clip_buf_puts(b, "{\"type\":\"url\",\"value\":");
        clip_json_write_string(b, arg, strlen(arg));
        clip_buf_putc(b, '}');
        return 0;
    }
    FILE *f = fopen(arg, "rb");
    if (!f) {
        fprintf(stderr, "clip compare: %s: %s\n", arg, strerror(errno));
        return -1;
    }
    clip_buf_puts(b, "{\"type\":\"base64\",\"value\":\"");
    unsigned char in[3 * 1024];
    size_t n;
    while ((n = fread(in, 1, sizeof in, f)) > 0) {
        for (size_t i = 0; i < n; i += 3) {
            uint32_t v = (uint32_t)in[i] << 16;
            if (i + 1 < n) v |= (uint32_t)in[i + 1] << 8;
            if (i + 2 < n) v |= in[i + 2];
            char q[4] = {digits[v >> 18], digits[(v >> 12) & 63],
                         i + 1 < n ? digits[(v >> 6) & 63] : '=', i + 2 < n ? digits[v & 63] : '='};
            clip_buf_append(b, q, 4);
        }
        if (n < sizeof in) break;
    }
    int err = ferror(f);
    fclose(f);
    if (err) {
        fprintf(stderr, "clip compare: %s: read error\n", arg);
        return -1;
    }
    clip_buf_puts(b, "\"}");
    return 0;
}

static int read_stream(FILE *f, clip_buf *b)
{
    char tmp[65536];
    size_t n;
    while ((n = fread(tmp, 1, sizeof tmp, f)) > 0) clip_buf_append(b, tmp, n);
    return ferror(f) || b->oom ? -1 : 0;
}

static int cmd_compare(int argc, char **argv)
{
    clip_api_options opt;
    clip_api_options_default(&opt);
    clip_api_model_list models = {0};
    clip_ctx_params params = {0, getenv("CLIP_MATMUL")};   /* the library reads no environment */
    const char *subject = NULL, *subject_type = "image", *prompt_type = "text";
    const char *request_file = NULL, *version = NULL;
    const char **prompts = calloc((size_t)argc + 1, sizeof *prompts);
    int n_prompts = 0, named = 0, unnamed = 0;
    if (!prompts) return 1;
    for (int i = 2; i < argc; i++) {
        const char *a = argv[i];
        const char *v = i + 1 < argc ? argv[i + 1] : NULL;
        if (strcmp(a, "-h") == 0 || strcmp(a, "--help") == 0) {
            compare_usage(stdout);
            free(prompts);
            return 0;
        }
        if (strcmp(a, "--allow-private-urls") == 0) { opt.fetch.allow_private = 1; continue; }
        if (!v) {
            fprintf(stderr, "clip compare: %s wants a value (see clip compare --help)\n", a);
            free(prompts);
            return 2;
        }
        i++;
        long t;
        if (strcmp(a, "-m") == 0 || strcmp(a, "--model") == 0) {
            if (clip_api_model_add(&models, argv[i])) { free(prompts); return 2; }
        } else if (strcmp(a, "--threads") == 0 && parse_long(v, 0, 1024, &t) == 0) {
            params.n_threads = (int)t;
        } else if (strcmp(a, "--subject") == 0) subject = v;
        else if (strcmp(a, "--subject-type") == 0) subject_type = v;
        else if (strcmp(a, "--prompt-type") == 0) prompt_type = v;
        else if (strcmp(a, "--prompt") == 0) { prompts[n_prompts++] = v; unnamed = 1; }
        else if (strcmp(a, "--named-prompt") == 0) {
            if (!strchr(v, '=')) {
                fprintf(stderr, "clip compare: --named-prompt wants NAME=PROMPT\n");
                free(prompts);
                return 2;
            }
            prompts[n_prompts++] = v;
            named = 1;
        } else if (strcmp(a, "--request") == 0) request_file = v;
        else if (strcmp(a, "--clip-version-id") == 0) version = v;
        else if (strcmp(a, "--ca-file") == 0) opt.fetch.ca_file = v;
        else if (strcmp(a, "--max-pixels") == 0 && parse_long(v, 1, 1000000000L, &t) == 0)
            opt.max_pixels = (uint64_t)t;
        else {
            fprintf(stderr, "clip compare: unknown or bad option %s (see clip compare --help)\n", a);
            free(prompts);
            return 2;
        }
    }
    if (!request_file && (!subject || n_prompts == 0 || (named && unnamed))) {
        fprintf(stderr, "clip compare: give --subject and either --prompt or --named-prompt "
                        "(not both), or --request FILE\n");
        compare_usage(stderr);
        free(prompts);
        return 2;
    }
    /* Build the body exactly as a client would send it. */
    clip_buf body = {0};
    int rc = 1;
    if (request_file) {
        FILE *f = strcmp(request_file, "-") == 0 ? stdin : fopen(request_file, "rb");
        int bad = !f || read_stream(f, &body);
        if (f && f != stdin) fclose(f);
        if (bad) {
            fprintf(stderr, "clip compare: cannot read %s\n", request_file);
            goto out;
        }
    } else {
        int subj_img = strcmp(subject_type, "text") != 0, prm_img = strcmp(prompt_type, "image") == 0;
        clip_buf_puts(&body, "{\"subject\":");
        if (subj_img) {
            if (append_image_arg(&body, subject)) goto out;
        } else {
            clip_json_write_string(&body, subject, strlen(subject));
        }
        clip_buf_puts(&body, ",\"subject_type\":");
        clip_json_write_string(&body, subject_type, strlen(subject_type));
        clip_buf_puts(&body, ",\"prompt\":");
        clip_buf_putc(&body, named ? '{' : '[');
        for (int i = 0; i < n_prompts; i++) {
            const char *p = prompts[i];
            if (i) clip_buf_putc(&body, ',');
            if (named) {
                const char *eq = strchr(p, '=');
                clip_json_write_string(&body, p, (size_t)(eq - p));
                clip_buf_putc(&body, ':');
                p = eq + 1;
            }
            if (prm_img) {
                if (append_image_arg(&body, p)) goto out;
            } else {
                clip_json_write_string(&body, p, strlen(p));
            }
        }
        clip_buf_putc(&body, named ? '}' : ']');
        clip_buf_puts(&body, ",\"prompt_type\":");
        clip_json_write_string(&body, prompt_type, strlen(prompt_type));
        if (version) {
            clip_buf_puts(&body, ",\"clip_version_id\":");
            clip_json_write_string(&body, version, strlen(version));
        }
        clip_buf_putc(&body, '}');
    }
    if (body.oom) {
        fprintf(stderr, "clip compare: out of memory\n");
        goto out;
    }
    {
        clip_api_model slots[CLIP_API_MAX_MODELS];
        int n_models = 0;
        if (models.n == 0) {
            const char *env = clip_default_model_path();
            if (env && getenv("CLIP_MODEL")) {
                char *copy = strdup(env);
                if (!copy || clip_api_model_add_list(&models, copy)) { free(copy); goto out; }
                int lr = clip_api_models_load(&models, &params, slots, &n_models, "clip compare");
                free(copy);
                if (lr) goto out;
            } else if (clip_api_models_load(&models, &params, slots, &n_models, "clip compare")) {
                goto out;
            }
        } else if (clip_api_models_load(&models, &params, slots, &n_models, "clip compare")) {
            goto out;
        }
        clip_api a;
        clip_api_init(&a, &opt, slots, n_models);
        /* An unreadable CA file (said on stderr) leaves https URLs refused; http ones work. */
        clip_fetch_tls_new(&a.opt.fetch, "clip compare", &a.tls);
        clip_api_request req = {"POST", 4, "/clip/compare", 13, "", 0, NULL, 0, body.data,
                                body.len, now_seconds(), 0};
        clip_http_response r = {0};
        clip_api_handle(&a, &req, &r);
        if (r.status == 200 && !r.body.oom) {
            fwrite(r.body.data, 1, r.body.len, stdout);
            fputc('\n', stdout);
            rc = 0;
        } else {
            fprintf(stderr, "clip compare: %d %.*s\n", r.status, (int)r.body.len,
                    r.body.data ? r.body.data : "");
        }
        clip_buf_free(&r.body);
        clip_fetch_tls_free(a.tls);
        clip_api_models_free(slots, n_models);
    }
out:
    clip_buf_free(&body);
    free(prompts);
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
    if (strcmp(cmd, "compare") == 0) return cmd_compare(argc, argv);
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
