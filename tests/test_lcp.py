"""LCP's hooks and keepalive on their own (fake owner, fake clock)."""

import logging
import random
import struct

import pytest

from pyslirp.ppp import lcp as L
from pyslirp.ppp.fsm import CONFACK, CONFNAK, CONFREJ, State
from pyslirp.ppp.link import LinkConfig
from pyslirp.wire import ppp as wppp

U16 = struct.Struct("!H")
U32 = struct.Struct("!I")


class Owner(object):
    def __init__(self):
        self.calls = []

    def __getattr__(self, name):
        if name.startswith("lcp_"):
            return lambda *a: self.calls.append((name,) + a)
        raise AttributeError(name)


def make_lcp(**kw):
    sent = []
    owner = Owner()
    lcp = L.Lcp(LinkConfig(**kw), random.Random(42), sent.append, owner)
    return lcp, sent, owner


def opts(data):
    return wppp.parse_options(data)


def request_options(lcp):
    lcp.resetci()
    return opts(lcp.addci())


# -- our request ---------------------------------------------------------------------


def test_default_request():
    lcp, _, _ = make_lcp()
    o = request_options(lcp)
    assert [k for k, _ in o] == [L.CI_ASYNCMAP, L.CI_MAGIC, L.CI_PFC, L.CI_ACFC]
    assert dict(o)[L.CI_ASYNCMAP] == b"\0\0\0\0"
    assert U32.unpack(dict(o)[L.CI_MAGIC])[0] != 0


def test_request_with_mru_auth_and_without_magic():
    lcp, _, _ = make_lcp(mru=1006, require_auth="chap", negotiate_magic=False)
    o = dict(request_options(lcp))
    assert o[L.CI_MRU] == U16.pack(1006)
    assert o[L.CI_AUTHTYPE] == b"\xc2\x23\x05"
    assert L.CI_MAGIC not in o
    lcp, _, _ = make_lcp(require_auth="pap")
    assert dict(request_options(lcp))[L.CI_AUTHTYPE] == b"\xc0\x23"


def test_magic_numbers_come_from_rng_and_differ_per_session():
    a, _, _ = make_lcp()
    b, _, _ = make_lcp()
    assert dict(request_options(a))[L.CI_MAGIC] == dict(request_options(b))[L.CI_MAGIC]   # seeded
    first = dict(request_options(a))[L.CI_MAGIC]
    assert dict(request_options(a))[L.CI_MAGIC] != first


# -- judging the peer's request -------------------------------------------------------------


def judge(lcp, options, reject_if_disagree=False):
    data = wppp.build_options(options)
    code, reply = lcp.reqci(data, reject_if_disagree)
    return code, (reply if code == CONFACK else opts(reply)), data


def test_typical_pppd_request_acked_verbatim():
    lcp, _, _ = make_lcp()
    request_options(lcp)
    options = [(2, b"\0\0\0\0"), (5, b"\x12\x34\x56\x78"), (7, b""), (8, b"")]
    code, reply, data = judge(lcp, options)
    assert code == CONFACK and reply == data
    assert lcp.his.accm == 0 and lcp.his.magic == 0x12345678 and lcp.his.pfc and lcp.his.acfc
    assert lcp.send_accm == 0 and lcp.peer_mru == 1500


@pytest.mark.parametrize("mru,verdict", [(64, CONFNAK), (127, CONFNAK), (128, CONFACK), (576, CONFACK),
                                         (1500, CONFACK), (9000, CONFACK)])
def test_mru_bounds(mru, verdict):
    lcp, _, _ = make_lcp()
    request_options(lcp)
    code, reply, _ = judge(lcp, [(1, U16.pack(mru))])
    assert code == verdict
    if code == CONFNAK:
        assert reply == [(1, U16.pack(128))]
    else:
        assert lcp.peer_mru == mru


def test_magic_zero_or_equal_to_ours_is_naked_with_new_value():
    lcp, _, _ = make_lcp()
    ours = U32.unpack(dict(request_options(lcp))[L.CI_MAGIC])[0]
    for theirs in (0, ours):
        code, reply, _ = judge(lcp, [(5, U32.pack(theirs))])
        assert code == CONFNAK
        (kind, value), = reply
        assert kind == 5 and U32.unpack(value)[0] not in (0, ours)
    assert lcp.counters["magic_equal"] == 1


