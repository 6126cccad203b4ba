"""The libvirt driver's way to the guest agent, for quiesced backups.

:class:`LibvirtChannel` is a :class:`~ha_snapshot.hypervisor.quiesce.
Channel` over libvirt: ``virDomainFSFreeze`` / ``virDomainFSThaw``
(``fsFreeze`` / ``fsThaw``), the ping and the freeze status through
``libvirt_qemu.qemuAgentCommand`` (libvirt has no call for them), each
bounded by ``virDomainAgentSetResponseTimeout`` (whole seconds: libvirt's
own default waits for ever once its guest-sync answered). libvirt syncs
the channel itself before every command. The freeze covers only
``backupBegin`` (the checkpoint's instant): see libvirt_ops.backup.

May import the standard library, oslo.log, ha_snapshot.exception and
ha_snapshot.hypervisor.quiesce.
"""

import json
import math

from oslo_log import log as logging

from ha_snapshot import exception
from ha_snapshot.hypervisor import quiesce

LOG = logging.getLogger(__name__)

# NOTE: virDomainAgentResponseTimeoutValues: -1 is libvirt's default.
DEFAULT_TIMEOUT = -1


def _seconds(timeout: float) -> int:
    return max(1, int(math.ceil(timeout)))


class LibvirtChannel(quiesce.Channel):

    def __init__(self, lv, dom, vm: str):
        self.lv = lv
        self.dom = dom
        self.vm = vm

    def _call(self, command: str, timeout: float, func, *args):
        try:
            self.dom.agentSetResponseTimeout(_seconds(timeout), 0)
            return func(*args)
        except self.lv.libvirtError as e:
            if e.get_error_code() == getattr(
                    self.lv, 'VIR_ERR_AGENT_UNRESPONSIVE', None):
                raise exception.GuestAgentTimeout(vm=self.vm,
                                                  command=command,
                                                  timeout=_seconds(timeout))
            raise exception.GuestAgentError(vm=self.vm, command=command,
                                            reason=e)

    def _agent(self, command: str, timeout: float):
        import libvirt_qemu
        out = self._call(command, timeout, libvirt_qemu.qemuAgentCommand,
                         self.dom, json.dumps({'execute': command}),
                         _seconds(timeout), 0)
        try:
            return json.loads(out)['return']
        except (TypeError, ValueError, KeyError) as e:
            raise exception.GuestAgentError(
                vm=self.vm, command=command,
                reason='unexpected answer %r (%s)' % (out, e))

    def close(self) -> None:
        try:
            self.dom.agentSetResponseTimeout(DEFAULT_TIMEOUT, 0)
        except self.lv.libvirtError as e:
            LOG.debug('Domain %s: agent timeout not reset: %s', self.vm, e)

    def ping(self, timeout: float) -> None:
        self._agent('guest-ping', timeout)

    def freeze(self, timeout: float) -> int:
        return self._call('virDomainFSFreeze', timeout, self.dom.fsFreeze)

    def thaw(self, timeout: float) -> int:
        return self._call('virDomainFSThaw', timeout, self.dom.fsThaw)

    def status(self, timeout: float) -> str:
        return self._agent('guest-fsfreeze-status', timeout)

    def send_thaw(self) -> None:
        # NOTE: libvirt runs one agent command of a domain at a time: this
        # thaw starts once a hung freeze has timed out.
        try:
            self.dom.fsThaw()
        except self.lv.libvirtError as e:
            LOG.warning('Domain %s: thaw at the freeze bound: %s', self.vm,
                        e)


def around(lv, dom, vm: str, opts: quiesce.Options, require: bool):
    """What libvirt_ops.backup runs ``backupBegin`` through: inside a
    bounded freeze of the domain's guest."""
    channel = LibvirtChannel(lv, dom, vm)

    def run(begin):
        return quiesce.quiesced(vm, channel, begin, opts, require)
    return run
