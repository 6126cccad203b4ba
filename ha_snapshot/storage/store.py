"""The recovery-image store: merge deltas, keep, verify, collect, export.

The manager is the only writer. A merge applies one validated delta to the
newest restore point of an instance: it writes the chunks the delta touches
(content-addressed, so chunks already held are only touched), then commits
a new manifest with ``create_only``. Until that last put nothing visible
changes; after it the restore point is durable.

Garbage collection is safe while merges run: a merge refreshes (touches)
every existing chunk it reuses and gives up if it runs longer than half of
``gc_grace_period``; collection removes only chunks unreferenced by any
manifest and untouched for the whole grace period (see storage/base.py).

May import ha_snapshot.delta, ha_snapshot.image and the drivers.
"""

import collections
import dataclasses
import hashlib
import threading
import time

from oslo_log import log as logging
from oslo_utils import uuidutils
import zstandard

from ha_snapshot import delta as delta_mod
from ha_snapshot import disk_layout
from ha_snapshot import exception
from ha_snapshot.image import qemu
from ha_snapshot.image import sparse
from ha_snapshot import storage
from ha_snapshot.storage import memory
from ha_snapshot.storage import objects
from ha_snapshot.storage import pools
from ha_snapshot.storage import retention

LOG = logging.getLogger(__name__)

VERIFY_CACHE_BYTES = 256 << 20
# NOTE: keys of chunks stored ahead of their merge, kept for its count of
# new chunks and so that a delta refused or abandoned takes back what it
# stored (beyond this many, the oldest are left to gc).
PRESTORED_KEYS = 65536
# NOTE: a chunk stored ahead is removed again (discard_prestored) only
# while no other delta used it: checking that and touching (or removing)
# the chunk happen under one of these locks, chosen by the chunk's key.
KEY_LOCKS = 64
# NOTE: what retention reads of a manifest (number, creation time, id),
# kept by its listing: manifests are written once (create-only) and never
# changed, so a commit no longer decodes every manifest of the instance.
SUMMARY_KEYS = 65536
# NOTE: chunks are assembled, hashed, compressed and written by a few
# threads (hashlib, zstd and file I/O release the GIL): one pool of the
# process, shared by concurrent merges (ha_snapshot/storage/pools.py).
# WRITER_QUEUE bounds how many chunks of one merge wait for them (each
# holds at most a chunk of the delta's bytes, and a chunk of its parent
# while it is assembled).
WRITER_THREADS = 6
WRITER_QUEUE = 8


@dataclasses.dataclass
class Limits:
    max_virtual_size: int
    max_part_bytes: int
    max_part_extents: int


