"""The ``machinery`` console script: answers ``--version`` before loading anything else.

The command-line framework (typer, click, rich) alone takes several times an interpreter's
start; a version check, run by scripts and package managers, should not pay for it.
"""

from __future__ import annotations

import sys

__all__ = ["main"]


def main() -> None:
    """Console script entry point."""
    if sys.argv[1:] == ["--version"]:
        from machinery import __version__

        sys.stdout.write(f"machinery {__version__}\n")
        return
    from machinery.cli.main import main as full_main

    full_main()
