"""RFC 1662 asynchronous HDLC-like framing: FCS, escaping, and a streaming deframer.

Theory of operation
-------------------
On an asynchronous line every PPP frame travels as::

    0x7E | escaped( address/control + protocol + information + FCS ) | 0x7E

*Frame Check Sequence.*  RFC 1662 section C.2 defines the 16-bit FCS as the
CCITT CRC computed least-significant-bit first (the *reflected* algorithm,
polynomial 0x8408).  ``binascii.crc_hqx`` computes the same polynomial most
significant bit first, so :func:`fcs16` bit-reverses every byte
(``bytes.translate`` with a 256-entry table), runs ``crc_hqx`` over that, and
bit-reverses the 16-bit register: one C-level pass each, no Python loop.  The
32-bit FCS (RFC 1662 section C.3) is exactly ``zlib.crc32``.  Both functions
return the raw register (no final complement) so that a receiver can check a
frame with its FCS appended against the "good FCS" residues 0xF0B8 and
0xDEBB20E3.  The transmitted FCS is the ones complement of the register, least
significant octet first (section C.2: "The FCS is transmitted least
significant octet first").

*Transparency* (section 4.2).  The sender escapes 0x7E, 0x7D and every control
character below 0x20 whose bit is set in the peer's Async-Control-Character-Map
as 0x7D followed by the byte XOR 0x20.  :func:`escape` first deletes every byte
that needs no escaping (``bytes.translate(None, delete)``); what is left tells
which escapable bytes occur at all, and only those get a ``bytes.replace``
(0x7D first, since the replacements introduce new 0x7D bytes).  The
``translate`` delete table and the ordered replacement list are cached per ACCM.

*Deframing.*  The receiver splits the byte stream on 0x7E.  Before that it drops
every control character its own receive ACCM says the peer escapes (section
4.2: "each octet with value less than hexadecimal 0x20 is checked.  If it is
flagged in the receiving ACCM, it is simply removed (it may have been inserted
by intervening data communications equipment)"); this is one
``bytes.translate`` per ``feed`` call.  Each piece between two flags is one
escaped frame.  Unescaping (removing each 0x7D and XORing the next byte with
0x20) is done without any per-byte or per-escape Python work: a translate marks
the 0x7D positions, big-integer shift/OR turns the marks into a 0x20 mask on the
byte that follows each escape, a second translate drops the escape positions
from the mask, and one big-integer XOR applies it (see :func:`unescape`).
Frames with only a handful of escapes take the cheaper ``split(b'\\x7d')`` path
(XOR the first byte of each piece after the first).

The piece after the last flag of a ``feed`` is kept in a bounded ``bytearray``
and continued by the next call, so the frames and counters produced never
depend on how the stream is chunked.  Every non-empty piece between flags ends
up in exactly one counter:

* ``frames``: good FCS, returned with the FCS stripped;
* ``aborted``: the piece ends in 0x7D, i.e. "0x7D 0x7E" (section 4.4.1: "A
  frame is aborted by transmitting a Control Escape octet followed immediately
  by the Flag Sequence");
* ``too_long``: more than ``mru + 8`` octets after unescaping (room for the
  address, control, protocol and a 32-bit FCS), or more than twice that while
  still escaped.  The second rule is what keeps memory bounded: once the kept
  partial frame passes it, it is dropped and the rest of the frame is skipped,
  without storing anything, until the next flag;
* ``too_short``: fewer than 2 octets besides the FCS (section 4.3: frames
  "which are too short ... are silently discarded");
* ``bad_fcs``: the FCS check failed.

Back-to-back flags delimit empty frames; they are normal (section 4.4: "Only
one Flag Sequence is required between two frames", and several may be sent as
inter-frame fill) and not counted.  Bytes before the very first flag (modem or
shell chatter, a client that is not speaking PPP yet) are not a frame: they are
counted in ``noise_bytes`` and dropped.

Nothing here reads a clock or does I/O; drops are logged at debug level with a
count-based rate limit (the 1st, 2nd, 4th, 8th, ... occurrence of each reason).
"""

import binascii
import logging
import struct
import zlib

log = logging.getLogger("pyslirp.wire.hdlc")

FLAG = 0x7E
ESCAPE = 0x7D
TRANS = 0x20

GOOD_FCS16 = 0xF0B8
GOOD_FCS32 = 0xDEBB20E3
INIT_FCS16 = 0xFFFF
INIT_FCS32 = 0xFFFFFFFF

#: Octets allowed beyond the MRU: address + control (2), protocol (2), FCS-32 (4).
FRAME_SLACK = 8

_FLAG_BYTE = b"\x7e"
_ESC_BYTE = b"\x7d"
_FCS16_LE = struct.Struct("<H")
_FCS32_LE = struct.Struct("<I")