@pytest.mark.parametrize("kind,value", [
    (3, b"\xc0\x23"), (3, b"\xc2\x23\x05"),            # the peer wants us to authenticate
    (4, b"\xc0\x25\0\0\0\x64"),                          # Quality-Protocol (LQR)
    (13, b"\x06"), (17, b"\x05\xdc"), (18, b""), (19, b"\x01" + bytes(6)),
    (0x42, b"zz"),                                       # unknown
    (1, b"\x05"), (2, b"\0\0\0"), (5, b"\0\0"), (7, b"x"),  # known types with wrong lengths
])
def test_options_we_do_not_implement_are_rejected(kind, value):
    lcp, _, _ = make_lcp()
    request_options(lcp)
    code, reply, _ = judge(lcp, [(2, b"\0\0\0\0"), (kind, value), (7, b"")])
    assert code == CONFREJ and reply == [(kind, value)]


def test_reject_takes_precedence_over_nak():
    lcp, _, _ = make_lcp()
    request_options(lcp)
    code, reply, _ = judge(lcp, [(1, U16.pack(10)), (13, b"\x06")])
    assert code == CONFREJ and reply == [(13, b"\x06")]


def test_max_failure_turns_naks_into_rejects(caplog):
    lcp, _, _ = make_lcp()
    request_options(lcp)
    with caplog.at_level(logging.WARNING, logger="pyslirp.ppp"):
        code, reply, _ = judge(lcp, [(1, U16.pack(10))], reject_if_disagree=True)
    assert code == CONFREJ and reply == [(1, U16.pack(10))]
    assert "Max-Failure" in caplog.text


def test_naked_request_does_not_change_peer_options():
    lcp, _, _ = make_lcp()
    request_options(lcp)
    judge(lcp, [(1, U16.pack(1000))])
    assert lcp.peer_mru == 1000
    judge(lcp, [(1, U16.pack(10)), (7, b"")])
    assert lcp.peer_mru == 1000 and not lcp.his.pfc


# -- answers to our request -----------------------------------------------------------------


def test_ack_must_match_our_request_exactly():
    lcp, _, _ = make_lcp()
    lcp.resetci()
    data = lcp.addci()
    assert not lcp.ackci(data[:-2])
    assert not lcp.ackci(data + b"\x07\x02")
    assert lcp.ackci(data)
    assert lcp.recv_accm == 0 and lcp.our_magic == U32.unpack(dict(opts(data))[5])[0]


def test_nak_adjusts_accm_and_mru():
    lcp, _, _ = make_lcp(mru=1200)
    lcp.resetci()
    lcp.addci()
    assert lcp.nakci(wppp.build_options([(2, U32.pack(0x000A0000)), (1, U16.pack(1000))]))
    o = dict(opts(lcp.addci()))
    assert o[2] == U32.pack(0x000A0000) and o[1] == U16.pack(1000)
    # an MRU above ours and above the default is not taken
    lcp.nakci(wppp.build_options([(1, U16.pack(4000))]))
    assert dict(opts(lcp.addci()))[1] == U16.pack(1000)


def test_repeated_magic_naks_report_a_looped_back_line(caplog):
    lcp, _, owner = make_lcp()
    lcp.resetci()
    magics = set()
    with caplog.at_level(logging.WARNING, logger="pyslirp.ppp"):
        for i in range(L.LOOPBACK_WARN):
            data = lcp.addci()
            magics.add(dict(opts(data))[5])
            lcp.nakci(wppp.build_options([(5, dict(opts(data))[5])]))
    assert len(magics) == L.LOOPBACK_WARN          # a new magic each time
    assert lcp.looped_back and ("lcp_looped_back",) in owner.calls
    assert "looped back" in caplog.text


def test_reject_must_list_our_options_unmodified():
    lcp, _, _ = make_lcp()
    lcp.resetci()
    lcp.addci()
    assert not lcp.rejci(wppp.build_options([(1, U16.pack(1500))]))      # never asked
    assert not lcp.rejci(wppp.build_options([(2, U32.pack(1))]))         # modified
    assert lcp.rejci(wppp.build_options([(7, b""), (8, b"")]))
    o = dict(opts(lcp.addci()))
    assert 7 not in o and 8 not in o and 2 in o


def test_rejected_or_persistently_naked_auth_is_dropped():
    lcp, _, _ = make_lcp(require_auth="pap", max_failure=3)
    lcp.resetci()
    lcp.addci()
    for _ in range(2):
        lcp.nakci(wppp.build_options([(3, b"\xc2\x23\x05")]))
        assert dict(opts(lcp.addci()))[3] == b"\xc0\x23"
    lcp.nakci(wppp.build_options([(3, b"\xc2\x23\x05")]))
    assert 3 not in dict(opts(lcp.addci()))
    lcp.resetci()
    lcp.addci()
    assert lcp.rejci(wppp.build_options([(3, b"\xc0\x23")]))
    assert 3 not in dict(opts(lcp.addci()))


