"""PPPLink driven by raw bytes against a scripted client that plays pppd's part.

Everything runs on a fake clock: the link's timers are run by ``Client.advance``.
The client decodes the link's output with the wire modules and answers like
Linux pppd would (or as each test scripts it).
"""

import logging
import random
import struct

import pytest

from pyslirp.ppp.events import IPReceived, LinkDown, LinkUp
from pyslirp.ppp.fsm import State
from pyslirp.ppp.link import LinkConfig, Phase, PPPLink
from pyslirp.wire import hdlc
from pyslirp.wire import ppp as wppp

LCP, IPCP, PAP, CHAP, IP = (wppp.PROTO_LCP, wppp.PROTO_IPCP, wppp.PROTO_PAP, wppp.PROTO_CHAP,
                            wppp.PROTO_IP)
U32 = struct.Struct("!I")

# What pppd 2.4/2.5 sends by default: asyncmap 0, magic, PFC, ACFC.
PPPD_LCP = [(2, b"\0\0\0\0"), (5, b"\x5a\x5a\x12\x34"), (7, b""), (8, b"")]
# IPCP: "please give me an address" and both DNS servers (usepeerdns).
PPPD_IPCP = [(3, b"\0\0\0\0"), (129, b"\0\0\0\0"), (131, b"\0\0\0\0")]


def ip4(text):
    return bytes(int(x) for x in text.split("."))


