"""Who sent a message on the bus: keys, signed envelopes, replay checks.

Every RPC message carries, in its context, an envelope ``ha_auth``::

    {"v": 2, "sender": "host:compute1", "audience": "manager",
     "ts": 1765000000.123, "sid": "<16 hex>", "seq": 42, "mac": "<64 hex>"}

``mac`` is HMAC-SHA256 over the canonical JSON of the envelope's fields
plus the method name and the call's arguments (as they travel: JSON; each
string tagged, those over 1 KiB replaced by their SHA-256), so a
changed argument, method, sender or receiver, a wrong key, a stale time or
a nonce seen before makes the message fail :meth:`Verifier.verify`.

Keys: the operator holds master keys; the key of an identity is
HMAC-SHA256(master, identity) (:func:`derive`). The identities are
``host:<name>`` (an agent), ``api`` (ha-snapshot-api) and ``manager``. A
message is always signed with the key of its non-manager party: an agent
and the API sign with their own key, the manager signs a message to the
agent of host H with H's key. So the manager needs only the master keys,
a compute host only its own key, and a compute host can neither speak for
another host nor forge the manager's messages to another host's agent.

With no key configured a process uses one ephemeral master key, made up at
import: services inside the same process (the demo, unit tests) trust each
other, nothing outside does.

Imports nothing from the package but the exception module; the rpc client
and server wrappers call in here.
"""

import hashlib
import hmac
import itertools
import json
import os
import secrets
import stat
import threading
import time

from oslo_log import log as logging
from oslo_serialization import jsonutils

from ha_snapshot import exception

LOG = logging.getLogger(__name__)

ENVELOPE = 'ha_auth'
FORMAT = 2
MANAGER = 'manager'
API = 'api'
HOST_PREFIX = 'host:'
AGENT_PREFIX = 'agent:'
MIN_KEY_CHARS = 32
LONG_STRING = 1024
WINDOW = 4096
""":class:`ReplayWindow`: how far behind the newest message of a stream
another of that stream may arrive (in numbers) and still be accepted."""
_EPHEMERAL = secrets.token_hex(32).encode()


def host_identity(host: str) -> str:
    return HOST_PREFIX + host


def agent_audience(host: str) -> str:
    return AGENT_PREFIX + host


def derive(master: bytes, identity: str) -> bytes:
    """The key of ``identity`` under ``master`` (64 hex characters)."""
    return hmac.new(master, b'ha-snapshot rpc key v1\0' + identity.encode(),
                    hashlib.sha256).hexdigest().encode()


def read_key_file(path: str) -> list:
    """The keys of a key file: one per line, newest first; lines that are
    empty or start with # are skipped."""
    try:
        with open(path) as f:
            st = os.fstat(f.fileno())
            lines = f.read().splitlines()
    except OSError as e:
        raise exception.ConfigurationError(
            reason='[rpc_auth] key file %s cannot be read: %s' % (path, e))
    keys = [line.strip() for line in lines
            if line.strip() and not line.strip().startswith('#')]
    if not keys:
        raise exception.ConfigurationError(
            reason='[rpc_auth] key file %s holds no key' % path)
    short = [i + 1 for i, k in enumerate(keys) if len(k) < MIN_KEY_CHARS]
    if short:
        raise exception.ConfigurationError(
            reason='[rpc_auth] key file %s: key %s shorter than %d '
            'characters (make one with "openssl rand -hex 32")'
            % (path, ', '.join(map(str, short)), MIN_KEY_CHARS))
    if st.st_mode & stat.S_IROTH:
        LOG.warning('[rpc_auth] key file %s is readable by every user: '
                    'chmod o-r it', path)
    return [k.encode() for k in keys]


