"""User-facing errors of the node room.

Every mistake a user can make (bad config, missing file, wrong genesis, unreadable
key) surfaces as a `UserError` with a one-line message that names the field and the
fix; the CLI prints it and exits non-zero without a traceback.
"""

from __future__ import annotations


class UserError(Exception):
    """A mistake in what the user gave us; `str(err)` is the whole message."""

    exit_code = 2


class ConfigError(UserError):
    """A node config or genesis field is missing, mistyped or out of range."""


class KeyFileError(UserError):
    """The node key file is missing, unreadable or malformed."""


class StateError(UserError):
    """The state directory cannot be used (locked by another daemon, corrupt log...)."""

    exit_code = 3


class ResolveError(UserError):
    """A peer's host name does not resolve (now: DNS may come back, so the daemon retries)."""


class DaemonUnreachable(UserError):
    """No daemon answers on the status socket."""

    exit_code = 4


class DiskFull(StateError, OSError):
    """No space left where the state directory lives (ENOSPC/EDQUOT). While running this is
    a state (node/storage/log.py holds new entries and retries); at start it is this one-line error.
    Also an OSError, so code that handled the raw ENOSPC still catches it."""
