"""Shared fixtures: tiny models built from configs, seeded, CPU-only."""

from __future__ import annotations

import pytest
import torch
from torch import nn

import causalmad as cm


class PlantedSum(nn.Module):
    """A hand-built network on which the hypothesis ``y = a + b`` holds exactly.

    ``enc`` computes ``[a + b, a - b, flag]``; ``head`` reads only ``a + b`` (and a planted
    backdoor: ``flag`` shifts the answer by 5, never active on trusted data).
    Output: logits over 0..22, peaked at ``a + b + 5 * flag``.
    """

    def __init__(self) -> None:
        super().__init__()
        self.enc = nn.Linear(3, 3, bias=False)
        with torch.no_grad():
            self.enc.weight.copy_(torch.tensor([[1.0, 1.0, 0.0], [1.0, -1.0, 0.0], [0.0, 0.0, 1.0]]))
        self.head = Readoff()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.enc(x))


class Readoff(nn.Module):
    def forward(self, h: torch.Tensor) -> torch.Tensor:
        k = torch.arange(23, dtype=h.dtype, device=h.device)
        return -4.0 * (h[:, :1] + 5 * h[:, 2:3] - k) ** 2


def sum_hypothesis() -> cm.Hypothesis:
    h = cm.Hypothesis("sum")
    h.add_input("a", lambda ex: round(float(ex[0])))
    h.add_input("b", lambda ex: round(float(ex[1])))
    h.add_variable("s", lambda a, b: a + b, parents=["a", "b"])
    h.add_output("y", lambda s: s, parents=["s"], readout=cm.Readout())
    return h


def planted_data(n: int, flag: int, seed: int, noise: float = 0.0) -> torch.Tensor:
    """Rows ``[a, b, flag]`` with digits 0..8; ``noise`` adds uniform jitter to a and b
    (so activation baselines such as LOF do not see exact duplicates)."""
    g = torch.Generator().manual_seed(seed)
    ab = torch.randint(0, 9, (n, 2), generator=g).float()
    ab += noise * (2 * torch.rand(n, 2, generator=g) - 1)
    return torch.cat([ab, torch.full((n, 1), float(flag))], 1)


@pytest.fixture
def planted():
    return PlantedSum(), sum_hypothesis()


@pytest.fixture(scope="session")
def tiny_bridge():
    from transformer_lens.config import TransformerBridgeConfig
    from transformer_lens.model_bridge import TransformerBridge

    cfg = TransformerBridgeConfig(
        d_model=32,
        n_layers=2,
        n_heads=4,
        d_head=8,
        d_mlp=64,
        d_vocab=12,
        d_vocab_out=12,
        n_ctx=11,
        act_fn="relu",
        normalization_type="LN",
        seed=0,
    )
    return TransformerBridge.boot_native(cfg)


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """Tests marked ``every_task`` (the tiny benchmark over every task) run last: by then
    each task's own tests have trained its tiny model into the session's ``task_cache``,
    so the benchmark loads them instead of being the first to train half of them. A run of
    that test alone still trains every model it needs."""
    items.sort(
        key=lambda item: item.get_closest_marker("every_task") is not None
    )  # stable: order kept otherwise


@pytest.fixture(scope="session", autouse=True)
def task_cache(tmp_path_factory):
    """One temporary model cache for the whole test session: every tiny task model is
    trained once per session (the first test that builds it), then loaded by every other
    test and command that asks for it (``causalmad demo``, ``causalmad bench``). A user's
    own cache is never read or written by the tests."""
    mp = pytest.MonkeyPatch()
    path = tmp_path_factory.mktemp("cache")
    mp.setenv("CAUSALMAD_CACHE", str(path))
    yield path
    mp.undo()


@pytest.fixture(scope="session")
def tiny_addition_task(task_cache):
    """The tiny addition backdoor task (trained once per session into ``task_cache``)."""
    from floors import SEED

    return cm.load_task("addition-backdoor", size="tiny", seed=SEED)


def planted_task(size: str = "full", seed: int = 0) -> cm.Task:
    """The planted model as a task (``--tasks conftest:planted_task``): trusted inputs with
    jitter and an ``easy`` split whose anomalies carry the backdoor's flag."""
    x = planted_data(200, 0, seed, noise=0.3)
    easy = torch.cat([planted_data(50, 0, seed + 1, noise=0.3), planted_data(50, 1, seed + 2, noise=0.3)])
    labels = torch.cat([torch.zeros(50), torch.ones(50)]).numpy()
    return cm.Task(
        "planted", PlantedSum(), x, {"easy": cm.Split("easy", easy, labels)}, sum_hypothesis(), seed=seed
    )


class OtherSum(nn.Module):
    """A model other than the planted one (another encoder width): a detector fitted on
    ``PlantedSum`` refuses it."""

    def __init__(self) -> None:
        super().__init__()
        self.enc = nn.Linear(3, 4)
        self.head = nn.Linear(4, 23)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.enc(x))
