"""Delta parts received from agents, held until their commit.

A part is checked whole when it arrives (structure, limits, decompression
and checksum: :func:`ha_snapshot.delta.receive_part`): a bad part is
refused by the call that brought it, and only its checked, decoded bytes
are kept.

Parts are held in memory (up to ``memory_bytes``, ``[manager]
spool_memory_mb``) and written to disk only when pushed out of it (by
parts that arrive meanwhile, of this delta or of others), one file per
part (``<root>/<instance>/<sequence>/<index>.part``, written atomically: a
uniquely named temporary file, then a rename, so a part sent twice, even
twice at once, is simply written twice). A delta whose parts all fit is
never written twice (once here, once into the store): on a 2-core host the
spool write alone was a fifth of the manager's CPU per part.

Neither is durable, and neither needs to be: the spool holds nothing the
agent does not still hold. The agent keeps its overlay until the commit's
durable ack, and the ack is given only after the store made the restore
point durable. A part lost with a restarted manager's memory, or a file
lost or torn by a crash, is found at commit (missing, unreadable, or
failing its checksum) and reported as "never received; send it again"
(:class:`~ha_snapshot.exception.PartsMissing`, naming every missing part),
which the agent does.

What a part costs is counted against ``memory_bytes`` whole: its decoded
bytes, its extents (kept as their JSON text) and a fixed amount of
bookkeeping, so that parts of zero extents only (no bytes at all) are
pushed out to disk like any other. A delta may have at most
``max_delta_parts`` parts, and an instance at most
``max_deltas_per_instance`` uncommitted deltas; :meth:`Spool.sweep` drops
deltas that received no part for a while (their agent abandoned them, or
resends them when it still wants them).
"""

import collections
import json
import os
import secrets
import shutil
import struct
import threading
import time
import types

from oslo_log import log as logging
from oslo_utils import uuidutils

from ha_snapshot import codec
from ha_snapshot import delta as delta_mod
from ha_snapshot import exception

LOG = logging.getLogger(__name__)

# NOTE: a 64 MiB delta of 4 MiB parts fits with room for a few instances
# shipping at once.
DEFAULT_MEMORY_BYTES = 128 << 20
DEFAULT_MAX_DELTA_PARTS = 2 << 20
DEFAULT_MAX_DELTAS = 4
# NOTE: what a held part costs besides its bytes and its extents' JSON
# text: its key, entry, dict slots and digests dict (measured with
# tracemalloc: about 700 bytes), and per whole chunk of its bytes a
# digest entry (about 300 bytes; chunks are 64 KiB at least).
PART_OVERHEAD = 1024
DIGEST_BYTES = 320
MIN_CHUNK = 64 << 10


class _Missing(Exception):
    """A part the spool cannot give back; the reason is its text."""


