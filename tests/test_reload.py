"""Reload: what a re-read file changes (config.reload_changes), the stack's reconfigure seam at explicit times, the
Reloader against a real (not running) Runtime, and SIGHUP through a running runtime with a held connection."""

import io
import logging
import os
import random
import select
import signal
import time
from dataclasses import replace

import pytest

from pyslirp import config, logsetup
from pyslirp.config import ConfigError
from pyslirp.core import Core
from pyslirp.net.events import DnsQuery, ServiceConnect
from pyslirp.net.flows import Service
from pyslirp.net.health import OPEN
from pyslirp.net.stack import StackConfig
from pyslirp.runtime.reload import ReloadResult, Reloader
from pyslirp.runtime.stackloop import Runtime
from pyslirp.wire import tcp

from test_runtime import echo, pipe_endpoint, servers, start  # noqa: F401  (servers is a fixture)
from test_stack import Client, make_stack, of_type, udp_packet

SSH = Service(22, "127.0.0.1", 22, "SSH")
WEB = Service(80, "127.0.0.1", 8080, "web")


def load_text(tmp_path, text, name="c.toml"):
    path = tmp_path / name
    path.write_text(text)
    return config.load(str(path))


# -- what a reload changes --------------------------------------------------------------------------------------

def test_reload_changes_names_services_sections_and_what_needs_a_restart(tmp_path):
    old = load_text(tmp_path, '[services.22]\nport = 22\n[services.80]\nport = 8080\n')
    new = load_text(tmp_path, '[services.22]\nport = 2222\n[services.443]\nport = 8443\n'
                              '[limits]\nmax_connections = 10\nmax_per_service = 5\n'
                              '[network]\nmtu = 1400\nlocal_ip = "10.9.0.1"\n'
                              '[ppp]\nrequire_auth = "pap"\nsecrets = { alice = "s3cret" }\n'
                              '[monitoring]\nmetrics_listen = "127.0.0.1:9100"\n')
    effective, changed, restart = config.reload_changes(old, new)
    assert changed == ["limits", "~services.22", "-services.80", "+services.443"]
    assert restart == ["network.local_ip", "network.mtu", "ppp.require_auth", "ppp.secrets",
                       "monitoring.metrics_listen"]
    assert "s3cret" not in repr((changed, restart))
    # What needs a new link keeps its running value; the rest is the new file's.
    assert effective.network == old.network and effective.ppp == old.ppp
    assert effective.monitoring.metrics_listen == ""
    assert effective.services == new.services and effective.limits == new.limits
    assert config.reload_changes(effective, effective) == (effective, [], [])


def test_resume_grace_is_the_stacks_and_is_applied(tmp_path):
    old = load_text(tmp_path, "")
    new = load_text(tmp_path, "[ppp]\nresume_grace = 5\nlcp_echo_interval = 10\n")
    effective, changed, restart = config.reload_changes(old, new)
    assert changed == ["ppp.resume_grace"] and restart == ["ppp.lcp_echo_interval"]
    assert effective.ppp.resume_grace == 5 and effective.ppp.lcp_echo_interval == 30
    assert config.stack_config(effective).resume_grace == 5


def test_reload_changes_notes_the_dns_offer_of_the_link(tmp_path):
    old = load_text(tmp_path, "")
    new = load_text(tmp_path, '[dns]\nforwarder = true\nupstream = ["127.0.0.1"]\n')
    effective, changed, restart = config.reload_changes(old, new)
    assert changed == ["dns"] and effective.dns.forwarder
    assert restart == ["dns.forwarder (the DNS server offered over IPCP)"]


