#!/usr/bin/env python3
"""Reliability benchmark: how pyslirp copes with a bad line, a lost line, a restarted service and garbage.

Usage: python3 bench/reliability.py [--only ROW[,ROW...]] [--seed N] [--fuzz-count N] [--keep]

Each row is its own function and its own pyslirp (and, but for the fuzz row, its own User-Mode Linux guest running
Linux pppd, tests/e2e/): the guest runs this same file (``--guest ...``) with the host's Python for its side.  The
serial line goes through pyslirp's link emulator (pyslirp/testing/linkemu.py, tests/e2e/linkrelay.py), seeded.

ber        200 kB down then 200 kB up at 115200 bit/s 8N1 with a bit error rate of 1e-5 each way: both intact
           (sha256), goodput from the first byte to the last as a fraction of the line (11,520 bytes/s); goal
           >= 0.80 each way.
cut        a 3 MB download on an unpaced line, cut for 10 s once 1.5 MB have crossed: intact, and the seconds
           from the line's return to the download's end; goal <= 2 s.
restart    an interactive session (an echo connection) while its service is stopped and started again on the
           same port: the old connection must end (EOF or reset, not hang), a new one must work; the seconds
           from the service's return to the first good answer.
fuzz       ``--fuzz-count`` (default 1,000,000) seeded random frames into a Core whose link is up: garbage HDLC,
           PPP frames of every protocol with random bodies, IPv4 packets with random or mutated headers, TCP
           segments to the mapped port; only counted drops may happen (no exception), and the link must still be
           up and answer a ping afterwards.  With atheris installed, as many coverage-guided inputs follow
           (bench/fuzz_atheris.py), for at most ``--atheris-seconds`` (120).
clients    1,000 connections open at once through ``pyslirp.py client -L`` (no guest: the client runs pyslirp
           with ``--exec``), to an echo service behind the server, each echoing its own 1 kB (checked), all held
           open until every one is done: the count echoed intact and the seconds, the peak RSS (VmHWM) of both
           processes, their thread counts idle and after the close.  The server's [limits] are raised to the
           connection count (max_connections, max_per_service, new_connections_per_second, burst;
           ``--clients-limits default`` keeps pyslirp's; ``--set`` applies on top).

Nothing here talks to anything but 127.0.0.1 and the guest's own PPP link.
"""

import argparse
import hashlib
import json
import os
import shlex
import signal
import socket
import subprocess
import sys
import time

from _common import HERE, ROOT, guest_json, parse_set, ppp_session_script, run_directory, uml_unavailable, use_e2e

LOCAL_IP = "10.0.0.1"
LINE_RATE = 11520.0         # bytes/s of 115200 bit/s 8N1


# ======================================================================= guest side (runs inside UML)

def _dump(path, obj):
    with open(path + ".tmp", "w") as f:
        json.dump(obj, f)
    os.rename(path + ".tmp", path)


def guest_download(port, out):
    """Receive to EOF; record wall-clock times of the connect, the first byte and the end, the count, sha256."""
    t0 = time.time()
    s = socket.create_connection((LOCAL_IP, port), timeout=120)
    s.settimeout(120)
    h, n, first = hashlib.sha256(), 0, None
    error = None
    try:
        while True:
            data = s.recv(65536)
            if not data:
                break
            if first is None:
                first = time.time()
            h.update(data)
            n += len(data)
    except OSError as exc:
        error = repr(exc)
    end = time.time()
    s.close()
    _dump(out, dict(t0=t0, first=first, end=end, bytes=n, sha256=h.hexdigest(), error=error))


def guest_upload(port, seed, size, out):
    """Send ``payload(seed, size)``, then read the sink's "<count> <sha256>" answer."""
    use_e2e()
    from e2e.services import payload
    data = payload(seed, size)
    t0 = time.time()
    s = socket.create_connection((LOCAL_IP, port), timeout=120)
    s.settimeout(120)
    s.sendall(data)
    s.shutdown(socket.SHUT_WR)
    reply = b""
    while not reply.endswith(b"\n"):
        chunk = s.recv(256)
        if not chunk:
            break
        reply += chunk
    end = time.time()
    s.close()
    _dump(out, dict(t0=t0, end=end, bytes=size, reply=reply.decode("ascii", "replace").strip(),
                    sha256=hashlib.sha256(data).hexdigest()))


