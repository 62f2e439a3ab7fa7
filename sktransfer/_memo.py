"""The one LRU of the package: thread-safe, bounded by a total weight.

Used for built networks shared by clones (``_network``), file digests
(``_identity``) and the in-memory layer of embedding caches (``_cache``,
weighted by bytes).
"""

from __future__ import annotations

import threading
from collections import OrderedDict
from collections.abc import Callable

__all__ = ["Memo"]


def _one(value) -> int:
    return 1


class Memo:
    """A thread-safe LRU mapping whose entries weigh at most ``size`` in all.

    Parameters
    ----------
    size : int
        The bound: a number of entries, or of ``weigh`` units (bytes...).
    weigh : callable, default=None
        The weight of a value (default: 1 per entry). A value heavier than
        ``size`` is not kept.
    """

    def __init__(self, size: int, weigh: Callable[[object], int] | None = None):
        self.size = size
        self._weigh = weigh or _one
        self._entries: OrderedDict = OrderedDict()
        self._weight = 0
        self._lock = threading.Lock()

    def __len__(self) -> int:
        return len(self._entries)

    @property
    def weight(self) -> int:
        """The total weight of the entries held now."""
        return self._weight

    def get(self, key):
        """The value under ``key`` (now the most recently used), or None."""
        if key is None:
            return None
        with self._lock:
            value = self._entries.get(key)
            if value is not None:
                self._entries.move_to_end(key)
            return value

    def put(self, key, value) -> None:
        """Keep ``value`` under ``key``, dropping the least recently used
        entries past the bound (None keys are never kept)."""
        if key is None:
            return
        weight = self._weigh(value)
        with self._lock:
            old = self._entries.pop(key, None)
            if old is not None:
                self._weight -= self._weigh(old)
            if weight > self.size:
                return
            self._entries[key] = value
            self._weight += weight
            while self._weight > self.size:
                _, dropped = self._entries.popitem(last=False)
                self._weight -= self._weigh(dropped)

    def clear(self) -> None:
        with self._lock:
            self._entries.clear()
            self._weight = 0
