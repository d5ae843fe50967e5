"""The IPv4 stack: IP input and output, ICMP, UDP, TCP demultiplexing and the service policy. Sans-IO.

Theory of operation
-------------------
The PPP link hands :meth:`IPStack.receive_packet` one IPv4 datagram at a time.
There are only two addresses in this world: ours (``local_ip``) and the
client's (``remote_ip``).  Input goes through these steps, every drop counted
in ``counters`` by reason and logged at a limited rate:

1. Parse and validate the header (wire/ipv4.py: version, IHL, lengths,
   checksum; link padding trimmed, options skipped by IHL, TTL ignored for
   local delivery).
2. Source must be the client (anything else is dropped: the only host on
   a point-to-point link is the peer).
3. Destination must be us; otherwise ICMP Destination Unreachable, code 1
   (host unreachable): there is nowhere to forward to.
4. Fragments are reassembled (net/frag.py, bounded, 30 s timeout).
5. Protocol: ICMP (echo answered), UDP (net/udp.py port table, else Port
   Unreachable), TCP (demultiplexed below), anything else Protocol
   Unreachable (RFC 1122 3.2.2.1).

ICMP errors obey RFC 1122 3.2.2 (net/icmp.py ``may_send_error``) and share
one token bucket (RFC 1812 4.3.2.8 asks for a rate limit).

TCP connections are keyed by (client port, local port).  A segment for a
known connection goes to ``conn.receive``.  A SYN without ACK for no
connection asks the one admission point, :meth:`IPStack._admit` (service
mapping, connection limits: see :class:`Policy`).  Admitted, a
:class:`~pyslirp.net.tcp.conn.TcpConnection` is created *pending*: nothing is
sent until the service socket connects (``service_connected`` ->
``conn.accept``, SYN-ACK; ``service_failed`` -> ``conn.refuse``, RST|ACK, so
the client sees "connection refused" at once).  Refused SYNs and segments
for no connection are answered by ``rst_for`` (RFC 9293 3.10.7.1).

Connection events become service events (pyslirp/net/events.py):
``readable`` -> ``ServiceSend``; ``writable`` -> ``ServiceReadCredit``;
``peer_fin`` -> ``ServiceShutdown``; ``reset``/``timeout`` ->
``ServiceClose``; ``established`` and ``closed`` -> ``ConnectionLog``.

Read credit is the backpressure from the client's TCP window to the service
socket: we grant the service thread at most ``conn.send_space`` bytes in
total that we have not yet received from it (granted - received), so every
``service_data`` fits into the connection's send buffer.

Timers: one ``TimerQueue`` key per connection (its conn_id; the deadline is
the earlier of ``conn.get_timer()`` and the idle deadline), re-armed after
every call into the connection, and one key for the reassembler.

Output: :meth:`take_packets` returns queued control packets (ICMP, resets,
UDP), then every connection's segments: control segments and segments with
at most 64 bytes of payload (keystrokes and their echoes) always and marked
urgent, bulk payload shared round-robin within ``budget`` bytes (IP datagram
bytes; see :meth:`_take_tcp`).  The runtime calls it when the line has room
and passes what may still be queued toward the line, so what is returned is
what goes onto the line next, in that order: bulk waits here, in the TCP
send buffers, where a keystroke can still overtake it.  Every outgoing
datagram has TTL 64 and the next identification, and is never larger than
the link MTU; TCP segments always carry DF.  The only datagrams that may not
fit (an echo reply to a reassembled jumbo ping, a large UDP answer) go out
fragmented, without DF.

Fitting a slow line: the runtime measures how fast the line drains and tells
us (``set_line_rate``, bytes/s).  At 115200 bit/s one 1500-byte frame holds
the line for 130 ms, so a keystroke behind it, or behind the client's own
upload, waits that long.  Therefore:

* the MSS we announce in our SYN-ACK (the size of every segment the client
  sends us on that connection) is about MSS_TIME of line time, at least
  MIN_LINE_MSS, unless ``tcp.mss`` is configured (RFC 9293 3.7.1 lets the
  receiver announce any MSS); TCP timestamps are not offered on a line
  slower than SLOW_LINE (12 bytes per segment);
* our receive window (``conn.rcv_limit``) is WINDOW_TIME of line time (at
  least BULK_WINDOW_SEGMENTS of the client's segments), and only
  INTERACTIVE_WINDOW_TIME (at least two segments) while interactive traffic
  shares the line: the window bounds what the client queues toward the line
  ahead of its own keystrokes;
* while interactive traffic shares a slow line our own bulk segments are cut
  to SEGMENT_TIME of line time (``conn.segment_limit``; otherwise as large as
  the client allows, for efficiency) and every data segment from the client
  is acknowledged at once (``conn.ack_every``), so a two-segment window
  keeps its upload going.

"Interactive" means that some connection carried INTERACTIVE_SEGMENTS small
payload segments (at most SMALL_PAYLOAD bytes), either way, with no pause of
INTERACTIVE_HOLD ms; it ends INTERACTIVE_HOLD ms after the last one.  Bulk
efficiency wants large segments and a window of many of them; latency wants
the opposite: this is the trade-off, measured by bench/bench_link.py.

Link down: :meth:`reset` drops every connection without a word on the dead
link and closes every service socket.

Contract extensions (documented here, additive only): ``take_packets(budget,
allow_one_over=False)`` (see there); ``set_mtu(mtu)`` (the
session MTU, from LCP, told by the Core at LinkUp); ``set_line_rate(rate)``
(the measured line rate, from the runtime through the Core); ``udp`` (the
UDP port table, net/udp.py); ``policy`` (the admission decision point).
"""

