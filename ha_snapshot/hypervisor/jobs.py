"""Waiting for QEMU block jobs by their events.

A waiter is registered before the job is started (its events may arrive
before the command's reply) and ends on BLOCK_JOB_COMPLETED (failed if the
event carries ``error``), BLOCK_JOB_CANCELLED, or the end of the VM.
BLOCK_JOB_ERROR is remembered as the reason of the failure that follows.

May import the standard library and ha_snapshot.hypervisor.base only.
"""

import threading
import time

COMPLETED = 'BLOCK_JOB_COMPLETED'
CANCELLED = 'BLOCK_JOB_CANCELLED'
ERROR = 'BLOCK_JOB_ERROR'


class JobWaiter:

    def __init__(self, job_id: str):
        self.job_id = job_id
        self.done = threading.Event()
        self.error = None
        self.io_error = None
        self.finished = None
        self.length = 0

    def _finish(self, error=None):
        if not self.done.is_set():
            self.error = error
            self.finished = time.perf_counter()
            self.done.set()


class JobTable:
    """The jobs of one VM being waited for, keyed by job id."""

    def __init__(self):
        self._lock = threading.Lock()
        self._jobs = {}

    def add(self, job_id: str) -> JobWaiter:
        waiter = JobWaiter(job_id)
        with self._lock:
            self._jobs[job_id] = waiter
        return waiter

    def remove(self, job_id: str) -> None:
        with self._lock:
            self._jobs.pop(job_id, None)

    def on_event(self, event) -> None:
        if event.kind not in (COMPLETED, CANCELLED, ERROR):
            return
        with self._lock:
            waiter = self._jobs.get(event.data.get('device'))
        if waiter is None:
            return
        if event.kind == ERROR:
            waiter.io_error = ('%s error (action: %s)' % (
                event.data.get('operation', 'I/O'),
                event.data.get('action', '?')))
            return
        waiter.length = int(event.data.get('len') or 0)
        if event.kind == CANCELLED:
            waiter._finish('the job was cancelled')
        elif event.data.get('error'):
            waiter._finish('%s%s' % (event.data['error'],
                                     ' after a %s' % waiter.io_error
                                     if waiter.io_error else ''))
        else:
            waiter._finish()

    def fail_all(self, reason: str) -> None:
        with self._lock:
            waiters = list(self._jobs.values())
        for waiter in waiters:
            waiter._finish(reason)
