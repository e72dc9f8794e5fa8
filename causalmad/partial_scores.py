"""Partial scores: what a ``causalmad score`` run has scored so far, kept so that a run
that was killed can be continued (``--resume``) instead of started over.

A run writes its scores file through a temporary file renamed into place at the end
(``causalmad.persistence.open_atomic``), so a killed run leaves no scores file. Beside
it, in ``.SCORES.causalmad-partial``, it keeps each chunk's scores as the chunk completes,
flushed to the disk before the next chunk starts. The file is JSON lines: a header that
says what was being scored (the detector folder's checksums, the inputs file's size and
SHA-256, the chunk size and the number of inputs), then one line per chunk with its first
row and its scores, each written exactly (``float.hex``) with its dtype. A resumed run
checks the header against what it is given, takes the stored chunks instead of scoring
them again and scores the rest; scores do not depend on how the work is cut, so the
scores file is bit for bit the one an uninterrupted run writes. A line cut short by the
kill is dropped (its chunk is scored again). The file goes once the scores file is in
place.
"""

from __future__ import annotations

import json
import os
import warnings
from collections.abc import Iterator
from pathlib import Path
from typing import IO, Any

import numpy as np

from causalmad.errors import CausalMADWarning, InputError, WriteError
from causalmad.persistence import CHECKSUMS, CONFIG, STATE, sha256_file

KIND = "causalmad partial scores"
VERSION = 1


def partial_path(out: str | Path) -> Path:
    """``.NAME.causalmad-partial`` beside the scores file ``out``."""
    out = Path(out)
    return out.with_name(f".{out.name}.causalmad-partial")


def run_header(
    detector_dir: str | Path, inputs: str | Path, chunk: int, rows: int, trust_modified: bool = False
) -> dict[str, Any]:
    """What a score run scores, as the partial file's header records it: the detector
    folder's ``SHA256SUMS`` (and, with ``trust_modified``, where those need not hold, the
    hashes of its files themselves), the inputs file's size and SHA-256, the chunk size
    and the number of inputs."""
    folder, path = Path(detector_dir), Path(inputs)
    names = [CHECKSUMS] + ([CONFIG, STATE] if trust_modified or not (folder / CHECKSUMS).is_file() else [])
    detector = {n: sha256_file(folder / n) if (folder / n).is_file() else None for n in names}
    return {
        "kind": KIND,
        "version": VERSION,
        "detector": detector,
        "inputs": {"size": path.stat().st_size, "sha256": sha256_file(path)},
        "chunk": chunk,
        "rows": rows,
    }


_WHAT = {
    "detector": "the detector folder",
    "inputs": "the inputs file",
    "chunk": "--chunk",
    "rows": "the inputs file",
}