class Client(object):
    """A scripted PPP client on the other end of the serial line."""

    def __init__(self, link, now=0, lcp_options=None, ipcp_options=None, answer_echo=True,
                 user=None, password=None, auth_with=None):
        self.link = link
        self.now = now
        self.deframer = hdlc.Deframer(accm=0xFFFFFFFF)
        self.lcp_options = list(PPPD_LCP if lcp_options is None else lcp_options)
        self.ipcp_options = list(PPPD_IPCP if ipcp_options is None else ipcp_options)
        self.answer_echo = answer_echo
        self.user, self.password, self.auth_with = user, password, auth_with
        self.ident = 0x40
        self.lcp_req = self.ipcp_req = None
        self.lcp_acked = self.lcp_acked_theirs = False
        self.ipcp_acked = self.ipcp_acked_theirs = False
        self.link_lcp = {}            # the link's last LCP request, as acked
        self.link_ipcp = {}
        self.received = []            # (protocol, info) in order
        self.events = []
        self.raw_out = []             # raw bytes the link sent
        self.raw_in = []              # raw bytes we sent
        self.lcp_nak = None           # callable(options) -> None or Nak option list
        self.auth_done = False
        self.auto = True

    # -- plumbing ---------------------------------------------------------------

    @property
    def lcp_open(self):
        return self.lcp_acked and self.lcp_acked_theirs

    def next_id(self):
        self.ident = (self.ident + 1) & 0xFF
        return self.ident

    def encode(self, protocol, info):
        basic_lcp = protocol == LCP and info and info[0] <= 7
        if self.lcp_open and not basic_lcp:
            accm = U32.unpack(self.link_lcp[2])[0] if 2 in self.link_lcp else 0xFFFFFFFF
            frame = wppp.build_frame(protocol, info, acfc=8 in self.link_lcp, pfc=7 in self.link_lcp)
        else:
            accm = 0xFFFFFFFF
            frame = wppp.build_frame(protocol, info)
        return hdlc.encode_frame(frame, accm)

    def send_raw(self, raw):
        self.raw_in.append(raw)
        self.link.receive_data(raw, self.now)
        self.events.extend(self.link.take_events())

    def send(self, protocol, info):
        self.send_raw(self.encode(protocol, info))

    def send_cp(self, protocol, code, ident, data=b""):
        self.send(protocol, wppp.build_cp(code, ident, data))

    def collect(self):
        """Decode what the link sent since last time."""
        frames = []
        for urgent, raw in self.link.take_output():
            self.raw_out.append((urgent, raw))
            for frame in self.deframer.feed(raw):
                frames.append(wppp.parse_frame(frame))
        self.received.extend(frames)
        self.events.extend(self.link.take_events())
        return frames

    def run(self, limit=50):
        """Answer the link until it has nothing more to say."""
        for _ in range(limit):
            frames = self.collect()
            if not frames:
                return
            if self.auto:
                for protocol, info in frames:
                    self.handle(protocol, info)
        raise AssertionError("the link keeps talking")

    def advance(self, to):
        """Run the link's timers up to ``to`` (answering as we go)."""
        while True:
            t = self.link.get_timer()
            if t is None or t > to:
                break
            self.now = t
            self.link.handle_timer(t)
            self.run()
        self.now = to

    # -- pppd's part --------------------------------------------------------------

    def start(self):
        self.send_lcp_request()
        self.run()

    def send_lcp_request(self):
        self.lcp_req = self.next_id()
        self.lcp_acked = False
        self.send_cp(LCP, 1, self.lcp_req, wppp.build_options(self.lcp_options))

    def send_ipcp_request(self):
        self.ipcp_req = self.next_id()
        self.send_cp(IPCP, 1, self.ipcp_req, wppp.build_options(self.ipcp_options))

    def _lcp_opened(self):
        if 2 in dict(self.lcp_options):
            self.deframer.accm = U32.unpack(dict(self.lcp_options)[2])[0]
        method = self.auth_with
        if method == "pap":
            user, pw = self.user.encode(), self.password.encode()
            self.send_cp(PAP, 1, self.next_id(), bytes([len(user)]) + user + bytes([len(pw)]) + pw)
        elif method is None:
            self.send_ipcp_request()

    def handle(self, protocol, info):
        code, ident, data = wppp.parse_cp(info) if protocol != IP else (None, None, info)
        if protocol == LCP:
            was_open = self.lcp_open
            if code == 1:
                opts = wppp.parse_options(data)
                nak = self.lcp_nak(opts) if self.lcp_nak else None
                if nak:
                    self.send_cp(LCP, 3, ident, wppp.build_options(nak))
                    return
                if was_open:            # renegotiation
                    self.lcp_acked = False
                    self.deframer.accm = 0xFFFFFFFF
                self.link_lcp = dict(opts)
                self.send_cp(LCP, 2, ident, data)
                self.lcp_acked_theirs = True
                if was_open:
                    self.send_lcp_request()
            elif code == 2 and ident == self.lcp_req:
                self.lcp_acked = True
            elif code == 3 and ident == self.lcp_req:
                nak = dict(wppp.parse_options(data))
                self.lcp_options = [(k, nak.get(k, v)) for k, v in self.lcp_options]
                self.send_lcp_request()
            elif code == 4 and ident == self.lcp_req:
                rej = dict(wppp.parse_options(data))
                self.lcp_options = [(k, v) for k, v in self.lcp_options if k not in rej]
                self.send_lcp_request()
            elif code == 5:
                self.send_cp(LCP, 6, ident)
                self.lcp_acked = self.lcp_acked_theirs = False
                self.ipcp_acked = self.ipcp_acked_theirs = False
                self.deframer.accm = 0xFFFFFFFF
            elif code == 9 and self.answer_echo:
                self.send_cp(LCP, 10, ident, b"\x5a\x5a\x12\x34" + data[4:])
            if not was_open and self.lcp_open:
                self._lcp_opened()
        elif protocol == IPCP:
            if code == 1:
                self.link_ipcp = dict(wppp.parse_options(data))
                self.send_cp(IPCP, 2, ident, data)
                self.ipcp_acked_theirs = True
            elif code == 2 and ident == self.ipcp_req:
                self.ipcp_acked = True
            elif code == 3 and ident == self.ipcp_req:
                nak = wppp.parse_options(data)
                have = dict(self.ipcp_options)
                for k, v in nak:
                    have[k] = v
                self.ipcp_options = list(have.items())
                self.send_ipcp_request()
            elif code == 4 and ident == self.ipcp_req:
                rej = dict(wppp.parse_options(data))
                self.ipcp_options = [(k, v) for k, v in self.ipcp_options if k not in rej]
                self.send_ipcp_request()
        elif protocol == PAP:
            if code == 2:
                self.auth_done = True
                self.send_ipcp_request()
        elif protocol == CHAP:
            if code == 1 and self.auth_with == "chap":
                import hashlib
                size = data[0]
                challenge = data[1:1 + size]
                value = hashlib.md5(bytes([ident]) + self.password.encode() + challenge).digest()
                self.send_cp(CHAP, 2, ident, bytes([16]) + value + self.user.encode())
            elif code == 3:
                if not self.auth_done:
                    self.auth_done = True
                    self.send_ipcp_request()

    # -- queries ------------------------------------------------------------------

    def of(self, protocol, code=None):
        out = []
        for p, info in self.received:
            if p != protocol:
                continue
            if code is None:
                out.append(info)
            elif wppp.parse_cp(info)[0] == code:
                out.append(wppp.parse_cp(info))
        return out


def make_link(**kw):
    kw.setdefault("lcp_echo_interval", 0)
    tapped = []
    link = PPPLink(LinkConfig(**kw), random.Random(1234), tap=lambda d, f: tapped.append((d, f)))
    link.tapped = tapped
    return link


