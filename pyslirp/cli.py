"""The command line: ``pyslirp.py [options] [PORT]``.

Theory of operation: parse the options, build the configuration (defaults <-
``-c FILE`` <- options), set up logging, open the line and hand everything to
the threaded runtime; wire SIGINT/SIGTERM (clean stop: LCP Terminate-Request,
exit 0), SIGHUP (reload the ``-c`` file, see runtime/reload.py, and reopen
the log files and the audit log) and SIGUSR1 (the metrics snapshot as one
log line).  This is the only module that wires the runtime: the audit log
(``[logging] audit_file``) and the metrics server (``[monitoring]
metrics_listen``) are opened here, before serving, so that a file that
cannot be written or an address that cannot be bound is one line and an
exit code.

Exit codes: 0 clean stop, 1 runtime failure (e.g. permission denied on the
device, a pseudo-terminal that cannot be created), 2 usage or configuration
error.  Bad input never produces a traceback: every error is one line on
standard error starting with ``pyslirp:``.

A serial device that cannot be opened at start-up, or that disappears later
(USB unplugged), is retried with a back-off of 1 s doubling to 30 s, forever,
like pppd's ``persist``: the adapter may be plugged in later.  Some failures
end the program at start-up instead: an invalid setting (exit 2), permission
denied (exit 1; add the user to the group owning the device, usually
``dialout``) and a device another program holds (exit 1: its UUCP lock file
names a live process, or it is open exclusively).  A device path that is a
pseudo-terminal is never reopened (see ``runtime/ownership.py``): pyslirp
exits 1 when it goes away.
"""

import argparse
import logging
import os
import signal
import sys
import time

from pyslirp import __version__, compat, config, logsetup

log = logging.getLogger("pyslirp")

DESCRIPTION = """\
A userspace PPP gateway: speak PPP on a serial line, run our own IPv4/TCP stack
in memory and turn each of the client's connections into an ordinary outbound
socket to a local service (SSH on 127.0.0.1:22 by default). No root needed."""

EPILOG = """\
PORT is a device path (/dev/ttyUSB0) or a pyserial URL (socket://host:port,
rfc2217://host:port, loop://); it overrides [serial] port of the config file.

examples:
  pyslirp.py /dev/ttyUSB0                 serve a serial port
  pyslirp.py --pty --pty-link /tmp/ppp    serve a new pseudo-terminal (pppd /tmp/ppp ...)
  pppd pty "ssh host pyslirp.py --stdio"  PPP over ssh
  pyslirp.py -c pyslirp.toml --check-config
  pyslirp.py client --help                the client role (the other end, in userspace too)

exit status: 0 stopped by SIGINT/SIGTERM, 1 runtime failure, 2 usage or configuration error."""


def prefix_error(parser, prog="pyslirp"):
    """argparse errors as one line after the usage, prefixed ``prog``, exit 2 (argparse's own convention)."""
    def error(message):
        parser.print_usage(sys.stderr)
        parser.exit(2, "%s: error: %s\n" % (prog, message))
    return error


