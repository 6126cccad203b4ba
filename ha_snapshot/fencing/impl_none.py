"""``none``: fence nothing; rely on Nova's own down state.

A host is only confirmed failed once Nova reports its compute service
down (after Nova's ``service_down_time`` without a report from it), and
this driver adds nothing to that: it checks that Nova still reports the
service down and says so. A host that is only cut off from the control
plane keeps running its servers: choose it only where something else
fences (or where that risk is accepted).
"""

from ha_snapshot import exception
from ha_snapshot.fencing import base


class NoFencing(base.FencingDriver):

    name = 'none'

    def fence(self, host: str, service) -> str:
        state = getattr(service, 'state', None)
        if state != 'down':
            raise exception.FencingError(
                host=host, driver=self.name,
                reason='Nova reports its compute service %s, not down: '
                'with the none driver only Nova\'s down state counts'
                % (state or 'unknown'))
        return ('nothing fenced (driver none): Nova reports the compute '
                'service down')