# -- the automaton with LCP's hooks ----------------------------------------------------------


def open_lcp(**kw):
    lcp, sent, owner = make_lcp(**kw)
    lcp.fsm.open(0)
    lcp.fsm.up(0)
    code, ident, data = wppp.parse_cp(sent[-1])
    lcp.fsm.input(wppp.build_cp(2, ident, data), 0)
    lcp.fsm.input(wppp.build_cp(1, 1, wppp.build_options([(5, U32.pack(0xABCDEF01))])), 0)
    assert lcp.state == State.OPENED
    del sent[:]
    return lcp, sent, owner


def test_echo_reply_carries_our_magic_and_the_data():
    lcp, sent, _ = open_lcp()
    lcp.fsm.input(wppp.build_cp(9, 5, U32.pack(0xABCDEF01) + b"ping"), 10)
    assert wppp.parse_cp(sent[-1]) == (10, 5, U32.pack(lcp.got.magic) + b"ping")


def test_echo_request_ignored_unless_opened():
    lcp, sent, _ = make_lcp()
    lcp.fsm.open(0)
    lcp.fsm.up(0)
    del sent[:]
    lcp.fsm.input(wppp.build_cp(9, 5, b"\0\0\0\0"), 10)
    assert sent == []


def test_protocol_reject_handed_to_owner_only_when_opened():
    lcp, sent, owner = make_lcp()
    lcp.fsm.open(0)
    lcp.fsm.up(0)
    lcp.fsm.input(wppp.build_cp(8, 1, b"\x80\x21"), 0)
    assert not [c for c in owner.calls if c[0] == "lcp_protocol_rejected"]
    lcp, sent, owner = open_lcp()
    lcp.fsm.input(wppp.build_cp(8, 1, b"\x80\x21\x01\x01\x00\x04"), 0)
    assert ("lcp_protocol_rejected", 0x8021) in owner.calls


def test_send_protocol_reject_only_when_opened():
    lcp, sent, _ = make_lcp()
    assert not lcp.send_protocol_reject(0x8057, b"x")
    lcp, sent, _ = open_lcp()
    assert lcp.send_protocol_reject(0x8057, b"\x01\x02")
    assert wppp.parse_cp(sent[-1])[0::2] == (8, b"\x80\x57\x01\x02")


def test_code_reject_of_echo_disables_keepalive():
    lcp, sent, _ = open_lcp(lcp_echo_interval=5)
    assert lcp.get_timer() == 5000
    lcp.fsm.input(wppp.build_cp(7, 1, wppp.build_cp(9, 3, b"\0\0\0\0")), 10)
    assert lcp.echo_disabled and lcp.get_timer() is None and lcp.state == State.OPENED


def test_keepalive_counts_pending_requests():
    lcp, sent, owner = open_lcp(lcp_echo_interval=5, lcp_echo_failure=2)
    lcp.handle_timer(4999)
    assert sent == []
    lcp.handle_timer(5000)
    lcp.handle_timer(10000)
    assert [wppp.parse_cp(p)[0] for p in sent] == [9, 9]
    assert lcp.counters["echoes_missed"] == 1
    lcp.handle_timer(15000)
    assert ("lcp_echo_failed",) in owner.calls and lcp.get_timer() is None
    assert len(sent) == 2


def test_own_echo_reply_is_not_proof_of_life():
    lcp, sent, owner = open_lcp(lcp_echo_interval=5, lcp_echo_failure=1)
    lcp.handle_timer(5000)
    _, ident, data = wppp.parse_cp(sent[-1])
    lcp.fsm.input(wppp.build_cp(10, ident, data), 5001)        # looped back: our magic
    assert lcp.echos_pending == 1 and lcp.counters["looped_echo_replies"] == 1
    lcp.fsm.input(wppp.build_cp(10, ident, U32.pack(0xABCDEF01)), 5002)
    assert lcp.echos_pending == 0 and lcp.counters["echo_replies"] == 1


def test_down_resets_peer_options():
    lcp, sent, owner = open_lcp()
    assert lcp.his.magic == 0xABCDEF01
    lcp.fsm.down(100)
    assert ("lcp_down",) in owner.calls and lcp.his.magic is None and lcp.peer_mru == 1500
