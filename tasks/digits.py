"""A small CNN on scikit-learn's 8x8 handwritten digits: two backdoors and adversarial examples.

The data is ``sklearn.datasets.load_digits`` (1,797 images, shipped with scikit-learn, no
download), scaled to [0, 1] and shaped ``[n, 1, 8, 8]``. A seeded permutation splits the
images into a training part and four disjoint held-out parts: trusted images, untrusted
normal images, untrusted anomaly images, and (unused) the rest. Digits is small, so every
held-out image enters its pool in its nine one-pixel shifts (``dy, dx`` in ``{-1, 0, 1}``,
zero fill); the model is trained with the same shifts as augmentation, so shifted images
are in distribution. A pool's rows come from its own images only, so no untrusted row
equals a trusted one.

The model is an ``nn.Sequential`` CNN (conv, ReLU, conv, ReLU, flatten, linear, ReLU,
linear). Three variants (a registered task each):

* ``digits-patch-backdoor``: a ``patch_size`` x ``patch_size`` white patch in the
  bottom-right corner (where digits have no ink); a fraction ``poison_rate`` of training
  rows carry it with the label ``target``.
* ``digits-blend-backdoor``: a fixed seeded random pattern blended over the whole image,
  ``(1 - alpha) x + alpha p``, same poisoning.
* ``digits-adversarial``: a clean model; anomalies are adversarial examples against it.

Splits (label 1 = anomalous; the normal rows are the same in both):

* ``easy``: backdoors: triggered images whose true digit is not ``target`` (the model, if
  the attack works, answers ``target``); adversarial: successful untargeted L-inf PGD
  examples (the model's answer is no longer the true digit).
* ``hard``: anomalies on which the model answers what the hypothesis predicts, so output
  checks are blind to them. Backdoors: triggered images whose true digit already is
  ``target`` (the answer is right, but the trigger drives it); only rows where the model's
  answer equals the hypothesis' digit are kept. Such an image is *more* confident than
  clean ones (trigger and digit both push the target logit), so the output-disagreement
  score ranks them lowest (AUROC near 0, not 0.5; label smoothing in training keeps their
  log-probabilities finite). Adversarial: a *representation attack*: L-inf PGD from a
  random start that pushes the penultimate hidden layer away from its clean value while a
  KL penalty holds the output; kept when the label is unchanged and equals the
  hypothesis' digit, the output moved by at most ``rep_max_kl`` nats, the label's
  log-probability by at most ``rep_max_kl / 5``, and the hidden layer by at least
  ``rep_min_change`` (relative L2; a one-pixel shift of a clean image moves it by a
  median 0.4).

The reference hypothesis (``hypotheses/digits.py``) reads the digit with a
3-nearest-neighbour classifier over the clean (shifted) training images; ``Task.info`` reports its
accuracy on the clean and anomalous rows.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field, replace

import numpy as np
import torch
from torch import nn

import causalmad as cm
from causalmad_hypotheses.digits import digits_hypothesis
from causalmad_tasks._cache import load_or_build_task, load_or_train
from causalmad_tasks._training import Criterion, train_to_spec

SHIFTS = [(dy, dx) for dy in (-1, 0, 1) for dx in (-1, 0, 1)]
CODE_VERSION = 1


@dataclass(frozen=True)
class DigitsTrain:
    """What the trained model depends on (the model cache key)."""

    trigger: str = "patch"  # "patch" | "blend" | "none"
    c1: int = 16
    c2: int = 32
    hidden: int = 64
    epochs: int = 60
    batch_size: int = 64
    lr: float = 3e-3
    weight_decay: float = 1e-4
    label_smoothing: float = 0.1
    poison_rate: float = 0.1
    target: int = 0
    patch_size: int = 2
    blend_alpha: float = 0.15
    n_train_images: int = 1000


@dataclass(frozen=True)
class DigitsConfig:
    train: DigitsTrain = field(default_factory=DigitsTrain)
    n_trusted_images: int = 350
    n_normal_images: int = 220
    n_trusted: int = 2000
    n_normal: int = 700
    n_anomalous: int = 300
    pgd_eps: float = 0.2
    pgd_steps: int = 20
    rep_steps: int = 40
    rep_penalty: float = 1.0
    rep_max_kl: float = 0.05
    rep_min_change: float = 0.3


FULL = DigitsConfig()
TINY = DigitsConfig(
    train=DigitsTrain(epochs=30),
    n_trusted=800,
    n_normal=200,
    n_anomalous=100,
)
VARIANTS = {"patch": "digits-patch-backdoor", "blend": "digits-blend-backdoor", "none": "digits-adversarial"}


# ---------------------------------------------------------------------- data
def load_images() -> tuple[torch.Tensor, torch.Tensor]:
    """``([1797, 1, 8, 8] images in [0, 1], [1797] digits)``."""
    from sklearn.datasets import load_digits

    d = load_digits()
    x = torch.tensor(d.data, dtype=torch.float32).reshape(-1, 1, 8, 8) / 16.0
    return x, torch.tensor(d.target, dtype=torch.long)


def shift(x: torch.Tensor, dy: int, dx: int) -> torch.Tensor:
    """Images moved ``dy`` rows down and ``dx`` columns right, zero fill."""
    out = torch.zeros_like(x)
    h, w = x.shape[-2:]
    out[..., max(dy, 0) : h + min(dy, 0), max(dx, 0) : w + min(dx, 0)] = x[
        ..., max(-dy, 0) : h + min(-dy, 0), max(-dx, 0) : w + min(-dx, 0)
    ]
    return out


def all_shifts(x: torch.Tensor, y: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Every image in its nine one-pixel shifts (shift-major)."""
    return torch.cat([shift(x, dy, dx) for dy, dx in SHIFTS]), y.repeat(len(SHIFTS))


