"""Real local services for end-to-end tests: an OpenSSH server, an echo server, a hashing sink, a seeded source.

Theory of operation
-------------------
pyslirp turns each of the client's TCP connections into an ordinary outbound connection to a local service.  The
end-to-end tests start those services themselves, each on a free port of 127.0.0.1 only, and map pyslirp's service
ports to them (``[services.PORT]``).  Every class here is a context manager and also has ``stop()``; the tests
always stop what they started (a ``ServiceSet`` stops all of its members in one ``finally``).

* ``Sshd``: the system's ``/usr/sbin/sshd`` with its own ``sshd_config`` in a temporary directory: a throwaway
  ed25519 host key, key-only login for the current user (its authorized key written into the same directory),
  no PAM, no passwords, ``StrictModes no`` (the directory is a test's tmp dir), run in the foreground (``-D -e``)
  with its log in ``sshd.log``.  sshd refuses to start without its privilege-separation directory ``/run/sshd``;
  it is created when missing.  The client's private key is ``Sshd.client_key``.
* ``EchoServer``: threaded, one thread per connection, writes back everything it reads (on a free port, or on a
  given one: a service restarted where it was).  Counts connections and
  bytes, remembers the largest number of connections open at the same time.
* ``HashSink``: reads each connection to its end, then answers ``"<count> <sha256 hex>\\n"`` and closes; the
  results are also kept host-side (``results``) for the test to compare.
* ``PayloadSource``: writes a deterministic payload (``payload(seed, size)``, or given bytes) to each connection,
  then closes.
* ``UdpEchoServer``: sends every UDP datagram back to its sender; remembers (peer, size) of each.

Threads are daemons and sockets have timeouts, so a broken test cannot hang the suite on them.
"""

import errno
import hashlib
import os
import random
import shutil
import signal
import socket
import subprocess
import threading
import time

LOOPBACK = "127.0.0.1"
SSHD = "/usr/sbin/sshd"
SSH_KEYGEN = "ssh-keygen"
PRIVSEP_DIR = "/run/sshd"


def free_port():
    """A TCP port of 127.0.0.1 that nobody listened on a moment ago."""
    s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    try:
        s.bind((LOOPBACK, 0))
        return s.getsockname()[1]
    finally:
        s.close()


def closed_port():
    """A free loopback port with nobody listening: connecting to it is refused (for a "service down" mapping)."""
    for _ in range(20):
        port = free_port()
        s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        s.settimeout(2)
        try:
            s.connect((LOOPBACK, port))
        except ConnectionRefusedError:
            return port
        except OSError:
            continue
        finally:
            s.close()
    raise RuntimeError("no closed loopback port found")


def payload(seed, size):
    """``size`` pseudo-random bytes determined by ``seed`` (the guest computes the same with the same code)."""
    return random.Random(seed).getrandbits(size * 8).to_bytes(size, "little") if size else b""


# The same function as source text, for guest-side Python scripts.
PAYLOAD_SOURCE = (
    "def payload(seed, size):\n"
    "    import random\n"
    "    return random.Random(seed).getrandbits(size * 8).to_bytes(size, 'little') if size else b''\n")


def read_to_eof(sock):
    """Everything ``sock`` sends until its EOF."""
    chunks = []
    while True:
        data = sock.recv(65536)
        if not data:
            return b"".join(chunks)
        chunks.append(data)


def wait_listening(port, timeout=10.0, proc=None):
    """Wait until something accepts connections on 127.0.0.1:port; False on timeout or if ``proc`` exited."""
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        if proc is not None and proc.poll() is not None:
            return False
        s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        s.settimeout(1)
        try:
            s.connect((LOOPBACK, port))
            return True
        except OSError:
            time.sleep(0.05)
        finally:
            s.close()
    return False


class _Service(object):
    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.stop()


