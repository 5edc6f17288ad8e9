"""Errors that the CLI reports as one line and exit code 2 (bad usage or input)."""


class InspectorError(Exception):
    """A problem with the user's input that they can fix: the message says what and how.

    The CLI prints ``error: <message>`` and exits with code 2, with no traceback.
    """


class ImageReadError(InspectorError):
    """An image file that cannot be decoded; the message names the file and the reason."""


class ArtifactError(InspectorError):
    """A model file that does not follow the inspector artifact contract."""
