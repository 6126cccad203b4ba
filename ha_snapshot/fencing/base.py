"""The contract of a fencing driver.

A driver is built with the manager's ``conf`` (and, for tests, a
``connect`` callable that makes the openstacksdk connection of a client
group, ha_snapshot.openstack.clients.connection by default). The host
monitor calls it only for a host it has confirmed failed, from one
thread at a time.

Guarantees a driver gives:

* :meth:`FencingDriver.fence` returns only once the host cannot run
  servers any more *as far as this driver can make sure*, and returns a
  sentence saying what was done (recorded as the failure's ``result``);
  it raises :class:`~ha_snapshot.exception.FencingError` naming the host
  and the cause otherwise. Fencing a host already fenced succeeds.
* :meth:`FencingDriver.check` refuses a configuration the driver
  cannot work with, before any host fails.
* :meth:`FencingDriver.powered_off` answers, without changing anything,
  whether the driver positively knows the host is off (a BMC reporting
  chassis power off); False when it cannot tell. The monitor may then
  take a silent host for failed before Nova notices.
"""

from ha_snapshot.openstack import clients


class FencingDriver:
    """Base class; drivers set ``name`` and implement :meth:`fence`."""

    name = 'base'

    def __init__(self, conf, *, connect=clients.connection):
        self.conf = conf
        self._connect = connect

    def fence(self, host: str, service) -> str:
        """Fence ``host``; ``service`` is Nova's compute service record
        of it as last listed (an openstacksdk compute Service)."""
        raise NotImplementedError

    def powered_off(self, host: str) -> bool:
        return False

    def check(self) -> None:
        """Raise ConfigurationError naming the option at fault if this
        driver cannot work as configured (called once at start, so that
        a bad setting shows then, not at the first failed host)."""
