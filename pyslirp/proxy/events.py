"""What a proxy client reports when its handshake ends (frozen values shared by the SOCKS5 and HTTP clients).

A client yields exactly one of these, once the proxy's answer is complete or has proved unusable:

* ``ProxyEstablished``: the tunnel is open.  ``leftover`` holds the bytes that followed the proxy's answer in the
  same read(s): they are already the destination's data and must be delivered before anything read later.
  ``bound`` is the address the proxy reported for its outbound socket (SOCKS5 BND.ADDR/BND.PORT), when it did.
* ``ProxyRefused``: no tunnel.  ``reason`` is one short line for the log (never a password); ``outcome`` is one of
  :mod:`pyslirp.net.refusal`'s outcomes, telling the stack how to answer the client; ``code`` is the SOCKS5 reply
  code or the HTTP status when the proxy sent one, else None.
"""

from dataclasses import dataclass
from typing import Optional, Tuple


@dataclass(frozen=True)
class ProxyEstablished:
    leftover: bytes = b""
    bound: Optional[Tuple[str, int]] = None

    def __repr__(self):
        return "ProxyEstablished(leftover=<%d bytes>, bound=%r)" % (len(self.leftover), self.bound)


@dataclass(frozen=True)
class ProxyRefused:
    reason: str
    outcome: str
    code: Optional[int] = None
