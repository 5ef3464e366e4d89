#!/usr/bin/env bash
# Console figures of issue 3, rtmd beside ser2net 4, measured side by side in one run
# (docs/BENCHMARKS.md). Each daemon serves its own socat pty pair: it opens one side as the
# board's serial port; bench/console/load.py writes into the other side as the board and is
# every TCP client (raw TCP both: rtmd's tcp_raw, ser2net's plain tcp accepter), so write and
# receive times come from one monotonic clock.
#  1. board -> one client throughput: DATA_MIB of random data (one pre-generated file) written
#     as fast as the pty takes it; MB/s (10^6 bytes) from first byte written to last byte
#     received, median of RUNS (run round-robin over the daemons); the received bytes' sha256
#     must equal the file's;
#  2. 16 clients at once: each receives 16 MiB of the file, then 1000 messages of 64 bytes,
#     one every 2 ms; every client's stream must be byte-identical to what was written
#     (sha256); latency board -> client for every message at every client, p50 and p99;
#  3. the daemon's CPU seconds (utime + stime, /proc/PID/stat) per MB moved during 1.
# Peers: ser2net with 64 KiB buffers (dev-to-net-bufsize, net-to-dev-bufsize), the same with
# chardelay off, and with its defaults (64-byte buffers), all with max-connections 16 (for 2.);
# and, for reference, the pty pair read directly by the client (no daemon, no TCP).
# rtmd runs with client_buffer_kib = 65536 so that a client behind by up to the whole file is
# not dropped: the throughput run measures speed, not the drop policy.
# With a working `perf` (PERF=1, the default when `perf stat` can count syscalls), one more
# untimed run per daemon under `perf stat -p` counts its syscalls per MB.
# Needs ser2net, socat, dbus-daemon; installs the missing ones. Takes about 2 minutes.
# Usage: bench/console.sh [DATA_MIB] [RUNS]     (defaults 64 and 5)
set -euo pipefail
cd "$(dirname "$0")/.."
DATA_MIB=${1:-64}
RUNS=${2:-5}
CLIENTS=16
FANOUT_MIB=16

