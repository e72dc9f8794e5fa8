"""An accelerator simulated on the CPU: device bugs and host round trips, found without a GPU.

Code that runs on a CUDA device can fail there in ways a CPU run never shows: a tensor
built on the host inside a forward pass and mixed into device work raises "Expected all
tensors to be on the same device". And it can be slow there for a reason a CPU run never
shows: every blocking copy between host and device (``torch.as_tensor(a, device=...)``,
``.to(device)``, ``.cpu()``, ``.item()``, indexing a device tensor with host indices)
makes the host wait until the device has finished everything queued, so a pass that makes
many of them cannot queue its kernels ahead.

Inside ``simulated_device``, ``DEVICE`` plays the accelerator. A tensor put there
(``model.to(DEVICE)``, ``torch.zeros(..., device=DEVICE)``, ``x.to(DEVICE)``) reports
``DEVICE`` as its device but holds its data on the CPU, and every operation is checked
with CUDA's rules: host and device tensors do not mix, except a host scalar (a 0-dim
tensor), host indices into a device tensor, and copies. Each operation is counted
(``Traffic``), so a test can bound the host round trips of a hot path, and a
benchmark can report them per pass.

``DEVICE`` is PyTorch's ``meta`` device, the one other device a CPU build of PyTorch
can address; the simulation gives its tensors real data. Code that branches on
``device.type == "cuda"`` takes its non-CUDA branch here. The simulation is built on
PyTorch's dispatch hooks (``TorchDispatchMode``, wrapper tensor subclasses), which are
not a stable API; it is tested with the torch this project pins (2.13).

Example::

    from causalmad.simulated_device import DEVICE, simulated_device

    with simulated_device() as traffic:
        model.to(DEVICE)
        scores = detector.fit(trusted).score(x)  # raises where CUDA would
    waits, launches = traffic.syncs, traffic.ops
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import torch
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils._pytree import tree_map

#: the simulated accelerator
DEVICE = torch.device("meta")

# PyTorch's own builders from Python data (the simulation replaces them while it runs)
_BUILDERS = {"tensor": torch.tensor, "as_tensor": torch.as_tensor}
# operations CUDA allows on a device tensor with host indices (it copies them over first)
_HOST_INDICES = {"index.Tensor", "index_put.default", "index_put_.default", "_index_put_impl_.default"}
# operations whose output size depends on a device tensor's values: the host waits for it
_DATA_DEPENDENT = {
    "_local_scalar_dense.default",
    "nonzero.default",
    "_unique.default",
    "_unique2.default",
    "unique_dim.default",
    "unique_consecutive.default",
    "masked_select.default",
    "is_nonzero.default",
    "equal.default",
}


@dataclass
class Traffic:
    """What ran on the simulated device.

    Attributes:
        ops: operations that compute there (on a GPU, roughly one kernel launch each);
            views (``x[:, 2]``, ``x.view(...)``) launch nothing and are not counted.
        to_device: blocking host-to-device copies (host indices into a device tensor too).
        to_host: blocking device-to-host copies.
        reads: values read back by the host (``.item()``, ``bool(t)``) and outputs whose
            size depends on device values (``nonzero``, ``unique``).
    """

    ops: int = 0
    to_device: int = 0
    to_host: int = 0
    reads: int = 0

    @property
    def syncs(self) -> int:
        """Times the host waits for the device: every blocking copy and every read."""
        return self.to_device + self.to_host + self.reads

    def clear(self) -> None:
        self.ops = self.to_device = self.to_host = self.reads = 0


class OnDevice(torch.Tensor):
    """A tensor on ``DEVICE``: reports that device, keeps its data (``elem``) on the CPU."""

    elem: torch.Tensor

    @staticmethod
    def __new__(cls, elem: torch.Tensor) -> OnDevice:
        t = torch.Tensor._make_wrapper_subclass(
            cls,
            elem.shape,
            dtype=elem.dtype,
            device=DEVICE,  # type: ignore[attr-defined]
            strides=elem.stride(),
            storage_offset=elem.storage_offset(),
            requires_grad=elem.requires_grad,
            layout=elem.layout,
        )
        t.elem = elem
        return t

    def __repr__(self) -> str:  # type: ignore[override]
        return f"OnDevice({self.elem!r})"

    def __getitem__(self, index: Any) -> Any:
        # PyTorch builds an index given as a Python list right on the indexed tensor's device,
        # below the dispatcher; built on the host, it is copied over and counted, as on CUDA
        return super().__getitem__(_lists_on_host(index))

    def __setitem__(self, index: Any, value: Any) -> None:
        super().__setitem__(_lists_on_host(index), value)

    def tolist(self) -> Any:  # type: ignore[override]
        # legal on CUDA (a copy to the host); PyTorch refuses it on a subclass
        return self.cpu().tolist()

    @classmethod
    def __torch_dispatch__(cls, func: Any, types: Any, args: Any = (), kwargs: Any = None) -> Any:  # type: ignore[override]
        # after the block (a tensor a model kept, say): still simulated and checked, not counted
        with _Simulation(Traffic()):
            return func(*args, **(kwargs or {}))


def _lists_on_host(index: Any) -> Any:
    if isinstance(index, list):
        return _BUILDERS["as_tensor"](index)
    if isinstance(index, tuple):
        return tuple(_lists_on_host(i) for i in index)
    return index


class _Simulation(TorchDispatchMode):
    def __init__(self, traffic: Traffic) -> None:
        super().__init__()
        self.traffic = traffic

    def __torch_dispatch__(self, func: Any, types: Any, args: Any = (), kwargs: Any = None) -> Any:
        kwargs = kwargs or {}
        name = f"{func._overloadpacket.__name__}.{func._overloadname}"
        on_device: list[torch.Tensor] = []
        on_host: list[torch.Tensor] = []

        def look(t: object) -> object:
            if isinstance(t, OnDevice):
                on_device.append(t)
            elif isinstance(t, torch.Tensor):
                if t.device.type == DEVICE.type:
                    raise RuntimeError(
                        f"{name}: a tensor was built on the simulated device without the "
                        "simulation seeing it (a builder below PyTorch's dispatcher that "
                        "causalmad.simulated_device does not wrap)."
                    )
                if t.dim() > 0:  # a host scalar mixes with device tensors on CUDA too
                    on_host.append(t)
            return t

        tree_map(look, (args, kwargs))
        target = kwargs.get("device")
        to_device = target is not None and torch.device(target).type == DEVICE.type
        copy = name == "copy_.default" or name.startswith("_to_copy")
        # host tensors allowed only as the indices (args[1]) into a device tensor
        indices = {id(i) for i in args[1] if isinstance(i, torch.Tensor)} if name in _HOST_INDICES else set()
        host_indices = (
            bool(indices and on_host)
            and isinstance(args[0], OnDevice)
            and all(id(h) in indices for h in on_host)
        )
        if on_device and on_host and not (copy or host_indices):
            raise RuntimeError(
                f"Expected all tensors to be on the same device, but found at least two devices, "
                f"{DEVICE} (simulated) and cpu! ({name})"
            )
        t = self.traffic
        if name == "copy_.default":
            if isinstance(args[0], OnDevice) != isinstance(args[1], OnDevice):
                t.to_device += isinstance(args[0], OnDevice)
                t.to_host += isinstance(args[1], OnDevice)
        elif name.startswith("_to_copy"):
            if target is None:
                to_device = bool(on_device)
            elif to_device and not on_device:
                t.to_device += 1
            elif on_device and not to_device:
                t.to_host += 1
        elif host_indices:
            t.to_device += 1
        if on_device and name in _DATA_DEPENDENT:
            t.reads += 1
        returns = func._schema.returns
        view = bool(returns) and all(r.alias_info is not None and not r.alias_info.is_write for r in returns)
        if (on_device or to_device) and not view:
            t.ops += 1
        unwrap = lambda x: x.elem if isinstance(x, OnDevice) else x  # noqa: E731
        if target is not None:
            kwargs = {**kwargs, "device": torch.device("cpu")}
        out = func(*tree_map(unwrap, args), **tree_map(unwrap, kwargs))
        first = func._schema.arguments[0] if func._schema.arguments else None
        if first is not None and first.alias_info is not None and first.alias_info.is_write:
            return args[0]  # in place: the caller's own tensor, where it is
        if not to_device and (not on_device or name.startswith("_to_copy")):
            return out  # host work, or a copy to the host
        return tree_map(lambda x: OnDevice(x) if isinstance(x, torch.Tensor) else x, out)


@contextlib.contextmanager
def simulated_device() -> Iterator[Traffic]:
    """Simulate an accelerator at ``DEVICE`` for the ``with`` block; yields its
    ``Traffic``. A tensor put on the device and kept after the block stays there,
    checked by the same rules (its operations are not counted)."""
    traffic = Traffic()
    # torch.tensor and torch.as_tensor build from Python data below the dispatcher: under the
    # simulation they build on the host, then copy over as CUDA would
    for name, build in _BUILDERS.items():
        setattr(torch, name, _built_on_host(build))
    try:
        with _Simulation(traffic):
            yield traffic
    finally:
        for name, build in _BUILDERS.items():
            setattr(torch, name, build)


def _built_on_host(build: Any) -> Any:
    def built(
        data: object, *args: object, device: torch.device | str | int | None = None, **kwargs: object
    ) -> torch.Tensor:
        there = device is not None and torch.device(device).type == DEVICE.type
        t = build(data, *args, device=None if there else device, **kwargs)
        return t.to(DEVICE) if there else t

    return built
