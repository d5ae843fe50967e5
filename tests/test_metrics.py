"""Metrics: the typed families, the Prometheus text and JSON renderings, and the figures of a real Core.

The exposition is checked by a small parser of the text format written here from the format's description
(version 0.0.4), by the real ``promtool check metrics`` (Debian's prometheus package, see .ci/install-promtool),
and against the JSON rendering of the same snapshot.  The figures come from a real PPPLink and IPStack driven at
explicit times: a scripted pppd-like client, TCP connections through the stack's service bridge, UDP and ping flows.
"""

import json
import random
import re
import shutil
import subprocess

import pytest

from pyslirp import config as config_mod
from pyslirp import metrics
from pyslirp.core import Core
from pyslirp.metrics import Buckets, HistogramValue, Snapshot
from pyslirp.net.events import ServiceConnect
from pyslirp.net.flows import Service
from pyslirp.net.stack import StackConfig
from pyslirp.net.tcp.conn import TcpConfig
from pyslirp.ppp.events import AuthResult
from pyslirp.ppp.link import LinkConfig
from pyslirp.wire import hdlc
from pyslirp.wire import ppp as wppp
from pyslirp.wire import tcp
from pyslirp.wire.icmp import IcmpRepr
from pyslirp.wire.ipv4 import PROTO_ICMP

from e2e.fixtures import unavailable
from test_core import Client as PppClient
from test_stack import Client, ip_packet, make_stack, udp_packet

SSH = Service(22, "127.0.0.1", 22, "SSH")
WEB = Service(80, "127.0.0.1", 8080, "web")


# -- a parser of the text format (0.0.4), for the tests ------------------------------------------------------------

_SAMPLE = re.compile(r'^([a-zA-Z_:][a-zA-Z0-9_:]*)(\{(.*)\})? (\S+)$')
_LABEL = re.compile(r'\s*([a-zA-Z_][a-zA-Z0-9_]*)="((?:[^"\\]|\\.)*)"\s*(,|$)')


def _unescape(text):
    out, i = [], 0
    while i < len(text):
        c = text[i]
        if c == "\\":
            nxt = text[i + 1]
            out.append({"n": "\n", "\\": "\\", '"': '"'}[nxt])
            i += 2
        else:
            out.append(c)
            i += 1
    return "".join(out)


def parse_text(text):
    """{family: {"type", "help", "samples": {(sample name, frozenset(labels)): value}}}; fails on anything odd."""
    families = {}
    current = None
    assert text.endswith("\n")
    for line in text[:-1].split("\n"):
        if line.startswith("# HELP "):
            name, _, help_text = line[len("# HELP "):].partition(" ")
            assert name not in families, "two HELP lines for %s" % name
            current = families[name] = {"help": _unescape(help_text), "type": None, "samples": {}}
            continue
        if line.startswith("# TYPE "):
            name, kind = line[len("# TYPE "):].split(" ")
            assert families[name]["type"] is None and name == list(families)[-1]
            families[name]["type"] = kind
            continue
        m = _SAMPLE.match(line)
        assert m, "not a sample line: %r" % line
        name, labels_text, value = m.group(1), m.group(3) or "", m.group(4)
        labels = {}
        pos = 0
        while pos < len(labels_text):
            lm = _LABEL.match(labels_text, pos)
            assert lm, "bad labels: %r" % labels_text
            labels[lm.group(1)] = _unescape(lm.group(2))
            pos = lm.end()
        base = list(families)[-1]
        assert name == base or (current["type"] == "histogram" and name in (base + "_bucket", base + "_sum",
                                                                            base + "_count")), line
        key = (name, frozenset(labels.items()))
        assert key not in current["samples"], "duplicate sample %r" % line
        current["samples"][key] = float(value.replace("+Inf", "inf"))
    return families


def promtool_check(text):
    """Run the real ``promtool check metrics`` on ``text``; (returncode, output)."""
    path = shutil.which("promtool")
    if not path:
        unavailable("promtool not found; run .ci/install-promtool (it extracts it from Debian's prometheus package)")
    proc = subprocess.run([path, "check", "metrics"], input=text.encode("utf-8"), stdout=subprocess.PIPE,
                          stderr=subprocess.STDOUT, timeout=30)
    return proc.returncode, proc.stdout.decode("utf-8", "replace")


# -- the definitions -------------------------------------------------------------------------------------------

