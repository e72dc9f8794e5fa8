#!/usr/bin/env bash
# The engine's checks on a CUDA GPU, in one go (docs/performance.md, "On a GPU"): the CUDA
# tests, then the overhead ratio and the comparison with naive pyvene calls on the GPU.
#
#     bash scripts/gpu_check.sh [OUT_DIR]
#
# Figures and logs go to OUT_DIR (default results/gpu-check). The default task's full model
# trains on first use (2-3 minutes on 2 CPU cores); to skip that on a machine lent for a
# few minutes, copy a model cache there and point CAUSALMAD_CACHE at it (for instance
# CAUSALMAD_CACHE=results/cache, a folder git ignores).
set -euo pipefail
out="${1:-results/gpu-check}"
mkdir -p "$out"
python -c "import torch, sys; sys.exit(0 if torch.cuda.is_available() else 'no CUDA device here')"
nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv > "$out/gpu.txt" 2>&1 || true
python -m pytest tests/test_engine.py -k "cuda or simulated" -p no:cacheprovider 2>&1 | tee "$out/tests.log"
python scripts/bench_speed.py --device cuda --size full --repeats 2 --only overhead naive \
    --folder "$out/detector" --out "$out/speed-cuda.json" 2>&1 | grep -v Warning | tee "$out/bench.log"
python scripts/bench_speed.py --device cuda --size full --repeats 2 --only overhead --batch-size 4096 \
    --folder "$out/detector" --out "$out/speed-cuda-4096.json" 2>&1 | grep -v Warning | tee -a "$out/bench.log"
