"""Test-wide set-up: the same event loop configuration as the machinery entry points."""

from machinery.core.loop import install_child_watcher

install_child_watcher()
