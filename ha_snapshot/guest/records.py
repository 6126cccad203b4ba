"""The guest workload's records, and the check of a recovered disk.

A record is 128 bytes: ``R <n, 8 digits> <guest uptime in cs, 12 digits>
<pad, 92 bytes> <check, 10 digits>`` and a newline, where check is
``(n * 69069 + cs * 40503 + 12345) mod 2**32``: a check value over the two
fields that vary, the rest compared literally. (An md5 per record costs the
guest shell a fork and halves its rate under TCG.) The record at position k
must be number k. The guest's own verify mode (init.sh) applies the same
rules; ``RecordCheck.summary()`` prints its line.

:func:`check_recovered` checks a copy of a guest's disk the way a recovery
must be judged: the ext4 data partition is cut out by its MBR offset,
``e2fsck -fy`` replays the journal (``e2fsck -n`` alone skips it and sees a
stale file system: it proves nothing), ``e2fsck -fn`` must then find it
clean, and the records are read with ``debugfs`` (no mount) and checked.
The disk copy itself is not changed.

May import the standard library, ha_snapshot.exception and
ha_snapshot.guest.disk / packages only.
"""

import dataclasses
import os
import re
import sqlite3
import subprocess
import tempfile

from ha_snapshot import exception
from ha_snapshot.guest import disk as disk_mod
from ha_snapshot.guest import packages

RECORD = 128
PAD = ('PADDING-' * 12)[:92]
FILE = '/records'
DATABASE = '/app.db'
LINE = re.compile(rb'R (\d{8}) (\d{12}) ([!-~]{92}) (\d{10})\n')
TOOL_TIMEOUT = 300
# NOTE: e2fsck exit codes: 0 clean, 1 errors corrected, 2 corrected and
# reboot wanted (irrelevant on a file), 4 and up: errors left, or failed.
FSCK_FIXED_MAX = 2


def check_value(n: int, uptime_cs: int) -> int:
    return (n * 69069 + uptime_cs * 40503 + 12345) % (1 << 32)


def make_record(n: int, uptime_cs: int) -> bytes:
    """Record ``n`` as the guest writes it (for tests and tools)."""
    return b'R %08d %012d %s %010d\n' % (n, uptime_cs, PAD.encode(),
                                        check_value(n, uptime_cs))


@dataclasses.dataclass(frozen=True)
class RecordCheck:
    records: int
    """Good records in their place (record k at position k)."""
    torn: int
    """Records that do not parse or whose checksum is wrong."""
    out_of_order: int
    """Good records at the wrong position."""
    tail_bytes: int
    """Bytes of an incomplete record at the end."""
    first_bad: int | None
    """Position (1-based) of the first record that is not good."""
    uptimes: tuple = ()
    """The guest's uptime (cs) of each good record, in order."""
    bad: tuple = ()
    """Positions (1-based) of the whole slots that are not good (torn or
    out of order), in order."""

    @property
    def ok(self) -> bool:
        return not (self.torn or self.out_of_order or self.tail_bytes)

    def durable_intact(self, durable: int) -> bool:
        """Records 1..``durable`` (those the guest reported durable before
        the point was taken) all good and in place: what a crash-consistent
        point must hold. A record after those (appended, not yet fsynced)
        may be torn or zeros: ext4 may commit the file's new size, in a
        journal commit another file's fsync forces, before the appended
        bytes reach the disk."""
        return self.contiguous >= durable

    def missing(self, numbers) -> list:
        """Those of record ``numbers`` not good in their place: a guest
        recovered again and again may hold a torn record (one appended,
        not yet fsynced, at an earlier crash) before records it went on
        to make durable after it; only the numbers it reported durable
        must be good."""
        bad = set(self.bad)
        return sorted(n for n in numbers if n in bad or n > self.whole)

    @property
    def whole(self) -> int:
        """Whole record slots in the file, good or not."""
        return self.records + self.torn + self.out_of_order

    @property
    def contiguous(self) -> int:
        """Records 1..k are all there and good: k."""
        return self.records if self.first_bad is None else self.first_bad - 1

    def summary(self) -> str:
        """The guest's own verify line for the same data."""
        line = 'VERIFY %s records=%d' % ('ok' if self.ok else 'bad',
                                         self.records)
        if not self.ok:
            line += ' torn=%d out_of_order=%d tail_bytes=%d' % (
                self.torn, self.out_of_order, self.tail_bytes)
        return line


