"""The flow policy: the one admission decision (routes, the allow-list, special addresses, limits)."""

import ipaddress

import pytest

from pyslirp.net import refusal
from pyslirp.net.flows import (PROTO_ICMP, PROTO_TCP, PROTO_UDP, AddressRule, FlowKey, OutboundPolicy, Policy,
                               Route, Service)
from pyslirp.net.stack import StackConfig

LOCAL = ipaddress.IPv4Address("10.0.0.1").packed
CLIENT = ipaddress.IPv4Address("10.0.0.2").packed


def addr(text):
    return ipaddress.IPv4Address(text).packed


def flow(dst, port, proto=PROTO_TCP, sport=40000):
    return FlowKey(proto, CLIENT, sport, addr(dst) if isinstance(dst, str) else dst, port)


def rules(*texts):
    return tuple(AddressRule.parse(t) for t in texts)


def policy(allow=("0.0.0.0/0",), deny=(), enabled=True, via="direct", host_addresses=(), **kw):
    out = OutboundPolicy(enabled=enabled, via=via, allow=rules(*allow), deny=rules(*deny),
                         host_addresses=host_addresses)
    return Policy(StackConfig(outbound=out, **kw))


# -- the allow-list syntax -----------------------------------------------------------------------------------------

@pytest.mark.parametrize("text,network,low,high", [
    ("198.18.0.2", "198.18.0.2/32", 0, 65535),
    ("10.1.0.0/16:22", "10.1.0.0/16", 22, 22),
    ("0.0.0.0/0:80-443", "0.0.0.0/0", 80, 443),
    (" 192.0.2.0/24 ", "192.0.2.0/24", 0, 65535),
    ("10.1.2.3/8", "10.0.0.0/8", 0, 65535),          # host bits are forgiven, as ip route does
])
def test_rule_parses(text, network, low, high):
    rule = AddressRule.parse(text)
    assert (str(rule.network), rule.low, rule.high) == (network, low, high)


@pytest.mark.parametrize("text", ["", "example.com", "10.0.0.0/33", "10.0.0.256", "10.0.0.1:0", "10.0.0.1:70000",
                                  "10.0.0.1:443-80", "10.0.0.1:", "::1", "10.0.0.1:22:23", 42, None])
def test_rule_rejects(text):
    with pytest.raises(ValueError):
        AddressRule.parse(text)


def test_rule_matching_with_and_without_ports():
    rule = AddressRule.parse("10.1.0.0/16:20-22")
    assert rule.matches(ipaddress.IPv4Address("10.1.200.3"), 21)
    assert not rule.matches(ipaddress.IPv4Address("10.1.200.3"), 23)
    assert not rule.matches(ipaddress.IPv4Address("10.2.0.1"), 21)
    assert rule.matches(ipaddress.IPv4Address("10.1.0.1"), None)     # ICMP: any rule covering the address


# -- routes on local_ip --------------------------------------------------------------------------------------------

def test_services_udp_services_and_dns_on_local_ip():
    p = Policy(StackConfig(services=(Service(22, "127.0.0.1", 2222, "SSH"), Service(80, "web.lan", 80, "", "proxy")),
                           udp_services=(Service(7, "127.0.0.1", 7007, "echo"),), proxy_via="socks5",
                           dns_forwarder=True, dns_tcp_upstream=("192.0.2.53", 53)))
    assert p.decide(flow("10.0.0.1", 22), 0) == Route("service", "127.0.0.1", 2222, "direct", "SSH")
    assert p.decide(flow("10.0.0.1", 80), 0) == Route("service", "web.lan", 80, "socks5", "80")
    assert p.decide(flow("10.0.0.1", 7, PROTO_UDP), 0) == Route("udp_service", "127.0.0.1", 7007, "direct", "echo")
    assert p.decide(flow("10.0.0.1", 53, PROTO_UDP), 0).kind == "dns"
    assert p.decide(flow("10.0.0.1", 53), 0) == Route("dns", "192.0.2.53", 53, "direct", "dns")
    tcp = p.decide(flow("10.0.0.1", 23), 0)
    udp = p.decide(flow("10.0.0.1", 8, PROTO_UDP), 0)
    assert (tcp.kind, tcp.outcome, tcp.cause) == ("refused", refusal.RESET, "policy")
    assert (udp.kind, udp.outcome) == ("refused", refusal.PORT_UNREACHABLE)
    assert "port 23" in tcp.reason


def test_no_dns_on_local_ip_without_the_forwarder():
    p = Policy(StackConfig())
    assert p.decide(flow("10.0.0.1", 53, PROTO_UDP), 0).outcome == refusal.PORT_UNREACHABLE
    assert p.decide(flow("10.0.0.1", 53), 0).outcome == refusal.RESET


