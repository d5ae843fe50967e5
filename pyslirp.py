#!/usr/bin/env python3
"""pyslirp: a userspace PPP gateway (run ``pyslirp.py --help``).

Runs from a checkout or from a plain copy of this file and the ``pyslirp/``
package beside it, with the standard library only in --pty and --stdio mode.
"""

import os
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

from pyslirp.cli import main  # noqa: E402

if __name__ == "__main__":
    sys.exit(main())
