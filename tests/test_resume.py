"""Sessions that survive the line: the real Core, PPPLink and IPStack on a fake clock.

A scripted pppd (tests/test_link.py's ``Client``) speaks bytes to the Core through ``CoreLine``, which can also
cut the line (every byte either way is lost).  On top of it a small client TCP (``Guest``) opens a connection to a
service and receives a download; the test plays the service thread (``Service``: it honours the stack's read
credit, as runtime/services.py does).  The cases: the client's pppd killed mid-transfer and a new one dialling in
(LCP renegotiation) within the grace; the line cut for longer than the LCP echo timeout, then restored (our
Terminate-Ack makes the still-Opened client renegotiate); the serial device unplugged and back; past the grace;
another address; the client's Terminate-Request; memory while the link is down.
"""

import random

import pytest

from test_core import FakeLink
from test_link import Client as Pppd
from test_link import events_of, negotiated
from pyslirp import config as config_mod
from pyslirp.core import Core
from pyslirp.net.events import FlowLog, ServiceClose, ServiceConnect, ServiceReadCredit, ServiceSend, UdpClose, \
    UdpOpen
from pyslirp.net.stack import IPStack, StackConfig
from pyslirp.net.tcp.seq import seq_add, seq_sub
from pyslirp.ppp.events import IPReceived, LinkDown, LinkUp
from pyslirp.ppp.fsm import State
from pyslirp.wire import ppp as wppp
from pyslirp.wire.ipv4 import Ipv4Repr, ip_bytes
from pyslirp.wire.tcp import ACK, PSH, RST, SYN, TcpRepr
from pyslirp.wire.udp import UdpRepr

US, PEER = ip_bytes("10.0.0.1"), ip_bytes("10.0.0.2")
LCP, IPCP, IP = wppp.PROTO_LCP, wppp.PROTO_IPCP, wppp.PROTO_IP


def make_core(**ppp):
    settings = {"ppp.lcp_echo_interval": 0, "ppp.restart_interval": 1, "ppp.resume_grace": 60}
    settings.update(("ppp." + k, v) for k, v in ppp.items())
    raw = {"udp_services": {"7": {"host": "127.0.0.1", "port": 7}}}
    cfg = config_mod.validate(config_mod.apply_overrides(raw, settings))
    return Core(config_mod.link_config(cfg), config_mod.stack_config(cfg), random.Random(11))


class CoreLine(object):
    """The Core as the scripted pppd's peer; ``cut`` loses every byte both ways."""

    def __init__(self, core):
        self.core = core
        self.cut = False
        self.lost_out = 0           # bytes the Core sent into the cut line

    def receive_data(self, data, now):
        if not self.cut:
            self.core.receive_serial(data, now)

    def take_output(self):
        out = self.core.take_serial_output(1 << 20)
        if self.cut:
            self.lost_out += sum(len(b) for _, b in out)
            return []
        return out

    def take_events(self):
        return self.core.take_events()

    def get_timer(self):
        return self.core.get_timer()

    def handle_timer(self, now):
        self.core.handle_timer(now)


class RenegotiatingPppd(Pppd):
    """pppd in Opened answers an unelicited Terminate-Ack by renegotiating (pppd fsm.c fsm_rtermack)."""

    def handle(self, protocol, info):
        if protocol == LCP and wppp.parse_cp(info)[0] == wppp.TERMINATE_ACK and self.lcp_open:
            self.lcp_acked = self.lcp_acked_theirs = False
            self.ipcp_acked = self.ipcp_acked_theirs = False
            self.deframer.accm = 0xFFFFFFFF
            self.send_lcp_request()
            return
        Pppd.handle(self, protocol, info)


