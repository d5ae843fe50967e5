"""The client role of PPPLink against the server role, both in memory (no threads, explicit times)."""

import random

import pytest

from pyslirp.ppp import lcp as L
from pyslirp.ppp.events import AuthResult, LinkUp
from pyslirp.ppp.fsm import State
from pyslirp.ppp.link import LinkConfig, PPPLink
from pyslirp.ppp.protocol import Phase
from pyslirp.wire import hdlc
from pyslirp.wire import ppp as wppp


def client_config(**kw):
    base = dict(role="client", local_ip="0.0.0.0", remote_ip="0.0.0.0", answer="none")
    base.update(kw)
    return LinkConfig(**base)


def pump(a, b, now, rounds=50):
    """Exchange output between two links until both are quiet; returns (frames a->b, frames b->a)."""
    ab, ba = [], []
    for _ in range(rounds):
        moved = False
        for src, dst, log in ((a, b, ab), (b, a, ba)):
            for _, data in src.take_output():
                moved = True
                log.append(data)
                dst.receive_data(data, now)
        if not moved:
            break
    return ab, ba


def run(client, server, until=20000, step=100):
    now = 0
    server.lower_up(now)
    client.lower_up(now)
    events = {"client": [], "server": []}
    while now <= until:
        pump(client, server, now)
        events["client"] += client.take_events()
        events["server"] += server.take_events()
        if client.is_up and server.is_up:
            break
        now += step
        for link in (client, server):
            t = link.get_timer()
            if t is not None and t <= now:
                link.handle_timer(now)
    return events, now


def ups(events):
    return [e for e in events if isinstance(e, LinkUp)]


def test_client_gets_an_address_and_dns_from_the_server():
    server = PPPLink(LinkConfig(local_ip="10.0.0.1", remote_ip="10.0.0.2", dns=("10.0.0.3", "10.0.0.4")),
                     random.Random(1))
    client = PPPLink(client_config(), random.Random(2))
    events, _ = run(client, server)
    assert ups(events["client"]) == [LinkUp("10.0.0.2", "10.0.0.1", 1500)]
    assert ups(events["server"]) == [LinkUp("10.0.0.1", "10.0.0.2", 1500)]
    assert client.ipcp.dns_servers == ("10.0.0.3", "10.0.0.4")
    # pppd's defaults were negotiated both ways.
    assert client.lcp.got.accm == 0 and client.lcp.got.pfc and client.lcp.got.acfc
    assert server.lcp.his.pfc and server.lcp.his.magic == client.lcp.got.magic
    # VJ and Deflate, as the server negotiates them, through the same stages.
    assert client.vj_active and server.vj_active
    assert client.ccp.state == State.OPENED


def test_client_without_dns_from_the_server_stops_asking():
    server = PPPLink(LinkConfig(), random.Random(1))
    client = PPPLink(client_config(vj=False, compression="none"), random.Random(2))
    events, _ = run(client, server)
    assert ups(events["client"]) == [LinkUp("10.0.0.2", "10.0.0.1", 1500)]
    assert client.ipcp.dns_servers == () and not client.vj_active


def test_fixed_local_ip_is_kept_when_the_server_agrees():
    server = PPPLink(LinkConfig(remote_ip="10.0.0.9"), random.Random(1))
    client = PPPLink(client_config(local_ip="10.0.0.9", remote_ip="10.0.0.1"), random.Random(2))
    events, _ = run(client, server)
    assert ups(events["client"]) == [LinkUp("10.0.0.9", "10.0.0.1", 1500)]


@pytest.mark.parametrize("method", ["pap", "chap"])
def test_client_authenticates(method):
    server = PPPLink(LinkConfig(require_auth=method, secrets=(("alice", "s3cret"),)), random.Random(1))
    client = PPPLink(client_config(user="alice", password="s3cret"), random.Random(2))
    events, _ = run(client, server)
    assert AuthResult("alice", True, method) in events["client"]
    assert AuthResult("alice", True, method) in events["server"]
    assert client.is_up and server.is_up
    assert client.lcp.his.auth == method


