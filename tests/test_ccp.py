"""CCP with Deflate (RFC 1962, RFC 1979) against a scripted peer that behaves as pppd over the Linux kernel.

The peer (``CcpClient``) extends test_link's pppd-like client with what pppd's ccp.c and Linux's ppp_generic /
ppp_deflate do: it asks for Deflate 15 under both numbers and BSD-Compress, starts its compressor when it *sends* a
Configure-Ack and its decompressor when it *receives* one (ppp_ccp_peek), stops its compressor when it receives a
Configure-Request and its decompressor when it sends one, both on a Terminate-Request/-Ack, sends each packet compressed only when shorter, always through the history, strips the
sync flush's empty stored block, adds every uncompressed packet it receives to its history, and resets on
Reset-Ack.  Its Deflate code is written from RFC 1979 and zlib here, independently of pyslirp/ppp/deflate.py.
Everything runs on the fake clock.
"""

import os
import random
import struct
import zlib

import pytest

from test_link import IP, IPCP, LCP, Client, events_of, make_link
from pyslirp.ppp import deflate
from pyslirp.ppp.ccp import CI_BSD_COMPRESS, CI_DEFLATE, CI_DEFLATE_DRAFT, RESET_ACK, RESET_REQUEST, RESYNC_MS
from pyslirp.ppp.events import IPReceived
from pyslirp.ppp.fsm import State
from pyslirp.wire import ppp as wppp
from pyslirp.wire.errors import ParseError

CCP = wppp.PROTO_CCP
COMP = 0x00FD
# Compressible text that does not change when the project's documents do: seeded prose from a fixed vocabulary.
_WORDS = ("the line link frame packet client server session window segment byte bytes serial modem PPP TCP IP "
          "compression header option request reply acknowledgment negotiation timer buffer queue flow route "
          "service proxy address port network host gateway stack thread socket data text figure rate delay "
          "and of to in a is that for on with as by it at from this be are or not can each when one every").split()
_rng = random.Random(1979)
TEXT = " ".join(_rng.choice(_WORDS) + ("." if _rng.random() < 0.08 else "") for _ in range(40000)).encode()


def dopt(kind, window, method=8, check=0):
    return (kind, bytes([((window - 8) << 4) | method, check]))


PPPD_CCP = [dopt(CI_DEFLATE, 15), dopt(CI_DEFLATE_DRAFT, 15), (CI_BSD_COMPRESS, b"\x2f")]


def ip_packet(payload):
    return b"\x45\x00" + struct.pack("!H", 20 + len(payload)) + bytes(16) + payload


def text_packet(rng, n=1000):
    start = rng.randrange(len(TEXT) - n)
    return ip_packet(TEXT[start:start + n])


class LinuxDeflate(object):
    """The peer's kernel side of one direction (RFC 1979 framing, Linux's choices)."""

    def __init__(self, window=15):
        self.window = window
        self.reset()

    def reset(self):
        self.tx = zlib.compressobj(6, zlib.DEFLATED, -self.window)
        self.rx = zlib.decompressobj(-15)
        self.tx_seq = self.rx_seq = 0

    @staticmethod
    def field(protocol):
        return bytes([protocol]) if protocol < 0x100 else struct.pack("!H", protocol)

    def compress(self, protocol, info):
        data = self.tx.compress(self.field(protocol) + info) + self.tx.flush(zlib.Z_SYNC_FLUSH)
        assert data[-4:] == b"\x00\x00\xff\xff"
        seq, self.tx_seq = self.tx_seq, (self.tx_seq + 1) & 0xFFFF
        data = data[:-4]
        if 2 + len(data) < len(info):
            return COMP, struct.pack("!H", seq) + data
        return protocol, info

    def decompress(self, info):
        seq = struct.unpack_from("!H", info)[0]
        assert seq == self.rx_seq, (seq, self.rx_seq)
        self.rx_seq = (seq + 1) & 0xFFFF
        body = info[2:]
        # Linux's inflater accepts a packet only if it ends inside the flush's stored block header
        # (zlib_inflateSyncPacket): all the data comes out of the packet alone, and the four octets
        # that complete the empty stored block produce nothing more.
        out = self.rx.decompress(body)
        assert self.rx.decompress(b"\x00\x00\xff\xff") == b""
        assert not body.endswith(b"\x00\x00\xff\xff") or len(body) < 8
        if out[0] & 1:
            return out[0], out[1:]
        return struct.unpack_from("!H", out)[0], out[2:]

    def incomp(self, protocol, info):
        data = self.field(protocol) + info
        self.rx_seq = (self.rx_seq + 1) & 0xFFFF
        assert self.rx.decompress(b"\x00" + struct.pack("<HH", len(data), len(data) ^ 0xFFFF) + data) == data