# The names and labels operators' dashboards rely on.
REQUIRED = {
    "pyslirp_link_up": ("gauge", ()),
    "pyslirp_serial_bytes_total": ("counter", ("direction",)),
    "pyslirp_ppp_frames_total": ("counter", ("direction",)),
    "pyslirp_ppp_errors_total": ("counter", ("reason",)),
    "pyslirp_ip_packets_total": ("counter", ("direction",)),
    "pyslirp_ip_dropped_total": ("counter", ("reason",)),
    "pyslirp_tcp_connections_active": ("gauge", ("service",)),
    "pyslirp_tcp_connections_total": ("counter", ("service",)),
    "pyslirp_connection_errors_total": ("counter", ("service", "reason")),
    "pyslirp_connections_refused_total": ("counter", ("reason",)),
    "pyslirp_tcp_retransmissions_total": ("counter", ()),
    "pyslirp_service_connect_seconds": ("histogram", ("service",)),
    "pyslirp_line_drain_bytes_per_second": ("gauge", ()),
    "pyslirp_lcp_echo_rtt_seconds": ("gauge", ()),
    "pyslirp_auth_total": ("counter", ("method", "result")),
}


def test_required_families_have_exactly_their_names_kinds_and_labels():
    for name, (kind, labels) in REQUIRED.items():
        fam = metrics.BY_NAME[name]
        assert (fam.kind, fam.labels) == (kind, labels), name


def test_definitions_follow_the_naming_rules():
    names = [f.name for f in metrics.FAMILIES]
    assert len(names) == len(set(names))
    for fam in metrics.FAMILIES:
        assert re.match(r"^pyslirp_[a-z0-9_]+$", fam.name), fam.name
        assert fam.name.endswith("_total") == (fam.kind == metrics.COUNTER), fam.name
        assert not re.search(r"_(ms|milliseconds|bucket|sum|count)$", fam.name), fam.name
        assert fam.help and "\n" not in fam.help
        if fam.kind == metrics.HISTOGRAM:
            assert fam.name.endswith("_seconds") and list(fam.buckets) == sorted(fam.buckets)
    with pytest.raises(ValueError):
        metrics.counter("pyslirp_things", "a counter without _total")
    with pytest.raises(ValueError):
        metrics.gauge("pyslirp_things_total", "a gauge with _total")
    with pytest.raises(ValueError):
        metrics.histogram("pyslirp_x_seconds", "unsorted", (1.0, 0.5))
    with pytest.raises(ValueError):
        metrics.gauge("pyslirp_Bad", "capital letters")


# -- the renderings ----------------------------------------------------------------------------------------------

def synthetic_snapshot():
    """A snapshot with awkward label values and a histogram, built as collect() builds one."""
    b = metrics._Builder()
    b.set(metrics.LINK_UP, 1)
    b.set(metrics.SERIAL_BYTES, 12345, "in")
    b.set(metrics.SERIAL_BYTES, 678, "out")
    b.set(metrics.LCP_ECHO_RTT, 0.125)
    b.set(metrics.TCP_TOTAL, 3, 'back\\slash "quoted"\nnewline')
    b.set(metrics.TCP_TOTAL, 1, "SSH")
    b.set(metrics.CONNECTION_ERRORS, 2, "SSH", "connect_reset")
    buckets = Buckets()
    for ms in (0, 1, 2, 3, 7, 30000):
        buckets.observe(ms)
    b.set(metrics.SERVICE_CONNECT, HistogramValue.of(buckets), "SSH")
    return Snapshot(1000, b.samples)


def test_label_values_and_help_are_escaped():
    assert metrics.escape_label('a\\b"c\nd') == 'a\\\\b\\"c\\nd'
    assert metrics.escape_help('one\\two\nthree "quotes" stay') == 'one\\\\two\\nthree "quotes" stay'
    text = metrics.render_text(synthetic_snapshot())
    assert 'pyslirp_tcp_connections_total{service="back\\\\slash \\"quoted\\"\\nnewline"} 3\n' in text
    parsed = parse_text(text)
    samples = parsed["pyslirp_tcp_connections_total"]["samples"]
    assert samples[("pyslirp_tcp_connections_total",
                    frozenset({("service", 'back\\slash "quoted"\nnewline')}))] == 3


