"""The client role's IP stack: TCP flows we open over the PPP link (sans-IO).

Theory of operation
-------------------
In the client role (``pyslirp.py client``) the local user's connections
(``-L`` forwards, SOCKS5 CONNECTs) become TCP connections that *we* open
across the link, to a host and port on the server's side.  The server's end
(pyslirp, SLiRP, pppd) routes them on from there.  :class:`ClientStack` is
the small IP stack of that end: one address (what IPCP gave us), a table of
flows, each over one :class:`~pyslirp.net.tcp.conn.TcpConnection` opened
actively (``TcpConnection.connect``, the same automaton the server runs).

The runtime opens a flow with :meth:`open_flow` (a flow id of its own, an
IPv4 address and a port); the stack answers with events:

* :class:`FlowConnected` -- the handshake completed; the local socket may
  carry data;
* :class:`FlowRefused` -- the open failed, ``reason`` one of ``rst`` (the
  server's end answered our SYN with a RST: nothing listens there, or the
  gateway refused the flow), ``unreachable`` (an ICMP destination
  unreachable), ``timeout`` (no answer within ``connect_timeout``, or to
  every SYN) or ``link down``;
* :class:`FlowClosed` -- a connected flow ended (``closed``, ``reset``,
  ``timeout``, ``link down``); the local socket is closed, aborted unless
  the reason is ``closed``.

Bytes move exactly as between the server's stack and its service threads,
with the same events and calls, so the runtime's connection threads serve
both roles: ``ServiceSend`` (bytes from the link for the local socket),
``ServiceReadCredit`` (how much more the local socket may be read: free
room in the TCP send buffer), ``ServiceShutdown`` (the far end's FIN),
``ServiceClose`` (abort); and from the runtime ``service_data``,
``service_eof``, ``service_written`` (bytes the local socket took, which
reopens the TCP receive window) and ``service_error``.

Flows opened while the link is down wait (their ``connect_timeout`` runs)
and start when the link comes up (:meth:`set_addresses`).  A link that goes
down ends every flow (``link down``): the client role does not keep
sessions across a lost line.  Local ports are ephemeral (49152-65535, RFC
6335), taken in turn and never two alike towards one destination; initial
sequence numbers follow RFC 6528 (net/tcp/isn.py).

Names (:meth:`resolve`): an A query (RFC 1035) goes over the link to the
DNS servers IPCP gave us (RFC 1877), every ``DNS_RETRY_MS`` to each in turn,
``DNS_TRIES`` times each; the first IPv4 address of the answer, or why there
is none, comes back as :class:`Resolved`.  The runtime resolves ``-L`` and
SOCKS host names this way, on the far side, where they mean what they mean.

Input: an IPv4 datagram for our address carrying TCP goes to its flow, and a
segment for no flow is answered with a RST (RFC 9293 3.10.7.1); an ICMP
destination unreachable quoting one of our segments ends that flow's open
(``TcpConnection.unreachable``).  Everything else (fragments, other
protocols, other addresses, malformed packets) is counted and dropped.
Output (:meth:`take_packets`): control and small segments always, bulk
within the budget, each call starting with the next flow (round-robin).
Only the flows something happened to (an input, a timer, a call from the
runtime) since they last had nothing to send are asked: with a thousand
flows open, a segment for one of them must not make the stack ask all the
others for theirs (the server's stack does the same, net/stack.py).
"""

import logging
from dataclasses import dataclass, field, replace