@pytest.mark.parametrize("method", ["pap", "chap"])
def test_wrong_password_closes_the_client(method):
    server = PPPLink(LinkConfig(require_auth=method, secrets=(("alice", "s3cret"),)), random.Random(1))
    client = PPPLink(client_config(user="alice", password="wrong"), random.Random(2))
    events, now = run(client, server, until=3000)
    assert AuthResult("alice", False, method) in events["client"]
    assert not client.is_up
    # The client ends the session for good (pppd exits): Terminate, then Closed.
    for _ in range(40):
        now += 500
        for link in (client, server):
            t = link.get_timer()
            if t is not None and t <= now:
                link.handle_timer(now)
        pump(client, server, now)
    assert client.is_dead


def test_no_credentials_rejects_the_auth_request():
    server = PPPLink(LinkConfig(require_auth="pap", secrets=(("alice", "s3cret"),)), random.Random(1))
    client = PPPLink(client_config(), random.Random(2))
    events, _ = run(client, server, until=5000)
    assert not client.is_up
    assert client.lcp.his.auth is None
    # the server saw its Authentication-Protocol rejected and fails the session
    assert AuthResult("", False, "pap") in events["server"]


def test_chap_with_another_algorithm_is_nakd_with_md5():
    client = PPPLink(client_config(user="alice", password="x"), random.Random(2))
    client.lower_up(0)
    client.take_output()
    mschap = bytes([L.CI_AUTHTYPE, 5, 0xC2, 0x23, 0x81])
    request = wppp.build_cp(wppp.CONFIGURE_REQUEST, 7, mschap)
    client.receive_data(hdlc.encode_frame(wppp.build_frame(wppp.PROTO_LCP, request), 0xFFFFFFFF), 10)
    out = b"".join(data for _, data in client.take_output())
    frames = [f for f in hdlc.Deframer().feed(out) if f]
    answers = [wppp.parse_cp(wppp.parse_frame(f)[1]) for f in frames]
    assert (wppp.CONFIGURE_NAK, 7, bytes([L.CI_AUTHTYPE, 5, 0xC2, 0x23, 5])) in answers


def test_server_offering_zero_takes_our_remote_ip():
    """SLiRP's IPCP offers 0.0.0.0 for itself: --remote-ip Naks it with the address we want."""
    client = PPPLink(client_config(remote_ip="10.0.2.2"), random.Random(2))
    from pyslirp.ppp import ipcp as I
    verdict = client.ipcp.reqci(bytes([I.CI_ADDR, 6, 0, 0, 0, 0]), False)
    assert verdict == (wppp.CONFIGURE_NAK, bytes([I.CI_ADDR, 6, 10, 0, 2, 2]))
    assert client.ipcp.reqci(bytes([I.CI_ADDR, 6, 10, 0, 2, 2]), False)[0] == wppp.CONFIGURE_ACK
    anyone = PPPLink(client_config(), random.Random(2))
    assert anyone.ipcp.reqci(bytes([I.CI_ADDR, 6, 0, 0, 0, 0]), False)[0] == wppp.CONFIGURE_REJECT
    assert anyone.ipcp.reqci(bytes([I.CI_ADDR, 6, 10, 9, 9, 9]), False)[0] == wppp.CONFIGURE_ACK


def test_client_role_refuses_server_only_settings():
    with pytest.raises(ValueError):
        PPPLink(client_config(require_auth="pap"), random.Random(1))
    with pytest.raises(ValueError):
        PPPLink(LinkConfig(role="client"), random.Random(1))      # answer defaults to auto


def test_echo_keepalive_runs_in_the_client_role():
    server = PPPLink(LinkConfig(lcp_echo_interval=5), random.Random(1))
    client = PPPLink(client_config(lcp_echo_interval=5), random.Random(2))
    _, now = run(client, server)
    for _ in range(3):
        now += 5000
        for link in (client, server):
            link.handle_timer(now)
        pump(client, server, now)
    assert client.lcp.counters["echoes_sent"] >= 2 and client.lcp.counters["echo_replies"] >= 2
    assert client.phase == Phase.NETWORK
