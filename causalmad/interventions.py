"""Interchange interventions: run a model with activations at sites taken from elsewhere.

An interchange intervention (Geiger et al., 2021) runs the model on a *base* input while
the activation at a site is replaced by its value on a *source* input. causalmad's one
operation, at a site with positions ``P`` and subspace basis ``B`` (``[d, k]``), is

    act[:, P] <- act[:, P] + (source[:, P] - act[:, P]) @ B @ B.T

(``B = I`` for the whole activation), with a different source row for every base row.

Two engines compute it and agree to float precision (``tests/test_interventions.py``):

* ``interchange_pyvene`` builds a pyvene ``IntervenableModel`` (Wu et al., "pyvene",
  NAACL 2024) and runs base and source together. Alignment uses it.
* ``run_patched`` takes source activations gathered once (``capture``) and patches
  them with plain forward hooks, so many scrubbed variants reuse one trusted gather.
  Scrubbing uses it.
"""

from __future__ import annotations

import contextlib
import functools
from collections.abc import Iterator, Sequence
from dataclasses import dataclass

import numpy as np
import torch
from torch import nn

from causalmad.errors import CausalMADError, SiteError
from causalmad.models import ModelAdapter
from causalmad.sites import Site


@dataclass
class Patch:
    """Patch ``site`` with ``values`` (``[n, p, d]``, or ``[n, d]`` without positions)."""

    site: Site
    values: torch.Tensor


def _as_tensor(output: object) -> torch.Tensor:
    if isinstance(output, torch.Tensor):
        return output
    if isinstance(output, (tuple, list)) and output and isinstance(output[0], torch.Tensor):
        return output[0]
    raise SiteError(f"Hook output of type {type(output).__name__} is not a tensor; pick another hook.")


def _replace(output: object, new: torch.Tensor) -> object:
    if isinstance(output, torch.Tensor):
        return new
    return (new, *output[1:])  # type: ignore[index]


@contextlib.contextmanager
def _hooks(adapter: ModelAdapter, fns: Sequence[tuple[str, object]]) -> Iterator[list[bool]]:
    """Install forward hooks; yield a list of fired flags; always remove the hooks."""
    fired = [False] * len(fns)
    handles = []
    try:
        for i, (name, fn) in enumerate(fns):
            module = adapter.module(name)

            def hook(mod: nn.Module, args: object, output: object, i: int = i, fn: object = fn) -> object:
                fired[i] = True
                return fn(output)  # type: ignore[operator]

            handles.append(module.register_forward_hook(hook))
        yield fired
    finally:
        for h in handles:
            h.remove()
    missing = [fns[i][0] for i, f in enumerate(fired) if not f]
    if missing:
        raise CausalMADError(
            f"Hook(s) {missing} never fired during the forward pass; the intervention did not apply."
        )


def _gather(act: torch.Tensor, pos: torch.Tensor | None) -> torch.Tensor:
    if pos is None:
        return act
    return act.gather(1, pos.to(act.device)[:, :, None].expand(-1, -1, act.shape[-1]))


def capture(
    adapter: ModelAdapter, inputs: torch.Tensor, sites: Sequence[Site], batch_size: int = 1024
) -> list[torch.Tensor]:
    """Activations at each site's positions (whole vectors, no projection), on the CPU.

    Returns:
        one tensor per site, ``[n, p, d]`` (``[n, d]`` for sites without positions).
    """
    chunks: list[list[torch.Tensor]] = [[] for _ in sites]
    for start in range(0, len(inputs), batch_size):
        host = inputs[start : start + batch_size]  # positions are worked out on the host's copy
        x = host.to(adapter.device)
        grabbed: dict[str, torch.Tensor] = {}

        def grab(output: object, name: str) -> object:
            grabbed[name] = _as_tensor(output).detach()
            return output

        names = sorted({s.hook for s in sites})
        with torch.no_grad(), _hooks(adapter, [(n, lambda o, n=n: grab(o, n)) for n in names]):
            adapter.forward(x)
        # one copy of every site's positions to the device, one copy of the activations back
        pos = [s.position_index(host) for s in sites]
        moved = iter(to_device([p.numpy() for p in pos if p is not None], adapter.device))
        got = [
            _gather(_flat(adapter, grabbed[s.hook]), None if p is None else next(moved)).float()
            for s, p in zip(sites, pos)
        ]
        for i, a in enumerate(to_host(got)):
            chunks[i].append(a)
    return [torch.cat(c) for c in chunks]