class CcpClient(Client):
    def __init__(self, link, ccp_options=None, lose_next_compressed=False, **kw):
        Client.__init__(self, link, **kw)
        self.ccp_options = list(PPPD_CCP if ccp_options is None else ccp_options)
        self.kernel = LinuxDeflate()
        self.tx_run = self.rx_run = False        # SC_COMP_RUN, SC_DECOMP_RUN
        self.ccp_req = None
        self.ccp_open = False
        self.ccp_nak = None                      # callable(options) -> Nak options or None
        self.ccp_ack_theirs = self.ccp_acked = False
        self.link_ccp = None                     # the link's last CCP request
        self.ccp_seen = []                       # (code, ident, data) of every CCP packet received
        self.decompressed = []                   # (protocol, info) the link sent compressed
        self.plain_ip = []                       # IP packets the link sent uncompressed
        self.reset_acks = 0

    # the kernel's peek on CCP packets ----------------------------------------------

    def peek(self, info, outbound):
        code = info[0]
        if code == 1:
            # A Configure-Request is about what its sender receives.
            if outbound:
                self.rx_run = False
            else:
                self.tx_run = False
        elif code in (5, 6):
            self.tx_run = self.rx_run = False
        elif code == 2:
            if outbound:
                self.kernel.tx = zlib.compressobj(6, zlib.DEFLATED, -15)
                self.kernel.tx_seq = 0
                self.tx_run = True
            else:
                self.kernel.rx = zlib.decompressobj(-15)
                self.kernel.rx_seq = 0
                self.rx_run = True
        elif code == 15:
            if outbound:
                self.kernel.tx = zlib.compressobj(6, zlib.DEFLATED, -15)
                self.kernel.tx_seq = 0
            else:
                self.kernel.rx = zlib.decompressobj(-15)
                self.kernel.rx_seq = 0

    def encode(self, protocol, info):
        if protocol == CCP and info:
            self.peek(info, outbound=True)
        elif self.tx_run and protocol <= 0x3FFF:
            protocol, info = self.kernel.compress(protocol, info)
        return Client.encode(self, protocol, info)

    def collect(self):
        frames = Client.collect(self)
        out = []
        for protocol, info in frames:
            if protocol == COMP:
                assert self.rx_run, "compressed packet before our decompressor runs"
                protocol, info = self.kernel.decompress(info)
                self.decompressed.append((protocol, info))
            elif self.rx_run and protocol <= 0x3FFF:
                self.kernel.incomp(protocol, info)
            elif protocol == CCP:
                self.peek(info, outbound=False)     # the kernel sees it before pppd does
                self.ccp_seen.append(wppp.parse_cp(info))
            out.append((protocol, info))
        # the received list keeps the decompressed view
        del self.received[len(self.received) - len(frames):]
        self.received.extend(out)
        for protocol, info in frames:
            if protocol == IP:
                self.plain_ip.append(info)
        return out

    def handle(self, protocol, info):
        if protocol != CCP:
            Client.handle(self, protocol, info)
            if protocol == IPCP and self.ipcp_acked and self.ipcp_acked_theirs and self.ccp_req is None:
                self.send_ccp_request()
            return
        code, ident, data = wppp.parse_cp(info)
        if code == 1:
            nak = self.ccp_nak(wppp.parse_options(data)) if self.ccp_nak else None
            if nak:
                self.send_cp(CCP, 3, ident, wppp.build_options(nak))
                return
            self.link_ccp = wppp.parse_options(data)
            self.send_cp(CCP, 2, ident, data)
            self.ccp_ack_theirs = True
        elif code == 2 and ident == self.ccp_req:
            self.ccp_acked = True
        elif code == 4 and ident == self.ccp_req:
            rej = dict(wppp.parse_options(data))
            self.ccp_options = [(k, v) for k, v in self.ccp_options if k not in rej]
            self.send_ccp_request()
        elif code == 3 and ident == self.ccp_req:
            self.send_ccp_request()
        elif code == RESET_REQUEST:
            self.send_cp(CCP, RESET_ACK, ident)
        elif code == RESET_ACK:
            self.reset_acks += 1
        self.ccp_open = self.ccp_acked and self.ccp_ack_theirs

    def send_ccp_request(self):
        self.ccp_req = self.next_id()
        self.ccp_acked = False
        self.send_cp(CCP, 1, self.ccp_req, wppp.build_options(self.ccp_options))


