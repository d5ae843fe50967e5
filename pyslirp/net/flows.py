"""Flows and the one admission decision: what a new flow of the client is, and how it leaves. Sans-IO.

Theory of operation
-------------------
Every TCP connection, UDP association and ICMP echo exchange of the client is
a *flow*, named by its full tuple (smoltcp's ``Tuple{local, remote}``)::

    FlowKey(protocol, client_addr, client_port, server_addr, server_port)

Addresses are the packed bytes of the IP header (4 bytes for IPv4; the key
does not care about the family).  For ICMP echo the "ports" are the echo
identifier and 0.  The stack keeps one table per protocol keyed by this
tuple, and each flow answers from its own ``server_addr``: a NAT'd flow's
segments come from the outside address, not from ``local_ip``.

The first packet of a flow that matches no entry (a TCP SYN, a UDP datagram,
an echo request) goes to :meth:`Policy.decide`, the single admission point.
It returns a :class:`Route`:

* ``kind``: ``service`` (a ``[services.PORT]`` on local_ip), ``udp_service``
  (a ``[udp_services.PORT]``), ``dns`` (the forwarder on local_ip:53), ``nat``
  (an outside address the allow-list admits) or ``refused``;
* for admitted flows: the target ``host``/``port`` and ``via`` (``direct``,
  ``socks5`` or ``http``: how the runtime's connector reaches the target);
* for refusals: ``reason`` (one line for the log), ``cause`` (``policy``,
  ``limit``: what the metrics count) and ``outcome`` (net/refusal.py: an RST,
  ICMP administratively prohibited, port unreachable).

The policy also counts what it admitted (``release`` gives a slot back), so
the connection limits cost O(1) per SYN.

Service health (net/health.py).  A TCP service's Route carries every target
to try, in order: ``host``/``port`` first, then ``fallback``, leaving out
the targets whose circuit breaker is open; a service with no target left is
refused at once (cause ``service_down``, an RST).  The runtime reports what
its connects found (:meth:`Policy.connect_result`: which target connected,
which failed), and that feeds the breakers; a flow that goes before its
connect ends gives back a trial it held (:meth:`Policy.abandoned`).

Reload.  A new configuration is a new Policy built with ``previous=`` the
running one: it takes over the counts of admitted flows (flows keep the
Route they were admitted with, and give their slot back to whichever Policy
is current) and the breakers of the targets it still names.

Rate, half-open flows and SYN cookies (TCP).  Besides ``max_connections``
and ``max_per_service``, a new TCP flow needs a token from a bucket of
``new_connections_per_second`` with bursts of ``burst`` (net/ratelimit.py),
and a place among the ``max_half_open`` flows that wait for their service or
proxy connect (the stack reports the end of that wait, :meth:`connect_done`).
A bucket alone cannot tell a SYN flood from the client's real connections:
they come from the same address.  So when either runs out, the SYN is not
refused: the route is ``deferred`` and the stack answers it statelessly with
a SYN cookie (RFC 4987 section 3.6, net/tcp/syncookie.py).  Only a client
that completes the handshake comes back (``decide(flow, now,
handshake=True)``): it is checked against the connection limits (refused
with a reset beyond them), never refused for the rate: its service connect
waits for a token instead (:meth:`take_token`, :meth:`token_wait`; the
stack keeps such flows in arrival order), so a connection the client saw
open works like any other, and the service still sees no more new
connections than the rate.  Flood SYNs that never complete take no token,
no slot and no service connection.

Once cookies were needed, every SYN gets one for COOKIE_HOLD ms after the
last sign of pressure: a full half-open table, an empty bucket, or SYNs
arriving faster than the rate (a second bucket of the same size meters every
SYN).  Otherwise a flood would take each token as it refills, ahead of the
client's real handshakes.  While cookies are on, the connection limits too
are checked only when the handshake completes, so that a flood cannot make
us answer each of its SYNs with a reset.  Once the SYNs slow down below the
rate, new flows are admitted statefully again (a cookie's connection has no
window scaling or SACK unless timestamps carried them).

The allow-list (``[outbound] allow`` / ``deny``) is a list of
:class:`AddressRule`: an address or CIDR, optionally ``:PORT`` or
``:LOW-HIGH``.  A flow to an address other than local_ip is admitted only if
outbound is enabled, an ``allow`` rule matches and no ``deny`` rule does.
Some destinations are refused unless an ``allow`` rule names them
*explicitly*, i.e. with a network inside the special range (a catch-all such
as ``0.0.0.0/0`` does not count): ``0.0.0.0/8``, ``127.0.0.0/8``,
``169.254.0.0/16`` (cloud metadata services live there), ``224.0.0.0/4``,
``255.255.255.255`` and each of the host's own interface addresses (given by
the runtime, which can see them).  ICMP echo is allowed to any address some
rule covers, whatever its ports, and refused only by a ``deny`` entry for all
ports of its address.
"""

