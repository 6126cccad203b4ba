"""Client side of the agent's RPC API (what the manager calls).

API version history:

* 1.0 - Initial version: protect, unprotect, restart.
* 1.1 - Add rebaseline: after a Nova rebuild replaced the disk with an
        image of a restore point, track the new disk and ship increments
        on top of that restore point.
* 1.2 - restart takes ``recovery``: a second restart for the same
        recovery (a manager replica took it over) does not restart the VM
        the first one started.
* 1.3 - rebaseline takes ``project`` and ``spec``: an agent that does
        not protect the instance yet (the new host of an evacuated server)
        starts protecting it on the restore point.

The manager signs every message with the key of the host it is for
(ha_snapshot/rpc_auth.py): an agent obeys only those.
"""

import oslo_messaging as messaging

from ha_snapshot import protection_spec
from ha_snapshot import rpc
from ha_snapshot import rpc_auth

VERSION = '1.3'


class AgentAPI:

    def __init__(self, transport, timeout: int | None = None,
                 version_cap: str | None = None,
                 signer: rpc_auth.Signer | None = None):
        """``signer``: the manager's (its master keys); None signs with
        this process's ephemeral key (the demo, tests)."""
        self.client = rpc.get_client(transport, rpc.AGENT_TOPIC, VERSION,
                                     version_cap=version_cap, timeout=timeout)
        self.signer = signer or rpc_auth.Signer(rpc_auth.MANAGER,
                                                rpc_auth.Keys.ephemeral())

    def _context(self, host, method, **kwargs):
        return rpc.signed_context(self.signer, rpc_auth.agent_audience(host),
                                  method, kwargs)

    def protect(self, host: str, instance: str, project: str,
                spec: 'protection_spec.ProtectionSpec | dict') -> None:
        """Start protecting ``instance`` on ``host`` (cast).

        ``spec`` goes as its JSON object; one given as a dict is checked
        first: a key the agent would refuse raises InvalidProtectionSpec
        here, not in the agent's log only.
        """
        spec = protection_spec.ProtectionSpec.from_dict(spec).to_dict()
        cctxt = self.client.prepare(server=host, version='1.0')
        kwargs = dict(instance=instance, project=project, spec=spec)
        cctxt.cast(self._context(host, 'protect', **kwargs), 'protect',
                   **kwargs)

    def unprotect(self, host: str, instance: str) -> None:
        cctxt = self.client.prepare(server=host, version='1.0')
        cctxt.cast(self._context(host, 'unprotect', instance=instance),
                   'unprotect', instance=instance)

    def restart(self, host: str, instance: str, restore_point: str,
                timeout: int, recovery: str | None = None) -> dict:
        """Restart the VM on ``restore_point``; returns when it runs.
        ``recovery``: the recovery asking; the agent restarts a VM once
        per recovery (an agent older than 1.2 is asked without it)."""
        kwargs = dict(instance=instance, restore_point=restore_point)
        version = '1.0'
        if recovery is not None and self.client.can_send_version('1.2'):
            kwargs['recovery'] = recovery
            version = '1.2'
        cctxt = self.client.prepare(server=host, version=version,
                                    timeout=timeout)
        try:
            return cctxt.call(self._context(host, 'restart', **kwargs),
                              'restart', **kwargs)
        except (messaging.RemoteError, messaging.UnsupportedVersion) as e:
            # NOTE: a remote UnsupportedVersion is a RemoteError on a real
            # broker (its module is not an allowed one), itself in-process.
            if version == '1.0' or getattr(
                    e, 'exc_type', 'UnsupportedVersion') != (
                    'UnsupportedVersion'):
                raise
        kwargs.pop('recovery')
        cctxt = self.client.prepare(server=host, version='1.0',
                                    timeout=timeout)
        return cctxt.call(self._context(host, 'restart', **kwargs),
                          'restart', **kwargs)

    def rebaseline(self, host: str, instance: str, restore_point: str,
                   timeout: int | None = None, *, project: str | None = None,
                   spec=None) -> dict:
        """The server's disk now holds ``restore_point``: protect it from
        there (call). Returns {"instance", "restore_point", "driver",
        "full"}: full is true when the agent must send the whole disk
        again (it made a newer restore point durable meanwhile).
        ``project`` and ``spec`` (a ProtectionSpec): what an agent that
        does not protect the instance yet needs to start (1.3)."""
        kwargs = dict(instance=instance, restore_point=restore_point)
        version = '1.1'
        if spec is not None:
            kwargs['project'] = project
            kwargs['spec'] = protection_spec.ProtectionSpec.from_dict(
                spec).to_dict()
            version = '1.3'
        cctxt = self.client.prepare(server=host, version=version,
                                    timeout=timeout)
        return cctxt.call(self._context(host, 'rebaseline', **kwargs),
                          'rebaseline', **kwargs)
