"""Cost of signing and checking one put_part message on the bus.

A delta part as the agent sends it (``[image] max_part_bytes`` of random,
incompressible data, zstd, base64: the largest and commonest message) is
signed as the agent does (``rpc_auth.Signer.envelope``) and checked as the
manager does (``rpc_auth.Verifier.verify``, arguments as they arrive:
JSON-decoded). Baseline, measured in the same run on the same part: the
JSON encoding and decoding oslo.messaging's rabbit driver does for every
message anyway (``jsonutils.dumps`` of the message, ``json.loads`` of it).

Reports per-message milliseconds (medians) and ``ratio`` = (sign +
verify) / baseline. Goal (issue 15 item 7, set here): signing adds less
than the JSON round trip the bus already costs (ratio < 1).
"""

import base64
import hashlib
import json
import os

import _common as c
from oslo_serialization import jsonutils
import zstandard

from ha_snapshot import rpc
from ha_snapshot import rpc_auth


def main():
    args = c.parse_args(__doc__)
    rounds = 10 if args.quick else 50
    raw_size = 4 * c.MiB
    raw = c.random_bytes(raw_size)
    part = {'instance': c.new_instance(), 'sequence': 7, 'index': 0,
            'extents': [[0, raw_size, 'data']], 'raw_size': raw_size,
            'compression': 'zstd', 'sha256': hashlib.sha256(raw).hexdigest(),
            'payload': base64.b64encode(
                zstandard.ZstdCompressor().compress(raw)).decode()}
    kwargs = {'instance': part['instance'], 'sequence': 7, 'part': part}
    host = rpc_auth.host_identity('compute1')
    master = os.urandom(32).hex().encode()
    signer = rpc_auth.Signer(host, rpc_auth.Keys(
        own=host, own_keys=[rpc_auth.derive(master, host)]))
    verifier = rpc_auth.Verifier(rpc_auth.Keys(masters=[master]),
                                 rpc_auth.MANAGER, rpc_auth.manager_senders)
    serializer = rpc.RequestContextSerializer()
    wire = json.loads(jsonutils.dumps(kwargs))
    base, sign, verify = [], [], []
    for _ in range(rounds):
        dt, text = c.timed(jsonutils.dumps, {'method': 'put_part',
                                             'args': kwargs})
        dt2, _ = c.timed(json.loads, text)
        base.append(dt + dt2)
        dt, env = c.timed(signer.envelope, rpc_auth.MANAGER, 'put_part',
                          kwargs)
        sign.append(dt)
        ctxt = rpc.context()
        ctxt.ha_auth = env
        received = serializer.deserialize_context(
            serializer.serialize_context(ctxt))
        dt, _ = c.timed(verifier.verify, received, 'put_part', wire)
        verify.append(dt)
    ms = {k: c.rnd(c.median(v) * 1000, 3) for k, v in
          (('baseline_json_ms', base), ('sign_ms', sign),
           ('verify_ms', verify))}
    result = dict(ms, benchmark='rpc_signing', quick=args.quick,
                  rounds=rounds, part_raw_bytes=raw_size,
                  message_bytes=len(jsonutils.dumps(kwargs)),
                  ratio=c.rnd((ms['sign_ms'] + ms['verify_ms'])
                              / ms['baseline_json_ms'], 3))
    result['goal_met'] = result['ratio'] < 1
    c.log('sign %.2f ms + verify %.2f ms per %d-byte message; JSON round '
          'trip %.2f ms', ms['sign_ms'], ms['verify_ms'],
          result['message_bytes'], ms['baseline_json_ms'])
    c.emit(result)


if __name__ == '__main__':
    main()
