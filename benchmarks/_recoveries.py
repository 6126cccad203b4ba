"""Recoveries during a manager failover (not a benchmark itself).

Used by manager_failover.py: QEMU processes SIGKILLed so that their agent
reports them and a ``restart`` recovery runs, the manager replica to kill
SIGKILLed while it runs one of those recoveries, and afterwards, from the
database and the daemons' logs, how many recoveries ran, which were taken
over by another replica, how long each took and whether each one's action
(the agent's restart) ran exactly once.

The log lines read here are the daemons' own: a replica starting a
recovery (``Instance I: REASON; recovery R (ACTION, attempt N) ...``),
resuming one (``Instance I: resuming recovery R ...``) and ending it
(``Instance I: recovery R succeeded``); the agent restarting a VM
(``Instance I restarted from restore point P (pid N) by recovery R``) or
refusing a second run of the same recovery (``Instance I: recovery R
restarted it already``).
"""

import collections
import os
import re
import signal
import time

import psutil

import _common as c

from ha_snapshot.db import engine as db_engine

UUID = r'[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}'
STARTED = re.compile(r'Instance (%s): .*; recovery (%s) \((\w+), attempt'
                     % (UUID, UUID))
RESUMED = re.compile(r'Instance (%s): resuming recovery (%s)' % (UUID, UUID))
SUCCEEDED = re.compile(r'Instance (%s): recovery (%s) succeeded'
                       % (UUID, UUID))
RESTARTED = re.compile(r'Instance (%s) restarted from restore point (%s) '
                       r'\(pid \d+[^)]*\) by recovery (\S+)' % (UUID, UUID))
ALREADY = re.compile(r'Instance (%s): recovery (%s) restarted it already'
                     % (UUID, UUID))
ENDED = ('succeeded', 'failed')


class LogTail:
    """The complete lines a log file gained since the last read."""

    def __init__(self, path: str):
        self.path = path
        self.offset = os.path.getsize(path)
        self.rest = ''

    def read(self) -> str:
        with open(self.path, errors='replace') as f:
            f.seek(self.offset)
            text = f.read()
            self.offset = f.tell()
        text = self.rest + text
        cut = text.rfind('\n') + 1
        self.rest = text[cut:]
        return text[:cut]


def kill_vm(vm) -> float:
    """SIGKILL one VM's QEMU (a child of this process: reaped); when."""
    os.kill(vm.pid, signal.SIGKILL)
    try:
        os.waitpid(vm.pid, 0)
    except ChildProcessError:
        pass
    return time.time()


def _ended(db, killed) -> bool:
    """Every VM killed has a recovery and none runs any more."""
    for inst in killed:
        recs = db.list_recoveries(inst)
        if not recs or any(r.state not in ENDED for r in recs):
            return False
    return True


def restarting(state_dir: str):
    """Whether the agent (its ``[agent] state_dir``) is restarting an
    instance now: the restore point it fetches is being written in the
    instance's directory (a ``.ha-image-`` temporary file) or is there
    (``restored-<id>.qcow2``)."""
    def check(instance: str) -> bool:
        try:
            names = os.listdir(os.path.join(state_dir, instance))
        except FileNotFoundError:
            return False
        return any(n.startswith(('.ha-image-', 'restored-'))
                   for n in names)
    return check


def kill_during_recovery(db, replicas: dict, vms: dict, per_round: int,
                         rounds: int, round_timeout: float,
                         before_kill=None, busy=None) -> dict:
    """Kill ``per_round`` VMs (of ``vms``, {instance: VM}, in order) at a
    time until one of ``replicas`` ({host: scale.Daemon}) runs a recovery
    of one of them at the step where it asks the agent for the restart
    (``restart-on-HOST``) and, with ``busy`` (``busy(instance)``: see
    :func:`restarting`), the agent is at work on that restart; SIGKILL
    that replica right then. A recovery may be past that point before it
    is seen: then, once that round's
    recoveries ended (or after ``round_timeout``), another round. In the
    last round any recovery started and not ended will do; after
    ``rounds`` rounds without one, no replica is killed (``victim``
    None). ``before_kill()`` is called right before the SIGKILL.

    Returns {'victim': host, 'killed': {instance: kill time},
    'in_flight': [recovery ids the victim had started and not ended],
    'steps_at_kill': their (state, step), 'killed_at': monotonic time of
    the replica's SIGKILL, 'rounds': rounds used}.
    """
    tails = {h: LogTail(d.log_path) for h, d in replicas.items()}
    pending = list(vms)
    killed, found = {}, None
    used = 0
    runner = {}
    while found is None and used < rounds and pending:
        used += 1
        batch, pending = pending[:per_round], pending[per_round:]
        for inst in batch:
            killed[inst] = kill_vm(vms[inst])
        c.log('round %d: %d VMs SIGKILLed, waiting for a replica to run '
              'one of their recoveries', used, len(batch))
        last = used == rounds or not pending
        end = time.monotonic() + round_timeout
        next_db = 0.0
        while found is None and time.monotonic() < end:
            for host, tail in tails.items():
                runner.update((m.group(2), host)
                              for m in STARTED.finditer(tail.read())
                              if m.group(1) in killed)
            for rid in list(runner):
                r = db.get_recovery(rid)
                if r.state in ENDED:
                    continue
                if last or (r.state == 'running' and (
                        r.step or '').startswith('restart-on') and (
                        busy is None or busy(r.instance_uuid))):
                    found = rid
                    break
            now = time.monotonic()
            if found is None and now >= next_db:
                if _ended(db, batch):
                    break
                next_db = now + 0.25
            time.sleep(0.005)
    result = {'victim': None, 'killed': killed, 'in_flight': [],
              'steps_at_kill': [], 'killed_at': None, 'rounds': used}
    if found is None:
        return result
    victim = replicas[runner[found]]
    if before_kill is not None:
        before_kill()
    victim.proc.kill()
    result['killed_at'] = time.monotonic()
    victim.proc.wait()
    result['victim'] = runner[found]
    with open(victim.log_path, errors='replace') as f:
        mine = {m.group(2) for m in STARTED.finditer(f.read())}
    for inst in killed:
        for r in db.list_recoveries(inst):
            if r.state not in ENDED and r.id in mine:
                result['in_flight'].append(r.id)
                result['steps_at_kill'].append((r.state, r.step))
                c.log('recovery %s of %s in flight on %s at its SIGKILL '
                      '(state %s, step %s)', r.id, inst, victim.name,
                      r.state, r.step)
    return result