# Bit-reversal of every octet, for running the MSB-first crc_hqx as the LSB-first FCS-16.
_REV = bytes(int("{:08b}".format(i)[::-1], 2) for i in range(256))
# 0x7D -> 0x01, everything else -> 0x00: marks the escape positions for unescape().
_ESC_MARK = bytes(1 if i == ESCAPE else 0 for i in range(256))
# Unescape with split() below this many escapes per frame, with the big-integer mask above.
_SPLIT_MAX_ESCAPES = 48
_XOR_HEAD = dict((bytes([i]), bytes([i ^ TRANS])) for i in range(256))
_XOR_HEAD[b""] = b""

_ALL_BYTES = bytes(range(256))
_CACHE_MAX = 64
_tx_cache = {}
_rx_cache = {}


def _rev16(value):
    return (_REV[value & 0xFF] << 8) | _REV[value >> 8]


def fcs16(data, fcs=INIT_FCS16):
    """Run the RFC 1662 FCS-16 register over ``data`` from ``fcs``; no final complement.

    Appending ``~fcs16(frame) & 0xFFFF`` least significant octet first makes
    ``fcs16(frame + fcs) == GOOD_FCS16`` (RFC 1662 section C.2).
    """
    if not isinstance(data, bytes):
        data = bytes(data)
    return _rev16(binascii.crc_hqx(data.translate(_REV), _rev16(fcs)))


def fcs32(data, fcs=INIT_FCS32):
    """Run the RFC 1662 FCS-32 register (section C.3) over ``data``; no final complement.

    ``zlib.crc32`` keeps the complemented register, hence the XORs.
    """
    return zlib.crc32(data, fcs ^ 0xFFFFFFFF) ^ 0xFFFFFFFF


def _escaped_set(accm):
    return [ESCAPE, FLAG] + [c for c in range(32) if (accm >> c) & 1]


def _tx_tables(accm):
    """(delete-table keeping only bytes to escape, [(byte, replacement)] with 0x7D first)."""
    tables = _tx_cache.get(accm)
    if tables is None:
        escaped = _escaped_set(accm)
        keep_only = _ALL_BYTES.translate(None, bytes(escaped))
        repl = [(c, bytes([c]), bytes([ESCAPE, c ^ TRANS])) for c in escaped]
        tables = (keep_only, repl)
        if len(_tx_cache) >= _CACHE_MAX:
            _tx_cache.clear()
        _tx_cache[accm] = tables
    return tables


def _rx_delete(accm):
    """The control characters to drop on receive for this ACCM (RFC 1662 section 4.2)."""
    delete = _rx_cache.get(accm)
    if delete is None:
        delete = bytes(c for c in range(32) if (accm >> c) & 1)
        if len(_rx_cache) >= _CACHE_MAX:
            _rx_cache.clear()
        _rx_cache[accm] = delete
    return delete


def escape(data, accm=0xFFFFFFFF):
    """Apply RFC 1662 section 4.2 transparency to ``data`` (no flags added)."""
    if not isinstance(data, bytes):
        data = bytes(data)
    keep_only, repl = _tx_tables(accm & 0xFFFFFFFF)
    present = data.translate(None, keep_only)
    if not present:
        return data
    for value, one, two in repl:
        if value in present:
            data = data.replace(one, two)
    return data


def unescape(data):
    """Undo transparency on the escaped body of one frame (no flags inside).

    Every 0x7D is removed and the octet after it is XORed with 0x20, as a
    per-octet receiver would do (0x7D 0x7D thus escapes the octet after the
    second one).  A trailing 0x7D (an abort) is simply dropped; the deframer
    checks for it before calling this.
    """
    if not isinstance(data, bytes):
        data = bytes(data)
    count = data.count(_ESC_BYTE)
    if not count:
        return data
    if count <= _SPLIT_MAX_ESCAPES:
        parts = data.split(_ESC_BYTE)
        head = _XOR_HEAD
        return b"".join([parts[0]] + [head[p[:1]] + p[1:] for p in parts[1:]])
    n = len(data)
    # marks: 0x01 at each escape.  Big-endian, so ">> 8" moves a mark onto the next octet.
    marks = int.from_bytes(data.translate(_ESC_MARK), "big")
    mask = (marks | ((marks >> 8) << 5)).to_bytes(n, "big")
    # mask octets: 0x01/0x21 at escapes (dropped), 0x20 after an escape, else 0x00.
    mask = mask.translate(None, b"\x01\x21")
    body = data.translate(None, _ESC_BYTE)
    m = len(body)
    return (int.from_bytes(body, "big") ^ int.from_bytes(mask, "big")).to_bytes(m, "big")


def encode_frame(frame, accm=0xFFFFFFFF, fcs_size=16):
    """Frame one PPP frame for the wire: FCS, transparency, opening and closing flags.

    ``frame`` is address/control (if sent) + protocol + information, without FCS.
    ``accm`` is the peer's receive ACCM (the control characters we must escape).
    """
    if not isinstance(frame, bytes):
        frame = bytes(frame)
    if fcs_size == 16:
        body = frame + _FCS16_LE.pack(fcs16(frame) ^ 0xFFFF)
    elif fcs_size == 32:
        body = frame + _FCS32_LE.pack(zlib.crc32(frame))
    else:
        raise ValueError("fcs_size must be 16 or 32, not %r" % (fcs_size,))
    return _FLAG_BYTE + escape(body, accm) + _FLAG_BYTE


