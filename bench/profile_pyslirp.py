#!/usr/bin/env python3
"""Run pyslirp.py under cProfile in every thread; write the merged statistics when it exits.

Usage: python3 bench/profile_pyslirp.py OUT.pstats pyslirp.py [pyslirp arguments...]

cProfile sees only the thread that enabled it, so a ``threading.setprofile`` hook enables one profiler in each new
thread (the stack thread, the serial reader and writer, every service thread) and the main thread gets its own;
at exit all of them are merged into one ``pstats`` file (``python3 -m pstats OUT.pstats``).  bench_cpu.py's
``--profile cprofile`` runs pyslirp this way.
"""

import atexit
import cProfile
import pstats
import runpy
import sys
import threading

_profiles = []
_lock = threading.Lock()


def _start_in_this_thread(frame, event, arg):
    sys.setprofile(None)
    p = cProfile.Profile()
    with _lock:
        _profiles.append(p)
    p.enable()


def _dump(path):
    with _lock:
        profiles = list(_profiles)
    stats = None
    for p in profiles:
        try:
            p.disable()
            s = pstats.Stats(p)
        except (TypeError, ValueError):     # a profiler that saw nothing
            continue
        if stats is None:
            stats = s
        else:
            stats.add(s)
    if stats is not None:
        stats.dump_stats(path)


def main():
    out, script = sys.argv[1], sys.argv[2]
    sys.argv = sys.argv[2:]
    atexit.register(_dump, out)
    threading.setprofile(_start_in_this_thread)
    main_profile = cProfile.Profile()
    _profiles.append(main_profile)
    main_profile.enable()
    runpy.run_path(script, run_name="__main__")


if __name__ == "__main__":
    main()
