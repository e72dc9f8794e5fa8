"""Inputs files in, scores files out — the formats of the command line.

Inputs files:

* **JSON lines** (``.jsonl``, ``.json``): one input per line, either a JSON array (the
  input itself: token ids for a transformer, numbers for an MLP) or an object
  ``{"input": [...], "id": ...}`` where ``id`` (any JSON string or number) is copied to
  the scores file. No other fields are allowed (a misspelt field is an error, not
  silently ignored). Blank lines are skipped; errors name the line.
* **NumPy** (``.npy``, loaded with ``allow_pickle=False``): an array ``[n, ...]``.

Scores files (``.jsonl`` or ``.csv``): one row per input, in input order, with ``index``
(0-based input number), ``id``, ``score`` and ``flagged`` (score above the threshold at
the chosen false-positive rate). They are written to a temporary file and renamed into
place when complete, so a run that fails halfway leaves no file that looks finished.
"""

from __future__ import annotations

import csv
import io
import json
import math
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Any

import numpy as np
import torch

from causalmad.errors import InputError
from causalmad.persistence import open_atomic

ALLOWED_FIELDS = ("input", "id")


def _shape(value: Any) -> tuple[int, ...]:
    if isinstance(value, list):
        inner = {_shape(v) for v in value}
        if len(inner) > 1:
            raise ValueError("its rows have different lengths")
        return (len(value), *(inner.pop() if inner else ()))
    return ()


def _check_numbers(value: Any, integer: bool) -> None:
    if isinstance(value, list):
        for v in value:
            _check_numbers(v, integer)
        return
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise ValueError(f"it holds {json.dumps(value)}, not a number")
    if integer and not isinstance(value, int):
        raise ValueError(f"it holds {value}, but this model takes integers (token ids)")
    if isinstance(value, float) and not math.isfinite(value):
        raise ValueError(f"it holds {value}")


@dataclass
class InputsFile:
    """What :func:`read_inputs` read: the inputs, their ids, and each one's line."""

    inputs: torch.Tensor
    ids: list[Any]
    lines: list[int]

    def where(self, row: int, path: str | Path) -> str:
        return f"{path} line {self.lines[row]}" if self.lines[row] else f"{path} row {row}"


def read_inputs(path: str | Path, shape: Sequence[int], dtype: str) -> InputsFile:
    """Read an inputs file: ``inputs [n, *shape]``, ids and line numbers.

    Every line is checked (JSON, fields, shape, number type) before anything is returned,
    and errors say which line and what is wrong.
    """
    path = Path(path)
    torch_dtype = _dtype(dtype)
    integer = not torch_dtype.is_floating_point
    shape = tuple(shape)
    if not path.is_file():
        raise InputError(f"{path}: no such file.")
    if path.suffix == ".npy":
        try:
            arr = np.load(path, allow_pickle=False)
        except ValueError as exc:
            raise InputError(f"{path}: not a plain NumPy array file ({exc}).") from exc
        if tuple(arr.shape[1:]) != shape:
            raise InputError(f"{path}: inputs have shape {tuple(arr.shape[1:])} each; the detector takes {shape}.")
        if integer and not np.issubdtype(arr.dtype, np.integer):
            raise InputError(f"{path}: holds {arr.dtype} values; this model takes integers (token ids).")
        return InputsFile(torch.as_tensor(arr).to(torch_dtype), list(range(len(arr))), [0] * len(arr))
    if path.suffix not in (".jsonl", ".json"):
        raise InputError(f"{path}: unknown inputs format {path.suffix!r}; use .jsonl (JSON lines) or .npy.")
    rows: list[Any] = []
    ids: list[Any] = []
    lines: list[int] = []
    with open(path, encoding="utf-8") as f:
        for lineno, line in enumerate(f, 1):
            if not line.strip():
                continue
            value, ident = parse_line(line, f"{path} line {lineno}", shape, integer, len(rows))
            rows.append(value)
            ids.append(ident)
            lines.append(lineno)
    if not rows:
        raise InputError(f"{path}: no inputs in the file.")
    return InputsFile(torch.tensor(rows, dtype=torch_dtype), ids, lines)


