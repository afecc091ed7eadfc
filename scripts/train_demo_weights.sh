#!/usr/bin/env bash
# Reproduce the demo weights shipped in m3rcr_xr/weights/dsen2_cr_demo.safetensors:
# a small DSen2-CR trained with `m3rcr train` on synthetic patches, then evaluated on
# held-out synthetic patches and on the two real samples (m3rcr_xr/weights/MODEL_CARD.md).
#
#   scripts/train_demo_weights.sh            # from the repository root
#   PYTHON=.venv/bin/python WORK=/tmp/demo-weights scripts/train_demo_weights.sh
#
# A run that is stopped goes on from its last checkpoint when started again
# (every 100 steps; the result is the same as an uninterrupted run's).
set -euo pipefail

PYTHON=${PYTHON:-python}
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}"  # run from the repository root
WORK=${WORK:-demo-weights}
OUT=${OUT:-m3rcr_xr/weights/dsen2_cr_demo.safetensors}
SAMPLES=${SAMPLES:-../shared/data/m3rcr-samples}
CKPT="$WORK/dsen2_cr_demo.pth"
mkdir -p "$WORK"

# synthetic data: 64 training patches (seeds 100-163), 8 validation patches (1000-1007)
# and 16 held-out test patches (3000-3015), 300 x 300 pixels each as in M3R-CR
"$PYTHON" scripts/demo_data.py "$WORK"

# a checkpoint there is this run's, stopped or done: it goes on (--out is the same file);
# --overwrite replaces the weights at $OUT (the shipped ones, by default)
RESUME=()
if [ -f "$CKPT" ]; then RESUME=(--resume "$CKPT"); fi

start=$(date +%s)
"$PYTHON" -m m3rcr_xr.cli -v train "$WORK/train.zarr" --model dsen2_cr \
    --config n_resblocks=4 --config n_feats=32 \
    --steps 300 --batch-size 4 --crop 128 --lr 1e-3 --seed 7 --workers 2 \
    --checkpoint-every 100 --val "$WORK/val.zarr" --device cpu \
    --out "$CKPT" --export "$OUT" --overwrite ${RESUME[@]+"${RESUME[@]}"}
echo "training wall time: $(( $(date +%s) - start )) s"

"$PYTHON" scripts/evaluate_demo_weights.py --weights "$OUT" \
    "$WORK/heldout.zarr" "$SAMPLES/test" "$SAMPLES/train"
