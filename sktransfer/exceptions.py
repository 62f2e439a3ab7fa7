"""Errors and warnings raised by sktransfer."""

__all__ = ["WeightsUnavailableError"]


class WeightsUnavailableError(OSError):
    """Pretrained weights could not be obtained (offline and not in the cache).

    The message says where torch looks for the file and how to pass a local
    checkpoint instead. The original exception is chained as ``__cause__``.
    """
