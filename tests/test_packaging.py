"""The .deb and the pip package, built from this tree and checked for real.

* ``make deb`` twice into two directories gives byte-identical packages with
  the expected files, modes, owners, control fields and maintainer scripts;
  ``lintian`` reports no error and no warning.
* As root, the package is installed with ``dpkg -i`` into this very system,
  its command and init script are exercised (the daemon started through
  ``/etc/init.d/pyslirp`` serves PPP on a pty as user pyslirp), re-installed,
  and purged; afterwards no user, group, file or process is left.  The test
  always purges in ``finally``.  It refuses to touch a system where a pyslirp
  package or user already exists (outside CI, where that is a leftover).
* ``pip wheel`` of a copy of the tree gives a wheel whose metadata and
  ``pyslirp`` console script work.

Outside CI a missing tool (dpkg-deb, lintian) or not being root skips with the
reason; with ``CI=true`` it fails instead: CI installs everything and runs as
root.
"""

import gzip
import hashlib
import io
import os
import pwd
import grp
import re
import shutil
import signal
import subprocess
import sys
import tarfile
import termios
import time
import tty
import zipfile

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
CI = os.environ.get("CI", "").strip().lower() not in ("", "0", "false", "no")
SYSTEM_PYTHON = "/usr/bin/python3"


def unavailable(reason):
    """Skip with the reason; under CI a missing prerequisite is a failure."""
    if CI:
        pytest.fail("CI is set, so this must run, but: %s" % reason, pytrace=False)
    pytest.skip(reason)


def require_tools(*names):
    for name in names:
        if shutil.which(name) is None:
            unavailable("%s not found (apt-get install lintian dpkg-dev adduser)" % name)


def require_root():
    if os.geteuid() != 0:
        unavailable("installing the .deb needs root")


def run(cmd, check=True, timeout=120, **kw):
    proc = subprocess.run(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, timeout=timeout,
                          universal_newlines=True, **kw)
    if check and proc.returncode != 0:
        raise AssertionError("%s exited %d:\n%s" % (" ".join(cmd), proc.returncode, proc.stdout))
    return proc


def source_version():
    with open(os.path.join(ROOT, "pyslirp", "__init__.py")) as f:
        return re.search(r'^__version__ = "([^"]+)"$', f.read(), re.M).group(1)


def tree_modules():
    """pyslirp/**/*.py of the tree, relative to the top."""
    found = set()
    for dirpath, dirnames, filenames in os.walk(os.path.join(ROOT, "pyslirp")):
        dirnames[:] = [d for d in dirnames if d != "__pycache__"]
        for name in filenames:
            if name.endswith(".py"):
                found.add(os.path.relpath(os.path.join(dirpath, name), ROOT))
    return found


def build_deb(tmpdir, name):
    build = os.path.join(tmpdir, name, "build")
    dist = os.path.join(tmpdir, name, "dist")
    out = run(["make", "--no-print-directory", "-C", ROOT, "deb", "BUILD=" + build, "DIST=" + dist]).stdout
    debs = [f for f in os.listdir(dist) if f.endswith(".deb")]
    assert len(debs) == 1, (debs, out)
    return os.path.join(dist, debs[0])


@pytest.fixture(scope="module")
def deb(tmp_path_factory):
    require_tools("make", "dpkg-deb")
    return build_deb(str(tmp_path_factory.mktemp("deb")), "first")


def deb_members(path):
    """{name: TarInfo} and {name: bytes} of the data archive (dpkg-deb --fsys-tarfile)."""
    data = subprocess.run(["dpkg-deb", "--fsys-tarfile", path], stdout=subprocess.PIPE, check=True).stdout
    infos, contents = {}, {}
    with tarfile.open(fileobj=io.BytesIO(data)) as tar:
        for info in tar.getmembers():
            name = info.name[2:] if info.name.startswith("./") else info.name
            infos[name] = info
            if info.isfile():
                contents[name] = tar.extractfile(info).read()
    return infos, contents


