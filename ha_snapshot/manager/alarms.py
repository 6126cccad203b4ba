"""Whether an alarm notification may start a recovery: Aodh is asked.

An alarm URL with its ``?secret=`` (or a captured Aodh trust token) is a
bearer credential: whoever holds it can post a notification again and
again, and before this check each replay after the recovery cooldown
restarted or rebuilt the server. With ``[recovery] alarm_verification =
aodh`` (or ``auto`` with [aodh] credentials) the manager asks Aodh about
the alarm the notification names and lets it count only if Aodh holds
that alarm, enabled, in state ``alarm``, with an action that posts to this
server's alarm URL, and the alarm entered that state after the server's
last recovery started. A replayed notification then causes nothing: the
alarm it names has not fired again. Whatever cannot be verified (Aodh
unreachable, an unknown alarm) is refused and logged: fail closed.

May import ha_snapshot.openstack and ha_snapshot.exception; the manager
calls :func:`verify`.
"""

import datetime
import urllib.parse

from oslo_log import log as logging
from oslo_utils import timeutils

from ha_snapshot import exception
from ha_snapshot.openstack import clients

LOG = logging.getLogger(__name__)


def mode(conf) -> str:
    """``aodh`` or ``none``: what ``alarm_verification`` means here."""
    chosen = conf.recovery.alarm_verification
    if chosen == 'auto':
        return 'aodh' if conf.aodh.auth_type else 'none'
    return chosen


def _posts_to(action: str, instance: str) -> bool:
    """Whether an Aodh alarm action posts to ``instance``'s alarm URL."""
    url = urllib.parse.urlsplit(action.split('+', 1)[-1]
                                if action.startswith('trust+') else action)
    return (url.scheme in ('http', 'https')
            and url.path.rstrip('/').endswith('/v1/alarms/%s' % instance))


def _when(value) -> datetime.datetime | None:
    if not value:
        return None
    try:
        return timeutils.normalize_time(timeutils.parse_isotime(value))
    except ValueError:
        return None


def _get_alarm(conf, alarm_id: str):
    """``GET /v2/alarms/ID`` from Aodh; the keystoneauth response."""
    opts = conf.aodh
    session = clients.connection(conf, 'aodh').session
    # NOTE: not through openstacksdk's alarm proxy: its version discovery
    # ends the endpoint in /v2 (a real Aodh's catalog URL has none), and
    # the path then doubled it. The unversioned root, then our path.
    base = opts.endpoint_override or session.get_endpoint(
        service_type='alarming', interface=opts.interface,
        region_name=opts.region_name)
    base = base.rstrip('/')
    if base.endswith('/v2'):
        base = base[:-len('/v2')]
    return session.get('%s/v2/alarms/%s' % (
        base, urllib.parse.quote(alarm_id, safe='')), raise_exc=False)


def verify(conf, instance: str, alarm: dict,
           last_recovery_at: datetime.datetime | None) -> str | None:
    """Why this notification may not start a recovery, or None.

    ``last_recovery_at``: when the instance's newest recovery started
    (naive UTC), None if it never had one.
    """
    if mode(conf) == 'none':
        LOG.warning('Instance %s: alarm %s accepted unverified ([recovery] '
                    'alarm_verification is none, or auto without [aodh] '
                    'credentials): a replayed notification cannot be told '
                    'from a real one', instance, alarm.get('alarm_id'))
        return None
    alarm_id = alarm.get('alarm_id')
    if not alarm_id:
        return 'the notification names no alarm_id to verify with Aodh'
    try:
        resp = _get_alarm(conf, alarm_id)
    except exception.ConfigurationError as e:
        return 'alarms cannot be verified: %s' % e
    except clients.API_ERRORS as e:
        return 'Aodh could not be asked about alarm %s: %s' % (
            alarm_id, clients.error_reason(e))
    if resp.status_code == 404:
        return 'Aodh has no alarm %s' % alarm_id
    if resp.status_code != 200:
        return 'Aodh answered %d about alarm %s' % (resp.status_code,
                                                     alarm_id)
    try:
        found = resp.json()
    except ValueError:
        return 'Aodh answered about alarm %s with no JSON' % alarm_id
    if not isinstance(found, dict):
        return 'Aodh answered about alarm %s with no alarm' % alarm_id
    if not any(isinstance(a, str) and _posts_to(a, instance)
               for a in found.get('alarm_actions') or ()):
        return ('alarm %s has no action posting to server %s\'s alarm URL'
                % (alarm_id, instance))
    if found.get('enabled') is False:
        return 'alarm %s is disabled in Aodh' % alarm_id
    if found.get('state') != 'alarm':
        return 'Aodh holds alarm %s in state %r, not "alarm"' % (
            alarm_id, found.get('state'))
    fired = _when(found.get('state_timestamp'))
    if fired is None:
        return 'Aodh gives no time for the state of alarm %s' % alarm_id
    if last_recovery_at is not None and fired <= last_recovery_at:
        return ('alarm %s entered "alarm" at %s, before the last recovery '
                'of server %s started (%s): a notification sent again, not '
                'a new alarm' % (alarm_id, fired.isoformat(), instance,
                                 last_recovery_at.isoformat()))
    return None
