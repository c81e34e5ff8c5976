"""A throwaway PostgreSQL server for the ledger tests: Debian's `postgresql` package (which
.ci/run installs), a fresh cluster in a temporary folder, reached over a Unix socket only (no
TCP port is opened), stopped when the test session ends.

PostgreSQL refuses to run as root, so under root the cluster belongs to the package's
`postgres` user. Where the server is not installed the tests that need it are skipped, with
the reason shown.
"""

from __future__ import annotations

import glob
import os
import shutil
import subprocess
import tempfile
import uuid
from pathlib import Path

PORT = 5433


def binaries() -> Path | None:
    found = sorted(glob.glob("/usr/lib/postgresql/*/bin/initdb"))
    return Path(found[-1]).parent if found else None


class Server:
    def __init__(self) -> None:
        bin_dir = binaries()
        if bin_dir is None:
            raise RuntimeError("PostgreSQL is not installed (apt-get install -y postgresql, as .ci/run does)")
        self.bin, self.root = bin_dir, Path(tempfile.mkdtemp(prefix="lookalike-pg-"))
        self.data, self.socket = self.root / "data", self.root / "socket"
        self.socket.mkdir()
        self.user = "postgres" if os.geteuid() == 0 else None
        if self.user:
            shutil.chown(self.root, self.user)
            shutil.chown(self.socket, self.user)
        self._as_owner([self.bin / "initdb", "-D", str(self.data), "--auth=trust", "-U", "postgres", "--no-sync"])
        options = f"-p {PORT} -k {self.socket} -c listen_addresses='' -c fsync=off -c max_connections=50"
        self._as_owner([self.bin / "pg_ctl", "-D", str(self.data), "-o", options, "-w", "-t", "120", "-l", str(self.root / "log"), "start"])

    def _as_owner(self, command: list) -> None:
        command = [str(c) for c in command]
        if self.user:
            command = ["runuser", "-u", self.user, "--"] + command
        subprocess.run(command, check=True, capture_output=True, timeout=180)

    def new_database(self) -> str:
        """A fresh database; its SQLAlchemy URL (psycopg 3, over the socket)."""
        name = f"ledger_{uuid.uuid4().hex[:12]}"
        self._as_owner([self.bin / "createdb", "-h", str(self.socket), "-p", str(PORT), "-U", "postgres", name])
        return f"postgresql+psycopg://postgres@/{name}?host={self.socket}&port={PORT}"

    def stop(self) -> None:
        try:
            self._as_owner([self.bin / "pg_ctl", "-D", str(self.data), "-m", "immediate", "stop"])
        finally:
            shutil.rmtree(self.root, ignore_errors=True)
