"""One line, one owner: UUCP lock files, exclusive opens, and pseudo-terminals that are never reopened.

The lock file logic runs against temporary lock directories (never /var/lock); exclusivity and the no-reopen
rule against real pseudo-terminals from ``os.openpty()``, the kind socat, tcpser and QEMU give; the last tests
run ``pyslirp.py`` itself on a line another program holds, and on a pty whose creator goes away.
"""

import errno
import fcntl
import logging
import os
import re
import select
import struct
import subprocess
import time

import pytest

from test_runtime import PYTHON, SCRIPT, ReopenableEndpoint, ScriptedCore, pipe_endpoint, read_until, start
from pyslirp.runtime import ownership, serialio
from pyslirp.runtime.endpoints import OpenError
from pyslirp.runtime.ownership import LineBusy, UucpLock, lock_name, parse_lock_pid
from pyslirp.runtime.stackloop import Runtime

serial = pytest.importorskip("serial")
from pyslirp.runtime.endpoints import PySerialEndpoint  # noqa: E402  (needs pyserial)


def dead_pid():
    """The pid of a process that has just exited (and been reaped)."""
    proc = subprocess.Popen(["true"])
    proc.wait()
    return proc.pid


def write_lock(lock_dir, device, content):
    path = os.path.join(str(lock_dir), lock_name(device))
    with open(path, "wb") as f:
        f.write(content)
    return path


def read_master_until(master, needle, timeout=15.0):
    """Read a pty master until ``needle``; EIO (no slave open yet) is waited out."""
    got = b""
    deadline = time.monotonic() + timeout
    while needle not in got:
        left = deadline - time.monotonic()
        assert left > 0, got
        if select.select([master], [], [], min(left, 0.1))[0]:
            try:
                got += os.read(master, 4096)
            except OSError as exc:
                if exc.errno != errno.EIO:
                    raise
                time.sleep(0.02)
    return got


def read(path):
    with open(path, "rb") as f:
        return f.read()


# -- lock file names and contents ---------------------------------------------------------------------------------

def test_lock_name_follows_pppd_after_resolving_links(tmp_path):
    assert lock_name("/dev/ttyUSB0") == "LCK..ttyUSB0"
    assert lock_name("/dev/pts/3") == "LCK..pts_3"
    link = tmp_path / "modem"
    link.symlink_to("/dev/null")
    assert lock_name(str(link)) == "LCK..null"          # the device, not the name it was reached by
    assert lock_name(str(tmp_path / "plainfile")) == "LCK..plainfile"


def test_parse_lock_pid_formats_and_garbage():
    assert parse_lock_pid(b"      1234\n") == 1234    # HDB: ten characters, space padded, newline
    assert parse_lock_pid(b"1234") == 1234
    assert parse_lock_pid(struct.pack("=i", 4321)) == 4321      # the old binary format
    for garbage in (b"", b"\n", b"pppd\n", b"0\n", b"-5\n", b"12 34\n", b"\xff" * 11):
        assert parse_lock_pid(garbage) is None, garbage


# -- acquiring and releasing ------------------------------------------------------------------------------------

def test_lock_is_created_in_hdb_format_and_released(tmp_path):
    lock = UucpLock("/dev/ttyUSB0", str(tmp_path), pid=4242)
    assert lock.acquire() is True
    assert read(lock.path) == b"      4242\n" and len(read(lock.path)) == 11
    assert sorted(os.listdir(str(tmp_path))) == ["LCK..ttyUSB0"]      # no temporary file left behind
    lock.release()
    assert os.listdir(str(tmp_path)) == []


def test_live_pid_holds_the_line(tmp_path):
    path = write_lock(tmp_path, "/dev/ttyUSB0", b"%10d\n" % os.getppid())
    lock = UucpLock("/dev/ttyUSB0", str(tmp_path), pid=4242)
    with pytest.raises(LineBusy) as info:
        lock.acquire()
    assert str(info.value) == "in use by process %d (lock file %s)" % (os.getppid(), path)
    assert read(path) == b"%10d\n" % os.getppid()       # untouched
    assert sorted(os.listdir(str(tmp_path))) == ["LCK..ttyUSB0"]
    lock.release()                                      # not ours: stays
    assert os.path.exists(path)