need=()
for p in ser2net socat dbus-daemon; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || need+=("$p")
done
if [ ${#need[@]} -gt 0 ]; then
  apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${need[@]}" >/dev/null
fi
cargo build --release --locked -q --bin rtmd
if [ -z "${PERF:-}" ]; then
  PERF=0
  perf stat -e raw_syscalls:sys_enter true >/dev/null 2>&1 && PERF=1
fi

work=$(mktemp -d)
pids=()
cleanup() {
  local rc=$?
  if [ $rc -ne 0 ] && [ -d "$work" ]; then
    for p in "${pids[@]}"; do kill -0 "$p" 2>/dev/null || echo "process $p had ended: $(cat "/proc/$p/cmdline" 2>/dev/null | tr '\0' ' ')" >&2; done
    tail -n 3 "$work"/*.log >&2 || true
  fi
  for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done
  wait 2>/dev/null || true
  rm -rf "$work"
}
trap cleanup EXIT
wait_for() { for _ in $(seq 200); do grep -q "$2" "$1" 2>/dev/null && return 0; sleep 0.05; done; echo "timeout waiting for $2 in $1" >&2; cat "$1" >&2; exit 1; }
wait_path() { for _ in $(seq 200); do [ -e "$1" ] && return 0; sleep 0.05; done; echo "timeout waiting for $1" >&2; exit 1; }
free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }
wait_port() { for _ in $(seq 200); do python3 -c "import socket,sys; socket.create_connection(('127.0.0.1',$1),0.2).close()" 2>/dev/null && return 0; sleep 0.05; done; echo "nothing listens on $1" >&2; exit 1; }
B=target/release

# One pty pair per path: $work/NAME-dev (the daemon's serial port), $work/NAME-board.
# socat ends half a second after either side's last file descriptor closes (EIO on its pty
# master), and ser2net closes the device when its last client leaves: this shell holds both
# sides open (never reading them) for the whole run.
pty_pair() {
  socat -d -d pty,raw,echo=0,link="$work/$1-dev" pty,raw,echo=0,link="$work/$1-board" 2>"$work/$1-socat.log" & pids+=($!)
  wait_path "$work/$1-dev"; wait_path "$work/$1-board"
  local hold
  exec {hold}<>"$work/$1-dev"; exec {hold}<>"$work/$1-board"
}
for n in rtmd s2n64k s2nnd s2ndef pty; do pty_pair $n; done
head -c "$((DATA_MIB << 20))" /dev/urandom >"$work/data.bin"

# rtmd on a private bus.
dbus-daemon --session --nofork --nopidfile --print-address=1 --address="unix:path=$work/bus" >"$work/bus.addr" 2>/dev/null & pids+=($!)
wait_for "$work/bus.addr" unix:path
bus=$(head -1 "$work/bus.addr")
rtmd_port=$(free_port)
cat >"$work/rtmd.toml" <<TOML
name = "con-bench"
[console]
device = "$work/rtmd-dev"
tcp_raw = "127.0.0.1:$rtmd_port"
client_buffer_kib = 65536
TOML
$B/rtmd --config "$work/rtmd.toml" --bus-address "$bus" --log stderr 2>"$work/rtmd.log" & rtmd_pid=$!; pids+=($rtmd_pid)
wait_for "$work/rtmd.log" "ready on"
wait_port "$rtmd_port"

# ser2net, one process per configuration (each has a single thread, its default).
start_ser2net() { # NAME PORT [extra option lines]
  local name=$1 port=$2; shift 2
  {
    echo "connection: &$name"
    echo "  accepter: tcp,127.0.0.1,$port"
    echo "  connector: serialdev,$work/$name-dev,115200n81,local"
    echo "  options:"
    echo "    max-connections: $CLIENTS"
    for o in "$@"; do echo "    $o"; done
  } >"$work/$name.yaml"
  ser2net -n -d -u -P "$work/$name.pid" -c "$work/$name.yaml" >"$work/$name.log" 2>&1 & pids+=($!)
  eval "${name}_pid=$!"
  wait_port "$port"
}
s2n64k_port=$(free_port)
start_ser2net s2n64k "$s2n64k_port" "dev-to-net-bufsize: 65536" "net-to-dev-bufsize: 65536"
s2nnd_port=$(free_port)
start_ser2net s2nnd "$s2nnd_port" "dev-to-net-bufsize: 65536" "net-to-dev-bufsize: 65536" "chardelay: false"
s2ndef_port=$(free_port)
start_ser2net s2ndef "$s2ndef_port"

# The figures are only as steady as the machine: say so when something else is using it.
busy=$(python3 -c '
import time
def s(): v = list(map(int, open("/proc/stat").readline().split()[1:])); return sum(v), v[3] + v[4]
t0, i0 = s(); time.sleep(1); t1, i1 = s(); print(round(100 * (1 - (i1 - i0) / (t1 - t0))))')
[ "$busy" -gt 15 ] && echo "warning: the machine is ${busy}% busy before the benchmark starts: figures will be noisy" >&2
echo "== console: $DATA_MIB MiB x $RUNS runs to one client; $CLIENTS clients at once ($(date -u +%F), $(nproc) cores, $(ser2net -v))"
cat >"$work/spec.json" <<JSON
{ "data": "$work/data.bin", "out": "$work/results.json", "runs": $RUNS,
  "clients": $CLIENTS, "fanout_bytes": $((FANOUT_MIB << 20)),
  "messages": 1000, "msg_size": 64, "interval_ms": 2, "baseline": "s2n64k", "perf": ${PERF:-0},
  "targets": [
    {"name": "rtmd", "label": "rtmd (tcp_raw)", "board": "$work/rtmd-board", "port": $rtmd_port, "pid": $rtmd_pid},
    {"name": "s2n64k", "label": "ser2net, 64 KiB buffers", "board": "$work/s2n64k-board", "port": $s2n64k_port, "pid": $s2n64k_pid},
    {"name": "s2nnd", "label": "ser2net, 64 KiB, no chardelay", "board": "$work/s2nnd-board", "port": $s2nnd_port, "pid": $s2nnd_pid},
    {"name": "s2ndef", "label": "ser2net, defaults", "board": "$work/s2ndef-board", "port": $s2ndef_port, "pid": $s2ndef_pid},
    {"name": "pty", "label": "pty pair read directly", "board": "$work/pty-board", "device": "$work/pty-dev", "settle": 0}
  ] }
JSON
python3 bench/console/load.py "$work/spec.json"
if grep -q "dropping console client" "$work/rtmd.log"; then
  echo "rtmd dropped a client:" >&2; grep "dropping" "$work/rtmd.log" >&2; exit 1
fi
