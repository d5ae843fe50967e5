"""End to end: pyslirp's outbound side (NAT, upstream proxies, UDP, ping, DNS) through the real pppd in UML.

The guest is an ordinary PPP client (pppd ``defaultroute``); the "outside" is a network namespace the test
creates, behind a veth pair (tests/e2e/netns.py: this host 198.18.0.1, the outside host 198.18.0.2, servers on
fixed ports there).  The guest's flows to 198.18.0.2 must leave pyslirp as ordinary connections, datagrams and
pings of this host -- directly, or through a real SOCKS5 or HTTP CONNECT proxy on this host's loopback
(tests/e2e/proxies.py) -- and the allow-list decides which flows may leave at all.

Guest-side checks are one Python program (tests/e2e/guest_net.py, run with ``$PYTHON``) driven by a JSON plan;
its results come back as a JSON file.  What is judged, from both ends:

* the guest: sha256 of every byte sent and received, how each refused connect or datagram ended
  (ECONNREFUSED for a reset or port unreachable, EHOSTUNREACH for ICMP administratively prohibited) and how fast;
* the outside servers: what arrived, from which address (198.18.0.1: an ordinary outbound connect of this host),
  and that nothing arrived where the allow-list says no;
* this host: while a flow is open, which process holds its socket (``ss -tnp``: pyslirp itself, or the proxy),
  that pyslirp listens on nothing and adds no 10.0.0.x address; the proxies' own logs; pyslirp's log (one line
  per refusal, naming the flow, the hop and the reason; never a password).

Each test is one guest boot that groups many checks; failures are collected and reported together.
"""

import base64
import hashlib
import json
import os
import re
import shlex
import shutil
import subprocess

import pytest

from e2e import netns, proxies, services
from e2e.dnsserver import RECORDS, Dnsmasq
from e2e.fixtures import lab, require_program  # noqa: F401  (pytest fixture)
from e2e.netns import (CLOSED_PORT, DENIED_PORT, DOWNLOAD_PORT, ECHO_PORT, HOST_IP, NETWORK, OUTSIDE_IP,
                       OUTSIDE_RANGE_PORT, UDP_ECHO_PORT, UNUSED_IP, outside)  # noqa: F401  (pytest fixture)

pytestmark = [pytest.mark.e2e, pytest.mark.timeout(240)]

LOCAL_IP, REMOTE_IP = "10.0.0.1", "10.0.0.2"
GUEST_NET = os.path.join(os.path.dirname(os.path.abspath(__file__)), "e2e", "guest_net.py")
FAST = 3.0                      # seconds: a refusal is an answer, not a timeout
ECHO_SIZE = 1 << 20
DOWNLOAD_SHA256 = hashlib.sha256(services.payload(netns.DOWNLOAD_SEED, netns.DOWNLOAD_SIZE)).hexdigest()
PING_MODE_RE = re.compile(r"outside ping uses (\w+) ICMP sockets")


# ---------------------------------------------------------------------------------------------------------------
# helpers

class Checks(object):
    """Collects failed expectations so that one boot reports all of them at once."""

    def __init__(self):
        self.failures = []

    def __call__(self, ok, what, detail=None):
        if not ok:
            self.failures.append("%s%s" % (what, "" if detail is None else ": %s" % (detail,)))
        return ok

    def done(self, *diagnostics):
        assert not self.failures, "%d failed:\n  %s\n%s" % (
            len(self.failures), "\n  ".join(self.failures), "\n".join(str(d) for d in diagnostics))


def step(name, op, **kw):
    kw.update(name=name, op=op)
    return kw


def echo(name, host, port, size=ECHO_SIZE, seed=None, half_close=True):
    return step(name, "echo", host=host, port=port, size=size, seed=seed if seed is not None else len(name),
                half_close=half_close)


def connect(name, host, port, timeout=10):
    return step(name, "connect", host=host, port=port, timeout=timeout)


def udp(name, host, port, sizes=(3000, 20), seed=5):
    return step(name, "udp", host=host, port=port, sizes=list(sizes), seed=seed)


def write_plan(lab, name, steps):
    path = os.path.join(lab.basedir, name + "-plan.json")
    with open(path, "w") as f:
        json.dump({"results": name + ".json", "steps": steps}, f, indent=1)
    return path


def guest_script(plan, body_before="", body_after="", pppd_opts="", timeout=150):
    """pppd up with a default route over ppp0, BODY_BEFORE, the plan's steps, BODY_AFTER, pppd stopped."""
    return """
        pppd_start pppd noauth defaultroute {opts}
        wait_ppp_up 30 pppd || exit 1
        {before}
        record net timeout {timeout} $PYTHON {client} {plan} "$RESULTS"
        {after}
        pppd_stop pppd 15
    """.format(opts=pppd_opts, before=body_before.strip().replace("\n", "\n        "),
               after=body_after.strip().replace("\n", "\n        "), timeout=timeout,
               client=shlex.quote(GUEST_NET), plan=shlex.quote(plan))


