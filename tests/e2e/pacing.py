"""A serial line at a real speed: a relay that releases bytes at the rate of an 8N1 UART, each direction on its own.

Theory of operation
-------------------
``SerialRelay`` (uml.py) copies bytes between pyslirp's pty and the guest's pipes as fast as both ends go, about
2 MB/s.  ``PacedRelay`` emulates what a real serial line between two PCs does instead: each direction is a UART
that transmits ``rate`` bytes per second (115200 bit/s 8N1 = 11,520 bytes/s: ten bits per byte) and holds at most
``fifo`` bytes of its own (the UART's hardware FIFO).  Bytes leave the sender's buffer only when the FIFO has room,
so the backlog stays where it is on real hardware: in the sender's kernel buffer, where the sender can measure it
(pyslirp on its pty; the guest's ppp_async in its tty and serial pipe, which is shrunk to one page, the size of
Linux's serial transmit buffer).  Each chunk taken into the FIFO is delivered to the other side when its last byte
has been "transmitted".

The model is a virtual clock per direction: ``busy_until`` is when the line finishes the bytes taken so far, the
FIFO holds ``(busy_until - now) * rate`` bytes, and reading stops while it is full.  If this thread is woken late
while the sender had more bytes waiting, the line is taken to have stayed busy (a real UART's interrupt handler
does not oversleep), so the emulator's own scheduling jitter costs no throughput; the catch-up is bounded
(``CATCHUP``) so a long stall does not turn into a burst.

Both directions are served by one thread, woken by poll(2) with a timeout of the next delivery or the next time the
FIFO has room for a useful chunk.

``cut(True)`` cuts the line: what is on the wire is lost and so is every byte either side sends until ``cut(False)``
(the senders are still drained, as a UART transmits into a dead line at its own pace); ``lost`` counts those bytes
per direction.
"""

import errno
import fcntl
import os
import select
import time

from e2e.uml import CAPTURE_LIMIT, SerialRelay

F_SETPIPE_SZ = 1031     # fcntl.F_SETPIPE_SZ exists only since Python 3.10
PIPE_SIZE = 4096        # the guest's serial transmit buffer (Linux: UART_XMIT_SIZE = one page)
CATCHUP = 0.05          # seconds of line time a late wake-up may make up for


def line_rate(baud, bits_per_byte=10):
    """Bytes per second of an async serial line (8N1: start + 8 data + stop = 10 bits per byte)."""
    return baud / float(bits_per_byte)


class _Direction(object):
    """One direction of the line: source fd -> UART (FIFO, rate) -> destination fd."""

    def __init__(self, name, rate, fifo, capture):
        self.name = name
        self.rate = float(rate)
        self.fifo = fifo
        self.capture = capture          # the relay's capture buffer for this direction
        self.busy_until = 0.0           # virtual time the last byte taken finishes on the line
        self.backlogged = False         # the last read filled all the room: the sender had more waiting
        self.in_flight = []             # [(deliver_at, bytes)] taken from the source, not yet delivered
        self.pending = b""              # delivered, but the destination would block
        self.bytes = 0
        self.timeline = []              # (taken at, delivered at, stream offset, nbytes) while capturing

    def occupancy(self, now):
        return max(0.0, self.busy_until - now) * self.rate

    def room(self, now):
        if self.backlogged and self.busy_until < now:
            # Woken late while the sender had more: the line is taken to have stayed busy since busy_until.
            start = max(self.busy_until, now - CATCHUP)
            return int(self.fifo + (now - start) * self.rate)
        return int(self.fifo - self.occupancy(now))

    def take(self, data, now):
        """``data`` has just been read from the source: it goes onto the line after what is already there."""
        if self.backlogged and self.busy_until < now:
            start = max(self.busy_until, now - CATCHUP)
        else:
            start = max(self.busy_until, now)
        duration = len(data) / self.rate
        self.busy_until = start + duration
        self.in_flight.append((self.busy_until, data))
        if self.bytes < CAPTURE_LIMIT:
            self.timeline.append((start, self.busy_until, self.bytes, len(data)))
        self.bytes += len(data)

    def due(self, now):
        out = []
        while self.in_flight and self.in_flight[0][0] <= now:
            out.append(self.in_flight.pop(0)[1])
        return b"".join(out)

    def next_event(self, now, source_open):
        """Seconds until this direction needs the thread again (None: only when the source has data)."""
        times = []
        if self.in_flight:
            times.append(self.in_flight[0][0])
        if source_open and not self.pending:
            # Wake when half the FIFO is free, but only if there is reason to think the source has bytes.
            if self.backlogged:
                times.append(self.busy_until - (self.fifo / 2.0) / self.rate)
        if not times:
            return None
        return max(0.0, min(times) - now)


