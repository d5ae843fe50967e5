"""The IP stack: validation, ICMP, UDP, fragments, the TCP demux and the service policy (fake clock)."""

import logging
import random
from dataclasses import replace

import pytest

from pyslirp.net import icmp as icmp_policy
from pyslirp.net.events import (FlowLog, ServiceClose, ServiceConnect, ServiceReadCredit, ServiceSend,
                                ServiceShutdown, UdpClose, UdpOpen, UdpSend)
from pyslirp.net.frag import Reassembler, fragment
from pyslirp.net.flows import FlowKey, Route, Service
from pyslirp.net.stack import IPStack, StackConfig
from pyslirp.net.tcp.conn import TcpConfig
from pyslirp.wire import icmp, tcp
from pyslirp.wire.checksum import internet_checksum
from pyslirp.wire.icmp import IcmpRepr
from pyslirp.wire.ipv4 import PROTO_ICMP, PROTO_TCP, PROTO_UDP, Ipv4Repr, ip_bytes
from pyslirp.wire.tcp import TcpRepr
from pyslirp.wire.udp import UdpRepr

LOCAL = ip_bytes("10.0.0.1")
REMOTE = ip_bytes("10.0.0.2")
OTHER = ip_bytes("192.0.2.7")
SSH = Service(22, "127.0.0.1", 22, "SSH")
WEB = Service(80, "127.0.0.1", 8080, "")


def make_stack(**kw):
    return IPStack(StackConfig(**kw), random.Random(7))


def ip_packet(protocol, payload, src=REMOTE, dst=LOCAL, **kw):
    return Ipv4Repr(src, dst, protocol, payload, **kw).emit()


def udp_packet(sport, dport, payload, src=REMOTE, dst=LOCAL, **kw):
    return ip_packet(PROTO_UDP, UdpRepr(sport, dport, payload).emit(src, dst), src=src, dst=dst, **kw)


def ping_packet(ident=0x4242, seq=1, data=b"abcdefgh", **kw):
    return ip_packet(PROTO_ICMP, IcmpRepr.echo(ident, seq, data).emit(), **kw)


def tcp_packet(seg, **kw):
    return ip_packet(PROTO_TCP, seg.emit(REMOTE, LOCAL), **kw)


def output(stack, budget=-1):
    """Parse everything the stack sends: [(urgent, Ipv4Repr)] after checking the outer invariants."""
    out = []
    for urgent, packet in stack.take_packets(budget):
        ip = Ipv4Repr.parse(packet)
        assert ip.src == LOCAL and ip.dst == REMOTE and ip.ttl == 64
        assert len(packet) <= stack.mtu
        out.append((urgent, ip))
    return out


def tcp_out(stack, budget=-1):
    segs = []
    for _, ip in output(stack, budget):
        assert ip.protocol == PROTO_TCP and ip.dont_fragment
        segs.append(TcpRepr.parse(ip.payload, ip.src, ip.dst))
    return segs


def icmp_out(stack):
    msgs = []
    for _, ip in output(stack):
        assert ip.protocol == PROTO_ICMP
        msgs.append(IcmpRepr.parse(ip.payload))
    return msgs


def of_type(events, cls):
    return [e for e in events if isinstance(e, cls)]


# -- IPv4 input validation -----------------------------------------------------------------------------------------

def test_malformed_packets_are_counted_by_reason_and_dropped():
    stack = make_stack()
    good = ping_packet()
    stack.receive_packet(good[:10], 0)
    stack.receive_packet(b"\x65" + good[1:], 0)
    bad_sum = bytearray(good)
    bad_sum[10] ^= 0xFF
    stack.receive_packet(bytes(bad_sum), 0)
    stack.receive_packet(good[:-3], 0)
    assert stack.counters["ip_too_short"] == 1
    assert stack.counters["ip_bad_version"] == 1
    assert stack.counters["ip_bad_checksum"] == 1
    assert stack.counters["ip_truncated"] == 1
    assert stack.packets_in == 4
    assert output(stack) == []


def test_padding_is_trimmed_and_options_skipped():
    stack = make_stack()
    stack.receive_packet(ping_packet(seq=5) + b"\x00" * 7, 0)
    stack.receive_packet(ip_packet(PROTO_ICMP, IcmpRepr.echo(1, 6, b"opt").emit(), options=b"\x94\x04\x00\x00"), 0)
    replies = icmp_out(stack)
    assert [(m.echo_seq, m.payload) for m in replies] == [(5, b"abcdefgh"), (6, b"opt")]


def test_packets_not_from_the_client_are_dropped():
    stack = make_stack()
    stack.receive_packet(ping_packet(src=OTHER), 0)
    stack.receive_packet(udp_packet(1, 9, b"x", src=OTHER), 0)
    assert stack.counters["ip_bad_src"] == 2
    assert output(stack) == []


def test_ttl_is_ignored_for_local_delivery():
    stack = make_stack()
    stack.receive_packet(ping_packet(ttl=0), 0)
    assert len(icmp_out(stack)) == 1


# -- ICMP -------------------------------------------------------------------------------------------------------

def test_ping_reply_values():
    stack = make_stack()
    data = bytes(range(56))
    stack.receive_packet(ping_packet(ident=0xBEEF, seq=17, data=data), 0)
    stack.receive_packet(ping_packet(ident=0xBEEF, seq=18, data=data), 0)
    out = output(stack)
    assert len(out) == 2 and all(urgent for urgent, _ in out)
    (_, first), (_, second) = out
    assert first.protocol == PROTO_ICMP and first.dont_fragment and not first.is_fragment
    assert second.ident == (first.ident + 1) & 0xFFFF          # the identification counter moves on
    msg = IcmpRepr.parse(first.payload)                         # checksum verified
    assert (msg.type, msg.code, msg.echo_ident, msg.echo_seq, msg.payload) == (0, 0, 0xBEEF, 17, data)
    assert stack.echo_requests == 2 and stack.echo_replies == 2


def test_icmp_with_bad_checksum_and_other_types_are_dropped():
    stack = make_stack()
    payload = bytearray(IcmpRepr.echo(1, 1, b"data").emit())
    payload[-1] ^= 1
    stack.receive_packet(ip_packet(PROTO_ICMP, bytes(payload)), 0)
    stack.receive_packet(ip_packet(PROTO_ICMP, IcmpRepr.echo(1, 1, b"x", reply=True).emit()), 0)
    unreach = IcmpRepr.dest_unreachable(icmp.CODE_PORT_UNREACHABLE, udp_packet(1, 2, b"", src=LOCAL, dst=REMOTE))
    stack.receive_packet(ip_packet(PROTO_ICMP, unreach.emit()), 0)
    assert stack.counters["icmp_bad_checksum"] == 1
    assert stack.counters["icmp_type_0"] == 1
    assert stack.counters["icmp_type_3"] == 1
    assert output(stack) == [] and stack.echo_requests == 0


