"""Errors a user can fix (bad input, unknown ids): the CLI prints one line and exits 2."""

from __future__ import annotations


class DispatchError(Exception):
    """Base of every refusal caused by the caller's input; nothing has been changed."""


class ConfigError(DispatchError):
    """The configuration file is invalid; the message names the entry and the field."""


class UnknownIdError(DispatchError):
    """One or more ids given on the command line do not exist; nothing was changed."""


class RefusedError(DispatchError):
    """The operation is not allowed in the current state (e.g. ignoring a sent action)."""
