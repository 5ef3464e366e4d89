#!/usr/bin/env python3
"""Sends the same requests, good and bad, to an NBD server and prints what came back, one
line per case, so two servers can be compared (tests/nbd.rs runs it against rtmd and nbdkit
serving the same file). Standard library only: every byte on the wire is under our control,
which libnbd (rightly) does not allow for malformed requests.

usage: probe.py PORT EXPORT_NAME SIZE [ro|rw]
"""
import socket
import struct
import sys

NBDMAGIC = b"NBDMAGIC"
IHAVEOPT = 0x49484156454F5054
REPLY_MAGIC = 0x3E889045565A9
REQ_MAGIC = 0x25609513
SIMPLE = 0x67446698
STRUCTURED = 0x668E33EF

port, name, size = int(sys.argv[1]), sys.argv[2].encode(), int(sys.argv[3])
writable = len(sys.argv) > 4 and sys.argv[4] == "rw"


def connect():
    s = socket.create_connection(("127.0.0.1", port), timeout=10)
    greeting = recv(s, 18)
    assert greeting[:8] == NBDMAGIC, greeting
    s.sendall(struct.pack(">I", 3))  # FIXED_NEWSTYLE | NO_ZEROES
    return s


def recv(s, n):
    out = b""
    while len(out) < n:
        chunk = s.recv(n - len(out))
        if not chunk:
            raise EOFError("closed after %d of %d bytes" % (len(out), n))
        out += chunk
    return out


def option(s, opt, data=b""):
    s.sendall(struct.pack(">QII", IHAVEOPT, opt, len(data)) + data)


def option_replies(s):
    """Replies to one option until ACK or an error: [(type, data)]."""
    out = []
    while True:
        magic, _opt, kind, length = struct.unpack(">QIII", recv(s, 20))
        assert magic == REPLY_MAGIC, hex(magic)
        out.append((kind, recv(s, length)))
        if kind == 1 or kind & 0x80000000:
            return out


def go(s, export=name, structured=True, meta=False):
    if structured:
        option(s, 8)
        assert option_replies(s)[-1][0] == 1
    if meta:
        q = b"base:allocation"
        option(s, 10, struct.pack(">I", len(export)) + export + struct.pack(">II", 1, len(q)) + q)
        assert option_replies(s)[-1][0] == 1
    option(s, 7, struct.pack(">I", len(export)) + export + struct.pack(">H", 0))
    return option_replies(s)


def request(s, cmd, offset, length, flags=0, cookie=1, payload=b""):
    s.sendall(struct.pack(">IHHQQI", REQ_MAGIC, flags, cmd, cookie, offset, length) + payload)


def reply(s, structured):
    """The errno of one reply (0 for success), reading any data that comes with it. With
    structured replies negotiated a server may still answer all but READ with a simple
    reply (nbdkit does), so the magic decides."""
    magic = struct.unpack(">I", recv(s, 4))[0]
    if magic == SIMPLE:
        err, _cookie = struct.unpack(">IQ", recv(s, 12))
        return err
    assert structured and magic == STRUCTURED, hex(magic)
    err = 0
    while True:
        flags, kind, _cookie, length = struct.unpack(">HHQI", recv(s, 16))
        body = recv(s, length)
        if kind & 0x8000:
            err = struct.unpack(">I", body[:4])[0]
        if flags & 1:
            return err
        magic = struct.unpack(">I", recv(s, 4))[0]
        assert magic == STRUCTURED, hex(magic)


def case(label, fn):
    try:
        result = fn()
    except (EOFError, ConnectionError, socket.timeout) as e:
        result = "closed" if not isinstance(e, socket.timeout) else "timeout"
    print("%s: %s" % (label, result), flush=True)


def transmission(cmd, offset, length, flags=0, payload=b"", structured=True, read_data=True):
    def run():
        s = connect()
        go(s, structured=structured)
        request(s, cmd, offset, length, flags, payload=payload)
        if not structured and cmd == 0 and read_data:
            err = reply(s, False)
            if err == 0:
                recv(s, length)
            return "errno %d" % err
        return "errno %d" % reply(s, structured)
    return run


def handshake_only(fn):
    def run():
        s = connect()
        return fn(s)
    return run


def unknown_export(s):
    kinds = [k for k, _ in go(s, export=b"no-such-export", structured=False)]
    return "reply %#x" % kinds[-1]


