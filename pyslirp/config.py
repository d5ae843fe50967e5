"""pyslirp's configuration: defaults, TOML file, command-line overrides, validation.

Theory of operation: a configuration is built in three layers.  The built-in
defaults (the dataclasses below; ``pyslirp.toml`` at the top of the source
tree lists every key with exactly these values) are overlaid by the TOML
file, which is overlaid by the command line.  Overlaying happens on the *raw*
nested dictionaries, so every value, wherever it came from, goes through the
same validation.  Validation turns the raw dictionary into a frozen
:class:`Config` or raises :class:`ConfigError` whose message is ONE line
naming the key and the problem, e.g.::

    network.mtu: must be an integer between 296 and 1500, got 70000

Decisions worth knowing:

* ``[services.PORT]`` tables: if the file has a ``[services]`` section at all,
  it *replaces* the built-in default (SSH on port 22), so a file can remove
  SSH; ``--service PORT=HOST:TPORT`` adds to / overrides whichever set is in
  force.
* ``[ppp] secrets`` is a table ``user = "password"`` (e.g.
  ``secrets = { alice = "s3cret" }`` or a ``[ppp.secrets]`` table).
* ``network.mtu`` is limited to 296..1500: 1500 is PPP's default MRU (RFC
  1661 section 6.1) and every client accepts it; larger frames would only
  delay keystrokes behind bulk data on a slow serial line.
* ``logging.max_size`` takes units B, KB, MB, GB in powers of 1024; 0 turns
  rotation off.
* ``[services.PORT]`` and ``[udp_services.PORT]`` tables are the one
  :class:`pyslirp.net.flows.Service` type; a service may leave through the
  proxy (``via = "proxy"``).
* ``[outbound] allow``/``deny`` entries are parsed by
  :class:`pyslirp.net.flows.AddressRule` (the policy matches with the same
  parser that validated them).
* ``proxy.password`` may come from the environment
  (``PYSLIRP_PROXY_PASSWORD``), never from the command line.
* ``monitoring.metrics_listen`` is ``ADDRESS:PORT`` (an IPv4 address,
  ``localhost`` or a bracketed IPv6 address); a non-loopback address is
  refused unless ``monitoring.metrics_allow_remote`` is true.
* ``logging.audit_file`` is rotated with the log file's ``max_size`` and
  ``rotate_count``.
* ``[services.PORT] fallback`` is an array of ``"HOST:PORT"`` (``"[V6]:PORT"``)
  tried in order when the connect to host:port fails; ``[health]`` holds the
  circuit breakers' thresholds (net/health.py).  ``--service PORT=...``
  replaces a service's targets, fallbacks included.
* Reload (SIGHUP): :func:`reload_changes` tells what a re-read file changes,
  which of it is applied at once and which needs a restart (the serial line,
  the addresses, the MTU, PPP and authentication: a new link).

The ``[tcp]`` section is the TCP tunables' own value
(:class:`pyslirp.net.tcp.conn.TcpConfig`, whose other fields are internal);
``[limits]`` holds the flow limits (``tcp.max_connections`` and
``tcp.max_per_service`` of older files are moved there, see
:func:`deprecations`).  The conversion functions at the bottom
(:func:`link_config`, :func:`stack_config`) build the protocol layers' values.
"""

import difflib
import ipaddress
import json
import re
from dataclasses import dataclass, field, replace
from typing import Tuple

from pyslirp import compat
from pyslirp.net.flows import AddressRule, Service
from pyslirp.net.tcp.conn import TcpConfig

SPECIAL_PORTS = ("pty", "stdio")


class ConfigError(Exception):
    """An invalid configuration; ``str()`` is one line naming the key and the problem."""

    def __init__(self, key, problem):
        self.key = key
        self.problem = problem
        super().__init__("%s: %s" % (key, problem) if key else problem)


# ---------------------------------------------------------------------------
# The configuration values (defaults here are THE built-in defaults)

@dataclass(frozen=True)
class SerialConfig:
    port: str = ""                  # device path, pyserial URL, "pty" or "stdio"
    baudrate: int = 115200
    flow_control: str = "none"      # "none" | "hardware" | "software"
    pty_link: str = ""
    answer: str = "auto"            # answer CLIENT / AT commands before PPP: "auto" | "none"
    lock: bool = True               # UUCP lock file for a device path
    lock_dir: str = "/var/lock"


@dataclass(frozen=True)
class NetworkConfig:
    local_ip: str = "10.0.0.1"
    remote_ip: str = "10.0.0.2"
    mtu: int = 1500
    dns: Tuple[str, ...] = ()


