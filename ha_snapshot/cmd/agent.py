"""ha-snapshot-agent: the compute host's daemon."""

import sys

from ha_snapshot.agent import service as agent_service
from ha_snapshot.cmd import common
from ha_snapshot import service


def main(argv=None) -> int:
    conf = common.prepare(argv)
    return service.run(agent_service.AgentService(conf), conf)


if __name__ == '__main__':
    sys.exit(main())
