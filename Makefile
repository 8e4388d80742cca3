# Makefile -- builds ./clip (server + CLI) and ./clip-convert, runs the tests.
#
#   make                 ./clip and ./clip-convert (portable -O2)
#   make NATIVE=1        the same tuned for this CPU (-march=native)
#   make TLS=0           without OpenSSL (https image URLs then refused with a clear error)
#   make test            every test (tests/run.sh)
#   make sanitize        every test again, built with ASan + UBSan into build/san/
#   make clean

CC      ?= cc
BUILD   ?= build
BINDIR  ?= .
SAN     ?= 0
NATIVE  ?= 0

BLAS_CFLAGS := $(shell pkg-config --cflags openblas 2>/dev/null)
BLAS_LIBS   := $(shell pkg-config --libs openblas 2>/dev/null || echo -lopenblas)

CFLAGS  := -std=c11 -O2 -g -Wall -Wextra -Werror -D_GNU_SOURCE -pthread $(BLAS_CFLAGS) -I. $(EXTRA_CFLAGS)
LDLIBS  := $(BLAS_LIBS) -lstb -lm -pthread

ifneq ($(TLS),0)
  ifeq ($(shell pkg-config --exists openssl 2>/dev/null && echo yes),yes)
    CFLAGS += -DCLIP_HAVE_TLS $(shell pkg-config --cflags openssl)
    LDLIBS += $(shell pkg-config --libs openssl)
  endif
endif
ifeq ($(NATIVE),1)
  CFLAGS += -march=native
endif
ifeq ($(SAN),1)
  CFLAGS  += -O1 -fsanitize=address,undefined -fno-omit-frame-pointer -fno-sanitize-recover=all
  LDFLAGS += -fsanitize=address,undefined
endif

LIB_SRC  := error.c clip.c pool.c kernels.c ref.c tokenizer.c image.c vision.c text.c json.c
LIB_OBJ  := $(LIB_SRC:%.c=$(BUILD)/%.o)
# The server and the API beside it (none of it in the library: the engine knows no HTTP).
SERVER_SRC := http.c base64.c textcache.c batcher.c fetch.c api.c server.c
CLIP_OBJ := $(BUILD)/main.o $(SERVER_SRC:%.c=$(BUILD)/%.o) $(LIB_OBJ)
# The converter's rooms (tools/convert/convert.h lists them); main.c apart, since the fuzz
# harness links the rest.
CONV_SRC := $(addprefix tools/convert/,weights.c safetensors.c zip.c pickle.c torch.c \
                hparams.c vocab.c plan.c write.c util.c)
CONV_OBJ := $(BUILD)/tools/convert/main.o $(CONV_SRC:%.c=$(BUILD)/%.o) $(BUILD)/json.o
TEST_SRC := $(wildcard tests/test_*.c)
TEST_BIN := $(TEST_SRC:tests/%.c=$(BINDIR)/tests/%)

.PHONY: all test sanitize clean test-bins
all: $(BINDIR)/clip $(BINDIR)/clip-convert

$(BUILD)/%.o: %.c $(wildcard *.h)
	@mkdir -p $(dir $@)
	$(CC) $(CFLAGS) -c $< -o $@

$(BUILD)/tools/convert/%.o: tools/convert/%.c tools/convert/convert.h $(wildcard *.h)
	@mkdir -p $(dir $@)
	$(CC) $(CFLAGS) -c $< -o $@

$(BINDIR)/clip: $(CLIP_OBJ)
	@mkdir -p $(dir $@)
	$(CC) $(LDFLAGS) $^ -o $@ $(LDLIBS)

$(BINDIR)/clip-convert: $(CONV_OBJ)
	@mkdir -p $(dir $@)
	$(CC) $(LDFLAGS) $^ -o $@ $(LDLIBS)

