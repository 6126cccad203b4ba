"""The host-failure scenario on the harness's two compute hosts.

:func:`run` (called by scenario.py once its single-server scenario is
done, when the harness runs two compute hosts and can kill one):

1. boots, as admin, two protected servers and one unprotected server on
   the first compute host (``availability_zone nova:<host>``); waits for
   both protected ones to have a restore point;
2. writes known patterns into both protected disks (HMP qemu-io through
   libvirt) and waits for a restore point holding each write;
3. kills that host whole (the harness's ``kill_host``: its agent,
   nova-compute, libvirtd, virtlogd and every QEMU, SIGKILL at once);
4. waits for the manager's host monitor to record the host failed
   (``detect_seconds``: kill to ``confirmed_at``), fenced
   (``fence_seconds``: kill to ``fenced_at``) and evacuated;
5. waits for each protected server's evacuate recovery to succeed and
   the server to be ACTIVE on the other host (``recover_seconds``: kill
   to the last one ACTIVE there); reads each disk on its new host (a
   copy, with qemu-img inside that host's mount namespace) and checks
   every pattern written before the kill and the image data;
6. checks that the API places each on the new host and that a restore
   point follows, made by the new host's agent, with a small delta (no
   full resend: ``resumed_delta_bytes``);
7. checks that the unprotected server was not touched (Nova still places
   it on the dead host, ha-snapshot knows nothing of it);
8. with the harness's ``restart_host``: brings the dead host back (its
   nova-compute and agent start on the same folders) and checks that it
   undoes nothing: its agent is told each evacuated server moved and
   drops it (its log says so), both servers stay ACTIVE and protected on
   the new host and get a new restore point from there
   (``return_seconds``: restart to the last of those).

It never asks ha-snapshot what it did except through its REST API.
"""

import os
import time

from ha_snapshot.tests.integration import cloudlib

_ts = cloudlib.api_time  # NOTE: API time -> epoch seconds

MiB = 1 << 20
WRITE = 256 * 1024
DETECT_TIMEOUT = 120
RECOVER_TIMEOUT = 420


