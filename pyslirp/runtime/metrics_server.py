"""The metrics server: one small HTTP thread serving the stack thread's snapshots.

Theory of operation
-------------------
The figures belong to the stack thread, which alone may walk the protocol
objects (pyslirp/metrics.py ``collect``).  The two threads meet in a
:class:`SnapshotBox`:

* the server thread, when a scrape arrives and the box's snapshot is older
  than ``max_age`` ms (MAX_AGE_MS), asks for a new one
  (:meth:`SnapshotBox.request` posts ``("metrics",)`` to the stack thread's
  inbox, once until it is answered) and parks the request;
* the stack thread, when it gets to that inbox item, builds a snapshot if
  the box's is still too old and publishes it (:meth:`SnapshotBox.publish`:
  a reference swap under a lock held for nothing else, and one byte on a
  socket pair that wakes the server thread).  The stack thread never waits
  for the server;
* the server answers every parked request with the new snapshot, rendered
  on its own thread (the snapshot is an immutable value).  A request still
  parked after REFRESH_WAIT seconds (a stack thread that is very busy) gets
  the latest snapshot there is, or 503 if there has never been one.

So the figures are at most a few hundred ms old, and however often the
server is scraped the stack thread builds at most one snapshot per
``max_age``.

HTTP: ``GET /metrics`` (the Prometheus text format, version 0.0.4) and
``GET /metrics.json`` (the same figures as JSON); ``HEAD`` likewise without
the body; other paths 404, other methods 405.  One request per connection
(``Connection: close``).  Everything is bounded: the request head is at most
MAX_REQUEST bytes (431 beyond), a connection that has not sent a complete
request within REQUEST_TIMEOUT seconds is closed (408), at most MAX_CLIENTS
connections are served at once (more are closed at once).  The server runs
one ``selectors`` loop, never blocks on a client, and reads nothing but the
request head.

Address: a loopback address unless ``allow_remote`` (``[monitoring]
metrics_listen`` and ``metrics_allow_remote``; the configuration checks it
too, and :class:`MetricsServer` refuses a non-loopback address by itself).
"""

import errno
import ipaddress
import logging
import selectors
import socket
import threading
import time

from pyslirp import metrics

log = logging.getLogger("pyslirp.runtime.metrics")

MAX_AGE_MS = 250            # a snapshot older than this is refreshed before it is served
REFRESH_WAIT = 1.0          # s: serve what there is if the stack thread has not answered by then
MAX_REQUEST = 8192          # bytes of request head
REQUEST_TIMEOUT = 5.0       # s to send a complete request
MAX_CLIENTS = 16
TEXT_TYPE = "text/plain; version=0.0.4; charset=utf-8"
JSON_TYPE = "application/json"


def monotonic_ms():
    return int(time.monotonic() * 1000)


def is_loopback(host):
    return ipaddress.ip_address(host).is_loopback


class SnapshotBox(object):
    """Where the stack thread leaves snapshots for the server thread (see the module docstring)."""

    def __init__(self, post, max_age_ms=MAX_AGE_MS, clock=monotonic_ms):
        self._post = post
        self.max_age_ms = max_age_ms
        self._clock = clock
        self._lock = threading.Lock()
        self._snapshot = None
        self._asked = False
        self._waiters = []              # callables woken by publish (the server's socket pair)
        self.published = 0

    @property
    def snapshot(self):
        return self._snapshot

    def fresh(self, now_ms=None):
        """The snapshot if it is at most ``max_age_ms`` old, else None."""
        snap = self._snapshot
        now = self._clock() if now_ms is None else now_ms
        if snap is not None and now - snap.taken_ms <= self.max_age_ms:
            return snap
        return None

    def request(self):
        """Ask the stack thread for a new snapshot (once until it is published)."""
        with self._lock:
            if self._asked:
                return
            self._asked = True
        self._post(("metrics",))

    def stale(self, now_ms):
        """For the stack thread: is a new snapshot due?"""
        return self.fresh(now_ms) is None

    def publish(self, snapshot):
        """For the stack thread: hand over a new snapshot (never blocks on the server)."""
        with self._lock:
            self._snapshot = snapshot
            self._asked = False
            waiters = list(self._waiters)
        self.published += 1
        for wake in waiters:
            wake()

    def add_waiter(self, wake):
        with self._lock:
            self._waiters.append(wake)


