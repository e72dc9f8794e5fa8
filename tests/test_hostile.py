"""Hostile inputs and faults: every one ends in a clear error (exit 2, one line on stderr,
nothing written) or a correct result. Each case is marked ``hostile(kind, expect)``, from
which ``scripts/reliability_table.py`` writes the table in ``docs/reliability.md``."""

from __future__ import annotations

import json
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from conftest import planted_data

import causalmad as cm
from causalmad import persistence
from causalmad.cli import main
from causalmad.errors import InputError, PersistenceError
from causalmad.inputs import read_inputs

CONFTEST = Path(__file__).with_name("conftest.py")
MODEL = ["--model", f"{CONFTEST}:PlantedSum"]
ERROR = "exit 2, one line, nothing written"


def write_jsonl(path: Path, rows) -> Path:
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


@pytest.fixture(scope="module")
def work(tmp_path_factory):
    """A Mahalanobis detector folder fitted from the command line on the planted model,
    and a good inputs file."""
    root = tmp_path_factory.mktemp("hostile")
    write_jsonl(root / "trusted.jsonl", planted_data(200, 0, 0, 0.05).tolist())
    write_jsonl(root / "good.jsonl", torch.cat([planted_data(10, 0, 3, 0.05), planted_data(10, 1, 4, 0.05)]).tolist())
    assert main(["fit", *MODEL, "--trusted", str(root / "trusted.jsonl"), "--detector", "mahalanobis",
                 "--out", str(root / "det"), "--quiet"]) == 0
    return root


def listing(folder: Path) -> list[str]:
    return sorted(p.name for p in folder.iterdir())


def one_line_error(capsys, *needles: str) -> str:
    err = capsys.readouterr().err
    assert err.startswith("causalmad: error: ") and err.count("\n") == 1 and "Traceback" not in err, err
    for needle in needles:
        assert needle in err, (needle, err)
    return err


# ---------------------------------------------------------------- one writer at a time
HOLD = """
import sys, time
from filelock import FileLock
lock = FileLock(sys.argv[1])
lock.acquire()
print("held", flush=True)
if sys.argv[2] == "stdin":
    sys.stdin.readline()  # hold until told
else:
    time.sleep(float(sys.argv[2]))
lock.release()
"""


