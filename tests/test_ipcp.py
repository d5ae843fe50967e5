"""IPCP's hooks on their own, then the IPCP part of full sessions."""

import logging

import pytest

from pyslirp.ppp.fsm import CONFACK, CONFNAK, CONFREJ, State
from pyslirp.ppp.ipcp import Ipcp
from pyslirp.ppp.link import LinkConfig
from pyslirp.wire import ppp as wppp
from test_link import IPCP, Client, ip4, make_link

ZERO = b"\0\0\0\0"
VJ_0F_01 = b"\x00\x2d\x0f\x01"      # Van Jacobson, Max-Slot-Id 15, Comp-Slot-Id allowed


class Owner(object):
    def __init__(self):
        self.calls = []

    def ipcp_up(self):
        self.calls.append("up")

    def ipcp_down(self):
        self.calls.append("down")

    def ipcp_finished(self):
        self.calls.append("finished")


def make_ipcp(**kw):
    sent = []
    owner = Owner()
    ipcp = Ipcp(LinkConfig(**kw), sent.append, owner)
    ipcp.resetci()
    return ipcp, sent, owner


def judge(ipcp, options, reject_if_disagree=False):
    data = wppp.build_options(options)
    code, reply = ipcp.reqci(data, reject_if_disagree)
    return code, (reply if code == CONFACK else wppp.parse_options(reply)), data


def test_our_request_carries_local_address():
    ipcp, _, _ = make_ipcp(local_ip="192.168.77.1", vj=False)
    assert wppp.parse_options(ipcp.addci()) == [(3, ip4("192.168.77.1"))]
    # With VJ on (the default), pppd's own request: <compress VJ 0f 01> first.
    ipcp, _, _ = make_ipcp(local_ip="192.168.77.1")
    assert wppp.parse_options(ipcp.addci()) == [(2, VJ_0F_01), (3, ip4("192.168.77.1"))]


@pytest.mark.parametrize("address", ["0.0.0.0", "10.0.0.1", "10.0.0.3", "192.168.1.5"])
def test_peer_address_other_than_remote_is_naked_with_remote(address):
    ipcp, _, _ = make_ipcp()
    code, reply, _ = judge(ipcp, [(3, ip4(address))])
    assert code == CONFNAK and reply == [(3, ip4("10.0.0.2"))]


def test_peer_asking_for_remote_address_is_acked():
    ipcp, _, _ = make_ipcp(remote_ip="172.20.0.9")
    code, reply, data = judge(ipcp, [(3, ip4("172.20.0.9"))])
    assert code == CONFACK and reply == data and ipcp.peer_addr == ip4("172.20.0.9")


def test_insisting_peer_rejected_after_max_failure(caplog):
    ipcp, _, _ = make_ipcp()
    with caplog.at_level(logging.WARNING, logger="pyslirp.ppp"):
        code, reply, _ = judge(ipcp, [(3, ip4("10.7.7.7"))], reject_if_disagree=True)
    assert code == CONFREJ and reply == [(3, ip4("10.7.7.7"))]
    assert "insists on address 10.7.7.7" in caplog.text


def test_request_without_address_gets_one_appended_nak():
    ipcp, _, _ = make_ipcp()
    code, reply, _ = judge(ipcp, [])
    assert code == CONFNAK and reply == [(3, ip4("10.0.0.2"))]
    code, reply, data = judge(ipcp, [])
    assert code == CONFACK


