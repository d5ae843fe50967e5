"""Serial endpoints: the byte pipes PPP runs over.

Theory of operation: an endpoint is a small blocking interface used by exactly
two threads, the serial reader (``read``) and the serial writer (``write``);
the stack thread may ask ``out_waiting`` (bytes still in the OS output
queue, TIOCOUTQ) and the line manager ``cancel``/``close`` it.

* ``read(n)`` blocks until data arrives and returns it; it returns ``b""``
  when cancelled or after an internal poll interval (the caller loops and
  checks its stop flag); it raises :class:`LineGone` when the line is gone
  (end of file, device unplugged, I/O error).
* ``write(data)`` writes all of ``data`` or raises :class:`LineGone`; a
  cancelled write returns early.
* ``reopenable``: whether the line manager should open the same port again
  after :class:`LineGone` (a serial device that comes back: yes; standard
  input, our own pseudo-terminal or someone else's: no); ``final_exit_code``:
  the exit status when a non-reopenable endpoint goes away, ``final_note``
  why it is not reopened (logged).
* ``backlog_visible``: whether ``out_waiting`` shows everything that waits
  toward the line.  True for a serial port (TIOCOUTQ) and for our own
  pseudo-terminal (FIONREAD on its slave: what the client has not read);
  False for the slave of someone else's pseudo-terminal (TIOCOUTQ reads 0
  there), for standard input/output that is a pipe, a socket or a pty (the
  program behind it holds the backlog), and for pyserial URLs.  Where it is
  False the runtime paces output at the configured line speed instead of
  trusting a queue that always looks empty.

Implementations: :class:`ExecEndpoint` (a child program on a new
pseudo-terminal, the client role's ``--exec``), :class:`PySerialEndpoint` (a device path or a pyserial URL;
8N1, RTS/CTS or XON/XOFF from the configuration; pyserial imported lazily),
:class:`StdioEndpoint` (file descriptors 0 and 1, raw mode if a terminal) and
:class:`PtyEndpoint` (a fresh pseudo-terminal).  The pseudo-terminal keeps its
own slave descriptor open, so the master never sees EIO or a hangup when the
client (e.g. pppd) closes the slave: a new client can open it again and dial in
without restarting pyslirp.
"""

import errno
import fcntl
import logging
import os
import select
import signal
import socket
import stat
import struct
import subprocess
import termios
import time
import tty

from pyslirp import compat
from pyslirp.runtime import ownership

log = logging.getLogger("pyslirp.runtime")

POLL_INTERVAL = 0.5     # seconds between stop-flag checks in blocking calls
_INT = struct.Struct("i")


class LineGone(Exception):
    """The line is gone (end of file, I/O error, device unplugged)."""


class OpenError(Exception):
    """An endpoint could not be opened.

    ``permanent``: retrying cannot help (a bad setting: exit ``code``);
    ``startup_fatal``: give up if this happens at start-up (e.g. permission
    denied: the user must fix group membership), retry if it happens later.
    """

    def __init__(self, message, permanent=False, startup_fatal=False, code=1):
        super().__init__(message)
        self.permanent = permanent
        self.startup_fatal = startup_fatal
        self.code = code


def outq_bytes(fd):
    """Bytes in the OS output queue of ``fd`` (TIOCOUTQ), 0 where unknown."""
    req = getattr(termios, "TIOCOUTQ", None)
    if req is None or fd is None:
        return 0
    try:
        buf = fcntl.ioctl(fd, req, b"\0\0\0\0")
    except (OSError, ValueError):
        return 0
    return _INT.unpack(buf)[0]


def fionread_bytes(fd):
    """Unread bytes waiting in ``fd`` (FIONREAD), 0 where unknown."""
    try:
        return _INT.unpack(fcntl.ioctl(fd, termios.FIONREAD, b"\0\0\0\0"))[0]
    except (OSError, ValueError):
        return 0


