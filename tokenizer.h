/* tokenizer.h -- the tokenizer as the rest of the library sees it (tokenizer.c).
 *
 * A clip_tokenizer is built from a .clip file's tokenizer section (docs/clip-format.md) and
 * is read-only afterwards. clip.c builds one per model and offers it to users as
 * clip_tokenize (clip.h); the tests and the fuzzer build their own. tokenizer.c depends on
 * nothing of the engine but error.h. */
#ifndef CLIP_TOKENIZER_H
#define CLIP_TOKENIZER_H

#include "clip.h"

typedef struct clip_tokenizer clip_tokenizer;

/* Parses and validates the tokenizer section. `section` stays owned by the caller (the
 * mmap) and must outlive the tokenizer. */
clip_status clip_tokenizer_new(const uint8_t *section, size_t size, uint32_t vocab_size,
                               uint32_t context_length, clip_tokenizer **out,
                               clip_error *err);
void clip_tokenizer_free(clip_tokenizer *tok);

/* clip_tokenize (clip.h) on this tokenizer: exactly context_length ids. */
clip_status clip_tokenizer_encode(const clip_tokenizer *tok, const char *text, size_t len,
                                  int32_t *ids, clip_error *err);

#endif
