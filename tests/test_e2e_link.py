"""End to end: the real Linux pppd (in a User-Mode Linux guest) brings up a PPP link with pyslirp.

Each test boots a guest (about 3 s) whose ``/dev/ttyS0`` is relayed to pyslirp's pty, runs pppd there with the
options of a real client, and judges by what pppd itself logged (``debug``), the guest's ``ip -o addr show ppp0``,
pppd's exit status and pyslirp's exit status.  pppd's exit statuses (pppd(8)): 5 user request (SIGTERM),
15 peer dead (LCP echo), 16 hangup, 19 failed to authenticate ourselves to the peer.

The two ``test_harness_*`` tests prove the harness alone, with no pyslirp: pppd's first LCP Configure-Request
reaches a host pty byte for byte, and two guests' pppds joined through the relays open a link and carry 2 MB of TCP.
"""

import os
import select
import signal
import time

import pytest

from e2e.fixtures import lab  # noqa: F401  (pytest fixture)
from e2e.uml import hdlc_frames

pytestmark = [pytest.mark.e2e, pytest.mark.timeout(240)]

EXIT_USER_REQUEST = 5
EXIT_AUTH_TOPEER_FAILED = 19

# RFC 1662: flag, then 0xFF 0x03 0xC0 0x21 0x01 (LCP Configure-Request) with every byte < 0x20 escaped under
# the default ACCM (0x7D, byte XOR 0x20).
LCP_CONFREQ_START = bytes.fromhex("7eff7d23c0217d21")


def lcp_options(frame):
    """{type: value} of an LCP Configure-Request frame with address/control and a 2-byte protocol."""
    assert frame[:4] == b"\xff\x03\xc0\x21", frame.hex()
    code, length = frame[4], int.from_bytes(frame[6:8], "big")
    assert code == 1 and length == len(frame) - 4, frame.hex()
    opts, data = {}, frame[8:]
    while data:
        opts[data[0]] = data[2:data[1]]
        data = data[data[1]:]
    return opts


def pppd_up_down(name, *options, wait=30):
    """Guest script: start pppd NAME, wait for ppp0, stop it with SIGTERM."""
    return """
        pppd_start {name} {opts}
        wait_ppp_up {wait} {name}
        pppd_stop {name} 15
    """.format(name=name, opts=" ".join(options), wait=wait)


def assert_link_opened(res, name="pppd"):
    log = res.pppd_log(name)
    assert res.addr(name) == ("10.0.0.2", "10.0.0.1"), "ppp0 of %s: %r" % (name, res.read(name + ".addr"))
    assert "local  IP address 10.0.0.2" in log and "remote IP address 10.0.0.1" in log, log


def test_harness_pppd_sends_lcp_configure_request(lab):
    master, slave = lab.openpty()
    guest = lab.boot_guest("""
        pppd_start pppd noauth lcp-restart 1
        wait_host_mark seen 30
        pppd_stop pppd 10
    """, tty_fd=slave, timeout=60)
    seen = guest.relay.wait_from_guest(LCP_CONFREQ_START, 40)
    # What the relay wrote to the pty arrives on its master side, unchanged.
    got, end = b"", time.monotonic() + 5
    while LCP_CONFREQ_START not in got and time.monotonic() < end:
        if select.select([master], [], [], 0.2)[0]:
            got += os.read(master, 4096)
    guest.mark("seen")
    res = guest.wait().check_ran()
    assert seen, "no LCP Configure-Request from pppd: %r" % bytes(guest.relay.from_guest[:200])
    assert got.startswith(LCP_CONFREQ_START), got[:64].hex()
    frames = hdlc_frames(got)
    assert frames, got.hex()
    opts = lcp_options(frames[0])
    # pppd's defaults: ACCM 0 (RFC 1662 7.1), a magic number, PFC and ACFC.
    assert opts.get(2) == b"\x00\x00\x00\x00" and len(opts.get(5, b"")) == 4, opts
    assert 7 in opts and 8 in opts, opts
    log = res.pppd_log()
    assert "sent [LCP ConfReq id=0x1 <asyncmap 0x0> <magic 0x%s>" % opts[5].hex().lstrip("0") in log, log
    # The host's mark reached the guest (pppd was stopped on it, not by the script's timeout).
    assert res.rc("pppd") != "timeout" and "Terminating on signal 15" in log, log


TRANSFER_SERVER = r"""
import hashlib, socket, sys
s = socket.socket()
s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
s.bind(("10.0.0.1", 5000))
s.listen(1)
s.settimeout(60)
c, _ = s.accept()
h, n = hashlib.sha256(), 0
while True:
    d = c.recv(65536)
    if not d:
        break
    h.update(d)
    n += len(d)
c.sendall(b"done")
c.close()
print(n, h.hexdigest())
"""

