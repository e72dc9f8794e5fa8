"""docs/quickstart.md runs as written: its code blocks, in order, in an empty folder."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

QUICKSTART = Path(__file__).parents[1] / "docs" / "quickstart.md"
BLOCK = re.compile(r"```(\w+)([^\n]*)\n(.*?)```", re.S)


def blocks() -> list[tuple[str, str, str]]:
    return [(lang, attrs.strip(), code) for lang, attrs, code in BLOCK.findall(QUICKSTART.read_text())]


def test_quickstart_has_the_whole_workflow():
    langs = [lang for lang, _, _ in blocks()]
    assert langs.count("python") >= 5 and "bash" in langs
    text = QUICKSTART.read_text()
    for step in (
        "Hypothesis(",
        ".fit(",
        ".save(",
        "load_detector(",
        ".score(",
        ".explain(",
        "causalmad score",
    ):
        assert step in text, step


def test_quickstart_runs(tmp_path):
    script = []
    for lang, attrs, code in blocks():
        if attrs.startswith("file="):
            (tmp_path / attrs.removeprefix("file=")).write_text(code)
        elif lang == "python":
            script.append(code)
        elif lang == "bash":
            script.append(
                f"import subprocess\n"
                f"subprocess.run({code!r}, shell=True, check=True, executable='/bin/bash')\n"
            )
    (tmp_path / "quickstart_run.py").write_text("\n".join(script))
    done = subprocess.run(
        [sys.executable, "quickstart_run.py"], cwd=tmp_path, capture_output=True, text=True, timeout=600
    )
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    assert "backdoor success" in done.stdout
    for produced in ("sum-detector/config.json", "scores.jsonl", "report.html", "why.png", "why.json"):
        assert (tmp_path / produced).exists(), produced
    import json

    why = json.loads((tmp_path / "why.json").read_text())
    assert why["id"] == "req-150" and why["flagged"]
