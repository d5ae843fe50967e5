"""IPCP, the IP Control Protocol (RFC 1332, RFC 1877 DNS addresses): the automaton's hooks.

Theory of operation
-------------------
:class:`Ipcp` fills the hooks of the shared automaton (:mod:`pyslirp.ppp.fsm`)
for protocol 0x8021 and reports to its owner (the link) through ``ipcp_up()``,
``ipcp_down()`` and ``ipcp_finished()``.  The addresses are fixed by the
configuration: we are ``local_ip``, the peer is ``remote_ip``; they exist only
inside PPP frames.

Our Configure-Request carries IP-Address = ``local_ip`` (RFC 1332 3.3).  A Nak
suggesting another address for us is not followed (we keep asking for ours);
after ``max_failure`` of them, or a Reject, we stop sending the option (the
peer then picks some address for our end, which does not matter on a
point-to-point link, and nothing loops forever).

The client role (``role = "client"``): we ask for ``local_ip`` (0.0.0.0:
"assign me one", RFC 1332 3.3, and the address in the server's Nak is
taken) and for Primary/Secondary-DNS-Server-Address with 0.0.0.0 (RFC 1877:
the Nak carries the server's; a Reject stops us asking).  The server's
IP-Address is Nak'd with ``remote_ip`` when that is set and differs (pppd's
``local:remote``; SLiRP offers 0.0.0.0), acknowledged when it is not set,
except 0.0.0.0 which is then rejected.  We never offer DNS addresses and
never append an IP-Address to a Nak.  VJ is negotiated as on the server.

The peer's request (``reqci``, the server role):

* IP-Address (3): ``remote_ip`` is acknowledged; 0.0.0.0 ("please assign me
  one", RFC 1332 3.3) or any other address is Nak'd with ``remote_ip``.  A
  peer that keeps insisting is, after Max-Failure Naks, rejected instead (the
  automaton's ``reject_if_disagree``), which is logged.  A request without the
  option gets one Nak that appends IP-Address = ``remote_ip`` (RFC 1661 5.3:
  "Options which are not included in the Configure-Request MAY be appended to
  the Configure-Nak"), as pppd does; after that it is acknowledged as it is.
* Primary/Secondary-DNS-Server-Address (129/131, RFC 1877): Nak'd with
  ``dns[0]``/``dns[1]`` and acknowledged once the peer asks with those; when
  no such server is configured the option is rejected.
* IP-Compression-Protocol (2) with Van Jacobson TCP/IP header compression
  (RFC 1332 section 4: protocol 0x002D, Max-Slot-Id, Comp-Slot-Id), when
  ``vj`` is on: acknowledged with a Max-Slot-Id up to 15 (16 slots, pppd's
  default and most), Nak'd with 15 above that; our compressor then uses the
  peer's slot count and leaves the slot number out only if the peer allows
  it.  The short RFC 1172 form (no slot fields), another compression
  protocol, and the option when ``vj`` is off are rejected.
* IP-Addresses (1, deprecated by RFC 1332), the NBNS addresses (130/132) and
  anything unknown are rejected.

With ``vj`` on, our request also asks for Van Jacobson compression towards
us, ``<compress VJ 0f 01>`` as pppd does (16 slots, the slot number may be
left out); a Nak with fewer slots or without Comp-Slot-Id is followed, one
with another protocol, a Reject, or Max-Failure Naks that change nothing
stop us asking.

:class:`VjStage` is the Van Jacobson compression stage of the link (a
:class:`~pyslirp.ppp.protocol.Transform`, the first on output): from IPCP
reaching Opened to IPCP leaving it, IP packets we send go through
:class:`~pyslirp.wire.vj.VjCompressor` when the peer asked for VJ, and VJ
packets we receive through :class:`~pyslirp.wire.vj.VjDecompressor` when the
peer acknowledged ours; ``toss`` (a frame lost on the line) makes the
decompressor wait for an explicit slot number (RFC 1144 section 4.2), or
repair the slot (wire/vj.py, "Repair").  A lost frame is also the sign of a
noisy line, where the peer's decompressor (Linux's slhc has no repair) loses
every packet of a slot after a damaged one until an uncompressed one comes:
(the link also says so when the peer's CCP asks for a Reset: the peer lost one
of ours), for the next NOISY_PACKETS packets we send, every slot is refreshed with an
uncompressed packet after NOISY_REFRESH compressed ones, so a damaged frame
costs the peer only the segments up to the next refresh, which its TCP asks
for again at once (duplicate ACKs), not everything up to our retransmission
timeout.  NOISY_REFRESH is 0, every packet uncompressed while the line is
noisy: a header costs about 35 bytes more (2-6% of a bulk frame), while each
segment a refresh later would lose costs a whole segment again, and at a bit
error rate of 1e-5 a 1500-byte frame is damaged one time in nine.  A TCP
retransmission of ours (a timeout or a fast retransmit, which the Core
reports through ``PPPLink.peer_lost_frame(suspected=True)``) is weaker
evidence: on a clean line it is often spurious (a timeout learnt on small
segments while the first bulk ones queue, a client's duplicate ACK taken for
a loss), and 2000 packets of whole headers (30 s and more of a busy line at
115200 bit/s; a pure ACK 40 bytes instead of 5-8) then cost a two-way
transfer 8% of each direction for nothing.  So such a signal refreshes only
for SUSPECT_PACKETS: on a line that really is noisy the retransmissions, the
client's CCP Reset-Requests and our own lost input keep renewing it.  VJ
packets that were not negotiated, or that do not decompress, are counted and
dropped.  ``active`` says whether VJ runs in either direction: TCP
timestamps change every segment and force uncompressed headers, so a stack
on a VJ link should not use them.
"""

