"""pytest fixtures for end-to-end tests; import the ones a test module uses (``from e2e.fixtures import lab``).

``lab`` gives a test a fresh ``uml.Lab`` in its own temporary directory and tears down every process it started.
Where User-Mode Linux cannot run, the test is skipped with the reason, except under CI (``CI`` set to a true value),
where a missing UML is an installation bug and the test fails instead.
"""

import os
import shutil

import pytest

from e2e import uml

CI = os.environ.get("CI", "").strip().lower() not in ("", "0", "false", "no")


def unavailable(reason):
    """Skip with ``reason`` -- or, under CI, fail: there every prerequisite is installed by .ci/run."""
    if CI:
        pytest.fail("CI=%s, so this must run, but: %s" % (os.environ.get("CI"), reason), pytrace=False)
    pytest.skip(reason)


def require_uml():
    reason = uml.unavailable_reason()
    if reason:
        unavailable(reason)


def require_program(name, package):
    path = shutil.which(name)
    if not path:
        unavailable("%s not found; install the %s package" % (name, package))
    return path


@pytest.fixture
def lab(tmp_path):
    require_uml()
    the_lab = uml.Lab(str(tmp_path))
    try:
        yield the_lab
    finally:
        the_lab.close()
        # Shown by pytest only when the test failed: everything the processes logged.
        print(the_lab.diagnostics())
