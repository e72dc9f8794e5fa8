"""How often fitting and scoring a small detector make the host wait for the device,
counted on the accelerator simulated on the CPU (``causalmad.simulated_device``).

    python scripts/device_traffic.py            # the counts
    python scripts/device_traffic.py --where    # and the lines of causalmad that wait most

The detector is the one ``tests/test_engine.py::test_detector_fitted_on_a_device_matches_cpu``
fits: a 2-layer TransformerBridge (d_model 32, 11 positions, seed 0), 200 random trusted
inputs, no hypothesis, K = 2, 64 alignment pairs; then it scores 40 inputs.
"""

from __future__ import annotations

import argparse
import collections
import json
import traceback
from typing import Any

import torch

import causalmad as cm
from causalmad import simulated_device as sim


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--where", action="store_true", help="also list the lines of causalmad that wait most")
    args = p.parse_args()
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
    model = TransformerBridge.boot_native(cfg)
    g = torch.Generator().manual_seed(0)
    trusted, x = torch.randint(0, 12, (200, 11), generator=g), torch.randint(0, 12, (40, 11), generator=g)
    lines: collections.Counter[str] = collections.Counter()
    if args.where:  # attribute each wait to the innermost line of causalmad that caused it
        dispatch = sim._Simulation.__torch_dispatch__

        def spy(self: Any, func: Any, types: Any, a: Any = (), kw: Any = None) -> Any:
            before = self.traffic.syncs
            out = dispatch(self, func, types, a, kw)
            if self.traffic.syncs > before:
                ours = [
                    f
                    for f in traceback.extract_stack()[:-1]
                    if "/causalmad/" in f.filename and not f.filename.endswith("simulated_device.py")
                ]
                where = (
                    f"{ours[-1].filename.split('/causalmad/')[-1]}:{ours[-1].lineno}"
                    if ours
                    else "outside causalmad"
                )
                lines[where] += self.traffic.syncs - before
            return out

        sim._Simulation.__torch_dispatch__ = spy  # type: ignore[method-assign]
    out: dict[str, object] = {}
    with sim.simulated_device() as traffic:
        model.to(sim.DEVICE)
        out["moving the model"] = traffic.syncs
        traffic.clear()
        det = cm.ScrubbingDetector(model, resamples=2, n_pairs=64, random_state=0).fit(trusted)
        out["fit"] = {"syncs": traffic.syncs, "ops": traffic.ops}
        traffic.clear()
        det.score(x)
        out["score"] = {"syncs": traffic.syncs, "ops": traffic.ops}
    if args.where:
        out["waits by line"] = dict(lines.most_common(12))
    print(json.dumps(out, indent=1))


if __name__ == "__main__":
    main()
