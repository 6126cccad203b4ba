"""A real Linux test guest, built from Debian packages, and its checks.

``build`` makes (and caches) a kernel, an initramfs and a bootable qcow2
disk whose workload appends fsync'ed, numbered, checksummed records to an
ext4 file system and reports each as ``DURABLE n`` on its serial console;
``records`` checks them on a recovered disk; ``console`` and ``boot`` run
such a guest under QEMU for tests and the demo.
"""