def check_records(data: bytes) -> RecordCheck:
    good = torn = order = 0
    first_bad = None
    uptimes, bad = [], []
    whole = len(data) - len(data) % RECORD
    for pos, off in enumerate(range(0, whole, RECORD), 1):
        m = LINE.fullmatch(data, off, off + RECORD)
        if (m is None or m.group(3) != PAD.encode() or int(m.group(4))
                != check_value(int(m.group(1)), int(m.group(2)))):
            torn += 1
        elif int(m.group(1)) != pos:
            order += 1
        else:
            good += 1
            uptimes.append(int(m.group(2)))
            continue
        bad.append(pos)
        if first_bad is None:
            first_bad = pos
    tail = len(data) % RECORD
    if tail and first_bad is None:
        first_bad = whole // RECORD + 1
    return RecordCheck(good, torn, order, tail, first_bad, tuple(uptimes),
                       tuple(bad))


@dataclasses.dataclass(frozen=True)
class DatabaseCheck:
    integrity: str
    """``PRAGMA integrity_check``: 'ok' or what sqlite found."""
    transactions: int
    """Committed transactions found (rows 1..n)."""
    consistent: bool
    """Rows 1..n with no gap and the totals row matching them: no
    transaction lost half-way."""

    @property
    def ok(self) -> bool:
        return self.integrity == 'ok' and self.consistent

    def summary(self) -> str:
        if self.ok:
            return 'SQLITE ok transactions=%d' % self.transactions
        return 'SQLITE bad integrity=%s consistent=%s transactions=%d' % (
            self.integrity, self.consistent, self.transactions)


def check_database(path: str) -> DatabaseCheck:
    """Check the guest's database at ``path`` (its -wal beside it)."""
    con = sqlite3.connect(path)
    try:
        tables = {r[0] for r in con.execute(
            "SELECT name FROM sqlite_master WHERE type = 'table'")}
        if not tables:
            # NOTE: taken before the guest's set-up transaction committed
            # (the file and its WAL header exist): no transaction yet.
            return DatabaseCheck('ok', 0, True)
        integrity = '; '.join(
            r[0] for r in con.execute('PRAGMA integrity_check'))
        count, top, total = con.execute(
            'SELECT count(*), coalesce(max(id), 0), coalesce(sum(id), 0) '
            'FROM tx').fetchone()
        n, t = con.execute('SELECT n, total FROM totals').fetchone()
    except sqlite3.Error as e:
        return DatabaseCheck('error: %s' % e, 0, False)
    finally:
        con.close()
    return DatabaseCheck(integrity, count,
                         count == top == n and total == t)


@dataclasses.dataclass(frozen=True)
class RecoveryCheck:
    replay_status: int
    """Exit status of ``e2fsck -fy`` (0 or 1: replayed, fixed at most
    ext4's unjournalled free counts)."""
    fsck_clean: bool
    """``e2fsck -fn`` after the replay found nothing."""
    journal_replayed: bool
    """The file system needed its journal replayed (a crash-consistent
    copy does; one taken while the guest agent froze it does not)."""
    fsck_output: str
    records: RecordCheck
    database: DatabaseCheck | None = None
    """None when the disk holds no database (a guest without sqlite3)."""
    needs_recovery: bool | None = None
    """The copy's ext4 superblock had ``needs_recovery`` set before any
    replay (``dumpe2fs -h``): the journal held transactions to replay. A
    point taken inside a guest freeze never has it."""


