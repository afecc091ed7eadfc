"""scripts/gpu_wheels.py: the wheels a GPU machine needs, and the check of a folder of them."""

from __future__ import annotations

import importlib.metadata
import importlib.util
import json
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest
from packaging.utils import canonicalize_name

SCRIPT = Path(__file__).parents[1] / "scripts" / "gpu_wheels.py"


@pytest.fixture(scope="module")
def gpu_wheels():
    spec = importlib.util.spec_from_file_location("gpu_wheels", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _pinned(gpu_wheels, target=None) -> set[str]:
    pins = gpu_wheels.pins(target=target or gpu_wheels.TARGET)
    return {canonicalize_name(pin.split("==")[0]) for pin in pins}


#: a GPU machine in an interpreter: a module of a distribution that is in neither the image
#: nor the wheels (argv[1]) cannot be imported, as there; then the check's imports
REHEARSAL = """
import importlib.metadata, json, sys
from packaging.utils import canonicalize_name

carried = set(json.loads(sys.argv[1]))
owners = importlib.metadata.packages_distributions()


class NotOnTheGpuMachine:
    def find_spec(self, name, path=None, target=None):
        dists = owners.get(name.partition(".")[0], ())
        if dists and not any(canonicalize_name(d) in carried for d in dists):
            raise ModuleNotFoundError(f"No module named {name!r} there", name=name)


sys.meta_path.insert(0, NotOnTheGpuMachine())
import m3rcr_xr, benchmarks.gpu_check
"""


def _rehearse(carried: set[str]) -> subprocess.CompletedProcess:
    argv = [sys.executable, "-c", REHEARSAL, json.dumps(sorted(carried))]
    return subprocess.run(argv, cwd=SCRIPT.parents[1], capture_output=True, text=True)


def test_the_check_imports_with_only_the_image_and_the_wheels(gpu_wheels):
    # the wheels this interpreter's Python would get (the GPU machines have 3.12)
    here = gpu_wheels.marker_environment("{}.{}".format(*sys.version_info))
    carried = _pinned(gpu_wheels, here) | gpu_wheels.image_packages()
    carried.add(canonicalize_name(gpu_wheels.PROJECT))
    done = _rehearse(carried)
    assert done.returncode == 0, done.stderr[-2000:]
    # the same interpreter without pystac (carried since the STAC reader came) fails
    without = {name for name in carried if not name.startswith("pystac")}
    done = _rehearse(without)
    assert "No module named 'pystac' there" in done.stderr


def test_the_pins_are_the_runtime_closure_less_the_image(gpu_wheels):
    pinned = _pinned(gpu_wheels)
    assert {"pystac", "odc-stac", "pooch", "rasterio", "zarr", "distributed"} <= pinned
    assert not pinned & gpu_wheels.image_packages()  # torch, numpy, xarray... are there
    assert not pinned & gpu_wheels.LEAVE_OUT
    for pin in gpu_wheels.pins():
        name, version = pin.split("==")
        assert importlib.metadata.version(name) == version  # what the tests run


def _wheel(folder: Path, name: str, *requires: str) -> Path:
    path = folder / f"{name}-1.0-py3-none-any.whl"
    lines = ["Metadata-Version: 2.1", f"Name: {name}", "Version: 1.0"]
    lines += [f"Requires-Dist: {line}" for line in requires]
    with zipfile.ZipFile(path, "w") as archive:
        archive.writestr(f"{name}-1.0.dist-info/METADATA", "\n".join(lines) + "\n")
    return path


def test_problems_names_what_would_not_install_offline(gpu_wheels, tmp_path, monkeypatch):
    monkeypatch.setattr(gpu_wheels, "pins", lambda have: ["alpha==1.0", "gamma==1.0"])
    _wheel(tmp_path, "alpha", "beta>=1", "numpy", "delta; python_version < '3'")
    found = gpu_wheels.problems(tmp_path, ["numpy"], limit_mib=1)
    assert found == [
        "alpha needs beta>=1, in neither the wheels nor the image",
        f"no wheel of gamma==1.0 in {tmp_path}",
    ]
    _wheel(tmp_path, "beta")
    _wheel(tmp_path, "gamma")
    assert gpu_wheels.problems(tmp_path, ["numpy"], limit_mib=1) == []
    assert gpu_wheels.problems(tmp_path, ["numpy"], limit_mib=0)[-1].endswith("more than 0 MiB")


def test_the_script_refuses_a_folder_of_wheels_it_did_not_write(tmp_path):
    mine = tmp_path / "mine-1.0-py3-none-any.whl"
    mine.write_bytes(b"someone's wheel")
    env = {"PATH": "/usr/bin:/bin", "PYTHON": sys.executable, "DEST": str(tmp_path)}
    done = subprocess.run(
        ["bash", str(SCRIPT.with_name("gpu-wheels.sh"))], env=env, capture_output=True, text=True
    )
    assert done.returncode == 2 and "did not write" in done.stderr  # before any download
    assert mine.read_bytes() == b"someone's wheel"
