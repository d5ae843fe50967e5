"""load_test against loopback echo servers (a good one and broken ones): the report's counts, latencies, errors
and peak memory.  tests/test_e2e_load.py runs it through pyslirp and the real pppd."""

import json
import os
import subprocess
import sys

from e2e import services
from pyslirp.testing.load import concurrent_echo, echo_payload, load_test, peak_rss_kb, percentile

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def test_percentile_nearest_rank():
    values = list(range(1, 101))
    assert percentile(values, 50) == 50 and percentile(values, 99) == 99 and percentile(values, 100) == 100
    assert percentile([], 50) == 0.0 and percentile([7], 90) == 7


def test_twenty_flows_against_an_echo_server():
    with services.EchoServer() as echo:
        report = load_test(20, 1.0, ("127.0.0.1", echo.port), message_size=100, pid=os.getpid())
        assert echo.accepted == 20
    assert report.connected == 20 and report.errors == {}, report
    assert report.exchanges > 20
    assert report.bytes_sent == report.bytes_received == report.exchanges * 100
    lat = report.latency_ms
    assert 0 < lat["p50"] <= lat["p90"] <= lat["p99"] <= lat["max"]
    assert report.throughput > 0 and 1.0 <= report.duration < 3.0
    assert report.peak_rss_kb == peak_rss_kb(os.getpid()) or report.peak_rss_kb > 1000


class Corrupter(services.EchoServer):
    """Echoes, but flips one byte of every reply."""

    def handle(self, conn):
        data = conn.recv(65536)
        conn.sendall(bytes([data[0] ^ 1]) + data[1:])


def test_wrong_bytes_and_refusals_are_counted_by_kind():
    with Corrupter() as bad:
        report = load_test(3, 0.5, ("127.0.0.1", bad.port))
    assert report.errors == {"wrong_bytes": 3} and report.exchanges == 0
    report = load_test(2, 0.2, ("127.0.0.1", services.closed_port()))
    assert report.errors == {"connect_refused": 2} and report.connected == 0


def test_command_line_prints_a_json_report():
    with services.EchoServer() as echo:
        res = subprocess.run([sys.executable, os.path.join(ROOT, "pyslirp", "testing", "load.py"),
                              "127.0.0.1:%d" % echo.port, "--connections", "4", "--duration", "0.5"],
                             stdout=subprocess.PIPE, stderr=subprocess.PIPE, timeout=60)
    assert res.returncode == 0, res.stderr
    report = json.loads(res.stdout.decode())
    assert report["connected"] == 4 and report["errors"] == {} and report["exchanges"] > 4
    assert b"load: 4/4 connections" in res.stderr


def test_concurrent_echo_holds_every_connection_open_at_once():
    with services.EchoServer(backlog=256) as echo:
        report = concurrent_echo(200, ("127.0.0.1", echo.port), payload_size=3000)
        assert echo.accepted == 200 and echo.max_open == 200
        assert echo.bytes_echoed == 200 * 3000
    assert report.ok and report.echoed == report.connected == 200 and report.errors == {}, report
    assert report.seconds > 0 and "200/200 echoed intact" in str(report)


def test_echo_payloads_differ_per_connection_and_repeat_per_seed():
    a, b = echo_payload(1, 100), echo_payload(2, 100)
    assert len(a) == len(b) == 100 and a != b and a[:4] == b"\0\0\0\x01"
    assert echo_payload(1, 100) == a and echo_payload(1, 100, seed=5) != a
    assert len(echo_payload(3, 0)) == 4


def test_concurrent_echo_counts_wrong_bytes_refusals_and_silence():
    with Corrupter() as bad:
        report = concurrent_echo(5, ("127.0.0.1", bad.port), payload_size=50)
    assert report.errors == {"wrong_bytes": 5} and report.echoed == 0 and not report.ok
    report = concurrent_echo(3, ("127.0.0.1", services.closed_port()))
    assert report.errors == {"connect_ECONNREFUSED": 3} and report.connected == 0
    with Silent() as quiet:
        report = concurrent_echo(2, ("127.0.0.1", quiet.port), timeout=0.5)
    assert report.errors == {"timeout": 2} and report.connected == 2 and report.seconds >= 0.5


class Silent(services.EchoServer):
    """Accepts and reads, never answers."""

    def handle(self, conn):
        while conn.recv(65536):
            pass
