"""A serial line emulator: baud-rate pacing, latency, bit errors, byte drops, line cuts and XON/XOFF noise.

Theory of operation
-------------------
The impairments are sans-IO: :class:`LineDirection` is one direction of a line, a UART with a small FIFO that
transmits ``baud / bits_per_byte`` bytes per second.  Time is an argument (milliseconds of the caller's clock, an
int or a float); nothing here reads a clock or touches a descriptor:

* ``room(now)`` is how many bytes the FIFO takes now.  The sender's other bytes stay where they are (in its own
  buffer, where the sender can see its backlog, as on real hardware); ``send(data, now)`` puts bytes on the line.
* ``receive(now)`` returns the bytes whose last bit has crossed the line (plus ``latency_ms``).
* ``next_deadline(now)`` is when the direction needs its caller again: the next delivery, or the moment the FIFO
  has room for a useful chunk while the sender is known to have more (``source_idle()`` tells it the sender had
  nothing the last time it was asked).

The line is a virtual clock: ``busy_until`` is when the bytes taken so far finish, the FIFO holds
``(busy_until - now) * rate`` bytes.  When the caller is woken late while the sender had more waiting, the line is
taken to have stayed busy meanwhile (a UART's interrupt handler does not oversleep), so the caller's scheduling
jitter costs no throughput; the catch-up is bounded (``CATCHUP_MS``) so a long stall does not become a burst.
Without a baud rate (``baud=0``) the line is unpaced: every byte offered is taken (at most ``UNPACED_CHUNK`` at a
time) and delivered after ``latency_ms``.

Impairments are applied to each chunk as it goes onto the line, from one seeded ``random.Random``, so a run with
the same seed and the same input is the same run:

* ``ber``: each data bit is flipped with this probability (start and stop bits are not modelled: a flipped bit
  is a flipped data bit);
* ``drop_rate``: each byte is lost with this probability (an overrun);
* ``xonxoff_rate``: after each byte, with this probability, an XON (0x11) or XOFF (0x13) is inserted, as a modem
  or a terminal server doing software flow control would add (PPP's default ACCM escapes both, so a correct
  receiver drops them);
* ``cuts``: ``(start_ms, duration_ms)`` pairs on the caller's clock, and ``cut(on)`` at any time: while the line
  is cut every byte sent is lost (the sender is still drained at the line's pace: a UART transmits into a dead
  line), and so is every byte in flight when the cut begins or still in flight when it is delivered.

Error positions are drawn as geometric gaps, so the work per chunk is proportional to the errors, not to the
bytes.  ``counters`` tells what was done: bytes taken and delivered, bits flipped, bytes dropped, inserted and
lost to cuts.

:class:`LinkEmulator` is the threaded shell: two :class:`Endpoint` values (a pty, pipes, a child process's
standard input and output, any pair of descriptors) and one thread that moves bytes between them through two
``LineDirection``\\ s, woken by poll(2) at the next deadline.  The command line (``python3 -m
pyslirp.testing.linkemu``) runs one between two endpoints, e.g. pyslirp on one side and pppd on the other::

    python3 -m pyslirp.testing.linkemu --baud 115200 --ber 1e-5 --cut 20:10 \\
        "exec:python3 pyslirp.py --stdio" pty

prints the pty's path (give it to pppd) and, at the end, the counters.
"""

import argparse
import errno
import math
import os
import random
import select
import shlex
import subprocess
import sys
import threading
import time
from dataclasses import dataclass, field

XON = 0x11
XOFF = 0x13
CATCHUP_MS = 50.0           # line time a late wake-up may make up for
UNPACED_CHUNK = 65536       # bytes taken at once from a sender on an unpaced line
READ_CHUNK = 65536


