"""Semantic evaluation of the demo weights with the demo classifier, as Markdown.

    python scripts/evaluate_demo_classifier.py [--classifier FILE] HELDOUT.zarr SAMPLES/test ...

Each argument is a Zarr store or an M3R-CR split folder. Every patch is decloud-ed
whole with the shipped ``"dsen2_cr-demo"`` weights; then the cloud-free target, the
decloud result and the cloudy input are classified by ``m3rcr_xr.evaluate_semantic``
with the classifier of ``--classifier`` (a safetensors file of ``m3rcr train --task
landcover --export``; default: the shipped ``"landcover_unet-demo"``) and scored
against WorldCover at level 1 (OA and mIoU, pooled over the pixels; strata all and
cloudy). The real samples are scored at level 2 too, with an untrained level-2
classifier: that row shows the evaluation runs end to end at that level, nothing more.
"""

from __future__ import annotations

import argparse
from pathlib import Path

import xarray as xr

import m3rcr_xr

STRATA = ("all", "cloudy")
SOURCES = ("target", "pred", "cloudy")
#: the level-2 run on the real samples: an untrained classifier of the 11 classes
LEVEL2 = {"classifier": "untrained", "classifier_config": {"level": 2, "preset": "small"}}


def open_any(path: str) -> xr.Dataset:
    """A Zarr store or an M3R-CR split folder."""
    return m3rcr_xr.open_zarr(path) if m3rcr_xr.is_complete(path) else m3rcr_xr.open_m3rcr(path)


def table_rows(label: str, result: xr.Dataset, level: int, classifier: str) -> list[str]:
    """Markdown rows: mIoU and OA of each source, per stratum."""
    rows = []
    for stratum in STRATA:
        cells = []
        for source in SOURCES:
            cell = result.sel(source=source, stratum=stratum)
            cells.append(f"{float(cell.mIoU):.3f} / {float(cell.OA):.3f}")
        n = int(result.n_labelled.sel(source="target", stratum=stratum))
        rows.append(
            f"| {label} | {level} | {classifier} | {stratum} ({n} px) | " + " | ".join(cells) + " |"
        )
    return rows


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--classifier", default="landcover_unet-demo", help="safetensors file")
    parser.add_argument("data", nargs="+", help="Zarr stores or M3R-CR split folders")
    args = parser.parse_args(argv)
    m3rcr_xr.set_options(progress=False)
    print("| data | level | classifier | stratum | mIoU / OA: target | decloud | cloudy |")
    print("| --- | --- | --- | --- | --- | --- | --- |")
    for path in args.data:
        ds = open_any(path)
        ds = ds.assign(decloud=m3rcr_xr.decloud(ds, checkpoint="dsen2_cr-demo", device="cpu"))
        label = f"{Path(path).name} ({ds.sizes.get('patch', 1)} patches)"
        runs = [(1, {"classifier": args.classifier}, "demo")]
        if not m3rcr_xr.is_complete(path):  # real data: level 2 as well (untrained)
            runs.append((2, LEVEL2, "untrained"))
        for level, classifier, name in runs:
            result = m3rcr_xr.evaluate_semantic(
                ds, strata=STRATA, level=level, device="cpu", **classifier
            )
            for row in table_rows(label, result, level, name):
                print(row, flush=True)


if __name__ == "__main__":
    main()
