"""The one place that knows about Python versions and optional dependencies.

pyslirp runs on Python 3.7 and later with the standard library only; two
optional pieces are looked up here, lazily, so that importing pyslirp never
needs them:

* a TOML parser, needed only when a configuration file is read: ``tomllib``
  (standard library since 3.11), else ``tomli`` (the same API; bundled in the
  single-file zipapp for older Pythons);
* pyserial, needed only to open real serial devices and pyserial URLs
  (``--pty`` and ``--stdio`` do not use it).
"""

import sys

PYSERIAL_HINT = ("pyserial is required to open serial devices: "
                 "apt install python3-serial or pip install pyserial")
TOML_HINT = ("reading a configuration file needs Python 3.11+ or the tomli package: "
             "apt install python3-tomli or pip install tomli")


class MissingDependency(Exception):
    """An optional dependency is not installed; the message says how to get it."""


def toml_module():
    """The TOML parser module (``loads``, ``load``, ``TOMLDecodeError``)."""
    if sys.version_info >= (3, 11):
        import tomllib  # novermin (only on 3.11+)
        return tomllib
    try:
        import tomli
    except ImportError:
        raise MissingDependency(TOML_HINT)
    return tomli


def serial_module():
    """The pyserial package (``serial``)."""
    try:
        import serial
    except ImportError:
        raise MissingDependency(PYSERIAL_HINT)
    return serial


def have_pyserial():
    try:
        serial_module()
    except MissingDependency:
        return False
    return True
