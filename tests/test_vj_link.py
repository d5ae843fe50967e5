"""Van Jacobson compression on the link (RFC 1144, RFC 1332 IPCP option 2): negotiation, both directions, tossing.

The peer is test_link's pppd-like client asking, as pppd does, for ``<compress VJ 0f 01>``, with the wire codec
(pyslirp/wire/vj.py, tested against Linux slhc in test_vj.py) on its side of the line.
"""

import random

from test_link import IP, IPCP, PPPD_IPCP, Client, make_link
from test_vj import ACK, PSH, SYN, tcp_packet
from pyslirp.ppp.events import IPReceived
from pyslirp.wire import hdlc
from pyslirp.wire import ppp as wppp
from pyslirp.wire.vj import VjCompressor, VjDecompressor

VJC, VJUC = wppp.PROTO_VJC, wppp.PROTO_VJUC
VJ_0F_01 = b"\x00\x2d\x0f\x01"
US, PEER = bytes([10, 0, 0, 1]), bytes([10, 0, 0, 2])


class VjClient(Client):
    """Asks for VJ like pppd; compresses what it sends and decompresses what it receives once IPCP is up."""

    def __init__(self, link, ipcp_options=None, **kw):
        Client.__init__(self, link, ipcp_options=[(2, VJ_0F_01)] + PPPD_IPCP if ipcp_options is None
                        else ipcp_options, **kw)
        self.tx = VjCompressor(16, True)
        self.rx = VjDecompressor(16)
        self.ip_in = []                     # IP packets the link sent, after our decompression
        self.kinds_in = []                  # the PPP protocols they came as

    def collect(self):
        frames = Client.collect(self)
        for protocol, info in frames:
            if protocol in (VJC, VJUC, IP):
                self.kinds_in.append(protocol)
                self.ip_in.append(self.rx.decompress(protocol, info))
        return frames

    def send_tcp(self, packet):
        protocol, data = self.tx.compress(packet)
        self.send(protocol, data)
        return protocol


def vj_session(link_kw=None, **kw):
    link = make_link(**(link_kw or {"compression": "none"}))
    link.lower_up(0)
    client = VjClient(link, **kw)
    client.start()
    client.run()
    return link, client


def segments(src, dst, sport, dport, n, size=100, start=1000, ack=5000):
    out, seq = [], start
    for i in range(n):
        data = bytes([(i + j) & 0xFF for j in range(size)])
        out.append(tcp_packet(seq=seq, ack=ack, data=data, flags=ACK | PSH, ident=300 + i, sport=sport,
                              dport=dport, src=src, dst=dst))
        seq += size
    return out


def test_pppd_default_vj_request_is_acked_and_ours_asked_the_same():
    link, client = vj_session()
    assert link.is_up and link.vj_active
    assert client.link_ipcp.get(2) == VJ_0F_01                  # we asked for <compress VJ 0f 01>
    assert link.ipcp.his_vj == (15, 1) and link.ipcp.got_vj == (15, 1)
    assert link.ipcp.vj.compressor.slots == 16 and link.ipcp.vj.compressor.compress_slot_id
    rejects = [wppp.parse_options(d) for c, i, d in client.of(IPCP, 4)]
    assert all(k != 2 for opts in rejects for k, _ in opts)


def test_tcp_goes_compressed_both_ways_and_arrives_intact():
    link, client = vj_session()
    down = segments(US, PEER, 22, 40000, 30)
    for packet in down:
        assert link.send_ip(packet, client.now)
    client.collect()
    assert client.ip_in[-30:] == down
    assert client.kinds_in[-30:].count(VJC) >= 28 and client.kinds_in[-30] == VJUC
    up = segments(PEER, US, 40000, 22, 30, start=5000, ack=4000)
    kinds = [client.send_tcp(p) for p in up]
    assert kinds.count(VJC) >= 28
    assert [e.packet for e in client.events if isinstance(e, IPReceived)] == up
    c = link.ipcp_counters
    assert c["vj_compressed_out"] >= 28 and c["vj_compressed_in"] >= 28 and c["vj_errors"] == 0


def test_a_frame_lost_on_the_line_tosses_the_decompressor():
    link, client = vj_session()
    link.ipcp.vj.decompressor.repair = False        # RFC 1144 alone (the repair: the next test)
    up = segments(PEER, US, 40000, 22, 6, start=5000, ack=4000)
    for p in up[:2]:
        client.send_tcp(p)
    # The third segment's frame arrives with a bad FCS: the deframer drops it and the link tosses.
    proto, data = client.tx.compress(up[2])
    raw = client.encode(proto, data)
    client.send_raw(raw[:-3] + bytes([raw[-3] ^ 0x55]) + raw[-2:])
    assert link.deframer.bad_fcs == 1 and link.ipcp.vj.decompressor.tossing
    # The next one, compressed with an implicit slot against the lost header, is discarded, not mis-decoded.
    assert client.send_tcp(up[3]) == VJC
    got = [e.packet for e in client.events if isinstance(e, IPReceived)]
    assert got == up[:2] and link.ipcp_counters["vj_tossed"] == 1
    # The sender's retransmission goes uncompressed (RFC 1144 4.2) and resynchronises.
    client.tx = VjCompressor(16, True)
    for p in up[2:]:
        client.send_tcp(p)
    assert [e.packet for e in client.events if isinstance(e, IPReceived)] == up


