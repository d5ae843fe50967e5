"""DNS messages (RFC 1035 4.1), read far enough for a caching forwarder, and rewritten from parsed offsets.

Theory of operation: :meth:`Message.parse` walks a message once and keeps, besides the header fields, the
question(s) with their names decompressed, and for every resource record only what a forwarder needs: its type,
class, TTL and the offsets of its TTL field and RDATA.  Owner names of records are *skipped*, not decompressed
(a skipped name ends at its first pointer), so a hostile message full of pointers costs one step per label it
actually contains; only question names are followed through pointers.

Rewriting never re-encodes a message.  :func:`patch` copies the original bytes and replaces, from the parsed
offsets, the 16-bit ID, the question name (same length, only its letter case differs) and each record's TTL
lowered by the seconds an answer spent in a cache.  Output is built by joining slices: no per-byte loops.

Names are kept in wire form (length-prefixed labels ending with the root label).  Because length octets are at
most 63 and ASCII letters are 65..122, ``name.lower()`` on the wire form is exactly the case-insensitive
comparison of RFC 1035 2.3.3 / RFC 4343.

Parse errors (reason tokens, used as counter names):

* ``too_short``     fewer than 12 bytes, the header;
* ``truncated``     a name, question or record runs past the end of the message;
* ``bad_label``     a label type other than length (00) or pointer (11): RFC 1035 4.1.4 reserves 01 and 10;
* ``bad_pointer``   a compression pointer past the end of the message, or into its header (no name there);
* ``pointer_loop``  a pointer that does not point before the previous one (every loop needs such a pointer);
* ``name_too_long`` a name longer than 255 octets (RFC 1035 2.3.4);
* ``bad_qdcount``   more than one question (RFC 9619: QDCOUNT "MUST NOT" exceed 1 for OPCODE 0; no other
                    opcode we meet uses more);
* ``bad_rdata``     a record's RDATA does not fit its RDLENGTH (an SOA shorter than its two names + 20 bytes);
* ``bad_opt``       an OPT pseudo-record not owned by the root, or more than one (RFC 6891 6.1.1, 6.1.2).

``ParseError`` is the only exception :meth:`Message.parse` raises.
"""

import struct
from dataclasses import dataclass
from typing import Optional, Tuple

from .errors import ParseError

# id, flags, QDCOUNT, ANCOUNT, NSCOUNT, ARCOUNT (RFC 1035 4.1.1)
HEADER = struct.Struct("!HHHHHH")
HEADER_LEN = HEADER.size            # 12
ID = struct.Struct("!H")
ID_OFFSET = 0
FLAGS_OFFSET = 2
QUESTION_TAIL = struct.Struct("!HH")            # QTYPE, QCLASS (RFC 1035 4.1.2)
RR_FIXED = struct.Struct("!HHIH")               # TYPE, CLASS, TTL, RDLENGTH (RFC 1035 4.1.3)
RR_TTL_OFFSET = 4                               # within RR_FIXED
TTL = struct.Struct("!I")
SOA_TAIL = struct.Struct("!IIIII")              # SERIAL, REFRESH, RETRY, EXPIRE, MINIMUM (RFC 1035 3.3.13)
TCP_LENGTH = struct.Struct("!H")                # the 2-byte length prefix over TCP (RFC 1035 4.2.2)
MIN_QUESTION_LEN = 1 + QUESTION_TAIL.size       # root name + type + class
MIN_RR_LEN = 1 + RR_FIXED.size

MAX_NAME_LEN = 255                  # octets, wire form (RFC 1035 2.3.4)
MAX_LABEL_LEN = 63
MAX_MESSAGE_LEN = 0xFFFF
UDP_LIMIT = 512                     # RFC 1035 4.2.1: "Messages carried by UDP are restricted to 512 bytes"
EDNS_UDP_SIZE = 1232                # what our own OPT records advertise (the 2020 "DNS flag day" value)
MAX_TTL = 0x7FFFFFFF                # RFC 2181 8: larger values (MSB set) are to be treated as zero

LABEL_KIND = 0xC0
LABEL_POINTER = 0xC0
POINTER_MASK = 0x3FFF

FLAG_QR = 0x8000
OPCODE_SHIFT = 11
OPCODE_MASK = 0xF
FLAG_AA = 0x0400
FLAG_TC = 0x0200
FLAG_RD = 0x0100
FLAG_RA = 0x0080
FLAG_AD = 0x0020
FLAG_CD = 0x0010
RCODE_MASK = 0x000F

