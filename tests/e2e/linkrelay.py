"""The guest's serial line through pyslirp's link emulator (pyslirp/testing/linkemu.py): pacing and impairments.

``EmulatedRelay`` is a ``SerialRelay`` whose two directions are ``LineDirection`` values: a baud rate with a UART
FIFO, latency, a bit error rate, byte drops, XON/XOFF noise and cuts, seeded.  The guest's serial pipe is shrunk
to one page as in pacing.py (the size of Linux's serial transmit buffer), so the guest's backlog stays in its tty.
Use it through ``Lab.boot_guest(..., relay_factory=EmulatedRelay.factory(Impairments(baud=115200, ber=1e-5)))``;
``cut(on)`` cuts both directions; ``counters`` tells what each direction did ("to_guest", "from_guest").  Besides
the relay's captures of what went into the line, it keeps what the line delivered (``delivered``, written as
``serial-*-guest-delivered.bin``), and its ``summary()`` counts the frames lost each way (``lost_frames``).
"""

import fcntl
import math
import os
import select
import time

from pyslirp.testing.linkemu import Impairments, LineDirection

from e2e.pacing import F_SETPIPE_SZ, PIPE_SIZE
from e2e.uml import CAPTURE_LIMIT, SerialRelay
from pyslirp.wire.hdlc import Deframer


class EmulatedRelay(SerialRelay):

    def __init__(self, tty_fd, guest_in_w, guest_out_r, name="relay", impairments=None, up=None, seed=0,
                 guest_pipe_size=PIPE_SIZE):
        super().__init__(tty_fd, guest_in_w, guest_out_r, name=name)
        if guest_pipe_size:
            try:
                fcntl.fcntl(guest_out_r, F_SETPIPE_SZ, guest_pipe_size)
            except OSError:
                pass
        imp = impairments or Impairments()
        self._t0 = time.monotonic()
        self.down = LineDirection(imp, seed, "to_guest")            # pyslirp -> guest
        self.up = LineDirection(up or imp, seed + 1, "from_guest")  # guest -> pyslirp
        self._pending = {"to_guest": b"", "from_guest": b""}
        # What each direction's line let through (the first CAPTURE_LIMIT bytes), beside what went into it.
        self.delivered = {"to_guest": bytearray(), "from_guest": bytearray()}
        self._cuts = []

    @classmethod
    def factory(cls, impairments=None, up=None, seed=0, guest_pipe_size=PIPE_SIZE):
        """``impairments`` both ways (or toward the guest only, when ``up`` gives the other direction);
        ``guest_pipe_size`` 0 leaves the guest's serial pipe as it is (for an unpaced line)."""
        def make(tty_fd, guest_in_w, guest_out_r, name="relay"):
            return cls(tty_fd, guest_in_w, guest_out_r, name=name, impairments=impairments, up=up, seed=seed,
                       guest_pipe_size=guest_pipe_size)
        return make

    def captures(self):
        out = super().captures()
        out["serial-to-guest-delivered.bin"] = self.delivered["to_guest"]
        out["serial-from-guest-delivered.bin"] = self.delivered["from_guest"]
        return out

    def summary(self):
        """The relay's line plus, each way, the frames the line's damage cost (of those captured)."""
        parts = [super().summary()]
        for name, sent in (("to_guest", self.to_guest), ("from_guest", self.from_guest)):
            lost, total, big_lost, big = lost_frames(bytes(sent), bytes(self.delivered[name]))
            parts.append("%s: %d of %d frames lost (%d of %d above 1000 bytes), %s" % (
                name, lost, total, big_lost, big, dict(self.counters[name])))
        return "; ".join(parts)

    def now(self):
        return (time.monotonic() - self._t0) * 1000.0

    def cut(self, on=True):
        self._cuts.append(bool(on))

    @property
    def counters(self):
        return {"to_guest": dict(self.down.counters), "from_guest": dict(self.up.counters)}

    def _loop(self):
        down, up = self.down, self.up
        while not self._stop.is_set() and not self.guest_closed:
            now = self.now()
            while self._cuts:
                on = self._cuts.pop(0)
                down.cut(on, now)
                up.cut(on, now)
            for line, src, dst in ((down, self.tty_fd, self.guest_in_w), (up, self.guest_out_r, self.tty_fd)):
                self._step(line, src, dst, now)
                if self.guest_closed:
                    break
            if self.guest_closed:
                break
            now = self.now()
            poller = select.poll()
            masks = {}
            deadlines = []
            for line, src, dst in ((down, self.tty_r, self.guest_in_w), (up, self.guest_out_r, self.tty_w)):
                src_open = not (src == self.tty_r and self.tty_closed)
                t = line.next_deadline(now)
                if t is not None:
                    deadlines.append(t)
                if self._pending[line.name]:
                    if not (dst == self.tty_w and self.tty_closed):
                        masks[dst] = masks.get(dst, 0) | select.POLLOUT
                elif src_open and not line.backlogged and line.room(now) >= 1:
                    masks[src] = masks.get(src, 0) | select.POLLIN
            for fd, mask in masks.items():
                poller.register(fd, mask)
            timeout = (min(deadlines) - now) if deadlines else 100.0
            try:
                poller.poll(max(1, min(100, int(math.ceil(timeout)))))
            except InterruptedError:
                pass
        with self._cond:
            self._cond.notify_all()

    def _step(self, line, src, dst, now):
        name = line.name
        data = line.receive(now)
        if data:
            self._pending[name] += data
            kept = self.delivered[name]
            if len(kept) < CAPTURE_LIMIT:
                kept += data[:CAPTURE_LIMIT - len(kept)]
        if self._pending[name]:
            if dst == self.tty_fd and self.tty_closed:
                self._pending[name] = b""
            else:
                self._pending[name] = self._write(dst, self._pending[name])
        if self._pending[name]:
            return
        if src == self.tty_fd and self.tty_closed:
            line.source_idle()
            return
        room = line.room(now)
        if room < 1:
            return
        data = self._read_some(src, room)
        if data is None:
            line.source_idle()
            return
        if not data:
            if src == self.tty_fd:
                self._tty_gone()
            else:
                self.guest_closed = True
            line.source_idle()
            return
        if line is self.down:
            self.bytes_to_guest += len(data)
            self._capture(self.to_guest, data)
        else:
            self.bytes_from_guest += len(data)
            self._capture(self.from_guest, data)
        line.send(data, now)

    def _read_some(self, fd, n):
        try:
            return os.read(fd, max(1, min(n, self.CHUNK)))
        except BlockingIOError:
            return None
        except OSError as exc:
            if exc.errno == 5:          # EIO: a pty whose other end is closed
                return b""
            raise


def lost_frames(sent, delivered):
    """(lost, total, lost above 1000 bytes, total above 1000 bytes): the good frames of ``sent`` that are not
    among the good frames of ``delivered``, matched in order (the line drops and damages, it never reorders)."""
    def frames(data):
        return [f for f in Deframer(mru=65535, accm=0).feed(data) if f is not None]
    out = frames(sent)
    got = frames(delivered)
    j = lost = big = big_lost = 0
    for frame in out:
        if len(frame) > 1000:
            big += 1
        if j < len(got) and got[j] == frame:
            j += 1
        else:
            lost += 1
            if len(frame) > 1000:
                big_lost += 1
    return lost, len(out), big_lost, big
