"""Nova's events of one server, applied in Nova's order.

The manager handles Nova's notifications on a pool of threads, and several
replicas share the stream: a server's ``power_off`` and ``power_on`` sent
a moment apart can be handled at the same time, or in the wrong order, and
leave the server paused while it runs. :func:`apply` makes the change of
status and the record of the event's time one conditional ``UPDATE``: it
applies only if the event is newer than the last one applied to that
server (``instances.nova_event_at``), so whatever order the events arrive
in, the server ends in the status of the newest. An event whose status
change does not apply (a power_on of a server that is not paused) is still
recorded as the newest, so an older one cannot apply after it.

May import the database layer.
"""

import sqlalchemy as sa

from ha_snapshot.db import api as db_api
from ha_snapshot.db import engine as db_engine
from ha_snapshot.db import models

APPLIED = 'applied'
STALE = 'stale'
NOT_APPLICABLE = 'not applicable'


def apply(db, uuid: str, at, expected, status: str) -> tuple:
    """Move ``uuid`` to ``status`` if it is in ``expected`` and ``at`` (an
    epoch or a datetime: Nova's time of the event) is newer than the last
    event applied to it. Returns (outcome, status after): APPLIED, STALE
    (an event as new or newer was applied before: nothing changed) or
    NOT_APPLICABLE (the newest event, but the server was in none of
    ``expected``: only its time is recorded). Raises InstanceNotFound.

    One transaction holding the row (``FOR UPDATE``; sqlite's write
    lock), so concurrent events of one server are applied one at a time.
    """
    expected = (expected,) if isinstance(expected, str) else tuple(expected)
    when = db_engine.to_datetime(at)
    inst = models.Instance
    with db._writer() as session:
        row = session.execute(
            sa.select(inst.status, inst.nova_event_at)
            .where(inst.uuid == uuid).with_for_update()).first()
        if row is None:
            raise db_api.instance_not_found(uuid)
        if row.nova_event_at is not None and row.nova_event_at >= when:
            return STALE, row.status
        values = {'nova_event_at': when}
        outcome = NOT_APPLICABLE
        if row.status in expected:
            values.update(status=status, updated_at=db._now())
            outcome = APPLIED
        session.execute(sa.update(inst).where(inst.uuid == uuid)
                        .values(**values)
                        .execution_options(synchronize_session=False))
        return outcome, values.get('status', row.status)
