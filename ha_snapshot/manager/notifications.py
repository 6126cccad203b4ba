"""The Nova hook: Nova's versioned notifications start and stop protection.

The manager listens on ``versioned_notifications`` (exchange ``nova``)
with a notification listener (threading executor, listener pool
``ha-snapshot-manager``, so that several managers share the stream):

* ``instance.create.end``: protect the server if it opts in (server
  metadata or flavor extra spec ``ha_snapshot:protect=true``, or ``[manager]
  protect_all``): record it and cast ``protect`` to the agent on the
  payload's ``host``.
* ``instance.delete.end``: stop protecting; restore points stay until
  retention removes them.
* ``instance.shutdown.end``, ``instance.power_off.end``: pause (reports
  from the health monitor about a server Nova stopped start nothing);
  ``instance.power_on.end``: resume. In Nova's order (the notification's
  timestamp): an event older than one already applied to the server is
  skipped, whichever thread or manager replica handles it.
* ``instance.rebuild.end``: the disk was replaced: re-baseline (a full
  delta on top of the restore points already held, no alarm). On another
  host than the one the server was protected on (Nova's API says so: an
  evacuation's payload still names the dead source host), someone else
  (Masakari, an operator) evacuated it and it runs its stale base image:
  an ``evacuate`` recovery restores its newest restore point and moves
  its protection (``[host_monitor] restore_foreign_evacuations``); a
  rebuild that the manager's own recoveries cause changes nothing.
* ``instance.live_migration_post.end``: the server moved: protect it from
  its new host.

Payloads are Nova's (``nova_object.name``, ``nova_object.data``). A
malformed or unknown notification is logged with the reason and dropped;
the listener never stops on one.
"""

import datetime

from oslo_log import log as logging
import oslo_messaging as messaging
from oslo_utils import uuidutils

from ha_snapshot.db import events
from ha_snapshot import exception
from ha_snapshot.manager import recovery as recovery_mod
from ha_snapshot import protection_spec
from ha_snapshot import statuses

LOG = logging.getLogger(__name__)
Status = statuses.InstanceStatus

OPT_IN_KEY = 'ha_snapshot:protect'
QUIESCE_KEY = 'ha_snapshot:quiesce'
EVENTS = ('instance.create.end', 'instance.delete.end',
          'instance.shutdown.end', 'instance.power_off.end',
          'instance.power_on.end', 'instance.rebuild.end',
          'instance.live_migration_post.end')


BadNotification = exception.BadNotification


def _truthy(value) -> bool:
    return str(value).strip().lower() in ('true', '1', 'yes', 'on')


def parse(event_type: str, payload) -> dict:
    """The fields we use from a Nova instance payload, checked."""
    def bad(reason):
        return BadNotification(event_type=event_type, reason=reason)
    if not isinstance(payload, dict) or not isinstance(
            payload.get('nova_object.data'), dict):
        raise bad('payload has no nova_object.data')
    data = payload['nova_object.data']
    uuid = data.get('uuid')
    if not (isinstance(uuid, str) and uuidutils.is_uuid_like(uuid)):
        raise bad('uuid %r is not a UUID' % (uuid,))
    host = data.get('host')
    if host is not None and not isinstance(host, str):
        raise bad('host %r is not a string' % (host,))
    project = data.get('tenant_id')
    if not isinstance(project, str) or not project:
        raise bad('tenant_id missing')
    metadata = data.get('metadata') or {}
    flavor = (data.get('flavor') or {}).get('nova_object.data') or {}
    extra_specs = flavor.get('extra_specs') or {}
    if not isinstance(metadata, dict) or not isinstance(extra_specs, dict):
        raise bad('metadata or flavor extra_specs is not a dict')
    return {'uuid': uuid, 'host': host, 'project': project,
            'metadata': metadata, 'extra_specs': extra_specs,
            'name': data.get('display_name'), 'state': data.get('state')}


def event_time(metadata) -> datetime.datetime:
    """When Nova sent a notification (its ``timestamp``, UTC), to order
    the events of one server; the time it arrived if it has none."""
    text = (metadata or {}).get('timestamp') if isinstance(
        metadata, dict) else None
    if isinstance(text, str):
        try:
            when = datetime.datetime.fromisoformat(text)
        except ValueError:
            when = None
        if when is not None:
            if when.tzinfo is not None:
                when = when.astimezone(datetime.timezone.utc).replace(
                    tzinfo=None)
            return when
    return datetime.datetime.now(datetime.timezone.utc).replace(tzinfo=None)