def parse_line(line: str, where: str, shape: tuple[int, ...], integer: bool, default_id: Any) -> tuple[Any, Any]:
    """One JSON-lines input: ``(value as nested lists, id)``; errors start with ``where``."""
    try:
        obj = json.loads(line)
    except json.JSONDecodeError as exc:
        raise InputError(f"{where}: not valid JSON ({exc.msg} at column {exc.colno}).") from None
    if isinstance(obj, dict):
        unknown = sorted(set(obj) - set(ALLOWED_FIELDS))
        if unknown:
            raise InputError(f"{where}: unknown field(s) {unknown}; an object line has the fields "
                             f"{list(ALLOWED_FIELDS)} ('input' required).")
        if "input" not in obj:
            raise InputError(f"{where}: the object has no 'input' field.")
        value, ident = obj["input"], obj.get("id", default_id)
        if not isinstance(ident, (str, int, float)) or isinstance(ident, bool):
            raise InputError(f"{where}: 'id' must be a string or a number, got {json.dumps(ident)}.")
    elif isinstance(obj, list):
        value, ident = obj, default_id
    else:
        raise InputError(f"{where}: expected a JSON array or an object with an 'input' field, got "
                         f"{type(obj).__name__}.")
    try:
        got = _shape(value)
        if got != shape:
            raise ValueError(f"it has shape {got}; the detector takes inputs of shape {shape}")
        _check_numbers(value, integer)
    except ValueError as exc:
        raise InputError(f"{where}: bad input: {exc}.") from None
    return value, ident


def parse_input(text: str, shape: Sequence[int], dtype: str) -> InputsFile:
    """One input given as JSON text (``--input`` on the command line)."""
    torch_dtype = _dtype(dtype)
    value, ident = parse_line(text, "--input", tuple(shape), not torch_dtype.is_floating_point, 0)
    return InputsFile(torch.tensor([value], dtype=torch_dtype), [ident], [0])


def _dtype(dtype: str) -> torch.dtype:
    found = getattr(torch, dtype.removeprefix("torch."), None)
    if not isinstance(found, torch.dtype):
        raise InputError(f"unknown input dtype {dtype!r}")
    return found


@contextmanager
def atomic_write(path: str | Path) -> Iterator[IO[str]]:
    """Open ``path`` for writing text (UTF-8) through a temporary sibling renamed into
    place on success (:func:`causalmad.persistence.open_atomic`); on any error the
    temporary file is removed and ``path`` is untouched."""
    with open_atomic(path) as raw:
        f = io.TextIOWrapper(raw, encoding="utf-8", newline="")
        try:
            yield f
            f.flush()
        finally:
            f.detach()  # the binary file stays open for open_atomic to flush and rename


class ScoresWriter:
    """Rows ``index, id, score, flagged`` to an open file, as JSON lines or CSV."""

    def __init__(self, f: IO[str], fmt: str) -> None:
        if fmt not in ("jsonl", "csv"):
            raise InputError(f"unknown scores format {fmt!r}; use .jsonl or .csv.")
        self.f, self.fmt = f, fmt
        self.csv = csv.writer(f) if fmt == "csv" else None
        if self.csv:
            self.csv.writerow(["index", "id", "score", "flagged"])

    def write(self, index: int, ident: Any, score: float, flagged: bool) -> None:
        if self.csv:
            self.csv.writerow([index, ident, repr(float(score)), int(flagged)])
        else:
            value = float(score) if math.isfinite(score) else None  # no explanation could test the input
            self.f.write(json.dumps({"index": index, "id": ident, "score": value, "flagged": bool(flagged)}) + "\n")


def scores_format(path: str | Path) -> str:
    suffix = Path(path).suffix
    if suffix not in (".jsonl", ".csv"):
        raise InputError(f"scores file {path}: use a .jsonl or .csv name.")
    return suffix[1:]
