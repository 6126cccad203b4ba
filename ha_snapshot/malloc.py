"""A daemon's C allocator over days: few arenas, free memory given back.

What the soak benchmark (benchmarks/soak.py) showed: after warm-up the
Python objects of the agent and the manager stay flat (tracemalloc and
``gc.get_objects()`` counts), yet their resident memory rose by a couple
of hundred KiB per 1,000 deltas. That memory was free inside glibc's
malloc: each of the many threads (the agent runs two per protected
server) allocates in one of up to eight arenas per core, and an arena
keeps the pages freed in it. :func:`limit_arenas` caps the arenas when the
daemon starts (``[malloc] arena_max``); a :class:`Trimmer` thread
hands the free pages back every ``[malloc] trim_interval`` seconds
(``malloc_trim(0)``). Both do nothing where the C library is not glibc.
"""

import ctypes
import os
import threading
import time

from oslo_log import log as logging

LOG = logging.getLogger(__name__)

# NOTE: glibc's malloc.h: mallopt(M_ARENA_MAX, n).
M_ARENA_MAX = -8


def libc():
    """glibc's functions of this process, or None (another C library)."""
    try:
        lib = ctypes.CDLL(None)
        mallopt, malloc_trim = lib.mallopt, lib.malloc_trim
    except (OSError, AttributeError):
        return None
    mallopt.argtypes = [ctypes.c_int, ctypes.c_int]
    mallopt.restype = ctypes.c_int
    malloc_trim.argtypes = [ctypes.c_size_t]
    malloc_trim.restype = ctypes.c_int
    return lib


def limit_arenas(count: int, lib=None, environ=os.environ) -> bool:
    """At most ``count`` malloc arenas from now on (0: glibc's default);
    an explicit MALLOC_ARENA_MAX in ``environ`` wins. Call it before the
    daemon starts its threads. True if the limit was set."""
    if count <= 0 or 'MALLOC_ARENA_MAX' in environ:
        return False
    lib = lib or libc()
    if lib is None:
        return False
    # NOTE: mallopt returns 1 on success, 0 on error.
    return lib.mallopt(M_ARENA_MAX, count) == 1


def trim(lib=None) -> bool:
    """Give the allocator's free pages back to the system; True if some
    memory was released."""
    lib = lib or libc()
    if lib is None:
        return False
    return lib.malloc_trim(0) == 1


class Trimmer:
    """A thread calling :func:`trim` every ``interval`` seconds until
    :meth:`stop`."""

    def __init__(self, interval: float, lib=None):
        self.interval = interval
        self.lib = lib or libc()
        self.trims = 0
        """How many trims ran."""
        self.seconds = 0.0
        """Their total duration."""
        self._stop = threading.Event()
        self._thread = None

    def start(self) -> bool:
        """Start the thread; False (and no thread) with no interval or no
        glibc."""
        if self.interval <= 0 or self.lib is None:
            return False
        self._thread = threading.Thread(target=self._run, daemon=True,
                                        name='malloc-trim')
        self._thread.start()
        return True

    def _run(self) -> None:
        while not self._stop.wait(self.interval):
            t = time.perf_counter()
            trim(self.lib)
            self.seconds += time.perf_counter() - t
            self.trims += 1

    def stop(self, timeout: float = 10.0) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout)


def setup(conf) -> Trimmer:
    """What a daemon does when it starts: the arena limit, and a started
    trimmer to stop when it ends."""
    limited = limit_arenas(conf.malloc.arena_max)
    trimmer = Trimmer(conf.malloc.trim_interval)
    trimmer.start()
    LOG.debug('malloc: %s arenas at most, trimmed every %s s',
              conf.malloc.arena_max if limited else 'default',
              conf.malloc.trim_interval or 'never')
    return trimmer