def build_parser():
    p = argparse.ArgumentParser(prog="pyslirp", description=DESCRIPTION, epilog=EPILOG,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.error = prefix_error(p)
    p.add_argument("port", nargs="?", metavar="PORT", help="serial device or pyserial URL")
    p.add_argument("-c", "--config", metavar="FILE", help="TOML configuration file")
    mode = p.add_argument_group("line (instead of PORT)")
    mode.add_argument("--stdio", action="store_true",
                      help="PPP on standard input/output (a dial-in login shell, pppd pty \"ssh ...\")")
    mode.add_argument("--pty", action="store_true",
                      help="create a pseudo-terminal, print 'pty: /dev/pts/N' and serve it")
    mode.add_argument("--pty-link", metavar="PATH",
                      help="also make PATH a symbolic link to the pseudo-terminal (implies --pty)")
    ser = p.add_argument_group("serial")
    ser.add_argument("--baudrate", type=int, metavar="N", help="line speed (default 115200)")
    ser.add_argument("--flow-control", choices=("none", "hardware", "software"),
                     help="RTS/CTS (hardware), XON/XOFF (software) or none (default)")
    net = p.add_argument_group("services")
    net.add_argument("--service", action="append", default=[], metavar="PORT=HOST:TPORT",
                     help="forward the client's connections to PORT on the gateway address to HOST:TPORT "
                          "(repeatable; adds to or replaces the configured services)")
    net.add_argument("--socks-host", metavar="HOST",
                     help="send the client's outbound connections through this SOCKS5 proxy (turns outbound on "
                          "with the configured allow-list; password from the file or $PYSLIRP_PROXY_PASSWORD)")
    net.add_argument("--socks-port", type=int, metavar="PORT", help="the SOCKS5 proxy's port (default 1080)")
    net.add_argument("--http-proxy", metavar="HOST:PORT",
                     help="send the client's outbound connections through this HTTP CONNECT proxy (turns "
                          "outbound on, like --socks-host)")
    out = p.add_argument_group("logging and diagnostics")
    verbosity = out.add_mutually_exclusive_group()
    verbosity.add_argument("-d", "--debug", action="store_true", help="log at debug level")
    verbosity.add_argument("-q", "--quiet", action="store_true", help="log warnings and errors only")
    out.add_argument("--log-file", metavar="FILE", help="also log to FILE (rotated, see [logging])")
    out.add_argument("--pcap", metavar="FILE", help="capture every PPP frame in and out to FILE (pcap)")
    out.add_argument("--check-config", action="store_true",
                     help="validate the configuration, print it as TOML (passwords masked) and exit")
    out.add_argument("--version", action="version", version="pyslirp %s" % __version__)
    return p


def _settings(args, parser):
    """The command line's overrides as {"section.key": value}."""
    given = [name for name, on in (("PORT", args.port), ("--stdio", args.stdio), ("--pty", args.pty)) if on]
    if len(given) > 1:
        parser.error("%s cannot be combined" % " and ".join(given))
    if args.pty_link and (args.port or args.stdio):
        parser.error("--pty-link needs --pty, not %s" % ("PORT" if args.port else "--stdio"))
    s = {}
    if args.port:
        s["serial.port"] = args.port
    elif args.stdio:
        s["serial.port"] = "stdio"
    elif args.pty or args.pty_link:
        s["serial.port"] = "pty"
    if args.pty_link:
        s["serial.pty_link"] = os.path.abspath(args.pty_link)
    if args.baudrate is not None:
        s["serial.baudrate"] = args.baudrate
    if args.flow_control:
        s["serial.flow_control"] = args.flow_control
    if args.debug:
        s["logging.level"] = "debug"
    elif args.quiet:
        s["logging.level"] = "warning"
    if args.log_file:
        s["logging.file"] = args.log_file
    if args.socks_host is not None and args.http_proxy is not None:
        parser.error("--socks-host and --http-proxy cannot be combined")
    if args.socks_port is not None and args.socks_host is None:
        parser.error("--socks-port needs --socks-host")
    if args.socks_host is not None:
        s["proxy.type"] = "socks5"
        s["proxy.host"] = args.socks_host
        if args.socks_port is not None:
            s["proxy.port"] = args.socks_port
    if args.http_proxy is not None:
        host, sep, port = args.http_proxy.rpartition(":")
        if not sep or not host or not port.isdigit() or not 1 <= int(port) <= 65535:
            parser.error("--http-proxy: expected HOST:PORT, got %r" % args.http_proxy)
        s["proxy.type"] = "http"
        s["proxy.host"] = host.strip("[]")
        s["proxy.port"] = int(port)
    if args.socks_host is not None or args.http_proxy is not None:
        s["outbound.enabled"] = True
        s["outbound.via"] = "proxy"
    return s


def _err(message):
    sys.stderr.write("pyslirp: %s\n" % message)
    sys.stderr.flush()


def main(argv=None):
    args = sys.argv[1:] if argv is None else list(argv)
    if args[:1] == ["client"]:
        # The client role has its own command line (pyslirp/cli_client.py).
        from pyslirp import cli_client
        return cli_client.main(args[1:])
    try:
        return _main(argv)
    except KeyboardInterrupt:
        return 0


def _load(args, settings):
    """(Config, raw file dict): the file, the environment and the command line, validated (ConfigError)."""
    raw = config.apply_environment(config.read_file(args.config) if args.config else {}, os.environ)
    settings = dict(settings)
    if args.socks_host is not None and args.socks_port is None:
        proxy = raw.get("proxy")
        if not (isinstance(proxy, dict) and proxy.get("port")):
            settings["proxy.port"] = 1080
    return config.validate(config.apply_overrides(raw, settings, args.service)), raw


def _main(argv):
    parser = build_parser()
    args = parser.parse_args(argv)
    settings = _settings(args, parser)
    try:
        cfg, raw = _load(args, settings)
    except config.ConfigError as exc:
        _err("config error: %s" % exc)
        return 2
    for line in config.deprecations(raw):
        _err("warning: %s" % line)
    if args.check_config:
        sys.stdout.write(config.to_toml(cfg))
        sys.stdout.flush()
        return 0

    port = cfg.serial.port
    if not port:
        _err("no serial port: name a device (e.g. /dev/ttyUSB0) or a pyserial URL, "
             "or use --pty or --stdio (see --help)")
        return 2
    if port not in config.SPECIAL_PORTS and not compat.have_pyserial():
        _err(compat.PYSERIAL_HINT)
        return 2
    if port == "stdio":
        # Standard output is the serial line now: nothing else may write there.
        sys.stdout = sys.stderr
    lg = cfg.logging
    try:
        logsetup.setup(lg.level, lg.file, lg.max_size, lg.rotate_count)
    except OSError as exc:
        _err("config error: logging.file: cannot open %s: %s" % (lg.file, exc.strerror or exc))
        return 2
    audit = None
    if lg.audit_file:
        from pyslirp.runtime.audit import AuditLog
        try:
            audit = AuditLog(lg.audit_file, lg.max_size, lg.rotate_count)
        except OSError as exc:
            _err("config error: logging.audit_file: cannot open %s: %s" % (lg.audit_file, exc.strerror or exc))
            return 2
    try:
        return _serve(cfg, args, settings, audit)
    finally:
        if audit is not None:
            audit.close()


def _line_params(cfg):
    """(line_budget, coalesce) bytes: small, sized to the line speed for real serial lines."""
    port, baud = cfg.serial.port, cfg.serial.baudrate
    if port in config.SPECIAL_PORTS or port.startswith(("socket://", "loop://")):
        return 65536, 16384
    # About 1/4 s of line time queued toward the line, writes of about 1/20 s.
    return min(65536, max(2048, baud // 40)), min(16384, max(256, baud // 200))


def _make_tap(pcap_writer):
    state = {"on": True}

    def tap(direction, frame):
        if not state["on"]:
            return
        try:
            pcap_writer.write(direction, frame, int(time.time() * 1000))
        except (OSError, ValueError) as exc:
            state["on"] = False
            log.error("packet capture stopped: %s", exc)
    return tap


def _serial_opener(port, baudrate, flow_control, lock_dir=None):
    from pyslirp.runtime.endpoints import PySerialEndpoint

    def opener():
        return PySerialEndpoint(port, baudrate, flow_control, lock_dir=lock_dir)
    return opener


def _dns(cfg):
    """The upstream DNS servers and a factory of the relay (post -> DnsRelay), or ([], None) when off.

    ValueError when the forwarder is on and no upstream server can be found.
    """
    if not cfg.dns.forwarder:
        return [], None
    from pyslirp.runtime.connectors import Connector
    from pyslirp.runtime.dnsrelay import DnsRelay, upstream_servers
    servers = upstream_servers(cfg.dns.upstream)    # the configured "ADDR" / "ADDR:PORT" strings
    proxy = cfg.proxy if cfg.outbound.via == "proxy" and cfg.proxy.type != "none" else None

    def factory(post):
        if proxy is None:
            return DnsRelay(servers, post)

        def open_connection(host, port):
            return Connector(proxy.type, proxy, cfg.proxy.connect_timeout).open(host, port)[0]
        return DnsRelay(servers, post, via="proxy", open_connection=open_connection)
    return servers, factory


def _metrics_server(cfg, runtime):
    """The metrics server on ``[monitoring] metrics_listen`` (None when off); OSError when it cannot bind."""
    mon = cfg.monitoring
    if not mon.metrics_listen:
        return None
    from pyslirp.runtime.metrics_server import MetricsServer
    return MetricsServer(config.parse_listen(mon.metrics_listen), runtime.metrics_box,
                         allow_remote=mon.metrics_allow_remote)


def _serve(cfg, args, settings, audit=None):
    from pyslirp.runtime.endpoints import PtyEndpoint, StdioEndpoint
    from pyslirp.runtime.hostaddrs import interface_addresses
    from pyslirp.runtime.reload import Reloader
    from pyslirp.runtime.stackloop import Runtime

    port = cfg.serial.port
    pcap_file = tap = None
    if args.pcap:
        from pyslirp.wire.pcap import PcapWriter
        try:
            pcap_file = open(args.pcap, "wb")
        except OSError as exc:
            _err("cannot open capture file %s: %s" % (args.pcap, exc.strerror or exc))
            return 2
        tap = _make_tap(PcapWriter(pcap_file))

    endpoint = opener = None
    try:
        if port == "pty":
            try:
                endpoint = PtyEndpoint(link=cfg.serial.pty_link)
            except OSError as exc:
                _err("cannot create the pseudo-terminal%s: %s" % (
                    " link %s" % cfg.serial.pty_link if cfg.serial.pty_link else "", exc.strerror or exc))
                return 1
        elif port == "stdio":
            endpoint = StdioEndpoint()
        else:
            opener = _serial_opener(port, cfg.serial.baudrate, cfg.serial.flow_control,
                                    lock_dir=cfg.serial.lock_dir if cfg.serial.lock else None)

        budget, coalesce = _line_params(cfg)
        try:
            dns_servers, dns_relay = _dns(cfg)
        except ValueError as exc:
            _err("config error: dns.upstream: %s" % exc)
            return 2
        proxy = cfg.proxy if cfg.proxy.type != "none" else None
        stack_config = config.stack_config(cfg, host_addresses=interface_addresses(), dns_upstream=dns_servers)
        runtime = Runtime(config.link_config(cfg), stack_config, opener=opener, endpoint=endpoint,
                          line_budget=budget, coalesce=coalesce, stats_interval=cfg.monitoring.stats_interval,
                          tap=tap, connection_log=cfg.logging.connection_log, baudrate=cfg.serial.baudrate,
                          connect_timeout=cfg.proxy.connect_timeout, proxy=proxy, audit=audit)
        if dns_relay is not None:
            runtime.dns_relay = dns_relay(runtime.post)
        if args.config:
            runtime.reloader = Reloader(lambda: _load(args, settings)[0], cfg, _dns, interface_addresses,
                                        args.config)
            runtime.reloader.started(dns_servers)
        try:
            runtime.metrics_server = _metrics_server(cfg, runtime)
        except OSError as exc:
            _err("cannot serve metrics on %s: %s" % (cfg.monitoring.metrics_listen, exc.strerror or exc))
            return 1
        _install_signals(runtime)
        services = config.describe_services(cfg.services)
        log.info("pyslirp %s on %s: gateway %s, client %s, services: %s", __version__,
                 endpoint.name if endpoint is not None else port, cfg.network.local_ip, cfg.network.remote_ip,
                 services)
        if cfg.udp_services:
            log.info("UDP services: %s", ", ".join("%d -> %s:%d" % (s.port, s.host, s.target_port)
                                                   for s in cfg.udp_services))
        if cfg.outbound.enabled:
            log.info("outbound: on, via %s, allow %s%s", cfg.proxy.type if cfg.outbound.via == "proxy" else "direct",
                     ", ".join(cfg.outbound.allow) or "nothing",
                     ", deny " + ", ".join(cfg.outbound.deny) if cfg.outbound.deny else "")
        if dns_servers:
            log.info("DNS forwarder on %s:53 -> %s", cfg.network.local_ip,
                     ", ".join("%s:%d" % hp for hp in dns_servers))
        if runtime.metrics_server is not None:
            host, mport = runtime.metrics_server.address
            log.info("metrics on http://%s:%d/metrics (and /metrics.json)",
                     "[%s]" % host if ":" in host else host, mport)
        if audit is not None:
            log.info("audit log: %s", audit.path)
        if port == "pty":
            print("pty: %s" % endpoint.path, flush=True)
        endpoint = None     # the runtime owns it now
        return runtime.run()
    finally:
        if endpoint is not None:
            endpoint.close()
        if pcap_file is not None:
            pcap_file.close()


def _install_signals(runtime):
    def stop(signum, frame):
        runtime.request_stop()

    def hup(signum, frame):
        runtime.request_reload()

    def usr1(signum, frame):
        runtime.request_snapshot_log()

    signal.signal(signal.SIGINT, stop)
    signal.signal(signal.SIGTERM, stop)
    if hasattr(signal, "SIGHUP"):
        signal.signal(signal.SIGHUP, hup)
    if hasattr(signal, "SIGUSR1"):
        signal.signal(signal.SIGUSR1, usr1)
