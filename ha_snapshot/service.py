"""A daemon's life: start, reload on SIGHUP, stop cleanly on SIGTERM.

No eventlet and no forking: a service is an object with ``start()``,
``stop()`` and ``reload()``; :func:`run` starts it, waits in the main thread
for signals (the only thread Python delivers them to) and calls the right
method. ``start()`` must return once the service runs (its work happens in
its own threads); ``stop()`` must return once everything is stopped.
"""

import signal
import threading

from oslo_log import log as logging

from ha_snapshot import malloc

LOG = logging.getLogger(__name__)


class Service:

    name = 'service'

    def start(self) -> None:
        raise NotImplementedError

    def stop(self) -> None:
        raise NotImplementedError

    def reload(self) -> None:
        """Re-read what can change without a restart (SIGHUP)."""


def run(service: Service, conf=None) -> int:
    wake = threading.Event()
    pending = []

    def handler(signum, _frame):
        pending.append(signum)
        wake.set()

    previous = {s: signal.signal(s, handler)
                for s in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP)}
    # NOTE: days of deltas must not creep up in freed malloc memory.
    trimmer = malloc.setup(conf) if conf is not None else None
    try:
        service.start()
        LOG.info('%s started', service.name)
        while True:
            wake.wait()
            wake.clear()
            while pending:
                signum = pending.pop(0)
                if signum == signal.SIGHUP:
                    LOG.info('%s: SIGHUP, reloading', service.name)
                    if conf is not None:
                        conf.mutate_config_files()
                    service.reload()
                else:
                    LOG.info('%s: signal %d, stopping', service.name, signum)
                    service.stop()
                    LOG.info('%s stopped', service.name)
                    return 0
    finally:
        if trimmer is not None:
            trimmer.stop()
        for s, h in previous.items():
            signal.signal(s, h)
