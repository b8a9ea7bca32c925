"""Host canaries planted around every audit case, and the check that they still hold.

- a file on the host (and the folder around it), which no case may change;
- a secret in this process's environment, which must appear in no output;
- a host process, which must still live;
- a marker name, which attacks try to create on the host: it must appear nowhere.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import secrets
import shutil
import subprocess
import tempfile
from dataclasses import dataclass
from pathlib import Path

SECRET_VARIABLE = "ISOLATE_AUDIT_SECRET"
# Where an escaped write would most likely land.
MARKER_FOLDERS = ("/", "/tmp", "/var/tmp", "/root", "/dev/shm", "/run", "/etc", "/workspace")


def _fingerprint(path: Path) -> tuple[str, int, int, int]:
    info = path.lstat()
    return hashlib.sha256(path.read_bytes()).hexdigest(), info.st_size, info.st_mtime_ns, info.st_mode


@dataclass
class HostCanaries:
    folder: Path  # host folder holding the canary file
    file: Path
    secret: str
    marker: str  # a file name attacks try to create on the host
    process: subprocess.Popen[bytes]
    _fingerprint: tuple[str, int, int, int]
    _listing: list[str]
    _previous_secret: str | None

    @classmethod
    def plant(cls, token: str) -> HostCanaries:
        folder = Path(tempfile.mkdtemp(prefix=f"isolate-audit-{token}-", dir="/var/tmp"))
        folder.chmod(0o755)
        file = folder / "canary.txt"
        file.write_text(f"host canary {secrets.token_hex(16)}\n")
        secret = f"audit-secret-{secrets.token_hex(16)}"
        previous = os.environ.get(SECRET_VARIABLE)
        os.environ[SECRET_VARIABLE] = secret  # sandboxes started from now on must not see it
        process = subprocess.Popen(["sleep", "86400"], stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        return cls(folder, file, secret, f"isolate-audit-marker-{token}", process, _fingerprint(file),
                   sorted(os.listdir(folder)), previous)

    def violations(self, outputs: list[str]) -> list[str]:
        """What no longer holds; empty when every canary is intact."""
        found = []
        try:
            if _fingerprint(self.file) != self._fingerprint:
                found.append("host canary file changed")
        except OSError as exc:
            found.append(f"host canary file gone: {exc.strerror}")
        if sorted(os.listdir(self.folder)) != self._listing:
            found.append("a file appeared in the host canary folder")
        if self.process.poll() is not None:
            found.append("host canary process died")
        if any(self.secret in text for text in outputs):
            found.append("the host's secret reached the sandbox")
        for folder in (*MARKER_FOLDERS, str(self.folder)):
            if os.path.lexists(os.path.join(folder, self.marker)):
                found.append(f"marker appeared on the host in {folder}")
        return found

    def remove(self) -> None:
        self.process.kill()
        self.process.wait()
        shutil.rmtree(self.folder, ignore_errors=True)
        for folder in MARKER_FOLDERS:  # never left behind, even by a failed case
            with contextlib.suppress(OSError):
                os.unlink(os.path.join(folder, self.marker))
        if self._previous_secret is None:
            os.environ.pop(SECRET_VARIABLE, None)
        else:
            os.environ[SECRET_VARIABLE] = self._previous_secret
