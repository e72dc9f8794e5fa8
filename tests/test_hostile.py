"""Hostile inputs and faults: every one ends in a clear error (exit 2, one line on stderr,
nothing written) or a correct result. Each case is marked ``hostile(kind, expect)``, from
which ``scripts/reliability_table.py`` writes the table in ``docs/reliability.md``."""

from __future__ import annotations

import errno
import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
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
    write_jsonl(
        root / "good.jsonl", torch.cat([planted_data(10, 0, 3, 0.05), planted_data(10, 1, 4, 0.05)]).tolist()
    )
    assert (
        main(
            [
                "fit",
                *MODEL,
                "--trusted",
                str(root / "trusted.jsonl"),
                "--detector",
                "mahalanobis",
                "--out",
                str(root / "det"),
                "--quiet",
            ]
        )
        == 0
    )
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
        proc = subprocess.Popen(
            [
                sys.executable,
                "-c",
                HOLD,
                str(persistence.lock_path(folder)),
                "stdin" if seconds is None else str(seconds),
            ],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            text=True,
        )
        assert proc.stdout is not None and proc.stdout.readline() == "held\n"
        procs.append(proc)
        return proc

    yield hold
    for proc in procs:
        if proc.poll() is None:
            proc.communicate("\n", timeout=30)
        proc.wait(timeout=30)


@pytest.mark.hostile("fault: lock held by another process", ERROR)
def test_a_save_while_another_process_holds_the_lock_waits_then_errors(
    work, tmp_path, held_lock, capsys, monkeypatch
):
    monkeypatch.setattr(persistence, "LOCK_TIMEOUT", 0.3)
    det = cm.MahalanobisDetector(_planted()).fit(planted_data(100, 0, 0, 0.05))
    held_lock(tmp_path / "det")
    t0 = time.perf_counter()
    with pytest.raises(
        PersistenceError,
        match=r"det is being written by another process, which holds "
        r"\.det\.causalmad-lock; waited 0\.3 s",
    ):
        det.save(tmp_path / "det")
    assert time.perf_counter() - t0 >= 0.3
    assert listing(tmp_path) == [".det.causalmad-lock"]  # the holder's lock, nothing of this save
    argv = [
        "fit",
        *MODEL,
        "--trusted",
        str(work / "trusted.jsonl"),
        "--detector",
        "mahalanobis",
        "--out",
        str(tmp_path / "det"),
        "--quiet",
    ]
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
    expect = "correct result (every input read)" if "rows" in entry else ERROR
    return [pytest.mark.hostile(f"inputs file: {entry['class']}", expect)]


@pytest.mark.parametrize("entry", [pytest.param(e, id=e["file"], marks=corpus_marks(e)) for e in CORPUS])
def test_every_file_of_the_bad_corpus_gets_one_clear_line_or_a_correct_result(
    entry, work, tmp_path, capsys, monkeypatch
):
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
    assert err.endswith(
        f"causalmad: error: {bad} line 1: bad input: it holds 1e+39, beyond float32's range (±3.403e+38).\n"
    ), err
    assert not (tmp_path / "s.jsonl").exists()


@pytest.mark.hostile("command line: an internal error", "exit 1, one line naming it a bug")
def test_an_unexpected_error_is_one_line_asking_for_a_report(work, tmp_path, capsys, monkeypatch):
    monkeypatch.setattr(cm.MahalanobisDetector, "score", lambda self, x: 1 / 0)
    out = tmp_path / "s.jsonl"
    assert (
        main(["score", str(work / "det"), str(work / "good.jsonl"), *MODEL, "--out", str(out), "--quiet"])
        == 1
    )
    err = capsys.readouterr().err
    assert err == (
        "causalmad: internal error: ZeroDivisionError: division by zero (a bug in causalmad: run the "
        "command again with --debug and report the traceback)\n"
    )
    assert listing(tmp_path) == []


# ---------------------------------------------------------------- faults: a full disk, a damaged folder
def enospc(*args, **kwargs):
    raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))


@pytest.mark.hostile("fault: disk full (simulated)", ERROR)
@pytest.mark.parametrize(
    "command", ["fit", "fit --force", "score", "score --report", "explain --out", "explain --plot"]
)
def test_a_full_disk_is_one_line_and_leaves_what_was_there(command, work, tmp_path, capsys, monkeypatch):
    folder = tmp_path / "det"
    shutil.copytree(work / "det", folder)
    before = snapshot(tmp_path)
    inputs = str(work / "good.jsonl")
    argv = {
        "fit": [
            "fit",
            *MODEL,
            "--trusted",
            str(work / "trusted.jsonl"),
            "--detector",
            "mahalanobis",
            "--out",
            str(tmp_path / "new"),
        ],
        "fit --force": [
            "fit",
            *MODEL,
            "--trusted",
            str(work / "trusted.jsonl"),
            "--detector",
            "mahalanobis",
            "--param",
            'aggregate="mean"',
            "--out",
            str(folder),
            "--force",
        ],
        "score": ["score", str(folder), inputs, *MODEL, "--out", str(tmp_path / "s.jsonl")],
        "score --report": [
            "score",
            str(folder),
            inputs,
            *MODEL,
            "--out",
            str(tmp_path / "s.jsonl"),
            "--report",
            str(tmp_path / "r.html"),
        ],
        "explain --out": [
            "explain",
            str(folder),
            "--inputs",
            inputs,
            "--index",
            "3",
            *MODEL,
            "--out",
            str(tmp_path / "why.json"),
        ],
        "explain --plot": [
            "explain",
            str(folder),
            "--inputs",
            inputs,
            "--index",
            "3",
            *MODEL,
            "--plot",
            str(tmp_path / "why.png"),
        ],
    }[command]
    monkeypatch.setattr(os, "fsync", enospc)
    assert main([*argv, "--quiet"]) == 2
    err = capsys.readouterr().err.splitlines()[-1]
    assert err.startswith("causalmad: error: ") and "No space left on device" in err, err
    assert snapshot(tmp_path) == before


