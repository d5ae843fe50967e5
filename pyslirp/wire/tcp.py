"""TCP segment header (RFC 9293 section 3.1) with the options pyslirp speaks.

Theory of operation: :meth:`TcpRepr.parse` checks the fixed header length, the
data offset and (unless told not to) the checksum over the IPv4 pseudo-header
once, then decodes the options into plain fields and returns a frozen value.
:meth:`TcpRepr.emit` is the exact inverse: it lays the options out in 4-byte
groups padded with NOPs (the layout Linux uses, so that receivers can take
their fast path), fills in the data offset and computes the checksum.

Options (RFC 9293 3.1, 3.2):

* End of Option List (0) ends parsing; No-Operation (1) is skipped.
* MSS (2, length 4), RFC 9293 3.7.1.
* Window Scale (3, length 3), RFC 7323 section 2.
* SACK-Permitted (4, length 2) and SACK (5, length 2 + 8n), RFC 2018.
* Timestamps (8, length 10), RFC 7323 section 3.
* Any other kind is skipped using its length byte ("a TCP implementation MUST
  ignore without error any TCP option it does not implement", RFC 9293
  3.1, MUST-64).

A length byte that is missing, below 2, runs past the header, or does not
match the fixed length of a known option raises ``ParseError("bad_option")``
(RFC 9293 3.1: "an implementation MUST be prepared to handle an illegal
option length (e.g., zero)", MUST-7).

Emission limits the SACK blocks to what fits in the 40 bytes of option space
(3 blocks next to timestamps, 4 without).
"""

import struct
from dataclasses import dataclass
from typing import Optional, Tuple

from .checksum import ones_sum, pseudo_header_sum
from .errors import ParseError

FIN = 0x01
SYN = 0x02
RST = 0x04
PSH = 0x08
ACK = 0x10
URG = 0x20
ECE = 0x40
CWR = 0x80

_FLAG_NAMES = ((SYN, "SYN"), (FIN, "FIN"), (RST, "RST"), (PSH, "PSH"), (ACK, "ACK"),
               (URG, "URG"), (ECE, "ECE"), (CWR, "CWR"))

PROTO_TCP = 6

# src port, dst port, seq, ack, data offset (high nibble), flags, window, checksum, urgent pointer
HEADER = struct.Struct("!HHIIBBHHH")
HEADER_LEN = HEADER.size              # 20
CHECKSUM_OFFSET = 16
MAX_OPTIONS_LEN = 40                  # data offset is 4 bits of 32-bit words: 60 - 20

OPT_EOL = 0
OPT_NOP = 1
OPT_MSS = 2
OPT_WS = 3
OPT_SACK_PERM = 4
OPT_SACK = 5
OPT_TS = 8

_FIXED_OPTION_LEN = {OPT_MSS: 4, OPT_WS: 3, OPT_SACK_PERM: 2, OPT_TS: 10}

_OPT_MSS = struct.Struct("!BBH")                 # kind, length, mss
_OPT_NOP_WS = struct.Struct("!BBBB")             # NOP, kind, length, shift
_OPT_NOP_NOP_SACKPERM = struct.Struct("!BBBB")   # NOP, NOP, kind, length
_OPT_SACKPERM_TS = struct.Struct("!BBBBII")      # SACK-permitted kind, length, TS kind, length, TSval, TSecr
_OPT_NOP_NOP_TS = struct.Struct("!BBBBII")       # NOP, NOP, TS kind, length, TSval, TSecr
_OPT_NOP_NOP_SACK = struct.Struct("!BBBB")       # NOP, NOP, kind, length (blocks follow)
_SACK_BLOCK = struct.Struct("!II")
_U16 = struct.Struct("!H")
_U32x2 = struct.Struct("!II")

TS_OPTION_LEN = _OPT_NOP_NOP_TS.size             # 12: what every segment pays once timestamps are on


def sack_option_len(nblocks):
    """Bytes a SACK option with ``nblocks`` blocks takes in our layout (0 for none)."""
    return _OPT_NOP_NOP_SACK.size + _SACK_BLOCK.size * nblocks if nblocks else 0


