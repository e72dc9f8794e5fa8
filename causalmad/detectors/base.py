"""The detector contract, shared by the scrubbing detector and every baseline.

Modelled on scikit-learn estimators (Pedregosa et al. 2011; Buitinck et al., "API design
for machine learning software", 2013): ``__init__`` only stores arguments; ``fit(trusted)``
learns, sets ``*_`` attributes and returns ``self``; later methods check the detector is
fitted; ``get_params`` / ``set_params`` / ``repr`` come from the ``__init__`` signature, so
``sklearn.base.clone`` works. One convention for every detector (as in PyOD, Zhao et al.
2019): **higher score = more anomalous**, and ``decision_function`` is the score.
``predict`` flags inputs above a threshold taken from trusted scores held out of fitting,
at a false-positive rate the user picks (``threshold_``: the one at
[`DEFAULT_FPR`][causalmad.detectors.base.DEFAULT_FPR]).
"""

from __future__ import annotations

import inspect
from abc import ABC, abstractmethod
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar

import numpy as np
import torch
from sklearn.base import clone

try:  # scikit-learn >= 1.6 reads estimator tags (check_is_fitted among others)
    from sklearn.utils import Tags, TargetTags
except ImportError:  # pragma: no cover - older scikit-learn has no tag objects
    Tags = TargetTags = None

from causalmad.errors import InputError, NotFittedError, PersistenceError, close_matches
from causalmad.models import ModelAdapter, adapt

DETECTORS: dict[str, type[Detector]] = {}

#: false-positive rate of ``Detector.threshold_`` and of ``predict``'s default
DEFAULT_FPR = 0.01


@dataclass
class ScoreDetails:
    """What one call of [`Detector.score_details`][causalmad.Detector.score_details]
    computed: the scores and, for detectors that have them, the per-input parts they were
    combined from (the scrubbing detector: ``divergences``, ``z`` and ``unmatched``,
    ``[n, C]`` over its ``column_names_``). Returned, never stored on the detector: scoring
    changes nothing.
    """

    scores: np.ndarray
    parts: dict[str, np.ndarray] = field(default_factory=dict)


@dataclass
class ExplainResult:
    """Why one input scored as it did: what [`Detector.explain`][causalmad.Detector.explain] returns.

    [`to_dict`][causalmad.ExplainResult.to_dict] gives the same data as a JSON-ready dict
    (what ``causalmad explain`` prints); indexing reads that dict, so ``result["score"]``
    works as it did when ``explain`` returned a dict. Detectors with parts to report put
    them in ``details`` (an activation detector: ``aggregate`` and per-site ``sites``) or
    return a subclass with typed fields (the scrubbing detector:
    [`ScrubbingExplainResult`][causalmad.ScrubbingExplainResult]).

    Attributes:
        score: the input's anomaly score (higher = more anomalous).
        threshold: the score threshold at false-positive rate ``fpr``, from trusted
            inputs held out of fitting.
        fpr: the false-positive rate the threshold was taken at.
        flagged: whether ``score`` is above ``threshold``.
        details: detector-specific parts, JSON-ready, in the order
            [`to_dict`][causalmad.ExplainResult.to_dict] lists them after the four fields
            above.

    Example:
        >>> why = ExplainResult(score=3.2, threshold=2.5, fpr=0.01, flagged=True)
        >>> why["flagged"], why.to_dict()
        (True, {'score': 3.2, 'threshold': 2.5, 'fpr': 0.01, 'flagged': True})
    """

    score: float
    threshold: float
    fpr: float
    flagged: bool
    details: dict[str, Any] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        """The result as a JSON-ready dict.

        Returns:
            ``score``, ``threshold``, ``fpr`` and ``flagged``, then the detector's
            parts (``details``, or a subclass's own fields).
        """
        return {
            "score": self.score,
            "threshold": self.threshold,
            "fpr": self.fpr,
            "flagged": self.flagged,
            **self.details,
        }

    def __getitem__(self, key: str) -> Any:
        """``result[key]`` is ``result.to_dict()[key]`` (``explain`` once returned a dict).

        Raises:
            KeyError: if ``to_dict()`` has no such key.
        """
        return self.to_dict()[key]

    def __contains__(self, key: object) -> bool:
        return key in self.to_dict()

    def get(self, key: str, default: Any = None) -> Any:
        """``to_dict().get(key, default)``, as on the dict ``explain`` once returned.

        Args:
            key: a key of [`to_dict`][causalmad.ExplainResult.to_dict].
            default: what to return if there is no such key.

        Returns:
            The value under ``key``, or ``default``.
        """
        return self.to_dict().get(key, default)


