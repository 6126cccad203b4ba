"""The host monitor: finds failed compute hosts, fences them, hands them on.

Every ``[host_monitor] check_interval`` seconds one manager replica (the
holder of the leader lease ``leader:host-monitor``; any replica alone)
runs a round:

1. reads every agent's last heartbeat from the database (``agents``) and
   every ``nova_service_binary`` service from Nova's os-services API, and
   the open failure records (``host_failures``);
2. decides per host with :mod:`ha_snapshot.manager.host_states` (pure:
   suspect, held, alert, fence, close) and whether the round looks like a
   partition of the mirror network;
3. logs what changed (an agent silent while Nova reports its host up is
   an ERROR, once per episode), records a partition as an open row of
   host ``*`` (closed when it ends), fences each host decided failed with
   the fencing driver (ha_snapshot.fencing) and records the outcome;
4. hands every open record that is ``fenced`` or ``evacuating`` (fenced
   in this round or an earlier one, by this leader or another) to the
   evacuation (ha_snapshot.manager.evacuation), which starts, follows and
   ends the evacuation of the host's protected servers; with
   ``[host_monitor] evacuate = False`` the record stays ``fenced``. A
   host whose fencing failed is never handed on: no fencing, no
   evacuation; it is fenced again at the next round while it stays
   failed.

What the rounds remember of each host (how long it has been suspect,
when it came back) lives in the leader's memory: a new leader starts
afresh (a host's ``confirm_time`` and ``hold_down`` count again from its
first round). What was done lives in the database, so a new leader never
fences a host twice.

Nova unreachable, or the database: the round is skipped with a warning
and nothing is decided. An agent's silence is counted from its last
heartbeat, or from when this manager started if that is later: while no
manager ran no heartbeat could be recorded, and a restart of every
replica must not look like every host failing. Agent heartbeat times
are the manager replicas' clocks (``agents.last_seen``): keep them in
sync (NTP).

May import the database, ha_snapshot.manager.membership and host_states,
ha_snapshot.fencing, ha_snapshot.openstack and ha_snapshot.exception.
"""

import dataclasses
import threading

from oslo_log import log as logging

from ha_snapshot.db import engine as db_engine
from ha_snapshot.db import host_failures as db_failures
from ha_snapshot import exception
from ha_snapshot import fencing
from ha_snapshot.manager import host_states
from ha_snapshot.manager import membership as membership_mod
from ha_snapshot.openstack import clients
from ha_snapshot import statuses

LOG = logging.getLogger(__name__)

LEADER_LEASE = 'leader:host-monitor'

Action = host_states.Action
Failure = statuses.HostFailureState


# NOTE: the states of a record the evacuation works on.
EVACUATION_STATES = (Failure.FENCED, Failure.EVACUATING)


