"""A sans-IO HTTP CONNECT client (RFC 9110 9.3.6, formerly RFC 7231 4.3.6), with Basic proxy authentication.

Theory of operation
-------------------
Driven as described in :mod:`pyslirp.proxy.base`.  The request is ready at once::

    CONNECT host:port HTTP/1.1
    Host: host:port
    Proxy-Authorization: Basic base64(username ":" password)      (only when a username is configured)
    <empty line>

(an IPv6 literal is written in brackets, ``[2001:db8::1]:443``, the authority form of RFC 3986 3.2.2).  The client
then reads the status line and the header lines up to the empty line that ends them; lines may end in CRLF or, as
RFC 9112 2.2 allows a recipient to accept, in a bare LF.  The whole header block, empty line included, must fit in
``HEADER_MAX`` (16 KiB) bytes: a longer one is refused as a protocol error when byte ``HEADER_MAX`` arrives without
the block having ended, so ``buffered`` never exceeds it.  A response that does not begin with ``HTTP/`` is refused
at its first wrong byte.

Decisions, by status (RFC 9110 9.3.6: "Any 2xx (Successful) response indicates that the sender (and all inbound
proxies) will switch to tunnel mode immediately after the header section"):

* 2xx: established; every byte after the header block is the tunnel's (``leftover``).  Header fields are not
  interpreted: "A client MUST ignore any Content-Length or Transfer-Encoding header fields received in a
  successful response to CONNECT."
* 403 Forbidden: ADMIN_PROHIBITED, the proxy's policy forbids the destination (tinyproxy answers it for a port
  not in its ``ConnectPort`` list; Squid for a denied ``http_access``), as a SOCKS5 reply 02 is.
* anything else (407 Proxy Authentication Required, 401, 500, 502 Bad Gateway, 503, 504 Gateway Timeout, a 1xx,
  ...): RESET.  HTTP does not say why the proxy's connect failed (502 may be a refusal, a DNS failure or an
  unreachable network), so the client sees what a refused connect looks like.

The reason of a refusal is the proxy's status line ("HTTP proxy: HTTP/1.0 407 Proxy Authentication Required"),
with control characters escaped.  The credentials are kept private: no repr, reason or log line shows them.
"""

import base64
import ipaddress
import re

from pyslirp.net import refusal
from pyslirp.proxy.base import ProxyClient, ip_literal, printable

HEADER_MAX = 16384
STATUS_PREFIX = b"HTTP/"
STATUS_FORBIDDEN = 403

# RFC 9112 4: status-line = HTTP-version SP status-code SP [ reason-phrase ]; a missing reason phrase with or
# without its space is accepted.
_STATUS_LINE = re.compile(rb"HTTP/(\d)\.(\d) ([0-9]{3})(?: (.*))?")
# RFC 3986 3.2.2 reg-name: unreserved / pct-encoded / sub-delims, which keeps spaces, line breaks and ":" out.
_REG_NAME = re.compile(r"[A-Za-z0-9\-._~%!$&'()*+,;=]+")

WAITING = "waiting"


def authority(host, port):
    """``host:port`` in the authority form of a CONNECT request target (RFC 9110 9.3.6, RFC 3986 3.2.2)."""
    addr = ip_literal(host)
    if isinstance(addr, ipaddress.IPv6Address):
        return "[%s]:%d" % (addr.compressed, port)
    if addr is not None:
        return "%s:%d" % (addr, port)
    name = host
    if not _REG_NAME.fullmatch(name):
        try:
            name = host.encode("idna").decode("ascii")
        except UnicodeError:
            name = ""
        if not _REG_NAME.fullmatch(name):
            raise ValueError("HTTP CONNECT: target %r is not a valid host name" % (host,))
    return "%s:%d" % (name, port)


def basic_credentials(username, password):
    """The Basic credentials (RFC 7617 2): base64 of user-id ":" password, in UTF-8."""
    if ":" in username:
        # RFC 7617 2: "a user-id containing a colon character is invalid"
        raise ValueError("HTTP CONNECT: the username must not contain ':'")
    return base64.b64encode((username + ":" + password).encode("utf-8")).decode("ascii")


def connect_request(host, port, username="", password=""):
    target = authority(host, port)
    lines = ["CONNECT %s HTTP/1.1" % target, "Host: %s" % target]
    if username:
        lines.append("Proxy-Authorization: Basic %s" % basic_credentials(username, password))
    return ("\r\n".join(lines) + "\r\n\r\n").encode("ascii")


def status_outcome(status):
    if status == STATUS_FORBIDDEN:
        return refusal.ADMIN_PROHIBITED
    return refusal.RESET


class HttpConnectClient(ProxyClient):
    """One CONNECT through an HTTP proxy to ``host:port``; see the module docstring."""

    kind = "http"

    def __init__(self, host, port, username="", password=""):
        ProxyClient.__init__(self, host, port, WAITING)
        self.username = username or ""
        self._send(connect_request(host, self.port, self.username, password or ""))
        self._scanned = 0           # the header block's end was looked for in _in[:_scanned]

    def _eof_reason(self):
        return "HTTP proxy protocol error: the proxy closed the connection before the end of its response header"

    def _protocol_error(self, what):
        self._refuse("HTTP proxy protocol error: " + what, refusal.RESET)

    def _advance(self):
        buf = self._in
        if self._scanned < len(STATUS_PREFIX):
            for i, byte in enumerate(buf[:len(STATUS_PREFIX)]):
                if byte != STATUS_PREFIX[i]:
                    self._protocol_error("the response does not begin with HTTP/ (byte %d is 0x%02x)" % (i, byte))
                    return
        end = self._header_end()
        if end < 0:
            if len(buf) >= HEADER_MAX:
                self._protocol_error("response header longer than %d bytes" % HEADER_MAX)
            return
        line_end = buf.find(b"\n")
        line = bytes(buf[:line_end]).rstrip(b"\r")
        match = _STATUS_LINE.fullmatch(line)
        if match is None:
            self._protocol_error("malformed status line %r" % printable(line.decode("latin-1")))
            return
        status = int(match.group(3))
        if 200 <= status <= 299:
            self._establish(end)
            return
        self._refuse("HTTP proxy: " + printable(line.decode("latin-1")), status_outcome(status), status)

    def _header_end(self):
        """Just past the empty line that ends the header block, if it ends in the first HEADER_MAX bytes; else -1.

        The block ends at the first line end followed by an empty line: LF LF or LF CR LF.
        """
        buf = self._in
        start = max(0, self._scanned - 2)           # a terminator may straddle the previous chunk's end
        self._scanned = len(buf)
        ends = []
        for terminator in (b"\n\n", b"\n\r\n"):
            at = buf.find(terminator, start, HEADER_MAX)
            if at >= 0:
                ends.append(at + len(terminator))
        return min(ends) if ends else -1
