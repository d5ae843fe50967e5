"""The public test framework (README, "Testing your link and your client"): one module per tool."""

from . import compliance, linkemu, load  # noqa: F401
