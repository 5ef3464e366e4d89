#!/usr/bin/env bash
# The floods of issue 13 against rtmd and, side by side in the same run, the peer doing the
# same job (docs/BENCHMARKS.md, "Floods (issue 13)"). Each flood runs SECONDS, RUNS times per
# daemon, alternating rtmd and the peer, each time against a freshly started daemon:
#   iacdo  a telnet client sends IAC DO requests and never reads the answers  (peer: ser2net)
#   idle   1,100 idle connections to the telnet port, reopened when closed    (peer: ser2net)
#   brk    a telnet client sends 2,048 IAC BRK every second, one per write    (peer: ser2net)
#   half   1,100 half-sent pdudaemon-API requests, reopened when answered    (peer: pdudaemon)
#   flush  an NBD client sends FLUSH and never reads a reply                  (peer: nbdkit)
# (bench/soak/flood.py; flush is tests/nbd/flood.py, the client of bench/nbd_flood.sh.)
# During each flood: the daemon's peak RSS (VmRSS of /proc/PID/status) and descriptors
# (/proc/PID/fd), sampled every 50 ms; and a live console client's latency: the board prints
# a timestamped line every 5 ms into a socat pty pair whose other side is the daemon's serial
# port, a telnet client on the same daemon receives it; one process, one clock
# (bench/soak/live.py). pdudaemon and nbdkit have no console: their rows have no latency, and
# rtmd's rows for those floods serve a console beside the flooded face.
# rtmd serves the console on its telnet port (max_clients 64, the default); ser2net 4 a telnet
# accepter with max-connections 64, the same cap, 64 KiB buffers and chardelay off (its
# lowest-latency configuration in bench/console.sh: with its 64-byte default buffers it
# barely keeps up with the board's 7 KB/s here, and never catches up after a stall). Every daemon starts with the soft
# descriptor limit a systemd service gets (1,024; the hard one is kept: rtmd raises its soft
# limit to it at start, the others do not).
# Prints each run as it ends, then per flood and daemon min / median / max over the runs, the
# ratios of the medians (rtmd / peer), and the goal: rtmd under 64 MiB and the live p99 under
# 50 ms on every run, and no worse than the peer. SOAK_JSON=FILE keeps every run's figures.
# Installs the missing peers. Takes about RUNS x 2 x (SECONDS + 4 s) per flood.
# Usage: bench/soak.sh [SECONDS] [RUNS] [FLOODS...]      (defaults 20, 3, all five)
set -euo pipefail
cd "$(dirname "$0")/.."
SECS=${1:-20}
RUNS=${2:-3}
shift 2 || shift $#
FLOODS=("$@")
[ ${#FLOODS[@]} -gt 0 ] || FLOODS=(iacdo idle brk half flush)

need=()
for p in ser2net socat dbus-daemon pdudaemon nbdkit python3; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || need+=("$p")
done
if [ ${#need[@]} -gt 0 ]; then
  apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${need[@]}" >/dev/null
fi
cargo build --release --locked -q --bin rtmd --bin rtmctl
B=target/release
HARD=$(ulimit -Hn)
NOFILE="--nofile=1024:$HARD"

work=$(mktemp -d)
pids=()
cleanup() {
  for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done
  wait 2>/dev/null || true
  rm -rf "$work"
}
trap cleanup EXIT
trap 'exit 130' INT TERM
wait_for() { for _ in $(seq 400); do grep -q "$2" "$1" 2>/dev/null && return 0; sleep 0.05; done; echo "timeout waiting for $2 in $1" >&2; cat "$1" >&2; exit 1; }
wait_path() { for _ in $(seq 200); do [ -e "$1" ] && return 0; sleep 0.05; done; echo "timeout waiting for $1" >&2; exit 1; }
free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }
wait_port() { for _ in $(seq 400); do (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null && return 0; sleep 0.05; done; echo "nothing listens on $1" >&2; exit 1; }

# A fresh pty pair per run: $work/dev (the daemon's serial port) and $work/board. socat ends
# when either side's last descriptor closes, and ser2net opens the device only while it has
# clients: a sleeping process holds both sides open (never reading them) until the run ends.
# (Not this shell: the daemons would inherit its descriptors and count them.)
pty_up() {
  rm -f "$work/dev" "$work/board"
  socat pty,raw,echo=0,link="$work/dev" pty,raw,echo=0,link="$work/board" 2>"$work/socat.log" & socat_pid=$!; pids+=($socat_pid)
  wait_path "$work/dev"; wait_path "$work/board"
  sleep 100000 <>"$work/dev" 3<>"$work/board" & hold_pid=$!; pids+=($hold_pid)
}
pty_down() {
  kill "$hold_pid" "$socat_pid" 2>/dev/null || true
  wait "$hold_pid" "$socat_pid" 2>/dev/null || true
}
stop_daemon() { kill "$dpid" 2>/dev/null || true; wait "$dpid" 2>/dev/null || true; }

dbus-daemon --session --nofork --nopidfile --print-address=1 --address="unix:path=$work/bus" >"$work/bus.addr" 2>/dev/null & pids+=($!)
wait_for "$work/bus.addr" unix:path
bus=$(head -1 "$work/bus.addr")
mkdir -p "$work/images"
head -c 16M /dev/urandom >"$work/images/disk.img"

# Each start_* leaves the daemon's pid in $dpid, and what the flood and the live client need
# in $fport (the flooded port) and $live (the console's telnet address, empty without one).
start_rtmd() { # FLOOD
  local cport; cport=$(free_port); fport=$cport; live="127.0.0.1:$cport"
  {
    echo 'name = "soak"'
    echo '[console]'
    echo "device = \"$work/dev\""
    echo "tcp = \"127.0.0.1:$cport\""
    case $1 in
      half)
        fport=$(free_port)
        echo '[power]'
        echo 'backend = "command"'
        echo "on_command = \"echo on >> $work/switched\""
        echo "off_command = \"echo off >> $work/switched\""
        echo 'status_command = "echo off"'
        echo '[pdudaemon_api]'
        echo "listen = \"127.0.0.1:$fport\""
        echo 'hostname = "lab-pdu"'
        echo 'port = 3' ;;
      flush)
        fport=$(free_port)
        echo '[images]'
        echo "dir = \"$work/images\""
        echo '[nbd]'
        echo "listen = \"127.0.0.1:$fport\"" ;;
    esac
  } >"$work/rtmd.toml"
  prlimit "$NOFILE" -- $B/rtmd --config "$work/rtmd.toml" --bus-address "$bus" --log stderr 2>"$work/rtmd.log" & dpid=$!; pids+=($dpid)
  wait_for "$work/rtmd.log" "ready on"
  if [ "$1" = flush ]; then
    $B/rtmctl --bus-address "$bus" --dut soak nbd export disk.img --cow --reset >/dev/null
  fi
}
start_ser2net() {
  fport=$(free_port); live="127.0.0.1:$fport"
  cat >"$work/ser2net.yaml" <<YAML
connection: &soak
  accepter: telnet,127.0.0.1,$fport
  connector: serialdev,$work/dev,115200n81,local
  options:
    max-connections: 64
    dev-to-net-bufsize: 65536
    net-to-dev-bufsize: 65536
    chardelay: false
YAML
  prlimit "$NOFILE" -- ser2net -n -d -u -c "$work/ser2net.yaml" >"$work/ser2net.log" 2>&1 & dpid=$!; pids+=($dpid)
  wait_port "$fport"
}
start_pdudaemon() {
  fport=$(free_port); live=""
  cat >"$work/pdudaemon.conf" <<JSON
{ "daemon": {"hostname": "127.0.0.1", "port": $fport, "listener": "http", "logging_level": "ERROR"},
  "pdus": { "lab-pdu": { "driver": "localcmdline",
      "cmd_on": "echo on %s >> $work/switched", "cmd_off": "echo off %s >> $work/switched" } } }
JSON
  prlimit "$NOFILE" -- /usr/sbin/pdudaemon --conf "$work/pdudaemon.conf" >"$work/pdudaemon.log" 2>&1 & dpid=$!; pids+=($dpid)
  wait_port "$fport"
}
start_nbdkit() {
  fport=$(free_port); live=""
  prlimit "$NOFILE" -- nbdkit -f -i 127.0.0.1 -p "$fport" -e disk.img file "$work/images/disk.img" 2>"$work/nbdkit.log" & dpid=$!; pids+=($dpid)
  wait_port "$fport"
}

peer_of() { case $1 in iacdo|idle|brk) echo ser2net ;; half) echo pdudaemon ;; flush) echo nbdkit ;; esac; }
flood_cmd() { # FLOOD -> JSON argv
  case $1 in
    flush) printf '["python3", "tests/nbd/flood.py", "%s", "--export", "disk.img", "--command", "flush", "--seconds", "%s"]' "$fport" "$((SECS + 5))" ;;
    *) printf '["python3", "bench/soak/flood.py", "%s", "%s", "%s"]' "$1" "$fport" "$((SECS + 5))" ;;
  esac
}

