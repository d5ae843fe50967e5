"""A snapshot of every counter, for the periodic stats log line (and later an exporter).

Theory of operation: the protocol objects keep their counters as plain
integer attributes or as a ``counters`` dict of ``reason -> int``
(docs/ARCHITECTURE.md); nothing registers anything.  :func:`collect` walks an
object's attributes one level deep and returns ``{"prefix.name": int}``;
dicts of integers become ``prefix.name.key``.  Reading integers another
thread is updating is safe in CPython and at worst one event stale.
"""


def _is_count(value):
    return isinstance(value, int) and not isinstance(value, bool)


def collect(obj, prefix, out=None):
    out = {} if out is None else out
    if obj is None:
        return out
    try:
        attrs = vars(obj)
    except TypeError:
        return out
    for name, value in sorted(attrs.items()):
        if name.startswith("_") and name != "_counters":
            continue
        key = "%s.%s" % (prefix, name.lstrip("_"))
        if _is_count(value):
            out[key] = value
        elif isinstance(value, dict):
            for sub, count in value.items():
                if _is_count(count):
                    out["%s.%s" % (key, sub)] = count
    return out


def snapshot(core=None, runtime=None):
    """Counters of the Core (its link, deframer and stack) and of the runtime."""
    out = {}
    if core is not None:
        collect(core, "core", out)
        link = getattr(core, "link", None)
        collect(link, "link", out)
        collect(getattr(link, "deframer", None), "hdlc", out)
        collect(getattr(core, "stack", None), "stack", out)
    if runtime is not None:
        out.update(runtime.counters())
    return out


def format_line(counters, skip_zero=True):
    """``name=value`` pairs on one line, sorted by name."""
    return " ".join("%s=%d" % (k, v) for k, v in sorted(counters.items()) if v or not skip_zero)
