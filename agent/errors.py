"""One exception root for everything a user can get wrong or the field can break.

Every error carries a one-line ``message`` naming what is wrong, a ``hint`` saying how
to fix it, and the process ``exit_code`` the CLI returns (BSD ``sysexits.h`` values, so
systemd and shell scripts can tell a bad config from an unreachable server).
Modelled on psycopg's ``errors.py``: callers catch :class:`AgentError` and print
``str(err)``; no traceback reaches the user.
"""

from __future__ import annotations

# sysexits.h (BSD): the conventional exit codes for daemons and CLIs.
EX_USAGE = 64
EX_DATAERR = 65
EX_NOINPUT = 66
EX_UNAVAILABLE = 69
EX_SOFTWARE = 70
EX_CANTCREAT = 73
EX_IOERR = 74
EX_TEMPFAIL = 75
EX_CONFIG = 78


class AgentError(Exception):
    """Root of every error the agent reports to a user.

    Args:
        message: what is wrong, naming the offending key, file, device or server.
        hint: what the user can do about it (may be empty).

    Attributes:
        exit_code: process exit status the CLI returns for this error (sysexits.h).
    """

    exit_code: int = EX_SOFTWARE

    def __init__(self, message: str, hint: str = "") -> None:
        super().__init__(message)
        self.message = message
        self.hint = hint

    def __str__(self) -> str:
        if self.hint:
            return f"{self.message}\n  hint: {self.hint}"
        return self.message


class ConfigError(AgentError):
    """The configuration file is missing, unparsable or has invalid values (exit 78)."""

    exit_code = EX_CONFIG


class DeviceError(AgentError):
    """The capture device cannot be found or opened (exit 69)."""

    exit_code = EX_UNAVAILABLE


class InputError(AgentError):
    """An input file (WAV/FLAC) is missing, unreadable or in an unsupported format (exit 66)."""

    exit_code = EX_NOINPUT


class ModelError(AgentError):
    """The classification model cannot be found or loaded (exit 66)."""

    exit_code = EX_NOINPUT


class StoreError(AgentError):
    """The local SQLite queue cannot be opened or written (exit 74)."""

    exit_code = EX_IOERR


class SyncError(AgentError):
    """The central PostgreSQL server is unreachable or refused the data (exit 75, retry later)."""

    exit_code = EX_TEMPFAIL


class UsageError(AgentError):
    """An option's value makes no sense (e.g. a report's range that ends before it starts) (exit 64)."""

    exit_code = EX_USAGE


class NoDataError(AgentError):
    """What was asked for holds no data: a report's range without windows, an unknown device (exit 66)."""

    exit_code = EX_NOINPUT


class MissingExtraError(AgentError):
    """A command needs an optional extra that is not installed (e.g. ``report``) (exit 69)."""

    exit_code = EX_UNAVAILABLE


class OutputError(AgentError):
    """An output file or directory cannot be created or written (exit 73)."""

    exit_code = EX_CANTCREAT