def snapshot(root: Path) -> dict[str, bytes]:
    return {str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


CUTS = [0, 1, 2, 10, 50, 100, 200, -100, -10, -1]


@pytest.mark.hostile("detector folder: truncated config.json", ERROR)
@pytest.mark.parametrize("resign", [False, True], ids=["checksums-stale", "checksums-rewritten"])
@pytest.mark.parametrize("cut", CUTS)
def test_a_truncated_config_json_is_refused_in_one_line(cut, resign, work, tmp_path, capsys):
    folder = tmp_path / "det"
    shutil.copytree(work / "det", folder)
    config = (folder / "config.json").read_bytes()
    (folder / "config.json").write_bytes(config[:cut])
    if resign:
        rewrite_checksums(folder)
    out = tmp_path / "s.jsonl"
    for trust in ([], ["--trust-modified"]):
        assert (
            main(
                ["score", str(folder), str(work / "good.jsonl"), *MODEL, "--out", str(out), "--quiet", *trust]
            )
            == 2
        )
        err = capsys.readouterr().err.splitlines()
        assert err[-1].startswith("causalmad: error: ") and "config.json" in err[-1], err
        assert all(line.startswith("causalmad: warning: ") for line in err[:-1]), err
    assert listing(tmp_path) == ["det"]


def rewrite_checksums(folder: Path) -> None:
    import hashlib

    (folder / "SHA256SUMS").write_text(
        "".join(
            f"{hashlib.sha256((folder / n).read_bytes()).hexdigest()}  {n}\n"
            for n in ("config.json", "state.safetensors")
        )
    )


@pytest.mark.hostile("detector folder: corrupted tensor file", ERROR)
@pytest.mark.parametrize(
    "damage", ["truncated-8", "truncated-half", "empty", "header-flipped", "header-length", "zeros", "text"]
)
def test_a_corrupted_tensor_file_is_refused_in_one_line(damage, work, tmp_path, capsys):
    folder = tmp_path / "det"
    shutil.copytree(work / "det", folder)
    state = folder / "state.safetensors"
    data = state.read_bytes()
    damaged = {
        "truncated-8": data[:8],
        "truncated-half": data[: len(data) // 2],
        "empty": b"",
        "header-flipped": data[:8] + bytes(b ^ 0x55 for b in data[8:60]) + data[60:],
        "header-length": (2**40).to_bytes(8, "little") + data[8:],
        "zeros": bytes(len(data)),
        "text": b"this is not a tensor file\n",
    }[damage]
    state.write_bytes(damaged)
    out = tmp_path / "s.jsonl"
    argv = ["score", str(folder), str(work / "good.jsonl"), *MODEL, "--out", str(out), "--quiet"]
    assert main(argv) == 2
    one_line_error(capsys, "state.safetensors does not match its checksum")
    rewrite_checksums(folder)  # whoever damaged it also rewrote SHA256SUMS
    assert main(argv) == 2
    one_line_error(capsys, "state.safetensors")
    assert listing(tmp_path) == ["det"]


# ------------------------------------------------------ property tests: whatever the bytes, a clear answer
from hypothesis import HealthCheck, given, settings  # noqa: E402
from hypothesis import strategies as st  # noqa: E402
from hypothesis.extra import numpy as hnp  # noqa: E402

FUZZ = settings(
    max_examples=40,
    deadline=None,
    derandomize=True,
    database=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)
JSON = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats() | st.text(max_size=8),
    lambda inner: (
        st.lists(inner, max_size=4)
        | st.dictionaries(st.sampled_from(["input", "id", "x"]), inner, max_size=3)
    ),
    max_leaves=12,
)


def read_or_refuse(path: Path, shape, dtype: str) -> None:
    """The readers' contract: inputs of the right shape, or an InputError naming the file."""
    try:
        got = read_inputs(path, shape, dtype)
    except InputError as exc:
        assert str(exc).startswith(str(path)) and "\n" not in str(exc), str(exc)
        return
    assert tuple(got.inputs.shape[1:]) == tuple(shape) and len(got.ids) == len(got.inputs) > 0
    assert bool(torch.isfinite(got.inputs.double()).all())


class Counter:
    def __init__(self, record_property) -> None:
        self.n, self.record = 0, record_property

    def __call__(self) -> None:
        self.n += 1
        self.record("cases", self.n)


@pytest.mark.hostile(
    "property: JSON lines of random JSON values", "an InputError naming the file, or a correct read"
)
def test_random_json_lines_are_read_or_refused(tmp_path, record_property):
    count = Counter(record_property)

    @FUZZ
    @given(lines=st.lists(JSON, min_size=1, max_size=3), dtype=st.sampled_from(["float32", "int64"]))
    def check(lines, dtype):
        count()
        path = tmp_path / "in.jsonl"
        path.write_text("".join(json.dumps(v) + "\n" for v in lines))
        read_or_refuse(path, (3,), dtype)

    check()


@pytest.mark.hostile(
    "property: random bytes as an inputs file", "an InputError naming the file, or a correct read"
)
def test_random_bytes_are_read_or_refused(tmp_path, record_property):
    count = Counter(record_property)

    @FUZZ
    @given(
        data=st.binary(max_size=120) | st.text(max_size=60).map(str.encode),
        suffix=st.sampled_from([".jsonl", ".npy", ".pt"]),
    )
    def check(data, suffix):
        count()
        path = tmp_path / f"in{suffix}"
        path.write_bytes(data)
        read_or_refuse(path, (3,), "float32")

    check()


@pytest.mark.hostile(
    "property: random arrays in .npy and .pt files", "an InputError naming the file, or a correct read"
)
def test_random_arrays_are_read_or_refused(tmp_path, record_property):
    count = Counter(record_property)
    dtypes = st.sampled_from(["f2", "f4", "f8", "i1", "i4", "i8", "u8", "?", "c8"])

    @FUZZ
    @given(
        arr=dtypes.flatmap(lambda d: hnp.arrays(d, hnp.array_shapes(min_dims=0, max_dims=3, max_side=4))),
        suffix=st.sampled_from([".npy", ".pt"]),
        dtype=st.sampled_from(["float32", "int64"]),
    )
    def check(arr, suffix, dtype):
        count()
        path = tmp_path / f"in{suffix}"
        if suffix == ".npy":
            np.save(path, arr)
        elif arr.dtype.kind == "u":  # torch has no general unsigned 64-bit tensors
            return
        else:
            torch.save(torch.from_numpy(np.array(arr)), path)
        read_or_refuse(path, (3,), dtype)

    check()


@pytest.mark.hostile(
    "property: command-line arguments", "exit 0, or exit 2 with one line and nothing written"
)
def test_random_score_arguments_get_a_result_or_one_line(work, tmp_path, capsys, record_property):
    count = Counter(record_property)
    number = st.integers(-(10**20), 10**20).map(str) | st.floats().map(str) | st.text(max_size=6)

    @settings(
        max_examples=30,
        deadline=None,
        derandomize=True,
        database=None,
        suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
    )
    @given(chunk=number, fpr=number, top=number)
    def check(chunk, fpr, top):
        count()
        out = tmp_path / "s.jsonl"
        out.unlink(missing_ok=True)
        capsys.readouterr()
        code = main(
            [
                "score",
                str(work / "det"),
                str(work / "good.jsonl"),
                *MODEL,
                "--out",
                str(out),
                "--quiet",
                f"--chunk={chunk}",
                f"--fpr={fpr}",
                f"--top={top}",
            ]
        )
        err = capsys.readouterr().err
        assert code in (0, 2) and "Traceback" not in err, (code, err)
        if code == 0:
            assert len(out.read_text().splitlines()) == 20
        else:
            assert not out.exists() and err.count(": error: ") == 1, err

    check()


@pytest.mark.hostile(
    "property: detector folders with a random config.json value",
    "exit 2 with one error line (after the --trust-modified warnings), or a correct result",
)
def test_random_config_edits_get_a_result_or_one_line(work, tmp_path, capsys, record_property):
    count = Counter(record_property)
    folder = tmp_path / "det"
    shutil.copytree(work / "det", folder)
    original = json.loads((folder / "config.json").read_text())
    keys = [*sorted(original), "params.aggregate", "params.heldout_fraction", "state.loc_", "extra.source"]

    @FUZZ
    @given(key=st.sampled_from(keys), value=JSON)
    def check(key, value):
        count()
        config = json.loads(json.dumps(original))
        where, _, inner = key.partition(".")
        if inner and isinstance(config.get(where), dict):
            config[where][inner] = value
        else:
            config[where] = value
        (folder / "config.json").write_text(json.dumps(config))
        out = tmp_path / "s.jsonl"
        out.unlink(missing_ok=True)
        capsys.readouterr()
        code = main(
            [
                "score",
                str(folder),
                str(work / "good.jsonl"),
                *MODEL,
                "--out",
                str(out),
                "--quiet",
                "--trust-modified",
            ]
        )
        err = capsys.readouterr().err.splitlines()
        assert code in (0, 2), (code, err)
        if code == 2:
            assert err[-1].startswith("causalmad: error: ") and not out.exists(), err
        assert all(line.startswith("causalmad: ") for line in err), err

    check()
