"""Which signed sender may call what on the manager's RPC API.

The manager's RPC server runs :class:`Guard` before every method: the
message's envelope is verified (ha_snapshot/rpc_auth.py), then
:class:`Authorizer` decides from the sender's identity:

* ``api`` (ha-snapshot-api) may call the 1.1 methods only: protect,
  unprotect, recover, alarm.
* ``host:H`` (the agent on compute host H) may call the agent methods
  only, and only about instances the manager's database places on H:
  register_instance (also naming H as its host), put_part, commit_delta,
  report_health (naming H), get_manifest, get_chunk, and the memory
  state methods (memory_chunks_missing, put_memory_chunks,
  commit_memory_state, get_memory_state, get_memory_chunk); heartbeat
  naming H.
  Registering a server the database places elsewhere (or does not know)
  needs Nova to say the server now runs on H; without [nova] the operator
  moves it with the API's protect (which records the new host first).
  An agent asking (registration, a health report) about a server that
  moved to another host (evacuated while H was away) is answered
  InstanceMoved: it stops protecting the server.

May import the database, the Nova client and rpc_auth; the manager's
endpoint is left as it was (the guard wraps it).
"""

import threading
import time

from oslo_log import log as logging

from ha_snapshot import exception
from ha_snapshot import rpc_auth
from ha_snapshot import statuses

LOG = logging.getLogger(__name__)

AGENT_METHODS = frozenset(('register_instance', 'put_part', 'commit_delta',
                           'report_health', 'heartbeat', 'get_manifest',
                           'get_chunk', 'memory_chunks_missing',
                           'put_memory_chunks', 'commit_memory_state',
                           'get_memory_state', 'get_memory_chunk'))
API_METHODS = frozenset(('protect', 'unprotect', 'recover', 'alarm'))
# NOTE: put_part and get_chunk (the hot paths) trust a host lookup this
# long (seconds); commit_delta, get_manifest and registration always ask
# the database, so a host that lost a server cannot make a restore point
# or open one after the move.
HOST_TTL = 10.0
INSTANCE_ROW = 'ha_instance_row'
"""The attribute of a message's context where :class:`Guard` leaves the
instance's database row it read for a commit_delta: the manager checks
that very row (status, project) instead of reading it again right after
(one transaction less per delta)."""