class HostMonitor:
    """``membership``: this replica among several (rounds then run only
    while it holds the leader lease). ``driver``: a fencing driver
    (default: the one ``[host_monitor] fencing_driver`` names).
    ``evacuation``: has ``step(record, fence)`` (manager.evacuation.
    HostEvacuation), called at each round for each fenced host; None
    leaves fenced hosts to the operator."""

    def __init__(self, conf, db, *, membership=None,
                 connect=clients.connection, driver=None, evacuation=None):
        nova = conf.nova
        if not (nova.auth_type or nova.auth_section):
            raise exception.ConfigurationError(
                reason='[host_monitor] enabled needs [nova] credentials '
                '(auth_type and its options) of a user allowed to list and '
                'update compute services')
        self.conf = conf
        self.db = db
        self.failures = db_failures.HostFailures(db)
        self._connect = connect
        self.driver = driver or fencing.get_driver(conf)
        self.driver.check()
        self.evacuation = evacuation
        self._told = set()
        self.leader = membership_mod.Leader(
            membership, LEADER_LEASE, self._lease_duration, 'Host monitor')
        self.memories = {}
        self.started = db.clock()
        self._stop = threading.Event()
        self._thread = None

    def _lease_duration(self) -> float:
        return (self.conf.host_monitor.check_interval
                + self.conf.manager_cluster.lease_duration)

    # --- a round ------------------------------------------------------------

    def run_once(self) -> host_states.Round | None:
        """One round if this replica leads, else None."""
        if not self.leader.lead():
            # NOTE: what another leader saw since is not ours to keep.
            self.memories = {}
            LOG.debug('Host monitor: round skipped, another replica holds '
                      '%s', LEADER_LEASE)
            return None
        return self.check()

    def _services(self) -> dict:
        binary = self.conf.host_monitor.nova_service_binary
        try:
            nova = self._connect(self.conf, 'nova').compute
            services = list(nova.services(binary=binary))
        except clients.API_ERRORS as e:
            raise exception.OpenStackError(
                service='Nova', reason='listing the %s services: %s'
                % (binary, clients.error_reason(e)))
        return {s.host: s for s in services if s.binary == binary}

    def observe(self, now: float) -> tuple:
        """(observations, Nova's services by host, open records)."""
        limits = host_states.Limits.from_conf(self.conf)
        services = self._services()
        records = self.failures.open()
        observations = []
        for agent in self.db.list_agents():
            service = services.get(agent.host)
            record = records.get(agent.host)
            # NOTE: no heartbeat can have been recorded while no manager
            # ran: silence from before this process started is not
            # counted (a restart of every replica is no host failure).
            age = max(0.0, min(now - db_engine.to_timestamp(agent.last_seen),
                               now - self.started))
            observations.append(host_states.Observation(
                host=agent.host, agent_age=age,
                nova=getattr(service, 'state', None),
                disabled=getattr(service, 'status', None) == 'disabled',
                failure=record.state if record is not None else None))
        if host_states.is_partition(observations, limits)[0]:
            # NOTE: nothing is acted on in a partition: no BMC is asked.
            return observations, services, records
        for n, obs in enumerate(observations):
            if (obs.nova == 'up' and host_states.silent(obs, limits)
                    and obs.failure not in host_states.FENCED_STATES):
                # NOTE: only a silent host Nova still calls up is worth a
                # question to its BMC.
                observations[n] = dataclasses.replace(
                    obs, powered_off=self.driver.powered_off(obs.host))
        return observations, services, records

    def check(self) -> host_states.Round:
        now = self.db.clock()
        observations, services, records = self.observe(now)
        limits = host_states.Limits.from_conf(self.conf)
        result = host_states.decide_round(observations, self.memories,
                                          limits, now)
        self._partition(result, records.get(db_failures.PARTITION_HOST),
                        now)
        for host, decision in sorted(result.decisions.items()):
            self._log(decision)
            if decision.action == Action.FENCE:
                self._fence(decision, services[host], records.get(host))
            elif decision.action == Action.CLOSE:
                self._close(decision, records[host])
        self.memories = {h: d.memory for h, d in result.decisions.items()}
        self._evacuate()
        return result

    def _evacuate(self) -> None:
        """One step of the evacuation of each fenced host."""
        for host, record in sorted(self.failures.open().items()):
            if record.state not in EVACUATION_STATES:
                continue
            if self.evacuation is None:
                if record.id not in self._told:
                    self._told.add(record.id)
                    LOG.warning('Host %s is fenced (failure %s); its servers '
                                'are not evacuated ([host_monitor] evacuate '
                                '= False): evacuate them with Nova or '
                                'Masakari', host, record.id)
                continue
            try:
                done = self.evacuation.step(record, fence=self.leader.fence)
            except exception.LeaseLost:
                raise
            except exception.HaSnapshotException as e:
                LOG.warning('Host %s: evacuation step failed (tried again at '
                            'the next round): %s', host, e)
                continue
            LOG.info('Host %s: evacuation: %s', host, done)

    def _log(self, decision: host_states.Decision) -> None:
        if not decision.report:
            return
        if decision.action in (Action.ALERT, Action.FENCE):
            LOG.error('Host %s: %s', decision.host, decision.reason)
        elif decision.state == host_states.HostState.HEALTHY:
            LOG.info('Host %s: %s', decision.host, decision.reason)
        else:
            LOG.warning('Host %s: %s', decision.host, decision.reason)

    def _partition(self, result, record, now: float) -> None:
        fence = self.leader.fence
        if result.partition and record is None:
            reason = ('agents of %d of %d monitored hosts silent at once (%s):'
                      ' the mirror network looks partitioned; no host is '
                      'fenced or evacuated' % (
                          len(result.silent), result.monitored,
                          ', '.join(result.silent)))
            LOG.error('Host monitor alarm: %s', reason)
            self.failures.create(db_failures.PARTITION_HOST, Failure.PARTITION,
                                 detected_at=db_engine.to_datetime(now),
                                 reason=reason, fence=fence)
        elif not result.partition and record is not None:
            LOG.warning('Host monitor: the partition recorded at %s ended '
                        '(%d of %d monitored hosts silent now)',
                        record.detected_at, len(result.silent),
                        result.monitored)
            self.failures.update(record.id, state=Failure.PARTITION_ENDED,
                                 closed_at=db_engine.to_datetime(now),
                                 fence=fence)

    def _fence(self, decision, service, record) -> None:
        host, fence = decision.host, self.leader.fence
        now = db_engine.to_datetime(self.db.clock())
        if record is None:
            record = self.failures.create(
                host, Failure.CONFIRMED, reason=decision.reason,
                detected_at=db_engine.to_datetime(decision.memory.suspect_since),
                confirmed_at=now, fencing_driver=self.driver.name,
                fence=fence)
        attempts = record.fence_attempts + 1
        # NOTE: the lease renewed and the attempt recorded under it right
        # before the fencing call: a replica that lost the lead (a stalled
        # round, a slow BMC) fences nothing, whatever state the record
        # is in.
        self.leader.hold()
        fence = self.leader.fence
        record = self.failures.update(record.id, fence_attempts=attempts,
                                      fence=fence)
        try:
            result = self.driver.fence(host, service)
        except exception.FencingError as e:
            LOG.error('Host %s NOT fenced (attempt %d; tried again at the '
                      'next round): %s. None of its servers is evacuated '
                      'until it is.', host, attempts, e)
            self.failures.update(record.id, state=Failure.FENCE_FAILED,
                                 fence_attempts=attempts,
                                 fencing_driver=self.driver.name,
                                 error=str(e), fence=fence)
            return
        record = self.failures.update(
            record.id, state=Failure.FENCED,
            fenced_at=db_engine.to_datetime(self.db.clock()),
            fence_attempts=attempts, fencing_driver=self.driver.name,
            result=result, error=None, fence=fence)
        LOG.warning('Host %s fenced (%s): %s', host, self.driver.name,
                    result)

    def _close(self, decision, record) -> None:
        self.failures.update(record.id, state=Failure.RETURNED,
                             closed_at=db_engine.to_datetime(self.db.clock()),
                             fence=self.leader.fence)

    # --- the thread ---------------------------------------------------------

    def _run(self) -> None:
        interval = self.conf.host_monitor.check_interval
        while not self._stop.wait(interval):
            try:
                self.run_once()
            except exception.LeaseLost as e:
                LOG.warning('Host monitor: lost the lead mid-round (%s); '
                            'nothing more recorded', e)
                self.memories = {}
            except exception.HaSnapshotException as e:
                LOG.warning('Host monitor: round skipped (tried again in '
                            '%s s): %s', interval, e)
            except Exception:
                LOG.exception('Host monitor: round failed (tried again in '
                              '%s s)', interval)

    def start(self) -> None:
        self._stop.clear()
        self._thread = threading.Thread(target=self._run, daemon=True,
                                        name='host-monitor')
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(60)
        self.leader.release()
