#!/usr/bin/env bash
# Capture figures of issue 7 (docs/BENCHMARKS.md):
#  1. snapshot latency, request to PNG on disk: `busctl call ... Snapshot` (one D-Bus round
#     trip; the reply comes after the PNG is renamed into place) against rtmd with a live
#     1920x1080 30 fps test source; median and max of N, without a recording (each snapshot
#     opens the source) and during one (the frame comes from the recording's tap);
#  2. CPU seconds per minute of 1080p30 video recording, of rtmd itself (utime + stime of
#     its process from /proc, over a recording of SECS seconds), in its two ways:
#     MJPEG passthrough (the grabber's JPEG frames, encoded beforehand and read back from a
#     file at 30 fps as a grabber delivers them) and re-encoding (raw frames from a live
#     videotestsrc, encoded with jpegenc); beside it, in the same run, the peer way of
#     recording: gst-launch-1.0 running the same source straight into matroskamux (what a
#     driver spawning gst-launch costs, with no tap for snapshots). Each figure is also
#     given minus the source alone (the same source into fakesink), since a grabber's
#     frames cost nothing to produce.
# Usage: bench/capture.sh [N] [SECS]. Release build.
set -euo pipefail
cd "$(dirname "$0")/.."
N=${1:-20}
SECS=${2:-20}
cargo build --locked -q --release
B=target/release
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
video = "videotestsrc is-live=true pattern=smpte horizontal-speed=4 ! video/x-raw,format=YUY2,width=1920,height=1080,framerate=30/1"
dir = "$work/captures"
TOML
RUST_LOG=info $B/rtmd --config "$work/bench.toml" --bus-address "$address" --log stderr 2> "$work/rtmd.log" &
pids+=($!)
wait_for "$work/rtmd.log" "ready on"
snap() {  # a snapshot every half second, as a test takes them (not back to back)
  local service=${1:-org.rtmd.Dut1.bench}
  for _ in $(seq "$N"); do
    sleep 0.5
    t0=$(date +%s%N)
    busctl --address="$address" call "$service" /org/rtmd/Dut1 org.rtmd.Dut1.Capture Snapshot > /dev/null
    t1=$(date +%s%N)
    echo $(( (t1 - t0) / 1000000 ))
  done | stats
}
echo "snapshot, no recording (opens the source each time): $(snap)"
busctl --address="$address" call org.rtmd.Dut1.bench /org/rtmd/Dut1 org.rtmd.Dut1.Capture StartRecording s video > /dev/null
echo "snapshot during a recording (from its tap):          $(snap)"
busctl --address="$address" call org.rtmd.Dut1.bench /org/rtmd/Dut1 org.rtmd.Dut1.Capture StopRecording s video > /dev/null

# 2. CPU per minute of 1080p30 recording.
# YUY2: what a USB grabber gives raw (videotestsrc would pick a 16-bit format of its own).
raw="video/x-raw,format=YUY2,width=1920,height=1080,framerate=30/1"
echo "encoding $((SECS + 5)) s of 1080p30 MJPEG for the grabber stand-in ..."
gst-launch-1.0 -q videotestsrc pattern=smpte horizontal-speed=4 num-buffers=$(((SECS + 5) * 30)) ! $raw \
  ! jpegenc quality=85 ! matroskamux ! filesink location="$work/grabber.mkv"