def test_other_destinations_are_administratively_prohibited_while_outbound_is_off():
    stack = make_stack()
    packet = udp_packet(5353, 53, b"query", dst=OTHER)
    stack.receive_packet(packet, 0)
    (msg,) = icmp_out(stack)
    assert (msg.type, msg.code) == (icmp.TYPE_DEST_UNREACHABLE, icmp.CODE_ADMIN_PROHIBITED)
    assert msg.payload == packet                     # header + data, all of it since it is short
    assert stack.unreachable_sent == 1 and stack.flows_refused == {"policy": 1}
    (log,) = stack.take_events()                     # only the refusal, for the connection and audit logs
    assert (log.kind, log.cause, log.reason) == ("refused", "policy", "outbound is disabled")
    assert log.text == "refused udp 10.0.0.2:5353 -> 192.0.2.7:53: outbound is disabled"


def test_no_icmp_errors_about_errors_broadcasts_or_later_fragments():
    stack = make_stack()
    about = udp_packet(1, 2, b"", src=LOCAL, dst=REMOTE)
    err = IcmpRepr.dest_unreachable(icmp.CODE_PORT_UNREACHABLE, about).emit()
    stack.receive_packet(ip_packet(PROTO_ICMP, err, dst=OTHER), 0)                       # an ICMP error
    stack.receive_packet(ip_packet(PROTO_ICMP, IcmpRepr(99, 0).emit(), dst=OTHER), 0)     # unknown type
    stack.receive_packet(udp_packet(1, 2, b"x", dst=ip_bytes("255.255.255.255")), 0)    # broadcast
    stack.receive_packet(udp_packet(1, 2, b"x", dst=ip_bytes("224.0.0.251")), 0)        # multicast
    stack.receive_packet(ip_packet(PROTO_UDP, b"\x00" * 16, dst=OTHER, frag_offset=8), 0)  # non-initial fragment
    assert output(stack) == []
    assert stack.unreachable_sent == 0
    # ...but a ping to another host is a query, and does get its error.
    stack.receive_packet(ping_packet(dst=OTHER), 0)
    (msg,) = icmp_out(stack)
    assert msg.code == icmp.CODE_ADMIN_PROHIBITED


def test_protocol_unreachable():
    stack = make_stack()
    stack.receive_packet(ip_packet(47, b"\x00" * 8), 0)     # GRE
    (msg,) = icmp_out(stack)
    assert (msg.type, msg.code) == (icmp.TYPE_DEST_UNREACHABLE, icmp.CODE_PROTOCOL_UNREACHABLE)
    assert stack.counters["ip_unknown_protocol"] == 1


def test_icmp_errors_are_rate_limited():
    stack = make_stack()
    burst, rate = icmp_policy.ERROR_BURST, icmp_policy.ERROR_RATE
    for i in range(3 * burst):
        stack.receive_packet(udp_packet(1000 + i, 9999, b"x"), 1000)
    assert len(icmp_out(stack)) == burst
    assert stack.icmp_rate_limited == 2 * burst
    # One second later the bucket has refilled by `rate` tokens; echo replies are not limited.
    for i in range(3 * burst):
        stack.receive_packet(udp_packet(2000 + i, 9999, b"x"), 2000)
    stack.receive_packet(ping_packet(), 2000)
    msgs = icmp_out(stack)
    assert len([m for m in msgs if m.type == icmp.TYPE_DEST_UNREACHABLE]) == rate
    assert len([m for m in msgs if m.type == icmp.TYPE_ECHO_REPLY]) == 1


def test_token_bucket():
    bucket = icmp_policy.TokenBucket(rate=2, burst=3, now=0)
    assert [bucket.allow(0) for _ in range(4)] == [True, True, True, False]
    assert bucket.allow(499) is False           # 0.998 of a token
    assert bucket.allow(500) is True            # one token after 500 ms at 2/s
    assert [bucket.allow(100000) for _ in range(4)] == [True, True, True, False]   # capped at the burst
    assert (bucket.allowed, bucket.denied) == (7, 3)


# -- UDP ----------------------------------------------------------------------------------------------------------

def test_udp_port_unreachable_quotes_the_datagram():
    stack = make_stack()
    packet = udp_packet(40000, 53, b"\xab\xcd" + b"q" * 30)
    stack.receive_packet(packet, 0)
    (msg,) = icmp_out(stack)
    assert (msg.type, msg.code) == (icmp.TYPE_DEST_UNREACHABLE, icmp.CODE_PORT_UNREACHABLE)
    quoted = Ipv4Repr.parse(msg.payload)
    assert quoted.src == REMOTE and UdpRepr.parse(quoted.payload, REMOTE, LOCAL).dst_port == 53
    assert stack.counters["udp_no_port"] == 1


def test_udp_bad_checksum_dropped_without_error():
    stack = make_stack()
    payload = bytearray(UdpRepr(1, 53, b"abc").emit(REMOTE, LOCAL))
    payload[-1] ^= 0x20
    stack.receive_packet(ip_packet(PROTO_UDP, bytes(payload)), 0)
    assert stack.counters["udp_bad_checksum"] == 1 and output(stack) == []


