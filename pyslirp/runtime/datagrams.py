"""UDP and ICMP echo flows: one thread, one ordinary unprivileged socket per flow.

Theory of operation: the stack decides (sans-IO) that a UDP datagram or an
echo request starts a flow and emits ``UdpOpen``/``PingOpen``, then
``UdpSend``/``PingSend`` per datagram and ``UdpClose``/``PingClose`` when the
flow has been idle (net/stack.py).  :class:`DatagramRelay` is one thread that
owns every such socket and waits on all of them with ``poll``; the stack
thread hands it events through a bounded command queue (never blocking: a
full queue drops the datagram, counted, as a router would) and a socket pair
wakes it.  What comes back is posted to the stack thread's inbox:

    ("udp_data", flow_id, bytes)           a datagram from the flow's target
    ("udp_error", flow_id, outcome)        the target's host said port unreachable (ECONNREFUSED on the
                                           connected socket: Linux reports the ICMP error there)
    ("ping_reply", flow_id, seq, bytes)    an echo reply
    ("flow_failed", flow_id, reason, outcome)  no socket could be had for the flow

UDP: each flow gets its own connected ``SOCK_DGRAM`` socket, so the kernel
picks the source port and delivers only the target's answers (and its ICMP
errors) to it.

ICMP echo needs no privilege where ``net.ipv4.ping_group_range`` includes our
group: an ICMP datagram socket (``SOCK_DGRAM, IPPROTO_ICMP``), one per flow;
the kernel gives each its own identifier and matches replies to it (that is
the per-flow identifier mapping; the stack restores the client's).  Where
that is not allowed, a raw socket works if the process has CAP_NET_RAW (one
shared socket; we choose an identifier per flow and match replies by it and
by the source address).  Otherwise the flow fails and the client gets ICMP
administratively prohibited.
"""

import collections
import errno
import logging
import os
import random
import select
import socket
import threading

from pyslirp.net import refusal
from pyslirp.net.events import PingClose, PingOpen, PingSend, UdpClose, UdpOpen, UdpSend
from pyslirp.runtime.wakeup import Wakeup
from pyslirp.wire.errors import ParseError
from pyslirp.wire.icmp import TYPE_ECHO_REPLY, IcmpRepr
from pyslirp.wire.ipv4 import Ipv4Repr

log = logging.getLogger("pyslirp.runtime.datagrams")

MAX_COMMANDS = 1024             # events waiting for the relay thread
MAX_DATAGRAM = 65535


def open_ping_socket(kind):
    """An ICMP socket of ``kind`` ("dgram" or "raw"); OSError when not allowed."""
    sock_type = socket.SOCK_DGRAM if kind == "dgram" else socket.SOCK_RAW
    sock = socket.socket(socket.AF_INET, sock_type, socket.IPPROTO_ICMP)
    sock.setblocking(False)
    return sock


class _UdpFlow(object):
    __slots__ = ("flow_id", "sock", "target")

    def __init__(self, flow_id, sock, target):
        self.flow_id = flow_id
        self.sock = sock
        self.target = target


class _PingFlow(object):
    __slots__ = ("flow_id", "sock", "addr", "ident")

    def __init__(self, flow_id, sock, addr, ident):
        self.flow_id = flow_id
        self.sock = sock            # own datagram socket, or None with the shared raw socket
        self.addr = addr
        self.ident = ident          # raw mode: our identifier on the outside


