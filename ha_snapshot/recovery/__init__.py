"""Recovery actions, loaded by name from the ``ha_snapshot.recovery``
namespace. An action has ``recover(instance, restore_point, progress)``:
``instance`` is the database row, ``restore_point`` the id to recover to,
``progress(step)`` records the step it is at. It raises on failure and must
be safe to run again for the same instance (a manager restarted mid-way
runs it again).
"""

from stevedore import driver as stevedore_driver

from ha_snapshot import exception

NAMESPACE = 'ha_snapshot.recovery'


def load(name: str, conf, **kwargs):
    try:
        return stevedore_driver.DriverManager(
            NAMESPACE, name, invoke_on_load=True, invoke_args=(conf,),
            invoke_kwds=kwargs).driver
    except Exception as e:
        raise exception.ConfigurationError(
            reason='recovery action %r cannot be loaded from %s: %s'
            % (name, NAMESPACE, e.__cause__ or e))
