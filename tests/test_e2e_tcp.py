"""End to end: TCP, ICMP and the service proxy, through the real Linux pppd (User-Mode Linux) against pyslirp.

The guest is an ordinary PPP client: pppd brings up ppp0 (10.0.0.2 <-> 10.0.0.1) and the guest's own kernel TCP/IP
stack talks to pyslirp's.  Each of the guest's connections to 10.0.0.1:PORT must become an ordinary outbound
connection from the pyslirp process to the service mapped to PORT, here real servers the test starts on free
loopback ports (tests/e2e/services.py): the system's OpenSSH server with a throwaway key, a hashing sink, a seeded
source, an echo server.  Guest-side programs are Python scripts written into the test's directory (the guest shares
the host's files) and run with ``$PYTHON``; they print one JSON line that the test reads back.

What is judged, every time from both ends: what the guest's programs saw (command output, sha256 of every byte
received, errors and their timing) and what the host's services saw (bytes and sha256 received, connections
accepted).  While the link carries traffic the test also looks at the host itself: pyslirp needs no address, route
or listening socket on it (``ip -o addr``, ``ip route``, ``ss -ltnp``/``ss -lunp`` by pyslirp's pid), and its
service connections are ordinary outbound sockets (``ss -tnp``).

The serial line carries about 2 MB/s, so 20 MB takes about ten seconds in each direction.
"""

import hashlib
import os
import re
import shlex
import shutil
import socket
import subprocess
import time

import pytest

from e2e import services
from e2e.fixtures import lab, unavailable  # noqa: F401  (pytest fixture)
from e2e.programs import await_mark, json_result, write_script

pytestmark = [pytest.mark.e2e, pytest.mark.timeout(300)]

BULK = 20 << 20
LOCAL_IP, REMOTE_IP = "10.0.0.1", "10.0.0.2"
PPP_NET = "10.0.0."

SSH_OPTIONS = ("-F /dev/null -o BatchMode=yes -o IdentitiesOnly=yes -o StrictHostKeyChecking=no -o LogLevel=ERROR "
               "-o ConnectTimeout=20")




def run(cmd):
    cmd = [_tool(cmd[0]) or cmd[0]] + list(cmd[1:])
    return subprocess.run(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, universal_newlines=True,
                          timeout=20).stdout


def ppp_addresses():
    """Lines of the host's ``ip -o addr`` / ``ip route`` that mention 10.0.0.x."""
    lines = run(["ip", "-o", "addr"]).splitlines() + run(["ip", "route"]).splitlines()
    return sorted(line for line in lines if PPP_NET in line)


def sockets_of(pid, *flags):
    """``ss FLAGS -p`` lines that belong to process ``pid``."""
    pat = re.compile(r"pid=%d\b" % pid)
    return [line for line in run(["ss", "-H", "-p"] + list(flags)).splitlines() if pat.search(line)]


class HostCheck(object):
    """The host as pyslirp must leave it: no 10.0.0.x address or route, no listening socket of its own."""

    def __init__(self):
        for prog, package in (("ip", "iproute2"), ("ss", "iproute2")):
            if not _tool(prog):
                unavailable("%s not found; install the %s package" % (prog, package))
        # A host on a 10.0.0.0/24 network of its own keeps its addresses; only new ones would be pyslirp's.
        self.baseline = ppp_addresses()

    def assert_untouched(self, slirp):
        pid = slirp.proc.pid
        assert slirp.running(), slirp.diagnostics()
        new = [line for line in ppp_addresses() if line not in self.baseline]
        assert not new, "10.0.0.x on the host while pyslirp runs: %s" % new
        listening = sockets_of(pid, "-ltn") + sockets_of(pid, "-lun")
        assert not listening, "pyslirp (pid %d) listens on the host: %s" % (pid, listening)

    @staticmethod
    def established(slirp, port):
        """pyslirp's established TCP connections to 127.0.0.1:port (its service sockets)."""
        peer = "127.0.0.1:%d" % port
        return [line for line in sockets_of(slirp.proc.pid, "-tn", "state", "established")
                if re.findall(r"\S+:\d+(?=\s)", line + " ")[1:2] == [peer]]