@pytest.mark.parametrize("dns,asked,verdict,reply", [
    (("192.0.2.1", "192.0.2.2"), [(129, ZERO), (131, ZERO)], CONFNAK,
     [(129, ip4("192.0.2.1")), (131, ip4("192.0.2.2"))]),
    (("192.0.2.1", "192.0.2.2"), [(129, ip4("192.0.2.1")), (131, ip4("192.0.2.2"))], CONFACK, None),
    (("192.0.2.1", "192.0.2.2"), [(129, ip4("192.0.2.1")), (131, ZERO)], CONFNAK, [(131, ip4("192.0.2.2"))]),
    (("192.0.2.1",), [(129, ZERO), (131, ZERO)], CONFREJ, [(131, ZERO)]),
    ((), [(129, ZERO), (131, ZERO)], CONFREJ, [(129, ZERO), (131, ZERO)]),
])
def test_dns_options(dns, asked, verdict, reply):
    ipcp, _, _ = make_ipcp(dns=dns)
    code, got, data = judge(ipcp, [(3, ip4("10.0.0.2"))] + asked)
    assert code == verdict
    if reply is not None:
        assert got == reply
    else:
        assert got == data


@pytest.mark.parametrize("kind,value", [
    (2, b"\x00\x2d"),                  # RFC 1172's Van Jacobson option without the slot fields
    (2, b"\x00\x37\x00\x10"),          # another IP compression protocol
    (1, ip4("10.0.0.2") + ip4("10.0.0.1")),   # IP-Addresses (deprecated)
    (130, ZERO), (132, ZERO),          # NBNS
    (0x90, b"xyz"),                    # unknown
    (3, b"\x0a\x00\x00"),              # IP-Address of the wrong length
])
def test_unsupported_options_rejected(kind, value):
    ipcp, _, _ = make_ipcp(dns=("192.0.2.1", "192.0.2.2"))
    code, reply, _ = judge(ipcp, [(3, ip4("10.0.0.2")), (kind, value)])
    assert code == CONFREJ and reply == [(kind, value)]


def test_vj_off_rejects_the_peers_vj_and_asks_for_none():
    ipcp, _, _ = make_ipcp(vj=False)
    code, reply, _ = judge(ipcp, [(2, VJ_0F_01), (3, ip4("10.0.0.2"))])
    assert code == CONFREJ and reply == [(2, VJ_0F_01)]
    assert 2 not in dict(wppp.parse_options(ipcp.addci()))


@pytest.mark.parametrize("asked,code,reply,his", [
    (VJ_0F_01, CONFACK, None, (15, 1)),                            # pppd's default
    (b"\x00\x2d\x07\x00", CONFACK, None, (7, 0)),                 # fewer slots, slot ids always sent
    (b"\x00\x2d\xff\x01", CONFNAK, b"\x00\x2d\x0f\x01", None),    # more slots than we keep
    (b"\x00\x2d\x3f\x00", CONFNAK, b"\x00\x2d\x0f\x00", None),
])
def test_judging_the_peers_vj_request(asked, code, reply, his):
    ipcp, _, _ = make_ipcp()
    got_code, got, data = judge(ipcp, [(2, asked), (3, ip4("10.0.0.2"))])
    assert got_code == code
    if reply is None:
        assert got == data and ipcp.his_vj == his
    else:
        assert got == [(2, reply)] and ipcp.his_vj is None


def test_naks_and_rejects_of_our_vj_request():
    ipcp, _, _ = make_ipcp(max_failure=3)
    ipcp.addci()
    # Fewer slots and no slot-id compression: followed.
    assert ipcp.nakci(wppp.build_options([(2, b"\x00\x2d\x07\x00")]))
    assert dict(wppp.parse_options(ipcp.addci()))[2] == b"\x00\x2d\x07\x00"
    # The same again and again: Max-Failure, then we stop asking.
    for _ in range(3):
        ipcp.nakci(wppp.build_options([(2, b"\x00\x2d\x07\x00")]))
    assert 2 not in dict(wppp.parse_options(ipcp.addci()))
    ipcp.resetci()
    ipcp.addci()
    assert ipcp.nakci(wppp.build_options([(2, b"\x00\x37\x00\x10")]))       # another protocol
    assert 2 not in dict(wppp.parse_options(ipcp.addci()))
    ipcp.resetci()
    sent = ipcp.addci()
    assert ipcp.rejci(wppp.build_options([(2, VJ_0F_01)]))
    assert 2 not in dict(wppp.parse_options(ipcp.addci())) and sent != ipcp.addci()
    ipcp.resetci()
    assert ipcp.ackci(ipcp.addci()) and ipcp.got_vj == (15, 1)


