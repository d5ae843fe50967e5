#!/usr/bin/env python3
"""pyslirp's own turnaround on a 64-byte echo: from a request frame's last byte in to the answer's first byte out.

No guest and no line emulation: ``pyslirp.py --stdio`` (the server under test, with a loopback echo service) and
``pyslirp.py client --stdio`` (the peer, forwarding a local port to that service) are joined by this program's
relay, which timestamps every PPP frame crossing it (flag to flag, with ``time.perf_counter``).  A probe
connection through the client's forward sends 64 random bytes, waits for their echo, pauses ``--gap`` seconds
and repeats.  For every request frame toward the server, the turnaround is the time from its last byte written to
the server to the first byte of the next data frame read back: the serial reader, the stack thread, the echo
service's socket and thread, the stack thread again, the serial writer.  The relay and the probe run in one
process, the echo service in another, each pyslirp in its own.

    python3 bench/bench_turnaround.py [--count 200] [--gap 0.05] [--baud 115200] [--set SECTION.KEY=VALUE]

A benchmark (run it under ``flock /tmp/e2e.lock``); it prints figures and checks nothing.
"""

import argparse
import os
import random
import select
import socket
import subprocess
import sys
import threading
import time

HERE = os.path.dirname(os.path.abspath(__file__))
SCRIPT = os.path.join(os.path.dirname(HERE), "pyslirp.py")
FLAG = 0x7E
DATA_FRAME = 60         # bytes between flags: a frame at least this long carries the probe's payload


def free_port():
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    port = s.getsockname()[1]
    s.close()
    return port


def echo_server():
    """An echo service in a child process; returns (process, port)."""
    code = ("import socket,sys,threading\n"
            "l=socket.socket();l.setsockopt(socket.SOL_SOCKET,socket.SO_REUSEADDR,1);l.bind(('127.0.0.1',0))\n"
            "l.listen(8);print(l.getsockname()[1],flush=True)\n"
            "def serve(c):\n"
            "    c.setsockopt(socket.IPPROTO_TCP,socket.TCP_NODELAY,1)\n"
            "    try:\n"
            "        while True:\n"
            "            d=c.recv(65536)\n"
            "            if not d: break\n"
            "            c.sendall(d)\n"
            "    except OSError: pass\n"
            "while True:\n"
            "    c,_=l.accept();threading.Thread(target=serve,args=(c,),daemon=True).start()\n")
    p = subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE)
    return p, int(p.stdout.readline())


class Relay(threading.Thread):
    """Copies bytes both ways between the two processes, recording each frame's first and last byte times."""

    def __init__(self, server, client):
        super().__init__(daemon=True)
        self.server, self.client = server, client
        self.to_server = []             # (t of last byte written, frame length)
        self.from_server = []           # (t of first byte read, frame length)
        self._len = {"s": 0, "c": 0}
        self._start = {"s": None, "c": None}
        self.stop = False

    def _frames(self, side, data, t, out, first):
        """Record each frame ``data`` completes: (time of its first byte if ``first``, else ``t``; length)."""
        parts = data.split(b"\x7e")
        n = self._len[side]
        for i, part in enumerate(parts):
            if part and n == 0:
                self._start[side] = t       # a frame's first byte
            n += len(part)
            if i < len(parts) - 1:          # a flag ends it
                if n:
                    out.append((self._start[side] if first else t, n))
                n = 0
        self._len[side] = n

    def run(self):
        sout = self.server.stdout.fileno()
        cout = self.client.stdout.fileno()
        sin = self.server.stdin.fileno()
        cin = self.client.stdin.fileno()
        poller = select.poll()
        poller.register(sout, select.POLLIN)
        poller.register(cout, select.POLLIN)
        while not self.stop:
            for fd, _ in poller.poll(100):
                data = os.read(fd, 65536)
                if not data:
                    return
                if fd == sout:
                    t = time.perf_counter()
                    self._frames("s", data, t, self.from_server, True)
                    os.write(cin, data)
                else:
                    os.write(sin, data)
                    t = time.perf_counter()
                    self._frames("c", data, t, self.to_server, False)


