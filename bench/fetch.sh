#!/usr/bin/env bash
# Image fetch figure of issue 5 (docs/BENCHMARKS.md): rtmd's fetch of a local .xz image
# (decompress, sha256 of the source, sparse write, fsync, rename) beside `xz -dc > file`
# (also fsynced: `sync FILE`) and `xz -T0 -dc > file`, interleaved in one run, on a
# single-block xz (`xz -T1`) and a multi-block one (`xz -T2`, where decoding in parallel can
# help). Prints the median wall time of each and its ratio to rtmd's (>1: rtmd is faster).
# Usage: bench/fetch.sh [RUNS] [SIZE_MIB]   (defaults 5 and 1024)
set -euo pipefail
cd "$(dirname "$0")/.."
RUNS=${1:-5}
SIZE_MIB=${2:-1024}
for t in xz dbus-daemon python3; do command -v $t >/dev/null || { echo "bench/fetch.sh needs $t" >&2; exit 2; }; done
cargo build --release --locked -q
B=$PWD/target/release

# On disk (not tmpfs): the same filesystem for every writer.
work=$(mktemp -d /var/tmp/rtmd-fetch-bench.XXXXXX)
pids=()
cleanup() { for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done; wait 2>/dev/null || true; rm -rf "$work"; }
trap cleanup EXIT
wait_for() { for _ in $(seq 200); do grep -q "$2" "$1" 2>/dev/null && return 0; sleep 0.05; done; echo "timeout waiting for $2 in $1" >&2; cat "$1" >&2; exit 1; }

# A disk-like image: per 16 MiB, 4 MiB random (incompressible), 6 MiB of program code
# (compressible), 6 MiB of zeros (holes).
python3 - "$work/disk.img" "$SIZE_MIB" <<'PY'
import glob, os, sys
path, size = sys.argv[1], int(sys.argv[2]) << 20
pool = bytearray()
for f in sorted(glob.glob("/usr/bin/*") + glob.glob("/usr/lib/x86_64-linux-gnu/*.so*")):
    try:
        if os.path.isfile(f): pool += open(f, "rb").read()
    except OSError: pass
    if len(pool) > 96 << 20: break
seg, mib, n = 16 << 20, 1 << 20, 0
with open(path, "wb") as out:
    while n < size:
        part = os.urandom(4 * mib) + bytes(pool[(n // 7) % (len(pool) - 6 * mib):][:6 * mib]) + bytes(6 * mib)
        out.write(part[: size - n]); n += len(part)
PY
echo "image: $SIZE_MIB MiB; compressing (xz -6 -T1, and -T2 for the multi-block variant)..."
xz -6 -T1 -k -c "$work/disk.img" >"$work/single.img.xz"
xz -6 -T2 -k -c "$work/disk.img" >"$work/multi.img.xz"
rm "$work/disk.img"

dbus-daemon --session --nofork --nopidfile --print-address=1 --address="unix:path=$work/bus" >"$work/bus.addr" 2>/dev/null & pids+=($!)
wait_for "$work/bus.addr" unix:path
bus=$(head -1 "$work/bus.addr")
printf 'name = "bench"\n[images]\ndir = "%s/images"\nlocal_dirs = ["%s"]\n' "$work" "$work" >"$work/bench.toml"
$B/rtmd --config "$work/bench.toml" --bus-address "$bus" --log stderr 2>"$work/rtmd.log" & pids+=($!)
wait_for "$work/rtmd.log" "ready on"
ctl() { $B/rtmctl --bus-address "$bus" --dut bench "$@"; }

now() { date +%s.%N; }
timed() { local t0; t0=$(now); "$@" >/dev/null; awk -v a="$(now)" -v b="$t0" 'BEGIN {print a - b}'; }
median() { sort -g | awk '{a[NR]=$1} END {print (NR%2 ? a[(NR+1)/2] : (a[NR/2]+a[NR/2+1])/2)}'; }

printf '\nload before: %s\n' "$(cut -d' ' -f1-3 /proc/loadavg)"
printf '\n%-8s %-34s %9s %9s %10s\n' variant tool median_s MiB/s "ratio"
for v in single multi; do
  src="$work/$v.img.xz"
  sha=$(sha256sum "$src" | cut -d' ' -f1)
  out="$work/out.img"
  declare -A t=()
  for _ in $(seq "$RUNS"); do
    t[rtmd]+="$(timed ctl image fetch "$src" --sha256 "$sha") "
    ctl image rm "$v.img" >/dev/null
    t[xz]+="$(timed sh -c "xz -dc '$src' > '$out'") "; rm -f "$out"
    t[xzsync]+="$(timed sh -c "xz -dc '$src' > '$out' && sync '$out'") "; rm -f "$out"
    t[xzT0]+="$(timed sh -c "xz -T0 -dc '$src' > '$out' && sync '$out'") "; rm -f "$out"
  done
  base=$(echo "${t[rtmd]}" | tr ' ' '\n' | grep . | median)
  for k in rtmd xz xzsync xzT0; do
    case $k in
      rtmd) label="rtmd fetch (verify, sparse, fsync)";;
      xz) label="xz -dc > file";;
      xzsync) label="xz -dc > file && sync file";;
      xzT0) label="xz -T0 -dc > file && sync file";;
    esac
    m=$(echo "${t[$k]}" | tr ' ' '\n' | grep . | median)
    printf '%-8s %-34s %9.2f %9.0f %9.2fx\n' "$v" "$label" "$m" "$(awk -v s="$SIZE_MIB" -v m="$m" 'BEGIN {print s / m}')" "$(awk -v m="$m" -v b="$base" 'BEGIN {print m / b}')"
  done
  unset t
done
printf '\nload after: %s\n' "$(cut -d' ' -f1-3 /proc/loadavg)"
echo "ratio: the tool's median time / rtmd's (above 1: rtmd is faster). MiB/s of image data."