class Keys:
    """The keys one process signs and checks with.

    ``keys_for(identity)`` gives the keys of ``identity``, newest (the one
    that signs) first, or [] when this process cannot know them.
    """

    def __init__(self, masters: list = (), own: str | None = None,
                 own_keys: list = (), ephemeral: bool = False):
        self.masters = list(masters)
        self.own = own
        self.own_keys = list(own_keys)
        self.ephemeral = ephemeral

    @classmethod
    def from_conf(cls, conf, identity: str | None = None) -> 'Keys':
        """The keys ``conf`` names for ``identity`` (None: the manager).

        An agent or the API uses [rpc_auth] key_file when set, else
        derives its key from master_key_file; the manager needs the
        master. Neither set: the ephemeral in-process key.
        """
        opts = conf.rpc_auth
        if identity is not None and opts.key_file:
            return cls(own=identity, own_keys=read_key_file(opts.key_file))
        if opts.master_key_file:
            return cls(masters=read_key_file(opts.master_key_file))
        if identity is None and opts.key_file:
            raise exception.ConfigurationError(
                reason='ha-snapshot-manager needs [rpc_auth] '
                'master_key_file: key_file holds one identity\'s key only')
        LOG.warning('[rpc_auth] has neither master_key_file nor key_file: '
                    'this process signs with an ephemeral key, so only '
                    'services inside it are trusted. Provision keys '
                    '(doc/source/admin/security.rst) for separate '
                    'processes and hosts.')
        return cls.ephemeral()

    @classmethod
    def ephemeral(cls) -> 'Keys':
        """This process's own made-up master key."""
        return cls(masters=[_EPHEMERAL], ephemeral=True)

    def keys_for(self, identity: str) -> list:
        if self.own is not None:
            return self.own_keys if identity == self.own else []
        return [derive(m, identity) for m in self.masters]


def _plain(obj) -> bool:
    """Whether ``obj`` reads back from JSON as it is."""
    if obj is None or isinstance(obj, (str, bool, int)):
        return True
    if isinstance(obj, float):
        return obj == obj and obj not in (float('inf'), float('-inf'))
    if isinstance(obj, list):
        return all(_plain(v) for v in obj)
    if isinstance(obj, dict):
        return all(isinstance(k, str) and _plain(v) for k, v in obj.items())
    return False


def _canonical(obj) -> bytes:
    return json.dumps(obj, sort_keys=True, separators=(',', ':'),
                      ensure_ascii=True, allow_nan=False).encode()


def _digested(obj):
    """``obj`` with every string tagged, long ones by their SHA-256.

    JSON-encoding a delta part's payload (megabytes of base64) costs ten
    times hashing it; the tags ("s:" text, "h:" digest) keep a short
    string from ever standing for a long one.
    """
    if isinstance(obj, str):
        if len(obj) <= LONG_STRING:
            return 's:' + obj
        return 'h:' + hashlib.sha256(
            obj.encode('utf-8', 'surrogatepass')).hexdigest()
    if isinstance(obj, list):
        return [_digested(v) for v in obj]
    if isinstance(obj, dict):
        return {k: _digested(v) for k, v in obj.items()}
    return obj


def _mac(key: bytes, envelope: dict, method: str, args: dict) -> str:
    signed = {k: envelope[k] for k in ('v', 'sender', 'audience', 'ts',
                                       'sid', 'seq')}
    signed.update(method=method, args=_digested(args))
    return hmac.new(key, _canonical(signed), hashlib.sha256).hexdigest()


def _key_identity(sender: str, audience: str) -> str:
    """Whose key MACs a message: always its non-manager party's."""
    if sender == MANAGER and audience.startswith(AGENT_PREFIX):
        return host_identity(audience[len(AGENT_PREFIX):])
    return sender


class Signer:
    """Signs the messages of one sender identity, numbered in one stream."""

    def __init__(self, sender: str, keys: Keys):
        self.sender = sender
        self.keys = keys
        self.stream = secrets.token_hex(8)
        # NOTE: next() on a count is atomic (one C call): threads share it.
        self._numbers = itertools.count(1)

    def envelope(self, audience: str, method: str, kwargs: dict) -> dict:
        identity = _key_identity(self.sender, audience)
        keys = self.keys.keys_for(identity)
        if not keys:
            raise exception.ConfigurationError(
                reason='no [rpc_auth] key for %s: this process holds the '
                'key of %s only' % (identity, self.keys.own))
        # NOTE: the arguments as the receiver will see them (JSON: tuples
        # become lists, keys strings, datetimes text); the round trip is
        # skipped for plain JSON values (a delta part: it costs more than
        # the signature).
        args = kwargs if _plain(kwargs) else json.loads(
            jsonutils.dumps(kwargs))
        env = {'v': FORMAT, 'sender': self.sender, 'audience': audience,
               'ts': round(time.time(), 3), 'sid': self.stream,
               'seq': next(self._numbers)}
        env['mac'] = _mac(keys[0], env, method, args)
        return env