class Guest(object):
    """The client's TCP for one connection to 10.0.0.1:22: in-order receiver that ACKs what it got."""

    def __init__(self, pppd, port=40000):
        self.pppd = pppd
        self.port = port
        self.iss = 7000
        self.snd_nxt = seq_add(self.iss, 1)
        self.rcv_nxt = None
        self.received = bytearray()
        self.resets = 0

    def send(self, flags, payload=b"", seq=None):
        seg = TcpRepr(self.port, 22, self.snd_nxt if seq is None else seq,
                      self.rcv_nxt if flags & ACK else 0, flags, 65535, mss=1460 if flags & SYN else None,
                      payload=payload)
        self.pppd.send(IP, Ipv4Repr(PEER, US, 6, seg.emit(PEER, US)).emit())

    def segments(self):
        """The TCP segments for this connection that reached the client since last time."""
        self.pppd.collect()
        out, keep = [], []
        for proto, info in self.pppd.received:
            if proto != IP:
                keep.append((proto, info))
                continue
            ip = Ipv4Repr.parse(info)
            if ip.protocol == 6:
                seg = TcpRepr.parse(ip.payload, ip.src, ip.dst)
                if seg.dst_port == self.port:
                    out.append(seg)
                    continue
            keep.append((proto, info))
        self.pppd.received[:] = keep
        return out

    def take(self, segs):
        """Keep the in-order payload, count resets; True if anything new arrived."""
        new = False
        for seg in segs:
            if seg.flags & RST:
                self.resets += 1
            elif seg.flags & SYN:
                self.rcv_nxt = seq_add(seg.seq, 1)
                new = True
            elif seg.payload and seg.seq == self.rcv_nxt:
                self.received += seg.payload
                self.rcv_nxt = seq_add(self.rcv_nxt, len(seg.payload))
                new = True
            elif seg.payload and seq_sub(seg.seq, self.rcv_nxt) < 0 < seq_sub(seq_add(seg.seq, len(seg.payload)),
                                                                               self.rcv_nxt):
                head = seq_sub(self.rcv_nxt, seg.seq)
                self.received += seg.payload[head:]
                self.rcv_nxt = seq_add(seg.seq, len(seg.payload))
                new = True
        return new


class Service(object):
    """The service thread of one connection: sends ``data`` within the read credit it was granted."""

    def __init__(self, core, events, data):
        self.core = core
        self.events = events        # the list the Core's events are collected in (pppd.events)
        self.data = data
        self.seen = 0
        self.granted = 0
        self.sent = 0
        self.conn_id = None
        self.got = b""

    def poll(self, now):
        for event in self.events[self.seen:]:
            if isinstance(event, ServiceConnect) and self.conn_id is None:
                self.conn_id = event.conn_id
                self.core.service_connected(self.conn_id, now)
            elif isinstance(event, ServiceReadCredit) and event.conn_id == self.conn_id:
                self.granted += event.nbytes
            elif isinstance(event, ServiceSend) and event.conn_id == self.conn_id:
                self.got += event.data
                self.core.service_written(self.conn_id, len(event.data), now)
        self.seen = len(self.events)
        n = min(self.granted - self.sent, len(self.data) - self.sent, 4096)
        if n > 0:
            self.core.service_data(self.conn_id, self.data[self.sent:self.sent + n], now)
            self.sent += n

    def closes(self):
        return [e for e in self.events if isinstance(e, ServiceClose) and e.conn_id == self.conn_id]


def setup(core, size=60000, seed=1):
    line = CoreLine(core)
    core.lower_up(0)
    pppd = RenegotiatingPppd(line)
    pppd.start()
    assert core.is_up
    guest = Guest(pppd)
    data = random.Random(seed).getrandbits(size * 8).to_bytes(size, "big")
    service = Service(core, pppd.events, data)
    guest.send(SYN, seq=guest.iss)
    service.poll(pppd.now)
    assert service.conn_id is not None
    guest.take(guest.segments())
    guest.send(ACK)
    return line, pppd, guest, service


