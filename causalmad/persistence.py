"""Saving and loading fitted detectors: JSON for structure, safetensors for numbers.

A detector folder holds three files:

* ``state.safetensors`` — every array and tensor the detector learned (alignment
  rotations, calibration statistics, trusted source activations, ...);
* ``config.json`` — the format version, the causalmad version, the detector's name and
  constructor arguments, its fitted state with each array replaced by a reference into
  ``state.safetensors``, and a fingerprint of the model and of the hypothesis;
* ``SHA256SUMS`` — the SHA-256 of each of the other two, in the format of
  ``sha256sum -c``. Loading refuses a folder whose files do not match it, or that holds
  a file it does not cover, unless the caller passes ``trust_modified=True``.

Nothing is pickled and loading executes no code from the folder: the JSON decoder
rebuilds only plain values and a fixed list of causalmad records (``_records``). The
model and the hypothesis are code, so the caller passes them again; their fingerprints
must match the stored ones.

Writing never destroys what it was not given. Saving writes into a hidden sibling folder
``.NAME.causalmad-tmp-PID`` and renames it into place only once ``SHA256SUMS`` (written
last) is complete; ``overwrite=True`` replaces only a folder that is a causalmad detector
folder (its ``config.json`` says so and it holds no file causalmad does not write), and
moves it aside (``.NAME.causalmad-old-PID``) until the new one is in place. Leftovers of a
writer that was killed carry its process id; ``remove_stale`` removes those whose
process is gone (and puts back an old folder whose replacement never arrived).

One writer at a time: a save holds a file lock (``filelock``) on ``.NAME.causalmad-lock``
beside the folder from its first check to its last rename, so a second save of the same
folder waits for the first (up to ``LOCK_TIMEOUT`` seconds, then a
[`PersistenceError`][causalmad.errors.PersistenceError]) and then sees its folder, instead of both
writing and the last one winning unseen. A save that cannot write (a full disk, no
permission) raises [`WriteError`][causalmad.errors.WriteError] and leaves what was there.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import logging
import math
import os
import re
import shutil
import warnings
from collections.abc import Callable, Hashable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import IO, TYPE_CHECKING, Any

import numpy as np
import torch
from torch import nn

from causalmad.errors import CausalMADError, CausalMADWarning, PersistenceError, WriteError

if TYPE_CHECKING:
    from causalmad.detectors.base import Detector
    from causalmad.hypothesis import Hypothesis

logger = logging.getLogger(__name__)

FORMAT_VERSION = 2  # 2: SHA256SUMS covers config.json too (version 1 checksummed only the state)
CONFIG = "config.json"
STATE = "state.safetensors"
CHECKSUMS = "SHA256SUMS"
FILES = (CONFIG, STATE, CHECKSUMS)  # every file causalmad writes into a detector folder
TEMP_KINDS = ("causalmad-tmp", "causalmad-old", "partial")  # .NAME.KIND-PID beside a destination
LOCK_TIMEOUT = 60.0  # seconds a save waits while another process writes the same folder


def _records() -> dict[str, type]:
    from causalmad.alignment import Alignment, Candidate
    from causalmad.hypothesis import Readout
    from causalmad.scrubbing import Explanation, Resample
    from causalmad.sites import Site

    return {c.__name__: c for c in (Site, Readout, Resample, Explanation, Candidate, Alignment)}


# ---------------------------------------------------------------- encode / decode
class _Encoder:
    """Turns a nested value into JSON plus a flat dict of tensors."""

    def __init__(self) -> None:
        self.tensors: dict[str, torch.Tensor] = {}
        self._seen: dict[int, str] = {}
        self._alive: list[object] = []  # keeps ids in _seen from being reused while encoding
        self.records = _records()

    def _store(self, obj: torch.Tensor | np.ndarray) -> str:
        if id(obj) not in self._seen:  # one copy of an array referenced from several places
            t = torch.from_numpy(np.ascontiguousarray(obj)) if isinstance(obj, np.ndarray) else obj
            key = f"t{len(self.tensors)}"
            self.tensors[key] = t.detach().cpu().contiguous().clone()
            self._seen[id(obj)] = key
            self._alive.append(obj)
        return self._seen[id(obj)]

    def encode(self, obj: Any, where: str) -> Any:
        if obj is None or isinstance(obj, (bool, str)):
            return obj
        if isinstance(obj, (int, np.integer)):
            return int(obj)
        if isinstance(obj, (float, np.floating)):
            f = float(obj)
            return f if math.isfinite(f) else {"__float__": repr(f)}
        if isinstance(obj, torch.Tensor):
            return {"__tensor__": self._store(obj)}
        if isinstance(obj, np.ndarray):
            if obj.dtype == object:
                raise PersistenceError(f"{where}: an array of Python objects cannot be saved without pickle.")
            return {"__array__": self._store(obj)}
        if isinstance(obj, tuple):
            return {"__tuple__": [self.encode(v, f"{where}[{i}]") for i, v in enumerate(obj)]}
        if isinstance(obj, list):
            return [self.encode(v, f"{where}[{i}]") for i, v in enumerate(obj)]
        if isinstance(obj, (set, frozenset)):
            items = sorted(obj, key=repr)  # a stable order, so the same state gives the same file
            return {"__set__": [self.encode(v, f"{where}{{}}") for v in items]}
        if isinstance(obj, dict):
            if all(isinstance(k, str) and not k.startswith("__") for k in obj):
                return {k: self.encode(v, f"{where}.{k}") for k, v in obj.items()}
            return {
                "__dict__": [
                    [self.encode(k, f"{where} key"), self.encode(v, f"{where}[{k!r}]")]
                    for k, v in obj.items()
                ]
            }
        name = type(obj).__name__
        if dataclasses.is_dataclass(obj) and self.records.get(name) is type(obj):
            fields = {}
            for fld in dataclasses.fields(obj):
                value = getattr(obj, fld.name)
                if callable(value) and not isinstance(value, torch.Tensor):
                    raise PersistenceError(
                        f"{where}.{fld.name}: a function ({getattr(value, '__name__', value)!r}) "
                        "cannot be saved; "
                        "use fixed positions in sites that a saved detector needs."
                    )
                fields[fld.name] = self.encode(value, f"{where}.{fld.name}")
            return {"__record__": name, "fields": fields}
        raise PersistenceError(
            f"{where}: cannot save a {type(obj).__module__}.{name} (not an array, a plain "
            "value or a causalmad record). Name it in the detector's _transient and rebuild "
            "it in _restore()."
        )


def _decode(obj: Any, tensors: dict[str, torch.Tensor], records: dict[str, type]) -> Any:
    if isinstance(obj, list):
        return [_decode(v, tensors, records) for v in obj]
    if not isinstance(obj, dict):
        return obj
    if "__tensor__" in obj or "__array__" in obj:
        key = obj.get("__tensor__", obj.get("__array__"))
        if key not in tensors:
            raise PersistenceError(f"{STATE} lacks the tensor {key!r} that {CONFIG} refers to.")
        return tensors[key] if "__tensor__" in obj else tensors[key].numpy()
    if "__float__" in obj:
        return float(obj["__float__"])
    if "__tuple__" in obj:
        return tuple(_decode(v, tensors, records) for v in obj["__tuple__"])
    if "__set__" in obj:
        return {_decode(v, tensors, records) for v in obj["__set__"]}
    if "__dict__" in obj:
        return {
            _hashable(_decode(k, tensors, records)): _decode(v, tensors, records) for k, v in obj["__dict__"]
        }
    if "__record__" in obj:
        cls = records.get(obj["__record__"])
        if cls is None:
            raise PersistenceError(f"{CONFIG} names an unknown record type {obj['__record__']!r}.")
        return cls(**{k: _decode(v, tensors, records) for k, v in obj["fields"].items()})
    return {k: _decode(v, tensors, records) for k, v in obj.items()}


def _hashable(k: Any) -> Hashable:
    if isinstance(k, list):
        return tuple(_hashable(v) for v in k)
    return k  # type: ignore[no-any-return]


def encode(obj: Any, where: str = "state") -> tuple[Any, dict[str, torch.Tensor]]:
    """``(json_value, tensors)`` for a nested value (see the module docstring)."""
    enc = _Encoder()
    return enc.encode(obj, where), enc.tensors


def decode(obj: Any, tensors: dict[str, torch.Tensor]) -> Any:
    """The inverse of ``encode``."""
    return _decode(obj, tensors, _records())


# ---------------------------------------------------------------- fingerprints
def model_fingerprint(model: nn.Module) -> str:
    """SHA-256 over the model's class and every parameter and buffer (name, dtype,
    shape, bytes): equal fingerprints mean the same weights."""
    h = hashlib.sha256(type(model).__qualname__.encode())
    for name, t in sorted(model.state_dict().items()):
        t = t.detach().cpu().contiguous()
        h.update(f"{name}|{t.dtype}|{tuple(t.shape)}|".encode())
        h.update(t.view(torch.uint8).numpy().tobytes() if t.numel() else b"")
    return h.hexdigest()


def hypothesis_fingerprint(hypothesis: Hypothesis | None) -> dict[str, Any] | None:
    """The hypothesis' structure: its name, each variable's kind and parents, each
    output's readout. (Mechanisms are code; the detector also checks that the hypothesis
    gives the stored trusted inputs the values it gave them at fit time.)"""
    if hypothesis is None:
        return None
    fingerprint = {
        "name": hypothesis.name,
        "variables": {
            v: {
                "kind": hypothesis.kind(v),
                "parents": hypothesis.parents(v),
                **(
                    {"readout": dataclasses.asdict(hypothesis.readouts[v])} if v in hypothesis.outputs else {}
                ),
            }
            for v in hypothesis.variables
        },
    }
    return json.loads(json.dumps(fingerprint))  # as stored: tuples become lists


def _sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def sha256_file(path: Path) -> str:
    """The SHA-256 of a file's bytes, read in 1 MiB blocks (hex)."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def _fsync(path: Path) -> None:
    """Flush a file, or a folder's entries (after a rename), to the disk."""
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


