"""End-to-end harness: the real Linux pppd, in a User-Mode Linux guest, against a serial line on the host.

Theory of operation
-------------------
``Guest`` boots ``linux.uml`` with the host's root filesystem (hostfs) and ``tests/e2e/guest_init.py`` as its init
(see that file).  The guest's ``/dev/ttyS0`` is UML's ``ssl0``, attached to two pipes (``ssl0=fd:IN,fd:OUT``);
``SerialRelay`` copies bytes between those pipes and a host tty, normally the pty that pyslirp created and printed.
Pipes rather than the pty itself because UML reads its serial input one byte per read(2), which from pipes is about
twice as fast, and because UML hangs its line up for good when nobody holds a pty's other end open.

A scenario is a bash script (the helpers of ``guest_lib.sh`` are sourced first) that the guest runs once its PPP
modules are loaded: typically start pppd, wait for ppp0, do things through the link, stop pppd.  Results come back
as files in the run directory, which both sides see: pppd's debug log, ``ip -o addr`` output, exit statuses.  The
host and the guest can also wait for each other with mark files (``Guest.wait_mark`` / ``Guest.mark``).

``Pyslirp`` runs ``pyslirp.py --pty --pty-link PATH -c CONFIG [--pcap FILE] -d`` with a generated TOML config and
waits for its ``pty: /dev/pts/N`` line; with ``line="device"``, ``"stdio"`` or ``"stdio-pty"`` it serves a pty the
harness created (by its path, as a serial device) or runs ``--stdio`` on pipes or on a pty instead.  ``Lab`` owns every process a test started and tears all of them down
(process groups killed by id, hard timeouts everywhere).

No network is involved: the plumbing is ptys, pipes and files, and the guest's 10.0.0.x addresses exist only in
its own kernel and inside PPP frames.
"""

import errno
import json
import os
import re
import select
import shutil
import signal
import subprocess
import sys
import tempfile
import termios
import textwrap
import threading
import time
import tty

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(os.path.dirname(HERE))
GUEST_INIT = os.path.join(HERE, "guest_init.py")
GUEST_LIB = os.path.join(HERE, "guest_lib.sh")
PYSLIRP = os.path.join(ROOT, "pyslirp.py")

UML_BINARIES = ("/usr/bin/linux.uml", "/usr/bin/linux")
MODULES_ROOT = "/usr/lib/uml/modules"
# ppp_async pulls in ppp_generic, slhc and crc-ccitt; the compressors make pppd offer CCP as it does on a stock
# distribution kernel (pyslirp negotiates Deflate and rejects BSD-Compress).
PPP_MODULES = ("kernel/drivers/net/ppp/ppp_async.ko",)
OPTIONAL_MODULES = ("kernel/drivers/net/ppp/ppp_deflate.ko", "kernel/drivers/net/ppp/bsd_comp.ko")

BOOT_SLACK = 30.0        # seconds allowed on top of a script's own timeout for boot and power-off
CAPTURE_LIMIT = 1 << 20  # serial bytes kept per direction for diagnostics


def uml_binary():
    """The UML kernel: $PYSLIRP_UML if set (then only that), else the Debian package's."""
    override = os.environ.get("PYSLIRP_UML")
    for path in ((override,) if override else UML_BINARIES):
        if os.path.isfile(path) and os.access(path, os.X_OK):
            return path
    return None


def modules_dir():
    """The newest UML module tree that holds the PPP modules, or None."""
    if not os.path.isdir(MODULES_ROOT):
        return None
    for version in sorted(os.listdir(MODULES_ROOT), reverse=True):
        base = os.path.join(MODULES_ROOT, version)
        if all(os.path.isfile(os.path.join(base, m)) for m in PPP_MODULES) and \
                os.path.isfile(os.path.join(base, "modules.dep")):
            return base
    return None


def unavailable_reason():
    """Why UML end-to-end tests cannot run on this machine, or None if they can."""
    if not sys.platform.startswith("linux"):
        return "User-Mode Linux needs a Linux host"
    if uml_binary() is None:
        return "no User-Mode Linux kernel (%s); install the user-mode-linux package" % " or ".join(
            (os.environ["PYSLIRP_UML"],) if os.environ.get("PYSLIRP_UML") else UML_BINARIES)
    if modules_dir() is None:
        return "no UML PPP modules under %s/<version>/%s" % (MODULES_ROOT, PPP_MODULES[0])
    if not os.path.exists("/dev/shm") and not os.access(tempfile.gettempdir(), os.W_OK):
        return "no writable temporary directory for UML's memory file"
    return None


