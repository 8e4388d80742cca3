/* fuzz_convert.c -- libFuzzer harness for clip-convert's weight readers (tools/convert/):
 * safetensors, the zip directory of a PyTorch checkpoint with its stored and deflated
 * entries, and the data.pkl pickle machine.
 *
 *   make fuzz FUZZ_SECONDS=180      (builds build/fuzz/fuzz_convert; seeds tests/fuzz/corpus/convert)
 *
 * The converter is a program, but its readers already work from memory: each takes the
 * mapped weight file as cv->map (pointer + size) and nothing else. So the harness links the
 * converter's objects except its main.c (build/fuzz/libconvert.a) and hands the fuzz input
 * to the readers as that map -- the exact code the program runs, no temp files, no copy of
 * the readers. Every input goes through all three: load_safetensors, load_torch_zip
 * (directory, entries, CRC, inflate, then the pickle inside), and run_pickle on the raw
 * bytes (a pickle reached through the zip needs a matching CRC, which mutations almost
 * never keep).
 *
 * Invariants: a failure always says why (cv->err); after a success every tensor's data can
 * be read up to its last element (ASan sees a read past the input or the inflated entry),
 * and every tensor name is unique and NUL-clean. */
#include "tools/convert/convert.h"

#include <stdio.h>
#include <stdlib.h>

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

static void require(int ok, const char *what)
{
    if (!ok) {
        fprintf(stderr, "invariant broken: %s\n", what);
        abort();
    }
}

/* Reads the first and last element of every tensor the reader accepted. */
static void touch_tensors(conv *cv)
{
    volatile float sink = 0;
    for (size_t i = 0; i < cv->nt; i++) {
        stensor *t = &cv->t[i];
        require(t->name && find_tensor(cv, t->name) == t, "tensor name not unique");
        require(t->ndim >= 0 && t->ndim <= MAX_SRC_DIMS, "tensor rank out of range");
        if (t->dtype == DT_OTHER || t->numel == 0) continue;
        const uint8_t *p = tensor_data(cv, t);
        if (!p) {
            require(cv->err[0] != 0, "tensor_data failed without a reason");
            continue;
        }
        sink += elem(p, t->dtype, 0);
        sink += elem(p, t->dtype, t->numel - 1);
    }
    release_entries(cv);
    (void)sink;
}

/* A fresh converter state over the input; conv_free would munmap the map, so it is
 * detached first. */
static void run_reader(const uint8_t *data, size_t size, int (*reader)(conv *))
{
    conv *cv = calloc(1, sizeof *cv);
    if (!cv) return;
    snprintf(cv->weights_path, sizeof cv->weights_path, "fuzz-input");
    cv->map.data = data;
    cv->map.size = size;
    if (reader(cv) == 0) touch_tensors(cv);
    else require(cv->err[0] != 0, "a reader failed without a reason");
    cv->map.data = NULL;
    conv_free(cv);
    free(cv);
}

static int raw_pickle(conv *cv)
{
    pickle pk = {.cv = cv, .start = cv->map.data, .p = cv->map.data,
                 .end = cv->map.data + cv->map.size, .limit = cv->map.size + 16};
    pval *top = run_pickle(&pk);
    /* Without a zip there are no storage entries: any tensor in the dict must be refused,
     * a dict of none accepted. */
    int rc = top ? collect_state_dict(cv, top, "archive") : -1;
    pickle_free(&pk);
    return rc;
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    run_reader(data, size, load_safetensors);
    run_reader(data, size, load_torch_zip);
    run_reader(data, size, raw_pickle);
    return 0;
}
