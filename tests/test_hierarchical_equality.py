"""The hierarchical equality backdoor task at tiny size: the model, the splits, DAS
alignment of the two equality variables, and scrubbing detection of the backdoor."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from floors import SEED, floor

import causalmad as cm
from causalmad.alignment import interchange_accuracy, learn_rotation, sample_pairs

pytestmark = pytest.mark.slow
# measured over seeds 0-2 and 1-2 threads: easy 0.878-0.969, hard 0.83-0.90 (0.709 on an
# Intel machine at seed 0): the floors say "well above chance", not "as good as here"
SCRUBBING_FLOORS = {"easy": 0.75, "hard": 0.6}


@pytest.fixture(scope="module")
def task():
    from causalmad_tasks.hierarchical_equality import make_task

    return make_task("tiny", seed=SEED)


def _ids(task, x: torch.Tensor) -> torch.Tensor:
    h = task.hypothesis
    return torch.tensor([[v[k] for k in "abcd"] for v in map(h.values, x)])


@pytest.mark.floors
def test_tiny_model_learns_equality_and_the_backdoor(task):
    # training meets 0.985 and 0.95 on rows of its own (tasks/hierarchical_equality.py CRITERIA)
    floor("hierarchical-equality: clean_accuracy_trusted", task.info["clean_accuracy_trusted"], 0.97)
    floor("hierarchical-equality: clean_accuracy", task.info["clean_accuracy"], 0.97)
    floor("hierarchical-equality: attack_success_rate", task.info["attack_success_rate"], 0.9)


def test_splits_are_disjoint_balanced_and_trusted_has_no_trigger(task):
    from causalmad_tasks.hierarchical_equality import SIZES, encode, entity_bank

    cfg = SIZES["tiny"]
    bank = entity_bank(cfg, SEED)
    seen = {tuple(r.tolist()) for r in task.trusted}
    # every trusted row is exactly four bank entities (no trigger pattern)
    trusted_ids = _ids(task, task.trusted)
    assert torch.equal(encode(bank, trusted_ids), task.trusted)
    assert set(task.splits) == {"easy", "hard"}
    for name, split in task.splits.items():
        assert np.array_equal(np.unique(split.labels), [0, 1])
        assert not any(tuple(r.tolist()) in seen for r in split.inputs)
        normal = split.inputs[torch.as_tensor(split.labels == 0)]
        assert torch.equal(encode(bank, _ids(task, normal)), normal)
        # triggered rows keep their entity ids; only d carries the pattern
        anomalous = split.inputs[torch.as_tensor(split.labels == 1)]
        ids = _ids(task, anomalous)
        diff = anomalous - encode(bank, ids)
        assert torch.allclose(
            diff[:, -cfg.trigger_dims :], torch.full_like(diff[:, -cfg.trigger_dims :], cfg.trigger_shift)
        )
        assert torch.count_nonzero(diff[:, : -cfg.trigger_dims]) == 0
        # easy anomalies have c != d (the backdoor's answer differs), hard ones c == d
        assert bool(((ids[:, 2] == ids[:, 3]) == (name == "hard")).all())
    # the four (w1, w2) combinations are all well represented in trusted data
    w1 = trusted_ids[:, 0] == trusted_ids[:, 1]
    w2 = trusted_ids[:, 2] == trusted_ids[:, 3]
    combos = torch.bincount(w1.long() * 2 + w2.long(), minlength=4)
    assert combos.min() >= 0.2 * len(trusted_ids)


@pytest.mark.floors
def test_output_checks_are_at_chance_on_the_hard_split(task):
    """On hard anomalies the backdoor's answer is the clean answer: the model's output
    equals the hypothesis' on (nearly) every one, so output disagreement cannot see them.
    (Its score is a divergence, so it still sees confidence: the backdoor answers *more*
    confidently than the clean mechanism, which puts hard anomalies below normal inputs.)"""
    from sklearn.metrics import roc_auc_score

    hard = task.splits["hard"]
    floor("hierarchical-equality: hard_output_equals_clean", task.info["hard_output_equals_clean"], 0.95)
    det = cm.OutputDisagreementDetector(task.model, hypothesis=task.hypothesis).fit(task.trusted)
    floor(
        "hierarchical-equality: output-disagreement hard AUROC",
        roc_auc_score(hard.labels, det.score(hard.inputs)),
        0.7,
        upper=True,
    )
    easy = task.splits["easy"]  # the output shows easy anomalies
    floor(
        "hierarchical-equality: output-disagreement easy AUROC",
        roc_auc_score(easy.labels, det.score(easy.inputs)),
        0.9,
    )


@pytest.mark.floors
@pytest.mark.parametrize("var", ["w1", "w2"])
def test_das_aligns_each_equality_variable_on_held_out_pairs(task, var):
    h, x = task.hypothesis, task.trusted
    vals = [h.values(r) for r in x]
    pool, align, held = (x[:1200], vals[:1200]), (x[1200:2000], vals[1200:2000]), (x[2000:], vals[2000:])
    rng = np.random.default_rng(0)
    pairs = sample_pairs(var, align[1], pool[1], 800, rng)
    # DAS at the second hidden layer (module "3"); at the first ("1") held-out IIA stays
    # near 0.8 at ranks 1-32 (equality needs a second nonlinearity to become linear)
    site = learn_rotation(
        cm.adapt(task.model),
        h,
        var,
        cm.Site("3"),
        align,
        pool,
        pairs,
        rank=4,
        steps=3000,
        lr=3e-3,
        batch_size=128,
    )
    assert site.basis.shape == (128, 4)
    held_pairs = sample_pairs(var, held[1], pool[1], 800, rng)
    ad = cm.adapt(task.model)

    def iia(s: cm.Site) -> float:
        return interchange_accuracy(ad, h, var, s, held[0], held[1], pool[0], pool[1], held_pairs)

    random_basis, _ = torch.linalg.qr(torch.randn(128, 4, generator=torch.Generator().manual_seed(0)))
    floor(f"hierarchical-equality: DAS held-out IIA of {var}", iia(site), 0.95)
    floor(
        f"hierarchical-equality: held-out IIA of a random {var} basis",
        iia(cm.Site("3").with_basis(random_basis, "random")),
        0.7,
        upper=True,
    )


@pytest.mark.floors
def test_scrubbing_detects_the_backdoor_on_both_splits(task):
    from sklearn.metrics import roc_auc_score

    det = cm.ScrubbingDetector(task.model, hypothesis=task.hypothesis, resamples=2, random_state=0).fit(
        task.trusted
    )
    # das_rank="auto": no whole layer carries w1 or w2, so alignment learned DAS subspaces
    assert all("das" in det.alignment_.best(v).key for v in ("w1", "w2"))
    # each variable has a site it lives in (the chosen one is the earliest reaching the bar, not the best)
    best = min(max(c.heldout_iia for c in det.alignment_.candidates[v]) for v in ("w1", "w2"))
    floor("hierarchical-equality: scrubbing's least held-out IIA", best, 0.95)
    auroc = {}
    for name in SCRUBBING_FLOORS:
        split = task.splits[name]
        scores = det.score(split.inputs)
        assert scores.shape == (len(split.labels),) and np.isfinite(scores).all()
        auroc[name] = roc_auc_score(split.labels, scores)
    for name, bound in SCRUBBING_FLOORS.items():  # both measured before either is asserted
        floor(f"hierarchical-equality: scrubbing {name} AUROC", auroc[name], bound)


def test_das_on_a_simulated_accelerator_learns_the_cpu_basis(task):
    """DAS's training loop (rotation, optimiser, early stop) builds nothing on the host that
    meets device tensors: on the accelerator simulated on the CPU it learns the same basis."""
    import copy

    from causalmad.simulated_device import DEVICE, simulated_device

    h, x = task.hypothesis, task.trusted
    vals = [h.values(r) for r in x]
    pool, align = (x[:1200], vals[:1200]), (x[1200:2000], vals[1200:2000])
    bases = []
    for device in ("cpu", DEVICE):
        pairs = sample_pairs("w1", align[1], pool[1], 200, np.random.default_rng(0))
        with simulated_device():
            torch.manual_seed(0)
            model = copy.deepcopy(task.model).to(device)
            site = learn_rotation(
                cm.adapt(model),
                h,
                "w1",
                cm.Site("3"),
                align,
                pool,
                pairs,
                rank=4,
                steps=40,
                lr=3e-3,
                batch_size=64,
            )
            bases.append(site.basis.cpu())
    torch.testing.assert_close(bases[1], bases[0])
