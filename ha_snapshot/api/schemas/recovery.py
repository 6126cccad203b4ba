"""Body of POST /v1/servers/{server_id}/recoveries."""

from ha_snapshot.api.schemas import common

CREATE = {
    'type': 'object',
    'properties': {
        'restore_point_id': {'oneOf': [common.UUID, {'type': 'null'}]},
        'reason': {'type': 'string', 'minLength': 1, 'maxLength': 255},
        # NOTE: 'filesystem': the newest application-consistent point;
        # 'crash': the newest point of any kind (the default).
        'consistency': {'enum': ['crash', 'filesystem']},
    },
    'additionalProperties': False,
}