def guest_capture(ifname, out):
    """Headers (80 bytes) of every IP packet on ``ifname`` both ways, as a pcap (LINKTYPE_RAW), until killed:
    what the guest's TCP sent and received, after PPP's decompression (pyslirp's --pcap has the frames as they
    crossed the line, VJ- and Deflate-compressed)."""
    import struct
    s = socket.socket(socket.AF_PACKET, socket.SOCK_DGRAM, socket.htons(0x0003))
    s.bind((ifname, 0))
    with open(out, "wb") as f:
        f.write(struct.pack("<IHHiIII", 0xa1b2c3d4, 2, 4, 0, 0, 80, 101))
        signal.signal(signal.SIGTERM, lambda *a: sys.exit(0))
        while True:
            data, _addr = s.recvfrom(65536)
            t = time.time()
            snap = data[:80]
            f.write(struct.pack("<IIII", int(t), int((t % 1) * 1e6), len(snap), len(data)) + snap)
            f.flush()


def guest_restart(port, results, out):
    """An echo session across a service restart, in step with the host through flag files in ``results``."""
    def flag(name):
        open(os.path.join(results, name), "w").close()

    def wait_flag(name, timeout):
        return _wait_for(lambda: os.path.exists(os.path.join(results, name)), timeout, 0.02)

    def exchange(sock, text):
        sock.sendall(text)
        got = b""
        while len(got) < len(text):
            chunk = sock.recv(4096)
            if not chunk:
                break
            got += chunk
        return got

    res = {"errors": []}
    s = socket.create_connection((LOCAL_IP, port), timeout=30)
    s.settimeout(30)
    res["before"] = exchange(s, b"before\n") == b"before\n"
    flag("stop-service")
    wait_flag("service-stopped", 30)
    # The old connection must end, not hang: EOF, or a reset.
    t = time.time()
    try:
        s.sendall(b"anyone?\n")
        data = s.recv(4096)
        res["old_end"] = "eof" if not data else "data %r" % data
    except ConnectionResetError:
        res["old_end"] = "reset"
    except socket.timeout:
        res["old_end"] = "timeout"
    except OSError as exc:
        res["old_end"] = repr(exc)
    res["old_end_after"] = time.time() - t
    s.close()
    flag("start-service")
    wait_flag("service-started", 30)
    back = time.time()
    while time.time() - back < 30:
        try:
            s2 = socket.create_connection((LOCAL_IP, port), timeout=5)
            s2.settimeout(5)
            ok = exchange(s2, b"after\n") == b"after\n"
            s2.close()
            if ok:
                res["after"] = True
                res["answered"] = time.time()
                break
        except OSError as exc:
            res["errors"].append(repr(exc))
            time.sleep(0.1)
    _dump(out, res)


def guest_main(argv):
    mode = argv[0]
    if mode == "download":
        guest_download(int(argv[1]), argv[2])
    elif mode == "upload":
        guest_upload(int(argv[1]), int(argv[2]), int(argv[3]), argv[4])
    elif mode == "capture":
        guest_capture(argv[1], argv[2])
    elif mode == "restart":
        guest_restart(int(argv[1]), argv[2], argv[3])
    else:
        raise SystemExit("unknown guest mode %r" % mode)
    return 0


# ======================================================================= host side

def _e2e():
    use_e2e()
    from e2e import linkrelay, services, uml
    return uml, services, linkrelay


class Session(object):
    """One pyslirp and one guest running ``body`` between pppd up and down (see ``run``)."""

    debug = False
    pcap = False            # ``--pcap``: pyslirp writes RUNDIR/ber/pyslirp/pyslirp.pcap (with --keep)
    settings = ()           # "SECTION.KEY=VALUE" overrides for every row's pyslirp

    def __init__(self, basedir, name, config, body, relay_factory=None, timeout=240):
        uml, _, _ = _e2e()
        parse_set(self.settings, config)
        self.lab = uml.Lab(os.path.join(basedir, name))
        os.makedirs(self.lab.basedir, exist_ok=True)
        self.slirp = self.lab.start_pyslirp(config, debug=self.debug, pcap=self.pcap)
        script = ppp_session_script(body)
        kw = {"relay_factory": relay_factory} if relay_factory is not None else {}
        self.guest = self.lab.boot_guest(script, slirp=self.slirp, timeout=timeout, name="guest", **kw)

    def finish(self):
        res = self.guest.wait()
        res.check_ran()
        self.slirp.stop()
        return res

    def close(self):
        self.lab.close()


