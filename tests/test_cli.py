"""The command line: fit -> score -> explain on a planted model, and every way an input can be wrong."""

from __future__ import annotations

import hashlib
import json
import os
import re
import shutil
import signal
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import PlantedSum, planted_data, sum_hypothesis

import causalmad as cm
from causalmad.cli import main

CONFTEST = Path(__file__).with_name("conftest.py")
MODEL = ["--model", f"{CONFTEST}:PlantedSum", "--hypothesis", f"{CONFTEST}:sum_hypothesis"]


def write_jsonl(path: Path, rows, ids=None) -> Path:
    with open(path, "w") as f:
        for i, r in enumerate(rows):
            f.write(json.dumps(r if ids is None else {"input": r, "id": ids[i]}) + "\n")
    return path


@pytest.fixture(scope="module")
def work(tmp_path_factory):
    """A detector folder fitted from the command line, and an untrusted inputs file."""
    root = tmp_path_factory.mktemp("cli")
    write_jsonl(root / "trusted.jsonl", planted_data(300, 0, 0, 0.05).tolist())
    untrusted = torch.cat([planted_data(30, 0, 3, 0.05), planted_data(30, 1, 4, 0.05)])
    write_jsonl(root / "untrusted.jsonl", untrusted.tolist(), [f"u{i}" for i in range(60)])
    assert (
        main(
            [
                "fit",
                *MODEL,
                "--trusted",
                str(root / "trusted.jsonl"),
                "--param",
                "resamples=2",
                "--out",
                str(root / "det"),
                "--quiet",
            ]
        )
        == 0
    )
    return root, untrusted


def read_scores(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines()]


def test_fit_score_explain_round_trip(work, tmp_path, capsys):
    root, untrusted = work
    out = tmp_path / "scores.jsonl"
    assert (
        main(
            ["score", str(root / "det"), str(root / "untrusted.jsonl"), *MODEL, "--out", str(out), "--quiet"]
        )
        == 0
    )
    rows = read_scores(out)
    assert [r["index"] for r in rows] == list(range(60)) and [r["id"] for r in rows] == [
        f"u{i}" for i in range(60)
    ]
    det = cm.load_detector(root / "det", PlantedSum(), sum_hypothesis())
    np.testing.assert_allclose([r["score"] for r in rows], det.score(untrusted), rtol=1e-6)
    flags = np.array([r["flagged"] for r in rows])
    assert flags[30:].all() and flags[:30].mean() <= 0.1  # the planted backdoor is flagged
    # --fail-on-flag lets a script stop on anomalies; CSV output by extension
    csv_out = tmp_path / "scores.csv"
    assert (
        main(
            [
                "score",
                str(root / "det"),
                str(root / "untrusted.jsonl"),
                *MODEL,
                "--out",
                str(csv_out),
                "--fail-on-flag",
                "--quiet",
            ]
        )
        == 3
    )
    assert csv_out.read_text().splitlines()[0] == "index,id,score,flagged"
    capsys.readouterr()
    assert (
        main(
            [
                "explain",
                str(root / "det"),
                "--inputs",
                str(root / "untrusted.jsonl"),
                "--index",
                "45",
                *MODEL,
                "--plot",
                str(tmp_path / "why.png"),
                "--quiet",
            ]
        )
        == 0
    )
    why = json.loads(capsys.readouterr().out)
    assert why["id"] == "u45" and why["flagged"] and why["broken"][0]["z"] > 10
    assert why["variables"][0]["variable"] == "s"
    assert (tmp_path / "why.png").read_bytes()[:4] == b"\x89PNG"
    assert main(["explain", str(root / "det"), "--input", "[3, 4, 0]", *MODEL, "--quiet"]) == 0
    assert not json.loads(capsys.readouterr().out)["flagged"]


def test_npy_inputs_and_default_output_name(work, tmp_path):
    root, untrusted = work
    np.save(tmp_path / "batch.npy", untrusted.numpy())
    assert main(["score", str(root / "det"), str(tmp_path / "batch.npy"), *MODEL, "--quiet"]) == 0
    rows = read_scores(tmp_path / "batch.scores.jsonl")
    assert len(rows) == 60 and rows[7]["id"] == 7