def utf8(data):
    return data.decode("utf-8")


def control_field(path, field):
    return run(["dpkg-deb", "--field", path, field]).stdout.strip()


# --------------------------------------------------------------------------- building


def test_deb_is_reproducible(deb, tmp_path):
    again = build_deb(str(tmp_path), "second")
    assert os.path.basename(again) == os.path.basename(deb)
    with open(deb, "rb") as a, open(again, "rb") as b:
        first, second = a.read(), b.read()
    assert hashlib.sha256(first).hexdigest() == hashlib.sha256(second).hexdigest()


def test_deb_refuses_a_version_the_changelog_does_not_have(tmp_path):
    require_tools("make", "dpkg-deb")
    tree = tmp_path / "tree"
    tree.mkdir()
    for name in ("Makefile", "pyslirp.toml", "README.md"):
        shutil.copy(os.path.join(ROOT, name), str(tree / name))
    for name in ("pyslirp", "packaging"):
        shutil.copytree(os.path.join(ROOT, name), str(tree / name),
                        ignore=shutil.ignore_patterns("__pycache__", "*.pyc"))
    init = tree / "pyslirp" / "__init__.py"
    init.write_text(re.sub(r'^__version__ = ".*"$', '__version__ = "9.8.7"', init.read_text(), flags=re.M))
    proc = run(["make", "--no-print-directory", "-C", str(tree), "deb"], check=False)
    assert proc.returncode != 0
    assert "pyslirp/__init__.py says 9.8.7" in proc.stdout, proc.stdout
    assert not (tree / "dist").exists() or not os.listdir(str(tree / "dist"))


def test_deb_name_version_and_control(deb):
    version = source_version()
    deb_version = control_field(deb, "Version")
    assert deb_version.split("-")[0] == version
    assert os.path.basename(deb) == "pyslirp_%s_all.deb" % deb_version
    assert control_field(deb, "Package") == "pyslirp"
    assert control_field(deb, "Architecture") == "all"
    depends = [d.strip() for d in control_field(deb, "Depends").split(",")]
    for wanted in ("python3 (>= 3.7)", "python3-serial", "python3 (>= 3.11) | python3-tomli", "adduser"):
        assert wanted in depends
    conffiles = run(["dpkg-deb", "--info", deb, "conffiles"]).stdout.split()
    assert sorted(conffiles) == ["/etc/default/pyslirp", "/etc/init.d/pyslirp", "/etc/pyslirp/pyslirp.toml"]


def test_deb_contents(deb):
    infos, contents = deb_members(deb)
    expected_modes = {
        "usr/bin/pyslirp": 0o755,
        "etc/init.d/pyslirp": 0o755,
        "etc/default/pyslirp": 0o644,
        "etc/pyslirp/pyslirp.toml": 0o644,
        "lib/systemd/system/pyslirp.service": 0o644,
        "lib/systemd/system/pyslirp@.service": 0o644,
        "usr/share/man/man8/pyslirp.8.gz": 0o644,
        "usr/share/doc/pyslirp/copyright": 0o644,
        "usr/share/doc/pyslirp/changelog.Debian.gz": 0o644,
    }
    for name, mode in expected_modes.items():
        assert name in infos, name
        assert infos[name].mode == mode, (name, oct(infos[name].mode))
    # Every module of the tree, and nothing compiled or foreign.
    shipped = {n[len("usr/lib/pyslirp/"):] for n in contents if n.startswith("usr/lib/pyslirp/")}
    assert shipped == tree_modules()
    assert not [n for n in infos if "__pycache__" in n or n.endswith(".pyc")]
    # Owners root, one mtime (SOURCE_DATE_EPOCH) for everything.
    assert {(i.uname, i.gname, i.uid, i.gid) for i in infos.values()} == {("root", "root", 0, 0)}
    assert len({i.mtime for i in infos.values()}) == 1
    # The configuration is the commented example of the tree.
    with open(os.path.join(ROOT, "pyslirp.toml"), "rb") as f:
        assert contents["etc/pyslirp/pyslirp.toml"] == f.read()
    # The command uses Debian's python3 and the private module directory.
    launcher = utf8(contents["usr/bin/pyslirp"])
    assert launcher.startswith("#!/usr/bin/python3\n")
    assert '"/usr/lib/pyslirp"' in launcher
    # gzip -9n: no name, no timestamp in the header.
    for name in ("usr/share/man/man8/pyslirp.8.gz", "usr/share/doc/pyslirp/changelog.Debian.gz"):
        blob = contents[name]
        assert blob[:2] == b"\x1f\x8b" and blob[4:8] == b"\0\0\0\0" and not blob[3] & 0x08, name
    changelog = utf8(gzip.decompress(contents["usr/share/doc/pyslirp/changelog.Debian.gz"]))
    assert changelog.startswith("pyslirp (%s) " % control_field(deb, "Version"))
    copyright_text = utf8(contents["usr/share/doc/pyslirp/copyright"])
    assert copyright_text.startswith("Format: https://www.debian.org/doc/packaging-manuals/copyright-format/1.0/")
    assert "License: MIT" in copyright_text


