"""ha-snapshot-demo: the local demo of the protection loop (see
ha_snapshot/demo.py). It prints its progress on stdout (a line a second
while the workload runs); ``--json`` prints the report as one JSON object
on the last line."""

import argparse
import json
import shutil
import sys
import tempfile

from ha_snapshot import demo


def main(argv=None) -> int:
    p = argparse.ArgumentParser(prog='ha-snapshot-demo',
                                description=demo.__doc__.splitlines()[0])
    p.add_argument('--json', action='store_true',
                   help='print the report as one JSON object')
    p.add_argument('--workdir', help='keep everything here')
    p.add_argument('--vms', type=int, default=2)
    p.add_argument('--seconds', type=float, default=15.0,
                   help='how long the workload runs before the kill')
    p.add_argument('--transport-url', default='fake://')
    p.add_argument('--no-guest', action='store_true',
                   help='VMs without a guest, written through the QEMU '
                   'monitor (no test guest to build)')
    p.add_argument('--guest-cache', default=None,
                   help='where the test guest is built and kept (default '
                   '/var/tmp/ha-snapshot-guest)')
    args = p.parse_args(argv)
    work = args.workdir or tempfile.mkdtemp(prefix='ha-snapshot-demo-',
                                            dir='/var/tmp')

    # NOTE: progress goes to stdout, --json or not: the report is the
    # last line; stderr stays for errors.
    def progress(msg):
        print('-- ' + msg, flush=True)
    try:
        report = demo.run(work, vms=args.vms, seconds=args.seconds,
                          transport_url=args.transport_url,
                          progress=progress, guest=not args.no_guest,
                          guest_cache=args.guest_cache)
    except Exception as e:
        report = {'verified': False, 'error': '%s: %s' % (type(e).__name__,
                                                          e)}
    finally:
        if not args.workdir:
            shutil.rmtree(work, ignore_errors=True)
    if args.json:
        print(json.dumps(report))
    else:
        for key, value in report.items():
            print('%-36s %s' % (key, value))
    return 0 if report.get('verified') else 1


if __name__ == '__main__':
    sys.exit(main())
