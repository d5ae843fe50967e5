"""The client role's runtime: local listeners (-L, -D), one thread per local connection, the stack loop.

Theory of operation
-------------------
``pyslirp.py client`` runs the same threads as the server: the serial
reader and writer on the line (a device, standard input/output, or a
``--exec`` child on a pseudo-terminal), and the stack thread
(:class:`~pyslirp.runtime.stackloop.Runtime`) owning the sans-IO
:class:`~pyslirp.client_core.ClientCore`.  What differs is who starts a
connection:

* a :class:`Listener` thread per ``-L`` / ``-D`` accepts on its local
  socket and starts a :class:`LocalConnection` thread for each connection,
  with a flow id of its own;
* the connection (for ``-D`` after the SOCKS5 greeting and request, parsed
  by the sans-IO :class:`~pyslirp.proxy.socks5_server.Socks5Server`) posts
  ``("fwd_open", flow_id, host, port, connection)``; the stack thread
  registers it with the :class:`ForwardManager` and opens the flow over the
  link (``ClientCore.open_flow``);
* a host name (``-L`` HOST, a SOCKS domain name) is first looked up at the
  link's DNS server (``ClientCore.resolve``; ``Resolved`` posts
  ``("fwd_resolved", flow_id, address, port)``); one that does not resolve
  is refused as ``unresolved``;
* the stack's answer: ``FlowConnected`` starts moving bytes (a SOCKS client
  first gets REP 00); ``FlowRefused`` closes the local connection -- with a
  RST for ``-L`` (the local user sees "connection reset" at once, as the far
  side refused), with the mapped SOCKS reply for ``-D`` (05 refused, 03/04/02
  unreachable, 04 timeout, 01 otherwise);
* bytes then move with the server's credit scheme and inbox messages
  (``svc_data``, ``svc_written``, ``svc_eof``, ``svc_error``,
  ``svc_done``): :class:`LocalConnection` is a
  :class:`~pyslirp.runtime.services.ServiceConnection` whose socket was
  accepted instead of connected, and reuses its serving loop.

Exit (:meth:`ClientRuntime.run` returns it; the command line documents it):
0 stopped by SIGINT/SIGTERM (LCP Terminate-Request first), 1 the line or the
``--exec`` command went away, 3 the link did not come up within
``link_timeout`` seconds, 4 the server refused our authentication, 5 the
link went down after it was up (the server ended the session, or echo
keepalive found it gone).
"""

import collections
import ipaddress
import itertools
import logging
import socket
import threading

from pyslirp.net.client_stack import FlowClosed, FlowConnected, FlowRefused, Resolved
from pyslirp.ppp.events import AuthResult, LinkDown, LinkUp
from pyslirp.proxy import socks5_server as socks
from pyslirp.runtime.services import ServiceConnection, deliver
from pyslirp.runtime.stackloop import Runtime
from pyslirp.runtime.wakeup import Wakeup

log = logging.getLogger("pyslirp.client")

EXIT_STOPPED = 0
EXIT_LINE_GONE = 1
EXIT_NO_LINK = 3
EXIT_AUTH_FAILED = 4
EXIT_LINK_DOWN = 5

SOCKS_TIMEOUT = 30.0        # s for a SOCKS client to send its greeting and request
ACCEPT_POLL = 0.5           # s between stop-flag checks of a listener
# Connections the kernel completes for a local listener before it accepts them (capped by
# net.core.somaxconn).  A full queue drops the local SYN and the local client retries it only a second
# later: with 128, 750 of 1,000 connections opened at once waited that second.
LISTEN_BACKLOG = 1024


def _is_ipv4(host):
    try:
        ipaddress.IPv4Address(host)
    except ValueError:
        return False
    return True


