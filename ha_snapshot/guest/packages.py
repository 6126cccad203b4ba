"""Debian packages for the test guest: candidate versions, download, unpack.

Packages are asked of apt (``apt-cache show``: the versions apt would
install, read from the host's package lists, no network), fetched with
``apt-get download`` into a cache directory by name and version (a version
already there is never fetched again) and unpacked with ``dpkg-deb -x``:
nothing is installed on the host. Host tools the build runs (mtools,
syslinux, e2fsprogs, ...) are checked here with the package to install.

May import the standard library, oslo.log and ha_snapshot.exception only.
"""

import dataclasses
import glob
import hashlib
import os
import re
import shutil
import subprocess
import tempfile

from oslo_log import log as logging

from ha_snapshot import exception

LOG = logging.getLogger(__name__)

APT_TIMEOUT = 600
# NOTE: apt-get download as root into a directory _apt cannot write warns
# and goes on unsandboxed; say so up front to keep its output clean.
APT_OPTS = ('-q', '-o', 'APT::Sandbox::User=root')
NAME = re.compile(r'^[a-z0-9][a-z0-9+.-]+$')


@dataclasses.dataclass(frozen=True)
class Package:
    name: str
    version: str
    arch: str
    depends: str = ''

    @property
    def file_name(self) -> str:
        return '%s_%s_%s.deb' % (self.name, self.version.replace(':', '%3a'),
                                 self.arch)


def require_tool(tool: str, package: str) -> str:
    path = shutil.which(tool) or shutil.which(tool, path='/usr/sbin:/sbin')
    if path is None:
        raise exception.GuestToolMissing(tool=tool, package=package)
    return path


def _run(argv, **kwargs) -> subprocess.CompletedProcess:
    return subprocess.run(argv, capture_output=True, text=True,
                          timeout=APT_TIMEOUT, env=dict(
                              os.environ, LC_ALL='C', LANG='C'), **kwargs)


def candidates(names) -> dict:
    """name -> :class:`Package` apt would install; every missing name is
    named in one :class:`GuestPackageNotFound`."""
    names = list(dict.fromkeys(names))
    bad = [n for n in names if not NAME.match(n)]
    if bad:
        raise exception.GuestPackageNotFound(
            packages=', '.join(bad), detail='not a Debian package name')
    require_tool('apt-cache', 'apt')
    r = _run(['apt-cache', 'show', '--no-all-versions'] + names)
    found = {}
    for stanza in r.stdout.split('\n\n'):
        fields = {}
        for line in stanza.splitlines():
            key, sep, value = line.partition(': ')
            if sep and not line.startswith(' '):
                fields[key] = value.strip()
        name = fields.get('Package')
        if name in names and name not in found and 'Version' in fields:
            found[name] = Package(name, fields['Version'],
                                  fields.get('Architecture', 'all'),
                                  fields.get('Depends', ''))
    missing = [n for n in names if n not in found]
    if missing:
        detail = (r.stderr.strip().splitlines() or ['apt-cache exited %d'
                                                    % r.returncode])[-1]
        raise exception.GuestPackageNotFound(packages=', '.join(missing),
                                             detail=detail)
    return found


def depends_on(package: Package, prefix: str) -> str:
    """The first dependency of ``package`` whose name starts with
    ``prefix`` (a kernel meta-package names its kernel this way)."""
    for alternative in package.depends.split(','):
        name = alternative.split('|')[0].split('(')[0].strip()
        if name.startswith(prefix):
            return name
    raise exception.GuestImageError(
        reason='package %s %s depends on no %s* package (Depends: %s)'
        % (package.name, package.version, prefix, package.depends or '-'))


def download(packages, deb_dir: str) -> dict:
    """name -> path of the .deb of each :class:`Package`, fetched once."""
    os.makedirs(deb_dir, exist_ok=True)
    paths = {p.name: os.path.join(deb_dir, p.file_name) for p in packages}
    wanted = [p for p in packages if not os.path.exists(paths[p.name])]
    if not wanted:
        return paths
    require_tool('apt-get', 'apt')
    specs = ['%s=%s' % (p.name, p.version) for p in wanted]
    with tempfile.TemporaryDirectory(dir=deb_dir) as tmp:
        r = _run(['apt-get', 'download'] + list(APT_OPTS) + specs, cwd=tmp)
        if r.returncode != 0:
            raise exception.GuestPackageFetchFailed(
                packages=' '.join(specs),
                detail=' / '.join(r.stderr.strip().splitlines()[-3:])
                or 'exit status %d' % r.returncode)
        for p in wanted:
            got = os.path.join(tmp, p.file_name)
            if not os.path.exists(got):
                raise exception.GuestPackageFetchFailed(
                    packages=' '.join(specs),
                    detail='%s is not among the files fetched (%s)' % (
                        p.file_name, ', '.join(sorted(os.listdir(tmp)))))
            os.replace(got, paths[p.name])
    LOG.info('fetched %s', ', '.join(specs))
    return paths


def unpack(deb: str, dest: str, members=None) -> str:
    """``dpkg-deb -x``; with ``members`` (tar wildcards such as
    ``./boot/vmlinuz-*``) only those: a kernel package is ~100 MB and
    ~1500 files unpacked, of which the guest needs eight."""
    require_tool('dpkg-deb', 'dpkg')
    os.makedirs(dest, exist_ok=True)
    if not members:
        r = _run(['dpkg-deb', '-x', deb, dest])
    else:
        require_tool('tar', 'tar')
        r = _run(['sh', '-c', 'deb=$0 dest=$1; shift; dpkg-deb --fsys-tarfile '
                  '"$deb" | tar -x -C "$dest" --wildcards "$@"', deb, dest]
                 + list(members))
    if r.returncode != 0:
        raise exception.GuestImageError(
            reason='unpacking %s failed: %s' % (deb, r.stderr.strip()))
    return dest


def apt_state() -> str:
    """A digest of what decides the versions apt and dpkg report: the
    package lists, the sources and preferences, dpkg's status file. (apt
    here keeps no binary cache: each ``apt-cache show`` parses the lists
    for ~1.5 s; versions are remembered under this digest instead.)"""
    paths = sorted(
        glob.glob('/var/lib/apt/lists/*') + glob.glob('/etc/apt/sources.list*')
        + glob.glob('/etc/apt/sources.list.d/*')
        + glob.glob('/etc/apt/preferences*')
        + glob.glob('/etc/apt/preferences.d/*') + ['/var/lib/dpkg/status'])
    digest = hashlib.sha256()
    for path in paths:
        try:
            st = os.stat(path)
        except OSError:
            continue
        digest.update(b'%s %d %d\n' % (path.encode(), st.st_size,
                                        st.st_mtime_ns))
    return digest.hexdigest()


def host_versions(names) -> dict:
    """name -> installed version of host packages whose tools the build
    runs (their versions are part of the cache key)."""
    if shutil.which('dpkg-query') is None:
        return {}
    r = _run(['dpkg-query', '-W', '-f', '${Package} ${Version}\\n']
             + list(names))
    out = {}
    for line in r.stdout.splitlines():
        name, _, version = line.partition(' ')
        if version:
            out[name] = version
    return out