def negotiated(link_kw=None, **client_kw):
    link = make_link(**(link_kw or {}))
    link.lower_up(0)
    client = Client(link, **client_kw)
    client.start()
    return link, client


def events_of(client, cls):
    return [e for e in client.events if isinstance(e, cls)]


# -- full negotiation ---------------------------------------------------------------


def test_pppd_like_client_reaches_link_up_with_dns():
    link, client = negotiated({"dns": ("192.0.2.53", "192.0.2.54")})
    assert link.is_up and link.phase == Phase.NETWORK
    assert events_of(client, LinkUp) == [LinkUp("10.0.0.1", "10.0.0.2", 1500)]
    # Our LCP request: ACCM 0, magic, PFC, ACFC; no MRU (default) and no auth.
    first = client.of(LCP, 1)[0]
    opts = wppp.parse_options(first[2])
    assert [k for k, _ in opts] == [2, 5, 7, 8]
    assert dict(opts)[2] == b"\0\0\0\0" and dict(opts)[5] != b"\0\0\0\0"
    # IPCP: our request asks for VJ (as pppd) and says 10.0.0.1; the client's address and DNS were Nak'd then acked.
    assert client.link_ipcp == {2: b"\x00\x2d\x0f\x01", 3: ip4("10.0.0.1")}
    naks = client.of(IPCP, 3)
    assert len(naks) == 1
    assert wppp.parse_options(naks[0][2]) == [(3, ip4("10.0.0.2")), (129, ip4("192.0.2.53")),
                                              (131, ip4("192.0.2.54"))]
    assert dict(client.ipcp_options) == {3: ip4("10.0.0.2"), 129: ip4("192.0.2.53"), 131: ip4("192.0.2.54")}
    assert client.ipcp_acked and client.lcp_acked
    assert link.lcp.state == State.OPENED and link.ipcp.state == State.OPENED
    assert link.mtu == 1500


def test_no_dns_configured_rejects_dns_options():
    link, client = negotiated()
    assert link.is_up
    rejects = client.of(IPCP, 4)
    assert len(rejects) == 1 and [k for k, _ in wppp.parse_options(rejects[0][2])] == [129, 131]
    assert dict(client.ipcp_options) == {3: ip4("10.0.0.2")}


def test_one_dns_server_rejects_secondary():
    link, client = negotiated({"dns": ("192.0.2.53",)})
    assert link.is_up
    assert [k for k, _ in wppp.parse_options(client.of(IPCP, 4)[0][2])] == [131]
    assert dict(client.ipcp_options)[129] == ip4("192.0.2.53")


def test_windows_like_options_are_rejected_and_link_comes_up():
    lcp_opts = [(1, b"\x05\xdc"), (2, b"\0\0\0\0"), (5, b"\x01\x02\x03\x04"), (7, b""), (8, b""),
                (13, b"\x06"), (17, b"\x06\x4e"), (19, b"\x01" + bytes(16)), (4, b"\xc0\x25\0\0\0\x64")]
    ipcp_opts = [(2, b"\x00\x2d\x0f\x01"), (3, b"\0\0\0\0"), (129, b"\0\0\0\0"), (130, b"\0\0\0\0"),
                 (131, b"\0\0\0\0"), (132, b"\0\0\0\0")]
    link, client = negotiated({"dns": ("192.0.2.53", "192.0.2.54")}, lcp_options=lcp_opts,
                              ipcp_options=ipcp_opts)
    assert link.is_up
    lcp_rej = wppp.parse_options(client.of(LCP, 4)[0][2])
    assert [k for k, _ in lcp_rej] == [13, 17, 19, 4]
    ipcp_rej = wppp.parse_options(client.of(IPCP, 4)[0][2])
    assert [k for k, _ in ipcp_rej] == [130, 132]       # VJ is accepted
    # the Reject repeats the options unmodified (RFC 1661 5.4)
    assert ipcp_rej[0] == (130, b"\0\0\0\0")
    assert link.ipcp.his_vj == (15, 1) and link.vj_active
    # With VJ off the same request has its VJ option rejected as it was sent.
    link, client = negotiated({"dns": ("192.0.2.53", "192.0.2.54"), "vj": False}, lcp_options=lcp_opts,
                              ipcp_options=ipcp_opts)
    ipcp_rej = wppp.parse_options(client.of(IPCP, 4)[0][2])
    assert link.is_up and ipcp_rej[0] == (2, b"\x00\x2d\x0f\x01") and not link.vj_active