# ---------------------------------------------------------------- leftovers of killed writers
def temp_path(path: str | Path, kind: str) -> Path:
    """``.NAME.KIND-PID`` beside ``path``: where this process writes before renaming into
    place (``kind`` one of ``TEMP_KINDS``), recognisable by ``remove_stale``."""
    path = Path(path)
    return path.with_name(f".{path.name}.{kind}-{os.getpid()}")


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)  # signal 0: checks that the process exists, sends nothing
    except ProcessLookupError:
        return False
    except OverflowError:  # not a process id at all
        return False
    except OSError:  # PermissionError: it exists, under another user
        return True
    return True


def remove_stale(path: str | Path) -> list[Path]:
    """Remove what killed writers left beside ``path``, and say so (a warning each).

    A writer (a save, a scores file) works in ``.NAME.KIND-PID`` beside its destination
    and renames it into place when complete; a ``kill -9`` leaves that behind. This
    removes each one whose process is gone (this process's own count as gone: call this
    before writing). A folder moved aside by a save that replaced it
    (``causalmad-old``) is put back if its replacement never arrived, else removed, and
    a writers' lock file (``.NAME.causalmad-lock``) that no process holds is removed.
    Nothing else is touched. Returns the leftovers dealt with.
    """
    path = Path(path)
    done = _remove_stale_lock(path)
    prefix = f".{path.name}."
    pattern = re.compile(rf"({'|'.join(TEMP_KINDS)})-(\d{{1,10}})")
    try:
        entries = sorted(p for p in path.parent.iterdir() if p.name.startswith(prefix))
    except OSError:  # no such folder yet: nothing was left there
        return done
    for p in entries:
        m = pattern.fullmatch(p.name[len(prefix) :])
        if m is None or (int(m[2]) != os.getpid() and _alive(int(m[2]))):
            continue
        if m[1] == "causalmad-old" and not os.path.lexists(path):
            os.rename(p, path)
            logger.warning(
                "put back %s from %s: process %s was killed while replacing it", path, p.name, m[2]
            )
        else:
            if p.is_dir() and not p.is_symlink():
                shutil.rmtree(p)
            else:
                p.unlink()
            logger.warning("removed %s, left by process %s, which was killed before it finished", p, m[2])
        done.append(p)
    return done


