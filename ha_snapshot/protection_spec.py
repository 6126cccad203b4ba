"""What an agent needs to know to protect one server: :class:`ProtectionSpec`.

The manager (the Nova hook, the API's protect) builds one and casts it to
the agent in ``protect``; the agent keeps it in its state file
(ha_snapshot/agent/state.py) and reads it to find, attach, snapshot and
restart the VM. On the bus and on disk it is a plain JSON object with the
keys below, the same keys as before the class existed; ``to_dict`` leaves
out the keys that are not set, so a spec goes over the wire as it did.

``from_dict`` refuses a key it does not know, or a value of the wrong
type, with :class:`~ha_snapshot.exception.InvalidProtectionSpec` naming
the key: a bad spec is refused where it arrives, not met as a KeyError
in the middle of a snapshot or a restart. An agent's state file is read
with ``keep_unknown=True`` (a file written by an older agent holds what
its manager sent, which nobody checked): unknown keys are then kept and
written back as they were, never used.

Imports only ha_snapshot.exception: the agent, the manager and the API use
it.
"""

import dataclasses
from collections import abc

from ha_snapshot import exception

ROLES = ('root', 'ephemeral', 'swap')
"""Disk roles (the same as ha_snapshot/disk_layout.py's)."""

NOVA_DRIVER = 'libvirt'
"""The hypervisor driver of a Nova server (its domain is named by the
server's uuid)."""


def _check(where: str, value, types: tuple, what: str):
    # NOTE: bool is an int to Python; a pid or a size of True is not.
    if value is None or (isinstance(value, types) and not (
            isinstance(value, bool) and bool not in types)):
        return value
    raise exception.InvalidProtectionSpec(
        reason='key %r: expected %s, got %r (%s)'
        % (where, what, value, type(value).__name__))


def _from_mapping(cls, data, prefix: str, keep_unknown: bool) -> dict:
    """The checked constructor arguments of ``cls`` from ``data``."""
    if not isinstance(data, abc.Mapping):
        raise exception.InvalidProtectionSpec(
            reason='%s: expected a JSON object, got %r (%s)'
            % (repr(prefix) if prefix else 'the spec', data,
               type(data).__name__))
    fields = {f.name: f for f in dataclasses.fields(cls)
              if f.name != 'unknown'}
    unknown = sorted(str(k) for k in data if k not in fields)
    if unknown and not keep_unknown:
        raise exception.InvalidProtectionSpec(
            reason='unknown key%s %s (known keys%s: %s)' % (
                's' if len(unknown) > 1 else '',
                ', '.join(repr(prefix + k) for k in unknown),
                ' of %r' % prefix.rstrip('.') if prefix else '',
                ', '.join(sorted(fields))))
    kwargs = {name: value for name, value in data.items() if name in fields}
    if unknown:
        kwargs['unknown'] = {k: data[k] for k in data if k not in fields}
    return kwargs


def _check_fields(obj, prefix: str) -> None:
    for name, (types, what) in obj._TYPES.items():
        _check(prefix + name, getattr(obj, name), types, what)


def _to_mapping(obj) -> dict:
    out = {}
    for f in dataclasses.fields(obj):
        value = getattr(obj, f.name)
        if f.name == 'unknown' or value is None:
            continue
        out[f.name] = value.to_dict() if hasattr(value, 'to_dict') else value
    out.update(obj.unknown)
    return out


_STR = ((str,), 'a string')
_INT = ((int,), 'an integer')
_BOOL = ((bool,), 'true or false')


QUIESCE_ALWAYS = 'always'
QUIESCE_NEVER = 'never'


def quiesce_interval(value, default: int, key: str = 'quiesce') -> int:
    """A server's ``quiesce`` setting (spec key or server metadata
    ``ha_snapshot:quiesce``; the ``memory`` key reads the same way) as
    seconds: -1 every snapshot, 0 never; None: ``default``.
    InvalidProtectionSpec names a bad value."""
    if value is None:
        return default
    text = str(value).strip().lower()
    if text == QUIESCE_ALWAYS:
        return -1
    if text == QUIESCE_NEVER:
        return 0
    if text.isdigit():
        return int(text)
    raise exception.InvalidProtectionSpec(
        reason='key %r: expected "always", "never" or a number of '
        'seconds, got %r' % (key, value))


