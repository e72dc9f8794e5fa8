"""Sites: places inside a model where an activation can be read and patched.

A site names a hook (TransformerLens hook name or module path), the token positions it
covers (fixed, or computed per example), an optional attention head, and an optional
subspace: an orthonormal basis ``[d, k]`` of the part of the activation the site means.
Heads are a special case of subspaces (the head's coordinates in the flattened
``[batch, pos, n_heads * d_head]`` output of ``attn.hook_z``), so every intervention in
causalmad is one operation: ``act + (source - act) @ B @ B.T`` at the site's positions.
"""

from __future__ import annotations

import operator
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import torch

from causalmad.errors import SiteError

#: What a site's ``positions`` may be: fixed positions, a function of one example, or
#: ``None`` (every position).
Positions = tuple[int, ...] | Callable[[Any], Sequence[int]] | None


@dataclass(frozen=True, eq=False)
class Site:
    """A place in the model.

    Args:
        hook: hook or module name, e.g. ``"blocks.0.hook_resid_post"``.
        positions: token positions (negative counts from the end), a function
            ``example -> positions`` for per-example positions, or ``None`` for every
            position (and for models whose activations have no position axis).
        head: attention head index, for hooks that pack heads (``attn.hook_z``).
        basis: ``[d, k]`` orthonormal columns spanning the subspace the site means (in the
            head's coordinates when ``head`` is set); ``None`` for the whole activation.
        label: a short human-readable description of the subspace (``"pca top-8"``).

    An integer (a Python ``int`` or any integral type, NumPy's included) or a list of
    positions is stored as a tuple of Python ``int``, and ``basis`` as a float32 tensor.

    Raises:
        SiteError: if ``positions`` is an empty sequence or holds a non-integer, or
            ``basis`` is not ``[d, k]`` with ``0 < k <= d``.

    Example:
        >>> Site("blocks.0.hook_resid_post", positions=(7,)).key
        'blocks.0.hook_resid_post[pos 7]'
    """

    hook: str
    positions: Positions = None
    head: int | None = None
    basis: torch.Tensor | None = field(default=None, repr=False)
    label: str = ""

    def __post_init__(self) -> None:
        if _integer(self.positions) is not None:
            object.__setattr__(self, "positions", (self.positions,))
        elif isinstance(self.positions, list):
            object.__setattr__(self, "positions", tuple(self.positions))
        if isinstance(self.positions, tuple):
            ints = [_integer(p) for p in self.positions]
            if not ints or any(i is None for i in ints):
                raise SiteError(f"Site positions must be a non-empty tuple of ints, got {self.positions!r}.")
            # plain ints (not NumPy's), so keys, equality and saved folders do not depend on the type
            object.__setattr__(self, "positions", tuple(ints))
        if self.basis is not None:
            b = torch.as_tensor(self.basis, dtype=torch.float32)
            if b.ndim != 2 or b.shape[1] > b.shape[0] or b.shape[1] == 0:
                raise SiteError(f"Site basis must be [d, k] with 0 < k <= d, got {tuple(b.shape)}.")
            object.__setattr__(self, "basis", b)

    @property
    def key(self) -> str:
        """A readable unique-enough name: hook, positions, head and subspace label."""
        parts = [self.hook]
        if isinstance(self.positions, tuple):
            parts.append(f"[pos {','.join(str(p) for p in self.positions)}]")
        elif callable(self.positions):
            parts.append(f"[pos {getattr(self.positions, '__name__', 'fn')}]")
        if self.head is not None:
            parts.append(f"[head {self.head}]")
        if self.basis is not None:
            parts.append(f"[{self.label or f'subspace k={self.basis.shape[1]}'}]")
        return "".join(parts)

    def __repr__(self) -> str:
        return f"Site({self.key!r})"

    def with_basis(self, basis: torch.Tensor, label: str) -> Site:
        """The same place, restricted to a subspace.

        Args:
            basis: ``[d, k]`` orthonormal columns spanning the subspace (in the head's
                coordinates when the site has a ``head``); replaces any basis the site has.
            label: a short description of the subspace, shown in [`key`][causalmad.Site.key].

        Returns:
            A new [`Site`][causalmad.Site] with the same hook, positions and head.

        Raises:
            SiteError: if ``basis`` is not ``[d, k]`` with ``0 < k <= d``.
        """
        return Site(self.hook, self.positions, self.head, basis, label)

    def position_index(self, inputs: torch.Tensor) -> torch.Tensor | None:
        """The site's positions in each input of a batch.

        Args:
            inputs: ``[n, pos, ...]`` inputs (``[n]``: one position each); a positions
                function is called on each row.

        Returns:
            ``[n, p]`` int64 positions in ``[0, pos)`` (negative ones counted from the
            end), or ``None`` if the site covers every position.

        Raises:
            SiteError: if the positions function does not return the same number of
                positions for every input, or a position is out of range.
        """
        if self.positions is None:
            return None
        n, seq = inputs.shape[0], inputs.shape[1] if inputs.ndim > 1 else 1
        if callable(self.positions):
            rows = [list(self.positions(ex)) for ex in inputs]
            if len({len(r) for r in rows}) != 1:
                raise SiteError(
                    f"Site {self.key}: the positions function must return the same number of positions "
                    "for every example."
                )
            pos = torch.tensor(rows, dtype=torch.long)
        else:
            pos = torch.tensor(self.positions, dtype=torch.long).expand(n, -1)
        pos = torch.where(pos < 0, pos + seq, pos)
        if (pos < 0).any() or (pos >= seq).any():
            raise SiteError(f"Site {self.key}: position out of range for inputs of length {seq}.")
        return pos

    def projection(self, width: int, d_head: int = 0) -> torch.Tensor | None:
        """The site's subspace as a basis of the hook's whole last axis.

        Args:
            width: the size of the activation's last axis (``n_heads * d_head`` for a hook
                that packs heads).
            d_head: the width of one head; needed (positive) when the site has a ``head``.

        Returns:
            ``[width, k]`` float32 columns: the site's ``basis`` itself without a head;
            with one, the head's rows hold the basis (the identity if the site has none,
            ``k = d_head``) and every other row is zero. ``None`` for a site without head
            or basis (the whole activation).

        Raises:
            SiteError: if the basis does not have ``width`` rows (``d_head`` with a head),
                or the site has a head and ``width`` does not pack heads of ``d_head``
                (``d_head <= 0`` or not a divisor) or has no such head.
        """
        if self.head is None:
            if self.basis is not None and self.basis.shape[0] != width:
                raise SiteError(
                    f"Site {self.key}: basis has {self.basis.shape[0]} rows but the activation is "
                    f"{width} wide."
                )
            return self.basis
        if d_head <= 0 or width % d_head:
            raise SiteError(f"Site {self.key}: hook {self.hook!r} does not pack attention heads.")
        n_heads = width // d_head
        if not 0 <= self.head < n_heads:
            raise SiteError(f"Site {self.key}: head {self.head} out of range; the hook has {n_heads} heads.")
        inner = self.basis if self.basis is not None else torch.eye(d_head)
        if inner.shape[0] != d_head:
            raise SiteError(f"Site {self.key}: a head basis must have d_head={d_head} rows.")
        full = torch.zeros(width, inner.shape[1])
        full[self.head * d_head : (self.head + 1) * d_head] = inner
        return full


def _integer(value: object) -> int | None:
    """``value`` as a Python ``int`` if it is an integer of any type (``bool`` included, as
    ``isinstance(value, int)`` has it; NumPy's integers; anything with ``__index__``),
    else ``None``."""
    try:
        return operator.index(value)  # type: ignore[arg-type]
    except TypeError:
        return None
