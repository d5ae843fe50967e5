"""PAP (RFC 1334) and CHAP-MD5 (RFC 1994), authenticator side: the servers alone, then over the link."""

import hashlib
import logging
import random
import struct

import pytest

from pyslirp.ppp.auth import ChapServer, PapServer, chap_md5_response
from pyslirp.ppp.events import AuthResult, LinkDown, LinkUp
from pyslirp.ppp.fsm import State
from pyslirp.ppp.link import Phase
from pyslirp.wire import ppp as wppp
from test_link import CHAP, IPCP, LCP, PAP, Client, events_of, make_link

SECRETS = (("alice", "wonderland"), ("bob", "s3cret"))


def pap_request(ident, user, password):
    user, password = user.encode(), password.encode()
    return wppp.build_cp(1, ident, bytes([len(user)]) + user + bytes([len(password)]) + password)


class Harness(object):
    def __init__(self, server_cls, **kw):
        self.sent = []
        self.results = []
        self.server = server_cls(SECRETS, self.sent.append, lambda u, ok: self.results.append((u, ok)), **kw)

    def packets(self):
        return [wppp.parse_cp(p) for p in self.sent]


# -- PAP ------------------------------------------------------------------------------


def test_pap_good_password_acked():
    h = Harness(PapServer, wait_ms=30000)
    h.server.start(0)
    h.server.input(pap_request(7, "bob", "s3cret"), 10)
    (code, ident, data), = h.packets()
    assert (code, ident) == (2, 7) and data[1:] == b"Login ok" and data[0] == len(b"Login ok")
    assert h.results == [("bob", True)]
    assert h.server.get_timer() is None


def test_pap_wrong_password_or_unknown_user_naked():
    for user, password in (("bob", "wrong"), ("mallory", "s3cret"), ("bob", "s3cret!"), ("bo", "s3cret")):
        h = Harness(PapServer)
        h.server.start(0)
        h.server.input(pap_request(3, user, password), 10)
        assert [p[:2] for p in h.packets()] == [(3, 3)]
        assert h.results == [(user, False)]


def test_pap_retransmitted_request_after_ack_is_acked_again_once_reported():
    h = Harness(PapServer)
    h.server.start(0)
    h.server.input(pap_request(1, "alice", "wonderland"), 10)
    h.server.input(pap_request(2, "alice", "wonderland"), 20)
    assert [p[:2] for p in h.packets()] == [(2, 1), (2, 2)]
    assert h.results == [("alice", True)]


def test_pap_timeout_fails():
    h = Harness(PapServer, wait_ms=5000)
    h.server.start(1000)
    assert h.server.get_timer() == 6000
    h.server.handle_timer(5999)
    assert h.results == []
    h.server.handle_timer(6000)
    assert h.results == [("", False)] and h.sent == []


def test_pap_malformed_requests_dropped():
    h = Harness(PapServer)
    h.server.start(0)
    for bad in (wppp.build_cp(1, 1, b""), wppp.build_cp(1, 1, b"\x05ab"), wppp.build_cp(1, 1, b"\x01a\x09xy"),
                b"\x01\x01", wppp.build_cp(2, 1, b"\x00")):
        h.server.input(bad, 0)
    assert h.sent == [] and h.results == []
    assert h.server.counters["malformed"] == 4 and h.server.counters["unexpected_code"] == 1


def test_pap_password_never_logged(caplog):
    with caplog.at_level(logging.DEBUG, logger="pyslirp"):
        for password in ("wonderland", "notthepassword"):
            h = Harness(PapServer)
            h.server.start(0)
            h.server.input(pap_request(1, "alice", password), 0)
    assert "alice" in caplog.text
    assert "wonderland" not in caplog.text and "notthepassword" not in caplog.text


# -- CHAP -----------------------------------------------------------------------------


