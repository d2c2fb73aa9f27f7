"""Errors lockstep reports to a person.

`UsageError` is bad input: the CLI prints its one line and exits 2 before anything changes.
`Unreachable` is a server we could not talk to (also exit 2: "could not", never "consistent").
"""


class LockstepError(Exception):
    """Base class: the message is one line that says what is wrong and how to fix it."""

    exit_code = 1


class UsageError(LockstepError):
    exit_code = 2


class ConfigError(UsageError):
    """A stack file or the catalog is malformed or breaks a cross-field rule."""


class Unreachable(LockstepError):
    exit_code = 2


class IntegrityError(UsageError):
    """Bytes or metadata do not match what the catalog says (sha256, `_meta`)."""


class GuardRefused(LockstepError):
    """An operation would break an invariant (delete a live index, mix versions in one index)."""
