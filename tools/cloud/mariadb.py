"""A private MariaDB on loopback, for Nova's databases.

NOTE: Nova on sqlite hits "database is locked" once conductor, scheduler
and API write at the same time, and then silently aborts rebuilds; its
three databases live here. ``--no-defaults`` keeps the host's
/etc/mysql out: our own data dir, socket, port and pid file.

Standard library only (and tools.cloud.procs).
"""

import os
import shutil
import subprocess

from tools.cloud import procs

DEBIAN_PACKAGE = 'mariadb-server'


def _binary(name: str) -> str:
    path = shutil.which(name) or shutil.which(name, path='/usr/sbin:/usr/bin')
    if path is None:
        raise procs.CloudError(
            '%s not found: install the Debian package %s (apt-get install '
            '-y --no-install-recommends %s; bindep.txt lists it)'
            % (name, DEBIAN_PACKAGE, DEBIAN_PACKAGE))
    return path


class MariaDB:
    def __init__(self, table: procs.ProcessTable, base_dir: str, port: int):
        self.table = table
        self.base_dir = base_dir
        self.port = port
        self.datadir = os.path.join(base_dir, 'data')
        self.socket = os.path.join(base_dir, 'mysqld.sock')

    def start(self, timeout: float = 90) -> None:
        os.makedirs(self.base_dir, exist_ok=True)
        log = self.table.log_path('mariadb')
        os.makedirs(os.path.dirname(log), exist_ok=True)
        with open(log, 'ab') as out:
            rc = subprocess.run(
                [_binary('mariadb-install-db'), '--no-defaults',
                 '--datadir=' + self.datadir, '--user=root',
                 '--auth-root-authentication-method=socket',
                 '--skip-test-db'],
                stdout=out, stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL, timeout=timeout).returncode
        if rc:
            raise procs.CloudError('mariadb-install-db failed (exit %d):\n%s'
                                   % (rc, procs.tail(log)))
        self.table.spawn('mariadb', [
            _binary('mariadbd'), '--no-defaults', '--user=root',
            '--datadir=' + self.datadir, '--socket=' + self.socket,
            '--port=%d' % self.port, '--bind-address=' + procs.LOOPBACK,
            '--pid-file=' + os.path.join(self.base_dir, 'mysqld.pid'),
            '--skip-name-resolve', '--innodb-buffer-pool-size=64M',
            '--innodb-flush-log-at-trx-commit=2', '--max-connections=500',
            '--log-error=' + log])
        procs.wait_for(
            lambda: (self.table.process('mariadb') is not None
                     and os.path.exists(self.socket)
                     and procs.port_accepts(self.port)),
            timeout, 'MariaDB (mariadbd) to accept connections on %s:%d'
            % (procs.LOOPBACK, self.port), logs=[log])

    def sql(self, statements: str) -> None:
        """Run SQL as root over the unix socket (root's unix_socket auth)."""
        proc = subprocess.run(
            [_binary('mariadb'), '--no-defaults', '-S', self.socket,
             '-u', 'root'], input=statements, capture_output=True, text=True,
            timeout=60)
        if proc.returncode:
            raise procs.CloudError('SQL on MariaDB failed: %s'
                                   % proc.stderr.strip())

    def create_database(self, name: str, user: str, password: str) -> str:
        """Create ``name`` for ``user``; its SQLAlchemy URL."""
        self.sql("CREATE DATABASE IF NOT EXISTS %s CHARACTER SET utf8mb4;\n"
                 "CREATE USER IF NOT EXISTS '%s'@'127.0.0.1' "
                 "IDENTIFIED BY '%s';\n"
                 "GRANT ALL PRIVILEGES ON %s.* TO '%s'@'127.0.0.1';\n"
                 % (name, user, password, name, user))
        return 'mysql+pymysql://%s:%s@%s:%d/%s?charset=utf8mb4' % (
            user, password, procs.LOOPBACK, self.port, name)
