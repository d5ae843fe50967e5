"""One line, one owner: UUCP lock files, exclusive opens and pseudo-terminal identity.

Theory of operation: a serial device must never be shared.  Two programs
reading one line each get half of the other side's bytes, and a program
writing to someone else's session corrupts it.  Three independent
mechanisms keep a line to one owner, and pyslirp honours all of them:

* **UUCP lock files** (``/var/lock/LCK..ttyUSB0``), the convention pppd,
  minicom, cu and ModemManager follow.  The file holds the owner's pid as
  ten ASCII characters and a newline (``"%10d\\n"``, the "HDB" format).  The
  name is pppd's: the device path after ``dev/`` with every ``/`` turned
  into ``_`` (``/dev/pts/3`` -> ``LCK..pts_3``), taken from the path with
  its symbolic links resolved, so that ``/dev/serial/by-id/...`` and
  ``/dev/ttyUSB0`` lock the same device.  A lock is *stale* when its pid is
  not a live process (``kill(pid, 0)`` fails with ESRCH) or the file holds
  no pid at all (garbage; pppd reads that as pid 0): a stale lock is
  removed.  An empty file is a lock being written right now (the writer
  creates, then writes) unless it is older than ``EMPTY_GRACE``.  A lock
  holding our own pid is ours already.  We create ours atomically: the
  complete content goes into a private temporary file that is then
  ``link()``-ed to the lock name, so no other program ever reads a half
  written lock of ours.  A lock directory we cannot write (an unprivileged
  user where /var/lock belongs to root) is reported at debug level and the
  line is used without a lock file: the other two mechanisms still apply.
* **TIOCEXCL**: a terminal in exclusive mode refuses every further open
  with EBUSY (except for a privileged process).  We set it once the line is
  ours and clear it (TIOCNXCL) before closing, because the flag outlives
  our descriptor for as long as the terminal exists (a pseudo-terminal
  whose master another program holds).  A terminal that is already in
  exclusive mode when we look (TIOCGEXCL, Linux 3.8+) belongs to someone
  else even if our privileges let the open through.
* **flock(2)** on the device, which pyserial's ``exclusive=True`` takes:
  that is what a second pyslirp, or any pyserial program, runs into.

Pseudo-terminals are special (:func:`is_pty_slave`).  When the program that
created one (socat, tcpser, QEMU, VirtualBox) closes its master, the pty is
gone for good: its number goes to the next program that asks for a
pseudo-terminal -- an ssh login, a terminal window, the next test's relay.
Reopening "the same path" would then read and write somebody else's
session.  So a line that is a pseudo-terminal is opened once and never
reopened, and a pseudo-terminal path that does not exist is not waited for.
(The device number and inode do not tell an old pty from its successor:
devpts gives the number ``N`` the same device number and inode each time.)
"""

import errno
import fcntl
import logging
import os
import stat
import struct
import termios
import time

log = logging.getLogger("pyslirp.runtime")

LOCK_DIR = "/var/lock"
LOCK_PREFIX = "LCK.."
PID_FORMAT = "%10d\n"           # HDB UUCP: ten ASCII characters and a newline
PID_BINARY = struct.Struct("=i")    # the old binary format: a native int (4 bytes)
EMPTY_GRACE = 5.0               # s: an empty lock file younger than this is being written
ACQUIRE_ATTEMPTS = 5            # stale locks removed / races lost before giving up

# Linux devpts slaves: UNIX98_PTY_SLAVE_MAJOR (136) and the next seven majors.
PTY_SLAVE_MAJORS = range(136, 144)
PTY_DIR = "/dev/pts/"
# TIOCGEXCL is _IOR('T', 0x40, int) on Linux; Python's termios does not name it.
TIOCGEXCL = getattr(termios, "TIOCGEXCL", 0x80045440)
_INT = struct.Struct("i")


class LineBusy(Exception):
    """Another program holds the line; ``str()`` says who, where known ("in use by process 42 ...")."""


# -- lock files ---------------------------------------------------------------------------------------------------

def lock_name(device):
    """The UUCP lock file name for ``device`` (a path): pppd's rule, after resolving symbolic links.

    >>> lock_name("/dev/ttyUSB0")
    'LCK..ttyUSB0'
    """
    path = os.path.realpath(device)
    at = path.find("dev/")
    if at >= 0:
        name = path[at + 4:].replace("/", "_")
    else:
        name = os.path.basename(path)
    return LOCK_PREFIX + name


def parse_lock_pid(data):
    """The pid a lock file's content names, or None if it names none (garbage, pid 0, negative).

    ASCII decimal (surrounding white space allowed: the HDB format pads with spaces) or, for four bytes that are
    not ASCII digits, the old binary format.  ``b""`` is None too: the caller tells "being written" apart.
    """
    text = data.strip()
    if text.isdigit():
        pid = int(text)
        return pid if pid > 0 else None
    if len(data) == PID_BINARY.size:
        pid = PID_BINARY.unpack(data)[0]
        return pid if pid > 0 else None
    return None


def process_alive(pid):
    """Whether ``pid`` is a live process (one we may not signal counts as alive)."""
    try:
        os.kill(pid, 0)
    except OSError as exc:
        return exc.errno != errno.ESRCH
    return True