import ipaddress
import re
from collections import namedtuple
from dataclasses import dataclass, replace
from typing import Tuple

from pyslirp.net import refusal
from pyslirp.net.health import Health, Target
from pyslirp.net.ratelimit import TokenBucket

PROTO_ICMP = 1
PROTO_TCP = 6
PROTO_UDP = 17
PROTOCOL_NAMES = {PROTO_ICMP: "icmp", PROTO_TCP: "tcp", PROTO_UDP: "udp"}

# Route kinds.
SERVICE = "service"
UDP_SERVICE = "udp_service"
DNS = "dns"
NAT = "nat"
REFUSED = "refused"
DEFERRED = "deferred"           # a TCP SYN to answer with a SYN cookie: admitted only once the handshake completes

# How an admitted flow leaves this host.
VIA_DIRECT = "direct"
VIA_SOCKS5 = "socks5"
VIA_HTTP = "http"

# Refusal causes (what the metrics and the audit log count).
CAUSE_POLICY = "policy"
CAUSE_LIMIT = "limit"
CAUSE_RATE = "rate"
CAUSE_PROXY = "proxy"
CAUSE_SERVICE = "service_down"

COOKIE_HOLD = 5000              # ms: SYN cookies stay on this long after the last sign of pressure

# The limits that turn SYN cookies on (their configuration keys, as in the audit log's ``limit`` records).
LIMIT_HALF_OPEN = "max_half_open"
LIMIT_RATE = "new_connections_per_second"


class FlowKey(namedtuple("FlowKey", "protocol client_addr client_port server_addr server_port")):
    """The full tuple of a flow (a namedtuple: it hashes and compares as the plain tuple, cheaply)."""
    __slots__ = ()

    def describe(self):
        """``tcp 10.0.0.2:40000 -> 198.18.0.2:80`` for log lines."""
        return "%s %s:%d -> %s:%d" % (PROTOCOL_NAMES.get(self.protocol, str(self.protocol)),
                                      addr_str(self.client_addr), self.client_port,
                                      addr_str(self.server_addr), self.server_port)


def addr_str(addr):
    """Packed address bytes -> text (IPv4 dotted quad, IPv6 in its short form)."""
    return str(ipaddress.ip_address(bytes(addr)))


@dataclass(frozen=True)
class Service:
    """A port on local_ip that leads to host:target_port (TCP ``[services]`` and UDP ``[udp_services]``)."""
    port: int
    host: str
    target_port: int
    name: str = ""
    via: str = VIA_DIRECT       # "direct" or "proxy" (the configured upstream proxy)
    fallback: Tuple[Tuple[str, int], ...] = ()  # TCP: (host, port) tried in order when a connect fails

    @property
    def targets(self):
        """Every (host, port) of the service, in the order they are tried."""
        return ((self.host, self.target_port),) + tuple(self.fallback)


