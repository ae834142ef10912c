"""The few kinds of failure ksbuild knows; cli.py maps each to an exit code."""

from __future__ import annotations


class KsbuildError(Exception):
    """A build failed for a reason outside the user's input (exit 1)."""

    exit_code = 1

    def __init__(self, message: str, hint: str | None = None) -> None:
        super().__init__(message)
        self.hint = hint


class InputError(KsbuildError):
    """The user's input is wrong: a site file, a base ISO, an option (exit 2)."""

    exit_code = 2


class ToolError(KsbuildError):
    """An external program failed; the message names the command line (exit 1)."""