def loopback_over_ppp(*ports):
    """Guest commands that send TCP to 127.0.0.1:PORT over ppp0 instead of the guest's own loopback.

    Linux never routes 127/8 out of a real interface unless ``route_localnet`` is set, and its ``local`` table
    (rule 0) claims 127.0.0.1 first; the ``local`` rule moves behind one that sends these ports to table 200.
    """
    lines = ["ip rule add pref 100 lookup local && ip rule del pref 0",
             "ip route add 127.0.0.1/32 dev ppp0 src %s table 200" % REMOTE_IP,
             "sysctl -q -w net.ipv4.conf.all.route_localnet=1 net.ipv4.conf.ppp0.route_localnet=1"]
    lines += ["ip rule add pref 10 to 127.0.0.1/32 ipproto tcp dport %d lookup 200" % port for port in ports]
    return "\n".join(lines)


def results(res, name="net"):
    text = res.read(name + ".json")
    if text is None:
        raise AssertionError("the guest wrote no %s.json (net rc %s):\n%s\n%s" % (
            name, res.rc(name), res.read(name + ".out"), res.diagnostics()))
    return json.loads(text)


def tool(prog):
    return shutil.which(prog, path=os.pathsep.join([os.environ.get("PATH", ""), "/usr/sbin", "/sbin"]))


def run(cmd):
    return subprocess.run([tool(cmd[0]) or cmd[0]] + list(cmd[1:]), stdout=subprocess.PIPE,
                          stderr=subprocess.STDOUT, universal_newlines=True, timeout=20).stdout


class Host(object):
    """This host as pyslirp must leave it (no 10.0.0.x address or route, no listening socket), and who owns what."""

    def __init__(self):
        require_program("ip", "iproute2")
        require_program("ss", "iproute2")
        self.baseline = self.ppp_lines()

    @staticmethod
    def ppp_lines():
        lines = run(["ip", "-o", "addr"]).splitlines() + run(["ip", "route"]).splitlines()
        return sorted(line for line in lines if "10.0.0." in line)

    def check(self, checks, slirp):
        pid = slirp.proc.pid
        checks(slirp.running(), "pyslirp is running")
        new = [line for line in self.ppp_lines() if line not in self.baseline]
        checks(not new, "no 10.0.0.x address or route on the host", new)
        pat = re.compile(r"pid=%d\b" % pid)
        listening = [line for line in run(["ss", "-H", "-ltnup"]).splitlines() if pat.search(line)]
        checks(not listening, "pyslirp (pid %d) listens on nothing" % pid, listening)

    @staticmethod
    def owners(addr, port):
        """(program, pid) of every established TCP socket of this host whose peer is addr:port."""
        out = run(["ss", "-H", "-tnp", "state", "established", "dst", "%s:%d" % (addr, port)])
        return [(name, int(pid)) for name, pid in re.findall(r'\("([^"]+)",pid=(\d+),', out)]


def check_echo(checks, r, what, size=ECHO_SIZE):
    ok = r.get("result") == "ok" and r.get("received") == size and r.get("sha256") == r.get("sent_sha256")
    checks(ok, "%s: %d bytes echoed intact" % (what, size), r)


def check_download(checks, r, what):
    ok = r.get("result") == "ok" and r.get("received") == netns.DOWNLOAD_SIZE and r.get("sha256") == DOWNLOAD_SHA256
    checks(ok, "%s: %d bytes downloaded intact" % (what, netns.DOWNLOAD_SIZE), r)


def check_refused(checks, r, what, result):
    checks(r.get("result") == result and r.get("seconds", 99) < FAST,
           "%s: %s in < %g s" % (what, result, FAST), r)


def check_udp(checks, r, what, expect, sizes=(3000, 20)):
    got = [(x.get("size"), x.get("result")) for x in r.get("results", [])]
    checks(got == [(s, expect) for s in sizes], "%s: %s" % (what, expect), r)


def check_outside_echo(checks, outside, r, what):
    """The outside echo server got the guest's bytes (same sha256), from this host's address."""
    closed = [e for e in outside.wait_events("closed", ECHO_PORT, 1) if e.get("received") == r.get("sent")]
    checks(any(e.get("sha256") == r.get("sent_sha256") for e in closed),
           "%s: the outside echo server received the same bytes" % what, outside.events("closed", ECHO_PORT))
    checks(closed and all(e["peer"][0] == HOST_IP for e in closed),
           "%s: the outside server saw the connection come from %s" % (what, HOST_IP), closed)


def refusal_lines(slirp):
    return [line for line in slirp.log().splitlines() if "refused" in line]


