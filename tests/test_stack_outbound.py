"""The stack's outbound side with a fake clock: NAT'd TCP from the outside address, refusal outcomes, ping flows,
UDP NAT with relayed errors, the DNS forwarder on local_ip:53, and the policy's limits released by the flows."""

import random

from pyslirp.net import refusal
from pyslirp.net.events import DnsQuery, PingClose, PingOpen, PingSend, ServiceConnect, UdpOpen, UdpSend
from pyslirp.net.flows import AddressRule, OutboundPolicy
from pyslirp.net.frag import Reassembler, fragment
from pyslirp.net.stack import IPStack, StackConfig
from pyslirp.wire import dns as wdns
from pyslirp.wire import icmp, tcp
from pyslirp.wire.icmp import IcmpRepr
from pyslirp.wire.ipv4 import PROTO_ICMP, PROTO_TCP, PROTO_UDP, Ipv4Repr, ip_bytes
from pyslirp.wire.tcp import TcpRepr
from pyslirp.wire.udp import UdpRepr

LOCAL = ip_bytes("10.0.0.1")
CLIENT = ip_bytes("10.0.0.2")
OUTSIDE = ip_bytes("198.18.0.2")


def nat_stack(allow=("198.18.0.0/30",), via="direct", **kw):
    out = OutboundPolicy(enabled=True, via=via, allow=tuple(AddressRule.parse(a) for a in allow))
    return IPStack(StackConfig(outbound=out, **kw), random.Random(5))


def send(stack, protocol, payload, dst=OUTSIDE, now=0):
    stack.receive_packet(Ipv4Repr(CLIENT, dst, protocol, payload).emit(), now)


def syn(stack, dport=80, dst=OUTSIDE, sport=40000, now=0):
    send(stack, PROTO_TCP, TcpRepr(sport, dport, 1000, 0, tcp.SYN, 65535, mss=1460).emit(CLIENT, dst), dst, now)


def out(stack):
    """[Ipv4Repr] of everything sent, after the invariant that it all goes to the client."""
    packets = [Ipv4Repr.parse(p) for _, p in stack.take_packets(-1)]
    assert all(ip.dst == CLIENT and len(ip.emit()) <= stack.mtu for ip in packets)
    return packets


def test_nat_tcp_answers_from_the_outside_address():
    stack = nat_stack()
    syn(stack, 80)
    (connect,) = [e for e in stack.take_events() if isinstance(e, ServiceConnect)]
    assert (connect.route.kind, connect.route.host, connect.route.port, connect.route.via) == (
        "nat", "198.18.0.2", 80, "direct")
    assert connect.flow.server_addr == OUTSIDE and out(stack) == []      # the SYN waits for the connect
    stack.service_connected(connect.conn_id, 10)
    (ip,) = out(stack)
    seg = TcpRepr.parse(ip.payload, ip.src, ip.dst)          # the checksum covers the outside address
    assert ip.src == OUTSIDE and seg.flags == tcp.SYN | tcp.ACK and seg.src_port == 80 and seg.ack == 1001
    # A second connection to another outside address is another flow with its own source.
    syn(stack, 22, dst=ip_bytes("198.18.0.1"), sport=40001)
    (other,) = [e for e in stack.take_events() if isinstance(e, ServiceConnect)]
    assert other.route.host == "198.18.0.1" and other.conn_id != connect.conn_id
    # A stray segment to an outside address gets its RST from that address.
    send(stack, PROTO_TCP, TcpRepr(40009, 443, 5, 77, tcp.ACK, 100).emit(CLIENT, OUTSIDE))
    (rst,) = [ip for ip in out(stack) if ip.protocol == PROTO_TCP]
    assert rst.src == OUTSIDE and TcpRepr.parse(rst.payload, rst.src, rst.dst).flags & tcp.RST


def _failed_connect(outcome):
    stack = nat_stack()
    syn(stack, 80)
    (connect,) = [e for e in stack.take_events() if isinstance(e, ServiceConnect)]
    stack.service_failed(connect.conn_id, "socks5 127.0.0.1:1080: SOCKS5 reply", 20, outcome)
    return stack, out(stack)


