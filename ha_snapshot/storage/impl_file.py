"""The ``file`` driver: objects as files under a local directory.

``file:///var/lib/ha-snapshot/store`` keeps object ``a/b/c`` at
``/var/lib/ha-snapshot/store/a/b/c``. Writes go to a ``.tmp-`` file in the
same directory, are fsynced, then renamed (or hard-linked, for
``create_only``) into place, and the directory is fsynced (and the parent
of every directory the put created).

A batch (:meth:`FileDriver.batch`, the chunks of a merge) writes each object
to its temporary file at once and has a few threads (the process's shared
fsync pool, :mod:`ha_snapshot.storage.pools`) fsync them while later ones
are written; ``commit`` waits for those, renames them all into place
and fsyncs each directory concerned once. Concurrent fsyncs share the
filesystem's journal commits: this is what makes a merge cost about what a
durable copy of its bytes costs, instead of one journal commit per chunk
(benchmarks/merge_throughput.py).
"""

import contextlib
import errno
import fcntl
import os
import secrets
import threading

from ha_snapshot import exception
from ha_snapshot.storage import base
from ha_snapshot.storage import pools

_TMP = '.tmp-'
_TRASH = '.trash-'
# NOTE: fsyncs in flight; more than the disk's queue gains nothing, fewer
# leaves journal commits unshared (measured: 1 thread is no faster than one
# fsync per put, 8-16 match one big file's fsync). One pool of the process
# (threads started once, not per batch), shared by the batches of
# concurrent merges and chunk writes started ahead.
SYNC_THREADS = 16


class FileDriver(base.StorageDriver):

    batch_is_private = True

    def __init__(self, url, conf):
        super().__init__(url, conf)
        if url.netloc not in ('', 'localhost'):
            raise exception.BackendNotFound(
                url=url.geturl(), reason='file URLs name a local path '
                '(file:///path), not host %r' % url.netloc)
        if not url.path.startswith('/'):
            raise exception.BackendNotFound(url=url.geturl(),
                                            reason='the path must be absolute')
        self.root = os.path.normpath(url.path)
        try:
            os.makedirs(self.root, exist_ok=True)
        except OSError as e:
            raise exception.StorageError(
                reason='cannot create store directory %s: %s' % (self.root, e))

    def _path(self, key: str) -> str:
        parts = key.split('/')
        if not key or any(p in ('', '.', '..') or p.startswith(_TMP)
                          or p.startswith(_TRASH) for p in parts):
            raise exception.StorageError(reason='invalid object key %r' % key)
        return os.path.join(self.root, *parts)

    @staticmethod
    def _fsync_dir(path: str) -> None:
        fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)

    def _makedirs(self, directory: str) -> list:
        """Create ``directory`` and its missing parents; return those this
        call created (their parents must be fsynced for them to last)."""
        if os.path.isdir(directory):
            return []
        created = []
        parent = os.path.dirname(directory)
        if parent != directory:
            created = self._makedirs(parent)
        try:
            os.mkdir(directory)
            created.append(directory)
        except FileExistsError:
            pass  # NOTE: another thread or process made it meanwhile.
        return created

    def _write_tmp(self, path: str, data, sync: bool) -> str:
        """Write ``data`` to a new temporary file beside ``path``."""
        tmp = os.path.join(os.path.dirname(path), '%s%s-%s' % (
            _TMP, os.path.basename(path), secrets.token_hex(6)))
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o640)
        try:
            view = memoryview(data)
            while view:
                view = view[os.write(fd, view):]
            if sync:
                os.fsync(fd)
        except BaseException:
            # NOTE: e.g. ENOSPC: a partial file must not stay and hold the
            # space the next attempt needs.
            os.close(fd)
            with contextlib.suppress(FileNotFoundError):
                os.unlink(tmp)
            raise
        os.close(fd)
        return tmp

    def put(self, key, data, *, create_only=False):
        path = self._path(key)
        directory = os.path.dirname(path)
        created = self._makedirs(directory)
        tmp = self._write_tmp(path, data, sync=True)
        try:
            if create_only:
                try:
                    os.link(tmp, path)
                except FileExistsError:
                    raise exception.ObjectExists(key=key)
                finally:
                    os.unlink(tmp)
            else:
                os.rename(tmp, path)
        except BaseException:
            with contextlib.suppress(FileNotFoundError):
                os.unlink(tmp)
            raise
        for d in [directory] + [os.path.dirname(c) for c in created]:
            self._fsync_dir(d)

    def batch(self):
        return _FileBatch(self)

    def get(self, key):
        try:
            with open(self._path(key), 'rb') as f:
                return f.read()
        except FileNotFoundError:
            raise exception.ObjectNotFound(key=key)

    def exists(self, key):
        return os.path.exists(self._path(key))

    def touch(self, key):
        try:
            os.utime(self._path(key))
            return True
        except FileNotFoundError:
            return False

    def delete(self, key):
        path = self._path(key)
        with contextlib.suppress(FileNotFoundError):
            os.unlink(path)

    def delete_if_older(self, key, cutoff):
        # NOTE: move the object out of sight first (atomic); a touch() after
        # this fails and makes the merge write the chunk again. A touch that
        # happened before it shows in the trashed file's mtime: put it back.
        path = self._path(key)
        trash = os.path.join(os.path.dirname(path), '%s%s-%s' % (
            _TRASH, os.path.basename(path), secrets.token_hex(6)))
        try:
            os.rename(path, trash)
        except FileNotFoundError:
            return False
        if os.stat(trash).st_mtime >= cutoff:
            try:
                os.link(trash, path)
            except FileExistsError:
                pass  # rewritten meanwhile: same content by its name
            os.unlink(trash)
            return False
        os.unlink(trash)
        return True

    def list(self, prefix):
        start = os.path.join(self.root, *[p for p in prefix.split('/') if p])
        # NOTE: a prefix may end inside a name ("chunks/ab"); walk its parent.
        if not prefix.endswith('/') and not os.path.isdir(start):
            start = os.path.dirname(start)
        for dirpath, dirnames, filenames in os.walk(start):
            dirnames[:] = sorted(d for d in dirnames if not d.startswith('.'))
            rel = os.path.relpath(dirpath, self.root)
            for name in sorted(filenames):
                if name.startswith((_TMP, _TRASH)):
                    continue
                key = name if rel == '.' else '%s/%s' % (
                    rel.replace(os.sep, '/'), name)
                if not key.startswith(prefix):
                    continue
                try:
                    st = os.stat(os.path.join(dirpath, name))
                except FileNotFoundError:
                    continue
                yield base.ObjectInfo(key, st.st_size, st.st_mtime)

    def cleanup(self, cutoff):
        removed = 0
        for dirpath, _dirs, filenames in os.walk(self.root):
            for name in filenames:
                if not name.startswith((_TMP, _TRASH)):
                    continue
                path = os.path.join(dirpath, name)
                try:
                    fresh = os.stat(path).st_mtime >= cutoff
                except FileNotFoundError:
                    continue
                if name.startswith(_TRASH) and fresh:
                    # NOTE: a delete_if_older() that died between its
                    # rename and its check: the object was touched, so it
                    # may be in use. Put it back.
                    original = os.path.join(
                        dirpath, name[len(_TRASH):].rsplit('-', 1)[0])
                    with contextlib.suppress(FileExistsError):
                        os.link(path, original)
                    os.unlink(path)
                elif not fresh:
                    with contextlib.suppress(FileNotFoundError):
                        os.unlink(path)
                        removed += 1
        return removed

    @contextlib.contextmanager
    def lock(self, name):
        lockdir = os.path.join(self.root, '.locks')
        os.makedirs(lockdir, exist_ok=True)
        fd = os.open(os.path.join(lockdir, name), os.O_RDWR | os.O_CREAT,
                     0o640)
        try:
            while True:
                try:
                    fcntl.flock(fd, fcntl.LOCK_EX)
                    break
                except OSError as e:
                    if e.errno != errno.EINTR:
                        raise
            yield
        finally:
            os.close(fd)


