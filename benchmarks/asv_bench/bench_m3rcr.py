"""Decloud, ingest and metrics: m3rcr_xr and the plain way, time and peak memory.

Each class runs one part of :mod:`benchmarks.quick` on small data; the ``way``
parameter is ``m3rcr_xr`` or ``baseline``, so asv's tables put the two side by side.
"""

from __future__ import annotations

import tempfile
from pathlib import Path

from benchmarks import bench_decloud, quick

SIZE = {"decloud": 512, "ingest": 1024, "metrics": 1024}


class _Part:
    part = ""
    params = ("m3rcr_xr", "baseline")  # asv's parameter grid: one axis
    param_names = ("way",)
    timeout = 600

    def prepare(self, folder: Path) -> None:
        """Write what the part reads (the parent of :mod:`benchmarks.quick` does this)."""

    def setup(self, way: str) -> None:
        self._tmp = tempfile.TemporaryDirectory()
        folder = Path(self._tmp.name)
        self.prepare(folder)
        self.run = quick.SETUPS[self.part](folder, SIZE[self.part])[way]
        self.run()  # warm-up: models built, caches filled

    def teardown(self, way: str) -> None:
        self._tmp.cleanup()

    def time_run(self, way: str) -> None:
        self.run()

    def peakmem_run(self, way: str) -> None:
        self.run()


class Decloud(_Part):
    part = "decloud"

    def prepare(self, folder: Path) -> None:
        bench_decloud._checkpoint(folder, bench_decloud.CONFIG)


class Ingest(_Part):
    part = "ingest"

    def prepare(self, folder: Path) -> None:
        quick.write_quartet(folder / "quartet", SIZE["ingest"])


class Metrics(_Part):
    part = "metrics"
