"""The DNS relay thread against a real dnsmasq on 127.0.0.1: UDP, TCP (as through a proxy), the TC fallback,
failover from a dead server, the whole forwarder + relay path, spoofed replies, bounds, stop(); and the
upstream server list (configured entries, resolv.conf).

dnsmasq is started by the tests themselves (tests/e2e/dnsserver.py) on free loopback ports, and stopped at the
end of the module.  Without dnsmasq these tests skip, or under CI fail.
"""

import queue
import random
import socket
import threading
import time

import pytest

from e2e.dnsserver import ADDRESS, AUTH_ADDRESS, AUTH_TTL, AUTH_ZONE, RECORDS, TTL, Dnsmasq
from e2e.fixtures import require_program
from e2e.services import LOOPBACK, closed_port
from pyslirp.net.dns import DnsForwarder
from pyslirp.runtime.dnsrelay import DnsRelay, UpstreamError, parse_server, upstream_servers
from pyslirp.wire import dns
from pyslirp.wire.dns import Message

WAIT = 5.0


@pytest.fixture(scope="module")
def servers(tmp_path_factory):
    require_program("dnsmasq", "dnsmasq-base")
    directory = str(tmp_path_factory.mktemp("dnsmasq"))
    plain = Dnsmasq(directory, *RECORDS)
    try:
        auth = Dnsmasq(directory, *AUTH_ZONE)
    except Exception:
        plain.stop()
        raise
    try:
        yield plain, auth
    finally:
        plain.stop()
        auth.stop()
        print(plain.log())
        print(auth.log())


class Inbox(object):
    """What the relay posts, as the stack thread's inbox would get it."""

    def __init__(self):
        self.q = queue.Queue()

    def post(self, item):
        self.q.put(item)

    def get(self, timeout=WAIT):
        return self.q.get(timeout=timeout)

    def empty_for(self, seconds):
        try:
            item = self.q.get(timeout=seconds)
        except queue.Empty:
            return True
        raise AssertionError("unexpected %r" % (item,))


def tcp_connect(host, port):
    # What a proxy connector hands the relay: a connected stream socket.
    return socket.create_connection((host, port), timeout=2)


@pytest.fixture
def relays():
    started = []

    def start(servers, **kw):
        inbox = Inbox()
        relay = DnsRelay(servers, inbox.post, **kw)
        relay.start()
        started.append(relay)
        return relay, inbox

    yield start
    for relay in started:
        relay.stop()
        assert not relay.is_alive()


def answer(inbox, uid=None):
    kind, value = inbox.get()
    assert kind == "dns_answer", (kind, value)
    m = Message.parse(value)
    if uid is not None:
        assert m.id == uid
    return m, value


def a_records(data, m):
    return [data[r.rdata_offset:r.end] for r in m.answers if r.rtype == dns.TYPE_A]


# ----------------------------------------------------------------------------------------------
# Upstream server list

def test_configured_servers():
    assert upstream_servers(["192.0.2.1", "127.0.0.1:5353", "192.0.2.1"]) == [
        ("192.0.2.1", 53), ("127.0.0.1", 5353)]
    assert parse_server(" 10.0.0.1:53 ") == ("10.0.0.1", 53)
    for bad in ("dns.google", "10.0.0.1:0", "10.0.0.1:70000", "10.0.0.1:x", "::1", "10.0.0.256", ""):
        with pytest.raises(UpstreamError) as e:
            parse_server(bad)
        assert "IPv4 address" in str(e.value) and repr(bad) in str(e.value)


def test_resolv_conf_nameservers(tmp_path):
    conf = tmp_path / "resolv.conf"
    conf.write_text("# generated\n"
                    "; also a comment\n"
                    "search example.org\n"
                    "nameserver 127.0.0.53\n"
                    "nameserver\t192.0.2.7   # trailing words are ignored\n"
                    "nameserver 2001:db8::1\n"
                    "nameserver fe80::1%eth0\n"
                    "nameserver 127.0.0.53\n"
                    "#nameserver 192.0.2.99\n"
                    "options edns0 trust-ad\n")
    assert upstream_servers([], str(conf)) == [("127.0.0.53", 53), ("192.0.2.7", 53)]
    # Configured entries win over resolv.conf.
    assert upstream_servers(["198.51.100.1"], str(conf)) == [("198.51.100.1", 53)]