from pyslirp.net.credit import new_credit, send_or_queue
from pyslirp.net.events import ServiceClose, ServiceReadCredit, ServiceSend, ServiceShutdown
from pyslirp.net.ratelimit import every_power_of_two
from pyslirp.net.tcp import events as tcp_events
from pyslirp.net.tcp.conn import TcpConfig, TcpConnection, TcpState, rst_for
from pyslirp.net.tcp.isn import IsnGenerator
from pyslirp.timers import TimerQueue, earliest
from pyslirp.wire import dns as wdns
from pyslirp.wire import icmp as icmp_wire
from pyslirp.wire.errors import ParseError
from pyslirp.wire.icmp import IcmpRepr
from pyslirp.wire.ipv4 import PROTO_ICMP, PROTO_TCP, PROTO_UDP, Ipv4Repr, ip_bytes, ip_str
from pyslirp.wire.tcp import HEADER as TCP_HEADER
from pyslirp.wire.tcp import TcpRepr
from pyslirp.wire.udp import UdpRepr

log = logging.getLogger("pyslirp.net.client")

EPHEMERAL_LOW = 49152           # RFC 6335 6: the Dynamic Ports
EPHEMERAL_HIGH = 65535
TTL = 64
IP_HEADER_LEN = 20
TCP_HEADER_LEN = 20
SMALL_PAYLOAD = 256             # a segment with at most this much payload is never held for the budget
_MAX_EVENT_ROUNDS = 8
_PORTS = TCP_HEADER.size        # the quoted TCP header of an ICMP error: its first 8 octets name the ports
DNS_PORT = 53
DNS_RETRY_MS = 2000             # a DNS query is sent again after this long without an answer ...
DNS_TRIES = 3                   # ... at most this many times in all, to each server in turn
MAX_QUERIES = 64                # name lookups in flight at once


@dataclass(frozen=True)
class ClientStackConfig:
    connect_timeout: int = 30           # seconds for an open to complete (SYN to SYN-ACK)
    max_flows: int = 1024               # flows open or waiting at once; more are refused at once
    mtu: int = 1500                     # our MTU (the link's session MTU replaces it at LinkUp)
    tcp: TcpConfig = field(default_factory=TcpConfig)


@dataclass(frozen=True)
class Resolved:
    """The answer to :meth:`ClientStack.resolve`: the first IPv4 address of ``name``, or None and why."""
    query_id: int
    name: str
    address: object = None          # dotted IPv4 text, or None
    error: str = ""


@dataclass(frozen=True)
class FlowConnected:
    """The flow's TCP handshake completed."""
    flow_id: int


@dataclass(frozen=True)
class FlowRefused:
    """The flow could not be opened: ``rst``, ``unreachable``, ``timeout``, ``link down`` or ``too many``.

    ``icmp_code``: for ``unreachable``, the ICMP Destination Unreachable code (0 net, 1 host, 3 port,
    13 administratively prohibited, ...; -1 for an address we cannot send to at all)."""
    flow_id: int
    reason: str
    icmp_code: int = -1


@dataclass(frozen=True)
class FlowClosed:
    """A connected flow ended: ``closed`` (both FINs), ``reset``, ``timeout``, ``link down``, ``aborted``."""
    flow_id: int
    reason: str
    bytes_in: int = 0
    bytes_out: int = 0


class _Flow(object):
    __slots__ = ("flow_id", "host", "port", "conn", "key", "deadline", "connected", "granted", "received",
                 "backlog", "eof", "gone", "reported", "icmp_code", "lingering", "fast_seen")

    def __init__(self, flow_id, host, port, deadline):
        self.flow_id = flow_id
        self.host = host                # 4-byte address
        self.port = port
        self.conn = None
        self.key = None                 # (remote address, remote port, local port)
        self.deadline = deadline        # connect deadline (ms), None once connected
        self.connected = False
        self.granted = 0                # read credit handed to the local socket
        self.received = 0               # bytes it sent us
        self.backlog = b""              # bytes beyond the send buffer (credit overrun)
        self.eof = False
        self.gone = False
        self.reported = False           # FlowRefused / FlowClosed emitted
        self.icmp_code = -1             # of the ICMP unreachable that ended the open
        self.lingering = False          # reported closed, its connection in TIME_WAIT
        self.fast_seen = 0              # conn.fast_retransmits already reported (take_lost_frame_signal)

    def describe(self):
        return "flow %d to %s:%d" % (self.flow_id, ip_str(self.host), self.port)


