"""Van Jacobson TCP/IP header compression (RFC 1144), interoperable with Linux ``slhc``.

Theory of operation
-------------------
Both ends of a link keep a table of *slots* (conversation states), one per TCP
connection in flight, each holding the last TCP/IP header seen for it.  The
compressor turns every outgoing IPv4 packet into one of three PPP packets
(RFC 1144 section 3.2.1; RFC 1332 section 4 gives their PPP protocol numbers):

* ``PROTO_IP`` (0x0021), RFC 1332: "The IP protocol is not TCP, or the packet
  is a fragment, or cannot be compressed": the packet unchanged.  Not
  compressible (RFC 1144 section 3.2.3) means a runt, SYN, FIN or RST set, or
  ACK clear.  It does not touch the slot table.
* ``PROTO_VJ_UNCOMPRESSED`` (0x002F), RFC 1332: "The IP protocol field is
  replaced by the slot identifier" (offset 9).  It (re)establishes that slot
  at the other end; the receiver restores the byte to 6.
* ``PROTO_VJ_COMPRESSED`` (0x002D), RFC 1332: "The TCP/IP headers are replaced
  by the compressed header": a change mask, the slot number (omitted
  when it is the slot of the previous packet and the peer allows it: the C
  bit), the TCP checksum (verbatim), the changed fields as deltas, then the
  data.  A keystroke costs 3 to 5 octets of header instead of 40.

*Compressed header* (section 3.2.2)::

    change mask   0 C I P S A W U
    [slot]        when C is set
    TCP checksum  2 octets, copied
    [urgent]      U: the urgent pointer itself
    [window]      W: new window - old window (mod 2^16)
    [ack]         A: ack delta (0 < delta <= 0xFFFF)
    [seq]         S: sequence delta (0 < delta <= 0xFFFF)
    [ip id]       I: IP id delta, when it is not 1
    data

Each delta is one octet when 1..255, else 0x00 and two octets (big endian):
so a delta of 0 (possible only for the urgent pointer and the IP id) takes
three octets.  Two masks that cannot happen otherwise stand for the common
cases without any delta octet: SPECIAL_I (S|W|U), echoed interactive traffic,
where seq and ack both advanced by the data length of the previous packet, and
SPECIAL_D (S|A|W|U), unidirectional data, where only seq did.

*The compressor's decisions* (section 3.2.3, appendix A.2 ``sl_compress_tcp``,
and Linux ``slhc_compress``, whose choices are followed exactly): the slot is
found by the (source, destination, ports) quadruple, the table kept in
least-recently-used order; a new connection takes the oldest slot and goes
uncompressed.  Any change in the fields that should not change forces an
uncompressed packet: IP version/IHL, TOS, the flags and fragment field, TTL,
IP options, TCP data offset, TCP options, and (beyond slhc, which would
silently lose them) the TCP flag bits other than PSH and URG (ECE, CWR, the
reserved bits).  So does an urgent pointer that changed while URG is clear, an
ack or sequence number that moved backwards (a retransmission) or jumped by
more than 0xFFFF, and a header that changed in none
of U/W/A/S unless it is the first data after a pure ACK (anything else is
"probably a retransmit, retransmitted ack or window probe.  Send it
uncompressed in case the other side missed the compressed version", in the
words of appendix A.2's ``sl_compress_tcp``).  The IP id delta is computed
like slhc: (new - old), reduced modulo 2^16 only for encoding, so the wrap
65535 -> 0 is sent as an explicit I delta of 1 (RFC 1144's code reduces first
and sends no I field; both decode the same).  A packet whose IP Total Length is not its
length is sent as plain IP (slhc would use the buffer length).

*The decompressor* (section 3.2.4, appendix A.3) applies the deltas to the
slot's saved header, rebuilds the IP Total Length from the received length and
recomputes the IP header checksum, the only checksum it computes (the TCP
checksum is the one the sender's TCP computed, carried verbatim).  All
decoding is done on temporaries and committed to the slot only when the whole
packet decoded, so a malformed packet never leaves a half-updated slot (slhc updates
in place).  SPECIAL_I / SPECIAL_D packets clear URG: the compressor can only
choose them when URG is clear (section 3.2.3; slhc and RFC 1144's code keep
the previous packet's URG bit there).

*Error recovery* (section 4.2; Linux ``slhc_toss``): after a link error (bad
FCS, a dropped frame: the link calls :meth:`VjDecompressor.toss`) or any
malformed VJ packet, the receiver cannot know which slot an implicit-slot
packet belongs to, so it discards every compressed packet until one names its
slot explicitly (C bit) or an uncompressed one arrives.  A decompressor starts
in that state.  Data lost meanwhile is recovered by TCP: the sender
retransmits, and a retransmission (no U/W/A/S change, or seq moving backwards)
always goes out uncompressed, which re-establishes the slot.

*Repair* (RFC 2507 section 10.1, the "twice" algorithm, applied to RFC 1144's
format).  Waiting for the retransmission costs the sender a retransmission
timeout per damaged frame: every segment after the lost one is discarded, so
the receiving TCP sees no out-of-order data and sends no duplicate ACK.  While
tossing, a compressed packet for the current slot is therefore rebuilt anyway,
provided the slot carries a steady one-way stream: the last ``REPAIR_RUN``
packets (three: the handshake's last ACK and two segments are enough, so a
loss at the start of an upload is repaired too) were all on that slot with the
same ack and window, this packet changes neither, and the slot's ack covers
everything we sent on that connection (:meth:`VjDecompressor.sent` sees our
packets before compression).  That last condition is what makes the guess
sound: the TCP checksum, a one's complement sum, cannot tell a sequence
number too high by d from an ack too low by d, and a lost packet that
acknowledged our data would be just that; with nothing of ours unacknowledged
the lost packet cannot have moved the ack.  The guesses: 0 up to
``REPAIR_LIMIT`` lost packets, each carrying as much data as the last one
known, the largest one seen on the slot, the packet at hand, or what the last
one lacked of the largest (a bulk transfer's full-sized segments, and the two
parts a sender now and then cuts one into), counted from the previous
packet, from the highest sequence number the slot has seen (new data after a
retransmission resumes there), from the end of the latest retransmission
(the next one of a go-back series) and from our latest ack on the connection
(the hole: the lost packet was its retransmission); the rebuilt packet is kept only if its TCP
checksum, which travels verbatim and was computed over the true header,
verifies.  The first guess that verifies resynchronises the slot (counted in
``repaired``), unless the packet verifies on another slot too (the lost packet
may have named it): then, as when none verifies, it is tossed.  The guesses
differ from the true header only in seq, by less than 2 * ``REPAIR_SPAN``
and ``REPAIR_LIMIT`` segments, well below 65535 (the receive windows on such a
link are far smaller), which always changes the one's complement sum.  The lost segments themselves are then an
ordinary TCP loss: the packets after them arrive out of order, the receiver
SACKs, and the sender's fast retransmit fills the hole.

*What the codec cannot see.*  If a compressed packet is lost, the next one for
the same slot is applied to a stale header: the rebuilt packet is wrong (its
sequence or ack numbers are off by the lost deltas) but well formed.  The
design leaves that to the TCP checksum, which travels verbatim: it was
computed over the true header, so the receiving TCP rejects the wrong packet
and waits for the retransmission.  A bad IP id is not covered by it (the IP
checksum is recomputed) and is harmless for an unfragmented segment.  Every
structural problem the codec *can* see (unknown or out-of-range slot, a
truncated delta, a change mask with bit 7 set, a rebuilt length beyond 65535,
an uncompressed packet whose header does not add up or whose IP checksum
fails) raises :class:`ParseError` and tosses.

Holds per-link state (the two slot tables) but does no I/O and reads no clock.
No per-byte Python loops: ``struct`` unpacks and packs the headers, the data is
sliced once.
"""