def transfer(line, pppd, guest, service, until, step=10, ack=True, limit=20000):
    """Run the download for a while: the service sends within credit, the client ACKs what it got."""
    for _ in range(limit):
        if until():
            return
        pppd.advance(pppd.now + step)
        service.poll(pppd.now)
        if guest.take(guest.segments()) and ack:
            guest.send(ACK)
        service.poll(pppd.now)
    raise AssertionError("no progress: %d of %d bytes" % (len(guest.received), len(service.data)))


def the_line_is_lost(line, pppd, guest, service, ms):
    """``ms`` of a dead line: every byte either way is lost while the Core's timers run."""
    line.cut = True
    end = pppd.now + ms
    while pppd.now < end:
        pppd.advance(min(end, pppd.now + 100))
        service.poll(pppd.now)
    line.cut = False


# -- the client's pppd killed and restarted -------------------------------------------------------

def test_pppd_restarted_mid_transfer_within_the_grace_loses_nothing():
    core = make_core()
    line, pppd, guest, service = setup(core)
    transfer(line, pppd, guest, service, lambda: len(guest.received) >= 20000)
    # The client types a line; its segment is lost with the link (pppd is killed right after).
    typed_seq = guest.snd_nxt
    guest.snd_nxt = seq_add(guest.snd_nxt, 3)
    the_line_is_lost(line, pppd, guest, service, 3000)     # killed; a new pppd 3 s later
    assert core.stack.suspended is False                    # nothing told the link yet (no echo)
    fresh = RenegotiatingPppd(line, now=pppd.now)
    guest.pppd = fresh
    service.events = fresh.events
    service.seen = 0
    fresh.start()                                           # LCP Configure-Request to our Opened LCP
    assert [e.administrative for e in events_of(fresh, LinkDown)] == [False]
    assert events_of(fresh, LinkUp) and core.is_up and not core.stack.suspended
    assert core.stack.suspensions == 1 and core.stack.resumptions == 1
    # The client's TCP retransmits its line; our side resent what was in flight at once.
    guest.send(ACK | PSH, b"ls\n", seq=typed_seq)
    transfer(line, fresh, guest, service, lambda: len(guest.received) >= len(service.data))
    assert bytes(guest.received) == service.data
    assert service.got == b"ls\n"
    assert service.closes() == [] and guest.resets == 0
    logs = [e.text for e in fresh.events if isinstance(e, FlowLog)]
    assert not any(t.startswith("closed") for t in logs)


def test_past_the_grace_the_connections_are_reset_and_the_client_gets_rst():
    core = make_core(resume_grace=30)
    line, pppd, guest, service = setup(core)
    transfer(line, pppd, guest, service, lambda: len(guest.received) >= 5000)
    fresh = RenegotiatingPppd(line, now=pppd.now + 100)
    # A new session comes up at once but then dies again: the grace runs from the first loss.
    down_at = fresh.now
    fresh.start()
    assert not core.stack.suspended                         # resumed...
    core.lower_down(down_at + 1000)                         # ...and the device is unplugged
    lost = down_at + 1000
    assert core.stack.suspended
    core.handle_timer(lost + 30000 - 1)
    assert [e for e in core.take_events() if isinstance(e, ServiceClose)] == []
    core.handle_timer(lost + 30000)
    events = core.take_events()
    assert [e for e in events if isinstance(e, ServiceClose)] == [
        ServiceClose(service.conn_id, "link down, not resumed within 30 s")]
    assert any(isinstance(e, FlowLog) and "reason=link down, not resumed within 30 s" in e.text
               for e in events)
    assert not core.stack.suspended and core.stack.resume_expiries == 1 and core.stack.connections_active == 0
    # The client comes back later: its retransmission for the old connection is answered with a reset.
    core.lower_up(lost + 40000)
    late = RenegotiatingPppd(line, now=lost + 40000)
    guest.pppd = late
    late.start()
    assert core.is_up
    guest.send(ACK | PSH, b"x")
    assert [s.flags & RST for s in guest.segments()] == [RST]


