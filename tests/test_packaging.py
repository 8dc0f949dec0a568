"""Packaging, as a user's environment meets it: aiproxy installed beside other packages.

``backoff`` and ``python-backoff`` both install the module ``backoff``; two of them in one
environment overwrite each other's files, and uninstalling either leaves the other broken
while ``pip check`` still passes. aiproxy depends on neither (its retry schedule is its own),
so an environment with either stays whole. Each case builds a fresh venv and installs into it
offline (``--no-index --find-links``, nothing downloaded): aiproxy's wheel built from this
tree, and a package that depends on one of the two; it asserts ``pip check`` is clean and one
distribution owns the module. The two distributions are stand-ins built here, each installing
``backoff/__init__.py`` as the real ones do. aiproxy's own dependencies are this venv's
installed copies, linked into a directory the new venv sees through a ``.pth`` line: pip
counts them as installed, ``pip check`` checks them, and anything else aiproxy required would
have to come from the wheelhouse (a ``backoff`` requirement would install the stand-in, and
clash with ``python-backoff``).
"""

from __future__ import annotations

import base64
import hashlib
import importlib.metadata
import json
import shutil
import subprocess
import sys
import tomllib
import zipfile
from email.parser import Parser
from pathlib import Path

import pytest
from packaging.requirements import Requirement
from packaging.utils import canonicalize_name

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
    # --no-index everywhere: no test talks to the internet.
    return _run(sys.executable, "-m", "pip", "--disable-pip-version-check", "--no-input",
                *args)


def _wheel(dest: Path, name: str, version: str, files: dict[str, bytes],
           requires: tuple[str, ...] = ()) -> Path:
    """A minimal pure-Python wheel (built by hand: the wheel format is a zip of the files,
    METADATA, WHEEL and a RECORD of their hashes)."""
    info = f"{name.replace('-', '_')}-{version}.dist-info"
    files = {
        **files,
        f"{info}/METADATA": (f"Metadata-Version: 2.1\nName: {name}\nVersion: {version}\n"
                             + "".join(f"Requires-Dist: {r}\n" for r in requires)).encode(),
        f"{info}/WHEEL": b"Wheel-Version: 1.0\nGenerator: aiproxy-tests\n"
                         b"Root-Is-Purelib: true\nTag: py3-none-any\n",
    }
    record = "".join(
        f"{path},sha256={base64.urlsafe_b64encode(hashlib.sha256(data).digest()).decode().rstrip('=')},"
        f"{len(data)}\n" for path, data in files.items()) + f"{info}/RECORD,,\n"
    wheel = dest / f"{name.replace('-', '_')}-{version}-py3-none-any.whl"
    with zipfile.ZipFile(wheel, "w") as archive:
        for path, data in files.items():
            archive.writestr(path, data)
        archive.writestr(f"{info}/RECORD", record)
    return wheel


def _backoff_wheel(dest: Path, name: str, version: str) -> Path:
    """A stand-in for ``name``: like the real one, it installs the module ``backoff``."""
    module = (f'"""The module backoff, as the distribution {name} installs it."""\n'
              f'DISTRIBUTION = "{name}"\n__version__ = "{version}"\n').encode()
    return _wheel(dest, name, version, {"backoff/__init__.py": module})


def _dependent_wheel(dest: Path, name: str, requires: str) -> Path:
    """A package ``name`` 1.0 that requires ``requires`` and imports the module backoff."""
    module = name.replace("-", "_")
    return _wheel(dest, name, "1.0", {
        f"{module}/__init__.py": b"import backoff  # what the dependency is for\n"},
        (requires,))