def test_udp_service_flow_relays_both_ways_and_closes_when_idle():
    stack = make_stack(udp_services=(Service(7, "127.0.0.1", 7007, "echo"),), udp_timeout=60)
    stack.receive_packet(udp_packet(3333, 7, b"hello"), 42)
    opened, flow_log, sent = stack.take_events()
    assert isinstance(opened, UdpOpen) and isinstance(sent, UdpSend)
    assert (flow_log.kind, flow_log.flow, flow_log.route) == ("opened", opened.flow, opened.route)
    assert (opened.route.kind, opened.route.host, opened.route.port) == ("udp_service", "127.0.0.1", 7007)
    assert (opened.flow.client_port, opened.flow.server_port) == (3333, 7) and sent.data == b"hello"
    assert output(stack) == []
    # A second datagram of the same flow reuses it; another client port is another flow.
    stack.receive_packet(udp_packet(3333, 7, b"again"), 43)
    assert stack.take_events() == [UdpSend(opened.flow_id, b"again")]
    stack.receive_packet(udp_packet(3334, 7, b"other"), 43)
    other = stack.take_events()[0]
    assert isinstance(other, UdpOpen) and other.flow_id != opened.flow_id
    # The runtime's answer leaves from local_ip:7 to the client's port.
    stack.udp_data(opened.flow_id, b"HELLO", 50)
    ((urgent, ip),) = output(stack)
    assert urgent and ip.protocol == PROTO_UDP and ip.dont_fragment
    reply = UdpRepr.parse(ip.payload, LOCAL, REMOTE)
    assert (reply.src_port, reply.dst_port, reply.payload) == (7, 3333, b"HELLO")
    # The target's port unreachable is relayed, quoting the client's last datagram of that flow.
    stack.udp_error(opened.flow_id, "port_unreachable", 51)
    (msg,) = icmp_out(stack)
    assert (msg.type, msg.code) == (icmp.TYPE_DEST_UNREACHABLE, icmp.CODE_PORT_UNREACHABLE)
    assert UdpRepr.parse(Ipv4Repr.parse(msg.payload).payload, REMOTE, LOCAL, verify=False).payload == b"again"
    # Idle for udp_timeout: both flows close, and nothing more is relayed for them.
    assert stack.udp_flows_active == 2
    stack.handle_timer(43 + 59999)
    assert stack.udp_flows_active == 2
    stack.handle_timer(43 + 60000)                  # the second flow's last datagram was at 43
    assert stack.udp_flows_active == 1
    stack.handle_timer(51 + 60000)                  # the first flow's last traffic: the answer at 50
    assert stack.udp_flows_active == 0
    events = stack.take_events()
    assert sorted(e.flow_id for e in events if isinstance(e, UdpClose)) == sorted([opened.flow_id, other.flow_id])
    closed = dict((e.flow_id, e) for e in of_type(events, FlowLog))
    assert closed[opened.flow_id].kind == "closed" and closed[opened.flow_id].reason == "idle"
    assert (closed[opened.flow_id].bytes_in, closed[opened.flow_id].bytes_out) == (10, 5)
    assert closed[opened.flow_id].duration_ms == 51 + 60000 - 42
    assert closed[opened.flow_id].text == "closed udp 10.0.0.2:3333 -> 10.0.0.1:7: idle in=10 out=5"
    stack.udp_data(opened.flow_id, b"late", 200000)
    assert output(stack) == [] and stack.counters["flow_stale_udp_data"] == 1


def test_unmapped_udp_port_on_local_ip_still_answers_port_unreachable():
    stack = make_stack(udp_services=(Service(7, "127.0.0.1", 7007, "echo"),))
    stack.receive_packet(udp_packet(3333, 8, b"x"), 0)
    assert icmp_out(stack)[0].code == icmp.CODE_PORT_UNREACHABLE
    assert [e.kind for e in stack.take_events()] == ["refused"] and stack.counters["udp_no_port"] == 1


# -- fragments -------------------------------------------------------------------------------------------------------

def _fragments_of(packet_repr, mtu):
    return [p.emit() for p in fragment(packet_repr, mtu)]


def test_fragmented_ping_is_reassembled_and_the_reply_fragmented():
    stack = make_stack(mtu=576)
    rng = random.Random(3)
    data = bytes(rng.getrandbits(8) for _ in range(1400))
    request = Ipv4Repr(REMOTE, LOCAL, PROTO_ICMP, IcmpRepr.echo(9, 9, data).emit(), ident=777)
    pieces = _fragments_of(request, 576)
    assert len(pieces) == 3
    random.Random(1).shuffle(pieces)
    for piece in pieces[:-1]:
        stack.receive_packet(piece, 0)
        assert output(stack) == []
    stack.receive_packet(pieces[-1], 0)
    out = [ip for _, ip in output(stack)]
    assert len(out) == 3 and all(ip.is_fragment and not ip.dont_fragment for ip in out)
    assert len(set(ip.ident for ip in out)) == 1
    whole = None
    r = Reassembler()
    for ip in out:
        whole = r.add(ip, 0) or whole
    msg = IcmpRepr.parse(whole.payload)
    assert (msg.type, msg.echo_ident, msg.payload) == (icmp.TYPE_ECHO_REPLY, 9, data)
    assert stack.ip.frag.reassembled == 1 and len(stack.ip.frag) == 0


def test_fragment_timeout_sends_time_exceeded():
    stack = make_stack()
    request = Ipv4Repr(REMOTE, LOCAL, PROTO_UDP, UdpRepr(1, 9, b"z" * 3000).emit(REMOTE, LOCAL), ident=5)
    first, second, _third = _fragments_of(request, 1500)
    stack.receive_packet(first, 1000)
    stack.receive_packet(second, 2000)
    assert stack.get_timer() == 1000 + 30000
    stack.handle_timer(30999)
    assert output(stack) == []
    stack.handle_timer(31000)
    (msg,) = icmp_out(stack)
    assert (msg.type, msg.code) == (icmp.TYPE_TIME_EXCEEDED, icmp.CODE_REASSEMBLY_EXCEEDED)
    assert len(msg.payload) >= 28 and first.startswith(msg.payload)     # fragment zero's header and data
    assert stack.ip.frag.counters["frag_timeout"] == 1 and stack.get_timer() is None
    # Without fragment zero, the timeout is silent.
    stack.receive_packet(second, 40000)
    stack.handle_timer(70000)
    assert output(stack) == []


def test_reassembler_rejects_overlaps_and_bad_lengths():
    r = Reassembler()
    base = Ipv4Repr(REMOTE, LOCAL, PROTO_UDP, b"", ident=1)
    assert r.add(replace(base, payload=b"a" * 16, more_fragments=True), 0) is None
    assert r.add(replace(base, payload=b"a" * 16, more_fragments=True), 0) is None     # exact duplicate
    assert r.counters["frag_duplicate"] == 1
    assert r.add(replace(base, payload=b"b" * 16, more_fragments=True, frag_offset=8), 0) is None
    assert r.counters["frag_overlap"] == 1 and len(r) == 0 and r.buffered == 0
    assert r.add(replace(base, payload=b"c" * 10, more_fragments=True), 0) is None     # not a multiple of 8
    assert r.counters["frag_bad_length"] == 1
    assert r.add(replace(base, payload=b"d" * 8, frag_offset=16), 0) is None          # last: total 24
    assert r.add(replace(base, payload=b"e" * 16, frag_offset=16, more_fragments=True), 0) is None
    assert r.counters["frag_inconsistent"] == 1 and len(r) == 0


def test_reassembler_memory_is_bounded():
    r = Reassembler(max_datagrams=3, max_bytes=4000)
    for ident in range(10):
        r.add(Ipv4Repr(REMOTE, LOCAL, PROTO_UDP, b"x" * 1480, ident=ident, more_fragments=True), ident)
        assert len(r) <= 3 and r.buffered <= 4000
    assert r.counters["frag_evicted"] >= 7
    # The newest ones survive and can still complete.
    whole = r.add(Ipv4Repr(REMOTE, LOCAL, PROTO_UDP, b"y" * 8, ident=9, frag_offset=1480), 10)
    assert whole is not None and whole.payload == b"x" * 1480 + b"y" * 8 and not whole.is_fragment
    many = Reassembler(max_fragments=4)
    for i in range(5):
        many.add(Ipv4Repr(REMOTE, LOCAL, PROTO_UDP, b"z" * 8, ident=1, frag_offset=16 * i, more_fragments=True), 0)
    assert many.counters["frag_too_many"] == 1 and len(many) == 0


