"""/v1/alarms/{server_id}: Aodh's alarm actions.

Aodh's rest notifier posts the alarm's transition (``previous`` ->
``current``). Only a transition into ``alarm`` is reported to the manager,
whose recovery state machine decides (a recovery, or nothing during a
running recovery or its cooldown: flapping alarms start one recovery).
Aodh repeats notifications while an alarm stays in ``alarm`` when the
alarm has ``repeat_actions``; those (``previous == current == alarm``) are
dropped here as duplicates.

Two ways in, one of them required (401 otherwise, logged, nothing
reported):

* a Keystone token (Aodh ``trust+http://``), checked by keystonemiddleware
  and then by policy ``ha_snapshot:alarms:create`` on the server's project;
* ``?secret=HEX``, the HMAC-SHA256 of the server id under ``[api]
  alarm_secret_key``, compared in constant time. It authorises alarms
  about that one server only.
"""

from oslo_log import log as logging
import webob.exc

from ha_snapshot.api.handlers import server
from ha_snapshot.api.schemas import alarm as schema
from ha_snapshot.api import secret as alarm_secret
from ha_snapshot.api import util
from ha_snapshot import exception
from ha_snapshot.policies import alarm as alarm_policies

LOG = logging.getLogger(__name__)

# NOTE: what the manager gets of Aodh's body (it goes into the recovery
# report's details, so keep it small and known).
FIELDS = ('alarm_name', 'alarm_id', 'severity', 'previous', 'current',
          'reason', 'reason_data')


def _unauthorized(req, server_id, why):
    LOG.warning('Alarm for server %s from %s refused: %s', server_id,
                req.client_addr, why)
    return util.http_error(webob.exc.HTTPUnauthorized,
                           'Alarm refused: %s.' % why,
                           'ha_snapshot.alarm.unauthorized')


def _authenticate(req, server_id):
    """The server's row, if the request may report alarms about it."""
    st = util.state(req)
    ctx = util.context(req)
    secrets = req.GET.getall('secret')
    if secrets:
        key = st.conf.api.alarm_secret_key
        if not key:
            raise _unauthorized(req, server_id, 'alarm secrets are disabled '
                                '([api] alarm_secret_key is not set); use '
                                'a Keystone token (Aodh trust+http)')
        if len(secrets) != 1 or not alarm_secret.is_valid(
                key, server_id, secrets[0]):
            raise _unauthorized(req, server_id, 'wrong secret')
        util.require_uuid(server_id, 'server')
        try:
            return st.db.get_instance(server_id)
        except exception.InstanceNotFound:
            raise util.http_error(
                webob.exc.HTTPNotFound,
                'Server %s is not protected.' % server_id,
                'ha_snapshot.server.not_found')
    if ctx.user_id is None:
        raise _unauthorized(req, server_id, 'it carries neither a valid '
                            'Keystone token nor a secret')
    return server.find_server(req, server_id, alarm_policies.CREATE)


def decide(alarm: dict) -> str | None:
    """Why this notification is dropped, or None to report it."""
    if alarm['current'] != 'alarm':
        return 'ignored: alarm %s is now %r, not "alarm"' % (
            alarm['alarm_id'], alarm['current'])
    if alarm.get('previous') == 'alarm':
        return ('duplicate: alarm %s was already in "alarm" (a repeated '
                'notification)' % alarm['alarm_id'])
    return None


@util.wsgify
def post_alarm(req):
    server_id = util.path_item(req.environ, 'server_id')
    row = _authenticate(req, server_id)
    body = util.extract_json(req, schema.NOTIFICATION)
    alarm = {k: body.get(k) for k in FIELDS}
    result = decide(alarm)
    if result is None:
        result = util.state(req).manager_api.alarm(row.uuid, alarm)
    LOG.info('Alarm %s (%s) for server %s: %s -> %s: %s',
             alarm['alarm_name'], alarm['alarm_id'], row.uuid,
             alarm['previous'], alarm['current'], result)
    return util.json_response(req, {'result': result}, status=202)
