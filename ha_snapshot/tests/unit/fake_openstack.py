"""Scripted Glance v2 and Nova v2.1 endpoints with the real APIs' shapes.

Only what the ha-snapshot clients use, answered the way the services
answer (bodies, status codes, headers as documented in the Image and
Compute API references and seen from Glance/Nova 2024-2025): version
discovery, image create/list/show/upload/delete, server show, the
``rebuild``, ``evacuate``, ``os-start`` and ``os-stop`` actions, compute
services (``os-services``
list and the 2.53+ update that forces one down). Tests script failures through
attributes (``upload_fail``, ``rebuild_fail``, ``outcome``...) and assert
on ``endpoint.requests``. :class:`Cloud` serves both, Nova checking the
images it is given against that Glance.
"""

import datetime
import hashlib
import threading
import uuid

import fixtures

from ha_snapshot.tests.unit import scripted_http

NOVA_MAX_VERSION = '2.96'


def _now() -> str:
    return datetime.datetime.now(datetime.timezone.utc).strftime(
        '%Y-%m-%dT%H:%M:%SZ')


_TITLES = {400: 'Bad Request', 403: 'Forbidden', 404: 'Not Found',
           405: 'Method Not Allowed', 409: 'Conflict',
           500: 'Internal Server Error', 502: 'Bad Gateway',
           503: 'Service Unavailable'}


def _page(status, detail=''):
    """An error page as Glance (webob) sends it."""
    title = '%d %s' % (status, _TITLES.get(status, 'Error'))
    body = ('<html>\n <head>\n  <title>%s</title>\n </head>\n <body>\n'
            '  <h1>%s</h1>\n  %s<br /><br />\n\n\n\n </body>\n</html>'
            % (title, title, detail))
    return status, {'Content-Type': 'text/html; charset=UTF-8'}, body


# --- Glance ----------------------------------------------------------------

# NOTE: attributes Glance manages itself; a client may not set them.
_GLANCE_RESERVED = ('status', 'size', 'virtual_size', 'checksum',
                    'os_hash_algo', 'os_hash_value', 'created_at',
                    'updated_at', 'self', 'file', 'schema', 'direct_url',
                    'locations')


