"""Exceptions that carry a message meant for the user (the CLI prints them as one line)."""


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
