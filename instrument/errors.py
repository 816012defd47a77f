"""Errors and warnings raised by the recording library (`import flor`)."""

from __future__ import annotations

import contextlib
import warnings


class FlorError(Exception):
    """Root of every error flor raises; the message names the problem and the fix."""


class FlorArgError(FlorError, ValueError):
    """A command-line value for `flor.arg` is unknown or cannot be cast to the default's type."""


class FlorNameError(FlorError, ValueError):
    """A logged name is invalid or collides (case-insensitively) with another name."""


class FlorRepoError(FlorError):
    """The script is not inside a git repository, or git failed to snapshot the code."""


class FlorStorageError(FlorError, OSError):
    """The flor home cannot be written when a run starts (read-only or missing directory, no
    permission); the message names the directory and how to point flor elsewhere."""


class FlorCheckpointError(FlorError, TypeError):
    """An object passed for checkpointing lacks `state_dict`/`load_state_dict`."""


class FlorReplayError(FlorError):
    """A replay request (FLOR_REPLAY) cannot be honoured: missing checkpoint, bad spec."""


class FlorWarning(UserWarning):
    """Something was not recorded, but the run goes on (unsupported or unencodable value,
    unread --kwargs, a disk that refuses writes during the run)."""


def warn_background(message: str, origin: str) -> None:
    """A FlorWarning from flor's own threads and exit hooks, where no line of the user's code
    is to blame: shown as `<origin>:0: FlorWarning: ...`, never raised (not even under
    `-W error`, which would end the thread that has to go on)."""
    with contextlib.suppress(Exception):
        warnings.warn_explicit(message, FlorWarning, origin, 0)
