"""End to end: two pyslirp instances on two ptys, each with its own configuration, serve two pppd clients (two
User-Mode Linux guests) at the same time.

This is what the Debian package's init script (``INSTANCES`` in /etc/default/pyslirp) and the systemd template
``pyslirp@.service`` run: one daemon per serial line, one file each.  Here each instance has its own addresses
and services; each guest uploads a seeded payload through its own link while the other does, and the host checks
that both pyslirp processes held their service connection at the same moment and that each sink received exactly
its own guest's bytes.
"""

import hashlib
import shlex

import pytest

from e2e import services
from e2e.fixtures import lab  # noqa: F401  (pytest fixture)
from e2e.programs import await_mark, json_result, write_script
from test_e2e_health import wait_for
from test_e2e_tcp import HostCheck

pytestmark = [pytest.mark.e2e, pytest.mark.timeout(300)]

SIZE = 3 << 20

UPLOAD = services.PAYLOAD_SOURCE + r"""
import json, socket, sys, time
ip, port, seed, size = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), int(sys.argv[4])
data = payload(seed, size)
t = time.monotonic()
c = socket.create_connection((ip, port), timeout=60)
for off in range(0, len(data), 65536):
    c.sendall(data[off:off + 65536])
    time.sleep(0.01)            # a few seconds of transfer, so that the two overlap for sure
c.shutdown(socket.SHUT_WR)
answer = b""
while True:
    d = c.recv(4096)
    if not d:
        break
    answer += d
print(json.dumps({"answer": answer.decode(errors="replace"), "seconds": time.monotonic() - t}))
"""


def test_two_instances_serve_two_pppd_clients_at_once(lab):
    with services.ServiceSet() as svc:
        sinks = {"a": svc.add(services.HashSink()), "b": svc.add(services.HashSink())}
        nets = {"a": "10.0.1", "b": "10.0.2"}
        slirps, guests = {}, {}
        upload = write_script(lab, "upload.py", UPLOAD)
        for seed, name in enumerate(("a", "b"), 1):
            net = nets[name]
            slirps[name] = lab.start_pyslirp({
                "network": {"local_ip": net + ".1", "remote_ip": net + ".2"},
                "services": {"5001": {"host": "127.0.0.1", "port": sinks[name].port, "name": "sink-" + name}},
            }, name="pyslirp-" + name, debug=False)
            guests[name] = lab.boot_guest("""
                pppd_start pppd noauth
                wait_ppp_up 30 pppd || exit 1
                mark up
                wait_host_mark go 60 || exit 1
                record upload timeout 120 $PYTHON {upload} {ip} 5001 {seed} {size}
                pppd_stop pppd 15
            """.format(upload=shlex.quote(upload), ip=net + ".1", seed=seed, size=SIZE),
                slirp=slirps[name], timeout=200, name="guest-" + name)
        for name in ("a", "b"):
            await_mark(guests[name], "up")
        for name in ("a", "b"):
            guests[name].mark("go")
        # Both instances carry a transfer at the same moment.
        both = wait_for(lambda: all(HostCheck.established(slirps[n], sinks[n].port) for n in ("a", "b")), 60)
        assert both, "the two transfers never overlapped\n%s" % lab.diagnostics()
        results = dict((name, guests[name].wait().check_ran()) for name in ("a", "b"))
        received = dict((name, list(sinks[name].results)) for name in ("a", "b"))

    for seed, name in enumerate(("a", "b"), 1):
        res = results[name]
        want = "%d %s" % (SIZE, hashlib.sha256(services.payload(seed, SIZE)).hexdigest())
        out = json_result(res, "upload")
        assert res.rc("upload") == 0 and out["answer"].strip() == want, (name, out)
        assert received[name] == [(SIZE, want.split()[1])], (name, received[name])
        assert res.addr("pppd") == (nets[name] + ".2", nets[name] + ".1")
        assert res.rc("pppd") == 5, res.pppd_log()
    for name in ("a", "b"):
        assert slirps[name].stop() == 0, slirps[name].diagnostics()
