"""ruff and mypy run as part of the test command, so style and types cannot drift."""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


@pytest.mark.parametrize(
    "tool",
    [["ruff", "check", "."], ["ruff", "format", "--check", "."], [sys.executable, "-m", "mypy"]],
    ids=["ruff", "ruff-format", "mypy"],
)
def test_tool_is_clean(tool):
    if tool[0] == "ruff" and shutil.which("ruff") is None:
        pytest.fail("ruff is not installed; install the dev extra: pip install -e '.[dev]'")
    result = subprocess.run(tool, cwd=ROOT, capture_output=True, text=True)
    assert result.returncode == 0, result.stdout + result.stderr
