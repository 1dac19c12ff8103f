#!/bin/sh
# Build qinfer's extension with AddressSanitizer + UndefinedBehaviorSanitizer in a copy of this
# working tree, and run the kernel and model tests against it. The checkout itself is left alone:
# its extension, build/ and editable install stay as they are.
#
#   scripts/sanitize.sh                          # kernel, model, session, fuzz and concurrency tests
#   scripts/sanitize.sh tests/test_kernels_int8.py -k vnni      # other pytest arguments
#   QINFER_SANITIZE=address scripts/sanitize.sh  # ASan only
#   QINFER_SANITIZE_DIR=/tmp/x scripts/sanitize.sh              # where the copy lives
#
# The copy is every file git tracks or would track (uncommitted changes included), refreshed each
# time; the instrumented build is incremental. The interpreter is not instrumented, so the ASan
# runtime is preloaded (it must come first) and leak detection is off: Python's own allocations
# live to exit by design. Python's allocator is switched to malloc so ASan sees every block, and
# allocation failures return NULL (numpy turns them into MemoryError, as without ASan). Any report
# fails the run: UBSan halts on the first, ASan always does, and the log is scanned for both.
# See docs/hardening.md.
set -eu

repo=$(git -C "$(dirname "$0")/.." rev-parse --show-toplevel)
dir=${QINFER_SANITIZE_DIR:-${TMPDIR:-/tmp}/qinfer-sanitize}
san=${QINFER_SANITIZE:-address,undefined}
python=${PYTHON:-python}
mkdir -p "$dir"

echo "== copy of $repo in $dir"
(cd "$repo" && git ls-files -z --cached --others --exclude-standard |
    tar --null -T - --ignore-failed-read -cf - 2>/dev/null) | tar -xf - -C "$dir"

echo "== build with -fsanitize=$san"
(cd "$dir" && QINFER_SANITIZE="$san" "$python" setup.py build_ext --inplace -q > build-sanitize.log 2>&1) ||
    { tail -30 "$dir/build-sanitize.log"; exit 1; }
so=$(ls "$dir"/src/qinfer/_ext/_kernels*.so)
if ! nm -D "$so" | grep -q __asan_ && ! nm -D "$so" | grep -q __ubsan_; then
    echo "error: $so is not instrumented" >&2
    exit 1
fi

# ASan's runtime first; then libstdc++, which python itself does not link: loaded only later (by
# onnx), ASan's __cxa_throw interceptor would find no real one and abort on the first C++ throw
runtime=
case "$san" in
    *address*) runtime="$(gcc -print-file-name=libasan.so) libstdc++.so.6" ;;
esac
cd "$dir"
if [ $# -eq 0 ]; then
    set -- tests/test_kernels_*.py tests/test_qops.py tests/test_cpu_dispatch.py \
        tests/test_models.py tests/test_quantize.py tests/test_session.py tests/test_serialize.py \
        tests/test_fuzz.py tests/test_concurrency.py tests/test_memory.py -m "slow or not slow"
fi
log="$dir/sanitize.log"
echo "== pytest $* (log: $log)"
status=0
(PYTHONPATH="$dir/src" \
    LD_PRELOAD="$runtime${LD_PRELOAD:+ $LD_PRELOAD}" \
    PYTHONMALLOC=malloc \
    ASAN_OPTIONS="detect_leaks=0:allocator_may_return_null=1:abort_on_error=1:${ASAN_OPTIONS:-}" \
    UBSAN_OPTIONS="halt_on_error=1:print_stacktrace=1:${UBSAN_OPTIONS:-}" \
    "$python" -m pytest -q -p no:cacheprovider "$@") > "$log" 2>&1 || status=$?
tail -5 "$log"
pattern="ERROR: AddressSanitizer|Sanitizer: CHECK failed|runtime error:|SUMMARY: (Address|UndefinedBehavior)Sanitizer"
reports=$(grep -c -E "$pattern" "$log" || true)
echo "== sanitizer reports: $reports; pytest exit status: $status"
if [ "$reports" -ne 0 ]; then
    grep -n -E -A20 "$pattern" "$log" | head -80
    exit 1
fi
exit "$status"
