"""The public test framework (README, "Testing your link and your client"): one module per tool."""

from . import compliance  # noqa: F401
from . import fuzz  # noqa: F401
from . import linkemu  # noqa: F401
from . import load  # noqa: F401