def _cannot_write(path: Path, exc: OSError, what: str) -> WriteError:
    reason = exc.strerror or str(exc)
    return WriteError(f"{path}: cannot write ({reason}); {what}.")


@contextmanager
def open_atomic(path: str | Path) -> Iterator[IO[bytes]]:
    """Open ``path`` for writing (bytes) through ``.NAME.partial-PID`` beside it, flushed
    to the disk and renamed into place on success: ``path`` holds the old bytes or all the
    new ones. On any error the partial file is removed; an ``OSError`` (a full
    disk, no permission) becomes a [`WriteError`][causalmad.errors.WriteError] naming ``path``."""
    path = Path(path)
    tmp = temp_path(path, "partial")
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        with open(tmp, "wb") as f:
            yield f
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException as exc:
        tmp.unlink(missing_ok=True)
        if isinstance(exc, OSError) and not isinstance(exc, CausalMADError):
            raise _cannot_write(path, exc, "it was left as it was") from exc
        raise


def _remove_stale_lock(path: Path) -> list[Path]:
    """Remove the lock file of ``path`` if no process holds it (a killed writer's); a
    lock held by a live writer, this process included, is left alone."""
    from filelock import FileLock, Timeout

    file = lock_path(path)
    if not file.is_file():
        return []
    lock = FileLock(str(file), timeout=0)
    try:
        lock.acquire()
    except (Timeout, OSError):
        return []
    try:
        file.unlink(missing_ok=True)  # while held, as writer_lock does
    finally:
        lock.release()
    logger.warning("removed %s, left by a writer that was killed before it finished", file)
    return [file]


