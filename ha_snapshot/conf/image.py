"""[image]: limits applied to every image and overlay before use."""

from oslo_config import cfg
from oslo_utils import units

from ha_snapshot.conf import base

GROUP = cfg.OptGroup('image', title='Image handling',
                     help='Inspection and resource limits for qemu-img.')

OPTS = [
    cfg.IntOpt('max_virtual_size', default=8 * units.Ti, min=units.Mi,
               help='Largest virtual disk size accepted, in bytes. An image '
                    'or overlay claiming more is refused as hostile.'),
    cfg.IntOpt('qemu_img_address_space', default=1 * units.Gi,
               min=64 * units.Mi,
               help='Address-space limit (bytes) for qemu-img and qemu-io, '
                    'applied with prlimit.'),
    cfg.IntOpt('qemu_img_cpu_time', default=120, min=1,
               help='CPU-time limit (seconds) for one qemu-img call.'),
    cfg.IntOpt('max_part_bytes', default=4 * units.Mi, min=64 * units.Ki,
               max=64 * units.Mi,
               help='Most uncompressed data bytes in one delta part (one '
                    'message on the bus).'),
    cfg.IntOpt('max_part_extents', default=4096, min=16,
               help='Most extents in one delta part.'),
    cfg.IntOpt('compression_level', default=3, min=-5, max=19,
               help='zstandard level for delta parts.'),
]


def register_opts(conf: cfg.ConfigOpts) -> None:
    base.register(conf, GROUP, OPTS)


def list_opts():
    return {GROUP: OPTS}
