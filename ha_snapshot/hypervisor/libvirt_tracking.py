"""What the libvirt driver tracks per domain, and the XML it sends.

Change tracking is libvirt's: a *checkpoint* is a point in time; QEMU
keeps a persistent dirty bitmap per disk (named like the checkpoint)
holding every write since then, and a push-mode backup job with
``<incremental>CHECKPOINT</incremental>`` copies exactly those clusters
into a new qcow2 file.

Nova undefines a stopped domain with flags that do not include
VIR_DOMAIN_UNDEFINE_CHECKPOINTS_METADATA, and libvirt refuses to undefine
an inactive domain that has checkpoints: checkpoint *metadata* left in
libvirt would break Nova's hard reboot, rebuild, resize and delete. So
the driver keeps the checkpoints' XML here, in a JSON file of its own
(``<backup_dir>/<domain uuid>/tracking.json``), and libvirt holds
metadata only while a backup or a deletion runs: it is redefined
(VIR_DOMAIN_CHECKPOINT_CREATE_REDEFINE, with _VALIDATE to prove the
bitmap is still there and consistent) right before, and deleted
(VIR_DOMAIN_CHECKPOINT_DELETE_METADATA_ONLY) right after. The bitmaps stay
in the disk between snapshots; a QEMU crash leaves them inconsistent, the
validation then fails and the driver falls back to a full backup.

May import the standard library, oslo.log and ha_snapshot.exception.
"""

import dataclasses
import json
import os
import re
import time
from xml.etree import ElementTree

from oslo_log import log as logging

from ha_snapshot import exception

LOG = logging.getLogger(__name__)

PREFIX = 'ha-snapshot-'
"""Every checkpoint and bitmap the driver makes is named PREFIX<n>."""
STATE_FILE = 'tracking.json'


@dataclasses.dataclass
class Checkpoint:
    name: str
    xml: str
    """The checkpoint's XML without <parent> and <domain>, to redefine."""
    disks: list
    """Target devices (vda, ...) it has a bitmap on."""
    full: bool = False
    """Its backup copied the whole disks (no older checkpoint to use)."""
    live: bool = True
    """Its bitmaps are (believed) in the disks; False once removed: then
    it is kept only while delta files of it remain."""


@dataclasses.dataclass
class Tracking:
    path: str
    checkpoints: list = dataclasses.field(default_factory=list)
    counter: int = 0
    orphans: list = dataclasses.field(default_factory=list)
    """[name, xml] of checkpoints whose backup job failed: their bitmaps
    are removed later, while the domain runs (never in the failure path,
    which is most often a domain going away: see libvirt_ops.backup)."""

    @property
    def workdir(self) -> str:
        return os.path.dirname(self.path)

    @classmethod
    def load(cls, workdir: str) -> 'Tracking':
        """The state in ``workdir``; a fresh one when there is none.

        An unreadable or malformed file is moved aside (kept for a look)
        and a fresh state returned: the next snapshot is then a full
        backup, which is always correct.
        """
        path = os.path.join(workdir, STATE_FILE)
        # NOTE: a fresh state's names must not meet bitmaps an earlier,
        # lost state left in a running QEMU: start the counter at the time.
        fresh = cls(path=path, counter=int(time.time() * 1000))
        try:
            with open(path) as f:
                d = json.load(f)
            orphans = [[str(n), str(x)] for n, x in d.get('orphans', [])]
            return cls(path=path, counter=int(d['counter']),
                       checkpoints=[Checkpoint(**c)
                                    for c in d['checkpoints']],
                       orphans=orphans)
        except FileNotFoundError:
            return fresh
        except (OSError, ValueError, TypeError, KeyError) as e:
            aside = '%s.unreadable-%d' % (path, time.time())
            try:
                os.replace(path, aside)
            except OSError:
                raise exception.HaSnapshotException(
                    'Checkpoint state %s is unreadable (%s) and cannot be '
                    'moved aside; move it away: the next snapshot is then '
                    'a full backup.' % (path, e))
            LOG.error('Checkpoint state %s is unreadable (%s); moved to %s, '
                      'the next snapshot is a full backup', path, e, aside)
            return fresh

    def save(self) -> None:
        os.makedirs(self.workdir, exist_ok=True)
        tmp = self.path + '.tmp'
        with open(tmp, 'w') as f:
            json.dump({'counter': self.counter,
                       'checkpoints': [dataclasses.asdict(c)
                                       for c in self.checkpoints],
                       'orphans': self.orphans}, f, indent=1)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, self.path)

    def new_name(self) -> str:
        self.counter += 1
        return '%s%d' % (PREFIX, self.counter)

    def get(self, name: str) -> Checkpoint | None:
        for c in self.checkpoints:
            if c.name == name:
                return c
        return None

    def newest_live(self) -> Checkpoint | None:
        """The checkpoint the next incremental backup starts from: the
        newest one, if its bitmaps still exist."""
        if self.checkpoints and self.checkpoints[-1].live:
            return self.checkpoints[-1]
        return None

    def delta_path(self, name: str, disk: str) -> str:
        return os.path.join(self.workdir, '%s.%s.qcow2' % (name, disk))

    def files(self, c: Checkpoint) -> dict:
        """Disk -> delta file of checkpoint ``c`` still on disk."""
        out = {}
        for disk in c.disks:
            path = self.delta_path(c.name, disk)
            if os.path.exists(path):
                out[disk] = path
        return out


