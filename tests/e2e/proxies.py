"""Real upstream proxies for tests: dante (danted), microsocks, OpenSSH's ``ssh -D``, tinyproxy; a system user.

Theory of operation
-------------------
Each class starts the system's program on a free port of 127.0.0.1, with a configuration written into the test's
own directory, and waits until the port accepts connections.  Each is a context manager and has ``stop()``; the
program runs in a process group of its own (``start_new_session``), and ``stop()`` signals exactly that group
(TERM, then KILL), so every process it forked goes too and nothing else is touched.

* ``Danted(directory, methods="none", destinations=("127.0.0.0/8",), externals=("lo",))``: ``danted -f
  danted.conf``; ``methods="username"`` makes the SOCKS method username/password, checked against the system's
  password database (see ``SystemUser``).  The rules let clients from 127.0.0.0/8 reach ``destinations`` only
  (by default loopback, which Debian's example configuration blocks) and log every connect to ``danted.log``.
  ``externals`` are the interfaces it connects out from; with more than one, the route to the destination
  picks (``external.rotation: route``).
* ``Microsocks(directory, username="", password="")``: ``microsocks -i 127.0.0.1 -p PORT [-u USER -P PASS]``.  It
  logs nothing; ``socket_owner`` shows which program holds a socket instead.
* ``SshDynamic(directory)``: ``ssh -N -D 127.0.0.1:PORT`` to a throwaway ``services.Sshd`` that it starts itself
  (key-only login for the current user).  No SOCKS authentication (``ssh -D`` has none).  It answers CONNECT
  "succeeded" only once its server has connected to the destination; when that fails it closes without a reply
  and says why on its standard error (``LogLevel=INFO``: "open failed: connect failed: ...").
* ``Tinyproxy(directory, username, password, connect_ports)``: ``tinyproxy -d -c tinyproxy.conf`` with
  ``BasicAuth``, ``Allow 127.0.0.1`` and ``ConnectPort`` for each of ``connect_ports`` (CONNECT to any other port is
  answered 403); its log is ``tinyproxy.log`` at level Info.
* ``SystemUser(name, password)``: ``useradd`` + ``chpasswd`` a system user without home or shell, ``userdel`` on
  stop; ``set_password`` changes its password.  Needs root.

Every proxy takes ``port=``: by default a free port; a proxy restarted on the port of one that was stopped (with
other credentials) is the same proxy to its clients.

``require(name)`` checks that a program exists: under CI its absence fails the test, locally it skips it.
"""

import os
import re
import shutil
import signal
import subprocess
import time

from e2e import services
from e2e.fixtures import require_program, unavailable

LOOPBACK = services.LOOPBACK
PACKAGES = {"danted": "dante-server", "microsocks": "microsocks", "tinyproxy": "tinyproxy", "ssh": "openssh-client",
            "useradd": "passwd", "chpasswd": "passwd", "userdel": "passwd", "ss": "iproute2"}


def require(name):
    return require_program(name, PACKAGES.get(name, name))


def socket_owner(local_port):
    """The name of the program that holds the TCP socket bound to 127.0.0.1:``local_port`` (from ``ss -tnp``)."""
    out = subprocess.run([require("ss"), "-H", "-tnp", "sport = :%d" % local_port], stdout=subprocess.PIPE,
                         stderr=subprocess.STDOUT, universal_newlines=True, timeout=20).stdout
    names = re.findall(r'users:\(\("([^"]+)"', out)
    return names[0] if names else None


class _Process(services._Service):
    """One program in its own process group, its output in ``<name>.out`` in ``directory``."""

    name = "proxy"

    def __init__(self, directory, port=None):
        self.directory = directory
        os.makedirs(directory, exist_ok=True)
        self.port = port or services.free_port()
        self.proc = None
        self.out_path = os.path.join(directory, "%s.out" % self.name)

    def _spawn(self, argv, timeout=15.0):
        with open(self.out_path, "wb") as out:
            self.proc = subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=out, stderr=subprocess.STDOUT,
                                         start_new_session=True, close_fds=True)
        if not services.wait_listening(self.port, timeout, self.proc):
            text = self.output() + self.log()
            self.stop()
            raise AssertionError("%s did not listen on %s:%d:\n%s" % (argv[0], LOOPBACK, self.port, text))
        return self

    def output(self):
        return _read(self.out_path)

    def log(self):
        return ""

    def stop(self):
        proc, self.proc = self.proc, None
        if proc is None or proc.poll() is not None:
            return
        services._signal_group(proc.pid, signal.SIGTERM)
        try:
            proc.wait(5)
        except subprocess.TimeoutExpired:
            pass
        # Whatever of the group is left (forked children), and the leader if TERM did not end it.
        services._signal_group(proc.pid, signal.SIGKILL)
        try:
            proc.wait(10)
        except subprocess.TimeoutExpired:
            pass