from collections import OrderedDict
from itertools import combinations_with_replacement

import struct

from .checksum import internet_checksum, ones_sum, pseudo_header_sum
from .errors import ParseError

PROTO_IP = 0x0021
PROTO_VJ_COMPRESSED = 0x002D
PROTO_VJ_UNCOMPRESSED = 0x002F

MAX_SLOTS = 256            # the slot number is one octet (RFC 1332 section 4: Max-Slot-Id 0..255)
DEFAULT_SLOTS = 16         # RFC 1144 section 5.1, and pppd's default

# Change mask bits (RFC 1144 section 3.2.2).
NEW_C = 0x40               # the slot number follows
NEW_I = 0x20               # IP id delta follows (else the id advanced by 1)
TCP_PUSH_BIT = 0x10        # the segment has PSH set
NEW_S = 0x08
NEW_A = 0x04
NEW_W = 0x02
NEW_U = 0x01
SPECIALS_MASK = NEW_S | NEW_A | NEW_W | NEW_U
SPECIAL_I = NEW_S | NEW_W | NEW_U              # echoed interactive traffic: seq and ack += last data length
SPECIAL_D = NEW_S | NEW_A | NEW_W | NEW_U      # unidirectional data: seq += last data length
CHANGES_RESERVED = 0x80    # never set on PPP (SLIP uses it for the packet type)

# IPv4 header: version/IHL, TOS, total length, id, flags/fragment offset, TTL, protocol, checksum, src, dst
IP_HEADER = struct.Struct("!BBHHHBBH4s4s")
IP_HEADER_LEN = IP_HEADER.size                 # 20
IP_PROTOCOL_OFFSET = 9
IP_CHECKSUM_OFFSET = 10
IP_ADDRS_OFFSET = 12                           # source and destination, 8 octets
IP_VERSION = 4
IP_FRAG_MASK = 0x3FFF                          # MF and the fragment offset
IP_MAX_LEN = 0xFFFF
PROTO_TCP = 6