def test_ack_nak_reject_of_our_request():
    ipcp, _, _ = make_ipcp(max_failure=2, vj=False)
    data = ipcp.addci()
    assert not ipcp.ackci(wppp.build_options([(3, ip4("10.0.0.9"))]))
    assert ipcp.ackci(data)
    # a Nak suggesting another address for us is not followed ...
    assert ipcp.nakci(wppp.build_options([(3, ip4("10.0.0.9"))]))
    assert wppp.parse_options(ipcp.addci()) == [(3, ip4("10.0.0.1"))]
    # ... until Max-Failure: then we stop sending the option
    ipcp.nakci(wppp.build_options([(3, ip4("10.0.0.9"))]))
    assert ipcp.addci() == b""
    ipcp.resetci()
    ipcp.addci()
    assert not ipcp.rejci(wppp.build_options([(129, ZERO)]))
    assert ipcp.rejci(wppp.build_options([(3, ip4("10.0.0.1"))]))
    assert ipcp.addci() == b""


def test_up_and_down_reach_the_owner():
    ipcp, sent, owner = make_ipcp()
    ipcp.fsm.open(0)
    ipcp.fsm.up(0)
    _, ident, data = wppp.parse_cp(sent[-1])
    ipcp.fsm.input(wppp.build_cp(2, ident, data), 1)
    ipcp.fsm.input(wppp.build_cp(1, 4, wppp.build_options([(3, ip4("10.0.0.2"))])), 2)
    assert ipcp.state == State.OPENED and owner.calls == ["up"]
    ipcp.fsm.down(3)
    assert owner.calls == ["up", "down"]


def test_unknown_ipcp_code_gets_code_reject():
    ipcp, sent, _ = make_ipcp()
    ipcp.fsm.open(0)
    ipcp.fsm.up(0)
    pkt = wppp.build_cp(9, 1, b"\0\0\0\0")        # Echo is LCP only
    ipcp.fsm.input(pkt, 0)
    assert wppp.parse_cp(sent[-1])[0::2] == (7, pkt)


# -- in full sessions ------------------------------------------------------------------


def test_dns_nak_then_ack_over_the_link():
    link = make_link(dns=("198.51.100.1", "198.51.100.2"), local_ip="10.1.0.1", remote_ip="10.1.0.2")
    link.lower_up(0)
    client = Client(link)
    client.start()
    assert link.is_up
    up, = [e for e in client.events if type(e).__name__ == "LinkUp"]
    assert (up.local_ip, up.remote_ip) == ("10.1.0.1", "10.1.0.2")
    assert client.link_ipcp == {2: VJ_0F_01, 3: ip4("10.1.0.1")}
    assert dict(client.ipcp_options) == {3: ip4("10.1.0.2"), 129: ip4("198.51.100.1"),
                                        131: ip4("198.51.100.2")}
    assert link.ipcp.peer_addr == ip4("10.1.0.2")


def test_ipcp_renegotiation_takes_link_down_and_up():
    link = make_link()
    link.lower_up(0)
    client = Client(link)
    client.start()
    client.events.clear()
    client.send_ipcp_request()
    client.run()
    assert [type(e).__name__ for e in client.events] == ["LinkDown", "LinkUp"]
    assert link.is_up


def test_ipcp_max_configure_without_answer_ends_session():
    link = make_link(max_configure=3)
    link.lower_up(0)
    client = Client(link)
    original = client.handle

    def handle(protocol, info):
        if protocol == IPCP:
            return                  # the client ignores IPCP altogether
        original(protocol, info)
    client.handle = handle
    client.start()
    client.advance(30000)
    assert len(client.of(IPCP, 1)) == 3
    assert link.lcp.state == State.STOPPED and not link.is_up