def register(name: str) -> Callable[[type[Detector]], type[Detector]]:
    """Class decorator adding a detector to [`DETECTORS`][causalmad.DETECTORS] under ``name``.

    Args:
        name: the registry key (also the detector's ``name`` and its name in the CLI and
            in saved folders).

    Returns:
        The decorator, which registers the class and returns it unchanged.

    Raises:
        ValueError: if a detector of that name is already registered.
    """

    def deco(cls: type[Detector]) -> type[Detector]:
        if name in DETECTORS:
            raise ValueError(f"A detector named {name!r} is already registered.")
        DETECTORS[name] = cls
        cls.name = name
        return cls

    return deco


def split_indices(n: int, fractions: tuple[float, ...], random_state: int) -> list[np.ndarray]:
    """Disjoint random index splits of ``range(n)`` with the given fractions.

    Args:
        n: how many indices to split.
        fractions: the share of each part; the last part takes what rounding leaves.
        random_state: seed of the permutation.

    Returns:
        One index array per fraction; together they hold every index once.

    Example:
        >>> [len(p) for p in split_indices(10, (0.5, 0.3, 0.2), random_state=0)]
        [5, 3, 2]
    """
    perm = np.random.default_rng(random_state).permutation(n)
    bounds = np.cumsum([0, *[int(round(f * n)) for f in fractions[:-1]]])
    parts = [perm[a:b] for a, b in zip(bounds[:-1], bounds[1:])]
    parts.append(perm[bounds[-1] :])
    return parts


