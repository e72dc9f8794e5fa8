"""Model adapters: the one boundary between causalmad and a concrete kind of network.

An adapter runs the model on a batch of inputs, validates inputs before any forward pass,
resolves hook / module names to ``nn.Module`` objects (the places interventions attach
to), and lists the candidate hooks that alignment searches. Everything above this module
(interventions, alignment, scrubbing, detectors) talks to an adapter only, so supporting a
new kind of model (a Hugging Face model, say) means adding one adapter class here.

Three adapters ship:

* :class:`TransformerLensAdapter` for TransformerLens ``TransformerBridge`` models
  (including the offline ``TransformerBridge.boot_native`` ones); inputs are token ids
  ``[batch, pos]``, hooks use TransformerLens names (``blocks.0.hook_resid_post``).
* :class:`HuggingFaceAdapter` for Hugging Face ``transformers`` encoder classifiers of the
  BERT family (``BertForSequenceClassification`` and kin); inputs are padded token ids
  ``[batch, pos]``, hooks are module paths (``bert.encoder.layer.3.output``).
* :class:`ModuleAdapter` for any ``nn.Module`` taking one float tensor; hooks are module
  paths (``net.1``).
"""

from __future__ import annotations

import sys
from abc import ABC, abstractmethod
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from causalmad.errors import InputError, SiteError, close_matches


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

    def run_window(self, point: str, start: int, act: torch.Tensor, prefix_kv: Sequence[tuple[torch.Tensor, torch.Tensor]],
                   patches: dict[str, list[Callable[[torch.Tensor], torch.Tensor]]],
                   readout_start: int | None = None, clean: CleanWindow | None = None) -> torch.Tensor:
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


def _check_finite_tensor(inputs: object, what: str) -> torch.Tensor:
    if not isinstance(inputs, torch.Tensor):
        try:
            inputs = torch.as_tensor(inputs)
        except Exception:
            raise InputError(
                f"{what} must be a tensor or array-like, got {type(inputs).__name__}."
            ) from None
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


def _check_token_ids(inputs: object, what: str, max_positions: int | None, positions_name: str,
                     vocab: int | None, padding: str = "") -> torch.Tensor:
    """``[batch, pos]`` int64 token ids, or :class:`InputError` saying what is wrong."""
    x = _check_finite_tensor(inputs, what)
    if x.is_floating_point():
        if not torch.equal(x, x.round()):
            raise InputError(f"{what} must be integer token ids, got non-integer floats.")
        x = x.long()
    if x.ndim != 2:
        raise InputError(f"{what} must have shape [batch, pos] of token ids{padding}, got shape {tuple(x.shape)}.")
    if max_positions and x.shape[1] > max_positions:
        raise InputError(
            f"{what} have {x.shape[1]} positions but the model takes at most {positions_name}={max_positions}."
        )
    lo, hi = int(x.min()), int(x.max())
    if lo < 0 or (vocab and hi >= vocab):
        raise InputError(
            f"{what} contain token id {lo if lo < 0 else hi}, outside the model's vocabulary [0, {vocab})."
        )
    return x.long()


