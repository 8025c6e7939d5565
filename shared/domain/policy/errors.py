"""The one exception the policy engine raises."""

from __future__ import annotations


class PolicyError(ValueError):
    """A policy that cannot be used: bad HuJSON, bad structure, a failed validation or test.

    `line` and `column` (1-based) point into the policy text when the problem has a position
    (syntax errors, and structural errors found while the position was known); otherwise None.
    `message` is the reason, worded like Tailscale's where Tailscale has a wording.
    """

    def __init__(self, message: str, line: int | None = None, column: int | None = None):
        self.message = message
        self.line = line
        self.column = column
        where = f"line {line}, column {column}: " if line is not None else ""
        super().__init__(where + message)