def ccp_session(link_kw=None, **client_kw):
    link = make_link(**(link_kw or {}))
    link.lower_up(0)
    client = CcpClient(link, **client_kw)
    client.start()
    client.run()
    return link, client


def test_pppd_defaults_open_deflate_both_ways():
    link, client = ccp_session()
    assert link.is_up and link.ccp.state == State.OPENED and client.ccp_open
    # BSD-Compress was rejected, alone and unmodified; Deflate 15 under both numbers was acknowledged.
    rejects = [d for c, _, d in client.ccp_seen if c == 4]
    assert rejects == [wppp.build_options([(CI_BSD_COMPRESS, b"\x2f")])]
    assert [c for c, _, _ in client.ccp_seen].count(3) == 0
    # Our request: what pppd asks for too.
    assert client.link_ccp == [dopt(CI_DEFLATE, 15), dopt(CI_DEFLATE_DRAFT, 15)]
    assert link.ccp.send_method == (CI_DEFLATE, 15) and link.ccp.receive_method == (CI_DEFLATE, 15)
    assert link.ccp.compressor is not None and link.ccp.decompressor is not None


def test_text_goes_compressed_noise_uncompressed_and_both_stay_in_step():
    link, client = ccp_session()
    rng = random.Random(5)
    sent = []
    for i in range(200):
        packet = ip_packet(os.urandom(rng.randrange(20, 1400))) if i % 4 == 3 else text_packet(rng)
        sent.append(packet)
        assert link.send_ip(packet, client.now)
    client.collect()
    got = [info for proto, info in client.received if proto == IP][-200:]
    assert got == sent
    counters = link.ccp_counters
    assert counters["compressed_out"] >= 140 and counters["uncompressed_out"] >= 40
    assert counters["bytes_after"] * 2 < counters["bytes_before"]
    # The line carried the random packets as plain IP and the text compressed.
    assert len(client.plain_ip) == counters["uncompressed_out"] and len(client.decompressed) >= 140


def test_the_peer_compresses_towards_us():
    link, client = ccp_session()
    rng = random.Random(6)
    sent = []
    for i in range(100):
        packet = ip_packet(os.urandom(300)) if i % 5 == 0 else text_packet(rng, rng.randrange(40, 1400))
        sent.append(packet)
        client.send(IP, packet)
    got = [e.packet for e in events_of(client, IPReceived)]
    assert got == sent
    assert link.ccp_counters["decompressed_in"] >= 70 and link.ccp_counters["uncompressed_in"] >= 20
    assert link.ccp_counters["decompress_errors"] == 0


def test_between_our_ack_and_opened_packets_go_plain_but_through_the_history():
    link = make_link()
    link.lower_up(0)
    client = CcpClient(link)
    client.start()
    client.run()
    assert link.is_up and link.ccp.state == State.OPENED
    # Renegotiate from the peer: its request stops both directions; we answer with our request and an Ack.
    client.ccp_acked = client.ccp_ack_theirs = False
    client.auto = False
    client.send_ccp_request()
    assert link.ccp.compressor is not None and link.ccp.state == State.ACK_SENT
    client.collect()
    rng = random.Random(7)
    packets = [text_packet(rng) for _ in range(5)]
    for packet in packets:
        link.send_ip(packet, client.now)
    frames = client.collect()
    # Not Opened: sent as they were, but our history took them (the peer's kernel adds them to its own).
    assert [info for proto, info in frames if proto == IP] == packets
    assert link.ccp.compressor.seq == 5 and client.kernel.rx_seq == 5
    # The peer acks our request: Opened, and compressed packets now decode against the shared history.
    (_, ident, data), = [(c, i, d) for c, i, d in client.ccp_seen if c == 1][-1:]
    client.send_cp(CCP, 2, ident, data)
    assert link.ccp.state == State.OPENED
    for packet in packets:
        link.send_ip(packet, client.now)
    client.collect()
    assert client.decompressed[-5:] == [(IP, p) for p in packets]
    assert link.ccp_counters["bytes_after"] < link.ccp_counters["bytes_before"]


