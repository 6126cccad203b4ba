"""The storage driver contract: a flat namespace of immutable objects.

A driver stores opaque byte strings under '/'-separated keys. It knows
nothing of chunks or manifests. What the store above relies on:

* ``put`` is atomic and durable on return: a reader sees the old object,
  no object, or the whole new one, never a part; after a crash at any
  instruction the same holds. ``create_only`` fails with ObjectExists
  instead of replacing (manifests use it so that two merges can never both
  commit the same restore point).
* ``touch`` refreshes an object's modification time and says whether the
  object still exists; ``delete_if_older`` removes an object only if it was
  not modified (or touched) since ``cutoff``, atomically with respect to
  ``touch``. Together they make garbage collection safe while merges run.
"""

import abc
import contextlib
import dataclasses


@dataclasses.dataclass(frozen=True)
class ObjectInfo:
    key: str
    size: int
    mtime: float


class PutBatch:
    """Puts made durable together; thread-safe.

    This default puts every object at once (durable on return, as
    ``StorageDriver.put``); a driver where one durable put costs much more
    than its bytes (the file driver: one fsync each) overrides it.
    """

    def __init__(self, driver: 'StorageDriver'):
        self.driver = driver

    def put(self, key: str, data: bytes) -> None:
        """Store ``data`` under ``key``: whole, at the latest when
        :meth:`commit` returns; not necessarily visible before."""
        self.driver.put(key, data)

    def commit(self) -> None:
        """Make every put of the batch visible and durable; raise if one
        failed. Only after this may anything refer to them."""

    def abort(self) -> None:
        """Give up: objects not yet visible are dropped (some may have
        become visible already: they are whole, and left to gc)."""


class StorageDriver(abc.ABC):
    """Base class; ``__init__(url, conf)`` receives the parsed URL."""

    batch_is_private = False
    """True if nothing a batch puts is visible before its commit, and an
    aborted batch leaves nothing (then a merge writes while it still
    checks the delta)."""

    def __init__(self, url, conf):
        self.url = url
        self.conf = conf

    @abc.abstractmethod
    def put(self, key: str, data: bytes, *, create_only: bool = False) -> None:
        """Store ``data`` under ``key`` atomically and durably."""

    @abc.abstractmethod
    def get(self, key: str) -> bytes:
        """Return the object, or raise ObjectNotFound."""

    @abc.abstractmethod
    def exists(self, key: str) -> bool:
        """Whether the object exists."""

    @abc.abstractmethod
    def touch(self, key: str) -> bool:
        """Refresh the object's mtime; False if it does not exist."""

    @abc.abstractmethod
    def delete(self, key: str) -> None:
        """Remove the object; a missing object is not an error."""

    @abc.abstractmethod
    def delete_if_older(self, key: str, cutoff: float) -> bool:
        """Remove the object unless modified or touched since ``cutoff``."""

    @abc.abstractmethod
    def list(self, prefix: str):
        """Iterate ObjectInfo for every key starting with ``prefix``."""

    def batch(self) -> PutBatch:
        """A :class:`PutBatch` of this driver."""
        return PutBatch(self)

    def cleanup(self, cutoff: float) -> int:
        """Remove leftovers of interrupted writes older than ``cutoff``."""
        return 0

    @contextlib.contextmanager
    def lock(self, name: str):
        """Serialise writers on one host (best effort across hosts)."""
        yield

    def describe(self) -> str:
        return self.url.geturl()