@dataclass(frozen=True)
class Route:
    """What a flow is and how it leaves (see the module docstring)."""
    kind: str
    host: str = ""
    port: int = 0
    via: str = VIA_DIRECT
    name: str = ""
    reason: str = ""
    cause: str = ""
    outcome: str = ""
    limit: str = ""             # refused by a limit: its configuration key (max_connections, ...)
    fallback: Tuple[Tuple[str, int], ...] = ()  # (host, port) to try in order after host:port fails

    @property
    def admitted(self):
        return self.kind != REFUSED and self.kind != DEFERRED

    @property
    def deferred(self):
        """Answer the SYN with a cookie; the flow is decided again when the client completes the handshake."""
        return self.kind == DEFERRED

    @property
    def targets(self):
        """(host, port) of every target to try, in order: host:port, then the fallbacks."""
        return ((self.host, self.port),) + self.fallback

    def connected_to(self, index):
        """The Route as it turned out: target ``index`` reached (no fallbacks left to mention)."""
        if index == 0 and not self.fallback:
            return self
        host, port = self.targets[index]
        return replace(self, host=host, port=port, fallback=())

    @property
    def label(self):
        """The metrics' ``service`` label: the service's name (or port), or ``nat`` / ``dns``."""
        if self.kind in (SERVICE, UDP_SERVICE):
            return self.name or str(self.port)
        return self.kind

    def describe(self):
        """``SSH 127.0.0.1:22`` / ``nat 198.18.0.2:80 via socks5`` for log lines."""
        text = "%s:%d" % (self.host, self.port)
        if self.kind in (SERVICE, UDP_SERVICE):
            if self.name:
                text = self.name + " " + text
        else:
            text = self.kind + " " + text
        if self.fallback:
            text += " (fallback %s)" % ", ".join(_hostport(h, p) for h, p in self.fallback)
        if self.via != VIA_DIRECT:
            text += " via " + self.via
        return text


def _hostport(host, port):
    return "%s:%d" % ("[%s]" % host if ":" in host else host, port)


def refused(reason, outcome, cause=CAUSE_POLICY, limit=""):
    return Route(REFUSED, reason=reason, cause=cause, outcome=outcome, limit=limit)


def deferred(route, reason, cause, limit):
    """``route``'s target, deferred until the handshake completes (a SYN cookie) because of ``limit``."""
    return Route(DEFERRED, route.host, route.port, route.via, route.name, reason=reason, cause=cause, limit=limit)


# ---------------------------------------------------------------------------
# The allow-list

_RULE_RE = re.compile(r"^([0-9.]+(?:/\d{1,2})?)(?::(\d{1,5})(?:-(\d{1,5}))?)?$")


@dataclass(frozen=True)
class AddressRule:
    """An address or CIDR with an optional port range (``"10.1.0.0/16:22"``, ``"0.0.0.0/0:80-443"``)."""
    network: ipaddress.IPv4Network
    low: int = 0
    high: int = 65535
    text: str = ""

    @classmethod
    def parse(cls, text):
        """Parse one entry; ValueError with a short explanation when it is not one."""
        m = _RULE_RE.match(text.strip()) if isinstance(text, str) else None
        if not m:
            raise ValueError('must be an IPv4 address or CIDR, optionally with ":PORT" or ":LOW-HIGH", got %r'
                             % (text,))
        try:
            network = ipaddress.IPv4Network(m.group(1), strict=False)
        except ValueError as e:
            raise ValueError("%s: %s" % (m.group(1), e))
        low = high = None
        if m.group(2) is not None:
            low = int(m.group(2))
            high = int(m.group(3)) if m.group(3) is not None else low
            if not (1 <= low <= 65535 and 1 <= high <= 65535) or low > high:
                raise ValueError("port range must be 1-65535 with LOW <= HIGH, got %r" % (text,))
        return cls(network, low if low is not None else 0, high if high is not None else 65535, text.strip())

    @property
    def all_ports(self):
        return self.low == 0 and self.high == 65535

    def matches(self, addr, port=None):
        """Does ``addr`` (ipaddress.IPv4Address) and ``port`` (None: any, e.g. ICMP) fall under the rule?"""
        if addr not in self.network:
            return False
        return port is None or self.low <= port <= self.high