def test_a_lost_compressed_frame_is_a_reset_request_and_the_reset_ack_resynchronises():
    link, client = ccp_session()
    rng = random.Random(8)
    packets = [text_packet(rng) for _ in range(12)]
    client.send(IP, packets[0])
    # The peer's kernel compresses packet 1 but the frame never arrives (sequence number used).
    client.kernel.compress(IP, packets[1])
    client.send(IP, packets[2])
    client.send(IP, packets[3])
    client.collect()
    got = [e.packet for e in events_of(client, IPReceived)]
    assert got == [packets[0]]
    reqs = [(c, i) for c, i, _ in client.ccp_seen if c == RESET_REQUEST]
    assert len(reqs) == 1 and link.ccp.resetting
    # Packet 3 came after the error: dropped too (its history is out of step as well).
    assert link.ccp_counters["decompress_errors"] == 1 and link.ccp_counters["dropped_while_resetting"] == 1
    # The peer answers: its kernel clears its compressor as the Reset-Ack goes, ours clears at its arrival.
    client.handle(CCP, wppp.build_cp(RESET_REQUEST, reqs[0][1]))
    client.collect()
    assert not link.ccp.resetting and link.ccp_counters["reset_acks_received"] == 1
    for packet in packets[4:]:
        client.send(IP, packet)
    assert [e.packet for e in events_of(client, IPReceived)] == [packets[0]] + packets[4:]
    assert link.ccp_counters["decompressed_in"] >= 8
    # Nothing was dropped after the Reset-Ack: the request is not repeated.
    client.advance(client.now + 5000)
    client.collect()
    assert len([c for c, _, _ in client.ccp_seen if c == RESET_REQUEST]) == 1


def test_reset_request_is_repeated_only_while_packets_keep_failing():
    link, client = ccp_session()
    rng = random.Random(9)
    client.auto = False
    client.kernel.compress(IP, text_packet(rng))     # lost
    client.send(IP, text_packet(rng))                # sequence out of step: Reset-Request
    client.collect()
    first = [i for c, i, _ in client.ccp_seen if c == RESET_REQUEST]
    client.send(IP, text_packet(rng))                # dropped while resetting
    assert link.ccp_counters["dropped_while_resetting"] == 1
    t = link.get_timer()
    assert t == client.now + 1000 or t <= client.now + 1000
    assert len(first) == 1
    client.advance(client.now + 999)
    client.collect()
    assert len([c for c, _, _ in client.ccp_seen if c == RESET_REQUEST]) == 1
    client.advance(client.now + 1)
    client.collect()
    again = [i for c, i, _ in client.ccp_seen if c == RESET_REQUEST]
    assert len(again) == 2 and again[0] == again[1] == first[0]       # the same Identifier
    client.advance(client.now + 5000)
    client.collect()
    assert len([c for c, _, _ in client.ccp_seen if c == RESET_REQUEST]) == 2


def test_a_lost_reset_request_is_sent_again_at_the_next_dropped_packet():
    """Seen through pppd on a noisy line: our Reset-Request was lost, nothing came for a second (the peer's TCP
    backing off), and every retransmission it then sent compressed against the frame we had lost: dropped
    while resetting, for good, since the timer had already run out with nothing to repeat."""
    link, client = ccp_session()
    rng = random.Random(11)
    client.auto = False
    client.kernel.compress(IP, text_packet(rng))     # lost
    client.send(IP, text_packet(rng))                # sequence out of step: Reset-Request ...
    client.collect()
    client.ccp_seen[:] = []                          # ... lost on the line as well
    client.advance(client.now + 1000)                # the timer runs out: nothing was dropped meanwhile
    client.collect()
    assert client.ccp_seen == [] and link.ccp.resetting
    client.advance(client.now + 1000)
    client.send(IP, text_packet(rng))                # the peer's retransmission, dropped while resetting
    client.collect()
    again = [i for c, i, _ in client.ccp_seen if c == RESET_REQUEST]
    assert len(again) == 1, client.ccp_seen          # asked again at once, as pppd does
    client.handle(CCP, wppp.build_cp(RESET_REQUEST, again[0]))
    client.collect()
    assert not link.ccp.resetting
    packet = text_packet(rng)
    client.send(IP, packet)
    assert events_of(client, IPReceived)[-1].packet == packet