def write_atomic(path: str | Path, data: bytes) -> Path:
    """Write ``data`` to ``path`` with ``open_atomic``."""
    with open_atomic(path) as f:
        f.write(data)
    return Path(path)


def lock_path(path: str | Path) -> Path:
    """``.NAME.causalmad-lock`` beside ``path``: the file lock of its writers."""
    path = Path(path)
    return path.with_name(f".{path.name}.causalmad-lock")


@contextmanager
def writer_lock(path: str | Path, timeout: float | None = None) -> Iterator[None]:
    """Hold the writers' lock of the detector folder ``path`` (see the module docstring).

    Waits up to ``timeout`` seconds (default ``LOCK_TIMEOUT``) while another process
    holds it. The lock file is removed on release, while still held: a writer that waited
    on it then finds it gone and takes a new one (filelock checks for that), so no
    ``.causalmad-lock`` file outlives its writers.

    Raises:
        PersistenceError: another process held the lock for the whole wait.
    """
    from filelock import FileLock, Timeout

    path = Path(path)
    file = lock_path(path)
    wait = LOCK_TIMEOUT if timeout is None else timeout
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        lock = FileLock(str(file), timeout=wait)
        lock.acquire()
    except Timeout:
        raise PersistenceError(
            f"{path} is being written by another process, which holds {file.name}; waited "
            f"{wait:g} s: run this again once that one has finished."
        ) from None
    except OSError as exc:
        raise _cannot_write(path, exc, f"could not take the lock {file.name}") from exc
    try:
        yield
    finally:
        file.unlink(missing_ok=True)
        lock.release()