def test_stale_pid_is_removed_and_the_lock_taken(tmp_path, caplog):
    pid = dead_pid()
    path = write_lock(tmp_path, "/dev/ttyS1", b"%10d\n" % pid)
    lock = UucpLock("/dev/ttyS1", str(tmp_path), pid=4242)
    with caplog.at_level(logging.INFO, logger="pyslirp"):
        assert lock.acquire() is True
    assert read(path) == b"      4242\n"
    assert "removed the stale lock file %s (process %d is gone)" % (path, pid) in caplog.text


def test_our_own_pid_is_ours_already(tmp_path):
    path = write_lock(tmp_path, "/dev/ttyS1", b"%10d\n" % os.getpid())
    lock = UucpLock("/dev/ttyS1", str(tmp_path))
    assert lock.acquire() is True
    assert read(path) == b"%10d\n" % os.getpid()
    lock.release()
    assert not os.path.exists(path)


@pytest.mark.parametrize("content", [b"garbage\n", b"0\n", b"\x00\x00\x00\x00"])
def test_a_lock_that_names_no_process_is_stale(tmp_path, content):
    path = write_lock(tmp_path, "/dev/ttyS1", content)
    assert UucpLock("/dev/ttyS1", str(tmp_path), pid=77).acquire() is True
    assert read(path) == b"        77\n"


def test_an_empty_lock_is_being_written_until_it_is_old(tmp_path):
    path = write_lock(tmp_path, "/dev/ttyS1", b"")
    made = os.stat(path).st_mtime
    young = UucpLock("/dev/ttyS1", str(tmp_path), pid=77, clock=lambda: made + 1)
    with pytest.raises(LineBusy) as info:
        young.acquire()
    assert "another program is creating its lock file" in str(info.value)
    assert read(path) == b""
    old = UucpLock("/dev/ttyS1", str(tmp_path), pid=77, clock=lambda: made + ownership.EMPTY_GRACE + 1)
    assert old.acquire() is True and read(path) == b"        77\n"


def test_liveness_is_asked_of_the_pid_in_the_file(tmp_path):
    write_lock(tmp_path, "/dev/ttyS1", b"     31337\n")
    asked = []

    def alive(pid):
        asked.append(pid)
        return False
    assert UucpLock("/dev/ttyS1", str(tmp_path), pid=5, alive=alive).acquire() is True
    assert asked == [31337]


def test_an_unusable_lock_directory_means_no_lock_file(tmp_path, caplog):
    not_a_dir = tmp_path / "file"
    not_a_dir.write_text("")
    with caplog.at_level(logging.DEBUG, logger="pyslirp"):
        for lock_dir in (str(tmp_path / "missing"), str(not_a_dir)):
            lock = UucpLock("/dev/ttyS1", lock_dir, pid=5)
            assert lock.acquire() is False and not lock.held
    debug = [r for r in caplog.records if r.levelno == logging.DEBUG and "no lock file" in r.getMessage()]
    assert len(debug) == 2


def test_release_leaves_a_lock_that_is_no_longer_ours(tmp_path):
    lock = UucpLock("/dev/ttyS1", str(tmp_path), pid=5)
    assert lock.acquire()
    with open(lock.path, "wb") as f:        # someone judged ours stale and took it
        f.write(b"%10d\n" % os.getppid())
    lock.release()
    assert read(lock.path) == b"%10d\n" % os.getppid()


# -- exclusive opens on real pseudo-terminals --------------------------------------------------------------------

