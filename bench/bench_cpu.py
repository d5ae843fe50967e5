#!/usr/bin/env python3
"""CPU benchmark: CPU per MiB, connection rates, idle cost and start-up time, through the real pppd.

Usage: python3 bench/bench_cpu.py [--mib 20] [--conns 1000] [--idle-seconds 30] [--python pypy3]
                                  [--only pyslirp|slirp] [--skip PHASE,...] [--set SECTION.KEY=VALUE ...]
                                  [--json FILE] [--keep]

The client is Linux pppd in a User-Mode Linux guest (tests/e2e/), its serial line relayed unpaced to a pty.  On the
other end runs pyslirp (``pyslirp.py --pty``, under ``--python``, default this interpreter) and then, where it is
installed, the original SLiRP (``slirp-fullbolt ppp``, Debian package ``slirp``) on a pty's slave, so both meet
the same relay, the same guest and the same loopback services (a sink, a source of random bytes, an echo server).
One guest boot per gateway runs every phase in turn; the host samples the gateway's process between them:

1. idle: the link up and silent for ``--idle-seconds``: the gateway's CPU as a fraction of one core.
2. sequential: ``--conns`` connections one after another (connect, close): connections/s, and the median time
   connect() takes in the guest (its SYN out to the SYN-ACK in, the line both ways included).
3. echo: ``--conns`` times open, a 2-byte echo, close: connections/s.
4. concurrent: ``--conns`` connections open at once, each echoing 2 bytes while all are open; then all closed.
   Peak RSS of the gateway (VmHWM) and its thread count before, with all open, and after the churn.
5. bulk: the guest downloads ``--mib`` MiB, then uploads ``--mib`` MiB: MB/s measured by the receiver and the
   gateway's CPU seconds (user + system of the whole process, all threads, from /proc/<pid>/stat) per MiB,
   between the service's accept and the end of the transfer.

Separately, without a guest: ``start-up``: from starting ``pyslirp.py --stdio`` to its first LCP
Configure-Request on standard output (interpreter start and imports included), the median of 5 runs.

pyslirp runs with its defaults (VJ and Deflate offered; pppd takes both, SLiRP has no Deflate) and
``[limits]`` raised to let ``--conns`` connections be open at once.  Nothing here talks to anything but 127.0.0.1
and the guest's own PPP link.
"""

import argparse
import json
import os
import select
import socket
import statistics
import subprocess
import sys
import tempfile
import time

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)
sys.path.insert(0, HERE)

import bench_link  # noqa: E402  (the guest side of bulk transfers, the loopback services)

MIB = 1 << 20
SLIRP = "slirp-fullbolt"
PHASES = ("idle", "sequential", "echo", "concurrent", "bulk")


# ======================================================================= guest side (runs inside UML)

def guest_connections(mode, host, port, count, out):
    """``sequential`` (connect, close), ``echo`` (connect, 2 bytes there and back, close) or ``concurrent``."""
    import resource
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    want = max(soft, count + 64)
    if hard != resource.RLIM_INFINITY and hard < want:
        hard = want
    resource.setrlimit(resource.RLIMIT_NOFILE, (want, hard))
    result = {"kind": mode, "count": count, "errors": 0}
    connect_times = []
    t0 = time.monotonic()
    if mode in ("sequential", "echo"):
        for i in range(count):
            s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
            s.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            s.settimeout(30)
            try:
                c = time.monotonic()
                s.connect((host, port))
                connect_times.append(time.monotonic() - c)
                if mode == "echo":
                    msg = b"%02d" % (i % 100)
                    s.sendall(msg)
                    if bench_link._recv_exact(s, 2) != msg:
                        result["errors"] += 1
            except OSError:
                result["errors"] += 1
            s.close()
    else:
        socks = []
        for i in range(count):
            s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
            s.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            s.settimeout(60)
            try:
                s.connect((host, port))
                socks.append(s)
            except OSError:
                result["errors"] += 1
                s.close()
        result["opened"] = len(socks)
        result["open_s"] = time.monotonic() - t0
        good = 0
        for i, s in enumerate(socks):
            msg = b"%02d" % (i % 100)
            try:
                s.sendall(msg)
                if bench_link._recv_exact(s, 2) == msg:
                    good += 1
            except OSError:
                pass
        result["echoed"] = good
        for s in socks:
            s.close()
    result["seconds"] = time.monotonic() - t0
    if connect_times:
        result["connect_median_ms"] = 1000 * statistics.median(connect_times)
        result["connect_p90_ms"] = 1000 * bench_link.percentile(connect_times, 0.9)
    bench_link._dump(out, result)


