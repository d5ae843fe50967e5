"""A sans-IO SOCKS5 server (RFC 1928), "no authentication required" and CONNECT only.

Theory of operation
-------------------
The ``-D`` option of ``pyslirp.py client`` accepts local SOCKS5 clients (a
browser, ``curl --socks5``, ``ssh -o ProxyCommand``) and opens their CONNECTs
over the PPP link.  :class:`Socks5Server` is one such conversation, without
sockets: ``receive(bytes)`` returns the bytes to send back and sets
``state``; once a CONNECT request was read, ``target`` is ``(host, port)``
and the owner opens the flow, then calls :meth:`reply` with the outcome.
The exchange::

    greeting  VER=5 NMETHODS METHODS...   -> VER=5 METHOD=00 (or FF: no acceptable method, then CLOSED)
    request   VER=5 CMD RSV ATYP DST.ADDR DST.PORT
              CMD 1 (CONNECT) with ATYP 1 (IPv4) or 3 (a domain name that is an IPv4 literal) -> REQUESTED
              anything else: VER REP=07/08 ... and CLOSED
    reply     VER=5 REP RSV=0 ATYP=1 BND.ADDR=0.0.0.0 BND.PORT=0 -> ESTABLISHED (REP 00) or CLOSED

Names are not resolved here: ``target`` then holds the name, and the owner
resolves it on the far side (the link's DNS server), where it means what the
user meant; IPv6 (ATYP 4) gets 08 (address type not supported).  Bytes after the request (a client that pipelines its first data)
are kept in ``early`` for the flow.  Malformed input closes the conversation
(``error`` says why), never raises; ``buffered`` never exceeds the longest
request, 4 + 1 + 255 + 2 = 262 bytes.

The outcome of a flow maps to REP (RFC 1928 6) as a local user expects:
``rst`` -> 05 connection refused; ``unreachable`` -> 03 network unreachable
for ICMP code 0, 02 not allowed by ruleset for 13 (RFC 1812 5.2.7.1), 04 host
unreachable otherwise; ``timeout`` and ``unresolved`` (the name did not
resolve) -> 04; anything else (the link down, too many flows) -> 01 general
failure.
"""

import ipaddress
import struct

# The RFC 1928 vocabulary is the client's (pyslirp.proxy.socks5); ATYP_DOMAIN is named here for callers.
from pyslirp.proxy.socks5 import (ATYP_DOMAIN, ATYP_IPV4, ATYP_IPV6, CMD_CONNECT, METHOD_NO_AUTH,  # noqa: F401
                                  METHOD_NONE_ACCEPTABLE, REP_ATYP_NOT_SUPPORTED, REP_COMMAND_NOT_SUPPORTED,
                                  REP_CONNECTION_REFUSED, REP_GENERAL_FAILURE, REP_HOST_UNREACHABLE,
                                  REP_NET_UNREACHABLE, REP_NOT_ALLOWED, REP_SUCCEEDED, VERSION, address_span)

REP_ADDRESS_NOT_SUPPORTED = REP_ATYP_NOT_SUPPORTED

ICMP_NET_UNREACHABLE = 0
ICMP_ADMIN_PROHIBITED = 13

_REQUEST_HEAD = struct.Struct("!BBBB")      # VER CMD RSV ATYP
_PORT = struct.Struct("!H")
_REPLY = struct.Struct("!BBBB4sH")          # VER REP RSV ATYP BND.ADDR BND.PORT
MAX_REQUEST = _REQUEST_HEAD.size + 1 + 255 + _PORT.size

GREETING = "greeting"
REQUEST = "request"
REQUESTED = "requested"         # target known: the owner opens the flow and calls reply()
ESTABLISHED = "established"
CLOSED = "closed"


