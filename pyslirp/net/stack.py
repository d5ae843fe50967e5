"""The IP stack: the flow table, the service bridge and output scheduling. Sans-IO.

Theory of operation
-------------------
The PPP link hands :meth:`IPStack.receive_packet` one IP datagram at a time.
The address family's own work (header checks, the client-only source rule,
reassembly, building datagrams, ICMP errors) is done by the IP layer
(net/ipv4.py ``Ipv4Layer``); what is left here does not care about the
family.  Every drop is counted in ``counters`` by reason and logged at a
limited rate.

Flows.  Every TCP connection, UDP association and ICMP echo exchange of the
client is a flow in a table keyed by its full tuple
(net/flows.py ``FlowKey``: protocol, client address and port, server address
and port).  Each flow answers from its own server address, so a NAT'd
flow's segments, resets and errors come from the outside host, and a
service's from local_ip.  The first packet of an unknown flow (a TCP SYN, a
UDP datagram, an echo request) asks the one admission point,
``Policy.decide(flow, now) -> Route`` (net/flows.py): a service on local_ip,
a UDP service, the DNS forwarder, NAT to an allowed outside address, or a
refusal with the outcome the client sees (net/refusal.py: RST, ICMP
administratively prohibited, port unreachable).

TCP.  Admitted, a :class:`~pyslirp.net.tcp.conn.TcpConnection` is created
*pending*: nothing is sent until the runtime's connector has reached the
route's target, directly or through a proxy (``ServiceConnect`` carries the
Route; ``service_connected`` -> ``conn.accept``, SYN-ACK;
``service_failed(outcome)`` -> RST|ACK or the ICMP error the outcome names, so
the client sees the refusal at once and never a connection that opens and
drops).  Segments for no connection are answered by ``rst_for`` (RFC 9293
3.10.7.1) from the address they were sent to.

SYN floods.  When the policy defers a SYN (its half-open table is full, or
SYNs come faster than its rate; see net/flows.py) the SYN is answered
statelessly: a SYN-ACK whose ISS is a SYN cookie (net/tcp/syncookie.py),
within a rate limit of SYNACK_LINE_SHARE of the line's measured rate, and
nothing is kept.  A SYN the limit left out is remembered in a fixed table;
if the client sends it again (a real client's retransmission; a flood from
changing ports hardly ever repeats one) it is answered from a budget of its
own.  An ACK for no connection that returns a valid cookie is decided again
(``handshake=True``): admitted, the connection is built in the state after
the handshake (``TcpConnection.from_cookie``) and fed the ACK, and only then
does ``ServiceConnect`` go out, as soon as the policy has a token for it
(``Policy.take_token``): a completed handshake is never refused for the
rate, it waits, in arrival order, for the bucket to refill (a timer,
``_TOKEN_KEY``).  The client's data waits in the receive window (not read,
so not sent to the service) until ``service_connected``, and a connect that
fails resets the established connection.  When a SYN turns cookies on, a
``FlowLog`` of kind ``syn_cookies`` names the limit (the audit log's
``limit`` record).  A completed handshake that finds a limit full first
evicts the oldest flow whose SYN-ACK went unanswered for a retransmission
timeout; connections that completed their handshake are never evicted.

Connection events become service events (pyslirp/net/events.py):
``readable`` -> ``ServiceSend``; ``writable`` -> ``ServiceReadCredit``;
``peer_fin`` -> ``ServiceShutdown``; ``reset``/``timeout`` ->
``ServiceClose``; ``established`` and ``closed`` -> ``FlowLog`` (one value
per flow opened, closed or refused, TCP, UDP and ping alike, from which the
runtime writes the connection log's line and the audit record).
Read credit is the backpressure from the client's TCP window to the service
socket: we grant the service thread at most ``conn.send_space`` bytes in
total that we have not yet received from it (granted - received), so every
``service_data`` fits into the connection's send buffer.

UDP.  A UDP flow (a ``[udp_services.PORT]`` or NAT to an outside address)
becomes ``UdpOpen`` (the runtime opens one socket for it) and every datagram
``UdpSend``; the runtime's replies come back through ``udp_data`` and leave
from the flow's server address, fragmented when larger than the MTU; a port
unreachable the runtime saw (``udp_error``) is relayed as ICMP from that
address, quoting the client's last datagram.  Flows idle for
``udp_timeout`` seconds are closed (``UdpClose``).  Queries to local_ip:53,
when the forwarder is on, go to the sans-IO DNS forwarder (net/dns.py),
whose upstream queries leave as ``DnsQuery`` events.

ICMP.  Echo requests to local_ip are answered here (RFC 1122 3.2.2.6).  An
echo request to an admitted outside address is a ping flow, keyed by its
identifier: ``PingOpen`` / ``PingSend`` to the runtime's pinger, replies
through ``ping_reply`` with the client's identifier restored.

Timers: one ``TimerQueue`` key per flow (its id; for TCP the earlier of
``conn.get_timer()`` and the idle deadline), re-armed after every call into
the connection, and one key for the reassembler.

Output: :meth:`take_packets` returns queued control packets (ICMP, resets,
UDP), then every connection's segments: control segments and segments with
at most 64 bytes of payload (keystrokes and their echoes) always and marked
urgent, bulk payload shared round-robin within ``budget`` bytes (IP datagram
bytes; see :meth:`_take_tcp`).  The runtime calls it when the line has room
and passes what may still be queued toward the line, so what is returned is
what goes onto the line next, in that order: bulk waits here, in the TCP
send buffers, where a keystroke can still overtake it.

Fitting a slow line: the runtime measures how fast the line drains and tells
us (``set_line_rate``, bytes/s).  At 115200 bit/s one 1500-byte frame holds
the line for 130 ms, so a keystroke behind it, or behind the client's own
upload, waits that long.  Therefore:

* the MSS we announce in our SYN-ACK (the size of every segment the client
  sends us on that connection) is about MSS_TIME of line time, at least
  MIN_LINE_MSS, unless ``tcp.mss`` is configured (RFC 9293 3.7.1 lets the
  receiver announce any MSS); TCP timestamps are not offered on a line
  slower than SLOW_LINE (12 bytes per segment), nor while the link
  compresses TCP/IP headers (``set_header_compression``: with Van
  Jacobson compression a timestamp, which changes with every segment,
  sends every header uncompressed, RFC 1144 section 3.2.3);
* our receive window (``conn.rcv_limit``) is WINDOW_TIME of line time (at
  least BULK_WINDOW_SEGMENTS of the client's segments), and only
  INTERACTIVE_WINDOW_TIME (at least two segments) while interactive traffic
  shares the line: the window bounds what the client queues toward the line
  ahead of its own keystrokes;
* while interactive traffic shares a slow line our own bulk segments are cut
  to SEGMENT_TIME of line time (``conn.segment_limit``; otherwise as large as
  the client allows, for efficiency) and every data segment from the client
  is acknowledged at once (``conn.ack_every``), so a two-segment window
  keeps its upload going;
* after a fast retransmit on a slow line (a frame of ours lost to line
  noise: at a bit error rate of 1e-5 a 1500-byte frame is lost one time in
  nine, a 576-byte one in twenty-two) our bulk segments are cut to
  SEGMENT_TIME of line time too, for LOSSY_HOLD after the latest such loss;
* a client that streamed to us and fell silent for REACK_SEGMENTS of its
  segments' line time after an ACK of ours that acknowledged new data may
  have lost that ACK (its window all in flight, it waits for its
  retransmission timer): the ACK goes once more (``conn.reack_ms``, see
  net/tcp/conn.py "Acknowledgements again");
* a serial line neither reorders nor duplicates, so on a slow line every
  connection takes the first duplicate ACK, or any ACK whose SACK blocks
  leave a hole at SND.UNA, for a loss (``conn.dup_thresh`` 1, see
  net/tcp/conn.py "Retransmission").

The delay signal: every RTT sample a connection takes of a segment with
at most SMALL_PAYLOAD bytes (its SYN-ACK, keystroke echoes; the clock runs
from the segment leaving the stack to the client's ACK) is a round trip
across the whole line, queues included, whose own transmission time is
small; :meth:`take_delay_signal` hands the smallest since the last call to
the runtime, which paces a line whose backlog it cannot see by it (a rising
minimum is a queue growing out of sight: runtime/serialio.py
``LinePacer``).  Samples of bulk segments are left out: they include the
segment's own line time (130 ms for 1500 bytes at 115200 bit/s), and the
client's delayed ACK of the first of two segments waits for the second.
So is every sample whose round trip saw bulk data arrive from the client:
its ACK then queued behind the client's own upload on the way back, and
that queue is the client's, not ours (at 9600 bit/s it is hundreds of ms,
and pacing our output down for it would starve the download for nothing).

"Interactive" means that some connection carried INTERACTIVE_SEGMENTS small
payload segments (at most SMALL_PAYLOAD bytes), either way, with no pause of
INTERACTIVE_HOLD ms; it ends INTERACTIVE_HOLD ms after the last one.  Bulk
efficiency wants large segments and a window of many of them; latency wants
the opposite: this is the trade-off, measured by bench/bench_link.py.

Service health: a service's Route lists its targets (``host:port`` and its
``fallback``, without those whose circuit breaker is open, net/health.py);
the runtime tries them in order and reports which one connected and which
failed (``service_connected(target=, failures=)``,
``service_failed(failures=)``), which the policy's breakers learn from; a
connection that connected to a fallback keeps the Route of that target.
Breaker state changes come out of :meth:`take_events` as ``BreakerChange``.

Reload: :meth:`reconfigure` swaps in a new configuration (services, limits,
outbound policy, DNS forwarder on or off, TCP tunables for new connections,
UDP timeout) with a new Policy that carries over the running one's counts
and breakers.  Every flow keeps the Route it was admitted with; only new
flows see the new configuration.  The link's own values (addresses, MTU)
cannot change this way.

Link down.  After an administrative close (ours, or the client's
Terminate-Request) :meth:`reset` drops every flow without a word on the dead
link and closes every service socket.  When the line was lost instead (the
client's pppd restarted, the line cut, the adapter unplugged: the Core tells
the two apart), :meth:`suspend` keeps every TCP flow and its service socket
for ``resume_grace`` seconds: each connection is suspended (net/tcp/conn.py,
"Link outages": nothing sent, no retransmission or give-up timer running),
nothing is taken for the line, and the credit scheme holds the service
sockets back once the send buffers are full, so memory stays bounded by
``sndbuf`` per connection.  UDP and ping flows are closed at once (the
client's next datagram opens a new one) and so is everything queued for
the line.  If the client comes back in time with the same address,
:meth:`resume` carries the connections on (each resends what was in flight,
or probes); if not, the grace timer resets the stack as :meth:`reset` does.

Metrics: besides the plain counters, the stack keeps per route label
(``Route.label``: the service's name, ``nat``, ``dns``) a :class:`FlowTally`:
flows opened, the TCP connect time from the client's SYN to
``service_connected`` (a histogram), and the payload bytes and
retransmissions of flows that are gone, folded in when a flow is forgotten.
:meth:`service_figures`, :meth:`datagram_figures` and
:meth:`tcp_retransmissions` add the live flows' figures; they walk the flow
table, so only the stack thread calls them (pyslirp/metrics.py ``collect``).
``connection_errors`` counts TCP connections that failed or ended
abnormally once each, by label and first reason (``connect_<outcome>``,
``reset``, ``timeout``, ``idle``, ``service_error``, ``link_down``).
"""

