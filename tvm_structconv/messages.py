"""Errors in one line: what the command line, the compiler and the zoo report of a failure.

TVM's error messages start with a C++ backtrace and end with the check that failed; the last
line is the one a user can act on.
"""

from __future__ import annotations

__all__ = ["last_line", "one_line"]


def last_line(error: BaseException) -> str:
    """The last non-empty line of ``error``'s message (its type's name when it has none)."""
    lines = [line.strip() for line in str(error).splitlines() if line.strip()]
    return lines[-1] if lines else type(error).__name__


def one_line(error: BaseException) -> str:
    """``Type: last line of the message``."""
    return f"{type(error).__name__}: {last_line(error)}"
