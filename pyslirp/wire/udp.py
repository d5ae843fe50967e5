"""UDP header (RFC 768), parsed into and emitted from a plain value.

Theory of operation: 8 bytes of source port, destination port, length and
checksum.  The checksum covers the IPv4 pseudo-header, the UDP header and the
data (RFC 768 "Fields").  A transmitted checksum of zero means the sender
computed none (RFC 768: "An all zero transmitted checksum value means that
the transmitter generated no checksum"); when we compute a sum of zero we
send 0xFFFF instead.  Bytes beyond the UDP length field belong to nobody and
are trimmed.

Parse errors: ``too_short`` (< 8 bytes), ``bad_length`` (length field < 8),
``truncated`` (length field > bytes we got), ``bad_checksum``.
"""

import struct
from dataclasses import dataclass

from .checksum import internet_checksum, ones_sum, pseudo_header_sum
from .errors import ParseError

HEADER = struct.Struct("!HHHH")     # source port, destination port, length, checksum
HEADER_LEN = HEADER.size            # 8
PROTO_UDP = 17


def _checksum(src_ip, dst_ip, header, payload):
    initial = pseudo_header_sum(src_ip, dst_ip, PROTO_UDP, len(header) + len(payload))
    return internet_checksum(payload, initial=ones_sum(header, initial))


@dataclass(frozen=True)
class UdpRepr:
    src_port: int
    dst_port: int
    payload: bytes = b""

    @classmethod
    def parse(cls, datagram, src_ip, dst_ip, verify=True):
        if not isinstance(datagram, bytes):
            datagram = bytes(datagram)  # checksum.ones_sum wants bytes, not a memoryview
        n = len(datagram)
        if n < HEADER_LEN:
            raise ParseError("too_short", "%d bytes" % n)
        src_port, dst_port, length, csum = HEADER.unpack_from(datagram)
        if length < HEADER_LEN:
            raise ParseError("bad_length", str(length))
        if length > n:
            raise ParseError("truncated", "length %d > %d bytes" % (length, n))
        data = datagram[:length] if length < n else datagram
        if verify and csum != 0:
            # RFC 768: the sum over pseudo-header + datagram, checksum field included, must be all ones.
            initial = pseudo_header_sum(src_ip, dst_ip, PROTO_UDP, length)
            if internet_checksum(data, initial=initial) != 0:
                raise ParseError("bad_checksum")
        return cls(src_port=src_port, dst_port=dst_port, payload=data[HEADER_LEN:])

    def buffer_len(self):
        return HEADER_LEN + len(self.payload)

    def emit(self, src_ip, dst_ip):
        length = HEADER_LEN + len(self.payload)
        if length > 0xFFFF:
            raise ValueError("UDP datagram longer than 65535 bytes")
        header = HEADER.pack(self.src_port, self.dst_port, length, 0)
        csum = _checksum(src_ip, dst_ip, header, self.payload) or 0xFFFF
        return HEADER.pack(self.src_port, self.dst_port, length, csum) + self.payload
