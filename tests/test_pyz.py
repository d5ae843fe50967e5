"""The single-file pyslirp (dist/pyslirp.pyz) and the plain copy, run for real.

* ``make pyz`` twice gives byte-identical files holding pyslirp's modules, the
  pinned pyserial and tomli (hashes checked), a ``__main__.py`` and nothing
  compiled; the second build needs no network (wheels cached).
* The pyz runs with ``python3 -I -S`` (no site-packages, no environment) on
  every interpreter found here (this one, Debian's /usr/bin/python3 and a
  Python 3.7 if one is installed): ``--version``, ``--check-config`` of a
  TOML file (tomli from inside the zip below 3.11), ``--pty`` (prints its pty
  line, exits 0 on SIGTERM), and a ``socket://`` port opened through the
  bundled pyserial, on which pyslirp's first LCP Configure-Request arrives.
* ``pyslirp.py`` + ``pyslirp/`` copied into an empty folder run with the
  standard library only: ``--version`` and ``--pty``.
* The end-to-end harness (tests/e2e) brings a real pppd's link up with the
  pyz as the pyslirp command.

Wheels are cached in dist/wheels of this tree (downloaded from PyPI with
their pinned hashes on the first build).
"""

import glob
import hashlib
import os
import re
import select
import shutil
import signal
import socket
import subprocess
import sys
import time
import zipfile

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
WHEELS = os.path.join(ROOT, "dist", "wheels")
LCP_CONFREQ = b"\x7e\xff\x7d\x23\xc0\x21\x7d\x21"  # flag, ff 03 c0 21 01 escaped (RFC 1662 ACCM)


def source_version():
    with open(os.path.join(ROOT, "pyslirp", "__init__.py")) as f:
        return re.search(r'^__version__ = "([^"]+)"$', f.read(), re.M).group(1)


def build_pyz(workdir, name):
    build = os.path.join(workdir, name, "build")
    dist = os.path.join(workdir, name, "dist")
    proc = subprocess.run(["make", "--no-print-directory", "-C", ROOT, "pyz", "PYTHON=" + sys.executable,
                           "BUILD=" + build, "DIST=" + dist, "WHEELS=" + WHEELS],
                          stdout=subprocess.PIPE, stderr=subprocess.STDOUT, universal_newlines=True, timeout=300)
    assert proc.returncode == 0, proc.stdout
    return os.path.join(dist, "pyslirp.pyz"), proc.stdout


@pytest.fixture(scope="module")
def pyz(tmp_path_factory):
    if shutil.which("make") is None:
        pytest.skip("make not found")
    path, _ = build_pyz(str(tmp_path_factory.mktemp("pyz")), "first")
    return path


def interpreters():
    """(label, path) of the Pythons to run the pyz with: this one, Debian's, a 3.7."""
    found = [("current", sys.executable)]
    if os.path.exists("/usr/bin/python3"):
        found.append(("debian", "/usr/bin/python3"))
    # The oldest Python supported; pyenv's shims only run the selected version, so look behind them.
    for oldest in sorted(glob.glob(os.path.expanduser("~/.pyenv/versions/3.7*/bin/python3.7"))) + \
            ["/usr/local/bin/python3.7", "/usr/bin/python3.7"]:
        if os.path.exists(oldest):
            found.append(("py37", oldest))
            break
    usable = []
    for label, path in found:
        proc = subprocess.run([path, "-I", "-S", "-c", "import sys; print('%d.%d' % sys.version_info[:2])"],
                              stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, universal_newlines=True)
        if proc.returncode == 0:
            usable.append((label, path))
    return usable


INTERPRETERS = interpreters()
IDS = [label for label, _ in INTERPRETERS]


def run(cmd, **kw):
    return subprocess.run(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, universal_newlines=True,
                          timeout=60, **kw)


# --------------------------------------------------------------------------- the build