class RecoveryStore:

    def __init__(self, driver, *, chunk_size: int, compress: bool,
                 dedup_scope: str, gc_grace: float, limits: Limits,
                 policy: retention.Policy, clock=time.time, hooks=None):
        if chunk_size & (chunk_size - 1):
            raise exception.ConfigurationError(
                reason='[storage] chunk_size %d is not a power of two'
                % chunk_size)
        self.driver = driver
        self.chunk_size = chunk_size
        self.compress = compress
        self.dedup_scope = dedup_scope
        self.gc_grace = gc_grace
        self.limits = limits
        self.policy = policy
        self.clock = clock
        # NOTE: test seams, called by name at fixed points of a merge.
        self.hooks = hooks or {}
        self._layouts = {}
        """instance -> (chunk_size, scope), once it has a restore point
        (neither ever changes after that)."""
        self._prestored = collections.OrderedDict()
        """Chunk key -> [bytes, owner]: chunks stored ahead of their merge
        (:meth:`prestore`) that the merge counts as new; owner is the
        (instance, sequence) of the delta that stored it, None once
        another delta used it too."""
        self._prestored_lock = threading.Lock()
        self._key_locks = [threading.Lock() for _ in range(KEY_LOCKS)]
        self._summaries = collections.OrderedDict()
        """(key, size, mtime) -> (number, created_at, id) of manifests."""
        self._summaries_lock = threading.Lock()

    @classmethod
    def from_conf(cls, conf, driver=None, **kwargs) -> 'RecoveryStore':
        return cls(
            driver or storage.get_driver(conf),
            chunk_size=conf.storage.chunk_size,
            compress=conf.storage.chunk_compression == 'zstd',
            dedup_scope=conf.storage.dedup_scope,
            gc_grace=conf.storage.gc_grace_period,
            limits=Limits(conf.image.max_virtual_size,
                          conf.image.max_part_bytes,
                          conf.image.max_part_extents),
            policy=retention.Policy.from_conf(conf), **kwargs)

    # --- reading ------------------------------------------------------------

    @staticmethod
    def _check_instance(instance: str) -> None:
        if not (isinstance(instance, str)
                and uuidutils.is_uuid_like(instance)):
            raise exception.InvalidInstance(instance=instance)

    def instances(self) -> list:
        seen = set()
        for obj in self.driver.list('instances/'):
            seen.add(obj.key.split('/')[1])
        return sorted(seen)

    def _manifest_keys(self, instance: str) -> list:
        return sorted(o.key for o in self.driver.list(
            objects.manifest_prefix(instance)))

    def _load(self, key: str) -> objects.RestorePoint:
        return objects.decode_manifest(key, self.driver.get(key))

    def _summary(self, obj) -> tuple:
        """(number, created_at, id) of the manifest listed as ``obj``."""
        ident = (obj.key, obj.size, obj.mtime)
        with self._summaries_lock:
            known = self._summaries.get(ident)
            if known is not None:
                self._summaries.move_to_end(ident)
                return known
        rp = self._load(obj.key)
        known = (rp.number, rp.created_at, rp.id)
        with self._summaries_lock:
            self._summaries[ident] = known
            while len(self._summaries) > SUMMARY_KEYS:
                self._summaries.popitem(last=False)
        return known

    def restore_points(self, instance: str) -> list:
        self._check_instance(instance)
        return [self._load(k) for k in self._manifest_keys(instance)]

    def newest(self, instance: str) -> objects.RestorePoint | None:
        return self.newest_listed(instance)[0]

    def newest_listed(self, instance: str) -> tuple:
        """``(newest restore point or None, what the listing said of its
        manifest)``: give both to :meth:`merge`, which then reads that
        manifest again only if the listing changed meanwhile."""
        self._check_instance(instance)
        obj = self._newest_manifest(instance)
        if obj is None:
            return None, None
        return self._load(obj.key), _listed(obj)

    def _newest_manifest(self, instance: str):
        """The listing's entry of the newest manifest, or None."""
        newest = None
        for obj in self.driver.list(objects.manifest_prefix(instance)):
            if newest is None or obj.key > newest.key:
                newest = obj
        return newest

    def get_restore_point(self, instance: str,
                          rp_id: str | None = None) -> objects.RestorePoint:
        if rp_id is None:
            rp = self.newest(instance)
            if rp is None:
                raise exception.InstanceNotFound(instance=instance)
            return rp
        points = self.restore_points(instance)
        if not points:
            raise exception.InstanceNotFound(instance=instance)
        for rp in points:
            if rp.id == rp_id:
                return rp
        raise exception.RestorePointNotFound(instance=instance,
                                             restore_point=rp_id)

    def read_chunk(self, rp: objects.RestorePoint, index: int) -> bytes:
        sha = rp.chunks.get(index)
        length = rp.chunk_length(index)
        if sha is None:
            return bytes(length)
        key = objects.chunk_key(rp.scope, sha)
        return objects.decode_chunk(key, self.driver.get(key), sha, length)

    # --- merging ------------------------------------------------------------

    def _scope(self, header) -> str:
        if self.dedup_scope == 'instance':
            return 'i-' + header.instance
        return 'p-' + header.project

    def merge(self, delta: delta_mod.Delta, source: str | None = None,
              listed: tuple | None = None) -> objects.RestorePoint:
        """Apply ``delta`` to the newest restore point; return the new one.

        A delta already merged (same sequence on the same parent, e.g. sent
        again after a lost ack) returns the restore point it made.
        ``listed``: what :meth:`newest_listed` answered the caller just
        before; its restore point is used if the newest manifest is still
        the one listed then (manifests are never rewritten in place).
        """
        h = delta.header
        delta.validate(**dataclasses.asdict(self.limits))
        self._check_instance(h.instance)
        with self.driver.lock('instance-' + h.instance):
            obj = self._newest_manifest(h.instance)
            if obj is None:
                parent = None
            elif listed is not None and listed[1] == _listed(obj):
                parent = listed[0]
            else:
                parent = self._load(obj.key)
            if parent is not None and (parent.parent == h.parent and
                                       parent.delta_sequence == h.sequence):
                LOG.info('Delta %s of %s already merged as %s', h.sequence,
                         h.instance, parent.id)
                return parent
            self._check_parent(h, parent)
            if delta.materialized and not self.driver.batch_is_private:
                # NOTE: reject it whole before any write; what verify
                # decoded is kept for the merge, within a memory budget.
                # A driver whose batch shows nothing before its commit
                # needs no such pass: each part is checked as the merge
                # reaches it (iter_extents), and a bad one aborts the batch
                # (the parts check while earlier ones are written).
                delta.verify(keep_bytes=VERIFY_CACHE_BYTES)
            return self._merge_locked(delta, parent, source)

    def _check_parent(self, h, parent) -> None:
        newest = parent.id if parent else None
        if h.parent != newest:
            raise exception.DeltaParentMismatch(
                instance=h.instance, sequence=h.sequence, parent=h.parent,
                newest=newest)
        if parent is None:
            return
        if not h.full and disk_layout.shape(h.disks) != disk_layout.shape(
                parent.disks):
            # NOTE: a disk added, removed or resized moves the others in
            # the concatenated space: only a whole image (a re-baseline)
            # may change the layout.
            raise exception.InvalidDelta(
                instance=h.instance, sequence=h.sequence,
                reason='its disks (%s) are not those of the recovery image '
                '(%s): a change of disks needs a full delta'
                % (disk_layout.describe(h.disks),
                   disk_layout.describe(parent.disks)))
        if h.virtual_size != parent.virtual_size and not h.full:
            raise exception.InvalidDelta(
                instance=h.instance, sequence=h.sequence,
                reason='virtual size %d does not match the recovery image '
                       '(%d)' % (h.virtual_size, parent.virtual_size))
        if h.project != parent.project:
            raise exception.InvalidDelta(
                instance=h.instance, sequence=h.sequence,
                reason='project %s does not own this instance (%s does)'
                % (h.project, parent.project))

    def _merge_locked(self, delta, parent, source):
        h = delta.header
        started = self.clock()
        if parent is None:
            chunk_size, scope, chunks = self.chunk_size, self._scope(h), {}
        elif h.full:
            # NOTE: a re-baseline replaces the image; dedup still finds
            # every chunk the instance's project already holds.
            chunk_size, scope, chunks = parent.chunk_size, parent.scope, {}
        else:
            chunk_size, scope = parent.chunk_size, parent.scope
            chunks = dict(parent.chunks)
        if h.disks and disk_layout.ALIGN % chunk_size:
            raise exception.InvalidDelta(
                instance=h.instance, sequence=h.sequence,
                reason='its disks begin at multiples of %d bytes, which '
                'chunks of %d bytes would straddle'
                % (disk_layout.ALIGN, chunk_size))
        rp = objects.RestorePoint(
            id=delta_mod.new_restore_point_id(), instance=h.instance,
            project=h.project, scope=scope,
            number=parent.number + 1 if parent else 1,
            parent=parent.id if parent else None, created_at=started,
            virtual_size=h.virtual_size, chunk_size=chunk_size, chunks=chunks,
            delta_sequence=h.sequence, changed_bytes=h.changed_bytes,
            source=source, consistency=h.consistency, disks=h.disks)
        known = {}
        for part in delta.parts() if delta.materialized else ():
            for (cs, index), sha in dict(part.chunk_digests or {}).items():
                if cs == chunk_size:
                    known[index] = sha
        with _ChunkWriter(self, rp, None if h.full else parent,
                          known) as writer:
            for offset, length, kind, data in delta.iter_extents(
                    max_part_bytes=self.limits.max_part_bytes,
                    max_part_extents=self.limits.max_part_extents):
                writer.apply(offset, length, data)
        self.hooks.get('before_commit', lambda rp: None)(rp)
        elapsed = self.clock() - started
        if elapsed > self.gc_grace / 2:
            raise exception.MergeTooSlow(instance=h.instance,
                                         sequence=h.sequence, elapsed=elapsed)
        try:
            self.driver.put(rp.key, rp.encode(), create_only=True)
        except exception.ObjectExists:
            raise exception.ConcurrentMerge(instance=h.instance,
                                            sequence=rp.number)
        LOG.info('Instance %s: restore point %s (#%d) from delta %d: %d bytes '
                 'changed, %d new chunks (%d bytes)', rp.instance, rp.id,
                 rp.number, h.sequence, h.changed_bytes, rp.new_chunks,
                 rp.new_bytes)
        return rp

    def _layout(self, instance: str, project: str) -> tuple:
        layout = self._layouts.get(instance)
        if layout is None:
            newest = self.newest(instance)
            if newest is None:
                return self.chunk_size, ('i-' + instance if (
                    self.dedup_scope == 'instance') else 'p-' + project)
            layout = self._layouts[instance] = (newest.chunk_size,
                                                newest.scope)
        return layout

    def holds_whole_chunk(self, instance: str, extents) -> bool:
        """Whether data ``extents`` (offset, length, kind) cover a whole
        chunk of the instance's image, for all this store knows without
        reading: True while its layout is not known yet. A part that
        covers none has nothing for :meth:`prestore` to store (a partly
        overwritten chunk is assembled by the merge)."""
        layout = self._layouts.get(instance)
        if layout is None:
            return True
        cs = layout[0]
        return any(-(-offset // cs) < (offset + length) // cs
                   for offset, length, kind in extents
                   if kind == delta_mod.DATA)

    def prestore(self, instance: str, project: str, extents,
                 data: bytes, digests: dict | None = None,
                 sequence: int | None = None) -> int:
        """Store, ahead of its merge, every whole chunk that one checked
        part's data covers; return the bytes newly stored.

        The chunk writes of a merge then overlap the transfer of the
        delta's later parts, and the merge finds those chunks held (it
        touches them). Nothing becomes visible: chunks are named by their
        content and only a manifest refers to them; chunks of a delta never
        committed are collected by gc like any unreferenced chunk. Best
        effort: a chunk not stored here (a full store, an I/O error) is
        stored, or its error reported, by the merge.

        ``digests``, if given, receives ``(chunk size, disk chunk index) ->
        sha256`` of every whole chunk hashed here: the merge of these very
        bytes then does not hash them again (``DeltaPart.chunk_digests``).

        ``sequence``: the delta's, so that :meth:`discard_prestored` can
        remove what it stored if it is refused or abandoned.
        """
        self._check_instance(instance)
        owner = None if sequence is None else (instance, sequence)
        cs, scope = self._layout(instance, project)
        stored = 0
        pos = 0
        view = memoryview(data)
        batch = self.driver.batch()
        try:
            for offset, length, kind in extents:
                if kind != delta_mod.DATA:
                    continue
                first = -(-offset // cs)
                for index in range(first, (offset + length) // cs):
                    start = pos + index * cs - offset
                    chunk = view[start:start + cs]
                    if chunk == _zeros(cs):
                        continue
                    sha = hashlib.sha256(chunk).hexdigest()
                    if digests is not None:
                        digests[(cs, index)] = sha
                    sha, new = self._put_chunk(scope, chunk, self.compress,
                                               sha=sha, owner=owner,
                                               batch=batch)
                    stored += new
                pos += length
        except (OSError, exception.StorageError) as e:
            LOG.debug('Instance %s: chunk not stored ahead of its merge: '
                      '%s', instance, e)
        except BaseException:
            batch.abort()
            raise
        # NOTE: what was put before a failure is still worth keeping; a
        # chunk the merge finds missing (not committed) it stores itself.
        try:
            batch.commit()
        except (OSError, exception.StorageError) as e:
            batch.abort()
            LOG.debug('Instance %s: chunks not stored ahead of their '
                      'merge: %s', instance, e)
            return 0
        return stored

    def _key_lock(self, key: str) -> threading.Lock:
        return self._key_locks[hash(key) % KEY_LOCKS]

    def discard_prestored(self, instance: str, sequence: int | None = None,
                          through: int | None = None) -> int:
        """Remove the chunks stored ahead for deltas of ``instance`` (one
        ``sequence``, those up to ``through``, or all) that no other
        delta used and no merge took; return how many.

        For a delta refused, superseded or abandoned: what it stored goes
        at once, not after gc's grace period. A chunk another delta used
        meanwhile (same content) stays. Assumes this process is the only
        writer of the store (the manager is).
        """
        def mine(owner):
            return owner is not None and owner[0] == instance and (
                (sequence is None and through is None)
                or owner[1] == sequence
                or (through is not None and owner[1] <= through))
        with self._prestored_lock:
            keys = [k for k, (_n, owner) in self._prestored.items()
                    if mine(owner)]
        removed = 0
        for key in keys:
            with self._key_lock(key):
                with self._prestored_lock:
                    entry = self._prestored.get(key)
                    if entry is None or not mine(entry[1]):
                        continue
                    del self._prestored[key]
                try:
                    self.driver.delete(key)
                    removed += 1
                except (OSError, exception.StorageError) as e:
                    LOG.warning('Chunk %s stored ahead for a delta of %s '
                                'that will not be merged could not be '
                                'removed (gc will): %s', key, instance, e)
        if removed:
            LOG.info('Instance %s: removed %d chunks stored ahead for '
                     'deltas that will not be merged', instance, removed)
        return removed

    def prestored_owners(self) -> set:
        """(instance, sequence) of every delta that has chunks stored
        ahead that no merge took yet."""
        with self._prestored_lock:
            return {o for _n, o in self._prestored.values() if o}

    def _put_chunk(self, scope: str, data: bytes, compress: bool,
                   claim=None, sha: str | None = None, owner=None,
                   batch=None):
        """Store one chunk unless held.

        ``claim(sha)`` says whether this call is the first of its merge to
        hold that content (the same chunk twice in one delta is stored
        once). ``sha``: its sha256, when this process already hashed these
        very bytes. ``owner``: the (instance, sequence) of the delta a
        chunk is stored ahead for (:meth:`prestore`); None for a merge.
        ``batch``: the driver's PutBatch to write through (the chunk is
        durable only at its commit); None: a durable put.
        Returns (sha, bytes newly stored).
        """
        if sha is None:
            sha = hashlib.sha256(data).hexdigest()
        if claim is not None and not claim(sha):
            return sha, 0
        key = objects.chunk_key(scope, sha)
        with self._key_lock(key):
            with self._prestored_lock:
                entry = self._prestored.get(key)
                taken = 0
                if entry is not None and owner is None:
                    # NOTE: stored by prestore() for this merge: new all
                    # the same, and no longer anyone's to take back.
                    taken = self._prestored.pop(key)[0]
                elif entry is not None and entry[1] != owner:
                    entry[1] = None  # NOTE: two deltas use it now
            # NOTE: touch, not exists: a reused chunk must look fresh to
            # gc. Under the key's lock: discard_prestored() cannot remove
            # it between this touch and the registry above.
            if self.driver.touch(key):
                return sha, taken if claim is not None else 0
            if owner is not None and entry is None:
                with self._prestored_lock:
                    self._prestored[key] = [len(data), owner]
                    while len(self._prestored) > PRESTORED_KEYS:
                        self._prestored.popitem(last=False)
        # NOTE: written outside the lock; a discard that runs meanwhile
        # leaves this write to gc.
        (batch or self.driver).put(
            key, objects.encode_chunk(data, compress, _cctx()))
        return sha, len(data)

    # --- retention, gc, verify ----------------------------------------------

    def apply_retention(self, instance: str) -> list:
        """Remove restore points the policy no longer keeps; return ids."""
        self._check_instance(instance)
        with self.driver.lock('instance-' + instance):
            points = [(o, self._summary(o)) for o in sorted(
                self.driver.list(objects.manifest_prefix(instance)),
                key=lambda o: o.key)]
            keep = self.policy.keep(
                [(number, created) for _o, (number, created, _id) in points],
                self.clock())
            removed = []
            for obj, (number, _created, rp_id) in points:
                if number not in keep:
                    self.driver.delete(memory.key(instance, number))
                    self.driver.delete(obj.key)
                    removed.append(rp_id)
                    # NOTE: else every manifest ever written stays here
                    # until SUMMARY_KEYS pushes it out (memory per delta).
                    with self._summaries_lock:
                        self._summaries.pop((obj.key, obj.size, obj.mtime),
                                            None)
        if removed:
            LOG.info('Instance %s: retention removed %d restore points',
                     instance, len(removed))
        return removed

    def gc(self) -> dict:
        """Remove unreferenced chunks and leftovers older than the grace."""
        cutoff = self.clock() - self.gc_grace
        # NOTE: first, so that what an interrupted gc left is settled.
        leftovers = self.driver.cleanup(cutoff)
        candidates = [o for o in self.driver.list('chunks/')
                      if o.mtime < cutoff]
        # NOTE: manifests are listed after chunks: a manifest committed
        # meanwhile references only chunks touched after ``cutoff``.
        referenced = set()
        for instance in self.instances():
            scopes = {}
            for key in self._manifest_keys(instance):
                rp = self._load(key)
                scopes[rp.number] = rp.scope
                referenced.update(objects.chunk_key(rp.scope, s)
                                  for s in rp.chunks.values())
            # NOTE: listed after the manifests, as manifests after chunks.
            referenced |= memory.referenced(self, instance, scopes.get)
        removed = freed = 0
        for obj in candidates:
            if obj.key not in referenced and self.driver.delete_if_older(
                    obj.key, cutoff):
                removed += 1
                freed += obj.size
        LOG.info('gc: removed %d chunks (%d bytes), %d leftovers', removed,
                 freed, leftovers)
        return {'chunks_removed': removed, 'bytes_freed': freed,
                'leftovers_removed': leftovers,
                'chunks_referenced': len(referenced)}

    def verify(self, instance: str | None = None) -> list:
        """Re-hash chunks and check manifests; return [(key, reason)].

        With no instance, every chunk in the store is re-hashed, referenced
        or not; with one, the chunks its restore points reference.
        """
        broken, checked = [], {}
        instances = [instance] if instance else self.instances()
        for inst in instances:
            self._check_instance(inst)
            keys = self._manifest_keys(inst)
            if instance and not keys:
                raise exception.InstanceNotFound(instance=inst)
            for key in keys:
                try:
                    rp = self._load(key)
                except exception.CorruptObject as e:
                    broken.append((key, e.kwargs['reason']))
                    continue
                for index, sha in sorted(rp.chunks.items()):
                    ckey = objects.chunk_key(rp.scope, sha)
                    length = rp.chunk_length(index)
                    if (ckey, length) not in checked:
                        checked[(ckey, length)] = self._check_chunk(
                            ckey, sha, length)
                    if checked[(ckey, length)]:
                        broken.append((ckey, '%s (chunk %d of %s)' % (
                            checked[(ckey, length)], index, key)))
        if instance is None:
            seen = {key for key, _length in checked}
            for obj in self.driver.list('chunks/'):
                if obj.key not in seen:
                    reason = self._check_chunk(
                        obj.key, obj.key.rsplit('/', 1)[-1], None)
                    if reason:
                        broken.append((obj.key, reason + ' (unreferenced)'))
        return broken

    def _check_chunk(self, key, sha, length) -> str | None:
        try:
            objects.decode_chunk(key, self.driver.get(key), sha, length)
        except exception.ObjectNotFound:
            return 'missing'
        except exception.CorruptObject as e:
            return e.kwargs['reason']
        return None

    # --- export -------------------------------------------------------------

    def export(self, instance: str, out: str, rp_id: str | None = None,
               fmt: str = 'raw', limits: qemu.Limits | None = None,
               disk: str | None = None) -> objects.RestorePoint:
        """Write a restore point to ``out`` (sparse raw or qcow2).

        ``disk`` (a target, or "root"): that disk of the point alone;
        None: the whole point, every disk of a multi-disk point in its
        concatenated space (ha_snapshot/disk_layout.py)."""
        if fmt not in sparse.FORMATS:
            raise exception.HaSnapshotException(
                'Unsupported export format %r: use raw or qcow2.' % fmt)
        rp = self.get_restore_point(instance, rp_id)
        start, size = 0, rp.virtual_size
        if disk is not None:
            try:
                start, size = disk_layout.select(rp.disks, disk,
                                                 rp.virtual_size)
            except ValueError as e:
                raise exception.HaSnapshotException(
                    'Cannot export restore point %s of %s: %s.'
                    % (rp.id, instance, e))
        cs = rp.chunk_size
        first, end = start // cs, -(-(start + size) // cs)

        def pieces():
            for index in sorted(rp.chunks):
                if first <= index < end:
                    at = index * cs - start
                    yield at, self.read_chunk(rp, index)[:size - at]
        sparse.write_image(out, size, pieces(), fmt=fmt, limits=limits)
        return rp


_local = threading.local()


def _cctx():
    # NOTE: a zstd compressor is not thread-safe; one per writer thread.
    if not hasattr(_local, 'cctx'):
        _local.cctx = zstandard.ZstdCompressor(level=1)
    return _local.cctx


class _ChunkWriter:
    """Gathers what a merge writes into each chunk it touches, in offset
    order, and has a few threads assemble (read the parent's chunk if
    partly overwritten), hash, compress and store them, through one
    driver batch. Leaving the ``with`` block waits for every chunk and
    commits the batch (raising the first failure): after it every chunk is
    durable, so the manifest may be put."""

    def __init__(self, store: RecoveryStore, rp, parent, known=None):
        self.store, self.rp, self.parent = store, rp, parent
        # NOTE: disk chunk index -> sha256 of the whole chunk the delta
        # holds there, hashed when its part arrived (Delta parts'
        # chunk_digests); only a chunk taken whole from the delta uses it.
        self.known = known or {}
        self.index = None
        self.patches = []
        """(offset within the chunk, length, bytes or None for zeros) of
        the chunk at ``index``, in order."""
        self.pool = pools.shared('chunk-writer', WRITER_THREADS)
        self.batch = store.driver.batch()
        self.pending = collections.deque()
        self.claimed = set()
        self.claim_lock = threading.Lock()

    def __enter__(self):
        return self

    def __exit__(self, exc_type, exc, tb):
        committed = False
        try:
            if exc_type is None:
                self.flush()
                while self.pending:
                    self._collect()
                self.batch.commit()
                committed = True
        finally:
            # NOTE: after a failure, nothing of this merge runs on.
            pools.cancel_and_wait([f for _i, f in self.pending])
            self.pending.clear()
            if not committed:
                self.batch.abort()
        return False

    def apply(self, offset: int, length: int, data) -> None:
        cs = self.rp.chunk_size
        pos = 0
        while pos < length:
            at = offset + pos
            index = at // cs
            if index != self.index:
                self.flush()
                self.index = index
            clen = self.rp.chunk_length(index)
            within = at - index * cs
            n = min(length - pos, clen - within)
            self.patches.append((within, n, None if data is None
                                 else data[pos:pos + n]))
            pos += n

    def flush(self) -> None:
        if not self.patches:
            return
        index, patches = self.index, self.patches
        self.patches = []
        self.pending.append((index, self.pool.submit(
            self._store, index, patches)))
        while len(self.pending) > WRITER_QUEUE:
            self._collect()

    def _store(self, index: int, patches: list):
        """In a writer thread: the chunk's new content, stored."""
        clen = self.rp.chunk_length(index)
        within, n, data = patches[0]
        sha = None
        if len(patches) == 1 and n == clen and data is not None:
            # NOTE: a whole chunk of the delta: no copy at all.
            buf, sha = data, self.known.get(index)
        else:
            if self.parent is None or any(n == clen for _w, n, _d in patches):
                buf = bytearray(clen)
            else:
                # NOTE: partly overwritten: the rest is the parent's. Read
                # here, so that the reads of a scattered delta overlap.
                buf = bytearray(self.store.read_chunk(self.parent, index))
            for within, n, data in patches:
                buf[within:within + n] = _zeros(n) if data is None else data
        if buf == _zeros(clen):
            return None, 0
        return self.store._put_chunk(self.rp.scope, buf, self.store.compress,
                                     self._claim, sha, batch=self.batch)

    def _claim(self, sha: str) -> bool:
        with self.claim_lock:
            if sha in self.claimed:
                return False
            self.claimed.add(sha)
            return True

    def _collect(self) -> None:
        index, future = self.pending.popleft()
        sha, stored = future.result()
        if sha is None:
            self.rp.chunks.pop(index, None)
            return
        self.rp.chunks[index] = sha
        if stored:
            self.rp.new_chunks += 1
            self.rp.new_bytes += stored


_ZEROS = {}


def _zeros(n: int) -> bytes:
    """A shared all-zero bytes of length ``n`` (comparison is a memcmp)."""
    z = _ZEROS.get(n)
    if z is None:
        z = _ZEROS[n] = bytes(n)
        if len(_ZEROS) > 64:
            _ZEROS.clear()
            _ZEROS[n] = z
    return z


def _listed(obj) -> tuple:
    """What a listing says of an object: enough to tell it changed."""
    return obj.key, obj.size, obj.mtime
