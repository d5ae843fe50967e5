"""Logging set-up: standard error and an optional rotating log file.

Every module logs through ``logging.getLogger("pyslirp.<module>")``; this
module only attaches handlers to the ``pyslirp`` logger: one writing to
standard error (never standard output: in ``--stdio`` mode standard output
is the serial line), and, when ``[logging] file`` is set, a
``RotatingFileHandler`` (``max_size`` bytes, ``rotate_count`` old files).
:func:`reopen` closes and reopens the file (SIGHUP, for an external log
rotator); calling :func:`setup` again (a reload) replaces the handlers, and
leaves them as they were when the new file cannot be opened.  One line per
event; passwords are never passed to the logger.
"""

import logging
import logging.handlers
import sys

FORMAT = "%(asctime)s %(levelname)s %(name)s: %(message)s"
LEVELS = {"debug": logging.DEBUG, "info": logging.INFO, "warning": logging.WARNING, "error": logging.ERROR}

_handlers = []


def setup(level="info", file="", max_size=0, rotate_count=0, stream=None):
    """Attach handlers to the "pyslirp" logger (replacing earlier ones).

    Raises OSError when the log file cannot be opened; the handlers in place then stay (a reload with a
    log file that cannot be opened changes nothing).
    """
    root = logging.getLogger("pyslirp")
    formatter = logging.Formatter(FORMAT)
    new = []
    if file:
        handler = logging.handlers.RotatingFileHandler(
            file, maxBytes=max_size, backupCount=rotate_count, encoding="utf-8")
        handler.setFormatter(formatter)
        new.append(handler)
    console = logging.StreamHandler(stream if stream is not None else sys.stderr)
    console.setFormatter(formatter)
    new.insert(0, console)
    for handler in _handlers:
        root.removeHandler(handler)
        handler.close()
    _handlers[:] = new
    for handler in _handlers:
        root.addHandler(handler)
    root.setLevel(LEVELS.get(level, logging.INFO))
    root.propagate = False
    return root


def reopen():
    """Reopen log files (after an external rotation); the console is untouched."""
    for handler in _handlers:
        if isinstance(handler, logging.FileHandler):
            handler.acquire()
            try:
                if handler.stream is not None:
                    handler.stream.close()
                handler.stream = handler._open()
            finally:
                handler.release()


def teardown():
    """Remove our handlers and let "pyslirp" records propagate again (tests, embedding)."""
    root = logging.getLogger("pyslirp")
    for handler in _handlers:
        root.removeHandler(handler)
        handler.close()
    del _handlers[:]
    root.propagate = True
    root.setLevel(logging.NOTSET)