def ping_mode(slirp):
    m = PING_MODE_RE.search(slirp.log())
    return m.group(1) if m else None


# ---------------------------------------------------------------------------------------------------------------
# NAT, direct: the allow-list with a port range, deny, a named loopback service; UDP; ping; the host untouched

def test_nat_direct_allow_deny_udp_and_ping(lab, outside):
    host = Host()
    checks = Checks()
    with services.ServiceSet() as svc:
        named = svc.add(services.EchoServer())
        other = svc.add(services.EchoServer())
        udp_echo = svc.add(services.UdpEchoServer())
        slirp = lab.start_pyslirp({
            "outbound": {"enabled": True,
                         "allow": ["198.18.0.2/32:7000-7099", "127.0.0.1/32:%d" % named.port],
                         "deny": ["198.18.0.2/32:%d" % DENIED_PORT]},
            "udp_services": {"7": {"host": "127.0.0.1", "port": udp_echo.port, "name": "udp-echo"}}})
        plan = write_plan(lab, "net", [
            echo("echo", OUTSIDE_IP, ECHO_PORT),
            connect("not_allowed_address", UNUSED_IP, ECHO_PORT),
            step("download", "download", host=OUTSIDE_IP, port=DOWNLOAD_PORT),
            connect("not_allowed_port", OUTSIDE_IP, OUTSIDE_RANGE_PORT),
            connect("denied", OUTSIDE_IP, DENIED_PORT),
            connect("closed", OUTSIDE_IP, CLOSED_PORT),
            echo("loopback_named", "127.0.0.1", named.port, size=64 << 10),
            connect("loopback_other_port", "127.0.0.1", other.port),
            udp("udp_service", LOCAL_IP, 7),
            udp("udp_nat", OUTSIDE_IP, UDP_ECHO_PORT),
            udp("udp_unmapped", LOCAL_IP, 9, sizes=(20,)),
            udp("udp_closed", OUTSIDE_IP, CLOSED_PORT, sizes=(20,)),
            udp("udp_not_allowed", UNUSED_IP, UDP_ECHO_PORT, sizes=(20,)),
            step("hold", "hold", host=OUTSIDE_IP, port=ECHO_PORT, mark="held"),
        ])
        guest = lab.boot_guest(guest_script(plan, body_before=loopback_over_ppp(named.port, other.port),
                                            body_after="""
            record ping ping -c 3 -i 0.2 -W 5 {ip}
            record ping_big ping -c 2 -i 0.2 -W 5 -s 3000 {ip}
            record ping_refused ping -c 1 -W 3 {unused}
        """.format(ip=OUTSIDE_IP, unused=UNUSED_IP)), slirp=slirp, timeout=150)
        if not guest.wait_mark("held", 120):
            raise AssertionError("no mark 'held' from the guest\n%s" % guest.wait(30).diagnostics())
        # Mid-session: the held connection is an ordinary socket of pyslirp's own; nothing listens; no 10.0.0.x.
        owners = Host.owners(OUTSIDE_IP, ECHO_PORT)
        host.check(checks, slirp)
        guest.mark("held")
        res = guest.wait().check_ran()
        other_accepted, udp_seen = other.accepted, list(udp_echo.datagrams)
    r = results(res)
    checks(res.addr("pppd") == (REMOTE_IP, LOCAL_IP), "ppp0 is 10.0.0.2 <-> 10.0.0.1", res.read("pppd.addr"))
    checks([pid for _, pid in owners] == [slirp.proc.pid],
           "the held flow's socket to %s:%d is pyslirp's (pid %d)" % (OUTSIDE_IP, ECHO_PORT, slirp.proc.pid), owners)
    check_echo(checks, r.get("echo", {}), "echo to %s:%d" % (OUTSIDE_IP, ECHO_PORT))
    check_outside_echo(checks, outside, r.get("echo", {}), "echo")
    check_download(checks, r.get("download", {}), "download from %s:%d" % (OUTSIDE_IP, DOWNLOAD_PORT))
    down = outside.wait_events("closed", DOWNLOAD_PORT, 1)
    checks([(e["sent"], e["peer"][0]) for e in down] == [(netns.DOWNLOAD_SIZE, HOST_IP)],
           "the download server sent everything to %s" % HOST_IP, down)
    # Refused by the allow-list: ICMP administratively prohibited, which the guest sees as EHOSTUNREACH, at once.
    check_refused(checks, r.get("not_allowed_address", {}), "%s (not in the allow-list)" % UNUSED_IP,
                  "host_unreachable")
    check_refused(checks, r.get("not_allowed_port", {}), "port %d (outside the rule's range)" % OUTSIDE_RANGE_PORT,
                  "host_unreachable")
    check_refused(checks, r.get("denied", {}), "port %d (a deny entry)" % DENIED_PORT, "host_unreachable")
    checks(not outside.events("accept", OUTSIDE_RANGE_PORT) and not outside.events("accept", DENIED_PORT),
           "nothing reached the outside servers the allow-list excludes", outside.events("accept"))
    # A closed port out there: the host's connect is refused, the guest gets a reset.
    check_refused(checks, r.get("closed", {}), "closed port %s:%d" % (OUTSIDE_IP, CLOSED_PORT), "refused")
    # 127.0.0.1 is special: reachable only where an allow entry names it.
    check_echo(checks, r.get("loopback_named", {}), "echo to 127.0.0.1:%d (named in allow)" % named.port, 64 << 10)
    check_refused(checks, r.get("loopback_other_port", {}), "127.0.0.1:%d (not named)" % other.port,
                  "host_unreachable")
    checks(other_accepted == 0, "the unnamed loopback service saw no connection", other_accepted)
    # UDP: a 3000-byte datagram (fragmented on the PPP link both ways) and a small one.
    check_udp(checks, r.get("udp_service", {}), "udp_services.7 -> 127.0.0.1:%d" % udp_echo.port, "ok")
    checks(sorted(size for _, size in udp_seen) == [20, 3000], "the loopback UDP echo server got both", udp_seen)
    check_udp(checks, r.get("udp_nat", {}), "UDP NAT to %s:%d" % (OUTSIDE_IP, UDP_ECHO_PORT), "ok")
    seen = outside.wait_events("udp", UDP_ECHO_PORT, 2)
    checks(sorted((e["size"], e["peer"][0]) for e in seen) == [(20, HOST_IP), (3000, HOST_IP)],
           "the outside UDP echo server got both datagrams from %s" % HOST_IP, seen)
    check_udp(checks, r.get("udp_unmapped", {}), "UDP to unmapped %s:9" % LOCAL_IP, "refused", (20,))
    check_udp(checks, r.get("udp_closed", {}), "UDP to closed %s:%d (relayed)" % (OUTSIDE_IP, CLOSED_PORT),
              "refused", (20,))
    check_udp(checks, r.get("udp_not_allowed", {}), "UDP to %s (not allowed)" % UNUSED_IP, "host_unreachable",
              (20,))
    hold = r.get("hold", {})
    checks(hold.get("result") == "ok" and hold.get("host_checked"), "the held connection echoed", hold)
    # Ping out through pyslirp's ICMP socket, and a refused one.
    ping = res.read("ping.out", "")
    checks(res.rc("ping") == 0 and "3 packets transmitted, 3 received, 0% packet loss" in ping,
           "ping -c 3 %s" % OUTSIDE_IP, ping)
    ping = res.read("ping_big.out", "")
    checks(res.rc("ping_big") == 0 and "2 packets transmitted, 2 received, 0% packet loss" in ping and
           "3008 bytes from %s" % OUTSIDE_IP in ping, "ping -s 3000 %s (fragmented both ways)" % OUTSIDE_IP, ping)
    mode = ping_mode(slirp)
    checks(mode in ("dgram", "raw"), "pyslirp says which ICMP sockets outside ping uses", mode)
    print("outside ping uses %s ICMP sockets" % mode)
    refused_ping = res.read("ping_refused.out", "")
    checks(res.rc("ping_refused") != 0 and "Packet filtered" in refused_ping,
           "ping %s: Packet filtered (administratively prohibited)" % UNUSED_IP, refused_ping)
    # pyslirp's log: one line per refusal, with the flow and the reason.
    lines = refusal_lines(slirp)
    for pattern in (r"refused tcp 10\.0\.0\.2:\d+ -> 198\.18\.0\.3:%d: not in outbound\.allow" % ECHO_PORT,
                    r"refused tcp 10\.0\.0\.2:\d+ -> 198\.18\.0\.2:%d: not in outbound\.allow" % OUTSIDE_RANGE_PORT,
                    r"refused tcp 10\.0\.0\.2:\d+ -> 198\.18\.0\.2:%d: outbound\.deny 198\.18\.0\.2/32:%d"
                    % (DENIED_PORT, DENIED_PORT)):
        checks(any(re.search(pattern, line) for line in lines), "pyslirp logged /%s/" % pattern, lines)
    checks(res.rc("pppd") == 5, "pppd ended with status 5 (terminated by signal)", res.rc("pppd"))
    checks(slirp.stop() == 0, "pyslirp exits 0")
    checks.done(outside.diagnostics(), res.read("net.out"))


