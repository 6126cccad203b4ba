"""Image handling: inspection, qemu-img under limits, overlay ranges.

May import ha_snapshot.exception and oslo libraries; must not import the
store or the delta modules (they build on this package, not the reverse).
"""