class PacedRelay(SerialRelay):
    """A ``SerialRelay`` that runs the line at ``baud`` (8N1) in each direction, with a ``fifo``-byte UART FIFO.

    Use it through ``Lab.boot_guest(..., relay_factory=PacedRelay.factory(115200))``.
    """

    def __init__(self, tty_fd, guest_in_w, guest_out_r, name="relay", baud=115200, fifo=64,
                 guest_pipe_size=PIPE_SIZE):
        super().__init__(tty_fd, guest_in_w, guest_out_r, name=name)
        self.baud = baud
        self.rate = line_rate(baud)
        self.fifo = fifo
        if guest_pipe_size:
            try:
                fcntl.fcntl(guest_out_r, F_SETPIPE_SZ, guest_pipe_size)
            except OSError:
                pass
        # tty -> guest: pyslirp transmits; guest -> tty: the guest transmits.
        self.down = _Direction("to_guest", self.rate, fifo, self.to_guest)
        self.up = _Direction("from_guest", self.rate, fifo, self.from_guest)
        self._cut = False
        self.lost = {"to_guest": 0, "from_guest": 0}

    def cut(self, on=True):
        """Cut the line (``on``) or restore it; see the module docstring."""
        self._cut = bool(on)

    @classmethod
    def factory(cls, baud=115200, fifo=64, guest_pipe_size=PIPE_SIZE):
        def make(tty_fd, guest_in_w, guest_out_r, name="relay"):
            return cls(tty_fd, guest_in_w, guest_out_r, name=name, baud=baud, fifo=fifo,
                       guest_pipe_size=guest_pipe_size)
        return make

    def summary(self):
        return "%s; waiting for the receiver: %d bytes to guest, %d from guest" % (
            super().summary(), len(self.down.pending), len(self.up.pending))

    def times_of(self, direction, offset):
        """(taken, delivered): when the byte at ``offset`` of a direction's stream went onto the line and off it.

        ``direction`` is "to_guest" or "from_guest"; None if that byte was not (yet) captured.
        """
        d = self.down if direction == "to_guest" else self.up
        line = d.timeline
        lo, hi = 0, len(line)
        while lo < hi:
            mid = (lo + hi) // 2
            if line[mid][2] + line[mid][3] <= offset:
                lo = mid + 1
            else:
                hi = mid
        if lo >= len(line) or line[lo][2] > offset:
            return None
        taken, delivered, start, n = line[lo]
        # Within a chunk the bytes follow each other at the line rate.
        return taken + (offset - start) / d.rate, delivered

    def _loop(self):
        down, up = self.down, self.up
        while not self._stop.is_set() and not self.guest_closed:
            now = time.monotonic()
            cut = self._cut
            if cut:
                for d in (down, up):
                    for _, data in d.in_flight:
                        self.lost[d.name] += len(data)
                    d.in_flight = []
            # 1. Deliver what has finished crossing the line.
            for d, dst in ((down, self.guest_in_w), (up, self.tty_fd)):
                data = d.due(now)
                if data:
                    d.pending += data
                if d.pending:
                    if d is up and self.tty_closed:
                        d.pending = b""
                    else:
                        d.pending = self._write(dst, d.pending)
            if self.guest_closed:
                break
            # 2. Take from each sender what the UART's FIFO has room for.
            for d, src in ((down, self.tty_fd), (up, self.guest_out_r)):
                if src == self.tty_fd and self.tty_closed:
                    d.backlogged = False
                    continue
                if d.pending:
                    continue            # the receiver is not keeping up: hold the line (rare: both are fast)
                room = d.room(now)
                if room < 1:
                    continue
                data = self._read_some(src, room)
                if data is None:        # would block: the sender has nothing
                    d.backlogged = False
                    continue
                if not data:
                    if src == self.tty_fd:
                        self._tty_gone()
                    else:
                        self.guest_closed = True
                    d.backlogged = False
                    continue
                if cut:                 # transmitted at the line's pace, into nothing
                    self.lost[d.name] += len(data)
                    d.backlogged = len(data) >= room
                    d.busy_until = max(d.busy_until, now) + len(data) / d.rate
                    continue
                self._capture(d.capture, data)
                if d is down:
                    self.bytes_to_guest += len(data)
                else:
                    self.bytes_from_guest += len(data)
                # take() decides from the state before this read whether the line stayed busy meanwhile: the
                # first chunk after an idle spell starts now, not CATCHUP seconds ago.
                d.take(data, now)
                d.backlogged = len(data) >= room
            if self.guest_closed:
                break
            # 3. Sleep until the next delivery, the next FIFO room, or new bytes from an idle sender.
            now = time.monotonic()
            poller = select.poll()
            masks = {}
            timeouts = []
            for d, src, dst in ((down, self.tty_r, self.guest_in_w), (up, self.guest_out_r, self.tty_w)):
                src_open = not (src == self.tty_r and self.tty_closed)
                t = d.next_event(now, src_open)
                if t is not None:
                    timeouts.append(t)
                if d.pending:
                    if not (dst == self.tty_w and self.tty_closed):
                        masks[dst] = masks.get(dst, 0) | select.POLLOUT
                elif src_open and not d.backlogged and d.room(now) >= 1:
                    masks[src] = masks.get(src, 0) | select.POLLIN
            for fd, mask in masks.items():      # one registration per descriptor (a pty is both ends)
                poller.register(fd, mask)
            timeout = min(timeouts) if timeouts else 0.1
            timeout_ms = max(1, min(100, int(timeout * 1000 + 0.999)))
            try:
                poller.poll(timeout_ms)
            except InterruptedError:
                pass
        with self._cond:
            self._cond.notify_all()

    def _read_some(self, fd, n):
        try:
            return os.read(fd, max(1, min(n, self.CHUNK)))
        except BlockingIOError:
            return None
        except OSError as exc:
            if exc.errno == errno.EIO:  # pty whose other end is closed
                return b""
            raise
