"""Events the IP stack hands to the runtime's service threads (frozen values)."""

from dataclasses import dataclass
from typing import Tuple


@dataclass(frozen=True)
class ServiceConnect:
    """Open an outbound socket to host:port for a new client connection."""
    conn_id: int
    host: str
    port: int
    name: str
    client: Tuple[str, int]


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