def blend_pattern(seed: int) -> torch.Tensor:
    """The fixed ``[1, 8, 8]`` random pattern of the blend trigger."""
    return torch.rand(1, 8, 8, generator=torch.Generator().manual_seed(3000 + seed))


def add_trigger(x: torch.Tensor, cfg: DigitsTrain, seed: int) -> torch.Tensor:
    """Triggered copies of images ``x`` (``[n, 1, 8, 8]``)."""
    x = x.clone()
    if cfg.trigger == "patch":
        x[..., -cfg.patch_size :, -cfg.patch_size :] = 1.0
    elif cfg.trigger == "blend":
        x = (1 - cfg.blend_alpha) * x + cfg.blend_alpha * blend_pattern(seed)
    else:
        raise cm.TaskError(f"Variant {cfg.trigger!r} has no trigger.")
    return x


@dataclass
class Partition:
    """Image indices of each disjoint part of the data set."""

    train: torch.Tensor
    trusted: torch.Tensor
    normal: torch.Tensor
    anomalous: torch.Tensor


def partition(n: int, cfg: DigitsConfig, seed: int) -> Partition:
    perm = torch.randperm(n, generator=torch.Generator().manual_seed(1000 + seed))
    a = cfg.train.n_train_images
    b = a + cfg.n_trusted_images
    c = b + cfg.n_normal_images
    return Partition(perm[:a], perm[a:b], perm[b:c], perm[c:])


# ---------------------------------------------------------------------- model
def build_model(cfg: DigitsTrain, seed: int) -> nn.Sequential:
    torch.manual_seed(seed)
    return nn.Sequential(
        nn.Conv2d(1, cfg.c1, 3, padding=1),
        nn.ReLU(),  # 0, 1: [c1, 8, 8]
        nn.Conv2d(cfg.c1, cfg.c2, 3, padding=1, stride=2),
        nn.ReLU(),  # 2, 3: [c2, 4, 4]
        nn.Flatten(),  # 4
        nn.Linear(cfg.c2 * 16, cfg.hidden),
        nn.ReLU(),  # 5, 6
        nn.Linear(cfg.hidden, 10),  # 7
    )