rows="$work/rows.jsonl"
: >"$rows"
echo "== floods: ${SECS} s each, $RUNS runs per daemon ($(date -u '+%F %H:%M UTC'), $(nproc) cores, $(uname -r), $(ser2net -v 2>&1 | head -1), nbdkit $(nbdkit --version | cut -d' ' -f2), pdudaemon $(dpkg-query -W -f='${Version}' pdudaemon))"
echo "load average at start: $(cut -d' ' -f1-3 /proc/loadavg)"
for flood in "${FLOODS[@]}"; do
  peer=$(peer_of "$flood")
  [ -n "$peer" ] || { echo "unknown flood $flood" >&2; exit 2; }
  if [ "$flood" = flush ] && [ ! -f tests/nbd/flood.py ]; then
    echo "flush: skipped: no NBD flood client (tests/nbd/flood.py is not in this tree)"
    continue
  fi
  for run in $(seq "$RUNS"); do
    for daemon in rtmd "$peer"; do
      rm -f "$work/switched"
      pty_up
      "start_$daemon" "$flood"
      spec=$(printf '{"daemon": "%s", "flood": "%s", "pid": %s, "seconds": %s, "board": "%s", "live": "%s", "flood_cmd": %s}' \
        "$daemon" "$flood" "$dpid" "$SECS" "$work/board" "$live" "$(flood_cmd "$flood")")
      python3 bench/soak/run.py "$spec" >"$work/row.json" & rpid=$!; pids+=($rpid)
      wait "$rpid" || true
      row=$(cat "$work/row.json")
      # What the daemon ran on behalf of the flood (a half-sent request must never run).
      switched=0
      [ ! -f "$work/switched" ] || switched=$(wc -l <"$work/switched")
      row=$(python3 -c 'import json,sys; r=json.loads(sys.argv[1]); r["switched"]=int(sys.argv[2]); r["run"]=int(sys.argv[3]); print(json.dumps(r))' "$row" "$switched" "$run")
      echo "$row" >>"$rows"
      python3 bench/soak/table.py --one "$row"
      stop_daemon
      pty_down
    done
  done
done
echo "load average at end: $(cut -d' ' -f1-3 /proc/loadavg)"
python3 bench/soak/table.py "$rows"
[ -z "${SOAK_JSON:-}" ] || cp "$rows" "$SOAK_JSON"
