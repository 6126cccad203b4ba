"""The ``swift`` driver: objects in an OpenStack Swift container.

``swift://CONTAINER`` keeps object ``a/b/c`` as ``a/b/c`` in CONTAINER of
the account that ``[swift]`` leads to (keystoneauth1 session and auth
options, or ``auth_type = none`` and ``endpoint_override``);
``swift://CONTAINER/PREFIX`` keeps it as ``PREFIX/a/b/c``. The container is
created on the first write that needs it. Requests go through the object
store proxy of an openstacksdk Connection built on a keystoneauth1 session.

How the contract of :mod:`ha_snapshot.storage.base` is kept:

* ``put`` is one PUT of the whole object: Swift shows the old object or the
  new one, never a part, and answers only once the write is durable on a
  quorum of replicas. ``create_only`` sends ``If-None-Match: *``; Swift
  answers 412 if the object exists, raised as ObjectExists. Every PUT also
  sends the content's MD5 as ETag, so Swift refuses bytes damaged on the
  way (422, retried).
* ``touch`` is a POST: it updates the object's timestamp, which HEAD and
  the container listing (``last_modified``) show, and answers 404 for a
  missing object.
* ``delete_if_older``: Swift has no rename and ignores ``If-Match``,
  ``If-Unmodified-Since`` and client ``X-Timestamp`` on DELETE (measured on
  Swift 2.30); the one condition its object server checks on DELETE is
  ``X-If-Delete-At``: the object's ``X-Delete-At`` must equal it, else 412.
  So every write (PUT and touch) stores a fresh random marker in
  ``X-Delete-At``, a date in a one-day band of the year 2255 (Swift would
  expire the object then, no earlier; such dates also keep the expirer's
  queue to one day's containers). Collection is HEAD (timestamp, marker),
  then, if older than the cutoff, DELETE with ``X-If-Delete-At: marker``.
  Markers on PUTs too mean that a chunk written again after another gc
  removed it never matches a marker read before. The price: each write
  also updates Swift's expirer queue (about +20% per 4 MiB PUT measured on
  a loaded single-node Swift).

  Guaranteed: a touch that Swift acknowledged before the DELETE reached the
  object server changed the marker, so the DELETE fails (412) and the
  object stays; a touch arriving after it finds no object (404) and the
  merge writes the chunk again. Residual window: (1) inside one object
  server, between its read of the metadata and the write of the tombstone
  (no lock spans them; well under a millisecond); (2) with several
  replicas, a touch and the DELETE that reach the replicas in different
  orders within the same few milliseconds: replicas that saw the DELETE
  first keep a tombstone, which outlives the touch when replication
  settles, although the touch was acknowledged; (3) a new marker equal to
  the one read (1 in 86,400 per such race). All three need a chunk that
  was unreferenced and untouched for the whole ``gc_grace_period`` to be
  reused by a merge in that instant. Timestamps come from the Swift
  proxies' clocks and the cutoff from the manager's: their skew must stay
  well below ``gc_grace_period``. Objects written without a marker
  (older versions, other tools) are deleted with ``X-If-Delete-At: 0``,
  which Swift matches only while the object still has no marker. A
  Swift-compatible store that ignores ``X-If-Delete-At`` (not Swift
  itself) widens the window to the HEAD-to-DELETE round trip.
* ``list`` pages through the container listing (``marker``, at most
  ``[swift] listing_limit`` names per request, which must not exceed the
  cluster's ``container_listing_limit``). Swift's container listings
  are eventually consistent: a listing that lags can only make a merge
  fail (DeltaParentMismatch, or ConcurrentMerge thanks to create-only
  manifests) and be retried, and gc only removes what HEAD finds older
  than the cutoff, so it keeps chunks whose manifests the listing misses
  as long as the lag is shorter than ``gc_grace_period``.
* ``lock`` does nothing: Swift has no lock, and none is needed for safety.
  Manifests are create-only, so two managers merging into one instance can
  never both commit the same restore point: the second gets
  ConcurrentMerge and nothing of it becomes visible.
* ``cleanup`` returns 0: a PUT that dies leaves nothing behind in Swift.

Every request is retried, with exponential backoff (``retry_backoff``
doubling up to ``retry_backoff_max``, or Swift's ``Retry-After``), on
connection errors, 5xx, 408, 422, 429 and 498 answers, ``max_retries``
times; then the operation raises StorageError naming the backend, the
request and the cause. A merge therefore fails as a whole while Swift is
down and nothing is acknowledged. A create-only PUT retried after an
attempt that may have landed accepts a 412 when the object there is
byte-identical (its ETag): that was this write.

Chunks are deduplicated per project by default, as with any backend
(``[storage] dedup_scope``): content-addressed names shared across
projects would let one tenant learn, by a write that finds its chunk
already stored, whether another tenant holds a given block.

May import ha_snapshot.exception, ha_snapshot.conf.swift and the driver
base; nothing above the driver layer.
"""

