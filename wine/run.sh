#!/usr/bin/env bash
# Build the Wine harness and stream one real Wine MiniDumpWriteDump through
# mdstream's callback into a /dev/shm ring that this script's Python drains,
# then compare with the file Wine wrote itself (docs/windows.md).
#
#   wine/run.sh [--arch x64|x86] [--force] [normal|full|self]
#     normal   a normal dump of a live child process (the default)
#     full     MiniDumpWithFullMemory with 64 MiB of ballast (~100 MB)
#     self     the harness dumps itself from a second thread
#     --arch   x64 (default): harness built with x86_64-w64-mingw32-gcc, run by wine64;
#              x86: built with i686-w64-mingw32-gcc, run by 32-bit Wine (Wine's 32-bit dbghelp)
#     --force  replace the files of an earlier run in OUT (otherwise refused)
#
# Needs mdstream installed for $PYTHON (pip install . or pip install -e .), and
#   x64: gcc-mingw-w64-x86-64, wine64 (loader /usr/lib/wine/wine64)
#   x86: gcc-mingw-w64-i686, and 32-bit Wine: dpkg --add-architecture i386 &&
#        apt-get update && apt-get install wine32:i386 (loader /usr/lib/wine/wine)
# Environment: PYTHON (default python), WINE (the loader), WINEPREFIX (default
# OUT/prefix, one prefix serves both architectures), OUT (output directory,
# created 0700 if missing; default a new temporary directory).
set -euo pipefail
ROOT=$(cd "$(dirname "$0")/.." && pwd)
PY=${PYTHON:-python}

usage() { echo "usage: wine/run.sh [--arch x64|x86] [--force] [normal|full|self]" >&2; exit 2; }
die() { echo "wine/run.sh: $*" >&2; exit 1; }

arch=x64 mode=normal force=0
while [ $# -gt 0 ]; do
    case "$1" in
        --arch) [ $# -ge 2 ] || usage; arch=$2; shift 2 ;;
        --arch=*) arch=${1#--arch=}; shift ;;
        --force) force=1; shift ;;
        normal|full|self) mode=$1; shift ;;
        -h|--help) sed -n '2,20p' "$0" | sed 's/^# \{0,1\}//'; exit 0 ;;
        *) usage ;;
    esac
done
case "$arch" in
    x64) CC=x86_64-w64-mingw32-gcc cc_package=gcc-mingw-w64-x86-64 loader=/usr/lib/wine/wine64
         wine_hint="apt-get install wine64" ;;
    x86) CC=i686-w64-mingw32-gcc cc_package=gcc-mingw-w64-i686 loader=/usr/lib/wine/wine
         wine_hint="dpkg --add-architecture i386 && apt-get update && apt-get install wine32:i386" ;;
    *) usage ;;
esac
case "$mode" in
    normal) args=(--type 0) ;;
    full) args=(--type 2 --ballast 64) ;;
    self) args=(--type 0 --target self) ;;
esac
WINE=${WINE:-$loader}
command -v "$CC" >/dev/null || die "$CC not found (apt-get install $cc_package)"
[ -x "$WINE" ] || command -v "$WINE" >/dev/null ||
    die "no $arch Wine loader at $WINE ($wine_hint; or set WINE to the loader)"

if [ -n "${OUT:-}" ]; then
    mkdir -p -m 700 "$OUT"  # a dump holds the process's memory: keep it private
    OUT=$(cd "$OUT" && pwd)
else
    OUT=$(mktemp -d)
fi
for f in ring.dmp wine.dmp wine.mdtrace harness.exe; do
    [ "$force" = 1 ] || [ ! -e "$OUT/$f" ] || die "$OUT/$f exists (from an earlier run?): use --force or another OUT"
done
export WINEDEBUG=-all
export WINEPREFIX=${WINEPREFIX:-$OUT/prefix}

# Python runs in OUT, never in the repository: there, ./mdstream (the source tree,
# unbuilt after a plain `pip install .`) would shadow the installed package.  A
# tree built in place (setup.py build_ext --inplace) without an install is used
# when nothing is installed.
cd "$OUT"
if ! "$PY" -c 'import mdstream' 2>/dev/null; then
    if PYTHONPATH="$ROOT${PYTHONPATH:+:$PYTHONPATH}" "$PY" -c 'import mdstream' 2>/dev/null; then
        export PYTHONPATH="$ROOT${PYTHONPATH:+:$PYTHONPATH}"
    else
        die "$PY cannot import mdstream: install it first (pip install $ROOT)"
    fi
fi

INC=$("$PY" -c 'import mdstream; print(mdstream.get_include())')
mapfile -t SRC < <("$PY" -c 'import mdstream; print("\n".join(mdstream.get_source_files()))')
"$CC" -std=gnu11 -O2 -Wall -Wextra -Werror -I"$INC" "$ROOT/wine/harness.c" "${SRC[@]}" -o "$OUT/harness.exe"

WINE="$WINE" OUT="$OUT" ARCH="$arch" "$PY" - "${args[@]}" <<'PYEOF'
import filecmp, json, os, secrets, subprocess, sys, time
import mdstream

out, arch = os.environ["OUT"], os.environ["ARCH"]
name = f"/dev/shm/mdstream-wine-run-{os.getpid()}-{secrets.token_hex(4)}"
ring = mdstream.Ring.create(name, 4 << 20)
win = lambda p: "Z:" + p.replace("/", "\\")
cmd = [os.environ["WINE"], f"{out}/harness.exe", "dump", "--ring", win(name), "--tee", win(f"{out}/wine.dmp"),
       "--trace", win(f"{out}/wine.mdtrace"), *sys.argv[1:]]
started = time.monotonic()
proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, text=True)


def producer_failed():
    """A harness that died without finishing the ring ends the drain now, not at the timeout."""
    if proc.poll() is not None and ring.state == "open":
        return RuntimeError(f"the Wine harness exited with status {proc.returncode} before finishing the dump")
    return None


try:
    result = mdstream.drain(ring, [mdstream.FileSink(f"{out}/ring.dmp")], timeout=300,
                            producer_failed=producer_failed)
except (mdstream.MdstreamError, OSError, RuntimeError) as exc:
    result = exc
finally:
    stdout, _ = proc.communicate()
    ring.close()
lines = [line for line in stdout.splitlines() if line.startswith("{")]
if lines:
    print(json.dumps(json.loads(lines[-1]), indent=1))
if isinstance(result, BaseException):
    sys.exit(f"wine/run.sh: the dump failed ({arch}, harness exit {proc.returncode}): {result}")
same = filecmp.cmp(f"{out}/ring.dmp", f"{out}/wine.dmp", shallow=False)
print(f"{arch}: drained {result.bytes:,} bytes in {result.records:,} records, {time.monotonic() - started:.1f} s; "
      f"identical to Wine's own file: {same}; files in {out}")
sys.exit(0 if same and proc.returncode == 0 else 1)
PYEOF