import ipaddress
import logging
import struct

from pyslirp.ppp.fsm import CONFACK, OptionVerdicts, note
from pyslirp.ppp.protocol import ControlProtocol, Transform
from pyslirp.wire import ppp as wppp
from pyslirp.wire import vj
from pyslirp.wire.errors import ParseError

log = logging.getLogger("pyslirp.ppp")

CI_ADDRS = 1
CI_COMPRESSTYPE = 2
CI_ADDR = 3
CI_MS_DNS1 = 129
CI_MS_WINS1 = 130
CI_MS_DNS2 = 131
CI_MS_WINS2 = 132

# RFC 1332 section 4: IP-Compression-Protocol = Van Jacobson, Max-Slot-Id, Comp-Slot-Id.
VJ_OPTION = struct.Struct("!HBB")
MAX_SLOT_ID = vj.DEFAULT_SLOTS - 1      # 15: what pppd asks for and accepts at most


ANY = b"\x00\x00\x00\x00"


def ip_bytes(text):
    return ipaddress.IPv4Address(text).packed


def ip_text(packed):
    return str(ipaddress.IPv4Address(bytes(packed)))


class Ipcp(ControlProtocol):
    """IPCP for one link; its data protocol is IP."""

    protocol = wppp.PROTO_IPCP
    data_protocol = wppp.PROTO_IP
    name = "IPCP"
    ncp = True

    def __init__(self, config, output, owner):
        self.owner = owner
        ControlProtocol.__init__(self, config, output)
        self.client = config.role == "client"
        self.local = ip_bytes(config.local_ip)
        self.remote = ip_bytes(config.remote_ip)
        # The client role: 0.0.0.0 means "whatever the server assigns" / "whatever it says it is".
        self.want_local = self.local
        self.ask_dns = {}             # client: option -> address asked for (RFC 1877), until rejected
        self.dns = tuple(ip_bytes(d) for d in config.dns[:2])
        self.ask_addr = True          # send IP-Address in our requests
        self.appended_addr = False    # we already Nak'd a request lacking IP-Address
        self.addr_naks = 0            # Naks of our address (not followed)
        self.peer_addr = None         # the peer's address as acknowledged
        self._sent = None
        # Van Jacobson: (max_slot_id, comp_slot_id) we ask for / the peer acknowledged / the peer asked for.
        self.ask_vj = self._want_vj()
        self.got_vj = None
        self.his_vj = None
        self._his_vj = None           # from the request being judged, committed when acknowledged
        self._vj_naks = 0
        self.vj = VjStage(self.counters)

    def data_input(self, info, now):
        self.owner.ip_received(info, now)

    def _want_vj(self):
        return (MAX_SLOT_ID, 1) if self.config.vj else None

    def resetci(self):
        if self.client:
            self.local = self.want_local
            self.ask_dns = {CI_MS_DNS1: ANY, CI_MS_DNS2: ANY}
        self.ask_addr = True
        self.appended_addr = False
        self.addr_naks = 0
        self.ask_vj = self._want_vj()
        self.got_vj = None
        self._vj_naks = 0

    def addci(self):
        options = []
        if self.ask_vj is not None:
            options.append((CI_COMPRESSTYPE, VJ_OPTION.pack(wppp.PROTO_VJC, *self.ask_vj)))
        if self.ask_addr:
            options.append((CI_ADDR, self.local))
        for kind in sorted(self.ask_dns):
            options.append((kind, self.ask_dns[kind]))
        data = wppp.build_options(options)
        self._sent = data
        self._sent_vj = self.ask_vj
        return data

    def ackci(self, data):
        if self._sent is None or data != self._sent:
            return False
        self.got_vj = self._sent_vj
        return True

    def nakci(self, data):
        for kind, value in wppp.parse_options(data):
            if kind == CI_COMPRESSTYPE and self.ask_vj is not None:
                self._vj_nak(value)
            elif kind == CI_ADDR and len(value) == 4 and self.client and self.want_local == ANY:
                # RFC 1332 3.3: we asked with 0.0.0.0, "the peer SHOULD provide a valid IP address"
                # in its Nak: take it.
                if value != ANY:
                    self.local = value
            elif kind in self.ask_dns and len(value) == 4:
                self.ask_dns[kind] = value          # RFC 1877 1: the Nak carries the server's address
            elif kind == CI_ADDR and len(value) == 4 and value != self.local and self.ask_addr:
                self.addr_naks += 1
                if self.addr_naks >= self.config.max_failure:
                    log.warning("IPCP: peer keeps refusing our address %s: no longer sending it",
                                self.config.local_ip)
                    self.ask_addr = False
                else:
                    log.info("IPCP: peer suggests %s as our address; we keep %s",
                             ip_text(value), self.config.local_ip)
        return True

    def _vj_nak(self, value):
        """RFC 1332 4: the peer suggests other VJ parameters (pppd's ipcp_nakci)."""
        if len(value) != VJ_OPTION.size or VJ_OPTION.unpack(value)[0] != wppp.PROTO_VJC:
            log.info("IPCP: peer suggests another IP compression (%s): no longer asking for VJ", value.hex())
            self.ask_vj = None
            return
        _, max_slot, comp_slot = VJ_OPTION.unpack(value)
        wanted = (min(max_slot, self.ask_vj[0]), 1 if comp_slot and self.ask_vj[1] else 0)
        if wanted == self.ask_vj:
            self._vj_naks += 1
            if self._vj_naks >= self.config.max_failure:
                log.info("IPCP: peer keeps refusing our VJ parameters: no longer asking for VJ")
                self.ask_vj = None
            return
        self.ask_vj = wanted

    def rejci(self, data):
        sent = dict(wppp.parse_options(self._sent or b""))
        options = wppp.parse_options(data)
        for kind, value in options:
            if sent.get(kind) != value:
                return False
        for kind, _ in options:
            if kind == CI_ADDR:
                log.info("IPCP: peer rejects our IP-Address option")
                self.ask_addr = False
            elif kind == CI_COMPRESSTYPE:
                log.info("IPCP: peer cannot compress TCP/IP headers (VJ) towards us")
                self.ask_vj = None
            elif kind in self.ask_dns:
                del self.ask_dns[kind]
        return True

    def reqci(self, data, reject_if_disagree):
        verdicts = OptionVerdicts(data, reject_if_disagree)
        seen_addr = False
        addr = None
        his_vj = None
        for kind, value in wppp.parse_options(data):
            if kind == CI_COMPRESSTYPE and self.config.vj and len(value) == VJ_OPTION.size and \
                    VJ_OPTION.unpack(value)[0] == wppp.PROTO_VJC:
                _, max_slot, comp_slot = VJ_OPTION.unpack(value)
                if max_slot > MAX_SLOT_ID:
                    # More slots than we keep: pppd Naks with its own maximum.
                    verdicts.nak(kind, value, VJ_OPTION.pack(wppp.PROTO_VJC, MAX_SLOT_ID, comp_slot and 1))
                else:
                    his_vj = (max_slot, 1 if comp_slot else 0)
            elif kind == CI_ADDR and len(value) == 4 and self.client:
                seen_addr = True
                self._judge_server_addr(kind, value, verdicts, reject_if_disagree)
                addr = value
            elif kind == CI_ADDR and len(value) == 4:
                seen_addr = True
                if value == self.remote:
                    addr = value
                else:
                    if reject_if_disagree:
                        log.warning("IPCP: peer insists on address %s (we assign %s): rejecting "
                                    "its IP-Address option", ip_text(value), self.config.remote_ip)
                    verdicts.nak(kind, value, self.remote)
            elif kind in (CI_MS_DNS1, CI_MS_DNS2) and len(value) == 4 and not self.client:
                index = 0 if kind == CI_MS_DNS1 else 1
                if index < len(self.dns):
                    if value != self.dns[index]:
                        verdicts.nak(kind, value, self.dns[index])
                else:
                    verdicts.reject(kind, value)
            else:
                # IP-Addresses (deprecated), IP-Compression-Protocol other than VJ (or VJ when it is off),
                # NBNS, unknown options and known ones of the wrong length.
                verdicts.reject(kind, value)
        if not seen_addr and not self.appended_addr and not reject_if_disagree and not verdicts.rejects \
                and not self.client:
            # Prompt the peer to take the address we assign (RFC 1661 5.3).
            self.appended_addr = True
            verdicts.naks.append((CI_ADDR, self.remote))
        code, reply = verdicts.result()
        if code == CONFACK:
            self.peer_addr = addr
            self.his_vj = his_vj
        return code, reply

    def _judge_server_addr(self, kind, value, verdicts, reject_if_disagree):
        """The client role: the server's own IP-Address (pppd's local:remote, the remote part).

        With ``remote_ip`` set, another address is Nak'd with it (a server such as SLiRP offers
        0.0.0.0 and takes the Nak); without it any address but 0.0.0.0 is acknowledged, and 0.0.0.0
        is rejected (we have none to give it, as pppd does)."""
        if self.remote != ANY:
            if value != self.remote:
                verdicts.nak(kind, value, self.remote)
        elif value == ANY:
            verdicts.reject(kind, value)

    @property
    def local_text(self):
        """Our address on this link: the configured one (server), the negotiated one (client)."""
        return ip_text(self.local) if self.client else self.config.local_ip

    @property
    def remote_text(self):
        """The peer's address: configured (server), or as the server acknowledged it (client)."""
        if not self.client:
            return self.config.remote_ip
        return ip_text(self.peer_addr) if self.peer_addr else ip_text(self.remote)

    @property
    def dns_servers(self):
        """Client role: the DNS servers the server gave us (RFC 1877), in order."""
        return tuple(ip_text(self.ask_dns[k]) for k in sorted(self.ask_dns) if self.ask_dns[k] != ANY)

    def up(self):
        log.debug("IPCP up: local %s, remote %s", self.local_text, self.remote_text)
        self.vj.start(self.his_vj, self.got_vj)
        self.owner.ipcp_up()

    def down(self):
        self.vj.stop()
        self.owner.ipcp_down()

    def finished(self):
        self.owner.ipcp_finished()


