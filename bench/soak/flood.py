#!/usr/bin/env python3
"""The hostile clients of bench/soak.sh (the attacks of tests/console_hostile.rs and
tests/pdu_hostile.rs, run for a fixed time against any daemon). Standard library only.

usage: flood.py KIND PORT SECONDS

KIND is one of:
  iacdo  one telnet connection sends IAC DO 99 (an option nobody agrees to, so each is
         answered) as fast as the daemon takes them, and never reads the answers;
  brk    one telnet connection sends 2,048 IAC BRK, one per write (TCP_NODELAY), then
         again every second;
  idle   1,100 connections that send nothing and read nothing; a connection the daemon
         closes is opened again a second later, so the pressure stays on;
  half   1,100 connections each send half a pdudaemon-API request (the request line and a
         header, no blank line) and wait; a connection the daemon answers or closes is
         opened again a second later.
Prints "flooding" once the attack is under way, then, after SECONDS (or on SIGTERM), one
line of JSON: what the daemon took (bytes, connections opened, refused or answered, the most
open at once, the answers' status lines).
"""
import json
import resource
import select
import signal
import socket
import sys
import time

IAC, DO, BRK = 255, 253, 243
HALF = b"GET /power/control/on?hostname=lab-pdu&port=3 HTTP/1.1\r\nHost: x\r\n"
CONNECTIONS = 1100
REOPEN_AFTER = 1.0

stop = []


def say(obj):
    print(obj if isinstance(obj, str) else json.dumps(obj), flush=True)


def until(seconds):
    end = time.monotonic() + seconds
    return lambda: not stop and time.monotonic() < end


def iacdo(port, going):
    s = socket.create_connection(("127.0.0.1", port))
    s.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    s.setblocking(False)
    block = bytes([IAC, DO, 99]) * 21845
    view, taken = memoryview(block), 0
    say("flooding")
    while going():
        _, w, _ = select.select([], [s], [], 0.2)
        if not w:
            continue
        try:
            n = s.send(view)
        except BlockingIOError:
            continue
        except OSError as e:
            return {"bytes": taken, "closed": str(e)}
        taken += n
        view = view[n:] if n < len(view) else memoryview(block)
    s.close()
    return {"bytes": taken}


def brk(port, going):
    s = socket.create_connection(("127.0.0.1", port))
    s.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    s.settimeout(0.5)
    sent, stalled = 0, 0
    say("flooding")
    while going():
        started = time.monotonic()
        for _ in range(2048):
            try:
                s.send(bytes([IAC, BRK]))
                sent += 1
            except socket.timeout:
                stalled += 1  # the daemon stopped reading us
                break
            except OSError as e:
                return {"breaks": sent, "closed": str(e)}
        time.sleep(max(0.0, 1.0 - (time.monotonic() - started)))
    s.close()
    return {"breaks": sent, "bursts_stalled": stalled}


def many(port, going, first):
    """CONNECTIONS connections, each sending `first` once; closed ones reopen later."""
    ep = select.epoll()  # select() stops at descriptor 1,024
    socks = {}  # fd -> [socket, bytes received, `first` sent yet]
    reopen = []  # monotonic times at which to open one more
    stats = {"opened": 0, "refused_connect": 0, "closed_by_daemon": 0, "most_open": 0,
             "answers": {}}

    def open_one():
        s = socket.socket()
        s.setblocking(False)
        try:
            s.connect(("127.0.0.1", port))
        except BlockingIOError:
            pass
        except OSError:
            stats["refused_connect"] += 1
            s.close()
            reopen.append(time.monotonic() + REOPEN_AFTER)
            return
        socks[s.fileno()] = [s, bytearray(), not first]
        # Never read while the daemon keeps the connection: woken only when it closes.
        ep.register(s.fileno(), select.EPOLLRDHUP | (select.EPOLLOUT if first else 0))
        stats["opened"] += 1

    def close(fd, answered):
        s, got, _ = socks.pop(fd)
        ep.unregister(fd)
        s.close()
        if answered:
            answer = bytes(got).split(b"\n", 1)[0].rstrip(b"\r").decode("utf-8", "replace")
            stats["answers"][answer] = stats["answers"].get(answer, 0) + 1
            stats["closed_by_daemon"] += 1
        else:
            stats["refused_connect"] += 1
        reopen.append(time.monotonic() + REOPEN_AFTER)

    for _ in range(CONNECTIONS):
        open_one()
    say("flooding")
    while going():
        stats["most_open"] = max(stats["most_open"], len(socks))
        now = time.monotonic()
        while reopen and reopen[0] <= now and len(socks) < CONNECTIONS:
            reopen.pop(0)
            open_one()
        for fd, ev in ep.poll(0.1):
            if fd not in socks:
                continue
            entry = socks[fd]
            s = entry[0]
            if ev & select.EPOLLOUT and not entry[2]:
                if s.getsockopt(socket.SOL_SOCKET, socket.SO_ERROR):
                    close(fd, False)  # the connection never came up
                    continue
                try:
                    s.send(first)
                except OSError:
                    pass
                entry[2] = True
                ep.modify(fd, select.EPOLLRDHUP)
                continue
            if ev & (select.EPOLLRDHUP | select.EPOLLHUP | select.EPOLLERR):
                # The daemon closed: its answer is the first line of what it sent.
                try:
                    entry[1] += s.recv(256)
                except OSError:
                    pass
                close(fd, entry[2])
    for entry in socks.values():
        entry[0].close()
    return stats


def main():
    kind, port, seconds = sys.argv[1], int(sys.argv[2]), float(sys.argv[3])
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    signal.signal(signal.SIGTERM, lambda *_: stop.append(1))
    going = until(seconds)
    if kind == "iacdo":
        result = iacdo(port, going)
    elif kind == "brk":
        result = brk(port, going)
    elif kind == "idle":
        result = many(port, going, b"")
    elif kind == "half":
        result = many(port, going, HALF)
    else:
        sys.exit(f"flood.py: unknown kind {kind}")
    say(result)


if __name__ == "__main__":
    main()
