"""The packaging files agree: environment.yml (conda) carries the runtime dependencies of
pyproject.toml, with the same lower bounds, and no test tool; the package is typed.
"""

from __future__ import annotations

import tomllib
from pathlib import Path

import yaml
from packaging.requirements import Requirement

REPO = Path(__file__).resolve().parents[1]
#: extras that are part of what a user runs (environment.yml has them), not tools
RUNTIME_EXTRAS = ("hpc", "cloud")
#: conda-forge names of PyPI packages (the CPU and GPU builds of torch included)
CONDA_TO_PYPI = {
    "pytorch": "torch",
    "pytorch-cpu": "torch",
    "pytorch-gpu": "torch",
    "matplotlib-base": "matplotlib",
    "dask": "dask[array]",
}
#: pip extras, which conda has not: the packages each one stands for in environment.yml
EXTRAS_IN_CONDA = {"odc-geo[tiff]": ("odc-geo", "tifffile", "imagecodecs")}
#: what conda itself needs in the file besides the packages
CONDA_ONLY = {"python", "pip"}


def _lower_bound(requirement: Requirement) -> str | None:
    bounds = [spec.version for spec in requirement.specifier if spec.operator == ">="]
    return bounds[0] if bounds else None


def _key(requirement: Requirement) -> str:
    name = requirement.name.lower().replace("_", "-")
    return f"{name}[{','.join(sorted(requirement.extras))}]" if requirement.extras else name


def _pyproject() -> dict:
    return tomllib.loads((REPO / "pyproject.toml").read_text())


def pyproject_runtime() -> dict[str, str | None]:
    """Runtime requirements of pyproject.toml (dependencies and runtime extras): name to
    lower bound."""
    project = _pyproject()["project"]
    lines = [*project["dependencies"]]
    for extra in RUNTIME_EXTRAS:
        lines += project["optional-dependencies"][extra]
    found: dict[str, str | None] = {}
    for requirement in map(Requirement, lines):
        base, *extra = EXTRAS_IN_CONDA.get(_key(requirement), (_key(requirement),))
        found[base] = _lower_bound(requirement)
        found.update(dict.fromkeys(extra))  # unbounded: the extra's own choice
    return found


def environment() -> dict[str, str | None]:
    """The conda packages of environment.yml, by their PyPI names: name to lower bound."""
    spec = yaml.safe_load((REPO / "environment.yml").read_text())
    found: dict[str, str | None] = {}
    for entry in spec["dependencies"]:
        if isinstance(entry, dict):  # the pip section: the package itself
            assert entry == {"pip": ["-e ."]}, entry
            continue
        requirement = Requirement(entry)
        name = requirement.name.lower()
        if name not in CONDA_ONLY:
            found[_key(Requirement(CONDA_TO_PYPI.get(name, name)))] = _lower_bound(requirement)
    return found


def test_environment_yml_has_the_runtime_dependencies_of_pyproject():
    assert environment() == pyproject_runtime()


def test_environment_yml_has_no_test_tool():
    dev = {
        _key(Requirement(line)) for line in _pyproject()["project"]["optional-dependencies"]["dev"]
    }
    tools = {name.split("[")[0] for name in dev} | {"moto", "flask", "flask-cors"}
    assert tools.isdisjoint(environment()), tools & set(environment())


def test_conda_names_map_to_pypi_names():
    # the mapping is applied: torch appears as torch, whatever build the file names
    assert {"torch", "matplotlib", "dask[array]", "scipy"} <= set(environment())


def test_the_package_is_typed_and_mypy_is_configured():
    assert (REPO / "m3rcr_xr" / "py.typed").is_file()
    config = _pyproject()
    assert "py.typed" in config["tool"]["setuptools"]["package-data"]["m3rcr_xr"]
    assert config["tool"]["mypy"]["files"] == ["m3rcr_xr"]
    assert "mypy" in (REPO / "Makefile").read_text()


def test_one_minimum_python_everywhere():
    """zarr 3 and ``tomllib`` need 3.11: the package metadata, conda, the type checker,
    the linter and the README's set-up line all say the same minimum."""
    config = _pyproject()
    minimum = _lower_bound(Requirement(f"python{config['project']['requires-python']}"))
    spec = yaml.safe_load((REPO / "environment.yml").read_text())
    conda = next(e for e in spec["dependencies"] if isinstance(e, str) and e.startswith("python"))
    assert minimum == "3.11"
    assert _lower_bound(Requirement(conda)) == minimum
    assert config["tool"]["mypy"]["python_version"] == minimum
    assert config["tool"]["ruff"]["target-version"] == "py" + minimum.replace(".", "")
    assert f"(Python {minimum}+, `make`)" in (REPO / "README.md").read_text()
