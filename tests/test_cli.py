"""The command line, run as a real subprocess: `python3 pyslirp.py ...`."""

import os
import shutil
import subprocess
import sys
import time

import pytest

import pyslirp
from pyslirp import compat, config

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SCRIPT = os.path.join(ROOT, "pyslirp.py")
# The interpreter that runs pyslirp.py (e.g. an old Python to check compatibility).
PYTHON = os.environ.get("PYSLIRP_TEST_PYTHON", sys.executable)
toml = compat.toml_module()


def run(*args, script=SCRIPT, flags=(), cwd=None, timeout=30, env=None):
    environ = dict(os.environ, **env) if env else None
    proc = subprocess.run([PYTHON] + list(flags) + [script] + list(args), stdin=subprocess.DEVNULL,
                          stdout=subprocess.PIPE, stderr=subprocess.PIPE, cwd=cwd, timeout=timeout, env=environ)
    return proc.returncode, proc.stdout.decode(), proc.stderr.decode()


def assert_one_line_error(code, out, err, expected_code=2):
    assert code == expected_code, err
    assert "Traceback" not in out + err
    assert out == ""
    lines = err.strip().splitlines()
    assert len(lines) == 1, err
    assert lines[0].startswith("pyslirp: ")
    return lines[0]


def test_version():
    code, out, err = run("--version")
    assert (code, out, err) == (0, "pyslirp %s\n" % pyslirp.__version__, "")


def test_script_is_executable_with_a_shebang():
    with open(SCRIPT) as f:
        assert f.readline() == "#!/usr/bin/env python3\n"
    assert os.access(SCRIPT, os.X_OK)


def test_help_mentions_every_option():
    code, out, _ = run("--help")
    assert code == 0
    for opt in ("--config", "--stdio", "--pty", "--pty-link", "--baudrate", "--flow-control", "--debug",
                "--quiet", "--log-file", "--pcap", "--service", "--socks-host", "--socks-port",
                "--check-config", "--version"):
        assert opt in out, opt


def test_check_config_prints_toml_that_reads_back_the_same(tmp_path):
    code, out, err = run("--check-config", "-c", os.path.join(ROOT, "pyslirp.toml"))
    assert code == 0, err
    path = tmp_path / "out.toml"
    path.write_text(out)
    assert config.load(str(path)) == config.load(os.path.join(ROOT, "pyslirp.toml")) == config.defaults()


def test_check_config_applies_options(tmp_path):
    cfg = tmp_path / "c.toml"
    cfg.write_text('[serial]\nport = "/dev/ttyS1"\nbaudrate = 9600\n[ppp]\nrequire_auth = "pap"\n'
                   'secrets = { alice = "hunter2" }\n')
    code, out, err = run("-c", str(cfg), "--check-config", "/dev/ttyUSB3", "--flow-control", "hardware",
                         "-d", "--service", "80=web:8080", "--socks-host", "127.0.0.1")
    assert code == 0, err
    assert "hunter2" not in out
    raw = toml.loads(out)
    assert raw["serial"] == {"port": "/dev/ttyUSB3", "baudrate": 9600, "flow_control": "hardware",
                             "pty_link": "", "answer": "auto", "lock": True, "lock_dir": "/var/lock"}
    assert raw["logging"]["level"] == "debug"
    assert raw["services"]["80"] == {"host": "web", "port": 8080, "name": "", "via": "direct", "fallback": []}
    assert raw["services"]["22"]["port"] == 22
    assert (raw["proxy"]["type"], raw["proxy"]["host"], raw["proxy"]["port"]) == ("socks5", "127.0.0.1", 1080)
    assert (raw["outbound"]["enabled"], raw["outbound"]["via"]) == (True, "proxy")   # --socks-host turns it on
    assert raw["ppp"]["secrets"] == {"alice": config.MASK}


