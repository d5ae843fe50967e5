"""The flood scenario, shared by tests/test_e2e_flood.py (which judges it) and bench/bench_flood.py (which prints it).

Theory of operation
-------------------
One pyslirp, one guest, one PPP session, and an echo server on a free loopback port as the service on port 22.
The guest (tests/e2e/floodclients.py does its measuring) holds one echo session open for the whole run, timing a
short line every 200 ms, and goes through these phases, each marked so that the host can count the connections
the echo server accepted in it:

1. ``syn``: ``hping3 --flood -S -p 22 -s BASE`` from the client's own address (a new source port for every SYN:
   the guest's kernel answers each SYN-ACK with a reset), while five new connections are tried one after the
   other; then three more once the flood has stopped (``after_syn``).
2. ``spoof``: the same flood with ``--rand-source`` (spoofed source addresses, which pyslirp must drop and count:
   only the client's address is valid on the link), with five connections during it and three after.
3. ``burst``: 300 connections opened at the same moment; then three more after.

The host collects: the guest's JSON files, the accept counts per phase, hping3's own summary (packets sent),
pyslirp's figures from its loopback metrics server (``/metrics.json``) at the end, and its peak resident memory
(VmHWM).
"""

import json
import os
import re
import threading
import time
import urllib.request

from e2e import services

HERE = os.path.dirname(os.path.abspath(__file__))
CLIENTS = os.path.join(HERE, "floodclients.py")
HPING3 = "/usr/sbin/hping3"

PHASES = ("syn_start", "syn_end", "spoof_start", "spoof_end", "burst_start", "burst_end")

SCRIPT = """
pppd_start pppd noauth
wait_ppp_up 30 pppd || exit 1
FC="$PYTHON {clients} --host 10.0.0.1 --port 22"
stamp() {{ date +%s.%N >"$RESULTS/$1.t"; mark "$1"; }}
flood() {{
    # flood NAME HPING-OPTIONS...: hping3 for {flood_s} s while five connections are tried, then three after.
    local name=$1
    shift
    stamp ${{name}}_start
    {hping3} {pace} -S -p 22 "$@" 10.0.0.1 >"$RESULTS/hping-$name.out" 2>&1 &
    local hp=$!
    sleep {lead_s}
    $FC probe --count 5 --gap 1 --timeout 20 --out "$RESULTS/during-$name.json"
    sleep {tail_s}
    kill -INT $hp
    wait $hp
    stamp ${{name}}_end
    sleep {settle_s}
    $FC probe --count 3 --gap 0.2 --timeout 20 --out "$RESULTS/after-$name.json"
}}
$FC held --interval 0.2 --timeout 30 --until "$RESULTS/held.stop" --out "$RESULTS/held.json" &
held=$!
sleep 2
flood syn -s 20000
flood spoof --rand-source
sleep {settle_s}
stamp burst_start
$FC burst --count {burst} --timeout 60 --out "$RESULTS/burst.json"
stamp burst_end
sleep {settle_s}
$FC probe --count 3 --gap 0.2 --timeout 20 --out "$RESULTS/after-burst.json"
: >"$RESULTS/held.stop"
wait $held
pppd_stop pppd 15
"""


def config(echo_port, metrics_port, extra=None):
    cfg = {"services": {"22": {"host": services.LOOPBACK, "port": echo_port, "name": "echo"}},
           "monitoring": {"metrics_listen": "%s:%d" % (services.LOOPBACK, metrics_port)}}
    for section, values in (extra or {}).items():
        cfg.setdefault(section, {}).update(values)
    return cfg


def scrape(port):
    """pyslirp's figures from its metrics server: {name: {((label, value), ...): value}} (histograms: the count)."""
    with urllib.request.urlopen("http://%s:%d/metrics.json" % (services.LOOPBACK, port), timeout=10) as resp:
        data = json.loads(resp.read().decode())
    out = {}
    for name, family in data["metrics"].items():
        out[name] = dict((tuple(sorted(sample["labels"].items())), sample["value"] if "value" in sample
                          else sample["count"]) for sample in family["samples"])
    return out


def metric(figures, name, **labels):
    """One sample of a scrape (0 if absent)."""
    return figures.get(name, {}).get(tuple(sorted(labels.items())), 0)


def peak_rss_kib(pid):
    """VmHWM (peak resident set) of process ``pid`` in KiB, or None."""
    try:
        with open("/proc/%d/status" % pid) as f:
            for line in f:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1])
    except (IOError, OSError):
        pass
    return None


def cpu_seconds(pid):
    """utime + stime of process ``pid`` in seconds, or None."""
    try:
        with open("/proc/%d/stat" % pid) as f:
            fields = f.read().rsplit(")", 1)[1].split()
        return (int(fields[11]) + int(fields[12])) / float(os.sysconf("SC_CLK_TCK"))
    except (IOError, OSError, IndexError, ValueError):
        return None


def hping_sent(text):
    """Packets hping3 says it transmitted ("N packets transmitted"), or None."""
    m = re.search(r"(\d+) packets transmitted", text or "")
    return int(m.group(1)) if m else None