OPCODE_QUERY = 0

RCODE_NOERROR = 0
RCODE_FORMERR = 1
RCODE_SERVFAIL = 2
RCODE_NXDOMAIN = 3
RCODE_NOTIMP = 4
RCODE_REFUSED = 5

TYPE_A = 1
TYPE_NS = 2
TYPE_CNAME = 5
TYPE_SOA = 6
TYPE_PTR = 12
TYPE_MX = 15
TYPE_TXT = 16
TYPE_AAAA = 28
TYPE_OPT = 41                       # EDNS(0) pseudo-record (RFC 6891 6.1.2)
CLASS_IN = 1

# In an OPT record the TTL field holds EXTENDED-RCODE (8 bits), VERSION (8 bits), DO (1 bit), Z (RFC 6891 6.1.3).
OPT_EXT_RCODE_SHIFT = 24
OPT_DO = 0x8000

ANSWER = 1
AUTHORITY = 2
ADDITIONAL = 3

_ROOT = b"\x00"


def read_name(data, offset):
    """The name at ``offset``, decompressed: ``(wire form, offset after the name as it sits here)``.

    RFC 1035 4.1.4: a pointer is "a pointer to a prior occurance of the same name".  Each pointer must point
    before the previous pointer (the first one: before itself), so following them always terminates.
    """
    n = len(data)
    labels = []
    length = 1                      # the root label to come
    end = None
    limit = offset
    pos = offset
    while True:
        if pos >= n:
            raise ParseError("truncated", "name at %d" % offset)
        b = data[pos]
        if b == 0:
            if end is None:
                end = pos + 1
            break
        kind = b & LABEL_KIND
        if kind == LABEL_POINTER:
            if pos + 2 > n:
                raise ParseError("truncated", "pointer at %d" % pos)
            target = ((b << 8) | data[pos + 1]) & POINTER_MASK
            if target >= n or target < HEADER_LEN:
                raise ParseError("bad_pointer", "pointer at %d to %d, message is %d bytes" % (pos, target, n))
            if target >= limit:
                raise ParseError("pointer_loop", "pointer at %d to %d, not before %d" % (pos, target, limit))
            if end is None:
                end = pos + 2
            limit = target
            pos = target
            continue
        if kind:
            raise ParseError("bad_label", "label type 0x%02x at %d" % (b, pos))
        stop = pos + 1 + b
        if stop > n:
            raise ParseError("truncated", "label at %d" % pos)
        length += 1 + b
        if length > MAX_NAME_LEN:
            raise ParseError("name_too_long", "name at %d" % offset)
        labels.append(data[pos:stop])
        pos = stop
    labels.append(_ROOT)
    return b"".join(labels), end


def skip_name(data, offset):
    """The offset after the name at ``offset``, without following pointers (a pointer ends a name)."""
    n = len(data)
    pos = offset
    length = 1
    while True:
        if pos >= n:
            raise ParseError("truncated", "name at %d" % offset)
        b = data[pos]
        if b == 0:
            return pos + 1
        kind = b & LABEL_KIND
        if kind == LABEL_POINTER:
            if pos + 2 > n:
                raise ParseError("truncated", "pointer at %d" % pos)
            target = ((b << 8) | data[pos + 1]) & POINTER_MASK
            # Not followed here, but a pointer must still be to "a prior occurance" of a name.
            if target >= n or target < HEADER_LEN:
                raise ParseError("bad_pointer", "pointer at %d to %d, message is %d bytes" % (pos, target, n))
            if target >= pos:
                raise ParseError("pointer_loop", "pointer at %d to %d" % (pos, target))
            return pos + 2
        if kind:
            raise ParseError("bad_label", "label type 0x%02x at %d" % (b, pos))
        length += 1 + b
        if length > MAX_NAME_LEN:
            raise ParseError("name_too_long", "name at %d" % offset)
        pos += 1 + b


def encode_name(text):
    """'example.com' (or 'example.com.') -> wire form.  ValueError for an empty label or an oversize name."""
    if isinstance(text, bytes):
        text = text.decode("ascii")
    text = text.rstrip(".") if text != "." else ""
    parts = []
    if text:
        for label in text.split("."):
            raw = label.encode("ascii")
            if not raw or len(raw) > MAX_LABEL_LEN:
                raise ValueError("bad DNS label %r in %r" % (label, text))
            parts.append(bytes([len(raw)]) + raw)
    parts.append(_ROOT)
    wire = b"".join(parts)
    if len(wire) > MAX_NAME_LEN:
        raise ValueError("DNS name longer than 255 octets: %r" % text)
    return wire