# TCP header: ports, seq, ack, data offset, flags, window, checksum, urgent pointer
TCP_HEADER = struct.Struct("!HHIIBBHHH")
TCP_HEADER_LEN = TCP_HEADER.size               # 20
TCP_PORTS_LEN = 4
TCP_CHECKSUM_OFFSET = 16
TCP_CHECKSUM_LEN = 2

FIN = 0x01
SYN = 0x02
RST = 0x04
PSH = 0x08
ACK = 0x10
URG = 0x20
_CONTROL = SYN | FIN | RST | ACK
_FLAGS_CARRIED = PSH | URG                     # the only flag bits a compressed header can change

_U16 = struct.Struct("!H")
_PORTS = struct.Struct("!HH")
_LONG_DELTA = struct.Struct("!BH")             # 0x00, then the value in two octets
_MASK_SLOT = struct.Struct("!BB")
_SHORT_DELTA = [bytes((i,)) for i in range(256)]
_MAX_DELTA = 0xFFFF
REPAIR_LIMIT = 4                               # lost packets per slot a repair may assume (RFC 2507 10.1)
REPAIR_RUN = 3                                 # ... only after this many packets in a row on the slot
SENT_CONNECTIONS = 256                         # connections whose sent data the decompressor remembers
REPAIR_SPAN = 0x4000                           # guesses from the slot's highest data lie at most this far ahead


def _encode(value):
    """One delta (RFC 1144 section 3.2.2): 1..255 in one octet, else 0x00 0xHH 0xLL."""
    if 0 < value < 256:
        return _SHORT_DELTA[value]
    return _LONG_DELTA.pack(0, value)


def _decode(data, pos, end):
    """Read one delta at ``pos``; returns ``(value, next_pos)``."""
    if pos >= end:
        raise ParseError("truncated", "delta missing at offset %d" % pos)
    first = data[pos]
    if first:
        return first, pos + 1
    if pos + 3 > end:
        raise ParseError("truncated", "long delta cut at offset %d" % pos)
    return _U16.unpack_from(data, pos + 1)[0], pos + 3


def _check_slots(slots):
    if not 1 <= slots <= MAX_SLOTS:
        raise ValueError("VJ slots must be 1..%d, not %r" % (MAX_SLOTS, slots))
    return int(slots)


class _TxSlot(object):
    """What the compressor remembers of the last header sent on one slot."""

    __slots__ = ("fixed", "options", "total", "ident", "seq", "ack", "window", "urgent", "run")

    def __init__(self, fixed, options, total, ident, seq, ack, window, urgent):
        self.run = 0                # compressed packets sent since the last uncompressed one
        self.fixed = fixed          # (ver_ihl, tos, flags/fragment, ttl, data offset byte, flags w/o PSH|URG)
        self.options = options      # IP options + TCP options, verbatim
        self.total = total
        self.ident = ident
        self.seq = seq
        self.ack = ack
        self.window = window
        self.urgent = urgent


class _RxSlot(object):
    """The decompressor's saved TCP/IP header for one slot."""

    __slots__ = ("ver_ihl", "tos", "total", "ident", "frag", "ttl", "src", "dst", "ip_options",
                 "sport", "dport", "seq", "ack", "offset", "flags", "window", "urgent", "tcp_options",
                 "header_len", "high", "back", "top")

    def __init__(self, packet, ip_len, tcp_len):
        (self.ver_ihl, self.tos, self.total, self.ident, self.frag, self.ttl, _proto, _csum,
         self.src, self.dst) = IP_HEADER.unpack_from(packet, 0)
        (self.sport, self.dport, self.seq, self.ack, self.offset, self.flags, self.window, _tcsum,
         self.urgent) = TCP_HEADER.unpack_from(packet, ip_len)
        self.ip_options = packet[IP_HEADER_LEN:ip_len]
        self.tcp_options = packet[ip_len + TCP_HEADER_LEN:ip_len + tcp_len]
        self.header_len = ip_len + tcp_len
        self.high = (self.seq + self.total - self.header_len) & 0xFFFFFFFF   # the end of the highest data seen
        self.back = None            # the end of the latest data below ``high`` (a retransmission), if any
        self.top = self.total - self.header_len     # the most data one packet on the slot carried

    def advance(self, seq, data_len):
        """Remember where data of ``data_len`` at ``seq`` ended: beyond ``high`` (by less than 2^31: wrap-safe)
        it moves ``high``, short of it it was a retransmission (``back``)."""
        end = (seq + data_len) & 0xFFFFFFFF
        if data_len > self.top:
            self.top = data_len
        ahead = (end - self.high) & 0xFFFFFFFF
        if 0 < ahead < 0x80000000:
            self.high = end
        elif ahead and data_len:
            self.back = end


