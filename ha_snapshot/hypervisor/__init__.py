"""Hypervisor drivers: live snapshots and commits of a VM's disks.

``get_driver(conf, name)`` loads the driver called ``name`` (the agent
passes ``[agent] hypervisor``) from the stevedore namespace
``ha_snapshot.hypervisor``; any load failure becomes one
HypervisorDriverNotFound naming the driver and the cause. The contract is
:mod:`ha_snapshot.hypervisor.base`; drivers live in ``impl_<name>.py``.
"""

from stevedore import driver as stevedore_driver

from ha_snapshot.conf import hypervisor as hypervisor_conf
from ha_snapshot import exception
from ha_snapshot.hypervisor import base

NAMESPACE = 'ha_snapshot.hypervisor'


def get_driver(conf, name: str) -> base.HypervisorDriver:
    # NOTE: drivers read [qemu]; registering again is a no-op.
    hypervisor_conf.register_opts(conf)
    try:
        mgr = stevedore_driver.DriverManager(
            NAMESPACE, name, invoke_on_load=True, invoke_args=(conf,))
    except exception.HaSnapshotException:
        raise
    except Exception as e:  # stevedore wraps load errors in many types
        cause = e.__cause__ or e
        raise base.HypervisorDriverNotFound(
            name=name, reason='%s: %s' % (type(cause).__name__, cause))
    return mgr.driver
