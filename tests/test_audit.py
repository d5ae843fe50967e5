"""The audit log (JSON lines: fields, no secrets, rotation, reopen, write errors) and the connection log's lines.

The events come from the real protocol objects: a PPPLink authenticating a scripted client with PAP, an IPStack
carrying TCP, UDP and ping flows at explicit times.  What is written is read back and parsed line by line.
"""

import json
import logging
import os
import re

import pytest

from pyslirp.net.events import FlowLog, ServiceConnect
from pyslirp.net.flows import Service
from pyslirp.ppp.events import AuthResult, LinkDown, LinkUp
from pyslirp.runtime import audit as audit_mod
from pyslirp.runtime.audit import AuditLog, EventLog, rfc3339
from pyslirp.wire import tcp
from pyslirp.wire.icmp import IcmpRepr
from pyslirp.wire.ipv4 import PROTO_ICMP, ip_bytes

from test_link import Client as PppClient, make_link
from test_stack import Client, ip_packet, make_stack, udp_packet

SSH = Service(22, "127.0.0.1", 22, "SSH")
PASSWORD = "s3cret-PASSWORD"
PAYLOAD = b"SECRET-PAYLOAD"
TS = re.compile(r"^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z$")


def records(path):
    with open(path, "rb") as f:
        lines = f.read().decode("utf-8").splitlines()
    out = [json.loads(line) for line in lines]
    for rec in out:
        assert TS.match(rec["ts"]), rec
    return out


def test_rfc3339_timestamps_are_utc_with_milliseconds():
    assert rfc3339(0) == "1970-01-01T00:00:00.000Z"
    assert rfc3339(1714564800.1234) == "2024-05-01T12:00:00.123Z"
    assert rfc3339(1714564800.9996) == "2024-05-01T12:00:01.000Z"


def test_records_are_one_json_object_per_line(tmp_path):
    path = str(tmp_path / "audit.jsonl")
    log = AuditLog(path, clock=lambda: 1714564800.5)
    assert log.write("reload", ok=True, detail='a "quoted"\nline')
    log.write("auth", method="pap", user="\u00e9ve", ok=False)
    log.close()
    with open(path, "rb") as f:
        raw = f.read()
    assert raw.count(b"\n") == 2 and raw.endswith(b"\n")
    first, second = records(path)
    assert first == {"ts": "2024-05-01T12:00:00.500Z", "event": "reload", "ok": True, "detail": 'a "quoted"\nline'}
    assert list(first)[:2] == ["ts", "event"]
    assert second["user"] == "\u00e9ve" and second["ok"] is False
    # Appending: a new AuditLog on the same file keeps what was there.
    log = AuditLog(path)
    log.write("reload", ok=True, detail="again")
    log.close()
    assert [r["detail"] for r in records(path) if r["event"] == "reload"] == ['a "quoted"\nline', "again"]


def test_rotation_keeps_rotate_count_files_of_at_most_max_size(tmp_path):
    path = str(tmp_path / "audit.jsonl")
    log = AuditLog(path, max_size=1000, rotate_count=2)
    for i in range(100):
        log.write("reload", ok=True, detail="record %03d" % i)
    log.close()
    names = sorted(os.listdir(str(tmp_path)))
    assert names == ["audit.jsonl", "audit.jsonl.1", "audit.jsonl.2"]
    for name in names:
        assert 0 < os.path.getsize(str(tmp_path / name)) <= 1000
    newest = [r["detail"] for r in records(path)]
    older = [r["detail"] for r in records(path + ".1")]
    oldest = [r["detail"] for r in records(path + ".2")]
    assert newest[-1] == "record 099"
    # The files are contiguous: .2 then .1 then the current file.
    numbers = [int(d.split()[1]) for d in oldest + older + newest]
    assert numbers == list(range(numbers[0], 100))
    assert log.written == 100 and log.lost == 0


def test_rotation_without_old_files_starts_the_file_again(tmp_path):
    path = str(tmp_path / "audit.jsonl")
    log = AuditLog(path, max_size=500, rotate_count=0)
    for i in range(50):
        log.write("reload", ok=True, detail="record %03d" % i)
    log.close()
    assert os.listdir(str(tmp_path)) == ["audit.jsonl"]
    assert os.path.getsize(path) <= 500 and records(path)[-1]["detail"] == "record 049"


def test_reopen_after_an_external_rotation(tmp_path):
    path = str(tmp_path / "audit.jsonl")
    log = AuditLog(path)
    log.write("reload", ok=True, detail="before")
    os.rename(path, path + ".old")              # logrotate moves the file ...
    log.write("reload", ok=True, detail="still the old file")
    log.reopen()                                # ... and SIGHUP makes us open a new one
    log.write("reload", ok=True, detail="after")
    log.close()
    assert [r["detail"] for r in records(path + ".old")] == ["before", "still the old file"]
    assert [r["detail"] for r in records(path)] == ["after"]