# --- XML -----------------------------------------------------------------

def checkpoint_xml(name: str, disks, all_disks,
                   creation_time: int | None = None) -> str:
    """A new checkpoint with a bitmap on ``disks`` and none elsewhere.
    ``creation_time`` (seconds since the epoch): the XML of one whose
    bitmaps were made without libvirt, to redefine it."""
    root = ElementTree.Element('domaincheckpoint')
    ElementTree.SubElement(root, 'name').text = name
    if creation_time is not None:
        ElementTree.SubElement(root, 'creationTime').text = str(
            int(creation_time))
    el = ElementTree.SubElement(root, 'disks')
    for d in all_disks:
        if d in disks:
            ElementTree.SubElement(el, 'disk', name=d, checkpoint='bitmap',
                                   bitmap=name)
        else:
            ElementTree.SubElement(el, 'disk', name=d, checkpoint='no')
    return ElementTree.tostring(root, encoding='unicode')


def backup_xml(incremental: str | None, targets: dict, all_disks) -> str:
    """A push-mode backup of ``targets`` (disk -> new qcow2 file)."""
    root = ElementTree.Element('domainbackup', mode='push')
    if incremental:
        ElementTree.SubElement(root, 'incremental').text = incremental
    el = ElementTree.SubElement(root, 'disks')
    for d in all_disks:
        if d in targets:
            disk = ElementTree.SubElement(el, 'disk', name=d, backup='yes',
                                          type='file')
            ElementTree.SubElement(disk, 'target', file=targets[d])
            ElementTree.SubElement(disk, 'driver', type='qcow2')
        else:
            ElementTree.SubElement(el, 'disk', name=d, backup='no')
    return ElementTree.tostring(root, encoding='unicode')


def redefinable(xml: str) -> str:
    """A checkpoint's XML to redefine later on its own: no <parent> (the
    older checkpoint's metadata will not exist then)."""
    return re.sub(r'\s*<parent>.*?</parent>', '', xml, flags=re.S)


def bitmap_only_xml(name: str, disk: str) -> str:
    """Metadata for a bitmap we made but no longer track, so that libvirt
    can delete it."""
    return checkpoint_xml(name, (disk,), (disk,))


@dataclasses.dataclass(frozen=True)
class DomainDisk:
    target: str
    """Guest target device (vda): libvirt's name of the disk."""
    device: str
    """disk, cdrom, floppy, lun."""
    alias: str | None
    bus: str | None
    format: str | None
    readonly: bool
    chain: tuple
    """(path, format, index) from the active image down."""


def domain_disks(xml: str) -> list:
    """The file/block disks of a domain's (live) XML, in order."""
    root = ElementTree.fromstring(xml)
    out = []
    for disk in root.findall('./devices/disk'):
        target = disk.find('target')
        if target is None or not target.get('dev'):
            continue
        driver = disk.find('driver')
        fmt = driver.get('type') if driver is not None else None
        alias = disk.find('alias')
        chain = []
        node, node_fmt = disk, fmt
        while node is not None:
            source = node.find('source')
            path = None
            if source is not None:
                path = source.get('file') or source.get('dev')
            if not path:
                break
            chain.append((path, node_fmt,
                          source.get('index') or node.get('index')))
            node = node.find('backingStore')
            if node is not None:
                f = node.find('format')
                node_fmt = f.get('type') if f is not None else None
        out.append(DomainDisk(
            target=target.get('dev'), device=disk.get('device', 'disk'),
            alias=alias.get('name') if alias is not None else None,
            bus=target.get('bus'), format=fmt,
            readonly=disk.find('readonly') is not None,
            chain=tuple(chain)))
    return out
