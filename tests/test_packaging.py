"""The installed distribution owns its top-level names: the repository's ``tasks/`` and
``hypotheses/`` folders install as ``causalmad_tasks`` and ``causalmad_hypotheses``, so
that they cannot shadow, or be shadowed by, another distribution's ``tasks`` or
``hypotheses``."""

from __future__ import annotations

import subprocess
import sys
from importlib import metadata
from pathlib import Path

import pytest

try:
    import tomllib
except ModuleNotFoundError:  # Python 3.10
    tomllib = pytest.importorskip("tomli")

ROOT = Path(__file__).resolve().parents[1]
OWNED = {"causalmad", "causalmad_tasks", "causalmad_hypotheses"}


def test_the_distribution_installs_only_names_causalmad_owns():
    top_level = set(metadata.distribution("causalmad").read_text("top_level.txt").split())
    assert top_level == OWNED, f"reinstall with `pip install -e .` if pyproject.toml changed: {top_level}"


def test_every_registered_task_comes_from_causalmad_tasks():
    values = [ep.value for ep in metadata.entry_points(group="causalmad.tasks")]
    assert values and all(v.startswith("causalmad_tasks.") for v in values), values


def test_every_package_folder_is_installed():
    """The package list in pyproject.toml is explicit (it maps two folders to new names):
    a subpackage added under causalmad/ must be added to it too."""
    setuptools = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["setuptools"]
    folders = {".".join(p.parent.relative_to(ROOT).parts) for p in (ROOT / "causalmad").rglob("__init__.py")}
    assert folders | {"causalmad_tasks", "causalmad_hypotheses"} == set(setuptools["packages"])
    assert setuptools["package-dir"] == {"causalmad_tasks": "tasks", "causalmad_hypotheses": "hypotheses"}


def test_outside_the_repository_tasks_is_not_this_project(tmp_path):
    """From another directory the installed names import and the bare ``tasks`` and
    ``hypotheses`` do not resolve to this repository's folders."""
    code = (
        "import importlib.util, causalmad_tasks, causalmad_hypotheses\n"
        "print(causalmad_tasks.__file__, causalmad_hypotheses.__file__)\n"
        "for name in ('tasks', 'hypotheses'):\n"
        "    spec = importlib.util.find_spec(name)\n"
        "    print(spec.origin if spec else None)\n"
    )
    result = subprocess.run(
        [sys.executable, "-c", code], cwd=tmp_path, capture_output=True, text=True, timeout=60
    )
    assert result.returncode == 0, result.stderr
    owned, bare = result.stdout.split("\n", 1)
    assert [Path(f).parent for f in owned.split()] == [ROOT / "tasks", ROOT / "hypotheses"]
    for origin in bare.split():
        assert origin == "None" or not Path(origin).is_relative_to(ROOT), origin
