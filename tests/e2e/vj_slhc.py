"""Record what the Linux kernel's VJ compressor (slhc) really sends, as known-answer vectors for ``pyslirp.wire.vj``.

Theory of operation
-------------------
One User-Mode Linux guest runs two pppd's joined by a pty: side A in the guest's own network namespace
(``pppd pty "unshare -n bash inner.sh"``), side B in a fresh one (``inner.sh`` runs ``pppd notty``), so that
traffic between 10.9.0.1 (A) and 10.9.0.2 (B) really crosses the PPP link instead of the guest's loopback.
Both negotiate VJ compression (pppd's default: 16 slots, slot-id compression allowed) and no CCP.

* pppd A's ``record`` option writes every octet it sends and receives on the line (pppdump format) to
  ``line.rec``: A's VJ compressor output, and B's.
* ``vj_peer.py sniff`` (an AF_PACKET socket on each side's ppp0) logs the IPv4 packets each kernel handed to
  its PPP unit (the compressor's input) and the ones the unit delivered (the decompressor's output).
* ``vj_peer.py client`` (on A) drives ``vj_peer.py server`` (on B): interactive echo, bulk data both ways,
  urgent data, IP options, TOS/TTL changes, 18 interleaved connections (more than the 16 slots), a UDP
  datagram, then the same with TCP timestamps on.

:func:`build_vectors` pairs them up per direction: ``(original packet, PPP protocol, information field,
packet rebuilt by the receiving kernel)``.  ``python3 tests/e2e/vj_slhc.py`` boots the guest and rewrites
``tests/data/vj_slhc.json``; ``tests/test_e2e_vj_slhc.py`` does the same capture live and checks pyslirp's
codec against it.
"""

import json
import os
import re
import struct
import sys
import tempfile

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(os.path.dirname(HERE))
if ROOT not in sys.path:
    sys.path.insert(0, ROOT)
TESTS = os.path.dirname(HERE)
if TESTS not in sys.path:
    sys.path.insert(0, TESTS)

from pyslirp.wire import hdlc, ppp  # noqa: E402

PEER = os.path.join(HERE, "vj_peer.py")
VECTORS = os.path.join(ROOT, "tests", "data", "vj_slhc.json")
VJ_PROTOCOLS = (ppp.PROTO_IP, ppp.PROTO_VJC, ppp.PROTO_VJUC)
ADDR_A, ADDR_B, PORT = "10.9.0.1", "10.9.0.2", 7000

# pppdump record codes (pppd's "record" option)
REC_SENT, REC_RECV, REC_SEND_DELIM, REC_RECV_DELIM = 1, 2, 3, 4
REC_TIME_LONG, REC_TIME_SHORT, REC_TIME_RESET = 5, 6, 7

SCENARIO = r"""
PEER=%(peer)s
echo 0 >/proc/sys/net/ipv4/tcp_timestamps
cat >"$RESULTS/inner.sh" <<EOF
ip link set lo up
echo 0 >/proc/sys/net/ipv4/tcp_timestamps
(
  for i in \$(seq 300); do ip -o -4 addr show dev ppp0 2>/dev/null | grep -q inet && break; sleep 0.1; done
  "$PYTHON" "$PEER" sniff ppp0 "$RESULTS/sniff-b.txt" "$RESULTS/sniff-b.ready" &
  "$PYTHON" "$PEER" server %(b)s %(port)d "$RESULTS/server.ready" >"$RESULTS/server.out" 2>&1 &
) </dev/null >"$RESULTS/inner-bg.out" 2>&1 &
exec pppd notty nodetach noauth local noccp %(b)s:%(a)s debug logfile "$RESULTS/b.log"
EOF
pppd pty "unshare -n /bin/bash $RESULTS/inner.sh" nodetach noauth local noccp nodefaultroute %(a)s:%(b)s \
    record "$RESULTS/line.rec" debug logfile "$RESULTS/a.log" >"$RESULTS/a.out" 2>&1 &
echo $! >"$RESULTS/a.pid"
wait_ppp_up 60 a ppp0 || exit 1
for f in sniff-b.ready server.ready; do
    for i in $(seq 300); do [ -s "$RESULTS/$f" ] && break; sleep 0.1; done
done
"$PYTHON" "$PEER" sniff ppp0 "$RESULTS/sniff-a.txt" "$RESULTS/sniff-a.ready" &
for i in $(seq 300); do [ -s "$RESULTS/sniff-a.ready" ] && break; sleep 0.1; done
sleep 0.5
record client "$PYTHON" "$PEER" client %(b)s %(port)d main
echo 1 >/proc/sys/net/ipv4/tcp_timestamps
nsenter -t "$(cat "$RESULTS/server.ready")" -n sh -c 'echo 1 >/proc/sys/net/ipv4/tcp_timestamps'
record client-ts "$PYTHON" "$PEER" client %(b)s %(port)d timestamps
sleep 1
kill -TERM "$(cat "$RESULTS/sniff-a.ready")" "$(cat "$RESULTS/sniff-b.ready")"
sleep 0.5
uname -r >"$RESULTS/kernel.txt"
pppd_stop a 20
"""


def scenario():
    return SCENARIO % {"peer": PEER, "a": ADDR_A, "b": ADDR_B, "port": PORT}