# -- NAT -----------------------------------------------------------------------------------------------------------

def test_outbound_disabled_refuses_every_outside_flow():
    p = policy(enabled=False)
    for f in (flow("198.18.0.2", 80), flow("198.18.0.2", 53, PROTO_UDP), flow("198.18.0.2", 0, PROTO_ICMP)):
        route = p.decide(f, 0)
        assert (route.kind, route.outcome) == ("refused", refusal.ADMIN_PROHIBITED)
        assert "disabled" in route.reason


def test_allow_and_deny_lists():
    p = policy(allow=("198.18.0.0/30", "192.0.2.0/24:80-443"), deny=("198.18.0.3",))
    assert p.decide(flow("198.18.0.2", 5555), 0) == Route("nat", "198.18.0.2", 5555, "direct", "nat")
    assert p.decide(flow("192.0.2.9", 443), 0).kind == "nat"
    assert p.decide(flow("192.0.2.9", 22), 0).outcome == refusal.ADMIN_PROHIBITED      # port outside the range
    assert p.decide(flow("203.0.113.1", 80), 0).reason == "not in outbound.allow"
    denied = p.decide(flow("198.18.0.3", 80), 0)
    assert denied.outcome == refusal.ADMIN_PROHIBITED and "198.18.0.3" in denied.reason   # deny wins
    # ICMP echo: any address some rule covers, whatever its ports.
    assert p.decide(flow("192.0.2.9", 0, PROTO_ICMP), 0).kind == "nat"
    assert p.decide(flow("203.0.113.1", 0, PROTO_ICMP), 0).kind == "refused"


@pytest.mark.parametrize("dst", ["127.0.0.1", "127.1.2.3", "0.1.2.3", "169.254.169.254", "224.0.0.251",
                                 "239.1.1.1", "255.255.255.255", "192.168.77.5"])
def test_special_addresses_need_an_explicit_allow_entry(dst):
    host = ("192.168.77.5",)
    p = policy(allow=("0.0.0.0/0",), host_addresses=host)
    route = p.decide(flow(dst, 8080), 0)
    assert (route.kind, route.outcome) == ("refused", refusal.ADMIN_PROHIBITED)
    assert "special" in route.reason
    # A supernet of the special range is not explicit either...
    assert p.decide(flow(dst, 8080), 0).kind == "refused"
    assert policy(allow=("0.0.0.0/1", "128.0.0.0/1"), host_addresses=host).decide(flow(dst, 8080), 0).kind == "refused"
    # ... but an entry inside it is.
    assert policy(allow=(dst + "/32:8080",), host_addresses=host).decide(flow(dst, 8080), 0).kind == "nat"
    assert policy(allow=(dst + "/32:8080",), host_addresses=host).decide(flow(dst, 8081), 0).kind == "refused"


def test_outbound_via_proxy_carries_tcp_only():
    p = policy(via="http", proxy_via="http")
    assert p.decide(flow("198.18.0.2", 80), 0) == Route("nat", "198.18.0.2", 80, "http", "nat")
    for f in (flow("198.18.0.2", 53, PROTO_UDP), flow("198.18.0.2", 0, PROTO_ICMP)):
        route = p.decide(f, 0)
        assert route.outcome == refusal.ADMIN_PROHIBITED and "proxy" in route.reason


# -- limits --------------------------------------------------------------------------------------------------------

def test_connection_limits_are_counted_and_released():
    p = policy(services=(Service(22, "127.0.0.1", 22, "SSH"),), max_connections=3, max_per_service=2)
    a, b, c = flow("10.0.0.1", 22, sport=1), flow("10.0.0.1", 22, sport=2), flow("10.0.0.1", 22, sport=3)
    ra, rb = p.decide(a, 0), p.decide(b, 0)
    assert ra.admitted and rb.admitted
    over = p.decide(c, 0)
    assert (over.outcome, over.cause) == (refusal.RESET, "limit") and "max_per_service" in over.reason
    n = p.decide(flow("198.18.0.2", 80), 0)
    assert n.kind == "nat"                          # NAT has its own per-label count ("nat")
    total = p.decide(flow("198.18.0.2", 81), 0)
    assert total.cause == "limit" and "max_connections" in total.reason
    p.release(a, ra)
    assert p.decide(c, 0).admitted
    assert (p.tcp_active, p.per_label) == (3, {"SSH": 2, "nat": 1})


def test_udp_flow_limit_and_dns_is_not_a_flow():
    p = policy(max_udp_flows=2, dns_forwarder=True)
    r1 = p.decide(flow("198.18.0.2", 1, PROTO_UDP), 0)
    p.decide(flow("198.18.0.2", 2, PROTO_UDP), 0)
    over = p.decide(flow("198.18.0.2", 3, PROTO_UDP), 0)
    assert over.cause == "limit" and over.outcome == refusal.PORT_UNREACHABLE
    for _ in range(5):
        assert p.decide(flow("10.0.0.1", 53, PROTO_UDP), 0).kind == "dns"
    p.release(flow("198.18.0.2", 1, PROTO_UDP), r1)
    assert p.decide(flow("198.18.0.2", 3, PROTO_UDP), 0).kind == "nat"


