"""Server A of the e2e scenario runs the project's real test guest.

The bootable test guest (ha_snapshot.guest.build: SeaBIOS, syslinux, an
ext4 data partition; its workload appends fsync'ed records and prints
``DURABLE n`` on ttyS0, and commits sqlite transactions, ``COMMITTED n``)
is uploaded to Glance and booted through Nova. What the scenario learns
about it, all from outside the guest and outside ha-snapshot:

- :class:`ConsoleTail` reads the serial console as Nova's libvirt driver
  has virtlogd write it (``console.log`` in the instance folder) while it
  grows, and stamps each line with the host's wall clock when it is read.
  A stamp is never earlier than the guest printed the line, so the
  records counted durable before an instant were durable then: a lower
  bound, short by at most what the guest prints in one poll period.
- the API's ``taken_at`` of a restore point: when its snapshot was taken
  (the agent's clock, read just before the snapshot: earlier if anything).
- :func:`restore_point_copy`: the backing file of the rebuilt server's
  disk, i.e. the restore point exactly as Nova booted it, before the guest
  wrote to it; :func:`report` judges it with records.check_recovered and
  the rebuilt guest's console (Nova's os-getConsoleOutput), under the same
  keys as the demo's.

The scenario's own writes through the QEMU monitor go to
:data:`FREE_OFFSET` and above: past the guest's partitions, on the part
of the disk the flavor adds, where they cannot damage its file systems.

May import what cloudlib may, and ha_snapshot.guest (test tooling).
"""

import datetime
import json
import os
import re
import subprocess
import threading
import time

from ha_snapshot.guest import console as guest_console
from ha_snapshot.guest import disk as guest_disk
from ha_snapshot.guest import records
from ha_snapshot.tests.integration import cloudlib

MiB = 1 << 20
FREE_OFFSET = 192 * MiB
"""The scenario's monitor writes go here and above (the flavor's disk is
1 GiB; the guest's partitions end at 105 MiB)."""
MEMORY_MB = 256
EPHEMERAL_GB = 1
"""The guest's flavor has an ephemeral disk (vdb), which Nova formats
and the guest never mounts: the scenario writes a pattern into it and
checks the recovery gives it back (issue 14 item 1)."""
POLL = 0.05
"""Console poll period (s): each stamp is at most this late, plus
virtlogd's own delay."""
BOOT_TIMEOUT = 180


class ConsoleTail:
    """``DURABLE``/``COMMITTED`` lines of a growing console file, each
    stamped (wall clock) when first read. A file replaced or truncated
    (Nova recreates the instance folder on a rebuild) is read anew; a
    number seen again keeps its first stamp."""

    def __init__(self, path: str, poll: float = POLL, clock=time.time):
        self.path = path
        self.poll = poll
        self.clock = clock
        self.durable = {}
        self.committed = {}
        self.lines = 0
        self._pos = 0
        self._ino = None
        self._buf = b''
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._thread = None

    def start(self) -> 'ConsoleTail':
        self._thread = threading.Thread(target=self._run, daemon=True,
                                        name='console-tail')
        self._thread.start()
        return self

    def stop(self) -> None:
        """Stop reading (what was written up to now is read first)."""
        self._stop.set()
        if self._thread is not None:
            self._thread.join(10)
        self.read()

    def _run(self) -> None:
        while not self._stop.is_set():
            self.read()
            self._stop.wait(self.poll)

    def read(self) -> None:
        """Read what was added since the last read."""
        with self._lock:
            try:
                with open(self.path, 'rb') as f:
                    st = os.fstat(f.fileno())
                    if st.st_ino != self._ino or st.st_size < self._pos:
                        self._ino, self._pos, self._buf = st.st_ino, 0, b''
                    f.seek(self._pos)
                    data = f.read()
            except FileNotFoundError:
                return
            now = self.clock()
            self._pos += len(data)
            self._buf += data
            *lines, self._buf = self._buf.split(b'\n')
            for raw in lines:
                self.lines += 1
                m = guest_console.COUNTER.search(
                    raw.decode('utf-8', 'replace'))
                if m:
                    marks = (self.durable if m.group(1) == 'DURABLE'
                             else self.committed)
                    marks.setdefault(int(m.group(2)), now)

    def durable_before(self, wall: float) -> int:
        """The highest record read as durable before ``wall`` (0: none)."""
        with self._lock:
            return max((n for n, t in self.durable.items() if t < wall),
                       default=0)

    def committed_before(self, wall: float) -> int:
        with self._lock:
            return max((n for n, t in self.committed.items() if t < wall),
                       default=0)

    def wait_durable(self, timeout: float, what: str) -> int:
        return cloudlib.wait_for(lambda: max(self.durable, default=0),
                                 timeout, what)