class DatagramRelay(threading.Thread):
    """The UDP and ping sockets of every flow, served by one thread (see the module docstring)."""

    def __init__(self, post, ping_modes=("dgram", "raw"), open_ping=open_ping_socket, rng=None):
        super().__init__(name="datagrams", daemon=True)
        self._post = post
        self._ping_modes = tuple(ping_modes)
        self._open_ping = open_ping
        self._rng = rng or random.SystemRandom()
        self._lock = threading.Lock()
        self._commands = collections.deque()
        self._wakeup = Wakeup()
        self._stopping = False
        self._udp = {}              # flow_id -> _UdpFlow
        self._pings = {}            # flow_id -> _PingFlow
        self._by_fd = {}            # fd -> _UdpFlow / _PingFlow / "raw"
        self._raw = None            # the shared raw ICMP socket, once needed
        self._raw_idents = {}       # (addr, ident) -> _PingFlow
        self._ping_mode = None      # the mode that worked, once known
        self.dropped = 0
        self.sent = 0
        self.received = 0

    # -- called by the stack thread -------------------------------------------------

    def handle(self, event):
        """Take a stack event if it is ours (True), never blocking."""
        if not isinstance(event, (UdpOpen, UdpSend, UdpClose, PingOpen, PingSend, PingClose)):
            return False
        with self._lock:
            if len(self._commands) >= MAX_COMMANDS and isinstance(event, (UdpSend, PingSend)):
                self.dropped += 1
                return True
            self._commands.append(event)
        self._wakeup.wake()
        return True

    def stop(self):
        self._stopping = True
        self._wakeup.wake()

    # -- the thread ---------------------------------------------------------------------

    def run(self):
        poller = select.poll()
        poller.register(self._wakeup, select.POLLIN)
        registered = set()
        try:
            while not self._stopping:
                self._run_commands()
                fds = set(self._by_fd)
                for fd in registered - fds:
                    poller.unregister(fd)
                for fd in fds - registered:
                    poller.register(fd, select.POLLIN)
                registered = fds
                for fd, _ in poller.poll():
                    if fd == self._wakeup.fileno():
                        self._wakeup.drain()
                        continue
                    owner = self._by_fd.get(fd)
                    if owner is not None:
                        self._readable(owner)
        except Exception:
            log.exception("datagram relay failed")
        finally:
            for flow in list(self._udp.values()) + list(self._pings.values()):
                if flow.sock is not None:
                    flow.sock.close()
            if self._raw is not None:
                self._raw.close()
            self._wakeup.close()

    def _run_commands(self):
        while True:
            with self._lock:
                if not self._commands:
                    return
                event = self._commands.popleft()
            if isinstance(event, UdpSend):
                self._udp_send(event)
            elif isinstance(event, PingSend):
                self._ping_send(event)
            elif isinstance(event, UdpOpen):
                self._udp_open(event)
            elif isinstance(event, PingOpen):
                self._ping_open(event)
            elif isinstance(event, UdpClose):
                self._close(self._udp.pop(event.flow_id, None))
            elif isinstance(event, PingClose):
                flow = self._pings.pop(event.flow_id, None)
                if flow is not None and flow.sock is None:
                    self._raw_idents.pop((flow.addr, flow.ident), None)
                self._close(flow)

    def _close(self, flow):
        if flow is not None and flow.sock is not None:
            self._by_fd.pop(flow.sock.fileno(), None)
            flow.sock.close()

    # -- UDP ------------------------------------------------------------------------------

    def _udp_open(self, event):
        route = event.route
        try:
            infos = socket.getaddrinfo(route.host, route.port, socket.AF_INET, socket.SOCK_DGRAM)
            sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
            try:
                sock.setblocking(False)
                sock.connect(infos[0][4])
            except OSError:
                sock.close()
                raise
        except (OSError, IndexError) as exc:
            reason = "cannot open a UDP socket to %s:%d: %s" % (route.host, route.port, _strerror(exc))
            self._post(("flow_failed", event.flow_id, reason, refusal.HOST_UNREACHABLE))
            return
        flow = _UdpFlow(event.flow_id, sock, (route.host, route.port))
        self._udp[event.flow_id] = flow
        self._by_fd[sock.fileno()] = flow

    def _udp_send(self, event):
        flow = self._udp.get(event.flow_id)
        if flow is None:
            return
        try:
            flow.sock.send(event.data)
            self.sent += 1
        except ConnectionRefusedError:
            self._post(("udp_error", flow.flow_id, refusal.PORT_UNREACHABLE))
        except (BlockingIOError, InterruptedError):
            self.dropped += 1
        except OSError as exc:
            self.dropped += 1
            log.debug("udp flow %d: send failed: %s", flow.flow_id, _strerror(exc))

    # -- ICMP echo -------------------------------------------------------------------------

    def _ping_open(self, event):
        addr = event.route.host
        modes = (self._ping_mode,) if self._ping_mode else self._ping_modes
        problem = "no ICMP socket modes"
        for mode in modes:
            try:
                if mode == "dgram":
                    sock = self._open_ping("dgram")
                    flow = _PingFlow(event.flow_id, sock, addr, 0)
                    self._by_fd[sock.fileno()] = flow
                else:
                    if self._raw is None:
                        self._raw = self._open_ping("raw")
                        self._by_fd[self._raw.fileno()] = "raw"
                    ident = self._free_ident(addr)
                    flow = _PingFlow(event.flow_id, None, addr, ident)
                    self._raw_idents[(addr, ident)] = flow
            except OSError as exc:
                problem = "%s ICMP socket: %s" % (mode, _strerror(exc))
                continue
            if self._ping_mode is None:
                self._ping_mode = mode
                log.info("outside ping uses %s ICMP sockets", mode)
            self._pings[event.flow_id] = flow
            return
        self._post(("flow_failed", event.flow_id, "ping not permitted here (%s; see net.ipv4.ping_group_range)"
                    % problem, refusal.ADMIN_PROHIBITED))

    def _free_ident(self, addr):
        for _ in range(64):
            ident = self._rng.randrange(1, 0x10000)
            if (addr, ident) not in self._raw_idents:
                return ident
        raise OSError(errno.EAGAIN, "no free ICMP identifier")

    def _ping_send(self, event):
        flow = self._pings.get(event.flow_id)
        if flow is None:
            return
        packet = IcmpRepr.echo(flow.ident, event.seq, event.data).emit()
        sock = flow.sock if flow.sock is not None else self._raw
        try:
            sock.sendto(packet, (flow.addr, 0))
            self.sent += 1
        except OSError as exc:
            self.dropped += 1
            log.debug("ping flow %d: send failed: %s", flow.flow_id, _strerror(exc))

    # -- input -------------------------------------------------------------------------------

    def _readable(self, owner):
        if owner == "raw":
            self._raw_readable()
            return
        sock = owner.sock
        for _ in range(64):         # a bounded batch per wake-up, so no flow starves the others
            try:
                data = sock.recv(MAX_DATAGRAM)
            except (BlockingIOError, InterruptedError):
                return
            except ConnectionRefusedError:
                if isinstance(owner, _UdpFlow):
                    self._post(("udp_error", owner.flow_id, refusal.PORT_UNREACHABLE))
                continue
            except OSError as exc:
                log.debug("flow %d: receive failed: %s", owner.flow_id, _strerror(exc))
                return
            self.received += 1
            if isinstance(owner, _UdpFlow):
                self._post(("udp_data", owner.flow_id, data))
            else:
                self._echo_reply(owner, data)

    def _echo_reply(self, flow, data):
        try:
            msg = IcmpRepr.parse(data)
        except ParseError:
            return
        if msg.type == TYPE_ECHO_REPLY:
            self._post(("ping_reply", flow.flow_id, msg.echo_seq, msg.payload))

    def _raw_readable(self):
        for _ in range(64):
            try:
                data, peer = self._raw.recvfrom(MAX_DATAGRAM)
            except (BlockingIOError, InterruptedError):
                return
            except OSError:
                return
            try:
                ip = Ipv4Repr.parse(data)
                msg = IcmpRepr.parse(ip.payload)
            except ParseError:
                continue
            if msg.type != TYPE_ECHO_REPLY:
                continue
            flow = self._raw_idents.get((peer[0], msg.echo_ident))
            if flow is not None:
                self.received += 1
                self._post(("ping_reply", flow.flow_id, msg.echo_seq, msg.payload))


def _strerror(exc):
    if isinstance(exc, OSError) and exc.errno:
        return os.strerror(exc.errno).lower()
    return str(exc) or type(exc).__name__
