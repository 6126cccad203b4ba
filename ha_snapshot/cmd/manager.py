"""ha-snapshot-manager: the mirror environment's daemon."""

import sys

from ha_snapshot.cmd import common
from ha_snapshot.manager import service as manager_service
from ha_snapshot import service


def main(argv=None) -> int:
    conf = common.prepare(argv)
    return service.run(manager_service.ManagerService(conf), conf)


if __name__ == '__main__':
    sys.exit(main())
