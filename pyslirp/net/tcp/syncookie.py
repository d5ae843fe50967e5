"""SYN cookies (RFC 4987 section 3.6): a connection's handshake state carried in our initial sequence number. Sans-IO.

Theory of operation
-------------------
When the stack cannot afford state for a new SYN (the half-open table is
full, or the client opens connections faster than the rate limit), it
answers with a SYN-ACK whose sequence number *is* the state and forgets the
SYN.  A real client's ACK returns that number plus one (SEG.ACK = ISS + 1)
together with its own ISN plus one (SEG.SEQ = IRS + 1); if the cookie checks
out, the connection is created in the state after the handshake.  A flood of
SYNs that never complete costs no memory and no service connections.

RFC 4987 3.6: "the SYN-ACK's sequence number is set to a value that encodes
the information from the SYN [...] The value is a cryptographic hash of the
connection's addressing information, a coarse time counter, and some of the
TCP options."  Our layout of the 32-bit ISS::

     31  29 28 26 25                                       0
    +------+-----+------------------------------------------+
    | tick | mss | H(secret[tick], tuple, client ISN, mss)   |
    +------+-----+------------------------------------------+

* ``tick`` is ``now // TICK_MS`` (the caller's clock, integer ms), its low
  three bits in the cookie so that the check knows which secret to use;
* ``mss`` is the index of the client's MSS in :data:`MSS_TABLE`, rounded
  down, as Linux does (net/ipv4/syncookies.c encodes 2 bits the same way);
* every tick has its own 128-bit secret, drawn from the injected ``rng`` when
  the first cookie of that tick is made and forgotten MAX_AGE ticks later:
  the secret rotates, and a cookie expires with its secret (after between
  MAX_AGE and MAX_AGE + 1 ticks; 32 to 48 s);
* ``H`` is BLAKE2s keyed with that secret over the 4-tuple (client address
  and port, server address and port), the client's ISN and the MSS index,
  truncated to 26 bits.  Linux adds its data to the hash, so that a cookie
  with its low bits changed still decodes (to another MSS); here the index
  is covered by the hash, and changing any bit of the cookie invalidates it.
  A blind guess is accepted with probability 2**-26 per valid tick.

The sequence number has no room for the rest of the SYN's options.  When the
client offers timestamps (RFC 7323) and we answer with them, the low six bits
of our TSval carry them instead, and the client's ACK echoes them in TSecr
(:func:`ts_encode` / :func:`ts_decode`): the window scale the client asked for
(4 bits, 15 = none) and SACK permitted (1 bit), with bit 5 set as a marker.
The TSval is rounded down, never up, so that the connection's later TSvals
(its clock plus the same offset) never go backwards.  Without timestamps a
cookie's SYN-ACK offers neither window scaling nor SACK: the connection works
with a window of at most 64 KiB and recovers losses without SACK.

Cookie SYN-ACKs are rate-limited (by the stack) so that a flood cannot fill
the line with them; a flood that outruns the limit then also leaves most of
the real client's SYNs unanswered.  But a real client sends the same SYN
again (same port, same ISN) after its retransmission timeout, and a flood
from random ports almost never does.  :class:`UnansweredSyns` remembers the
SYNs the limit left unanswered, as 32-bit fingerprints in a fixed table
(newer overwrite older), so that the stack can answer a SYN that comes back
from a budget of its own.
"""

import hashlib
import struct
from array import array

from .seq import seq_sub

TICK_MS = 16000              # the coarse time counter's period
MAX_AGE = 2                  # ticks a cookie stays valid after the one it was made in
TICK_BITS = 3                # low bits of the tick in the cookie
MSS_BITS = 3                 # the MSS table's index
_TICK_SHIFT = 32 - TICK_BITS
_MSS_SHIFT = _TICK_SHIFT - MSS_BITS
_HASH_MASK = (1 << _MSS_SHIFT) - 1
_TICK_MASK = (1 << TICK_BITS) - 1
_MSS_MASK = (1 << MSS_BITS) - 1

# The client's MSS, rounded down to one of these (8 entries: the 3 bits of ``data``).  From small PPP MTUs
# (296 -> 256) through the default of RFC 9293 3.7.1 (536) to Ethernet's 1460; 64 is the floor of any MSS we use.
MSS_TABLE = (64, 256, 536, 1024, 1200, 1400, 1440, 1460)

# TSval low bits (see the module docstring).
TS_BITS = 6
TS_MASK = (1 << TS_BITS) - 1
TS_WSCALE_MASK = 0x0F
TS_NO_WSCALE = 0x0F
TS_SACK = 0x10
TS_MARK = 0x20
MAX_WSCALE = 14              # RFC 7323 2.3

_PORTS_ISN_MSS = struct.Struct("!HHIB")


def mss_index(mss):
    """The index of the largest MSS_TABLE entry not above ``mss`` (RFC 9293's 536 when the SYN had no option)."""
    if mss is None:
        mss = 536
    index = 0
    for i, value in enumerate(MSS_TABLE):
        if value <= mss:
            index = i
    return index