def test_connect_failures_are_shown_as_their_outcome():
    stack, (ip,) = _failed_connect(refusal.RESET)
    seg = TcpRepr.parse(ip.payload, ip.src, ip.dst)
    assert ip.src == OUTSIDE and seg.flags == tcp.RST | tcp.ACK and seg.ack == 1001
    for outcome, code in ((refusal.NET_UNREACHABLE, icmp.CODE_NET_UNREACHABLE),
                          (refusal.HOST_UNREACHABLE, icmp.CODE_HOST_UNREACHABLE),
                          (refusal.ADMIN_PROHIBITED, icmp.CODE_ADMIN_PROHIBITED)):
        stack, packets = _failed_connect(outcome)
        (ip,) = packets                                # the ICMP error only: no RST besides it
        msg = IcmpRepr.parse(ip.payload)
        assert ip.src == LOCAL and (msg.type, msg.code) == (icmp.TYPE_DEST_UNREACHABLE, code), outcome
        quoted = Ipv4Repr.parse(msg.payload, verify=False)
        assert quoted.dst == OUTSIDE and quoted.protocol == PROTO_TCP       # the client matches it to its SYN
        assert stack.connections_active == 0 and stack.policy.tcp_active == 0


def test_policy_refusal_of_a_syn_is_admin_prohibited_at_once():
    stack = nat_stack()
    syn(stack, 80, dst=ip_bytes("203.0.113.9"))
    (ip,) = out(stack)
    msg = IcmpRepr.parse(ip.payload)
    assert (msg.type, msg.code) == (icmp.TYPE_DEST_UNREACHABLE, icmp.CODE_ADMIN_PROHIBITED)
    (log,) = stack.take_events()
    assert (log.kind, log.cause, log.reason) == ("refused", "policy", "not in outbound.allow")
    assert stack.flows_refused == {"policy": 1} and stack.connections_refused == 1


def test_limit_slots_come_back_when_connections_end_or_reach_time_wait():
    stack = nat_stack(max_connections=1, max_per_service=1)
    syn(stack, 80, sport=1)
    (connect,) = [e for e in stack.take_events() if isinstance(e, ServiceConnect)]
    syn(stack, 80, sport=2)
    assert [e for e in stack.take_events() if isinstance(e, ServiceConnect)] == []
    assert stack.flows_refused == {"limit": 1}
    out(stack)
    stack.service_failed(connect.conn_id, "refused", 5)
    syn(stack, 80, sport=3)
    assert len([e for e in stack.take_events() if isinstance(e, ServiceConnect)]) == 1


def test_ping_flow_restores_the_clients_identifier_and_expires():
    stack = nat_stack(udp_timeout=30)
    send(stack, PROTO_ICMP, IcmpRepr.echo(0x1234, 1, b"ping-data").emit(), now=100)
    opened, flow_log, first = stack.take_events()
    assert isinstance(opened, PingOpen) and opened.route.host == "198.18.0.2"
    assert flow_log.kind == "opened" and flow_log.flow_id == opened.flow_id
    assert first == PingSend(opened.flow_id, 1, b"ping-data")
    send(stack, PROTO_ICMP, IcmpRepr.echo(0x1234, 2, b"again").emit(), now=200)
    assert stack.take_events() == [PingSend(opened.flow_id, 2, b"again")]      # the same flow
    stack.ping_reply(opened.flow_id, 2, b"again", 250)
    (ip,) = out(stack)
    reply = IcmpRepr.parse(ip.payload)
    assert ip.src == OUTSIDE and reply.type == icmp.TYPE_ECHO_REPLY
    assert (reply.echo_ident, reply.echo_seq, reply.payload) == (0x1234, 2, b"again")
    stack.handle_timer(250 + 30000)
    close, flow_log = stack.take_events()
    assert isinstance(close, PingClose) and (flow_log.kind, flow_log.reason) == ("closed", "idle")
    assert (flow_log.bytes_in, flow_log.bytes_out, flow_log.duration_ms) == (14, 5, 30150)
    assert stack.udp_flows_active == 0