def test_one_help_and_type_per_family_in_definition_order():
    text = metrics.render_text(synthetic_snapshot())
    helps = re.findall(r"^# HELP (\S+) ", text, re.M)
    types = re.findall(r"^# TYPE (\S+) (\S+)$", text, re.M)
    assert helps == [f.name for f in metrics.FAMILIES]
    assert types == [(f.name, f.kind) for f in metrics.FAMILIES]
    assert "pyslirp_link_up 1\n" in text and 'pyslirp_serial_bytes_total{direction="in"} 12345\n' in text
    assert "pyslirp_lcp_echo_rtt_seconds 0.125\n" in text


def test_histogram_buckets_are_cumulative_and_end_with_inf():
    buckets = Buckets((1, 5, 10))
    for ms in (0, 1, 2, 5, 6, 10, 11, 9999):
        buckets.observe(ms)
    assert buckets.counts == [2, 2, 2, 2]          # <=1, (1,5], (5,10], >10
    value = HistogramValue.of(buckets)
    assert value.cumulative == (2, 4, 6) and value.count == 8 and value.sum == pytest.approx(10.034)
    text = metrics.render_text(synthetic_snapshot())
    lines = [ln for ln in text.splitlines() if ln.startswith("pyslirp_service_connect_seconds")]
    les = [re.search(r'le="([^"]+)"', ln).group(1) for ln in lines if "_bucket" in ln]
    assert les == ["0.001", "0.002", "0.005", "0.01", "0.025", "0.05", "0.1", "0.25", "0.5", "1.0", "2.5", "5.0",
                   "10.0", "+Inf"]
    counts = [int(ln.rsplit(" ", 1)[1]) for ln in lines if "_bucket" in ln]
    # 0 and 1 ms <= 0.001; 2 <= 0.002; 3 <= 0.005; 7 <= 0.01; 30 s only in +Inf.
    assert counts == [2, 3, 4, 5, 5, 5, 5, 5, 5, 5, 5, 5, 5, 6]
    assert counts == sorted(counts)
    assert lines[-2] == 'pyslirp_service_connect_seconds_sum{service="SSH"} 30.013'
    assert lines[-1] == 'pyslirp_service_connect_seconds_count{service="SSH"} 6'


def assert_json_equals_text(snap):
    """Every figure of the text rendering is in the JSON rendering with the same value, and nothing else is."""
    text = parse_text(metrics.render_text(snap))
    doc = json.loads(metrics.render_json(snap))["metrics"]
    assert list(doc) == list(text)
    for name, fam in doc.items():
        assert (fam["type"], fam["help"]) == (text[name]["type"], text[name]["help"])
        expected = {}
        for s in fam["samples"]:
            labels = s["labels"]
            if fam["type"] == "histogram":
                for le, n in s["buckets"].items():
                    expected[(name + "_bucket", frozenset(dict(labels, le=le).items()))] = float(n)
                expected[(name + "_sum", frozenset(labels.items()))] = float(s["sum"])
                expected[(name + "_count", frozenset(labels.items()))] = float(s["count"])
            else:
                expected[(name, frozenset(labels.items()))] = float(s["value"])
        assert expected == text[name]["samples"], name


def test_json_has_the_same_figures_as_the_text():
    assert_json_equals_text(synthetic_snapshot())


def test_values_are_formatted_exactly():
    assert metrics.format_value(7) == "7" and metrics.format_value(2 ** 70) == str(2 ** 70)
    assert metrics.format_value(0.25) == "0.25" and metrics.format_value(True) == "1"
    assert metrics.format_value(float("inf")) == "+Inf" and metrics.format_value(float("-inf")) == "-Inf"
    assert metrics.format_value(float("nan")) == "NaN"


def test_format_line_is_one_line_without_zeros():
    line = metrics.format_line(synthetic_snapshot())
    assert "\n" not in line.replace("\\n", "")
    assert "link_up=1" in line and "serial_bytes_total{direction=in}=12345" in line
    assert "service_connect_seconds_count{service=SSH}=6" in line and "internal_errors" not in line
    assert "internal_errors_total=0" in metrics.format_line(collect_fresh(), skip_zero=False)


def test_promtool_accepts_the_rendering():
    code, out = promtool_check(metrics.render_text(synthetic_snapshot()))
    assert code == 0 and out.strip() == "", out


def test_promtool_notices_a_broken_exposition():
    # The check above is meaningful: a counter without _total and a bad label are reported.
    bad = "# HELP pyslirp_x a\n# TYPE pyslirp_x counter\npyslirp_x{a=\"b} 1\n"
    code, out = promtool_check(bad)
    assert code != 0 and out.strip()


