"""The adapter for a plain ``nn.Module`` mapping one float tensor to logits."""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn

from causalmad.errors import InputError, SiteError, close_matches
from causalmad.models.base import HookInfo, ModelAdapter, _check_finite_tensor


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
