"""Delta parts received from agents, kept on disk until their commit.

One file per part (``<root>/<instance>/<sequence>/<index>.part``), written
atomically (a uniquely named temporary file, then a rename), so a part sent
twice, even twice at once, is simply written twice.

A part is checked whole when it arrives (structure, limits, decompression
and checksum: :func:`ha_snapshot.delta.receive_part`): a bad part is
refused by the call that brought it, and the commit does not decode it a
second time when its decoded bytes are still in the memory cache (bounded
by ``cache_bytes``; parts pushed out of it are checked again at commit).

Part files are not fsynced. The spool holds nothing the agent does not
still hold: the agent keeps its overlay until the commit's durable ack,
and the ack is given only after the store made the restore point durable.
A part lost or torn by a crash is found at commit (missing, unreadable, or
failing its checksum) and reported as "never received; send it again",
which the agent does.
"""

import collections
import json
import os
import secrets
import shutil
import struct
import threading
import types

from oslo_utils import uuidutils

from ha_snapshot import codec
from ha_snapshot import delta as delta_mod
from ha_snapshot import exception

# NOTE: the decoded parts kept for their commit; a 64 MiB delta of 1 MiB
# parts fits with room for a few instances shipping at once.
DEFAULT_CACHE_BYTES = 128 << 20


class Spool:

    def __init__(self, root: str, max_part_bytes: int,
                 max_part_extents: int = 4096,
                 cache_bytes: int = DEFAULT_CACHE_BYTES):
        self.root = root
        self.max_part_bytes = max_part_bytes
        self.max_part_extents = max_part_extents
        self.cache_bytes = cache_bytes
        self._cache = collections.OrderedDict()
        self._cached = 0
        self._lock = threading.Lock()
        os.makedirs(root, exist_ok=True)

    def _dir(self, instance, sequence) -> str:
        if not uuidutils.is_uuid_like(instance):
            raise exception.InvalidInstance(instance=instance)
        if isinstance(sequence, bool) or not isinstance(sequence, int) or (
                sequence < 0):
            raise exception.InvalidDelta(instance=instance, sequence=sequence,
                                         reason='sequence must be an integer '
                                                '>= 0')
        return os.path.join(self.root, instance, '%012d' % sequence)

    def put(self, instance: str, sequence: int, part: dict,
            received=None) -> int:
        """Check and spool one part; return its index.

        ``received(part, data)``, if given, is called with the checked
        part and its decoded bytes once it is spooled.
        """
        directory = self._dir(instance, sequence)
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
        meta = json.dumps(meta).encode()
        os.makedirs(directory, exist_ok=True)
        path = os.path.join(directory, '%06d.part' % index)
        tmp = '%s.%s.tmp' % (path, secrets.token_hex(4))
        # NOTE: the payload is kept decoded from base64 (4/3 on disk, and
        # a second decode at commit): meta length, meta JSON, zstd frame.
        try:
            with open(tmp, 'wb') as f:
                f.write(struct.pack('>I', len(meta)) + meta)
                f.write(blob)
            os.replace(tmp, path)
        except BaseException:
            if os.path.exists(tmp):
                os.unlink(tmp)
            raise
        self._remember((instance, sequence, index), obj.sha256, raw)
        if received is not None:
            received(obj, raw)
        return index

    # --- the decoded-part cache ---------------------------------------------

    def _remember(self, key, sha: str, raw: bytes) -> None:
        if len(raw) > self.cache_bytes:
            return
        with self._lock:
            old = self._cache.pop(key, None)
            if old is not None:
                self._cached -= len(old[1])
            self._cache[key] = (sha, raw)
            self._cached += len(raw)
            while self._cached > self.cache_bytes:
                _key, (_sha, dropped) = self._cache.popitem(last=False)
                self._cached -= len(dropped)

    def _recall(self, key, sha: str) -> bytes | None:
        with self._lock:
            entry = self._cache.get(key)
        if entry is None or entry[0] != sha:
            return None
        return entry[1]

    def _forget(self, match) -> None:
        with self._lock:
            for key in [k for k in self._cache if match(k)]:
                self._cached -= len(self._cache.pop(key)[1])

    @property
    def cached_bytes(self) -> int:
        return self._cached

    # --- commit -------------------------------------------------------------

    def load(self, header: delta_mod.DeltaHeader) -> delta_mod.Delta:
        directory = self._dir(header.instance, header.sequence)
        parts = []

        def again(reason):
            return exception.InvalidDelta(
                instance=header.instance, sequence=header.sequence,
                reason='%s; send it again' % reason)
        for index in range(header.part_count):
            path = os.path.join(directory, '%06d.part' % index)
            key = (header.instance, header.sequence, index)
            try:
                with open(path, 'rb') as f:
                    (n,) = struct.unpack('>I', f.read(4))
                    prim = json.loads(f.read(n))
                    decoded = self._recall(key, prim.get('sha256')) if (
                        isinstance(prim, dict)) else None
                    # NOTE: a part still in the cache was checked on
                    # arrival: its compressed copy is not even read.
                    raw = f.read() if decoded is None else None
            except FileNotFoundError:
                raise again('part %d of %d was never received'
                            % (index, header.part_count))
            except (ValueError, struct.error) as e:
                # NOTE: torn by a crash (part files are not fsynced).
                raise again('part %d of %d was never received whole '
                            '(spooled copy unreadable: %s)'
                            % (index, header.part_count, e))
            if not isinstance(prim, dict):
                raise again('part %d of %d was never received whole '
                            '(spooled copy unreadable)'
                            % (index, header.part_count))
            prim['payload'] = ''
            part = delta_mod.part_from_primitive(header, prim)
            part.payload = raw
            part.decoded = decoded
            parts.append(part)
        return delta_mod.Delta(header, parts)

    def drop_through(self, instance: str, sequence: int) -> None:
        """Forget the parts of every delta up to ``sequence``."""
        root = os.path.join(self.root, instance)
        self._dir(instance, sequence)  # NOTE: validates both.
        self._forget(lambda k: k[0] == instance and k[1] <= sequence)
        for name in os.listdir(root) if os.path.isdir(root) else ():
            if name.isdigit() and int(name) <= sequence:
                shutil.rmtree(os.path.join(root, name), ignore_errors=True)

    def drop(self, instance: str, sequence: int | None = None) -> None:
        """Forget one delta's parts, or all of an instance's."""
        if sequence is None:
            path = os.path.join(self.root, instance)
            self._forget(lambda k: k[0] == instance)
        else:
            path = self._dir(instance, sequence)
            self._forget(lambda k: k[0] == instance and k[1] == sequence)
        shutil.rmtree(path, ignore_errors=True)
