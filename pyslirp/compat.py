"""The one place that knows about Python versions and optional dependencies.

pyslirp runs on Python 3.7 and later with the standard library only; two
optional pieces are looked up here, lazily, so that importing pyslirp never
needs them:

* a TOML parser, needed only when a configuration file is read: ``tomllib``
  (standard library since 3.11), else ``tomli`` (the same API; bundled in the
  single-file zipapp for older Pythons), else :mod:`pyslirp.tomlsubset`, our
  own reader of the subset pyslirp's files use (an interpreter without pip,
  such as an air-gapped PyPy 3.9, still reads its configuration);
* pyserial, needed only to open real serial devices and pyserial URLs
  (``--pty`` and ``--stdio`` do not use it).
"""

import sys

PYSERIAL_HINT = ("pyserial is required to open serial devices: "
                 "apt install python3-serial or pip install pyserial")


class MissingDependency(Exception):
    """An optional dependency is not installed; the message says how to get it."""


def toml_module():
    """The TOML parser module (``loads``, ``load``, ``TOMLDecodeError``): tomllib, tomli or our subset reader."""
    if sys.version_info >= (3, 11):
        try:
            import tomllib  # novermin (only on 3.11+)
            return tomllib
        except ImportError:
            pass
    try:
        import tomli
        return tomli
    except ImportError:
        from pyslirp import tomlsubset
        return tomlsubset


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