$(BINDIR)/tests/%: tests/%.c $(wildcard tests/*.h) $(LIB_OBJ)
	@mkdir -p $(dir $@)
	$(CC) $(CFLAGS) $(LDFLAGS) $< $(LIB_OBJ) -o $@ $(LDLIBS)

test-bins: all $(TEST_BIN)

test: test-bins
	@tests/run.sh $(BINDIR)

sanitize:
	@$(MAKE) --no-print-directory BUILD=build/san BINDIR=build/san SAN=1 test-bins
	@ASAN_OPTIONS=detect_leaks=1:abort_on_error=1 UBSAN_OPTIONS=print_stacktrace=1 \
		tests/run.sh build/san

clean:
	rm -rf $(BUILD) build clip clip-convert tools/bench $(TEST_BIN)

# The default model's zero-shot accuracy through the server, alone (tests/test_zeroshot.py,
# which make test runs too; numpy).
.PHONY: zeroshot
zeroshot: all
	CLIP=$(BINDIR)/clip /usr/bin/python3 tests/test_zeroshot.py

# README command 1: install what is missing, build, serve the default model on :9001.
.PHONY: run
run:
	@tools/install-deps.sh
	@$(MAKE) --no-print-directory all
	./clip serve

# ---- Benchmark and load test (issue 5) ------------------------------------------------
#   make bench      ours (engine + server) and the peers (PyTorch, ONNX Runtime) on one
#                   random-weight ViT-B/32, a table and build/bench/results.json
#                   (BENCH_ARGS="--runs 3 --no-torch ..." passes options to tools/bench.py)
#   make loadtest   concurrent clients against ./clip serve (LOADTEST_ARGS="--images-only")
.PHONY: bench loadtest
$(BINDIR)/tools/bench: tools/bench.c $(LIB_OBJ)
	@mkdir -p $(dir $@)
	$(CC) $(CFLAGS) $(LDFLAGS) $< $(LIB_OBJ) -o $@ $(LDLIBS)

bench: all $(BINDIR)/tools/bench
	/usr/bin/python3 tools/bench.py $(BENCH_ARGS)

loadtest: all
	/usr/bin/python3 tools/loadtest.py $(LOADTEST_ARGS)

# ---- Reliability (issue 7): fuzzing, valgrind, soak ------------------------------------
#   make fuzz FUZZ_SECONDS=N  every tests/fuzz/fuzz_*.c built with clang-14 (libFuzzer, ASan,
#                             UBSan) into build/fuzz/, each run N s (30) on a temp copy of its
#                             seeds tests/fuzz/corpus/NAME; crashes land in build/fuzz/crash-*
#   make valgrind             the C test programs, then the CLI end to end (test_e2e.py and
#                             test_convert.sh through valgrind-wrapped binaries, on our committed
#                             fixtures only: ../shared/reference takes hours under memcheck)
#   make soak SOAK_SECONDS=N  16 clients of mixed image/text traffic for N s (300)
.PHONY: fuzz fuzz-bins valgrind soak
FUZZ_CC      ?= clang-14
FUZZ_SECONDS ?= 30
SOAK_SECONDS ?= 300
FUZZ_DIR     := build/fuzz
FUZZ_CFLAGS  := -std=c11 -g -O1 -Wall -Wextra -Werror -D_GNU_SOURCE -pthread $(BLAS_CFLAGS) -I. \
                -fno-omit-frame-pointer -fsanitize=address,undefined -fno-sanitize-recover=all
FUZZ_BIN     := $(patsubst tests/fuzz/%.c,$(FUZZ_DIR)/%,$(wildcard tests/fuzz/fuzz_*.c))
# The library as an archive, so each harness links only what it uses (fuzz_tokenizer takes
# tokenizer.o and error.o alone); of the server, the two rooms fuzz_http drives: http.c and
# base64.c, parsers on buffers that know no sockets.
FUZZ_OBJ     := $(patsubst %.c,$(FUZZ_DIR)/%.o,$(LIB_SRC) http.c base64.c)
VALGRIND     := valgrind --tool=memcheck --leak-check=full --errors-for-leak-kinds=definite \
                --error-exitcode=99 --track-fds=no

$(FUZZ_OBJ): $(FUZZ_DIR)/%.o: %.c $(wildcard *.h)
	@mkdir -p $(dir $@)
	$(FUZZ_CC) $(FUZZ_CFLAGS) -fsanitize=fuzzer-no-link -c $< -o $@

$(FUZZ_DIR)/libclip.a: $(FUZZ_OBJ)
	rm -f $@ && ar rcs $@ $^

# The converter without its main(), for fuzz_convert (before libclip.a: it needs json.o).
FUZZ_CONV_OBJ := $(patsubst %.c,$(FUZZ_DIR)/%.o,$(CONV_SRC))

$(FUZZ_CONV_OBJ): $(FUZZ_DIR)/%.o: %.c tools/convert/convert.h $(wildcard *.h)
	@mkdir -p $(dir $@)
	$(FUZZ_CC) $(FUZZ_CFLAGS) -fsanitize=fuzzer-no-link -c $< -o $@

$(FUZZ_DIR)/libconvert.a: $(FUZZ_CONV_OBJ)
	rm -f $@ && ar rcs $@ $^

$(FUZZ_BIN): $(FUZZ_DIR)/%: tests/fuzz/%.c $(FUZZ_DIR)/libconvert.a $(FUZZ_DIR)/libclip.a
	$(FUZZ_CC) $(FUZZ_CFLAGS) -fsanitize=fuzzer $< $(FUZZ_DIR)/libconvert.a $(FUZZ_DIR)/libclip.a \
	    -o $@ $(LDLIBS)

fuzz-bins: $(FUZZ_BIN)

fuzz: fuzz-bins
	@failed=0; for bin in $(FUZZ_BIN); do \
	    name=$${bin##*/fuzz_}; seeds=$$(mktemp -d); log=$(FUZZ_DIR)/fuzz_$$name.log; \
	    [ -d tests/fuzz/corpus/$$name ] && cp -R tests/fuzz/corpus/$$name/. $$seeds/; \
	    nice $$bin -max_total_time=$(FUZZ_SECONDS) -timeout=20 -print_final_stats=1 \
	        -artifact_prefix=$(FUZZ_DIR)/crash-$$name- $$seeds > $$log 2>&1; rc=$$?; \
	    rm -rf $$seeds; \
	    runs=$$(sed -n 's/^stat::number_of_executed_units: *//p' $$log); \
	    if [ $$rc -eq 0 ]; then echo "PASS fuzz_$$name: $$runs runs in $(FUZZ_SECONDS) s"; \
	    else failed=1; echo "FAIL fuzz_$$name: exit $$rc, see $$log"; tail -n 40 $$log; fi; \
	done; exit $$failed

