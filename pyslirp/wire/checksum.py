"""The Internet checksum (RFC 1071), computed with C-level operations.

The sum is taken as the data's value as one integer modulo 0xFFFF (see
:func:`ones_sum`): C-level operations, no per-byte or per-word Python loop.
"""

import struct

_PSEUDO = struct.Struct("!4s4sBBH")


def ones_sum(data, initial=0):
    """Return the folded 16-bit one's complement sum of ``data`` (network order).

    The bytes read as one big-endian integer are the sum of their 16-bit words times powers of 65536, and
    65536 is 1 modulo 65535, so the one's complement sum is that integer modulo 0xFFFF: one C-level
    conversion and one division, with no Python object per word.  Folding with end-around carry yields
    0xFFFF, never 0, for a non-zero total, which is where the remainder says 0.  An odd length is padded
    with a zero byte (RFC 1071 section 4.1), i.e. shifted by 8 bits.
    """
    total = int.from_bytes(data, "big")
    if len(data) & 1:
        total <<= 8
    total += initial
    folded = total % 0xFFFF
    return folded if folded or not total else 0xFFFF


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
    # bytes(): PyPy's struct takes no bytearray for "4s" (on bytes it is the object itself, no copy).
    return ones_sum(_PSEUDO.pack(bytes(src), bytes(dst), 0, protocol, length))
