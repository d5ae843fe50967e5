"""``pyslirp.py client``: option parsing, usage errors and a port that cannot be bound (exit codes)."""

import socket
import subprocess
import sys

import pytest

from pyslirp import cli_client
import os

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SCRIPT = os.path.join(ROOT, "pyslirp.py")


def run(*args, timeout=30):
    return subprocess.run([sys.executable, SCRIPT, "client"] + list(args), stdout=subprocess.PIPE,
                          stderr=subprocess.PIPE, timeout=timeout, universal_newlines=True)


def test_parse_forward():
    assert cli_client.parse_forward("8022:10.0.0.1:22") == ("127.0.0.1", 8022, "10.0.0.1", 22)
    assert cli_client.parse_forward("0.0.0.0:8022:10.0.0.1:22") == ("0.0.0.0", 8022, "10.0.0.1", 22)
    assert cli_client.parse_forward("[::1]:8022:10.0.0.1:22") == ("::1", 8022, "10.0.0.1", 22)
    assert cli_client.parse_forward("8022:files.example:22") == ("127.0.0.1", 8022, "files.example", 22)
    for bad in ("8022:10.0.0.1", "0:10.0.0.1:22", "8022::22", "8022:10.0.0.1:70000", "a:b:c:d:e"):
        with pytest.raises(ValueError):
            cli_client.parse_forward(bad)


def test_parse_socks():
    assert cli_client.parse_socks("1080") == ("127.0.0.1", 1080)
    assert cli_client.parse_socks("0.0.0.0:1080") == ("0.0.0.0", 1080)
    with pytest.raises(ValueError):
        cli_client.parse_socks("1:2:3")


@pytest.mark.parametrize("args,message", [
    ((), "name one line"),
    (("--stdio", "--exec", "x"), "cannot be combined"),
    (("--stdio", "-L", "1:2:x"), "not a port"),
    (("--stdio", "--local-ip", "10.0.0.300"), "--local-ip"),
    (("--stdio", "--password-file", "/nonexistent"), "--password-file needs --user"),
])
def test_usage_errors_exit_2_with_one_line(args, message):
    res = run(*args)
    assert res.returncode == 2
    assert message in res.stderr and "Traceback" not in res.stderr


def test_unreadable_password_file_exits_2(tmp_path):
    res = run("--stdio", "--user", "u", "--password-file", str(tmp_path / "missing"))
    assert res.returncode == 2 and "cannot read the password file" in res.stderr


def test_a_port_in_use_exits_1_before_any_ppp():
    busy = socket.socket()
    busy.bind(("127.0.0.1", 0))
    busy.listen(1)
    try:
        port = busy.getsockname()[1]
        res = run("--exec", "sleep 30", "-L", "%d:10.0.0.1:22" % port)
    finally:
        busy.close()
    assert res.returncode == 1
    assert "cannot listen" in res.stderr and "Traceback" not in res.stderr


def test_the_server_command_line_mentions_the_client():
    res = subprocess.run([sys.executable, SCRIPT, "--help"], stdout=subprocess.PIPE, universal_newlines=True)
    assert "pyslirp.py client" in res.stdout


def test_a_local_listener_holds_hundreds_of_connections_not_yet_accepted():
    """-L and -D listeners queue what the kernel completed before their thread accepts it: 600 connections opened
    at once all complete at once (a short queue drops the local SYNs beyond it, and each waits for its retry)."""
    from pyslirp.runtime import client as rc
    sock = rc.listen("127.0.0.1", 0)
    port = sock.getsockname()[1]
    conns = []
    try:
        for _ in range(600):
            conns.append(socket.create_connection(("127.0.0.1", port), timeout=5))
        assert len(conns) == 600
    finally:
        for c in conns:
            c.close()
        sock.close()
