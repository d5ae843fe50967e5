"""Configuration: defaults, the example file, validation messages, overrides, sizes, TOML output."""

import dataclasses
import os
import re
import sys

import pytest

from pyslirp import compat, config
from pyslirp.config import ConfigError
from pyslirp.net.flows import Service

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
EXAMPLE = os.path.join(ROOT, "pyslirp.toml")
toml = compat.toml_module()


def load_text(tmp_path, text, **kw):
    path = tmp_path / "c.toml"
    path.write_text(text)
    return config.load(str(path), **kw)


def error_of(tmp_path, text, **kw):
    with pytest.raises(ConfigError) as info:
        load_text(tmp_path, text, **kw)
    return str(info.value)


# -- the example file -------------------------------------------------------------

def test_example_file_equals_builtin_defaults():
    assert config.load(EXAMPLE) == config.defaults()
    assert config.load(None) == config.defaults()


def test_example_file_lists_every_key():
    with open(EXAMPLE, "rb") as f:
        raw = toml.load(f)
    for name, cls, schema in config.SECTIONS:
        fields = set(f.name for f in dataclasses.fields(cls))
        assert set(raw[name]) == set(schema) <= fields, name
        if cls is not config.TcpConfig:          # [tcp] is the TCP tunables' value: most of its fields are internal
            assert set(schema) == fields, name
    assert raw["services"] == {"22": {"host": "127.0.0.1", "port": 22, "name": "SSH", "via": "direct",
                                      "fallback": []}}
    assert raw["udp_services"] == {}
    assert set(raw) == set(config.SECTION_NAMES)


def test_example_file_comments_every_key():
    with open(EXAMPLE) as f:
        lines = f.read().splitlines()
    commented = False
    for line in lines:
        if not line.strip() or line.startswith("["):
            commented = False
        elif line.startswith("#"):
            commented = True
        elif re.match(r"^\w+ = ", line):
            assert commented, "no comment for: %s" % line


def test_example_file_changes_are_noticed(tmp_path):
    # The comparison above is meaningful: one changed value makes the config differ.
    with open(EXAMPLE) as f:
        text = f.read().replace("mtu = 1500", "mtu = 1400")
    assert load_text(tmp_path, text) != config.defaults()
    assert load_text(tmp_path, text).network.mtu == 1400


# -- validation: one line naming the key and the problem ------------------------