def test_a_session_with_another_address_resets_at_once():
    link = FakeLink()
    stack_cfg = StackConfig(resume_grace=120)
    core = Core(None, stack_cfg, random.Random(3), link=link, stack=IPStack(stack_cfg, random.Random(3)))
    link.events = [LinkUp("10.0.0.1", "10.0.0.2", 1500)]
    core.lower_up(0)
    syn = TcpRepr(40000, 22, 100, 0, SYN, 65535, mss=1460)
    link.events = [IPReceived(Ipv4Repr(PEER, US, 6, syn.emit(PEER, US)).emit())]
    core.receive_serial(b"", 10)
    cid, = [e.conn_id for e in core.take_events() if isinstance(e, ServiceConnect)]
    core.service_connected(cid, 20)
    link.events = [LinkDown("echo timeout")]
    core.receive_serial(b"", 30)
    assert core.stack.suspended and core.stack.connections_active == 1
    assert [e for e in core.take_events() if isinstance(e, ServiceClose)] == []
    link.events = [LinkUp("10.0.0.1", "10.0.0.9", 1500)]
    core.receive_serial(b"", 40)
    assert [e for e in core.take_events() if isinstance(e, ServiceClose)] == [
        ServiceClose(cid, "link down, another client")]
    assert core.counters["resumes_refused"] == 1 and core.stack.connections_active == 0


def test_the_clients_terminate_request_resets_at_once():
    core = make_core()
    line, pppd, guest, service = setup(core)
    transfer(line, pppd, guest, service, lambda: len(guest.received) >= 5000)
    pppd.send_cp(LCP, wppp.TERMINATE_REQUEST, 77, b"User request")
    assert [e.administrative for e in events_of(pppd, LinkDown)] == [True]
    assert service.closes() == [ServiceClose(service.conn_id, "link down")]
    assert not core.stack.suspended and core.stack.connections_active == 0


def test_our_close_resets_even_while_suspended():
    core = make_core()
    line, pppd, guest, service = setup(core)
    core.lower_down(pppd.now + 10)
    assert core.stack.suspended and service.closes() == []
    core.close(pppd.now + 20)
    assert [e for e in core.take_events() if isinstance(e, ServiceClose)] == [
        ServiceClose(service.conn_id, "link down")]
    assert not core.stack.suspended


def test_resume_grace_zero_resets_a_lost_line_at_once():
    core = make_core(resume_grace=0)
    line, pppd, guest, service = setup(core)
    core.lower_down(pppd.now + 10)
    assert [e for e in core.take_events() if isinstance(e, ServiceClose)] == [
        ServiceClose(service.conn_id, "link down")]
    assert not core.stack.suspended


# -- the line cut and restored; the device unplugged and back ----------------------------------------

def test_line_cut_beyond_the_echo_timeout_then_restored_resumes():
    core = make_core(lcp_echo_interval=1, lcp_echo_failure=3)
    line, pppd, guest, service = setup(core)
    transfer(line, pppd, guest, service, lambda: len(guest.received) >= 20000)
    the_line_is_lost(line, pppd, guest, service, 10000)
    # Our echoes went unanswered: the session ended (its Terminate-Requests into the cut line) and LCP
    # listens; the client's pppd, which runs no echoes of its own, still thinks it is Opened.
    assert core.stack.suspended and core.link.lcp.state == State.STOPPED
    assert [(e.reason, e.administrative) for e in pppd.events if isinstance(e, LinkDown)] == [
        ("echo timeout", False)]
    assert pppd.lcp_open
    # The line is back; someone types: the client's IP frame gets a Terminate-Ack, pppd renegotiates...
    typed_seq = guest.snd_nxt
    guest.send(ACK | PSH, b"w\n")
    guest.snd_nxt = seq_add(typed_seq, 2)
    pppd.run()
    assert core.is_up and not core.stack.suspended and core.stack.resumptions == 1
    # ...and its TCP retransmits the keystrokes that were dropped while LCP listened.
    guest.send(ACK | PSH, b"w\n", seq=typed_seq)
    transfer(line, pppd, guest, service, lambda: len(guest.received) >= len(service.data))
    assert bytes(guest.received) == service.data and service.got == b"w\n"
    assert service.closes() == [] and guest.resets == 0


