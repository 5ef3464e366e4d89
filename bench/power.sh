#!/usr/bin/env bash
# Power figures of issue 2, measured side by side in one run (docs/BENCHMARKS.md):
#  1. one "switch outlet on" end to end, as a LAVA hook does it:
#       rtmctl power on  -> rtmd -> simulated Energenie strip (TCP, loopback)
#       egctl            -> the same simulated strip (Debian's Energenie client)
#       curl HTTP GET    -> pdudaemon (localcmdline driver), the request `pduclient -H` sends
#                           (pduclient is not in Debian; its `import requests` alone costs ~100 ms)
#       pdudaemon --drive: pdudaemon's own one-shot switch from the command line
#     median and p99 of N runs each (hyperfine), and ratios against rtmctl;
#  2. rtmd's idle RSS with power configured, beside pdudaemon's;
#  3. rtmd start to READY=1 (sd_notify), median of 30 starts.
# Needs root (a private mount namespace gives egctl its ~/.egtab), hyperfine, egctl,
# pdudaemon, dbus-daemon; installs the missing ones. Usage: bench/power.sh [RUNS]
set -euo pipefail
cd "$(dirname "$0")/.."
RUNS=${1:-200}

if [ -z "${RTMD_BENCH_NS:-}" ]; then
  need=()
  for p in hyperfine egctl pdudaemon dbus-daemon curl; do
    dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || need+=("$p")
  done
  if [ ${#need[@]} -gt 0 ]; then
    apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${need[@]}" >/dev/null
  fi
  cargo build --release --locked -q
  # egctl reads ~/.egtab from the user database's home: give it a private one.
  exec env RTMD_BENCH_NS=1 unshare -m "$0" "$@"
fi

work=$(mktemp -d)
mount --bind "$work" "$(getent passwd "$(id -u)" | cut -d: -f6)"
pids=()
cleanup() { for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done; wait 2>/dev/null || true; }
trap cleanup EXIT
wait_for() { for _ in $(seq 200); do grep -q "$2" "$1" 2>/dev/null && return 0; sleep 0.05; done; echo "timeout waiting for $2 in $1" >&2; cat "$1" >&2; exit 1; }
free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }
B=target/release

# The simulated strip, a private bus, and rtmd on outlet 1 of the strip.
$B/rtm-sim egpms --listen 127.0.0.1:0 --model pms21 --password hackme >"$work/strip.log" 2>&1 & pids+=($!)
wait_for "$work/strip.log" listening
strip_port=$(sed -n 's/^listening 127.0.0.1://p' "$work/strip.log")
dbus-daemon --session --nofork --nopidfile --print-address=1 --address="unix:path=$work/bus" >"$work/bus.addr" 2>/dev/null & pids+=($!)
wait_for "$work/bus.addr" unix:path
bus=$(head -1 "$work/bus.addr")
cat >"$work/rpi.toml" <<TOML
name = "rpi4-01"
[power]
backend = "egpms"
host = "127.0.0.1"
port = $strip_port
outlet = 1
model = "pms21"
password = "hackme"
TOML
$B/rtmd --config "$work/rpi.toml" --bus-address "$bus" --log stderr 2>"$work/rtmd.log" & rtmd_pid=$!; pids+=($rtmd_pid)
wait_for "$work/rtmd.log" "ready on"
echo "lab pms21 127.0.0.1 $strip_port hackme" >"$work/.egtab"

# pdudaemon with a driver that does nothing, on a free loopback port.
pdu_port=$(free_port)
cat >"$work/pdudaemon.conf" <<JSON
{ "daemon": {"hostname": "127.0.0.1", "port": $pdu_port, "listener": "http", "logging_level": "ERROR"},
  "pdus": { "lab": { "driver": "localcmdline", "cmd_on": "true %s", "cmd_off": "true %s" } } }
JSON
/usr/sbin/pdudaemon --conf "$work/pdudaemon.conf" >"$work/pdudaemon.log" 2>&1 & pdu_pid=$!; pids+=($pdu_pid)
for _ in $(seq 200); do curl -s -o /dev/null "http://127.0.0.1:$pdu_port/" && break; sleep 0.05; done

echo "== 1. switch on, end to end ($RUNS runs each)"
hyperfine -N --style none --warmup 5 --runs "$RUNS" --export-json "$work/switch.json" \
  -n "rtmctl power on (rtmd, egpms)" "$B/rtmctl --bus-address $bus --dut rpi4-01 power on" \
  -n "egctl lab on left left left" "egctl lab on left left left" \
  -n "curl -> pdudaemon (HTTP)" "curl -sf http://127.0.0.1:$pdu_port/power/control/on?hostname=lab&port=1" \
  -n "pdudaemon --drive" "/usr/sbin/pdudaemon --conf $work/pdudaemon.conf --loglevel ERROR --drive --hostname lab --port 1 --request on" \
  >/dev/null
python3 - "$work/switch.json" <<'PY'
import json, sys, statistics
res = json.load(open(sys.argv[1]))["results"]
def p(ts, q):
    s = sorted(ts); return s[min(len(s) - 1, int(round(q * (len(s) - 1))))]
base = statistics.median(res[0]["times"])
print(f"{'command':34} {'median ms':>10} {'p99 ms':>8} {'median / rtmctl':>16}")
for r in res:
    t = r["times"]; m = statistics.median(t)
    print(f"{r['command']:34} {m*1e3:10.2f} {p(t, .99)*1e3:8.2f} {m/base:16.2f}")
PY

echo "== 2. idle RSS"
sleep 1
rss() { awk '/^VmRSS/ {printf "%.1f MiB", $2/1024}' "/proc/$1/status"; }
echo "rtmd (egpms configured):  $(rss $rtmd_pid)"
echo "pdudaemon (one PDU):      $(rss $pdu_pid)"

echo "== 3. rtmd start to READY=1 (30 starts)"
python3 - "$B/rtmd" "$work/rpi.toml" "$bus" <<'PY'
import os, socket, statistics, subprocess, sys, time, tempfile
rtmd, cfg, bus = sys.argv[1:4]
path = os.path.join(tempfile.mkdtemp(), "notify")
s = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM); s.bind(path); s.settimeout(10)
# A second board name each time would leave names behind; the same board is stopped first.
cfg2 = cfg.replace("rpi.toml", "ready.toml")
open(cfg2, "w").write(open(cfg).read().replace('name = "rpi4-01"', 'name = "ready-test"'))
times = []
for _ in range(30):
    t0 = time.perf_counter()
    p = subprocess.Popen([rtmd, "--config", cfg2, "--bus-address", bus, "--log", "stderr"],
                         env=dict(os.environ, NOTIFY_SOCKET=path, RUST_LOG="warn"), stderr=subprocess.DEVNULL)
    while True:
        msg = s.recv(512).decode()
        if "READY=1" in msg:
            times.append(time.perf_counter() - t0); break
    p.terminate(); p.wait()
print(f"start to READY=1: median {statistics.median(times)*1e3:.1f} ms, max {max(times)*1e3:.1f} ms")
PY
