#!/usr/bin/env bash
# The NBD floods of issue 13, against rtmd and nbdkit side by side (docs/BENCHMARKS.md):
# a client that sends requests as fast as the server takes them and never reads a reply
# (tests/nbd/flood.py), for SECONDS each, one server at a time, against the same file:
#   flush  one connection of FLUSH requests;
#   read   two connections of 64 KiB READs.
# rtmd exports the file copy-on-write (its FLUSH syncs the overlay), nbdkit serves it with
# the file plugin, writable (its FLUSH is an fdatasync). During each flood nbdcopy reads the
# whole export on another connection. Printed per server and flood: peak RSS (VmHWM, from
# /proc/PID/status, sampled while the flood runs) beside the RSS before it (the server
# started, the file exported, no client yet), the most descriptors seen, the requests the
# client could send (bounded when the server stops reading), whether nbdcopy read the right
# bytes and how long it took, and whether the server was still alive once the flood's client
# had left with its replies unread.
# Installs the missing peers. Usage: bench/nbd_flood.sh [SECONDS] [FLOODS...]
set -euo pipefail
cd "$(dirname "$0")/.."
SECS=${1:-30}
shift || true
FLOODS=("$@")
[ ${#FLOODS[@]} -gt 0 ] || FLOODS=(flush read)

need=()
for p in libnbd-bin nbdkit dbus-daemon python3; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || need+=("$p")
done
if [ ${#need[@]} -gt 0 ]; then
  apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${need[@]}" >/dev/null
fi
cargo build --release --locked -q
B=target/release
FLOOD=tests/nbd/flood.py

work=$(mktemp -d)
pids=()
cleanup() {
  for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done
  wait 2>/dev/null || true
  rm -rf "$work"
}
trap cleanup EXIT
wait_for() { for _ in $(seq 400); do grep -q "$2" "$1" 2>/dev/null && return 0; sleep 0.05; done; echo "timeout waiting for $2 in $1" >&2; cat "$1" >&2; exit 1; }
wait_port() { for _ in $(seq 400); do (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null && return 0; sleep 0.05; done; echo "nothing listens on $1" >&2; exit 1; }
free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }
kib() { awk -v f="$2:" '$1 == f { print $2 }' "/proc/$1/status"; }
fds() { ls "/proc/$1/fd" 2>/dev/null | wc -l; }

# 256 MiB of incompressible data, in the page cache.
mkdir -p "$work/images"
img="$work/images/disk.img"
head -c 256M /dev/urandom >"$img"
want=$(sha256sum <"$img" | cut -d' ' -f1)

dbus-daemon --session --nofork --nopidfile --print-address=1 --address="unix:path=$work/bus" >"$work/bus.addr" 2>/dev/null & pids+=($!)
wait_for "$work/bus.addr" unix:path
bus=$(head -1 "$work/bus.addr")

# One server at a time, fresh for each flood, so that each peak is its own.
start_rtmd() { # port
  cat >"$work/board.toml" <<TOML
name = "flood"
[images]
dir = "$work/images"
[nbd]
listen = "127.0.0.1:$1"
TOML
  $B/rtmd --config "$work/board.toml" --bus-address "$bus" --log stderr 2>"$work/rtmd.log" & pids+=($!)
  server=$!
  wait_for "$work/rtmd.log" "ready on"
  $B/rtmctl --bus-address "$bus" --dut flood nbd export disk.img --cow --reset >/dev/null
  uri="nbd://127.0.0.1:$1/disk.img"
}
start_nbdkit() { # port
  nbdkit -f -i 127.0.0.1 -p "$1" -e disk.img file "$img" 2>"$work/nbdkit.log" & pids+=($!)
  server=$!
  wait_port "$1"
  uri="nbd://127.0.0.1:$1/disk.img"
}

printf '%-8s %-6s %9s %10s %8s %14s %-32s %s\n' server flood "idle KiB" "peak KiB" "max fds" "requests sent" "nbdcopy during the flood" "after the client left"
for flood in "${FLOODS[@]}"; do
  case $flood in
    flush) args=(--command flush) ;;
    read) args=(--command read --length 65536 --connections 2) ;;
    *) echo "unknown flood $flood" >&2; exit 2 ;;
  esac
  for s in rtmd nbdkit; do
    port=$(free_port)
    "start_$s" "$port"
    idle=$(kib "$server" VmRSS)
    python3 "$FLOOD" "$port" --export disk.img --seconds "$SECS" "${args[@]}" >"$work/flood.out" 2>&1 &
    fpid=$!
    wait_for "$work/flood.out" flooding
    maxfd=0
    peak=0
    copy="not run"
    start=$(date +%s.%N)
    (nbdcopy "$uri" - | sha256sum | cut -d' ' -f1 >"$work/copy.sum"; date +%s.%N >"$work/copy.end") 2>"$work/copy.err" &
    cpid=$!
    while kill -0 "$fpid" 2>/dev/null; do
      n=$(fds "$server"); [ "$n" -gt "$maxfd" ] && maxfd=$n
      p=$(kib "$server" VmHWM 2>/dev/null || echo 0); [ "${p:-0}" -gt "$peak" ] && peak=$p
      sleep 0.2
    done
    wait "$fpid" || true
    wait "$cpid" || true
    if [ -s "$work/copy.end" ]; then
      took=$(echo "$(cat "$work/copy.end") - $start" | bc)
      if [ "$(cat "$work/copy.sum")" = "$want" ]; then copy="right bytes in ${took}s"; else copy="WRONG BYTES"; fi
    else
      copy="failed: $(head -1 "$work/copy.err")"
    fi
    rm -f "$work/copy.end" "$work/copy.sum"
    took_requests=$(sed -n 's/^sent \([0-9]*\) requests.*/\1/p' "$work/flood.out")
    # The client closed with replies unread: does the server live on?
    sleep 1
    if nbdinfo --size "$uri" >/dev/null 2>&1 && kill -0 "$server" 2>/dev/null; then
      after=alive
    else
      after="died: $(grep -v '^$' "$work/$s.log" | tail -1)"
    fi
    printf '%-8s %-6s %9s %10s %8s %14s %-32s %s\n' "$s" "$flood" "$idle" "$peak" "$maxfd" "$took_requests" "$copy" "$after"
    kill "$server" 2>/dev/null || true
    wait "$server" 2>/dev/null || true
  done
done