class Accepts(object):
    """Follows the guest's phase marks and notes the time, the echo server's accepts, pyslirp's CPU and (with
    ``metrics_port``) its metrics at each."""

    def __init__(self, guest, echo, pid, timeout, metrics_port=None):
        self.guest = guest
        self.echo = echo
        self.pid = pid
        self.timeout = timeout
        self.metrics_port = metrics_port
        self.at = {}
        self.metrics = {}
        self._thread = threading.Thread(target=self._run, name="phase-marks", daemon=True)
        self._thread.start()

    def _run(self):
        for name in PHASES:
            if not self.guest.wait_mark(name, self.timeout):
                return
            with self.echo.lock:
                self.at[name] = (time.time(), self.echo.accepted, cpu_seconds(self.pid))
            if self.metrics_port:
                try:
                    self.metrics[name] = scrape(self.metrics_port)
                except (OSError, ValueError):
                    pass

    def delta(self, phase, name, **labels):
        """How much a counter grew during a phase (None if not scraped at both ends)."""
        a, b = self.metrics.get(phase + "_start"), self.metrics.get(phase + "_end")
        if a is None or b is None:
            return None
        return metric(b, name, **labels) - metric(a, name, **labels)

    def join(self):
        self._thread.join(5)

    def between(self, start, end):
        if start not in self.at or end not in self.at:
            return None
        return self.at[end][1] - self.at[start][1]

    def cpu(self, name):
        """pyslirp's CPU use during a phase, as a fraction of one core."""
        a, b = self.at.get(name + "_start"), self.at.get(name + "_end")
        if not a or not b or a[2] is None or b[2] is None or b[0] <= a[0]:
            return None
        return (b[2] - a[2]) / (b[0] - a[0])


