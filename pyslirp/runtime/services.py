"""Service connections: one thread and one ordinary outbound socket per client connection.

Theory of operation: the IP stack decides (sans-IO) that a client's SYN is
to be served and emits ``ServiceConnect``; :class:`ServiceManager` (called
by the stack thread only) starts a :class:`ServiceConnection` thread for it
and routes the stack's later events to it.  The thread never touches a
protocol object: it only posts tuples to the stack thread's inbox:

    ("svc_connected", conn_id, target, failures)
    ("svc_failed", conn_id, reason, outcome, failures)
    ("svc_data", conn_id, bytes)        ("svc_eof", conn_id)
    ("svc_written", conn_id, nbytes)    ("svc_error", conn_id, reason)
    ("svc_done", conn_id)               (thread finished, socket closed)

Flow control is the stack's credit scheme, so every per-connection buffer is
bounded without a limit of its own here:

* client -> service: ``ServiceSend`` data waits in a queue until the socket
  takes it; each ``send`` is reported (``svc_written``), which is what opens
  the client's TCP receive window again.  The queue therefore never holds
  more than one receive window.
* service -> client: the thread reads only as many bytes as it has been
  granted (``ServiceReadCredit``, i.e. free room in the TCP send buffer).
  With no credit it does not poll the socket for input at all, so the
  service's sends back up into its socket buffers (backpressure).

``ServiceShutdown`` (the client's FIN) becomes ``shutdown(SHUT_WR)`` once the
queued data is written; ``ServiceClose`` aborts (the socket is closed with
SO_LINGER 0, i.e. the service sees a reset).  When both directions are
finished (service EOF read and our write side shut down) the thread closes
the socket by itself.  A socket pair wakes the thread from ``poll`` when the
stack thread hands it something while it may be polling (``_sleeping``: set
under the lock where the thread reads what it was handed, so no hand-off is
missed, and cleared when ``poll`` returns; a hand-off while the thread is
busy costs no system call).

Threads: ``Thread.start`` waits until the new thread runs, a context switch
or two (and a wait for the GIL) on the stack thread for every SYN.
:class:`SpareThread` keeps a thread started ahead and idle (waiting on a
condition, not polling); the stack thread hands it the connection, and that
thread starts the next spare itself once its connect is done and reported,
off the stack thread's, the connect's and the SYN-ACK's path, unless another
spare is idle.  A thread whose connection is over stays as an idle spare
while fewer than SPARES_KEPT are, and ends otherwise: connections one after
another (or a few at a time) reuse the same threads and start none, and
after a burst all but SPARES_KEPT end.

Connecting at once: a direct connect to an IP address (a service on this
host, typically) is begun by the stack thread itself, in
:meth:`ServiceManager.handle` (``Connector.open_at_once``: a non-blocking
connect and one look without waiting).  When that look finds it decided,
the report goes to ``answer`` (the runtime applies it before it takes the
Core's output, so the client's SYN-ACK or reset leaves in the same loop turn
as the SYN's ServiceConnect, with no thread in between), and the connected
socket is handed to the connection's thread, which from then on owns it; a
refusal needs no thread at all.  Otherwise the thread carries the same
attempt on.

Connecting: the event carries the flow's Route; a
:class:`~pyslirp.runtime.connectors.Connector` reaches the route's targets
(``route.targets``: the service's host:port, then its fallbacks, without
those whose breaker is open) in order by ``route.via``: directly, or through
the configured SOCKS5 or HTTP CONNECT proxy, all within ``connect_timeout``
seconds (``Connector.open_any``).  ``target`` is the index of the target
reached and ``failures`` is ``((index, reason), ...)`` for those that failed:
the stack's circuit breakers learn from both.  When none answers,
``svc_failed`` carries the hop (direct, or which proxy), the reason and the
outcome the client is shown (net/refusal.py) of the last one, and the
reasons of all; the stack logs it as one line with the flow.  An abort
while connecting (link down) cancels the attempt at once.  Bytes that came
with the proxy's answer are the tunnel's first bytes: they are delivered
within read credit like everything read later.
"""

