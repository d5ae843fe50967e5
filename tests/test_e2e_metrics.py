"""End to end: the metrics and the audit log while the real Linux pppd (User-Mode Linux) uses pyslirp.

pyslirp serves its metrics on a free loopback port and writes an audit file.  The guest brings the link up,
opens connections to an echo service and downloads from a source service (real servers on loopback ports), then
stays idle for a few seconds.  The host scrapes /metrics and /metrics.json at each step and judges:

* the figures move with the real traffic and equal what the services themselves counted (connections, bytes each
  way, the connect-time histogram's count), ``pyslirp_link_up`` is 1 while the link is up, the serial and IP
  counters grow, and an idle link gets an LCP echo round-trip time;
* every live scrape passes the real ``promtool check metrics``, and the JSON has the same figures;
* the only socket pyslirp listens on is the loopback metrics one (``ss -ltnp``; no UDP socket either);
* SIGUSR1 writes the snapshot to the log;
* the audit file has the session (link_up, every flow's flow_open and flow_close with its bytes, link_down).
"""

import hashlib
import json
import shlex
import signal
import time
import urllib.request

import pytest

from e2e import services
from e2e.fixtures import lab  # noqa: F401  (pytest fixture)
from e2e.programs import await_mark, json_result, write_script
from test_e2e_tcp import HostCheck, ppp_addresses, sockets_of
from test_metrics import parse_text, promtool_check

pytestmark = [pytest.mark.e2e, pytest.mark.timeout(300)]

LOCAL_IP = "10.0.0.1"
ECHO_CONNECTIONS = 5
ECHO_BYTES = 20000
DOWNLOAD = 1 << 20

GUEST_CLIENT = r"""
import hashlib, json, socket, sys, time
ip, echo_port, source_port, n, size = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), int(sys.argv[4]), \
    int(sys.argv[5])
out = {"echo": [], "errors": []}
for i in range(n):
    data = bytes((i * 7 + j) & 0xFF for j in range(size))
    try:
        c = socket.create_connection((ip, echo_port), timeout=30)
        c.sendall(data)
        c.shutdown(socket.SHUT_WR)
        got = b""
        while True:
            d = c.recv(65536)
            if not d:
                break
            got += d
        c.close()
        out["echo"].append(got == data)
    except Exception as exc:
        out["errors"].append("echo %d: %r" % (i, exc))
h, total = hashlib.sha256(), 0
try:
    c = socket.create_connection((ip, source_port), timeout=30)
    while True:
        d = c.recv(65536)
        if not d:
            break
        h.update(d)
        total += len(d)
    c.close()
except Exception as exc:
    out["errors"].append("download: %r" % (exc,))
out["download"] = {"bytes": total, "sha256": h.hexdigest()}
print(json.dumps(out))
"""


class Scraper(object):
    def __init__(self, port):
        self.base = "http://127.0.0.1:%d" % port

    def get(self, path):
        with urllib.request.urlopen(self.base + path, timeout=10) as resp:
            assert resp.status == 200
            return resp.headers["Content-Type"], resp.read().decode("utf-8")

    def scrape(self):
        """(parsed text, JSON document) of one scrape each; the text passes promtool."""
        ctype, text = self.get("/metrics")
        assert ctype == "text/plain; version=0.0.4; charset=utf-8"
        code, out = promtool_check(text)
        assert code == 0, out + text
        _, body = self.get("/metrics.json")
        return Figures(parse_text(text), json.loads(body))


class Figures(object):
    def __init__(self, families, doc):
        self.families = families
        self.doc = doc

    def value(self, name, sample=None, **labels):
        fam = self.families.get(name)
        assert fam is not None, name
        return fam["samples"].get((sample or name, frozenset((k, str(v)) for k, v in labels.items())))

    def json_value(self, name, **labels):
        for s in self.doc["metrics"][name]["samples"]:
            if s["labels"] == labels:
                return s.get("value", s.get("count"))
        return None


def assert_only_the_metrics_socket_listens(slirp, port):
    pid = slirp.proc.pid
    tcp = sockets_of(pid, "-ltn")
    assert len(tcp) == 1 and " 127.0.0.1:%d " % port in tcp[0] + " ", tcp
    assert sockets_of(pid, "-lun") == []


