"""The one LRU of the package: thread-safe, bounded by a total weight.

Used for built networks shared by clones (``_network``), file digests
(``_identity``) and the in-memory layer of embedding caches (``_cache``,
weighted by bytes). Several memos may also share a :class:`Budget`: one
bound on their total weight, the least recently used entry of any of them
dropped first (the memory layers of all embedding caches share one).
"""

from __future__ import annotations

import itertools
import threading
import weakref
from collections import OrderedDict
from collections.abc import Callable

__all__ = ["Budget", "Memo"]


def _one(value) -> int:
    return 1


class Budget:
    """A bound on the total weight of several :class:`Memo` objects, with
    one LRU order across them.

    Parameters
    ----------
    size : int
        The bound on the weight of all the memos' entries together; setting
        it drops entries at once.
    """

    def __init__(self, size: int):
        self._size = size
        self.lock = threading.RLock()  # (shared by the memos of the budget)
        self._order: OrderedDict = OrderedDict()  # (memo, key) -> weight
        self._memos: dict[int, weakref.ref] = {}
        self._tokens = itertools.count()
        self._weight = 0
        self._dead: list[int] = []  # memos collected, entries still counted

    @property
    def size(self) -> int:
        return self._size

    @size.setter
    def size(self, size: int) -> None:
        with self.lock:
            self._size = size
            self._trim()

    @property
    def weight(self) -> int:
        """The total weight of the entries of all the memos now."""
        return self._weight

    # (the methods below are called with ``lock`` held)
    def _join(self, memo: Memo) -> int:
        token = next(self._tokens)
        self._memos[token] = weakref.ref(memo)
        return token

    def _leave(self, token: int) -> None:
        """A memo was garbage collected: its entries are forgotten at the
        next addition (not here: a collection may run inside any method)."""
        self._dead.append(token)

    def _add(self, token: int, key, weight: int) -> None:
        while self._dead:
            dead = self._dead.pop()
            self._memos.pop(dead, None)
            for item in [item for item in self._order if item[0] == dead]:
                self._weight -= self._order.pop(item)
        self._order[token, key] = weight
        self._weight += weight

    def _drop(self, token: int, key) -> None:
        weight = self._order.pop((token, key), None)
        if weight is not None:
            self._weight -= weight

    def _touch(self, token: int, key) -> None:
        if (token, key) in self._order:
            self._order.move_to_end((token, key))

    def _trim(self) -> None:
        while self._weight > self._size:
            (token, key), weight = self._order.popitem(last=False)
            self._weight -= weight
            memo = self._memos.get(token)
            memo = memo() if memo is not None else None
            if memo is not None:
                memo._evict(key)


class Memo:
    """A thread-safe LRU mapping whose entries weigh at most ``size`` in all.

    Parameters
    ----------
    size : int
        The bound: a number of entries, or of ``weigh`` units (bytes...).
        Setting it drops entries at once.
    weigh : callable, default=None
        The weight of a value (default: 1 per entry). A value heavier than
        ``size`` is not kept.
    budget : Budget, default=None
        A bound shared with other memos: their entries together weigh at
        most ``budget.size``, the least recently used of any memo dropped
        first.
    """

    def __init__(
        self,
        size: int,
        weigh: Callable[[object], int] | None = None,
        budget: Budget | None = None,
    ):
        self._size = size
        self._weigh = weigh or _one
        self._entries: OrderedDict = OrderedDict()
        self._weight = 0
        self._budget = budget
        self._lock: threading.Lock | threading.RLock
        if budget is None:
            self._lock = threading.Lock()
        else:
            self._lock = budget.lock
            with budget.lock:
                self._token = budget._join(self)
            weakref.finalize(self, budget._leave, self._token)

    def __len__(self) -> int:
        return len(self._entries)

    @property
    def size(self) -> int:
        return self._size

    @size.setter
    def size(self, size: int) -> None:
        with self._lock:
            self._size = size
            self._trim()

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
                if self._budget is not None:
                    self._budget._touch(self._token, key)
            return value

    def get_many(self, keys) -> list:
        """The value under each of ``keys`` (None where absent), as
        :meth:`get` gives them, under one lock."""
        with self._lock:
            values = [self._entries.get(key) for key in keys]
            for key, value in zip(keys, values, strict=True):
                if value is not None:
                    self._entries.move_to_end(key)
                    if self._budget is not None:
                        self._budget._touch(self._token, key)
        return values

    def put(self, key, value) -> None:
        """Keep ``value`` under ``key``, dropping the least recently used
        entries past the bound (None keys are never kept)."""
        if key is None:
            return
        weight = self._weigh(value)
        budget = self._budget
        with self._lock:
            self._evict(key)
            if weight > self._size or (budget is not None and weight > budget.size):
                return
            self._entries[key] = value
            self._weight += weight
            if budget is not None:
                budget._add(self._token, key, weight)
            self._trim()
            if budget is not None:
                budget._trim()

    def clear(self) -> None:
        with self._lock:
            while self._entries:
                self._evict(next(iter(self._entries)))

    # (called with the lock held)
    def _evict(self, key) -> None:
        value = self._entries.pop(key, None)
        if value is not None:
            self._weight -= self._weigh(value)
            if self._budget is not None:
                self._budget._drop(self._token, key)

    def _trim(self) -> None:
        while self._weight > self._size:
            self._evict(next(iter(self._entries)))
