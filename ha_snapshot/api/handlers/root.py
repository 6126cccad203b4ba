"""GET /: the versions document (no authentication)."""

from ha_snapshot.api import endpoint
from ha_snapshot.api import microversion
from ha_snapshot.api import util


@util.wsgify
def home(req):
    version = {
        'id': 'v%s' % microversion.max_version_string(),
        'max_version': microversion.max_version_string(),
        'min_version': microversion.min_version_string(),
        'status': 'CURRENT',
        'links': [{'rel': 'self', 'href': (endpoint.public_url(
            util.state(req).conf, req.environ) or req.application_url)
            + '/'}],
    }
    return util.json_response(req, {'versions': [version]})
