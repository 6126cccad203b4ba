"""Hypervisor drivers: live snapshots and commits of a VM's disks.

``get_driver(conf, name)`` loads the driver called ``name`` (the agent
passes ``[agent] hypervisor``) from the stevedore namespace
``ha_snapshot.hypervisor``; any load failure becomes one
HypervisorDriverNotFound naming the driver and the cause. The contract is
:mod:`ha_snapshot.hypervisor.base`; drivers live in ``impl_<name>.py``.
"""

from ha_snapshot.conf import hypervisor as hypervisor_conf
from ha_snapshot.hypervisor import base
from ha_snapshot import plugins

NAMESPACE = 'ha_snapshot.hypervisor'


def get_driver(conf, name: str) -> base.HypervisorDriver:
    # NOTE: drivers read [qemu]; registering again is a no-op.
    hypervisor_conf.register_opts(conf)
    return plugins.load(
        NAMESPACE, name, args=(conf,),
        not_found=lambda reason: base.HypervisorDriverNotFound(
            name=name, reason=reason))