import logging
from collections import OrderedDict, deque
from dataclasses import dataclass, field, replace
from typing import Optional, Tuple

from pyslirp.net import icmp as icmp_policy
from pyslirp.net.events import (ConnectionLog, ServiceClose, ServiceConnect, ServiceReadCredit, ServiceSend,
                                ServiceShutdown)
from pyslirp.net.frag import Reassembler, fragment
from pyslirp.net.tcp import events as tcp_events
from pyslirp.net.tcp.conn import TcpConfig, TcpConnection, TcpState, rst_for
from pyslirp.net.tcp.isn import IsnGenerator
from pyslirp.net.udp import UdpDatagram, UdpMux
from pyslirp.timers import TimerQueue
from pyslirp.wire import icmp as icmp_wire
from pyslirp.wire import tcp as tcp_wire
from pyslirp.wire.errors import ParseError
from pyslirp.wire.icmp import IcmpRepr
from pyslirp.wire.ipv4 import PROTO_ICMP, PROTO_TCP, PROTO_UDP, Ipv4Repr, ip_bytes, ip_str, is_unicast
from pyslirp.wire.udp import UdpRepr

log = logging.getLogger("pyslirp.net")

TTL = 64
SMALL_PAYLOAD = 64          # a segment with at most this much payload is "urgent" (keystrokes, echoes)
IP_TCP_HEADER = 40          # IPv4 + TCP headers without options
MAX_CONTROL_QUEUE = 256     # ICMP, resets and UDP waiting for take_packets
MSS_TIME = 0.05             # s: the MSS we announce on a slow line fills about this much line time
SLOW_LINE = 100000          # bytes/s: below this no TCP timestamps are offered
SEGMENT_TIME = 0.05         # s: bulk segments while interactive traffic shares a slow line
MIN_LINE_MSS = 256          # never announce or cut segments smaller than this for the line's sake
WINDOW_TIME = 0.5           # s of line time: the receive window on a slow line, bulk only
INTERACTIVE_WINDOW_TIME = 0.1   # s of line time: ... while interactive traffic shares it
INTERACTIVE_HOLD = 5000     # ms: a connection that carried small segments this recently is interactive
INTERACTIVE_SEGMENTS = 3    # ... and this many of them, without a pause of INTERACTIVE_HOLD
MIN_WINDOW_SEGMENTS = 2     # the receive window never goes below two of the client's segments
BULK_WINDOW_SEGMENTS = 6    # ... nor below six while only bulk flows (a client that keeps running into the
                            # window probes its tail (TLP) and resends into its own queue)
_FRAG_KEY = "frag"
_MAX_EVENT_ROUNDS = 8


def _segment_payload(conn, default):
    """The most payload one segment of ``conn`` carries now (its MSS, or less under ``segment_limit``)."""
    n = getattr(conn, "send_mss", default)
    limit = getattr(conn, "segment_limit", None)
    if limit and limit < n:
        n = limit
    return max(1, n)


def line_mss(rate, limit):
    """The MSS for a new connection on a line that drains ``rate`` bytes/s (None: unknown), at most ``limit``."""
    if not rate:
        return limit
    return min(limit, max(MIN_LINE_MSS, int(rate * MSS_TIME) - IP_TCP_HEADER))


@dataclass(frozen=True)
class ServiceSpec:
    port: int               # the TCP port the client connects to on local_ip
    host: str               # where the service really is
    target_port: int
    name: str = ""


@dataclass(frozen=True)
class StackConfig:
    local_ip: str = "10.0.0.1"
    remote_ip: str = "10.0.0.2"
    mtu: int = 1500
    services: Tuple[ServiceSpec, ...] = (ServiceSpec(22, "127.0.0.1", 22, "SSH"),)
    max_connections: int = 64
    max_per_service: int = 16
    idle_timeout: int = 0   # seconds, 0 = none
    tcp: TcpConfig = field(default_factory=TcpConfig)


@dataclass(frozen=True)
class Decision:
    """The admission verdict for one SYN: the service, or None and why not."""
    spec: Optional[ServiceSpec]
    reason: str = ""


