#!/usr/bin/env bash
# Build the Wine harness and stream one real Wine MiniDumpWriteDump through
# mdstream's callback into a /dev/shm ring that this script's Python drains,
# then compare with the file Wine wrote itself (docs/windows.md).
#
#   wine/run.sh                 a normal dump of a live child process
#   wine/run.sh full            MiniDumpWithFullMemory with 64 MiB of ballast (~100 MB)
#   wine/run.sh self            the harness dumps itself from a second thread
#
# Needs gcc-mingw-w64-x86-64 and wine64 (loader /usr/lib/wine/wine64).
# Environment: WINE (loader), WINEPREFIX (default: a fresh temporary prefix),
# OUT (output directory, default: a temporary directory).
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python}
WINE=${WINE:-/usr/lib/wine/wine64}
mode=${1:-normal}
OUT=${OUT:-$(mktemp -d)}
export WINEDEBUG=-all
export WINEPREFIX=${WINEPREFIX:-$OUT/prefix}

INC=$("$PY" -c 'import mdstream; print(mdstream.get_include())')
read -r -a SRC <<<"$("$PY" -c 'import mdstream; print(" ".join(mdstream.get_source_files()))')"
x86_64-w64-mingw32-gcc -std=gnu11 -O2 -Wall -Wextra -Werror -I"$INC" wine/harness.c "${SRC[@]}" -o "$OUT/harness.exe"

case "$mode" in
    normal) args=(--type 0) ;;
    full) args=(--type 2 --ballast 64) ;;
    self) args=(--type 0 --target self) ;;
    *) echo "usage: wine/run.sh [normal|full|self]" >&2; exit 2 ;;
esac

WINE="$WINE" OUT="$OUT" "$PY" - "${args[@]}" <<'PYEOF'
import json, os, subprocess, sys, time
import mdstream

out = os.environ["OUT"]
name = f"/dev/shm/mdstream-wine-run-{os.getpid()}"
ring = mdstream.Ring.create(name, 4 << 20)
win = lambda p: "Z:" + p.replace("/", "\\")
cmd = [os.environ["WINE"], f"{out}/harness.exe", "dump", "--ring", win(name), "--tee", win(f"{out}/wine.dmp"),
       "--trace", win(f"{out}/wine.mdtrace"), *sys.argv[1:]]
started = time.monotonic()
proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, text=True)
try:
    result = mdstream.drain(ring, [mdstream.FileSink(f"{out}/ring.dmp")], timeout=300)
finally:
    stdout, _ = proc.communicate()
    ring.close()
report = json.loads(stdout.strip().splitlines()[-1])
same = open(f"{out}/ring.dmp", "rb").read() == open(f"{out}/wine.dmp", "rb").read()
print(json.dumps(report, indent=1))
print(f"drained {result.bytes:,} bytes in {result.records:,} records, {time.monotonic() - started:.1f} s; "
      f"identical to Wine's own file: {same}; files in {out}")
sys.exit(0 if same and proc.returncode == 0 else 1)
PYEOF
