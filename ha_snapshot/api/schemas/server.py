"""Body of PUT /v1/servers/{server_id} (protect)."""

from ha_snapshot.api.schemas import common

PROTECT = {
    'type': 'object',
    'properties': {
        # NOTE: checked against the installed ha_snapshot.policy plugins
        # by the handler, which names them in its error.
        'policy': dict(common.NAME, maxLength=64),
        'host': common.NAME,
        'project_id': {'type': 'string', 'minLength': 1, 'maxLength': 255},
    },
    'additionalProperties': False,
}