def test_pyz_build_is_reproducible_and_offline(pyz, tmp_path):
    # The wheels are cached now: build again with pip pointed at nowhere.
    env_proxy = dict(os.environ, PIP_INDEX_URL="http://127.0.0.1:9/", PIP_NO_INDEX="1")
    build = str(tmp_path / "build")
    dist = str(tmp_path / "dist")
    proc = subprocess.run(["make", "--no-print-directory", "-C", ROOT, "pyz", "PYTHON=" + sys.executable,
                           "BUILD=" + build, "DIST=" + dist, "WHEELS=" + WHEELS],
                          stdout=subprocess.PIPE, stderr=subprocess.STDOUT, universal_newlines=True,
                          timeout=300, env=env_proxy)
    assert proc.returncode == 0, proc.stdout
    assert "downloading" not in proc.stdout
    with open(pyz, "rb") as a, open(os.path.join(dist, "pyslirp.pyz"), "rb") as b:
        assert hashlib.sha256(a.read()).hexdigest() == hashlib.sha256(b.read()).hexdigest()


def test_pyz_contents(pyz):
    with open(pyz, "rb") as f:
        assert f.readline() == b"#!/usr/bin/env python3\n"
    assert os.stat(pyz).st_mode & 0o111 == 0o111
    with zipfile.ZipFile(pyz) as archive:
        infos = archive.infolist()
        names = [i.filename for i in infos]
        main = archive.read("__main__.py").decode()
    assert names == sorted(names)
    assert {i.compress_type for i in infos} == {zipfile.ZIP_STORED}
    assert len({i.date_time for i in infos}) == 1
    assert not [n for n in names if n.endswith((".pyc", ".pyo")) or "__pycache__" in n or ".data/" in n]
    tree = set()
    for dirpath, dirnames, filenames in os.walk(os.path.join(ROOT, "pyslirp")):
        dirnames[:] = [d for d in dirnames if d != "__pycache__"]
        tree.update(os.path.relpath(os.path.join(dirpath, n), ROOT) for n in filenames if n.endswith(".py"))
    assert {n for n in names if n.startswith("pyslirp/")} == tree
    for needed in ("serial/__init__.py", "serial/serialposix.py", "serial/urlhandler/protocol_socket.py",
                   "tomli/__init__.py", "tomli/_parser.py"):
        assert needed in names, needed
    # Licences of the bundled packages travel with them.
    assert [n for n in names if n.startswith("pyserial-3.5.dist-info/")]
    assert [n for n in names if n.startswith("tomli-2.0.1.dist-info/")]
    assert "from pyslirp.cli import main" in main


def test_bundled_wheels_match_pinned_hashes(pyz):
    sys.path.insert(0, os.path.join(ROOT, "packaging", "pyz"))
    try:
        import build_pyz
    finally:
        sys.path.pop(0)
    requirements = build_pyz.parse_requirements(os.path.join(ROOT, "packaging", "pyz", "requirements.txt"))
    assert sorted((r.name, r.version) for r in requirements) == [("pyserial", "3.5"), ("tomli", "2.0.1")]
    for requirement in requirements:
        path = build_pyz.find_wheel(requirement, WHEELS)
        assert path is not None, requirement.name
        with open(path, "rb") as f:
            assert hashlib.sha256(f.read()).hexdigest() in requirement.hashes