@pytest.fixture
def pty_pair():
    """(master fd, slave path) of a fresh pseudo-terminal whose slave nobody holds open."""
    master, slave = os.openpty()
    path = os.ttyname(slave)
    os.close(slave)
    yield master, path
    try:
        os.close(master)
    except OSError:
        pass


def open_as_nobody(path):
    """errno of opening ``path`` in an unprivileged child (0 if it opened); runs unprivileged already if not root."""
    if os.geteuid() != 0:
        try:
            os.close(os.open(path, os.O_RDWR | os.O_NOCTTY | os.O_NONBLOCK))
        except OSError as exc:
            return exc.errno
        return 0
    os.chmod(path, 0o666)
    r, w = os.pipe()
    pid = os.fork()
    if pid == 0:                            # the child: drop privileges, try, report, exit
        code = 0
        try:
            os.setgid(65534)
            os.setuid(65534)
            os.close(os.open(path, os.O_RDWR | os.O_NOCTTY | os.O_NONBLOCK))
        except OSError as exc:
            code = exc.errno or 255
        os.write(w, b"%d" % code)
        os._exit(0)
    os.close(w)
    os.waitpid(pid, 0)
    result = int(os.read(r, 16))
    os.close(r)
    return result


def test_device_is_opened_exclusively_and_given_back(pty_pair, tmp_path):
    master, path = pty_pair
    endpoint = PySerialEndpoint(path, lock_dir=str(tmp_path))
    try:
        fd = endpoint.fileno()
        assert ownership.exclusive_by_other(fd)             # TIOCEXCL is set ...
        assert open_as_nobody(path) == errno.EBUSY          # ... and refuses an unprivileged open
        assert read(os.path.join(str(tmp_path), lock_name(path))) == b"%10d\n" % os.getpid()
        os.write(master, b"ping")
        deadline = time.monotonic() + 5
        got = b""
        while b"ping" not in got and time.monotonic() < deadline:
            got += endpoint.read(100)
        assert got == b"ping"
    finally:
        endpoint.close()
    # Closed: the flag (which outlives our descriptor while the master lives) and the lock file are gone.
    assert open_as_nobody(path) == 0
    assert os.listdir(str(tmp_path)) == []


def test_a_second_open_of_a_held_line_is_refused(pty_pair, tmp_path):
    master, path = pty_pair
    first = PySerialEndpoint(path)
    try:
        with pytest.raises(OpenError) as info:
            PySerialEndpoint(path)
        assert info.value.startup_fatal and not info.value.permanent
        assert str(info.value) == "cannot open %s: in use: another program has it open exclusively" % path
    finally:
        first.close()
    PySerialEndpoint(path).close()         # free again


def test_a_line_in_another_programs_exclusive_mode_is_refused_even_with_privileges(pty_pair):
    master, path = pty_pair
    other = os.open(path, os.O_RDWR | os.O_NOCTTY)
    try:
        fcntl.ioctl(other, ownership.termios.TIOCEXCL)
        with pytest.raises(OpenError) as info:
            PySerialEndpoint(path)
        assert "in use: another program has it open exclusively" in str(info.value)
    finally:
        fcntl.ioctl(other, ownership.termios.TIOCNXCL)
        os.close(other)


def test_a_line_another_program_has_flocked_is_refused(pty_pair):
    master, path = pty_pair
    other = os.open(path, os.O_RDWR | os.O_NOCTTY)
    try:
        fcntl.flock(other, fcntl.LOCK_EX | fcntl.LOCK_NB)
        with pytest.raises(OpenError) as info:
            PySerialEndpoint(path)
        assert str(info.value) == "cannot open %s: in use by another program" % path
        assert info.value.startup_fatal
    finally:
        os.close(other)