grabber="filesrc location=$work/grabber.mkv ! matroskademux ! image/jpeg ! identity sync=true"
live="videotestsrc is-live=true pattern=smpte horizontal-speed=4 ! $raw"
# CPU seconds per minute of a gst-launch-1.0 run of SECS seconds of the given pipeline.
gst_cpu() {
  python3 - "$SECS" "$@" <<'PY'
import resource, subprocess, sys, time
secs, args = float(sys.argv[1]), sys.argv[2:]
t0 = time.monotonic()
p = subprocess.Popen(["gst-launch-1.0", "-q", "-e", *args], stdout=subprocess.DEVNULL)
time.sleep(secs)
p.send_signal(2)  # -e: EOS on interrupt, the file is finalized
p.wait()
wall = time.monotonic() - t0
r = resource.getrusage(resource.RUSAGE_CHILDREN)
print(f"{(r.ru_utime + r.ru_stime) * 60 / wall:.2f}")
PY
}
# CPU seconds per minute of rtmd recording SECS seconds from the given source.
rtmd_cpu() {
  local name=$1 source=$2 config="$work/$1.toml"
  printf 'name = "%s"\n[capture]\nvideo = "%s"\ndir = "%s"\n' "$name" "$source" "$work/captures-$name" > "$config"
  RUST_LOG=info $B/rtmd --config "$config" --bus-address "$address" --log stderr 2> "$work/$name.log" &
  local pid=$!
  wait_for "$work/$name.log" "ready on"
  python3 - "$SECS" "$pid" "$address" "org.rtmd.Dut1.$name" <<'PY'
import os, subprocess, sys, time
secs, pid, address, service = float(sys.argv[1]), sys.argv[2], sys.argv[3], sys.argv[4]
tick = os.sysconf("SC_CLK_TCK")
def cpu():
    fields = open(f"/proc/{pid}/stat").read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / tick
def call(method, *args):
    return subprocess.run(["busctl", f"--address={address}", "call", service, "/org/rtmd/Dut1",
                           "org.rtmd.Dut1.Capture", method, *args], check=True,
                          capture_output=True, text=True).stdout.strip()
c0, t0 = cpu(), time.monotonic()
call("StartRecording", "s", "video")
encoding = subprocess.run(["busctl", f"--address={address}", "get-property", service,
                           "/org/rtmd/Dut1", "org.rtmd.Dut1.Capture", "VideoEncoding"],
                          capture_output=True, text=True).stdout.strip()
print(f"  rtmd VideoEncoding: {encoding}", file=sys.stderr)
time.sleep(secs)
call("StopRecording", "s", "video")
c1, t1 = cpu(), time.monotonic()
print(f"{(c1 - c0) * 60 / (t1 - t0):.2f}")
PY
  busctl --address="$address" get-property "org.rtmd.Dut1.$name" /org/rtmd/Dut1 org.rtmd.Dut1.Capture LastStop | sed 's/^/  rtmd LastStop: /' >&2
  local call=(busctl --address="$address" call "org.rtmd.Dut1.$name" /org/rtmd/Dut1 org.rtmd.Dut1.Capture)
  "${call[@]}" StartRecording s video > /dev/null
  echo "  snapshot during a $name recording: $(snap "org.rtmd.Dut1.$name")" >&2
  "${call[@]}" StopRecording s video > /dev/null
  kill "$pid"; wait "$pid" 2>/dev/null || true
}
ratio() { python3 -c "import sys; a, b = float(sys.argv[1]), float(sys.argv[2]); print(f'{a / b:.2f}x' if b > 0 else 'n/a')" "$@"; }
minus() { python3 -c "import sys; print(f'{max(float(sys.argv[1]) - float(sys.argv[2]), 0):.2f}')" "$@"; }
echo "CPU seconds per minute of 1080p30 video recording ($SECS s each, $(nproc) cores):"
printf '%-34s %8s %8s %10s %8s %8s\n' mode rtmd peer rtmd/peer "rtmd-src" "peer-src"
for mode in passthrough jpegenc; do
  if [ $mode = passthrough ]; then src=$grabber; enc=""; else src=$live; enc="videoconvert ! jpegenc quality=85 !"; fi
  source_alone=$(gst_cpu $src ! fakesink)
  peer=$(gst_cpu $src ! $enc matroskamux ! filesink location="$work/peer-$mode.mkv")
  ours=$(rtmd_cpu "$mode" "$src")
  printf '%-34s %8s %8s %10s %8s %8s\n' "$mode (source alone: $source_alone)" "$ours" "$peer" \
    "$(ratio "$ours" "$peer")" "$(minus "$ours" "$source_alone")" "$(minus "$peer" "$source_alone")"
done
ls -l "$work"/captures-*/*.mkv "$work"/peer-*.mkv | awk '{print "  " $5 " bytes " $NF}'
