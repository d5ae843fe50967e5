"""PPP Deflate (RFC 1979): one compressor and one decompressor per direction, interoperable with Linux ppp_deflate.

Theory of operation
-------------------
A compressed packet is PPP protocol 0x00FD whose information field is a
16-bit sequence number followed by Deflate data (RFC 1951, raw: no zlib
header).  The data decompresses to the original protocol field -- one octet
when the protocol is below 0x100, as with Protocol-Field-Compression, else two
-- and the original information field.  Both ends keep one history per
direction for the whole CCP session: every packet is compressed with
``Z_SYNC_FLUSH`` (so that it can be decompressed on its own, given the
history), and the sequence number "starts at 0 when the dictionary is cleared,
and is incremented by 1 for each packet, including uncompressed packets"
(RFC 1979 2.1).

What Linux does, and what this module therefore does:

* Only protocols 0x0001-0x3FFF (network-layer data) take part, not 0x00FD and
  0x00FB themselves (``z_compress`` / ``z_incomp``): control protocols
  (LCP, IPCP, CCP) are never compressed and never enter the history.
* The compressor runs every such packet through the history.  When the
  result is not shorter than the original (``olen < isize``), the original is
  sent instead, but it has entered the history and used a sequence number all
  the same; the receiver does the same with every uncompressed packet it gets
  (``z_incomp``), so both histories stay equal.
* A sync flush ends in an empty stored block, ``00 00 FF FF``.  Linux's
  compressor (``Z_PACKET_FLUSH``) sends only the stored block's 3-bit type and
  the padding to the octet boundary, and its decompressor *requires* exactly
  that at the end of a packet (``zlib_inflateSyncPacket``): a complete empty
  stored block at the end of the packet is a fatal decompression error for it.
  So :class:`DeflateCompressor` removes the last four octets of each packet and
  :class:`DeflateDecompressor` puts them back before inflating, which leaves
  its inflater exactly at a block boundary between packets.
* Adding an uncompressed packet to the decompressor's history (Linux's
  ``inflateIncomp``, which Python's zlib lacks) is done by inflating a stored
  block that carries it: one octet of block header (not final, type 0),
  LEN and its complement, the protocol field and the information field.

Incompressible data (an archive, an encrypted stream: most bulk transfers
today) costs zlib as much as text and more -- about 70-80 us per 1460-byte
packet here, at any level -- only to be sent as it was.  So once SKIP_RUN
packets of at least SKIP_MIN octets in a row did not shrink, the compressor
stops trying: packets are sent as they are (which the receiver's
``z_incomp`` takes exactly as a packet that did not shrink) and only enter a
copy of the history we keep, but every PROBE_EVERY-th, whatever its size,
is tried again; one that shrinks ends the run.  Before the next packet that
is tried the compressor is started afresh with the copy's last window as its
dictionary (``zdict``): its back-references then reach exactly the bytes the
receiver's history holds, skipped packets included.  That restart costs
about as much as compressing one large packet, which is why the small
packets among the run (our ACKs of a transfer the other way, VJ-compressed
to a few octets that Deflate cannot shorten anyway) are skipped too, rather
than each paying for one.  A mix of compressible and incompressible packets
(every run shorter than SKIP_RUN) is compressed packet by packet as before.

A decompression error (sequence number out of step, corrupt Deflate data, a
packet that would inflate beyond the MRU) raises ``ParseError``; the history
is then unusable until both ends reset it (CCP Reset-Request / Reset-Ack,
:mod:`pyslirp.ppp.ccp`).  The decompressor never produces more than the MRU
allows: inflation is bounded, so a small packet cannot expand without limit.
"""

import struct
import zlib

from pyslirp.wire import ppp as wppp
from pyslirp.wire.errors import ParseError

PROTO_COMP = 0x00FD          # RFC 1962: compressed datagram
PROTO_COMP_LINK = 0x00FB     # RFC 1962: individual link compressed datagram (multilink)
MAX_DATA_PROTOCOL = 0x3FFF   # Linux z_compress / z_incomp: "proto > 0x3fff" is left alone