@dataclass(frozen=True)
class PPPConfig:
    lcp_echo_interval: int = 30
    lcp_echo_failure: int = 4
    max_configure_requests: int = 10
    restart_interval: int = 3
    negotiate_magic: bool = True
    require_auth: str = "none"      # "none" | "pap" | "chap"
    secrets: Tuple[Tuple[str, str], ...] = ()
    resume_grace: int = 120         # seconds TCP sessions wait for the client after a lost line; 0 = none
    compression: str = "deflate"    # CCP: "deflate" | "none"
    vj: bool = True                 # Van Jacobson TCP/IP header compression


@dataclass(frozen=True)
class LimitsConfig:
    max_connections: int = 64       # TCP connections open at once (TIME_WAIT does not count)
    max_per_service: int = 16       # ... per service (NAT and DNS count as one service each)
    max_udp_flows: int = 64         # UDP and ping flows at once
    new_connections_per_second: int = 20    # token bucket on new TCP connections ...
    burst: int = 40                 # ... with bursts of this many
    max_half_open: int = 32         # connections waiting for their service connect; beyond: SYN cookies


@dataclass(frozen=True)
class HealthConfig:
    breaker_failures: int = 5       # failed connects in a row after which a service target is skipped (0 = never)
    breaker_cooldown: int = 30      # seconds it is skipped before one trial connect


@dataclass(frozen=True)
class ProxyConfig:
    type: str = "none"              # "none" | "socks5" | "http"
    host: str = ""
    port: int = 0
    username: str = ""
    password: str = ""
    connect_timeout: int = 10       # seconds for the whole connect (TCP to the proxy + its handshake)


@dataclass(frozen=True)
class OutboundConfig:
    enabled: bool = False
    via: str = "direct"             # "direct" | "proxy"
    allow: Tuple[str, ...] = ("0.0.0.0/0",)
    deny: Tuple[str, ...] = ()
    udp_timeout: int = 60           # seconds a UDP or ping flow lives without traffic


@dataclass(frozen=True)
class DnsConfig:
    forwarder: bool = False
    upstream: Tuple[str, ...] = ()  # "ADDR" or "ADDR:PORT"; empty: the nameservers of /etc/resolv.conf


@dataclass(frozen=True)
class LoggingConfig:
    level: str = "info"             # "debug" | "info" | "warning" | "error"
    file: str = ""
    max_size: int = 10 * 1024 * 1024
    rotate_count: int = 5
    connection_log: bool = True
    audit_file: str = ""            # JSON lines, one per link, login and flow event ("" = none)


@dataclass(frozen=True)
class MonitoringConfig:
    metrics_listen: str = ""        # "127.0.0.1:9090": Prometheus text at /metrics, JSON at /metrics.json
    metrics_allow_remote: bool = False
    stats_interval: int = 0         # seconds, 0 = off


DEFAULT_SERVICES = (Service(22, "127.0.0.1", 22, "SSH"),)


@dataclass(frozen=True)
class Config:
    serial: SerialConfig = field(default_factory=SerialConfig)
    network: NetworkConfig = field(default_factory=NetworkConfig)
    ppp: PPPConfig = field(default_factory=PPPConfig)
    services: Tuple[Service, ...] = DEFAULT_SERVICES
    udp_services: Tuple[Service, ...] = ()
    tcp: TcpConfig = field(default_factory=TcpConfig)     # the [tcp] keys are fields of the TCP tunables
    limits: LimitsConfig = field(default_factory=LimitsConfig)
    health: HealthConfig = field(default_factory=HealthConfig)
    proxy: ProxyConfig = field(default_factory=ProxyConfig)
    outbound: OutboundConfig = field(default_factory=OutboundConfig)
    dns: DnsConfig = field(default_factory=DnsConfig)
    logging: LoggingConfig = field(default_factory=LoggingConfig)
    monitoring: MonitoringConfig = field(default_factory=MonitoringConfig)


def defaults():
    return Config()


# ---------------------------------------------------------------------------
# Validators: each takes (key, value) and returns the clean value or raises

def _show(value):
    """A value as it would appear in TOML, for error messages."""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, str):
        return json.dumps(value)
    if isinstance(value, (int, float)):
        return repr(value)
    if isinstance(value, (list, tuple)):
        return "an array"
    if isinstance(value, dict):
        return "a table"
    return "a %s" % type(value).__name__


def _is_int(value):
    return isinstance(value, int) and not isinstance(value, bool)


def v_int(lo, hi=None):
    def check(key, value):
        if not _is_int(value) or value < lo or (hi is not None and value > hi):
            if hi is None:
                raise ConfigError(key, "must be an integer >= %d, got %s" % (lo, _show(value)))
            raise ConfigError(key, "must be an integer between %d and %d, got %s" % (lo, hi, _show(value)))
        return value
    return check


def v_bool(key, value):
    if not isinstance(value, bool):
        raise ConfigError(key, "must be true or false, got %s" % _show(value))
    return value


def v_str(key, value):
    if not isinstance(value, str):
        raise ConfigError(key, "must be a string, got %s" % _show(value))
    if "\x00" in value:
        raise ConfigError(key, "must not contain NUL characters")
    return value


