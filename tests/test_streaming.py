"""Streaming: inputs files read in chunks (the same rows as a whole read, bit for bit),
``causalmad score`` writing each chunk's scores as it goes, in one chunk's memory, with
the same scores as scoring the whole file at once."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import PlantedSum, planted_data

import causalmad as cm
import causalmad.inputs as inputs_module
from causalmad.cli import main
from causalmad.inputs import count_inputs, iter_inputs, read_inputs

CONFTEST = Path(__file__).with_name("conftest.py")
MODEL = ["--model", f"{CONFTEST}:PlantedSum"]


def rows(n: int) -> list[list[float]]:
    return torch.cat([planted_data(n - n // 4, 0, 3, 0.05), planted_data(n // 4, 1, 4, 0.05)]).tolist()


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    root = tmp_path_factory.mktemp("streaming")
    x = rows(230)
    (root / "inputs.jsonl").write_text(
        "\n".join(json.dumps({"input": r, "id": f"u{i}"}) for i, r in enumerate(x))
    )
    np.save(root / "inputs.npy", np.array(x, dtype=np.float32))
    torch.save(torch.tensor(x), root / "inputs.pt")
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
    return root


@pytest.mark.parametrize("name", ["inputs.jsonl", "inputs.npy", "inputs.pt"])
@pytest.mark.parametrize("chunk", [1, 64, 4096])
def test_chunks_hold_the_rows_ids_and_lines_of_a_whole_read(files, name, chunk):
    whole = read_inputs(files / name, [3], "float32")
    parts = list(iter_inputs(files / name, [3], "float32", chunk))
    assert [p.offset for p in parts] == list(range(0, 230, chunk))
    assert all(len(p.inputs) == min(chunk, 230 - p.offset) for p in parts)
    got = torch.cat([p.inputs for p in parts])
    assert got.dtype == whole.inputs.dtype and torch.equal(got, whole.inputs)
    assert [i for p in parts for i in p.ids] == whole.ids and [
        n for p in parts for n in p.lines
    ] == whole.lines
    assert count_inputs(files / name, [3], "float32", chunk) == 230


def test_a_json_lines_file_is_read_as_it_goes_and_a_bad_row_is_named_by_its_place(tmp_path):
    path = tmp_path / "late.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in rows(100)) + "[1, 2]\n")
    parts = iter_inputs(path, [3], "float32", 10)
    assert len(next(parts).inputs) == 10  # the first chunk comes before the bad line 101 is read
    with pytest.raises(cm.InputError, match=r"late.jsonl line 101: bad input: it has shape \(2,\)"):
        list(parts)
    array = np.array(rows(100), dtype=np.float32)
    array[57, 1] = np.inf
    np.save(tmp_path / "late.npy", array)
    with pytest.raises(cm.InputError, match=r"late.npy row 57: it holds inf"):
        count_inputs(tmp_path / "late.npy", [3], "float32", 10)


@pytest.mark.parametrize("name", ["inputs.jsonl", "inputs.npy"])
def test_score_streams_the_file_and_gives_the_whole_files_scores_bitwise(files, tmp_path, monkeypatch, name):
    def whole_read(*args, **kwargs):
        raise AssertionError("causalmad score read the inputs file whole")

    det = cm.load_detector(files / "det", PlantedSum())
    expected = det.score(read_inputs(files / name, [3], "float32").inputs)
    monkeypatch.setattr(inputs_module, "read_inputs", whole_read)
    out = tmp_path / "scores.jsonl"
    assert (
        main(
            [
                "score",
                str(files / "det"),
                str(files / name),
                *MODEL,
                "--chunk",
                "64",
                "--out",
                str(out),
                "--quiet",
            ]
        )
        == 0
    )
    got = [json.loads(line) for line in out.read_text().splitlines()]
    assert [r["index"] for r in got] == list(range(230))
    assert np.array_equal([r["score"] for r in got], expected)  # bitwise
    assert [r["flagged"] for r in got] == (expected > det.threshold(0.01)).tolist()


def test_a_bad_row_in_a_late_chunk_stops_the_run_before_the_model_scores_anything(
    files, tmp_path, monkeypatch, capsys
):
    path = tmp_path / "late.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in rows(200)) + '{"input": [1, 2, 3], "extra": 1}\n')
    calls = []
    monkeypatch.setattr(cm.MahalanobisDetector, "score", lambda self, x: calls.append(len(x)))
    out = tmp_path / "out" / "scores.jsonl"
    assert main(["score", str(files / "det"), str(path), *MODEL, "--chunk", "16", "--out", str(out)]) == 2
    err = capsys.readouterr().err
    assert "late.jsonl line 201: unknown field(s) ['extra']" in err and len(err.splitlines()) == 1
    assert not calls and not (tmp_path / "out").exists()


def test_score_says_how_many_inputs_and_after_the_first_chunk_how_long_the_rest_takes(
    files, tmp_path, capsys
):
    out = tmp_path / "scores.jsonl"
    assert (
        main(
            [
                "score",
                str(files / "det"),
                str(files / "inputs.jsonl"),
                *MODEL,
                "--chunk",
                "100",
                "--out",
                str(out),
            ]
        )
        == 0
    )
    err = capsys.readouterr().err
    assert "scoring 230 inputs in chunks of 100" in err
    assert "first 100 inputs in " in err and "more for the other 130" in err
    assert "\r" not in err