def test_init_script_and_unit_contents(deb):
    _, contents = deb_members(deb)
    init = utf8(contents["etc/init.d/pyslirp"])
    assert "### BEGIN INIT INFO" in init and "### END INIT INFO" in init
    for word in ("start)", "stop)", "restart)", "reload|force-reload)", "status)", "start-stop-daemon",
                 "--chuid $DAEMON_USER:$DAEMON_GROUP", "--background", "--make-pidfile", "--signal HUP"):
        assert word in init, word
    assert re.search(r"^DAEMON_USER=pyslirp$", init, re.M)
    assert re.search(r"^DAEMON_GROUP=dialout$", init, re.M)
    assert re.search(r"^        PIDFILE=\$RUNDIR/\$NAME\.pid$", init, re.M)
    assert re.search(r"^        PIDFILE=\$RUNDIR/\$INSTANCE\.pid$", init, re.M)
    assert re.search(r"^RUNDIR=/run/pyslirp$", init, re.M)
    default = utf8(contents["etc/default/pyslirp"])
    assert re.search(r"^ENABLED=no$", default, re.M)
    assert re.search(r'^DAEMON_OPTS="-c /etc/pyslirp/pyslirp.toml"$', default, re.M)
    assert re.search(r'^INSTANCES=""$', default, re.M) and re.search(r'^INSTANCE_OPTS=""$', default, re.M)
    common = (("User", "pyslirp"), ("Group", "dialout"), ("Restart", "always"),
              ("NoNewPrivileges", "yes"), ("ProtectSystem", "strict"), ("ProtectHome", "yes"),
              ("PrivateTmp", "yes"), ("CapabilityBoundingSet", ""),
              ("RestrictAddressFamilies", "AF_UNIX AF_INET AF_INET6"), ("ExecReload", "/bin/kill -HUP $MAINPID"),
              ("EnvironmentFile", "-/etc/default/pyslirp"))
    for name, own in (("pyslirp.service", (("RuntimeDirectory", "pyslirp"),
                                           ("ExecStart", "/usr/bin/pyslirp $DAEMON_OPTS"))),
                      ("pyslirp@.service", (("RuntimeDirectory", "pyslirp/%i"),
                                            ("ExecStart", "/usr/bin/pyslirp -c /etc/pyslirp/%i.toml $INSTANCE_OPTS"),
                                            ("ConditionPathExists", "/etc/pyslirp/%i.toml"),
                                            ("RestartPreventExitStatus", "2")))):
        settings = unit_settings(utf8(contents["lib/systemd/system/" + name]))
        for key, value in common + own:
            assert settings.get(key) == [value], (name, key, settings.get(key))
    if shutil.which("systemd-analyze"):
        # Syntax only: the command and man page are not installed here.  A template is checked as an instance.
        for name, as_name in (("pyslirp.service", "pyslirp.service"), ("pyslirp@.service", "pyslirp@ttyS0.service")):
            tmp_unit = os.path.join(os.path.dirname(deb), as_name)
            with open(tmp_unit, "wb") as f:
                f.write(contents["lib/systemd/system/" + name])
            out = run(["systemd-analyze", "verify", tmp_unit], check=False).stdout
            problems = [line for line in out.splitlines()
                        if "pyslirp" in line and "is not executable" not in line
                        and "man pyslirp(8)" not in line]
            assert not problems, out


