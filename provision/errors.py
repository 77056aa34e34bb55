"""Errors a user can cause, each carrying the one message and the fix the CLI shows.

Exit codes follow the CLI convention: 2 for usage or input errors (bad profile, unknown name,
unreachable endpoint, disk full, hash mismatch), 1 for "it does not fit / the check failed".
"""

from __future__ import annotations

EXIT_OK = 0
EXIT_FAILED = 1
EXIT_USAGE = 2


class ProvisionError(Exception):
    """A problem the user can fix: `message` says what, `hint` says how."""

    exit_code = EXIT_USAGE
    # What went wrong, as a word scripts can match (the --json envelope's error.code); each
    # subclass names its own.
    code = "input"

    def __init__(self, message: str, hint: str | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.hint = hint

    def __str__(self) -> str:
        return self.message if not self.hint else f"{self.message}\n{self.hint}"


class CheckFailed(ProvisionError):
    """The machine or the environment fails a check (exit 1), e.g. an unsatisfiable lock."""

    exit_code = EXIT_FAILED
    code = "check_failed"
