"""Time this checkout's scrubbing engine against an earlier commit's, in one process.

    OMP_NUM_THREADS=1 MKL_NUM_THREADS=1 python scripts/ab_engine.py --against 92d3fe3 --calls 12

Two processes timed one after the other differ by 10-20 % on a shared 2-core machine,
more than most engine changes. Here both engines score the same saved detector (the
default task's, as ``scripts/bench_speed.py`` fits it) in the same process, one call
each in turn, alternating which goes first. The earlier engine is that commit's
``causalmad/scrubbing.py`` loaded beside this one; the rest of the package is this
checkout's. Each call's process CPU time is recorded; the first round is a warm-up. It
also says whether the two engines' scores are identical.
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "scripts"))


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--against", required=True, help="the commit whose engine to compare with")
    p.add_argument("--calls", type=int, default=12, help="timed calls of each engine (plus one warm-up)")
    p.add_argument("--n", type=int, default=200, help="inputs scored per call")
    p.add_argument(
        "--folder", default="results/speed-detector", help="the saved detector (fitted if missing)"
    )
    args = p.parse_args()
    source = subprocess.run(
        ["git", "show", f"{args.against}:causalmad/scrubbing.py"], cwd=ROOT, text=True, capture_output=True
    )
    if source.returncode:
        sys.exit(f"--against {args.against}: {source.stderr.strip()}")

    import bench_speed

    import causalmad.detectors.scrubbing as detector_module
    import causalmad.scrubbing as current

    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "scrubbing_earlier.py"
        path.write_text(source.stdout)
        spec = importlib.util.spec_from_file_location("causalmad.scrubbing_earlier", path)
        assert spec is not None and spec.loader is not None
        earlier = importlib.util.module_from_spec(spec)
        sys.modules[spec.name] = earlier
        spec.loader.exec_module(earlier)
    task, det = bench_speed.fitted("full", Path(args.folder))
    x = task.splits["easy"].inputs[: args.n]
    engines = {args.against: earlier, "this checkout": current}
    seconds: dict[str, list[float]] = {name: [] for name in engines}
    scores: dict[str, np.ndarray] = {}
    for i in range(args.calls + 1):
        order = list(engines.items()) if i % 2 else list(engines.items())[::-1]
        for name, module in order:
            detector_module.scrub_many = module.scrub_many  # what the detector's scoring calls
            t0 = time.process_time()
            scores[name] = bench_speed.engine(det, x, det.valid_, det.resamples)
            if i:
                seconds[name].append(time.process_time() - t0)
    detector_module.scrub_many = current.scrub_many
    a, b = scores.values()
    print(
        json.dumps(
            {
                **{name: bench_speed.spread(s) for name, s in seconds.items()},
                "identical_scores": bool(np.array_equal(a, b, equal_nan=True)),
                "max_abs_difference": float(np.nanmax(np.abs(a - b))),
            }
        )
    )


if __name__ == "__main__":
    main()