def test_a_line_locked_by_a_live_process_is_refused_before_it_is_touched(pty_pair, tmp_path):
    master, path = pty_pair
    lock_path = write_lock(tmp_path, path, b"%10d\n" % os.getppid())
    with pytest.raises(OpenError) as info:
        PySerialEndpoint(path, lock_dir=str(tmp_path))
    assert str(info.value) == "cannot open %s: in use by process %d (lock file %s)" % (path, os.getppid(),
                                                                                       lock_path)
    other = os.open(path, os.O_RDWR | os.O_NOCTTY)      # never opened: not exclusive, not flocked
    try:
        assert not ownership.exclusive_by_other(other)
        fcntl.flock(other, fcntl.LOCK_EX | fcntl.LOCK_NB)
    finally:
        os.close(other)


def test_a_refused_open_gives_back_the_lock_it_took(pty_pair, tmp_path):
    master, path = pty_pair
    other = os.open(path, os.O_RDWR | os.O_NOCTTY)
    try:
        fcntl.flock(other, fcntl.LOCK_EX | fcntl.LOCK_NB)
        with pytest.raises(OpenError):
            PySerialEndpoint(path, lock_dir=str(tmp_path))
        assert os.listdir(str(tmp_path)) == []
    finally:
        os.close(other)


# -- pseudo-terminals are never reopened --------------------------------------------------------------------------

def test_a_pty_device_is_not_reopenable_and_its_backlog_is_not_visible(pty_pair):
    master, path = pty_pair
    endpoint = PySerialEndpoint(path)
    try:
        assert not endpoint.reopenable and not endpoint.backlog_visible
        assert endpoint.final_exit_code == 1 and "pseudo-terminal" in endpoint.final_note
    finally:
        endpoint.close()
    assert ownership.is_pty_path(path)
    assert not ownership.is_pty_path("/dev/null")


def unused_pty_path():
    used = set(os.listdir("/dev/pts"))
    return next("/dev/pts/%d" % n for n in range(4000, 5000) if str(n) not in used)


def test_a_missing_pty_path_is_not_waited_for(tmp_path):
    path = unused_pty_path()
    link = tmp_path / "vmodem"
    link.symlink_to(path)                   # a link left behind by a relay that is gone
    for port in (path, str(link)):
        with pytest.raises(OpenError) as info:
            PySerialEndpoint(port)
        assert info.value.permanent
        assert "no such pseudo-terminal" in str(info.value)


def test_a_pty_line_that_goes_away_ends_the_runtime_and_is_never_opened_again(pty_pair, caplog):
    master, path = pty_pair
    opens = []

    def opener():
        opens.append(path)
        return PySerialEndpoint(path)
    runtime = Runtime(None, None, opener=opener, core=ScriptedCore())
    with caplog.at_level(logging.INFO, logger="pyslirp"):
        thread, result = start(runtime)
        try:
            read_master_until(master, b"HELLO")
            os.close(master)                # the relay is gone; the next pty may well get its number
            thread.join(10)
        finally:
            runtime.request_stop()
            thread.join(5)
    assert result == {"code": 1}
    assert opens == [path]
    assert "is a pseudo-terminal: it is not reopened" in caplog.text


def test_a_held_line_while_retrying_is_a_warning_and_retried(monkeypatch, caplog):
    monkeypatch.setattr(serialio, "BACKOFF_START", 0.05)
    lines = []
    attempts = []

    def opener():
        attempts.append(1)
        if len(attempts) == 2:
            raise OpenError("cannot open /dev/ttyUSB0: in use by process 99 (lock file /x)", startup_fatal=True)
        endpoint, to_rt, from_rt = pipe_endpoint()
        endpoint.__class__ = ReopenableEndpoint
        lines.append((to_rt, from_rt))
        return endpoint
    runtime = Runtime(None, None, opener=opener, core=ScriptedCore())
    with caplog.at_level(logging.WARNING, logger="pyslirp"):
        thread, result = start(runtime)
        try:
            deadline = time.monotonic() + 5
            while not lines and time.monotonic() < deadline:
                time.sleep(0.01)
            read_until(lines[0][1], b"HELLO")
            os.close(lines[0][0])               # unplugged; replugged, but another program took it first
            while len(lines) < 2 and time.monotonic() < deadline:
                time.sleep(0.01)
            read_until(lines[1][1], b"HELLO")
        finally:
            runtime.request_stop()
            thread.join(5)
    assert result == {"code": 0}
    warnings = [r.getMessage() for r in caplog.records if "in use by process 99" in r.getMessage()]
    assert len(warnings) == 1
    assert re.match(r"^cannot open /dev/ttyUSB0: in use by process 99 \(lock file /x\); retrying in [0-9.]+ s$",
                    warnings[0]), warnings


