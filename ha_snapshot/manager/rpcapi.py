"""Client side of the manager's RPC API (what agents and the API call).

API version history:

* 1.0 - Initial version: register_instance, put_part, commit_delta,
        report_health, heartbeat, get_manifest, get_chunk.
* 1.1 - For ha-snapshot-api: protect, unprotect, recover, alarm.
* 1.2 - commit_delta takes ``raise_parts_missing``: a caller that sets it
        gets PartsMissing (the missing part numbers as data) when the
        manager does not hold every part; 1.1 callers get InvalidDelta
        with the same message.
* 1.3 - commit_delta's header may carry ``taken_at`` (when the agent
        asked for the snapshot) and ``consistency`` ('crash' or
        'filesystem'; a header without it is 'crash'); to a manager capped
        below 1.3 both are left out (a manager before 1.3 refuses header
        keys it does not know).
* 1.4 - Memory states of restore points: memory_chunks_missing,
        put_memory_chunks, commit_memory_state, get_memory_state,
        get_memory_chunk.
* 1.5 - Every writable disk of a server in one delta: commit_delta's
        header may carry ``disks`` (the layout of ha_snapshot/
        disk_layout.py), and get_manifest answers with it. A header
        without it is the root disk alone, as before; agents send one
        only to a manager that takes 1.5 (``can_multi_disk``).

Every method pins the version it needs, so an agent newer than its manager
fails clearly (oslo.messaging's version check) instead of sending calls the
manager cannot read. Every message is signed by the caller's identity
(ha_snapshot/rpc_auth.py): an agent's host key, or the API's key.

Several manager replicas: one owns each instance (manager/membership.py),
and a delta's parts and commit must reach that one. The answers to
``register_instance`` and ``commit_delta`` name the owner, and so does a
``WrongOwner`` refusal; the client remembers it per instance and sends
that instance's ``put_part`` and ``commit_delta`` to ``topic.<owner>``.
Without a known owner (first contact, after a timeout: the owner may be
dead) they go to the shared topic, where any replica answers or names the
owner. A single manager names none: everything goes to the shared topic.
"""

import contextlib
import threading

import kombu.exceptions
import oslo_messaging as messaging

from ha_snapshot import exception
from ha_snapshot import rpc
from ha_snapshot import rpc_auth

VERSION = '1.5'


@contextlib.contextmanager
def _bus_errors():
    # NOTE: when a call or cast gives up connecting to the broker (the
    # clients have a retry count), the rabbit driver lets kombu's error out
    # instead of a messaging error: callers retry messaging errors only.
    try:
        yield
    except kombu.exceptions.OperationalError as e:
        raise messaging.MessageDeliveryFailure(
            'the message bus is unreachable: %s' % e) from e


