"""The detector contract, shared by the scrubbing detector and every baseline.

Modelled on scikit-learn estimators: ``__init__`` only stores arguments; ``fit(trusted)``
learns, sets ``*_`` attributes and returns ``self``; later methods check the detector is
fitted. One convention for every detector (as in PyOD): **higher score = more
anomalous**. ``predict`` flags inputs above a threshold taken from trusted scores held out
of fitting, at a false-positive rate the user picks.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import torch

from causalmad.errors import InputError, NotFittedError, PersistenceError
from causalmad.models import ModelAdapter, adapt

DETECTORS: dict[str, type[Detector]] = {}


def register(name: str) -> Callable[[type[Detector]], type[Detector]]:
    """Class decorator adding a detector to :data:`DETECTORS` (duplicate names raise)."""

    def deco(cls: type[Detector]) -> type[Detector]:
        if name in DETECTORS:
            raise ValueError(f"A detector named {name!r} is already registered.")
        DETECTORS[name] = cls
        cls.name = name
        return cls

    return deco


def split_indices(n: int, fractions: tuple[float, ...], random_state: int) -> list[np.ndarray]:
    """Disjoint random index splits of ``range(n)`` with the given fractions."""
    perm = np.random.default_rng(random_state).permutation(n)
    bounds = np.cumsum([0, *[int(round(f * n)) for f in fractions[:-1]]])
    parts = [perm[a:b] for a, b in zip(bounds[:-1], bounds[1:])]
    parts.append(perm[bounds[-1]:])
    return parts


class Detector(ABC):
    """Base class: ``fit`` on trusted data, ``score`` untrusted data.

    Conventions every detector follows (they make persistence generic, see
    :mod:`causalmad.persistence`): ``__init__`` stores each argument under its own name;
    everything ``fit`` learns lives in attributes ending in ``_`` and holds only numpy
    arrays, tensors, plain Python values and causalmad's own records (sites, readouts,
    explanations). Anything else (a scikit-learn estimator, say) is named in
    ``_transient`` and rebuilt from the stored state by ``_restore``.

    Class attributes:
        needs_untrusted: ``fit`` also takes an unlabeled batch of untrusted inputs
            (``fit(trusted, untrusted=...)``), e.g. QUE's untrusted covariance.
        skyline: the detector sees anomaly labels; tables mark it and never rank it.
    """

    name = "detector"
    min_trusted = 20
    needs_untrusted = False
    skyline = False
    _transient: tuple[str, ...] = ()
    heldout_scores_: np.ndarray

    def __init__(self, model: torch.nn.Module | ModelAdapter, random_state: int = 0) -> None:
        self.model = model
        self.random_state = random_state

    # the public API -------------------------------------------------------------
    def fit(self, trusted: torch.Tensor, untrusted: torch.Tensor | None = None) -> Detector:
        """Learn from trusted inputs (and, for detectors with ``needs_untrusted``, an
        unlabeled untrusted batch). Returns ``self``."""
        adapter = adapt(self.model)
        x = adapter.check_inputs(trusted, "trusted inputs")
        if self.needs_untrusted and untrusted is None:
            raise InputError(f"{type(self).__name__} needs an unlabeled untrusted batch at fit time: "
                             "fit(trusted, untrusted=batch).")
        if not self.needs_untrusted and untrusted is not None:
            raise InputError(f"{type(self).__name__} fits on trusted inputs only; do not pass untrusted=.")
        u = None if untrusted is None else adapter.check_inputs(untrusted, "untrusted inputs")
        if u is not None and tuple(u.shape[1:]) != tuple(x.shape[1:]):
            raise InputError(f"untrusted inputs have per-example shape {tuple(u.shape[1:])}, trusted "
                             f"inputs {tuple(x.shape[1:])}.")
        if len(x) < self.min_trusted:
            raise InputError(
                f"{type(self).__name__} needs at least {self.min_trusted} trusted inputs "
                f"(it splits them into disjoint fit and held-out parts), got {len(x)}."
            )
        if hasattr(adapter, "input_shape"):
            adapter.input_shape = tuple(x.shape[1:])  # type: ignore[attr-defined]
        self.adapter_ = adapter
        self.input_shape_ = tuple(x.shape[1:])
        self.input_dtype_ = str(x.dtype).removeprefix("torch.")
        if u is None:
            self._fit(x)
        else:
            self._fit(x, u)  # type: ignore[call-arg]
        return self

    def score(self, inputs: torch.Tensor) -> np.ndarray:
        """One float per input, higher = more anomalous."""
        x = self._check(inputs)
        return np.asarray(self._score(x), dtype=np.float64)

    def threshold(self, fpr: float) -> float:
        """Score above which an input is flagged, for false-positive rate ``fpr`` on
        held-out trusted inputs."""
        self._require_fitted()
        if not 0 < fpr < 1:
            raise InputError(f"fpr must be in (0, 1), got {fpr}.")
        return float(np.quantile(np.asarray(self.heldout_scores_), 1 - fpr, method="higher"))

    def predict(self, inputs: torch.Tensor, fpr: float = 0.01) -> np.ndarray:
        """Boolean flags: score above :meth:`threshold` at ``fpr``."""
        t = self.threshold(fpr)
        return self.score(inputs) > t

    def explain(self, example: torch.Tensor, top: int = 5, fpr: float = 0.01) -> dict[str, Any]:
        """Why one input scored as it did, as JSON-ready data: ``score``, ``threshold``
        (at ``fpr``) and ``flagged``, plus what the detector can say about its parts
        (:meth:`_explain_parts`: the scrubbing detector's broken explanations and
        variables, an activation detector's per-site scores)."""
        x = torch.as_tensor(example)
        x = x.unsqueeze(0) if x.ndim == len(getattr(self, "input_shape_", ())) else x
        if len(x) != 1:
            raise InputError(f"explain takes one input, got a batch of {len(x)}.")
        x = self._check(x)
        threshold = self.threshold(fpr)
        score = float(self._score(x)[0])
        return {"score": score, "threshold": threshold, "fpr": fpr, "flagged": bool(score > threshold),
                **self._explain_parts(x, top)}

    def _explain_parts(self, x: torch.Tensor, top: int) -> dict[str, Any]:
        """Detector-specific parts of :meth:`explain` for one validated input."""
        return {}

    # persistence --------------------------------------------------------------------
    def save(self, path: str | Path, overwrite: bool = False) -> Path:
        """Save the fitted detector to the folder ``path`` (``config.json``,
        ``state.safetensors`` and their ``SHA256SUMS``; no pickle). Reload with :meth:`load`.

        The save is atomic: written beside ``path``, then renamed into place.
        ``overwrite=True`` replaces only a causalmad detector folder,
        which stays in place until the new folder is complete; any other folder or file
        raises :class:`~causalmad.errors.PersistenceError` and is left untouched."""
        from causalmad.persistence import save_detector

        return save_detector(self, path, overwrite)

    @classmethod
    def load(cls, path: str | Path, model: Any, hypothesis: Any = None, trust_modified: bool = False) -> Detector:
        """Load a detector saved with :meth:`save`. ``model`` (and ``hypothesis``, if it
        was fitted with one) must be the ones it was fitted with: their fingerprints are
        checked, and a mismatch raises :class:`~causalmad.errors.PersistenceError`.

        Loading runs no code named in the folder. Every file must match the folder's
        ``SHA256SUMS``; a folder changed since it was saved (or saved by a causalmad
        whose checksum did not cover ``config.json``) raises, unless
        ``trust_modified=True``, which loads it with a
        :class:`~causalmad.errors.CausalMADWarning`."""
        from causalmad.persistence import load_detector

        det = load_detector(path, model, hypothesis, trust_modified=trust_modified)
        if cls is not Detector and not isinstance(det, cls):
            raise PersistenceError(f"{path} holds a {det.name!r} detector, not a {cls.__name__}.")
        return det

    def _get_state(self) -> dict[str, Any]:
        """What ``fit`` learned: every ``*_`` attribute except ``_transient`` ones."""
        skip = {"adapter_", *self._transient}
        return {k: v for k, v in vars(self).items() if k.endswith("_") and not k.startswith("_") and k not in skip}

    def _set_state(self, state: dict[str, Any], adapter: ModelAdapter) -> None:
        self.adapter_ = adapter
        self.__dict__.update(state)
        if hasattr(adapter, "input_shape"):
            adapter.input_shape = tuple(self.input_shape_)  # type: ignore[attr-defined]
        self.input_shape_ = tuple(self.input_shape_)
        self._restore()

    # helpers ----------------------------------------------------------------------
    def _require_fitted(self) -> None:
        if "heldout_scores_" not in self.__dict__:
            raise NotFittedError(f"This {type(self).__name__} is not fitted yet; call fit(trusted) first.")

    def _check(self, inputs: torch.Tensor) -> torch.Tensor:
        self._require_fitted()
        x = self.adapter_.check_inputs(inputs, "inputs")
        if tuple(x.shape[1:]) != self.input_shape_:
            raise InputError(
                f"inputs have per-example shape {tuple(x.shape[1:])}, but the detector was "
                f"fitted on shape {self.input_shape_}."
            )
        return x

    def _restore(self) -> None:
        """Rebuild ``_transient`` attributes from the stored state after loading."""
        return None

    @abstractmethod
    def _fit(self, trusted: torch.Tensor) -> None:
        """Learn; must set ``heldout_scores_`` (scores of trusted inputs not fitted on)."""

    @abstractmethod
    def _score(self, inputs: torch.Tensor) -> np.ndarray:
        """Scores of validated inputs."""
