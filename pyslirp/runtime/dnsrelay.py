"""The DNS forwarder's upstream side: one thread that sends the forwarder's queries to the upstream servers.

Theory of operation: the stack thread owns the sans-IO :class:`pyslirp.net.dns.DnsForwarder`; what it emits
with ``take_queries()`` it hands to :meth:`DnsRelay.submit` (a bounded queue; never blocks).  The relay thread
sends each query upstream and posts exactly one result per submitted ID to the stack thread's inbox:

    ("dns_answer", payload)         a reply as it came; the forwarder matches it by ID and question
    ("dns_failed", upstream_id)     no usable reply within the relay's time; the client gets SERVFAIL

(A query resubmitted under an ID still pending replaces the earlier one, which then gets no result: the
forwarder only reuses an ID it has already given up on.)

Direct (``via="direct"``).  Queries go over UDP from one unconnected socket, first to the server that answered
last (at the start, the first one configured).  A reply is accepted only from a server this query was sent to
(address and port) and only with the ID of a pending query (RFC 5452); everything else is dropped and
counted.  When an attempt is not answered within ``timeout`` seconds the query is sent to the next server,
round robin, until ``total_timeout`` has passed since it was submitted or ``2 * servers + 1`` attempts were made.
With ``tcp_fallback`` a truncated (TC) reply is asked again over TCP at the same server (the retry that
RFC 1035 4.2.1 and RFC 7766 expect of a requestor); if that attempt fails, the truncated reply is
passed on, so the client can retry over TCP itself.  The forwarder's own timeout (5 s) is longer than ``total_timeout``
(4 s), so a failure here reaches the client as a prompt SERVFAIL.

The TCP connection of such a retry is closed as soon as it has no query left (a server may serve a TCP
connection at the expense of others).

Through a proxy (``via="proxy"``).  A proxy carries streams, so queries go over TCP (RFC 1035 4.2.2: each
message prefixed by its two-byte length; RFC 7766 6.2.1: several queries may be pipelined on one connection
and replies may come in any order, matched by ID).  ``open_connection(host, port)`` returns a connected socket
through the proxy; it blocks this thread while it connects, so it must bound its own time.  One connection
per server is kept open and reused, and closed after ``idle_timeout`` seconds without queries.  When it fails,
or leaves a query unanswered for ``timeout`` seconds (a stuck server or proxy), it is closed at once and every
query on it moves to its next attempt as above.

Upstream servers: :func:`upstream_servers` takes the configured ``"ADDR"`` / ``"ADDR:PORT"`` entries, or, when
there are none, the IPv4 ``nameserver`` lines of resolv.conf.  A loopback resolver (systemd-resolved at
127.0.0.53, a local dnsmasq) is reached like any other: the relay's sockets are ordinary host sockets.

Bounds: ``max_queued`` submitted queries not yet taken by the thread, ``max_pending`` queries in progress
(over either: ``dns_failed`` at once), one partial TCP message (at most 65537 bytes) per connection.
``stop()`` ends the thread within one poll wake-up and closes every socket.
"""

import collections
import ipaddress
import logging
import select
import socket
import threading
import time

from pyslirp.runtime.wakeup import Wakeup
from pyslirp.wire import dns

log = logging.getLogger("pyslirp.runtime.dnsrelay")

DEFAULT_PORT = 53
RESOLV_CONF = "/etc/resolv.conf"
ATTEMPT_TIMEOUT = 1.5           # seconds per attempt
TOTAL_TIMEOUT = 4.0             # seconds per query, all attempts (below the forwarder's 5 s)
IDLE_TIMEOUT = 10.0             # seconds an unused TCP connection is kept
MAX_QUEUED = 256
MAX_PENDING = 256
RECV_MAX = 65535
UDP_BATCH = 64                  # datagrams read per wake-up before looking at everything else
VIAS = ("direct", "proxy")


class UpstreamError(ValueError):
    """No usable upstream DNS server; the message says why, in words for the user."""


def parse_server(entry):
    """``"ADDR"`` or ``"ADDR:PORT"`` (IPv4) -> ``(host, port)``; UpstreamError when it is neither."""
    text = str(entry).strip()
    host, sep, port_text = text.partition(":")
    try:
        address = ipaddress.IPv4Address(host)
        port = int(port_text) if sep else DEFAULT_PORT
    except ValueError:
        address = port = None
    if address is None or not 0 < port < 65536:
        raise UpstreamError('DNS upstream %r: must be an IPv4 address, optionally with a port, like '
                            '"192.168.1.1" or "127.0.0.1:5353"' % (entry,))
    return str(address), port