class TransformerLensAdapter(ModelAdapter):
    """Adapter for a TransformerLens ``TransformerBridge`` (token ids in, logits out)."""

    has_positions = True

    def __init__(self, model: nn.Module) -> None:
        self.model = model
        self.cfg: Any = model.cfg
        hook_dict: Any = model.hook_dict
        self._names = sorted(set(dict(model.named_modules()).keys()) | set(hook_dict.keys()))

    def forward(self, inputs: torch.Tensor) -> torch.Tensor:
        return self.model(inputs)

    def check_inputs(self, inputs: object, what: str = "inputs") -> torch.Tensor:
        return _check_token_ids(inputs, what, self.cfg.n_ctx, "n_ctx", self.cfg.d_vocab)

    def hook_names(self) -> list[str]:
        return self._names

    def module(self, name: str) -> nn.Module:
        if name.endswith("hook_resid_mid"):
            # On the bridge this alias is only the input of ln2: patching it leaves the
            # residual stream unchanged, so an intervention there would silently not apply.
            raise SiteError(
                f"{name!r} cannot be patched on a TransformerBridge (it is not on the residual "
                f"path); use {name.replace('hook_resid_mid', 'hook_attn_out')!r} or "
                f"{name.replace('hook_resid_mid', 'hook_resid_pre')!r} instead."
            )
        return super().module(name)

    def candidate_hooks(self) -> list[HookInfo]:
        c = self.cfg
        hooks: list[HookInfo] = []
        for layer in range(c.n_layers):
            hooks.append(HookInfo(f"blocks.{layer}.hook_resid_pre", layer, "resid_pre"))
            hooks.append(HookInfo(f"blocks.{layer}.attn.hook_z", layer, "attn_z", c.n_heads, c.d_head))
            hooks.append(HookInfo(f"blocks.{layer}.hook_attn_out", layer, "attn_out"))
            if not getattr(c, "attn_only", False):
                hooks.append(HookInfo(f"blocks.{layer}.hook_mlp_out", layer, "mlp_out"))
        hooks.append(HookInfo(self.final_hook(), c.n_layers - 1, "resid_post"))
        return hooks

    def final_hook(self) -> str:
        return f"blocks.{self.cfg.n_layers - 1}.hook_resid_post"

    def resume_point(self, hooks: Sequence[str]) -> str | None:
        # a block's output is the next block's input: a patch there resumes after the block
        # (after the last block, only the final norm and the unembedding run)
        layers = []
        for h in hooks:
            parts = h.split(".")
            if len(parts) < 2 or parts[0] != "blocks" or not parts[1].isdigit():
                return None  # embeddings, final norm: run from the start
            after = self.window_point(h) == f"blocks.{parts[1]}.hook_out"
            layers.append(int(parts[1]) + after)
        if not layers:
            return None
        first, n = min(layers), self.cfg.n_layers
        return f"blocks.{first}.hook_resid_pre" if first < n else f"blocks.{n - 1}.hook_resid_post"

    def _point_layer(self, point: str) -> int:
        """The first block a run resumed from :meth:`resume_point` ``point`` computes."""
        return int(point.split(".")[1]) + point.endswith("hook_resid_post")

    def run_from(self, point: str, act: torch.Tensor, inputs: torch.Tensor | None = None) -> torch.Tensor:
        layer = self._point_layer(point)
        blocks: Any = self.model.blocks
        x = blocks[layer - 1].hook_out(act) if layer > 0 else act  # fires a patch on the previous block's output
        for block in blocks[layer:]:
            x = block(x)
            x = x[0] if isinstance(x, tuple) else x
        return self.model.unembed(self.model.ln_final(x))  # type: ignore[operator]

    def head_width(self, hook: str) -> int:
        return int(self.cfg.d_head) if hook.endswith("attn.hook_z") else 0

    # ---- the windowed run: a causal model's positions before every patch are clean
    #: canonical hook-point names (after the bridge's aliases) the windowed run patches:
    #: block input (hook_resid_pre), attention z (hook_z), hook_attn_out, hook_mlp_out,
    #: block output (hook_resid_post)
    WINDOW_POINTS = ("hook_in", "attn.o.hook_in", "attn.hook_out", "mlp.hook_out", "hook_out")

    def can_window(self, hooks: Sequence[str]) -> bool:
        if not self._native_blocks() or any(m._forward_hooks or m._forward_pre_hooks for m in self.model.modules()
                                            if type(m).__name__ == "HookPoint"):
            return False  # a hook someone installed on the model would not run in a window
        for hook in hooks:
            parts = self.window_point(hook).split(".", 2)
            if not (len(parts) == 3 and parts[0] == "blocks" and parts[1].isdigit() and parts[2] in self.WINDOW_POINTS):
                return False
        return True

    def window_point(self, hook: str) -> str:
        """``hook``'s canonical name (``blocks.1.hook_resid_pre`` -> ``blocks.1.hook_in``)."""
        point: Any = self.model.hook_dict.get(hook)  # type: ignore[operator, union-attr]
        return str(getattr(point, "name", None) or hook)

    def window_inputs(self, point: str) -> list[str]:
        return [f"blocks.{i}.hook_resid_pre" for i in range(self._point_layer(point), self.cfg.n_layers)]

    def _native_blocks(self) -> list[Any]:
        """The bridge's ``NativeBlock`` layers when the windowed run reproduces them up to
        float rounding (a TransformerLens-native model: causal attention, learned absolute
        positions, no soft caps), else ``[]``."""
        if "_natives" not in self.__dict__:
            blocks: list[Any] = []
            for block in self.model.blocks:  # type: ignore[union-attr]
                native = getattr(block, "_original_component", None)
                attn: Any = getattr(getattr(native, "attn", None), "_original_component", None)
                if (type(native).__name__ != "NativeBlock" or type(attn).__name__ != "NativeAttention"
                        or attn.rotary is not None or not attn.causal or attn.attn_scores_soft_cap > 0):
                    blocks = []
                    break
                blocks.append(native)
            head = getattr(getattr(self.model, "unembed", None), "_original_component", None)
            if float(getattr(self.cfg, "output_logits_soft_cap", -1.0) or -1.0) > 0 or head is None:
                blocks = []
            self.__dict__["_natives"] = blocks
        return self.__dict__["_natives"]

    def plain_logits(self, inputs: torch.Tensor, readout_start: int = 0) -> torch.Tensor:
        """Logits ``[n, pos - readout_start, vocab]`` of a TransformerLens-native model at
        positions ``readout_start`` onwards, computed without the bridge's hook points (the
        windowed run of :meth:`run_window` from position 0: LayerNorm fused, the last
        block's queries and MLP at the positions read only). The same function as the model
        up to float rounding (``tests/test_engine.py``), about 1.4x cheaper to train through
        on a small model. Raises :class:`InputError` for a model the windowed run does not
        reproduce (see :meth:`can_window`)."""
        self.check_plain_logits()
        return self.unchecked_plain_logits(inputs, readout_start)

    def check_plain_logits(self) -> None:
        """Raise :class:`InputError` unless :meth:`plain_logits` reproduces the model."""
        if not self.can_window([]):
            raise InputError(
                f"{type(self.model).__name__} is not a TransformerLens-native model without hooks; "
                "plain_logits needs one (train it through its own forward instead)."
            )

    def unchecked_plain_logits(self, inputs: torch.Tensor, readout_start: int = 0) -> torch.Tensor:
        """:meth:`plain_logits` without its check of the model (about 0.3 ms on a small
        bridge): for a training loop that checked once before its first step."""
        seq = inputs.shape[1]
        h = _inner(self.model.embed)(inputs) + _inner(self.model.pos_embed)(torch.arange(seq, device=inputs.device))
        blocks = self._native_blocks()
        attn = blocks[0].attn._original_component
        empty = h.new_zeros(len(inputs), attn.n_kv_heads, 0, attn.d_head)
        prefix = [(empty, empty)] * len(blocks)
        logits = self.run_window("blocks.0.hook_resid_pre", 0, h, prefix, {}, readout_start)
        return logits[:, readout_start:]

    def prefix_kv(self, hook: str, act: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """``[n, heads, pos, d_head]`` keys and values of the block whose clean input
        (``blocks.{i}.hook_resid_pre``, one of :meth:`window_inputs`) is ``act``."""
        block = self._native_blocks()[int(hook.split(".")[1])]
        attn = block.attn._original_component
        a = _inner(block.ln1)(act)
        n, p = a.shape[:2]
        # contiguous, so that rows gathered from them feed the attention products uncopied
        k = attn.k(a).view(n, p, attn.n_kv_heads, attn.d_head).transpose(1, 2).contiguous()
        v = attn.v(a).view(n, p, attn.n_kv_heads, attn.d_head).transpose(1, 2).contiguous()
        return k, v

    def run_window(self, point: str, start: int, act: torch.Tensor, prefix_kv: Sequence[tuple[torch.Tensor, torch.Tensor]],
                   patches: dict[str, list[Callable[[torch.Tensor], torch.Tensor]]],
                   readout_start: int | None = None, clean: CleanWindow | None = None) -> torch.Tensor:
        """Logits ``[rows, start + w, vocab]`` of the model run on from :meth:`resume_point`
        ``point`` for positions ``start`` onwards only.

        With causal attention an activation at position ``p`` depends on positions
        ``<= p`` only, so when every patch lies at or after ``start``, positions before it
        keep their clean values: their keys and values (``prefix_kv``, one pair per hook of
        :meth:`window_inputs`, ``[rows, heads, start, d_head]``) come from the clean run,
        and only the ``w`` window positions of ``act`` (``[rows, w, d]``, ``point``'s
        activation at ``start..``) are computed. ``patches`` maps canonical hook points
        (:meth:`window_point`) to functions applied to the window's activation there, in
        window coordinates (positions the run does not compute are zeros there).
        ``readout_start``: the caller reads logits at that position and after only, so the
        last block computes its queries, MLP and output there alone (its keys and values
        still cover the window). Logits the caller does not read are zeros.

        ``clean`` (the clean run of the rows' inputs, with the positions each patch
        writes; ``prefix_kv`` is then unused): a block computes only the positions a patch
        can have changed: those a patch in it writes, and every position from the first
        one whose input differs from the clean run's (attention mixes it into all later
        ones); keys and values are recomputed only where the input differs. A patch on
        block 0's attention at position 2 thus runs block 0 at position 2 alone. Without
        ``clean`` every window position counts as changed.

        Equal to :meth:`run_from` at the positions read, up to float rounding
        (``tests/test_engine.py``)."""
        blocks = self._native_blocks()
        rows, w = act.shape[:2]
        device = act.device
        everywhere, nowhere = torch.ones(w, dtype=torch.bool), torch.zeros(w, dtype=torch.bool)
        pos = torch.arange(w)

        def touched(name: str) -> torch.Tensor:
            """The window positions the patches at ``name`` write (CPU mask)."""
            if name not in patches:
                return nowhere
            at_pos = None if clean is None else clean.touched.get(name)
            if at_pos is None:
                return everywhere
            mask = nowhere.clone()
            mask[at_pos.cpu()] = True
            return mask

        def span(mask: torch.Tensor) -> slice | torch.Tensor:
            """``mask``'s positions (at least one) as an index: a slice when they are contiguous."""
            idx = mask.nonzero().flatten()
            lo, hi = int(idx[0]), int(idx[-1]) + 1
            return slice(lo, hi) if hi - lo == len(idx) else idx.to(device)

        def at(name: str, x: torch.Tensor, where: slice | torch.Tensor) -> torch.Tensor:
            """Apply ``name``'s patches to ``x``, the window's positions ``where``."""
            fns = patches.get(name, ())
            if not fns:
                return x
            whole = isinstance(where, slice) and where.start == 0 and where.stop == w
            if not whole:
                full = x.new_zeros(rows, w, x.shape[-1])
                full[:, where] = x
                x = full
            for fn in fns:
                x = fn(x)
            return x if whole else x[:, where]

        def positions(where: slice | torch.Tensor) -> torch.Tensor:
            return torch.arange(where.start, where.stop, device=device) if isinstance(where, slice) else where

        layer, n = self._point_layer(point), len(blocks)
        keys = torch.arange(start + w, device=device)
        # the first window position whose logits the caller reads
        read = 0 if readout_start is None else min(max(0, readout_start - start), w - 1)
        h, off = act, 0  # h: the window's positions off.. (off > 0 only after a last block without clean)
        dirty = everywhere if clean is None else nowhere  # positions where h may differ from the clean run
        if layer > 0:
            h = at(f"blocks.{layer - 1}.hook_out", h, slice(0, w))
            dirty = dirty | touched(f"blocks.{layer - 1}.hook_out")
        for i in range(layer, n):
            block, name = blocks[i], f"blocks.{i}"
            attn = block.attn._original_component
            ln1 = _inner(block.ln1)
            h = at(f"{name}.hook_in", h, slice(0, w))
            dirty = dirty | touched(f"{name}.hook_in")
            first = int(dirty.nonzero()[0]) if dirty.any() else w
            changed = pos >= first
            for point_in_block in ("attn.o.hook_in", "attn.hook_out", "mlp.hook_out", "hook_out"):
                changed = changed | touched(f"{name}.{point_in_block}")
            if i == n - 1:  # the last block: only where logits are read
                changed = changed & (pos >= read)
            if clean is not None and not changed.any():  # no patch reaches this block's output
                h, dirty = clean.resid[i - layer + 1][:, start:].index_select(0, clean.rows), nowhere
                continue
            where = span(changed)  # (without clean, every position from `read` on)
            h_at = h[:, where]
            if clean is None:
                a = ln1(h)
                a_at = a[:, where]
            else:
                a_at = ln1(h_at)
            m = h_at.shape[1]
            q = attn.q(a_at).view(rows, m, attn.n_heads, attn.d_head).transpose(1, 2)
            # keys and values: the clean run's, recomputed where the input differs
            if clean is None:
                k, v = (torch.cat([pre, proj(a).view(rows, w, attn.n_kv_heads, attn.d_head).transpose(1, 2)], 2)
                        for pre, proj in zip(prefix_kv[i - layer], (attn.k, attn.v)))
            else:
                redo = span(dirty) if dirty.any() else None
                tail = isinstance(redo, slice) and redo.stop == w  # the input differs from redo.start on
                # the clean keys and values up to where they are recomputed (all of them if the rows differ only here and there)
                upto = start + redo.start if tail else start + w  # type: ignore[union-attr]
                k, v = (kv[:, :, :upto].index_select(0, clean.rows) for kv in clean.kv[i - layer])
                if redo is not None:
                    a_redo = ln1(h[:, redo])
                    k_redo, v_redo = (proj(a_redo).view(rows, -1, attn.n_kv_heads, attn.d_head).transpose(1, 2)
                                      for proj in (attn.k, attn.v))
                    if tail:
                        k, v = torch.cat([k, k_redo], 2), torch.cat([v, v_redo], 2)
                    else:
                        at_redo = slice(start + redo.start, start + redo.stop) if isinstance(redo, slice) else start + redo
                        k[:, :, at_redo], v[:, :, at_redo] = k_redo, v_redo
            if attn.kv_repeats > 1:
                k, v = k.repeat_interleave(attn.kv_repeats, dim=1), v.repeat_interleave(attn.kv_repeats, dim=1)
            scores = torch.matmul(q, k.transpose(-2, -1)) / attn.scale
            mask = keys[None, :] > (start + positions(where))[:, None]
            pattern = torch.softmax(scores.masked_fill(mask, float("-inf")), dim=-1).masked_fill(mask, 0.0)
            z = torch.matmul(pattern, v).transpose(1, 2).contiguous().view(rows, m, -1)
            h_at = h_at + at(f"{name}.attn.hook_out", attn.o(at(f"{name}.attn.o.hook_in", z, where)), where)
            if not self.cfg.attn_only:
                h_at = h_at + at(f"{name}.mlp.hook_out", _inner(block.mlp)(_inner(block.ln2)(h_at)), where)
            h_at = at(f"{name}.hook_out", h_at, where)
            if clean is None:  # every position from the first changed one on was computed
                h, off = h_at, int(changed.byte().argmax())
            else:
                h = clean.resid[i - layer + 1][:, start:].index_select(0, clean.rows)
                h[:, where] = h_at
            dirty = changed
        logits = _inner(self.model.unembed)(_inner(self.model.ln_final)(h[:, read - off:]))
        return torch.cat([logits.new_zeros(rows, start + read, logits.shape[-1]), logits], 1)


class ModuleAdapter(ModelAdapter):
    """Adapter for a plain ``nn.Module`` mapping a float tensor to logits.

    Args:
        model: the network.
        hooks: module paths alignment may search (default: every leaf module except the
            last, plus the last one as the final hook).
    """

    has_positions = False

    def __init__(self, model: nn.Module, hooks: list[str] | None = None) -> None:
        self.model = model
        modules = dict(model.named_modules())
        self._names = [n for n in modules if n]
        leaves = [n for n, m in modules.items() if n and not list(m.children())]
        self._hooks = list(hooks) if hooks is not None else leaves
        for h in self._hooks:
            if h not in modules:
                raise SiteError(f"The model has no module named {h!r}.{close_matches(h, self._names)}")
        self.input_shape: tuple[int, ...] | None = None

    def forward(self, inputs: torch.Tensor) -> torch.Tensor:
        return self.model(inputs)

    def check_inputs(self, inputs: object, what: str = "inputs") -> torch.Tensor:
        x = _check_finite_tensor(inputs, what)
        x = x.float()
        if self.input_shape is not None and tuple(x.shape[1:]) != self.input_shape:
            raise InputError(
                f"{what} have per-example shape {tuple(x.shape[1:])}, but the model was "
                f"fitted on shape {self.input_shape}."
            )
        return x

    def hook_names(self) -> list[str]:
        return self._names

    def candidate_hooks(self) -> list[HookInfo]:
        return [HookInfo(h, i, "module") for i, h in enumerate(self._hooks)]

    def final_hook(self) -> str:
        return self._hooks[-2] if len(self._hooks) > 1 else self._hooks[-1]

    def resume_point(self, hooks: Sequence[str]) -> str | None:
        # an nn.Sequential runs on from any child: start at the earliest patched child,
        # fed with the previous child's cached output
        heads = [h.split(".")[0] for h in hooks]
        if not isinstance(self.model, nn.Sequential) or not heads or not all(h.isdigit() for h in heads):
            return None
        first = min(int(h) for h in heads)
        return str(first - 1) if first > 0 else None

    def run_from(self, point: str, act: torch.Tensor, inputs: torch.Tensor | None = None) -> torch.Tensor:
        return self.model[int(point) + 1 :](act)  # type: ignore[index]


class HuggingFaceAdapter(ModelAdapter):
    """Adapter for a Hugging Face encoder classifier of the BERT family.

    Inputs are token ids ``[batch, pos]`` padded to a common length with the tokenizer's
    pad id; the adapter builds the attention mask from that id (``ids != pad``), so padded
    positions are never attended to. The output is the model's ``.logits``
    (``[batch, classes]`` for a sequence classifier). Hooks are module paths; the
    candidate hooks alignment searches, per layer ``i`` of ``{base}.encoder.layer``
    (``base`` = the model's ``base_model_prefix``, ``bert`` for BERT):

    * ``{base}.embeddings`` — the residual stream entering layer 0 (``resid_pre``);
    * ``{base}.encoder.layer.{i}.attention.output.dense`` — attention output before the
      residual sum and LayerNorm (``attn_out``);
    * ``{base}.encoder.layer.{i}.output.dense`` — MLP output before the residual sum and
      LayerNorm (``mlp_out``);
    * ``{base}.encoder.layer.{i}.output`` — the layer's output, the residual stream after
      layer ``i`` (``resid_post``; ``[batch, pos, d]``).

    Every other named module is a valid site too (:meth:`hook_names`), among them
    ``{base}.encoder.layer.{i}.attention.self``, whose ``[batch, pos, n_heads * d_head]``
    output packs the heads (``Site(..., head=h)`` works there). Heads are not searched by
    default: with a position-less readout that is ``n_heads`` more sites per layer, and
    the hypothesis-free family would grow by ``n_heads x pos`` explanations per layer.

    Scrubbing resumes from a layer's output (:meth:`resume_point`) for
    ``BertForSequenceClassification``-shaped models (pooler on the first token, dropout,
    linear classifier); for other heads it reruns the whole model.

    Args:
        model: a ``transformers.PreTrainedModel`` with ``{base}.embeddings`` and an
            ``{base}.encoder.layer`` module list.
        pad_token_id: the pad id of the inputs (default: ``model.config.pad_token_id``).

    Raises:
        InputError: the model has no BERT-style layer stack or no pad id.

    Example:
        >>> from transformers import BertConfig, BertForSequenceClassification
        >>> cfg = BertConfig(vocab_size=50, hidden_size=16, num_hidden_layers=2, num_attention_heads=2,
        ...                  intermediate_size=32, max_position_embeddings=16, num_labels=2)
        >>> adapter = HuggingFaceAdapter(BertForSequenceClassification(cfg).eval())
        >>> adapter.final_hook()
        'bert.encoder.layer.1.output'
        >>> adapter.forward(torch.tensor([[2, 7, 9, 3, 0, 0]])).shape
        torch.Size([1, 2])
    """

    has_positions = True

    def __init__(self, model: nn.Module, pad_token_id: int | None = None) -> None:
        self.model = model
        self.config: Any = getattr(model, "config", None)
        prefix = str(getattr(model, "base_model_prefix", ""))
        self.base = prefix if prefix and hasattr(model, prefix) else ""
        modules = dict(model.named_modules())
        self._names = [n for n in modules if n]
        self._layers_path = self._path("encoder.layer")
        layers = modules.get(self._layers_path)
        if not isinstance(layers, nn.ModuleList) or self._path("embeddings") not in modules:
            raise InputError(
                f"HuggingFaceAdapter needs a BERT-family encoder ({self._path('embeddings')!r} and a module "
                f"list {self._layers_path!r}); {type(model).__name__} has neither. Wrap the model in your own "
                "ModelAdapter subclass instead."
            )
        self.n_layers = len(layers)
        pad = pad_token_id if pad_token_id is not None else getattr(self.config, "pad_token_id", None)
        if pad is None:
            raise InputError(
                f"{type(model).__name__}.config has no pad_token_id; pass HuggingFaceAdapter(model, "
                "pad_token_id=tokenizer.pad_token_id)."
            )
        self.pad_token_id = int(pad)
        self.vocab_size = int(getattr(self.config, "vocab_size", 0) or 0)
        self.max_positions = int(getattr(self.config, "max_position_embeddings", 0) or 0)
        self.n_heads = int(getattr(self.config, "num_attention_heads", 0) or 0)
        hidden = int(getattr(self.config, "hidden_size", 0) or 0)
        self.d_head = hidden // self.n_heads if self.n_heads else 0

    def _path(self, rest: str) -> str:
        return f"{self.base}.{rest}" if self.base else rest

    def _layer_of(self, hook: str) -> int | None:
        """Index of the encoder layer ``hook`` lies in, or ``None`` if outside the stack."""
        head = self._layers_path + "."
        if not hook.startswith(head):
            return None
        index = hook[len(head) :].split(".")[0]
        return int(index) if index.isdigit() else None

    def attention_mask(self, inputs: torch.Tensor) -> torch.Tensor:
        """``[batch, pos]`` 1 where a token is not padding."""
        return (inputs != self.pad_token_id).long()

    def forward(self, inputs: torch.Tensor) -> torch.Tensor:
        out = self.model(input_ids=inputs, attention_mask=self.attention_mask(inputs))
        return _logits_of(out)

    def check_inputs(self, inputs: object, what: str = "inputs") -> torch.Tensor:
        x = _check_token_ids(inputs, what, self.max_positions, "max_position_embeddings", self.vocab_size,
                             f" padded with pad id {self.pad_token_id}")
        empty = (x == self.pad_token_id).all(1)
        if empty.any():
            raise InputError(
                f"{what} contain {int(empty.sum())} row(s) made only of the pad id {self.pad_token_id} "
                f"(first at index {int(empty.nonzero()[0])}); every row needs at least one real token."
            )
        return x

    def hook_names(self) -> list[str]:
        return self._names

    def candidate_hooks(self) -> list[HookInfo]:
        names = set(self._names)
        hooks = [HookInfo(self._path("embeddings"), 0, "resid_pre")]
        for i in range(self.n_layers):
            layer = f"{self._layers_path}.{i}"
            for suffix, component in (("attention.output.dense", "attn_out"), ("output.dense", "mlp_out"),
                                      ("output", "resid_post")):
                if f"{layer}.{suffix}" in names:
                    hooks.append(HookInfo(f"{layer}.{suffix}", i, component))
        return hooks

    def final_hook(self) -> str:
        return f"{self._layers_path}.{self.n_layers - 1}.output"

    def head_width(self, hook: str) -> int:
        return self.d_head if hook.endswith("attention.self") and self._layer_of(hook) is not None else 0

    def _resumable(self) -> bool:
        # run_from rebuilds the head by hand: only the BERT sequence-classification head is known
        return (type(self.model).__name__ == "BertForSequenceClassification" and self.base == "bert"
                and getattr(self.model.bert, "pooler", None) is not None)  # type: ignore[union-attr]

    def resume_point(self, hooks: Sequence[str]) -> str | None:
        layers = [self._layer_of(h) for h in hooks]
        if not layers or not self._resumable() or any(i is None for i in layers):
            return None
        first = min(i for i in layers if i is not None)
        return f"{self._layers_path}.{first - 1}.output" if first > 0 else None

    def run_from(self, point: str, act: torch.Tensor, inputs: torch.Tensor | None = None) -> torch.Tensor:
        if inputs is None:
            raise InputError("HuggingFaceAdapter.run_from needs the rows' token ids (the attention mask).")
        layer = self._layer_of(point)
        if layer is None or not self._resumable():
            raise NotImplementedError(f"{type(self).__name__} cannot resume from {point!r}.")
        from transformers.masking_utils import create_bidirectional_mask

        bert: Any = self.model.bert
        # what BertModel builds for an encoder (public helper: BertModel's own private
        # wrapper around it changed its arguments between transformers 5.17 and 5.24)
        mask = create_bidirectional_mask(config=bert.config, inputs_embeds=act,
                                         attention_mask=self.attention_mask(inputs))
        x = act
        blocks = list(bert.encoder.layer[layer + 1 :])
        last = blocks.pop() if blocks and self._first_token_only(blocks[-1]) else None
        for block in blocks:
            x = block(x, mask)
            x = x[0] if isinstance(x, tuple) else x
        if last is not None:
            x = _bert_layer_first_token(last, x, self.attention_mask(inputs).bool())
        model: Any = self.model
        return model.classifier(model.dropout(bert.pooler(x)))

    def _first_token_only(self, block: nn.Module) -> bool:
        """Whether the last layer may compute the first token alone: the pooler reads
        nothing else, provided no hook watches inside the layer (a patched site there needs
        every position), the model is in eval mode and uses absolute position embeddings."""
        watched = any(m._forward_hooks or m._forward_pre_hooks for m in block.modules())
        absolute = getattr(self.config, "position_embedding_type", "absolute") in (None, "absolute")
        return not watched and not self.model.training and absolute


def _inner(module: Any) -> Any:
    """The module a TransformerLens bridge component wraps (the same function without
    the bridge's hook points: LayerNorm runs fused), or the module itself."""
    return getattr(module, "_original_component", None) or module


def _bert_layer_first_token(block: Any, x: torch.Tensor, keep: torch.Tensor) -> torch.Tensor:
    """``[batch, 1, d]`` output of a BERT layer at the first position only: its query
    attends to every unpadded key (``keep``: ``[batch, pos]``), then the attention output,
    MLP and LayerNorms run on that one position. Equal to the full layer's first position
    up to float rounding, at about a sixth of its cost on 16 positions."""
    sa = block.attention.self
    b = len(x)
    hd = sa.attention_head_size

    def heads(t: torch.Tensor) -> torch.Tensor:
        return t.view(b, t.shape[1], -1, hd).transpose(1, 2)

    q, k, v = heads(sa.query(x[:, :1])), heads(sa.key(x)), heads(sa.value(x))
    ctx = torch.nn.functional.scaled_dot_product_attention(q, k, v, attn_mask=keep[:, None, None, :], scale=sa.scaling)
    h = block.attention.output(ctx.transpose(1, 2).reshape(b, 1, -1), x[:, :1])
    return block.output(block.intermediate(h), h)


def _logits_of(out: object) -> torch.Tensor:
    """The logits of a Hugging Face model output (an output object, a tuple or a tensor)."""
    if isinstance(out, torch.Tensor):
        return out
    logits = getattr(out, "logits", None)
    if isinstance(logits, torch.Tensor):
        return logits
    if isinstance(out, (tuple, list)) and out and isinstance(out[0], torch.Tensor):
        return out[0]
    raise InputError(
        f"The model returned a {type(out).__name__} without .logits; causalmad needs a classification "
        "model (e.g. BertForSequenceClassification) whose output carries logits."
    )


def move_model(model: nn.Module, device: torch.device | str) -> None:
    """Put ``model`` on ``device`` in place, only if it is elsewhere (TransformerLens prints
    when it moves a model; that print goes to stderr, so stdout stays clean for JSON)."""
    import contextlib

    device = torch.device(device)
    param = next(model.parameters(), None)
    if param is not None and param.device.type == device.type and (device.index is None or param.device == device):
        return
    with contextlib.redirect_stdout(sys.stderr):
        model.to(device)


def adapt(model: nn.Module | ModelAdapter) -> ModelAdapter:
    """Wrap ``model`` in the right adapter (an adapter is returned as it is)."""
    if isinstance(model, ModelAdapter):
        return model
    if not isinstance(model, nn.Module):
        raise InputError(f"model must be a torch.nn.Module, got {type(model).__name__}.")
    if hasattr(model, "cfg") and hasattr(model, "hook_dict") and hasattr(model.cfg, "n_ctx"):
        return TransformerLensAdapter(model)
    # a transformers model can only exist once transformers is imported: never import it here
    transformers = sys.modules.get("transformers")
    if transformers is not None and isinstance(model, transformers.PreTrainedModel):
        return HuggingFaceAdapter(model)
    return ModuleAdapter(model)