# ---------------------------------------------------------------- folders
def check_replaceable(path: str | Path) -> None:
    """Raise [`PersistenceError`][causalmad.errors.PersistenceError] unless
    ``overwrite=True`` may replace ``path``: a causalmad detector folder (its
    ``config.json`` says so and it holds only the files causalmad writes, ``FILES``).
    Anything else, an empty folder included, is the user's."""
    path = Path(path)
    refuse = "; refusing to replace it (choose another path, or remove it yourself)."
    if path.is_symlink():
        raise PersistenceError(f"{path} is a symbolic link" + refuse)
    if not path.is_dir():
        raise PersistenceError(f"{path} is a file, not a detector folder" + refuse)
    names = sorted(p.name for p in path.iterdir())
    foreign = [n for n in names if n not in FILES or (path / n).is_symlink() or not (path / n).is_file()]
    if foreign:
        shown = ", ".join(foreign[:3]) + (f" and {len(foreign) - 3} more" if len(foreign) > 3 else "")
        raise PersistenceError(
            f"{path} is not a causalmad detector folder (it holds {shown}, which causalmad "
            "does not write)" + refuse
        )
    if CONFIG not in names:
        raise PersistenceError(f"{path} is not a causalmad detector folder (it has no {CONFIG})" + refuse)
    try:
        config = json.loads((path / CONFIG).read_bytes())
    except (OSError, ValueError, RecursionError):
        config = None
    version = config.get("format_version") if isinstance(config, dict) else None
    if not isinstance(version, int) or "detector" not in config:  # type: ignore[operator]
        raise PersistenceError(
            f"{path} is not a causalmad detector folder (its {CONFIG} is not a detector's)" + refuse
        )


def write_folder(path: str | Path, config: dict[str, Any], state: Any, overwrite: bool = False) -> Path:
    """Write ``config`` (+ the encoded ``state``) into the folder ``path`` atomically:
    beside it first, then renamed into place; an existing folder (``overwrite=True``, a
    detector folder only) stays until the new one is complete. Holds ``writer_lock``
    throughout.

    Raises:
        PersistenceError: ``path`` exists (and ``overwrite`` is off, or it is not a
            detector folder), or another process kept the lock for the whole wait.
        WriteError: a file could not be written (disk full, no permission); nothing was
            replaced.
    """
    path = Path(path)
    encoded, tensors = encode(state)  # unsaveable state fails before anything is touched
    with writer_lock(path):
        remove_stale(path)
        if os.path.lexists(path):
            if not overwrite:
                raise PersistenceError(
                    f"{path} already exists; pass overwrite=True (CLI: --force) to replace it."
                )
            check_replaceable(path)
        try:
            _write_locked(path, config, encoded, tensors, overwrite)
        except OSError as exc:
            raise _cannot_write(path, exc, "nothing was replaced") from exc
    return path


def _write_locked(
    path: Path, config: dict[str, Any], encoded: Any, tensors: dict[str, torch.Tensor], overwrite: bool
) -> None:
    """The body of ``write_folder``, with the lock held."""
    from safetensors.torch import save_file

    import causalmad

    tmp, old = temp_path(path, "causalmad-tmp"), temp_path(path, "causalmad-old")
    tmp.mkdir()
    moved = False
    try:
        save_file(tensors, str(tmp / STATE))
        umask = os.umask(0)
        os.umask(umask)
        os.chmod(tmp / STATE, 0o666 & ~umask)  # safetensors writes a private file; give the usual permissions
        full = {
            "format_version": FORMAT_VERSION,
            "causalmad_version": causalmad.__version__,
            **config,
            "state": encoded,
        }
        (tmp / CONFIG).write_text(json.dumps(full, indent=1, allow_nan=False))
        sums = "".join(f"{sha256_file(tmp / name)}  {name}\n" for name in (CONFIG, STATE))
        (tmp / CHECKSUMS).write_text(sums)  # written last: marks the folder complete
        for name in (STATE, CONFIG, CHECKSUMS, ""):  # "": the folder's own entries
            _fsync(tmp / name)
        if os.path.lexists(path):
            if not overwrite:
                raise PersistenceError(
                    f"{path} was created by another writer during this save; nothing replaced."
                )
            os.rename(path, old)
            moved = True
        try:
            os.rename(tmp, path)
        except OSError as exc:
            raise PersistenceError(
                f"{path} was created by another writer during this save; nothing replaced."
            ) from exc
        _fsync(path.parent)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        if moved and not os.path.lexists(path):
            os.rename(old, path)
        raise
    if moved:
        shutil.rmtree(old, ignore_errors=True)


def _modified(message: str, trust_modified: bool) -> None:
    """A folder whose files are not the ones saved: refused, or a warning if trusted."""
    if not trust_modified:
        raise PersistenceError(
            f"{message} Pass trust_modified=True (CLI: --trust-modified) to load it anyway."
        )
    warnings.warn(f"{message} Loading it anyway (trust_modified).", CausalMADWarning, stacklevel=2)


