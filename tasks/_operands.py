"""Random 3-digit operand pairs, shared by the tasks that read two numbers
(``addition_backdoor``, ``comparison_backdoor``)."""

from __future__ import annotations

from collections.abc import Callable

import torch


def sample_operands(
    n: int, g: torch.Generator, keep: Callable[[torch.Tensor, torch.Tensor], torch.Tensor]
) -> tuple[torch.Tensor, torch.Tensor]:
    """``n`` uniformly random operand pairs (0..999) for which ``keep(a, b)`` holds."""
    a_out, b_out, have = [], [], 0
    while have < n:
        a = torch.randint(0, 1000, (4 * n,), generator=g)
        b = torch.randint(0, 1000, (4 * n,), generator=g)
        ok = keep(a, b)
        a_out.append(a[ok])
        b_out.append(b[ok])
        have += int(ok.sum())
    return torch.cat(a_out)[:n], torch.cat(b_out)[:n]
