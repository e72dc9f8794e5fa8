"""What every adapter provides ([`ModelAdapter`][causalmad.ModelAdapter]), the records adapters exchange with
the engine (``HookInfo``, ``CleanWindow``), and the input checks adapters share."""

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
    """The clean run of a windowed run's inputs
    ([`ModelAdapter.run_window`][causalmad.ModelAdapter.run_window]), which the run reuses
    at every position no patch reaches.

    Attributes:
        kv: for each block the run computes, the clean keys and values of every input at
            every position, ``[inputs, heads, pos, d_head]`` each
            ([`ModelAdapter.prefix_kv`][causalmad.ModelAdapter.prefix_kv]).
        resid: for each block the run computes, its clean input, then the last block's clean
            output: ``[inputs, pos, d]`` each (the activations of
            [`ModelAdapter.window_inputs`][causalmad.ModelAdapter.window_inputs], then of
            [`ModelAdapter.final_hook`][causalmad.ModelAdapter.final_hook]).
        rows: ``[rows]`` the input each row of the run is (an index into ``kv`` and ``resid``).
        touched: for each window point
            ([`ModelAdapter.window_point`][causalmad.ModelAdapter.window_point]) the run
            patches, the window positions its patches write (``None``: every position).
    """

    kv: Sequence[tuple[torch.Tensor, torch.Tensor]]
    resid: Sequence[torch.Tensor]
    rows: torch.Tensor
    touched: Mapping[str, torch.Tensor | None]