class Endpoint(object):
    name = "?"
    reopenable = False
    final_exit_code = 0         # exit status when a non-reopenable endpoint goes away
    final_note = ""             # why it is not reopened, if that needs saying
    backlog_visible = False     # out_waiting() shows all that waits toward the line

    def read(self, n):
        raise NotImplementedError

    def write(self, data):
        raise NotImplementedError

    def out_waiting(self):
        return 0

    def try_write(self, data):
        """Write what the endpoint takes without waiting; the number of bytes written (0: none, also on an
        error, which the next :meth:`write` reports)."""
        return 0

    def cancel(self):
        """Make blocked read()/write() calls return soon."""

    def close(self):
        pass

    def fileno(self):
        return None


class FdEndpoint(Endpoint):
    """Reads ``rfd`` and writes ``wfd`` with select(); a pipe wakes blocked calls.

    A non-blocking ``wfd`` (our pseudo-terminal's master) is written at once, and select() waits only when it
    is full: one system call per write instead of two.  A blocking one is written only once select() says
    it takes bytes, so that a write never blocks where cancel() cannot reach it.
    """

    def __init__(self, rfd, wfd, name):
        self.rfd = rfd
        self.wfd = wfd
        self.name = name
        self._wake_r, self._wake_w = os.pipe()
        for fd in (self._wake_r, self._wake_w):
            fcntl.fcntl(fd, fcntl.F_SETFL, fcntl.fcntl(fd, fcntl.F_GETFL) | os.O_NONBLOCK)
        self._cancelled = False
        self._closed = False
        self._backlog_fd = None
        try:
            self._write_at_once = bool(fcntl.fcntl(wfd, fcntl.F_GETFL) & os.O_NONBLOCK)
        except OSError:
            self._write_at_once = False
        try:
            if stat.S_ISFIFO(os.fstat(wfd).st_mode):
                self._backlog_fd = wfd
        except OSError:
            pass

    def fileno(self):
        return self.rfd

    def read(self, n):
        if self._cancelled:
            return b""
        try:
            ready, _, _ = select.select([self.rfd, self._wake_r], [], [], POLL_INTERVAL)
        except (OSError, ValueError) as exc:
            raise LineGone("select: %s" % exc)
        if self.rfd not in ready:
            return b""
        try:
            data = os.read(self.rfd, n)
        except (BlockingIOError, InterruptedError):
            return b""
        except OSError as exc:
            raise LineGone(os.strerror(exc.errno) if exc.errno else str(exc))
        if not data:
            raise LineGone("end of file")
        return data

    def write(self, data):
        view = memoryview(data)
        if self._write_at_once and not self._cancelled:
            try:
                view = view[os.write(self.wfd, view):]
            except (BlockingIOError, InterruptedError):
                pass
            except OSError as exc:
                raise LineGone(os.strerror(exc.errno) if exc.errno else str(exc))
        while view:
            if self._cancelled:
                return
            try:
                _, ready, _ = select.select([self._wake_r], [self.wfd], [], POLL_INTERVAL)
            except (OSError, ValueError) as exc:
                raise LineGone("select: %s" % exc)
            if self.wfd not in ready:
                continue
            try:
                n = os.write(self.wfd, view)
            except (BlockingIOError, InterruptedError):
                continue
            except OSError as exc:
                raise LineGone(os.strerror(exc.errno) if exc.errno else str(exc))
            view = view[n:]

    def try_write(self, data):
        if not self._write_at_once or self._cancelled:
            return 0
        try:
            return os.write(self.wfd, data)
        except OSError:
            return 0

    def out_waiting(self):
        """Bytes the OS has accepted but the line has not taken yet.

        FIONREAD on ``_backlog_fd`` where there is one: a pipe's unread bytes on its write end or, for our
        pty, the slave's input queue (a pipe has no TIOCOUTQ and a Linux pty master reports 0 for it, so
        asking would cost a system call, and for a pipe an exception, at every look).  Otherwise TIOCOUTQ
        where the descriptor has one (a serial port's driver buffer, a socket's send queue).  0 where
        unknown: then only our own queue is known.
        """
        if self._backlog_fd is not None:
            return fionread_bytes(self._backlog_fd)
        return outq_bytes(self.wfd)

    def cancel(self):
        self._cancelled = True
        try:
            os.write(self._wake_w, b"x")
        except OSError:
            pass

    def close(self):
        if self._closed:
            return
        self._closed = True
        self.cancel()
        for fd in (self._wake_r, self._wake_w):
            try:
                os.close(fd)
            except OSError:
                pass


