"""Exceptions that map to exit codes: a `UsageError` is a bad target or option (exit 2)."""
from __future__ import annotations


class UsageError(Exception):
    """Bad usage: an unknown check, a malformed option, a target that cannot be loaded.

    The CLI prints `str(exc)` as one line on stderr and exits 2; the message must say what to fix.
    """


class TargetError(UsageError):
    """The target spec could not be turned into a model."""