# ---------------------------------------------------------------------------------------------------------------
# NAT with a catch-all: special addresses stay refused unless named

def test_nat_catch_all_still_refuses_special_addresses(lab, outside):
    checks = Checks()
    with services.ServiceSet() as svc:
        named = svc.add(services.EchoServer())
        other = svc.add(services.EchoServer())
        slirp = lab.start_pyslirp({"outbound": {"enabled": True,
                                                "allow": ["0.0.0.0/0", "127.0.0.1/32:%d" % named.port]}})
        plan = write_plan(lab, "net", [
            echo("any_port", OUTSIDE_IP, OUTSIDE_RANGE_PORT, size=64 << 10),
            echo("loopback_named", "127.0.0.1", named.port, size=64 << 10),
            connect("loopback_other_port", "127.0.0.1", other.port),
            connect("metadata", "169.254.169.254", 80),
            connect("host_address", HOST_IP, ECHO_PORT),
        ])
        res = lab.run_guest(guest_script(plan, body_before=loopback_over_ppp(named.port, other.port), body_after="""
            record ping_metadata ping -c 1 -W 3 169.254.169.254
        """), slirp=slirp, timeout=120)
        other_accepted = other.accepted
    r = results(res)
    check_echo(checks, r.get("any_port", {}), "echo to %s:%d under 0.0.0.0/0" % (OUTSIDE_IP, OUTSIDE_RANGE_PORT),
               64 << 10)
    check_echo(checks, r.get("loopback_named", {}), "echo to 127.0.0.1:%d (named)" % named.port, 64 << 10)
    check_refused(checks, r.get("loopback_other_port", {}), "127.0.0.1:%d under 0.0.0.0/0" % other.port,
                  "host_unreachable")
    checks(other_accepted == 0, "the unnamed loopback service saw no connection", other_accepted)
    check_refused(checks, r.get("metadata", {}), "169.254.169.254:80 under 0.0.0.0/0", "host_unreachable")
    check_refused(checks, r.get("host_address", {}), "this host's own address %s" % HOST_IP, "host_unreachable")
    ping = res.read("ping_metadata.out", "")
    checks(res.rc("ping_metadata") != 0 and "Packet filtered" in ping, "ping 169.254.169.254: Packet filtered",
           ping)
    lines = refusal_lines(slirp)
    for addr, net in (("127.0.0.1", "127.0.0.0/8"), ("169.254.169.254", "169.254.0.0/16")):
        pattern = r"-> %s:\d+: %s is a special address \(%s\) not named in outbound\.allow" % (
            re.escape(addr), re.escape(addr), re.escape(net))
        checks(any(re.search(pattern, line) for line in lines), "pyslirp logged /%s/" % pattern, lines)
    checks(slirp.stop() == 0, "pyslirp exits 0")
    checks.done(outside.diagnostics(), res.read("net.out"))