def guest_cmd(*args):
    return "$PYTHON %s --guest %s" % (os.path.abspath(__file__), " ".join(str(a) for a in args))


def row_ber(args):
    """200 kB each way at 115200 with BER 1e-5."""
    uml, services, linkrelay = _e2e()
    from pyslirp.testing.linkemu import Impairments
    size = 200000
    source = services.PayloadSource(seed=args.seed, size=size)
    sink = services.HashSink()
    config = {"services": {"5001": {"host": "127.0.0.1", "port": sink.port, "name": "sink"},
                           "5002": {"host": "127.0.0.1", "port": source.port, "name": "source"}},
              "serial": {"baudrate": 115200}}
    imp = Impairments(baud=115200, ber=args.ber)
    # The guest's TCP counters around each transfer (nstat: absolute values, history left alone).
    capture = [guest_cmd("capture", "ppp0", '"$RESULTS/guest.pcap"') + " & CAPTURE=$!"] if args.pcap else []
    body = "\n".join(capture + ['nstat -asz > "$RESULTS/nstat0.txt" 2>/dev/null',
                      guest_cmd("download", 5002, '"$RESULTS/dl.json"'),
                      'nstat -asz > "$RESULTS/nstat1.txt" 2>/dev/null',
                      guest_cmd("upload", 5001, args.seed + 1, size, '"$RESULTS/ul.json"'),
                      'nstat -asz > "$RESULTS/nstat2.txt" 2>/dev/null'] + (['kill $CAPTURE'] if args.pcap else []))
    s = Session(args.basedir, "ber", config, body, linkrelay.EmulatedRelay.factory(imp, seed=args.seed))
    try:
        res = s.finish()
        dl, ul = guest_json(res, "dl.json"), guest_json(res, "ul.json")
        counters = s.guest.relay.counters
        nstat = [_nstat(res.read("nstat%d.txt" % i)) for i in range(3)]
    finally:
        source.stop()
        sink.stop()
        s.close()
    dl_ok = dl["bytes"] == size and dl["sha256"] == source.sha256
    ul_ok = ul["reply"] == "%d %s" % (size, ul["sha256"])
    dl_frac = size / (dl["end"] - dl["first"]) / LINE_RATE if dl_ok else 0.0
    ul_frac = size / (ul["end"] - ul["t0"]) / LINE_RATE if ul_ok else 0.0
    flips = counters["to_guest"]["bits_flipped"], counters["from_guest"]["bits_flipped"]
    guest_tcp = {"down": _nstat_delta(nstat[0], nstat[1]), "up": _nstat_delta(nstat[1], nstat[2])}
    if args.verbose:
        for phase in ("down", "up"):
            sys.stderr.write("guest TCP counters during the %s: %s\n" % (phase, " ".join(
                "%s=%d" % kv for kv in sorted(guest_tcp[phase].items()))))
    return dict(ok=dl_ok and ul_ok and dl_frac >= 0.8 and ul_frac >= 0.8,
                text="down %.2f, up %.2f of the line (%s; %d + %d bits flipped)" % (
                    dl_frac, ul_frac, "intact" if dl_ok and ul_ok else "NOT INTACT", flips[0], flips[1]),
                down=dl_frac, up=ul_frac, intact=dl_ok and ul_ok, bits_flipped=flips, guest_tcp=guest_tcp)