class _Query(object):
    __slots__ = ("query_id", "name", "msg_id", "port", "packet", "tries", "server")

    def __init__(self, query_id, name, msg_id, port, packet):
        self.query_id = query_id
        self.name = name
        self.msg_id = msg_id
        self.port = port
        self.packet = packet
        self.tries = 0
        self.server = 0


def dns_query(msg_id, name):
    """An RFC 1035 4.1 query for the A records of ``name`` (recursion desired); ValueError for a bad name."""
    header = wdns.HEADER.pack(msg_id, wdns.FLAG_RD, 1, 0, 0, 0)
    return header + wdns.encode_name(name) + wdns.QUESTION_TAIL.pack(wdns.TYPE_A, 1)


def dns_first_address(data, msg_id):
    """(address or None, error) from a DNS answer to ``dns_query(msg_id, ...)``."""
    msg = wdns.Message.parse(data)
    if msg.id != msg_id or not msg.qr:
        raise ParseError("not_our_answer")
    if msg.rcode != wdns.RCODE_NOERROR:
        return None, "no such name" if msg.rcode == wdns.RCODE_NXDOMAIN else "DNS error %d" % msg.rcode
    for record in msg.answers:
        if record.rtype == wdns.TYPE_A and record.rdlength == 4:
            return ip_str(data[record.rdata_offset:record.end]), ""
    return None, "no IPv4 address"