def unit_settings(unit):
    settings = {}
    for line in unit.splitlines():
        if "=" in line and not line.startswith("#"):
            key, value = line.split("=", 1)
            settings.setdefault(key, []).append(value)
    return settings


def test_man_page_renders_without_warnings(deb):
    require_tools("man")
    _, contents = deb_members(deb)
    page = gzip.decompress(contents["usr/share/man/man8/pyslirp.8.gz"])
    path = os.path.join(os.path.dirname(deb), "pyslirp.8")
    with open(path, "wb") as f:
        f.write(page)
    env = dict(os.environ, MANWIDTH="80", LC_ALL="C.UTF-8")
    proc = subprocess.run(["man", "--warnings", "-l", path], stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                          universal_newlines=True, env=env, timeout=60)
    warnings = [w for w in proc.stderr.splitlines() if "root privileges" not in w]
    assert proc.returncode == 0 and not warnings, proc.stderr
    text = proc.stdout
    for section in ("SYNOPSIS", "OPTIONS", "FILES", "EXIT STATUS", "EXAMPLES"):
        assert re.search(r"^%s$" % section, text, re.M), section
    assert "@VERSION@" not in utf8(page)
    assert "pyslirp %s" % source_version() in text


def test_lintian_reports_no_errors_or_warnings(deb):
    require_tools("lintian")
    proc = run(["lintian", "--fail-on", "error,warning", deb], check=False, timeout=300)
    tags = [line for line in proc.stdout.splitlines() if re.match(r"^[EW]: ", line)]
    assert proc.returncode == 0 and not tags, proc.stdout


# --------------------------------------------------------------------------- installing


def user_exists(name):
    try:
        pwd.getpwnam(name)
        return True
    except KeyError:
        return False


def group_exists(name):
    try:
        grp.getgrnam(name)
        return True
    except KeyError:
        return False


def package_installed():
    proc = subprocess.run(["dpkg-query", "-W", "-f", "${db:Status-Abbrev}", "pyslirp"],
                          stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, universal_newlines=True)
    return proc.returncode == 0 and proc.stdout.strip() not in ("", "un")


def processes_of(uid):
    """PIDs of the processes running as ``uid`` (from /proc)."""
    pids = []
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            if os.stat("/proc/" + entry).st_uid == uid:
                pids.append(int(entry))
        except OSError:
            pass
    return pids


def leftover_files():
    found = []
    for top in ("/etc", "/usr", "/lib", "/var", "/run", "/opt"):
        for dirpath, dirnames, filenames in os.walk(top):
            if dirpath.startswith(("/var/tmp", "/var/cache", "/var/lib/apt", "/usr/local")):
                dirnames[:] = []
                continue
            for name in dirnames + filenames:
                if "pyslirp" in name:
                    found.append(os.path.join(dirpath, name))
    return found


def read_status(pid):
    with open("/proc/%d/status" % pid) as f:
        fields = dict(line.split(":", 1) for line in f if ":" in line)
    uid = int(fields["Uid"].split()[0])
    gid = int(fields["Gid"].split()[0])
    groups = [int(g) for g in fields.get("Groups", "").split()]
    return uid, gid, groups


def wait_for(predicate, timeout, what):
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        value = predicate()
        if value:
            return value
        time.sleep(0.1)
    raise AssertionError("timed out after %.0fs waiting for %s" % (timeout, what))