def v_abs_path(key, value):
    v_str(key, value)
    if not value.startswith("/"):
        raise ConfigError(key, "must be an absolute path, got %s" % _show(value))
    return value


def v_secret(key, value):
    """A string that is never shown in messages."""
    if not isinstance(value, str):
        raise ConfigError(key, "must be a string")
    return value


def v_enum(*choices):
    def check(key, value):
        if isinstance(value, str) and value.lower() in choices:
            return value.lower()
        raise ConfigError(key, "must be one of %s, got %s"
                          % (", ".join(json.dumps(c) for c in choices), _show(value)))
    return check


def _parse_ipv4(value):
    if not isinstance(value, str) or not re.match(r"^\d{1,3}(\.\d{1,3}){3}$", value):
        return None
    try:
        return ipaddress.IPv4Address(value)
    except ValueError:
        return None


def v_unicast_ipv4(key, value):
    addr = _parse_ipv4(value)
    if addr is None:
        raise ConfigError(key, 'must be an IPv4 address like "10.0.0.1", got %s' % _show(value))
    if addr.is_unspecified or addr.is_multicast or addr == ipaddress.IPv4Address("255.255.255.255"):
        raise ConfigError(key, "must be a unicast IPv4 address, got %s" % _show(value))
    return str(addr)


def v_dns(key, value):
    if not isinstance(value, list):
        raise ConfigError(key, 'must be an array of IPv4 addresses like ["192.168.1.1"], got %s' % _show(value))
    if len(value) > 2:
        raise ConfigError(key, "at most 2 servers (IPCP offers a primary and a secondary), got %d" % len(value))
    return tuple(v_unicast_ipv4("%s[%d]" % (key, i), item) for i, item in enumerate(value))


_SIZE_UNITS = {"": 1, "b": 1, "kb": 1 << 10, "mb": 1 << 20, "gb": 1 << 30}
_SIZE_RE = re.compile(r"^\s*(\d+)\s*([a-zA-Z]*)\s*$")
MAX_SIZE_LIMIT = 1 << 40


def parse_size(text):
    """Parse "10MB" / "512 KB" / "100" (bytes) / 4096 -> bytes; None if malformed."""
    if _is_int(text):
        return text if text >= 0 else None
    if not isinstance(text, str):
        return None
    m = _SIZE_RE.match(text)
    if not m or m.group(2).lower() not in _SIZE_UNITS:
        return None
    return int(m.group(1)) * _SIZE_UNITS[m.group(2).lower()]