def to_device(
    arrays: Sequence[np.ndarray], device: torch.device, dtype: type = np.int64
) -> list[torch.Tensor]:
    """``arrays`` as tensors of ``dtype`` on ``device``, through one copy: each copy from
    the host makes it wait until the device has run everything queued (on the CPU, the
    arrays themselves, uncopied)."""
    flat: list[np.ndarray] = [np.asarray(x, dtype=dtype) for x in arrays]
    if device.type == "cpu" or not flat:
        return [torch.as_tensor(x) for x in flat]
    moved = torch.as_tensor(np.concatenate([x.reshape(-1) for x in flat]), device=device)
    return [part.view(x.shape) for part, x in zip(torch.split(moved, [x.size for x in flat]), flat)]


def to_host(tensors: Sequence[torch.Tensor]) -> list[torch.Tensor]:
    """Device tensors of one dtype on the CPU, through one copy (on the CPU, the tensors)."""
    if not tensors or tensors[0].device.type == "cpu":
        return list(tensors)
    back = torch.cat([t.reshape(-1) for t in tensors]).cpu()
    return [part.view(t.shape) for part, t in zip(torch.split(back, [t.numel() for t in tensors]), tensors)]


def positions_of(site: Site, inputs: torch.Tensor) -> torch.Tensor:
    """``[n, p]`` positions of a site that must have positions (pyvene units, DAS)."""
    pos = site.position_index(inputs)
    if pos is None:
        raise SiteError(f"Site {site.key} names no token positions; this intervention needs them.")
    return pos


def _flat(adapter: ModelAdapter, act: torch.Tensor) -> torch.Tensor:
    if adapter.has_positions:
        if act.ndim != 3:
            raise SiteError(f"Expected a [batch, pos, d] activation, got shape {tuple(act.shape)}.")
        return act
    return act.reshape(act.shape[0], -1)


def coordinates(proj: torch.Tensor | None) -> torch.Tensor | None:
    """``proj`` as the indices of the coordinates it selects (a ``long`` tensor) when its
    columns are distinct axes of the activation (each column one 1, the rest 0), so that
    ``_apply`` copies those coordinates instead of projecting (``d x k`` multiplies a row
    otherwise; a piece of a site is such a basis); any other ``proj`` as it is."""
    if proj is None or proj.dtype == torch.long:
        return proj
    ones = proj == 1
    if bool(((proj == 0) | ones).all()) and bool((ones.sum(0) == 1).all()):
        idx = ones.to(torch.int8).argmax(0)
        if len(torch.unique(idx)) == len(idx):
            return idx
    return proj


def _apply(
    act: torch.Tensor, pos: torch.Tensor | None, values: torch.Tensor, proj: torch.Tensor | None
) -> torch.Tensor:
    values = values.to(act.device, act.dtype)
    cur = _gather(act, pos)
    if proj is None:
        new = values
    elif proj.dtype == torch.long:  # a selection of coordinates (``coordinates``)
        proj = proj.to(act.device)
        new = cur.clone()
        new[..., proj] = values[..., proj]
    else:
        proj = proj.to(act.device, act.dtype)
        new = cur + ((values - cur) @ proj) @ proj.T
    if pos is None:
        return new
    idx = pos.to(act.device)[:, :, None].expand(-1, -1, act.shape[-1])
    return act.scatter(1, idx, new)


def run_patched(adapter: ModelAdapter, inputs: torch.Tensor, patches: Sequence[Patch]) -> torch.Tensor:
    """Forward ``inputs`` with every patch applied (one batch, no chunking, no grad).

    Several patches may share a hook; they are applied in order.
    """
    by_hook: dict[str, list[Patch]] = {}
    for p in patches:
        if len(p.values) != len(inputs):
            raise CausalMADError(f"Patch at {p.site.key} has {len(p.values)} rows for {len(inputs)} inputs.")
        by_hook.setdefault(p.site.hook, []).append(p)
    x = inputs.to(adapter.device)
    positions = {id(p): p.site.position_index(inputs) for p in patches}  # on the host's copy

    def make(hook: str):  # noqa: ANN202 - closure factory
        def fn(output: object) -> object:
            act = _as_tensor(output)
            shape = act.shape
            flat = _flat(adapter, act)
            for p in by_hook[hook]:
                proj = p.site.projection(flat.shape[-1], adapter.head_width(hook))
                flat = _apply(flat, positions[id(p)], p.values, proj)
            return _replace(output, flat.reshape(shape))

        return fn

    with torch.no_grad(), _hooks(adapter, [(h, make(h)) for h in by_hook]):
        return adapter.forward(x)


# ---------------------------------------------------------------------- pyvene engine
class _PyveneModel(nn.Module):
    """The small wrapper pyvene needs: it reads ``model.config`` and ``model.device``."""

    def __init__(self, adapter: ModelAdapter) -> None:
        super().__init__()
        from transformers import PretrainedConfig

        self.adapter = adapter
        self.model = adapter.model
        self.config = PretrainedConfig()

    @property
    def device(self) -> torch.device:
        return self.adapter.device

    def forward(self, input_ids: torch.Tensor, **_: object) -> torch.Tensor:
        return self.adapter.forward(input_ids)

    def train(self, mode: bool = True) -> _PyveneModel:
        self.training = mode  # pyvene calls eval() on every IntervenableModel it builds
        if not in_mode(self.model, mode):
            self.model.train(mode)
        return self