# ---------------------------------------------------------------------------------------------------------------
# outbound off; the DNS forwarder (which needs no outbound)

def test_outbound_disabled_and_dns_forwarder(lab, outside, tmp_path):
    checks = Checks()
    require_program("dnsmasq", "dnsmasq-base")
    require_program("dig", "bind9-dnsutils")
    with Dnsmasq(str(tmp_path), *RECORDS) as dns:
        slirp = lab.start_pyslirp({"outbound": {"enabled": False},
                                   "dns": {"forwarder": True, "upstream": ["127.0.0.1:%d" % dns.port]}})
        plan = write_plan(lab, "net", [
            connect("tcp", OUTSIDE_IP, ECHO_PORT),
            udp("udp", OUTSIDE_IP, UDP_ECHO_PORT, sizes=(20,)),
        ])
        res = lab.run_guest(guest_script(plan, pppd_opts="usepeerdns", body_after="""
            record ping ping -c 1 -W 3 {ip}
            record resolv cat /etc/ppp/resolv.conf
            record dig_udp dig @{dns} example.test A +time=3 +tries=2
            record dig_tcp dig +tcp @{dns} www.example.test A +time=3 +tries=2
            record dig_nx dig @{dns} nosuch.test A +time=3 +tries=2
        """.format(ip=OUTSIDE_IP, dns=LOCAL_IP)), slirp=slirp, timeout=120)
        dns_log = dns.log()
    r = results(res)
    check_refused(checks, r.get("tcp", {}), "TCP to %s with outbound off" % OUTSIDE_IP, "host_unreachable")
    check_udp(checks, r.get("udp", {}), "UDP to %s with outbound off" % OUTSIDE_IP, "host_unreachable", (20,))
    ping = res.read("ping.out", "")
    checks(res.rc("ping") != 0 and "Packet filtered" in ping, "ping %s: Packet filtered" % OUTSIDE_IP, ping)
    checks(outside.events() == [], "nothing reached the outside host", outside.events())
    checks(any(re.search(r"refused tcp .*-> %s:%d: outbound is disabled" % (re.escape(OUTSIDE_IP), ECHO_PORT), line)
               for line in refusal_lines(slirp)), "pyslirp logged the refusal", refusal_lines(slirp))
    # IPCP handed out 10.0.0.1 as the primary DNS server (pppd's usepeerdns).
    checks(re.search(r"primary\s+DNS address %s" % re.escape(LOCAL_IP), res.pppd_log()),
           "pppd: primary DNS address %s" % LOCAL_IP, res.pppd_log()[-2000:])
    checks("nameserver %s" % LOCAL_IP in res.read("resolv.out", ""), "pppd wrote nameserver %s" % LOCAL_IP,
           res.read("resolv.out"))
    for name, qname in (("dig_udp", "example.test"), ("dig_tcp", "www.example.test")):
        out = res.read(name + ".out", "")
        checks(res.rc(name) == 0 and "status: NOERROR" in out and
               re.search(r"^%s\.\s+\d+\s+IN\s+A\s+198\.18\.0\.7$" % re.escape(qname), out, re.M),
               "%s: %s A 198.18.0.7" % (name, qname), out)
        checks("query[A] %s from 127.0.0.1" % qname in dns_log, "dnsmasq answered %s for pyslirp" % qname, dns_log)
    checks(";; Query time" in res.read("dig_tcp.out", "") and "(TCP)" in res.read("dig_tcp.out", ""),
           "dig +tcp went over TCP", res.read("dig_tcp.out"))
    out = res.read("dig_nx.out", "")
    checks(res.rc("dig_nx") == 0 and "status: NXDOMAIN" in out, "dig nosuch.test: NXDOMAIN", out)
    checks(slirp.stop() == 0, "pyslirp exits 0")
    checks.done(res.read("net.out"))


