"""Progress off a terminal: a few plain lines with rate and ETA, never carriage-return
frames; a bar on a terminal; nothing unless asked for."""

from __future__ import annotations

import io
import json
from pathlib import Path

import pytest
import torch
from conftest import planted_data

import causalmad as cm
import causalmad.progress as progress_module
from causalmad.cli import main

CONFTEST = Path(__file__).with_name("conftest.py")
MODEL = ["--model", f"{CONFTEST}:PlantedSum"]


class Clock:
    """``time.monotonic`` for the progress module, moved on by hand."""

    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


@pytest.fixture
def clock(monkeypatch):
    fake = Clock()
    monkeypatch.setattr(progress_module.time, "monotonic", fake)
    return fake


def test_off_a_terminal_progress_is_a_bounded_number_of_plain_lines_with_rate_and_eta(clock):
    log = io.StringIO()
    with cm.progress_bar(10_000, "scoring", unit="input", enabled=True, stream=log) as bar:
        for _ in range(10_000):
            clock.now += 0.125  # 1,250 s of work in 10,000 steps
            bar.update(1)
    text = log.getvalue()
    lines = text.splitlines()
    assert "\r" not in text
    # a start line, one per tenth (never two within MIN_GAP), one per INTERVAL without, the end
    assert 10 <= len(lines) <= 2 + 10 + 1250 / progress_module.INTERVAL
    assert lines[0] == "scoring: 0/10000 inputs (0%)"
    assert lines[1].startswith("scoring: 480/10000 inputs (4%), 8 input/s, ETA 19m50s")  # the first INTERVAL
    percents = [int(line.split("(")[1].split("%")[0]) for line in lines[:-1]]
    # every tenth is told, in order
    assert percents == sorted(percents) and {p // 10 for p in percents} == set(range(10))
    assert lines[-1] == "scoring: done, 10000/10000 inputs (100%) in 20m50s, 8 input/s"


def test_quick_passing_work_writes_nothing_and_unknown_totals_give_counts(clock):
    log = io.StringIO()
    with cm.progress_bar(500, "scrubbing", unit="row", enabled=True, stream=log, leave=False) as bar:
        bar.update(500)
    assert log.getvalue() == ""
    with cm.progress_bar(None, "reading", unit="line", enabled=True, stream=log, leave=False) as bar:
        for _ in range(3):
            clock.now += 61
            bar.update(10)
    assert log.getvalue().splitlines()[0] == "reading: 10 lines, 0.164 line/s"
    assert "\r" not in log.getvalue()


def test_progress_is_off_unless_asked_for_and_a_terminal_gets_a_bar(clock):
    log = io.StringIO()
    with cm.progress_bar(10, "work", stream=log) as bar:  # the library's default: off
        bar.update(10)
    with cm.show_progress(), cm.progress_bar(10, "work", stream=log) as bar:
        bar.update(10)
    assert log.getvalue().splitlines() == ["work: 0/10 its (0%)", "work: done, 10/10 its (100%) in 0s"]

    class Terminal(io.StringIO):
        def isatty(self) -> bool:
            return True

    tty = Terminal()
    with cm.progress_bar(10, "work", enabled=True, stream=tty) as bar:
        bar.update(10)
    assert "\r" in tty.getvalue() and "10/10" in tty.getvalue()  # tqdm's frames, where they belong


def test_task_training_shows_its_steps_inside_show_progress(capsys):
    from causalmad_tasks._training import train_to_spec

    model = torch.nn.Linear(2, 1)
    opt = torch.optim.SGD(model.parameters(), lr=0.1)

    def step() -> None:
        opt.zero_grad()
        model(torch.ones(4, 2)).pow(2).mean().backward()
        opt.step()

    train_to_spec("toy", model, opt, step, 30, 0.1, [], dict)
    assert capsys.readouterr().err == ""  # quiet unless asked
    with cm.show_progress():
        train_to_spec("toy", model, opt, step, 30, 0.1, [], dict)
    err = capsys.readouterr().err
    assert err.splitlines()[0] == "training toy: 0/30 steps (0%)"
    assert err.splitlines()[-1].startswith("training toy: done, 30/30 steps (100%)")


def test_causalmad_score_off_a_terminal_writes_lines_not_frames(tmp_path, capsys):
    rows = planted_data(200, 0, 0, 0.05).tolist()
    (tmp_path / "trusted.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    (tmp_path / "inputs.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows[:50]))
    assert (
        main(
            [
                "fit",
                *MODEL,
                "--detector",
                "mahalanobis",
                "--trusted",
                str(tmp_path / "trusted.jsonl"),
                "--out",
                str(tmp_path / "det"),
            ]
        )
        == 0
    )
    assert main(["score", str(tmp_path / "det"), str(tmp_path / "inputs.jsonl"), *MODEL, "--chunk", "1"]) == 0
    err = capsys.readouterr().err
    assert "\r" not in err
    assert "scoring: 0/50 inputs (0%)" in err and "scoring: done, 50/50 inputs (100%)" in err
    assert len(err.splitlines()) <= 8
