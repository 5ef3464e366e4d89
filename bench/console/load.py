#!/usr/bin/env python3
"""Load generator and clients for bench/console.sh (console figures of issue 3).

One process plays the board (it writes into the "board" side of each socat pty pair) and
every TCP client, so write and receive times come from one monotonic clock.

Usage: load.py SPEC.json   (written by bench/console.sh; see there)

For every target in the spec (rtmd's tcp_raw port, ser2net in three configurations, and the
pty pair read directly, without daemon or TCP, for reference):
  1. throughput: the whole data file to one client, RUNS times; MB/s from the first byte
     written to the last byte received (MB = 10^6 bytes), the daemon's CPU seconds per MB
     (utime + stime from /proc/PID/stat), the client's mean recv size; sha256 must match;
  2. fan-out: CLIENTS clients at once receive FANOUT_BYTES of the data file, then MESSAGES
     timestamped messages of MSG_SIZE bytes, one every INTERVAL_MS; every client's whole
     stream must equal what was written (sha256); latency = receive time - write time of each
     message at each client, p50 and p99 over all clients and messages.
Throughput runs go round-robin over the targets. With "perf" in the spec, one more untimed
run per daemon under `perf stat -p` counts its syscalls. Prints tables, writes the figures
as JSON to OUT; any lost, extra or different byte is a failure (exit 1).
"""

import hashlib
import json
import os
import selectors
import signal
import socket
import statistics
import subprocess
import sys
import threading
import time
import tty

CLK_TCK = os.sysconf("SC_CLK_TCK")
SYNC_TIMEOUT = 5.0
STALL_TIMEOUT = 15.0


class BenchError(Exception):
    pass


def cpu_seconds(pid):
    """utime + stime of a process (all its threads), in seconds."""
    if not pid:
        return 0.0
    with open(f"/proc/{pid}/stat") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    # fields[0] is the state (field 3); utime and stime are fields 14 and 15.
    return (int(fields[11]) + int(fields[12])) / CLK_TCK


def open_board(path):
    fd = os.open(path, os.O_RDWR | os.O_NOCTTY)
    tty.setraw(fd)
    return fd


def write_all(fd, data):
    mv = memoryview(data)
    off = 0
    while off < len(mv):
        off += os.write(fd, mv[off : off + 65536])


class Target:
    """A path from the board side of a pty pair to a reader."""

    def __init__(self, spec):
        self.name = spec["name"]
        self.pid = spec.get("pid")
        self.port = spec.get("port")
        self.board = open_board(spec["board"])
        # The reference has no daemon: the reader opens the device side of the pty pair itself.
        self.device = spec.get("device")
        self.settle = spec.get("settle", 0.3)

    def connect(self, n):
        """n connected clients (sockets, or the device side for the reference), synchronised:
        a marker written to the board has reached every one of them."""
        if self.device:
            assert n == 1
            fd = os.open(self.device, os.O_RDWR | os.O_NOCTTY)
            tty.setraw(fd)
            clients = [DevClient(fd)]
        else:
            clients = []
            for _ in range(n):
                s = socket.create_connection(("127.0.0.1", self.port), timeout=SYNC_TIMEOUT)
                s.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4 << 20)
                clients.append(SockClient(s))
        # Let the daemon subscribe the clients (rtmd) or open the device (ser2net).
        time.sleep(self.settle)
        marker = b"SYNC-%016x\n" % int.from_bytes(os.urandom(8), "big")
        write_all(self.board, marker)
        for c in clients:
            got = b""
            deadline = time.monotonic() + SYNC_TIMEOUT
            while len(got) < len(marker):
                if time.monotonic() > deadline:
                    raise BenchError(f"{self.name}: sync marker not received ({got!r})")
                got += c.recv_some(len(marker) - len(got), SYNC_TIMEOUT)
            if got != marker:
                raise BenchError(f"{self.name}: expected {marker!r}, got {got!r}")
        return clients


class SockClient:
    def __init__(self, sock):
        self.sock = sock

    def fileno(self):
        return self.sock.fileno()

    def recv_some(self, n, timeout):
        self.sock.settimeout(timeout)
        try:
            data = self.sock.recv(n)
        except socket.timeout:
            return b""
        if not data:
            raise BenchError("connection closed by the daemon")
        return data

    def recv_into(self, buf):
        n = self.sock.recv_into(buf)
        if n == 0:
            raise BenchError("connection closed by the daemon")
        return n

    def blocking(self, timeout):
        self.sock.settimeout(timeout)

    def close(self):
        self.sock.close()


