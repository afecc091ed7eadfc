"""The ``m3rcr`` command line: ``ingest``, ``info``, ``decloud``, ``demo``, ``train``.

Bad input ends with exit status 2 and one line naming the file and the problem.
"""

from __future__ import annotations

import argparse
import logging
import os
import sys
from collections.abc import Callable, Sequence
from pathlib import Path

from .exceptions import M3RCRError, UsageError, argument, command_line_names

log = logging.getLogger("m3rcr_xr")
EXIT_BAD_INPUT = 2
#: file suffixes of the files the commands write besides their stores
COG_SUFFIXES = (".tif", ".tiff")
CHECKPOINT_SUFFIXES = (".pth", ".pt", ".ckpt")
EXPORT_SUFFIXES = (".safetensors",)
#: the names live in the model records (m3rcr_xr.models.records), which import torch;
#: the command line reads them only when a name is refused, so that --help stays fast
MODEL_HELP = "model name, e.g. dsen2_cr (an unknown name is refused with the known ones)"


def _check_output_file(
    path: str, name: str, suffixes: Sequence[str], *, overwrite: bool | None = None
) -> Path:
    """Check, before any work, that the file ``path`` (given as ``--name``) can be written.

    Its suffix must be one of ``suffixes`` and its folder must exist and be writable
    (a typo in a folder name fails now, not after hours of computing). With ``overwrite``
    False, an existing file is refused: the command replaces only what the user asked
    it to; with None (commands that replace their own outputs), it is not checked.

    Raises
    ------
    UsageError
        Naming the flag and the path.
    """
    target = Path(path)
    flag = argument(name, path)
    if target.suffix.lower() not in suffixes:
        raise UsageError(
            f"{flag}: write a {'/'.join(suffixes)} file, not {target.suffix or 'no suffix'!r}"
        )
    folder = target.parent
    if not folder.is_dir():
        raise UsageError(f"{flag}: folder {folder} does not exist")
    if not os.access(folder, os.W_OK | os.X_OK):
        raise UsageError(f"{flag}: folder {folder} is not writable")
    if target.is_dir():
        raise UsageError(f"{flag}: {target} is a folder")
    if overwrite is False and target.exists():
        raise UsageError(f"{flag}: {target} exists; pass {argument('overwrite')} to replace it")
    return target


OVERWRITE_HELP = "replace a store written by m3rcr (other folders and files never are)"


def _ingest(args: argparse.Namespace) -> int:
    from .io import open_m3rcr, open_quartet
    from .store import check_destination, to_zarr

    inputs = (args.src, args.root, args.cloudfree, args.sar, args.landcover, args.cloudmask)
    check_destination(args.dest, inputs=[p for p in inputs if p], overwrite=args.overwrite)
    source = Path(args.src)
    if source.is_dir():
        ds = open_m3rcr(source, align=args.align)
    elif source.suffix.lower() == ".csv":
        ds = open_m3rcr(args.root or source.parent, source, align=args.align)
    else:
        ds = open_quartet(
            source, args.cloudfree, args.sar, args.landcover, args.cloudmask, align=args.align
        )
    to_zarr(ds, args.dest, overwrite=args.overwrite)
    print(f"wrote {args.dest}")
    return 0


def _info(args: argparse.Namespace) -> int:
    from .store import open_zarr
    from .summary import describe

    print(describe(open_zarr(args.store), stats=args.stats))
    return 0


def _demo(args: argparse.Namespace) -> int:
    from .demo import run_demo

    run_demo(Path(args.out), size=args.size, tta=None if args.tta == "none" else args.tta)
    return 0


def _parse_config(items: Sequence[str]) -> dict[str, object]:
    """``["n_feats=16", "preset=small"]`` to a dict, numbers as numbers."""
    import ast

    config: dict[str, object] = {}
    for item in items:
        key, sep, text = item.partition("=")
        if not sep or not key:
            raise UsageError(f"--config {item!r}: expected KEY=VALUE")
        try:
            config[key] = ast.literal_eval(text)
        except (ValueError, SyntaxError):
            config[key] = text
    return config


def _write_cog(array, path: Path) -> None:
    """Write a Cloud-Optimised GeoTIFF whole or not at all: into a hidden file beside
    ``path``, renamed over it once complete (a crash leaves no partial GeoTIFF)."""
    partial = path.with_name(f".{path.name}.{os.getpid()}.partial")
    try:
        array.rio.to_raster(partial, driver="COG", compress="DEFLATE")
        os.replace(partial, path)
    finally:
        partial.unlink(missing_ok=True)