def test_fallback_and_health_keys_are_validated(tmp_path):
    cfg = load_text(tmp_path, '[services.22]\nfallback = ["127.0.0.1:2222", "[::1]:22", "backup.lan:22"]\n'
                              '[health]\nbreaker_failures = 0\nbreaker_cooldown = 5\n')
    assert cfg.services[0].fallback == (("127.0.0.1", 2222), ("::1", 22), ("backup.lan", 22))
    assert (cfg.health.breaker_failures, cfg.health.breaker_cooldown) == (0, 5)
    stack = config.stack_config(cfg)
    assert (stack.breaker_failures, stack.breaker_cooldown) == (0, 5) and stack.services == cfg.services
    for text, message in (
            ('[services.22]\nfallback = "x:1"\n', 'services.22.fallback: must be an array of "HOST:PORT", got "x:1"'),
            ('[services.22]\nfallback = ["x"]\n', 'services.22.fallback[0]: must be "HOST:PORT"'),
            ('[services.22]\nfallback = ["x:0"]\n', 'services.22.fallback[0]: must be "HOST:PORT"'),
            ('[services.22]\nfallback = ["a:1", 5]\n', 'services.22.fallback[1]: must be "HOST:PORT"'),
            ('[health]\nbreaker_cooldown = 0\n', "health.breaker_cooldown: must be an integer between 1 and 86400"),
            ('[health]\nbreaker_failure = 3\n',
             'health.breaker_failure: unknown key (did you mean "breaker_failures"?)'),
            ('[udp_services.53]\nfallback = ["a:1"]\n', "udp_services.53.fallback: unknown key")):
        with pytest.raises(ConfigError) as info:
            load_text(tmp_path, text)
        assert str(info.value).startswith(message), str(info.value)
    with pytest.raises(ConfigError) as info:
        load_text(tmp_path, "[services.22]\nfallback = [%s]\n" % ", ".join('"h:%d"' % i for i in range(1, 10)))
    assert str(info.value) == "services.22.fallback: at most 8 fallback targets, got 9"


def test_fallback_round_trips_through_to_toml(tmp_path):
    cfg = load_text(tmp_path, '[services.22]\nfallback = ["127.0.0.1:2222", "[::1]:22"]\n')
    assert load_text(tmp_path, config.to_toml(cfg), "again.toml") == cfg
    assert config.describe_services(cfg.services) == "22 -> 127.0.0.1:22 or 127.0.0.1:2222 or [::1]:22"


def test_the_configured_dns_upstream_is_used(tmp_path):
    from pyslirp import cli
    cfg = load_text(tmp_path, '[dns]\nforwarder = true\nupstream = ["127.0.0.1:5353", "192.0.2.1"]\n')
    servers_, factory = cli._dns(cfg)
    assert servers_ == [("127.0.0.1", 5353), ("192.0.2.1", 53)] and factory is not None


# -- the stack's reconfigure seam --------------------------------------------------------------------------------

def established(stack, port, dst=22, now=0):
    client = Client(stack, port=port, dst=dst)
    client.syn(now)
    (connect,) = of_type(stack.take_events(), ServiceConnect)
    stack.service_connected(connect.conn_id, now)
    client.receive()
    client.send(tcp.ACK, now=now)
    stack.take_events()
    return client, connect


def test_established_flows_keep_their_route_and_new_flows_follow_the_new_configuration():
    stack = make_stack(services=(SSH, WEB), max_connections=3, max_per_service=3)
    ssh, ssh_connect = established(stack, 40001)
    web, _ = established(stack, 40002, dst=80)
    moved = Service(22, "127.0.0.1", 2222, "SSH")
    stack.reconfigure(replace(stack.config, services=(moved, Service(443, "127.0.0.1", 8443, "tls")),
                              max_connections=3), 10)
    # The held SSH connection still talks to its service socket, on its old route.
    ssh.send(tcp.ACK | tcp.PSH, payload=b"ls\n", now=20)
    sends = [e for e in stack.take_events() if type(e).__name__ == "ServiceSend"]
    assert [(e.conn_id, e.data) for e in sends] == [(ssh_connect.conn_id, b"ls\n")]
    assert stack._by_id[ssh_connect.conn_id].route.port == 22
    # New SSH connections go to the new target; the removed service refuses; the added one serves.
    Client(stack, port=40003).syn(30)
    (connect,) = of_type(stack.take_events(), ServiceConnect)
    assert (connect.route.host, connect.route.port) == ("127.0.0.1", 2222)
    refused = Client(stack, port=40004, dst=80)
    refused.syn(40)
    assert [s.flags for s in refused.receive()] == [tcp.RST | tcp.ACK]
    # Counts carried over: three connections are open (two old ones, one new), the limit is three.
    over = Client(stack, port=40005, dst=443)
    over.syn(50)
    assert of_type(stack.take_events(), ServiceConnect) == []
    assert [s.flags for s in over.receive()] == [tcp.RST | tcp.ACK]
    assert stack.policy.tcp_active == 3
    # The old web connection closes normally and gives its slot back to the new policy.
    web.send(tcp.RST, now=60)
    assert stack.policy.tcp_active == 2 and "web" not in stack.policy.per_label
    Client(stack, port=40006, dst=443).syn(70)
    assert len(of_type(stack.take_events(), ServiceConnect)) == 1


