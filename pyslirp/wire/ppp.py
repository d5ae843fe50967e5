"""The PPP frame (RFC 1661 section 2, RFC 1662 section 3) and control-packet layouts.

Theory of operation
-------------------
A deframed PPP frame is ``[0xFF 0x03] protocol information [padding]``.

*Address and Control* (RFC 1662 section 3.1/3.2): always 0xFF ("All-Stations")
and 0x03 ("Unnumbered Information").  Once Address-and-Control-Field-Compression
is negotiated the sender may omit them; RFC 1661 section 6.6: "On reception,
the Address and Control fields are decompressed by examining the first two
octets.  If they contain the values 0xff and 0x03, they are assumed to be the
Address and Control fields.  If not, it is assumed that the fields were
compressed and were not transmitted."  A frame starting with 0xFF but not 0x03
cannot be a compressed one either ("the first octet of a two octet Protocol
field will never be 0xff (since it is not even)", and the single octet 0xFF
would be protocol 0x00FF, which is reserved), so it is rejected as
``bad_address``.

*Protocol* (RFC 1661 section 2): "all Protocols MUST be odd; the least
significant bit of the least significant octet MUST equal '1'.  Also, all
Protocols MUST be assigned such that the least significant bit of the most
significant octet equals '0'."  So an odd first octet is a complete,
Protocol-Field-Compressed protocol (section 6.5), an even one is followed by an
odd second octet; anything else is ``bad_protocol``.

*Never compress LCP*: section 6.5 "The Protocol field MUST NOT be compressed
when sending any LCP packet" and section 6.6 "The Address and Control fields
MUST NOT be compressed when sending any LCP packet", which :func:`build_frame`
enforces whatever the caller asks for.

*Control packets* (LCP, IPCP, ... RFC 1661 section 5): code, identifier, a
16-bit length covering the 4-octet header and the data.  A length below 4 or
beyond the received information is malformed; octets beyond the length are
padding and ignored ("Octets outside the range of the Length field should be
treated as Data Link Layer padding and SHOULD be ignored on reception").
*Options* (section 6) are type, length (including these two octets), value; a
length below 2 or running past the end of the data is malformed.

Parsers raise only :class:`~pyslirp.wire.errors.ParseError`; builders raise
``ValueError`` for arguments no caller should pass.
"""

import struct

from pyslirp.wire.errors import ParseError

PROTO_IP = 0x0021
PROTO_IPCP = 0x8021
PROTO_LCP = 0xC021
PROTO_PAP = 0xC023
PROTO_CHAP = 0xC223
PROTO_IPV6 = 0x0057
PROTO_IPV6CP = 0x8057
PROTO_CCP = 0x80FD
PROTO_VJC = 0x002D
PROTO_VJUC = 0x002F

PROTOCOL_NAMES = {
    PROTO_IP: "IP", PROTO_IPCP: "IPCP", PROTO_LCP: "LCP", PROTO_PAP: "PAP", PROTO_CHAP: "CHAP",
    PROTO_IPV6: "IPv6", PROTO_IPV6CP: "IPV6CP", PROTO_CCP: "CCP", PROTO_VJC: "VJ-C", PROTO_VJUC: "VJ-UC",
}

# Control packet codes (RFC 1661 section 5; 8-11 are LCP only).
CONFIGURE_REQUEST = 1
CONFIGURE_ACK = 2
CONFIGURE_NAK = 3
CONFIGURE_REJECT = 4
TERMINATE_REQUEST = 5
TERMINATE_ACK = 6
CODE_REJECT = 7
PROTOCOL_REJECT = 8
ECHO_REQUEST = 9
ECHO_REPLY = 10
DISCARD_REQUEST = 11

ADDRESS = 0xFF
CONTROL = 0x03
_ADDR_CTRL = b"\xff\x03"

_PROTO16 = struct.Struct("!H")
_PROTO8 = struct.Struct("!B")
_CP_HEADER = struct.Struct("!BBH")   # code, identifier, length
_OPT_HEADER = struct.Struct("!BB")   # type, length
CP_HEADER_LEN = _CP_HEADER.size
OPT_HEADER_LEN = _OPT_HEADER.size


def protocol_name(protocol):
    """A short name for logs: 'LCP', 'IP', or '0x1234'."""
    return PROTOCOL_NAMES.get(protocol, "0x%04x" % protocol)


