"""Fencing drivers: make sure a failed compute host cannot run anything.

``get_driver(conf)`` loads the driver ``[host_monitor] fencing_driver``
names from the stevedore namespace ``ha_snapshot.fencing``; any load
failure becomes one FencingDriverNotFound naming the driver and the
cause. The contract is :mod:`ha_snapshot.fencing.base`; drivers live in
``impl_<name>.py``.
"""

from ha_snapshot.conf import host_monitor as host_monitor_conf
from ha_snapshot import exception
from ha_snapshot.fencing import base
from ha_snapshot import plugins

NAMESPACE = 'ha_snapshot.fencing'


def get_driver(conf, name: str | None = None) -> base.FencingDriver:
    host_monitor_conf.register_opts(conf)
    name = name or conf.host_monitor.fencing_driver
    return plugins.load(
        NAMESPACE, name, args=(conf,),
        not_found=lambda reason: exception.FencingDriverNotFound(
            name=name, reason=reason))
