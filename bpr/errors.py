"""User-facing errors.

Everything a user can get wrong (a missing file, a malformed RLE, a mask of the wrong size)
raises :class:`BprInputError` with a one-line message. The CLI prints that line and exits
non-zero; the service maps it to a 4xx JSON body. Anything else is a bug and may traceback.
"""


class BprInputError(ValueError):
    """Bad input from the user: the message is shown to them verbatim, on one line."""


class ModelNotAvailableError(RuntimeError):
    """No usable refiner checkpoint: none given and none bundled, or an unreadable one."""
