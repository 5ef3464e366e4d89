#!/usr/bin/env bash
# Lease figures of issue 8 (docs/BENCHMARKS.md):
#  1. `rtmctl power on` end to end with nobody holding the board and with a lease held by the
#     caller's own uid (the check passes either way; the second also reads the lease), runs
#     interleaved by hyperfine so drift hits both alike; rtmd's power backend is `true`;
#     With BASE_RTMD=path (an rtmd built from the commit before leases), also the same call
#     against that daemon, in the same rounds: the whole cost of the check and the audit;
#  2. the audit history's memory: rtmd's RSS before and after AUDIT_CALLS audited calls
#     (the ring's default capacity is 1000 records), beside the computed bound.
# Needs hyperfine and dbus-daemon. Usage: [BASE_RTMD=...] [BIN_DIR=...] bench/access.sh [RUNS]
# [PROFILE: release|debug]; BIN_DIR takes rtmd and rtmctl from there instead of building.
set -euo pipefail
cd "$(dirname "$0")/.."
RUNS=${1:-300}
PROFILE=${2:-release}
AUDIT_CALLS=${AUDIT_CALLS:-3000}
if [ -n "${BIN_DIR:-}" ]; then B=$BIN_DIR
elif [ "$PROFILE" = release ]; then cargo build --release --locked -q; B=target/release
else cargo build --locked -q; B=target/debug; fi

work=$(mktemp -d)
pids=()
cleanup() { for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done; wait 2>/dev/null || true; rm -rf "$work"; }
trap cleanup EXIT
wait_for() { for _ in $(seq 200); do grep -q "$2" "$1" 2>/dev/null && return 0; sleep 0.05; done; echo "timeout waiting for $2 in $1" >&2; cat "$1" >&2; exit 1; }

dbus-daemon --session --nofork --nopidfile --print-address=1 --address="unix:path=$work/bus" > "$work/bus.addr" 2>&1 &
pids+=($!)
wait_for "$work/bus.addr" unix:path
addr=$(head -1 "$work/bus.addr")
cat > "$work/b.toml" <<CONF
name = "bench"
[power]
backend = "command"
on_command = "true"
off_command = "true"
CONF
RUST_LOG=warn "$B/rtmd" --config "$work/b.toml" --bus-address "$addr" --log stderr > "$work/rtmd.log" 2>&1 &
rtmd_pid=$!
pids+=($rtmd_pid)
for _ in $(seq 100); do "$B/rtmctl" --bus-address "$addr" --dut bench power status >/dev/null 2>&1 && break; sleep 0.05; done
ctl="$B/rtmctl --bus-address $addr --dut bench"
if [ -n "${BASE_RTMD:-}" ]; then
  dbus-daemon --session --nofork --nopidfile --print-address=1 --address="unix:path=$work/bus0" > "$work/bus0.addr" 2>&1 &
  pids+=($!)
  wait_for "$work/bus0.addr" unix:path
  addr0=$(head -1 "$work/bus0.addr")
  RUST_LOG=warn "$BASE_RTMD" --config "$work/b.toml" --bus-address "$addr0" --log stderr > "$work/rtmd0.log" 2>&1 &
  pids+=($!)
  base="$B/rtmctl --bus-address $addr0 --dut bench"
  for _ in $(seq 100); do $base power status >/dev/null 2>&1 && break; sleep 0.05; done
fi

echo "== 1. rtmctl power on, $RUNS runs each, interleaved in 10 rounds ($PROFILE build)"
# hyperfine runs one command's runs in a block: alternate short blocks of each instead, so
# that drift (other work on the machine) hits both alike.
per=$((RUNS / 10))
for round in $(seq 10); do
  $ctl release >/dev/null
  hyperfine -N --runs "$per" --warmup 5 --export-json "$work/free-$round.json" "$ctl power on" >/dev/null
  $ctl hold --ttl 1h bench >/dev/null
  hyperfine -N --runs "$per" --warmup 5 --export-json "$work/held-$round.json" "$ctl power on" >/dev/null
  if [ -n "${BASE_RTMD:-}" ]; then
    hyperfine -N --runs "$per" --warmup 5 --export-json "$work/base-$round.json" "$base power on" >/dev/null
  fi
done
$ctl release >/dev/null
python3 - "$work" <<'PY'
import glob, json, sys, statistics as st
def times(kind):
    return sorted(t for f in glob.glob(f"{sys.argv[1]}/{kind}-*.json")
                  for t in json.load(open(f))["results"][0]["times"])
for kind, name in (("base", "rtmd before leases"), ("free", "no lease"), ("held", "lease held by the caller")):
    t = times(kind)
    if not t:
        continue
    print(f"{name:>26}: median {st.median(t)*1e3:.2f} ms, p95 {t[int(len(t)*.95)]*1e3:.2f} ms ({len(t)} runs)")
d = st.median(times("held")) - st.median(times("free"))
print(f"held - no lease, medians: {d*1e6:+.0f} us")
if times("base"):
    print(f"no lease - before leases, medians: {(st.median(times('free')) - st.median(times('base')))*1e6:+.0f} us")
PY

echo "== 2. audit history memory (a fresh rtmd, ring capacity 1000)"
sed 's/^name = "bench"/name = "bench2"/' "$work/b.toml" > "$work/b2.toml"
RUST_LOG=warn "$B/rtmd" --config "$work/b2.toml" --bus-address "$addr" --log stderr > "$work/rtmd2.log" 2>&1 &
pid2=$!
pids+=($pid2)
ctl2="$B/rtmctl --bus-address $addr --dut bench2"
for _ in $(seq 100); do $ctl2 power status >/dev/null 2>&1 && break; sleep 0.05; done
rss() { awk '/VmRSS/ {print $2}' "/proc/$pid2/status"; }
calls() { seq "$1" | xargs -P 4 -n 50 sh -c 'for i; do '"$ctl2"' power on >/dev/null; done' _; }
r0=$(rss); calls 1000; r1=$(rss); calls 2000; r2=$(rss); calls 2000; r3=$(rss)
echo "RSS: fresh ${r0} KiB; after 1000 audited calls (ring full) ${r1} KiB; after 3000 ${r2} KiB; after 5000 ${r3} KiB; records held: $($ctl2 audit | wc -l)"