@dataclass(frozen=True)
class Impairments:
    """What one direction of the line does to the bytes (see the module docstring); the defaults do nothing."""
    baud: int = 0                   # bit/s; 0 = unpaced
    bits_per_byte: int = 10         # 8N1: start + 8 data + stop
    fifo: int = 64                  # bytes the UART holds (16550A: 16; later ones 64 or 128)
    latency_ms: float = 0.0         # added to every byte's crossing
    ber: float = 0.0                # probability that a data bit is flipped
    drop_rate: float = 0.0          # probability that a byte is lost
    xonxoff_rate: float = 0.0       # probability that an XON/XOFF is inserted after a byte
    cuts: tuple = field(default=())  # ((start_ms, duration_ms), ...) on the caller's clock

    @property
    def rate(self):
        """Bytes per millisecond, or None when unpaced."""
        if not self.baud:
            return None
        return self.baud / float(self.bits_per_byte) / 1000.0


def _gaps(rng, p, n):
    """Positions in [0, n) hit by an event of probability ``p`` each: geometric gaps, one draw per event."""
    if p <= 0.0 or n <= 0:
        return []
    if p >= 1.0:
        return list(range(n))
    log_q = math.log1p(-p)
    out = []
    pos = -1
    while True:
        u = rng.random()
        pos += 1 + int(math.log1p(-u) / log_q)
        if pos >= n:
            return out
        out.append(pos)


class LineDirection(object):
    """One direction of a serial line, sans-IO (see the module docstring)."""

    def __init__(self, impairments=None, seed=0, name="line"):
        self.imp = impairments or Impairments()
        self.rng = random.Random(seed)
        self.name = name
        self.rate = self.imp.rate
        self.busy_until = 0.0       # when the last byte taken finishes crossing (ms)
        self.backlogged = False     # the last send filled the room: the sender had more waiting
        self.in_flight = []         # [(deliver_at, taken_at, bytes)] in order
        self._manual_cut = False
        self._cut_since = None      # when the current cut (manual) began
        self.counters = dict(taken=0, delivered=0, bits_flipped=0, bytes_dropped=0, bytes_inserted=0,
                             lost_to_cut=0)

    # -- cuts ------------------------------------------------------------------------
    def cut(self, on, now):
        """Cut the line (``on``) or restore it, at ``now``."""
        if on and not self._manual_cut:
            self._drop_in_flight()
        self._manual_cut = bool(on)

    def is_cut(self, now):
        if self._manual_cut:
            return True
        for start, duration in self.imp.cuts:
            if start <= now < start + duration:
                return True
        return False

    def _drop_in_flight(self):
        for _, _, data in self.in_flight:
            self.counters["lost_to_cut"] += len(data)
        self.in_flight = []

    def _cut_between(self, t0, t1):
        """A scheduled cut overlaps [t0, t1]."""
        for start, duration in self.imp.cuts:
            if start <= t1 and t0 < start + duration:
                return True
        return False

    # -- the sender's side -----------------------------------------------------------
    def _start(self, now):
        if self.backlogged and self.busy_until < now:
            return max(self.busy_until, now - CATCHUP_MS)
        return max(self.busy_until, now)

    def room(self, now):
        """Bytes the line takes at ``now`` (0: the FIFO is full)."""
        if self.rate is None:
            return UNPACED_CHUNK
        start = self._start(now)
        return max(0, int(self.imp.fifo - (start - now) * self.rate))

    def source_idle(self):
        """The sender had nothing to send when last asked: the line does not make up for lost time."""
        self.backlogged = False

    def send(self, data, now):
        """Put ``data`` (at most ``room(now)`` bytes, else the rest is refused) on the line; returns bytes taken."""
        room = self.room(now)
        data = bytes(data[:room])
        n = len(data)
        if not n:
            return 0
        start = self._start(now)
        self.backlogged = n >= room
        self.counters["taken"] += n
        if self.rate is None:
            end = float(now)
        else:
            end = start + n / self.rate
        self.busy_until = end
        if self.is_cut(now):
            self.counters["lost_to_cut"] += n
            return n
        data = self._impair(data)
        if data:
            self.in_flight.append((end + self.imp.latency_ms, now, data))
        return n

    def _impair(self, data):
        imp, rng, c = self.imp, self.rng, self.counters
        if imp.drop_rate:
            hits = _gaps(rng, imp.drop_rate, len(data))
            if hits:
                c["bytes_dropped"] += len(hits)
                parts, prev = [], 0
                for i in hits:
                    parts.append(data[prev:i])
                    prev = i + 1
                parts.append(data[prev:])
                data = b"".join(parts)
        if imp.ber and data:
            hits = _gaps(rng, imp.ber, 8 * len(data))
            if hits:
                c["bits_flipped"] += len(hits)
                buf = bytearray(data)
                for bit in hits:
                    buf[bit >> 3] ^= 1 << (bit & 7)
                data = bytes(buf)
        if imp.xonxoff_rate and data:
            hits = _gaps(rng, imp.xonxoff_rate, len(data))
            if hits:
                c["bytes_inserted"] += len(hits)
                parts, prev = [], 0
                for i in hits:
                    parts.append(data[prev:i + 1])
                    parts.append(bytes([XON if rng.random() < 0.5 else XOFF]))
                    prev = i + 1
                parts.append(data[prev:])
                data = b"".join(parts)
        return data

    # -- the receiver's side ---------------------------------------------------------
    def receive(self, now):
        """The bytes that have crossed the line by ``now``."""
        out = []
        while self.in_flight and self.in_flight[0][0] <= now:
            deliver_at, taken_at, data = self.in_flight.pop(0)
            if self._manual_cut or self._cut_between(taken_at, deliver_at):
                self.counters["lost_to_cut"] += len(data)
                continue
            out.append(data)
        data = b"".join(out)
        self.counters["delivered"] += len(data)
        return data

    def next_deadline(self, now):
        """When (ms) this direction needs its caller again without new input, or None."""
        times = []
        if self.in_flight:
            times.append(self.in_flight[0][0])
        if self.backlogged and self.rate is not None:
            # Wake when half the FIFO is free, not for every byte.
            times.append(self.busy_until - (self.imp.fifo / 2.0) / self.rate)
        elif self.backlogged:
            times.append(now)
        if not times:
            return None
        return max(float(now), min(times))


