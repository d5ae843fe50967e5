"""Servers of the outside host (tests/e2e/netns.py), run inside its network namespace: ``python3 THIS PLAN.json``.

Theory of operation
-------------------
The plan (JSON) names the address to bind, a file for the event log and the servers::

    {"address": "198.18.0.2", "events": "/tmp/.../outside-events.jsonl", "ready": "/tmp/.../outside.ready",
     "tcp_echo": [7007, 7011], "tcp_download": {"7008": [SEED, SIZE]}, "udp_echo": [7009]}

* TCP echo: writes back everything it reads, until the client's end; then closes.
* TCP download: sends ``payload(SEED, SIZE)`` (tests/e2e/services.py), shuts its side down, reads to the end.
* UDP echo: sends each datagram back to where it came from.

Every connection and datagram is one JSON line in the event log, so the test sees what arrived and from where:
``{"event": "accept", "port": P, "peer": [ip, port]}``, ``{"event": "closed", "port": P, "peer": [...],
"received": N, "sha256": HEX, "sent": N}``, ``{"event": "udp", "port": P, "peer": [...], "size": N, "sha256": HEX}``.
Once every socket is bound and listening the ready file is written.  The process runs until it is killed; its
threads are daemons and its sockets have timeouts, so nothing outlives the test.
"""

import hashlib
import json
import os
import socket
import sys
import threading

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
from e2e.services import payload  # noqa: E402  (the same bytes the guest expects)

IO_TIMEOUT = 120
_lock = threading.Lock()
_events = None


def event(**fields):
    line = json.dumps(fields, sort_keys=True) + "\n"
    with _lock:
        _events.write(line)
        _events.flush()


def serve_tcp(sock, handler):
    port = sock.getsockname()[1]
    while True:
        conn, peer = sock.accept()
        conn.settimeout(IO_TIMEOUT)
        event(event="accept", port=port, peer=list(peer))
        threading.Thread(target=run_connection, args=(conn, peer, port, handler), daemon=True).start()


def run_connection(conn, peer, port, handler):
    h, counts = hashlib.sha256(), {"received": 0, "sent": 0}
    error = None
    try:
        handler(conn, h, counts)
    except OSError as exc:
        error = repr(exc)
    finally:
        conn.close()
    event(event="closed", port=port, peer=list(peer), received=counts["received"], sent=counts["sent"],
          sha256=h.hexdigest(), error=error)


def echo(conn, h, counts):
    while True:
        data = conn.recv(65536)
        if not data:
            return
        h.update(data)
        counts["received"] += len(data)
        conn.sendall(data)
        counts["sent"] += len(data)


def download(data):
    def handler(conn, h, counts):
        conn.sendall(data)
        counts["sent"] += len(data)
        conn.shutdown(socket.SHUT_WR)
        while True:
            got = conn.recv(65536)
            if not got:
                return
            h.update(got)
            counts["received"] += len(got)
    return handler


def serve_udp(sock):
    port = sock.getsockname()[1]
    while True:
        data, peer = sock.recvfrom(65535)
        event(event="udp", port=port, peer=list(peer), size=len(data), sha256=hashlib.sha256(data).hexdigest())
        sock.sendto(data, peer)


def listener(address, port):
    s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    s.bind((address, port))
    s.listen(64)
    return s


def main(plan_path):
    global _events
    with open(plan_path) as f:
        plan = json.load(f)
    _events = open(plan["events"], "a")
    address = plan["address"]
    threads = []
    for port in plan.get("tcp_echo", []):
        threads.append(threading.Thread(target=serve_tcp, args=(listener(address, port), echo), daemon=True))
    for port, (seed, size) in plan.get("tcp_download", {}).items():
        threads.append(threading.Thread(target=serve_tcp, args=(listener(address, int(port)),
                                                                download(payload(seed, size))), daemon=True))
    for port in plan.get("udp_echo", []):
        s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        s.bind((address, port))
        threads.append(threading.Thread(target=serve_udp, args=(s,), daemon=True))
    for t in threads:
        t.start()
    with open(plan["ready"], "w") as f:
        f.write("%d\n" % os.getpid())
    for t in threads:
        t.join()


if __name__ == "__main__":
    main(sys.argv[1])
