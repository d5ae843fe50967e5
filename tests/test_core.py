"""The Core glue: link events to the stack, timers, output order and budget, pass-throughs.

The first half drives the Core with small recording fakes of PPPLink and IPStack (the
contracts in docs/ARCHITECTURE.md); the second half drives the real link and stack with a
scripted PPP client speaking bytes, with a fake clock.
"""

import random
from dataclasses import dataclass

from pyslirp.core import Core
from pyslirp.ppp.events import AuthResult, IPReceived, LinkDown, LinkUp


class FakeLink(object):
    def __init__(self):
        self.calls = []
        self.events = []
        self.output = []
        self.timer = None
        self.is_up = False
        self.is_dead = False
        self.accept_ip = True

    def lower_up(self, now):
        self.calls.append(("lower_up", now))

    def lower_down(self, now):
        self.calls.append(("lower_down", now))

    def receive_data(self, data, now):
        self.calls.append(("receive_data", data, now))

    def send_ip(self, packet, now):
        self.calls.append(("send_ip", packet, now))
        if not self.accept_ip:
            return False
        self.output.append((False, b"~" + packet + b"~"))
        return True

    def close(self, reason, now):
        self.calls.append(("close", reason, now))

    def handle_timer(self, now):
        self.calls.append(("handle_timer", now))
        self.timer = None

    def get_timer(self):
        return self.timer

    def peer_lost_frame(self, now=None, suspected=False):
        self.calls.append(("peer_lost_frame", now, suspected))

    def take_peer_drop_signal(self):
        return False

    def probe(self, now):
        self.calls.append(("probe", now))
        return True

    def take_output(self):
        out, self.output = self.output, []
        return out

    def take_events(self):
        out, self.events = self.events, []
        return out


class FakeStack(object):
    def __init__(self, config=None, rng=None):
        self.config = config
        self.calls = []
        self.events = []
        self.packets = []
        self.timer = None
        self.suspended = False
        self.lost_frame = False

    def receive_packet(self, packet, now):
        self.calls.append(("receive_packet", packet, now))

    def take_lost_frame_signal(self):
        lost, self.lost_frame = self.lost_frame, False
        return lost

    def handle_timer(self, now):
        self.calls.append(("handle_timer", now))
        self.timer = None

    def get_timer(self):
        return self.timer

    def stalled(self):
        return False

    def link_alive(self, now):
        self.calls.append(("link_alive", now))

    def line_answers(self, now):
        self.calls.append(("line_answers", now))

    def take_packets(self, budget):
        self.calls.append(("take_packets", budget))
        out, self.packets = self.packets, []
        return out

    def take_events(self):
        out, self.events = self.events, []
        return out

    def reset(self, now, reason="link down"):
        self.calls.append(("reset", now))
        self.suspended = False

    def suspend(self, now):
        self.calls.append(("suspend", now))
        self.suspended = True
        return True

    def resume(self, now):
        self.calls.append(("resume", now))
        self.suspended = False

    def set_mtu(self, mtu):
        self.calls.append(("set_mtu", mtu))

    def set_header_compression(self, on):
        self.header_compression = on

    def __getattr__(self, name):
        if name.startswith("service_"):
            return lambda *args: self.calls.append((name,) + args)
        raise AttributeError(name)


@dataclass(frozen=True)
class Cfg:
    mtu: int = 1500


def make(stack_cls=FakeStack):
    link, stack = FakeLink(), stack_cls()
    return Core(None, Cfg(), random.Random(1), link=link, stack=stack), link, stack


def test_ip_packets_reach_the_stack_only_while_the_link_is_up():
    core, link, stack = make()
    link.events = [IPReceived(b"early")]
    core.receive_serial(b"\x7e", 5)
    assert link.calls == [("receive_data", b"\x7e", 5)]
    assert stack.calls == []
    link.events = [LinkUp("10.0.0.1", "10.0.0.2", 1500), IPReceived(b"p1"), IPReceived(b"p2")]
    core.receive_serial(b"x", 6)
    assert stack.calls == [("receive_packet", b"p1", 6), ("receive_packet", b"p2", 6)]
    assert core.take_events() == [LinkUp("10.0.0.1", "10.0.0.2", 1500)]
    assert core.take_events() == []