def format_size(nbytes):
    for unit, mult in (("GB", 1 << 30), ("MB", 1 << 20), ("KB", 1 << 10)):
        if nbytes and nbytes % mult == 0:
            return "%d%s" % (nbytes // mult, unit)
    return "%dB" % nbytes


def v_size(key, value):
    size = parse_size(value)
    if size is None or size > MAX_SIZE_LIMIT:
        raise ConfigError(key, 'must be a size like "10MB" (units B, KB, MB, GB; 0 = no rotation), got %s'
                          % _show(value))
    return size


def parse_listen(text):
    """``"127.0.0.1:9090"``, ``"localhost:9090"``, ``"[::1]:9090"`` -> (address, port); None when it is not one."""
    host, sep, port = text.rpartition(":")
    if not sep or not port.isdigit() or not 1 <= int(port) <= 65535:
        return None
    if host == "localhost":
        host = "127.0.0.1"
    elif host.startswith("[") and host.endswith("]"):
        host = host[1:-1]
        try:
            ipaddress.IPv6Address(host)
        except ValueError:
            return None
    elif _parse_ipv4(host) is None:
        return None
    return host, int(port)


def v_listen(key, value):
    v_str(key, value)
    if value == "":
        return value
    if parse_listen(value) is None:
        raise ConfigError(key, 'must be "" or ADDRESS:PORT like "127.0.0.1:9090", "localhost:9090" or '
                          '"[::1]:9090", got %s' % _show(value))
    return value


def v_rules(key, value):
    """An array of allow/deny entries: address or CIDR, optional :PORT or :LOW-HIGH."""
    if not isinstance(value, list):
        raise ConfigError(key, 'must be an array like ["0.0.0.0/0", "10.1.0.0/16:22"], got %s' % _show(value))
    for i, item in enumerate(value):
        try:
            AddressRule.parse(item)
        except ValueError as e:
            raise ConfigError("%s[%d]" % (key, i), str(e))
    return tuple(item.strip() for item in value)


def parse_hostport(text, default_port):
    """``"ADDR"`` or ``"ADDR:PORT"`` (IPv4) -> (addr, port); None when it is not one."""
    if not isinstance(text, str):
        return None
    host, sep, port = text.strip().partition(":")
    if _parse_ipv4(host) is None:
        return None
    if not sep:
        return host, default_port
    if not port.isdigit() or not 1 <= int(port) <= 65535:
        return None
    return host, int(port)


def v_upstreams(key, value):
    if not isinstance(value, list):
        raise ConfigError(key, 'must be an array of "ADDR" or "ADDR:PORT", got %s' % _show(value))
    for i, item in enumerate(value):
        if parse_hostport(item, 53) is None:
            raise ConfigError("%s[%d]" % (key, i), 'must be an IPv4 address, optionally with ":PORT", got %s'
                              % _show(item))
    return tuple(item.strip() for item in value)


def v_secrets(key, value):
    if not isinstance(value, dict):
        raise ConfigError(key, 'must be a table of user = "password", got %s' % _show(value))
    out = []
    for user, password in value.items():
        if not user:
            raise ConfigError(key, "user names must not be empty")
        if not isinstance(password, str):
            raise ConfigError("%s.%s" % (key, user), "the password must be a string")
        out.append((user, password))
    return tuple(out)


PORT = v_int(1, 65535)
SECTIONS = (
    ("serial", SerialConfig, {
        "port": v_str,
        "baudrate": v_int(50, 20000000),
        "flow_control": v_enum("none", "hardware", "software"),
        "pty_link": v_str,
        "answer": v_enum("auto", "none"),
        "lock": v_bool,
        "lock_dir": v_abs_path,
    }),
    ("network", NetworkConfig, {
        "local_ip": v_unicast_ipv4,
        "remote_ip": v_unicast_ipv4,
        "mtu": v_int(296, 1500),
        "dns": v_dns,
    }),
    ("ppp", PPPConfig, {
        "lcp_echo_interval": v_int(0, 3600),
        "lcp_echo_failure": v_int(1, 100),
        "max_configure_requests": v_int(1, 255),
        "restart_interval": v_int(1, 60),
        "negotiate_magic": v_bool,
        "require_auth": v_enum("none", "pap", "chap"),
        "secrets": v_secrets,
        "resume_grace": v_int(0, 86400),
        "compression": v_enum("deflate", "none"),
        "vj": v_bool,
    }),
    ("tcp", TcpConfig, {
        "rcvbuf": v_int(4096, 16 << 20),
        "sndbuf": v_int(4096, 16 << 20),
        "mss": v_int(0, 1460),
        "idle_timeout": v_int(0),
        "keepalive": v_int(0),
    }),
    ("limits", LimitsConfig, {
        "max_connections": v_int(1, 4096),
        "max_per_service": v_int(1, 4096),
        "max_udp_flows": v_int(1, 4096),
        "new_connections_per_second": v_int(1, 10000),
        "burst": v_int(1, 10000),
        "max_half_open": v_int(1, 4096),
    }),
    ("health", HealthConfig, {
        "breaker_failures": v_int(0, 1000),
        "breaker_cooldown": v_int(1, 86400),
    }),
    ("proxy", ProxyConfig, {
        "type": v_enum("none", "socks5", "http"),
        "host": v_str,
        "port": v_int(0, 65535),
        "username": v_str,
        "password": v_secret,
        "connect_timeout": v_int(1, 300),
    }),
    ("outbound", OutboundConfig, {
        "enabled": v_bool,
        "via": v_enum("direct", "proxy"),
        "allow": v_rules,
        "deny": v_rules,
        "udp_timeout": v_int(1, 86400),
    }),
    ("dns", DnsConfig, {
        "forwarder": v_bool,
        "upstream": v_upstreams,
    }),
    ("logging", LoggingConfig, {
        "level": v_enum("debug", "info", "warning", "error"),
        "file": v_str,
        "max_size": v_size,
        "rotate_count": v_int(0, 1000),
        "connection_log": v_bool,
        "audit_file": v_str,
    }),
    ("monitoring", MonitoringConfig, {
        "metrics_listen": v_listen,
        "metrics_allow_remote": v_bool,
        "stats_interval": v_int(0),
    }),
)
SECTION_NAMES = tuple(s[0] for s in SECTIONS) + ("services", "udp_services")
SERVICE_KEYS = ("host", "port", "name", "via", "fallback")
MAX_FALLBACK = 8
UDP_SERVICE_KEYS = ("host", "port", "name")


def _unknown(key, known):
    close = difflib.get_close_matches(key.rsplit(".", 1)[-1], known, n=1)
    return "unknown key" + (" (did you mean %s?)" % json.dumps(close[0]) if close else "")


def parse_target(text):
    """``"HOST:PORT"`` or ``"[V6]:PORT"`` -> (host, port); None when it is not one."""
    if not isinstance(text, str):
        return None
    m = re.match(r"^(?:\[([0-9A-Fa-f:.]+)\]|([^:\[\]\s]+)):(\d{1,5})$", text.strip())
    if not m or not 1 <= int(m.group(3)) <= 65535:
        return None
    return (m.group(1) or m.group(2)), int(m.group(3))


def v_fallback(key, value):
    if not isinstance(value, list):
        raise ConfigError(key, 'must be an array of "HOST:PORT", got %s' % _show(value))
    if len(value) > MAX_FALLBACK:
        raise ConfigError(key, "at most %d fallback targets, got %d" % (MAX_FALLBACK, len(value)))
    out = []
    for i, item in enumerate(value):
        target = parse_target(item)
        if target is None:
            raise ConfigError("%s[%d]" % (key, i), 'must be "HOST:PORT" (or "[IPv6]:PORT") with a port '
                              'between 1 and 65535, got %s' % _show(item))
        out.append(target)
    return tuple(out)


def _services(value, section="services", keys=SERVICE_KEYS):
    if not isinstance(value, dict):
        raise ConfigError(section, "must be tables [%s.PORT], got %s" % (section, _show(value)))
    out = []
    for port_text, table in value.items():
        key = "%s.%s" % (section, port_text)
        if not re.match(r"^\d{1,5}$", port_text) or not 1 <= int(port_text) <= 65535:
            raise ConfigError(key, "the table name must be a port number between 1 and 65535")
        if not isinstance(table, dict):
            raise ConfigError(key, "must be a table with host, port and name, got %s" % _show(table))
        for k in table:
            if k not in keys:
                raise ConfigError("%s.%s" % (key, k), _unknown(k, keys))
        host = v_str(key + ".host", table.get("host", "127.0.0.1"))
        if not host:
            raise ConfigError(key + ".host", "must not be empty")
        out.append(Service(
            port=int(port_text), host=host,
            target_port=PORT(key + ".port", table.get("port", int(port_text))),
            name=v_str(key + ".name", table.get("name", "")),
            via=v_enum("direct", "proxy")(key + ".via", table.get("via", "direct")),
            fallback=v_fallback(key + ".fallback", table.get("fallback", []))))
    out.sort(key=lambda s: s.port)
    return tuple(out)


# Keys that moved: old place -> new place.  A file that still uses the old place works (the value moves), and
# deprecations() names it so that the daemon can warn once.
MOVED_KEYS = {("tcp", "max_connections"): ("limits", "max_connections"),
              ("tcp", "max_per_service"): ("limits", "max_per_service")}


def deprecations(raw):
    """One warning line per moved key that a raw configuration still uses."""
    out = []
    for (old_sec, old_key), (new_sec, new_key) in sorted(MOVED_KEYS.items()):
        table = raw.get(old_sec) if isinstance(raw, dict) else None
        if isinstance(table, dict) and old_key in table:
            out.append("%s.%s has moved to %s.%s; please update the configuration file"
                       % (old_sec, old_key, new_sec, new_key))
    return out


def _move_keys(raw):
    out = dict(raw)
    for (old_sec, old_key), (new_sec, new_key) in MOVED_KEYS.items():
        table = out.get(old_sec)
        if not isinstance(table, dict) or old_key not in table:
            continue
        table = dict(table)
        value = table.pop(old_key)
        out[old_sec] = table
        new = out.get(new_sec, {})
        if isinstance(new, dict) and new_key not in new:
            out[new_sec] = dict(new, **{new_key: value})
    return out


def validate(raw):
    """A raw nested dict (as parsed from TOML, overrides applied) -> Config."""
    if not isinstance(raw, dict):
        raise ConfigError("", "the configuration must be a table")
    raw = _move_keys(raw)
    for name in raw:
        if name not in SECTION_NAMES:
            close = difflib.get_close_matches(name, SECTION_NAMES, n=1)
            raise ConfigError("", "unknown section [%s]%s" % (
                name, " (did you mean [%s]?)" % close[0] if close else ""))
    parts = {}
    for name, cls, schema in SECTIONS:
        table = raw.get(name, {})
        if not isinstance(table, dict):
            raise ConfigError(name, "must be a table [%s], got %s" % (name, _show(table)))
        values = {}
        for key, value in table.items():
            full = "%s.%s" % (name, key)
            if key not in schema:
                raise ConfigError(full, _unknown(key, list(schema)))
            values[key] = schema[key](full, value)
        parts[name] = cls(**values)
    parts["services"] = _services(raw["services"]) if "services" in raw else DEFAULT_SERVICES
    parts["udp_services"] = (_services(raw["udp_services"], "udp_services", UDP_SERVICE_KEYS)
                             if "udp_services" in raw else ())
    cfg = Config(**parts)
    _cross_checks(cfg)
    return cfg


def _cross_checks(cfg):
    net, ppp, tcp, limits, proxy = cfg.network, cfg.ppp, cfg.tcp, cfg.limits, cfg.proxy
    if net.local_ip == net.remote_ip:
        raise ConfigError("network.remote_ip", "must differ from network.local_ip (both are %s)"
                          % json.dumps(net.local_ip))
    if ppp.require_auth != "none" and not ppp.secrets:
        raise ConfigError("ppp.secrets", 'require_auth = "%s" needs at least one user = "password"'
                          % ppp.require_auth)
    if tcp.mss and not 88 <= tcp.mss <= net.mtu - 40:
        raise ConfigError("tcp.mss", "must be 0 (auto) or between 88 and network.mtu - 40 (%d), got %d"
                          % (net.mtu - 40, tcp.mss))
    if limits.max_per_service > limits.max_connections:
        raise ConfigError("limits.max_per_service", "must not exceed limits.max_connections (%d), got %d"
                          % (limits.max_connections, limits.max_per_service))
    if proxy.type != "none":
        if not proxy.host:
            raise ConfigError("proxy.host", 'must be set when proxy.type is "%s"' % proxy.type)
        if not proxy.port:
            raise ConfigError("proxy.port", 'must be between 1 and 65535 when proxy.type is "%s"' % proxy.type)
    else:
        for svc in cfg.services:
            if svc.via == "proxy":
                raise ConfigError("services.%d.via" % svc.port, '"proxy" needs a proxy: set proxy.type and host')
        if cfg.outbound.via == "proxy":
            raise ConfigError("outbound.via", '"proxy" needs a proxy: set proxy.type and host')
    if proxy.username and proxy.type == "none":
        raise ConfigError("proxy.username", "is set but proxy.type is \"none\"")
    mon = cfg.monitoring
    if mon.metrics_listen and not mon.metrics_allow_remote:
        host = parse_listen(mon.metrics_listen)[0]
        if not ipaddress.ip_address(host).is_loopback:
            raise ConfigError("monitoring.metrics_listen", "%s is not a loopback address; set "
                              "monitoring.metrics_allow_remote = true to serve metrics to other hosts"
                              % json.dumps(mon.metrics_listen))
    if cfg.logging.audit_file and cfg.logging.audit_file == cfg.logging.file:
        raise ConfigError("logging.audit_file", "must not be the log file (both are %s)"
                          % json.dumps(cfg.logging.file))
    if cfg.serial.pty_link and cfg.serial.port not in ("", "pty"):
        raise ConfigError("serial.pty_link", 'only makes sense with port = "pty" (got port = %s)'
                          % json.dumps(cfg.serial.port))


# ---------------------------------------------------------------------------
# Loading and overriding

def read_file(path):
    """Parse a TOML file into a raw dict (ConfigError on any problem)."""
    toml = compat.toml_module()
    try:
        with open(path, "rb") as f:
            data = f.read()
    except OSError as exc:
        raise ConfigError(path, "cannot read: %s" % (exc.strerror or exc))
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError:
        raise ConfigError(path, "not valid UTF-8")
    try:
        return toml.loads(text)
    except toml.TOMLDecodeError as exc:
        raise ConfigError(path, "invalid TOML: %s" % str(exc).splitlines()[0])


def parse_service(text):
    """``PORT=HOST:TPORT`` (or ``PORT=TPORT`` for 127.0.0.1) -> (port, host, tport)."""
    m = re.match(r"^(\d{1,5})=(?:(\[[0-9A-Fa-f:.]+\]|[^:\s]+):)?(\d{1,5})$", text)
    if not m or not 1 <= int(m.group(1)) <= 65535 or not 1 <= int(m.group(3)) <= 65535:
        raise ConfigError("--service", "expected PORT=HOST:TPORT with ports 1-65535, got %s" % json.dumps(text))
    host = (m.group(2) or "127.0.0.1").strip("[]")
    return int(m.group(1)), host, int(m.group(3))


def _services_raw(services):
    return dict((str(s.port), {"host": s.host, "port": s.target_port, "name": s.name, "via": s.via,
                               "fallback": [_target_text(t) for t in s.fallback]})
                for s in services)


def _target_text(target):
    host, port = target
    return "%s:%d" % ("[%s]" % host if ":" in host else host, port)


def apply_overrides(raw, settings=None, services=()):
    """Overlay command-line values on a raw dict (a copy is returned).

    ``settings`` maps "section.key" to a value; ``services`` is a list of
    ``PORT=HOST:TPORT`` strings.
    """
    out = dict((k, dict(v) if isinstance(v, dict) else v) for k, v in raw.items())
    for dotted, value in (settings or {}).items():
        section, key = dotted.split(".", 1)
        table = out.setdefault(section, {})
        if not isinstance(table, dict):
            raise ConfigError(section, "must be a table [%s], got %s" % (section, _show(table)))
        table[key] = value
    if services:
        table = out.get("services")
        if table is None:
            table = _services_raw(DEFAULT_SERVICES)
        elif not isinstance(table, dict):
            raise ConfigError("services", "must be tables [services.PORT], got %s" % _show(table))
        table = dict(table)
        for text in services:
            port, host, tport = parse_service(text)
            old = table.get(str(port))
            entry = {"host": host, "port": tport, "name": old.get("name", "") if isinstance(old, dict) else ""}
            if isinstance(old, dict) and "via" in old:
                entry["via"] = old["via"]
            table[str(port)] = entry
        out["services"] = table
    return out


PASSWORD_ENV = "PYSLIRP_PROXY_PASSWORD"


def apply_environment(raw, environ):
    """``PYSLIRP_PROXY_PASSWORD`` supplies ``proxy.password`` when the file has none (a copy is returned)."""
    password = environ.get(PASSWORD_ENV)
    if not password:
        return raw
    proxy = raw.get("proxy", {})
    if isinstance(proxy, dict) and proxy.get("password"):
        return raw
    out = dict(raw)
    out["proxy"] = dict(proxy) if isinstance(proxy, dict) else proxy
    if isinstance(out["proxy"], dict):
        out["proxy"]["password"] = password
    return out


def load(path=None, settings=None, services=(), environ=None):
    """Defaults <- file (if any) <- environment <- command-line overrides, validated."""
    raw = read_file(path) if path else {}
    if environ is not None:
        raw = apply_environment(raw, environ)
    return validate(apply_overrides(raw, settings, services))


# ---------------------------------------------------------------------------
# Writing the effective configuration back as TOML

MASK = "********"


def _toml_value(value):
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int):
        return str(value)
    if isinstance(value, str):
        return json.dumps(value)
    if isinstance(value, (list, tuple)):
        return "[" + ", ".join(_toml_value(v) for v in value) + "]"
    raise TypeError(value)