@pytest.mark.parametrize(
    "line, message",
    [
        ("[1.0, 2.0, 0.0", "line 2: not valid JSON"),
        ('{"inputs": [1.0, 2.0, 0.0]}', r"line 2: unknown field\(s\) \['inputs'\]"),
        ('{"id": 4}', "line 2: the object has no 'input' field"),
        ("[1.0, 2.0]", r"line 2: bad input: it has shape \(2,\); the detector takes inputs of shape \(3,\)"),
        ('[1.0, "2", 0.0]', 'line 2: bad input: it holds "2", not a number'),
        ("[1.0, NaN, 0.0]", "line 2: bad input: it holds nan"),
        ('{"input": [1, 2, 0], "id": [1]}', "line 2: 'id' must be a string or a number"),
        ('"hello"', "line 2: expected a JSON array"),
    ],
)
def test_malformed_inputs_file_names_the_line(work, tmp_path, capsys, line, message):
    root, _ = work
    bad = tmp_path / "bad.jsonl"
    bad.write_text("[1.0, 2.0, 0.0]\n" + line + "\n[3.0, 1.0, 0.0]\n")
    out = tmp_path / "scores.jsonl"
    assert main(["score", str(root / "det"), str(bad), *MODEL, "--out", str(out)]) == 2
    err = capsys.readouterr().err
    assert err.startswith("causalmad: error: ") and "Traceback" not in err
    assert re.search(message, err), err
    assert not out.exists()


def test_bad_folders_models_and_usage_are_clear_errors(work, tmp_path, capsys):
    root, _ = work
    inputs = str(root / "untrusted.jsonl")
    broken = tmp_path / "broken"
    shutil.copytree(root / "det", broken)
    state = broken / "state.safetensors"
    state.write_bytes(state.read_bytes()[:100])
    cases = [
        (["score", str(broken), inputs, *MODEL], "truncated or corrupted"),
        (["score", str(tmp_path / "nowhere"), inputs, *MODEL], "is not a folder"),
        (["score", str(root / "det"), inputs], "pass them again"),
        (["score", str(root / "det"), str(tmp_path / "missing.jsonl"), *MODEL], "no such file"),
        (["score", str(root / "det"), inputs, *MODEL, "--fpr", "0"], "fpr must be in"),
        (
            ["score", str(root / "det"), inputs, *MODEL, "--out", str(tmp_path / "s.txt")],
            "use a .jsonl or .csv",
        ),
        (
            [
                "score",
                str(root / "det"),
                inputs,
                "--model",
                f"{CONFTEST}:OtherSum",
                "--hypothesis",
                f"{CONFTEST}:sum_hypothesis",
            ],
            "different model",
        ),
        (["score", str(root / "det"), inputs, "--model", f"{CONFTEST}:nothing"], "has no 'nothing'"),
        (["fit", *MODEL, "--trusted", inputs, "--out", str(root / "det")], "already exists"),
        (["fit", *MODEL, "--out", str(tmp_path / "d2")], "needs --trusted"),
        (["fit", "--task", "no-such-task", "--out", str(tmp_path / "d3")], "Unknown task"),
        (
            ["fit", *MODEL, "--trusted", inputs, "--detector", "magic", "--out", str(tmp_path / "d4")],
            "unknown detector",
        ),
        (
            ["fit", *MODEL, "--trusted", inputs, "--param", "colour=3", "--out", str(tmp_path / "d5")],
            "--param",
        ),
        (["explain", str(root / "det"), *MODEL], "give the input to explain"),
        (["score", str(root / "det"), inputs, *MODEL, "--device", "nonsense"], "not a device name"),
        (["demo", "--device", "mps", "--out", str(tmp_path / "demo.json")], "causalmad runs on cpu or cuda"),
        (
            ["fit", *MODEL, "--trusted", inputs, "--detector", "que", "--out", str(tmp_path / "d6")],
            "--untrusted FILE",
        ),
        (
            [
                "fit",
                *MODEL,
                "--trusted",
                inputs,
                "--untrusted",
                inputs,
                "--detector",
                "mahalanobis",
                "--out",
                str(tmp_path / "d7"),
            ],
            "drop --untrusted",
        ),
        (
            [
                "fit",
                *MODEL,
                "--trusted",
                inputs,
                "--detector",
                "supervised-probe",
                "--out",
                str(tmp_path / "d8"),
            ],
            "needs anomaly labels",
        ),
        (["explain", str(root / "det"), "--inputs", inputs, "--index", "99", *MODEL], "has 60 inputs"),
    ]
    for argv, message in cases:
        assert main(argv) == 2, argv
        err = capsys.readouterr().err
        assert message in err and "Traceback" not in err, (argv, err)
    assert main(["score"]) == 2  # a bad command line: one line, not a usage block
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "usage:" not in err, err
    assert err.startswith("causalmad score: error: the following arguments are required: detector_dir")
    assert main(["--version"]) == 0


