"""One TCP connection opened by the PPP client (RFC 9293), sans-IO.

CONTRACT (the IP stack codes against exactly this; the implementation may add
to it but not change it):

    from pyslirp.wire.tcp import TcpRepr           # parsed segment value (see wire/tcp.py)
    from pyslirp.net.tcp.conn import TcpConfig, TcpConnection, TcpState, rst_for

    conn = TcpConnection(syn, local_ip, remote_ip, config, iss, now, mss_limit)
        # syn: the client's SYN (TcpRepr); local_ip/remote_ip: 4-byte bytes;
        # iss: our initial sequence number (net/tcp/isn.py, RFC 6528);
        # mss_limit: the largest MSS the link allows (link MTU - 40).
        # The connection starts in SYN_RECEIVED but sends nothing until accept():
        # the service socket must connect first.
    conn.accept(now)              # service connected: emit SYN-ACK
    conn.refuse(now)              # service down: emit RST|ACK for the SYN, state CLOSED, event Closed
    conn.receive(seg, now)        # a segment of this 4-tuple
    conn.send(data, now) -> int   # queue bytes from the service; returns how many were taken (<= send_space)
    conn.send_space -> int        # free room in the bounded send buffer
    conn.shutdown(now)            # service EOF: FIN after all queued data
    conn.abort(now)               # emit RST, state CLOSED, event Closed
    conn.read() -> bytes          # in-order data for the service (empty if none); stays counted against
                                  # the receive window until consumed()
    conn.consumed(nbytes, now) -> bool
                                  # the service socket took nbytes: the window reopens (a window update, and
                                  # True, if it grew by >= 2*MSS or from zero while at most half the largest
                                  # window offered was open; otherwise it rides on the next segment)
    conn.take_segments(budget, now) -> List[TcpRepr]
                                  # segments to emit now, in order; control segments (SYN, FIN, RST, pure ACKs,
                                  # window updates, probes) always; payload only while the payload bytes of this
                                  # call stay <= budget (budget < 0 means unlimited)
    conn.get_timer() -> Optional[int]; conn.handle_timer(now)
    conn.take_events() -> list    # frozen values from net/tcp/events.py, in order, each once:
        ESTABLISHED (Established)  handshake complete
        READABLE    (Readable)     read() has data
        WRITABLE    (Writable)     send_space grew (the runtime may grant read credit)
        PEER_FIN    (PeerFin)      the client's FIN arrived and every byte before it has been read():
                                   shutdown(SHUT_WR)
        RESET       (Reset)        the client reset the connection
        TIMED_OUT   (TimedOut)     retransmissions exhausted (the connection sent RST and is closed)
        CLOSED      (Closed)       the connection is finished (CLOSED, or TIME_WAIT expired): delete it
        Readable and Writable are coalesced (at most one of each per call); Closed is the last event.
    conn.state -> TcpState        # enum of the RFC 9293 states (no LISTEN: a passive connection is born in
                                  # SYN_RECEIVED, an active one, see connect() below, in SYN_SENT)
    conn.bytes_in, conn.bytes_out, conn.retransmits, ...   # plain int counters

    Time is an argument, integer milliseconds from the caller's clock: every call that may emit a
    segment or arm a timer takes ``now``, and none has a default.

    rst_for(seg) -> Optional[TcpRepr]
        # RFC 9293 3.10.7.1: the reset to send for a segment that matches no connection (None for a RST).

TcpConfig is a frozen dataclass of tunables with sane defaults (buffer sizes, MSS override, delayed-ACK time,
RTO bounds, retry counts, TIME_WAIT length, keepalive, Nagle, window scaling/SACK/timestamps switches).

ADDITIONS to the contract (all optional, nothing above changed):

    conn.pending_output -> bool   # take_segments() would return something right now (e.g. data held
                                  # back by an earlier budget): poll it when the line drains
    conn.wants_budget -> bool     # data, a FIN or a retransmission waits to be sent: False means that a
                                  # budget below one segment did not change what take_segments returned
    conn.syn_may_reuse(syn) -> bool
                                  # in TIME_WAIT, a new SYN for the same 4-tuple with a higher sequence
                                  # number may start a new incarnation (RFC 9293 3.10.7.4 / RFC 6191):
                                  # the stack may then drop this connection and create a new one
    conn.last_activity            # ms of the last segment received or data queued/sent (idle tracking)
    conn.counters                 # dict: reason -> int for dropped segments
    conn.name                     # "10.0.0.2:40000>10.0.0.1:22" for log lines
    conn.close_reason             # None, or refused / reset / timeout / aborted / closed / time_wait
    conn.ts_ok, conn.sack_ok, conn.ws_ok, conn.send_mss, conn.our_mss   # what was negotiated
    conn.rto, conn.srtt, conn.cwnd, conn.ssthresh, conn.rcv_wnd, conn.unsent   # read-only diagnostics
    conn.segment_limit = n or None    # the largest payload of a data segment we send from now on (never
                                      # above the negotiated MSS): the stack sizes segments to a slow line
                                      # while interactive traffic shares it (segments may be re-cut:
                                      # RFC 9293 3.9.1 lets a retransmission carry a different size)
    conn.rcv_limit = n or None        # cap on the receive window we advertise (bytes the client may send
                                      # beyond what we acknowledged; the right edge still never moves
                                      # left): keeps the client's own queue toward a slow line short
    conn.ack_every = 2 or 1           # ACK at least every this many full-sized segments (RFC 5681 4.2:
                                      # at least every second): 1 lets a small window keep a slow line busy
    conn.dup_thresh = 3 or 1          # duplicate ACKs that make a fast retransmit; 1 on a path that never
                                      # reorders (a serial line; see "Retransmission")
    conn.streaming                    # the client's latest data segment was a bulk one (> SMALL_SEGMENT)
    conn.reack_ms = n or None         # send an ACK of new data again if a streaming client stays silent
                                      # this long (see "Acknowledgements again"); counted in conn.reacks
    conn.suspend(now)             # the link is down but may come back: send nothing, run no timer but
                                  # TIME_WAIT's, keep every byte and all sequence state
    conn.resume(now, mss_limit=None)  # the link is back (the same client): carry on at once (see "Link
                                  # outages"); mss_limit: the new session's link MTU - 40, if smaller
    conn.suspended -> bool
    TcpConnection.connect(local_ip, local_port, remote_ip, remote_port, config, iss, now, mss_limit)
                                  # active open: SYN_SENT, the SYN goes out at the next take_segments();
                                  # then ESTABLISHED, or RESET (refused by a RST) / TIMED_OUT (no answer
                                  # to syn_retries + 1 SYNs) / UNREACHABLE, each followed by CLOSED
    conn.unreachable(now) -> bool # an ICMP destination unreachable for this connection: ends an active
                                  # open (True), counted only once synchronized (False)
    conn.active                   # True for connect(), False for a connection born of the peer's SYN
    Counters: bytes_in, bytes_out, segs_out, retransmits, fast_retransmits, lost_retransmits, dup_acks,
    ooo_segments, rto_count, challenge_acks, window_probes, keepalives_sent, window_updates.

    TcpConnection.from_cookie(syn, local_ip, remote_ip, config, iss, now, mss_limit, window)
                                  # the connection of a SYN answered statelessly (a SYN cookie): accepted,
                                  # its SYN-ACK counted as sent; receive() the client's ACK next
    window_shift(rcvbuf), our_mss(config, mss_limit), initial_window(config, rcv_limit)
                                  # what a new connection announces in its SYN-ACK (wscale, MSS, window),
                                  # for a SYN-ACK sent without a connection

A segment queued as the connection closes (the RST of refuse/abort/give-up) is still returned by
take_segments() after Closed: flush it once before deleting the connection.

Theory of operation
-------------------
Passive open: a client SYN creates the connection in SYN_RECEIVED; the
SYN-ACK goes out once the service socket has connected (accept), so a dead
service means an honest RST instead of an open-then-reset connection.  The
exception is a SYN the stack answered statelessly with a SYN cookie
(net/tcp/syncookie.py): ``from_cookie`` creates that connection, already
accepted and with its SYN-ACK counted as sent, from the SYN the cookie
recorded, and the client's ACK then completes the handshake as usual.

Active open (``connect``, the client role): the connection starts in
SYN_SENT and offers MSS, window scaling, SACK and timestamps as configured;
the SYN is retransmitted on the RFC 6298 timer with exponential backoff (1 s,
2 s, 4 s, ...) until ``syn_retries`` retransmissions went unanswered
(TimedOut).  RFC 9293 3.10.7.3 decides what arrives in SYN_SENT: an ACK
outside (ISS, SND.NXT] gets a RST, a RST with an acceptable ACK is a refusal
(Reset), a SYN-ACK settles the options from both SYNs and establishes, a bare
SYN is a simultaneous open (SYN_RECEIVED, our SYN repeated with an ACK).  An
ICMP unreachable ends the open (Unreachable).  From ESTABLISHED on both kinds
are the same automaton.

Input (``receive``) follows RFC 9293 3.10.7.4 in order: RST validation (RFC
5961 3.2: exact RCV.NXT resets, in-window gets a challenge ACK, anything else
is dropped), SYN in a synchronized state (RFC 5961 4.2: challenge ACK), PAWS
(RFC 7323 5.3), the acceptability test, the ACK field (RFC 5961 5.2 window,
ACK of unsent data -> ACK and drop, duplicate-ACK counting, NewReno recovery),
then segment text (trimmed to the window; out-of-order data held in a bounded
reassembly queue and SACKed) and finally the FIN.

Output is computed lazily by ``take_segments``: queued control segments
first (RSTs), then the SYN-ACK, one pending fast retransmission, then data
from SND.NXT within min(cwnd, peer window) with sender SWS avoidance and Nagle
(RFC 1122 4.2.3.4, RFC 896), then a window probe or keepalive, then a pure
ACK if one is owed and nothing carried it.  Every segment carries the current
ACK, window (never shrinking, receiver SWS avoided, RFC 1122 4.2.3.3),
timestamps and SACK blocks, so a pending ACK always rides on data when data
goes out.

Retransmission: one RTO timer (RFC 6298) per connection, go-back-N from
SND.UNA on expiry skipping what the client SACKed (RFC 2018), exponential
backoff (linear for a while on a noisy line that answers, see "A noisy
line"), give-up after ``max_retries`` consecutive expiries (RST, TimedOut).
Three duplicate ACKs trigger fast retransmit and NewReno fast recovery (RFC
5681, RFC 6582); window arithmetic lives in congestion.py.  With SACK, recovery
follows RFC 6675: every hole below the highest SACKed byte is retransmitted
as soon as the pipe (in flight, less what was SACKed, less the holes not yet
resent) leaves room under ssthresh, not one hole per partial ACK, and new data
follows under the same rule; the head's retransmission restarts the timer
(as Linux does: on a slow line the timer would otherwise expire while the
retransmission still waits behind the flight).  On a path that never
reorders or duplicates -- the stack's serial line sets ``dup_thresh`` to 1 --
loss detection need not wait for three duplicates (RFC 8985 2.2 on why three
is only a guess at reordering): the first duplicate ACK, or any ACK whose
SACK blocks leave a hole at SND.UNA, starts recovery, also below the RFC 6582
recovery point once the go-back after a timeout has resent everything the
client SACKed; and once the client SACKs data first sent after a round of
hole retransmissions, a hole still open below it lost its retransmission too
(RFC 8985's reasoning with a zero reordering window), and a new round starts
from SND.UNA instead of waiting for the timer.  An ACK that carries a D-SACK
(RFC 2883: its first block at or below the cumulative ACK, or inside the
second) is never a duplicate ACK: the client got a segment twice and said
so at once, which shows a spurious retransmission, not a loss (Linux's
FLAG_DSACKING_ACK).  When the client
advertises a zero window the persist timer sends zero-length probes below
SND.UNA (RFC 9293 3.8.6.1, RFC 1122 4.2.2.17) with backoff.

Acknowledgements again: a client whose window is all in flight sends nothing
more until our ACK comes, and if that ACK is lost on a noisy line it waits for
its retransmission timer (a second and more on a slow line: its RTO grows with
the queue in front of its segments), although everything arrived.  So when
``reack_ms`` is set (the stack sets it on a slow line) and the client was
streaming (its latest data segment a bulk one, no FIN yet), an ACK that
acknowledged new data arms a timer; any segment from the client stops it, and
if none came within ``reack_ms`` the same ACK goes once more (``reacks``).  A
lost ACK then costs ``reack_ms`` (a few of the client's segments' line time)
instead of an RTO; an ACK that was not lost arrives twice, which a SACK sender
takes for no loss (no new SACK information) and every sender for one duplicate
ACK, fewer than its threshold of three.

Timers (integer ms deadlines, ``get_timer`` is their minimum): retransmission,
persist (also the SWS override), delayed ACK, re-ACK, keepalive and TIME_WAIT.

Link outages: while the PPP link is down and may come back (the client's
pppd restarting, a line cut and restored), the stack suspends the
connection.  A suspended connection sends nothing and runs no timer except
TIME_WAIT's: retransmitting into a dead link would only count towards the
give-up (``max_retries``) and end in an RST nobody receives.  The service may
still queue data up to ``send_space`` and take what was received, so its
socket backs up as on a stalled path.  ``resume`` is TCP's response to the
lower layer's "connected again" indication (as in Schuetz et al., "TCP
Response to Lower-Layer Connectivity-Change Indications", the expired
draft-schuetz-tcpm-tcp-rlci-03): the outage is no evidence about the path or the
peer, so the give-up counts and the RTO backoff restart (the RTO is the
estimate's again), and what was in flight, which died with the link, is
resent at once from SND.UNA (go-back-N) rather than after a backed-off
timeout.  It was not lost to congestion: ssthresh is kept and cwnd restarts
from the restart window, as after an idle period (RFC 5681 4.1).  With
nothing in flight a keepalive-style probe (RFC 1122 4.2.3.6) goes instead:
its answer tells us the client's window, or its RST that the client no
longer knows the connection.  Either way the client's own retransmissions,
and its ACKs, carry the connection on from there.

Frames the client's link layer dropped (``link_dropped``): once a frame of
ours is lost on the line, a Deflate decompressor is out of step and drops
every compressed frame after it until our CCP Reset-Ack (Linux ppp_generic;
its VJ decompressor tosses with it), and its Reset-Request is what tells us.
Every segment in flight past the client's ACKs is then gone, and when that is
a tail loss nothing comes back to show it: no duplicate ACK, no SACK, only
the retransmission timer.  So when nothing new is left to send, the link's
report is taken as the duplicate ACK that cannot come: a fast retransmit of the
segment at SND.UNA after the Reset-Ack (once per window of data, as RFC 6582
allows one), whose ACK shows the hole, and the SACK recovery that follows
resends the rest.  Not a go-back-N: the segments before the lost frame
arrived, and their ACKs may still be on their way.

A noisy line (``line_answers``): on a line with bit errors a full-sized frame
is lost far more often than a short one (at a bit error rate of 3e-5 with
dropped and inserted bytes, one in two or three), the retransmission as often as the original, and after a loss the
client's Van Jacobson decompressor discards what follows (Linux's slhc), so
there is no duplicate ACK and every loss costs a timeout.  RFC 6298's
doubling then reaches tens of seconds after a few unlucky frames, and Karn's
rule keeps the doubled timer for the next loss too: a 20 kB transfer took
minutes.  The doubling protects a congested path and spares a dead peer;
neither is the case when the Core's probe (an LCP Echo-Request sent while a
connection is backed off and the line is silent) was answered: the line
carries both ways, and nothing but our own bounded queue is in front of it.
Then the backoff is undone, the timer runs again from the answer with the
estimate's RTO, and for NOISY_LINE_MS (30 s, as long as the stack's shorter
segments after a loss) the first ``linear_timeouts`` expiries of each loss
episode keep it and do not count towards ``max_retries`` (Linux does the same
for thin streams, ``tcp_thin_linear_timeouts``: six linear retries), and an
ACK of new data, which ends an episode, also drops the doubling Karn's rule
would keep for the next one.  Beyond an episode's linear expiries the
timer backs off as RFC 6298 says, so a client whose TCP stopped answering is
still given up after ``max_retries`` counted expiries (sooner than without
the probe's answer: the doubling starts again from the estimate).
"""

