"""Turn any exception that escaped a handler into a JSON 500.

An exception here is a bug; the client gets the request id to report it
with, the log gets the traceback.
"""

from oslo_log import log as logging
import webob.exc

from ha_snapshot.api import errors

LOG = logging.getLogger(__name__)


class FaultWrapper:

    def __init__(self, application):
        self.application = application

    def __call__(self, environ, start_response):
        try:
            return self.application(environ, start_response)
        except Exception as e:
            LOG.exception('Unexpected error in %s %s', environ.get(
                'REQUEST_METHOD'), environ.get('PATH_INFO'))
            exc = errors.http_error(
                webob.exc.HTTPInternalServerError,
                'Unexpected error (%s); the service log has the details.'
                % type(e).__name__, 'ha_snapshot.internal_error')
            errors.prepare(environ, exc)
            return exc(environ, start_response)
