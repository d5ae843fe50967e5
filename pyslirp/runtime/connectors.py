"""Blocking connectors for the service threads: a flow's outbound socket, directly or through an upstream proxy.

Theory of operation
-------------------
``open_connection(host, port, via, proxy, timeout)`` returns ``(sock, leftover)``: a connected, blocking socket to
``host:port`` (``via="direct"``) or a tunnel to it through a SOCKS5 (``"socks5"``) or HTTP CONNECT (``"http"``)
proxy, and the tunnel bytes that arrived together with the proxy's answer (``b""`` when direct).  They are the
destination's first bytes: the caller delivers them before anything it reads from the socket.  ``proxy`` is any
object with ``host``, ``port``, ``username`` and ``password`` (the configuration's ``[proxy]`` section).

Every failure raises :class:`ConnectFailed` with a one-line ``reason``, an ``outcome`` of
:mod:`pyslirp.net.refusal` (how the stack answers the client) and the ``hop`` that failed: ``"direct"``, or
``"socks5 HOST:PORT"`` / ``"http HOST:PORT"`` naming the proxy.  Outcomes:

* direct: ECONNREFUSED -> RESET, ENETUNREACH -> NET_UNREACHABLE, EHOSTUNREACH -> HOST_UNREACHABLE, a host name
  that does not resolve -> HOST_UNREACHABLE, a timeout or any other error -> RESET;
* through a proxy: the proxy's own answer decides (see :mod:`pyslirp.proxy.socks5` and
  :mod:`pyslirp.proxy.http_connect`); not reaching the proxy at all (refused, unreachable, no answer in time,
  closed mid-handshake) -> RESET, with a reason that says so: the destination's state is unknown.

A proxy that answers "succeeded" before it has connected to the destination (some do, to save a round trip) makes
a destination that then fails look like a tunnel that ends at once: ``open_connection`` succeeds and the first read
is end of file, so the client sees its connection accepted and closed.  Nothing here can tell the two apart.
OpenSSH's ``ssh -D`` is not such a proxy: it queues its "succeeded" reply but writes it only once its server has
opened the connection, and closes without a reply when that fails (a ConnectFailed, RESET: "the proxy closed the
connection before its reply to CONNECT").

A service with fallback targets is one attempt over all of them: :meth:`Connector.open_any` tries each in turn
under the same deadline and cancel, and says which one answered and which failed (net/health.py learns from that).

A direct connect to an IP address can be begun by a thread that must never wait (the stack thread):
:meth:`Connector.open_at_once` starts the first target's non-blocking connect and looks once, without waiting,
whether it is already decided.  For a service on this host it is: Linux answers a loopback connect() with
EINPROGRESS, but the handshake (or the refusal) has been processed by the time a zero-timeout ``poll`` asks.
Then the caller has its socket (or its refusal) with no thread in between; otherwise ``open_any``, on the
connecting thread, carries on with the same attempt (it waits for the socket already connecting, or goes on to
the next target after a refusal) under the deadline that began with it.

One :class:`Connector` per attempt does the work; ``open_connection`` is the short form.  Everything runs on a
non-blocking socket under ``poll()`` with one deadline, ``timeout`` seconds, for the whole attempt (name lookup,
TCP connect, proxy handshake), and a wake-up socket pair: :meth:`Connector.cancel`, called from any thread, sets a
flag and writes one byte to it, so the waiting thread returns at once and ends the attempt with
ConnectFailed("cancelled").  Only the connecting thread ever closes the socket being connected, so a cancel can
never close a descriptor that has meanwhile been reused.  ``getaddrinfo`` itself cannot be interrupted; a name
(anything but an IP literal) is therefore looked up in a short-lived daemon thread while the connector waits for
it under the same deadline and cancel; an abandoned lookup finishes on its own and its answer is dropped.
"""

import errno
import logging
import math
import os
import select
import socket
import threading
import time