def name_text(wire):
    """Wire form -> 'example.com.' (for logs; non-printable octets as \\DDD, RFC 1035 5.1)."""
    out = []
    pos = 0
    while pos < len(wire) and wire[pos]:
        n = wire[pos]
        label = wire[pos + 1:pos + 1 + n]
        text = label.decode("ascii", "replace")
        if not (text.isprintable() and label.isascii() and b"." not in label and b" " not in label):
            text = "".join(chr(c) if 0x21 <= c < 0x7F and c not in (0x2E, 0x5C) else "\\%03d" % c
                           for c in label)
        out.append(text)
        pos += 1 + n
    return ".".join(out) + "."


@dataclass(frozen=True)
class Question:
    name: bytes             # wire form, decompressed, letter case as received
    qtype: int
    qclass: int
    offset: int = HEADER_LEN    # where the question starts in its message

    def key(self):
        """The question compared as RFC 1035 2.3.3 asks: names case-insensitively."""
        return (self.name.lower(), self.qtype, self.qclass)


@dataclass(frozen=True)
class Record:
    section: int
    rtype: int
    rclass: int
    ttl: int                # seconds; values with the MSB set read as 0 (RFC 2181 8)
    start: int              # offset of the record in the message
    ttl_offset: int
    rdata_offset: int
    rdlength: int
    soa_minimum: Optional[int] = None   # the MINIMUM field, for an SOA record

    @property
    def end(self):
        return self.rdata_offset + self.rdlength


@dataclass(frozen=True)
class Message:
    id: int
    flags: int
    qdcount: int
    ancount: int
    nscount: int
    arcount: int
    questions: Tuple[Question, ...] = ()
    answers: Tuple[Record, ...] = ()
    authority: Tuple[Record, ...] = ()
    additional: Tuple[Record, ...] = ()
    question_end: int = HEADER_LEN      # offset after the question section
    end: int = HEADER_LEN               # offset after the last section parsed
    opt: Optional[Record] = None        # the EDNS(0) OPT pseudo-record, if any

    @property
    def qr(self):
        return bool(self.flags & FLAG_QR)

    @property
    def opcode(self):
        return (self.flags >> OPCODE_SHIFT) & OPCODE_MASK

    @property
    def tc(self):
        return bool(self.flags & FLAG_TC)

    @property
    def rd(self):
        return bool(self.flags & FLAG_RD)

    @property
    def cd(self):
        return bool(self.flags & FLAG_CD)

    @property
    def rcode(self):
        """The RCODE, extended by the OPT record's upper 8 bits when there is one (RFC 6891 6.1.3)."""
        rcode = self.flags & RCODE_MASK
        if self.opt is not None:
            rcode |= (self.opt.ttl >> OPT_EXT_RCODE_SHIFT) << 4
        return rcode

    @property
    def question(self):
        """The one question, or None."""
        return self.questions[0] if len(self.questions) == 1 else None

    @property
    def do(self):
        """The DNSSEC OK bit of the OPT record (RFC 3225)."""
        return self.opt is not None and bool(self.opt.ttl & OPT_DO)

    @property
    def udp_size(self):
        """The largest UDP reply the sender takes: 512 without EDNS, else its OPT CLASS, never below 512
        (RFC 6891 6.2.3: "Values lower than 512 MUST be treated as equal to 512")."""
        if self.opt is None:
            return UDP_LIMIT
        return max(UDP_LIMIT, self.opt.rclass)

    def records(self):
        return self.answers + self.authority + self.additional

    def answer_ttl(self):
        """The smallest TTL in the answer section, or None when it is empty."""
        if not self.answers:
            return None
        return min(r.ttl for r in self.answers)

    def negative_ttl(self):
        """RFC 2308 5: the TTL of a negative answer is the smaller of the SOA record's TTL and its MINIMUM
        field; None without an SOA in the authority section (then it "SHOULD NOT be cached")."""
        best = None
        for r in self.authority:
            if r.soa_minimum is not None:
                ttl = min(r.ttl, r.soa_minimum)
                best = ttl if best is None else min(best, ttl)
        return best

    @classmethod
    def parse(cls, data, sections=True):
        """Decode a message; with ``sections`` False only the header and the question section."""
        if not isinstance(data, bytes):
            data = bytes(data)
        n = len(data)
        if n < HEADER_LEN:
            raise ParseError("too_short", "%d bytes" % n)
        msg_id, flags, qd, an, ns, ar = HEADER.unpack_from(data)
        if qd > 1:
            raise ParseError("bad_qdcount", str(qd))
        if qd * MIN_QUESTION_LEN + (an + ns + ar if sections else 0) * MIN_RR_LEN > n - HEADER_LEN:
            raise ParseError("truncated", "%d bytes cannot hold %d/%d/%d/%d entries" % (n, qd, an, ns, ar))
        pos = HEADER_LEN
        questions = []
        for _ in range(qd):
            name, after = read_name(data, pos)
            if after + QUESTION_TAIL.size > n:
                raise ParseError("truncated", "question at %d" % pos)
            qtype, qclass = QUESTION_TAIL.unpack_from(data, after)
            questions.append(Question(name, qtype, qclass, pos))
            pos = after + QUESTION_TAIL.size
        question_end = pos
        if not sections:
            return cls(msg_id, flags, qd, an, ns, ar, tuple(questions), question_end=question_end,
                       end=question_end)
        parts = []
        opt = None
        for section, count in ((ANSWER, an), (AUTHORITY, ns), (ADDITIONAL, ar)):
            records = []
            for _ in range(count):
                record, pos = _parse_record(data, pos, section)
                if record.rtype == TYPE_OPT and section == ADDITIONAL:
                    if opt is not None:
                        raise ParseError("bad_opt", "more than one OPT record")
                    if data[record.start] != 0:
                        raise ParseError("bad_opt", "OPT record not owned by the root")
                    opt = record
                records.append(record)
            parts.append(tuple(records))
        return cls(msg_id, flags, qd, an, ns, ar, tuple(questions), parts[0], parts[1], parts[2],
                   question_end=question_end, end=pos, opt=opt)


