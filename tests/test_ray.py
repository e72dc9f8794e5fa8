"""Scoring on Ray (``causalmad.distributed``, ``causalmad score --ray``): on a local Ray
instance, 1, 2 and 4 actors give scores bitwise identical to single-process scoring, in
input order, through the Python function (a file or a Ray Dataset) and the command line;
a bad input or a missing ray extra is one line before any actor starts."""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import PlantedSum, planted_data, sum_hypothesis

import causalmad as cm
import causalmad.distributed as distributed
from causalmad.cli import main
from causalmad.distributed import score_with_ray

ray = pytest.importorskip("ray", reason="the ray extra is not installed (pip install 'causalmad[ray]')")

ROOT = Path(__file__).resolve().parents[1]
CONFTEST = Path(__file__).with_name("conftest.py")
MODEL = ["--model", f"{CONFTEST}:PlantedSum", "--hypothesis", f"{CONFTEST}:sum_hypothesis"]


@pytest.fixture(scope="module")
def cluster():
    """One local Ray instance for the module: 4 logical CPUs (on however many cores), no
    dashboard; its workers import causalmad and the tests' models from this checkout."""
    path = os.pathsep.join([str(ROOT), str(ROOT / "tests"), os.environ.get("PYTHONPATH", "")])
    ray.init(
        num_cpus=4,
        include_dashboard=False,
        logging_level="WARNING",
        runtime_env={"env_vars": {"PYTHONPATH": path, "OMP_NUM_THREADS": "1"}},
    )
    yield ray
    ray.shutdown()


@pytest.fixture(scope="module")
def fitted(tmp_path_factory):
    """A scrubbing detector fitted on the planted model, an inputs file of 80 (a quarter
    with the planted backdoor's flag) and its single-process scores file."""
    root = tmp_path_factory.mktemp("ray")
    trusted = planted_data(300, 0, 0, 0.05)
    (root / "trusted.jsonl").write_text("".join(json.dumps(r) + "\n" for r in trusted.tolist()))
    x = torch.cat([planted_data(60, 0, 3, 0.05), planted_data(20, 1, 4, 0.05)])
    x = x[torch.randperm(len(x), generator=torch.Generator().manual_seed(0))]
    (root / "inputs.jsonl").write_text(
        "".join(json.dumps({"input": r, "id": f"u{i}"}) + "\n" for i, r in enumerate(x.tolist()))
    )
    fit = ["fit", *MODEL, "--trusted", str(root / "trusted.jsonl"), "--out", str(root / "det"), "--quiet"]
    assert main(fit) == 0
    score = ["score", str(root / "det"), str(root / "inputs.jsonl"), *MODEL, "--quiet"]
    assert main([*score, "--out", str(root / "single.jsonl")]) == 0
    detector = cm.load_detector(root / "det", PlantedSum(), sum_hypothesis())
    return root, x, detector.score(x)


@pytest.mark.parametrize("actors", [1, 2, 4])
def test_the_function_gives_single_process_scores_bit_for_bit(cluster, fitted, actors):
    root, _, expected = fitted
    got = score_with_ray(
        root / "det", root / "inputs.jsonl", model=PlantedSum, hypothesis=sum_hypothesis, actors=actors
    )
    assert got.dtype == expected.dtype and np.array_equal(got, expected)


@pytest.mark.parametrize("actors", [1, 2, 4])
def test_the_command_line_writes_the_single_process_scores_file(cluster, fitted, tmp_path, actors):
    root, _, _ = fitted
    out = tmp_path / "ray.jsonl"
    argv = ["score", str(root / "det"), str(root / "inputs.jsonl"), *MODEL, "--out", str(out), "--quiet"]
    assert main([*argv, "--ray", "--ray-actors", str(actors)]) == 0
    assert out.read_bytes() == (root / "single.jsonl").read_bytes()
    assert not list(tmp_path.glob(".*partial*"))  # the partial scores went with the run


def test_a_ray_dataset_is_scored_in_its_row_order(cluster, fitted):
    root, x, expected = fitted
    dataset = ray.data.from_numpy(x.numpy()).repartition(4)
    got = score_with_ray(
        root / "det", dataset, model=PlantedSum(), hypothesis=sum_hypothesis(), actors=2, chunk=16
    )
    assert np.array_equal(got, expected)


def test_a_bad_input_is_one_line_before_any_actor_starts(fitted, tmp_path, monkeypatch, capsys):
    root, x, _ = fitted
    bad = tmp_path / "bad.jsonl"
    bad.write_text("".join(json.dumps(r) + "\n" for r in x[:5].tolist()) + "[1, 2]\n")

    def no_ray(*args, **kwargs):
        raise AssertionError("Ray was started for a bad inputs file")

    monkeypatch.setattr(distributed, "ray_session", no_ray)
    argv = ["score", str(root / "det"), str(bad), *MODEL, "--out", str(tmp_path / "s.jsonl"), "--ray"]
    assert main(argv) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "bad.jsonl line 6: bad input: it has shape (2,)" in err[0], err
    with pytest.raises(cm.InputError, match="bad.jsonl line 6"):
        score_with_ray(root / "det", bad, model=PlantedSum, hypothesis=sum_hypothesis)
    assert not (tmp_path / "s.jsonl").exists()


