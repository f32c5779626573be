#!/usr/bin/env bash
# One call on a CUDA machine: the GPU tests (pytest -m gpu) and SMPLify fits/s at batch 64 to 4,096 on the GPU
# (spin_compiled: recipe spin with fitting.compiled; eager spin, the baseline revision, the full-mesh path), in one file.
# Run from the repository root: bash benchmarks/gpu_check.sh [BASELINE_REV]   (default baseline 730d91e)
# Numbers go to $OUT/gpu_check.md when OUT is set (the device runner's output folder), else
# benchmarks/gpu_check.md. Nothing here is a claim until this ran on a GPU; copy the table into RESULTS.md.
set -uo pipefail
cd "$(dirname "$0")/.."
PY=${PY:-.venv/bin/python}
BASELINE=${1:-730d91e}
DEST=${OUT:-benchmarks}/gpu_check.md
mkdir -p "$(dirname "$DEST")"
{
  echo "# GPU check $(date -u +%Y-%m-%dT%H:%MZ), $(git rev-parse --short HEAD 2>/dev/null || echo 'no git')"
  echo
  nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader 2>&1 | sed 's/^/GPU: /'
  "$PY" -c "import torch; print('torch', torch.__version__, 'cuda', torch.version.cuda, 'available', torch.cuda.is_available())"
  echo
  echo "## pytest -m gpu"
  echo '```'
} > "$DEST"
"$PY" -m pytest -q -m gpu -p no:cacheprovider tests 2>&1 | tail -25 >> "$DEST"
echo "pytest exit code ${PIPESTATUS[0]}" >> "$DEST"
echo '```' >> "$DEST"
echo >> "$DEST"
echo "## bench_smplify.py --device cuda (batches 64 to 4,096; new = spin_compiled)" >> "$DEST"
# A git revision is needed for the baseline; a tree without git history runs without it.
BASE_ARGS=()
git rev-parse --verify -q "$BASELINE^{commit}" > /dev/null 2>&1 && BASE_ARGS=(--baseline "$BASELINE")
TABLE=$(mktemp)
"$PY" benchmarks/bench_smplify.py --device cuda --batches 64 256 1024 4096 --recipe spin_compiled "${BASE_ARGS[@]}" \
  --no-write --out "$TABLE" > "$TABLE.log" 2>&1
status=$?
if [ $status -eq 0 ]; then cat "$TABLE" >> "$DEST"; else echo "bench_smplify failed (exit $status):" >> "$DEST"; tail -40 "$TABLE.log" >> "$DEST"; fi
echo "bench exit code $status" >> "$DEST"
echo "wrote $DEST"
cat "$DEST"
