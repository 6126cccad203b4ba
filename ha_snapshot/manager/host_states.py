"""What to do about each compute host, decided from what was observed.

Pure functions over plain values: no database, no Nova, no clock of its
own (the caller passes ``now``), so every decision is tested by feeding
observations in. :func:`decide_round` takes one round's observations
(one per host: how long its agent has been silent, what Nova says of its
compute service, whether a fencing driver sees it powered off, whether a
failure of it is still open) with what was remembered of each host from
the rounds before, and returns one :class:`Decision` per host plus
whether the round looks like a partition of the mirror network.

The rules (issue 11, "Detect"):

* agent beating: healthy; if it was suspect it came back, and a new
  silence within ``hold_down`` seconds of that is held (flapping);
* agent silent for ``agent_timeout``: suspect; nothing is done while Nova
  reports its compute service ``up`` (the agent may be all that died):
  :attr:`Action.ALERT`, reported once per episode;
* suspect and Nova reports the service ``down`` (or a fencing driver sees
  the host powered off), for ``confirm_time`` seconds of rounds: failed,
  :attr:`Action.FENCE`;
* more than ``partition_fraction`` of the monitored hosts (and at least
  ``partition_min_hosts``) silent at once: the mirror environment is cut
  off, not the hosts dead: nothing is fenced;
* a host with an open failure record is not fenced again (unless its
  fencing failed: then it is tried again); when it is back (agent beats
  and Nova reports it ``up``, i.e. an operator unset forced_down) its
  record is closed (:attr:`Action.CLOSE`), nothing is undone.

Imports nothing from ha_snapshot but ha_snapshot.statuses.
"""

import dataclasses
import enum

from ha_snapshot import statuses

FailureState = statuses.HostFailureState


class HostState(enum.StrEnum):
    HEALTHY = 'healthy'
    SUSPECT = 'suspect'
    """The agent is silent; nothing confirms the host failed."""
    HELD = 'held'
    """Silent again soon after coming back: flapping, not acted on."""
    FAILED = 'failed'
    """Agent silent and Nova (or a fencing driver) says the host is down."""


class Action(enum.StrEnum):
    NOTHING = 'nothing'
    ALERT = 'alert'
    """Agent silent but Nova reports the host up: log loudly, act not."""
    FENCE = 'fence'
    """Confirmed failed: fence, then (once fenced) evacuate."""
    CLOSE = 'close'
    """The host of an open failure record is back: close the record."""


# NOTE: failure records whose host is fenced (or further on): a silent
# host in one of these is not fenced again.
FENCED_STATES = frozenset({FailureState.FENCED, FailureState.EVACUATING,
                           FailureState.EVACUATED,
                           FailureState.EVACUATION_FAILED})


@dataclasses.dataclass(frozen=True)
class Limits:
    agent_timeout: float
    confirm_time: float = 0.0
    hold_down: float = 0.0
    partition_fraction: float = 0.5
    partition_min_hosts: int = 2

    @classmethod
    def from_conf(cls, conf) -> 'Limits':
        opts = conf.host_monitor
        return cls(agent_timeout=opts.agent_timeout,
                   confirm_time=opts.confirm_time, hold_down=opts.hold_down,
                   partition_fraction=opts.partition_fraction,
                   partition_min_hosts=opts.partition_min_hosts)


@dataclasses.dataclass(frozen=True)
class Observation:
    """One host in one round."""

    host: str
    agent_age: float
    """Seconds since its agent's last heartbeat."""
    nova: str | None
    """Nova's state of its compute service: 'up', 'down', or None when
    Nova lists no such service for the host."""
    disabled: bool = False
    """The service is disabled in Nova (maintenance): left alone."""
    powered_off: bool = False
    """A fencing driver sees the host powered off."""
    failure: str | None = None
    """The state of the host's open failure record, if it has one."""


@dataclasses.dataclass(frozen=True)
class Memory:
    """What the monitor keeps of a host between rounds."""

    state: HostState = HostState.HEALTHY
    suspect_since: float | None = None
    down_since: float | None = None
    """First round of the current run of rounds that saw it silent and
    down (confirm_time counts from here)."""
    back_at: float | None = None
    """When it last came back from suspect (hold_down counts from here)."""
    last: str = ''
    """The state and action of the last decision: a decision is reported
    (logged loudly) when they change, once per episode."""


@dataclasses.dataclass(frozen=True)
class Decision:
    host: str
    action: Action
    memory: Memory
    reason: str
    report: bool = False
    """The state or action changed: log it (once per episode)."""

    @property
    def state(self) -> HostState:
        return self.memory.state


@dataclasses.dataclass(frozen=True)
class Round:
    decisions: dict
    """host -> Decision."""
    partition: bool
    silent: tuple
    """The monitored hosts whose agents are silent."""
    monitored: int
    """Hosts counted for the partition test."""


def silent(obs: Observation, limits: Limits) -> bool:
    return obs.agent_age > limits.agent_timeout


