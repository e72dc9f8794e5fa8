"""The adapter for TransformerLens ``TransformerBridge`` models, with the engine's windowed
run ([`TransformerLensAdapter.run_window`][causalmad.TransformerLensAdapter.run_window]) and
the hook-free training forward
([`TransformerLensAdapter.plain_logits`][causalmad.TransformerLensAdapter.plain_logits])."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import replace
from typing import Any

import torch
from torch import nn

from causalmad.errors import InputError, SiteError
from causalmad.hypothesis import Readout
from causalmad.models.base import CleanWindow, HookInfo, ModelAdapter, _check_token_ids


class TransformerLensAdapter(ModelAdapter):
    """Adapter for a TransformerLens ``TransformerBridge`` (token ids in, logits out).

    Inputs are token ids ``[batch, pos]``; the output is the logits
    ``[batch, pos, d_vocab_out]``. Hooks use TransformerLens names
    (``blocks.0.hook_resid_post``, ``blocks.0.attn.hook_z``) and module paths. Scrubbing
    resumes from a block's input
    ([`resume_point`][causalmad.TransformerLensAdapter.resume_point]), and on a
    TransformerLens-native model without hooks of one's own it computes only the positions a
    patch can change ([`run_window`][causalmad.TransformerLensAdapter.run_window]).

    Args:
        model: a ``TransformerBridge`` (anything with TransformerLens's ``cfg`` and
            ``hook_dict``, as [`adapt`][causalmad.adapt] tells them apart).

    Example:
        >>> from transformer_lens.config import TransformerBridgeConfig
        >>> from transformer_lens.model_bridge import TransformerBridge
        >>> cfg = TransformerBridgeConfig(d_model=16, n_layers=2, n_heads=2, d_head=8, d_mlp=32,
        ...                               d_vocab=12, d_vocab_out=12, n_ctx=8, act_fn="relu",
        ...                               normalization_type="LN", seed=0)
        >>> adapter = TransformerLensAdapter(TransformerBridge.boot_native(cfg))
        >>> adapter.final_hook()
        'blocks.1.hook_resid_post'
        >>> adapter.forward(adapter.check_inputs([[1, 2, 3, 4]])).shape
        torch.Size([1, 4, 12])
    """

    has_positions = True

    def __init__(self, model: nn.Module) -> None:
        self.model = model
        self.cfg: Any = model.cfg
        hook_dict: Any = model.hook_dict
        self._names = sorted(set(dict(model.named_modules()).keys()) | set(hook_dict.keys()))

    def forward(self, inputs: torch.Tensor) -> torch.Tensor:
        """Run the bridge on a batch of token ids (its hook points fire).

        Args:
            inputs: ``[batch, pos]`` token ids as
                [`check_inputs`][causalmad.TransformerLensAdapter.check_inputs] returns
                them, on the model's device.

        Returns:
            ``[batch, pos, d_vocab_out]`` logits.
        """
        return self.model(inputs)

    def check_inputs(self, inputs: object, what: str = "inputs") -> torch.Tensor:
        """Validate a batch of token ids before any forward pass.

        Args:
            inputs: a tensor or array-like ``[batch, pos]`` of token ids (integer-valued
                floats are accepted).
            what: how the batch is named in error messages.

        Returns:
            The batch as an int64 ``[batch, pos]`` tensor.

        Raises:
            InputError: if the batch is not array-like, a scalar, empty, holds NaN,
                infinite or non-integer values, is not 2-D, is longer than ``cfg.n_ctx``,
                or holds an id outside ``[0, cfg.d_vocab)``.
        """
        return _check_token_ids(inputs, what, self.cfg.n_ctx, "n_ctx", self.cfg.d_vocab)

    def hook_names(self) -> list[str]:
        """Every hook point name and module path of the bridge.

        Returns:
            The names, sorted.
        """
        return self._names

    def module(self, name: str) -> nn.Module:
        """The module whose output a site named ``name`` patches.

        Args:
            name: a hook point name or module path, one of
                [`hook_names`][causalmad.TransformerLensAdapter.hook_names].

        Returns:
            The submodule of the bridge under that name.

        Raises:
            SiteError: if ``name`` is a ``hook_resid_mid`` (on the bridge, patching it
                would not change the residual stream; the message names the hooks to use
                instead), or the bridge has no such name (close matches suggested).
        """
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
        """The hooks alignment searches by default.

        Returns:
            Per block ``l``: ``blocks.{l}.hook_resid_pre``, ``blocks.{l}.attn.hook_z``
            (with ``n_heads`` and ``d_head``), ``blocks.{l}.hook_attn_out`` and, unless
            the model is attention-only, ``blocks.{l}.hook_mlp_out``; then
            [`final_hook`][causalmad.TransformerLensAdapter.final_hook]. As ``HookInfo``, in model order.
        """
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
        """The hook whose output feeds the final norm and the unembedding.

        Returns:
            ``blocks.{n_layers - 1}.hook_resid_post``.
        """
        return f"blocks.{self.cfg.n_layers - 1}.hook_resid_post"

    def resume_point(self, hooks: Sequence[str]) -> str | None:
        """The input of the earliest block a run patches (a patch on a block's output:
        the next block's input).

        Args:
            hooks: the hooks a run patches.

        Returns:
            ``blocks.{l}.hook_resid_pre`` of that block; the last block's
            ``hook_resid_post`` if the earliest patch is on the last block's output; or
            ``None`` (run from the start) if ``hooks`` is empty or a hook lies outside the
            blocks (embeddings, final norm).
        """
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
        """The first block a run resumed from
        [`resume_point`][causalmad.TransformerLensAdapter.resume_point] ``point``
        computes."""
        return int(point.split(".")[1]) + point.endswith("hook_resid_post")

    def run_from(self, point: str, act: torch.Tensor, inputs: torch.Tensor | None = None) -> torch.Tensor:
        """Logits of the blocks after ``point``, the final norm and the unembedding.

        Args:
            point: a hook that [`resume_point`][causalmad.TransformerLensAdapter.resume_point] returned.
            act: ``[batch, pos, d_model]``, ``point``'s output for each row; a patch on the
                previous block's output applies to it here.
            inputs: unused (the blocks need nothing else).

        Returns:
            ``[batch, pos, d_vocab_out]`` logits.
        """
        layer = self._point_layer(point)
        blocks: Any = self.model.blocks
        x = (
            blocks[layer - 1].hook_out(act) if layer > 0 else act
        )  # fires a patch on the previous block's output
        for block in blocks[layer:]:
            x = block(x)
            x = x[0] if isinstance(x, tuple) else x
        return self.model.unembed(self.model.ln_final(x))  # type: ignore[operator]

    def head_width(self, hook: str) -> int:
        """Width of one attention head packed in a hook's last axis.

        Args:
            hook: a hook name.

        Returns:
            ``cfg.d_head`` for an ``attn.hook_z``, 0 for every other hook.
        """
        return int(self.cfg.d_head) if hook.endswith("attn.hook_z") else 0

    # ---- the windowed run: a causal model's positions before every patch are clean
    #: canonical hook-point names (after the bridge's aliases) the windowed run patches:
    #: block input (hook_resid_pre), attention z (hook_z), hook_attn_out, hook_mlp_out,
    #: block output (hook_resid_post)
    WINDOW_POINTS = ("hook_in", "attn.o.hook_in", "attn.hook_out", "mlp.hook_out", "hook_out")

    def can_window(self, hooks: Sequence[str]) -> bool:
        """Whether [`run_window`][causalmad.TransformerLensAdapter.run_window] can patch
        every hook in ``hooks``.

        Args:
            hooks: the hooks a run patches.

        Returns:
            ``True`` if the model is TransformerLens-native (causal attention, learned
            absolute positions, no soft caps), no one has installed a hook on its hook
            points, and every hook is one of ``WINDOW_POINTS`` of a block.
        """
        if not self._native_blocks() or any(
            m._forward_hooks or m._forward_pre_hooks
            for m in self.model.modules()
            if type(m).__name__ == "HookPoint"
        ):
            return False  # a hook someone installed on the model would not run in a window
        for hook in hooks:
            parts = self.window_point(hook).split(".", 2)
            if not (
                len(parts) == 3
                and parts[0] == "blocks"
                and parts[1].isdigit()
                and parts[2] in self.WINDOW_POINTS
            ):
                return False
        return True

    def window_point(self, hook: str) -> str:
        """``hook``'s canonical name (``blocks.1.hook_resid_pre`` -> ``blocks.1.hook_in``).

        Args:
            hook: a hook name.

        Returns:
            The name of the hook point ``hook`` is an alias of, or ``hook`` itself if it
            is not a hook point.
        """
        point: Any = self.model.hook_dict.get(hook)  # type: ignore[operator, union-attr]
        return str(getattr(point, "name", None) or hook)

    def window_inputs(self, point: str) -> list[str]:
        """Hooks whose clean outputs
        [`prefix_kv`][causalmad.TransformerLensAdapter.prefix_kv] turns into the keys and
        values a windowed run from ``point`` needs.

        Args:
            point: a hook that [`resume_point`][causalmad.TransformerLensAdapter.resume_point] returned.

        Returns:
            ``blocks.{i}.hook_resid_pre`` of every block the run computes, in order.
        """
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
                if (
                    type(native).__name__ != "NativeBlock"
                    or type(attn).__name__ != "NativeAttention"
                    or attn.rotary is not None
                    or not attn.causal
                    or attn.attn_scores_soft_cap > 0
                ):
                    blocks = []
                    break
                blocks.append(native)
            head = getattr(getattr(self.model, "unembed", None), "_original_component", None)
            if float(getattr(self.cfg, "output_logits_soft_cap", -1.0) or -1.0) > 0 or head is None:
                blocks = []
            self.__dict__["_natives"] = blocks
        return self.__dict__["_natives"]

    def plain_logits(self, inputs: torch.Tensor, readout_start: int = 0) -> torch.Tensor:
        """Logits of a TransformerLens-native model at positions ``readout_start`` onwards,
        computed without the bridge's hook points (the windowed run of
        [`run_window`][causalmad.TransformerLensAdapter.run_window] from position 0:
        LayerNorm fused, the last block's queries and MLP at the positions read only). The
        same function as the model up to float rounding (``tests/test_engine.py``), about
        1.4x cheaper to train through on a small model.

        Args:
            inputs: ``[n, pos]`` token ids on the model's device.
            readout_start: the first position whose logits are returned.

        Returns:
            ``[n, pos - readout_start, d_vocab_out]`` logits, with gradients where the
            model has them.

        Raises:
            InputError: if the windowed run does not reproduce the model (see
                [`can_window`][causalmad.TransformerLensAdapter.can_window]).
        """
        self.check_plain_logits()
        return self.unchecked_plain_logits(inputs, readout_start)

    def check_plain_logits(self) -> None:
        """Check that [`plain_logits`][causalmad.TransformerLensAdapter.plain_logits] reproduces the model.

        Raises:
            InputError: if the model is not TransformerLens-native or has hooks of one's
                own on its hook points.
        """
        if not self.can_window([]):
            raise InputError(
                f"{type(self.model).__name__} is not a TransformerLens-native model without hooks; "
                "plain_logits needs one (train it through its own forward instead)."
            )

    def unchecked_plain_logits(self, inputs: torch.Tensor, readout_start: int = 0) -> torch.Tensor:
        """[`plain_logits`][causalmad.TransformerLensAdapter.plain_logits] without its check
        of the model (about 0.3 ms on a small bridge): for a training loop that checked once
        before its first step. Call it only on a model that
        [`check_plain_logits`][causalmad.TransformerLensAdapter.check_plain_logits] accepts.

        Args:
            inputs: ``[n, pos]`` token ids on the model's device.
            readout_start: the first position whose logits are returned.

        Returns:
            ``[n, pos - readout_start, d_vocab_out]`` logits.
        """
        seq = inputs.shape[1]
        h = _inner(self.model.embed)(inputs) + _inner(self.model.pos_embed)(
            torch.arange(seq, device=inputs.device)
        )
        blocks = self._native_blocks()
        attn = blocks[0].attn._original_component
        empty = h.new_zeros(len(inputs), attn.n_kv_heads, 0, attn.d_head)
        prefix = [(empty, empty)] * len(blocks)
        logits = self.run_window("blocks.0.hook_resid_pre", 0, h, prefix, {}, readout_start)
        return logits[:, readout_start:]

    def run_readouts(
        self, inputs: torch.Tensor, readouts: Sequence[Readout], batch_size: int = 1024
    ) -> list[torch.Tensor]:
        """[`ModelAdapter.run_readouts`][causalmad.ModelAdapter.run_readouts] through
        [`plain_logits`][causalmad.TransformerLensAdapter.plain_logits] from the first
        position read (the last block's queries and MLP at the positions read only), about
        1.6x the bridge's forward on the task models; the bridge's forward where the
        windowed run does not reproduce the model or a readout has no position (or one the
        inputs do not have, which the bridge's forward then reports).

        Args:
            inputs: ``[n, pos]`` checked token ids.
            readouts: the readouts to read.
            batch_size: rows per forward pass.

        Returns:
            One float32 ``[n, classes]`` tensor of log-probabilities per readout, in order,
            on the CPU (``[]`` for no readouts).
        """
        if not readouts:
            return []
        seq = int(inputs.shape[1]) if inputs.dim() > 1 else 0
        if any(r.position is None or not -seq <= r.position < seq for r in readouts) or not self.can_window(
            []
        ):
            return super().run_readouts(inputs, readouts, batch_size)
        start = min(int(r.position) % seq for r in readouts)  # type: ignore[arg-type]
        shifted = [replace(r, position=int(r.position) % seq - start) for r in readouts]  # type: ignore[arg-type]
        outs: list[list[torch.Tensor]] = [[] for _ in readouts]
        with torch.no_grad():
            for i in range(0, len(inputs), batch_size):
                logits = self.unchecked_plain_logits(inputs[i : i + batch_size].to(self.device), start)
                for out, r in zip(outs, shifted):
                    out.append(torch.log_softmax(r.select(logits).float(), dim=-1).cpu())
        return [torch.cat(o) for o in outs]

    def prefix_kv(self, hook: str, act: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Keys and values of the block whose clean input is ``act``.

        Args:
            hook: ``blocks.{i}.hook_resid_pre``, one of
                [`window_inputs`][causalmad.TransformerLensAdapter.window_inputs].
            act: ``[n, pos, d_model]``, the clean activation at ``hook``.

        Returns:
            ``(keys, values)``, ``[n, n_kv_heads, pos, d_head]`` each, contiguous.
        """
        block = self._native_blocks()[int(hook.split(".")[1])]
        attn = block.attn._original_component
        a = _inner(block.ln1)(act)
        n, p = a.shape[:2]
        # contiguous, so that rows gathered from them feed the attention products uncopied
        k = attn.k(a).view(n, p, attn.n_kv_heads, attn.d_head).transpose(1, 2).contiguous()
        v = attn.v(a).view(n, p, attn.n_kv_heads, attn.d_head).transpose(1, 2).contiguous()
        return k, v

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
        """Logits of the model run on from
        [`resume_point`][causalmad.TransformerLensAdapter.resume_point] ``point`` for
        positions ``start`` onwards only.

        With causal attention an activation at position ``p`` depends on positions
        ``<= p`` only, so when every patch lies at or after ``start``, positions before it
        keep their clean values: their keys and values come from the clean run, and only
        the ``w`` window positions of ``act`` are computed. With ``clean``, a block computes
        only the positions a patch can have changed: those a patch in it writes, and every
        position from the first one whose input differs from the clean run's (attention
        mixes it into all later ones); keys and values are recomputed only where the input
        differs. A patch on block 0's attention at position 2 thus runs block 0 at
        position 2 alone. Without ``clean`` every window position counts as changed.

        Equal to [`run_from`][causalmad.TransformerLensAdapter.run_from] at the positions
        read, up to float rounding (``tests/test_engine.py``). Call it only on a model that
        [`can_window`][causalmad.TransformerLensAdapter.can_window] accepts.

        Args:
            point: a hook that [`resume_point`][causalmad.TransformerLensAdapter.resume_point] returned.
            start: the first position the run computes; every patch lies at or after it.
            act: ``[rows, w, d_model]``, ``point``'s activation at positions ``start``
                onwards.
            prefix_kv: the clean keys and values before ``start``, one pair per hook of
                [`window_inputs`][causalmad.TransformerLensAdapter.window_inputs],
                ``[rows, heads, start, d_head]`` each (unused with ``clean``).
            patches: canonical hook point
                ([`window_point`][causalmad.TransformerLensAdapter.window_point]) ->
                functions applied in order to the window's ``[rows, w, d]`` activation
                there, in window coordinates (positions the run does not compute are zeros
                there).
            readout_start: the caller reads logits at that position and after only, so the
                last block computes its queries, MLP and output there alone (its keys and
                values still cover the window); ``None``: every window position.
            clean: the clean run of the rows' inputs, with the positions each patch writes.

        Returns:
            ``[rows, start + w, d_vocab_out]`` logits; those the caller does not read
            (before ``start``, and before ``readout_start``) are zeros.
        """
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
                k, v = (
                    torch.cat([pre, proj(a).view(rows, w, attn.n_kv_heads, attn.d_head).transpose(1, 2)], 2)
                    for pre, proj in zip(prefix_kv[i - layer], (attn.k, attn.v))
                )
            else:
                redo = span(dirty) if dirty.any() else None
                # the input differs from `tail` on (None: only here and there, or nowhere)
                tail = redo.start if isinstance(redo, slice) and redo.stop == w else None
                # the clean keys and values up to where they are recomputed (all of them if the
                # rows differ only here and there)
                upto = start + (w if tail is None else tail)
                k, v = (kv[:, :, :upto].index_select(0, clean.rows) for kv in clean.kv[i - layer])
                if redo is not None:
                    a_redo = ln1(h[:, redo])
                    k_redo, v_redo = (
                        proj(a_redo).view(rows, -1, attn.n_kv_heads, attn.d_head).transpose(1, 2)
                        for proj in (attn.k, attn.v)
                    )
                    if tail is not None:
                        k, v = torch.cat([k, k_redo], 2), torch.cat([v, v_redo], 2)
                    else:
                        at_redo = (
                            slice(start + redo.start, start + redo.stop)
                            if isinstance(redo, slice)
                            else start + redo
                        )
                        k[:, :, at_redo], v[:, :, at_redo] = k_redo, v_redo
            if attn.kv_repeats > 1:
                k, v = (
                    k.repeat_interleave(attn.kv_repeats, dim=1),
                    v.repeat_interleave(attn.kv_repeats, dim=1),
                )
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
        logits = _inner(self.model.unembed)(_inner(self.model.ln_final)(h[:, read - off :]))
        return torch.cat([logits.new_zeros(rows, start + read, logits.shape[-1]), logits], 1)


def _inner(module: Any) -> Any:
    """The module a TransformerLens bridge component wraps (the same function without
    the bridge's hook points: LayerNorm runs fused), or the module itself."""
    return getattr(module, "_original_component", None) or module
