"""End to end on every kind of line: a device path on someone else's pty, --stdio on pipes, --stdio on a pty.

The same real pppd (User-Mode Linux) as the other end-to-end tests, relayed to pyslirp as a user would connect it:
``pyslirp.py /dev/pts/N`` on a pty the harness created (as socat, tcpser or QEMU do), ``pyslirp.py --stdio`` with
pipes (``pppd pty "ssh host pyslirp.py --stdio"``) and ``--stdio`` on a pty (a login shell).  On none of them can
pyslirp see what waits toward the line, so it paces its output at the configured 115200 bit/s: 64 KB each way at
once, checked byte for byte at both ends, take about six seconds.  The device path is locked (its UUCP lock file
in the run directory names pyslirp) and given back when pyslirp stops.
"""

import hashlib
import os
import shlex

import pytest

from e2e import services
from e2e.fixtures import lab  # noqa: F401  (pytest fixture)
from pyslirp.runtime.ownership import lock_name
from e2e.programs import json_result, write_script
from test_e2e_tcp import BULK_CLIENT, LOCAL_IP, link_up_script

pytestmark = [pytest.mark.e2e, pytest.mark.timeout(240)]

SIZE = 64 << 10


@pytest.mark.parametrize("line", ["device", "stdio", "stdio-pty"])
def test_both_ways_at_once_on_a_line_whose_backlog_is_hidden(lab, line):
    with services.ServiceSet() as svc:
        sink = svc.add(services.HashSink())
        source = svc.add(services.PayloadSource(seed=7, size=SIZE))
        slirp = lab.start_pyslirp({"services": {"5001": {"host": "127.0.0.1", "port": sink.port, "name": "sink"},
                                                "5002": {"host": "127.0.0.1", "port": source.port,
                                                         "name": "source"}},
                                   "ppp": {"lcp_echo_interval": 0}}, line=line)
        client = write_script(lab, "bulk.py", BULK_CLIENT)
        res = lab.run_guest(link_up_script("""
            record bulk timeout 90 $PYTHON {client} {ip} 5001 5002 8 {size}
        """.format(client=shlex.quote(client), ip=LOCAL_IP, size=SIZE)), slirp=slirp, timeout=150)
        sink_results = list(sink.results)
        if line == "device":
            lock = os.path.join(slirp.rundir, lock_name(slirp.pty))
            with open(lock, "rb") as f:
                assert f.read() == b"%10d\n" % slirp.proc.pid
    out = json_result(res, "bulk")
    assert res.rc("bulk") == 0 and "errors" not in out, (out, res.read("bulk.out"))
    want_up = hashlib.sha256(services.payload(8, SIZE)).hexdigest()
    assert out["upload"]["sent"] == SIZE and sink_results == [(SIZE, want_up)], (out, sink_results)
    assert out["download"]["received"] == SIZE and out["download"]["sha256"] == source.sha256, out
    log = slirp.log()
    assert "its backlog cannot be seen: output paced at 11520 bytes/s" in log, slirp.diagnostics()
    assert "Traceback" not in log
    assert slirp.stop() == 0, slirp.diagnostics()
    if line == "device":
        assert not os.path.exists(lock)