def test_a_frame_lost_on_the_line_is_repaired_after_a_run_of_bulk_segments():
    link, client = vj_session()
    up = segments(PEER, US, 40000, 22, 14, start=5000, ack=4000)
    # Our SYN-ACK went out on the link: the peer's ack of 4000 covers everything we sent.
    link.ipcp.vj.compress(wppp.PROTO_IP, tcp_packet(seq=3999, ack=5000, flags=SYN | ACK, sport=22, dport=40000,
                                                    src=US, dst=PEER))
    for p in up[:10]:
        client.send_tcp(p)
    proto, data = client.tx.compress(up[10])
    raw = client.encode(proto, data)
    client.send_raw(raw[:-3] + bytes([raw[-3] ^ 0x55]) + raw[-2:])
    assert link.deframer.bad_fcs == 1 and link.ipcp.vj.decompressor.tossing
    # The next segments decompress (the lost one assumed, the TCP checksum verified): only it is missing,
    # so the receiving TCP sees out-of-order data and asks for it at once.
    for p in up[11:]:
        assert client.send_tcp(p) == VJC
    got = [e.packet for e in client.events if isinstance(e, IPReceived)]
    assert got == up[:10] + up[11:]
    assert link.ipcp.vj.decompressor.repaired == 1 and link.ipcp_counters["vj_tossed"] == 0


def test_vj_off_rejects_pppds_request_and_sends_plain_ip():
    link, client = vj_session({"compression": "none", "vj": False})
    assert link.is_up and not link.vj_active
    rejected = [wppp.parse_options(d) for c, i, d in client.of(IPCP, 4)]
    assert [(2, VJ_0F_01)] in [[o for o in opts if o[0] == 2] for opts in rejected]
    assert 2 not in client.link_ipcp
    packet = segments(US, PEER, 22, 40000, 1)[0]
    link.send_ip(packet, client.now)
    client.collect()
    assert client.kinds_in[-1] == IP and client.ip_in[-1] == packet


def test_vj_packets_not_negotiated_are_dropped():
    link, client = vj_session({"compression": "none", "vj": False})
    client.send(VJUC, b"\x45" + bytes(39))
    assert link.ipcp_counters["vj_not_negotiated"] == 1 and link.is_up
    assert not [e for e in client.events if isinstance(e, IPReceived)]


def test_vj_then_deflate_on_the_wire_and_a_ccp_drop_tosses_vj():
    from test_ccp import CcpClient

    class Both(CcpClient):
        """pppd's kernel: VJ on IP packets, then Deflate on the packet (and the reverse on input)."""

        def __init__(self, link, **kw):
            CcpClient.__init__(self, link, **kw)
            self.tx, self.rx = VjCompressor(16, True), VjDecompressor(16)
            self.ip_in, self.kinds_in = [], []

        def collect(self):
            frames = CcpClient.collect(self)        # after Deflate
            for protocol, info in frames:
                if protocol in (VJC, VJUC, IP):
                    self.kinds_in.append(protocol)
                    self.ip_in.append(self.rx.decompress(protocol, info))
            return frames

        send_tcp = VjClient.send_tcp

    link = make_link()
    link.lower_up(0)
    client = Both(link, ipcp_options=[(2, VJ_0F_01)] + PPPD_IPCP)
    client.start()
    client.run()
    assert link.is_up and link.vj_active and link.ccp.compressor is not None
    down = segments(US, PEER, 22, 40000, 20, size=400)
    for packet in down:
        link.send_ip(packet, client.now)
    client.collect()
    # CCP sits after VJ: compressed frames carry VJ packets inside.
    assert client.ip_in[-20:] == down
    assert any(p == VJC for p, _ in client.decompressed[-20:])
    # A compressed frame that CCP cannot decode (sequence out of step) is dropped, and VJ tosses with it.
    up = segments(PEER, US, 40000, 22, 3, size=400, start=5000, ack=4000)
    client.send_tcp(up[0])
    vj_proto, vj_data = client.tx.compress(up[1])
    client.kernel.compress(vj_proto, vj_data)           # lost on the way
    client.send_tcp(up[2])
    assert link.ccp.resetting and link.ipcp.vj.decompressor.tossing
    assert [e.packet for e in client.events if isinstance(e, IPReceived)] == up[:1]
    # The peer asks for a CCP reset (it lost one of our frames, so its VJ tossed too): we refresh VJ slots.
    from pyslirp.ppp.ccp import RESET_REQUEST
    link.ipcp.vj.compressor.noisy(None)
    client.send_cp(wppp.PROTO_CCP, RESET_REQUEST, 0x42)
    assert link.ccp_counters["reset_requests_received"] == 1
    assert link.ipcp.vj.compressor.refresh_every == 0


def test_a_frame_lost_on_input_makes_our_compressor_refresh_its_slots_for_a_while():
    from pyslirp.ppp.ipcp import NOISY_PACKETS, NOISY_REFRESH
    link, client = vj_session()
    stage = link.ipcp.vj
    assert stage.compressor.refresh_every is None
    client.send_raw(b"~\xff\x03\x00\x21garbage~")           # a frame with a bad FCS
    assert link.deframer.bad_fcs == 1
    assert stage.compressor.refresh_every == NOISY_REFRESH
    packet = segments(US, PEER, 22, 40000, 1)[0]
    protocols = [stage.compress(wppp.PROTO_IP, packet)[0] for _ in range(NOISY_PACKETS)]
    assert set(protocols) == {VJUC}                     # NOISY_REFRESH 0: whole headers while noisy
    assert stage.compressor.refresh_every is None
    assert stage.compress(wppp.PROTO_IP, segments(US, PEER, 22, 40000, 2)[1])[0] == VJC


def test_the_link_told_the_peer_may_have_lost_a_frame_refreshes_vj():
    link, client = vj_session()
    assert link.ipcp.vj.compressor.refresh_every is None
    link.peer_lost_frame()                          # the Core saw a TCP retransmission timeout
    assert link.ipcp.vj.compressor.refresh_every == 0
