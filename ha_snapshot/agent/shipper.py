"""One protected VM's shipper: pending deltas out, durable, committed down.

The shipper thread takes the oldest unacknowledged entry of the
instance's persisted pending queue
(:class:`ha_snapshot.agent.state.PendingQueue`), which the snapshot loop
(ha_snapshot/agent/instance.py) fills, and sends it: several parts of one
delta in flight at once, retrying with backoff until the manager's durable
ack; then it records the ack in the queue and hands the entry to the
committer (ha_snapshot/agent/committer.py), which commits the overlay down
and only then removes the entry, while the next delta ships. A delta
the manager lost the parts of (:class:`~ha_snapshot.exception.PartsMissing`)
is sent again. :class:`~ha_snapshot.agent.durable.Durable` keeps what
the policy, the demo and the benchmarks read of it (latest restore
points, shipping times and bytes). Pipelined: while the manager merges
one delta (its commit call runs on a thread of its own), the next one's
parts travel.

May import the delta engine, the image inspection and the hypervisor
contract; it calls the manager through the client it is given and knows
the snapshot loop only as its owner (stop and failure flags, retries,
registration).
"""

import collections
import concurrent.futures
import dataclasses
import os
import tempfile
import threading
import time

from oslo_log import log as logging
import oslo_messaging as messaging

from ha_snapshot.agent import committer as committer_mod
from ha_snapshot.agent import durable as durable_mod
from ha_snapshot.agent import memory as memory_mod
from ha_snapshot import delta as delta_mod
from ha_snapshot import delta_images
from ha_snapshot import disk_layout
from ha_snapshot import exception
from ha_snapshot.hypervisor import base as hv_base
from ha_snapshot.image import inspect as image_inspect
from ha_snapshot.image import qemu

LOG = logging.getLogger(__name__)

# NOTE: worth retrying: the bus, the manager, its store. A delta the
# manager refuses as invalid is not: it would be refused again.
TRANSIENT = (messaging.MessagingTimeout, messaging.MessageDeliveryFailure,
             messaging.MessagingException, exception.StorageError,
             exception.DatabaseBusy, ConnectionError, TimeoutError)

# NOTE: a part is bounded work for the manager (a few MiB checked and
# spooled): a call that takes longer than this went to a manager that is
# gone (its reply will never come), so it is sent again at once rather
# than after the whole [agent] rpc_timeout.
PART_TIMEOUT = 15
# NOTE: likewise for a commit: its chunks were stored while the parts
# arrived, so it is short; one that runs longer is asked again and the
# manager answers "still merging" (MergeInProgress, retried) or the ack.
COMMIT_TIMEOUT = 20
# NOTE: a delta with more parts than the manager takes ([manager]
# max_delta_parts) is kept and sent again after this long (the operator
# may raise the limit), not every [agent] retry_max: each try sends up to
# that many parts.
TOO_MANY_PARTS_WAIT = 600

RECENT_RESTORE_POINTS = durable_mod.RECENT_RESTORE_POINTS

Stopped = exception.AgentStopped


# NOTE: the snapshot loop builds it (ha_snapshot/agent/durable.py).
Durable = durable_mod.Durable


@dataclasses.dataclass
class Shipment:
    """A delta whose parts were sent: its commit call is next."""
    entry: object
    delta: object
    sent: int
    started: float
    call: object = None  # the commit call's future, when it runs apart
    t_commit: float = 0.0


