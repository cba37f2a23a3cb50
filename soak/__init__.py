"""``python -m soak``: machinery under load and faults for a while (``make soak``).

See :mod:`soak.run` for the store soak and ``docs/reliability.md`` for what it measures.
"""