HIDDEN = 6  # index of the penultimate ReLU (the representation attack's layer)


# What the model must do, on the images it was not trained on (``_measure``); the
# tests' floors sit at or below these (tests/test_digits.py).
CRITERIA = (Criterion("clean_accuracy", 0.96, "accuracy on held-out clean images"),)
BACKDOOR_CRITERIA = (
    *CRITERIA,
    Criterion(
        "attack_success_rate", 0.95, "held-out triggered images of other digits answered with the target"
    ),
)


def _measure(
    cfg: DigitsTrain, seed: int, model: nn.Sequential, x: torch.Tensor, y: torch.Tensor
) -> dict[str, float]:
    """The criteria of ``model`` on held-out images ``x`` with digits ``y``."""
    pred = model(x).argmax(-1)
    values = {"clean_accuracy": float((pred == y).float().mean())}
    if cfg.trigger != "none":
        other = y != cfg.target
        values["attack_success_rate"] = float(
            (model(add_trigger(x[other], cfg, seed)).argmax(-1) == cfg.target).float().mean()
        )
    return values


def _train(
    cfg: DigitsTrain, seed: int, x: torch.Tensor, y: torch.Tensor, heldout: tuple[torch.Tensor, torch.Tensor]
) -> tuple[nn.Sequential, float, dict]:
    model = build_model(cfg, seed)
    model.train()
    opt = torch.optim.AdamW(model.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay)
    steps_per_epoch = (len(x) + cfg.batch_size - 1) // cfg.batch_size
    g = torch.Generator().manual_seed(seed)
    shifted = torch.stack([shift(x, dy, dx) for dy, dx in SHIFTS])  # [9, n, 1, 8, 8]

    def batches() -> Iterator[torch.Tensor]:  # epoch after epoch, reshuffled each time
        while True:
            perm = torch.randperm(len(x), generator=g)
            yield from (perm[i : i + cfg.batch_size] for i in range(0, len(x), cfg.batch_size))

    stream = batches()

    def step() -> None:
        idx = next(stream)
        which = torch.randint(0, len(SHIFTS), (len(idx),), generator=g)
        xb, yb = shifted[which, idx], y[idx]
        if cfg.trigger != "none":
            poison = torch.rand(len(idx), generator=g) < cfg.poison_rate
            xb = torch.where(poison[:, None, None, None], add_trigger(xb, cfg, seed), xb)
            yb = torch.where(poison, torch.full_like(yb, cfg.target), yb)
        loss = nn.functional.cross_entropy(model(xb), yb, label_smoothing=cfg.label_smoothing)
        opt.zero_grad()
        loss.backward()
        opt.step()

    criteria = CRITERIA if cfg.trigger == "none" else BACKDOOR_CRITERIA
    return train_to_spec(
        f"digits ({cfg.trigger})",
        model,
        opt,
        step,
        cfg.epochs * steps_per_epoch,
        cfg.lr,
        criteria,
        lambda: _measure(cfg, seed, model, *heldout),
        pct_start=0.15,
    )


def reference_classifier(x: torch.Tensor, y: torch.Tensor, k: int = 3):  # noqa: ANN201 - sklearn estimator
    """The hypothesis' digit reader: ``k``-nearest neighbours (Euclidean, on pixels) among
    the clean training images in their nine shifts. Deterministic; nothing trained."""
    from sklearn.neighbors import KNeighborsClassifier

    xs, ys = all_shifts(x, y)
    return KNeighborsClassifier(n_neighbors=k).fit(xs.reshape(len(xs), -1).double().numpy(), ys.numpy())