class _ThreadedServer(_Service):
    """Accept loop on a loopback port (``port``, or a free one); ``handle(conn)`` runs in one thread per
    connection."""

    def __init__(self, name, backlog=128, io_timeout=120.0, port=0):
        self.name = name
        self.io_timeout = io_timeout
        self.sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self.sock.bind((LOOPBACK, port))
        self.sock.listen(backlog)
        self.sock.settimeout(0.2)
        self.port = self.sock.getsockname()[1]
        self.lock = threading.Lock()
        self.accepted = 0
        self.open_now = 0
        self.max_open = 0
        self.errors = []
        self._stop = threading.Event()
        self._conns = set()
        self._threads = []
        self._thread = threading.Thread(target=self._accept_loop, name=name, daemon=True)
        self._thread.start()

    def _accept_loop(self):
        while not self._stop.is_set():
            try:
                conn, _ = self.sock.accept()
            except socket.timeout:
                continue
            except OSError:
                break
            conn.settimeout(self.io_timeout)
            with self.lock:
                self.accepted += 1
                self.open_now += 1
                self.max_open = max(self.max_open, self.open_now)
                self._conns.add(conn)
            t = threading.Thread(target=self._serve, args=(conn,), name="%s-conn" % self.name, daemon=True)
            self._threads.append(t)
            t.start()

    def _serve(self, conn):
        try:
            self.handle(conn)
        except (OSError, ValueError) as exc:
            if not self._stop.is_set():
                with self.lock:
                    self.errors.append(repr(exc))
        finally:
            with self.lock:
                self.open_now -= 1
                self._conns.discard(conn)
            conn.close()

    def handle(self, conn):
        raise NotImplementedError

    def stop(self):
        self._stop.set()
        self.sock.close()
        self._thread.join(5)
        with self.lock:
            conns = list(self._conns)
        for conn in conns:
            try:
                conn.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass
        for t in self._threads:
            t.join(5)


class EchoServer(_ThreadedServer):
    """Writes back everything each connection sends, until its end."""

    def __init__(self, **kw):
        _ThreadedServer.__init__(self, "echo", **kw)
        self.bytes_echoed = 0

    def handle(self, conn):
        while True:
            data = conn.recv(65536)
            if not data:
                break
            conn.sendall(data)
            with self.lock:
                self.bytes_echoed += len(data)


class HashSink(_ThreadedServer):
    """Hashes each connection's bytes to its end; answers ``"<count> <sha256>\\n"``; ``results`` keeps them."""

    def __init__(self, **kw):
        _ThreadedServer.__init__(self, "sink", **kw)
        self.results = []

    def handle(self, conn):
        h, n = hashlib.sha256(), 0
        while True:
            data = conn.recv(262144)
            if not data:
                break
            h.update(data)
            n += len(data)
        with self.lock:
            self.results.append((n, h.hexdigest()))
        conn.sendall(("%d %s\n" % (n, h.hexdigest())).encode())


class PayloadSource(_ThreadedServer):
    """Sends ``payload(seed, size)`` (or the bytes ``data``) on each connection, then closes it."""

    def __init__(self, seed=0, size=0, data=None, **kw):
        _ThreadedServer.__init__(self, "source", **kw)
        self.data = payload(seed, size) if data is None else data
        self.sha256 = hashlib.sha256(self.data).hexdigest()
        self.completed = 0

    def handle(self, conn):
        conn.sendall(self.data)
        conn.shutdown(socket.SHUT_WR)
        # Wait for the client's end so the data is not cut by a reset when the socket closes.
        while conn.recv(65536):
            pass
        with self.lock:
            self.completed += 1


class UdpEchoServer(_Service):
    """A UDP echo server on 127.0.0.1:<free port>: every datagram goes back to its sender; ``datagrams`` lists
    (peer, size) of each one received."""

    def __init__(self):
        self.sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        self.sock.bind((LOOPBACK, 0))
        self.sock.settimeout(0.2)
        self.port = self.sock.getsockname()[1]
        self.lock = threading.Lock()
        self.datagrams = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, name="udp-echo", daemon=True)
        self._thread.start()

    def _loop(self):
        while not self._stop.is_set():
            try:
                data, peer = self.sock.recvfrom(65535)
            except socket.timeout:
                continue
            except OSError:
                break
            with self.lock:
                self.datagrams.append((peer, len(data)))
            try:
                self.sock.sendto(data, peer)
            except OSError:
                pass

    def stop(self):
        self._stop.set()
        self._thread.join(5)
        self.sock.close()


