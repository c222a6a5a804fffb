"""User-facing errors: each says what is wrong, with which file or layer, and what to do.

The CLI prints these as one line (a traceback only with -v); anything else is a bug.
"""


class MedqkError(Exception):
    """Base class of every error medqk reports to a user."""


class CheckpointError(MedqkError):
    """A checkpoint file that cannot be read or does not fit the model."""


class InputError(MedqkError):
    """An image, array or folder given as input that medqk cannot use."""


class DataError(MedqkError):
    """A dataset folder whose layout or pairing is wrong."""