def _set_nonblocking(fd):
    fcntl.fcntl(fd, fcntl.F_SETFL, fcntl.fcntl(fd, fcntl.F_GETFL) | os.O_NONBLOCK)


class PtyEndpoint(FdEndpoint):
    """A new pseudo-terminal; the client opens ``self.path`` (e.g. /dev/pts/3).

    ``link``: also create this symbolic link to the slave (replacing an old
    symbolic link there, never a file), removed again by close().
    """

    reopenable = False
    final_exit_code = 1         # our own pty failing is a runtime failure
    backlog_visible = True      # the slave's input queue is what the client has not read

    def __init__(self, link=""):
        master, slave = os.openpty()
        tty.setraw(slave)       # no echo, no line editing, 8 bits: a clean byte pipe
        _set_nonblocking(master)
        self.slave_fd = slave           # held open: the master then never sees EIO/hangup
        self.path = os.ttyname(slave)
        super().__init__(master, master, self.path)
        self._backlog_fd = slave        # what the client has not read yet: the pty's output queue
        self.link = ""
        if link:
            try:
                make_symlink(self.path, link)
            except OSError:
                self._close_fds()
                raise
            self.link = link

    def _close_fds(self):
        for fd in (self.rfd, self.slave_fd):
            try:
                os.close(fd)
            except OSError:
                pass

    def close(self):
        if self._closed:
            return
        super().close()
        if self.link:
            remove_symlink(self.link, self.path)
        self._close_fds()


def make_symlink(target, link):
    """Point ``link`` at ``target``; replace an existing symlink, refuse anything else."""
    if os.path.lexists(link):
        if not os.path.islink(link):
            raise OSError(errno.EEXIST, "%s exists and is not a symbolic link" % link)
        os.unlink(link)
    os.symlink(target, link)


def remove_symlink(link, target):
    try:
        if os.path.islink(link) and os.readlink(link) == target:
            os.unlink(link)
    except OSError as exc:
        log.warning("cannot remove %s: %s", link, exc)


class StdioEndpoint(FdEndpoint):
    """PPP on standard input/output (a dial-in login shell, ``pppd pty "ssh host pyslirp.py --stdio"``).

    The terminal, if standard input is one, is put in raw mode and restored
    by close().  End of file means the client hung up: it is not reopened.
    """

    reopenable = False

    def __init__(self, rfd=0, wfd=1):
        super().__init__(rfd, wfd, "stdio")
        self.backlog_visible = _is_serial_port(wfd)
        self._saved = None
        if os.isatty(rfd):
            try:
                self._saved = termios.tcgetattr(rfd)
                tty.setraw(rfd)
            except termios.error:
                self._saved = None

    def close(self):
        if self._closed:
            return
        super().close()
        if self._saved is not None:
            try:
                termios.tcsetattr(self.rfd, termios.TCSAFLUSH, self._saved)
            except termios.error:
                pass