def test_pty_link_option_is_absolute_and_implies_pty(tmp_path):
    code, out, err = run("--check-config", "--pty-link", "rel/link", cwd=str(tmp_path))
    assert code == 0, err
    raw = toml.loads(out)
    assert raw["serial"]["port"] == "pty"
    assert raw["serial"]["pty_link"] == os.path.join(str(tmp_path), "rel", "link")


def test_bad_config_is_one_line_exit_2(tmp_path):
    cfg = tmp_path / "bad.toml"
    cfg.write_text("[network]\nmtu = 70000\n")
    line = assert_one_line_error(*run("-c", str(cfg), "--pty"))
    assert line == "pyslirp: config error: network.mtu: must be an integer between 296 and 1500, got 70000"
    line = assert_one_line_error(*run("-c", str(cfg), "--check-config"))
    assert line.endswith("got 70000")


def test_bad_toml_and_missing_file(tmp_path):
    cfg = tmp_path / "bad.toml"
    cfg.write_text("[network\n")
    line = assert_one_line_error(*run("-c", str(cfg), "--check-config"))
    assert line.startswith("pyslirp: config error: %s: invalid TOML: " % cfg)
    line = assert_one_line_error(*run("-c", str(tmp_path / "missing.toml"), "--pty"))
    assert line == "pyslirp: config error: %s: cannot read: No such file or directory" % (tmp_path / "missing.toml")


def test_bad_option_values_are_config_errors():
    line = assert_one_line_error(*run("--baudrate", "-5", "--check-config"))
    assert line == "pyslirp: config error: serial.baudrate: must be an integer between 50 and 20000000, got -5"
    line = assert_one_line_error(*run("--service", "22=nowhere", "--check-config"))
    assert line.startswith("pyslirp: config error: --service: expected PORT=HOST:TPORT")


def test_no_port_is_exit_2():
    line = assert_one_line_error(*run())
    assert "--pty" in line and "--stdio" in line


@pytest.mark.parametrize("args", [
    ["--bogus"], ["--baudrate", "fast"], ["--flow-control", "maybe"], ["--pty", "--stdio"],
    ["--pty", "/dev/ttyS0"], ["--stdio", "--pty-link", "/tmp/x"], ["-d", "-q"], ["a", "b"]])
def test_usage_errors_exit_2(args):
    code, out, err = run(*args)
    assert code == 2
    assert out == ""
    assert "Traceback" not in err
    assert err.strip().splitlines()[-1].startswith("pyslirp: error: ")


def test_unwritable_log_file_and_capture(tmp_path):
    nowhere = str(tmp_path / "no" / "such" / "dir")
    line = assert_one_line_error(*run("--pty", "--log-file", nowhere + "/log"))
    assert line.startswith("pyslirp: config error: logging.file: cannot open ")
    line = assert_one_line_error(*run("--pty", "--pcap", nowhere + "/x.pcap"))
    assert line.startswith("pyslirp: cannot open capture file ")


def test_pty_link_refuses_to_replace_a_file(tmp_path):
    target = tmp_path / "precious"
    target.write_text("keep me")
    line = assert_one_line_error(*run("--pty-link", str(target)), expected_code=1)
    assert line.startswith("pyslirp: cannot create the pseudo-terminal link %s" % target)
    assert target.read_text() == "keep me"


def _plain_copy(tmp_path):
    dest = tmp_path / "copy"
    dest.mkdir()
    shutil.copy(SCRIPT, str(dest / "pyslirp.py"))
    shutil.copytree(os.path.join(ROOT, "pyslirp"), str(dest / "pyslirp"),
                    ignore=shutil.ignore_patterns("__pycache__"))
    return str(dest / "pyslirp.py")


def test_plain_copy_runs_with_the_standard_library_only(tmp_path):
    script = _plain_copy(tmp_path)
    code, out, err = run("--version", script=script, flags=["-I", "-S"], cwd=str(tmp_path))
    assert (code, out, err) == (0, "pyslirp %s\n" % pyslirp.__version__, "")
    code, out, err = run("--check-config", script=script, flags=["-I", "-S"], cwd=str(tmp_path))
    assert code == 0, err
    assert toml.loads(out)["services"]["22"]["name"] == "SSH"


