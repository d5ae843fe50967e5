"""pyslirp, single-file edition: ``python3 pyslirp.pyz [options] [PORT]``.

This zip application carries pyslirp and the pure-Python packages it may need
(pyserial for serial devices; tomli for configuration files on Python < 3.11).
Python's zipimport loads them from the archive itself, ahead of anything
installed on the machine, so copying this one file is the whole installation.
"""
import sys

if sys.version_info < (3, 7):
    sys.stderr.write("pyslirp: needs Python 3.7 or later, this is %s\n" % sys.version.split()[0])
    sys.exit(2)

from pyslirp.cli import main  # noqa: E402

sys.exit(main())