def module_load_order(base, targets, optional=()):
    """Absolute module paths in a valid load order (each module after the ones it depends on, per modules.dep)."""
    deps = {}
    with open(os.path.join(base, "modules.dep")) as f:
        for line in f:
            if ":" not in line:
                continue
            name, rest = line.split(":", 1)
            deps[name.strip()] = rest.split()
    order = []

    def visit(name, chain):
        if name in order:
            return
        if name in chain:
            raise ValueError("module dependency cycle at %s" % name)
        # modules.dep lists a module's dependencies so that loading them right to left works.
        for dep in reversed(deps.get(name, [])):
            visit(dep, chain + (name,))
        order.append(name)

    for target in targets:
        visit(target, ())
    for target in optional:
        if target in deps and os.path.isfile(os.path.join(base, target)):
            visit(target, ())
    return [os.path.join(base, name) for name in order]


def set_raw(fd):
    """Raw 8-bit mode, no echo, no flow control, no modem control: a transparent byte pipe."""
    tty.setraw(fd)
    attrs = termios.tcgetattr(fd)
    attrs[0] &= ~(termios.IXON | termios.IXOFF | termios.IXANY)
    attrs[2] |= termios.CLOCAL | termios.CREAD
    attrs[2] &= ~(termios.HUPCL | getattr(termios, "CRTSCTS", 0))
    termios.tcsetattr(fd, termios.TCSANOW, attrs)


