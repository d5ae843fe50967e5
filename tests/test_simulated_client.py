"""pyslirp.testing.SimulatedClient: the client role's core against a server Core, in memory, fake clock."""

import hashlib

import pytest

from pyslirp.net.client_stack import ClientStackConfig, FlowClosed, FlowRefused
from pyslirp.net.stack import Service, StackConfig
from pyslirp.ppp.events import AuthResult
from pyslirp.ppp.link import LinkConfig
from pyslirp.testing import NEVER_CONNECTS, EchoService, SimulatedClient
from pyslirp.testing.client import client_link_config
from pyslirp.wire import ppp as wppp
from pyslirp.wire.ipv4 import PROTO_TCP, Ipv4Repr, ip_bytes
from pyslirp.wire.tcp import ACK, RST, TcpRepr

ECHO = StackConfig(services=(Service(7, "127.0.0.1", 7, "echo"), Service(9, "127.0.0.1", 9, "hang")))


def sim(**kw):
    kw.setdefault("services", {7: EchoService, 9: NEVER_CONNECTS})
    kw.setdefault("server_stack_config", ECHO)
    return SimulatedClient(**kw)


def test_link_up_assigns_the_servers_addresses():
    s = sim(server_link_config=LinkConfig(dns=("10.0.0.3",)))
    assert s.link_up()
    assert (s.client.local_ip, s.client.remote_ip) == ("10.0.0.2", "10.0.0.1")
    assert s.client.dns_servers == ("10.0.0.3",)
    assert s.client.link.vj_active and s.server.link.vj_active
    # The recorder saw the negotiation from the server's side, both ways.
    assert s.recorder.of(wppp.PROTO_LCP, "in") and s.recorder.of(wppp.PROTO_LCP, "out")
    assert s.recorder.of(wppp.PROTO_IPCP, "in")


@pytest.mark.parametrize("method", ["pap", "chap"])
def test_authentication(method):
    s = sim(link_config=client_link_config(user="bob", password="pw"),
            server_link_config=LinkConfig(require_auth=method, secrets=(("bob", "pw"),)))
    assert s.link_up()
    assert AuthResult("bob", True, method) in s.client_events
    assert AuthResult("bob", True, method) in s.server_events
    assert s.recorder.of(wppp.PROTO_PAP if method == "pap" else wppp.PROTO_CHAP, "in")


@pytest.mark.parametrize("vj,compression", [(True, "deflate"), (False, "none")])
def test_tcp_echo_through_a_server_service(vj, compression):
    s = sim(link_config=client_link_config(vj=vj, compression=compression),
            server_link_config=LinkConfig(vj=vj, compression=compression))
    assert s.link_up()
    flow = s.connect("10.0.0.1", 7)
    assert s.run(lambda: flow.connected, 5000)
    data = hashlib.sha256(b"seed").digest() * 8192        # 256 kB that Deflate cannot shrink to nothing
    flow.send(data)
    flow.shutdown()
    assert s.run(lambda: flow.done, 120000)
    assert flow.closed == "closed" and flow.peer_fin
    assert bytes(flow.received) == data
    closed = [e for e in s.client_events if isinstance(e, FlowClosed)]
    assert closed == [FlowClosed(flow.flow_id, "closed", len(data), len(data))]


def test_refusals_map_to_reasons():
    s = sim(stack_config=ClientStackConfig(connect_timeout=5))
    assert s.link_up()
    start = s.now
    rst = s.connect("10.0.0.1", 23)                     # no such service: the server resets the SYN
    unreachable = s.connect("192.0.2.1", 80)            # outbound refused by the server's policy: ICMP
    hang = s.connect("10.0.0.1", 9)                     # the service never connects: no answer at all
    assert s.run(lambda: rst.done and unreachable.done and hang.done, 60000)
    assert (rst.refused, unreachable.refused, hang.refused) == ("rst", "unreachable", "timeout")
    codes = dict((e.flow_id, e.icmp_code) for e in s.client_events if isinstance(e, FlowRefused))
    assert codes[unreachable.flow_id] == 13 and codes[rst.flow_id] == -1     # the server's policy: prohibited
    assert s.now - start == 5000                        # connect_timeout, not the SYN give-up
    assert not (rst.connected or unreachable.connected or hang.connected)