def ts_encode(base, wscale, sack):
    """Our TSval for a cookie's SYN-ACK: ``base`` with its low bits replaced by the options, never above ``base``.

    ``wscale``: the client's window scale (None: not offered, or not to be used); ``sack``: SACK permitted.
    """
    bits = TS_MARK | (TS_NO_WSCALE if wscale is None else min(wscale, MAX_WSCALE)) | (TS_SACK if sack else 0)
    value = ((base & ~TS_MASK) | bits) & 0xFFFFFFFF
    if seq_sub(value, base) > 0:
        value = (value - (1 << TS_BITS)) & 0xFFFFFFFF
    return value


def ts_decode(tsecr):
    """(wscale or None, sack) from the TSecr of the client's ACK, or None if it carries no cookie options."""
    if tsecr is None or not tsecr & TS_MARK:
        return None
    ws = tsecr & TS_WSCALE_MASK
    if ws == TS_NO_WSCALE:
        wscale = None
    elif ws > MAX_WSCALE:
        return None
    else:
        wscale = ws
    return wscale, bool(tsecr & TS_SACK)


class SynCookies(object):
    """Makes and checks cookies (see the module docstring); the secrets come from ``rng``, the time from the caller.

    Counters: ``made``, ``valid``, ``invalid`` (a forgery, a stale cookie, or an ACK for some other lost connection).
    """

    def __init__(self, rng, tick_ms=TICK_MS, max_age=MAX_AGE):
        if not 0 <= max_age < (1 << TICK_BITS) - 1:
            raise ValueError("max_age must leave the ticks it spans distinct in %d bits" % TICK_BITS)
        self._rng = rng
        self.tick_ms = tick_ms
        self.max_age = max_age
        self._secrets = {}              # tick -> 16-byte key, at most max_age + 1 of them
        self.made = 0
        self.valid = 0
        self.invalid = 0

    def _tick(self, now):
        return now // self.tick_ms

    def _prune(self, tick):
        for old in [t for t in self._secrets if not tick - self.max_age <= t <= tick]:
            del self._secrets[old]

    @staticmethod
    def _hash(secret, flow, client_isn, index):
        data = (bytes(flow.client_addr) + bytes(flow.server_addr)
                + _PORTS_ISN_MSS.pack(flow.client_port, flow.server_port, client_isn, index))
        digest = hashlib.blake2s(data, key=secret, digest_size=4).digest()
        return int.from_bytes(digest, "big") & _HASH_MASK

    def active(self, now):
        """Could an ACK arriving now carry one of our cookies?  (False: no cookie was made recently.)"""
        tick = self._tick(now)
        for t in self._secrets:
            if tick - self.max_age <= t <= tick:
                return True
        return False

    def make(self, flow, client_isn, mss, now):
        """The ISS for a SYN of ``flow`` (a FlowKey-like tuple) with sequence number ``client_isn`` and MSS ``mss``.

        Returns ``(iss, encoded_mss)``: announce nothing that depends on more than ``encoded_mss``.
        """
        tick = self._tick(now)
        secret = self._secrets.get(tick)
        if secret is None:
            self._prune(tick)
            secret = self._secrets[tick] = self._rng.getrandbits(128).to_bytes(16, "big")
        index = mss_index(mss)
        self.made += 1
        iss = ((tick & _TICK_MASK) << _TICK_SHIFT) | (index << _MSS_SHIFT) | self._hash(secret, flow, client_isn, index)
        return iss, MSS_TABLE[index]

    def check(self, flow, client_isn, iss, now):
        """The client's MSS the cookie ``iss`` encodes, or None if ``iss`` is not a live cookie for this SYN."""
        tick = self._tick(now)
        low = iss >> _TICK_SHIFT
        for age in range(self.max_age + 1):
            t = tick - age
            if t & _TICK_MASK != low:
                continue
            secret = self._secrets.get(t)
            if secret is None:
                break
            index = (iss >> _MSS_SHIFT) & _MSS_MASK
            if iss & _HASH_MASK == self._hash(secret, flow, client_isn, index):
                self.valid += 1
                return MSS_TABLE[index]
            break
        self.invalid += 1
        return None


class UnansweredSyns(object):
    """SYNs the SYN-ACK limit left unanswered, so that their retransmissions can be recognised. Fixed memory.

    ``slots`` fingerprints (4 bytes each) of keyed hashes of the 4-tuple and the client's ISN; a new entry
    overwrites whatever shared its slot, so a flood can only make this forget, never grow.
    """

    def __init__(self, rng, slots=65536):
        self._key = rng.getrandbits(128).to_bytes(16, "big")
        self._slots = array("I", [0]) * slots       # 32-bit fingerprints ("I" is 4 bytes where we run)
        self._n = slots
        self.recognised = 0

    def _place(self, flow, client_isn):
        data = (bytes(flow.client_addr) + bytes(flow.server_addr)
                + _PORTS_ISN_MSS.pack(flow.client_port, flow.server_port, client_isn, 0))
        digest = hashlib.blake2s(data, key=self._key, digest_size=8).digest()
        return int.from_bytes(digest[:4], "big") % self._n, int.from_bytes(digest[4:], "big") | 1

    def again(self, flow, client_isn):
        """Was this SYN left unanswered before?  It is remembered from now on either way (one hash per SYN)."""
        slot, fingerprint = self._place(flow, client_isn)
        if self._slots[slot] == fingerprint:
            self.recognised += 1
            return True
        self._slots[slot] = fingerprint
        return False
