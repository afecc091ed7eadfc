"""``python -m m3rcr_xr.cli``: the ``m3rcr`` command, where the console script is not
on the PATH (``python -m m3rcr_xr.cli train ...`` in scripts/train_demo_*.sh)."""

import sys

from . import main

if __name__ == "__main__":  # not when a tool imports every module (pydoc, sphinx)
    sys.exit(main())
