"""A killed ``causalmad score`` run leaves no scores file but keeps its finished chunks in
``.SCORES.causalmad-partial``; ``--resume`` continues from them and writes, bit for bit,
the scores file of an uninterrupted run; a partial file of another run is refused in one
line."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from conftest import planted_data

import causalmad as cm
from causalmad.cli import main
from causalmad.partial_scores import partial_path

CONFTEST = Path(__file__).with_name("conftest.py")
MODEL = ["--model", f"{CONFTEST}:PlantedSum"]


@pytest.fixture(scope="module")
def work(tmp_path_factory):
    """A Mahalanobis detector folder, an inputs file of 100 rows, and its scores file from
    an uninterrupted run with ``--chunk 16``."""
    root = tmp_path_factory.mktemp("partial")
    x = torch.cat([planted_data(75, 0, 3, 0.05), planted_data(25, 1, 4, 0.05)]).tolist()
    (root / "inputs.jsonl").write_text(
        "".join(json.dumps({"input": r, "id": f"u{i}"}) + "\n" for i, r in enumerate(x))
    )
    (root / "trusted.jsonl").write_text(
        "".join(json.dumps(r) + "\n" for r in planted_data(300, 0, 0, 0.05).tolist())
    )
    assert (
        main(
            [
                "fit",
                *MODEL,
                "--detector",
                "mahalanobis",
                "--trusted",
                str(root / "trusted.jsonl"),
                "--out",
                str(root / "det"),
                "--quiet",
            ]
        )
        == 0
    )
    assert main(score_args(root, root / "whole.jsonl")) == 0
    return root


def score_args(work: Path, out: Path, *more: str) -> list[str]:
    return [
        "score",
        str(work / "det"),
        str(work / "inputs.jsonl"),
        *MODEL,
        "--chunk",
        "16",
        "--out",
        str(out),
        "--quiet",
        *more,
    ]


def interrupt_after(monkeypatch, chunks: int) -> list[int]:
    """Ctrl-C during the scoring of chunk ``chunks + 1``; returns the rows scored per call."""
    calls: list[int] = []
    score = cm.MahalanobisDetector.score

    def scored(self, x):
        if len(calls) == chunks:
            raise KeyboardInterrupt
        calls.append(len(x))
        return score(self, x)

    monkeypatch.setattr(cm.MahalanobisDetector, "score", scored)
    return calls


def test_an_interrupted_run_keeps_its_chunks_and_resume_writes_the_uninterrupted_scores(
    work, tmp_path, monkeypatch, capsys
):
    out = tmp_path / "scores.jsonl"
    interrupt_after(monkeypatch, 3)
    assert main(score_args(work, out)) == 130
    err = capsys.readouterr().err
    assert "the scores of 48 of 100 inputs are kept in" in err and "--resume" in err, err
    assert sorted(p.name for p in tmp_path.iterdir()) == [partial_path(out).name]  # no scores file
    monkeypatch.undo()
    calls = interrupt_after(monkeypatch, 100)
    assert main(score_args(work, out, "--resume")) == 0
    assert calls == [16, 16, 16, 4]  # only the chunks not kept before
    assert out.read_bytes() == (work / "whole.jsonl").read_bytes()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["scores.jsonl"]  # the partial file went


def test_a_run_killed_with_sigkill_is_resumed_to_the_same_bytes(work, tmp_path):
    out = tmp_path / "scores.csv"
    slow = (
        "import sys, time; import causalmad as cm; from causalmad.cli import main; "
        "s = cm.MahalanobisDetector.score; "
        "cm.MahalanobisDetector.score = lambda self, x: (time.sleep(0.3), s(self, x))[1]; "
        "sys.exit(main(sys.argv[1:]))"
    )
    env = {
        **os.environ,
        "PYTHONPATH": str(Path(cm.__file__).parents[1]),
    }  # this causalmad, not an installed one
    proc = subprocess.Popen(
        [sys.executable, "-c", slow, *score_args(work, out)],
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
    )
    partial = partial_path(out)
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline and proc.poll() is None:
        if partial.is_file() and partial.read_bytes().count(b"\n") >= 3:  # the header and two chunks
            break
        time.sleep(0.02)
    assert proc.poll() is None, proc.stderr.read() if proc.stderr else ""
    os.kill(proc.pid, signal.SIGKILL)
    proc.communicate()
    assert not out.exists() and partial.is_file()
    with open(partial, "ab") as f:
        f.write(b'{"offset": 999, "dtype": "<f8", "sco')  # a line cut short by the kill
    assert main(score_args(work, out, "--resume")) == 0
    assert main(score_args(work, tmp_path / "whole.csv")) == 0
    assert out.read_bytes() == (tmp_path / "whole.csv").read_bytes()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["scores.csv", "whole.csv"]


@pytest.mark.parametrize("change", ["--chunk", "inputs", "detector"])
def test_resuming_another_runs_partial_scores_is_refused_in_one_line(
    change, work, tmp_path, monkeypatch, capsys
):
    out = tmp_path / "scores.jsonl"
    interrupt_after(monkeypatch, 2)
    assert main(score_args(work, out)) == 130
    monkeypatch.undo()
    kept = partial_path(out).read_bytes()
    argv = score_args(work, out, "--resume")
    if change == "--chunk":
        argv += ["--chunk", "32"]
    elif change == "inputs":
        inputs = tmp_path / "inputs.jsonl"
        inputs.write_text((work / "inputs.jsonl").read_text().replace('"u7"', '"v7"'))
        argv[2] = str(inputs)
    else:
        det = tmp_path / "det"
        assert (
            main(
                [
                    "fit",
                    *MODEL,
                    "--detector",
                    "mahalanobis",
                    "--trusted",
                    str(work / "trusted.jsonl"),
                    "--param",
                    'aggregate="mean"',
                    "--out",
                    str(det),
                    "--quiet",
                ]
            )
            == 0
        )
        argv[1] = str(det)
    capsys.readouterr()
    assert main(argv) == 2
    err = capsys.readouterr().err
    what = {
        "--chunk": "--chunk is not the same (it was 16)",
        "inputs": "the inputs file is not the same",
        "detector": "the detector folder is not the same",
    }[change]
    assert err.startswith("causalmad: error: ") and err.count("\n") == 1 and what in err, err
    assert not out.exists() and partial_path(out).read_bytes() == kept  # nothing written, nothing lost


def test_a_damaged_partial_file_is_refused_in_one_line(work, tmp_path, capsys):
    out = tmp_path / "scores.jsonl"
    partial_path(out).write_text("not a header\n")
    assert main(score_args(work, out, "--resume")) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "not a causalmad partial scores file" in err, err
    assert not out.exists()


def test_without_resume_an_earlier_partial_file_is_replaced_and_the_run_says_so(
    work, tmp_path, monkeypatch, capsys
):
    out = tmp_path / "scores.jsonl"
    interrupt_after(monkeypatch, 1)
    assert main(score_args(work, out)) == 130
    monkeypatch.undo()
    capsys.readouterr()
    assert main(score_args(work, out)) == 0
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and err.startswith("causalmad: warning: replacing ") and "--resume" in err, (
        err
    )
    assert out.read_bytes() == (work / "whole.jsonl").read_bytes() and not partial_path(out).exists()


def test_resume_with_nothing_to_resume_scores_from_the_start(work, tmp_path, capsys):
    out = tmp_path / "scores.jsonl"
    assert main([a for a in score_args(work, out, "--resume") if a != "--quiet"]) == 0
    assert "nothing to resume" in capsys.readouterr().err
    assert out.read_bytes() == (work / "whole.jsonl").read_bytes() and not partial_path(out).exists()


def test_a_bad_input_found_by_the_model_leaves_no_partial_file(work, tmp_path, monkeypatch):
    out = tmp_path / "scores.jsonl"
    check = cm.MahalanobisDetector._check
    seen: list[int] = []

    def late_bad(self, x):
        seen.append(len(x))
        if len(seen) == 3:
            raise cm.InputError("bad input: planted")
        return check(self, x)

    monkeypatch.setattr(cm.MahalanobisDetector, "_check", late_bad)
    assert main(score_args(work, out)) == 2
    assert list(tmp_path.iterdir()) == []