def test_mru_below_minimum_is_naked_and_small_mru_accepted():
    link, client = negotiated(lcp_options=[(1, b"\x00\x40")] + PPPD_LCP)
    nak = client.of(LCP, 3)
    assert wppp.parse_options(nak[0][2]) == [(1, struct.pack("!H", 128))]
    assert link.is_up and link.mtu == 128
    link, client = negotiated(lcp_options=[(1, struct.pack("!H", 1000))] + PPPD_LCP)
    assert client.of(LCP, 3) == []
    assert events_of(client, LinkUp)[0].mtu == 1000 and link.mtu == 1000


def test_our_mru_is_requested_only_when_not_default():
    link, client = negotiated({"mru": 1000})
    assert dict(wppp.parse_options(client.of(LCP, 1)[0][2]))[1] == struct.pack("!H", 1000)
    assert link.is_up
    # we still take full-size frames (RFC 1661 6.1)
    assert link.deframer.mru >= 1500


def test_lcp_renegotiation_by_peer_takes_link_down_then_up():
    link, client = negotiated()
    client.events.clear()
    client.lcp_acked = False
    client.ipcp_acked = client.ipcp_acked_theirs = False
    client.deframer.accm = 0xFFFFFFFF
    client.send_lcp_request()
    client.run()
    kinds = [type(e) for e in client.events]
    assert kinds == [LinkDown, LinkUp]
    assert client.events[0].reason == "peer renegotiates"
    assert link.is_up


# -- ACCM and compression ---------------------------------------------------------------


def _body(raw):
    assert raw[:1] == b"\x7e" and raw[-1:] == b"\x7e"
    return raw[1:-1]


def test_control_characters_escaped_before_lcp_opened_and_not_after():
    link = make_link()
    link.lower_up(0)
    out = link.take_output()
    assert out and all(urgent for urgent, _ in out)
    for _, raw in out:
        body = _body(raw)
        assert not any(b < 0x20 for b in body)         # every control char escaped
        assert b"\x7d\x20" in body                      # 0x00 went as 0x7D 0x20
    link.lower_down(0)
    link, client = negotiated()
    client.raw_out.clear()
    payload = bytes(range(0, 40)) * 4
    packet = b"\x45\x00\x00\xb4" + payload
    assert link.send_ip(packet, 10)
    client.collect()
    (urgent, raw), = client.raw_out
    assert not urgent
    body = _body(raw)
    assert any(b < 0x20 for b in body)                  # peer asked ACCM 0: sent as they are
    # ACFC and PFC: the frame is the 1-byte protocol and the packet, then the FCS.
    assert hdlc.Deframer(accm=0).feed(raw) == [b"\x21" + packet]
    assert client.received[-1] == (IP, packet)


def test_lcp_configure_packets_use_default_accm_even_when_open():
    link, client = negotiated()
    client.raw_out.clear()
    link.lcp.fsm.send(5, 1, b"\x00\x01")        # a Terminate-Request with control chars
    link.lcp.fsm.send(9, 2, b"\x00\x00\x00\x00")  # an Echo-Request
    client.collect()
    term, echo = [_body(raw) for _, raw in client.raw_out]
    assert not any(b < 0x20 for b in term)
    assert term.startswith(b"\xff\x7d\x23\xc0\x21")     # not compressed either
    assert any(b < 0x20 for b in echo)


def test_receive_side_keeps_control_characters_after_lcp_opened():
    link, client = negotiated()
    packet = b"\x45\x00\x00\x1c" + bytes(range(0, 24))
    client.send(IP, packet)          # the client escapes nothing now (ACCM 0)
    assert any(b < 0x20 for b in client.encode(IP, packet)[1:-1])
    assert events_of(client, IPReceived) == [IPReceived(packet)]


def test_receive_side_drops_unescaped_control_characters_before_opened():
    link = make_link()
    link.lower_up(0)
    link.take_output()
    req = wppp.build_cp(1, 7, wppp.build_options(PPPD_LCP))
    raw = hdlc.encode_frame(wppp.build_frame(LCP, req), 0xFFFFFFFF)
    # modem noise: XON/XOFF inserted into the escaped stream are deleted (RFC 1662 7.1)
    noisy = raw[:5] + b"\x11\x13" + raw[5:]
    link.receive_data(noisy, 0)
    frames = [wppp.parse_frame(f) for _, r in link.take_output() for f in hdlc.Deframer().feed(r)]
    acks = [wppp.parse_cp(i) for p, i in frames if p == LCP and i[0] == 2]
    assert acks == [(2, 7, wppp.build_options(PPPD_LCP))]
    assert link.deframer.bad_fcs == 0