def _monitored(obs: Observation) -> bool:
    # NOTE: hosts Nova does not list, disabled hosts and hosts already
    # failed say nothing about the network of the others.
    return (obs.nova is not None and not obs.disabled
            and obs.failure is None)


def is_partition(observations, limits: Limits) -> tuple:
    """(partitioned, silent monitored hosts, monitored count)."""
    watched = [o for o in observations if _monitored(o)]
    quiet = tuple(sorted(o.host for o in watched if silent(o, limits)))
    partitioned = (len(quiet) >= limits.partition_min_hosts
                   and len(quiet) > limits.partition_fraction * len(watched))
    return partitioned, quiet, len(watched)


def decide_round(observations, memories: dict, limits: Limits,
                 now: float) -> Round:
    """One round: a Decision per observed host. ``memories``: host ->
    Memory from the previous round (a host not in it starts healthy)."""
    observations = list(observations)
    partitioned, quiet, watched = is_partition(observations, limits)
    decisions = {}
    for obs in observations:
        memory = memories.get(obs.host) or Memory()
        decisions[obs.host] = decide(obs, memory, limits, now,
                                     partition=partitioned)
    return Round(decisions, partitioned, quiet, watched)


def _back(obs, memory, now) -> Decision:
    """The agent beats."""
    if obs.failure is not None:
        if obs.nova == 'up':
            return Decision(obs.host, Action.CLOSE,
                            Memory(back_at=now), 'back: its agent beats and '
                            'Nova reports its compute service up; the '
                            'failure record is closed, nothing is undone',
                            report=True)
        key = 'back/open'
        return Decision(obs.host, Action.NOTHING, Memory(
            back_at=memory.back_at, last=key),
            'its agent beats again but Nova reports its compute service '
            '%s: the failure record stays open (unset forced_down once '
            'Nova cleaned up the host)' % (obs.nova or 'unknown'),
            report=memory.last != key)
    if memory.state == HostState.HEALTHY:
        return Decision(obs.host, Action.NOTHING, memory, 'agent beats')
    return Decision(obs.host, Action.NOTHING, Memory(back_at=now),
                    'came back (was %s): its agent beats again'
                    % memory.state, report=True)


def decide(obs: Observation, memory: Memory, limits: Limits, now: float, *,
           partition: bool = False) -> Decision:
    """The decision for one host (see the module's docstring)."""
    if not silent(obs, limits):
        return _back(obs, memory, now)
    suspect_since = memory.suspect_since
    if suspect_since is None:
        suspect_since = now - (obs.agent_age - limits.agent_timeout)

    def keep(state, action, reason, *, down_since=None, quiet=False):
        key = '%s/%s' % (state, action)
        mem = Memory(state=state, suspect_since=suspect_since,
                     down_since=down_since, back_at=memory.back_at,
                     last=key)
        return Decision(obs.host, action, mem, reason,
                        report=not quiet and key != memory.last)

    if obs.failure in FENCED_STATES:
        return keep(HostState.FAILED, Action.NOTHING,
                    'already %s (open failure record): nothing more to do '
                    'here' % obs.failure, quiet=True)
    if partition:
        return keep(HostState.SUSPECT, Action.NOTHING,
                    'its agent is silent with most others: the mirror '
                    'network looks partitioned, nothing is done',
                    quiet=True)
    if obs.nova is None:
        return keep(HostState.SUSPECT, Action.NOTHING,
                    'its agent is silent and Nova lists no compute service '
                    'on it: nothing is done')
    if obs.disabled:
        return keep(HostState.SUSPECT, Action.NOTHING,
                    'its agent is silent and its compute service is '
                    'disabled in Nova (maintenance): nothing is done')
    if (memory.back_at is not None
            and now - memory.back_at < limits.hold_down):
        return keep(HostState.HELD, Action.NOTHING,
                    'silent again %.0f s after it came back: flapping, held '
                    'for %.0f s more' % (now - memory.back_at,
                                         limits.hold_down
                                         - (now - memory.back_at)))
    down = obs.nova == 'down' or obs.powered_off
    if not down:
        return keep(HostState.SUSPECT, Action.ALERT,
                    'its agent has been silent for %.0f s but Nova reports '
                    'its compute service up: the agent may be all that '
                    'died; nothing is fenced or evacuated'
                    % obs.agent_age)
    down_since = memory.down_since if memory.down_since is not None else now
    why = ('Nova reports its compute service down' if obs.nova == 'down'
           else 'the fencing driver sees it powered off')
    if now - down_since < limits.confirm_time:
        return keep(HostState.SUSPECT, Action.NOTHING,
                    'its agent is silent and %s for %.0f s of '
                    'confirm_time %.0f s' % (why, now - down_since,
                                            limits.confirm_time),
                    down_since=down_since, quiet=True)
    retry = ' (fencing failed before: tried again)' if (
        obs.failure == FailureState.FENCE_FAILED) else ''
    return keep(HostState.FAILED, Action.FENCE,
                'failed: its agent has been silent for %.0f s and %s%s'
                % (obs.agent_age, why, retry), down_since=down_since)