class _Client(object):
    __slots__ = ("sock", "events", "buf", "deadline", "out", "request", "parked_until")

    def __init__(self, sock, deadline):
        self.sock = sock
        self.events = 0             # what the selector watches for
        self.buf = b""
        self.deadline = deadline
        self.out = None             # response bytes still to send
        self.request = None         # (method, path) once parsed
        self.parked_until = None    # waiting for a fresh snapshot until then


class MetricsServer(threading.Thread):
    """``GET /metrics`` and ``GET /metrics.json`` on ``(host, port)`` (port 0: any; see ``address``).

    ``host`` is an IP address (pyslirp/config.py ``parse_listen`` makes one of ``localhost``).  Binding happens
    here: OSError (address in use, not an address of this host) goes to the caller.
    """

    def __init__(self, listen, box, allow_remote=False, request_timeout=REQUEST_TIMEOUT, max_clients=MAX_CLIENTS):
        super().__init__(name="metrics", daemon=True)
        host, port = listen
        if not allow_remote and not is_loopback(host):
            raise ValueError("%s is not a loopback address (set metrics_allow_remote to serve other hosts)" % host)
        self.box = box
        self.request_timeout = request_timeout
        self.max_clients = max_clients
        family = socket.AF_INET6 if ":" in host else socket.AF_INET
        self._listener = socket.socket(family, socket.SOCK_STREAM)
        try:
            self._listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            self._listener.bind((host, port))       # OSError (in use, not an address of ours): the caller reports it
            self._listener.listen(16)
            self._listener.setblocking(False)
        except BaseException:
            self._listener.close()
            raise
        self.address = self._listener.getsockname()[:2]
        self._wake_r, self._wake_w = socket.socketpair()
        self._wake_r.setblocking(False)
        self._wake_w.setblocking(False)
        self._stopping = False
        self._clients = {}
        self._rendered = (None, None, None)     # (snapshot, text, json) of the latest rendering
        self.served = 0
        self.rejected = 0
        box.add_waiter(self._wake)

    # -- from other threads ------------------------------------------------------------------

    def _wake(self):
        try:
            self._wake_w.send(b"x")
        except OSError:
            pass                    # full (already awake) or closed (stopped)

    def stop(self, timeout=2.0):
        self._stopping = True
        self._wake()
        if self.is_alive():
            self.join(timeout)

    # -- the thread ----------------------------------------------------------------------------

    def run(self):
        sel = selectors.DefaultSelector()
        sel.register(self._listener, selectors.EVENT_READ, "listen")
        sel.register(self._wake_r, selectors.EVENT_READ, "wake")
        try:
            while not self._stopping:
                for key, mask in sel.select(self._timeout()):
                    if key.data == "listen":
                        self._accept(sel)
                    elif key.data == "wake":
                        self._drain_wake()
                    else:
                        self._ready(sel, key.data, mask)
                self._housekeeping(sel)
        except Exception:
            log.exception("metrics server failed")
        finally:
            for client in list(self._clients.values()):
                self._drop(sel, client)
            sel.close()
            self._listener.close()
            self._wake_r.close()
            self._wake_w.close()

    def _timeout(self):
        now = time.monotonic()
        deadline = None
        for c in self._clients.values():
            for t in (c.deadline, c.parked_until):
                if t is not None and (deadline is None or t < deadline):
                    deadline = t
        return None if deadline is None else max(0.0, deadline - now)

    def _drain_wake(self):
        try:
            while self._wake_r.recv(4096):
                pass
        except OSError:
            pass

    def _accept(self, sel):
        while True:
            try:
                sock, _ = self._listener.accept()
            except (BlockingIOError, InterruptedError):
                return
            except OSError as exc:
                if exc.errno in (errno.EMFILE, errno.ENFILE, errno.ENOBUFS, errno.ENOMEM):
                    log.warning("metrics server: cannot accept: %s", exc.strerror)
                return
            if len(self._clients) >= self.max_clients:
                self.rejected += 1
                sock.close()
                continue
            sock.setblocking(False)
            client = _Client(sock, time.monotonic() + self.request_timeout)
            self._clients[sock.fileno()] = client
            self._watch(sel, client, selectors.EVENT_READ)

    @staticmethod
    def _watch(sel, client, events):
        """Make the selector watch ``client`` for ``events`` (0: not at all)."""
        if events == client.events:
            return
        if not client.events:
            sel.register(client.sock, events, client)
        elif not events:
            sel.unregister(client.sock)
        else:
            sel.modify(client.sock, events, client)
        client.events = events

    def _drop(self, sel, client):
        self._clients.pop(client.sock.fileno(), None)
        self._watch(sel, client, 0)
        client.sock.close()

    def _ready(self, sel, client, mask):
        if client.out is None:
            if mask & selectors.EVENT_READ:
                self._read(sel, client)
        elif mask & selectors.EVENT_WRITE:
            self._write(sel, client)

    def _read(self, sel, client):
        try:
            data = client.sock.recv(MAX_REQUEST + 1 - len(client.buf))
        except (BlockingIOError, InterruptedError):
            return
        except OSError:
            self._drop(sel, client)
            return
        if not data:
            if client.request is None:
                self._drop(sel, client)      # gone before asking
            else:
                self._watch(sel, client, 0)  # half-closed after asking: its answer is on its way
            return
        if client.request is not None:
            return                           # a request body or a second request: ignored
        client.buf += data
        end = client.buf.find(b"\r\n\r\n")
        if end < 0:
            end = client.buf.find(b"\n\n")
        if end < 0:
            if len(client.buf) > MAX_REQUEST:
                self._respond(sel, client, 431, "request header fields too large\n")
            return
        self._handle(sel, client, client.buf[:end])

    def _handle(self, sel, client, head):
        line = head.split(b"\n", 1)[0].strip()
        parts = line.split()
        if len(parts) != 3 or not parts[2].startswith(b"HTTP/"):
            self._respond(sel, client, 400, "bad request\n")
            return
        method = parts[0].decode("latin-1")
        path = parts[1].split(b"?", 1)[0].decode("latin-1")
        client.request = (method, path)
        if path not in ("/metrics", "/metrics.json"):
            self._respond(sel, client, 404, "not found: try /metrics or /metrics.json\n")
            return
        if method not in ("GET", "HEAD"):
            self._respond(sel, client, 405, "method not allowed\n", extra="Allow: GET, HEAD\r\n")
            return
        if self.box.fresh() is not None:
            self._serve(sel, client)
            return
        client.parked_until = time.monotonic() + REFRESH_WAIT
        client.deadline = None
        self.box.request()

    def _housekeeping(self, sel):
        now = time.monotonic()
        fresh = self.box.fresh()
        for client in list(self._clients.values()):
            if client.parked_until is not None:
                if fresh is not None or now >= client.parked_until:
                    self._serve(sel, client)
            elif client.deadline is not None and now >= client.deadline:
                if client.out is None and client.request is None:
                    self._respond(sel, client, 408, "request timeout\n")
                else:
                    self._drop(sel, client)     # a client that does not read its answer

    def _render(self, snap):
        if self._rendered[0] is not snap:
            self._rendered = (snap, metrics.render_text(snap).encode("utf-8"),
                              metrics.render_json(snap).encode("utf-8"))
        return self._rendered

    def _serve(self, sel, client):
        client.parked_until = None
        snap = self.box.snapshot
        if snap is None:
            self._respond(sel, client, 503, "no figures yet\n")
            return
        _, text, body_json = self._render(snap)
        method, path = client.request
        if path == "/metrics.json":
            body, ctype = body_json, JSON_TYPE
        else:
            body, ctype = text, TEXT_TYPE
        self.served += 1
        self._respond(sel, client, 200, body, ctype, head_only=method == "HEAD")

    def _respond(self, sel, client, status, body, ctype="text/plain; charset=utf-8", extra="", head_only=False):
        if isinstance(body, str):
            body = body.encode("utf-8")
        reason = {200: "OK", 400: "Bad Request", 404: "Not Found", 405: "Method Not Allowed",
                  408: "Request Timeout", 431: "Request Header Fields Too Large",
                  503: "Service Unavailable"}[status]
        head = ("HTTP/1.1 %d %s\r\nContent-Type: %s\r\nContent-Length: %d\r\nCache-Control: no-store\r\n"
                "Connection: close\r\n%s\r\n" % (status, reason, ctype, len(body), extra)).encode("latin-1")
        client.out = head + (b"" if head_only else body)
        client.deadline = time.monotonic() + self.request_timeout
        self._watch(sel, client, selectors.EVENT_WRITE)
        self._write(sel, client)

    def _write(self, sel, client):
        try:
            n = client.sock.send(client.out)
        except (BlockingIOError, InterruptedError):
            return
        except OSError:
            self._drop(sel, client)
            return
        client.out = client.out[n:]
        if not client.out:
            try:
                client.sock.shutdown(socket.SHUT_WR)
            except OSError:
                pass
            self._drop(sel, client)