def max_sack_blocks(timestamps):
    """How many SACK blocks fit next to the other options of a non-SYN segment (RFC 2018 section 3)."""
    room = MAX_OPTIONS_LEN - (TS_OPTION_LEN if timestamps else 0) - _OPT_NOP_NOP_SACK.size
    return room // _SACK_BLOCK.size


def flags_str(flags):
    names = [name for bit, name in _FLAG_NAMES if flags & bit]
    return "|".join(names) if names else "-"


@dataclass(frozen=True)
class TcpRepr:
    """A parsed or to-be-emitted TCP segment.

    ``timestamp`` is ``(TSval, TSecr)`` or None; ``sack_blocks`` is a tuple of
    ``(left_edge, right_edge)`` sequence numbers.  ``window`` is the raw 16-bit
    field: scaling is the connection's business (RFC 7323 section 2.3).
    """

    src_port: int
    dst_port: int
    seq: int
    ack: int
    flags: int
    window: int
    urgent: int = 0
    mss: Optional[int] = None
    wscale: Optional[int] = None
    sack_permitted: bool = False
    sack_blocks: Tuple[Tuple[int, int], ...] = ()
    timestamp: Optional[Tuple[int, int]] = None
    payload: bytes = b""

    @property
    def seg_len(self):
        """SEG.LEN: payload plus one for SYN and one for FIN (RFC 9293 3.4)."""
        n = len(self.payload)
        if self.flags & SYN:
            n += 1
        if self.flags & FIN:
            n += 1
        return n

    def has(self, flag):
        return bool(self.flags & flag)

    def __str__(self):
        text = "%d>%d %s seq=%d ack=%d win=%d len=%d" % (
            self.src_port, self.dst_port, flags_str(self.flags), self.seq, self.ack, self.window,
            len(self.payload))
        if self.mss is not None:
            text += " mss=%d" % self.mss
        if self.wscale is not None:
            text += " ws=%d" % self.wscale
        if self.sack_permitted:
            text += " sackOK"
        if self.timestamp is not None:
            text += " ts=%d/%d" % self.timestamp
        if self.sack_blocks:
            text += " sack=" + ",".join("%d-%d" % b for b in self.sack_blocks)
        return text

    # ------------------------------------------------------------------ parse

    @classmethod
    def parse(cls, segment, src_ip, dst_ip, verify=True):
        """Decode ``segment`` (the IPv4 payload) sent from ``src_ip`` to ``dst_ip``."""
        length = len(segment)
        if length < HEADER_LEN:
            raise ParseError("too_short", "%d bytes" % length)
        src_port, dst_port, seq, ack, offset_byte, flags, window, _, urgent = \
            HEADER.unpack_from(segment, 0)
        header_len = (offset_byte >> 4) * 4
        if header_len < HEADER_LEN or header_len > length:
            raise ParseError("bad_offset", "data offset %d, %d bytes" % (header_len, length))
        if verify:
            # RFC 9293 3.1: the checksum covers the pseudo-header, the header and the data.
            initial = pseudo_header_sum(src_ip, dst_ip, PROTO_TCP, length)
            if ones_sum(segment, initial) != 0xFFFF:
                raise ParseError("bad_checksum")
        mss = wscale = timestamp = None
        sack_permitted = False
        sack_blocks = ()
        if header_len > HEADER_LEN:
            options = bytes(segment[HEADER_LEN:header_len])
            mss, wscale, sack_permitted, sack_blocks, timestamp = _parse_options(options)
        return cls(src_port, dst_port, seq, ack, flags, window, urgent, mss, wscale,
                   sack_permitted, sack_blocks, timestamp, bytes(segment[header_len:]))

    # ------------------------------------------------------------------- emit

    def options_bytes(self):
        parts = []
        if self.mss is not None:
            parts.append(_OPT_MSS.pack(OPT_MSS, 4, self.mss))
        if self.wscale is not None:
            parts.append(_OPT_NOP_WS.pack(OPT_NOP, OPT_WS, 3, self.wscale))
        if self.sack_permitted and self.timestamp is not None:
            parts.append(_OPT_SACKPERM_TS.pack(OPT_SACK_PERM, 2, OPT_TS, 10,
                                               self.timestamp[0], self.timestamp[1]))
        else:
            if self.sack_permitted:
                parts.append(_OPT_NOP_NOP_SACKPERM.pack(OPT_NOP, OPT_NOP, OPT_SACK_PERM, 2))
            if self.timestamp is not None:
                parts.append(_OPT_NOP_NOP_TS.pack(OPT_NOP, OPT_NOP, OPT_TS, 10,
                                                  self.timestamp[0], self.timestamp[1]))
        if self.sack_blocks:
            used = sum(len(p) for p in parts)
            room = (MAX_OPTIONS_LEN - used - _OPT_NOP_NOP_SACK.size) // _SACK_BLOCK.size
            blocks = self.sack_blocks[:max(room, 0)]
            if blocks:
                parts.append(_OPT_NOP_NOP_SACK.pack(OPT_NOP, OPT_NOP, OPT_SACK,
                                                    2 + _SACK_BLOCK.size * len(blocks)))
                parts.extend(_SACK_BLOCK.pack(left, right) for left, right in blocks)
        options = b"".join(parts)
        if len(options) > MAX_OPTIONS_LEN:
            raise ValueError("TCP options too long: %d bytes" % len(options))
        return options

    def header_len(self):
        return HEADER_LEN + len(self.options_bytes())

    def buffer_len(self):
        return self.header_len() + len(self.payload)

    def emit(self, src_ip, dst_ip):
        """Encode the segment, checksum included, for ``src_ip`` -> ``dst_ip``."""
        options = self.options_bytes()
        header_len = HEADER_LEN + len(options)
        header = bytearray(header_len)
        HEADER.pack_into(header, 0, self.src_port, self.dst_port, self.seq & 0xFFFFFFFF,
                         self.ack & 0xFFFFFFFF, (header_len // 4) << 4, self.flags & 0xFF,
                         self.window, 0, self.urgent)
        header[HEADER_LEN:] = options
        payload = self.payload
        # The header length is a multiple of 4, so the sum of the whole is the sum of the parts.
        total = ones_sum(header, pseudo_header_sum(src_ip, dst_ip, PROTO_TCP,
                                                   header_len + len(payload)))
        if payload:
            total = ones_sum(payload, total)
        _U16.pack_into(header, CHECKSUM_OFFSET, ~total & 0xFFFF)
        return bytes(header) + bytes(payload)


def _parse_options(options):
    """Decode the option bytes; returns (mss, wscale, sack_permitted, sack_blocks, timestamp)."""
    mss = wscale = timestamp = None
    sack_permitted = False
    sack_blocks = ()
    end = len(options)
    i = 0
    while i < end:
        kind = options[i]
        if kind == OPT_EOL:
            break
        if kind == OPT_NOP:
            i += 1
            continue
        if i + 1 >= end:
            raise ParseError("bad_option", "kind %d without length" % kind)
        length = options[i + 1]
        if length < 2 or i + length > end:
            raise ParseError("bad_option", "kind %d length %d" % (kind, length))
        expected = _FIXED_OPTION_LEN.get(kind)
        if expected is not None and length != expected:
            raise ParseError("bad_option", "kind %d length %d" % (kind, length))
        if kind == OPT_MSS:
            mss = _U16.unpack_from(options, i + 2)[0]
        elif kind == OPT_WS:
            wscale = options[i + 2]
        elif kind == OPT_SACK_PERM:
            sack_permitted = True
        elif kind == OPT_TS:
            timestamp = _U32x2.unpack_from(options, i + 2)
        elif kind == OPT_SACK:
            if (length - 2) % _SACK_BLOCK.size or length == 2:
                raise ParseError("bad_option", "SACK length %d" % length)
            sack_blocks = tuple(_SACK_BLOCK.iter_unpack(options[i + 2:i + length]))
        i += length
    return mss, wscale, sack_permitted, sack_blocks, timestamp