class SerialRelay(object):
    """Copies bytes between a host tty (file descriptor) and the guest's serial pipes, with backpressure.

    Each direction holds at most one read's worth of bytes: while a chunk waits to be written, its source is not
    read.  When the tty side hangs up (pyslirp exited), the guest's output is still drained and discarded so the
    guest never blocks.  The first CAPTURE_LIMIT bytes of each direction are kept for diagnostics.

    ``tty_fd`` is one descriptor (a pty) or a pair ``(read_fd, write_fd)``: pyslirp's standard output and input
    pipes for ``--stdio``.
    """

    CHUNK = 65536

    def __init__(self, tty_fd, guest_in_w, guest_out_r, name="relay"):
        if isinstance(tty_fd, tuple):
            self.tty_r, self.tty_w = tty_fd
        else:
            self.tty_r = self.tty_w = tty_fd
        self.tty_fd = self.tty_r
        self.guest_in_w = guest_in_w
        self.guest_out_r = guest_out_r
        for fd in set((self.tty_r, self.tty_w, guest_in_w, guest_out_r)):
            os.set_blocking(fd, False)
        self.to_guest = bytearray()    # tty -> guest capture
        self.from_guest = bytearray()  # guest -> tty capture
        self.bytes_to_guest = 0
        self.bytes_from_guest = 0
        self.last_at = {"to_guest": None, "from_guest": None}     # wall clock of the last byte taken each way
        self.tty_closed = False
        self.guest_closed = False
        self.error = None
        self._stop = threading.Event()
        self._cond = threading.Condition()
        self._thread = threading.Thread(target=self._run, name=name, daemon=True)

    def start(self):
        self._thread.start()
        return self

    def stop(self):
        self._stop.set()
        self._thread.join(5)

    def wait_from_guest(self, pattern, timeout):
        """Wait until the guest's serial output contains ``pattern`` (bytes); return True if it did."""
        deadline = time.monotonic() + timeout
        with self._cond:
            while pattern not in self.from_guest:
                left = deadline - time.monotonic()
                if left <= 0 or self.guest_closed:
                    return pattern in self.from_guest
                self._cond.wait(min(left, 0.2))
            return True

    def summary(self):
        """One line for a failure report: the bytes each way and when the last one was taken from its sender."""
        def at(t):
            return time.strftime("%H:%M:%S", time.localtime(t)) + ".%03d" % (t % 1 * 1000) if t else "never"
        return "%d bytes to guest (last at %s), %d from guest (last at %s), tty_closed=%s, error=%s" % (
            self.bytes_to_guest, at(self.last_at["to_guest"]), self.bytes_from_guest, at(self.last_at["from_guest"]),
            self.tty_closed, self.error)

    def captures(self):
        """File name -> bytes, written into the guest's run directory when it finishes."""
        return {"serial-from-guest.bin": self.from_guest, "serial-to-guest.bin": self.to_guest}

    def _capture(self, buf, data):
        self.last_at["to_guest" if buf is self.to_guest else "from_guest"] = time.time()
        if len(buf) < CAPTURE_LIMIT:
            with self._cond:
                buf += data[: CAPTURE_LIMIT - len(buf)]
                self._cond.notify_all()

    def _run(self):
        try:
            self._loop()
        except Exception as exc:  # surfaced by Lab.diagnostics()
            self.error = repr(exc)

    def _loop(self):
        pending_in = b""   # from the tty, waiting to be written to the guest
        pending_out = b""  # from the guest, waiting to be written to the tty
        while not self._stop.is_set() and not self.guest_closed:
            poller = select.poll()
            if not self.tty_closed:
                masks = {}
                if not pending_in:
                    masks[self.tty_r] = select.POLLIN
                if pending_out:
                    masks[self.tty_w] = masks.get(self.tty_w, 0) | select.POLLOUT
                for fd, mask in masks.items():
                    poller.register(fd, mask)
            if pending_in:
                poller.register(self.guest_in_w, select.POLLOUT)
            if not pending_out:
                poller.register(self.guest_out_r, select.POLLIN)
            events = poller.poll(100)
            for fd, ev in self._split_tty_events(events):
                if fd == self.guest_out_r and ev & (select.POLLIN | select.POLLHUP | select.POLLERR):
                    data = self._read(fd)
                    if data is None:
                        continue
                    if not data:
                        self.guest_closed = True
                        break
                    self.bytes_from_guest += len(data)
                    self._capture(self.from_guest, data)
                    if not self.tty_closed:
                        pending_out = data
                elif fd == self.tty_fd:
                    if ev & select.POLLOUT and pending_out:
                        pending_out = self._write(fd, pending_out)
                    if ev & select.POLLIN and not pending_in:
                        data = self._read(fd)
                        if data:
                            self.bytes_to_guest += len(data)
                            self._capture(self.to_guest, data)
                            pending_in = data
                        elif data is not None:
                            self._tty_gone()
                            pending_out = b""
                    elif ev & (select.POLLHUP | select.POLLERR | select.POLLNVAL):
                        self._tty_gone()
                        pending_out = b""
                elif fd == self.guest_in_w:
                    if ev & (select.POLLERR | select.POLLHUP):
                        self.guest_closed = True
                        break
                    pending_in = self._write(fd, pending_in)
        with self._cond:
            self._cond.notify_all()

    def _split_tty_events(self, events):
        """poll() events with the tty's two descriptors (if two) reported as the one ``tty_fd``."""
        if self.tty_r == self.tty_w:
            return events
        # The write end reports POLLOUT, or POLLERR once its reader is gone; never data.
        return [(self.tty_r, ev & ~select.POLLIN) if fd == self.tty_w else (fd, ev) for fd, ev in events]

    def _tty_gone(self):
        self.tty_closed = True

    @staticmethod
    def _read(fd):
        try:
            return os.read(fd, SerialRelay.CHUNK)
        except BlockingIOError:
            return None
        except OSError as exc:
            if exc.errno == errno.EIO:  # pty whose other end is closed
                return b""
            raise

    def _write(self, fd, data):
        if fd == self.tty_fd:
            fd = self.tty_w
        try:
            n = os.write(fd, data)
        except BlockingIOError:
            return data
        except OSError as exc:
            if exc.errno in (errno.EIO, errno.EPIPE):
                if fd == self.tty_w:
                    self._tty_gone()
                else:
                    self.guest_closed = True
                return b""
            raise
        return data[n:]


class GuestError(AssertionError):
    pass