class PySerialEndpoint(Endpoint):
    """A serial device path or a pyserial URL (socket://, rfc2217://, loop://), 8N1.

    A device path is made ours before anything else touches it (see :mod:`pyslirp.runtime.ownership`): its UUCP
    lock file in ``lock_dir`` (None: no lock file), a look that no other program has it in exclusive mode,
    pyserial's flock (``exclusive=True``), then TIOCEXCL.  A device held by another program raises an
    :class:`OpenError` that ends the program at start-up and is retried later.  A device that turns out to be a
    pseudo-terminal (the slave of socat, tcpser, QEMU...) is not reopenable and its backlog is not visible
    (TIOCOUTQ on a pty slave is always 0: what waits is in the master's input queue, someone else's); a
    pseudo-terminal path that does not exist is not waited for: its number would go to the next program that
    creates a pty.  A URL's backlog is not visible either (what waits in a terminal server is not ours to see).
    """

    reopenable = True
    backlog_visible = True

    def __init__(self, port, baudrate=115200, flow_control="none", lock_dir=None):
        serial = compat.serial_module()
        self.name = port
        self._serial_exc = serial.SerialException
        self._lock = None
        self._exclusive_fd = None
        kwargs = dict(baudrate=baudrate, bytesize=serial.EIGHTBITS, parity=serial.PARITY_NONE,
                      stopbits=serial.STOPBITS_ONE, rtscts=flow_control == "hardware",
                      xonxoff=flow_control == "software", timeout=POLL_INTERVAL, write_timeout=None)
        self._url = "://" in port
        if self._url:
            self.backlog_visible = False
            self.ser = self._open(serial, port, kwargs, url=True)
            if port.startswith(("socket://", "rfc2217://")):
                self._no_delay()
            return
        pty = ownership.is_pty_path(port)
        if pty and not os.path.exists(port):
            raise OpenError("cannot open %s: no such pseudo-terminal (one that is gone does not come back: "
                            "its number goes to the next program that asks for a pty)" % port, permanent=True)
        if lock_dir:
            lock = ownership.UucpLock(port, lock_dir)
            try:
                if lock.acquire():
                    self._lock = lock
            except ownership.LineBusy as exc:
                raise OpenError("cannot open %s: %s" % (port, exc), startup_fatal=True)
        try:
            ownership.check_not_exclusive(port)
            self.ser = self._open(serial, port, kwargs, url=False)
        except ownership.LineBusy as exc:
            self._release_lock()
            raise OpenError("cannot open %s: %s" % (port, exc), startup_fatal=True)
        except OpenError:
            self._release_lock()
            raise
        fd = self.fileno()
        if fd is not None:
            try:
                pty = ownership.is_pty_slave(os.fstat(fd))
            except OSError:
                pass
            if ownership.set_exclusive(fd):
                self._exclusive_fd = fd
        if pty:
            self.reopenable = False
            self.backlog_visible = False
            self.final_exit_code = 1
            self.final_note = ("%s is a pseudo-terminal: it is not reopened, its number goes to the next "
                               "program that asks for a pty" % port)

    def _open(self, serial, port, kwargs, url):
        try:
            if url:
                return serial.serial_for_url(port, **kwargs)
            return serial.Serial(port, exclusive=True, **kwargs)
        except ValueError as exc:
            raise OpenError("invalid serial port setting for %s: %s" % (port, exc), permanent=True, code=2)
        except (OSError, serial.SerialException) as exc:
            err = getattr(exc, "errno", None)
            if err in (errno.EACCES, errno.EPERM):
                raise OpenError("cannot open %s: permission denied (is this user in the group owning it, "
                                "e.g. dialout?)" % port, startup_fatal=True)
            if err == errno.ENOENT:
                raise OpenError("cannot open %s: no such device (not plugged in yet?)" % port)
            if err in (errno.EAGAIN, errno.EWOULDBLOCK, errno.EBUSY):
                # flock(2) refused (another pyserial program, another pyslirp) or TIOCEXCL (open: EBUSY).
                raise OpenError("cannot open %s: in use by another program" % port, startup_fatal=True)
            raise OpenError("cannot open %s: %s" % (port, _strip(exc)))

    def _no_delay(self):
        """A TCP connection to a terminal server carries our frames as we write them: no Nagle (pyserial leaves
        it on), or a frame written while the previous one is unacknowledged waits for the peer's delayed ACK
        (40 ms on Linux) -- in front of a keystroke's echo."""
        try:
            fd = self.ser.fileno()
        except Exception:           # a handler without a descriptor
            return
        sock = socket.socket(fileno=os.dup(fd))
        try:
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        except OSError:
            pass
        finally:
            sock.close()

    def _release_lock(self):
        if self._lock is not None:
            self._lock.release()
            self._lock = None

    def read(self, n):
        try:
            if self._url:
                return self._read_url(n)
            waiting = self.ser.in_waiting
            data = self.ser.read(min(n, waiting) if waiting else 1)
            if data and len(data) < n:
                waiting = self.ser.in_waiting
                if waiting:
                    data += self.ser.read(min(n - len(data), waiting))
        except (OSError, self._serial_exc, TypeError, AttributeError) as exc:
            # TypeError/AttributeError: pyserial raises these when the port is closed under it.
            raise LineGone(_strip(exc))
        return data

    def _read_url(self, n):
        """A URL's handler may not count what is waiting (socket:// says 1 for "something"): wait for one byte
        within the poll interval, then take whatever else has arrived, up to ``n``, without waiting."""
        ser = self.ser
        data = ser.read(1)
        if data and n > 1:
            ser.timeout = 0
            try:
                data += ser.read(n - 1)
            finally:
                ser.timeout = POLL_INTERVAL
        return data

    def write(self, data):
        try:
            self.ser.write(data)
        except (OSError, self._serial_exc, TypeError, AttributeError) as exc:
            raise LineGone(_strip(exc))

    def out_waiting(self):
        try:
            return self.ser.out_waiting
        except Exception:       # not every URL handler implements it
            return 0

    def fileno(self):
        try:
            return self.ser.fileno()
        except Exception:
            return None

    def cancel(self):
        for name in ("cancel_read", "cancel_write"):
            method = getattr(self.ser, name, None)
            if method is not None:
                try:
                    method()
                except Exception:
                    pass

    def close(self):
        if self._exclusive_fd is not None:
            # The flag outlives our descriptor (a pty whose master is still open): give the line back.
            ownership.set_exclusive(self._exclusive_fd, False)
            self._exclusive_fd = None
        try:
            self.ser.close()
        except Exception:
            pass
        self._release_lock()


