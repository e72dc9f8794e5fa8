"""Inputs files in, scores files out — the formats of the command line.

Inputs files:

* **JSON lines** (``.jsonl``, ``.json``): one input per line, either a JSON array (the
  input itself: token ids for a transformer, numbers for an MLP) or an object
  ``{"input": [...], "id": ...}`` where ``id`` (any JSON string or number) is copied to
  the scores file. No other fields are allowed (a misspelt field is an error, not
  silently ignored). Blank lines are skipped; errors name the line.
* **NumPy** (``.npy``, loaded with ``allow_pickle=False``): an array ``[n, ...]``.
* **PyTorch** (``.pt``, loaded with ``weights_only=True``, which rebuilds tensors and
  plain containers only): one tensor ``[n, ...]``.

``read_inputs`` reads a file whole; ``iter_inputs`` reads it in chunks of a
given number of inputs, in memory that does not grow with the file (JSON lines are read
line by line, ``.npy`` files memory-mapped; a ``.pt`` file is loaded whole), checking
every input as ``read_inputs`` does.

Integers must fit the model's integer type and numbers its float type (a float32 model
refuses 1e39 rather than reading infinity); NaN and infinities are refused. Errors name
the file and the line (JSON lines) or row (arrays).

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
import warnings
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
FORMATS = (".jsonl", ".json", ".npy", ".pt")
MAX_DEPTH = 32  # JSON nesting deeper than any input causalmad takes is refused, not recursed into


def _short(value: Any, limit: int = 40) -> str:
    """``value`` as JSON, cut to ``limit`` characters for a one-line message."""
    try:
        text = json.dumps(value)
    except ValueError:  # an integer too long to print
        text = "an integer of more than 4300 digits"
    return _cut(text, limit)


def _cut(text: str, limit: int) -> str:
    return text if len(text) <= limit else f"{text[: limit - 1]}… ({len(text)} characters)"


def _shape(value: Any, depth: int = 0) -> tuple[int, ...]:
    if isinstance(value, list):
        if depth >= MAX_DEPTH:
            raise ValueError(f"it is nested more than {MAX_DEPTH} lists deep")
        inner = {_shape(v, depth + 1) for v in value}
        if len(inner) > 1:
            raise ValueError("its rows have different lengths")
        return (len(value), *(inner.pop() if inner else ()))
    return ()


def _range_error(value: float, dtype: torch.dtype) -> str | None:
    """Why ``value`` cannot be held by ``dtype`` (out of range, not finite), or None."""
    name = str(dtype).removeprefix("torch.")
    if not dtype.is_floating_point:
        info = torch.iinfo(dtype)
        if not info.min <= value <= info.max:
            return f"it holds {_short(value)}, beyond {name}'s range [{info.min}, {info.max}]"
        return None
    if isinstance(value, float) and not math.isfinite(value):
        return f"it holds {value}"
    if abs(value) > torch.finfo(dtype).max:
        return f"it holds {_short(value)}, beyond {name}'s range (±{torch.finfo(dtype).max:.4g})"
    return None


def _check_numbers(value: Any, dtype: torch.dtype) -> None:
    if isinstance(value, list):
        for v in value:
            _check_numbers(v, dtype)
        return
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise ValueError(f"it holds {_short(value)}, not a number")
    if not dtype.is_floating_point and not isinstance(value, int):
        raise ValueError(f"it holds {value}, but this model takes integers (token ids)")
    problem = _range_error(value, dtype)
    if problem:
        raise ValueError(problem)


@dataclass
class InputsFile:
    """What ``read_inputs`` read (or one chunk of ``iter_inputs``): the inputs,
    their ids, each one's line (0 for array files), and the file's row number of the
    first (``offset``)."""

    inputs: torch.Tensor
    ids: list[Any]
    lines: list[int]
    offset: int = 0

    def where(self, row: int, path: str | Path) -> str:
        return f"{path} line {self.lines[row]}" if self.lines[row] else f"{path} row {self.offset + row}"


def read_inputs(path: str | Path, shape: Sequence[int] | None, dtype: str) -> InputsFile:
    """Read an inputs file: ``inputs [n, *shape]``, ids and line numbers.

    Every input is checked (encoding, JSON, fields, shape, number type and range) before
    anything is returned, and an error names the file, the line (JSON lines) or row
    (arrays) and what was expected.

    Args:
        path: a ``.jsonl``/``.json``, ``.npy`` or ``.pt`` file (see the module docstring).
        shape: each input's shape; ``None`` takes the first input's.
        dtype: the model's input dtype (``"int64"`` token ids, ``"float32"``, ...).

    Raises:
        InputError: the file is missing, unreadable or damaged, or an input is bad.
    """
    path, torch_dtype, want = _check_path(path, shape, dtype)
    try:
        if path.suffix == ".npy":
            return _read_npy(path, want, torch_dtype)
        if path.suffix == ".pt":
            return _read_pt(path, want, torch_dtype)
        return _read_jsonl(path, want, torch_dtype)
    except OSError as exc:  # no permission, a device error, ...
        raise InputError(f"{path}: cannot be read ({exc.strerror or exc}).") from None


def _check_path(
    path: str | Path, shape: Sequence[int] | None, dtype: str
) -> tuple[Path, torch.dtype, tuple[int, ...] | None]:
    path = Path(path)
    torch_dtype = _dtype(dtype)
    if not path.exists():
        raise InputError(f"{path}: no such file.")
    if path.is_dir():
        raise InputError(f"{path}: a folder, not an inputs file.")
    if path.suffix not in FORMATS:
        raise InputError(
            f"{path}: unknown inputs format {path.suffix!r}; use .jsonl (JSON lines), .npy or .pt."
        )
    return path, torch_dtype, None if shape is None else tuple(shape)


def iter_inputs(
    path: str | Path, shape: Sequence[int] | None, dtype: str, chunk: int
) -> Iterator[InputsFile]:
    """Read an inputs file in chunks of ``chunk`` inputs (the last may be shorter), each
    an ``InputsFile`` whose ``offset`` is its first input's row in the file.

    Memory holds one chunk, whatever the file's length: JSON lines are read line by line,
    ``.npy`` files memory-mapped (a ``.pt`` file is loaded whole). Each input is checked
    as ``read_inputs`` checks it, as its chunk is read: a bad input raises when its
    chunk comes, after the chunks before it were yielded. Reading the file once through
    (as ``causalmad score`` does before loading the model) finds every bad input first.
    The inputs are equal, bit for bit, to ``read_inputs``'s rows.

    Args:
        path: a ``.jsonl``/``.json``, ``.npy`` or ``.pt`` file.
        shape: each input's shape; ``None`` takes the first input's.
        dtype: the model's input dtype.
        chunk: inputs per chunk, at least 1.

    Raises:
        InputError: as ``read_inputs``.

    Example:
        >>> import tempfile
        >>> with tempfile.NamedTemporaryFile("w", suffix=".jsonl", delete=False) as f:
        ...     for row in ([1, 2], [3, 4], [5, 6]):
        ...         print(row, file=f)
        >>> [(part.offset, part.inputs.tolist()) for part in iter_inputs(f.name, [2], "int64", chunk=2)]
        [(0, [[1, 2], [3, 4]]), (2, [[5, 6]])]
    """
    if chunk < 1:
        raise InputError(f"chunk {chunk}: read at least 1 input per chunk.")
    path, torch_dtype, want = _check_path(path, shape, dtype)
    try:
        if path.suffix == ".npy":
            yield from _iter_npy(path, want, torch_dtype, chunk)
        elif path.suffix == ".pt":
            whole = _read_pt(path, want, torch_dtype)
            for a in range(0, len(whole.inputs), chunk):
                yield InputsFile(
                    whole.inputs[a : a + chunk], whole.ids[a : a + chunk], whole.lines[a : a + chunk], a
                )
        else:
            yield from _iter_jsonl(path, want, torch_dtype, chunk)
    except OSError as exc:
        raise InputError(f"{path}: cannot be read ({exc.strerror or exc}).") from None


def count_inputs(path: str | Path, shape: Sequence[int] | None, dtype: str, chunk: int = 4096) -> int:
    """The number of inputs in an inputs file, every one checked as ``read_inputs``
    checks it, in the memory of one chunk.

    Raises:
        InputError: as ``read_inputs``, for the first bad input.
    """
    return sum(len(part.inputs) for part in iter_inputs(path, shape, dtype, chunk))


def _jsonl_rows(
    path: Path, shape: tuple[int, ...] | None, dtype: torch.dtype
) -> Iterator[tuple[Any, Any, int]]:
    """``(value, id, line)`` of each input of a JSON-lines file, checked, in order."""
    count = 0
    with open(path, "rb") as f:
        for lineno, raw in enumerate(f, 1):
            where = f"{path} line {lineno}"
            try:
                line = raw.decode("utf-8")
            except UnicodeDecodeError as exc:
                raise InputError(
                    f"{where}: not UTF-8 text (byte 0x{raw[exc.start]:02x} at column {exc.start + 1}); "
                    "an inputs file is JSON lines in UTF-8, .npy or .pt."
                ) from None
            if lineno == 1:
                line = line.removeprefix("\ufeff")  # the byte-order mark some editors write
            if not line.strip():
                continue
            value, ident = parse_line(line, where, shape, dtype, count)
            if shape is None:
                shape = _shape(value)
            count += 1
            yield value, ident, lineno
    if not count:
        raise InputError(f"{path}: no inputs in the file.")


def _read_jsonl(path: Path, shape: tuple[int, ...] | None, dtype: torch.dtype) -> InputsFile:
    rows: list[Any] = []
    ids: list[Any] = []
    lines: list[int] = []
    for value, ident, lineno in _jsonl_rows(path, shape, dtype):
        rows.append(value)
        ids.append(ident)
        lines.append(lineno)
    return InputsFile(torch.tensor(rows, dtype=dtype), ids, lines)


def _iter_jsonl(
    path: Path, shape: tuple[int, ...] | None, dtype: torch.dtype, chunk: int
) -> Iterator[InputsFile]:
    rows: list[Any] = []
    ids: list[Any] = []
    lines: list[int] = []
    offset = 0
    for value, ident, lineno in _jsonl_rows(path, shape, dtype):
        rows.append(value)
        ids.append(ident)
        lines.append(lineno)
        if len(rows) == chunk:
            yield InputsFile(torch.tensor(rows, dtype=dtype), ids, lines, offset)
            offset += len(rows)
            rows, ids, lines = [], [], []
    if rows:
        yield InputsFile(torch.tensor(rows, dtype=dtype), ids, lines, offset)


def _iter_npy(
    path: Path, shape: tuple[int, ...] | None, dtype: torch.dtype, chunk: int
) -> Iterator[InputsFile]:
    """Chunks of a ``.npy`` file, memory-mapped; a file that cannot be mapped (damaged,
    an archive, a kind of array that cannot be mapped) is read whole, which gives the
    same inputs or the same error as ``read_inputs``."""
    try:
        arr = np.load(path, mmap_mode="r", allow_pickle=False)
        mapped = isinstance(arr, np.ndarray)
    except Exception:  # damaged, or unmappable: the whole read says which
        mapped = False
    if not mapped:
        whole = _read_npy(path, shape, dtype)
        for a in range(0, len(whole.inputs), chunk):
            yield InputsFile(
                whole.inputs[a : a + chunk], whole.ids[a : a + chunk], whole.lines[a : a + chunk], a
            )
        return
    if arr.ndim == 0 or len(arr) == 0:
        yield _from_array(path, arr, str(arr.dtype), shape, dtype)  # refused, as read whole
        return
    for a in range(0, len(arr), chunk):
        yield _from_array(path, arr[a : a + chunk], str(arr.dtype), shape, dtype, a)


def _read_npy(path: Path, shape: tuple[int, ...] | None, dtype: torch.dtype) -> InputsFile:
    try:
        arr = np.load(path, allow_pickle=False)
    except (
        Exception
    ) as exc:  # numpy raises many types for a damaged file (ValueError, EOFError, TokenError, ...)
        raise InputError(f"{path}: not a NumPy array file, or a damaged one ({_first_line(exc)}).") from None
    if not isinstance(arr, np.ndarray):  # np.load opens a .npz archive however the file is named
        arr.close()
        raise InputError(f"{path}: a NumPy archive of arrays (.npz); save one array [n, ...] with np.save.")
    return _from_array(path, arr, str(arr.dtype), shape, dtype)


def _read_pt(path: Path, shape: tuple[int, ...] | None, dtype: torch.dtype) -> InputsFile:
    try:
        # weights_only: tensors and plain containers only; a file cannot run code when loaded
        with warnings.catch_warnings():  # torch warns of a pickle protocol before failing on a damaged file
            warnings.simplefilter("ignore")
            obj = torch.load(path, map_location="cpu", weights_only=True)
    except (
        Exception
    ) as exc:  # torch raises many types for a damaged file (UnpicklingError, RuntimeError, ...)
        raise InputError(
            f"{path}: not a PyTorch tensor file, or a damaged one ({_first_line(exc)})."
        ) from None
    if not isinstance(obj, torch.Tensor):
        raise InputError(
            f"{path}: holds a {type(obj).__name__}, not one tensor [n, ...]; save one with "
            "torch.save(tensor, path)."
        )
    name = str(obj.dtype).removeprefix("torch.")
    if obj.is_complex() or obj.dtype == torch.bool or obj.dtype in (torch.uint16, torch.uint32, torch.uint64):
        arr = np.empty(
            obj.shape, dtype=bool if obj.dtype == torch.bool else np.complex64
        )  # refused for its kind
    else:
        arr = obj.detach().to(torch.float64 if obj.is_floating_point() else torch.int64).numpy()
    return _from_array(path, arr, name, shape, dtype)


def _from_array(
    path: Path,
    arr: np.ndarray,
    stored: str,
    shape: tuple[int, ...] | None,
    dtype: torch.dtype,
    offset: int = 0,
) -> InputsFile:
    """Inputs from an array file (or rows ``offset`` on of one), checked like a JSON
    lines file (rows named by number)."""
    integer = not dtype.is_floating_point
    if arr.ndim == 0:
        raise InputError(f"{path}: holds a single value, not an array [n, ...] of inputs.")
    if arr.dtype.kind not in ("iu" if integer else "iuf"):
        expected = "integers (token ids)" if integer else "real numbers"
        raise InputError(f"{path}: holds {stored} values; this model takes {expected}.")
    if shape is not None and tuple(arr.shape[1:]) != shape:
        raise InputError(
            f"{path}: inputs have shape {tuple(arr.shape[1:])} each; the detector takes {shape}."
        )
    if len(arr) == 0:
        raise InputError(f"{path}: no inputs in the file.")
    flat = arr.reshape(len(arr), -1)
    if integer:
        info = torch.iinfo(dtype)
        bad = ((flat < info.min) | (flat > info.max)).any(1)
    else:
        big = np.abs(flat.astype(np.float64))
        bad = (~np.isfinite(big) | (big > torch.finfo(dtype).max)).any(1)
    if bad.any():
        row = int(np.flatnonzero(bad)[0])
        value = next(v for v in flat[row].tolist() if _range_error(v, dtype))
        raise InputError(f"{path} row {offset + row}: {_range_error(value, dtype)}.")
    host = np.ascontiguousarray(arr, dtype=np.int64 if integer else np.float64)
    if not host.flags.writeable:  # a view of a memory-mapped file: the chunk gets memory of its own
        host = host.copy()
    return InputsFile(
        torch.from_numpy(host).to(dtype), list(range(offset, offset + len(arr))), [0] * len(arr), offset
    )


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()
    return (text[0] if text else type(exc).__name__)[:160]


def parse_line(
    line: str, where: str, shape: tuple[int, ...] | None, dtype: torch.dtype, default_id: Any
) -> tuple[Any, Any]:
    """One JSON-lines input: ``(value as nested lists, id)``; errors start with ``where``.
    ``shape`` ``None`` accepts any shape with rows of equal lengths."""
    try:
        obj = json.loads(line)
    except json.JSONDecodeError as exc:
        raise InputError(f"{where}: not valid JSON ({exc.msg} at column {exc.colno}).") from None
    except RecursionError:
        raise InputError(
            f"{where}: nested too deeply to read (an input is at most {MAX_DEPTH} lists deep)."
        ) from None
    except ValueError as exc:  # an integer of more than 4300 digits
        raise InputError(f"{where}: not valid JSON ({_first_line(exc)}).") from None
    if isinstance(obj, dict):
        unknown = sorted(set(obj) - set(ALLOWED_FIELDS))
        if unknown:
            raise InputError(
                f"{where}: unknown field(s) {_cut(repr(unknown), 60)}; an object line has the fields "
                f"{list(ALLOWED_FIELDS)} ('input' required)."
            )
        if "input" not in obj:
            raise InputError(f"{where}: the object has no 'input' field.")
        value, ident = obj["input"], obj.get("id", default_id)
        _check_id(ident, where)
    elif isinstance(obj, list):
        value, ident = obj, default_id
    else:
        raise InputError(
            f"{where}: expected a JSON array or an object with an 'input' field, got {type(obj).__name__}."
        )
    try:
        got = _shape(value)
        if shape is not None and got != shape:
            raise ValueError(f"it has shape {got}; the detector takes inputs of shape {shape}")
        _check_numbers(value, dtype)
    except ValueError as exc:
        raise InputError(f"{where}: bad input: {exc}.") from None
    return value, ident


def _check_id(ident: Any, where: str) -> None:
    """An id goes into a JSON or CSV scores file: a string of text or a finite number."""
    if not isinstance(ident, (str, int, float)) or isinstance(ident, bool):
        raise InputError(f"{where}: 'id' must be a string or a number, got {_short(ident)}.")
    if isinstance(ident, float) and not math.isfinite(ident):
        raise InputError(f"{where}: 'id' is {ident}; an id must be a string or a finite number.")
    if isinstance(ident, str):
        try:
            ident.encode("utf-8")
        except UnicodeEncodeError:
            raise InputError(
                f"{where}: 'id' holds a lone surrogate escape ({_short(ident)}), which is not "
                "text; give ids as plain strings."
            ) from None


def parse_input(text: str, shape: Sequence[int], dtype: str) -> InputsFile:
    """One input given as JSON text (``--input`` on the command line)."""
    torch_dtype = _dtype(dtype)
    value, ident = parse_line(text, "--input", tuple(shape), torch_dtype, 0)
    return InputsFile(torch.tensor([value], dtype=torch_dtype), [ident], [0])


def check_rows(detector: Any, data: InputsFile, path: str | Path) -> None:
    """Check ``data``'s inputs against ``detector``'s model (shape, token range) before
    scoring; an error names the first bad input's line (or row) in ``path``.

    Raises:
        InputError: an input does not fit the model.
    """
    try:
        detector._check(data.inputs)
    except InputError:
        for row in range(len(data.inputs)):
            try:
                detector._check(data.inputs[row : row + 1])
            except InputError as exc:
                raise InputError(f"{data.where(row, path)}: {exc}") from None
        raise


def _dtype(dtype: str) -> torch.dtype:
    found = getattr(torch, str(dtype).removeprefix("torch."), None)
    if not isinstance(found, torch.dtype):
        raise InputError(f"unknown input dtype {dtype!r}")
    return found


@contextmanager
def atomic_write(path: str | Path) -> Iterator[IO[str]]:
    """Open ``path`` for writing text (UTF-8) through a temporary sibling renamed into
    place on success (``causalmad.persistence.open_atomic``); on any error the
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
            self.f.write(
                json.dumps({"index": index, "id": ident, "score": value, "flagged": bool(flagged)}) + "\n"
            )


def scores_format(path: str | Path) -> str:
    suffix = Path(path).suffix
    if suffix not in (".jsonl", ".csv"):
        raise InputError(f"scores file {path}: use a .jsonl or .csv name.")
    return suffix[1:]
