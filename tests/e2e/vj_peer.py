"""Guest-side programs for the VJ (slhc) capture: a packet sniffer, a TCP server and the client that drives it.

Runs inside the User-Mode Linux guest with the host's Python (see ``tests/e2e/vj_slhc.py``), in two network
namespaces joined by two pppd's; every file it writes goes into the run directory given on the command line.

    vj_peer.py sniff IFACE OUT READY      log every IPv4 packet on IFACE as "out HEX" / "in HEX" lines
    vj_peer.py server ADDR PORT READY     the far side's service (modes below)
    vj_peer.py client ADDR PORT PHASE     the traffic, PHASE "main" or "timestamps"

A connection's first octet selects the server's behaviour: ``E`` echo every chunk back, ``S`` sink until EOF then
answer ``ok`` (urgent data is read inline), ``G`` send the number of octets named by the next 4 octets, then close.
"""

import os
import signal
import socket
import struct
import sys
import threading
import time

ETH_P_ALL = 0x0003
PACKET_OUTGOING = 4


def sniff(iface, out_path, ready_path):
    sock = socket.socket(socket.AF_PACKET, socket.SOCK_DGRAM, socket.htons(ETH_P_ALL))
    sock.bind((iface, ETH_P_ALL))
    out = open(out_path, "w")

    def stop(signum, frame):
        out.flush()
        os._exit(0)

    signal.signal(signal.SIGTERM, stop)
    with open(ready_path, "w") as f:
        f.write("%d\n" % os.getpid())
    while True:
        data, addr = sock.recvfrom(65535)
        if not data or data[0] >> 4 != 4:
            continue
        out.write("%s %s\n" % ("out" if addr[2] == PACKET_OUTGOING else "in", data.hex()))
        out.flush()


def pattern(n, seed):
    block = bytes((seed + i * 7) & 0xFF for i in range(256))
    return (block * (n // 256 + 1))[:n]


def recv_exact(sock, n):
    parts = []
    while n:
        chunk = sock.recv(n)
        if not chunk:
            raise EOFError("connection closed with %d octets missing" % n)
        parts.append(chunk)
        n -= len(chunk)
    return b"".join(parts)


def serve_one(conn):
    try:
        conn.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        conn.setsockopt(socket.SOL_SOCKET, socket.SO_OOBINLINE, 1)
        mode = recv_exact(conn, 1)
        if mode == b"E":
            while True:
                data = conn.recv(4096)
                if not data:
                    break
                conn.sendall(data)
        elif mode == b"S":
            total = 0
            while True:
                data = conn.recv(65536)
                if not data:
                    break
                total += len(data)
            conn.sendall(b"ok %d" % total)
        elif mode == b"G":
            (n,) = struct.unpack("!I", recv_exact(conn, 4))
            conn.sendall(pattern(n, 3))
    finally:
        conn.close()


def server(addr, port, ready_path):
    lsock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    lsock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    lsock.bind((addr, int(port)))
    lsock.listen(64)
    with open(ready_path, "w") as f:
        f.write("%d\n" % os.getpid())
    while True:
        conn, _ = lsock.accept()
        threading.Thread(target=serve_one, args=(conn,), daemon=True).start()


def connect(addr, port, mode, ip_options=None):
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    if ip_options is not None:
        sock.setsockopt(socket.IPPROTO_IP, socket.IP_OPTIONS, ip_options)
    sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    sock.settimeout(30)
    sock.connect((addr, port))
    sock.sendall(mode)
    return sock


def keystrokes(sock, text):
    """One octet at a time, each echoed before the next: the interactive pattern (SPECIAL_I)."""
    for i in range(len(text)):
        sock.sendall(text[i:i + 1])
        if recv_exact(sock, 1) != text[i:i + 1]:
            raise AssertionError("bad echo")
        time.sleep(0.01)


def finish(sock):
    sock.shutdown(socket.SHUT_WR)
    rest = b""
    while True:
        data = sock.recv(4096)
        if not data:
            break
        rest += data
    sock.close()
    return rest


def client(addr, port, phase):
    port = int(port)
    log = []
    if phase == "main":
        # Interactive echo.
        s = connect(addr, port, b"E")
        keystrokes(s, b"the quick brown fox jumps over the lazy dog")
        finish(s)
        log.append("echo ok")
        # Bulk data towards the server (SPECIAL_D from us, acks and window updates back).
        s = connect(addr, port, b"S")
        data = pattern(4000, 1)
        for i in range(0, len(data), 1000):
            s.sendall(data[i:i + 1000])
        assert finish(s) == b"ok 4000"
        log.append("sink ok")
        # Bulk data from the server.
        s = connect(addr, port, b"G")
        s.sendall(struct.pack("!I", 5000))
        assert finish(s) == pattern(5000, 3)
        log.append("source ok")
        # Urgent data (NEW_U), then ordinary data after it.
        s = connect(addr, port, b"S")
        s.sendall(b"abc")
        time.sleep(0.05)
        s.send(b"!", socket.MSG_OOB)
        time.sleep(0.05)
        s.sendall(b"def")
        time.sleep(0.05)
        s.sendall(b"ghi")
        assert finish(s) == b"ok 10"
        log.append("urgent ok")
        # IP options on every segment we send; then TOS and TTL change mid-connection.
        s = connect(addr, port, b"E", ip_options=b"\x01\x01\x01\x00")
        keystrokes(s, b"options")
        s.setsockopt(socket.IPPROTO_IP, socket.IP_TOS, 0x10)
        keystrokes(s, b"tos")
        s.setsockopt(socket.IPPROTO_IP, socket.IP_TTL, 33)
        keystrokes(s, b"ttl")
        finish(s)
        log.append("ip options ok")
        # More conversations than slots, interleaved: LRU reuse and explicit slot numbers.
        socks = [connect(addr, port, b"E") for _ in range(18)]
        for rnd in range(3):
            for i, s in enumerate(socks):
                msg = b"%c%c" % (65 + rnd, 97 + i)
                s.sendall(msg)
                if recv_exact(s, 2) != msg:
                    raise AssertionError("bad echo")
            # The first few again, back to back: slots that stayed recent compress.
            for s in socks[:3]:
                s.sendall(b"z")
                recv_exact(s, 1)
        for s in socks:
            finish(s)
        log.append("many ok")
        # Not TCP: sent as plain IP (the port is closed: the ICMP error comes back as plain IP too).
        u = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        u.sendto(b"datagram", (addr, port + 1))
        time.sleep(0.2)
        u.close()
        log.append("udp ok")
    elif phase == "timestamps":
        # Timestamps on: the TCP options change whenever TSval does.
        s = connect(addr, port, b"E")
        keystrokes(s, b"timestamps")
        finish(s)
        s = connect(addr, port, b"S")
        data = pattern(3000, 5)
        for i in range(0, len(data), 1000):
            s.sendall(data[i:i + 1000])
        assert finish(s) == b"ok 3000"
        log.append("timestamps ok")
    else:
        raise SystemExit("unknown phase %r" % phase)
    print("\n".join(log))


def main(argv):
    cmd = argv[1]
    if cmd == "sniff":
        sniff(*argv[2:5])
    elif cmd == "server":
        server(*argv[2:5])
    elif cmd == "client":
        client(*argv[2:5])
    else:
        raise SystemExit("usage: vj_peer.py sniff|server|client ...")


if __name__ == "__main__":
    main(sys.argv)