def noise_packet(rng, n=1400):
    return ip_packet(bytes(rng.getrandbits(8) for _ in range(n)))


@pytest.mark.parametrize("resync", [True, False])
def test_a_retransmission_timeout_restarts_the_histories_so_the_retransmission_decompresses(resync):
    """A TCP segment lost on the line, then its retransmission (seen on a noisy line with Linux pppd): the
    segment is incompressible and goes plain, but through our history, so its retransmission compresses
    very well -- against an original the peer never got.  Linux's decompressor is then out of step
    (ppp_deflate z_decompress: bad sequence number) and can never decode the retransmission.  The Core's
    retransmission timeout signal (peer_lost_frame) sends a Reset-Ack first, which restarts both histories."""
    link, client = ccp_session()
    rng = random.Random(11)
    client.auto = False
    assert link.send_ip(text_packet(rng), client.now)
    client.collect()
    segment = noise_packet(rng)
    assert link.send_ip(segment, client.now)
    lost = link.take_output()                           # the line damages it: the peer never sees it
    assert len(lost) == 1
    client.now += 1000
    if resync:
        link.peer_lost_frame(client.now)                # the Core saw a retransmission timeout
    assert link.send_ip(segment, client.now)            # the retransmission
    follow = text_packet(rng)
    assert link.send_ip(follow, client.now)
    if not resync:
        # The retransmission went compressed, with the next sequence number after the lost frame's.
        frames = []
        for _, raw in link.take_output():
            frames.extend(wppp.parse_frame(f) for f in client.deframer.feed(raw))
        assert frames[0][0] == COMP and len(frames[0][1]) < 100
        assert struct.unpack_from("!H", frames[0][1])[0] != client.kernel.rx_seq
        return
    frames = client.collect()
    assert frames[0][0] == CCP and wppp.parse_cp(frames[0][1])[0] == RESET_ACK      # ahead of the data
    assert [info for proto, info in client.received if proto == IP][-2:] == [segment, follow]
    assert client.decompressed[-1] == (IP, follow)      # in step again: compressed and decoded
    assert link.ccp_counters["resyncs"] == 1


def test_resyncs_are_rate_limited_and_only_when_the_history_holds_something():
    link, client = ccp_session()
    rng = random.Random(12)
    client.auto = False
    acks = lambda: [wppp.parse_cp(info)[0] for proto, info in client.collect() if proto == CCP]  # noqa: E731
    link.send_ip(text_packet(rng), client.now)
    link.peer_lost_frame(client.now)
    assert acks() == [RESET_ACK] and link.ccp.compressor.seq == 0
    link.peer_lost_frame(client.now + 2000)             # nothing sent since: nothing to restart
    assert acks() == []
    link.send_ip(text_packet(rng), client.now)
    link.peer_lost_frame(client.now + RESYNC_MS - 1)    # too soon after the last one
    assert acks() == []
    link.peer_lost_frame(client.now + RESYNC_MS)
    assert acks() == [RESET_ACK]
    assert link.ccp_counters["resyncs"] == 2
    packet = text_packet(rng)
    link.send_ip(packet, client.now)
    client.collect()
    assert client.decompressed[-1] == (IP, packet)


def test_peer_reset_request_clears_our_compressor_with_the_ack():
    link, client = ccp_session()
    rng = random.Random(10)
    for _ in range(3):
        link.send_ip(text_packet(rng), client.now)
    client.collect()
    assert link.ccp.compressor.seq == 3
    client.auto = False
    client.send_cp(CCP, RESET_REQUEST, 0x77)
    acks = [(c, i) for _, _, c, i in [(None, None) + wppp.parse_cp(info)[:2] for p, info in client.collect()
                                       if p == CCP]]
    assert acks == [(RESET_ACK, 0x77)]
    assert link.ccp.compressor.seq == 0
    packet = text_packet(rng)
    link.send_ip(packet, client.now)
    client.collect()
    assert client.decompressed[-1] == (IP, packet)