def percentile(values, q):
    values = sorted(values)
    return values[min(len(values) - 1, int(q * len(values)))]


def main():
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--count", type=int, default=200)
    p.add_argument("--gap", type=float, default=0.05)
    p.add_argument("--baud", type=int, default=115200)
    p.add_argument("--set", action="append", default=[], metavar="SECTION.KEY=VALUE")
    args = p.parse_args()
    echo, echo_port = echo_server()
    fwd = free_port()
    conf = os.path.join("/tmp", "bench_turnaround_%d.toml" % os.getpid())
    sections = {}
    for item in args.set:
        key, value = item.split("=", 1)
        section, name = key.split(".", 1)
        sections.setdefault(section, []).append("%s = %s" % (name, value))
    with open(conf, "w") as f:
        f.write("[serial]\nbaudrate = %d\n" % args.baud)
        f.write("\n".join(sections.pop("serial", [])) + "\n")
        for section, lines in sections.items():
            f.write("[%s]\n%s\n" % (section, "\n".join(lines)))
    server = subprocess.Popen([sys.executable, SCRIPT, "-q", "-c", conf, "--stdio",
                               "--service", "2222=127.0.0.1:%d" % echo_port],
                              stdin=subprocess.PIPE, stdout=subprocess.PIPE, bufsize=0)
    client = subprocess.Popen([sys.executable, SCRIPT, "client", "-q", "--stdio",
                               "-L", "%d:10.0.0.1:2222" % fwd],
                              stdin=subprocess.PIPE, stdout=subprocess.PIPE, bufsize=0)
    relay = Relay(server, client)
    relay.start()
    try:
        deadline = time.time() + 20
        while True:
            try:
                sock = socket.create_connection(("127.0.0.1", fwd), timeout=5)
                break
            except OSError:
                if time.time() > deadline:
                    raise
                time.sleep(0.2)
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        rng = random.Random(1)
        rtts = []
        turn = []
        for i in range(args.count):
            payload = bytes(rng.getrandbits(8) for _ in range(64))
            mark = len(relay.to_server)
            t0 = time.perf_counter()
            sock.sendall(payload)
            got = b""
            while len(got) < 64:
                chunk = sock.recv(64 - len(got))
                if not chunk:
                    raise SystemExit("the echo connection closed")
                got += chunk
            rtts.append(time.perf_counter() - t0)
            assert got == payload
            time.sleep(args.gap)
            reqs = [(t, n) for t, n in relay.to_server[mark:] if n >= DATA_FRAME]
            if len(reqs) != 1:
                continue
            t_req, req_len = reqs[0]
            answers = [(t, n) for t, n in relay.from_server if t > t_req and n >= DATA_FRAME]
            if answers:
                turn.append((answers[0][0] - t_req, req_len, answers[0][1]))
        skip = min(20, len(turn) // 4)           # the first exchanges: connection start, window fitting
        steady = turn[skip:]
        ms = [1000 * t for t, _, _ in steady]
        print("turnaround (request frame in -> answer frame out), %d exchanges: median %.2f ms, p10 %.2f, p90 %.2f"
              % (len(ms), percentile(ms, 0.5), percentile(ms, 0.1), percentile(ms, 0.9)))
        sizes = sorted(set((a, b) for _, a, b in steady))
        print("frame sizes between flags (request, answer): %s" % ", ".join("%d/%d" % s for s in sizes))
        print("probe RTT through both pyslirps: median %.2f ms" % (1000 * percentile(rtts[skip:], 0.5)))
    finally:
        relay.stop = True
        for proc in (client, server):
            proc.terminate()
        for proc in (client, server):
            try:
                proc.wait(5)
            except subprocess.TimeoutExpired:
                proc.kill()
        echo.kill()
        echo.wait()
        os.unlink(conf)


if __name__ == "__main__":
    main()
