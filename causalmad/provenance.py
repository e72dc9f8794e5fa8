"""What a result was measured on: the CPU, the thread count and the versions of the packages
that decide a model's float rounding. Task models trained from one seed differ between
CPUs, thread counts and package versions, so every task's ``info`` and every benchmark
record carries this (``tasks/_cache.py``, ``causalmad/bench.py``). Also ``causalmad.environment()``."""

from __future__ import annotations

import functools
import platform
from importlib import metadata
from typing import Any

import torch

#: the packages whose versions [`environment`][causalmad.environment] records
PACKAGES = ("torch", "transformers", "transformer-lens", "numpy", "scikit-learn")


@functools.cache
def cpu_model() -> str:
    """The CPU's model name (``/proc/cpuinfo`` on Linux), else what ``platform`` knows.

    Read once per process and remembered.

    Returns:
        The model name, ``platform.processor()`` or ``platform.machine()``, else
        ``"unknown"``.
    """
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine() or "unknown"


def environment() -> dict[str, Any]:
    """What this process computes on now: the machine record of every task and benchmark.

    Returns:
        ``{"cpu": ..., "threads": ..., "python": ..., <package>: version, ...}``: the CPU's
        model name (``cpu_model``), torch's thread count, the Python version, and the
        installed version of each package in ``PACKAGES`` (``None`` where it is not
        installed).

    Example:
        >>> env = environment()
        >>> env["threads"] == torch.get_num_threads() and "torch" in env
        True
    """
    versions: dict[str, str | None] = {}
    for name in PACKAGES:
        try:
            versions[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            versions[name] = None
    return {
        "cpu": cpu_model(),
        "threads": torch.get_num_threads(),
        "python": platform.python_version(),
        **versions,
    }
