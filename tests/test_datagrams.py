"""The datagram relay: UDP flows over real loopback sockets, ICMP echo through datagram or raw ICMP sockets."""

import errno
import os
import queue
import socket
import threading

import pytest

from pyslirp.net import refusal
from pyslirp.net.events import PingClose, PingOpen, PingSend, UdpClose, UdpOpen, UdpSend
from pyslirp.net.flows import FlowKey, Route
from pyslirp.runtime.datagrams import DatagramRelay, open_ping_socket

CLIENT = b"\x0a\x00\x00\x02"


def flow(proto, port):
    return FlowKey(proto, CLIENT, 5000, b"\x7f\x00\x00\x01", port)


class Inbox(object):
    def __init__(self):
        self.q = queue.Queue()

    def post(self, item):
        self.q.put(item)

    def get(self, timeout=5.0):
        return self.q.get(timeout=timeout)


@pytest.fixture
def relay():
    inbox = Inbox()
    started = []

    def make(**kw):
        r = DatagramRelay(inbox.post, **kw)
        r.start()
        started.append(r)
        return r, inbox
    yield make
    for r in started:
        r.stop()
        r.join(5)
        assert not r.is_alive()


@pytest.fixture
def udp_echo():
    sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    sock.bind(("127.0.0.1", 0))
    sock.settimeout(0.2)
    stop = threading.Event()
    seen = []

    def serve():
        while not stop.is_set():
            try:
                data, peer = sock.recvfrom(65535)
            except socket.timeout:
                continue
            seen.append((data, peer))
            sock.sendto(data[::-1], peer)
    t = threading.Thread(target=serve, daemon=True)
    t.start()
    yield sock.getsockname()[1], seen
    stop.set()
    t.join(2)
    sock.close()


def closed_udp_port():
    s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    s.bind(("127.0.0.1", 0))
    port = s.getsockname()[1]
    s.close()
    return port


def test_udp_flows_relay_both_ways_each_from_its_own_socket(relay, udp_echo):
    port, seen = udp_echo
    r, inbox = relay()
    route = Route("udp_service", "127.0.0.1", port, "direct", "echo")
    assert r.handle(UdpOpen(1, flow(17, 7), route))
    assert r.handle(UdpOpen(2, flow(17, 7), route))
    big = os.urandom(3000)
    r.handle(UdpSend(1, big))
    assert inbox.get() == ("udp_data", 1, big[::-1])
    r.handle(UdpSend(2, b"two"))
    assert inbox.get() == ("udp_data", 2, b"owt")
    assert len(set(peer for _, peer in seen)) == 2          # one socket (source port) per flow
    r.handle(UdpClose(1, "idle"))
    r.handle(UdpSend(1, b"after close"))                     # ignored: the flow is gone
    r.handle(UdpSend(2, b"still"))
    assert inbox.get() == ("udp_data", 2, b"llits")
    assert [d for d, _ in seen].count(b"after close") == 0
    assert not r.handle(object())                            # not ours


def test_udp_port_unreachable_is_reported(relay):
    r, inbox = relay()
    r.handle(UdpOpen(3, flow(17, 9), Route("nat", "127.0.0.1", closed_udp_port(), "direct", "nat")))
    r.handle(UdpSend(3, b"anyone?"))
    assert inbox.get() == ("udp_error", 3, refusal.PORT_UNREACHABLE)


def test_udp_flow_to_a_name_that_does_not_resolve_fails(relay):
    r, inbox = relay()
    r.handle(UdpOpen(4, flow(17, 9), Route("udp_service", "no-such-host.invalid", 9, "direct", "x")))
    kind, flow_id, reason, outcome = inbox.get(timeout=30)
    assert (kind, flow_id, outcome) == ("flow_failed", 4, refusal.HOST_UNREACHABLE) and "no-such-host" in reason


PING_GROUP_RANGE = "/proc/sys/net/ipv4/ping_group_range"


def _can_open(kind):
    try:
        open_ping_socket(kind).close()
        return True
    except OSError:
        return False


@pytest.fixture
def ping_allowed():
    """Let datagram ICMP sockets be opened by our group while the test runs (as root), then restore the sysctl."""
    try:
        with open(PING_GROUP_RANGE) as f:
            old = f.read().strip()
    except OSError:
        old = None
    changed = False
    if old is not None and not _can_open("dgram") and os.geteuid() == 0:
        gid = os.getgid()
        with open(PING_GROUP_RANGE, "w") as f:
            f.write("%d %d\n" % (gid, gid))
        changed = True
    try:
        yield
    finally:
        if changed:
            with open(PING_GROUP_RANGE, "w") as f:
                f.write(old + "\n")


@pytest.mark.parametrize("mode", ["dgram", "raw"])
def test_ping_to_loopback(relay, ping_allowed, mode):
    if not _can_open(mode):
        pytest.skip("%s ICMP sockets are not permitted for this process" % mode)
    r, inbox = relay(ping_modes=(mode,))
    r.handle(PingOpen(5, flow(1, 0), Route("nat", "127.0.0.1", 0, "direct", "nat")))
    for seq in (1, 2):
        r.handle(PingSend(5, seq, b"payload-%d" % seq))
        assert inbox.get() == ("ping_reply", 5, seq, b"payload-%d" % seq)
    r.handle(PingClose(5, "idle"))
    r.handle(PingSend(5, 3, b"late"))
    with pytest.raises(queue.Empty):
        inbox.get(timeout=0.5)


def test_ping_falls_back_from_dgram_to_raw_and_fails_cleanly_without_either(relay):
    tried = []

    def denied(kind):
        tried.append(kind)
        raise OSError(errno.EACCES if kind == "dgram" else errno.EPERM, "denied")
    r, inbox = relay(open_ping=denied)
    r.handle(PingOpen(6, flow(1, 0), Route("nat", "127.0.0.1", 0, "direct", "nat")))
    kind, flow_id, reason, outcome = inbox.get()
    assert (kind, flow_id, outcome) == ("flow_failed", 6, refusal.ADMIN_PROHIBITED)
    assert tried == ["dgram", "raw"] and "ping_group_range" in reason