def test_tampered_wheel_is_refused(pyz, tmp_path):
    sys.path.insert(0, os.path.join(ROOT, "packaging", "pyz"))
    try:
        import build_pyz
    finally:
        sys.path.pop(0)
    requirements = build_pyz.parse_requirements(os.path.join(ROOT, "packaging", "pyz", "requirements.txt"))
    cache = tmp_path / "wheels"
    cache.mkdir()
    for requirement in requirements:
        good = build_pyz.find_wheel(requirement, WHEELS)
        assert good is not None
        data = bytearray(open(good, "rb").read())
        data[len(data) // 2] ^= 0xFF
        (cache / os.path.basename(good)).write_bytes(bytes(data))
        assert build_pyz.find_wheel(requirement, str(cache)) is None


# --------------------------------------------------------------------------- running it


@pytest.mark.parametrize("python", [p for _, p in INTERPRETERS], ids=IDS)
def test_pyz_version_and_check_config(pyz, python, tmp_path):
    proc = run([python, "-I", "-S", pyz, "--version"], cwd=str(tmp_path))
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.strip() == "pyslirp %s" % source_version()

    config = tmp_path / "pyslirp.toml"
    config.write_text('[serial]\nport = "/dev/ttyS3"\nbaudrate = 57600\n\n[network]\nmtu = 1400\n')
    proc = run([python, "-I", "-S", pyz, "--check-config", "-c", str(config)], cwd=str(tmp_path))
    assert proc.returncode == 0, proc.stderr
    assert re.search(r'^port = "/dev/ttyS3"$', proc.stdout, re.M), proc.stdout
    assert re.search(r"^baudrate = 57600$", proc.stdout, re.M)
    assert re.search(r"^mtu = 1400$", proc.stdout, re.M)

    bad = tmp_path / "bad.toml"
    bad.write_text("[network]\nmtu = 70000\n")
    proc = run([python, "-I", "-S", pyz, "--check-config", "-c", str(bad)], cwd=str(tmp_path))
    assert proc.returncode == 2
    assert "network.mtu" in proc.stderr and "Traceback" not in proc.stderr


def test_pyz_runs_without_zlib(pyz, tmp_path):
    """Stored members: a Python built without zlib (minimal embedded builds) still runs it."""
    code = ("import runpy, sys; sys.modules['zlib'] = None; "
            "sys.argv = [sys.argv[1], '--version']; runpy.run_path(sys.argv[0], run_name='__main__')")
    proc = run([sys.executable, "-I", "-S", "-c", code, pyz], cwd=str(tmp_path))
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.strip() == "pyslirp %s" % source_version()


@pytest.mark.parametrize("python", [p for _, p in INTERPRETERS], ids=IDS)
def test_pyz_imports_bundled_packages(pyz, python, tmp_path):
    code = ("import sys; sys.path.insert(0, sys.argv[1]); "
            "from pyslirp import compat; import serial; "
            "print(serial.__file__); print(compat.toml_module().__name__)")
    proc = run([python, "-I", "-S", "-c", code, pyz], cwd=str(tmp_path))
    assert proc.returncode == 0, proc.stderr
    serial_file, toml_name = proc.stdout.split()
    assert serial_file.startswith(pyz + os.sep)
    version = tuple(int(x) for x in run([python, "-I", "-S", "-c",
                                          "import sys; print(sys.version_info[0], sys.version_info[1])"]
                                         ).stdout.split())
    assert toml_name == ("tomllib" if version >= (3, 11) else "tomli")


def start(cmd, cwd):
    return subprocess.Popen(cmd, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            cwd=cwd, start_new_session=True)


def stop(proc, timeout=15):
    """SIGTERM, wait; returns (exit status, stderr text)."""
    if proc.poll() is None:
        proc.send_signal(signal.SIGTERM)
    try:
        _, err = proc.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        _, err = proc.communicate()
        return None, err.decode(errors="replace")
    return proc.returncode, err.decode(errors="replace")


def read_pty_line(proc, timeout=20):
    """The ``pty: /dev/pts/N`` line pyslirp prints first on stdout."""
    end = time.monotonic() + timeout
    buf = b""
    while time.monotonic() < end and b"\n" not in buf:
        ready, _, _ = select.select([proc.stdout], [], [], 0.2)
        if ready:
            chunk = os.read(proc.stdout.fileno(), 1024)
            if not chunk:
                break
            buf += chunk
    return buf.decode(errors="replace")


def check_pty_mode(cmd, cwd):
    proc = start(cmd, cwd)
    try:
        line = read_pty_line(proc)
        assert re.match(r"^pty: /dev/pts/\d+\n$", line), (line, proc.poll())
        assert os.path.exists(line.split()[1])
    finally:
        status, err = stop(proc)
    assert status == 0, err
    assert "Traceback" not in err


@pytest.mark.parametrize("python", [p for _, p in INTERPRETERS], ids=IDS)
def test_pyz_pty_mode(pyz, python, tmp_path):
    check_pty_mode([python, "-I", "-S", pyz, "--pty"], str(tmp_path))


@pytest.mark.parametrize("python", [p for _, p in INTERPRETERS], ids=IDS)
def test_pyz_opens_a_pyserial_url(pyz, python, tmp_path):
    """A socket:// port goes through the bundled pyserial; pyslirp's LCP arrives on it."""
    server = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    server.bind(("127.0.0.1", 0))
    server.listen(1)
    server.settimeout(20)
    port = server.getsockname()[1]
    proc = start([python, "-I", "-S", pyz, "socket://127.0.0.1:%d" % port], str(tmp_path))
    try:
        conn, _ = server.accept()
        conn.settimeout(0.5)
        seen = b""
        end = time.monotonic() + 20
        while LCP_CONFREQ not in seen and time.monotonic() < end:
            try:
                chunk = conn.recv(4096)
            except socket.timeout:
                continue
            if not chunk:
                break
            seen += chunk
        conn.close()
        assert LCP_CONFREQ in seen, seen[:200]
    finally:
        server.close()
        status, err = stop(proc)
    assert "Traceback" not in err, err


# --------------------------------------------------------------------------- the plain copy


@pytest.fixture
def plain_copy(tmp_path):
    if not os.path.exists(os.path.join(ROOT, "pyslirp.py")):
        pytest.fail("pyslirp.py is missing from the tree")
    target = tmp_path / "copy"
    target.mkdir()
    shutil.copy(os.path.join(ROOT, "pyslirp.py"), str(target / "pyslirp.py"))
    shutil.copytree(os.path.join(ROOT, "pyslirp"), str(target / "pyslirp"),
                    ignore=shutil.ignore_patterns("__pycache__", "*.pyc"))
    return target


@pytest.mark.parametrize("python", [p for _, p in INTERPRETERS], ids=IDS)
def test_plain_copy_version_and_pty(plain_copy, python, tmp_path):
    elsewhere = str(tmp_path)
    proc = run([python, "-I", "-S", str(plain_copy / "pyslirp.py"), "--version"], cwd=elsewhere)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.strip() == "pyslirp %s" % source_version()
    check_pty_mode([python, "-I", "-S", "-B", str(plain_copy / "pyslirp.py"), "--pty"], elsewhere)


# --------------------------------------------------------------------------- end to end


def oldest_python():
    """Python 3.7 if installed (the floor), else this interpreter."""
    for label, path in INTERPRETERS:
        if label == "py37":
            return path
    return sys.executable


@pytest.mark.e2e
@pytest.mark.timeout(240)
def test_pyz_brings_up_a_link_with_real_pppd(pyz, tmp_path):
    """The e2e harness with the pyz, run by the oldest Python with -I -S, as the pyslirp command."""
    from e2e import fixtures, uml
    fixtures.require_uml()
    lab = uml.Lab(str(tmp_path))
    try:
        slirp = uml.Pyslirp(os.path.join(lab.basedir, "pyz"), config={})
        # The harness runs `python3 pyslirp.py ARGS`: run the pyz instead, with the same arguments.
        assert slirp.cmd[:2] == [sys.executable, uml.PYSLIRP], slirp.cmd
        slirp.cmd[:2] = [oldest_python(), "-I", "-S", pyz]
        lab.slirps.append(slirp)
        slirp.start()
        res = lab.run_guest("""
            pppd_start pppd noauth
            if wait_ppp_up 30 pppd; then mark pppd-up; fi
            pppd_stop pppd 15
        """, slirp=slirp, timeout=90)
        log = res.pppd_log("pppd")
        assert res.addr("pppd") == ("10.0.0.2", "10.0.0.1"), res.diagnostics()
        assert "local  IP address 10.0.0.2" in log and "remote IP address 10.0.0.1" in log, log
        assert slirp.stop() == 0, slirp.diagnostics()
    finally:
        lab.close()
        print(lab.diagnostics())