def _apply(state, changes, data, pos, end):
    """The deltas at ``pos`` applied to slot ``state`` (RFC 1144 section 3.2.4, nothing committed):
    ``(seq, ack, window, urgent, flags, ident, pos)``, seq and ack not yet reduced modulo 2^32."""
    seq = state.seq
    ack = state.ack
    window = state.window
    urgent = state.urgent
    flags = state.flags & ~_FLAGS_CARRIED
    if changes & TCP_PUSH_BIT:
        flags |= PSH
    special = changes & SPECIALS_MASK
    if special == SPECIAL_I:
        last_data = state.total - state.header_len
        seq += last_data
        ack += last_data
    elif special == SPECIAL_D:
        seq += state.total - state.header_len
    else:
        if changes & NEW_U:
            flags |= URG
            urgent, pos = _decode(data, pos, end)
        if changes & NEW_W:
            delta, pos = _decode(data, pos, end)
            window = (window + delta) & 0xFFFF
        if changes & NEW_A:
            delta, pos = _decode(data, pos, end)
            ack += delta
        if changes & NEW_S:
            delta, pos = _decode(data, pos, end)
            seq += delta
    if changes & NEW_I:
        delta, pos = _decode(data, pos, end)
        ident = (state.ident + delta) & 0xFFFF
    else:
        ident = (state.ident + 1) & 0xFFFF
    return seq, ack, window, urgent, flags, ident, pos


def _lost_offsets(sizes):
    """{packets lost: the sorted distinct data lengths they may have carried in all}, 0 to REPAIR_LIMIT lost,
    each carrying one of ``sizes``."""
    return [sorted(set(sum(c) for c in combinations_with_replacement(sizes, lost)))
            for lost in range(REPAIR_LIMIT + 1)]


def _guesses(state, seq, ack, interactive, data_len, hole=None):
    """(seq, ack, packets lost) a repair tries on slot ``state`` (see "Repair"), most likely first."""
    last_data = state.total - state.header_len
    if not last_data:
        return [(seq & 0xFFFFFFFF, ack & 0xFFFFFFFF, 0)]
    # Each lost packet carried as much as the last one known, the largest one seen on the slot, this one, or
    # what the last one lacked of the largest (a sender cuts a bulk stream into full-sized segments, and now
    # and then one into two where its buffers end: Linux sends 579 + 2 bytes of a 581-byte MSS).
    sizes = tuple(sorted(set(n for n in (last_data, state.top, data_len, state.top - last_data) if n > 0)))
    offsets = _lost_offsets(sizes)
    guesses = [((seq + off) & 0xFFFFFFFF, (ack + off if interactive else ack) & 0xFFFFFFFF, lost)
               for lost in range(REPAIR_LIMIT + 1) for off in offsets[lost]]
    # A sender's sequence numbers resume where they last ran: after the previous packet (above), at the
    # highest sequence number the slot has seen (new data after a retransmission), after the latest
    # retransmission (the next one of a series), or at the hole our ACKs point to (the lost packet was the
    # retransmission that fills it): guesses from ``high``, ``back`` and ``hole`` too, within REPAIR_SPAN.
    for point in (state.high, state.back, hole):
        if point is not None and 0 < (point - state.seq + REPAIR_SPAN) & 0xFFFFFFFF <= 2 * REPAIR_SPAN:
            guesses += [((point + off) & 0xFFFFFFFF, ack & 0xFFFFFFFF, lost + 1)
                        for lost in range(REPAIR_LIMIT + 1) for off in offsets[lost]]
    return guesses


def _verified(state, guesses, payload, total, fields, checksum):
    """The first of ``guesses`` whose rebuilt TCP header verifies the carried checksum over ``payload``, or None."""
    _seq, _ack, window, urgent, flags, _ident, _pos = fields
    tcp_len = total - IP_HEADER_LEN - len(state.ip_options)
    base = ones_sum(state.tcp_options + payload, pseudo_header_sum(state.src, state.dst, PROTO_TCP, tcp_len))
    tried = set()
    for guess in guesses:
        s, a, _lost = guess
        if (s, a) in tried:
            continue
        tried.add((s, a))
        header = TCP_HEADER.pack(state.sport, state.dport, s, a, state.offset, flags, window, checksum, urgent)
        if internet_checksum(header, base) == 0:
            return guess
    return None