class Guest(object):
    """One UML boot running one scenario script.  Use through ``Lab.boot_guest``."""

    def __init__(self, rundir, script, timeout=60.0, etc_ppp=None, env=None, mem="256M", name="guest",
                 relay_factory=None):
        self.rundir = rundir
        # relay_factory(tty_fd, guest_in_w, guest_out_r, name=...) -> a started-later relay (pacing.PacedRelay)
        self.relay_factory = relay_factory or SerialRelay
        self.name = name
        self.timeout = float(timeout)
        self.proc = None
        self.relay = None
        self.slirp = None           # the Pyslirp whose line this guest dials (Lab.boot_guest), for diagnostics
        self.returncode = None
        self.report = None
        self._fds = []
        self._statedir = None
        self._tty_fd = None
        self._started = None
        os.makedirs(rundir, exist_ok=True)
        base = modules_dir()
        plan = {
            "modules": module_load_order(base, PPP_MODULES, OPTIONAL_MODULES) if base else [],
            "etc_ppp": dict((k, [v, 0o600]) for k, v in (etc_ppp or {}).items()),
            "script": os.path.join(rundir, "guest.sh"),
            "timeout": self.timeout,
            "env": dict(env or {}),
        }
        plan["etc_ppp"].setdefault("options", ["# empty: pppd's built-in defaults\n", 0o644])
        with open(plan["script"], "w") as f:
            f.write("# generated by tests/e2e/uml.py\nsource %s\nsay 'scenario starts'\n" % _sh_quote(GUEST_LIB))
            f.write(_dedent(script))
            f.write("\nsay 'scenario ends'\n")
        self.plan_path = os.path.join(rundir, "plan.json")
        with open(self.plan_path, "w") as f:
            json.dump(plan, f, indent=1)
        self.init_path = os.path.join(rundir, "init")
        with open(self.init_path, "w") as f:
            f.write("#!/bin/sh\nexec %s %s %s\n" % (_sh_quote(sys.executable), _sh_quote(GUEST_INIT),
                                                    _sh_quote(self.plan_path)))
        os.chmod(self.init_path, 0o755)
        self.mem = mem

    def path(self, name):
        return os.path.join(self.rundir, name)

    def start(self, tty_fd):
        """Boot, with the guest's ttyS0 relayed to ``tty_fd`` (the harness owns and later closes it)."""
        self._tty_fd = tty_fd
        in_r, in_w = os.pipe()
        out_r, out_w = os.pipe()
        self._fds = [in_w, out_r]
        # UML's state (mconsole socket: a short path) and memory file live in a private scratch directory.
        self._statedir = tempfile.mkdtemp(prefix="pyslirp-uml-")
        cmd = [uml_binary(), "mem=%s" % self.mem, "root=/dev/root", "rootfstype=hostfs", "rootflags=/", "rw",
               "init=%s" % self.init_path, "uml_dir=%s" % self._statedir, "umid=%s" % self.name,
               "con=null", "con0=fd:0,fd:1", "ssl=null", "ssl0=fd:%d,fd:%d" % (in_r, out_w)]
        env = {"PATH": "/usr/sbin:/usr/bin:/sbin:/bin", "TMPDIR": self._statedir, "HOME": self._statedir}
        console = open(self.path("console.txt"), "wb")
        try:
            self.proc = subprocess.Popen(cmd, stdin=subprocess.DEVNULL, stdout=console, stderr=subprocess.STDOUT,
                                         pass_fds=(in_r, out_w), env=env, start_new_session=True, close_fds=True)
        finally:
            console.close()
            os.close(in_r)
            os.close(out_w)
        self._started = time.monotonic()
        self.relay = self.relay_factory(tty_fd, in_w, out_r, name="relay-" + self.name).start()
        return self

    @property
    def deadline(self):
        return self._started + self.timeout + BOOT_SLACK

    def running(self):
        return self.proc is not None and self.proc.poll() is None

    def wait_mark(self, name, timeout=30.0):
        """Wait for the guest script's ``mark NAME``; False if it did not come in time or the guest ended."""
        path = self.path("guest-%s.mark" % name)
        end = min(time.monotonic() + timeout, self.deadline)
        while time.monotonic() < end:
            if os.path.exists(path):
                return True
            if not self.running():
                return os.path.exists(path)
            time.sleep(0.05)
        return False

    def mark(self, name):
        """Release the guest script's ``wait_host_mark NAME``."""
        with open(self.path("host-%s.mark" % name), "w"):
            pass

    def wait(self, timeout=None):
        """Wait for the guest to power off (killing it at its hard deadline); returns a ``GuestResult``."""
        end = self.deadline if timeout is None else min(self.deadline, time.monotonic() + timeout)
        try:
            self.returncode = self.proc.wait(max(0.1, end - time.monotonic()))
        except subprocess.TimeoutExpired:
            self.kill()
        self._finish()
        return GuestResult(self)

    def kill(self):
        if self.proc is not None and self.proc.poll() is None:
            _kill_group(self.proc)
            try:
                self.returncode = self.proc.wait(10)
            except subprocess.TimeoutExpired:
                pass
        self._finish()

    def _finish(self):
        if self.relay is not None:
            self.relay.stop()
            for name, data in sorted(self.relay.captures().items()):
                _write_capture(self.path(name), data)
        for fd in self._fds:
            _close(fd)
        self._fds = []
        if self._statedir:
            shutil.rmtree(self._statedir, ignore_errors=True)
            self._statedir = None
        if self.report is None and os.path.exists(self.path("guest.json")):
            with open(self.path("guest.json")) as f:
                self.report = json.load(f)