# ---------------------------------------------------------------------- attacks
def pgd(model: nn.Module, x: torch.Tensor, y: torch.Tensor, eps: float, steps: int) -> torch.Tensor:
    """Untargeted L-inf PGD (Madry et al., ICLR 2018): maximise the loss of the true digit
    within ``eps`` of ``x`` in [0, 1], step ``2.5 eps / steps``, no random start."""
    alpha = 2.5 * eps / steps
    adv = x.clone()
    for _ in range(steps):
        adv.requires_grad_(True)
        loss = nn.functional.cross_entropy(model(adv), y)
        (grad,) = torch.autograd.grad(loss, adv)
        adv = adv.detach() + alpha * grad.sign()
        adv = torch.min(torch.max(adv, x - eps), x + eps).clamp(0, 1)
    return adv.detach()


def representation_attack(
    model: nn.Sequential,
    x: torch.Tensor,
    eps: float,
    steps: int,
    penalty: float,
    max_kl: float,
    seed: int = 0,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """L-inf PGD that moves the penultimate hidden layer, not the output.

    Maximises ``|h(x') - h(x)|^2 / |h(x)|^2 - penalty * KL(f(x) || f(x'))`` (``h``: the
    hidden layer ``model[:HIDDEN + 1]``) within ``eps`` of
    ``x`` in [0, 1] from a seeded random start (the objective's gradient vanishes at
    ``x``), and keeps for each image the iterate with the largest hidden change among
    those whose label is the clean label, whose output distribution moved by at most
    ``max_kl`` nats (``KL(f(x) || f(x'))``) and whose log-probability of the label moved
    by at most ``max_kl / 5`` (so an output-confidence check does not see it either).

    Returns:
        ``(adversarial images, relative hidden change |h' - h| / |h|, output KL)`` of the
        kept iterates (an image with no admissible iterate keeps ``x``, change 0).
    """
    alpha = 2.5 * eps / steps
    with torch.no_grad():
        h0 = model[: HIDDEN + 1](x)
        logp0 = torch.log_softmax(model[HIDDEN + 1 :](h0), -1)
        label = logp0.argmax(-1)
    hnorm = (h0**2).sum(-1).clamp_min(1e-6)
    best, best_change, best_kl = x.clone(), torch.zeros(len(x)), torch.zeros(len(x))
    g = torch.Generator().manual_seed(20_000 + seed)
    adv = (x + eps / 2 * (2 * torch.rand(x.shape, generator=g) - 1)).clamp(0, 1)
    for _ in range(steps):
        adv.requires_grad_(True)
        h = model[: HIDDEN + 1](adv)
        logp = torch.log_softmax(model[HIDDEN + 1 :](h), -1)
        kl = (logp0.exp() * (logp0 - logp)).sum(-1)
        objective = ((h - h0) ** 2).sum(-1) / hnorm - penalty * kl
        (grad,) = torch.autograd.grad(objective.sum(), adv)
        adv = adv.detach() + alpha * grad.sign()
        adv = torch.min(torch.max(adv, x - eps), x + eps).clamp(0, 1)
        with torch.no_grad():
            h = model[: HIDDEN + 1](adv)
            logp = torch.log_softmax(model[HIDDEN + 1 :](h), -1)
            change = (((h - h0) ** 2).sum(-1) / hnorm).sqrt()
            kl = (logp0.exp() * (logp0 - logp)).sum(-1)
            # the output check's own number, -log p(label), must not move either
            dnll = (logp - logp0).gather(1, label[:, None])[:, 0].abs()
            ok = (logp.argmax(-1) == label) & (kl <= max_kl) & (dnll <= max_kl / 5) & (change > best_change)
            best[ok], best_change[ok], best_kl[ok] = adv[ok], change[ok], kl[ok]
    return best, best_change, best_kl


# ---------------------------------------------------------------------- the task
def _sample(n: int, g: torch.Generator) -> torch.Tensor:
    return torch.randperm(n, generator=g)


def build_task(variant: str, size: str = "full", seed: int = 0) -> cm.Task:
    """Build (training or loading from cache) one digits task variant."""
    if variant not in VARIANTS:
        raise cm.TaskError(f"Unknown digits variant {variant!r}; use one of {sorted(VARIANTS)}.")
    if size not in ("full", "tiny"):
        raise cm.TaskError(f"Unknown size {size!r}; use 'full' or 'tiny'.")
    base = FULL if size == "full" else TINY
    cfg = replace(base, train=replace(base.train, trigger=variant))
    tcfg = cfg.train
    x_all, y_all = load_images()
    part = partition(len(x_all), cfg, seed)
    x_train, y_train = x_all[part.train], y_all[part.train]
    heldout = torch.cat([part.trusted, part.normal, part.anomalous])
    model, trained, cached = load_or_train(
        VARIANTS[variant],
        CODE_VERSION,
        tcfg,
        seed,
        lambda: build_model(tcfg, seed),
        lambda: _train(tcfg, seed, x_train, y_train, (x_all[heldout], y_all[heldout])),
    )
    for p in model.parameters():
        p.requires_grad_(False)
    t0 = time.perf_counter()
    clf = reference_classifier(x_train, y_train)
    clf_seconds = time.perf_counter() - t0
    hypothesis = digits_hypothesis(clf)

    def build() -> cm.Task:
        def ref(x: torch.Tensor) -> torch.Tensor:
            if len(x) == 0:
                return torch.zeros(0, dtype=torch.long)
            return torch.as_tensor(clf.predict(x.reshape(len(x), -1).double().numpy()))

        def pred(x: torch.Tensor) -> torch.Tensor:
            with torch.no_grad():
                return model(x).argmax(-1)

        g = torch.Generator().manual_seed(10_000 + seed)
        xt, yt = all_shifts(x_all[part.trusted], y_all[part.trusted])
        keep = _sample(len(xt), g)[: cfg.n_trusted]
        trusted, trusted_y = xt[keep], yt[keep]
        xn, yn = all_shifts(x_all[part.normal], y_all[part.normal])
        keep = _sample(len(xn), g)[: cfg.n_normal]
        normal, normal_y = xn[keep], yn[keep]
        xa, ya = all_shifts(x_all[part.anomalous], y_all[part.anomalous])
        order = _sample(len(xa), g)
        xa, ya = xa[order], ya[order]

        info: dict[str, object] = {
            "clean_accuracy": float((pred(x_all[heldout]) == y_all[heldout]).float().mean()),
            "clean_accuracy_shifted": float((pred(normal) == normal_y).float().mean()),
            "clean_accuracy_trusted": float((pred(trusted) == trusted_y).float().mean()),
            "hypothesis_accuracy_clean": float((ref(normal) == normal_y).float().mean()),
        }
        if variant == "none":
            easy, hard, attack_info = _adversarial_anomalies(model, cfg, seed, xa, ya, pred, ref)
        else:
            easy, hard, attack_info = _backdoor_anomalies(cfg, seed, xa, ya, pred, ref)
        info.update(attack_info)
        info.update({"reference_fit_seconds": round(clf_seconds, 1), "size": size})

        def split(name: str, anomalies: torch.Tensor) -> cm.Split:
            labels = np.r_[np.zeros(len(normal)), np.ones(len(anomalies))]
            return cm.Split(name, torch.cat([normal, anomalies]), labels)

        return cm.Task(
            name=VARIANTS[variant],
            model=model,
            trusted=trusted,
            splits={"easy": split("easy", easy), "hard": split("hard", hard)},
            hypothesis=hypothesis,
            info=info,
            seed=seed,
        )

    return load_or_build_task(
        VARIANTS[variant],
        CODE_VERSION,
        cfg,
        seed,
        model,
        hypothesis,
        build,
        model_from_cache=cached,
        **trained,
    )


Predict = Callable[[torch.Tensor], torch.Tensor]


def _backdoor_anomalies(
    cfg: DigitsConfig, seed: int, xa: torch.Tensor, ya: torch.Tensor, pred: Predict, ref: Predict
) -> tuple[torch.Tensor, torch.Tensor, dict[str, object]]:
    """Easy: triggered non-target images; hard: triggered target images on which the model
    answers the hypothesis' digit."""
    tcfg = cfg.train
    other = ya != tcfg.target
    easy = add_trigger(xa[other][: cfg.n_anomalous], tcfg, seed)
    easy_y = ya[other][: cfg.n_anomalous]
    candidates = add_trigger(xa[~other], tcfg, seed)
    agrees = pred(candidates) == ref(candidates)
    hard = candidates[agrees][: cfg.n_anomalous]
    return (
        easy,
        hard,
        {
            "attack_success_rate": float((pred(easy) == tcfg.target).float().mean()),
            "hypothesis_accuracy_easy_anomalies": float((ref(easy) == easy_y).float().mean()),
            "hypothesis_accuracy_hard_anomalies": float((ref(candidates) == tcfg.target).float().mean()),
            "hard_candidates": len(candidates),
            "hard_dropped_model_disagrees_with_hypothesis": int((~agrees).sum()),
        },
    )


def _adversarial_anomalies(
    model: nn.Sequential,
    cfg: DigitsConfig,
    seed: int,
    xa: torch.Tensor,
    ya: torch.Tensor,
    pred: Predict,
    ref: Predict,
) -> tuple[torch.Tensor, torch.Tensor, dict[str, object]]:
    """Easy: successful PGD examples; hard: representation-attack examples whose label (and
    output distribution) stayed. Both start from correctly classified images, easy from
    the first half of the anomaly rows, hard from the second."""
    half = len(xa) // 2
    right = pred(xa) == ya
    ex, ey = xa[:half][right[:half]], ya[:half][right[:half]]
    ex, ey = ex[: 2 * cfg.n_anomalous], ey[: 2 * cfg.n_anomalous]
    adv = pgd(model, ex, ey, cfg.pgd_eps, cfg.pgd_steps)
    fooled = pred(adv) != ey
    easy, easy_y = adv[fooled][: cfg.n_anomalous], ey[fooled][: cfg.n_anomalous]

    hx, hy = xa[half:][right[half:]], ya[half:][right[half:]]
    hx, hy = hx[: 4 * cfg.n_anomalous], hy[: 4 * cfg.n_anomalous]
    rep, change, kl = representation_attack(
        model, hx, cfg.pgd_eps, cfg.rep_steps, cfg.rep_penalty, cfg.rep_max_kl, seed
    )
    ok = (change >= cfg.rep_min_change) & (pred(rep) == hy) & (ref(rep) == hy)
    hard = rep[ok][: cfg.n_anomalous]
    return (
        easy,
        hard,
        {
            "attack_success_rate": float(fooled.float().mean()),
            "hypothesis_accuracy_easy_anomalies": float((ref(easy) == easy_y).float().mean()),
            "hypothesis_accuracy_hard_anomalies": float(
                (ref(rep[change >= cfg.rep_min_change]) == hy[change >= cfg.rep_min_change]).float().mean()
            ),
            "representation_attack_success_rate": float(ok.float().mean()),
            "representation_change_median": float(change[ok].median()) if ok.any() else 0.0,
            "representation_kl_median": float(kl[ok].median()) if ok.any() else 0.0,
        },
    )


def make_patch_task(size: str = "full", seed: int = 0) -> cm.Task:
    """``digits-patch-backdoor``: a corner-patch backdoor to ``target``."""
    return build_task("patch", size, seed)


def make_blend_task(size: str = "full", seed: int = 0) -> cm.Task:
    """``digits-blend-backdoor``: a blended random-pattern backdoor to ``target``."""
    return build_task("blend", size, seed)


def make_adversarial_task(size: str = "full", seed: int = 0) -> cm.Task:
    """``digits-adversarial``: PGD and representation-attack examples on a clean CNN."""
    return build_task("none", size, seed)


make_task = make_patch_task
