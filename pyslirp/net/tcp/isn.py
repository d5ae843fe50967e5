"""Initial sequence numbers per RFC 6528.

    ISN = M + F(localip, localport, remoteip, remoteport, secretkey)

M is a timer that ticks every 4 microseconds; with integer-millisecond
clocks that is ``now * 250``.  F is a keyed hash of the 4-tuple (here BLAKE2s
with a 16-byte key, truncated to 32 bits), so that ISNs of different
connections are unpredictable to an off-path attacker while successive
incarnations of one 4-tuple still move forward with the clock (RFC 6528
section 3).  The secret comes from the injected ``rng``.
"""

import hashlib
import struct

_TUPLE = struct.Struct("!4sH4sH")
_TICKS_PER_MS = 250          # RFC 6528 section 3: "M is the 4 microsecond timer"


class IsnGenerator(object):
    def __init__(self, rng):
        self._secret = rng.getrandbits(128).to_bytes(16, "big")

    def isn(self, local_ip, local_port, remote_ip, remote_port, now):
        digest = hashlib.blake2s(_TUPLE.pack(local_ip, local_port, remote_ip, remote_port),
                                 key=self._secret, digest_size=4).digest()
        return (now * _TICKS_PER_MS + int.from_bytes(digest, "big")) & 0xFFFFFFFF

    __call__ = isn
