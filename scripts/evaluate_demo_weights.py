"""Metrics of the shipped demo weights next to the do-nothing baseline, as Markdown.

    python scripts/evaluate_demo_weights.py [--weights FILE] HELDOUT.zarr SAMPLES/test ...

Each argument is a Zarr store or an M3R-CR split folder. Every patch is decloud-ed
whole (tiles of 256, mirrored past the edges) with the weights of ``--weights`` (a
safetensors file from ``m3rcr train --export``; default: the shipped demo weights) and
compared with the cloud-free target by
``m3rcr_xr.evaluate`` (pooled over the pixels; strata all and cloudy), next to the cloudy
input taken as the prediction.
"""

from __future__ import annotations

import argparse
from pathlib import Path

import xarray as xr

import m3rcr_xr
from m3rcr_xr.weights import DefaultCheckpoint, default_checkpoint, read_weights

METRICS = ("PSNR", "SSIM", "SAM", "MAE")
STRATA = ("all", "cloudy")


def open_any(path: str) -> xr.Dataset:
    """A Zarr store or an M3R-CR split folder."""
    return m3rcr_xr.open_zarr(path) if m3rcr_xr.is_complete(path) else m3rcr_xr.open_m3rcr(path)


def table_rows(label: str, ds: xr.Dataset, weights: DefaultCheckpoint) -> list[str]:
    """Markdown rows: the cloudy input and the demo weights, per stratum."""
    pred = m3rcr_xr.decloud(ds, weights.model, weights.path, config=weights.config, device="cpu")
    ds = ds.assign(decloud=pred, identity=ds["cloudy"].astype("float32"))
    n = ds.sizes.get("patch", 1)
    rows = []
    for name, var in (("cloudy input (do nothing)", "identity"), ("demo weights", "decloud")):
        result = m3rcr_xr.evaluate(ds, var, "cloudfree", level=None, strata=STRATA)
        for stratum in STRATA:
            cell = result.sel(stratum=stratum, landcover_class="all")
            values = " | ".join(f"{float(cell[m]):.4f}" for m in METRICS)
            share = int(cell["n_pixels"])
            rows.append(
                f"| {label} ({n} patch{'es' if n > 1 else ''}) | {stratum} ({share} px) "
                f"| {name} | {values} |"
            )
    return rows


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--weights", help="safetensors file (default: the shipped weights)")
    parser.add_argument("data", nargs="+", help="Zarr stores or M3R-CR split folders")
    args = parser.parse_args(argv)
    m3rcr_xr.set_options(progress=False)
    weights = read_weights(args.weights) if args.weights else default_checkpoint()
    print("| data | pixels | prediction | " + " | ".join(METRICS) + " |")
    print("| --- | --- | --- | " + " | ".join("---" for _ in METRICS) + " |")
    for path in args.data:
        for row in table_rows(Path(path).name, open_any(path), weights):
            print(row, flush=True)


if __name__ == "__main__":
    main()