class Danted(_Process):
    name = "danted"

    def __init__(self, directory, methods="none", destinations=("127.0.0.0/8",), externals=("lo",), port=None):
        _Process.__init__(self, directory, port)
        self.methods = methods
        self.destinations = tuple(destinations)
        self.externals = tuple(externals)
        self.config_path = os.path.join(directory, "danted.conf")
        self.log_path = os.path.join(directory, "danted.log")

    def start(self):
        danted = require("danted")
        lines = ["logoutput: %s" % self.log_path, "internal: %s port = %d" % (LOOPBACK, self.port)]
        lines += ["external: %s" % name for name in self.externals]
        if len(self.externals) > 1:
            lines.append("external.rotation: route")
        lines += [
            "socksmethod: %s" % self.methods,
            "clientmethod: none",
            "user.privileged: root",
            "user.unprivileged: nobody",
            "",
            "client pass {",
            "    from: 127.0.0.0/8 to: 0.0.0.0/0",
            "    log: connect disconnect error",
            "}",
            "client block {",
            "    from: 0.0.0.0/0 to: 0.0.0.0/0",
            "    log: connect error",
            "}",
        ]
        for dest in self.destinations:
            lines += ["socks pass {", "    from: 127.0.0.0/8 to: %s" % dest, "    command: connect",
                      "    log: connect disconnect error", "}"]
        lines += ["socks block {", "    from: 0.0.0.0/0 to: 0.0.0.0/0", "    log: connect error", "}", ""]
        with open(self.config_path, "w") as f:
            f.write("\n".join(lines))
        return self._spawn([danted, "-f", self.config_path, "-N", "1"])

    def log(self):
        return _read(self.log_path)


class Microsocks(_Process):
    name = "microsocks"

    def __init__(self, directory, username="", password="", port=None):
        _Process.__init__(self, directory, port)
        self.username = username
        self.password = password

    def start(self):
        argv = [require("microsocks"), "-i", LOOPBACK, "-p", str(self.port)]
        if self.username:
            argv += ["-u", self.username, "-P", self.password]
        return self._spawn(argv)


class SshDynamic(_Process):
    name = "ssh-D"

    def __init__(self, directory):
        _Process.__init__(self, directory)
        self.sshd = None

    def start(self):
        why = services.Sshd.available()
        if why:
            unavailable(why)
        ssh = require("ssh")
        self.sshd = services.Sshd(os.path.join(self.directory, "sshd")).start()
        try:
            return self._spawn([
                ssh, "-F", "/dev/null", "-N", "-D", "%s:%d" % (LOOPBACK, self.port),
                "-p", str(self.sshd.port), "-i", self.sshd.client_key,
                "-o", "BatchMode=yes", "-o", "IdentitiesOnly=yes", "-o", "StrictHostKeyChecking=no",
                "-o", "UserKnownHostsFile=/dev/null", "-o", "ExitOnForwardFailure=yes", "-o", "LogLevel=INFO",
                "%s@%s" % (self.sshd.user, LOOPBACK)])
        except BaseException:
            self.sshd.stop()
            raise

    def log(self):
        return self.sshd.log() if self.sshd else ""

    def stop(self):
        _Process.stop(self)
        if self.sshd is not None:
            self.sshd.stop()


class Tinyproxy(_Process):
    name = "tinyproxy"

    def __init__(self, directory, username, password, connect_ports, port=None):
        _Process.__init__(self, directory, port)
        self.username = username
        self.password = password
        self.connect_ports = list(connect_ports)
        self.config_path = os.path.join(directory, "tinyproxy.conf")
        self.log_path = os.path.join(directory, "tinyproxy.log")

    def start(self):
        tinyproxy = require("tinyproxy")
        lines = [
            "Port %d" % self.port,
            "Listen %s" % LOOPBACK,
            "Timeout 30",
            'LogFile "%s"' % self.log_path,
            "LogLevel Info",
            "MaxClients 20",
            "Allow 127.0.0.1",
            "BasicAuth %s %s" % (self.username, self.password),
            "DisableViaHeader Yes",
        ]
        lines += ["ConnectPort %d" % port for port in self.connect_ports]
        with open(self.config_path, "w") as f:
            f.write("\n".join(lines) + "\n")
        return self._spawn([tinyproxy, "-d", "-c", self.config_path])

    def log(self):
        return _read(self.log_path)


class SystemUser(services._Service):
    """A system user with a password (for proxies that check the system's password database)."""

    def __init__(self, name, password):
        self.name = name
        self.password = password
        self.created = False

    def start(self):
        if os.geteuid() != 0:
            unavailable("creating the system user %s needs root" % self.name)
        useradd, chpasswd = require("useradd"), require("chpasswd")
        require("userdel")
        subprocess.run([useradd, "--system", "--no-create-home", "--shell", "/usr/sbin/nologin", self.name],
                       check=True, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, timeout=30)
        self.created = True
        try:
            self.set_password(self.password)
        except BaseException:
            self.stop()
            raise
        return self

    def set_password(self, password):
        subprocess.run([require("chpasswd")], input="%s:%s\n" % (self.name, password), universal_newlines=True,
                       check=True, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, timeout=30)
        self.password = password

    def stop(self):
        if self.created:
            self.created = False
            subprocess.run([shutil.which("userdel") or "userdel", self.name], stdout=subprocess.PIPE,
                           stderr=subprocess.STDOUT, timeout=30)


def _read(path):
    try:
        with open(path, "r", errors="replace") as f:
            return f.read()
    except (IOError, OSError):
        return ""


def wait_for_log(service, pattern, timeout=5.0, source="log"):
    """Wait until ``service.log()`` (or ``.output()``) matches ``pattern``; the match, or None after ``timeout``."""
    end = time.monotonic() + timeout
    while True:
        match = re.search(pattern, getattr(service, source)())
        if match or time.monotonic() >= end:
            return match
        time.sleep(0.05)


def wait_for_output(service, pattern, timeout=5.0):
    """Like ``wait_for_log``, on what the program wrote to its standard output and error."""
    return wait_for_log(service, pattern, timeout, "output")
