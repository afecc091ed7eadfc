"""``m3rcr train``: train a network on a Zarr store with the published recipe (a cloud
removal network, or a land-cover classifier with ``--task landcover``); write its
checkpoint, and with ``--export`` its weights as safetensors."""

from __future__ import annotations

import argparse
import dataclasses

from ..exceptions import UsageError
from .arguments import MODEL_HELP, add_config_argument, check_output_file, parse_config

#: the files train writes: its checkpoint (--out) and the weights it exports (--export)
CHECKPOINT_SUFFIXES = (".pth", ".pt", ".ckpt")
EXPORT_SUFFIXES = (".safetensors",)
#: the model ``m3rcr train --task`` takes without ``--model`` (None: --model is required)
TASK_MODELS = {"cloud_removal": None, "landcover": "landcover_unet"}


def _train(args: argparse.Namespace) -> int:
    from ..train import TrainSettings, train

    # and train checks they are its own to write, and holds them for the run
    check_output_file(args.out, "out", CHECKPOINT_SUFFIXES)
    if args.export:
        check_output_file(args.export, "export", EXPORT_SUFFIXES)
    # each setting is the option of its name (--batch-size: batch_size), but --workers
    options = {
        field.name: getattr(args, "workers" if field.name == "num_workers" else field.name)
        for field in dataclasses.fields(TrainSettings)
    }
    options["model"] = args.model or TASK_MODELS.get(args.task or "cloud_removal")
    if options["model"] is None:
        raise UsageError("--model is required (dsen2_cr, glf_cr or align_cr)")
    settings = TrainSettings(**{**options, "config": parse_config(args.config)})
    result = train(
        args.store,
        args.out,
        settings,
        val=args.val,
        resume=args.resume,
        progress=True,
        overwrite=args.overwrite,
        export=args.export,
    )
    print(f"wrote {result.checkpoint} (step {result.step}, {result.wall_s:.0f} s)")
    for stratum, values in result.metrics.get("model", {}).items():
        if "input" not in result.metrics:  # a classifier
            print(f"validation {stratum}: OA {values['OA']:.4g}, mIoU {values['mIoU']:.4g}")
            continue
        baseline = result.metrics["input"][stratum]
        print(
            f"validation {stratum}: "
            + ", ".join(
                f"{name} {values[name]:.4g} (cloudy input {baseline[name]:.4g})"
                for name in ("PSNR", "SSIM", "SAM", "MAE")
            )
        )
    if result.export is not None:
        print(f"wrote {result.export}")
    return 0


def add_train(sub: argparse._SubParsersAction) -> None:
    """Add ``m3rcr train`` to the subcommands ``sub``."""
    p = sub.add_parser("train", help="train a network on a Zarr store (published recipe)")
    p.add_argument("store", help="training data: a scene or collection store")
    p.add_argument("--model", help=f"{MODEL_HELP} (--task landcover: landcover_unet)")
    add_config_argument(p)
    p.add_argument(
        "--task",
        choices=("cloud_removal", "landcover"),
        help="cloud_removal (cloudy + sar to cloudfree; default) or landcover "
        "(a classifier: cloudfree to the WorldCover classes of landcover)",
    )
    p.add_argument(
        "--level", type=int, choices=(1, 2), help="landcover: WorldCover level (default 1)"
    )
    p.add_argument(
        "--class-weights",
        choices=("balanced", "none"),
        help="landcover: weigh the classes in the loss (default none)",
    )
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
    p.add_argument(
        "--resume",
        metavar="CKPT",
        help="continue the run of this checkpoint (it may be the --out file itself)",
    )
    p.add_argument(
        "--overwrite",
        action="store_true",
        help="replace the --out checkpoint of another run and --export weights of m3rcr "
        "(other files never are)",
    )
    p.add_argument("--val", metavar="STORE", help="validation store (centre crops)")
    p.add_argument(
        "--workers", "--num-workers", type=int, default=0, help="DataLoader worker processes"
    )
    p.add_argument("--device", default="auto", help="auto, cpu, cuda, cuda:1 ...")
    p.add_argument(
        "--amp",
        choices=("auto", "bf16", "fp16", "off"),
        default="auto",
        help="mixed precision on a GPU (never on the CPU); auto: bf16 where the GPU has it "
        "natively (compute capability 8 and up), else float32 (default auto)",
    )
    p.add_argument(
        "--export",
        metavar="FILE.safetensors",
        help="also write the final weights as safetensors (model and config in its metadata)",
    )
    p.set_defaults(func=_train)
