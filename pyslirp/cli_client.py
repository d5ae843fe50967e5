"""The command line of the client role: ``pyslirp.py client [options] (PORT | --exec CMD | --stdio)``.

Theory of operation: parse the options, read the password file, bind every
local listener (so that a port in use is one line and exit 1 before any PPP
starts), open the line, and run :class:`~pyslirp.runtime.client.ClientRuntime`
around a :class:`~pyslirp.client_core.ClientCore`.  SIGINT/SIGTERM stop
cleanly (LCP Terminate-Request).  Errors are one line on standard error
starting with ``pyslirp client:``; exit codes are in EPILOG.
"""

import argparse
import ipaddress
import logging
import random
import signal
import sys

from pyslirp import __version__, compat, logsetup
from pyslirp.cli import prefix_error

log = logging.getLogger("pyslirp")

DESCRIPTION = """\
The other end of the link, in userspace: speak PPP as the client (pppd's role) over a serial
line, a program's standard input/output (--exec) or our own (--stdio), and carry local
connections over it: -L forwards a local port to HOST:HPORT beyond the server, -D is a local
SOCKS5 server whose CONNECTs go over the link. No root, no kernel PPP."""

EPILOG = """\
examples:
  pyslirp.py client --exec "ssh host pyslirp.py --stdio" -L 2222:10.0.0.1:22
  pyslirp.py client --exec "slirp-fullbolt ppp" --remote-ip 10.0.2.2 -L 8080:10.0.2.2:80
  pyslirp.py client /dev/ttyUSB0 -D 1080 --user alice --password-file ~/.ppp-secret

A refused connection is shown as the far side showed it: a RST closes the local connection at
once (SOCKS reply 05), an ICMP unreachable is SOCKS 03/04 (02 when prohibited), no answer within
--connect-timeout is SOCKS 04. Host names (-L HOST, SOCKS domain names) are looked up at the DNS
server the PPP server names in IPCP, over the link; one that does not resolve is SOCKS 04.

exit status: 0 stopped by SIGINT/SIGTERM, 1 runtime failure (the line or the command went away,
a local port that cannot be bound), 2 usage error, 3 no PPP link within --link-timeout,
4 authentication refused by the server, 5 the link went down after it was up."""

EXIT_RUNTIME = 1
EXIT_USAGE = 2


def _err(message):
    sys.stderr.write("pyslirp client: %s\n" % message)
    sys.stderr.flush()