def wait_for(predicate, timeout):
    """Poll ``predicate()`` until it returns something true (returned) or ``timeout`` seconds pass (last value)."""
    end = time.monotonic() + timeout
    value = predicate()
    while not value and time.monotonic() < end:
        time.sleep(0.1)
        value = predicate()
    return value


def _tool(prog):
    """Full path of a system program, looking in the sbin directories too."""
    return shutil.which(prog, path=os.pathsep.join([os.environ.get("PATH", ""), "/usr/sbin", "/sbin", "/usr/bin",
                                                    "/bin"]))


def link_up_script(body, pppd_opts="noauth"):
    """Guest script: pppd up (or exit 1), BODY, pppd stopped."""
    return """
        pppd_start pppd {opts}
        wait_ppp_up 30 pppd || exit 1
        {body}
        pppd_stop pppd 15
    """.format(opts=pppd_opts, body=body.strip().replace("\n", "\n        "))


# ---------------------------------------------------------------------------------------------------------------
# ssh

def test_ssh_command_and_20mb_through_ssh(lab, tmp_path):
    reason = services.Sshd.available()
    if reason:
        unavailable(reason)
    host = HostCheck()
    with services.Sshd(str(tmp_path / "sshd")) as sshd:
        sshd.start()
        slirp = lab.start_pyslirp({"services": {"22": {"host": "127.0.0.1", "port": sshd.port, "name": "SSH"}}},
                                  debug=False)
        data = services.payload(22, BULK)
        down = tmp_path / "download.bin"
        down.write_bytes(data)
        want = hashlib.sha256(data).hexdigest()
        gen = write_script(lab, "gen.py", services.PAYLOAD_SOURCE + (
            "import sys\nsys.stdout.buffer.write(payload(int(sys.argv[1]), int(sys.argv[2])))\n"))
        ssh = "ssh {opts} -o UserKnownHostsFile=$RESULTS/known_hosts -i {key} {user}@{ip}".format(
            opts=SSH_OPTIONS, key=shlex.quote(sshd.client_key), user=sshd.user, ip=LOCAL_IP)
        guest = lab.boot_guest(link_up_script("""
            record hello timeout 60 {ssh} 'echo hello; uname -n'
            mark upload
            $PYTHON {gen} 22 {size} | timeout 90 {ssh} sha256sum > "$RESULTS/upload.out" 2>&1
            echo $? > "$RESULTS/upload.rc"
            mark download
            timeout 90 {ssh} cat {down} | sha256sum > "$RESULTS/download.out" 2>&1
            echo $? > "$RESULTS/download.rc"
        """.format(ssh=ssh, gen=shlex.quote(gen), size=BULK, down=shlex.quote(str(down)))), slirp=slirp,
            timeout=240)
        # Mid-transfer, on the host: nothing of 10.0.0.x, no listener, one ordinary socket to sshd.
        await_mark(guest, "upload")
        to_sshd = wait_for(lambda: HostCheck.established(slirp, sshd.port), 20)
        host.assert_untouched(slirp)
        res = guest.wait().check_ran()
        sshd_log = sshd.log()
    assert res.addr("pppd") == (REMOTE_IP, LOCAL_IP), res.diagnostics()
    # The command ran on this host (whose name is not the guest's "pppguest") and its output came back.
    assert res.rc("hello") == 0, res.read("hello.out") + sshd_log
    assert res.read("hello.out") == "hello\n%s\n" % socket.gethostname(), res.read("hello.out")
    assert "Accepted publickey for %s" % sshd.user in sshd_log, sshd_log
    assert len(to_sshd) == 1, (to_sshd, sockets_of(slirp.proc.pid, "-tn"))
    assert res.rc("upload") == 0 and res.read("upload.out", "").split()[:1] == [want], res.read("upload.out")
    assert res.rc("download") == 0 and res.read("download.out", "").split()[:1] == [want], \
        res.read("download.out")
    assert res.rc("pppd") == 5, res.pppd_log()
    assert slirp.stop() == 0, slirp.diagnostics()


# ---------------------------------------------------------------------------------------------------------------
# bulk TCP, both directions at once