# ============================================================================ threaded shell

class Endpoint(object):
    """One end of the emulated line: a descriptor to read what this end sends and one to write what it gets.

    ``label`` is shown to the user (a pty's path); ``close()`` releases what the endpoint owns.
    """

    def __init__(self, read_fd, write_fd, label="", process=None, owned=(), kind="fds"):
        self.kind = kind            # pty, exec, stdio, device or fds
        self.read_fd = read_fd
        self.write_fd = write_fd
        self.label = label
        self.process = process
        self._owned = list(owned)

    @classmethod
    def pty(cls):
        """A new pty: the emulator holds the master, the other program opens ``label`` (the slave's path).

        The slave is kept open here too, so the line does not hang up between two programs using it.
        """
        import pty
        import tty
        master, slave = pty.openpty()
        tty.setraw(slave)
        return cls(master, master, label=os.ttyname(slave), owned=[master, slave], kind="pty")

    @classmethod
    def exec(cls, command):
        """A child process (``command``: a shell-like string or an argv list) speaking on stdin/stdout."""
        argv = shlex.split(command) if isinstance(command, str) else list(command)
        proc = subprocess.Popen(argv, stdin=subprocess.PIPE, stdout=subprocess.PIPE, bufsize=0)
        return cls(proc.stdout.fileno(), proc.stdin.fileno(), label=" ".join(argv), process=proc,
                   owned=[proc.stdout, proc.stdin], kind="exec")

    @classmethod
    def stdio(cls):
        """This process's own standard input and output."""
        return cls(sys.stdin.fileno(), sys.stdout.fileno(), label="stdio", kind="stdio")

    @classmethod
    def device(cls, path):
        """A tty device or pty slave already there (``/dev/ttyUSB0``, ``/dev/pts/5``), opened raw."""
        import tty
        fd = os.open(path, os.O_RDWR | os.O_NOCTTY)
        try:
            tty.setraw(fd)
        except Exception:
            pass
        return cls(fd, fd, label=path, owned=[fd], kind="device")

    @classmethod
    def parse(cls, spec):
        """``pty``, ``stdio``, ``exec:COMMAND`` or a device path."""
        if spec == "pty":
            return cls.pty()
        if spec == "stdio":
            return cls.stdio()
        if spec.startswith("exec:"):
            return cls.exec(spec[len("exec:"):])
        return cls.device(spec)

    def close(self):
        if self.process is not None and self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(5)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
        for item in self._owned:
            try:
                if isinstance(item, int):
                    os.close(item)
                else:
                    item.close()
            except OSError:
                pass
        self._owned = []