# -- pyslirp.py itself --------------------------------------------------------------------------------------------

def run_pyslirp(args, tmp_path, timeout=15):
    config = tmp_path / "pyslirp.toml"
    config.write_text('[serial]\nlock_dir = "%s"\n[ppp]\nlcp_echo_interval = 0\n' % tmp_path)
    proc = subprocess.run([PYTHON, SCRIPT, "-c", str(config)] + args, stdin=subprocess.DEVNULL,
                          stdout=subprocess.PIPE, stderr=subprocess.PIPE, timeout=timeout)
    return proc.returncode, proc.stderr.decode()


def test_pyslirp_refuses_a_locked_line_with_one_line_and_exit_1(pty_pair, tmp_path):
    master, path = pty_pair
    lock_path = write_lock(tmp_path, path, b"%10d\n" % os.getpid())      # this test process holds it
    code, err = run_pyslirp(["-q", path], tmp_path)
    assert code == 1
    lines = err.splitlines()
    assert len(lines) == 1, err
    assert lines[0].endswith("ERROR pyslirp.runtime: cannot open %s: in use by process %d (lock file %s)" % (
        path, os.getpid(), lock_path))
    assert read(lock_path) == b"%10d\n" % os.getpid()


def test_pyslirp_refuses_a_line_another_program_has_open_exclusively(pty_pair, tmp_path):
    master, path = pty_pair
    other = os.open(path, os.O_RDWR | os.O_NOCTTY)
    try:
        fcntl.flock(other, fcntl.LOCK_EX | fcntl.LOCK_NB)
        code, err = run_pyslirp(["-q", path], tmp_path)
    finally:
        os.close(other)
    assert code == 1
    assert err.splitlines() and len(err.splitlines()) == 1, err
    assert "cannot open %s: in use by another program" % path in err and "Traceback" not in err
    assert os.listdir(str(tmp_path)) == ["pyslirp.toml"]        # the lock it took is given back


def test_pyslirp_on_a_pty_exits_when_it_goes_away_and_leaves_the_next_pty_alone(tmp_path):
    master, slave = os.openpty()
    path = os.ttyname(slave)
    config = tmp_path / "pyslirp.toml"
    config.write_text('[serial]\nlock_dir = "%s"\n[ppp]\nlcp_echo_interval = 0\nrestart_interval = 1\n'
                      % tmp_path)
    proc = subprocess.Popen([PYTHON, SCRIPT, "-c", str(config), "-q", path], stdin=subprocess.DEVNULL,
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    nxt = None
    try:
        read_master_until(master, b"\x7e")          # its LCP Configure-Requests arrive
        os.close(slave)                     # (held until now: a master with no slave open reads EIO)
        slave = None
        os.close(master)
        master = None
        # The next program to ask for a pty (an ssh login, the next test) gets the same number, most likely.
        nxt, nslave = os.openpty()
        try:
            assert proc.wait(timeout=10) == 1
            assert not select.select([nxt], [], [], 1.5)[0]   # not a byte written to somebody else's pty
        finally:
            os.close(nslave)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        for fd in (master, slave, nxt):
            if fd is not None:
                os.close(fd)
        err = proc.stderr.read().decode()
        proc.stderr.close()
    assert "%s is a pseudo-terminal: it is not reopened" % path in err
    assert "Traceback" not in err
    assert os.listdir(str(tmp_path)) == ["pyslirp.toml"]