GUEST_COUNTERS = ("TcpRetransSegs", "TcpExtTCPTimeouts", "TcpExtTCPLossProbes", "TcpExtTCPLossProbeRecovery",
                  "TcpExtTCPSackRecovery", "TcpExtTCPFastRetrans", "TcpExtTCPLostRetransmit",
                  "TcpExtTCPSlowStartRetrans", "TcpExtTCPSpuriousRTOs", "TcpExtTCPDSACKRecv",
                  "TcpExtTCPDSACKOldSent", "TcpExtTCPDSACKOfoSent", "TcpExtTCPSACKReorder", "TcpExtTCPOFOQueue",
                  "TcpExtTCPRenoRecovery", "TcpExtTCPSpuriousRtxHostQueues", "TcpExtTCPAbortOnTimeout",
                  "TcpOutSegs", "TcpInSegs", "TcpInErrs", "TcpExtTCPSACKReneging", "TcpExtTCPLossUndo",
                  "TcpExtTCPFullUndo", "TcpExtTCPPartialUndo", "TcpExtTCPDSACKUndo")


def _nstat(text):
    """``nstat -asz`` output as {name: value} (empty if the guest has no nstat)."""
    out = {}
    for line in (text or "").splitlines():
        parts = line.split()
        if len(parts) >= 2 and parts[1].isdigit():
            out[parts[0]] = int(parts[1])
    return out


def _nstat_delta(before, after):
    return {k: after.get(k, 0) - before.get(k, 0) for k in GUEST_COUNTERS if k in after}


def row_cut(args):
    """A 10 s line cut in the middle of a 3 MB download (unpaced)."""
    uml, services, linkrelay = _e2e()
    from pyslirp.testing.linkemu import Impairments
    size = 3000000
    source = services.PayloadSource(seed=args.seed, size=size)
    config = {"services": {"5002": {"host": "127.0.0.1", "port": source.port, "name": "source"}}}
    body = guest_cmd("download", 5002, '"$RESULTS/dl.json"')
    factory = linkrelay.EmulatedRelay.factory(Impairments(), seed=args.seed, guest_pipe_size=0)
    s = Session(args.basedir, "cut", config, body, factory)
    try:
        relay = s.guest.relay
        deadline = time.monotonic() + 120
        while relay.bytes_to_guest < size // 2 and time.monotonic() < deadline and s.guest.running():
            time.sleep(0.005)
        cut_at = time.time()
        relay.cut(True)
        time.sleep(args.cut_seconds)
        relay.cut(False)
        restored = time.time()
        res = s.finish()
        dl = guest_json(res, "dl.json")
    finally:
        source.stop()
        s.close()
    ok = dl["bytes"] == size and dl["sha256"] == source.sha256
    after = dl["end"] - restored
    return dict(ok=ok and after <= 2.0,
                text="%s, done %.2f s after the line returned (%.1f s cut at %.2f s; %.2f s in all)" % (
                    "intact" if ok else "NOT INTACT", after, restored - cut_at, cut_at - dl["t0"],
                    dl["end"] - dl["t0"]),
                after=after, intact=ok)


def row_restart(args):
    """The service behind an open session is stopped and started again on the same port."""
    _, services, _ = _e2e()
    port = services.free_port()
    echo = services.EchoServer(port=port)
    config = {"services": {"7": {"host": "127.0.0.1", "port": port, "name": "echo"}}}
    body = guest_cmd("restart", 7, '"$RESULTS"', '"$RESULTS/restart.json"')
    s = Session(args.basedir, "restart", config, body)
    results = s.guest.rundir
    try:
        def wait_file(name, timeout=120):
            return _wait_for(lambda: os.path.exists(os.path.join(results, name)), timeout, 0.02)
        if not wait_file("stop-service"):
            raise RuntimeError("the guest never asked to stop the service")
        echo.stop()
        open(os.path.join(results, "service-stopped"), "w").close()
        if not wait_file("start-service"):
            raise RuntimeError("the guest never asked to start the service again")
        echo2 = services.EchoServer(port=port)
        back = time.time()
        open(os.path.join(results, "service-started"), "w").close()
        try:
            res = s.finish()
            out = guest_json(res, "restart.json")
        finally:
            echo2.stop()
    finally:
        s.close()
    ok = out.get("before") and out.get("after") and out.get("old_end") in ("eof", "reset")
    answered = out.get("answered", back) - back
    return dict(ok=bool(ok), text="old connection ended by %s after %.2f s; a new one answered %.2f s after the "
                                  "service returned" % (out.get("old_end"), out.get("old_end_after", 0), answered),
                detail=out)