import logging
from collections import OrderedDict, deque
from dataclasses import dataclass, field, replace
from typing import Optional, Tuple

from pyslirp.net import flows as F
from pyslirp.net import icmp as icmp_policy
from pyslirp.net import refusal
from pyslirp.metrics import Buckets
from pyslirp.net import events as ev
from pyslirp.net.credit import new_credit, send_or_queue
from pyslirp.net.events import (DnsQuery, FlowLog, PingClose, PingOpen, PingSend, ServiceClose, ServiceConnect,
                                ServiceReadCredit, ServiceSend, ServiceShutdown, UdpClose, UdpOpen, UdpSend)
from pyslirp.net.flows import FlowKey, Policy, Service
from pyslirp.net.health import DEFAULT_COOLDOWN, DEFAULT_FAILURES
from pyslirp.net.ipv4 import Ipv4Layer
from pyslirp.net.ratelimit import TokenBucket
from pyslirp.net.tcp import events as tcp_events
from pyslirp.net.tcp.conn import (DUP_THRESH, TcpConfig, TcpConnection, TcpState, initial_window, our_mss, rst_for,
                                   window_shift)
from pyslirp.net.tcp.isn import IsnGenerator
from pyslirp.net.tcp.seq import seq_add
from pyslirp.net.tcp.syncookie import SynCookies, UnansweredSyns, ts_decode, ts_encode
from pyslirp.timers import TimerQueue
from pyslirp.wire import icmp as icmp_wire
from pyslirp.wire import tcp as tcp_wire
from pyslirp.wire.errors import ParseError
from pyslirp.wire.icmp import IcmpRepr
from pyslirp.wire.ipv4 import PROTO_ICMP, PROTO_TCP, PROTO_UDP
from pyslirp.wire.udp import UdpRepr

log = logging.getLogger("pyslirp.net")

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
REACK_SEGMENTS = 3          # a streaming client silent for this many of its segments' line time: ACK again
MIN_REACK_MS = 50           # ... but never sooner than this
LOSSY_HOLD = 30000          # ms: after a segment of ours was lost on a slow line, bulk segments stay short this long
MIN_WINDOW_SEGMENTS = 2     # the receive window never goes below two of the client's segments
BULK_WINDOW_SEGMENTS = 6    # ... nor below six while only bulk flows (a client that keeps running into the
                            # window probes its tail (TLP) and resends into its own queue)
SYNACK_LINE_SHARE = 0.25    # cookie SYN-ACKs take at most this share of the line's measured rate
SYNACK_WIRE = 64            # bytes: what one SYN-ACK costs on the line (IPv4 + TCP with options, PPP framing)
SYNACK_DEFAULT_RATE = 200   # SYN-ACKs per second while the line's rate is unknown
SYNACK_MIN_RATE = 10        # ... never fewer than this
SYNACK_MIN_BURST = 4        # bursts of a tenth of a second's worth, at least this many
SYNACK_RETRY_SHARE = 4      # SYN-ACKs for retransmitted SYNs the limit left unanswered: a quarter as many more
_FRAG_KEY = "frag"
_RESUME_KEY = "resume"
_DNS_KEY = "dns"
_TOKEN_KEY = "token"            # the next token for a completed cookie handshake waiting for its service connect
_MAX_EVENT_ROUNDS = 8

# What the client sees for each refusal outcome (net/refusal.py); RESET is a TCP RST instead.
_ICMP_CODE = {
    refusal.NET_UNREACHABLE: icmp_wire.CODE_NET_UNREACHABLE,
    refusal.HOST_UNREACHABLE: icmp_wire.CODE_HOST_UNREACHABLE,
    refusal.ADMIN_PROHIBITED: icmp_wire.CODE_ADMIN_PROHIBITED,
    refusal.PORT_UNREACHABLE: icmp_wire.CODE_PORT_UNREACHABLE,
}


def _segment_payload(conn):
    """The most payload one segment of ``conn`` carries now (its MSS, or less under ``segment_limit``)."""
    n = conn.send_mss
    limit = conn.segment_limit
    if limit and limit < n:
        n = limit
    return max(1, n)


def line_mss(rate, limit):
    """The MSS for a new connection on a line that drains ``rate`` bytes/s (None: unknown), at most ``limit``."""
    if not rate:
        return limit
    return min(limit, max(MIN_LINE_MSS, int(rate * MSS_TIME) - IP_TCP_HEADER))


@dataclass(frozen=True)
class StackConfig:
    local_ip: str = "10.0.0.1"
    remote_ip: str = "10.0.0.2"
    mtu: int = 1500
    services: Tuple[Service, ...] = (Service(22, "127.0.0.1", 22, "SSH"),)
    udp_services: Tuple[Service, ...] = ()
    proxy_via: str = ""                     # the configured proxy's type ("socks5", "http"), "" for none
    outbound: F.OutboundPolicy = field(default_factory=F.OutboundPolicy)
    dns_forwarder: bool = False
    dns_tcp_upstream: Optional[Tuple[str, int]] = None   # DNS over TCP to local_ip:53 is relayed here
    max_connections: int = 64
    max_per_service: int = 16
    max_udp_flows: int = 64
    new_connections_per_second: int = 20    # token bucket on new TCP flows (completed handshakes under cookies)
    burst: int = 40
    max_half_open: int = 32                 # TCP flows waiting for their service connect; beyond: SYN cookies
    udp_timeout: int = 60                   # seconds a UDP or ping flow lives without traffic
    resume_grace: int = 120                 # seconds TCP flows wait for the client after a lost line; 0 = none
    tcp: TcpConfig = field(default_factory=TcpConfig)
    breaker_failures: int = DEFAULT_FAILURES            # net/health.py: failed connects in a row that open
    breaker_cooldown: int = DEFAULT_COOLDOWN // 1000    # ... a target's breaker, and its cooldown in seconds


class _Flow(object):
    """What every flow record has: its id, tuple, route and activity."""
    __slots__ = ("flow_id", "key", "route", "opened_at", "last_activity", "gone", "counted", "waiting")

    def __init__(self, flow_id, key, route, now):
        self.flow_id = flow_id
        self.key = key
        self.route = route
        self.opened_at = now
        self.last_activity = now
        self.gone = False
        self.counted = True             # holds a slot in the policy's limits
        self.waiting = False            # TCP: counts as half-open until its service connect ends

    @property
    def client(self):
        return (F.addr_str(self.key.client_addr), self.key.client_port)


class _Conn(_Flow):
    """The stack's bookkeeping around one TcpConnection."""
    __slots__ = ("conn", "syn_ip", "accepted", "established", "granted", "received", "backlog", "eof",
                 "peer_fin", "service_closed", "reason", "error", "small_at", "small_count", "cookie", "queued",
                 "fast_seen")

    def __init__(self, flow_id, key, route, conn, syn_ip, now):
        _Flow.__init__(self, flow_id, key, route, now)
        self.conn = conn
        self.syn_ip = syn_ip            # the SYN's datagram, quoted if the connect fails with an ICMP error
        self.accepted = False           # service connected, SYN-ACK sent
        self.established = False
        self.granted = 0                # read credit handed to the service thread, in total
        self.received = 0               # bytes of it the service thread has used (service_data)
        self.backlog = b""              # service data beyond send_space (only if the service overruns its credit)
        self.eof = False                # service_eof seen
        self.peer_fin = False           # ServiceShutdown sent
        self.service_closed = False     # ServiceClose sent
        self.reason = ""
        self.error = None               # the metrics' reason of a failed or abnormally ended connection
        self.small_at = None            # ms of the last small (interactive) payload segment, either way
        self.small_count = 0            # small payload segments since a pause of INTERACTIVE_HOLD
        self.waiting = True
        self.cookie = False             # the handshake completed with a SYN cookie (before the service connect)
        self.queued = False             # ... and its ServiceConnect waits for a token (IPStack._token_wait)
        self.fast_seen = 0              # conn.fast_retransmits already reported (IPStack.take_lost_frame_signal)

    @property
    def conn_id(self):
        return self.flow_id