def _fsync_file(path: str) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


class _FileBatch(base.PutBatch):
    """Objects written now, fsynced by a few threads, renamed into place
    and their directories fsynced at :meth:`commit`. Until then they are
    ``.tmp-`` files: invisible, and removed by ``cleanup`` after a crash."""

    def __init__(self, driver: FileDriver):
        super().__init__(driver)
        self._pool = pools.shared('store-fsync', SYNC_THREADS)
        self._lock = threading.Lock()
        self._pending = []
        """(temporary file, final path, its fsync's future)."""

    def put(self, key, data):
        path = self.driver._path(key)
        self.driver._makedirs(os.path.dirname(path))
        tmp = self.driver._write_tmp(path, data, sync=False)
        with self._lock:
            self._pending.append((tmp, path,
                                  self._pool.submit(_fsync_file, tmp)))

    def commit(self):
        with self._lock:
            pending, self._pending = self._pending, []
        renamed = 0
        try:
            # NOTE: every object's data is durable before any is renamed:
            # a name in the store never points at a torn file.
            for _tmp, _path, future in pending:
                future.result()
            for tmp, path, _f in pending:
                os.rename(tmp, path)
                renamed += 1
        except BaseException:
            self._drop(pending[renamed:])
            raise
        # NOTE: each directory of a renamed object and its ancestors up to
        # the root, once: that covers directories this batch created and
        # those a concurrent writer created and has not fsynced yet.
        dirs = set()
        for _tmp, path, _f in pending:
            d = os.path.dirname(path)
            while d not in dirs and d.startswith(self.driver.root):
                dirs.add(d)
                d = os.path.dirname(d)
        futures = [self._pool.submit(self.driver._fsync_dir, d)
                   for d in sorted(dirs)]
        try:
            for future in futures:
                future.result()
        finally:
            # NOTE: none left running behind a failure.
            pools.cancel_and_wait(futures)

    def abort(self):
        with self._lock:
            pending, self._pending = self._pending, []
        self._drop(pending)

    def _drop(self, pending):
        pools.cancel_and_wait([f for _t, _p, f in pending])
        for tmp, _path, _f in pending:
            with contextlib.suppress(FileNotFoundError):
                os.unlink(tmp)
