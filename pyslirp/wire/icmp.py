"""ICMP messages (RFC 792), parsed into and emitted from a plain value.

Theory of operation: every ICMP message is type, code, checksum and four
"rest of header" bytes whose meaning depends on the type (identifier and
sequence number for Echo; unused/next-hop MTU for Destination Unreachable;
gateway for Redirect), followed by a payload (the echoed data, or the
offending datagram's header and first bytes for error messages).
:class:`IcmpRepr` keeps ``rest`` as 4 raw bytes and offers helpers for the
types the stack builds.  The checksum covers the whole message (RFC 792).

Parse errors: ``too_short`` (< 8 bytes), ``bad_checksum``.
"""

import struct
from dataclasses import dataclass

from .checksum import internet_checksum, ones_sum
from .errors import ParseError

HEADER = struct.Struct("!BBH4s")            # type, code, checksum, rest of header
HEADER_LEN = HEADER.size                    # 8
ECHO_REST = struct.Struct("!HH")            # identifier, sequence number
UNREACH_REST = struct.Struct("!HH")         # unused, next-hop MTU (RFC 1191)

TYPE_ECHO_REPLY = 0
TYPE_DEST_UNREACHABLE = 3
TYPE_SOURCE_QUENCH = 4
TYPE_REDIRECT = 5
TYPE_ECHO_REQUEST = 8
TYPE_TIME_EXCEEDED = 11
TYPE_PARAMETER_PROBLEM = 12
TYPE_TIMESTAMP = 13
TYPE_TIMESTAMP_REPLY = 14

# Destination Unreachable codes (RFC 792, RFC 1122 3.2.2.1)
CODE_NET_UNREACHABLE = 0
CODE_HOST_UNREACHABLE = 1
CODE_PROTOCOL_UNREACHABLE = 2
CODE_PORT_UNREACHABLE = 3
CODE_FRAG_NEEDED = 4
CODE_ADMIN_PROHIBITED = 13         # RFC 1812 5.2.7.1: communication administratively prohibited
# Time Exceeded codes
CODE_TTL_EXCEEDED = 0
CODE_REASSEMBLY_EXCEEDED = 1

ERROR_TYPES = frozenset((TYPE_DEST_UNREACHABLE, TYPE_SOURCE_QUENCH, TYPE_REDIRECT, TYPE_TIME_EXCEEDED,
                         TYPE_PARAMETER_PROBLEM))
# Query/informational types (RFC 792, RFC 950): everything else is treated as an error message when deciding
# whether we may answer with an ICMP error (RFC 1122 3.2.2: never an error about an error).
QUERY_TYPES = frozenset((TYPE_ECHO_REPLY, TYPE_ECHO_REQUEST, TYPE_TIMESTAMP, TYPE_TIMESTAMP_REPLY, 15, 16, 17, 18))

# RFC 1812 4.3.2.3: an ICMP error quotes as much of the offending datagram as fits in 576 bytes.
MAX_QUOTE = 576 - 20 - HEADER_LEN


@dataclass(frozen=True)
class IcmpRepr:
    type: int
    code: int
    rest: bytes = b"\x00\x00\x00\x00"
    payload: bytes = b""

    @classmethod
    def parse(cls, data, verify=True):
        if not isinstance(data, bytes):
            data = bytes(data)          # checksum.ones_sum wants bytes, not a memoryview
        n = len(data)
        if n < HEADER_LEN:
            raise ParseError("too_short", "%d bytes" % n)
        if verify and internet_checksum(data) != 0:
            raise ParseError("bad_checksum")
        type_, code, _csum, rest = HEADER.unpack_from(data)
        return cls(type=type_, code=code, rest=rest, payload=data[HEADER_LEN:])

    def buffer_len(self):
        return HEADER_LEN + len(self.payload)

    def emit(self):
        if len(self.rest) != 4:
            raise ValueError("ICMP rest of header must be 4 bytes")
        header = HEADER.pack(self.type & 0xFF, self.code & 0xFF, 0, self.rest)
        csum = internet_checksum(self.payload, initial=ones_sum(header))
        return HEADER.pack(self.type & 0xFF, self.code & 0xFF, csum, self.rest) + self.payload

    @property
    def is_error(self):
        """An error message, or a type we do not know (treated as one: RFC 1122 3.2.2)."""
        return self.type not in QUERY_TYPES

    # -- Echo (RFC 792 "Echo or Echo Reply Message")
    @classmethod
    def echo(cls, ident, seq, payload=b"", reply=False):
        return cls(TYPE_ECHO_REPLY if reply else TYPE_ECHO_REQUEST, 0, ECHO_REST.pack(ident & 0xFFFF, seq & 0xFFFF),
                   payload)

    @property
    def echo_ident(self):
        return ECHO_REST.unpack(self.rest)[0]

    @property
    def echo_seq(self):
        return ECHO_REST.unpack(self.rest)[1]

    # -- Errors quoting the offending datagram
    @classmethod
    def dest_unreachable(cls, code, quoted, next_hop_mtu=0):
        """Destination Unreachable; ``quoted`` is the offending datagram (trimmed to MAX_QUOTE)."""
        return cls(TYPE_DEST_UNREACHABLE, code, UNREACH_REST.pack(0, next_hop_mtu & 0xFFFF), bytes(quoted[:MAX_QUOTE]))

    @classmethod
    def time_exceeded(cls, code, quoted):
        return cls(TYPE_TIME_EXCEEDED, code, b"\x00\x00\x00\x00", bytes(quoted[:MAX_QUOTE]))

