#!/usr/bin/env bash
# The GPU benchmark, prepared for a session that is lent a device machine (H100/H200).
#
# It runs with the device image's own python3 (torch, timm, transformers, safetensors, tokenizers
# are there; rosbags and MuJoCo are not, so those subcommands simply drop out) and installs
# nothing. From the repository root on the device:   bash tools/device_bench.sh "$OUT"
# It first re-checks the engine invariants with that machine's torch/transformers versions, then
# benchmarks the mid-size preset and an OpenVLA-7B-shaped random model in bf16 on the GPU.
# Results: $OUT/bench.json and $OUT/bench.md (copy the table into docs/benchmarks.md).
set -euo pipefail
out="${1:-out/bench-gpu}"
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}" HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1 PYTHONUNBUFFERED=1
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader || true
python3 -c "import torch, transformers, timm; print('torch', torch.__version__, 'transformers', transformers.__version__, 'timm', timm.__version__)"
python3 -m pytest -q -x -p no:cacheprovider test/cache test/test_runs.py test/apps/test_bench.py
python3 -m vla_cache_ros.apps.cli bench --device cuda --models midsize,openvla-7b --steps 20 --warmup 3 --out "$out"
