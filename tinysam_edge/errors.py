"""Exceptions that carry a message meant for the user (the CLI prints them as one line)."""

import re


class TinySamError(Exception):
    """Base class of tinysam-edge's user-facing errors."""


class CheckpointError(TinySamError):
    """A checkpoint file is missing, unreadable, unsafe to load or does not match the model."""


class WeightsError(TinySamError):
    """A registry weight file cannot be found, downloaded or verified."""


class ModelDirError(TinySamError):
    """An exported model directory is missing, incomplete, corrupt or from another format version."""


class DeviceError(TinySamError):
    """An OpenVINO device is unknown, absent or rejects the requested settings."""


#: Source-location lines of OpenVINO messages (not the cause).
_LOCATION = re.compile(r"^(Exception from \S+:\d+:?|Check '.*' failed at \S+:\d+:?)$")


def error_cause(exc: BaseException, limit: int = 400) -> str:
    """The lines of an exception's message that say what went wrong, on one line.

    OpenVINO's messages open with source locations ("Exception from src/...cpp:84:", "Check '...'
    failed at ...:"); the cause ("Incorrect weights in bin file!") comes after them. Those location
    lines are dropped; an exception without a message gives its type name.
    """
    lines = [line.strip() for line in str(exc).splitlines() if line.strip()]
    cause = [line for line in lines if not _LOCATION.match(line)] or lines
    text = " ".join(cause) or type(exc).__name__
    return text if len(text) <= limit else text[: limit - 3] + "..."


class Terminated(KeyboardInterrupt):
    """SIGTERM, raised like Ctrl-C so that every ``finally`` and context manager cleans up (temp files, staged dirs)."""