def read_lcp_from_pty(path, timeout):
    """Open the daemon's pty and wait for its LCP Configure-Request (RFC 1662 framing)."""
    fd = os.open(path, os.O_RDWR | os.O_NOCTTY | os.O_NONBLOCK)
    try:
        tty.setraw(fd, termios.TCSANOW)
        seen = b""
        end = time.monotonic() + timeout
        while time.monotonic() < end:
            try:
                chunk = os.read(fd, 4096)
            except BlockingIOError:
                chunk = b""
            seen += chunk
            # 7e, ff, 7d 23 (escaped 03), c0 21 (LCP), 7d 21 (escaped code 1: Configure-Request)
            if b"\x7e\xff\x7d\x23\xc0\x21\x7d\x21" in seen:
                return seen
            if not chunk:
                time.sleep(0.05)
        return seen
    finally:
        os.close(fd)


TEST_CONFIG = """\
# Written by tests/test_packaging.py: serve a pty, linked where the test finds it.
[serial]
port = "pty"
pty_link = "/run/pyslirp/pty"

[ppp]
restart_interval = 1
"""


def test_deb_install_run_purge(deb):
    require_root()
    require_tools("dpkg", "dpkg-deb", "start-stop-daemon")
    if not os.path.exists(SYSTEM_PYTHON):
        unavailable("no %s" % SYSTEM_PYTHON)
    if subprocess.run([SYSTEM_PYTHON, "-c", "import serial"], stderr=subprocess.DEVNULL).returncode != 0:
        unavailable("Debian's python3-serial is not installed (apt-get install python3-serial)")
    if package_installed() or user_exists("pyslirp"):
        if not CI:
            pytest.skip("a pyslirp package or user already exists on this machine; not touching it "
                        "(dpkg --purge pyslirp first)")
        run(["dpkg", "--purge", "pyslirp"], check=False)  # a leftover of an interrupted run
    try:
        _install_run_purge(deb)
    finally:
        _cleanup()