def test_a_failing_write_is_counted_and_logged_not_raised(caplog):
    log = AuditLog("/dev/full")
    with caplog.at_level(logging.ERROR, logger="pyslirp.runtime.audit"):
        for _ in range(5):
            assert not log.write("reload", ok=True, detail="x" * 100)
    assert log.lost == 5 and log.written == 0
    lines = [r.getMessage() for r in caplog.records]
    assert len(lines) == 3 and "records lost" in lines[0]       # the 1st, 2nd and 4th failure
    log.close()


def test_an_unopenable_file_is_an_oserror_at_start(tmp_path):
    with pytest.raises(OSError):
        AuditLog(str(tmp_path / "no-such-dir" / "audit.jsonl"))


# -- events from the real protocol objects ------------------------------------------------------------------

def pap_session_events(user, password, ok=True):
    link = make_link(require_auth="pap", secrets=(("alice", PASSWORD),))
    link.lower_up(0)
    client = PppClient(link, user=user, password=password, auth_with="pap")
    client.start()
    if ok:
        client.send_cp(0xC021, 5, 0x77)            # LCP Terminate-Request: the client hangs up
    return client.events


def test_link_and_auth_records_name_the_user_and_never_the_password(tmp_path):
    path = str(tmp_path / "audit.jsonl")
    log = EventLog(AuditLog(path))
    events = pap_session_events("alice", PASSWORD) + pap_session_events("mallory", "guess" + PASSWORD, ok=False)
    assert [type(e) for e in events] == [AuthResult, LinkUp, LinkDown, AuthResult, LinkDown]
    for e in events:
        {AuthResult: log.auth, LinkUp: log.link_up, LinkDown: log.link_down}[type(e)](e)
    log.audit.close()
    got = records(path)
    assert [r["event"] for r in got] == ["auth", "link_up", "link_down", "auth", "link_down"]
    assert got[0] == dict(got[0], method="pap", user="alice", ok=True)
    assert got[1] == dict(got[1], user="alice", local_ip="10.0.0.1", remote_ip="10.0.0.2", mtu=1500)
    assert got[2]["user"] == "alice" and got[2]["reason"] and got[2]["administrative"] is True
    assert got[3] == dict(got[3], method="pap", user="mallory", ok=False)
    assert got[4] == dict(got[4], user="", reason="authentication failed")      # nobody was logged in
    with open(path, "rb") as f:
        raw = f.read()
    assert PASSWORD.encode() not in raw and b"guess" not in raw


def flow_events():
    """A TCP connection (payload both ways, then closed), a refusal, a UDP flow, a ping flow: the FlowLogs."""
    stack = make_stack(services=(SSH,), udp_services=(Service(7, "127.0.0.1", 7007, "echo"),), udp_timeout=60)
    out = []

    def take():
        out.extend(e for e in stack.take_events() if isinstance(e, FlowLog))

    client = Client(stack, port=40001)
    client.syn(now=1000)
    (connect,) = [e for e in stack.take_events() if isinstance(e, ServiceConnect)]
    stack.service_connected(connect.conn_id, 1020)
    client.receive()
    client.send(tcp.ACK, now=1030)
    client.send(tcp.ACK | tcp.PSH, payload=PAYLOAD, now=1040)
    stack.service_data(connect.conn_id, PAYLOAD[::-1] * 2, 1050)
    client.receive()
    client.send(tcp.ACK, now=1060)
    client.send(tcp.RST, now=3500)
    take()
    Client(stack, port=40002, dst=23).syn(4000)                 # no service on port 23
    take()
    stack.receive_packet(udp_packet(5000, 7, PAYLOAD), 5000)
    take()
    stack.receive_packet(ip_packet(PROTO_ICMP, IcmpRepr.echo(0x99, 1, PAYLOAD).emit(), dst=ip_bytes("192.0.2.9")),
                         5100)                                   # outbound is off: refused
    take()
    stack.handle_timer(5000 + 60000)
    take()
    return out


