"""Run the kit's command line: ``python -m municipality_kit ...``."""

from __future__ import annotations

from municipality_kit.cli import main

if __name__ == "__main__":
    raise SystemExit(main())
