"""``python -m machinery``."""

from machinery.cli.entry import main

main()