def test_no_upstream_is_a_clear_error(tmp_path):
    conf = tmp_path / "resolv.conf"
    conf.write_text("nameserver ::1\nsearch lan\n")
    with pytest.raises(UpstreamError) as e:
        upstream_servers([], str(conf))
    assert str(e.value) == ("no DNS upstream: [dns] upstream is empty and %s has no IPv4 nameserver "
                            "(skipped, not IPv4: ::1)" % conf)
    conf.write_text("")
    with pytest.raises(UpstreamError) as e:
        upstream_servers(None, str(conf))
    assert "has no IPv4 nameserver" in str(e.value)
    with pytest.raises(UpstreamError) as e:
        upstream_servers([], str(tmp_path / "missing"))
    assert "cannot be read" in str(e.value) and "[dns] upstream" in str(e.value)


# ----------------------------------------------------------------------------------------------
# The relay against dnsmasq

def test_udp_query_answered(servers, relays):
    plain, _ = servers
    relay, inbox = relays([plain.address])
    relay.submit(0x4242, dns.build_query(0x4242, "www.Example.test"))
    m, data = answer(inbox, 0x4242)
    assert m.rcode == dns.RCODE_NOERROR and a_records(data, m) == [socket.inet_aton(ADDRESS)]
    assert m.answers[0].ttl == TTL and m.question.name == b"\x03www\x07Example\x04test\x00"
    assert relay.counters["sent_udp"] == 1 and relay.counters["answers"] == 1


def test_a_resolver_at_127_0_0_53_is_just_another_loopback_address(relays, tmp_path):
    # Where systemd-resolved listens; here a dnsmasq, on a free port (53 itself may be taken).
    require_program("dnsmasq", "dnsmasq-base")
    with Dnsmasq(str(tmp_path), *RECORDS, listen="127.0.0.53") as stub:
        relay, inbox = relays(upstream_servers(["127.0.0.53:%d" % stub.port]))
        relay.submit(0x5353, dns.build_query(0x5353, "www.example.test"))
        m, data = answer(inbox, 0x5353)
        assert a_records(data, m) == [socket.inet_aton(ADDRESS)]
        assert "query[A] www.example.test from 127.0.0.1" in stub.log()


def test_nxdomain_is_passed_through(servers, relays):
    plain, auth = servers
    relay, inbox = relays([plain.address])
    relay.submit(7, dns.build_query(7, "nope.test", edns_size=1232))
    m, _ = answer(inbox, 7)
    assert m.rcode == dns.RCODE_NXDOMAIN and m.opt is not None
    relay2, inbox2 = relays([auth.address])
    relay2.submit(8, dns.build_query(8, "nx.zone.test"))
    m, _ = answer(inbox2, 8)
    assert m.rcode == dns.RCODE_NXDOMAIN and m.negative_ttl() == AUTH_TTL


def test_many_queries_in_parallel_over_udp(servers, relays):
    plain, _ = servers
    relay, inbox = relays([plain.address])
    for uid in range(100, 140):
        relay.submit(uid, dns.build_query(uid, "n%d.example.test" % uid))
    got = sorted(answer(inbox)[0].id for _ in range(40))
    assert got == list(range(100, 140))


def test_tcp_through_an_open_connection_callable(servers, relays):
    plain, _ = servers
    relay, inbox = relays([plain.address], via="proxy", open_connection=tcp_connect)
    for uid in (1, 2, 3):
        relay.submit(uid, dns.build_query(uid, "h%d.example.test" % uid))
    got = {}
    for _ in range(3):
        m, data = answer(inbox)
        got[m.id] = (m.question.name, a_records(data, m))
    assert got == {uid: (dns.encode_name("h%d.example.test" % uid), [socket.inet_aton(ADDRESS)])
                   for uid in (1, 2, 3)}
    # Pipelined on one connection, which is then reused.
    relay.submit(4, dns.build_query(4, "big.test", dns.TYPE_TXT))
    m, data = answer(inbox, 4)
    assert not m.tc and len(data) > 512 and m.answers[0].rtype == dns.TYPE_TXT
    assert relay.counters["sent_tcp"] == 4 and relay.counters["connections"] == 1
    assert relay.counters["sent_udp"] == 0 and relay.open_connections == 1


