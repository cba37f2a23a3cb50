"""machinery: autonomous agents for servers.

Finite state machines described in ``machine.yaml`` files, each keeping one thing healthy on its
own, compatible with Choria Autonomous Agents ("Choria Machine") manifests and events.
"""

__version__ = "0.1.0"

__all__ = ["__version__"]