MIN_WINDOW = 9               # window size 8 triggers a zlib bug: pppd's DEFLATE_MIN_WORKS
MAX_WINDOW = 15
LEVEL = 6                    # zlib's default, as Linux (Z_DEFAULT_COMPRESSION)
SKIP_MIN = 256               # packets this long (protocol field and information) count towards a run ...
SKIP_RUN = 4                 # ... and after this many of them in a row that did not shrink, packets go untried
PROBE_EVERY = 16             # ... but one in this many (see "Incompressible data")

SEQ = struct.Struct("!H")
SEQ_LEN = SEQ.size
_STORED_HEADER = struct.Struct("<BHH")      # BFINAL=0 BTYPE=00 (padding to the octet), LEN, NLEN
_PROTO8 = struct.Struct("!B")
_PROTO16 = struct.Struct("!H")
EMPTY_STORED_BLOCK = b"\x00\x00\xff\xff"     # what Z_SYNC_FLUSH ends with after the block header


def compressible(protocol):
    """Whether packets of ``protocol`` go through the Deflate history (Linux's rule)."""
    return protocol <= MAX_DATA_PROTOCOL and protocol not in (PROTO_COMP, PROTO_COMP_LINK)


def _protocol_field(protocol):
    return _PROTO8.pack(protocol) if protocol < 0x100 else _PROTO16.pack(protocol)


class DeflateCompressor(object):
    """One direction's compressor: ``compress(protocol, info)`` -> what to send."""

    def __init__(self, window_bits=MAX_WINDOW, level=LEVEL):
        if not MIN_WINDOW <= window_bits <= MAX_WINDOW:
            raise ValueError("window_bits must be %d..%d, not %r" % (MIN_WINDOW, MAX_WINDOW, window_bits))
        self.window_bits = window_bits
        self.level = level
        self.seq = 0
        self.packets = 0             # packets sent compressed
        self.incompressible = 0      # packets that went through the history but were sent as they were
        self.bytes_in = 0            # protocol + information octets before compression
        self.bytes_out = 0           # the same packets as sent (compressed or not)
        self.skipped = 0             # of the incompressible: sent as they were without being tried
        self._z = None
        self._history = bytearray()  # what entered the history, at least its last window (for a restart)
        self._stale = False          # packets entered the history without passing through self._z
        self._run = 0                # large packets in a row that did not shrink (none shrank in between)
        self._since_probe = 0        # packets skipped since the last one tried
        self.reset()

    def reset(self):
        """Clear the history (CCP Configure-Ack or Reset-Ack sent)."""
        self._z = zlib.compressobj(self.level, zlib.DEFLATED, -self.window_bits)
        del self._history[:]
        self._stale = False
        self._run = self._since_probe = 0
        self.seq = 0

    def _remember(self, field, info):
        """``field`` and ``info`` entered the history: keep the copy's last window (trimmed now and then)."""
        history = self._history
        history += field
        history += info
        window = 1 << self.window_bits
        if len(history) > 2 * window:
            del history[:-window]

    def _compressor(self):
        """The compressor, started afresh on the history's copy when packets were skipped since it last ran."""
        if self._stale:
            window = 1 << self.window_bits
            self._z = zlib.compressobj(self.level, zlib.DEFLATED, -self.window_bits,
                                       zdict=bytes(self._history[-window:]))
            self._stale = False
        return self._z

    def compress(self, protocol, info, send_compressed=True):
        """``(PROTO_COMP, seq + data)`` when that is shorter (and allowed), else ``(protocol, info)``.

        Every compressible packet enters the history and takes a sequence number either way.
        """
        if not compressible(protocol):
            return protocol, info
        field = _protocol_field(protocol)
        seq = self.seq
        self.seq = (seq + 1) & 0xFFFF
        size = len(field) + len(info)
        self.bytes_in += size
        large = size >= SKIP_MIN
        if self._run >= SKIP_RUN and self._since_probe < PROBE_EVERY - 1:
            # A run of incompressible packets: this one goes as it is, untried (see "Incompressible data").
            self._since_probe += 1
            self._remember(field, info)
            self._stale = True
            self.skipped += 1
            self.incompressible += 1
            self.bytes_out += size
            return protocol, info
        z = self._compressor()
        data = z.compress(field) + z.compress(info) + z.flush(zlib.Z_SYNC_FLUSH)
        # RFC 1979 / Linux: the flush's empty stored block is not sent (see the module docstring).
        data = data[:-len(EMPTY_STORED_BLOCK)]
        self._remember(field, info)
        shrinks = SEQ_LEN + len(data) < len(info)
        self._since_probe = 0
        if shrinks:
            self._run = 0
        elif large:
            self._run += 1
        if send_compressed and shrinks:
            self.packets += 1
            self.bytes_out += 1 + SEQ_LEN + len(data)
            return PROTO_COMP, SEQ.pack(seq) + data
        self.incompressible += 1
        self.bytes_out += size
        return protocol, info