@pytest.fixture(scope="session")
def wheelhouse(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """aiproxy's wheel built from this tree, both backoff distributions, the two dependents."""
    house = tmp_path_factory.mktemp("wheelhouse")
    source = tmp_path_factory.mktemp("source")
    for name in ("pyproject.toml", "README.md", "LICENSE"):
        shutil.copy2(ROOT / name, source / name)
    for package in ("aiproxy", "aiproxy_providers"):
        shutil.copytree(ROOT / package, source / package,
                        ignore=shutil.ignore_patterns("__pycache__", "*.pyc"))
    out = _pip("wheel", "--no-deps", "--no-build-isolation", "--no-index", "-w", house, source)
    assert out.returncode == 0, out.stdout[-3000:] + out.stderr[-3000:]
    _backoff_wheel(house, "backoff", "2.2.1")
    _backoff_wheel(house, "python-backoff", "2.3.1")
    _dependent_wheel(house, "needs-backoff", "backoff>=2")
    _dependent_wheel(house, "needs-python-backoff", "python-backoff>=2")
    return house


def _runtime(requirements: list[str] | None) -> list[Requirement]:
    """The requirements that apply here with no extras asked."""
    return [req for req in map(Requirement, requirements or ())
            if req.marker is None or req.marker.evaluate({"extra": ""})]


def _wheel_requirements(wheel: Path) -> list[Requirement]:
    with zipfile.ZipFile(wheel) as archive:
        (metadata,) = (n for n in archive.namelist() if n.endswith(".dist-info/METADATA"))
        return _runtime(Parser().parsestr(archive.read(metadata).decode())
                        .get_all("Requires-Dist"))


@pytest.fixture(scope="session")
def dependencies(wheelhouse: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A directory holding links to this venv's installed copies of aiproxy's runtime
    dependencies (those of the wheel just built, not of the editable install), and nothing
    else: no aiproxy, no test tools, none of the packages this venv has for other reasons."""
    (built,) = wheelhouse.glob("aiproxy-*.whl")
    linked = tmp_path_factory.mktemp("dependencies")
    todo, seen = _wheel_requirements(built), set[str]()
    while todo:
        name = canonicalize_name(todo.pop().name)
        if name in seen:
            continue
        seen.add(name)
        try:
            dist = importlib.metadata.distribution(name)
        except importlib.metadata.PackageNotFoundError:
            continue  # not here: pip must find it in the wheelhouse, or the install fails
        site = Path(str(dist.locate_file("")))
        for top in {f.parts[0] for f in dist.files or ()} - {"..", "__pycache__"}:
            if not (linked / top).exists():
                (linked / top).symlink_to(site / top)
        todo.extend(_runtime(dist.requires))
    return linked


def _venv(root: Path, dependencies: Path) -> Path:
    """A fresh venv with no pip of its own that sees ``dependencies``; its python."""
    out = _run(sys.executable, "-m", "venv", "--without-pip", root)
    assert out.returncode == 0, out.stderr
    python = root / "bin" / "python"
    purelib = _run(python, "-c", "import sysconfig; print(sysconfig.get_path('purelib'))")
    assert purelib.returncode == 0, purelib.stderr
    (Path(purelib.stdout.strip()) / "aiproxy-dependencies.pth").write_text(
        f"{dependencies}\n", encoding="utf-8")
    return python


def test_aiproxy_depends_on_neither_backoff_distribution() -> None:
    dependencies = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["dependencies"]
    names = {d.split(">")[0].split("=")[0].split("<")[0].strip() for d in dependencies}
    assert "python-backoff" not in names
    assert "backoff" not in names


@pytest.mark.parametrize("dependent", [
    "needs-backoff",
    "needs-python-backoff",
])
def test_one_owner_of_the_backoff_module(wheelhouse: Path, dependencies: Path, tmp_path: Path,
                                         dependent: str) -> None:
    python = _venv(tmp_path / "venv", dependencies)
    target = ("--python", str(python))
    # With its dependencies, as a user installs it: what aiproxy requires and this venv has
    # is already installed there; anything else would come from the wheelhouse.
    out = _pip(*target, "install", "--no-index", "--find-links", wheelhouse, "aiproxy",
               dependent)
    assert out.returncode == 0, out.stdout[-3000:] + out.stderr[-3000:]
    assert "Successfully installed" in out.stdout, out.stdout
    check = _pip(*target, "check")
    assert check.returncode == 0, check.stdout + check.stderr
    owners = json.loads(_run(python, "-c", OWNERS, cwd=tmp_path).stdout)
    assert owners == [dependent.removeprefix("needs-")], \
        f"the module backoff is installed by {owners}"
    # And it is whole: aiproxy (the installed wheel, not this tree) imports beside it and its
    # retry policy works, and both keep working after the dependent is uninstalled.
    probe = ("import aiproxy, backoff; from aiproxy.routing.policy import RetryPolicy; "
             f"print(aiproxy.__file__.startswith({str(tmp_path / 'venv')!r}), "
             "RetryPolicy().delay(1) > 0)")
    assert _run(python, "-c", probe, cwd=tmp_path).stdout.split() == ["True", "True"]
    out = _pip(*target, "uninstall", "-y", dependent)
    assert out.returncode == 0, out.stderr
    assert _run(python, "-c", probe, cwd=tmp_path).stdout.split() == ["True", "True"]
    assert _pip(*target, "check").returncode == 0
