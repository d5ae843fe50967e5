"""End to end: pyslirp's ``--pcap`` capture of a real pppd session, read back and dissected by the real tshark.

The capture is LINKTYPE_PPP_WITH_DIR; tshark reports the direction octet as ``ppp.direction`` 1 (DCE to DTE:
received by pyslirp) or 0 (DTE to DCE: sent by pyslirp).  The capture must agree with what pppd logged.
"""

import re
import subprocess

import pytest

from e2e.fixtures import lab, require_program  # noqa: F401  (pytest fixture)

pytestmark = [pytest.mark.e2e, pytest.mark.timeout(180)]

RECEIVED, SENT = "1", "0"   # ppp.direction as tshark prints it
FIELDS = ("frame.number", "frame.protocols", "ppp.direction", "ppp.code", "ppp.identifier",
          "lcp.opt.magic_number", "ipcp.opt.ip_address", "_ws.malformed")


def tshark_rows(path):
    cmd = ["tshark", "-n", "-r", path, "-T", "fields", "-E", "separator=|", "-E", "occurrence=f"]
    for field in FIELDS:
        cmd += ["-e", field]
    proc = subprocess.run(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, timeout=60,
                          universal_newlines=True)
    assert proc.returncode == 0, proc.stderr
    rows = [dict(zip(FIELDS, line.split("|"))) for line in proc.stdout.splitlines() if line.strip()]
    return rows, proc.stdout


def test_pcap_of_a_session_dissects_as_lcp_and_ipcp(lab):
    require_program("tshark", "tshark")
    slirp = lab.start_pyslirp({}, pcap=True)
    res = lab.run_guest("""
        pppd_start pppd noauth
        wait_ppp_up 30 pppd
        pppd_stop pppd 15
    """, slirp=slirp)
    assert res.addr("pppd") == ("10.0.0.2", "10.0.0.1"), res.diagnostics()
    assert slirp.stop() == 0, slirp.diagnostics()

    rows, text = tshark_rows(slirp.pcap_path)
    assert rows, "empty capture"
    assert not [r for r in rows if r["_ws.malformed"]], text

    def having(proto, direction, code):
        return [r for r in rows if r["frame.protocols"].endswith("ppp:" + proto)
                and r["ppp.direction"] == direction and r["ppp.code"] == str(code)]

    # RFC 1661 5.1/5.2: each side sent a Configure-Request that the other acknowledged, for LCP and IPCP.
    for proto in ("lcp", "ipcp"):
        for direction in (RECEIVED, SENT):
            assert having(proto, direction, 1), "no %s Configure-Request, direction %s\n%s" % (proto, direction, text)
            assert having(proto, direction, 2), "no %s Configure-Ack, direction %s\n%s" % (proto, direction, text)
    # pppd's SIGTERM: its Terminate-Request in, pyslirp's Terminate-Ack out (RFC 1661 5.5).
    assert having("lcp", RECEIVED, 5) and having("lcp", SENT, 6), text

    # The capture agrees with pppd's own log: its magic number, and the addresses IPCP settled on.
    log = res.pppd_log()
    magics = re.findall(r"sent \[LCP ConfReq id=0x[0-9a-f]+ .*<magic (0x[0-9a-f]+)>", log)
    captured = [int(r["lcp.opt.magic_number"], 16) for r in having("lcp", RECEIVED, 1) if r["lcp.opt.magic_number"]]
    assert magics and int(magics[-1], 16) in captured, (magics, captured, text)
    ours = [r["ipcp.opt.ip_address"] for r in having("ipcp", SENT, 1)]
    assert "10.0.0.1" in ours, text
    acked = [r["ipcp.opt.ip_address"] for r in having("ipcp", SENT, 2)]
    assert "10.0.0.2" in acked, text