def build_parser():
    p = argparse.ArgumentParser(prog="pyslirp client", description=DESCRIPTION, epilog=EPILOG,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.error = prefix_error(p, "pyslirp client")
    p.add_argument("port", nargs="?", metavar="PORT", help="serial device or pyserial URL")
    line = p.add_argument_group("line (instead of PORT)")
    line.add_argument("--exec", dest="exec_cmd", metavar="CMD",
                      help="run CMD (through the shell) and speak PPP on its standard input/output, like "
                           "pppd's pty option")
    line.add_argument("--stdio", action="store_true", help="PPP on our own standard input/output")
    line.add_argument("--baudrate", type=int, default=115200, metavar="N", help="serial line speed (PORT)")
    fwd = p.add_argument_group("forwarding")
    fwd.add_argument("-L", dest="forwards", action="append", default=[], metavar="[BIND:]LPORT:HOST:HPORT",
                     help="listen on BIND:LPORT (default 127.0.0.1); each connection goes over the link to "
                          "HOST:HPORT (repeatable)")
    fwd.add_argument("-D", dest="socks", action="append", default=[], metavar="[BIND:]PORT",
                     help="a SOCKS5 server (no authentication) on BIND:PORT (default 127.0.0.1) whose "
                          "CONNECTs go over the link (repeatable)")
    fwd.add_argument("--connect-timeout", type=int, default=30, metavar="S",
                     help="seconds for a connection over the link to be answered (default 30)")
    ppp = p.add_argument_group("PPP")
    ppp.add_argument("--user", metavar="NAME", help="authenticate as NAME (PAP or CHAP-MD5) if the server asks")
    ppp.add_argument("--password-file", metavar="FILE", help="the password: the first line of FILE")
    ppp.add_argument("--local-ip", metavar="A", help="the address to ask for (default: what the server assigns)")
    ppp.add_argument("--remote-ip", metavar="A",
                     help="the server's address to insist on (default: what it says; SLiRP needs 10.0.2.2)")
    ppp.add_argument("--mru", type=int, default=1500, metavar="N", help="MRU to ask for (default 1500)")
    ppp.add_argument("--no-vj", action="store_true", help="no Van Jacobson header compression")
    ppp.add_argument("--no-deflate", action="store_true", help="no Deflate compression (CCP)")
    ppp.add_argument("--lcp-echo-interval", type=int, default=30, metavar="S",
                     help="seconds between LCP Echo-Requests, 0 for none (default 30)")
    ppp.add_argument("--lcp-echo-failure", type=int, default=4, metavar="N",
                     help="unanswered Echo-Requests before the link is declared dead (default 4)")
    ppp.add_argument("--link-timeout", type=int, default=60, metavar="S",
                     help="give up (exit 3) when the link is not up after S seconds, 0 waits forever")
    out = p.add_argument_group("logging")
    verbosity = out.add_mutually_exclusive_group()
    verbosity.add_argument("-d", "--debug", action="store_true", help="log at debug level")
    verbosity.add_argument("-q", "--quiet", action="store_true", help="log warnings and errors only")
    out.add_argument("--log-file", metavar="FILE", help="also log to FILE")
    out.add_argument("--version", action="version", version="pyslirp %s" % __version__)
    return p


def _port(text, what):
    if not text.isdigit() or not 0 < int(text) < 65536:
        raise ValueError("%s: %r is not a port (1-65535)" % (what, text))
    return int(text)


def _ipv4(text, what):
    try:
        return str(ipaddress.IPv4Address(text))
    except ValueError:
        raise ValueError("%s: %r is not an IPv4 address" % (what, text))


def _split_bind(text):
    """``[BIND:]REST`` with BIND possibly ``[v6]``: (bind or None, REST parts)."""
    if text.startswith("["):
        end = text.find("]")
        if end < 0 or text[end + 1:end + 2] != ":":
            raise ValueError("bad bind address in %r" % text)
        return text[1:end], text[end + 2:].split(":")
    return None, text.split(":")


def _bind_and_fields(text, option, form, count):
    """``[BIND:]`` then ``count`` colon-separated fields -> (bind or None, fields)."""
    bind, parts = _split_bind(text)
    if bind is None and len(parts) == count + 1:
        bind, parts = parts[0], parts[1:]
    if len(parts) != count:
        raise ValueError("%s: expected %s, got %r" % (option, form, text))
    return bind, parts


def parse_forward(text):
    """-L ``[BIND:]LPORT:HOST:HPORT`` -> (bind, lport, host, hport)."""
    bind, parts = _bind_and_fields(text, "-L", "[BIND:]LPORT:HOST:HPORT", 3)
    lport = _port(parts[0], "-L")
    host = parts[1]
    if not host:
        raise ValueError("-L: empty HOST in %r" % text)
    try:
        host = _ipv4(host, "-L HOST")
    except ValueError:
        pass                    # a name: resolved over the link, at the server's DNS, per connection
    hport = _port(parts[2], "-L")
    return bind or "127.0.0.1", lport, host, hport


def parse_socks(text):
    """-D ``[BIND:]PORT`` -> (bind, port)."""
    bind, parts = _bind_and_fields(text, "-D", "[BIND:]PORT", 1)
    return bind or "127.0.0.1", _port(parts[0], "-D")


def _settings(args, parser):
    given = [name for name, on in (("PORT", args.port), ("--exec", args.exec_cmd), ("--stdio", args.stdio)) if on]
    if len(given) != 1:
        parser.error("name one line: PORT, --exec CMD or --stdio" if not given
                     else "%s cannot be combined" % " and ".join(given))
    try:
        forwards = [parse_forward(f) for f in args.forwards]
        socks = [parse_socks(d) for d in args.socks]
        local_ip = _ipv4(args.local_ip, "--local-ip") if args.local_ip else "0.0.0.0"
        remote_ip = _ipv4(args.remote_ip, "--remote-ip") if args.remote_ip else "0.0.0.0"
    except ValueError as exc:
        parser.error(str(exc))
    if args.connect_timeout <= 0:
        parser.error("--connect-timeout must be positive")
    if args.mru < 128 or args.mru > 16384:
        parser.error("--mru must be 128-16384")
    if args.password_file and not args.user:
        parser.error("--password-file needs --user")
    return forwards, socks, local_ip, remote_ip


def _password(path):
    with open(path, "rb") as f:
        line = f.readline()
    return line.rstrip(b"\r\n").decode("utf-8")


def main(argv=None):
    try:
        return _main(argv)
    except KeyboardInterrupt:
        return 0


def _main(argv):
    parser = build_parser()
    args = parser.parse_args(argv)
    forwards, socks_binds, local_ip, remote_ip = _settings(args, parser)
    password = ""
    if args.password_file:
        try:
            password = _password(args.password_file)
        except (OSError, UnicodeDecodeError) as exc:
            _err("cannot read the password file %s: %s" % (args.password_file, getattr(exc, "strerror", None)
                                                          or exc))
            return EXIT_USAGE
    if args.port and not compat.have_pyserial():
        _err(compat.PYSERIAL_HINT)
        return EXIT_USAGE
    if args.stdio:
        sys.stdout = sys.stderr         # standard output is the line now
    level = "debug" if args.debug else "warning" if args.quiet else "info"
    try:
        logsetup.setup(level, args.log_file or "", 10 * 1024 * 1024, 3)
    except OSError as exc:
        _err("cannot open the log file %s: %s" % (args.log_file, exc.strerror or exc))
        return EXIT_USAGE

    from pyslirp.client_core import ClientCore
    from pyslirp.net.client_stack import ClientStackConfig
    from pyslirp.ppp.link import LinkConfig
    from pyslirp.runtime import client as rc
    from pyslirp.runtime.endpoints import ExecEndpoint, PySerialEndpoint, StdioEndpoint

    listeners = []
    socks_socks = []
    try:
        for bind, lport, host, hport in forwards:
            try:
                listeners.append((rc.listen(bind, lport), (host, hport)))
            except OSError as exc:
                _err("-L %s:%d: cannot listen: %s" % (bind, lport, exc.strerror or exc))
                return EXIT_RUNTIME
        for bind, port in socks_binds:
            try:
                socks_socks.append(rc.listen(bind, port))
            except OSError as exc:
                _err("-D %s:%d: cannot listen: %s" % (bind, port, exc.strerror or exc))
                return EXIT_RUNTIME

        link_config = LinkConfig(role="client", local_ip=local_ip, remote_ip=remote_ip, answer="none",
                                 mru=args.mru, vj=not args.no_vj,
                                 compression="none" if args.no_deflate else "deflate",
                                 lcp_echo_interval=args.lcp_echo_interval, lcp_echo_failure=args.lcp_echo_failure,
                                 user=args.user or "", password=password)
        stack_config = ClientStackConfig(connect_timeout=args.connect_timeout)
        core = ClientCore(link_config, stack_config, random.SystemRandom())

        endpoint = opener = None
        if args.exec_cmd:
            try:
                endpoint = ExecEndpoint(args.exec_cmd)
            except OSError as exc:
                _err("--exec: cannot run %r: %s" % (args.exec_cmd, exc.strerror or exc))
                return EXIT_RUNTIME
        elif args.stdio:
            endpoint = StdioEndpoint()
        else:
            opener = _serial_opener(PySerialEndpoint, args.port, args.baudrate)
        paced = bool(args.port) and not args.port.startswith(("socket://", "loop://"))
        runtime = rc.ClientRuntime(core, forwards=listeners, socks_listeners=socks_socks,
                                   link_timeout=args.link_timeout, endpoint=endpoint, opener=opener,
                                   baudrate=args.baudrate if paced else 0)
        listeners = socks_socks = ()    # the runtime's now
        _install_signals(runtime)
        for listener in runtime.listeners:
            bind, lport = listener.sock.getsockname()[:2]
            if listener.use_socks:
                log.info("-D SOCKS5 on %s:%d", bind, lport)
            else:
                log.info("-L %s:%d -> %s:%d over the link", bind, lport, listener.target[0], listener.target[1])
        log.info("pyslirp %s client on %s", __version__, endpoint.name if endpoint is not None else args.port)
        return runtime.run()
    finally:
        for sock, _ in listeners:
            sock.close()
        for sock in socks_socks:
            sock.close()


def _serial_opener(endpoint_class, port, baudrate):
    def opener():
        return endpoint_class(port, baudrate, "none")
    return opener


def _install_signals(runtime):
    def stop(signum, frame):
        runtime.request_stop()

    signal.signal(signal.SIGINT, stop)
    signal.signal(signal.SIGTERM, stop)
    if hasattr(signal, "SIGHUP"):
        signal.signal(signal.SIGHUP, stop)