class Policy(object):
    """Who may open which connection: the single decision point for new TCP connections.

    Today: the service mapping and the connection limits (total and per service).  Rate limits and allow-lists
    belong here too, so that every refusal has one place and one reason.
    """

    def __init__(self, config):
        self.services = dict((spec.port, spec) for spec in config.services)
        self.max_connections = config.max_connections
        self.max_per_service = config.max_per_service

    def decide(self, client, port, active_total, active_for_service):
        spec = self.services.get(port)
        if spec is None:
            return Decision(None, "no service on port %d" % port)
        if active_total >= self.max_connections:
            return Decision(None, "max_connections (%d) reached" % self.max_connections)
        if active_for_service >= self.max_per_service:
            return Decision(None, "max_per_service (%d) reached" % self.max_per_service)
        return Decision(spec)


class _Conn(object):
    """The stack's bookkeeping around one TcpConnection."""
    __slots__ = ("conn_id", "key", "conn", "spec", "client", "accepted", "established", "granted", "received",
                 "backlog", "eof", "peer_fin", "service_closed", "opened_at", "last_activity", "reason", "gone",
                 "small_at", "small_count")

    def __init__(self, conn_id, key, conn, spec, client, now):
        self.conn_id = conn_id
        self.key = key
        self.conn = conn
        self.spec = spec
        self.client = client            # (ip str, port)
        self.accepted = False           # service connected, SYN-ACK sent
        self.established = False
        self.granted = 0                # read credit handed to the service thread, in total
        self.received = 0               # bytes of it the service thread has used (service_data)
        self.backlog = b""              # service data beyond send_space (only if the service overruns its credit)
        self.eof = False                # service_eof seen
        self.peer_fin = False           # ServiceShutdown sent
        self.service_closed = False     # ServiceClose sent
        self.opened_at = now
        self.last_activity = now
        self.reason = ""
        self.gone = False
        self.small_at = None            # ms of the last small (interactive) payload segment, either way
        self.small_count = 0            # small payload segments since a pause of INTERACTIVE_HOLD


