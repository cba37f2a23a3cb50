"""NATS, when configured: the connection, event publishing, key-value and governors.

Everything here sits behind the interfaces in :mod:`machinery.core` (``kv``, ``governor``) so the
embedded defaults (SQLite key-value, node-local governors) and NATS are interchangeable.
"""
