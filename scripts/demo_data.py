"""Write the synthetic stores the demo weights are trained and judged on (if not there).

64 training patches (seeds 100-163), 8 validation patches (1000-1007) and 16 held-out
test patches (3000-3015), 300 x 300 pixels each as in M3R-CR, as ``WORK/{train,val,
heldout}.zarr``. Used by ``scripts/train_demo_weights.sh`` and
``scripts/train_demo_classifier.sh``::

    python scripts/demo_data.py WORK
"""

import sys

import m3rcr_xr

SETS = (("train", 64, 100), ("val", 8, 1000), ("heldout", 16, 3000))


def main(work: str) -> None:
    for name, n, seed in SETS:
        path = f"{work}/{name}.zarr"
        if not m3rcr_xr.is_complete(path):
            m3rcr_xr.to_zarr(m3rcr_xr.synthetic_collection(n, 300, seed=seed), path)


if __name__ == "__main__":
    main(sys.argv[1])
