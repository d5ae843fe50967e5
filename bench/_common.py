"""What the benchmarks share: the e2e harness on the path, ``--set`` overrides, run directories, guest sessions.

Theory of operation
-------------------
Every benchmark here drives the end-to-end harness of ``tests/e2e/`` (User-Mode Linux guests running Linux pppd,
loopback services): :func:`use_e2e` puts ``tests/`` and the repository on ``sys.path`` so that ``from e2e import
uml`` and ``import pyslirp`` work from a script, and :func:`uml_unavailable` says in one line why no guest can
boot here (``None`` when one can).  A benchmark's pyslirp configuration is a nested dict; ``--set
SECTION.KEY=VALUE`` options go into it with :func:`parse_set` (``true``/``false`` and integers are typed, the rest
stays text).  Its files live in one temporary directory (:func:`run_directory`), removed at the end unless
``--keep`` asked for it to be kept (then its path is printed).  :func:`ppp_session_script` wraps a guest's commands
between ``pppd`` up and down, and :func:`guest_json` reads a JSON file the guest wrote, or says what the guest did
instead.
"""

import contextlib
import json
import os
import shutil
import sys
import tempfile

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)


def use_e2e():
    """Make ``tests/e2e`` (as ``e2e``) and ``pyslirp`` importable."""
    for path in (ROOT, os.path.join(ROOT, "tests")):
        if path not in sys.path:
            sys.path.insert(0, path)


def uml_unavailable():
    """Why no User-Mode Linux guest can run here, or None."""
    use_e2e()
    from e2e import uml
    return uml.unavailable_reason()


def parse_set(items, into=None):
    """``["SECTION.KEY=VALUE", ...]`` into the nested config dict ``into`` (a new one by default): that dict."""
    config = {} if into is None else into
    for item in items:
        key, _, value = item.partition("=")
        section, _, name = key.partition(".")
        try:
            value = int(value)
        except ValueError:
            if value in ("true", "false"):
                value = value == "true"
        config.setdefault(section, {})[name] = value
    return config


@contextlib.contextmanager
def run_directory(prefix, keep=False):
    """A fresh temporary directory for one run; removed afterwards, or kept and its path printed."""
    basedir = tempfile.mkdtemp(prefix=prefix)
    try:
        yield basedir
    finally:
        if keep:
            sys.stderr.write("run directories kept in %s\n" % basedir)
        else:
            shutil.rmtree(basedir, ignore_errors=True)


def ppp_session_script(body, stop_wait=None):
    """A guest script: pppd up (no authentication), ``body``, pppd down (waiting ``stop_wait`` s if given)."""
    return """
        pppd_start pppd noauth
        wait_ppp_up 30 pppd || exit 1
        %s
        pppd_stop pppd%s
    """ % (body, " %d" % stop_wait if stop_wait is not None else "")


def guest_json(res, name):
    """The JSON the guest wrote to ``$RESULTS/name`` (a guest result's ``read``); RuntimeError if none."""
    text = res.read(name)
    if text is None:
        raise RuntimeError("the guest wrote no %s:\n%s" % (name, res.diagnostics()))
    return json.loads(text)
