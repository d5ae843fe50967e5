import os
import sys

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
if ROOT not in sys.path:
    sys.path.insert(0, ROOT)
# The end-to-end harness package (tests/e2e) is imported as ``e2e`` whatever pytest's import mode.
TESTS = os.path.join(ROOT, "tests")
if TESTS not in sys.path:
    sys.path.insert(1, TESTS)