import collections
import itertools
import logging
import os
import select
import socket
import struct
import threading

from pyslirp.net.events import ServiceClose, ServiceConnect, ServiceReadCredit, ServiceSend, ServiceShutdown
from pyslirp.runtime.connectors import CONNECT_TIMEOUT, ConnectFailed, Connector
from pyslirp.runtime.wakeup import Wakeup

log = logging.getLogger("pyslirp.runtime.services")

READ_MAX = 65536
SPARES_KEPT = 2         # idle service threads kept for the next connections (SpareThread)
SEND_CHUNKS = 64        # pending chunks handed to one sendmsg (well under IOV_MAX, 1024 on Linux)
_LINGER_ABORT = struct.pack("ii", 1, 0)


def _reason(exc):
    if isinstance(exc, OSError) and exc.errno:
        return os.strerror(exc.errno).lower()
    return str(exc) or type(exc).__name__


def _target(target):
    host, port = target
    return "%s:%d" % ("[%s]" % host if ":" in host else host, port)


def _failures(failed, targets):
    """``((index, "hop: reason"), ...)`` of ConnectFailed per target index (what the stack's breakers learn)."""
    return tuple((index, "%s: %s" % (exc.hop, exc.reason)) for index, exc in failed if index < len(targets))


class SpareThread(object):
    """Runs each job on a thread of its own, with a thread started ahead, idle, for the next job.

    A job handed over while the spare is still starting waits for it (a thread start is on the stack thread's
    path only for the very first job).  A job calls :meth:`replenish` when starting a thread no longer delays
    it (a service connection: once connected); that starts the next spare, unless one is idle or starting.
    A thread whose job has returned waits for the next one while fewer than ``keep`` threads are idle, and
    ends otherwise.  Idle spares wait on a condition: no polling, no timer.
    """

    def __init__(self, keep=SPARES_KEPT):
        self._cond = threading.Condition()
        self._jobs = collections.deque()    # handed over, not yet taken by a spare
        self._spares = 0                    # threads idle or starting to be
        self._closed = False
        self._keep = max(1, keep)

    def start(self, job):
        """Run ``job()`` on a thread: a spare's, or (none there) a new one's."""
        with self._cond:
            if self._spares > len(self._jobs) and not self._closed:
                self._jobs.append(job)
                self._cond.notify()
                return
        threading.Thread(target=self._run, args=(job,), name="service", daemon=True).start()

    def replenish(self):
        """Start the next spare if none is idle or starting (called by a job, on its own thread)."""
        with self._cond:
            if self._closed or self._spares > len(self._jobs):
                return
            self._spares += 1
        threading.Thread(target=self._run, args=(None,), name="service-spare", daemon=True).start()

    def close(self):
        """Idle spares end; jobs already running carry on."""
        with self._cond:
            self._closed = True
            self._cond.notify_all()

    def _run(self, job):
        while True:
            if job is None:
                with self._cond:
                    while not self._jobs and not self._closed:
                        self._cond.wait()
                    self._spares -= 1
                    if not self._jobs:
                        return
                    job = self._jobs.popleft()
            job()
            job = None
            with self._cond:
                if self._closed or self._spares - len(self._jobs) >= self._keep:
                    return                  # enough idle threads already
                self._spares += 1           # this one waits for the next job
            threading.current_thread().name = "service-spare"


def deliver(conn, event):
    """A stack event for one connection (send, read credit, shutdown, close) applied to ``conn``, or nothing
    when ``conn`` is None (the connection already went); False for an event of another kind."""
    if isinstance(event, ServiceSend):
        if conn is not None:
            conn.send(event.data)
    elif isinstance(event, ServiceReadCredit):
        if conn is not None:
            conn.add_credit(event.nbytes)
    elif isinstance(event, ServiceShutdown):
        if conn is not None:
            conn.shutdown()
    elif isinstance(event, ServiceClose):
        if conn is not None:
            conn.abort(event.reason)
    else:
        return False
    return True