def test_truncated_udp_reply_is_asked_again_over_tcp(servers, relays):
    plain, _ = servers
    relay, inbox = relays([plain.address])
    relay.submit(9, dns.build_query(9, "big.test", dns.TYPE_TXT))
    m, data = answer(inbox, 9)
    assert not m.tc and len(m.answers) == 1 and len(data) > 760
    strings = data[m.answers[0].rdata_offset:m.answers[0].end]
    assert strings == b"\xfa" + b"x" * 250 + b"\xfa" + b"y" * 250 + b"\xfa" + b"z" * 250
    c = relay.counters
    assert (c["sent_udp"], c["tc_retries"], c["sent_tcp"]) == (1, 1, 1)
    # That TCP connection is not kept: the server may be serving it at the expense of others.
    deadline = time.monotonic() + WAIT
    while relay.open_connections and time.monotonic() < deadline:
        time.sleep(0.01)
    assert relay.open_connections == 0


def test_without_tcp_fallback_the_truncated_reply_is_passed_on(servers, relays):
    plain, _ = servers
    relay, inbox = relays([plain.address], tcp_fallback=False)
    relay.submit(10, dns.build_query(10, "big.test", dns.TYPE_TXT))
    m, _ = answer(inbox, 10)
    assert m.tc and m.answers == () and relay.counters["sent_tcp"] == 0


def test_dead_server_fails_over_to_the_next_and_is_then_avoided(servers, relays):
    plain, _ = servers
    dead = (LOOPBACK, closed_port())
    relay, inbox = relays([dead, plain.address], timeout=0.3, total_timeout=3.0)
    t0 = time.monotonic()
    relay.submit(11, dns.build_query(11, "www.example.test"))
    answer(inbox, 11)
    first = time.monotonic() - t0
    assert 0.3 <= first < 2.0
    t0 = time.monotonic()
    relay.submit(12, dns.build_query(12, "www.example.test"))
    answer(inbox, 12)
    assert time.monotonic() - t0 < 0.3          # the server that answered is tried first now
    assert relay.counters["retries"] == 1


def test_dead_server_over_tcp_fails_over_at_once(servers, relays):
    plain, _ = servers
    dead = (LOOPBACK, closed_port())
    relay, inbox = relays([dead, plain.address], via="proxy", open_connection=tcp_connect, timeout=1.0)
    t0 = time.monotonic()
    relay.submit(13, dns.build_query(13, "www.example.test"))
    answer(inbox, 13)
    assert time.monotonic() - t0 < 1.0          # connection refused: no need to wait for a timeout
    assert relay.counters["connect_failed"] == 1


def test_a_stuck_tcp_connection_is_replaced(relays):
    # A server that takes the first connection and never answers on it, then answers on the next one.
    listener = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    listener.bind((LOOPBACK, 0))
    listener.listen(4)
    listener.settimeout(WAIT)
    accepted = []

    def serve():
        try:
            for n in range(2):
                conn, _ = listener.accept()
                accepted.append(conn)
                if n == 1:
                    conn.settimeout(WAIT)
                    buf = b""
                    while True:
                        messages, buf = dns.split_tcp_frames(buf + conn.recv(4096))
                        if messages:
                            break
                    reply = dns.HEADER.pack(dns.peek_id(messages[0]), dns.FLAG_QR | dns.FLAG_RA, 1, 0, 0, 0)
                    conn.sendall(dns.tcp_frame(reply + messages[0][12:]))
        except OSError:
            pass

    thread = threading.Thread(target=serve, daemon=True)
    thread.start()
    try:
        relay, inbox = relays([listener.getsockname()], via="proxy", open_connection=tcp_connect, timeout=0.3)
        t0 = time.monotonic()
        relay.submit(21, dns.build_query(21, "slow.test"))
        m, _ = answer(inbox, 21)
        assert m.question.name == dns.encode_name("slow.test") and time.monotonic() - t0 >= 0.3
        assert relay.counters["connections"] == 2 and relay.counters["sent_tcp"] == 2
        thread.join(WAIT)
        # The stuck connection was closed by the relay.
        accepted[0].settimeout(WAIT)
        assert accepted[0].recv(4096)[2:] == dns.build_query(21, "slow.test")
        assert accepted[0].recv(4096) == b""
    finally:
        listener.close()
        for conn in accepted:
            conn.close()


