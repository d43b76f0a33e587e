"""Errors a command raises to stop with one clear line and a documented exit code (printed by ``cli.main``)."""

from __future__ import annotations

EXIT_OK = 0
EXIT_FAILED = 1  # the work ran but something could not be written / rendered; `check`: a leak
EXIT_USAGE = 2  # bad arguments, unreadable or invalid input file
EXIT_INCONCLUSIVE = 3  # `check`: the report cannot tell
EXIT_INTERRUPTED = 130


class CommandError(Exception):
    """One line for the user (without the ``otel-leak:`` prefix) and the exit code that goes with it."""

    exit_code = EXIT_FAILED

    def __init__(self, message: str, exit_code: int | None = None) -> None:
        super().__init__(message)
        if exit_code is not None:
            self.exit_code = exit_code


class UsageError(CommandError):
    """Bad arguments or an input that is not what the command reads: exit 2, after the verb's usage line."""

    exit_code = EXIT_USAGE

    def __init__(self, message: str, usage: str | None = None) -> None:
        super().__init__(message)
        self.usage = usage