# ---------------------------------------------------------------------------------------------------------------
# through each upstream proxy

def proxy_plan(lab, swap=False, service_port=None):
    # No half-close through proxies: microsocks and tinyproxy end both directions at the client's first FIN,
    # dropping what the destination still sends.
    steps = [
        echo("echo", OUTSIDE_IP, ECHO_PORT, half_close=False),
        step("download", "download", host=OUTSIDE_IP, port=DOWNLOAD_PORT),
        connect("closed", OUTSIDE_IP, CLOSED_PORT),
        udp("udp", OUTSIDE_IP, UDP_ECHO_PORT, sizes=(20,)),
        step("hold", "hold", host=OUTSIDE_IP, port=ECHO_PORT, mark="held"),
    ]
    if service_port:
        steps.append(echo("service", LOCAL_IP, service_port, size=256 << 10))
    if swap:
        steps += [step("swap", "mark", mark="swap"), step("swapped", "wait", mark="swap", timeout=60),
                  connect("wrong_password", OUTSIDE_IP, ECHO_PORT)]
    return write_plan(lab, "net", steps)


def run_through_proxy(lab, outside, slirp, owner, swap=None, service_port=None, extra=""):
    """Boot a guest for the proxy scenario; returns (checks, results, GuestResult, owners of the held flow).

    ``owner``: the program that must hold the held flow's socket to the outside; ``swap()`` (optional) makes the
    proxy refuse pyslirp's credentials from then on (the guest's ``wrong_password`` connect comes after it).
    """
    checks = Checks()
    host = Host()
    plan = proxy_plan(lab, swap is not None, service_port)
    guest = lab.boot_guest(guest_script(plan, body_after="""
        record ping ping -c 1 -W 3 {ip}
    """.format(ip=OUTSIDE_IP) + extra), slirp=slirp, timeout=150)
    if not guest.wait_mark("held", 120):
        raise AssertionError("no mark 'held' from the guest\n%s" % guest.wait(30).diagnostics())
    owners = Host.owners(OUTSIDE_IP, ECHO_PORT)
    host.check(checks, slirp)
    guest.mark("held")
    if swap is not None:
        if not guest.wait_mark("swap", 60):
            raise AssertionError("no mark 'swap' from the guest\n%s" % guest.wait(30).diagnostics())
        swap()
        guest.mark("swap")
    res = guest.wait().check_ran()
    r = results(res)
    checks([name for name, _ in owners] == [owner], "the held flow's socket to %s:%d is %s's" % (
        OUTSIDE_IP, ECHO_PORT, owner), owners)
    check_echo(checks, r.get("echo", {}), "echo to %s:%d" % (OUTSIDE_IP, ECHO_PORT))
    check_outside_echo(checks, outside, r.get("echo", {}), "echo")
    check_download(checks, r.get("download", {}), "download from %s:%d" % (OUTSIDE_IP, DOWNLOAD_PORT))
    hold = r.get("hold", {})
    checks(hold.get("result") == "ok" and hold.get("host_checked"), "the held connection echoed", hold)
    # UDP and ping cannot go through a TCP proxy: administratively prohibited.
    check_udp(checks, r.get("udp", {}), "UDP with outbound via proxy", "host_unreachable", (20,))
    ping = res.read("ping.out", "")
    checks(res.rc("ping") != 0 and "Packet filtered" in ping, "ping with outbound via proxy: Packet filtered", ping)
    return checks, r, res, owners