def taken_at(s, instance: str, restore_point: str) -> float:
    """When the snapshot of ``restore_point`` was taken (the API's
    ``taken_at``, epoch seconds)."""
    for rp in s.restore_points(instance):
        if rp['id'] == restore_point and rp.get('taken_at'):
            return cloudlib.api_time(rp['taken_at'])
    raise cloudlib.ScenarioError('the API gives no taken_at for restore '
                                 'point %s of %s' % (restore_point, instance))


def console_path(state: dict, host: str, instance: str) -> str:
    """Nova's console.log of ``instance``, seen from outside its host."""
    facts = cloudlib.host_facts(state, host)
    return os.path.join(facts['instances_dir'], instance, 'console.log')


class GuestImage:
    """The test guest's bootable disk, what the scenario needs to know
    of it, and (after :meth:`upload`) its Glance image and flavor."""

    def __init__(self, disk: str, workdir: str):
        """``disk``: the bootable qcow2 (ha_snapshot.guest.build's)."""
        self.disk = disk
        self.raw = os.path.join(workdir, 'guest-image.raw')
        subprocess.run(['qemu-img', 'convert', '-q', '-O', 'raw', disk,
                        self.raw], check=True, timeout=120)
        parts = guest_disk.partitions(self.raw)
        self.end = max(p.offset + p.size for p in parts)
        boot = [p for p in parts if p.bootable]
        if not boot:
            raise cloudlib.ScenarioError('the guest image %s has no boot '
                                         'partition' % disk)
        self.boot_end = boot[0].offset + boot[0].size
        if self.end > FREE_OFFSET:
            raise cloudlib.ScenarioError(
                'the guest image\'s partitions end at %d, past the offset '
                'the scenario writes to (%d)' % (self.end, FREE_OFFSET))
        self.data_bytes = sum(
            e['length'] for e in json.loads(subprocess.run(
                ['qemu-img', 'map', '--output=json', disk],
                check=True, capture_output=True, timeout=60).stdout)
            if e.get('data'))
        """Bytes of data in the image: what a full resend carries at
        least."""
        self.image = self.flavor = None

    def upload(self, conn) -> None:
        """The Glance image (public) and a flavor with room for it."""
        image = conn.image.create_image(
            name='ha-e2e-guest', filename=self.disk,
            disk_format='qcow2', container_format='bare',
            visibility='public', wait=True)
        self.image = cloudlib.wait_for(
            lambda: (lambda i: i if i.status == 'active' else None)(
                conn.image.get_image(image.id)),
            120, 'Glance image %s (the test guest) to become active'
            % image.id)
        self.flavor = conn.compute.create_flavor(
            name='ha-e2e-guest', ram=MEMORY_MB, vcpus=1, disk=1,
            ephemeral=EPHEMERAL_GB)

    def holds_boot_partition(self, raw_copy: str) -> bool:
        """The MBR and boot partition of ``raw_copy`` are the image's."""
        with open(self.raw, 'rb') as a, open(raw_copy, 'rb') as b:
            left = self.boot_end
            while left:
                n = min(left, 4 * MiB)
                if a.read(n) != b.read(n):
                    return False
                left -= n
        return True


def restore_point_copy(dom: cloudlib.Domain, workdir: str) -> str:
    """A raw copy of the rebuilt disk's backing file: the image Nova made
    the disk from (its cache of the restore point's Glance image)."""
    ns = dom.nsenter()
    disk = dom.disk_path()
    info = json.loads(subprocess.run(
        ns + ['qemu-img', 'info', '-U', '--output=json', disk],
        check=True, capture_output=True, timeout=60).stdout)
    base = info.get('full-backing-filename') or info.get('backing-filename')
    if not base:
        raise cloudlib.ScenarioError('the rebuilt disk %s has no backing '
                                     'file (Nova made it without one?)'
                                     % disk)
    copy = os.path.join(workdir, 'restore-point.raw')
    subprocess.run(ns + ['qemu-img', 'convert', '-U', '-O', 'raw', base,
                         copy], check=True, capture_output=True,
                   timeout=600)
    return copy


