"""`python -m samadapt3d ...` = the `samadapt3d` command (used where the console script is not on PATH, e.g. Slicer)."""
import sys

from .cli import main

sys.exit(main())