class LocalConnection(ServiceConnection):
    """One accepted local connection carried by one flow over the link (module docstring)."""

    def __init__(self, flow_id, sock, post, target=None, use_socks=False):
        self.name = "local-%d" % flow_id
        self._done = threading.Event()
        self.conn_id = flow_id
        self.sock = sock
        self.target = target
        self.use_socks = use_socks
        self._post = post
        self._early = b""
        self._lock = threading.Lock()
        self._pending = collections.deque()
        self._credit = 0
        self._shutdown_requested = False
        self._abort = None
        self._sleeping = False          # as in ServiceConnection: wake-up bytes only while it may poll
        self._wakeup = Wakeup()
        self._outcome = None            # ("connected",) or ("refused", reason, icmp_code)
        self._decided = threading.Event()
        self.bytes_to_service = 0
        self.bytes_from_service = 0

    # -- called by the stack thread ----------------------------------------------------

    def connected(self):
        self._outcome = ("connected",)
        self._decided.set()
        self._wake()

    def refused(self, reason, icmp_code=-1):
        self._outcome = ("refused", reason, icmp_code)
        self._decided.set()
        self._wake()

    def abort(self, reason):
        with self._lock:
            if self._abort is None:
                self._abort = reason or "closed"
        self._decided.set()
        self._wake()

    # -- the thread ---------------------------------------------------------------------

    def run(self):
        sock = self.sock
        abort = True
        try:
            parser = None
            if self.use_socks:
                parser = self._socks_request(sock)
                if parser is None:
                    return
                self.target = parser.target
                self._early = parser.early
            host, port = self.target
            self._post(("fwd_open", self.conn_id, host, port, self))
            self._decided.wait()
            outcome = self._outcome
            if self._abort is not None or outcome is None:
                return
            if outcome[0] == "refused":
                if parser is not None:
                    self._send_quietly(sock, parser.reply(outcome[1], outcome[2]))
                    abort = False
                return                  # -L: closed with a RST (SO_LINGER 0), as the far side refused
            if parser is not None:
                sock.sendall(parser.reply(None))
                self._early = parser.early
            sock.setblocking(False)
            try:
                sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            except OSError:
                pass
            abort = self._serve(sock)
        except Exception:
            log.exception("local connection %d failed", self.conn_id)
            self._post(("svc_error", self.conn_id, "internal error"))
        finally:
            self._close(sock, abort)
            self._wakeup.close()
            self._done.set()
            self._post(("svc_done", self.conn_id))

    def start(self):
        """The connection's own thread: an accepted socket does not wait for a spare."""
        threading.Thread(target=self.run, name=self.name, daemon=True).start()

    def _socks_request(self, sock):
        """Read the SOCKS5 greeting and request; the parser in state REQUESTED, or None (closed)."""
        parser = socks.Socks5Server()
        sock.settimeout(SOCKS_TIMEOUT)
        try:
            while parser.state in (socks.GREETING, socks.REQUEST):
                data = sock.recv(4096)
                if not data:
                    return None
                answer = parser.receive(data)
                if answer:
                    sock.sendall(answer)
        except OSError as exc:
            log.info("SOCKS client %d: %s", self.conn_id, exc)
            return None
        if parser.state != socks.REQUESTED:
            log.info("SOCKS client %d: %s", self.conn_id, parser.error)
            return None
        return parser

    @staticmethod
    def _send_quietly(sock, data):
        try:
            sock.sendall(data)
        except OSError:
            pass


class ForwardManager(object):
    """Routes the client stack's flow events to local connection threads (stack thread only)."""

    def __init__(self, post):
        self._post = post
        self.connections = {}
        self.started = 0
        self.link_was_up = False
        self.link_down = None           # the LinkDown after the link was up
        self.auth_failed = None         # the failed AuthResult

    def __len__(self):
        return len(self.connections)

    def register(self, conn):
        self.connections[conn.conn_id] = conn
        self.started += 1

    def hold(self):
        """Nothing waits here (see ServiceManager.hold): a forward's thread has its socket from the start."""

    def release(self):
        pass

    def handle(self, event):
        if isinstance(event, LinkUp):
            self.link_was_up = True
            return False
        if isinstance(event, LinkDown):
            if self.link_was_up and self.link_down is None:
                self.link_down = event
            return False
        if isinstance(event, AuthResult):
            if not event.ok:
                self.auth_failed = event
            return False
        if isinstance(event, Resolved):
            conn = self.connections.get(event.query_id)
            if conn is not None:
                if event.address is None:
                    log.info("%s: not resolved: %s", event.name, event.error)
                    conn.refused("unresolved")
                else:
                    log.debug("%s is %s", event.name, event.address)
                    self._post(("fwd_resolved", event.query_id, event.address, conn.target[1]))
            return True
        flow_id = getattr(event, "flow_id", getattr(event, "conn_id", None))
        conn = self.connections.get(flow_id)
        if isinstance(event, FlowConnected):
            if conn is not None:
                log.debug("flow %d to %s:%d connected", flow_id, conn.target[0], conn.target[1])
                conn.connected()
        elif isinstance(event, FlowRefused):
            if conn is not None:
                log.info("connection to %s:%d refused: %s%s", conn.target[0], conn.target[1], event.reason,
                         " (ICMP code %d)" % event.icmp_code if event.icmp_code >= 0 else "")
                conn.refused(event.reason, event.icmp_code)
        elif isinstance(event, FlowClosed):
            if conn is not None:
                log.debug("flow %d to %s:%d closed: %s (%d bytes in, %d out)", flow_id, conn.target[0],
                          conn.target[1], event.reason, event.bytes_in, event.bytes_out)
        else:
            return deliver(conn, event)
        return True

    def reconfigure(self, proxy=None, connect_timeout=None):
        pass

    def forget(self, flow_id):
        self.connections.pop(flow_id, None)

    def close_all(self, timeout=1.0):
        conns = list(self.connections.values())
        for conn in conns:
            conn.abort("shutdown")
        for conn in conns:
            conn.join(timeout / max(1, len(conns)))
        self.connections.clear()


