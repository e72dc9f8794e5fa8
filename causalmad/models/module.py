"""The adapter for a plain ``nn.Module`` mapping one float tensor to logits."""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn

from causalmad.errors import InputError, SiteError, close_matches
from causalmad.models.base import HookInfo, ModelAdapter, _check_finite_tensor


class ModuleAdapter(ModelAdapter):
    """Adapter for a plain ``nn.Module`` mapping a float tensor to logits.

    Inputs are float tensors ``[batch, ...]``; the output is ``[batch, classes]`` logits.
    Hooks are module paths (``net.1``), and activations are flattened to ``[batch, d]``. An
    ``nn.Sequential`` resumes from a child's output
    ([`resume_point`][causalmad.ModuleAdapter.resume_point]).

    Args:
        model: the network.
        hooks: module paths alignment may search, in model order (default: every leaf
            module). The final hook ([`final_hook`][causalmad.ModuleAdapter.final_hook]) is
            the last but one of them, the one feeding the last (the only one, if there is
            one).

    Attributes:
        input_shape: the per-example shape
            [`check_inputs`][causalmad.ModuleAdapter.check_inputs] requires, set by a
            detector's ``fit`` (``None``: any shape).

    Raises:
        SiteError: if a name in ``hooks`` is not a module of the model (close matches
            suggested).
        InputError: if there is no hook at all: ``hooks`` is an empty list, or the model
            has no submodule (a bare ``nn.Linear``; wrap it in an ``nn.Sequential``).

    Example:
        >>> net = nn.Sequential(nn.Linear(4, 8), nn.ReLU(), nn.Linear(8, 3))
        >>> adapter = ModuleAdapter(net)
        >>> [h.name for h in adapter.candidate_hooks()], adapter.final_hook()
        (['0', '1', '2'], '1')
        >>> adapter.forward(adapter.check_inputs([[0.0, 1.0, 2.0, 3.0]])).shape
        torch.Size([1, 3])
    """

    has_positions = False

    def __init__(self, model: nn.Module, hooks: list[str] | None = None) -> None:
        self.model = model
        modules = dict(model.named_modules())
        self._names = [n for n in modules if n]
        leaves = [n for n, m in modules.items() if n and not list(m.children())]
        self._hooks = list(hooks) if hooks is not None else leaves
        if hooks is not None and not self._hooks:
            raise InputError(
                "ModuleAdapter: hooks is an empty list; expected at least one module path of the "
                "model (such as '0' or 'net.1'), or hooks=None for every leaf module."
            )
        if not self._hooks:  # checked here, before final_hook() fails on an empty list
            raise InputError(
                f"ModuleAdapter: the model ({type(model).__name__}) has no submodule to hook; expected "
                "a model with at least one (hooks are module paths such as '0' or 'net.1'). "
                "Wrap a single layer: nn.Sequential(model)."
            )
        for h in self._hooks:
            if h not in modules:
                raise SiteError(f"The model has no module named {h!r}.{close_matches(h, self._names)}")
        self.input_shape: tuple[int, ...] | None = None

    def forward(self, inputs: torch.Tensor) -> torch.Tensor:
        """Run the model on a batch.

        Args:
            inputs: a float batch as [`check_inputs`][causalmad.ModuleAdapter.check_inputs]
                returns it, on the model's device.

        Returns:
            What the model returns: ``[batch, classes]`` logits.
        """
        return self.model(inputs)

    def check_inputs(self, inputs: object, what: str = "inputs") -> torch.Tensor:
        """Validate a batch before any forward pass.

        Args:
            inputs: a tensor or array-like batch, first axis = examples.
            what: how the batch is named in error messages.

        Returns:
            The batch as a float32 tensor.

        Raises:
            InputError: if the batch is not array-like, a scalar, empty, holds NaN or
                infinite values, or its per-example shape differs from ``input_shape``.
        """
        x = _check_finite_tensor(inputs, what)
        x = x.float()
        if self.input_shape is not None and tuple(x.shape[1:]) != self.input_shape:
            raise InputError(
                f"{what} have per-example shape {tuple(x.shape[1:])}, but the model was "
                f"fitted on shape {self.input_shape}."
            )
        return x

    def hook_names(self) -> list[str]:
        """Every named module of the model.

        Returns:
            Their paths (``"0"``, ``"net.1"``), the root module excluded.
        """
        return self._names

    def candidate_hooks(self) -> list[HookInfo]:
        """The hooks alignment searches by default.

        Returns:
            One ``HookInfo`` per hook of ``hooks``, its ``layer``
            its index there, component ``"module"``.
        """
        return [HookInfo(h, i, "module") for i, h in enumerate(self._hooks)]

    def final_hook(self) -> str:
        """The hook whose output feeds the readout.

        Returns:
            The last but one of ``hooks`` (the only one, if there is one).
        """
        return self._hooks[-2] if len(self._hooks) > 1 else self._hooks[-1]

    def resume_point(self, hooks: Sequence[str]) -> str | None:
        """The child of an ``nn.Sequential`` before the earliest one a run patches.

        Args:
            hooks: the hooks a run patches.

        Returns:
            The name of that child, or ``None`` (run from the start) if the model is not
            an ``nn.Sequential``, a hook is not inside one of its children, or the
            earliest patched child is the first.
        """
        # an nn.Sequential runs on from any child: start at the earliest patched child,
        # fed with the previous child's cached output
        heads = [h.split(".")[0] for h in hooks]
        if not isinstance(self.model, nn.Sequential) or not heads or not all(h.isdigit() for h in heads):
            return None
        first = min(int(h) for h in heads)
        return str(first - 1) if first > 0 else None

    def run_from(self, point: str, act: torch.Tensor, inputs: torch.Tensor | None = None) -> torch.Tensor:
        """Logits of the ``nn.Sequential``'s children after ``point``, run on ``act``.

        Args:
            point: a child that [`resume_point`][causalmad.ModuleAdapter.resume_point] returned.
            act: that child's output for each row.
            inputs: unused (the children after ``point`` need nothing else).

        Returns:
            ``[batch, classes]`` logits.
        """
        return self.model[int(point) + 1 :](act)  # type: ignore[index]
