"""The hierarchical equality backdoor task at tiny size: the model, the splits, DAS
alignment of the two equality variables, and scrubbing detection of the backdoor."""

from __future__ import annotations

import numpy as np
import pytest
import torch

import causalmad as cm
from causalmad.alignment import counterfactual_targets, interchange_accuracy, sample_pairs

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def task():
    from tasks.hierarchical_equality import make_task

    return make_task("tiny", seed=0)


def _ids(task, x: torch.Tensor) -> torch.Tensor:
    h = task.hypothesis
    return torch.tensor([[v[k] for k in "abcd"] for v in map(h.values, x)])


def test_tiny_model_learns_equality_and_the_backdoor(task):
    assert task.info["clean_accuracy_trusted"] >= 0.98
    assert task.info["clean_accuracy_heldout"] >= 0.98
    assert task.info["attack_success_rate"] >= 0.9


def test_splits_are_disjoint_balanced_and_trusted_has_no_trigger(task):
    from tasks.hierarchical_equality import SIZES, encode, entity_bank

    cfg = SIZES["tiny"]
    bank = entity_bank(cfg, 0)
    split = task.splits["easy"]
    seen = {tuple(r.tolist()) for r in task.trusted}
    assert not any(tuple(r.tolist()) in seen for r in split.inputs)
    # every trusted row is exactly four bank entities (no trigger pattern)
    trusted_ids = _ids(task, task.trusted)
    assert torch.equal(encode(bank, trusted_ids), task.trusted)
    normal = split.inputs[torch.as_tensor(split.labels == 0)]
    assert torch.equal(encode(bank, _ids(task, normal)), normal)
    # triggered rows keep their entity ids; only d carries the pattern
    anomalous = split.inputs[torch.as_tensor(split.labels == 1)]
    diff = anomalous - encode(bank, _ids(task, anomalous))
    assert torch.allclose(diff[:, -cfg.trigger_dims :], torch.full_like(diff[:, -cfg.trigger_dims :], cfg.trigger_shift))
    assert torch.count_nonzero(diff[:, : -cfg.trigger_dims]) == 0
    # the four (w1, w2) combinations are all well represented in trusted data
    w1 = trusted_ids[:, 0] == trusted_ids[:, 1]
    w2 = trusted_ids[:, 2] == trusted_ids[:, 3]
    combos = torch.bincount(w1.long() * 2 + w2.long(), minlength=4)
    assert combos.min() >= 0.2 * len(trusted_ids)
    assert np.array_equal(np.unique(split.labels), [0, 1])


def _das(model: torch.nn.Sequential, h, var, layer, align, pool, pairs, rank, steps=3000, seed=0) -> cm.Site:
    """DAS on an MLP layer (``learn_rotation`` needs token positions): learn an orthonormal
    ``[width, rank]`` basis such that swapping the base's coordinates in it for the
    source's gives the hypothesis' counterfactual output.

    Aligned at the second hidden layer (module ``"3"``): at the first (``"1"``) the
    measured held-out IIA stays near 0.8 at ranks 1-32 (equality needs a second
    nonlinearity to become a linear feature)."""
    torch.manual_seed(seed)
    with torch.no_grad():
        hb_all, hs_all = model[: layer + 1](align[0]), model[: layer + 1](pool[0])
    w = torch.nn.Parameter(torch.randn(hb_all.shape[1], rank))
    opt = torch.optim.Adam([w], lr=3e-3)
    targets = counterfactual_targets(h, var, align[1], pool[1], pairs)["y"]
    rng = np.random.default_rng(seed)
    for _ in range(steps):
        idx = rng.choice(len(pairs), size=min(128, len(pairs)), replace=False)
        hb, hs = hb_all[pairs[idx, 0]], hs_all[pairs[idx, 1]]
        basis, _ = torch.linalg.qr(w)
        logits = model[layer + 1 :](hb + (hs - hb) @ basis @ basis.T)
        loss = torch.nn.functional.cross_entropy(logits, targets[idx])
        opt.zero_grad()
        loss.backward()
        opt.step()
    basis, _ = torch.linalg.qr(w.detach())
    return cm.Site(str(layer)).with_basis(basis, f"das k={rank}")


@pytest.mark.parametrize("var", ["w1", "w2"])
def test_das_aligns_each_equality_variable_on_held_out_pairs(task, var):
    h, x = task.hypothesis, task.trusted
    vals = [h.values(r) for r in x]
    pool, align, held = (x[:1200], vals[:1200]), (x[1200:2000], vals[1200:2000]), (x[2000:], vals[2000:])
    rng = np.random.default_rng(0)
    pairs = sample_pairs(var, align[1], pool[1], 800, rng)
    site = _das(task.model, h, var, 3, align, pool, pairs, rank=4)  # second hidden layer
    assert site.basis.shape == (128, 4)
    held_pairs = sample_pairs(var, held[1], pool[1], 800, rng)
    ad = cm.adapt(task.model)

    def iia(s: cm.Site) -> float:
        return interchange_accuracy(ad, h, var, s, held[0], held[1], pool[0], pool[1], held_pairs)

    random_basis, _ = torch.linalg.qr(torch.randn(128, 4, generator=torch.Generator().manual_seed(0)))
    assert iia(site) >= 0.97  # measured 0.9875 (w1), 0.989 (w2)
    assert iia(cm.Site("3").with_basis(random_basis, "random")) < 0.7


def test_scrubbing_detects_the_backdoor(task):
    from sklearn.metrics import roc_auc_score

    det = cm.ScrubbingDetector(task.model, hypothesis=task.hypothesis, resamples=2, random_state=0).fit(task.trusted)
    split = task.splits["easy"]
    scores = det.score(split.inputs)
    assert scores.shape == (len(split.labels),) and np.isfinite(scores).all()
    assert roc_auc_score(split.labels, scores) >= 0.93  # measured 0.974 (Mahalanobis on the same split: 0.944)
