"""The recipes in scripts/ that README figures come from still run (on the samples)."""

from __future__ import annotations

import importlib.util
from pathlib import Path

SCRIPTS = Path(__file__).resolve().parents[1] / "scripts"


def _script(name: str):
    spec = importlib.util.spec_from_file_location(name, SCRIPTS / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_evaluate_demo_classifier_runs_both_levels_on_real_data(samples_dir, capsys):
    _script("evaluate_demo_classifier").main([str(samples_dir / "test")])
    rows = [line for line in capsys.readouterr().out.splitlines() if line.startswith("| test")]
    assert [row.split(" | ")[1:3] for row in rows] == [
        ["1", "demo"],
        ["1", "demo"],
        ["2", "untrained"],
        ["2", "untrained"],
    ]