def wait_ended(db, killed, timeout: float) -> list:
    """Until every VM killed has a recovery and all ended; the instances
    still without an ended one after ``timeout`` seconds."""
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        if _ended(db, killed):
            return []
        time.sleep(0.25)
    return [i for i in killed if not _ended(db, [i])]


def qemu_count(qmp_paths: dict) -> dict:
    """{instance: QEMU processes running with its QMP socket path}."""
    counts = collections.Counter()
    for p in psutil.process_iter(['cmdline']):
        cmd = ' '.join(p.info['cmdline'] or ())
        for inst, path in qmp_paths.items():
            if path in cmd:
                counts[inst] += 1
    return {inst: counts[inst] for inst in qmp_paths}


def kill_restarted(qmp_paths, original_pids) -> None:
    """SIGKILL the VMs the agent started again (new pids, same QMP
    paths); the originals are stopped by the caller."""
    for p in psutil.process_iter(['cmdline']):
        cmd = ' '.join(p.info['cmdline'] or ())
        if p.pid not in original_pids and any(
                path in cmd for path in qmp_paths):
            try:
                p.kill()
            except psutil.NoSuchProcess:
                pass


def check(db, logs: dict, agent_log: str, killed: dict, in_flight,
          qemus: dict) -> dict:
    """The recovery figures of the run (see manager_failover.py)."""
    def read(path):
        with open(path, errors='replace') as f:
            return f.read()
    started, resumed, finished = {}, collections.defaultdict(set), {}
    for name, path in logs.items():
        text = read(path)
        for m in STARTED.finditer(text):
            started.setdefault(m.group(2), name)
        for m in RESUMED.finditer(text):
            resumed[m.group(2)].add(name)
        for m in SUCCEEDED.finditer(text):
            finished[m.group(2)] = name
    text = read(agent_log)
    restarts = collections.Counter(m.group(3) for m in RESTARTED.finditer(text)
                                   if m.group(1) in killed)
    repeats = sum(1 for m in ALREADY.finditer(text) if m.group(1) in killed)
    recs, seconds, per_kill = [], [], []
    for inst, at in killed.items():
        rows = db.list_recoveries(inst)
        per_kill.append(len(rows))
        for r in rows:
            recs.append(r)
            if r.state == 'succeeded' and r.finished_at is not None:
                seconds.append(db_engine.to_timestamp(r.finished_at) - at)
    ids = {r.id for r in recs}
    taken = [i for i in ids if i in finished and started.get(i)
             and finished[i] != started[i]]
    duplicates = (sum(n - 1 for i, n in restarts.items() if n > 1)
                  + sum(n - 1 for n in per_kill if n > 1))
    return {
        'vms_killed': len(killed),
        'recoveries': len(recs),
        'recoveries_succeeded': sum(1 for r in recs
                                    if r.state == 'succeeded'),
        'recoveries_in_flight_at_kill': len(in_flight),
        'recoveries_taken_over': len(taken),
        'recoveries_resumed_log_lines': sum(len(v) for i, v in
                                            resumed.items() if i in ids),
        'duplicate_recoveries': duplicates,
        'recoveries_without_restart': sum(
            1 for r in recs if r.state == 'succeeded'
            and restarts[r.id] == 0),
        'restarts_not_of_a_recovery': sum(
            n for i, n in restarts.items() if i not in ids),
        'restarts_refused_as_repeats': repeats,
        'vms_running_twice': sum(1 for n in qemus.values() if n > 1),
        'vms_not_running': sum(1 for n in qemus.values() if n == 0),
        'recovery_seconds_p50': c.rnd(c.percentile(seconds, 50), 2)
        if seconds else None,
        'recovery_seconds_max': c.rnd(max(seconds), 2) if seconds else None,
    }