def reply_code(reason, icmp_code=-1):
    """The REP for a flow's outcome (see the module docstring); None for success."""
    if reason is None:
        return REP_SUCCEEDED
    if reason == "rst":
        return REP_CONNECTION_REFUSED
    if reason == "unreachable":
        if icmp_code == ICMP_NET_UNREACHABLE:
            return REP_NET_UNREACHABLE
        if icmp_code == ICMP_ADMIN_PROHIBITED:
            return REP_NOT_ALLOWED
        return REP_HOST_UNREACHABLE
    if reason in ("timeout", "unresolved"):
        return REP_HOST_UNREACHABLE
    return REP_GENERAL_FAILURE


def _reply(code):
    return _REPLY.pack(VERSION, code, 0, ATYP_IPV4, b"\x00\x00\x00\x00", 0)


class Socks5Server(object):
    """One SOCKS5 conversation, server side (see the module docstring)."""

    def __init__(self):
        self.state = GREETING
        self.target = None
        self.early = b""
        self.error = ""
        self._buf = b""

    @property
    def buffered(self):
        return len(self._buf)

    def receive(self, data):
        """Bytes from the SOCKS client; returns the bytes to answer with (possibly empty)."""
        if self.state in (REQUESTED, ESTABLISHED):
            self.early += data
            return b""
        if self.state == CLOSED:
            return b""
        self._buf += data
        out = b""
        while self.state in (GREETING, REQUEST):
            step = self._greeting() if self.state == GREETING else self._request()
            if step is None:
                break
            out += step
        return out

    def _fail(self, why, answer=b""):
        self.state = CLOSED
        self.error = why
        self._buf = b""
        return answer

    def _greeting(self):
        buf = self._buf
        if not buf:
            return None
        if buf[0] != VERSION:
            return self._fail("not SOCKS5 (version %d)" % buf[0])
        if len(buf) < 2:
            return None
        n = buf[1]
        if len(buf) < 2 + n:
            return None
        methods = buf[2:2 + n]
        self._buf = buf[2 + n:]
        if METHOD_NO_AUTH not in methods:
            return self._fail("the client offers no method we take (no authentication)",
                              bytes([VERSION, METHOD_NONE_ACCEPTABLE]))
        self.state = REQUEST
        return bytes([VERSION, METHOD_NO_AUTH])

    def _request(self):
        buf = self._buf
        if buf and buf[0] != VERSION:
            return self._fail("bad request version %d" % buf[0], _reply(REP_GENERAL_FAILURE))
        if len(buf) < _REQUEST_HEAD.size:
            return None
        _, cmd, _, atyp = _REQUEST_HEAD.unpack_from(buf)
        try:
            span = address_span(buf, atyp, _REQUEST_HEAD.size)
        except ValueError:
            return self._fail("address type %d" % atyp, _reply(REP_ADDRESS_NOT_SUPPORTED))
        if span is None:
            return None
        start, length = span
        end = start + length
        if len(buf) < end + _PORT.size:
            return None
        address = buf[start:end]
        port = _PORT.unpack_from(buf, end)[0]
        self.early = buf[end + _PORT.size:]
        self._buf = b""
        if cmd != CMD_CONNECT:
            return self._fail("command %d (only CONNECT)" % cmd, _reply(REP_COMMAND_NOT_SUPPORTED))
        if atyp == ATYP_IPV6:
            return self._fail("an IPv6 destination", _reply(REP_ADDRESS_NOT_SUPPORTED))
        if atyp == ATYP_IPV4:
            host = str(ipaddress.IPv4Address(address))
        else:
            name = address.decode("ascii", "replace")
            try:
                host = str(ipaddress.IPv4Address(name))
            except ValueError:
                host = name             # resolved on the far side, by the owner
        if not host:
            return self._fail("an empty name", _reply(REP_HOST_UNREACHABLE))
        self.target = (host, port)
        self.state = REQUESTED
        return b""

    def reply(self, reason=None, icmp_code=-1):
        """The flow's outcome (None: connected); returns the reply bytes."""
        if self.state != REQUESTED:
            return b""
        code = reply_code(reason, icmp_code)
        if code == REP_SUCCEEDED:
            self.state = ESTABLISHED
        else:
            self.state = CLOSED
            self.error = "connect failed: %s" % reason
        return _reply(code)
