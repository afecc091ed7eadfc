#!/usr/bin/env bash
# Wheels for the GPU machines: the project's runtime dependencies that their image lacks
# (Python 3.12, x86-64 Linux, no network), at the versions of this checkout's environment
# so that the device runs what the tests ran, into .whl/ (ignored by git).
# scripts/gpu-check.sh installs them there with --no-index, then runs the check.
#
#   scripts/gpu-wheels.sh                          # versions from .venv/bin/python
#   PYTHON=/path/to/venv/bin/python scripts/gpu-wheels.sh
#
# Fails when a wheel is missing for that platform, when a wheel needs a package that
# neither the other wheels nor the image have (scripts/gpu-image-packages.txt), or when
# the wheels pass LIMIT_MIB: a device call carries 64 MiB in all, this checkout (1 MiB)
# and the golden inputs and outputs (2 MiB) included. rasterio is most of it (34 MiB).
set -euo pipefail
cd "$(dirname "$0")/.."

PYTHON=${PYTHON:-.venv/bin/python}
DEST=${DEST:-.whl}
LIMIT_MIB=${LIMIT_MIB:-60}
IMAGE=scripts/gpu-image-packages.txt
# pyproject's dependencies and theirs, for Python 3.12 on Linux, less the image's packages
PACKAGES=(
  affine cachetools click-plugins cligj dask distributed donfig flox google-crc32c locket
  numcodecs numpy-groupies odc-geo partd pyproj rasterio rioxarray shapely tblib tornado
  zarr zict
)
PLATFORMS=()
for tag in manylinux_2_17 manylinux_2_24 manylinux_2_26 manylinux_2_27 manylinux_2_28 \
  manylinux_2_31 manylinux_2_34 manylinux_2_35 manylinux2014 manylinux1; do
  PLATFORMS+=(--platform "${tag}_x86_64")
done

mapfile -t PINS < <("$PYTHON" - "${PACKAGES[@]}" <<'PY'
import importlib.metadata
import sys

for name in sys.argv[1:]:
    print(f"{name}=={importlib.metadata.version(name)}")
PY
)

mkdir -p "$DEST"
rm -f "$DEST"/*.whl
"$PYTHON" -m pip download --quiet --no-deps --only-binary=:all: --python-version 3.12 \
  --implementation cp "${PLATFORMS[@]}" -d "$DEST" "${PINS[@]}"

# every requirement of every wheel (for Python 3.12 on Linux) is a wheel or in the image
"$PYTHON" - "$DEST" "$IMAGE" "$LIMIT_MIB" <<'PY'
import email
import sys
import zipfile
from pathlib import Path

from packaging.requirements import Requirement
from packaging.utils import canonicalize_name, parse_wheel_filename

dest, image, limit_mib = Path(sys.argv[1]), Path(sys.argv[2]), float(sys.argv[3])
have = {
    canonicalize_name(line.strip())
    for line in image.read_text().splitlines()
    if line.strip() and not line.startswith("#")
}
wheels = {parse_wheel_filename(path.name)[0]: path for path in sorted(dest.glob("*.whl"))}
target = {
    "python_version": "3.12", "python_full_version": "3.12.3", "implementation_name": "cpython",
    "platform_python_implementation": "CPython", "sys_platform": "linux", "os_name": "posix",
    "platform_system": "Linux", "platform_machine": "x86_64", "extra": "",
}
missing = []
for name, path in wheels.items():
    with zipfile.ZipFile(path) as archive:
        metadata = next(n for n in archive.namelist() if n.endswith(".dist-info/METADATA"))
        requires = email.message_from_bytes(archive.read(metadata)).get_all("Requires-Dist") or []
    for line in requires:
        requirement = Requirement(line)
        if requirement.marker and not requirement.marker.evaluate(target):
            continue
        needed = canonicalize_name(requirement.name)
        if needed not in wheels and needed not in have:
            missing.append(f"{name} needs {line}")
total = sum(path.stat().st_size for path in wheels.values()) / 2**20
for name, path in wheels.items():
    print(f"{path.stat().st_size / 2**20:7.1f} MiB  {path.name}")
print(f"{total:7.1f} MiB  in {len(wheels)} wheels ({dest})")
if missing:
    sys.exit("gpu-wheels: not in the wheels nor the image:\n  " + "\n  ".join(missing))
if total > limit_mib:
    sys.exit(f"gpu-wheels: {total:.1f} MiB of wheels, more than {limit_mib:g} MiB")
PY
