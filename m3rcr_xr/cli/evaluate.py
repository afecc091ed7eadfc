"""``m3rcr evaluate``: metrics per land-cover class of a prediction against its target
(the stores holding them merged), printed and with ``--out`` written as tables; with
``--semantic``, the land-cover scores of a classifier too."""

from __future__ import annotations

import argparse
from collections.abc import Sequence
from typing import TYPE_CHECKING

from ..exceptions import SchemaError, UsageError, argument
from .arguments import (
    add_scheduler_arguments,
    check_model_config,
    check_output_file,
    name_list,
    parse_config,
)

if TYPE_CHECKING:
    import xarray


def _name_or_none(text: str) -> str | None:
    """A variable name, or None for ``none`` (go without that variable)."""
    return None if text == "none" else text


def _evaluate(args: argparse.Namespace) -> int:
    from ..metrics import STRATA, evaluate
    from ..metrics.cells import check_strata

    strata = check_strata(args.level, STRATA if args.strata is None else args.strata)
    paths, earlier = _evaluate_tables(args)
    classifier_config = _classifier_config(args)
    stores = _open_stores(args.store)
    _check_prediction_held(args, stores)
    result = evaluate(
        stores,
        args.pred,
        args.target,
        level=args.level,
        protocol=args.protocol,
        strata=strata,
        landcover=args.landcover,
        cloudmask=args.cloudmask,
        semantic=args.semantic,
        classifier=args.classifier,
        classifier_config=classifier_config or None,
    )
    _print_tables(result, paths, earlier, semantic=args.semantic, overwrite=args.overwrite)
    return 0


def _evaluate_tables(args: argparse.Namespace) -> tuple[list[str], list[str]]:
    """Where ``m3rcr evaluate`` writes its tables (none without ``--out``): the metrics,
    then with ``--semantic`` the semantic scores beside them
    (:func:`m3rcr_xr.metrics.semantic_table_path`); and the earlier table it removes:
    without ``--semantic``, the semantic table of an earlier run there, which would
    be left beside this run's metrics. Each checked before any work.

    Raises
    ------
    UsageError
        A path that cannot be written, or one that exists without ``--overwrite``.
    StoreError
        A path inside a store it reads, or a file that is no table of ``evaluate``.
    """
    from ..location import check_apart
    from ..metrics import (
        TABLE_SUFFIXES,
        check_table_replaceable,
        is_semantic_table,
        semantic_table_path,
    )

    if not args.out:
        return [], []
    semantic_out = semantic_table_path(args.out)
    outputs = [args.out, semantic_out] if args.semantic else [args.out]
    earlier = [semantic_out] if not args.semantic and is_semantic_table(semantic_out) else []
    for path in outputs:
        check_output_file(path, "out", TABLE_SUFFIXES, overwrite=args.overwrite)
        check_apart(path, args.store)  # a file in a store is no part of it
        check_table_replaceable(path)  # --overwrite replaces only an earlier table
    if earlier and not args.overwrite:  # a table of ours beside --out: checked with it
        raise UsageError(
            f"{argument('out', args.out)}: {earlier[0]} holds the semantic scores of an "
            "earlier run, which would be left beside this run's table (no --semantic); "
            f"pass {argument('overwrite')} to remove it"
        )
    return outputs, earlier


def _classifier_config(args: argparse.Namespace) -> dict[str, object]:
    """The ``--classifier-config`` of ``m3rcr evaluate``, refused (with ``--classifier``)
    without ``--semantic``, and where the classifier's model cannot take it."""
    if not args.semantic and (args.classifier or args.classifier_config):
        raise UsageError("--classifier and --classifier-config go with --semantic")
    classifier_config = parse_config(args.classifier_config or [], "--classifier-config")
    if classifier_config:  # the classifier's model, known without its weights, takes it
        from ..metrics.semantic import resolve_classifier

        check_model_config(
            resolve_classifier(args.classifier, classifier_config)[0], classifier_config
        )
    return classifier_config


def _check_prediction_held(args: argparse.Namespace, stores: xarray.Dataset) -> None:
    """Refuse the default ``--pred decloud`` missing from the one store given: the
    decloud store was left out, perhaps; say how to give both.

    Raises
    ------
    SchemaError
        Naming the store, its variables and the command with both stores.
    """
    left_out = args.pred == "decloud" and len(args.store) == 1  # the decloud store, perhaps
    if left_out and args.pred not in stores.data_vars:
        raise SchemaError(
            f"{argument('pred', args.pred)}: {args.store[0]} has no variable {args.pred!r} "
            f"(it has {sorted(map(str, stores.data_vars))}); give the store that holds the "
            "prediction too: m3rcr evaluate SCENE.zarr DECLOUD.zarr"
        )