def test_fragment_helper():
    ip = Ipv4Repr(REMOTE, LOCAL, PROTO_UDP, bytes(range(256)) * 10, ident=3)
    pieces = fragment(ip, 1000)
    assert [p.frag_offset for p in pieces] == [0, 976, 1952]
    assert all(p.total_len <= 1000 for p in pieces) and [p.more_fragments for p in pieces] == [True, True, False]
    assert b"".join(p.payload for p in pieces) == ip.payload
    assert fragment(ip, 3000) == [ip]
    with pytest.raises(ValueError):
        fragment(replace(ip, dont_fragment=True), 1000)


# -- TCP: a scripted client -----------------------------------------------------------------------------------------

class Client(object):
    """Hand-driven client side of one connection: builds segments, checks what comes back."""

    def __init__(self, stack, port=40312, dst=22, isn=1000, window=65535):
        self.stack = stack
        self.port = port
        self.dst = dst
        self.seq = isn
        self.ack = 0
        self.window = window
        self.data = bytearray()      # in-order payload received
        self.fin_at = None

    def send(self, flags, payload=b"", now=0, seq=None, **kw):
        seg = TcpRepr(self.port, self.dst, self.seq if seq is None else seq, self.ack, flags, self.window,
                      payload=payload, **kw)
        self.stack.receive_packet(tcp_packet(seg), now)
        if seq is None:
            self.seq = (self.seq + seg.seg_len) & 0xFFFFFFFF
        return seg

    def syn(self, now=0):
        return self.send(tcp.SYN, now=now, mss=1460)

    def receive(self, budget=-1):
        segs = [s for s in tcp_out(self.stack, budget) if s.dst_port == self.port]
        for s in segs:
            if s.flags & tcp.SYN:
                self.ack = (s.seq + 1) & 0xFFFFFFFF
            elif s.seg_len and s.seq == self.ack:
                self.ack = (self.ack + s.seg_len) & 0xFFFFFFFF
                self.data += s.payload
                if s.flags & tcp.FIN:
                    self.fin_at = len(self.data)     # the FIN came after this many bytes
        return segs


def open_connection(stack, port=40312, now=0):
    client = Client(stack, port=port)
    client.syn(now)
    (connect,) = of_type(stack.take_events(), ServiceConnect)
    stack.service_connected(connect.conn_id, now)
    (synack,) = client.receive()
    client.send(tcp.ACK, now=now)
    return client, connect.conn_id


def test_syn_to_mapped_port_waits_for_the_service():
    stack = make_stack()
    client = Client(stack)
    client.syn(0)
    events = stack.take_events()
    (connect,) = events
    assert isinstance(connect, ServiceConnect) and connect.conn_id == 1
    assert connect.flow == FlowKey(PROTO_TCP, REMOTE, 40312, LOCAL, 22)
    assert connect.route == Route("service", "127.0.0.1", 22, "direct", "SSH")
    assert tcp_out(stack) == [] and stack.get_timer() is None    # nothing sent, nothing to time
    client.send(tcp.SYN, now=500, seq=1000, mss=1460)           # the client retransmits: ignored
    assert stack.take_events() == [] and tcp_out(stack) == []
    assert stack.counters["tcp_syn_while_pending"] == 1 and stack.connections_active == 1
    stack.service_connected(1, 700)
    (synack,) = client.receive()
    assert synack.flags == tcp.SYN | tcp.ACK and synack.ack == 1001 and synack.dst_port == 40312
    events = stack.take_events()
    credits = of_type(events, ServiceReadCredit)
    assert len(credits) == 1 and credits[0].conn_id == 1 and credits[0].nbytes > 0
    client.send(tcp.ACK, now=800)
    (log,) = of_type(stack.take_events(), FlowLog)
    assert log.text == "opened 10.0.0.2:40312 -> SSH 127.0.0.1:22"
    assert stack.connections_opened == 1


def test_service_failed_refuses_with_rst_ack():
    stack = make_stack()
    client = Client(stack)
    client.syn(0)
    (connect,) = of_type(stack.take_events(), ServiceConnect)
    stack.service_failed(connect.conn_id, "connection refused", 10)
    (rst,) = client.receive()
    assert rst.flags == tcp.RST | tcp.ACK and rst.ack == 1001
    events = stack.take_events()
    assert of_type(events, ServiceClose) == []       # there is no socket to close
    (log,) = of_type(events, FlowLog)
    assert log.text.startswith("refused 10.0.0.2:40312 -> SSH 127.0.0.1:22") and "connection refused" in log.text
    assert stack.connections_active == 0 and stack.connections_refused == 1
    stack.service_connected(connect.conn_id, 20)      # too late: ignored
    assert tcp_out(stack) == [] and stack.counters["service_stale_connected"] == 1


def test_syn_to_unmapped_port_is_refused():
    stack = make_stack()
    client = Client(stack, dst=80)
    client.syn(0)
    (rst,) = client.receive()
    assert rst.flags == tcp.RST | tcp.ACK and rst.ack == 1001 and rst.src_port == 80
    (log,) = stack.take_events()
    assert log.text == "refused tcp 10.0.0.2:40312 -> 10.0.0.1:80: no service on port 80"
    assert stack.connections_refused == 1 and stack.tcp_refused == {"policy": 1}


def test_segments_for_no_connection_get_reset():
    stack = make_stack()
    client = Client(stack)
    client.send(tcp.ACK, payload=b"stray", seq=5000)
    (rst,) = client.receive()
    assert rst.flags & tcp.RST and rst.seq == client.ack       # RFC 9293: RST seq = SEG.ACK
    client.send(tcp.RST, seq=5000)
    assert tcp_out(stack) == []                                # never a reset for a reset
    assert stack.counters["tcp_no_connection"] == 2


def test_connection_limits():
    stack = make_stack(services=(SSH, WEB), max_connections=3, max_per_service=2)
    ids = []
    for port in (40001, 40002, 40003):
        Client(stack, port=port, dst=22).syn(0)
        ids.extend(e.conn_id for e in of_type(stack.take_events(), ServiceConnect))
    assert len(ids) == 2                                       # the third SSH is over the per-service limit
    assert [s.flags for s in Client(stack, port=40003).receive()] == [tcp.RST | tcp.ACK]
    web = Client(stack, port=40004, dst=80)
    web.syn(0)
    (connect,) = of_type(stack.take_events(), ServiceConnect)
    assert (connect.route.host, connect.route.port, connect.route.label) == ("127.0.0.1", 8080, "80")
    Client(stack, port=40005, dst=80).syn(0)                   # over the total
    (log,) = stack.take_events()
    assert (log.kind, log.cause, log.route.limit) == ("refused", "limit", "max_connections")
    assert stack.connections_refused == 2 and stack.tcp_refused == {"limit": 2}
    # A slot frees when a connection goes away.
    stack.service_failed(ids[0], "refused", 1)
    stack.take_events()
    Client(stack, port=40006, dst=22).syn(2)
    (again,) = of_type(stack.take_events(), ServiceConnect)
    assert again.conn_id == 4 and connect.conn_id == 3 and stack.connections_active == 3