class GuestResult(object):
    """What a finished guest left in its run directory."""

    def __init__(self, guest):
        self.guest = guest
        self.rundir = guest.rundir
        self.report = guest.report or {}
        self.uml_returncode = guest.returncode

    def read(self, name, default=None):
        try:
            with open(os.path.join(self.rundir, name), "r", errors="replace") as f:
                return f.read()
        except (IOError, OSError):
            return default

    def exists(self, name):
        return os.path.exists(os.path.join(self.rundir, name))

    def rc(self, name):
        """The status in NAME.rc: an int, "timeout", or None if it was never written."""
        text = self.read(name + ".rc")
        if text is None:
            return None
        text = text.strip()
        return int(text) if text.lstrip("-").isdigit() else text

    def pppd_log(self, name="pppd"):
        return self.read(name + ".log", "")

    def addr(self, name="ppp0"):
        """Parsed ``ip -o addr show`` saved by wait_ppp_up: (local, peer) or None."""
        return parse_ppp_addr(self.read(name + ".addr", ""))

    def serial(self, direction):
        """The first MiB the guest sent ("from_guest") or received ("to_guest") on its serial line."""
        assert direction in ("from_guest", "to_guest"), direction
        try:
            with open(os.path.join(self.rundir, "serial-%s.bin" % direction.replace("_", "-")), "rb") as f:
                return f.read()
        except (IOError, OSError):
            return b""

    def ppp_packets(self, direction):
        """(protocol, information) of the PPP frames the guest sent or received (see ``serial``)."""
        return ppp_packets(self.serial(direction))

    @property
    def script_rc(self):
        return self.report.get("script_rc")

    def check_ran(self):
        """Raise GuestError with diagnostics unless the guest booted, set up, ran the script and powered off."""
        problems = []
        if not self.report:
            problems.append("guest wrote no guest.json (did not boot, or was killed)")
        else:
            if not self.report.get("setup_ok"):
                problems.append("guest setup failed: %s" % self.report.get("errors"))
            if self.report.get("timed_out"):
                problems.append("guest script timed out")
        if problems:
            raise GuestError("; ".join(problems) + "\n" + self.diagnostics())
        return self

    def diagnostics(self, tail=60):
        """The guest's report and logs, and the log of the pyslirp it dialled (its DEBUG lines left out).

        pyslirp's side comes first and the boot console last: a failure report that gets cut keeps its head.
        """
        parts = ["run directory: %s" % self.rundir, "guest report: %s" % json.dumps(self.report)]
        slirp, relay = self.guest.slirp, self.guest.relay
        if slirp is not None:
            lines = [line for line in slirp.log().splitlines() if " DEBUG " not in line][-tail:]
            parts.append("--- pyslirp (exit %s), last %d lines without DEBUG ---\n%s" % (
                slirp.returncode if slirp.proc is None else slirp.proc.poll(), len(lines), "\n".join(lines)))
        if relay is not None:
            parts.append("relay: %s" % relay.summary())
        names = sorted(name for name in os.listdir(self.rundir) if name.endswith((".log", ".out")))
        if os.path.exists(os.path.join(self.rundir, "console.txt")):
            names.append("console.txt")
        for name in names:
            text = self.read(name, "")
            lines = text.splitlines()[-tail:]
            parts.append("--- %s (last %d lines) ---\n%s" % (name, len(lines), "\n".join(lines)))
        return "\n".join(parts)


def _fcs16_table():
    table = []
    for byte in range(256):
        fcs = byte
        for _ in range(8):
            fcs = (fcs >> 1) ^ 0x8408 if fcs & 1 else fcs >> 1
        table.append(fcs)
    return table


_FCS16_TABLE = _fcs16_table()


def fcs16(data, fcs=0xFFFF):
    """RFC 1662 C.2 FCS-16 register over ``data`` (a good frame with its FCS leaves 0xF0B8)."""
    table = _FCS16_TABLE
    for byte in bytearray(data):
        fcs = (fcs >> 8) ^ table[(fcs ^ byte) & 0xFF]
    return fcs


def hdlc_frames(stream):
    """Frames of an RFC 1662 async-HDLC byte stream: escapes removed, FCS-16 checked and stripped.

    Any unescaped control characters are kept (both pppd and pyslirp negotiate ACCM 0).  Frames with a bad FCS
    (e.g. cut by the start of a capture) are skipped.
    """
    frames = []
    for chunk in bytes(stream).split(b"\x7e"):
        parts = chunk.split(b"\x7d")
        raw = parts[0] + b"".join(bytes([p[0] ^ 0x20]) + p[1:] for p in parts[1:] if p)
        if len(raw) >= 4 and fcs16(raw) == 0xF0B8:
            frames.append(raw[:-2])
    return frames