class StalledStack(FakeStack):
    """A stack whose connection waits out a backed-off retransmission timer."""

    def stalled(self):
        return True


def test_a_stalled_flow_tells_the_link_and_probes_the_silent_line_then_retransmits_when_it_answers():
    from pyslirp.core import PROBE_MS
    core, link, stack = make(StalledStack)
    link.is_up = True
    link.events = [LinkUp("10.0.0.1", "10.0.0.2", 1500)]
    core.lower_up(1)
    core.receive_serial(b"x", 10)                   # the last bytes from the line
    stack.timer = 20                                # an RTO runs
    core.handle_timer(20)
    # VJ refreshes, CCP resyncs: the client may have lost a frame, or the timeout was spurious (suspected).
    assert ("peer_lost_frame", 20, True) in link.calls
    assert core.get_timer() == 10 + PROBE_MS        # silent for PROBE_MS: then a probe
    core.handle_timer(10 + PROBE_MS)
    assert ("probe", 10 + PROBE_MS) in link.calls
    stack.timer = 10 + PROBE_MS + 50                # another retransmission timeout while probing
    core.handle_timer(10 + PROBE_MS + 50)
    assert ("peer_lost_frame", 10 + PROBE_MS + 50, True) in link.calls
    core.handle_timer(10 + 2 * PROBE_MS)            # unanswered: the line is out
    assert ("probe", 10 + 2 * PROBE_MS) in link.calls
    core.receive_serial(b"y", 10 + 2 * PROBE_MS + 5)
    assert ("link_alive", 10 + 2 * PROBE_MS + 5) in stack.calls
    # What went into the dead line is lost: the link hears of it before the retransmissions.
    assert ("peer_lost_frame", 10 + 2 * PROBE_MS + 5, False) in link.calls     # certain
    assert core.probes == 2


def test_a_fast_retransmit_tells_the_link_before_the_retransmission_is_framed():
    core, link, stack = make()
    link.is_up = True
    link.events = [LinkUp("10.0.0.1", "10.0.0.2", 1500)]
    core.lower_up(1)
    core.receive_serial(b"ack", 10)
    assert not [c for c in link.calls if c[0] == "peer_lost_frame"]
    stack.lost_frame = True                         # the third duplicate ACK queued a fast retransmit
    core.receive_serial(b"dup ack", 20)
    assert [c for c in link.calls if c[0] == "peer_lost_frame"] == [("peer_lost_frame", 20, True)]


def test_a_promptly_answered_probe_is_not_the_line_returning_but_tells_the_stack_it_carries():
    from pyslirp.core import PROBE_MS
    core, link, stack = make(StalledStack)
    link.is_up = True
    link.events = [LinkUp("10.0.0.1", "10.0.0.2", 1500)]
    core.lower_up(1)
    core.receive_serial(b"x", 10)
    stack.timer = 20
    core.handle_timer(20)
    core.handle_timer(10 + PROBE_MS)
    core.receive_serial(b"echo reply", 10 + PROBE_MS + 30)
    assert not [c for c in stack.calls if c[0] == "link_alive"]
    # The line carries: the backed-off flows lose frames to its noise (conn.py, "A noisy line").
    assert [c for c in stack.calls if c[0] == "line_answers"] == [("line_answers", 10 + PROBE_MS + 30)]
    stack.timer = 5000
    core.handle_timer(5000)                         # still stalled, but the line is known to be fine
    assert core.get_timer() != 5000 + PROBE_MS and core.probes == 1


def test_a_lost_line_suspends_the_stack_and_is_reported():
    core, link, stack = make()
    link.events = [LinkUp("10.0.0.1", "10.0.0.2", 1500)]
    core.lower_up(1)
    link.events = [LinkDown("echo timeout"), AuthResult("bob", False, "pap")]
    stack.events = ["service-event"]
    core.handle_timer(7)        # no timer due: nothing called on the link...
    assert ("handle_timer", 7) not in link.calls
    link.timer = 7              # ...until one is due
    core.handle_timer(7)
    assert ("suspend", 7) in stack.calls and ("reset", 7) not in stack.calls
    assert core.take_events() == [LinkUp("10.0.0.1", "10.0.0.2", 1500), LinkDown("echo timeout"),
                                  AuthResult("bob", False, "pap"), "service-event"]


