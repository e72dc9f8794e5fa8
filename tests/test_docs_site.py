"""The docs site (mkdocs.yml: the pages in docs/ and the API reference built from the
docstrings by mkdocstrings) builds with ``--strict``: a broken link, a page reference that
does not resolve, or a docstring that documents a parameter its function does not have
fails the suite."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def test_docs_site_builds_strictly(tmp_path):
    env = {**os.environ, "NO_MKDOCS_2_WARNING": "1"}
    result = subprocess.run(
        [sys.executable, "-m", "mkdocs", "build", "--strict", "--site-dir", str(tmp_path)],
        cwd=ROOT,
        capture_output=True,
        text=True,
        env=env,
        timeout=300,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    page = (tmp_path / "api" / "scrubbing-detector" / "index.html").read_text()
    for name in ("ScrubbingDetector", "resamples", "decision_function", "explain"):
        assert name in page  # the newcomer's path: README, quickstart, then this page
