"""A sans-IO SOCKS5 client (RFC 1928) with username/password authentication (RFC 1929), CONNECT only.

Theory of operation
-------------------
Driven as described in :mod:`pyslirp.proxy.base`.  The exchange, and the client's states::

    greeting  VER=5 NMETHODS METHODS...            ->  METHOD   (waits for VER METHOD, 2 bytes)
    [RFC 1929 VER=1 ULEN UNAME PLEN PASSWD         ->  AUTH     (waits for VER STATUS, 2 bytes)]
    request   VER=5 CMD=1 RSV=0 ATYP DST.ADDR DST.PORT ->  REPLY (waits for VER REP RSV ATYP BND.ADDR BND.PORT)
                                                   ->  ESTABLISHED | REFUSED

Methods offered: "no authentication required" (X'00') always, and "username/password" (X'02') as well when a
username is configured; an empty username offers X'00' only.  The target goes as an IPv4 address (ATYP X'01') when
it is an IPv4 literal, an IPv6 address (X'04') when it is an IPv6 literal, otherwise as a domain name (X'03') for
the proxy to resolve.  A request is sent only after the previous answer arrived (no pipelining: not every server
takes it).

Each state waits for one message of known length (the longest, a reply with a domain name, is 4 + 1 + 255 + 2 =
262 bytes) and decides as soon as the bytes seen settle it: a wrong version is refused at its first byte, a
failure code at the second, so ``buffered`` never exceeds 262 bytes.  Outcomes (:mod:`pyslirp.net.refusal`):

    REP 05 connection refused -> RESET             REP 03 network unreachable -> NET_UNREACHABLE
    REP 04 host unreachable   -> HOST_UNREACHABLE  REP 02 not allowed by ruleset -> ADMIN_PROHIBITED
    REP 01, 06, 07, 08, X'09'-X'FF', authentication failures, protocol errors -> RESET

The password is kept private: it appears in no repr, no reason and no log line.
"""

import ipaddress
import struct

from pyslirp.net import refusal
from pyslirp.proxy.base import ProxyClient, ip_literal, printable

VERSION = 0x05
AUTH_VERSION = 0x01             # RFC 1929 2: "the current version of the subnegotiation, which is X'01'"

METHOD_NO_AUTH = 0x00
METHOD_USERPASS = 0x02
METHOD_NONE_ACCEPTABLE = 0xFF
METHOD_NAMES = {METHOD_NO_AUTH: "no authentication", METHOD_USERPASS: "username/password"}

CMD_CONNECT = 0x01
RSV = 0x00

ATYP_IPV4 = 0x01
ATYP_DOMAIN = 0x03
ATYP_IPV6 = 0x04

REP_SUCCEEDED = 0x00
REP_GENERAL_FAILURE = 0x01
REP_NOT_ALLOWED = 0x02
REP_NET_UNREACHABLE = 0x03
REP_HOST_UNREACHABLE = 0x04
REP_CONNECTION_REFUSED = 0x05
REP_TTL_EXPIRED = 0x06
REP_COMMAND_NOT_SUPPORTED = 0x07
REP_ATYP_NOT_SUPPORTED = 0x08

# RFC 1928 6, the REP field; X'09' to X'FF' are unassigned.
REPLY_TEXT = {
    REP_GENERAL_FAILURE: "general SOCKS server failure",
    REP_NOT_ALLOWED: "connection not allowed by ruleset",
    REP_NET_UNREACHABLE: "network unreachable",
    REP_HOST_UNREACHABLE: "host unreachable",
    REP_CONNECTION_REFUSED: "connection refused",
    REP_TTL_EXPIRED: "TTL expired",
    REP_COMMAND_NOT_SUPPORTED: "command not supported",
    REP_ATYP_NOT_SUPPORTED: "address type not supported",
}
REPLY_OUTCOME = {
    REP_NOT_ALLOWED: refusal.ADMIN_PROHIBITED,
    REP_NET_UNREACHABLE: refusal.NET_UNREACHABLE,
    REP_HOST_UNREACHABLE: refusal.HOST_UNREACHABLE,
    REP_CONNECTION_REFUSED: refusal.RESET,
}                               # every other code: RESET