SSH = (Service(22, "127.0.0.1", 22, "SSH"),)


def test_half_open_flows_are_counted_until_their_connect_ends():
    p = policy(services=SSH, max_half_open=2, max_per_service=64, max_connections=64)
    a, b = p.decide(flow("10.0.0.1", 22, sport=1), 0), p.decide(flow("10.0.0.1", 22, sport=2), 0)
    assert a.admitted and b.admitted and p.half_open == 2
    third = p.decide(flow("10.0.0.1", 22, sport=3), 0)
    assert third.deferred and not third.admitted and "max_half_open (2)" in third.reason
    assert (third.host, third.port, third.name) == ("127.0.0.1", 22, "SSH")
    assert p.tcp_active == 2 and p.cookies_on(0) and p.cookie_periods == 1
    p.connect_done()
    assert p.half_open == 1
    assert p.decide(flow("10.0.0.1", 22, sport=3), 10).deferred     # cookies stay on for a while ...
    assert p.decide(flow("10.0.0.1", 22, sport=3), 10 + 5000).admitted  # ... then SYNs are admitted again
    assert p.cookie_periods == 1


def test_the_rate_defers_syns_and_completed_handshakes_wait_for_a_token():
    p = policy(services=SSH, new_connections_per_second=2, burst=2, max_per_service=64, max_connections=64)
    assert p.decide(flow("10.0.0.1", 22, sport=1), 0).admitted
    assert p.decide(flow("10.0.0.1", 22, sport=2), 0).admitted
    syn = p.decide(flow("10.0.0.1", 22, sport=3), 0)
    assert syn.deferred and (syn.cause, syn.limit) == ("rate", "new_connections_per_second")  # a cookie
    # The handshake completes: admitted and counted, never refused for the rate; the token is the caller's.
    late = p.decide(flow("10.0.0.1", 22, sport=3), 100, handshake=True)
    assert late.admitted and p.tcp_active == 3 and p.half_open == 3
    assert not p.take_token(100) and p.token_wait(100) == 400       # 2 a second: one token every 500 ms
    assert p.take_token(500) and not p.take_token(500) and p.token_wait(500) == 500


def test_a_full_half_open_table_defers_with_its_limit_named():
    p = policy(services=SSH, max_half_open=1)
    assert p.decide(flow("10.0.0.1", 22, sport=1), 0).admitted
    syn = p.decide(flow("10.0.0.1", 22, sport=2), 0)
    assert syn.deferred and (syn.cause, syn.limit) == ("limit", "max_half_open")
    assert "max_half_open (1)" in syn.reason


def test_completed_handshakes_still_meet_the_connection_limits_and_the_policy():
    p = policy(services=SSH, max_connections=1, max_per_service=1, max_half_open=1)
    assert p.decide(flow("10.0.0.1", 22, sport=1), 0).admitted
    over = p.decide(flow("10.0.0.1", 22, sport=2), 0, handshake=True)
    assert over.cause == "limit"
    unmapped = p.decide(flow("10.0.0.1", 23, sport=3), 0, handshake=True)
    assert unmapped.cause == "policy" and unmapped.outcome == refusal.RESET


def test_a_syn_flood_is_metered_even_while_cookies_are_on():
    p = policy(services=SSH, new_connections_per_second=20, burst=40, max_half_open=32,
               max_per_service=64, max_connections=64)
    admitted = deferred = 0
    for i in range(2000):                           # 1000 SYNs a second for two seconds
        route = p.decide(flow("10.0.0.1", 22, sport=1000 + i), i * 1)
        if route.admitted:
            admitted += 1
            p.connect_done()                        # the service connects at once
        elif route.deferred:
            deferred += 1
    assert admitted <= 40 and admitted + deferred == 2000 and p.cookies_on(1999)
    # The flood goes on at 30 a second, still faster than the rate: no stateful admission.
    for i in range(60):
        assert p.decide(flow("10.0.0.1", 22, sport=5000 + i), 2000 + i * 33).deferred


def test_flow_key_describes_itself():
    assert flow("198.18.0.2", 80).describe() == "tcp 10.0.0.2:40000 -> 198.18.0.2:80"
    assert Route("nat", "198.18.0.2", 80, "socks5", "nat").describe() == "nat 198.18.0.2:80 via socks5"
    assert Route("service", "127.0.0.1", 22, "direct", "SSH").describe() == "SSH 127.0.0.1:22"