def _decloud(args: argparse.Namespace) -> int:
    import xarray as xr

    from .inference import decloud
    from .schema import is_collection
    from .store import check_apart, check_destination, open_zarr, to_zarr

    config = _parse_config(args.config)  # arguments first, then the data
    checkpoints = args.checkpoint or [None]
    inputs = [p for p in (args.input, *checkpoints) if p]
    check_destination(args.output, inputs=inputs, overwrite=args.overwrite)
    if args.cog:
        check_apart(args.cog, inputs)
        check_apart(args.cog, [args.output], role="output store")
        _check_output_file(args.cog, "cog", COG_SUFFIXES, overwrite=args.overwrite)
    ds = open_zarr(args.input)
    if args.cog and is_collection(ds):
        raise UsageError(
            f"--cog: a Cloud-Optimised GeoTIFF needs a scene, {args.input} holds a collection"
        )
    result = decloud(
        ds,
        args.model,
        checkpoints[0] if len(checkpoints) == 1 else checkpoints,
        config=config,
        tile=args.tile,
        overlap=args.overlap,
        batch_size=args.batch_size,
        device=args.device,
        composite=args.composite,
        precision=args.precision,
        tta=args.tta,
        uncertainty=args.uncertainty,
    )
    result = result if isinstance(result, xr.Dataset) else result.to_dataset()
    to_zarr(result, args.output, overwrite=args.overwrite, progress=True)
    print(f"wrote {args.output}")
    if args.cog:
        _write_cog(open_zarr(args.output)["decloud"], Path(args.cog))
        print(f"wrote {args.cog}")
    return 0


def _add_config_argument(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--config",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="architecture argument, repeatable (e.g. preset=small)",
    )