NAME_MAX = 255                  # one length octet (RFC 1928 5: "The first octet of the address field contains the
                                # number of octets of name that follow"); the same for RFC 1929 UNAME and PASSWD

# Reply layout (RFC 1928 6): VER REP RSV ATYP, then BND.ADDR (by ATYP), then BND.PORT (2 octets).
_REPLY_HEAD = struct.Struct("!BBBB")
OFF_VER = 0
OFF_REP = 1
OFF_RSV = 2
OFF_ATYP = 3
OFF_ADDR = _REPLY_HEAD.size
_PORT = struct.Struct("!H")
_ADDR_LEN = {ATYP_IPV4: 4, ATYP_IPV6: 16}
SELECTION_LEN = 2               # VER METHOD
AUTH_REPLY_LEN = 2              # VER STATUS
REPLY_MAX = _REPLY_HEAD.size + 1 + NAME_MAX + _PORT.size   # 262

METHOD = "method"
AUTH = "auth"
REPLY = "reply"


def _length_octet(data, what):
    if len(data) > NAME_MAX:
        raise ValueError("SOCKS5: %s is %d bytes, at most %d fit" % (what, len(data), NAME_MAX))
    return bytes((len(data),)) + data


def encode_target(host):
    """ATYP and DST.ADDR for ``host`` (RFC 1928 5): an IPv4 or IPv6 literal as such, anything else as a name."""
    addr = ip_literal(host)
    if isinstance(addr, ipaddress.IPv4Address):
        return bytes((ATYP_IPV4,)) + addr.packed
    if isinstance(addr, ipaddress.IPv6Address):
        return bytes((ATYP_IPV6,)) + addr.packed
    try:
        name = host.encode("ascii")
    except UnicodeEncodeError:
        try:
            name = host.encode("idna")
        except UnicodeError:
            raise ValueError("SOCKS5: target %r is not a valid host name" % (host,))
    if not name:
        raise ValueError("SOCKS5: empty target host name")
    return bytes((ATYP_DOMAIN,)) + _length_octet(name, "target host name")


def address_span(buf, atyp, start):
    """Where the address of type ``atyp`` that begins at ``start`` in ``buf`` lies (RFC 1928 5: X'01' four
    octets, X'04' sixteen, X'03' a length octet and that many octets of name): (first octet, length), or
    None while a name's length octet has not arrived.  ValueError for any other address type."""
    if atyp == ATYP_DOMAIN:
        if len(buf) <= start:
            return None
        return start + 1, buf[start]
    if atyp in _ADDR_LEN:
        return start, _ADDR_LEN[atyp]
    raise ValueError("address type 0x%02x" % atyp)


def greeting(methods):
    """The version identifier/method selection message (RFC 1928 3): VER NMETHODS METHODS."""
    return bytes((VERSION, len(methods))) + bytes(methods)


def userpass_request(username, password):
    """The RFC 1929 2 request: VER=1 ULEN UNAME PLEN PASSWD."""
    return (bytes((AUTH_VERSION,)) + _length_octet(username, "the username")
            + _length_octet(password, "the password"))


def connect_request(host, port):
    """The CONNECT request (RFC 1928 4): VER CMD RSV ATYP DST.ADDR DST.PORT."""
    return bytes((VERSION, CMD_CONNECT, RSV)) + encode_target(host) + _PORT.pack(port)


def reply_text(code):
    return REPLY_TEXT.get(code, "unassigned code")