def _parse_record(data, pos, section):
    n = len(data)
    start = pos
    after = skip_name(data, pos)
    if after + RR_FIXED.size > n:
        raise ParseError("truncated", "record at %d" % start)
    rtype, rclass, ttl, rdlength = RR_FIXED.unpack_from(data, after)
    rdata = after + RR_FIXED.size
    if rdata + rdlength > n:
        raise ParseError("truncated", "RDATA of the record at %d" % start)
    if ttl > MAX_TTL and rtype != TYPE_OPT:
        ttl = 0
    soa_minimum = None
    if rtype == TYPE_SOA and section == AUTHORITY:
        # MNAME, RNAME, then five 32-bit fields; MINIMUM is the last (RFC 1035 3.3.13).
        tail = skip_name(data, skip_name(data, rdata))
        if tail + SOA_TAIL.size > rdata + rdlength:
            raise ParseError("bad_rdata", "SOA at %d" % start)
        soa_minimum = SOA_TAIL.unpack_from(data, tail)[4]
    record = Record(section, rtype, rclass, ttl, start, after + RR_TTL_OFFSET, rdata, rdlength, soa_minimum)
    return record, rdata + rdlength


def peek_id(data):
    """The ID of a message of at least 12 bytes, or None."""
    if len(data) < HEADER_LEN:
        return None
    return ID.unpack_from(data, ID_OFFSET)[0]


def with_id(data, msg_id):
    """The message with its ID replaced."""
    return ID.pack(msg_id) + data[ID_OFFSET + ID.size:]


def patch(data, msg, msg_id, age=0, qname=None):
    """``data`` (parsed as ``msg``) with the ID ``msg_id``, every TTL lowered by ``age`` seconds (not below 0;
    the OPT record's TTL field is not a TTL and is kept), and, when ``qname`` is given and equals the question
    name case-insensitively, the question name spelled as in ``qname``."""
    pieces = [ID.pack(msg_id)]
    pos = ID.size
    question = msg.question
    if qname is not None and question is not None and _respellable(data, question, qname):
        pieces.append(data[pos:question.offset])
        pieces.append(qname)
        pos = question.offset + len(qname)
    if age > 0:
        for record in msg.records():
            if record.rtype == TYPE_OPT:
                continue
            pieces.append(data[pos:record.ttl_offset])
            pieces.append(TTL.pack(max(0, record.ttl - age)))
            pos = record.ttl_offset + TTL.size
    pieces.append(data[pos:])
    return b"".join(pieces)


