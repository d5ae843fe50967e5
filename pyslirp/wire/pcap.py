"""Classic libpcap capture files of the PPP link, readable by Wireshark and tshark.

Theory of operation
-------------------
A classic pcap file (https://www.tcpdump.org/manpages/pcap-savefile.5.txt) is a
24-octet global header (magic 0xa1b2c3d4, version 2.4, time zone, accuracy,
snapshot length, link type) followed by records, each a 16-octet header
(seconds, microseconds, captured length, original length) and the captured
octets.  Everything is written little-endian; readers detect the byte order
from the magic number.

The default link type is ``LINKTYPE_PPP_WITH_DIR`` (204): each record starts
with one direction octet, 0x00 for a frame received by us and 0x01 for one we
sent, followed by the PPP frame in HDLC-like framing without flags, escapes or
FCS, *with* the Address and Control fields.  Frames the peer sent with
Address-and-Control or Protocol-Field compression are written back in full
form (0xFF 0x03 and a two-octet protocol) so the dissector always sees the
layout it expects; a frame that does not even parse is written as received.
``LINKTYPE_PPP`` (9) is also accepted: the same without the direction octet.

The writer flushes after every record so that a capture is useful while the
link runs and after a crash.  Write errors (``OSError``) reach the caller,
which owns the file.  :func:`read_records` reads such files back (used by the
tests and handy for tools); it raises only ``ParseError``.
"""

import struct

from pyslirp.wire.errors import ParseError
from pyslirp.wire.ppp import build_frame, parse_frame

PCAP_MAGIC = 0xA1B2C3D4
VERSION_MAJOR = 2
VERSION_MINOR = 4
LINKTYPE_PPP = 9
LINKTYPE_PPP_WITH_DIR = 204

DIR_IN = 0x00    # received by us
DIR_OUT = 0x01   # sent by us
_DIRECTIONS = {"in": b"\x00", "out": b"\x01"}

_GLOBAL_LE = struct.Struct("<IHHiIII")   # magic, major, minor, thiszone, sigfigs, snaplen, linktype
_RECORD_LE = struct.Struct("<IIII")      # ts_sec, ts_usec, incl_len, orig_len
_GLOBAL_BE = struct.Struct(">IHHiIII")
_RECORD_BE = struct.Struct(">IIII")


def normalize_frame(frame):
    """The frame with Address/Control and a two-octet Protocol field restored."""
    frame = bytes(frame)
    if frame[:2] == b"\xff\x03" and len(frame) >= 4 and not frame[2] & 1:
        return frame
    try:
        protocol, info = parse_frame(frame)
        return build_frame(protocol, info)
    except (ParseError, ValueError):
        return frame


class PcapWriter(object):
    """Write PPP frames to ``fileobj`` (opened in binary mode) as a classic pcap file."""

    def __init__(self, fileobj, linktype=LINKTYPE_PPP_WITH_DIR, snaplen=65535):
        if linktype not in (LINKTYPE_PPP_WITH_DIR, LINKTYPE_PPP):
            raise ValueError("unsupported link type %r" % (linktype,))
        if not 0 < snaplen <= 0x40000:
            raise ValueError("snaplen out of range: %r" % (snaplen,))
        self.fileobj = fileobj
        self.linktype = linktype
        self.snaplen = snaplen
        self.records = 0
        fileobj.write(_GLOBAL_LE.pack(PCAP_MAGIC, VERSION_MAJOR, VERSION_MINOR, 0, 0, snaplen, linktype))
        self._flush()

    def write(self, direction, frame, ts_ms):
        """Append one frame; ``direction`` is 'in' (received by us) or 'out' (sent by us)."""
        prefix = _DIRECTIONS.get(direction)
        if prefix is None:
            raise ValueError("direction must be 'in' or 'out', not %r" % (direction,))
        data = normalize_frame(frame)
        if self.linktype == LINKTYPE_PPP_WITH_DIR:
            data = prefix + data
        orig_len = len(data)
        if orig_len > self.snaplen:
            data = data[:self.snaplen]
        ts_ms = max(0, int(ts_ms))
        sec, msec = divmod(ts_ms, 1000)
        self.fileobj.write(_RECORD_LE.pack(sec & 0xFFFFFFFF, msec * 1000, len(data), orig_len) + data)
        self.records += 1
        self._flush()

    def _flush(self):
        flush = getattr(self.fileobj, "flush", None)
        if flush is not None:
            flush()

    def close(self):
        self.fileobj.close()

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()
        return False


def read_records(data):
    """Parse a whole pcap file's bytes: ``(linktype, [(ts_ms, direction, frame), ...])``.

    ``direction`` is 'in' or 'out' for LINKTYPE_PPP_WITH_DIR and None for
    other link types (where ``frame`` is the record's data as captured).
    """
    data = bytes(data)
    if len(data) < _GLOBAL_LE.size:
        raise ParseError("too_short", "no pcap global header")
    if _GLOBAL_LE.unpack_from(data, 0)[0] == PCAP_MAGIC:
        gstruct, rstruct = _GLOBAL_LE, _RECORD_LE
    elif _GLOBAL_BE.unpack_from(data, 0)[0] == PCAP_MAGIC:
        gstruct, rstruct = _GLOBAL_BE, _RECORD_BE
    else:
        raise ParseError("bad_magic", "not a microsecond pcap file")
    linktype = gstruct.unpack_from(data, 0)[6] & 0x0FFFFFFF
    pos = gstruct.size
    records = []
    while pos < len(data):
        if len(data) - pos < rstruct.size:
            raise ParseError("too_short", "truncated record header at %d" % pos)
        sec, usec, incl, _orig = rstruct.unpack_from(data, pos)
        pos += rstruct.size
        if incl > len(data) - pos:
            raise ParseError("too_short", "truncated record at %d" % pos)
        body = data[pos:pos + incl]
        pos += incl
        direction = None
        if linktype == LINKTYPE_PPP_WITH_DIR:
            if not body or body[0] not in (DIR_IN, DIR_OUT):
                raise ParseError("bad_direction", "record at %d" % (pos - incl))
            direction = "in" if body[0] == DIR_IN else "out"
            body = body[1:]
        records.append((sec * 1000 + usec // 1000, direction, body))
    return linktype, records