def test_serial_device_unplugged_and_back_resumes():
    core = make_core()
    line, pppd, guest, service = setup(core)
    transfer(line, pppd, guest, service, lambda: len(guest.received) >= 10000)
    core.lower_down(pppd.now + 5)
    assert core.stack.suspended
    pppd.now += 2000
    core.lower_up(pppd.now)                 # our Configure-Request: the Opened client renegotiates
    pppd.run()
    assert core.is_up and not core.stack.suspended
    transfer(line, pppd, guest, service, lambda: len(guest.received) >= len(service.data))
    assert bytes(guest.received) == service.data and service.closes() == []


# -- what is kept, and what it costs ---------------------------------------------------------------

def test_memory_is_bounded_while_the_link_is_down():
    core = make_core(resume_grace=120)
    line, pppd, guest, service = setup(core, size=4 << 20)
    transfer(line, pppd, guest, service, lambda: len(guest.received) >= 10000)
    sndbuf = core.stack_config.tcp.sndbuf
    down_at = pppd.now
    core.lower_down(down_at)
    credit_before = service.granted
    line.cut = True
    for i in range(600):                    # a minute of a service that always has more to send
        pppd.now += 100
        core.handle_timer(pppd.now)
        service.poll(pppd.now)
        assert line.take_output() == []
    assert line.lost_out == 0               # nothing at all was sent while the link was down
    conn = core.stack._conns[next(iter(core.stack._conns))].conn
    assert conn.send_space == 0
    unacked = service.sent - len(guest.received)
    assert unacked <= sndbuf
    assert service.granted - service.sent == 0
    assert service.granted - credit_before <= sndbuf
    assert core.stack.get_timer() == down_at + 120000     # only the grace timer: nothing per segment


def test_udp_flows_are_closed_when_the_line_is_lost_tcp_flows_kept():
    core = make_core()
    line, pppd, guest, service = setup(core)
    udp = UdpRepr(5000, 7, b"ping")
    pppd.send(IP, Ipv4Repr(PEER, US, 17, udp.emit(PEER, US)).emit())
    opened = [e for e in pppd.events if isinstance(e, UdpOpen)]
    assert len(opened) == 1
    core.lower_down(pppd.now + 10)
    closed = [e for e in core.take_events() if isinstance(e, UdpClose)]
    assert closed == [UdpClose(opened[0].flow_id, "link down")]
    assert core.stack.connections_active == 1 and core.stack.udp_flows_active == 0


# -- the link's side: administrative or lost, and the Terminate-Ack for a peer that acts Opened ------------

def test_ipcp_terminate_request_is_administrative():
    link, client = negotiated()
    client.send_cp(IPCP, wppp.TERMINATE_REQUEST, 5, b"")
    assert [(e.reason, e.administrative) for e in events_of(client, LinkDown)] == [
        ("peer requested termination", True)]


@pytest.mark.parametrize("end", ["echo", "renegotiation", "lower"])
def test_lost_lines_are_not_administrative(end):
    if end == "echo":
        link, client = negotiated({"lcp_echo_interval": 1, "lcp_echo_failure": 2}, answer_echo=False)
        client.advance(10000)
    elif end == "renegotiation":
        link, client = negotiated()
        fresh = Pppd(link, now=client.now + 10)
        fresh.start()
        client.events.extend(fresh.events)
    else:
        link, client = negotiated()
        link.lower_down(client.now + 10)
        client.events.extend(link.take_events())
    downs = events_of(client, LinkDown)
    assert len(downs) == 1 and downs[0].administrative is False