@pytest.mark.parametrize("text, message", [
    ("[network]\nmtu = 70000\n", "network.mtu: must be an integer between 296 and 1500, got 70000"),
    ("[network]\nmtu = 295\n", "network.mtu: must be an integer between 296 and 1500, got 295"),
    ("[network]\nmtu = \"1500\"\n", 'network.mtu: must be an integer between 296 and 1500, got "1500"'),
    ("[network]\nmtu = true\n", "network.mtu: must be an integer between 296 and 1500, got true"),
    ("[network]\nmtu = 1500.0\n", "network.mtu: must be an integer between 296 and 1500, got 1500.0"),
    ("[serial]\nbaudrate = 0\n", "serial.baudrate: must be an integer between 50 and 20000000, got 0"),
    ("[serial]\nflow_control = \"rts\"\n",
     'serial.flow_control: must be one of "none", "hardware", "software", got "rts"'),
    ("[serial]\nport = 5\n", "serial.port: must be a string, got 5"),
    ("[serial]\nlock = \"yes\"\n", 'serial.lock: must be true or false, got "yes"'),
    ("[serial]\nlock_dir = \"var/lock\"\n", 'serial.lock_dir: must be an absolute path, got "var/lock"'),
    ("[serial]\nbaud = 9600\n", 'serial.baud: unknown key (did you mean "baudrate"?)'),
    ("[serial]\nzzz = 1\n", "serial.zzz: unknown key"),
    ("[serail]\nport = \"x\"\n", "unknown section [serail] (did you mean [serial]?)"),
    ("serial = 3\n", "serial: must be a table [serial], got 3"),
    ("[network]\nlocal_ip = \"10.0.0.256\"\n",
     'network.local_ip: must be an IPv4 address like "10.0.0.1", got "10.0.0.256"'),
    ("[network]\nremote_ip = \"::1\"\n",
     'network.remote_ip: must be an IPv4 address like "10.0.0.1", got "::1"'),
    ("[network]\nremote_ip = \"224.0.0.1\"\n",
     'network.remote_ip: must be a unicast IPv4 address, got "224.0.0.1"'),
    ("[network]\nremote_ip = \"10.0.0.1\"\n",
     'network.remote_ip: must differ from network.local_ip (both are "10.0.0.1")'),
    ("[network]\ndns = \"8.8.8.8\"\n",
     'network.dns: must be an array of IPv4 addresses like ["192.168.1.1"], got "8.8.8.8"'),
    ("[network]\ndns = [\"1.1.1.1\", \"x\"]\n",
     'network.dns[1]: must be an IPv4 address like "10.0.0.1", got "x"'),
    ("[network]\ndns = [\"1.1.1.1\", \"1.0.0.1\", \"8.8.8.8\"]\n",
     "network.dns: at most 2 servers (IPCP offers a primary and a secondary), got 3"),
    ("[ppp]\nlcp_echo_failure = 0\n", "ppp.lcp_echo_failure: must be an integer between 1 and 100, got 0"),
    ("[ppp]\nrestart_interval = 0\n", "ppp.restart_interval: must be an integer between 1 and 60, got 0"),
    ("[ppp]\nlcp_echo_interval = -1\n", "ppp.lcp_echo_interval: must be an integer between 0 and 3600, got -1"),
    ("[ppp]\nnegotiate_magic = 1\n", "ppp.negotiate_magic: must be true or false, got 1"),
    ("[ppp]\nrequire_auth = \"mschap\"\n",
     'ppp.require_auth: must be one of "none", "pap", "chap", got "mschap"'),
    ("[ppp]\nrequire_auth = \"pap\"\n", 'ppp.secrets: require_auth = "pap" needs at least one user = "password"'),
    ("[ppp]\nsecrets = [\"a\"]\n", 'ppp.secrets: must be a table of user = "password", got an array'),
    ("[ppp.secrets]\nalice = 5\n", "ppp.secrets.alice: the password must be a string"),
    ("[ppp]\ncompression = \"bsd\"\n", 'ppp.compression: must be one of "deflate", "none", got "bsd"'),
    ("[ppp]\nvj = \"yes\"\n", 'ppp.vj: must be true or false, got "yes"'),
    ("[serial]\nanswer = \"modem\"\n", 'serial.answer: must be one of "auto", "none", got "modem"'),
    ("[services.0]\nhost = \"x\"\n", "services.0: the table name must be a port number between 1 and 65535"),
    ("[services.ssh]\nport = 22\n", "services.ssh: the table name must be a port number between 1 and 65535"),
    ("[services.22]\nport = 70000\n", "services.22.port: must be an integer between 1 and 65535, got 70000"),
    ("[services.22]\nhots = \"x\"\n", 'services.22.hots: unknown key (did you mean "host"?)'),
    ("[services.22]\nhost = \"\"\n", "services.22.host: must not be empty"),
    ("[services]\n22 = 5\n", "services.22: must be a table with host, port and name, got 5"),
    ("[tcp]\nmss = 2000\n", "tcp.mss: must be an integer between 0 and 1460, got 2000"),
    ("[tcp]\nmss = 50\n", "tcp.mss: must be 0 (auto) or between 88 and network.mtu - 40 (1460), got 50"),
    ("[network]\nmtu = 576\n[tcp]\nmss = 1460\n",
     "tcp.mss: must be 0 (auto) or between 88 and network.mtu - 40 (536), got 1460"),
    ("[limits]\nmax_per_service = 65\n", "limits.max_per_service: must not exceed limits.max_connections (64), got 65"),
    ("[tcp]\nmax_per_service = 65\n", "limits.max_per_service: must not exceed limits.max_connections (64), got 65"),
    ("[limits]\nnew_connections_per_second = 0\n",
     "limits.new_connections_per_second: must be an integer between 1 and 10000, got 0"),
    ("[limits]\nburst = 2.5\n", "limits.burst: must be an integer between 1 and 10000, got 2.5"),
    ("[limits]\nmax_half_open = 0\n", "limits.max_half_open: must be an integer between 1 and 4096, got 0"),
    ("[tcp]\nidle_timeout = -5\n", "tcp.idle_timeout: must be an integer >= 0, got -5"),
    ("[proxy]\ntype = \"socks5\"\n", 'proxy.host: must be set when proxy.type is "socks5"'),
    ("[proxy]\ntype = \"http\"\nhost = \"p\"\n", 'proxy.port: must be between 1 and 65535 when proxy.type is "http"'),
    ("[logging]\nlevel = \"verbose\"\n",
     'logging.level: must be one of "debug", "info", "warning", "error", got "verbose"'),
    ("[logging]\nmax_size = \"10XB\"\n",
     'logging.max_size: must be a size like "10MB" (units B, KB, MB, GB; 0 = no rotation), got "10XB"'),
    ("[logging]\nmax_size = -1\n",
     'logging.max_size: must be a size like "10MB" (units B, KB, MB, GB; 0 = no rotation), got -1'),
    ("[monitoring]\nmetrics_listen = \"0.0.0.0:9100\"\n",
     'monitoring.metrics_listen: "0.0.0.0:9100" is not a loopback address; set monitoring.metrics_allow_remote = '
     'true to serve metrics to other hosts'),
    ("[monitoring]\nmetrics_listen = \"9100\"\n",
     'monitoring.metrics_listen: must be "" or ADDRESS:PORT like "127.0.0.1:9090", "localhost:9090" or '
     '"[::1]:9090", got "9100"'),
    ("[monitoring]\nmetrics_listen = \"example.org:9100\"\n",
     'monitoring.metrics_listen: must be "" or ADDRESS:PORT like "127.0.0.1:9090", "localhost:9090" or '
     '"[::1]:9090", got "example.org:9100"'),
    ("[monitoring]\nmetrics_listen = \"127.0.0.1:0\"\n",
     'monitoring.metrics_listen: must be "" or ADDRESS:PORT like "127.0.0.1:9090", "localhost:9090" or '
     '"[::1]:9090", got "127.0.0.1:0"'),
    ("[monitoring]\nmetrics_allow_remote = 1\n",
     "monitoring.metrics_allow_remote: must be true or false, got 1"),
    ("[logging]\nfile = \"/tmp/p.log\"\naudit_file = \"/tmp/p.log\"\n",
     'logging.audit_file: must not be the log file (both are "/tmp/p.log")'),
    ("[monitoring]\nstats_interval = 1.5\n", "monitoring.stats_interval: must be an integer >= 0, got 1.5"),
    ("[serial]\nport = \"/dev/ttyS0\"\npty_link = \"/tmp/x\"\n",
     'serial.pty_link: only makes sense with port = "pty" (got port = "/dev/ttyS0")'),
])
def test_validation_messages(tmp_path, text, message):
    got = error_of(tmp_path, text)
    assert got == message
    assert "\n" not in got