import contextlib
import datetime
import email.utils
import hashlib
import re
import secrets
import time
import urllib.parse

from keystoneauth1 import exceptions as ks_exc
from openstack import exceptions as sdk_exc
from oslo_log import log as logging

from ha_snapshot.conf import swift as swift_conf
from ha_snapshot import exception
from ha_snapshot.openstack import clients
from ha_snapshot.storage import base

LOG = logging.getLogger(__name__)

# NOTE: 2255-03-14T16:00:00Z plus up to a day: far beyond any retention,
# and within Swift's X-Delete-At range (it caps at 9999999999).
_MARKER_BASE = 9_000_000_000
_MARKER_SPAN = 86_400
_RETRY_STATUS = frozenset((408, 422, 429, 498))
_OCTET = 'application/octet-stream'
_URL = re.compile(r'https?://[^\s\'"]+')


def _marker() -> str:
    return str(_MARKER_BASE + secrets.randbelow(_MARKER_SPAN))


def _safe_url(url: str) -> str:
    """``url`` without user info, query or fragment (for messages)."""
    parts = urllib.parse.urlsplit(url)
    host = parts.hostname or ''
    if parts.port:
        host = '%s:%d' % (host, parts.port)
    return urllib.parse.urlunsplit((parts.scheme, host, parts.path, '', ''))


def _error_text(e: BaseException) -> str:
    """``Type: root cause (URL)``: what failed, to where, no secrets.

    keystoneauth wraps requests, which wraps urllib3, which wraps the
    socket error; each layer repeats the URL (user info included) and the
    layers below it.
    """
    root, seen = e, set()
    while id(root) not in seen:
        seen.add(id(root))
        inner = (root.__cause__ or getattr(root, 'reason', None)
                 or next((a for a in getattr(root, 'args', ())
                          if isinstance(a, BaseException)), None)
                 or root.__context__)
        if not isinstance(inner, BaseException):
            break
        root = inner
    found = _URL.search(str(e))
    where = ' (%s)' % _safe_url(found.group(0).rstrip(':,.)')) if found else ''
    return '%s: %s%s' % (type(e).__name__, root, where)


def _timestamp(headers) -> float:
    """When the object was last written or touched, from a HEAD."""
    if headers.get('X-Timestamp'):
        return float(headers['X-Timestamp'])
    # NOTE: stores that only mimic Swift; Last-Modified is rounded up to
    # the second, which errs on the side of keeping the object.
    return email.utils.parsedate_to_datetime(
        headers['Last-Modified']).timestamp()


def _parse_listing_time(value: str) -> float:
    # NOTE: Swift lists UTC without a zone: 2024-05-01T12:34:56.123450
    return datetime.datetime.fromisoformat(value).replace(
        tzinfo=datetime.timezone.utc).timestamp()