class FlowTally(object):
    """Per route label, what the metrics export: flows open now (TCP: connected, and still connecting), flows
    opened in all, payload bytes each way (closed flows' folded in when they close) and TCP connect times."""
    __slots__ = ("active", "connecting", "opened", "bytes_in", "bytes_out", "connect")

    def __init__(self):
        self.active = 0
        self.connecting = 0
        self.opened = 0
        self.bytes_in = 0
        self.bytes_out = 0
        self.connect = Buckets()

    def copy(self):
        other = FlowTally()
        other.opened, other.bytes_in, other.bytes_out = self.opened, self.bytes_in, self.bytes_out
        other.connect.merge(self.connect)
        return other


class _Datagrams(_Flow):
    """A UDP or ping flow: the client's last datagram is kept to quote in a relayed ICMP error."""
    __slots__ = ("last_ip", "bytes_in", "bytes_out")

    def __init__(self, flow_id, key, route, ip, now):
        _Flow.__init__(self, flow_id, key, route, now)
        self.last_ip = ip
        self.bytes_in = 0               # from the client
        self.bytes_out = 0              # to the client


class IPStack(object):
    def __init__(self, config, rng):
        self.config = config
        self.rng = rng
        self._counters = {}
        self.ip = Ipv4Layer(config.local_ip, config.remote_ip, config.mtu, rng, self._drop, self._counters)
        self.local_ip = self.ip.local
        self.remote_ip = self.ip.remote
        self.line_rate = None
        self.header_compression = False # the link compresses TCP/IP headers (Van Jacobson): no timestamps
        self._delay_min = None          # ms: the smallest small-segment RTT since take_delay_signal
        self._lost_frame = False        # a fast retransmit since take_lost_frame_signal
        self._bulk_in_at = None         # ms: when the client's latest bulk segment arrived
        self._fitted = (None, False, False)     # (line rate, interactive, lossy) the connections were last fitted to
        self._conn_configs = {}         # (announced mss, timestamps) -> TcpConfig for new connections
        self._interactive_until = -1    # ms: interactive traffic seen recently (see _interactive)
        self._lossy_until = -1          # ms: a segment of ours was lost recently (see "Fitting a slow line")
        self.policy = Policy(config)
        self.timers = TimerQueue()
        self._isn = IsnGenerator(rng)
        self.cookies = SynCookies(rng)
        self._unanswered = None         # UnansweredSyns, made when the SYN-ACK limit first leaves a SYN out
        self._token_wait = deque()      # cookie flows admitted before a token was free, oldest first
        self._synack_bucket = self._retry_bucket = None
        self._conns = OrderedDict()     # FlowKey -> _Conn, in round-robin order
        self._ready = set()             # FlowKeys of the connections that may have segments to send
        self._datagram_flows = {}       # FlowKey -> _Datagrams (UDP and ping flows)
        self._by_id = {}                # flow id -> _Conn or _Datagrams
        self._next_id = 1
        self._control = deque()         # datagrams to send ahead of everything (ICMP, resets, UDP)
        self._events = []
        self._now = 0
        self._synack_limits(SYNACK_DEFAULT_RATE)
        self._suspended_at = None       # ms the link was lost (see suspend), None while it is up
        self._log_bucket = TokenBucket(1, 10)
        self._log_suppressed = 0
        self.dns = None
        if config.dns_forwarder:
            from pyslirp.net.dns import DnsForwarder
            self.dns = DnsForwarder(rng)
        # Counters (plain attributes and one dict of drop reasons).
        self.packets_in = 0
        self.packets_out = 0
        self.bytes_in = 0
        self.bytes_out = 0
        self.echo_requests = 0
        self.echo_replies = 0
        self.rst_sent = 0
        self.connections_opened = 0
        self.connections_refused = 0
        self.connections_closed = 0
        self.flows_refused = {}         # cause -> count (policy, limit, ...), every protocol
        self.tcp_refused = {}           # cause -> count, TCP only
        self.udp_flows_opened = 0
        self.ping_flows_opened = 0
        self.syncookies_sent = 0        # SYNs answered with a cookie
        self.syncookies_limited = 0     # ... not answered: the SYN-ACK rate limit (the client retransmits)
        self.syncookies_accepted = 0    # handshakes completed with a valid cookie (then admitted or refused)
        self.syncookies_invalid = 0     # ACKs for no connection with no valid cookie (answered with RST)
        self.half_open_evicted = 0      # flows whose SYN-ACK was never acknowledged, reset to make room
        self.token_waits = 0            # completed cookie handshakes whose service connect waited for a token
        self.suspensions = 0            # lost lines whose TCP flows were kept
        self.resumptions = 0            # ... and carried on by a new session
        self.resume_expiries = 0        # ... and reset when resume_grace ran out
        self.dropped = {}               # reason -> datagrams dropped (also in counters)
        self.connection_errors = {}     # (route label, reason) -> TCP connections that failed or ended abnormally
        self.retransmits_closed = 0     # retransmissions of the connections that are gone
        self._tcp_tally = {}            # route label -> FlowTally (folded figures)
        self._datagram_tally = {}       # (protocol, route label) -> FlowTally

    # -- configuration ------------------------------------------------------------

    @property
    def counters(self):
        return self._counters

    @property
    def mtu(self):
        return self.ip.mtu

    @property
    def unreachable_sent(self):
        return self.ip.unreachable_sent

    @property
    def icmp_rate_limited(self):
        return self.ip.icmp_rate_limited

    @property
    def suspended(self):
        """The link was lost and the TCP flows wait for the client (see suspend)."""
        return self._suspended_at is not None

    @property
    def connections_active(self):
        return len(self._conns)

    @property
    def udp_flows_active(self):
        return len(self._datagram_flows)

    def service_figures(self):
        """{route label: FlowTally} of TCP flows: the folded figures plus the live connections'."""
        out = dict((label, t.copy()) for label, t in self._tcp_tally.items())
        for rec in self._conns.values():
            label = rec.route.label
            fig = out.get(label)
            if fig is None:
                fig = out[label] = FlowTally()
            if not rec.accepted:
                fig.connecting += 1
                continue
            conn = rec.conn
            if conn.state != TcpState.TIME_WAIT:
                fig.active += 1
            fig.bytes_in += conn.bytes_in
            fig.bytes_out += conn.bytes_out
        return out

    def datagram_figures(self):
        """{(protocol, route label): FlowTally} of UDP and ping flows, the live ones included."""
        out = dict((key, t.copy()) for key, t in self._datagram_tally.items())
        for rec in self._datagram_flows.values():
            key = (rec.key.protocol, rec.route.label)
            fig = out.get(key)
            if fig is None:
                fig = out[key] = FlowTally()
            fig.active += 1
            fig.bytes_in += rec.bytes_in
            fig.bytes_out += rec.bytes_out
        return out

    def tcp_retransmissions(self):
        """Segments retransmitted by every connection, the closed ones included."""
        return self.retransmits_closed + sum(rec.conn.retransmits for rec in self._conns.values())

    @property
    def half_open(self):
        """TCP flows waiting for their service or proxy connect."""
        return self.policy.half_open

    @property
    def mss_limit(self):
        return self.mtu - IP_TCP_HEADER

    def new_connection_params(self):
        """(TcpConfig, mss_limit) for a new connection.

        A configured ``tcp.mss`` is used both ways (announced, and the largest segment we send).  Otherwise
        the announced MSS -- the size of every segment the client will send us on this connection -- is
        sized to the line (``line_mss``), while our own segments may be as large as the link allows and
        are sized dynamically (``segment_limit``, see _fit_to_line).  On a slow line TCP timestamps are
        not offered: 12 bytes more per segment buy nothing there (RFC 7323 PAWS protects against
        wrapped sequence numbers at gigabit speeds; Karn's algorithm times segments well enough).  Nor
        are they offered while the link compresses TCP/IP headers (``set_header_compression``).
        """
        tcp = self.config.tcp
        limit = self.mss_limit
        rate = self.line_rate
        if tcp.mss:
            limit = max(1, min(tcp.mss, limit))
            announce = tcp.mss
        else:
            announce = line_mss(rate, limit)
        # RFC 1144 section 3.2.3: "any change in [the TCP options] ... the packet is sent uncompressed";
        # a timestamp changes with every segment.  The option is used only if both SYNs carry it (RFC 7323
        # section 3.2), so leaving it out of our SYN-ACK turns it off for the connection both ways.
        timestamps = tcp.timestamps and not (rate and rate < SLOW_LINE) and not self.header_compression
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

    @staticmethod
    def _line_fit(rate, interactive, lossy=False):
        """(segment limit or None, window bytes or None, window segments at least) for the line's state."""
        if not rate:
            return None, None, 0
        short = max(MIN_LINE_MSS, int(rate * SEGMENT_TIME) - IP_TCP_HEADER)
        if interactive:
            return short, rate * INTERACTIVE_WINDOW_TIME, MIN_WINDOW_SEGMENTS
        return short if lossy else None, rate * WINDOW_TIME, BULK_WINDOW_SEGMENTS

    def _lost_segment(self, now):
        """A connection made a fast retransmit (a frame of ours lost on a line that carries: a timeout may be a
        silent line instead): on a slow line, bulk segments are cut short for LOSSY_HOLD (see "Fitting a slow
        line")."""
        rate = self.line_rate
        if not rate or rate >= SLOW_LINE:
            return
        was = now <= self._lossy_until
        self._lossy_until = now + LOSSY_HOLD
        if not was:
            self._fit_to_line(now)

    @staticmethod
    def _rcv_limit(win, segments, mss):
        if win is None:
            return None
        # Whole segments: a window with a remainder makes the client send a runt to fill it.
        return mss * max(segments, int(win) // mss)

    def _fit_to_line(self, now, new=None):
        """Size every connection's segments and receive window to the line (see "Fitting a slow line").

        ``new``: a connection just opened.  While the line's state is the one the others were last fitted to,
        only it is fitted: opening a connection costs the same with one or a thousand open.
        """
        rate = self.line_rate
        interactive = bool(rate) and now <= self._interactive_until
        lossy = bool(rate) and rate < SLOW_LINE and now <= self._lossy_until
        fitted = (rate, interactive, lossy)
        recs = (new,) if new is not None and fitted == self._fitted else self._conns.values()
        self._fitted = fitted
        seg, win, segments = self._line_fit(rate, interactive, lossy)
        for rec in recs:
            conn = rec.conn
            rcv_limit = self._rcv_limit(win, segments, conn.our_mss)
            segment_limit = seg if seg is not None and seg < conn.send_mss else None
            ack_every = 1 if interactive and rate < SLOW_LINE else 2
            if (conn.rcv_limit, conn.segment_limit, conn.ack_every) != (rcv_limit, segment_limit, ack_every):
                conn.rcv_limit = rcv_limit
                conn.segment_limit = segment_limit
                conn.ack_every = ack_every
                self._ready.add(rec.key)    # a window update, larger segments or an ACK may be due
            conn.rto_slack = self._rto_slack(conn, rate)
            conn.reack_ms = self._reack_ms(conn, rate)
            # A serial line neither reorders nor duplicates: the first duplicate ACK is a loss (RFC 8985 2.2 on
            # why a fixed three is only a guess at the path's reordering).
            conn.dup_thresh = 1 if rate and rate < SLOW_LINE else DUP_THRESH

    @staticmethod
    def _reack_ms(conn, rate):
        """On a slow line: how long a streaming client may stay silent before our latest ACK goes again
        (REACK_SEGMENTS of its segments' line time; see "Fitting a slow line")."""
        if not rate or rate >= SLOW_LINE:
            return None
        return max(MIN_REACK_MS, REACK_SEGMENTS * 1000 * (conn.our_mss + IP_TCP_HEADER) // int(rate))

    def _rto_slack(self, conn, rate):
        """What a slow line's queueing may add to one round trip (ms), the least RTO variation term.

        Round trips on a serial line hardly vary, so RFC 6298's 4 * RTTVAR shrinks towards nothing, and the
        first estimate comes from the handshake, whose segments are small; but a data segment holds the line
        for its own length, may wait behind the tail of the frame before it, and the client's ACK behind one
        of the client's own segments and its delayed-ACK timer: the line time of one of our largest segments
        and one of the client's, plus the minimum RTO (Linux's least variation term).
        """
        if not rate or rate >= SLOW_LINE:
            return 0
        ours = (conn.segment_limit or conn.send_mss) + IP_TCP_HEADER
        theirs = conn.our_mss + IP_TCP_HEADER
        return self.config.tcp.min_rto_ms + 1000 * (ours + theirs) // int(rate)

    def set_line_rate(self, rate):
        """The serial line's measured drain rate in bytes/s (None: unknown)."""
        self.line_rate = rate
        self._fit_to_line(self._now)
        per_second = SYNACK_DEFAULT_RATE
        if rate:
            per_second = max(SYNACK_MIN_RATE, int(rate * SYNACK_LINE_SHARE) // SYNACK_WIRE)
        if per_second != self._synack_bucket.rate:
            self._synack_limits(per_second)

    def _synack_limits(self, per_second):
        """Cookie SYN-ACKs: ``per_second`` with bursts of a tenth of that, and a quarter more for retransmissions.

        The retransmissions' budget holds a whole second of ``per_second``: a client that opened many
        connections at once retransmits their SYNs at once too (Linux: 1, 3, 7, 15 s ... after the first),
        and a flood from changing ports hardly ever repeats a SYN, so only real clients spend it.
        """
        self._synack_bucket = TokenBucket(per_second, max(SYNACK_MIN_BURST, per_second // 10), self._now)
        retries = max(1, per_second // SYNACK_RETRY_SHARE)
        self._retry_bucket = TokenBucket(retries, max(SYNACK_MIN_BURST, per_second), self._now)

    def take_delay_signal(self):
        """The smallest RTT (ms) the connections measured on small segments since the last call, or None
        (see "The delay signal")."""
        rtt, self._delay_min = self._delay_min, None
        return rtt

    def set_header_compression(self, on):
        """The link compresses TCP/IP headers (Van Jacobson, RFC 1144) in at least one direction, or not:
        connections opened from now on are negotiated without TCP timestamps while it does."""
        self.header_compression = bool(on)

    def set_mtu(self, mtu):
        """The session MTU (the smaller of ours and the peer's MRU); new connections size their MSS from it."""
        self.ip.mtu = min(mtu, self.config.mtu) if self.config.mtu else mtu

    # -- helpers ------------------------------------------------------------------

    def _drop(self, reason, detail=""):
        self._counters[reason] = self._counters.get(reason, 0) + 1
        self.dropped[reason] = self.dropped.get(reason, 0) + 1
        if self._log_bucket.allow(self._now):
            if self._log_suppressed:
                log.debug("(%d similar messages suppressed)", self._log_suppressed)
                self._log_suppressed = 0
            log.debug("dropped packet: %s%s%s", reason, ": " if detail else "", detail)
        else:
            self._log_suppressed += 1

    def _count(self, name):
        self._counters[name] = self._counters.get(name, 0) + 1

    def _count_refusal(self, protocol, cause):
        self.flows_refused[cause] = self.flows_refused.get(cause, 0) + 1
        if protocol == PROTO_TCP:
            self.tcp_refused[cause] = self.tcp_refused.get(cause, 0) + 1

    def _conn_error(self, rec, reason):
        """Count a failed or abnormally ended connection once, under its first reason."""
        if rec.error is None:
            rec.error = reason
            key = (rec.route.label, reason)
            self.connection_errors[key] = self.connection_errors.get(key, 0) + 1

    @staticmethod
    def _tally(table, key):
        tally = table.get(key)
        if tally is None:
            tally = table[key] = FlowTally()
        return tally

    def _flow_log(self, kind, rec, now, reason="", cause="", bytes_in=0, bytes_out=0):
        self._events.append(FlowLog(kind, rec.flow_id, rec.key, rec.route, bytes_in, bytes_out,
                                    now - rec.opened_at, reason, cause))

    def _queue_control(self, packet):
        """Queue a packet to go ahead of everything; False if it was dropped (none, or the queue is full)."""
        if packet is None:
            return False
        if len(self._control) >= MAX_CONTROL_QUEUE:
            self._drop("out_control_queue_full")
            return False
        self._control.append(packet)
        return True

    def _queue_all(self, packets):
        for packet in packets:
            self._queue_control(packet)

    def _unreachable(self, ip, code, src=None):
        packet = self.ip.unreachable(ip, code, self._now, src)
        self._queue_control(packet)
        return packet is not None

    def _new_id(self):
        flow_id = self._next_id
        self._next_id += 1
        return flow_id

    def _refuse(self, key, route, ip, seg=None):
        """Show the client a refused flow as the route's outcome says, and log it (rate-limited)."""
        if key.protocol == PROTO_TCP:
            self.connections_refused += 1
        cause = route.cause or F.CAUSE_POLICY
        self._count_refusal(key.protocol, cause)
        # The runtime logs it (at a limited rate) and writes the audit record.
        self._events.append(FlowLog(ev.REFUSED, 0, key, route, reason=route.reason, cause=cause))
        if route.outcome == refusal.RESET and seg is not None:
            self._reset(seg, ip)
        else:
            self._unreachable(ip, _ICMP_CODE.get(route.outcome, icmp_wire.CODE_ADMIN_PROHIBITED))

    # -- input --------------------------------------------------------------------

    def receive_packet(self, packet, now):
        """One IP datagram from the link."""
        self._now = now
        self.packets_in += 1
        self.bytes_in += len(packet)
        ip = self.ip.input(packet, now)
        self.timers.schedule(_FRAG_KEY, self.ip.get_timer())
        if ip is None:
            return
        protocol = ip.protocol
        if protocol == PROTO_TCP:
            self._tcp_input(ip, now)
        elif protocol == PROTO_UDP:
            self._udp_input(ip, now)
        elif protocol == PROTO_ICMP:
            self._icmp_input(ip, now)
        elif ip.dst == self.local_ip:
            self._drop("ip_unknown_protocol", str(protocol))
            self._unreachable(ip, icmp_wire.CODE_PROTOCOL_UNREACHABLE)
        else:
            self._drop("ip_unknown_protocol", str(protocol))
            self._unreachable(ip, icmp_wire.CODE_ADMIN_PROHIBITED)

    def _icmp_input(self, ip, now):
        try:
            msg = IcmpRepr.parse(ip.payload)
        except ParseError as e:
            self._drop("icmp_" + e.reason)
            return
        if msg.type == icmp_wire.TYPE_ECHO_REQUEST:
            if ip.dst == self.local_ip:
                # RFC 1122 3.2.2.6: "Every host MUST implement an ICMP Echo server function".
                self.echo_requests += 1
                self._queue_all(self.ip.datagrams(PROTO_ICMP, icmp_policy.echo_reply(msg).emit(),
                                                  self.local_ip, self.remote_ip))
                self.echo_replies += 1
            else:
                self._ping_input(ip, msg, now)
            return
        # Destination Unreachable etc. from the client about one of our flows: TCP's own timers cope
        # (RFC 1122 4.2.3.9 lets soft errors be ignored).
        self._drop("icmp_type_%d" % msg.type)

    def _ping_input(self, ip, msg, now):
        key = FlowKey(PROTO_ICMP, ip.src, msg.echo_ident, ip.dst, 0)
        rec = self._datagram_flows.get(key)
        if rec is None:
            route = self.policy.decide(key, now)
            if not route.admitted:
                self._refuse(key, route, ip)
                return
            rec = self._new_datagram_flow(key, route, ip, now)
            self.ping_flows_opened += 1
            self._events.append(PingOpen(rec.flow_id, key, route))
            self._flow_log(ev.OPENED, rec, now)
        self._datagram_arrived(rec, ip, now, len(msg.payload), PingSend(rec.flow_id, msg.echo_seq, msg.payload))

    def _udp_input(self, ip, now):
        try:
            udp = UdpRepr.parse(ip.payload, ip.src, ip.dst)
        except ParseError as e:
            self._drop("udp_" + e.reason)
            return
        key = FlowKey(PROTO_UDP, ip.src, udp.src_port, ip.dst, udp.dst_port)
        rec = self._datagram_flows.get(key)
        if rec is None:
            route = self.policy.decide(key, now)
            if not route.admitted:
                if route.outcome == refusal.PORT_UNREACHABLE:
                    # RFC 1122 4.1.3.1: a datagram for a port nobody listens on SHOULD get Port Unreachable.
                    self._drop("udp_no_port", str(udp.dst_port))
                self._refuse(key, route, ip)
                return
            if route.kind == F.DNS:
                self._dns_query(key, udp.payload, now)
                return
            rec = self._new_datagram_flow(key, route, ip, now)
            self.udp_flows_opened += 1
            self._events.append(UdpOpen(rec.flow_id, key, route))
            self._flow_log(ev.OPENED, rec, now)
        self._datagram_arrived(rec, ip, now, len(udp.payload), UdpSend(rec.flow_id, udp.payload))

    def _datagram_arrived(self, rec, ip, now, size, event):
        """A datagram of a UDP or ping flow: account for it and hand ``event`` (its send) to the runtime."""
        rec.last_ip = ip
        rec.last_activity = now
        rec.bytes_in += size
        self._events.append(event)
        self._arm_datagrams(rec)

    def _tcp_input(self, ip, now):
        try:
            seg = tcp_wire.TcpRepr.parse(ip.payload, ip.src, ip.dst)
        except ParseError as e:
            self._drop("tcp_" + e.reason)
            return
        key = FlowKey(PROTO_TCP, ip.src, seg.src_port, ip.dst, seg.dst_port)
        rec = self._conns.get(key)
        flags = seg.flags
        is_syn = (flags & (tcp_wire.SYN | tcp_wire.ACK | tcp_wire.RST)) == tcp_wire.SYN
        if rec is not None and is_syn:
            if not rec.accepted:
                # The client retransmitted its SYN while the service socket is still connecting.
                self._count("tcp_syn_while_pending")
                return
            if rec.conn.state == TcpState.TIME_WAIT and rec.conn.syn_may_reuse(seg):
                # RFC 9293 3.10.7.4 / RFC 6191: a new SYN for a 4-tuple in TIME-WAIT may open a new incarnation.
                self._finish(rec, now, "fin")
                rec = None
        if rec is not None:
            if seg.seg_len:
                rec.last_activity = now
                # A short segment right after full-sized ones is the tail of a bulk write the client's TCP cut
                # in two where its buffers end (Linux sends 579 + 2 of a 581-byte MSS), not a keystroke.
                if 0 < len(seg.payload) <= SMALL_PAYLOAD and not rec.conn.streaming:
                    self._interactive(rec, now)
                elif len(seg.payload) > SMALL_PAYLOAD:
                    self._bulk_in_at = now
            rec.conn.receive(seg, now)
            self._after(rec, now)
            return
        if is_syn:
            self._admit(key, ip, seg, now)
            return
        if flags & (tcp_wire.SYN | tcp_wire.ACK | tcp_wire.RST) == tcp_wire.ACK and self.cookies.active(now):
            if self._cookie_ack(key, ip, seg, now):
                return
        self._drop("tcp_no_connection")
        self._reset(seg, ip)

    def _reset(self, seg, ip):
        """The reset for a segment that matches no connection, from the address it was sent to."""
        rst = rst_for(seg)
        if rst is not None:
            self.rst_sent += 1
            self._queue_control(self.ip.datagram(PROTO_TCP, rst.emit(ip.dst, ip.src), ip.dst, ip.src))

    # -- admission ------------------------------------------------------------------

    def _admit(self, key, ip, seg, now):
        """A SYN for no connection: the policy's Route, then ServiceConnect -- or a SYN cookie, or the refusal."""
        periods = self.policy.cookie_periods
        route = self.policy.decide(key, now)
        if route.deferred:
            if self.policy.cookie_periods != periods:
                log.info("answering new SYNs with SYN cookies: %s", route.reason)
                self._events.append(FlowLog(ev.COOKIES, 0, key, route, reason=route.reason, cause=route.cause))
            self._send_cookie(key, ip, seg, now)
            return
        if not route.admitted:
            self._refuse(key, route, ip, seg)
            return
        iss = self._isn(ip.dst, seg.dst_port, ip.src, seg.src_port, now)
        tcp_config, mss_limit = self.new_connection_params()
        conn = TcpConnection(seg, ip.dst, ip.src, tcp_config, iss, now, mss_limit)
        self._open(key, route, conn, ip, now)

    def _open(self, key, route, conn, syn_ip, now, connect=True):
        """A new flow; its ServiceConnect goes out now, or (``connect=False``) when a token is free."""
        rec = _Conn(self._new_id(), key, route, conn, syn_ip, now)
        self._conns[key] = rec
        self._by_id[rec.flow_id] = rec
        if connect:
            self._events.append(ServiceConnect(rec.flow_id, key, route))
        else:
            rec.queued = True
            self.token_waits += 1
            self._token_wait.append(rec)
            self._arm_tokens(now)
        self._fit_to_line(now, new=rec)
        return rec

    def _arm_tokens(self, now):
        if self._token_wait:
            self.timers.schedule(_TOKEN_KEY, now + max(1, self.policy.token_wait(now)))
        else:
            self.timers.cancel(_TOKEN_KEY)

    def _hand_out_tokens(self, now):
        """The flows waiting for a token connect, oldest first, as far as the bucket allows."""
        wait = self._token_wait
        while wait:
            rec = wait[0]
            if rec.gone:
                wait.popleft()
                continue
            if not self.policy.take_token(now):
                break
            wait.popleft()
            rec.queued = False
            self._events.append(ServiceConnect(rec.flow_id, rec.key, rec.route))
        self._arm_tokens(now)

    # -- SYN cookies (RFC 4987 section 3.6; the encoding is net/tcp/syncookie.py's) ----------------

    def _cookie_window(self, tcp_config, mss_limit):
        """The window of a cookie's SYN-ACK: what a new connection would advertise on the line as it is fitted."""
        _, win, segments = self._line_fit(*self._fitted)
        return initial_window(tcp_config, self._rcv_limit(win, segments, our_mss(tcp_config, mss_limit)))

    def _send_cookie(self, key, ip, seg, now):
        """Answer a SYN statelessly: a SYN-ACK whose ISS is the cookie, within the SYN-ACK rate limit.

        The options are the ones a connection would answer with, except that without timestamps neither
        window scaling nor SACK is offered: only timestamps have room to bring them back (syncookie.py).
        """
        if not self._synack_bucket.allow(now):
            # The limit leaves this SYN out.  If the client sends it again it is probably real (a flood
            # hardly ever repeats a port and ISN): answer it then, from a budget of its own.
            unanswered = self._unanswered
            if unanswered is None:
                unanswered = self._unanswered = UnansweredSyns(self.rng)
            if not (unanswered.again(key, seg.seq) and self._retry_bucket.allow(now)):
                self.syncookies_limited += 1
                return
        tcp_config, mss_limit = self.new_connection_params()
        iss, _ = self.cookies.make(key, seg.seq, seg.mss, now)
        wscale = None
        sack = False
        timestamp = None
        if seg.timestamp is not None and tcp_config.timestamps:
            if seg.wscale is not None and tcp_config.window_scaling:
                wscale = seg.wscale
            sack = bool(seg.sack_permitted) and tcp_config.sack
            timestamp = (ts_encode((now + iss) & 0xFFFFFFFF, wscale, sack), seg.timestamp[0])
        synack = tcp_wire.TcpRepr(
            seg.dst_port, seg.src_port, iss, seq_add(seg.seq, 1), tcp_wire.SYN | tcp_wire.ACK,
            self._cookie_window(tcp_config, mss_limit), mss=our_mss(tcp_config, mss_limit),
            wscale=window_shift(tcp_config.rcvbuf) if wscale is not None else None, sack_permitted=sack,
            timestamp=timestamp)
        if self._queue_control(self.ip.datagram(PROTO_TCP, synack.emit(ip.dst, ip.src), ip.dst, ip.src)):
            self.syncookies_sent += 1

    def _evict_unanswered(self, key, now):
        """Make room for a client that completed its handshake: reset the oldest flow that has not.

        Only a flow whose SYN-ACK went unanswered for a whole retransmission timeout qualifies (a flood's
        SYNs that came in before the cookies took over hold their service sockets until the SYN-ACK gives
        up; a real client answers within a round trip); one of the same service first.  Connections that
        completed their handshake are never evicted.
        """
        label = self.policy.label(key)
        oldest = same = None
        for rec in self._conns.values():
            conn = rec.conn
            if rec.accepted and conn.state is TcpState.SYN_RECEIVED and conn.retransmits:
                if oldest is None or rec.opened_at < oldest.opened_at:
                    oldest = rec
                if rec.route.label == label and (same is None or rec.opened_at < same.opened_at):
                    same = rec
        victim = same or oldest
        if victim is None:
            return False
        self.half_open_evicted += 1
        victim.reason = "evicted"
        victim.conn.abort(now)
        self._after(victim, now)
        if not victim.gone:
            self._finish(victim, now)
        return True

    def _cookie_ack(self, key, ip, seg, now):
        """An ACK for no connection: if it returns a valid cookie, the flow is decided now.  False: no cookie.

        Admitted, the connection is created in the state after the handshake (``TcpConnection.from_cookie``)
        and told the ACK, with any data it carries, which waits in the receive window until the service
        has connected.  A service that turns out to be down then gets the client an RST after the handshake.
        """
        iss = seq_add(seg.ack, -1)
        irs = seq_add(seg.seq, -1)
        mss = self.cookies.check(key, irs, iss, now)
        if mss is None:
            self.syncookies_invalid += 1
            return False
        self.syncookies_accepted += 1
        route = self.policy.decide(key, now, handshake=True)
        if route.cause == F.CAUSE_LIMIT and self._evict_unanswered(key, now):
            route = self.policy.decide(key, now, handshake=True)
        if not route.admitted:
            self._refuse(key, route, ip, seg)
            return True
        options = ts_decode(seg.timestamp[1]) if seg.timestamp is not None else None
        tcp_config, mss_limit = self.new_connection_params()
        if options is not None:
            wscale, sack = options
            timestamp = (seg.timestamp[0], 0)
            if not tcp_config.timestamps:
                tcp_config = replace(tcp_config, timestamps=True)   # the SYN-ACK had them (the line changed)
        else:
            wscale, sack, timestamp = None, False, None
        syn = tcp_wire.TcpRepr(seg.src_port, seg.dst_port, irs, 0, tcp_wire.SYN, seg.window, mss=mss,
                               wscale=wscale, sack_permitted=sack, timestamp=timestamp)
        conn = TcpConnection.from_cookie(syn, ip.dst, ip.src, tcp_config, iss, now, mss_limit,
                                         self._cookie_window(tcp_config, mss_limit))
        # Not refused for the rate: the client has seen the connection open.  Its service connect waits for a
        # token instead, behind any that wait already.
        connect = not self._token_wait and self.policy.take_token(now)
        rec = self._open(key, route, conn, None, now, connect)
        rec.cookie = True
        if seg.seg_len:
            rec.last_activity = now
        conn.receive(seg, now)
        self._after(rec, now)
        return True

    def _release(self, rec):
        if rec.counted:
            rec.counted = False
            self.policy.release(rec.key, rec.route)

    def _settle(self, rec):
        """The flow's service connect is over (or the flow is): it no longer counts as half-open."""
        if rec.waiting:
            rec.waiting = False
            self.policy.connect_done()

    # -- connection events ----------------------------------------------------------

    def _describe(self, rec):
        return "%s:%d -> %s" % (rec.client[0], rec.client[1], rec.route.describe())

    def _after(self, rec, now):
        """Turn the connection's events into service events; re-arm its timer.  True if it had events."""
        conn = rec.conn
        had = False
        for _ in range(_MAX_EVENT_ROUNDS):
            events = conn.take_events()
            if not events:
                break
            had = True
            for event in events:
                if rec.gone:
                    return had
                self._on_event(rec, event, now)
        if conn.fast_retransmits != rec.fast_seen:
            rec.fast_seen = conn.fast_retransmits
            self._lost_frame = True
            self._lost_segment(now)
        sample = conn.rtt_sample
        if sample is not None:
            conn.rtt_sample = None
            rtt, size = sample
            # A small segment's round trip, which no bulk from the client shared (see "The delay signal").
            clear = self._bulk_in_at is None or self._bulk_in_at < now - rtt
            if size is not None and size <= SMALL_PAYLOAD and clear and (
                    self._delay_min is None or rtt < self._delay_min):
                self._delay_min = rtt
        if not rec.gone:
            if rec.counted and conn.state == TcpState.TIME_WAIT:
                self._release(rec)      # TIME_WAIT holds no service socket: it does not count against limits
            self._arm(rec)
            self._ready.add(rec.key)    # whatever happened to it may have made segments due
        return had

    def _on_event(self, rec, event, now):
        conn_id = rec.conn_id
        if isinstance(event, tcp_events.Readable):
            if not rec.accepted:
                return          # a cookie's connection: the data waits in the window for the service socket
            data = rec.conn.read()
            if data:
                self._events.append(ServiceSend(conn_id, data))
        elif isinstance(event, tcp_events.Writable):
            self._grant(rec, now)
        elif isinstance(event, tcp_events.Established):
            rec.established = True
            if rec.accepted:
                self._opened(rec, now)
        elif isinstance(event, tcp_events.PeerFin):
            if not rec.peer_fin:
                rec.peer_fin = True
                self._events.append(ServiceShutdown(conn_id))
        elif isinstance(event, (tcp_events.Reset, tcp_events.TimedOut)):
            reason = "reset" if isinstance(event, tcp_events.Reset) else "timeout"
            rec.reason = rec.reason or reason
            self._conn_error(rec, reason)
            self._close_service(rec, reason)
        elif isinstance(event, tcp_events.Closed):
            self._finish(rec, now)

    def _opened(self, rec, now):
        """Handshake complete and service connected (in either order)."""
        self._flow_log(ev.OPENED, rec, now)

    def _close_service(self, rec, reason):
        if not rec.service_closed:
            rec.service_closed = True
            self._events.append(ServiceClose(rec.conn_id, reason))

    def _grant(self, rec, now):
        """Grant read credit up to the connection's free send space (never beyond it)."""
        if not rec.accepted or rec.gone:
            return
        credit = new_credit(rec, now)
        if credit:
            self._events.append(ServiceReadCredit(rec.conn_id, credit))

    def _arm(self, rec):
        deadline = rec.conn.get_timer()
        idle = self.config.tcp.idle_timeout
        if idle and rec.accepted and self._suspended_at is None:
            idle_deadline = rec.last_activity + idle * 1000
            if deadline is None or idle_deadline < deadline:
                deadline = idle_deadline
        self.timers.schedule(rec.conn_id, deadline)

    def _wrap(self, rec, seg):
        """A segment of ``rec`` as a datagram from the flow's server address to the client."""
        key = rec.key
        return self.ip.datagram(PROTO_TCP, seg.emit(key.server_addr, key.client_addr), key.server_addr,
                                key.client_addr)

    def _forget(self, rec):
        rec.gone = True
        if isinstance(rec, _Conn) and not rec.accepted:
            self.policy.abandoned(rec.key, rec.route)     # a breaker trial it held and did not make is free
        self._release(rec)
        # The metrics' totals keep what the flow counted.
        if isinstance(rec, _Conn):
            conn = rec.conn
            self.retransmits_closed += conn.retransmits
            if conn.bytes_in or conn.bytes_out:
                tally = self._tally(self._tcp_tally, rec.route.label)
                tally.bytes_in += conn.bytes_in
                tally.bytes_out += conn.bytes_out
        else:
            tally = self._tally(self._datagram_tally, (rec.key.protocol, rec.route.label))
            tally.bytes_in += rec.bytes_in
            tally.bytes_out += rec.bytes_out
        self._settle(rec)
        self.timers.cancel(rec.flow_id)
        del self._by_id[rec.flow_id]

    def _finish(self, rec, now, reason=None, quiet=False):
        """The connection is over: forget it, close the service socket if need be, log one line.

        ``quiet``: its last words (an RST) are not sent, because the client was answered otherwise (an ICMP
        error for a failed connect).
        """
        if rec.gone:
            return
        self._forget(rec)
        del self._conns[rec.key]
        self._ready.discard(rec.key)
        conn = rec.conn
        # The connection's last words (the RST of refuse/abort/give-up) go out with the control packets.
        for seg in conn.take_segments(0, now):
            if quiet:
                continue
            if seg.flags & tcp_wire.RST:
                self.rst_sent += 1
            self._queue_control(self._wrap(rec, seg))
        if not rec.accepted:
            self.connections_refused += 1
            # Through a proxy the proxy answered (or could not be reached); directly the service is down; or
            # the client gave up while its service connect waited for a token.
            if rec.queued:
                cause = F.CAUSE_RATE
            else:
                cause = F.CAUSE_SERVICE if rec.route.via == F.VIA_DIRECT else F.CAUSE_PROXY
            self._count_refusal(PROTO_TCP, cause)
            self._flow_log(ev.REFUSED, rec, now, rec.reason or reason or "closed", cause)
            return
        clean = rec.peer_fin and rec.eof
        reason = rec.reason or reason or ("fin" if clean else "closed")
        if not clean:
            self._close_service(rec, reason)
        self._log_closed(rec, now, reason)

    def _log_closed(self, rec, now, reason):
        self.connections_closed += 1
        conn = rec.conn
        self._flow_log(ev.CLOSED, rec, now, reason, bytes_in=conn.bytes_in, bytes_out=conn.bytes_out)

    # -- service threads' reports -----------------------------------------------------

    def _rec(self, flow_id, cls, stale):
        """The live flow ``flow_id`` of type ``cls``, or None (counted as ``stale``: a report for a gone flow)."""
        rec = self._by_id.get(flow_id)
        if rec is None or not isinstance(rec, cls):
            self._count(stale)
            return None
        return rec

    def _service_rec(self, conn_id, what):
        return self._rec(conn_id, _Conn, "service_stale_" + what)

    def service_connected(self, conn_id, now, target=0, failures=()):
        """The connector reached ``route.targets[target]``; ``failures``: ``((index, reason), ...)`` of the
        targets that failed before it."""
        self._now = now
        rec = self._service_rec(conn_id, "connected")
        if rec is None or rec.accepted:
            return
        self.policy.connect_result(rec.key, rec.route, target, failures, now)
        if 0 <= target < len(rec.route.targets):
            rec.route = rec.route.connected_to(target)
        rec.accepted = True
        rec.syn_ip = None
        rec.last_activity = now
        self._settle(rec)
        self.connections_opened += 1
        tally = self._tally(self._tcp_tally, rec.route.label)
        tally.opened += 1
        tally.connect.observe(now - rec.opened_at)      # from the client's SYN to the service socket connected
        if rec.cookie:
            # The handshake is long done: say so, and hand the service what the client sent meanwhile.
            if rec.established:
                self._opened(rec, now)
            data = rec.conn.read()
            if data:
                self._events.append(ServiceSend(conn_id, data))
        else:
            rec.conn.accept(now)
        self._grant(rec, now)
        self._after(rec, now)

    def service_failed(self, conn_id, reason, now, outcome=refusal.RESET, failures=()):
        """The connector could not reach any target: RST|ACK, or the ICMP error ``outcome`` names.
        ``failures``: ``((index, reason), ...)``, one per target tried."""
        self._now = now
        rec = self._service_rec(conn_id, "failed")
        if rec is None or rec.accepted:
            return
        self.policy.connect_result(rec.key, rec.route, None, failures, now)
        rec.reason = reason
        self._conn_error(rec, "connect_" + (outcome or refusal.RESET))
        code = _ICMP_CODE.get(outcome)
        if code is not None and rec.syn_ip is not None:
            self._unreachable(rec.syn_ip, code)
            rec.conn.refuse(now)
            self._finish(rec, now, quiet=True)
            return
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
            self._count("service_data_unexpected")
            return
        rec.received += len(data)
        rec.last_activity = now
        if rec.received > rec.granted:
            self._count("service_credit_overrun")
        send_or_queue(rec, data, now)
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
        """The service socket took ``nbytes``.  True when that gave the stack something to send or to report
        (a window update); False: nothing changed that a flush would find."""
        self._now = now
        rec = self._service_rec(conn_id, "written")
        if rec is None or nbytes <= 0:
            return False
        due = rec.conn.consumed(nbytes, now)
        return self._after(rec, now) or due

    def service_error(self, conn_id, reason, now):
        self._now = now
        rec = self._service_rec(conn_id, "error")
        if rec is None:
            return
        rec.reason = "service error: %s" % reason
        if not rec.accepted:
            self.service_failed(conn_id, reason, now)
            return
        self._conn_error(rec, "service_error")
        rec.conn.abort(now)
        self._after(rec, now)
        if not rec.gone:
            self._finish(rec, now)

    # -- UDP and ping flows --------------------------------------------------------------

    def _new_datagram_flow(self, key, route, ip, now):
        rec = _Datagrams(self._new_id(), key, route, ip, now)
        self._tally(self._datagram_tally, (key.protocol, route.label)).opened += 1
        self._datagram_flows[key] = rec
        self._by_id[rec.flow_id] = rec
        return rec

    def _arm_datagrams(self, rec):
        self.timers.schedule(rec.flow_id, rec.last_activity + self.config.udp_timeout * 1000)

    def _datagram_rec(self, flow_id, what):
        return self._rec(flow_id, _Datagrams, "flow_stale_" + what)

    def _close_datagrams(self, rec, reason):
        if rec.gone:
            return
        self._forget(rec)
        del self._datagram_flows[rec.key]
        if rec.key.protocol == PROTO_UDP:
            self._events.append(UdpClose(rec.flow_id, reason))
        else:
            self._events.append(PingClose(rec.flow_id, reason))
        self._flow_log(ev.CLOSED, rec, self._now, reason, bytes_in=rec.bytes_in, bytes_out=rec.bytes_out)

    def udp_data(self, flow_id, payload, now):
        """A datagram the flow's socket received: to the client, from the flow's server address and port."""
        self._now = now
        rec = self._datagram_rec(flow_id, "udp_data")
        if rec is None:
            return
        key = rec.key
        rec.last_activity = now
        rec.bytes_out += len(payload)
        self._queue_all(self.ip.datagrams(
            PROTO_UDP, UdpRepr(key.server_port, key.client_port, payload).emit(key.server_addr, key.client_addr),
            key.server_addr, key.client_addr))
        self._arm_datagrams(rec)

    def udp_error(self, flow_id, outcome, now):
        """The flow's socket saw an ICMP error (port unreachable...): relay it, from the flow's server address."""
        self._now = now
        rec = self._datagram_rec(flow_id, "udp_error")
        if rec is None:
            return
        code = _ICMP_CODE.get(outcome, icmp_wire.CODE_PORT_UNREACHABLE)
        src = rec.key.server_addr if outcome == refusal.PORT_UNREACHABLE else None
        self._unreachable(rec.last_ip, code, src)

    def ping_reply(self, flow_id, seq, payload, now):
        """An echo reply for a ping flow: to the client, from the pinged address, with the client's identifier."""
        self._now = now
        rec = self._datagram_rec(flow_id, "ping_reply")
        if rec is None:
            return
        key = rec.key
        rec.last_activity = now
        rec.bytes_out += len(payload)
        reply = IcmpRepr.echo(key.client_port, seq, payload, reply=True)
        self._queue_all(self.ip.datagrams(PROTO_ICMP, reply.emit(), key.server_addr, key.client_addr))
        self._arm_datagrams(rec)

    def flow_failed(self, flow_id, reason, outcome, now):
        """A UDP or ping flow cannot be served (no socket could be had): tell the client, close the flow."""
        self._now = now
        rec = self._datagram_rec(flow_id, "failed")
        if rec is None:
            return
        self._count_refusal(rec.key.protocol, F.CAUSE_SERVICE)
        self._flow_log(ev.REFUSED, rec, now, reason, F.CAUSE_SERVICE)
        self._unreachable(rec.last_ip, _ICMP_CODE.get(outcome, icmp_wire.CODE_ADMIN_PROHIBITED))
        self._close_datagrams(rec, reason)

    # -- DNS forwarder ---------------------------------------------------------------------

    def _dns_query(self, key, payload, now):
        self.dns.query((key.client_addr, key.client_port), payload, now)
        self._dns_flush()

    def dns_answer(self, payload, now):
        """An upstream server's answer (from the runtime's relay)."""
        self._now = now
        if self.dns is not None:
            self.dns.answer(payload, now)
            self._dns_flush()

    def dns_failed(self, upstream_id, now):
        self._now = now
        if self.dns is not None:
            self.dns.failed(upstream_id, now)
            self._dns_flush()

    def _dns_flush(self):
        dns = self.dns
        for upstream_id, payload in dns.take_queries():
            self._events.append(DnsQuery(upstream_id, payload))
        for (client_addr, client_port), payload in dns.take_replies():
            self._queue_all(self.ip.datagrams(
                PROTO_UDP, UdpRepr(53, client_port, payload).emit(self.local_ip, client_addr),
                self.local_ip, client_addr))
        self.timers.schedule(_DNS_KEY, dns.get_timer())

    # -- timers ------------------------------------------------------------------------

    def get_timer(self):
        return self.timers.next_deadline()

    def handle_timer(self, now):
        self._now = now
        for key in self.timers.pop_due(now):
            if key == _FRAG_KEY:
                self._queue_all(self.ip.handle_timer(now))
                self.timers.schedule(_FRAG_KEY, self.ip.get_timer())
                continue
            if key == _DNS_KEY:
                self.dns.handle_timer(now)
                self._dns_flush()
                continue
            if key == _TOKEN_KEY:
                self._hand_out_tokens(now)
                continue
            if key == _RESUME_KEY:
                self.resume_expiries += 1
                grace = self.config.resume_grace
                log.info("no session within %d s of the lost line: closing %d TCP connections", grace,
                         len(self._conns))
                self.reset(now, "link down, not resumed within %d s" % grace)
                continue
            rec = self._by_id.get(key)
            if rec is None:
                continue
            if isinstance(rec, _Datagrams):
                if now >= rec.last_activity + self.config.udp_timeout * 1000:
                    self._close_datagrams(rec, "idle")
                else:
                    self._arm_datagrams(rec)
                continue
            idle = self.config.tcp.idle_timeout
            if idle and rec.accepted and self._suspended_at is None and now >= rec.last_activity + idle * 1000:
                rec.reason = "idle"
                self._conn_error(rec, "idle")
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

    def take_packets(self, budget, allow_one_over=False):
        """[(urgent, datagram)]: control and small packets always; bulk within ``budget`` bytes (< 0: all).

        ``allow_one_over``: with a positive budget the first bulk datagram may exceed it -- a bound on the
        line's queue smaller than one segment must still let data through.
        """
        if self._suspended_at is not None:
            self._control.clear()
            return []
        urgent = []
        bulk = []
        while self._control:
            urgent.append(self._control.popleft())
        if self._conns:
            if (self._fitted[1] and self._now > self._interactive_until) or \
                    (self._fitted[2] and self._now > self._lossy_until):
                self._fit_to_line(self._now)       # interactive traffic or losses have gone: bulk may grow again
            self._take_tcp(budget, urgent, bulk, allow_one_over)
        out = [(True, p) for p in urgent]
        out.extend((False, p) for p in bulk)
        self.packets_out += len(out)
        for _, p in out:
            self.bytes_out += len(p)
        return out

    @property
    def wants_room(self):
        """Some connection has data, a FIN or a retransmission waiting to be sent (``wants_budget``): more room
        on the line may let it go.  False: the last ``take_packets`` held nothing back for want of budget, so
        the line draining brings nothing new to send."""
        conns = self._conns
        for key in self._ready:
            rec = conns.get(key)
            if rec is not None and not rec.gone and rec.conn.wants_budget:
                return True
        return False

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
        # Only the connections something happened to since they last had nothing to send (see _after):
        # with a thousand connections open, a segment for one of them must not ask all the others.
        ready = self._ready
        if not ready:
            return
        if len(ready) == 1:
            # One connection (a handshake, a keystroke's echo): no order to keep, and no walk over the others.
            key = next(iter(ready))
            rec = self._conns.get(key)
            if rec is None:
                ready.discard(key)
                return
            order = [rec]
        else:
            order = [rec for rec in self._conns.values() if rec.key in ready]
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
                    header = IP_TCP_HEADER + (tcp_wire.TS_OPTION_LEN if conn.ts_ok else 0)
                    quantum = _segment_payload(conn)
                    if allow_one_over and remaining > 0 and not took_bulk:
                        allowance = quantum
                    else:
                        allowance = min(quantum, remaining - header)
                    if first:
                        allowance = max(allowance, SMALL_PAYLOAD)
                    elif allowance <= 0:
                        continue
                segs = conn.take_segments(allowance, now)
                if not segs and (unlimited or allowance >= _segment_payload(conn) or not conn.wants_budget):
                    # Nothing to send though there was room for a full segment, or nothing waiting for room
                    # at all: unless its events give it more, it stays quiet until an input, a service
                    # report or a timer calls _after again (or _fit_to_line changes it).
                    if not self._after(rec, now):
                        ready.discard(rec.key)
                    continue
                sent_bulk = False
                seen_bulk = rec in bulk_senders
                for seg in segs:
                    packet = self._wrap(rec, seg)
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
        changes = self.policy.health.take_changes()
        if changes:
            events.extend(changes)
        return events

    # -- reload ------------------------------------------------------------------------

    def reconfigure(self, config, now):
        """Run with ``config`` from now on (see "Reload" above); ValueError if it changes the link's values."""
        self._now = now
        old = self.config
        if (config.local_ip, config.remote_ip, config.mtu) != (old.local_ip, old.remote_ip, old.mtu):
            raise ValueError("local_ip, remote_ip and mtu need a new link; they cannot be reconfigured")
        self.config = config
        self.policy = Policy(config, previous=self.policy)
        self._conn_configs.clear()
        if config.dns_forwarder and self.dns is None:
            from pyslirp.net.dns import DnsForwarder
            self.dns = DnsForwarder(self.rng)
        elif not config.dns_forwarder and self.dns is not None:
            self.dns = None         # queries in flight are forgotten; their answers are ignored
            self.timers.cancel(_DNS_KEY)

    def reset(self, now, reason="link down"):
        """The link went down: drop every flow quietly (no RST onto a dead link), close every service.

        Also ends a suspension (see :meth:`suspend`).
        """
        self._now = now
        self._end_suspension()
        for rec in list(self._conns.values()):
            if rec.conn.state == TcpState.TIME_WAIT:
                # Over before the link went: its record says how it ended.
                rec.reason = rec.reason or ("fin" if rec.peer_fin and rec.eof else "closed")
            else:
                rec.reason = reason
                self._conn_error(rec, "link_down")
            self._forget(rec)
            if not rec.service_closed:
                rec.service_closed = True
                self._events.append(ServiceClose(rec.conn_id, reason))
            if rec.accepted:
                self._log_closed(rec, now, rec.reason)
            else:
                self._flow_log(ev.ABANDONED, rec, now, reason)
        self._conns.clear()
        self._ready.clear()
        self._token_wait.clear()
        self.timers.cancel(_TOKEN_KEY)
        self._drop_link_state()

    def _drop_link_state(self):
        """What belongs to the session that ended: UDP and ping flows, the line's queue, reassembly."""
        for rec in list(self._datagram_flows.values()):
            self._close_datagrams(rec, "link down")
        self._control.clear()
        self.ip.clear()
        self.timers.cancel(_FRAG_KEY)

    def _end_suspension(self):
        self._suspended_at = None
        self.timers.cancel(_RESUME_KEY)

    def suspend(self, now):
        """The line was lost (no administrative close): keep the TCP flows for ``resume_grace`` seconds.

        Every connection is suspended (no segment, no retransmission or give-up timer) and keeps its
        service socket; UDP and ping flows are closed.  Returns True, or, with ``resume_grace`` 0, resets
        as :meth:`reset` does and returns False.  A second call while suspended keeps the first deadline.
        """
        self._now = now
        grace = self.config.resume_grace
        if grace <= 0:
            self.reset(now)
            return False
        if self._suspended_at is None:
            self._suspended_at = now
            self.suspensions += 1
            self.timers.schedule(_RESUME_KEY, now + grace * 1000)
            if self._conns:
                log.info("line lost: %d TCP connections wait up to %d s for the client",
                         len(self._conns), grace)
        for rec in list(self._conns.values()):
            if not rec.gone:
                rec.conn.suspend(now)
                self._after(rec, now)
        self._drop_link_state()
        return True

    def take_lost_frame_signal(self):
        """True once after some connection made a fast retransmit: the client lost a segment of ours, and the
        link may have to resynchronise a compressor before the retransmission is framed (ppp/ccp.py)."""
        lost = self._lost_frame
        self._lost_frame = False
        return lost

    def stalled(self):
        """Some connection waits out a backed-off retransmission timer (TcpConnection.backed_off)."""
        for rec in self._conns.values():
            if rec.conn.backed_off:
                return True
        return False

    def link_alive(self, now):
        """The line carries again after a silence (the Core's probe was answered): backed-off connections
        retransmit at once (TcpConnection.link_alive)."""
        self._now = now
        for rec in list(self._conns.values()):
            if not rec.gone and rec.conn.backed_off:
                rec.conn.link_alive(now)
                self._after(rec, now)

    def line_answers(self, now):
        """The Core's probe was answered while connections were backed off: the line carries, their losses are
        its noise (TcpConnection.line_answers)."""
        self._now = now
        for rec in list(self._conns.values()):
            if not rec.gone and rec.conn.line_answers(now):
                self._after(rec, now)

    def link_dropped(self, now):
        """The client's link layer dropped our frames from a lost one on (its Deflate decompressor out of step:
        ppp/ccp.py): connections with data in flight and nothing new to send retransmit at once
        (TcpConnection.link_dropped)."""
        self._now = now
        for rec in list(self._conns.values()):
            if not rec.gone and rec.conn.link_dropped(now):
                self._after(rec, now)

    def resume(self, now):
        """The client is back, with the same address: the suspended TCP flows carry on.

        Each connection resends what was in flight, or probes (net/tcp/conn.py ``resume``); the idle
        timeout does not count the time the link was down.  Call :meth:`set_mtu` for the new session first:
        no connection sends segments larger than it carries.
        """
        self._now = now
        if self._suspended_at is None:
            return
        down = now - self._suspended_at
        self._end_suspension()
        self.resumptions += 1
        if self._conns:
            log.info("session resumed after %.1f s: %d TCP connections carry on", down / 1000.0,
                     len(self._conns))
        mss_limit = self.mss_limit
        for rec in list(self._conns.values()):
            if rec.gone:
                continue
            rec.last_activity = min(now, rec.last_activity + down)
            rec.conn.resume(now, mss_limit)
            self._after(rec, now)
