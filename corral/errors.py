"""Errors that reach the user as one clear line (never a raw traceback)."""


class CorralError(Exception):
    """Base class of corral's own errors."""

    exit_code = 1


class UsageError(CorralError):
    """A user mistake on the command line, in configuration or in the inputs: exit code 2."""

    exit_code = 2


class InputError(CorralError):
    """Input data corral cannot read (undecodable bytes, unreadable file): names path and offset."""


class JobFailed(CorralError):
    """A task still failed after its retries: exit code 1, no ``_SUCCESS``."""