def test_passwords_never_appear_in_messages(tmp_path):
    got = error_of(tmp_path, '[proxy]\npassword = ["hunter2"]\n')
    assert got == "proxy.password: must be a string"
    got = error_of(tmp_path, '[ppp.secrets]\nalice = ["hunter2"]\n')
    assert "hunter2" not in got


def test_file_errors(tmp_path):
    missing = str(tmp_path / "nope.toml")
    with pytest.raises(ConfigError) as info:
        config.load(missing)
    assert str(info.value) == "%s: cannot read: No such file or directory" % missing
    got = error_of(tmp_path, "[serial\nport = 1\n")
    assert got.startswith(str(tmp_path / "c.toml") + ": invalid TOML: ") and "\n" not in got
    (tmp_path / "c.toml").write_bytes(b"[serial]\nport = \"\xff\"\n")
    with pytest.raises(ConfigError) as info:
        config.load(str(tmp_path / "c.toml"))
    assert str(info.value).endswith(": not valid UTF-8")


def test_without_tomllib_and_tomli_the_subset_reader_reads_the_file(tmp_path, monkeypatch):
    reference = config.load(os.path.join(ROOT, "pyslirp.toml"))
    monkeypatch.setitem(sys.modules, "tomllib", None)     # import tomllib / tomli: ImportError
    monkeypatch.setitem(sys.modules, "tomli", None)
    from pyslirp import tomlsubset
    assert compat.toml_module() is tomlsubset
    assert config.load(os.path.join(ROOT, "pyslirp.toml")) == reference
    got = error_of(tmp_path, "[serial\nport = 1\n")
    assert got == "%s: invalid TOML: expected ']' at the end of the table header (at line 1, column 8)" % (
        tmp_path / "c.toml")