def _read_checksums(path: Path, trust_modified: bool) -> dict[str, str] | None:
    """``SHA256SUMS`` as name -> hex digest; ``None`` if absent (or malformed and trusted)."""
    file = path / CHECKSUMS
    if not file.is_file():
        return None
    sums: dict[str, str] = {}
    try:
        lines = file.read_bytes().decode("ascii").splitlines()
    except (OSError, UnicodeDecodeError):
        lines = ["(not text)"]
    for n, line in enumerate(lines, 1):
        m = re.fullmatch(r"([0-9a-f]{64}) [ *](\S+)", line)
        if m is None or m[2] not in (CONFIG, STATE) or m[2] in sums:
            _modified(
                f"{file} line {n} is not 'SHA-256  {CONFIG}' or 'SHA-256  {STATE}': the file was edited "
                "or is corrupted.",
                trust_modified,
            )
            return None
        sums[m[2]] = m[1]
    if set(sums) != {CONFIG, STATE}:
        _modified(
            f"{file} lacks the checksum of {sorted({CONFIG, STATE} - set(sums))}: the file was edited or is "
            "corrupted.",
            trust_modified,
        )
        return None
    return sums


def _read_config(path: Path, trust_modified: bool) -> tuple[dict[str, Any], str | None, str]:
    """``(config, expected SHA-256 of the state or None, where that checksum is kept)``."""
    import causalmad

    if not path.is_dir():
        raise PersistenceError(
            f"{path} is not a folder (a saved detector is a folder with {CONFIG}, {STATE} and {CHECKSUMS})."
        )
    if not (path / CONFIG).is_file():
        raise PersistenceError(f"{path} has no {CONFIG}: not a detector folder, or an interrupted save.")
    try:
        raw = (path / CONFIG).read_bytes()
        config: Any = json.loads(raw)
        invalid = None
    except OSError as exc:
        raise PersistenceError(f"{path / CONFIG} cannot be read ({exc}).") from exc
    except (ValueError, RecursionError) as exc:  # JSONDecodeError and UnicodeDecodeError are ValueErrors
        config, invalid = None, exc
    version = config.get("format_version") if isinstance(config, dict) else None
    if isinstance(version, int) and not isinstance(version, bool) and version > FORMAT_VERSION:
        # before the checksums: a newer format may keep them differently
        raise PersistenceError(
            f"{path} was saved in format version {version} by a newer causalmad; this causalmad "
            f"({causalmad.__version__}) reads format versions up to {FORMAT_VERSION}: upgrade "
            "causalmad to load it."
        )
    sums = _read_checksums(path, trust_modified)
    if sums is not None and _sha256(raw) != sums[CONFIG]:
        _modified(
            f"{path / CONFIG} does not match its checksum in {CHECKSUMS}: it was edited, truncated or "
            "corrupted after the save.",
            trust_modified,
        )
    if invalid is not None:
        raise PersistenceError(f"{path / CONFIG} is not valid JSON ({invalid}); the folder is corrupted.")
    if not isinstance(config, dict) or "format_version" not in config:
        raise PersistenceError(f"{path / CONFIG} has no format_version; not a causalmad detector folder.")
    if not isinstance(version, int) or isinstance(version, bool) or version < 1:
        raise PersistenceError(
            f"{path / CONFIG}: format_version {version!r} is not a format version; the folder is corrupted."
        )
    required = ["detector", "params", "state", "input_shape", "input_dtype"]
    if version == 1:
        _modified(
            f"{path} was saved by an older causalmad (format version 1), whose checksum does not cover "
            f"{CONFIG}: refit it with this causalmad.",
            trust_modified,
        )
        required.append("state_sha256")
    else:
        if sums is None and not (path / CHECKSUMS).is_file():
            _modified(
                f"{path} has no {CHECKSUMS}: an interrupted save, or the file was removed.", trust_modified
            )
        for name in sorted(p.name for p in path.iterdir() if p.name not in FILES):
            _modified(
                f"{path / name} is not covered by {CHECKSUMS} (a detector folder holds only "
                f"{', '.join(FILES)}).",
                trust_modified,
            )
    missing = [k for k in required if k not in config]
    if missing:
        raise PersistenceError(f"{path / CONFIG} lacks {missing}; the folder is corrupted.")
    wrong = _mistyped(config)
    if wrong:
        raise PersistenceError(f"{path / CONFIG}: {wrong}; the folder is corrupted.")
    if not (path / STATE).is_file():
        raise PersistenceError(f"{path} has no {STATE}; the folder is incomplete.")
    if version == 1:
        return config, config["state_sha256"], CONFIG
    return config, None if sums is None else sums[STATE], CHECKSUMS