def test_metrics_and_audit_move_with_real_traffic_through_pppd(lab, tmp_path):
    host = HostCheck()                          # needs ip and ss (iproute2); the baseline of 10.0.0.x
    metrics_port = services.free_port()
    audit = tmp_path / "audit.jsonl"
    with services.ServiceSet() as svc:
        echo = svc.add(services.EchoServer())
        source = svc.add(services.PayloadSource(seed=3, size=DOWNLOAD))
        slirp = lab.start_pyslirp({
            # No Deflate: the serial byte counts below are compared with the payload carried.
            "ppp": {"lcp_echo_interval": 1, "compression": "none"},
            "logging": {"audit_file": str(audit)},
            "monitoring": {"metrics_listen": "127.0.0.1:%d" % metrics_port},
            "services": {"7": {"host": "127.0.0.1", "port": echo.port, "name": "echo"},
                         "5002": {"host": "127.0.0.1", "port": source.port, "name": "source"}},
        }, debug=False)
        scraper = Scraper(metrics_port)
        deadline = time.monotonic() + 10
        before = scraper.scrape()
        while not before.value("pyslirp_serial_line_open") and time.monotonic() < deadline:
            time.sleep(0.2)             # the line opens just after the pty line is printed
            before = scraper.scrape()
        assert before.value("pyslirp_link_up") == 0 and before.value("pyslirp_serial_line_open") == 1
        client = write_script(lab, "traffic.py", GUEST_CLIENT)
        guest = lab.boot_guest("""
            pppd_start pppd noauth
            wait_ppp_up 30 pppd || exit 1
            mark up
            wait_host_mark scraped-up 60
            record traffic timeout 120 $PYTHON {client} {ip} 7 5002 {n} {size}
            mark traffic
            wait_host_mark scraped-traffic 60
            sleep 4
            mark idle
            wait_host_mark scraped-idle 60
            pppd_stop pppd 15
        """.format(client=shlex.quote(client), ip=LOCAL_IP, n=ECHO_CONNECTIONS, size=ECHO_BYTES),
            slirp=slirp, timeout=240)

        await_mark(guest, "up")
        up = scraper.scrape()
        assert up.value("pyslirp_link_up") == 1 and up.json_value("pyslirp_link_up") == 1
        assert up.value("pyslirp_link_sessions_total") == 1
        assert up.value("pyslirp_ppp_frames_total", direction="in") > 0
        assert up.value("pyslirp_tcp_connections_total", service="echo") is None
        assert_only_the_metrics_socket_listens(slirp, metrics_port)
        guest.mark("scraped-up")

        await_mark(guest, "traffic", 150)
        deadline = time.monotonic() + 10
        busy = scraper.scrape()
        while busy.value("pyslirp_tcp_connections_active", service="echo") and time.monotonic() < deadline:
            time.sleep(0.3)             # the last connection's final ACK may still be on its way
            busy = scraper.scrape()
        assert_only_the_metrics_socket_listens(slirp, metrics_port)
        assert [line for line in ppp_addresses() if line not in host.baseline] == []
        slirp.proc.send_signal(signal.SIGUSR1)
        guest.mark("scraped-traffic")

        await_mark(guest, "idle", 60)
        deadline = time.monotonic() + 10
        idle = scraper.scrape()
        while idle.value("pyslirp_lcp_echo_rtt_seconds") is None and time.monotonic() < deadline:
            time.sleep(0.5)
            idle = scraper.scrape()
        guest.mark("scraped-idle")
        res = guest.wait().check_ran()
        echoed, completed = echo.bytes_echoed, source.completed
        echo_accepted, source_accepted = echo.accepted, source.accepted
    after = scraper.scrape()
    assert slirp.stop() == 0, slirp.diagnostics()
    log = slirp.log()

    # What the guest saw.
    out = json_result(res, "traffic")
    assert res.rc("traffic") == 0 and out["errors"] == [], out
    assert out["echo"] == [True] * ECHO_CONNECTIONS
    assert out["download"] == {"bytes": DOWNLOAD, "sha256": hashlib.sha256(services.payload(3, DOWNLOAD)).hexdigest()}
    assert (echoed, completed, echo_accepted, source_accepted) == (ECHO_CONNECTIONS * ECHO_BYTES, 1,
                                                                   ECHO_CONNECTIONS, 1)

    # The figures moved with the traffic, and equal what the services counted.
    v = busy.value
    assert v("pyslirp_link_up") == 1
    assert v("pyslirp_tcp_connections_total", service="echo") == ECHO_CONNECTIONS
    assert v("pyslirp_tcp_connections_total", service="source") == 1
    assert v("pyslirp_service_bytes_total", service="echo", direction="in") == ECHO_CONNECTIONS * ECHO_BYTES
    assert v("pyslirp_service_bytes_total", service="echo", direction="out") == ECHO_CONNECTIONS * ECHO_BYTES
    assert v("pyslirp_service_bytes_total", service="source", direction="out") == DOWNLOAD
    assert v("pyslirp_service_connect_seconds", "pyslirp_service_connect_seconds_count",
             service="echo") == ECHO_CONNECTIONS
    assert v("pyslirp_service_connect_seconds", "pyslirp_service_connect_seconds_bucket",
             service="echo", le="+Inf") == ECHO_CONNECTIONS
    assert 0 <= v("pyslirp_service_connect_seconds", "pyslirp_service_connect_seconds_sum", service="echo") < 5
    assert v("pyslirp_service_connect_seconds", "pyslirp_service_connect_seconds_count", service="source") == 1
    assert v("pyslirp_tcp_connections_active", service="echo") == 0     # all closed (TIME-WAIT is not active)
    moved = ECHO_CONNECTIONS * ECHO_BYTES * 2 + DOWNLOAD
    serial = v("pyslirp_serial_bytes_total", direction="in") + v("pyslirp_serial_bytes_total", direction="out")
    assert serial > moved
    assert serial - (up.value("pyslirp_serial_bytes_total", direction="in") +
                     up.value("pyslirp_serial_bytes_total", direction="out")) > moved
    assert v("pyslirp_ip_packets_total", direction="in") > up.value("pyslirp_ip_packets_total", direction="in")
    assert v("pyslirp_ip_packets_total", direction="out") > DOWNLOAD // 1500
    assert v("pyslirp_line_drain_bytes_per_second") > 0
    assert v("pyslirp_connections_refused_total", reason="policy") is None
    assert busy.json_value("pyslirp_tcp_connections_total", service="echo") == ECHO_CONNECTIONS
    # An idle link gets an LCP echo round trip (pppd answers our Echo-Request).
    rtt = idle.value("pyslirp_lcp_echo_rtt_seconds")
    assert rtt is not None and 0 <= rtt < 1, rtt
    # After the client hung up: the link is down, the totals stay.
    assert after.value("pyslirp_link_up") == 0
    assert after.value("pyslirp_tcp_connections_total", service="echo") == ECHO_CONNECTIONS
    assert after.value("pyslirp_service_bytes_total", service="source", direction="out") == DOWNLOAD
    assert after.value("pyslirp_tcp_retransmissions_total") >= busy.value("pyslirp_tcp_retransmissions_total")

    # SIGUSR1 wrote the snapshot to the log, as one line.
    usr1 = [line for line in log.splitlines() if " metrics: " in line]
    assert len(usr1) == 1 and "tcp_connections_total{service=echo}=%d" % ECHO_CONNECTIONS in usr1[0], usr1

    # The audit file: the session, every flow with its bytes, nothing else.
    recs = [json.loads(line) for line in audit.read_text().splitlines()]
    kinds = [r["event"] for r in recs]
    assert kinds[0] == "link_up" and kinds[-1] == "link_down", kinds
    assert recs[0]["user"] == "" and recs[0]["remote_ip"] == "10.0.0.2"
    opens = [r for r in recs if r["event"] == "flow_open"]
    closes = [r for r in recs if r["event"] == "flow_close"]
    assert sorted(r["service"] for r in opens) == ["echo"] * ECHO_CONNECTIONS + ["source"]
    assert len(closes) == ECHO_CONNECTIONS + 1 and kinds.count("flow_refused") == 0
    for r in closes:
        assert r["protocol"] == "tcp" and r["client"].startswith("10.0.0.2:") and r["via"] == "direct"
        if r["service"] == "echo":
            assert (r["bytes_in"], r["bytes_out"], r["server"]) == (ECHO_BYTES, ECHO_BYTES, "10.0.0.1:7")
        else:
            assert (r["bytes_in"], r["bytes_out"], r["server"]) == (0, DOWNLOAD, "10.0.0.1:5002")
        assert r["reason"] == "fin" and r["duration"] >= 0
    # Once the link is down nothing moves: the JSON scrape has the text scrape's figures.
    for name, fam in after.doc["metrics"].items():
        for s in fam["samples"]:
            if fam["type"] == "histogram":
                assert after.value(name, name + "_count", **s["labels"]) == s["count"], name
            elif name != "pyslirp_line_drain_bytes_per_second":
                assert after.value(name, **s["labels"]) == float(s["value"]), name
