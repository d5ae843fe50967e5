"""Events a TCP connection hands to the IP stack (frozen values, in order).

Theory of operation: ``TcpConnection.take_events()`` returns the events of
everything that happened since the last call, oldest first.  Each event
carries no data (``read()``, ``send_space`` and ``close_reason`` say the
rest), so every kind has one module-level instance that the connection
appends; callers may compare by type (``isinstance(event, Readable)``) or by
equality (``event == READABLE``), and a fresh ``Readable()`` equals the
shared one.  ``Readable`` and ``Writable`` are coalesced: between two
``take_events()`` calls each appears at most once.  ``Closed`` is always the
last event of a connection.
"""

from dataclasses import dataclass


@dataclass(frozen=True)
class Established:
    """The three-way handshake completed."""


@dataclass(frozen=True)
class Readable:
    """``read()`` has in-order data for the service."""


@dataclass(frozen=True)
class Writable:
    """``send_space`` grew: the runtime may grant the service more read credit."""


@dataclass(frozen=True)
class PeerFin:
    """The client's FIN arrived and every byte before it has been read(): shutdown(SHUT_WR)."""


@dataclass(frozen=True)
class Reset:
    """The client reset the connection."""


@dataclass(frozen=True)
class TimedOut:
    """Retransmissions or probes went unanswered: the connection sent a RST and is closed."""


@dataclass(frozen=True)
class Unreachable:
    """An active open failed on an ICMP destination unreachable (the connection is closed)."""


@dataclass(frozen=True)
class Closed:
    """The connection is finished (CLOSED, or TIME_WAIT expired): delete it after one last take_segments()."""


ESTABLISHED = Established()
READABLE = Readable()
WRITABLE = Writable()
PEER_FIN = PeerFin()
RESET = Reset()
TIMED_OUT = TimedOut()
UNREACHABLE = Unreachable()
CLOSED = Closed()

# Kinds that say "look again" rather than "this happened": at most one of each per take_events().
COALESCED = (Readable, Writable)
