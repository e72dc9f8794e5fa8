"""Scores do not depend on how the work is cut: ``causalmad score`` with any ``--chunk`` and
any input order gives each input the same score, bitwise (LOF, whose neighbour search is
scikit-learn's, to a relative 1e-9)."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import planted_data

from causalmad.cli import main

CONFTEST = Path(__file__).with_name("conftest.py")
MODEL = ["--model", f"{CONFTEST}:PlantedSum"]
HYPOTHESIS = ["--hypothesis", f"{CONFTEST}:sum_hypothesis"]


def write_jsonl(path: Path, rows, ids) -> Path:
    path.write_text("".join(json.dumps({"input": r, "id": i}) + "\n" for r, i in zip(rows, ids)))
    return path


@pytest.fixture(scope="module")
def inputs(tmp_path_factory):
    root = tmp_path_factory.mktemp("invariance")
    trusted = planted_data(300, 0, 0, 0.05)
    (root / "trusted.jsonl").write_text("".join(json.dumps(r) + "\n" for r in trusted.tolist()))
    x = torch.cat([planted_data(30, 0, 3, 0.05), planted_data(30, 1, 4, 0.05)]).tolist()
    ids = [f"u{i}" for i in range(len(x))]
    order = np.random.default_rng(0).permutation(len(x))
    write_jsonl(root / "inputs.jsonl", x, ids)
    write_jsonl(root / "shuffled.jsonl", [x[i] for i in order], [ids[i] for i in order])
    return root


def scores_by_id(path: Path) -> dict[str, float]:
    return {r["id"]: r["score"] for r in map(json.loads, path.read_text().splitlines())}


@pytest.mark.parametrize(
    "detector, exact",
    [("scrubbing", True), ("mahalanobis", True), ("que", True), ("isolation-forest", True), ("lof", False)],
)
def test_scores_are_the_same_whatever_the_chunk_and_the_order(inputs, tmp_path, detector, exact):
    fit = [
        "fit",
        *MODEL,
        "--trusted",
        str(inputs / "trusted.jsonl"),
        "--detector",
        detector,
        "--out",
        str(tmp_path / "det"),
        "--quiet",
    ]
    if detector == "scrubbing":
        fit += [*HYPOTHESIS, "--param", "resamples=2"]
    if detector == "que":
        fit += ["--untrusted", str(inputs / "inputs.jsonl")]
    if detector == "isolation-forest":
        fit += ["--param", "n_estimators=20"]
    assert main(fit) == 0
    model = MODEL + (HYPOTHESIS if detector == "scrubbing" else [])
    runs = {}
    for name, chunk in (
        ("inputs", "4096"),
        ("inputs", "1"),
        ("inputs", "7"),
        ("shuffled", "4096"),
        ("shuffled", "7"),
    ):
        out = tmp_path / f"{name}-{chunk}.jsonl"
        assert (
            main(
                [
                    "score",
                    str(tmp_path / "det"),
                    str(inputs / f"{name}.jsonl"),
                    *model,
                    "--chunk",
                    chunk,
                    "--out",
                    str(out),
                    "--quiet",
                ]
            )
            == 0
        )
        runs[f"{name} --chunk {chunk}"] = scores_by_id(out)
    reference = runs.pop("inputs --chunk 4096")
    ids = sorted(reference)
    for how, got in runs.items():
        assert sorted(got) == ids, how
        a, b = np.array([reference[i] for i in ids]), np.array([got[i] for i in ids])
        if exact:
            np.testing.assert_array_equal(b, a, err_msg=how)
        else:
            np.testing.assert_allclose(b, a, rtol=1e-9, err_msg=how)
