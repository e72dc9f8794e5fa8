"""The side-by-side benchmark: a tiny run over every task and detector, its files, resuming."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from floors import floor
from sklearn.metrics import roc_auc_score

import causalmad as cm
from causalmad.bench import cell_of, results_markdown, scores_path
from causalmad.cli import main
from causalmad.evaluation import RECORD_KEYS, rescore_scrubbing
from causalmad.metrics import tpr_at_fpr

TYPES = {
    "task": str,
    "split": str,
    "detector": str,
    "size": str,
    "seed": int,
    "auroc": float,
    "ap": float,
    "tpr_at_1pct_fpr": float,
    "tpr_at_5pct_fpr": float,
    "fit_seconds": float,
    "score_seconds": float,
    "n_trusted": int,
    "n_normal": int,
    "n_anomalous": int,
    "skyline": bool,
    "environment": dict,
}


@pytest.mark.slow
@pytest.mark.every_task
def test_tiny_bench_over_every_task_and_detector_writes_its_files_and_resumes(
    tiny_addition_task, tmp_path, capsys
):
    out = tmp_path / "bench"
    # a smoke test: every task and detector, on the first 20 normal + 20 anomalous inputs of
    # each split and 160 trusted ones, scrubbing each input once per explanation and with no
    # DAS (tests/test_addition_task.py, test_hierarchical_equality.py and test_tracr.py test
    # it; here it only cost quirky arithmetic's fit 43 s and left the scores as they were),
    # isolation forests of 50 trees a site instead of 200 (about 37 s of cells otherwise),
    # and 8 input-cut subsets with 2 interchange sources and 2 dual bases (the input cut's hybrids are
    # checked with the hypothesis one at a time). The tiny models themselves are trained in full.
    settings = [
        "scrubbing.resamples=1",
        "scrubbing.das_rank=null",
        "scrubbing.input_cut_budget=8",
        "scrubbing.counterfactual_resamples=2",
        "scrubbing.dual_resamples=2",
        "isolation-forest.n_estimators=50",
    ]
    quick = ["--max-inputs", "20", *(arg for s in settings for arg in ("--param", s))]
    assert main(["bench", "--size", "tiny", "--seeds", "0", "--out", str(out), "--quiet", *quick]) == 0
    assert "0 failed" in capsys.readouterr().out
    records = json.loads((out / "results.json").read_text())

    # schema: one record per (task, split, detector, seed), every field of the right type
    assert set(TYPES) >= set(RECORD_KEYS)
    for r in records:
        for key, typ in TYPES.items():
            assert isinstance(r[key], typ) and (typ is not int or not isinstance(r[key], bool)), (key, r[key])
        assert r["fit_seconds"] >= 0 and r["score_seconds"] >= 0
        assert {"cpu", "threads", "torch", "transformers", "transformer-lens"} <= set(r["environment"])
    cells = [cell_of(r) for r in records]
    assert len(cells) == len(set(cells))
    assert {r["task"] for r in records} == set(cm.available_tasks())
    for task in cm.available_tasks():  # every detector on every split of every task
        splits = {r["split"] for r in records if r["task"] == task}
        assert {(r["split"], r["detector"]) for r in records if r["task"] == task} == {
            (s, d) for s in splits for d in cm.DETECTORS
        }
    assert {r["detector"] for r in records if r["skyline"]} == {"supervised-probe"}

    # quality floors on this very run (seed 0, 20 normal + 20 anomalous inputs a split), each
    # measured at tiny size: the supervised probe (the skyline) is least on digits-adversarial's
    # hard split (0.768); on every task's easy split some unsupervised detector reaches 0.97
    # or more (least: digits-adversarial); scrubbing averages 0.946 over the easy splits and
    # 0.744 over the hard ones.
    aurocs = {(r["task"], r["split"], r["detector"]): r["auroc"] for r in records}
    floor(
        "bench: supervised-probe's least AUROC",
        min(v for k, v in aurocs.items() if k[2] == "supervised-probe"),
        0.65,
    )
    best_easy = {
        task: max(v for k, v in aurocs.items() if k[:2] == (task, "easy") and k[2] != "supervised-probe")
        for task in cm.available_tasks()
    }
    floor("bench: least over tasks of the best easy-split AUROC", min(best_easy.values()), 0.85)
    for split, bound in (("easy", 0.85), ("hard", 0.62)):
        mean = np.mean([v for k, v in aurocs.items() if k[1:] == (split, "scrubbing")])
        floor(f"bench: scrubbing's mean {split} AUROC", mean, bound)
    params = {
        "scrubbing": {
            "resamples": 1,
            "das_rank": None,
            "input_cut_budget": 8,
            "counterfactual_resamples": 2,
            "dual_resamples": 2,
        },
        "isolation-forest": {"n_estimators": 50},
    }
    assert all(r.get("params") == params.get(r["detector"]) for r in records)

    # TPR thresholds come from held-out trusted scores, stored beside every cell's scores
    for r in records:
        with np.load(scores_path(out, cell_of(r))) as f:
            assert len(f["scores"]) == r["n_normal"] + r["n_anomalous"]
            assert tpr_at_fpr(f["scores"], f["labels"], f["heldout"], 0.01) == r["tpr_at_1pct_fpr"]
            if r["detector"] == "scrubbing":  # its score and variants, again from the stored arrays
                scores, heldout = rescore_scrubbing(f)
                np.testing.assert_array_equal(scores, f["scores"])
                np.testing.assert_array_equal(heldout, f["heldout"])
                exp = roc_auc_score(f["labels"], rescore_scrubbing(f, upper_tail="exponential")[0])
                assert exp == pytest.approx(r["auroc_variants"]["exponential tail"], abs=1e-12)

    # scripts/rescore_bench.py --write with today's defaults gives back every record
    import subprocess
    import sys
    from pathlib import Path

    script = Path(__file__).parents[1] / "scripts" / "rescore_bench.py"
    done = subprocess.run(
        [sys.executable, str(script), str(out), "--write", str(tmp_path / "rescored")],
        capture_output=True,
        text=True,
    )
    assert done.returncode == 0, done.stderr
    rescored = json.loads((tmp_path / "rescored" / "results.json").read_text())
    assert len(rescored) == len(records)
    for before, after in zip(records, rescored):
        assert {k: v for k, v in after.items() if k != "rescored"} == before
        assert ("rescored" in after) == (before["detector"] == "scrubbing")

    md = (out / "results.md").read_text()
    assert "supervised-probe (skyline)" in md and "scrubbing − best baseline" in md
    for task, split in {(r["task"], r["split"]) for r in records}:
        for kind in ("roc", "hist"):
            assert (out / f"{kind}_{task}_{split}.png").read_bytes()[:4] == b"\x89PNG"

    # a second run finds every cell finished: nothing recomputed, results and pictures untouched
    before = (out / "results.json").read_bytes()
    drawn = {p.name: p.stat().st_mtime_ns for p in out.glob("*.png")}
    assert main(["bench", "--size", "tiny", "--seeds", "0", "--out", str(out), "--quiet", *quick]) == 0
    assert f"0 cell(s) computed, {len(records)} finished cell(s) skipped" in capsys.readouterr().out
    assert (out / "results.json").read_bytes() == before
    assert {p.name: p.stat().st_mtime_ns for p in out.glob("*.png")} == drawn

    # an interrupted run (cells missing) recomputes only those cells
    resumed = ["addition-backdoor", "hierarchical-equality"]
    kept = [r for r in records if r["detector"] != "mahalanobis" or r["task"] not in resumed]
    (out / "results.json").write_text(json.dumps(kept))
    assert (
        main(
            [
                "bench",
                "--size",
                "tiny",
                "--seeds",
                "0",
                "--out",
                str(out),
                "--quiet",
                "--max-inputs",
                "20",
                "--tasks",
                *resumed,
                "--detectors",
                "mahalanobis",
                "lof",
            ]
        )
        == 0
    )
    rows = len(
        {(r["task"], r["split"]) for r in records if r["task"] in resumed}
    )  # a mahalanobis, a lof cell each
    assert f"{rows} cell(s) computed, {rows} finished cell(s) skipped" in capsys.readouterr().out
    again = json.loads((out / "results.json").read_text())
    assert len(again) == len(records)
    auroc = lambda rs: {(r["task"], r["split"]): r["auroc"] for r in rs if r["detector"] == "mahalanobis"}  # noqa: E731
    assert auroc(again) == auroc(records)

    # a run interrupted between a task's splits wrote only the first split's records; tasks.json
    # lists the task's splits, so the next run loads the task and computes the rest
    (out / "results.json").write_text(
        json.dumps([r for r in again if not (r["task"] == "addition-backdoor" and r["split"] == "hard")])
    )
    argv = ["bench", "--size", "tiny", "--seeds", "0", "--out", str(out), "--quiet", "--max-inputs", "20"]
    assert main([*argv, "--tasks", "addition-backdoor", "--detectors", "mahalanobis"]) == 0
    assert "1 cell(s) computed, 1 finished cell(s) skipped" in capsys.readouterr().out

    # cells finished with other parameters are not finished for these: they are recomputed
    assert (
        main(
            [
                "bench",
                "--size",
                "tiny",
                "--seeds",
                "0",
                "--out",
                str(out),
                "--quiet",
                "--max-inputs",
                "20",
                "--tasks",
                "measurement-tampering",
                "--detectors",
                "lof",
                "--param",
                "lof.n_neighbors=5",
            ]
        )
        == 0
    )
    assert "2 cell(s) computed, 0 finished cell(s) skipped" in capsys.readouterr().out
    lof = [
        r
        for r in json.loads((out / "results.json").read_text())
        if r["task"] == "measurement-tampering" and r["detector"] == "lof"
    ]
    assert len(lof) == 2 and all(r["params"] == {"n_neighbors": 5} for r in lof)


def test_unknown_names_fail_before_any_work(tmp_path, capsys):
    assert main(["bench", "--detectors", "mahalanobiss", "--out", str(tmp_path)]) == 2
    assert "Did you mean 'mahalanobis'" in capsys.readouterr().err
    assert main(["bench", "--tasks", "no-such-task", "--out", str(tmp_path)]) == 2
    assert main(["bench", "--device", "tpu", "--out", str(tmp_path)]) == 2
    assert "--device 'tpu': not a device name" in capsys.readouterr().err
    if not torch.cuda.is_available():
        assert main(["bench", "--device", "cuda", "--out", str(tmp_path)]) == 2
        assert "no CUDA device is available here" in capsys.readouterr().err
    capsys.readouterr()
    for param, says in (
        ("resamples=2", "name the detector too"),
        ("scrubbing.resampels=2", "takes no parameter"),
        ("scrubbing.random_state=3", "takes no parameter"),
        ("lof.n_neighbors=5", "does not include"),
    ):
        assert main(["bench", "--detectors", "scrubbing", "--param", param, "--out", str(tmp_path)]) == 2
        assert says in capsys.readouterr().err, param
    assert not (tmp_path / "results.json").exists()


def _record(detector, seed, auroc, skyline=False):
    return {
        "task": "t",
        "split": "hard",
        "detector": detector,
        "seed": seed,
        "size": "full",
        "auroc": auroc,
        "ap": auroc,
        "tpr_at_1pct_fpr": auroc,
        "tpr_at_5pct_fpr": auroc,
        "fit_seconds": 1.0,
        "score_seconds": 1.0,
        "n_trusted": 10,
        "n_normal": 5,
        "n_anomalous": 5,
        "skyline": skyline,
    }


def test_table_bolds_the_best_non_skyline_detector_and_reports_mean_and_std():
    records = [_record("scrubbing", s, a) for s, a in [(0, 0.9), (1, 0.8)]]
    records += [_record("mahalanobis", s, 0.6) for s in (0, 1)]
    records += [_record("supervised-probe", s, 1.0, skyline=True) for s in (0, 1)]
    md = results_markdown(records)
    row = next(line for line in md.splitlines() if line.startswith("| t | hard"))
    assert row.split(" | ")[2:5] == ["**0.850 ± 0.050**", "0.600 ± 0.000", "1.000 ± 0.000"]
    assert "mahalanobis (0.600) | +0.250 | 0 1 |" in row  # the seeds the row holds, last
    assert "### TPR at 1 % FPR, every detector" in md  # the same rows at the flag's threshold
    assert "**1.000" not in md  # the skyline is never bolded
    assert "by explanation family" not in md  # no family figures in these records


def test_family_table_reports_each_explanation_family_of_the_scrubbing_records():
    fam = {
        "auroc_declared_hypothesis": 0.5,
        "auroc_hypothesis_and_subsets": 0.95,
        "auroc_input_cut_only": 0.7,
        "auroc_hypothesis_free_only": None,
    }
    records = [_record("scrubbing", s, a) | fam for s, a in [(0, 0.9), (1, 0.8)]]
    records += [_record("mahalanobis", s, 0.6) for s in (0, 1)]
    md = results_markdown(records)
    assert "### Scrubbing AUROC by explanation family" in md
    row = next(line for line in md.splitlines() if line.startswith("| t | hard | 0.850"))
    assert row.split(" | ")[2:] == ["0.850 ± 0.050", "0.500 ± 0.000", "0.950 ± 0.000", "0.700 ± 0.000 |"]
    assert "hypothesis-free only" not in md  # no record has that family: no column
    records[0]["auroc_hypothesis_free_only"] = 0.6
    row = next(
        line for line in results_markdown(records).splitlines() if line.startswith("| t | hard | 0.850")
    )
    assert row.endswith("| 0.700 ± 0.000 | – |")  # one seed has the family, the row does not


def test_variants_table_reports_each_mechanism_switched_off_alone():
    records = [
        _record("scrubbing", 0, 0.9) | {"auroc_variants": {"all": 0.9, "no input cut": 0.6, "no dual": 0.8}},
        _record("scrubbing", 1, 0.8) | {"auroc_variants": {"all": 0.8, "no input cut": 0.7}},
    ]
    md = results_markdown(records)
    assert "### Scrubbing AUROC with each mechanism switched off alone" in md
    assert "| task | split | all | no input cut | no dual | seeds |" in md
    # the mean over seeds; a variant one seed lacks is no figure for the row
    assert "| t | hard | 0.850 | 0.650 | – | 0 1 |" in md
    assert "switched off alone" not in results_markdown([_record("scrubbing", 0, 0.9)])


def test_a_task_that_cannot_be_loaded_is_reported_and_the_others_run(planted, tmp_path, monkeypatch, capsys):
    """A task factory raising TaskError (an optional extra missing, say) fails its cells
    only: the other tasks run, and the command reports the failure and exits 1."""
    from conftest import planted_data

    import causalmad.bench

    model, h = planted
    x = planted_data(200, 0, 0, noise=0.3)
    split = cm.Split(
        "easy",
        torch.cat([planted_data(50, 0, 1, noise=0.3), planted_data(50, 1, 2, noise=0.3)]),
        np.r_[np.zeros(50), np.ones(50)],
    )
    planted_task = cm.Task("planted", model, x, {"easy": split}, h)

    def load_task(name, **kwargs):
        if name == "needs:extra":
            raise cm.TaskError("install the extra")
        return planted_task

    monkeypatch.setattr(causalmad.bench, "load_task", load_task)
    args = [
        "bench",
        "--tasks",
        "needs:extra",
        "planted:task",
        "--detectors",
        "output-disagreement",
        "--size",
        "tiny",
        "--seeds",
        "0",
        "--out",
        str(tmp_path),
        "--quiet",
    ]
    assert main(args) == 1
    out = capsys.readouterr().out
    assert "1 cell(s) computed" in out and "1 failed" in out
    assert "failed: (loading the task) on needs:extra (seed 0): install the extra" in out
    assert [(r["task"], r["device"]) for r in json.loads((tmp_path / "results.json").read_text())] == [
        ("planted", "cpu")
    ]


def test_merge_bench_refuses_a_cell_twice_unless_a_later_folder_replaces_it(tmp_path):
    import subprocess
    import sys
    from pathlib import Path

    script = Path(__file__).parents[1] / "scripts" / "merge_bench.py"
    first, rerun = tmp_path / "first", tmp_path / "rerun"
    for folder, records in (
        (first, [_record("scrubbing", 0, 0.6), _record("mahalanobis", 0, 0.7)]),
        (rerun, [_record("scrubbing", 0, 0.9)]),
    ):
        folder.mkdir()
        (folder / "results.json").write_text(json.dumps(records))
    out = tmp_path / "merged.json"
    run = lambda *args: subprocess.run(  # noqa: E731
        [sys.executable, str(script), *args, str(out), str(first), str(rerun)], capture_output=True, text=True
    )
    refused = run()
    assert refused.returncode == 2 and "is in both" in refused.stderr and not out.exists()
    assert run("--replace").returncode == 0
    merged = {r["detector"]: r["auroc"] for r in json.loads(out.read_text())}
    assert merged == {"scrubbing": 0.9, "mahalanobis": 0.7}  # the rerun's cell, the rest kept
    # --same-seeds: the tables compare on the seeds the named detector has; the file keeps all
    (first / "results.json").write_text(
        json.dumps(
            [_record("scrubbing", 0, 0.6), _record("mahalanobis", 0, 0.7), _record("mahalanobis", 1, 0.1)]
        )
    )
    same = run("--replace", "--same-seeds", "scrubbing")
    assert same.returncode == 0 and len(json.loads(out.read_text())) == 3
    assert "**0.900** | 0.700" in same.stdout and "0.400" not in same.stdout