class Listener(threading.Thread):
    """Accepts on one local socket (``-L`` or ``-D``) and starts a LocalConnection per connection."""

    def __init__(self, sock, post, ids, target=None, use_socks=False):
        super().__init__(name="listen-%s:%d" % sock.getsockname()[:2], daemon=True)
        self.sock = sock
        self._post = post
        self._ids = ids
        self.target = target
        self.use_socks = use_socks
        self._stop_event = threading.Event()
        sock.settimeout(ACCEPT_POLL)

    def stop(self):
        self._stop_event.set()

    def run(self):
        while not self._stop_event.is_set():
            try:
                conn, peer = self.sock.accept()
            except socket.timeout:
                continue
            except OSError as exc:
                if self._stop_event.is_set():
                    break
                log.warning("accept on %s:%d: %s", self.sock.getsockname()[0], self.sock.getsockname()[1], exc)
                continue
            conn.settimeout(None)
            flow_id = next(self._ids)
            log.debug("local connection %d from %s:%d", flow_id, peer[0], peer[1])
            LocalConnection(flow_id, conn, self._post, self.target, self.use_socks).start()
        try:
            self.sock.close()
        except OSError:
            pass


def listen(bind, port):
    """A listening TCP socket on bind:port (OSError when it cannot be had)."""
    family = socket.AF_INET6 if ":" in bind else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind((bind, port))
        sock.listen(LISTEN_BACKLOG)
    except OSError:
        sock.close()
        raise
    return sock


class ClientRuntime(Runtime):
    """The stack loop around a ClientCore, with the local listeners (see the module docstring)."""

    def __init__(self, core, forwards=(), socks_listeners=(), link_timeout=60, **kw):
        Runtime.__init__(self, core.link_config, core.stack_config, core=core, **kw)
        self.services = ForwardManager(self.post)
        ids = itertools.count(1)
        self.listeners = [Listener(sock, self.post, ids, target=target) for sock, target in forwards]
        self.listeners += [Listener(sock, self.post, ids, use_socks=True) for sock in socks_listeners]
        self.link_timeout = link_timeout * 1000
        self._link_deadline = None
        self._announced = False

    def run(self):
        for listener in self.listeners:
            listener.start()
        try:
            return Runtime.run(self)
        finally:
            for listener in self.listeners:
                listener.stop()
            for listener in self.listeners:
                listener.join(2 * ACCEPT_POLL)

    def _dispatch(self, item, now):
        if item[0] == "fwd_open":
            _, flow_id, host, port, conn = item
            self.services.register(conn)
            if self._stopping is not None:
                conn.refused("stopping")
                return True
            if _is_ipv4(host):
                self.core.open_flow(flow_id, host, port, now)
            else:
                self.core.resolve(flow_id, host, now)      # the flow opens when the name resolves
            return True
        if item[0] == "fwd_resolved":
            _, flow_id, address, port = item
            if flow_id in self.services.connections and self._stopping is None:
                self.core.open_flow(flow_id, address, port, now)
            return True
        if item[0] == "line_up" and self._link_deadline is None and self.link_timeout > 0:
            self._link_deadline = now + self.link_timeout
        return Runtime._dispatch(self, item, now)

    def _housekeeping(self, now):
        Runtime._housekeeping(self, now)
        if self.exit_code is not None or self._stopping is not None:
            return
        manager = self.services
        core = self.core
        if core.is_up and not self._announced:
            self._announced = True
            log.info("link up: we are %s, the server %s%s", core.local_ip, core.remote_ip,
                     ", DNS %s" % ", ".join(core.dns_servers) if core.dns_servers else "")
        if manager.auth_failed is not None:
            log.error("authentication failed (%s as %r)", manager.auth_failed.method.upper(),
                      manager.auth_failed.user)
            self.exit_code = EXIT_AUTH_FAILED
        elif manager.link_down is not None:
            log.error("link down: %s", manager.link_down.reason)
            self.exit_code = EXIT_LINK_DOWN
        elif not manager.link_was_up and self._link_deadline is not None and now >= self._link_deadline:
            log.error("no PPP link within %d s", self.link_timeout // 1000)
            self.exit_code = EXIT_NO_LINK

    def _timeout(self, now):
        timeout = Runtime._timeout(self, now)
        if self._link_deadline is not None and not self.services.link_was_up:
            left = max(1, self._link_deadline - now) / 1000.0
            timeout = left if timeout is None else min(timeout, left)
        return timeout