class _Pipe(object):
    """The shell's state for one direction: source fd -> LineDirection -> destination fd."""

    def __init__(self, line, src, dst):
        self.line = line
        self.src = src
        self.dst = dst
        self.pending = b""          # delivered, but the destination would block
        self.src_closed = False
        self.dst_closed = False


class LinkEmulator(object):
    """Moves bytes between two :class:`Endpoint` s through two seeded :class:`LineDirection` s, in a thread.

    ``a_to_b`` and ``b_to_a`` are the :class:`Impairments` of each direction (``impairments`` for both when they
    are not given).  ``start()``, ``cut(on)``, ``stop()``; ``counters`` per direction; ``closed`` once either
    endpoint has hung up.
    """

    def __init__(self, a, b, impairments=None, seed=0, a_to_b=None, b_to_a=None, clock=time.monotonic):
        self.a, self.b = a, b
        self._clock = clock
        self._t0 = clock()
        ab = a_to_b or impairments or Impairments()
        ba = b_to_a or impairments or Impairments()
        self.pipes = [_Pipe(LineDirection(ab, seed, "a>b"), a.read_fd, b.write_fd),
                      _Pipe(LineDirection(ba, seed + 1, "b>a"), b.read_fd, a.write_fd)]
        for fd in set((a.read_fd, a.write_fd, b.read_fd, b.write_fd)):
            os.set_blocking(fd, False)
        self.error = None
        self.closed = threading.Event()
        self._stop = threading.Event()
        self._lock = threading.Lock()
        self._thread = threading.Thread(target=self._run, name="linkemu", daemon=True)

    def now(self):
        """The emulator's clock: milliseconds since it was made (scheduled cuts are on this clock)."""
        return (self._clock() - self._t0) * 1000.0

    @property
    def counters(self):
        return {p.line.name: dict(p.line.counters) for p in self.pipes}

    def start(self):
        self._thread.start()
        return self

    def cut(self, on=True):
        """Cut the line both ways (``on``) or restore it."""
        with self._lock:
            now = self.now()
            for p in self.pipes:
                p.line.cut(on, now)

    def stop(self):
        self._stop.set()
        self._thread.join(5)

    def wait(self, timeout=None):
        """Until an endpoint hangs up (True) or ``timeout`` seconds (False)."""
        return self.closed.wait(timeout)

    def _run(self):
        try:
            self._loop()
        except Exception as exc:
            self.error = repr(exc)
        finally:
            self.closed.set()

    def _loop(self):
        while not self._stop.is_set():
            with self._lock:
                now = self.now()
                for p in self.pipes:
                    self._step(p, now)
                if any(p.src_closed or p.dst_closed for p in self.pipes):
                    return
                now = self.now()
                poller = select.poll()
                masks = {}
                deadlines = []
                for p in self.pipes:
                    t = p.line.next_deadline(now)
                    if t is not None:
                        deadlines.append(t)
                    if p.pending:
                        masks[p.dst] = masks.get(p.dst, 0) | select.POLLOUT
                    elif not p.line.backlogged and p.line.room(now) >= 1:
                        masks[p.src] = masks.get(p.src, 0) | select.POLLIN
                for fd, mask in masks.items():
                    poller.register(fd, mask)
            timeout = (min(deadlines) - now) if deadlines else 100.0
            try:
                poller.poll(max(1, min(100, int(math.ceil(timeout)))))
            except InterruptedError:
                pass

    def _step(self, p, now):
        line = p.line
        data = line.receive(now)
        if data:
            p.pending += data
        if p.pending:
            p.pending = self._write(p, p.pending)
        if p.pending:
            return                  # the receiver is not keeping up: hold the line
        room = line.room(now)
        if room < 1:
            return
        try:
            data = os.read(p.src, min(room, READ_CHUNK))
        except BlockingIOError:
            line.source_idle()
            return
        except OSError as exc:
            if exc.errno != errno.EIO:      # EIO: a pty whose other side is closed
                raise
            data = b""
        if not data:
            p.src_closed = True
            return
        line.send(data, now)

    def _write(self, p, data):
        try:
            n = os.write(p.dst, data)
        except BlockingIOError:
            return data
        except OSError as exc:
            if exc.errno in (errno.EIO, errno.EPIPE):
                p.dst_closed = True
                return b""
            raise
        return data[n:]