def test_scoring_that_fails_halfway_leaves_no_output(work, tmp_path, monkeypatch):
    root, _ = work
    out = tmp_path / "scores.jsonl"
    out.write_text("previous results\n")
    calls = []
    original = cm.ScrubbingDetector.score

    def flaky(self, x):
        calls.append(len(x))
        if len(calls) == 2:
            raise RuntimeError("disk on fire")
        return original(self, x)

    monkeypatch.setattr(cm.ScrubbingDetector, "score", flaky)
    assert (
        main(
            [
                "score",
                str(root / "det"),
                str(root / "untrusted.jsonl"),
                *MODEL,
                "--out",
                str(out),
                "--chunk",
                "20",
                "--quiet",
            ]
        )
        == 1
    )  # an internal error: one line, the traceback with --debug
    assert out.read_text() == "previous results\n"  # untouched
    # no half-written scores file; the first chunk's scores are kept for --resume
    # (tests/test_partial_scores.py)
    assert sorted(p.name for p in tmp_path.iterdir()) == [".scores.jsonl.causalmad-partial", "scores.jsonl"]


def chromium() -> str | None:
    return shutil.which("chromium") or shutil.which("chromium-browser") or shutil.which("google-chrome")


def test_report_renders_in_a_headless_browser(work, tmp_path):
    if chromium() is None:
        if os.environ.get("CAUSALMAD_REQUIRE_BROWSER"):
            pytest.fail("CAUSALMAD_REQUIRE_BROWSER is set but no chromium is installed")
        pytest.skip("no chromium (apt-get install chromium); .ci/run installs it")
    root, _ = work
    report = tmp_path / "report.html"
    assert (
        main(
            [
                "score",
                str(root / "det"),
                str(root / "untrusted.jsonl"),
                *MODEL,
                "--out",
                str(tmp_path / "s.jsonl"),
                "--report",
                str(report),
                "--top",
                "3",
                "--quiet",
            ]
        )
        == 0
    )
    flags = ["--headless", "--no-sandbox", "--disable-gpu", "--hide-scrollbars", "--window-size=1200,2000"]
    dom = subprocess.run(
        [chromium(), *flags, "--dump-dom", report.as_uri()],
        capture_output=True,
        text=True,
        timeout=120,
        check=True,
    ).stdout
    for anchor in (
        'id="histogram"',
        'id="flagged"',
        'id="alignment"',
        'id="explanations"',
        "Top flagged inputs (3 of",
        "variable scrubbed alone",
        "data:image/png;base64,",
    ):
        assert anchor in dom, anchor
    shot = tmp_path / "shot.png"
    subprocess.run(
        [chromium(), *flags, f"--screenshot={shot}", report.as_uri()],
        capture_output=True,
        timeout=120,
        check=True,
    )
    from PIL import Image

    pixels = np.asarray(Image.open(shot).convert("RGB")).astype(int)
    blue = (np.abs(pixels - np.array([44, 127, 184])).sum(-1) < 60).sum()  # histogram and share bars drawn
    red = (np.abs(pixels - np.array([192, 57, 43])).sum(-1) < 60).sum()  # threshold line and flag count
    assert blue > 500 and red > 50, (blue, red)