def guest_main(argv):
    p = argparse.ArgumentParser(prog="bench_cpu.py --guest")
    p.add_argument("mode", choices=("sequential", "echo", "concurrent"))
    p.add_argument("--host", required=True)
    p.add_argument("--port", type=int, required=True)
    p.add_argument("--count", type=int, default=1000)
    p.add_argument("--out", required=True)
    a = p.parse_args(argv)
    guest_connections(a.mode, a.host, a.port, a.count, a.out)
    return 0


# ======================================================================= host side

def proc_status(pid):
    """VmHWM and VmRSS in MB and the thread count of ``pid``, from /proc/<pid>/status."""
    out = {}
    with open("/proc/%d/status" % pid) as f:
        for line in f:
            key, _, value = line.partition(":")
            if key in ("VmHWM", "VmRSS"):
                out[key] = int(value.split()[0]) / 1024.0
            elif key == "Threads":
                out[key] = int(value)
    return out


class Services(bench_link.Services):
    """bench_link's sink, source and echo, with a listen backlog that takes a burst of connections."""

    def __init__(self, cpu_pid=None):
        bench_link.Services.__init__(self, cpu_pid)
        for ls in self._socks:
            ls.listen(2048)

    def _run(self, handler, conn):
        if handler == self._echo:
            # Thousands of short echo connections: no /proc reads, no records.
            try:
                self._echo(conn, {})
            except OSError:
                pass
            finally:
                conn.close()
            return
        bench_link.Services._run(self, handler, conn)


class Slirp(object):
    """``slirp-fullbolt ppp`` on a pty's slave (its standard input and output); the relay holds the master.

    SLiRP reaches the host's loopback at 10.0.2.2 and takes no configuration here: HOME is the run directory, so
    no ~/.slirprc applies.
    """

    host = "10.0.2.2"

    def __init__(self, rundir):
        from e2e import uml
        self.rundir = rundir
        os.makedirs(rundir, exist_ok=True)
        master, slave = os.openpty()
        uml.set_raw(master)
        uml.set_raw(slave)
        self.master = master
        self.log_path = os.path.join(rundir, "slirp.log")
        with open(self.log_path, "wb") as err:
            self.proc = subprocess.Popen([SLIRP, "ppp"], stdin=slave, stdout=slave, stderr=err, cwd=rundir,
                                         env=dict(os.environ, HOME=rundir), start_new_session=True,
                                         close_fds=True)
        os.close(slave)
        time.sleep(0.5)

    def open_tty(self):
        return os.dup(self.master)

    def service_port(self, services, name):
        return services.ports[name]

    def stop(self):
        self.kill()

    def kill(self):
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(10)
        if self.master is not None:
            os.close(self.master)
            self.master = None

    def diagnostics(self):
        with open(self.log_path, "r", errors="replace") as f:
            return "--- slirp ---\n" + f.read()[-3000:]


SERVICE_PORTS = {"sink": 5001, "source": 5002, "echo": 5003}


def pyslirp_config(services, args):
    cfg = {"services": {
        "5001": {"host": "127.0.0.1", "port": services.ports["sink"], "name": "sink"},
        "5002": {"host": "127.0.0.1", "port": services.ports["source"], "name": "source"},
        "5003": {"host": "127.0.0.1", "port": services.ports["echo"], "name": "echo"},
    }, "limits": {"max_connections": max(64, args.conns + 64), "max_per_service": max(16, args.conns + 64),
                  # The connection phases measure the gateway, not the SYN-rate limit (20/s by default).
                  "new_connections_per_second": 10000, "burst": 10000, "max_half_open": max(32, args.conns + 64)},
        "logging": {"connection_log": False}}
    for item in args.set:
        key, _, value = item.partition("=")
        section, _, name = key.partition(".")
        try:
            value = int(value)
        except ValueError:
            if value in ("true", "false"):
                value = value == "true"
        cfg.setdefault(section, {})[name] = value
    return cfg