def _install_run_purge(deb):
    version = source_version()
    run(["dpkg", "-i", deb], timeout=300)
    assert package_installed()

    # The system user: primary group pyslirp, member of dialout, no login.
    user = pwd.getpwnam("pyslirp")
    assert grp.getgrgid(user.pw_gid).gr_name == "pyslirp"
    assert "pyslirp" in grp.getgrnam("dialout").gr_mem
    assert user.pw_uid < 1000
    # The configuration may hold secrets: root:pyslirp 0640.
    st = os.stat("/etc/pyslirp/pyslirp.toml")
    assert (st.st_uid, st.st_gid, st.st_mode & 0o777) == (0, user.pw_gid, 0o640)
    # Registered with update-rc.d: started in runlevels 2-5 (when enabled).
    for level in (2, 3, 4, 5):
        assert [f for f in os.listdir("/etc/rc%d.d" % level) if re.match(r"^S\d\dpyslirp$", f)], level
    # Not started: ENABLED=no.
    assert not processes_of(user.pw_uid)

    # The command: Debian's python3, the version of this tree.
    out = run(["/usr/bin/pyslirp", "--version"]).stdout
    assert out.strip() == "pyslirp %s" % version
    out = run(["/usr/bin/pyslirp", "--check-config", "-c", "/etc/pyslirp/pyslirp.toml"]).stdout
    assert re.search(r"^\[serial\]$", out, re.M)
    # Byte-compiled by postinst for the installed interpreter.
    assert [d for d, _, _ in os.walk("/usr/lib/pyslirp") if d.endswith("__pycache__")]

    # ENABLED=no: "start" explains and starts nothing.
    proc = run(["/etc/init.d/pyslirp", "start"])
    assert "ENABLED" in proc.stdout
    time.sleep(0.5)
    assert not processes_of(user.pw_uid)
    assert run(["/etc/init.d/pyslirp", "status"], check=False).returncode == 3

    # Re-installing the same package is harmless (idempotent maintainer scripts).
    run(["dpkg", "-i", deb], timeout=300)
    assert pwd.getpwnam("pyslirp").pw_uid == user.pw_uid

    # Serve a pty through the init script.
    with open("/etc/pyslirp/pyslirp.toml", "w") as f:
        f.write(TEST_CONFIG)
    with open("/etc/default/pyslirp") as f:
        default = f.read()
    with open("/etc/default/pyslirp", "w") as f:
        f.write(re.sub(r"^ENABLED=no$", "ENABLED=yes", default, flags=re.M))
    run(["/etc/init.d/pyslirp", "start"], timeout=60)
    status = run(["/etc/init.d/pyslirp", "status"])
    assert "running" in status.stdout
    with open("/run/pyslirp/pyslirp.pid") as f:
        pid = int(f.read())
    uid, gid, groups = read_status(pid)
    assert uid == user.pw_uid
    assert gid == grp.getgrnam("dialout").gr_gid
    assert user.pw_gid in groups
    with open("/proc/%d/cmdline" % pid, "rb") as f:
        assert b"/usr/bin/pyslirp" in f.read().split(b"\0")
    link = wait_for(lambda: os.path.islink("/run/pyslirp/pty") and os.readlink("/run/pyslirp/pty"),
                    15, "the pty link /run/pyslirp/pty")
    assert link.startswith("/dev/pts/")
    seen = read_lcp_from_pty("/run/pyslirp/pty", 15)
    assert b"\x7e\xff\x7d\x23\xc0\x21\x7d\x21" in seen, "no LCP Configure-Request on the pty: %r" % seen[:200]
    log = "/var/log/pyslirp/pyslirp.log"
    assert os.path.exists(log) and pwd.getpwuid(os.stat(log).st_uid).pw_name == "pyslirp"

    # reload: the daemon re-reads its file (SIGHUP), same process, the pty stays; a broken file is reported by
    # the script and refused by the daemon.
    with open("/etc/pyslirp/pyslirp.toml", "a") as f:
        f.write("\n[services.2222]\nhost = \"127.0.0.1\"\nport = 22\n")
    proc = run(["/etc/init.d/pyslirp", "reload"], timeout=60)
    reloaded = "configuration reloaded from /etc/pyslirp/pyslirp.toml: "
    wait_for(lambda: reloaded + "-services.22, +services.2222" in read_text(log), 15, "the reload in %s" % log)
    with open("/run/pyslirp/pyslirp.pid") as f:
        assert int(f.read()) == pid
    assert os.readlink("/run/pyslirp/pty") == link
    with open("/etc/pyslirp/pyslirp.toml", "a") as f:
        f.write("[limits]\nmax_connections = 0\n")
    proc = run(["/etc/init.d/pyslirp", "reload"], check=False, timeout=60)
    assert proc.returncode == 1 and "limits.max_connections: must be an integer between 1 and 4096" in proc.stdout
    assert "reload refused" not in read_text(log)        # the script did not even signal it
    assert run(["/etc/init.d/pyslirp", "status"]).returncode == 0
    with open("/etc/pyslirp/pyslirp.toml", "w") as f:
        f.write(TEST_CONFIG)
    assert run(["/etc/init.d/pyslirp", "force-reload"]).returncode == 0
    wait_for(lambda: reloaded + "+services.22, -services.2222" in read_text(log), 15, "the second reload")

    # restart gives a new process; stop ends it.
    run(["/etc/init.d/pyslirp", "restart"], timeout=60)
    with open("/run/pyslirp/pyslirp.pid") as f:
        new_pid = int(f.read())
    assert new_pid != pid
    wait_for(lambda: not os.path.exists("/proc/%d" % pid), 15, "the old daemon to exit")
    assert run(["/etc/init.d/pyslirp", "status"]).returncode == 0
    run(["/etc/init.d/pyslirp", "stop"], timeout=60)
    wait_for(lambda: not processes_of(user.pw_uid), 20, "the daemon to exit")
    assert run(["/etc/init.d/pyslirp", "status"], check=False).returncode == 3
    assert run(["/etc/init.d/pyslirp", "reload"], check=False).returncode == 7     # LSB: not running
    assert not os.path.exists("/run/pyslirp/pty")  # removed at exit

    _instances(user)

    # Purge: nothing left.
    run(["dpkg", "--purge", "pyslirp"], timeout=300)
    assert not package_installed()
    assert not user_exists("pyslirp")
    assert not group_exists("pyslirp")
    assert "pyslirp" not in grp.getgrnam("dialout").gr_mem
    assert not processes_of(user.pw_uid)
    assert leftover_files() == []
    overrides = run(["dpkg-statoverride", "--list"]).stdout
    assert "pyslirp" not in overrides