def parse_record(data):
    """Split a pppd ``record`` file into the octets sent and the octets received."""
    sent, received = [], []
    pos, end = 0, len(data)
    while pos < end:
        code = data[pos]
        pos += 1
        if code in (REC_SENT, REC_RECV):
            (n,) = struct.unpack_from("!H", data, pos)
            chunk = data[pos + 2:pos + 2 + n]
            if len(chunk) != n:
                raise ValueError("record file truncated at %d" % pos)
            (sent if code == REC_SENT else received).append(chunk)
            pos += 2 + n
        elif code in (REC_TIME_LONG, REC_TIME_RESET):
            pos += 4
        elif code == REC_TIME_SHORT:
            pos += 1
        elif code in (REC_SEND_DELIM, REC_RECV_DELIM):
            pass
        else:
            raise ValueError("unknown record code %d at %d" % (code, pos - 1))
    return b"".join(sent), b"".join(received)


def ip_frames(stream):
    """(protocol, information) of the IP and VJ frames in one direction of raw line octets."""
    # Receive ACCM 0: keep every octet (the peers negotiated asyncmap 0, so control characters travel raw).
    deframer = hdlc.Deframer(mru=1500, accm=0)
    out = []
    for frame in deframer.feed(stream):
        protocol, info = ppp.parse_frame(frame)
        if protocol in VJ_PROTOCOLS:
            out.append((protocol, bytes(info)))
    assert deframer.bad_fcs == 0 and deframer.too_long == 0, (deframer.bad_fcs, deframer.too_long)
    return out


def parse_sniff(text):
    """The packets a sniffer saw: (outgoing, incoming) lists of bytes."""
    outgoing, incoming = [], []
    for line in text.splitlines():
        direction, hexdata = line.split()
        (outgoing if direction == "out" else incoming).append(bytes.fromhex(hexdata))
    return outgoing, incoming


def pair(name, originals, frames, rebuilt):
    if not (len(originals) == len(frames) == len(rebuilt)):
        raise AssertionError("%s: %d packets sent, %d frames, %d rebuilt" % (
            name, len(originals), len(frames), len(rebuilt)))
    packets = []
    for original, (protocol, info), again in zip(originals, frames, rebuilt):
        entry = {"packet": original.hex(), "protocol": protocol, "info": info.hex()}
        if again != original:
            entry["rebuilt"] = again.hex()
        packets.append(entry)
    return {"name": name, "slots": 16, "compress_slot_id": True, "packets": packets}


def negotiated_vj(log):
    """The VJ options pppd acknowledged in each direction, e.g. ['VJ 0f 01', 'VJ 0f 01']."""
    return re.findall(r"(?:rcvd|sent) \[IPCP ConfAck id=0x[0-9a-f]+ <compress (VJ [0-9a-f]+ [0-9a-f]+)>", log)


def build_vectors(rundir):
    """Read one finished capture's files into the vectors dictionary (see the module docstring)."""
    def read(name, mode="r"):
        with open(os.path.join(rundir, name), mode) as f:
            return f.read()

    sent, received = parse_record(read("line.rec", "rb"))
    a_out, a_in = parse_sniff(read("sniff-a.txt"))
    b_out, b_in = parse_sniff(read("sniff-b.txt"))
    vj = negotiated_vj(read("a.log"))
    if sorted(vj) != ["VJ 0f 01", "VJ 0f 01"]:
        raise AssertionError("unexpected VJ negotiation: %r" % vj)
    streams = [pair("a_to_b", a_out, ip_frames(sent), b_in), pair("b_to_a", b_out, ip_frames(received), a_in)]
    return {
        "comment": ("Made by tests/e2e/vj_slhc.py: two Linux pppd's (one per network namespace) in a User-Mode "
                    "Linux guest, VJ on, CCP off.  'packet' is an IPv4 packet the sending kernel handed to its "
                    "PPP unit (AF_PACKET on ppp0), 'protocol'/'info' the PPP frame slhc made of it (pppd's record "
                    "file), 'rebuilt' (only when it differs from 'packet') what the receiving kernel's slhc "
                    "rebuilt."),
        "kernel": read("kernel.txt").strip(),
        "streams": streams,
    }


def capture(lab, timeout=240):
    """Run the scenario in a guest of ``lab``; returns (GuestResult, vectors)."""
    master, _slave = lab.openpty()   # the guest's serial line is not used
    guest = lab.boot_guest(scenario(), tty_fd=master, timeout=timeout, name="vjguest")
    res = guest.wait().check_ran()
    if res.rc("client") != 0 or res.rc("client-ts") != 0:
        raise AssertionError("client failed:\n%s\n%s" % (res.read("client.out"), res.diagnostics()))
    return res, build_vectors(res.rundir)


def main():
    from e2e import uml
    reason = uml.unavailable_reason()
    if reason:
        raise SystemExit(reason)
    with tempfile.TemporaryDirectory(prefix="vj-slhc-") as tmp:
        lab = uml.Lab(tmp)
        try:
            res, vectors = capture(lab)
        except Exception:
            print(lab.diagnostics())
            raise
        finally:
            lab.close()
    os.makedirs(os.path.dirname(VECTORS), exist_ok=True)
    with open(VECTORS, "w") as f:
        json.dump(vectors, f, indent=0, sort_keys=True)
        f.write("\n")
    for stream in vectors["streams"]:
        counts = {}
        for p in stream["packets"]:
            counts[p["protocol"]] = counts.get(p["protocol"], 0) + 1
        print("%s: %s" % (stream["name"], ", ".join("0x%04x: %d" % kv for kv in sorted(counts.items()))))
    print("wrote %s" % VECTORS)


if __name__ == "__main__":
    main()