from pyslirp.net import refusal
from pyslirp.proxy.base import ip_literal
from pyslirp.proxy.events import ProxyRefused
from pyslirp.proxy.http_connect import HttpConnectClient
from pyslirp.proxy.socks5 import Socks5Client
from pyslirp.runtime.wakeup import Wakeup

log = logging.getLogger("pyslirp.runtime.connectors")

DIRECT = "direct"
SOCKS5 = "socks5"
HTTP = "http"
VIAS = (DIRECT, SOCKS5, HTTP)
CLIENTS = {SOCKS5: Socks5Client, HTTP: HttpConnectClient}

CONNECT_TIMEOUT = 10.0          # seconds: the default of [proxy] connect_timeout
READ_MAX = 65536

ERRNO_OUTCOME = {
    errno.ECONNREFUSED: refusal.RESET,
    errno.ENETUNREACH: refusal.NET_UNREACHABLE,
    errno.EHOSTUNREACH: refusal.HOST_UNREACHABLE,
}                               # any other errno: RESET
_IN_PROGRESS = (errno.EINPROGRESS, errno.EAGAIN, errno.EWOULDBLOCK, errno.EALREADY)
_INPUT = select.POLLIN | select.POLLHUP | select.POLLERR


class ConnectFailed(Exception):
    """A connect that did not succeed: ``reason`` (one line), ``outcome`` (pyslirp.net.refusal), ``hop``, and
    ``code``, the proxy's SOCKS5 reply code or HTTP status when it sent one."""

    def __init__(self, reason, outcome, hop, code=None):
        Exception.__init__(self, "%s: %s" % (hop, reason))
        self.reason = reason
        self.outcome = outcome
        self.hop = hop
        self.code = code
        self.failures = []      # Connector.open_any: [(index, ConnectFailed)] of every target that failed


def errno_outcome(err):
    """The outcome of a direct connect that failed with ``err``."""
    return ERRNO_OUTCOME.get(err, refusal.RESET)


def errno_reason(err):
    return os.strerror(err).lower() if err else "connect failed"


def hop_name(via, host, port):
    if via == DIRECT:
        return DIRECT
    return "%s %s:%d" % (via, "[%s]" % host if ":" in host else host, port)