def to_toml(cfg, mask_secrets=True):
    """The configuration as TOML that :func:`load` reads back to an equal Config.

    Passwords are replaced by ``********`` unless ``mask_secrets`` is false.
    """
    lines = []
    for name, _, schema in SECTIONS:
        section = getattr(cfg, name)
        lines.append("[%s]" % name)
        for key in schema:
            value = getattr(section, key)
            if key == "secrets":
                items = ", ".join("%s = %s" % (json.dumps(u), json.dumps(MASK if mask_secrets else p))
                                  for u, p in value)
                lines.append("secrets = {%s}" % (" " + items + " " if items else ""))
                continue
            if key == "password" and mask_secrets and value:
                value = MASK
            if key == "max_size":
                value = format_size(value)
            lines.append("%s = %s" % (key, _toml_value(value)))
        lines.append("")
    if not cfg.services:
        lines.append("[services]")
        lines.append("")
    for section, services, keys in (("services", cfg.services, SERVICE_KEYS),
                                     ("udp_services", cfg.udp_services, UDP_SERVICE_KEYS)):
        for svc in services:
            values = {"host": svc.host, "port": svc.target_port, "name": svc.name, "via": svc.via,
                      "fallback": [_target_text(t) for t in svc.fallback]}
            lines.append("[%s.%d]" % (section, svc.port))
            lines.extend("%s = %s" % (key, _toml_value(values[key])) for key in keys)
            lines.append("")
    return "\n".join(lines)