def test_without_ray_installed_it_says_how_to_install_it(fitted, tmp_path, monkeypatch, capsys):
    root, _, _ = fitted
    monkeypatch.setitem(sys.modules, "ray", None)  # `import ray` raises ImportError
    with pytest.raises(cm.MissingExtraError, match=r"needs the ray extra: pip install 'causalmad\[ray\]'"):
        score_with_ray(root / "det", root / "inputs.jsonl", model=PlantedSum, hypothesis=sum_hypothesis)
    argv = ["score", str(root / "det"), str(root / "inputs.jsonl"), *MODEL, "--ray"]
    assert main([*argv, "--out", str(tmp_path / "s.jsonl")]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "pip install 'causalmad[ray]'" in err[0], err


def test_ray_actors_without_ray_is_refused(fitted, tmp_path, capsys):
    root, _, _ = fitted
    argv = ["score", str(root / "det"), str(root / "inputs.jsonl"), *MODEL, "--ray-actors", "2"]
    assert main([*argv, "--out", str(tmp_path / "s.jsonl")]) == 2
    assert "add --ray" in capsys.readouterr().err
    assert main([*argv, "--out", str(tmp_path / "s.jsonl"), "--ray", "--ray-actors", "0"]) == 2
    assert "--ray-actors 0: give the number of Ray actors, at least 1" in capsys.readouterr().err


def test_a_folder_fitted_on_a_model_needs_the_model(fitted):
    root, _, _ = fitted
    with pytest.raises(cm.InputError, match="not fitted on a registered task"):
        score_with_ray(root / "det", root / "inputs.jsonl")


def test_bench_runs_each_cell_as_a_ray_task_with_the_records_of_a_run_here_and_resumes(
    cluster, tmp_path, capsys
):
    argv = ["bench", "--tasks", "conftest:planted_task", "--detectors", "mahalanobis", "output-disagreement"]
    argv += ["--size", "tiny", "--seeds", "0", "--quiet"]
    assert main([*argv, "--out", str(tmp_path / "here")]) == 0
    assert main([*argv, "--out", str(tmp_path / "ray"), "--ray"]) == 0
    assert "2 cell(s) computed, 0 finished cell(s) skipped, 0 failed" in capsys.readouterr().out

    def records(folder):
        found = json.loads((tmp_path / folder / "results.json").read_text())
        timing = ("fit_seconds", "score_seconds")
        for r in found:  # a Ray cell runs with one torch thread, a run here with the machine's
            r["environment"].pop("threads")
        return sorted(({k: v for k, v in r.items() if k not in timing} for r in found), key=str)

    assert records("ray") == records("here")
    for name in ("scores", "tasks.json", "results.md", "tasks.md"):
        assert (tmp_path / "ray" / name).exists()
    assert main([*argv, "--out", str(tmp_path / "ray"), "--ray"]) == 0  # resumed: nothing left to do
    assert "0 cell(s) computed, 2 finished cell(s) skipped" in capsys.readouterr().out


def test_an_actor_s_loading_error_comes_back_as_itself(cluster, fitted):
    root, _, _ = fitted
    with pytest.raises(cm.PersistenceError, match="fitted on a different model"):
        score_with_ray(
            root / "det", root / "inputs.jsonl", model=torch.nn.Sequential(torch.nn.Linear(3, 23)), actors=1
        )


def test_an_address_where_no_cluster_answers_is_refused_at_once():
    with pytest.raises(cm.InputError, match="no Ray cluster answers at '127.0.0.1:1'"):
        distributed.check_reachable("127.0.0.1:1", timeout=5)


def test_a_ray_dataset_s_token_ids_given_as_floats_must_be_whole():
    class Tokens:  # what an actor holds: a detector fitted on int64 token ids
        input_dtype_ = "int64"

        def score(self, x: torch.Tensor) -> np.ndarray:
            return x.sum(1).double().numpy()

    threads = torch.get_num_threads()
    try:
        scorer = distributed.Scorer(Tokens)
    finally:
        torch.set_num_threads(threads)  # an actor runs one thread; this process keeps its own
    assert scorer({"input": np.array([[1.0, 3.0]])})["score"].tolist() == [4.0]
    with pytest.raises(cm.InputError, match="cannot hold exactly"):
        scorer({"input": np.array([[1.0, 3.7]])})  # not 3: that would score another input


def test_the_report_after_ray_scoring_runs_on_the_driver_s_cpu_when_it_has_no_cuda(monkeypatch, capsys):
    # the actors scored with --device cuda; the driver that writes the report has no GPU
    from causalmad.cli import _driver_args, parser

    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    args = parser().parse_args(
        ["score", "det", "in.jsonl", "--ray", "--device", "cuda", "--report", "r.html"]
    )
    here = _driver_args(args)
    assert here.device == "cpu" and args.device == "cuda"
    assert "this machine has no CUDA: the report runs on CPU" in capsys.readouterr().err
    cpu = parser().parse_args(["score", "det", "in.jsonl", "--ray", "--report", "r.html"])
    assert _driver_args(cpu) is cpu