# -- accepted values ---------------------------------------------------------------

def test_values_are_read(tmp_path):
    cfg = load_text(tmp_path, """
[serial]
port = "/dev/ttyUSB0"
baudrate = 9600
flow_control = "HARDWARE"
[network]
local_ip = "192.168.7.1"
remote_ip = "192.168.7.2"
mtu = 296
dns = ["192.168.1.1", "9.9.9.9"]
[ppp]
require_auth = "chap"
secrets = { alice = "pw1", "bob smith" = "pw2" }
[logging]
max_size = "512 kb"
[services.80]
host = "10.1.2.3"
port = 8080
[services.2222]
name = "other ssh"
""")
    assert cfg.serial == config.SerialConfig("/dev/ttyUSB0", 9600, "hardware", "")
    assert cfg.network == config.NetworkConfig("192.168.7.1", "192.168.7.2", 296, ("192.168.1.1", "9.9.9.9"))
    assert cfg.ppp.require_auth == "chap"
    assert cfg.ppp.secrets == (("alice", "pw1"), ("bob smith", "pw2"))
    assert cfg.logging.max_size == 512 * 1024
    # A [services] section replaces the default SSH service.
    assert cfg.services == (Service(80, "10.1.2.3", 8080, ""),
                            Service(2222, "127.0.0.1", 2222, "other ssh"))


def test_empty_services_table_means_no_services(tmp_path):
    assert load_text(tmp_path, "[services]\n").services == ()


# -- overrides ---------------------------------------------------------------------

def test_command_line_overrides_file(tmp_path):
    text = '[serial]\nport = "/dev/ttyS0"\nbaudrate = 9600\n[logging]\nlevel = "error"\n'
    cfg = load_text(tmp_path, text, settings={"serial.port": "socket://127.0.0.1:5000",
                                              "logging.level": "debug"})
    assert cfg.serial.port == "socket://127.0.0.1:5000"
    assert cfg.serial.baudrate == 9600          # untouched by the command line
    assert cfg.logging.level == "debug"


def test_override_values_are_validated_too(tmp_path):
    with pytest.raises(ConfigError) as info:
        config.load(None, settings={"serial.baudrate": -3})
    assert str(info.value) == "serial.baudrate: must be an integer between 50 and 20000000, got -3"


def test_service_overrides():
    cfg = config.load(None, services=["80=192.168.0.5:8080", "22=2222", "443=[::1]:8443"])
    assert cfg.services == (Service(22, "127.0.0.1", 2222, "SSH"),
                            Service(80, "192.168.0.5", 8080, ""),
                            Service(443, "::1", 8443, ""))