def test_frames_after_the_opening_ack_in_the_same_read_use_the_new_accm():
    link = make_link()
    link.lower_up(0)
    client = Client(link)
    client.auto = False
    ours = client.collect()
    (_, info), = ours
    our_id = wppp.parse_cp(info)[1]
    client.link_lcp = dict(wppp.parse_options(wppp.parse_cp(info)[2]))
    client.send_lcp_request()                  # link acks it: Ack-Sent
    assert link.lcp.state == State.ACK_SENT
    client.collect()
    # The client acks ours and, now open, at once sends IPCP with ACCM 0: one read.
    client.lcp_acked = client.lcp_acked_theirs = True
    client.deframer.accm = 0
    ack = hdlc.encode_frame(wppp.build_frame(LCP, wppp.build_cp(2, our_id, info[4:])), 0xFFFFFFFF)
    ipcp = client.encode(IPCP, wppp.build_cp(1, 9, wppp.build_options([(3, b"\0\0\0\0")])))
    assert b"\x00" in ipcp                     # really unescaped
    client.send_raw(ack + ipcp)
    assert link.lcp.state == State.OPENED
    replies = [wppp.parse_cp(i) for p, i in client.collect() if p == IPCP]
    assert (3, 9, wppp.build_options([(3, ip4("10.0.0.2"))])) in replies


# -- robustness ---------------------------------------------------------------------


def test_unknown_protocols_get_protocol_reject_while_open():
    # With compression off CCP is one of the protocols we do not speak (as pppd's noccp).
    link, client = negotiated({"compression": "none"})
    for proto, info in ((wppp.PROTO_IPV6CP, b"\x01\x01\x00\x0e\x01\x0a" + bytes(8)),
                        (wppp.PROTO_CCP, b"\x01\x02\x00\x04"), (wppp.PROTO_IPV6, b"\x60" + bytes(39))):
        client.send(proto, info)
        client.collect()
        code, ident, data = client.of(LCP, 8)[-1]
        assert data == struct.pack("!H", proto) + info
    assert link.protocol_rejects_sent == 3
    assert link.is_up


def test_protocol_reject_log_lines_are_throttled_to_powers_of_two(caplog):
    link, client = negotiated()
    with caplog.at_level(logging.INFO, logger="pyslirp.ppp"):
        for _ in range(9):
            client.send(wppp.PROTO_IPV6CP, b"\x01\x02\x00\x04")      # a protocol we do not speak
            client.collect()
    assert link.protocol_rejects_sent == 9
    lines = [r.getMessage() for r in caplog.records if "Protocol-Reject sent" in r.getMessage()]
    assert [line.rsplit("(", 1)[1] for line in lines] == ["%d so far)" % n for n in (1, 2, 4, 8)]


def test_unknown_protocol_before_lcp_open_is_silently_dropped():
    link = make_link()
    link.lower_up(0)
    link.take_output()
    raw = hdlc.encode_frame(wppp.build_frame(wppp.PROTO_IPV6CP, b"\x01\x01\x00\x04"))
    link.receive_data(raw, 0)
    assert link.take_output() == [] and link.counters["before_lcp_open"] == 1


def test_protocol_reject_is_truncated_to_peer_mru():
    link, client = negotiated(lcp_options=[(1, struct.pack("!H", 200))] + PPPD_LCP)
    client.send(wppp.PROTO_IPV6, bytes(range(256)) * 2)
    client.collect()
    _, _, data = client.of(LCP, 8)[-1]
    assert len(data) + 4 == 200 and data[2:] == (bytes(range(256)) * 2)[:194]


def test_unknown_lcp_code_gets_code_reject():
    link, client = negotiated()
    pkt = wppp.build_cp(0x20, 5, b"hello")
    client.send(LCP, pkt)
    client.collect()
    assert client.of(LCP, 7)[-1][2] == pkt
    assert link.is_up


def test_identification_and_discard_are_accepted_silently():
    link, client = negotiated()
    client.send_cp(LCP, 12, 3, b"\0\0\0\0MSRASV5.20")
    client.send_cp(LCP, 11, 4, b"\0\0\0\0junk")
    assert client.collect() == [] and link.is_up


def test_ip_before_ipcp_open_is_dropped_and_send_ip_refused():
    link = make_link()
    link.lower_up(0)
    assert link.send_ip(b"\x45" + bytes(19), 0) is False
    assert link.counters["ip_send_not_up"] == 1
    client = Client(link, ipcp_options=[])
    client.auto = False
    client.collect()
    link.take_output()
    client.lcp_acked = client.lcp_acked_theirs = True    # pretend, to send compressed
    client.link_lcp = {}
    client.send(IP, b"\x45" + bytes(19))
    assert link.counters["before_lcp_open"] == 1


