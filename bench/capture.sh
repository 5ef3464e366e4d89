#!/usr/bin/env bash
# Capture figures of issue 7 (docs/BENCHMARKS.md):
#  1. snapshot latency, request to PNG on disk: `busctl call ... Snapshot` (one D-Bus round
#     trip; the reply comes after the PNG is renamed into place) against rtmd with a live
#     1920x1080 30 fps test source; median and max of N, without a recording (each snapshot
#     opens the source) and during one (the frame comes from the recording's tap);
#  2. CPU seconds per minute of 1080p30 recording, for the pipelines src/capture/record.rs
#     builds, run by gst-launch-1.0 for 20 s at real time: MJPEG passthrough (frames
#     encoded beforehand, read back from a file as a grabber would deliver them) and
#     re-encoding (raw frames from videotestsrc); each minus its source alone.
# Usage: bench/capture.sh [N]. Uses the debug build (image and png are optimized in it).
set -euo pipefail
cd "$(dirname "$0")/.."
N=${1:-20}
cargo build --locked -q
B=target/debug
work=$(mktemp -d)
pids=()
cleanup() { for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done; wait 2>/dev/null || true; rm -rf "$work"; }
trap cleanup EXIT
wait_for() { for _ in $(seq 400); do grep -q "$2" "$1" 2>/dev/null && return 0; sleep 0.05; done; echo "timeout waiting for $2 in $1" >&2; cat "$1" >&2; exit 1; }
stats() { sort -n | awk '{a[NR]=$1} END {printf "median %d ms, max %d ms (n=%d)\n", a[int((NR+1)/2)], a[NR], NR}'; }

# 1. Snapshot latency.
dbus-daemon --session --nofork --print-address=1 --address="unix:path=$work/bus" > "$work/address" &
pids+=($!)
wait_for "$work/address" unix
address=$(head -1 "$work/address")
cat > "$work/bench.toml" <<TOML
name = "bench"
[capture]
video = "videotestsrc is-live=true pattern=smpte horizontal-speed=4 ! video/x-raw,width=1920,height=1080,framerate=30/1"
dir = "$work/captures"
TOML
RUST_LOG=info $B/rtmd --config "$work/bench.toml" --bus-address "$address" --log stderr 2> "$work/rtmd.log" &
pids+=($!)
wait_for "$work/rtmd.log" "ready on"
snap() {
  for _ in $(seq "$N"); do
    t0=$(date +%s%N)
    busctl --address="$address" call org.rtmd.Dut1.bench /org/rtmd/Dut1 org.rtmd.Dut1.Capture Snapshot > /dev/null
    t1=$(date +%s%N)
    echo $(( (t1 - t0) / 1000000 ))
  done | stats
}
echo "snapshot, no recording (opens the source each time): $(snap)"
busctl --address="$address" call org.rtmd.Dut1.bench /org/rtmd/Dut1 org.rtmd.Dut1.Capture StartRecording s video > /dev/null
echo "snapshot during a recording (from its tap):          $(snap)"
busctl --address="$address" call org.rtmd.Dut1.bench /org/rtmd/Dut1 org.rtmd.Dut1.Capture StopRecording s video > /dev/null

# 2. CPU per minute of 1080p30 recording.
secs=20
frames=$((secs * 30))
cpu() {  # CPU seconds (user + system) of one gst-launch-1.0 run
  python3 - "$@" <<'PY'
import resource, subprocess, sys
subprocess.run(["gst-launch-1.0", "-q", *sys.argv[1:]], check=True, stdout=subprocess.DEVNULL)
r = resource.getrusage(resource.RUSAGE_CHILDREN)
print(f"{r.ru_utime + r.ru_stime:.2f}")
PY
}
per_minute() { python3 -c "print(f'{($1 - $2) * 60 / $secs:.1f}')"; }
raw="video/x-raw,width=1920,height=1080,framerate=30/1"
tap="vt. ! queue leaky=downstream max-size-buffers=2 ! videorate drop-only=true max-rate=5"
sink="video/x-raw,format=RGB ! appsink max-buffers=1 drop=true sync=false async=false"
gst-launch-1.0 -q videotestsrc pattern=smpte horizontal-speed=4 num-buffers=$frames ! $raw \
  ! jpegenc quality=85 ! matroskamux ! filesink location="$work/mjpeg.mkv"
# The grabber's MJPEG, delivered at its rate.
grabber="filesrc location=$work/mjpeg.mkv ! matroskademux ! image/jpeg ! identity sync=true"
base=$(cpu $grabber ! fakesink)
pass=$(cpu $grabber ! tee name=vt ! queue ! matroskamux ! filesink sync=false async=false location="$work/pass.mkv" \
  $tap ! jpegdec ! videoconvert ! $sink)
live="videotestsrc is-live=true pattern=smpte horizontal-speed=4 num-buffers=$frames ! $raw"
base_raw=$(cpu $live ! fakesink)
enc=$(cpu $live ! videoconvert ! tee name=vt ! queue ! videoconvert ! jpegenc quality=85 \
  ! matroskamux ! filesink sync=false async=false location="$work/enc.mkv" $tap ! videoconvert ! $sink)
echo "CPU s per minute of 1080p30, MJPEG passthrough:  $(per_minute "$pass" "$base") (source alone: $(per_minute "$base" 0))"
echo "CPU s per minute of 1080p30, re-encoding (jpeg): $(per_minute "$enc" "$base_raw") (source alone: $(per_minute "$base_raw" 0))"
echo "file sizes for $secs s: passthrough $(du -h "$work/pass.mkv" | cut -f1), re-encoded $(du -h "$work/enc.mkv" | cut -f1)"
nproc | sed 's/^/cores: /'
