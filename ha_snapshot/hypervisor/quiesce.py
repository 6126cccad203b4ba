"""Application-consistent snapshots: a snapshot inside a guest file system
freeze, by the guest agent, bounded in time.

:func:`quiesced` runs a driver's snapshot (``take``) between
``guest-fsfreeze-freeze`` and ``guest-fsfreeze-thaw``, by the rules the
peers learned (Proxmox, KubeVirt, Nova):

* ping the agent first with a short timeout; a silent agent means an
  unquiesced (crash-consistent) snapshot, unless the server requires
  quiesce: then the snapshot fails (QuiesceFailed) and no disk changes;
* the guest is never frozen longer than ``max_freeze``: a timer sends the
  thaw at that bound whatever happens (a freeze whose answer is lost, a
  slow snapshot); a snapshot that ended after it is crash-consistent;
* always thaw, also after a failed freeze or a lost answer, and check
  that ``guest-fsfreeze-status`` says ``thawed``.

The freeze runs the guest's own ``fsfreeze-hook`` scripts (a database
flushes and holds its writes there): that is qemu-ga's business.

A :class:`Channel` is how a driver reaches the agent: the ``qemu``
driver's unix socket (:class:`SocketChannel`), libvirt's
virDomainFSFreeze/FSThaw (ha_snapshot/hypervisor/libvirt_quiesce.py).

May import the standard library, oslo.log, ha_snapshot.exception and
ha_snapshot.hypervisor.guest_agent.
"""

import dataclasses
import threading
import time

from oslo_log import log as logging

from ha_snapshot import exception
from ha_snapshot.hypervisor import guest_agent

LOG = logging.getLogger(__name__)

CRASH = 'crash'
FILESYSTEM = 'filesystem'
CONSISTENCIES = (CRASH, FILESYSTEM)
THAWED = 'thawed'


@dataclasses.dataclass(frozen=True)
class Options:
    max_freeze: float = 0.5
    """Longest time (s) the guest's file systems stay frozen."""
    ping_timeout: float = 1.0
    """How long the agent may take to answer the first ping."""
    command_timeout: float = 5.0
    """How long a thaw or a status may take."""

    @classmethod
    def from_conf(cls, conf) -> 'Options':
        a = conf.agent
        return cls(max_freeze=a.quiesce_max_freeze,
                   ping_timeout=a.quiesce_ping_timeout,
                   command_timeout=a.quiesce_command_timeout)


@dataclasses.dataclass(frozen=True)
class Outcome:
    consistency: str
    """FILESYSTEM when the snapshot ended while the guest was frozen."""
    frozen_seconds: float | None = None
    """From the freeze sent to the thaw answered (None: not frozen)."""
    reason: str | None = None
    """Why the point is only crash-consistent, when quiesce was asked."""


class Channel:
    """How :func:`quiesced` reaches a guest agent (see the module doc).
    Every method but :meth:`send_thaw` raises GuestAgentError (or
    GuestAgentTimeout) on failure."""

    def open(self, timeout: float) -> None:
        """Take the channel (and e.g. connect)."""

    def close(self) -> None:
        """Let the channel go."""

    def ping(self, timeout: float) -> None:
        raise NotImplementedError

    def freeze(self, timeout: float) -> int:
        raise NotImplementedError

    def thaw(self, timeout: float) -> int:
        raise NotImplementedError

    def status(self, timeout: float) -> str:
        raise NotImplementedError

    def resync(self, timeout: float) -> None:
        """Drop answers of commands whose answer was not read."""

    def send_thaw(self) -> None:
        """A thaw from the freeze bound's timer thread, while the caller
        may wait for another answer: never raises."""
        raise NotImplementedError


class SocketChannel(Channel):
    """The guest agent's unix socket (the ``qemu`` driver)."""

    def __init__(self, path: str, vm: str):
        self.agent = guest_agent.GuestAgent(path, vm)
        self.lock = guest_agent.channel_lock(path)
        self._held = False

    def open(self, timeout: float) -> None:
        if not self.lock.acquire(timeout=timeout):
            raise exception.GuestAgentTimeout(
                vm=self.agent.vm, command='(the socket, held by another '
                'client in this process)', timeout=timeout)
        self._held = True
        try:
            self.agent.connect(timeout)
        except BaseException:
            self.close()
            raise

    def close(self) -> None:
        self.agent.close()
        if self._held:
            self._held = False
            self.lock.release()

    def ping(self, timeout: float) -> None:
        self.agent.ping(timeout)

    def freeze(self, timeout: float) -> int:
        return self.agent.freeze(timeout)

    def thaw(self, timeout: float) -> int:
        return self.agent.thaw(timeout)

    def status(self, timeout: float) -> str:
        return self.agent.status(timeout)

    def resync(self, timeout: float) -> None:
        self.agent.sync(timeout)

    def send_thaw(self) -> None:
        try:
            self.agent.send_thaw()
        except exception.HaSnapshotException as e:
            LOG.warning('VM %s: thaw at the freeze bound not sent: %s',
                        self.agent.vm, e)