def _mistyped(config: dict[str, Any]) -> str | None:
    """What in ``config`` has the wrong type for a detector's config (None if nothing):
    checked here so that a damaged file loaded with trust_modified fails in one line."""
    shape = config["input_shape"]
    if not isinstance(config["detector"], str):
        return f"'detector' is {json.dumps(config['detector'])[:40]}, not a name"
    if not isinstance(config["params"], dict):
        return "'params' is not an object"
    if not isinstance(shape, list) or not all(
        isinstance(n, int) and not isinstance(n, bool) and 0 < n < 2**31 for n in shape
    ):
        return f"'input_shape' is {json.dumps(shape)[:40]}, not a list of sizes"
    dtype = config["input_dtype"]
    if not isinstance(dtype, str) or not isinstance(
        getattr(torch, dtype.removeprefix("torch."), None), torch.dtype
    ):
        return f"'input_dtype' is {json.dumps(dtype)[:40]}, not a torch dtype"
    for key, kind in (("extra", dict), ("hypothesis", dict), ("model_fingerprint", str)):
        if config.get(key) is not None and not isinstance(config[key], kind):
            return f"{key!r} has the wrong type"
    hyp = config.get("hypothesis")
    if hyp is not None and not (isinstance(hyp.get("name"), str) and isinstance(hyp.get("variables"), dict)):
        return "'hypothesis' is not a hypothesis' fingerprint (a name and its variables)"
    return None


def read_config(path: str | Path, trust_modified: bool = False) -> dict[str, Any]:
    """The ``config.json`` of a detector folder, after checking the folder's shape and
    ``config.json``'s checksum (cheap: the tensors are not read).

    Raises:
        PersistenceError: not a detector folder, a newer format, or (unless
            ``trust_modified``) a file that does not match ``SHA256SUMS``.
    """
    return _read_config(Path(path), trust_modified)[0]


def read_folder(path: str | Path, trust_modified: bool = False) -> tuple[dict[str, Any], Any]:
    """``(config, decoded state)`` of a detector folder, after checking every file
    against its checksum (a mismatch raises unless ``trust_modified``, then warns)."""
    from safetensors import SafetensorError
    from safetensors.torch import load

    path = Path(path)
    config, expected, kept_in = _read_config(path, trust_modified)
    try:
        data = (path / STATE).read_bytes()  # hashed and parsed from one read: no change in between
    except OSError as exc:
        raise PersistenceError(f"{path / STATE} cannot be read ({exc}).") from exc
    if expected is not None and _sha256(data) != expected:
        _modified(
            f"{path / STATE} does not match its checksum in {kept_in}: the file is truncated or corrupted.",
            trust_modified,
        )
    try:
        tensors = load(data)
    except (SafetensorError, OSError, ValueError, RuntimeError) as exc:
        raise PersistenceError(f"{path / STATE} cannot be read ({exc}).") from exc
    try:
        return config, decode(config["state"], tensors)
    except (TypeError, KeyError, ValueError, AttributeError, IndexError, RecursionError) as exc:
        raise PersistenceError(f"{path / CONFIG}: the stored state is malformed ({exc}).") from exc


def constructor_params(obj: Any, skip: tuple[str, ...]) -> dict[str, Any]:
    """The constructor arguments of ``obj`` (sklearn convention: stored under their names)."""
    return {n: getattr(obj, n) for n in constructor_params_names(type(obj)) if n not in skip}


