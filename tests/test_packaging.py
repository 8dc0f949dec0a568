"""Packaging, as a user's environment meets it: aiproxy installed beside other packages.

``backoff`` and ``python-backoff`` both install the module ``backoff``; two of them in one
environment overwrite each other's files, and uninstalling either leaves the other broken
while ``pip check`` still passes. aiproxy depends on neither (its retry schedule is its own),
so an environment with either stays whole. Each case builds a fresh venv offline
(``--no-index --find-links``) from wheels made or fetched once per session, installs aiproxy
with a package that depends on one of the two, and asserts ``pip check`` is clean and one
distribution owns the module.
"""

from __future__ import annotations

import base64
import hashlib
import json
import shutil
import subprocess
import sys
import tomllib
import zipfile
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
TIMEOUT = 300

OWNERS = """\
import importlib.metadata as m, json
print(json.dumps(sorted(d.metadata["Name"] for d in m.distributions()
                        if any(str(f) == "backoff/__init__.py" for f in d.files or ()))))
"""


def _run(*args: str | Path, cwd: Path | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run([str(a) for a in args], capture_output=True, text=True, cwd=cwd,
                          timeout=TIMEOUT, check=False)


def _pip(*args: str | Path) -> subprocess.CompletedProcess[str]:
    return _run(sys.executable, "-m", "pip", "--disable-pip-version-check", *args)


def _dependent_wheel(dest: Path, name: str, requires: str) -> Path:
    """A minimal pure-Python wheel ``name`` 1.0 that requires ``requires`` (built by hand:
    the wheel format is a zip of the files, METADATA, WHEEL and a RECORD of their hashes)."""
    module = name.replace("-", "_")
    info = f"{module}-1.0.dist-info"
    files = {
        f"{module}/__init__.py": b"import backoff  # what the dependency is for\n",
        f"{info}/METADATA": (f"Metadata-Version: 2.1\nName: {name}\nVersion: 1.0\n"
                             f"Requires-Dist: {requires}\n").encode(),
        f"{info}/WHEEL": b"Wheel-Version: 1.0\nGenerator: aiproxy-tests\n"
                         b"Root-Is-Purelib: true\nTag: py3-none-any\n",
    }
    record = "".join(
        f"{path},sha256={base64.urlsafe_b64encode(hashlib.sha256(data).digest()).decode().rstrip('=')},"
        f"{len(data)}\n" for path, data in files.items()) + f"{info}/RECORD,,\n"
    wheel = dest / f"{module}-1.0-py3-none-any.whl"
    with zipfile.ZipFile(wheel, "w") as archive:
        for path, data in files.items():
            archive.writestr(path, data)
        archive.writestr(f"{info}/RECORD", record)
    return wheel


@pytest.fixture(scope="session")
def wheelhouse(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """aiproxy's wheel built from this tree, its dependencies' wheels (fetched once, with the
    versions of constraints.txt), both backoff distributions, and the two dependents."""
    house = tmp_path_factory.mktemp("wheelhouse")
    source = tmp_path_factory.mktemp("source")
    for name in ("pyproject.toml", "README.md", "LICENSE"):
        shutil.copy2(ROOT / name, source / name)
    for package in ("aiproxy", "aiproxy_providers"):
        shutil.copytree(ROOT / package, source / package,
                        ignore=shutil.ignore_patterns("__pycache__", "*.pyc"))
    out = _pip("wheel", "--no-deps", "--no-build-isolation", "-w", house, source)
    assert out.returncode == 0, out.stdout[-3000:] + out.stderr[-3000:]
    (built,) = house.glob("aiproxy-*.whl")
    out = _pip("download", "--only-binary=:all:", "-c", ROOT / "constraints.txt", "-d", house,
               built, "backoff", "python-backoff")
    assert out.returncode == 0, out.stdout[-3000:] + out.stderr[-3000:]
    _dependent_wheel(house, "needs-backoff", "backoff>=2")
    _dependent_wheel(house, "needs-python-backoff", "python-backoff>=2")
    return house


def test_aiproxy_depends_on_neither_backoff_distribution() -> None:
    dependencies = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["dependencies"]
    names = {d.split(">")[0].split("=")[0].split("<")[0].strip() for d in dependencies}
    assert "python-backoff" not in names
    assert "backoff" not in names


@pytest.mark.parametrize("dependent", [
    "needs-backoff",
    "needs-python-backoff",
])
def test_one_owner_of_the_backoff_module(wheelhouse: Path, tmp_path: Path,
                                         dependent: str) -> None:
    venv = tmp_path / "venv"
    out = _run(sys.executable, "-m", "venv", "--without-pip", venv)
    assert out.returncode == 0, out.stderr
    python = venv / "bin" / "python"
    target = ("--python", str(python))
    out = _pip(*target, "install", "--no-index", "--find-links", wheelhouse, "aiproxy",
               dependent)
    assert out.returncode == 0, out.stdout[-3000:] + out.stderr[-3000:]
    check = _pip(*target, "check")
    assert check.returncode == 0, check.stdout + check.stderr
    owners = json.loads(_run(python, "-c", OWNERS).stdout)
    assert len(owners) == 1, f"the module backoff is installed by {owners}"
    # And it is whole: aiproxy's retry policy works, and keeps working after the other
    # package is uninstalled.
    policy = "from aiproxy.routing.policy import RetryPolicy; print(RetryPolicy().delay(1) > 0)"
    assert _run(python, "-c", policy).stdout.strip() == "True"
    out = _pip(*target, "uninstall", "-y", dependent)
    assert out.returncode == 0, out.stderr
    assert _run(python, "-c", policy).stdout.strip() == "True"
    assert _pip(*target, "check").returncode == 0