def snapshot(vm: str, channel: Channel | None, take, opts: Options,
             quiesce: bool, require: bool):
    """A driver's snapshot (``take()`` returns a hypervisor Snapshot),
    quiesced when asked (``channel`` None: the VM has no guest agent
    channel), with its ``consistency`` and ``frozen_seconds`` set."""
    if not (quiesce or require):
        return take()
    if channel is None:
        snap, outcome = _unquiesced(vm, take, require,
                                    'it has no guest agent channel')
    else:
        snap, outcome = quiesced(vm, channel, take, opts, require)
    return dataclasses.replace(snap, consistency=outcome.consistency,
                               frozen_seconds=outcome.frozen_seconds)


def quiesced(vm: str, channel: Channel, take, opts: Options,
             require: bool = False) -> tuple:
    """``(take(), Outcome)``: ``take()`` inside a bounded freeze (see the
    module doc). Raises QuiesceFailed (nothing taken) when ``require``
    and the guest could not be frozen; whatever ``take`` raises."""
    try:
        channel.open(opts.ping_timeout)
    except exception.GuestAgentError as e:
        return _unquiesced(vm, take, require, 'the guest agent is '
                           'unreachable: %s' % e)
    try:
        try:
            channel.ping(opts.ping_timeout)
        except exception.GuestAgentError as e:
            return _unquiesced(vm, take, require, 'the guest agent is '
                               'silent: %s' % e)
        return _frozen(vm, channel, take, opts, require)
    finally:
        channel.close()


def _unquiesced(vm, take, require, reason):
    if require:
        raise exception.QuiesceFailed(vm=vm, reason=reason)
    LOG.warning('VM %s: %s; snapshot taken unquiesced (crash-consistent)',
                vm, reason)
    return take(), Outcome(CRASH, None, reason)


def _frozen(vm, channel, take, opts, require):
    fired = threading.Event()

    def at_bound():
        # NOTE: set before the thaw is written: an answer read while it
        # is clear cannot be the thaw's.
        fired.set()
        LOG.warning('VM %s: frozen for %s s (the bound): thawing now',
                    vm, opts.max_freeze)
        channel.send_thaw()

    timer = threading.Timer(opts.max_freeze, at_bound)
    timer.daemon = True
    reason = None
    result = taken = None
    t0 = time.monotonic()
    timer.start()
    try:
        try:
            count = channel.freeze(opts.max_freeze)
            if fired.is_set():
                # NOTE: under load the thaw's answer can come first;
                # the command is named either way.
                reason = ('the freeze (guest-fsfreeze-freeze) did not '
                          'answer within the bound (%s s)' % opts.max_freeze)
            else:
                LOG.debug('VM %s: %s file systems frozen in %.1f ms', vm,
                          count, (time.monotonic() - t0) * 1000)
        except exception.GuestAgentError as e:
            reason = 'the freeze failed: %s' % e
        if reason is None:
            result = take()
            taken = True
            if fired.is_set():
                reason = ('the snapshot ended after the freeze bound '
                          '(%s s)' % opts.max_freeze)
    finally:
        timer.cancel()
        if fired.is_set():
            timer.join()
        frozen_seconds = _thaw(vm, channel, opts,
                               stale=fired.is_set() or reason is not None,
                               t0=t0)
    if taken:
        if reason is not None:
            LOG.warning('VM %s: %s; the point is crash-consistent', vm,
                        reason)
            return result, Outcome(CRASH, frozen_seconds, reason)
        return result, Outcome(FILESYSTEM, frozen_seconds)
    # NOTE: the freeze failed (and was undone): no disk changed yet.
    return _unquiesced(vm, take, require, reason)


def _thaw(vm, channel, opts, stale: bool, t0: float) -> float | None:
    """Thaw until ``guest-fsfreeze-status`` says thawed (two tries); the
    seconds frozen (until the thaw was seen). Never raises: a failure is
    logged as an error (the guest may be left frozen: the health
    monitor's ping notices)."""
    for attempt in range(2):
        thawed_at = None
        try:
            if stale or attempt:
                # NOTE: the answers of a lost freeze, of a lost thaw or of
                # the timer's thaw may still come: drop them first.
                channel.resync(opts.command_timeout)
            stale = False
            channel.thaw(opts.command_timeout)
            thawed_at = time.monotonic()
        except exception.GuestAgentError as e:
            LOG.warning('VM %s: thaw: %s; checking the status', vm, e)
            stale = True
        try:
            if stale:
                channel.resync(opts.command_timeout)
            status = channel.status(opts.command_timeout)
        except exception.GuestAgentError as e:
            LOG.warning('VM %s: freeze status: %s', vm, e)
            continue
        if status == THAWED:
            return (thawed_at or time.monotonic()) - t0
        LOG.warning('VM %s: the guest agent says its file systems are %s '
                    'after a thaw', vm, status)
    LOG.error('VM %s: the guest agent did not confirm a thaw after the '
              'snapshot; the guest may still be frozen', vm)
    return None
