"""`python -m detrun`: the same command line as the `detrun` script."""
from __future__ import annotations

from detrun.cli import main

if __name__ == "__main__":
    main(prog_name="detrun")