def _print_tables(
    result: xarray.Dataset,
    paths: Sequence[str],
    earlier: Sequence[str],
    *,
    semantic: bool,
    overwrite: bool,
) -> None:
    """Print the table(s) of ``result`` (with ``semantic``: the metrics, then the
    semantic scores) and write them to ``paths`` (none: print only), together
    (:func:`m3rcr_xr.metrics.write_tables`: a kill leaves no table beside one of another
    run), removing the ``earlier`` semantic table. Without ``overwrite``, a table that
    another run wrote there meanwhile is refused and kept."""
    from ..metrics import split_semantic, write_tables

    tables = split_semantic(result) if semantic else (result,)
    for table in tables:
        print(table.to_dataframe().to_string())
    if paths:
        write_tables(list(zip(tables, paths, strict=True)), remove=earlier, overwrite=overwrite)
    for path in earlier:
        print(f"removed {path}: the semantic table of an earlier run")
    for path in paths:
        print(f"wrote {path}")


def _open_stores(paths: Sequence[str]) -> xarray.Dataset:
    """The variables of the stores ``paths`` as one Dataset (``m3rcr evaluate
    scene.zarr decloud.zarr``: the target in one, the prediction in the other). Each
    variable keeps its own store in ``encoding["source"]`` (its coordinates are the
    first store's), by which the evaluation refuses a prediction of another scene.

    Raises
    ------
    SchemaError
        A variable in two of them, or stores on other grids (coordinates that differ).
    """
    import xarray as xr

    from ..store import open_zarr

    stores = {path: open_zarr(path) for path in paths}
    if len(stores) == 1:
        return next(iter(stores.values()))
    seen: dict[str, str] = {}
    for path, ds in stores.items():
        for name in map(str, ds.data_vars):
            if name in seen:
                raise SchemaError(f"{name}: a variable of both {seen[name]} and {path}")
            seen[name] = path
    try:  # coordinates are read at open: comparing them computes no data variable
        return xr.merge(
            list(stores.values()), join="exact", compat="equals", combine_attrs="override"
        )
    except (ValueError, xr.MergeError) as err:
        raise SchemaError(
            f"{', '.join(stores)}: not on one grid, so not evaluated together ({err})"
        ) from None


def add_evaluate(sub: argparse._SubParsersAction) -> None:
    """Add ``m3rcr evaluate`` to the subcommands ``sub``."""
    p = sub.add_parser("evaluate", help="metrics per land-cover class of a prediction")
    p.add_argument(
        "store",
        nargs="+",
        help="the Zarr store(s) holding the prediction and the target, their variables "
        "merged: e.g. the scene store, then the decloud store written from it",
    )
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
    p.add_argument(
        "--landcover",
        type=_name_or_none,
        default="landcover",
        metavar="VAR|none",
        help="land-cover variable (default landcover), or none: no classes, only all",
    )
    p.add_argument(
        "--cloudmask", default="cloudmask", help="cloud-mask variable (default cloudmask)"
    )
    p.add_argument(
        "--strata",
        type=name_list,
        metavar="STRATUM,...",
        help="cloud strata, of all, cloudy, clear (default all three); all alone needs no "
        "cloud mask",
    )
    p.add_argument(
        "--out",
        help="also write the table: a .csv or .json path (with --semantic, the semantic "
        "table too, beside it: NAME_semantic.csv)",
    )
    p.add_argument(
        "--overwrite",
        action="store_true",
        help="replace the --out table(s) of an earlier evaluate (other files never are)",
    )
    p.add_argument(
        "--semantic",
        action="store_true",
        help="also classify the prediction, the target and the cloudy input and score "
        "their land cover against WorldCover (OA, mIoU, IoU and F1 per class)",
    )
    p.add_argument(
        "--classifier",
        metavar="NAME|CKPT",
        help="with --semantic: registered weights (landcover_unet-demo: synthetic data "
        "only), a checkpoint of landcover_unet, or 'untrained' (random weights: tests)",
    )
    p.add_argument(
        "--classifier-config",
        action="append",
        metavar="KEY=VALUE",
        help="with --semantic: the classifier's architecture (repeatable), as --config",
    )
    add_scheduler_arguments(p)
    p.set_defaults(func=_evaluate)