class PartialScores:
    """The partial file of one score run (see the module docstring).

    Args:
        out: the scores file.
        header: ``run_header`` of this run.
    """

    def __init__(self, out: str | Path, header: dict[str, Any]) -> None:
        self.path = partial_path(out)
        self.header = header
        self.rows_stored = 0  # rows of the chunks kept before this run (resume)
        self.rows_durable = 0  # rows on the disk now
        self._end = 0  # byte length of the complete lines
        self._file: IO[bytes] | None = None
        self._resumed = False

    def exists(self) -> bool:
        return self.path.is_file()

    def resume(self) -> int:
        """Check the partial file's header against this run's and take its complete
        chunks; returns the number of inputs they hold (0 with no partial file).

        Raises:
            InputError: the partial file is of another run (another detector folder,
                inputs file or ``--chunk``) or not a partial scores file.
        """
        if not self.exists():
            return 0
        with open(self.path, "rb") as f:
            first = f.readline()
            try:
                header = json.loads(first) if first.endswith(b"\n") else None
            except ValueError:
                header = None
            if not isinstance(header, dict) or header.get("kind") != KIND or header.get("version") != VERSION:
                raise InputError(
                    f"{self.path}: not a causalmad partial scores file (or a damaged one); cannot "
                    "resume from it: run again without --resume to start over."
                )
            for key in ("detector", "inputs", "chunk", "rows"):
                if header.get(key) != self.header[key]:
                    was = f" (it was {header.get(key)})" if key == "chunk" else ""
                    raise InputError(
                        f"{self.path}: the partial scores are of another run: {_WHAT[key]} is not the "
                        f"same{was}; resume with the same detector folder, inputs file and --chunk, "
                        "or run again without --resume to start over."
                    )
            self._end = len(first)
            for _ in self._lines(f):
                self._end = f.tell()
        self._resumed = True
        self.rows_durable = self.rows_stored
        return self.rows_stored

    def _lines(self, f: IO[bytes]) -> Iterator[np.ndarray]:
        """The complete, well-formed chunk lines after the header, in order; stops at
        the first that is not (a line cut short by a kill). Counts ``rows_stored``."""
        self.rows_stored = 0
        chunk, rows = self.header["chunk"], self.header["rows"]
        for raw in f:
            try:
                line: Any = json.loads(raw) if raw.endswith(b"\n") else None  # None: cut short, refused below
                dtype = np.dtype(line["dtype"])
                if dtype.kind != "f":
                    return
                scores = np.array([float.fromhex(s) for s in line["scores"]], dtype=dtype)
                offset = line["offset"]
            except (ValueError, TypeError, KeyError, OverflowError):
                return
            if offset != self.rows_stored or len(scores) != min(chunk, rows - self.rows_stored):
                return
            self.rows_stored += len(scores)
            yield scores

    def stored(self) -> Iterator[np.ndarray]:
        """The scores of each chunk kept before this run, in order (none unless
        ``resume`` found some)."""
        if not self._resumed or not self.rows_stored:
            return
        with open(self.path, "rb") as f:
            f.readline()
            kept = self.rows_stored
            for scores in self._lines(f):
                yield scores
                if self.rows_stored >= kept:
                    return

    def append(self, offset: int, scores: np.ndarray) -> None:
        """Keep one chunk's scores, on the disk before this returns.

        Raises:
            WriteError: the partial file cannot be written (a full disk, no permission).
        """
        line = {"offset": offset, "dtype": scores.dtype.str, "scores": [float(s).hex() for s in scores]}
        try:
            f = self._file or self._open()
            f.write(json.dumps(line).encode() + b"\n")
            f.flush()
            os.fsync(f.fileno())
        except OSError as exc:
            if isinstance(exc, WriteError):
                raise
            raise WriteError(
                f"{self.path}: cannot write ({exc.strerror or exc}); the scores file was not written."
            ) from exc
        self.rows_durable = offset + len(scores)

    def _open(self) -> IO[bytes]:
        if self._resumed:
            f: IO[bytes] = open(self.path, "r+b")
            self._file = f
            f.truncate(self._end)  # drop a line cut short by the kill
            f.seek(self._end)
            return f
        f = open(self.path, "wb")  # replaces a partial file of an earlier run
        self._file = f
        f.write(json.dumps(self.header).encode() + b"\n")
        f.flush()
        os.fsync(f.fileno())
        fd = os.open(self.path.parent, os.O_RDONLY)  # the new file's name, on the disk too
        try:
            os.fsync(fd)
        finally:
            os.close(fd)
        return f

    def close(self) -> None:
        if self._file is not None:
            self._file.close()
            self._file = None

    def remove(self) -> None:
        """The scores file is in place: the partial file is no longer needed."""
        self.close()
        self.path.unlink(missing_ok=True)

    def abandon(self, exc: BaseException) -> None:
        """The run stopped on ``exc``. A bad input (which resuming would not get past)
        or nothing yet kept: the partial file this run made goes. Else it stays, and a
        warning says how to continue."""
        self.close()
        if not self._resumed and (isinstance(exc, InputError) or not self.rows_durable):
            self.path.unlink(missing_ok=True)
        elif self.rows_durable and self.exists():
            warnings.warn(
                f"the scores of {self.rows_durable} of {self.header['rows']} inputs are kept in "
                f"{self.path}: run the same command with --resume to continue.",
                CausalMADWarning,
                stacklevel=2,
            )