def test_conn_ids_increase():
    stack = make_stack()
    seen = []
    for port in range(41000, 41005):
        Client(stack, port=port).syn(0)
        seen.extend(e.conn_id for e in of_type(stack.take_events(), ServiceConnect))
        stack.service_failed(seen[-1], "x", 0)
    assert seen == sorted(seen) and len(set(seen)) == 5


def _credit_invariant(stack, conn_id):
    rec = stack._by_id[conn_id]
    assert rec.granted - rec.received <= rec.conn.send_space
    assert rec.received <= rec.granted


def test_data_both_ways_with_credit_accounting():
    stack = make_stack()
    client, cid = open_connection(stack)
    stack.take_events()
    # Client -> service.
    client.send(tcp.ACK | tcp.PSH, payload=b"SSH-2.0-client\r\n", now=10)
    sends = of_type(stack.take_events(), ServiceSend)
    assert sends == [ServiceSend(cid, b"SSH-2.0-client\r\n")]
    stack.service_written(cid, len(sends[0].data), 11)
    # Service -> client: use all the credit; no more comes until the client acknowledges.
    rec = stack._by_id[cid]
    credit = rec.granted
    assert credit == rec.conn.send_space + 0 and credit > 0
    rng = random.Random(5)
    blob = bytes(rng.getrandbits(8) for _ in range(credit))
    stack.service_data(cid, blob, 20)
    _credit_invariant(stack, cid)
    assert of_type(stack.take_events(), ServiceReadCredit) == []
    now = 20
    for _ in range(200):
        segs = client.receive()
        got = bytes(client.data)
        if segs:
            client.send(tcp.ACK, now=now)
        events = stack.take_events()
        for e in of_type(events, ServiceReadCredit):
            assert e.conn_id == cid and e.nbytes > 0
        _credit_invariant(stack, cid)
        if len(got) == len(blob):
            break
        now += 50
        stack.handle_timer(now)
    assert got == blob
    assert rec.granted > credit                  # acknowledged data freed room: more credit was granted
    assert rec.granted - rec.received == rec.conn.send_space


def test_a_service_write_says_whether_it_made_a_window_update_due():
    # The runtime flushes after a service's "written" report only when the report gave the stack something.
    stack = make_stack()
    client, cid = open_connection(stack)
    stack.take_events()
    client.send(tcp.ACK | tcp.PSH, payload=b"hi", now=10)
    (send,) = of_type(stack.take_events(), ServiceSend)
    client.receive()
    # Without window scaling the field says 65535 at most, which the buffer still fills: nothing to announce.
    assert stack.service_written(cid, 2, 11) is False
    assert client.receive() == []
    # With a 16 KiB buffer: a window two bytes larger is not announced either, nor one 5840 bytes larger while
    # more than half the largest window offered is open (the update rides on our next segment), but one that
    # reopens a window closed to less than half is.
    stack = make_stack(tcp=TcpConfig(rcvbuf=16384))
    client = Client(stack, port=40313)
    client.send(tcp.SYN, now=12, mss=1460, wscale=7)
    (connect,) = of_type(stack.take_events(), ServiceConnect)
    cid = connect.conn_id
    stack.service_connected(cid, 12)
    client.receive()
    for i in range(4):
        client.send(tcp.ACK, payload=b"x" * 1460, now=20 + i)
    stack.take_events()
    client.receive()
    assert stack.service_written(cid, 2, 30) is False
    assert stack.service_written(cid, 4 * 1460 - 2, 31) is False
    assert client.receive() == []
    for i in range(6):
        client.send(tcp.ACK, payload=b"y" * 1460, now=40 + i)
    stack.take_events()
    (ack,) = [s for s in client.receive() if s.ack == client.seq]
    assert ack.window < 16384 // 2                               # (a 16 KiB buffer is announced unscaled)
    assert stack.service_written(cid, 6 * 1460, 50) is True
    (update,) = client.receive()
    assert update.window > ack.window and update.ack == ack.ack  # the window update that was due


def test_wants_room_while_data_waits_for_budget():
    stack = make_stack()
    client, cid = open_connection(stack)
    stack.take_events()
    assert not stack.wants_room
    stack.service_data(cid, b"d" * 2920, 10)
    first = client.receive(budget=100)
    assert sum(len(s.payload) for s in first) < 2920 and stack.wants_room     # held back: room would help
    rest = client.receive()
    assert sum(len(s.payload) for s in first + rest) == 2920
    assert not stack.wants_room                                 # all sent: more room brings nothing


def test_fin_both_ways():
    stack = make_stack()
    client, cid = open_connection(stack)
    stack.take_events()
    client.send(tcp.ACK | tcp.FIN, payload=b"bye", now=10)
    events = stack.take_events()
    assert events[:2] == [ServiceSend(cid, b"bye"), ServiceShutdown(cid)]
    stack.service_written(cid, 3, 11)
    stack.service_data(cid, b"ok", 12)
    stack.service_eof(cid, 13)
    segs = client.receive()
    assert segs[-1].flags & tcp.FIN and b"".join(s.payload for s in segs) == b"ok"
    client.ack = (segs[-1].seq + segs[-1].seg_len) & 0xFFFFFFFF
    client.send(tcp.ACK, now=14)
    events = stack.take_events()
    (log,) = of_type(events, FlowLog)
    assert log.text.startswith("closed 10.0.0.2:40312 -> SSH 127.0.0.1:22 in=3 out=2 duration=0.0s")
    assert log.text.endswith("reason=fin")
    assert of_type(events, ServiceClose) == []      # a clean close: the service side shut down on its own
    assert stack.connections_active == 0 and stack.connections_closed == 1


def test_service_eof_first_then_client_fin():
    stack = make_stack()
    client, cid = open_connection(stack)
    stack.take_events()
    stack.service_eof(cid, 5)
    (fin,) = client.receive()
    assert fin.flags & tcp.FIN
    client.send(tcp.ACK | tcp.FIN, now=6)
    assert ServiceShutdown(cid) in stack.take_events()
    client.receive()
    # We closed first: TIME_WAIT, then the connection is gone and logged.
    assert stack.connections_active == 1 and stack.get_timer() is not None
    stack.handle_timer(stack.get_timer())
    (log,) = of_type(stack.take_events(), FlowLog)
    assert log.text.endswith("reason=fin") and stack.connections_active == 0