class VjCompressor(object):
    """The sending half: ``compress(packet) -> (protocol, data)``.

    ``slots`` is the peer's Max-Slot-Id + 1 and ``compress_slot_id`` its
    Comp-Slot-Id flag (RFC 1332 section 4): whether the slot number may be
    left out when it repeats.  Counters: ``compressed``, ``uncompressed``,
    ``ip`` (passed unchanged).

    ``noisy(n)`` sends a slot's packet uncompressed after ``n`` compressed ones
    (0: every packet; ``noisy(None)`` ends it): a receiver that lost a frame discards the slot's
    packets until an uncompressed one comes (RFC 1144 4.2), so on a noisy line a
    refresh bounds the damage to a few segments, which its TCP then asks for
    with duplicate ACKs, instead of everything until our retransmission timeout.
    """

    def __init__(self, slots=DEFAULT_SLOTS, compress_slot_id=True):
        self.slots = _check_slots(slots)
        self.compress_slot_id = bool(compress_slot_id)
        self.compressed = 0
        self.uncompressed = 0
        self.ip = 0
        self.refresh_every = None   # see noisy()
        self._state = [None] * self.slots
        # key -> slot, least recently used first.  The placeholder keys make the first
        # connections take slots 0, 1, 2 ... in order, as slhc's circular list does.
        self._lru = OrderedDict((("unused", i), i) for i in range(self.slots))
        self._last_slot = None      # slot of the last VJ packet sent (for the C bit)

    def noisy(self, refresh_every):
        """Refresh every slot after ``refresh_every`` compressed packets (0: send all uncompressed), or
        stop refreshing (None)."""
        self.refresh_every = refresh_every

    def compress(self, packet):
        """Compress one IPv4 packet; returns ``(protocol, data)``."""
        if not isinstance(packet, bytes):
            packet = bytes(packet)
        n = len(packet)
        if n < IP_HEADER_LEN:
            return self._pass(packet)
        ver_ihl, tos, total, ident, frag, ttl, protocol, _csum, _src, _dst = IP_HEADER.unpack_from(packet)
        ip_len = (ver_ihl & 0x0F) * 4
        if ver_ihl >> 4 != IP_VERSION or ip_len < IP_HEADER_LEN or protocol != PROTO_TCP \
                or frag & IP_FRAG_MASK or total != n or n < ip_len + TCP_HEADER_LEN:
            return self._pass(packet)
        _sport, _dport, seq, ack, offset, flags, window, _tcsum, urgent = TCP_HEADER.unpack_from(packet, ip_len)
        tcp_len = (offset >> 4) * 4
        header_len = ip_len + tcp_len
        # RFC 1144 3.2.3: connection set-up and tear-down, or no ACK, go as plain IP.
        if tcp_len < TCP_HEADER_LEN or header_len > n or flags & _CONTROL != ACK:
            return self._pass(packet)

        key = packet[IP_ADDRS_OFFSET:IP_HEADER_LEN] + packet[ip_len:ip_len + TCP_PORTS_LEN]
        lru = self._lru
        slot = lru.get(key)
        if slot is None:
            # A new conversation takes the least recently used slot.
            _old_key, slot = lru.popitem(last=False)
            lru[key] = slot
            state = None
        else:
            lru.move_to_end(key)
            state = self._state[slot]

        fixed = (ver_ihl, tos, frag, ttl, offset, flags & ~_FLAGS_CARRIED)
        if header_len > IP_HEADER_LEN + TCP_HEADER_LEN:
            options = packet[IP_HEADER_LEN:ip_len] + packet[ip_len + TCP_HEADER_LEN:header_len]
        else:
            options = b""
        if state is None or state.fixed != fixed or state.options != options or \
                (self.refresh_every is not None and state.run >= self.refresh_every):
            return self._uncompressed(packet, slot, fixed, options, total, ident, seq, ack, window, urgent)

        # RFC 1144 3.2.3: the changes in the order the receiver expects them: urgent, window, ack, seq.
        changes = 0
        deltas = []
        if flags & URG:
            deltas.append(_encode(urgent))
            changes = NEW_U
        elif urgent != state.urgent:
            # URG clear yet the pointer moved: nothing in the compressed format says so.
            return self._uncompressed(packet, slot, fixed, options, total, ident, seq, ack, window, urgent)
        delta_w = (window - state.window) & 0xFFFF
        if delta_w:
            deltas.append(_encode(delta_w))
            changes |= NEW_W
        delta_a = (ack - state.ack) & 0xFFFFFFFF
        if delta_a:
            if delta_a > _MAX_DELTA:
                return self._uncompressed(packet, slot, fixed, options, total, ident, seq, ack, window, urgent)
            deltas.append(_encode(delta_a))
            changes |= NEW_A
        delta_s = (seq - state.seq) & 0xFFFFFFFF
        if delta_s:
            # A sequence number moving backwards (a retransmission) shows up here as a huge delta.
            if delta_s > _MAX_DELTA:
                return self._uncompressed(packet, slot, fixed, options, total, ident, seq, ack, window, urgent)
            deltas.append(_encode(delta_s))
            changes |= NEW_S

        last_data = state.total - header_len
        if changes == 0:
            # Nothing changed: the first data after a pure ACK is normal on an interactive connection;
            # anything else is a retransmission, retransmitted ACK or window probe, sent uncompressed
            # "in case the other side missed the compressed version" (RFC 1144 appendix A.2).
            if not (total != state.total and last_data == 0):
                return self._uncompressed(packet, slot, fixed, options, total, ident, seq, ack, window, urgent)
        elif changes == SPECIAL_I or changes == SPECIAL_D:
            # The real changes look like a special-case mask: it cannot be sent as such.
            return self._uncompressed(packet, slot, fixed, options, total, ident, seq, ack, window, urgent)
        elif changes == NEW_S | NEW_A:
            if delta_s == delta_a and delta_s == last_data:
                changes = SPECIAL_I
                deltas = []
        elif changes == NEW_S:
            if delta_s == last_data:
                changes = SPECIAL_D
                deltas = []

        delta_i = ident - state.ident   # like slhc: the wrap 65535 -> 0 is an explicit delta of 1
        if delta_i != 1:
            deltas.append(_encode(delta_i & 0xFFFF))
            changes |= NEW_I
        if flags & PSH:
            changes |= TCP_PUSH_BIT

        state.total = total
        state.ident = ident
        state.seq = seq
        state.ack = ack
        state.window = window
        state.urgent = urgent
        state.run += 1

        if self.compress_slot_id and self._last_slot == slot:
            head = _SHORT_DELTA[changes]
        else:
            head = _MASK_SLOT.pack(changes | NEW_C, slot)
            self._last_slot = slot
        checksum_at = ip_len + TCP_CHECKSUM_OFFSET
        self.compressed += 1
        return PROTO_VJ_COMPRESSED, b"".join(
            [head, packet[checksum_at:checksum_at + TCP_CHECKSUM_LEN]] + deltas + [packet[header_len:]])

    def _pass(self, packet):
        self.ip += 1
        return PROTO_IP, packet

    def _uncompressed(self, packet, slot, fixed, options, total, ident, seq, ack, window, urgent):
        """Send the packet whole, its protocol byte carrying the slot, and remember its header."""
        state = self._state[slot]
        if state is None:
            self._state[slot] = _TxSlot(fixed, options, total, ident, seq, ack, window, urgent)
        else:
            state.fixed = fixed
            state.options = options
            state.total = total
            state.ident = ident
            state.seq = seq
            state.ack = ack
            state.window = window
            state.urgent = urgent
            state.run = 0
        self._last_slot = slot
        self.uncompressed += 1
        return PROTO_VJ_UNCOMPRESSED, b"".join(
            (packet[:IP_PROTOCOL_OFFSET], _SHORT_DELTA[slot], packet[IP_PROTOCOL_OFFSET + 1:]))