def read_text(path):
    try:
        with open(path) as f:
            return f.read()
    except OSError:
        return ""


INSTANCE_CONFIG = """\
# Written by tests/test_packaging.py: instance %(name)s on its own pty.
[serial]
port = "pty"
pty_link = "/run/pyslirp/%(name)s.pty"

[network]
local_ip = "10.%(net)d.0.1"
remote_ip = "10.%(net)d.0.2"

[ppp]
restart_interval = 1
"""


def _instances(user):
    """INSTANCES="a b": one daemon per file, each with its own pid file, log and pty; reload and stop by name."""
    for net, name in enumerate(("a", "b"), 1):
        with open("/etc/pyslirp/%s.toml" % name, "w") as f:
            f.write(INSTANCE_CONFIG % {"name": name, "net": net})
    with open("/etc/default/pyslirp") as f:
        default = f.read()
    with open("/etc/default/pyslirp", "w") as f:
        f.write(re.sub(r'^INSTANCES=""$', 'INSTANCES="a b"', default, flags=re.M))
    run(["/etc/init.d/pyslirp", "start"], timeout=60)
    pids = {}
    for name in ("a", "b"):
        with open("/run/pyslirp/%s.pid" % name) as f:
            pids[name] = int(f.read())
        assert read_status(pids[name])[0] == user.pw_uid
        with open("/proc/%d/cmdline" % pids[name], "rb") as f:
            cmdline = f.read().split(b"\0")
        assert b"/etc/pyslirp/%s.toml" % name.encode() in cmdline
        assert b"/var/log/pyslirp/%s.log" % name.encode() in cmdline
        pty = "/run/pyslirp/%s.pty" % name
        wait_for(lambda: os.path.islink(pty), 15, pty)
        seen = read_lcp_from_pty(pty, 15)
        assert b"\x7e\xff\x7d\x23\xc0\x21\x7d\x21" in seen, "no LCP Configure-Request on %s" % pty
    assert pids["a"] != pids["b"] and not os.path.exists("/run/pyslirp/pyslirp.pid")
    status = run(["/etc/init.d/pyslirp", "status"])
    assert "pyslirp a is running" in status.stdout and "pyslirp b is running" in status.stdout
    # Reload one instance by name: only its log says so.
    with open("/etc/pyslirp/b.toml", "a") as f:
        f.write("\n[limits]\nmax_udp_flows = 5\n")
    run(["/etc/init.d/pyslirp", "reload", "b"], timeout=60)
    wait_for(lambda: "reloaded from /etc/pyslirp/b.toml: limits" in read_text("/var/log/pyslirp/b.log"), 15,
             "the reload of b")
    assert "configuration reloaded" not in read_text("/var/log/pyslirp/a.log")
    assert run(["/etc/init.d/pyslirp", "reload", "../x"], check=False).returncode == 2
    # Stopping one leaves the other; status is not 0 while one is down.
    run(["/etc/init.d/pyslirp", "stop", "a"], timeout=60)
    wait_for(lambda: not os.path.exists("/proc/%d" % pids["a"]), 15, "instance a to exit")
    assert os.path.exists("/proc/%d" % pids["b"])
    assert run(["/etc/init.d/pyslirp", "status"], check=False).returncode == 3
    assert run(["/etc/init.d/pyslirp", "status", "b"]).returncode == 0
    run(["/etc/init.d/pyslirp", "stop"], timeout=60)
    wait_for(lambda: not processes_of(user.pw_uid), 20, "the instances to exit")


