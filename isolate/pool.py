"""A warm pool: sandboxes made and started ahead of need, handed out under the name asked for.

A cold start is bounded by its parts (making the disk image, unshare + mount + setpriv + nsjail,
the agent's Python start-up: ~40 ms here). A claimed spare costs a few renames instead. Spares
are made with the manager's default options only; a sandbox asked for with other options is
made fresh. The pool is off unless `Settings.warm_pool` (ISOLATE_WARM_POOL) is above zero; a
long-lived process (the worker) is where it pays.
"""

from __future__ import annotations

import contextlib
import os
import secrets
import threading
from dataclasses import replace
from typing import TYPE_CHECKING

from .record import SandboxRecord
from .types import now_iso

if TYPE_CHECKING:
    from .manager import SandboxManager

SPARE_PREFIX = "_spare-"  # '_' is not allowed in sandbox names, so a spare never collides with one
READY = "spare-ready"  # made once a spare's agent answered: its jail has mounted everything by path


def is_spare(name: str) -> bool:
    return name.startswith(SPARE_PREFIX)


class WarmPool:
    def __init__(self, manager: SandboxManager, size: int):
        self.manager = manager
        self.size = size
        self._filling = threading.Lock()

    def spares(self) -> list[str]:
        folder = self.manager.settings.sandboxes_dir
        try:
            return sorted(p.name for p in folder.iterdir() if is_spare(p.name) and (p / "meta.json").is_file())
        except FileNotFoundError:
            return []

    def serves(self, wanted: SandboxRecord) -> bool:
        """Whether a spare can stand in for a sandbox created with these options."""
        settings = self.manager.settings
        return self.size > 0 and (wanted.backend, wanted.image, wanted.policy, wanted.limits, wanted.env) == (
            settings.backend, "host", settings.policy, settings.limits, {})

    def claim(self, name: str) -> SandboxRecord | None:
        """Rename a spare to `name` (the caller holds `name`'s lock); None when no spare is left."""
        manager = self.manager
        for spare in self.spares():
            with manager._lock(spare):
                record = manager.load(spare)
                if record is None or not (manager.sandbox_dir(spare) / READY).exists():
                    continue  # claimed by another process, or still starting (renames now would break its mounts)
                manager._drop_client(spare)
                with contextlib.suppress(FileNotFoundError):
                    manager.run_dir(spare).rename(manager.run_dir(name))
                manager.sandbox_dir(spare).rename(manager.sandbox_dir(name))
                (manager.sandbox_dir(name) / READY).unlink()
                claimed = replace(record, name=name, created_at=now_iso())
                manager.save(claimed)
                marker = manager.settings.uids_dir / str(record.uid)
                os.symlink(name, marker.with_name(f".{record.uid}.tmp"))
                os.replace(marker.with_name(f".{record.uid}.tmp"), marker)
            with contextlib.suppress(FileNotFoundError):
                (manager.settings.locks_dir / f"{spare}.lock").unlink()
            return claimed
        return None

    def fill(self) -> None:
        """Make and start spares until the pool holds `size` of them (waits for a fill under way)."""
        manager, settings = self.manager, self.manager.settings
        with self._filling:
            while len(self.spares()) < self.size:
                name = SPARE_PREFIX + secrets.token_hex(5)
                with manager._lock(name):
                    manager._create(SandboxRecord(name=name, uid=0, backend=settings.backend, policy=settings.policy, limits=settings.limits))
                manager.client(name).call({"op": "ping"})  # started and answering: warm
                (manager.sandbox_dir(name) / READY).touch()

    def refill_soon(self) -> None:
        if self.size > 0 and not self._filling.locked() and len(self.spares()) < self.size:
            threading.Thread(target=self.fill, name="isolate-warm-pool", daemon=True).start()

    def drain(self) -> None:
        for spare in self.spares():
            self.manager._destroy(spare)

