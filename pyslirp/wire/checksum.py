"""The Internet checksum (RFC 1071), computed with C-level operations.

``array('H')`` sums 16-bit words without a per-byte Python loop.  The sum is
done in native byte order and swapped at the end when needed: the one's
complement sum is byte-order independent (RFC 1071, section 2(B)).
"""

import array
import struct
import sys

_PSEUDO = struct.Struct("!4s4sBBH")
_LITTLE = sys.byteorder == "little"


def ones_sum(data, initial=0):
    """Return the folded 16-bit one's complement sum of ``data`` (network order)."""
    words = array.array("H")
    if len(data) & 1:
        words.frombytes(bytes(data) + b"\x00")
    else:
        words.frombytes(data)
    if _LITTLE:
        words.byteswap()
    total = sum(words) + initial
    while total >> 16:
        total = (total & 0xFFFF) + (total >> 16)
    return total


def internet_checksum(data, initial=0):
    """Return the checksum field value for ``data`` (RFC 1071)."""
    return ~ones_sum(data, initial) & 0xFFFF


def pseudo_header_sum(src, dst, protocol, length):
    """Partial sum of the IPv4 pseudo-header (RFC 9293 section 3.1, RFC 768).

    Only 4-byte addresses: ``struct`` would silently cut a 16-byte IPv6 address to its first four bytes and
    yield a wrong checksum, so anything else is refused (IPv6 has its own pseudo-header, RFC 8200 8.1).
    """
    if len(src) != 4 or len(dst) != 4:
        raise ValueError("the IPv4 pseudo-header needs 4-byte addresses, got %d and %d bytes" % (len(src), len(dst)))
    return ones_sum(_PSEUDO.pack(src, dst, 0, protocol, length))