def test_flows_opened_before_the_link_wait_for_it():
    s = sim()
    flow = s.connect("10.0.0.1", 7)
    assert not flow.done
    assert s.run(lambda: flow.connected, 10000)
    flow.send(b"ping")
    assert s.run(lambda: bytes(flow.received) == b"ping", 5000)


def test_link_down_ends_the_flows():
    s = sim()
    assert s.link_up()
    up = s.connect("10.0.0.1", 7)
    assert s.run(lambda: up.connected, 5000)
    waiting = s.connect("10.0.0.1", 9)
    s.server.close(s.now)
    assert s.run(lambda: up.done and waiting.done, 10000)
    assert up.closed == "link down" and waiting.refused == "link down"


def test_a_stray_segment_injected_into_the_client_gets_a_reset():
    s = sim()
    assert s.link_up()
    s.recorder.clear()
    seg = TcpRepr(80, 50000, 1234, 999, ACK, 1000)
    src, dst = ip_bytes("10.0.0.1"), ip_bytes("10.0.0.2")
    packet = Ipv4Repr(src=src, dst=dst, protocol=PROTO_TCP, payload=seg.emit(src, dst), ttl=64).emit()
    s.inject(packet, to="client")
    resets = []
    for frame in s.recorder.of(wppp.PROTO_IP, "in"):
        ip = Ipv4Repr.parse(wppp.parse_frame(frame.frame)[1])
        answer = TcpRepr.parse(ip.payload, ip.src, ip.dst)
        resets.append((answer.flags, answer.seq, answer.src_port))
    assert resets == [(RST, 999, 50000)]
    assert s.client.stack.counters["tcp_no_flow"] == 1


def test_injected_garbage_is_counted_not_raised():
    s = sim()
    assert s.link_up()
    s.inject([b"\x45" + bytes(30), bytes([0x00, 0x21]) + b"\x45\x00", b"\xc0\x21\x09"], to="client")
    s.inject([b"\x45" + bytes(30)], to="server")
    assert s.client.is_up and s.server.is_up
    assert sum(s.client.stack.counters.values()) >= 1


def test_many_flows_at_once():
    s = sim(server_stack_config=StackConfig(services=ECHO.services, max_per_service=64))
    assert s.link_up()
    flows = [s.connect("10.0.0.1", 7) for _ in range(50)]
    assert s.run(lambda: all(f.connected for f in flows), 20000)
    for i, f in enumerate(flows):
        f.send(b"flow %d" % i)
        f.shutdown()
    assert s.run(lambda: all(f.done for f in flows), 60000)
    assert [bytes(f.received) for f in flows] == [b"flow %d" % i for i in range(50)]
    assert not [e for e in s.client_events if isinstance(e, FlowRefused)]


def test_the_recorder_sees_the_line_of_a_server_given_by_the_test():
    import random
    from pyslirp.core import Core
    server = Core(LinkConfig(require_auth="pap", secrets=(("u", "p"),)), ECHO, random.Random(9))
    s = SimulatedClient(server=server, link_config=client_link_config(user="u", password="p"))
    assert s.link_up()
    requests = s.recorder.of(wppp.PROTO_PAP, "in")
    acks = s.recorder.of(wppp.PROTO_PAP, "out")
    assert len(requests) == 1 and len(acks) == 1
    assert wppp.parse_cp(wppp.parse_frame(requests[0].frame)[1])[0] == 1       # Authenticate-Request
    assert wppp.parse_cp(wppp.parse_frame(acks[0].frame)[1])[0] == 2           # Authenticate-Ack
    assert [f.at for f in s.recorder.frames] == sorted(f.at for f in s.recorder.frames)


def test_flows_in_time_wait_do_not_count_against_max_flows():
    s = sim(stack_config=ClientStackConfig(max_flows=2))
    assert s.link_up()
    for i in range(4):
        flow = s.connect("10.0.0.1", 7)
        assert s.run(lambda: flow.connected, 5000), flow.refused
        flow.send(b"x")
        flow.shutdown()
        assert s.run(lambda: flow.done, 10000)
        assert flow.closed == "closed"
    assert len(s.client.stack) == 4                     # all four linger in TIME_WAIT ...
    s.advance(31000)
    assert len(s.client.stack) == 0                     # ... for 2 MSL
    busy = [s.connect("10.0.0.1", 9) for _ in range(3)]
    assert busy[2].refused == "too many" and not busy[0].done