class ManagerAPI:

    def __init__(self, transport, timeout: int | None = None,
                 version_cap: str | None = None,
                 signer: rpc_auth.Signer | None = None):
        """``signer``: who calls (an agent's host identity, the API's);
        None signs as the API with this process's ephemeral key (tests)."""
        self.client = rpc.get_client(transport, rpc.MANAGER_TOPIC, VERSION,
                                     version_cap=version_cap, timeout=timeout)
        self.signer = signer or rpc_auth.Signer(rpc_auth.API,
                                                rpc_auth.Keys.ephemeral())
        # NOTE: instance -> host of the replica that owns it, as last told.
        self._owners: dict[str, str] = {}
        self._owners_lock = threading.Lock()

    def owner(self, instance: str) -> str | None:
        """The replica the deltas of ``instance`` go to; None: the shared
        topic."""
        with self._owners_lock:
            return self._owners.get(instance)

    def _learn(self, instance: str, owner) -> None:
        with self._owners_lock:
            if isinstance(owner, str) and owner and owner != 'unknown':
                self._owners[instance] = owner
            else:
                self._owners.pop(instance, None)

    def forget(self, instance: str) -> None:
        """Forget the owner of ``instance`` (no longer protected here)."""
        self._learn(instance, None)

    def _routed(self, owned: str, method: str, timeout=None, **kwargs):
        """A call about instance ``owned``'s delta, to its owner; learns
        the owner from the answer, a WrongOwner refusal or a timeout."""
        try:
            answer = self._call(method, timeout=timeout,
                                server=self.owner(owned), **kwargs)
        except exception.WrongOwner as e:
            self._learn(owned, e.kwargs.get('owner'))
            raise
        except messaging.MessagingTimeout:
            # NOTE: the owner may be dead: ask the shared topic next.
            self._learn(owned, None)
            raise
        if isinstance(answer, dict) and 'owner' in answer:
            self._learn(owned, answer['owner'])
        return answer

    def _context(self, method, kwargs):
        return rpc.signed_context(self.signer, rpc_auth.MANAGER, method,
                                  kwargs)

    def _call(self, method, version='1.0', timeout=None, server=None,
              **kwargs):
        # NOTE: prepare(timeout=None) would replace the client's timeout
        # ([agent] rpc_timeout) with rpc_response_timeout.
        extra = {} if timeout is None else {'timeout': timeout}
        if server is not None:
            extra['server'] = server
        cctxt = self.client.prepare(version=version, **extra)
        with _bus_errors():
            return cctxt.call(self._context(method, kwargs), method,
                              **kwargs)

    def _cast(self, method, version='1.0', **kwargs):
        cctxt = self.client.prepare(version=version)
        with _bus_errors():
            cctxt.cast(self._context(method, kwargs), method, **kwargs)

    def register_instance(self, instance: str, project: str, host: str,
                          driver: str, details: dict) -> dict:
        """Register a snapshot agent; returns what the manager holds (and
        who owns the instance: its deltas go there)."""
        answer = self._call('register_instance', instance=instance,
                            project=project, host=host, driver=driver,
                            details=details)
        if isinstance(answer, dict):
            self._learn(instance, answer.get('owner'))
        return answer

    def put_part(self, instance: str, sequence: int, part: dict,
                 timeout=None) -> dict:
        """Spool one part (idempotent by instance, sequence, index)."""
        return self._routed(instance, 'put_part', timeout=timeout,
                            instance=instance, sequence=sequence, part=part)

    def commit_delta(self, header: dict, timeout=None) -> dict:
        """Merge the spooled parts; returns only once durable.

        Raises PartsMissing when the manager does not hold every part
        (send the delta again); with a version cap below 1.2 that is a
        plain InvalidDelta.
        """
        if header.get('disks') is not None:
            if not self.can_multi_disk():
                raise exception.HaSnapshotException(
                    'A delta of several disks needs a manager of RPC API '
                    '1.5; this client is capped below it.')
            return self._routed(header.get('instance'), 'commit_delta',
                                version='1.5', timeout=timeout,
                                header=header, raise_parts_missing=True)
        header = {k: v for k, v in header.items() if k != 'disks'}
        if self.client.can_send_version('1.3'):
            return self._routed(header.get('instance'), 'commit_delta',
                                version='1.3', timeout=timeout,
                                header=header, raise_parts_missing=True)
        header = {k: v for k, v in header.items()
                  if k not in ('taken_at', 'consistency')}
        if self.client.can_send_version('1.2'):
            return self._routed(header.get('instance'), 'commit_delta',
                                version='1.2', timeout=timeout,
                                header=header, raise_parts_missing=True)
        return self._routed(header.get('instance'), 'commit_delta',
                            timeout=timeout, header=header)

    def report_health(self, instance: str, host: str, reason: str,
                      details: dict) -> str | None:
        """A call, not a cast: oslo.messaging acknowledges a message before
        it is dispatched, so a cast taken by a manager that dies is lost;
        the caller calls again until one answers. Returns what the manager
        decided (None from a manager older than this call)."""
        return self._call('report_health', instance=instance, host=host,
                          reason=reason, details=details)

    def heartbeat(self, host: str, instances: list) -> None:
        self._cast('heartbeat', host=host, instances=instances)

    def get_manifest(self, instance: str, restore_point: str | None) -> dict:
        return self._call('get_manifest', instance=instance,
                          restore_point=restore_point)

    def get_chunk(self, instance: str, restore_point: str,
                  index: int) -> str:
        return self._call('get_chunk', instance=instance,
                          restore_point=restore_point, index=index)

    def can_multi_disk(self) -> bool:
        """Whether the manager takes deltas of several disks (1.5)."""
        return self.client.can_send_version('1.5')

    # --- 1.4: memory states --------------------------------------------------

    def can_memory_state(self) -> bool:
        """Whether the manager takes memory states (1.4)."""
        return self.client.can_send_version('1.4')

    def memory_chunks_missing(self, instance: str, restore_point: str,
                              shas: list, timeout=None) -> list:
        """Which of ``shas`` the store lacks (the others are kept)."""
        return self._call('memory_chunks_missing', version='1.4',
                          timeout=timeout, instance=instance,
                          restore_point=restore_point, shas=shas)

    def put_memory_chunks(self, instance: str, restore_point: str,
                          chunks: list, timeout=None) -> int:
        """Store ``[[sha256, length, base64 zstd frame], ...]``."""
        return self._call('put_memory_chunks', version='1.4',
                          timeout=timeout, instance=instance,
                          restore_point=restore_point, chunks=chunks)

    def commit_memory_state(self, instance: str, restore_point: str,
                            manifest: dict, timeout=None) -> dict:
        return self._call('commit_memory_state', version='1.4',
                          timeout=timeout, instance=instance,
                          restore_point=restore_point, manifest=manifest)

    def get_memory_state(self, instance: str,
                         restore_point: str) -> dict | None:
        """The memory state of a restore point, None if it has none (or
        the manager is older than 1.4)."""
        if not self.can_memory_state():
            return None
        return self._call('get_memory_state', version='1.4',
                          instance=instance, restore_point=restore_point)

    def get_memory_chunk(self, instance: str, restore_point: str,
                         index: int) -> str:
        return self._call('get_memory_chunk', version='1.4',
                          instance=instance, restore_point=restore_point,
                          index=index)

    # --- 1.1: what ha-snapshot-api asks of the manager -----------------------

    def protect(self, instance: str, project: str | None,
                host: str | None = None, policy: str | None = None) -> dict:
        """Protect a server (idempotent); with no ``host`` the manager asks
        Nova where it runs (and, with no ``project``, whose it is)."""
        return self._call('protect', version='1.1', instance=instance,
                          project=project, host=host, policy=policy)

    def unprotect(self, instance: str) -> None:
        """Stop protecting a server; its restore points stay."""
        return self._call('unprotect', version='1.1', instance=instance)

    def recover(self, instance: str, restore_point: str | None = None,
                reason: str = 'operator request') -> dict:
        """Start a recovery now (no cooldown); returns the recovery."""
        return self._call('recover', version='1.1', instance=instance,
                          restore_point=restore_point, reason=reason)

    def alarm(self, instance: str, alarm: dict) -> str:
        """Report an alarm's transition into "alarm"; returns what the
        recovery state machine started (or why nothing)."""
        return self._call('alarm', version='1.1', instance=instance,
                          alarm=alarm)