def protect_server(conf, db, agent_api, server: dict,
                   rebaseline: bool = False, policy: str | None = None) -> str:
    """Record a Nova server and cast ``protect`` to the agent on its host.

    ``server`` as :func:`parse` returns it (``uuid``, ``host``,
    ``project``, ``name``). The one way a server starts being protected:
    Nova's notifications and the API's protect (the manager's RPC) both
    come here. ``policy``, or else the one recorded for the server (an
    operator's choice outlives a rebuild or a move), goes to the agent in
    the spec; without either the agent uses its [policy] name.
    """
    if not server['host']:
        raise BadNotification(event_type='protect', reason='server %s '
                              'has no host' % server['uuid'])
    db.create_instance(server['uuid'], server['project'],
                       host=server['host'], status=Status.PROTECTING,
                       driver=conf.agent.hypervisor)
    if policy is not None:
        row = db.update_instance(server['uuid'], host=server['host'],
                                 policy=policy)
    else:
        row = db.update_instance(server['uuid'], host=server['host'])
    if rebaseline:
        agent_api.unprotect(server['host'], server['uuid'])
    spec = protection_spec.ProtectionSpec(
        nova=True, uuid=server['uuid'], name=server['name'],
        policy=row.policy or None, **quiesce_settings(server))
    agent_api.protect(server['host'], server['uuid'], server['project'],
                      spec)
    return 'protect cast to %s' % server['host']


def quiesce_settings(server: dict) -> dict:
    """The spec's quiesce keys from the server's metadata:
    ``ha_snapshot:quiesce`` ('always', 'never' or seconds), and Nova's
    image properties ``os_require_quiesce`` / ``hw_qemu_guest_agent`` when
    they are set on the server as metadata (a notification carries no
    image properties). A bad value is logged and left out."""
    metadata = server.get('metadata') or {}
    out = {}
    value = metadata.get(QUIESCE_KEY)
    if value is not None:
        try:
            protection_spec.quiesce_interval(value, 0)
            out['quiesce'] = str(value).strip().lower()
        except exception.InvalidProtectionSpec as e:
            LOG.warning('Server %s: metadata %s ignored: %s',
                        server['uuid'], QUIESCE_KEY, e)
    if 'os_require_quiesce' in metadata:
        out['require_quiesce'] = _truthy(metadata['os_require_quiesce'])
    if 'hw_qemu_guest_agent' in metadata:
        out['guest_agent'] = _truthy(metadata['hw_qemu_guest_agent'])
    return out