def test_baselines_fit_and_score_from_the_command_line(work, tmp_path):
    root, _ = work
    model_only = MODEL[:2]
    assert (
        main(
            [
                "fit",
                *MODEL,
                "--trusted",
                str(root / "trusted.jsonl"),
                "--detector",
                "lof",
                "--out",
                str(tmp_path / "lof"),
            ]
        )
        == 2
    )  # a hypothesis it would not use is an error
    for name, extra in (("mahalanobis", []), ("que", ["--untrusted", str(root / "untrusted.jsonl")])):
        folder = tmp_path / name
        assert (
            main(
                [
                    "fit",
                    *model_only,
                    "--trusted",
                    str(root / "trusted.jsonl"),
                    *extra,
                    "--detector",
                    name,
                    "--param",
                    'aggregate="mean"',
                    "--out",
                    str(folder),
                    "--quiet",
                ]
            )
            == 0
        )
        out = tmp_path / f"{name}.jsonl"
        assert (
            main(
                [
                    "score",
                    str(folder),
                    str(root / "untrusted.jsonl"),
                    *model_only,
                    "--out",
                    str(out),
                    "--quiet",
                ]
            )
            == 0
        )
        scores = np.array([r["score"] for r in read_scores(out)])
        assert scores[30:].mean() > scores[:30].mean()
        assert json.loads((folder / "config.json").read_text())["params"]["aggregate"] == "mean"


# ---------------------------------------------------------------- a detector folder is data, never code
def copy_folder(src: Path, dst: Path) -> Path:
    shutil.copytree(src, dst)
    return dst


def resign(folder: Path) -> None:
    """Rewrite SHA256SUMS for the folder's current files, as whoever edits a folder can."""
    (folder / "SHA256SUMS").write_text(
        "".join(
            f"{hashlib.sha256((folder / n).read_bytes()).hexdigest()}  {n}\n"
            for n in ("config.json", "state.safetensors")
        )
    )


def test_a_folder_that_names_code_runs_none_of_it(work, tmp_path, monkeypatch, capsys):
    root, _ = work
    marker = tmp_path / "marker"
    (tmp_path / "evil_task.py").write_text(
        f"open({str(marker)!r}, 'w').write('imported')\n"
        f"def make(**kwargs):\n    open({str(marker)!r}, 'w').write('called')\n"
    )
    monkeypatch.syspath_prepend(str(tmp_path))
    folder = copy_folder(root / "det", tmp_path / "det")
    config = json.loads((folder / "config.json").read_text())
    config["extra"]["source"] = {"task": "evil_task:make", "size": "tiny", "seed": 0}
    (folder / "config.json").write_text(json.dumps(config))
    resign(folder)  # a checksum is no signature: the folder's author can always make it match
    inputs = str(root / "untrusted.jsonl")
    for argv in (
        ["score", str(folder), inputs, "--out", str(tmp_path / "s.jsonl")],
        ["explain", str(folder), "--inputs", inputs, "--index", "3"],
        ["score", str(folder), inputs, "--trust-modified", "--out", str(tmp_path / "s.jsonl")],
    ):
        assert main(argv) == 2, argv
        err = capsys.readouterr().err
        assert (
            err.count("\n") == 1 and "names the task 'evil_task:make', which is not a registered task" in err
        )
        assert "runs no code named in a detector folder: pass the model with --model" in err, err
    assert not marker.exists() and not (tmp_path / "s.jsonl").exists()
    # the model named on the command line by the user still works
    assert main(["score", str(folder), inputs, *MODEL, "--out", str(tmp_path / "s.jsonl"), "--quiet"]) == 0