# -- figures of a real Core ------------------------------------------------------------------------------------

def collect_fresh(**kw):
    core = Core(LinkConfig(), StackConfig(services=(SSH,)), random.Random(1))
    return metrics.collect(core, 0, **kw)


def core_with(stack):
    return Core(LinkConfig(), stack.config, random.Random(1), stack=stack)


def test_a_fresh_core_exports_every_required_family_with_zeros():
    snap = collect_fresh(serial_in=5, serial_out=6, drain_rate=11520.7, auth={("pap", "ok"): 1},
                         line_queued=(300, 42))
    text = metrics.render_text(snap)
    for name in REQUIRED:
        assert "# TYPE %s " % name in text
    assert snap.value("pyslirp_link_up") == 0
    assert snap.value("pyslirp_serial_bytes_total", direction="in") == 5
    assert snap.value("pyslirp_line_drain_bytes_per_second") == 11520
    assert snap.value("pyslirp_line_queued_bytes", where="writer") == 300
    assert snap.value("pyslirp_line_queued_bytes", where="os") == 42
    assert snap.value("pyslirp_auth_total", method="pap", result="ok") == 1
    assert snap.value("pyslirp_ppp_errors_total", reason="bad_fcs") == 0
    assert snap.value("pyslirp_tcp_retransmissions_total") == 0
    assert snap.value("pyslirp_lcp_echo_rtt_seconds") is None        # nothing measured: no sample
    assert snap.value("pyslirp_audit_records_total", result="written") is None
    assert collect_fresh(audit={"written": 3}).value("pyslirp_audit_records_total", result="written") == 3
    assert promtool_check(text)[0] == 0


def test_tcp_connections_bytes_connect_times_and_folding():
    stack = make_stack(services=(SSH, WEB))
    core = core_with(stack)
    client = Client(stack, port=40001)
    client.syn(now=1000)
    (connect,) = [e for e in stack.take_events() if isinstance(e, ServiceConnect)]
    snap = metrics.collect(core, 1010)
    assert snap.value("pyslirp_tcp_connections_connecting", service="SSH") == 1
    assert snap.value("pyslirp_tcp_connections_active", service="SSH") == 0
    assert snap.value("pyslirp_service_connect_seconds", service="SSH") is None
    stack.service_connected(connect.conn_id, 1037)                 # 37 ms after the SYN
    client.receive()
    client.send(tcp.ACK, now=1040)
    client.send(tcp.ACK | tcp.PSH, payload=b"hello world", now=1050)
    stack.service_data(connect.conn_id, b"0123456789" * 3, 1060)
    client.receive()
    snap = metrics.collect(core, 1070)
    assert snap.value("pyslirp_tcp_connections_active", service="SSH") == 1
    assert snap.value("pyslirp_tcp_connections_connecting", service="SSH") == 0
    assert snap.value("pyslirp_tcp_connections_total", service="SSH") == 1
    assert snap.value("pyslirp_service_bytes_total", service="SSH", direction="in") == 11
    assert snap.value("pyslirp_service_bytes_total", service="SSH", direction="out") == 30
    hist = snap.value("pyslirp_service_connect_seconds", service="SSH")
    assert hist.count == 1 and hist.sum == pytest.approx(0.037)
    les = metrics.le_strings(metrics.SERVICE_CONNECT)
    assert dict(zip(les, hist.cumulative))["0.025"] == 0 and dict(zip(les, hist.cumulative))["0.05"] == 1
    # A retransmission: service data the client does not acknowledge, then the RTO.
    stack.service_data(connect.conn_id, b"x" * 100, 1080)
    now = 1080
    while stack.tcp_retransmissions() == 0 and now < 60000:
        now = stack.get_timer()
        stack.handle_timer(now)
        client.receive()
    snap = metrics.collect(core, now)
    assert snap.value("pyslirp_tcp_retransmissions_total") >= 1
    retransmitted = snap.value("pyslirp_tcp_retransmissions_total")
    sent = snap.value("pyslirp_service_bytes_total", service="SSH", direction="out")
    assert sent >= 30
    # The client resets the connection: it is gone, its figures stay in the totals.
    client.send(tcp.RST, now=now + 1)
    stack.take_events()
    snap = metrics.collect(core, now + 2)
    assert stack.connections_active == 0
    assert snap.value("pyslirp_tcp_connections_active", service="SSH") == 0
    assert snap.value("pyslirp_tcp_connections_total", service="SSH") == 1
    assert snap.value("pyslirp_service_bytes_total", service="SSH", direction="in") == 11
    assert snap.value("pyslirp_service_bytes_total", service="SSH", direction="out") == sent
    assert snap.value("pyslirp_tcp_retransmissions_total") == retransmitted
    assert snap.value("pyslirp_connection_errors_total", service="SSH", reason="reset") == 1
    assert snap.value("pyslirp_service_connect_seconds", service="SSH").count == 1
    assert_json_equals_text(snap)