def _add_decloud(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("decloud", help="remove clouds from a scene or collection store")
    p.add_argument("input", help="Zarr store with cloudy and sar (from m3rcr ingest)")
    p.add_argument("output", help="Zarr store to write the decloud variable to")
    p.add_argument("--model", default="dsen2_cr", help=MODEL_HELP)
    p.add_argument(
        "--checkpoint",
        action="append",
        help="weights (.pth published layout, state dict, .safetensors); repeat it for an "
        "ensemble of one model family and configuration, averaged",
    )
    _add_config_argument(p)
    p.add_argument("--tile", type=int, help="tile size (default: the model's)")
    p.add_argument("--overlap", type=int, help="tile overlap in pixels (default: tile // 8)")
    p.add_argument("--batch-size", type=int, default=8, help="tiles per forward pass")
    p.add_argument("--device", default="auto", help="auto, cpu, cuda, cuda:1 ...")
    p.add_argument(
        "--precision", default="fp32", help="on a GPU: fp32 (default), bf16, fp16 or auto"
    )
    p.add_argument(
        "--composite", action="store_true", help="keep the cloudy input outside the cloud mask"
    )
    p.add_argument(
        "--tta",
        help="test-time augmentation: flips (4 passes a tile) or d4 (8), averaged",
    )
    p.add_argument(
        "--uncertainty",
        action="store_true",
        help="also write decloud_std, the spread over ensemble members and TTA transforms",
    )
    p.add_argument("--cog", help="also write a Cloud-Optimised GeoTIFF here (scenes only)")
    p.add_argument("--overwrite", action="store_true", help=OVERWRITE_HELP)
    p.set_defaults(func=_decloud)


def _add_ingest(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("ingest", help="read M3R-CR files into a Zarr store")
    p.add_argument(
        "src",
        help="a split folder (train/, test/), a file-list CSV, or a cloudy "
        "GeoTIFF (then give the other layers as options)",
    )
    p.add_argument("dest", help="the Zarr store to write (path or fsspec URL)")
    p.add_argument("--root", help="data root of a CSV's paths (default: the CSV's folder)")
    p.add_argument("--cloudfree", help="cloud-free GeoTIFF of a quartet")
    p.add_argument("--sar", help="Sentinel-1 GeoTIFF of a quartet")
    p.add_argument("--landcover", help="WorldCover GeoTIFF of a quartet")
    p.add_argument("--cloudmask", help="cloud mask (.npy or GeoTIFF) of a quartet")
    p.add_argument(
        "--align",
        choices=("coords", "shape"),
        default="coords",
        help="put the 10 m layers on the 3 m grid by coordinates or by shape",
    )
    p.add_argument("--overwrite", action="store_true", help=OVERWRITE_HELP)
    p.set_defaults(func=_ingest)


def _add_info(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("info", help="describe a Zarr store")
    p.add_argument("store")
    p.add_argument("--stats", action="store_true", help="also compute cloud and class shares")
    p.set_defaults(func=_info)


def _add_demo(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("demo", help="run the whole job on a synthetic scene")
    p.add_argument("--out", default="demo-output", help="output folder")
    p.add_argument("--size", type=int, default=2048, help="scene edge in pixels")
    p.add_argument(
        "--tta",
        default="flips",
        help="test-time augmentation and its uncertainty layer: flips (default), d4 or none",
    )
    p.set_defaults(func=_demo)


def _evaluate(args: argparse.Namespace) -> int:
    from .metrics import TABLE_SUFFIXES, evaluate, write_table
    from .store import open_zarr

    if args.out:
        _check_output_file(args.out, "out", TABLE_SUFFIXES)
    result = evaluate(
        open_zarr(args.store), args.pred, args.target, level=args.level, protocol=args.protocol
    )
    print(result.to_dataframe().to_string())
    if args.out:
        write_table(result, args.out)
        print(f"wrote {args.out}")
    return 0


def _add_evaluate(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("evaluate", help="metrics per land-cover class of a prediction")
    p.add_argument("store", help="a Zarr store holding the prediction and the target")
    p.add_argument("--pred", default="decloud", help="prediction variable (default decloud)")
    p.add_argument("--target", default="cloudfree", help="target variable (default cloudfree)")
    p.add_argument(
        "--level",
        type=int,
        choices=(1, 2),
        default=1,
        help="WorldCover class level: 1 (7 groups) or 2 (11 classes)",
    )
    p.add_argument(
        "--protocol",
        choices=("pooled", "per_patch"),
        default="pooled",
        help="pool all pixels, or average per-patch metrics (collections)",
    )
    p.add_argument("--out", help="also write the table: a .csv or .json path")
    p.set_defaults(func=_evaluate)


def _train(args: argparse.Namespace) -> int:
    from .train import TrainSettings, export_weights, train

    _check_output_file(args.out, "out", CHECKPOINT_SUFFIXES)
    if args.export:
        _check_output_file(args.export, "export", EXPORT_SUFFIXES)
    settings = TrainSettings(
        model=args.model,
        steps=args.steps,
        config=_parse_config(args.config),
        batch_size=args.batch_size,
        crop=args.crop,
        lr=args.lr,
        lr_step=args.lr_step,
        lr_decay_start=args.lr_decay_start,
        seed=args.seed,
        checkpoint_every=args.checkpoint_every,
        num_workers=args.workers,
        device=args.device,
        amp=args.amp,
    )
    result = train(args.store, args.out, settings, val=args.val, resume=args.resume, progress=True)
    print(f"wrote {result.checkpoint} (step {result.settings.steps}, {result.wall_s:.0f} s)")
    for stratum, values in result.metrics.get("model", {}).items():
        baseline = result.metrics["input"][stratum]
        print(
            f"validation {stratum}: "
            + ", ".join(
                f"{name} {values[name]:.4g} (cloudy input {baseline[name]:.4g})"
                for name in ("PSNR", "SSIM", "SAM", "MAE")
            )
        )
    if args.export:
        print(f"wrote {export_weights(result.checkpoint, args.export)}")
    return 0


def _add_train(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("train", help="train a network on a Zarr store (published recipe)")
    p.add_argument("store", help="training data: a scene or collection store")
    p.add_argument("--model", required=True, help=MODEL_HELP)
    _add_config_argument(p)
    p.add_argument("--steps", type=int, required=True, help="optimiser steps in all")
    p.add_argument("--out", required=True, help="checkpoint to write (.pth)")
    p.add_argument("--batch-size", type=int, help="crops per step (published: 1, Align-CR 2)")
    p.add_argument("--crop", type=int, help="crop side (default: the model's tile, else 160)")
    p.add_argument("--lr", type=float, help="learning rate (published: 1e-4)")
    p.add_argument("--lr-step", type=int, help="halve the rate every N steps (default steps/6)")
    p.add_argument(
        "--lr-decay-start", type=int, help="first halving after this step (default steps/3)"
    )
    p.add_argument("--seed", type=int, help="seed of weights and crops (published: 7)")
    p.add_argument(
        "--checkpoint-every",
        type=int,
        metavar="N",
        help="write the checkpoint (and validate) every N steps",
    )
    p.add_argument("--resume", metavar="CKPT", help="continue the run of this checkpoint")
    p.add_argument("--val", metavar="STORE", help="validation store (centre crops)")
    p.add_argument(
        "--workers", "--num-workers", type=int, default=0, help="DataLoader worker processes"
    )
    p.add_argument("--device", default="auto", help="auto, cpu, cuda, cuda:1 ...")
    p.add_argument(
        "--amp",
        choices=("auto", "bf16", "fp16", "off"),
        default="auto",
        help="mixed precision on a GPU (never on the CPU)",
    )
    p.add_argument(
        "--export",
        metavar="FILE.safetensors",
        help="also write the final weights as safetensors (model and config in its metadata)",
    )
    p.set_defaults(func=_train)


#: each adds one subcommand; later commands (decloud, evaluate, train) add theirs here
SUBCOMMANDS: list[Callable[[argparse._SubParsersAction], None]] = [
    _add_ingest,
    _add_info,
    _add_decloud,
    _add_evaluate,
    _add_demo,
    _add_train,
]


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="m3rcr", description=__doc__.splitlines()[0])
    parser.add_argument("-v", "--verbose", action="store_true", help="log more")
    sub = parser.add_subparsers(dest="command", required=True)
    for add in SUBCOMMANDS:
        add(sub)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of ``m3rcr``; returns the exit status."""
    args = build_parser().parse_args(argv)
    logging.basicConfig(
        level=logging.INFO if args.verbose else logging.WARNING,
        format="%(levelname)s %(name)s: %(message)s",
    )
    if not args.verbose:  # distributed sets its own loggers to INFO
        logging.getLogger("distributed").setLevel(logging.WARNING)
    try:
        with command_line_names():  # errors name --flags, not Python arguments
            return args.func(args)
    except M3RCRError as err:
        print(f"m3rcr {args.command}: error: {err}", file=sys.stderr)
        return EXIT_BAD_INPUT


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