def ppp_packets(stream):
    """(protocol, information) of every PPP frame in an async-HDLC stream (ACFC and PFC undone)."""
    out = []
    for frame in hdlc_frames(stream):
        if frame[:2] == b"\xff\x03":
            frame = frame[2:]
        if not frame:
            continue
        if frame[0] & 1:
            out.append((frame[0], frame[1:]))
        elif len(frame) >= 2:
            out.append(((frame[0] << 8) | frame[1], frame[2:]))
    return out


_ADDR_RE = re.compile(r"\binet (\d+\.\d+\.\d+\.\d+)(?:/\d+)? peer (\d+\.\d+\.\d+\.\d+)")


def parse_ppp_addr(text):
    """``ip -o addr show ppp0`` -> (local, peer) of its IPv4 point-to-point address, or None."""
    m = _ADDR_RE.search(text or "")
    return (m.group(1), m.group(2)) if m else None


def toml_dumps(config):
    """A small TOML writer for test configs: {section: {key: value}}; nested dicts become sub-tables."""
    lines = []

    def value(v):
        if isinstance(v, bool):
            return "true" if v else "false"
        if isinstance(v, (int, float)):
            return repr(v)
        if isinstance(v, str):
            return json.dumps(v)
        if isinstance(v, (list, tuple)):
            return "[" + ", ".join(value(x) for x in v) + "]"
        raise TypeError("cannot write %r as TOML" % (v,))

    def table(name, body):
        scalars = [(k, v) for k, v in body.items() if not isinstance(v, dict)]
        subs = [(k, v) for k, v in body.items() if isinstance(v, dict)]
        if scalars or not subs:
            lines.append("[%s]" % name)
            for k, v in scalars:
                lines.append("%s = %s" % (_toml_key(k), value(v)))
            lines.append("")
        for k, v in subs:
            table("%s.%s" % (name, _toml_key(k)), v)

    for section, body in config.items():
        table(_toml_key(section), body)
    return "\n".join(lines)


def _toml_key(k):
    k = str(k)
    return k if re.match(r"^[A-Za-z0-9_-]+$", k) else json.dumps(k)


LINE_TYPES = ("pty", "device", "stdio", "stdio-pty", "socket")


