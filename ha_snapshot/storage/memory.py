"""Memory states in the store: one object per restore point that has one.

Layout (keys)::

    instances/<uuid>/memory-states/<number:012d>   its manifest

A memory-state manifest is the zstd-compressed JSON of
``{"restore_point", "chunks": [[sha256, length], ...], "size", "config",
"saved_at", "format_version"}``: the state is the concatenation of its
chunks, in order, stored like any chunk (``chunks/<scope>/...``,
content-addressed in the restore point's scope: a state deduplicates
against every other state and disk chunk of that scope). It is an object
of its own, not keys in the restore point's manifest, so that a replica of
an older release reads manifests as before and a restore point is whole
without it. Written only after every chunk it names is stored; removed
with its restore point (retention); its chunks count as referenced for gc.

May import ha_snapshot.storage.objects, ha_snapshot.codec and
ha_snapshot.exception.
"""

from ha_snapshot import codec as codec_mod
from ha_snapshot import exception
from ha_snapshot.storage import objects

FORMAT_VERSION = 1
MAX_OBJECT = 64 << 20


def prefix(instance: str) -> str:
    return 'instances/%s/memory-states/' % instance


def key(instance: str, number: int) -> str:
    return '%s%012d' % (prefix(instance), number)


def encode(manifest: dict) -> bytes:
    return objects.encode_json(manifest)


def decode(obj_key: str, blob: bytes) -> dict:
    try:
        d = objects.decode_json(blob, MAX_OBJECT, FORMAT_VERSION)
        check_chunks(d['chunks'])
        if not isinstance(d.get('config'), dict):
            raise ValueError('no configuration')
    except (ValueError, TypeError, KeyError, AttributeError,
            codec_mod.CodecError) as e:
        raise exception.CorruptObject(key=obj_key, reason='unreadable memory '
                                      'state (%s)' % e)
    return d


def check_chunks(chunks) -> None:
    """ValueError unless ``chunks`` is a list of [sha256, length]."""
    if not isinstance(chunks, list):
        raise ValueError('chunks is not a list')
    for entry in chunks:
        if not (isinstance(entry, list) and len(entry) == 2
                and isinstance(entry[0], str) and len(entry[0]) == 64
                and isinstance(entry[1], int)
                and 0 < entry[1] <= objects.MAX_CHUNK):
            raise ValueError('bad chunk entry %r' % (entry,))


def chunk_keys(scope: str, manifest: dict) -> set:
    return {objects.chunk_key(scope, sha) for sha, _n in manifest['chunks']}


# --- what the store does with them (``store``: a RecoveryStore) -------------

def missing(store, rp, shas: list) -> list:
    """The chunks of ``shas`` the store does not hold in ``rp``'s scope;
    the ones it holds are touched (fresh for gc until the commit)."""
    return [sha for sha in shas
            if not store.driver.touch(objects.chunk_key(rp.scope, sha))]


def put_chunks(store, rp, items: list) -> int:
    """Store chunks ``[(sha, length, zstd frame), ...]``, each checked
    against its sha256 and length; bytes newly stored."""
    stored = 0
    for sha, length, frame in items:
        if not (isinstance(length, int) and 0 < length <= objects.MAX_CHUNK):
            raise exception.InvalidMemoryState(
                restore_point=rp.id, reason='chunk length %r' % (length,))
        try:
            data = codec_mod.decompress(frame, length)
        except codec_mod.CodecError as e:
            raise exception.InvalidMemoryState(
                restore_point=rp.id, reason='chunk %s: %s' % (sha, e))
        if len(data) != length:
            raise exception.InvalidMemoryState(
                restore_point=rp.id, reason='chunk %s holds %d bytes, not '
                '%d' % (sha, len(data), length))
        got, new = store._put_chunk(rp.scope, data, store.compress)
        if got != sha:
            raise exception.InvalidMemoryState(
                restore_point=rp.id, reason='chunk named %s has sha256 %s'
                % (sha, got))
        stored += new
    return stored


def commit(store, rp, manifest: dict) -> dict:
    """Write the memory state of ``rp`` once all its chunks are held;
    the manifest as stored. Idempotent (a resend rewrites the same)."""
    try:
        check_chunks(manifest.get('chunks'))
        if not isinstance(manifest.get('config'), dict):
            raise ValueError('no configuration')
        size = sum(n for _sha, n in manifest['chunks'])
        if manifest.get('size') != size:
            raise ValueError('size %r is not the sum of its chunks (%d)'
                             % (manifest.get('size'), size))
    except (ValueError, TypeError, AttributeError) as e:
        raise exception.InvalidMemoryState(restore_point=rp.id,
                                           reason=str(e))
    absent = missing(store, rp, sorted({s for s, _n in manifest['chunks']}))
    if absent:
        raise exception.InvalidMemoryState(
            restore_point=rp.id, reason='%d chunks are not stored (first: '
            '%s)' % (len(absent), absent[0]))
    stored = {'restore_point': rp.id, 'chunks': manifest['chunks'],
              'size': size, 'config': manifest['config'],
              'saved_at': manifest.get('saved_at'),
              'format_version': FORMAT_VERSION}
    store.driver.put(key(rp.instance, rp.number), encode(stored))
    return stored


def get(store, rp) -> dict | None:
    """The memory state of restore point ``rp``, or None."""
    obj_key = key(rp.instance, rp.number)
    try:
        blob = store.driver.get(obj_key)
    except exception.ObjectNotFound:
        return None
    d = decode(obj_key, blob)
    if d.get('restore_point') != rp.id:
        raise exception.CorruptObject(key=obj_key, reason='belongs to '
                                      'restore point %s, not %s'
                                      % (d.get('restore_point'), rp.id))
    return d


def read_chunk(store, rp, manifest: dict, index: int) -> bytes:
    if not (isinstance(index, int) and 0 <= index < len(manifest['chunks'])):
        raise exception.InvalidMemoryState(
            restore_point=rp.id, reason='no chunk %r' % (index,))
    sha, length = manifest['chunks'][index]
    ckey = objects.chunk_key(rp.scope, sha)
    return objects.decode_chunk(ckey, store.driver.get(ckey), sha, length)


def referenced(store, instance: str, scope_of) -> set:
    """Chunk keys the memory states of ``instance`` use (for gc);
    ``scope_of(number)``: the scope of restore point ``number``, None
    when it is gone (its state is an orphan and removed)."""
    keys = set()
    for obj in store.driver.list(prefix(instance)):
        number = int(obj.key.rsplit('/', 1)[-1])
        scope = scope_of(number)
        if scope is None:
            store.driver.delete(obj.key)
            continue
        try:
            keys |= chunk_keys(scope, decode(obj.key,
                                             store.driver.get(obj.key)))
        except exception.ObjectNotFound:
            continue
    return keys