def upstream_servers(configured, resolv_conf=RESOLV_CONF):
    """The upstream servers as ``[(host, port)]``, without duplicates, in order.

    ``configured`` entries are ``"ADDR"`` or ``"ADDR:PORT"``; when there are none, the ``nameserver`` lines of
    ``resolv_conf`` (IPv4 ones, port 53; IPv6 ones are skipped).  UpstreamError when that leaves nothing."""
    servers = []
    for entry in configured or ():
        server = parse_server(entry)
        if server not in servers:
            servers.append(server)
    if servers:
        return servers
    try:
        with open(resolv_conf, "r", encoding="utf-8", errors="replace") as f:
            lines = f.read().splitlines()
    except OSError as exc:
        raise UpstreamError("no DNS upstream configured and %s cannot be read (%s); set [dns] upstream"
                            % (resolv_conf, exc.strerror or exc))
    skipped = []
    for line in lines:
        # resolv.conf(5): a ';' or '#' in the first column starts a comment; keyword and value are
        # separated by white space.
        if not line or line[0] in "#;":
            continue
        words = line.split()
        if len(words) < 2 or words[0] != "nameserver":
            continue
        text = words[1]
        try:
            address = ipaddress.ip_address(text)
        except ValueError:
            address = None
        if address is None or address.version != 4:
            log.debug("%s: skipping nameserver %s (only IPv4 upstream servers are used)", resolv_conf, text)
            skipped.append(text)
            continue
        server = (str(address), DEFAULT_PORT)
        if server not in servers:
            servers.append(server)
    if not servers:
        extra = " (skipped, not IPv4: %s)" % ", ".join(skipped) if skipped else ""
        raise UpstreamError("no DNS upstream: [dns] upstream is empty and %s has no IPv4 nameserver%s"
                            % (resolv_conf, extra))
    return servers


class _Query(object):
    __slots__ = ("uid", "payload", "server", "tried", "attempts", "deadline", "give_up", "tcp", "conn",
                 "tc_answer")

    def __init__(self, uid, payload, server, give_up, tcp):
        self.uid = uid
        self.payload = payload
        self.server = server            # index of the server of the current attempt
        self.tried = set()              # (host, port) of every server it was sent to over UDP
        self.attempts = 0
        self.deadline = give_up         # of the current attempt
        self.give_up = give_up
        self.tcp = tcp
        self.conn = None
        self.tc_answer = None           # a truncated UDP reply, kept while TCP is tried


class _TcpConn(object):
    __slots__ = ("server", "sock", "inbuf", "outbuf", "queries", "last_used")

    def __init__(self, server, sock, now):
        self.server = server
        self.sock = sock
        self.inbuf = b""
        self.outbuf = bytearray()
        self.queries = set()            # uids sent on it and not answered
        self.last_used = now


