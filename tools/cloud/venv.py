"""The harness's OpenStack venv, built once and cached in the state dir.

The venv holds Keystone, Glance, Placement, Nova and their clients at the
versions pinned in ``requirements.txt`` + ``constraints.txt`` beside this
file. It is rebuilt (from scratch, never upgraded in place) when those
files or the interpreter change: ``venv.json`` in it records their digest
and how long pip took.

Standard library only.
"""

import hashlib
import json
import os
import shutil
import subprocess
import sys
import time

from tools.cloud import procs

HERE = os.path.dirname(os.path.abspath(__file__))
REQUIREMENTS = os.path.join(HERE, 'requirements.txt')
CONSTRAINTS = os.path.join(HERE, 'constraints.txt')
INSTALL_TIMEOUT = int(os.environ.get('HA_SNAPSHOT_CLOUD_PIP_TIMEOUT', 1200))


def _digest(files) -> str:
    h = hashlib.sha256(sys.version.encode())
    for path in files:
        with open(path, 'rb') as f:
            h.update(f.read())
    return h.hexdigest()


def ensure(state_dir: str, log=print) -> dict:
    """The venv's path and install facts, building it when needed.

    Returns ``{"path", "digest", "install_seconds", "cached"}``.
    """
    path = os.path.join(state_dir, 'venv')
    marker = os.path.join(path, 'venv.json')
    files = [REQUIREMENTS, CONSTRAINTS]
    digest = _digest(files)
    try:
        with open(marker) as f:
            info = json.load(f)
        if info.get('digest') == digest:
            info['cached'] = True
            return info
    except (OSError, ValueError):
        pass
    log('harness: building the OpenStack venv %s (pins changed or no '
        'venv yet)' % path)
    shutil.rmtree(path, ignore_errors=True)
    os.makedirs(state_dir, exist_ok=True)
    pip_log = os.path.join(state_dir, 'pip.log')
    started = time.monotonic()
    with open(pip_log, 'wb') as out:
        def run(argv, what):
            try:
                rc = subprocess.run(argv, stdout=out, stderr=subprocess.STDOUT,
                                    stdin=subprocess.DEVNULL,
                                    timeout=INSTALL_TIMEOUT).returncode
            except subprocess.TimeoutExpired:
                raise procs.CloudError(
                    'timed out after %d s waiting for %s; see %s'
                    % (INSTALL_TIMEOUT, what, pip_log))
            if rc:
                raise procs.CloudError('%s failed (exit %d):\n%s'
                                       % (what, rc, procs.tail(pip_log)))
        run([sys.executable, '-m', 'venv', path], 'python -m venv %s' % path)
        pip = [os.path.join(path, 'bin', 'python'), '-m', 'pip',
               '--disable-pip-version-check', 'install', '-q']
        run(pip + ['-c', CONSTRAINTS, '-r', REQUIREMENTS],
            'pip install of the pinned OpenStack series into %s' % path)
    info = {'path': path, 'digest': digest,
            'install_seconds': round(time.monotonic() - started, 1)}
    with open(marker, 'w') as f:
        json.dump(info, f)
    info['cached'] = False
    log('harness: venv built in %.0f s' % info['install_seconds'])
    return info
