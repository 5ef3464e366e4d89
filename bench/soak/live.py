#!/usr/bin/env python3
"""The board and the live console client of bench/soak.sh, in one process and one clock.

usage: live.py BOARD HOST:PORT [--interval-ms MS]

BOARD is the board's side of a pty pair whose other side the daemon opened as its serial
port. Every MS milliseconds (default 5) the board prints one line, "soak NONCE SEQ T\\n", T
being time.monotonic_ns() when the line was due; the client, connected to HOST:PORT (a
telnet port: negotiations are skipped, never answered), takes each line's latency as its
receive time minus T. A line the pty cannot take at once waits in order behind the others
(nonblocking writes): its latency counts from when it was due, so a daemon that stops
reading its serial port shows up as latency, not as a gap. NONCE is this run's, so that lines
a previous run left in the pty are never counted.

Commands on stdin, one a line:
  start  counting begins (lines written before it are received, not counted);
  stop   the board stops printing; the client waits up to 2 s for the lines counted.
Prints "ready" once the client has received its first line, then, after "stop", one JSON
object: lines written and received while counting, latencies p50/p99/max in ms (a line
never received counts as infinitely late: p99 is null when more than 1% are lost), and
whether the connection was closed by the daemon.
"""
import json
import os
import secrets
import select
import socket
import sys
import time
import tty

IAC, SB, SE = 255, 250, 240
GRACE = 2.0


class Telnet:
    """Skips telnet commands in what a server sends; keeps the data bytes."""

    def __init__(self):
        self.state = 0  # 0 data, 1 after IAC, 2 option byte, 3 in SB, 4 IAC in SB

    def feed(self, data):
        out = bytearray()
        for b in data:
            s = self.state
            if s == 0:
                if b == IAC:
                    self.state = 1
                else:
                    out.append(b)
            elif s == 1:
                if b == IAC:
                    out.append(IAC)
                    self.state = 0
                elif b == SB:
                    self.state = 3
                elif 251 <= b <= 254:  # WILL WONT DO DONT
                    self.state = 2
                else:
                    self.state = 0
            elif s == 2:
                self.state = 0
            elif s == 3:
                if b == IAC:
                    self.state = 4
            elif s == 4:
                self.state = 0 if b == SE else 3
        return bytes(out)


def percentile(sorted_values, q):
    if not sorted_values:
        return None
    k = min(len(sorted_values) - 1, max(0, int(round(q * len(sorted_values) + 0.5)) - 1))
    return sorted_values[k]


def main():
    board_path, address = sys.argv[1], sys.argv[2]
    interval = 0.005
    if "--interval-ms" in sys.argv:
        interval = float(sys.argv[sys.argv.index("--interval-ms") + 1]) / 1000
    host, port = address.rsplit(":", 1)
    board = os.open(board_path, os.O_RDWR | os.O_NOCTTY | os.O_NONBLOCK)
    tty.setraw(board)
    sock = socket.create_connection((host, int(port)), timeout=10)
    sock.setblocking(False)
    nonce = secrets.token_hex(4)
    prefix = f"soak {nonce} ".encode()
    telnet = Telnet()

    seq = 0
    pending = bytearray()  # due lines the pty has not taken yet
    due = {}  # seq -> monotonic ns when due, for counted lines
    got = {}  # seq -> latency in ns, for counted lines received
    counting = False
    first_counted = None
    stopping_at = None
    ready = False
    closed = False
    rest = b""
    next_due = time.monotonic()
    stdin = sys.stdin.fileno()
    os.set_blocking(stdin, False)
    inbuf = b""

    while True:
        now = time.monotonic()
        if stopping_at is None and now >= next_due:
            t = time.monotonic_ns()
            if counting:
                due[seq] = t
                if first_counted is None:
                    first_counted = seq
            pending += prefix + f"{seq} {t}\n".encode()
            seq += 1
            next_due += interval
            if next_due < now:  # this process was not scheduled for a while: no burst
                next_due = now + interval
        if pending:
            try:
                n = os.write(board, pending)
                del pending[:n]
            except BlockingIOError:
                pass
        if stopping_at is not None:
            waiting = [s for s in due if s not in got]
            if not waiting or now >= stopping_at or closed:
                break
        rlist = [stdin] + ([] if closed else [sock])
        wlist = [board] if pending else []
        timeout = max(0.0, next_due - time.monotonic()) if stopping_at is None else 0.05
        r, w, _ = select.select(rlist, wlist, [], timeout)
        if sock in r:
            try:
                data = sock.recv(65536)
            except (BlockingIOError, InterruptedError):
                data = None
            except OSError:
                data = b""
            if data == b"":
                closed = True
            elif data:
                t_recv = time.monotonic_ns()
                lines = (rest + telnet.feed(data)).split(b"\n")
                rest = lines.pop()
                for line in lines:
                    line = line.rstrip(b"\r")
                    if not line.startswith(prefix):
                        continue
                    try:
                        s_str, t_str = line[len(prefix):].split(b" ")
                        s, t = int(s_str), int(t_str)
                    except ValueError:
                        continue
                    if not ready:
                        ready = True
                        print("ready", flush=True)
                    if s in due and s not in got:
                        got[s] = t_recv - t
        if stdin in r:
            try:
                chunk = os.read(stdin, 4096)
            except BlockingIOError:
                chunk = b""
            inbuf += chunk
            while b"\n" in inbuf:
                cmd, inbuf = inbuf.split(b"\n", 1)
                if cmd == b"start":
                    counting = True
                elif cmd == b"stop" and stopping_at is None:
                    stopping_at = time.monotonic() + GRACE
            if chunk == b"" and stopping_at is None:  # the runner went away
                stopping_at = time.monotonic()

    lost = len(due) - len(got)
    latencies = sorted(v / 1e6 for v in got.values())
    everything = latencies + [float("inf")] * lost
    p99 = percentile(everything, 0.99)
    result = {
        "written": len(due),
        "received": len(got),
        "lost": lost,
        "p50_ms": percentile(everything, 0.50),
        "p99_ms": None if p99 == float("inf") else p99,
        "max_ms": latencies[-1] if latencies else None,
        "closed_by_daemon": closed,
    }
    for k in ("p50_ms",):
        if result[k] == float("inf"):
            result[k] = None
    print(json.dumps(result), flush=True)


if __name__ == "__main__":
    main()