class Authorizer:
    """Decides; raises NotAuthorized naming the sender and the reason."""

    def __init__(self, conf, db, nova_server):
        """``nova_server(instance)`` -> {"host", "project", ...}: where
        Nova runs a server (Manager._nova_server)."""
        self.conf = conf
        self.db = db
        self.nova_server = nova_server
        self._hosts = {}
        self._lock = threading.Lock()

    def check(self, sender: str, method: str, kwargs: dict):
        """Refuse (NotAuthorized, InstanceMoved), or return None, or the
        instance's row as the database gave it for this check (a fresh
        lookup of commit_delta)."""
        if sender == rpc_auth.API:
            if method not in API_METHODS:
                self._refuse(sender, method, 'the API may call only %s'
                             % ', '.join(sorted(API_METHODS)))
            if method in ('protect', 'unprotect'):
                self._forget(kwargs.get('instance'))
            return
        host = sender[len(rpc_auth.HOST_PREFIX):]
        if method not in AGENT_METHODS:
            self._refuse(sender, method, 'only ha-snapshot-api may call it, '
                         'not a compute host')
        return getattr(self, '_' + method)(sender, host, kwargs)

    @staticmethod
    def _refuse(sender, method, reason):
        raise exception.NotAuthorized(sender=sender, method=method,
                                      reason=reason)

    def _forget(self, instance) -> None:
        with self._lock:
            self._hosts.pop(instance, None)

    def _same_host(self, sender, method, host, claimed) -> None:
        if claimed != host:
            self._refuse(sender, method, 'it names host %r, not its own'
                         % (claimed,))

    def _host_of(self, instance, fresh: bool) -> tuple:
        """(the instance's host, its row if read now, else None)."""
        now = time.monotonic()
        if not fresh:
            with self._lock:
                known = self._hosts.get(instance)
            if known is not None and known[1] > now:
                return known[0], None
        row = self.db.get_instance(instance)  # NOTE: InstanceNotFound
        with self._lock:
            self._hosts[instance] = (row.host, now + HOST_TTL)
        return row.host, row

    def _on_host(self, sender, method, host, instance, fresh=True):
        """Refuse unless ``instance`` is on ``host``; the row read for a
        ``fresh`` check."""
        if not isinstance(instance, str):
            self._refuse(sender, method, 'no instance named')
        where, row = self._host_of(instance, fresh)
        if where != host:
            if where and method == 'report_health':
                # NOTE: the agent of a host that came back after its
                # servers were evacuated: it stops protecting this one.
                raise exception.InstanceMoved(sender=sender, method=method,
                                              instance=instance, host=where)
            self._refuse(sender, method, 'instance %s is not on this host '
                         '(recorded on %s)' % (instance, where))
        return row

    # --- one check per agent method -----------------------------------------

    def _register_instance(self, sender, host, kw) -> None:
        method, instance = 'register_instance', kw.get('instance')
        self._same_host(sender, method, host, kw.get('host'))
        if not isinstance(instance, str):
            self._refuse(sender, method, 'no instance named')
        self._forget(instance)
        try:
            row = self.db.get_instance(instance)
        except exception.InstanceNotFound:
            row = None
        if row is not None and row.host == host:
            if row.project_id != kw.get('project'):
                self._refuse(sender, method, 'instance %s belongs to another '
                             'project' % instance)
            return
        where = 'not recorded' if row is None else 'recorded on %s' % row.host
        moved = (row is not None and row.host
                 and row.status != statuses.InstanceStatus.DELETED)
        if not self.conf.nova.auth_type:
            if moved:
                raise exception.InstanceMoved(sender=sender, method=method,
                                              instance=instance,
                                              host=row.host)
            self._refuse(sender, method, 'instance %s is %s, and without '
                         '[nova] the manager cannot check a move: protect it '
                         'on its new host through the API' % (instance, where))
        try:
            server = self.nova_server(instance)
        except exception.HaSnapshotException as e:
            self._refuse(sender, method, 'instance %s is %s and Nova cannot '
                         'confirm it moved here: %s' % (instance, where, e))
        project = row.project_id if row is not None else kw.get('project')
        if moved and server['host'] != host:
            # NOTE: evacuated (or migrated) while this host was away.
            raise exception.InstanceMoved(sender=sender, method=method,
                                          instance=instance,
                                          host=server['host'] or row.host)
        if server['host'] != host or server['project'] != project or \
                kw.get('project') != project:
            self._refuse(sender, method, 'instance %s is %s and Nova runs '
                         'it on %s' % (instance, where, server['host']))
        LOG.info('Instance %s (%s) registered by %s: Nova confirms it runs '
                 'there', instance, where, host)

    def _put_part(self, sender, host, kw) -> None:
        self._on_host(sender, 'put_part', host, kw.get('instance'),
                      fresh=False)

    def _commit_delta(self, sender, host, kw):
        header = kw.get('header')
        return self._on_host(sender, 'commit_delta', host,
                             header.get('instance') if isinstance(header, dict)
                             else None)

    def _report_health(self, sender, host, kw) -> None:
        self._same_host(sender, 'report_health', host, kw.get('host'))
        self._on_host(sender, 'report_health', host, kw.get('instance'))

    def _heartbeat(self, sender, host, kw) -> None:
        self._same_host(sender, 'heartbeat', host, kw.get('host'))

    def _get_manifest(self, sender, host, kw) -> None:
        self._on_host(sender, 'get_manifest', host, kw.get('instance'))

    def _get_chunk(self, sender, host, kw) -> None:
        self._on_host(sender, 'get_chunk', host, kw.get('instance'),
                      fresh=False)

    def _memory_chunks_missing(self, sender, host, kw) -> None:
        self._on_host(sender, 'memory_chunks_missing', host,
                      kw.get('instance'), fresh=False)

    def _put_memory_chunks(self, sender, host, kw) -> None:
        self._on_host(sender, 'put_memory_chunks', host, kw.get('instance'),
                      fresh=False)

    def _commit_memory_state(self, sender, host, kw) -> None:
        self._on_host(sender, 'commit_memory_state', host,
                      kw.get('instance'))

    def _get_memory_state(self, sender, host, kw) -> None:
        self._on_host(sender, 'get_memory_state', host, kw.get('instance'))

    def _get_memory_chunk(self, sender, host, kw) -> None:
        self._on_host(sender, 'get_memory_chunk', host, kw.get('instance'),
                      fresh=False)


class Guard:
    """What the manager's RPC server runs before every method."""

    def __init__(self, verifier: rpc_auth.Verifier, authorizer: Authorizer):
        self.verifier = verifier
        self.authorizer = authorizer

    @classmethod
    def from_conf(cls, conf, keys: rpc_auth.Keys, db,
                  nova_server) -> 'Guard':
        verifier = rpc_auth.Verifier.from_conf(
            conf, keys, rpc_auth.MANAGER, rpc_auth.manager_senders)
        return cls(verifier, Authorizer(conf, db, nova_server))

    def __call__(self, ctxt, method: str, kwargs: dict) -> None:
        sender = self.verifier.verify(ctxt, method, kwargs)
        row = self.authorizer.check(sender, method, kwargs)
        if row is not None and method == 'commit_delta':
            setattr(ctxt, INSTANCE_ROW, row)
