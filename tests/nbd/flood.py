#!/usr/bin/env python3
"""A hostile NBD client: negotiates an export, then sends one kind of request as fast as the
server takes them and never reads a reply. A server that keeps reading grows without bound;
one with backpressure stops reading, and this client's sends block.

tests/nbd.rs runs it against rtmd; bench/nbd_flood.sh runs it against rtmd and nbdkit side
by side (bench/soak.sh can too). Standard library only.

usage: flood.py PORT [--export NAME] [--command flush|read|write] [--length BYTES]
                [--connections N] [--seconds S] [--stall S]

Prints, one line each, flushed at once so that a caller can wait on them:
  "flooding N connections"        after every handshake is done;
  "blocked after R requests"      when no connection could send for --stall seconds (once);
  "sent R requests (B bytes)"     at the end (after --seconds, or on SIGTERM / SIGINT).
Without --seconds it runs until it is killed.
"""
import argparse
import select
import signal
import socket
import struct
import sys
import time

IHAVEOPT = 0x49484156454F5054
REQ_MAGIC = 0x25609513
OPT_GO = 7
REP_ACK = 1
COMMANDS = {"read": 0, "write": 1, "flush": 3}


def say(line):
    print(line, flush=True)


def recv(s, n):
    buf = b""
    while len(buf) < n:
        chunk = s.recv(n - len(buf))
        if not chunk:
            raise SystemExit(f"flood: the server closed the connection during the handshake")
        buf += chunk
    return buf


def connect(port, export):
    s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    # A small receive window: the server's replies fill it at once.
    s.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
    s.settimeout(30)
    s.connect(("127.0.0.1", port))
    greeting = recv(s, 18)
    if greeting[:8] != b"NBDMAGIC":
        raise SystemExit(f"flood: not an NBD server: {greeting!r}")
    s.sendall(struct.pack(">I", 3))  # FIXED_NEWSTYLE | NO_ZEROES
    name = export.encode()
    data = struct.pack(">I", len(name)) + name + struct.pack(">H", 0)
    s.sendall(struct.pack(">QII", IHAVEOPT, OPT_GO, len(data)) + data)
    while True:
        _magic, _opt, kind, length = struct.unpack(">QIII", recv(s, 20))
        recv(s, length)
        if kind & 0x80000000:
            raise SystemExit(f"flood: GO refused with {kind:#x}")
        if kind == REP_ACK:
            break
    s.setblocking(False)
    return s


def main():
    p = argparse.ArgumentParser()
    p.add_argument("port", type=int)
    p.add_argument("--export", default="")
    p.add_argument("--command", choices=sorted(COMMANDS), default="flush")
    p.add_argument("--length", type=int, default=4096, help="of each READ or WRITE")
    p.add_argument("--connections", type=int, default=1)
    p.add_argument("--seconds", type=float, default=0)
    p.add_argument("--stall", type=float, default=2.0)
    a = p.parse_args()

    socks = [connect(a.port, a.export) for _ in range(a.connections)]
    cmd = COMMANDS[a.command]
    length = 0 if a.command == "flush" else a.length
    payload = b"\xa5" * length if a.command == "write" else b""
    # 512 requests per send; cookies are not looked at (no reply is ever read).
    batch = b"".join(
        struct.pack(">IHHQQI", REQ_MAGIC, 0, cmd, i, (i * length) % (1 << 20), length) + payload
        for i in range(512)
    )
    per_request = len(batch) // 512
    say(f"flooding {len(socks)} connections")

    stop = []
    signal.signal(signal.SIGTERM, lambda *_: stop.append(1))
    signal.signal(signal.SIGINT, lambda *_: stop.append(1))
    end = time.monotonic() + a.seconds if a.seconds else None
    sent = 0
    # Per connection: the part of the current batch not sent yet.
    left = {s: memoryview(batch) for s in socks}
    last_progress = time.monotonic()
    said_blocked = False
    while not stop and (end is None or time.monotonic() < end):
        try:
            _, writable, _ = select.select([], socks, [], 0.2)
        except InterruptedError:
            continue
        for s in writable:
            try:
                n = s.send(left[s])
            except BlockingIOError:
                continue
            except OSError as e:
                say(f"the server closed a connection: {e}")
                socks.remove(s)
                continue
            sent += n
            last_progress = time.monotonic()
            left[s] = left[s][n:] if n < len(left[s]) else memoryview(batch)
        if not socks:
            break
        if not said_blocked and time.monotonic() - last_progress > a.stall:
            said_blocked = True
            say(f"blocked after {sent // per_request} requests")
    say(f"sent {sent // per_request} requests ({sent} bytes)")
    for s in socks:
        s.close()


if __name__ == "__main__":
    sys.exit(main())
