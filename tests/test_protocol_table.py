"""The link's protocol table and its compression stages, seen through their contract.

A recording table entry (an IPV6CP-like NCP) and a recording transform are added to a real PPPLink driven by the
scripted pppd-like client of test_link: the demultiplexer hands the entry its packets, the link calls its
lower_up/open/lower_down/protocol_rejected at the right moments, and the transform stages run in order on output,
in reverse on input, with toss() on every lost frame.
"""

import struct

from test_link import IP, LCP, Client, make_link, negotiated
from pyslirp.ppp.fsm import State
from pyslirp.ppp.link import Phase
from pyslirp.ppp.protocol import NETWORK_ONLY, ControlProtocol, Protocol, Transform
from pyslirp.wire import hdlc
from pyslirp.wire import ppp as wppp

IPV6CP = wppp.PROTO_IPV6CP


class Recorder(Protocol):
    protocol = IPV6CP
    data_protocol = wppp.PROTO_IPV6
    name = "IPV6CP"
    phases = NETWORK_ONLY
    ncp = True

    def __init__(self):
        self.calls = []
        self.timer = None

    def input(self, info, now):
        self.calls.append(("input", bytes(info)))

    def data_input(self, info, now):
        self.calls.append(("data", bytes(info)))

    def protocol_rejected(self, now):
        self.calls.append(("rejected",))

    def lower_up(self, now):
        self.calls.append(("lower_up",))

    def lower_down(self, now, reason):
        self.calls.append(("lower_down", reason))

    def open(self, now):
        self.calls.append(("open",))

    def get_timer(self):
        return self.timer

    def handle_timer(self, now):
        self.calls.append(("timer", now))
        self.timer = None


def with_recorder(**kw):
    link = make_link(**kw)
    entry = Recorder()
    link.protocols.append(entry)
    link.lower_up(0)
    client = Client(link)
    client.start()
    return link, client, entry


def test_a_new_entry_is_one_more_table_row():
    link, client, entry = with_recorder()
    assert link.is_up
    # LCP Opened -> lower_up; the Network phase -> open (pppd's link_established, start_networks).
    assert entry.calls == [("lower_up",), ("open",)]
    client.send(IPV6CP, b"\x01\x01\x00\x04")
    client.send(wppp.PROTO_IPV6, b"\x60" + bytes(39))
    assert entry.calls[2:] == [("input", b"\x01\x01\x00\x04"), ("data", b"\x60" + bytes(39))]
    client.collect()
    assert client.of(LCP, 8) == [] and link.protocol_rejects_sent == 0
    # A Protocol-Reject of its protocol, or of its data protocol, is its business.
    client.send_cp(LCP, 8, 5, struct.pack("!H", wppp.PROTO_IPV6) + b"\x60")
    assert entry.calls[-1] == ("rejected",) and link.is_up
    # Its timer is the link's.
    entry.timer = client.now + 10
    assert link.get_timer() == entry.timer
    link.handle_timer(entry.timer)
    assert entry.calls[-1] == ("timer", client.now + 10)
    client.send_cp(LCP, 5, 9, b"bye")
    assert entry.calls[-1] == ("lower_down", "peer requested termination")


def test_an_ncp_entry_gets_nothing_before_the_network_phase():
    link = make_link(require_auth="pap", secrets=(("u", "p"),))
    entry = Recorder()
    link.protocols.append(entry)
    link.lower_up(0)
    client = Client(link, user="u", password="wrong", auth_with=None)
    client.start()
    assert link.phase == Phase.AUTHENTICATE
    assert entry.calls == [("lower_up",)]
    client.send(IPV6CP, b"\x01\x01\x00\x04")
    assert entry.calls == [("lower_up",)] and link.counters["ipv6cp_before_network"] == 1


def test_unclaimed_protocols_are_rejected_and_known_unused_ones_dropped():
    link, client = negotiated()
    client.send(0x8207, b"\x01\x01\x00\x04")
    client.collect()
    assert client.of(LCP, 8)[-1][2][:2] == b"\x82\x07"
    client.send_cp(wppp.PROTO_PAP, 1, 1, b"\x01u\x01p")          # PAP while no authentication is asked
    client.collect()
    assert len(client.of(LCP, 8)) == 1 and link.counters["auth_unexpected"] == 1


def test_every_control_protocol_shares_the_automaton_setup():
    link = make_link(max_configure=7, restart_interval=2)
    for entry in (link.lcp, link.ipcp):
        assert isinstance(entry, ControlProtocol)
        assert entry.fsm.max_configure == 7 and entry.fsm.restart_ms == 2000
        assert entry.fsm.counters is entry.counters and entry.fsm.name == entry.name


class Xor(Transform):
    """A toy compression: protocol ``inner`` travels as ``outer``, its payload XOR a key byte."""

    def __init__(self, key, log, inner=IP, outer=0x0023):
        self.key = key
        self.log = log
        self.inner, self.outer = inner, outer
        self.drop_next = False

    def compress(self, protocol, info):
        self.log.append(("compress", self.key, protocol))
        if protocol != self.inner:
            return protocol, info
        return self.outer, bytes(b ^ self.key for b in info)

    def decompress(self, protocol, info):
        self.log.append(("decompress", self.key, protocol))
        if self.drop_next:
            self.drop_next = False
            return None
        if protocol != self.outer:
            return protocol, info
        return self.inner, bytes(b ^ self.key for b in info)

    def toss(self):
        self.log.append(("toss", self.key))