def test_all_servers_dead_fails_within_the_total_timeout(relays):
    dead = [(LOOPBACK, closed_port()), (LOOPBACK, closed_port())]
    relay, inbox = relays(dead, timeout=0.2, total_timeout=0.7)
    t0 = time.monotonic()
    relay.submit(14, dns.build_query(14, "www.example.test"))
    assert inbox.get() == ("dns_failed", 14)
    elapsed = time.monotonic() - t0
    assert 0.6 <= elapsed < 1.5
    assert relay.counters["sent_udp"] == 4 and relay.counters["failed"] == 1   # 0.2 s each, round robin
    relay2, inbox2 = relays(dead, via="proxy", open_connection=tcp_connect)
    relay2.submit(15, dns.build_query(15, "www.example.test"))
    assert inbox2.get() == ("dns_failed", 15)
    assert relay2.counters["connect_failed"] == relay2.max_attempts == 5


def test_replies_from_elsewhere_or_with_unknown_ids_are_dropped(relays):
    # A fake upstream we control, and a spoofer on another port.
    server = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    spoofer = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    try:
        server.bind((LOOPBACK, 0))
        server.settimeout(WAIT)
        relay, inbox = relays([server.getsockname()], timeout=2.0)
        query = dns.build_query(0x5151, "bank.test")
        relay.submit(0x5151, query)
        got, relay_addr = server.recvfrom(4096)
        assert got == query
        forged = dns.HEADER.pack(0x5151, dns.FLAG_QR | dns.FLAG_RA, 1, 0, 0, 0) + query[12:]
        spoofer.sendto(forged, relay_addr)                              # right ID, wrong source
        server.sendto(dns.with_id(forged, 0x5152), relay_addr)          # right source, unknown ID
        server.sendto(query, relay_addr)                                # QR clear: not a response
        deadline = time.monotonic() + WAIT
        while relay.counters["dropped_not_a_response"] < 1 and time.monotonic() < deadline:
            time.sleep(0.01)
        assert relay.counters["dropped_wrong_source"] == 1 and relay.counters["dropped_unknown_id"] == 1
        assert inbox.empty_for(0.05)
        server.sendto(forged, relay_addr)
        assert inbox.get() == ("dns_answer", forged)
        server.sendto(forged, relay_addr)                               # a duplicate: no longer pending
        deadline = time.monotonic() + WAIT
        while relay.counters["dropped_unknown_id"] < 2 and time.monotonic() < deadline:
            time.sleep(0.01)
        assert inbox.empty_for(0.05)
    finally:
        server.close()
        spoofer.close()


def test_submit_queue_is_bounded_and_never_blocks():
    inbox = Inbox()
    relay = DnsRelay([(LOOPBACK, 53)], inbox.post, max_queued=3)   # not started: nothing drains the queue
    try:
        assert [relay.submit(i, b"x" * 12) for i in range(5)] == [True, True, True, False, False]
        assert inbox.get(0) == ("dns_failed", 3) and inbox.get(0) == ("dns_failed", 4)
    finally:
        relay.stop()


def test_stop_is_prompt_and_later_submits_fail():
    inbox = Inbox()
    relay = DnsRelay([(LOOPBACK, closed_port())], inbox.post, timeout=30, total_timeout=60)
    relay.start()
    relay.submit(1, dns.build_query(1, "www.example.test"))
    time.sleep(0.05)
    t0 = time.monotonic()
    relay.stop()
    assert not relay.is_alive() and time.monotonic() - t0 < 1.0
    assert relay.submit(2, b"x" * 12) is False and inbox.get(0) == ("dns_failed", 2)


def test_constructor_checks():
    with pytest.raises(UpstreamError):
        DnsRelay([], lambda item: None)
    with pytest.raises(ValueError):
        DnsRelay([(LOOPBACK, 53)], lambda item: None, via="socks")
    with pytest.raises(ValueError):
        DnsRelay([(LOOPBACK, 53)], lambda item: None, via="proxy")