def _tool(argv, what, ok=(0,)):
    r = subprocess.run(argv, capture_output=True, timeout=TOOL_TIMEOUT,
                       env=dict(os.environ, LC_ALL='C', LANG='C'))
    if r.returncode not in ok:
        raise exception.GuestImageError(
            reason='%s failed (%s, exit %d): %s' % (
                what, ' '.join(argv), r.returncode,
                (r.stderr or r.stdout).decode('utf-8', 'replace')[-500:]))
    return r


def extract_data_partition(raw: str, out: str) -> disk_mod.Partition:
    parts = [p for p in disk_mod.partitions(raw)
             if p.type == disk_mod.LINUX]
    if not parts:
        raise exception.GuestImageError(
            reason='%s has no Linux (0x83) partition' % raw)
    part = parts[-1]
    with open(raw, 'rb') as fin, open(out, 'wb') as fout:
        fin.seek(part.offset)
        left = part.size
        while left:
            chunk = fin.read(min(left, 1 << 20))
            if not chunk:
                break
            fout.write(chunk)
            left -= len(chunk)
        fout.truncate(part.size)
    return part


def features(fs: str) -> list:
    """The ext4 features of the file system in file ``fs``, as
    ``dumpe2fs -h`` lists them (``needs_recovery`` among them while the
    journal holds transactions to replay); read only."""
    out = _tool(['dumpe2fs', '-h', fs], 'dumpe2fs -h').stdout.decode(
        'utf-8', 'replace')
    for line in out.splitlines():
        if line.startswith('Filesystem features:'):
            return line.split(':', 1)[1].split()
    raise exception.GuestImageError(reason='dumpe2fs -h %s lists no '
                                    'features' % fs)


def check_recovered(disk_copy: str, workdir: str | None = None
                    ) -> RecoveryCheck:
    """Replay, fsck and read the records of a copy of a guest's disk
    (qcow2 with its backing chain, or raw); see the module doc."""
    for tool in ('e2fsck', 'debugfs'):
        packages.require_tool(tool, 'e2fsprogs')
    with tempfile.TemporaryDirectory(dir=workdir) as tmp:
        with open(disk_copy, 'rb') as f:
            magic = f.read(4)
        raw = disk_copy
        if magic == b'QFI\xfb':
            raw = os.path.join(tmp, 'disk.raw')
            _tool(['qemu-img', 'convert', '-q', '-O', 'raw', disk_copy, raw],
                  'qemu-img convert')
        fs = os.path.join(tmp, 'data.ext4')
        extract_data_partition(raw, fs)
        needs = 'needs_recovery' in features(fs)
        replay = _tool(['e2fsck', '-fy', fs], 'e2fsck -fy (journal replay)',
                       ok=range(FSCK_FIXED_MAX + 1))
        check = subprocess.run(['e2fsck', '-fn', fs], capture_output=True,
                               timeout=TOOL_TIMEOUT)
        out = _tool(['debugfs', '-R', 'cat %s' % FILE, fs],
                    'debugfs cat %s' % FILE)
        db = os.path.join(tmp, 'app.db')
        _tool(['debugfs', '-R', 'dump %s %s' % (DATABASE, db), fs],
              'debugfs dump %s' % DATABASE)
        database = None
        if os.path.exists(db) and os.path.getsize(db):
            _tool(['debugfs', '-R', 'dump %s-wal %s-wal' % (DATABASE, db),
                   fs], 'debugfs dump %s-wal' % DATABASE)
            database = check_database(db)
        return RecoveryCheck(
            replay_status=replay.returncode,
            fsck_clean=check.returncode == 0,
            journal_replayed=b'recovering journal' in replay.stdout,
            fsck_output=(replay.stdout + check.stdout).decode(
                'utf-8', 'replace'),
            records=check_records(out.stdout), database=database,
            needs_recovery=needs)
