"""The disks a restart starts the VM on, from its restore point.

A restore point of several disks (ha_snapshot/disk_layout.py) is cut in
disks again here: the root goes the way of a single-disk point (fetched
whole, streamed by live restore, or under a memory state), every other
disk is fetched whole first, into ``restored-<point>-<target>.qcow2``
next to the root's file, and the VM is started with all of them, each
under the name it had when it was snapshotted (a bare node's node name,
a guest device's id), so that the next snapshots find the same disks.

May import the disk layout and the hypervisor contract.
"""

import glob
import os

from ha_snapshot import disk_layout
from ha_snapshot.hypervisor import base as hv_base


class RestartDisks:

    def __init__(self, manifest: dict, workdir: str, restore_point: str,
                 vm_options):
        """``manifest``: the point's, as the manager's ``get_manifest``
        gives it; ``vm_options``: the spec's ``vm`` (VMOptions)."""
        self.manifest = manifest
        self.workdir = workdir
        self.layout = manifest.get('disks') or None
        self.vm = vm_options
        self.bare = (vm_options.machine or 'none') == 'none'
        self.others = list(self.layout[1:]) if self.layout else []
        self.other_paths = {
            d['target']: os.path.join(workdir, 'restored-%s-%s.qcow2'
                                      % (restore_point, d['target']))
            for d in self.others}

    @property
    def root_manifest(self) -> dict:
        """The root disk's manifest (the point's own for a single disk)."""
        if not self.layout:
            return self.manifest
        return disk_layout.disk_manifest(self.manifest, self.layout[0])

    @property
    def root_name(self) -> str | None:
        """The root's disk name (the spec's ``disk``); None for a single
        disk point (learned again: the first disk)."""
        return self.layout[0]['target'] if self.layout else None

    @property
    def shape(self) -> list | None:
        return disk_layout.shape(self.layout)

    def fetch_others(self, fetch) -> None:
        """``fetch(manifest, path)`` every disk but the root."""
        for d in self.others:
            path = self.other_paths[d['target']]
            if os.path.exists(path):
                os.unlink(path)  # NOTE: left by a failed attempt
            fetch(disk_layout.disk_manifest(self.manifest, d), path)

    def _ids(self, target: str | None, node, device) -> tuple:
        if target is None:
            return node, device
        if self.bare:
            return node or target, device
        return node, device or target

    def specs(self, root_path: str) -> tuple:
        """The DiskSpecs of the restarted VM, the root first."""
        node, device = self._ids(self.root_name, self.vm.node,
                                 self.vm.device)
        out = [hv_base.DiskSpec(path=root_path, format='qcow2', node=node,
                                device=device)]
        for d in self.others:
            node, device = self._ids(d['target'], None, None)
            out.append(hv_base.DiskSpec(path=self.other_paths[d['target']],
                                        format='qcow2', node=node,
                                        device=device))
        return tuple(out)

    def paths(self, root_path: str) -> list:
        return [root_path] + [self.other_paths[d['target']]
                              for d in self.others]

    def stale_files(self, root_path: str) -> list:
        """Restored disks of earlier restarts in the work directory, not
        used by this one."""
        keep = set(self.paths(root_path))
        return [p for pattern in ('restored-*.qcow2', 'live-*.qcow2')
                for p in glob.glob(os.path.join(self.workdir, pattern))
                if p not in keep]