def test_reconfigure_refuses_link_values_and_carries_breakers():
    stack = make_stack(services=(SSH,), breaker_failures=1)
    Client(stack).syn(0)
    (connect,) = of_type(stack.take_events(), ServiceConnect)
    stack.service_failed(connect.conn_id, "x", 1, "reset", ((0, "x"),))
    for field, value in (("mtu", 1400), ("local_ip", "10.0.9.1"), ("remote_ip", "10.0.9.2")):
        with pytest.raises(ValueError):
            stack.reconfigure(replace(stack.config, **{field: value}), 2)
    stack.reconfigure(replace(stack.config, services=(SSH, WEB)), 3)
    assert stack.policy.breakers == {"127.0.0.1:22": OPEN, "127.0.0.1:8080": "closed"}


def test_reconfigure_turns_the_dns_forwarder_on_and_off():
    stack = make_stack()
    query = b"\x12\x34\x01\x00\x00\x01\x00\x00\x00\x00\x00\x00\x07example\x03com\x00\x00\x01\x00\x01"
    stack.receive_packet(udp_packet(5000, 53, query), 0)
    assert of_type(stack.take_events(), DnsQuery) == []         # off: port unreachable
    stack.reconfigure(replace(stack.config, dns_forwarder=True, dns_tcp_upstream=("127.0.0.1", 53)), 1)
    stack.receive_packet(udp_packet(5001, 53, query), 2)
    assert len(of_type(stack.take_events(), DnsQuery)) == 1
    stack.reconfigure(replace(stack.config, dns_forwarder=False, dns_tcp_upstream=None), 3)
    assert stack.dns is None
    stack.handle_timer(100000)                                   # no forwarder timer left behind
    stack.receive_packet(udp_packet(5002, 53, query), 4)
    assert of_type(stack.take_events(), DnsQuery) == []


def test_core_reconfigure_keeps_the_link():
    core = Core(config.link_config(config.defaults()), StackConfig(), random.Random(1))
    link = core.link
    core.reconfigure(StackConfig(services=(WEB,)), 5)
    assert core.link is link and core.stack_config.services == (WEB,)
    assert core.stack.policy.services == {80: WEB}


# -- the Reloader against a Runtime that is not running ------------------------------------------------------------

class Files(object):
    """The configuration file as the test edits it, and a Reloader reading it as the command line would."""

    def __init__(self, tmp_path, text):
        self.path = tmp_path / "pyslirp.toml"
        self.path.write_text(text)
        self.cfg = config.load(str(self.path))
        self.relays = []

        def dns(cfg):
            if not cfg.dns.forwarder:
                return [], None
            servers_ = [config.parse_hostport(t, 53) for t in cfg.dns.upstream]
            if not servers_:
                raise ValueError("no DNS upstream")

            def factory(post):
                relay = FakeRelay(servers_)
                self.relays.append(relay)
                return relay
            return servers_, factory
        self.reloader = Reloader(lambda: config.load(str(self.path)), self.cfg, dns, lambda: (), str(self.path))
        self.runtime = Runtime(config.link_config(self.cfg), config.stack_config(self.cfg), endpoint=None,
                               reloader=self.reloader)

    def reload(self, text):
        self.path.write_text(text)
        return self.reloader(self.runtime, 1000)


class FakeRelay(object):
    def __init__(self, servers_):
        self.servers = servers_
        self.stopped = False

    def start(self):
        pass

    def stop(self, join_timeout=None):
        self.stopped = True


def test_a_file_that_fails_validation_changes_nothing(tmp_path, caplog):
    files = Files(tmp_path, '[services.22]\nport = 22\n')
    before = files.runtime.core.stack.policy
    with caplog.at_level(logging.INFO, logger="pyslirp"):
        result = files.reload('[services.22]\nport = 22\n[services.2222]\nport = 0\n')
    assert result == ReloadResult(False, error="services.2222.port: must be an integer between 1 and 65535, "
                                               "got 0")
    assert files.runtime.core.stack.policy is before and files.reloader.cfg is files.cfg
    errors = [r.getMessage() for r in caplog.records if r.levelno >= logging.ERROR]
    assert errors == ["reload refused: services.2222.port: must be an integer between 1 and 65535, got 0; "
                      "the running configuration stays"]
    for text in ("[services.22\n", "[limits]\nmax_connections = 2\n", "[nonsense]\n"):
        assert not files.reload(text).ok
    assert files.runtime.core.stack.policy is before


