"""One protected VM's committer: durable overlays committed down.

The shipper (ha_snapshot/agent/shipper.py) ships the instance's pending
deltas and records each durable ack in the persisted pending queue
(:class:`ha_snapshot.agent.state.PendingQueue`); this thread then commits
the acknowledged frozen overlays into their backing, oldest first, and
only then removes their entries. Apart from the shipper, so that the next
delta ships while the previous one's overlay is committed: a live block
commit of a few MiB takes 0.1-0.4 s on a busy host, which used to delay
every delta's shipping.

What they share is the overlay chain: a commit rewrites the backing of
the overlay above the committed one (its qcow2 header and its entry's
``backing``), which the shipper's inspection of that overlay checks.
:attr:`Committer.chain_lock` keeps the two apart. Durability is as
before: an entry leaves the queue only once acknowledged (and its memory
state sent) and committed; a killed agent finds it in its state file and
commits it on restart.

May import the hypervisor contract; knows the snapshot loop only as its
owner (conf, driver, VM, stop and failure flags, back-off).
"""

import threading
import time

from oslo_log import log as logging

from ha_snapshot import exception
from ha_snapshot.hypervisor import base as hv_base

LOG = logging.getLogger(__name__)

Stopped = exception.AgentStopped


class Committer:
    """Commits an instance's acknowledged overlays; :meth:`start` runs it
    in a thread of its own."""

    def __init__(self, owner, queue):
        self.owner = owner
        self.queue = queue
        self.chain_lock = threading.RLock()
        """Held across a commit and the queue update that follows it, and
        by the shipper across its inspection of an overlay."""
        self.wanted = threading.Event()
        self.thread = None

    @property
    def instance(self) -> str:
        return self.queue.state.instance

    def start(self) -> None:
        self.thread = threading.Thread(target=self.run, daemon=True,
                                       name='commit-%s' % self.instance[:8])
        self.thread.start()

    def join(self, timeout: float | None) -> None:
        self.wanted.set()
        thread = self.thread
        if thread is not None and thread.is_alive() and (
                thread is not threading.current_thread()):
            thread.join(timeout)

    def wake(self) -> None:
        self.wanted.set()

    def waiting(self) -> int:
        """Acknowledged entries not committed yet."""
        with self.queue.lock:
            return sum(1 for p in self.queue.state.pending
                       if p.restore_point is not None)

    def ready(self):
        """The oldest entry, if it is durable and its memory state sent;
        else None (commits go in order)."""
        with self.queue.lock:
            pending = self.queue.state.pending
            if pending and pending[0].restore_point is not None and (
                    not pending[0].memory):
                return pending[0]
        return None

    def run(self) -> None:
        owner = self.owner
        delay = owner.conf.agent.retry_initial
        while not owner._stopping.is_set():
            try:
                if not owner.failed.is_set():
                    self.commit_ready()
                delay = owner.conf.agent.retry_initial
                self.wanted.wait(1.0)
                self.wanted.clear()
            except Stopped:
                return
            except hv_base.VMNotRunning as e:
                owner.mark_failed(str(e))
                return
            except Exception as e:
                # NOTE: the entry stays (acknowledged, not committed) and
                # is committed at the next try; the shipper stops shipping
                # once [agent] max_pending_deltas of them wait.
                delay = owner._back_off(e, delay,
                                        'commit error; committing')
                if delay is None:
                    return

    def commit_ready(self) -> None:
        owner = self.owner
        while not owner._stopping.is_set() and not owner.failed.is_set():
            entry = self.ready()
            if entry is None:
                return
            t0 = time.perf_counter()
            with self.chain_lock:
                t1 = time.perf_counter()
                self.commit(entry)
                t2 = time.perf_counter()
                self.queue.remove(entry)
            LOG.debug('Instance %s: delta %d after its ack: chain lock '
                      '%.1f ms, block commit %.1f ms, state saved %.1f ms',
                      self.instance, entry.sequence, (t1 - t0) * 1000,
                      (t2 - t1) * 1000, (time.perf_counter() - t2) * 1000)

    def commit(self, entry) -> None:
        """Commit the acknowledged frozen overlay of every disk of
        ``entry`` (all protected disks of a multi-disk one) down."""
        owner = self.owner
        for image in entry.images():
            if not image['committable']:
                continue
            # NOTE: not among the frozen images: already committed (a
            # crash after the commit).
            for fo in owner.driver.frozen_images(owner.vm, image['disk']):
                if fo.frozen.path == image['frozen']:
                    owner.driver.commit(owner.vm, fo, timeout=600)