def chap_response(ident, challenge, user, secret):
    value = hashlib.md5(bytes([ident]) + secret.encode() + challenge).digest()
    return wppp.build_cp(2, ident, bytes([len(value)]) + value + user.encode())


def test_chap_md5_helper_matches_rfc1994_construction():
    assert chap_md5_response(9, "pw", b"\x01\x02") == hashlib.md5(b"\x09pw\x01\x02").digest()


def test_chap_challenge_then_good_response_succeeds():
    h = Harness(ChapServer, rng=random.Random(5), restart_ms=3000, max_challenges=4)
    h.server.start(0)
    (code, ident, data), = h.packets()
    assert code == 1 and data[0] == 16
    challenge, name = data[1:17], data[17:]
    assert name == b"pyslirp"
    h.server.input(chap_response(ident, challenge, "alice", "wonderland"), 100)
    assert h.packets()[-1][:2] == (3, ident)
    assert h.results == [("alice", True)]
    # our Success got lost: the same Response again gets Success again, one result only
    h.server.input(chap_response(ident, challenge, "alice", "wonderland"), 200)
    assert [p[0] for p in h.packets()] == [1, 3, 3] and len(h.results) == 1


def test_chap_challenges_are_random_and_identifiers_change():
    seen = set()
    h = Harness(ChapServer, rng=random.Random(6))
    for i in range(5):
        h.server.start(i)
        code, ident, data = h.packets()[-1]
        seen.add((ident, data[1:17]))
    assert len(seen) == 5 and len(set(i for i, _ in seen)) == 5


def test_chap_wrong_secret_fails():
    h = Harness(ChapServer, rng=random.Random(5))
    h.server.start(0)
    _, ident, data = h.packets()[0]
    h.server.input(chap_response(ident, data[1:17], "alice", "WONDERLAND"), 100)
    assert h.packets()[-1][:2] == (4, ident)
    assert h.results == [("alice", False)]


def test_chap_response_to_other_identifier_ignored():
    h = Harness(ChapServer, rng=random.Random(5))
    h.server.start(0)
    _, ident, data = h.packets()[0]
    h.server.input(chap_response((ident + 1) & 0xFF, data[1:17], "alice", "wonderland"), 100)
    assert len(h.sent) == 1 and h.results == [] and h.server.counters["stale_response"] == 1


def test_chap_retransmits_challenge_then_gives_up():
    h = Harness(ChapServer, rng=random.Random(5), restart_ms=3000, max_challenges=3)
    h.server.start(0)
    h.server.handle_timer(2999)
    assert len(h.sent) == 1
    h.server.handle_timer(3000)
    assert len(h.sent) == 2 and h.sent[1] == h.sent[0]      # the same challenge again
    h.server.handle_timer(6000)
    assert len(h.sent) == 3 and h.results == []
    h.server.handle_timer(9000)
    assert len(h.sent) == 3 and h.results == [("", False)]
    assert h.server.get_timer() is None


def test_chap_late_response_to_retransmitted_challenge_accepted():
    h = Harness(ChapServer, rng=random.Random(5), restart_ms=3000)
    h.server.start(0)
    h.server.handle_timer(3000)
    _, ident, data = h.packets()[0]
    h.server.input(chap_response(ident, data[1:17], "bob", "s3cret"), 3100)
    assert h.results == [("bob", True)]


# -- over the link ----------------------------------------------------------------------


def auth_session(method, user, password, **link_kw):
    link = make_link(require_auth=method, secrets=SECRETS, **link_kw)
    link.lower_up(0)
    client = Client(link, user=user, password=password, auth_with=method)
    client.start()
    return link, client


def test_lcp_asks_for_the_configured_protocol():
    for method, value in (("pap", struct.pack("!H", PAP)), ("chap", struct.pack("!HB", CHAP, 5))):
        link, client = auth_session(method, "alice", "wonderland")
        opts = dict(wppp.parse_options(client.of(LCP, 1)[0][2]))
        assert opts[3] == value