BULK_CLIENT = services.PAYLOAD_SOURCE + r"""
import hashlib, json, socket, sys, threading, time
ip, sink_port, source_port, seed, size = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), int(sys.argv[4]), \
    int(sys.argv[5])
out = {}

def upload():
    data = payload(seed, size)
    t = time.monotonic()
    c = socket.create_connection((ip, sink_port), timeout=60)
    c.sendall(data)
    c.shutdown(socket.SHUT_WR)
    answer = b""
    while True:
        d = c.recv(4096)
        if not d:
            break
        answer += d
    c.close()
    out["upload"] = {"sent": len(data), "sha256": hashlib.sha256(data).hexdigest(),
                     "answer": answer.decode(errors="replace"), "seconds": time.monotonic() - t}

def download():
    h, n, t = hashlib.sha256(), 0, time.monotonic()
    c = socket.create_connection((ip, source_port), timeout=60)
    while True:
        d = c.recv(65536)
        if not d:
            break
        h.update(d)
        n += len(d)
    c.close()
    out["download"] = {"received": n, "sha256": h.hexdigest(), "seconds": time.monotonic() - t}

def guarded(fn):
    try:
        fn()
    except Exception as exc:
        out.setdefault("errors", []).append("%s: %r" % (fn.__name__, exc))

threads = [threading.Thread(target=guarded, args=(fn,)) for fn in (upload, download)]
for t in threads:
    t.start()
for t in threads:
    t.join()
print(json.dumps(out))
"""


def test_20mb_each_way_plain_tcp_at_once(lab):
    host = HostCheck()
    with services.ServiceSet() as svc:
        sink = svc.add(services.HashSink())
        source = svc.add(services.PayloadSource(seed=7, size=BULK))
        slirp = lab.start_pyslirp({"services": {"5001": {"host": "127.0.0.1", "port": sink.port, "name": "sink"},
                                                "5002": {"host": "127.0.0.1", "port": source.port,
                                                         "name": "source"}}}, debug=False)
        client = write_script(lab, "bulk.py", BULK_CLIENT)
        guest = lab.boot_guest(link_up_script("""
            mark transfer
            record bulk timeout 120 $PYTHON {client} {ip} 5001 5002 8 {size}
        """.format(client=shlex.quote(client), ip=LOCAL_IP, size=BULK)), slirp=slirp, timeout=200)
        await_mark(guest, "transfer")
        wait_for(lambda: len(HostCheck.established(slirp, sink.port) +
                                    HostCheck.established(slirp, source.port)) == 2, 20)
        host.assert_untouched(slirp)
        to_sink, to_source = HostCheck.established(slirp, sink.port), HostCheck.established(slirp, source.port)
        res = guest.wait().check_ran()
        sink_results, source_done = list(sink.results), source.completed
    out = json_result(res, "bulk")
    assert res.rc("bulk") == 0 and "errors" not in out, (out, res.read("bulk.out"))
    want_up = hashlib.sha256(services.payload(8, BULK)).hexdigest()
    # Upload: what the host's sink received is exactly what the guest sent, and the guest got the sink's answer.
    assert out["upload"]["sent"] == BULK and out["upload"]["sha256"] == want_up, out
    assert sink_results == [(BULK, want_up)], sink_results
    assert out["upload"]["answer"] == "%d %s\n" % (BULK, want_up), out
    # Download: the guest received exactly the source's payload, and the source saw the guest's close.
    assert out["download"]["received"] == BULK and out["download"]["sha256"] == source.sha256, out
    assert source_done == 1, source_done
    assert len(to_sink) == 1 and len(to_source) == 1, sockets_of(slirp.proc.pid, "-tn")
    assert res.rc("pppd") == 5, res.pppd_log()
    assert slirp.stop() == 0, slirp.diagnostics()
    print("upload %.1f s, download %.1f s" % (out["upload"]["seconds"], out["download"]["seconds"]))


# ---------------------------------------------------------------------------------------------------------------
# many connections, refused connections, ping

N_CONNECTIONS = 50