def in_mode(model: nn.Module, mode: bool) -> bool:
    """Whether every module of ``model`` is in training mode ``mode`` already (the source
    model a ``TransformerBridge`` keeps outside its module tree included). Checking is
    cheap; a bridge's ``train()`` costs milliseconds, and every pyvene call (every IIA
    measured in alignment) would switch modes twice."""
    mods = list(model.modules())
    mods += [
        m
        for o in mods
        if isinstance(o.__dict__.get("original_model"), nn.Module)
        for m in o.__dict__["original_model"].modules()
    ]
    return all(m.training == mode for m in mods)


def import_pyvene():  # noqa: ANN201 - the pyvene module
    """Import pyvene without its import-time print about the optional nnsight backend."""
    import io

    with contextlib.redirect_stdout(io.StringIO()):
        import pyvene
    return pyvene


@contextlib.contextmanager
def preserved_training_state(model: nn.Module) -> Iterator[None]:
    """pyvene puts the model in eval mode with gradients off, in place: undo that after."""
    training = model.training
    grads = {n: p.requires_grad for n, p in model.named_parameters()}
    try:
        yield
    finally:
        if not in_mode(model, training):
            model.train(training)
        for n, p in model.named_parameters():
            p.requires_grad_(grads[n])


@functools.cache
def _projector_class():  # noqa: ANN202 - built lazily, once: importing pyvene is slow
    import_pyvene()  # the first import, without its print
    from pyvene import Intervention  # a name mypy can resolve as a base class (the module is Any to it)

    class ProjectedInterchange(Intervention):
        """``base + (source - base) @ B @ B.T`` (``B = None``: the whole source)."""

        def __init__(self, basis: torch.Tensor | None = None, **kwargs: object) -> None:
            super().__init__(keep_last_dim=True, **kwargs)
            self.register_buffer("basis", basis)

        def forward(
            self, base: torch.Tensor, source: torch.Tensor, subspaces: object = None, **_: object
        ) -> torch.Tensor:
            if self.basis is None:
                return source
            b = self.basis.to(base.dtype)
            return base + ((source - base) @ b) @ b.T

    return ProjectedInterchange


def interchange_pyvene(
    adapter: ModelAdapter,
    base: torch.Tensor,
    source: torch.Tensor | Sequence[torch.Tensor],
    site: Site | Sequence[Site],
) -> torch.Tensor:
    """Run ``base`` with ``site`` (or every site of a group) taken from ``source`` (row i
    from row i), via pyvene. ``source`` may also be one tensor per site.

    Sites without a position axis (plain ``nn.Module`` models) go through
    ``run_patched``, since pyvene's unit locations index a position axis.
    """
    sites = [site] if isinstance(site, Site) else list(site)
    sources = [source] * len(sites) if isinstance(source, torch.Tensor) else list(source)
    if len(sources) != len(sites):
        raise CausalMADError(f"{len(sources)} source tensors for {len(sites)} sites.")
    if not adapter.has_positions or any(s.positions is None for s in sites):
        values = [capture(adapter, src, [s])[0] for s, src in zip(sites, sources)]
        return run_patched(adapter, base, [Patch(s, v) for s, v in zip(sites, values)])
    pv = import_pyvene()

    for s in sites:
        adapter.module(s.hook)  # clear error for unknown names before pyvene sees them
    x = base.to(adapter.device)
    srcs = [src.to(adapter.device) for src in sources]
    representations, base_locs, src_locs = [], [], []
    for s, src in zip(sites, srcs):
        pos_b, pos_s = positions_of(s, x), positions_of(s, src)
        proj = s.projection(adapter.width(s.hook, x), adapter.head_width(s.hook))
        representations.append(
            {
                "component": f"model.{s.hook}.output",
                "unit": "pos",
                "max_number_of_units": int(pos_b.shape[1]),
                "intervention": _projector_class()(None if proj is None else proj.to(adapter.device)),
            }
        )
        base_locs.append(pos_b.tolist())
        src_locs.append(pos_s.tolist())
    config = pv.IntervenableConfig(representations=representations)
    with preserved_training_state(adapter.model):
        model = pv.IntervenableModel(config, _PyveneModel(adapter))
        with torch.no_grad():
            _, out = model(
                {"input_ids": x},
                [{"input_ids": src} for src in srcs],
                unit_locations={"sources->base": (src_locs, base_locs)},
            )
    return out