def row_fuzz(args):
    """Seeded random frames and packets into a Core with the link up: only counted drops; then, if atheris is
    installed, as many coverage-guided inputs (bench/fuzz_atheris.py)."""
    use_e2e()
    from pyslirp.testing import fuzz
    t0 = time.monotonic()
    report = fuzz.fuzz_core(args.fuzz_count, seed=args.seed)
    elapsed = time.monotonic() - t0
    drops = sum(report.drops.values())
    text = "seeded: %d inputs in %.0f s, %d exceptions, %d counted drops, link up %s, ping %s" % (
        report.inputs, elapsed, len(report.exceptions), drops, report.link_up, "answered" if report.ping else "LOST")
    ok = report.ok
    import importlib.util
    if importlib.util.find_spec("atheris") is None:
        text += "; atheris not installed"
    else:
        t0 = time.monotonic()
        res = subprocess.run([sys.executable, os.path.join(HERE, "fuzz_atheris.py"), "-runs=%d" % args.fuzz_count,
                              "-max_total_time=%d" % args.atheris_seconds, "-seed=%d" % args.seed], stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                             universal_newlines=True, cwd=args.basedir)
        lines = [x for x in res.stdout.splitlines() if x.startswith("atheris:")]
        crashed = "Uncaught Python exception" in res.stdout or "ERROR: libFuzzer" in res.stdout
        ok = ok and not crashed and bool(lines) and "answered" in lines[-1]
        text += "; atheris (coverage-guided): %s in %.0f s%s" % (
            lines[-1][len("atheris: "):] if lines else "no report", time.monotonic() - t0,
            ", CRASHED (rc %d)" % res.returncode if crashed else "")
    return dict(ok=ok, text=text, exceptions=report.exceptions[:5], drops=report.drops)


def row_clients(args):
    """``--clients`` (1,000) connections at once through ``pyslirp.py client -L`` to an echo service behind a
    pyslirp started by the client (``--exec "exec python3 pyslirp.py --stdio -c X"``); every echo checked."""
    _, services, _ = _e2e()
    from pyslirp.testing.load import concurrent_echo, proc_status
    n = args.clients
    need_fds = 2 * n + 64                       # this process: n client sockets and n echo connections
    if _raise_nofile(need_fds) < need_fds:
        raise RuntimeError("RLIMIT_NOFILE is below %d: ulimit -n %d" % (need_fds, need_fds))
    echo = services.EchoServer(backlog=n)
    rundir = os.path.join(args.basedir, "clients")
    os.makedirs(rundir)
    conf = os.path.join(rundir, "server.toml")
    with open(conf, "w") as f:
        f.write(_clients_server_config(n, args.clients_limits, echo.port, args.clients_baud, Session.settings))
    lport = services.free_port()
    script = os.path.join(ROOT, "pyslirp.py")
    server_cmd = "exec %s %s --stdio -c %s" % (shlex.quote(sys.executable), shlex.quote(script), shlex.quote(conf))
    log_path = os.path.join(rundir, "client.log")
    log_file = open(log_path, "wb")
    client = subprocess.Popen([sys.executable, script, "client", "--exec", server_cmd, "-L",
                               "%d:%s:7" % (lport, LOCAL_IP)],
                              stdin=subprocess.DEVNULL, stdout=log_file, stderr=subprocess.STDOUT,
                              start_new_session=True)
    try:
        if not _wait_for(lambda: "link up: we are" in _read(log_path) or client.poll() is not None, 60) \
                or client.poll() is not None:
            raise RuntimeError("the client's link did not come up:\n" + _read(log_path)[-2000:])
        server_pid = _child_pid(client.pid)
        pids = {"client": client.pid, "server": server_pid}
        # One connection first: the server keeps a spare connector thread from then on, part of its idle state.
        warm = concurrent_echo(1, ("127.0.0.1", lport), payload_size=64, timeout=30)
        if not warm.ok:
            raise RuntimeError("a first connection through the client failed: %s" % warm)
        time.sleep(1.0)
        idle = {k: proc_status(pid, "Threads") for k, pid in pids.items()}
        cpu0 = {k: _cpu_seconds(pid) for k, pid in pids.items()}
        report = concurrent_echo(n, ("127.0.0.1", lport), payload_size=args.clients_payload,
                                 timeout=args.clients_timeout, seed=args.seed)
        peak_open = echo.max_open
        cpu = {k: _cpu_seconds(pid) - cpu0[k] for k, pid in pids.items()}
        back = time.monotonic()
        settled = _wait_for(lambda: all(proc_status(pid, "Threads") <= idle[k] for k, pid in pids.items()), 60)
        to_idle = time.monotonic() - back
        after = {k: proc_status(pid, "Threads") for k, pid in pids.items()}
        peak = {k: proc_status(pid, "VmHWM") for k, pid in pids.items()}
        rss = {k: proc_status(pid, "VmRSS") for k, pid in pids.items()}
        client.send_signal(signal.SIGTERM)
        status = client.wait(30)
    finally:
        if client.poll() is None:
            os.killpg(client.pid, signal.SIGKILL)
            client.wait()
        log_file.close()
        echo.stop()
    logged = _read(log_path)
    problems = [x for x in logged.splitlines() if "Traceback" in x or " ERROR " in x or " WARNING " in x]
    ok = report.ok and peak_open >= n and settled and status == 0 and not problems
    text = ("%d/%d echoed intact in %.1f s (half by %.1f s; %d open at once at the echo service; CPU client "
            "%.1f s, server %.1f s); peak RSS client %.0f MB, server %.0f MB (%.0f / %.0f MB after); threads "
            "idle %d / %d, back to %d / %d %.1f s after the close%s%s" % (
                report.echoed, n, report.seconds, report.finished_s.get("p50", 0), peak_open, cpu["client"],
                cpu["server"], peak["client"] / 1024.0,
                      peak["server"] / 1024.0, rss["client"] / 1024.0, rss["server"] / 1024.0, idle["client"],
                      idle["server"], after["client"], after["server"], to_idle,
                      "; errors %s" % report.errors if report.errors else "",
                      "; %d warnings/errors logged, first: %s" % (len(problems), problems[0]) if problems else ""))
    return dict(ok=ok, text=text, report=report.as_dict(), peak_open=peak_open, idle_threads=idle,
                threads_after=after, seconds_to_idle=to_idle, cpu_seconds=cpu, peak_rss_kb=peak, rss_after_kb=rss,
                exit_status=status, limits=args.clients_limits, settings=list(Session.settings), logged=problems[:10])