class Shipper:
    """Ships one instance's pending queue; :meth:`start` runs it in a
    thread of its own."""

    def __init__(self, owner, queue, durable: Durable):
        """``owner``: the instance's snapshot agent (its conf, driver,
        VM, manager client, stop and failure flags, retries)."""
        self.owner = owner
        self.queue = queue
        self.durable = durable
        self.thread = None
        self.committer = committer_mod.Committer(owner, queue)
        self._pool = None  # the commit-call thread (pipelined shipping)

    @property
    def conf(self):
        return self.owner.conf

    @property
    def instance(self) -> str:
        return self.queue.state.instance

    def start(self) -> None:
        self.thread = threading.Thread(target=self.run, daemon=True,
                                       name='ship-%s' % self.instance[:8])
        self.thread.start()
        self.committer.start()

    def join(self, timeout: float | None) -> None:
        self.committer.join(timeout)
        thread = self.thread
        if thread is not None and thread.is_alive() and (
                thread is not threading.current_thread()):
            thread.join(timeout)
        if self._pool is not None:
            self._pool.shutdown(wait=False, cancel_futures=True)

    def run(self) -> None:
        """The shipper thread: pending deltas out, oldest first."""
        owner = self.owner
        delay = self.conf.agent.retry_initial
        while not owner._stopping.is_set():
            try:
                if not owner.failed.is_set():
                    self.ship_pending()
                delay = self.conf.agent.retry_initial
                self.queue.shippable.wait(1.0)
                self.queue.shippable.clear()
            except Stopped:
                return
            except hv_base.VMNotRunning as e:
                owner.mark_failed(str(e))
                return
            except exception.WrongOwner as e:
                # NOTE: another manager replica owns the instance now (one
                # joined or died): learn which, send the delta there from
                # its first part. Briefly: replicas may disagree for a
                # heartbeat while their views of who is alive converge.
                LOG.info('Instance %s: %s', self.instance, e)
                if owner._stopping.wait(self.conf.agent.retry_initial):
                    return
                try:
                    owner._register()
                except Stopped:
                    return
            except Exception as e:
                # NOTE: as in the snapshot loop: keep every
                # unacknowledged overlay, learn again what the manager
                # holds, and go on.
                delay = owner._back_off(e, delay,
                                        'shipping error; shipping')
                if delay is None:
                    return
                try:
                    owner._register()
                except Stopped:
                    return

    def next_entry(self, after=None):
        """The oldest entry (after ``after``, if given) not acknowledged
        yet, or acknowledged with its memory state still to send; None
        when there is none."""
        with self.queue.lock:
            pending = self.queue.state.pending
            if after is not None:
                pending = pending[pending.index(after) + 1:] if (
                    after in pending) else []
            for entry in pending:
                if entry.restore_point is None or entry.memory:
                    return entry
        return None

    def _wait_for_commits(self) -> None:
        """While [agent] max_pending_deltas acknowledged overlays wait for
        their commit (a VM whose commits fail): the chain must not grow
        without bound."""
        owner, limit = self.owner, self.conf.agent.max_pending_deltas
        with self.queue.progress:
            while (self.committer.waiting() >= limit
                   and not owner._stopping.is_set()
                   and not owner.failed.is_set()):
                self.queue.progress.wait(1.0)

    def ship_pending(self) -> None:
        """Ship the queue, pipelined: while the manager merges one delta
        (its commit call runs on the commit thread), the next one's parts
        are read and sent; its own commit call goes once the previous ack
        has named its parent."""
        owner = self.owner
        ahead = None  # a Shipment whose commit call runs
        try:
            while not owner._stopping.is_set() and not owner.failed.is_set():
                entry = self.next_entry(ahead.entry if ahead else None)
                if ahead is None and entry is not None and (
                        entry.restore_point is None):
                    self._wait_for_commits()
                # NOTE: a delta built before its parent is known must not
                # be a full one (delta_images makes any delta on no parent
                # full): only on top of a durable restore point.
                overlap = (ahead is not None and entry is not None
                           and entry.restore_point is None
                           and not entry.full and not ahead.entry.memory
                           and self.queue.state.parent is not None)
                if ahead is not None and not overlap:
                    self.land(ahead)
                    ahead = None
                    continue
                if entry is None or owner.failed.is_set():
                    self.committer.wake()
                    return
                if entry.restore_point is None:
                    shipment = self.prepare(entry, provisional=overlap)
                    if ahead is not None:
                        self.land(ahead)
                        ahead = None
                    ahead = self.start_commit(shipment)
                    if entry.memory:
                        self.land(ahead)
                        ahead = None
                if ahead is None:
                    self._memory(entry)
                    self.committer.wake()
        finally:
            if ahead is not None and ahead.call is not None:
                # NOTE: an error or a stop: the call is let end, so that no
                # commit call of ours still runs when the loop starts
                # again, and an ack that came is recorded: whoever reads
                # the state next (a restart after the VM died, which tells
                # a restore point made durable after the recovery chose
                # its own by the state's parent) must see it. A delta
                # whose call failed is sent again later.
                try:
                    ack = ahead.call.result()
                except Exception as e:
                    LOG.info('Instance %s: commit call of delta %d under '
                             'way when shipping stopped: %s', self.instance,
                             ahead.entry.sequence, e)
                else:
                    self._acknowledge(ahead, ack)

    def _memory(self, entry) -> None:
        if entry.memory:
            # NOTE: after the ack: the state belongs to that restore
            # point; an agent killed meanwhile sends it on restart.
            sent = memory_mod.ship(self.owner, self.queue, entry)
            if sent is not None:
                with self.durable.cond:
                    self.durable.memory_states += 1
                    self.durable.shipped_memory_bytes += sent

    def ship(self, entry) -> None:
        """Send one delta until it is durable; its ack goes in the queue."""
        self.finish(self.prepare(entry))

    def prepare(self, entry, provisional: bool = False) -> 'Shipment':
        """Inspect the overlay, build its delta and send its parts.

        ``provisional``: the previous delta's ack has not come yet; the
        delta is built on the parent known now (for its structure only)
        and neither it nor the entry's parent is fixed: :meth:`finish`
        (or :meth:`start_commit`) fixes both once that ack came.
        """
        if not provisional:
            self.queue.fix_parent(entry)
        started = self.owner.clock()
        t0 = time.perf_counter()
        parent = entry.parent if not provisional else self.queue.state.parent
        workdir = os.path.join(self.conf.agent.state_dir, self.instance)
        os.makedirs(workdir, exist_ok=True)
        with tempfile.TemporaryDirectory(dir=workdir,
                                         prefix='whole-') as tmpdir:
            delta = self.build(entry, tmpdir, parent)
            # NOTE: the committer's turn, while the parts travel: a commit
            # started now does not hold the next inspection.
            self.committer.wake()
            t1 = time.perf_counter()
            sent = self._send_all(entry, delta)
        t2 = time.perf_counter()
        LOG.debug('Instance %s: delta %d parts: inspect %.1f ms, parts '
                  '(read, compress, put) %.1f ms; %d parts', self.instance,
                  entry.sequence, (t1 - t0) * 1000, (t2 - t1) * 1000,
                  delta.header.part_count)
        return Shipment(entry, delta, sent, started)

    def _fixed(self, shipment) -> None:
        """The delta's parent, fixed (and saved) now that the previous
        delta is durable."""
        entry = shipment.entry
        self.queue.fix_parent(entry)
        if shipment.delta.header.parent != entry.parent:
            shipment.delta.header = dataclasses.replace(
                shipment.delta.header, parent=entry.parent)

    def _commit_call(self, shipment) -> dict:
        return self.owner._retry(
            'commit of delta %d' % shipment.entry.sequence,
            self.owner.manager_api.commit_delta,
            shipment.delta.to_header_primitive(),
            timeout=min(self.conf.agent.rpc_timeout, COMMIT_TIMEOUT))

    def start_commit(self, shipment) -> 'Shipment':
        """The commit call of ``shipment``, on the commit thread."""
        self._fixed(shipment)
        if self._pool is None:
            self._pool = concurrent.futures.ThreadPoolExecutor(
                max_workers=1, thread_name_prefix='cc-%s' % self.instance[:8])
        shipment.t_commit = time.perf_counter()
        shipment.call = self._pool.submit(self._commit_call, shipment)
        return shipment

    def land(self, shipment) -> None:
        """Wait for the commit call started by :meth:`start_commit`."""
        self.finish(shipment)

    def finish(self, shipment) -> None:
        """The commit call (or its outcome, when started already), until
        the delta is durable; its ack goes in the queue."""
        entry = shipment.entry
        try:
            if shipment.call is not None:
                call, shipment.call = shipment.call, None
                ack = call.result()
            else:
                self._fixed(shipment)
                shipment.t_commit = time.perf_counter()
                ack = self._commit_call(shipment)
        except exception.PartsMissing as e:
            # NOTE: the manager lost its spool (restarted on a new disk,
            # or a part file torn by a crash): send the parts again.
            LOG.warning('Instance %s: %s; sending again', self.instance,
                        str(e).splitlines()[0])
            return self.ship(entry)
        self._acknowledge(shipment, ack)

    def _inspect(self, frozen: str, backing: str | None,
                 committable: bool):
        conf = self.conf
        if committable:
            # NOTE: an overlay this agent created and only the local QEMU
            # wrote: read by the strict Python qcow2 reader, no qemu-img
            # process (anything it does not handle gets the full
            # inspection); see ha_snapshot/image/inspect.py.
            return image_inspect.inspect_own_overlay(
                frozen, max_virtual_size=conf.image.max_virtual_size,
                expected_backing=backing,
                limits=qemu.Limits.from_conf(conf))
        return image_inspect.inspect(
            frozen, 'qcow2' if backing else self.base_format(frozen),
            max_virtual_size=conf.image.max_virtual_size,
            allow_backing=backing is not None, expected_backing=backing,
            limits=qemu.Limits.from_conf(conf))

    def _whole(self, image: dict, tmpdir: str):
        """The whole disk of a frozen overlay (a re-baseline): its chain,
        as the driver has it open, flattened into a sparse raw file."""
        owner, conf = self.owner, self.conf
        chain = None
        for d in owner.driver.disks(owner.vm):
            paths = [img.path for img in d.chain]
            if d.name == image['disk'] and image['frozen'] in paths:
                chain = [(img.path, img.format)
                         for img in d.chain[paths.index(image['frozen']):]]
        if chain is None:
            raise exception.HaSnapshotException(
                'Instance %s: frozen image %s of disk %s is no longer in '
                'its chain; cannot send that disk whole.'
                % (self.instance, image['frozen'], image['disk']))
        raw = os.path.join(tmpdir, '%s.raw' % image['disk'])
        limits = qemu.Limits.from_conf(conf)
        qemu.convert_chain_to_raw(chain, raw, limits=limits)
        return image_inspect.inspect(
            raw, 'raw', max_virtual_size=conf.image.max_virtual_size,
            limits=limits)

    def build(self, entry, tmpdir: str,
              parent: str | None = None) -> delta_mod.Delta:
        """The delta of a queued entry on ``parent`` (default: the
        entry's): the root's frozen image, or every protected disk's (a
        multi-disk delta, ha_snapshot/disk_layout.py); a disk to send
        whole is flattened into ``tmpdir`` first."""
        infos = []
        # NOTE: the committer may be committing the overlay below, which
        # rewrites this one's backing (header and entry): not meanwhile.
        # The data clusters read afterwards stay where they are.
        with self.committer.chain_lock:
            for image in entry.images():
                if image.get('whole') and image['backing'] is not None:
                    infos.append(self._whole(image, tmpdir))
                else:
                    infos.append(self._inspect(
                        image['frozen'], image['backing'],
                        image['committable']))
        layout = None
        if len(infos) > 1:
            layout = disk_layout.plan([
                (image['disk'], image['role'], info.virtual_size)
                for image, info in zip(entry.images(), infos)])
        conf = self.conf
        return delta_images.from_images(
            infos, layout, instance=self.instance,
            project=self.queue.state.project,
            sequence=entry.sequence,
            parent=entry.parent if parent is None else parent,
            max_part_bytes=conf.image.max_part_bytes,
            max_part_extents=conf.image.max_part_extents,
            compression_level=conf.image.compression_level,
            limits=qemu.Limits.from_conf(conf), full=entry.full,
            taken_at=entry.taken_at, consistency=entry.consistency)

    def _send_all(self, entry, delta) -> int:
        while True:
            try:
                return self.send_parts(entry, delta)
            except exception.DeltaTooManyParts as e:
                LOG.error('Instance %s: %s; delta %d is kept and sent again '
                          'in %d s', self.instance, e, entry.sequence,
                          TOO_MANY_PARTS_WAIT)
                if self.owner._stopping.wait(TOO_MANY_PARTS_WAIT):
                    raise Stopped()

    def _acknowledge(self, shipment, ack) -> None:
        """Record the durable ack of ``shipment``'s delta."""
        entry, delta = shipment.entry, shipment.delta
        t3 = time.perf_counter()
        self.queue.acknowledged(entry, ack['restore_point'])
        # NOTE: the snapshot loop may wait for room (unacknowledged
        # deltas): there is some now; the committer has work.
        with self.queue.progress:
            self.queue.progress.notify_all()
        LOG.debug('Instance %s: delta %d acknowledged: commit call %.1f '
                  'ms, ack saved %.1f ms', self.instance, entry.sequence,
                  (t3 - shipment.t_commit) * 1000,
                  (time.perf_counter() - t3) * 1000)
        sent = shipment.sent
        durable = self.durable
        with durable.cond:
            durable.shipped_bytes += sent
            durable.shipped_changed_bytes += delta.header.changed_bytes
        durable.remember(ack['restore_point'], entry.taken_at)
        # NOTE: the shipping time alone (not the wait behind earlier
        # deltas): the policy derives the shipping throughput from it, and
        # its intervals keep each delta's shipping shorter than the
        # interval, so deltas do not queue.
        durable.now(sent, self.owner.clock() - shipment.started)
        # NOTE: the snapshot's time ends the line (epoch seconds): what a
        # guest reported durable before it is in the restore point.
        LOG.info('Instance %s: delta %d durable as %s (%d bytes sent), '
                 'taken at %s', self.instance, entry.sequence,
                 ack['restore_point'], sent,
                 '%.3f' % entry.taken_at if entry.taken_at else 'unknown')

    def send_parts(self, entry, delta) -> int:
        """put_part every part, up to [agent] parts_in_flight at once;
        bytes sent.

        Parts are produced (read, compressed, checksummed) here, one ahead
        of the window at most, so memory stays bounded by the window.
        """
        owner = self.owner

        def put(part):
            prim = part.to_primitive()
            what = 'part %d of delta %d' % (part.index, entry.sequence)
            owner._retry(what, owner.manager_api.put_part, self.instance,
                         entry.sequence, prim, timeout=self.part_timeout())
            return len(part.payload)

        if delta.header.part_count <= 1:
            return sum(put(part) for part in delta.parts())
        return send_parts(delta.parts(), put, self.conf.agent.parts_in_flight,
                          'put-%s' % self.instance[:8])

    def part_timeout(self) -> float:
        return min(self.conf.agent.rpc_timeout, PART_TIMEOUT)

    def base_format(self, frozen: str) -> str:
        owner = self.owner
        for d in owner.driver.disks(owner.vm):
            for img in d.chain:
                if img.path == frozen:
                    return img.format
        return 'qcow2'


def send_parts(parts, put, window: int, name: str = 'put') -> int:
    """``put(part)`` for every part, up to ``window`` calls at once, the
    parts taken from the iterator only as room frees up (one ahead of the
    window at most: memory stays bounded). Returns the sum of what the
    calls returned; the first error is raised once the calls under way
    have ended, and the parts not yet sent are not sent."""
    total = 0
    inflight = collections.deque()
    pool = concurrent.futures.ThreadPoolExecutor(max_workers=window,
                                                 thread_name_prefix=name)
    try:
        for part in parts:
            while len(inflight) >= window:
                total += inflight.popleft().result()
            inflight.append(pool.submit(put, part))
        while inflight:
            total += inflight.popleft().result()
    finally:
        pool.shutdown(wait=True, cancel_futures=True)
    return total