# ---------------------------------------------------------------------------
# Conversion to the protocol layers' own configuration values

def link_config(cfg):
    """The PPPLink configuration (pyslirp.ppp.link.LinkConfig)."""
    from pyslirp.ppp.link import LinkConfig
    net, ppp = cfg.network, cfg.ppp
    # With the forwarder on, the client is offered local_ip as its DNS server unless [network] dns names one.
    dns = tuple(net.dns) or ((net.local_ip,) if cfg.dns.forwarder else ())
    return LinkConfig(
        local_ip=net.local_ip, remote_ip=net.remote_ip, dns=dns, mru=net.mtu,
        lcp_echo_interval=ppp.lcp_echo_interval, lcp_echo_failure=ppp.lcp_echo_failure,
        max_configure=ppp.max_configure_requests, restart_interval=ppp.restart_interval,
        negotiate_magic=ppp.negotiate_magic, require_auth=ppp.require_auth, secrets=tuple(ppp.secrets),
        compression=ppp.compression, vj=ppp.vj, answer=cfg.serial.answer, line_speed=cfg.serial.baudrate)


def stack_config(cfg, host_addresses=(), dns_upstream=()):
    """The IPStack configuration (pyslirp.net.stack.StackConfig).

    ``host_addresses``: this host's interface addresses (never NAT targets unless named in outbound.allow);
    ``dns_upstream``: the resolved upstream servers, the first of which serves DNS over TCP.
    """
    from pyslirp.net.flows import OutboundPolicy
    from pyslirp.net.stack import StackConfig
    out = cfg.outbound
    proxy_via = cfg.proxy.type if cfg.proxy.type != "none" else ""
    outbound = OutboundPolicy(
        enabled=out.enabled, via=(proxy_via or "direct") if out.via == "proxy" else "direct",
        allow=tuple(AddressRule.parse(t) for t in out.allow), deny=tuple(AddressRule.parse(t) for t in out.deny),
        host_addresses=tuple(host_addresses))
    return StackConfig(
        local_ip=cfg.network.local_ip, remote_ip=cfg.network.remote_ip, mtu=cfg.network.mtu,
        services=cfg.services, udp_services=cfg.udp_services, proxy_via=proxy_via, outbound=outbound,
        dns_forwarder=cfg.dns.forwarder, dns_tcp_upstream=tuple(dns_upstream[0]) if dns_upstream else None,
        max_connections=cfg.limits.max_connections, max_per_service=cfg.limits.max_per_service,
        max_udp_flows=cfg.limits.max_udp_flows, new_connections_per_second=cfg.limits.new_connections_per_second,
        burst=cfg.limits.burst, max_half_open=cfg.limits.max_half_open, udp_timeout=out.udp_timeout,
        resume_grace=cfg.ppp.resume_grace, tcp=cfg.tcp,
        breaker_failures=cfg.health.breaker_failures, breaker_cooldown=cfg.health.breaker_cooldown)