class HostFailure:

    def __init__(self, scenario, kill_host, restart_host=None):
        self.s = scenario
        self.state = scenario.state
        self.kill_host = kill_host
        self.restart_host = restart_host
        self.log = scenario.log
        self.out = {'verified': False}

    def check(self, name: str, ok: bool, detail=None) -> bool:
        return self.s.check('host failure: ' + name, ok, detail)

    def failures(self, host: str) -> list:
        resp = self.s.api('GET', '/v1/host-failures?host=%s' % host)
        if resp.status_code != 200:
            raise cloudlib.ScenarioError('GET /v1/host-failures: %d %s' % (
                resp.status_code, resp.text[:300]))
        return resp.json()['host_failures']

    def boot(self, name: str, host: str, protect: bool):
        admin = self.s.admin
        return admin.compute.create_server(
            name=name, image_id=self.s.image.id, flavor_id=self.s.flavor.id,
            networks='none', availability_zone='nova:%s' % host,
            metadata={'ha_snapshot:protect': 'true'} if protect else {})

    def run(self) -> dict:
        s, out = self.s, self.out
        hosts = self.state['compute_hosts']
        dead, alive = hosts[0], hosts[1]
        servers = [self.boot('ha-e2e-hf-%d' % n, dead, True)
                   for n in (1, 2)]
        bystander = self.boot('ha-e2e-hf-unprotected', dead, False)
        servers = [s.admin.compute.wait_for_server(
            x, status='ACTIVE', wait=300, interval=1) for x in servers]
        bystander = s.admin.compute.wait_for_server(
            bystander, status='ACTIVE', wait=300, interval=1)
        on_dead = [x.compute_host for x in servers + [bystander]]
        self.check('all three servers run on %s' % dead,
                   on_dead == [dead] * 3, on_dead)
        for x in servers:
            s.wait_new_restore_point(x.id, 0, 'the first restore point of '
                                     'server %s' % x.id)

        # Known writes, each in a restore point before the kill.
        writes = {}
        for n, x in enumerate(servers):
            dom = cloudlib.Domain(self.state, x.instance_name, dead)
            writes[x.id] = []
            for i in range(2):
                pattern, offset = 0x60 + 4 * n + i, 24 * MiB + i * MiB
                dom.write(pattern, offset, WRITE)
                writes[x.id].append((pattern, offset, WRITE))
                s.wait_restore_point_taken_after(
                    x.id, time.time(), 'a restore point of %s taken after '
                    'write %d' % (x.id, i))
            dom.close()

        t_kill = self.kill_host(dead)
        self.log('scenario: killed compute host %s whole' % dead)

        def fenced():
            rows = [f for f in self.failures(dead) if f['fenced_at']]
            return rows[0] if rows else None
        failure = cloudlib.wait_for(
            fenced, DETECT_TIMEOUT, 'the manager to find %s failed and '
            'fence it' % dead, poll=0.5)
        out['detect_seconds'] = round(_ts(failure['confirmed_at'])
                                      - t_kill, 1)
        out['fence_seconds'] = round(_ts(failure['fenced_at']) - t_kill, 1)
        out['fencing'] = failure['result']

        # Each protected server back on the other host, ACTIVE.
        recovered = {}

        def back():
            for x in servers:
                if x.id in recovered:
                    continue
                recs = [r for r in s.recoveries(x.id)
                        if r.get('host_failure_id') == failure['id']]
                if recs and recs[-1]['state'] == 'failed':
                    raise cloudlib.ScenarioError(
                        'the evacuation of %s failed at %s: %s' % (
                            x.id, recs[-1]['step'], recs[-1]['error']))
                if not recs or recs[-1]['state'] != 'succeeded':
                    continue
                server = s.admin.compute.get_server(x.id)
                if server.status == 'ACTIVE' and server.task_state is None:
                    recovered[x.id] = (recs[-1], server, time.time())
            return len(recovered) == len(servers)
        cloudlib.wait_for(back, RECOVER_TIMEOUT, 'both protected servers of '
                          '%s evacuated, restored and ACTIVE' % dead, poll=1)
        out['recover_seconds'] = round(
            max(t for _, _, t in recovered.values()) - t_kill, 1)
        out['servers_recovered'] = len(recovered)

        rpo, lost = [], []
        for x in servers:
            rec, server, _ = recovered[x.id]
            self.check('%s runs on %s' % (x.name, alive),
                       server.compute_host == alive, server.compute_host)
            used = rec['restore_point_id']
            newest = s.newest_when_requested(x.id, rec)
            self.check('%s restored from its newest restore point'
                       % x.name, newest is not None and used == newest['id'],
                       '%s; newest when requested %s'
                       % (used, newest and newest['id']))
            point = {rp['id']: rp for rp in s.restore_points(x.id)}.get(used)
            # NOTE: the RPO is from the snapshot's instant (taken_at), not
            # from when the restore point became durable.
            if point is not None and point.get('taken_at'):
                rpo.append(round(t_kill - _ts(point['taken_at']), 1))
            dom = cloudlib.Domain(self.state, server.instance_name, alive)
            copy = cloudlib.copy_disk(dom.disk_path(), s.workdir,
                                      dom.nsenter())
            dom.close()
            missing = [hex(p) for p, o, n in writes[x.id]
                       if not cloudlib.holds_pattern(copy, p, o, n)]
            lost += missing
            self.check('%s disk holds every write before the kill' % x.name,
                       not missing, missing or None)
            self.check('%s disk holds the image data' % x.name,
                       cloudlib.holds_pattern(copy, 0x11, 0, 4 * MiB))
        out['rpo_seconds'] = rpo
        out['writes_lost'] = len(lost)

        # Protected from the new host: the API says so, and its agent
        # makes the next restore point, a small one.
        resumed = []
        for x in servers:
            rec = recovered[x.id][0]
            row = s.server_row(x.id)
            self.check('%s protected on %s' % (x.name, alive),
                       row is not None and row['host'] == alive
                       and row['status'] == 'protected',
                       row and '%s, %s' % (row['host'], row['status']))
            after = cloudlib.wait_for(
                lambda x=x, rec=rec: [
                    rp for rp in s.restore_points(x.id)
                    if _ts(rp['created_at']) > _ts(rec['finished_at'])],
                180, 'a restore point of %s made on %s' % (x.id, alive),
                poll=0.5)[0]
            resumed.append(after.get('changed_bytes'))
        out['resumed_delta_bytes'] = resumed
        self.check('the resumed deltas are small (no full resend)',
                   all(b is not None and b < 4 * MiB for b in resumed),
                   resumed)

        # The unprotected server was left alone.
        server = s.admin.compute.get_server(bystander.id)
        self.check('the unprotected server was not evacuated',
                   server.compute_host == dead and s.server_row(
                       bystander.id) is None, server.compute_host)
        # NOTE: the record ends at the monitor's round after the last
        # recovery ended ([host_monitor] check_interval).
        try:
            row = cloudlib.wait_for(
                lambda: (lambda r: r if r['state'] != 'evacuating' else None)(
                    self.failures(dead)[0]), 30,
                'the failure record of %s to end its evacuation' % dead,
                poll=0.5)
        except cloudlib.ScenarioError:
            row = self.failures(dead)[0]
        self.check('the failure record says evacuated',
                   row['state'] == 'evacuated'
                   and row['recoveries'] == {'succeeded': 2},
                   '%s, %s, %s' % (row['state'], row['recoveries'],
                                   row['error']))
        if self.restart_host is not None:
            self.comes_back(dead, alive, servers)
        out['verified'] = all(
            ok for name, ok in s.result['checks'].items()
            if name.startswith('host failure: ')) and not lost
        return out


    def comes_back(self, dead, alive, servers):
        """The dead host boots again: nothing it does undoes anything."""
        s = self.s
        known = {x.id: len(s.restore_points(x.id)) for x in servers}
        t0 = time.monotonic()
        self.restart_host(dead)
        log = os.path.join(self.state['log_dir'],
                           'ha-snapshot-agent@%s.log' % dead)

        def dropped():
            with open(log, errors='replace') as f:
                text = f.read()
            return all('Instance %s: protection on %s stopped, the server '
                       'moved' % (x.id, dead) in text for x in servers)
        try:
            cloudlib.wait_for(dropped, 120, 'the agent of %s, back, to drop '
                              'the servers that moved' % dead, poll=1)
            ok = True
        except cloudlib.ScenarioError:
            ok = False
        self.check('the returning agent drops the servers that moved', ok)
        for x in servers:
            cloudlib.wait_for(
                lambda x=x: len(s.restore_points(x.id)) > known[x.id], 120,
                'a restore point of %s after %s came back' % (x.id, dead),
                poll=0.5)
            server = s.admin.compute.get_server(x.id)
            row = s.server_row(x.id)
            self.check('%s still ACTIVE and protected on %s after %s came '
                       'back' % (x.name, alive, dead),
                       server.status == 'ACTIVE'
                       and server.compute_host == alive
                       and row['host'] == alive
                       and row['status'] == 'protected',
                       '%s on %s; %s on %s' % (
                           server.status, server.compute_host,
                           row['status'], row['host']))
        self.out['return_seconds'] = round(time.monotonic() - t0, 1)


def run(scenario, kill_host, restart_host=None) -> dict:
    """The host-failure scenario; its measurements (``verified``...)."""
    hf = HostFailure(scenario, kill_host, restart_host)
    try:
        return hf.run()
    except Exception as e:
        hf.out['error'] = '%s: %s' % (type(e).__name__, e)
        scenario.check('host failure: ran to its end', False, hf.out['error'])
        return hf.out