class UucpLock(object):
    """The UUCP lock file of one device.

    :meth:`acquire` returns True once the lock is ours, False when there is no usable lock directory (then the
    line goes without: logged at debug), and raises :class:`LineBusy` when a live process holds it.
    :meth:`release` removes the file if it still names us.
    """

    def __init__(self, device, lock_dir=LOCK_DIR, pid=None, alive=process_alive, clock=time.time):
        self.device = device
        self.lock_dir = lock_dir
        self.path = os.path.join(lock_dir, lock_name(device))
        self.pid = os.getpid() if pid is None else pid
        self._alive = alive
        self._clock = clock
        self.held = False

    def acquire(self):
        content = (PID_FORMAT % self.pid).encode("ascii")
        tmp = os.path.join(self.lock_dir, "LTMP.%d" % self.pid)
        try:
            fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
        except OSError as exc:
            log.debug("no lock file for %s: cannot write in %s (%s)", self.device, self.lock_dir,
                      exc.strerror or exc)
            return False
        try:
            try:
                os.write(fd, content)
            finally:
                os.close(fd)
            for _ in range(ACQUIRE_ATTEMPTS):
                try:
                    os.link(tmp, self.path)
                except OSError as exc:
                    if exc.errno != errno.EEXIST:
                        log.debug("no lock file for %s: %s: %s", self.device, self.path, exc.strerror or exc)
                        return False
                else:
                    self.held = True
                    return True
                if self._check_existing():
                    self.held = True
                    return True
            raise LineBusy("in use: its lock file %s keeps coming back" % self.path)
        finally:
            try:
                os.unlink(tmp)
            except OSError:
                pass

    def _check_existing(self):
        """An existing lock file: True if it is ours, None after removing a stale one; raises LineBusy if held."""
        try:
            with open(self.path, "rb") as f:
                data = f.read(64)
            age = self._clock() - os.stat(self.path).st_mtime
        except (IOError, OSError) as exc:
            if getattr(exc, "errno", None) == errno.ENOENT:
                return None             # removed meanwhile: try again
            raise LineBusy("in use: its lock file %s cannot be read (%s)" % (
                self.path, getattr(exc, "strerror", None) or exc))
        pid = parse_lock_pid(data)
        if pid == self.pid:
            return True
        if pid is None and not data.strip() and age < EMPTY_GRACE:
            raise LineBusy("in use: another program is creating its lock file %s" % self.path)
        if pid is not None and self._alive(pid):
            raise LineBusy("in use by process %d (lock file %s)" % (pid, self.path))
        try:
            os.unlink(self.path)
        except OSError as exc:
            if exc.errno != errno.ENOENT:
                raise LineBusy("its stale lock file %s cannot be removed: %s" % (
                    self.path, exc.strerror or exc))
        log.info("removed the stale lock file %s (%s)", self.path,
                 "process %d is gone" % pid if pid is not None else "it names no process")
        return None

    def release(self):
        if not self.held:
            return
        self.held = False
        try:
            with open(self.path, "rb") as f:
                if parse_lock_pid(f.read(64)) != self.pid:
                    return              # not ours any more: leave it alone
            os.unlink(self.path)
        except (IOError, OSError):
            pass


# -- exclusive opens and pseudo-terminals -------------------------------------------------------------------------

def is_pty_slave(st):
    """Whether an ``os.stat`` result is a pseudo-terminal slave (Linux devpts)."""
    return stat.S_ISCHR(st.st_mode) and os.major(st.st_rdev) in PTY_SLAVE_MAJORS


def is_pty_path(path):
    """Whether ``path`` (symbolic links resolved) names a pseudo-terminal, existing or not."""
    real = os.path.realpath(path)
    if real.startswith(PTY_DIR):
        return True
    try:
        return is_pty_slave(os.stat(real))
    except OSError:
        return False


def exclusive_by_other(fd):
    """Whether the terminal on ``fd`` is in exclusive mode (TIOCGEXCL); False where that cannot be asked."""
    try:
        return _INT.unpack(fcntl.ioctl(fd, TIOCGEXCL, b"\0\0\0\0"))[0] != 0
    except (OSError, ValueError, OverflowError):
        return False


def set_exclusive(fd, on=True):
    """TIOCEXCL (``on``) or TIOCNXCL; False if the descriptor is no terminal or refuses."""
    try:
        fcntl.ioctl(fd, termios.TIOCEXCL if on else termios.TIOCNXCL)
    except (OSError, ValueError):
        return False
    return True


def check_not_exclusive(path):
    """Raise LineBusy if the terminal at ``path`` is in another program's exclusive mode.

    Looked at on a descriptor of our own, before pyserial opens the port and changes its settings.  A path
    that does not open here is left to the real open to report.
    """
    try:
        fd = os.open(path, os.O_RDWR | os.O_NOCTTY | os.O_NONBLOCK)
    except OSError as exc:
        if exc.errno == errno.EBUSY:
            raise LineBusy("in use: another program has it open exclusively")
        return
    try:
        if exclusive_by_other(fd):
            raise LineBusy("in use: another program has it open exclusively")
    finally:
        os.close(fd)
