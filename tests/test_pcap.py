"""pcap capture of the PPP link: file layout, normalisation, and dissection by the real tshark."""

import io
import os
import shutil
import struct
import subprocess

import pytest

from pyslirp.wire import pcap, ppp
from pyslirp.wire.checksum import internet_checksum
from pyslirp.wire.errors import ParseError
from pyslirp.wire.pcap import LINKTYPE_PPP, LINKTYPE_PPP_WITH_DIR, PcapWriter, read_records

LCP_CONFREQ = ppp.build_frame(ppp.PROTO_LCP, ppp.build_cp(
    ppp.CONFIGURE_REQUEST, 7, ppp.build_options([(1, b"\x05\xdc"), (5, b"\x12\x34\x56\x78")])))
IPCP_CONFREQ_COMPRESSED = ppp.build_frame(ppp.PROTO_IPCP, ppp.build_cp(
    ppp.CONFIGURE_REQUEST, 1, ppp.build_options([(3, bytes([10, 0, 0, 1]))])), acfc=True, pfc=True)


class FlushCounter(io.BytesIO):
    def __init__(self):
        io.BytesIO.__init__(self)
        self.flushes = 0

    def flush(self):
        self.flushes += 1
        io.BytesIO.flush(self)


def icmp_echo_ip():
    """A minimal IPv4 ICMP echo request 10.0.0.2 -> 10.0.0.1 with correct checksums."""
    icmp = bytearray(b"\x08\x00\x00\x00\x12\x34\x00\x01ping")
    icmp[2:4] = struct.pack("!H", internet_checksum(bytes(icmp)))
    hdr = bytearray(struct.pack("!BBHHHBBH4s4s", 0x45, 0, 20 + len(icmp), 1, 0, 64, 1, 0,
                                bytes([10, 0, 0, 2]), bytes([10, 0, 0, 1])))
    hdr[10:12] = struct.pack("!H", internet_checksum(bytes(hdr)))
    return bytes(hdr + icmp)


def test_global_header():
    f = FlushCounter()
    PcapWriter(f)
    assert f.getvalue() == struct.pack("<IHHiIII", 0xA1B2C3D4, 2, 4, 0, 0, 65535, 204)
    assert f.flushes == 1


def test_record_layout_and_flush():
    f = FlushCounter()
    w = PcapWriter(f)
    w.write("in", LCP_CONFREQ, 1700000000123)
    w.write("out", LCP_CONFREQ, 1700000001999)
    data = f.getvalue()
    rec = data[24:]
    sec, usec, incl, orig = struct.unpack_from("<IIII", rec, 0)
    assert (sec, usec) == (1700000000, 123000)
    assert incl == orig == 1 + len(LCP_CONFREQ)
    assert rec[16:16 + incl] == b"\x00" + LCP_CONFREQ
    rec2 = rec[16 + incl:]
    assert struct.unpack_from("<II", rec2, 0) == (1700000001, 999000)
    assert rec2[16:17] == b"\x01"
    assert f.flushes == 3 and w.records == 2


def test_compressed_frames_are_restored():
    f = io.BytesIO()
    w = PcapWriter(f)
    w.write("out", IPCP_CONFREQ_COMPRESSED, 0)
    w.write("in", b"\xff\x03\x21" + b"payload", 5)      # PFC only
    w.write("in", b"\xff\x05garbage", 6)               # unparseable: kept as received
    linktype, records = read_records(f.getvalue())
    assert linktype == LINKTYPE_PPP_WITH_DIR
    assert records[0] == (0, "out", b"\xff\x03\x80\x21" + IPCP_CONFREQ_COMPRESSED[2:])
    assert records[1] == (5, "in", b"\xff\x03\x00\x21payload")
    assert records[2] == (6, "in", b"\xff\x05garbage")
    assert pcap.normalize_frame(LCP_CONFREQ) == LCP_CONFREQ
    assert pcap.normalize_frame(bytearray(LCP_CONFREQ)) == LCP_CONFREQ