def test_device_without_pyserial_is_a_clear_error(tmp_path):
    # -S: no site-packages, hence no pyserial.
    script = _plain_copy(tmp_path)
    line = assert_one_line_error(*run("/dev/ttyUSB0", script=script, flags=["-I", "-S"], cwd=str(tmp_path)))
    assert line == "pyslirp: " + compat.PYSERIAL_HINT


def test_bad_pyserial_url_is_exit_2():
    pytest.importorskip("serial")
    code, out, err = run("nosuchproto://x", timeout=30)
    assert code == 2
    assert "Traceback" not in err
    assert "invalid serial port setting for nosuchproto://x" in err


def test_plain_copy_serves_a_pty_with_the_standard_library_only(tmp_path):
    import select
    import signal
    script = _plain_copy(tmp_path)
    proc = subprocess.Popen([PYTHON, "-I", "-S", script, "--pty"], stdin=subprocess.DEVNULL,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, cwd=str(tmp_path))
    try:
        assert select.select([proc.stdout], [], [], 20)[0]
        line = proc.stdout.readline().decode()
        assert line.startswith("pty: /dev/pts/") and os.path.exists(line[5:].strip())
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=10) == 0
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        err = proc.stderr.read().decode()
        proc.stdout.close()
        proc.stderr.close()
    assert "Traceback" not in err


@pytest.mark.parametrize("text,key", [
    ('[proxy]\ntype = "socks5"\n', "proxy.host"),
    ('[proxy]\ntype = "http"\nhost = "127.0.0.1"\n', "proxy.port"),
    ('[outbound]\nallow = ["10.0.0.0/8:80-70000"]\n', "outbound.allow[0]"),
    ('[outbound]\ndeny = ["example.com"]\n', "outbound.deny[0]"),
    ('[dns]\nupstream = ["dns.example"]\n', "dns.upstream[0]"),
    ('[dns]\nupstream = ["192.0.2.1:99999"]\n', "dns.upstream[0]"),
    ('[outbound]\nvia = "proxy"\n', "outbound.via"),
    ('[services.80]\nhost = "web"\nvia = "proxy"\n', "services.80.via"),
    ('[udp_services.53]\nhost = "127.0.0.1"\nvia = "proxy"\n', "udp_services.53.via"),
])
def test_bad_outbound_configuration_is_one_line_and_exit_2(tmp_path, text, key):
    cfg = tmp_path / "bad.toml"
    cfg.write_text(text)
    code, out, err = run("-c", str(cfg), "--pty")
    assert code == 2 and out == ""
    lines = err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("pyslirp: config error: %s: " % key), err
    assert "Traceback" not in err


@pytest.mark.parametrize("args,problem", [
    (["--http-proxy", "localhost"], "--http-proxy"),
    (["--socks-port", "1080"], "--socks-port needs --socks-host"),
    (["--socks-host", "127.0.0.1", "--http-proxy", "127.0.0.1:8080"], "cannot be combined"),
])
def test_bad_proxy_options_are_one_line_and_exit_2(args, problem):
    code, out, err = run("--pty", *args)
    assert code == 2 and problem in err.strip().splitlines()[-1] and "Traceback" not in err


def test_proxy_password_comes_from_the_environment_and_is_masked(tmp_path):
    cfg = tmp_path / "c.toml"
    cfg.write_text('[proxy]\nusername = "alice"\n')
    code, out, err = run("-c", str(cfg), "--http-proxy", "127.0.0.1:3128", "--check-config",
                         env={"PYSLIRP_PROXY_PASSWORD": "s3cret-pw"})
    assert code == 0, err
    raw = toml.loads(out)
    assert raw["proxy"]["type"] == "http" and raw["proxy"]["password"] == config.MASK
    assert "s3cret-pw" not in out + err


