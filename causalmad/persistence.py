"""Saving and loading fitted detectors: JSON for structure, safetensors for numbers.

A detector folder holds two files:

* ``state.safetensors`` — every array and tensor the detector learned (alignment
  rotations, calibration statistics, trusted source activations, ...);
* ``config.json`` — the format version, the causalmad version, the detector's name and
  constructor arguments, its fitted state with each array replaced by a reference into
  ``state.safetensors``, a fingerprint of the model and of the hypothesis, and the
  SHA-256 of ``state.safetensors``.

Nothing is pickled and loading executes no code from the folder: the JSON decoder
rebuilds only plain values and a fixed list of causalmad records (:data:`RECORDS`). The
model and the hypothesis are code, so the caller passes them again; their fingerprints
must match the stored ones. Saving writes into a hidden sibling folder and renames it
into place only once ``config.json`` (written last, with the checksum) is complete, so an
interrupted save never leaves a folder that loads.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import math
import os
import shutil
import tempfile
from collections.abc import Callable, Hashable
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import torch
from torch import nn

from causalmad.errors import PersistenceError

if TYPE_CHECKING:
    from causalmad.detectors.base import Detector
    from causalmad.hypothesis import Hypothesis

FORMAT_VERSION = 1
CONFIG = "config.json"
STATE = "state.safetensors"


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
            return {"__dict__": [[self.encode(k, f"{where} key"), self.encode(v, f"{where}[{k!r}]")]
                                 for k, v in obj.items()]}
        name = type(obj).__name__
        if dataclasses.is_dataclass(obj) and self.records.get(name) is type(obj):
            fields = {}
            for fld in dataclasses.fields(obj):
                value = getattr(obj, fld.name)
                if callable(value) and not isinstance(value, torch.Tensor):
                    raise PersistenceError(
                        f"{where}.{fld.name}: a function ({getattr(value, '__name__', value)!r}) cannot be saved; "
                        "use fixed positions in sites that a saved detector needs."
                    )
                fields[fld.name] = self.encode(value, f"{where}.{fld.name}")
            return {"__record__": name, "fields": fields}
        raise PersistenceError(f"{where}: cannot save a {type(obj).__module__}.{name} (not an array, a plain "
                               "value or a causalmad record). Name it in the detector's _transient and rebuild "
                               "it in _restore().")


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
        return {_hashable(_decode(k, tensors, records)): _decode(v, tensors, records) for k, v in obj["__dict__"]}
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
    """The inverse of :func:`encode`."""
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
            v: {"kind": hypothesis.kind(v), "parents": hypothesis.parents(v),
                **({"readout": dataclasses.asdict(hypothesis.readout(v))} if v in hypothesis.outputs else {})}
            for v in hypothesis.variables
        },
    }
    return json.loads(json.dumps(fingerprint))  # as stored: tuples become lists


def _sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def _fsync(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


# ---------------------------------------------------------------- folders
def write_folder(path: str | Path, config: dict[str, Any], state: Any, overwrite: bool = False) -> Path:
    """Write ``config`` (+ the encoded ``state``) into the folder ``path`` atomically."""
    from safetensors.torch import save_file

    import causalmad

    path = Path(path)
    if path.exists() and not overwrite:
        raise PersistenceError(f"{path} already exists; pass overwrite=True (CLI: --force) to replace it.")
    if path.exists() and not (path / CONFIG).exists():
        raise PersistenceError(f"{path} exists and is not a detector folder; refusing to replace it.")
    encoded, tensors = encode(state)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent))
    try:
        save_file(tensors, str(tmp / STATE))
        _fsync(tmp / STATE)
        full = {"format_version": FORMAT_VERSION, "causalmad_version": causalmad.__version__, **config,
                "state": encoded, "state_sha256": _sha256(tmp / STATE)}
        (tmp / CONFIG).write_text(json.dumps(full, indent=1, allow_nan=False))  # written last: marks completeness
        _fsync(tmp / CONFIG)
        umask = os.umask(0)
        os.umask(umask)
        for f, mode in ((tmp, 0o777), (tmp / STATE, 0o666), (tmp / CONFIG, 0o666)):
            os.chmod(f, mode & ~umask)  # mkdtemp makes private folders; give the usual permissions
        if path.exists():
            old = path.with_name(f".{path.name}.old-{os.getpid()}")
            path.rename(old)
            tmp.rename(path)
            shutil.rmtree(old, ignore_errors=True)
        else:
            tmp.rename(path)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return path


def read_config(path: str | Path) -> dict[str, Any]:
    """The ``config.json`` of a detector folder, after checking the folder's shape (cheap:
    the tensors are not read)."""
    path = Path(path)
    if not path.is_dir():
        raise PersistenceError(f"{path} is not a folder (a saved detector is a folder with {CONFIG} and {STATE}).")
    if not (path / CONFIG).exists():
        raise PersistenceError(f"{path} has no {CONFIG}: not a detector folder, or an interrupted save.")
    try:
        config = json.loads((path / CONFIG).read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise PersistenceError(f"{path / CONFIG} is not valid JSON ({exc}); the folder is corrupted.") from exc
    if not isinstance(config, dict) or "format_version" not in config:
        raise PersistenceError(f"{path / CONFIG} has no format_version; not a causalmad detector folder.")
    if config["format_version"] != FORMAT_VERSION:
        raise PersistenceError(f"{path} uses format version {config['format_version']}; this causalmad "
                               f"reads version {FORMAT_VERSION}.")
    missing = [k for k in ("detector", "params", "state", "state_sha256", "input_shape", "input_dtype")
               if k not in config]
    if missing:
        raise PersistenceError(f"{path / CONFIG} lacks {missing}; the folder is corrupted.")
    if not (path / STATE).exists():
        raise PersistenceError(f"{path} has no {STATE}; the folder is incomplete.")
    return config


def read_folder(path: str | Path) -> tuple[dict[str, Any], Any]:
    """``(config, decoded state)`` of a detector folder, after checking it is complete."""
    from safetensors import SafetensorError
    from safetensors.torch import load_file

    path = Path(path)
    config = read_config(path)
    if _sha256(path / STATE) != config["state_sha256"]:
        raise PersistenceError(f"{path / STATE} does not match the checksum in {CONFIG}: the file is truncated "
                               "or corrupted.")
    try:
        tensors = load_file(str(path / STATE))
    except (SafetensorError, OSError) as exc:
        raise PersistenceError(f"{path / STATE} cannot be read ({exc}).") from exc
    try:
        return config, decode(config["state"], tensors)
    except (TypeError, KeyError, ValueError, AttributeError) as exc:
        raise PersistenceError(f"{path / CONFIG}: the stored state is malformed ({exc}).") from exc


def constructor_params(obj: Any, skip: tuple[str, ...]) -> dict[str, Any]:
    """The constructor arguments of ``obj`` (sklearn convention: stored under their names)."""
    return {n: getattr(obj, n) for n in constructor_params_names(type(obj)) if n not in skip}


def save_detector(detector: Detector, path: str | Path, overwrite: bool = False,
                  extra: dict[str, Any] | None = None) -> Path:
    """Save a fitted detector to the folder ``path`` (see :meth:`Detector.save`)."""
    detector._require_fitted()
    params = constructor_params(detector, skip=("model", "hypothesis"))
    hyp = getattr(detector, "hypothesis", None)
    params_json, params_tensors = encode(params, "params")
    if params_tensors:
        raise PersistenceError(f"{type(detector).__name__}'s constructor arguments must be plain values to be "
                               "saved; one of them is an array or tensor.")
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


def load_detector(path: str | Path, model: nn.Module | Any, hypothesis: Hypothesis | None = None,
                  check: Callable[[dict[str, Any]], None] | None = None) -> Detector:
    """Load a detector saved with :meth:`Detector.save` (see :meth:`Detector.load`)."""
    from causalmad.detectors.base import DETECTORS
    from causalmad.models import adapt

    config, state = read_folder(path)
    if check is not None:
        check(config)
    name = config["detector"]
    if name not in DETECTORS:
        raise PersistenceError(f"{path} holds a {name!r} detector, which this causalmad does not know "
                               f"(known: {sorted(DETECTORS)}).")
    adapter = adapt(model)
    found = model_fingerprint(adapter.model)
    if found != config.get("model_fingerprint"):
        raise PersistenceError(f"{path} was fitted on a different model (fingerprint "
                               f"{str(config.get('model_fingerprint'))[:12]}…, this model {found[:12]}…): "
                               "its weights or architecture differ.")
    stored_h: dict[str, Any] | None = config.get("hypothesis")
    if (stored_h is None) != (hypothesis is None):
        raise PersistenceError(f"{path} was fitted " + ("without a hypothesis; do not pass one." if stored_h is None
                               else f"with hypothesis {stored_h['name']!r}; pass it: load(path, model, hypothesis=h)."))
    if hypothesis is not None and stored_h is not None:
        hypothesis.validate()
        if hypothesis_fingerprint(hypothesis) != stored_h:
            raise PersistenceError(f"{path} was fitted with a hypothesis of another structure (stored "
                                   f"{stored_h['name']!r}: variables {list(stored_h['variables'])}); the one "
                                   f"given ({hypothesis.name!r}: {hypothesis.variables}) differs in variables, "
                                   "parents or readouts.")
    cls = DETECTORS[name]
    params = decode(config["params"], {})
    kwargs: dict[str, Any] = {"hypothesis": hypothesis} if "hypothesis" in constructor_params_names(cls) else {}
    try:
        det = cls(model, **kwargs, **params)
    except TypeError as exc:
        raise PersistenceError(f"{path}: the stored arguments do not fit {cls.__name__} ({exc}).") from exc
    det._set_state(state, adapter)
    return det


def constructor_params_names(cls: type) -> list[str]:
    import inspect

    return list(inspect.signature(cls).parameters)