def test_refusals_and_connect_failures_by_reason():
    stack = make_stack(services=(SSH, WEB), max_connections=2, max_per_service=2)
    core = core_with(stack)
    Client(stack, port=40001, dst=23).syn(0)                        # no service: policy
    a, b = Client(stack, port=40002), Client(stack, port=40003)
    a.syn(0)
    b.syn(0)
    Client(stack, port=40004, dst=80).syn(0)                        # over max_connections: limit
    ids = [e.conn_id for e in stack.take_events() if isinstance(e, ServiceConnect)]
    stack.service_failed(ids[0], "direct: connection refused", 5)   # the service is down
    stack.service_failed(ids[1], "direct: no route", 6, "host_unreachable")
    stack.receive_packet(udp_packet(5000, 9, b"x"), 7)               # no UDP service: policy
    snap = metrics.collect(core, 10)
    assert snap.samples("pyslirp_connections_refused_total") == {
        ("policy",): 1, ("limit",): 1, ("service_down",): 2}
    assert snap.samples("pyslirp_flows_refused_total") == {("policy",): 2, ("limit",): 1, ("service_down",): 2}
    assert snap.samples("pyslirp_connection_errors_total") == {
        ("SSH", "connect_reset"): 1, ("SSH", "connect_host_unreachable"): 1}
    assert snap.value("pyslirp_tcp_connections_total", service="SSH") is None
    assert snap.value("pyslirp_tcp_resets_sent_total") >= 3


def test_datagram_flows_and_drops():
    stack = make_stack(udp_services=(Service(7, "127.0.0.1", 7007, "echo"),), udp_timeout=60)
    core = core_with(stack)
    stack.receive_packet(udp_packet(3333, 7, b"hello"), 0)
    (flow_id,) = set(e.flow_id for e in stack.take_events())
    stack.udp_data(flow_id, b"HELLO!", 5)
    stack.receive_packet(ip_packet(PROTO_ICMP, IcmpRepr.echo(1, 1, b"ping").emit()), 6)     # to local_ip
    stack.receive_packet(b"\x45\x00\x00", 7)                                                # too short
    snap = metrics.collect(core, 10)
    assert snap.value("pyslirp_datagram_flows_active", protocol="udp") == 1
    assert snap.value("pyslirp_datagram_flows_total", protocol="udp", service="echo") == 1
    assert snap.value("pyslirp_datagram_bytes_total", protocol="udp", service="echo", direction="in") == 5
    assert snap.value("pyslirp_datagram_bytes_total", protocol="udp", service="echo", direction="out") == 6
    assert snap.value("pyslirp_ip_dropped_total", reason="ip_too_short") == 1
    assert snap.value("pyslirp_ip_packets_total", direction="in") == 3
    stack.handle_timer(5 + 60000)                                       # idle: closed, folded
    snap = metrics.collect(core, 70000)
    assert snap.value("pyslirp_datagram_flows_active", protocol="udp") == 0
    assert snap.value("pyslirp_datagram_bytes_total", protocol="udp", service="echo", direction="out") == 6


def negotiated_core(**ppp):
    settings = {"ppp.lcp_echo_interval": 1, "ppp.restart_interval": 1}
    settings.update(("ppp." + k, v) for k, v in ppp.items())
    cfg = config_mod.validate(config_mod.apply_overrides({}, settings))
    core = Core(config_mod.link_config(cfg), config_mod.stack_config(cfg), random.Random(7))
    client = PppClient(core)
    client.bring_up()
    return core, client