class Pyslirp(object):
    """pyslirp.py serving PPP with a generated config.  Use through ``Lab.start_pyslirp``.

    ``line`` is the kind of line pyslirp serves, each as a user would run it:

    * ``"pty"``: ``--pty --pty-link PATH``: pyslirp creates the pty; the relay opens its slave.
    * ``"device"``: the harness creates a pty (as socat, tcpser or QEMU do) and pyslirp opens the slave's path
      like a serial device (``pyslirp.py /dev/pts/N``); the relay holds the master.
    * ``"stdio"``: ``--stdio`` with standard input and output pipes to the relay (``pppd pty "ssh ..."``).
    * ``"stdio-pty"``: ``--stdio`` on a pty's slave (a login shell on a terminal); the relay holds the master.
    * ``"socket"``: ``socket://127.0.0.1:PORT`` (pyserial's URL), a TCP connection to a listening socket here,
      standing in for a terminal server's port; the relay holds the accepted socket.
    """

    def __init__(self, rundir, config=None, pcap=False, debug=True, args=(), line="pty"):
        if line not in LINE_TYPES:
            raise ValueError("line must be one of %s, got %r" % (", ".join(LINE_TYPES), line))
        self.rundir = rundir
        self.line = line
        os.makedirs(rundir, exist_ok=True)
        self.config_path = os.path.join(rundir, "pyslirp.toml")
        config = dict(config or {})
        if line == "device":
            # The device's UUCP lock file goes into the run directory, not the host's /var/lock.
            config["serial"] = dict(config.get("serial", {}))
            config["serial"].setdefault("lock_dir", rundir)
        with open(self.config_path, "w") as f:
            f.write(toml_dumps(config))
        self.link_path = os.path.join(rundir, "pyslirp.pty")
        self.pcap_path = os.path.join(rundir, "pyslirp.pcap") if pcap else None
        self._fds = []                  # descriptors of the line that the harness holds (device, stdio)
        self._relay_end = None          # what the relay gets: a master fd, or (read fd, write fd)
        self._child_fds = {}            # stdin/stdout for the child
        self.pty = None
        if line == "pty":
            mode = ["--pty", "--pty-link", self.link_path]
        elif line == "device":
            master, slave = os.openpty()
            set_raw(master)
            set_raw(slave)
            # The slave stays open here too: a pty master whose slave nobody holds reads EIO.
            self._fds += [master, slave]
            self._relay_end = master
            self.pty = os.ttyname(slave)
            mode = [self.pty]
        elif line == "stdio":
            in_r, in_w = os.pipe()      # relay -> pyslirp's standard input
            out_r, out_w = os.pipe()    # pyslirp's standard output -> relay
            self._fds += [in_w, out_r]
            self._relay_end = (out_r, in_w)
            self._child_fds = {"stdin": in_r, "stdout": out_w}
            mode = ["--stdio"]
        elif line == "socket":
            import socket as socket_mod
            self._listener = socket_mod.socket(socket_mod.AF_INET, socket_mod.SOCK_STREAM)
            self._listener.bind(("127.0.0.1", 0))
            self._listener.listen(1)
            mode = ["socket://127.0.0.1:%d" % self._listener.getsockname()[1]]
        else:
            master, slave = os.openpty()
            set_raw(master)
            set_raw(slave)
            self._fds += [master]
            self._relay_end = master
            self._child_fds = {"stdin": slave, "stdout": slave}
            mode = ["--stdio"]
        self.cmd = [sys.executable, PYSLIRP] + mode + ["-c", self.config_path]
        if self.pcap_path:
            self.cmd += ["--pcap", self.pcap_path]
        if debug:
            self.cmd.append("-d")
        self.cmd += list(args)
        self.proc = None
        self.returncode = None
        self.stdout_path = os.path.join(rundir, "pyslirp.stdout.out")
        self.log_path = os.path.join(rundir, "pyslirp.stderr.log")

    def start(self, timeout=20.0):
        """Start pyslirp and wait until it serves its line; returns the pty path (None for --stdio on pipes)."""
        with open(self.stdout_path, "wb") as out, open(self.log_path, "wb") as err:
            stdin = self._child_fds.get("stdin", subprocess.DEVNULL)
            stdout = self._child_fds.get("stdout", out)
            self.proc = subprocess.Popen(self.cmd, stdin=stdin, stdout=stdout, stderr=err, cwd=ROOT,
                                         start_new_session=True, close_fds=True)
        for fd in set(self._child_fds.values()):
            _close(fd)                  # the child's ends now belong to the child
        self._child_fds = {}
        end = time.monotonic() + timeout
        while time.monotonic() < end:
            if self.line == "pty":
                with open(self.stdout_path, "r", errors="replace") as f:
                    m = re.search(r"^pty: (/dev/\S+)$", f.read(), re.M)
                if m:
                    self.pty = m.group(1)
                    return self.pty
            else:
                with open(self.log_path, "r", errors="replace") as f:
                    opened = "serial line open: " in f.read()
                if opened and self.line == "socket":
                    self._accept(end)
                if opened:
                    return self.pty
            if self.proc.poll() is not None:
                break
            time.sleep(0.05)
        rc = self.proc.poll()
        self.kill()
        raise AssertionError("pyslirp did not %s within %.0fs (exit status %s)\n%s"
                             % ("print its pty line" if self.line == "pty" else "open its line",
                                timeout, rc, self.diagnostics()))

    def _accept(self, end):
        """The terminal server's side of a ``socket`` line: the connection pyslirp opened (the relay's end)."""
        self._listener.settimeout(max(0.1, end - time.monotonic()))
        conn, _ = self._listener.accept()
        self._listener.close()
        self._sock = conn               # keeps the socket object (and its descriptor) alive
        self._relay_end = conn.fileno()
        os.set_blocking(self._relay_end, True)

    def open_tty(self):
        """The relay's end of the line, raw: a descriptor, or (read fd, write fd) for --stdio on pipes.

        The caller closes what it gets (an int, or both of a pair).
        """
        if self.line == "pty":
            fd = os.open(self.pty, os.O_RDWR | os.O_NOCTTY | os.O_NONBLOCK)
            set_raw(fd)
            return fd
        if isinstance(self._relay_end, tuple):
            return tuple(os.dup(fd) for fd in self._relay_end)
        return os.dup(self._relay_end)

    def running(self):
        return self.proc is not None and self.proc.poll() is None

    def log_snapshot(self, wait=0.5):
        """Have a running pyslirp write its metrics snapshot to its log (SIGUSR1), for a failure report: its
        bytes written to the line, frames each way, the line's drain rate."""
        if self.running():
            self.proc.send_signal(signal.SIGUSR1)
            time.sleep(wait)

    def stop(self, sig=signal.SIGTERM, timeout=15.0):
        """Send ``sig`` (to the process only) and wait; returns the exit status (None if it had to be killed)."""
        if self.proc is None:
            return None
        if self.proc.poll() is None:
            self.proc.send_signal(sig)
            try:
                self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                self.kill()
                return None
        self.returncode = self.proc.returncode
        return self.returncode

    def kill(self):
        if self.proc is not None and self.proc.poll() is None:
            _kill_group(self.proc)
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                pass
        if self.proc is not None:
            self.returncode = self.proc.returncode
        for fd in self._fds + list(set(self._child_fds.values())):
            _close(fd)
        self._fds = []
        self._child_fds = {}
        for name in ("_sock", "_listener"):
            sock = getattr(self, name, None)
            if sock is not None:
                sock.close()
                setattr(self, name, None)

    def log(self):
        text = ""
        for path in (self.stdout_path, self.log_path):
            try:
                with open(path, "r", errors="replace") as f:
                    text += f.read()
            except (IOError, OSError):
                pass
        return text

    def diagnostics(self, tail=80):
        lines = self.log().splitlines()[-tail:]
        return "--- pyslirp %s (exit %s), last %d lines ---\n%s" % (
            " ".join(self.cmd[1:]), self.returncode if self.proc is None else self.proc.poll(), len(lines),
            "\n".join(lines))