class ReplayWindow:
    """The message numbers seen recently, per sender and stream.

    Per stream: the highest number seen, a bit mask of the :data:`WINDOW`
    numbers at and below it (bit i: number ``highest - i`` seen), and the
    newest send time, by which a stream silent for ``max_age`` seconds is
    forgotten (looked for at most every ``max_age / 10`` seconds).
    """

    def __init__(self, max_age: float, window: int = WINDOW):
        self.max_age = max_age
        self.window = window
        self._mask = (1 << window) - 1
        self._streams: dict[tuple, list] = {}
        self._lock = threading.Lock()
        self._next_sweep = 0.0

    def __len__(self) -> int:
        return len(self._streams)

    def add(self, sender: str, stream: str, number: int, ts: float,
            now: float) -> str | None:
        """Remember message ``number``; the reason to refuse it, or None."""
        key = (sender, stream)
        with self._lock:
            if now >= self._next_sweep:
                self._sweep(now)
            seen = self._streams.get(key)
            if seen is None:
                self._streams[key] = [number, 1, ts]
                return None
            highest, bits, newest = seen
            if number > highest:
                seen[0] = number
                seen[1] = ((bits << (number - highest)) | 1) & self._mask
            elif highest - number >= self.window:
                return ('older than the replay window: %d messages of its '
                        'stream came after it' % (highest - number))
            else:
                bit = 1 << (highest - number)
                if bits & bit:
                    return 'replayed: this message was seen before'
                seen[1] = bits | bit
            seen[2] = max(newest, ts)
            return None

    def _sweep(self, now: float) -> None:
        # NOTE: any message of a stream forgotten here was sent at or
        # before its newest time, over max_age ago: refused as stale.
        self._next_sweep = now + max(1.0, self.max_age / 10)
        for key in [k for k, v in self._streams.items()
                    if now - v[2] > self.max_age]:
            del self._streams[key]


class Verifier:
    """Checks the envelopes of messages addressed to ``audience``.

    ``senders`` says who may send: a callable(sender) -> bool.
    """

    def __init__(self, keys: Keys, audience: str, senders,
                 max_age: float = 600, window: int = WINDOW):
        self.keys = keys
        self.audience = audience
        self.senders = senders
        self.max_age = max_age
        self.seen = ReplayWindow(max_age, window)

    @classmethod
    def from_conf(cls, conf, keys: Keys, audience: str,
                  senders) -> 'Verifier':
        return cls(keys, audience, senders,
                   max_age=conf.rpc_auth.max_message_age,
                   window=conf.rpc_auth.replay_window)

    def verify(self, ctxt, method: str, args: dict) -> str:
        """The sender of a valid message; MessageAuthFailed otherwise."""
        env = getattr(ctxt, ENVELOPE, None)
        claimed = env.get('sender') if isinstance(env, dict) else None

        def refuse(reason):
            raise exception.MessageAuthFailed(
                method=method, sender=repr(claimed)[:80], reason=reason)

        if not isinstance(env, dict):
            refuse('it carries no signed identity (an agent, API or manager '
                   'without [rpc_auth] keys, or older than this one?)')
        if env.get('v') != FORMAT:
            refuse('unknown envelope format %r' % env.get('v'))
        if not isinstance(claimed, str) or not self.senders(claimed):
            refuse('this sender may not send to %s' % self.audience)
        if env.get('audience') != self.audience:
            refuse('it is addressed to %r, not to %s'
                   % (env.get('audience'), self.audience))
        ts, mac = env.get('ts'), env.get('mac')
        stream, number = env.get('sid'), env.get('seq')
        if not isinstance(ts, (int, float)) or isinstance(ts, bool) or \
                not isinstance(stream, str) or not 0 < len(stream) <= 64 \
                or not isinstance(number, int) or isinstance(number, bool) \
                or number < 1 or not isinstance(mac, str):
            refuse('malformed envelope')
        now = time.time()
        if abs(now - ts) > self.max_age:
            refuse('sent %.0f s %s, more than [rpc_auth] max_message_age '
                   '(%d s): stale, or the clocks differ'
                   % (abs(now - ts), 'ago' if ts < now else 'ahead',
                      self.max_age))
        keys = self.keys.keys_for(_key_identity(claimed, self.audience))
        if not any(hmac.compare_digest(_mac(k, env, method, args), mac)
                   for k in keys):
            refuse('bad signature: wrong key, or the message was changed')
        replay = self.seen.add(claimed, stream, number, ts, now)
        if replay:
            refuse(replay)
        return claimed


def manager_senders(sender: str) -> bool:
    """Who may send to the manager: the API and the agents."""
    return sender == API or (sender.startswith(HOST_PREFIX) and
                             len(sender) > len(HOST_PREFIX))
