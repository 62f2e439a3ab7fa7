"""A small thread-safe LRU: built networks shared by clones (``_network``),
file digests (``_identity``)."""

from __future__ import annotations

import threading
from collections import OrderedDict

__all__ = ["Memo"]


class Memo:
    """A thread-safe LRU mapping of at most ``size`` entries."""

    def __init__(self, size: int):
        self.size = size
        self._entries: OrderedDict = OrderedDict()
        self._lock = threading.Lock()

    def get(self, key):
        if key is None:
            return None
        with self._lock:
            value = self._entries.get(key)
            if value is not None:
                self._entries.move_to_end(key)
            return value

    def put(self, key, value) -> None:
        if key is None:
            return
        with self._lock:
            self._entries[key] = value
            self._entries.move_to_end(key)
            while len(self._entries) > self.size:
                self._entries.popitem(last=False)

    def clear(self) -> None:
        with self._lock:
            self._entries.clear()