class Run(object):
    """One gateway (pyslirp or SLiRP), one guest, every phase."""

    def __init__(self, bench, kind):
        self.bench = bench
        self.args = bench.args
        self.kind = kind
        self.out = {}
        self.spy = None

    def guest_cmd(self, script, mode, port, outname, **kw):
        cmd = '$PYTHON %s %s --host %s --port %d --out "$RESULTS/%s"' % (
            os.path.join(HERE, script), mode, self.host, port, outname)
        for k, v in kw.items():
            cmd += " --%s %s" % (k, v)
        return cmd

    def script(self):
        a = self.args
        n = a.mib * MIB
        # SLiRP asks for an address for itself (0.0.0.0): pppd gives it the one SLiRP answers at.
        pppd = "pppd_start pppd noauth" + (" 10.0.2.15:10.0.2.2" if self.kind == "slirp" else "")
        parts = [pppd, "wait_ppp_up 30 pppd || exit 1", "sleep 2", "mark up"]
        if "idle" in a.phases:
            parts += ["mark idle0", "sleep %d" % a.idle_seconds, "mark idle1"]
        for mode in ("sequential", "echo", "concurrent"):
            if mode in a.phases:
                parts += ["mark %s0" % mode,
                          self.guest_cmd("bench_cpu.py --guest", mode, self.port("echo"), "%s.json" % mode,
                                         count=a.conns),
                          "mark %s1" % mode, "wait_host_mark %s 60" % mode]
        if "bulk" in a.phases:
            parts += [self.guest_cmd("bench_link.py --guest", "download", self.port("source"), "dl.json", bytes=n),
                      self.guest_cmd("bench_link.py --guest", "upload", self.port("sink"), "ul.json", bytes=n)]
        parts += ["pppd_stop pppd"]
        return "\n".join(parts)

    def port(self, name):
        if self.kind == "slirp":
            return self.services.ports[name]
        return SERVICE_PORTS[name]

    def run(self):
        from e2e import uml
        a = self.args
        lab = uml.Lab(os.path.join(self.bench.basedir, self.kind))
        os.makedirs(lab.basedir, exist_ok=True)
        self.services = services = Services()
        gateway = None
        try:
            if self.kind == "slirp":
                gateway = Slirp(os.path.join(lab.basedir, "slirp"))
                self.host = Slirp.host
            else:
                gateway = uml.Pyslirp(os.path.join(lab.basedir, "pyslirp"), pyslirp_config(services, a),
                                      debug=False)
                gateway.cmd[0] = a.python
                if a.profile == "cprofile":
                    gateway.cmd[1:1] = [os.path.join(HERE, "profile_pyslirp.py"), a.profile_out + ".pstats"]
                lab.slirps.append(gateway)
                gateway.start()
                self.host = "10.0.0.1"
            pid = gateway.proc.pid
            if a.profile == "py-spy" and self.kind == "pyslirp":
                self.spy = subprocess.Popen(["py-spy", "record", "--pid", str(pid), "--rate", "250", "--format",
                                             "raw", "--output", a.profile_out + ".txt", "--nonblocking"],
                                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
            services.cpu_pid = pid
            timeout = 120 + a.idle_seconds + a.conns * 0.2 + a.mib * 4
            guest = lab.boot_guest(self.script(), tty_fd=gateway.open_tty(), timeout=timeout, name="guest")
            self.sample_phases(guest, pid)
            res = guest.wait()
            res.check_ran()
            self.collect(res, services)
            return self.out
        except Exception:
            sys.stderr.write(lab.diagnostics() + "\n")
            if gateway is not None and self.kind == "slirp":
                sys.stderr.write(gateway.diagnostics() + "\n")
            raise
        finally:
            if gateway is not None:
                if a.profile and self.kind == "pyslirp":
                    gateway.stop()          # a clean exit: the profile is written on the way out
                    if self.spy is not None:
                        self.spy.wait(30)
                gateway.kill()
            services.close()
            lab.close()

    def sample_phases(self, guest, pid):
        a = self.args
        cpu = bench_link.cpu_seconds
        if not guest.wait_mark("up", 90):
            return
        self.out["status_up"] = proc_status(pid)
        if "idle" in a.phases and guest.wait_mark("idle0", 30):
            c0, t0 = cpu(pid), time.monotonic()
            if guest.wait_mark("idle1", a.idle_seconds + 30):
                c1, t1 = cpu(pid), time.monotonic()
                self.out["idle"] = {"seconds": t1 - t0, "cpu_s": c1 - c0, "core_percent": 100 * (c1 - c0) / (t1 - t0)}
        for mode in ("sequential", "echo", "concurrent"):
            if mode not in a.phases:
                continue
            if not guest.wait_mark(mode + "0", 120):
                return
            c0 = cpu(pid)
            peak = proc_status(pid)
            # While the connections are open, keep the highest thread count seen.
            while not guest.wait_mark(mode + "1", 0.2):
                if not guest.running():
                    return
                st = proc_status(pid)
                if st.get("Threads", 0) > peak.get("Threads", 0):
                    peak["Threads"] = st["Threads"]
            c1 = cpu(pid)
            rec = {"cpu_s": c1 - c0, "peak_threads": peak.get("Threads")}
            if mode == "concurrent":
                rec["status_all_open"] = proc_status(pid)
                # The thread count after the guest closed them all: back to idle (pyslirp keeps up to two
                # idle service threads from the first connection on), or unchanged for a second.
                t = time.monotonic()
                idle = self.out["status_up"].get("Threads")
                st = proc_status(pid)
                last, since = st.get("Threads"), t
                while st.get("Threads") > idle and time.monotonic() - since < 1.0 and time.monotonic() - t < 20:
                    time.sleep(0.1)
                    st = proc_status(pid)
                    if st.get("Threads") != last:
                        last, since = st.get("Threads"), time.monotonic()
                rec["status_after"] = st
                rec["threads_back_s"] = (since if st.get("Threads") > idle else time.monotonic()) - t
            self.out.setdefault("cpu", {})[mode] = rec
            guest.mark(mode)

    def collect(self, res, services):
        a = self.args
        for mode in ("sequential", "echo", "concurrent"):
            if mode in a.phases:
                rec = self.bench.load(res, "%s.json" % mode)
                rec.update(self.out.get("cpu", {}).get(mode, {}))
                rec["per_s"] = rec["count"] / rec["seconds"]
                self.out[mode] = rec
        if "bulk" in a.phases:
            n = a.mib * MIB
            for key, name, kind in (("download", "dl.json", "source"), ("upload", "ul.json", "sink")):
                rec = self.bench.load(res, name)
                svc = services.wait_for(kind)
                if rec["bytes"] < n or not svc:
                    raise RuntimeError("%s incomplete: %r" % (key, rec))
                cpu = None
                if svc[0]["cpu0"] is not None and svc[0]["cpu1"] is not None:
                    cpu = (svc[0]["cpu1"] - svc[0]["cpu0"]) / (n / float(MIB))
                self.out[key] = {"MB_per_s": rec["bytes"] / (rec["end"] - rec["t0"]) / 1e6, "cpu_s_per_MiB": cpu}


def interpreter_start(python, runs=5):
    """Seconds the bare interpreter takes to start and exit (``python -c pass``): median of ``runs``."""
    times = []
    for _ in range(runs):
        t0 = time.monotonic()
        subprocess.call([python, "-c", "pass"])
        times.append(time.monotonic() - t0)
    return statistics.median(times)


def startup_time(python, runs=5, bytecode=True):
    """Seconds from starting ``pyslirp.py --stdio`` to its first LCP Configure-Request: median of ``runs``.

    It runs a copy of pyslirp.py and pyslirp/ in a temporary directory.  ``bytecode``: with the byte-code
    compiled beforehand (``compileall``), as an installed copy has it; else compiled from source at every
    start (PYTHONDONTWRITEBYTECODE, as in a read-only checkout).
    """
    import shutil
    times = []
    tmp = tempfile.mkdtemp(prefix="pyslirp-start-")
    shutil.copy(os.path.join(ROOT, "pyslirp.py"), tmp)
    shutil.copytree(os.path.join(ROOT, "pyslirp"), os.path.join(tmp, "pyslirp"),
                    ignore=shutil.ignore_patterns("__pycache__"))
    env = dict(os.environ, PYTHONDONTWRITEBYTECODE="1")
    if bytecode:
        subprocess.check_call([python, "-m", "compileall", "-q", os.path.join(tmp, "pyslirp"),
                               os.path.join(tmp, "pyslirp.py")], env=dict(os.environ, PYTHONDONTWRITEBYTECODE=""),
                              stdout=subprocess.DEVNULL)
    cfg = os.path.join(tmp, "pyslirp.toml")
    with open(cfg, "w") as f:
        f.write("[services.22]\nhost = \"127.0.0.1\"\nport = 22\n")
    # FF 03 C0 21 01 (LCP Configure-Request) with the default ACCM escaping of 03 and 01.
    want = b"\xff\x7d\x23\xc0\x21\x7d\x21"
    for _ in range(runs):
        t0 = time.monotonic()
        p = subprocess.Popen([python, os.path.join(tmp, "pyslirp.py"), "--stdio", "-c", cfg],
                             stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, env=env)
        buf = b""
        try:
            while want not in buf and time.monotonic() - t0 < 10:
                r, _, _ = select.select([p.stdout], [], [], 0.5)
                if r:
                    data = os.read(p.stdout.fileno(), 4096)
                    if not data:
                        break
                    buf += data
            if want in buf:
                times.append(time.monotonic() - t0)
        finally:
            p.kill()
            p.wait()
    shutil.rmtree(tmp, ignore_errors=True)
    return statistics.median(times) if times else None


class Bench(object):
    def __init__(self, args):
        self.args = args
        self.basedir = tempfile.mkdtemp(prefix="pyslirp-bench-cpu-")
        self.results = {"python": args.python, "mib": args.mib, "conns": args.conns, "settings": args.set}

    def load(self, res, name):
        text = res.read(name)
        if text is None:
            raise RuntimeError("the guest wrote no %s:\n%s" % (name, res.diagnostics()))
        return json.loads(text)

    def run(self):
        a = self.args
        if "startup" in a.phases:
            self.results["startup_s"] = startup_time(a.python)
            self.results["startup_source_s"] = startup_time(a.python, bytecode=False)
            self.results["interpreter_s"] = interpreter_start(a.python)
        kinds = []
        if a.only in (None, "pyslirp"):
            kinds.append("pyslirp")
        if a.only in (None, "slirp"):
            if subprocess.call(["sh", "-c", "command -v %s" % SLIRP], stdout=subprocess.DEVNULL) == 0:
                kinds.append("slirp")
            else:
                sys.stderr.write("%s is not installed: pyslirp only\n" % SLIRP)
        for kind in kinds:
            if set(a.phases) - {"startup"}:
                self.results[kind] = Run(self, kind).run()

    def report(self):
        r = self.results
        a = self.args
        lines = ["pyslirp CPU benchmark: Linux pppd in a UML guest, unpaced pty line; pyslirp under %s%s" % (
            a.python, " (settings: %s)" % ", ".join(r["settings"]) if r["settings"] else "")]
        if r.get("startup_s") is not None:
            lines.append("start-up: %.3f s from exec to the first LCP Configure-Request (median of 5); the bare "
                         "interpreter starts and exits in %.3f s, so %.3f s from import to Configure-Request"
                         % (r["startup_s"], r["interpreter_s"], r["startup_s"] - r["interpreter_s"]))
            lines.append("          without byte-code (compiled from source at every start): %.3f s, %.3f s from "
                         "import" % (r["startup_source_s"], r["startup_source_s"] - r["interpreter_s"]))
        kinds = [k for k in ("pyslirp", "slirp") if k in r]
        for kind in kinds:
            x = r[kind]
            lines.append("%s:" % ("pyslirp" if kind == "pyslirp" else "SLiRP (%s ppp)" % SLIRP))
            if "download" in x:
                lines.append("  bulk %d MiB: download %.2f MB/s, %.4f CPU s/MiB; upload %.2f MB/s, %.4f CPU s/MiB" % (
                    a.mib, x["download"]["MB_per_s"], x["download"]["cpu_s_per_MiB"] or float("nan"),
                    x["upload"]["MB_per_s"], x["upload"]["cpu_s_per_MiB"] or float("nan")))
            if "idle" in x:
                lines.append("  idle link: %.3f%% of a core (%.2f CPU s in %.0f s)" % (
                    x["idle"]["core_percent"], x["idle"]["cpu_s"], x["idle"]["seconds"]))
            if "sequential" in x:
                s = x["sequential"]
                lines.append("  %d connections one after another: %.1f s, %.0f/s, %d errors, %.4f CPU s each" % (
                    s["count"], s["seconds"], s["per_s"], s["errors"], s["cpu_s"] / s["count"]))
                lines.append("    SYN to SYN-ACK (the guest's connect(), the line both ways included): median "
                             "%.2f ms, p90 %.2f ms" % (s["connect_median_ms"], s["connect_p90_ms"]))
            if "echo" in x:
                s = x["echo"]
                lines.append("  open, 2-byte echo, close: %.0f/s (%d errors), %.4f CPU s each; SYN to SYN-ACK "
                             "median %.2f ms, p90 %.2f ms" % (s["per_s"], s["errors"], s["cpu_s"] / s["count"],
                                                              s["connect_median_ms"], s["connect_p90_ms"]))
            if "concurrent" in x:
                s = x["concurrent"]
                up = x.get("status_up", {})
                lines.append("  %d at once: %d opened in %.1f s, %d echoed; peak RSS %.1f MB; threads %s idle, %s "
                             "peak, %s after (%.1f s after the close; pyslirp keeps up to two spare threads)" % (
                                 s["count"], s["opened"], s["open_s"], s["echoed"],
                                 s["status_after"].get("VmHWM", 0), up.get("Threads"), s.get("peak_threads"),
                                 s["status_after"].get("Threads"), s["threads_back_s"]))
        if len(kinds) == 2 and "download" in r["pyslirp"] and "download" in r["slirp"]:
            p, s = r["pyslirp"], r["slirp"]
            for key in ("download", "upload"):
                if p[key]["cpu_s_per_MiB"] and s[key]["cpu_s_per_MiB"]:
                    lines.append("  %s: pyslirp CPU/MiB = %.1fx SLiRP's, MB/s = %.2fx SLiRP's" % (
                        key, p[key]["cpu_s_per_MiB"] / s[key]["cpu_s_per_MiB"],
                        p[key]["MB_per_s"] / s[key]["MB_per_s"]))
        return "\n".join(lines)


def main(argv=None):
    argv = sys.argv[1:] if argv is None else argv
    if argv and argv[0] == "--guest":
        return guest_main(argv[1:])
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--mib", type=int, default=20, help="MiB each way in the bulk phase")
    p.add_argument("--conns", type=int, default=1000, help="connections in each connection phase")
    p.add_argument("--idle-seconds", type=int, default=30)
    p.add_argument("--python", default=sys.executable, help="the interpreter that runs pyslirp (e.g. pypy3)")
    p.add_argument("--only", choices=("pyslirp", "slirp"))
    p.add_argument("--phases", default="startup," + ",".join(PHASES),
                   help="comma-separated: startup, " + ", ".join(PHASES))
    p.add_argument("--set", action="append", default=[], metavar="SECTION.KEY=VALUE",
                   help="pyslirp configuration override, e.g. ppp.compression=none (repeatable)")
    p.add_argument("--profile", choices=("cprofile", "py-spy"),
                   help="profile pyslirp: cProfile in every thread (PREFIX.pstats) or py-spy (PREFIX.txt, "
                        "collapsed stacks); the figures are then not comparable")
    p.add_argument("--profile-out", default="pyslirp-profile", metavar="PREFIX")
    p.add_argument("--json", help="also write the figures to this file")
    p.add_argument("--keep", action="store_true", help="keep the run directories (printed)")
    a = p.parse_args(argv)
    a.phases = [x.strip() for x in a.phases.split(",") if x.strip()]
    a.profile_out = os.path.abspath(a.profile_out)
    sys.path.insert(0, os.path.join(ROOT, "tests"))
    from e2e import uml
    reason = uml.unavailable_reason()
    if reason and set(a.phases) - {"startup"}:
        sys.stderr.write("cannot run: %s\n" % reason)
        return 2
    bench = Bench(a)
    try:
        bench.run()
    finally:
        if a.keep:
            sys.stderr.write("run directories kept in %s\n" % bench.basedir)
        else:
            import shutil
            shutil.rmtree(bench.basedir, ignore_errors=True)
    print(bench.report())
    if a.json:
        with open(a.json, "w") as f:
            json.dump(bench.results, f, indent=1)
    return 0


if __name__ == "__main__":
    sys.exit(main())
