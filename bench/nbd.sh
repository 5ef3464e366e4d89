#!/usr/bin/env bash
# NBD figures of issue 5, measured side by side in one run (docs/BENCHMARKS.md):
#  1. sequential read of a 1 GiB page-cached image, `nbdcopy URI null:` (its defaults: four
#     connections where the server allows multi-conn, 64 requests of 256 KiB in flight):
#     rtmd (ro), rtmd (cow, nothing written), rtmd (cow, 1/16 of the clusters written),
#     nbdkit (file plugin), nbd-server, qemu-nbd; ROUNDS rounds, interleaved in rotating
#     order; median throughput and ratios;
#  2. 4 KiB random reads, `fio --ioengine=nbd`, queue depth 1 and 16, SECONDS each, over
#     the same servers (rtmd ro); ROUNDS rounds interleaved; median IOPS and ratios.
# Every server serves the same file on loopback. Installs the missing peers.
# Usage: bench/nbd.sh [ROUNDS] [SECONDS]
set -euo pipefail
cd "$(dirname "$0")/.."
ROUNDS=${1:-7}
SECS=${2:-5}

need=()
for p in libnbd-bin nbdkit nbd-server qemu-utils fio dbus-daemon python3; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || need+=("$p")
done
if [ ${#need[@]} -gt 0 ]; then
  apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${need[@]}" >/dev/null
fi
cargo build --release --locked -q
B=target/release

work=$(mktemp -d)
pids=()
cleanup() {
  for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done
  pkill -f "nbd-server -C $work" 2>/dev/null || true
  wait 2>/dev/null || true
  rm -rf "$work"
}
trap cleanup EXIT
wait_for() { for _ in $(seq 200); do grep -q "$2" "$1" 2>/dev/null && return 0; sleep 0.05; done; echo "timeout waiting for $2 in $1" >&2; cat "$1" >&2; exit 1; }
wait_port() { for _ in $(seq 200); do (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null && return 0; sleep 0.05; done; echo "nothing listens on $1" >&2; exit 1; }
free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }

# The image: 1 GiB of incompressible data, read once so it is in the page cache.
mkdir -p "$work/images"
img="$work/images/disk.img"
head -c 1G /dev/urandom >"$img"
cat "$img" >/dev/null

dbus-daemon --session --nofork --nopidfile --print-address=1 --address="unix:path=$work/bus" >"$work/bus.addr" 2>/dev/null & pids+=($!)
wait_for "$work/bus.addr" unix:path
bus=$(head -1 "$work/bus.addr")

# Two boards sharing the image folder: one exports ro, the other cow (its own overlay).
start_rtmd() { # board port
  cat >"$work/$1.toml" <<TOML
name = "$1"
[images]
dir = "$work/images"
[nbd]
listen = "127.0.0.1:$2"
TOML
  $B/rtmd --config "$work/$1.toml" --bus-address "$bus" --log stderr 2>"$work/$1.log" & pids+=($!)
  pid[rtmd-$1]=$!
  wait_for "$work/$1.log" "ready on"
}
declare -A pid
p_ro=$(free_port); start_rtmd ro "$p_ro"
p_cow=$(free_port); start_rtmd cow "$p_cow"
$B/rtmctl --bus-address "$bus" --dut ro nbd export disk.img >/dev/null
$B/rtmctl --bus-address "$bus" --dut cow nbd export disk.img --cow >/dev/null

p_kit=$(free_port)
nbdkit -f -r -i 127.0.0.1 -p "$p_kit" -e disk.img file "$img" 2>"$work/nbdkit.log" & pids+=($!)
pid[nbdkit]=$!
p_nbds=$(free_port)
cat >"$work/nbd-server.conf" <<CONF
[generic]
  user = root
  group = root
  listenaddr = 127.0.0.1
  port = $p_nbds
[disk.img]
  exportname = $img
  readonly = true
CONF
# nbd-server forks a process per client only as a daemon (-d serves one client and exits).
nbd-server -C "$work/nbd-server.conf" -p "$work/nbd-server.pid" 2>"$work/nbd-server.log"
for _ in $(seq 100); do [ -s "$work/nbd-server.pid" ] && break; sleep 0.05; done
pids+=("$(cat "$work/nbd-server.pid")")
pid[nbd-server]=$(cat "$work/nbd-server.pid")
p_qemu=$(free_port)
qemu-nbd -r -f raw -x disk.img -t -e 16 -b 127.0.0.1 -p "$p_qemu" "$img" 2>"$work/qemu-nbd.log" & pids+=($!)
pid[qemu-nbd]=$!
for p in "$p_kit" "$p_nbds" "$p_qemu"; do wait_port "$p"; done

declare -A uri=(
  [rtmd-ro]="nbd://127.0.0.1:$p_ro/disk.img"
  [rtmd-cow]="nbd://127.0.0.1:$p_cow/disk.img"
  [nbdkit]="nbd://127.0.0.1:$p_kit/disk.img"
  [nbd-server]="nbd://127.0.0.1:$p_nbds/disk.img"
  [qemu-nbd]="nbd://127.0.0.1:$p_qemu/disk.img"
)

median() { sort -g | awk '{a[NR]=$1} END {if (NR%2) print a[(NR+1)/2]; else print (a[NR/2]+a[NR/2+1])/2}'; }

# CPU time a server process has used, with its reaped children (nbd-server forks per
# client), in clock ticks.
ticks() { awk '{print $14 + $15 + $16 + $17}' "/proc/$1/stat"; }
HZ=$(getconf CLK_TCK)

# 1. Sequential reads.
seq_servers=(rtmd-ro rtmd-cow nbdkit nbd-server qemu-nbd)
declare -A seq cpu
run_seq() { # name uri -> GB/s
  local t0 t1
  t0=$(date +%s.%N); nbdcopy "$2" null: ; t1=$(date +%s.%N)
  echo "$t0 $t1" | awk '{printf "%.3f\n", 1.073741824 / ($2 - $1)}'
}
seq_round() { # servers...
  local n=$#
  for round in $(seq "$ROUNDS"); do
    local names=("$@")
    for i in $(seq 0 $((n - 1))); do
      local s=${names[$(( (i + round) % n ))]}
      local base=${s%%+*} before after
      before=$(ticks "${pid[$base]}")
      seq[$s]+="$(run_seq "$s" "${uri[$base]}") "
      after=$(ticks "${pid[$base]}")
      cpu[$s]+="$(echo "$before $after $HZ" | awk '{printf "%.3f", ($2 - $1) / $3}') "
    done
  done
}
seq_round "${seq_servers[@]}"
# cow with 1/16 of its clusters written: a 4 KiB write every 64 KiB, then the same reads.
fio --name=dirty --ioengine=nbd --uri="${uri[rtmd-cow]}" --rw=write:60k --bs=4k --size=1G \
  --output=/dev/null >/dev/null
seq_round rtmd-cow+dirty rtmd-ro

echo
echo "Sequential read, 1 GiB page-cached, nbdcopy URI null: ($ROUNDS rounds, median)"
printf "| %-16s | %6s | %-22s | %16s | %s |\n" server "GB/s" "ratio rtmd-ro / server" "server CPU s/GiB" "CPU ratio server / rtmd-ro"
printf "|%s|%s|%s|%s|%s|\n" "------------------" "--------" "------------------------" "------------------" "------------------------"
m_ro=$(echo "${seq[rtmd-ro]}" | tr ' ' '\n' | grep . | median)
c_ro=$(echo "${cpu[rtmd-ro]}" | tr ' ' '\n' | grep . | median)
for s in rtmd-ro rtmd-cow rtmd-cow+dirty nbdkit nbd-server qemu-nbd; do
  m=$(echo "${seq[$s]}" | tr ' ' '\n' | grep . | median)
  c=$(echo "${cpu[$s]}" | tr ' ' '\n' | grep . | median)
  printf "| %-16s | %6.2f | %22.2f | %16.3f | %.2f |\n" "$s" "$m" "$(echo "$m_ro $m" | awk '{print $1/$2}')" "$c" "$(echo "$c $c_ro" | awk '{print ($2 > 0) ? $1/$2 : 0}')"
done

# 2. Random 4 KiB reads.
rand_servers=(rtmd-ro nbdkit nbd-server qemu-nbd)
declare -A iops
for qd in 1 16; do
  for round in $(seq "$ROUNDS"); do
    n=${#rand_servers[@]}
    for i in $(seq 0 $((n - 1))); do
      s=${rand_servers[$(( (i + round) % n ))]}
      v=$(fio --name=r --ioengine=nbd --uri="${uri[$s]}" --rw=randread --bs=4k --iodepth="$qd" \
            --size=1G --runtime="$SECS" --time_based --output-format=terse 2>/dev/null \
          | awk -F';' '{print $8}')
      iops[$s.$qd]+="$v "
    done
  done
done
echo
echo "4 KiB random reads, fio --ioengine=nbd, ${SECS} s each ($ROUNDS rounds, median IOPS)"
printf "| %-12s | %10s | %10s | %s | %s |\n" server "QD1" "QD16" "rtmd/server QD1" "rtmd/server QD16"
printf "|%s|%s|%s|%s|%s|\n" "--------------" "------------" "------------" "-----------------" "------------------"
r1=$(echo "${iops[rtmd-ro.1]}" | tr ' ' '\n' | grep . | median)
r16=$(echo "${iops[rtmd-ro.16]}" | tr ' ' '\n' | grep . | median)
for s in "${rand_servers[@]}"; do
  a=$(echo "${iops[$s.1]}" | tr ' ' '\n' | grep . | median)
  b=$(echo "${iops[$s.16]}" | tr ' ' '\n' | grep . | median)
  printf "| %-12s | %10.0f | %10.0f | %.2f | %.2f |\n" "$s" "$a" "$b" \
    "$(echo "$r1 $a" | awk '{print $1/$2}')" "$(echo "$r16 $b" | awk '{print $1/$2}')"
done
echo
echo "rtmd RSS while exporting (ro board, after the run): $(ps -o rss= -p "$(pgrep -f "rtmd --config $work/ro.toml")") KiB"
uptime
