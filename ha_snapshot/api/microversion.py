"""Microversions of the ha-snapshot API: the one list, and the middleware.

A client asks for a version with ``OpenStack-API-Version: ha-snapshot X.Y``
(or ``latest``); without the header it gets the minimum, so that old
clients keep the behaviour they were written against. Every response says
which version served it and that it varies with the header.

May import webob and ha_snapshot.api.errors.
"""

import collections
import re

import webob
import webob.dec
import webob.exc

from ha_snapshot.api import errors

SERVICE_TYPE = 'ha-snapshot'
HEADER = 'OpenStack-API-Version'
ENVIRON = 'ha_snapshot.microversion'

# NOTE: the canonical list. Add a version at the end with a comment saying
# what it changed, and a line in doc/source/reference/api.rst.
VERSIONS = [
    '1.0',  # Initial version: servers (protect, unprotect, list, show),
            # restore points, recoveries, Aodh alarms.
]

_VERSION_RE = re.compile(r'^([1-9]\d*)\.(0|[1-9]\d*)$')


class Version(collections.namedtuple('Version', 'major minor')):

    def __str__(self):
        return '%d.%d' % self

    def matches(self, min_version=None, max_version=None) -> bool:
        return ((min_version is None or self >= min_version)
                and (max_version is None or self <= max_version))


def parse_version_string(text: str) -> Version:
    m = _VERSION_RE.match(text.strip())
    if not m:
        raise ValueError('invalid version %r: expected X.Y or latest' % text)
    return Version(int(m.group(1)), int(m.group(2)))


def min_version_string() -> str:
    return VERSIONS[0]


def max_version_string() -> str:
    return VERSIONS[-1]


def requested(headers) -> str | None:
    """Our service's entry of the header (several services may share it)."""
    value = headers.get(HEADER)
    if value is None:
        return None
    for item in value.split(','):
        service, _sep, version = item.strip().partition(' ')
        if service.lower() == SERVICE_TYPE:
            return version.strip()
    return None


class MicroversionMiddleware:
    """Choose the version of a request; refuse the ones we do not speak."""

    def __init__(self, application):
        self.application = application
        self.min = parse_version_string(min_version_string())
        self.max = parse_version_string(max_version_string())

    @webob.dec.wsgify
    def __call__(self, req):
        text = requested(req.headers)
        try:
            if text is None:
                version = self.min
            elif text.lower() == 'latest':
                version = self.max
            else:
                version = parse_version_string(text)
        except ValueError as e:
            return self._refuse(req, errors.http_error(
                webob.exc.HTTPBadRequest,
                'Header %s: %s (e.g. "%s %s").'
                % (HEADER, e, SERVICE_TYPE, max_version_string()),
                'ha_snapshot.microversion.invalid'))
        if not version.matches(self.min, self.max):
            return self._refuse(req, errors.http_error(
                webob.exc.HTTPNotAcceptable,
                'Version %s is not supported by the API: minimum is %s, '
                'maximum is %s.' % (version, self.min, self.max),
                'ha_snapshot.microversion.unsupported',
                # NOTE: webob's 406 template speaks of content types.
                body_template='${detail}'))
        req.environ[ENVIRON] = version
        resp = req.get_response(self.application)
        self._headers(resp, version)
        return resp

    def _refuse(self, req, exc):
        errors.prepare(req.environ, exc)
        req.environ[errors.ENV_VERSION_RANGE] = (str(self.min),
                                                 str(self.max))
        resp = req.get_response(exc)
        self._headers(resp, self.min)
        return resp

    @staticmethod
    def _headers(resp, version):
        resp.headers[HEADER] = '%s %s' % (SERVICE_TYPE, version)
        vary = [v.strip() for v in resp.headers.get('Vary', '').split(',')
                if v.strip()]
        if HEADER not in vary:
            vary.append(HEADER)
        resp.headers['Vary'] = ', '.join(vary)
