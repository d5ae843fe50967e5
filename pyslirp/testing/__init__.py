"""The public test framework (README, "Testing your link and your client"): a simulated client, link emulation,
compliance scripts, load tests, fuzzing.

The simulated client is imported here; ``compliance``, ``fuzz``, ``linkemu`` and ``load`` are imported by name
(``from pyslirp.testing import linkemu``), so that ``python3 -m pyslirp.testing.linkemu`` (or ``.load``) runs its
module only once.
"""

from pyslirp.testing.client import (NEVER_CONNECTS, EchoService, LineSimulatedClient, RawBytes, Recorder, SimFlow,  # noqa
                                    SimulatedClient)

__all__ = ["NEVER_CONNECTS", "EchoService", "LineSimulatedClient", "RawBytes", "Recorder", "SimFlow", "SimulatedClient"]
