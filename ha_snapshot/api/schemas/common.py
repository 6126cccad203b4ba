"""Schema pieces shared by several bodies."""

UUID = {'type': 'string', 'format': 'uuid'}
# NOTE: names of stevedore plugins and of hosts: printable, no spaces.
NAME = {'type': 'string', 'minLength': 1, 'maxLength': 255,
        'pattern': r'^[A-Za-z0-9][A-Za-z0-9._:@-]*$'}