@pytest.mark.parametrize("method", ["pap", "chap"])
def test_good_credentials_bring_the_link_up(method):
    link, client = auth_session(method, "alice", "wonderland")
    assert events_of(client, AuthResult) == [AuthResult("alice", True, method)]
    assert link.is_up and link.phase == Phase.NETWORK
    assert events_of(client, LinkUp)
    # authentication came before any IPCP
    order = [p for p, _ in client.received if p in (PAP, CHAP, IPCP)]
    assert order[0] in (PAP, CHAP) and IPCP in order


@pytest.mark.parametrize("method", ["pap", "chap"])
def test_wrong_credentials_terminate_and_listen_again(method):
    link, client = auth_session(method, "alice", "guess")
    assert events_of(client, AuthResult) == [AuthResult("alice", False, method)]
    assert not link.is_up and not events_of(client, LinkUp)
    assert events_of(client, LinkDown) == [LinkDown("authentication failed")]
    # Nak/Failure first, then LCP Terminate-Request
    kinds = [(p, i[0]) for p, i in client.received if p in (PAP, CHAP) or (p == LCP and i[0] == 5)]
    assert kinds[-2:] == [(PAP, 3) if method == "pap" else (CHAP, 4), (LCP, 5)]
    client.advance(client.now + 10000)
    assert link.lcp.state == State.STOPPED
    # the right user can dial in afterwards
    fresh = Client(link, now=client.now, user="bob", password="s3cret", auth_with=method)
    fresh.start()
    assert link.is_up and events_of(fresh, AuthResult) == [AuthResult("bob", True, method)]


def test_ipcp_before_authentication_is_dropped():
    link = make_link(require_auth="pap", secrets=SECRETS)
    link.lower_up(0)
    client = Client(link, user="alice", password="wonderland", auth_with="none-yet")
    client.start()                      # LCP opens; the client "forgets" to authenticate
    assert link.phase == Phase.AUTHENTICATE
    client.send_ipcp_request()
    client.collect()
    assert client.of(IPCP) == [] and link.counters["ipcp_before_network"] == 1


def test_peer_rejecting_authentication_fails():
    link = make_link(require_auth="chap", secrets=SECRETS)
    link.lower_up(0)
    client = Client(link, user="alice", password="wonderland", auth_with="chap")
    original = client.handle

    def handle(protocol, info):
        code, ident, data = wppp.parse_cp(info)
        if protocol == LCP and code == 1 and 3 in dict(wppp.parse_options(data)):
            auth = [(k, v) for k, v in wppp.parse_options(data) if k == 3]
            client.send_cp(LCP, 4, ident, wppp.build_options(auth))
            return
        original(protocol, info)
    client.handle = handle
    client.start()
    assert events_of(client, AuthResult) == [AuthResult("", False, "chap")]
    assert not link.is_up


def test_peer_naking_chap_with_pap_never_gets_pap():
    link = make_link(require_auth="chap", secrets=SECRETS, max_failure=4)
    link.lower_up(0)
    client = Client(link, user="alice", password="wonderland", auth_with="pap")
    client.lcp_nak = lambda opts: [(3, struct.pack("!H", PAP))] if 3 in dict(opts) else None
    client.start()
    requests = dict((r[1], r) for r in client.of(LCP, 1))      # by Identifier: retransmissions count once
    auth = [dict(wppp.parse_options(r[2])).get(3) for r in requests.values()]
    # CHAP-MD5 asked for Max-Failure times, PAP never; then the option is dropped ...
    assert auth == [struct.pack("!HB", CHAP, 5)] * 4 + [None]
    # ... so LCP opens without authentication, which fails the session.
    assert events_of(client, AuthResult) == [AuthResult("", False, "chap")]
    assert client.of(PAP) == [] and not link.is_up and not events_of(client, LinkUp)
    client.advance(client.now + 10000)
    assert link.lcp.state == State.STOPPED