def test_service_override_adds_to_file_services(tmp_path):
    cfg = load_text(tmp_path, '[services.23]\nhost = "h"\nname = "telnet"\n', services=["25=mail:2525"])
    assert [(s.port, s.host, s.target_port, s.name) for s in cfg.services] == [
        (23, "h", 23, "telnet"), (25, "mail", 2525, "")]


@pytest.mark.parametrize("text", ["22", "22=", "x=host:22", "0=host:22", "22=host:0", "22=host:99999",
                                  "22=host:port", "=host:22"])
def test_bad_service_option(text):
    with pytest.raises(ConfigError) as info:
        config.load(None, services=[text])
    assert str(info.value).startswith("--service: expected PORT=HOST:TPORT")


# -- sizes ---------------------------------------------------------------------------

@pytest.mark.parametrize("text, size", [
    ("10MB", 10 << 20), ("10mb", 10 << 20), ("1 GB", 1 << 30), ("512KB", 512 << 10), ("100B", 100),
    ("100", 100), (4096, 4096), ("0", 0), (0, 0)])
def test_sizes(text, size):
    assert config.parse_size(text) == size
    assert config.parse_size(config.format_size(size)) == size


@pytest.mark.parametrize("text", ["", "MB", "1.5MB", "10 XB", "-1", -1, True, None, "10MiB"])
def test_bad_sizes(text):
    assert config.parse_size(text) is None


def test_format_size_picks_the_largest_exact_unit():
    assert config.format_size(10 << 20) == "10MB"
    assert config.format_size(1536) == "1536B"
    assert config.format_size(3 << 30) == "3GB"
    assert config.format_size(0) == "0B"


# -- TOML output -----------------------------------------------------------------------

def test_to_toml_round_trips(tmp_path):
    cfg = load_text(tmp_path, """
[serial]
port = "pty"
pty_link = "/tmp/a \\"quoted\\" link"
[network]
dns = ["8.8.8.8"]
[ppp]
require_auth = "pap"
secrets = { "user name" = "p\\u00e4ss" }
[proxy]
type = "socks5"
host = "proxy"
port = 1080
password = "pw"
[logging]
max_size = "1536B"
[services.80]
host = "web"
port = 8080
name = "Web"
""")
    text = config.to_toml(cfg, mask_secrets=False)
    assert toml.loads(text)
    again = load_text(tmp_path, text)
    assert again == cfg


def test_to_toml_masks_passwords(tmp_path):
    cfg = load_text(tmp_path, '[ppp]\nsecrets = { alice = "hunter2" }\n[proxy]\npassword = "swordfish"\n')
    text = config.to_toml(cfg)
    assert "hunter2" not in text and "swordfish" not in text
    masked = load_text(tmp_path, text)
    assert masked.ppp.secrets == (("alice", config.MASK),)
    assert masked.proxy.password == config.MASK


def test_to_toml_of_no_services_round_trips(tmp_path):
    cfg = load_text(tmp_path, "[services]\n")
    assert load_text(tmp_path, config.to_toml(cfg)).services == ()


# -- conversion to the protocol layers ---------------------------------------------------

def test_link_config_conversion(tmp_path):
    from pyslirp.ppp import link
    cfg = load_text(tmp_path, '[network]\nmtu = 1400\ndns = ["1.1.1.1"]\n[ppp]\nrequire_auth = "chap"\n'
                              'max_configure_requests = 7\nrestart_interval = 2\n'
                              'secrets = { a = "b" }\n')
    lc = config.link_config(cfg)
    assert isinstance(lc, link.LinkConfig)
    assert (lc.mru, lc.dns, lc.max_configure, lc.restart_interval, lc.require_auth, lc.secrets) == (
        1400, ("1.1.1.1",), 7, 2, "chap", (("a", "b"),))
    assert lc.compression == "deflate" and lc.vj is True
    assert config.link_config(load_text(tmp_path, '[ppp]\nvj = false\n')).vj is False
    assert (lc.answer, lc.line_speed) == ("auto", 115200)
    lc = config.link_config(load_text(tmp_path, '[serial]\nanswer = "none"\nbaudrate = 9600\n'))
    assert (lc.answer, lc.line_speed) == ("none", 9600)
    assert config.link_config(load_text(tmp_path, '[ppp]\ncompression = "none"\n')).compression == "none"