# ---------------------------------------------------------------------------
# Reload

def describe_services(services):
    """``22 -> 127.0.0.1:22 (SSH) or 127.0.0.1:2222, 80 -> web:8080 via proxy`` for the log ("none" if empty)."""
    parts = []
    for s in services:
        text = "%d -> %s" % (s.port, _target_text((s.host, s.target_port)))
        if s.name:
            text += " (%s)" % s.name
        if s.fallback:
            text += " or " + " or ".join(_target_text(t) for t in s.fallback)
        if s.via == "proxy":
            text += " via proxy"
        parts.append(text)
    return ", ".join(parts) or "none"


# Sections whose keys need a new link (or a new line) to change, but for RELOADABLE_KEYS.
RESTART_SECTIONS = ("serial", "network", "ppp")
RELOADABLE_KEYS = (("ppp", "resume_grace"),)       # the stack's, not the link's
# Single keys of other sections that a running daemon cannot change.
RESTART_KEYS = (("monitoring", "metrics_listen"), ("monitoring", "metrics_allow_remote"))


def _section_keys(name):
    for sec_name, _, schema in SECTIONS:
        if sec_name == name:
            return list(schema)
    return []


def reload_changes(old, new):
    """What loading ``new`` over the running ``old`` does: ``(effective, changed, restart)``.

    ``effective`` is ``new`` with the values that need a restart kept as they run now (so that the next
    reload compares with what really runs); ``changed`` names what is applied (section names, and
    ``+services.PORT`` added, ``-services.PORT`` removed, ``~services.PORT`` changed, likewise
    ``udp_services``); ``restart`` the
    dotted keys that differ but wait for a restart.  Nothing here touches a secret's value.
    """
    restart = []
    replaced = {}
    applied = []
    for name in RESTART_SECTIONS:
        old_sec, new_sec = getattr(old, name), getattr(new, name)
        if old_sec != new_sec:
            keep = old_sec
            for key in _section_keys(name):
                if getattr(old_sec, key) == getattr(new_sec, key):
                    continue
                if (name, key) in RELOADABLE_KEYS:
                    keep = replace(keep, **{key: getattr(new_sec, key)})
                    applied.append("%s.%s" % (name, key))
                else:
                    restart.append("%s.%s" % (name, key))
            replaced[name] = keep
    for name, key in RESTART_KEYS:
        old_sec, new_sec = getattr(old, name), getattr(new, name)
        if getattr(old_sec, key) != getattr(new_sec, key):
            restart.append("%s.%s" % (name, key))
            new_sec = replace(new_sec, **{key: getattr(old_sec, key)})
            replaced[name] = new_sec
    # The DNS server IPCP offers follows dns.forwarder when [network] dns is empty: that is the link's.
    if old.dns.forwarder != new.dns.forwarder and not old.network.dns:
        restart.append("dns.forwarder (the DNS server offered over IPCP)")
    effective = replace(new, **replaced) if replaced else new
    changed = list(applied)
    for name, _, _ in SECTIONS:
        if name in RESTART_SECTIONS:
            continue
        if getattr(old, name) != getattr(effective, name):
            changed.append(name)
    for section in ("services", "udp_services"):
        before = dict((s.port, s) for s in getattr(old, section))
        after = dict((s.port, s) for s in getattr(effective, section))
        for port in sorted(set(before) | set(after)):
            if port not in before:
                changed.append("+%s.%d" % (section, port))
            elif port not in after:
                changed.append("-%s.%d" % (section, port))
            elif before[port] != after[port]:
                changed.append("~%s.%d" % (section, port))
    return effective, changed, restart