@pytest.mark.parametrize("option,reply_code,reply", [
    (dopt(CI_DEFLATE, 8), 3, dopt(CI_DEFLATE, 9)),                 # zlib's window-8 bug: 9 instead
    (dopt(CI_DEFLATE, 15, method=7), 3, dopt(CI_DEFLATE, 15)),     # not Deflate: our best offer
    (dopt(CI_DEFLATE, 15, check=1), 3, dopt(CI_DEFLATE, 15)),
    ((CI_DEFLATE, b"\x78"), 4, (CI_DEFLATE, b"\x78")),            # wrong length
    ((CI_BSD_COMPRESS, b"\x2f"), 4, (CI_BSD_COMPRESS, b"\x2f")),
    ((1, b""), 4, (1, b"")),                                      # Predictor-1
    ((18, b"\x01\x00\x00\x40"), 4, (18, b"\x01\x00\x00\x40")),    # MPPC
    (dopt(CI_DEFLATE, 12), 2, dopt(CI_DEFLATE, 12)),
])
def test_judging_the_peers_options(option, reply_code, reply):
    link, client = ccp_session(ccp_options=[])
    client.auto = False
    client.send_cp(CCP, 1, 0x31, wppp.build_options([option]))
    replies = [wppp.parse_cp(info) for p, info in client.collect() if p == CCP]
    answer = [r for r in replies if r[1] == 0x31]
    assert answer == [(reply_code, 0x31, wppp.build_options([reply]))], replies
    if reply_code == 2:
        assert link.ccp.send_method == (CI_DEFLATE, 12) and link.ccp.compressor.window_bits == 12


def test_a_peer_insisting_on_window_8_is_rejected_after_max_failure():
    link, client = ccp_session(ccp_options=[dopt(CI_DEFLATE, 8)])
    naks = [c for c, _, _ in client.ccp_seen if c == 3]
    rejects = [d for c, _, d in client.ccp_seen if c == 4]
    assert len(naks) == 5 and rejects == [wppp.build_options([dopt(CI_DEFLATE, 8)])]
    assert link.ccp.state == State.OPENED and link.ccp.compressor is None


def test_a_peer_that_can_do_nothing_ends_with_empty_requests_and_no_loop():
    # Only BSD-Compress offered, and our Deflate rejected: both sides end up asking for nothing.
    link = make_link()
    link.lower_up(0)
    client = CcpClient(link, ccp_options=[(CI_BSD_COMPRESS, b"\x2f")])
    client.ccp_nak = None
    orig = client.handle

    def handle(protocol, info):
        if protocol == CCP and info[0] == 1 and wppp.parse_cp(info)[2]:
            code, ident, data = wppp.parse_cp(info)
            client.ccp_seen.append((code, ident, data))
            client.send_cp(CCP, 4, ident, data)      # reject everything we ask for
            return
        orig(protocol, info)
    client.handle = handle
    client.start()
    client.run()
    assert link.ccp.state == State.OPENED
    assert link.ccp.compressor is None and link.ccp.decompressor is None
    assert len(client.ccp_seen) < 10
    rng = random.Random(11)
    packet = text_packet(rng)
    link.send_ip(packet, client.now)
    assert client.collect() == [(IP, packet)]


def test_a_nak_with_a_smaller_window_is_followed():
    link = make_link()
    link.lower_up(0)
    client = CcpClient(link)
    client.ccp_nak = lambda opts: [dopt(CI_DEFLATE, 12)] if dict(opts).get(CI_DEFLATE) == dopt(CI_DEFLATE, 15)[1] \
        else None
    client.start()
    client.run()
    assert client.link_ccp == [dopt(CI_DEFLATE, 12), dopt(CI_DEFLATE_DRAFT, 12)]
    assert link.ccp.receive_method == (CI_DEFLATE, 12) and link.ccp.state == State.OPENED


def test_a_nak_we_cannot_use_stops_asking_for_deflate():
    link = make_link()
    link.lower_up(0)
    client = CcpClient(link)
    client.ccp_nak = lambda opts: [dopt(CI_DEFLATE, 15, method=3)] if opts else None
    client.start()
    client.run()
    assert client.link_ccp == [] and link.ccp.decompressor is None and link.ccp.state == State.OPENED


def test_compression_none_protocol_rejects_ccp():
    link, client = ccp_session({"compression": "none"})
    assert link.ccp is None and link.is_up
    rejects = [data for _, _, data in client.of(LCP, 8)]
    assert rejects and all(r[:2] == b"\x80\xfd" for r in rejects)
    assert not any(p == CCP for p, _ in client.received)