def check_wrong_password(checks, r, slirp, hop, secrets):
    """The guest's connect after the proxy stopped accepting pyslirp's password: a fast reset, one log line."""
    check_refused(checks, r.get("wrong_password", {}), "connect with a password the proxy refuses", "refused")
    log = slirp.log()
    pattern = (r"refused 10\.0\.0\.2:\d+ -> nat %s:%d via \w+ reason=%s: .*auth"
               % (re.escape(OUTSIDE_IP), ECHO_PORT, re.escape(hop)))
    lines = [line for line in log.splitlines() if re.search(pattern, line, re.I)]
    checks(len(lines) == 1, "one log line names the flow, the hop and the reason (/%s/)" % pattern,
           refusal_lines(slirp))
    for secret in secrets:
        checks(secret not in log, "pyslirp's log never shows the secret %r" % secret)


def proxy_config(kind, port, allow=(NETWORK,), **proxy):
    proxy.update(type=kind, host="127.0.0.1", port=port)
    return {"proxy": proxy, "outbound": {"enabled": True, "via": "proxy", "allow": list(allow)}}


def test_through_dante_and_a_service_and_dns_via_proxy(lab, outside, tmp_path):
    require_program("dnsmasq", "dnsmasq-base")
    require_program("dig", "bind9-dnsutils")
    with services.EchoServer() as local_echo, Dnsmasq(str(tmp_path), *RECORDS) as dns, \
            proxies.Danted(str(tmp_path / "dante"), destinations=("127.0.0.0/8", NETWORK),
                           externals=("lo", outside.host_if)).start() as dante:
        cfg = proxy_config("socks5", dante.port)
        cfg["services"] = {"2222": {"host": "127.0.0.1", "port": local_echo.port, "name": "echo", "via": "proxy"}}
        # With outbound via the proxy, the forwarder's upstream queries go over TCP through it.
        cfg["dns"] = {"forwarder": True, "upstream": ["127.0.0.1:%d" % dns.port]}
        slirp = lab.start_pyslirp(cfg)
        checks, r, res, _ = run_through_proxy(lab, outside, slirp, "danted", service_port=2222, extra="""
            record dig_udp dig @{dns} example.test A +time=5 +tries=1
            record dig_tcp dig +tcp @{dns} www.example.test A +time=5 +tries=1
        """.format(dns=LOCAL_IP))
        for name, qname in (("dig_udp", "example.test"), ("dig_tcp", "www.example.test")):
            out = res.read(name + ".out", "")
            checks(res.rc(name) == 0 and re.search(r"^%s\.\s+\d+\s+IN\s+A\s+198\.18\.0\.7$" % re.escape(qname),
                                                  out, re.M), "%s through dante: %s A 198.18.0.7" % (name, qname), out)
            checks(re.search(r"query\[A\] %s from 127\.0\.0\.1" % re.escape(qname), dns.log()),
                   "dnsmasq answered %s" % qname, dns.log()[-2000:])
        checks(proxies.wait_for_log(dante, r"tcp/connect \]: .*127\.0\.0\.1\.%d\b" % dns.port),
               "dante logged the DNS relay's connect to dnsmasq", dante.log()[-3000:])
        check_refused(checks, r.get("closed", {}), "closed port through dante", "refused")
        check_echo(checks, r.get("service", {}), "services.2222 via proxy -> 127.0.0.1:%d" % local_echo.port,
                   256 << 10)
        for target in ("%s.%d" % (OUTSIDE_IP, ECHO_PORT), "%s.%d" % (OUTSIDE_IP, DOWNLOAD_PORT),
                       "127.0.0.1.%d" % local_echo.port):
            checks(proxies.wait_for_log(dante, r"tcp/connect \]: .*%s\b" % re.escape(target)),
                   "dante logged its connect to %s" % target, dante.log()[-3000:])
        checks(proxies.wait_for_log(dante, r"%s\.%d.*Connection refused" % (re.escape(OUTSIDE_IP), CLOSED_PORT)),
               "dante logged the refused connect", dante.log()[-3000:])
        checks(local_echo.accepted == 1, "the local service got one connection (through dante)",
               local_echo.accepted)
        checks(slirp.stop() == 0, "pyslirp exits 0")
        checks.done(outside.diagnostics(), res.read("net.out"))