def test_ip_flows_both_ways_when_up():
    link, client = negotiated()
    pkt = b"\x45\x00\x00\x14" + bytes(16)
    client.send(IP, pkt)
    assert events_of(client, IPReceived) == [IPReceived(pkt)]
    assert link.send_ip(pkt, 5)
    client.collect()
    assert client.received[-1] == (IP, pkt)


def test_tap_sees_every_frame_in_and_out():
    link, client = negotiated()
    ins = [f for d, f in link.tapped if d == "in"]
    outs = [f for d, f in link.tapped if d == "out"]
    assert len(ins) == link.frames_in and len(outs) == link.frames_out
    assert [wppp.parse_frame(f) for f in outs] == client.received
    # frames as received: the client's LCP frames carry address/control, its later IP ones not
    assert all(f[:2] == b"\xff\x03" for f in ins if f[2:4] == b"\xc0\x21")
    assert any(f[:2] == b"\x80\x21" for f in ins)


def _replay(chunks, **kw):
    link = make_link(**kw)
    link.lower_up(0)
    for chunk in chunks:
        link.receive_data(chunk, 0)
    frames = [f for _, raw in link.take_output() for f in hdlc.Deframer(accm=0).feed(raw)]
    return frames, link.take_events(), link.is_up


@pytest.mark.parametrize("kw", [{}, {"require_auth": "chap", "secrets": (("u", "p"),)}])
def test_chunking_of_the_input_does_not_matter(kw):
    auth = {"user": "u", "password": "p", "auth_with": "chap"} if kw else {}
    link, client = negotiated(kw, **auth)
    client.send(IP, b"\x45\x00\x00\x18" + bytes(range(20)))
    assert link.is_up
    whole = _replay(client.raw_in, **kw)
    assert whole[2] and IPReceived(b"\x45\x00\x00\x18" + bytes(range(20))) in whole[1]
    stream = b"".join(client.raw_in)
    assert _replay([stream], **kw) == whole
    assert _replay([stream[i:i + 1] for i in range(len(stream))], **kw) == whole
    rng = random.Random(3)
    cuts = sorted(rng.sample(range(1, len(stream)), 25))
    assert _replay([stream[a:b] for a, b in zip([0] + cuts, cuts + [len(stream)])], **kw) == whole


def test_random_control_packets_never_raise():
    rng = random.Random(2024)
    protos = [LCP, IPCP, PAP, CHAP, IP, wppp.PROTO_IPV6CP]
    for trial in range(60):
        kw = rng.choice([{}, {"require_auth": "pap", "secrets": (("u", "p"),)},
                         {"require_auth": "chap", "secrets": (("u", "p"),)}, {"dns": ("1.2.3.4",)}])
        if rng.random() < 0.5:
            link = make_link(**kw)
            link.lower_up(0)
        else:
            auth = {"user": "u", "password": "p", "auth_with": kw["require_auth"]} if "secrets" in kw else {}
            link, _ = negotiated(kw, **auth)
        now = 0
        for _ in range(40):
            proto = rng.choice(protos)
            code = rng.choice([1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, rng.randrange(256)])
            opts = [(rng.choice([1, 2, 3, 5, 7, 8, 129, 131, rng.randrange(256)]),
                     bytes(rng.getrandbits(8) for _ in range(rng.choice([0, 2, 3, 4, 6]))))
                    for _ in range(rng.randrange(4))]
            body = wppp.build_options(opts) if rng.random() < 0.7 else \
                bytes(rng.getrandbits(8) for _ in range(rng.randrange(12)))
            info = wppp.build_cp(code, rng.randrange(256), body)
            if rng.random() < 0.2:
                info = info[:rng.randrange(len(info) + 1)]
            link.receive_data(hdlc.encode_frame(wppp.build_frame(proto, info)), now)
            now += rng.randrange(0, 4000)
            while link.get_timer() is not None and link.get_timer() <= now:
                link.handle_timer(link.get_timer())
            for urgent, raw in link.take_output():
                for frame in hdlc.Deframer(accm=0).feed(raw):
                    wppp.parse_frame(frame)
            link.take_events()
        link.close("done", now)
        for _ in range(10):
            t = link.get_timer()
            if t is None:
                break
            link.handle_timer(t)
        assert link.is_dead


def test_garbage_never_raises():
    rng = random.Random(99)
    link, client = negotiated()
    for _ in range(300):
        n = rng.randrange(1, 80)
        junk = bytes(rng.getrandbits(8) for _ in range(n))
        if rng.random() < 0.5:
            # a well-framed frame with random content: reaches the parsers
            junk = hdlc.encode_frame(junk, 0)
        link.receive_data(junk, 0)
    link.take_output()
    link.take_events()


