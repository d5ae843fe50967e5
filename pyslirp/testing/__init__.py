"""The public test framework: a link emulator, TCP compliance scripts and a load test (see README, "Testing your
link and your client").  Each module is imported on its own: ``from pyslirp.testing import linkemu``."""
