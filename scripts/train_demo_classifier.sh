#!/usr/bin/env bash
# Reproduce the demo land-cover classifier shipped in
# m3rcr_xr/weights/landcover_unet_demo.safetensors: a tiny U-Net trained with
# `m3rcr train --task landcover` on the cloud-free images of synthetic patches, then
# judged on held-out synthetic patches (m3rcr_xr/weights/MODEL_CARD_landcover_unet.md).
#
#   scripts/train_demo_classifier.sh            # from the repository root
#   PYTHON=.venv/bin/python WORK=/tmp/demo-weights scripts/train_demo_classifier.sh
#
# A run that is stopped goes on from its last checkpoint when started again
# (every 80 steps; the result is the same as an uninterrupted run's).
set -euo pipefail

PYTHON=${PYTHON:-python}
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}"  # run from the repository root
WORK=${WORK:-demo-weights}
OUT=${OUT:-m3rcr_xr/weights/landcover_unet_demo.safetensors}
SAMPLES=${SAMPLES:-../shared/data/m3rcr-samples}
CKPT="$WORK/landcover_unet_demo.pth"
mkdir -p "$WORK"

# the synthetic stores of the demo weights (train 100-163, val 1000-1007, held-out 3000-3015)
"$PYTHON" scripts/demo_data.py "$WORK"

# a checkpoint there is this run's, stopped or done: it goes on (--out is the same file);
# --overwrite replaces the weights at $OUT (the shipped ones, by default)
RESUME=()
if [ -f "$CKPT" ]; then RESUME=(--resume "$CKPT"); fi

start=$(date +%s)
"$PYTHON" -m m3rcr_xr.cli -v train "$WORK/train.zarr" --task landcover --level 1 \
    --config depth=2 --config features=16 \
    --steps 240 --batch-size 8 --crop 96 --lr 3e-3 --seed 7 --workers 1 \
    --checkpoint-every 80 --val "$WORK/val.zarr" --device cpu \
    --out "$CKPT" --export "$OUT" --overwrite ${RESUME[@]+"${RESUME[@]}"}
echo "training wall time: $(( $(date +%s) - start )) s"

"$PYTHON" scripts/evaluate_demo_classifier.py --classifier "$OUT" \
    "$WORK/heldout.zarr" "$SAMPLES/test" "$SAMPLES/train"