class Socks5Client(ProxyClient):
    """One CONNECT through a SOCKS5 proxy to ``host:port``; see the module docstring."""

    kind = "socks5"

    def __init__(self, host, port, username="", password=""):
        ProxyClient.__init__(self, host, port, METHOD)
        self.username = username or ""
        self._request = connect_request(host, self.port)        # validates the target before anything is sent
        if self.username:
            self._auth = userpass_request(self.username.encode("utf-8"), (password or "").encode("utf-8"))
            self.methods = (METHOD_NO_AUTH, METHOD_USERPASS)
        else:
            self._auth = b""
            self.methods = (METHOD_NO_AUTH,)
        self._send(greeting(self.methods))

    def _eof_reason(self):
        waiting = {METHOD: "its method selection", AUTH: "its authentication status",
                   REPLY: "its reply to CONNECT"}[self.state]
        return "SOCKS5 protocol error: the proxy closed the connection before %s" % waiting

    def _protocol_error(self, what):
        self._refuse("SOCKS5 protocol error: " + what, refusal.RESET)

    def _advance(self):
        handlers = {METHOD: self._on_selection, AUTH: self._on_auth_status, REPLY: self._on_reply}
        # Each handler consumes one complete message (True: go on with what is left) or waits/decides (False).
        while self._in and self.state in handlers and handlers[self.state]():
            pass

    def _on_selection(self):
        buf = self._in
        if buf[OFF_VER] != VERSION:
            self._protocol_error("method selection version 0x%02x, expected 0x05" % buf[OFF_VER])
            return False
        if len(buf) < SELECTION_LEN:
            return False
        method = buf[1]
        del buf[:SELECTION_LEN]
        if method == METHOD_NONE_ACCEPTABLE:
            # RFC 1928 3: "If the selected METHOD is X'FF', none of the methods listed by the client are
            # acceptable, and the client MUST close the connection."
            offered = ", ".join(METHOD_NAMES[m] for m in self.methods)
            self._refuse("SOCKS5 authentication failed: the proxy accepts none of the offered methods (%s)"
                         % offered, refusal.RESET)
            return False
        if method not in self.methods:
            self._protocol_error("the proxy chose method 0x%02x, which was not offered" % method)
            return False
        if method == METHOD_USERPASS:
            self._send(self._auth)
            self._set_state(AUTH)
        else:
            self._send(self._request)
            self._set_state(REPLY)
        return True

    def _on_auth_status(self):
        buf = self._in
        if buf[OFF_VER] != AUTH_VERSION:
            self._protocol_error("authentication status version 0x%02x, expected 0x01" % buf[OFF_VER])
            return False
        if len(buf) < AUTH_REPLY_LEN:
            return False
        status = buf[1]
        del buf[:AUTH_REPLY_LEN]
        if status != 0:
            # RFC 1929 2: "A STATUS field of X'00' indicates success. If the server returns a `failure' (STATUS
            # value other than X'00') status, it MUST close the connection."
            self._refuse("SOCKS5 authentication failed: the proxy rejected username %r (status 0x%02x)"
                         % (self.username, status), refusal.RESET)
            return False
        self._send(self._request)
        self._set_state(REPLY)
        return True

    def _on_reply(self):
        buf = self._in
        if buf[OFF_VER] != VERSION:
            self._protocol_error("reply version 0x%02x, expected 0x05" % buf[OFF_VER])
            return False
        if len(buf) <= OFF_REP:
            return False
        code = buf[OFF_REP]
        if code != REP_SUCCEEDED:
            # RFC 1928 6: "When a reply (REP value other than X'00') indicates a failure, the SOCKS server MUST
            # terminate the TCP connection shortly after sending the reply."  The code alone decides; the rest
            # of the reply is not waited for.
            self._refuse("SOCKS5 reply %02x: %s" % (code, reply_text(code)),
                         REPLY_OUTCOME.get(code, refusal.RESET), code)
            return False
        if len(buf) < _REPLY_HEAD.size:
            return False
        _, _, rsv, atyp = _REPLY_HEAD.unpack_from(buf)
        if rsv != RSV:
            # RFC 1928 6: "Fields marked RESERVED (RSV) must be set to X'00'."
            self._protocol_error("reply reserved byte 0x%02x, expected 0x00" % rsv)
            return False
        try:
            span = address_span(buf, atyp, OFF_ADDR)
        except ValueError:
            self._protocol_error("reply address type 0x%02x" % atyp)
            return False
        if span is None:
            return False
        addr_start, addr_len = span
        end = addr_start + addr_len + _PORT.size
        if len(buf) < end:
            return False
        raw = bytes(buf[addr_start:addr_start + addr_len])
        if atyp == ATYP_DOMAIN:
            bound_host = printable(raw.decode("latin-1"), NAME_MAX)
        else:
            bound_host = str(ipaddress.ip_address(raw))
        bound_port = _PORT.unpack_from(buf, addr_start + addr_len)[0]
        # RFC 1928 6 (CONNECT): "BND.PORT contains the port number that the server assigned to connect to the
        # target host, while BND.ADDR contains the associated IP address."  What follows is the tunnel.
        self._establish(end, (bound_host, bound_port))
        return False