def test_an_administrative_link_down_resets_the_stack():
    core, link, stack = make()
    link.events = [LinkUp("10.0.0.1", "10.0.0.2", 1500)]
    core.lower_up(1)
    link.events = [LinkDown("peer requested termination", administrative=True)]
    core.receive_serial(b"", 2)
    assert [c for c in stack.calls if c[0] in ("reset", "suspend")] == [("reset", 2)]


def test_the_same_client_resumes_another_one_resets():
    core, link, stack = make()
    link.events = [LinkUp("10.0.0.1", "10.0.0.2", 1500)]
    core.lower_up(1)
    link.events = [LinkDown("peer renegotiates"), LinkUp("10.0.0.1", "10.0.0.2", 1500)]
    core.receive_serial(b"", 2)
    assert [c for c in stack.calls if c[0] in ("reset", "suspend", "resume")] == [("suspend", 2), ("resume", 2)]
    del stack.calls[:]
    link.events = [LinkDown("echo timeout"), LinkUp("10.0.0.1", "10.0.0.3", 1500)]
    core.receive_serial(b"", 3)
    assert [c for c in stack.calls if c[0] in ("reset", "suspend", "resume")] == [("suspend", 3), ("reset", 3)]
    assert core.counters["resumes_refused"] == 1


def test_resumption_needs_the_same_user():
    core, link, stack = make()
    link.events = [AuthResult("alice", True, "pap"), LinkUp("10.0.0.1", "10.0.0.2", 1500)]
    core.lower_up(1)
    link.events = [LinkDown("echo timeout"), AuthResult("alice", True, "pap"), LinkUp("10.0.0.1", "10.0.0.2", 1500)]
    core.receive_serial(b"", 2)
    assert ("resume", 2) in stack.calls
    link.events = [LinkDown("echo timeout"), AuthResult("bob", True, "pap"), LinkUp("10.0.0.1", "10.0.0.2", 1500)]
    core.receive_serial(b"", 3)
    assert ("reset", 3) in stack.calls and ("resume", 3) not in stack.calls


def test_lower_down_suspends_close_resets_even_while_suspended():
    core, link, stack = make()
    link.events = [LinkUp("10.0.0.1", "10.0.0.2", 1500)]
    core.lower_up(1)
    link.events = [LinkDown("lower layer down")]
    core.lower_down(2)
    core.lower_down(3)
    assert [c for c in stack.calls if c[0] in ("reset", "suspend")] == [("suspend", 2)]
    core.close(5)
    assert link.calls[-1] == ("close", "pyslirp is shutting down", 5)
    assert [c for c in stack.calls if c[0] in ("reset", "suspend")] == [("suspend", 2), ("reset", 5)]
    link.events = [LinkUp("10.0.0.1", "10.0.0.2", 1500)]
    core.lower_up(6)
    core.close(7)
    assert [c for c in stack.calls if c[0] == "reset"] == [("reset", 5), ("reset", 7)]


def test_session_mtu_is_the_smaller_of_ours_and_the_peers():
    core, link, stack = make()
    link.events = [LinkUp("10.0.0.1", "10.0.0.2", 576)]
    core.lower_up(1)
    assert core.session_mtu == 576
    assert stack.calls == [("set_mtu", 576)]
    link.events = [LinkDown("x"), LinkUp("10.0.0.1", "10.0.0.2", 9000)]
    core.receive_serial(b"", 2)
    assert core.session_mtu == 1500
    assert [c for c in stack.calls if c[0] == "set_mtu"][-1] == ("set_mtu", 1500)
    link.events = [LinkDown("x"), LinkUp("10.0.0.1", "10.0.0.2", 1500)]
    before = len(stack.calls)
    core.receive_serial(b"", 3)
    assert not [c for c in stack.calls[before:] if c[0] == "set_mtu"]      # unchanged: not told again


def test_timers_are_multiplexed():
    core, link, stack = make()
    assert core.get_timer() is None
    link.timer, stack.timer = 50, None
    assert core.get_timer() == 50
    link.timer, stack.timer = None, 40
    assert core.get_timer() == 40
    link.timer, stack.timer = 30, 40
    assert core.get_timer() == 30
    core.handle_timer(29)
    assert ("handle_timer", 29) not in link.calls and ("handle_timer", 29) not in stack.calls
    core.handle_timer(35)
    assert ("handle_timer", 35) in link.calls and ("handle_timer", 35) not in stack.calls
    core.handle_timer(40)
    assert ("handle_timer", 40) in stack.calls