# ============================================================================ command line

def _cut_arg(text):
    try:
        at, seconds = text.split(":")
        return (float(at) * 1000.0, float(seconds) * 1000.0)
    except ValueError:
        raise argparse.ArgumentTypeError("a cut is AT:SECONDS (seconds after the start, then its length)")


def build_parser():
    p = argparse.ArgumentParser(
        prog="python3 -m pyslirp.testing.linkemu",
        description="Emulate a serial line between two endpoints: pty (a new pty; its path is printed), "
                    "stdio, exec:COMMAND (a child on its stdin/stdout) or a device path.")
    p.add_argument("a", help="first endpoint")
    p.add_argument("b", help="second endpoint")
    p.add_argument("--baud", type=int, default=0, help="bit/s of each direction (0: unpaced)")
    p.add_argument("--bits-per-byte", type=int, default=10, help="10 for 8N1 (default)")
    p.add_argument("--fifo", type=int, default=64, help="UART FIFO bytes (default 64)")
    p.add_argument("--latency", type=float, default=0.0, help="ms added to each byte's crossing")
    p.add_argument("--ber", type=float, default=0.0, help="bit error rate, e.g. 1e-5")
    p.add_argument("--drop", type=float, default=0.0, help="probability that a byte is lost")
    p.add_argument("--xonxoff", type=float, default=0.0, help="probability of an XON/XOFF after a byte")
    p.add_argument("--cut", type=_cut_arg, action="append", default=[], metavar="AT:SECONDS",
                   help="cut the line AT seconds after the start for SECONDS (repeatable)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--duration", type=float, default=0.0, help="stop after this many seconds (0: at hang-up)")
    return p


def main(argv=None):
    args = build_parser().parse_args(argv)
    for name in ("ber", "drop", "xonxoff"):
        if not 0.0 <= getattr(args, name) <= 1.0:
            sys.stderr.write("linkemu: --%s must be between 0 and 1\n" % name)
            return 2
    imp = Impairments(baud=args.baud, bits_per_byte=args.bits_per_byte, fifo=args.fifo,
                      latency_ms=args.latency, ber=args.ber, drop_rate=args.drop,
                      xonxoff_rate=args.xonxoff, cuts=tuple(args.cut))
    endpoints = []
    try:
        for spec in (args.a, args.b):
            try:
                endpoints.append(Endpoint.parse(spec))
            except OSError as exc:
                sys.stderr.write("linkemu: cannot open %s: %s\n" % (spec, exc.strerror or exc))
                return 1
        for e in endpoints:
            if e.kind == "pty":
                sys.stderr.write("linkemu: pty %s\n" % e.label)
        sys.stderr.flush()
        emu = LinkEmulator(endpoints[0], endpoints[1], imp, seed=args.seed).start()
        try:
            emu.wait(args.duration or None)
        except KeyboardInterrupt:
            pass
        emu.stop()
        for name, c in sorted(emu.counters.items()):
            sys.stderr.write("linkemu: %s %s\n" % (name, " ".join("%s=%d" % kv for kv in sorted(c.items()))))
        if emu.error:
            sys.stderr.write("linkemu: %s\n" % emu.error)
            return 1
        return 0
    finally:
        for e in endpoints:
            e.close()


if __name__ == "__main__":
    sys.exit(main())
