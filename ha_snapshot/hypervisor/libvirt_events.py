"""The libvirt event loop (one per process, on a thread of its own) and
the mapping of libvirt domain events onto the driver contract's names.

libvirt delivers domain events, and notices a closed connection, only in
a process that registered an event loop implementation before it opened
its connections and that keeps running that loop. libvirt's own default
implementation runs here on a plain thread (no eventlet); callbacks are
called on that thread and must return quickly: the driver only queues
them.

May import ha_snapshot.hypervisor.base; libvirt-python is passed in.
"""

import threading
import time

from oslo_log import log as logging

from ha_snapshot.hypervisor import base

LOG = logging.getLogger(__name__)

# Event kinds the libvirt driver emits that are not QMP's names: a domain
# stopped for a reason that is not a failure (migrated away, saved), and
# the ends of backup jobs (used by the driver itself).
DOMAIN_STOPPED = 'DOMAIN_STOPPED'
DOMAIN_STARTED = 'DOMAIN_STARTED'
DOMAIN_SUSPENDED = 'DOMAIN_SUSPENDED'
DOMAIN_UNDEFINED = 'DOMAIN_UNDEFINED'
DOMAIN_DEFINED = 'DOMAIN_DEFINED'
JOB_COMPLETED = 'JOB_COMPLETED'

_lock = threading.Lock()
_thread = None


def ensure_loop(libvirt) -> None:
    """Register libvirt's default event loop and run it, once."""
    global _thread
    with _lock:
        if _thread is not None:
            return
        libvirt.virEventRegisterDefaultImpl()
        _thread = threading.Thread(target=_run, args=(libvirt,),
                                   name='libvirt-events', daemon=True)
        _thread.start()


def _run(libvirt) -> None:
    while True:
        try:
            libvirt.virEventRunDefaultImpl()
        except Exception:
            LOG.exception('libvirt event loop iteration failed')
            time.sleep(1)


def lifecycle(libvirt, event: int, detail: int) -> tuple:
    """(kind, data) for a VIR_DOMAIN_EVENT_ID_LIFECYCLE event.

    The kinds the health monitor treats as abnormal are the contract's
    (base.PROCESS_EXITED, SHUTDOWN, STOP, GUEST_PANICKED); a domain
    migrated away, saved or reverted gets a kind of its own.
    """
    lv = libvirt
    if event == lv.VIR_DOMAIN_EVENT_STOPPED:
        names = {lv.VIR_DOMAIN_EVENT_STOPPED_SHUTDOWN: 'shutdown',
                 lv.VIR_DOMAIN_EVENT_STOPPED_DESTROYED: 'destroyed',
                 lv.VIR_DOMAIN_EVENT_STOPPED_CRASHED: 'crashed',
                 lv.VIR_DOMAIN_EVENT_STOPPED_MIGRATED: 'migrated',
                 lv.VIR_DOMAIN_EVENT_STOPPED_SAVED: 'saved',
                 lv.VIR_DOMAIN_EVENT_STOPPED_FAILED: 'failed',
                 lv.VIR_DOMAIN_EVENT_STOPPED_FROM_SNAPSHOT: 'from-snapshot'}
        reason = names.get(detail, 'detail %d' % detail)
        if reason in ('migrated', 'saved', 'from-snapshot'):
            return DOMAIN_STOPPED, {'reason': reason}
        return base.PROCESS_EXITED, {'reason': reason}
    if event == lv.VIR_DOMAIN_EVENT_SHUTDOWN:
        return 'SHUTDOWN', {
            'guest': detail != lv.VIR_DOMAIN_EVENT_SHUTDOWN_HOST,
            'reason': {lv.VIR_DOMAIN_EVENT_SHUTDOWN_GUEST: 'guest',
                       lv.VIR_DOMAIN_EVENT_SHUTDOWN_HOST: 'host'}.get(
                           detail, 'finished')}
    if event == lv.VIR_DOMAIN_EVENT_CRASHED:
        return 'GUEST_PANICKED', {'detail': detail}
    if event == lv.VIR_DOMAIN_EVENT_SUSPENDED:
        names = {lv.VIR_DOMAIN_EVENT_SUSPENDED_PAUSED: 'paused',
                 lv.VIR_DOMAIN_EVENT_SUSPENDED_IOERROR: 'ioerror',
                 lv.VIR_DOMAIN_EVENT_SUSPENDED_WATCHDOG: 'watchdog',
                 lv.VIR_DOMAIN_EVENT_SUSPENDED_API_ERROR: 'api-error'}
        if detail in names:
            return 'STOP', {'reason': names[detail]}
        return DOMAIN_SUSPENDED, {'detail': detail}
    if event == lv.VIR_DOMAIN_EVENT_RESUMED:
        return 'RESUME', {'detail': detail}
    if event == lv.VIR_DOMAIN_EVENT_STARTED:
        return DOMAIN_STARTED, {'detail': detail}
    if event == lv.VIR_DOMAIN_EVENT_UNDEFINED:
        return DOMAIN_UNDEFINED, {'detail': detail}
    if event == lv.VIR_DOMAIN_EVENT_DEFINED:
        return DOMAIN_DEFINED, {'detail': detail}
    return 'LIFECYCLE_%d' % event, {'detail': detail}


def io_error(src_path: str, dev_alias: str, action: int,
             reason: str) -> tuple:
    """(kind, data) for a VIR_DOMAIN_EVENT_ID_IO_ERROR_REASON event."""
    return 'BLOCK_IO_ERROR', {'device': dev_alias, 'path': src_path,
                              'action': action, 'reason': reason}