import enum
import logging
from dataclasses import dataclass

from ...wire.tcp import (ACK, FIN, PSH, RST, SYN, TS_OPTION_LEN, TcpRepr, max_sack_blocks,
                         sack_option_len)
from ..ratelimit import TokenBucket, every_power_of_two
from .buffers import Reassembler, SackScoreboard, SendBuffer
from .congestion import NewReno
from .events import (CLOSED, COALESCED, ESTABLISHED, PEER_FIN, READABLE, RESET, TIMED_OUT,
                     UNREACHABLE, WRITABLE)
from .rtt import RttEstimator
from .seq import seq_add, seq_ge, seq_gt, seq_in, seq_le, seq_lt, seq_sub

log = logging.getLogger("pyslirp.net.tcp")

DEFAULT_MSS = 536          # RFC 9293 3.7.1 (MUST-15): assume 536 when the SYN carries no MSS option
MIN_MSS = 64               # floor against absurdly small peer MSS values
MAX_WSCALE = 14            # RFC 7323 2.3
MAX_WINDOW_FIELD = 0xFFFF
SMALL_SEGMENT = 64         # payload bytes: at most this is a keystroke or its echo, not bulk (the stack's
                           # SMALL_PAYLOAD)
DUP_THRESH = 3             # RFC 5681 3.2: duplicate ACKs before a fast retransmit (see dup_thresh)
NOISY_LINE_MS = 30000      # after the line answered a probe, losses are its noise this long ("A noisy line")
_MAX_CTL = 8               # control segments queued between two take_segments() calls


class TcpState(enum.Enum):
    CLOSED = "CLOSED"
    SYN_SENT = "SYN_SENT"
    SYN_RECEIVED = "SYN_RECEIVED"
    ESTABLISHED = "ESTABLISHED"
    FIN_WAIT_1 = "FIN_WAIT_1"
    FIN_WAIT_2 = "FIN_WAIT_2"
    CLOSE_WAIT = "CLOSE_WAIT"
    CLOSING = "CLOSING"
    LAST_ACK = "LAST_ACK"
    TIME_WAIT = "TIME_WAIT"

    def __str__(self):
        return self.value


# States in which we may (re)transmit data or our FIN.
_SEND_STATES = frozenset([TcpState.ESTABLISHED, TcpState.CLOSE_WAIT, TcpState.FIN_WAIT_1,
                          TcpState.CLOSING, TcpState.LAST_ACK])
# States in which the client may still send us data.
_RECV_STATES = frozenset([TcpState.ESTABLISHED, TcpState.FIN_WAIT_1, TcpState.FIN_WAIT_2])
# States in which the service may still queue data.
_QUEUE_STATES = frozenset([TcpState.SYN_SENT, TcpState.SYN_RECEIVED, TcpState.ESTABLISHED,
                           TcpState.CLOSE_WAIT])
_KEEPALIVE_STATES = frozenset([TcpState.ESTABLISHED, TcpState.CLOSE_WAIT])


@dataclass(frozen=True)
class TcpConfig:
    """Tunables of every TCP connection (times in integer milliseconds, except the two from the file in seconds).

    This is also the ``[tcp]`` section of the configuration file: ``rcvbuf``, ``sndbuf``, ``mss``,
    ``idle_timeout`` and ``keepalive`` are read from it (pyslirp/config.py); the rest are internal tunables.
    """
    sndbuf: int = 262144                # bytes queued from the service and not yet acknowledged
    rcvbuf: int = 262144                # receive window: bytes from the client not yet taken by the service
    mss: int = 0                        # MSS we announce; 0 = the link's (MTU - 40); never above the link's
    delack_ms: int = 200                # delayed ACK at most this late (RFC 1122 4.2.3.2: < 500 ms)
    initial_rto_ms: int = 1000          # RFC 6298 2.1
    min_rto_ms: int = 200
    max_rto_ms: int = 60000
    max_retries: int = 12               # consecutive RTO expiries before giving up
    linear_timeouts: int = 6            # expiries without doubling once the line answers (see "A noisy line")
    syn_retries: int = 5                # SYN or SYN-ACK retransmissions before giving up
    msl_ms: int = 15000                 # TIME_WAIT lasts 2 * MSL
    keepalive: int = 0                  # s: idle time before a keepalive probe and between probes; 0 = off
    idle_timeout: int = 0               # s without traffic after which the stack resets the connection; 0 = never
    keepalive_probes: int = 4           # unanswered probes before giving up
    nagle: bool = True                  # RFC 896 for our small segments
    window_scaling: bool = True         # RFC 7323
    sack: bool = True                   # RFC 2018
    timestamps: bool = True             # RFC 7323
    challenge_ack_limit: int = 10       # RFC 5961 section 7: challenge ACKs per second (and the burst)
    max_ooo_ranges: int = 16            # separate out-of-order ranges held for reassembly


def rst_for(seg):
    """RFC 9293 3.10.7.1: the reset answering ``seg`` when no connection exists (None for a RST)."""
    if seg.flags & RST:
        return None
    if seg.flags & ACK:
        # "If the ACK bit is on, <SEQ=SEG.ACK><CTL=RST>"
        return TcpRepr(seg.dst_port, seg.src_port, seg.ack, 0, RST, 0)
    # "If the ACK bit is off, sequence number zero is used, <SEQ=0><ACK=SEG.SEQ+SEG.LEN><CTL=RST,ACK>"
    return TcpRepr(seg.dst_port, seg.src_port, 0, seq_add(seg.seq, seg.seg_len), RST | ACK, 0)


def window_shift(rcvbuf):
    """The window scale we announce for a receive buffer of ``rcvbuf`` bytes (RFC 7323 2.2, at most 14)."""
    shift = 0
    while (rcvbuf >> shift) > MAX_WINDOW_FIELD and shift < MAX_WSCALE:
        shift += 1
    return shift


def our_mss(config, mss_limit):
    """The MSS we announce: the configured one, capped by the link (RFC 9293 3.7.1, RFC 6691)."""
    return max(MIN_MSS, min(config.mss or mss_limit, mss_limit))


def initial_window(config, rcv_limit=None):
    """The window of our SYN-ACK (never scaled, RFC 7323 2.2) for an empty buffer under ``rcv_limit``."""
    window = config.rcvbuf
    if rcv_limit and rcv_limit < window:
        window = max(MIN_MSS, rcv_limit)
    return min(window, MAX_WINDOW_FIELD)


