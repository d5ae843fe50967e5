"""Events the IP stack hands to the runtime (frozen values).

TCP flows go to one service thread each (``ServiceConnect`` opens it, the rest address it by ``conn_id``); UDP
and ping flows to the runtime's datagram sockets (by ``flow_id``); DNS queries to the upstream relay.  Flow ids
are unique across all three.  ``FlowLog`` says that a flow of any of them opened, closed or was refused: the
runtime writes the connection log's line (``FlowLog.text``) and the audit record from it (also when a limit turns
SYN cookies on).  ``BreakerChange``
(net/health.py) reports a service target's circuit breaker changing state, for the metrics and the audit log.
"""

from dataclasses import dataclass

from pyslirp.net.flows import PROTO_TCP, FlowKey, Route, addr_str
from pyslirp.net.health import BreakerChange  # noqa: F401  (one of the stack's events, defined with the breakers)


@dataclass(frozen=True)
class ServiceConnect:
    """Reach ``route``'s target (directly or through its proxy) for a new client connection."""
    conn_id: int
    flow: FlowKey
    route: Route


@dataclass(frozen=True)
class ServiceSend:
    """Write data to the service socket, then report service_written()."""
    conn_id: int
    data: bytes


@dataclass(frozen=True)
class ServiceReadCredit:
    """The service thread may read this many more bytes from its socket."""
    conn_id: int
    nbytes: int


@dataclass(frozen=True)
class ServiceShutdown:
    """The client sent FIN: shutdown(SHUT_WR) once pending writes are done."""
    conn_id: int


@dataclass(frozen=True)
class ServiceClose:
    """Abort: close the service socket now."""
    conn_id: int
    reason: str


# FlowLog kinds.
OPENED = "opened"           # TCP: the handshake completed; UDP / ping: the first datagram
CLOSED = "closed"
REFUSED = "refused"         # by the policy (route.admitted is false), or the service / proxy connect failed
ABANDONED = "abandoned"     # TCP: the link went down while the service connect was under way
COOKIES = "syn_cookies"     # TCP: this SYN turned SYN cookies on (a deferred route: its ``limit`` and ``cause``)


@dataclass(frozen=True)
class FlowLog:
    """A flow opened, closed or was refused: one line for the connection log and one audit record.

    ``bytes_in`` is payload from the client, ``bytes_out`` payload to it; ``duration_ms`` since the flow's
    first packet; ``reason`` why it closed or was refused; ``cause`` (refusals): policy, limit, rate,
    service_down or proxy (net/flows.py CAUSE_*).
    """
    kind: str
    flow_id: int
    flow: FlowKey
    route: Route
    bytes_in: int = 0
    bytes_out: int = 0
    duration_ms: int = 0
    reason: str = ""
    cause: str = ""

    @property
    def client(self):
        return "%s:%d" % (addr_str(self.flow.client_addr), self.flow.client_port)

    @property
    def server(self):
        """The address and port the client addressed (for ICMP echo: the address and the identifier)."""
        return "%s:%d" % (addr_str(self.flow.server_addr), self.flow.server_port)

    @property
    def text(self):
        """The connection log's line."""
        flow = self.flow
        if flow.protocol != PROTO_TCP or not self.route.admitted:
            # Datagram flows, and refusals by the policy: the flow's own tuple.
            if self.kind == CLOSED:
                return "closed %s: %s in=%d out=%d" % (flow.describe(), self.reason, self.bytes_in, self.bytes_out)
            if self.kind == OPENED:
                return "opened %s (%s)" % (flow.describe(), self.route.describe())
            return "%s %s: %s" % (self.kind, flow.describe(), self.reason)
        head = "%s %s -> %s" % (self.kind, self.client, self.route.describe())
        if self.kind == OPENED:
            return head
        if self.kind == CLOSED:
            return "%s in=%d out=%d duration=%.1fs reason=%s" % (head, self.bytes_in, self.bytes_out,
                                                                 self.duration_ms / 1000.0, self.reason)
        return "%s reason=%s" % (head, self.reason)


@dataclass(frozen=True)
class UdpOpen:
    """Open one UDP socket for a new flow toward ``route``'s target."""
    flow_id: int
    flow: FlowKey
    route: Route


@dataclass(frozen=True)
class UdpSend:
    """Send one datagram of the client's on the flow's socket."""
    flow_id: int
    data: bytes


@dataclass(frozen=True)
class UdpClose:
    """The flow is over (idle, link down): close its socket."""
    flow_id: int
    reason: str


@dataclass(frozen=True)
class PingOpen:
    """A new echo flow toward ``route.host``."""
    flow_id: int
    flow: FlowKey
    route: Route


@dataclass(frozen=True)
class PingSend:
    """Send one echo request (the pinger chooses the identifier on the outside)."""
    flow_id: int
    seq: int
    data: bytes


@dataclass(frozen=True)
class PingClose:
    flow_id: int
    reason: str


@dataclass(frozen=True)
class DnsQuery:
    """Send a query to the upstream DNS servers; answer with Core.dns_answer / dns_failed."""
    upstream_id: int
    payload: bytes