@dataclasses.dataclass(frozen=True)
class VMOptions:
    """How the ``qemu`` driver starts the VM again (a restart recovery):
    the ``vm`` object of a spec. Unset options take the driver's
    defaults (see :meth:`ha_snapshot.agent.service.AgentService.restart`).
    """

    machine: str | None = None
    accel: str | None = None
    memory_mb: int | None = None
    paused: bool | None = None
    pidfile: str | None = None
    node: str | None = None
    """The block node name of the disk."""
    device: str | None = None
    """The guest device id of the disk."""
    serial_log: str | None = None
    """A file the restarted VM's serial console is appended to (what a
    recovered guest printed as it booted)."""
    extra_args: list | None = None
    """More QEMU arguments (strings) the VM was started with, e.g. its
    kernel and console: a memory state resumes only in a QEMU of the same
    configuration (ha_snapshot/memory_state.py)."""
    unknown: abc.Mapping = dataclasses.field(default_factory=dict,
                                             compare=False)

    _TYPES = {'machine': _STR, 'accel': _STR, 'memory_mb': _INT,
              'paused': _BOOL, 'pidfile': _STR, 'node': _STR,
              'device': _STR, 'serial_log': _STR,
              'extra_args': ((list, tuple), 'a list of strings')}

    def __post_init__(self):
        _check_fields(self, 'vm.')
        if self.extra_args is not None and not all(
                isinstance(a, str) for a in self.extra_args):
            raise exception.InvalidProtectionSpec(
                reason="key 'vm.extra_args': expected a list of strings, "
                'got %r' % (self.extra_args,))

    @classmethod
    def from_dict(cls, data, *, keep_unknown: bool = False) -> 'VMOptions':
        return cls(**_from_mapping(cls, data, 'vm.', keep_unknown))

    def to_dict(self) -> dict:
        return _to_mapping(self)