def _vj_text(params):
    return "%d slots%s" % (params[0] + 1, "" if params[1] else ", slot ids always sent")


NOISY_REFRESH = 0           # compressed packets per slot between two uncompressed ones on a noisy line
NOISY_PACKETS = 2000        # packets sent that way after the last frame lost on the line (ours or the peer's)
SUSPECT_PACKETS = 100       # ... after a TCP retransmission, which may have been spurious (see the docstring)


class VjStage(Transform):
    """Van Jacobson TCP/IP header compression on the open link (see the module docstring)."""

    def __init__(self, counters):
        self.counters = counters
        for key in ("vj_compressed_out", "vj_uncompressed_out", "vj_compressed_in", "vj_uncompressed_in",
                    "vj_errors", "vj_tossed", "vj_not_negotiated"):
            counters[key] = 0
        self.compressor = None
        self.decompressor = None
        self._noisy = 0             # packets still to send with refreshes (see NOISY_PACKETS)

    @property
    def active(self):
        """VJ runs in at least one direction."""
        return self.compressor is not None or self.decompressor is not None

    def start(self, send, receive):
        """IPCP is Opened: ``send``/``receive`` are the (max_slot_id, comp_slot_id) negotiated, or None."""
        self.compressor = vj.VjCompressor(slots=send[0] + 1, compress_slot_id=bool(send[1])) if send else None
        self.decompressor = vj.VjDecompressor(slots=receive[0] + 1) if receive else None
        if self.active:
            log.info("IPCP: Van Jacobson compression: send %s, receive %s",
                     _vj_text(send) if send else "off", _vj_text(receive) if receive else "off")

    def stop(self):
        self.compressor = self.decompressor = None

    def compress(self, protocol, info):
        if protocol == wppp.PROTO_IP and self.decompressor is not None:
            self.decompressor.sent(info)        # what the peer's acks can reach (VjDecompressor's repair)
        if protocol != wppp.PROTO_IP or self.compressor is None:
            return protocol, info
        if self._noisy:
            self._noisy -= 1
            if not self._noisy:
                self.compressor.noisy(None)
        protocol, info = self.compressor.compress(info)
        if protocol == wppp.PROTO_VJC:
            self.counters["vj_compressed_out"] += 1
        elif protocol == wppp.PROTO_VJUC:
            self.counters["vj_uncompressed_out"] += 1
        return protocol, info

    def decompress(self, protocol, info):
        if protocol not in (wppp.PROTO_VJC, wppp.PROTO_VJUC):
            return protocol, info
        if self.decompressor is None:
            note(self.counters, "vj_not_negotiated", logging.DEBUG,
                 "IPCP: VJ packet while VJ was not negotiated towards us: dropped")
            return None
        try:
            packet = self.decompressor.decompress(protocol, info)
        except ParseError as exc:
            if exc.reason == "tossed":
                self.counters["vj_tossed"] += 1
            else:
                note(self.counters, "vj_errors", logging.DEBUG, "IPCP: VJ packet dropped: %s", exc)
            return None
        self.counters["vj_compressed_in" if protocol == wppp.PROTO_VJC else "vj_uncompressed_in"] += 1
        return wppp.PROTO_IP, packet

    def toss(self):
        if self.decompressor is not None:
            self.decompressor.toss()
        self.peer_lost_frame()

    def peer_lost_frame(self, packets=NOISY_PACKETS):
        """A frame was lost on the line (ours: ``toss``; the peer's: its CCP Reset-Request): refresh for the
        next ``packets`` packets (NOISY_PACKETS; SUSPECT_PACKETS when only a TCP retransmission suggests it).
        A period already running is never shortened."""
        if self.compressor is not None:
            self.compressor.noisy(NOISY_REFRESH)
            if packets > self._noisy:
                self._noisy = packets