def test_a_good_file_is_applied_and_what_needs_a_restart_is_logged(tmp_path, caplog):
    files = Files(tmp_path, '[services.22]\nport = 22\n')
    with caplog.at_level(logging.INFO, logger="pyslirp"):
        result = files.reload('[services.22]\nport = 22\n[services.2222]\nport = 2200\n'
                              '[network]\nmtu = 1200\n[proxy]\ntype = "socks5"\nhost = "127.0.0.1"\nport = 1080\n'
                              'connect_timeout = 4\n[logging]\nconnection_log = false\n'
                              '[monitoring]\nstats_interval = 7\n[health]\nbreaker_failures = 2\n')
    assert result.ok and result.restart == ("network.mtu",)
    assert result.changed == ("health", "proxy", "logging", "monitoring", "+services.2222")
    stack = files.runtime.core.stack
    assert sorted(stack.policy.services) == [22, 2222] and stack.policy.health.failures == 2
    assert stack.config.mtu == 1500                     # not applied: it needs a new link
    services = files.runtime.services
    assert services._proxy.port == 1080 and services._connect_timeout == 4
    assert not files.runtime.records.connection_log
    assert files.runtime.stats_interval == 7000
    messages = [r.getMessage() for r in caplog.records]
    assert "reload: network.mtu changed; that needs a restart and is not applied" in messages
    assert any(m.startswith("configuration reloaded from %s: health, proxy" % files.path) for m in messages)
    assert "services: 22 -> 127.0.0.1:22, 2222 -> 127.0.0.1:2200" in messages
    # Reloading the same file again compares with what runs: the MTU is still reported, nothing else.
    again = files.reload(files.path.read_text())
    assert again.ok and again.changed == () and again.restart == ("network.mtu",)


def test_the_dns_relay_is_replaced_only_when_its_servers_change(tmp_path):
    files = Files(tmp_path, "")
    on = '[dns]\nforwarder = true\nupstream = ["127.0.0.1:5300"]\n'
    assert files.reload(on).ok
    (first,) = files.relays
    assert files.runtime.dns_relay is first and first.servers == [("127.0.0.1", 5300)]
    assert files.runtime.core.stack.dns is not None
    assert files.reload(on + "[limits]\nmax_udp_flows = 8\n").ok
    assert files.relays == [first] and not first.stopped
    assert files.reload('[dns]\nforwarder = true\nupstream = ["127.0.0.1:5301"]\n').ok
    assert first.stopped and files.runtime.dns_relay is files.relays[1]
    assert not files.reload('[dns]\nforwarder = true\n').ok          # no upstream: refused, the relay stays
    assert files.runtime.dns_relay is files.relays[1] and not files.relays[1].stopped
    assert files.reload("").ok
    assert files.relays[1].stopped and files.runtime.dns_relay is None and files.runtime.core.stack.dns is None


def test_a_log_file_that_cannot_be_opened_refuses_the_reload(tmp_path):
    stream = io.StringIO()
    logsetup.setup("info", str(tmp_path / "a.log"), 0, 0, stream=stream)
    try:
        files = Files(tmp_path, '[logging]\nfile = "%s"\n' % (tmp_path / "a.log"))
        result = files.reload('[logging]\nfile = "%s"\n[limits]\nmax_udp_flows = 3\n'
                              % (tmp_path / "missing" / "b.log"))
        assert not result.ok and result.error.startswith("logging.file: cannot open %s" % (tmp_path / "missing"))
        assert files.runtime.core.stack.config.max_udp_flows == 64
        logging.getLogger("pyslirp.test").info("still here")
        for handler in logging.getLogger("pyslirp").handlers:
            handler.flush()
        assert "still here" in (tmp_path / "a.log").read_text()       # the old file is still the log
        assert files.reload('[logging]\nfile = "%s"\nlevel = "warning"\n' % (tmp_path / "b.log")).ok
        logging.getLogger("pyslirp.test").warning("in the new file")
        for handler in logging.getLogger("pyslirp").handlers:
            handler.flush()
        assert "in the new file" in (tmp_path / "b.log").read_text()
        assert "in the new file" not in (tmp_path / "a.log").read_text()
    finally:
        logsetup.teardown()


# -- SIGHUP through a running runtime: a held connection keeps answering, the link is not renegotiated -------------