class FakeGlance:

    def __init__(self, project='service-project', may_set_owner=True):
        self.project = project
        self.may_set_owner = may_set_owner
        self.images = {}
        self.lock = threading.Lock()
        # NOTE: scripted failures: (status, after_bytes) for the next
        # uploads; a status for the next creates / deletes.
        self.upload_fail = []
        self.create_fail = []
        self.delete_fail = []
        # NOTE: called with the image once the first block of an upload
        # arrived (it is saving): a test may hold the upload there.
        self.on_upload = None
        self.uploads = []
        self.endpoint = scripted_http.ScriptedEndpoint(self.app)
        self.url = self.endpoint.url

    def stop(self):
        self.endpoint.stop()

    def add_image(self, image_id, disk_format='qcow2', **properties):
        """An active image, as if uploaded long ago."""
        now = _now()
        image = {
            'id': image_id, 'name': 'image-' + image_id, 'status': 'active',
            'visibility': 'public', 'protected': False, 'os_hidden': False,
            'owner': self.project, 'disk_format': disk_format,
            'container_format': 'bare', 'min_disk': 0, 'min_ram': 0,
            'tags': [], 'size': 1024, 'virtual_size': 1 << 30,
            'checksum': hashlib.md5(b'x').hexdigest(),
            'os_hash_algo': 'sha512',
            'os_hash_value': hashlib.sha512(b'x').hexdigest(),
            'created_at': now, 'updated_at': now,
            'self': '/v2/images/' + image_id,
            'file': '/v2/images/%s/file' % image_id,
            'schema': '/v2/schemas/image'}
        image.update(properties)
        self.images[image_id] = image
        return image

    def live(self):
        """Images not deleted."""
        return [i for i in self.images.values() if i['status'] != 'deleted']

    def app(self, req):
        parts = req.path.strip('/').split('/')
        if parts in ([''], ['versions']) and req.method == 'GET':
            return 300, {}, {'versions': [
                {'id': 'v2.16', 'status': 'CURRENT',
                 'links': [{'rel': 'self', 'href': self.url + '/v2/'}]},
                {'id': 'v2.0', 'status': 'SUPPORTED',
                 'links': [{'rel': 'self', 'href': self.url + '/v2/'}]}]}
        if parts[:2] != ['v2', 'images']:
            return _page(404, 'The resource could not be found.')
        if len(parts) == 2 and req.method == 'POST':
            return self.create(req)
        if len(parts) == 2 and req.method == 'GET':
            return self.list(req)
        image = self.images.get(parts[2]) if len(parts) > 2 else None
        if image is None or image['status'] == 'deleted':
            req.stream.drain()
            return _page(404, 'No image found with ID %s' % parts[2])
        if len(parts) == 3 and req.method == 'GET':
            return 200, {}, dict(image)
        if len(parts) == 3 and req.method == 'DELETE':
            if self.delete_fail:
                return _page(self.delete_fail.pop(0))
            image['status'] = 'deleted'
            return 204, {}, b''
        if len(parts) == 4 and parts[3] == 'file' and req.method == 'PUT':
            return self.upload(image, req)
        return _page(405, 'The method is not allowed for this resource.')

    def create(self, req):
        body = dict(req.read_json())
        if self.create_fail:
            return _page(self.create_fail.pop(0), 'Service Unavailable')
        bad = [k for k in body if k in _GLANCE_RESERVED]
        if bad:
            return _page(403, 'Attribute \'%s\' is read-only.' % bad[0])
        owner = body.pop('owner', None) or self.project
        if owner != self.project and not self.may_set_owner:
            return _page(403, 'You are not permitted to create images '
                         'owned by \'%s\'.' % owner)
        image_id = body.pop('id', None) or str(uuid.uuid4())
        now = _now()
        image = {
            'id': image_id, 'name': body.pop('name', None),
            'status': 'queued',
            'visibility': body.pop('visibility', 'shared'),
            'protected': body.pop('protected', False),
            'os_hidden': body.pop('os_hidden', False), 'owner': owner,
            'disk_format': body.pop('disk_format', None),
            'container_format': body.pop('container_format', None),
            'min_disk': body.pop('min_disk', 0),
            'min_ram': body.pop('min_ram', 0),
            'tags': body.pop('tags', []), 'size': None,
            'virtual_size': None, 'checksum': None, 'os_hash_algo': None,
            'os_hash_value': None, 'created_at': now, 'updated_at': now,
            'self': '/v2/images/' + image_id,
            'file': '/v2/images/%s/file' % image_id,
            'schema': '/v2/schemas/image'}
        for key, value in body.items():
            if not isinstance(value, str):
                return _page(400, 'Provided object does not match schema '
                             '\'image\': %r is not of type \'string\''
                             % value)
            image[key] = value
        with self.lock:
            self.images[image_id] = image
        return 201, {'Location': self.url + image['self']}, dict(image)

    def list(self, req):
        tags = req.query.get('tag', [])
        found = [dict(i) for i in self.images.values()
                 if i['status'] != 'deleted'
                 and all(t in i['tags'] for t in tags)]
        found.sort(key=lambda i: i['created_at'], reverse=True)
        return 200, {}, {'images': found, 'schema': '/v2/schemas/images',
                         'first': '/v2/images'}

    def upload(self, image, req):
        if image['status'] != 'queued':
            return _page(409, 'Image status transition from %s to saving '
                         'is not allowed' % image['status'])
        if not image['disk_format'] or not image['container_format']:
            return _page(400, 'Properties disk_format, container_format '
                         'must be set prior to saving data.')
        fail = self.upload_fail.pop(0) if self.upload_fail else None
        image['status'] = 'saving'
        md5, sha512, size = hashlib.md5(), hashlib.sha512(), 0
        record = {'image': image['id'], 'headers': req.headers}
        self.uploads.append(record)
        while True:
            data = req.stream.read()
            if not data:
                break
            md5.update(data)
            sha512.update(data)
            if size == 0 and self.on_upload is not None:
                self.on_upload(image)
            size += len(data)
            if fail and size >= fail[1]:
                # NOTE: Glance puts the image back to queued when the
                # store fails, so the upload may be tried again.
                image['status'] = 'queued'
                record['failed_after'] = size
                return _page(fail[0], 'Error in store configuration. '
                             'Adding images to store is disabled.')
        record.update(size=size, largest_read=req.stream.largest_read,
                      chunked=req.stream.chunked)
        if req.stream.truncated and image['status'] == 'saving':
            # NOTE: the client went away mid-upload: as Glance's
            # ImageDataController does on any failure of the data, the
            # image goes back to queued (its data is dropped).
            image['status'] = 'queued'
            record['failed_after'] = size
            return _page(500, 'Failed to upload image data due to '
                         'internal error')
        if image['status'] == 'deleted':
            # NOTE: as Glance's ImageDataController does when the image
            # was deleted while its data arrived: the data is dropped.
            record['failed_after'] = size
            return _page(410, 'Image %s could not be found after upload. '
                         'The image may have been deleted during the '
                         'upload.' % image['id'])
        image.update(status='active', size=size, checksum=md5.hexdigest(),
                     os_hash_algo='sha512', os_hash_value=sha512.hexdigest(),
                     updated_at=_now())
        return 204, {}, b''