TRANSFER_CLIENT = r"""
import hashlib, os, socket
data = os.urandom(2 << 20)
c = socket.create_connection(("10.0.0.1", 5000), timeout=60)
c.sendall(data)
c.shutdown(socket.SHUT_WR)
assert c.recv(4) == b"done"
print(len(data), hashlib.sha256(data).hexdigest())
"""


def test_harness_pppd_to_pppd_between_two_guests(lab):
    # Two guests, the relays joined by a pty pair: the harness alone carries a full PPP session and 2 MB of TCP.
    master, slave = lab.openpty()
    server = lab.boot_guest("""
        pppd_start server noauth passive 10.0.0.1:10.0.0.2
        wait_ppp_up 40 server || exit 1
        record transfer timeout 60 $PYTHON -c '{}'
        pppd_wait server 20
    """.format(TRANSFER_SERVER), tty_fd=master, name="server", timeout=90)
    client = lab.boot_guest("""
        pppd_start client noauth
        wait_ppp_up 40 client || exit 1
        record ping ping -c 2 -i 0.2 -W 5 10.0.0.1
        sleep 0.5
        record transfer timeout 60 $PYTHON -c '{}'
        pppd_stop client 15
    """.format(TRANSFER_CLIENT), tty_fd=slave, name="client", timeout=90)
    rc_, rs = client.wait().check_ran(), server.wait().check_ran()
    assert rc_.addr("client") == ("10.0.0.2", "10.0.0.1"), rc_.diagnostics()
    assert rs.addr("server") == ("10.0.0.1", "10.0.0.2"), rs.diagnostics()
    assert rc_.rc("ping") == 0 and "2 received" in rc_.read("ping.out", ""), rc_.read("ping.out")
    sent, got = rc_.read("transfer.out", "").split(), rs.read("transfer.out", "").split()
    assert sent[:1] == [str(2 << 20)] and sent == got, (sent, got)
    assert "LCP terminated by peer" in rs.pppd_log("server"), rs.pppd_log("server")


def test_lcp_ipcp_open_with_default_options(lab):
    slirp = lab.start_pyslirp({})
    assert os.path.realpath(slirp.link_path) == os.path.realpath(slirp.pty), "--pty-link"
    res = lab.run_guest(pppd_up_down("pppd", "noauth"), slirp=slirp)
    assert_link_opened(res)
    log = res.pppd_log()
    assert "rcvd [LCP ConfAck id=0x1" in log and "rcvd [IPCP ConfAck" in log, log
    # pppd's SIGTERM sends LCP Terminate-Request; pyslirp must answer it (RFC 1661 5.5).
    assert "rcvd [LCP TermAck" in log, log
    assert res.rc("pppd") == EXIT_USER_REQUEST, log
    assert slirp.running(), slirp.diagnostics()
    assert slirp.stop() == 0, slirp.diagnostics()
    assert not os.path.lexists(slirp.link_path), "pty link left behind"


@pytest.mark.parametrize("method", ["pap", "chap"])
def test_authentication_right_and_wrong_secret(lab, method):
    slirp = lab.start_pyslirp({"ppp": {"require_auth": method, "secrets": {"alice": "right horse"}}})
    # A wrong password first, then the right one from /etc/ppp/*-secrets: pyslirp must listen again after a
    # failed authentication.
    script = """
        pppd_start wrong noauth user alice password wrong-horse
        pppd_wait wrong 40
        ip -o addr show dev ppp0 > "$RESULTS/wrong.after" 2>&1
    """ + pppd_up_down("right", "noauth", "user", "alice")
    secrets = 'alice * "right horse" *\n'
    res = lab.run_guest(script, slirp=slirp, etc_ppp={"pap-secrets": secrets, "chap-secrets": secrets},
                        timeout=120)
    label = method.upper()
    wrong = res.pppd_log("wrong")
    assert "%s authentication failed" % label in wrong, wrong
    assert "%s authentication succeeded" % label not in wrong, wrong
    assert res.rc("wrong") == EXIT_AUTH_TOPEER_FAILED, wrong
    assert res.addr("wrong") is None and "inet " not in (res.read("wrong.after") or ""), wrong
    right = res.pppd_log("right")
    assert "%s authentication succeeded" % label in right, right
    assert_link_opened(res, "right")
    assert res.rc("right") == EXIT_USER_REQUEST, right
    assert slirp.stop() == 0, slirp.diagnostics()
    assert "right horse" not in slirp.log(), "pyslirp logged a password"


def lcp_codes(packets):
    """LCP codes, in order, of (protocol, information) packets."""
    return [info[0] for proto, info in packets if proto == 0xC021 and info]