class VjDecompressor(object):
    """The receiving half: ``decompress(protocol, data) -> bytes`` (a whole IPv4 packet).

    ``slots`` is our own Max-Slot-Id + 1.  A packet that must be dropped raises
    :class:`ParseError`: reason ``"tossed"`` while waiting to resynchronise after
    an error (counted in ``tossed``), any other reason for a malformed packet
    (counted in ``errors``; the decompressor then tosses).  Counters:
    ``compressed``, ``uncompressed`` (packets rebuilt or remembered), ``ip``
    (``PROTO_IP`` passed through), ``tossed``, ``errors``, ``repaired`` (packets
    that resynchronised a slot after a loss, see "Repair"; ``repair=False``
    turns it off).
    """

    def __init__(self, slots=DEFAULT_SLOTS, repair=True):
        self.slots = _check_slots(slots)
        self.repair = bool(repair)
        self.compressed = 0
        self.uncompressed = 0
        self.ip = 0
        self.tossed = 0
        self.errors = 0
        self.repaired = 0
        self._run = 0               # packets in a row on the current slot with the same ack and window
        # (our address, peer address, our port, peer port) -> (end of what we sent, the ack we sent last)
        self._sent = OrderedDict()
        self._state = [None] * self.slots
        self._current = None
        # Like slhc_init: no implicit-slot packet makes sense before an explicit slot number.
        self._toss = True

    def sent(self, packet):
        """An IPv4 packet we send on the link, before compression: a TCP segment's end (seq + data, SYN and
        FIN) is remembered for its connection (SENT_CONNECTIONS at most), the most the peer's ack can reach,
        and its ack, where the peer's retransmissions start (see "Repair").  Only repair reads it: without
        repair nothing is kept."""
        if not self.repair:
            return
        n = len(packet)
        if n < IP_HEADER_LEN + TCP_HEADER_LEN or packet[IP_PROTOCOL_OFFSET] != PROTO_TCP:
            return
        ip_len = (packet[0] & 0x0F) * 4
        if ip_len < IP_HEADER_LEN or n < ip_len + TCP_HEADER_LEN:
            return
        _sport, _dport, seq, ack, offset, flags, _w, _c, _u = TCP_HEADER.unpack_from(packet, ip_len)
        end = (seq + max(0, n - ip_len - (offset >> 4) * 4) + (1 if flags & SYN else 0) + (1 if flags & FIN else 0)) \
            & 0xFFFFFFFF
        key = packet[IP_ADDRS_OFFSET:IP_HEADER_LEN] + packet[ip_len:ip_len + TCP_PORTS_LEN]
        sent = self._sent
        old = sent.pop(key, None)
        if old is not None and not 0 <= (end - old[0]) & 0xFFFFFFFF < 0x80000000:
            end = old[0]            # a retransmission: what was sent before went further
        sent[key] = (end, ack if flags & ACK else None)
        if len(sent) > SENT_CONNECTIONS:
            sent.popitem(last=False)

    def _ours(self, state):
        """(end of what we sent, our latest ack) on the slot's connection, or (None, None)."""
        return self._sent.get(state.dst + state.src + _PORTS.pack(state.dport, state.sport), (None, None))

    @property
    def tossing(self):
        """True while compressed packets without an explicit slot number are being discarded."""
        return self._toss

    def toss(self):
        """The link lost or damaged a frame: discard until resynchronised (RFC 1144 section 4.2)."""
        self._toss = True

    def decompress(self, protocol, data):
        """Rebuild the IPv4 packet carried by one PPP packet of ``protocol``."""
        if not isinstance(data, bytes):
            data = bytes(data)
        if protocol == PROTO_VJ_COMPRESSED:
            handler = self._compressed
        elif protocol == PROTO_VJ_UNCOMPRESSED:
            handler = self._uncompressed
        elif protocol == PROTO_IP:
            self.ip += 1
            return data
        else:
            raise ValueError("not a VJ or IP protocol: 0x%04x" % protocol)
        try:
            return handler(data)
        except ParseError as exc:
            if exc.reason != "tossed":
                self.errors += 1
                self._toss = True
            raise

    def _uncompressed(self, data):
        """UNCOMPRESSED_TCP: restore the protocol byte and remember the header (slhc_remember)."""
        n = len(data)
        if n < IP_HEADER_LEN + TCP_HEADER_LEN:
            raise ParseError("too_short", "uncompressed TCP of %d octets" % n)
        ver_ihl = data[0]
        ip_len = (ver_ihl & 0x0F) * 4
        if ver_ihl >> 4 != IP_VERSION or ip_len < IP_HEADER_LEN:
            raise ParseError("bad_header", "version/IHL 0x%02x" % ver_ihl)
        slot = data[IP_PROTOCOL_OFFSET]
        if slot >= self.slots:
            raise ParseError("bad_slot", "slot %d of %d" % (slot, self.slots))
        total = _U16.unpack_from(data, 2)[0]
        if total > n or ip_len + TCP_HEADER_LEN > total:
            raise ParseError("bad_length", "total length %d, IHL %d, %d octets" % (total, ip_len, n))
        tcp_len = (data[ip_len + 12] >> 4) * 4
        if tcp_len < TCP_HEADER_LEN or ip_len + tcp_len > total:
            raise ParseError("bad_header", "TCP data offset %d in %d octets" % (tcp_len, total))
        packet = b"".join((data[:IP_PROTOCOL_OFFSET], _SHORT_DELTA[PROTO_TCP], data[IP_PROTOCOL_OFFSET + 1:total]))
        # The sender computed the IP checksum with the protocol byte at 6: it must verify as is.
        if internet_checksum(packet[:ip_len]) != 0:
            raise ParseError("bad_checksum", "IP header of uncompressed TCP, slot %d" % slot)
        old = self._state[slot]
        state = self._state[slot] = _RxSlot(packet, ip_len, tcp_len)
        if old is not None and (old.src, old.dst, old.sport, old.dport) == (state.src, state.dst, state.sport,
                                                                              state.dport):
            # The same connection again (a retransmission goes uncompressed): its data went up to old.high.
            data_len = state.total - state.header_len
            state.high = old.high
            state.back = old.back
            state.top = max(old.top, state.top)
            state.advance(state.seq, data_len)
        steady = old is not None and slot == self._current and (old.ack, old.window) == (state.ack, state.window)
        self._run = self._run + 1 if steady else 1
        self._current = slot
        self._toss = False
        self.uncompressed += 1
        return packet

    def _compressed(self, data):
        """COMPRESSED_TCP: apply the deltas to the slot's saved header (sl_uncompress_tcp)."""
        end = len(data)
        if end < 1 + TCP_CHECKSUM_LEN:
            raise ParseError("too_short", "compressed TCP of %d octets" % end)
        changes = data[0]
        if changes & CHANGES_RESERVED:
            raise ParseError("bad_changes", "change mask 0x%02x" % changes)
        if changes & NEW_C:
            slot = data[1]
            pos = 2
            if slot >= self.slots:
                raise ParseError("bad_slot", "slot %d of %d" % (slot, self.slots))
            state = self._state[slot]
            if state is None:
                raise ParseError("unknown_slot", "slot %d never established" % slot)
        else:
            slot = self._current
            if self._toss and (not self.repair or slot is None or self._state[slot] is None
                               or self._run < REPAIR_RUN):
                self.tossed += 1
                raise ParseError("tossed", "implicit slot while resynchronising")
            state = self._state[slot]
            pos = 1
        repairing = self._toss and self.repair
        # Only a steady one-way stream is repaired (see "Repair"): this packet moves no ack, window or urgent
        # pointer either.
        steady = changes & SPECIALS_MASK == SPECIAL_D or not changes & (NEW_A | NEW_W | NEW_U)
        if repairing and (slot != self._current or self._run < REPAIR_RUN or not steady
                          or self._ours(state)[0] != state.ack):
            if not changes & NEW_C:
                self.tossed += 1
                raise ParseError("tossed", "implicit slot while resynchronising")
            repairing = False       # an explicit slot after a switch: decoded as RFC 1144 says
        if pos + TCP_CHECKSUM_LEN > end:
            raise ParseError("truncated", "no TCP checksum")
        checksum = _U16.unpack_from(data, pos)[0]
        pos += TCP_CHECKSUM_LEN
        start = pos

        fields = _apply(state, changes, data, pos, end)
        seq, ack, window, urgent, flags, ident, pos = fields
        total = state.header_len + end - pos
        if total > IP_MAX_LEN:
            raise ParseError("bad_length", "rebuilt datagram of %d octets" % total)
        if repairing:
            seq, ack, ident = self._repair(slot, changes, data, start, end, fields, checksum)

        # Decoded: commit to the slot, then rebuild the headers.
        seq &= 0xFFFFFFFF
        ack &= 0xFFFFFFFF
        steady = steady and slot == self._current and ack == state.ack and window == state.window
        state.total = total
        state.ident = ident
        state.seq = seq
        state.ack = ack
        state.window = window
        state.urgent = urgent
        state.flags = flags
        state.advance(seq, total - state.header_len)
        self._run = self._run + 1 if steady else 1
        self._current = slot
        self._toss = False
        self.compressed += 1

        ip = IP_HEADER.pack(state.ver_ihl, state.tos, total, ident, state.frag, state.ttl, PROTO_TCP, 0,
                            state.src, state.dst)
        if state.ip_options:
            ip += state.ip_options
        ip = b"".join((ip[:IP_CHECKSUM_OFFSET], _U16.pack(internet_checksum(ip)), ip[IP_CHECKSUM_OFFSET + 2:]))
        tcp = TCP_HEADER.pack(state.sport, state.dport, seq, ack, state.offset, flags, window, checksum, urgent)
        return b"".join((ip, tcp, state.tcp_options, data[pos:]))

    def _repair(self, slot, changes, data, start, end, fields, checksum):
        """While tossing: the (seq, ack, ident) for slot ``slot`` whose rebuilt segment's TCP checksum verifies,
        assuming 0 to REPAIR_LIMIT lost packets (see "Repair"), provided no other slot's guesses verify too;
        else tossed."""
        interactive = changes & SPECIALS_MASK == SPECIAL_I
        state = self._state[slot]
        seq, ack, _window, _urgent, _flags, ident, pos = fields
        payload = data[pos:]
        guesses = _guesses(state, seq, ack, interactive, len(payload), self._ours(state)[1])
        found = _verified(state, guesses, payload, state.header_len + end - pos, fields, checksum)
        if found is not None:
            # The lost packet may have named another slot: if this one fits another slot as well, it is tossed.
            for other, st in enumerate(self._state):
                if other == slot or st is None:
                    continue
                try:
                    theirs = _apply(st, changes, data, start, end)
                except ParseError:
                    continue
                their_pos = theirs[6]
                their_guesses = _guesses(st, theirs[0], theirs[1], interactive, end - their_pos, self._ours(st)[1])
                if _verified(st, their_guesses, data[their_pos:], st.header_len + end - their_pos, theirs,
                             checksum) is not None:
                    found = None
                    break
        if found is None:
            self.tossed += 1
            raise ParseError("tossed", "no repair of slot %d verifies" % slot)
        s, a, lost = found
        self.repaired += 1
        return s, a, (ident + lost) & 0xFFFF