class ModelAdapter(ABC):
    """Run a model, validate inputs, and resolve hook names for interventions.

    A new kind of model implements the abstract methods
    ([`forward`][causalmad.ModelAdapter.forward],
    [`check_inputs`][causalmad.ModelAdapter.check_inputs],
    [`hook_names`][causalmad.ModelAdapter.hook_names],
    [`candidate_hooks`][causalmad.ModelAdapter.candidate_hooks],
    [`final_hook`][causalmad.ModelAdapter.final_hook]); the others have working defaults,
    and the resumed and windowed runs
    ([`resume_point`][causalmad.ModelAdapter.resume_point],
    [`can_window`][causalmad.ModelAdapter.can_window]) are optional fast paths that default
    to "not available".

    Attributes:
        model: the wrapped network.
        has_positions: class attribute: whether activations have a position axis
            (``[batch, pos, d]``); without one they are flattened to ``[batch, d]``.
    """

    model: nn.Module
    has_positions: bool

    @abstractmethod
    def forward(self, inputs: torch.Tensor) -> torch.Tensor:
        """Run the model on a batch.

        Args:
            inputs: a batch as [`check_inputs`][causalmad.ModelAdapter.check_inputs] returns
                it, on the model's device.

        Returns:
            The output logits: ``[batch, pos, classes]``, or ``[batch, classes]`` for a
            model without a position axis.
        """

    @abstractmethod
    def check_inputs(self, inputs: object, what: str = "inputs") -> torch.Tensor:
        """Validate a batch before any forward pass.

        Args:
            inputs: a tensor or array-like batch, first axis = examples.
            what: how the batch is named in error messages (``"trusted inputs"``).

        Returns:
            The batch as a tensor of the dtype the model takes.

        Raises:
            InputError: if the batch does not fit the model (shape, dtype, range, NaN).
        """

    @abstractmethod
    def hook_names(self) -> list[str]:
        """Every name that [`module`][causalmad.ModelAdapter.module] accepts.

        Returns:
            The hook and module names of the model.
        """

    @abstractmethod
    def candidate_hooks(self) -> list[HookInfo]:
        """The hooks alignment searches by default.

        Returns:
            One ``HookInfo`` per hook, in model order.
        """

    @abstractmethod
    def final_hook(self) -> str:
        """The hook whose output feeds the readout.

        Returns:
            Its name (the last residual stream, in a transformer).
        """

    def head_width(self, hook: str) -> int:
        """Width of one attention head packed in a hook's last axis.

        Args:
            hook: a hook name.

        Returns:
            ``d_head``, or 0 if the hook does not pack heads (the default for every hook).
        """
        return 0

    def module(self, name: str) -> nn.Module:
        """The module whose output a site named ``name`` patches.

        Args:
            name: a hook or module name, one of [`hook_names`][causalmad.ModelAdapter.hook_names].

        Returns:
            The submodule of the model under that name.

        Raises:
            SiteError: if the model has no such name (close matches suggested).
        """
        names = self.hook_names()
        if name not in names:
            raise SiteError(
                f"The model has no hook or module named {name!r}.{close_matches(name, names)} "
                f"List the names with adapter.hook_names()."
            )
        return self.model.get_submodule(name)

    @property
    def device(self) -> torch.device:
        """The device of the model's first parameter (the CPU for a model without any)."""
        for p in self.model.parameters():
            return p.device
        return torch.device("cpu")

    def width(self, hook: str, example: torch.Tensor) -> int:
        """Width of ``hook``'s activation (last axis; flattened for position-less models),
        measured on one example the first time and remembered.

        Args:
            hook: a hook name.
            example: a batch of checked inputs; its first row is run once per hook.

        Returns:
            The width.

        Raises:
            SiteError: if the model has no such hook, its output is not a tensor, or it is
                not ``[batch, pos, d]`` in a model with positions.
            CausalMADError: if the hook never fired during the forward pass.
        """
        cache: dict[str, int] = self.__dict__.setdefault("_widths", {})
        if hook not in cache:
            from causalmad.interventions import capture  # interventions imports this module
            from causalmad.sites import Site

            cache[hook] = int(capture(self, example[:1], [Site(hook)])[0].shape[-1])
        return cache[hook]

    def resume_point(self, hooks: Sequence[str]) -> str | None:
        """A hook before every hook in ``hooks`` from whose output the model can run on
        ([`run_from`][causalmad.ModelAdapter.run_from]), or ``None`` to run from the start.
        Scrubbing caches that output once per input and reruns only the rest of the network.

        Args:
            hooks: the hooks a run patches.

        Returns:
            The hook's name, or ``None`` (the default: no resumed runs).
        """
        return None

    def run_from(self, point: str, act: torch.Tensor, inputs: torch.Tensor | None = None) -> torch.Tensor:
        """Logits of the model run on from
        [`resume_point`][causalmad.ModelAdapter.resume_point] ``point``'s output.

        Args:
            point: a hook that [`resume_point`][causalmad.ModelAdapter.resume_point] returned.
            act: ``point``'s output for each row, as a clean or patched run computed it.
            inputs: the rows' inputs, for adapters that need more than ``act``, such as
                the attention mask of padded token ids.

        Returns:
            The logits, as [`forward`][causalmad.ModelAdapter.forward] returns them.

        Raises:
            NotImplementedError: always, in the default (an adapter whose
                [`resume_point`][causalmad.ModelAdapter.resume_point] returns a hook overrides this).
        """
        raise NotImplementedError(f"{type(self).__name__} cannot resume from {point!r}.")

    # ---- windowed runs (optional): a causal model recomputes only positions from the
    # earliest patch on (see TransformerLensAdapter.run_window); the defaults say "no".
    def can_window(self, hooks: Sequence[str]) -> bool:
        """Whether [`run_window`][causalmad.ModelAdapter.run_window] can patch every hook in ``hooks``.

        Args:
            hooks: the hooks a run patches.

        Returns:
            ``False`` in the default (no windowed runs).
        """
        return False

    def window_point(self, hook: str) -> str:
        """The name [`run_window`][causalmad.ModelAdapter.run_window] knows ``hook`` by.

        Args:
            hook: a hook name.

        Returns:
            The canonical name (``hook`` itself, in the default).
        """
        return hook

    def window_inputs(self, point: str) -> list[str]:
        """Hooks whose clean outputs [`prefix_kv`][causalmad.ModelAdapter.prefix_kv] turns
        into the keys and values a windowed run from ``point`` needs.

        Args:
            point: a hook that [`resume_point`][causalmad.ModelAdapter.resume_point] returned.

        Returns:
            The hook names, one per block the run computes.

        Raises:
            NotImplementedError: always, in the default.
        """
        raise NotImplementedError(f"{type(self).__name__} has no windowed run.")

    def prefix_kv(self, hook: str, act: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Keys and values computed from the clean activation ``act`` at ``hook``.

        Args:
            hook: one of [`window_inputs`][causalmad.ModelAdapter.window_inputs].
            act: the clean activation at ``hook``.

        Returns:
            ``(keys, values)`` of the block ``hook`` feeds.

        Raises:
            NotImplementedError: always, in the default.
        """
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
        only, reusing ``clean`` wherever no patch reaches.

        Args:
            point: a hook that [`resume_point`][causalmad.ModelAdapter.resume_point] returned.
            start: the first position the run computes.
            act: ``point``'s activation at positions ``start`` onwards.
            prefix_kv: the clean keys and values before ``start``, one pair per hook of
                [`window_inputs`][causalmad.ModelAdapter.window_inputs].
            patches: canonical hook point
                ([`window_point`][causalmad.ModelAdapter.window_point]) -> functions applied
                to the window's activation there.
            readout_start: the first position whose logits the caller reads.
            clean: the clean run of the rows' inputs, to reuse where no patch reaches.

        Returns:
            The logits (see
            [`TransformerLensAdapter.run_window`][causalmad.TransformerLensAdapter.run_window]
            for the one implementation).

        Raises:
            NotImplementedError: always, in the default.
        """
        raise NotImplementedError(f"{type(self).__name__} has no windowed run.")

    def activation_bytes_per_row(self, example: torch.Tensor) -> int:
        """Bytes of every leaf module's output in one forward pass on one input: an upper
        bound on what one more row in a batch costs (memory budgets use it).

        Args:
            example: a batch of checked inputs; its first row is run, the first time only.

        Returns:
            The byte count (at least 1), measured once and remembered by the adapter.
        """
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
        """Plain forward in chunks, no gradients.

        Args:
            inputs: a checked batch (on any device; each chunk is moved to the model's).
            batch_size: rows per forward pass.

        Returns:
            The logits of every row, as [`forward`][causalmad.ModelAdapter.forward] returns
            them, in float32 on the CPU (an empty 1-D tensor for no rows).
        """
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
        rounding).

        Args:
            inputs: a checked batch.
            readouts: the readouts to read.
            batch_size: rows per forward pass.

        Returns:
            One float32 ``[n, classes]`` tensor of log-probabilities per readout, in order.
        """
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
    """``[batch, pos]`` int64 token ids, or [`InputError`][causalmad.errors.InputError]
    saying what is wrong."""
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