class DevClient:
    def __init__(self, fd):
        self.fd = fd

    def fileno(self):
        return self.fd

    def recv_some(self, n, timeout):
        sel = selectors.DefaultSelector()
        sel.register(self.fd, selectors.EVENT_READ)
        ready = sel.select(timeout)
        sel.close()
        return os.read(self.fd, n) if ready else b""

    def recv_into(self, buf):
        return os.readv(self.fd, [buf])

    def blocking(self, timeout):
        pass

    def close(self):
        os.close(self.fd)


PERF_EVENTS = [
    "task-clock",
    "context-switches",
    "raw_syscalls:sys_enter",
    "syscalls:sys_enter_read",
    "syscalls:sys_enter_write",
    "syscalls:sys_enter_writev",
    "syscalls:sys_enter_sendto",
    "syscalls:sys_enter_sendmsg",
    "syscalls:sys_enter_epoll_ctl",
    "syscalls:sys_enter_epoll_wait",
    "syscalls:sys_enter_epoll_pwait",
    "syscalls:sys_enter_ppoll",
    "syscalls:sys_enter_poll",
]


def start_perf(pid, path):
    p = subprocess.Popen(
        ["perf", "stat", "-x", ",", "-o", path, "-e", ",".join(PERF_EVENTS), "-p", str(pid)],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    time.sleep(0.5)  # attached
    return p


def stop_perf(p, path):
    p.send_signal(signal.SIGINT)
    p.wait()
    counts = {}
    for line in open(path):
        f = line.strip().split(",")
        if len(f) > 3 and not line.startswith("#"):
            try:
                counts[f[2].split(":")[-1]] = float(f[0])
            except ValueError:
                pass
    return counts


def throughput(target, data, digest, perf=None):
    (client,) = target.connect(1)
    client.blocking(STALL_TIMEOUT)
    start = {}
    perf_proc = start_perf(target.pid, perf) if perf else None

    def writer():
        start["ns"] = time.monotonic_ns()
        write_all(target.board, data)
        start["done"] = time.monotonic_ns()

    cpu0 = cpu_seconds(target.pid)
    t = threading.Thread(target=writer, daemon=True)
    t.start()
    buf = bytearray(1 << 20)
    mv = memoryview(buf)
    h = hashlib.sha256()
    got = 0
    reads = 0
    try:
        while got < len(data):
            n = client.recv_into(mv)
            h.update(mv[:n])
            got += n
            reads += 1
    except (socket.timeout, TimeoutError):
        raise BenchError(f"{target.name}: stalled after {got} of {len(data)} bytes")
    end = time.monotonic_ns()
    cpu1 = cpu_seconds(target.pid)
    t.join()
    counts = stop_perf(perf_proc, perf) if perf else None
    client.close()
    if h.digest() != digest:
        raise BenchError(f"{target.name}: sha256 of the received bytes differs")
    secs = (end - start["ns"]) / 1e9
    mb = len(data) / 1e6
    return {
        "mb_per_s": mb / secs,
        "seconds": secs,
        "cpu_s_per_mb": (cpu1 - cpu0) / mb,
        "mean_recv": got / reads,
        "perf": counts,
    }


def fanout(target, bulk, n_clients, messages, msg_size, interval_ms):
    clients = target.connect(n_clients)
    for c in clients:
        c.blocking(0)
    # What every client must receive: the bulk part, then the messages. A message is
    # "<seq> <padding>\n", its write time is kept here by sequence number.
    h_sent = hashlib.sha256(bulk)
    total = len(bulk) + messages * msg_size
    sel = selectors.EpollSelector()
    state = []
    for i, c in enumerate(clients):
        sel.register(c.fileno(), selectors.EVENT_READ, i)
        state.append({"got": 0, "h": hashlib.sha256(), "recv_ns": [0] * messages})
    buf = bytearray(1 << 20)
    mv = memoryview(buf)

    def drain(ready):
        now_done = 0
        for key, _ in ready:
            st = state[key.data]
            c = clients[key.data]
            try:
                n = c.recv_into(mv)
            except (BlockingIOError, InterruptedError):
                continue
            t = time.monotonic_ns()
            st["h"].update(mv[:n])
            before = st["got"]
            st["got"] = before + n
            # Messages whose last byte arrived in this read.
            lo = before - len(bulk)
            hi = st["got"] - len(bulk)
            if hi > 0:
                k = max(0, lo) // msg_size
                while (k + 1) * msg_size <= hi:
                    if (k + 1) * msg_size > lo:
                        st["recv_ns"][k] = t
                    k += 1
            if st["got"] >= total:
                now_done += 1
        return now_done

    # Bulk: every client must get all of it; written by a thread while this one reads.
    t0 = time.monotonic_ns()
    w = threading.Thread(target=write_all, args=(target.board, bulk), daemon=True)
    w.start()
    last_progress = time.monotonic()
    while min(st["got"] for st in state) < len(bulk):
        ready = sel.select(1.0)
        if ready:
            last_progress = time.monotonic()
            drain(ready)
        elif time.monotonic() - last_progress > STALL_TIMEOUT:
            raise BenchError(f"{target.name}: fan-out stalled: {[s['got'] for s in state]}")
    t1 = time.monotonic_ns()
    w.join()
    if max(st["got"] for st in state) > len(bulk):
        raise BenchError(f"{target.name}: more bytes than written")
    bulk_secs = (t1 - t0) / 1e9

    # Latency: one message every interval, all in this thread (writes never block: the pty
    # takes 64 bytes at once).
    sent_ns = [0] * messages
    nxt = time.monotonic_ns()
    seq = 0
    deadline = None
    while True:
        now = time.monotonic_ns()
        if seq < messages and now >= nxt:
            msg = (b"%08d " % seq).ljust(msg_size - 1, b".") + b"\n"
            h_sent.update(msg)
            sent_ns[seq] = time.monotonic_ns()
            write_all(target.board, msg)
            seq += 1
            nxt += interval_ms * 1_000_000
            if seq == messages:
                deadline = time.monotonic() + STALL_TIMEOUT
            continue
        timeout = max(0.0, (nxt - now) / 1e9) if seq < messages else 0.5
        ready = sel.select(timeout)
        if ready:
            drain(ready)
        if seq == messages and all(st["got"] >= total for st in state):
            break
        if deadline and time.monotonic() > deadline:
            raise BenchError(f"{target.name}: messages lost: {[s['got'] for s in state]} of {total}")
    sel.close()
    for c in clients:
        c.close()
    want = h_sent.digest()
    bad = [i for i, st in enumerate(state) if st["h"].digest() != want or st["got"] != total]
    if bad:
        raise BenchError(f"{target.name}: clients {bad} received different bytes")
    lat = sorted(
        (st["recv_ns"][k] - sent_ns[k]) / 1e3 for st in state for k in range(messages)
    )

    def q(p):
        return lat[min(len(lat) - 1, int(round(p * (len(lat) - 1))))]

    return {
        "clients": n_clients,
        "bulk_mb_per_s_each": len(bulk) / 1e6 / bulk_secs,
        "p50_us": q(0.50),
        "p99_us": q(0.99),
        "max_us": lat[-1],
    }


def main():
    spec = json.load(open(sys.argv[1]))
    data = open(spec["data"], "rb").read()
    digest = hashlib.sha256(data).digest()
    bulk = data[: spec["fanout_bytes"]]
    mb = len(data) / 1e6
    targets = [Target(ts) for ts in spec["targets"]]
    results = {t.name: {"label": ts["label"], "runs": []} for t, ts in zip(targets, spec["targets"])}
    # Throughput runs go round-robin over the targets, so that drift on the machine (another
    # process, the page cache) spreads over all of them rather than hitting one.
    for i in range(spec["runs"]):
        for t in targets:
            run = throughput(t, data, digest)
            results[t.name]["runs"].append(run)
            cpu = f"{run['cpu_s_per_mb'] * 1e3:6.2f} ms CPU/MB" if t.pid else f"{'-':>16}"
            print(
                f"  run {i + 1} {t.name:7} {run['mb_per_s']:6.1f} MB/s, {cpu}, "
                f"mean recv {run['mean_recv']:6.0f} B, sha256 identical",
                flush=True,
            )
    for t in targets:
        r = results[t.name]
        med = sorted(r["runs"], key=lambda x: x["mb_per_s"])[len(r["runs"]) // 2]
        r["mb_per_s"] = med["mb_per_s"]
        r["cpu_s_per_mb"] = statistics.median(x["cpu_s_per_mb"] for x in r["runs"])
        r["mean_recv"] = statistics.median(x["mean_recv"] for x in r["runs"])
        if spec.get("perf") and t.pid:
            run = throughput(t, data, digest, perf=spec["out"] + ".perf")
            r["perf"] = {k: v / mb for k, v in run["perf"].items()}
            r["perf_mb_per_s"] = run["mb_per_s"]
    for t in targets:
        n = 1 if t.device else spec["clients"]
        f = fanout(t, bulk, n, spec["messages"], spec["msg_size"], spec["interval_ms"])
        results[t.name].update(f)
        print(
            f"  fan-out {t.name:7} {n} client(s), {f['bulk_mb_per_s_each']:.1f} MB/s each, "
            f"sha256 identical for all; latency p50 {f['p50_us']:.0f} us, "
            f"p99 {f['p99_us']:.0f} us, max {f['max_us']:.0f} us",
            flush=True,
        )
        os.close(t.board)
    json.dump(results, open(spec["out"], "w"), indent=1)
    base = results[spec["baseline"]]
    ref = results.get("rtmd")

    print()
    print(f"{len(data) >> 20} MiB to one client, median of {spec['runs']}; "
          f"{spec['clients']} clients at once: {len(bulk) >> 20} MiB each, then "
          f"{spec['messages']} x {spec['msg_size']} B messages, one every {spec['interval_ms']} ms")
    cols = ["", "MB/s", "min-max", "/ " + base["label"].split(",")[0] + " 64k", "CPU ms/MB",
            "mean recv B",
            f"{spec['clients']} clients MB/s each", "p50 us", "p99 us"]
    rows = []
    for name, r in results.items():
        rows.append([
            r["label"], f"{r['mb_per_s']:.1f}",
            "{:.0f}-{:.0f}".format(min(x["mb_per_s"] for x in r["runs"]), max(x["mb_per_s"] for x in r["runs"])),
            f"{r['mb_per_s'] / base['mb_per_s']:.2f}",
            "-" if name == "pty" else f"{r['cpu_s_per_mb'] * 1e3:.2f}",
            f"{r['mean_recv']:.0f}",
            f"{r['bulk_mb_per_s_each']:.1f}",
            f"{r['p50_us']:.0f}", f"{r['p99_us']:.0f}",
        ])
    table(cols, rows)
    if spec.get("perf"):
        print()
        print("perf stat -p DAEMON during one more (untimed) throughput run, per MB moved:")
        cols = ["", "MB/s", "task-clock ms", "syscalls", "reads", "B per read call",
                "sends", "epoll waits", "epoll_ctl", "ctx switches"]
        rows = []
        for name, r in results.items():
            c = r.get("perf")
            if not c:
                continue
            g = lambda *ks: sum(c.get(k, 0) for k in ks)
            reads = g("sys_enter_read")
            rows.append([
                r["label"], f"{r['perf_mb_per_s']:.1f}", f"{g('task-clock'):.2f}",
                f"{g('sys_enter'):.0f}", f"{reads:.0f}", f"{1e6 / reads:.0f}" if reads else "-",
                f"{g('sys_enter_write', 'sys_enter_writev', 'sys_enter_sendto', 'sys_enter_sendmsg'):.0f}",
                f"{g('sys_enter_epoll_wait', 'sys_enter_epoll_pwait', 'sys_enter_poll', 'sys_enter_ppoll'):.0f}",
                f"{g('sys_enter_epoll_ctl'):.0f}", f"{g('context-switches'):.0f}",
            ])
        table(cols, rows)
    if ref:
        ratio = ref["mb_per_s"] / base["mb_per_s"]
        print()
        print(f"goal: throughput rtmd >= 1.25 x {base['label']}: {ratio:.2f} x: "
              f"{'met' if ratio >= 1.25 else 'NOT met'}")
        print(f"goal: latency p99 <= 1 ms with {spec['clients']} clients: "
              f"{ref['p99_us'] / 1e3:.3f} ms: {'met' if ref['p99_us'] <= 1000 else 'NOT met'}")


def table(cols, rows):
    w = [max(len(str(x)) for x in col) for col in zip(cols, *rows)]
    line = lambda cells: "| " + " | ".join(
        str(c).ljust(w[i]) if i == 0 else str(c).rjust(w[i]) for i, c in enumerate(cells)) + " |"
    print(line(cols))
    print("|" + "|".join("-" * (x + 2) for x in w) + "|")
    for r in rows:
        print(line(r))


if __name__ == "__main__":
    try:
        main()
    except BenchError as e:
        print(f"FAIL: {e}", file=sys.stderr)
        sys.exit(1)
