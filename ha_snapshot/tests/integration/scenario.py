"""The end-to-end high-availability scenario on the harness's real cloud.

:func:`run` takes the state of a running harness cloud
(tools/cloud; ha-snapshot's three services included) and:

1. uploads to Glance a small image with known content and the project's
   bootable test guest (realguest.py), and makes a flavor for each;
2. boots, as the demo user, server A (the test guest) with metadata
   ``ha_snapshot:protect=true`` and server B (the small image) without;
   reads A's real ``instance.create.end`` off RabbitMQ; waits until the
   API shows A protected with a first restore point, and reads A's
   serial console as it grows (the guest's ``DURABLE n`` lines, stamped);
3. writes known patterns into A's disk, past the guest's partitions,
   while it runs (HMP ``qemu-io`` through libvirt's QEMU monitor
   passthrough), and a pattern into its ephemeral disk (the guest's
   flavor has one), and waits for a restore point after each, sampling
   the API's ``rpo_seconds`` all along;
4. kills A's QEMU process (SIGKILL, by the pid libvirt recorded) and waits
   for a recovery to be started (the agent's health monitor), posting an
   Aodh-shaped alarm to the alarm endpoint only if none comes;
5. waits for the recovery to succeed and A to be ACTIVE again on the
   rebuilt disk; copies that disk and checks every pattern written before
   the restore point used, with qemu-io (not by asking ha-snapshot), the
   ephemeral disk's pattern (Nova made that disk anew), and
   the guest's boot partition; checks the guest as a user would
   (realguest.check_rebuilt, the result's ``guest`` object): it boots,
   the restore point's file system is clean after journal replay and
   holds every record it reported durable before the point's snapshot;
6. waits for the first restore point after the recovery (its delta must
   be small: no full resend), writes once more and waits for a restore
   point holding that write;
7. when the harness runs Aodh: creates a real Aodh event alarm (as the
   demo user) whose action is the server's alarm URL from the API,
   publishes the event Ceilometer would, and waits for Aodh's notifier to
   post it and for the recovery it starts to succeed;
8. B was never protected; A, deleted, stops being protected, and the
   manager's sweep removes A's recovery images from Glance;
9. when the harness runs two compute hosts and :func:`run` is given its
   ``kill_host``: the host-failure scenario (host_failure.py), whose
   measurements are the result's ``host_failure`` object.

It returns the measurements; ``verified`` is true only when every check
held. ``python3 -m ha_snapshot.tests.integration.scenario STATE_JSON``
runs it against a cloud started by hand.
"""

import json
import os
import signal
import subprocess
import sys
import time

from ha_snapshot.guest import build as guest_build
from ha_snapshot.tests.integration import cloudlib
from ha_snapshot.tests.integration import host_failure
from ha_snapshot.tests.integration import realguest

_ts = cloudlib.api_time  # NOTE: API time -> epoch seconds

MiB = 1 << 20
API_VERSION = {'OpenStack-API-Version': 'ha-snapshot 1.0'}
IMAGE_SIZE = 64 * MiB
# NOTE: the image carries 16 MiB of data, so that a full resend after
# the rebuild would be plain in the resumed delta's size.
IMAGE_DATA = 16 * MiB
WRITE = 256 * 1024
WRITES = 4
# NOTE: in the ext4 file system Nova made on the ephemeral disk (which
# the guest never mounts), in a block group's data.
EPHEMERAL_OFFSET = 200 * MiB
EPHEMERAL_PATTERN = 0x5e
PROTECT_TIMEOUT = 180
RECOVERY_TIMEOUT = 600

# What the harness's ha-snapshot services should do differently from a
# production default for this scenario to take minutes, not hours.
HA_OVERRIDES = {
    'policy': {'name': 'fixed', 'interval': 3, 'min_interval': 1},
    'agent': {'health_interval': 0.5, 'health_failures': 2,
              'heartbeat_interval': 2},
    'recovery': {'cooldown': 5, 'rebuild_poll_interval': 1},
    'storage': {'chunk_size': MiB},
    # NOTE: agents beat every 2 s; Nova calls a host down after 20 s
    # without its reports (the harness's service_down_time).
    'host_monitor': {'enabled': True, 'check_interval': 2,
                     'agent_timeout': 10},
}