# ----------------------------------------------------------------------------------------------
# Forwarder and relay together, as the stack thread drives them

class StackThread(object):
    """The stack thread's part, reduced to DNS: feed the forwarder, hand its queries to the relay, feed back
    what the relay posts, collect the replies to the clients."""

    def __init__(self, forwarder, relay, inbox):
        self.fwd, self.relay, self.inbox = forwarder, relay, inbox
        self.t0 = time.monotonic()

    def now(self):
        return int((time.monotonic() - self.t0) * 1000)

    def ask(self, client, payload, timeout=WAIT):
        self.fwd.query(client, payload, self.now())
        for uid, data in self.fwd.take_queries():
            self.relay.submit(uid, data)
        deadline = time.monotonic() + timeout
        while True:
            out = self.fwd.take_replies()
            if out:
                return out
            left = deadline - time.monotonic()
            assert left > 0, "no reply"
            try:
                kind, value = self.inbox.get(timeout=left)
            except queue.Empty:
                continue
            if kind == "dns_answer":
                self.fwd.answer(value, self.now())
            else:
                self.fwd.failed(value, self.now())


def test_forwarder_and_relay_answer_a_hand_built_query(servers, relays):
    plain, _ = servers
    relay, inbox = relays([plain.address])
    stack = StackThread(DnsForwarder(rng=random.Random(3)), relay, inbox)
    client = ("10.0.0.2", 33333)
    query = (b"\xbe\xef" b"\x01\x00" b"\x00\x01\x00\x00\x00\x00\x00\x00"
             b"\x03www\x07example\x04test\x00" b"\x00\x01\x00\x01")
    ((to, data),) = stack.ask(client, query)
    m = Message.parse(data)
    assert to == client and m.id == 0xBEEF and m.qr and m.rcode == 0
    assert a_records(data, m) == [socket.inet_aton(ADDRESS)] and m.answers[0].ttl == TTL
    # Asked again (another client, another spelling): from the cache, the relay sends nothing.
    ((to, data),) = stack.ask(("10.0.0.2", 33334), dns.build_query(0x0102, "WWW.example.test"))
    m = Message.parse(data)
    assert m.id == 0x0102 and m.question.name == b"\x03WWW\x07example\x04test\x00"
    assert a_records(data, m) == [socket.inet_aton(ADDRESS)] and relay.counters["sent_udp"] == 1
    assert stack.fwd.counters["cache_hits"] == 1


def test_forwarder_and_relay_nxdomain_cached_negatively(servers, relays):
    _, auth = servers
    relay, inbox = relays([auth.address])
    stack = StackThread(DnsForwarder(rng=random.Random(4), negative_ttl_cap=300), relay, inbox)
    ((_, data),) = stack.ask(("10.0.0.2", 1), dns.build_query(1, "nx.zone.test"))
    assert Message.parse(data).rcode == dns.RCODE_NXDOMAIN
    ((_, data),) = stack.ask(("10.0.0.2", 2), dns.build_query(2, "NX.zone.test"))
    m = Message.parse(data)
    assert m.rcode == dns.RCODE_NXDOMAIN and m.id == 2 and relay.counters["sent_udp"] == 1
    assert m.authority[0].ttl <= AUTH_TTL
    ((_, data),) = stack.ask(("10.0.0.2", 3), dns.build_query(3, "h.zone.test"))
    m = Message.parse(data)
    assert a_records(data, m) == [socket.inet_aton(AUTH_ADDRESS)]


def test_forwarder_and_relay_servfail_when_every_server_is_dead(relays):
    relay, inbox = relays([(LOOPBACK, closed_port())], timeout=0.2, total_timeout=0.5)
    stack = StackThread(DnsForwarder(rng=random.Random(5)), relay, inbox)
    ((_, data),) = stack.ask(("10.0.0.2", 1), dns.build_query(0x0A0B, "www.example.test"))
    m = Message.parse(data)
    assert m.rcode == dns.RCODE_SERVFAIL and m.id == 0x0A0B and stack.fwd.counters["upstream_failed"] == 1


