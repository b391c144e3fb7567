"""A least-recently-used map bounded in bytes: the one eviction rule of the caches that hold arrays (the slice
embeddings, the slice strategy's and the crop engine's click objects, the server's images)."""
from __future__ import annotations

from collections import OrderedDict
from typing import Generic, Hashable, Iterator, TypeVar

V = TypeVar("V")


class ByteLRU(Generic[V]):
    """key -> value, each with its size in bytes. Past `max_bytes` the least recently used entries go; the latest
    always stays (one larger than the bound on its own is kept until the next). Not thread-safe: callers lock."""

    def __init__(self, max_bytes: int) -> None:
        self.max_bytes = int(max_bytes)
        self.used_bytes = 0
        self._entries: OrderedDict[Hashable, tuple[V, int]] = OrderedDict()

    def get(self, key: Hashable) -> V | None:
        """The value, now the most recently used; None when absent."""
        entry = self._entries.get(key)
        if entry is None:
            return None
        self._entries.move_to_end(key)
        return entry[0]

    def put(self, key: Hashable, value: V, nbytes: int) -> None:
        """Store (or replace) as the most recently used, then evict the oldest past the bound."""
        old = self._entries.pop(key, None)
        if old is not None:
            self.used_bytes -= old[1]
        self._entries[key] = (value, int(nbytes))
        self.used_bytes += int(nbytes)
        while self.used_bytes > self.max_bytes and len(self._entries) > 1:
            self.used_bytes -= self._entries.popitem(last=False)[1][1]

    def newest(self) -> V | None:
        """The most recently used value (None when empty), without touching it."""
        return next(reversed(self._entries.values()))[0] if self._entries else None

    def clear(self) -> None:
        self._entries.clear()
        self.used_bytes = 0

    def keys(self) -> Iterator[Hashable]:
        """Keys from the least to the most recently used."""
        return iter(list(self._entries))

    def __contains__(self, key: Hashable) -> bool:
        return key in self._entries

    def __len__(self) -> int:
        return len(self._entries)