def test_a_peer_acting_opened_while_we_listen_gets_a_terminate_ack_per_restart_interval():
    link, client = negotiated({"lcp_echo_interval": 1, "lcp_echo_failure": 2, "restart_interval": 1},
                              answer_echo=False)
    client.auto = False
    client.advance(20000)
    assert link.lcp.state == State.STOPPED
    client.received.clear()
    ip_frame = Ipv4Repr(PEER, US, 6, TcpRepr(1, 2, 3, 4, ACK, 100).emit(PEER, US)).emit()
    client.send(IP, ip_frame)
    client.collect()
    assert [c[0] for c in client.of(LCP)] == [wppp.TERMINATE_ACK]
    client.now += 500
    client.send(IP, ip_frame)
    client.send_cp(LCP, 9, 1, b"\0\0\0\0")          # an Echo-Request: also only sent by an Opened peer
    client.collect()
    assert len(client.of(LCP)) == 1                 # at most one per restart interval
    client.now += 600
    client.send_cp(LCP, 9, 2, b"\0\0\0\0")
    client.collect()
    assert [c[0] for c in client.of(LCP)] == [wppp.TERMINATE_ACK, wppp.TERMINATE_ACK]
    assert link.counters["terminate_ack_nudges"] == 2


def test_no_terminate_ack_while_negotiating_or_after_our_close():
    link, client = negotiated()
    client.auto = False
    link.close("bye", client.now)
    client.advance(client.now + 10000)
    assert link.is_dead
    client.received.clear()
    client.send(IP, b"\x45" + bytes(19))
    client.collect()
    assert client.of(LCP) == []
    fresh_link, fresh = negotiated()
    fresh_link.lower_down(10)
    fresh_link.lower_up(20)                         # negotiating (Req-Sent): Configure-Requests go, no nudge
    fresh.received.clear()
    fresh.auto = False
    fresh.send(IP, b"\x45" + bytes(19))
    fresh.collect()
    assert wppp.TERMINATE_ACK not in [c[0] for c in fresh.of(LCP)]


# -- the stack on its own --------------------------------------------------------------------------

def test_stack_reset_logs_a_connection_in_time_wait_as_finished():
    from test_stack import make_stack, of_type, open_connection
    from pyslirp.wire import tcp
    stack = make_stack()
    client, cid = open_connection(stack)
    stack.take_events()
    stack.service_eof(cid, 5)
    (fin,) = client.receive()
    client.send(tcp.ACK | tcp.FIN, now=6)
    client.receive()
    assert stack.connections_active == 1            # TIME_WAIT
    stack.take_events()
    stack.reset(7)
    (log,) = of_type(stack.take_events(), FlowLog)
    assert log.text.endswith("reason=fin")


def test_stack_suspend_keeps_tcp_sends_nothing_and_resume_resends():
    from test_stack import make_stack, open_connection
    from pyslirp.wire import tcp
    stack = make_stack()
    client, cid = open_connection(stack)
    stack.take_events()
    stack.service_data(cid, b"d" * 1000, 10)
    (seg,) = client.receive()
    assert len(seg.payload) == 1000
    assert stack.suspend(20) is True and stack.suspended
    assert stack.get_timer() == 20 + 120 * 1000      # the grace; no retransmission timer
    stack.handle_timer(60000)
    assert stack.take_packets(-1) == [] and stack.connections_active == 1
    stack.set_mtu(576)
    stack.resume(70000)
    assert not stack.suspended and stack.resumptions == 1
    again = client.receive()
    # At once, from where the lost segment started, cut to the new session's MTU.
    assert [(s.seq, len(s.payload)) for s in again] == [(seg.seq, 536), ((seg.seq + 536) & 0xFFFFFFFF, 464)]
    assert all(s.flags & tcp.ACK for s in again)


def test_stack_suspend_with_no_grace_is_a_reset():
    from test_stack import make_stack, open_connection
    stack = make_stack(resume_grace=0)
    client, cid = open_connection(stack)
    stack.take_events()
    assert stack.suspend(5) is False and not stack.suspended
    assert ServiceClose(cid, "link down") in stack.take_events()