def test_client_reset_closes_the_service():
    stack = make_stack()
    client, cid = open_connection(stack)
    stack.take_events()
    client.send(tcp.RST, now=10)
    events = stack.take_events()
    assert ServiceClose(cid, "reset") in events
    (log,) = of_type(events, FlowLog)
    assert log.text.endswith("reason=reset")
    assert stack.connections_active == 0


def test_service_error_resets_the_client():
    stack = make_stack()
    client, cid = open_connection(stack)
    stack.take_events()
    stack.service_error(cid, "Broken pipe", 10)
    (rst,) = client.receive()
    assert rst.flags & tcp.RST
    (log,) = of_type(stack.take_events(), FlowLog)
    assert "reason=service error: Broken pipe" in log.text and stack.connections_active == 0


def test_idle_timeout():
    stack = make_stack(tcp=TcpConfig(idle_timeout=5))
    client, cid = open_connection(stack, now=1000)
    stack.take_events()
    client.send(tcp.ACK | tcp.PSH, payload=b"x", now=2000)
    stack.service_written(cid, 1, 2000)
    stack.take_events()
    client.receive()
    deadline = 2000 + 5000
    t = stack.get_timer()
    while t is not None and t < deadline:                    # delayed ACKs and the like, not the idle timer
        stack.handle_timer(t)
        client.receive()
        t = stack.get_timer()
    assert t == deadline and stack.connections_active == 1
    stack.handle_timer(deadline)
    (rst,) = client.receive()
    assert rst.flags & tcp.RST
    events = stack.take_events()
    assert ServiceClose(cid, "idle") in events
    assert of_type(events, FlowLog)[0].text.endswith("reason=idle")


def test_no_idle_timeout_when_disabled():
    stack = make_stack(tcp=TcpConfig(idle_timeout=0))
    client, cid = open_connection(stack)
    stack.take_events()
    client.receive()
    t = stack.get_timer()
    if t is not None:
        stack.handle_timer(t)
    stack.handle_timer(10 ** 7)
    assert stack.connections_active == 1


def test_reset_drops_everything_quietly():
    stack = make_stack()
    c1, id1 = open_connection(stack, port=40001)
    c2, id2 = open_connection(stack, port=40002)
    Client(stack, port=40003).syn(0)                          # one still pending
    stack.service_data(id1, b"pending data", 5)
    stack.receive_packet(ping_packet(), 5)
    stack.take_events()
    stack.reset(10)
    events = stack.take_events()
    assert sorted(e.conn_id for e in of_type(events, ServiceClose)) == [1, 2, 3]
    assert all(e.reason == "link down" for e in of_type(events, ServiceClose))
    logs = sorted(e.text for e in of_type(events, FlowLog))
    assert len(logs) == 3 and logs[0].startswith("abandoned 10.0.0.2:40003 -> SSH")
    assert all(t.endswith("reason=link down") for t in logs)
    assert stack.take_packets(-1) == []                       # no RST onto a dead link, nothing stale
    assert stack.connections_active == 0 and stack.get_timer() is None
    stack.service_data(id1, b"late", 11)                      # the service thread has not heard yet: ignored
    assert stack.take_packets(-1) == []


def test_budget_limits_bulk_but_not_control():
    stack = make_stack()
    client, cid = open_connection(stack)
    stack.take_events()
    credit = stack._by_id[cid].granted
    stack.service_data(cid, b"B" * credit, 5)
    stack.receive_packet(ping_packet(), 5)
    out = stack.take_packets(0)
    assert len(out) == 1 and out[0][0] and Ipv4Repr.parse(out[0][1]).protocol == PROTO_ICMP
    out = stack.take_packets(3000)
    bulk = [p for urgent, p in out if not urgent]
    assert bulk and sum(len(p) for p in bulk) <= 3000
    assert all(len(p) <= stack.mtu for _, p in out)


def test_small_segments_are_urgent_and_go_ahead_of_bulk():
    stack = make_stack()
    bulk_client, bulk_id = open_connection(stack, port=40001)
    key_client, key_id = open_connection(stack, port=40002)
    stack.take_events()
    stack.service_data(bulk_id, b"B" * 20000, 5)
    stack.service_data(key_id, b"k", 5)
    out = stack.take_packets(4000)
    kinds = []
    for urgent, packet in out:
        seg = TcpRepr.parse(Ipv4Repr.parse(packet).payload, LOCAL, REMOTE)
        kinds.append((urgent, seg.dst_port, len(seg.payload)))
    assert (True, 40002, 1) in kinds
    first_bulk = min(i for i, k in enumerate(kinds) if not k[0])
    assert kinds.index((True, 40002, 1)) < first_bulk
    assert all(not urgent for urgent, port, n in kinds if n > 64)


def test_round_robin_shares_the_budget():
    stack = make_stack()
    clients = dict((p, open_connection(stack, port=p)[0]) for p in (40001, 40002, 40003))
    stack.take_events()
    for cid in (1, 2, 3):
        stack.service_data(cid, b"D" * 60000, 5)
    sent = dict((p, 0) for p in clients)
    starved = dict((p, 0) for p in clients)      # longest run of calls that gave a connection nothing
    run = dict((p, 0) for p in clients)
    now = 5
    for _ in range(30):
        got = dict((p, 0) for p in clients)
        for urgent, packet in stack.take_packets(3000):     # room for two full segments per call
            seg = TcpRepr.parse(Ipv4Repr.parse(packet).payload, LOCAL, REMOTE)
            c = clients[seg.dst_port]
            assert seg.seq == c.ack
            c.ack = (c.ack + seg.seg_len) & 0xFFFFFFFF
            got[seg.dst_port] += len(seg.payload)
        for p, c in clients.items():
            sent[p] += got[p]
            run[p] = 0 if got[p] else run[p] + 1
            starved[p] = max(starved[p], run[p])
            c.send(tcp.ACK, now=now)                 # everything acknowledged: only the budget limits
        stack.take_events()
        now += 10
    assert all(n >= 1460 * 15 for n in sent.values())
    assert max(sent.values()) - min(sent.values()) <= 2 * 1460
    assert max(starved.values()) <= 1               # nobody waits more than one call for its turn


def test_set_mtu_limits_segment_size():
    stack = make_stack()
    stack.set_mtu(576)
    assert stack.mtu == 576 and stack.mss_limit == 536
    client, cid = open_connection(stack)
    stack.take_events()
    stack.service_data(cid, b"M" * 5000, 5)
    for _, packet in stack.take_packets(-1):
        assert len(packet) <= 576


def test_synack_retransmission_is_timed_by_the_stack():
    stack = make_stack()
    client = Client(stack)
    client.syn(0)
    stack.service_connected(1, 700)
    (synack,) = client.receive()
    deadline = stack.get_timer()
    assert deadline is not None and deadline > 700
    stack.handle_timer(deadline - 1)
    assert tcp_out(stack) == []
    stack.handle_timer(deadline)
    (again,) = tcp_out(stack)
    assert again.flags == tcp.SYN | tcp.ACK and again.seq == synack.seq
    assert stack.get_timer() > deadline


