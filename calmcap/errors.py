"""Exception types that carry a one-line, user-facing message.

The CLI prints ``str(error)`` for these and exits non-zero without a traceback (unless
``--debug``); anything else is a bug and keeps its traceback.
"""


class CalmcapError(Exception):
    """Base class for errors whose message is meant for the user."""


class ConfigError(CalmcapError):
    """A model or run configuration is invalid (unknown key, wrong type, bad value)."""


class CheckpointError(CalmcapError):
    """A checkpoint directory is missing files, corrupted, or of another architecture."""


class ManifestError(CalmcapError):
    """A manifest or annotation file is malformed; the message names file, line and field."""


class VideoDecodeError(CalmcapError):
    """A video cannot be opened or decoded; the message names the file and the reason."""

    def __init__(self, path: str, reason: str) -> None:
        self.path = str(path)
        self.reason = reason
        super().__init__(f"{self.path}: {reason}")