# -- keepalive --------------------------------------------------------------------------


def test_echo_sent_at_interval_not_before():
    link, client = negotiated({"lcp_echo_interval": 30, "lcp_echo_failure": 4})
    t0 = client.now
    client.advance(t0 + 29999)
    assert client.of(LCP, 9) == []
    client.advance(t0 + 30000)
    echo, = client.of(LCP, 9)
    assert echo[2] == link.lcp.got.magic.to_bytes(4, "big")


def test_echo_failure_takes_link_down_then_a_new_client_can_dial_in():
    link, client = negotiated({"lcp_echo_interval": 10, "lcp_echo_failure": 3}, answer_echo=False)
    client.advance(39999)
    assert len(client.of(LCP, 9)) == 3 and link.is_up
    client.advance(40000)
    assert not link.is_up
    assert events_of(client, LinkDown) == [LinkDown("echo timeout")]
    assert link.lcp_counters["echoes_missed"] == 3 and link.lcp_counters["echoes_sent"] == 3
    # the link said goodbye and went back to listening
    assert len(client.of(LCP, 5)) == 1
    client.auto = False
    client.advance(60000)
    assert link.lcp.state == State.STOPPED and link.phase == Phase.DEAD
    assert link.get_timer() is None
    fresh = Client(link, now=100000)
    fresh.start()
    assert link.is_up and events_of(fresh, LinkUp)


def test_echo_answered_keeps_link_up():
    link, client = negotiated({"lcp_echo_interval": 10, "lcp_echo_failure": 2})
    client.advance(200000)
    assert link.is_up and events_of(client, LinkDown) == []
    assert len(client.of(LCP, 9)) == 20
    assert link.lcp_counters["echo_replies"] == 20 and link.lcp_counters["echoes_missed"] == 0


def test_traffic_counts_as_proof_of_life():
    link, client = negotiated({"lcp_echo_interval": 10, "lcp_echo_failure": 1}, answer_echo=False)
    for t in range(5000, 100000, 5000):
        client.advance(t)
        client.send(IP, b"\x45" + bytes(19))
    assert link.is_up and client.of(LCP, 9) == []


def test_echo_request_from_peer_answered_with_our_magic():
    link, client = negotiated()
    client.send_cp(LCP, 9, 77, b"\x5a\x5a\x12\x34extra")
    client.collect()
    assert client.of(LCP, 10) == [(10, 77, link.lcp.got.magic.to_bytes(4, "big") + b"extra")]


# -- termination and new sessions ------------------------------------------------------


def test_terminate_from_peer_then_new_session_from_scratch():
    link, client = negotiated({"dns": ("192.0.2.53",)})
    client.send_cp(LCP, 5, 9, b"User request")
    client.collect()
    assert client.of(LCP, 6)[-1][:2] == (6, 9)
    assert events_of(client, LinkDown) == [LinkDown("peer requested termination", administrative=True)]
    assert not link.is_up and link.phase == Phase.TERMINATE
    client.advance(client.now + 3000)
    assert link.lcp.state == State.STOPPED
    first_magic = link.lcp.got.magic
    fresh = Client(link, now=client.now + 1000)
    fresh.start()
    assert link.is_up and events_of(fresh, LinkUp) == [LinkUp("10.0.0.1", "10.0.0.2", 1500)]
    # negotiated from scratch: a new LCP request with a new magic, IPCP Nak'd again
    assert fresh.of(LCP, 1) and link.lcp.got.magic != first_magic
    assert len(fresh.of(IPCP, 3)) == 1
    assert link.sessions == 2


def test_close_sends_terminate_request_retransmits_then_dead():
    link, client = negotiated()
    client.auto = False
    link.close("shutting down", 1000)
    client.now = 1000
    client.collect()
    assert [c[0] for c in client.of(LCP, 5)] == [5]
    assert client.of(LCP, 5)[0][2] == b"shutting down"
    assert events_of(client, LinkDown) == [LinkDown("shutting down", administrative=True)]
    assert not link.is_dead
    client.advance(3999)
    assert len(client.of(LCP, 5)) == 1
    client.advance(4000)
    assert len(client.of(LCP, 5)) == 2 and not link.is_dead
    client.advance(6999)
    assert not link.is_dead
    client.advance(7000)
    assert link.is_dead and link.phase == Phase.DEAD and link.get_timer() is None
    # a dead link refuses new sessions: a Configure-Request gets a Terminate-Ack
    client.send_lcp_request()
    client.collect()
    assert client.received[-1][0] == LCP and client.received[-1][1][0] == 6