def test_client_gives_up_while_pending():
    stack = make_stack()
    client = Client(stack)
    client.syn(0)
    client.send(tcp.RST, now=5)                  # the client's connect() timed out: RST at RCV.NXT
    events = stack.take_events()
    assert ServiceClose(1, "reset") in events     # the runtime abandons its connect()
    assert stack.connections_active == 0
    stack.service_connected(1, 6)
    assert tcp_out(stack) == []


def test_new_syn_reuses_a_time_wait_connection():
    stack = make_stack()
    client, cid = open_connection(stack)
    stack.take_events()
    stack.service_eof(cid, 5)
    (fin,) = client.receive()
    client.send(tcp.ACK | tcp.FIN, now=6)
    client.receive()
    stack.take_events()
    assert stack.connections_active == 1         # TIME_WAIT
    new = Client(stack, isn=client.seq + 100000)
    new.syn(10)
    events = stack.take_events()
    assert any(isinstance(e, FlowLog) and e.text.startswith("closed ") for e in events)
    (connect,) = of_type(events, ServiceConnect)
    assert connect.conn_id == cid + 1 and stack.connections_active == 1


def test_service_overrunning_its_credit_loses_nothing():
    stack = make_stack()
    client, cid = open_connection(stack)
    stack.take_events()
    rec = stack._by_id[cid]
    rng = random.Random(9)
    blob = bytes(rng.getrandbits(8) for _ in range(rec.granted + 5000))
    stack.service_data(cid, blob, 5)
    assert stack.counters["service_credit_overrun"] == 1
    stack.service_eof(cid, 5)
    now = 5
    for _ in range(300):
        if client.receive():
            client.send(tcp.ACK, now=now)
        stack.take_events()
        if client.fin_at is not None:
            break
        now += 20
        stack.handle_timer(now)
    assert bytes(client.data) == blob
    assert client.fin_at == len(blob)            # the FIN waited for the whole backlog


def test_large_udp_answer_is_fragmented():
    stack = make_stack(mtu=576, udp_services=(Service(53, "127.0.0.1", 5353),))
    stack.receive_packet(udp_packet(5000, 53, b"q"), 0)
    opened = stack.take_events()[0]
    stack.udp_data(opened.flow_id, b"A" * 1200, 1)
    out = [ip for _, ip in output(stack)]
    assert len(out) == 3 and not any(ip.dont_fragment for ip in out)
    whole = None
    r = Reassembler()
    for ip in out:
        whole = r.add(ip, 0) or whole
    assert UdpRepr.parse(whole.payload, LOCAL, REMOTE).payload == b"A" * 1200


def test_a_small_tail_does_not_overtake_its_own_bulk():
    stack = make_stack()
    client, cid = open_connection(stack)
    stack.take_events()
    stack.service_data(cid, b"T" * (2 * 1460 + 10), 5)
    stack.service_eof(cid, 5)
    out = [(urgent, TcpRepr.parse(Ipv4Repr.parse(p).payload, LOCAL, REMOTE)) for urgent, p in stack.take_packets(-1)]
    assert [len(s.payload) for _, s in out] == [1460, 1460, 10]
    assert out[-1][1].flags & tcp.FIN
    assert [urgent for urgent, _ in out] == [False, False, False]    # the 10 bytes + FIN stay behind the bulk


def test_malformed_input_logging_is_rate_limited(caplog):
    stack = make_stack()
    with caplog.at_level(logging.DEBUG, logger="pyslirp.net"):
        for i in range(200):
            stack.receive_packet(b"\x45\x00" + bytes([i]) * 30, i)     # one second of garbage, 200 packets
    assert sum(stack.counters.values()) == 200
    lines = [r for r in caplog.records if r.name == "pyslirp.net"]
    assert 1 <= len(lines) <= 12


def test_fuzzed_traffic_never_raises_and_output_stays_valid():
    rng = random.Random(2024)
    stack = make_stack(services=(SSH, WEB), max_connections=8, max_per_service=4, tcp=TcpConfig(idle_timeout=30),
                       udp_services=(Service(53, "127.0.0.1", 5353),), udp_timeout=5)
    now = 0
    templates = []
    for flags in (tcp.SYN, tcp.ACK, tcp.ACK | tcp.PSH, tcp.FIN | tcp.ACK, tcp.RST, tcp.SYN | tcp.ACK, 0xFF):
        templates.append(TcpRepr(rng.choice((40000, 40001, 40002)), rng.choice((22, 80, 443)),
                                 rng.getrandbits(32), rng.getrandbits(32), flags, rng.randrange(0x10000),
                                 mss=rng.choice((None, 536, 1460)), payload=b"p" * rng.randrange(50)))
    for _ in range(3000):
        now += rng.randrange(0, 300)
        kind = rng.random()
        if kind < 0.5:
            seg = rng.choice(templates)
            seg = replace(seg, seq=(seg.seq + rng.randrange(-3000, 3000)) & 0xFFFFFFFF,
                          ack=(seg.ack + rng.randrange(-3000, 3000)) & 0xFFFFFFFF)
            packet = bytearray(tcp_packet(seg))
        elif kind < 0.7:
            packet = bytearray(udp_packet(rng.randrange(1, 65536), rng.choice((53, 54)), b"x" * rng.randrange(40)))
        elif kind < 0.8:
            packet = bytearray(ping_packet(seq=rng.randrange(65536), data=b"d" * rng.randrange(100)))
        else:
            packet = bytearray(rng.getrandbits(8) for _ in range(rng.randrange(1, 80)))
        for _ in range(rng.choice((0, 0, 1, 2))):
            if packet:
                packet[rng.randrange(len(packet))] = rng.randrange(256)
        if rng.random() < 0.5 and len(packet) >= 20 and packet[0] == 0x45:
            packet[10:12] = b"\x00\x00"
            packet[10:12] = internet_checksum(bytes(packet[:20])).to_bytes(2, "big")
        stack.receive_packet(bytes(packet), now)
        for event in stack.take_events():
            if isinstance(event, ServiceConnect):
                if rng.random() < 0.7:
                    stack.service_connected(event.conn_id, now)
                else:
                    stack.service_failed(event.conn_id, "refused", now)
            elif isinstance(event, ServiceReadCredit) and rng.random() < 0.5:
                stack.service_data(event.conn_id, b"s" * min(event.nbytes, rng.randrange(1, 3000)), now)
            elif isinstance(event, ServiceSend):
                stack.service_written(event.conn_id, len(event.data), now)
            elif isinstance(event, UdpSend) and rng.random() < 0.7:
                stack.udp_data(event.flow_id, event.data[:100], now)
        if rng.random() < 0.05 and stack._by_id:
            cid = rng.choice(sorted(stack._by_id))
            rng.choice((lambda: stack.service_eof(cid, now), lambda: stack.service_error(cid, "boom", now)))()
        t = stack.get_timer()
        if t is not None and t <= now:
            stack.handle_timer(now)
        for urgent, packet in stack.take_packets(rng.choice((-1, 0, 1500, 6000))):
            ip = Ipv4Repr.parse(packet)
            assert len(packet) <= stack.mtu and ip.src == LOCAL and ip.dst == REMOTE
    assert stack.connections_opened > 0 and stack.connections_refused > 0 and stack.rst_sent > 0
    assert stack.echo_replies > 0 and stack.unreachable_sent > 0
    stack.reset(now)
    assert stack.connections_active == 0 and stack.get_timer() is None