_HUNT = 0      # before the first flag: not inside any frame
_FRAME = 1     # collecting a frame into the partial buffer
_DISCARD = 2   # the current frame grew too long: skip until the next flag


class Deframer(object):
    """Turn a raw serial byte stream into FCS-checked PPP frames (FCS stripped).

    ``mru``, ``accm`` (receive ACCM) and ``fcs_size`` may be changed between
    :meth:`feed` calls.  Counters: ``frames``, ``bad_fcs``, ``too_long``,
    ``too_short``, ``aborted``, ``bytes_in``, ``noise_bytes``.

    With ``mark_errors`` set, every dropped frame (any of the counters but
    ``frames``) also leaves a ``None`` in the list :meth:`feed` returns, where
    the frame was in the stream: a receiver whose state depends on seeing every
    frame (Van Jacobson decompression, RFC 1144 section 4.1) resynchronises
    exactly there.
    """

    def __init__(self, mru=1500, accm=0xFFFFFFFF, fcs_size=16, mark_errors=False):
        self.mru = mru
        self.accm = accm
        self.fcs_size = fcs_size
        self.mark_errors = mark_errors
        self.frames = 0
        self.bad_fcs = 0
        self.too_long = 0
        self.too_short = 0
        self.aborted = 0
        self.bytes_in = 0
        self.noise_bytes = 0
        self._partial = bytearray()
        self._state = _HUNT

    @property
    def max_frame(self):
        """Largest accepted frame, unescaped, FCS included."""
        return self.mru + FRAME_SLACK

    @property
    def buffered(self):
        """Bytes currently held for an incomplete frame (bounded by 2 * max_frame)."""
        return len(self._partial)

    def reset(self):
        """Forget any partial frame and hunt for a flag again (line dropped or re-opened)."""
        self._partial = bytearray()
        self._state = _HUNT

    def feed(self, data):
        """Consume raw line bytes; return the complete good frames they finish, in order."""
        if not data:
            return []
        if not isinstance(data, bytes):
            data = bytes(data)
        self.bytes_in += len(data)
        delete = _rx_delete(self.accm & 0xFFFFFFFF)
        if delete:
            data = data.translate(None, delete)
        pieces = data.split(_FLAG_BYTE)
        limit = 2 * self.max_frame
        last = len(pieces) - 1
        if last == 0:
            self._extend(data, limit)
            return []
        out = []
        first = pieces[0]
        state = self._state
        if state == _FRAME:
            if self._partial:
                self._partial += first
                first = bytes(self._partial)
                self._partial = bytearray()
            self._complete(first, limit, out)
        elif state == _DISCARD:
            if self.mark_errors:
                out.append(None)        # the end of the frame dropped as too long
        elif state == _HUNT:
            self.noise_bytes += len(first)
            if self.noise_bytes:
                log.info("hdlc: %d bytes before the first flag dropped (peer not speaking PPP yet?)",
                         self.noise_bytes)
        for i in range(1, last):
            self._complete(pieces[i], limit, out)
        self._state = _FRAME
        self._extend(pieces[last], limit)
        return out

    def _extend(self, piece, limit):
        if not piece:
            return
        state = self._state
        if state == _FRAME:
            if len(self._partial) + len(piece) > limit:
                self._partial = bytearray()
                self._state = _DISCARD
                self.too_long += 1
                self._note("too_long", self.too_long, len(piece))
            else:
                self._partial += piece
        elif state == _HUNT:
            self.noise_bytes += len(piece)

    def _complete(self, esc, limit, out):
        if not esc:
            return
        if len(esc) > limit:
            self.too_long += 1
            self._note("too_long", self.too_long, len(esc))
        elif esc[-1] == ESCAPE:
            self.aborted += 1
            self._note("aborted", self.aborted, len(esc))
        else:
            frame = unescape(esc)
            n = len(frame)
            fcs_len = 4 if self.fcs_size == 32 else 2
            if n > self.max_frame:
                self.too_long += 1
                self._note("too_long", self.too_long, n)
            elif n < fcs_len + 2:
                self.too_short += 1
                self._note("too_short", self.too_short, n)
            elif (fcs32(frame) == GOOD_FCS32) if fcs_len == 4 else (fcs16(frame) == GOOD_FCS16):
                self.frames += 1
                out.append(frame[:-fcs_len])
                return
            else:
                self.bad_fcs += 1
                self._note("bad_fcs", self.bad_fcs, n)
        if self.mark_errors:
            out.append(None)

    @staticmethod
    def _note(reason, count, length):
        if count & (count - 1) == 0:
            log.debug("hdlc: dropped frame (%s, %d bytes); %d so far", reason, length, count)