def test_link_figures_echo_rtt_and_framing_errors():
    core, client = negotiated_core()
    snap = metrics.collect(core, client.now)
    assert snap.value("pyslirp_link_up") == 1 and snap.value("pyslirp_link_sessions_total") == 1
    assert snap.value("pyslirp_ppp_frames_total", direction="in") == core.link.frames_in >= 4
    assert snap.value("pyslirp_ppp_frames_total", direction="out") == core.link.frames_out >= 4
    # An idle second: LCP sends an Echo-Request; the client answers 45 ms later.
    client.now += 1000
    core.handle_timer(client.now)
    client.pump()
    code, ident, data = client.take(wppp.PROTO_LCP, wppp.ECHO_REQUEST)
    client.now += 45
    client.send(wppp.PROTO_LCP, wppp.build_cp(wppp.ECHO_REPLY, ident, b"\1\2\3\4"))
    snap = metrics.collect(core, client.now)
    assert snap.value("pyslirp_lcp_echo_rtt_seconds") == pytest.approx(0.045)
    # A reply with another identifier (late, for an earlier request) does not count.
    client.send(wppp.PROTO_LCP, wppp.build_cp(wppp.ECHO_REPLY, (ident + 7) & 0xFF, b"\1\2\3\4"))
    assert metrics.collect(core, client.now).value("pyslirp_lcp_echo_rtt_seconds") == pytest.approx(0.045)
    # A frame with a bad FCS, one that is too short, garbage before a flag.
    good = hdlc.encode_frame(wppp.build_frame(wppp.PROTO_LCP, wppp.build_cp(wppp.ECHO_REQUEST, 1, b"\1\2\3\4")))
    bad = good[:-3] + bytes([good[-3] ^ 0x55]) + good[-2:]
    core.receive_serial(bad + b"\x7e\x01\x7e", client.now)
    snap = metrics.collect(core, client.now)
    assert snap.value("pyslirp_ppp_errors_total", reason="bad_fcs") == 1
    assert snap.value("pyslirp_ppp_errors_total", reason="too_short") == 1
    # The client hangs up: the link is down, the session count stays.
    client.send_cp(wppp.PROTO_LCP, wppp.TERMINATE_REQUEST, 9, [])
    snap = metrics.collect(core, client.now)
    assert snap.value("pyslirp_link_up") == 0 and snap.value("pyslirp_link_sessions_total") == 1
    assert promtool_check(metrics.render_text(snap))[0] == 0


def test_authentication_results_are_counted_by_the_runtime_figures():
    # collect() exports what the stack thread counted from AuthResult events.
    events = [AuthResult("alice", True, "pap"), AuthResult("mallory", False, "pap"), AuthResult("bob", False, "pap")]
    auth = {}
    for e in events:
        key = (e.method, "ok" if e.ok else "fail")
        auth[key] = auth.get(key, 0) + 1
    snap = collect_fresh(auth=auth)
    assert snap.samples("pyslirp_auth_total") == {("pap", "ok"): 1, ("pap", "fail"): 2}
    assert snap.total("pyslirp_auth_total") == 3 and snap.total("pyslirp_auth_total", result="fail") == 2


def test_collect_reads_only_and_leaves_the_stack_as_it_was():
    stack = make_stack(tcp=TcpConfig())
    core = core_with(stack)
    Client(stack, port=40010).syn(0)
    events_before = stack.take_events()
    timer = stack.get_timer()
    first = metrics.render_text(metrics.collect(core, 1))
    assert metrics.render_text(metrics.collect(core, 1)) == first
    assert stack.take_events() == [] and stack.get_timer() == timer and len(events_before) == 1


def test_suspended_link_figures():
    stack = make_stack(services=(SSH,), resume_grace=30)
    core = core_with(stack)
    Client(stack, port=40001).syn(0)
    assert stack.suspend(1000)
    snap = metrics.collect(core, 1000)
    assert snap.value("pyslirp_link_suspended") == 1
    assert snap.samples("pyslirp_link_suspensions_total") == {("resumed",): 0, ("expired",): 0}
    stack.resume(2000)
    assert metrics.collect(core, 2000).value("pyslirp_link_suspended") == 0
    stack.suspend(3000)
    stack.handle_timer(3000 + 30000)                                  # the grace runs out: reset
    snap = metrics.collect(core, 33000)
    assert snap.value("pyslirp_link_suspended") == 0
    assert snap.samples("pyslirp_link_suspensions_total") == {("resumed",): 1, ("expired",): 1}
    assert snap.value("pyslirp_tcp_connections_connecting", service="SSH") is None