class Connector(object):
    """One connect attempt, directly or through a proxy; :meth:`open` runs it, :meth:`cancel` aborts it."""

    def __init__(self, via=DIRECT, proxy=None, timeout=CONNECT_TIMEOUT, wakeup=None):
        if via not in VIAS:
            raise ValueError("via must be one of %s, not %r" % (", ".join(VIAS), via))
        if via != DIRECT and proxy is None:
            raise ValueError("via %r needs a proxy (host, port, username, password)" % via)
        if not timeout or timeout <= 0:
            raise ValueError("the connect timeout must be a positive number of seconds, not %r" % (timeout,))
        self.via = via
        self.proxy = proxy if via != DIRECT else None
        self.timeout = float(timeout)
        self.hop = hop_name(via, proxy.host, proxy.port) if self.proxy is not None else DIRECT
        self._lock = threading.Lock()
        self._cancelled = False
        self._started = False
        # ``wakeup``: the caller's Wakeup (a service connection's, which it owns and keeps), so that a connect
        # costs no socket pair of its own; else open() makes one for itself.  ``_wakeup``: the one open() polls.
        self._own_wakeup = wakeup is None
        self._wakeup = wakeup
        self._polling = False                       # open() is running: a cancel must wake it
        self._budget = self.timeout                 # seconds of the current attempt (open_any shares the timeout)
        self._first = None          # open_at_once left undecided: the first target's socket or ConnectFailed
        self._deadline = None       # ... and the attempt's deadline, which began there

    def __repr__(self):
        return "Connector(%s, timeout=%g)" % (self.hop, self.timeout)

    @property
    def cancelled(self):
        return self._cancelled

    def cancel(self):
        """Abort :meth:`open` from any thread: it raises ConnectFailed("cancelled") promptly (and closes the socket it
        was connecting).  Before open(), open() fails at once; after open() has returned, the caller owns the socket
        and this does nothing."""
        self._cancelled = True
        self._wake()

    def _wake(self):
        with self._lock:
            if self._polling:
                self._wakeup.wake()

    def _close_wake(self):
        with self._lock:
            self._polling = False
            wakeup = self._wakeup
            if self._own_wakeup:
                self._wakeup = None
        if self._own_wakeup and wakeup is not None:
            wakeup.close()

    # -- the attempt ------------------------------------------------------------------------------------------------

    def open(self, host, port):
        """Connect to ``host:port``; ``(socket, leftover)`` or ConnectFailed.  Once per Connector."""
        _, sock, leftover, _ = self.open_any(((host, port),))
        return sock, leftover

    def open_any(self, targets):
        """Connect to the first of ``targets`` (``[(host, port), ...]``) that answers, trying them in order.

        Returns ``(index, socket, leftover, failures)``: the index of the target reached and
        ``[(index, ConnectFailed), ...]`` for those that failed before it.  When every one fails, raises the last
        ConnectFailed, whose ``failures`` lists them all (a cancel ends the whole attempt at once, and is not a
        failure of any target).  The one deadline is shared fairly: each attempt may use the time left divided
        by the number of targets left, so a target that swallows SYNs leaves time for the next one, and one that
        refuses at once leaves it all.  Once per Connector.
        """
        targets = list(targets)
        if not targets:
            raise ValueError("open_any needs at least one target")
        if self._started:
            raise RuntimeError("a Connector opens one connection; make a new one")
        self._started = True
        deadline = self._deadline if self._deadline is not None else time.monotonic() + self.timeout
        with self._lock:
            if self._own_wakeup:
                self._wakeup = Wakeup()
            self._polling = True
        failures = []
        try:
            for index, (host, port) in enumerate(targets):
                left = len(targets) - index
                share = deadline if left == 1 else time.monotonic() + (deadline - time.monotonic()) / left
                try:
                    first, self._first = self._first, None
                    if first is None:
                        sock, leftover = self._attempt(host, port, share, max(0.0, share - time.monotonic()))
                    else:
                        sock, leftover = self._resume(first, share, max(0.0, share - time.monotonic())), b""
                except ConnectFailed as exc:
                    if self._cancelled:
                        raise self._fail("cancelled", refusal.RESET)
                    failures.append((index, exc))
                    if left == 1:
                        exc.failures = failures
                        raise
                    continue
                return index, sock, leftover, failures
        finally:
            first, self._first = self._first, None
            if first is not None and not isinstance(first, ConnectFailed):
                first.close()           # begun by open_at_once, and cancelled before it was looked at
            self._close_wake()
        raise AssertionError("not reached")

    def open_at_once(self, targets):
        """Begin a direct connect to the first of ``targets`` and finish it only if that needs no waiting.

        For a thread that must not block.  Returns what :meth:`open_any` would, ``(0, socket, b"", [])``, when
        the first target is connected already (the socket is non-blocking); raises ConnectFailed (with its
        ``failures``) when it is the only target and refused at once.  Returns None when undecided: through a
        proxy, to a host name (its lookup may block), a connect still in progress, or a refusal with fallbacks
        left; then :meth:`open_any` (on a thread that may wait) carries the same attempt on.  Once per
        Connector, before open_any.
        """
        targets = list(targets)
        if self._started or self._deadline is not None:
            raise RuntimeError("a Connector opens one connection; make a new one")
        if self.proxy is not None or not targets or ip_literal(targets[0][0]) is None:
            return None
        host, port = targets[0]
        family, socktype, proto, _, addr = self._resolve(host, port, None, False)[0]   # a literal: no lookup
        self._deadline = time.monotonic() + self.timeout
        try:
            sock, err = self._start_connect(family, socktype, proto, addr)
        except OSError:
            return None                 # no socket (too many open files): open_any tries again and says why
        if err in _IN_PROGRESS:
            poller = select.poll()
            poller.register(sock, select.POLLOUT)
            if not poller.poll(0):
                self._first = sock
                return None
            err = sock.getsockopt(socket.SOL_SOCKET, socket.SO_ERROR)
        if err == 0:
            self._started = True
            log.debug("%s: connected to %s:%d at once", self.hop, host, port)
            return 0, sock, b"", []
        sock.close()
        exc = self._fail(errno_reason(err), errno_outcome(err))
        if len(targets) == 1:
            self._started = True
            exc.failures = [(0, exc)]
            raise exc
        self._first = exc
        return None

    def _resume(self, first, deadline, budget):
        """The first target's attempt that open_at_once began: ``first`` is its connecting socket, or the
        ConnectFailed it ended with."""
        self._budget = budget
        if isinstance(first, ConnectFailed):
            raise first
        if self._cancelled:
            first.close()
            raise self._fail("cancelled", refusal.RESET)
        err = self._completion(first, deadline)
        if err:
            first.close()
            raise self._fail(errno_reason(err), errno_outcome(err))
        if self._cancelled:
            first.close()
            raise self._fail("cancelled", refusal.RESET)
        first.setblocking(True)
        return first

    def _attempt(self, host, port, deadline, budget):
        """One target: ``(socket, leftover)`` or ConnectFailed, by ``deadline``; ``budget``: its seconds."""
        self._budget = budget
        if self._cancelled:
            raise self._fail("cancelled", refusal.RESET)
        if self.proxy is None:
            sock = self._connect(host, port, deadline, to_proxy=False)
            leftover = b""
        else:
            try:
                client = CLIENTS[self.via](host, port, self.proxy.username or "", self.proxy.password or "")
            except ValueError as exc:
                raise self._fail(str(exc), refusal.RESET)
            sock = self._connect(self.proxy.host, self.proxy.port, deadline, to_proxy=True)
            try:
                leftover = self._handshake(sock, client, deadline)
            except BaseException:
                sock.close()
                raise
        if self._cancelled:
            sock.close()
            raise self._fail("cancelled", refusal.RESET)
        sock.setblocking(True)
        log.debug("%s: connected to %s:%d (%d leftover bytes)", self.hop, host, port, len(leftover))
        return sock, leftover

    def _fail(self, reason, outcome, code=None):
        return ConnectFailed(reason, outcome, self.hop, code)

    def _unreachable_proxy(self, why):
        return self._fail("the proxy could not be reached: %s" % why, refusal.RESET)

    def _wait(self, sock, events, deadline, timed_out):
        """Poll ``sock`` for ``events`` (and the wake-up socket); the ready events of ``sock``, 0 after a wake-up.
        ConnectFailed("cancelled") when cancelled; ``timed_out()`` (a ConnectFailed) is raised past ``deadline``."""
        poller = select.poll()
        wake = self._wakeup
        poller.register(wake, select.POLLIN)
        if sock is not None:
            poller.register(sock, events)
        while True:
            if self._cancelled:
                raise self._fail("cancelled", refusal.RESET)
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise timed_out()
            ready = poller.poll(int(math.ceil(remaining * 1000)))
            woken = False
            for fd, revents in ready:
                if sock is not None and fd == sock.fileno():
                    return revents
                woken = True
            if woken:
                wake.drain()
                if sock is None:
                    return 0

    def _seconds(self):
        """The current attempt's time, rounded for messages (the whole timeout when there is one target)."""
        return round(self._budget, 1)

    def _connect_timeout(self):
        text = "connect timeout (%g s)" % self._seconds()
        return self._unreachable_proxy(text) if self.proxy is not None else self._fail(text, refusal.RESET)

    def _lookup_timeout(self):
        return self._fail("name lookup timeout (%g s)" % self._seconds(), refusal.RESET)

    def _answer_timeout(self):
        return self._fail("the proxy did not answer within %g s" % self._seconds(), refusal.RESET)

    def _resolve(self, host, port, deadline, to_proxy):
        """getaddrinfo() results for a TCP connect to host:port, waiting at most until ``deadline``."""
        addr = ip_literal(host)
        if addr is not None:
            if addr.version == 4:
                return [(socket.AF_INET, socket.SOCK_STREAM, socket.IPPROTO_TCP, "", (str(addr), port))]
            return [(socket.AF_INET6, socket.SOCK_STREAM, socket.IPPROTO_TCP, "", (str(addr), port, 0, 0))]
        answer = []

        def lookup():
            try:
                answer.append(socket.getaddrinfo(host, port, 0, socket.SOCK_STREAM, socket.IPPROTO_TCP))
            except (OSError, UnicodeError) as exc:
                answer.append(exc)
            self._wake()

        threading.Thread(target=lookup, name="resolve-%s" % host, daemon=True).start()
        while not answer:
            self._wait(None, 0, deadline, self._lookup_timeout)
        result = answer[0]
        if isinstance(result, list) and result:
            return result
        detail = getattr(result, "strerror", None) or str(result) or "no address"
        text = "host name %r does not resolve (%s)" % (host, detail)
        if to_proxy:
            raise self._unreachable_proxy(text)
        raise self._fail(text, refusal.HOST_UNREACHABLE)

    def _connect(self, host, port, deadline, to_proxy):
        """A connected non-blocking TCP socket to host:port, trying each of its addresses in turn."""
        last = 0
        for family, socktype, proto, _, addr in self._resolve(host, port, deadline, to_proxy):
            sock, err = self._start_connect(family, socktype, proto, addr)
            if err in _IN_PROGRESS:
                err = self._completion(sock, deadline)
            if err == 0:
                return sock
            sock.close()
            last = err
        if to_proxy:
            raise self._unreachable_proxy(errno_reason(last))
        raise self._fail(errno_reason(last), errno_outcome(last))

    @staticmethod
    def _start_connect(family, socktype, proto, addr):
        """A new non-blocking socket and its connect_ex() result (an errno, 0, or one of _IN_PROGRESS)."""
        sock = socket.socket(family, socktype, proto)
        try:
            sock.setblocking(False)
            return sock, sock.connect_ex(addr)
        except BaseException:
            sock.close()
            raise

    def _completion(self, sock, deadline):
        """Wait for a connect in progress; its SO_ERROR (0: connected).  The socket is closed on exceptions."""
        try:
            self._wait(sock, select.POLLOUT, deadline, self._connect_timeout)
            return sock.getsockopt(socket.SOL_SOCKET, socket.SO_ERROR)
        except BaseException:
            sock.close()
            raise

    def _handshake(self, sock, client, deadline):
        """Drive the sans-IO ``client`` over ``sock`` until it decides; the leftover tunnel bytes on success."""
        pending = bytearray(client.data_to_send())
        while client.next_event() is None:
            events = select.POLLIN | (select.POLLOUT if pending else 0)
            ready = self._wait(sock, events, deadline, self._answer_timeout)
            try:
                if ready & select.POLLOUT and pending:
                    del pending[:sock.send(pending)]
                if ready & _INPUT:
                    data = sock.recv(READ_MAX)
                    client.receive_data(data)
                    pending += client.data_to_send()
            except (BlockingIOError, InterruptedError):
                continue
            except OSError as exc:
                why = errno_reason(exc.errno) if exc.errno else str(exc)
                raise self._fail("the connection to the proxy failed: %s" % why, refusal.RESET)
        event = client.next_event()
        if isinstance(event, ProxyRefused):
            raise self._fail(event.reason, event.outcome, event.code)
        return event.leftover


def open_connection(host, port, via=DIRECT, proxy=None, timeout=CONNECT_TIMEOUT):
    """``(socket, leftover)`` for host:port, directly or through ``proxy``; ConnectFailed on failure (see above)."""
    return Connector(via, proxy, timeout).open(host, port)
