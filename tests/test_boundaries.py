"""The architecture's import boundaries, checked by walking every module's imports.

* ``wire/`` imports only the standard library and other ``wire`` modules.
* ``ppp/``, ``net/``, ``proxy/``, ``timers.py`` and ``core.py`` are sans-IO: no clock, threads, sockets, queues or serial,
  and never the runtime.
"""

import ast
import os

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
PKG = os.path.join(ROOT, "pyslirp")

SANS_IO_FORBIDDEN = {"time", "threading", "socket", "queue", "select", "selectors", "serial",
                     "subprocess", "asyncio", "signal", "pyslirp.runtime", "pyslirp.cli"}


def _modules(sub):
    base = os.path.join(PKG, sub)
    if os.path.isfile(base):
        yield base
        return
    for dirpath, _, files in os.walk(base):
        for name in files:
            if name.endswith(".py"):
                yield os.path.join(dirpath, name)


def _imports(path):
    with open(path, "rb") as f:
        tree = ast.parse(f.read(), path)
    rel = os.path.relpath(path, ROOT).replace(os.sep, ".")[:-3]
    package = rel.rsplit(".", 1)[0]
    if rel.endswith("__init__"):
        package = rel[: -len(".__init__")]
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            for alias in node.names:
                yield alias.name
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                parts = package.split(".")
                if node.level > 1:
                    parts = parts[: -(node.level - 1)]
                base = ".".join(parts)
                yield base + ("." + node.module if node.module else "")
            else:
                yield node.module


def _hits(name, forbidden):
    return any(name == f or name.startswith(f + ".") for f in forbidden)


@pytest.mark.parametrize("sub", ["wire", "ppp", "net", "proxy", "timers.py", "core.py"])
def test_sans_io_layers_do_not_do_io(sub):
    paths = list(_modules(sub))
    if sub.endswith(".py") and not paths:
        pytest.skip("%s does not exist" % sub)
    assert paths, sub
    bad = []
    for path in paths:
        for name in _imports(path):
            if _hits(name, SANS_IO_FORBIDDEN):
                bad.append("%s imports %s" % (os.path.relpath(path, ROOT), name))
    assert bad == []


def test_wire_imports_only_stdlib_and_wire():
    bad = []
    for path in _modules("wire"):
        for name in _imports(path):
            if name.startswith("pyslirp") and not name.startswith("pyslirp.wire"):
                bad.append("%s imports %s" % (os.path.relpath(path, ROOT), name))
    assert bad == []


def test_boundary_checker_sees_imports(tmp_path):
    # The checker itself must notice an offending import, or the tests above prove nothing.
    mod = tmp_path / "m.py"
    mod.write_text("import time\nfrom socket import socket\nfrom . import x\n")
    names = list(_imports(str(mod)))
    assert "time" in names and "socket" in names
    assert _hits("socket", SANS_IO_FORBIDDEN) and not _hits("struct", SANS_IO_FORBIDDEN)
