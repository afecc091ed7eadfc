#!/usr/bin/env bash
# Wheels for the GPU machines: the project's runtime dependencies that their image lacks
# (Python 3.12, x86-64 Linux, no network), at the versions of this checkout's environment
# so that the device runs what the tests ran, into .whl/ (ignored by git).
# scripts/gpu-check.sh installs them there with --no-index, then runs the check.
#
#   scripts/gpu-wheels.sh                          # versions from .venv/bin/python
#   PYTHON=/path/to/venv/bin/python scripts/gpu-wheels.sh
#   PY_VERSION=3.11 scripts/gpu-wheels.sh          # to rehearse on a machine without 3.12
#
# Which packages: scripts/gpu_wheels.py follows the installed project's requirements, less
# the image's packages (scripts/gpu-image-packages.txt). Fails when a wheel is missing for
# that platform, when a wheel needs a package that neither the other wheels nor the image
# have, or when the wheels pass LIMIT_MIB: a device call carries 64 MiB in all, this
# checkout (2 MiB) and the golden inputs and outputs (2 MiB) included. rasterio is most of
# it (34 MiB).
set -euo pipefail
cd "$(dirname "$0")/.."

PYTHON=${PYTHON:-.venv/bin/python}
DEST=${DEST:-.whl}
LIMIT_MIB=${LIMIT_MIB:-60}
export PY_VERSION=${PY_VERSION:-3.12}
PLATFORMS=()
for tag in manylinux_2_17 manylinux_2_24 manylinux_2_26 manylinux_2_27 manylinux_2_28 \
  manylinux_2_31 manylinux_2_34 manylinux_2_35 manylinux2014 manylinux1; do
  PLATFORMS+=(--platform "${tag}_x86_64")
done

mapfile -t PINS < <("$PYTHON" scripts/gpu_wheels.py pins)
# the wheels of an earlier run are replaced; a folder of someone else's wheels is refused
MARK="$DEST/.gpu-wheels"
if compgen -G "$DEST/*.whl" > /dev/null && [ ! -e "$MARK" ]; then
  echo "gpu-wheels: $DEST holds wheels this script did not write; name an empty DEST" >&2
  exit 2
fi
mkdir -p "$DEST"
touch "$MARK"
rm -f "$DEST"/*.whl
"$PYTHON" -m pip download --quiet --no-deps --only-binary=:all: --python-version "$PY_VERSION" \
  --implementation cp "${PLATFORMS[@]}" -d "$DEST" "${PINS[@]}" 2> >(grep -v "is ignored: it is neither" >&2)
"$PYTHON" scripts/gpu_wheels.py check "$DEST" "$LIMIT_MIB"