def _clients_server_config(n, limits, echo_port, baud, settings=()):
    """The server's configuration (TOML): its line speed (standard output is paced at it), the echo service as
    port 7, (``limits`` "raised") room for ``n``, then the ``--set`` overrides."""
    from e2e.uml import toml_dumps
    config = {"serial": {"baudrate": baud},
              "services": {"7": {"host": "127.0.0.1", "port": echo_port, "name": "echo"}}}
    if limits == "raised":
        config["limits"] = {"max_connections": n, "max_per_service": n, "new_connections_per_second": n,
                            "burst": n}
    return toml_dumps(parse_set(settings, config))


def _raise_nofile(want):
    """Raise this process's soft RLIMIT_NOFILE towards ``want`` (children inherit it): the soft limit now."""
    import resource
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft != resource.RLIM_INFINITY and soft < want:
        soft = want if hard == resource.RLIM_INFINITY else min(want, hard)
        resource.setrlimit(resource.RLIMIT_NOFILE, (soft, hard))
    return soft


def _read(path):
    try:
        with open(path, "r", errors="replace") as f:
            return f.read()
    except OSError:
        return ""


def _wait_for(predicate, timeout, interval=0.1):
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        if predicate():
            return True
        time.sleep(interval)
    return predicate()


def _cpu_seconds(pid):
    """User and system CPU seconds process ``pid`` has used (all its threads), from /proc/PID/stat."""
    try:
        with open("/proc/%d/stat" % pid) as f:
            fields = f.read().rsplit(")", 1)[1].split()
    except (OSError, IndexError):
        return 0.0
    return (int(fields[11]) + int(fields[12])) / float(os.sysconf("SC_CLK_TCK"))


def _child_pid(pid):
    """The one child process of ``pid`` (the client's --exec server), from /proc."""
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                with open("/proc/%s/stat" % entry) as f:
                    fields = f.read().rsplit(")", 1)[1].split()
            except (OSError, IndexError):
                continue
            if int(fields[1]) == pid:
                return int(entry)
    raise RuntimeError("the client (pid %d) has no --exec child" % pid)


