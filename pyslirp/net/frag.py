"""IPv4 fragment reassembly (RFC 791 3.2, RFC 815) and fragmentation, with bounded memory.

Theory of operation: fragments are keyed by (source, destination, protocol,
identification) (RFC 791 3.2: "the internet identification field ... the
source, destination, and protocol fields, are used to identify fragments of
the same datagram").  Each datagram in progress keeps a sorted map of
offset -> bytes, the number of bytes received and, once the last fragment
(MF clear) has arrived, the total length.  Because overlaps are refused,
the datagram is complete exactly when bytes received == total length, and is
then joined once.

Overlapping fragments are a classic evasion and denial-of-service vector; as
Linux does for IPv4 (and RFC 5722 mandates for IPv6), a fragment that
overlaps another one (other than an exact duplicate, which is ignored)
discards the whole datagram.  Non-final fragments must carry a multiple of 8
bytes (RFC 791 3.1, "Fragment Offset").

Bounds: at most ``max_datagrams`` datagrams in progress, each at most 65535
bytes and ``max_fragments`` pieces, and at most ``max_bytes`` buffered in all;
when full, the oldest datagram is evicted.  A datagram not completed within
``timeout`` ms of its first fragment is discarded; if its fragment zero had
arrived the caller should send ICMP Time Exceeded, code 1 (RFC 1122 3.3.2:
"If the reassembly timeout expires, the partially-reassembled datagram MUST be
discarded and an ICMP Time Exceeded message sent to the source host (if
fragment zero has been received)").  :meth:`Reassembler.handle_timer` returns
the fragment-zero datagrams for that.

Time is the caller's integer milliseconds: :meth:`get_timer` /
:meth:`handle_timer` as everywhere in the stack.
"""

import bisect
from collections import OrderedDict
from dataclasses import replace

from pyslirp.wire.ipv4 import HEADER_LEN, MAX_LEN

DEFAULT_TIMEOUT = 30000         # ms; Linux's ipfrag_time, within RFC 1122 3.3.2's "60 seconds to 2 minutes" spirit
MAX_PAYLOAD = MAX_LEN - HEADER_LEN


class _Datagram(object):
    __slots__ = ("offsets", "pieces", "received", "total", "first", "deadline")

    def __init__(self, deadline):
        self.offsets = []           # sorted fragment offsets
        self.pieces = []            # bytes, parallel to offsets
        self.received = 0
        self.total = None           # payload length, known once the last fragment arrived
        self.first = None           # fragment zero (Ipv4Repr): its header is the datagram's
        self.deadline = deadline


class Reassembler(object):
    def __init__(self, timeout=DEFAULT_TIMEOUT, max_datagrams=16, max_bytes=256 * 1024, max_fragments=64):
        self.timeout = timeout
        self.max_datagrams = max_datagrams
        self.max_bytes = max_bytes
        self.max_fragments = max_fragments
        self._pending = OrderedDict()       # key -> _Datagram, oldest first (fixed timeout: also deadline order)
        self.buffered = 0
        self.reassembled = 0
        self.counters = {}                  # reason -> fragments (or datagrams) dropped

    def __len__(self):
        return len(self._pending)

    def _count(self, reason):
        self.counters[reason] = self.counters.get(reason, 0) + 1

    def _discard(self, key, reason=None):
        dg = self._pending.pop(key)
        self.buffered -= dg.received
        if reason:
            self._count(reason)
        return dg

    def add(self, ip, now):
        """Take one fragment (an Ipv4Repr with MF set or a non-zero offset).

        Returns the whole datagram (an Ipv4Repr, unfragmented) once complete, else None.
        """
        data = ip.payload
        off = ip.frag_offset
        end = off + len(data)
        if ip.more_fragments and (not data or len(data) & 7):
            self._count("frag_bad_length")          # RFC 791: every fragment but the last is a multiple of 8
            return None
        if end > MAX_PAYLOAD:
            self._count("frag_too_big")
            return None
        key = (ip.src, ip.dst, ip.protocol, ip.ident)
        dg = self._pending.get(key)
        if dg is None:
            while len(self._pending) >= self.max_datagrams:
                self._discard(next(iter(self._pending)), "frag_evicted")
            dg = _Datagram(now + self.timeout)
            self._pending[key] = dg
        # The last fragment fixes the length; everything must agree with it.
        if not ip.more_fragments:
            if dg.total is not None and dg.total != end:
                self._discard(key, "frag_inconsistent")
                return None
            dg.total = end
        if dg.total is not None and end > dg.total:
            self._discard(key, "frag_inconsistent")
            return None
        i = bisect.bisect_left(dg.offsets, off)
        if i < len(dg.offsets) and dg.offsets[i] == off and len(dg.pieces[i]) == len(data):
            self._count("frag_duplicate")
            return None
        if (i > 0 and dg.offsets[i - 1] + len(dg.pieces[i - 1]) > off) or (i < len(dg.offsets) and end > dg.offsets[i]):
            self._discard(key, "frag_overlap")
            return None
        if len(dg.offsets) >= self.max_fragments:
            self._discard(key, "frag_too_many")
            return None
        # Memory bound: evict the oldest other datagrams until this fragment fits.
        while self.buffered + len(data) > self.max_bytes:
            victim = next(iter(self._pending))
            if victim == key:
                self._discard(key, "frag_no_memory")
                return None
            self._discard(victim, "frag_evicted")
        dg.offsets.insert(i, off)
        dg.pieces.insert(i, data)
        dg.received += len(data)
        self.buffered += len(data)
        if off == 0:
            dg.first = ip
        if dg.total is None or dg.received != dg.total:
            return None
        self._discard(key)
        self.reassembled += 1
        return replace(dg.first, payload=b"".join(dg.pieces), more_fragments=False, frag_offset=0)

    def get_timer(self):
        for dg in self._pending.values():
            return dg.deadline
        return None

    def handle_timer(self, now):
        """Drop timed-out datagrams; return their fragment zero (Ipv4Repr) where it arrived, for Time Exceeded."""
        expired = []
        while self._pending:
            key, dg = next(iter(self._pending.items()))
            if dg.deadline > now:
                break
            self._discard(key, "frag_timeout")
            if dg.first is not None:
                expired.append(dg.first)
        return expired

    def clear(self):
        self._pending.clear()
        self.buffered = 0


def fragment(ip, mtu):
    """Split datagram ``ip`` (Ipv4Repr) into fragments of at most ``mtu`` bytes each (RFC 791 3.2).

    Returns a list of Ipv4Repr (just ``ip`` when it fits).  Options are copied into every fragment (we never emit
    options, so the copy-flag distinction of RFC 791 does not arise).  Raises ValueError for a datagram marked
    Don't Fragment that does not fit, or an MTU too small to carry 8 bytes of data.
    """
    if ip.total_len <= mtu:
        return [ip]
    if ip.dont_fragment:
        raise ValueError("datagram of %d bytes with DF set exceeds MTU %d" % (ip.total_len, mtu))
    step = (mtu - ip.header_len) & ~7
    if step <= 0:
        raise ValueError("MTU %d too small to fragment" % mtu)
    data = ip.payload
    out = []
    for start in range(0, len(data), step):
        piece = data[start:start + step]
        last = start + step >= len(data)
        out.append(replace(ip, payload=piece, frag_offset=ip.frag_offset + start,
                           more_fragments=ip.more_fragments or not last))
    return out


__all__ = ["Reassembler", "fragment", "DEFAULT_TIMEOUT"]
