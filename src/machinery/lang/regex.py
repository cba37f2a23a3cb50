"""Regular expressions as Choria evaluates them: RE2 (Go's ``regexp`` syntax), linear time.

Patterns come from manifests and specifications and are matched against data, facts and
identities that may be hostile; a backtracking engine could be stalled by them, RE2 cannot.
"""

from __future__ import annotations

import functools
from typing import Any, Final

import re2

__all__ = ["MAX_PATTERN_LENGTH", "RegexError", "compile_regex"]

MAX_PATTERN_LENGTH: Final = 1000

_OPTIONS = re2.Options()
_OPTIONS.log_errors = False  # errors are raised, not printed on stderr


class RegexError(ValueError):
    """The pattern is too long or not valid RE2 syntax; the message says why."""


@functools.lru_cache(maxsize=256)
def compile_regex(pattern: str) -> Any:
    """``pattern`` compiled (cached); the result has ``search(text)`` like ``re``'s."""
    if len(pattern) > MAX_PATTERN_LENGTH:
        raise RegexError(
            f"regular expression too long ({len(pattern)} characters, at most {MAX_PATTERN_LENGTH})"
        )
    try:
        return re2.compile(pattern, options=_OPTIONS)
    except re2.error as exc:
        reason = exc.args[0] if exc.args else "invalid"
        if isinstance(reason, bytes):
            reason = reason.decode("utf-8", "replace")
        raise RegexError(f"invalid regular expression {pattern!r}: {reason}") from None
