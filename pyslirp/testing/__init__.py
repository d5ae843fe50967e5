"""The public test framework (README, "Testing your link and your client"): one module per tool, imported by
name (``from pyslirp.testing import linkemu``); nothing is imported here, so that ``python3 -m
pyslirp.testing.linkemu`` and ``... .load`` run their module only once."""

__all__ = [
    "compliance",
    "fuzz",
    "linkemu",
    "load",
]