class PipeClient(object):
    """A minimal PPP client over the runtime's pipes: LCP, IPCP, and TCP connections by hand."""

    def __init__(self, to_rt, from_rt):
        from pyslirp.wire import hdlc
        self.to_rt, self.from_rt = to_rt, from_rt
        self.deframer = hdlc.Deframer(accm=0)
        self.frames = []
        self.lcp_requests = 0           # LCP Configure-Requests seen from pyslirp

    def send(self, proto, info):
        from pyslirp.wire import hdlc, ppp
        os.write(self.to_rt, hdlc.encode_frame(ppp.build_frame(proto, info)))

    def _read(self, timeout):
        from pyslirp.wire import ppp
        if select.select([self.from_rt], [], [], timeout)[0]:
            for frame in self.deframer.feed(os.read(self.from_rt, 65536)):
                proto, info = ppp.parse_frame(frame)
                if proto == ppp.PROTO_LCP and ppp.parse_cp(info)[0] == ppp.CONFIGURE_REQUEST:
                    self.lcp_requests += 1
                self.frames.append((proto, info))

    def wait(self, match, timeout=10.0):
        deadline = time.monotonic() + timeout
        while True:
            for i, (proto, info) in enumerate(self.frames):
                found = match(proto, info)
                if found is not None:
                    del self.frames[i]
                    return found
            left = deadline - time.monotonic()
            assert left > 0, self.frames
            self._read(left)

    def drain(self, seconds):
        end = time.monotonic() + seconds
        while time.monotonic() < end:
            self._read(end - time.monotonic())

    @staticmethod
    def cp(proto, code):
        from pyslirp.wire import ppp

        def match(p, info):
            if p == proto:
                parsed = ppp.parse_cp(info)
                if parsed[0] == code:
                    return parsed
        return match

    def up(self):
        from pyslirp.wire import ppp
        _, ident, data = self.wait(self.cp(ppp.PROTO_LCP, ppp.CONFIGURE_REQUEST))
        self.send(ppp.PROTO_LCP, ppp.build_cp(ppp.CONFIGURE_ACK, ident, data))
        self.send(ppp.PROTO_LCP, ppp.build_cp(ppp.CONFIGURE_REQUEST, 1, ppp.build_options(
            [(2, b"\0\0\0\0"), (5, b"\1\2\3\4")])))
        self.wait(self.cp(ppp.PROTO_LCP, ppp.CONFIGURE_ACK))
        peer = bytes([10, 0, 0, 2])
        self.send(ppp.PROTO_IPCP, ppp.build_cp(ppp.CONFIGURE_REQUEST, 1, ppp.build_options([(3, peer)])))
        self.wait(self.cp(ppp.PROTO_IPCP, ppp.CONFIGURE_ACK))
        _, ident, data = self.wait(self.cp(ppp.PROTO_IPCP, ppp.CONFIGURE_REQUEST))
        self.send(ppp.PROTO_IPCP, ppp.build_cp(ppp.CONFIGURE_ACK, ident, data))


class TcpFlow(object):
    """One hand-driven TCP connection of the PipeClient to 10.0.0.1:port."""

    US, PEER = bytes([10, 0, 0, 1]), bytes([10, 0, 0, 2])

    def __init__(self, client, sport, dport):
        self.client, self.sport, self.dport = client, sport, dport
        self.seq, self.ack = 1000, 0

    def _send(self, flags, payload=b""):
        from pyslirp.wire import ppp
        from pyslirp.wire.ipv4 import Ipv4Repr
        from pyslirp.wire.tcp import TcpRepr
        seg = TcpRepr(self.sport, self.dport, self.seq, self.ack, flags, 65535, payload=payload,
                      mss=1400 if flags & tcp.SYN else None)
        self.client.send(ppp.PROTO_IP, Ipv4Repr(self.PEER, self.US, 6, seg.emit(self.PEER, self.US)).emit())
        self.seq += seg.seg_len

    def segment(self, timeout=10.0):
        from pyslirp.wire import ppp
        from pyslirp.wire.ipv4 import Ipv4Repr
        from pyslirp.wire.tcp import TcpRepr

        def match(p, info):
            if p == ppp.PROTO_IP:
                ip = Ipv4Repr.parse(info)
                seg = TcpRepr.parse(ip.payload, ip.src, ip.dst)
                if seg.dst_port == self.sport:
                    return seg
        return self.client.wait(match, timeout)

    def open(self):
        self._send(tcp.SYN)
        synack = self.segment()
        if synack.flags & tcp.RST:
            return synack
        self.ack = synack.seq + 1
        self._send(tcp.ACK)
        return synack

    def echo(self, data):
        self._send(tcp.ACK | tcp.PSH, data)
        got = b""
        while len(got) < len(data):
            seg = self.segment()
            if seg.payload and seg.seq == self.ack:
                got += seg.payload
                self.ack += len(seg.payload)
                self._send(tcp.ACK)
        return got