class TcpConnection(object):
    @classmethod
    def from_cookie(cls, syn, local_ip, remote_ip, config, iss, now, mss_limit, window):
        """A connection whose SYN-ACK was sent statelessly, as a SYN cookie (net/tcp/syncookie.py).

        ``syn`` is the client's SYN as the cookie recorded it (its sequence number, the MSS from the table, the
        window scale and SACK/timestamp options the SYN-ACK accepted), ``iss`` the cookie and ``window`` the
        window that SYN-ACK advertised.  The connection starts in SYN_RECEIVED as if it had sent that SYN-ACK
        itself and been accepted: feed it the client's ACK next (``receive``), which completes the handshake
        (ESTABLISHED) and delivers whatever data came with it.  It never sends the SYN-ACK again.
        """
        conn = cls(syn, local_ip, remote_ip, config, iss, now, mss_limit)
        conn.accepted = True
        conn._synack_sends = 1
        conn.snd_nxt = conn.snd_max = seq_add(iss, 1)
        conn.rcv_adv = seq_add(conn.rcv_nxt, window)
        return conn

    @classmethod
    def connect(cls, local_ip, local_port, remote_ip, remote_port, config, iss, now, mss_limit):
        """Active open (RFC 9293 3.10.1 OPEN, active): a connection in SYN_SENT whose SYN goes out at the
        next take_segments(); Established, or Reset / TimedOut / Unreachable then Closed, follow."""
        return cls(None, local_ip, remote_ip, config, iss, now, mss_limit, ports=(local_port, remote_port))

    def __init__(self, syn, local_ip, remote_ip, config, iss, now, mss_limit, ports=None):
        self.config = config
        self.local_ip = local_ip
        self.remote_ip = remote_ip
        self.active = syn is None       # we sent the SYN (connect); else the peer's SYN created us
        self._mss_limit = mss_limit
        if self.active:
            self.local_port, self.remote_port = ports
            self.name = "%s:%d>%s:%d" % (_ip(local_ip), self.local_port, _ip(remote_ip), self.remote_port)
            # Until the SYN-ACK says otherwise the peer is taken to offer everything we do (the options
            # are settled in _syn_sent_receive) and to have no window.
            syn = TcpRepr(self.remote_port, self.local_port, 0, 0, SYN, 0,
                          wscale=0 if config.window_scaling else None, sack_permitted=config.sack,
                          timestamp=(0, 0) if config.timestamps else None)
        else:
            self.local_port = syn.dst_port
            self.remote_port = syn.src_port
            self.name = "%s:%d>%s:%d" % (_ip(remote_ip), self.remote_port, _ip(local_ip), self.local_port)
        self._syn = syn
        self._state = TcpState.SYN_SENT if self.active else TcpState.SYN_RECEIVED
        self.accepted = self.active     # an active open needs no accept()
        self._syn_due = self.active     # our SYN (active open) is owed
        self.close_reason = None        # why the connection closed: refused, reset, timeout, ...
        self.last_activity = now
        self._suspended_at = None       # ms the link went down (see suspend), None while it is up

        # Counters.
        self.bytes_in = 0               # payload delivered in order to the receive queue
        self.bytes_out = 0              # payload sent for the first time
        self.segs_out = 0
        self.retransmits = 0            # segments retransmitted (RTO, fast retransmit, SYN-ACK)
        self.fast_retransmits = 0
        self.lost_retransmits = 0       # hole retransmissions found lost by a later SACK (serial line rule)
        self.dup_acks = 0
        self.ooo_segments = 0
        self.rto_count = 0
        self.link_drops = 0             # go-backs after the client's link layer dropped our frames
        self.challenge_acks = 0
        self.window_probes = 0
        self.keepalives_sent = 0
        self.window_updates = 0
        self.reacks = 0                 # ACKs sent again after a streaming client fell silent (reack_ms)
        self.counters = {}

        # Options negotiated from the SYN (we answer only what the client offered).
        self.ws_ok = syn.wscale is not None and config.window_scaling
        self.snd_wscale = min(syn.wscale, MAX_WSCALE) if self.ws_ok else 0
        self.rcv_wscale = window_shift(config.rcvbuf) if self.ws_ok else 0
        self.sack_ok = bool(syn.sack_permitted) and config.sack
        self.ts_ok = syn.timestamp is not None and config.timestamps
        self.ts_recent = syn.timestamp[0] if self.ts_ok else 0
        self._ts_offset = iss           # RFC 7323 5.4: a per-connection random offset for TSval

        # MSS (RFC 9293 3.7.1, RFC 6691): ours from the link, theirs from the SYN.
        self.our_mss = our_mss(config, mss_limit)
        self.segment_limit = None       # set by the stack (see the contract)
        self.rcv_limit = None
        self.ack_every = 2
        self.dup_thresh = DUP_THRESH
        self.reack_ms = None            # set by the stack (see the contract and "Acknowledgements again")
        self.peer_mss = syn.mss if syn.mss is not None else DEFAULT_MSS
        self.send_mss = max(MIN_MSS, min(self.peer_mss, mss_limit))   # payload + options per segment

        # Receive sequence space.
        self.irs = syn.seq
        self.rcv_nxt = seq_add(syn.seq, 1)
        self.rcv_adv = self.rcv_nxt     # right edge of the window we advertised
        self._adv_size = 0              # the window (bytes) the last segment advertised
        self._adv_max = 0               # the largest window (bytes) any segment advertised, the SYN's included
        self._bulk_in = False           # a segment larger than SMALL_SEGMENT arrived since that segment
        self.last_ack_sent = self.rcv_nxt
        self._rx = bytearray()          # in order, not yet read()
        self._rx_unconsumed = 0         # read() but not yet consumed()
        self._ooo = Reassembler(config.max_ooo_ranges)
        self._ooo_fin = None            # sequence number of an out-of-order FIN
        self._fin_received = False
        self._peer_fin_reported = False
        self._rcv_unacked = 0           # bytes received since the last ACK we sent
        self._rcv_mss_est = min(self.our_mss, DEFAULT_MSS)
        self._ack_now = False
        self._delack_at = None
        self._streaming = False         # the client's latest data segment was a bulk one (> SMALL_SEGMENT)
        self._reack_at = None           # when to send the latest ACK again (reack_ms)
        self._reacked = self.rcv_nxt    # the ACK the re-ACK timer was last armed for

        # Send sequence space.
        self.iss = iss
        self.snd_una = iss
        self.snd_nxt = iss
        self.snd_max = iss
        self.snd_wnd = syn.window       # RFC 7323 2.2: the window of a SYN is never scaled
        self.max_snd_wnd = syn.window
        self.snd_wl1 = syn.seq
        self.snd_wl2 = iss
        self._tx = SendBuffer(config.sndbuf)
        self._tx_seq = seq_add(iss, 1)  # sequence number of the first byte in _tx
        self._fin_queued = False
        self._scoreboard = SackScoreboard()

        self._rtt = RttEstimator(config.initial_rto_ms, config.min_rto_ms, config.max_rto_ms)
        self._cc = NewReno(self._smss(), max_window=max(4 * config.sndbuf, 1 << 16))
        self._rtt_seq = None            # Karn: the segment being timed (no timestamps)
        self._rtt_time = 0
        self._rtt_len = 0               # payload bytes of the segment being timed
        # The latest RTT sample as (ms, payload bytes of the timed segment; None when it came from a
        # timestamp), for the owner to take (the stack's delay signal); None when taken.
        self.rtt_sample = None
        self._dup_acks = 0
        self._in_recovery = False
        self._recover = iss
        self._partial_acks = 0
        self._rtx_pending = False       # fast retransmission of the segment at SND.UNA owed
        self._high_rxt = iss            # RFC 6675 HighRxt: SACK recovery retransmitted the holes below this
        self._rxt_round_end = iss       # SND.MAX when this round of hole retransmissions began
        self._retries = 0
        self._noisy_until = None        # until then losses are the line's noise (line_answers)
        self._linear = 0                # expiries of this episode that kept the RTO (see "A noisy line")
        self._synack_due = False
        self._synack_sends = 0
        self._last_send = now
        self._last_ack_rx = now

        # Timers (absolute ms or None).
        self._rtx_at = None
        self._persist_at = None
        self._persist_backoff = 0
        self._probes_unanswered = 0
        self._probe_due = False
        self._force_send = False
        self._keepalive_at = None
        self._ka_probes = 0
        self._tw_at = None

        self._ctl = []                  # control segments queued for the next take_segments()
        self._events = []
        # RFC 5961 section 7: challenge ACKs (and SYN-ACK repeats) at most challenge_ack_limit per second,
        # in bursts of as many; answers to out-of-window segments (RFC 9293 3.10.7.4) the same, separately.
        ack_limit = max(1, config.challenge_ack_limit)
        self._challenge_limiter = TokenBucket(ack_limit, ack_limit, now)
        self._oow_limiter = TokenBucket(ack_limit, ack_limit, now)
        if self.active:
            self.rcv_nxt = self.rcv_adv = self.last_ack_sent = 0
            self.snd_wnd = self.max_snd_wnd = 0
        else:
            log.debug("%s: SYN received (mss %d, ws %s, sack %s, ts %s)", self.name, self.peer_mss,
                      syn.wscale, self.sack_ok, self.ts_ok)

    # ================================================================ basics

    @property
    def state(self):
        return self._state

    def _set_state(self, new):
        """The one place the state changes."""
        if new is not self._state:
            log.debug("%s: %s => %s", self.name, self._state, new)
            self._state = new

    def _event(self, event):
        if isinstance(event, COALESCED) and event in self._events:
            return
        self._events.append(event)

    def take_events(self):
        events = self._events
        self._events = []
        return events

    def _drop(self, reason, seg=None):
        n = self.counters.get(reason, 0) + 1
        self.counters[reason] = n
        if every_power_of_two(n):
            log.debug("%s: dropped segment (%s, #%d): %s", self.name, reason, n, seg)

    def _queue_ctl(self, seg):
        # Bounded: input between two take_segments() calls cannot pile up control segments.
        if self._suspended_at is not None:
            self._drop("suspended", seg)            # the link is down: it could never arrive
        elif len(self._ctl) < _MAX_CTL:
            self._ctl.append(seg)
        else:
            self._drop("ctl_queue_full", seg)

    def _arm_rtx(self, now):
        self._rtx_at = now + self._rtt.rto

    def _smss(self):
        """Sender MSS without the variable SACK option (for congestion control)."""
        return max(1, self.send_mss - (TS_OPTION_LEN if self.ts_ok else 0))

    def _sack_count(self):
        if not (self.sack_ok and self._ooo):
            return 0
        return min(len(self._ooo.ranges()), max_sack_blocks(self.ts_ok))

    def _eff_mss(self):
        """Payload per segment: the MSS minus the options every segment carries now (RFC 9293 3.7.1)."""
        n = self._smss() - sack_option_len(self._sack_count())
        limit = self.segment_limit
        if limit and limit < n:
            n = limit
        return max(1, n)

    def _ts_val(self, now):
        return (now + self._ts_offset) & 0xFFFFFFFF

    def _fin_seq(self):
        return seq_add(self._tx_seq, len(self._tx))

    def _fin_sent(self):
        return self._fin_queued and seq_lt(self._fin_seq(), self.snd_max)

    @property
    def wants_budget(self):
        """Data, a FIN or a retransmission waits to be sent: what ``take_segments`` holds back for a budget.
        False: a smaller budget than one segment made no difference to what it returned (control segments
        never wait for one)."""
        return self._rtx_pending or self._pending_send()

    @property
    def send_space(self):
        if self._state not in _QUEUE_STATES or self._fin_queued:
            return 0
        return self._tx.free

    @property
    def rto(self):
        return self._rtt.rto

    @property
    def srtt(self):
        return self._rtt.srtt

    @property
    def cwnd(self):
        return self._cc.window()

    @property
    def ssthresh(self):
        return self._cc.ssthresh

    @property
    def in_recovery(self):
        return self._in_recovery

    @property
    def rto_slack(self):
        """ms: the least variation term of the RTO (RttEstimator.slack); the stack sets it on a slow line."""
        return self._rtt.slack

    @rto_slack.setter
    def rto_slack(self, ms):
        self._rtt.slack = max(0, int(ms))

    @property
    def rcv_wnd(self):
        """The window currently advertised (bytes from RCV.NXT to the right edge)."""
        return max(0, seq_sub(self.rcv_adv, self.rcv_nxt))

    @property
    def unsent(self):
        return max(0, seq_sub(self._fin_seq(), self.snd_nxt))

    # ============================================================ link outages

    @property
    def suspended(self):
        return self._suspended_at is not None

    def suspend(self, now):
        """The link is down but may come back: send nothing and run no timer but TIME_WAIT's (see
        "Link outages")."""
        if self._state is TcpState.CLOSED or self._suspended_at is not None:
            return
        self._suspended_at = now
        self._ctl = []
        log.debug("%s: suspended in %s", self.name, self._state)

    def resume(self, now, mss_limit=None):
        """The link is back, to the same client: resend what was in flight at once, or probe (see
        "Link outages").  ``mss_limit``: the largest MSS the new session's link carries."""
        if self._suspended_at is None:
            return
        down = now - self._suspended_at
        self._suspended_at = None
        state = self._state
        if state is TcpState.CLOSED or state is TcpState.TIME_WAIT:
            return
        log.debug("%s: resumed in %s after %d ms", self.name, state, down)
        if mss_limit:
            # RFC 9293 3.7.1: the effective send MSS may only be lowered by what the path carries.
            limit = max(MIN_MSS, mss_limit)
            if self.send_mss > limit:
                self.send_mss = limit
                self._cc.set_mss(self._smss())
        # The client could not answer while the link was down: nothing counts against it.
        self._retries = 0
        self._noisy_until = None
        self._linear = 0
        self._probes_unanswered = 0
        self._ka_probes = 0
        self._persist_backoff = 0
        self._rtt.clear_backoff()
        self._last_ack_rx = now
        self._rtx_at = self._persist_at = self._delack_at = self._reack_at = None
        if self._keepalive_at is not None:
            self._keepalive_at = now + self.config.keepalive * 1000
        if state is TcpState.SYN_RECEIVED:
            if self.accepted and self._synack_sends:
                self._synack_due = True             # our SYN-ACK may have died with the link
            self._update_timers(now)
            return
        outstanding = seq_sub(self.snd_max, self.snd_una)
        if outstanding > 0 and state in _SEND_STATES:
            # Go back to SND.UNA now (RFC 6298 5.4 without 5.5: no backoff), restart window (RFC 5681 4.1).
            self._cc.on_idle(now)
            self._in_recovery = False
            self._dup_acks = 0
            self._partial_acks = 0
            self._rtx_pending = False
            self._recover = self.snd_max            # RFC 6582 4: no fast retransmit for go-back duplicates
            self._rtt_seq = None                    # Karn
            self.snd_nxt = self.snd_una
            if self.snd_wnd == 0:
                self._probe_due = True
        else:
            self._probe_due = True                  # an old sequence number: the client must answer
        self._update_timers(now)

    @property
    def backed_off(self):
        """An RTO expired and nothing was acknowledged since: the connection waits out a backed-off timer, or one
        that a noisy line keeps at the estimate (see "A noisy line")."""
        return ((self._rtt.backoff > 0 or self._linear > 0) and self._suspended_at is None
                and self._state in _SEND_STATES and seq_sub(self.snd_max, self.snd_una) > 0)

    def link_alive(self, now):
        """The line was silent and carries again (the stack's connectivity indication, see "Link outages"):
        a backed-off connection retransmits from SND.UNA at once with the backoff cleared, as on resume()."""
        if not self.backed_off:
            return
        log.debug("%s: the line carries again: retransmitting at once", self.name)
        self._retries = 0
        self._noisy_until = None
        self._linear = 0
        self._rtt.clear_backoff()
        self._rtt_seq = None                        # Karn
        self._in_recovery = False
        self._dup_acks = 0
        self._rtx_pending = False
        self._recover = self.snd_max                # RFC 6582 4: no fast retransmit for go-back duplicates
        self.snd_nxt = self.snd_una
        self._arm_rtx(now)

    def line_answers(self, now):
        """The line carried a probe both ways while this connection waited out a backed-off timer (see "A noisy
        line"): the backoff is undone, the timer runs again from now with the estimate's RTO, and for
        NOISY_LINE_MS each loss episode's first ``linear_timeouts`` expiries keep it.  True if it applied."""
        if not self.backed_off or self._linear >= self.config.linear_timeouts:
            return False
        self._noisy_until = now + NOISY_LINE_MS
        self._rtt.clear_backoff()
        self._arm_rtx(now)
        log.debug("%s: the line answers: losses are noise, timer back to %d ms", self.name, self._rtt.rto)
        return True

    def _noisy(self, now):
        return self._noisy_until is not None and now < self._noisy_until

    def link_dropped(self, now):
        """The client's link layer dropped our frames from a lost one on (see "Frames the client's link layer
        dropped"): when nothing new is left to send after it, a fast retransmit of the segment at SND.UNA now,
        once per window of data; the SACK recovery that follows resends the rest.  True if it retransmits."""
        if seq_sub(self.snd_max, self.snd_una) <= 0 or self._state not in _SEND_STATES \
                or self._suspended_at is not None:
            return False
        if self._in_recovery or not seq_ge(self.snd_una, self._recover):
            return False        # recovering already: its SACK rounds find the dropped frames
        if self._pending_send():
            return False        # new data follows the Reset-Ack: its ACKs show the hole (and SACK it)
        self.link_drops += 1
        log.debug("%s: the client's link dropped our frames: fast retransmit at %d", self.name, self.snd_una)
        self._enter_recovery()
        return True

    # ========================================================= service side

    def accept(self, now):
        """The service socket connected: answer the SYN (RFC 9293 3.10.7.2)."""
        if self._state is not TcpState.SYN_RECEIVED or self.accepted:
            return
        self.accepted = True
        self._synack_due = True

    def refuse(self, now):
        """The service is unreachable: RST|ACK for the SYN, CLOSED."""
        if self._state is TcpState.CLOSED:
            return
        if self.accepted:
            self.abort(now)
            return
        self._queue_ctl(rst_for(self._syn))
        self._close("refused")

    def send(self, data, now):
        """Queue service bytes; returns how many fit in the send buffer."""
        if self._state not in _QUEUE_STATES or self._fin_queued or not data:
            return 0
        n = self._tx.append(data)
        if n:
            self.last_activity = now
        return n

    def shutdown(self, now):
        """Service EOF: our FIN goes out after every queued byte (RFC 9293 3.10.4 CLOSE)."""
        state = self._state
        if self._fin_queued or state not in _QUEUE_STATES:
            return
        if state is TcpState.SYN_RECEIVED and not self.accepted:
            self.refuse(now)
            return
        self._fin_queued = True
        if state is TcpState.ESTABLISHED:
            self._set_state(TcpState.FIN_WAIT_1)
        elif state is TcpState.CLOSE_WAIT:
            self._set_state(TcpState.LAST_ACK)
        # SYN_SENT, SYN_RECEIVED: FIN_WAIT_1 once the handshake completes (RFC 9293 3.10.4: "queue for
        # processing after entering ESTABLISHED state").

    def abort(self, now):
        """Reset the connection (RFC 9293 3.10.5 ABORT): <SEQ=SND.NXT><CTL=RST>."""
        state = self._state
        if state is TcpState.CLOSED:
            return
        if state is TcpState.SYN_RECEIVED and not self.accepted:
            self._queue_ctl(rst_for(self._syn))
        elif state is TcpState.SYN_SENT:
            pass                                    # RFC 9293 3.10.5: SYN-SENT: delete the TCB, no RST
        elif state is not TcpState.TIME_WAIT:
            self._queue_ctl(self._make(self.snd_max, RST | ACK, now, options=False))
        self._close("aborted")

    def read(self):
        """In-order bytes for the service (they still count against the window until consumed())."""
        if not self._rx:
            return b""
        data = bytes(self._rx)
        self._rx = bytearray()
        self._rx_unconsumed += len(data)
        self._maybe_peer_fin()
        return data

    def consumed(self, nbytes, now):
        """The service socket took ``nbytes``: reopen the window (RFC 9293 3.8.6.2.2).  True when that made a
        window update due; False: nothing to send for it (the window grew too little to announce)."""
        n = max(0, min(nbytes, self._rx_unconsumed))
        self._rx_unconsumed -= n
        if self._state not in _RECV_STATES and self._state is not TcpState.SYN_RECEIVED:
            return False
        cur = self.rcv_wnd
        # What the window field can say: without window scaling a candidate beyond 64 KiB is announced as
        # 65535, and a window at 65533 would be "updated" by two bytes after every service write.
        new = min(self._window_candidate(), MAX_WINDOW_FIELD << self.rcv_wscale)
        threshold = min(2 * self.our_mss, max(1, self._rcv_buf() // 2))
        if new > cur and (cur == 0 or new - cur >= threshold):
            if 2 * cur > self._adv_max:
                # More than half the largest window we offered is still open: the client is not held back by it
                # (its SWS avoidance sends once half the largest window it saw is usable), so the larger window
                # rides on our next segment, as in Linux's tcp_cleanup_rbuf.  The SYN-ACK could offer only
                # 65535 unscaled: an echo's answer, about to follow the service write that freed its request,
                # carries the scaled window instead of a pure ACK sent just before it.
                return False
            self._ack_now = True
            self.window_updates += 1
            return True
        return False

    # ====================================================== receive window

    def _rcv_buf(self):
        """The largest window we offer: rcvbuf, or less under ``rcv_limit``."""
        buf = self.config.rcvbuf
        limit = self.rcv_limit
        if limit and limit < buf:
            buf = max(MIN_MSS, limit)
        return buf

    def _rcv_space(self):
        """The window we could offer now: free buffer space, at most ``rcv_limit``.

        The limit bounds what the client may have in flight toward us (its queue toward a slow line), not
        our buffering: bytes received but not yet taken by the service do not count against it.
        """
        space = max(0, self.config.rcvbuf - len(self._rx) - self._rx_unconsumed)
        limit = self._rcv_buf()
        return space if space < limit else limit

    def _window_candidate(self):
        """The window (bytes) we would advertise now, before scaling.

        RFC 1122 4.2.3.3 (receiver SWS avoidance): the right edge moves only when it can move by at
        least min(RCV.BUFF / 2, MSS); RFC 9293 3.8.6.2.2: it never moves left.
        """
        cur = self.rcv_wnd
        space = self._rcv_space()
        if space > cur and space - cur >= min(self._rcv_buf() // 2, self.our_mss):
            return space
        # A window already as large as the one last advertised is no silly window: keep offering that size
        # (the edge moves on by what the service took, as Linux's tcp_select_window does), so that an
        # exchange of small segments (keystrokes, their echoes) leaves the window field unchanged and Van
        # Jacobson compression can send its 3-byte header (RFC 1144 section 3.2.3: a changed window costs
        # two or three bytes and rules out the special cases for echoed traffic).
        size = self._adv_size
        if cur < size <= space and size >= min(self._rcv_buf() // 2, self.our_mss):
            return size
        # A lowered ``rcv_limit`` (a slow line that interactive traffic now shares) closes the window by
        # holding the right edge, but only against bulk: the limit bounds what the client queues toward the
        # line, and a client sending only keystrokes has queued nothing.  Held against small segments too, it
        # would change the window field on every echo for dozens of exchanges (a 5 KB window closing by 64
        # bytes each), each answer 5 bytes longer under Van Jacobson compression; the first bulk segment
        # still starts the closing.
        if (cur < size and not self._bulk_in and size <= self._free_space()
                and size >= min(self._rcv_buf() // 2, self.our_mss)):
            return size
        return cur

    def _free_space(self):
        """Free receive buffer space, regardless of ``rcv_limit``."""
        return max(0, self.config.rcvbuf - len(self._rx) - self._rx_unconsumed)

    def _select_window(self):
        """The 16-bit window field for an outgoing segment; records the advertised right edge."""
        cur = self.rcv_wnd
        new = self._window_candidate()
        ws = self.rcv_wscale
        field = min(new >> ws, MAX_WINDOW_FIELD)
        if (field << ws) < cur:
            # Scaling rounds down; round up instead of retracting the edge (RFC 7323 2.4).
            field = min((cur + (1 << ws) - 1) >> ws, MAX_WINDOW_FIELD)
        edge = seq_add(self.rcv_nxt, field << ws)
        if seq_gt(edge, self.rcv_adv):
            self.rcv_adv = edge
        self._adv_size = field << ws
        if self._adv_size > self._adv_max:
            self._adv_max = self._adv_size
        self._bulk_in = False
        return field

    # ============================================================== output

    def _make(self, seq, flags, now, payload=b"", options=True):
        """Build an outgoing segment carrying the current ACK, window, timestamps and SACK blocks."""
        window = 0
        if not flags & RST:
            window = self._select_window()
        ts = None
        blocks = ()
        if options and not flags & RST:
            if self.ts_ok:
                ts = (self._ts_val(now), self.ts_recent)
            count = self._sack_count()
            if count:
                base = self.rcv_nxt
                blocks = tuple((seq_add(base, s), seq_add(base, e))
                               for s, e in self._ooo.ranges_by_recency()[:count])
        ack = self.rcv_nxt if flags & ACK else 0
        if flags & ACK and not flags & RST:
            self.last_ack_sent = self.rcv_nxt
            self._ack_now = False
            self._delack_at = None
            self._rcv_unacked = 0
            if self.reack_ms and self._streaming and not self._fin_received and self.rcv_nxt != self._reacked:
                # New data acknowledged while the client streams: if it falls silent, this ACK may have
                # been lost (see "Acknowledgements again").
                self._reacked = self.rcv_nxt
                self._reack_at = now + self.reack_ms
        self.segs_out += 1
        return TcpRepr(self.local_port, self.remote_port, seq & 0xFFFFFFFF, ack, flags, window,
                       sack_blocks=blocks, timestamp=ts, payload=payload)

    def _syn_sent(self, now):
        """Our SYN or SYN-ACK goes out (``now``): counted, timed unless a retransmission (Karn's rule,
        RFC 6298 3), SND.NXT past the ISS, and the retransmission timer running."""
        self.segs_out += 1
        if self._synack_sends:
            self.retransmits += 1
            self._rtt_seq = None                   # Karn
        else:
            self._rtt_seq = self.iss
            self._rtt_time = now
            self._rtt_len = 0
        self._synack_sends += 1
        self.snd_nxt = self.snd_max = seq_add(self.iss, 1)
        if self._rtx_at is None:
            self._arm_rtx(now)

    def _make_synack(self, now):
        space = self._rcv_space()
        window = min(space, MAX_WINDOW_FIELD)      # RFC 7323 2.2: not scaled in a SYN
        window = min(max(window, self.rcv_wnd), MAX_WINDOW_FIELD)   # never retract the edge we track
        edge = seq_add(self.rcv_nxt, window)
        if seq_gt(edge, self.rcv_adv):
            self.rcv_adv = edge
        self._adv_max = max(self._adv_max, window)
        ts = (self._ts_val(now), self.ts_recent) if self.ts_ok else None
        self.last_ack_sent = self.rcv_nxt
        self._ack_now = False
        self._delack_at = None
        self._syn_sent(now)
        self._synack_due = False
        return TcpRepr(self.local_port, self.remote_port, self.iss, self.rcv_nxt, SYN | ACK, window,
                       mss=self.our_mss, wscale=self.rcv_wscale if self.ws_ok else None,
                       sack_permitted=self.sack_ok, timestamp=ts)

    def _make_syn(self, now):
        """Our SYN (RFC 9293 3.10.1): MSS, window scale, SACK-permitted and timestamps as configured."""
        window = min(self._rcv_space(), MAX_WINDOW_FIELD)      # RFC 7323 2.2: not scaled in a SYN
        self._adv_max = max(self._adv_max, window)
        ts = (self._ts_val(now), 0) if self.ts_ok else None
        self._syn_sent(now)
        self._syn_due = False
        return TcpRepr(self.local_port, self.remote_port, self.iss, 0, SYN, window,
                       mss=self.our_mss, wscale=self.rcv_wscale if self.ws_ok else None,
                       sack_permitted=self.sack_ok, timestamp=ts)

    def _pending_send(self):
        """Unsent data or an unsent FIN beyond SND.NXT."""
        if seq_lt(self.snd_nxt, self._fin_seq()):
            return True
        return self._fin_queued and self.snd_nxt == self._fin_seq()

    def _plan(self):
        """The next data/FIN segment from SND.NXT as (seq, length, fin), or None if nothing may go.

        RFC 5681: at most min(cwnd, rwnd) in flight (plus limited transmit, RFC 3042).
        RFC 1122 4.2.3.4: sender SWS avoidance; RFC 896: Nagle.
        """
        if self._state not in _SEND_STATES:
            return None
        una = self.snd_una
        nxt = self.snd_nxt
        in_rtx = seq_lt(nxt, self.snd_max)
        if in_rtx and self._scoreboard:
            off = self._scoreboard.skip(seq_sub(nxt, una))
            skipped = seq_add(una, off)
            if seq_gt(skipped, nxt):
                # Go-back-N jumps over what the client SACKed (RFC 2018).
                nxt = self.snd_nxt = skipped if seq_le(skipped, self.snd_max) else self.snd_max
                in_rtx = seq_lt(nxt, self.snd_max)
        fin_seq = self._fin_seq()
        avail = max(0, seq_sub(fin_seq, nxt))
        fin_pending = self._fin_queued and seq_le(nxt, fin_seq)
        if avail == 0 and not fin_pending:
            return None
        flight = seq_sub(nxt, una)
        cwnd = self._cc.window()
        if not self._in_recovery and 0 < self._dup_acks < 3:
            cwnd += self._dup_acks * self._smss()
        room_w = seq_sub(seq_add(una, self.snd_wnd), nxt)
        if self._in_recovery and self.sack_ok and self._scoreboard:
            # RFC 6675 5 step 4.2 and (C): in SACK recovery new data goes while pipe < cwnd = ssthresh.
            room = min(room_w, self._cc.ssthresh - self._sack_pipe())
        else:
            room = min(room_w, cwnd - flight)
        mss = self._eff_mss()
        n = min(avail, mss)
        if in_rtx:
            n = min(n, seq_sub(self.snd_max, nxt))
            nxt_sacked = self._scoreboard.next_start(seq_sub(nxt, una)) if self._scoreboard else None
            if nxt_sacked is not None:
                n = min(n, nxt_sacked - seq_sub(nxt, una))
        n = max(0, min(n, room))
        fin = fin_pending and n == avail and room_w > n
        if n == 0 and not fin:
            return None
        if in_rtx:
            return nxt, n, fin
        if n < mss and not fin:
            if n < avail:
                # Window- or cwnd-limited: send a partial segment only if it is at least half the
                # largest window the client offered, or when the override timer fired.
                if not (n >= self.max_snd_wnd // 2 or self._force_send):
                    return None
            elif self.config.nagle and flight > 0 and not self._force_send:
                # Nagle: a small final segment waits while data is unacknowledged.
                return None
        return nxt, n, fin

    def _emit_data(self, seq, n, fin, now):
        off = seq_sub(seq, self._tx_seq)
        payload = self._tx.peek(off, n) if n else b""
        end = seq_add(seq, n)
        flags = ACK
        if n and end == self._fin_seq():
            flags |= PSH                            # the last segment of what is queued
        if fin:
            flags |= FIN
        new_end = seq_add(end, 1) if fin else end
        if seq_lt(seq, self.snd_max):
            self.retransmits += 1
            self._rtt_seq = None                    # Karn: never time a retransmitted segment
        else:
            self.bytes_out += n
            if self._rtt_seq is None and not self.ts_ok:
                self._rtt_seq = seq
                self._rtt_time = now
                self._rtt_len = n
            self.last_activity = now
        if seq_gt(new_end, self.snd_nxt):
            self.snd_nxt = new_end
        if seq_gt(new_end, self.snd_max):
            self.snd_max = new_end
        if self._rtx_at is None:
            self._arm_rtx(now)                      # RFC 6298 5.1
        self._force_send = False
        self._last_send = now
        return self._make(seq, flags, now, payload)

    def _head_retransmission(self):
        """(seq, n, fin) for a fast/partial-ACK retransmission of the segment at SND.UNA."""
        una = self.snd_una
        outstanding = seq_sub(self.snd_max, una)
        if outstanding <= 0:
            return None
        n = min(self._eff_mss(), outstanding, max(0, seq_sub(self._fin_seq(), una)))
        nxt_sacked = self._scoreboard.next_start(0) if self._scoreboard else None
        if nxt_sacked is not None:
            n = min(n, nxt_sacked)
        fin = self._fin_sent() and seq_add(una, n) == self._fin_seq()
        if n == 0 and not fin:
            return None
        return una, n, fin

    def _sack_pipe(self):
        """RFC 6675 4 (SetPipe), for a line that never reorders: what is in flight, less what the client
        SACKed and less the holes below its highest SACKed byte not yet retransmitted (they are lost)."""
        board = self._scoreboard
        una = self.snd_una
        high = max(0, seq_sub(self._high_rxt, una))
        return max(0, seq_sub(self.snd_nxt, una) - board.sacked_bytes() - board.unsacked_below_highest(high))

    def _next_hole(self):
        """RFC 6675 NextSeg() rule 1: (seq, n) of the first hole at or above HighRxt and below the highest SACKed
        byte, when the pipe leaves room for it (cwnd is ssthresh in recovery, section 5 step 4.2); else None."""
        board = self._scoreboard
        una = self.snd_una
        off = board.skip(max(0, seq_sub(self._high_rxt, una)))
        if off >= board.highest():
            return None
        n = min(self._eff_mss(), seq_sub(self._fin_seq(), seq_add(una, off)))
        nxt_sacked = board.next_start(off)
        if nxt_sacked is not None:
            n = min(n, nxt_sacked - off)
        if n <= 0 or self._sack_pipe() + n > max(self._cc.ssthresh, n):
            return None
        return seq_add(una, off), n

    def _retransmitted_hole(self, seq, n, now):
        end = seq_add(seq, n)
        if seq_gt(end, self._high_rxt):
            self._high_rxt = end
        if seq == self.snd_una:
            # The head went again: its timer starts over (as Linux's tcp_xmit_retransmit_queue rearms it),
            # or on a slow line it expires while the retransmission still waits behind the flight.
            self._arm_rtx(now)

    def take_segments(self, budget, now):
        """Segments to send now, in order (see the contract)."""
        if self._suspended_at is not None:
            self._ctl = []                          # nothing reaches the client while the link is down
            return []
        out = self._ctl
        self._ctl = []
        state = self._state
        if state is TcpState.CLOSED or (state is TcpState.SYN_RECEIVED and not self.accepted):
            return out
        if state is TcpState.SYN_SENT:
            if self._syn_due:
                out.append(self._make_syn(now))
            self._update_timers(now)
            return out
        if self._synack_due:
            out.append(self._make_synack(now))
        used = 0
        if state in _SEND_STATES:
            if seq_sub(self.snd_nxt, self.snd_una) == 0 and now - self._last_send > self._rtt.rto:
                self._cc.on_idle(now)               # RFC 5681 4.1: restart window after idle
            blocked = False
            if self._rtx_pending:
                plan = self._head_retransmission()
                if plan is None:
                    self._rtx_pending = False
                elif budget >= 0 and used + plan[1] > budget:
                    blocked = True
                else:
                    self._rtx_pending = False
                    out.append(self._emit_data(plan[0], plan[1], plan[2], now))
                    used += plan[1]
                    self._retransmitted_hole(plan[0], plan[1], now)
            while not blocked and self._in_recovery and self.sack_ok and self._scoreboard:
                # RFC 6675 5 (C): every hole below the highest SACKed byte is lost (a serial line does
                # not reorder), so each is retransmitted as soon as the pipe allows, not one per RTT.
                plan = self._next_hole()
                if plan is None:
                    break
                if budget >= 0 and used + plan[1] > budget:
                    blocked = True
                    break
                out.append(self._emit_data(plan[0], plan[1], False, now))
                used += plan[1]
                self._retransmitted_hole(plan[0], plan[1], now)
            while not blocked:
                plan = self._plan()
                if plan is None:
                    break
                seq, n, fin = plan
                if budget >= 0 and used + n > budget:
                    break
                out.append(self._emit_data(seq, n, fin, now))
                used += n
            if self._probe_due:
                # Zero-window probe / keepalive: an old sequence number forces an ACK
                # (RFC 9293 3.8.6.1, RFC 1122 4.2.3.6).
                self._probe_due = False
                out.append(self._make(seq_add(self.snd_una, -1), ACK, now))
        elif self._probe_due:
            self._probe_due = False
            out.append(self._make(seq_add(self.snd_una, -1), ACK, now))
        if self._ack_now:
            out.append(self._make(self.snd_max, ACK, now))
        self._update_timers(now)
        return out

    @property
    def streaming(self):
        """The client's latest data segment was a bulk one (more than SMALL_SEGMENT bytes)."""
        return self._streaming

    @property
    def pending_output(self):
        if self._suspended_at is not None:
            return False
        if self._ctl:
            return True
        state = self._state
        if state is TcpState.CLOSED or (state is TcpState.SYN_RECEIVED and not self.accepted):
            return False
        if state is TcpState.SYN_SENT:
            return self._syn_due
        if self._synack_due or self._ack_now or self._probe_due or self._rtx_pending:
            return True
        if self._in_recovery and self.sack_ok and self._scoreboard and self._next_hole() is not None:
            return True
        return self._plan() is not None

    # ============================================================== timers

    def _persist_interval(self):
        return min(self.config.max_rto_ms, self._rtt.rto << min(self._persist_backoff, 16))

    def _update_timers(self, now):
        state = self._state
        if state is TcpState.CLOSED or state is TcpState.TIME_WAIT:
            return
        outstanding = seq_sub(self.snd_max, self.snd_una)
        if outstanding == 0:
            self._rtx_at = None                     # RFC 6298 5.2
        elif self._rtx_at is None and (state in _SEND_STATES or state is TcpState.SYN_RECEIVED
                                       or state is TcpState.SYN_SENT):
            self._arm_rtx(now)
        if state in _SEND_STATES and outstanding == 0 and self._pending_send() and self._plan() is None:
            if self._persist_at is None:
                self._persist_at = now + self._persist_interval()
        else:
            self._persist_at = None
        if self.config.keepalive > 0 and state in _KEEPALIVE_STATES:
            if self._keepalive_at is None:
                self._keepalive_at = now + self.config.keepalive * 1000
        else:
            self._keepalive_at = None

    def get_timer(self):
        if self._suspended_at is not None:
            return self._tw_at                      # only TIME_WAIT runs while suspended
        best = None
        for t in (self._tw_at, self._rtx_at, self._persist_at, self._delack_at, self._keepalive_at,
                  self._reack_at):
            if t is not None and (best is None or t < best):
                best = t
        return best

    def handle_timer(self, now):
        if self._state is TcpState.CLOSED:
            return
        if self._tw_at is not None and now >= self._tw_at:
            self._tw_at = None
            self._close("time_wait")
            return
        if self._suspended_at is not None:
            return
        if self._rtx_at is not None and now >= self._rtx_at:
            self._rtx_at = None
            self._on_rto(now)
            if self._state is TcpState.CLOSED:
                return
        if self._persist_at is not None and now >= self._persist_at:
            self._persist_at = None
            self._on_persist(now)
            if self._state is TcpState.CLOSED:
                return
        if self._delack_at is not None and now >= self._delack_at:
            self._delack_at = None
            self._ack_now = True
        if self._reack_at is not None and now >= self._reack_at:
            self._reack_at = None
            if self._reacked == self.rcv_nxt and not self._fin_received:
                self.reacks += 1
                self._ack_now = True
        if self._keepalive_at is not None and now >= self._keepalive_at:
            self._keepalive_at = None
            self._on_keepalive(now)
            if self._state is TcpState.CLOSED:
                return
        self._update_timers(now)

    def _on_rto(self, now):
        """RFC 6298 section 5: the retransmission timer expired."""
        if self._state is TcpState.SYN_SENT:
            # RFC 6298 5.5 and 5.6: the SYN is retransmitted with the RTO doubled each time (1 s, 2 s,
            # 4 s ... from the initial 1 s of 2.1); after syn_retries of them the open fails.  Nothing
            # is synchronized, so no RST goes out (RFC 9293 3.10.5: SYN-SENT ABORT sends nothing).
            if self._synack_sends > self.config.syn_retries:
                log.info("%s: no answer to %d SYNs", self.name, self._synack_sends)
                self._event(TIMED_OUT)
                self._close("timeout")
                return
            self.rto_count += 1
            self._rtt.on_timeout()
            self._rtt_seq = None
            self._syn_due = True
            self._arm_rtx(now)
            return
        if self._state is TcpState.SYN_RECEIVED:
            if self._synack_sends > self.config.syn_retries:
                self._give_up(now)
                return
            self.rto_count += 1
            self._rtt.on_timeout()
            self._rtt_seq = None
            self._synack_due = True
            self._arm_rtx(now)
            return
        outstanding = seq_sub(self.snd_max, self.snd_una)
        if outstanding <= 0 or self._state not in _SEND_STATES:
            return
        self.rto_count += 1
        zero_window = self.snd_wnd == 0
        linear = self._noisy(now) and self._linear < self.config.linear_timeouts
        if linear:
            self._linear += 1           # "A noisy line": neither doubled nor counted towards the give-up
        elif zero_window and now - self._last_ack_rx <= self.config.max_rto_ms:
            # The client closed its window while data was in flight and is still answering: keep
            # probing instead of counting towards the give-up (RFC 1122 4.2.2.17).
            pass
        else:
            self._retries += 1
            if self._retries > self.config.max_retries:
                self._give_up(now)
                return
        if zero_window:
            self.window_probes += 1
            self._probe_due = True
        self._cc.on_rto(outstanding)
        self._in_recovery = False
        self._dup_acks = 0
        self._partial_acks = 0
        self._recover = self.snd_max        # RFC 6582 section 4: no fast retransmit for go-back dupacks
        self._rtx_pending = False
        if not linear:
            self._rtt.on_timeout()          # RFC 6298 5.5
        self._rtt_seq = None
        self.snd_nxt = self.snd_una         # 5.4: retransmit from the earliest unacknowledged byte
        self._arm_rtx(now)                  # 5.6
        log.debug("%s: RTO #%d, rto now %d ms", self.name, self._retries, self._rtt.rto)

    def _on_persist(self, now):
        if seq_sub(self.snd_max, self.snd_una) != 0 or not self._pending_send():
            return
        self._persist_backoff += 1
        room = seq_sub(seq_add(self.snd_una, self.snd_wnd), self.snd_nxt)
        if room > 0:
            # RFC 1122 4.2.3.4 (4): the override timeout: send what fits.
            self._force_send = True
            return
        self._probes_unanswered += 1
        if self._probes_unanswered > self.config.max_retries:
            self._give_up(now)
            return
        self.window_probes += 1
        self._probe_due = True

    def _on_keepalive(self, now):
        if self._state not in _KEEPALIVE_STATES:
            return
        if seq_sub(self.snd_max, self.snd_una) > 0 or self._pending_send():
            return                              # data in flight: the RTO watches the peer
        if self._ka_probes >= self.config.keepalive_probes:
            self._give_up(now)
            return
        self._ka_probes += 1
        self.keepalives_sent += 1
        self._probe_due = True
        self._keepalive_at = now + self.config.keepalive * 1000

    def _give_up(self, now):
        log.info("%s: giving up after %d retransmissions", self.name, self.rto_count)
        self._queue_ctl(self._make(self.snd_max, RST | ACK, now, options=False))
        self._event(TIMED_OUT)
        self._close("timeout")

    def _close(self, reason):
        self._set_state(TcpState.CLOSED)
        self._rtx_at = self._persist_at = self._delack_at = self._keepalive_at = self._tw_at = None
        self._ack_now = self._probe_due = self._synack_due = self._syn_due = self._rtx_pending = False
        self._ooo.clear()
        self.close_reason = reason
        self._event(CLOSED)

    def _enter_time_wait(self, now):
        self._set_state(TcpState.TIME_WAIT)
        self._rtx_at = self._persist_at = self._keepalive_at = None
        self._rtx_pending = self._probe_due = False
        self._tw_at = now + 2 * self.config.msl_ms

    def syn_may_reuse(self, syn):
        """RFC 9293 3.10.7.4 / RFC 6191: may a new SYN replace this TIME_WAIT connection?"""
        if self._state is not TcpState.TIME_WAIT or not syn.flags & SYN or syn.flags & ACK:
            return False
        if self.ts_ok and syn.timestamp is not None:
            return seq_gt(syn.timestamp[0], self.ts_recent)
        return seq_gt(syn.seq, self.rcv_nxt)

    # =============================================================== input

    def _acceptable(self, seq, seg_len):
        """RFC 9293 3.10.7.4, the four cases of the acceptability test."""
        nxt = self.rcv_nxt
        wnd = self.rcv_wnd
        if wnd == 0:
            # Zero window: only SEG.SEQ = RCV.NXT, and then only for its ACK/RST ("special
            # allowance should be made to accept valid ACKs, URGs, and RSTs"): text is trimmed.
            return seq == nxt
        edge = self.rcv_adv
        if seg_len == 0:
            return seq_in(seq, nxt, edge)
        return seq_in(seq, nxt, edge) or seq_in(seq_add(seq, seg_len - 1), nxt, edge)

    def _dup_ack_for_unacceptable(self, seg, now):
        # RFC 9293 3.10.7.4: "an acknowledgment should be sent in reply (unless the RST bit is set)";
        # pure ACKs are answered at a limited rate so that two confused stacks cannot ACK-storm.
        if seg.payload or seg.flags & (SYN | FIN) or self._oow_limiter.allow(now):
            self._ack_now = True

    def _challenge_ack(self, now):
        """RFC 5961 section 7: rate-limited <SEQ=SND.NXT><ACK=RCV.NXT><CTL=ACK>."""
        if self._challenge_limiter.allow(now):
            self.challenge_acks += 1
            self._ack_now = True
        else:
            self._drop("challenge_ack_limited")

    def receive(self, seg, now):
        """Process one segment of this connection (RFC 9293 3.10.7.4)."""
        state = self._state
        if state is TcpState.CLOSED:
            self._drop("closed", seg)
            return
        flags = seg.flags
        if state is TcpState.SYN_RECEIVED and not self.accepted:
            self._receive_pending(seg)
            return
        if state is TcpState.SYN_SENT:
            self._syn_sent_receive(seg, now)
            return
        self.last_activity = now
        self._ka_probes = 0
        self._reack_at = None           # the client is not silent
        if self._keepalive_at is not None:
            self._keepalive_at = now + self.config.keepalive * 1000
        seq = seg.seq

        # Second (RFC 5961 3.2): RST.
        if flags & RST:
            if seq == self.rcv_nxt:
                self._reset(state)
            elif self.rcv_wnd > 0 and seq_in(seq, self.rcv_nxt, self.rcv_adv):
                self._challenge_ack(now)
                self._drop("rst_in_window", seg)
            else:
                self._drop("rst_out_of_window", seg)
            self._update_timers(now)
            return

        # Fourth (RFC 5961 4.2): SYN in a synchronized state.
        if flags & SYN:
            if state is TcpState.SYN_RECEIVED and seq == self.irs and not flags & ACK:
                # The client did not get our SYN-ACK: send it again.
                if self._challenge_limiter.allow(now):
                    self._synack_due = True
                self._drop("syn_retransmit", seg)
            else:
                self._challenge_ack(now)
                self._drop("syn_synchronized", seg)
            return

        # RFC 7323 5.3: PAWS.  (Segments without a TSopt are accepted although RFC 7323 3.2 says
        # SHOULD drop: being liberal here costs nothing and survives option-stripping middleboxes.)
        if self.ts_ok and seg.timestamp is not None and seq_lt(seg.timestamp[0], self.ts_recent):
            self._dup_ack_for_unacceptable(seg, now)
            self._drop("paws", seg)
            return

        # First: the acceptability test.
        seg_len = seg.seg_len
        if not self._acceptable(seq, seg_len):
            if state is TcpState.TIME_WAIT and flags & FIN:
                # A retransmitted FIN: acknowledge it and restart the 2 MSL timeout.
                self._tw_at = now + 2 * self.config.msl_ms
            self._dup_ack_for_unacceptable(seg, now)
            self._drop("unacceptable", seg)
            return

        # RFC 7323 4.3: TS.Recent.
        if self.ts_ok and seg.timestamp is not None and seq_le(seq, self.last_ack_sent) \
                and seq_ge(seg.timestamp[0], self.ts_recent):
            self.ts_recent = seg.timestamp[0]

        # Fifth: the ACK field.
        if not flags & ACK:
            self._drop("no_ack", seg)
            return
        if state is TcpState.SYN_RECEIVED:
            if not (seq_lt(self.snd_una, seg.ack) and seq_le(seg.ack, self.snd_max)):
                # "If the segment acknowledgment is not acceptable, form a reset segment
                # <SEQ=SEG.ACK><CTL=RST>".
                if self._oow_limiter.allow(now):
                    self._queue_ctl(TcpRepr(self.local_port, self.remote_port, seg.ack, 0, RST, 0))
                self._drop("bad_ack_syn_received", seg)
                return
        if not self._process_ack(seg, now):
            self._update_timers(now)
            return
        state = self._state
        if state is TcpState.CLOSED or state is TcpState.TIME_WAIT:
            self._update_timers(now)
            return

        # Seventh and eighth: segment text and FIN.
        if state in _RECV_STATES:
            self._process_text(seg, now)
        elif seg.payload:
            self._drop("data_after_fin", seg)
        self._update_timers(now)

    def _syn_sent_receive(self, seg, now):
        """RFC 9293 3.10.7.3: a segment arrives in SYN-SENT."""
        flags = seg.flags
        if flags & ACK:
            # "If SEG.ACK =< ISS or SEG.ACK > SND.NXT, send a reset (unless the RST bit is set, if so
            # drop the segment and return) <SEQ=SEG.ACK><CTL=RST> and discard the segment."
            if seq_le(seg.ack, self.iss) or seq_gt(seg.ack, self.snd_max):
                if not flags & RST and self._oow_limiter.allow(now):
                    self._queue_ctl(TcpRepr(self.local_port, self.remote_port, seg.ack, 0, RST, 0))
                self._drop("bad_ack_syn_sent", seg)
                return
        if flags & RST:
            # "If the ACK was acceptable, then signal to the user 'error: connection reset', drop the
            # segment, enter CLOSED state ... Otherwise (no ACK), drop the segment and return."  RFC 5961
            # 3.2 adds nothing here: an acceptable ACK already ties the RST to our SYN.
            if flags & ACK:
                log.debug("%s: connection refused (RST)", self.name)
                self._ctl = []
                self._event(RESET)
                self._close("reset")
            else:
                self._drop("rst_no_ack_syn_sent", seg)
            return
        if not flags & SYN:
            self._drop("syn_sent_no_syn", seg)          # "If neither ... drop the segment and return."
            return
        self.last_activity = now
        # The peer's SYN: its options settle what both sides use (RFC 7323 1.3/2.2, RFC 2018 2, RFC
        # 9293 3.7.1).  Window scaling is used only if both SYNs carried it; otherwise neither side scales.
        self.ws_ok = self.ws_ok and seg.wscale is not None
        self.snd_wscale = min(seg.wscale, MAX_WSCALE) if self.ws_ok else 0
        if not self.ws_ok:
            self.rcv_wscale = 0
        self.sack_ok = self.sack_ok and bool(seg.sack_permitted)
        self.ts_ok = self.ts_ok and seg.timestamp is not None
        self.ts_recent = seg.timestamp[0] if self.ts_ok else 0
        self.peer_mss = seg.mss if seg.mss is not None else DEFAULT_MSS
        self.send_mss = max(MIN_MSS, min(self.peer_mss, self._mss_limit))
        self._cc.set_mss(self._smss())
        # "RCV.NXT is set to SEG.SEQ+1, IRS is set to SEG.SEQ."
        self.irs = seg.seq
        self.rcv_nxt = self.rcv_adv = self.last_ack_sent = seq_add(seg.seq, 1)
        self.snd_wnd = self.max_snd_wnd = seg.window     # RFC 7323 2.2: a SYN's window is never scaled
        self.snd_wl1 = seg.seq
        self.snd_wl2 = seg.ack
        self._last_ack_rx = now
        if seg.payload or flags & FIN:
            # Data on a SYN is legal but nobody sends it; it is not taken (our ACK of the SYN alone
            # makes the peer send it again).
            self._drop("syn_sent_data", seg)
        if not flags & ACK:
            # "Otherwise, enter SYN-RECEIVED, form a SYN,ACK segment <SEQ=ISS><ACK=RCV.NXT>..."
            # (simultaneous open): our SYN is repeated with the ACK, and SYN-RECEIVED goes on as usual.
            log.debug("%s: simultaneous open", self.name)
            self._set_state(TcpState.SYN_RECEIVED)
            self._synack_sends = max(0, self._synack_sends - 1)     # the SYN-ACK repeats our SYN
            self._synack_due = True
            return
        # "SND.UNA should be advanced to equal SEG.ACK ... If SND.UNA > ISS (our SYN has been ACKed),
        # change the connection state to ESTABLISHED, form an ACK segment <SEQ=SND.NXT><ACK=RCV.NXT>".
        if self.ts_ok and seg.timestamp[1]:
            rtt = seq_sub(self._ts_val(now), seg.timestamp[1])
            if 0 <= rtt <= self.config.max_rto_ms:
                self._rtt.sample(rtt, 1)
        elif self._rtt_seq is not None:
            self._rtt.sample(now - self._rtt_time)
        self._rtt_seq = None
        self.snd_una = seg.ack
        self._rtx_at = None
        self._ack_now = True
        self._establish(now)
        self._update_timers(now)

    def unreachable(self, now):
        """An ICMP destination unreachable for this connection arrived (RFC 1122 4.2.3.9).

        In SYN-SENT the open fails (``close_reason`` "unreachable", event Unreachable then Closed), as
        Linux does for every unreachable code while connecting (RFC 5461 discusses why a soft error may
        end a connection that never worked); in a synchronized state it is a soft error: counted only."""
        if self._state is TcpState.SYN_SENT:
            log.debug("%s: destination unreachable", self.name)
            self._event(UNREACHABLE)
            self._close("unreachable")
            return True
        self._drop("icmp_unreachable")
        return False

    def _receive_pending(self, seg):
        """Input while the service socket is still connecting: we have sent nothing yet."""
        if seg.flags & RST:
            if seg.seq == self.rcv_nxt:
                self._reset(self._state)
            else:
                self._drop("rst_out_of_window", seg)
        elif seg.flags & SYN and seg.seq == self.irs:
            self._drop("syn_retransmit_pending", seg)
        else:
            self._drop("pending", seg)

    def _reset(self, state):
        log.debug("%s: reset by the client in %s", self.name, state)
        self._ctl = []
        if state is not TcpState.TIME_WAIT:
            self._event(RESET)
        self._close("reset")

    def _process_ack(self, seg, now):
        """RFC 9293 3.10.7.4 fifth step; returns False when the segment must be dropped."""
        ack = seg.ack
        una = self.snd_una
        if seq_gt(ack, self.snd_max):
            # "If the ACK acks something not yet sent (SEG.ACK > SND.NXT), then send an ACK,
            # drop the segment, and return."
            self._dup_ack_for_unacceptable(seg, now)
            self._drop("ack_unsent", seg)
            return False
        if seq_sub(una, ack) > self.max_snd_wnd:
            # RFC 5961 5.2: acceptable only if SND.UNA - MAX.SND.WND <= SEG.ACK.
            self._challenge_ack(now)
            self._drop("ack_too_old", seg)
            return False
        self._probes_unanswered = 0
        self._last_ack_rx = now
        acked = seq_sub(ack, una)
        seq = seg.seq
        window_changed = False
        if acked >= 0 and (seq_lt(self.snd_wl1, seq) or (self.snd_wl1 == seq and seq_le(self.snd_wl2, ack))):
            # Window update (SND.WL1/SND.WL2 guard against old segments).
            wnd = seg.window << self.snd_wscale
            window_changed = wnd != self.snd_wnd
            if wnd > self.snd_wnd:
                self._persist_backoff = 0
            self.snd_wnd = wnd
            self.snd_wl1 = seq
            self.snd_wl2 = ack
            if wnd > self.max_snd_wnd:
                self.max_snd_wnd = wnd
        if acked > 0:
            self._on_new_ack(seg, ack, acked, now)
        elif acked == 0:
            self._add_sack(seg)
            # RFC 5681 section 2, DUPLICATE ACKNOWLEDGMENT: outstanding data, no data, no SYN/FIN,
            # SEG.ACK = SND.UNA, and the advertised window unchanged.
            if (seq_gt(self.snd_max, una) and not seg.payload and not seg.flags & (SYN | FIN)
                    and not window_changed and not self._dsack(seg, ack)):
                self._on_dup_ack(ack, now)
        if acked >= 0 and self.dup_thresh < DUP_THRESH and self.sack_ok and self._scoreboard:
            if not self._in_recovery:
                if self._state in _SEND_STATES and (seq_ge(self.snd_una, self._recover) or self._lone_path_loss()):
                    # SACK blocks above SND.UNA on a path that never reorders: the segment at SND.UNA is lost
                    # (RFC 6675 5 step 4 (b), IsLost), whether this ACK counts as a duplicate or not (it moved
                    # SND.UNA, or its window changed).
                    self._enter_recovery()
            else:
                self._lost_retransmissions()
        return True

    def _lost_retransmissions(self):
        """RFC 8985 6.2 on a path that never reorders (``dup_thresh`` below three): once the client SACKs data
        first sent after this round of hole retransmissions, a hole still open below it lost its retransmission
        too, and the round starts over from SND.UNA (else only the timer would find it)."""
        if not (self._in_recovery and self.sack_ok and self._scoreboard and self.dup_thresh < DUP_THRESH):
            return
        una = self.snd_una
        if not seq_lt(una, self._high_rxt):
            return
        if seq_gt(seq_add(una, self._scoreboard.highest()), self._rxt_round_end):
            self.lost_retransmits += 1
            self._high_rxt = una
            self._rxt_round_end = self.snd_max
            self._rtx_pending = True

    def _dsack(self, seg, ack):
        """``seg`` reports a duplicate segment (RFC 2883 D-SACK: its first SACK block lies at or below the
        cumulative ACK, or inside its second block).  The client received something twice (a spurious
        retransmission of ours), so the ACK it sent at once (RFC 5681 4.2) is no sign of a loss: counted as a
        duplicate ACK with ``dup_thresh`` 1, each such ACK resent the next segment in flight, whose duplicate
        made the client send another, for as long as the transfer ran (as Linux does, a D-SACK is never a
        duplicate ACK: tcp_ack's FLAG_DSACKING_ACK)."""
        if not (self.sack_ok and seg.sack_blocks):
            return False
        left, right = seg.sack_blocks[0]
        if seq_le(right, ack):
            return True
        if len(seg.sack_blocks) > 1:
            left2, right2 = seg.sack_blocks[1]
            return seq_le(left2, left) and seq_le(right, right2)
        return False

    def _add_sack(self, seg):
        if not (self.sack_ok and seg.sack_blocks):
            return
        una = self.snd_una
        limit = seq_sub(self.snd_max, una)
        for left, right in seg.sack_blocks:
            lo = seq_sub(left, una)
            hi = seq_sub(right, una)
            if 0 < lo < hi <= limit:
                self._scoreboard.add(lo, hi)

    def _on_new_ack(self, seg, ack, acked, now):
        una = self.snd_una
        fin_seq = self._fin_seq()
        syn_acked = seq_le(una, self.iss) and seq_gt(ack, self.iss)
        fin_acked = self._fin_sent() and seq_gt(ack, fin_seq)
        flight_before = seq_sub(self.snd_max, una)
        data_acked = acked - (1 if syn_acked else 0) - (1 if fin_acked else 0)
        if data_acked > 0:
            self._tx.drop(data_acked)
            self._tx_seq = seq_add(self._tx_seq, data_acked)
        self.snd_una = ack
        if seq_lt(self.snd_nxt, ack):
            self.snd_nxt = ack
        if self._scoreboard and self._scoreboard.advance(acked):
            log.debug("%s: client reneged on SACKed data", self.name)
            self.counters["sack_reneged"] = self.counters.get("sack_reneged", 0) + 1
        self._add_sack(seg)
        self._retries = 0
        self._linear = 0
        if self._noisy(now):
            self._rtt.clear_backoff()   # Karn's rule keeps a doubling for the next loss: on this line, noise

        # RTT (RFC 6298 section 3 with Karn; RFC 7323 4.1 with timestamps).
        if self.ts_ok and seg.timestamp is not None and seg.timestamp[1]:
            rtt = seq_sub(self._ts_val(now), seg.timestamp[1])
            if 0 <= rtt <= self.config.max_rto_ms:
                expected = max(1, flight_before // (2 * self._smss()))
                self._rtt.sample(rtt, expected)
                self.rtt_sample = (rtt, None)
        elif self._rtt_seq is not None and seq_gt(ack, self._rtt_seq):
            self._rtt.sample(now - self._rtt_time)
            self.rtt_sample = (now - self._rtt_time, self._rtt_len)
            self._rtt_seq = None

        # Congestion control and recovery (RFC 5681, RFC 6582).
        restart_timer = True
        if self._in_recovery:
            if seq_ge(ack, self._recover):
                # Full acknowledgment: leave fast recovery.
                self._in_recovery = False
                self._dup_acks = 0
                self._cc.on_recovery_end(seq_sub(self.snd_max, ack))
            else:
                # Partial acknowledgment: retransmit the next hole, deflate.
                self._partial_acks += 1
                self._cc.on_partial_ack(max(0, data_acked))
                if self.sack_ok and seq_lt(ack, self._high_rxt):
                    # RFC 6675: the holes from here up went already (take_segments sends the rest); each
                    # ACK of new data restarts the timer (RFC 6298 5.3).
                    pass
                else:
                    self._rtx_pending = True
                    restart_timer = self._partial_acks == 1   # RFC 6582 3.2 step 5 ("Impatient")
        else:
            self._dup_acks = 0
            self._cc.on_ack(max(0, data_acked), now, flight_before)

        if syn_acked:
            self._establish(now)

        # RFC 6298 5.2 / 5.3.
        if self.snd_una == self.snd_max:
            self._rtx_at = None
        elif restart_timer:
            self._arm_rtx(now)

        if fin_acked:
            state = self._state
            if state is TcpState.FIN_WAIT_1:
                self._set_state(TcpState.FIN_WAIT_2)
            elif state is TcpState.CLOSING:
                self._enter_time_wait(now)
            elif state is TcpState.LAST_ACK:
                self._close("closed")
                return
        if data_acked > 0 and self._state in _QUEUE_STATES and not self._fin_queued:
            self._event(WRITABLE)

    def _on_dup_ack(self, ack, now):
        self.dup_acks += 1
        self._dup_acks += 1
        if self._in_recovery:
            self._cc.on_dup_ack(seq_sub(self.snd_max, self.snd_una))
        elif self._dup_acks >= self.dup_thresh and (seq_ge(ack, self._recover) or self._lone_path_loss()):
            self._enter_recovery()

    def _enter_recovery(self):
        """RFC 6582 3.2 step 2: enter fast recovery and retransmit the first unacknowledged segment."""
        self._in_recovery = True
        self._recover = self.snd_max
        self._partial_acks = 0
        self._cc.on_recovery_start(seq_sub(self.snd_max, self.snd_una))
        self._rtx_pending = True
        self._high_rxt = self.snd_una
        self._rxt_round_end = self.snd_max
        self.fast_retransmits += 1
        log.debug("%s: fast retransmit at %d", self.name, self.snd_una)

    def _lone_path_loss(self):
        """A duplicate ACK below the recovery point (the go-back after a timeout) shows a loss all the same when
        the path cannot reorder or duplicate (``dup_thresh`` 1, set by the stack for a serial line) and the
        client SACKed data above SND.UNA that the go-back already resent: RFC 6582 section 4 guards against
        duplicates of segments the client had, which a SACK scoreboard and such a path rule out."""
        return (self.dup_thresh < DUP_THRESH and self.sack_ok and bool(self._scoreboard)
                and seq_ge(self.snd_nxt, seq_add(self.snd_una, self._scoreboard.highest())))

    def _establish(self, now):
        if self._synack_sends > 1:
            self._rtt.reset_after_syn_loss()   # RFC 6298 5.7
        self._cc.set_mss(self._smss())
        self._set_state(TcpState.ESTABLISHED)
        self._event(ESTABLISHED)
        if self._fin_queued:
            self._set_state(TcpState.FIN_WAIT_1)

    def _process_text(self, seg, now):
        """RFC 9293 3.10.7.4 seventh (segment text) and eighth (FIN) steps."""
        payload = seg.payload
        seq = seg.seq
        fin = bool(seg.flags & FIN)
        nxt = self.rcv_nxt
        head = seq_sub(nxt, seq)
        if head > 0:
            # Already received: keep only the new part (and a FIN only if it is new).
            if fin and seq_lt(seq_add(seq, len(payload)), nxt):
                fin = False
            payload = payload[head:]
            seq = nxt
            self._ack_now = True
        room = seq_sub(self.rcv_adv, seq)
        if len(payload) > room:
            payload = payload[:max(0, room)]
            fin = False                             # beyond the window: the client will resend it
            self._ack_now = True
            self._drop("beyond_window", seg)
        if not payload and not fin:
            return
        if payload:
            self._streaming = len(payload) > SMALL_SEGMENT
        if seq == nxt:
            if payload:
                self._deliver(payload, now)
            if fin:
                self._process_fin(now)
            elif self._ooo_fin is not None and self._ooo_fin == self.rcv_nxt:
                self._process_fin(now)
            return
        # Out of order: hold it, and ACK at once (RFC 5681 4.2: "an immediate ACK SHOULD be
        # generated when an out-of-order segment arrives"), with SACK blocks.
        self.ooo_segments += 1
        if payload and not self._ooo.add(seq_sub(seq, nxt), payload):
            self._drop("ooo_full", seg)
        if fin:
            self._ooo_fin = seq_add(seq, len(payload))
        self._ack_now = True

    def _deliver(self, payload, now):
        """In-order bytes at RCV.NXT, then whatever the reassembly queue now joins."""
        had_ooo = bool(self._ooo)
        n = len(payload)
        if n > SMALL_SEGMENT or had_ooo:
            self._bulk_in = True
        self._rx += payload
        self.rcv_nxt = seq_add(self.rcv_nxt, n)
        self.bytes_in += n
        self._ooo.advance(n)
        while True:
            more = self._ooo.pop_front()
            if not more:
                break
            self._rx += more
            self.rcv_nxt = seq_add(self.rcv_nxt, len(more))
            self.bytes_in += len(more)
        self._event(READABLE)
        if n > self._rcv_mss_est:
            self._rcv_mss_est = min(n, self.our_mss)
        self._rcv_unacked += n
        if had_ooo:
            # RFC 5681 4.2: ACK at once when a segment fills (part of) a gap.
            self._ack_now = True
        elif self._rcv_unacked >= self.ack_every * self._rcv_mss_est:
            # RFC 1122 4.2.3.2 / RFC 5681 4.2: an ACK for at least every second full-sized segment.
            self._ack_now = True
        elif self._delack_at is None:
            self._delack_at = now + self.config.delack_ms

    def _process_fin(self, now):
        self.rcv_nxt = seq_add(self.rcv_nxt, 1)
        self._fin_received = True
        self._ooo.clear()
        self._ooo_fin = None
        self._ack_now = True
        state = self._state
        if state is TcpState.ESTABLISHED:
            self._set_state(TcpState.CLOSE_WAIT)
        elif state is TcpState.FIN_WAIT_1:
            self._set_state(TcpState.CLOSING)       # our FIN not yet acknowledged: simultaneous close
        elif state is TcpState.FIN_WAIT_2:
            self._enter_time_wait(now)
        self._maybe_peer_fin()

    def _maybe_peer_fin(self):
        if self._state is TcpState.CLOSED:
            return                                  # Closed is the last event
        if self._fin_received and not self._peer_fin_reported and not self._rx:
            self._peer_fin_reported = True
            self._event(PEER_FIN)


def _ip(addr):
    if isinstance(addr, (bytes, bytearray)) and len(addr) == 4:
        return "%d.%d.%d.%d" % tuple(addr)
    return str(addr)