class DnsRelay(threading.Thread):
    def __init__(self, servers, post, via="direct", open_connection=None, timeout=ATTEMPT_TIMEOUT,
                 total_timeout=TOTAL_TIMEOUT, tcp_fallback=True, idle_timeout=IDLE_TIMEOUT,
                 max_queued=MAX_QUEUED, max_pending=MAX_PENDING):
        super().__init__(name="dns-relay", daemon=True)
        if not servers:
            raise UpstreamError("no DNS upstream servers")
        if via not in VIAS:
            raise ValueError("via must be one of %s, got %r" % (", ".join(VIAS), via))
        if via == "proxy" and open_connection is None:
            raise ValueError('via="proxy" needs open_connection(host, port)')
        self.servers = [(str(h), int(p)) for h, p in servers]
        self.via = via
        self._post = post
        self._open_connection = open_connection or self._direct_connection
        self.timeout = timeout
        self.total_timeout = total_timeout
        self.tcp_fallback = tcp_fallback
        self.idle_timeout = idle_timeout
        # A direct TCP connection only serves a truncated UDP reply: it is closed as soon as it is unused.
        self._tcp_idle = idle_timeout if via == "proxy" else 0.0
        self.max_queued = max_queued
        self.max_pending = max_pending
        self.max_attempts = 2 * len(self.servers) + 1
        self._lock = threading.Lock()
        self._submitted = collections.deque()
        self._stopping = False
        self._dead = False
        self._wakeup = Wakeup()
        self._udp = None
        if via == "direct":
            self._udp = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
            self._udp.setblocking(False)
        self._pending = {}              # uid -> _Query
        self._conns = {}                # server index -> _TcpConn
        self._preferred = 0
        self.counters = collections.Counter()

    # -- called by the stack thread ---------------------------------------------------------------

    def submit(self, upstream_id, payload):
        """Queue a query; False (and ``dns_failed`` posted) when the queue is full or the relay has stopped."""
        with self._lock:
            refused = self._dead or self._stopping or len(self._submitted) >= self.max_queued
            if refused:
                self.counters["refused"] += 1
            else:
                self._submitted.append((upstream_id, bytes(payload)))
        if refused:
            self._post(("dns_failed", upstream_id))
            return False
        self._wake()
        return True

    def stop(self, join_timeout=5.0):
        with self._lock:
            self._stopping = True
        self._wake()
        if self.ident is None:
            self._close_sockets()          # never started
        elif self.is_alive() and threading.current_thread() is not self:
            self.join(join_timeout)

    @property
    def open_connections(self):
        """TCP connections open now (read from any thread: a snapshot)."""
        return len(self._conns)

    def _wake(self):
        self._wakeup.wake()

    # -- the thread ----------------------------------------------------------------------------------

    def run(self):
        try:
            while True:
                with self._lock:
                    if self._stopping:
                        break
                    submitted = list(self._submitted)
                    self._submitted.clear()
                now = time.monotonic()
                for uid, payload in submitted:
                    self._start(uid, payload, now)
                self._poll(self._poll_timeout(time.monotonic()))
                now = time.monotonic()
                self._expire(now)
                self._close_idle(now)
        except Exception:
            log.exception("DNS relay failed")
            with self._lock:
                self._dead = True
                leftover = [uid for uid, _ in self._submitted]
                self._submitted.clear()
            for uid in list(self._pending) + leftover:
                self._post(("dns_failed", uid))
            self._pending.clear()
        finally:
            with self._lock:
                self._dead = True
            self._close_sockets()

    def _close_sockets(self):
        for conn in list(self._conns.values()):
            self._close_conn(conn)
        if self._udp is not None:
            self._udp.close()
        self._wakeup.close()

    def _poll_timeout(self, now):
        deadlines = [q.deadline for q in self._pending.values()]
        deadlines += [c.last_used + self._tcp_idle for c in self._conns.values() if not c.queries]
        if not deadlines:
            return None
        return max(0, int((min(deadlines) - now) * 1000) + 1)

    def _poll(self, timeout_ms):
        poller = select.poll()
        poller.register(self._wakeup, select.POLLIN)
        if self._udp is not None:
            poller.register(self._udp, select.POLLIN)
        by_fd = {}
        for conn in self._conns.values():
            fd = conn.sock.fileno()
            by_fd[fd] = conn
            poller.register(fd, select.POLLIN | (select.POLLOUT if conn.outbuf else 0))
        for fd, events in poller.poll(timeout_ms):
            if fd == self._wakeup.fileno():
                self._wakeup.drain()
            elif self._udp is not None and fd == self._udp.fileno():
                self._read_udp()
            else:
                conn = by_fd.get(fd)
                if conn is not None and self._conns.get(conn.server) is conn:
                    self._service_conn(conn, events)

    # -- queries -------------------------------------------------------------------------------------

    def _start(self, uid, payload, now):
        old = self._pending.pop(uid, None)
        if old is not None:
            self._detach(old)
        if len(self._pending) >= self.max_pending:
            self.counters["refused"] += 1
            self._post(("dns_failed", uid))
            return
        q = _Query(uid, payload, self._preferred, now + self.total_timeout, self.via == "proxy")
        self._pending[uid] = q
        self._attempt(q, now)

    def _attempt(self, q, now):
        """Send ``q`` to its current server; on an immediate failure, go on to the next attempt."""
        q.attempts += 1
        q.deadline = min(now + self.timeout, q.give_up)
        server = self.servers[q.server]
        if q.tcp:
            conn = self._conns.get(q.server) or self._connect(q.server)
            if conn is None:
                self._retry(q, now, "cannot connect to %s:%d" % server)
                return
            conn.outbuf += dns.tcp_frame(q.payload)
            conn.queries.add(q.uid)
            conn.last_used = now
            q.conn = conn
            self.counters["sent_tcp"] += 1
            self._flush(conn)
            return
        try:
            self._udp.sendto(q.payload, server)
        except OSError as exc:
            self._retry(q, now, "sendto %s:%d: %s" % (server + (exc.strerror or exc,)))
            return
        q.tried.add(server)
        self.counters["sent_udp"] += 1

    def _retry(self, q, now, why):
        """The current attempt failed (``why``): the next server, or give up."""
        self._detach(q)
        if now >= q.give_up or q.attempts >= self.max_attempts or q.tc_answer is not None:
            log.debug("DNS query %d failed after %d attempt(s): %s", q.uid, q.attempts, why)
            self._fail(q)
            return
        self.counters["retries"] += 1
        q.server = (q.server + 1) % len(self.servers)
        log.debug("DNS query %d: %s; attempt %d at %s:%d", q.uid, why, q.attempts + 1, *self.servers[q.server])
        self._attempt(q, now)

    def _expire(self, now):
        for q in [q for q in self._pending.values() if q.deadline <= now]:
            if self._pending.get(q.uid) is not q:
                continue            # already moved on with its connection
            why = "no answer from %s:%d within %.1f s" % (self.servers[q.server] + (self.timeout,))
            if q.conn is not None:
                # A stream that leaves a query unanswered this long is taken for stuck (at the server or the
                # proxy): it is closed, and every query on it tries again elsewhere.
                self._conn_failed(q.conn, why)
            else:
                self._retry(q, now, why)

    def _fail(self, q):
        del self._pending[q.uid]
        if q.tc_answer is not None:
            # TCP did not work out: the truncated reply tells the client to try TCP itself.
            self.counters["answers"] += 1
            self._post(("dns_answer", q.tc_answer))
            return
        self.counters["failed"] += 1
        self._post(("dns_failed", q.uid))

    def _answered(self, q, payload):
        del self._pending[q.uid]
        self._detach(q)
        self._preferred = q.server
        self.counters["answers"] += 1
        self._post(("dns_answer", payload))

    def _detach(self, q):
        if q.conn is not None:
            q.conn.queries.discard(q.uid)
            q.conn = None

    # -- UDP -------------------------------------------------------------------------------------------

    def _read_udp(self):
        for _ in range(UDP_BATCH):
            try:
                data, addr = self._udp.recvfrom(RECV_MAX)
            except (BlockingIOError, InterruptedError):
                return
            except OSError as exc:
                log.debug("DNS relay recvfrom: %s", exc)
                return
            uid = dns.peek_id(data)
            q = self._pending.get(uid) if uid is not None else None
            if q is None:
                self._drop("unknown_id")
                continue
            if (addr[0], addr[1]) not in q.tried:
                self._drop("wrong_source")
                continue
            flags = dns.HEADER.unpack_from(data)[1]
            if not flags & dns.FLAG_QR:
                self._drop("not_a_response")
                continue
            if q.tcp:
                self._drop("late_udp")          # already asking over TCP
                continue
            if flags & dns.FLAG_TC and self.tcp_fallback:
                q.tc_answer = data
                q.tcp = True
                q.server = self.servers.index((addr[0], addr[1]))
                self.counters["tc_retries"] += 1
                self._detach(q)
                self._attempt(q, time.monotonic())
                continue
            q.server = self.servers.index((addr[0], addr[1]))
            self._answered(q, data)

    # -- TCP -------------------------------------------------------------------------------------------

    def _direct_connection(self, host, port):
        return socket.create_connection((host, port), timeout=self.timeout)

    def _connect(self, index):
        host, port = self.servers[index]
        try:
            sock = self._open_connection(host, port)
        except Exception as exc:        # the proxy connector's own errors too
            log.debug("DNS over TCP to %s:%d: %s", host, port, exc)
            self.counters["connect_failed"] += 1
            return None
        sock.setblocking(False)
        conn = _TcpConn(index, sock, time.monotonic())
        self._conns[index] = conn
        self.counters["connections"] += 1
        return conn

    def _service_conn(self, conn, events):
        if events & select.POLLOUT:
            self._flush(conn)
        if self._conns.get(conn.server) is not conn:
            return
        if events & (select.POLLIN | select.POLLHUP | select.POLLERR):
            try:
                data = conn.sock.recv(RECV_MAX)
            except (BlockingIOError, InterruptedError):
                return
            except OSError as exc:
                self._conn_failed(conn, "recv: %s" % (exc.strerror or exc))
                return
            if not data:
                self._conn_failed(conn, "connection closed")
                return
            messages, conn.inbuf = dns.split_tcp_frames(conn.inbuf + data)
            now = time.monotonic()
            conn.last_used = now
            for message in messages:
                uid = dns.peek_id(message)
                q = self._pending.get(uid) if uid is not None else None
                if q is None or q.conn is not conn:
                    self._drop("unknown_id")
                    continue
                self._answered(q, message)

    def _flush(self, conn):
        while conn.outbuf:
            try:
                sent = conn.sock.send(conn.outbuf)
            except (BlockingIOError, InterruptedError):
                return
            except OSError as exc:
                self._conn_failed(conn, "send: %s" % (exc.strerror or exc))
                return
            del conn.outbuf[:sent]

    def _conn_failed(self, conn, why):
        host, port = self.servers[conn.server]
        self._close_conn(conn)
        now = time.monotonic()
        for uid in list(conn.queries):
            q = self._pending.get(uid)
            if q is not None and q.conn is conn:
                self._retry(q, now, "TCP to %s:%d: %s" % (host, port, why))

    def _close_conn(self, conn):
        if self._conns.get(conn.server) is conn:
            del self._conns[conn.server]
        try:
            conn.sock.close()
        except OSError:
            pass

    def _close_idle(self, now):
        for conn in list(self._conns.values()):
            if not conn.queries and now - conn.last_used >= self._tcp_idle:
                self._close_conn(conn)

    def _drop(self, reason):
        self.counters["dropped_" + reason] += 1
