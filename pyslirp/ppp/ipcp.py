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

The peer's request (``reqci``):

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
* IP-Compression-Protocol (2, Van Jacobson), IP-Addresses (1, deprecated by
  RFC 1332), the NBNS addresses (130/132) and anything unknown are rejected.
"""

import ipaddress
import logging

from pyslirp.ppp.fsm import CONFACK, OptionVerdicts
from pyslirp.ppp.protocol import ControlProtocol
from pyslirp.wire import ppp as wppp

log = logging.getLogger("pyslirp.ppp")

CI_ADDRS = 1
CI_COMPRESSTYPE = 2
CI_ADDR = 3
CI_MS_DNS1 = 129
CI_MS_WINS1 = 130
CI_MS_DNS2 = 131
CI_MS_WINS2 = 132


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
        self.local = ip_bytes(config.local_ip)
        self.remote = ip_bytes(config.remote_ip)
        self.dns = tuple(ip_bytes(d) for d in config.dns[:2])
        self.ask_addr = True          # send IP-Address in our requests
        self.appended_addr = False    # we already Nak'd a request lacking IP-Address
        self.addr_naks = 0            # Naks of our address (not followed)
        self.peer_addr = None         # the peer's address as acknowledged
        self._sent = None

    def data_input(self, info, now):
        self.owner.ip_received(info, now)

    def resetci(self):
        self.ask_addr = True
        self.appended_addr = False
        self.addr_naks = 0

    def addci(self):
        data = wppp.build_options([(CI_ADDR, self.local)] if self.ask_addr else [])
        self._sent = data
        return data

    def ackci(self, data):
        return self._sent is not None and data == self._sent

    def nakci(self, data):
        for kind, value in wppp.parse_options(data):
            if kind == CI_ADDR and len(value) == 4 and value != self.local and self.ask_addr:
                self.addr_naks += 1
                if self.addr_naks >= self.config.max_failure:
                    log.warning("IPCP: peer keeps refusing our address %s: no longer sending it",
                                self.config.local_ip)
                    self.ask_addr = False
                else:
                    log.info("IPCP: peer suggests %s as our address; we keep %s",
                             ip_text(value), self.config.local_ip)
        return True

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
        return True

    def reqci(self, data, reject_if_disagree):
        verdicts = OptionVerdicts(data, reject_if_disagree)
        seen_addr = False
        addr = None
        for kind, value in wppp.parse_options(data):
            if kind == CI_ADDR and len(value) == 4:
                seen_addr = True
                if value == self.remote:
                    addr = value
                else:
                    if reject_if_disagree:
                        log.warning("IPCP: peer insists on address %s (we assign %s): rejecting "
                                    "its IP-Address option", ip_text(value), self.config.remote_ip)
                    verdicts.nak(kind, value, self.remote)
            elif kind in (CI_MS_DNS1, CI_MS_DNS2) and len(value) == 4:
                index = 0 if kind == CI_MS_DNS1 else 1
                if index < len(self.dns):
                    if value != self.dns[index]:
                        verdicts.nak(kind, value, self.dns[index])
                else:
                    verdicts.reject(kind, value)
            else:
                # IP-Addresses (deprecated), IP-Compression-Protocol (VJ), NBNS,
                # unknown options and known ones of the wrong length.
                verdicts.reject(kind, value)
        if not seen_addr and not self.appended_addr and not reject_if_disagree and not verdicts.rejects:
            # Prompt the peer to take the address we assign (RFC 1661 5.3).
            self.appended_addr = True
            verdicts.naks.append((CI_ADDR, self.remote))
        code, reply = verdicts.result()
        if code == CONFACK:
            self.peer_addr = addr
        return code, reply

    def up(self):
        log.debug("IPCP up: local %s, remote %s", self.config.local_ip, self.config.remote_ip)
        self.owner.ipcp_up()

    def down(self):
        self.owner.ipcp_down()

    def finished(self):
        self.owner.ipcp_finished()