@dataclasses.dataclass(frozen=True)
class ProtectionSpec:
    """The per-server spec, shared by the manager and the agent.

    Every key is optional here; which ones a driver needs is
    :meth:`for_agent`'s business. Change one with :meth:`replace`.
    """

    nova: bool | None = None
    """A Nova server: protected by the libvirt driver, its domain named by
    ``uuid``."""
    uuid: str | None = None
    """The Nova server's uuid."""
    name: str | None = None
    """The VM's name (the QEMU driver's), or the Nova server's display
    name."""
    domain: str | None = None
    """The libvirt domain (name or uuid)."""
    driver: str | None = None
    """The hypervisor driver; default libvirt for Nova, else ``[agent]
    hypervisor``."""
    policy: str | None = None
    """The snapshot policy; default ``[policy] name``."""
    qmp_path: str | None = None
    """The QMP socket of a QEMU-driver VM."""
    pid: int | None = None
    """The QEMU process of a QEMU-driver VM."""
    log_path: str | None = None
    """Where QEMU's output goes."""
    qga_path: str | None = None
    """The guest agent's socket, for the health monitor's ping."""
    disk: str | None = None
    """The name (block node or target) of the disk that is shipped; the
    first disk when unset (then learned and kept)."""
    disk_path: str | None = None
    """The file of that disk, for a restart."""
    vm: VMOptions | None = None
    """How a restart starts the VM (QEMU driver)."""
    quiesce: str | None = None
    """When a snapshot freezes the guest's file systems first (an
    application-consistent point): 'always', 'never' or a number of
    seconds between such points; default ``[agent] quiesce_interval``."""
    require_quiesce: bool | None = None
    """Nova's image property ``os_require_quiesce``: a quiesced snapshot
    the guest agent cannot freeze fails instead of going on unquiesced."""
    guest_agent: bool | None = None
    """Nova's image property ``hw_qemu_guest_agent``: False means the
    guest has no agent (never quiesced); None: try."""
    memory: str | None = None
    """When a snapshot also saves the VM's memory state (qemu driver):
    'always', 'never' or a number of seconds between such points; default
    ``[agent] memory_interval``."""
    disk_roles: dict | None = None
    """Disk name -> 'root', 'ephemeral' or 'swap' (ha_snapshot/
    disk_layout.py): unnamed disks are 'ephemeral', the root is ``disk``
    (the first disk when unset)."""
    protect_swap: bool | None = None
    """Whether the disks of role 'swap' are protected too (not by
    default: a swap disk's content is of no use to a restarted guest)."""
    unknown: abc.Mapping = dataclasses.field(default_factory=dict,
                                             compare=False)
    """Keys an older agent's state file holds that this version does not
    know: kept and written back, never used."""

    _TYPES = {'nova': _BOOL, 'uuid': _STR, 'name': _STR, 'domain': _STR,
              'driver': _STR, 'policy': _STR, 'qmp_path': _STR,
              'pid': _INT, 'log_path': _STR, 'qga_path': _STR,
              'disk': _STR, 'disk_path': _STR,
              'vm': ((VMOptions,), 'a JSON object'),
              'quiesce': _STR, 'require_quiesce': _BOOL,
              'guest_agent': _BOOL, 'memory': _STR,
              'disk_roles': ((dict,), 'a JSON object'),
              'protect_swap': _BOOL}

    def __post_init__(self):
        if isinstance(self.vm, abc.Mapping):
            # NOTE: frozen: set once, here, before anyone sees it.
            object.__setattr__(self, 'vm', VMOptions.from_dict(self.vm))
        _check_fields(self, '')
        if self.quiesce is not None:
            quiesce_interval(self.quiesce, 0)
        if self.memory is not None:
            quiesce_interval(self.memory, 0, 'memory')
        for name, role in (self.disk_roles or {}).items():
            if role not in ROLES:
                raise exception.InvalidProtectionSpec(
                    reason='key %r: disk %r has role %r, expected one of %s'
                    % ('disk_roles', name, role, ', '.join(ROLES)))

    def role_of(self, disk: str, root: str) -> str:
        """The role of disk ``disk``; ``root``: the root disk's name."""
        if disk == root:
            return 'root'
        role = (self.disk_roles or {}).get(disk, 'ephemeral')
        # NOTE: one root only: another disk named root is ephemeral.
        return 'ephemeral' if role == 'root' else role

    def protects(self, role: str) -> bool:
        """Whether disks of ``role`` are protected."""
        return role != 'swap' or bool(self.protect_swap)

    def memory_every(self, default: int) -> int:
        """Seconds between memory states for this server: 0 never, -1
        every snapshot; ``default`` is ``[agent] memory_interval``."""
        return quiesce_interval(self.memory, default, 'memory')

    def quiesce_every(self, default: int) -> int:
        """Seconds between quiesced snapshots for this server: 0 never,
        -1 every snapshot; ``default`` is ``[agent] quiesce_interval``."""
        if self.guest_agent is False:
            return 0
        return quiesce_interval(self.quiesce, default)

    @classmethod
    def from_dict(cls, data, *,
                  keep_unknown: bool = False) -> 'ProtectionSpec':
        """The spec of a JSON object; raises InvalidProtectionSpec naming
        the first key that is unknown or of the wrong type."""
        if isinstance(data, ProtectionSpec):
            return data
        kwargs = _from_mapping(cls, data, '', keep_unknown)
        if isinstance(kwargs.get('vm'), abc.Mapping):
            kwargs['vm'] = VMOptions.from_dict(kwargs['vm'],
                                               keep_unknown=keep_unknown)
        return cls(**kwargs)

    def to_dict(self) -> dict:
        """The JSON object: the keys that are set, as before."""
        return _to_mapping(self)

    def replace(self, **changes) -> 'ProtectionSpec':
        """A copy with ``changes`` (checked like ``from_dict``'s keys;
        None unsets a key)."""
        data = dict(self.to_dict(), **changes)
        return self.from_dict({k: v for k, v in data.items()
                               if v is not None}, keep_unknown=True)

    def driver_name(self, default: str) -> str:
        """The hypervisor driver of this VM; ``default`` is ``[agent]
        hypervisor``."""
        return self.driver or (NOVA_DRIVER if self.nova else default)

    def for_agent(self, instance: str, default_driver: str
                  ) -> 'ProtectionSpec':
        """The spec completed for protection by an agent whose ``[agent]
        hypervisor`` is ``default_driver``: a Nova server gets the libvirt
        driver and its domain; refused (InvalidProtectionSpec) when the
        chosen driver lacks what it needs to find the VM."""
        spec = self
        if spec.nova:
            spec = spec.replace(driver=spec.driver or NOVA_DRIVER,
                                domain=spec.domain or spec.uuid or instance)
        driver = spec.driver_name(default_driver)
        needs = (('domain',) if driver == NOVA_DRIVER
                 else ('name', 'qmp_path', 'pid'))
        missing = [k for k in needs if getattr(spec, k) is None]
        if missing:
            raise exception.InvalidProtectionSpec(
                reason='it lacks %s, which the %s driver needs (a Nova '
                'server needs the libvirt driver)'
                % (', '.join(map(repr, missing)), driver))
        if spec.name is None:
            spec = spec.replace(name=spec.domain)
        return spec
