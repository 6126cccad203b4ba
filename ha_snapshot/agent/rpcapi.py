"""Client side of the agent's RPC API (what the manager calls).

API version history:

* 1.0 - Initial version: protect, unprotect, restart.
* 1.1 - Add rebaseline: after a Nova rebuild replaced the disk with an
        image of a restore point, track the new disk and ship increments
        on top of that restore point.
"""

from ha_snapshot import rpc

VERSION = '1.1'


class AgentAPI:

    def __init__(self, transport, timeout: int | None = None,
                 version_cap: str | None = None):
        self.client = rpc.get_client(transport, rpc.AGENT_TOPIC, VERSION,
                                     version_cap=version_cap, timeout=timeout)

    def protect(self, host: str, instance: str, project: str,
                spec: dict) -> None:
        """Start protecting ``instance`` on ``host`` (cast)."""
        cctxt = self.client.prepare(server=host, version='1.0')
        cctxt.cast(rpc.context(), 'protect', instance=instance,
                   project=project, spec=spec)

    def unprotect(self, host: str, instance: str) -> None:
        cctxt = self.client.prepare(server=host, version='1.0')
        cctxt.cast(rpc.context(), 'unprotect', instance=instance)

    def restart(self, host: str, instance: str, restore_point: str,
                timeout: int) -> dict:
        """Restart the VM on ``restore_point``; returns when it runs."""
        cctxt = self.client.prepare(server=host, version='1.0',
                                    timeout=timeout)
        return cctxt.call(rpc.context(), 'restart', instance=instance,
                          restore_point=restore_point)

    def rebaseline(self, host: str, instance: str, restore_point: str,
                   timeout: int | None = None) -> dict:
        """The server's disk now holds ``restore_point``: protect it from
        there (call). Returns {"instance", "restore_point", "driver",
        "full"}: full is true when the agent must send the whole disk
        again (it made a newer restore point durable meanwhile)."""
        cctxt = self.client.prepare(server=host, version='1.1',
                                    timeout=timeout)
        return cctxt.call(rpc.context(), 'rebaseline', instance=instance,
                          restore_point=restore_point)
