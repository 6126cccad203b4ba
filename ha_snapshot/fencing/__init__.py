"""Fencing drivers: make sure a failed compute host cannot run anything.

``get_driver(conf)`` loads the driver ``[host_monitor] fencing_driver``
names from the stevedore namespace ``ha_snapshot.fencing``; any load
failure becomes one FencingDriverNotFound naming the driver and the
cause. The contract is :mod:`ha_snapshot.fencing.base`; drivers live in
``impl_<name>.py``.
"""

from stevedore import driver as stevedore_driver

from ha_snapshot.conf import host_monitor as host_monitor_conf
from ha_snapshot import exception
from ha_snapshot.fencing import base

NAMESPACE = 'ha_snapshot.fencing'


def get_driver(conf, name: str | None = None) -> base.FencingDriver:
    host_monitor_conf.register_opts(conf)
    name = name or conf.host_monitor.fencing_driver
    try:
        mgr = stevedore_driver.DriverManager(
            NAMESPACE, name, invoke_on_load=True, invoke_args=(conf,))
    except exception.HaSnapshotException:
        raise
    except Exception as e:  # stevedore wraps load errors in many types
        cause = e.__cause__ or e
        raise exception.FencingDriverNotFound(
            name=name, reason='%s: %s' % (type(cause).__name__, cause))
    return mgr.driver