# --- Nova ------------------------------------------------------------------

class FakeNova:
    """One or more servers; rebuilds settle after ``polls`` GETs."""

    def __init__(self, glance=None):
        self.glance = glance
        self.max_version = NOVA_MAX_VERSION
        self.servers = {}
        self.lock = threading.Lock()
        # NOTE: what the next rebuild ends in: 'active', 'error' (with
        # fault_message), 'novalidhost' (the scheduler refused it: Nova
        # rolls the image back and puts the server in ERROR), 'stuck'
        # (never settles) or 'shutoff'.
        self.outcome = 'active'
        self.fault_message = 'No valid host was found.'
        self.polls = 2
        self.rebuild_fail = []
        # NOTE: compute services by id; (status, message) for the next
        # service updates.
        self.services = {}
        self.service_update_fail = []
        # NOTE: where evacuations land, and how they end: 'moved' (the
        # host Nova's scheduler picks) or 'error' (fault_message).
        self.evacuate_to = 'compute2'
        self.evacuate_outcome = 'moved'
        self._settle = {}
        self._previous = {}
        self.endpoint = scripted_http.ScriptedEndpoint(self.app)
        self.url = self.endpoint.url + '/v2.1'

    def stop(self):
        self.endpoint.stop()

    def add_server(self, server_id, project, image_id, host='compute1',
                   status='ACTIVE', vm_state='active', name='vm1'):
        now = _now()
        image = ({'id': image_id, 'links': [
            {'rel': 'bookmark',
             'href': '%s/images/%s' % (self.endpoint.url, image_id)}]}
            if image_id else '')
        self.servers[server_id] = {
            'id': server_id, 'name': name, 'status': status,
            'tenant_id': project, 'user_id': 'u-' + project,
            'metadata': {'ha_snapshot:protect': 'true'},
            'hostId': hashlib.sha224((project + host).encode()).hexdigest(),
            'image': image,
            'flavor': {'vcpus': 1, 'ram': 512, 'disk': 1, 'ephemeral': 0,
                       'swap': 0, 'original_name': 'm1.tiny',
                       'extra_specs': {}},
            'created': now, 'updated': now, 'addresses': {},
            'accessIPv4': '', 'accessIPv6': '',
            'links': [{'rel': 'self', 'href': '%s/servers/%s'
                       % (self.url, server_id)}],
            'OS-DCF:diskConfig': 'MANUAL', 'progress': 0,
            'OS-EXT-AZ:availability_zone': 'nova', 'config_drive': '',
            'key_name': 'key1', 'OS-SRV-USG:launched_at': now,
            'OS-SRV-USG:terminated_at': None,
            'OS-EXT-SRV-ATTR:host': host,
            'OS-EXT-SRV-ATTR:hypervisor_hostname': host,
            'OS-EXT-SRV-ATTR:instance_name': 'instance-00000001',
            'OS-EXT-STS:task_state': None, 'OS-EXT-STS:vm_state': vm_state,
            'OS-EXT-STS:power_state': 1 if vm_state == 'active' else 4,
            'os-extended-volumes:volumes_attached': [], 'locked': False,
            'locked_reason': None, 'description': None, 'tags': [],
            'trusted_image_certificates': None, 'host_status': 'UP',
            'security_groups': [{'name': 'default'}],
            'pinned_availability_zone': None}
        return self.servers[server_id]

    def app(self, req):
        headers = {}
        asked = req.headers.get('OpenStack-API-Version', '')
        if asked.startswith('compute '):
            headers = {'OpenStack-API-Version': asked,
                       'Vary': 'OpenStack-API-Version'}
        path = req.path.rstrip('/')
        if req.method == 'GET' and path == '/v2.1':
            return 200, headers, {'version': {
                'id': 'v2.1', 'status': 'CURRENT',
                'version': self.max_version, 'min_version': '2.1',
                'updated': '2013-07-23T11:33:21Z',
                'links': [{'rel': 'self', 'href': self.url + '/'}],
                'media-types': [{
                    'base': 'application/json',
                    'type': 'application/vnd.openstack.compute+json;'
                            'version=2.1'}]}}
        parts = path.strip('/').split('/')
        if parts[:2] == ['v2.1', 'os-services']:
            return self.os_services(req, parts[2:], headers)
        if parts[:2] != ['v2.1', 'servers'] or len(parts) < 3:
            return 404, headers, {'itemNotFound': {
                'code': 404, 'message': 'The resource could not be found.'}}
        server = self.servers.get(parts[2])
        if server is None:
            req.stream.drain()
            return 404, headers, {'itemNotFound': {
                'code': 404,
                'message': 'Instance %s could not be found.' % parts[2]}}
        if len(parts) == 3 and req.method == 'GET':
            self._tick(server)
            return 200, headers, {'server': dict(server)}
        if parts[3:] == ['action'] and req.method == 'POST':
            body = req.read_json()
            if 'rebuild' in body:
                return self.rebuild(server, body['rebuild'], headers)
            if 'os-start' in body:
                return self.start(server, headers)
            if 'os-stop' in body:
                return self.stop_server(server, headers)
            if 'evacuate' in body:
                return self.evacuate(req, server, body['evacuate'], headers)
        return 404, headers, {'itemNotFound': {
            'code': 404, 'message': 'The resource could not be found.'}}

    def rebuild(self, server, body, headers):
        if self.rebuild_fail:
            status, message = self.rebuild_fail.pop(0)
            kind = {409: 'conflictingRequest', 400: 'badRequest'}.get(
                status, 'computeFault')
            return status, headers, {kind: {'code': status,
                                            'message': message}}
        if server['OS-EXT-STS:task_state'] is not None:
            return 409, headers, {'conflictingRequest': {
                'code': 409, 'message': (
                    "Cannot 'rebuild' instance %s while it is in task_state "
                    '%s' % (server['id'],
                            server['OS-EXT-STS:task_state']))}}
        if not server['image']:
            return 400, headers, {'badRequest': {
                'code': 400, 'message': 'Unable to rebuild with a different '
                'image for a volume-backed server.'}}
        image_id = body.get('imageRef')
        if self.glance is not None:
            image = self.glance.images.get(image_id)
            if image is None or image['status'] == 'deleted':
                return 400, headers, {'badRequest': {
                    'code': 400,
                    'message': 'Image %s could not be found.' % image_id}}
            if image['status'] != 'active':
                return 400, headers, {'badRequest': {
                    'code': 400, 'message': 'Image %s is not active.'
                    % image_id}}
        self._previous[server['id']] = server['image']['id']
        server['image'] = dict(server['image'], id=image_id)
        server.update({'OS-EXT-STS:task_state': 'rebuilding',
                       'status': 'REBUILD', 'updated': _now()})
        server.pop('fault', None)
        outcome = self.outcome
        if outcome == 'active' and server['OS-EXT-STS:vm_state'] == 'stopped':
            # NOTE: as Nova's _do_rebuild_instance does: a server stopped
            # before its rebuild is saved ACTIVE with no task once spawned,
            # then powered off again (task powering-off, then SHUTOFF).
            outcome = 'active-then-stop'
        self._settle[server['id']] = (outcome, self.polls)
        return 202, headers, {'server': dict(server)}

    def start(self, server, headers):
        if server['OS-EXT-STS:vm_state'] != 'stopped':
            return 409, headers, {'conflictingRequest': {
                'code': 409, 'message': (
                    "Cannot 'start' instance %s while it is in vm_state %s"
                    % (server['id'], server['OS-EXT-STS:vm_state']))}}
        server.update({'OS-EXT-STS:task_state': 'powering-on'})
        self._settle[server['id']] = ('active', self.polls)
        return 202, headers, b''

    def stop_server(self, server, headers):
        if server['OS-EXT-STS:vm_state'] != 'active':
            return 409, headers, {'conflictingRequest': {
                'code': 409, 'message': (
                    "Cannot 'stop' instance %s while it is in vm_state %s"
                    % (server['id'], server['OS-EXT-STS:vm_state']))}}
        server.update({'OS-EXT-STS:task_state': 'powering-off'})
        self._settle[server['id']] = ('shutoff', self.polls)
        return 202, headers, b''

    def evacuate(self, req, server, body, headers):
        """As Nova's evacuate: the source host's compute service must be
        down; the server is rebuilt on another host (its image kept),
        landing SHUTOFF from 2.95, ACTIVE before."""
        version = self._microversion(req)
        source = server['OS-EXT-SRV-ATTR:host']
        service = next((s for s in self.services.values()
                        if s['host'] == source
                        and s['binary'] == 'nova-compute'), None)
        if service is not None and service['state'] == 'up':
            return 409, headers, {'conflictingRequest': {
                'code': 409, 'message': 'Compute service of %s is still in '
                'use.' % source}}
        if version < (2, 14) and 'onSharedStorage' not in body:
            return 400, headers, {'badRequest': {
                'code': 400, 'message': "'onSharedStorage' is a required "
                'property'}}
        if server['OS-EXT-STS:task_state'] is not None:
            return 409, headers, {'conflictingRequest': {
                'code': 409, 'message': "Cannot 'evacuate' instance %s "
                'while it is in task_state %s' % (
                    server['id'], server['OS-EXT-STS:task_state'])}}
        server.update({'OS-EXT-STS:task_state': 'rebuilding',
                       'status': 'REBUILD', 'updated': _now()})
        if self.evacuate_outcome == 'error':
            outcome = 'error'
        else:
            server.update({'OS-EXT-SRV-ATTR:host': self.evacuate_to,
                           'OS-EXT-SRV-ATTR:hypervisor_hostname':
                           self.evacuate_to})
            outcome = 'shutoff' if version >= (2, 95) else 'active'
        self._settle[server['id']] = (outcome, self.polls)
        return 200, headers, {} if version >= (2, 14) else {
            'adminPass': 'secret'}

    def settle(self, server_id, outcome='active', polls=1):
        """End the server's pending action (a rebuild left ``stuck``) in
        ``outcome`` once it is looked at ``polls`` more times."""
        self._settle[server_id] = (outcome, polls)

    def _tick(self, server):
        outcome, left = self._settle.get(server['id'], (None, 0))
        if outcome is None or outcome == 'stuck':
            return
        if left > 1:
            self._settle[server['id']] = (outcome, left - 1)
            return
        del self._settle[server['id']]
        if outcome == 'powering-off':
            server.update({'OS-EXT-STS:task_state': 'powering-off',
                           'updated': _now()})
            self._settle[server['id']] = ('shutoff', 1)
            return
        if outcome == 'active-then-stop':
            self._settle[server['id']] = ('powering-off', 1)
            outcome = 'active'
        states = {'active': ('ACTIVE', 'active', 1),
                  'shutoff': ('SHUTOFF', 'stopped', 4),
                  'error': ('ERROR', 'error', 0),
                  'novalidhost': ('ERROR', 'error', 1)}
        status, vm_state, power = states[outcome]
        previous = self._previous.pop(server['id'], None)
        if outcome == 'novalidhost':
            server['image'] = dict(server['image'], id=previous)
        server.update({'status': status, 'OS-EXT-STS:vm_state': vm_state,
                       'OS-EXT-STS:power_state': power,
                       'OS-EXT-STS:task_state': None, 'updated': _now()})
        if outcome in ('error', 'novalidhost'):
            server['fault'] = {'code': 500, 'created': _now(),
                               'message': self.fault_message}

    # --- compute services ---------------------------------------------------

    def add_service(self, host, state='up', status='enabled',
                    forced_down=False, binary='nova-compute'):
        """A compute service as Nova 2.53+ shows it (``state`` is what
        Nova derives from the service's last report)."""
        service = {'id': str(uuid.uuid4()), 'binary': binary, 'host': host,
                   'zone': 'nova', 'status': status, 'state': state,
                   'disabled_reason': None, 'forced_down': forced_down,
                   'updated_at': _now()}
        self.services[service['id']] = service
        return service

    def service_of(self, host, binary='nova-compute'):
        return next(s for s in self.services.values()
                    if s['host'] == host and s['binary'] == binary)

    @staticmethod
    def _microversion(req):
        asked = req.headers.get('OpenStack-API-Version', '')
        if not asked.startswith('compute '):
            return (2, 1)
        major, minor = asked.split()[1].split('.')
        return int(major), int(minor)

    def os_services(self, req, rest, headers):
        if not rest and req.method == 'GET':
            found = [dict(s) for s in self.services.values()
                     if all(s[key] == req.query[key][0]
                            for key in ('binary', 'host')
                            if key in req.query)]
            return 200, headers, {'services': found}
        if len(rest) == 1 and req.method == 'PUT':
            body = req.read_json()
            if self._microversion(req) < (2, 53):
                # NOTE: before 2.53 the path is os-services/{action}.
                return 404, headers, {'itemNotFound': {
                    'code': 404, 'message': 'Unknown action'}}
            if self.service_update_fail:
                status, message = self.service_update_fail.pop(0)
                return status, headers, {'computeFault': {
                    'code': status, 'message': message}}
            service = self.services.get(rest[0])
            if service is None:
                return 404, headers, {'itemNotFound': {
                    'code': 404, 'message': 'Service %s could not be '
                    'found.' % rest[0]}}
            allowed = {'status', 'disabled_reason', 'forced_down'}
            if not body or set(body) - allowed:
                return 400, headers, {'badRequest': {
                    'code': 400, 'message': 'Invalid input for field/'
                    'attribute service. Value: %s' % body}}
            if 'forced_down' in body:
                service['forced_down'] = bool(body['forced_down'])
                if service['forced_down']:
                    service['state'] = 'down'
            service['updated_at'] = _now()
            return 200, headers, {'service': dict(service)}
        return 404, headers, {'itemNotFound': {
            'code': 404, 'message': 'The resource could not be found.'}}


class Cloud(fixtures.Fixture):
    """A scripted Glance and a Nova that knows its images, stopped at
    clean-up. ``options`` points the [nova] and [glance] clients at them
    ({group: {name: value}}, for a config file or set_override)."""

    def _setUp(self):
        self.glance = FakeGlance()
        self.addCleanup(self.glance.stop)
        self.nova = FakeNova(self.glance)
        self.addCleanup(self.nova.stop)

    @property
    def options(self) -> dict:
        return {group: {'auth_type': 'none', 'endpoint_override': url}
                for group, url in (('nova', self.nova.url),
                                   ('glance', self.glance.url))}