def _is_serial_port(fd):
    """Whether ``fd`` is a terminal that is not a pseudo-terminal: a serial port, whose TIOCOUTQ is the backlog."""
    try:
        return os.isatty(fd) and not ownership.is_pty_slave(os.fstat(fd))
    except OSError:
        return False


def _strip(exc):
    text = str(exc) or type(exc).__name__
    return text.splitlines()[0]


class ExecEndpoint(FdEndpoint):
    """A child program on a new pseudo-terminal: PPP on its standard input and output (pppd's ``pty``).

    ``pyslirp.py client --exec "ssh host pyslirp.py --stdio"``: the command runs through the shell, in a
    session of its own, with the slave of a fresh pseudo-terminal (raw mode) as its standard input and
    output; its standard error is ours.  The child ending is the line going away (EIO on the master):
    not reopened, exit status 1.  close() ends the child (SIGTERM to its process group, SIGKILL after
    ``KILL_AFTER`` seconds).
    """

    reopenable = False
    final_exit_code = 1
    final_note = "the command exited"
    KILL_AFTER = 2.0

    def __init__(self, command):
        master, slave = os.openpty()
        tty.setraw(slave)
        _set_nonblocking(master)
        try:
            self.proc = subprocess.Popen(command, shell=True, stdin=slave, stdout=slave, close_fds=True,
                                         start_new_session=True)
        except OSError:
            os.close(master)
            os.close(slave)
            raise
        os.close(slave)         # the child holds it: its exit is EIO here
        super().__init__(master, master, "exec: %s" % command)

    def read(self, n):
        try:
            return super().read(n)
        except LineGone as exc:
            code = self.proc.poll()
            raise LineGone("the command exited (status %s)" % code if code is not None else str(exc))

    def close(self):
        if self._closed:
            return
        super().close()
        if self.proc.poll() is None:
            try:
                os.killpg(self.proc.pid, signal.SIGTERM)
            except OSError:
                pass
            deadline = time.monotonic() + self.KILL_AFTER
            while self.proc.poll() is None and time.monotonic() < deadline:
                time.sleep(0.05)
            if self.proc.poll() is None:
                try:
                    os.killpg(self.proc.pid, signal.SIGKILL)
                except OSError:
                    pass
                self.proc.wait()
        try:
            os.close(self.rfd)
        except OSError:
            pass
