"""Events the PPP link hands to its owner (frozen values, in order)."""

from dataclasses import dataclass


@dataclass(frozen=True)
class IPReceived:
    """An IPv4 datagram arrived on the open link."""
    packet: bytes


@dataclass(frozen=True)
class LinkUp:
    """IPCP reached Opened: IP may flow.

    ``header_compression``: Van Jacobson TCP/IP header compression runs in at least one direction; TCP
    options that change with every segment (timestamps) would force every header out uncompressed
    (RFC 1144 section 3.2.3), so the stack should not negotiate them on this session.
    """
    local_ip: str
    remote_ip: str
    mtu: int
    header_compression: bool = False


@dataclass(frozen=True)
class LinkDown:
    """IP may no longer flow (IPCP left Opened or LCP went down).

    ``administrative``: the session was ended on purpose, by our close() or by the peer's
    Terminate-Request; otherwise the line was lost (echo timeout, lower layer down, the peer
    renegotiating after a restart) and the client may come back.
    """
    reason: str
    administrative: bool = False


@dataclass(frozen=True)
class AuthResult:
    """The peer authenticated (ok) or failed to."""
    user: str
    ok: bool
    method: str