def test_output_is_control_first_then_framed_stack_packets_with_their_urgency():
    core, link, stack = make()
    link.events = [LinkUp("10.0.0.1", "10.0.0.2", 1500)]
    core.lower_up(1)
    link.is_up = True
    link.output = [(True, b"lcp-echo")]
    stack.packets = [(True, b"ack"), (False, b"bulk")]
    out = core.take_serial_output(3000, 9)
    assert out == [(True, b"lcp-echo"), (True, b"~ack~"), (False, b"~bulk~")]
    assert ("take_packets", 3000) in stack.calls
    assert ("send_ip", b"bulk", 9) in link.calls


def test_output_without_an_open_link_drops_stack_packets():
    core, link, stack = make()
    stack.packets = [(True, b"rst")]
    link.output = [(True, b"lcp-conf-req")]
    assert core.take_serial_output(100) == [(True, b"lcp-conf-req")]
    assert core.counters["ip_out_link_down"] == 1
    link.is_up, link.accept_ip = True, False
    stack.packets = [(False, b"x"), (False, b"y")]
    assert core.take_serial_output(100) == []
    assert core.counters["ip_out_link_down"] == 3


class QueueStack(FakeStack):
    """Hands out queued bulk datagrams while their IP bytes fit the budget (the first may go over)."""

    def take_packets(self, budget, allow_one_over=False):
        self.calls.append(("take_packets", budget, allow_one_over))
        out, used = [], 0
        while self.packets and (budget < 0 or used + len(self.packets[0]) <= budget
                                or (allow_one_over and not out and budget > 0)):
            packet = self.packets.pop(0)
            used += len(packet)
            out.append((False, packet))
        return out