def test_compressed_packet_without_negotiation_is_dropped():
    link, client = ccp_session(ccp_options=[])
    assert link.ccp.decompressor is not None      # we asked, the peer agreed
    link.ccp.decompressor = None
    client.send(COMP, b"\x00\x00" + b"junk")
    assert link.ccp_counters["compressed_without_ccp"] == 1 and link.is_up


def test_decompression_is_bounded_by_the_mru():
    d = deflate.DeflateDecompressor(mru=1500)
    z = zlib.compressobj(9, zlib.DEFLATED, -15)
    bomb = z.compress(b"\x21" + bytes(100000)) + z.flush(zlib.Z_SYNC_FLUSH)
    with pytest.raises(ParseError) as exc:
        d.decompress(b"\x00\x00" + bomb[:-4])
    assert exc.value.reason == "too_long"


def test_deflate_codec_errors_are_parse_errors_only():
    rng = random.Random(12)
    c = deflate.DeflateCompressor(15)
    for trial in range(300):
        d = deflate.DeflateDecompressor(mru=1500)
        good = c.compress(IP, ip_packet(TEXT[:600]))[1]
        data = bytearray(good)
        for _ in range(rng.randrange(1, 6)):
            data[rng.randrange(len(data))] = rng.randrange(256)
        if rng.random() < 0.3:
            data = data[:rng.randrange(len(data))]
        d.seq = struct.unpack_from("!H", data)[0] if len(data) >= 2 else 0
        try:
            d.decompress(bytes(data))
        except ParseError:
            pass


def test_our_codec_against_the_independent_model_both_ways():
    rng = random.Random(13)
    ours_tx, ours_rx = deflate.DeflateCompressor(11), deflate.DeflateDecompressor(1500)
    model = LinuxDeflate(window=11)
    for i in range(300):
        packet = text_packet(rng, rng.randrange(1, 1400)) if i % 3 else ip_packet(os.urandom(rng.randrange(1, 800)))
        proto, info = ours_tx.compress(IP, packet)
        if proto == COMP:
            assert model.decompress(info) == (IP, packet)
        else:
            model.incomp(proto, info)
        proto, info = model.compress(IP, packet)
        if proto == COMP:
            assert ours_rx.decompress(info) == (IP, packet)
        else:
            ours_rx.incomp(proto, info)
    assert ours_tx.packets > 150 and ours_rx.packets > 150
    # Control protocols never touch the history or the sequence numbers.
    seq = ours_tx.seq
    assert ours_tx.compress(IPCP, b"\x01" * 200) == (IPCP, b"\x01" * 200) and ours_tx.seq == seq


def test_a_run_of_incompressible_packets_is_skipped_and_the_history_stays_the_receivers():
    # After SKIP_RUN large packets that did not shrink, the compressor stops trying (zlib costs as much on noise
    # as on text) but one packet in PROBE_EVERY; the receiver adds every plain packet to its history, and the
    # compressor restarted on our copy of it refers to skipped bytes exactly where they are.
    rng = random.Random(21)
    ours, model = deflate.DeflateCompressor(11), LinuxDeflate(window=11)

    def carry(packet):
        proto, info = ours.compress(IP, packet)
        if proto == COMP:
            assert model.decompress(info) == (IP, packet)
        else:
            assert info == packet
            model.incomp(proto, info)
        return proto

    noise = [ip_packet(os.urandom(1000)) for _ in range(40)]
    for packet in noise:
        assert carry(packet) == IP
    tried = deflate.SKIP_RUN + (40 - deflate.SKIP_RUN) // deflate.PROBE_EVERY
    assert ours.skipped == 40 - tried and ours.incompressible == 40
    # Small packets in the run are skipped too, up to the next probe: here a skipped packet's first 200 octets
    # (a retransmission, re-cut), which shrinks only as a back-reference to the skipped bytes.
    skipped = ours.skipped
    kinds = []
    while COMP not in kinds:
        kinds.append(carry(noise[-3][:200]))
        assert len(kinds) <= deflate.PROBE_EVERY
    assert ours.skipped - skipped == len(kinds) - 1 > 0
    # A packet that shrank ends the run: text is compressed again, in step with the receiver.
    assert [carry(text_packet(rng, 1000)) for _ in range(10)] == [COMP] * 10
    # A mix whose incompressible runs are shorter than SKIP_RUN is tried packet by packet, as before.
    skipped = ours.skipped
    for i in range(60):
        carry(noise[i % 40] if i % deflate.SKIP_RUN else text_packet(rng, 1000))
    assert ours.skipped == skipped


