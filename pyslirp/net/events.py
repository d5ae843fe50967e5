"""Events the IP stack hands to the runtime (frozen values).

TCP flows go to one service thread each (``ServiceConnect`` opens it, the rest address it by ``conn_id``); UDP
and ping flows to the runtime's datagram sockets (by ``flow_id``); DNS queries to the upstream relay.  Flow ids
are unique across all three.  ``BreakerChange`` (net/health.py) reports a service target's circuit breaker changing
state, for the metrics and the audit log.
"""

from dataclasses import dataclass

from pyslirp.net.flows import FlowKey, Route
from pyslirp.net.health import BreakerChange


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


@dataclass(frozen=True)
class ConnectionLog:
    """One line for the connection log (at open and at close)."""
    conn_id: int
    text: str


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


__all__ = ["BreakerChange", "ConnectionLog", "DnsQuery", "PingClose", "PingOpen", "PingSend", "ServiceClose",
           "ServiceConnect", "ServiceReadCredit", "ServiceSend", "ServiceShutdown", "UdpClose", "UdpOpen", "UdpSend"]