@pytest.fixture
def held_lock():
    """Another process holding the writers' lock of a path; yields a function that
    starts it (returns the process, released by writing a line to its stdin)."""
    procs: list[subprocess.Popen] = []

    def hold(folder: Path, seconds: float | None = None) -> subprocess.Popen:
        proc = subprocess.Popen([sys.executable, "-c", HOLD, str(persistence.lock_path(folder)),
                                 "stdin" if seconds is None else str(seconds)],
                                stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
        assert proc.stdout is not None and proc.stdout.readline() == "held\n"
        procs.append(proc)
        return proc

    yield hold
    for proc in procs:
        if proc.poll() is None:
            proc.communicate("\n", timeout=30)
        proc.wait(timeout=30)


@pytest.mark.hostile("fault: lock held by another process", ERROR)
def test_a_save_while_another_process_holds_the_lock_waits_then_errors(work, tmp_path, held_lock, capsys,
                                                                       monkeypatch):
    monkeypatch.setattr(persistence, "LOCK_TIMEOUT", 0.3)
    det = cm.MahalanobisDetector(_planted()).fit(planted_data(100, 0, 0, 0.05))
    held_lock(tmp_path / "det")
    t0 = time.perf_counter()
    with pytest.raises(PersistenceError, match=r"det is being written by another process, which holds "
                                               r"\.det\.causalmad-lock; waited 0\.3 s"):
        det.save(tmp_path / "det")
    assert time.perf_counter() - t0 >= 0.3
    assert listing(tmp_path) == [".det.causalmad-lock"]  # the holder's lock, nothing of this save
    argv = ["fit", *MODEL, "--trusted", str(work / "trusted.jsonl"), "--detector", "mahalanobis",
            "--out", str(tmp_path / "det"), "--quiet"]
    assert main(argv) == 2
    one_line_error(capsys, "is being written by another process")
    assert listing(tmp_path) == [".det.causalmad-lock"]


@pytest.mark.hostile("fault: lock held by another process", "correct result (waits, then saves)")
def test_a_second_save_waits_for_the_first_and_then_sees_its_folder(work, tmp_path, held_lock):
    det = cm.MahalanobisDetector(_planted()).fit(planted_data(100, 0, 0, 0.05))
    held_lock(tmp_path / "det", seconds=1.0)
    t0 = time.perf_counter()
    det.save(tmp_path / "det")  # waits for the holder (LOCK_TIMEOUT: 60 s), then saves
    assert time.perf_counter() - t0 >= 0.5
    assert listing(tmp_path) == ["det"]  # the lock file goes with its last writer
    with pytest.raises(PersistenceError, match="already exists"):  # not silently replaced
        det.save(tmp_path / "det")
    det.save(tmp_path / "det", overwrite=True)
    assert listing(tmp_path) == ["det"]


def _planted():
    from conftest import PlantedSum

    return PlantedSum()


# ---------------------------------------------------------------- the fixed corpus of malformed inputs files
BAD = Path(__file__).with_name("data") / "bad"
CORPUS = json.loads((BAD / "expected.json").read_text())


def corpus_marks(entry: dict) -> list:
    expect = f"correct result ({entry['rows']} inputs read)" if "rows" in entry else ERROR
    return [pytest.mark.hostile(f"inputs file: {entry['class']}", expect)]


@pytest.mark.parametrize("entry", [pytest.param(e, id=e["file"], marks=corpus_marks(e)) for e in CORPUS])
def test_every_file_of_the_bad_corpus_gets_one_clear_line_or_a_correct_result(entry, work, tmp_path, capsys,
                                                                               monkeypatch):
    monkeypatch.chdir(tmp_path)  # a pickle that would run code makes a folder here
    path = BAD / entry["file"]
    if "rows" in entry:
        assert len(read_inputs(path, entry["shape"], entry["dtype"]).inputs) == entry["rows"]
    else:
        with pytest.raises(InputError) as info:
            read_inputs(path, entry["shape"], entry["dtype"])
        assert str(path) in str(info.value) and entry["message"] in str(info.value), str(info.value)
    if entry["dtype"] == "float32":  # the planted detector takes float32 [3]; through the command line too
        out = tmp_path / "out" / "scores.jsonl"
        code = main(["score", str(work / "det"), str(path), *MODEL, "--out", str(out), "--quiet"])
        if "rows" in entry:
            assert code == 0 and len(out.read_text().splitlines()) == entry["rows"]
        else:
            assert code == 2
            one_line_error(capsys, str(path), entry["message"])
            assert not (tmp_path / "out").exists()
    assert listing(tmp_path) == ([] if "rows" not in entry or entry["dtype"] != "float32" else ["out"])


@pytest.mark.hostile("command line: --debug", "exit 2, one line, then the traceback")
def test_debug_adds_the_traceback_to_the_one_line(work, tmp_path, capsys):
    bad = BAD / "float_beyond_float32.jsonl"
    argv = ["score", str(work / "det"), str(bad), *MODEL, "--out", str(tmp_path / "s.jsonl")]
    assert main([*argv, "--debug"]) == 2
    err = capsys.readouterr().err
    assert "Traceback (most recent call last)" in err and "raise InputError" in err
    assert err.endswith(f"causalmad: error: {bad} line 1: bad input: it holds 1e+39, beyond float32's range "
                        "(±3.403e+38).\n"), err
    assert not (tmp_path / "s.jsonl").exists()


@pytest.mark.hostile("command line: an internal error", "exit 1, one line naming it a bug")
def test_an_unexpected_error_is_one_line_asking_for_a_report(work, tmp_path, capsys, monkeypatch):
    monkeypatch.setattr(cm.MahalanobisDetector, "score", lambda self, x: 1 / 0)
    out = tmp_path / "s.jsonl"
    assert main(["score", str(work / "det"), str(work / "good.jsonl"), *MODEL, "--out", str(out), "--quiet"]) == 1
    err = capsys.readouterr().err
    assert err == ("causalmad: internal error: ZeroDivisionError: division by zero (a bug in causalmad: run the "
                   "command again with --debug and report the traceback)\n")
    assert listing(tmp_path) == []