def test_an_edited_config_json_is_refused_unless_trusted(work, tmp_path, capsys):
    root, _ = work
    folder = copy_folder(root / "det", tmp_path / "det")
    config = (folder / "config.json").read_bytes()
    (folder / "config.json").write_bytes(config.replace(b'"resamples": 2', b'"resamples": 3'))
    out = tmp_path / "s.jsonl"
    argv = ["score", str(folder), str(root / "untrusted.jsonl"), *MODEL, "--out", str(out), "--quiet"]
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert (
        err.count("\n") == 1 and f"{folder / 'config.json'} does not match its checksum in SHA256SUMS" in err
    )
    assert "--trust-modified" in err and not out.exists()
    assert main([*argv, "--trust-modified"]) == 0
    err = capsys.readouterr().err
    assert err.startswith("causalmad: warning: ") and "config.json does not match its checksum" in err
    assert err.count("\n") == 1, err  # once, though the folder is read twice
    assert len(read_scores(out)) == 60


# ---------------------------------------------------------------- bad arguments and non-finite values
def test_a_chunk_below_one_is_refused_before_any_work(work, tmp_path, capsys):
    root, _ = work
    out = tmp_path / "s.jsonl"
    for chunk in ("0", "-1"):
        for folder in (root / "det", tmp_path / "nowhere"):  # refused before the folder is read
            assert (
                main(
                    [
                        "score",
                        str(folder),
                        str(root / "untrusted.jsonl"),
                        *MODEL,
                        "--out",
                        str(out),
                        "--chunk",
                        chunk,
                    ]
                )
                == 2
            )
            err = capsys.readouterr().err
            assert (
                err == f"causalmad: error: --chunk {chunk}: give the number of inputs scored per step, "
                "at least 1.\n"
            )
    assert not out.exists()


def test_non_finite_ids_are_refused_and_non_finite_scores_written_as_null(
    work, tmp_path, capsys, monkeypatch
):
    root, _ = work
    out = tmp_path / "s.jsonl"
    for ident in ("NaN", "Infinity", "-Infinity"):
        bad = tmp_path / "bad.jsonl"
        bad.write_text(
            '{"input": [1.0, 2.0, 0.0], "id": "a"}\n{"input": [1.0, 2.0, 0.0], "id": ' + ident + "}\n"
        )
        assert main(["score", str(root / "det"), str(bad), *MODEL, "--out", str(out)]) == 2
        err = capsys.readouterr().err
        assert "bad.jsonl line 2: 'id' is" in err and "a string or a finite number" in err, err
        assert main(["explain", str(root / "det"), "--inputs", str(bad), "--index", "0", *MODEL]) == 2
        assert "bad.jsonl line 2: 'id' is" in capsys.readouterr().err
    assert not out.exists()

    def strict(text):
        return json.loads(text, parse_constant=lambda c: pytest.fail(f"{c} is not JSON"))

    monkeypatch.setattr(cm.ScrubbingDetector, "score", lambda self, x: np.full(len(x), np.nan))
    monkeypatch.setattr(
        cm.ScrubbingDetector,
        "explain",
        lambda self, x, top=5, fpr=0.01: cm.ScrubbingExplainResult(
            float("nan"), float("inf"), fpr, False, broken=[{"z": float("-inf")}]
        ),
    )
    assert (
        main(
            ["score", str(root / "det"), str(root / "untrusted.jsonl"), *MODEL, "--out", str(out), "--quiet"]
        )
        == 0
    )
    assert all(strict(line)["score"] is None for line in out.read_text().splitlines())
    capsys.readouterr()
    assert main(["explain", str(root / "det"), "--input", "[1, 2, 0]", *MODEL, "--quiet"]) == 0
    why = strict(capsys.readouterr().out)
    assert why["score"] is None and why["threshold"] is None and why["broken"] == [{"z": None}]


# ---------------------------------------------------------------- a baseline fitted on a task
class PlantedTask:
    """A registered task (as an entry point) whose model is the planted sum."""

    value = "tests:PlantedTask"

    def load(self):
        return lambda size="full", seed=0: cm.Task(
            "planted-sum", PlantedSum(), planted_data(300, 0, 0, 0.05), {}, sum_hypothesis(), seed=seed
        )


