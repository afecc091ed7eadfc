"""The quick benchmark's parts run: each way of each part once, on small data."""

from pathlib import Path

import pytest

import m3rcr_xr
from benchmarks import bench_decloud, quick

#: what each part's parent process writes before its children time the two ways
PREPARE = {
    "decloud": lambda folder, size: bench_decloud._checkpoint(folder, bench_decloud.CONFIG),
    "ingest": lambda folder, size: quick.write_quartet(folder / "quartet", size),
    "stac": lambda folder, size: quick.write_stac(folder / "stac", size),
}


@pytest.mark.parametrize("part", list(quick.SETUPS))
def test_both_ways_of_each_part_run(tmp_path: Path, part: str):
    size = 96
    PREPARE.get(part, lambda folder, size: None)(tmp_path, size)
    with m3rcr_xr.set_options(progress=False):
        ways = quick.SETUPS[part](tmp_path, size)
        assert set(ways) == {"m3rcr_xr", "baseline"}
        for run in ways.values():
            run()