def run(lab, extra_config=None, relay_factory=None, flood_seconds=12, settle=7, burst=300, timeout=400,
        syns_per_second=0):
    """Run the scenario once; returns the figures (a dict) and leaves the files in the lab's directories.

    ``syns_per_second``: hping3's rate (``-i uN``); 0 is ``--flood``, as fast as the guest can send.
    """
    echo = services.EchoServer(backlog=512)
    metrics_port = services.free_port()
    try:
        slirp = lab.start_pyslirp(config(echo.port, metrics_port, extra_config), debug=False)
        lead = 2
        pace = "-i u%d" % (1000000 // syns_per_second) if syns_per_second else "--flood"
        script = SCRIPT.format(clients=CLIENTS, hping3=HPING3, pace=pace, flood_s=flood_seconds, lead_s=lead,
                               tail_s=max(0, flood_seconds - lead - 5), settle_s=settle, burst=burst)
        kw = {"relay_factory": relay_factory} if relay_factory is not None else {}
        guest = lab.boot_guest(script, slirp=slirp, timeout=timeout, name="guest", **kw)
        accepts = Accepts(guest, echo, slirp.proc.pid, timeout, metrics_port)
        res = guest.wait()
        accepts.join()
        res.check_ran()
        rss = peak_rss_kib(slirp.proc.pid)
        time.sleep(1.0)                     # the snapshot is refreshed a few times a second
        running = slirp.running()
        figures = {"rss_peak_kib": rss, "pyslirp_running": running, "metrics": scrape(metrics_port), "phases": {},
                   "hping3": pace}
        for name in ("syn", "spoof"):
            phase = {"during": _load(res, "during-%s.json" % name), "after": _load(res, "after-%s.json" % name),
                     "accepts": accepts.between(name + "_start", name + "_end"),
                     "seconds": _span(accepts, name), "cpu": accepts.cpu(name),
                     "hping_sent": hping_sent(res.read("hping-%s.out" % name)),
                     "window": _window(res, name)}
            phase["cookies"] = _cookie_deltas(accepts, name)
            figures["phases"][name] = phase
        figures["phases"]["burst"] = {"result": _load(res, "burst.json"), "after": _load(res, "after-burst.json"),
                                      "accepts": accepts.between("burst_start", "burst_end"),
                                      "seconds": _span(accepts, "burst"), "cpu": accepts.cpu("burst"),
                                      "window": _window(res, "burst"), "cookies": _cookie_deltas(accepts, "burst")}
        figures["held"] = _load(res, "held.json")
        figures["echo_accepted"] = echo.accepted
        return figures
    finally:
        echo.stop()


def _cookie_deltas(accepts, phase):
    """The SYN path's counters during a phase: {what: n or None}, and the line rate pyslirp measured at its end."""
    out = dict((result, accepts.delta(phase, "pyslirp_syn_cookies_total", result=result))
               for result in ("sent", "limited", "valid", "invalid"))
    out["refused_limit"] = accepts.delta(phase, "pyslirp_connections_refused_total", reason="limit")
    out["rate_waits"] = accepts.delta(phase, "pyslirp_tcp_rate_waits_total")
    end = accepts.metrics.get(phase + "_end")
    out["line_rate"] = metric(end, "pyslirp_line_drain_bytes_per_second") if end else None
    return out


def _cookie_text(c):
    if not c or c.get("sent") is None:
        return ""
    return ("  SYN path: cookies sent %d, limited %d, valid %d; refused for a limit %d; waited for a token %d; "
            "line rate %s B/s" % (c["sent"], c["limited"], c["valid"], c["refused_limit"] or 0, c["rate_waits"] or 0,
                                  c["line_rate"]))


def _load(res, name):
    text = res.read(name)
    if text is None:
        raise AssertionError("the guest wrote no %s\n%s" % (name, res.diagnostics()))
    return json.loads(text)


def _span(accepts, name):
    a, b = accepts.at.get(name + "_start"), accepts.at.get(name + "_end")
    return b[0] - a[0] if a and b else None


def _window(res, name):
    """(start, end) wall-clock seconds of a phase as the guest stamped it."""
    try:
        return float(res.read(name + "_start.t")), float(res.read(name + "_end.t"))
    except (TypeError, ValueError):
        return None


def held_rtts(held, window):
    """The held session's RTTs (seconds) sampled within ``window`` (guest wall clock), and its errors there."""
    lo, hi = window
    inside = [r for t, r in held["rtts"] if lo <= t <= hi]
    return [r for r in inside if r is not None], sum(1 for r in inside if r is None)


def percentile(values, q):
    values = sorted(values)
    if not values:
        return float("nan")
    k = (len(values) - 1) * q
    lo = int(k)
    hi = min(lo + 1, len(values) - 1)
    return values[lo] + (values[hi] - values[lo]) * (k - lo)


def _probes(p):
    probes = p["probes"]
    ok = [r for r in probes if r["ok"]]
    worst = max((r.get("connect_s", 0) for r in ok), default=0.0)
    return "%d/%d ok (slowest connect %.2f s)" % (len(ok), len(probes), worst)


def _rtts(held, window):
    if not window:
        return "n/a"
    rtts, errors = held_rtts(held, window)
    if not rtts:
        return "no samples, %d errors" % errors
    return "median %.0f ms, p90 %.0f ms, max %.0f ms (%d samples, %d errors)" % (
        1000 * percentile(rtts, 0.5), 1000 * percentile(rtts, 0.9), 1000 * max(rtts), len(rtts), errors)


def summary(fig):
    """The figures as a few lines of text."""
    m = fig["metrics"]
    held = fig["held"]
    before = [r for t, r in held["rtts"] if r is not None
              and fig["phases"]["syn"]["window"] and t < fig["phases"]["syn"]["window"][0]]
    lines = ["pyslirp peak RSS %.1f MB, still running: %s; held session before the floods: %s" % (
        (fig["rss_peak_kib"] or 0) / 1024.0, fig["pyslirp_running"],
        "median %.0f ms" % (1000 * percentile(before, 0.5)) if before else "n/a")]
    pace = fig.get("hping3", "--flood")
    for name, title in (("syn", "SYN flood (hping3 %s -S -p 22 -s 20000)" % pace),
                        ("spoof", "spoofed flood (hping3 %s -S -p 22 --rand-source)" % pace)):
        p = fig["phases"][name]
        lines.append("%s: %s SYNs sent in %.1f s, pyslirp CPU %s" % (
            title, p["hping_sent"], p["seconds"] or 0, "%.0f%%" % (100 * p["cpu"]) if p["cpu"] is not None else "?"))
        lines.append("  new connections during: %s; after: %s" % (_probes(p["during"]), _probes(p["after"])))
        lines.append("  held session during: %s" % _rtts(held, p["window"]))
        lines.append("  connections the service accepted during the phase: %s" % p["accepts"])
        if _cookie_text(p.get("cookies")):
            lines.append(_cookie_text(p.get("cookies")))
    b = fig["phases"]["burst"]
    lines.append("300 connections at once: %s%s in %.1f s; the service accepted %s in %.1f s; after: %s" % (
        ", ".join("%s %d" % kv for kv in sorted(b["result"]["outcomes"].items())),
        " (errors: %s)" % b["result"]["errors"] if b["result"].get("errors") else "", b["result"]["seconds"],
        b["accepts"], b["seconds"] or 0, _probes(b["after"])))
    if _cookie_text(b.get("cookies")):
        lines.append(_cookie_text(b.get("cookies")))
    lines.append("metrics: SYN cookies sent %d, limited %d, valid %d, invalid %d; half-open evicted %d; "
                 "waited for a token %d; dropped ip_bad_src %d; TCP refused: limit %d, rate %d" % (
                     metric(m, "pyslirp_syn_cookies_total", result="sent"),
                     metric(m, "pyslirp_syn_cookies_total", result="limited"),
                     metric(m, "pyslirp_syn_cookies_total", result="valid"),
                     metric(m, "pyslirp_syn_cookies_total", result="invalid"),
                     metric(m, "pyslirp_tcp_half_open_evicted_total"),
                     metric(m, "pyslirp_tcp_rate_waits_total"),
                     metric(m, "pyslirp_ip_dropped_total", reason="ip_bad_src"),
                     metric(m, "pyslirp_connections_refused_total", reason="limit"),
                     metric(m, "pyslirp_connections_refused_total", reason="rate")))
    return "\n".join(lines)
