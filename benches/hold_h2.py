#!/usr/bin/env python3
"""Idle HTTP/2 (h2c, prior knowledge) connections: what each one costs a proxy in resident memory.

    hold_h2.py PORT HOST COUNT PID [PID...]

The HTTP/2 twin of hold.py: opens COUNT connections to 127.0.0.1:PORT, sends the client
preface, SETTINGS and one GET (`:authority` HOST) on each, reads frames until its response
ends, then holds them all open and idle. Prints "rss_before_kb rss_held_kb
bytes_per_connection" over the PIDs, read before the first connection and three seconds after
the last response. No HTTP/2 library: the request is three static-table HPACK indexes and
one literal. Bounded: every socket operation has a 10 s timeout.
"""
import socket
import struct
import sys

from hold import report, rss_kb

PREFACE = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n"
DATA, HEADERS, SETTINGS = 0, 1, 4
END_STREAM, ACK = 0x1, 0x1


def frame(kind, flags, stream, payload=b""):
    return struct.pack(">I", len(payload))[1:] + bytes([kind, flags]) + struct.pack(">I", stream) + payload


def frames(s):
    """Yields (kind, flags, stream) for each frame read from `s`."""
    buf = bytearray()
    while True:
        while len(buf) >= 9:
            n = int.from_bytes(buf[:3], "big")
            if len(buf) < 9 + n:
                break
            yield buf[3], buf[4], int.from_bytes(buf[5:9], "big") & 0x7FFFFFFF
            del buf[: 9 + n]
        chunk = s.recv(65536)
        if not chunk:
            raise RuntimeError("connection closed before the response ended")
        buf += chunk


def main():
    port, host, count = int(sys.argv[1]), sys.argv[2], int(sys.argv[3])
    pids = sys.argv[4:]
    # :method GET, :scheme http, :path /, then :authority as a literal with indexing.
    block = b"\x82\x86\x84\x41" + bytes([len(host)]) + host.encode()
    request = PREFACE + frame(SETTINGS, 0, 0) + frame(HEADERS, 0x4 | END_STREAM, 1, block)
    before = rss_kb(pids)
    socks = []
    for _ in range(count):
        s = socket.create_connection(("127.0.0.1", port), timeout=10)
        s.sendall(request)
        for kind, flags, stream in frames(s):
            if kind == SETTINGS and not flags & ACK:
                s.sendall(frame(SETTINGS, ACK, 0))
            if stream == 1 and kind in (DATA, HEADERS) and flags & END_STREAM:
                break
        socks.append(s)
    report(socks, pids, before)


if __name__ == "__main__":
    main()