def test_a_baseline_fitted_on_a_task_scores_and_explains(work, tmp_path, capsys, monkeypatch):
    root, _ = work
    monkeypatch.setattr("causalmad.task.available_tasks", lambda: {"planted-sum": PlantedTask()})
    folder = tmp_path / "maha"
    assert (
        main(
            [
                "fit",
                "--task",
                "planted-sum",
                "--size",
                "tiny",
                "--detector",
                "mahalanobis",
                "--out",
                str(folder),
                "--quiet",
            ]
        )
        == 0
    )
    out = tmp_path / "s.jsonl"
    assert main(["score", str(folder), str(root / "untrusted.jsonl"), "--out", str(out), "--quiet"]) == 0
    scores = np.array([r["score"] for r in read_scores(out)])
    assert scores[30:].mean() > scores[:30].mean()
    capsys.readouterr()
    assert (
        main(["explain", str(folder), "--inputs", str(root / "untrusted.jsonl"), "--index", "45", "--quiet"])
        == 0
    )
    assert json.loads(capsys.readouterr().out)["id"] == "u45"
    # a hypothesis the user names for a detector that never used one is still an error
    assert main(["score", str(folder), str(root / "untrusted.jsonl"), *MODEL, "--out", str(out)]) == 2
    assert "fitted without a hypothesis" in capsys.readouterr().err