def test_flow_records_have_the_fields_and_no_payload(tmp_path):
    path = str(tmp_path / "audit.jsonl")
    log = EventLog(AuditLog(path))
    for event in flow_events():
        log.flow(event, 0)
    log.audit.close()
    got = records(path)
    assert [(r["event"], r["protocol"]) for r in got] == [
        ("flow_open", "tcp"), ("flow_close", "tcp"), ("flow_refused", "tcp"), ("flow_open", "udp"),
        ("flow_refused", "icmp"), ("flow_close", "udp")]
    tcp_open, tcp_close, refused, udp_open, ping_refused, udp_close = got
    route = {"route": "service", "service": "SSH", "target": "127.0.0.1:22", "via": "direct"}
    assert tcp_open == dict(route, ts=tcp_open["ts"], event="flow_open", protocol="tcp", client="10.0.0.2:40001",
                            server="10.0.0.1:22")
    assert tcp_close == dict(tcp_open, ts=tcp_close["ts"], event="flow_close", bytes_in=len(PAYLOAD),
                             bytes_out=2 * len(PAYLOAD), duration=2.5, reason="reset")
    assert refused == {"ts": refused["ts"], "event": "flow_refused", "protocol": "tcp", "client": "10.0.0.2:40002",
                       "server": "10.0.0.1:23", "reason": "no service on port 23", "cause": "policy"}
    assert udp_open["route"] == "udp_service" and udp_open["service"] == "echo" and udp_open["server"] == "10.0.0.1:7"
    assert ping_refused == dict(ping_refused, client="10.0.0.2", server="192.0.2.9", ident=0x99, cause="policy",
                                reason="outbound is disabled")
    assert udp_close == dict(udp_open, ts=udp_close["ts"], event="flow_close", bytes_in=len(PAYLOAD), bytes_out=0,
                             duration=60.0, reason="idle")
    with open(path, "rb") as f:
        raw = f.read()
    assert PAYLOAD not in raw and PAYLOAD[::-1] not in raw


def test_connect_failures_are_refusals_with_the_route_and_who_refused(tmp_path):
    path = str(tmp_path / "audit.jsonl")
    log = EventLog(AuditLog(path))
    stack = make_stack(services=(SSH, Service(2222, "192.0.2.5", 22, "far", via="socks5")))
    Client(stack, port=40001).syn(0)
    Client(stack, port=40002, dst=2222).syn(0)
    direct, proxied = [e for e in stack.take_events() if isinstance(e, ServiceConnect)]
    stack.service_failed(direct.conn_id, "direct: connection refused", 3)
    stack.service_failed(proxied.conn_id, "socks5 127.0.0.1:1080: host unreachable", 4, "host_unreachable")
    flow_logs(stack, log, now=4)
    log.audit.close()
    down, proxy = records(path)
    assert down == dict(down, event="flow_refused", cause="service_down", reason="direct: connection refused",
                        service="SSH", target="127.0.0.1:22", via="direct", client="10.0.0.2:40001")
    assert proxy == dict(proxy, event="flow_refused", cause="proxy", service="far", target="192.0.2.5:22",
                         via="socks5", reason="socks5 127.0.0.1:1080: host unreachable")


def flow_logs(stack, log, now=0):
    events = [e for e in stack.take_events() if isinstance(e, FlowLog)]
    for e in events:
        log.flow(e, now)
    return events


def test_limit_records(tmp_path):
    path = str(tmp_path / "audit.jsonl")
    log = EventLog(AuditLog(path))
    stack = make_stack(services=(SSH,), max_connections=4, max_per_service=1)
    Client(stack, port=40001).syn(0)
    Client(stack, port=40002).syn(0)
    flow_logs(stack, log)
    log.audit.close()
    refused, limit = records(path)
    assert (refused["event"], refused["cause"], refused["reason"]) == ("flow_refused", "limit",
                                                                        "max_per_service (1) reached for SSH")
    assert limit == {"ts": limit["ts"], "event": "limit", "limit": "max_per_service", "cause": "limit",
                     "protocol": "tcp", "client": "10.0.0.2:40002", "server": "10.0.0.1:22"}


def test_limits_that_turn_syn_cookies_on_are_recorded_once_per_period(tmp_path):
    path = str(tmp_path / "audit.jsonl")
    log = EventLog(AuditLog(path))
    stack = make_stack(services=(SSH,), max_half_open=1, new_connections_per_second=2, burst=2)
    Client(stack, port=40001).syn(0)                            # stateful: its service never answers
    for i in range(50):
        Client(stack, port=40100 + i).syn(i)                    # the half-open table is full: SYN cookies
    flow_logs(stack, log, now=50)
    stack.service_connected(1, 60)                              # room again; but SYNs still come too fast
    # The flood is long over; the services answer at once; SYNs come faster than 2 a second: cookies again.
    for i in range(10):
        Client(stack, port=40300 + i).syn(10000 + i)
        events = stack.take_events()
        for e in events:
            if isinstance(e, ServiceConnect):
                stack.service_connected(e.conn_id, 10000 + i)
            elif isinstance(e, FlowLog):
                log.flow(e, 10000 + i)
    log.audit.close()
    full, rate = [r for r in records(path) if r["event"] == "limit"]
    assert full == {"ts": full["ts"], "event": "limit", "limit": "max_half_open", "cause": "limit",
                    "action": "syn_cookies", "reason": "max_half_open (1) reached", "protocol": "tcp",
                    "client": "10.0.0.2:40100", "server": "10.0.0.1:22"}
    assert (rate["limit"], rate["cause"], rate["action"]) == ("new_connections_per_second", "rate", "syn_cookies")
    assert not [r for r in records(path) if r["event"] == "flow_refused"]


