"""Errors and warnings raised by the recording library (`import flor`)."""

from __future__ import annotations


class FlorError(Exception):
    """Root of every error flor raises; the message names the problem and the fix."""


class FlorArgError(FlorError, ValueError):
    """A command-line value for `flor.arg` is unknown or cannot be cast to the default's type."""


class FlorNameError(FlorError, ValueError):
    """A logged name is invalid or collides (case-insensitively) with another name."""


class FlorRepoError(FlorError):
    """The script is not inside a git repository, or git failed to snapshot the code."""


class FlorCheckpointError(FlorError, TypeError):
    """An object passed for checkpointing lacks `state_dict`/`load_state_dict`."""


class FlorReplayError(FlorError):
    """A replay request (FLOR_REPLAY) cannot be honoured: missing checkpoint, bad spec."""


class FlorWarning(UserWarning):
    """Something was not recorded, but the run goes on (unsupported value, unread --kwargs)."""
