"""Stopping the harness's processes: by pid file, a group at a time.

Used by :class:`tools.cloud.cloud.Cloud` and, from any other process, by
``python3 -m tools.cloud stop`` (only the run directory's pid files are
needed: it works after the harness itself was killed).
"""

import concurrent.futures
import os
import shutil

from tools.cloud import computes
from tools.cloud import procs

# NOTE: the reverse of the start order, a group at a time (the processes
# of one group in parallel: Nova's take seconds each to exit). ha-snapshot
# first; nova-compute before the conductor (it waits for the conductor at
# exit) and before libvirtd; the domains are destroyed with libvirtd. A
# compute host's processes are named NAME@HOST (tools/cloud/computes.py):
# the groups name them by NAME.
STOP_GROUPS = (
    ('ha-snapshot-agent', 'ha-snapshot-api', 'ha-snapshot-manager'),
    ('nova-compute',),
    ('libvirtd', 'virtlogd'),
    ('nova-scheduler', 'nova-conductor', 'nova-api', 'netstub', 'placement',
     'glance', 'keystone', 'aodh', 'aodh-listener', 'aodh-notifier'),
    ('swift-proxy', 'swift-object', 'swift-container', 'swift-account',
     'mariadb', 'rabbitmq', 'rabbitmq-epmd'),
)
STOP_ORDER = tuple(n for group in STOP_GROUPS for n in group)

def copy_tree(src, dst):
    try:
        shutil.copytree(src, dst, dirs_exist_ok=True)
    except OSError:
        pass


def running_supervisor(run_dir: str):
    return procs.ProcessTable(run_dir).process('harness')


def members(group, names) -> list:
    """The processes of ``names`` that belong to ``group``."""
    return [n for n in names if computes.base_name(n) in group]


def stop_run_dir(run_dir: str) -> list:
    """Stop every process recorded in ``run_dir``; the names stopped.

    Works from any process: pid files only (each compute host's domains
    are destroyed through its libvirtd's own pid files first), then kills
    what is left in the compute hosts' namespaces (privsep daemons).
    """
    table = procs.ProcessTable(run_dir)
    present = table.names()
    stopped = [n for n in present
               if n != 'harness' and table.process(n) is not None]
    groups = [members(g, present) for g in STOP_GROUPS]
    groups.append([n for n in present if computes.base_name(n)
                   not in STOP_ORDER and n != 'harness'])
    for group, names in zip(STOP_GROUPS + ((),), groups):
        if 'libvirtd' in group:
            for rec in computes.recorded_namespaces(run_dir):
                if os.path.isdir(rec.get('libvirt_dir') or ''):
                    _stop_libvirt_domains(rec['libvirt_dir'])
        stop_group(table, names)
    computes.sweep_namespaces(run_dir)
    return stopped


def stop_group(table, names) -> None:
    with concurrent.futures.ThreadPoolExecutor(max(1, len(names))) as pool:
        for f in [pool.submit(table.stop, n, stop_timeout(n))
                  for n in names]:
            f.result()


def stop_timeout(name: str) -> float:
    # NOTE: Nova's services wait for in-flight work, and nova-compute's
    # thread pool for good, after SIGTERM; nothing of theirs needs saving
    # at the end of a test run.
    return 10.0 if name.startswith('nova-') else 30.0


def _stop_libvirt_domains(libvirt_dir: str) -> None:
    from ha_snapshot.tests.fixtures import libvirt as libvirt_fx
    handle = libvirt_fx.Libvirtd(libvirt_dir)
    handle.libvirtd_pid = libvirt_fx._read_pid(handle.libvirtd_pidfile)
    handle.virtlogd_pid = libvirt_fx._read_pid(handle.virtlogd_pidfile)
    handle.stop()