class NovaNotificationEndpoint:

    filter_rule = messaging.NotificationFilter(
        event_type='^(%s)$' % '|'.join(e.replace('.', r'\.')
                                       for e in EVENTS))

    def __init__(self, conf, db, agent_api, locate=None, recovery=None):
        """``locate(uuid)`` -> {"host", "project", ...}: where Nova runs a
        server (ha_snapshot.openstack.servers.locate), asked before a
        notification may place a server on a host; None trusts the
        payload (no [nova] credentials). ``recovery``: the recovery
        engine, which restores servers someone else evacuated."""
        self.conf = conf
        self.db = db
        self.agent_api = agent_api
        self.locate = locate
        self.recovery = recovery

    def info(self, ctxt, publisher_id, event_type, payload, metadata):
        try:
            server = parse(event_type, payload)
            server['event_at'] = event_time(metadata)
            handler = getattr(self, '_' + event_type.split('.', 1)[1]
                              .rsplit('.', 1)[0])
            result = handler(server)
            LOG.info('%s for %s: %s', event_type, server['uuid'], result)
        except exception.HaSnapshotException as e:
            LOG.warning('%s', e)
        except Exception:
            LOG.exception('Notification %s dropped: unexpected error',
                          event_type)
        # NOTE: None acknowledges: a bad notification is never requeued.
        return None

    def _opted_in(self, server) -> bool:
        return (self.conf.manager.protect_all
                or _truthy(server['metadata'].get(OPT_IN_KEY, ''))
                or _truthy(server['extra_specs'].get(OPT_IN_KEY, '')))

    def _protect(self, server, rebaseline=False) -> str:
        return protect_server(self.conf, self.db, self.agent_api,
                              self._placed(server), rebaseline=rebaseline)

    def _placed(self, server) -> dict:
        """``server`` on the host Nova itself says it runs on.

        A notification is only as trustworthy as whoever could publish it
        (every nova-compute can): a forged create.end, rebuild.end or
        live_migration naming host H for a protected server would let H's
        agent register it and make its restore points. So the host and
        project are Nova's API's answer, not the payload's. That answer
        also corrects an evacuation's notifications, whose payloads still
        name the dead source host.
        """
        if self.locate is None:
            return server
        uuid = server['uuid']
        try:
            found = self.locate(uuid)
        except (exception.InstanceNotFound,
                exception.OpenStackError) as e:
            raise BadNotification(
                event_type='protect', reason='server %s not placed from a '
                'notification Nova cannot confirm (%s); protect it with '
                '"openstack ha protect %s" once Nova answers'
                % (uuid, e, uuid))
        if found['project'] != server['project']:
            raise BadNotification(
                event_type='protect', reason='server %s belongs to project '
                '%s in Nova, not %s as the notification says: ignored'
                % (uuid, found['project'], server['project']))
        if found['host'] != server['host']:
            LOG.warning('Server %s: the notification names host %s, Nova '
                        'runs it on %s: placed on %s', uuid, server['host'],
                        found['host'], found['host'])
        return dict(server, host=found['host'])

    def _known(self, server):
        try:
            row = self.db.get_instance(server['uuid'])
        except exception.InstanceNotFound:
            return None
        return None if row.status == Status.DELETED else row

    def _create(self, server) -> str:
        if not self._opted_in(server):
            return 'not protected (no %s=true)' % OPT_IN_KEY
        return self._protect(server)

    def _delete(self, server) -> str:
        row = self._known(server)
        if row is None:
            return 'not protected'
        self.db.mark_instance_deleted(server['uuid'])
        if row.host:
            self.agent_api.unprotect(row.host, server['uuid'])
        return 'protection stopped; restore points kept for retention'

    def _in_order(self, server, expected, status, done: str) -> str:
        """``status`` from ``expected``, unless a newer event of the
        server was applied already (db/events.py)."""
        if self._known(server) is None:
            return 'not protected'
        outcome, now = events.apply(self.db, server['uuid'],
                                    server['event_at'], expected, status)
        if outcome == events.STALE:
            return ('skipped: a newer event of the server was applied '
                    '(it is %s)' % now)
        if outcome == events.NOT_APPLICABLE:
            return 'not %s: it is %s' % (done, now)
        return done

    def _pause(self, server) -> str:
        return self._in_order(server, (Status.PROTECTED, Status.PROTECTING),
                              Status.PAUSED, 'paused')

    _shutdown = _pause
    _power_off = _pause

    def _power_on(self, server) -> str:
        return self._in_order(server, Status.PAUSED, Status.PROTECTED,
                              'resumed')

    def _rebuild(self, server) -> str:
        row = self._known(server)
        if row is None:
            return self._create(server)
        if row.status == Status.RECOVERING:
            # NOTE: our own rebuild recovery ends with this notification;
            # the recovery re-baselines on the restore point it used, so a
            # protect here would only race it into a full resend.
            return 'rebuilt by a recovery; it re-baselines protection'
        placed = self._placed(server)
        if (placed['host'] != row.host and self.recovery is not None
                and self.conf.host_monitor.restore_foreign_evacuations
                and row.newest_restore_point_id is not None):
            return self._restore_evacuated(row, placed['host'])
        return self._protect(server, rebaseline=True) + ' (re-baseline)'

    def _restore_evacuated(self, row, host) -> str:
        reason = ('evacuated from %s to %s by someone else (Nova, Masakari, '
                  'an operator): its data restored' % (row.host, host))
        try:
            rec = self.recovery.request(row.uuid, None, reason,
                                        action=recovery_mod.EVACUATE)
        except exception.HaSnapshotException as e:
            LOG.error('Server %s was %s, but cannot be restored now: %s',
                      row.uuid, reason.split(':')[0], e)
            return 'evacuated; not restored: %s' % e
        return 'evacuated to %s; restoring its data (recovery %s)' % (
            host, rec.id)

    def _live_migration_post(self, server) -> str:
        row = self._known(server)
        if row is None:
            return 'not protected'
        server = self._placed(server)
        if row.host and row.host != server['host']:
            self.agent_api.unprotect(row.host, server['uuid'])
        return self._protect(server, rebaseline=True) + ' (moved)'


def get_listener(transport, conf, db, agent_api, locate=None,
                 recovery=None):
    targets = [messaging.Target(topic=t, exchange='nova')
               for t in conf.manager.notification_topics]
    return messaging.get_notification_listener(
        transport, targets,
        [NovaNotificationEndpoint(conf, db, agent_api, locate, recovery)],
        pool=conf.manager.notification_pool)
