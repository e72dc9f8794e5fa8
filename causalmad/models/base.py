"""What every adapter provides (:class:`ModelAdapter`), the records adapters exchange with
the engine (:class:`HookInfo`, :class:`CleanWindow`), and the input checks adapters share."""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass

import torch
from torch import nn

from causalmad.errors import InputError, SiteError, close_matches
from causalmad.hypothesis import Readout


@dataclass(frozen=True)
class HookInfo:
    """A hook that alignment may search.

    Attributes:
        name: hook / module name.
        layer: depth index used to order hooks (``-1`` for embeddings).
        component: short component label (``resid_pre``, ``attn_z``, ``mlp_out``, ...).
        n_heads: number of heads packed in the hook's last axis (0 if none).
        d_head: width of one head in the last axis.
    """

    name: str
    layer: int
    component: str
    n_heads: int = 0
    d_head: int = 0


@dataclass
class CleanWindow:
    """The clean run of a windowed run's inputs (:meth:`ModelAdapter.run_window`), which
    the run reuses at every position no patch reaches.

    Attributes:
        kv: for each block the run computes, the clean keys and values of every input at
            every position, ``[inputs, heads, pos, d_head]`` each (:meth:`ModelAdapter.prefix_kv`).
        resid: for each block the run computes, its clean input, then the last block's
            clean output: ``[inputs, pos, d]`` each (the activations of
            :meth:`ModelAdapter.window_inputs`, then of :meth:`ModelAdapter.final_hook`).
        rows: ``[rows]`` the input each row of the run is (an index into ``kv`` and ``resid``).
        touched: for each window point (:meth:`ModelAdapter.window_point`) the run
            patches, the window positions its patches write (``None``: every position).
    """

    kv: Sequence[tuple[torch.Tensor, torch.Tensor]]
    resid: Sequence[torch.Tensor]
    rows: torch.Tensor
    touched: Mapping[str, torch.Tensor | None]


