"""Delta parts received from agents, kept on disk until their commit.

One file per part (``<root>/<instance>/<sequence>/<index>.part``), written
atomically, so a part sent twice is simply written twice, and a manager
killed between parts loses nothing the agent will not send again.
"""

import base64
import binascii
import json
import os
import shutil
import struct

from oslo_utils import uuidutils

from ha_snapshot import delta as delta_mod
from ha_snapshot import exception


class Spool:

    def __init__(self, root: str, max_part_bytes: int):
        self.root = root
        self.max_part_bytes = max_part_bytes
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

    def put(self, instance: str, sequence: int, part: dict) -> int:
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
        # NOTE: base64 makes 4 bytes of 3; a bit more for zstd framing.
        limit = (self.max_part_bytes * 1.01 + 4096) * 4 / 3 + 4
        if not isinstance(payload, str) or len(payload) > limit:
            raise exception.InvalidDelta(
                instance=instance, sequence=sequence,
                reason='part %d: payload missing or larger than the part '
                       'limit ([image] max_part_bytes = %d)'
                       % (index, self.max_part_bytes))
        try:
            raw = base64.b64decode(payload, validate=True)
        except (binascii.Error, ValueError) as e:
            raise exception.InvalidDelta(
                instance=instance, sequence=sequence,
                reason='part %d: payload is not base64 (%s)' % (index, e))
        meta = json.dumps({k: v for k, v in part.items()
                           if k != 'payload'}).encode()
        os.makedirs(directory, exist_ok=True)
        path = os.path.join(directory, '%06d.part' % index)
        tmp = path + '.tmp'
        # NOTE: the payload is kept decoded (base64 costs 4/3 on disk and
        # a second decode at commit): meta length, meta JSON, raw bytes.
        with open(tmp, 'wb') as f:
            f.write(struct.pack('>I', len(meta)) + meta)
            f.write(raw)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
        return index

    def load(self, header: delta_mod.DeltaHeader) -> delta_mod.Delta:
        directory = self._dir(header.instance, header.sequence)
        parts = []
        for index in range(header.part_count):
            path = os.path.join(directory, '%06d.part' % index)
            try:
                with open(path, 'rb') as f:
                    (n,) = struct.unpack('>I', f.read(4))
                    prim = json.loads(f.read(n))
                    raw = f.read()
            except FileNotFoundError:
                raise exception.InvalidDelta(
                    instance=header.instance, sequence=header.sequence,
                    reason='part %d of %d was never received; send it again'
                    % (index, header.part_count))
            except (ValueError, struct.error) as e:
                raise exception.InvalidDelta(
                    instance=header.instance, sequence=header.sequence,
                    reason='spooled part %d unreadable (%s)' % (index, e))
            if not isinstance(prim, dict):
                raise exception.InvalidDelta(
                    instance=header.instance, sequence=header.sequence,
                    reason='spooled part %d unreadable' % index)
            prim['payload'] = ''
            part = delta_mod.part_from_primitive(header, prim)
            part.payload = raw
            parts.append(part)
        return delta_mod.Delta(header, parts)

    def drop_through(self, instance: str, sequence: int) -> None:
        """Forget the parts of every delta up to ``sequence``."""
        root = os.path.join(self.root, instance)
        self._dir(instance, sequence)  # NOTE: validates both.
        for name in os.listdir(root) if os.path.isdir(root) else ():
            if name.isdigit() and int(name) <= sequence:
                shutil.rmtree(os.path.join(root, name), ignore_errors=True)

    def drop(self, instance: str, sequence: int | None = None) -> None:
        """Forget one delta's parts, or all of an instance's."""
        if sequence is None:
            path = os.path.join(self.root, instance)
        else:
            path = self._dir(instance, sequence)
        shutil.rmtree(path, ignore_errors=True)
