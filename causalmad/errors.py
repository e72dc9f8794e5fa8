"""The exception hierarchy of causalmad.

Every error causalmad raises for bad input derives from
[`CausalMADError`][causalmad.errors.CausalMADError], and also from the builtin exception a
user would naturally catch (``ValueError``, ``KeyError``), so ``except ValueError`` keeps
working in code that does not know causalmad.
"""

from __future__ import annotations

import difflib
from collections.abc import Iterable


class CausalMADError(Exception):
    """Base class of every error causalmad raises on purpose."""


class HypothesisError(CausalMADError, ValueError):
    """A hypothesis graph is malformed (cycle, unknown parent, bad mechanism, ...)."""


class SiteError(CausalMADError, KeyError):
    """A site names a hook, module, position or head that the model does not have."""

    def __str__(self) -> str:  # KeyError would otherwise quote the whole message
        return str(self.args[0]) if self.args else ""


class InputError(CausalMADError, ValueError):
    """Inputs do not fit the model (shape, dtype, range, NaN) or a dataset is too small."""


class NotFittedError(CausalMADError, ValueError, AttributeError):
    """A detector method that needs ``fit`` was called before ``fit``."""


class AlignmentError(CausalMADError, ValueError):
    """Alignment could not be carried out as asked (no candidate site, no usable pairs)."""


class TaskError(CausalMADError, KeyError):
    """An unknown task name, or a task that could not be built."""

    def __str__(self) -> str:
        return str(self.args[0]) if self.args else ""


class PersistenceError(CausalMADError, ValueError):
    """A detector folder cannot be written or read: exists, incomplete, corrupted, or
    saved from another model or hypothesis."""


class WriteError(CausalMADError, OSError):
    """A file or folder could not be written (a full disk, no permission); what was at
    the destination before is left as it was."""


class MissingExtraError(CausalMADError, ImportError):
    """A feature needs an optional extra that is not installed (``ray``, ``tracr``); the
    message names the ``pip install`` command that adds it."""


class CausalMADWarning(UserWarning):
    """Something causalmad was told to do anyway, or did on its own, that the user should
    know of (a detector folder loaded with ``trust_modified=True`` despite a checksum
    mismatch, say)."""


def close_matches(name: str, candidates: Iterable[str], n: int = 3) -> str:
    """Return a ``" Did you mean ...?"`` suffix for an unknown ``name``, or ``""``."""
    matches = difflib.get_close_matches(name, list(candidates), n=n, cutoff=0.5)
    if not matches:
        return ""
    return " Did you mean " + " or ".join(repr(m) for m in matches) + "?"
