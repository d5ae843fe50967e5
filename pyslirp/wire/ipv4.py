"""IPv4 header (RFC 791), parsed into and emitted from a plain value.

Theory of operation: :meth:`Ipv4Repr.parse` checks every length once, at the
top, and raises :class:`ParseError` with a short reason token (used by the
stack as a counter name):

* ``too_short``    fewer than 20 bytes, the fixed header;
* ``bad_version``  the version nibble is not 4;
* ``bad_ihl``      IHL < 5 (RFC 791 3.1: "the minimum value for a correct
                   header is 5");
* ``truncated``    the header (IHL) or the datagram (Total Length) is longer
                   than the bytes we got: the frame was cut short;
* ``bad_length``   Total Length smaller than the header itself;
* ``bad_checksum`` the header checksum does not verify (RFC 791 3.1, RFC 1071);
* ``bad_fragment`` fragment offset + payload runs past 65535 bytes.

Bytes after Total Length are link padding and are trimmed (RFC 1122 3.3.2
leaves the link free to pad).  Options are kept verbatim in ``options`` (the
stack ignores them: RFC 1122 3.2.1.8 lets a host ignore options it does not
implement) and are re-emitted by :meth:`Ipv4Repr.emit`, padded to 32 bits.

``frag_offset`` is in *bytes* (always a multiple of 8 on the wire), not in the
8-byte units of the header field.
"""

import ipaddress
import struct
from dataclasses import dataclass

from .checksum import internet_checksum
from .errors import ParseError

# version/IHL, TOS, total length, identification, flags/fragment offset, TTL, protocol, checksum, src, dst
HEADER = struct.Struct("!BBHHHBBH4s4s")
HEADER_LEN = HEADER.size            # 20
MAX_LEN = 0xFFFF
CHECKSUM_OFFSET = 10                # within HEADER, for tests and in-place patching

VERSION = 4
FLAG_RESERVED = 0x8000
FLAG_DF = 0x4000
FLAG_MF = 0x2000
OFFSET_MASK = 0x1FFF                # fragment offset, in 8-byte units

PROTO_ICMP = 1
PROTO_TCP = 6
PROTO_UDP = 17


def ip_bytes(address):
    """'10.0.0.1' -> b'\\x0a\\x00\\x00\\x01' (bytes pass through)."""
    if isinstance(address, (bytes, bytearray)):
        if len(address) != 4:
            raise ValueError("IPv4 address must be 4 bytes")
        return bytes(address)
    return ipaddress.IPv4Address(address).packed


def ip_str(address):
    """b'\\x0a\\x00\\x00\\x01' -> '10.0.0.1'."""
    return str(ipaddress.IPv4Address(bytes(address)))


def is_multicast_or_broadcast(address):
    """True when the 4-byte address names no single host: 224/4 (multicast) or 240/4 (class E, which includes
    the limited broadcast 255.255.255.255).

    Loopback (127/8) and "this network" (0/8) are not such addresses: a datagram to them names one host, and
    whether it may go there is the flow policy's decision (net/flows.py: refused unless outbound.allow names it).
    """
    return address[0] >= 224


def is_unicast(address):
    """True when the 4-byte address names a single host (RFC 1122 3.2.1.3).

    Not: 0.0.0.0/8 ("this network"), 127/8 (loopback), 224/4 (multicast),
    240/4 (class E, which includes the limited broadcast 255.255.255.255).
    """
    first = address[0]
    return first != 0 and first != 127 and first < 224


@dataclass(frozen=True)
class Ipv4Repr:
    src: bytes
    dst: bytes
    protocol: int
    payload: bytes
    ttl: int = 64
    ident: int = 0
    tos: int = 0
    dont_fragment: bool = False
    more_fragments: bool = False
    frag_offset: int = 0            # bytes
    options: bytes = b""

    @property
    def header_len(self):
        return HEADER_LEN + ((len(self.options) + 3) & ~3)

    @property
    def total_len(self):
        return self.header_len + len(self.payload)

    def buffer_len(self):
        return self.total_len

    @property
    def is_fragment(self):
        """Part of a fragmented datagram (RFC 791 3.2: MF set or offset != 0)."""
        return self.more_fragments or self.frag_offset != 0

    @classmethod
    def parse(cls, packet, verify=True):
        """Decode one datagram; trailing link padding beyond Total Length is dropped."""
        if not isinstance(packet, bytes):
            packet = bytes(packet)      # checksum.ones_sum wants bytes, not a memoryview
        n = len(packet)
        if n < HEADER_LEN:
            raise ParseError("too_short", "%d bytes" % n)
        (ver_ihl, tos, total, ident, flags_frag, ttl, protocol, _csum, src, dst) = HEADER.unpack_from(packet)
        if ver_ihl >> 4 != VERSION:
            raise ParseError("bad_version", str(ver_ihl >> 4))
        hlen = (ver_ihl & 0x0F) * 4
        if hlen < HEADER_LEN:
            raise ParseError("bad_ihl", str(ver_ihl & 0x0F))
        if hlen > n:
            raise ParseError("truncated", "header %d > %d bytes" % (hlen, n))
        if total < hlen:
            raise ParseError("bad_length", "total length %d < header %d" % (total, hlen))
        if total > n:
            raise ParseError("truncated", "total length %d > %d bytes" % (total, n))
        if verify and internet_checksum(packet[:hlen]) != 0:
            raise ParseError("bad_checksum")
        offset = (flags_frag & OFFSET_MASK) * 8
        if offset + (total - hlen) > MAX_LEN:
            raise ParseError("bad_fragment", "offset %d + %d bytes" % (offset, total - hlen))
        return cls(
            src=src, dst=dst, protocol=protocol, payload=packet[hlen:total], ttl=ttl, ident=ident,
            tos=tos, dont_fragment=bool(flags_frag & FLAG_DF), more_fragments=bool(flags_frag & FLAG_MF),
            frag_offset=offset, options=packet[HEADER_LEN:hlen])

    def emit_header(self, payload_len=None):
        """The header alone, for a payload of ``payload_len`` bytes (default: ours)."""
        if payload_len is None:
            payload_len = len(self.payload)
        opts = self.options
        if len(opts) & 3:
            opts = opts + b"\x00" * (4 - (len(opts) & 3))   # RFC 791: pad with End of Option List (0)
        hlen = HEADER_LEN + len(opts)
        if hlen > 60:
            raise ValueError("IPv4 options longer than 40 bytes")
        total = hlen + payload_len
        if total > MAX_LEN:
            raise ValueError("IPv4 datagram longer than 65535 bytes")
        if self.frag_offset & 7 or self.frag_offset // 8 > OFFSET_MASK:
            raise ValueError("fragment offset must be a multiple of 8 below 65536")
        flags = (FLAG_DF if self.dont_fragment else 0) | (FLAG_MF if self.more_fragments else 0)
        header = HEADER.pack(
            (VERSION << 4) | (hlen // 4), self.tos & 0xFF, total, self.ident & 0xFFFF,
            flags | (self.frag_offset // 8), self.ttl & 0xFF, self.protocol & 0xFF, 0, self.src, self.dst) + opts
        csum = internet_checksum(header)
        return header[:CHECKSUM_OFFSET] + struct.pack("!H", csum) + header[CHECKSUM_OFFSET + 2:]

    def emit(self):
        """The datagram: header (with checksum) + payload."""
        return self.emit_header() + self.payload
