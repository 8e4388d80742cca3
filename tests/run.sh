#!/usr/bin/env bash
# tests/run.sh BINDIR -- runs every test and prints "N passed, N failed, N skipped".
#
# Tests are the C programs BINDIR/tests/test_* and the scripts tests/test_*.sh and
# tests/test_*.py. Each prints one line per check: "PASS ...", "FAIL ...", "SKIP ...".
# They find the binaries through $CLIP and $CLIP_CONVERT and run from the repository root.
set -u
cd "$(dirname "$0")/.." || exit 2
bindir=${1:-.}
export CLIP="$bindir/clip" CLIP_CONVERT="$bindir/clip-convert" CLIP_BINDIR="$bindir"
export CLIP_PYTHON=${CLIP_PYTHON:-/usr/bin/python3}
log=$(mktemp)
trap 'rm -f "$log"' EXIT

run_one() {
    local name=$1; shift
    local start=$SECONDS out
    out=$(mktemp)
    echo "== $name"
    "$@" > "$out" 2>&1
    local rc=$?
    cat "$out"
    cat "$out" >> "$log"
    # A program that dies (a crash, a sanitizer report) without a FAIL line still fails.
    if [ "$rc" -ne 0 ] && ! grep -q '^FAIL ' "$out"; then
        echo "FAIL $name exited with status $rc" | tee -a "$log"
    fi
    rm -f "$out"
    echo "   ($name: $((SECONDS - start)) s)"
}

for t in "$bindir"/tests/test_*; do
    # the compiled tests only: with BINDIR=. this folder also holds the scripts, run below
    case "$t" in *.sh|*.py) continue ;; esac
    [ -x "$t" ] || continue
    run_one "$(basename "$t")" "$t"
done
for t in tests/test_*.sh; do
    [ -f "$t" ] || continue
    run_one "$(basename "$t")" bash "$t"
done
for t in tests/test_*.py; do
    [ -f "$t" ] || continue
    run_one "$(basename "$t")" "$CLIP_PYTHON" "$t"
done

passed=$(grep -c '^PASS ' "$log")
failed=$(grep -c '^FAIL ' "$log")
skipped=$(grep -c '^SKIP ' "$log")
echo
echo "$passed passed, $failed failed, $skipped skipped"
[ "$failed" -eq 0 ]
