"""Errors and warnings raised by sktransfer."""

__all__ = ["ImageReadError", "WeightsUnavailableError"]


class WeightsUnavailableError(OSError):
    """Pretrained weights could not be obtained (offline and not in the cache).

    The message says where torch looks for the file and how to pass a local
    checkpoint instead. The original exception is chained as ``__cause__``.
    """


class ImageReadError(OSError, ValueError):
    """An input image could not be read or decoded.

    Raised for a missing file, a directory, a file that cannot be read, an
    empty or truncated file, a file that is not an image of an accepted
    format, an image larger than ``max_pixels``, or pixel values outside the
    accepted range. Both an ``OSError`` and a ``ValueError``, so either
    ``except`` clause catches it. The original exception, if any, is chained
    as ``__cause__``.

    Attributes
    ----------
    index : int or None
        Position of the image in the input (its row in the output).
    path : str or None
        The file, when the image was given as a path.
    """

    def __init__(self, message, *, index=None, path=None):
        super().__init__(message)
        self.index = index
        self.path = path
