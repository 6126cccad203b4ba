"""Worker threads shared by every merge and chunk write of a process.

A merge used to start its own pools (a few chunk writers, and a few fsync
threads for its driver batch) and tear them down at its end: for a small
delta (one chunk) that was five or six threads started and joined per
delta, a large part of the manager's CPU per delta at hundreds of
instances (benchmarks/manager_scale.py). These pools live as long as the
process; their threads are started when first needed and then wait for
work.

A caller that gives up on its own work cancels what of it has not started
and waits for the rest (:func:`cancel_and_wait`); it never shuts a shared
pool down. Work submitted here must not wait for other work of the same
pool (the pool could be full of such waiters): a chunk writer submits its
fsyncs to the fsync pool, never to its own.

May import nothing of the package.
"""

import concurrent.futures
import threading

_pools = {}
_lock = threading.Lock()


def shared(name: str, max_workers: int) -> concurrent.futures.Executor:
    """The process's pool called ``name`` (its threads are named so),
    made with ``max_workers`` threads the first time it is asked for."""
    pool = _pools.get(name)
    if pool is None:
        with _lock:
            pool = _pools.get(name)
            if pool is None:
                pool = _pools[name] = concurrent.futures.ThreadPoolExecutor(
                    max_workers=max_workers, thread_name_prefix=name)
    return pool


def cancel_and_wait(futures) -> None:
    """Cancel the futures not started yet and wait for those under way
    (what ``shutdown(wait=True, cancel_futures=True)`` did for a pool of
    one's own)."""
    running = [f for f in futures if not f.cancel()]
    concurrent.futures.wait(running)
