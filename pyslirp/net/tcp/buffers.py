"""Bounded byte buffers for one TCP connection.

Theory of operation: three small structures, each with a hard bound, all
copying with C-level bytearray slicing (never a per-byte loop):

* :class:`SendBuffer` holds the bytes the service gave us that the client has
  not acknowledged yet, from SND.UNA (after our SYN) onwards.  ``append``
  takes at most the free room; ``peek`` reads a segment's payload by offset;
  ``drop`` discards what a cumulative ACK covered.

* :class:`Reassembler` holds out-of-order data (RFC 9293 3.10.7.4, "segments
  with higher beginning sequence numbers may be held for later processing")
  as sorted, disjoint, non-adjacent ranges whose offsets are relative to
  RCV.NXT.  The connection trims every segment to the receive window first,
  so the bytes held are bounded by the window; the number of separate ranges
  is bounded by ``max_ranges`` (a segment that would need one more range is
  refused).  ``ranges_by_recency`` gives the order RFC 2018 section 4 asks for
  in the SACK blocks we send (the block holding the latest segment first).

* :class:`SackScoreboard` remembers the ranges the client reported in its
  SACK blocks (RFC 2018), as offsets relative to SND.UNA, so that
  retransmissions skip bytes the client already holds.  The data stays in the
  send buffer until it is cumulatively acknowledged (RFC 2018 section 8:
  "the data sender MUST NOT discard data before it is cumulatively
  acknowledged"), and ``advance`` reports reneging: a cumulative ACK that
  stops at or inside a SACKed range means the client dropped that data.
"""

import bisect


class SendBuffer(object):
    def __init__(self, capacity):
        self.capacity = capacity
        self._data = bytearray()

    def __len__(self):
        return len(self._data)

    @property
    def free(self):
        return max(0, self.capacity - len(self._data))

    def append(self, data):
        """Queue as much of ``data`` as fits; return how many bytes were taken."""
        n = min(len(data), self.free)
        if n:
            self._data += data[:n] if n < len(data) else data
        return n

    def peek(self, offset, n):
        return bytes(self._data[offset:offset + n])

    def drop(self, n):
        """Forget the first ``n`` bytes (acknowledged)."""
        if n > 0:
            del self._data[:n]


