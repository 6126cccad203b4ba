"""Merge throughput into Swift against a plain openstacksdk upload.

Merges one delta of 64 MiB of incompressible (random) data (16 MiB with
--quick) at the start of a 1 GiB disk into a fresh ``swift://`` store (a
new container every repetition), as the manager receives it: the wire form
is built before the clock starts, so the time is ``RecoveryStore.merge``
alone (validate, verify the parts, decompress, split into chunks, sha256,
try to compress each chunk, MD5 for the ETag, a POST that finds no chunk
to touch, then the PUT of every chunk, and the create-only PUT of the
manifest), with the default settings.

Baselines, in the same run, on the same Swift and the same bytes, through
the same openstacksdk connection: ``sdk_put_object``, one PUT of the whole
64 MiB as a single object (``upload_object``), and ``sdk_put_per_chunk``,
one PUT per chunk-sized piece (what the store's writes cost without any of
its work). All contenders run interleaved in every repetition; medians are
reported.

Swift is a private single-node one on loopback, started by the test
fixture (Debian packages swift swift-proxy swift-account swift-container
swift-object), unless ``--endpoint`` names an account URL reachable without
auth. On one host the Swift servers and the merge share the CPUs.

Reported: ``ratio_vs_sdk_put`` = merge MB/s / ``sdk_put_object`` MB/s.
"""

import uuid

import _common as c

DISK = 1 * c.GiB


def _swift(args):
    if args.endpoint:
        return None, args.endpoint
    from ha_snapshot.tests.fixtures import swift as swift_fixture
    server = swift_fixture.SwiftServer(base_dir=args.workdir)
    dt, _ = c.timed(server.setUp)
    c.log('started Swift on %s in %.1f s', server.endpoint, dt)
    return server, server.endpoint


def _conf(wd, endpoint, container):
    conf = c.make_conf(wd + '/unused')
    conf.set_override('backend_url', 'swift://' + container,
                      group='storage')
    from ha_snapshot.conf import swift as swift_conf
    swift_conf.register_opts(conf)
    conf.set_override('auth_type', 'none', group='swift')
    conf.set_override('endpoint_override', endpoint, group='swift')
    return conf


def main():
    args = c.parse_args(__doc__, lambda p: p.add_argument(
        '--endpoint', help='Use this Swift account URL (no auth) instead '
                           'of starting one.'))
    size = (16 if args.quick else 64) * c.MiB
    repeat = 3 if args.quick else 5
    result = {'benchmark': 'swift_merge', 'quick': args.quick,
              'delta_bytes': size, 'repeat': repeat,
              'data': 'random (incompressible), contiguous, chunk-aligned, '
                      'merged as a baseline into an empty swift:// store'}
    server, endpoint = _swift(args)
    if server is not None:
        result['swift_start_seconds'] = c.rnd(server.start_seconds, 2)
    try:
        with c.workdir(args, 'swift-merge') as wd:
            payload = c.random_bytes(size)
            disk = c.make_raw(wd + '/disk.raw', DISK, [(0, payload)])
            conf = _conf(wd, endpoint, 'unused')
            chunk = conf.storage.chunk_size
            result['chunk_size'] = chunk
            received, _n = c.wire_roundtrip(c.build_delta(
                conf, c.inspect_whole(conf, disk),
                instance=c.new_instance()))
            sdk = c.make_store(conf).driver._adapter

            def merge(rep):
                st = c.make_store(_conf(wd, endpoint, 'bench-%s'
                                        % uuid.uuid4().hex))
                return c.timed(st.merge, received)[0]

            def put_object(rep):
                container = 'base-%s' % uuid.uuid4().hex
                sdk.create_container(container)
                return c.timed(sdk.upload_object, container, 'delta',
                               data=payload)[0]

            def put_per_chunk(rep):
                container = 'base-%s' % uuid.uuid4().hex
                sdk.create_container(container)

                def put_all():
                    for i in range(0, size, chunk):
                        sdk.upload_object(container, 'c/%d' % i,
                                          data=payload[i:i + chunk])
                return c.timed(put_all)[0]

            contenders = {'merge': merge, 'sdk_put_object': put_object,
                          'sdk_put_per_chunk': put_per_chunk}
            times = {}
            for rep in range(repeat):
                for name, fn in contenders.items():
                    dt = fn(rep)
                    times.setdefault(name, []).append(dt)
                    c.log('rep %d %-18s %.3fs (%7.1f MB/s)', rep, name, dt,
                          size / c.MiB / dt)
    finally:
        if server is not None:
            server.cleanUp()
    for name, secs in times.items():
        m = c.median(secs)
        result[name] = {'seconds': c.rnd(m), 'MBps': c.mb_per_s(size, m),
                        'all_seconds': [c.rnd(s) for s in secs]}
    result['merge_MBps'] = result['merge']['MBps']
    result['sdk_put_MBps'] = result['sdk_put_object']['MBps']
    result['ratio_vs_sdk_put'] = c.rnd(
        result['merge_MBps'] / result['sdk_put_MBps'], 3)
    result['ratio_vs_sdk_put_per_chunk'] = c.rnd(
        result['merge_MBps'] / result['sdk_put_per_chunk']['MBps'], 3)
    c.emit(result)


if __name__ == '__main__':
    main()