def test_transforms_run_in_order_on_output_and_in_reverse_on_input():
    link, client = negotiated()
    log = []
    first, second = Xor(0x0F, log), Xor(0xF0, log, inner=0x0023, outer=0x0025)
    link.transforms[:] = [first, second]
    packet = b"\x45" + bytes(range(19))
    assert link.send_ip(packet, client.now)
    (proto, info), = client.collect()
    assert proto == 0x0025 and info == bytes(b ^ 0xFF for b in packet)
    assert log == [("compress", 0x0F, IP), ("compress", 0xF0, 0x0023)]
    del log[:]
    client.send(0x0025, info)
    assert [type(e).__name__ for e in client.events][-1] == "IPReceived" and client.events[-1].packet == packet
    assert log == [("decompress", 0xF0, 0x0025), ("decompress", 0x0F, 0x0023)]
    # A stage that drops a packet tells the stages after it on input.
    del log[:]
    second.drop_next = True
    client.send(0x0025, info)
    assert log == [("decompress", 0xF0, 0x0025), ("toss", 0x0F)]


def test_every_frame_lost_on_the_line_tosses_every_stage():
    link, client = negotiated()
    log = []
    link.transforms[:] = [Xor(1, log), Xor(2, log, inner=0x0023, outer=0x0025)]
    good = client.encode(IP, b"\x45" + bytes(19))
    bad_fcs = good[:-3] + bytes([good[-3] ^ 1]) + good[-2:]
    aborted = good[:-1] + b"\x7d\x7e"
    client.send_raw(bad_fcs + aborted + good)
    # Two tosses each, in stream order, before the good frame is decoded.
    assert [e for e in log if e[0] == "toss"] == [("toss", 1), ("toss", 2)] * 2
    assert log.index(("toss", 2)) < log.index(("decompress", 2, IP))
    assert link.deframer.bad_fcs == 1 and link.deframer.aborted == 1


def test_deframer_marks_dropped_frames_in_place_only_when_asked():
    body = wppp.build_frame(IP, b"\x45" + bytes(19))
    good = hdlc.encode_frame(body, 0)
    bad = good[:-3] + bytes([good[-3] ^ 1]) + good[-2:]
    too_long = hdlc.encode_frame(wppp.build_frame(IP, bytes(3000)), 0)
    stream = good + bad + good + too_long + good
    marked = hdlc.Deframer(accm=0, mark_errors=True)
    assert marked.feed(stream) == [body, None, body, None, body]
    assert hdlc.Deframer(accm=0).feed(stream) == [body, body, body]
    # Byte by byte, the partial too-long frame is discarded early and still marked once, in place.
    bytewise = hdlc.Deframer(accm=0, mark_errors=True)
    out = []
    for i in range(len(stream)):
        out.extend(bytewise.feed(stream[i:i + 1]))
    assert out == [body, None, body, None, body]
    assert bytewise.too_long == marked.too_long == 1


def test_lcp_reaching_opened_is_lower_up_for_ipcp_and_auth():
    link, client = negotiated({"require_auth": "chap", "secrets": (("u", "p"),)},
                              user="u", password="p", auth_with="chap")
    assert link.is_up and link.ipcp.state == State.OPENED
    client.send_cp(LCP, 5, 9, b"bye")
    assert link.ipcp.state == State.INITIAL and link.auth.state == "idle"
    # The next session: IPCP is closed with LCP, so nothing of it goes out before authentication succeeds.
    client.advance(client.now + 10000)
    fresh = Client(link, now=client.now, user="u", password="p", auth_with="chap")
    fresh.start()
    assert link.is_up
    kinds = [(p, info[0]) for p, info in fresh.received if p != LCP]
    assert kinds.index((wppp.PROTO_CHAP, 3)) < kinds.index((wppp.PROTO_IPCP, 1)), kinds


def test_deframer_marks_agree_whole_and_byte_by_byte_on_random_streams():
    import random
    rng = random.Random(31)
    for _ in range(100):
        parts = []
        for _ in range(rng.randrange(1, 12)):
            body = wppp.build_frame(IP, bytes(rng.getrandbits(8) for _ in range(rng.randrange(1, 60))))
            raw = hdlc.encode_frame(body, 0)
            kind = rng.random()
            if kind < 0.2:
                raw = raw[:-3] + bytes([raw[-3] ^ 0x40]) + raw[-2:]          # bad FCS
            elif kind < 0.3:
                raw = raw[:-1] + b"\x7d\x7e"                               # aborted
            elif kind < 0.35:
                raw = hdlc.encode_frame(wppp.build_frame(IP, bytes(1700)), 0)  # too long
            parts.append(raw)
        stream = b"".join(parts)
        whole = hdlc.Deframer(accm=0, mark_errors=True).feed(stream)
        d = hdlc.Deframer(accm=0, mark_errors=True)
        bytewise = []
        for i in range(len(stream)):
            bytewise.extend(d.feed(stream[i:i + 1]))
        assert whole == bytewise
        assert sum(1 for f in whole if f is None) == d.bad_fcs + d.aborted + d.too_long + d.too_short