def test_lcp_echo_keeps_idle_link_up(lab):
    slirp = lab.start_pyslirp({"ppp": {"lcp_echo_interval": 1, "lcp_echo_failure": 3}})
    res = lab.run_guest("""
        pppd_start pppd noauth lcp-echo-interval 1 lcp-echo-failure 3
        wait_ppp_up 30 pppd || exit 1
        sleep 6
        pid_running "$(pppd_pid pppd)" && echo alive > "$RESULTS/after6s"
        ip -o addr show dev ppp0 >> "$RESULTS/after6s"
        pppd_stop pppd 15
    """, slirp=slirp, timeout=90)
    log = res.pppd_log()
    assert_link_opened(res)
    after = res.read("after6s", "")
    assert after.startswith("alive") and "peer 10.0.0.1" in after, after + log
    # pppd does not log echoes once the link runs: count them on the wire.  Both sides kept asking and answering
    # for the whole 6 s, more than interval x failure = 3 s (RFC 1661 5.8: Echo-Request 9, Echo-Reply 10).
    sent, received = lcp_codes(res.ppp_packets("from_guest")), lcp_codes(res.ppp_packets("to_guest"))
    assert sent.count(9) >= 5 and received.count(10) >= 5, (sent, received)
    assert received.count(9) >= 5 and sent.count(10) >= received.count(9) - 1, (sent, received)
    assert "No response to" not in log and "LCP terminated by peer" not in log, log
    assert res.rc("pppd") == EXIT_USER_REQUEST, log
    assert slirp.stop() == 0, slirp.diagnostics()


def test_lcp_echo_failure_ends_session_with_silent_peer(lab):
    # pppd frozen with SIGSTOP answers nothing; pyslirp must give up after lcp_echo_failure unanswered
    # Echo-Requests, end the session, and take the next client.
    slirp = lab.start_pyslirp({"ppp": {"lcp_echo_interval": 1, "lcp_echo_failure": 3}})
    res = lab.run_guest("""
        pppd_start frozen noauth
        wait_ppp_up 30 frozen || exit 1
        kill -STOP "$(pppd_pid frozen)"
        sleep 7
        kill -CONT "$(pppd_pid frozen)"
        pppd_wait frozen 20
        pppd_start next noauth
        wait_ppp_up 30 next
        pppd_stop next 15
    """, slirp=slirp, timeout=120)
    assert_link_opened(res, "frozen")
    frozen = res.pppd_log("frozen")
    assert "LCP terminated by peer" in frozen, frozen
    codes = lcp_codes(res.ppp_packets("to_guest"))
    # The first session as pyslirp sent it: negotiation (1, 2), Protocol-Rejects (8), its unanswered
    # Echo-Requests (9), then its Terminate-Request (5).
    assert 5 in codes, codes
    first = codes[:codes.index(5)]
    assert set(first) <= {1, 2, 8, 9} and 3 <= first.count(9) <= 5, codes
    assert_link_opened(res, "next")
    assert res.rc("next") == EXIT_USER_REQUEST, res.pppd_log("next")
    assert slirp.stop() == 0, slirp.diagnostics()


def test_new_session_after_pppd_killed(lab):
    slirp = lab.start_pyslirp({})
    res = lab.run_guest("""
        pppd_start one noauth
        wait_ppp_up 30 one
        # An abrupt end: no Terminate-Request reaches pyslirp.
        kill -KILL "$(pppd_pid one)"; pppd_wait one 10
        for i in $(seq 50); do ip link show ppp0 >/dev/null 2>&1 || break; sleep 0.1; done
        pppd_start two noauth
        wait_ppp_up 30 two
        pppd_stop two 15
        pppd_start three noauth
        wait_ppp_up 30 three
        pppd_stop three 15
    """, slirp=slirp, timeout=150)
    for name in ("one", "two", "three"):
        assert_link_opened(res, name)
    assert res.rc("one") == 128 + signal.SIGKILL, res.read("one.rc")
    assert res.rc("two") == EXIT_USER_REQUEST and res.rc("three") == EXIT_USER_REQUEST, res.diagnostics()
    assert slirp.running(), slirp.diagnostics()
    assert slirp.stop() == 0, slirp.diagnostics()


def test_sigterm_to_pyslirp_terminates_the_peer(lab):
    slirp = lab.start_pyslirp({})
    guest = lab.boot_guest("""
        pppd_start pppd noauth
        wait_ppp_up 30 pppd && mark up
        pppd_wait pppd 30
    """, slirp=slirp, timeout=90)
    assert guest.wait_mark("up", 60), lab.diagnostics()
    time.sleep(0.5)
    assert slirp.stop(signal.SIGTERM) == 0, slirp.diagnostics()
    res = guest.wait().check_ran()
    log = res.pppd_log()
    assert_link_opened(res)
    assert "rcvd [LCP TermReq" in log and "LCP terminated by peer" in log, log
    assert res.rc("pppd") not in (None, "timeout"), log