class ShrinkingLink(FakeLink):
    """Frames every datagram to a quarter of its size, as compression would."""

    def send_ip(self, packet, now):
        self.calls.append(("send_ip", packet, now))
        self.output.append((False, packet[:len(packet) // 4]))
        return True


def test_the_budget_counts_line_bytes_after_compression():
    stack = QueueStack()
    stack.packets = [bytes([i]) * 1000 for i in range(40)]
    core = Core(None, Cfg(), random.Random(1), link=ShrinkingLink(), stack=stack)
    core.link.is_up = True
    out = core.take_serial_output(3000, 5)
    line = sum(len(frame) for _, frame in out)
    # More than the budget's worth of IP bytes went, and what goes on the line stays within it.
    assert len(out) > 3 and line <= 3000 and 3000 - line < 1000      # less than one more datagram left
    assert [frame[:1] for _, frame in out] == [bytes([i]) for i in range(len(out))]     # in order
    budgets = [c[1] for c in stack.calls if c[0] == "take_packets"]
    assert budgets[0] == 3000 and budgets == sorted(budgets, reverse=True) and len(budgets) > 2
    # allow_one_over applies to the first request only: the leftovers are never exceeded.
    assert [c[2] for c in stack.calls if c[0] == "take_packets"] == [False] * len(budgets)
    stack.calls.clear()
    core.take_serial_output(500, 6, allow_one_over=True)
    assert [c[2] for c in stack.calls if c[0] == "take_packets"][0] is True
    assert all(not c[2] for c in stack.calls[1:] if c[0] == "take_packets")


def test_without_compression_the_stack_is_asked_once():
    stack = QueueStack()
    stack.packets = [b"x" * 1000 for _ in range(10)]
    link = FakeLink()
    link.is_up = True
    core = Core(None, Cfg(), random.Random(1), link=link, stack=stack)
    out = core.take_serial_output(3000, 5)
    assert len(out) == 3 and [c[0] for c in stack.calls] == ["take_packets"]
    stack.calls.clear()
    assert len(core.take_serial_output(-1, 6)) == 7 and len(stack.calls) == 1      # unlimited: one call


def test_service_calls_pass_through():
    core, link, stack = make()
    core.service_connected(1, 10)
    core.service_connected(7, 10, 1, ((0, "refused"),))
    core.service_failed(2, "refused", 11, "host_unreachable")
    core.service_failed(8, "timeout", 11, "reset", ((0, "timeout"),))
    core.service_data(3, b"abc", 12)
    core.service_eof(4, 13)
    core.service_written(5, 99, 14)
    core.service_error(6, "reset", 15)
    assert stack.calls == [("service_connected", 1, 10, 0, ()), ("service_connected", 7, 10, 1, ((0, "refused"),)),
                           ("service_failed", 2, "refused", 11, "host_unreachable", ()),
                           ("service_failed", 8, "timeout", 11, "reset", ((0, "timeout"),)),
                           ("service_data", 3, b"abc", 12), ("service_eof", 4, 13),
                           ("service_written", 5, 99, 14), ("service_error", 6, "reset", 15)]


def test_is_dead_and_is_up_come_from_the_link():
    core, link, stack = make()
    assert not core.is_dead and not core.is_up
    link.is_dead = link.is_up = True
    assert core.is_dead and core.is_up


# -- the real PPPLink and IPStack, driven by a scripted PPP client over bytes ------------------

from pyslirp import config as config_mod  # noqa: E402
from pyslirp.net.events import ServiceClose, ServiceConnect, ServiceReadCredit, ServiceSend  # noqa: E402
from pyslirp.wire import hdlc, ppp as wppp  # noqa: E402
from pyslirp.wire.icmp import IcmpRepr  # noqa: E402
from pyslirp.wire.ipv4 import Ipv4Repr, ip_bytes  # noqa: E402
from pyslirp.wire.tcp import ACK, PSH, SYN, TcpRepr  # noqa: E402

US, PEER = ip_bytes("10.0.0.1"), ip_bytes("10.0.0.2")


class Client(object):
    """Plays pppd: LCP with ACCM 0 and a magic number, IPCP asking for an address."""

    def __init__(self, core):
        self.core = core
        self.now = 1000
        # Receive ACCM 0 from the start: we ask for ACCM 0, and the link's first frames after LCP opens
        # (IPCP) come in the same read as its LCP Configure-Ack.  Escaped bytes are decoded either way.
        self.deframer = hdlc.Deframer(accm=0)
        self.received = []          # (urgent, protocol, info) not yet looked at
        self.events = []
        self.budget = 1 << 20       # bulk bytes offered to the Core at each pump

    def pump(self, budget=None):
        if budget is None:
            budget = self.budget
        for urgent, data in self.core.take_serial_output(budget, self.now):
            for frame in self.deframer.feed(data):
                proto, info = wppp.parse_frame(frame)
                self.received.append((urgent, proto, info))
        self.events.extend(self.core.take_events())

    def send(self, proto, info):
        self.core.receive_serial(hdlc.encode_frame(wppp.build_frame(proto, info)), self.now)
        self.pump()

    def send_cp(self, proto, code, ident, options):
        self.send(proto, wppp.build_cp(code, ident, wppp.build_options(options)))

    def take(self, proto, code=None):
        """Remove and return the first received control packet of proto (and code)."""
        for i, (urgent, p, info) in enumerate(self.received):
            if p == proto:
                parsed = wppp.parse_cp(info)
                if code is None or parsed[0] == code:
                    del self.received[i]
                    return parsed
        raise AssertionError("no %#x/%s in %r" % (proto, code, self.received))

    def ip_packets(self):
        out = [(urgent, Ipv4Repr.parse(info)) for urgent, p, info in self.received if p == wppp.PROTO_IP]
        self.received = [r for r in self.received if r[1] != wppp.PROTO_IP]
        return out

    def send_ip(self, repr_):
        self.send(wppp.PROTO_IP, repr_.emit())

    def send_tcp(self, seg):
        self.send_ip(Ipv4Repr(PEER, US, 6, seg.emit(PEER, US)))

    def tcp_segments(self):
        return [(urgent, TcpRepr.parse(ip.payload, US, PEER)) for urgent, ip in self.ip_packets()
                if ip.protocol == 6]

    def bring_up(self):
        self.core.lower_up(self.now)
        self.pump()
        code, ident, data = self.take(wppp.PROTO_LCP, wppp.CONFIGURE_REQUEST)
        self.send_cp(wppp.PROTO_LCP, wppp.CONFIGURE_ACK, ident, wppp.parse_options(data))
        self.send_cp(wppp.PROTO_LCP, wppp.CONFIGURE_REQUEST, 1, [(2, b"\0\0\0\0"), (5, b"\1\2\3\4")])
        assert self.take(wppp.PROTO_LCP, wppp.CONFIGURE_ACK)[1] == 1
        self.send_cp(wppp.PROTO_IPCP, wppp.CONFIGURE_REQUEST, 1, [(3, b"\0\0\0\0")])
        code, ident, data = self.take(wppp.PROTO_IPCP, wppp.CONFIGURE_NAK)
        assert wppp.parse_options(data) == [(3, PEER)]
        self.send_cp(wppp.PROTO_IPCP, wppp.CONFIGURE_REQUEST, 2, [(3, PEER)])
        assert self.take(wppp.PROTO_IPCP, wppp.CONFIGURE_ACK)[1] == 2
        code, ident, data = self.take(wppp.PROTO_IPCP, wppp.CONFIGURE_REQUEST)
        self.send_cp(wppp.PROTO_IPCP, wppp.CONFIGURE_ACK, ident, wppp.parse_options(data))


def real_core(text="", **overrides):
    values = {"ppp.lcp_echo_interval": 0, "ppp.restart_interval": 1}
    values.update(overrides)
    cfg = config_mod.validate(config_mod.apply_overrides({}, values))
    return Core(config_mod.link_config(cfg), config_mod.stack_config(cfg), random.Random(7))


def test_real_core_negotiates_and_reports_link_up():
    client = Client(real_core())
    client.bring_up()
    assert client.core.is_up
    # The client acknowledged our request for VJ: it compresses its TCP/IP headers towards us.
    assert [e for e in client.events if isinstance(e, LinkUp)] == [LinkUp("10.0.0.1", "10.0.0.2", 1500, True)]
    assert client.core.session_mtu == 1500


def synack_to(client, port):
    """The SYN-ACK answering a SYN that offers TCP timestamps (RFC 7323) to service port 22."""
    client.send_tcp(TcpRepr(port, 22, 1000, 0, SYN, 65535, mss=1460, timestamp=(77, 0)))
    (connect,) = [e for e in client.events if isinstance(e, ServiceConnect) and e.flow.client_port == port]
    client.core.service_connected(connect.conn_id, client.now)
    client.pump()
    (urgent, synack), = client.tcp_segments()
    assert synack.flags == SYN | ACK
    return synack


def test_no_tcp_timestamps_while_the_link_compresses_headers():
    # RFC 1144 3.2.3: a changed TCP option sends the header uncompressed; a timestamp changes every segment.
    client = Client(real_core())
    client.bring_up()
    assert client.core.link.vj_active and client.core.stack.header_compression
    assert synack_to(client, 40000).timestamp is None
    # Without VJ (and no measured line rate) the stack offers them as configured.
    client = Client(real_core(**{"ppp.vj": False}))
    client.bring_up()
    assert not client.core.link.vj_active and not client.core.stack.header_compression
    assert [e for e in client.events if isinstance(e, LinkUp)] == [LinkUp("10.0.0.1", "10.0.0.2", 1500, False)]
    timestamp = synack_to(client, 40000).timestamp
    assert timestamp is not None and timestamp[1] == 77        # TSecr echoes the SYN's TSval


def test_real_core_restart_timer_through_get_timer():
    core = real_core()
    client = Client(core)
    core.lower_up(1000)
    client.pump()
    client.take(wppp.PROTO_LCP, wppp.CONFIGURE_REQUEST)
    assert core.get_timer() == 2000                 # restart_interval = 1 s
    core.handle_timer(1999)
    client.pump()
    assert client.received == []
    core.handle_timer(2000)
    client.pump()
    client.take(wppp.PROTO_LCP, wppp.CONFIGURE_REQUEST)


def test_real_core_ping_and_a_tcp_connection_to_a_service():
    client = Client(real_core())
    client.bring_up()
    # ICMP echo is answered by the stack, framed by the link.
    client.send_ip(Ipv4Repr(PEER, US, 1, IcmpRepr(8, 0, b"\0\1\0\2", b"ping").emit()))
    (urgent, reply), = client.ip_packets()
    assert (reply.src, reply.dst, IcmpRepr.parse(reply.payload).type) == (US, PEER, 0)
    # A SYN to port 22 asks the runtime to connect; nothing is sent until it did.
    client.send_tcp(TcpRepr(40000, 22, 1000, 0, SYN, 65535, mss=1460))
    connect = [e for e in client.events if isinstance(e, ServiceConnect)]
    assert [(e.route.host, e.route.port, e.flow.client_addr, e.flow.client_port) for e in connect] == [
        ("127.0.0.1", 22, PEER, 40000)]
    cid = connect[0].conn_id
    assert client.tcp_segments() == []
    client.core.service_connected(cid, client.now)
    client.pump()
    (urgent, synack), = client.tcp_segments()
    assert synack.flags == SYN | ACK and synack.ack == 1001
    assert any(isinstance(e, ServiceReadCredit) and e.conn_id == cid for e in client.events)
    # Client data becomes ServiceSend; service data becomes a segment toward the client.
    client.send_tcp(TcpRepr(40000, 22, 1001, synack.seq + 1, ACK | PSH, 65535, payload=b"hello"))
    assert ServiceSend(cid, b"hello") in client.events
    client.core.service_data(cid, b"world", client.now)
    client.pump()
    data = [seg for urgent, seg in client.tcp_segments() if seg.payload]
    assert [seg.payload for seg in data] == [b"world"]
    # The client ends the session: Terminate-Ack, LinkDown, the service socket is closed.
    client.send_cp(wppp.PROTO_LCP, wppp.TERMINATE_REQUEST, 9, [])
    assert client.take(wppp.PROTO_LCP, wppp.TERMINATE_ACK)[1] == 9
    assert any(isinstance(e, LinkDown) for e in client.events)
    assert any(isinstance(e, ServiceClose) and e.conn_id == cid for e in client.events)
    assert not client.core.is_up


def test_real_core_budget_limits_bulk_but_not_control():
    client = Client(real_core())
    client.bring_up()
    client.send_tcp(TcpRepr(40001, 22, 5000, 0, SYN, 65535, mss=1460))
    cid = [e for e in client.events if isinstance(e, ServiceConnect)][0].conn_id
    client.core.service_connected(cid, client.now)
    client.pump()
    (_, synack), = client.tcp_segments()
    client.send_tcp(TcpRepr(40001, 22, 5001, synack.seq + 1, ACK, 65535))
    client.core.service_data(cid, b"x" * 20000, client.now)
    client.pump(budget=0)
    assert [seg for _, seg in client.tcp_segments() if len(seg.payload) > 64] == []
    client.pump(budget=3000)
    bulk = [seg for _, seg in client.tcp_segments() if seg.payload]
    assert bulk and sum(len(seg.payload) for seg in bulk) <= 3000
    # Control segments (the ACK of a keystroke, once the delayed-ACK timer fires) are urgent and are
    # not held back by a zero budget.
    client.budget = 0
    client.send_tcp(TcpRepr(40001, 22, 5001, synack.seq + 1 + sum(len(s.payload) for s in bulk), ACK | PSH,
                            65535, payload=b"k"))
    assert ServiceSend(cid, b"k") in client.events
    assert [seg for _, seg in client.tcp_segments() if len(seg.payload) > 64] == []
    deadline = client.core.get_timer()
    assert deadline is not None and deadline <= client.now + 500
    client.now = deadline
    client.core.handle_timer(client.now)
    client.pump(budget=0)
    acks = [(urgent, seg) for urgent, seg in client.tcp_segments() if seg.ack == 5002]
    assert acks and all(urgent for urgent, seg in acks)


def test_real_core_close_sends_terminate_and_dies():
    client = Client(real_core())
    client.bring_up()
    client.core.close(client.now)
    client.pump()
    ident = client.take(wppp.PROTO_LCP, wppp.TERMINATE_REQUEST)[1]
    assert any(isinstance(e, LinkDown) for e in client.events)
    assert not client.core.is_dead
    client.send_cp(wppp.PROTO_LCP, wppp.TERMINATE_ACK, ident, [])
    assert client.core.is_dead