def test_sighup_adds_a_service_while_a_held_connection_keeps_answering(tmp_path, servers):  # noqa: F811
    held_server = servers(echo)
    new_server = servers(echo)
    path = tmp_path / "pyslirp.toml"
    base = '[ppp]\nlcp_echo_interval = 0\n[services.22]\nport = %d\n' % held_server.port
    path.write_text(base)
    cfg = config.load(str(path))
    endpoint, to_rt, from_rt = pipe_endpoint()
    reloader = Reloader(lambda: config.load(str(path)), cfg, lambda c: ([], None), lambda: (), str(path))
    runtime = Runtime(config.link_config(cfg), config.stack_config(cfg), endpoint=endpoint, reloader=reloader)
    thread, result = start(runtime)
    client = PipeClient(to_rt, from_rt)
    try:
        client.up()
        held = TcpFlow(client, 41000, 22)
        assert held.open().flags == tcp.SYN | tcp.ACK
        assert held.echo(b"before") == b"before"
        refused = TcpFlow(client, 41001, 2222)
        assert refused.open().flags & tcp.RST              # no such service yet
        requests = client.lcp_requests

        path.write_text(base + "[services.2222]\nport = %d\n" % new_server.port)
        runtime.request_reload()                           # what the SIGHUP handler does
        added = TcpFlow(client, 41002, 2222)
        deadline = time.monotonic() + 5
        while runtime.counters()["runtime.reloads"] == 0 and time.monotonic() < deadline:
            time.sleep(0.02)
        assert added.open().flags == tcp.SYN | tcp.ACK
        assert added.echo(b"new service") == b"new service"
        assert held.echo(b"after") == b"after"

        path.write_text("[services.22]\nport = nonsense\n")   # broken: nothing changes
        runtime.request_reload()
        client.drain(0.5)
        assert runtime.counters()["runtime.reloads_refused"] == 1
        assert held.echo(b"still") == b"still"
        again = TcpFlow(client, 41003, 2222)
        assert again.open().flags == tcp.SYN | tcp.ACK
        assert client.lcp_requests == requests             # the link was never renegotiated
    finally:
        runtime.request_stop()
        thread.join(10)
        for fd in (to_rt, from_rt):
            os.close(fd)
    assert result == {"code": 0}


def test_sighup_reloads_a_pyslirp_process(tmp_path):
    """The real program: SIGHUP re-reads the -c file; a broken one is refused with one line; it keeps serving."""
    import subprocess
    from test_runtime import PYTHON, SCRIPT, _read_pty_line
    path = tmp_path / "pyslirp.toml"
    path.write_text("[ppp]\nlcp_echo_interval = 0\n")
    log_path = tmp_path / "pyslirp.log"
    proc = subprocess.Popen([PYTHON, SCRIPT, "--pty", "-c", str(path), "--log-file", str(log_path)],
                            stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    try:
        _read_pty_line(proc)

        def wait_log(text, timeout=10):
            end = time.monotonic() + timeout
            while time.monotonic() < end:
                if log_path.exists() and text in log_path.read_text():
                    return True
                time.sleep(0.05)
            return False
        path.write_text("[ppp]\nlcp_echo_interval = 0\n[services.2222]\nport = 22\n")
        proc.send_signal(signal.SIGHUP)
        assert wait_log("configuration reloaded from %s: -services.22, +services.2222" % path)
        path.write_text("[ppp]\nlcp_echo_interval = 0\n[services.2222]\nport = 70000\n")
        proc.send_signal(signal.SIGHUP)
        assert wait_log("reload refused: services.2222.port: must be an integer between 1 and 65535, got 70000; "
                        "the running configuration stays")
        assert proc.poll() is None
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=15) == 0
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        err = proc.stderr.read().decode()
        proc.stdout.close()
        proc.stderr.close()
    assert "Traceback" not in err
