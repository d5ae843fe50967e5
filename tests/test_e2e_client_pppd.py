"""``pyslirp.py client`` against Linux pppd as the server, inside User-Mode Linux.

The guest runs ``pppd ... 10.0.0.1:10.0.0.2 noauth`` on its serial line, an HTTP server with a payload
file and an OpenSSH server on its own addresses; the host runs the client on standard input/output (the
harness relays it to the guest's ttyS0) with ``-L`` forwards to 10.0.0.1.  The download must arrive intact
(sha256) and ssh must log in through the forward.
"""

import hashlib
import os
import shlex
import signal
import socket
import subprocess
import sys
import time

import pytest

from e2e import services
from e2e.fixtures import lab, unavailable  # noqa: F401  (lab: the fixture)

pytestmark = [pytest.mark.e2e, pytest.mark.timeout(300)]

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SCRIPT = os.path.join(ROOT, "pyslirp.py")
SIZE = 1024 * 1024
SSH_OPTIONS = ["-F", "/dev/null", "-o", "BatchMode=yes", "-o", "IdentitiesOnly=yes", "-o",
               "StrictHostKeyChecking=no", "-o", "UserKnownHostsFile=/dev/null", "-o", "LogLevel=ERROR",
               "-o", "ConnectTimeout=30"]


def keygen(path):
    subprocess.check_call(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", path],
                          stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, timeout=30)


def test_against_pppd_as_the_server(lab, tmp_path):
    reason = services.Sshd.available()
    if reason:
        unavailable(reason)
    www = tmp_path / "www"
    www.mkdir()
    data = services.payload(5, SIZE)
    (www / "payload.bin").write_bytes(data)
    keys = tmp_path / "keys"
    keys.mkdir()
    keygen(str(keys / "host_key"))
    keygen(str(keys / "client_key"))
    (keys / "authorized_keys").write_bytes((keys / "client_key.pub").read_bytes())
    os.chmod(str(keys / "authorized_keys"), 0o600)
    (keys / "sshd_config").write_text("\n".join([
        "Port 22", "ListenAddress 10.0.0.1", "HostKey %s" % (keys / "host_key"),
        "AuthorizedKeysFile %s" % (keys / "authorized_keys"), "PidFile none", "PasswordAuthentication no",
        "KbdInteractiveAuthentication no", "PubkeyAuthentication yes", "PermitRootLogin prohibit-password",
        "UsePAM no", "StrictModes no", "UseDNS no", "PrintMotd no", ""]))
    http_port, ssh_port = services.free_port(), services.free_port()

    client = subprocess.Popen([sys.executable, SCRIPT, "client", "--stdio", "-d", "--link-timeout", "120",
                               "-L", "%d:10.0.0.1:8000" % http_port, "-L", "%d:10.0.0.1:22" % ssh_port],
                              stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                              stderr=open(str(tmp_path / "client.log"), "wb"), start_new_session=True)
    try:
        guest = lab.boot_guest("""
            mkdir -p /run/sshd
            pppd_start pppd 10.0.0.1:10.0.0.2 noauth
            wait_ppp_up 60 pppd || exit 1
            $PYTHON -m http.server 8000 --bind 10.0.0.1 --directory {www} >"$RESULTS/http.out" 2>&1 &
            /usr/sbin/sshd -D -e -f {config} >"$RESULTS/sshd.out" 2>&1 &
            wait_listening 8000 60 && wait_listening 22 60 || exit 1
            mark up
            wait_host_mark done 180
            pppd_stop pppd 15
        """.format(www=shlex.quote(str(www)), config=shlex.quote(str(keys / "sshd_config"))),
            tty_fd=(client.stdout.fileno(), client.stdin.fileno()), timeout=240)
        assert guest.wait_mark("up", 90), open(str(tmp_path / "client.log")).read()[-3000:]
        end = time.monotonic() + 30
        while "link up: we are" not in open(str(tmp_path / "client.log")).read() and time.monotonic() < end:
            time.sleep(0.1)
        with socket.create_connection(("127.0.0.1", http_port), timeout=120) as s:
            s.sendall(b"GET /payload.bin HTTP/1.0\r\n\r\n")
            response = services.read_to_eof(s)
        head, _, body = response.partition(b"\r\n\r\n")
        assert head.startswith(b"HTTP/1.0 200"), head
        assert hashlib.sha256(body).hexdigest() == hashlib.sha256(data).hexdigest()
        res = subprocess.run(["ssh"] + SSH_OPTIONS + ["-i", str(keys / "client_key"), "-p", str(ssh_port),
                                                      "root@127.0.0.1", "echo hello; ip -o -4 addr show ppp0"],
                             stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.PIPE, timeout=120)
        out = res.stdout.decode(errors="replace")
        assert res.returncode == 0, (out, res.stderr)
        assert out.startswith("hello\n") and "10.0.0.1" in out, out
        guest.mark("done")
        result = guest.wait().check_ran()
        log = result.pppd_log()
        assert "local  IP address 10.0.0.1" in log and "remote IP address 10.0.0.2" in log, log
        # pppd ended the session: the client saw the link go down (exit 5).
        assert client.wait(30) == 5
    finally:
        if client.poll() is None:
            os.killpg(client.pid, signal.SIGKILL)
            client.wait()
    text = open(str(tmp_path / "client.log")).read()
    assert "link up: we are 10.0.0.2, the server 10.0.0.1" in text, text[-3000:]
    assert "Traceback" not in text