def test_random_ccp_packets_never_raise():
    rng = random.Random(14)
    for trial in range(40):
        link, client = ccp_session()
        client.auto = False
        for _ in range(30):
            code = rng.choice([1, 2, 3, 4, 5, 6, 7, 14, 15, rng.randrange(256)])
            opts = [(rng.choice([21, 24, 26, 18, rng.randrange(256)]),
                     bytes(rng.getrandbits(8) for _ in range(rng.choice([0, 1, 2, 3]))))
                    for _ in range(rng.randrange(3))]
            info = wppp.build_cp(code, rng.randrange(256), wppp.build_options(opts))
            if rng.random() < 0.2:
                info = info[:rng.randrange(len(info) + 1)]
            if rng.random() < 0.3:
                client.send(COMP, bytes(rng.getrandbits(8) for _ in range(rng.randrange(40))))
            client.send(CCP, info)
            link.send_ip(text_packet(rng, 200), client.now)
            link.take_output()
            client.now += rng.randrange(0, 2000)
            while link.get_timer() is not None and link.get_timer() <= client.now:
                link.handle_timer(link.get_timer())
            link.take_output()
        assert link.lcp.state == State.OPENED


def test_the_core_budget_is_spent_in_compressed_line_bytes():
    from test_core import Cfg, QueueStack
    from pyslirp.core import Core
    link, client = ccp_session()
    rng = random.Random(15)
    stack = QueueStack()
    stack.packets = [text_packet(rng, 1000) for _ in range(60)]
    taken = list(stack.packets)
    core = Core(None, Cfg(), random.Random(1), link=link, stack=stack)
    out = core.take_serial_output(6000, client.now)
    line = sum(len(frame) for _, frame in out)
    sent = 60 - len(stack.packets)
    # About three times the budget's worth of text went, in at most the budget's worth of line bytes.
    assert line <= 6000 and sent * 1020 > 2 * 6000, (line, sent)
    client.raw_out = []
    frames = []
    for _, raw in out:
        frames.extend(client.deframer.feed(raw))
    decoded = []
    for frame in frames:
        proto, info = wppp.parse_frame(frame)
        assert proto == COMP
        decoded.append(client.kernel.decompress(info)[1])
    assert decoded == taken[:sent]


def _corrupt(client, packet):
    """The peer's kernel compresses ``packet`` (its sequence number is used) and the line corrupts the frame."""
    raw = bytearray(client.encode(IP, packet))
    raw[len(raw) // 2] ^= 0x10
    client.send_raw(bytes(raw))


def test_a_frame_lost_on_the_line_asks_for_a_reset_before_the_retransmission_arrives():
    link, client = ccp_session()
    rng = random.Random(12)
    first, lost = text_packet(rng), text_packet(rng)
    client.send(IP, first)
    _corrupt(client, lost)                           # a bad FCS
    # The Reset-Request goes at once, not at the next compressed packet (which would be lost too).
    client.collect()
    reqs = [i for c, i, _ in client.ccp_seen if c == RESET_REQUEST]
    assert len(reqs) == 1 and link.ccp_counters["lost_frame_resets"] == 1
    assert link.ccp.resetting and link.ccp_counters["decompress_errors"] == 0
    # Another frame lost while the reset is under way: no second request at once (the timer repeats it).
    _corrupt(client, text_packet(rng))
    client.collect()
    assert len([c for c, _, _ in client.ccp_seen if c == RESET_REQUEST]) == 1
    assert link.ccp_counters["lost_frame_resets"] == 1
    # The peer answers before its TCP retransmits (our duplicate ACK follows the Reset-Request): its
    # compressor starts over, so the retransmission, compressed afresh, decompresses.
    client.handle(CCP, wppp.build_cp(RESET_REQUEST, reqs[0]))
    client.collect()
    assert not link.ccp.resetting
    client.send(IP, lost)
    assert [e.packet for e in events_of(client, IPReceived)] == [first, lost]
    assert link.ccp_counters["decompress_errors"] == 0