ROWS = [("ber", "200 kB each way, 115200, BER 1e-5", row_ber),
        ("cut", "10 s line cut mid 3 MB download", row_cut),
        ("restart", "service restarted mid-session", row_restart),
        ("fuzz", "fuzzed frames into the core", row_fuzz),
        ("clients", "1,000 concurrent connections", row_clients)]


def main(argv=None):
    argv = sys.argv[1:] if argv is None else argv
    if argv and argv[0] == "--guest":
        return guest_main(argv[1:])
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--only", help="rows to run, comma-separated (%s)" % ", ".join(r[0] for r in ROWS))
    p.add_argument("--seed", type=int, default=1)
    p.add_argument("--ber", type=float, default=1e-5)
    p.add_argument("--cut-seconds", type=float, default=10.0)
    p.add_argument("--fuzz-count", type=int, default=1000000)
    p.add_argument("--atheris-seconds", type=int, default=120, help="the coverage-guided run's time limit")
    p.add_argument("--clients", type=int, default=1000, help="connections of the clients row (1,000)")
    p.add_argument("--clients-payload", type=int, default=1024, help="bytes each of them echoes")
    p.add_argument("--clients-timeout", type=float, default=300.0, help="seconds for all of them to echo")
    p.add_argument("--clients-baud", type=int, default=4000000,
                   help="the clients row server's [serial] baudrate: its standard output is paced at it")
    p.add_argument("--clients-limits", choices=("raised", "default"), default="raised",
                   help="the server's [limits]: raised to --clients (max_connections, max_per_service, "
                        "new_connections_per_second, burst), or pyslirp's defaults")
    p.add_argument("--json", help="also write the figures to this file")
    p.add_argument("--keep", action="store_true", help="keep the run directories (printed)")
    p.add_argument("--set", action="append", default=[], metavar="SECTION.KEY=VALUE",
                   help="pyslirp configuration override of every row's pyslirp (the clients row: the server's), "
                        "e.g. ppp.compression=none (repeatable)")
    p.add_argument("--debug", action="store_true", help="run pyslirp with -d (slower: debug logging)")
    p.add_argument("--pcap", action="store_true", help="pyslirp writes a capture of its PPP link, the guest one of its "
                                                              "IP packets on ppp0 (guest.pcap; see --keep)")
    p.add_argument("-v", "--verbose", action="store_true", help="ber: print the guest's TCP counters")
    a = p.parse_args(argv)
    Session.debug = a.debug
    Session.pcap = a.pcap
    Session.settings = tuple(a.set)
    only = set(x.strip() for x in a.only.split(",")) if a.only else None
    rows = [r for r in ROWS if only is None or r[0] in only]
    if only and len(rows) != len(only):
        p.error("unknown rows: %s" % ", ".join(sorted(only - set(r[0] for r in ROWS))))
    if any(r[0] in ("ber", "cut", "restart") for r in rows):
        reason = uml_unavailable()
        if reason:
            sys.stderr.write("cannot run the pppd rows: %s\n" % reason)
            rows = [r for r in rows if r[0] not in ("ber", "cut", "restart")]
    results = {}
    lines = ["%-8s %-38s %-6s %s" % ("row", "what", "goal", "figures")]
    with run_directory("pyslirp-reliability-", a.keep) as a.basedir:
        for key, what, fn in rows:
            try:
                out = fn(a)
            except Exception as exc:
                sys.stderr.write("%s: %s\n" % (key, exc))       # the whole diagnostics
                first = (str(exc).splitlines() or [""])[0]
                out = dict(ok=False, text="ERROR %s: %s" % (type(exc).__name__, first))
            results[key] = out
            verdict = {True: "met", False: "MISSED", None: "-"}[out["ok"]]
            lines.append("%-8s %-38s %-6s %s" % (key, what, verdict, out["text"]))
            sys.stderr.write(lines[-1] + "\n")
    print("\n".join(lines))
    if a.json:
        with open(a.json, "w") as f:
            json.dump(results, f, indent=1, default=str)
    return 0


if __name__ == "__main__":
    sys.exit(main())