def _cleanup():
    """Leave the machine as it was, whatever happened above."""
    if os.path.exists("/etc/init.d/pyslirp"):
        subprocess.run(["/etc/init.d/pyslirp", "stop"], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                       timeout=60)
    try:
        uid = pwd.getpwnam("pyslirp").pw_uid
    except KeyError:
        uid = None
    if uid is not None:
        for pid in processes_of(uid):  # only the daemon this test started runs as pyslirp
            try:
                os.kill(pid, signal.SIGKILL)
            except OSError:
                pass
    if package_installed():
        subprocess.run(["dpkg", "--purge", "pyslirp"], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                       timeout=300)


# --------------------------------------------------------------------------- pip


def setuptools_can_build_offline():
    """setuptools >= 61 (PEP 621) and wheel importable: no build isolation needed."""
    code = ("import setuptools, wheel, sys; "
            "sys.exit(0 if int(setuptools.__version__.split('.')[0]) >= 61 else 1)")
    return subprocess.run([sys.executable, "-c", code], stderr=subprocess.DEVNULL).returncode == 0


def test_pip_wheel_and_console_script(tmp_path):
    # A copy of the tree: an in-tree build would write build/ and *.egg-info next to the sources.
    src = tmp_path / "src"
    src.mkdir()
    for name in ("pyproject.toml", "README.md", "pyslirp.py", "pyslirp.toml"):
        shutil.copy(os.path.join(ROOT, name), str(src / name))
    shutil.copytree(os.path.join(ROOT, "pyslirp"), str(src / "pyslirp"),
                    ignore=shutil.ignore_patterns("__pycache__", "*.pyc"))
    wheels = tmp_path / "wheels"
    cmd = [sys.executable, "-m", "pip", "wheel", "--no-deps", "--disable-pip-version-check", "--quiet",
           "--wheel-dir", str(wheels), str(src)]
    if setuptools_can_build_offline():
        cmd.insert(4, "--no-build-isolation")
    run(cmd, timeout=300)
    version = source_version()
    wheel_path = wheels / ("pyslirp-%s-py3-none-any.whl" % version)
    assert wheel_path.exists(), os.listdir(str(wheels))

    with zipfile.ZipFile(str(wheel_path)) as whl:
        names = set(whl.namelist())
        metadata = utf8(whl.read("pyslirp-%s.dist-info/METADATA" % version))
        entry_points = utf8(whl.read("pyslirp-%s.dist-info/entry_points.txt" % version))
    assert {n for n in names if n.startswith("pyslirp/")} == tree_modules()
    assert "Requires-Python: >=3.7" in metadata
    requires = re.findall(r"^Requires-Dist: (.*)$", metadata, re.M)
    assert any(r.startswith("pyserial") for r in requires), requires
    assert any(r.startswith("tomli") and 'python_version < "3.11"' in r for r in requires), requires
    assert re.search(r"^pyslirp = pyslirp\.cli:main$", entry_points, re.M), entry_points

    target = tmp_path / "target"
    run([sys.executable, "-m", "pip", "install", "--no-deps", "--disable-pip-version-check", "--quiet",
         "--no-index", "--target", str(target), str(wheel_path)], timeout=300)
    script = target / "bin" / "pyslirp"
    assert script.exists()
    env = dict(os.environ, PYTHONPATH=str(target))
    out = run([str(script), "--version"], env=env, cwd=str(tmp_path)).stdout
    assert out.strip() == "pyslirp %s" % version
    # The installed copy is the one that ran, not the tree.
    code = "import pyslirp, sys; sys.stdout.write(pyslirp.__file__)"
    where = run([sys.executable, "-c", code], env=env, cwd=str(tmp_path)).stdout
    assert where.startswith(str(target))