SPECIAL_NETWORKS = tuple(ipaddress.IPv4Network(n) for n in (
    "0.0.0.0/8", "127.0.0.0/8", "169.254.0.0/16", "224.0.0.0/4", "255.255.255.255/32"))


@dataclass(frozen=True)
class OutboundPolicy:
    enabled: bool = False
    via: str = VIA_DIRECT                  # direct, socks5 or http
    allow: Tuple[AddressRule, ...] = (AddressRule(ipaddress.IPv4Network("0.0.0.0/0"), text="0.0.0.0/0"),)
    deny: Tuple[AddressRule, ...] = ()
    host_addresses: Tuple[str, ...] = ()  # this host's own interface addresses (always special)


class Policy(object):
    """The single admission point for new flows (see the module docstring).

    ``previous``: the Policy this one replaces (a reload): its counts of admitted flows and its breakers carry
    over.
    """

    def __init__(self, config, previous=None):
        self.config = config
        self.local_ip = ipaddress.IPv4Address(config.local_ip).packed
        self.services = dict((s.port, s) for s in config.services)
        self.udp_services = dict((s.port, s) for s in config.udp_services)
        out = config.outbound
        self._specials = SPECIAL_NETWORKS + tuple(ipaddress.IPv4Network(a + "/32") for a in out.host_addresses)
        failures, cooldown = config.breaker_failures, config.breaker_cooldown * 1000
        if previous is None:
            self.tcp_active = 0
            self.udp_active = 0
            self.per_label = {}            # route label -> active TCP flows
            self.half_open = 0             # TCP flows admitted and still waiting for their service connect
            self.health = Health(failures, cooldown)
            self._cookies_until = None     # ms: SYNs are answered with cookies until then
            self.cookie_periods = 0        # times SYN cookies were switched on
        else:
            self.tcp_active = previous.tcp_active
            self.udp_active = previous.udp_active
            self.per_label = previous.per_label
            self.half_open = previous.half_open
            self.health = previous.health
            self.health.configure(failures, cooldown)
            self._cookies_until = previous._cookies_until
            self.cookie_periods = previous.cookie_periods
        self.health.track(self.service_targets())
        self.rate = TokenBucket(config.new_connections_per_second, config.burst)         # admitted TCP flows
        self._syn_meter = TokenBucket(config.new_connections_per_second, config.burst)   # every new SYN

    def service_targets(self):
        """The health Target of every configured TCP service target."""
        out = []
        for svc in self.config.services:
            via = self._via(svc.via)
            for host, port in svc.targets:
                out.append(Target(host, port, via))
        return out

    @property
    def breakers(self):
        """``{target label: "closed" | "open" | "half_open"}`` (for the metrics)."""
        return self.health.states()

    def _via(self, choice):
        """``direct`` / ``proxy`` -> the connector to use."""
        if choice == "proxy":
            return self.config.proxy_via or VIA_DIRECT
        return choice or VIA_DIRECT

    def cookies_on(self, now):
        """Are new SYNs being answered with cookies (see the module docstring)?"""
        return self._cookies_until is not None and now < self._cookies_until

    def _pressure(self, now):
        if not self.cookies_on(now):
            self.cookie_periods += 1
        self._cookies_until = now + COOKIE_HOLD

    def decide(self, flow, now, handshake=False):
        """The Route for a new flow; admitted routes are counted until :meth:`release`.

        For a TCP SYN the route may be ``deferred`` (answer with a SYN cookie); ``handshake=True`` decides the
        flow of a client that completed the handshake with a valid cookie, which is admitted or refused, never
        deferred, and takes no token: its service connect waits for :meth:`take_token`.  An admitted TCP flow
        also counts as half-open until :meth:`connect_done`.
        """
        route = self._route(flow)
        if not route.admitted:
            return route
        if flow.protocol == PROTO_TCP:
            cfg = self.config
            if not handshake:
                # Every SYN is metered, cookie or not: the flood is over only when SYNs fit the rate again.
                if not self._syn_meter.allow(now):
                    self._pressure(now)
                if self.half_open >= cfg.max_half_open:
                    self._pressure(now)
                    return deferred(route, "max_half_open (%d) reached" % cfg.max_half_open, CAUSE_LIMIT,
                                    LIMIT_HALF_OPEN)
                if self.cookies_on(now):
                    # The limits are checked when the handshake completes: a flood must not make us
                    # answer each of its SYNs with a reset, at the rate it likes.
                    return deferred(route, "SYNs faster than new_connections_per_second (%d)"
                                    % cfg.new_connections_per_second, CAUSE_RATE, LIMIT_RATE)
            if self.tcp_active >= cfg.max_connections:
                return refused("max_connections (%d) reached" % cfg.max_connections, refusal.RESET, CAUSE_LIMIT,
                               "max_connections")
            label = route.label
            if self.per_label.get(label, 0) >= cfg.max_per_service:
                return refused("max_per_service (%d) reached for %s" % (cfg.max_per_service, label),
                               refusal.RESET, CAUSE_LIMIT, "max_per_service")
            if not handshake and not self.rate.allow(now):
                self._pressure(now)
                return deferred(route, "new_connections_per_second (%d) exceeded" % cfg.new_connections_per_second,
                                CAUSE_RATE, LIMIT_RATE)
            if route.kind == SERVICE:
                # Last: it may make this flow a breaker's trial, which a refusal after it would have to give
                # back (abandoned()).
                route = self._healthy(flow, route, now)
                if not route.admitted:
                    return route
            self.half_open += 1
            self.tcp_active += 1
            self.per_label[label] = self.per_label.get(label, 0) + 1
        elif flow.protocol == PROTO_UDP and route.kind != DNS:
            if self.udp_active >= self.config.max_udp_flows:
                return refused("max_udp_flows (%d) reached" % self.config.max_udp_flows,
                               refusal.PORT_UNREACHABLE, CAUSE_LIMIT, "max_udp_flows")
            self.udp_active += 1
        return route

    def take_token(self, now):
        """A token for the service connect of a flow admitted with ``handshake=True``; False: none yet."""
        return self.rate.allow(now)

    def token_wait(self, now):
        """Milliseconds until :meth:`take_token` can say yes."""
        return self.rate.wait_ms(now)

    def label(self, flow):
        """The label (per-service limit) a TCP flow would count under, or None if it would be refused."""
        route = self._route(flow)
        return route.label if route.admitted else None

    def connect_done(self):
        """An admitted TCP flow no longer waits for its service connect (connected, failed or gone)."""
        self.half_open = max(0, self.half_open - 1)

    def release(self, flow, route):
        """An admitted flow no longer counts against the limits (closed, or TCP in TIME_WAIT)."""
        if flow.protocol == PROTO_TCP:
            self.tcp_active = max(0, self.tcp_active - 1)
            label = route.label
            n = self.per_label.get(label, 0) - 1
            if n > 0:
                self.per_label[label] = n
            else:
                self.per_label.pop(label, None)
        elif flow.protocol == PROTO_UDP and route.kind != DNS:
            self.udp_active = max(0, self.udp_active - 1)

    # -- service health ------------------------------------------------------------------

    def _healthy(self, flow, route, now):
        """``route`` with the targets whose breaker is open left out; refused when none is left."""
        health = self.health
        live = []
        down = []
        for host, port in route.targets:
            target = Target(host, port, route.via)
            if health.usable(target, flow, now):
                live.append((host, port))
            else:
                down.append(target)
        if not down:
            return route
        if not live:
            parts = []
            for target in down:
                wait = health.retry_in(target, now)
                parts.append("%s %s" % (target.label, "retried in %d s" % ((wait + 999) // 1000) if wait
                                        else "trial connect in progress"))
            return refused("%s is down (%s)" % (route.label, "; ".join(parts)), refusal.RESET, CAUSE_SERVICE)
        return replace(route, host=live[0][0], port=live[0][1], fallback=tuple(live[1:]))

    def connect_result(self, flow, route, connected, failures, now):
        """What the connects of ``flow`` found: ``connected`` is the index (into ``route.targets``) of the target
        reached, None if none was; ``failures`` is ``((index, reason), ...)`` for those that failed."""
        if route.kind != SERVICE:
            return
        targets = route.targets
        tried = set()
        for index, reason in failures:
            if 0 <= index < len(targets) and index not in tried:
                tried.add(index)
                target = Target(targets[index][0], targets[index][1], route.via)
                if target in self.health.breakers:      # not one a reload has removed since
                    self.health.failed(target, flow, reason, now)
        if connected is not None and 0 <= connected < len(targets):
            tried.add(connected)
            host, port = targets[connected]
            self.health.succeeded(Target(host, port, route.via), flow, now)
        for index, (host, port) in enumerate(targets):
            if index not in tried:
                self.health.release(Target(host, port, route.via), flow)

    def abandoned(self, flow, route):
        """``flow`` went before its connect ended (client reset, link down): its trials are free again."""
        if route.kind != SERVICE:
            return
        for host, port in route.targets:
            self.health.release(Target(host, port, route.via), flow)

    # -- the mapping -------------------------------------------------------------------

    def _route(self, flow):
        cfg = self.config
        proto = flow.protocol
        port = flow.server_port
        if flow.server_addr == self.local_ip:
            if proto == PROTO_TCP:
                svc = self.services.get(port)
                if svc is not None:
                    return Route(SERVICE, svc.host, svc.target_port, self._via(svc.via), svc.name or str(port),
                                 fallback=tuple(svc.fallback))
                if port == 53 and cfg.dns_forwarder and cfg.dns_tcp_upstream is not None:
                    host, uport = cfg.dns_tcp_upstream
                    return Route(DNS, host, uport, self._via(cfg.outbound.via), "dns")
                return refused("no service on port %d" % port, refusal.RESET)
            if proto == PROTO_UDP:
                svc = self.udp_services.get(port)
                if svc is not None:
                    return Route(UDP_SERVICE, svc.host, svc.target_port, VIA_DIRECT, svc.name or str(port))
                if port == 53 and cfg.dns_forwarder:
                    return Route(DNS, name="dns")
                return refused("no UDP service on port %d" % port, refusal.PORT_UNREACHABLE)
            return refused("protocol %d not served" % proto, refusal.ADMIN_PROHIBITED)
        return self._outbound(flow)

    def _outbound(self, flow):
        out = self.config.outbound
        if not out.enabled:
            return refused("outbound is disabled", refusal.ADMIN_PROHIBITED)
        addr = ipaddress.IPv4Address(bytes(flow.server_addr))
        port = None if flow.protocol == PROTO_ICMP else flow.server_port
        special = None
        for net in self._specials:
            if addr in net:
                special = net
                break
        allowed = False
        for rule in out.allow:
            if rule.matches(addr, port) and (special is None or rule.network.subnet_of(special)):
                allowed = True
                break
        if not allowed:
            if special is not None:
                return refused("%s is a special address (%s) not named in outbound.allow" % (addr, special),
                               refusal.ADMIN_PROHIBITED)
            return refused("not in outbound.allow", refusal.ADMIN_PROHIBITED)
        for rule in out.deny:
            # A deny entry with ports refuses those ports only; ICMP echo has none, so only an entry for all
            # ports (an address or network alone) refuses it.
            if rule.matches(addr, port) and (port is not None or rule.all_ports):
                return refused("outbound.deny %s" % rule.text, refusal.ADMIN_PROHIBITED)
        via = out.via
        if flow.protocol != PROTO_TCP and via != VIA_DIRECT:
            # An upstream proxy carries TCP only (no SOCKS5 UDP ASSOCIATE here, no ICMP anywhere).
            return refused("%s cannot go through the %s proxy" % (PROTOCOL_NAMES.get(flow.protocol, "?"), via),
                           refusal.ADMIN_PROHIBITED)
        return Route(NAT, str(addr), flow.server_port, via, "nat")
