#!/usr/bin/env bash
# Build mdstream's extensions with AddressSanitizer + UndefinedBehaviorSanitizer
# into a private copy of the package (never touching the in-place .so files in
# mdstream/) and run the test suite against that build with the ASan runtime
# preloaded.  Any sanitizer report fails the run.
#
#   scripts/sanitize.sh                    # build + whole suite (python -m pytest tests/)
#   scripts/sanitize.sh tests/test_ring.py -k wrap   # build + the given pytest arguments
#   MDSTREAM_SANITIZE_SUBSET=1 scripts/sanitize.sh   # the documented CI subset (docs/reliability.md)
#   scripts/sanitize.sh --build-only       # only build (the fuzz harnesses reuse it)
#
# Environment:
#   MDSTREAM_ASAN_DIR   where the sanitized copy lives (default: build/asan)
#   MDSTREAM_DEBUG=1    also build with assertions and Cython bounds checks (-O0)
#
# Prints the directory to put on PYTHONPATH as the last line of --build-only.
set -euo pipefail

ROOT=$(cd "$(dirname "$0")/.." && pwd)
OUT=${MDSTREAM_ASAN_DIR:-$ROOT/build/asan}
TREE=$OUT/tree
LOGS=$OUT/logs
PY=${PYTHON:-python}

build_only=0
if [ "${1:-}" = "--build-only" ]; then
    build_only=1
    shift
fi

mkdir -p "$TREE" "$LOGS"

# 1. Sync the package sources into the private tree (content-compared, mtimes
#    kept, so an unchanged tree is not rebuilt).  Compiled modules of the
#    in-place build are never copied.
"$PY" - "$ROOT" "$TREE" <<'PYEOF'
import filecmp, os, shutil, sys
root, tree = sys.argv[1:3]
skip_suffix = (".so", ".pyd", ".pyc", ".html")
wanted = set()
for rel in ("setup.py", "pyproject.toml", "README.md"):
    wanted.add(rel)
for dirpath, dirnames, filenames in os.walk(os.path.join(root, "mdstream")):
    dirnames[:] = [d for d in dirnames if d != "__pycache__"]
    for f in filenames:
        if f.endswith(skip_suffix) or (f.startswith("_") and f.endswith(".c") and os.path.basename(dirpath) == "mdstream"):
            continue
        wanted.add(os.path.relpath(os.path.join(dirpath, f), root))
for rel in sorted(wanted):
    src, dst = os.path.join(root, rel), os.path.join(tree, rel)
    if not os.path.exists(src):
        continue
    if os.path.exists(dst) and filecmp.cmp(src, dst, shallow=False):
        continue
    os.makedirs(os.path.dirname(dst), exist_ok=True)
    shutil.copy2(src, dst)
# Files deleted upstream disappear from the copy too (compiled modules stay).
for dirpath, dirnames, filenames in os.walk(os.path.join(tree, "mdstream")):
    for f in filenames:
        rel = os.path.relpath(os.path.join(dirpath, f), tree)
        if rel not in wanted and not f.endswith(skip_suffix) and not (f.startswith("_") and f.endswith(".c")):
            os.unlink(os.path.join(tree, rel))
PYEOF

# 2. Build in place *inside the copy*.
start=$(date +%s)
(
    cd "$TREE"
    MDSTREAM_SANITIZE=address,undefined "$PY" setup.py -q build_ext --inplace -j 2 >"$LOGS/build.log" 2>&1
) || { cat "$LOGS/build.log"; echo "sanitize.sh: sanitized build failed" >&2; exit 2; }
for mod in _ring _callback _sinks _dbghelp_layout; do
    so=$(ls "$TREE"/mdstream/$mod.*.so 2>/dev/null | head -1)
    if [ -z "$so" ] || [ "$(nm -D "$so" 2>/dev/null | grep -c __asan_)" = 0 ]; then
        echo "sanitize.sh: $TREE/mdstream/$mod is missing or not built with ASan" >&2
        exit 2
    fi
done
echo "sanitize.sh: sanitized build ready in $(( $(date +%s) - start )) s: $TREE" >&2

LIBASAN=$(gcc -print-file-name=libasan.so)
if [ ! -e "$LIBASAN" ]; then
    echo "sanitize.sh: gcc has no libasan.so" >&2
    exit 2
fi

if [ "$build_only" = 1 ]; then
    echo "LD_PRELOAD=$LIBASAN" >&2
    echo "$TREE"
    exit 0
fi

# 3. Run the tests with the runtime preloaded.  CPython leaks at exit by design,
#    so leak checking is off (leaks are tested by tests/test_native_stress.py and
#    by the native stress program under LSan instead).  Reports go to files so
#    that a halt inside pytest's captured output is never lost.
rm -f "$LOGS"/asan.* "$LOGS"/ubsan.*
# libstdc++ right after the runtime: ASan resolves its __cxa_throw interceptor
# when it starts, and a C++ extension loaded later (matplotlib's ft2font in the
# benchmark smoke test) would otherwise abort on its first exception.
LIBSTDCXX=$(gcc -print-file-name=libstdc++.so)
[ -e "$LIBSTDCXX" ] || LIBSTDCXX=""
export LD_PRELOAD="$LIBASAN${LIBSTDCXX:+ $LIBSTDCXX}"
export ASAN_OPTIONS="detect_leaks=0:halt_on_error=1:abort_on_error=0:exitcode=86:strict_string_checks=1:detect_stack_use_after_return=1:check_initialization_order=1:allocator_may_return_null=1:log_path=$LOGS/asan"
export UBSAN_OPTIONS="halt_on_error=1:print_stacktrace=1:exitcode=87:log_path=$LOGS/ubsan"
export PYTHONPATH="$TREE${PYTHONPATH:+:$PYTHONPATH}"
export MDSTREAM_SANITIZED=1     # tests may skip what cannot work under ASan (says why)
export PYTHONFAULTHANDLER=1

# Paths given relative to the caller's directory (pytest runs in the tree).
args=()
for a in "$@"; do
    base=${a%%::*}
    if [ -n "$base" ] && [ -e "$base" ]; then
        a="$(cd "$(dirname "$base")" && pwd)/$(basename "$base")${a#"$base"}"
    fi
    args+=("$a")
done
if [ ${#args[@]} -eq 0 ]; then
    if [ "${MDSTREAM_SANITIZE_SUBSET:-0}" = 1 ]; then
        # The documented subset (docs/reliability.md): everything but the
        # MinGW cross-compile layout checks, which run none of mdstream's C code.
        args=("$ROOT/tests" --ignore "$ROOT/tests/test_mingw_layout.py")
    else
        args=("$ROOT/tests")
    fi
fi

start=$(date +%s)
set +e
# cwd = the sanitized tree: `python -m pytest` puts the cwd first on sys.path,
# so `import mdstream` (here and in child processes) is the sanitized copy.
( cd "$TREE" && "$PY" -m pytest -p no:cacheprovider -q "${args[@]}" )
rc=$?
set -e
elapsed=$(( $(date +%s) - start ))

reports=$(ls "$LOGS"/asan.* "$LOGS"/ubsan.* 2>/dev/null || true)
if [ -n "$reports" ]; then
    echo "sanitize.sh: SANITIZER REPORTS:" >&2
    for f in $reports; do
        echo "==== $f" >&2
        cat "$f" >&2
    done
    [ $rc -eq 0 ] && rc=1
fi
echo "sanitize.sh: pytest exit $rc after $elapsed s; sanitizer reports: $(echo "$reports" | grep -c . || true)" >&2
exit $rc
