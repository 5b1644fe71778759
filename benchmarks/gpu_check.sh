#!/usr/bin/env bash
# The checks that need a CUDA GPU, as one script for a session that has one (about 10 minutes
# on one H100; each part has a time limit, and the training-step benchmark writes its table
# after every configuration, so what finished comes back):
#
#   1. benchmarks/dispersion.py: the extractor's CUDA backend next to the CPU backends;
#   2. the GPU tests (`pytest -m gpu`: fp16 training of every method and the dispersion
#      plugin, the dispersion extractor's CUDA backend against the CPU one);
#   3. benchmarks/train_step.py at the full profile (MiT-B5, published crops, batch 2):
#      MIC, DAFormer, HRDA (in that order), each without and with the dispersion plugin, fp32
#      and bf16, with one profiled step per configuration (phase times and top operators).
#
# It builds and installs nothing: run it from a checkout whose environment is set up
# (`make setup`, or PYTHON pointing at an interpreter with the packages installed).
# Results go to $OUT (default benchmarks/gpu-results): nvidia-smi.txt, dispersion.md,
# pytest-gpu.txt, train_step.{md,json,log} and traces/ (<config>.txt; Chrome traces gzipped).
# Time limits in seconds: DISPERSION_TIMEOUT (120), PYTEST_TIMEOUT (180), STEP_TIMEOUT (480).
set -uo pipefail
cd "$(dirname "$0")/.."
OUT="${OUT:-benchmarks/gpu-results}"
PY="${PYTHON:-.venv/bin/python}"
mkdir -p "$OUT"
failed=0

nvidia-smi > "$OUT/nvidia-smi.txt" 2>&1
"$PY" -c "import torch; assert torch.cuda.is_available(), 'no CUDA device'" || exit 1

timeout "${DISPERSION_TIMEOUT:-120}" "$PY" benchmarks/dispersion.py --repeats 50 \
  > "$OUT/dispersion.md" 2>&1 || failed=1

timeout "${PYTEST_TIMEOUT:-180}" "$PY" -m pytest -q -m gpu tests > "$OUT/pytest-gpu.txt" 2>&1 \
  || failed=1

timeout "${STEP_TIMEOUT:-480}" "$PY" benchmarks/train_step.py --profile full \
  --methods mic daformer hrda --out "$OUT" --profile-trace "$OUT/traces" \
  > "$OUT/train_step.log" 2>&1 || failed=1
gzip -f "$OUT"/traces/*.json 2> /dev/null

cat "$OUT/dispersion.md"
tail -n 20 "$OUT/pytest-gpu.txt"
cat "$OUT/train_step.md" 2> /dev/null
exit "$failed"
