/* main.c -- clip-convert's command line, and convert(): the pipeline that turns a downloaded
 * CLIP checkpoint folder into one `.clip` file.
 *
 *   clip-convert SRC OUT.clip [--dtype f32|f16] [--name NAME] [--act quick_gelu|gelu]
 *                [--bpe FILE]
 *
 * SRC is a Hugging Face CLIP folder (config.json, optional preprocessor_config.json,
 * vocab.json + merges.txt, model.safetensors or pytorch_model.bin) or a folder holding an
 * OpenAI/OpenCLIP state dict (`visual.conv1.weight`, ...) whose hyperparameters are read
 * off the tensor shapes and whose tokenizer comes from bpe_simple_vocab_16e6.txt.gz.
 *
 * Everything is read in C: safetensors (JSON header through json.c), PyTorch zip
 * checkpoints (the zip directory and the data.pkl pickle, run on a small stack machine),
 * gzip (inflated by stb_image's zlib decoder). The output layout is docs/clip-format.md;
 * tensors are streamed from the mapped source to OUT.tmp, renamed into place at the end.
 * convert.h lists the rooms; convert() below calls them in order.
 *
 * This file holds the order of the steps and the lines the program prints about them; it
 * must not know any file format: each step's details live in its room. Start from convert().
 */
#include "convert.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>

static const char *usage =
    "usage: clip-convert SRC OUT.clip [--dtype f32|f16] [--name NAME] [--act quick_gelu|gelu]\n"
    "                    [--bpe bpe_simple_vocab_16e6.txt.gz]\n"
    "  SRC: a Hugging Face CLIP folder (config.json, vocab.json, merges.txt,\n"
    "       model.safetensors or pytorch_model.bin) or an OpenAI/OpenCLIP state dict folder.\n";

/* The steps, each in its room: the weights (weights.c, with safetensors.c or torch.c),
 * the naming scheme they use, the hyperparameters (hparams.c), the tokenizer (vocab.c),
 * the plan (plan.c), the file (write.c). */
static int convert(conv *cv, const char *out_path)
{
    struct stat st;
    if (stat(cv->src, &st) != 0 || !S_ISDIR(st.st_mode))
        return fail(cv, "missing folder %s", cv->src);
    if (open_weights(cv) != 0) return -1;
    fprintf(stderr, "clip-convert: read %s (%zu tensors)\n", cv->weights_path, cv->nt);
    if (find_tensor(cv, "vision_model.embeddings.patch_embedding.weight")) cv->openai_naming = 0;
    else if (find_tensor(cv, "visual.conv1.weight")) cv->openai_naming = 1;
    else if (find_tensor(cv, "visual.layer1.0.conv1.weight"))
        return fail(cv, "unknown architecture: ResNet image tower (visual.layer1...) is not supported");
    else
        return fail(cv, "unknown architecture: neither vision_model.embeddings.patch_embedding.weight "
                    "(Hugging Face) nor visual.conv1.weight (OpenAI) in %s", cv->weights_path);
    if (load_hparams(cv) != 0) return -1;
    if (cv->act_opt) cv->hp.act = strcmp(cv->act_opt, "gelu") == 0;
    if (check_hparams(cv) != 0) return -1;
    const char *from;
    if (load_tokenizer(cv, &from) != 0) return -1;
    if (cv->tok.n != cv->hp.vocab)
        return fail(cv, "tokenizer has %u tokens but the model's vocab_size is %u", cv->tok.n,
                    cv->hp.vocab);
    fprintf(stderr, "clip-convert: tokenizer from %s: %u tokens, %u merges\n", from, cv->tok.n,
            cv->tok.n_merges);
    derive_name(cv);
    const hparams *hp = &cv->hp;
    fprintf(stderr, "clip-convert: %s (%s naming): vision %u px / patch %u, width %u, %u layers, "
            "%u heads, mlp %u; text width %u, %u layers, %u heads, mlp %u, context %u; embed %u; %s\n",
            hp->name, cv->openai_naming ? "OpenAI" : "Hugging Face", hp->image_size, hp->patch,
            hp->v_width, hp->v_layers, hp->v_heads, hp->v_mlp, hp->t_width, hp->t_layers,
            hp->t_heads, hp->t_mlp, hp->context, hp->embed, hp->act ? "gelu" : "quick_gelu");
    if (build_plan(cv) != 0) return -1;
    size_t unused = 0;
    const char *first = NULL;
    for (size_t i = 0; i < cv->nt; i++)
        if (!cv->t[i].used && !strstr(cv->t[i].name, "position_ids")) {
            if (!unused++) first = cv->t[i].name;
        }
    if (unused)
        fprintf(stderr, "clip-convert: note: %zu source tensors not used (first: %s)\n", unused, first);
    uint64_t bytes, params;
    if (write_all(cv, out_path, &bytes, &params) != 0) return -1;
    fprintf(stderr, "clip-convert: wrote %s: model %s, %llu parameters, %s, %llu bytes\n",
            out_path, hp->name, (unsigned long long)params, cv->want_f16 ? "f16" : "f32",
            (unsigned long long)bytes);
    return 0;
}

int main(int argc, char **argv)
{
    static conv cv;
    const char *pos[2] = {NULL, NULL};
    int npos = 0;
    for (int i = 1; i < argc; i++) {
        const char *a = argv[i];
        const char *val = i + 1 < argc ? argv[i + 1] : NULL;
        if (!strcmp(a, "-h") || !strcmp(a, "--help")) { fputs(usage, stdout); return 0; }
        if (!strcmp(a, "--dtype") || !strcmp(a, "--name") || !strcmp(a, "--act") ||
            !strcmp(a, "--bpe")) {
            if (!val) { fprintf(stderr, "clip-convert: error: %s needs a value\n%s", a, usage); return 2; }
            i++;
            if (!strcmp(a, "--dtype")) {
                if (strcmp(val, "f32") && strcmp(val, "f16")) {
                    fprintf(stderr, "clip-convert: error: --dtype must be f32 or f16\n");
                    return 2;
                }
                cv.want_f16 = !strcmp(val, "f16");
            } else if (!strcmp(a, "--name")) {
                if (!*val || strlen(val) > 63) {
                    fprintf(stderr, "clip-convert: error: --name must be 1..63 bytes\n");
                    return 2;
                }
                cv.name_opt = val;
            } else if (!strcmp(a, "--act")) {
                if (strcmp(val, "quick_gelu") && strcmp(val, "gelu")) {
                    fprintf(stderr, "clip-convert: error: --act must be quick_gelu or gelu\n");
                    return 2;
                }
                cv.act_opt = val;
            } else {
                cv.bpe_opt = val;
            }
        } else if (a[0] == '-' && a[1]) {
            fprintf(stderr, "clip-convert: error: unknown option %s\n%s", a, usage);
            return 2;
        } else if (npos < 2) {
            pos[npos++] = a;
        } else {
            fprintf(stderr, "clip-convert: error: too many arguments\n%s", usage);
            return 2;
        }
    }
    if (npos != 2) { fputs(usage, stderr); return 2; }
    cv.src = pos[0];
    int rc = convert(&cv, pos[1]);
    if (rc) fprintf(stderr, "clip-convert: error: %s\n", cv.err);
    conv_free(&cv);
    return rc ? 1 : 0;
}
