"""Guest-side programs of the end-to-end tests: writing them where the guest sees them, reading what they print.

A test writes a small Python program into its lab directory (the guest shares the host's filesystem, so the
guest runs it at the same path), the guest script runs it with its output in ``$RESULTS/NAME.out``, and the
program's last line is one JSON object: its result.
"""

import json
import os


def write_script(lab, name, text):
    """A guest-side program in the test's directory (seen by the guest at the same path)."""
    path = os.path.join(lab.basedir, name)
    with open(path, "w") as f:
        f.write(text)
    return path


def json_result(res, name):
    """The JSON object on the last line of ``NAME.out`` in a ``GuestResult``; fails with the output otherwise."""
    text = (res.read(name + ".out") or "").strip()
    line = text.splitlines()[-1] if text else ""
    try:
        return json.loads(line)
    except ValueError:
        raise AssertionError("%s printed no JSON result (rc %s):\n%s" % (name, res.rc(name), text))


def await_mark(guest, name, timeout=90):
    """Wait for the guest's ``mark NAME``; if it never comes, fail with what the guest left behind."""
    if not guest.wait_mark(name, timeout):
        raise AssertionError("no mark %r from the guest\n%s" % (name, guest.wait(30).diagnostics()))
