#!/usr/bin/env bash
# The command that runs on a GPU machine (Python 3.12 with torch, numpy, xarray and pandas;
# no network): install the carried wheels, then run benchmarks/gpu_check.py, which prints
# progress lines and one JSON object last and writes it to $OUT/gpu_check.json.
#
# Prepared beforehand on a machine with the project's environment, in the repository root:
#   scripts/gpu-wheels.sh                                       # .whl/ (ignored by git)
#   mkdir -p .device/golden                                     # .device/ (ignored by git)
#   cp ../shared/reference/golden/{input,output}_*.npy .device/golden/
#   .venv/bin/m3rcr demo --out /tmp/demo-cpu --size 1024              # the demo on a CPU:
#   mkdir -p .device/demo-cpu && cp /tmp/demo-cpu/*.csv .device/demo-cpu/  # its tables
# then, on the GPU machine, with .whl and .device carried beside this checkout:
#   bash scripts/gpu-check.sh [more gpu_check arguments]
set -euo pipefail
cd "$(dirname "$0")/.."

SITE=${SITE:-/tmp/site}
OUT=${OUT:-.device/out}
python3 -m pip install --quiet --no-index --no-deps --no-compile --no-cache-dir --upgrade \
  --target "$SITE" .whl/*.whl
export PYTHONPATH="$PWD:$SITE${PYTHONPATH:+:$PYTHONPATH}"
export PYTHONUNBUFFERED=1
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader || true
python3 - <<'PY'
import importlib.metadata as metadata
import sys

names = ("torch", "numpy", "pandas", "xarray", "dask", "distributed", "zarr", "rasterio")
print("python", sys.version.split()[0], *(f"{n} {metadata.version(n)}" for n in names))
import torch  # noqa: E402

import m3rcr_xr  # noqa: E402

print("cuda", torch.cuda.is_available(), "m3rcr_xr from", m3rcr_xr.__file__)
PY
REFERENCE=()  # the demo's tables on a CPU, where they were prepared
if [ -d .device/demo-cpu ]; then REFERENCE=(--demo-reference .device/demo-cpu); fi
exec python3 -m benchmarks.gpu_check --golden .device/golden --out "$OUT/gpu_check.json" \
  "${REFERENCE[@]}" "$@"
