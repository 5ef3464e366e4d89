#!/usr/bin/env python3
"""One row of one run of bench/soak.sh: a flood against a running daemon, measured.

usage: run.py SPEC_JSON

SPEC_JSON (one argument) has: "daemon" (its name), "flood" (the row's name), "pid" (the
daemon's), "seconds", "flood_cmd" (argv of the flooding client: it prints a line starting
with "flooding" once under way, and its result as its last line), and, where the daemon has
a console, "board" and "live" (the pty side the board writes, and the telnet HOST:PORT the
live client reads: bench/soak/live.py).

Steps: the live client connects and sees a first line; the daemon's RSS and descriptors are
read (the row's "before"); the flood starts and, once it says it is flooding, the live
client starts counting; for SECONDS the daemon's VmRSS (/proc/PID/status) and descriptor
count (/proc/PID/fd) are sampled every 50 ms; the flood is ended (SIGTERM) and one more
second is measured (the flood's client gone); the live client stops. Prints one JSON line:
peaks, the live client's latencies, whether the daemon is still alive, the flood's own
result. The flood and the live client never outlive this process (SIGTERM, then SIGKILL).
"""
import json
import os
import signal
import subprocess
import sys
import time

HERE = os.path.dirname(os.path.abspath(__file__))
SAMPLE = 0.05


def rss_kib(pid):
    try:
        with open(f"/proc/{pid}/status") as f:
            for line in f:
                if line.startswith("VmRSS:"):
                    return int(line.split()[1])
    except OSError:
        pass
    return None


def fds(pid):
    try:
        return len(os.listdir(f"/proc/{pid}/fd"))
    except OSError:
        return None


def alive(pid):
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[0] not in ("Z", "X")
    except OSError:
        return False


def readline(proc, want, timeout):
    """The first line of proc's stdout starting with `want`, or None after `timeout`."""
    import select

    end = time.monotonic() + timeout
    while time.monotonic() < end:
        r, _, _ = select.select([proc.stdout], [], [], max(0.0, end - time.monotonic()))
        if not r:
            break
        line = proc.stdout.readline()
        if not line:
            return None
        if line.startswith(want):
            return line
    return None


def end(proc, grace=3.0):
    if proc is None or proc.poll() is not None:
        return
    proc.send_signal(signal.SIGTERM)
    try:
        proc.wait(grace)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()


def die_with_parent():
    """In the children: killed when this process ends, however it ends."""
    import ctypes

    ctypes.CDLL(None, use_errno=True).prctl(1, signal.SIGKILL)  # PR_SET_PDEATHSIG


def on_term(*_):
    raise SystemExit(143)  # runs the `finally` that ends the children


def main():
    signal.signal(signal.SIGTERM, on_term)
    spec = json.loads(sys.argv[1])
    pid, secs = spec["pid"], float(spec["seconds"])
    out = {"daemon": spec["daemon"], "flood": spec["flood"], "load1": os.getloadavg()[0]}
    live = flood = None
    try:
        if spec.get("live"):
            live = subprocess.Popen(
                [sys.executable, os.path.join(HERE, "live.py"), spec["board"], spec["live"]],
                stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True,
                preexec_fn=die_with_parent)
            if readline(live, "ready", 10) is None:
                raise RuntimeError(f"the live client saw no line from {spec['live']}")
        out["rss_before_kib"], out["fds_before"] = rss_kib(pid), fds(pid)
        flood = subprocess.Popen(spec["flood_cmd"], stdout=subprocess.PIPE,
                                 stderr=subprocess.STDOUT, text=True, preexec_fn=die_with_parent)
        if readline(flood, "flooding", 30) is None:
            raise RuntimeError("the flood never got under way: " + (flood.stdout.read() or "")[-500:]
                               if flood.poll() is not None else "the flood never got under way")
        if live:
            live.stdin.write("start\n")
            live.stdin.flush()
        peak_rss, peak_fds = out["rss_before_kib"] or 0, out["fds_before"] or 0
        t_end = time.monotonic() + secs
        after = None
        while True:
            now = time.monotonic()
            if after is None and (now >= t_end or flood.poll() is not None):
                end(flood, 10.0)
                after = now + 1.0
            if after is not None and now >= after:
                break
            r, n = rss_kib(pid), fds(pid)
            if r is None or n is None:
                break  # the daemon is gone
            peak_rss, peak_fds = max(peak_rss, r), max(peak_fds, n)
            time.sleep(SAMPLE)
        out["peak_rss_kib"], out["peak_fds"] = peak_rss, peak_fds
        out["rss_after_kib"] = rss_kib(pid)
        out["alive"] = alive(pid)
        rest = flood.stdout.read().strip().splitlines()
        out["flood_result"] = rest[-1] if rest else ""
        if live:
            live.stdin.write("stop\n")
            live.stdin.flush()
            line = live.stdout.readline()
            out["live"] = json.loads(line) if line.strip() else None
    except Exception as e:  # reported in the row, the run goes on
        out["error"] = str(e)
        out["alive"] = alive(pid)
    finally:
        end(flood)
        end(live)
    print(json.dumps(out), flush=True)


if __name__ == "__main__":
    main()
