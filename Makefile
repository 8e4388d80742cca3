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

LIB_SRC  := clip.c tokenizer.c vision.c text.c json.c
LIB_OBJ  := $(LIB_SRC:%.c=$(BUILD)/%.o)
CLIP_OBJ := $(BUILD)/main.o $(BUILD)/http.o $(LIB_OBJ)
CONV_OBJ := $(BUILD)/tools/clip-convert.o $(BUILD)/json.o
TEST_SRC := $(wildcard tests/test_*.c)
TEST_BIN := $(TEST_SRC:tests/%.c=$(BINDIR)/tests/%)

.PHONY: all test sanitize clean test-bins
all: $(BINDIR)/clip $(BINDIR)/clip-convert

$(BUILD)/%.o: %.c $(wildcard *.h) tools/unicode_tables.h
	@mkdir -p $(dir $@)
	$(CC) $(CFLAGS) -c $< -o $@

$(BINDIR)/clip: $(CLIP_OBJ)
	@mkdir -p $(dir $@)
	$(CC) $(LDFLAGS) $^ -o $@ $(LDLIBS)

$(BINDIR)/clip-convert: $(CONV_OBJ)
	@mkdir -p $(dir $@)
	$(CC) $(LDFLAGS) $^ -o $@ $(LDLIBS)

$(BINDIR)/tests/%: tests/%.c tests/check.h $(LIB_OBJ)
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
	rm -rf $(BUILD) build clip clip-convert tests/test_json tests/test_tokenizer

# README command 1: install what is missing, build, serve the default model on :9001.
.PHONY: run
run:
	@tools/install-deps.sh
	@$(MAKE) --no-print-directory all
	./clip serve
