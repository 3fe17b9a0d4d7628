"""Exceptions that carry a message meant for the user (the CLI prints them as one line)."""


class TinySamError(Exception):
    """Base class of tinysam-edge's user-facing errors."""


class CheckpointError(TinySamError):
    """A checkpoint file is missing, unreadable, unsafe to load or does not match the model."""


class WeightsError(TinySamError):
    """A registry weight file cannot be found, downloaded or verified."""
