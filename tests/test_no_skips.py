"""The suite's rule that a skipped test fails (``tests/no_skips.py``), on a probe project."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent

PROBE = '''
import pytest

def test_skips_itself():
    pytest.skip("no tool here")

@pytest.mark.skip(reason="later")
def test_marked_skip():
    pass

@pytest.mark.skipif(True, reason="not on this machine")
def test_marked_skipif():
    pass

@pytest.mark.xfail(strict=True, reason="a known gap")
def test_known_gap():
    assert False

def test_runs():
    pass
'''

SKIPPED_MODULE = '''
import pytest

pytest.importorskip("no_such_module_for_the_probe")

def test_never_collected():
    pass
'''


def test_a_skip_fails_and_an_xfail_stays_an_xfail(tmp_path: Path) -> None:
    (tmp_path / "pytest.ini").write_text("[pytest]\n", encoding="utf-8")  # the rootdir
    (tmp_path / "test_probe.py").write_text(PROBE, encoding="utf-8")
    (tmp_path / "test_probe_module.py").write_text(SKIPPED_MODULE, encoding="utf-8")
    out = subprocess.run(
        [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "-p", "tests.no_skips",
         "--continue-on-collection-errors", "-rfE"],
        cwd=tmp_path, env={"PYTHONPATH": str(ROOT), "PATH": "/usr/bin:/bin",
                           "PYTEST_DISABLE_PLUGIN_AUTOLOAD": "1"},  # just this hook
        capture_output=True, text=True, timeout=120, check=False)
    text = out.stdout
    assert out.returncode == 1, text + out.stderr
    # pytest's closing line: no skip is left; each one is a failure or an error naming why.
    assert re.search(r"^1 failed, 1 passed, 1 xfailed, 3 errors in ", text.splitlines()[-1]), text
    assert "skipped" not in text.splitlines()[-1]
    for node, reason in (("test_probe.py::test_skips_itself", "no tool here"),
                         ("test_probe.py::test_marked_skip", "later"),
                         ("test_probe.py::test_marked_skipif", "not on this machine"),
                         ("test_probe_module.py", "could not import "
                                                  "'no_such_module_for_the_probe'")):
        assert f"{node} was skipped ({reason}" in text, (node, text)
    assert "CI must run every test" in text
