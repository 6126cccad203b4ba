"""Body of POST /v1/alarms/{server_id}: Aodh's rest notifier.

Aodh (aodh/notifier/rest.py) posts ``alarm_name``, ``alarm_id``,
``severity``, ``previous``, ``current``, ``reason`` and ``reason_data``;
keys Aodh may add later are allowed and ignored.
"""

STATES = ['ok', 'alarm', 'insufficient data']

NOTIFICATION = {
    'type': 'object',
    'properties': {
        'alarm_name': {'type': 'string', 'maxLength': 255},
        'alarm_id': {'type': 'string', 'minLength': 1, 'maxLength': 255},
        'severity': {'type': ['string', 'null'], 'maxLength': 50},
        'previous': {'type': ['string', 'null'], 'enum': STATES + [None]},
        'current': {'type': 'string', 'enum': STATES},
        'reason': {'type': ['string', 'null'], 'maxLength': 4096},
        'reason_data': {'type': ['object', 'null']},
    },
    'required': ['alarm_id', 'current'],
    'additionalProperties': True,
}