class SwiftDriver(base.StorageDriver):

    def __init__(self, url, conf):
        super().__init__(url, conf)
        bad = None
        if not url.netloc:
            bad = 'name the container: swift://CONTAINER[/PREFIX]'
        elif '@' in url.netloc or ':' in url.netloc:
            bad = ('the part after swift:// is a container name, not a '
                   'host; credentials and endpoint go in [swift]')
        elif url.query or url.fragment:
            bad = 'query and fragment are not allowed'
        elif len(url.netloc) > 256:
            bad = 'container names are at most 256 characters'
        if bad:
            raise exception.BackendNotFound(url=url.geturl(), reason=bad)
        self.container = url.netloc
        prefix = url.path.strip('/')
        self.prefix = prefix + '/' if prefix else ''
        # NOTE: idempotent; also done by ha_snapshot.conf.register_opts.
        swift_conf.register_opts(conf)
        c = conf.swift
        self.max_retries = c.max_retries
        self.backoff = c.retry_backoff
        self.backoff_max = c.retry_backoff_max
        self.listing_limit = c.listing_limit
        self.endpoint_override = c.endpoint_override
        self._adapter = self._connect(conf)
        self._container_path = '/' + urllib.parse.quote(self.container,
                                                        safe='')

    def _connect(self, conf):
        return clients.group_connection(
            conf, swift_conf.GROUP.name, 'object_store',
            'the account URL, e.g. http://127.0.0.1:8080/v1/AUTH_test'
        ).object_store

    def describe(self) -> str:
        where = (_safe_url(self.endpoint_override) if self.endpoint_override
                 else 'the object-store endpoint of the catalog')
        url = 'swift://' + self.container
        if self.prefix:
            url += '/' + self.prefix.rstrip('/')
        return '%s (%s)' % (url, where)

    # --- requests -----------------------------------------------------------

    def _path(self, key: str) -> str:
        if not key or key.startswith('/') or len(key) > 1024:
            raise exception.StorageError(reason='invalid object key %r' % key)
        return '%s/%s' % (self._container_path,
                          urllib.parse.quote(self.prefix + key, safe='/'))

    def _request(self, method, path, what, **kwargs):
        """Send with retries; return (response, attempts) or raise."""
        attempt, started = 0, time.monotonic()
        while True:
            attempt += 1
            wait = None
            try:
                resp = self._adapter.request(path, method, raise_exc=False,
                                             connect_retries=0, **kwargs)
            except (ks_exc.SSLError, ks_exc.EndpointNotFound,
                    ks_exc.AuthPluginException, ks_exc.HttpError,
                    sdk_exc.SDKException) as e:
                self._fail(method, what, _error_text(e), attempt, started)
            except ks_exc.ConnectionError as e:
                cause = _error_text(e)
            else:
                status = resp.status_code
                if status < 500 and status not in _RETRY_STATUS:
                    if status in (401, 403):
                        self._fail(method, what, '%d %s; check the [swift] '
                                   'auth options and the user\'s roles'
                                   % (status, resp.reason), attempt, started)
                    return resp, attempt
                cause = '%d %s' % (status, resp.reason)
                with contextlib.suppress(TypeError, ValueError):
                    wait = float(resp.headers.get('Retry-After'))
            if attempt > self.max_retries:
                self._fail(method, what, cause, attempt, started)
            backoff = min(self.backoff * 2 ** (attempt - 1), self.backoff_max)
            wait = backoff if wait is None else min(max(wait, backoff),
                                                    self.backoff_max)
            LOG.warning('Swift %s %s: %s; retry %d of %d in %.1f s',
                        method, what, cause, attempt, self.max_retries, wait)
            time.sleep(wait)

    def _fail(self, method, what, cause, attempts, started):
        raise exception.StorageError(
            reason='%s: %s %s failed: %s (%d attempt%s in %.1f s)' % (
                self.describe(), method, what, cause, attempts,
                's' if attempts > 1 else '', time.monotonic() - started))

    def _unexpected(self, method, what, resp):
        raise exception.StorageError(
            reason='%s: %s %s: unexpected answer %d %s: %s' % (
                self.describe(), method, what, resp.status_code, resp.reason,
                resp.text[:200].strip()))

    def _create_container(self):
        resp, _ = self._request('PUT', self._container_path,
                                'container %s' % self.container)
        if resp.status_code not in (201, 202, 204):
            self._unexpected('PUT', 'container %s' % self.container, resp)
        LOG.info('Created Swift container %s', self.container)

    # --- the contract -------------------------------------------------------

    def put(self, key, data, *, create_only=False):
        path = self._path(key)
        etag = hashlib.md5(data, usedforsecurity=False).hexdigest()
        headers = {'Content-Type': _OCTET, 'ETag': etag}
        if create_only:
            headers['If-None-Match'] = '*'
        for created_container in (False, True):
            headers['X-Delete-At'] = _marker()
            resp, attempts = self._request('PUT', path, key, data=data,
                                           headers=headers)
            if resp.status_code == 404 and not created_container:
                self._create_container()
                continue
            break
        if resp.status_code == 201:
            return
        if resp.status_code == 412 and create_only:
            # NOTE: an earlier attempt may have landed before its answer
            # was lost; the same bytes there are this write.
            if attempts > 1 and self._etag(path, key) == etag:
                return
            raise exception.ObjectExists(key=key)
        self._unexpected('PUT', key, resp)

    def _etag(self, path, key):
        resp, _ = self._request('HEAD', path, key)
        return resp.headers.get('Etag', '').strip('"') \
            if resp.status_code == 200 else None

    def get(self, key):
        resp, _ = self._request('GET', self._path(key), key)
        if resp.status_code == 200:
            return resp.content
        if resp.status_code == 404:
            raise exception.ObjectNotFound(key=key)
        self._unexpected('GET', key, resp)

    def exists(self, key):
        resp, _ = self._request('HEAD', self._path(key), key)
        if resp.status_code in (200, 404):
            return resp.status_code == 200
        self._unexpected('HEAD', key, resp)

    def touch(self, key):
        resp, _ = self._request('POST', self._path(key), key,
                                headers={'X-Delete-At': _marker()})
        if resp.status_code in (202, 404):
            return resp.status_code == 202
        self._unexpected('POST', key, resp)

    def delete(self, key):
        resp, _ = self._request('DELETE', self._path(key), key)
        if resp.status_code not in (204, 404):
            self._unexpected('DELETE', key, resp)

    def delete_if_older(self, key, cutoff):
        path = self._path(key)
        resp, _ = self._request('HEAD', path, key)
        if resp.status_code == 404:
            return False
        if resp.status_code != 200:
            self._unexpected('HEAD', key, resp)
        if _timestamp(resp.headers) >= cutoff:
            return False
        marker = resp.headers.get('X-Delete-At') or '0'
        resp, attempts = self._request('DELETE', path, key,
                                       headers={'X-If-Delete-At': marker})
        if resp.status_code == 204:
            return True
        if resp.status_code == 404:
            return attempts > 1  # NOTE: an earlier attempt deleted it.
        if resp.status_code in (409, 412):
            return False  # NOTE: touched or rewritten since the HEAD.
        self._unexpected('DELETE', key, resp)

    def list(self, prefix):
        marker = ''
        while True:
            params = {'format': 'json', 'prefix': self.prefix + prefix,
                      'limit': self.listing_limit}
            if marker:
                params['marker'] = marker
            resp, _ = self._request('GET', self._container_path,
                                    'listing of %s' % (prefix or '/'),
                                    params=params)
            if resp.status_code == 404:
                return  # NOTE: no container yet: nothing stored.
            if resp.status_code == 204:
                return
            if resp.status_code == 412:
                raise exception.ConfigurationError(
                    reason='%s refuses [swift] listing_limit = %d (%s): set '
                    'it to its container_listing_limit' % (
                        self.describe(), self.listing_limit,
                        resp.text[:100].strip()))
            if resp.status_code != 200:
                self._unexpected('GET', 'listing', resp)
            page = resp.json()
            for entry in page:
                name = entry.get('name')
                if name is None:
                    continue
                yield base.ObjectInfo(name[len(self.prefix):],
                                      entry['bytes'],
                                      _parse_listing_time(
                                          entry['last_modified']))
            # NOTE: Swift answers 412 to a limit above its own, never fewer
            # names than asked for unless the listing ends.
            if len(page) < self.listing_limit:
                return
            marker = page[-1]['name']

    def cleanup(self, cutoff):
        """Nothing to clean: an interrupted PUT leaves nothing in Swift."""
        return 0

    @contextlib.contextmanager
    def lock(self, name):
        """No lock: create-only manifests keep concurrent merges safe."""
        yield