def test_big_answer_through_tcp_is_truncated_for_a_plain_udp_client(servers, relays):
    plain, _ = servers
    relay, inbox = relays([plain.address], via="proxy", open_connection=tcp_connect)
    stack = StackThread(DnsForwarder(rng=random.Random(6)), relay, inbox)
    ((_, data),) = stack.ask(("10.0.0.2", 1), dns.build_query(5, "big.test", dns.TYPE_TXT))
    m = Message.parse(data)
    assert m.tc and m.answers == () and len(data) <= 512       # the client retries over TCP
    ((_, data),) = stack.ask(("10.0.0.2", 1), dns.build_query(6, "big.test", dns.TYPE_TXT, edns_size=1232))
    m = Message.parse(data)
    assert not m.tc and len(m.answers) == 1 and m.id == 6


def test_relay_thread_is_named_and_a_daemon(relays):
    relay, _ = relays([(LOOPBACK, 53)])
    assert relay.name == "dns-relay" and relay.daemon and relay in threading.enumerate()


# ----------------------------------------------------------------------------------------------
# Cross-check with a real client: dig asks a loopback UDP port served by forwarder + relay

class UdpFront(threading.Thread):
    """A UDP socket on 127.0.0.1 whose datagrams go to a DnsForwarder, as the client's to local_ip:53 would."""

    def __init__(self, forwarder, relay, inbox):
        super().__init__(daemon=True)
        self.fwd, self.relay, self.inbox = forwarder, relay, inbox
        self.sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        self.sock.bind((LOOPBACK, 0))
        self.sock.settimeout(0.01)
        self.port = self.sock.getsockname()[1]
        self.stopping = False
        self.t0 = time.monotonic()

    def run(self):
        while not self.stopping:
            now = int((time.monotonic() - self.t0) * 1000)
            try:
                data, addr = self.sock.recvfrom(65535)
                self.fwd.query(addr, data, now)
            except socket.timeout:
                pass
            while True:
                try:
                    kind, value = self.inbox.q.get_nowait()
                except queue.Empty:
                    break
                (self.fwd.answer if kind == "dns_answer" else self.fwd.failed)(value, now)
            self.fwd.handle_timer(now)
            for uid, data in self.fwd.take_queries():
                self.relay.submit(uid, data)
            for addr, data in self.fwd.take_replies():
                self.sock.sendto(data, addr)

    def stop(self):
        self.stopping = True
        self.join(WAIT)
        self.sock.close()


def dig(port, *args):
    import subprocess
    out = subprocess.run(["dig", "@127.0.0.1", "-p", str(port), "+tries=1", "+time=3"] + list(args),
                         stdout=subprocess.PIPE, stderr=subprocess.STDOUT, timeout=20)
    return out.stdout.decode("utf-8", "replace")


def test_dig_through_the_forwarder(servers, relays):
    require_program("dig", "bind9-dnsutils")
    plain, _ = servers
    relay, inbox = relays([plain.address])
    front = UdpFront(DnsForwarder(rng=random.Random(8)), relay, inbox)
    front.start()
    try:
        out = dig(front.port, "www.example.test", "A")
        assert "status: NOERROR" in out and "www.example.test.\t60\tIN\tA\t%s" % ADDRESS in out, out
        out = dig(front.port, "+noedns", "WWW.Example.TEST", "A")      # no EDNS: another cache entry
        assert "status: NOERROR" in out and "WWW.Example.TEST.\t60\tIN\tA\t%s" % ADDRESS in out, out
        out = dig(front.port, "+noedns", "www.EXAMPLE.test", "A")      # from the cache, question respelled
        assert "status: NOERROR" in out and "www.EXAMPLE.test." in out and "WARNING" not in out, out
        out = dig(front.port, "nope.test", "A")
        assert "status: NXDOMAIN" in out, out
        # big.test: fetched in full over TCP by the relay; a plain UDP client is told to use TCP.
        out = dig(front.port, "+noedns", "+ignore", "big.test", "TXT")
        assert "flags: qr tc" in out.replace(" aa", "") and "ANSWER: 0" in out, out
        out = dig(front.port, "+bufsize=1232", "big.test", "TXT")
        assert "ANSWER: 1" in out and "y" * 250 in out, out
        assert front.fwd.counters["cache_hits"] == 1 and front.fwd.counters["truncated"] == 1
    finally:
        front.stop()