def wait_console(conn, server_id: str, pattern: str,
                 timeout: float = BOOT_TIMEOUT):
    """The first match of ``pattern`` in the server's console output as
    Nova's API gives it (os-getConsoleOutput)."""
    regex = re.compile(pattern)

    def found():
        out = conn.compute.get_server_console_output(server_id)
        return regex.search(out.get('output') or '')
    return cloudlib.wait_for(found, timeout, '%r on the console of server '
                             '%s' % (pattern, server_id), poll=1)


def report(check: records.RecoveryCheck, durable: int, committed: int,
           first_record: int | None, verify: str | None) -> dict:
    """What a user would check of a recovered guest (the demo's keys):
    ``check`` of the restore point, the records and transactions the
    guest reported before its snapshot, and the rebuilt guest's first
    record and VERIFY line on its console (None: not seen)."""
    recs, db = check.records, check.database
    lost = max(0, durable - recs.contiguous)
    tx_lost = max(0, committed - (db.transactions if db and db.ok else 0))
    intact = recs.durable_intact(durable)
    out = {
        'guest_booted': first_record is not None,
        'recovered_guest_verify': verify,
        'recovered_guest_first_record': first_record,
        'fsck_clean': check.fsck_clean,
        'journal_replayed': check.journal_replayed,
        'records_durable_before_restore_point': durable,
        'records_in_restore_point': recs.records,
        'records_lost': lost,
        # NOTE: torn among the durable ones is a loss; after them
        # (appended, not yet fsynced at the snapshot) crash consistency
        # allows it.
        'records_torn': 0 if intact else recs.torn + recs.out_of_order,
        'records_torn_after_durable': (recs.torn + recs.out_of_order
                                       if intact else 0),
        'transactions_committed_before_restore_point': committed,
        'transactions_in_restore_point': db.transactions if db else 0,
        'transactions_lost': tx_lost,
        'database_ok': bool(db and db.ok)}
    out['guest_verified'] = bool(
        first_record is not None and check.fsck_clean and durable > 0
        and intact and not lost
        and db is not None and db.ok and not tx_lost
        and first_record == recs.whole + 1)
    return out


def check_rebuilt(s, server, dom: cloudlib.Domain, restore_point: str,
                  tail: ConsoleTail, checked: bool = True) -> dict:
    """The checks of the rebuilt server A (``s``: the Scenario): its
    guest boots, the restore point it was rebuilt from is clean after
    journal replay and holds every record (and transaction) the guest
    reported before that point's snapshot; the report under ``guest``.
    ``checked`` false: measured and logged, not the scenario's checks."""
    t = time.monotonic()
    # NOTE: the console first: Nova returns its last 100 KB only, and
    # the guest fills that in under a minute.
    try:
        first = int(wait_console(s.demo, server.id, r'DURABLE (\d+)')
                    .group(1))
        verify = wait_console(s.demo, server.id, r'VERIFY \w+.*', 5).group(0)
    except cloudlib.ScenarioError as e:
        s.log('scenario: %s' % e)
        first = verify = None
    taken = taken_at(s, server.id, restore_point)
    durable = tail.durable_before(taken)
    committed = tail.committed_before(taken)
    copy = restore_point_copy(dom, s.workdir)
    try:
        check = records.check_recovered(copy, s.workdir)
    finally:
        os.unlink(copy)
    out = report(check, durable, committed, first, verify)
    out['restore_point_taken_at'] = datetime.datetime.fromtimestamp(
        taken, datetime.timezone.utc).isoformat()
    out['console_lines_read'] = tail.lines
    out['check_seconds'] = round(time.monotonic() - t, 1)
    if not checked:
        s.log('scenario: guest (measured) %s' % json.dumps(
            out, sort_keys=True))
        return out
    s.check('the rebuilt guest boots (its console, through Nova, shows '
            'records after the restore point\'s)',
            first is not None and first == check.records.whole + 1,
            '%s, %s' % (verify, first))
    s.check('the restore point\'s file system is clean after journal '
            'replay', check.fsck_clean,
            None if check.fsck_clean else check.fsck_output[-300:])
    s.check('every record durable before the restore point is there',
            durable > 0 and check.records.durable_intact(durable)
            and not out['records_lost'],
            '%d durable before, %d there, %d lost, %d torn' % (
                durable, check.records.records, out['records_lost'],
                out['records_torn']))
    s.check('every transaction committed before the restore point is '
            'there', out['database_ok'] and not out['transactions_lost'],
            '%d committed before, %d there' % (
                committed, out['transactions_in_restore_point']))
    return out
