#!/usr/bin/env python3
"""Idle keep-alive connections: what each one costs a proxy in resident memory.

    hold.py PORT HOST COUNT PID [PID...]

Opens COUNT connections to 127.0.0.1:PORT, sends one HTTP/1.1 keep-alive request on each
(`Host: HOST`) and reads its whole response, then holds them all open and idle. Prints
"rss_before_kb rss_held_kb bytes_per_connection" where RSS is the sum over the PIDs (a
proxy's worker processes), read before the first connection and three seconds after the
last response. Bounded: every socket operation has a 10 s timeout.
"""
import socket
import sys
import time


def rss_kb(pids):
    total = 0
    for pid in pids:
        with open(f"/proc/{pid}/status") as f:
            for line in f:
                if line.startswith("VmRSS:"):
                    total += int(line.split()[1])
    return total


def read_response(s):
    data = b""
    while b"\r\n\r\n" not in data:
        chunk = s.recv(4096)
        if not chunk:
            raise RuntimeError("connection closed before the response head")
        data += chunk
    head, _, body = data.partition(b"\r\n\r\n")
    length = 0
    for line in head.split(b"\r\n")[1:]:
        name, _, value = line.partition(b":")
        if name.strip().lower() == b"content-length":
            length = int(value.strip())
    while len(body) < length:
        chunk = s.recv(4096)
        if not chunk:
            raise RuntimeError("connection closed mid-body")
        body += chunk
    if not head.startswith(b"HTTP/1.1 200"):
        raise RuntimeError(f"unexpected response: {head[:80]!r}")


def main():
    port, host, count = int(sys.argv[1]), sys.argv[2], int(sys.argv[3])
    pids = sys.argv[4:]
    before = rss_kb(pids)
    request = f"GET / HTTP/1.1\r\nHost: {host}\r\n\r\n".encode()
    socks = []
    for _ in range(count):
        s = socket.create_connection(("127.0.0.1", port), timeout=10)
        s.sendall(request)
        read_response(s)
        socks.append(s)
    report(socks, pids, before)


def report(socks, pids, before):
    """Holds `socks` idle until they settle, prints the figures, then closes them."""
    # Long enough for an idle connection to settle (Remora parks one after 1 s quiet).
    time.sleep(3)
    held = rss_kb(pids)
    print(before, held, round((held - before) * 1024 / len(socks)))
    for s in socks:
        s.close()


if __name__ == "__main__":
    main()