class ServiceConnection(object):
    def __init__(self, conn_id, route, post, connect_timeout=CONNECT_TIMEOUT, proxy=None):
        self.name = "service-%d" % conn_id
        self.conn_id = conn_id
        self.route = route
        self.host = route.host
        self.port = route.port
        self._post = post
        self._early = b""                       # tunnel bytes that came with the proxy's answer
        self._lock = threading.Lock()
        self._pending = collections.deque()     # bytes to write to the socket
        self._credit = 0
        self._shutdown_requested = False
        self._abort = None                      # reason, once ServiceClose arrived
        self._sleeping = False                  # the thread looked at the state above and may be in poll
        self._wakeup = Wakeup()
        # The connect polls the same wake-up (a cancel ends it): one socket pair per connection, not two.
        self._connector = Connector(route.via, proxy if route.via != "direct" else None, connect_timeout,
                                    wakeup=self._wakeup)
        self._done = threading.Event()
        self._starter = None
        self._sock = None                       # connected by connect_at_once, for the thread to serve
        self.bytes_to_service = 0
        self.bytes_from_service = 0

    def start(self, starter):
        self._starter = starter
        starter.start(self.run)

    def join(self, timeout=None):
        self._done.wait(timeout)

    def connect_at_once(self):
        """Stack thread, before :meth:`start`: the connect begun here, without waiting (see "Connecting at
        once").  Returns the report when it is decided: ``svc_connected`` (start the thread to serve the
        socket), or ``svc_failed`` (the connection is over: no thread to start); None when the thread is to
        carry the attempt on."""
        targets = self.route.targets
        try:
            result = self._connector.open_at_once(targets)
        except ConnectFailed as exc:
            self._wakeup.close()
            self._done.set()
            return self._failed_report(exc, targets)
        if result is None:
            return None
        index, self._sock, self._early, failed = result
        return ("svc_connected", self.conn_id, index, _failures(failed, targets))

    def _failed_report(self, exc, targets):
        """The ``svc_failed`` report of a ConnectFailed (the stack logs it once, with the flow and the route)."""
        failures = _failures(exc.failures, targets)
        if len(targets) == 1:
            reason = failures[0][1] if failures else "%s: %s" % (exc.hop, exc.reason)
        else:
            reason = "; ".join("%s %s" % (_target(targets[i]), text) for i, text in failures)
        return ("svc_failed", self.conn_id, reason, exc.outcome, failures)

    # -- called by the stack thread -------------------------------------------

    def send(self, data):
        with self._lock:
            self._pending.append(data)
            sleeping = self._sleeping
        if sleeping:
            self._wake()

    def add_credit(self, nbytes):
        with self._lock:
            self._credit += nbytes
            sleeping = self._sleeping
        if sleeping:
            self._wake()

    def shutdown(self):
        with self._lock:
            self._shutdown_requested = True
            sleeping = self._sleeping
        if sleeping:
            self._wake()

    def abort(self, reason):
        with self._lock:
            if self._abort is None:
                self._abort = reason or "closed"
        self._connector.cancel()
        self._wake()

    def _wake(self):
        self._wakeup.wake()

    # -- the thread ---------------------------------------------------------------

    def run(self):
        threading.current_thread().name = self.name
        targets = self.route.targets
        sock, self._sock = self._sock, None
        reported = sock is not None             # connected at once, and reported by the stack thread
        try:
            if sock is None:
                try:
                    index, sock, self._early, failed = self._connector.open_any(targets)
                except ConnectFailed as exc:
                    if self._abort is None and not self._connector.cancelled:
                        self._post(self._failed_report(exc, targets))
                        self._replenish()
                    return
            if self._abort is not None:
                self._close(sock, abort=True)
                sock = None
                return
            if not reported:
                sock.setblocking(False)
            try:
                sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            except OSError:
                pass
            if not reported:
                self._post(("svc_connected", self.conn_id, index, _failures(failed, targets)))
            self._replenish()
            abort = self._serve(sock)
            self._close(sock, abort)
            sock = None
        except Exception:
            log.exception("service connection %d failed", self.conn_id)
            self._post(("svc_error", self.conn_id, "internal error"))
        finally:
            self._replenish()
            if sock is not None:
                self._close(sock, abort=True)
            self._wakeup.close()
            self._done.set()
            self._post(("svc_done", self.conn_id))

    def _replenish(self):
        """Have the next connection's thread started (once), now that ours has connected or failed.

        Called after the report is posted: a thread start (a wait for the new thread to run, and for the
        GIL) must not stand between the service's answer and the client's SYN-ACK.
        """
        starter, self._starter = self._starter, None
        if starter is not None:
            starter.replenish()

    def _serve(self, sock):
        """Move bytes until finished; True if the socket must be aborted."""
        poller = select.poll()
        poller.register(self._wakeup, select.POLLIN)
        sfd = sock.fileno()
        registered = 0
        read_eof = False
        write_shut = False
        while True:
            with self._lock:
                if self._abort is not None:
                    return True
                pending = bool(self._pending)
                credit = self._credit
                if self._shutdown_requested and not pending and not write_shut:
                    write_shut = True
                    try:
                        sock.shutdown(socket.SHUT_WR)
                    except OSError:
                        pass
                # From here on a change of the state above needs a wake-up byte to end our poll; until
                # now the thread was awake and reads the state here anyway (a send costs a system call
                # and a thread switch: a connection's first credit and data usually come while its
                # thread is still busy with the connect).
                self._sleeping = True
            if read_eof and write_shut and not pending:
                return False
            if self._early and credit > 0:
                self._deliver_early(credit)
                continue
            mask = (select.POLLIN if credit > 0 and not read_eof else 0) | (select.POLLOUT if pending else 0)
            if mask != registered:
                if mask:
                    poller.register(sfd, mask)
                elif registered:
                    poller.unregister(sfd)
                registered = mask
            ready = poller.poll()
            self._sleeping = False
            for fd, revents in ready:
                if fd != sfd:
                    self._wakeup.drain()
                    continue
                if revents & (select.POLLIN | select.POLLHUP | select.POLLERR) and mask & select.POLLIN:
                    result = self._do_read(sock, credit)
                    if result == "error":
                        return True
                    if result == "eof":
                        read_eof = True
                if revents & (select.POLLOUT | select.POLLERR | select.POLLHUP) and mask & select.POLLOUT:
                    if not self._do_write(sock):
                        return True

    def _deliver_early(self, credit):
        data, self._early = self._early[:credit], self._early[credit:]
        with self._lock:
            self._credit -= len(data)
        self.bytes_from_service += len(data)
        self._post(("svc_data", self.conn_id, data))

    def _do_read(self, sock, credit):
        """Read within credit: "ok", "eof" (reported) or "error" (reported)."""
        try:
            data = sock.recv(min(credit, READ_MAX))
        except (BlockingIOError, InterruptedError):
            return "ok"
        except OSError as exc:
            self._post(("svc_error", self.conn_id, _reason(exc)))
            return "error"
        if not data:
            self._post(("svc_eof", self.conn_id))
            return "eof"
        with self._lock:
            self._credit -= len(data)
        self.bytes_from_service += len(data)
        self._post(("svc_data", self.conn_id, data))
        return "ok"

    def _do_write(self, sock):
        """Write what is pending, several chunks per ``sendmsg``; False after an error (reported)."""
        written = 0
        try:
            while True:
                with self._lock:
                    if not self._pending:
                        break
                    chunks = list(itertools.islice(self._pending, SEND_CHUNKS))
                n = sock.sendmsg(chunks)
                written += n
                with self._lock:
                    pending = self._pending
                    left = n
                    while left and left >= len(pending[0]):
                        left -= len(pending.popleft())
                    if left:
                        pending[0] = pending[0][left:]
                if n < sum(len(c) for c in chunks):
                    break                               # the socket is full: wait for POLLOUT
        except (BlockingIOError, InterruptedError):
            pass
        except OSError as exc:
            if written:
                self._post(("svc_written", self.conn_id, written))
            self._post(("svc_error", self.conn_id, _reason(exc)))
            return False
        if written:
            self.bytes_to_service += written
            self._post(("svc_written", self.conn_id, written))
        return True

    @staticmethod
    def _close(sock, abort):
        if abort:
            try:
                sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, _LINGER_ABORT)
            except OSError:
                pass
        try:
            sock.close()
        except OSError:
            pass