def test_names_are_resolved_at_the_servers_dns_over_the_link():
    s = sim(server_link_config=LinkConfig(dns=("10.0.0.1",)),
            server_stack_config=StackConfig(services=ECHO.services, dns_forwarder=True),
            names={"echo.example": "10.0.0.1"})
    assert s.link_up()
    assert s.client.dns_servers == ("10.0.0.1",)
    found = s.resolve("echo.example")
    missing = s.resolve("nowhere.example")
    bad = s.resolve("a..b")
    assert s.run(lambda: len(s.resolved) == 3, 10000)
    assert s.resolved[found].address == "10.0.0.1"
    assert s.resolved[missing].address is None and s.resolved[missing].error == "no such name"
    assert s.resolved[bad].address is None and s.resolved[bad].error.startswith("bad name")


def test_resolution_without_a_dns_server_fails_at_once_and_times_out_without_answers():
    s = sim()
    assert s.link_up()
    q = s.resolve("echo.example")
    assert s.resolved[q].error == "no DNS server from the link"
    quiet = sim(server_link_config=LinkConfig(dns=("10.0.0.9",)))    # nobody answers there
    assert quiet.link_up()
    start = quiet.now
    q = quiet.resolve("echo.example")
    assert quiet.run(lambda: q in quiet.resolved, 60000)
    assert quiet.resolved[q].error == "no answer from the DNS server"
    assert quiet.now - start == 6000                  # three tries, 2 s apart


@pytest.mark.parametrize("vj", [True, False])
def test_no_tcp_timestamps_either_way_on_a_vj_link(vj):
    # RFC 1144 3.2.3: a timestamp changes every segment and would send every header uncompressed.
    s = sim(link_config=client_link_config(vj=vj, compression="none"),
            server_link_config=LinkConfig(vj=vj, compression="none"))
    assert s.link_up()
    assert s.client.stack.header_compression is vj and s.server.stack.header_compression is vj
    flow = s.connect("10.0.0.1", 7)
    assert s.run(lambda: flow.connected, 5000)
    syns = []
    for direction in ("in", "out"):
        for frame in s.recorder.of(wppp.PROTO_IP, direction):
            ip = Ipv4Repr.parse(wppp.parse_frame(frame.frame)[1])
            if ip.protocol == PROTO_TCP:
                seg = TcpRepr.parse(ip.payload, ip.src, ip.dst)
                if seg.flags & 0x02:
                    syns.append((direction, seg.timestamp is not None))
    assert syns == [("in", not vj), ("out", not vj)]


def test_output_asks_only_the_flows_something_happened_to():
    """With many flows open, one flow's exchange must not make the stack ask every idle flow for segments."""
    s = sim(server_stack_config=StackConfig(services=ECHO.services, max_connections=64, max_per_service=64,
                                            new_connections_per_second=1000, burst=1000))
    assert s.link_up()
    flows = [s.connect("10.0.0.1", 7) for _ in range(40)]
    assert s.run(lambda: all(f.connected for f in flows), 20000)
    for f in flows:
        f.send(b"hello %d" % f.flow_id)
    assert s.run(lambda: all(bytes(f.received) == b"hello %d" % f.flow_id for f in flows), 20000)
    s.advance(1000)                                     # delayed ACKs and the like are over
    asked = {}
    for rec in s.client.stack._flows.values():
        def counted(limit, now, _take=rec.conn.take_segments, _id=rec.flow_id):
            asked[_id] = asked.get(_id, 0) + 1
            return _take(limit, now)
        rec.conn.take_segments = counted
    busy = flows[0]
    busy.send(b"x" * 5000)
    assert s.run(lambda: len(busy.received) == len(b"hello 1") + 5000, 20000)
    assert bytes(busy.received)[-5000:] == b"x" * 5000
    assert asked.get(busy.flow_id, 0) >= 1
    assert set(asked) == {busy.flow_id}, asked          # the 39 idle flows were left alone
    # An idle flow that gets something to do is asked again.
    flows[1].send(b"again")
    assert s.run(lambda: bytes(flows[1].received).endswith(b"again"), 20000)
    assert asked.get(flows[1].flow_id, 0) >= 1