def test_through_dante_with_username_then_a_wrong_password(lab, outside, tmp_path):
    user = "pyslirpo%s" % os.urandom(3).hex()
    password = "pw-%s" % os.urandom(6).hex()
    with proxies.SystemUser(user, password).start() as account, \
            proxies.Danted(str(tmp_path / "dante"), methods="username", destinations=(NETWORK,),
                           externals=("lo", outside.host_if)).start() as dante:
        slirp = lab.start_pyslirp(proxy_config("socks5", dante.port, username=user, password=password))
        checks, r, res, _ = run_through_proxy(
            lab, outside, slirp, "danted", swap=lambda: account.set_password("other-" + password))
        check_refused(checks, r.get("closed", {}), "closed port through dante", "refused")
        checks(proxies.wait_for_log(dante, r"tcp/connect \]: .*%s.*%s\.%d\b" % (user, re.escape(OUTSIDE_IP),
                                                                                 ECHO_PORT)),
               "dante logged the authenticated user's connect", dante.log()[-3000:])
        check_wrong_password(checks, r, slirp, "socks5 127.0.0.1:%d" % dante.port, [password])
        checks(slirp.stop() == 0, "pyslirp exits 0")
        checks.done(outside.diagnostics(), res.read("net.out"))


def test_through_microsocks_from_the_command_line_then_a_wrong_password(lab, outside, tmp_path, monkeypatch):
    password = "pw-%s" % os.urandom(6).hex()
    box = {"ms": proxies.Microsocks(str(tmp_path / "ms"), "alice", password).start()}

    def swap():
        port = box["ms"].port
        box["ms"].stop()
        box["ms"] = proxies.Microsocks(str(tmp_path / "ms2"), "alice", "other-" + password, port=port).start()

    try:
        # The password only in the environment; proxy and outbound from --socks-host/--socks-port.
        monkeypatch.setenv("PYSLIRP_PROXY_PASSWORD", password)
        slirp = lab.start_pyslirp({"proxy": {"username": "alice"}, "outbound": {"allow": [NETWORK]}},
                                  args=["--socks-host", "127.0.0.1", "--socks-port", str(box["ms"].port)])
        checks, r, res, _ = run_through_proxy(lab, outside, slirp, "microsocks", swap=swap)
        check_refused(checks, r.get("closed", {}), "closed port through microsocks", "refused")
        check_wrong_password(checks, r, slirp, "socks5 127.0.0.1:%d" % box["ms"].port, [password])
        checks(slirp.stop() == 0, "pyslirp exits 0")
        checks.done(outside.diagnostics(), res.read("net.out"))
    finally:
        box["ms"].stop()


def test_through_ssh_dynamic_forward(lab, outside, tmp_path):
    with proxies.SshDynamic(str(tmp_path / "ssh")).start() as ssh:
        slirp = lab.start_pyslirp(proxy_config("socks5", ssh.port))
        checks, r, res, _ = run_through_proxy(lab, outside, slirp, "sshd")
        # ssh -D answers CONNECT only once its server has connected; when that fails it closes without a reply,
        # which pyslirp shows the client as a reset.
        check_refused(checks, r.get("closed", {}), "closed port through ssh -D", "refused")
        checks(proxies.wait_for_output(ssh, r"open failed: connect failed: Connection refused"),
               "ssh says the forwarded connect was refused", ssh.output()[-2000:])
        checks(slirp.stop() == 0, "pyslirp exits 0")
        checks.done(outside.diagnostics(), res.read("net.out"))


def test_through_tinyproxy_from_the_command_line_then_a_wrong_password(lab, outside, tmp_path):
    password = "pw-%s" % os.urandom(6).hex()
    ports = [ECHO_PORT, DOWNLOAD_PORT, CLOSED_PORT]
    box = {"tp": proxies.Tinyproxy(str(tmp_path / "tp"), "alice", password, ports).start()}

    def swap():
        port = box["tp"].port
        box["tp"].stop()
        box["tp"] = proxies.Tinyproxy(str(tmp_path / "tp2"), "alice", "other-" + password, ports, port=port).start()

    try:
        first = box["tp"]
        slirp = lab.start_pyslirp({"proxy": {"username": "alice", "password": password},
                                   "outbound": {"allow": [NETWORK]}},
                                  args=["--http-proxy", "127.0.0.1:%d" % first.port])
        checks, r, res, _ = run_through_proxy(lab, outside, slirp, "tinyproxy", swap=swap)
        check_refused(checks, r.get("closed", {}), "closed port through tinyproxy", "refused")
        for port in (ECHO_PORT, DOWNLOAD_PORT):
            checks(re.search(r"CONNECT %s:%d HTTP/1\.1" % (re.escape(OUTSIDE_IP), port), first.log()),
                   "tinyproxy logged CONNECT %s:%d" % (OUTSIDE_IP, port), first.log()[-3000:])
        basic = base64.b64encode(("alice:" + password).encode()).decode()
        check_wrong_password(checks, r, slirp, "http 127.0.0.1:%d" % first.port, [password, basic])
        checks(slirp.stop() == 0, "pyslirp exits 0")
        checks.done(outside.diagnostics(), res.read("net.out"))
    finally:
        box["tp"].stop()
