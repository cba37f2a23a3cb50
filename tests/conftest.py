"""Test-wide set-up: the same event loop configuration as the machinery entry points."""

from machinery.core.loop import install_child_watcher

install_child_watcher()

from tests.agent.conftest import agent_factory  # noqa: E402,F401  (an in-process agent anywhere)
from tests.natsserver import nats_server  # noqa: E402,F401  (a fixture for every test module)