class ClientStack(object):
    """The client role's IP stack (see the module docstring)."""

    def __init__(self, config, rng):
        self.config = config
        self._isn = IsnGenerator(rng)
        self._next_port = EPHEMERAL_LOW + rng.randrange(EPHEMERAL_HIGH - EPHEMERAL_LOW + 1)
        self._ident = rng.randrange(0x10000)
        self.local = None               # our address (IPCP), None while the link is down
        self.remote = None
        self.mtu = 1500
        self.line_rate = None
        self.header_compression = False # the link compresses TCP/IP headers (VJ): SYNs offer no timestamps
        self.suspended = False          # the client role never holds flows across a lost line
        self._flows = {}                # flow_id -> _Flow
        self._ready = set()             # flow ids that may have segments to send (see take_packets)
        self._lost_frame = False        # a fast retransmit since take_lost_frame_signal
        self._by_key = {}               # (remote address, remote port, local port) -> _Flow
        self._waiting = []              # flows opened before the link came up
        self._control = []              # datagrams not of a flow (RSTs for strays)
        self.timers = TimerQueue()
        self._events = []
        self._now = 0
        self.counters = {}
        self.packets_in = self.packets_out = self.bytes_in = self.bytes_out = 0
        self.opened = self.refused = 0
        self._lingering = 0             # flows reported closed whose connection waits in TIME_WAIT
        self._turn = 0                  # take_packets starts with this flow (round-robin)
        self.dns = ()                   # 4-byte addresses of the DNS servers IPCP gave us
        self._queries = {}              # query_id -> _Query
        self._rng = rng

    # -- accounting --------------------------------------------------------------------

    def _count(self, reason):
        n = self.counters.get(reason, 0) + 1
        self.counters[reason] = n
        return n

    def _drop(self, reason, detail=""):
        if every_power_of_two(self._count(reason)):
            log.debug("dropped: %s %s (%d so far)", reason, detail, self.counters[reason])

    def __len__(self):
        return len(self._flows)

    # -- the link (the Core calls these) ------------------------------------------------

    def set_addresses(self, local_ip, remote_ip, now):
        """The link is up with these addresses: waiting flows start."""
        self._now = now
        self.local = ip_bytes(local_ip)
        self.remote = ip_bytes(remote_ip)
        waiting, self._waiting = self._waiting, []
        for rec in waiting:
            if not rec.gone:
                self._start(rec, now)

    def set_dns(self, servers):
        """The DNS servers of this session (RFC 1877, dotted text), for :meth:`resolve`."""
        self.dns = tuple(ip_bytes(d) for d in servers)

    def set_mtu(self, mtu):
        self.mtu = mtu

    def set_line_rate(self, rate):
        self.line_rate = rate

    def set_header_compression(self, on):
        """The link compresses TCP/IP headers (Van Jacobson) in at least one direction: flows opened from now on
        offer no TCP timestamps (RFC 1144 section 3.2.3: a changed option sends the header uncompressed, and a
        timestamp changes with every segment)."""
        self.header_compression = bool(on)

    def take_delay_signal(self):
        """The client role measures no delay signal for the line's pace (the server side does): None."""
        return None

    def take_lost_frame_signal(self):
        """True once after some flow made a fast retransmit (as IPStack.take_lost_frame_signal: the link may
        have to resynchronise a compressor before the retransmission is framed)."""
        lost = self._lost_frame
        self._lost_frame = False
        return lost

    def reconfigure(self, config, now):
        self.config = config

    def suspend(self, now):
        """A lost line: the client role ends every flow (see the module docstring)."""
        self.reset(now, "link down")

    def resume(self, now):
        pass

    def stalled(self):
        """Some flow waits out a backed-off retransmission timer (core.py, "A silent line")."""
        for rec in self._flows.values():
            if rec.conn is not None and rec.conn.backed_off:
                return True
        return False

    def link_alive(self, now):
        """The line carries again after a silence: backed-off flows retransmit at once."""
        self._now = now
        for rec in list(self._flows.values()):
            if rec.conn is not None and rec.conn.backed_off:
                rec.conn.link_alive(now)
                self._after(rec, now)

    def line_answers(self, now):
        """The Core's probe was answered while flows were backed off: their losses are the line's noise
        (TcpConnection.line_answers)."""
        self._now = now
        for rec in list(self._flows.values()):
            if rec.conn is not None and rec.conn.line_answers(now):
                self._after(rec, now)

    def link_dropped(self, now):
        """The server's decompressor dropped our frames from a lost one on (its CCP Reset-Request): flows with
        data in flight and nothing new to send retransmit at once (TcpConnection.link_dropped)."""
        self._now = now
        for rec in list(self._flows.values()):
            if rec.conn is not None and rec.conn.link_dropped(now):
                self._after(rec, now)

    def reset(self, now, reason="link down"):
        """Every flow ends: refused if it was still opening, closed (aborted) otherwise."""
        self._now = now
        for rec in list(self._flows.values()):
            if rec.conn is not None and rec.conn.state is not TcpState.CLOSED:
                rec.conn.abort(now)
                rec.conn.take_events()
            self._end(rec, "link down")
        self._waiting = []
        self._control = []
        for query in list(self._queries.values()):
            self._resolved(query, None, "link down")
        self.local = self.remote = None

    # -- the runtime ----------------------------------------------------------------

    def open_flow(self, flow_id, host, port, now):
        """Open a TCP flow to ``host`` (dotted IPv4) : ``port``; events follow (module docstring)."""
        self._now = now
        deadline = now + self.config.connect_timeout * 1000
        try:
            address = ip_bytes(host)
        except ValueError:
            self._events.append(FlowRefused(flow_id, "unreachable"))
            return
        if flow_id in self._flows:
            raise ValueError("flow %d is already open" % flow_id)
        rec = _Flow(flow_id, address, port, deadline)
        if len(self._flows) - self._lingering >= self.config.max_flows:
            self._count("refused_too_many")
            self._events.append(FlowRefused(flow_id, "too many"))
            return
        self._flows[flow_id] = rec
        self.timers.schedule(flow_id, deadline)
        if self.local is None:
            self._waiting.append(rec)
        else:
            self._start(rec, now)

    def resolve(self, query_id, name, now):
        """Look ``name`` up (A records) at the session's DNS server; a :class:`Resolved` event follows."""
        self._now = now
        if self.local is None or not self.dns:
            self._events.append(Resolved(query_id, name, None, "no DNS server from the link"
                                         if self.local is not None else "link down"))
            return
        if len(self._queries) >= MAX_QUERIES:
            self._events.append(Resolved(query_id, name, None, "too many lookups"))
            return
        msg_id = self._rng.getrandbits(16)
        try:
            packet = dns_query(msg_id, name)
        except ValueError as exc:
            self._events.append(Resolved(query_id, name, None, "bad name: %s" % exc))
            return
        port = self._udp_port()
        query = _Query(query_id, name, msg_id, port, packet)
        self._queries[query_id] = query
        self._send_query(query, now)

    def _udp_port(self):
        used = set(q.port for q in self._queries.values())
        while True:
            port = EPHEMERAL_LOW + self._rng.randrange(EPHEMERAL_HIGH - EPHEMERAL_LOW + 1)
            if port not in used:
                return port

    def _send_query(self, query, now):
        server = self.dns[query.server % len(self.dns)]
        query.tries += 1
        self._ident = (self._ident + 1) & 0xFFFF
        payload = UdpRepr(query.port, DNS_PORT, query.packet).emit(self.local, server)
        self._control.append(Ipv4Repr(src=self.local, dst=server, protocol=PROTO_UDP, payload=payload, ttl=TTL,
                                      ident=self._ident, dont_fragment=True).emit())
        self.timers.schedule(("dns", query.query_id), now + DNS_RETRY_MS)

    def _resolved(self, query, address, error):
        self._queries.pop(query.query_id, None)
        self.timers.cancel(("dns", query.query_id))
        self._events.append(Resolved(query.query_id, query.name, address, error))

    def _udp_input(self, ip, now):
        try:
            udp = UdpRepr.parse(ip.payload, ip.src, ip.dst)
        except ParseError as exc:
            self._drop("udp_" + exc.reason, exc.detail)
            return
        query = None
        for candidate in self._queries.values():
            if candidate.port == udp.dst_port:
                query = candidate
                break
        if query is None or udp.src_port != DNS_PORT or ip.src not in self.dns:
            self._drop("udp_unexpected")
            return
        try:
            address, error = dns_first_address(udp.payload, query.msg_id)
        except ParseError as exc:
            self._drop("dns_" + exc.reason)
            return
        self._resolved(query, address, error)

    def service_data(self, flow_id, data, now):
        """Bytes read from the local socket, within the credit granted."""
        self._now = now
        rec = self._flows.get(flow_id)
        if rec is None or rec.conn is None or not data or rec.eof:
            self._count("data_unexpected")
            return
        rec.received += len(data)
        if rec.received > rec.granted:
            self._count("credit_overrun")
        send_or_queue(rec, data, now)
        self._after(rec, now)

    def service_eof(self, flow_id, now):
        """The local socket's EOF: our FIN after every queued byte."""
        self._now = now
        rec = self._flows.get(flow_id)
        if rec is None or rec.eof:
            return
        rec.eof = True
        if rec.conn is not None and not rec.backlog:
            rec.conn.shutdown(now)
            self._after(rec, now)

    def service_written(self, flow_id, nbytes, now):
        """The local socket took ``nbytes``: the receive window reopens.  True when that gave the stack
        something to send or to report (a window update); False: nothing a flush would find."""
        self._now = now
        rec = self._flows.get(flow_id)
        if rec is None or rec.conn is None or nbytes <= 0:
            return False
        due = rec.conn.consumed(nbytes, now)
        return self._after(rec, now) or due

    def service_error(self, flow_id, reason, now):
        """The local socket failed or was closed by the runtime: the flow is reset."""
        self._now = now
        rec = self._flows.get(flow_id)
        if rec is None:
            return
        if rec.conn is not None:
            rec.conn.abort(now)
            rec.conn.take_events()
        self._end(rec, "aborted", close_local=False)

    close_flow = service_error

    # -- input ------------------------------------------------------------------------

    def receive_packet(self, packet, now):
        self._now = now
        self.packets_in += 1
        self.bytes_in += len(packet)
        try:
            ip = Ipv4Repr.parse(packet)
        except ParseError as exc:
            self._drop("ip_" + exc.reason, exc.detail)
            return
        if self.local is None or ip.dst != self.local:
            self._drop("ip_not_ours", ip_str(ip.dst))
            return
        if ip.is_fragment:
            self._drop("ip_fragment")       # our MSS keeps TCP unfragmented; nothing else is expected
            return
        if ip.protocol == PROTO_TCP:
            self._tcp_input(ip, now)
        elif ip.protocol == PROTO_ICMP:
            self._icmp_input(ip, now)
        elif ip.protocol == PROTO_UDP:
            self._udp_input(ip, now)
        else:
            self._drop("ip_protocol_%d" % ip.protocol)

    def _tcp_input(self, ip, now):
        try:
            seg = TcpRepr.parse(ip.payload, ip.src, ip.dst)
        except ParseError as exc:
            self._drop("tcp_" + exc.reason, exc.detail)
            return
        rec = self._by_key.get((ip.src, seg.src_port, seg.dst_port))
        if rec is None or rec.gone:
            # RFC 9293 3.10.7.1: "a reset is sent in response to any incoming segment except another reset".
            reply = rst_for(seg)
            self._drop("tcp_no_flow")
            if reply is not None:
                self._control.append(self._datagram(reply, ip.dst, ip.src))
            return
        rec.conn.receive(seg, now)
        self._after(rec, now)

    def _icmp_input(self, ip, now):
        try:
            message = IcmpRepr.parse(ip.payload)
        except ParseError as exc:
            self._drop("icmp_" + exc.reason, exc.detail)
            return
        if message.type != icmp_wire.TYPE_DEST_UNREACHABLE:
            self._drop("icmp_type_%d" % message.type)
            return
        # RFC 792: the error quotes the internet header and at least 64 bits of the original datagram.
        try:
            quoted = Ipv4Repr.parse(message.payload, verify=False)
        except ParseError:
            quoted = None
        if quoted is None or quoted.protocol != PROTO_TCP or quoted.src != self.local \
                or len(quoted.payload) < 4:
            self._drop("icmp_not_ours")
            return
        sport = int.from_bytes(quoted.payload[0:2], "big")
        dport = int.from_bytes(quoted.payload[2:4], "big")
        rec = self._by_key.get((quoted.dst, dport, sport))
        if rec is None or rec.gone:
            self._drop("icmp_no_flow")
            return
        log.debug("%s: ICMP destination unreachable (code %d)", rec.describe(), message.code)
        rec.icmp_code = message.code
        rec.conn.unreachable(now)
        self._after(rec, now)

    # -- output -----------------------------------------------------------------------

    def _datagram(self, seg, src, dst):
        self._ident = (self._ident + 1) & 0xFFFF
        return Ipv4Repr(src=src, dst=dst, protocol=PROTO_TCP, payload=seg.emit(src, dst), ttl=TTL,
                        ident=self._ident, dont_fragment=True).emit()

    @property
    def wants_room(self):
        """Some flow has data, a FIN or a retransmission waiting to be sent: more room on the line may let it
        go (``IPStack.wants_room``)."""
        flows = self._flows
        for flow_id in self._ready:
            rec = flows.get(flow_id)
            if rec is not None and rec.conn is not None and rec.conn.wants_budget:
                return True
        return False

    def take_packets(self, budget, allow_one_over=False):
        """[(urgent, datagram)]: control and small segments always; bulk within ``budget`` (< 0: all)."""
        now = self._now
        out = [(True, p) for p in self._control]
        self._control = []
        remaining = budget
        first_bulk = allow_one_over and budget > 0
        ready = self._ready
        flows = [rec for rec in self._flows.values() if rec.flow_id in ready]
        if flows:
            # Each call starts with the next flow, so that one bulk flow cannot keep the budget to itself.
            start = self._turn % len(flows)
            self._turn += 1
            flows = flows[start:] + flows[:start]
        for rec in flows:
            conn = rec.conn
            if conn is None:
                continue
            if remaining < 0:
                limit = -1
            elif first_bulk:
                limit = max(remaining, conn.send_mss)
            else:
                limit = max(remaining, 0)
            segs = conn.take_segments(limit, now)
            for seg in segs:
                packet = self._datagram(seg, self.local, rec.host) if self.local is not None else None
                if packet is None:
                    continue
                small = len(seg.payload) <= SMALL_PAYLOAD
                out.append((small, packet))
                if seg.payload and remaining >= 0:
                    remaining -= len(seg.payload)
                    first_bulk = False
            busy = self._after(rec, now)
            if not segs and not busy and (limit < 0 or limit >= conn.send_mss or not conn.wants_budget):
                # Nothing to send though there was room for a full segment, or nothing waiting for room at
                # all: it stays quiet until an input, a timer or the runtime calls _after again.
                ready.discard(rec.flow_id)
        # Urgent first, then bulk, each in order.
        out = [p for p in out if p[0]] + [p for p in out if not p[0]]
        self.packets_out += len(out)
        for _, p in out:
            self.bytes_out += len(p)
        return out

    # -- timers -----------------------------------------------------------------------

    def get_timer(self):
        return self.timers.next_deadline()

    def handle_timer(self, now):
        self._now = now
        for flow_id in self.timers.pop_due(now):
            if isinstance(flow_id, tuple):
                query = self._queries.get(flow_id[1])
                if query is not None:
                    if query.tries >= DNS_TRIES * len(self.dns):
                        self._resolved(query, None, "no answer from the DNS server")
                    else:
                        query.server += 1
                        self._send_query(query, now)
                continue
            rec = self._flows.get(flow_id)
            if rec is None or rec.gone:
                continue
            if rec.deadline is not None and now >= rec.deadline and not rec.connected:
                log.info("%s: no answer within %d s", rec.describe(), self.config.connect_timeout)
                if rec.conn is not None:
                    rec.conn.abort(now)
                    rec.conn.take_events()
                self._end(rec, "timeout")
                continue
            if rec.conn is not None:
                rec.conn.handle_timer(now)
            self._after(rec, now)

    def take_events(self):
        events, self._events = self._events, []
        return events

    # -- internals ----------------------------------------------------------------------

    def _start(self, rec, now):
        port = self._ephemeral_port(rec.host, rec.port)
        if port is None:
            self._end(rec, "too many")
            return
        mss_limit = self.mtu - IP_HEADER_LEN - TCP_HEADER_LEN
        iss = self._isn(self.local, port, rec.host, rec.port, now)
        tcp = self.config.tcp
        if self.header_compression and tcp.timestamps:
            tcp = replace(tcp, timestamps=False)
        rec.conn = TcpConnection.connect(self.local, port, rec.host, rec.port, tcp, iss, now, mss_limit)
        rec.key = (rec.host, rec.port, port)
        self._by_key[rec.key] = rec
        self.opened += 1
        log.debug("%s: connecting from port %d", rec.describe(), port)
        self._arm(rec)
        self._ready.add(rec.flow_id)            # its SYN

    def _ephemeral_port(self, host, port):
        span = EPHEMERAL_HIGH - EPHEMERAL_LOW + 1
        for _ in range(span):
            candidate = self._next_port
            self._next_port = EPHEMERAL_LOW + (candidate - EPHEMERAL_LOW + 1) % span
            if (host, port, candidate) not in self._by_key:
                return candidate
        return None

    def _after(self, rec, now):
        """Turn the connection's events into flow events; re-arm its timer; mark it as maybe having segments
        to send.  True if it had events."""
        conn = rec.conn
        had = False
        for _ in range(_MAX_EVENT_ROUNDS):
            events = conn.take_events()
            if not events:
                break
            had = True
            for event in events:
                if rec.gone:
                    return True
                self._on_event(rec, event, now)
        if conn.fast_retransmits != rec.fast_seen:
            rec.fast_seen = conn.fast_retransmits
            self._lost_frame = True
        if not rec.gone:
            if rec.connected and not rec.reported and conn.state is TcpState.TIME_WAIT:
                # Both FINs exchanged: the flow is done for the user; the connection lingers in
                # TIME_WAIT (RFC 9293 3.6) to answer a retransmitted FIN, then goes.
                rec.reported = True
                rec.lingering = True
                self._lingering += 1            # no longer counts against max_flows
                self._events.append(FlowClosed(rec.flow_id, "closed", conn.bytes_in, conn.bytes_out))
            self._arm(rec)
            self._ready.add(rec.flow_id)    # whatever happened to it may have made segments due
        return had

    def _on_event(self, rec, event, now):
        flow_id = rec.flow_id
        if isinstance(event, tcp_events.Established):
            rec.connected = True
            rec.deadline = None
            self._events.append(FlowConnected(flow_id))
            self._grant(rec, now)
        elif isinstance(event, tcp_events.Readable):
            data = rec.conn.read()
            if data:
                self._events.append(ServiceSend(flow_id, data))
        elif isinstance(event, tcp_events.Writable):
            self._grant(rec, now)
        elif isinstance(event, tcp_events.PeerFin):
            self._events.append(ServiceShutdown(flow_id))
        elif isinstance(event, tcp_events.Reset):
            self._end(rec, "reset" if rec.connected else "rst")
        elif isinstance(event, tcp_events.TimedOut):
            self._end(rec, "timeout")
        elif isinstance(event, tcp_events.Unreachable):
            self._end(rec, "unreachable")
        elif isinstance(event, tcp_events.Closed):
            reason = rec.conn.close_reason
            self._end(rec, "closed" if reason in (None, "closed", "time_wait") else reason)

    def _grant(self, rec, now):
        """Read credit for the local socket up to the connection's free send space."""
        if rec.gone or not rec.connected:
            return
        credit = new_credit(rec, now)
        if credit:
            self._events.append(ServiceReadCredit(rec.flow_id, credit))

    def _arm(self, rec):
        deadline = rec.conn.get_timer() if rec.conn is not None else None
        if not rec.connected:
            deadline = earliest(deadline, rec.deadline)
        self.timers.schedule(rec.flow_id, deadline)

    def _end(self, rec, reason, close_local=True):
        """The flow is over: one FlowRefused or FlowClosed; its connection stays for one last output."""
        if not rec.reported:
            rec.reported = True
            if rec.connected:
                conn = rec.conn
                if close_local and reason != "closed":
                    self._events.append(ServiceClose(rec.flow_id, reason))
                self._events.append(FlowClosed(rec.flow_id, reason, conn.bytes_in, conn.bytes_out))
            else:
                self.refused += 1
                self._events.append(FlowRefused(rec.flow_id, reason, rec.icmp_code))
        if rec.lingering:
            rec.lingering = False
            self._lingering -= 1
        rec.gone = True
        self.timers.cancel(rec.flow_id)
        self._flows.pop(rec.flow_id, None)
        self._ready.discard(rec.flow_id)
        if rec.key is not None and self._by_key.get(rec.key) is rec:
            del self._by_key[rec.key]
        if rec.conn is not None:
            # A RST queued as it closed still goes out.
            for seg in rec.conn.take_segments(-1, self._now):
                if self.local is not None:
                    self._control.append(self._datagram(seg, self.local, rec.host))