def test_close_with_terminate_ack_is_dead_at_once():
    link, client = negotiated()
    link.close("bye", 100)
    client.now = 100
    client.run()
    assert link.is_dead


def test_close_before_anything_is_dead():
    link = make_link()
    link.close("bye", 0)
    assert link.is_dead
    link = make_link()
    link.lower_up(0)
    link.close("bye", 0)
    assert not link.is_dead
    link.handle_timer(3000)
    link.handle_timer(6000)
    assert link.is_dead


def test_max_configure_then_listening_then_client_dials_in():
    link = make_link()
    link.lower_up(0)
    client = Client(link)
    client.auto = False
    client.advance(10 ** 6)
    assert len(client.of(LCP, 1)) == 10
    assert link.lcp.state == State.STOPPED and link.get_timer() is None
    client.auto = True
    client.received.clear()
    client.start()
    assert link.is_up


def test_lower_down_and_up_again():
    link, client = negotiated()
    link.lower_down(50)
    assert events_of(client, LinkDown) == [] and link.take_events() == [LinkDown("lower layer down")]
    assert link.lcp.state == State.STARTING and not link.is_up
    link.lower_up(100)
    fresh = Client(link, now=100)
    fresh.start()
    assert link.is_up


def test_protocol_reject_of_ipcp_ends_the_session():
    link, client = negotiated()
    client.auto = False
    client.send_cp(LCP, 8, 3, struct.pack("!H", IPCP) + b"\x01\x01\x00\x04")
    assert not link.is_up
    assert [e.reason for e in events_of(client, LinkDown)] == ["protocol rejected by peer"]
    client.advance(client.now + 20000)
    # IPCP gave up, so LCP terminated (Max-Terminate requests, unanswered) and the link listens again
    assert [d for _, _, d in client.of(LCP, 5)] == [b"no network protocol running"] * 2
    assert link.lcp.state == State.STOPPED


def test_peer_insisting_on_its_address_is_rejected_after_max_failure(caplog):
    link = make_link(max_failure=3)
    link.lower_up(0)
    client = Client(link, ipcp_options=[(3, ip4("10.9.9.9"))])
    stubborn = []
    orig = client.handle

    def handle(protocol, info):
        if protocol == IPCP and info[0] == 3:
            stubborn.append(info)
            client.send_ipcp_request()    # ignore the Nak: ask for 10.9.9.9 again
            return
        orig(protocol, info)
    client.handle = handle
    with caplog.at_level(logging.WARNING, logger="pyslirp.ppp"):
        client.start()
    assert len(stubborn) == 3
    rej = client.of(IPCP, 4)
    assert wppp.parse_options(rej[0][2]) == [(3, ip4("10.9.9.9"))]
    assert "insists" in caplog.text


def test_looped_back_line_is_detected(caplog):
    link = make_link()
    link.lower_up(0)
    rounds = 0
    with caplog.at_level(logging.WARNING, logger="pyslirp.ppp"):
        while rounds < 40:
            out = link.take_output()
            if not out:
                break
            rounds += 1
            for _, raw in out:
                link.receive_data(raw, 0)        # the line echoes everything back
    assert rounds < 40                           # it stopped talking to itself
    assert link.lcp.state == State.STOPPED and link.get_timer() is None
    assert link.lcp.looped_back
    assert link.lcp_counters["magic_equal"] >= 1
    assert "looped back" in caplog.text
    assert not link.is_up


def test_counters_are_visible_to_the_metrics():
    from pyslirp import metrics
    from pyslirp.core import Core
    from pyslirp.net.stack import StackConfig
    link, client = negotiated({"lcp_echo_interval": 10, "compression": "none"})
    client.send(wppp.PROTO_CCP, b"\x01\x01\x00\x04")
    client.advance(10000)
    snap = metrics.collect(Core(link.config, StackConfig(), random.Random(1), link=link), 10000)
    assert snap.value("pyslirp_ppp_frames_total", direction="in") == link.frames_in > 0
    assert snap.value("pyslirp_ppp_frames_total", direction="out") == link.frames_out > 0
    assert snap.value("pyslirp_link_up") == 1
    assert link.protocol_rejects_sent == 1 and link.counters["protocol_reject"] == 1
    assert link.lcp_counters["echoes_sent"] == 1 and link.lcp_counters["echo_replies"] == 1
    assert snap.value("pyslirp_lcp_echo_rtt_seconds") == 0.0      # the scripted client answers at once