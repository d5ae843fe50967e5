"""The public test framework: a simulated client, link emulation, compliance scripts, load tests."""

from pyslirp.testing.client import NEVER_CONNECTS, EchoService, RawBytes, Recorder, SimFlow, SimulatedClient  # noqa

__all__ = ["NEVER_CONNECTS", "EchoService", "RawBytes", "Recorder", "SimFlow", "SimulatedClient"]
