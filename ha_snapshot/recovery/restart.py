"""``restart``: bring a failed local QEMU VM back on its restore point.

The agent on the instance's host does the work (it owns the VM): it makes
sure the failed QEMU is gone, fetches the restore point from the manager
chunk by chunk (each checked against its sha256), starts the VM on it and
resumes protection from that restore point without resending it.
With ``[agent] live_restore`` the VM runs before the data is back and the
agent answers once the stream has completed (ha_snapshot/agent/
live_restore.py); its answer carries ``recover_seconds`` (until the guest
ran) and ``restored_seconds`` (until the disk stood alone).
"""

from oslo_log import log as logging

LOG = logging.getLogger(__name__)


class RestartAction:

    name = 'restart'

    def __init__(self, conf, agent_api=None):
        self.conf = conf
        self.agent_api = agent_api

    def recover(self, instance, restore_point: str, progress) -> dict:
        progress('restart-on-%s' % instance.host)
        # NOTE: by recovery: a replica taking this recovery over after the
        # restart gets the VM the first one started, not another restart.
        result = self.agent_api.restart(
            instance.host, instance.uuid, restore_point,
            timeout=self.conf.recovery.timeout,
            recovery=getattr(progress, 'recovery_id', None))
        progress('restarted')
        # NOTE: agents of before live restore answer no timings.
        timings = result if isinstance(result, dict) else {}
        LOG.info('Instance %s restarted on %s from restore point %s '
                 '(%s: running after %s s, restored after %s s)',
                 instance.uuid, instance.host, restore_point,
                 'live restore' if timings.get('live') else 'full restore',
                 timings.get('recover_seconds', '?'),
                 timings.get('restored_seconds', '?'))
        return result
