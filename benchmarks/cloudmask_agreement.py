"""Agreement of the estimated cloud mask with the M3R-CR dataset's masks.

Run ``python -m benchmarks.cloudmask_agreement [SAMPLES_DIR]`` (default
``../shared/data/m3rcr-samples``): for each quartet of the folder (found by walking the
dataset's layout), :func:`m3rcr_xr.estimate_cloudmask` on the cloudy image against the
dataset's ``.npy`` mask, as IoU, precision and recall of the cloud class. Two samples
are not a validation set: the table shows what the default thresholds do on them, no
more.
"""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np

DEFAULT_SAMPLES = Path(__file__).resolve().parents[2] / "shared" / "data" / "m3rcr-samples"


def agreement(predicted: np.ndarray, reference: np.ndarray) -> dict[str, float]:
    """IoU, precision and recall of ``predicted`` (bool) against ``reference`` (bool)."""
    both = np.count_nonzero(predicted & reference)
    return {
        "iou": both / max(np.count_nonzero(predicted | reference), 1),
        "precision": both / max(np.count_nonzero(predicted), 1),
        "recall": both / max(np.count_nonzero(reference), 1),
        "cloud_fraction": float(np.mean(reference)),
    }


def agreement_table(samples: Path) -> dict[str, dict[str, float]]:
    """Agreement per patch of every quartet under ``samples`` (its split folders)."""
    import m3rcr_xr
    from m3rcr_xr.io import discover

    rows = {}
    for split in sorted(p for p in samples.iterdir() if p.is_dir()):
        for quartet in discover(split):
            paths = quartet.paths(split)
            ds = m3rcr_xr.open_quartet(paths["cloudy"], cloudmask=paths["cloudmask"], chunks=None)
            estimate = m3rcr_xr.estimate_cloudmask(ds["cloudy"]).values
            rows[f"{split.name}/{quartet.patch_id}"] = agreement(estimate, ds["cloudmask"].values)
    return rows


def main(argv: list[str] | None = None) -> dict[str, dict[str, float]]:
    argv = sys.argv[1:] if argv is None else argv
    samples = Path(argv[0]) if argv else DEFAULT_SAMPLES
    rows = agreement_table(samples)
    print("| patch | cloud fraction | IoU | precision | recall |\n| --- | --- | --- | --- | --- |")
    for name, row in rows.items():
        print(
            f"| {name} | {row['cloud_fraction']:.2f} | {row['iou']:.3f} | "
            f"{row['precision']:.3f} | {row['recall']:.3f} |"
        )
    return rows


if __name__ == "__main__":
    main()