class Sshd(_Service):
    """The system's OpenSSH server on 127.0.0.1:<free port>, key-only login for the current user.

    ``directory`` holds everything: ``sshd_config``, the host key, ``client_key`` (+ ``.pub``),
    ``authorized_keys``, ``sshd.log``.
    """

    def __init__(self, directory, port=None):
        self.directory = directory
        self.port = port or free_port()
        self.proc = None
        self.user = _user_name()
        os.makedirs(directory, exist_ok=True)
        self.host_key = os.path.join(directory, "ssh_host_ed25519_key")
        self.client_key = os.path.join(directory, "client_key")
        self.authorized_keys = os.path.join(directory, "authorized_keys")
        self.config_path = os.path.join(directory, "sshd_config")
        self.log_path = os.path.join(directory, "sshd.log")
        self._made_privsep_dir = False

    @staticmethod
    def available():
        """None if sshd can be run here, else why not."""
        if not os.path.isfile(SSHD):
            return "%s not found; install the openssh-server package" % SSHD
        if shutil.which(SSH_KEYGEN) is None or shutil.which("ssh") is None:
            return "ssh or ssh-keygen not found; install the openssh-client package"
        return None

    def _keygen(self, path, comment):
        subprocess.check_call([SSH_KEYGEN, "-q", "-t", "ed25519", "-N", "", "-C", comment, "-f", path],
                              stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, timeout=30)

    def start(self, timeout=15.0):
        self._keygen(self.host_key, "pyslirp-test-host")
        self._keygen(self.client_key, "pyslirp-test-client")
        shutil.copyfile(self.client_key + ".pub", self.authorized_keys)
        os.chmod(self.authorized_keys, 0o600)
        with open(self.config_path, "w") as f:
            f.write("\n".join([
                "Port %d" % self.port,
                "ListenAddress %s" % LOOPBACK,
                "HostKey %s" % self.host_key,
                "AuthorizedKeysFile %s" % self.authorized_keys,
                "PidFile none",
                "PasswordAuthentication no",
                "KbdInteractiveAuthentication no",
                "PubkeyAuthentication yes",
                "PermitRootLogin prohibit-password",
                "UsePAM no",
                "StrictModes no",
                "UseDNS no",
                "PrintMotd no",
                "LogLevel VERBOSE",
                "",
            ]))
        if os.geteuid() == 0 and not os.path.isdir(PRIVSEP_DIR):
            try:
                os.makedirs(PRIVSEP_DIR, 0o755)
                self._made_privsep_dir = True
            except OSError as exc:
                if exc.errno != errno.EEXIST:
                    raise
        with open(self.log_path, "wb") as log:
            self.proc = subprocess.Popen([SSHD, "-D", "-e", "-f", self.config_path], stdin=subprocess.DEVNULL,
                                         stdout=log, stderr=subprocess.STDOUT, start_new_session=True,
                                         close_fds=True)
        if not wait_listening(self.port, timeout, self.proc):
            self.stop()
            raise AssertionError("sshd did not listen on %s:%d:\n%s" % (LOOPBACK, self.port, self.log()))
        return self

    def log(self):
        try:
            with open(self.log_path, "r", errors="replace") as f:
                return f.read()
        except (IOError, OSError):
            return ""

    def stop(self):
        """Stop sshd and its per-connection processes (its own process group); remove what start() made.

        The commands of a session run in a session of their own (sshd calls setsid()); they end when their
        connection's sshd process is gone (end of file on their pipes).
        """
        proc, self.proc = self.proc, None
        if proc is not None and proc.returncode is None:
            self._stop_group(proc)
        if self._made_privsep_dir:
            self._made_privsep_dir = False
            try:
                os.rmdir(PRIVSEP_DIR)
            except OSError:
                pass

    @staticmethod
    def _stop_group(proc):
        # sshd and the per-connection processes it forked share its process group (start_new_session above).  The
        # leader is not reaped until the group has been killed, so its id cannot be reused meanwhile.
        _signal_group(proc.pid, signal.SIGTERM)
        end = time.monotonic() + 5
        while time.monotonic() < end and not _exited_unreaped(proc.pid):
            time.sleep(0.05)
        _signal_group(proc.pid, signal.SIGKILL)
        try:
            proc.wait(10)
        except subprocess.TimeoutExpired:
            pass


class ServiceSet(_Service):
    """Services started by one test; ``stop()`` stops all of them, newest first."""

    def __init__(self):
        self.members = []

    def add(self, service):
        self.members.append(service)
        return service

    def stop(self):
        while self.members:
            self.members.pop().stop()


def _signal_group(pgid, sig):
    try:
        os.killpg(pgid, sig)
    except (ProcessLookupError, PermissionError):
        pass


def _exited_unreaped(pid):
    """True once ``pid`` (our child) has exited; it stays a zombie (not reaped) so its id stays reserved."""
    try:
        return os.waitid(os.P_PID, pid, os.WEXITED | os.WNOHANG | os.WNOWAIT) is not None
    except ChildProcessError:
        return True


def _user_name():
    try:
        import pwd
        return pwd.getpwuid(os.geteuid()).pw_name
    except (ImportError, KeyError):
        return os.environ.get("USER", "root")