# ------------------------------------------------------ never destroy what the user did not hand over
def snapshot(root: Path) -> dict[str, bytes]:
    return {str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


def test_force_replaces_only_a_detector_folder(work, tmp_path, capsys):
    root, _ = work
    project = tmp_path / "project"
    (project / "src").mkdir(parents=True)
    (project / "config.json").write_text('{"name": "my project"}\n')
    (project / "src" / "main.py").write_text("print('my work')\n")
    (project / "data.csv").write_text("a,b\n1,2\n")
    (tmp_path / "notes.txt").write_text("mine\n")
    before = snapshot(tmp_path)
    fit = [
        "fit",
        *MODEL[:2],
        "--trusted",
        str(root / "trusted.jsonl"),
        "--detector",
        "mahalanobis",
        "--force",
    ]
    for out, message in (
        (project, "is not a causalmad detector folder (it holds data.csv, src"),
        (tmp_path / "notes.txt", "is a file, not a detector folder"),
    ):
        assert main([*fit, "--out", str(out)]) == 2
        err = capsys.readouterr().err
        assert err.count("\n") == 1 and message in err and "refusing to replace it" in err, err
    assert snapshot(tmp_path) == before
    det = tmp_path / "det"
    assert main([*fit, "--out", str(det), "--quiet"]) == 0
    assert main([*fit, "--out", str(det), "--quiet", "--param", 'aggregate="mean"']) == 0  # a detector folder
    assert json.loads((det / "config.json").read_text())["params"]["aggregate"] == "mean"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["det", "notes.txt", "project"]


def test_outputs_onto_inputs_or_the_detector_folder_are_refused(work, tmp_path, capsys):
    root, _ = work
    folder = copy_folder(root / "det", tmp_path / "det")
    inputs = tmp_path / "inputs.jsonl"
    inputs.write_text((root / "untrusted.jsonl").read_text())
    (tmp_path / "via-link.jsonl").symlink_to(inputs)
    (tmp_path / "linked-det").symlink_to(folder)
    os.link(inputs, tmp_path / "hard.jsonl")
    trusted = tmp_path / "trusted.jsonl"
    trusted.write_text((root / "trusted.jsonl").read_text())
    score = ["score", str(folder), str(inputs), *MODEL]
    explain = ["explain", str(folder), "--inputs", str(inputs), "--index", "3", *MODEL]
    cases = [
        ([*score, "--out", str(inputs)], "--out", "is the inputs file"),
        ([*score, "--out", str(tmp_path / "via-link.jsonl")], "--out", "is the inputs file"),
        ([*score, "--out", str(tmp_path / "hard.jsonl")], "--out", "is the inputs file"),
        ([*score, "--out", str(folder / "config.json")], "--out", "lies inside the detector folder"),
        (
            [*score, "--out", str(tmp_path / "linked-det" / "scores.jsonl")],
            "--out",
            "lies inside the detector folder",
        ),
        (
            [*score, "--out", str(tmp_path / "s.jsonl"), "--report", str(folder / "state.safetensors")],
            "--report",
            "lies inside the detector folder",
        ),
        (
            [*score, "--out", str(tmp_path / "s.jsonl"), "--report", str(inputs)],
            "--report",
            "is the inputs file",
        ),
        (
            [*score, "--out", str(tmp_path / "s.jsonl"), "--report", str(tmp_path / "s.jsonl")],
            "--report",
            "is the --out output",
        ),
        (
            [*score, "--out", str(CONFTEST.with_suffix(".jsonl")), "--report", str(CONFTEST)],
            "--report",
            "is the --model file",
        ),
        ([*explain, "--out", str(inputs)], "--out", "is the --inputs file"),
        ([*explain, "--plot", str(folder / "config.json")], "--plot", "lies inside the detector folder"),
        ([*explain, "--plot", str(folder / "why.png")], "--plot", "lies inside the detector folder"),
        (["fit", *MODEL, "--trusted", str(trusted), "--out", str(trusted)], "--out", "is the --trusted file"),
        (
            ["fit", *MODEL, "--trusted", str(trusted), "--out", str(tmp_path), "--force"],
            "--out",
            "holds the --trusted file",
        ),
    ]
    before = snapshot(tmp_path)
    for argv, flag, message in cases:
        assert main(argv) == 2, argv
        err = capsys.readouterr().err
        assert err.startswith(f"causalmad: error: {flag} ") and message in err and err.count("\n") == 1, (
            argv,
            err,
        )
    assert snapshot(tmp_path) == before  # nothing written, nothing overwritten


KILLED = """
import os, signal, sys
sys.path.insert(0, {tests!r})
import safetensors.torch
import causalmad as cm
from causalmad.cli import main

def killed(*args, **kwargs):  # kill -9 in the middle of the work
    os.kill(os.getpid(), signal.SIGKILL)

if sys.argv[1] == "fit":
    safetensors.torch.save_file = killed
else:
    original = cm.ScrubbingDetector.score
    calls = []
    def score(self, x):
        calls.append(1)
        return killed() if len(calls) == 2 else original(self, x)
    cm.ScrubbingDetector.score = score
main(sys.argv[1:])
"""


def test_a_run_killed_during_fit_or_score_leaves_no_debris_after_the_next(work, tmp_path, caplog):
    root, _ = work
    script = KILLED.format(tests=str(CONFTEST.parent))
    det, out = tmp_path / "det", tmp_path / "scores.jsonl"
    fit = [
        "fit",
        *MODEL,
        "--trusted",
        str(root / "trusted.jsonl"),
        "--param",
        "resamples=1",
        "--out",
        str(det),
        "--quiet",
    ]
    score = [
        "score",
        str(root / "det"),
        str(root / "untrusted.jsonl"),
        *MODEL,
        "--out",
        str(out),
        "--chunk",
        "20",
        "--quiet",
    ]
    for argv, debris in ((fit, ".det.causalmad-tmp-"), (score, ".scores.jsonl.partial-")):
        proc = subprocess.Popen([sys.executable, "-c", script, *argv])
        assert proc.wait(timeout=300) == -signal.SIGKILL
        # a killed save also leaves its (released) lock file; a killed score, its finished chunks for --resume
        left = [".det.causalmad-lock"] if argv is fit else [".scores.jsonl.causalmad-partial"]
        assert sorted(p.name for p in tmp_path.iterdir() if p.name.startswith(".")) == [
            *left,
            f"{debris}{proc.pid}",
        ]
        caplog.clear()
        assert main(argv) == 0  # the same command again
        assert [p.name for p in tmp_path.iterdir() if p.name.startswith(".")] == []
        assert f"removed {tmp_path / debris}{proc.pid}, left by process {proc.pid}" in caplog.text
    assert (
        sorted(p.name for p in tmp_path.iterdir()) == ["det", "scores.jsonl"] and len(read_scores(out)) == 60
    )
