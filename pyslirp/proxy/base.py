"""What the SOCKS5 and HTTP CONNECT clients share: the output and input buffers, the states, the one final event.

Theory of operation
-------------------
A client is a small state machine that the caller drives over a socket it has connected to the proxy::

    client = Socks5Client("example.org", 443)      # or HttpConnectClient(...)
    sock.sendall(client.data_to_send())            # the first message is ready at once
    while client.next_event() is None:
        client.receive_data(sock.recv(65536))      # b"": the proxy closed the connection
        sock.sendall(client.data_to_send())

``receive_data`` appends to the input buffer and calls the subclass's ``_advance()``, which consumes complete
messages one at a time (queueing the next request with ``_send``) until it needs more bytes or decides
(``_establish`` / ``_refuse``).  Every decision is a function of the bytes received so far, never of how they were
split, so a reply fed byte by byte ends exactly as the same reply fed whole.  Each state waits for a message of a
known maximum length and decides once that many bytes are there, so garbage cannot make the input buffer grow
(``buffered`` is what waits for a decision).  Once decided the client is finished: ``next_event()`` keeps
returning the same event, nothing more is queued for the proxy, and feeding it more is the caller's mistake
(``RuntimeError``).  Bytes after the proxy's final answer are the tunnel's: they go into ``ProxyEstablished``.

A target or credential that cannot be expressed in the protocol (a name over 255 bytes, a port out of range, a
line break in an HTTP host) is refused by the constructor with ``ValueError`` and a clear message: nothing
has been sent yet, and nothing would help.
"""

import ipaddress
import logging

from pyslirp.net import refusal
from pyslirp.proxy.events import ProxyEstablished, ProxyRefused

log = logging.getLogger("pyslirp.proxy")

ESTABLISHED = "established"
REFUSED = "refused"
FINISHED = (ESTABLISHED, REFUSED)


def check_port(port):
    if isinstance(port, bool) or not isinstance(port, int) or not 1 <= port <= 65535:
        raise ValueError("target port must be an integer from 1 to 65535, not %r" % (port,))
    return port


def ip_literal(host):
    """The ``ipaddress`` value of an IPv4 or IPv6 literal (brackets allowed around IPv6), else None."""
    text = host[1:-1] if host.startswith("[") and host.endswith("]") else host
    try:
        return ipaddress.ip_address(text)
    except ValueError:
        return None


def printable(text, limit=200):
    """``text`` (from the proxy) made safe for one log line: control characters escaped, at most ``limit``."""
    safe = "".join(c if c.isprintable() else "\\x%02x" % (ord(c) & 0xFF) for c in text[:limit])
    return safe + ("..." if len(text) > limit else "")


class ProxyClient(object):
    """Base of the sans-IO proxy clients; subclasses set ``kind`` and the first state, implement ``_advance``
    and ``_eof_reason``."""

    kind = "proxy"

    def __init__(self, host, port, first_state):
        if not isinstance(host, str) or not host:
            raise ValueError("target host must be a non-empty string, not %r" % (host,))
        self.host = host
        self.port = check_port(port)
        self.state = first_state
        self._out = bytearray()
        self._in = bytearray()
        self._event = None

    def __repr__(self):
        return "%s(%r, %d, state=%s)" % (type(self).__name__, self.host, self.port, self.state)

    # -- the caller's interface ---------------------------------------------------------------------------------

    def data_to_send(self):
        """The bytes to write to the proxy now (possibly b"")."""
        out = bytes(self._out)
        del self._out[:]
        return out

    def receive_data(self, data):
        """Bytes read from the proxy, in any chunking; ``b""`` means the proxy closed the connection."""
        if self.state in FINISHED:
            raise RuntimeError("%s: receive_data() after the handshake ended (%s)" % (self.kind, self.state))
        if not data:
            self._refuse(self._eof_reason(), refusal.RESET)
            return
        self._in += data
        self._advance()

    def next_event(self):
        """None while the handshake needs more bytes, then ``ProxyEstablished`` or ``ProxyRefused`` (every time)."""
        return self._event

    @property
    def buffered(self):
        """Received bytes that wait for a decision (bounded by the longest message the current state expects)."""
        return 0 if self.state in FINISHED else len(self._in)

    # -- for the subclasses ---------------------------------------------------------------------------------------

    def _advance(self):
        raise NotImplementedError

    def _eof_reason(self):
        raise NotImplementedError

    def _set_state(self, new):
        if new != self.state:
            log.debug("%s %s:%d: %s => %s", self.kind, self.host, self.port, self.state, new)
            self.state = new

    def _send(self, data):
        self._out += data

    def _establish(self, consumed, bound=None):
        leftover = bytes(self._in[consumed:])
        del self._in[:]
        self._event = ProxyEstablished(leftover, bound)
        self._set_state(ESTABLISHED)

    def _refuse(self, reason, outcome, code=None):
        del self._in[:]
        self._event = ProxyRefused(reason, outcome, code)
        self._set_state(REFUSED)
