"""Every floor the tests assert on a trained task model's behaviour or on a detector's
AUROC goes through ``floor``, so that ``scripts/floor_margins.py`` can rerun those tests
over seeds and thread counts and print each floor's worst observed value and margin.

``CAUSALMAD_TEST_SEED`` (default 0) is the seed the task tests train their tiny models
with; ``CAUSALMAD_FLOOR_LOG``, when set, names a JSON-lines file to which every checked
floor appends ``{name, value, bound, upper, seed, threads}``.
"""

from __future__ import annotations

import json
import os

import torch

SEED = int(os.environ.get("CAUSALMAD_TEST_SEED", "0"))


def floor(name: str, value: float, bound: float, upper: bool = False) -> None:
    """Assert ``value >= bound`` (``value <= bound`` if ``upper``), logging it first.

    ``name`` identifies the floor across runs: ``"<task>: <quantity>"``."""
    value = float(value)
    log = os.environ.get("CAUSALMAD_FLOOR_LOG")
    if log:
        with open(log, "a") as f:
            f.write(
                json.dumps(
                    {
                        "name": name,
                        "value": value,
                        "bound": bound,
                        "upper": upper,
                        "seed": SEED,
                        "threads": torch.get_num_threads(),
                    }
                )
                + "\n"
            )
    if upper:
        assert value <= bound, f"{name}: {value:.4f} > {bound} (seed {SEED})"
    else:
        assert value >= bound, f"{name}: {value:.4f} < {bound} (seed {SEED})"