class Lab(object):
    """Everything one test starts: pyslirp instances, guests, ttys.  ``close()`` tears all of it down."""

    def __init__(self, basedir):
        self.basedir = basedir
        self.guests = []
        self.slirps = []
        self._fds = []

    def start_pyslirp(self, config=None, pcap=False, name="pyslirp", **kw):
        slirp = Pyslirp(os.path.join(self.basedir, name), config=config, pcap=pcap, **kw)
        self.slirps.append(slirp)
        slirp.start()
        return slirp

    def boot_guest(self, script, tty_fd=None, slirp=None, timeout=60.0, name=None, **kw):
        """Boot a guest running ``script``; its serial line goes to ``slirp``'s pty, or to ``tty_fd``."""
        name = name or "guest%d" % (len(self.guests) + 1)
        guest = Guest(os.path.join(self.basedir, name), script, timeout=timeout, name=name, **kw)
        if tty_fd is None:
            if slirp is None:
                raise ValueError("boot_guest needs a tty_fd or a pyslirp")
            tty_fd = slirp.open_tty()
            self._fds += list(tty_fd) if isinstance(tty_fd, tuple) else [tty_fd]
        guest.slirp = slirp
        self.guests.append(guest)
        return guest.start(tty_fd)

    def run_guest(self, script, **kw):
        """Boot a guest, wait for it to power off and return its checked ``GuestResult``."""
        return self.boot_guest(script, **kw).wait().check_ran()

    def openpty(self):
        """A raw pty pair owned by the lab: (master_fd, slave_fd)."""
        master, slave = os.openpty()
        set_raw(slave)
        set_raw(master)
        self._fds += [master, slave]
        return master, slave

    def diagnostics(self):
        parts = []
        for guest in self.guests:
            if guest.report is not None or os.path.exists(guest.path("console.txt")):
                parts.append(GuestResult(guest).diagnostics())
            if guest.relay is not None:
                parts.append("relay %s: %s" % (guest.name, guest.relay.summary()))
        for slirp in self.slirps:
            parts.append(slirp.diagnostics())
        return "\n".join(parts)

    def close(self):
        for guest in self.guests:
            guest.kill()
        for slirp in self.slirps:
            slirp.kill()
        for fd in self._fds:
            _close(fd)
        self._fds = []


def _kill_group(proc):
    """SIGKILL the process group that ``proc`` leads (it was started with start_new_session=True)."""
    try:
        os.killpg(proc.pid, signal.SIGKILL)
    except (ProcessLookupError, PermissionError):
        try:
            proc.kill()
        except OSError:
            pass


def _close(fd):
    try:
        os.close(fd)
    except OSError:
        pass


def _write_capture(path, data):
    try:
        with open(path, "wb") as f:
            f.write(bytes(data))
    except (IOError, OSError):
        pass


def _sh_quote(s):
    return "'" + s.replace("'", "'\\''") + "'"


def _dedent(text):
    return textwrap.dedent(text).strip("\n") + "\n"