def test_dns_forwarder_uses_the_configured_upstream_servers():
    from pyslirp import cli
    cfg = config.validate({"dns": {"forwarder": True, "upstream": ["127.0.0.1:5353", "192.0.2.1"]}})
    servers, factory = cli._dns(cfg)
    assert servers == [("127.0.0.1", 5353), ("192.0.2.1", 53)] and factory is not None
    stack = config.stack_config(cfg, dns_upstream=servers)
    assert stack.dns_forwarder and stack.dns_tcp_upstream == ("127.0.0.1", 5353)
    assert cli._dns(config.validate({})) == ([], None)


def test_unwritable_audit_file_and_a_metrics_address_in_use(tmp_path):
    import socket
    nowhere = str(tmp_path / "no" / "such" / "dir")
    conf = tmp_path / "c.toml"
    conf.write_text('[logging]\naudit_file = "%s/audit.jsonl"\n' % nowhere)
    line = assert_one_line_error(*run("--pty", "-c", str(conf)))
    assert line.startswith("pyslirp: config error: logging.audit_file: cannot open %s/audit.jsonl: " % nowhere)
    holder = socket.socket()
    holder.bind(("127.0.0.1", 0))
    holder.listen(1)
    try:
        port = holder.getsockname()[1]
        conf.write_text('[monitoring]\nmetrics_listen = "127.0.0.1:%d"\n' % port)
        line = assert_one_line_error(*run("--pty", "-c", str(conf)), expected_code=1)
        assert line == "pyslirp: cannot serve metrics on 127.0.0.1:%d: Address already in use" % port
    finally:
        holder.close()


def test_metrics_server_audit_log_and_signals_of_the_daemon(tmp_path):
    import json
    import select
    import signal
    import urllib.request
    from e2e.services import free_port
    port = free_port()
    audit = tmp_path / "audit.jsonl"
    conf = tmp_path / "c.toml"
    conf.write_text('[logging]\naudit_file = "%s"\n[monitoring]\nmetrics_listen = "localhost:%d"\n' % (audit, port))
    proc = subprocess.Popen([PYTHON, SCRIPT, "--pty", "-c", str(conf)], stdin=subprocess.DEVNULL,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    try:
        assert select.select([proc.stdout], [], [], 20)[0]
        assert proc.stdout.readline().decode().startswith("pty: /dev/pts/")
        with urllib.request.urlopen("http://127.0.0.1:%d/metrics" % port, timeout=10) as resp:
            text = resp.read().decode()
        assert "# TYPE pyslirp_link_up gauge\npyslirp_link_up 0\n" in text
        deadline = time.monotonic() + 10
        while True:         # the snapshot is rebuilt at most a few times a second: the line may open after it
            with urllib.request.urlopen("http://127.0.0.1:%d/metrics.json" % port, timeout=10) as resp:
                doc = json.loads(resp.read().decode())
            samples = doc["metrics"]["pyslirp_serial_line_open"]["samples"]
            if samples == [{"labels": {}, "value": 1}] or time.monotonic() > deadline:
                break
            time.sleep(0.2)
        assert samples == [{"labels": {}, "value": 1}]
        proc.send_signal(signal.SIGUSR1)
        proc.send_signal(signal.SIGHUP)
        deadline = time.monotonic() + 10
        while not (audit.exists() and "reload" in audit.read_text()):
            assert time.monotonic() < deadline
            time.sleep(0.1)
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=10) == 0
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        err = proc.stderr.read().decode()
        proc.stdout.close()
        proc.stderr.close()
    assert "Traceback" not in err
    assert "metrics on http://127.0.0.1:%d/metrics" % port in err
    (usr1,) = [line for line in err.splitlines() if " metrics: " in line]
    assert "serial_line_open=1" in usr1 and "link_up=0" in usr1
    (record,) = [json.loads(line) for line in audit.read_text().splitlines()]
    assert (record["event"], record["ok"]) == ("reload", True)
