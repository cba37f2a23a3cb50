"""``python -m machinery``."""

from machinery.cli.main import main

main()