def test_snaplen_truncates():
    f = io.BytesIO()
    w = PcapWriter(f, snaplen=10)
    w.write("in", LCP_CONFREQ, 1)
    _, incl, orig = struct.unpack_from("<III", f.getvalue(), 24 + 4)
    assert incl == 10 and orig == 1 + len(LCP_CONFREQ)
    assert read_records(f.getvalue())[1][0][2] == LCP_CONFREQ[:9]


def test_plain_ppp_linktype_has_no_direction():
    f = io.BytesIO()
    w = PcapWriter(f, linktype=LINKTYPE_PPP)
    w.write("in", LCP_CONFREQ, 42)
    assert read_records(f.getvalue()) == (LINKTYPE_PPP, [(42, None, LCP_CONFREQ)])


def test_bad_arguments():
    with pytest.raises(ValueError):
        PcapWriter(io.BytesIO(), linktype=1)
    with pytest.raises(ValueError):
        PcapWriter(io.BytesIO(), snaplen=0)
    w = PcapWriter(io.BytesIO())
    with pytest.raises(ValueError):
        w.write("sideways", LCP_CONFREQ, 0)


def test_read_records_big_endian_and_errors():
    be = struct.pack(">IHHiIII", 0xA1B2C3D4, 2, 4, 0, 0, 65535, 204)
    be += struct.pack(">IIII", 3, 500000, 3, 3) + b"\x01\x21x"
    assert read_records(be) == (204, [(3500, "out", b"\x21x")])
    for bad, reason in ((b"short", "too_short"), (b"\x00" * 24, "bad_magic"),
                        (be[:-1], "too_short"), (be[:-3] + b"\x07\x21x", "bad_direction")):
        with pytest.raises(ParseError) as err:
            read_records(bad)
        assert err.value.reason == reason


def test_context_manager_closes(tmp_path):
    path = str(tmp_path / "c.pcap")
    with PcapWriter(open(path, "wb")) as w:
        w.write("in", LCP_CONFREQ, 10)
        # Flushed after each record: readable before close.
        with open(path, "rb") as r:
            assert len(read_records(r.read())[1]) == 1
    assert w.fileobj.closed


def test_tshark_dissects_capture(tmp_path):
    tshark = shutil.which("tshark") or ("/usr/bin/tshark" if os.path.exists("/usr/bin/tshark") else None)
    if tshark is None:
        pytest.skip("tshark is not installed; cannot check the capture with a real dissector")
    path = str(tmp_path / "link.pcap")
    with open(path, "wb") as f:
        w = PcapWriter(f)
        w.write("in", LCP_CONFREQ, 1700000000123)
        w.write("out", IPCP_CONFREQ_COMPRESSED, 1700000000456)
        w.write("in", b"\x21" + icmp_echo_ip(), 1700000000789)   # ACFC + PFC compressed IPv4
    env = dict(os.environ, HOME=str(tmp_path))
    proc = subprocess.run([tshark, "-n", "-r", path, "-V"], stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                          env=env, timeout=120)
    assert proc.returncode == 0, proc.stderr.decode(errors="replace")
    text = proc.stdout.decode(errors="replace")
    frames = text.split("\nFrame ")
    assert len(frames) == 3, text
    lcp, ipcp, ip = frames
    assert "PPP Link Control Protocol" in lcp
    assert "Configuration Request" in lcp and "Maximum Receive Unit: 1500" in lcp
    assert "Magic Number: 0x12345678" in lcp
    assert "Point-to-Point Direction: Received" in lcp
    assert "PPP IP Control Protocol" in ipcp
    assert "IP Address: 10.0.0.1" in ipcp
    assert "Point-to-Point Direction: Sent" in ipcp
    assert "Internet Protocol Version 4" in ip and "Echo (ping) request" in ip
    assert "Point-to-Point Direction: Received" in ip
    assert "Malformed" not in text