def test_ping_that_cannot_be_served_is_admin_prohibited():
    stack = nat_stack()
    send(stack, PROTO_ICMP, IcmpRepr.echo(7, 1, b"x").emit())
    opened = stack.take_events()[0]
    stack.flow_failed(opened.flow_id, "ping not permitted here", refusal.ADMIN_PROHIBITED, 5)
    (ip,) = out(stack)
    assert IcmpRepr.parse(ip.payload).code == icmp.CODE_ADMIN_PROHIBITED
    refused, close, closed = stack.take_events()
    assert (refused.kind, refused.cause, refused.reason) == ("refused", "service_down", "ping not permitted here")
    assert isinstance(close, PingClose) and closed.kind == "closed" and stack.udp_flows_active == 0
    assert stack.flows_refused == {"service_down": 1} and stack.tcp_refused == {}


def test_nat_udp_large_datagrams_both_ways_and_a_relayed_port_unreachable():
    stack = nat_stack(mtu=1500)
    big = bytes(random.Random(1).getrandbits(8) for _ in range(3000))
    request = Ipv4Repr(CLIENT, OUTSIDE, PROTO_UDP, UdpRepr(5000, 7, big).emit(CLIENT, OUTSIDE), ident=99)
    for piece in fragment(request, 1500):
        stack.receive_packet(piece.emit(), 0)
    opened, _, sent = stack.take_events()
    assert isinstance(opened, UdpOpen) and opened.route.kind == "nat" and sent == UdpSend(opened.flow_id, big)
    stack.udp_data(opened.flow_id, big[::-1], 5)
    pieces = out(stack)
    assert len(pieces) == 3 and all(p.src == OUTSIDE for p in pieces)
    whole = None
    r = Reassembler()
    for p in pieces:
        whole = r.add(p, 5) or whole
    reply = UdpRepr.parse(whole.payload, OUTSIDE, CLIENT)
    assert (reply.src_port, reply.dst_port, reply.payload) == (7, 5000, big[::-1])
    stack.udp_error(opened.flow_id, refusal.PORT_UNREACHABLE, 6)
    (ip,) = out(stack)
    msg = IcmpRepr.parse(ip.payload)
    assert ip.src == OUTSIDE and msg.code == icmp.CODE_PORT_UNREACHABLE       # from the host that said it
    assert msg.payload[16:20] == OUTSIDE and msg.payload[9] == PROTO_UDP     # the quoted header of the request


def test_dns_forwarder_on_local_ip_udp_and_tcp():
    stack = IPStack(StackConfig(dns_forwarder=True, dns_tcp_upstream=("192.0.2.53", 53)), random.Random(2))
    query = wdns.build_query(0x4242, "example.test")
    send(stack, PROTO_UDP, UdpRepr(5353, 53, query).emit(CLIENT, LOCAL), dst=LOCAL, now=10)
    (ask,) = stack.take_events()
    assert isinstance(ask, DnsQuery) and ask.payload[2:] == query[2:]        # the upstream id is its own
    answer = bytearray(ask.payload)
    answer[2] |= 0x80                                                        # QR: a reply (no records)
    stack.dns_answer(bytes(answer), 20)
    (ip,) = out(stack)
    reply = UdpRepr.parse(ip.payload, LOCAL, CLIENT)
    assert ip.src == LOCAL and (reply.src_port, reply.dst_port) == (53, 5353)
    assert reply.payload[:2] == b"\x42\x42" and reply.payload[2] & 0x80       # the client's id restored
    # Unanswered: SERVFAIL when the forwarder's timer runs out.
    send(stack, PROTO_UDP, UdpRepr(5354, 53, wdns.build_query(7, "slow.test")).emit(CLIENT, LOCAL), dst=LOCAL,
         now=30)
    stack.take_events()
    deadline = stack.get_timer()
    assert deadline is not None
    stack.handle_timer(deadline)
    (ip,) = out(stack)
    servfail = UdpRepr.parse(ip.payload, LOCAL, CLIENT).payload
    assert servfail[:2] == b"\x00\x07" and servfail[3] & 0x0F == 2
    # DNS over TCP to local_ip:53 is relayed to the first upstream server.
    syn(stack, 53, dst=LOCAL)
    (connect,) = [e for e in stack.take_events() if isinstance(e, ServiceConnect)]
    assert (connect.route.kind, connect.route.host, connect.route.port) == ("dns", "192.0.2.53", 53)