class Spool:

    def __init__(self, root: str, max_part_bytes: int,
                 max_part_extents: int = 4096,
                 memory_bytes: int = DEFAULT_MEMORY_BYTES,
                 max_delta_parts: int = DEFAULT_MAX_DELTA_PARTS,
                 max_deltas_per_instance: int = DEFAULT_MAX_DELTAS,
                 max_age: float = 3600, clock=time.monotonic):
        self.root = root
        self.max_part_bytes = max_part_bytes
        self.max_part_extents = max_part_extents
        self.memory_bytes = memory_bytes
        self.max_delta_parts = max_delta_parts
        self.max_deltas_per_instance = max_deltas_per_instance
        self.max_age = max_age
        self.clock = clock
        # NOTE: key (instance, sequence, index) -> (meta JSON, bytes,
        # chunk digests, cost), oldest first; ``_spilling``: pushed out,
        # being written to disk.
        self._held = collections.OrderedDict()
        self._held_bytes = 0
        self._spilling = {}
        # NOTE: instance -> {sequence: clock() of its latest part}, for
        # the caps and the sweep.
        self._deltas = {}
        self._lock = threading.Lock()
        os.makedirs(root, exist_ok=True)

    @classmethod
    def from_conf(cls, conf) -> 'Spool':
        m = conf.manager
        return cls(m.spool_dir, conf.image.max_part_bytes,
                   conf.image.max_part_extents,
                   memory_bytes=m.spool_memory_mb << 20,
                   max_delta_parts=m.max_delta_parts,
                   max_deltas_per_instance=m.max_deltas_per_instance,
                   max_age=m.spool_max_age)

    def _dir(self, instance, sequence) -> str:
        if not uuidutils.is_uuid_like(instance):
            raise exception.InvalidInstance(instance=instance)
        if isinstance(sequence, bool) or not isinstance(sequence, int) or (
                sequence < 0):
            raise exception.InvalidDelta(instance=instance, sequence=sequence,
                                         reason='sequence must be an integer '
                                                '>= 0')
        return os.path.join(self.root, instance, '%012d' % sequence)

    def _path(self, key) -> str:
        return os.path.join(self._dir(key[0], key[1]), '%06d.part' % key[2])

    def put(self, instance: str, sequence: int, part: dict,
            received=None) -> int:
        """Check and spool one part; return its index.

        ``received(part, data, digests)``, if given, is called with the
        checked part, its decoded bytes and a dict in which whoever hashes
        whole chunks of those very bytes may leave ``(chunk size, disk
        chunk index) -> sha256`` for the merge (kept with the bytes while
        they are held in memory; see :meth:`RecoveryStore.prestore`).
        """
        self._dir(instance, sequence)
        if not isinstance(part, dict):
            raise exception.InvalidDelta(instance=instance, sequence=sequence,
                                         reason='part is not a dict')
        index = part.get('index')
        if isinstance(index, bool) or not isinstance(index, int) or index < 0:
            raise exception.InvalidDelta(instance=instance, sequence=sequence,
                                         reason='bad part index %r' % index)
        if part.get('instance') != instance or part.get(
                'sequence') != sequence:
            raise exception.InvalidDelta(
                instance=instance, sequence=sequence,
                reason='part %d belongs to %s/%s' % (
                    index, part.get('instance'), part.get('sequence')))
        # NOTE: refused before anything is decoded, and again (atomically)
        # once the part is checked.
        self._admit(instance, sequence, index, False)
        payload = part.get('payload')
        limit = delta_mod.max_payload_bytes(self.max_part_bytes)
        if not isinstance(payload, str) or len(payload) > (
                (limit + 2) // 3 * 4):
            raise exception.InvalidDelta(
                instance=instance, sequence=sequence,
                reason='part %d: payload missing or larger than the part '
                       'limit ([image] max_part_bytes = %d)'
                       % (index, self.max_part_bytes))
        try:
            blob = codec.b64decode(payload, limit)
        except codec.CodecError as e:
            raise exception.InvalidDelta(
                instance=instance, sequence=sequence,
                reason='part %d: payload is not base64 (%s)' % (index, e))
        meta = {k: v for k, v in part.items() if k != 'payload'}
        obj = delta_mod.part_from_primitive(
            types.SimpleNamespace(instance=instance, sequence=sequence),
            dict(meta, payload=''), self.max_part_bytes)
        obj.payload = blob
        raw = delta_mod.receive_part(
            instance, sequence, obj, max_part_bytes=self.max_part_bytes,
            max_part_extents=self.max_part_extents)
        # NOTE: what is kept is the checked, decoded bytes: a part read
        # back from disk is then never decompressed again.
        meta['compression'] = 'none'
        key = (instance, sequence, index)
        digests = {}
        blob = json.dumps(meta).encode()
        cost = (len(raw) + len(blob) + PART_OVERHEAD
                + DIGEST_BYTES * (len(raw) // MIN_CHUNK))
        self._admit(instance, sequence, index, True)
        if not self.memory_bytes or cost > self.memory_bytes:
            self._forget(lambda k: k == key)
            self._write(key, blob, raw)
        else:
            self._hold(key, (blob, raw, digests, cost))
        if received is not None:
            received(obj, raw, digests)
        return index

    # --- caps ---------------------------------------------------------------

    def _admit(self, instance: str, sequence: int, index: int,
               record: bool) -> None:
        """Refuse a part beyond the caps; ``record``: note its arrival."""
        if index >= self.max_delta_parts:
            raise exception.DeltaTooManyParts(
                instance=instance, sequence=sequence, index=index,
                limit=self.max_delta_parts)
        with self._lock:
            held = self._deltas.get(instance, {})
            if sequence not in held and (
                    len(held) >= self.max_deltas_per_instance):
                raise exception.TooManyDeltas(
                    instance=instance, sequence=sequence, count=len(held),
                    limit=self.max_deltas_per_instance,
                    max_age=self.max_age)
            if record:
                self._deltas.setdefault(instance, {})[sequence] = (
                    self.clock())

    def touch(self, instance: str, sequence: int) -> None:
        """A commit of this delta started: it is not abandoned."""
        with self._lock:
            held = self._deltas.get(instance)
            if held and sequence in held:
                held[sequence] = self.clock()

    def deltas(self) -> dict:
        """instance -> sequences of the deltas held (memory or disk)."""
        with self._lock:
            return {i: sorted(d) for i, d in self._deltas.items()}

    # --- memory, and the files parts pushed out of it go to ----------------

    def _hold(self, key, entry: tuple) -> None:
        out = []
        with self._lock:
            old = self._held.pop(key, None)
            if old is not None:
                self._held_bytes -= old[3]
            self._held[key] = entry
            self._held_bytes += entry[3]
            while self._held_bytes > self.memory_bytes:
                pushed, entry = self._held.popitem(last=False)
                self._held_bytes -= entry[3]
                self._spilling[pushed] = entry
                out.append(pushed)
        for pushed in out:
            self._spill(pushed)

    def _spill(self, key) -> None:
        with self._lock:
            entry = self._spilling.get(key)
        if entry is None:
            return
        try:
            self._write(key, entry[0], entry[1])
        except OSError as e:
            # NOTE: reported at commit as never received: sent again.
            LOG.warning('Spool: part %d of delta %d of instance %s could '
                        'not be written to %s: %s', key[2], key[1], key[0],
                        self.root, e)
        with self._lock:
            if self._spilling.get(key) is entry:
                del self._spilling[key]
                return
        # NOTE: dropped (committed, or its instance unprotected) while it
        # was being written: the file must not outlive it.
        try:
            os.unlink(self._path(key))
        except OSError:
            pass  # NOTE: never written, or gone with its directory

    def _write(self, key, blob: bytes, raw: bytes) -> None:
        path = self._path(key)
        os.makedirs(os.path.dirname(path), exist_ok=True)
        tmp = '%s.%s.tmp' % (path, secrets.token_hex(4))
        try:
            with open(tmp, 'wb') as f:
                f.write(struct.pack('>I', len(blob)) + blob)
                f.write(raw)
            os.replace(tmp, path)
        except BaseException:
            if os.path.exists(tmp):
                os.unlink(tmp)
            raise

    def _recall(self, key):
        with self._lock:
            return self._held.get(key) or self._spilling.get(key)

    def _forget(self, match) -> None:
        with self._lock:
            for key in [k for k in self._held if match(k)]:
                self._held_bytes -= self._held.pop(key)[3]
            for key in [k for k in self._spilling if match(k)]:
                del self._spilling[key]

    @property
    def held_bytes(self) -> int:
        """What the parts held in memory cost: their decoded bytes, their
        extents and their bookkeeping."""
        return self._held_bytes

    # --- commit -------------------------------------------------------------

    def load(self, header: delta_mod.DeltaHeader) -> delta_mod.Delta:
        """The delta's parts, from memory or their files, for the merge."""
        self._dir(header.instance, header.sequence)
        parts = []
        missing = []
        first = None
        for index in range(header.part_count):
            key = (header.instance, header.sequence, index)
            held = self._recall(key)
            digests = None
            if missing:
                # NOTE: the delta is sent again anyway: what else is
                # missing is all that matters now, not reading the rest.
                if held is None and not os.path.exists(self._path(key)):
                    missing.append(index)
                continue
            if held is not None:
                # NOTE: checked on arrival: the merge takes its bytes (and
                # the digests of their whole chunks) as they are.
                meta, decoded, raw = json.loads(held[0]), held[1], None
                digests = held[2]
            else:
                try:
                    meta, decoded, raw = self._read(key, header.part_count,
                                                    _Missing)
                except _Missing as e:
                    missing.append(index)
                    first = str(e)
                    continue
            meta['payload'] = ''
            part = delta_mod.part_from_primitive(header, meta)
            part.payload = raw
            part.decoded = decoded
            part.chunk_digests = digests
            parts.append(part)
        if missing:
            # NOTE: the first reason in the words agents of earlier
            # releases looked for ("never received").
            raise exception.PartsMissing(
                instance=header.instance, sequence=header.sequence,
                missing=missing, count=header.part_count,
                reason='%s; %ssend it again' % (first, (
                    'parts %s of %d missing; ' % (
                        ', '.join(map(str, missing)), header.part_count)
                    if len(missing) > 1 else '')))
        return delta_mod.Delta(header, parts)

    def _read(self, key, count: int, again):
        index = key[2]
        try:
            with open(self._path(key), 'rb') as f:
                (n,) = struct.unpack('>I', f.read(4))
                meta = json.loads(f.read(n))
                raw = f.read()
        except FileNotFoundError:
            raise again('part %d of %d was never received (or was lost '
                        'with a restart of the manager)' % (index, count))
        except OSError as e:
            raise again('part %d of %d was never received whole (spooled '
                        'copy unreadable: %s)' % (index, count, e))
        except (ValueError, struct.error) as e:
            # NOTE: torn by a crash (part files are not fsynced).
            raise again('part %d of %d was never received whole (spooled '
                        'copy unreadable: %s)' % (index, count, e))
        if not isinstance(meta, dict):
            raise again('part %d of %d was never received whole (spooled '
                        'copy unreadable)' % (index, count))
        # NOTE: checked again by the merge (size, checksum).
        return meta, None, raw

    def drop_through(self, instance: str, sequence: int) -> None:
        """Forget the parts of every delta up to ``sequence``."""
        root = os.path.join(self.root, instance)
        self._dir(instance, sequence)  # NOTE: validates both.
        self._forget(lambda k: k[0] == instance and k[1] <= sequence)
        with self._lock:
            held = self._deltas.get(instance, {})
            for seq in [s for s in held if s <= sequence]:
                del held[seq]
            if not held:
                self._deltas.pop(instance, None)
        for name in os.listdir(root) if os.path.isdir(root) else ():
            if name.isdigit() and int(name) <= sequence:
                shutil.rmtree(os.path.join(root, name), ignore_errors=True)

    def drop(self, instance: str, sequence: int | None = None) -> None:
        """Forget one delta's parts, or all of an instance's."""
        if sequence is None:
            if not uuidutils.is_uuid_like(instance):
                raise exception.InvalidInstance(instance=instance)
            path = os.path.join(self.root, instance)
            self._forget(lambda k: k[0] == instance)
            with self._lock:
                self._deltas.pop(instance, None)
        else:
            path = self._dir(instance, sequence)
            self._forget(lambda k: k[0] == instance and k[1] == sequence)
            with self._lock:
                held = self._deltas.get(instance, {})
                held.pop(sequence, None)
                if not held:
                    self._deltas.pop(instance, None)
        shutil.rmtree(path, ignore_errors=True)

    # --- the sweep ---------------------------------------------------------

    def sweep(self) -> list:
        """Drop the deltas that got no part (nor a commit) for
        ``max_age`` seconds, and the part files of a previous run that
        old; return their (instance, sequence)."""
        cutoff = self.clock() - self.max_age
        with self._lock:
            stale = [(i, s) for i, held in self._deltas.items()
                     for s, seen in held.items() if seen < cutoff]
            known = {(i, s) for i, held in self._deltas.items()
                     for s in held}
        for instance, sequence in stale:
            self.drop(instance, sequence)
        # NOTE: files no delta of this process names: written by a
        # manager before its restart (their commit may still come: they
        # go by age too, the directory's mtime being their latest part).
        wall = time.time() - self.max_age
        for instance in os.listdir(self.root):
            top = os.path.join(self.root, instance)
            if not (uuidutils.is_uuid_like(instance) and os.path.isdir(top)):
                continue
            for name in os.listdir(top):
                path = os.path.join(top, name)
                try:
                    old = os.stat(path).st_mtime < wall
                except OSError:
                    continue  # NOTE: dropped meanwhile
                if name.isdigit() and (instance, int(name)) not in known \
                        and old:
                    shutil.rmtree(path, ignore_errors=True)
                    stale.append((instance, int(name)))
            if not any(i == instance for i, _s in known):
                try:
                    os.rmdir(top)  # NOTE: only once empty
                except OSError:
                    pass
        if stale:
            LOG.info('Spool: dropped %d deltas that got no part for %d s '
                     '(abandoned; an agent that still wants one sends it '
                     'again): %s', len(stale), self.max_age,
                     ', '.join('%s/%d' % k for k in stale[:10]))
        return stale