def save_detector(
    detector: Detector, path: str | Path, overwrite: bool = False, extra: dict[str, Any] | None = None
) -> Path:
    """Save a fitted detector to the folder ``path`` (see [`Detector.save`][causalmad.Detector.save])."""
    detector._require_fitted()
    params = constructor_params(detector, skip=("model", "hypothesis"))
    hyp = getattr(detector, "hypothesis", None)
    params_json, params_tensors = encode(params, "params")
    if params_tensors:
        raise PersistenceError(
            f"{type(detector).__name__}'s constructor arguments must be plain values to be "
            "saved; one of them is an array or tensor."
        )
    config = {
        "detector": detector.name,
        "params": params_json,
        "input_shape": list(detector.input_shape_),
        "input_dtype": detector.input_dtype_,
        "model_fingerprint": model_fingerprint(detector.adapter_.model),
        "hypothesis": hypothesis_fingerprint(hyp),
        "extra": extra or {},
    }
    return write_folder(path, config, detector._get_state(), overwrite)


def load_detector(
    path: str | Path,
    model: nn.Module | Any,
    hypothesis: Hypothesis | None = None,
    check: Callable[[dict[str, Any]], None] | None = None,
    trust_modified: bool = False,
) -> Detector:
    """Load a detector saved with [`Detector.save`][causalmad.Detector.save] (see
    [`Detector.load`][causalmad.Detector.load])."""
    from causalmad.detectors.base import DETECTORS
    from causalmad.models import adapt

    config, state = read_folder(path, trust_modified)
    if check is not None:
        check(config)
    name = config["detector"]
    if name not in DETECTORS:
        raise PersistenceError(
            f"{path} holds a {name!r} detector, which this causalmad does not know "
            f"(known: {sorted(DETECTORS)})."
        )
    adapter = adapt(model)
    found = model_fingerprint(adapter.model)
    if found != config.get("model_fingerprint"):
        raise PersistenceError(
            f"{path} was fitted on a different model (fingerprint "
            f"{str(config.get('model_fingerprint'))[:12]}…, this model {found[:12]}…): "
            "its weights or architecture differ."
        )
    stored_h: dict[str, Any] | None = config.get("hypothesis")
    if (stored_h is None) != (hypothesis is None):
        raise PersistenceError(
            f"{path} was fitted "
            + (
                "without a hypothesis; do not pass one."
                if stored_h is None
                else f"with hypothesis {stored_h['name']!r}; pass it: load(path, model, hypothesis=h)."
            )
        )
    if hypothesis is not None and stored_h is not None:
        hypothesis.validate()
        if hypothesis_fingerprint(hypothesis) != stored_h:
            raise PersistenceError(
                f"{path} was fitted with a hypothesis of another structure (stored "
                f"{stored_h['name']!r}: variables {list(stored_h['variables'])}); the one "
                f"given ({hypothesis.name!r}: {hypothesis.variables}) differs in variables, "
                "parents or readouts."
            )
    cls = DETECTORS[name]
    params = decode(config["params"], {})
    # a folder saved before an argument existed was fitted with the behaviour it replaced
    params = {**getattr(cls, "params_before_saved", {}), **params}
    kwargs: dict[str, Any] = (
        {"hypothesis": hypothesis} if "hypothesis" in constructor_params_names(cls) else {}
    )
    try:
        det = cls(model, **kwargs, **params)
    except TypeError as exc:
        raise PersistenceError(f"{path}: the stored arguments do not fit {cls.__name__} ({exc}).") from exc
    try:
        det._set_state(state, adapter)
    except (TypeError, KeyError, ValueError, AttributeError, IndexError) as exc:
        if isinstance(exc, CausalMADError):
            raise
        raise PersistenceError(
            f"{Path(path) / CONFIG}: the stored state does not "
            f"fit a {name!r} detector ({type(exc).__name__}: {exc}); the folder is "
            "corrupted."
        ) from exc
    return det


def constructor_params_names(cls: type) -> list[str]:
    import inspect

    return list(inspect.signature(cls).parameters)