class DeflateDecompressor(object):
    """One direction's decompressor: ``decompress(info)`` for 0x00FD packets, ``incomp`` for the others."""

    def __init__(self, mru=1500):
        self.mru = mru
        self.seq = 0
        self.packets = 0             # compressed packets decompressed
        self.incompressible = 0      # uncompressed packets added to the history
        self._z = None
        self.reset()

    def reset(self):
        """Clear the history (CCP Configure-Ack or Reset-Ack received)."""
        self._z = zlib.decompressobj(-MAX_WINDOW)
        self.seq = 0

    def decompress(self, info):
        """``(protocol, information)`` of one compressed packet; ParseError if it cannot be decompressed."""
        if len(info) <= SEQ_LEN:
            raise ParseError("too_short", "compressed packet of %d octets" % len(info))
        seq = SEQ.unpack_from(info)[0]
        if seq != self.seq:
            raise ParseError("bad_sequence", "sequence number %d, expected %d" % (seq, self.seq))
        self.seq = (seq + 1) & 0xFFFF
        limit = self.mru + 2         # the protocol field and at most an MRU of information
        z = self._z
        try:
            out = z.decompress(bytes(info[SEQ_LEN:]) + EMPTY_STORED_BLOCK, limit + 1)
        except zlib.error as exc:
            raise ParseError("bad_data", "inflate: %s" % exc)
        if len(out) > limit or z.unconsumed_tail:
            raise ParseError("too_long", "decompresses beyond the MRU (%d)" % self.mru)
        if z.eof or z.unused_data:
            raise ParseError("bad_data", "the Deflate stream ended")
        if not out:
            raise ParseError("too_short", "no protocol field")
        if out[0] & 1:
            protocol, start = out[0], 1
        elif len(out) >= 2:
            protocol, start = _PROTO16.unpack_from(out)[0], 2
        else:
            raise ParseError("too_short", "truncated protocol field")
        if not wppp.valid_protocol(protocol) or not compressible(protocol):
            raise ParseError("bad_protocol", "decompressed protocol 0x%04x" % protocol)
        self.packets += 1
        return protocol, out[start:]

    def incomp(self, protocol, info):
        """An uncompressed packet the peer's compressor saw: it enters our history too (Linux z_incomp)."""
        if not compressible(protocol):
            return
        field = _protocol_field(protocol)
        size = len(field) + len(info)
        self.seq = (self.seq + 1) & 0xFFFF
        self.incompressible += 1
        if size > 0xFFFF:
            raise ParseError("too_long", "uncompressed packet of %d octets" % size)
        try:
            self._z.decompress(_STORED_HEADER.pack(0, size, size ^ 0xFFFF) + field + bytes(info))
        except zlib.error as exc:
            raise ParseError("bad_data", "history: %s" % exc)
