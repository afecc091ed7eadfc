"""Which wheels the GPU machines need, and whether a folder of them is complete.

The GPU machines have Python 3.12 and an image of packages (``gpu-image-packages.txt``)
but no network, so ``scripts/gpu-wheels.sh`` carries the rest. What the rest is comes
from the installed project's own metadata, followed through every requirement (with
extras, for Python 3.12 on x86-64 Linux), so that a dependency added to
``pyproject.toml`` is carried without anyone editing a list.

    python scripts/gpu_wheels.py pins                 # name==version, one a line
    python scripts/gpu_wheels.py check .whl 60        # exit 1 when incomplete or too big
"""

from __future__ import annotations

import argparse
import email
import importlib.metadata
import os
import sys
import zipfile
from collections.abc import Iterable, Mapping
from pathlib import Path

from packaging.requirements import Requirement
from packaging.utils import NormalizedName, canonicalize_name, parse_wheel_filename

PROJECT = "m3rcr_xr"
IMAGE = Path(__file__).with_name("gpu-image-packages.txt")
#: the GPU machines' Python; another only to rehearse the check on a machine without it
PYTHON_VERSION = os.environ.get("PY_VERSION", "3.12")


def marker_environment(python_version: str) -> dict[str, str]:
    """CPython ``python_version`` on x86-64 Linux, for evaluating requirement markers."""
    return {
        "python_version": python_version,
        "python_full_version": f"{python_version}.0",
        "implementation_name": "cpython",
        "platform_python_implementation": "CPython",
        "sys_platform": "linux",
        "os_name": "posix",
        "platform_system": "Linux",
        "platform_machine": "x86_64",
    }


#: the GPU machine
TARGET = marker_environment(PYTHON_VERSION)
#: needed by the project but not by the check, and too big to carry: imagecodecs
#: (odc-geo[tiff], 40 MiB) compresses COG tiles; the check writes no COG
LEAVE_OUT = frozenset({canonicalize_name("imagecodecs")})


def image_packages(path: Path = IMAGE) -> set[NormalizedName]:
    """The packages the GPU machines' image has, by canonical name."""
    lines = (line.strip() for line in path.read_text().splitlines())
    return {canonicalize_name(line) for line in lines if line and not line.startswith("#")}


def _applies(requirement: Requirement, extras: Iterable[str], target: Mapping[str, str]) -> bool:
    if requirement.marker is None:
        return True
    return any(requirement.marker.evaluate({**target, "extra": extra}) for extra in (*extras, ""))


def runtime_closure(
    project: str = PROJECT, target: Mapping[str, str] = TARGET
) -> dict[NormalizedName, str]:
    """Every distribution the installed ``project`` needs at run time, with its version.

    Follows the requirements of the installed distributions (the extras they are asked
    with included) whose markers hold on ``target``; the project itself is left out.
    """
    seen: set[tuple[NormalizedName, frozenset[str]]] = set()
    versions: dict[NormalizedName, str] = {}
    pending = [(canonicalize_name(project), frozenset[str]())]
    while pending:
        name, extras = pending.pop()
        for line in importlib.metadata.requires(name) or []:
            requirement = Requirement(line)
            if not _applies(requirement, extras, target):
                continue
            needed = canonicalize_name(requirement.name)
            key = (needed, frozenset(requirement.extras))
            if key in seen:
                continue
            seen.add(key)
            versions[needed] = importlib.metadata.version(needed)
            pending.append(key)
    return versions


def pins(image: Iterable[str] | None = None, target: Mapping[str, str] = TARGET) -> list[str]:
    """``name==version`` of each runtime dependency that the image lacks, to download."""
    have = image_packages() if image is None else {canonicalize_name(n) for n in image}
    closure = runtime_closure(target=target)
    return [
        f"{name}=={version}"
        for name, version in sorted(closure.items())
        if name not in have and name not in LEAVE_OUT
    ]


def problems(dest: Path, image: Iterable[str], limit_mib: float) -> list[str]:
    """What keeps the wheels in ``dest`` from installing offline beside ``image``.

    A requirement of a wheel (for :data:`TARGET`) that neither the wheels nor the image
    have, a pin of :func:`pins` with no wheel, and a total over ``limit_mib``.
    """
    have = {canonicalize_name(name) for name in image}
    wheels = {parse_wheel_filename(path.name)[0]: path for path in sorted(dest.glob("*.whl"))}
    found = []
    for name, path in wheels.items():
        with zipfile.ZipFile(path) as archive:
            metadata = next(n for n in archive.namelist() if n.endswith(".dist-info/METADATA"))
            message = email.message_from_bytes(archive.read(metadata))
        for line in message.get_all("Requires-Dist") or []:
            requirement = Requirement(line)
            if not _applies(requirement, (), TARGET):
                continue
            needed = canonicalize_name(requirement.name)
            if needed not in wheels and needed not in have:
                found.append(f"{name} needs {line}, in neither the wheels nor the image")
    for pin in pins(have):
        if canonicalize_name(pin.split("==")[0]) not in wheels:
            found.append(f"no wheel of {pin} in {dest}")
    total = sum(path.stat().st_size for path in wheels.values()) / 2**20
    for path in wheels.values():
        print(f"{path.stat().st_size / 2**20:7.1f} MiB  {path.name}")
    print(f"{total:7.1f} MiB  in {len(wheels)} wheels ({dest})")
    if total > limit_mib:
        found.append(f"{total:.1f} MiB of wheels, more than {limit_mib:g} MiB")
    return found


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    commands = parser.add_subparsers(dest="command", required=True)
    commands.add_parser("pins", help="name==version of each wheel to download")
    check = commands.add_parser("check", help="whether the wheels in DEST are complete")
    check.add_argument("dest", type=Path)
    check.add_argument("limit_mib", type=float)
    args = parser.parse_args(argv)
    if args.command == "pins":
        print("\n".join(pins()))
        return 0
    found = problems(args.dest, image_packages(), args.limit_mib)
    if found:
        print("gpu-wheels:\n  " + "\n  ".join(found), file=sys.stderr)
    return 1 if found else 0


if __name__ == "__main__":
    sys.exit(main())