def truncated_reply(data, msg, msg_id, qname=None):
    """A reply that says only "truncated, ask again over TCP" (RFC 1035 4.2.1; RFC 7766): the header with TC
    set, the question section (its name spelled as ``qname``, as in :func:`patch`) and the OPT record, every
    other section left out."""
    opt = b""
    if msg.opt is not None:
        opt = data[msg.opt.start:msg.opt.end]
    header = HEADER.pack(msg_id, msg.flags | FLAG_TC, msg.qdcount, 0, 0, 1 if opt else 0)
    questions = data[HEADER_LEN:msg.question_end]
    question = msg.question
    if qname is not None and question is not None and _respellable(data, question, qname):
        questions = qname + data[question.offset + len(qname):msg.question_end]
    return header + questions + opt


def _respellable(data, question, qname):
    """True when ``qname`` equals the question name but for letter case and the name is stored uncompressed."""
    return (qname != question.name and qname.lower() == question.name.lower()
            and data[question.offset:question.offset + len(qname)].lower() == qname.lower())


def error_reply(query, rcode, msg=None):
    """A reply to ``query`` carrying only ``rcode`` (FORMERR, SERVFAIL, NOTIMP ...).

    With ``msg`` (the query parsed at least to its questions) the reply repeats the question section and, when
    the query had an OPT record, carries one of ours (RFC 6891 6.1.1: to a request with an OPT record,
    responders "MUST include an OPT record in their respective responses").  Without it the reply is a bare
    header (a FORMERR to a query whose questions could not be read).  OPCODE, RD and CD are copied from the
    query (RFC 1035 4.1.1)."""
    msg_id, flags = struct.unpack_from("!HH", query, ID_OFFSET)
    kept = flags & ((OPCODE_MASK << OPCODE_SHIFT) | FLAG_RD | FLAG_CD)
    out_flags = FLAG_QR | kept | FLAG_RA | (rcode & RCODE_MASK)
    if msg is None:
        return HEADER.pack(msg_id, out_flags, 0, 0, 0, 0)
    opt = b""
    if msg.opt is not None:
        opt = opt_record(EDNS_UDP_SIZE, ext_rcode=rcode >> 4)
    elif rcode > RCODE_MASK:
        raise ValueError("RCODE %d needs EDNS" % rcode)
    header = HEADER.pack(msg_id, out_flags, msg.qdcount, 0, 0, 1 if opt else 0)
    return header + query[HEADER_LEN:msg.question_end] + opt


def opt_record(udp_size=EDNS_UDP_SIZE, ext_rcode=0, do=False, options=b""):
    """An OPT pseudo-record (RFC 6891 6.1.2): owner root, CLASS the UDP payload size, TTL the extended RCODE,
    version 0 and the DO bit."""
    ttl = (ext_rcode << OPT_EXT_RCODE_SHIFT) | (OPT_DO if do else 0)
    return _ROOT + RR_FIXED.pack(TYPE_OPT, udp_size, ttl, len(options)) + options


def build_query(msg_id, name, qtype=TYPE_A, qclass=CLASS_IN, rd=True, edns_size=None, do=False):
    """A standard query for one question; ``name`` is text or wire form, ``edns_size`` adds an OPT record."""
    wire = name if isinstance(name, bytes) and name.endswith(_ROOT) else encode_name(name)
    opt = opt_record(edns_size, do=do) if edns_size is not None else b""
    header = HEADER.pack(msg_id, FLAG_RD if rd else 0, 1, 0, 0, 1 if opt else 0)
    return header + wire + QUESTION_TAIL.pack(qtype, qclass) + opt


def tcp_frame(message):
    """A message as sent over TCP: prefixed with its two-byte length (RFC 1035 4.2.2)."""
    if len(message) > MAX_MESSAGE_LEN:
        raise ValueError("DNS message longer than 65535 bytes")
    return TCP_LENGTH.pack(len(message)) + message


def split_tcp_frames(buffer):
    """``(messages, rest)``: the complete length-prefixed messages at the start of ``buffer`` and the bytes of
    the incomplete one after them (to be kept until more arrive)."""
    messages = []
    pos = 0
    n = len(buffer)
    while n - pos >= TCP_LENGTH.size:
        length = TCP_LENGTH.unpack_from(buffer, pos)[0]
        end = pos + TCP_LENGTH.size + length
        if end > n:
            break
        messages.append(bytes(buffer[pos + TCP_LENGTH.size:end]))
        pos = end
    return messages, bytes(buffer[pos:])