def test_a_refusal_flood_is_written_at_a_bounded_rate_and_counted(tmp_path):
    path = str(tmp_path / "audit.jsonl")
    log = EventLog(AuditLog(path))
    stack = make_stack(services=(SSH,))
    for i in range(500):
        Client(stack, port=20000 + i, dst=23).syn(0)
    flow_logs(stack, log, now=0)
    written = len(records(path))
    assert written == audit_mod.AUDIT_REFUSAL_BURST and log.suppressed == 500 - written
    Client(stack, port=30000, dst=23).syn(1000)
    flow_logs(stack, log, now=1000)                              # a second later there is room again
    log.audit.close()
    last = records(path)[-1]
    assert last["client"] == "10.0.0.2:30000" and last["suppressed"] == 500 - written
    assert log.counts() == {"written": written + 1, "suppressed": 500 - written, "lost": 0}


def test_connection_log_lines_and_levels(caplog):
    events = flow_events()
    with caplog.at_level(logging.DEBUG, logger="pyslirp"):
        quiet = EventLog(connection_log=False)
        loud = EventLog()
        for e in events:
            loud.flow(e, 0)
        for e in events[:2]:
            quiet.flow(e, 0)
    lines = [(r.levelno, r.getMessage()) for r in caplog.records if r.name == "pyslirp.runtime.flows"]
    assert lines == [
        (logging.INFO, "opened 10.0.0.2:40001 -> SSH 127.0.0.1:22"),
        (logging.INFO, "closed 10.0.0.2:40001 -> SSH 127.0.0.1:22 in=14 out=28 duration=2.5s reason=reset"),
        (logging.INFO, "refused tcp 10.0.0.2:40002 -> 10.0.0.1:23: no service on port 23"),
        (logging.DEBUG, "opened udp 10.0.0.2:5000 -> 10.0.0.1:7 (echo 127.0.0.1:7007)"),
        (logging.INFO, "refused icmp 10.0.0.2:153 -> 192.0.2.9:0: outbound is disabled"),
        (logging.DEBUG, "closed udp 10.0.0.2:5000 -> 10.0.0.1:7: idle in=14 out=0"),
        (logging.DEBUG, "opened 10.0.0.2:40001 -> SSH 127.0.0.1:22"),
        (logging.DEBUG, "closed 10.0.0.2:40001 -> SSH 127.0.0.1:22 in=14 out=28 duration=2.5s reason=reset"),
    ]


def test_refusal_lines_are_rate_limited(caplog):
    stack = make_stack(services=(SSH,))
    log = EventLog()
    with caplog.at_level(logging.INFO, logger="pyslirp"):
        for i in range(20):
            Client(stack, port=20000 + i, dst=23).syn(0)
        flow_logs(stack, log, now=0)
        Client(stack, port=30000, dst=23).syn(2000)
        flow_logs(stack, log, now=2000)
    lines = [r.getMessage() for r in caplog.records if r.name == "pyslirp.runtime.flows"]
    assert len(lines) == audit_mod.REFUSAL_LOG_BURST + 1 and lines[-1].startswith("refused tcp 10.0.0.2:30000 ")


def test_a_client_that_leaves_while_waiting_for_a_token_is_a_rate_limit_record(tmp_path):
    from test_flood import Client as TcpClient, Wire, fill_half_open, make_stack as flood_stack
    path = str(tmp_path / "audit.jsonl")
    log = EventLog(AuditLog(path))
    stack = flood_stack(new_connections_per_second=1, burst=1, max_half_open=1)
    wire = Wire(stack)
    fill_half_open(stack, 1)                                    # the only token
    client = TcpClient(stack, wire, 40080)
    client.handshake(5)                                         # a cookie; completed, it waits for a token
    client.send(tcp.RST, now=6)
    flow_logs(stack, log, now=6)
    log.audit.close()
    refused, limit = [r for r in records(path) if r["event"] in ("flow_refused", "limit") and "action" not in r]
    assert (refused["cause"], refused["client"]) == ("rate", "10.0.0.2:40080")
    assert (limit["limit"], limit["cause"]) == ("new_connections_per_second", "rate")