def unknown_option(s):
    option(s, 42)
    return "reply %#x" % option_replies(s)[-1][0]


def starttls(s):
    option(s, 5)
    return "reply %#x" % option_replies(s)[-1][0]


def list_with_data(s):
    option(s, 3, b"x")
    return "reply %#x" % option_replies(s)[-1][0]


def meta_before_structured(s):
    q = b"base:allocation"
    option(s, 10, struct.pack(">I", len(name)) + name + struct.pack(">II", 1, len(q)) + q)
    return "reply %#x" % option_replies(s)[-1][0]


def structured_twice(s):
    option(s, 8)
    option_replies(s)
    option(s, 8)
    return "reply %#x" % option_replies(s)[-1][0]


def bad_request_magic():
    s = connect()
    go(s)
    s.sendall(b"\xde\xad\xbe\xef" + bytes(24))
    s.settimeout(5)
    data = s.recv(100)
    return "closed" if data == b"" else "answered %r" % data[:8]


def still_serves_after_unknown_command():
    s = connect()
    go(s)
    request(s, 99, 0, 0)
    first = reply(s, True)
    request(s, 0, 0, 512, cookie=2)
    second = reply(s, True)
    return "errno %d then errno %d" % (first, second)


def write_then_read():
    s = connect()
    go(s)
    data = bytes(range(256)) * 4
    request(s, 1, 4000, len(data), flags=1, payload=data)
    first = reply(s, True)
    s.close()
    s = connect()
    go(s, structured=False)
    request(s, 0, 4000, len(data), cookie=2)
    second = reply(s, False)
    back = recv(s, len(data))
    return "errno %d, errno %d, %s" % (first, second, "same bytes" if back == data else "other bytes")


def oversized_write_then_read():
    s = connect()
    go(s)
    request(s, 1, 0, big, payload=bytes(big))
    first = reply(s, True)
    request(s, 0, 0, 512, cookie=2)
    return "errno %d then errno %d" % (first, reply(s, True))


big = 65 * 1024 * 1024
if writable:
    case("write with FUA, read back", write_then_read)
    case("write past the end", transmission(1, size, 512, payload=bytes(512)))
    case("write across the end", transmission(1, size - 256, 512, payload=bytes(512)))
    case("trim past the end", transmission(4, size, 4096))
    case("write_zeroes past the end", transmission(6, size, 4096))
    case("write_zeroes with NO_HOLE", transmission(6, 0, 8192, flags=2))
    case("trim with FUA", transmission(4, 0, 8192, flags=1))
    case("write with REQ_ONE", transmission(1, 0, 512, flags=8, payload=bytes(512)))
    case("oversized write, then a read", oversized_write_then_read)
    sys.exit(0)
for structured in (True, False):
    mode = "structured" if structured else "simple"
    case(mode + " read inside", transmission(0, 0, 4096, structured=structured))
    case(mode + " read across the end", transmission(0, size - 100, 4096, structured=structured))
    case(mode + " read past the end", transmission(0, size + 4096, 512, structured=structured))
    case(mode + " read at offset 2^64-512", transmission(0, 2**64 - 512, 512, structured=structured))
    case(mode + " write to ro", transmission(1, 0, 512, payload=bytes(512), structured=structured))
    case(mode + " write past the end", transmission(1, size, 512, payload=bytes(512), structured=structured))
    case(mode + " trim on ro", transmission(4, 0, 4096, structured=structured))
    case(mode + " write_zeroes on ro", transmission(6, 0, 4096, structured=structured))
    case(mode + " read of 65 MiB", transmission(0, 0, big, structured=structured, read_data=False))
    case(mode + " unknown command", transmission(99, 0, 0, structured=structured))
    case(mode + " unknown flag", transmission(0, 0, 512, flags=0x4000, structured=structured))
    case(mode + " flush", transmission(3, 0, 0, structured=structured))
    case(mode + " cache past the end", transmission(5, size, 4096, structured=structured))
case("block status without a context", transmission(7, 0, 4096))
case("unknown export", handshake_only(unknown_export))
case("unknown option", handshake_only(unknown_option))
case("starttls", handshake_only(starttls))
case("list with data", handshake_only(list_with_data))
case("meta context before structured replies", handshake_only(meta_before_structured))
case("bad request magic", bad_request_magic)
case("after an unknown command", still_serves_after_unknown_command)