_HELD = (ServiceShutdown, ServiceClose)    # held by hold(); data and read credit are what a client waits for


class ServiceManager(object):
    """Routes the stack's service events to connection threads (stack thread only).

    Between :meth:`hold` and :meth:`release` the hand-offs that no client waits for (shutdown, close, and
    the start of a thread for a connection connected at once) wait, in order: the runtime holds them while
    it takes the line's output of a loop turn, so that the serial writer, woken first, does not queue for
    the GIL behind service threads woken by the same turn (a FIN and the next SYN often come in one read).
    Data and read credit are not held (a client waits for the service's answer), nor is the start of a
    connect not decided at once (the client's SYN-ACK waits for it).
    """

    def __init__(self, post, connect_timeout=CONNECT_TIMEOUT, proxy=None, answer=None):
        """``post``: the stack thread's inbox (for the connection threads); ``answer``: where the reports
        of connects decided at once go, on the stack thread (default ``post``)."""
        self._post = post
        self._answer = answer if answer is not None else post
        self._connect_timeout = connect_timeout
        self._proxy = proxy
        self.connections = {}
        self.started = 0
        self._threads = SpareThread()
        self._held = None               # while held: [(conn_id, event), or (conn, None) for a thread start]

    def __len__(self):
        return len(self.connections)

    def hold(self):
        """Hand-offs to the threads wait until :meth:`release`."""
        if self._held is None:
            self._held = []

    def release(self):
        """Make the hand-offs held since :meth:`hold`, in order."""
        held, self._held = self._held, None
        if not held:
            return
        for key, event in held:
            if event is None:
                key.start(self._threads)
            else:
                deliver(self.connections.get(key), event)

    def handle(self, event):
        if self._held is not None and isinstance(event, _HELD):
            self._held.append((event.conn_id, event))
            return True
        conn = self.connections.get(getattr(event, "conn_id", None))
        if isinstance(event, ServiceConnect):
            if log.isEnabledFor(logging.DEBUG):     # the descriptions cost more than the rest of the hand-off
                log.debug("connection %d: %s: connecting to %s", event.conn_id, event.flow.describe(),
                          event.route.describe())
            conn = ServiceConnection(event.conn_id, event.route, self._post, self._connect_timeout, self._proxy)
            self.started += 1
            report = conn.connect_at_once()
            if report is not None:
                self._answer(report)
                if report[0] == "svc_failed":
                    return True                 # refused at once: no thread, nothing to serve
            self.connections[event.conn_id] = conn
            if report is not None and self._held is not None:
                self._held.append((conn, None))
            else:
                conn.start(self._threads)
            return True
        return deliver(conn, event)

    def reconfigure(self, proxy=None, connect_timeout=CONNECT_TIMEOUT):
        """A reloaded configuration: new connections use this proxy and timeout; those already connecting or
        connected keep theirs."""
        self._proxy = proxy
        self._connect_timeout = connect_timeout

    def forget(self, conn_id):
        """The connection's thread has finished."""
        self.connections.pop(conn_id, None)

    def close_all(self, timeout=1.0):
        self.release()
        self._threads.close()
        conns = list(self.connections.values())
        for conn in conns:
            conn.abort("shutdown")
        for conn in conns:
            conn.join(timeout / max(1, len(conns)))
        self.connections.clear()