class Scenario:
    def __init__(self, state: dict, workdir: str, log=print):
        self.state = state
        self.workdir = workdir
        self.log = log
        self.result = {'verified': False, 'checks': {}, 'errors': []}
        self.rpo_samples = []
        # NOTE: the RPO is sampled while the server is protected and
        # running (before the failure, after protection resumed): while
        # it is down the newest restore point ages by design.
        self.sampling = False

    # --- helpers ---

    def check(self, name: str, ok: bool, detail=None) -> bool:
        self.result['checks'][name] = bool(ok)
        self.log('scenario: %s %s%s' % ('ok  ' if ok else 'FAIL', name,
                                         '' if detail is None
                                         else ' (%s)' % (detail,)))
        return ok

    def api(self, method: str, path: str, **kwargs):
        resp = self.admin.session.request(
            self.state['ha_snapshot_url'] + path, method,
            headers=dict(API_VERSION, **kwargs.pop('headers', {})),
            raise_exc=False, **kwargs)
        return resp

    def server_row(self, uuid: str):
        resp = self.api('GET', '/v1/servers/%s' % uuid)
        if resp.status_code == 404:
            return None
        if resp.status_code != 200:
            raise cloudlib.ScenarioError('GET /v1/servers/%s: %d %s' % (
                uuid, resp.status_code, resp.text[:500]))
        row = resp.json()['server']
        if self.sampling and row.get('rpo_seconds') is not None:
            self.rpo_samples.append(row['rpo_seconds'])
        return row

    def restore_points(self, uuid: str) -> list:
        resp = self.api('GET', '/v1/servers/%s/restore-points' % uuid)
        if resp.status_code != 200:
            return []
        return resp.json()['restore_points']

    def recoveries(self, uuid: str) -> list:
        resp = self.api('GET', '/v1/servers/%s/recoveries' % uuid)
        if resp.status_code != 200:
            return []
        return resp.json()['recoveries']

    def wait_new_restore_point(self, uuid: str, known: int, what: str,
                               timeout: float = PROTECT_TIMEOUT) -> dict:
        def newer():
            self.server_row(uuid)
            rps = self.restore_points(uuid)
            return rps[-1] if len(rps) > known else None
        return cloudlib.wait_for(newer, timeout, what, poll=0.5)

    def wait_restore_point_taken_after(self, uuid: str, since: float,
                                       what: str,
                                       timeout: float = PROTECT_TIMEOUT
                                       ) -> dict:
        """The first restore point whose snapshot was taken after
        ``since`` (epoch seconds, this host's clock, which the agents
        share): it holds every write that ended before ``since``. (A
        restore point merely recorded after a write may be of a snapshot
        taken before it.)"""
        def taken():
            self.server_row(uuid)
            for rp in self.restore_points(uuid):
                if rp.get('taken_at') and (
                        _ts(rp['taken_at']) > since):
                    return rp
            return None
        return cloudlib.wait_for(taken, timeout, what, poll=0.5)

    def newest_when_requested(self, uuid: str, rec: dict) -> dict | None:
        """The newest restore point recorded when recovery ``rec`` was
        requested (the one a recovery without a named point uses)."""
        asked = _ts(rec['created_at'])
        before = [rp for rp in self.restore_points(uuid)
                  if _ts(rp['created_at']) <= asked]
        return before[-1] if before else None

    # --- steps ---

    def make_image_and_flavor(self):
        path = os.path.join(self.workdir, 'image.qcow2')
        subprocess.run(['qemu-img', 'create', '-q', '-f', 'qcow2', path,
                        str(IMAGE_SIZE)], check=True)
        subprocess.run(['qemu-io', '-f', 'qcow2', path, '-c',
                        'write -P 0x11 0 %d' % IMAGE_DATA], check=True,
                       capture_output=True)
        image = self.admin.image.create_image(
            name='ha-e2e', filename=path, disk_format='qcow2',
            container_format='bare', visibility='public', wait=True)
        self.image = cloudlib.wait_for(
            lambda: (lambda i: i if i.status == 'active' else None)(
                self.admin.image.get_image(image.id)),
            120, 'Glance image %s to become active' % image.id)
        self.flavor = self.admin.compute.create_flavor(
            name='ha-e2e', ram=128, vcpus=1, disk=1)
        # NOTE: the tests' cache (tests/fixtures/guest.py): in CI the
        # functional tests built the guest already.
        built = guest_build.build(os.environ.get('HA_SNAPSHOT_GUEST_CACHE'))
        self.guest = realguest.GuestImage(built.disk, self.workdir)
        self.guest.upload(self.admin)

    def boot(self, name: str, metadata=None, image=None, flavor=None):
        server = self.demo.compute.create_server(
            name=name, image_id=(image or self.image).id,
            flavor_id=(flavor or self.flavor).id,
            networks='none', metadata=metadata or {})
        return server

    def wait_active(self, server, timeout=300):
        return self.demo.compute.wait_for_server(server, status='ACTIVE',
                                                 wait=timeout, interval=1)

    def run(self, kill_host=None, restart_host=None) -> dict:
        r = self.result
        self.admin = cloudlib.connect(self.state, 'admin')
        self.demo = cloudlib.connect(self.state, 'demo')
        self.notes = cloudlib.NotificationLog(self.state['transport_url'])
        self.notes.start()
        try:
            t = time.monotonic()
            self._run()
            r['server_a_seconds'] = round(time.monotonic() - t, 1)
            if kill_host is not None and len(
                    self.state.get('compute_hosts', ())) > 1:
                r['host_failure'] = host_failure.run(self, kill_host,
                                                     restart_host)
        except Exception as e:
            r['errors'].append('%s: %s' % (type(e).__name__, e))
            self.log('scenario: error: %s' % e)
        finally:
            self.notes.stop()
        if self.rpo_samples:
            r['rpo_seconds_max'] = round(max(self.rpo_samples), 1)
        r['verified'] = bool(r['checks']) and all(r['checks'].values()) \
            and not r['errors']
        return r

    def _run(self):
        r = self.result
        self.make_image_and_flavor()
        t_boot = time.monotonic()
        a = self.boot('ha-e2e-protected', {'ha_snapshot:protect': 'true'},
                      self.guest.image, self.guest.flavor)
        b = self.boot('ha-e2e-unprotected')
        a = self.wait_active(a)
        t_active = time.monotonic()
        r['boot_seconds'] = round(t_active - t_boot, 1)
        payload = self.notes.wait('instance.create.end', a.id, 60)
        host = payload['nova_object.data']['host']
        # NOTE: the scheduler picks one of the harness's compute hosts;
        # everything below talks to the one A runs on.
        a_host = self.admin.compute.get_server(a.id).compute_host
        r['compute_host'] = a_host
        self.check('create.end names the compute host',
                   host == a_host and a_host in self.state.get(
                       'compute_hosts', [self.state['compute_host']]),
                   host)
        b = self.wait_active(b)
        tail = realguest.ConsoleTail(realguest.console_path(
            self.state, a_host, a.id)).start()

        # Protection starts from the notification alone.
        first = self.wait_new_restore_point(
            a.id, 0, 'the first restore point of server %s' % a.id)
        r['first_restore_point_seconds'] = round(
            time.monotonic() - t_active, 1)
        r['baseline_bytes'] = first.get('changed_bytes')
        self.sampling = True
        row = self.server_row(a.id)
        self.check('A is protected by its opt-in metadata',
                   row is not None and row['status'] == 'protected',
                   row and row['status'])

        first_record = tail.wait_durable(
            realguest.BOOT_TIMEOUT, 'the guest of server A to report a '
            'durable record on its console')
        r['guest_first_record_seconds'] = round(
            time.monotonic() - t_active, 1)
        self.check('A runs the test guest (its console shows DURABLE)',
                   first_record > 0, first_record)

        # Known writes while it runs, each followed by a restore point.
        admin_server = self.admin.compute.get_server(a.id)
        instance_name = admin_server.instance_name
        dom = cloudlib.Domain(self.state, instance_name, a_host)
        writes = []
        for i in range(WRITES):
            pattern, offset = 0x40 + i, realguest.FREE_OFFSET + i * MiB
            dom.write(pattern, offset, WRITE)
            writes.append((pattern, offset, WRITE))
            self.wait_restore_point_taken_after(
                a.id, time.time(), 'a restore point taken after write %d'
                % i)
        # The ephemeral disk (vdb) too: the recovery gives it back.
        dom.write(EPHEMERAL_PATTERN, EPHEMERAL_OFFSET, WRITE, target='vdb')
        self.wait_restore_point_taken_after(
            a.id, time.time(), 'a restore point taken after the write into '
            'the ephemeral disk')
        r['restore_points_before_failure'] = len(self.restore_points(a.id))

        # Failure: the QEMU process dies.
        pid = dom.qemu_pid()
        dom.close()
        self.sampling = False
        os.kill(pid, signal.SIGKILL)
        t_kill = time.monotonic()
        self.log('scenario: killed QEMU pid %d of %s' % (pid, instance_name))
        try:
            rec = cloudlib.wait_for(
                lambda: (self.recoveries(a.id) or [None])[-1], 60,
                'a recovery of %s started by the health monitor' % a.id)
            r['detected_by'] = 'health monitor'
        except cloudlib.ScenarioError as e:
            self.log('scenario: %s; posting an Aodh-shaped alarm' % e)
            self.post_alarm(a.id)
            rec = cloudlib.wait_for(
                lambda: (self.recoveries(a.id) or [None])[-1], 60,
                'a recovery of %s started by the alarm' % a.id)
            r['detected_by'] = 'alarm'
        r['detect_seconds'] = round(time.monotonic() - t_kill, 1)
        tail.stop()

        def finished():
            recs = self.recoveries(a.id)
            last = recs[-1] if recs else None
            return last if last and last['state'] in (
                'succeeded', 'failed') else None
        rec = cloudlib.wait_for(finished, RECOVERY_TIMEOUT,
                                'recovery %s of %s to finish' % (
                                    rec['id'], a.id), poll=1)
        self.check('the recovery succeeded', rec['state'] == 'succeeded',
                   rec.get('error'))
        self.notes.wait('instance.rebuild.end', a.id, 60)
        a = self.wait_active(a)
        r['rebuild_seconds'] = round(time.monotonic() - t_kill
                                     - r['detect_seconds'], 1)
        rebuilt_tail = realguest.ConsoleTail(realguest.console_path(
            self.state, a_host, a.id)).start()
        r['restore_point_used'] = rec.get('restore_point_id')
        newest = self.newest_when_requested(a.id, rec)
        self.check('the newest restore point was used',
                   newest is not None
                   and rec.get('restore_point_id') == newest['id'],
                   '%s; newest when requested %s' % (
                       rec.get('restore_point_id'), newest and newest['id']))

        # The rebuilt disk holds every write, read from the disk itself.
        dom = cloudlib.Domain(self.state, instance_name, a_host)
        copy = cloudlib.copy_disk(dom.disk_path(), self.workdir,
                                  dom.nsenter(), fmt='raw')
        missing = [hex(p) for p, o, n in writes
                   if not cloudlib.holds_pattern(copy, p, o, n, 'raw')]
        image_ok = self.guest.holds_boot_partition(copy)
        os.unlink(copy)
        self.check('the rebuilt disk holds every write', not missing,
                   'missing %s' % missing if missing else None)
        self.check('the rebuilt disk holds the image data (the guest\'s '
                   'boot partition)', image_ok)
        # Nova's rebuild made the ephemeral disk anew (formatted, empty);
        # the agent's re-baseline wrote the restore point's back.
        copy = cloudlib.copy_disk(dom.disk_path('vdb'), self.workdir,
                                  dom.nsenter(), fmt='raw')
        self.check('the rebuilt ephemeral disk holds its write',
                   cloudlib.holds_pattern(copy, EPHEMERAL_PATTERN,
                                          EPHEMERAL_OFFSET, WRITE, 'raw'))
        os.unlink(copy)
        r['guest'] = realguest.check_rebuilt(
            self, a, dom, rec['restore_point_id'], tail)

        # Protection resumes from the restore point used, with a small
        # delta (no full resend), and keeps taking writes.
        def after_recovery():
            self.server_row(a.id)
            return [rp for rp in self.restore_points(a.id)
                    if _ts(rp['created_at']) > _ts(rec['started_at'])]
        resumed = cloudlib.wait_for(
            after_recovery, PROTECT_TIMEOUT,
            'a restore point of %s after the recovery' % a.id, poll=0.5)[0]
        r['resumed_delta_bytes'] = resumed.get('changed_bytes')
        # NOTE: a full resend would carry at least the guest image's
        # data; the guest's own writes between two points stay far below.
        small = self.guest.data_bytes // 2
        self.check('the resumed delta is small (no full resend)',
                   resumed.get('changed_bytes') is not None
                   and resumed['changed_bytes'] < small,
                   '%s bytes, under %d' % (resumed.get('changed_bytes'),
                                           small))
        self.sampling = True
        dom.write(0x7e, realguest.FREE_OFFSET + 64 * MiB, WRITE)
        written = time.time()
        dom.close()
        try:
            after = self.wait_restore_point_taken_after(
                a.id, written, 'a restore point taken after the write '
                'after the recovery')
            ok = WRITE <= (after['changed_bytes'] or 0) < small
            detail = after['changed_bytes']
        except cloudlib.ScenarioError as e:
            ok, detail = False, e
        self.sampling = False
        self.check('a write after the recovery lands in a small delta', ok,
                   detail)

        if self.state.get('aodh_url'):
            rec = self.aodh_alarm(a.id, a.project_id)
            # NOTE: measured: a point the rebuilt guest's protection made
            # (its deltas since the rebaseline), judged as the first.
            dom = cloudlib.Domain(self.state, instance_name, a_host)
            try:
                r['guest_after_alarm'] = realguest.check_rebuilt(
                    self, a, dom, rec['restore_point_id'], rebuilt_tail,
                    checked=False)
            finally:
                dom.close()
        rebuilt_tail.stop()

        # Negative cases.
        self.check('B (no opt-in) was never protected',
                   self.server_row(b.id) is None)
        self.delete(a.id)

        def unprotected():
            row = self.server_row(a.id)
            return row is None or row['status'] not in (
                'protected', 'recovering')
        try:
            cloudlib.wait_for(unprotected, 60,
                              'deleted server %s to be unprotected' % a.id)
            ok = True
        except cloudlib.ScenarioError:
            ok = False
        self.check('A, deleted, is no longer protected', ok)

        def images_of_a():
            return [i.id for i in self.admin.image.images(
                tag='ha_snapshot:%s' % a.id)]
        # NOTE: the sweep may have run already; its log line says what it
        # deleted (the recovery kept keep_images = 1 of A's).
        manager_log = os.path.join(self.state['run_dir'], 'logs',
                                   'ha-snapshot-manager.log')

        def swept():
            if images_of_a():
                return False
            with open(manager_log, errors='replace') as f:
                return ('of deleted instance %s deleted' % a.id) in f.read()
        try:
            cloudlib.wait_for(swept, 60, 'the recovery images of deleted '
                              'server %s to be swept from Glance' % a.id,
                              poll=1)
            ok = True
        except cloudlib.ScenarioError:
            ok = False
        self.check('A\'s recovery images are swept from Glance', ok)
        self.delete(b.id)

    def delete(self, uuid: str):
        """Delete a server through Nova; fail at once if Nova cannot."""
        import openstack.exceptions
        self.demo.compute.delete_server(uuid)

        def gone():
            try:
                server = self.admin.compute.get_server(uuid)
            except openstack.exceptions.NotFoundException:
                return True
            if server.status == 'ERROR':
                raise cloudlib.ScenarioError(
                    'Nova could not delete server %s: %s' % (
                        uuid, (server.fault or {}).get('message')))
            return False
        cloudlib.wait_for(gone, 120, 'Nova to delete server %s' % uuid,
                          poll=1)
        self.notes.wait('instance.delete.end', uuid, 30)

    def aodh_alarm(self, uuid: str, project_id: str):
        """A real Aodh event alarm whose action is the alarm endpoint."""
        r = self.result
        row = self.server_row(uuid)
        url = row.get('alarm_url')
        self.check('the API gives the server\'s alarm URL', bool(url), url)
        event_type = 'compute.instance.ha-e2e.failed'
        resp = self.demo.session.post(
            self.state['aodh_url'] + '/v2/alarms', raise_exc=False, json={
                'name': 'ha-e2e-%s' % uuid, 'type': 'event',
                'severity': 'critical', 'repeat_actions': False,
                'alarm_actions': [url],
                'event_rule': {'event_type': event_type, 'query': [
                    {'field': 'traits.instance_id', 'op': 'eq',
                     'type': 'string', 'value': uuid}]}})
        if resp.status_code != 201:
            raise cloudlib.ScenarioError('Aodh refused the alarm: %d %s' % (
                resp.status_code, resp.text[:500]))
        alarm_id = resp.json()['alarm_id']
        done = self.recoveries(uuid)
        known = len(done)
        # NOTE: an event alarm fires once, and the manager drops reports
        # within [recovery] cooldown of the last recovery (that is how it
        # deduplicates flapping alarms): the time-based wait is the point.
        ended = [_ts(rec['finished_at']) for rec in done
                 if rec.get('finished_at')]
        if ended:
            quiet = (max(ended)
                     + HA_OVERRIDES['recovery']['cooldown'] + 1)
            time.sleep(max(0.0, quiet - time.time()))
        events = cloudlib.EventPublisher(self.state['transport_url'])
        t = time.monotonic()
        try:
            # NOTE: Aodh's listener may not consume its topic yet when the
            # first event goes out: send again until the alarm fires.
            def fired():
                if len(self.recoveries(uuid)) > known:
                    return True
                events.publish(event_type, {'instance_id': uuid,
                                            'project_id': project_id})
                return False
            cloudlib.wait_for(fired, 120, 'the Aodh alarm %s to start a '
                              'recovery of %s' % (alarm_id, uuid), poll=3)
        finally:
            events.close()
        r['aodh_alarm_seconds'] = round(time.monotonic() - t, 1)
        state = self.demo.session.get(
            self.state['aodh_url'] + '/v2/alarms/%s' % alarm_id).json()
        self.check('Aodh holds its alarm in state alarm',
                   state.get('state') == 'alarm', state.get('state'))

        def finished():
            last = self.recoveries(uuid)[-1]
            return last if last['state'] in ('succeeded', 'failed') \
                else None
        rec = cloudlib.wait_for(finished, RECOVERY_TIMEOUT,
                                'the recovery started by Aodh to finish',
                                poll=1)
        self.check('the recovery started by Aodh succeeded',
                   rec['state'] == 'succeeded', rec.get('error'))
        self.wait_active(self.demo.compute.get_server(uuid))
        # NOTE: measured, not checked: here the server was healthy and
        # kept being snapshotted while the recovery ran, so the agent may
        # hold a restore point newer than the one rebuilt from.
        first = cloudlib.wait_for(
            lambda: [rp for rp in self.restore_points(uuid)
                     if _ts(rp['created_at']) > _ts(rec['started_at'])],
            PROTECT_TIMEOUT, 'a restore point after the Aodh recovery',
            poll=0.5)[0]
        r['aodh_resumed_delta_bytes'] = first.get('changed_bytes')
        return rec

    def post_alarm(self, uuid: str):
        body = {'alarm_name': 'ha-e2e-%s' % uuid, 'alarm_id': uuid,
                'severity': 'critical', 'previous': 'ok',
                'current': 'alarm', 'reason': 'QEMU process gone',
                'reason_data': {}}
        resp = self.api('POST', '/v1/alarms/%s' % uuid, json=body)
        if resp.status_code != 202:
            raise cloudlib.ScenarioError('POST /v1/alarms/%s: %d %s' % (
                uuid, resp.status_code, resp.text[:500]))


def run(state: dict, workdir: str, log=print, kill_host=None,
        restart_host=None) -> dict:
    """The scenario; ``kill_host(name)`` and ``restart_host(name)``: the
    harness's (Cloud.kill_host, Cloud.restart_host), which add the
    host-failure scenario and the dead host's return."""
    os.makedirs(workdir, exist_ok=True)
    return Scenario(state, workdir, log).run(kill_host, restart_host)


def main() -> int:
    with open(sys.argv[1]) as f:
        state = json.load(f)
    result = run(state, os.path.join(state['run_dir'], 'scenario'))
    print(json.dumps(result, sort_keys=True))
    return 0 if result['verified'] else 1


if __name__ == '__main__':
    sys.exit(main())