class IPStack(object):
    def __init__(self, config, rng):
        self.config = config
        self.rng = rng
        self.local_ip = ip_bytes(config.local_ip)
        self.remote_ip = ip_bytes(config.remote_ip)
        self.mtu = config.mtu
        self.line_rate = None
        self._fitted = (None, False)    # (line rate, interactive) the connections were last fitted to
        self._conn_configs = {}         # (announced mss, timestamps) -> TcpConfig for new connections
        self._interactive_until = -1    # ms: interactive traffic seen recently (see _interactive)
        self.policy = Policy(config)
        self.udp = UdpMux()
        self.frag = Reassembler()
        self.timers = TimerQueue()
        self._isn = IsnGenerator(rng)
        self._conns = OrderedDict()     # (client port, local port) -> _Conn, in round-robin order
        self._by_id = {}                # conn_id -> _Conn
        self._next_id = 1
        self._ident = rng.randrange(0x10000)
        self._control = deque()         # IPv4 datagrams to send ahead of everything (ICMP, resets, UDP)
        self._events = []
        self._now = 0
        self._icmp_bucket = icmp_policy.TokenBucket(icmp_policy.ERROR_RATE, icmp_policy.ERROR_BURST)
        self._log_bucket = icmp_policy.TokenBucket(1, 10)
        self._refusal_bucket = icmp_policy.TokenBucket(1, 5)
        self._log_suppressed = 0
        # Counters (plain attributes and one dict of drop reasons).
        self.counters = {}
        self.packets_in = 0
        self.packets_out = 0
        self.bytes_in = 0
        self.bytes_out = 0
        self.echo_requests = 0
        self.echo_replies = 0
        self.unreachable_sent = 0
        self.icmp_rate_limited = 0
        self.rst_sent = 0
        self.connections_opened = 0
        self.connections_refused = 0
        self.connections_closed = 0

    # -- configuration ------------------------------------------------------------

    @property
    def connections_active(self):
        return len(self._conns)

    @property
    def mss_limit(self):
        return self.mtu - 40

    def new_connection_params(self):
        """(TcpConfig, mss_limit) for a new connection.

        A configured ``tcp.mss`` is used both ways (announced, and the largest segment we send).  Otherwise
        the announced MSS -- the size of every segment the client will send us on this connection -- is
        sized to the line (``line_mss``), while our own segments may be as large as the link allows and
        are sized dynamically (``segment_limit``, see _fit_to_line).  On a slow line TCP timestamps are
        not offered: 12 bytes more per segment buy nothing there (RFC 7323 PAWS protects against
        wrapped sequence numbers at gigabit speeds; Karn's algorithm times segments well enough).
        """
        tcp = self.config.tcp
        limit = self.mss_limit
        rate = self.line_rate
        if tcp.mss:
            limit = max(1, min(tcp.mss, limit))
            announce = tcp.mss
        else:
            announce = line_mss(rate, limit)
        timestamps = tcp.timestamps and not (rate and rate < SLOW_LINE)
        key = (announce, timestamps)
        config = self._conn_configs.get(key)
        if config is None:
            if len(self._conn_configs) > 64:
                self._conn_configs.clear()
            config = self._conn_configs[key] = replace(tcp, mss=announce, timestamps=timestamps)
        return config, limit

    def _interactive(self, rec, now):
        """``rec`` carried a small payload segment: after a few, interactive traffic shares the line for a while.

        One small segment is no sign (the request at the start of a download, the tail of a transfer);
        keystrokes and their echoes come in numbers.
        """
        if rec.small_at is None or now - rec.small_at > INTERACTIVE_HOLD:
            rec.small_count = 0
        rec.small_at = now
        rec.small_count += 1
        if rec.small_count < INTERACTIVE_SEGMENTS:
            return
        if now + INTERACTIVE_HOLD > self._interactive_until:
            self._interactive_until = now + INTERACTIVE_HOLD
        if self.line_rate and not self._fitted[1]:
            self._fit_to_line(now)

    def _fit_to_line(self, now):
        """Size every connection's segments and receive window to the line (see "Fitting a slow line")."""
        rate = self.line_rate
        interactive = bool(rate) and now <= self._interactive_until
        self._fitted = (rate, interactive)
        if not rate:
            seg = win = None
        elif interactive:
            seg = max(MIN_LINE_MSS, int(rate * SEGMENT_TIME) - IP_TCP_HEADER)
            win, segments = rate * INTERACTIVE_WINDOW_TIME, MIN_WINDOW_SEGMENTS
        else:
            seg = None
            win, segments = rate * WINDOW_TIME, BULK_WINDOW_SEGMENTS
        for rec in self._conns.values():
            conn = rec.conn
            if win is None:
                conn.rcv_limit = None
            else:
                # Whole segments: a window with a remainder makes the client send a runt to fill it.
                mss = conn.our_mss
                conn.rcv_limit = mss * max(segments, int(win) // mss)
            conn.segment_limit = seg if seg is not None and seg < conn.send_mss else None
            conn.ack_every = 1 if interactive and rate < SLOW_LINE else 2

    def set_line_rate(self, rate):
        """The serial line's measured drain rate in bytes/s (None: unknown)."""
        self.line_rate = rate
        self._fit_to_line(self._now)

    def set_mtu(self, mtu):
        """The session MTU (the smaller of ours and the peer's MRU); new connections size their MSS from it."""
        self.mtu = min(mtu, self.config.mtu) if self.config.mtu else mtu

    # -- helpers ------------------------------------------------------------------

    def _drop(self, reason, detail=""):
        self.counters[reason] = self.counters.get(reason, 0) + 1
        if self._log_bucket.allow(self._now):
            if self._log_suppressed:
                log.debug("(%d similar messages suppressed)", self._log_suppressed)
                self._log_suppressed = 0
            log.debug("dropped packet: %s%s%s", reason, ": " if detail else "", detail)
        else:
            self._log_suppressed += 1

    def _next_ident(self):
        ident = self._ident
        self._ident = (ident + 1) & 0xFFFF
        return ident

    def _ip(self, protocol, payload, dont_fragment=True):
        return Ipv4Repr(src=self.local_ip, dst=self.remote_ip, protocol=protocol, payload=payload, ttl=TTL,
                        ident=self._next_ident(), dont_fragment=dont_fragment)

    def _queue_control(self, packet):
        if len(self._control) >= MAX_CONTROL_QUEUE:
            self._drop("out_control_queue_full")
            return
        self._control.append(packet)

    def _queue_fragmented(self, protocol, payload):
        """Queue a datagram that may exceed the MTU (an echo reply to a reassembled request, a large UDP answer).

        DF is set when it fits, as on everything we send; otherwise it goes out in fragments (RFC 791 3.2).
        """
        ip = self._ip(protocol, payload)
        if ip.total_len > self.mtu:
            ip = replace(ip, dont_fragment=False)
            self.counters["ip_fragmented_out"] = self.counters.get("ip_fragmented_out", 0) + 1
        for piece in fragment(ip, self.mtu):
            self._queue_control(piece.emit())

    def _send_icmp_error(self, ip, message):
        """Queue ICMP error ``message`` about datagram ``ip`` if RFC 1122 3.2.2 and the rate limit allow."""
        allowed, why = icmp_policy.may_send_error(ip)
        if not allowed:
            self.counters["icmp_error_suppressed_" + why] = self.counters.get("icmp_error_suppressed_" + why, 0) + 1
            return False
        if not self._icmp_bucket.allow(self._now):
            self.icmp_rate_limited += 1
            return False
        if message.type == icmp_wire.TYPE_DEST_UNREACHABLE:
            self.unreachable_sent += 1
        self._queue_control(self._ip(PROTO_ICMP, message.emit()).emit())
        return True

    def _unreachable(self, ip, code):
        return self._send_icmp_error(ip, IcmpRepr.dest_unreachable(code, icmp_policy.quote(ip)))

    # -- input --------------------------------------------------------------------

    def receive_packet(self, packet, now):
        """One IPv4 datagram from the link."""
        self._now = now
        self.packets_in += 1
        self.bytes_in += len(packet)
        try:
            ip = Ipv4Repr.parse(packet)
        except ParseError as e:
            self._drop("ip_" + e.reason, e.detail)
            return
        if ip.src != self.remote_ip:
            # RFC 1122 3.2.1.3: only the peer lives on this point-to-point link.
            self._drop("ip_bad_src", ip_str(ip.src))
            return
        if ip.dst != self.local_ip:
            # RFC 1122 3.2.2.1 / RFC 792: we are not a router; the destination is unreachable from here.
            if is_unicast(ip.dst):
                self._drop("ip_not_local", ip_str(ip.dst))
                self._unreachable(ip, icmp_wire.CODE_HOST_UNREACHABLE)
            else:
                self._drop("ip_broadcast", ip_str(ip.dst))
            return
        if ip.is_fragment:
            self.counters["ip_fragments"] = self.counters.get("ip_fragments", 0) + 1
            whole = self.frag.add(ip, now)
            self.timers.schedule(_FRAG_KEY, self.frag.get_timer())
            if whole is None:
                return
            ip = whole
        protocol = ip.protocol
        if protocol == PROTO_TCP:
            self._tcp_input(ip, now)
        elif protocol == PROTO_UDP:
            self._udp_input(ip, now)
        elif protocol == PROTO_ICMP:
            self._icmp_input(ip, now)
        else:
            self._drop("ip_unknown_protocol", str(protocol))
            self._unreachable(ip, icmp_wire.CODE_PROTOCOL_UNREACHABLE)

    def _icmp_input(self, ip, now):
        try:
            msg = IcmpRepr.parse(ip.payload)
        except ParseError as e:
            self._drop("icmp_" + e.reason)
            return
        if msg.type == icmp_wire.TYPE_ECHO_REQUEST:
            # RFC 1122 3.2.2.6: "Every host MUST implement an ICMP Echo server function".
            self.echo_requests += 1
            self._queue_fragmented(PROTO_ICMP, icmp_policy.echo_reply(msg).emit())
            self.echo_replies += 1
            return
        # Destination Unreachable etc. from the client about one of our connections: TCP's own timers cope
        # (RFC 1122 4.2.3.9 lets soft errors be ignored).
        self._drop("icmp_type_%d" % msg.type)

    def _udp_input(self, ip, now):
        try:
            udp = UdpRepr.parse(ip.payload, ip.src, ip.dst)
        except ParseError as e:
            self._drop("udp_" + e.reason)
            return
        if self.udp.deliver(UdpDatagram(udp.src_port, udp.dst_port, udp.payload), now):
            return
        # RFC 1122 4.1.3.1: a datagram for a port nobody listens on SHOULD get ICMP Port Unreachable.
        self._drop("udp_no_port", str(udp.dst_port))
        self._unreachable(ip, icmp_wire.CODE_PORT_UNREACHABLE)

    def _tcp_input(self, ip, now):
        try:
            seg = tcp_wire.TcpRepr.parse(ip.payload, ip.src, ip.dst)
        except ParseError as e:
            self._drop("tcp_" + e.reason)
            return
        key = (seg.src_port, seg.dst_port)
        rec = self._conns.get(key)
        flags = seg.flags
        is_syn = (flags & (tcp_wire.SYN | tcp_wire.ACK | tcp_wire.RST)) == tcp_wire.SYN
        if rec is not None and is_syn:
            if not rec.accepted:
                # The client retransmitted its SYN while the service socket is still connecting.
                self.counters["tcp_syn_while_pending"] = self.counters.get("tcp_syn_while_pending", 0) + 1
                return
            if rec.conn.state == TcpState.TIME_WAIT and rec.conn.syn_may_reuse(seg):
                # RFC 9293 3.10.7.4 / RFC 6191: a new SYN for a 4-tuple in TIME-WAIT may open a new incarnation.
                self._finish(rec, now, "fin")
                rec = None
        if rec is not None:
            if seg.seg_len:
                rec.last_activity = now
                if 0 < len(seg.payload) <= SMALL_PAYLOAD:
                    self._interactive(rec, now)
            rec.conn.receive(seg, now)
            self._after(rec, now)
            return
        if is_syn:
            self._admit(ip, seg, now)
            return
        self._drop("tcp_no_connection")
        self._reset(seg)

    def _reset(self, seg):
        rst = rst_for(seg)
        if rst is not None:
            self.rst_sent += 1
            self._queue_control(self._ip(PROTO_TCP, rst.emit(self.local_ip, self.remote_ip)).emit())

    # -- admission ------------------------------------------------------------------

    def _active_counts(self, port):
        total = 0
        for_service = 0
        for rec in self._conns.values():
            # TIME_WAIT connections hold no service socket and do not count against the limits.
            if rec.conn.state == TcpState.TIME_WAIT:
                continue
            total += 1
            if rec.key[1] == port:
                for_service += 1
        return total, for_service

    def _admit(self, ip, seg, now):
        """The one decision point for a new connection: admit (ServiceConnect) or refuse (RST|ACK)."""
        client = (ip_str(ip.src), seg.src_port)
        total, for_service = self._active_counts(seg.dst_port)
        decision = self.policy.decide(client, seg.dst_port, total, for_service)
        if decision.spec is None:
            self.connections_refused += 1
            if self._refusal_bucket.allow(now):
                log.info("refused %s:%d -> port %d: %s", client[0], client[1], seg.dst_port, decision.reason)
            self._reset(seg)
            return
        spec = decision.spec
        iss = self._isn(self.local_ip, seg.dst_port, self.remote_ip, seg.src_port, now)
        tcp_config, mss_limit = self.new_connection_params()
        conn = TcpConnection(seg, self.local_ip, self.remote_ip, tcp_config, iss, now, mss_limit)
        conn_id = self._next_id
        self._next_id += 1
        rec = _Conn(conn_id, (seg.src_port, seg.dst_port), conn, spec, client, now)
        self._conns[rec.key] = rec
        self._by_id[conn_id] = rec
        self._events.append(ServiceConnect(conn_id, spec.host, spec.target_port, spec.name, client))
        self._fit_to_line(now)
        self._after(rec, now)

    # -- connection events ----------------------------------------------------------

    def _describe(self, rec):
        spec = rec.spec
        target = "%s:%d" % (spec.host, spec.target_port)
        if spec.name:
            target = spec.name + " " + target
        return "%s:%d -> %s" % (rec.client[0], rec.client[1], target)

    def _after(self, rec, now):
        """Turn the connection's events into service events; re-arm its timer."""
        conn = rec.conn
        for _ in range(_MAX_EVENT_ROUNDS):
            events = conn.take_events()
            if not events:
                break
            for event in events:
                if rec.gone:
                    return
                self._on_event(rec, event, now)
        if not rec.gone:
            self._arm(rec)

    def _on_event(self, rec, event, now):
        conn_id = rec.conn_id
        if isinstance(event, tcp_events.Readable):
            data = rec.conn.read()
            if data:
                self._events.append(ServiceSend(conn_id, data))
        elif isinstance(event, tcp_events.Writable):
            self._grant(rec, now)
        elif isinstance(event, tcp_events.Established):
            rec.established = True
            self._events.append(ConnectionLog(conn_id, "opened " + self._describe(rec)))
        elif isinstance(event, tcp_events.PeerFin):
            if not rec.peer_fin:
                rec.peer_fin = True
                self._events.append(ServiceShutdown(conn_id))
        elif isinstance(event, (tcp_events.Reset, tcp_events.TimedOut)):
            reason = "reset" if isinstance(event, tcp_events.Reset) else "timeout"
            rec.reason = rec.reason or reason
            self._close_service(rec, reason)
        elif isinstance(event, tcp_events.Closed):
            self._finish(rec, now)

    def _close_service(self, rec, reason):
        if not rec.service_closed:
            rec.service_closed = True
            self._events.append(ServiceClose(rec.conn_id, reason))

    def _grant(self, rec, now):
        """Grant read credit up to the connection's free send space (never beyond it)."""
        if not rec.accepted or rec.gone:
            return
        conn = rec.conn
        if rec.backlog:
            taken = conn.send(rec.backlog, now)
            rec.backlog = rec.backlog[taken:]
            if rec.backlog:
                return
            if rec.eof:
                conn.shutdown(now)      # the FIN that waited for the backlog
        if rec.eof:
            return
        outstanding = rec.granted - rec.received
        credit = conn.send_space - outstanding
        if credit > 0:
            rec.granted += credit
            self._events.append(ServiceReadCredit(rec.conn_id, credit))

    def _arm(self, rec):
        deadline = rec.conn.get_timer()
        idle = self.config.idle_timeout
        if idle and rec.accepted:
            idle_deadline = rec.last_activity + idle * 1000
            if deadline is None or idle_deadline < deadline:
                deadline = idle_deadline
        self.timers.schedule(rec.conn_id, deadline)

    def _finish(self, rec, now, reason=None):
        """The connection is over: forget it, close the service socket if need be, log one line."""
        if rec.gone:
            return
        rec.gone = True
        del self._conns[rec.key]
        del self._by_id[rec.conn_id]
        self.timers.cancel(rec.conn_id)
        conn = rec.conn
        # The connection's last words (the RST of refuse/abort/give-up) go out with the control packets.
        for seg in conn.take_segments(0, now):
            packet = self._wrap(seg)
            if packet is not None:
                if seg.flags & tcp_wire.RST:
                    self.rst_sent += 1
                self._queue_control(packet)
        if not rec.accepted:
            self.connections_refused += 1
            self._events.append(ConnectionLog(rec.conn_id, "refused %s reason=%s" % (
                self._describe(rec), rec.reason or reason or "closed")))
            return
        clean = rec.peer_fin and rec.eof
        reason = rec.reason or reason or ("fin" if clean else "closed")
        if not clean:
            self._close_service(rec, reason)
        self._log_closed(rec, now, reason)

    def _log_closed(self, rec, now, reason):
        self.connections_closed += 1
        conn = rec.conn
        self._events.append(ConnectionLog(rec.conn_id, "closed %s in=%d out=%d duration=%.1fs reason=%s" % (
            self._describe(rec), conn.bytes_in, conn.bytes_out, (now - rec.opened_at) / 1000.0, reason)))

    # -- service threads' reports -----------------------------------------------------

    def _service_rec(self, conn_id, what):
        rec = self._by_id.get(conn_id)
        if rec is None:
            self.counters["service_stale_" + what] = self.counters.get("service_stale_" + what, 0) + 1
        return rec

    def service_connected(self, conn_id, now):
        self._now = now
        rec = self._service_rec(conn_id, "connected")
        if rec is None or rec.accepted:
            return
        rec.accepted = True
        rec.last_activity = now
        self.connections_opened += 1
        rec.conn.accept(now)
        self._grant(rec, now)
        self._after(rec, now)

    def service_failed(self, conn_id, reason, now):
        self._now = now
        rec = self._service_rec(conn_id, "failed")
        if rec is None or rec.accepted:
            return
        rec.reason = reason
        rec.conn.refuse(now)
        self._after(rec, now)
        if not rec.gone:        # refuse() always closes; make sure the record goes even if no event came
            self._finish(rec, now)

    def service_data(self, conn_id, data, now):
        self._now = now
        rec = self._service_rec(conn_id, "data")
        if rec is None or not data:
            return
        if rec.eof or not rec.accepted:
            self.counters["service_data_unexpected"] = self.counters.get("service_data_unexpected", 0) + 1
            return
        rec.received += len(data)
        rec.last_activity = now
        if rec.received > rec.granted:
            self.counters["service_credit_overrun"] = self.counters.get("service_credit_overrun", 0) + 1
        if rec.backlog:
            rec.backlog += data
        else:
            taken = rec.conn.send(data, now)
            if taken < len(data):
                rec.backlog = bytes(data[taken:])
        self._after(rec, now)

    def service_eof(self, conn_id, now):
        self._now = now
        rec = self._service_rec(conn_id, "eof")
        if rec is None or rec.eof:
            return
        rec.last_activity = now
        rec.eof = True
        if not rec.backlog:         # else the FIN follows the backlog (see _grant)
            rec.conn.shutdown(now)
        self._after(rec, now)

    def service_written(self, conn_id, nbytes, now):
        self._now = now
        rec = self._service_rec(conn_id, "written")
        if rec is None or nbytes <= 0:
            return
        rec.conn.consumed(nbytes, now)
        self._after(rec, now)

    def service_error(self, conn_id, reason, now):
        self._now = now
        rec = self._service_rec(conn_id, "error")
        if rec is None:
            return
        rec.reason = "service error: %s" % reason
        if not rec.accepted:
            self.service_failed(conn_id, reason, now)
            return
        rec.conn.abort(now)
        self._after(rec, now)
        if not rec.gone:
            self._finish(rec, now)

    # -- timers ------------------------------------------------------------------------

    def get_timer(self):
        return self.timers.next_deadline()

    def handle_timer(self, now):
        self._now = now
        for key in self.timers.pop_due(now):
            if key == _FRAG_KEY:
                for first in self.frag.handle_timer(now):
                    # RFC 1122 3.3.2: Time Exceeded (reassembly) when fragment zero had arrived.
                    self._send_icmp_error(first, IcmpRepr.time_exceeded(icmp_wire.CODE_REASSEMBLY_EXCEEDED,
                                                                        icmp_policy.quote(first)))
                self.timers.schedule(_FRAG_KEY, self.frag.get_timer())
                continue
            rec = self._by_id.get(key)
            if rec is None:
                continue
            idle = self.config.idle_timeout
            if idle and rec.accepted and now >= rec.last_activity + idle * 1000:
                rec.reason = "idle"
                log.debug("idle timeout: %s", self._describe(rec))
                rec.conn.abort(now)
                self._after(rec, now)
                if not rec.gone:
                    self._finish(rec, now)
                continue
            deadline = rec.conn.get_timer()
            if deadline is not None and deadline <= now:
                rec.conn.handle_timer(now)
            self._after(rec, now)

    # -- output ------------------------------------------------------------------------

    def _wrap(self, seg):
        packet = self._ip(PROTO_TCP, seg.emit(self.local_ip, self.remote_ip)).emit()
        if len(packet) > self.mtu:
            # Cannot happen while the MSS is derived from the MTU; never put an oversized datagram on the link.
            self._drop("tcp_oversize_out", "%d > %d" % (len(packet), self.mtu))
            return None
        return packet

    def take_packets(self, budget, allow_one_over=False):
        """[(urgent, IPv4 datagram)]: control and small packets always; bulk within ``budget`` bytes (< 0: all).

        ``allow_one_over`` (an addition to the contract): with a positive budget the first bulk datagram
        may exceed it -- a bound on the line's queue smaller than one segment must still let data through.
        """
        urgent = []
        bulk = []
        for local_port, client_port, payload in self.udp.take_datagrams():
            self._queue_fragmented(PROTO_UDP, UdpRepr(local_port, client_port, payload).emit(self.local_ip,
                                                                                            self.remote_ip))
        self._events.extend(self.udp.take_events())
        while self._control:
            urgent.append(self._control.popleft())
        if self._conns:
            if self._fitted[1] and self._now > self._interactive_until:
                self._fit_to_line(self._now)       # interactive traffic has gone quiet: bulk may grow again
            self._take_tcp(budget, urgent, bulk, allow_one_over)
        out = [(True, p) for p in urgent]
        out.extend((False, p) for p in bulk)
        self.packets_out += len(out)
        for _, p in out:
            self.bytes_out += len(p)
        return out

    def _take_tcp(self, budget, urgent, bulk, allow_one_over=False):
        """Every connection's segments; bulk payload shared round-robin within ``budget``.

        The budget is what the runtime may still queue toward the line (its bound minus what is
        already waiting there), so the order chosen here is the order on the wire: the next frame is
        decided when the line has room, not earlier.

        Pass one asks every connection once.  Control segments (ACKs, window updates, SYN, FIN, RST)
        always come, and so does a payload of at most SMALL_PAYLOAD bytes (keystrokes, their echoes):
        those never wait for the budget.  Bulk segments are then handed out one segment's worth per
        connection per turn, round-robin, while they fit in the budget; with ``allow_one_over`` the
        first bulk segment of a call may exceed a positive budget (a bound smaller than one segment
        must still let data through).  A connection that sent bulk moves to the back of the order, so
        the next call starts with another one.  Within one connection segments are never reordered:
        once a connection has a bulk segment in this call, its later small segments are counted as
        bulk too (urgent packets are returned ahead of bulk ones).
        """
        unlimited = budget < 0
        remaining = budget
        took_bulk = False
        bulk_senders = set()            # connections with bulk in this call: nothing of theirs is urgent now
        now = self._now
        order = list(self._conns.values())
        first = True
        while order:
            again = []
            for rec in order:
                if rec.gone:
                    continue
                conn = rec.conn
                if unlimited:
                    allowance = -1
                else:
                    header = IP_TCP_HEADER + (tcp_wire.TS_OPTION_LEN if getattr(conn, "ts_ok", False) else 0)
                    quantum = _segment_payload(conn, self.mss_limit)
                    if allow_one_over and remaining > 0 and not took_bulk:
                        allowance = quantum
                    else:
                        allowance = min(quantum, remaining - header)
                    if first:
                        allowance = max(allowance, SMALL_PAYLOAD)
                    elif allowance <= 0:
                        continue
                segs = conn.take_segments(allowance, now)
                sent_bulk = False
                seen_bulk = rec in bulk_senders
                for seg in segs:
                    packet = self._wrap(seg)
                    if packet is None:
                        continue
                    n = len(seg.payload)
                    if n <= SMALL_PAYLOAD and not seen_bulk:
                        if n:
                            self._interactive(rec, now)
                        urgent.append(packet)
                    else:
                        seen_bulk = sent_bulk = True
                        bulk.append(packet)
                        if not unlimited:
                            remaining -= len(packet)
                if sent_bulk:
                    took_bulk = True
                    bulk_senders.add(rec)
                    self._conns.move_to_end(rec.key)
                    if not unlimited:
                        again.append(rec)
                # Sending arms timers (retransmission, persist) and may fire events: keep both fresh.
                self._after(rec, now)
            order = again
            first = False
            if not unlimited and remaining <= IP_TCP_HEADER:
                break

    # -- events and link state ---------------------------------------------------------

    def take_events(self):
        events, self._events = self._events, []
        return events

    def reset(self, now):
        """The link went down: drop every connection quietly (no RST onto a dead link), close every service."""
        self._now = now
        for rec in list(self._conns.values()):
            rec.reason = "link down"
            rec.gone = True
            self.timers.cancel(rec.conn_id)
            if not rec.service_closed:
                rec.service_closed = True
                self._events.append(ServiceClose(rec.conn_id, "link down"))
            if rec.accepted:
                self._log_closed(rec, now, rec.reason)
            else:
                self._events.append(ConnectionLog(rec.conn_id, "abandoned %s reason=link down" % self._describe(rec)))
        self._conns.clear()
        self._by_id.clear()
        self._control.clear()
        self.udp.clear()
        self.frag.clear()
        self.timers.cancel(_FRAG_KEY)
