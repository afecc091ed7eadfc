"""asv benchmarks of m3rcr_xr; they reuse the functions of ``benchmarks.quick``."""

import sys
from pathlib import Path

# asv imports this folder on its own: make the repository's ``benchmarks`` importable
sys.path.insert(0, str(Path(__file__).resolve().parents[2]))
