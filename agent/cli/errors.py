"""How a failed ``herd`` ends: its exit codes and the two exceptions that carry them.

Apart from client.py so that ``herd --version`` and ``herd --help`` need no HTTP client.
"""

from __future__ import annotations

EXIT_FAILED = 1  # the server refused or the command failed
EXIT_USAGE = 2  # the command line is wrong (click's usage errors)
EXIT_UNREACHABLE = 3  # no server answered
EXIT_PIPE = 141  # the reader of our output went away (`herd jobs | head -1`), as a shell reports SIGPIPE


class CliError(Exception):
    """A failure told in one line (``herd: ...``) with its exit code, never a traceback."""

    def __init__(self, message: str, code: int = EXIT_FAILED) -> None:
        super().__init__(message)
        self.code = code


class PipeClosed(Exception):
    """Whoever read our output went away (``herd jobs | head -1``): not an error to tell anyone about."""
