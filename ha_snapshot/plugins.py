"""One stevedore plugin loaded by name, with one error when it cannot be.

The hypervisor drivers, storage backends, fencing drivers and recovery
actions are each one plugin chosen by configuration: :func:`load` finds
it, builds it if asked, and turns stevedore's many failure types (no such
entry point, an import error, a constructor raising) into the caller's
own "not found" error naming the cause. An error of the project's own
hierarchy raised by the plugin's constructor (a configuration error)
passes as it is.

May import stevedore and ha_snapshot.exception.
"""

from collections import abc

from stevedore import driver as stevedore_driver

from ha_snapshot import exception


def load(namespace: str, name: str, not_found: abc.Callable, *,
         args: tuple = (), invoke: bool = True):
    """The plugin ``name`` of ``namespace``: built with ``args`` (or its
    class, when not ``invoke``). ``not_found(reason)`` makes the exception
    raised when it cannot be loaded or built."""
    try:
        mgr = stevedore_driver.DriverManager(
            namespace, name, invoke_on_load=invoke, invoke_args=tuple(args))
    except exception.HaSnapshotException:
        raise
    except Exception as e:  # stevedore wraps load errors in many types
        cause = e.__cause__ or e
        raise not_found('%s: %s' % (type(cause).__name__, cause)) from e
    return mgr.driver