ECHO_CLIENT = r"""
import json, os, socket, sys, time
ip, echo_port, down_port, unmapped_port, n = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), int(sys.argv[4]), \
    int(sys.argv[5])
opened_mark, host_mark = sys.argv[6], sys.argv[7]
out = {"errors": []}

def refused(port):
    s = socket.socket()
    s.settimeout(10)
    t = time.monotonic()
    try:
        s.connect((ip, port))
        what = "connected"
    except ConnectionRefusedError:
        what = "refused"
    except socket.timeout:
        what = "timeout"
    except OSError as exc:
        what = repr(exc)
    s.close()
    return {"result": what, "seconds": time.monotonic() - t}

out["down"] = refused(down_port)
out["unmapped"] = refused(unmapped_port)

# 50 connections open at the same time, each with its own payload.
socks, payloads = [], []
try:
    for i in range(n):
        socks.append(socket.create_connection((ip, echo_port), timeout=30))
        payloads.append(("conn %03d " % i).encode() * (100 + 37 * i))
    for s, p in zip(socks, payloads):
        s.sendall(p)
except OSError as exc:
    out["errors"].append("opening connection %d of %d: %r" % (len(socks), n, exc))
# Every connection is open: the host looks at its sockets now.
open(opened_mark, "w").close()
end = time.monotonic() + 30
while not os.path.exists(host_mark) and time.monotonic() < end:
    time.sleep(0.05)
for s in socks:
    s.shutdown(socket.SHUT_WR)
good = 0
for i, (s, p) in enumerate(zip(socks, payloads)):
    got = b""
    try:
        while True:
            d = s.recv(65536)
            if not d:
                break
            got += d
    except OSError as exc:
        out["errors"].append("conn %d: %r" % (i, exc))
    if got == p:
        good += 1
    else:
        out["errors"].append("conn %d: sent %d bytes, got %d back" % (i, len(p), len(got)))
    s.close()
out["echoed"] = good
out["bytes"] = sum(len(p) for p in payloads)
print(json.dumps(out))
"""


def test_50_concurrent_connections_refusals_and_ping(lab):
    host = HostCheck()
    down_port = services.closed_port()
    with services.ServiceSet() as svc:
        echo = svc.add(services.EchoServer())
        slirp = lab.start_pyslirp({
            "services": {"7": {"host": "127.0.0.1", "port": echo.port, "name": "echo"},
                         "8080": {"host": "127.0.0.1", "port": down_port, "name": "down"}},
            "limits": {"max_connections": 128, "max_per_service": 64}})
        client = write_script(lab, "echo.py", ECHO_CLIENT)
        guest = lab.boot_guest(link_up_script("""
            record ping ping -c 3 -i 0.2 -W 5 {ip}
            record echo timeout 90 $PYTHON {client} {ip} 7 8080 9999 {n} "$RESULTS/guest-open.mark" \\
                "$RESULTS/host-checked.mark"
        """.format(client=shlex.quote(client), ip=LOCAL_IP, n=N_CONNECTIONS)), slirp=slirp, timeout=150)
        await_mark(guest, "open")
        # All 50 are open: each is an ordinary outbound socket of pyslirp's; still nothing listens.
        host.assert_untouched(slirp)
        to_echo = HostCheck.established(slirp, echo.port)
        guest.mark("checked")
        res = guest.wait().check_ran()
        accepted, max_open, echo_errors = echo.accepted, echo.max_open, list(echo.errors)
    assert res.addr("pppd") == (REMOTE_IP, LOCAL_IP), res.diagnostics()
    ping = res.read("ping.out", "")
    assert res.rc("ping") == 0 and "3 packets transmitted, 3 received, 0% packet loss" in ping, ping
    out = json_result(res, "echo")
    assert res.rc("echo") == 0, res.read("echo.out")
    # A mapped service that is down, and a port with no service: "connection refused", well under a second.
    assert out["down"]["result"] == "refused" and out["down"]["seconds"] < 1.0, out
    assert out["unmapped"]["result"] == "refused" and out["unmapped"]["seconds"] < 1.0, out
    assert out["errors"] == [] and out["echoed"] == N_CONNECTIONS, out
    assert len(to_echo) == N_CONNECTIONS, to_echo
    assert accepted == N_CONNECTIONS and max_open == N_CONNECTIONS and not echo_errors, \
        (accepted, max_open, echo_errors)
    # pyslirp's log names each refusal: the service that is down, and the port with no service.
    refusals = [line for line in slirp.log().splitlines() if "refused" in line]
    assert any("127.0.0.1:%d" % down_port in line for line in refusals), refusals
    assert any("port 9999" in line for line in refusals), refusals
    assert res.rc("pppd") == 5, res.pppd_log()
    assert slirp.stop() == 0, slirp.diagnostics()