class ModelAdapter(ABC):
    """Run a model, validate inputs, and resolve hook names for interventions."""

    model: nn.Module
    has_positions: bool

    @abstractmethod
    def forward(self, inputs: torch.Tensor) -> torch.Tensor:
        """Model output logits: ``[batch, pos, classes]`` or ``[batch, classes]``."""

    @abstractmethod
    def check_inputs(self, inputs: object, what: str = "inputs") -> torch.Tensor:
        """Validate a batch and return it as a tensor; raise :class:`InputError` if bad."""

    @abstractmethod
    def hook_names(self) -> list[str]:
        """Every name that :meth:`module` accepts."""

    @abstractmethod
    def candidate_hooks(self) -> list[HookInfo]:
        """The hooks alignment searches by default, in model order."""

    @abstractmethod
    def final_hook(self) -> str:
        """The hook whose output feeds the readout (last residual stream)."""

    def head_width(self, hook: str) -> int:
        """Width of one attention head packed in ``hook``'s last axis (0: no heads)."""
        return 0

    def module(self, name: str) -> nn.Module:
        """The module whose output a site named ``name`` patches."""
        names = self.hook_names()
        if name not in names:
            raise SiteError(
                f"The model has no hook or module named {name!r}.{close_matches(name, names)} "
                f"List the names with adapter.hook_names()."
            )
        return self.model.get_submodule(name)

    @property
    def device(self) -> torch.device:
        for p in self.model.parameters():
            return p.device
        return torch.device("cpu")

    def width(self, hook: str, example: torch.Tensor) -> int:
        """Width of ``hook``'s activation (last axis; flattened for position-less models),
        measured on one example the first time and remembered."""
        cache: dict[str, int] = self.__dict__.setdefault("_widths", {})
        if hook not in cache:
            from causalmad.interventions import capture  # interventions imports this module
            from causalmad.sites import Site

            cache[hook] = int(capture(self, example[:1], [Site(hook)])[0].shape[-1])
        return cache[hook]

    def resume_point(self, hooks: Sequence[str]) -> str | None:
        """A hook before every hook in ``hooks`` from whose output the model can run on
        (:meth:`run_from`), or ``None`` to run from the start. Scrubbing caches that
        output once per input and reruns only the rest of the network."""
        return None

    def run_from(self, point: str, act: torch.Tensor, inputs: torch.Tensor | None = None) -> torch.Tensor:
        """Logits of the model run on from :meth:`resume_point` ``point``'s output ``act``
        (``inputs``: the rows' inputs, for adapters that need more than ``act``, such as
        the attention mask of padded token ids)."""
        raise NotImplementedError(f"{type(self).__name__} cannot resume from {point!r}.")

    # ---- windowed runs (optional): a causal model recomputes only positions from the
    # earliest patch on (see TransformerLensAdapter.run_window); the defaults say "no".
    def can_window(self, hooks: Sequence[str]) -> bool:
        """Whether :meth:`run_window` can patch every hook in ``hooks``."""
        return False

    def window_point(self, hook: str) -> str:
        """The name :meth:`run_window` knows ``hook`` by."""
        return hook

    def window_inputs(self, point: str) -> list[str]:
        """Hooks whose clean outputs :meth:`prefix_kv` turns into the keys and values a
        windowed run from ``point`` needs."""
        raise NotImplementedError(f"{type(self).__name__} has no windowed run.")

    def prefix_kv(self, hook: str, act: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Keys and values computed from the clean activation ``act`` at ``hook``."""
        raise NotImplementedError(f"{type(self).__name__} has no windowed run.")

    def run_window(
        self,
        point: str,
        start: int,
        act: torch.Tensor,
        prefix_kv: Sequence[tuple[torch.Tensor, torch.Tensor]],
        patches: dict[str, list[Callable[[torch.Tensor], torch.Tensor]]],
        readout_start: int | None = None,
        clean: CleanWindow | None = None,
    ) -> torch.Tensor:
        """Logits of a causal model run on from ``point`` for positions ``start`` onwards
        only, reusing ``clean`` wherever no patch reaches (see :class:`TransformerLensAdapter`)."""
        raise NotImplementedError(f"{type(self).__name__} has no windowed run.")

    def activation_bytes_per_row(self, example: torch.Tensor) -> int:
        """Bytes of every leaf module's output in one forward pass on one input: an upper
        bound on what one more row in a batch costs (memory budgets use it)."""
        if self._row_bytes is None:
            total = [0]

            def count(_m: nn.Module, _a: object, out: object) -> None:
                t = out[0] if isinstance(out, (tuple, list)) and out else out
                if isinstance(t, torch.Tensor):
                    total[0] += t.numel() * t.element_size()

            leaves = [m for m in self.model.modules() if not list(m.children())]
            handles = [m.register_forward_hook(count) for m in leaves]
            try:
                with torch.no_grad():
                    self.forward(example[:1].to(self.device))
            finally:
                for h in handles:
                    h.remove()
            self._row_bytes = max(total[0], 1)
        return self._row_bytes

    _row_bytes: int | None = None

    def run(self, inputs: torch.Tensor, batch_size: int = 1024) -> torch.Tensor:
        """Plain forward in chunks, no gradients; returns logits on the CPU."""
        outs = []
        with torch.no_grad():
            for i in range(0, len(inputs), batch_size):
                outs.append(self.forward(inputs[i : i + batch_size].to(self.device)).float().cpu())
        return torch.cat(outs) if outs else torch.empty(0)

    def run_readouts(
        self, inputs: torch.Tensor, readouts: Sequence[Readout], batch_size: int = 1024
    ) -> list[torch.Tensor]:
        """Log-probabilities ``[n, classes]`` over each readout's classes under a plain
        forward (no interventions), on the CPU. Adapters with a cheaper forward that
        computes only the positions read override this (the same function up to float
        rounding)."""
        logits = self.run(inputs, batch_size)
        return [torch.log_softmax(r.select(logits).float(), dim=-1) for r in readouts]


def _check_finite_tensor(inputs: object, what: str) -> torch.Tensor:
    if not isinstance(inputs, torch.Tensor):
        try:
            inputs = torch.as_tensor(inputs)
        except Exception:
            raise InputError(f"{what} must be a tensor or array-like, got {type(inputs).__name__}.") from None
    if inputs.ndim == 0:
        raise InputError(f"{what} must be a batch (first axis = examples), got a scalar.")
    if len(inputs) == 0:
        raise InputError(f"{what} is empty; pass at least one example.")
    if inputs.is_floating_point() and not torch.isfinite(inputs).all():
        bad = (~torch.isfinite(inputs)).reshape(len(inputs), -1).any(1).nonzero().flatten()
        raise InputError(
            f"{what} contain NaN or infinite values in {len(bad)} example(s) "
            f"(first at index {int(bad[0])}); clean or drop them before calling causalmad."
        )
    return inputs


def _check_token_ids(
    inputs: object,
    what: str,
    max_positions: int | None,
    positions_name: str,
    vocab: int | None,
    padding: str = "",
) -> torch.Tensor:
    """``[batch, pos]`` int64 token ids, or :class:`InputError` saying what is wrong."""
    x = _check_finite_tensor(inputs, what)
    if x.is_floating_point():
        if not torch.equal(x, x.round()):
            raise InputError(f"{what} must be integer token ids, got non-integer floats.")
        x = x.long()
    if x.ndim != 2:
        raise InputError(
            f"{what} must have shape [batch, pos] of token ids{padding}, got shape {tuple(x.shape)}."
        )
    if max_positions and x.shape[1] > max_positions:
        raise InputError(
            f"{what} have {x.shape[1]} positions but the model takes at most "
            f"{positions_name}={max_positions}."
        )
    lo, hi = int(x.min()), int(x.max())
    if lo < 0 or (vocab and hi >= vocab):
        raise InputError(
            f"{what} contain token id {lo if lo < 0 else hi}, outside the model's vocabulary [0, {vocab})."
        )
    return x.long()