# -- outbound: addresses the policy decides -----------------------------------------------------------------------

def outside_syn(dst, port, sport=40400):
    seg = TcpRepr(sport, port, 1000, 0, tcp.SYN, 65535, mss=1460)
    return ip_packet(PROTO_TCP, seg.emit(REMOTE, dst), dst=dst)


def test_loopback_destinations_reach_the_policy():
    # 127.0.0.1 named in outbound.allow is a NAT target like any other (the IP layer must not drop it), and under a
    # catch-all it is refused at once with administratively prohibited, not silently dropped.
    from pyslirp.net.flows import AddressRule, OutboundPolicy
    loopback = ip_bytes("127.0.0.1")
    allow = tuple(AddressRule.parse(t) for t in ("0.0.0.0/0", "127.0.0.1/32:5000"))
    stack = make_stack(outbound=OutboundPolicy(enabled=True, allow=allow))
    stack.receive_packet(outside_syn(loopback, 5000), 0)
    (connect,) = of_type(stack.take_events(), ServiceConnect)
    assert connect.flow == FlowKey(PROTO_TCP, REMOTE, 40400, loopback, 5000)
    assert (connect.route.kind, connect.route.host, connect.route.port) == ("nat", "127.0.0.1", 5000)
    packet = outside_syn(loopback, 5001, sport=40401)
    stack.receive_packet(packet, 0)
    (msg,) = icmp_out(stack)
    assert (msg.type, msg.code) == (icmp.TYPE_DEST_UNREACHABLE, icmp.CODE_ADMIN_PROHIBITED)
    assert msg.payload == packet
    assert "ip_broadcast" not in stack.counters and stack.flows_refused == {"policy": 1}
    # 0.0.0.0 is no NAT target either way, but it is the policy that says so.
    stack.receive_packet(outside_syn(ip_bytes("0.0.0.0"), 80, sport=40402), 0)
    (msg,) = icmp_out(stack)
    assert msg.code == icmp.CODE_ADMIN_PROHIBITED and stack.flows_refused == {"policy": 2}


def test_a_deny_entry_with_ports_does_not_refuse_ping():
    from pyslirp.net.events import PingOpen
    from pyslirp.net.flows import AddressRule, OutboundPolicy
    outside = ip_bytes("198.18.0.2")

    def stack_with(deny):
        return make_stack(outbound=OutboundPolicy(enabled=True, allow=(AddressRule.parse("198.18.0.2/32:7000-7099"),),
                                                  deny=(AddressRule.parse(deny),)))

    stack = stack_with("198.18.0.2/32:7011")
    stack.receive_packet(ping_packet(dst=outside), 0)
    (opened,) = of_type(stack.take_events(), PingOpen)
    assert (opened.route.kind, opened.route.host) == ("nat", "198.18.0.2") and stack.flows_refused == {}
    stack.receive_packet(outside_syn(outside, 7011), 0)          # ...while the port it names stays refused
    (msg,) = icmp_out(stack)
    assert msg.code == icmp.CODE_ADMIN_PROHIBITED and stack.flows_refused == {"policy": 1}
    stack = stack_with("198.18.0.2")                             # a deny for every port refuses ping too
    stack.receive_packet(ping_packet(dst=outside), 0)
    (msg,) = icmp_out(stack)
    assert msg.code == icmp.CODE_ADMIN_PROHIBITED
    assert [(e.kind, e.reason) for e in stack.take_events()] == [("refused", "outbound.deny 198.18.0.2")]


def test_a_flush_asks_only_the_connections_something_happened_to():
    # With many connections open, a segment for one of them must not make every other one build segments.
    stack = make_stack(max_connections=64, max_per_service=64)
    clients = [open_connection(stack, port=41000 + i)[0] for i in range(40)]
    stack.take_events()
    tcp_out(stack)
    asked = []
    for rec in stack._conns.values():
        take = rec.conn.take_segments

        def counting(budget, now, take=take, port=rec.key.client_port):
            asked.append(port)
            return take(budget, now)
        rec.conn.take_segments = counting
    tcp_out(stack)
    assert asked == []                              # nothing happened to any of them: none is asked
    clients[7].send(tcp.ACK | tcp.PSH, payload=b"ls\n", now=10)
    (send,) = of_type(stack.take_events(), ServiceSend)
    stack.service_written(send.conn_id, 3, 11)
    stack.service_data(send.conn_id, b"file\n", 12)
    segs = clients[7].receive()
    assert asked and set(asked) == {41007}
    assert [s.payload for s in segs if s.payload] == [b"file\n"]
    # A timer reaches the connection it is for, and only that one is asked again.
    del asked[:]
    clients[7].send(tcp.ACK, now=20)
    stack.handle_timer(20)
    tcp_out(stack)
    assert set(asked) <= {41007}


def test_with_a_small_budget_idle_connections_are_not_asked_again():
    # A busy line leaves less than a segment of budget; connections with nothing waiting for it must still
    # drop out of the flush until something happens to them, or a thousand idle ones are asked every time.
    stack = make_stack(max_connections=64, max_per_service=64)
    clients = [open_connection(stack, port=42000 + i)[0] for i in range(20)]
    stack.take_events()
    tcp_out(stack, budget=100)
    asked = []
    for rec in stack._conns.values():
        take = rec.conn.take_segments

        def counting(budget, now, take=take, port=rec.key.client_port):
            asked.append(port)
            return take(budget, now)
        rec.conn.take_segments = counting
    tcp_out(stack, budget=100)
    tcp_out(stack, budget=100)
    assert asked == []
    clients[3].send(tcp.ACK | tcp.PSH, payload=b"ls\n", now=10)
    (send,) = of_type(stack.take_events(), ServiceSend)
    stack.service_written(send.conn_id, 3, 11)
    stack.service_data(send.conn_id, b"file\n", 12)
    segs = clients[3].receive(budget=100)
    assert [s.payload for s in segs if s.payload] == [b"file\n"]
    assert set(asked) == {42003}
    tcp_out(stack, budget=100)                      # asked once more, it has nothing: out of the flush again
    del asked[:]
    tcp_out(stack, budget=100)
    assert asked == []
