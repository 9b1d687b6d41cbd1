#!/usr/bin/env bash
# Run one atheris harness (fuzz/fuzz_<target>.py) against the ASan+UBSan build
# of the extension (scripts/sanitize.sh --build-only) with the ASan runtime
# preloaded.
#
#   scripts/fuzz.sh trace|attach|minidump|live_ring [libFuzzer flags...]
#   scripts/fuzz.sh attach -runs=1000000
#
# The seed corpus fuzz/corpus/<target> is read, never written; new inputs go to
# build/fuzz/corpus/<target>, crashes / timeouts to fuzz/artifacts/<target>/.
#
# attach and live_ring (native code: the C core behind Ring, Batch and the
# sinks) run against the ASan build by default; trace and minidump are pure
# Python + numpy (no mdstream C code runs), so they run against the in-place
# build, 16x faster.  MDSTREAM_FUZZ_ASAN=1 / 0 forces either way.
set -euo pipefail

ROOT=$(cd "$(dirname "$0")/.." && pwd)
target=${1:?usage: scripts/fuzz.sh trace|attach|minidump|live_ring [libFuzzer flags]}
shift
harness="$ROOT/fuzz/fuzz_$target.py"
[ -f "$harness" ] || { echo "no harness $harness" >&2; exit 2; }
PY=${PYTHON:-python}
"$PY" -c "import atheris" 2>/dev/null || { echo "fuzz.sh: atheris is not installed (pip install atheris)" >&2; exit 2; }

case "$target" in
    trace) max_len=4096 ;;
    minidump) max_len=8192 ;;
    attach) max_len=12400 ;;
    live_ring) max_len=1024 ;;
    spill) max_len=4400 ;;   # a whole raw manifest header (4096) plus extents
    *) max_len=4096 ;;
esac

work="$ROOT/build/fuzz/corpus/$target"
artifacts="$ROOT/fuzz/artifacts/$target"
mkdir -p "$work" "$artifacts"

case "$target" in
    attach|live_ring) use_asan=${MDSTREAM_FUZZ_ASAN:-1} ;;
    *) use_asan=${MDSTREAM_FUZZ_ASAN:-0} ;;
esac
if [ "$use_asan" = 1 ]; then
    TREE=$("$ROOT/scripts/sanitize.sh" --build-only 2>/dev/null | tail -1)
    export PYTHONPATH="$TREE${PYTHONPATH:+:$PYTHONPATH}"
    # gcc's libasan exports weak no-op coverage callbacks that would hide
    # atheris' libFuzzer: a shim preloaded first forwards them (fuzz/asan_cov_shim.c).
    core=$("$PY" -c 'import atheris, glob, os; print(glob.glob(os.path.join(os.path.dirname(atheris.__file__), "core_with_libfuzzer*.so"))[0])')
    shim="$ROOT/build/fuzz/asan_cov_shim.so"
    if [ ! -f "$shim" ] || [ "$ROOT/fuzz/asan_cov_shim.c" -nt "$shim" ]; then
        mkdir -p "$(dirname "$shim")"
        gcc -shared -fPIC -O2 "$ROOT/fuzz/asan_cov_shim.c" -o "$shim" -ldl
    fi
    export MDS_ATHERIS_CORE="$core"
    # libstdc++ after libasan: ASan's __cxa_throw interceptor must find it at
    # start-up (atheris is C++/pybind11 and throws when Python raises).
    export LD_PRELOAD="$shim:$(gcc -print-file-name=libasan.so):$(gcc -print-file-name=libstdc++.so)"
    export ASAN_OPTIONS="verify_asan_link_order=0:detect_leaks=0:halt_on_error=1:abort_on_error=1:allocator_may_return_null=1:detect_stack_use_after_return=0:quarantine_size_mb=64:malloc_context_size=10${MDS_EXTRA_ASAN_OPTIONS:+:$MDS_EXTRA_ASAN_OPTIONS}"
    export UBSAN_OPTIONS="halt_on_error=1:print_stacktrace=1:abort_on_error=1"
    cd "$TREE"   # so `import mdstream` is the sanitized copy
fi

PYBIN=$("$PY" -c 'import sys; print(sys.executable)')   # the real binary: LD_PRELOAD must not meet pyenv's shims
echo "fuzz.sh: $target against $("$PYBIN" -c 'import mdstream._ring as r; print(r.__file__)')" >&2
# libFuzzer exits without Python's atexit: the harnesses' ring files go here.
scratch_base=/dev/shm
[ -w "$scratch_base" ] || scratch_base=${TMPDIR:-/tmp}
MDS_FUZZ_SCRATCH=$(mktemp -d "$scratch_base/mds-fuzz-$target-XXXXXX")
export MDS_FUZZ_SCRATCH
trap 'rm -rf "$MDS_FUZZ_SCRATCH"' EXIT
"$PYBIN" "$harness" "$work" "$ROOT/fuzz/corpus/$target" \
    -max_len=$max_len -timeout=20 -rss_limit_mb=4096 -print_final_stats=1 \
    -artifact_prefix="$artifacts/" "$@"