class Reassembler(object):
    def __init__(self, max_ranges=16):
        self.max_ranges = max_ranges
        self._starts = []       # sorted range starts (offsets from RCV.NXT)
        self._data = []         # bytearray per range, parallel to _starts
        self._recent = []       # starts of recently touched ranges, most recent first
        self._bytes = 0

    def __len__(self):
        """Bytes held."""
        return self._bytes

    def __bool__(self):
        return bool(self._starts)

    def ranges(self):
        """[(start, end)] offsets, ascending."""
        return [(s, s + len(d)) for s, d in zip(self._starts, self._data)]

    def ranges_by_recency(self):
        """Ranges ordered with the most recently extended one first (RFC 2018 section 4)."""
        spans = dict(self.ranges())
        out = []
        for start in self._recent:
            if start in spans:
                out.append((start, spans.pop(start)))
        out.extend(sorted(spans.items()))
        return out

    def _touch(self, start):
        recent = self._recent
        if start in recent:
            recent.remove(start)
        recent.insert(0, start)
        del recent[self.max_ranges:]

    def add(self, offset, data):
        """Hold ``data`` at ``offset`` (> 0); False when it would exceed max_ranges."""
        if not data:
            return True
        end = offset + len(data)
        starts = self._starts
        datas = self._data
        # First range that ends at or after our start (touching counts: merge adjacent ranges).
        i = bisect.bisect_left(starts, offset)
        if i > 0 and starts[i - 1] + len(datas[i - 1]) >= offset:
            i -= 1
        j = i
        while j < len(starts) and starts[j] <= end:
            j += 1
        if i == j:
            if len(starts) >= self.max_ranges:
                return False
            starts.insert(i, offset)
            datas.insert(i, bytearray(data))
            self._bytes += len(data)
            self._touch(offset)
            return True
        new_start = min(offset, starts[i])
        last_end = starts[j - 1] + len(datas[j - 1])
        new_end = max(end, last_end)
        if j == i + 1 and starts[i] <= offset and end >= last_end and offset <= last_end:
            # Fast path: extends one range at its tail.
            buf = datas[i]
            buf += data[last_end - offset:]
            self._bytes += new_end - last_end
        else:
            buf = bytearray(new_end - new_start)
            buf[offset - new_start:end - new_start] = data
            held = 0
            for k in range(i, j):
                s = starts[k]
                d = datas[k]
                buf[s - new_start:s - new_start + len(d)] = d
                held += len(d)
                if s in self._recent:
                    self._recent.remove(s)
            starts[i:j] = [new_start]
            datas[i:j] = [buf]
            self._bytes += len(buf) - held
        if starts[i] != new_start:
            starts[i] = new_start
        self._touch(new_start)
        return True

    def advance(self, n):
        """RCV.NXT moved forward by ``n``: rebase offsets, dropping what is now below zero."""
        if n <= 0 or not self._starts:
            return
        starts = []
        datas = []
        held = 0
        remap = {}
        for s, d in zip(self._starts, self._data):
            e = s + len(d)
            if e <= n:
                continue
            if s < n:
                d = d[n - s:]
                remap[s] = 0
                s = 0
            else:
                remap[s] = s - n
                s -= n
            starts.append(s)
            datas.append(d)
            held += len(d)
        self._starts = starts
        self._data = datas
        self._bytes = held
        self._recent = [remap[s] for s in self._recent if s in remap]

    def pop_front(self):
        """The bytes at offset 0 (now in order), removed; b"" if there is a gap at the front."""
        if not self._starts or self._starts[0] != 0:
            return b""
        self._starts.pop(0)
        data = self._data.pop(0)
        self._bytes -= len(data)
        if 0 in self._recent:
            self._recent.remove(0)
        n = len(data)
        self._starts = [s - n for s in self._starts]
        self._recent = [s - n for s in self._recent]
        return bytes(data)

    def clear(self):
        self._starts = []
        self._data = []
        self._recent = []
        self._bytes = 0


class SackScoreboard(object):
    def __init__(self, max_ranges=16):
        self.max_ranges = max_ranges
        self._ranges = []       # sorted disjoint [start, end) offsets from SND.UNA

    def __bool__(self):
        return bool(self._ranges)

    def ranges(self):
        return list(self._ranges)

    def clear(self):
        self._ranges = []

    def add(self, start, end):
        """Record that the client holds [start, end) (offsets from SND.UNA, start > 0)."""
        if end <= start or start <= 0:
            return
        merged = []
        placed = False
        for s, e in self._ranges:
            if e < start:
                merged.append((s, e))
            elif s > end:
                if not placed:
                    merged.append((start, end))
                    placed = True
                merged.append((s, e))
            else:
                start = min(start, s)
                end = max(end, e)
        if not placed:
            merged.append((start, end))
            merged.sort()
        # Bounded: keep the lowest ranges (the ones that decide the next retransmissions).
        self._ranges = merged[:self.max_ranges]

    def advance(self, n):
        """SND.UNA moved forward by ``n``.  Returns True when the client reneged (RFC 2018 section 8)."""
        reneged = False
        out = []
        for s, e in self._ranges:
            if s <= n < e:
                reneged = True
            if e <= n:
                continue
            out.append((max(s, n) - n, e - n))
        self._ranges = [] if reneged else out
        return reneged

    def skip(self, off):
        """The first offset >= off that the client has not SACKed."""
        for s, e in self._ranges:
            if s <= off < e:
                off = e
            elif s > off:
                break
        return off

    def next_start(self, off):
        """Start of the first SACKed range beginning after ``off``, or None."""
        for s, _ in self._ranges:
            if s > off:
                return s
        return None

    def sacked_bytes(self):
        return sum(e - s for s, e in self._ranges)

    def unsacked_below_highest(self, off):
        """Bytes in [off, highest()) the client has not SACKed: the holes from ``off`` up (RFC 6675's lost bytes)."""
        top = self.highest()
        if off >= top:
            return 0
        held = 0
        for s, e in self._ranges:
            if e > off:
                held += e - max(s, off)
        return top - off - held

    def highest(self):
        return self._ranges[-1][1] if self._ranges else 0