# Only memcheck's verdict counts here (exit 99, or an error or definite leak in any log): the
# programs' own FAIL lines are shown, since their timing checks cannot hold 20-50x slower.
valgrind: test-bins
	@vg=$$(mktemp -d); failed=0; \
	note() { grep '^FAIL' $$vg/out | sed 's/^/   under valgrind: /'; }; \
	for t in $(TEST_BIN); do \
	    [ -x $$t ] || continue; echo "== valgrind $$t"; \
	    OPENBLAS_NUM_THREADS=1 nice $(VALGRIND) --log-file=$$vg/$${t##*/}.%p.vg $$t > $$vg/out 2>&1; \
	    rc=$$?; [ $$rc -eq 99 ] && failed=1; [ $$rc -ne 0 ] && note; \
	done; \
	for b in clip clip-convert; do \
	    printf '#!/bin/sh\nOPENBLAS_NUM_THREADS=1 exec nice %s --log-file=%s/%s.%%p.vg %s "$$@"\n' \
	        "$(VALGRIND)" $$vg $$b $(abspath $(BINDIR))/$$b > $$vg/$$b; chmod +x $$vg/$$b; \
	done; \
	echo "== valgrind CLI end to end: test_e2e.py"; \
	CLIP=$$vg/clip CLIP_CONVERT=$$vg/clip-convert CLIP_REFERENCE_DIR=$$vg/none \
	    /usr/bin/python3 tests/test_e2e.py > $$vg/out 2>&1 || note; \
	echo "== valgrind CLI end to end: test_convert.sh"; \
	CLIP=$$vg/clip CLIP_CONVERT=$$vg/clip-convert CLIP_REFERENCE_DIR=$$vg/none \
	    bash tests/test_convert.sh > $$vg/out 2>&1 || note; \
	bad=$$(grep -l -E 'ERROR SUMMARY: [1-9]|definitely lost: [1-9]' $$vg/*.vg); \
	echo "$$(ls $$vg/*.vg | wc -l) processes checked by valgrind"; \
	if [ -n "$$bad" ]; then failed=1; for f in $$bad; do echo "FAIL valgrind: $$f"; \
	    grep -A12 -m3 -E '^==[0-9]+== (Invalid|Conditional|Use of|[0-9,]+ bytes .* definitely)' $$f; done; fi; \
	if [ $$failed -eq 0 ]; then rm -rf $$vg; echo "PASS valgrind: no invalid access, no definite leak"; \
	else echo "FAIL valgrind: logs kept in $$vg"; fi; exit $$failed

soak: all
	SOAK_SECONDS=$(SOAK_SECONDS) CLIP=$(BINDIR)/clip CLIP_CONVERT=$(BINDIR)/clip-convert \
	    /usr/bin/python3 tests/test_soak.py