def test_stack_and_tcp_config_conversion(tmp_path):
    from pyslirp.net import stack
    from pyslirp.net.tcp import conn
    cfg = load_text(tmp_path, "[tcp]\nrcvbuf = 100000\nsndbuf = 50000\nmss = 1000\n"
                              "idle_timeout = 60\nkeepalive = 45\n[limits]\nmax_connections = 9\nmax_per_service = 3\n"
                              "max_udp_flows = 5\nnew_connections_per_second = 7\nburst = 11\nmax_half_open = 4\n"
                              '[services.80]\nhost = "web"\nport = 8080\nname = "Web"\n')
    sc = config.stack_config(cfg)
    assert isinstance(sc, stack.StackConfig)
    assert sc.services == (stack.Service(80, "web", 8080, "Web"),)
    assert (sc.max_connections, sc.max_per_service, sc.max_udp_flows, sc.tcp.idle_timeout) == (9, 3, 5, 60)
    assert (sc.new_connections_per_second, sc.burst, sc.max_half_open) == (7, 11, 4)
    assert isinstance(sc.tcp, conn.TcpConfig) and sc.tcp is cfg.tcp          # [tcp] is the TCP tunables' value
    assert (sc.tcp.rcvbuf, sc.tcp.sndbuf, sc.tcp.mss, sc.tcp.keepalive) == (100000, 50000, 1000, 45)
    assert sc.tcp.nagle == conn.TcpConfig().nagle           # untouched tunables keep their defaults


def test_moved_limit_keys_still_work_and_are_named(tmp_path):
    text = "[tcp]\nmax_connections = 9\nmax_per_service = 3\n"
    cfg = load_text(tmp_path, text)
    assert (cfg.limits.max_connections, cfg.limits.max_per_service) == (9, 3)
    raw = {"tcp": {"max_connections": 9, "max_per_service": 3}}
    assert config.deprecations(raw) == [
        "tcp.max_connections has moved to limits.max_connections; please update the configuration file",
        "tcp.max_per_service has moved to limits.max_per_service; please update the configuration file"]
    # The new place wins when both are given.
    cfg = load_text(tmp_path, "[tcp]\nmax_connections = 9\n[limits]\nmax_connections = 20\n")
    assert cfg.limits.max_connections == 20
    assert config.deprecations({"limits": {"max_connections": 9}}) == []


@pytest.mark.parametrize("listen, allow_remote", [
    ("127.0.0.1:9090", False), ("localhost:9100", False), ("127.0.0.5:9100", False), ("[::1]:9100", False),
    ("0.0.0.0:9100", True), ("192.0.2.1:9100", True), ("[::]:9100", True),
])
def test_metrics_listen_addresses(tmp_path, listen, allow_remote):
    text = '[monitoring]\nmetrics_listen = "%s"\nmetrics_allow_remote = %s\n' % (
        listen, "true" if allow_remote else "false")
    cfg = load_text(tmp_path, text)
    assert (cfg.monitoring.metrics_listen, cfg.monitoring.metrics_allow_remote) == (listen, allow_remote)
    assert config.parse_listen(listen)[1] == int(listen.rsplit(":", 1)[1])
    assert config.parse_listen("localhost:9100") == ("127.0.0.1", 9100)


def test_audit_file_setting(tmp_path):
    cfg = load_text(tmp_path, '[logging]\naudit_file = "/var/log/pyslirp/audit.jsonl"\n')
    assert cfg.logging.audit_file == "/var/log/pyslirp/audit.jsonl" and config.defaults().logging.audit_file == ""