class Detector(ABC):
    """Base class: ``fit`` on trusted data, ``score`` untrusted data.

    Conventions every detector follows (they make persistence and
    ``sklearn.base.clone`` generic, see ``causalmad.persistence``): ``__init__``
    stores each argument under its own name and does nothing else; everything ``fit``
    learns lives in attributes ending in ``_`` and holds only numpy arrays, tensors,
    plain Python values and causalmad's own records (sites, readouts, explanations).
    Anything else (a scikit-learn estimator, say) is named in ``_transient`` and rebuilt
    from the stored state by ``_restore``.

    Args:
        model: the network (TransformerLens bridge, Hugging Face model, ``nn.Module``) or
            a [`ModelAdapter`][causalmad.ModelAdapter].
        random_state: seed of every random choice.

    Attributes:
        heldout_scores_: scores of trusted inputs that ``fit`` held out of fitting; the
            thresholds come from them.
        threshold_: the score above which ``predict`` flags an input at
            [`DEFAULT_FPR`][causalmad.detectors.base.DEFAULT_FPR]
            (``threshold(DEFAULT_FPR)``), set by ``fit``.
        input_shape_: the per-example shape of the trusted inputs.
        needs_untrusted: class attribute: ``fit`` also takes an unlabeled batch of
            untrusted inputs (``fit(trusted, untrusted=...)``), e.g. QUE's untrusted
            covariance.
        accepts_untrusted: class attribute: ``fit`` may take such a batch, and fits without
            one too (the scrubbing detector's column weights); evaluation gives it the
            split, through ``adapt(untrusted)`` after one fit on trusted inputs.
        skyline: class attribute: the detector sees anomaly labels; tables mark it and
            never rank it.
    """

    name = "detector"
    min_trusted = 20
    needs_untrusted = False
    accepts_untrusted = False
    skyline = False
    _transient: tuple[str, ...] = ()
    heldout_scores_: np.ndarray

    def __init__(self, model: torch.nn.Module | ModelAdapter, random_state: int = 0) -> None:
        self.model = model
        self.random_state = random_state

    # the public API -------------------------------------------------------------
    def fit(self, trusted: torch.Tensor, untrusted: torch.Tensor | None = None) -> Detector:
        """Learn from trusted inputs only.

        Args:
            trusted: ``[n, ...]`` inputs on which the model behaves normally.
            untrusted: an unlabeled ``[m, ...]`` batch, for detectors with
                ``needs_untrusted`` (QUE, the skyline) or ``accepts_untrusted`` (scrubbing) only.

        Returns:
            ``self``, fitted.

        Raises:
            InputError: if the inputs do not fit the model (shape, dtype, NaN), are fewer
                than the detector needs, or ``untrusted`` is given where it is not used
                (or missing where it is).
        """
        adapter = adapt(self.model)
        x = adapter.check_inputs(trusted, "trusted inputs")
        if self.needs_untrusted and untrusted is None:
            raise InputError(
                f"{type(self).__name__} needs an unlabeled untrusted batch at fit time: "
                "fit(trusted, untrusted=batch)."
            )
        if not (self.needs_untrusted or self.accepts_untrusted) and untrusted is not None:
            raise InputError(f"{type(self).__name__} fits on trusted inputs only; do not pass untrusted=.")
        u = None if untrusted is None else adapter.check_inputs(untrusted, "untrusted inputs")
        if u is not None and tuple(u.shape[1:]) != tuple(x.shape[1:]):
            raise InputError(
                f"untrusted inputs have per-example shape {tuple(u.shape[1:])}, trusted "
                f"inputs {tuple(x.shape[1:])}."
            )
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
        self.threshold_ = self.threshold(DEFAULT_FPR)
        return self

    def score(self, inputs: torch.Tensor) -> np.ndarray:
        """Anomaly scores, higher = more anomalous.

        Args:
            inputs: ``[n, ...]`` inputs of the per-example shape the detector was fitted on.

        Returns:
            ``[n]`` float64 scores.

        Raises:
            NotFittedError: if the detector is not fitted.
            InputError: if the inputs do not fit the model or the fitted shape.
        """
        x = self._check(inputs)
        return np.asarray(self._score(x), dtype=np.float64)

    def score_details(self, inputs: torch.Tensor) -> ScoreDetails:
        """The scores of [`score`][causalmad.Detector.score] with the parts they were combined from.

        Args:
            inputs: ``[n, ...]`` inputs of the per-example shape the detector was fitted on.

        Returns:
            A [`ScoreDetails`][causalmad.ScoreDetails]; ``parts`` is empty for a detector without parts.

        Raises:
            NotFittedError: if the detector is not fitted.
            InputError: if the inputs do not fit the model or the fitted shape.
        """
        return ScoreDetails(self.score(inputs))

    def decision_function(self, inputs: torch.Tensor) -> np.ndarray:
        """scikit-learn's and PyOD's name for [`score`][causalmad.Detector.score] (the same numbers).

        As in PyOD, and unlike scikit-learn's outlier detectors, **higher = more
        anomalous**.

        Args:
            inputs: ``[n, ...]`` inputs of the per-example shape the detector was fitted on.

        Returns:
            ``[n]`` float64 scores.

        Raises:
            NotFittedError: if the detector is not fitted.
            InputError: if the inputs do not fit the model or the fitted shape.
        """
        return self.score(inputs)

    def threshold(self, fpr: float) -> float:
        """The score above which an input is flagged at false-positive rate ``fpr``.

        Args:
            fpr: the share of held-out trusted inputs allowed above the threshold, in (0, 1).

        Returns:
            The ``1 - fpr`` quantile of the held-out trusted scores (``heldout_scores_``).

        Raises:
            NotFittedError: if the detector is not fitted.
            InputError: if ``fpr`` is not in (0, 1).
        """
        self._require_fitted()
        if not 0 < fpr < 1:
            raise InputError(f"fpr must be in (0, 1), got {fpr}.")
        return float(np.quantile(np.asarray(self.heldout_scores_), 1 - fpr, method="higher"))

    def predict(self, inputs: torch.Tensor, fpr: float = DEFAULT_FPR) -> np.ndarray:
        """Flag the inputs that score above [`threshold`][causalmad.Detector.threshold] at ``fpr``.

        Args:
            inputs: ``[n, ...]`` inputs of the per-example shape the detector was fitted on.
            fpr: false-positive rate on held-out trusted inputs (default: ``threshold_``'s).

        Returns:
            ``[n]`` booleans, ``True`` = flagged as anomalous.

        Raises:
            NotFittedError: if the detector is not fitted.
            InputError: if ``fpr`` is not in (0, 1) or the inputs do not fit.
        """
        t = self.threshold(fpr)
        return self.score(inputs) > t

    def explain(self, example: torch.Tensor, top: int = 5, fpr: float = DEFAULT_FPR) -> ExplainResult:
        """Why one input scored as it did.

        Args:
            example: one input, with or without a leading batch axis of 1.
            top: how many parts (explanations, sites) to report, where the detector has any.
            fpr: false-positive rate of the reported threshold.

        Returns:
            An [`ExplainResult`][causalmad.ExplainResult] with ``score``, ``threshold`` (at ``fpr``), ``fpr``
            and ``flagged``, plus what the detector can say about its parts (the
            scrubbing detector's broken explanations and variables, an activation
            detector's per-site scores); ``to_dict()`` makes it JSON-ready.

        Raises:
            NotFittedError: if the detector is not fitted.
            InputError: if ``example`` is a batch of more than one input, or does not fit.
        """
        x = torch.as_tensor(example)
        x = x.unsqueeze(0) if x.ndim == len(getattr(self, "input_shape_", ())) else x
        if len(x) != 1:
            raise InputError(f"explain takes one input, got a batch of {len(x)}.")
        x = self._check(x)
        threshold = self.threshold(fpr)
        score = float(self._score(x)[0])
        return ExplainResult(score, threshold, fpr, bool(score > threshold), self._explain_parts(x, top))

    def _explain_parts(self, x: torch.Tensor, top: int) -> dict[str, Any]:
        """Detector-specific parts of [`explain`][causalmad.Detector.explain] for one validated input."""
        return {}

    # scikit-learn's estimator API ---------------------------------------------------
    @classmethod
    def _param_names(cls) -> list[str]:
        """The ``__init__`` arguments, in signature order (each stored under its name)."""
        params = list(inspect.signature(cls.__init__).parameters.values())[1:]
        if any(p.kind in (p.VAR_POSITIONAL, p.VAR_KEYWORD) for p in params):
            raise TypeError(
                f"{cls.__name__}.__init__ takes *args or **kwargs; a detector names every argument "
                "so that get_params, clone and persistence can find it."
            )
        return [p.name for p in params]

    def get_params(self, deep: bool = True) -> dict[str, Any]:
        """The constructor arguments, as scikit-learn's ``get_params``.

        Args:
            deep: also list the parameters of arguments that have ``get_params`` (an
                estimator passed in), as ``name__param``.

        Returns:
            Argument name -> the value stored under that name.

        Raises:
            TypeError: if a subclass breaks the convention that ``__init__`` stores each
                argument under its own name.

        Example:
            >>> import torch, causalmad as cm
            >>> det = cm.MahalanobisDetector(torch.nn.Linear(3, 2), aggregate="mean")
            >>> det.get_params()["aggregate"]
            'mean'
        """
        params: dict[str, Any] = {}
        for name in self._param_names():
            if name not in self.__dict__:
                raise TypeError(
                    f"{type(self).__name__}.__init__ does not store its argument {name!r} as "
                    f"self.{name}; scikit-learn's conventions (and persistence) need it."
                )
            value = self.__dict__[name]
            if deep and hasattr(value, "get_params") and not isinstance(value, type):
                params.update({f"{name}__{k}": v for k, v in value.get_params().items()})
            params[name] = value
        return params

    def set_params(self, **params: Any) -> Detector:
        """Set constructor arguments, as scikit-learn's ``set_params``.

        A fitted detector keeps what it learned until it is fitted again.

        Args:
            **params: argument name -> new value; ``name__param`` sets a parameter of an
                argument that has ``set_params``.

        Returns:
            ``self``.

        Raises:
            InputError: if a name is not a constructor argument (close matches suggested).

        Example:
            >>> import torch, causalmad as cm
            >>> det = cm.LOFDetector(torch.nn.Linear(3, 2)).set_params(n_neighbors=5)
            >>> det
            LOFDetector(model=Linear(...), n_neighbors=5)
        """
        names = self._param_names()
        nested: dict[str, dict[str, Any]] = {}
        for key, value in params.items():
            name, sub, rest = key.partition("__")
            if name not in names:
                raise InputError(
                    f"{type(self).__name__} has no parameter {name!r}; its parameters are "
                    f"{names}.{close_matches(name, names)}"
                )
            if sub:
                nested.setdefault(name, {})[rest] = value
            else:
                setattr(self, name, value)
        for name, sub_params in nested.items():
            inner = getattr(self, name)
            if not hasattr(inner, "set_params"):
                raise InputError(
                    f"{type(self).__name__}'s {name!r} is a {type(inner).__name__}, which has no "
                    f"set_params; cannot set {sorted(sub_params)} on it."
                )
            inner.set_params(**sub_params)
        return self

    def __repr__(self) -> str:
        """``Name(arg=value, ...)`` with the arguments that differ from their defaults;
        a model shows only its class name."""
        defaults = {n: p.default for n, p in inspect.signature(type(self).__init__).parameters.items()}
        shown = []
        for name in self._param_names():
            value = self.__dict__.get(name, defaults[name])
            if defaults[name] is not inspect.Parameter.empty and _same(value, defaults[name]):
                continue
            shown.append(f"{name}={_short_repr(value)}")
        return f"{type(self).__name__}({', '.join(shown)})"

    def __sklearn_clone__(self) -> Detector:
        """An unfitted copy with the same arguments, for ``sklearn.base.clone``.

        Every argument is deep-copied as scikit-learn's ``clone`` does, except ``model``:
        the network under audit is shared, not copied, since no detector changes it.
        """
        params = self.get_params(deep=False)
        return type(self)(**{k: v if k == "model" else clone(v, safe=False) for k, v in params.items()})

    def __sklearn_is_fitted__(self) -> bool:
        """Whether ``fit`` has run, for ``sklearn.utils.validation.check_is_fitted``."""
        return "heldout_scores_" in self.__dict__

    def __sklearn_tags__(self) -> Any:
        """scikit-learn's estimator tags: no scikit-learn estimator type (a detector's
        ``fit`` takes inputs to a model, not an ``X, y`` table), no target, needs ``fit``."""
        return Tags(estimator_type=None, target_tags=TargetTags(required=False))

    # persistence --------------------------------------------------------------------
    def save(self, path: str | Path, overwrite: bool = False) -> Path:
        """Save the fitted detector to the folder ``path`` (``config.json``,
        ``state.safetensors`` and their ``SHA256SUMS``; no pickle). Reload with
        [`load`][causalmad.Detector.load].

        The save is atomic: written beside ``path``, then renamed into place.
        ``overwrite=True`` replaces only a causalmad detector folder,
        which stays in place until the new folder is complete; any other folder or file
        raises [`PersistenceError`][causalmad.errors.PersistenceError] and is left untouched.

        Args:
            path: the folder to write.
            overwrite: replace an existing causalmad detector folder at ``path``.

        Returns:
            The folder written.

        Raises:
            NotFittedError: if the detector is not fitted.
            PersistenceError: if ``path`` exists (and ``overwrite`` is off or it is not a
                detector folder) or a constructor argument cannot be saved.
        """
        from causalmad.persistence import save_detector

        return save_detector(self, path, overwrite)

    @classmethod
    def load(
        cls, path: str | Path, model: Any, hypothesis: Any = None, trust_modified: bool = False
    ) -> Detector:
        """Load a detector saved with [`save`][causalmad.Detector.save]. ``model`` (and ``hypothesis``, if it
        was fitted with one) must be the ones it was fitted with: their fingerprints are
        checked, and a mismatch raises [`PersistenceError`][causalmad.errors.PersistenceError].

        Loading runs no code named in the folder. Every file must match the folder's
        ``SHA256SUMS``; a folder changed since it was saved (or saved by a causalmad
        whose checksum did not cover ``config.json``) raises, unless
        ``trust_modified=True``, which loads it with a
        [`CausalMADWarning`][causalmad.errors.CausalMADWarning].

        Args:
            path: a folder written by [`save`][causalmad.Detector.save].
            model: the model the detector was fitted on.
            hypothesis: the hypothesis it was fitted with, if any.
            trust_modified: load a folder whose files fail their checksums (with a warning).

        Returns:
            The fitted detector, scoring as it did when saved.

        Raises:
            PersistenceError: if the folder is missing, incomplete, changed since it was
                saved, from another model or hypothesis, or holds another detector class
                than the one ``load`` is called on.
        """
        from causalmad.persistence import load_detector

        det = load_detector(path, model, hypothesis, trust_modified=trust_modified)
        if cls is not Detector and not isinstance(det, cls):
            raise PersistenceError(f"{path} holds a {det.name!r} detector, not a {cls.__name__}.")
        return det

    def _get_state(self) -> dict[str, Any]:
        """What ``fit`` learned: every ``*_`` attribute except ``_transient`` ones."""
        skip = {"adapter_", "threshold_", *self._transient}  # threshold_: recomputed on load
        return {
            k: v for k, v in vars(self).items() if k.endswith("_") and not k.startswith("_") and k not in skip
        }

    def _set_state(self, state: dict[str, Any], adapter: ModelAdapter) -> None:
        self.adapter_ = adapter
        self.__dict__.update(state)
        if hasattr(adapter, "input_shape"):
            adapter.input_shape = tuple(self.input_shape_)  # type: ignore[attr-defined]
        self.input_shape_ = tuple(self.input_shape_)
        self._check_state()
        self.threshold_ = self.threshold(DEFAULT_FPR)
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

    #: stored arrays scoring does arithmetic with: name -> (dimensions, the attribute whose
    #: length their last axis must have, or ``None``), checked on loading
    _stored_arrays: ClassVar[dict[str, tuple[int, str | None]]] = {"heldout_scores_": (1, None)}

    def _check_state(self) -> None:
        """Check the stored arrays of ``_stored_arrays`` before anything computes with
        them (a folder edited under ``trust_modified``): ``ValueError`` naming the array,
        which loading reports as a corrupted folder."""
        for name, (ndim, like) in self._stored_arrays.items():
            if name not in self.__dict__:  # a folder saved before the attribute existed
                continue
            value = np.asarray(getattr(self, name))
            if value.dtype != bool:  # flags stay flags
                value = value.astype(np.float64)  # ValueError if not numbers
            want = len(getattr(self, like)) if like is not None and like in self.__dict__ else None
            if value.ndim != ndim or (want is not None and value.shape[-1] != want):
                raise ValueError(
                    f"{name} has shape {value.shape}; expected {ndim} dimension(s)"
                    + (f", the last of length {want} (one per {like})" if want is not None else "")
                )
            setattr(self, name, value)

    @abstractmethod
    def _fit(self, trusted: torch.Tensor) -> None:
        """Learn; must set ``heldout_scores_`` (scores of trusted inputs not fitted on)."""

    @abstractmethod
    def _score(self, inputs: torch.Tensor) -> np.ndarray:
        """Scores of validated inputs."""


def _same(value: Any, default: Any) -> bool:
    """Whether an argument equals its default (arrays and tensors never do, unless the
    very object)."""
    if value is default:
        return True
    if type(value) is not type(default) or isinstance(value, (np.ndarray, torch.Tensor)):
        return False
    try:
        return bool(value == default)
    except (TypeError, ValueError, RuntimeError):
        return False


def _short_repr(value: Any, limit: int = 60) -> str:
    """A one-line repr: a module's class name only, anything else cut at ``limit``."""
    if isinstance(value, (torch.nn.Module, ModelAdapter)):
        return f"{type(value).__name__}(...)"
    text = " ".join(repr(value).split())
    return text if len(text) <= limit else text[: limit - 3] + "..."