def valid_protocol(protocol):
    """RFC 1661 section 2: odd low octet, even high octet, 16 bits."""
    return 0 < protocol <= 0xFFFF and protocol & 0x0001 == 1 and protocol & 0x0100 == 0


def parse_frame(frame):
    """Split a deframed PPP frame into ``(protocol, information)`` (ACFC and PFC aware)."""
    frame = bytes(frame)
    if frame[:2] == _ADDR_CTRL:
        start = 2
    elif frame[:1] == b"\xff":
        detail = ("address 0xff followed by control 0x%02x" % frame[1]) if len(frame) > 1 \
            else "lone address octet"
        raise ParseError("bad_address", detail)
    else:
        start = 0
    if len(frame) <= start:
        raise ParseError("too_short", "no protocol field")
    first = frame[start]
    if first & 1:
        # RFC 1661 6.5: a compressed (single octet) protocol field.
        return first, frame[start + 1:]
    if len(frame) < start + 2:
        raise ParseError("too_short", "truncated protocol field")
    protocol = _PROTO16.unpack_from(frame, start)[0]
    if not protocol & 1:
        raise ParseError("bad_protocol", "protocol 0x%04x is even" % protocol)
    return protocol, frame[start + 2:]


def build_frame(protocol, info, acfc=False, pfc=False):
    """Build address/control + protocol + information (no FCS: see ``hdlc.encode_frame``).

    ``acfc``/``pfc`` say the peer accepts compressed fields (it sent the option
    and we acknowledged it); LCP is never compressed (RFC 1661 6.5, 6.6).
    """
    if not valid_protocol(protocol):
        raise ValueError("invalid PPP protocol number 0x%x" % protocol)
    if protocol == PROTO_LCP:
        acfc = pfc = False
    if pfc and protocol < 0xFF:
        # 0x00FF is reserved ("compression inefficient"): as a single octet it
        # would look like an Address field to a receiver (RFC 1661 6.6).
        proto = _PROTO8.pack(protocol)
    else:
        proto = _PROTO16.pack(protocol)
    if acfc:
        return proto + bytes(info)
    return _ADDR_CTRL + proto + bytes(info)


def parse_cp(info):
    """Parse a control packet into ``(code, identifier, data)``; padding is dropped."""
    if len(info) < CP_HEADER_LEN:
        raise ParseError("too_short", "control packet of %d octets" % len(info))
    code, identifier, length = _CP_HEADER.unpack_from(info, 0)
    if length < CP_HEADER_LEN:
        raise ParseError("bad_length", "length field %d < 4" % length)
    if length > len(info):
        raise ParseError("bad_length", "length field %d > %d received" % (length, len(info)))
    return code, identifier, bytes(info[CP_HEADER_LEN:length])


def build_cp(code, identifier, data=b""):
    """Build a control packet: code, identifier, length, data."""
    length = CP_HEADER_LEN + len(data)
    if length > 0xFFFF:
        raise ValueError("control packet too long (%d)" % length)
    return _CP_HEADER.pack(code & 0xFF, identifier & 0xFF, length) + bytes(data)


def parse_options(data):
    """Parse a configuration option list into ``[(type, value), ...]`` in order."""
    data = bytes(data)
    options = []
    pos = 0
    end = len(data)
    while pos < end:
        if end - pos < OPT_HEADER_LEN:
            raise ParseError("bad_option", "truncated option header at offset %d" % pos)
        kind, length = _OPT_HEADER.unpack_from(data, pos)
        if length < OPT_HEADER_LEN:
            raise ParseError("bad_option", "option %d length %d < 2" % (kind, length))
        if pos + length > end:
            raise ParseError("bad_option", "option %d length %d overruns the packet" % (kind, length))
        options.append((kind, data[pos + OPT_HEADER_LEN:pos + length]))
        pos += length
    return options


def build_options(options):
    """Build a configuration option list from ``[(type, value), ...]``."""
    out = []
    for kind, value in options:
        length = OPT_HEADER_LEN + len(value)
        if length > 0xFF:
            raise ValueError("option %d value too long (%d)" % (kind, len(value)))
        out.append(_OPT_HEADER.pack(kind, length))
        out.append(bytes(value))
    return b"".join(out)
