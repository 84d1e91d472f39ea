"""One exception type for every problem a user can fix.

The CLI prints these as a single message (problem + fix) without a traceback; anything
else is a bug and keeps its traceback.
"""

from __future__ import annotations


class SaelineageError(Exception):
    """A user-facing error: says what is wrong and how to fix it."""

    def __init__(self, problem: str, fix: str | None = None):
        self.problem = problem
        self.fix = fix
        super().__init__(problem if fix is None else f"{problem}\n  Fix: {fix}")
